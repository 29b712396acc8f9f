//! The filter's one JSON document, parsed and validated once, in
//! `on_configure`. Everything here runs before traffic flows, so it may be
//! slow and thorough; everything it produces ([`Policy`]) is what the request
//! path reads, already checked, with names resolved to indices.
//!
//! Every error names the JSON path it is about (`rate_limits.rules[0].capacity`)
//! and what was expected, so that the operator reading Envoy's log can fix the
//! document without reading this code.
//!
//! This module owns the document only: `version`, `mode`, `failure_mode`,
//! the checks that span sections (no arrays where the schema has objects;
//! no secret text in errors), and the assembly of the sections, each of
//! which its stage's module reads and compiles.

use crate::core::cluster::Scope;
use crate::core::config_error::{err, ConfigError};
use crate::core::mode::{FailureMode, Mode};
use crate::core::names::Names;
use crate::core::routes::{RouteId, RouteTable};
use crate::stages::account::config::{compile_login, Login, RawLogin};
use crate::stages::anomaly::{self, Anomaly, RawAnomaly};
use crate::stages::auth::config::{compile_auth, RawApiKeys, RawAuthorization, RawJwt};
use crate::stages::auth::credentials::Auth;
use crate::stages::bot::behaviour;
use crate::stages::bot::config::{compile_bot, Bot, RawBot};
use crate::stages::client_ip::{
    compile_client_ip, compile_ip_prefixes, ClientIpSource, IpPrefixes, RawClientIp,
};
use crate::stages::geo::{self, Geo};
use crate::stages::global::{self, Global, RawGlobal};
use crate::stages::integrity::config::{compile_signatures, RawSignatures, Signatures};
use crate::stages::limits::buckets::{BanPolicy, Counts};
use crate::stages::limits::config::{
    compile_bans, compile_rate_limits, LoginRoutes, RateLimits, RawBans, RawRateLimits,
};
use crate::stages::mtls::{self, Mtls, RawMtls};
use crate::stages::openapi::{self, OpenApi, RawOpenApi};
use crate::stages::reputation::config::{compile_reputation, RawReputation, Reputation};
#[cfg(feature = "schema")]
use crate::stages::routes::MAX_ROUTES;
use crate::stages::routes::{compile_routes, RawRoute};
use crate::stages::transport::{self, RawTransport, Transport};
use crate::stages::user::{self, RawUser};
use crate::stages::validation::{self, config::Validation, RawValidation};
use crate::state::slots;
use serde::Deserialize;

/// The only schema version so far. Kept explicit so that a later, incompatible
/// schema can be told apart instead of half-parsed.
pub const SCHEMA_VERSION: u32 = 1;

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
    /// The bot stage, when the document has a `bot` section.
    pub bot: Option<Bot>,
    /// Country rules, when the document has a `geo` section.
    pub geo: Option<Geo>,
    /// Whether requests need a fingerprint (the bot stage, or a rule keyed on it).
    pub needs_fingerprint: bool,
    /// Whether a stage reads the client address. Without one, the TCP
    /// peer (a host call) is read only for a request's security event.
    pub needs_client_ip: bool,
    /// Login routes (account protection), when the document has a `login` section.
    pub login: Option<Login>,
    /// IP allow and deny lists, when the document has a `reputation` section.
    pub reputation: Option<Reputation>,
    /// Request validation, when the document has a `validation` section.
    pub validation: Option<Validation>,
    /// TLS requirements and response headers, when the document has a
    /// `transport` section.
    pub transport: Option<Transport>,
    /// Spike detection per route class, when the document has an
    /// `anomaly` section.
    pub anomaly: Option<Anomaly>,
    /// The rate-limit service of the rules and tables scoped `global`,
    /// when the document has a `global` section.
    pub global: Option<Global>,
    /// Device identity from client certificates, when the document has an
    /// `mtls` section.
    pub mtls: Option<Mtls>,
    /// Indexed by route id: whether a stage reads the device identity on
    /// the class (a host call per request).
    pub reads_device: Vec<bool>,
    /// The API document requests are held to, when the document has an
    /// `openapi` section.
    pub openapi: Option<std::sync::Arc<OpenApi>>,
    /// A request that matches no route class and no operation of the API
    /// document is refused (`route.undeclared`).
    pub default_deny: bool,
}

