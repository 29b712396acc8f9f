//! Findings, reason codes and the one verdict computed from them.
//!
//! Stages never answer the client themselves: they write findings, and the
//! verdict is taken once, at the end, so that `monitor` mode, metrics and the
//! security log see every stage the same way. The response a denial gets
//! is built here too, from the finding alone.

use crate::core::mode::Mode;
use crate::core::names::Names;
use crate::core::reasons::{DigestError, JwtError, SigError, ValidationError};

/// The pipeline stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Classify,
    /// Transport policy (`transport`): TLS required.
    Transport,
    /// Request validation (`validation`): limits, encodings, injection.
    Validate,
    Geo,
    Signature,
    Authenticate,
    Authorize,
    Bans,
    Bot,
    RateLimit,
    /// Login accounting: the username of a login request.
    Login,
    Reputation,
    /// The rate-limit service's answer (global mode).
    Global,
    /// Device identity from the client certificate (`mtls`).
    Mtls,
    /// The API document (`openapi`).
    Schema,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::Validate => "validate",
            Stage::Transport => "transport",
            Stage::Geo => "geo",
            Stage::Signature => "signature",
            Stage::Authenticate => "authenticate",
            Stage::Authorize => "authorize",
            Stage::Bans => "bans",
            Stage::Bot => "bot",
            Stage::RateLimit => "ratelimit",
            Stage::Login => "login",
            Stage::Reputation => "reputation",
            Stage::Global => "global",
            Stage::Mtls => "mtls",
            Stage::Schema => "schema",
        }
    }
}

