//! The global mode's vocabulary, shared by the stages whose state can hold
//! across Envoy replicas (rate-limit rules, the replay tables): where a
//! rule or table keeps its state, and the descriptors a request collects
//! for its one call to the rate-limit service (`stages::global`).

use crate::core::mode::string_enum;

/// Where a rule or table keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Proxy-wasm shared data: every worker of this proxy, no service.
    #[default]
    Local,
    /// The rate-limit service (Limitador on Redis): every replica, with
    /// the local state as a pre-check that needs no remote call.
    Global,
}

string_enum!(Scope, "\"local\" or \"global\"", {
    "local" => Scope::Local,
    "global" => Scope::Global,
});

/// What a descriptor counts. The service keys its limits on its name
/// (`stages::global`), so every replica must name it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A request of a rate-limit rule, by its index.
    Rule(u8),
    /// A verified signature (its nonce, or the signature itself): one use.
    Nonce,
    /// A refresh token presented at the token endpoint: one use.
    Refresh,
    /// A ban of a rule's key (`bans.scope: global`): a counter of limit 1
    /// whose window is the ban's length.
    Ban(u8),
}

/// One counter the service checks and takes a hit from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub counted: Counted,
    /// The client key (or nonce, or token), hashed with the cluster's key
    /// secret: the same on every replica, meaningless without the secret.
    pub key: u128,
    /// Hits allowed per window.
    pub max: u64,
    /// Length of the window, whole seconds (at least 1).
    pub window_s: u64,
    /// Only look whether the counter is at its limit, take no hit (a
    /// replica checking for a ban another one published).
    pub check_only: bool,
}

impl Descriptor {
    /// Seconds from a duration in ms, rounded up, at least one: a window
    /// the service cannot represent shorter than the local one.
    pub fn window_from_ms(ms: u64) -> u64 {
        ms.div_ceil(1000).max(1)
    }
}
