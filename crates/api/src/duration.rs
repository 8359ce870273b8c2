//! Durations as the specs and values write them: Go's `time.ParseDuration` syntax (what the
//! original operators took), plus days and weeks.

use std::time::Duration;

const EXPECTED: &str = "expected <number><unit>… with units ns, us, ms, s, m, h, d (24h), w (7d), e.g. 90s, 15m, 1h30m, 1.5h, 1d12h";

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty: {expected}", expected = EXPECTED)]
    Empty,
    #[error("{0:?} without a number: {expected}", expected = EXPECTED)]
    NoNumber(String),
    #[error("{0:?} is not a number: {expected}", expected = EXPECTED)]
    BadNumber(String),
    #[error("{0:?} has no unit: {expected}", expected = EXPECTED)]
    NoUnit(String),
    #[error("unknown unit {0:?}: {expected}", expected = EXPECTED)]
    UnknownUnit(String),
    #[error("too large")]
    TooLarge,
    /// A schedule's period under a second.
    #[error("must be at least 1s")]
    TooShort,
}

/// Parses `0`, or one or more `<number><unit>` summed (`1h30m`, `1.5h`, `1d12h`, `500ms`);
/// units `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`, `d` (24 h), `w` (7 d). Errors say what was
/// wrong and what is expected; an out-of-range value is an error, not a panic.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if num.is_empty() {
            return Err(DurationError::NoNumber(unit.into()));
        }
        let n: f64 = num.parse().map_err(|_| DurationError::BadNumber(num.into()))?;
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "" => return Err(DurationError::NoUnit(num.into())),
            _ => return Err(DurationError::UnknownUnit(unit.into())),
        };
        total += n * mult;
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::TooLarge)
}

/// A schedule's period (`frequency`): a [`parse_duration`] of at least one second.
pub fn parse_frequency(s: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(DurationError::TooShort);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_days_and_weeks() {
        let s = |x: &str| parse_duration(x).map(|d| d.as_secs_f64());
        assert_eq!(s("0"), Ok(0.0));
        assert_eq!(s("90s"), Ok(90.0));
        assert_eq!(s("1h30m"), Ok(5400.0));
        assert_eq!(s("1.5h"), Ok(5400.0));
        assert_eq!(s("500ms"), Ok(0.5));
        assert_eq!(s("720h"), Ok(2_592_000.0));
        assert_eq!(s("1d12h"), Ok(129_600.0), "image-operator read this as 24h");
        assert_eq!(s("1.5d"), Ok(129_600.0), "image-operator read this as 120h");
        assert_eq!(s("2w"), Ok(1_209_600.0));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-1m",
            "1..5h",
            "99999999999999999999h",
            "1e400h",
        ] {
            assert!(s(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn frequencies_are_at_least_a_second() {
        let s = |x: &str| parse_frequency(x).map(|d| d.as_secs());
        assert_eq!(s("15m"), Ok(900));
        assert_eq!(s("1w"), Ok(604_800));
        for bad in ["0", "0s", "500ms", ""] {
            assert!(s(bad).is_err(), "{bad:?} accepted");
        }
    }
}
