use super::*;
use crate::config::RetryOn;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn cfg(attempts: u32, on: &[RetryOn]) -> RetryConfig {
    RetryConfig {
        attempts,
        on: on.to_vec(),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        jitter: 0.0,
        budget: 0.2,
    }
}

fn at(attempts: u32, untried_ready: bool, until_ready: Option<Duration>) -> Situation {
    Situation {
        attempts,
        waits: 0,
        untried_ready,
        until_ready,
        remaining: Duration::from_secs(60),
    }
}

const ON: &[RetryOn] = &[
    RetryOn::ConnectError,
    RetryOn::Status(429),
    RetryOn::Status(503),
];

#[test]
fn untried_server_goes_at_once() {
    let mut rng = StdRng::seed_from_u64(1);
    let next = decide(
        &cfg(3, ON),
        Outcome::Status(503),
        at(1, true, Some(Duration::ZERO)),
        &mut rng,
    );
    assert_eq!(next, Next::Now);
}

#[test]
fn unlisted_outcomes_and_successes_are_final() {
    let mut rng = StdRng::seed_from_u64(1);
    let c = cfg(3, ON);
    for o in [
        Outcome::Status(200),
        Outcome::Status(500),
        Outcome::Timeout,
        Outcome::Reset,
    ] {
        assert_eq!(
            decide(&c, o, at(1, true, None), &mut rng),
            Next::Stop(Stop::Final),
            "{o:?}"
        );
    }
}

#[test]
fn attempts_count_the_first_try() {
    let mut rng = StdRng::seed_from_u64(1);
    let c = cfg(2, ON);
    assert_eq!(
        decide(&c, Outcome::ConnectError, at(1, true, None), &mut rng),
        Next::Now
    );
    assert_eq!(
        decide(&c, Outcome::ConnectError, at(2, true, None), &mut rng),
        Next::Stop(Stop::AttemptsExhausted)
    );
}

#[test]
fn reusing_a_server_backs_off_exponentially() {
    let mut rng = StdRng::seed_from_u64(1);
    let c = cfg(10, ON);
    for (waits, ms) in [(0, 100), (1, 200), (2, 400), (5, 2000), (9, 2000)] {
        let s = Situation {
            waits,
            ..at(1, false, Some(Duration::ZERO))
        };
        assert_eq!(
            decide(&c, Outcome::Status(429), s, &mut rng),
            Next::After(Duration::from_millis(ms))
        );
    }
}

#[test]
fn a_cooldown_longer_than_the_backoff_wins() {
    let mut rng = StdRng::seed_from_u64(1);
    let next = decide(
        &cfg(3, ON),
        Outcome::Status(429),
        at(1, false, Some(Duration::from_secs(2))),
        &mut rng,
    );
    assert_eq!(next, Next::After(Duration::from_secs(2)));
}

#[test]
fn a_wait_past_the_deadline_stops() {
    let mut rng = StdRng::seed_from_u64(1);
    let s = Situation {
        remaining: Duration::from_millis(150),
        ..at(1, false, Some(Duration::from_millis(200)))
    };
    assert_eq!(
        decide(&cfg(3, ON), Outcome::Status(503), s, &mut rng),
        Next::Stop(Stop::Deadline)
    );
}

#[test]
fn nothing_coming_back_stops() {
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(
        decide(
            &cfg(3, ON),
            Outcome::ConnectError,
            at(1, false, None),
            &mut rng
        ),
        Next::Stop(Stop::NoServer)
    );
}

#[test]
fn cooldowns_follow_retry_after_capped() {
    let cap = Duration::from_secs(30);
    let s = Duration::from_secs;
    assert_eq!(cooldown(Outcome::Status(429), None, cap), Some(s(1)));
    assert_eq!(cooldown(Outcome::Status(429), Some(s(5)), cap), Some(s(5)));
    assert_eq!(cooldown(Outcome::Status(503), Some(s(500)), cap), Some(cap));
    assert_eq!(
        cooldown(Outcome::Status(429), None, Duration::from_millis(300)),
        Some(Duration::from_millis(300))
    );
    assert_eq!(cooldown(Outcome::Status(503), None, cap), None);
    assert_eq!(cooldown(Outcome::Status(500), Some(s(5)), cap), None);
    assert_eq!(cooldown(Outcome::ConnectError, None, cap), None);
}
