//! The configuration's JSON Schema (feature `schema`): what the hand-written
//! `JsonSchema` impls share. The schema is derived from the raw
//! configuration types of each section; `crate::config::json_schema` puts
//! it together and `palisade-check --schema` prints it.

use schemars::Schema;

/// `value` as a schema. Every caller passes a JSON object literal; anything
/// else becomes the schema that accepts nothing, so a mistake here shows
/// as a configuration every test refuses rather than as a silent hole.
pub fn schema(value: serde_json::Value) -> Schema {
    Schema::try_from(value).unwrap_or_else(|_| Schema::from(false))
}

/// `json_schema_impl!(Type, "Name", |generator| json!({...}))`: a
/// `JsonSchema` impl for a type read by a hand-written `Deserialize`, whose
/// schema is the JSON object given (inlined wherever the type is used;
/// `generator` gives the schemas of other types).
macro_rules! json_schema_impl {
    ($ty:ty, $name:expr, |$generator:pat_param| $schema:expr) => {
        impl ::schemars::JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema($generator: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                $crate::core::schema::schema($schema)
            }
        }
    };
}
pub(crate) use json_schema_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_schemas_and_nothing_else_is() {
        assert_eq!(
            schema(serde_json::json!({"type": "string"})).as_value(),
            &serde_json::json!({"type": "string"})
        );
        assert_eq!(
            schema(serde_json::json!([1])).as_value(),
            &serde_json::json!(false)
        );
    }
}
