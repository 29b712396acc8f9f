//! Palisade core: the API bot-defense policy, independent of any proxy host.
//!
//! The proxy-wasm glue (`filters/palisade`) feeds [`pipeline::Engine`] a
//! request view and host services ([`state::host`]) and applies the verdict it gets
//! back. Everything here builds and is tested natively.

pub mod config;
pub mod core;
pub mod pipeline;
pub mod stages;
pub mod state;

/// Crate version, logged at VM start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
