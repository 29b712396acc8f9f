//! The `jwt`, `api_keys` and `authorization` sections, which only mean
//! something together: raw types, defaults, validation and compile into
//! the providers, keys and per-route policies the credential check reads.

use crate::core::cluster::Scope;
use crate::core::config_error::{
    assign_routes, check_name, env_value, err, is_header_name, route_flags, slot_pages,
    ConfigError, DEFAULT_REPLAY_SLOTS,
};
#[cfg(feature = "schema")]
use crate::core::config_error::{HEADER_NAME_PATTERN, NAME_PATTERN};
use crate::core::duration::Millis;
#[cfg(feature = "schema")]
use crate::core::duration::DURATION_PATTERN;
use crate::core::identity;
use crate::core::mode::{string_enum, FailureMode, Mode};
use crate::core::remote::{self, RawRemote, Remote, Timing};
use crate::core::routes::RouteTable;
#[cfg(feature = "schema")]
use crate::core::schema::{json_schema_impl, schema};
use crate::stages::auth::credentials::{
    ApiKey, Auth, AuthzPolicy, ForwardedClaim, ProviderSpec, RefreshTokens, TokenSource,
};
use crate::stages::auth::jwt::{self, Alg, Jwks, Provider, ProviderSettings};
use serde::de::{self, Deserializer};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    #[serde(default)]
    mode: Option<Mode>,
    /// Where a token is read, first present wins: a header with an optional
    /// prefix (matched case-insensitively), or a cookie. Absent or null: the
    /// Authorization header with the prefix "Bearer ".
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    from: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = MAX_CACHE_ENTRIES)))]
    cache_entries: Option<u32>,
    #[serde(default)]
    without_keys: FailureMode,
    /// Token issuers, at most 16.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_PROVIDERS)))]
    providers: Vec<RawProvider>,
    /// Refresh-token reuse detection on the token endpoint's route classes.
    #[serde(default)]
    refresh_tokens: Option<RawRefreshTokens>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {
        "description": "a header, with an optional prefix",
        "required": ["header"],
        "properties": {"header": {"type": "string"}, "cookie": {"type": "null"}}
    },
    {
        "description": "a cookie (no prefix)",
        "required": ["cookie"],
        "properties": {"cookie": {"type": "string"}, "header": {"type": "null"}, "prefix": {"type": "null"}}
    }
])))]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = HEADER_NAME_PATTERN)))]
    header: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    prefix: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = HEADER_NAME_PATTERN)))]
    cookie: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("anyOf" = [
    {
        "description": "no HS256",
        "properties": {"algorithms": {"items": {"not": {"enum": ["HS256"]}}}}
    },
    {
        "description": "HS256 needs an oct key (not use: enc) in an inline key set",
        "required": ["jwks"],
        "properties": {"jwks": {
            "required": ["inline"],
            "properties": {"inline": {
                "required": ["keys"],
                "properties": {"keys": {
                    "description": "some entry is an oct key: not (every entry is not one)",
                    "not": {"items": {"not": {
                        "required": ["kty"],
                        "properties": {"kty": {"enum": ["oct"]}, "use": {"not": {"enum": ["enc"]}}}
                    }}}
                }}
            }}
        }}
    }
])))]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    name: String,
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    issuer: String,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    audiences: Vec<String>,
    #[cfg_attr(feature = "schema", schemars(schema_with = "algorithms_schema"))]
    algorithms: Vec<String>,
    jwks: RawJwksSource,
    #[serde(default)]
    clock_skew: Option<RawDuration>,
    #[serde(default)]
    max_lifetime: Option<Millis>,
    #[serde(default)]
    max_age: Option<Millis>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    required_claims: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    roles_claim: Option<String>,
    #[serde(default)]
    forward_claims: Vec<RawForwardClaim>,
}

/// The algorithms palisade verifies ([`Alg::ALL`]), each once, at least one.
#[cfg(feature = "schema")]
fn algorithms_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Alg::ALL.iter().map(|a| a.as_str()).collect();
    schema(serde_json::json!({
        "type": "array",
        "minItems": 1,
        "uniqueItems": true,
        "items": {"type": "string", "enum": names},
    }))
}

/// A duration that may be zero (`"0s"`): clock skew can be switched off.
#[derive(Clone, Copy)]
struct RawDuration(u64);

// Its schema: `DURATION_PATTERN`, or zero.
#[cfg(feature = "schema")]
json_schema_impl!(RawDuration, "DurationOrZero", |_| serde_json::json!({
    "type": "string",
    "pattern": format!(
        "^({}|0|0s|0ms)$",
        DURATION_PATTERN.trim_start_matches('^').trim_end_matches('$')
    ),
}));

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
    Remote(RawRemote),
}

// Its schema: `{"inline": <JWK Set>}` or `{"remote": {...}}`. The JWK Set is a
// document of another format (RFC 7517), read as a `serde_json::Value`:
// its schema is written by hand (`jwk_set.schema.json`), open as RFC 7517
// leaves its members, checking each key's shape.
#[cfg(feature = "schema")]
json_schema_impl!(RawJwksSource, "JwksSource", |generator| serde_json::json!({
    "description": "The provider's keys: {\"inline\": <JWK Set>} or {\"remote\": {...}}.",
    "type": "object",
    "additionalProperties": false,
    "properties": {
        "inline": serde_json::from_str::<serde_json::Value>(JWK_SET_SCHEMA)
            .unwrap_or(serde_json::Value::Bool(false)),
        "remote": generator.subschema_for::<RawRemote>(),
    },
    "oneOf": [{"required": ["inline"]}, {"required": ["remote"]}],
}));

