//! A pool's admission queue: where requests wait when every usable server
//! is at its `max_conns`. Bounded; higher priority is served first and FIFO
//! within a priority; a waiter whose deadline has passed is never served
//! and makes room; when full, a newcomer may push out the newest waiter of
//! a lower priority, otherwise it is turned away. Pure data, time passed
//! in: waiting, timers and hand-off live in `pool::admission`.

use crate::config::Priority;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub type Ticket = u64;

struct Entry<T> {
    ticket: Ticket,
    enqueued: Instant,
    /// Past this the waiter has given up (or is about to): skip it.
    deadline: Instant,
    item: T,
}

pub struct WaitQueue<T> {
    /// One FIFO per priority, indexed by `Priority as usize` (low first).
    classes: [VecDeque<Entry<T>>; 3],
    max_depth: usize,
    next_ticket: Ticket,
}

/// What `push` did.
pub enum Pushed<T> {
    /// Queued under this ticket.
    Queued(Ticket),
    /// Queued, and the newest waiter of a lower priority was pushed out to
    /// make room: shed it.
    QueuedEvicting(Ticket, T),
    /// Full of waiters at this priority or higher: turned away.
    Full(T),
}

fn class(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl<T> WaitQueue<T> {
    pub fn new(max_depth: usize) -> Self {
        WaitQueue {
            classes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            max_depth,
            next_ticket: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.classes.iter().map(VecDeque::len).sum()
    }

    /// A new bound (a reload): waiters already queued stay, even past it.
    pub fn set_max_depth(&mut self, max_depth: usize) {
        self.max_depth = max_depth;
    }

    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(VecDeque::is_empty)
    }

    /// Drop waiters whose deadline has passed.
    fn purge(&mut self, now: Instant) {
        for q in &mut self.classes {
            q.retain(|e| e.deadline > now);
        }
    }

    pub fn push(
        &mut self,
        priority: Priority,
        now: Instant,
        deadline: Instant,
        item: T,
    ) -> Pushed<T> {
        let mut evicted = None;
        if self.len() >= self.max_depth {
            self.purge(now);
        }
        if self.len() >= self.max_depth {
            // Shed the newest of the lowest class below ours, if any.
            let lower = (0..class(priority)).find(|&c| !self.classes[c].is_empty());
            match lower.and_then(|c| self.classes[c].pop_back()) {
                Some(e) => evicted = Some(e.item),
                None => return Pushed::Full(item),
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.classes[class(priority)].push_back(Entry {
            ticket,
            enqueued: now,
            deadline,
            item,
        });
        match evicted {
            Some(old) => Pushed::QueuedEvicting(ticket, old),
            None => Pushed::Queued(ticket),
        }
    }

    /// The next waiter to serve: highest priority, oldest first, skipping
    /// (and dropping) any whose deadline has passed.
    pub fn pop(&mut self, now: Instant) -> Option<(T, Instant)> {
        for q in self.classes.iter_mut().rev() {
            while let Some(e) = q.pop_front() {
                if e.deadline > now {
                    return Some((e.item, e.enqueued));
                }
            }
        }
        None
    }

    /// Take a waiter out (it gave up or its client left).
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        for q in &mut self.classes {
            if let Some(pos) = q.iter().position(|e| e.ticket == ticket) {
                return q.remove(pos).map(|e| e.item);
            }
        }
        None
    }
}

/// How fast the queue drains, for an honest `Retry-After` when shedding:
/// departures counted in one-second buckets over a short window.
pub struct DrainRate {
    origin: Instant,
    /// (second since origin, departures in it)
    buckets: [(u64, u32); DRAIN_WINDOW],
}

const DRAIN_WINDOW: usize = 10;

impl DrainRate {
    pub fn new(origin: Instant) -> Self {
        DrainRate {
            origin,
            buckets: [(u64::MAX, 0); DRAIN_WINDOW],
        }
    }

    pub fn record(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let b = &mut self.buckets[(sec % DRAIN_WINDOW as u64) as usize];
        if b.0 != sec {
            *b = (sec, 0);
        }
        b.1 += 1;
    }

    /// Departures per second over the window.
    pub fn per_second(&self, now: Instant) -> f64 {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let recent: u32 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s <= sec && sec - *s < DRAIN_WINDOW as u64)
            .map(|(_, n)| n)
            .sum();
        f64::from(recent) / DRAIN_WINDOW as f64
    }

    /// When a request turned away now could expect to get in: the time to
    /// drain `depth` waiters at the recent rate, at least 1 s, at most
    /// `ceiling` (used when nothing has drained lately).
    pub fn retry_after(&self, depth: usize, now: Instant, ceiling: Duration) -> Duration {
        let rate = self.per_second(now);
        if rate <= 0.0 {
            return ceiling.max(Duration::from_secs(1));
        }
        Duration::from_secs_f64((depth as f64 + 1.0) / rate)
            .clamp(Duration::from_secs(1), ceiling.max(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    const LATER: Duration = Duration::from_secs(60);

    fn drain(q: &mut WaitQueue<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop(now).map(|(i, _)| i)).collect()
    }

    /// Push with a deadline far away.
    fn push(
        q: &mut WaitQueue<&'static str>,
        p: Priority,
        t: Instant,
        name: &'static str,
    ) -> Pushed<&'static str> {
        q.push(p, t, t + LATER, name)
    }

    #[test]
    fn fifo_within_a_priority_higher_first() {
        let t = Instant::now();
        let mut q = WaitQueue::new(10);
        for (p, name) in [
            (Normal, "n1"),
            (Low, "l1"),
            (High, "h1"),
            (Normal, "n2"),
            (High, "h2"),
        ] {
            assert!(matches!(push(&mut q, p, t, name), Pushed::Queued(_)));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q, t), ["h1", "h2", "n1", "n2", "l1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_turns_away_equal_priority() {
        let t = Instant::now();
        let mut q = WaitQueue::new(2);
        push(&mut q, Normal, t, "a");
        push(&mut q, Normal, t, "b");
        assert!(matches!(push(&mut q, Normal, t, "c"), Pushed::Full("c")));
        assert!(matches!(push(&mut q, Low, t, "d"), Pushed::Full("d")));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn full_queue_sheds_the_newest_lower_priority_first() {
        let t = Instant::now();
        let mut q = WaitQueue::new(3);
        push(&mut q, Low, t, "l1");
        push(&mut q, Low, t, "l2");
        push(&mut q, Normal, t, "n1");
        match push(&mut q, High, t, "h1") {
            Pushed::QueuedEvicting(_, out) => assert_eq!(out, "l2"),
            _ => panic!("expected an eviction"),
        }
        match push(&mut q, Normal, t, "n2") {
            Pushed::QueuedEvicting(_, out) => assert_eq!(out, "l1"),
            _ => panic!("expected an eviction"),
        }
        assert!(matches!(push(&mut q, Normal, t, "n3"), Pushed::Full("n3")));
        assert_eq!(drain(&mut q, t), ["h1", "n1", "n2"]);
    }

    #[test]
    fn removed_waiters_are_gone() {
        let t = Instant::now();
        let mut q = WaitQueue::new(5);
        let Pushed::Queued(a) = push(&mut q, Normal, t, "a") else {
            panic!()
        };
        push(&mut q, Normal, t, "b");
        assert_eq!(q.remove(a), Some("a"));
        assert_eq!(q.remove(a), None);
        assert_eq!(drain(&mut q, t), ["b"]);
    }

    #[test]
    fn pop_reports_when_the_waiter_arrived() {
        let t = Instant::now();
        let mut q = WaitQueue::new(5);
        push(&mut q, Normal, t + Duration::from_millis(7), "a");
        assert_eq!(q.pop(t), Some(("a", t + Duration::from_millis(7))));
    }

    #[test]
    fn expired_waiters_are_skipped_and_make_room() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut q = WaitQueue::new(2);
        q.push(High, t, t + ms(100), "short");
        q.push(Normal, t, t + ms(500), "long");
        // Full, but one waiter's deadline has passed: room for a newcomer.
        assert!(matches!(
            q.push(Low, t + ms(200), t + ms(900), "new"),
            Pushed::Queued(_)
        ));
        assert_eq!(q.len(), 2);
        // The high-priority waiter gave up: the slot goes to the next one.
        assert_eq!(q.pop(t + ms(200)).map(|(i, _)| i), Some("long"));
        // Past every deadline nobody is served.
        assert_eq!(q.pop(t + ms(1000)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let t0 = Instant::now();
        let mut d = DrainRate::new(t0);
        let ceiling = Duration::from_secs(10);
        assert_eq!(
            d.retry_after(5, t0, ceiling),
            ceiling,
            "nothing drained yet"
        );
        // 4 departures a second for 10 seconds.
        for ms in (0..10_000).step_by(250) {
            d.record(t0 + Duration::from_millis(ms));
        }
        let now = t0 + Duration::from_millis(9_999);
        assert!((d.per_second(now) - 4.0).abs() < 0.01);
        assert_eq!(d.retry_after(11, now, ceiling), Duration::from_secs(3));
        assert_eq!(
            d.retry_after(0, now, ceiling),
            Duration::from_secs(1),
            "at least 1s"
        );
        assert_eq!(d.retry_after(1000, now, ceiling), ceiling, "capped");
        // Old departures age out.
        assert_eq!(d.per_second(t0 + Duration::from_secs(30)), 0.0);
    }
}
