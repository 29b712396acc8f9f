//! The global stage: the counters of rate-limit rules and replay tables
//! configured `"scope": "global"` live in the rate-limit service (Limitador
//! on Redis, `envoy/ratelimit-service/`), shared by every replica. A request
//! collects their descriptors while the local stages run (the local state
//! is the pre-check: a client over its limit on this replica is refused
//! without a call), and makes one call for all of them at the end, on
//! Envoy's rate-limit service protocol. This module writes that call and
//! reads its answer; the pipeline turns the answer into findings.
//!
//! The descriptor convention the service relies on (its README): entries
//! `palisade` (what is counted), `key` (a keyed hash, hex), `max` and
//! `window` (seconds), and a `hits_addend` of 0 for a check that counts
//! nothing. Each descriptor carries its own limit, so service replicas need
//! no configuration of their own.

pub mod config;
pub mod proto;

pub use config::{Global, RawGlobal};

use crate::core::cluster::{Counted, Descriptor};
use prost::Message;

/// The gRPC service and method palisade calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The service's verdict on one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub over: bool,
    /// Hits left in the window after this request.
    pub remaining: u64,
    /// Seconds until the window ends (at least 1 when over).
    pub reset_s: u64,
}

/// Why a call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host could not start the call (unknown cluster, ...).
    Dispatch,
    /// A gRPC status other than OK: 14 for a service that is down or
    /// unreachable, 4 for the timeout, ...
    Status(u32),
    /// An answer that does not decode, or does not match the request.
    Malformed,
}

impl Failure {
    /// For the log line; never carries request data.
    pub fn describe(&self) -> String {
        match self {
            Failure::Dispatch => "the call could not be started (is the cluster defined?)".into(),
            Failure::Status(4) => "timed out (gRPC status 4)".into(),
            Failure::Status(14) => "unavailable (gRPC status 14)".into(),
            Failure::Status(code) => format!("failed with gRPC status {code}"),
            Failure::Malformed => "answered with a malformed or mismatched message".into(),
        }
    }
}

/// The `palisade` entry of a descriptor: what the service keys the limit on.
fn counted_name(counted: Counted, rule_name: &dyn Fn(u8) -> String) -> String {
    match counted {
        Counted::Rule(index) => format!("rule.{}", rule_name(index)),
        Counted::Nonce => "nonce".into(),
        Counted::Refresh => "refresh".into(),
        Counted::Ban(index) => format!("ban.{}", rule_name(index)),
    }
}

/// The `RateLimitRequest` for `descriptors`, encoded.
pub fn encode(
    global: &Global,
    descriptors: &[Descriptor],
    rule_name: &dyn Fn(u8) -> String,
) -> Vec<u8> {
    let entry = |key: &str, value: String| proto::Entry {
        key: key.into(),
        value,
    };
    let request = proto::RateLimitRequest {
        domain: global.domain.clone(),
        descriptors: descriptors
            .iter()
            .map(|d| proto::RateLimitDescriptor {
                entries: vec![
                    entry("palisade", counted_name(d.counted, rule_name)),
                    entry("key", format!("{:032x}", d.key)),
                    entry("max", d.max.to_string()),
                    entry("window", d.window_s.to_string()),
                ],
                hits_addend: d.check_only.then_some(proto::UInt64Value { value: 0 }),
            })
            .collect(),
        hits_addend: 1,
    };
    request.encode_to_vec()
}

/// The statuses of an answer, one per descriptor sent, in order.
pub fn decode(answer: &[u8], sent: usize) -> Result<Vec<Status>, Failure> {
    let response = proto::RateLimitResponse::decode(answer).map_err(|_| Failure::Malformed)?;
    if response.statuses.len() != sent {
        // Without a status per descriptor the answer cannot be matched up;
        // the overall code alone would not say which rule refused.
        return Err(Failure::Malformed);
    }
    let statuses = response
        .statuses
        .iter()
        .map(|s| {
            let reset_s = s.duration_until_reset.as_ref().map_or(0, |d| {
                let whole = u64::try_from(d.seconds).unwrap_or(0);
                whole.saturating_add(u64::from(d.nanos > 0))
            });
            let over = match s.code {
                proto::CODE_OK => false,
                proto::CODE_OVER_LIMIT => true,
                _ => return Err(Failure::Malformed),
            };
            Ok(Status {
                over,
                remaining: u64::from(s.limit_remaining),
                reset_s: if over { reset_s.max(1) } else { reset_s },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let any_over = statuses.iter().any(|s| s.over);
    if any_over != (response.overall_code == proto::CODE_OVER_LIMIT) {
        return Err(Failure::Malformed);
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests;
