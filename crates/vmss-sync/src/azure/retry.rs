//! Retry policy helpers: jittered exponential backoff, `Retry-After` parsing
//! and the small amount of calendar arithmetic needed for HTTP dates and the
//! Azure CLI's `expiresOn` timestamps (no date crate needed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Parses a `Retry-After` header value: either delta-seconds or an HTTP-date.
/// A date in the past yields zero.
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
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Days since 1970-01-01 for a proleptic Gregorian civil date
/// (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let d = i64::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146097 + doe - 719468
}

/// A UTC civil date-time to `SystemTime`. Returns `None` for out-of-range fields.
pub(crate) fn civil_to_system_time(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
) -> Option<SystemTime> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || min > 59
        || sec > 60
        || nanos >= 1_000_000_000
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days
        .checked_mul(86_400)?
        .checked_add(i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec))?;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn month_from_abbrev(m: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = m.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|x| *x == lower)
        .and_then(|i| u32::try_from(i + 1).ok())
}

fn parse_hms(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split(':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let sec = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((h, m, sec))
}

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    match parts.as_slice() {
        // IMF-fixdate
        [_wd, day, mon, year, hms, tz] if tz.eq_ignore_ascii_case("GMT") => {
            let (h, m, sec) = parse_hms(hms)?;
            civil_to_system_time(
                year.parse().ok()?,
                month_from_abbrev(mon)?,
                day.parse().ok()?,
                h,
                m,
                sec,
                0,
            )
        }
        // RFC 850
        [_wd, date, hms, tz] if tz.eq_ignore_ascii_case("GMT") => {
            let mut d = date.split('-');
            let day: u32 = d.next()?.parse().ok()?;
            let mon = month_from_abbrev(d.next()?)?;
            let yy: i64 = d.next()?.parse().ok()?;
            let year = if yy < 100 {
                if yy < 70 {
                    2000 + yy
                } else {
                    1900 + yy
                }
            } else {
                yy
            };
            let (h, m, sec) = parse_hms(hms)?;
            civil_to_system_time(year, mon, day, h, m, sec, 0)
        }
        // asctime
        [_wd, mon, day, hms, year] => {
            let (h, m, sec) = parse_hms(hms)?;
            civil_to_system_time(
                year.parse().ok()?,
                month_from_abbrev(mon)?,
                day.parse().ok()?,
                h,
                m,
                sec,
                0,
            )
        }
        _ => None,
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (also with a `T` separator) as UTC.
pub(crate) fn parse_naive_datetime_utc(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if d.next().is_some() {
        return None;
    }
    let time = time.trim_end_matches('Z');
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let (h, m, sec) = parse_hms(hms)?;
    let nanos = match frac {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let v: u32 = f.parse().ok()?;
            let pad = 9 - u32::try_from(f.len()).ok()?;
            v.checked_mul(10u32.checked_pow(pad)?)?
        }
        Some(_) => return None,
        None => 0,
    };
    civil_to_system_time(year, month, day, h, m, sec, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        let t = parse_naive_datetime_utc("2024-01-01 12:00:00.000000");
        assert_eq!(t, Some(UNIX_EPOCH + Duration::from_secs(1_704_110_400)));
        let t = parse_naive_datetime_utc("2024-01-01 12:00:00.5");
        assert_eq!(
            t,
            Some(UNIX_EPOCH + Duration::from_millis(1_704_110_400_500))
        );
        assert_eq!(parse_naive_datetime_utc("2024-13-01 12:00:00"), None);
        assert_eq!(parse_naive_datetime_utc("garbage"), None);
    }
}
