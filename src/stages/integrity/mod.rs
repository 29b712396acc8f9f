//! Request integrity.

pub mod config;
pub mod digest;
pub mod signature;
