//! Authentication and authorization.

pub mod credentials;
pub mod jwks;
pub mod jwt;
