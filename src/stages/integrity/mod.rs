//! Request integrity.

pub mod digest;
pub mod signature;
