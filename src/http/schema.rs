//! Schema pieces the handlers' own types use in their OpenAPI attributes
//! (`schema_with`): apart from `openapi`, which imports the handlers, so a
//! handler can use them without an import circle.

use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Ref, RefOr};

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

/// A list of the `schema` component's values, each at most once, or JSON
/// `null`: a list field of a body whose handler refuses repeats.
pub fn unique_list_or_null(schema: &str, description: &str) -> Array {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(RefOr::Ref(Ref::from_schema_name(schema)))
        .unique_items(true)
        .description(Some(description))
        .build()
}
