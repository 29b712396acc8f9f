//! OpenAPI stage.
pub mod spec;
