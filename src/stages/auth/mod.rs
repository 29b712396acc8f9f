//! Authentication and authorization.

pub mod config;
pub mod credentials;
pub mod jwks;
pub mod jwt;
