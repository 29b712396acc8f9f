//! Durations in configuration are written the way operators write them in
//! Envoy and Kubernetes manifests (`"500ms"`, `"30s"`, `"10m"`, `"1h"`), and
//! kept as whole milliseconds because every clock the filter reads is in
//! milliseconds.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A strictly positive span of time, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub fn as_ms(self) -> u64 {
        self.0
    }
}

/// Longest accepted duration: 30 days. Longer spans are almost always a typo
/// and would make refill arithmetic meaningless.
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("`{text}` has no unit; expected e.g. \"500ms\", \"5s\", \"1m\", \"1h\"")
    })?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}`; expected ms, s, m, h or d"
            ))
        }
    };
    let ms = value
        .checked_mul(scale)
        .filter(|ms| *ms <= MAX_MS)
        .ok_or_else(|| format!("`{text}` is longer than 30 days"))?;
    if ms == 0 {
        return Err(format!("`{text}` must be greater than zero"));
    }
    Ok(Millis(ms))
}

/// What [`parse_duration`] accepts, as a JSON Schema pattern, but for the
/// 30-day bound (a regular expression over the digits would be unreadable).
pub const DURATION_PATTERN: &str = "^[0-9]*[1-9][0-9]*(ms|s|m|h|d)$";

#[cfg(feature = "schema")]
crate::core::schema::json_schema_impl!(Millis, "Duration", |_| serde_json::json!({
    "type": "string",
    "pattern": DURATION_PATTERN,
}));

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"5s\", \"1m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                parse_duration(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Millis(5_000)));
        assert_eq!(parse_duration("2m"), Ok(Millis(120_000)));
        assert_eq!(parse_duration("1h"), Ok(Millis(3_600_000)));
        assert_eq!(parse_duration("1d"), Ok(Millis(86_400_000)));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "5",
            "s",
            "0s",
            "-1s",
            "1.5s",
            "5 s",
            "5sec",
            "31d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
