//! JSON Web Token (RFC 7519) verification: compact JWS (RFC 7515) bearer
//! tokens signed with `RS256`/`RS384`/`RS512`, `PS256`/`PS384`/`PS512`,
//! `ES256`, `ES384`, `EdDSA` (Ed25519, RFC 8037) or, only where a symmetric
//! key is configured, `HS256`, against keys from a JWK Set (RFC 7517).
//!
//! The cryptography is the `jwt-compact` crate's (itself on `rsa`, `p256`,
//! `ed25519-compact`, `hmac`, `sha2`), except `ES384`, which `jwt-compact`
//! 0.8 lacks: it is RustCrypto's `p384` ECDSA verifier (SHA-384, signature
//! `r || s` of 96 bytes, RFC 7518 section 3.4), called directly. This module
//! parses the token and the key set, chooses the key, and checks the claims.
//!
//! Threat: a bot that replays or forges bearer tokens to look like a logged-in
//! user.
//!
//! - Forgery. A token verifies only if its signature checks out under a key of
//!   the provider's [`Jwks`], with an algorithm the provider allows. `alg:
//!   none` is never accepted, whatever the configuration. Keys embedded in or
//!   referenced by the token (`jwk`, `jku`, `x5u`, `x5c`) are ignored: keys
//!   come from configuration or the provider's JWKS only. A `crit` header is
//!   refused (no extension is understood).
//! - Algorithm confusion. Every key is bound, when it is parsed, to one
//!   algorithm family ([`KeyFamily`]: RSA, P-256, P-384, Ed25519, HMAC) and,
//!   when its JWK has `alg`, to that one algorithm. A token's `alg` picks the
//!   family, so an `HS256` token is only ever checked against an `oct` key and
//!   never against the bytes of an RSA, EC or OKP public key, an `oct` key
//!   never verifies `RS*`, and a P-256 key never verifies `ES384` nor a P-384
//!   key `ES256`. `oct` keys are refused by [`Jwks::parse`] (a key set
//!   fetched from an identity provider is public; a shared secret has no
//!   place in it) and accepted only by [`Jwks::parse_with_symmetric`], for
//!   inline configuration; [`Provider::new`] refuses `HS256` unless the key set
//!   has such a key.
//! - Replay after expiry. `exp` is required and enforced; `nbf` and `iat`,
//!   when present, must not be in the future. [`ProviderSettings::max_lifetime_s`]
//!   (`exp - iat`) bounds how long a stolen token stays useful whatever the
//!   issuer put in `exp`, and [`ProviderSettings::max_age_s`] (`now - iat`)
//!   bounds it from issuance. Replay *within* the validity window is not
//!   stopped here: that is the job of token binding / rate limits elsewhere.
//! - Key rotation. A token's `kid` selects the keys with that id; a `kid` that
//!   names no key is [`JwtError::UnknownKid`] (`jwt.unknown_kid`), distinct from
//!   a bad signature, so that the caller can refetch the JWKS (rate-limited)
//!   and retry, then swap the set in with [`Provider::set_keys`]. Several keys
//!   may share a `kid`: each one that fits the algorithm is tried.
//! - A token without `kid` is tried against the keys of the set that fit its
//!   algorithm when there are at most [`MAX_KIDLESS_CANDIDATES`] of them, so
//!   that issuers that omit `kid` (one key, two while rotating) work; with
//!   more it is refused (`jwt.kid_required`) rather than cost one signature
//!   check per key. With no candidate key at all the error is
//!   `jwt.unknown_kid` too (the provider may have rotated to a key the proxy
//!   has not fetched yet).
//! - Audience confusion. A token minted for another service of the same
//!   issuer is refused when the provider lists its audiences (`aud` must
//!   contain one of them). An empty audience list disables the check, as in
//!   Envoy's `jwt_authn`; configuration should require a list.
//!
//! Assumptions:
//!
//! - Clock skew. Every time check is loosened by
//!   [`ProviderSettings::clock_skew_s`] (at most [`MAX_CLOCK_SKEW_S`]): `exp`
//!   and the maximum age are extended by it, `nbf` and `iat` may be that far
//!   ahead of the proxy's clock.
//! - Time is whole seconds since the Unix epoch (the proxy's clock); NumericDate
//!   claims with a fraction are truncated.
//! - Tokens are at most [`MAX_TOKEN_LEN`] bytes, so the work per token is
//!   bounded (`jwt.too_large` above). RSA moduli are 2048 to 4096 bits; HMAC
//!   keys at least 32 bytes (RFC 7518 section 3.2).
//! - Duplicate JSON member names resolve to the last one (RFC 7515 section 5.2
//!   permits this).
//!
//! Not covered yet:
//!
//! - Fetching remote JWKS: the glue does it (`dispatch_http_call` from the
//!   root context's tick) and hands the body to [`Jwks::parse`].
//! - The [`TokenCache`] is per worker (per wasm VM): a token is verified once
//!   per worker, not once per process. Tokens are cached until they would
//!   stop verifying on time grounds; swapping a provider's keys does not
//!   evict tokens signed by a removed key unless the caller calls
//!   [`TokenCache::clear`].
//! - JWE (encrypted tokens, five segments) is refused as malformed; `ES512`
//!   (P-521), `ES256K`, `HS384`, `HS512`, `Ed448` are not supported.
//!
//! No input panics; errors never carry token or key material.

use base64::Engine as _;
use base64ct::Encoding as _;
use jwt_compact::alg::SecretBytes;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use p384::ecdsa::signature::Verifier as _;
use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys a token without `kid` is tried against, at most: an issuer that
/// omits `kid` has one key, or two while it rotates.
pub const MAX_KIDLESS_CANDIDATES: usize = 2;

/// Longest token accepted, in bytes (the compact serialization).
pub const MAX_TOKEN_LEN: usize = 8192;

/// Most keys kept from one JWK Set; further entries are reported as errors.
pub const MAX_KEYS: usize = 64;

/// Largest clock skew a [`Provider`] accepts, in seconds.
pub const MAX_CLOCK_SKEW_S: u64 = 3600;

/// Shortest HMAC key (`oct` `k`) accepted: the SHA-256 output size.
pub const MIN_HMAC_KEY_LEN: usize = 32;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

type P256Key = <Es256 as Algorithm>::VerifyingKey;
type Ed25519Key = <Ed25519 as Algorithm>::VerifyingKey;
type P384Key = p384::ecdsa::VerifyingKey;

/// Size of a P-384 coordinate, and of each of `r` and `s` in an `ES384`
/// signature (RFC 7518 sections 3.4 and 6.2.1.2).
const P384_FIELD_LEN: usize = 48;

pub use crate::core::reasons::JwtError;

/// A supported JWS algorithm (RFC 7518 section 3, RFC 8037 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    Hs256,
}

impl Alg {
    pub const ALL: [Alg; 10] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
        Alg::Hs256,
    ];

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// Parses an `alg` value, case-sensitively (RFC 7515 section 4.1.1).
    /// `none` and unsupported algorithms give `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The key family that can verify this algorithm.
    pub fn family(self) -> KeyFamily {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                KeyFamily::Rsa
            }
            Alg::Es256 => KeyFamily::P256,
            Alg::Es384 => KeyFamily::P384,
            Alg::EdDsa => KeyFamily::Ed25519,
            Alg::Hs256 => KeyFamily::Hmac,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a verification key; a key verifies only algorithms of its
/// family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// `kty: RSA`: `RS*`, `PS*`.
    Rsa,
    /// `kty: EC`, `crv: P-256`: `ES256`.
    P256,
    /// `kty: EC`, `crv: P-384`: `ES384`.
    P384,
    /// `kty: OKP`, `crv: Ed25519`: `EdDSA`.
    Ed25519,
    /// `kty: oct`: `HS256`.
    Hmac,
}

enum KeyMaterial {
    Rsa(RsaPublicKey),
    P256(P256Key),
    P384(P384Key),
    Ed25519(Ed25519Key),
    Hmac(Hs256Key),
}

/// One verification key of a [`Jwks`]. `Debug` shows no key material.
pub struct Jwk {
    kid: Option<String>,
    alg: Option<Alg>,
    material: KeyMaterial,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family())
            .finish_non_exhaustive()
    }
}

impl Jwk {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key is restricted to, from its JWK `alg`.
    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }

    pub fn family(&self) -> KeyFamily {
        match self.material {
            KeyMaterial::Rsa(_) => KeyFamily::Rsa,
            KeyMaterial::P256(_) => KeyFamily::P256,
            KeyMaterial::P384(_) => KeyFamily::P384,
            KeyMaterial::Ed25519(_) => KeyFamily::Ed25519,
            KeyMaterial::Hmac(_) => KeyFamily::Hmac,
        }
    }

    /// Whether this key may verify `alg`: same family, and `alg` is the key's
    /// own algorithm when it has one.
    pub fn accepts(&self, alg: Alg) -> bool {
        self.family() == alg.family() && self.alg.is_none_or(|own| own == alg)
    }

    fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match (&self.material, alg) {
            (KeyMaterial::Rsa(key), Alg::Rs256) => {
                check(&Rsa::rs256(), key, signing_input, signature)
            }
            (KeyMaterial::Rsa(key), Alg::Rs384) => {
                check(&Rsa::rs384(), key, signing_input, signature)
            }
            (KeyMaterial::Rsa(key), Alg::Rs512) => {
                check(&Rsa::rs512(), key, signing_input, signature)
            }
            (KeyMaterial::Rsa(key), Alg::Ps256) => {
                check(&Rsa::ps256(), key, signing_input, signature)
            }
            (KeyMaterial::Rsa(key), Alg::Ps384) => {
                check(&Rsa::ps384(), key, signing_input, signature)
            }
            (KeyMaterial::Rsa(key), Alg::Ps512) => {
                check(&Rsa::ps512(), key, signing_input, signature)
            }
            (KeyMaterial::P256(key), Alg::Es256) => check(&Es256, key, signing_input, signature),
            (KeyMaterial::P384(key), Alg::Es384) => check_es384(key, signing_input, signature),
            (KeyMaterial::Ed25519(key), Alg::EdDsa) => {
                check(&Ed25519, key, signing_input, signature)
            }
            (KeyMaterial::Hmac(key), Alg::Hs256) => check(&Hs256, key, signing_input, signature),
            _ => false,
        }
    }
}

/// One signature check through `jwt-compact`. The length is checked first:
/// some signature types' `try_from_slice` assume it.
fn check<A: Algorithm>(alg: &A, key: &A::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    if let Some(len) = A::Signature::LENGTH {
        if signature.len() != len.get() {
            return false;
        }
    }
    match A::Signature::try_from_slice(signature) {
        Ok(signature) => alg.verify_signature(&signature, key, message),
        Err(_) => false,
    }
}

/// An `ES384` check (RFC 7518 section 3.4) through `p384`: the signature is
/// `r || s`, 48 bytes each, big-endian (not DER); `Signature::from_slice`
/// refuses any other length and a zero or out-of-range `r` or `s`, and the
/// verifier hashes the message with SHA-384.
fn check_es384(key: &P384Key, message: &[u8], signature: &[u8]) -> bool {
    if signature.len() != 2 * P384_FIELD_LEN {
        return false;
    }
    match p384::ecdsa::Signature::from_slice(signature) {
        Ok(signature) => key.verify(message, &signature).is_ok(),
        Err(_) => false,
    }
}