impl Policy {
    pub fn reads_device(&self, route: RouteId) -> bool {
        self.reads_device
            .get(usize::from(route))
            .copied()
            .unwrap_or(false)
    }
}

impl Policy {
    /// The slot tables the policy uses: (label, key prefix, pages).
    pub fn slot_tables(&self) -> Vec<(&'static str, &'static str, u32)> {
        let replay_pages = if self.signatures.policies.iter().any(|p| p.replay) {
            self.signatures.replay_pages
        } else {
            0
        };
        let behaviour_pages = self
            .bot
            .as_ref()
            .filter(|b| b.observes_behaviour())
            .map_or(0, |b| b.behaviour.pages);
        [
            ("rate_limits", slots::RATE_LIMITS, self.rate_limits.pages),
            ("replay", slots::REPLAY, replay_pages),
            (
                "refresh_tokens",
                slots::REFRESH,
                self.auth.refresh.as_ref().map_or(0, |r| r.pages),
            ),
            ("bot_behaviour", behaviour::TABLE, behaviour_pages),
            (
                "logins",
                slots::LOGIN,
                self.login.as_ref().map_or(0, |l| l.pages),
            ),
            ("distinct", slots::SEEN, self.rate_limits.distinct_pages),
            (
                "travel",
                slots::TRAVEL,
                self.geo
                    .as_ref()
                    .and_then(|g| g.travel.as_ref())
                    .map_or(0, |t| t.pages),
            ),
        ]
        .into_iter()
        .filter(|(_, _, pages)| *pages > 0)
        .collect()
    }

    /// Every shared-data key the policy's tables use: all are created up
    /// front (see `slots`).
    pub fn shared_keys(&self) -> impl Iterator<Item = String> + '_ {
        let overflow = self
            .rate_limits
            .rules
            .iter()
            .map(|r| slots::overflow_key(r.index));
        self.slot_tables()
            .into_iter()
            .flat_map(|(_, table, pages)| (0..pages).map(move |i| slots::page_key(table, i)))
            .chain(overflow)
            .chain(
                self.anomaly
                    .iter()
                    .flat_map(|a| a.watched().map(|(route, _)| anomaly::record_key(route))),
            )
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
        reject_arrays_as_objects(&value, &mut String::new(), &mut String::new())
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

/// Stat names, responses and events carry the configured names of routes, rules and providers.
impl Names for Policy {
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

