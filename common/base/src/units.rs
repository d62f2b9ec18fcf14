//! Parsers for the human units used on command lines and in config files:
//! durations (`25ms`, `1.5s`, `250us`, `2m`), data rates (`10mbit`,
//! `2.5Mbit/s`, `500kbit`), byte sizes (`4MiB`, `64k`) and ratios (`1%`, `0.01`).

use std::time::Duration;

/// Why a value with a unit could not be parsed; the message names the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("{input:?} does not start with a number")]
    NotANumber { input: String },
    #[error("{input:?} must be a non-negative number")]
    Negative { input: String },
    #[error("unknown {quantity} unit {unit:?} in {input:?} (use {allowed})")]
    UnknownUnit { quantity: &'static str, unit: String, input: String, allowed: &'static str },
    #[error("{quantity} {input:?} is out of range: {why}")]
    OutOfRange { quantity: &'static str, input: String, why: &'static str },
}

fn split_number(s: &str) -> Result<(f64, String), UnitError> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let value: f64 = num.parse().map_err(|_| UnitError::NotANumber { input: s.to_string() })?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::Negative { input: s.to_string() });
    }
    Ok((value, unit.trim().to_ascii_lowercase()))
}

fn unknown(quantity: &'static str, unit: &str, input: &str, allowed: &'static str) -> UnitError {
    UnitError::UnknownUnit { quantity, unit: unit.to_string(), input: input.to_string(), allowed }
}

/// Parses a duration: `25ms`, `1.5s`, `250us`, `100ns`, `2m`, `1h`. A bare
/// number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (v, unit) = split_number(s)?;
    let secs = match unit.as_str() {
        "" | "s" | "sec" | "secs" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => return Err(unknown("duration", other, s, "ns, us, ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a data rate into bits per second: `10mbit`, `10Mbit/s`, `500kbit`,
/// `1gbit`, `8000bit`, `1.5mbps`.
pub fn parse_rate(s: &str) -> Result<f64, UnitError> {
    let (v, unit) = split_number(s)?;
    let unit = unit.trim_end_matches("/s").trim_end_matches("ps");
    let mult = match unit {
        "bit" | "b" | "" => 1.0,
        "kbit" | "kb" | "k" => 1e3,
        "mbit" | "mb" | "m" => 1e6,
        "gbit" | "gb" | "g" => 1e9,
        other => return Err(unknown("rate", other, s, "bit, kbit, mbit or gbit")),
    };
    if v == 0.0 {
        return Err(UnitError::OutOfRange { quantity: "rate", input: s.to_string(), why: "must be positive" });
    }
    Ok(v * mult)
}

/// Parses a byte size: `4MiB`, `64k`, `1024`, `2MB`.
pub fn parse_bytes(s: &str) -> Result<usize, UnitError> {
    let (v, unit) = split_number(s)?;
    let mult = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(unknown("size", other, s, "B, KiB, MiB, GiB, kB, MB, GB")),
    };
    Ok((v * mult).round() as usize)
}

/// Parses a ratio: `1%` or `0.01`, in `[0, 1]`.
pub fn parse_ratio(s: &str) -> Result<f64, UnitError> {
    let (v, unit) = split_number(s)?;
    let r = match unit.as_str() {
        "%" => v / 100.0,
        "" => v,
        other => return Err(unknown("ratio", other, s, "1% or 0.01")),
    };
    if r > 1.0 {
        return Err(UnitError::OutOfRange { quantity: "ratio", input: s.to_string(), why: "above 100%" });
    }
    Ok(r)
}

/// `deserialize_with` helpers so config files take the same spellings as
/// the flags (`"500ms"`, `"4MiB"`, `"1%"`) for optional fields.
pub mod serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    fn with<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Result<T, super::UnitError>,
    ) -> Result<Option<T>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| parse(&s).map_err(serde::de::Error::custom)).transpose()
    }

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        with(d, super::parse_duration)
    }

    pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        with(d, super::parse_bytes)
    }

    pub fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        with(d, super::parse_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("25ms").unwrap(), Duration::from_millis(25));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").unwrap_err().to_string().contains("unknown duration unit"));
        assert!(parse_duration("ms").is_err());
        assert_eq!(parse_rate("10mbit").unwrap(), 10e6);
        assert_eq!(parse_rate("2.5Mbit/s").unwrap(), 2.5e6);
        assert_eq!(parse_rate("500kbit").unwrap(), 5e5);
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_bytes("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("64k").unwrap(), 64_000);
        assert_eq!(parse_ratio("1%").unwrap(), 0.01);
        assert_eq!(parse_ratio("0.05").unwrap(), 0.05);
        assert!(parse_ratio("150%").is_err());
    }
}
