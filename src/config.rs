//! The filter's one JSON document, parsed and validated once, in
//! `on_configure`. Everything here runs before traffic flows, so it may be
//! slow and thorough; everything it produces ([`Policy`]) is what the request
//! path reads, already checked, with names resolved to indices.
//!
//! Every error names the JSON path it is about (`rate_limits.rules[0].capacity`)
//! and what was expected, so that the operator reading Envoy's log can fix the
//! document without reading this code.

use crate::core::config_error::{
    assign_routes, check_name, env_value, err, is_header_name, route_ids, ConfigError,
};
use crate::core::duration::Millis;
use crate::core::metrics::StatNames;
use crate::core::mode::{string_enum, FailureMode, Mode};
use crate::core::routes::{PathMatcher, RouteClass, RouteId, RouteTable};
use crate::stages::auth::credentials::{
    ApiKey, Auth, AuthzPolicy, ForwardedClaim, ProviderSpec, RefreshTokens, TokenSource,
};
use crate::stages::auth::jwks::RemoteJwks;
use crate::stages::auth::jwt::{self, Alg, Jwks, Provider, ProviderSettings};
use crate::stages::integrity::signature::{KeyRing, Requirements};
use crate::stages::limits::buckets::{KeySpec, Refill, Rule};
use crate::state::slots;
use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The only schema version so far. Kept explicit so that a later, incompatible
/// schema can be told apart instead of half-parsed.
pub const SCHEMA_VERSION: u32 = 1;

const MAX_ROUTES: usize = 255;
const MAX_RULES: usize = 255;
const MIN_SLOTS: u32 = 16;
const MAX_SLOTS: u32 = 1 << 22;
const DEFAULT_SLOTS: u32 = 65_536;
const MAX_BAN_AFTER: u32 = 10_000;

/// Which requests take a token from a rule's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counts {
    /// Every request the rule applies to.
    #[default]
    Requests,
    /// Only requests refused by authentication, authorization or signature
    /// verification; while the bucket is empty (or the key banned) every
    /// request of the key is refused before any of that verification runs.
    Failures,
}

string_enum!(Counts, "\"requests\" or \"failures\"", { "requests" => Counts::Requests, "failures" => Counts::Failures });

/// How much of a client address makes its `ip` key: one IPv6 host can use a
/// whole /64, so keying by /128 would give it billions of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefixes {
    pub v4: u8,
    pub v6: u8,
}

impl Default for IpPrefixes {
    fn default() -> Self {
        IpPrefixes { v4: 32, v6: 64 }
    }
}

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    /// The TCP peer of Envoy.
    Peer,
    /// The `n`-th `X-Forwarded-For` entry from the right, for `n` proxies in
    /// front of Envoy that each append the address they saw.
    ForwardedFor { trusted_hops: u32 },
}

/// Escalating cooldowns for keys that keep exceeding a rule with `ban: true`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanPolicy {
    pub mode: Mode,
    pub after: u32,
    pub base_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub decay_ms: u64,
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub mode: Mode,
    /// Number of slot pages in the shared table (slots / slots per page).
    pub pages: u32,
    pub quota_headers: bool,
    pub rules: Vec<Rule>,
}

/// The validated, compiled configuration the request path reads.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub failure_mode: FailureMode,
    pub client_ip: ClientIpSource,
    pub ip_prefixes: IpPrefixes,
    /// Lower-cased name of the header carrying the user identity.
    pub user_header: Option<String>,
    pub routes: RouteTable,
    pub rate_limits: RateLimits,
    pub bans: BanPolicy,
    pub signatures: Signatures,
    pub auth: Auth,
}

/// RFC 9421 request signatures: the keys, and which route classes need what.
#[derive(Debug, Clone)]
pub struct Signatures {
    pub mode: Mode,
    pub keys: KeyRing,
    /// Largest body buffered for a `Content-Digest` check.
    pub max_body_bytes: usize,
    /// Pages of the shared replay table.
    pub replay_pages: u32,
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

impl Policy {
    /// Every shared-data key the policy's tables use: all are created up
    /// front (see `slots`).
    pub fn shared_keys(&self) -> impl Iterator<Item = String> + '_ {
        let replay_pages = if self.signatures.policies.iter().any(|p| p.replay) {
            self.signatures.replay_pages
        } else {
            0
        };
        let overflow = self
            .rate_limits
            .rules
            .iter()
            .map(|r| slots::overflow_key(r.index));
        let refresh_pages = self.auth.refresh.as_ref().map_or(0, |r| r.pages);
        (0..self.rate_limits.pages)
            .map(|i| slots::page_key(slots::RATE_LIMITS, i))
            .chain(overflow)
            .chain((0..replay_pages).map(|i| slots::page_key(slots::REPLAY, i)))
            .chain((0..refresh_pages).map(|i| slots::page_key(slots::REFRESH, i)))
    }

    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err(
                ".",
                "the configuration is empty; palisade needs a JSON object (see README, Configuration)",
            ));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(".", format!("not valid JSON: {e}")))?;
        reject_arrays_as_objects(&value, &mut String::new())
            .map_err(|e| without_secrets(e, &value))?;
        // Kept for the error path only: serde consumes `value`.
        let doc = value.clone();
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "?" || p.is_empty() => ".".to_string(),
                p => p,
            };
            without_secrets(err(path, e.into_inner().to_string()), &doc)
        })?;
        compile(raw)
    }
}

/// Stat names carry the configured names of routes, rules and providers.
impl StatNames for Policy {
    fn route_name(&self, route: RouteId) -> &str {
        self.routes.name(route)
    }

    fn rule_name(&self, rule: u8) -> Option<&str> {
        self.rate_limits
            .rules
            .get(usize::from(rule))
            .map(|r| r.name.as_str())
    }

    fn provider_name(&self, provider: u8) -> Option<&str> {
        self.auth
            .providers
            .get(usize::from(provider))
            .map(|p| p.name.as_str())
    }
}

/// The only places the schema has lists; the path pattern writes `[]` for
/// any index.
const LIST_PATHS: [&str; 25] = [
    "jwt.from",
    "jwt.providers",
    "jwt.providers[].audiences",
    "jwt.providers[].algorithms",
    "jwt.providers[].required_claims",
    "jwt.providers[].forward_claims",
    "jwt.refresh_tokens.routes",
    "api_keys.keys",
    "api_keys.keys[].roles",
    "authorization.policies",
    "authorization.policies[].routes",
    "authorization.policies[].credentials",
    "authorization.policies[].providers",
    "authorization.policies[].roles",
    "authorization.policies[].scopes",
    "authorization.policies[].amr",
    "routes",
    "routes[].methods",
    "rate_limits.rules",
    "rate_limits.rules[].key",
    "rate_limits.rules[].routes",
    "signatures.keys",
    "signatures.policies",
    "signatures.policies[].routes",
    "signatures.policies[].components",
];

/// Values that are whole documents of another format.
const OPAQUE_PATHS: [&str; 1] = ["jwt.providers[].jwks.inline"];

const OBJECT_NOT_ARRAY: &str = "expected an object, found an array";

