//! Authentication (JWT bearer tokens, API keys) and authorization (roles,
//! scopes, MFA) per route class.
//!
//! Threat: credential stuffing and token hijacking end in requests that
//! carry someone's credential. This stage makes every protected route
//! require a credential that verifies now (short-lived tokens, see
//! [`crate::stages::auth::jwt`]), checks what it grants, and hands the upstream an identity
//! it can trust: the headers palisade sets (`x-palisade-user`, forwarded
//! claims) are always stripped from the client's request first, on every
//! route, so a client cannot forge them where palisade does not authenticate.
//!
//! Cost: a repeated token is found in a per-worker cache keyed by its hash
//! (no signature check, no JSON parse); a miss costs one signature check.
//! Remote key sets are fetched by the root context ([`crate::stages::auth::jwks`]), never
//! on the request path; an unknown `kid` costs one shared-data read to pick
//! up a set another worker fetched.

use crate::core::cluster::Scope;
use crate::core::identity::{self, IdentityPattern};
use crate::core::mode::{FailureMode, Mode};
use crate::core::remote::Remote;
use crate::core::request::HeaderMap;
use crate::core::routes::RouteId;
use crate::core::verdict::Reason;
use crate::stages::auth::jwks;
use crate::stages::auth::jwt::{
    self, Expiring, JwtError, Provider, TokenCache, TokenKey, VerifiedToken,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::{Mutex, MutexGuard};
use subtle::ConstantTimeEq;

/// Header carrying the authenticated principal to the upstream.
pub const USER_HEADER: &str = "x-palisade-user";

/// Longest claim value forwarded as a header; longer ones are dropped.
const MAX_FORWARDED_VALUE: usize = 4096;

/// Where a bearer token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A header (lower-case name), with a scheme prefix matched
    /// case-insensitively (`Bearer `) when one is configured.
    Header {
        name: String,
        prefix: Option<String>,
    },
    /// A cookie of the `Cookie` header.
    Cookie(String),
}

/// A configured claim forwarded upstream as a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedClaim {
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
}

/// A token issuer as configured.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub name: String,
    pub settings: jwt::ProviderSettings,
    /// The inline JWK Set document, already checked to parse cleanly.
    pub inline_jwks: Option<Vec<u8>>,
    pub remote: Option<Remote>,
    /// Claim path of the roles array.
    pub roles_claim: String,
    pub forward: Vec<ForwardedClaim>,
}

/// An API key: only the SHA-256 of the key is known.
#[derive(Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub roles: Vec<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// What a route class requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzPolicy {
    pub accept_jwt: bool,
    pub accept_api_key: bool,
    /// Indices into [`Auth::providers`] whose tokens are accepted.
    pub providers: Vec<usize>,
    /// Any of these roles.
    pub roles: Vec<String>,
    /// All of these scopes.
    pub scopes: Vec<String>,
    /// Any of these `amr` values.
    pub amr: Vec<String>,
    /// Any of these device identities (`mtls`); empty: no condition.
    pub identities: Vec<IdentityPattern>,
    /// Tokens must be bound to the connection's client certificate.
    pub bound_tokens: bool,
}

/// What the connection says of the client certificate, for authorization
/// and token binding.
pub struct Peer<'a> {
    /// The device identity (`mtls`), when the route class reads it.
    pub device: Option<&'a str>,
    /// SHA-256 of the certificate: a host call, made only for a token that
    /// is (or must be) bound.
    pub certificate_sha256: &'a dyn Fn() -> Option<[u8; 32]>,
}

/// Refresh-token reuse detection on token-endpoint routes.
#[derive(Debug, Clone)]
pub struct RefreshTokens {
    pub by_route: Vec<bool>,
    pub remember_ms: u64,
    pub pages: u32,
    /// Whether a token seen on another replica is a reuse too.
    pub scope: Scope,
}