/// A P-384 public key from its JWK coordinates: each exactly 48 bytes (RFC
/// 7518 section 6.2.1.2), and the point on the curve.
fn p384_key(x: &[u8], y: &[u8]) -> Result<P384Key, &'static str> {
    if x.len() != P384_FIELD_LEN || y.len() != P384_FIELD_LEN {
        return Err("invalid P-384 key (`x` and `y` must be 48 bytes)");
    }
    let mut sec1 = [0u8; 1 + 2 * P384_FIELD_LEN];
    sec1[0] = 4; // SEC1 uncompressed point
    sec1[1..=P384_FIELD_LEN].copy_from_slice(x);
    sec1[1 + P384_FIELD_LEN..].copy_from_slice(y);
    P384Key::from_sec1_bytes(&sec1).map_err(|_| "invalid P-384 key (not a point of the curve)")
}

/// Why an entry of a JWK Set was skipped. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkError {
    /// Index of the entry in `keys`; `None` for the document itself.
    pub index: Option<usize>,
    /// The entry's `kid`, when it had a string one.
    pub kid: Option<String>,
    pub reason: &'static str,
}

impl fmt::Display for JwkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "keys[{i}]")?,
            None => f.write_str("key set")?,
        }
        if let Some(kid) = &self.kid {
            write!(f, " (kid `{kid}`)")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for JwkError {}

/// A set of verification keys, parsed from a JWK Set document.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWK Set (`{"keys": [...]}`) of public keys: `RSA` (`n`, `e`),
    /// `EC` P-256 and P-384 (`crv`, `x`, `y`) and `OKP` Ed25519 (`crv`, `x`), each with
    /// optional `kid`, `alg` and `use`. Keys with `use: enc` are skipped
    /// silently; `oct` keys, private keys and anything malformed or
    /// unsupported are skipped and reported. The good keys are kept.
    pub fn parse(json: &[u8]) -> (Jwks, Vec<JwkError>) {
        Jwks::parse_inner(json, false)
    }

    /// As [`Jwks::parse`], and also accepts `oct` keys (`k`, at least
    /// [`MIN_HMAC_KEY_LEN`] bytes) for `HS256`. For inline configuration only,
    /// never for a fetched key set.
    pub fn parse_with_symmetric(json: &[u8]) -> (Jwks, Vec<JwkError>) {
        Jwks::parse_inner(json, true)
    }

    fn parse_inner(json: &[u8], allow_symmetric: bool) -> (Jwks, Vec<JwkError>) {
        let mut set = Jwks::default();
        let mut errors = Vec::new();
        let doc_error = |reason| JwkError {
            index: None,
            kid: None,
            reason,
        };
        let doc: Value = match serde_json::from_slice(json) {
            Ok(doc) => doc,
            Err(_) => return (set, vec![doc_error("not a JSON document")]),
        };
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return (set, vec![doc_error("no `keys` array")]);
        };
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
            if set.keys.len() >= MAX_KEYS {
                errors.push(JwkError {
                    index: Some(index),
                    kid,
                    reason: "too many keys in the set",
                });
                continue;
            }
            match parse_jwk(entry, allow_symmetric) {
                Ok(Some(key)) => set.keys.push(key),
                Ok(None) => {}
                Err(reason) => errors.push(JwkError {
                    index: Some(index),
                    kid,
                    reason,
                }),
            }
        }
        (set, errors)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Whether some key has this `kid`.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    fn has_family(&self, family: KeyFamily) -> bool {
        self.keys.iter().any(|k| k.family() == family)
    }
}

/// Parses one JWK Set entry: `Ok(None)` for a key that is skipped on purpose
/// (`use: enc`).
fn parse_jwk(entry: &Value, allow_symmetric: bool) -> Result<Option<Jwk>, &'static str> {
    let Some(obj) = entry.as_object() else {
        return Err("not a JSON object");
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("`kid` is not a string"),
    };
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(u)) if u == "enc" => return Ok(None),
        Some(_) => return Err("`use` is neither `sig` nor `enc`"),
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(name)) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            None => return Err("unsupported `alg`"),
        },
        Some(_) => return Err("`alg` is not a string"),
    };
    let kty = obj.get("kty").and_then(Value::as_str);
    let private = match kty {
        Some("RSA") => ["d", "p", "q", "dp", "dq", "qi", "oth"]
            .iter()
            .any(|m| obj.contains_key(*m)),
        Some("EC") | Some("OKP") => obj.contains_key("d"),
        _ => false,
    };
    if private {
        return Err("private key material in a key set");
    }
    match kty {
        Some("EC")
            if !matches!(
                obj.get("crv").and_then(Value::as_str),
                Some("P-256") | Some("P-384")
            ) =>
        {
            return Err("unsupported EC curve (only P-256 and P-384)")
        }
        Some("OKP") if obj.get("crv").and_then(Value::as_str) != Some("Ed25519") => {
            return Err("unsupported OKP curve (only Ed25519)")
        }
        Some("oct") if !allow_symmetric => {
            return Err("symmetric (`oct`) keys are not allowed in this key set")
        }
        Some("RSA") | Some("EC") | Some("OKP") | Some("oct") => {}
        Some(_) => return Err("unsupported `kty`"),
        None => return Err("missing `kty`"),
    }
    let jwk = public_jwk(obj).ok_or("invalid key parameters")?;
    let material = match &jwk {
        JsonWebKey::Rsa { modulus, .. } => {
            let bits = bit_len(modulus);
            if bits < MIN_RSA_BITS {
                return Err("RSA modulus shorter than 2048 bits");
            }
            let key = RsaPublicKey::try_from(&jwk).map_err(|_| "invalid RSA key")?;
            KeyMaterial::Rsa(key)
        }
        JsonWebKey::EllipticCurve { curve, x, y, .. } if curve == "P-384" => {
            KeyMaterial::P384(p384_key(x, y)?)
        }
        JsonWebKey::EllipticCurve { .. } => {
            KeyMaterial::P256(P256Key::try_from(&jwk).map_err(|_| "invalid P-256 key")?)
        }
        JsonWebKey::KeyPair { .. } => {
            KeyMaterial::Ed25519(Ed25519Key::try_from(&jwk).map_err(|_| "invalid Ed25519 key")?)
        }
        JsonWebKey::Symmetric { secret } => {
            if secret.len() < MIN_HMAC_KEY_LEN {
                return Err("symmetric key shorter than 32 bytes");
            }
            KeyMaterial::Hmac(Hs256Key::new(&secret[..]))
        }
        _ => return Err("unsupported `kty`"),
    };
    let key = Jwk { kid, alg, material };
    if let Some(alg) = alg {
        if alg.family() != key.family() {
            return Err("`alg` does not match the key type");
        }
    }
    Ok(Some(key))
}

/// The public key of a JWK Set entry whose `kty` (and `crv`) were checked
/// and which has no private member: the members jwt-compact's `JsonWebKey`
/// deserializer reads, decoded with the same decoder (base64ct's unpadded
/// base64url), other members ignored; `None` when one is missing, not a
/// string or not valid base64url. Built by hand rather than through that
/// deserializer, whose serde code (a flattened, internally tagged enum) was
/// about 20 KB of palisade.wasm for these few fields.
fn public_jwk(obj: &Map<String, Value>) -> Option<JsonWebKey<'static>> {
    let text = |name: &str| obj.get(name).and_then(Value::as_str);
    let bytes =
        |name: &str| text(name).and_then(|b64| base64ct::Base64UrlUnpadded::decode_vec(b64).ok());
    let curve = || text("crv").map(|crv| Cow::Owned(crv.to_owned()));
    Some(match text("kty")? {
        "RSA" => JsonWebKey::Rsa {
            modulus: Cow::Owned(bytes("n")?),
            public_exponent: Cow::Owned(bytes("e")?),
            private_parts: None,
        },
        "EC" => JsonWebKey::EllipticCurve {
            curve: curve()?,
            x: Cow::Owned(bytes("x")?),
            y: Cow::Owned(bytes("y")?),
            secret: None,
        },
        "OKP" => JsonWebKey::KeyPair {
            curve: curve()?,
            x: Cow::Owned(bytes("x")?),
            secret: None,
        },
        "oct" => JsonWebKey::Symmetric {
            secret: SecretBytes::owned(bytes("k")?),
        },
        _ => return None,
    })
}

/// Bit length of a big-endian unsigned integer.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize),
        None => 0,
    }
}

/// What a [`Provider`] requires of a token, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderSettings {
    /// Required `iss`, compared exactly.
    pub issuer: String,
    /// `aud` must contain one of these (any-of). Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Accepted `alg` values; the order does not matter.
    pub algorithms: Vec<Alg>,
    /// Tolerance of every time check, in seconds.
    pub clock_skew_s: u64,
    /// Largest `exp - iat`; when set, `iat` is required.
    pub max_lifetime_s: Option<u64>,
    /// Largest `now - iat`; when set, `iat` is required.
    pub max_age_s: Option<u64>,
    /// Top-level claims that must be present and not `null`.
    pub required_claims: Vec<String>,
}

/// Why [`Provider::new`] refused its settings. `field` is the settings field
/// (`algorithms`, `audiences[1]`, ...), for the configuration to prefix with
/// its own JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ProviderError {}

fn provider_err(field: impl Into<String>, message: impl Into<String>) -> ProviderError {
    ProviderError {
        field: field.into(),
        message: message.into(),
    }
}

/// A token issuer as the request path uses it: checked settings and the
/// current key set.
#[derive(Debug)]
pub struct Provider {
    settings: ProviderSettings,
    keys: Jwks,
}

