//! What crosses the edge: validated newtypes for what arrives (once a value
//! is an `ItemId` or a `UserId` it is known to be safe inside a Redis key, a
//! stream field and a URL, so nothing further in needs to check it again),
//! and [`ErrorBody`], the shape of every refusal, which the server writes
//! (`http::error`) and the load generator reads.

use std::fmt;

/// Longest item or user id accepted. Ids are names, not documents.
pub const MAX_ID_LEN: usize = 64;

/// Characters an id may hold. `{`, `}` and `:` are excluded on purpose: they are
/// the key schema's hash-tag braces and separator, so an id can never escape its
/// own key space or its cluster slot.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')
}

fn parse_id(kind: &str, raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(format!("{kind} is longer than {MAX_ID_LEN} characters"));
    }
    if let Some(bad) = raw.chars().find(|c| !is_id_char(*c)) {
        return Err(format!(
            "{kind} contains {bad:?}; allowed are ASCII letters, digits and - _ . @"
        ));
    }
    Ok(raw.to_owned())
}

/// An item on sale, e.g. `iphone-17`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String")]
pub struct ItemId(String);

impl ItemId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        parse_id("item id", raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A buyer, e.g. `u42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        parse_id("user_id", raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whole-number fields as JSON Schema's `integer` admits them: `3`, and also
/// `3.0` (a number with a zero fraction is an integer to JSON Schema, and to
/// JavaScript), and in a query string `3` or `3.0`. serde's own integer
/// types refuse `3.0`, so a schema-valid request would be refused.
/// `#[serde(deserialize_with = "whole::required")]` for a required JSON
/// field, `#[serde(default, deserialize_with = "whole::optional")]` for an
/// optional one (JSON `null` is absent), `whole::in_query` for a query
/// parameter (where every value is text; in JSON, text is not a number).
pub mod whole {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    /// `text`: whether a string holding a number is one (query strings).
    struct Whole {
        text: bool,
    }

    impl Visitor<'_> for Whole {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative whole number")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2^64 as f64 is exact; below it every whole f64 converts exactly.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(Some(v as u64))
            } else {
                Err(E::custom(format!("{v} is not a non-negative whole number")))
            }
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            if !self.text {
                return Err(E::custom(format!("`{v}` is text, not a number")));
            }
            if let Ok(n) = v.parse::<u64>() {
                return self.visit_u64(n);
            }
            match v.parse::<f64>() {
                Ok(f) if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => self.visit_f64(f),
                _ => Err(E::custom(format!("`{v}` is not a whole number"))),
            }
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    fn narrow<T: TryFrom<u64>, E: Error>(v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_any(Whole { text: false })?
            .map(narrow)
            .transpose()
    }

    pub fn in_query<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_any(Whole { text: true })?
            .map(narrow)
            .transpose()
    }

    pub fn required<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(Whole { text: false })?
            .ok_or_else(|| D::Error::custom("a whole number is required"))
            .and_then(narrow)
    }
}

/// The JSON body every error response carries:
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `sold_out`, `strategy_mismatch`, ...
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// `unconfirmed` only: the order the purchase took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// Read back from JSON (the load generator reads the server's answers) and
/// checked like any other input.
macro_rules! text_serde {
    ($($id:ident),+) => {$(
        impl TryFrom<String> for $id {
            type Error = String;

            fn try_from(raw: String) -> Result<Self, String> {
                Self::parse(&raw)
            }
        }
    )+};
}

text_serde!(ItemId, UserId);

/// The OpenAPI schema of an id: a string under the rules [`parse_id`] checks.
fn id_schema(
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(Some("^[A-Za-z0-9._@-]+$"))
        .description(Some(description))
        .examples([example])
        .into()
}

impl utoipa::PartialSchema for ItemId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        id_schema("An item on sale.", "iphone-17")
    }
}

impl utoipa::ToSchema for ItemId {}

impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        id_schema("A buyer.", "u42")
    }
}

impl utoipa::ToSchema for UserId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_json_strings_and_are_checked_when_read() {
        let item = ItemId::parse("ip17").unwrap();
        assert_eq!(serde_json::to_string(&item).unwrap(), "\"ip17\"");
        assert_eq!(serde_json::from_str::<ItemId>("\"ip17\"").unwrap(), item);
        assert!(serde_json::from_str::<UserId>("\"a:b\"").is_err());
    }

    #[test]
    fn ordinary_ids_are_accepted() {
        for ok in ["u42", "iphone-17", "a.b_c@d", &"x".repeat(MAX_ID_LEN)] {
            assert!(ItemId::parse(ok).is_ok(), "{ok}");
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn empty_long_and_key_breaking_ids_are_rejected() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", &long, "a{b}", "a:b", "a b", "ü", "a/b", "a\n"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
            assert!(ItemId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_error_names_the_field_and_the_offending_character() {
        let err = UserId::parse("a}b").unwrap_err();
        assert!(err.contains("user_id") && err.contains('}'), "{err}");
    }
}