/// Schema paths (`[]` for any index) whose values are, or may hold, secrets,
/// with what each takes. The first three are the roots: an operator who
/// pastes a key in the wrong place or form gets an error that names the
/// path and what it takes, never the text it found (serde's messages quote
/// values and unknown names, and Envoy logs them).
const SECRET_FIELDS: [(&str, &str); 16] = [
    ("signatures.keys", "a list of keys {\"id\": \"<keyid>\", \"secret\": {...}}"),
    ("api_keys.keys", "a list of keys {\"id\": \"<name>\", \"sha256\": ..., \"roles\": [...]}"),
    ("jwt.providers[].jwks", "exactly one of {\"inline\": {\"keys\": [...]}} or {\"remote\": {...}}"),
    ("signatures.keys[]", "an object {\"id\": \"<keyid>\", \"secret\": {\"base64\": \"...\"} or {\"env\": \"VAR\"}}"),
    ("signatures.keys[].id", "a string: the key id signers send"),
    ("signatures.keys[].secret", "exactly one of {\"base64\": \"<standard base64>\"} or {\"env\": \"<environment variable of the wasm VM>\"}"),
    ("signatures.keys[].secret.base64", "a string: the secret in standard base64"),
    ("signatures.keys[].secret.env", "a string: the name of an environment variable of the wasm VM"),
    ("api_keys.keys[]", "an object {\"id\": \"<name>\", \"sha256\": \"<64 hex digits>\" or {\"env\": \"VAR\"}, \"roles\": [...]}"),
    ("api_keys.keys[].id", "a string: the key's name"),
    ("api_keys.keys[].sha256", "a string of the 64 hex digits of the key's SHA-256, or {\"env\": \"<environment variable of the wasm VM>\"}"),
    ("api_keys.keys[].sha256.env", "a string: the name of an environment variable of the wasm VM"),
    ("api_keys.keys[].roles", "a list of strings"),
    ("api_keys.keys[].roles[]", "a string"),
    ("jwt.providers[].jwks.inline", "a JWK Set {\"keys\": [...]}"),
    ("jwt.providers[].jwks.remote", "an object {\"cluster\" or \"address\", \"path\", ...}"),
];

/// Fields of a remote key set are locations and durations, never secrets:
/// their errors keep serde's and palisade's own precise messages.
const NOT_SECRET_BELOW: &str = "jwt.providers[].jwks.remote";

/// One step of an error path: a field name, or an index (`[3]`, or `[..]`
/// for any).
enum PathStep<'a> {
    Name(&'a str),
    Index(&'a str),
}

fn path_steps(path: &str) -> Vec<PathStep<'_>> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if rest.starts_with('[') {
            let end = rest.find(']').map_or(rest.len(), |i| i + 1);
            let (index, tail) = rest.split_at(end);
            steps.push(PathStep::Index(index));
            rest = tail;
        } else {
            let name_end = rest.find(['.', '[']).unwrap_or(rest.len());
            let (name, tail) = rest.split_at(name_end);
            if !name.is_empty() {
                steps.push(PathStep::Name(name));
            }
            rest = tail.strip_prefix('.').unwrap_or(tail);
        }
    }
    steps
}

/// What a JSON value is, without its text; for an object, the field names
/// the schema knows at `pattern` and how many others there are.
fn describe(value: &serde_json::Value, pattern: &str) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(_) => "a number".to_string(),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(fields) => {
            let known: Vec<String> = fields
                .keys()
                .filter(|k| {
                    SECRET_FIELDS
                        .iter()
                        .any(|(p, _)| *p == format!("{pattern}.{k}"))
                })
                .map(|k| format!("`{k}`"))
                .collect();
            let others = fields.len() - known.len();
            let mut text = "an object".to_string();
            if !known.is_empty() {
                text.push_str(&format!(" with fields {}", known.join(", ")));
            }
            if others > 0 {
                let joint = if known.is_empty() { "with" } else { "and" };
                text.push_str(&format!(
                    " {joint} {others} field(s) not in the schema (names not shown)"
                ));
            }
            text
        }
    }
}

/// `e` as it may be shown: at or below a [`SECRET_FIELDS`] root, the path
/// is cut at the first name the schema does not know and the message is
/// rebuilt from the schema and the kind of value found (`doc`), so no text
/// of the document reaches Envoy's log or `palisade-check`'s output.
fn without_secrets(e: ConfigError, doc: &serde_json::Value) -> ConfigError {
    let steps = path_steps(&e.path);
    let mut pattern = String::new();
    let mut shown = String::new();
    let mut value = Some(doc);
    let mut inside = None;
    for (i, step) in steps.iter().enumerate() {
        if pattern == NOT_SECRET_BELOW {
            return e;
        }
        let mut next_pattern = pattern.clone();
        let mut next_shown = shown.clone();
        match step {
            PathStep::Name(name) => {
                for s in [&mut next_pattern, &mut next_shown] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(name);
                }
            }
            PathStep::Index(index) => {
                next_pattern.push_str("[]");
                next_shown.push_str(index);
            }
        }
        let expected = SECRET_FIELDS
            .iter()
            .find(|(p, _)| *p == next_pattern)
            .map(|(_, x)| *x);
        if inside.is_some() && expected.is_none() {
            break;
        }
        value = value.and_then(|v| match step {
            PathStep::Name(name) => v.get(*name),
            PathStep::Index(index) => index
                .trim_matches(['[', ']'])
                .parse::<usize>()
                .ok()
                .and_then(|n| v.get(n)),
        });
        pattern = next_pattern;
        shown = next_shown;
        // Every entry extends a root, so the first one met is a root.
        if let Some(expected) = expected {
            inside = Some((i + 1, expected));
        }
    }
    let Some((depth, expected)) = inside else {
        return e;
    };
    let cut = depth < steps.len();
    let problem = if cut {
        "a field not in the schema (its name is not shown: it may be a secret)".to_string()
    } else if e.message.starts_with("missing field `") || e.message == OBJECT_NOT_ARRAY {
        // Names from the schema only.
        return err(shown, e.message);
    } else {
        match value {
            Some(v) => format!("found {}", describe(v, &pattern)),
            None => "an invalid value".to_string(),
        }
    };
    err(
        shown,
        format!(
            "{problem}; expected {expected} (values here are never shown: they may be secrets)"
        ),
    )
}