    fn list_name(&self, list: u8) -> Option<&str> {
        self.reputation
            .as_ref()?
            .lists
            .get(usize::from(list))
            .map(|l| l.name.as_str())
    }
}

/// The only places the schema has lists; the path pattern writes `[]` for
/// any index.
const LIST_PATHS: [&str; 50] = [
    "mtls.defaults.identities",
    "mtls.routes.*.identities",
    "authorization.policies[].identities",
    "validation.defaults.methods",
    "validation.defaults.content_types",
    "validation.defaults.disable",
    "validation.routes.*.methods",
    "validation.routes.*.content_types",
    "validation.routes.*.disable",
    "anomaly.defaults.signals",
    "anomaly.routes.*.signals",
    "geo.rules",
    "geo.impossible_travel.routes",
    "geo.rules[].routes",
    "geo.rules[].allow",
    "geo.rules[].deny",
    "rate_limits.rules[].countries",
    "bot.routes",
    "bot.allow.cidrs",
    "bot.flows",
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
    "login.routes",
    "login.failure_statuses",
    "reputation.lists",
    "reputation.lists[].routes",
    "reputation.lists[].cidrs",
];

/// Values that are whole documents of another format.
const OPAQUE_PATHS: [&str; 2] = ["jwt.providers[].jwks.inline", "openapi.document.inline"];

const OBJECT_NOT_ARRAY: &str = "expected an object or a single value, found an array";

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

/// Objects whose keys are names (`validation.routes.<class>`).
const MAP_PATHS: [&str; 5] = [
    "validation.routes",
    "transport.routes",
    "anomaly.routes",
    "mtls.routes",
    "openapi.routes",
];

/// serde lets a struct be written as a positional array (`"bans": [3]`);
/// that is never what an operator means, so arrays are accepted only where
/// the schema has a list.
fn reject_arrays_as_objects(
    value: &serde_json::Value,
    pattern: &mut String,
    shown: &mut String,
) -> Result<(), ConfigError> {
    match value {
        serde_json::Value::Array(items) => {
            if !LIST_PATHS.contains(&pattern.as_str()) {
                let at = if shown.is_empty() {
                    "."
                } else {
                    shown.as_str()
                };
                return Err(err(at, OBJECT_NOT_ARRAY));
            }
            for (i, item) in items.iter().enumerate() {
                let (len, shown_len) = (pattern.len(), shown.len());
                pattern.push_str("[]");
                shown.push_str(&format!("[{i}]"));
                reject_arrays_as_objects(item, pattern, shown)?;
                pattern.truncate(len);
                shown.truncate(shown_len);
            }
        }
        // Documents of other formats embedded whole (a JWK Set) have their
        // own rules.
        serde_json::Value::Object(_) if OPAQUE_PATHS.contains(&pattern.as_str()) => {}
        serde_json::Value::Object(fields) => {
            // Objects keyed by a route class name: one pattern for every key.
            let keyed_by_name = MAP_PATHS.contains(&pattern.as_str());
            for (name, field) in fields {
                let (len, shown_len) = (pattern.len(), shown.len());
                if !pattern.is_empty() {
                    pattern.push('.');
                    shown.push('.');
                }
                pattern.push_str(if keyed_by_name { "*" } else { name });
                shown.push_str(name);
                reject_arrays_as_objects(field, pattern, shown)?;
                pattern.truncate(len);
                shown.truncate(shown_len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// palisade's configuration (README, Configuration).
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("allOf" = [
    {
        "description": "An authorization policy that accepts tokens (credentials absent or null mean [\"jwt\"]) needs jwt.providers.",
        "anyOf": [
            {"properties": {"authorization": {"properties": {"policies": {"items": {
                "required": ["credentials"],
                "properties": {"credentials": {"type": "array", "items": {"not": {"enum": ["jwt"]}}}}
            }}}}}},
            {
                "required": ["jwt"],
                "properties": {"jwt": {"required": ["providers"], "properties": {"providers": {"minItems": 1}}}}
            }
        ]
    },
    {
        "description": "An authorization policy that accepts API keys needs api_keys.keys.",
        "anyOf": [
            {"properties": {"authorization": {"properties": {"policies": {"items": {
                "properties": {"credentials": {"items": {"not": {"enum": ["api_key"]}}}}
            }}}}}},
            {
                "required": ["api_keys"],
                "properties": {"api_keys": {"required": ["keys"], "properties": {"keys": {"minItems": 1}}}}
            }
        ]
    }
])))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Schema version; only 1 exists.
    #[serde(default = "default_version")]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = [SCHEMA_VERSION])))]
    version: u32,
    /// Default mode of every section.
    #[serde(default)]
    mode: Mode,
    /// What a request gets when palisade's shared state fails.
    #[serde(default)]
    failure_mode: FailureMode,
    /// Where the client address comes from.
    #[serde(default)]
    client_ip: RawClientIp,
    /// The header whose value is the `user` rate-limit key.
    #[serde(default)]
    user: Option<RawUser>,
    /// Route classes; the first matching class wins.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_ROUTES)))]
    routes: Vec<RawRoute>,
    /// Token-bucket rules.
    #[serde(default)]
    rate_limits: RawRateLimits,
    /// Escalating cooldowns for rules with "ban": true.
    #[serde(default)]
    bans: RawBans,
    /// RFC 9421 request signatures required per route class.
    #[serde(default)]
    signatures: RawSignatures,
    /// Token issuers (providers), where tokens are read from, refresh-token reuse.
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    api_keys: RawApiKeys,
    /// Which route classes need a credential, and what it must grant.
    #[serde(default)]
    authorization: RawAuthorization,
    /// Bot defense: fingerprint, score, thresholds, challenge. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawBot"))]
    bot: Option<RawBot>,
    /// Login routes: where the username is, which answers are failures.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawLogin"))]
    login: Option<RawLogin>,
    /// Country rules per route class, from a trusted header. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "geo::RawGeo"))]
    geo: Option<geo::RawGeo>,
    /// IP allow and deny lists, inline or fetched. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawReputation"))]
    reputation: Option<RawReputation>,
    /// Request validation: methods, sizes, media types, JSON, traversal,
    /// control bytes, SQL and script injection. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawValidation"))]
    validation: Option<RawValidation>,
    /// TLS required per route class, security headers on responses. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawTransport"))]
    transport: Option<RawTransport>,
    /// Spike detection on request rate, upstream errors and latency, per
    /// route class. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawAnomaly"))]
    anomaly: Option<RawAnomaly>,
    /// The rate-limit service (Limitador on Redis) that rules and tables
    /// scoped "global" count in, across replicas. Absent: everything is local.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawGlobal"))]
    global: Option<RawGlobal>,
    /// Device identity from verified client certificates, required per
    /// route class. Absent: off (Envoy only).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawMtls"))]
    mtls: Option<RawMtls>,
    /// The OpenAPI document of the API: undeclared operations, parameters
    /// and bodies are refused. Absent: off.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "RawOpenApi"))]
    openapi: Option<RawOpenApi>,
    /// Refuse every request that matches no route class and no operation
    /// of the `openapi` document (404 route.undeclared).
    #[serde(default)]
    default_deny: bool,
}

/// Doc comments become descriptions with their line breaks: one line reads
/// better in a schema.
#[cfg(feature = "schema")]
fn one_line_description(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::String(text)) = schema.get_mut("description") {
        *text = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    }
}

/// The configuration's JSON Schema (draft 7), derived from the raw types
/// above and those of each stage's section: every object closed, every
/// subschema inline (no `$ref`), keys in a stable (sorted) order. What it
/// cannot say, `Policy::from_json` still checks (nginx/README.md lists it).
/// `palisade-check --schema` prints it; nginx/kong/palisade.meta.json is
/// made from it.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    use schemars::transform::{RecursiveTransform, ReplaceBoolSchemas, ReplaceConstValue};
    let mut settings = schemars::generate::SchemaSettings::draft07();
    settings.inline_subschemas = true;
    settings
        .transforms
        .push(Box::new(ReplaceConstValue::default()));
    let mut no_bool_schemas = ReplaceBoolSchemas::default();
    no_bool_schemas.skip_additional_properties = true;
    settings.transforms.push(Box::new(no_bool_schemas));
    settings.transforms.push(Box::new(RecursiveTransform(
        one_line_description as fn(&mut schemars::Schema),
    )));
    settings
        .into_generator()
        .into_root_schema_for::<RawConfig>()
        .to_value()
}

/// A section that is off when absent: `null` is not a way to write that
/// (the schema says object), so it is an error like any other wrong type.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn default_version() -> u32 {
    SCHEMA_VERSION
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
    let user_header = user::compile(raw.user)?;
    let routes = compile_routes(raw.routes)?;
    let bans = compile_bans(&raw.bans, raw.mode)?;
    let signatures = compile_signatures(raw.signatures, raw.mode, &routes)?;
    let auth = compile_auth(raw.jwt, raw.api_keys, raw.authorization, raw.mode, &routes)?;
    let login = compile_login(raw.login, raw.mode, &routes)?;
    let login_routes = login.as_ref().map(|l| l.route_ids());
    let rate_limits = compile_rate_limits(
        raw.rate_limits,
        raw.mode,
        &routes,
        user_header.is_some() || !auth.policies.is_empty(),
        !signatures.policies.is_empty(),
        !auth.providers.is_empty(),
        login
            .as_ref()
            .zip(login_routes.as_deref())
            .map(|(l, ids)| LoginRoutes {
                routes: ids,
                reads_username: l.username_field.is_some(),
            }),
    )?;
    let bot = compile_bot(raw.bot, raw.mode, &routes)?;
    let reputation = compile_reputation(raw.reputation, raw.mode, &routes)?;
    let geo = geo::compile(raw.geo, raw.mode, &routes)?;
    let validation = validation::compile(raw.validation, raw.mode, &routes)?;
    let transport = transport::compile(raw.transport, raw.mode, &routes)?;
    let anomaly = anomaly::compile(raw.anomaly, &routes)?;
    let mtls = mtls::compile(raw.mtls, raw.mode, &routes)?;
    let reads_device = device_readers(mtls.as_ref(), &auth, &rate_limits, &routes)?;
    let openapi = openapi::config::compile(raw.openapi, raw.mode, &routes)?;
    let global = global::config::compile(raw.global, raw.failure_mode)?;
    if global_descriptors(&rate_limits, &bans) > MAX_GLOBAL_DESCRIPTORS {
        return Err(err(
            "bans.scope",
            format!("global rules and ban looks would send more than {MAX_GLOBAL_DESCRIPTORS} descriptors in one call (the rate-limit service's bound): fewer global rules or ban lengths"),
        ));
    }
    if global.is_none() {
        if let Some(path) = global_scope_path(&rate_limits, &bans, &signatures, &auth) {
            return Err(err(
                path,
                "is \"global\" but there is no `global` section (the rate-limit service's cluster)",
            ));
        }
    }
    if let (None, Some(i)) = (
        &geo,
        rate_limits.rules.iter().position(|r| r.countries.is_some()),
    ) {
        return Err(err(
            format!("rate_limits.rules[{i}].countries"),
            "needs the `geo` section: its `header` says where a request's country comes from",
        ));
    }
    let needs_fingerprint = bot.is_some()
        || rate_limits
            .rules
            .iter()
            .any(|r| r.key.fingerprint || r.counts == Counts::Fingerprints);
    let needs_client_ip = bot.is_some()
        || login.is_some()
        || reputation.is_some()
        || rate_limits
            .rules
            .iter()
            .any(|r| r.key.ip || r.counts == Counts::Networks);
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
        bot,
        geo,
        needs_fingerprint,
        needs_client_ip,
        login,
        reputation,
        validation,
        transport,
        anomaly,
        global,
        mtls,
        reads_device,
        openapi,
        default_deny: raw.default_deny,
    })
}

