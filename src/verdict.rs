//! Findings, reason codes and the one verdict computed from them.
//!
//! Stages never answer the client themselves: they write findings, and the
//! verdict is taken once, at the end, so that `monitor` mode, metrics and the
//! security log see every stage the same way.

use crate::config::Mode;

/// The pipeline stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Classify,
    Bans,
    RateLimit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::Bans => "bans",
            Stage::RateLimit => "ratelimit",
        }
    }
}

/// Why a request was flagged. The string form is stable: it appears in
/// responses, logs and metrics, and operators build alerts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ClientIpInvalid,
    BanActive,
    RateLimitExhausted,
    RateLimitOverflow,
    StoreUnavailable,
    ConfigMissing,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::ClientIpInvalid,
        Reason::BanActive,
        Reason::RateLimitExhausted,
        Reason::RateLimitOverflow,
        Reason::StoreUnavailable,
        Reason::ConfigMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientIpInvalid => "client_ip.invalid",
            Reason::BanActive => "ban.active",
            Reason::RateLimitExhausted => "rl.exhausted",
            Reason::RateLimitOverflow => "rl.overflow",
            Reason::StoreUnavailable => "store.unavailable",
            Reason::ConfigMissing => "config.missing",
        }
    }

    /// The answer a request gets when this finding is enforced.
    pub fn decision(self) -> Decision {
        match self {
            Reason::ClientIpInvalid | Reason::BanActive => Decision::Deny,
            Reason::RateLimitExhausted | Reason::RateLimitOverflow => Decision::Throttle,
            Reason::StoreUnavailable | Reason::ConfigMissing => Decision::Error,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::ClientIpInvalid => 400,
            Reason::BanActive => 403,
            Reason::RateLimitExhausted | Reason::RateLimitOverflow => 429,
            Reason::StoreUnavailable | Reason::ConfigMissing => 503,
        }
    }

    /// The short `error` word of the JSON body.
    pub fn error_word(self) -> &'static str {
        match self.status() {
            400 => "bad_request",
            403 => "forbidden",
            429 => "too_many_requests",
            _ => "unavailable",
        }
    }
}

/// What happened to a request, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Throttle,
    Deny,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Throttle => "throttle",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }
}

/// Rate-limit quota of one rule, for `RateLimit-Policy` / `RateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub rule: u8,
    pub capacity: u32,
    /// Seconds to refill the whole capacity; `None` for buckets that never refill.
    pub window_s: Option<u64>,
    pub remaining: u64,
    /// With requests remaining: seconds until the quota is whole again; with
    /// none: seconds until the next request is allowed. `None` when never.
    pub reset_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub stage: Stage,
    pub reason: Reason,
    pub mode: Mode,
    /// Rule that produced it, if any.
    pub rule: Option<u8>,
    /// Seconds the client should wait before trying again.
    pub retry_after_s: Option<u64>,
    pub quota: Option<Quota>,
}

impl Finding {
    pub fn new(stage: Stage, reason: Reason, mode: Mode) -> Self {
        Finding {
            stage,
            reason,
            mode,
            rule: None,
            retry_after_s: None,
            quota: None,
        }
    }

    pub fn enforced(&self) -> bool {
        self.mode == Mode::Enforce
    }
}

/// A response palisade sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The outcome of the pipeline for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward upstream; add these headers to the response (quota headers).
    Allow {
        response_headers: Vec<(&'static str, String)>,
    },
    Respond(LocalResponse),
}