impl RefreshTokens {
    pub fn applies_to(&self, route: RouteId) -> bool {
        self.by_route
            .get(usize::from(route))
            .copied()
            .unwrap_or(false)
    }
}

/// The compiled `jwt`, `api_keys` and `authorization` sections.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub jwt_mode: Mode,
    pub authz_mode: Mode,
    pub sources: Vec<TokenSource>,
    pub cache_entries: usize,
    /// What a request gets while a remote key set was never loaded.
    pub without_keys: FailureMode,
    pub providers: Vec<ProviderSpec>,
    pub api_key_header: Option<String>,
    pub api_keys: Vec<ApiKey>,
    pub policies: Vec<AuthzPolicy>,
    /// Indexed by route id: the policy that applies, if any.
    pub by_route: Vec<Option<usize>>,
    pub refresh: Option<RefreshTokens>,
    /// Headers palisade sets upstream; client copies are always removed.
    pub owned_headers: Vec<String>,
}

impl Auth {
    pub fn policy_for(&self, route: RouteId) -> Option<&AuthzPolicy> {
        self.by_route
            .get(usize::from(route))
            .copied()
            .flatten()
            .and_then(|i| self.policies.get(i))
    }
}

/// Who a request authenticated as, and what that grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `user` rate-limit key: namespaced by credential kind and
    /// provider, so that no token's `sub` shares a bucket with an API key or
    /// with a subject of another issuer.
    pub user_key: Vec<u8>,
    /// Headers to set on the upstream request.
    pub headers: Vec<(String, String)>,
}

/// Why a credential was refused; `user_key` is set when the credential was
/// valid but not sufficient (authorization), for the security log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub user_key: Option<Vec<u8>>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            user_key: None,
        }
    }
}

/// Prefix of API-key principals in `x-palisade-user`; a token whose `sub`
/// starts with it is refused, so the upstream cannot mistake one for the
/// other.
const API_KEY_PREFIX: &str = "apikey:";

fn user_key(kind: &str, namespace: &str, id: &str) -> Vec<u8> {
    [kind.as_bytes(), namespace.as_bytes(), id.as_bytes()].join(&0u8)
}

/// Per-worker state: providers with their current keys, and their caches.
pub struct AuthState {
    providers: Vec<ProviderState>,
    /// The secret of every provider cache's [`TokenKey`].
    cache_key: [u8; 16],
}

struct ProviderState {
    provider: Provider,
    cache: TokenCache<Authenticated>,
    /// Whether a key set was ever loaded (inline sets always are).
    loaded: bool,
    /// Generation of the shared record the keys came from.
    generation: u64,
    /// When this worker last asked for a refetch.
    kid_miss_flagged_ms: Option<u64>,
}

impl ProviderState {
    fn install(&mut self, keys: jwt::Jwks, generation: u64) {
        self.provider.set_keys(keys);
        self.cache.clear();
        self.loaded = true;
        self.generation = generation;
    }
}