/// Indexed by route id: whether the class needs the device identity (its
/// `mtls` policy, an authorization policy listing identities, a rule keyed
/// on `device`). Those uses need the `mtls` section: it says which
/// certificate field is the identity.
fn device_readers(
    mtls: Option<&Mtls>,
    auth: &Auth,
    rate_limits: &RateLimits,
    routes: &RouteTable,
) -> Result<Vec<bool>, ConfigError> {
    let authz = auth.policies.iter().position(|p| !p.identities.is_empty());
    let keyed = rate_limits.rules.iter().position(|r| r.key.device);
    if mtls.is_none() {
        let path = match (authz, keyed) {
            (Some(i), _) => format!("authorization.policies[{i}].identities"),
            (None, Some(i)) => format!("rate_limits.rules[{i}].key"),
            (None, None) => return Ok(vec![false; routes.len_with_default()]),
        };
        return Err(err(
            path,
            "uses the device identity but there is no `mtls` section (it names the certificate field the identity is read from)",
        ));
    }
    Ok((0..routes.len_with_default())
        .map(|i| {
            let route = RouteId::try_from(i).unwrap_or(RouteId::MAX);
            mtls.is_some_and(|m| m.requires(route))
                || auth
                    .policy_for(route)
                    .is_some_and(|p| !p.identities.is_empty())
                || rate_limits
                    .rules
                    .iter()
                    .any(|r| r.key.device && r.applies_to(route))
        })
        .collect())
}