/// Why a request was flagged. The string form is stable: it appears in
/// responses, logs and metrics, and operators build alerts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A pseudo-header the route classification needs (`:method`, `:path`)
    /// is missing, or one of those or `:authority` is not UTF-8. HTTP/2 lets
    /// raw bytes through that HTTP/1 parsers refuse; such a request cannot
    /// be classified, so it is refused rather than treated as `default`.
    RequestMalformed(Pseudo),
    /// A client sent a header palisade sets for the upstream (the user or a
    /// forwarded claim) on a host that cannot remove it.
    IdentityHeader,
    ClientIpInvalid,
    Signature(SigError),
    SignatureReplay,
    /// The replay table had no free slot to remember a signature.
    ReplayCapacity,
    Digest(DigestError),
    BodyTooLarge,
    /// A body palisade must check, sent without a Content-Length to a host
    /// that would not hand an empty chunked body over (ngx_wasm_module).
    BodyLengthRequired,
    /// The host could not hand over the buffered body.
    BodyUnreadable,
    /// No credential of a kind the route accepts.
    AuthMissing,
    Jwt(JwtError),
    /// A remote key set was never loaded (and `without_keys` is `deny`).
    JwtNoKeys,
    ApiKeyInvalid,
    AuthzRole,
    AuthzScope,
    AuthzMfa,
    /// A refresh token presented a second time.
    RefreshReuse,
    /// The refresh-token table had no free slot.
    RefreshCapacity,
    BanActive,
    RateLimitExhausted,
    RateLimitOverflow,
    StoreUnavailable,
    ConfigMissing,
    /// The host failed to provide the clock or the request headers.
    HostUnavailable,
    /// A token request carries a parameter more than once (RFC 6749
    /// section 3.1): palisade and the server could read different values.
    RefreshRepeatedParameter,
    /// A token request whose body palisade cannot read (multipart, or
    /// content-encoded): its refresh token could not be checked.
    RefreshUnsupportedBody,
    /// The bot score reached the deny threshold.
    BotDeny,
    /// The client's country is refused on its route class (`geo`).
    GeoDenied,
    /// The user was seen in another country too recently
    /// (`geo.impossible_travel`).
    GeoImpossibleTravel,
    /// The bot score reached the challenge threshold: the client gets a
    /// proof-of-work puzzle instead of the upstream.
    BotChallenge,
    /// Too many failed logins from this address (`failed_logins` rule).
    LoginFailuresIp,
    /// Too many failed logins from this client software.
    LoginFailuresFingerprint,
    /// Too many failed logins for this username.
    LoginFailuresUser,
    /// Too many different usernames tried by this client (`usernames` rule).
    LoginDistinctUsers,
    /// A login body carries the username field more than once: palisade
    /// and the server could read different users.
    LoginRepeatedUsername,
    /// One token used from more networks or client programs than a
    /// `networks` / `fingerprints` rule allows: stolen or shared.
    TokenShared,
    /// The client address is on a `deny` list (and on no `allow` list).
    ReputationDeny,
    /// A remote deny list with `without_list: deny` was never loaded.
    ReputationNoList,
    /// Request validation refused the request (`validation`).
    Validation(ValidationError),
    /// A plain-HTTP request to a route class that requires TLS.
    TlsRequired,
    /// The rate-limit service of the global mode failed, timed out or
    /// answered nonsense.
    GlobalUnavailable,
    /// No verified client certificate (with the configured identity field)
    /// on a route class that requires one.
    MtlsRequired,
    /// The certificate's identity is not one the route class accepts.
    MtlsIdentityNotAllowed,
    /// The device identity is not one the authorization policy accepts.
    AuthzIdentity,
    /// The request is no operation of the API document (`openapi`).
    SchemaUnknownOperation,
    /// A path, query, header or cookie parameter breaks its declaration.
    SchemaParameter,
    /// The body breaks the operation's request body (media type, schema).
    SchemaBody,
    /// `default_deny`: the request matches no route class and no operation.
    RouteUndeclared,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RequestMalformed(p) => p.reason_code(),
            Reason::IdentityHeader => "request.identity_header",
            Reason::ClientIpInvalid => "client_ip.invalid",
            Reason::Signature(e) => e.as_str(),
            Reason::SignatureReplay => "sig.replay",
            Reason::ReplayCapacity => "sig.replay_capacity",
            Reason::Digest(e) => e.as_str(),
            Reason::BodyTooLarge => "body.too_large",
            Reason::BodyLengthRequired => "body.length_required",
            Reason::BodyUnreadable => "body.unreadable",
            Reason::AuthMissing => "auth.missing",
            Reason::Jwt(e) => e.as_str(),
            Reason::JwtNoKeys => "jwt.no_keys",
            Reason::ApiKeyInvalid => "apikey.invalid",
            Reason::AuthzRole => "authz.role",
            Reason::AuthzScope => "authz.scope",
            Reason::AuthzMfa => "authz.mfa",
            Reason::RefreshReuse => "oauth.refresh_reuse",
            Reason::RefreshCapacity => "oauth.refresh_capacity",
            Reason::BanActive => "ban.active",
            Reason::RateLimitExhausted => "rl.exhausted",
            Reason::RateLimitOverflow => "rl.overflow",
            Reason::StoreUnavailable => "store.unavailable",
            Reason::ConfigMissing => "config.missing",
            Reason::HostUnavailable => "host.unavailable",
            Reason::RefreshRepeatedParameter => "oauth.repeated_parameter",
            Reason::RefreshUnsupportedBody => "oauth.unsupported_body",
            Reason::BotDeny => "bot.deny",
            Reason::GeoDenied => "geo.denied",
            Reason::GeoImpossibleTravel => "geo.impossible_travel",
            Reason::BotChallenge => "bot.challenge",
            Reason::LoginFailuresIp => "login.failures_ip",
            Reason::LoginFailuresFingerprint => "login.failures_fingerprint",
            Reason::LoginFailuresUser => "login.failures_user",
            Reason::LoginDistinctUsers => "login.distinct_users",
            Reason::LoginRepeatedUsername => "login.repeated_username",
            Reason::TokenShared => "token.shared",
            Reason::ReputationDeny => "reputation.deny",
            Reason::ReputationNoList => "reputation.no_list",
            Reason::Validation(e) => e.as_str(),
            Reason::TlsRequired => "transport.tls_required",
            Reason::GlobalUnavailable => "global.unavailable",
            Reason::MtlsRequired => "mtls.required",
            Reason::MtlsIdentityNotAllowed => "mtls.identity_not_allowed",
            Reason::AuthzIdentity => "authz.identity",
            Reason::SchemaUnknownOperation => "schema.unknown_operation",
            Reason::SchemaParameter => "schema.parameter",
            Reason::SchemaBody => "schema.body",
            Reason::RouteUndeclared => "route.undeclared",
        }
    }

    /// The answer a request gets when this finding is enforced.
    pub fn decision(self) -> Decision {
        match self {
            Reason::RequestMalformed(_)
            | Reason::IdentityHeader
            | Reason::ClientIpInvalid
            | Reason::Signature(_)
            | Reason::SignatureReplay
            | Reason::Digest(_)
            | Reason::BodyTooLarge
            | Reason::BodyLengthRequired
            | Reason::AuthMissing
            | Reason::Jwt(_)
            | Reason::ApiKeyInvalid
            | Reason::AuthzRole
            | Reason::AuthzScope
            | Reason::AuthzMfa
            | Reason::RefreshReuse
            | Reason::BanActive
            | Reason::RefreshRepeatedParameter
            | Reason::RefreshUnsupportedBody
            | Reason::LoginRepeatedUsername
            | Reason::TokenShared
            | Reason::BotDeny
            | Reason::GeoDenied
            | Reason::GeoImpossibleTravel
            | Reason::ReputationDeny
            | Reason::Validation(_)
            | Reason::TlsRequired
            | Reason::MtlsRequired
            | Reason::MtlsIdentityNotAllowed
            | Reason::AuthzIdentity
            | Reason::SchemaUnknownOperation
            | Reason::SchemaParameter
            | Reason::SchemaBody
            | Reason::RouteUndeclared => Decision::Deny,
            Reason::BotChallenge => Decision::Challenge,
            Reason::RateLimitExhausted
            | Reason::RateLimitOverflow
            | Reason::LoginFailuresIp
            | Reason::LoginFailuresFingerprint
            | Reason::LoginFailuresUser
            | Reason::LoginDistinctUsers => Decision::Throttle,
            Reason::ReplayCapacity
            | Reason::BodyUnreadable
            | Reason::JwtNoKeys
            | Reason::RefreshCapacity
            | Reason::StoreUnavailable
            | Reason::ConfigMissing
            | Reason::HostUnavailable
            | Reason::ReputationNoList
            | Reason::GlobalUnavailable => Decision::Error,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::Validation(e) => e.status(),
            Reason::RequestMalformed(_)
            | Reason::IdentityHeader
            | Reason::ClientIpInvalid
            | Reason::Digest(_)
            | Reason::RefreshReuse
            | Reason::RefreshRepeatedParameter
            | Reason::RefreshUnsupportedBody
            | Reason::LoginRepeatedUsername
            | Reason::SchemaParameter
            | Reason::SchemaBody => 400,
            Reason::SchemaUnknownOperation | Reason::RouteUndeclared => 404,
            Reason::Signature(_)
            | Reason::SignatureReplay
            | Reason::AuthMissing
            | Reason::Jwt(_)
            | Reason::ApiKeyInvalid => 401,
            Reason::BodyTooLarge => 413,
            Reason::BodyLengthRequired => 411,
            Reason::BanActive
            | Reason::AuthzRole
            | Reason::AuthzScope
            | Reason::AuthzMfa
            | Reason::BotDeny
            | Reason::TokenShared
            | Reason::GeoDenied
            | Reason::GeoImpossibleTravel
            | Reason::BotChallenge
            | Reason::ReputationDeny
            | Reason::TlsRequired
            | Reason::MtlsRequired
            | Reason::MtlsIdentityNotAllowed
            | Reason::AuthzIdentity => 403,
            Reason::RateLimitExhausted
            | Reason::RateLimitOverflow
            | Reason::LoginFailuresIp
            | Reason::LoginFailuresFingerprint
            | Reason::LoginFailuresUser
            | Reason::LoginDistinctUsers => 429,
            Reason::ReplayCapacity
            | Reason::BodyUnreadable
            | Reason::JwtNoKeys
            | Reason::RefreshCapacity
            | Reason::StoreUnavailable
            | Reason::ConfigMissing
            | Reason::HostUnavailable
            | Reason::ReputationNoList
            | Reason::GlobalUnavailable => 503,
        }
    }

    /// The short `error` word of the JSON body.
    pub fn error_word(self) -> &'static str {
        // What OAuth clients expect from a token endpoint (RFC 6749 5.2).
        if self == Reason::RefreshReuse {
            return "invalid_grant";
        }
        if self == Reason::BotChallenge {
            return "challenge";
        }
        if matches!(
            self,
            Reason::RefreshRepeatedParameter | Reason::RefreshUnsupportedBody
        ) {
            return "invalid_request";
        }
        match self.status() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            411 => "length_required",
            413 => "payload_too_large",
            414 => "uri_too_long",
            415 => "unsupported_media_type",
            431 => "header_fields_too_large",
            429 => "too_many_requests",
            _ => "unavailable",
        }
    }
}

