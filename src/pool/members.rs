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

/// How a pool's members carry into a new config (a reload).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Carry {
    /// (index into the current members, entry it belongs to now).
    pub keep: Vec<(usize, usize)>,
    /// (entry, address) of members to create.
    pub add: Vec<(usize, SocketAddr)>,
    /// Indices into the current members that leave.
    pub drain: Vec<usize>,
}

/// A configured server of the new config: its `addr` as written, and the
/// addresses it resolved to when the config was checked.
pub struct NewEntry<'a> {
    pub addr: &'a str,
    pub resolved: &'a [SocketAddr],
}

/// Members are matched by the configured `addr` they come from: a member
/// whose `addr` is still configured keeps its state (for a host name, all
/// its current addresses stay: DNS keeps them fresh); an `addr` that is
/// new gets members for the addresses it resolved to; the members of an
/// `addr` no longer configured drain. `current` lists every member as
/// (configured addr, address).
pub fn carry(current: &[(&str, SocketAddr)], entries: &[NewEntry<'_>]) -> Carry {
    let mut plan = Carry::default();
    for (j, entry) in entries.iter().enumerate() {
        let mut found = false;
        for (i, &(name, _)) in current.iter().enumerate() {
            if name == entry.addr {
                plan.keep.push((i, j));
                found = true;
            }
        }
        if !found {
            let mut seen: Vec<SocketAddr> = Vec::new();
            for a in entry.resolved {
                if !seen.contains(a) {
                    seen.push(*a);
                    plan.add.push((j, *a));
                }
            }
        }
    }
    plan.drain = (0..current.len())
        .filter(|i| !plan.keep.iter().any(|(k, _)| k == i))
        .collect();
    plan
}

#[cfg(test)]
mod carry_tests {
    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 80))
    }

    #[test]
    fn servers_that_stay_keep_their_members_new_ones_join_removed_ones_drain() {
        let current = [
            ("10.0.0.1:80", a(1)),
            ("api.test:80", a(7)),
            ("api.test:80", a(8)),
            ("10.0.0.2:80", a(2)),
        ];
        let entries = [
            NewEntry {
                addr: "api.test:80",
                // What it resolved to at check time does not replace what
                // DNS has found since.
                resolved: &[a(9)],
            },
            NewEntry {
                addr: "10.0.0.3:80",
                resolved: &[a(3)],
            },
            NewEntry {
                addr: "10.0.0.1:80",
                resolved: &[a(1)],
            },
        ];
        let plan = carry(&current, &entries);
        assert_eq!(plan.keep, vec![(1, 0), (2, 0), (0, 2)]);
        assert_eq!(plan.add, vec![(1, a(3))]);
        assert_eq!(plan.drain, vec![3]);
    }

    #[test]
    fn the_same_config_keeps_everything() {
        let current = [("10.0.0.1:80", a(1)), ("10.0.0.2:80", a(2))];
        let entries = [
            NewEntry {
                addr: "10.0.0.1:80",
                resolved: &[a(1)],
            },
            NewEntry {
                addr: "10.0.0.2:80",
                resolved: &[a(2)],
            },
        ];
        let plan = carry(&current, &entries);
        assert_eq!(plan.keep, vec![(0, 0), (1, 1)]);
        assert!(plan.add.is_empty() && plan.drain.is_empty());
    }
}