impl AuthState {
    /// Builds providers from their specs; `cache_key` keys the token caches
    /// (the process seed). Fails only on settings that the configuration
    /// should already have refused.
    pub fn new(auth: &Auth, cache_key: [u8; 16]) -> Result<AuthState, jwt::ProviderError> {
        let providers = auth
            .providers
            .iter()
            .map(|spec| {
                let keys = match &spec.inline_jwks {
                    Some(doc) => jwt::Jwks::parse_with_symmetric(doc).0,
                    None => jwt::Jwks::default(),
                };
                Ok(ProviderState {
                    provider: Provider::new(spec.settings.clone(), keys)?,
                    cache: TokenCache::new(auth.cache_entries),
                    loaded: spec.inline_jwks.is_some(),
                    generation: 0,
                    kid_miss_flagged_ms: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthState {
            providers,
            cache_key,
        })
    }

    /// Installs a fetched key set of provider `index` (generation from the
    /// shared record); cached tokens are dropped, since a key may have been
    /// revoked.
    pub fn install(&mut self, index: usize, keys: jwt::Jwks, generation: u64) {
        if let Some(state) = self.providers.get_mut(index) {
            state.install(keys, generation);
        }
    }

    pub fn generation(&self, index: usize) -> Option<u64> {
        self.providers.get(index).map(|p| p.generation)
    }
}

/// A lock that cannot poison in practice (the wasm aborts on panic) and
/// recovers if it does.
pub fn lock(state: &Mutex<AuthState>) -> MutexGuard<'_, AuthState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Authenticates and authorizes one request on a route with `policy`.
/// `store` is only touched on an unknown `kid` of a remote provider.
pub fn check(
    auth: &Auth,
    state: &Mutex<AuthState>,
    policy: &AuthzPolicy,
    headers: &HeaderMap<'_>,
    now_ms: u64,
    store: &dyn crate::state::host::SharedStore,
    peer: &Peer<'_>,
) -> Result<Principal, Refusal> {
    // The device is checked whatever the credential: a valid key or token
    // on another device does not open the route.
    let device_refused = !policy.identities.is_empty()
        && !peer
            .device
            .is_some_and(|d| identity::allowed(&policy.identities, d));
    if policy.accept_api_key {
        if let Some(presented) = auth.api_key_header.as_deref().and_then(|h| headers.get(h)) {
            // Two key lines: palisade would check one and the upstream may
            // read the other, so neither is taken.
            if auth
                .api_key_header
                .as_deref()
                .is_some_and(|h| repeated(headers, h))
            {
                return Err(Reason::ApiKeyInvalid.into());
            }
            let key = api_key(&auth.api_keys, presented).ok_or(Reason::ApiKeyInvalid)?;
            let user_key = user_key("apikey", "", &key.id);
            let granted = match device_refused {
                true => Err(Reason::AuthzIdentity),
                false => authorize(policy, &key.roles, &[], &[]),
            };
            if let Err(reason) = granted {
                return Err(Refusal {
                    reason,
                    user_key: Some(user_key),
                });
            }
            return Ok(Principal {
                user_key,
                headers: vec![(
                    USER_HEADER.to_string(),
                    format!("{API_KEY_PREFIX}{}", key.id),
                )],
            });
        }
    }
    if !policy.accept_jwt {
        return Err(Reason::AuthMissing.into());
    }
    let token = bearer_token(&auth.sources, headers)?;
    let mut guard = lock(state);
    let holder = verify_token(&mut guard, auth, policy, token, now_ms, store)?;
    if holder.api_key_subject {
        return Err(Reason::Jwt(JwtError::Claims).into());
    }
    check_binding(policy, holder.bound_to, peer)?;
    let verified = &holder.token;
    let granted = match device_refused {
        true => Err(Reason::AuthzIdentity),
        false => authorize(policy, &holder.roles, &verified.scopes, &verified.amr),
    };
    if let Err(reason) = granted {
        return Err(Refusal {
            reason,
            user_key: Some(holder.user_key.clone()),
        });
    }
    Ok(match holder {
        Cow::Owned(holder) => Principal {
            user_key: holder.user_key,
            headers: holder.headers,
        },
        Cow::Borrowed(holder) => Principal {
            user_key: holder.user_key.clone(),
            headers: holder.headers.clone(),
        },
    })
}

/// A verified token with what it says of its holder, derived once, when
/// the token is verified, and cached with it: a request with a cached
/// token only checks its grants and copies the user key and headers.
#[derive(Debug, Clone)]
struct Authenticated {
    token: VerifiedToken,
    /// `sub` is shaped like an API key's principal: the token is refused.
    api_key_subject: bool,
    user_key: Vec<u8>,
    /// From the provider's roles claim.
    roles: Vec<String>,
    /// What the upstream is told: the subject and the forwarded claims.
    headers: Vec<(String, String)>,
    /// The client certificate the token is bound to (RFC 8705).
    bound_to: Binding,
}

/// A token's certificate binding, from its `cnf` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    Unbound,
    /// `cnf.x5t#S256`: SHA-256 of the certificate's DER.
    Certificate([u8; 32]),
    /// A `cnf` with an `x5t#S256` that is not 32 bytes of base64url: the
    /// issuer meant to bind the token, so it is never accepted unbound.
    Unreadable,
}

impl Binding {
    fn of(claims: &Value) -> Binding {
        use base64::Engine as _;
        let Some(cnf) = claims.get("cnf") else {
            return Binding::Unbound;
        };
        let Some(thumbprint) = cnf.get("x5t#S256") else {
            // Other confirmation methods (`jkt`, `jwk`) need proof of
            // possession palisade does not check: the token is not
            // certificate-bound.
            return Binding::Unbound;
        };
        thumbprint
            .as_str()
            .and_then(|t| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .map_or(Binding::Unreadable, Binding::Certificate)
    }
}

/// RFC 8705 section 3: a certificate-bound token is accepted only over a
/// connection presenting that certificate; compared in constant time.
fn check_binding(policy: &AuthzPolicy, bound_to: Binding, peer: &Peer<'_>) -> Result<(), Refusal> {
    let expected = match bound_to {
        Binding::Certificate(expected) => expected,
        Binding::Unbound if !policy.bound_tokens => return Ok(()),
        Binding::Unbound | Binding::Unreadable => return Err(Reason::Jwt(JwtError::Binding).into()),
    };
    match (peer.certificate_sha256)() {
        Some(presented) if bool::from(presented.ct_eq(&expected)) => Ok(()),
        _ => Err(Reason::Jwt(JwtError::Binding).into()),
    }
}

impl Authenticated {
    fn new(token: VerifiedToken, raw: &str, spec: &ProviderSpec) -> Authenticated {
        let subject = token.sub.as_deref().unwrap_or_default();
        // Without a subject the token itself is the user: tokens that name
        // nobody must not all share one empty-subject bucket.
        let user_key = if subject.is_empty() {
            let digest: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            user_key("jwt-token", &spec.name, &hex)
        } else {
            user_key("jwt", &spec.name, subject)
        };
        let mut headers = Vec::with_capacity(1 + spec.forward.len());
        if !subject.is_empty() && header_value_ok(subject) {
            headers.push((USER_HEADER.to_string(), subject.to_string()));
        }
        for forward in &spec.forward {
            if let Some(value) = token.claim_at(&forward.claim).and_then(claim_as_header) {
                headers.push((forward.header.clone(), value));
            }
        }
        Authenticated {
            bound_to: Binding::of(&token.claims),
            api_key_subject: subject.starts_with(API_KEY_PREFIX),
            user_key,
            roles: string_list(token.claim_at(&spec.roles_claim)),
            headers,
            token,
        }
    }
}

impl Expiring for Authenticated {
    fn valid_until_s(&self) -> u64 {
        self.token.valid_until_s
    }
}

/// Whether a header comes more than once (HTTP/1.1 lines, HTTP/2 fields).
fn repeated(headers: &HeaderMap<'_>, name: &str) -> bool {
    headers.get_all(name).nth(1).is_some()
}

/// The token of the first configured source present. A token header that
/// comes twice is malformed: which one the upstream reads is unknown.
pub fn bearer_token<'h>(
    sources: &[TokenSource],
    headers: &HeaderMap<'h>,
) -> Result<&'h str, Refusal> {
    for source in sources {
        if let TokenSource::Header { name, .. } = source {
            if repeated(headers, name) {
                return Err(Reason::Jwt(JwtError::Malformed).into());
            }
        }
        let found = match source {
            TokenSource::Header { name, prefix } => headers.get_str(name).and_then(|value| {
                let value = value.trim();
                match prefix {
                    None => Some(value),
                    Some(prefix) => value
                        .get(..prefix.len())
                        .filter(|p| p.eq_ignore_ascii_case(prefix))
                        .and_then(|_| value.get(prefix.len()..))
                        .map(str::trim_start),
                }
            }),
            TokenSource::Cookie(name) => headers
                .cookies(name)
                .next()
                .and_then(|v| std::str::from_utf8(v).ok()),
        };
        if let Some(token) = found {
            return Ok(token);
        }
    }
    Err(Reason::AuthMissing.into())
}

/// The `iss` of a token not verified yet: it only chooses which provider
/// verifies the token, and that provider checks it again.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()?.get("iss")? {
        Value::String(iss) => Some(iss.clone()),
        _ => None,
    }
}