impl Reason {
    /// A refusal by authentication, authorization or signature verification
    /// caused by what the client sent: these count against the client
    /// (`failures` rules), so guessing credentials is throttled and banned.
    pub fn is_credential_failure(self) -> bool {
        matches!(
            self,
            Reason::Signature(_)
                | Reason::SignatureReplay
                | Reason::Digest(_)
                | Reason::AuthMissing
                | Reason::Jwt(_)
                | Reason::ApiKeyInvalid
                | Reason::AuthzRole
                | Reason::AuthzScope
                | Reason::AuthzMfa
                | Reason::AuthzIdentity
                | Reason::RefreshReuse
                | Reason::RefreshRepeatedParameter
        )
    }

    /// The RFC 6750 `WWW-Authenticate` error for bearer-token failures.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Reason::AuthMissing | Reason::Jwt(_) | Reason::ApiKeyInvalid => Some("invalid_token"),
            Reason::AuthzRole | Reason::AuthzScope | Reason::AuthzMfa | Reason::AuthzIdentity => {
                Some("insufficient_scope")
            }
            _ => None,
        }
    }
}

/// The pseudo-headers a request must carry as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pseudo {
    Method,
    Path,
    Authority,
}

impl Pseudo {
    fn reason_code(self) -> &'static str {
        match self {
            Pseudo::Method => "request.method",
            Pseudo::Path => "request.path",
            Pseudo::Authority => "request.authority",
        }
    }
}