/// Most descriptors one call may carry (the rate-limit service's bound),
/// less room for a nonce and a request's refresh tokens.
const MAX_GLOBAL_DESCRIPTORS: usize = 500;

/// Most descriptors a request's rules can make: one per global rule, one
/// look per ban length for each rule that bans when bans are global.
fn global_descriptors(rate_limits: &RateLimits, bans: &BanPolicy) -> usize {
    let rules = &rate_limits.rules;
    let counted = rules.iter().filter(|r| r.scope == Scope::Global).count();
    let banning = rules.iter().filter(|r| r.ban).count();
    counted + banning * bans.global_lengths_ms.len()
}

/// The first setting scoped `global`, as a JSON path.
fn global_scope_path(
    rate_limits: &RateLimits,
    bans: &BanPolicy,
    signatures: &Signatures,
    auth: &Auth,
) -> Option<String> {
    if let Some(i) = rate_limits
        .rules
        .iter()
        .position(|r| r.scope == Scope::Global)
    {
        return Some(format!("rate_limits.rules[{i}].scope"));
    }
    if bans.scope == Scope::Global {
        return Some("bans.scope".into());
    }
    if signatures.replay_scope == Scope::Global {
        return Some("signatures.replay_scope".into());
    }
    if auth
        .refresh
        .as_ref()
        .is_some_and(|r| r.scope == Scope::Global)
    {
        return Some("jwt.refresh_tokens.scope".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::Counter;
    use crate::core::verdict::{Decision, Reason, Stage};
    use crate::stages::limits::buckets::Refill;
    use crate::stages::limits::config::DEFAULT_SLOTS;

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
            "routes[0]",
            "expected an object",
        );
        // A route class named in an error path, as written.
        assert_rejected(
            r#"{"routes": [{"name": "api", "prefix": "/api"}], "anomaly": {"routes": {"api": {"hold": ["1s"]}}}}"#,
            "anomaly.routes.api.hold",
            "expected an object or a single value, found an array",
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
            "only use \"ip\", \"route\" and \"fingerprint\"",
        );
        assert_rejected(
            &rule(
                r#"{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none", "counts": "all"}"#,
            ),
            "rate_limits.rules[0].counts",
            "`requests`, `failures`, `failed_logins`, `usernames`",
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

    /// The schema is whole (no `$ref` left to resolve, nothing Kong's
    /// draft 4 would need rewritten but `const`-free enums) and closed; the
    /// deploy tests (tests/deploy/test_kong_schema.py) check it against
    /// palisade itself.
    #[cfg(feature = "schema")]
    #[test]
    fn json_schema_is_inline_and_closed() {
        let schema = json_schema();
        let text = schema.to_string();
        for absent in ["\"$ref\"", "\"definitions\"", "\"$defs\"", "\"const\""] {
            assert!(!text.contains(absent), "{absent} in the schema");
        }
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let fields: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            fields,
            [
                "anomaly",
                "api_keys",
                "authorization",
                "bans",
                "bot",
                "client_ip",
                "default_deny",
                "failure_mode",
                "geo",
                "global",
                "jwt",
                "login",
                "mode",
                "mtls",
                "openapi",
                "rate_limits",
                "reputation",
                "routes",
                "signatures",
                "transport",
                "user",
                "validation",
                "version"
            ]
        );
        let inline = &schema["properties"]["jwt"]["properties"]["providers"]["items"]["properties"]
            ["jwks"]["properties"]["inline"];
        assert_eq!(
            inline["additionalProperties"],
            serde_json::json!(true),
            "the JWK Set schema (stages/auth/jwk_set.schema.json) is read"
        );
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
    fn reputation_lists_are_named_in_stats_and_events() {
        use crate::core::names::Names;
        let policy = Policy::from_json(
            br#"{"reputation": {"lists": [{"name": "office", "action": "allow", "cidrs": ["10.0.0.0/8"]},
                 {"name": "drop", "action": "deny", "remote": {"cluster": "lists", "path": "/drop.txt"}}]}}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(policy.list_name(1), Some("drop"));
        assert_eq!(policy.list_name(2), None);
        assert_eq!(
            Counter::ListFetch { list: 1, ok: false }.stat_name(&policy),
            "palisade_list_fetches_total.list.drop.result.failed"
        );
        let section =
            |json: &str| Policy::from_json(json.as_bytes()).map(|p| p.reputation.is_some());
        assert_eq!(section("{}"), Ok(false));
        assert!(section(r#"{"reputation": null}"#).is_err());
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
