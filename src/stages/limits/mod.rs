//! Bans and rate limits.

pub mod buckets;
pub mod config;