/// What happened to a request, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Throttle,
    Deny,
    /// Answered with a bot challenge.
    Challenge,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Throttle => "throttle",
            Decision::Deny => "deny",
            Decision::Challenge => "challenge",
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
    /// Where the request broke the API document (`openapi`).
    pub detail: Option<Box<Detail>>,
}

/// What a schema finding points at. Names from the API document and JSON
/// pointers only: never a request value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// The operation (`operationId`, or `GET /pets/{petId}`), if one matched.
    pub operation: Option<String>,
    /// `query.limit`, `path.petId`, or the JSON pointer of a body value.
    pub location: String,
    pub message: &'static str,
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
            detail: None,
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
    /// The route class's configured response headers (`transport`).
    pub security_headers: Vec<(String, String)>,
}

/// Changes to the request before it goes upstream: client copies of the
/// headers palisade owns are removed, the identity headers set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamHeaders {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

impl Quota {
    /// `RateLimit-Policy` and `RateLimit` (IETF httpapi ratelimit headers).
    pub fn headers(&self, names: &dyn Names) -> Vec<(&'static str, String)> {
        let name = names.rule_name(self.rule).unwrap_or("");
        let mut policy = format!("\"{name}\";q={}", self.capacity);
        if let Some(w) = self.window_s {
            policy.push_str(&format!(";w={w}"));
        }
        let mut state = format!("\"{name}\";r={}", self.remaining);
        if let Some(t) = self.reset_s {
            state.push_str(&format!(";t={t}"));
        }
        vec![("ratelimit-policy", policy), ("ratelimit", state)]
    }
}

impl Finding {
    /// The response an enforced finding gets: status, RFC 6750
    /// `WWW-Authenticate`, `Retry-After`, quota headers, and a small JSON
    /// body that never echoes what the client sent (but a validated
    /// request id).
    pub fn respond(&self, request_id: &str, names: &dyn Names) -> LocalResponse {
        let reason = self.reason;
        let mut headers: Vec<(&'static str, String)> =
            vec![("content-type", "application/json".to_string())];
        if let Some(error) = reason.bearer_error() {
            headers.push((
                "www-authenticate",
                format!(
                    "Bearer error=\"{error}\", error_description=\"{}\"",
                    reason.as_str()
                ),
            ));
        }
        if let Some(seconds) = self.retry_after_s {
            headers.push(("retry-after", seconds.to_string()));
        }
        if let Some(q) = &self.quota {
            headers.extend(q.headers(names));
        }
        let mut body = serde_json::json!({
            "error": reason.error_word(),
            "reason": reason.as_str(),
            "request_id": request_id,
        });
        if let (Some(d), Some(fields)) = (&self.detail, body.as_object_mut()) {
            // The client's own mistake, by name: nothing it did not send
            // or the published API does not say.
            fields.insert("location".into(), d.location.clone().into());
            fields.insert("message".into(), d.message.into());
        }
        let body = body.to_string();
        LocalResponse {
            status: reason.status(),
            headers,
            body,
            security_headers: Vec::new(),
        }
    }
}