/// serde lets a struct be written as a positional array (`"bans": [3]`);
/// that is never what an operator means, so arrays are accepted only where
/// the schema has a list.
fn reject_arrays_as_objects(
    value: &serde_json::Value,
    pattern: &mut String,
) -> Result<(), ConfigError> {
    match value {
        serde_json::Value::Array(items) => {
            if !LIST_PATHS.contains(&pattern.as_str()) {
                let shown = if pattern.is_empty() {
                    "."
                } else {
                    pattern.as_str()
                };
                return Err(err(shown.replace("[]", "[..]"), OBJECT_NOT_ARRAY));
            }
            for item in items {
                let len = pattern.len();
                pattern.push_str("[]");
                reject_arrays_as_objects(item, pattern)?;
                pattern.truncate(len);
            }
        }
        // Documents of other formats embedded whole (a JWK Set) have their
        // own rules.
        serde_json::Value::Object(_) if OPAQUE_PATHS.contains(&pattern.as_str()) => {}
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                let len = pattern.len();
                if !pattern.is_empty() {
                    pattern.push('.');
                }
                pattern.push_str(name);
                reject_arrays_as_objects(field, pattern)?;
                pattern.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_version")]
    version: u32,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    user: Option<RawUser>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    bans: RawBans,
    #[serde(default)]
    signatures: RawSignatures,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    api_keys: RawApiKeys,
    #[serde(default)]
    authorization: RawAuthorization,
}

fn default_version() -> u32 {
    SCHEMA_VERSION
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    source: RawIpSource,
    #[serde(default)]
    trusted_hops: Option<u32>,
    #[serde(default)]
    ipv4_prefix: Option<u8>,
    #[serde(default)]
    ipv6_prefix: Option<u8>,
}

#[derive(Default, PartialEq)]
enum RawIpSource {
    #[default]
    Peer,
    ForwardedFor,
}

string_enum!(RawIpSource, "\"peer\" or \"x-forwarded-for\"", {
    "peer" => RawIpSource::Peer,
    "x-forwarded-for" => RawIpSource::ForwardedFor,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    header: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    quota_headers: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    key: Vec<KeyPart>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    capacity: u32,
    refill: RawRefill,
    #[serde(default)]
    ban: bool,
    #[serde(default)]
    counts: Counts,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyPart {
    Ip,
    User,
    Route,
    KeyId,
}

string_enum!(KeyPart, "\"ip\", \"user\", \"route\" or \"key_id\"", {
    "ip" => KeyPart::Ip,
    "user" => KeyPart::User,
    "route" => KeyPart::Route,
    "key_id" => KeyPart::KeyId,
});

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    keys: Vec<RawSigningKey>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    replay_slots: Option<u32>,
    #[serde(default)]
    policies: Vec<RawSignaturePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigningKey {
    id: String,
    secret: RawSecret,
}

/// A secret is never written in the policy itself for production: `env`
/// names an environment variable of the wasm VM (Envoy's
/// `vm_config.environment_variables`, fed from a Kubernetes Secret) holding
/// its base64; `base64` inline is for demos and tests.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawSecret {
    Base64(String),
    Env(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignaturePolicy {
    routes: Vec<String>,
    #[serde(default)]
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
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    from: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    cache_entries: Option<u32>,
    #[serde(default)]
    without_keys: FailureMode,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    refresh_tokens: Option<RawRefreshTokens>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Vec<String>,
    jwks: RawJwksSource,
    #[serde(default)]
    clock_skew: Option<RawDuration>,
    #[serde(default)]
    max_lifetime: Option<Millis>,
    #[serde(default)]
    max_age: Option<Millis>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    roles_claim: Option<String>,
    #[serde(default)]
    forward_claims: Vec<RawForwardClaim>,
}

/// A duration that may be zero (`"0s"`): clock skew can be switched off.
#[derive(Clone, Copy)]
struct RawDuration(u64);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if matches!(text.as_str(), "0" | "0s" | "0ms") {
            return Ok(RawDuration(0));
        }
        crate::core::duration::parse_duration(&text)
            .map(|d| RawDuration(d.as_ms()))
            .map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawJwksSource {
    Inline(serde_json::Value),
    Remote(RawRemoteJwks),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    path: String,
    #[serde(default)]
    refresh: Option<Millis>,
    #[serde(default)]
    min_refetch: Option<Millis>,
    #[serde(default)]
    timeout: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardClaim {
    claim: String,
    header: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefreshTokens {
    routes: Vec<String>,
    #[serde(default)]
    remember: Option<Millis>,
    #[serde(default)]
    slots: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    keys: Vec<RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    id: String,
    sha256: RawHash,
    #[serde(default)]
    roles: Vec<String>,
}

/// The hex SHA-256 of an API key, inline or from a VM environment variable.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawHash {
    Hex(String),
    Env(RawEnvRef),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvRef {
    env: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    policies: Vec<RawAuthzPolicy>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawCredential {
    Jwt,
    ApiKey,
}

string_enum!(RawCredential, "\"jwt\" or \"api_key\"", {
    "jwt" => RawCredential::Jwt,
    "api_key" => RawCredential::ApiKey,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthzPolicy {
    routes: Vec<String>,
    #[serde(default)]
    credentials: Option<Vec<RawCredential>>,
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
}

fn yes() -> bool {
    true
}

/// `"none"` or `{"tokens": n, "every": "<duration>"}`: an explicit choice,
/// because a bucket that never refills is a real but surprising policy.
enum RawRefill {
    Never,
    Every { tokens: u32, every: Millis },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefillRate {
    tokens: u32,
    every: Millis,
}

impl<'de> Deserialize<'de> for RawRefill {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefillVisitor;
        impl<'de> Visitor<'de> for RefillVisitor {
            type Value = RawRefill;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\" or an object {\"tokens\": n, \"every\": \"1s\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRefill, E> {
                match v {
                    "none" => Ok(RawRefill::Never),
                    other => Err(E::custom(format!(
                        "unknown refill `{other}`; expected \"none\" or {{\"tokens\": n, \"every\": \"1s\"}}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRefill, A::Error> {
                let rate = RawRefillRate::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRefill::Every {
                    tokens: rate.tokens,
                    every: rate.every,
                })
            }
        }
        deserializer.deserialize_any(RefillVisitor)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBans {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    after: Option<u32>,
    #[serde(default)]
    base: Option<Millis>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    max: Option<Millis>,
    #[serde(default)]
    decay: Option<Millis>,
}

fn compile(raw: RawConfig) -> Result<Policy, ConfigError> {
    if raw.version != SCHEMA_VERSION {
        return Err(err(
            "version",
            format!(
                "unsupported version {}; this build understands version {SCHEMA_VERSION}",
                raw.version
            ),
        ));
    }
    let client_ip = compile_client_ip(&raw.client_ip)?;
    let ip_prefixes = compile_ip_prefixes(&raw.client_ip)?;
    let user_header = match raw.user {
        None => None,
        Some(user) => {
            if !is_header_name(&user.header) {
                return Err(err(
                    "user.header",
                    format!("`{}` is not a valid HTTP header name", user.header),
                ));
            }
            Some(user.header.to_ascii_lowercase())
        }
    };
    let routes = compile_routes(raw.routes)?;
    let bans = compile_bans(&raw.bans, raw.mode)?;
    let signatures = compile_signatures(raw.signatures, raw.mode, &routes)?;
    let auth = compile_auth(raw.jwt, raw.api_keys, raw.authorization, raw.mode, &routes)?;
    let rate_limits = compile_rate_limits(
        raw.rate_limits,
        raw.mode,
        &routes,
        user_header.is_some() || !auth.policies.is_empty(),
        !signatures.policies.is_empty(),
    )?;
    Ok(Policy {
        mode: raw.mode,
        failure_mode: raw.failure_mode,
        client_ip,
        ip_prefixes,
        user_header,
        routes,
        rate_limits,
        bans,
        signatures,
        auth,
    })
}

const DEFAULT_MAX_BODY: u64 = 1 << 20;
const MAX_MAX_BODY: u64 = 64 << 20;
const DEFAULT_REPLAY_SLOTS: u32 = 65_536;

fn decode_secret(secret: &RawSecret, path: &str) -> Result<Vec<u8>, ConfigError> {
    let (text, source) = match secret {
        RawSecret::Base64(text) => (text.clone(), format!("{path}.base64")),
        RawSecret::Env(name) => (env_value(name, path)?, format!("{path}.env")),
    };
    // The error never quotes the secret.
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| err(source, "is not valid standard base64"))
}

fn compile_signatures(
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
    let replay_slots = raw.replay_slots.unwrap_or(DEFAULT_REPLAY_SLOTS);
    if !(MIN_SLOTS..=MAX_SLOTS).contains(&replay_slots) {
        return Err(err(
            "signatures.replay_slots",
            format!("must be between {MIN_SLOTS} and {MAX_SLOTS}"),
        ));
    }
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
        replay_pages: replay_slots.div_ceil(slots::SLOTS_PER_PAGE as u32),
        policies,
        by_route,
    })
}

const MAX_PROVIDERS: usize = 16;
const DEFAULT_CACHE_ENTRIES: u32 = 1024;
const MAX_CACHE_ENTRIES: u32 = 1 << 20;
const DEFAULT_CLOCK_SKEW_MS: u64 = 30_000;
const DEFAULT_REFRESH_REMEMBER_MS: u64 = 30 * 86_400_000;

/// The `jwt`, `api_keys` and `authorization` sections, which only mean
/// something together.
fn compile_auth(
    jwt: RawJwt,
    api_keys: RawApiKeys,
    authorization: RawAuthorization,
    global: Mode,
    routes: &RouteTable,
) -> Result<Auth, ConfigError> {
    let sources = compile_token_sources(jwt.from)?;
    if jwt.providers.len() > MAX_PROVIDERS {
        return Err(err(
            "jwt.providers",
            format!("at most {MAX_PROVIDERS} providers"),
        ));
    }
    let mut providers: Vec<ProviderSpec> = Vec::with_capacity(jwt.providers.len());
    for (i, raw) in jwt.providers.into_iter().enumerate() {
        let at = format!("jwt.providers[{i}]");
        if providers.iter().any(|p| p.name == raw.name) {
            return Err(err(
                format!("{at}.name"),
                format!("duplicate provider name `{}`", raw.name),
            ));
        }
        providers.push(compile_provider(raw, &at)?);
    }
    let mut owned_headers = vec![crate::stages::auth::credentials::USER_HEADER.to_string()];
    for p in &providers {
        for f in &p.forward {
            if !owned_headers.contains(&f.header) {
                owned_headers.push(f.header.clone());
            }
        }
    }
    let cache_entries = jwt.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES);
    if cache_entries > MAX_CACHE_ENTRIES {
        return Err(err(
            "jwt.cache_entries",
            format!("must be at most {MAX_CACHE_ENTRIES}"),
        ));
    }
    let api_key_header = match &api_keys.header {
        None => None,
        Some(h) if is_header_name(h) => Some(h.to_ascii_lowercase()),
        Some(h) => {
            return Err(err(
                "api_keys.header",
                format!("`{h}` is not a valid HTTP header name"),
            ))
        }
    };
    let mut keys: Vec<ApiKey> = Vec::with_capacity(api_keys.keys.len());
    for (i, key) in api_keys.keys.into_iter().enumerate() {
        let at = format!("api_keys.keys[{i}]");
        check_name(&format!("{at}.id"), &key.id)?;
        if keys.iter().any(|k| k.id == key.id) {
            return Err(err(
                format!("{at}.id"),
                format!("duplicate key id `{}`", key.id),
            ));
        }
        let sha256 = decode_key_hash(&key.sha256, &format!("{at}.sha256"))?;
        if keys.iter().any(|k| k.sha256 == sha256) {
            return Err(err(
                format!("{at}.sha256"),
                "the same key hash is configured twice",
            ));
        }
        keys.push(ApiKey {
            id: key.id,
            sha256,
            roles: {
                if let Some(j) = key.roles.iter().position(String::is_empty) {
                    return Err(err(format!("{at}.roles[{j}]"), "must not be empty"));
                }
                key.roles
            },
        });
    }
    if !keys.is_empty() && api_key_header.is_none() {
        return Err(err(
            "api_keys.header",
            "required when keys are configured: the header clients send their key in",
        ));
    }

    let mut by_route: Vec<Option<usize>> = vec![None; routes.len_with_default()];
    let mut policies = Vec::with_capacity(authorization.policies.len());
    for (i, raw) in authorization.policies.into_iter().enumerate() {
        let at = |field: &str| format!("authorization.policies[{i}].{field}");
        assign_routes(
            &mut by_route,
            routes,
            &raw.routes,
            &at("routes"),
            i,
            "an authorization",
        )?;
        let credentials = raw.credentials.unwrap_or_else(|| vec![RawCredential::Jwt]);
        if credentials.is_empty() {
            return Err(err(at("credentials"), "must not be empty"));
        }
        let accept_jwt = credentials.contains(&RawCredential::Jwt);
        let accept_api_key = credentials.contains(&RawCredential::ApiKey);
        if accept_jwt && providers.is_empty() {
            return Err(err(
                at("credentials"),
                "accepts \"jwt\" but no `jwt.providers` are configured",
            ));
        }
        if accept_api_key && keys.is_empty() {
            return Err(err(
                at("credentials"),
                "accepts \"api_key\" but no `api_keys.keys` are configured",
            ));
        }
        let provider_ids = match raw.providers {
            None => (0..providers.len()).collect(),
            Some(names) => {
                if names.is_empty() {
                    return Err(err(
                        at("providers"),
                        "must not be empty; omit it to accept every provider",
                    ));
                }
                names
                    .iter()
                    .enumerate()
                    .map(|(j, name)| {
                        providers
                            .iter()
                            .position(|p| &p.name == name)
                            .ok_or_else(|| {
                                err(
                                    format!("{}[{j}]", at("providers")),
                                    format!("no provider named `{name}` under `jwt.providers`"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        for (field, values) in [
            ("roles", &raw.roles),
            ("scopes", &raw.scopes),
            ("amr", &raw.amr),
        ] {
            if let Some(j) = values.iter().position(String::is_empty) {
                return Err(err(format!("{}[{j}]", at(field)), "must not be empty"));
            }
        }
        policies.push(AuthzPolicy {
            accept_jwt,
            accept_api_key,
            providers: provider_ids,
            roles: raw.roles,
            scopes: raw.scopes,
            amr: raw.amr,
        });
    }

    let refresh = match jwt.refresh_tokens {
        None => None,
        Some(raw) => {
            let slots = raw.slots.unwrap_or(DEFAULT_REPLAY_SLOTS);
            if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
                return Err(err(
                    "jwt.refresh_tokens.slots",
                    format!("must be between {MIN_SLOTS} and {MAX_SLOTS}"),
                ));
            }
            let mut applies = vec![false; routes.len_with_default()];
            for id in route_ids(routes, &raw.routes, "jwt.refresh_tokens.routes")? {
                if let Some(flag) = applies.get_mut(usize::from(id)) {
                    *flag = true;
                }
            }
            Some(RefreshTokens {
                by_route: applies,
                remember_ms: raw
                    .remember
                    .map_or(DEFAULT_REFRESH_REMEMBER_MS, Millis::as_ms),
                pages: slots.div_ceil(slots::SLOTS_PER_PAGE as u32),
            })
        }
    };
    Ok(Auth {
        jwt_mode: jwt.mode.unwrap_or(global),
        authz_mode: authorization.mode.unwrap_or(global),
        sources,
        cache_entries: usize::try_from(cache_entries).unwrap_or(usize::MAX),
        without_keys: jwt.without_keys,
        providers,
        api_key_header,
        api_keys: keys,
        policies,
        by_route,
        refresh,
        owned_headers,
    })
}

fn compile_token_sources(
    raw: Option<Vec<RawTokenSource>>,
) -> Result<Vec<TokenSource>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec![TokenSource::Header {
            name: "authorization".to_string(),
            prefix: Some("Bearer ".to_string()),
        }]);
    };
    if raw.is_empty() {
        return Err(err(
            "jwt.from",
            "must not be empty; omit it for `Authorization: Bearer`",
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, source)| {
            let at = format!("jwt.from[{i}]");
            match (source.header, source.cookie, source.prefix) {
                (Some(name), None, prefix) => {
                    if !is_header_name(&name) {
                        return Err(err(
                            format!("{at}.header"),
                            format!("`{name}` is not a valid HTTP header name"),
                        ));
                    }
                    if prefix.as_deref() == Some("") {
                        return Err(err(
                            format!("{at}.prefix"),
                            "must not be empty; omit it for none",
                        ));
                    }
                    Ok(TokenSource::Header {
                        name: name.to_ascii_lowercase(),
                        prefix,
                    })
                }
                (None, Some(name), None) => {
                    if !is_header_name(&name) {
                        return Err(err(
                            format!("{at}.cookie"),
                            format!("`{name}` is not a valid cookie name"),
                        ));
                    }
                    Ok(TokenSource::Cookie(name))
                }
                (None, Some(_), Some(_)) => {
                    Err(err(format!("{at}.prefix"), "only applies to a header"))
                }
                _ => Err(err(at, "needs exactly one of `header` or `cookie`")),
            }
        })
        .collect()
}

fn compile_provider(raw: RawProvider, at: &str) -> Result<ProviderSpec, ConfigError> {
    check_name(&format!("{at}.name"), &raw.name)?;
    let mut algorithms = Vec::with_capacity(raw.algorithms.len());
    for (j, name) in raw.algorithms.iter().enumerate() {
        let alg = Alg::from_name(name).ok_or_else(|| {
            err(
                format!("{at}.algorithms[{j}]"),
                format!(
                    "unsupported algorithm `{name}`; expected one of {}",
                    Alg::ALL.map(Alg::as_str).join(", ")
                ),
            )
        })?;
        algorithms.push(alg);
    }
    let (inline_jwks, remote, keys) = match raw.jwks {
        RawJwksSource::Inline(doc) => {
            let bytes = serde_json::to_vec(&doc).unwrap_or_default();
            let (keys, errors) = Jwks::parse_with_symmetric(&bytes);
            if let Some(e) = errors.first() {
                // An inline set is the operator's own: a bad entry is a typo.
                let path = match e.index {
                    Some(k) => format!("{at}.jwks.inline.keys[{k}]"),
                    None => format!("{at}.jwks.inline"),
                };
                return Err(err(path, e.reason));
            }
            if keys.is_empty() {
                return Err(err(
                    format!("{at}.jwks.inline.keys"),
                    "must hold at least one key",
                ));
            }
            (Some(bytes), None, keys)
        }
        RawJwksSource::Remote(remote) => (
            None,
            Some(compile_remote_jwks(
                remote,
                &raw.name,
                &format!("{at}.jwks.remote"),
            )?),
            Jwks::default(),
        ),
    };
    if remote.is_some() && algorithms.contains(&Alg::Hs256) {
        return Err(err(
            format!("{at}.algorithms"),
            "`HS256` needs a symmetric key, which only an inline key set may hold",
        ));
    }
    let skew_ms = raw.clock_skew.map_or(DEFAULT_CLOCK_SKEW_MS, |d| d.0);
    if skew_ms > jwt::MAX_CLOCK_SKEW_S * 1000 {
        return Err(err(
            format!("{at}.clock_skew"),
            format!("must be at most {} seconds", jwt::MAX_CLOCK_SKEW_S),
        ));
    }
    let settings = ProviderSettings {
        issuer: raw.issuer,
        audiences: raw.audiences,
        algorithms,
        clock_skew_s: skew_ms / 1000,
        max_lifetime_s: raw.max_lifetime.map(|d| d.as_ms().div_ceil(1000)),
        max_age_s: raw.max_age.map(|d| d.as_ms().div_ceil(1000)),
        required_claims: raw.required_claims,
    };
    // The same checks the request path relies on, with their field names.
    Provider::new(settings.clone(), keys)
        .map_err(|e| err(format!("{at}.{}", e.field), e.message))?;
    let roles_claim = raw.roles_claim.unwrap_or_else(|| "roles".to_string());
    if roles_claim.is_empty() {
        return Err(err(format!("{at}.roles_claim"), "must not be empty"));
    }
    let mut forward = Vec::with_capacity(raw.forward_claims.len());
    for (j, f) in raw.forward_claims.into_iter().enumerate() {
        let header = f.header.to_ascii_lowercase();
        if !is_header_name(&header) || header.starts_with(':') {
            return Err(err(
                format!("{at}.forward_claims[{j}].header"),
                format!("`{}` is not a valid HTTP header name", f.header),
            ));
        }
        if matches!(
            header.as_str(),
            "host" | "authorization" | "cookie" | "content-length" | "transfer-encoding"
        ) {
            return Err(err(
                format!("{at}.forward_claims[{j}].header"),
                format!("`{header}` cannot carry a claim"),
            ));
        }
        if header == crate::stages::auth::credentials::USER_HEADER {
            return Err(err(
                format!("{at}.forward_claims[{j}].header"),
                format!("`{header}` is palisade's own identity header (the token's `sub`)"),
            ));
        }
        if forward.iter().any(|g: &ForwardedClaim| g.header == header) {
            return Err(err(
                format!("{at}.forward_claims[{j}].header"),
                format!("`{header}` already carries another claim"),
            ));
        }
        if f.claim.is_empty() {
            return Err(err(
                format!("{at}.forward_claims[{j}].claim"),
                "must not be empty",
            ));
        }
        forward.push(ForwardedClaim {
            claim: f.claim,
            header,
        });
    }
    Ok(ProviderSpec {
        name: raw.name,
        settings,
        inline_jwks,
        remote,
        roles_claim,
        forward,
    })
}

const DEFAULT_JWKS_REFRESH_MS: u64 = 300_000;
const DEFAULT_JWKS_MIN_REFETCH_MS: u64 = 30_000;
const DEFAULT_JWKS_TIMEOUT_MS: u64 = 2_000;

fn compile_remote_jwks(
    raw: RawRemoteJwks,
    provider: &str,
    at: &str,
) -> Result<RemoteJwks, ConfigError> {
    let upstream = match (raw.cluster, raw.address) {
        (Some(cluster), None) if !cluster.is_empty() => cluster,
        (None, Some(address)) => {
            let host_ok = |host: &str| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            };
            let port_ok = |port: &str| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            };
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| host_ok(host) && !host.ends_with(':') && port_ok(port));
            if !valid {
                return Err(err(format!("{at}.address"), format!("`{address}` is not host:port")));
            }
            address
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
    let timeout_ms = raw.timeout.map_or(DEFAULT_JWKS_TIMEOUT_MS, Millis::as_ms);
    let min_refetch_ms = raw
        .min_refetch
        .map_or(DEFAULT_JWKS_MIN_REFETCH_MS, Millis::as_ms);
    let refresh_ms = raw.refresh.map_or(DEFAULT_JWKS_REFRESH_MS, Millis::as_ms);
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
        (provider, &upstream, &authority, &raw.path).hash(&mut h);
        format!("palisade.jwks.{provider}.{:016x}", h.finish())
    };
    Ok(RemoteJwks {
        upstream,
        authority,
        path: raw.path,
        refresh_ms,
        min_refetch_ms,
        timeout_ms,
        record_key,
    })
}

/// `sha256` of an API key: 64 hex digits, inline or in a VM environment
/// variable. Errors never quote the value.
fn decode_key_hash(raw: &RawHash, path: &str) -> Result<[u8; 32], ConfigError> {
    let (text, at) = match raw {
        RawHash::Hex(text) => (text.clone(), path.to_string()),
        RawHash::Env(r) => (env_value(&r.env, path)?, format!("{path}.env")),
    };
    let text = text.trim();
    let mut out = [0u8; 32];
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(at, "must be the 64 hex digits of the key's SHA-256 (e.g. `printf %s \"$KEY\" | sha256sum`)"));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = text
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    Ok(out)
}

fn compile_client_ip(raw: &RawClientIp) -> Result<ClientIpSource, ConfigError> {
    match (&raw.source, raw.trusted_hops) {
        (RawIpSource::Peer, None) => Ok(ClientIpSource::Peer),
        (RawIpSource::Peer, Some(_)) => Err(err(
            "client_ip.trusted_hops",
            "only applies with \"source\": \"x-forwarded-for\"",
        )),
        (RawIpSource::ForwardedFor, None) => Err(err(
            "client_ip.trusted_hops",
            "required with \"source\": \"x-forwarded-for\": the number of proxies in front of Envoy that append to X-Forwarded-For",
        )),
        (RawIpSource::ForwardedFor, Some(0)) => Err(err(
            "client_ip.trusted_hops",
            "must be at least 1; with no trusted proxy use \"source\": \"peer\"",
        )),
        (RawIpSource::ForwardedFor, Some(n)) if n > 16 => {
            Err(err("client_ip.trusted_hops", format!("{n} is more hops than any real deployment; at most 16")))
        }
        (RawIpSource::ForwardedFor, Some(n)) => Ok(ClientIpSource::ForwardedFor { trusted_hops: n }),
    }
}

fn compile_ip_prefixes(raw: &RawClientIp) -> Result<IpPrefixes, ConfigError> {
    let mut prefixes = IpPrefixes::default();
    if let Some(v4) = raw.ipv4_prefix {
        if !(8..=32).contains(&v4) {
            return Err(err("client_ip.ipv4_prefix", "must be between 8 and 32"));
        }
        prefixes.v4 = v4;
    }
    if let Some(v6) = raw.ipv6_prefix {
        if !(16..=128).contains(&v6) {
            return Err(err("client_ip.ipv6_prefix", "must be between 16 and 128"));
        }
        prefixes.v6 = v6;
    }
    Ok(prefixes)
}

fn compile_routes(raw: Vec<RawRoute>) -> Result<RouteTable, ConfigError> {
    if raw.len() > MAX_ROUTES {
        return Err(err("routes", format!("at most {MAX_ROUTES} route classes")));
    }
    let mut classes: Vec<RouteClass> = Vec::with_capacity(raw.len());
    for (i, route) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        check_name(&at("name"), &route.name)?;
        if route.name == RouteTable::DEFAULT_NAME {
            return Err(err(
                at("name"),
                "`default` is reserved for requests no route matches",
            ));
        }
        if classes.iter().any(|c| c.name == route.name) {
            return Err(err(
                at("name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        let matcher = match (route.prefix, route.path, route.regex) {
            (Some(prefix), None, None) => {
                if !prefix.starts_with('/') {
                    return Err(err(at("prefix"), "must start with `/`"));
                }
                PathMatcher::Prefix(prefix)
            }
            (None, Some(path), None) => {
                if !path.starts_with('/') {
                    return Err(err(at("path"), "must start with `/`"));
                }
                PathMatcher::Exact(path)
            }
            (None, None, Some(pattern)) => {
                let regex = regex_lite::Regex::new(&pattern)
                    .map_err(|e| err(at("regex"), format!("invalid regular expression: {e}")))?;
                PathMatcher::Regex(regex)
            }
            _ => {
                return Err(err(
                    format!("routes[{i}]"),
                    "needs exactly one of `prefix`, `path` or `regex`",
                ))
            }
        };
        let methods = match route.methods {
            None => None,
            Some(methods) => {
                if methods.is_empty() {
                    return Err(err(
                        at("methods"),
                        "must not be empty; omit it to match every method",
                    ));
                }
                for (j, m) in methods.iter().enumerate() {
                    if !is_header_name(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                        return Err(err(
                            format!("routes[{i}].methods[{j}]"),
                            format!("`{m}` is not an upper-case HTTP method"),
                        ));
                    }
                }
                Some(methods)
            }
        };
        classes.push(RouteClass {
            name: route.name,
            matcher,
            methods,
        });
    }
    Ok(RouteTable::new(classes))
}

fn compile_bans(raw: &RawBans, global: Mode) -> Result<BanPolicy, ConfigError> {
    let after = raw.after.unwrap_or(3);
    if after == 0 || after > MAX_BAN_AFTER {
        return Err(err(
            "bans.after",
            format!("must be between 1 and {MAX_BAN_AFTER}"),
        ));
    }
    let factor = raw.factor.unwrap_or(2.0);
    if !factor.is_finite() || !(1.0..=100.0).contains(&factor) {
        return Err(err("bans.factor", "must be a number between 1 and 100"));
    }
    let base_ms = raw.base.map_or(30_000, Millis::as_ms);
    let max_ms = raw.max.map_or(3_600_000, Millis::as_ms);
    if max_ms < base_ms {
        return Err(err("bans.max", "must not be shorter than bans.base"));
    }
    Ok(BanPolicy {
        mode: raw.mode.unwrap_or(global),
        after,
        base_ms,
        factor,
        max_ms,
        decay_ms: raw.decay.map_or(600_000, Millis::as_ms),
    })
}

fn compile_rate_limits(
    raw: RawRateLimits,
    global: Mode,
    routes: &RouteTable,
    has_user_header: bool,
    has_signatures: bool,
) -> Result<RateLimits, ConfigError> {
    let slots = raw.slots.unwrap_or(DEFAULT_SLOTS);
    if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
        return Err(err(
            "rate_limits.slots",
            format!("must be between {MIN_SLOTS} and {MAX_SLOTS}"),
        ));
    }
    if raw.rules.len() > MAX_RULES {
        return Err(err(
            "rate_limits.rules",
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let at = |field: &str| format!("rate_limits.rules[{i}].{field}");
        check_name(&at("name"), &rule.name)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(err(
                at("name"),
                format!("duplicate rule name `{}`", rule.name),
            ));
        }
        if rule.key.is_empty() {
            return Err(err(
                at("key"),
                "must name at least one of \"ip\", \"user\", \"route\", \"key_id\"",
            ));
        }
        let mut key = KeySpec::default();
        for (j, part) in rule.key.iter().enumerate() {
            let seen = match part {
                KeyPart::Ip => std::mem::replace(&mut key.ip, true),
                KeyPart::User => std::mem::replace(&mut key.user, true),
                KeyPart::Route => std::mem::replace(&mut key.route, true),
                KeyPart::KeyId => std::mem::replace(&mut key.key_id, true),
            };
            if seen {
                return Err(err(
                    format!("rate_limits.rules[{i}].key[{j}]"),
                    "listed twice",
                ));
            }
        }
        if key.user && !has_user_header {
            return Err(err(
                at("key"),
                "keys on \"user\" but no `user.header` is configured",
            ));
        }
        if key.key_id && !has_signatures {
            return Err(err(
                at("key"),
                "keys on \"key_id\" but no `signatures.policies` verify any signature",
            ));
        }
        if rule.counts == Counts::Failures && (key.user || key.key_id) {
            return Err(err(
                at("counts"),
                "a rule counting failures is checked before authentication, so its key can only use \"ip\" and \"route\"",
            ));
        }
        let applies_to = match rule.routes {
            None => None,
            Some(names) => Some(route_ids(routes, &names, &at("routes"))?),
        };
        if rule.capacity == 0 {
            return Err(err(
                at("capacity"),
                "must be at least 1: a bucket of zero would refuse every request",
            ));
        }
        let refill =
            match rule.refill {
                RawRefill::Never => None,
                RawRefill::Every { tokens: 0, .. } => return Err(err(
                    format!("rate_limits.rules[{i}].refill.tokens"),
                    "must be at least 1; use \"refill\": \"none\" for a bucket that never refills",
                )),
                RawRefill::Every { tokens, every } => Some(Refill {
                    tokens,
                    every_ms: every.as_ms(),
                }),
            };
        rules.push(
            Rule::new(
                rule.name,
                u8::try_from(i).unwrap_or(u8::MAX),
                key,
                applies_to,
                routes.len_with_default(),
                rule.capacity,
                refill,
                rule.ban,
            )
            .counting(rule.counts),
        );
    }
    Ok(RateLimits {
        mode: raw.mode.unwrap_or(global),
        pages: slots.div_ceil(crate::state::slots::SLOTS_PER_PAGE as u32),
        quota_headers: raw.quota_headers,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::Counter;
    use crate::core::verdict::{Decision, Reason, Stage};

    fn error_of(json: &str) -> ConfigError {
        match Policy::from_json(json.as_bytes()) {
            Ok(_) => unreachable!("configuration should have been rejected: {json}"),
            Err(e) => e,
        }
    }

    fn assert_rejected(json: &str, path: &str, needle: &str) {
        let e = error_of(json);
        assert_eq!(e.path, path, "wrong path for {json}: {e}");
        assert!(
            e.message.contains(needle),
            "message {:?} lacks {needle:?}",
            e.message
        );
    }

    #[test]
    fn empty_object_is_a_valid_policy_with_safe_defaults() {
        let p = Policy::from_json(b"{}").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.failure_mode, FailureMode::Deny);
        assert_eq!(p.client_ip, ClientIpSource::Peer);
        assert!(p.rate_limits.rules.is_empty());
        assert_eq!(
            p.rate_limits.pages,
            DEFAULT_SLOTS / slots::SLOTS_PER_PAGE as u32
        );
        assert_eq!(p.bans.after, 3);
    }

    #[test]
    fn full_document_compiles() {
        let json = r#"{
            "version": 1, "mode": "monitor", "failure_mode": "allow",
            "client_ip": {"source": "x-forwarded-for", "trusted_hops": 2},
            "user": {"header": "X-User-Id"},
            "routes": [
                {"name": "login", "prefix": "/login", "methods": ["POST"]},
                {"name": "exact", "path": "/health"},
                {"name": "search", "regex": "^/api/v[0-9]+/search"}
            ],
            "rate_limits": {"mode": "enforce", "slots": 1000, "quota_headers": true, "rules": [
                {"name": "login-ip", "key": ["ip", "route"], "routes": ["login", "default"], "capacity": 5,
                 "refill": {"tokens": 5, "every": "1m"}, "ban": true},
                {"name": "users", "key": ["user"], "capacity": 50, "refill": "none"}
            ]},
            "bans": {"after": 2, "base": "1s", "factor": 1.5, "max": "1m", "decay": "30s"}
        }"#;
        let p = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.mode, Mode::Monitor);
        assert_eq!(p.rate_limits.mode, Mode::Enforce);
        assert_eq!(
            p.bans.mode,
            Mode::Monitor,
            "sections inherit the global mode"
        );
        assert_eq!(
            p.client_ip,
            ClientIpSource::ForwardedFor { trusted_hops: 2 }
        );
        assert_eq!(p.user_header.as_deref(), Some("x-user-id"));
        assert_eq!(p.rate_limits.pages, 63, "1,000 slots in pages of 16");
        assert_eq!(p.rate_limits.rules.len(), 2);
        assert_eq!(
            p.rate_limits.rules[0].refill,
            Some(Refill {
                tokens: 5,
                every_ms: 60_000
            })
        );
        assert_eq!(p.rate_limits.rules[1].refill, None);
        assert_eq!(p.bans.base_ms, 1_000);
    }

    #[test]
    fn rejects_what_is_not_json() {
        assert_rejected("", ".", "empty");
        assert_rejected("  \n", ".", "empty");
        assert_rejected("{\"version\": 1,", ".", "not valid JSON");
        assert_rejected("{\"mode\": \"enforce\" \"x\"}", ".", "line 1 column 20");
        assert_rejected("{} {}", ".", "trailing characters");
        assert_rejected("[]", ".", "expected an object");
        assert_rejected(r#"{"bans": [3]}"#, "bans", "expected an object");
        assert_rejected(
            r#"{"routes": [["r", "/"]]}"#,
            "routes[..]",
            "expected an object",
        );
    }

    #[test]
    fn rejects_unknown_fields_everywhere() {
        assert_rejected(r#"{"bogus": 1}"#, "bogus", "unknown field `bogus`");
        assert_rejected(
            r#"{"bans": {"lenght": "1s"}}"#,
            "bans.lenght",
            "unknown field",
        );
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1, "every": "1s", "x": 1}}]}}"#,
            "rate_limits.rules[0].refill.x",
            "unknown field",
        );
    }

    #[test]
    fn rejects_wrong_types_with_their_path() {
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": "ten", "refill": "none"}]}}"#,
            "rate_limits.rules[0].capacity",
            "invalid type",
        );
        assert_rejected(r#"{"mode": "block"}"#, "mode", "unknown variant");
        assert_rejected(
            r#"{"mode": {"enforce": null}}"#,
            "mode",
            "invalid type: map",
        );
        assert_rejected(
            r#"{"client_ip": {"source": {"x-forwarded-for": null}, "trusted_hops": 1}}"#,
            "client_ip.source",
            "invalid type: map",
        );
        assert_rejected(
            r#"{"client_ip": {"source": "header"}}"#,
            "client_ip.source",
            "unknown variant",
        );
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["mac"], "capacity": 1, "refill": "none"}]}}"#,
            "rate_limits.rules[0].key[0]",
            "unknown variant",
        );
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "daily"}]}}"#,
            "rate_limits.rules[0].refill",
            "unknown refill",
        );
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1, "every": "1 minute"}}]}}"#,
            "rate_limits.rules[0].refill.every",
            "unknown unit",
        );
        assert_rejected(
            r#"{"rate_limits": {"slots": -1}}"#,
            "rate_limits.slots",
            "invalid value",
        );
    }

    #[test]
    fn rejects_impossible_values() {
        let rule = |body: &str| format!(r#"{{"rate_limits": {{"rules": [{body}]}}}}"#);
        assert_rejected(
            &format!(
                r#"{{"user": {{"header": "x-u"}}, "rate_limits": {{"rules": [{}]}}}}"#,
                r#"{"name": "a", "key": ["user"], "capacity": 1, "refill": "none", "counts": "failures"}"#
            ),
            "rate_limits.rules[0].counts",
            "only use \"ip\" and \"route\"",
        );
        assert_rejected(
            &rule(
                r#"{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none", "counts": "all"}"#,
            ),
            "rate_limits.rules[0].counts",
            "`requests` or `failures`",
        );
        assert_rejected(
            r#"{"client_ip": {"ipv6_prefix": 8}}"#,
            "client_ip.ipv6_prefix",
            "between 16 and 128",
        );
        assert_rejected(
            r#"{"client_ip": {"ipv4_prefix": 33}}"#,
            "client_ip.ipv4_prefix",
            "between 8 and 32",
        );
        assert_rejected(
            &rule(r#"{"name": "a", "key": ["ip"], "capacity": 0, "refill": "none"}"#),
            "rate_limits.rules[0].capacity",
            "at least 1",
        );
        assert_rejected(
            &rule(
                r#"{"name": "a", "key": ["ip"], "capacity": 1, "refill": {"tokens": 0, "every": "1s"}}"#,
            ),
            "rate_limits.rules[0].refill.tokens",
            "at least 1",
        );
        assert_rejected(
            &rule(r#"{"name": "a", "key": [], "capacity": 1, "refill": "none"}"#),
            "rate_limits.rules[0].key",
            "at least one",
        );
        assert_rejected(
            &rule(r#"{"name": "a", "key": ["ip", "ip"], "capacity": 1, "refill": "none"}"#),
            "rate_limits.rules[0].key[1]",
            "twice",
        );
        assert_rejected(
            &rule(r#"{"name": "a", "key": ["user"], "capacity": 1, "refill": "none"}"#),
            "rate_limits.rules[0].key",
            "user.header",
        );
        assert_rejected(
            &rule(
                r#"{"name": "a", "key": ["ip"], "routes": ["nowhere"], "capacity": 1, "refill": "none"}"#,
            ),
            "rate_limits.rules[0].routes[0]",
            "no route class named `nowhere`",
        );
        assert_rejected(
            &rule(r#"{"name": "Bad Name", "key": ["ip"], "capacity": 1, "refill": "none"}"#),
            "rate_limits.rules[0].name",
            "not a valid name",
        );
        assert_rejected(
            r#"{"rate_limits": {"slots": 8}}"#,
            "rate_limits.slots",
            "between",
        );
        assert_rejected(
            r#"{"bans": {"factor": 0.5}}"#,
            "bans.factor",
            "between 1 and 100",
        );
        assert_rejected(r#"{"bans": {"after": 0}}"#, "bans.after", "between");
        assert_rejected(
            r#"{"bans": {"base": "1h", "max": "1m"}}"#,
            "bans.max",
            "shorter",
        );
        assert_rejected(
            r#"{"bans": {"base": "0s"}}"#,
            "bans.base",
            "greater than zero",
        );
        assert_rejected(r#"{"version": 2}"#, "version", "unsupported version 2");
        assert_rejected(
            r#"{"client_ip": {"source": "x-forwarded-for"}}"#,
            "client_ip.trusted_hops",
            "required",
        );
        assert_rejected(
            r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 0}}"#,
            "client_ip.trusted_hops",
            "at least 1",
        );
        assert_rejected(
            r#"{"client_ip": {"trusted_hops": 1}}"#,
            "client_ip.trusted_hops",
            "only applies",
        );
        assert_rejected(
            r#"{"user": {"header": "x user"}}"#,
            "user.header",
            "not a valid HTTP header",
        );
    }

    #[test]
    fn rejects_bad_routes() {
        assert_rejected(
            r#"{"routes": [{"name": "r", "regex": "(unclosed"}]}"#,
            "routes[0].regex",
            "invalid regular expression",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r"}]}"#,
            "routes[0]",
            "exactly one of",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r", "prefix": "/a", "path": "/b"}]}"#,
            "routes[0]",
            "exactly one of",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r", "prefix": "a"}]}"#,
            "routes[0].prefix",
            "start with",
        );
        assert_rejected(
            r#"{"routes": [{"name": "default", "prefix": "/"}]}"#,
            "routes[0].name",
            "reserved",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r", "prefix": "/a"}, {"name": "r", "prefix": "/b"}]}"#,
            "routes[1].name",
            "duplicate",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r", "prefix": "/a", "methods": ["post"]}]}"#,
            "routes[0].methods[0]",
            "upper-case",
        );
        assert_rejected(
            r#"{"routes": [{"name": "r", "prefix": "/a", "methods": []}]}"#,
            "routes[0].methods",
            "not be empty",
        );
    }

    #[test]
    fn signature_section_is_validated_with_paths() {
        let key = r#"{"id": "k", "secret": {"base64": "YS1kZW1vLXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcyEh"}}"#;
        let with = |keys: &str, policies: &str| {
            format!(
                r#"{{"routes": [{{"name": "pay", "prefix": "/pay"}}],
                    "signatures": {{"keys": [{keys}], "policies": [{policies}]}}}}"#
            )
        };
        let good = Policy::from_json(
            with(key, r#"{"routes": ["pay"], "require_nonce": true}"#).as_bytes(),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let pay = good.routes.id_of("pay").unwrap_or_default();
        assert!(good
            .signatures
            .policy_for(pay)
            .is_some_and(|p| p.replay && p.requirements.require_nonce));
        assert!(good
            .signatures
            .policy_for(good.routes.default_id())
            .is_none());
        assert!(good.shared_keys().any(|k| k.starts_with("palisade.rp.p.")));
        assert!(
            !format!("{good:?}").contains("YS1kZW1v"),
            "secrets stay out of Debug"
        );

        assert_rejected(
            &with(r#"{"id": "k", "secret": {"base64": "not base64!"}}"#, ""),
            "signatures.keys[0].secret.base64",
            "base64",
        );
        assert_rejected(
            &with(r#"{"id": "k", "secret": {"base64": "c2hvcnQ="}}"#, ""),
            "signatures.keys[0]",
            "32",
        );
        assert_rejected(
            &with(
                r#"{"id": "k", "secret": {"env": "PALISADE_TEST_UNSET_VARIABLE"}}"#,
                "",
            ),
            "signatures.keys[0].secret.env",
            "not set",
        );
        assert_rejected(
            &with(r#"{"id": "k", "secret": {"base64": "x", "env": "Y"}}"#, ""),
            "signatures.keys[0].secret",
            "",
        );
        assert_rejected(
            &with(key, r#"{"routes": ["nowhere"]}"#),
            "signatures.policies[0].routes[0]",
            "no route class",
        );
        assert_rejected(
            &with(key, r#"{"routes": []}"#),
            "signatures.policies[0].routes",
            "not be empty",
        );
        assert_rejected(
            &with(key, r#"{"routes": ["pay"]}, {"routes": ["pay"]}"#),
            "signatures.policies[1].routes[0]",
            "already has",
        );
        assert_rejected(
            &with(key, r#"{"routes": ["pay"], "components": ["@status"]}"#),
            "signatures.policies[0].components",
            "not supported",
        );
        assert_rejected(
            &with("", r#"{"routes": ["pay"]}"#),
            "signatures.keys",
            "at least one key",
        );
        assert_rejected(
            r#"{"signatures": {"max_body_bytes": 0}}"#,
            "signatures.max_body_bytes",
            "between",
        );
        assert_rejected(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["key_id"], "capacity": 1, "refill": "none"}]}}"#,
            "rate_limits.rules[0].key",
            "signatures",
        );
    }

    /// Every configuration sample in README must be one palisade accepts.
    #[test]
    fn readme_configuration_samples_are_valid() {
        let readme = include_str!("../README.md");
        let mut checked = 0;
        for block in readme.split("```json\n").skip(1) {
            let sample = block.split("```").next().unwrap_or_default();
            let Ok(serde_json::Value::Object(fields)) =
                serde_json::from_str::<serde_json::Value>(sample)
            else {
                continue;
            };
            // Response bodies and security events are JSON samples too.
            if fields.contains_key("error") || fields.contains_key("event") {
                continue;
            }
            if let Err(e) = Policy::from_json(sample.as_bytes()) {
                unreachable!("README sample rejected: {e}\n{sample}");
            }
            checked += 1;
        }
        assert!(checked >= 1, "no configuration sample found in README");
    }

    #[test]
    fn error_display_names_the_path() {
        let e = error_of(
            r#"{"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 0, "refill": "none"}]}}"#,
        );
        assert!(e
            .to_string()
            .starts_with("invalid configuration at `rate_limits.rules[0].capacity`: "));
    }

    #[test]
    fn stat_names_carry_only_configured_or_fixed_labels() {
        let policy = Policy::from_json(
            br#"{"routes": [{"name": "login", "prefix": "/login"}],
                 "rate_limits": {"rules": [{"name": "login-ip", "key": ["ip"], "capacity": 1, "refill": "none"}]}}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let finding = Counter::Finding {
            stage: Stage::RateLimit,
            reason: Reason::RateLimitExhausted,
            mode: Mode::Monitor,
            route: 0,
        };
        assert_eq!(
            finding.stat_name(&policy),
            "palisade_findings_total.stage.ratelimit.reason.rl_exhausted.mode.monitor.route.login"
        );
        let request = Counter::Request {
            decision: Decision::Throttle,
            route: 1,
        };
        assert_eq!(
            request.stat_name(&policy),
            "palisade_requests_total.decision.throttle.route.default"
        );
        assert_eq!(
            Counter::BanIssued { rule: 0 }.stat_name(&policy),
            "palisade_bans_total.rule.login-ip"
        );
    }
}
