//! Weighted least-outstanding-requests selection.
//!
//! The lowest `outstanding / weight` wins, so a slow server (whose requests
//! pile up) receives fewer new ones while it is busy. Ties (e.g. an idle
//! pool) are broken at random in proportion to weight, so weights hold even
//! under sequential traffic. A retry prefers servers it has not tried.

use rand::Rng;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub outstanding: u32,
    pub weight: u32,
    /// This request already tried the server.
    pub tried: bool,
}

/// Compare `a.outstanding / a.weight` with `b`'s without division.
fn load_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    let lhs = u64::from(a.outstanding) * u64::from(b.weight.max(1));
    let rhs = u64::from(b.outstanding) * u64::from(a.weight.max(1));
    lhs.cmp(&rhs)
}

/// Index of the server to use among `candidates` (all already usable), or
/// `None` when there are none.
pub fn pick<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Option<usize> {
    let any_untried = candidates.iter().any(|c| !c.tried);
    let eligible = |c: &Candidate| !any_untried || !c.tried;

    let mut best: Option<usize> = None;
    let mut tie_weight: u64 = 0;
    for (i, c) in candidates.iter().enumerate() {
        if !eligible(c) {
            continue;
        }
        let w = u64::from(c.weight.max(1));
        match best.map(|b| load_cmp(c, &candidates[b])) {
            None | Some(Ordering::Less) => {
                best = Some(i);
                tie_weight = w;
            }
            Some(Ordering::Equal) => {
                // Weighted reservoir sampling over the tied set.
                tie_weight += w;
                if rng.gen_range(0..tie_weight) < w {
                    best = Some(i);
                }
            }
            Some(Ordering::Greater) => {}
        }
    }
    best
}

/// How far the server holding a prompt's prefix may run ahead of the
/// least loaded one and still get the request (SGLang's router balances
/// the same way): it is overloaded when its load exceeds the least by more
/// than `abs` requests and by more than a factor `rel`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leeway {
    pub abs: u32,
    pub rel: f64,
}

/// What prefix affinity decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// The server with the prompt's prefix got it.
    Hit,
    /// No server holds enough of the prompt.
    Miss,
    /// The server that does is overloaded (or cannot take it now).
    Overloaded,
}

impl Affinity {
    pub fn label(self) -> &'static str {
        match self {
            Affinity::Hit => "hit",
            Affinity::Miss => "miss",
            Affinity::Overloaded => "overloaded",
        }
    }
}

fn load(c: &Candidate) -> f64 {
    f64::from(c.outstanding) / f64::from(c.weight.max(1))
}

/// `preferred` (index of the candidate holding the prompt's prefix), unless
/// it was tried already or is overloaded next to the least loaded
/// candidate; then `pick`.
pub fn pick_preferring<R: Rng + ?Sized>(
    candidates: &[Candidate],
    preferred: Option<usize>,
    leeway: Leeway,
    rng: &mut R,
) -> (Option<usize>, Affinity) {
    let Some(p) = preferred.filter(|&p| p < candidates.len()) else {
        return (pick(candidates, rng), Affinity::Miss);
    };
    let any_untried = candidates.iter().any(|c| !c.tried);
    let least = candidates
        .iter()
        .filter(|c| !any_untried || !c.tried)
        .map(load)
        .fold(f64::INFINITY, f64::min);
    let mine = load(&candidates[p]);
    let overloaded = mine - least > f64::from(leeway.abs) && mine > least * leeway.rel;
    if (any_untried && candidates[p].tried) || overloaded {
        return (pick(candidates, rng), Affinity::Overloaded);
    }
    (Some(p), Affinity::Hit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn c(outstanding: u32, weight: u32) -> Candidate {
        Candidate {
            outstanding,
            weight,
            tried: false,
        }
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&[], &mut rng), None);
    }

    #[test]
    fn least_outstanding_wins() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&[c(3, 1), c(1, 1), c(2, 1)], &mut rng), Some(1));
    }

    #[test]
    fn weight_scales_load() {
        let mut rng = StdRng::seed_from_u64(1);
        // 4/4 = 1 beats 2/1 = 2.
        assert_eq!(pick(&[c(2, 1), c(4, 4)], &mut rng), Some(1));
    }

    #[test]
    fn ties_split_evenly_at_random() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let i = pick(&[c(0, 1), c(0, 1), c(0, 1)], &mut rng).unwrap();
            counts[i] += 1;
        }
        for n in counts {
            assert!((850..1150).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn ties_follow_weight() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            let i = pick(&[c(0, 3), c(0, 1)], &mut rng).unwrap();
            counts[i] += 1;
        }
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn untried_preferred_even_when_busier() {
        let mut rng = StdRng::seed_from_u64(1);
        let tried = Candidate {
            outstanding: 0,
            weight: 1,
            tried: true,
        };
        assert_eq!(pick(&[tried, c(5, 1)], &mut rng), Some(1));
    }

    #[test]
    fn all_tried_still_picks_least_loaded() {
        let mut rng = StdRng::seed_from_u64(1);
        let t = |o| Candidate {
            outstanding: o,
            weight: 1,
            tried: true,
        };
        assert_eq!(pick(&[t(4), t(2)], &mut rng), Some(1));
    }

    const LEEWAY: Leeway = Leeway { abs: 4, rel: 1.5 };

    #[test]
    fn the_prefix_holder_gets_it_while_not_overloaded() {
        let mut rng = StdRng::seed_from_u64(1);
        // Busier than the least, but within the leeway.
        let got = pick_preferring(&[c(0, 1), c(4, 1), c(1, 1)], Some(1), LEEWAY, &mut rng);
        assert_eq!(got, (Some(1), Affinity::Hit));
        // More than 4 ahead but within 1.5x: still fine (both must hold).
        let got = pick_preferring(&[c(20, 1), c(26, 1)], Some(1), LEEWAY, &mut rng);
        assert_eq!(got, (Some(1), Affinity::Hit));
        // Both exceeded: the least loaded gets it.
        let got = pick_preferring(&[c(0, 1), c(5, 1), c(1, 1)], Some(1), LEEWAY, &mut rng);
        assert_eq!(got, (Some(0), Affinity::Overloaded));
        // Weights scale load: 10 on weight 4 is 2.5.
        let got = pick_preferring(&[c(0, 1), c(10, 4)], Some(1), LEEWAY, &mut rng);
        assert_eq!(got, (Some(1), Affinity::Hit));
    }

    #[test]
    fn a_retry_never_prefers_the_server_that_failed_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let tried = Candidate {
            outstanding: 0,
            weight: 1,
            tried: true,
        };
        let got = pick_preferring(&[tried, c(3, 1)], Some(0), LEEWAY, &mut rng);
        assert_eq!(got, (Some(1), Affinity::Overloaded));
        // Without a preference it is plain least-outstanding.
        assert_eq!(
            pick_preferring(&[c(2, 1), c(1, 1)], None, LEEWAY, &mut rng),
            (Some(1), Affinity::Miss)
        );
    }
}
