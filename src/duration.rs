//! Go duration strings ("2160h", "90m", "1h30m", "1.5h"), the way cert-manager and Kubernetes
//! write lifetimes in YAML. Parsed strictly: a typo is an error, never a silent zero.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected a Go duration such as \"2160h\" or \"90m\")")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a non-negative Go duration. Units: ns, us (µs), ms, s, m, h. Exact, in integer
/// nanoseconds as Go's `time.ParseDuration` (float arithmetic lost whole seconds on long
/// durations), and bounded as Go's is: at most 2^63-1 ns (about 292 years).
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let (whole, fraction) = match rest[..num_len].split_once('.') {
            Some((w, f)) => (w, f),
            None => (&rest[..num_len], ""),
        };
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(err("bad number"));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        // The whole part, exactly; anything beyond the bound is too large however it goes on.
        let mut value: u128 = 0;
        for digit in whole.bytes() {
            value = value * 10 + u128::from(digit - b'0');
            if value > MAX_NANOS {
                return Err(err("too large"));
            }
        }
        let mut nanos = value * nanos_per_unit;
        // The fraction, truncated below a nanosecond as Go does.
        let mut scale: u128 = 1;
        let mut fraction_value: u128 = 0;
        for digit in fraction.bytes() {
            if scale > MAX_NANOS {
                break;
            }
            fraction_value = fraction_value * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        nanos += fraction_value * nanos_per_unit / scale;
        total += nanos;
        if total > MAX_NANOS {
            return Err(err("too large"));
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way Go does for whole hours/minutes/seconds ("2160h0m0s" → "2160h").
pub fn format_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (0, m, 0) => format!("{m}m"),
        (h, m, 0) => format!("{h}h{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("2160h", 2160 * 3600),
            ("90m", 5400),
            ("1h30m", 5400),
            ("1.5h", 5400),
            ("45s", 45),
            ("0", 0),
            ("8760h", 8760 * 3600),
        ];
        for (input, secs) in cases {
            assert_eq!(parse_go_duration(input), Ok(Duration::from_secs(secs)), "{input}");
        }
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn long_durations_are_exact_to_the_nanosecond() {
        // Found by fuzzing (fuzz/artifacts/duration/crash-bf61f74b...): float arithmetic made
        // this 9555555554.999999488 s and formatting it back lost a second; it is 302 years,
        // which Go refuses as too large, and so do we now.
        assert!(parse_go_duration("9555555555s").is_err());
        crate::fuzzing::duration(b"9555555555s");
        // Long durations within the bound are exact.
        assert_eq!(parse_go_duration("2562047h"), Ok(Duration::from_secs(2_562_047 * 3600)));
        assert_eq!(parse_go_duration("9000000000s"), Ok(Duration::from_secs(9_000_000_000)));
        crate::fuzzing::duration(b"9000000000s");
        assert_eq!(parse_go_duration("1.000000001s"), Ok(Duration::new(1, 1)));
        assert_eq!(
            parse_go_duration("0.5ns"),
            Ok(Duration::ZERO),
            "below a nanosecond truncates, as Go"
        );
        // Go's bound: 2^63-1 ns.
        assert_eq!(
            parse_go_duration("2562047h47m16.854775807s"),
            Ok(Duration::from_nanos(i64::MAX as u64))
        );
        assert!(parse_go_duration("2562047h47m16.854775808s").is_err());
        assert!(parse_go_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn rejects_what_go_rejects() {
        for input in ["", "h", "10", "10d", "-1h", "1hh", "abc", "1.2.3h", ".h", "."] {
            assert!(parse_go_duration(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn formats_whole_units_compactly() {
        assert_eq!(format_go_duration(Duration::from_secs(2160 * 3600)), "2160h");
        assert_eq!(format_go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_go_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_go_duration(Duration::from_secs(3601)), "1h0m1s");
    }
}