/// The provider that must verify `token`, from the providers the policy
/// accepts: the only one, or the one whose issuer is the token's `iss`.
fn pick_provider(auth: &Auth, policy: &AuthzPolicy, token: &str) -> Result<usize, Reason> {
    if let [only] = policy.providers.as_slice() {
        return Ok(*only);
    }
    let iss = unverified_issuer(token).ok_or(Reason::Jwt(JwtError::Malformed))?;
    policy
        .providers
        .iter()
        .copied()
        .find(|&i| {
            auth.providers
                .get(i)
                .is_some_and(|p| p.settings.issuer == iss)
        })
        .ok_or(Reason::Jwt(JwtError::Issuer))
}

/// The verified token and its holder, from the cache (borrowed: a hit
/// copies nothing) or verified now.
fn verify_token<'s>(
    state: &'s mut AuthState,
    auth: &Auth,
    policy: &AuthzPolicy,
    token: &str,
    now_ms: u64,
    store: &dyn crate::state::host::SharedStore,
) -> Result<Cow<'s, Authenticated>, Reason> {
    let now_s = now_ms / 1000;
    let key = TokenKey::new(&state.cache_key, token);
    let cached = policy.providers.iter().copied().find(|&i| {
        state
            .providers
            .get_mut(i)
            .is_some_and(|p| p.cache.get(key, now_s).is_some())
    });
    if let Some(index) = cached {
        // Looked up again (no hashing: the key is kept) so that this branch
        // returns unconditionally and the borrow ends here.
        return match state
            .providers
            .get_mut(index)
            .and_then(|p| p.cache.get(key, now_s))
        {
            Some(hit) => Ok(Cow::Borrowed(hit)),
            None => Err(Reason::Jwt(JwtError::Malformed)),
        };
    }
    let index = pick_provider(auth, policy, token)?;
    let spec = auth
        .providers
        .get(index)
        .ok_or(Reason::Jwt(JwtError::Issuer))?;
    let provider_state = state
        .providers
        .get_mut(index)
        .ok_or(Reason::Jwt(JwtError::Issuer))?;
    if !provider_state.loaded && spec.remote.is_some() {
        // A key set may have arrived since the last tick.
        adopt_shared(provider_state, spec, store);
        if !provider_state.loaded {
            return Err(Reason::JwtNoKeys);
        }
    }
    let mut result = jwt::verify(token, &provider_state.provider, now_s);
    if result == Err(JwtError::UnknownKid) {
        if let Some(remote) = &spec.remote {
            if adopt_shared(provider_state, spec, store) {
                result = jwt::verify(token, &provider_state.provider, now_s);
            } else if provider_state
                .kid_miss_flagged_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= remote.min_refetch_ms)
            {
                provider_state.kid_miss_flagged_ms = Some(now_ms);
                if let Err(e) = jwks::flag_unknown_kid(store, remote, now_ms) {
                    log::warn!(
                        "palisade: cannot ask for a JWKS refetch of provider `{}` ({e:?})",
                        spec.name
                    );
                }
            }
        }
    }
    let holder = Authenticated::new(result.map_err(Reason::Jwt)?, token, spec);
    provider_state.cache.insert(key, holder.clone(), now_s);
    Ok(Cow::Owned(holder))
}

