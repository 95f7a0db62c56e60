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
