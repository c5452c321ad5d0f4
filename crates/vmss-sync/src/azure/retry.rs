//! Retry policy helpers: jittered exponential backoff and `Retry-After` parsing.

use std::time::{Duration, SystemTime};

/// Default base delay of the exponential backoff.
pub(crate) const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Upper bound for a single backoff sleep (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delay before retry number `retry` (0-based: the first retry is 0):
/// `base * 2^retry`, capped, with ±50 % jitter.
pub(crate) fn backoff_delay(base: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
    let nominal = base.saturating_mul(factor).min(MAX_BACKOFF);
    // jitter in [0.5, 1.5)
    nominal.mul_f64(0.5 + fastrand::f64())
}

/// Parses a `Retry-After` header value: either delta-seconds or an HTTP-date
/// (RFC 9110 §5.6.7: IMF-fixdate, the obsolete RFC 850 form and asctime, read by
/// `httpdate`). A date in the past yields zero.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some services send fractional seconds.
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn backoff_grows_and_stays_within_jitter_bounds() {
        let base = Duration::from_millis(200);
        for retry in 0..6 {
            let nominal = base * 2u32.pow(retry);
            for _ in 0..50 {
                let d = backoff_delay(base, retry);
                assert!(d >= nominal / 2, "{d:?} < half of {nominal:?}");
                assert!(d <= nominal * 3 / 2, "{d:?} > 1.5x {nominal:?}");
            }
        }
        // huge retry numbers never overflow
        assert!(backoff_delay(base, 1000) <= MAX_BACKOFF * 3 / 2);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(7))
        );
        // past date → zero
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // a leap day; the last date an HTTP-date can hold
        assert_eq!(
            parse_retry_after(
                "Thu, 29 Feb 2024 00:00:07 GMT",
                UNIX_EPOCH + Duration::from_secs(1_709_164_800)
            ),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).map(|d| d.as_secs()),
            Some(253_402_300_799 - 784_111_770)
        );
        // not a date: out-of-range fields, another zone, a malformed form
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 24:00:00 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 CET", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("2024-01-01T00:00:00Z", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
