//! Palisade core: the API bot-defense policy, independent of any proxy host.
//!
//! The proxy-wasm glue (`filters/palisade`) feeds [`pipeline::Engine`] a
//! request view and host services ([`state::host`]) and applies the verdict it gets
//! back. Everything here builds and is tested natively.

pub mod auth;
pub mod client_ip;
pub mod config;
pub mod core;
pub mod digest;
pub mod jwks;
pub mod jwt;
pub mod pipeline;
pub mod ratelimit;
pub mod signature;
pub mod state;

/// Crate version, logged at VM start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
