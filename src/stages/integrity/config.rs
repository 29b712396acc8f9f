//! The `signatures` section: keys, per-route policies, body and replay
//! table sizes; raw types, defaults, validation and compile.

use crate::core::cluster::Scope;
#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{
    assign_routes, err, slot_pages, ConfigError, DEFAULT_REPLAY_SLOTS,
};
use crate::core::duration::Millis;
use crate::core::mode::Mode;
use crate::core::routes::{RouteId, RouteTable};
use crate::core::secret::{decode_secret, RawSecret};
use crate::stages::integrity::signature::{KeyRing, Requirements};
use serde::Deserialize;

/// RFC 9421 request signatures: the keys, and which route classes need what.
#[derive(Debug, Clone)]
pub struct Signatures {
    pub mode: Mode,
    pub keys: KeyRing,
    /// Largest body buffered for a `Content-Digest` check.
    pub max_body_bytes: usize,
    /// Pages of the shared replay table.
    pub replay_pages: u32,
    /// Whether a signature seen on another replica is a replay too.
    pub replay_scope: Scope,
    pub policies: Vec<SignaturePolicy>,
    /// Indexed by route id: the policy that applies, if any.
    by_route: Vec<Option<usize>>,
}

impl Signatures {
    pub fn policy_for(&self, route: RouteId) -> Option<&SignaturePolicy> {
        self.by_route
            .get(usize::from(route))
            .copied()
            .flatten()
            .and_then(|i| self.policies.get(i))
    }
}

#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    pub requirements: Requirements,
    /// Each nonce (or, without one, each signature) is accepted once.
    pub replay: bool,
    /// A `Content-Digest` header is required and checked against the body.
    pub require_digest: bool,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("anyOf" = [
    {"description": "no policies", "properties": {"policies": {"maxItems": 0}}},
    {
        "description": "policies need at least one key",
        "required": ["keys"],
        "properties": {"keys": {"minItems": 1}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawSignatures {
    #[serde(default)]
    mode: Option<Mode>,
    /// HMAC-SHA256 secrets by key id. A secret is {"env": "VAR"} (an
    /// environment variable of the wasm VM, filled from a secret store) or,
    /// for demos, {"base64": "..."} inline.
    #[serde(default)]
    keys: Vec<RawSigningKey>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_MAX_BODY)))]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    replay_slots: Option<u32>,
    /// Where signatures are remembered: "local" (this proxy's workers) or
    /// "global" (every replica, through the `global` section's service).
    #[serde(default)]
    replay_scope: Scope,
    #[serde(default)]
    policies: Vec<RawSignaturePolicy>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSigningKey {
    /// Printable ASCII, as a structured-field string carries it.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^[ -~]{1,256}$")))]
    id: String,
    secret: RawSecret,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSignaturePolicy {
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    routes: Vec<String>,
    /// Derived components and lower-case header names, each once.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(
            extend("uniqueItems" = true),
            inner(regex(pattern = "^(@method|@authority|@scheme|@target-uri|@request-target|@path|@query|[a-z0-9!#$%&'*+.^_`|~-]+)$"))
        )
    )]
    components: Option<Vec<String>>,
    #[serde(default)]
    max_age: Option<Millis>,
    #[serde(default)]
    clock_skew: Option<Millis>,
    #[serde(default)]
    require_nonce: bool,
    #[serde(default = "yes")]
    replay: bool,
    #[serde(default)]
    require_digest: bool,
    /// A structured-field key.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^[a-z*][a-z0-9_.*-]*$")))]
    label: Option<String>,
    /// Printable ASCII.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^[ -~]*$")))]
    tag: Option<String>,
}

fn yes() -> bool {
    true
}

const DEFAULT_MAX_BODY: u64 = 1 << 20;
const MAX_MAX_BODY: u64 = 64 << 20;

pub fn compile_signatures(
    raw: RawSignatures,
    global: Mode,
    routes: &RouteTable,
) -> Result<Signatures, ConfigError> {
    let mut keys = KeyRing::new();
    for (i, key) in raw.keys.iter().enumerate() {
        let secret = decode_secret(&key.secret, &format!("signatures.keys[{i}].secret"))?;
        keys.add(&key.id, &secret)
            .map_err(|e| err(format!("signatures.keys[{i}]"), e.to_string()))?;
    }
    let max_body = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if !(1..=MAX_MAX_BODY).contains(&max_body) {
        return Err(err(
            "signatures.max_body_bytes",
            format!("must be between 1 and {MAX_MAX_BODY}"),
        ));
    }
    let replay_pages = slot_pages(
        raw.replay_slots,
        DEFAULT_REPLAY_SLOTS,
        "signatures.replay_slots",
    )?;
    if !raw.policies.is_empty() && keys.is_empty() {
        return Err(err("signatures.keys", "policies need at least one key"));
    }
    let mut by_route: Vec<Option<usize>> = vec![None; routes.len_with_default()];
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (i, policy) in raw.policies.into_iter().enumerate() {
        let at = |field: &str| format!("signatures.policies[{i}].{field}");
        assign_routes(
            &mut by_route,
            routes,
            &policy.routes,
            &at("routes"),
            i,
            "a signature",
        )?;
        let defaults = Requirements::default();
        let max_age_s = policy.max_age.map_or(300, |d| d.as_ms().div_ceil(1000));
        let requirements = Requirements {
            label: policy.label,
            components: policy.components.unwrap_or(defaults.components),
            tag: policy.tag,
            max_age_s: Some(max_age_s),
            clock_skew_s: policy
                .clock_skew
                .map_or(defaults.clock_skew_s, |d| d.as_ms() / 1000),
            require_created: true,
            require_nonce: policy.require_nonce,
        };
        requirements.validate().map_err(|e| {
            let field = if e.starts_with("label") {
                "label"
            } else if e.starts_with("tag") {
                "tag"
            } else {
                "components"
            };
            err(at(field), e)
        })?;
        policies.push(SignaturePolicy {
            requirements,
            replay: policy.replay,
            require_digest: policy.require_digest,
        });
    }
    Ok(Signatures {
        mode: raw.mode.unwrap_or(global),
        keys,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        replay_pages,
        replay_scope: raw.replay_scope,
        policies,
        by_route,
    })
}
