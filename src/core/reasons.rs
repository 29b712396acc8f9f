//! The reason codes of the verification stages (JWT, RFC 9421 signature,
//! RFC 9530 digest). They live here, below the stages, so that
//! [`crate::core::verdict::Reason`] can carry them without depending on the
//! stages that produce them.

use std::fmt;

/// Why a token was refused. The string form is stable: it appears in
/// responses, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtError {
    /// No token (empty string).
    Missing,
    /// Not three base64url segments, header or payload not a JSON object, a
    /// `crit` header, mistyped `kid`, `exp`, `nbf` or `iat`.
    Malformed,
    /// `alg` missing, `none`, unsupported, not allowed by the provider, or not
    /// usable with the key its `kid` names.
    Alg,
    /// No key of the set can verify the token: its `kid` is unknown, or it has
    /// no `kid` and no key fits its algorithm. The caller may refetch the JWKS.
    UnknownKid,
    /// The signature does not verify under any candidate key.
    Signature,
    /// `exp` missing or passed (beyond the clock skew).
    Expired,
    /// `nbf` or `iat` in the future (beyond the clock skew).
    NotYetValid,
    /// `exp - iat` over the provider's maximum lifetime, or `exp` before `iat`.
    Lifetime,
    /// `now - iat` over the provider's maximum age.
    TooOld,
    /// `iss` missing or not the provider's issuer.
    Issuer,
    /// `aud` missing or none of its values is one of the provider's audiences.
    Audience,
    /// A required claim is missing (or `null`, or an empty string), `sub`,
    /// `jti` or `aud` is not of its registered type, or `iat` is missing
    /// when a maximum lifetime or age is configured.
    Claims,
    /// Longer than `jwt::MAX_TOKEN_LEN`.
    TooLarge,
    /// No `kid`, and more than `jwt::MAX_KIDLESS_CANDIDATES` keys of the set fit
    /// its algorithm: trying them all would let one request cost that many
    /// signature checks.
    KidRequired,
    /// The token is bound to a client certificate (RFC 8705 `cnf`
    /// `x5t#S256`) other than the connection's, or the connection has none;
    /// or the route requires bound tokens and this one is not.
    Binding,
}

impl JwtError {
    pub const ALL: [JwtError; 15] = [
        JwtError::Missing,
        JwtError::Malformed,
        JwtError::Alg,
        JwtError::UnknownKid,
        JwtError::Signature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::Lifetime,
        JwtError::TooOld,
        JwtError::Issuer,
        JwtError::Audience,
        JwtError::Claims,
        JwtError::TooLarge,
        JwtError::KidRequired,
        JwtError::Binding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JwtError::Missing => "jwt.missing",
            JwtError::Malformed => "jwt.malformed",
            JwtError::Alg => "jwt.alg",
            JwtError::UnknownKid => "jwt.unknown_kid",
            JwtError::Signature => "jwt.signature",
            JwtError::Expired => "jwt.expired",
            JwtError::NotYetValid => "jwt.not_yet_valid",
            JwtError::Lifetime => "jwt.lifetime",
            JwtError::TooOld => "jwt.too_old",
            JwtError::Issuer => "jwt.issuer",
            JwtError::Audience => "jwt.audience",
            JwtError::Claims => "jwt.claims",
            JwtError::TooLarge => "jwt.too_large",
            JwtError::KidRequired => "jwt.kid_required",
            JwtError::Binding => "jwt.binding",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for JwtError {}

/// Why a request's signature was refused. The string form is stable: it
/// appears in responses, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigError {
    /// No `Signature` or `Signature-Input` field (or no member under the
    /// configured label).
    Missing,
    /// Unparseable structured fields, duplicate labels or parameters, missing
    /// or mistyped parameters, a label without its signature, a signature of
    /// the wrong length, an unsupported `alg`, component or parameter, or a
    /// `tag` other than the required one.
    Malformed,
    /// `keyid` names no key of the ring.
    UnknownKey,
    /// A required component is not covered, or a covered one is absent from
    /// the request.
    Components,
    /// `created` older than the maximum age, or `expires` passed.
    Expired,
    /// `created` further in the future than the allowed clock skew.
    Future,
    /// The MAC does not match.
    Invalid,
}

impl SigError {
    pub const ALL: [SigError; 7] = [
        SigError::Missing,
        SigError::Malformed,
        SigError::UnknownKey,
        SigError::Components,
        SigError::Expired,
        SigError::Future,
        SigError::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SigError::Missing => "sig.missing",
            SigError::Malformed => "sig.malformed",
            SigError::UnknownKey => "sig.unknown_key",
            SigError::Components => "sig.components",
            SigError::Expired => "sig.expired",
            SigError::Future => "sig.future",
            SigError::Invalid => "sig.invalid",
        }
    }
}

