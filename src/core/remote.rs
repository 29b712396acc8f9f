//! A document fetched from a URL on an interval (remote JWK Sets, remote
//! IP lists): where it comes from, how often, and when a fetch is due.
//! One worker per process fetches it (the one that wins a compare-and-swap
//! on the document's schedule record, `record_key`); the others install
//! what it stored.

use crate::core::config_error::{err, ConfigError};
use crate::core::duration::Millis;
use serde::Deserialize;

/// Longest interval between retries while the document was never loaded.
const FIRST_LOAD_RETRY_MS: u64 = 5_000;

/// Where and how often, as written (`{"cluster": ..., "path": ...}`).
/// Fetched with dispatch_http_call from an Envoy cluster or, on
/// ngx_wasm_module, a host:port address.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {
        "required": ["cluster"],
        "properties": {"cluster": {"type": "string"}, "address": {"type": "null"}}
    },
    {
        "required": ["address"],
        "properties": {"address": {"type": "string"}, "cluster": {"type": "null"}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    cluster: Option<String>,
    /// host:port, the port 1-65535.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(regex(
            pattern = r"^[\s\S]+:\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
        ))
    )]
    address: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    path: String,
    #[serde(default)]
    refresh: Option<Millis>,
    #[serde(default)]
    min_refetch: Option<Millis>,
    #[serde(default)]
    timeout: Option<Millis>,
}

/// Where and how often a document is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `dispatch_http_call` upstream: an Envoy cluster name, or `host:port`
    /// on ngx_wasm_module.
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub refresh_ms: u64,
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
    /// Shared-data key of the document's schedule record; it changes with
    /// the owner's name and the URI, so a reload that points elsewhere
    /// starts from nothing rather than from another document.
    pub record_key: String,
}

/// One fetch the root context should dispatch: the owner's index (the
/// provider, the list) and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    pub index: usize,
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// Defaults of a kind of document.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub refresh_ms: u64,
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
}

/// Checks `raw` (at JSON path `at`) of the document `name` owns; its
/// schedule record is under `<key_prefix>.<name>.<hash of the URI>`. Unset,
/// `min_refetch` follows a short `refresh` down to `timeout`.
pub fn compile(
    raw: RawRemote,
    key_prefix: &str,
    name: &str,
    at: &str,
    defaults: Timing,
) -> Result<Remote, ConfigError> {
    let upstream = match (raw.cluster, raw.address) {
        (Some(cluster), None) if !cluster.is_empty() => cluster,
        (None, Some(address)) if is_host_port(&address) => address,
        (None, Some(address)) => {
            return Err(err(
                format!("{at}.address"),
                format!("`{address}` is not host:port"),
            ))
        }
        _ => {
            return Err(err(
                at,
                "needs exactly one of `cluster` (an Envoy cluster) or `address` (host:port, for ngx_wasm_module)",
            ))
        }
    };
    if !raw.path.starts_with('/') {
        return Err(err(format!("{at}.path"), "must start with `/`"));
    }
    let timeout_ms = raw.timeout.map_or(defaults.timeout_ms, Millis::as_ms);
    let refresh = raw.refresh.map(Millis::as_ms);
    let min_refetch_ms = raw.min_refetch.map_or(
        defaults
            .min_refetch_ms
            .min(refresh.unwrap_or(u64::MAX))
            .max(timeout_ms),
        Millis::as_ms,
    );
    let refresh_ms = refresh.unwrap_or(defaults.refresh_ms.max(min_refetch_ms));
    if timeout_ms > 60_000 {
        return Err(err(format!("{at}.timeout"), "must be at most 60s"));
    }
    if min_refetch_ms < timeout_ms {
        return Err(err(
            format!("{at}.min_refetch"),
            "must not be shorter than `timeout` (one fetch in flight at a time)",
        ));
    }
    if refresh_ms < min_refetch_ms {
        return Err(err(
            format!("{at}.refresh"),
            "must not be shorter than `min_refetch`",
        ));
    }
    let authority = raw.authority.unwrap_or_else(|| upstream.clone());
    let record_key = {
        use std::hash::{Hash, Hasher};
        let mut h = siphasher::sip::SipHasher13::new();
        (name, &upstream, &authority, &raw.path).hash(&mut h);
        format!("{key_prefix}.{name}.{:016x}", h.finish())
    };
    Ok(Remote {
        upstream,
        authority,
        path: raw.path,
        refresh_ms,
        min_refetch_ms,
        timeout_ms,
        record_key,
    })
}

fn is_host_port(address: &str) -> bool {
    let host_ok = |host: &str| {
        !host.is_empty()
            && !host.ends_with(':')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    };
    let port_ok = |port: &str| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    };
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| host_ok(host) && port_ok(port))
}

impl Remote {
    /// The fetch of this document for owner `index`.
    pub fn plan(&self, index: usize) -> FetchPlan {
        FetchPlan {
            index,
            upstream: self.upstream.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            timeout_ms: self.timeout_ms,
        }
    }

    /// Whether a fetch should start now, given the last attempt and the
    /// last success (0: never). Before the first success, retries come
    /// every `min(min_refetch, 5s)` (at least `timeout`); after it, every
    /// `refresh`, or sooner when `early` (a reason to look again: a token
    /// names a key the set lacks), but never within `min_refetch`.
    pub fn due(&self, attempt_ms: u64, success_ms: u64, early: bool, now_ms: u64) -> bool {
        let since_attempt = now_ms.saturating_sub(attempt_ms);
        if success_ms == 0 {
            let retry = self
                .min_refetch_ms
                .min(FIRST_LOAD_RETRY_MS)
                .max(self.timeout_ms);
            return since_attempt >= retry;
        }
        since_attempt >= self.min_refetch_ms
            && (now_ms.saturating_sub(success_ms) >= self.refresh_ms || early)
    }
}

/// The `i`-th little-endian u64 of a record (0 past its end: a truncated
/// record reads as empty).
pub fn word(bytes: &[u8], i: usize) -> u64 {
    bytes
        .get(i * 8..i * 8 + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// `words` as little-endian u64s, then `tail`.
pub fn encode_words(words: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 8 + tail.len());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(tail);
    out
}