#[cfg(feature = "schema")]
const JWK_SET_SCHEMA: &str = include_str!("jwk_set.schema.json");

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawForwardClaim {
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    claim: String,
    /// Any header name but those that cannot carry a claim (in any case).
    #[cfg_attr(
        feature = "schema",
        schemars(
            regex(pattern = HEADER_NAME_PATTERN),
            extend("not" = {"pattern": "^([Hh][Oo][Ss][Tt]|[Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]|[Cc][Oo][Oo][Kk][Ii][Ee]|[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Tt][Rr][Aa][Nn][Ss][Ff][Ee][Rr]-[Ee][Nn][Cc][Oo][Dd][Ii][Nn][Gg])$"})
        )
    )]
    header: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRefreshTokens {
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    routes: Vec<String>,
    #[serde(default)]
    remember: Option<Millis>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    slots: Option<u32>,
    /// Where refresh tokens are remembered: "local" (this proxy's workers)
    /// or "global" (every replica, through the `global` section's service).
    #[serde(default)]
    scope: Scope,
}

/// API keys by id, stored as SHA-256 hashes. A hash is 64 hex digits
/// (surrounding whitespace is trimmed) or {"env": "VAR"}, an environment
/// variable of the wasm VM holding them.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("anyOf" = [
    {"description": "no keys", "properties": {"keys": {"maxItems": 0}}},
    {
        "description": "keys need the header clients send them in",
        "required": ["header"],
        "properties": {"header": {"type": "string"}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = HEADER_NAME_PATTERN)))]
    header: Option<String>,
    #[serde(default)]
    keys: Vec<RawApiKey>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    id: String,
    sha256: RawHash,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    roles: Vec<String>,
}

/// The hex SHA-256 of an API key, inline or from a VM environment variable.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawHash {
    Hex(String),
    Env(RawEnvRef),
}

/// 64 hex digits, with the whitespace `str::trim` removes around them.
#[cfg(feature = "schema")]
const HEX_HASH_PATTERN: &str = "^[\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}]*[0-9A-Fa-f]{64}[\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}]*$";

#[cfg(feature = "schema")]
json_schema_impl!(RawHash, "KeyHash", |generator| serde_json::json!({
    "oneOf": [
        {"type": "string", "pattern": HEX_HASH_PATTERN},
        generator.subschema_for::<RawEnvRef>(),
    ]
}));

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawEnvRef {
    env: String,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAuthorization {
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawAuthzPolicy {
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    routes: Vec<String>,
    /// Accepted kinds; absent or null: ["jwt"].
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    credentials: Option<Vec<RawCredential>>,
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    providers: Option<Vec<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    roles: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    scopes: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(length(min = 1))))]
    amr: Vec<String>,
    /// Device identities (client certificate, `mtls` section) accepted
    /// here: exact, or a prefix ending in `*`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1), inner(length(min = 1))))]
    identities: Option<Vec<String>>,
    /// Tokens must be bound to the connection's client certificate (RFC
    /// 8705 `cnf` `x5t#S256`); bound tokens are always checked.
    #[serde(default)]
    bound_tokens: bool,
}

const MAX_PROVIDERS: usize = 16;
const DEFAULT_CACHE_ENTRIES: u32 = 1024;
const MAX_CACHE_ENTRIES: u32 = 1 << 20;
const DEFAULT_CLOCK_SKEW_MS: u64 = 30_000;
const DEFAULT_REFRESH_REMEMBER_MS: u64 = 30 * 86_400_000;

/// The `jwt`, `api_keys` and `authorization` sections, which only mean
/// something together.
pub fn compile_auth(
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
        let identities = match &raw.identities {
            Some(list) if list.is_empty() => {
                return Err(err(
                    at("identities"),
                    "must not be empty; omit it to accept any device",
                ))
            }
            Some(list) => identity::patterns(list, &at("identities"))?,
            None => Vec::new(),
        };
        if raw.bound_tokens && !accept_jwt {
            return Err(err(
                at("bound_tokens"),
                "needs \"jwt\" among the credentials: only tokens are bound to certificates",
            ));
        }
        policies.push(AuthzPolicy {
            accept_jwt,
            accept_api_key,
            providers: provider_ids,
            roles: raw.roles,
            scopes: raw.scopes,
            amr: raw.amr,
            identities,
            bound_tokens: raw.bound_tokens,
        });
    }

    let refresh = match jwt.refresh_tokens {
        None => None,
        Some(raw) => {
            let pages = slot_pages(raw.slots, DEFAULT_REPLAY_SLOTS, "jwt.refresh_tokens.slots")?;
            let applies = route_flags(routes, &raw.routes, "jwt.refresh_tokens.routes")?;
            Some(RefreshTokens {
                by_route: applies,
                remember_ms: raw
                    .remember
                    .map_or(DEFAULT_REFRESH_REMEMBER_MS, Millis::as_ms),
                pages,
                scope: raw.scope,
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

fn compile_remote_jwks(raw: RawRemote, provider: &str, at: &str) -> Result<Remote, ConfigError> {
    let defaults = Timing {
        refresh_ms: DEFAULT_JWKS_REFRESH_MS,
        min_refetch_ms: DEFAULT_JWKS_MIN_REFETCH_MS,
        timeout_ms: DEFAULT_JWKS_TIMEOUT_MS,
    };
    remote::compile(raw, "palisade.jwks", provider, at, defaults)
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
