//! Go duration strings ("2160h", "90m", "1h30m", "1.5h"), the way cert-manager and Kubernetes
//! write lifetimes in YAML. Parsed strictly: a typo is an error, never a silent zero.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected a Go duration such as \"2160h\" or \"90m\")")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a non-negative Go duration. Units: ns, us (µs), ms, s, m, h.
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
    let mut total_nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total_nanos += value * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
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
    fn rejects_what_go_rejects() {
        for input in ["", "h", "10", "10d", "-1h", "1hh", "abc", "1.2.3h"] {
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