/// Installs the shared key set if it is newer than this worker's. Returns
/// whether keys changed.
fn adopt_shared(
    state: &mut ProviderState,
    spec: &ProviderSpec,
    store: &dyn crate::state::host::SharedStore,
) -> bool {
    let Some(remote) = &spec.remote else {
        return false;
    };
    match jwks::read_newer(store, remote, state.generation) {
        Ok(Some((generation, keys))) => {
            log::info!(
                "palisade: provider `{}`: key set generation {generation} installed ({} keys)",
                spec.name,
                keys.len()
            );
            state.install(keys, generation);
            true
        }
        Ok(None) => false,
        Err(e) => {
            log::warn!(
                "palisade: cannot read the shared key set of provider `{}` ({e:?})",
                spec.name
            );
            false
        }
    }
}

/// Roles any-of, scopes all-of, `amr` any-of.
fn authorize(
    policy: &AuthzPolicy,
    roles: &[String],
    scopes: &[String],
    amr: &[String],
) -> Result<(), Reason> {
    if !policy.roles.is_empty() && !policy.roles.iter().any(|r| roles.contains(r)) {
        return Err(Reason::AuthzRole);
    }
    if !policy.scopes.iter().all(|s| scopes.contains(s)) {
        return Err(Reason::AuthzScope);
    }
    if !policy.amr.is_empty() && !policy.amr.iter().any(|a| amr.contains(a)) {
        return Err(Reason::AuthzMfa);
    }
    Ok(())
}

