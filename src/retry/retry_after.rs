//! Reading a backend's "come back later": `retry-after-ms` (milliseconds,
//! used by some hosted APIs) or `Retry-After` as delta-seconds or an
//! HTTP-date (RFC 9110 §10.2.3). Anything unreadable is ignored.

use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// Longest wait we will believe; beyond this a value is treated as this.
const SANE_MAX: Duration = Duration::from_secs(24 * 3600);

/// How long the backend asked us to wait, measured from `now` (wall clock,
/// for HTTP-dates). `None` when it said nothing usable.
pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_millis)
    {
        return Some(ms);
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_value(value, now)
}

fn parse_millis(v: &str) -> Option<Duration> {
    let ms: f64 = v.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (ms / 1000.0).min(SANE_MAX.as_secs_f64()),
    ))
}

/// One `Retry-After` value: digits only (delta-seconds), else an HTTP-date.
pub fn parse_value(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(SANE_MAX));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(SANE_MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_value("2", now()), Some(Duration::from_secs(2)));
        assert_eq!(parse_value(" 0 ", now()), Some(Duration::ZERO));
    }

    #[test]
    fn http_date_in_the_future_and_past() {
        assert_eq!(
            parse_value("Sun, 06 Nov 1994 08:49:47 GMT", now()),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_value("Sun, 06 Nov 1994 08:40:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_and_negative_are_ignored() {
        for v in [
            "",
            "soon",
            "-5",
            "1.5",
            "2s",
            "Sun, 99 Nov 1994 08:49:47 GMT",
        ] {
            assert_eq!(parse_value(v, now()), None, "{v:?}");
        }
    }

    #[test]
    fn huge_values_are_clamped() {
        assert_eq!(
            parse_value("99999999999999999999999", now()),
            Some(SANE_MAX)
        );
        assert_eq!(parse_value("86401", now()), Some(SANE_MAX));
    }

    #[test]
    fn milliseconds_header_wins() {
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(parse(&h, now()), Some(Duration::from_millis(1500)));
        let h = headers(&[("retry-after-ms", "nope"), ("retry-after", "9")]);
        assert_eq!(parse(&h, now()), Some(Duration::from_secs(9)));
        let h = headers(&[("retry-after-ms", "-3")]);
        assert_eq!(parse(&h, now()), None);
        assert_eq!(parse(&HeaderMap::new(), now()), None);
    }
}
