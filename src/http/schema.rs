//! Schema pieces the handlers' own types use in their OpenAPI attributes
//! (`schema_with`): apart from `openapi`, which imports the handlers, so a
//! handler can use them without an import circle.

use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

/// An integer from `min` to `max`, both inclusive: the schema of a field
/// whose handler checks those bounds, built from the handler's own consts
/// (utoipa's `minimum`/`maximum` attributes take literals only).
pub fn integer_in(min: u64, max: u64, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .build()
}

/// [`integer_in`], or JSON `null` (what an absent optional body field may
/// also be sent as: serde reads it as absent).
pub fn integer_in_or_null(min: u64, max: u64, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .build()
}