/// The configured key whose hash is the presented key's, compared in
/// constant time against every key (no early exit).
fn api_key<'a>(keys: &'a [ApiKey], presented: &[u8]) -> Option<&'a ApiKey> {
    let digest: [u8; 32] = Sha256::digest(presented).into();
    let mut found = None;
    for key in keys {
        if bool::from(key.sha256.ct_eq(&digest)) {
            found = Some(key);
        }
    }
    found
}

/// Strings of a claim that is an array of strings, or a space-separated
/// string.
fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A claim as a header value: strings, numbers and booleans as they are,
/// arrays of those joined with `,`. Values that could split or smuggle a
/// header (control characters) or are too long are not forwarded.
fn claim_as_header(value: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        other => scalar(other)?,
    };
    header_value_ok(&text).then_some(text)
}

fn header_value_ok(text: &str) -> bool {
    text.len() <= MAX_FORWARDED_VALUE && !text.chars().any(|c| c.is_control() && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap<'static> {
        HeaderMap::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn tokens_come_from_the_first_configured_source_present() {
        let sources = vec![
            TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            },
            TokenSource::Cookie("access_token".into()),
        ];
        let token = |h: &HeaderMap<'_>| bearer_token(&sources, h).ok().map(str::to_string);
        let h = headers(&[("authorization", "bearer   abc.def.ghi")]);
        assert_eq!(token(&h).as_deref(), Some("abc.def.ghi"));
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(token(&h), None, "another scheme is no token");
        let h = headers(&[("cookie", "a=1; access_token=t.o.k; b=2")]);
        assert_eq!(token(&h).as_deref(), Some("t.o.k"));
        let h = headers(&[("cookie", "xaccess_token=t.o.k")]);
        assert_eq!(token(&h), None);
    }

    #[test]
    fn api_keys_match_by_hash_only() {
        let keys = vec![
            ApiKey {
                id: "a".into(),
                sha256: Sha256::digest(b"key-a").into(),
                roles: vec!["reports".into()],
            },
            ApiKey {
                id: "b".into(),
                sha256: Sha256::digest(b"key-b").into(),
                roles: vec![],
            },
        ];
        assert_eq!(api_key(&keys, b"key-b").map(|k| k.id.as_str()), Some("b"));
        assert!(api_key(&keys, b"key-c").is_none());
        assert!(api_key(&keys, b"").is_none());
    }

    #[test]
    fn a_certificate_bound_token_needs_its_certificate() {
        use base64::Engine as _;
        let cert: [u8; 32] = Sha256::digest(b"alpha certificate DER").into();
        let other: [u8; 32] = Sha256::digest(b"beta certificate DER").into();
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert);
        let bound = Binding::of(&serde_json::json!({"cnf": {"x5t#S256": x5t}}));
        assert_eq!(bound, Binding::Certificate(cert));
        assert_eq!(
            Binding::of(&serde_json::json!({"sub": "a"})),
            Binding::Unbound
        );
        assert_eq!(
            Binding::of(&serde_json::json!({"cnf": {"jkt": "abc"}})),
            Binding::Unbound
        );
        for bad in [serde_json::json!("short"), serde_json::json!(7)] {
            let claims = serde_json::json!({"cnf": {"x5t#S256": bad}});
            assert_eq!(Binding::of(&claims), Binding::Unreadable);
        }
        let mut policy = AuthzPolicy {
            accept_jwt: true,
            accept_api_key: false,
            providers: vec![0],
            roles: vec![],
            scopes: vec![],
            amr: vec![],
            identities: Vec::new(),
            bound_tokens: false,
        };
        let refused = Err(Refusal::from(Reason::Jwt(JwtError::Binding)));
        let alpha = move || Some(cert);
        let beta = move || Some(other);
        let none = || None;
        let peer = |f: &dyn Fn() -> Option<[u8; 32]>| {
            check_binding(
                &policy,
                bound,
                &Peer {
                    device: None,
                    certificate_sha256: f,
                },
            )
        };
        assert_eq!(peer(&alpha), Ok(()));
        assert_eq!(peer(&beta), refused);
        assert_eq!(peer(&none), refused);
        // An unbound token: fine unless the route requires binding.
        let unread = || -> Option<[u8; 32]> { None };
        let unbound = Peer {
            device: None,
            certificate_sha256: &unread,
        };
        assert_eq!(check_binding(&policy, Binding::Unbound, &unbound), Ok(()));
        policy.bound_tokens = true;
        assert_eq!(check_binding(&policy, Binding::Unbound, &unbound), refused);
        assert_eq!(
            check_binding(&policy, Binding::Unreadable, &unbound),
            refused
        );
    }

    #[test]
    fn authorization_is_roles_any_scopes_all_amr_any() {
        let policy = AuthzPolicy {
            accept_jwt: true,
            accept_api_key: false,
            providers: vec![0],
            roles: vec!["admin".into(), "ops".into()],
            scopes: vec!["a".into(), "b".into()],
            amr: vec!["mfa".into(), "otp".into()],
            identities: Vec::new(),
            bound_tokens: false,
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            authorize(
                &policy,
                &s(&["ops"]),
                &s(&["b", "a", "c"]),
                &s(&["pwd", "otp"])
            ),
            Ok(())
        );
        assert_eq!(
            authorize(&policy, &s(&["user"]), &s(&["a", "b"]), &s(&["otp"])),
            Err(Reason::AuthzRole)
        );
        assert_eq!(
            authorize(&policy, &s(&["admin"]), &s(&["a"]), &s(&["otp"])),
            Err(Reason::AuthzScope)
        );
        assert_eq!(
            authorize(&policy, &s(&["admin"]), &s(&["a", "b"]), &s(&["pwd"])),
            Err(Reason::AuthzMfa)
        );
    }

    #[test]
    fn claims_become_header_values_only_when_safe() {
        assert_eq!(claim_as_header(&Value::from("alice")), Some("alice".into()));
        assert_eq!(claim_as_header(&Value::from(42)), Some("42".into()));
        assert_eq!(
            claim_as_header(&serde_json::json!(["a", "b"])),
            Some("a,b".into())
        );
        assert_eq!(claim_as_header(&serde_json::json!({"a": 1})), None);
        assert_eq!(claim_as_header(&Value::from("a\r\nx-admin: 1")), None);
        assert_eq!(claim_as_header(&Value::from("x".repeat(5000))), None);
    }
}
