//! Time syntaxes: Go durations (`sync_interval`) and NGINX times (`fail_timeout`, `slow_start`).

use std::time::Duration;

/// Parses NGINX time syntax: one or more `<number><unit>` parts, units in decreasing order and
/// each at most once (`y` = 365 days, `M` = 30 days, `w`, `d`, `h`, `m`, `s`, `ms`), optionally
/// separated by spaces; a bare number (only as the last part) means seconds. Examples: `10s`,
/// `500ms`, `1m30s`, `1h 30m`, `600`. Leading and trailing whitespace is ignored. Returns `None`
/// for anything else, including an empty string, negative numbers and overflow.
pub fn parse_nginx_time(s: &str) -> Option<Duration> {
    // Units, largest first, with their length in milliseconds.
    const UNITS: [(&str, u64); 8] = [
        ("y", 365 * 86_400_000),
        ("M", 30 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1_000),
    ];
    // Rank of each unit in the required (decreasing) order; "ms" is the smallest.
    fn rank(unit: &str) -> u8 {
        match unit {
            "y" => 0,
            "M" => 1,
            "w" => 2,
            "d" => 3,
            "h" => 4,
            "m" => 5,
            "s" => 6,
            _ => 7, // "ms"
        }
    }

    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total_ms: u64 = 0;
    let mut last_rank: Option<u8> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = UNITS.iter().find(|(u, _)| rest.starts_with(u));
        let (ms, unit_rank) = match unit {
            Some((u, ms)) => {
                rest = &rest[u.len()..];
                (*ms, rank(u))
            }
            // A bare number means seconds and must be the last part.
            None => {
                if !rest.trim_start().is_empty() {
                    return None;
                }
                (1_000, rank("s"))
            }
        };
        if last_rank.is_some_and(|r| unit_rank <= r) {
            return None;
        }
        last_rank = Some(unit_rank);
        total_ms = total_ms.checked_add(number.checked_mul(ms)?)?;
        rest = rest.trim_start_matches(' ');
    }
    Some(Duration::from_millis(total_ms))
}

/// Formats a duration the way it is sent to NGINX: whole seconds as `"{n}s"` (`"0s"`, `"10s"`,
/// `"90s"`), otherwise milliseconds as `"{n}ms"` (`"500ms"`, `"1500ms"`). Sub-millisecond parts
/// are dropped.
pub fn format_nginx_time(d: Duration) -> String {
    let ms = d.as_millis();
    let (secs, rest) = (ms / 1000, ms % 1000);
    if rest == 0 {
        format!("{secs}s")
    } else {
        format!("{ms}ms")
    }
}

/// Parses Go's `time.ParseDuration` syntax: an optional sign, then `0` or a sequence of decimal
/// numbers with optional fraction, each with a unit (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`).
/// Negative durations are returned as `Err(Negative)` so callers can say so.
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, GoDurationError> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("\u{b5}s", 1_000),
        ("\u{3bc}s", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    // Go's limit: the largest int64 number of nanoseconds.
    const MAX_NANOS: u128 = i64::MAX as u128;

    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(GoDurationError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(GoDurationError::Syntax);
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(GoDurationError::MissingUnit);
        }
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, scale)| *scale)
            .ok_or(GoDurationError::Syntax)?;
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| GoDurationError::Overflow)?
        };
        let mut nanos = int_value
            .checked_mul(scale)
            .ok_or(GoDurationError::Overflow)?;
        // Fraction: scale * 0.frac, truncated like Go.
        let mut unit_fraction = scale;
        for digit in frac_part.bytes() {
            unit_fraction /= 10;
            if unit_fraction == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * unit_fraction;
        }
        total = total.checked_add(nanos).ok_or(GoDurationError::Overflow)?;
        if total > MAX_NANOS {
            return Err(GoDurationError::Overflow);
        }
    }
    if negative && total > 0 {
        return Err(GoDurationError::Negative);
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| GoDurationError::Overflow)?;
    // The remainder is < 1e9, so it fits a u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| GoDurationError::Overflow)?;
    Ok(Duration::new(secs, nanos))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoDurationError {
    Syntax,
    MissingUnit,
    Negative,
    Overflow,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nginx_time_accepts_nginx_syntax() {
        assert_eq!(parse_nginx_time("10s"), Some(ms(10_000)));
        assert_eq!(parse_nginx_time("0s"), Some(ms(0)));
        assert_eq!(parse_nginx_time("0"), Some(ms(0)));
        assert_eq!(parse_nginx_time("600"), Some(ms(600_000)));
        assert_eq!(parse_nginx_time("500ms"), Some(ms(500)));
        assert_eq!(parse_nginx_time("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_nginx_time("1h 30m"), Some(ms(5_400_000)));
        assert_eq!(parse_nginx_time(" 2m "), Some(ms(120_000)));
        assert_eq!(parse_nginx_time("1d"), Some(ms(86_400_000)));
        assert_eq!(parse_nginx_time("1w"), Some(ms(7 * 86_400_000)));
        assert_eq!(parse_nginx_time("11M"), Some(ms(11 * 30 * 86_400_000)));
        assert_eq!(parse_nginx_time("1y"), Some(ms(365 * 86_400_000)));
        assert_eq!(parse_nginx_time("1m 5"), Some(ms(65_000)));
    }

    #[test]
    fn nginx_time_rejects_other_input() {
        for bad in [
            "",
            " ",
            "ss",
            "-5s",
            "1L",
            "s5",
            "1.5s",
            "30s1m",
            "1s1s",
            "1 1",
            "1ms5s",
            "99999999999999999999s",
            "999999999999999y",
        ] {
            assert_eq!(parse_nginx_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nginx_time_formats_canonically() {
        assert_eq!(format_nginx_time(ms(0)), "0s");
        assert_eq!(format_nginx_time(ms(10_000)), "10s");
        assert_eq!(format_nginx_time(ms(90_000)), "90s");
        assert_eq!(format_nginx_time(ms(500)), "500ms");
        assert_eq!(format_nginx_time(ms(1_500)), "1500ms");
        assert_eq!(format_nginx_time(Duration::from_nanos(1_000_000_001)), "1s");
    }

    #[test]
    fn go_duration_accepts_go_syntax() {
        let d = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("500ms"), ms(500));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1.5s"), ms(1500));
        assert_eq!(d(".5s"), ms(500));
        assert_eq!(d("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10\u{b5}s"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("+3s"), Duration::from_secs(3));
        assert_eq!(d("-0s"), Duration::ZERO);
    }

    #[test]
    fn go_duration_rejects_other_input() {
        use GoDurationError::*;
        assert_eq!(parse_go_duration("5"), Err(MissingUnit));
        assert_eq!(parse_go_duration("5x"), Err(Syntax));
        assert_eq!(parse_go_duration(""), Err(Syntax));
        assert_eq!(parse_go_duration("s"), Err(Syntax));
        assert_eq!(parse_go_duration("1d"), Err(Syntax));
        assert_eq!(parse_go_duration("5 s"), Err(Syntax));
        assert_eq!(parse_go_duration("-5s"), Err(Negative));
        assert_eq!(parse_go_duration("3000000h"), Err(Overflow));
        assert_eq!(
            parse_go_duration("99999999999999999999999999999999999999999h"),
            Err(Overflow)
        );
    }
}
