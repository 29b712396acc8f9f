//! The `global` section: where the rate-limit service is, how long a
//! request waits for it, what a request gets when it fails, and the secret
//! client keys are hashed with before they leave the proxy.

use crate::core::config_error::{err, ConfigError};
use crate::core::duration::Millis;
use crate::core::mode::FailureMode;
use crate::core::secret::{decode_secret, RawSecret};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const DEFAULT_DOMAIN: &str = "palisade";
const DEFAULT_TIMEOUT_MS: u64 = 100;
const MAX_TIMEOUT_MS: u64 = 10_000;
/// As for signature keys: a key secret shorter than this can be guessed.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// The Envoy cluster of the rate-limit service (gRPC over HTTP/2).
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    cluster: String,
    /// Rate-limit domain: the service's namespace for palisade's counters
    /// (default "palisade"). Deployments sharing a Redis but not their
    /// limits use different domains.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 64)))]
    domain: Option<String>,
    /// How long a request waits for the service (default 100ms, at most 10s).
    #[serde(default)]
    timeout: Option<Millis>,
    /// What a request gets when the service fails or times out (default:
    /// the top-level failure_mode).
    #[serde(default)]
    failure_mode: Option<FailureMode>,
    /// The secret client keys (addresses, users, nonces, tokens) are
    /// hashed with before they are sent: the same on every replica, at
    /// least 32 bytes.
    key_secret: RawSecret,
}

/// The compiled `global` section.
#[derive(Clone)]
pub struct Global {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    /// SipHash key of the descriptors' keys, derived from `key_secret`.
    pub seed: [u8; 16],
}

// The seed is a secret: never printed.
impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("cluster", &self.cluster)
            .field("domain", &self.domain)
            .field("timeout_ms", &self.timeout_ms)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

pub fn compile(
    raw: Option<RawGlobal>,
    failure_mode: FailureMode,
) -> Result<Option<Global>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.cluster.trim().is_empty() {
        return Err(err(
            "global.cluster",
            "must name the rate-limit service's cluster",
        ));
    }
    let domain = raw.domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    let domain_ok = (1..=64).contains(&domain.len())
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !domain_ok {
        return Err(err("global.domain", "1-64 characters of a-z A-Z 0-9 . _ -"));
    }
    let timeout_ms = raw.timeout.map_or(DEFAULT_TIMEOUT_MS, Millis::as_ms);
    if timeout_ms > MAX_TIMEOUT_MS {
        return Err(err(
            "global.timeout",
            "at most 10s: a request waits this long",
        ));
    }
    let secret = decode_secret(&raw.key_secret, "global.key_secret")?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(err(
            "global.key_secret",
            format!("must be at least {MIN_SECRET_BYTES} bytes"),
        ));
    }
    let digest = Sha256::new()
        .chain_update(b"palisade global keys\0")
        .chain_update(&secret)
        .finalize();
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&digest[..16]);
    Ok(Some(Global {
        cluster: raw.cluster,
        domain,
        timeout_ms,
        failure_mode: raw.failure_mode.unwrap_or(failure_mode),
        seed,
    }))
}