impl fmt::Display for SigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for SigError {}

/// Why a `Content-Digest` check failed. The string form is stable: it appears
/// in responses, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestError {
    /// No `Content-Digest` field, or an empty one.
    Missing,
    /// Not a structured-field dictionary, a duplicate key, too long, or a
    /// supported algorithm whose value is not a byte sequence of its length.
    Malformed,
    /// A supported algorithm's digest differs from the body's.
    Mismatch,
    /// Only algorithms this module does not implement are listed.
    Unsupported,
}

impl DigestError {
    pub const ALL: [DigestError; 4] = [
        DigestError::Missing,
        DigestError::Malformed,
        DigestError::Mismatch,
        DigestError::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DigestError::Missing => "digest.missing",
            DigestError::Malformed => "digest.malformed",
            DigestError::Mismatch => "digest.mismatch",
            DigestError::Unsupported => "digest.unsupported",
        }
    }
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DigestError {}

/// Why request validation refused a request, one code per check family.
/// The string form is stable: it appears in responses, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidationError {
    /// A method the route class does not allow.
    Method,
    /// `:path` (with its query) longer than allowed.
    UrlLength,
    /// More header fields than allowed.
    HeaderCount,
    /// Header names and values longer, in all, than allowed.
    HeaderSize,
    /// A body (declared or received) larger than allowed.
    BodySize,
    /// A body whose media type the route class does not accept.
    ContentType,
    /// A JSON body that does not parse.
    Json,
    /// A JSON body nested deeper than allowed.
    JsonDepth,
    /// `..` segments or a well-known system file, raw or percent-encoded.
    Traversal,
    /// NUL or another control byte in the URL, a header or a body value.
    ControlBytes,
    /// A value that reads as SQL injection.
    Sqli,
    /// A value that reads as script injection.
    Xss,
}

impl ValidationError {
    pub const ALL: [ValidationError; 12] = [
        ValidationError::Method,
        ValidationError::UrlLength,
        ValidationError::HeaderCount,
        ValidationError::HeaderSize,
        ValidationError::BodySize,
        ValidationError::ContentType,
        ValidationError::Json,
        ValidationError::JsonDepth,
        ValidationError::Traversal,
        ValidationError::ControlBytes,
        ValidationError::Sqli,
        ValidationError::Xss,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ValidationError::Method => "validation.method",
            ValidationError::UrlLength => "validation.url_length",
            ValidationError::HeaderCount => "validation.header_count",
            ValidationError::HeaderSize => "validation.header_size",
            ValidationError::BodySize => "validation.body_size",
            ValidationError::ContentType => "validation.content_type",
            ValidationError::Json => "validation.json",
            ValidationError::JsonDepth => "validation.json_depth",
            ValidationError::Traversal => "validation.traversal",
            ValidationError::ControlBytes => "validation.control_bytes",
            ValidationError::Sqli => "validation.sqli",
            ValidationError::Xss => "validation.xss",
        }
    }

    /// The HTTP status of a refusal: what the request is (too long, the
    /// wrong method) where HTTP has a code for it, 403 for an attack.
    pub fn status(self) -> u16 {
        match self {
            ValidationError::Method => 405,
            ValidationError::UrlLength => 414,
            ValidationError::HeaderCount | ValidationError::HeaderSize => 431,
            ValidationError::BodySize => 413,
            ValidationError::ContentType => 415,
            ValidationError::Json | ValidationError::JsonDepth | ValidationError::ControlBytes => {
                400
            }
            ValidationError::Traversal | ValidationError::Sqli | ValidationError::Xss => 403,
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
