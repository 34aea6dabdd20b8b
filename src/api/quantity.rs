//! Kubernetes resource quantities (`100m`, `1.5Gi`, `1000`) as users write them in limits and requests.
//!
//! Objects keep the text they were given so a manifest round-trips unchanged; [`Quantity::parse`]
//! turns it into an exact integer number of milli-units for arithmetic and comparisons.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity's text is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is empty.
    #[error("quantity is empty")]
    Empty,
    /// The text does not follow `<sign><digits>[.<digits>]<suffix>`.
    #[error("{text:?} is not a quantity: expected a number with an optional suffix such as 500m, 2, 1.5Gi or 10G")]
    Syntax {
        /// The rejected text.
        text: String,
    },
    /// The value does not fit in Rafter's arithmetic.
    #[error("{text:?} is too large")]
    Overflow {
        /// The rejected text.
        text: String,
    },
}

/// A quantity as written in a manifest: a string such as `"500m"` or a bare number such as `1000`.
///
/// Deserialisation never fails on a malformed string, so one bad limit cannot hide a whole
/// NodePool from the controller; [`crate::api::validation`] reports it instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    /// Whether the manifest gave a bare number (kept so YAML round-trips exactly).
    numeric: bool,
}

impl Quantity {
    /// A quantity from its text form.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), numeric: false }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in thousandths of the base unit (cores → millicores, bytes → millibytes),
    /// rounded up as Kubernetes does when a value has more precision than a milli-unit.
    pub fn parse(&self) -> Result<i128, QuantityError> {
        parse_millis(&self.text)
    }

    /// The value in whole base units, rounded up (bytes for memory, pods for `pods`).
    pub fn whole_units(&self) -> Result<i128, QuantityError> {
        Ok(ceil_div(self.parse()?, 1000))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Quantity {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl From<&str> for Quantity {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

fn ceil_div(value: i128, divisor: i128) -> i128 {
    let quotient = value / divisor;
    if value % divisor > 0 { quotient + 1 } else { quotient }
}

/// Parses the Kubernetes quantity grammar into milli-units, rounding any finer fraction up.
pub fn parse_millis(text: &str) -> Result<i128, QuantityError> {
    let syntax = || QuantityError::Syntax { text: text.to_string() };
    let overflow = || QuantityError::Overflow { text: text.to_string() };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, rest) = match trimmed.as_bytes()[0] {
        b'-' => (true, &trimmed[1..]),
        b'+' => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(syntax());
    }
    // (base, power): the multiplier is base^power.
    let (base, power): (i128, i32) = match suffix {
        "" => (10, 0),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().map_err(|_| syntax())?;
            if !(-30..=30).contains(&exponent) {
                return Err(overflow());
            }
            (10, exponent)
        }
        _ => return Err(syntax()),
    };
    // mantissa = digits / 10^fraction_len, value_millis = mantissa * base^power * 1000.
    let digits = format!("{whole}{fraction}");
    if digits.len() > 30 {
        return Err(overflow());
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| syntax())? };
    let mut numerator = mantissa.checked_mul(1000).ok_or_else(overflow)?;
    let mut denominator: i128 = 10i128.pow(fraction.len() as u32);
    if power >= 0 {
        numerator = numerator.checked_mul(base.checked_pow(power as u32).ok_or_else(overflow)?).ok_or_else(overflow)?;
    } else {
        denominator = denominator.checked_mul(base.pow((-power) as u32)).ok_or_else(overflow)?;
    }
    let millis = ceil_div(numerator, denominator);
    Ok(if negative { -millis } else { millis })
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.numeric {
            if let Ok(n) = self.text.parse::<i64>() {
                return serializer.serialize_i64(n);
            }
            if let Ok(n) = self.text.parse::<f64>() {
                return serializer.serialize_f64(n);
            }
        }
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 500m, 4, 16Gi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity::new(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity { text: v.to_string(), numeric: true })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity { text: v.to_string(), numeric: true })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity { text: v.to_string(), numeric: true })
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A structural schema gives int-or-string by the extension alone; no `type`, no `anyOf`.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": QUANTITY_PATTERN,
        })
    }
}

/// The quantity grammar as the API server's schema checks it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_millis_with_every_suffix() {
        let cases = [
            ("100m", 100),
            ("1", 1000),
            ("2.5", 2500),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            ("256Mi", 256 * 1024 * 1024 * 1000),
            ("1.5Gi", 1_610_612_736_000),
            ("10G", 10_000_000_000_000),
            ("1e3", 1_000_000),
            ("1n", 1),
            ("-2", -2000),
            ("0.0001", 1),
            (".5", 500),
        ];
        for (text, millis) in cases {
            assert_eq!(parse_millis(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_rejected_with_the_text() {
        for text in ["", "abc", "1Qi", "1.2.3", "m", "--1"] {
            let err = parse_millis(text).unwrap_err();
            if !text.is_empty() {
                assert!(err.to_string().contains(text), "{err}");
            }
        }
    }

    #[test]
    fn bare_numbers_round_trip_as_numbers() {
        let q: Quantity = serde_json::from_str("1000").unwrap();
        assert_eq!(q.whole_units(), Ok(1000));
        assert_eq!(serde_json::to_string(&q).unwrap(), "1000");
        let q: Quantity = serde_json::from_str("\"1000\"").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"1000\"");
    }
}
