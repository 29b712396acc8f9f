//! Bans and rate limits.

pub mod buckets;
