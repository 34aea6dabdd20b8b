//! Durations as Karpenter writes them (`30s`, `1h30m`, `720h`) and the `Never` that disables a timer.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a duration's text is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a sequence of `<integer><unit>` parts.
    #[error(
        "{text:?} is not a duration: write it as whole hours, minutes and seconds such as 30s, 5m, 1h30m or 720h{never}"
    )]
    Syntax {
        /// The rejected text.
        text: String,
        /// A hint that `Never` is accepted, where it is.
        never: &'static str,
    },
    /// The value does not fit in a `std::time::Duration` of seconds.
    #[error("{text:?} is too long")]
    Overflow {
        /// The rejected text.
        text: String,
    },
}

/// Schema pattern of a duration that may also be `Never`.
pub const NILLABLE_DURATION_PATTERN: &str = "^(([0-9]+(s|m|h))+|Never)$";
/// Schema pattern of a duration that must be finite.
pub const DURATION_PATTERN: &str = "^([0-9]+(s|m|h))+$";

/// A duration or `Never`, kept as written so manifests round-trip unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NillableDuration(pub String);

impl NillableDuration {
    /// `Never`.
    pub fn never() -> Self {
        Self("Never".into())
    }

    /// A finite duration written in its shortest `h`/`m`/`s` form.
    pub fn from_duration(d: Duration) -> Self {
        Self(format_duration(d))
    }

    /// `None` for `Never`, otherwise the duration.
    pub fn parse(&self) -> Result<Option<Duration>, DurationError> {
        if self.0 == "Never" {
            return Ok(None);
        }
        parse_duration(&self.0).map(Some).map_err(|e| match e {
            DurationError::Syntax { text, .. } => DurationError::Syntax { text, never: " or Never" },
            other => other,
        })
    }
}

impl fmt::Display for NillableDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for NillableDuration {
    fn schema_name() -> Cow<'static, str> {
        "NillableDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": NILLABLE_DURATION_PATTERN})
    }
}

/// A finite duration, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KubeDuration(pub String);

impl KubeDuration {
    /// The duration this text denotes.
    pub fn parse(&self) -> Result<Duration, DurationError> {
        parse_duration(&self.0)
    }
}

impl fmt::Display for KubeDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for KubeDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": DURATION_PATTERN})
    }
}

/// Parses one or more `<integer>(h|m|s)` parts, as the CRD pattern admits.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax { text: text.to_string(), never: "" };
    if text.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(syntax()),
        };
        if digits.is_empty() {
            return Err(syntax());
        }
        let overflow = || DurationError::Overflow { text: text.to_string() };
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(overflow)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(syntax());
    }
    Ok(Duration::from_secs(total))
}

/// The shortest `h`/`m`/`s` spelling of a whole number of seconds (`300s` → `5m`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_compound_units() {
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(NillableDuration::never().parse(), Ok(None));
    }

    #[test]
    fn malformed_durations_name_the_text_and_the_fix() {
        for text in ["", "5", "h", "1d", "1.5h", "never", "-1s"] {
            let err = NillableDuration(text.into()).parse().unwrap_err();
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
            assert!(err.to_string().contains("Never"), "{err}");
        }
    }

    #[test]
    fn durations_format_in_shortest_form() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
        assert_eq!(format_duration(Duration::from_secs(2_592_000)), "720h");
    }
}