impl Provider {
    /// Checks the settings once, at configuration time. The key set may be
    /// empty (a remote JWKS not fetched yet), except that `HS256` requires a
    /// symmetric key in it.
    pub fn new(settings: ProviderSettings, keys: Jwks) -> Result<Provider, ProviderError> {
        if settings.issuer.is_empty() {
            return Err(provider_err("issuer", "must not be empty"));
        }
        for (i, aud) in settings.audiences.iter().enumerate() {
            if aud.is_empty() {
                return Err(provider_err(format!("audiences[{i}]"), "must not be empty"));
            }
        }
        if settings.algorithms.is_empty() {
            return Err(provider_err(
                "algorithms",
                "at least one algorithm is required",
            ));
        }
        for (i, alg) in settings.algorithms.iter().enumerate() {
            if settings.algorithms[..i].contains(alg) {
                return Err(provider_err(
                    format!("algorithms[{i}]"),
                    format!("`{alg}` is listed twice"),
                ));
            }
            if *alg == Alg::Hs256 && !keys.has_family(KeyFamily::Hmac) {
                return Err(provider_err(
                    format!("algorithms[{i}]"),
                    "`HS256` requires a symmetric (`oct`) key in the provider's inline key set",
                ));
            }
        }
        if settings.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(provider_err(
                "clock_skew",
                format!("must be at most {MAX_CLOCK_SKEW_S} seconds"),
            ));
        }
        if settings.max_lifetime_s == Some(0) {
            return Err(provider_err("max_lifetime", "must be positive"));
        }
        if settings.max_age_s == Some(0) {
            return Err(provider_err("max_age", "must be positive"));
        }
        for (i, name) in settings.required_claims.iter().enumerate() {
            if name.is_empty() {
                return Err(provider_err(
                    format!("required_claims[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(Provider { settings, keys })
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    pub fn keys(&self) -> &Jwks {
        &self.keys
    }

    /// Replaces the key set (after a JWKS refetch). Tokens cached under the
    /// old set stay cached: call [`TokenCache::clear`] if a key was revoked.
    pub fn set_keys(&mut self, keys: Jwks) {
        self.keys = keys;
    }

    fn allows(&self, alg: Alg) -> bool {
        self.settings.algorithms.contains(&alg)
    }
}

/// A token that passed [`verify`]: the claims the policy reads, and all of
/// them for configured lookups.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub alg: Alg,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub exp: u64,
    pub iat: Option<u64>,
    /// From `scope` (space-separated string) or, without it, `scp` (array of
    /// strings, or space-separated string).
    pub scopes: Vec<String>,
    /// From `roles` (array of strings; other elements ignored).
    pub roles: Vec<String>,
    /// From `amr` (array of strings; other elements ignored).
    pub amr: Vec<String>,
    /// The first second at which this token stops verifying on time grounds
    /// (`exp`, maximum age, both with the skew): how long it may be cached.
    pub valid_until_s: u64,
    /// The whole claims set (a JSON object).
    pub claims: Value,
}

impl VerifiedToken {
    /// The claim at a dot-separated path (`realm_access.roles`,
    /// `org.0.name` with array indices). A top-level claim whose name is the
    /// whole path (`https://example.com/tenant`, names with dots) wins over
    /// the dotted walk.
    pub fn claim_at(&self, path: &str) -> Option<&Value> {
        let obj = self.claims.as_object()?;
        if let Some(v) = obj.get(path) {
            return Some(v);
        }
        let mut cur = &self.claims;
        for seg in path.split('.') {
            cur = match cur {
                Value::Object(map) => map.get(seg)?,
                Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

/// Verifies a compact JWS token (without the `Bearer ` prefix) against a
/// provider at `now_s` (seconds since the Unix epoch).
///
/// Order of checks: size, structure, header, `alg`, claims syntax, key and
/// signature, then time, issuer, audience, lifetime, age and required
/// claims. Only the signature check costs much.
pub fn verify(token: &str, provider: &Provider, now_s: u64) -> Result<VerifiedToken, JwtError> {
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = decode_object(header_b64)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name).ok_or(JwtError::Alg)?,
        _ => return Err(JwtError::Alg),
    };
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(JwtError::Malformed),
    };
    if !provider.allows(alg) {
        return Err(JwtError::Alg);
    }
    let claims = decode_object(payload_b64)?;
    let signature = B64URL.decode(sig_b64).map_err(|_| JwtError::Malformed)?;
    // The signing input is the first two segments as sent, dot included.
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];

    let keys = &provider.keys.keys;
    let verified = match kid {
        Some(kid) => {
            let mut named = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .peekable();
            if named.peek().is_none() {
                return Err(JwtError::UnknownKid);
            }
            let mut usable = named.filter(|k| k.accepts(alg)).peekable();
            if usable.peek().is_none() {
                return Err(JwtError::Alg);
            }
            usable.any(|k| k.verify(alg, signing_input, &signature))
        }
        None => {
            let candidates = keys.iter().filter(|k| k.accepts(alg)).count();
            if candidates == 0 {
                return Err(JwtError::UnknownKid);
            }
            if candidates > MAX_KIDLESS_CANDIDATES {
                return Err(JwtError::KidRequired);
            }
            keys.iter()
                .filter(|k| k.accepts(alg))
                .any(|k| k.verify(alg, signing_input, &signature))
        }
    };
    if !verified {
        return Err(JwtError::Signature);
    }

    check_claims(alg, kid, claims, &provider.settings, now_s)
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64URL.decode(segment).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

/// A NumericDate (RFC 7519 section 2): a non-negative JSON number, fraction
/// truncated. `Err` for any other type.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    match v.as_f64() {
        // 2^53: beyond it floats are not whole seconds anyway.
        Some(f) if f.is_finite() && (0.0..9_007_199_254_740_992.0).contains(&f) => {
            Ok(Some(f as u64))
        }
        _ => Err(JwtError::Malformed),
    }
}

fn check_claims(
    alg: Alg,
    kid: Option<&str>,
    claims: Map<String, Value>,
    settings: &ProviderSettings,
    now_s: u64,
) -> Result<VerifiedToken, JwtError> {
    let skew = settings.clock_skew_s;
    let exp = numeric_date(&claims, "exp")?;
    let nbf = numeric_date(&claims, "nbf")?;
    let iat = numeric_date(&claims, "iat")?;

    let Some(exp) = exp else {
        return Err(JwtError::Expired);
    };
    let mut valid_until_s = exp.saturating_add(skew);
    if now_s >= valid_until_s {
        return Err(JwtError::Expired);
    }
    let horizon = now_s.saturating_add(skew);
    if nbf.is_some_and(|nbf| nbf > horizon) || iat.is_some_and(|iat| iat > horizon) {
        return Err(JwtError::NotYetValid);
    }

    if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(JwtError::Issuer);
    }
    if !settings.audiences.is_empty() {
        let matches = |a: &str| settings.audiences.iter().any(|want| want == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => matches(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(matches),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }

    if settings.max_lifetime_s.is_some() || settings.max_age_s.is_some() {
        let Some(iat) = iat else {
            return Err(JwtError::Claims);
        };
        if let Some(max) = settings.max_lifetime_s {
            if exp < iat || exp - iat > max {
                return Err(JwtError::Lifetime);
            }
        }
        if let Some(max) = settings.max_age_s {
            let limit = iat.saturating_add(max).saturating_add(skew);
            if now_s > limit {
                return Err(JwtError::TooOld);
            }
            // Verify refuses from `limit + 1` on.
            valid_until_s = valid_until_s.min(limit.saturating_add(1));
        }
    }

    // Registered claims must have their types (RFC 7519 section 4.1): a
    // numeric `sub` would forward no user and share one rate-limit key with
    // every other such token. An `iss` of another type never matched above;
    // an `aud` of another type is refused here when no audience check did.
    let string_or_absent = |name: &str| claims.get(name).is_none_or(Value::is_string);
    let aud_typed = match claims.get("aud") {
        None | Some(Value::String(_)) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    if !(string_or_absent("sub") && string_or_absent("jti") && aud_typed) {
        return Err(JwtError::Claims);
    }
    // An empty string is no value: `"sub": ""` names nobody.
    for name in &settings.required_claims {
        if claims
            .get(name)
            .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        {
            return Err(JwtError::Claims);
        }
    }

    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        (None, Some(Value::Array(items))) => strings(items),
        _ => Vec::new(),
    };
    let roles = match claims.get("roles") {
        Some(Value::Array(items)) => strings(items),
        _ => Vec::new(),
    };
    let amr = match claims.get("amr") {
        Some(Value::Array(items)) => strings(items),
        _ => Vec::new(),
    };
    Ok(VerifiedToken {
        alg,
        kid: kid.map(str::to_owned),
        sub,
        exp,
        iat,
        scopes,
        roles,
        amr,
        valid_until_s,
        claims: Value::Object(claims),
    })
}

fn strings(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// A [`TokenCache`] key: a 128-bit SipHash of the token under a secret key
/// (the process seed); the token itself is never stored. Computed once per
/// request, for every provider's cache.
///
/// A keyed PRF rather than SHA-256: a lookup happens on every request and
/// SipHash is several times cheaper in wasm, while finding two tokens with
/// one cache key still needs the secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(u128);

impl TokenKey {
    pub fn new(secret: &[u8; 16], token: &str) -> TokenKey {
        let mut h = SipHasher13::new_with_key(secret);
        h.write(token.as_bytes());
        TokenKey(h.finish128().as_u128())
    }
}

/// Hashes a [`TokenKey`] to its low 64 bits. The key is already a keyed
/// hash, as unpredictable as the map's own SipHash would make it, and
/// hashing it again cost as much as a small stage.
#[derive(Default)]
struct KeyBits(u64);

impl Hasher for KeyBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
}

/// What a [`TokenCache`] keeps: something valid until a time.
pub trait Expiring {
    /// The first second at which it is no longer valid.
    fn valid_until_s(&self) -> u64;
}

impl Expiring for VerifiedToken {
    fn valid_until_s(&self) -> u64 {
        self.valid_until_s
    }
}

struct CacheEntry<T> {
    value: T,
    seq: u64,
}

/// Verified tokens of one [`Provider`] (or what a stage derives from them),
/// per worker, by [`TokenKey`], each kept until its
/// [`Expiring::valid_until_s`].
///
/// Bounded by `capacity` entries. When full, an insertion first drops the
/// expired entries (at most one sweep per second, so that a cache full of
/// live tokens costs O(1) amortized per insertion), then, if still full, the
/// oldest insertion. Use one cache per provider: a token verified for one
/// issuer must not be found when checking another.
pub struct TokenCache<T = VerifiedToken> {
    capacity: usize,
    map: HashMap<TokenKey, CacheEntry<T>, BuildHasherDefault<KeyBits>>,
    /// Insertion order, with stale entries (replaced or removed) skipped by
    /// their sequence number.
    order: VecDeque<(TokenKey, u64)>,
    next_seq: u64,
    last_sweep_s: Option<u64>,
}

impl<T> fmt::Debug for TokenCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl<T: Expiring> TokenCache<T> {
    /// A cache of at most `capacity` tokens (0 caches nothing).
    pub fn new(capacity: usize) -> TokenCache<T> {
        TokenCache {
            capacity,
            map: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            last_sweep_s: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every entry (after a key revocation).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// What is cached for a token, if it is still valid at `now_s`.
    pub fn get(&mut self, key: TokenKey, now_s: u64) -> Option<&T> {
        if self
            .map
            .get(&key)
            .is_some_and(|e| e.value.valid_until_s() <= now_s)
        {
            self.map.remove(&key);
        }
        self.map.get(&key).map(|e| &e.value)
    }

    /// Remembers what a token (the string given to [`verify`]) verified to.
    /// An already expired one is not stored.
    pub fn insert(&mut self, key: TokenKey, value: T, now_s: u64) {
        if self.capacity == 0 || value.valid_until_s() <= now_s {
            return;
        }
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.make_room(now_s);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.map.insert(key, CacheEntry { value, seq });
        self.order.push_back((key, seq));
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    fn make_room(&mut self, now_s: u64) {
        if self.last_sweep_s != Some(now_s) {
            self.last_sweep_s = Some(now_s);
            self.map.retain(|_, e| e.value.valid_until_s() > now_s);
        }
        while self.map.len() >= self.capacity {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test helpers mint from fixed, known-good data
mod tests {
    use super::*;
    use jwt_compact::alg::{RsaPrivateKey, SigningKey as _};
    use serde_json::json;

    // RFC 7515 appendix A: the three examples share the payload and `exp`.
    const A_EXP: u64 = 1_300_819_380;
    const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
        dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const A1_K: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const A2_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
        cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5\
        jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1\
        L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYE\
        UipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4\
        qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL\
        -bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9k\
        G4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const A2_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTe\
        XZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3M\
        kqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5\
        Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
    const A2_P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3Kh\
        ooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
    const A2_Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7\
        zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
    const A3_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
        DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const A3_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
    // RFC 7517 appendix A.1: another RSA public key (for "wrong key" tests).
    const OTHER_RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK\
        7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4Qy\
        Q5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt\
        -bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    // RFC 8037 appendix A.1 (key) and A.4 (JWS of a non-JSON payload).
    const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const A4_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
        hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    // ES384 (RFC 7518 section 3.4) by an independent implementation: PyJWT
    // 2.15.1 on `cryptography` 50.0.2, a fresh P-384 key, the claims of
    // `claims()` (so valid at `NOW`), header `{"alg":"ES384","kid":"ec384",
    // "typ":"JWT"}`; PyJWT's own `jwt.decode` with the public JWK below
    // accepted it.
    const ES384_TOKEN: &str = "eyJhbGciOiJFUzM4NCIsImtpZCI6ImVjMzg0IiwidHlwIjoiSldUIn0.\
        eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwic3ViIjoidXNlci0xIiwiaWF0IjoxNjk5\
        OTk5OTkwLCJleHAiOjE3MDAwMDAzMDAsInNjb3BlIjoicmVhZCB3cml0ZSIsInJvbGVzIjpbImFkbWluIiw3LCJvcHMi\
        XSwiYW1yIjpbInB3ZCIsIm1mYSJdLCJvcmciOnsiaWQiOiJvLTEiLCJ0ZWFtcyI6W3sibmFtZSI6ImJsdWUifV19fQ.\
        -zAtjG8DUpfcuw4rjW6QKDXbIzzrwrWUSE5Zuiuieo-FWn97zrOF03eZKCwc_ujHLPyqrci4IHsdhrOdo7-EyaO88lTJ\
        XFIBs6KCSGHyxf_Pz3RrGQvpnjJP6f-9vQYB";
    const ES384_X: &str = "UVPhSccFZBJtpMj1-KWR4Wocom0du1Aas8_9POTlnTIiYPt3I3qodrWTfoEQTJZA";
    const ES384_Y: &str = "7fSuE4QVtPGtso-j-MPAGLjv_dEvVy8DnXwAHc7Gmj6r8tDJzqd92OCxx33Yzn_W";

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://issuer.example";

    fn b64(bytes: &[u8]) -> String {
        B64URL.encode(bytes)
    }

    fn jwk_json(v: Value) -> JsonWebKey<'static> {
        serde_json::from_value(v).unwrap()
    }

    fn hs_key() -> Hs256Key {
        Hs256Key::new(B64URL.decode(A1_K).unwrap())
    }

    fn rsa_signer() -> RsaPrivateKey {
        let jwk = jwk_json(json!({
            "kty": "RSA", "n": A2_N, "e": "AQAB", "d": A2_D, "p": A2_P, "q": A2_Q,
        }));
        RsaPrivateKey::try_from(&jwk).unwrap()
    }

    fn es_signer() -> <Es256 as Algorithm>::SigningKey {
        let jwk = jwk_json(json!({
            "kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "d": A3_D,
        }));
        <Es256 as Algorithm>::SigningKey::try_from(&jwk).unwrap()
    }

    fn ed_signer() -> <Ed25519 as Algorithm>::SigningKey {
        let jwk = jwk_json(json!({ "kty": "OKP", "crv": "Ed25519", "x": ED_X, "d": ED_D }));
        <Ed25519 as Algorithm>::SigningKey::try_from(&jwk).unwrap()
    }

    /// An unrelated P-256 key pair, from a fixed scalar.
    fn other_es_signer() -> <Es256 as Algorithm>::SigningKey {
        <Es256 as Algorithm>::SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn ec_public_jwk(key: &<Es256 as Algorithm>::SigningKey, kid: &str) -> Value {
        let public = key.to_verifying_key();
        let mut v = serde_json::to_value(JsonWebKey::from(&public)).unwrap();
        v["kid"] = json!(kid);
        v
    }

    fn mint_raw<A: Algorithm>(alg: &A, key: &A::SigningKey, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = alg.sign(key, input.as_bytes());
        format!("{input}.{}", b64(&sig.as_bytes()))
    }

    fn mint<A: Algorithm>(alg: &A, key: &A::SigningKey, header: Value, claims: Value) -> String {
        mint_raw(alg, key, &header.to_string(), &claims.to_string())
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "aud": "api",
            "sub": "user-1",
            "iat": NOW - 10,
            "exp": NOW + 300,
            "scope": "read write",
            "roles": ["admin", 7, "ops"],
            "amr": ["pwd", "mfa"],
            "org": {"id": "o-1", "teams": [{"name": "blue"}]},
        })
    }

    fn key_set() -> Jwks {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "n": A2_N, "e": "AQAB", "use": "sig"},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": A3_X, "y": A3_Y},
            {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": ED_X},
            {"kty": "oct", "kid": "hs1", "k": A1_K},
            {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": ES384_X, "y": ES384_Y},
        ]});
        let (set, errors) = Jwks::parse_with_symmetric(doc.to_string().as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(set.len(), 5);
        set
    }

    fn settings(algorithms: &[Alg]) -> ProviderSettings {
        ProviderSettings {
            issuer: ISS.to_owned(),
            audiences: vec!["api".to_owned(), "other".to_owned()],
            algorithms: algorithms.to_vec(),
            clock_skew_s: 30,
            max_lifetime_s: Some(3600),
            max_age_s: Some(3600),
            required_claims: vec!["sub".to_owned()],
        }
    }

    fn provider(algorithms: &[Alg]) -> Provider {
        Provider::new(settings(algorithms), key_set()).unwrap()
    }

    fn all_algs() -> Provider {
        provider(&Alg::ALL)
    }

    fn rfc_provider(alg: Alg, jwks: Value, symmetric: bool) -> Provider {
        let bytes = jwks.to_string();
        let (set, errors) = if symmetric {
            Jwks::parse_with_symmetric(bytes.as_bytes())
        } else {
            Jwks::parse(bytes.as_bytes())
        };
        assert!(errors.is_empty(), "{errors:?}");
        let settings = ProviderSettings {
            issuer: "joe".to_owned(),
            algorithms: vec![alg],
            ..ProviderSettings::default()
        };
        Provider::new(settings, set).unwrap()
    }

    fn check_rfc7515_vector(token: &str, provider: &Provider, alg: Alg) {
        let ok = verify(token, provider, A_EXP - 1).unwrap();
        assert_eq!(ok.alg, alg);
        assert_eq!(ok.exp, A_EXP);
        assert_eq!(ok.claim_at("iss"), Some(&json!("joe")));
        // A claim name with dots is found whole.
        assert_eq!(
            ok.claim_at("http://example.com/is_root"),
            Some(&json!(true))
        );
        assert_eq!(verify(token, provider, A_EXP), Err(JwtError::Expired));
        assert_eq!(verify(token, provider, NOW), Err(JwtError::Expired));
    }

    /// `public_jwk` reads what jwt-compact's `JsonWebKey` deserializer read
    /// (for entries that reach it: `kty`/`crv` checked, no private member):
    /// same key or same refusal, padded, non-canonical and wrongly typed
    /// members included.
    #[test]
    fn public_jwk_matches_jwt_compacts_deserializer() {
        let entries = [
            json!({"kty": "RSA", "n": A2_N, "e": "AQAB", "kid": "k", "alg": "RS256"}),
            json!({"kty": "RSA", "n": A2_N, "e": "AQAB", "x5c": ["ignored"]}),
            json!({"kty": "RSA", "n": A2_N}),
            json!({"kty": "RSA", "n": A2_N, "e": 65537}),
            json!({"kty": "RSA", "n": A2_N, "e": "AQAB="}),
            json!({"kty": "RSA", "n": A2_N, "e": "AQAB+"}),
            json!({"kty": "RSA", "n": A2_N, "e": "AQAC"}),
            json!({"kty": "RSA", "n": A2_N, "e": "AQ"}),
            json!({"kty": "RSA", "n": A2_N, "e": "AR"}),
            json!({"kty": "RSA", "n": A2_N, "e": ""}),
            json!({"kty": "RSA", "n": null, "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y}),
            json!({"kty": "EC", "crv": "P-256", "x": A3_X}),
            json!({"kty": "EC", "crv": "P-256", "x": A3_X, "y": [1, 2]}),
            json!({"kty": "EC", "crv": "P-384", "x": A3_X, "y": "??"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            json!({"kty": "OKP", "crv": "Ed25519"}),
            json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}),
            json!({"kty": "oct", "k": {"env": "X"}}),
            json!({"kty": "oct"}),
        ];
        for (i, entry) in entries.iter().enumerate() {
            let obj = entry.as_object().unwrap();
            let expected = serde_json::from_value::<JsonWebKey<'_>>(entry.clone()).ok();
            assert!(public_jwk(obj) == expected, "entry {i}");
        }
    }

    #[test]
    fn rfc7515_a1_hs256() {
        let p = rfc_provider(
            Alg::Hs256,
            json!({"keys": [{"kty": "oct", "k": A1_K}]}),
            true,
        );
        check_rfc7515_vector(A1_TOKEN, &p, Alg::Hs256);
    }

    #[test]
    fn rfc7515_a2_rs256() {
        let jwks = json!({"keys": [{"kty": "RSA", "n": A2_N, "e": "AQAB"}]});
        let p = rfc_provider(Alg::Rs256, jwks, false);
        check_rfc7515_vector(A2_TOKEN, &p, Alg::Rs256);
        // RS256 is deterministic: the RFC's private key reproduces the vector.
        let header = B64URL.decode("eyJhbGciOiJSUzI1NiJ9").unwrap();
        let payload = B64URL.decode(A2_TOKEN.split('.').nth(1).unwrap()).unwrap();
        let again = mint_raw(
            &Rsa::rs256(),
            &rsa_signer(),
            std::str::from_utf8(&header).unwrap(),
            std::str::from_utf8(&payload).unwrap(),
        );
        assert_eq!(again, A2_TOKEN);
    }

    #[test]
    fn rfc7515_a3_es256() {
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y}]});
        let p = rfc_provider(Alg::Es256, jwks, false);
        check_rfc7515_vector(A3_TOKEN, &p, Alg::Es256);
    }

    #[test]
    fn rfc8037_a4_ed25519() {
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X}]});
        let p = rfc_provider(Alg::EdDsa, jwks, false);
        // The example signs a text payload, not a claims set: the signature
        // checks out at the key level, and `verify` refuses it as no JWT.
        let (input, sig) = A4_TOKEN.rsplit_once('.').unwrap();
        let sig = B64URL.decode(sig).unwrap();
        let key = &p.keys().keys()[0];
        assert!(key.verify(Alg::EdDsa, input.as_bytes(), &sig));
        assert!(!key.verify(Alg::EdDsa, b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZQ", &sig));
        assert_eq!(verify(A4_TOKEN, &p, NOW), Err(JwtError::Malformed));
        // `jwt-compact` signs Ed25519 with added noise (hedged signatures), so
        // the vector is not reproduced byte for byte; a fresh signature by
        // the RFC's private key verifies under its public key.
        let again = mint_raw(
            &Ed25519,
            &ed_signer(),
            r#"{"alg":"EdDSA"}"#,
            "Example of Ed25519 signing",
        );
        let (input2, sig2) = again.rsplit_once('.').unwrap();
        assert_eq!(input2, input);
        assert!(key.verify(Alg::EdDsa, input2.as_bytes(), &B64URL.decode(sig2).unwrap()));
    }

    /// A P-384 key pair from a fixed scalar, for the tokens this crate signs
    /// itself (`ES384_TOKEN` is the independent one).
    fn other_p384_signer() -> p384::ecdsa::SigningKey {
        p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap()
    }

    fn p384_public_jwk(key: &p384::ecdsa::SigningKey, kid: &str) -> Value {
        let point = key.verifying_key().to_sec1_point(false);
        json!({
            "kty": "EC", "kid": kid, "crv": "P-384",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        })
    }

    fn mint_es384(key: &p384::ecdsa::SigningKey, header: Value, claims: Value) -> String {
        use p384::ecdsa::signature::Signer as _;
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig: p384::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    /// The DER `ECDSA-Sig-Value` form of a raw `r || s` signature, which
    /// some libraries emit instead of the JWS form.
    fn der_signature(raw: &[u8]) -> Vec<u8> {
        let int = |bytes: &[u8]| {
            let start = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            let mut v = bytes[start..].to_vec();
            if v[0] & 0x80 != 0 {
                v.insert(0, 0);
            }
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let (r, s) = raw.split_at(raw.len() / 2);
        let body = [int(r), int(s)].concat();
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        der
    }

    #[test]
    fn es384_token_from_pyjwt_verifies() {
        // Alone in its set, as an identity provider publishes it.
        let jwks = json!({"keys": [{
            "kty": "EC", "kid": "ec384", "crv": "P-384", "x": ES384_X, "y": ES384_Y,
            "alg": "ES384", "use": "sig",
        }]});
        let (set, errors) = Jwks::parse(jwks.to_string().as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(set.keys()[0].family(), KeyFamily::P384);
        assert_eq!(set.keys()[0].alg(), Some(Alg::Es384));
        let p = Provider::new(settings(&[Alg::Es384]), set).unwrap();
        let v = verify(ES384_TOKEN, &p, NOW).unwrap();
        assert_eq!((v.alg, v.kid.as_deref()), (Alg::Es384, Some("ec384")));
        assert_eq!(v.sub.as_deref(), Some("user-1"));
        assert_eq!(v.scopes, ["read", "write"]);
        assert_eq!(v.claim_at("org.teams.0.name"), Some(&json!("blue")));
        assert_eq!(v.valid_until_s, NOW + 300 + 30);
        // The time checks still apply.
        assert_eq!(verify(ES384_TOKEN, &p, NOW + 330), Err(JwtError::Expired));
        // Among keys of every family too; refused where ES384 is not listed.
        assert!(verify(ES384_TOKEN, &all_algs(), NOW).is_ok());
        let es256_only = provider(&[Alg::Es256]);
        assert_eq!(verify(ES384_TOKEN, &es256_only, NOW), Err(JwtError::Alg));

        let parts: Vec<&str> = ES384_TOKEN.split('.').collect();
        // A tampered payload.
        let mut evil = claims();
        evil["sub"] = json!("admin");
        let evil = b64(evil.to_string().as_bytes());
        let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(verify(&forged, &p, NOW), Err(JwtError::Signature));
        // The same signature in DER form is not a JWS signature (RFC 7518
        // section 3.4: `r || s`, 96 bytes).
        let raw = B64URL.decode(parts[2]).unwrap();
        assert_eq!(raw.len(), 96);
        let der = format!("{}.{}.{}", parts[0], parts[1], b64(&der_signature(&raw)));
        assert_eq!(verify(&der, &p, NOW), Err(JwtError::Signature));
        // `r` and `s` swapped.
        let swapped = [&raw[48..], &raw[..48]].concat();
        let swapped = format!("{}.{}.{}", parts[0], parts[1], b64(&swapped));
        assert_eq!(verify(&swapped, &p, NOW), Err(JwtError::Signature));
        // Zero `r` and `s`, and values of all ones (over the group order).
        for bad in [[0u8; 96], [0xff; 96]] {
            let t = format!("{}.{}.{}", parts[0], parts[1], b64(&bad));
            assert_eq!(verify(&t, &p, NOW), Err(JwtError::Signature));
        }
        // Another P-384 key's signature under the same kid.
        let other = mint_es384(
            &other_p384_signer(),
            json!({"alg": "ES384", "kid": "ec384"}),
            claims(),
        );
        assert_eq!(verify(&other, &p, NOW), Err(JwtError::Signature));
        // Without kid, every P-384 key is tried, and only those.
        let doc = json!({"keys": [
            {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": A3_X, "y": A3_Y},
            p384_public_jwk(&other_p384_signer(), "other"),
        ]});
        let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        let p = Provider::new(settings(&[Alg::Es256, Alg::Es384]), set).unwrap();
        let no_kid = mint_es384(&other_p384_signer(), json!({"alg": "ES384"}), claims());
        let v = verify(&no_kid, &p, NOW).unwrap();
        assert_eq!((v.alg, v.kid), (Alg::Es384, None));
        assert!(verify(ES384_TOKEN, &p, NOW).is_ok());
    }

    #[test]
    fn p256_and_p384_keys_never_cross() {
        let parse = |doc: Value| {
            let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
            assert!(errors.is_empty(), "{errors:?}");
            Provider::new(settings(&[Alg::Es256, Alg::Es384]), set).unwrap()
        };
        // A P-384 key set cannot verify ES256, even under the token's kid.
        let p384_set = parse(json!({"keys": [
            {"kty": "EC", "kid": "ec1", "crv": "P-384", "x": ES384_X, "y": ES384_Y},
        ]}));
        let es256 = mint(
            &Es256,
            &es_signer(),
            json!({"alg": "ES256", "kid": "ec1"}),
            claims(),
        );
        assert_eq!(verify(&es256, &p384_set, NOW), Err(JwtError::Alg));
        let es256_no_kid = mint(&Es256, &es_signer(), json!({"alg": "ES256"}), claims());
        assert_eq!(
            verify(&es256_no_kid, &p384_set, NOW),
            Err(JwtError::UnknownKid)
        );
        // A P-256 key set cannot verify the ES384 token, even under its kid.
        let p256_set = parse(json!({"keys": [
            {"kty": "EC", "kid": "ec384", "crv": "P-256", "x": A3_X, "y": A3_Y},
        ]}));
        assert_eq!(verify(ES384_TOKEN, &p256_set, NOW), Err(JwtError::Alg));
        let (_, rest) = ES384_TOKEN.split_once('.').unwrap();
        let es384_no_kid = format!("{}.{rest}", b64(br#"{"alg":"ES384"}"#));
        assert_eq!(
            verify(&es384_no_kid, &p256_set, NOW),
            Err(JwtError::UnknownKid)
        );
        // The ES384 token relabelled ES256 (its signature no longer covers
        // the header, and it is 96 bytes, not 64): the P-384 key named by its
        // kid is not for ES256.
        let relabelled = format!("{}.{rest}", b64(br#"{"alg":"ES256","kid":"ec384"}"#));
        let both = parse(json!({"keys": [
            {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": A3_X, "y": A3_Y},
        ]}));
        assert_eq!(verify(&relabelled, &both, NOW), Err(JwtError::Alg));
        assert!(verify(ES384_TOKEN, &both, NOW).is_ok());
        assert!(verify(&es256, &both, NOW).is_ok());
        // At the key level, whatever the signature bytes.
        let k384 = &both.keys().keys()[0];
        let k256 = &both.keys().keys()[1];
        assert_eq!(
            (k384.family(), k256.family()),
            (KeyFamily::P384, KeyFamily::P256)
        );
        assert!(!k384.accepts(Alg::Es256) && !k256.accepts(Alg::Es384));
        let (input, sig) = ES384_TOKEN.rsplit_once('.').unwrap();
        let sig = B64URL.decode(sig).unwrap();
        assert!(k384.verify(Alg::Es384, input.as_bytes(), &sig));
        assert!(!k384.verify(Alg::Es256, input.as_bytes(), &sig));
        assert!(!k256.verify(Alg::Es384, input.as_bytes(), &sig));
        let (input, sig) = es256.rsplit_once('.').unwrap();
        let sig = B64URL.decode(sig).unwrap();
        assert!(k256.verify(Alg::Es256, input.as_bytes(), &sig));
        assert!(!k384.verify(Alg::Es256, input.as_bytes(), &sig));
        assert!(!k384.verify(Alg::Es384, input.as_bytes(), &sig));
        // A key's `alg` must fit its curve.
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-384", "alg": "ES256", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "crv": "P-256", "alg": "ES384", "x": A3_X, "y": A3_Y},
        ]});
        let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
        assert!(set.is_empty());
        let reasons: Vec<_> = errors.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["`alg` does not match the key type"; 2]);
    }

    #[test]
    fn malformed_p384_jwk_entries_are_reported() {
        let x = B64URL.decode(ES384_X).unwrap();
        let short_x = b64(&x[..47]);
        let long_y = b64(&[B64URL.decode(ES384_Y).unwrap(), vec![0]].concat());
        let over_p = b64(&[0xff; 48]);
        let d = b64(&[1u8; 48]);
        let doc = json!({"keys": [
            {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "short-x", "crv": "P-384", "x": short_x, "y": ES384_Y},
            {"kty": "EC", "kid": "long-y", "crv": "P-384", "x": ES384_X, "y": long_y},
            {"kty": "EC", "kid": "p256-size", "crv": "P-384", "x": A3_X, "y": A3_Y},
            {"kty": "EC", "kid": "off-curve", "crv": "P-384", "x": ES384_X, "y": ES384_X},
            {"kty": "EC", "kid": "over-p", "crv": "P-384", "x": over_p, "y": ES384_Y},
            {"kty": "EC", "kid": "no-y", "crv": "P-384", "x": ES384_X},
            {"kty": "EC", "kid": "bad-b64", "crv": "P-384", "x": "!!!", "y": ES384_Y},
            {"kty": "EC", "kid": "priv", "crv": "P-384", "x": ES384_X, "y": ES384_Y, "d": d},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "case", "crv": "p-384", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "no-crv", "x": ES384_X, "y": ES384_Y},
            {"kty": "EC", "kid": "good-alg", "crv": "P-384", "alg": "ES384",
             "x": ES384_X, "y": ES384_Y, "use": "sig"},
        ]});
        let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
        let kids: Vec<_> = set.keys().iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["ec384", "good-alg"]);
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.index.unwrap(), e.kid.as_deref().unwrap(), e.reason))
            .collect();
        let size = "invalid P-384 key (`x` and `y` must be 48 bytes)";
        let point = "invalid P-384 key (not a point of the curve)";
        let curve = "unsupported EC curve (only P-256 and P-384)";
        assert_eq!(
            found,
            [
                (1, "short-x", size),
                (2, "long-y", size),
                (3, "p256-size", size),
                (4, "off-curve", point),
                (5, "over-p", point),
                (6, "no-y", "invalid key parameters"),
                (7, "bad-b64", "invalid key parameters"),
                (8, "priv", "private key material in a key set"),
                (9, "p521", curve),
                (10, "case", curve),
                (11, "no-crv", curve),
            ]
        );
        for e in &errors {
            let shown = e.to_string();
            for material in [ES384_X, ES384_Y, d.as_str(), short_x.as_str()] {
                assert!(!shown.contains(material), "{shown}");
            }
        }
        // The good entries still verify.
        let p = Provider::new(settings(&[Alg::Es384]), set).unwrap();
        assert!(verify(ES384_TOKEN, &p, NOW).is_ok());
    }

    #[test]
    fn good_tokens_of_every_family_verify_and_expose_claims() {
        let p = all_algs();
        let tokens = [
            mint(
                &Hs256,
                &hs_key(),
                json!({"alg": "HS256", "kid": "hs1"}),
                claims(),
            ),
            mint(
                &Rsa::rs256(),
                &rsa_signer(),
                json!({"alg": "RS256", "kid": "rsa1"}),
                claims(),
            ),
            mint(
                &Rsa::ps384(),
                &rsa_signer(),
                json!({"alg": "PS384", "kid": "rsa1"}),
                claims(),
            ),
            mint(
                &Es256,
                &es_signer(),
                json!({"alg": "ES256", "kid": "ec1"}),
                claims(),
            ),
            mint(
                &Ed25519,
                &ed_signer(),
                json!({"alg": "EdDSA", "kid": "ed1"}),
                claims(),
            ),
            // No kid: the keys of the family are tried.
            mint(&Ed25519, &ed_signer(), json!({"alg": "EdDSA"}), claims()),
            ES384_TOKEN.to_owned(),
        ];
        for token in &tokens {
            let v = verify(token, &p, NOW).unwrap();
            assert_eq!(v.sub.as_deref(), Some("user-1"));
            assert_eq!(v.exp, NOW + 300);
            assert_eq!(v.iat, Some(NOW - 10));
            assert_eq!(v.scopes, ["read", "write"]);
            assert_eq!(v.roles, ["admin", "ops"]);
            assert_eq!(v.amr, ["pwd", "mfa"]);
            assert_eq!(v.claim_at("org.id"), Some(&json!("o-1")));
            assert_eq!(v.claim_at("org.teams.0.name"), Some(&json!("blue")));
            assert_eq!(v.claim_at("org.teams.1.name"), None);
            assert_eq!(v.claim_at("org.nope"), None);
            assert_eq!(v.claim_at("sub.x"), None);
            // exp + skew is earlier than iat + max_age + skew here.
            assert_eq!(v.valid_until_s, NOW + 300 + 30);
        }
        let v = verify(&tokens[5], &p, NOW).unwrap();
        assert_eq!((v.alg, v.kid), (Alg::EdDsa, None));
    }

    #[test]
    fn scopes_from_scp_and_audience_arrays() {
        let p = all_algs();
        let sign = |c: Value| mint(&Hs256, &hs_key(), json!({"alg": "HS256"}), c);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["a", "b", 3]);
        c["aud"] = json!(["x", "other"]);
        let v = verify(&sign(c.clone()), &p, NOW).unwrap();
        assert_eq!(v.scopes, ["a", "b"]);
        c["scp"] = json!("c  d");
        assert_eq!(
            verify(&sign(c.clone()), &p, NOW).unwrap().scopes,
            ["c", "d"]
        );
        c["aud"] = json!(["x", "y"]);
        assert_eq!(verify(&sign(c.clone()), &p, NOW), Err(JwtError::Audience));
        c["aud"] = json!(42);
        assert_eq!(verify(&sign(c.clone()), &p, NOW), Err(JwtError::Audience));
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(verify(&sign(c), &p, NOW), Err(JwtError::Audience));
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused() {
        let p = all_algs();
        let payload = b64(claims().to_string().as_bytes());
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"none","kid":"hs1"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"ES512"}"#,
            r#"{"alg":""}"#,
            r#"{"alg":null}"#,
            r#"{"kid":"hs1"}"#,
        ] {
            let h = b64(header.as_bytes());
            for sig in ["", "AAAA"] {
                let token = format!("{h}.{payload}.{sig}");
                assert_eq!(verify(&token, &p, NOW), Err(JwtError::Alg), "{header}");
            }
        }
        assert_eq!(
            verify(&format!("eyJhbGciOiJub25lIn0.{payload}."), &p, NOW),
            Err(JwtError::Alg)
        );
        // Signed correctly, but not with an algorithm this provider allows.
        let rs_only = provider(&[Alg::Rs256]);
        let es = mint(
            &Es256,
            &es_signer(),
            json!({"alg": "ES256", "kid": "ec1"}),
            claims(),
        );
        assert_eq!(verify(&es, &rs_only, NOW), Err(JwtError::Alg));
        let ps = mint(
            &Rsa::ps256(),
            &rsa_signer(),
            json!({"alg": "PS256"}),
            claims(),
        );
        assert_eq!(verify(&ps, &rs_only, NOW), Err(JwtError::Alg));
    }

    /// PKCS#1 `RSAPublicKey` DER of the A.2 key, and its PEM.
    fn rsa_public_der_and_pem() -> (Vec<u8>, String) {
        let n = B64URL.decode(A2_N).unwrap();
        assert_eq!(n.len(), 256);
        let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00];
        der.extend_from_slice(&n);
        der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let body = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
            lines.join("\n")
        );
        (der, pem)
    }

