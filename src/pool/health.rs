//! Active health state: `fall` consecutive failed checks take a server out,
//! `rise` consecutive passes bring it back. Servers start up, so a fresh
//! gateway serves at once; the first `fall` failures take a dead one out.
//! A member that joins later (a new DNS address) starts unchecked: down
//! until its first check passes.

#[derive(Debug, Clone)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    WentDown,
    CameUp,
}

impl HealthState {
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
        }
    }

    /// A member that joined a running pool: down until one check passes.
    pub fn unchecked(rise: u32, fall: u32) -> Self {
        HealthState {
            up: false,
            // One pass is enough to come up.
            streak: rise.max(1) - 1,
            ..HealthState::new(rise, fall)
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// New thresholds (a reload); up or down stays as it is.
    pub fn reconfigure(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Feed one check result.
    pub fn record(&mut self, passed: bool) -> Transition {
        if passed == self.up {
            self.streak = 0;
            return Transition::None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return Transition::None;
        }
        self.up = passed;
        self.streak = 0;
        if passed {
            Transition::CameUp
        } else {
            Transition::WentDown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchecked_member_comes_up_on_its_first_pass() {
        let mut h = HealthState::unchecked(3, 2);
        assert!(!h.is_up());
        assert_eq!(h.record(true), Transition::CameUp);
        let mut h = HealthState::unchecked(3, 2);
        assert_eq!(h.record(false), Transition::None);
        assert!(!h.is_up());
    }

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut h = HealthState::new(2, 3);
        assert_eq!(h.record(false), Transition::None);
        assert_eq!(h.record(false), Transition::None);
        assert!(h.is_up());
        assert_eq!(h.record(false), Transition::WentDown);
        assert!(!h.is_up());
    }

    #[test]
    fn a_pass_between_failures_resets_the_streak() {
        let mut h = HealthState::new(2, 2);
        h.record(false);
        h.record(true);
        assert_eq!(h.record(false), Transition::None);
        assert!(h.is_up());
    }

    #[test]
    fn rises_after_rise_consecutive_passes() {
        let mut h = HealthState::new(2, 1);
        assert_eq!(h.record(false), Transition::WentDown);
        assert_eq!(h.record(true), Transition::None);
        assert_eq!(h.record(false), Transition::None);
        assert_eq!(h.record(true), Transition::None);
        assert_eq!(h.record(true), Transition::CameUp);
        assert!(h.is_up());
    }
}
