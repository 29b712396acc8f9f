//! Vocabulary every stage uses: the request view, route ids, findings,
//! reason codes and the verdict's responses, modes, counters, durations and
//! configuration errors. Nothing here knows a particular stage or the
//! document; it may use `state` below it.

pub mod body;
pub mod cluster;
pub mod config_error;
pub mod country;
pub mod duration;
pub mod event;
pub mod hosts;
pub mod identity;
pub mod metrics;
pub mod mode;
pub mod names;
pub mod reasons;
pub mod remote;
pub mod request;
pub mod routes;
#[cfg(feature = "schema")]
pub mod schema;
pub mod secret;
pub mod stage;
#[cfg(test)]
pub mod test_rng;
pub mod verdict;