    #[test]
    fn rs_hs_confusion_is_impossible() {
        let (der, pem) = rsa_public_der_and_pem();
        let n = B64URL.decode(A2_N).unwrap();
        let jwk_text = json!({"kty": "RSA", "n": A2_N, "e": "AQAB"}).to_string();
        let secrets: [&[u8]; 4] = [&der, pem.as_bytes(), &n, jwk_text.as_bytes()];
        // A provider of RSA tokens only.
        let rs_only = provider(&[Alg::Rs256]);
        // A provider that also takes HS256 (it has an oct key).
        let mixed = provider(&[Alg::Rs256, Alg::Hs256]);
        for secret in secrets {
            let key = Hs256Key::new(secret);
            for header in [
                json!({"alg": "HS256", "kid": "rsa1"}),
                json!({"alg": "HS256"}),
            ] {
                let token = mint(&Hs256, &key, header.clone(), claims());
                assert_eq!(verify(&token, &rs_only, NOW), Err(JwtError::Alg));
                let expected = if header.get("kid").is_some() {
                    JwtError::Alg // the kid names an RSA key: not for HS256
                } else {
                    JwtError::Signature // only the oct key is tried
                };
                assert_eq!(verify(&token, &mixed, NOW), Err(expected));
            }
        }
        // The other way round: an oct key never verifies RS256.
        let rs = mint(
            &Rsa::rs256(),
            &rsa_signer(),
            json!({"alg": "RS256", "kid": "hs1"}),
            claims(),
        );
        assert_eq!(verify(&rs, &mixed, NOW), Err(JwtError::Alg));
        // And at the key level, whatever the bytes.
        let oct = &mixed.keys().keys()[3];
        assert_eq!(oct.family(), KeyFamily::Hmac);
        assert!(!oct.accepts(Alg::Rs256));
        let rsa = &mixed.keys().keys()[0];
        assert!(!rsa.accepts(Alg::Hs256));
        let (input, sig) = rs.rsplit_once('.').unwrap();
        assert!(!oct.verify(Alg::Rs256, input.as_bytes(), &B64URL.decode(sig).unwrap()));
    }

