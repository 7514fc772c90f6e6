//! Which members a new DNS answer keeps, adds and drains. Members are
//! (configured server, address) pairs; a member keeps its state for as
//! long as its address stays in the answer.

use std::net::SocketAddr;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Addresses that become new members.
    pub add: Vec<SocketAddr>,
    /// Indices (into the current members) of those whose address is gone.
    pub drain: Vec<usize>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.drain.is_empty()
    }
}

/// Configured server `entry` now resolves to `addrs`, and `current` lists
/// every member as (entry, address). An empty answer plans nothing: the
/// last good set stays.
pub fn plan(current: &[(usize, SocketAddr)], entry: usize, addrs: &[SocketAddr]) -> Plan {
    if addrs.is_empty() {
        return Plan::default();
    }
    let mut add: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let known = current.iter().any(|&(e, s)| e == entry && s == *a);
        if !known && !add.contains(a) {
            add.push(*a);
        }
    }
    let drain = current
        .iter()
        .enumerate()
        .filter(|(_, &(e, s))| e == entry && !addrs.contains(&s))
        .map(|(i, _)| i)
        .collect();
    Plan { add, drain }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 443))
    }

    #[test]
    fn the_same_answer_changes_nothing() {
        let current = [(0, a(1)), (0, a(2)), (1, a(9))];
        assert!(plan(&current, 0, &[a(2), a(1)]).is_empty());
    }

    #[test]
    fn new_addresses_join_and_vanished_ones_drain() {
        let current = [(0, a(1)), (1, a(1)), (0, a(2))];
        let p = plan(&current, 0, &[a(2), a(3), a(3)]);
        assert_eq!(p.add, vec![a(3)]);
        // Only entry 0's member at a(1) drains, not entry 1's.
        assert_eq!(p.drain, vec![0]);
    }

    #[test]
    fn an_empty_answer_keeps_the_last_good_set() {
        let current = [(0, a(1))];
        assert!(plan(&current, 0, &[]).is_empty());
    }

    #[test]
    fn a_first_answer_fills_an_empty_entry() {
        let p = plan(&[], 2, &[a(1), a(2)]);
        assert_eq!((p.add.len(), p.drain.len()), (2, 0));
    }
}
