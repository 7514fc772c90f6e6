//! Exponential backoff with jitter: wait `min(base·2^k, max)` plus a random
//! extra of up to `jitter` of that, so that retries spread out instead of
//! arriving together.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Fraction in [0, 1].
    pub jitter: f64,
}

impl Backoff {
    /// The bounds of wait number `k` (0 for the first): (floor, ceiling).
    pub fn bounds(&self, k: u32) -> (Duration, Duration) {
        let factor = 2u32.checked_pow(k.min(31)).unwrap_or(u32::MAX);
        let floor = self
            .base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max);
        let ceiling = floor.mul_f64(1.0 + self.jitter.clamp(0.0, 1.0));
        (floor, ceiling)
    }

    /// Wait number `k`, with its random extra drawn from `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, k: u32, rng: &mut R) -> Duration {
        let (floor, ceiling) = self.bounds(k);
        if ceiling <= floor {
            return floor;
        }
        rng.gen_range(floor..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.5,
    };

    #[test]
    fn doubles_up_to_the_max() {
        assert_eq!(B.bounds(0).0, Duration::from_millis(100));
        assert_eq!(B.bounds(1).0, Duration::from_millis(200));
        assert_eq!(B.bounds(3).0, Duration::from_millis(800));
        assert_eq!(B.bounds(4).0, Duration::from_secs(1));
        assert_eq!(B.bounds(200).0, Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for k in 0..6 {
            let (lo, hi) = B.bounds(k);
            assert_eq!(hi, lo.mul_f64(1.5));
            for _ in 0..200 {
                let d = B.delay(k, &mut rng);
                assert!(d >= lo && d <= hi, "{d:?} outside {lo:?}..={hi:?}");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "jitter does not vary");
    }

    #[test]
    fn zero_jitter_is_exact() {
        let b = Backoff { jitter: 0.0, ..B };
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(b.delay(2, &mut rng), Duration::from_millis(400));
    }
}