    #[test]
    fn key_alg_restricts_the_key() {
        let doc =
            json!({"keys": [{"kty": "RSA", "kid": "r", "alg": "RS256", "n": A2_N, "e": "AQAB"}]});
        let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
        assert!(errors.is_empty());
        let p = Provider::new(settings(&[Alg::Rs256, Alg::Ps256]), set).unwrap();
        let ps = mint(
            &Rsa::ps256(),
            &rsa_signer(),
            json!({"alg": "PS256", "kid": "r"}),
            claims(),
        );
        assert_eq!(verify(&ps, &p, NOW), Err(JwtError::Alg));
        let ps = mint(
            &Rsa::ps256(),
            &rsa_signer(),
            json!({"alg": "PS256"}),
            claims(),
        );
        assert_eq!(verify(&ps, &p, NOW), Err(JwtError::UnknownKid));
    }

    #[test]
    fn unknown_kid_is_its_own_error() {
        let p = all_algs();
        let t = mint(
            &Es256,
            &es_signer(),
            json!({"alg": "ES256", "kid": "ec2"}),
            claims(),
        );
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::UnknownKid));
        // No kid, and no key of the family.
        let doc = json!({"keys": [{"kty": "RSA", "kid": "rsa1", "n": A2_N, "e": "AQAB"}]});
        let (set, _) = Jwks::parse(doc.to_string().as_bytes());
        let p = Provider::new(settings(&[Alg::Rs256, Alg::Es256]), set).unwrap();
        let t = mint(&Es256, &es_signer(), json!({"alg": "ES256"}), claims());
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::UnknownKid));
        // An empty set (remote JWKS not fetched yet).
        let p = Provider::new(settings(&[Alg::Es256]), Jwks::default()).unwrap();
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::UnknownKid));
        // After a refetch brings the key in, the same token verifies.
        let mut p = p;
        let doc = json!({"keys": [ec_public_jwk(&es_signer(), "new")]});
        p.set_keys(Jwks::parse(doc.to_string().as_bytes()).0);
        assert!(verify(&t, &p, NOW).is_ok());
    }

    #[test]
    fn a_key_from_another_set_does_not_verify() {
        // Same kid, other key material, for each family.
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "n": OTHER_RSA_N, "e": "AQAB"},
            ec_public_jwk(&other_es_signer(), "ec1"),
            {"kty": "oct", "kid": "hs1", "k": b64(&[9u8; 32])},
        ]});
        let (set, errors) = Jwks::parse_with_symmetric(doc.to_string().as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        let p = Provider::new(settings(&Alg::ALL), set).unwrap();
        for token in [
            mint(
                &Rsa::rs256(),
                &rsa_signer(),
                json!({"alg": "RS256", "kid": "rsa1"}),
                claims(),
            ),
            mint(
                &Es256,
                &es_signer(),
                json!({"alg": "ES256", "kid": "ec1"}),
                claims(),
            ),
            mint(&Es256, &es_signer(), json!({"alg": "ES256"}), claims()),
            mint(
                &Hs256,
                &hs_key(),
                json!({"alg": "HS256", "kid": "hs1"}),
                claims(),
            ),
        ] {
            assert_eq!(verify(&token, &p, NOW), Err(JwtError::Signature));
        }
    }

    #[test]
    fn without_kid_every_key_of_the_family_is_tried() {
        let doc = json!({"keys": [
            ec_public_jwk(&other_es_signer(), "a"),
            {"kty": "EC", "kid": "b", "crv": "P-256", "x": A3_X, "y": A3_Y},
        ]});
        let (set, _) = Jwks::parse(doc.to_string().as_bytes());
        let p = Provider::new(settings(&[Alg::Es256]), set).unwrap();
        for signer in [es_signer(), other_es_signer()] {
            let t = mint(&Es256, &signer, json!({"alg": "ES256"}), claims());
            assert!(verify(&t, &p, NOW).is_ok());
        }
        let third = <Es256 as Algorithm>::SigningKey::from_slice(&[8u8; 32]).unwrap();
        let t = mint(&Es256, &third, json!({"alg": "ES256"}), claims());
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::Signature));
        // With a kid, only that key is tried.
        let t = mint(
            &Es256,
            &es_signer(),
            json!({"alg": "ES256", "kid": "a"}),
            claims(),
        );
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::Signature));
    }

    #[test]
    fn without_kid_more_candidates_than_the_bound_are_refused() {
        // Issue 11: a kid-less token was tried against every key (up to 64).
        let third = <Es256 as Algorithm>::SigningKey::from_slice(&[8u8; 32]).unwrap();
        let doc = json!({"keys": [
            ec_public_jwk(&other_es_signer(), "a"),
            {"kty": "EC", "kid": "b", "crv": "P-256", "x": A3_X, "y": A3_Y},
            ec_public_jwk(&third, "c"),
        ]});
        let (set, _) = Jwks::parse(doc.to_string().as_bytes());
        let p = Provider::new(settings(&[Alg::Es256]), set).unwrap();
        let t = mint(&Es256, &es_signer(), json!({"alg": "ES256"}), claims());
        assert_eq!(verify(&t, &p, NOW), Err(JwtError::KidRequired));
        let t = mint(
            &Es256,
            &third,
            json!({"alg": "ES256", "kid": "c"}),
            claims(),
        );
        assert!(verify(&t, &p, NOW).is_ok(), "with a kid it verifies");
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let p = all_algs();
        for token in [
            mint(
                &Hs256,
                &hs_key(),
                json!({"alg": "HS256", "kid": "hs1"}),
                claims(),
            ),
            mint(
                &Ed25519,
                &ed_signer(),
                json!({"alg": "EdDSA", "kid": "ed1"}),
                claims(),
            ),
            mint(
                &Es256,
                &es_signer(),
                json!({"alg": "ES256", "kid": "ec1"}),
                claims(),
            ),
            ES384_TOKEN.to_owned(),
        ] {
            let parts: Vec<&str> = token.split('.').collect();
            let mut evil = claims();
            evil["sub"] = json!("admin");
            let evil = b64(evil.to_string().as_bytes());
            let forged = format!("{}.{}.{}", parts[0], evil, parts[2]);
            assert_eq!(verify(&forged, &p, NOW), Err(JwtError::Signature));
            // A flipped signature byte.
            let mut sig = B64URL.decode(parts[2]).unwrap();
            sig[5] ^= 1;
            let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
            assert_eq!(verify(&flipped, &p, NOW), Err(JwtError::Signature));
            // Truncated and empty signatures.
            sig.pop();
            let short = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
            assert_eq!(verify(&short, &p, NOW), Err(JwtError::Signature));
            let empty = format!("{}.{}.", parts[0], parts[1]);
            assert_eq!(verify(&empty, &p, NOW), Err(JwtError::Signature));
        }
    }

    fn hs(c: Value) -> String {
        mint(&Hs256, &hs_key(), json!({"alg": "HS256", "kid": "hs1"}), c)
    }

    fn with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn time_checks_with_skew() {
        let p = all_algs();
        let cases = [
            (
                json!({"iat": NOW - 100, "exp": NOW - 31}),
                Err(JwtError::Expired),
            ),
            (
                json!({"iat": NOW - 100, "exp": NOW - 30}),
                Err(JwtError::Expired),
            ),
            (json!({"iat": NOW - 100, "exp": NOW - 29}), Ok(())),
            (json!({"exp": null}), Err(JwtError::Expired)),
            (json!({"exp": "1700000300"}), Err(JwtError::Malformed)),
            (json!({"exp": -5}), Err(JwtError::Malformed)),
            (json!({"exp": (NOW + 300) as f64 + 0.5}), Ok(())),
            (json!({"nbf": NOW + 31}), Err(JwtError::NotYetValid)),
            (json!({"nbf": NOW + 30}), Ok(())),
            (json!({"nbf": true}), Err(JwtError::Malformed)),
            (json!({"iat": NOW + 31}), Err(JwtError::NotYetValid)),
            (json!({"iat": NOW + 30}), Ok(())),
        ];
        for (change, expected) in cases {
            let got = verify(&hs(with(change.clone())), &p, NOW).map(|_| ());
            assert_eq!(got, expected, "{change}");
        }
    }

    #[test]
    fn lifetime_and_age_limits() {
        let p = all_algs(); // max lifetime 3600, max age 3600, skew 30
        let cases = [
            (json!({"iat": NOW - 10, "exp": NOW - 10 + 3600}), Ok(())),
            (
                json!({"iat": NOW - 10, "exp": NOW - 10 + 3601}),
                Err(JwtError::Lifetime),
            ),
            (
                json!({"iat": NOW + 20, "exp": NOW + 10}),
                Err(JwtError::Lifetime),
            ),
            (json!({"iat": null}), Err(JwtError::Claims)),
        ];
        for (change, expected) in cases {
            let got = verify(&hs(with(change.clone())), &p, NOW).map(|_| ());
            assert_eq!(got, expected, "{change}");
        }
        let mut s = settings(&[Alg::Hs256]);
        s.max_lifetime_s = Some(86_400);
        let p = Provider::new(s, key_set()).unwrap();
        let old = hs(with(json!({"iat": NOW - 3631, "exp": NOW + 100})));
        assert_eq!(verify(&old, &p, NOW), Err(JwtError::TooOld));
        let edge = hs(with(json!({"iat": NOW - 3630, "exp": NOW + 100})));
        let v = verify(&edge, &p, NOW).unwrap();
        // Cacheable only until the age limit, not until exp.
        assert_eq!(v.valid_until_s, NOW + 1);
        assert_eq!(verify(&edge, &p, NOW + 1), Err(JwtError::TooOld));
        // Without limits, iat is optional.
        let mut s = settings(&[Alg::Hs256]);
        s.max_lifetime_s = None;
        s.max_age_s = None;
        let p = Provider::new(s, key_set()).unwrap();
        assert!(verify(&hs(with(json!({"iat": null}))), &p, NOW).is_ok());
    }

    #[test]
    fn issuer_audience_and_required_claims() {
        let p = all_algs();
        let cases = [
            (json!({"iss": "https://evil.example"}), JwtError::Issuer),
            (json!({"iss": null}), JwtError::Issuer),
            (json!({"iss": ["https://issuer.example"]}), JwtError::Issuer),
            (json!({"aud": "nope"}), JwtError::Audience),
            (json!({"aud": null}), JwtError::Audience),
            (json!({"sub": null}), JwtError::Claims),
        ];
        for (change, expected) in cases {
            assert_eq!(
                verify(&hs(with(change.clone())), &p, NOW),
                Err(expected),
                "{change}"
            );
        }
        let mut c = claims();
        c["sub"] = Value::Null;
        assert_eq!(verify(&hs(c), &p, NOW), Err(JwtError::Claims));
        // Empty audience list: not checked.
        let mut s = settings(&[Alg::Hs256]);
        s.audiences.clear();
        let p = Provider::new(s, key_set()).unwrap();
        assert!(verify(&hs(with(json!({"aud": null}))), &p, NOW).is_ok());
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        let p = all_algs(); // requires `sub`, audiences "api" and "other"
        let refused = [
            json!({"sub": 42}),
            json!({"sub": ["user-1"]}),
            json!({"sub": {"id": "user-1"}}),
            json!({"sub": true}),
            json!({"sub": ""}),
            json!({"jti": 7}),
            json!({"jti": ["a"]}),
            json!({"aud": ["api", 5]}),
            json!({"aud": ["other", {"x": 1}]}),
        ];
        for change in refused {
            assert_eq!(
                verify(&hs(with(change.clone())), &p, NOW),
                Err(JwtError::Claims),
                "{change}"
            );
        }
        for change in [json!({"jti": "j-1"}), json!({"aud": ["x", "api"]})] {
            assert!(
                verify(&hs(with(change.clone())), &p, NOW).is_ok(),
                "{change}"
            );
        }
        // Without a required `sub` or configured audiences the types still hold.
        let mut s = settings(&[Alg::Hs256]);
        s.required_claims.clear();
        s.audiences.clear();
        let p = Provider::new(s, key_set()).unwrap();
        for change in [
            json!({"sub": 42}),
            json!({"aud": 5}),
            json!({"aud": [1, 2]}),
            json!({"jti": false}),
        ] {
            assert_eq!(
                verify(&hs(with(change.clone())), &p, NOW),
                Err(JwtError::Claims),
                "{change}"
            );
        }
        let v = verify(&hs(with(json!({"sub": ""}))), &p, NOW).unwrap();
        assert_eq!(
            v.sub.as_deref(),
            Some(""),
            "an empty sub is only refused when required"
        );
        let mut null_sub = claims();
        null_sub["sub"] = Value::Null;
        assert_eq!(verify(&hs(null_sub), &p, NOW), Err(JwtError::Claims));
        let absent = with(json!({"sub": null, "aud": null}));
        assert_eq!(verify(&hs(absent), &p, NOW).map(|v| v.sub), Ok(None));
    }

    #[test]
    fn size_and_structure() {
        let p = all_algs();
        assert_eq!(verify("", &p, NOW), Err(JwtError::Missing));
        let big = format!("{}.{}.x", "a".repeat(MAX_TOKEN_LEN), "b");
        assert_eq!(verify(&big, &p, NOW), Err(JwtError::TooLarge));
        let exactly = "a".repeat(MAX_TOKEN_LEN);
        assert_eq!(verify(&exactly, &p, NOW), Err(JwtError::Malformed));
        let good = hs(claims());
        let parts: Vec<&str> = good.split('.').collect();
        let h = parts[0];
        let c = parts[1];
        let s = parts[2];
        let enc = |v: &str| b64(v.as_bytes());
        let malformed = [
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{h}.{c}"),
            format!("{h}.{c}.{s}.x"),
            format!("{h}.{c}.{s}.x.y"),
            format!("{h}=.{c}.{s}"),
            format!("{h}.{c}.{s}="),
            format!("{h}.{c}.{s}!"),
            format!("{h}.{c}+.{s}"),
            format!("{}.{c}.{s}", enc("not json")),
            format!("{}.{c}.{s}", enc(r#"["HS256"]"#)),
            format!(
                "{}.{c}.{s}",
                enc(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#)
            ),
            format!("{}.{c}.{s}", enc(r#"{"alg":"HS256","kid":7}"#)),
            format!("{h}.{}.{s}", enc("[1,2]")),
            format!("{h}.{}.{s}", enc("")),
            format!("{h}..{s}"),
            format!(".{c}.{s}"),
            " ".to_owned(),
            format!("Bearer {good}"),
        ];
        for token in &malformed {
            assert_eq!(verify(token, &p, NOW), Err(JwtError::Malformed), "{token}");
        }
    }

    use crate::core::test_rng::Rng;

    #[test]
    fn garbage_never_panics_nor_verifies() {
        let p = all_algs();
        let good = [
            hs(claims()),
            mint(
                &Es256,
                &es_signer(),
                json!({"alg": "ES256", "kid": "ec1"}),
                claims(),
            ),
            mint(&Ed25519, &ed_signer(), json!({"alg": "EdDSA"}), claims()),
            ES384_TOKEN.to_owned(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        const ALPHABET: &[u8] = b"ABCxyz019-_.=+/ \"{}";
        for round in 0..3000 {
            let len = (rng.next_u64() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next_u64();
                    if round % 2 == 0 {
                        r as u8
                    } else {
                        ALPHABET[(r % ALPHABET.len() as u64) as usize]
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            assert!(verify(&text, &p, NOW).is_err());
        }
        for token in &good {
            assert!(verify(token, &p, NOW).is_ok());
            // Every truncation.
            for cut in 0..token.len() {
                assert!(verify(&token[..cut], &p, NOW).is_err(), "cut {cut}");
            }
            // Every single-character substitution.
            let bytes = token.as_bytes();
            for i in 0..bytes.len() {
                for sub in [b'A', b'.', b'_', b'~'] {
                    if bytes[i] == sub {
                        continue;
                    }
                    let mut b = bytes.to_vec();
                    b[i] = sub;
                    let t = String::from_utf8(b).unwrap();
                    // Changing the last character may only touch the unused
                    // low bits of the last base64 digit: strict decoding
                    // refuses those as non-canonical.
                    assert!(verify(&t, &p, NOW).is_err(), "{i} {}", sub as char);
                }
            }
        }
        // Segments that decode to random bytes.
        for _ in 0..500 {
            let seg = |rng: &mut Rng| {
                let n = (rng.next_u64() % 80) as usize;
                b64(&(0..n).map(|_| rng.next_u64() as u8).collect::<Vec<_>>())
            };
            let t = format!("{}.{}.{}", seg(&mut rng), seg(&mut rng), seg(&mut rng));
            assert!(verify(&t, &p, NOW).is_err());
        }
    }

    #[test]
    fn jwks_parse_keeps_good_entries_and_reports_bad_ones() {
        let short_n = b64(&B64URL.decode(A2_N).unwrap()[..128]);
        let secret = b64(b"0123456789abcdef0123456789abcdef-secret");
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "good-rsa", "n": A2_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": A2_N, "e": "AQAB"},
            {"kty": "oct", "kid": "oct", "k": secret},
            {"kty": "RSA", "kid": "short", "n": short_n, "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": A3_X, "y": A3_Y},
            {"kty": "EC", "kid": "priv", "crv": "P-256", "x": A3_X, "y": A3_Y, "d": A3_D},
            {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": A2_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": A2_N, "e": "AQAB"},
            {"kid": "nokty"},
            "not an object",
            {"kty": "EC", "kid": 5, "crv": "P-256", "x": A3_X, "y": A3_Y},
            {"kty": "EC", "kid": "bad-point", "crv": "P-256", "x": A3_X, "y": A3_X},
            {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": ED_X},
            {"kty": "OKP", "kid": "good-ed", "crv": "Ed25519", "x": ED_X, "use": "sig"},
            {"kty": "RSA", "kid": "bad-b64", "n": "!!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "use", "use": "other", "n": A2_N, "e": "AQAB"},
            {"kty": "foo", "kid": "foo"},
        ]});
        let (set, errors) = Jwks::parse(doc.to_string().as_bytes());
        let kids: Vec<_> = set.keys().iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["good-rsa", "good-ed"]);
        let indices: Vec<_> = errors.iter().map(|e| e.index.unwrap()).collect();
        assert_eq!(indices, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16]);
        assert!(set.contains_kid("good-ed") && !set.contains_kid("enc"));
        for e in &errors {
            let shown = e.to_string();
            for secret_part in [secret.as_str(), A3_D, A2_N, A3_X] {
                assert!(!shown.contains(secret_part), "{shown}");
            }
        }
        assert_eq!(
            errors[0].to_string(),
            "keys[2] (kid `oct`): symmetric (`oct`) keys are not allowed in this key set"
        );
        // With symmetric keys allowed, the oct key is kept; a short one is not.
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "oct", "k": secret},
            {"kty": "oct", "kid": "short", "k": b64(&[1u8; 31])},
            {"kty": "oct", "kid": "rs", "alg": "RS256", "k": secret},
        ]});
        let (set, errors) = Jwks::parse_with_symmetric(doc.to_string().as_bytes());
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys()[0].family(), KeyFamily::Hmac);
        assert_eq!(errors.len(), 2);
        // Whole-document errors.
        for bad in [&b"not json"[..], b"{}", b"{\"keys\": {}}", b"[]", b""] {
            let (set, errors) = Jwks::parse(bad);
            assert!(set.is_empty());
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].index, None);
        }
        // Bounded size.
        let many: Vec<Value> = (0..MAX_KEYS + 3)
            .map(|i| json!({"kty": "OKP", "kid": format!("k{i}"), "crv": "Ed25519", "x": ED_X}))
            .collect();
        let (set, errors) = Jwks::parse(json!({ "keys": many }).to_string().as_bytes());
        assert_eq!(set.len(), MAX_KEYS);
        assert_eq!(errors.len(), 3);
        // Debug shows no key material.
        let shown = format!("{:?}", key_set());
        assert!(!shown.contains(A1_K) && shown.contains("hs1"));
    }

    #[test]
    fn provider_settings_are_checked() {
        let ok = settings(&[Alg::Rs256]);
        assert!(Provider::new(ok.clone(), Jwks::default()).is_ok());
        let field = |s: ProviderSettings, keys: Jwks| Provider::new(s, keys).unwrap_err().field;
        // HS256 needs an oct key.
        let doc = json!({"keys": [{"kty": "RSA", "n": A2_N, "e": "AQAB"}]});
        let rsa_only = Jwks::parse(doc.to_string().as_bytes()).0;
        assert_eq!(
            field(settings(&[Alg::Rs256, Alg::Hs256]), rsa_only),
            "algorithms[1]"
        );
        assert!(Provider::new(settings(&[Alg::Hs256]), key_set()).is_ok());
        assert_eq!(field(settings(&[]), Jwks::default()), "algorithms");
        assert_eq!(
            field(settings(&[Alg::Es256, Alg::Es256]), Jwks::default()),
            "algorithms[1]"
        );
        let mut s = ok.clone();
        s.issuer.clear();
        assert_eq!(field(s, Jwks::default()), "issuer");
        let mut s = ok.clone();
        s.audiences.push(String::new());
        assert_eq!(field(s, Jwks::default()), "audiences[2]");
        let mut s = ok.clone();
        s.clock_skew_s = MAX_CLOCK_SKEW_S + 1;
        assert_eq!(field(s, Jwks::default()), "clock_skew");
        let mut s = ok.clone();
        s.max_lifetime_s = Some(0);
        assert_eq!(field(s, Jwks::default()), "max_lifetime");
        let mut s = ok.clone();
        s.max_age_s = Some(0);
        assert_eq!(field(s, Jwks::default()), "max_age");
        let mut s = ok;
        s.required_claims = vec!["a".into(), String::new()];
        assert_eq!(field(s, Jwks::default()), "required_claims[1]");
    }

    fn verified(valid_until_s: u64) -> VerifiedToken {
        VerifiedToken {
            alg: Alg::Hs256,
            kid: None,
            sub: Some("u".into()),
            exp: valid_until_s,
            iat: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            amr: Vec::new(),
            valid_until_s,
            claims: json!({}),
        }
    }

    fn key(token: &str) -> TokenKey {
        TokenKey::new(&[9; 16], token)
    }

    #[test]
    fn cache_returns_live_tokens_only() {
        let p = all_algs();
        let token = hs(claims());
        let v = verify(&token, &p, NOW).unwrap();
        let mut cache = TokenCache::new(4);
        assert!(cache.get(key(&token), NOW).is_none());
        cache.insert(key(&token), v.clone(), NOW);
        assert_eq!(cache.get(key(&token), NOW), Some(&v));
        assert_eq!(cache.get(key(&token), v.valid_until_s - 1), Some(&v));
        assert!(cache.get(key(&token), v.valid_until_s).is_none());
        assert!(cache.is_empty());
        // Expired on arrival: not stored. Capacity 0: nothing stored.
        cache.insert(key("t"), verified(NOW), NOW);
        assert!(cache.is_empty());
        let mut none = TokenCache::new(0);
        none.insert(key("t"), verified(NOW + 10), NOW);
        assert!(none.is_empty());
        // The cache is keyed by a hash: a different token misses.
        cache.insert(key(&token), v.clone(), NOW);
        assert!(cache.get(key(&format!("{token}x")), NOW).is_none());
        cache.clear();
        assert!(cache.get(key(&token), NOW).is_none());
    }

    #[test]
    fn cache_evicts_expired_first_then_oldest() {
        let mut cache = TokenCache::new(3);
        cache.insert(key("a"), verified(NOW + 100), NOW);
        cache.insert(key("b"), verified(NOW + 5), NOW);
        cache.insert(key("c"), verified(NOW + 100), NOW);
        assert_eq!(cache.len(), 3);
        // At NOW + 10, "b" has expired: it goes, not the oldest "a".
        cache.insert(key("d"), verified(NOW + 100), NOW + 10);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(key("a"), NOW + 10).is_some());
        assert!(cache.get(key("b"), NOW + 10).is_none());
        // Nothing expired: the oldest insertion ("a") goes.
        cache.insert(key("e"), verified(NOW + 100), NOW + 10);
        assert!(cache.get(key("a"), NOW + 10).is_none());
        for k in ["c", "d", "e"] {
            assert!(cache.get(key(k), NOW + 10).is_some(), "{k}");
        }
        // Re-inserting a present token replaces it in place, evicting nothing;
        // the queue of stale entries stays bounded.
        for i in 0..100 {
            cache.insert(key("c"), verified(NOW + 200 + i), NOW + 11);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.order.len() <= 6);
        assert_eq!(
            cache.get(key("c"), NOW + 11).unwrap().valid_until_s,
            NOW + 299
        );
        // "c" is now the newest: "d" then "e" go first.
        cache.insert(key("f"), verified(NOW + 100), NOW + 11);
        assert!(cache.get(key("d"), NOW + 11).is_none());
        assert!(cache.get(key("c"), NOW + 11).is_some());
        // Many distinct tokens: never over capacity.
        for i in 0..1000 {
            cache.insert(key(&format!("t{i}")), verified(NOW + 100), NOW + 12);
            assert!(cache.len() <= 3);
        }
        assert!(cache.order.len() <= 6);
    }

    #[test]
    fn reason_codes_are_stable() {
        let codes: Vec<&str> = JwtError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            codes,
            [
                "jwt.missing",
                "jwt.malformed",
                "jwt.alg",
                "jwt.unknown_kid",
                "jwt.signature",
                "jwt.expired",
                "jwt.not_yet_valid",
                "jwt.lifetime",
                "jwt.too_old",
                "jwt.issuer",
                "jwt.audience",
                "jwt.claims",
                "jwt.too_large",
                "jwt.kid_required",
                "jwt.binding",
            ]
        );
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.as_str()), Some(alg));
        }
        assert_eq!(Alg::from_name("none"), None);
    }
}
