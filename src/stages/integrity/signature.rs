//! HTTP Message Signatures (RFC 9421): verification of `hmac-sha256`
//! request signatures.
//!
//! Threat: API clients that hold a shared secret (partner services, first
//! party apps with a provisioned key) are told apart from bots that replay or
//! forge their traffic. A bot without the secret cannot produce a signature
//! over the covered components, so it can neither forge a request nor alter
//! the method, authority, path, query, covered headers or (through a covered
//! `content-digest`, see [`crate::stages::integrity::digest`]) the body of a captured one.
//!
//! Assumptions and limits:
//!
//! - Replay. A captured request verifies again for as long as it is fresh:
//!   `created` at most [`Requirements::max_age_s`] (plus the skew) in the past
//!   and `expires`, when present, not passed. This module keeps no state:
//!   stopping replays within that window is the caller's job, by remembering
//!   [`Verified::id`] (or the `nonce`, with `require_nonce`) in a shared store
//!   until [`Verified::fresh_until_s`]. A signature with no `created` (when
//!   not required) and no `expires` has no freshness bound at all.
//! - Clock skew. `created` up to [`Requirements::clock_skew_s`] ahead of the
//!   proxy's clock is accepted (signer clocks run fast); beyond it the
//!   signature is `sig.future`. The same skew extends the age and expiry
//!   limits, for signer clocks that run slow.
//! - Key rotation. A [`KeyRing`] maps a key id to one or more secrets and a
//!   signature verifies if any secret of its `keyid` matches: add the new
//!   secret (under a new key id, or under the same id), move the clients over,
//!   then remove the old secret once `max_age_s` has passed. Secrets are
//!   shared: whoever can verify can also sign, so the ring must stay as
//!   private as the clients' copies.
//! - Selection. Only one signature per request is verified: the first member
//!   of `Signature-Input` (or the one under [`Requirements::label`]) whose
//!   parameters pass every check that needs no MAC (structure, `alg`, `tag`,
//!   required parameters and components, known key id, time window). Other
//!   signatures on the request (from other parties) are ignored. With no
//!   such member, the error is the first member's.
//! - What is signed is what the filter sees: `:path` after any path
//!   normalization Envoy applied before the filter, `:authority` as routed.
//!   Signers must sign the request as it reaches the proxy.
//!
//! Supported covered components (RFC 9421 section 2):
//!
//! - Derived: `@method`, `@authority` (lower-cased, default port removed),
//!   `@scheme` (lower-cased), `@target-uri` (`scheme://authority` then
//!   `:path`), `@request-target` (`:path`; the authority for `CONNECT`),
//!   `@path` (`/` when empty) and `@query` (with its leading `?`; `?` alone
//!   when there is no query). A requirement for `@authority`, `@scheme`,
//!   `@path`, `@query` or `@request-target` is also met by a covered
//!   `@target-uri`, and one for `@path` or `@query` by `@request-target`.
//! - Header fields by lower-case name: each field line trimmed, lines joined
//!   with `, `. Parameters `bs` (each line as a byte sequence) and
//!   `key="member"` (one member of a dictionary field, re-serialized) are
//!   supported.
//! - Refused as `sig.malformed`: `@query-param`, `@status`,
//!   `@signature-params`, any other derived name, the `sf`, `req`, `tr` and
//!   `name` parameters and unknown ones, and `bs` with `key`.
//!
//! Signature parameters: `created`, `expires` (non-negative integers),
//! `keyid` (required), `nonce`, `tag` and `alg` (strings; `alg`, if present,
//! must be `hmac-sha256`). Unknown parameters are ignored, though still
//! covered by the MAC through the `@signature-params` line, which is the
//! canonical re-serialization of the `Signature-Input` member.
//!
//! Structured fields are parsed strictly (RFC 9651) with the `sfv` crate;
//! repeated dictionary keys or parameters are refused rather than resolved by
//! "last one wins". Inputs are bounded ([`MAX_FIELD_LEN`], [`MAX_MEMBERS`],
//! [`MAX_COMPONENT_LEN`], [`MAX_BASE_LEN`]), so the work per request is too;
//! no input panics.

use crate::core::request::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItem, BareItemFromInput, Dictionary, Item, KeyRef, ListEntry, Parser};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm supported, as named in the `alg` parameter.
pub const ALG_HMAC_SHA256: &str = "hmac-sha256";

/// Shortest secret a [`KeyRing`] accepts: the SHA-256 output size, as
/// RFC 2104 section 3 recommends.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest `Signature-Input` or `Signature` field accepted (all lines).
pub const MAX_FIELD_LEN: usize = 8192;

/// Longest covered component value, and longest dictionary field parsed for
/// a `key` component.
pub const MAX_COMPONENT_LEN: usize = 16_384;

/// Longest signature base, and most bytes parsed for `key` components of one
/// signature: a signature that covers one large header many times (`bs`,
/// several `key`s) does not multiply the work.
pub const MAX_BASE_LEN: usize = 65_536;

/// Most covered components of a signature, dictionary members of a field,
/// or parameters of one item.
pub const MAX_MEMBERS: usize = 64;

const MAC_LEN: usize = 32;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The derived components supported, by name.
pub const DERIVED_COMPONENTS: [&str; 7] = [
    "@method",
    "@authority",
    "@scheme",
    "@target-uri",
    "@request-target",
    "@path",
    "@query",
];

pub use crate::core::reasons::SigError;

/// Why a key could not be added to a [`KeyRing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Empty, longer than 256 bytes, or not printable ASCII (it could never
    /// appear in a `keyid` string).
    InvalidKeyId,
    /// Shorter than [`MIN_SECRET_LEN`].
    SecretTooShort,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::InvalidKeyId => {
                f.write_str("a key id must be 1 to 256 printable ASCII characters")
            }
            KeyError::SecretTooShort => {
                write!(f, "a secret must be at least {MIN_SECRET_LEN} bytes")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// HMAC secrets by key id. Several secrets may share a key id, and several
/// key ids may be active at once, so that keys rotate without downtime.
///
/// Each secret is kept as a keyed HMAC state (cloned per verification), so
/// the key is hashed once, at configuration time. `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Vec<(String, HmacSha256)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds a secret under a key id (which may already have others).
    pub fn add(&mut self, key_id: &str, secret: &[u8]) -> Result<(), KeyError> {
        if key_id.is_empty()
            || key_id.len() > 256
            || !key_id.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(KeyError::InvalidKeyId);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::SecretTooShort);
        }
        let mac =
            <HmacSha256 as Mac>::new_from_slice(secret).map_err(|_| KeyError::SecretTooShort)?;
        self.keys.push((key_id.to_owned(), mac));
        Ok(())
    }

    /// Number of secrets (not of key ids).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    fn macs<'s>(&'s self, key_id: &'s str) -> impl Iterator<Item = &'s HmacSha256> + 's {
        self.keys
            .iter()
            .filter(move |(id, _)| id == key_id)
            .map(|(_, mac)| mac)
    }
}

/// What a signature must satisfy to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Verify only the signature under this label; `None`: the first
    /// acceptable one.
    pub label: Option<String>,
    /// Component names that must be covered (`@method`, `content-digest`,
    /// ...), without parameters. See [`Requirements::validate`].
    pub components: Vec<String>,
    /// Required value of the `tag` parameter, to refuse signatures made for
    /// another application with the same key.
    pub tag: Option<String>,
    /// Oldest `created` accepted, in seconds before now (plus the skew).
    pub max_age_s: Option<u64>,
    /// Tolerated difference between the signer's clock and the proxy's.
    pub clock_skew_s: u64,
    pub require_created: bool,
    pub require_nonce: bool,
}

impl Default for Requirements {
    /// Cover method, authority, path and query; `created` required, at most
    /// five minutes old, 30 s of skew.
    fn default() -> Self {
        Requirements {
            label: None,
            components: ["@method", "@authority", "@path", "@query"]
                .map(String::from)
                .to_vec(),
            tag: None,
            max_age_s: Some(300),
            clock_skew_s: 30,
            require_created: true,
            require_nonce: false,
        }
    }
}

impl Requirements {
    /// Checks names once, at configuration time: the label must be a
    /// structured-field key, the tag a structured-field string, each
    /// component a supported derived name or a lower-case field name, listed
    /// once.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(label) = &self.label {
            if KeyRef::from_str(label).is_err() {
                return Err(format!(
                    "label `{label}` is not a structured-field key \
                     (a lower-case letter or `*`, then lower-case letters, digits, `_-.*`)"
                ));
            }
        }
        if let Some(tag) = &self.tag {
            if !tag.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(format!("tag `{tag}` must be printable ASCII"));
            }
        }
        for (n, name) in self.components.iter().enumerate() {
            if name.starts_with('@') {
                if Derived::from_name(name).is_none() {
                    return Err(format!(
                        "component `{name}` is not supported; derived components: {}",
                        DERIVED_COMPONENTS.join(", ")
                    ));
                }
            } else if !is_field_name(name) {
                return Err(format!(
                    "component `{name}` is not a lower-case header field name"
                ));
            }
            if self.components.iter().take(n).any(|other| other == name) {
                return Err(format!("component `{name}` is listed twice"));
            }
        }
        Ok(())
    }
}

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub label: String,
    pub key_id: String,
    pub nonce: Option<String>,
    pub tag: Option<String>,
    pub created: Option<u64>,
    pub expires: Option<u64>,
    /// First 16 bytes of the SHA-256 of the signature bytes: a stable,
    /// non-secret identifier for replay caches (the same request replayed
    /// carries the same signature).
    pub id: [u8; 16],
    /// Last second at which this signature would still verify (age and
    /// expiry limits, skew included), i.e. how long a replay cache must
    /// remember it. `None`: no bound.
    pub fresh_until_s: Option<u64>,
    /// The signature covers `content-digest`: the body is protected only if
    /// the caller also checks it with [`crate::stages::integrity::digest`].
    pub covers_content_digest: bool,
}

impl Verified {
    /// [`Verified::id`] in lower-case hex.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Verifies the request's signature: see the module documentation for what
/// is checked, in which order.
pub fn verify(
    headers: &HeaderMap<'_>,
    keys: &KeyRing,
    req: &Requirements,
    now_s: u64,
) -> Result<Verified, SigError> {
    let input_field = field(headers, "signature-input")?;
    let signature_field = field(headers, "signature")?;
    let inputs = parse_dictionary(&input_field).ok_or(SigError::Malformed)?;
    let signatures = parse_dictionary(&signature_field).ok_or(SigError::Malformed)?;
    let mut first_error = None;
    for (label, entry) in &inputs {
        let label = label.as_str();
        if req.label.as_deref().is_some_and(|want| want != label) {
            continue;
        }
        match select(label, entry, &signatures, keys, req, now_s) {
            Ok((member, signature)) => return check(headers, keys, req, &member, signature),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or(SigError::Missing))
}

/// The signature base (RFC 9421 section 2.5) of the `Signature-Input` member
/// under `label`, whatever the requirements: for tests, debugging and
/// signers.
pub fn signature_base(headers: &HeaderMap<'_>, label: &str) -> Result<Vec<u8>, SigError> {
    let input_field = field(headers, "signature-input")?;
    let inputs = parse_dictionary(&input_field).ok_or(SigError::Malformed)?;
    let (label, entry) = inputs.get_key_value(label).ok_or(SigError::Missing)?;
    let member = parse_member(label.as_str(), entry)?;
    build_base(headers, &member)
}

/// A `Signature-Input` member, parsed and typed.
struct Member<'d> {
    label: &'d str,
    entry: &'d ListEntry,
    components: Vec<Component<'d>>,
    key_id: Option<&'d str>,
    alg: Option<&'d str>,
    created: Option<u64>,
    expires: Option<u64>,
    nonce: Option<&'d str>,
    tag: Option<&'d str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derived {
    Method,
    Authority,
    Scheme,
    TargetUri,
    RequestTarget,
    Path,
    Query,
}

impl Derived {
    fn from_name(name: &str) -> Option<Derived> {
        Some(match name {
            "@method" => Derived::Method,
            "@authority" => Derived::Authority,
            "@scheme" => Derived::Scheme,
            "@target-uri" => Derived::TargetUri,
            "@request-target" => Derived::RequestTarget,
            "@path" => Derived::Path,
            "@query" => Derived::Query,
            _ => return None,
        })
    }

    /// Required components whose value this one contains.
    fn also_covers(self, required: &str) -> bool {
        match self {
            Derived::TargetUri => matches!(
                required,
                "@authority" | "@scheme" | "@path" | "@query" | "@request-target"
            ),
            Derived::RequestTarget => matches!(required, "@path" | "@query"),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source<'d> {
    Derived(Derived),
    Field { bs: bool, key: Option<&'d str> },
}

struct Component<'d> {
    name: &'d str,
    source: Source<'d>,
    item: &'d Item,
}

fn parse_component(item: &Item) -> Result<Component<'_>, SigError> {
    let BareItem::String(name) = &item.bare_item else {
        return Err(SigError::Malformed);
    };
    let name = name.as_str();
    let source = if name.starts_with('@') {
        let derived = Derived::from_name(name).ok_or(SigError::Malformed)?;
        if !item.params.is_empty() {
            return Err(SigError::Malformed);
        }
        Source::Derived(derived)
    } else {
        if !is_field_name(name) {
            return Err(SigError::Malformed);
        }
        let mut bs = false;
        let mut key = None;
        for (param, value) in &item.params {
            match (param.as_str(), value) {
                ("bs", BareItem::Boolean(true)) => bs = true,
                ("key", BareItem::String(member)) => key = Some(member.as_str()),
                _ => return Err(SigError::Malformed),
            }
        }
        if bs && key.is_some() {
            return Err(SigError::Malformed);
        }
        Source::Field { bs, key }
    };
    Ok(Component { name, source, item })
}

fn parse_member<'d>(label: &'d str, entry: &'d ListEntry) -> Result<Member<'d>, SigError> {
    let ListEntry::InnerList(list) = entry else {
        return Err(SigError::Malformed);
    };
    if list.items.len() > MAX_MEMBERS {
        return Err(SigError::Malformed);
    }
    let mut components: Vec<Component<'d>> = Vec::with_capacity(list.items.len());
    for item in &list.items {
        let component = parse_component(item)?;
        if components
            .iter()
            .any(|c| c.name == component.name && c.source == component.source)
        {
            return Err(SigError::Malformed);
        }
        components.push(component);
    }
    let mut member = Member {
        label,
        entry,
        components,
        key_id: None,
        alg: None,
        created: None,
        expires: None,
        nonce: None,
        tag: None,
    };
    for (param, value) in &list.params {
        match param.as_str() {
            "created" => member.created = Some(timestamp(value)?),
            "expires" => member.expires = Some(timestamp(value)?),
            "keyid" => member.key_id = Some(string(value)?),
            "alg" => member.alg = Some(string(value)?),
            "nonce" => member.nonce = Some(string(value)?),
            "tag" => member.tag = Some(string(value)?),
            _ => {}
        }
    }
    Ok(member)
}

fn timestamp(value: &BareItem) -> Result<u64, SigError> {
    value
        .as_integer()
        .and_then(|n| u64::try_from(i64::from(n)).ok())
        .ok_or(SigError::Malformed)
}

fn string(value: &BareItem) -> Result<&str, SigError> {
    value
        .as_string()
        .map(|s| s.as_str())
        .ok_or(SigError::Malformed)
}

/// The checks that need no MAC, in the order that decides the reason.
fn select<'d>(
    label: &'d str,
    entry: &'d ListEntry,
    signatures: &'d Dictionary,
    keys: &KeyRing,
    req: &Requirements,
    now_s: u64,
) -> Result<(Member<'d>, &'d [u8]), SigError> {
    let member = parse_member(label, entry)?;
    let signature = match signatures.get(label) {
        Some(ListEntry::Item(item)) => item.bare_item.as_byte_sequence(),
        _ => None,
    }
    .filter(|bytes| bytes.len() == MAC_LEN)
    .ok_or(SigError::Malformed)?;
    if member.alg.is_some_and(|alg| alg != ALG_HMAC_SHA256) {
        return Err(SigError::Malformed);
    }
    let key_id = member.key_id.ok_or(SigError::Malformed)?;
    if req.require_created && member.created.is_none() {
        return Err(SigError::Malformed);
    }
    if req.require_nonce && member.nonce.is_none_or(str::is_empty) {
        return Err(SigError::Malformed);
    }
    if let Some(tag) = &req.tag {
        if member.tag != Some(tag.as_str()) {
            return Err(SigError::Malformed);
        }
    }
    for required in &req.components {
        let covered = member.components.iter().any(|c| match c.source {
            Source::Field { key, .. } => key.is_none() && c.name == required,
            Source::Derived(derived) => c.name == required || derived.also_covers(required),
        });
        if !covered {
            return Err(SigError::Components);
        }
    }
    if !keys.contains(key_id) {
        return Err(SigError::UnknownKey);
    }
    let skew = req.clock_skew_s;
    if let Some(created) = member.created {
        if created > now_s.saturating_add(skew) {
            return Err(SigError::Future);
        }
    }
    if fresh_until(&member, req).is_some_and(|until| now_s > until) {
        return Err(SigError::Expired);
    }
    Ok((member, signature))
}

fn fresh_until(member: &Member<'_>, req: &Requirements) -> Option<u64> {
    let skew = req.clock_skew_s;
    let by_age = member
        .created
        .zip(req.max_age_s)
        .map(|(created, max_age)| created.saturating_add(max_age).saturating_add(skew));
    let by_expiry = member.expires.map(|expires| expires.saturating_add(skew));
    match (by_age, by_expiry) {
        (Some(age), Some(expiry)) => Some(age.min(expiry)),
        (age, expiry) => age.or(expiry),
    }
}

/// The MAC check of a selected signature.
fn check(
    headers: &HeaderMap<'_>,
    keys: &KeyRing,
    req: &Requirements,
    member: &Member<'_>,
    signature: &[u8],
) -> Result<Verified, SigError> {
    let key_id = member.key_id.ok_or(SigError::Malformed)?;
    let base = build_base(headers, member)?;
    let matched = keys.macs(key_id).any(|keyed| {
        let mut mac = keyed.clone();
        mac.update(&base);
        mac.verify_slice(signature).is_ok()
    });
    if !matched {
        return Err(SigError::Invalid);
    }
    let hash = Sha256::digest(signature);
    let mut id = [0u8; 16];
    for (out, byte) in id.iter_mut().zip(hash.iter()) {
        *out = *byte;
    }
    Ok(Verified {
        label: member.label.to_owned(),
        key_id: key_id.to_owned(),
        nonce: member.nonce.map(str::to_owned),
        tag: member.tag.map(str::to_owned),
        created: member.created,
        expires: member.expires,
        id,
        fresh_until_s: fresh_until(member, req),
        // Any form of the field (`;bs`, `;key=...`) signs the digest the
        // client meant to bind the body with: the body must then match it.
        covers_content_digest: member
            .components
            .iter()
            .any(|c| c.name == "content-digest" && matches!(c.source, Source::Field { .. })),
    })
}

/// RFC 9421 section 2.5: one line per covered component, then the
/// `@signature-params` line, joined by `\n` with none at the end.
fn build_base(headers: &HeaderMap<'_>, member: &Member<'_>) -> Result<Vec<u8>, SigError> {
    let mut base = Vec::with_capacity(256);
    let mut scratch = String::new();
    let mut parsed = 0;
    for component in &member.components {
        scratch.clear();
        let _ = sfv::ItemSerializer::with_buffer(&mut scratch)
            .bare_item(&component.item.bare_item)
            .parameters(&component.item.params)
            .finish();
        base.extend_from_slice(scratch.as_bytes());
        base.extend_from_slice(b": ");
        let start = base.len();
        match component.source {
            Source::Derived(derived) => {
                push_derived(&mut base, headers, derived).ok_or(SigError::Components)?
            }
            Source::Field { bs, key } => push_field(
                &mut base,
                headers,
                component.name,
                bs,
                key,
                &mut scratch,
                &mut parsed,
            )?,
        }
        let value = base.get(start..).unwrap_or_default();
        if value.len() > MAX_COMPONENT_LEN
            || base.len() > MAX_BASE_LEN
            || value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            return Err(SigError::Malformed);
        }
        base.push(b'\n');
    }
    base.extend_from_slice(b"\"@signature-params\": ");
    scratch.clear();
    let mut params = sfv::ListSerializer::with_buffer(&mut scratch);
    params.members(std::iter::once(member.entry));
    let _ = params.finish();
    base.extend_from_slice(scratch.as_bytes());
    Ok(base)
}

fn push_derived(base: &mut Vec<u8>, headers: &HeaderMap<'_>, derived: Derived) -> Option<()> {
    match derived {
        Derived::Method => base.extend_from_slice(headers.get(":method")?),
        Derived::Authority => push_authority(base, headers)?,
        Derived::Scheme => base.extend(headers.get(":scheme")?.iter().map(u8::to_ascii_lowercase)),
        Derived::TargetUri => {
            let scheme = headers.get(":scheme")?;
            let target = headers.get(":path")?;
            base.extend(scheme.iter().map(u8::to_ascii_lowercase));
            base.extend_from_slice(b"://");
            push_authority(base, headers)?;
            base.extend_from_slice(target);
        }
        Derived::RequestTarget => {
            if headers.get(":method") == Some(b"CONNECT".as_slice()) {
                base.extend_from_slice(authority(headers)?);
            } else {
                base.extend_from_slice(headers.get(":path")?);
            }
        }
        Derived::Path => {
            let (path, _) = split_target(headers.get(":path")?);
            if path.is_empty() {
                base.push(b'/');
            } else {
                base.extend_from_slice(path);
            }
        }
        Derived::Query => {
            let (_, query) = split_target(headers.get(":path")?);
            base.push(b'?');
            base.extend_from_slice(query.unwrap_or_default());
        }
    }
    Some(())
}

/// `:authority`, or `Host` for a host that sets no pseudo-header.
fn authority<'a>(headers: &HeaderMap<'a>) -> Option<&'a [u8]> {
    let raw = trim_ows(headers.get(":authority").or_else(|| headers.get("host"))?);
    (!raw.is_empty()).then_some(raw)
}

/// RFC 9421 section 2.2.3: lower-cased, without the scheme's default port.
fn push_authority(base: &mut Vec<u8>, headers: &HeaderMap<'_>) -> Option<()> {
    let raw = authority(headers)?;
    let scheme = headers.get(":scheme").unwrap_or_default();
    let host = if scheme.eq_ignore_ascii_case(b"https") {
        raw.strip_suffix(b":443").unwrap_or(raw)
    } else if scheme.eq_ignore_ascii_case(b"http") {
        raw.strip_suffix(b":80").unwrap_or(raw)
    } else {
        raw
    };
    base.extend(host.iter().map(u8::to_ascii_lowercase));
    Some(())
}

/// Splits a request target into path and query (without its `?`).
fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|b| *b == b'?') {
        Some(at) => (
            target.get(..at).unwrap_or_default(),
            Some(target.get(at + 1..).unwrap_or_default()),
        ),
        None => (target, None),
    }
}

/// A header field's value, as is, as byte sequences (`bs`) or one member
/// (`key`). `parsed` counts the bytes parsed for `key` components so far.
fn push_field(
    base: &mut Vec<u8>,
    headers: &HeaderMap<'_>,
    name: &str,
    bs: bool,
    key: Option<&str>,
    scratch: &mut String,
    parsed: &mut usize,
) -> Result<(), SigError> {
    if let Some(key) = key {
        let value = combined_field(headers, name, MAX_COMPONENT_LEN)
            .map_err(|_| SigError::Malformed)?
            .ok_or(SigError::Components)?;
        *parsed = parsed.saturating_add(value.len());
        if *parsed > MAX_BASE_LEN {
            return Err(SigError::Malformed);
        }
        let dict: Dictionary = Parser::new(&*value)
            .parse()
            .map_err(|_| SigError::Components)?;
        let member = dict.get(key).ok_or(SigError::Components)?;
        scratch.clear();
        let mut ser = sfv::ListSerializer::with_buffer(scratch);
        ser.members(std::iter::once(member));
        let _ = ser.finish();
        base.extend_from_slice(scratch.as_bytes());
        return Ok(());
    }
    let mut present = false;
    for line in headers.get_all(name) {
        if present {
            base.extend_from_slice(b", ");
        }
        present = true;
        let line = trim_ows(line);
        if bs {
            scratch.clear();
            BASE64.encode_string(line, scratch);
            base.push(b':');
            base.extend_from_slice(scratch.as_bytes());
            base.push(b':');
        } else {
            base.extend_from_slice(line);
        }
        if base.len() > MAX_BASE_LEN.saturating_add(MAX_COMPONENT_LEN) {
            return Err(SigError::Malformed);
        }
    }
    if present {
        Ok(())
    } else {
        Err(SigError::Components)
    }
}

/// RFC 9110 field-name (a token), lower case only.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !ows(b))
        .map_or(start, |at| at + 1);
    value.get(start..end).unwrap_or_default()
}

/// A field exceeds its length bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Oversize;

/// Every line of a field, trimmed and joined with `, ` (RFC 9110 section
/// 5.3); borrowed when there is a single line. `Ok(None)` when absent.
pub(crate) fn combined_field<'a>(
    headers: &HeaderMap<'a>,
    name: &str,
    max_len: usize,
) -> Result<Option<Cow<'a, [u8]>>, Oversize> {
    let mut lines = headers.get_all(name).map(trim_ows);
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    let mut value = Cow::Borrowed(first);
    for line in lines {
        let joined = value.to_mut();
        if joined.len().saturating_add(line.len()).saturating_add(2) > max_len {
            return Err(Oversize);
        }
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line);
    }
    if value.len() > max_len {
        return Err(Oversize);
    }
    Ok(Some(value))
}

/// `Signature-Input` or `Signature`, combined; absent or empty is missing.
fn field<'a>(headers: &HeaderMap<'a>, name: &str) -> Result<Cow<'a, [u8]>, SigError> {
    match combined_field(headers, name, MAX_FIELD_LEN) {
        Ok(Some(value)) if !value.is_empty() => Ok(value),
        Ok(_) => Err(SigError::Missing),
        Err(Oversize) => Err(SigError::Malformed),
    }
}

/// Parses a structured-field dictionary (RFC 9651), refusing repeated member
/// names and repeated parameters (which the RFC resolves by keeping the last
/// one: refusing them keeps every reader of the field in agreement) and more
/// than [`MAX_MEMBERS`] of either.
pub(crate) fn parse_dictionary(value: &[u8]) -> Option<Dictionary> {
    Parser::new(value)
        .parse_dictionary_with_visitor(UniqueKeys::default())
        .ok()?;
    Parser::new(value).parse().ok()
}

#[derive(Debug)]
struct Repeated;

impl fmt::Display for Repeated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("repeated or too many keys")
    }
}

impl std::error::Error for Repeated {}

/// Validating visitor: keys unique within each dictionary and each
/// parameter list.
#[derive(Default)]
struct UniqueKeys<'de> {
    seen: Vec<&'de KeyRef>,
}

impl<'de> UniqueKeys<'de> {
    fn note(&mut self, key: &'de KeyRef) -> Result<(), Repeated> {
        if self.seen.len() >= MAX_MEMBERS || self.seen.contains(&key) {
            return Err(Repeated);
        }
        self.seen.push(key);
        Ok(())
    }
}

impl<'de> ParameterVisitor<'de> for UniqueKeys<'de> {
    type Out = ();
    type Error = Repeated;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        _value: BareItemFromInput<'de>,
    ) -> Result<(), Repeated> {
        self.note(key)
    }

    fn finish(self) -> Result<(), Repeated> {
        Ok(())
    }
}

impl<'de> DictionaryVisitor<'de> for UniqueKeys<'de> {
    type Out = ();
    type Error = Repeated;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Repeated> {
        self.note(key)?;
        Ok(UniqueParams)
    }

    fn finish(self) -> Result<(), Repeated> {
        Ok(())
    }
}

/// Checks the parameters of an entry, its items and inner-list items.
struct UniqueParams;

impl<'de> EntryVisitor<'de> for UniqueParams {
    type Error = Repeated;

    fn item(self) -> Result<impl ItemVisitor<'de>, Repeated> {
        Ok(UniqueParams)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Repeated> {
        Ok(UniqueParams)
    }
}

impl<'de> ItemVisitor<'de> for UniqueParams {
    type Out = ();
    type Error = Repeated;

    fn bare_item(
        self,
        _bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Repeated> {
        Ok(UniqueKeys::default())
    }
}

impl<'de> InnerListVisitor<'de> for UniqueParams {
    type Error = Repeated;

    fn item(&mut self) -> Result<impl ItemVisitor<'de>, Repeated> {
        Ok(UniqueParams)
    }

    fn finish(self) -> Result<impl ParameterVisitor<'de>, Repeated> {
        Ok(UniqueKeys::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::integrity::digest::{self, DigestAlg, DigestError};

    /// RFC 9421 Appendix B.1.5, `test-shared-secret`.
    const RFC_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    const CREATED: u64 = 1_618_884_473;
    const NOW: u64 = CREATED + 10;
    const BODY: &[u8] = br#"{"hello": "world"}"#;
    const RFC_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
    const S1: &[u8] = &[1; 32];
    const S2: &[u8] = &[2; 32];
    const S3: &[u8] = &[3; 32];
    const FULL: &str = r#"("@method" "@authority" "@path" "@query" "content-type" "content-digest");created=1618884473;keyid="k1";nonce="n-1""#;

    type Pairs = Vec<(String, String)>;

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn map(p: &Pairs) -> HeaderMap<'_> {
        HeaderMap::from_pairs(
            p.iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect(),
        )
    }

    fn set(p: &mut Pairs, name: &str, value: &str) {
        p.retain(|(n, _)| n != name);
        p.push((name.to_owned(), value.to_owned()));
    }

    fn get(p: &Pairs, name: &str) -> String {
        p.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// RFC 9421 Appendix B.2 `test-request`, as Envoy presents it.
    fn rfc_request() -> Pairs {
        pairs(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/foo?param=Value&Pet=dog"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-digest", RFC_DIGEST),
            ("content-length", "18"),
        ])
    }

    fn rfc_secret() -> Vec<u8> {
        BASE64.decode(RFC_SECRET).unwrap_or_default()
    }

    fn mac(base: &[u8], secret: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(secret) else {
            unreachable!("HMAC takes keys of any length");
        };
        mac.update(base);
        mac.finalize().into_bytes().to_vec()
    }

    fn base_text(p: &Pairs, label: &str) -> String {
        match signature_base(&map(p), label) {
            Ok(base) => String::from_utf8_lossy(&base).into_owned(),
            Err(e) => unreachable!("no base for {label}: {e}"),
        }
    }

    /// Adds a signature as a client would: `input` is the member's value.
    fn add_signature(p: &mut Pairs, label: &str, input: &str, secret: &[u8]) {
        p.push(("signature-input".to_owned(), format!("{label}={input}")));
        let base = signature_base(&map(p), label).unwrap_or_default();
        let sig = BASE64.encode(mac(&base, secret));
        p.push(("signature".to_owned(), format!("{label}=:{sig}:")));
    }

    fn signed(input: &str, key_id: &str, secret: &[u8]) -> Pairs {
        let mut p = rfc_request();
        add_signature(
            &mut p,
            "sig1",
            &input.replace("\"k1\"", &format!("\"{key_id}\"")),
            secret,
        );
        p
    }

    fn ring(keys: &[(&str, &[u8])]) -> KeyRing {
        let mut ring = KeyRing::new();
        for (id, secret) in keys {
            assert_eq!(ring.add(id, secret), Ok(()));
        }
        ring
    }

    fn strict() -> Requirements {
        Requirements {
            components: ["@method", "@authority", "@path", "@query", "content-digest"]
                .map(String::from)
                .to_vec(),
            ..Requirements::default()
        }
    }

    fn lenient() -> Requirements {
        Requirements {
            components: Vec::new(),
            max_age_s: None,
            require_created: false,
            ..Requirements::default()
        }
    }

    fn check_strict(p: &Pairs, now: u64) -> Result<Verified, SigError> {
        verify(&map(p), &ring(&[("k1", S1)]), &strict(), now)
    }

    #[test]
    fn rfc_9421_b25_hmac_sha256_is_reproduced_byte_for_byte() {
        let mut p = rfc_request();
        p.push((
            "signature-input".to_owned(),
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#.to_owned(),
        ));
        p.push((
            "signature".to_owned(),
            "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:".to_owned(),
        ));
        let base = concat!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
            "\"@authority\": example.com\n",
            "\"content-type\": application/json\n",
            "\"@signature-params\": (\"date\" \"@authority\" \"content-type\")",
            ";created=1618884473;keyid=\"test-shared-secret\"",
        );
        assert_eq!(base_text(&p, "sig-b25"), base);
        let secret = rfc_secret();
        assert_eq!(secret.len(), 64);
        assert_eq!(
            BASE64.encode(mac(base.as_bytes(), &secret)),
            "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="
        );

        let keys = ring(&[("test-shared-secret", &secret)]);
        let req = Requirements {
            components: ["date", "@authority", "content-type"]
                .map(String::from)
                .to_vec(),
            ..Requirements::default()
        };
        assert_eq!(req.validate(), Ok(()));
        let verified = verify(&map(&p), &keys, &req, NOW).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(verified.label, "sig-b25");
        assert_eq!(verified.key_id, "test-shared-secret");
        assert_eq!(verified.created, Some(CREATED));
        assert_eq!(verified.expires, None);
        assert_eq!(verified.nonce, None);
        assert_eq!(verified.fresh_until_s, Some(CREATED + 300 + 30));
        assert!(!verified.covers_content_digest);
        let published = BASE64
            .decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")
            .unwrap_or_default();
        assert_eq!(verified.id.as_slice(), &Sha256::digest(&published)[..16]);
        assert_eq!(verified.id_hex().len(), 32);

        // HTTP/1.1 as in the RFC: Host instead of :authority.
        let mut http1 = p.clone();
        http1.retain(|(n, _)| n != ":authority");
        http1.push(("host".to_owned(), "example.com".to_owned()));
        assert!(verify(&map(&http1), &keys, &req, NOW).is_ok());
        // Appendix B.4: fields not covered may change or be added.
        let mut extra = p.clone();
        set(&mut extra, "content-length", "19");
        extra.push(("x-forwarded-for".to_owned(), "192.0.2.1".to_owned()));
        assert!(verify(&map(&extra), &keys, &req, NOW).is_ok());
        // ... and covered ones may not.
        let mut other_host = p.clone();
        set(&mut other_host, ":authority", "example.org");
        assert_eq!(
            verify(&map(&other_host), &keys, &req, NOW),
            Err(SigError::Invalid)
        );
        // The example is from 2021: with today's clock it is stale.
        assert_eq!(
            verify(&map(&p), &keys, &req, 1_700_000_000),
            Err(SigError::Expired)
        );
    }

    #[test]
    fn rfc_9421_appendix_b_signature_bases() {
        let mut p = rfc_request();
        p.push((
            "signature-input".to_owned(),
            concat!(
                r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd", "#,
                r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss", "#,
                r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519", "#,
                r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
            )
            .to_owned(),
        ));
        assert_eq!(
            base_text(&p, "sig-b21"),
            r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
        );
        assert_eq!(
            base_text(&p, "sig-b23"),
            concat!(
                "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
                "\"@method\": POST\n",
                "\"@path\": /foo\n",
                "\"@query\": ?param=Value&Pet=dog\n",
                "\"@authority\": example.com\n",
                "\"content-type\": application/json\n",
                "\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n",
                "\"content-length\": 18\n",
                "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\"",
            )
        );
        assert_eq!(
            base_text(&p, "sig-b26"),
            concat!(
                "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
                "\"@method\": POST\n",
                "\"@path\": /foo\n",
                "\"@authority\": example.com\n",
                "\"content-type\": application/json\n",
                "\"content-length\": 18\n",
                "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
            )
        );
        // @query-param is not supported.
        assert_eq!(
            signature_base(&map(&p), "sig-b22"),
            Err(SigError::Malformed)
        );
        // The test request's digest is RFC 9530's example.
        assert_eq!(
            digest::verify(RFC_DIGEST.as_bytes(), BODY),
            Ok(DigestAlg::Sha512)
        );
    }

    #[test]
    fn rfc_9421_section_2_2_derived_components() {
        let mut p = pairs(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "www.example.com"),
            (":path", "/path?param=value"),
        ]);
        let all = r#"s=("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query");keyid="k""#;
        set(&mut p, "signature-input", all);
        assert_eq!(
            base_text(&p, "s"),
            concat!(
                "\"@method\": POST\n",
                "\"@target-uri\": https://www.example.com/path?param=value\n",
                "\"@authority\": www.example.com\n",
                "\"@scheme\": https\n",
                "\"@request-target\": /path?param=value\n",
                "\"@path\": /path\n",
                "\"@query\": ?param=value\n",
                "\"@signature-params\": (\"@method\" \"@target-uri\" \"@authority\" \"@scheme\" \"@request-target\" \"@path\" \"@query\");keyid=\"k\"",
            )
        );
        let line = |p: &Pairs, component: &str| {
            let mut p = p.clone();
            set(&mut p, "signature-input", &format!("s=(\"{component}\")"));
            let base = base_text(&p, "s");
            base.lines().next().unwrap_or_default().to_owned()
        };
        for (path, query) in [
            (
                "/path?param=value&foo=bar&baz=batman",
                "?param=value&foo=bar&baz=batman",
            ),
            ("/path?queryString", "?queryString"),
            ("/path", "?"),
            ("/path?", "?"),
        ] {
            set(&mut p, ":path", path);
            assert_eq!(line(&p, "@query"), format!("\"@query\": {query}"));
            assert_eq!(line(&p, "@path"), "\"@path\": /path");
        }
        set(&mut p, ":path", "");
        assert_eq!(line(&p, "@path"), "\"@path\": /");
        for (scheme, authority, normalized) in [
            ("https", "Example.COM:443", "example.com"),
            ("https", "example.com:8443", "example.com:8443"),
            ("http", "example.com:80", "example.com"),
            ("http", "example.com:443", "example.com:443"),
            ("HTTPS", "[2001:DB8::1]:443", "[2001:db8::1]"),
        ] {
            set(&mut p, ":scheme", scheme);
            set(&mut p, ":authority", authority);
            assert_eq!(
                line(&p, "@authority"),
                format!("\"@authority\": {normalized}")
            );
        }
        set(&mut p, ":method", "CONNECT");
        set(&mut p, ":authority", "proxy.example:8443");
        assert_eq!(
            line(&p, "@request-target"),
            "\"@request-target\": proxy.example:8443"
        );
        // A derived component the request cannot provide.
        let mut bare = pairs(&[(":method", "GET")]);
        for component in ["@authority", "@path", "@query", "@scheme", "@target-uri"] {
            set(
                &mut bare,
                "signature-input",
                &format!("s=(\"{component}\")"),
            );
            assert_eq!(
                signature_base(&map(&bare), "s"),
                Err(SigError::Components),
                "{component}"
            );
        }
    }

    #[test]
    fn rfc_9421_section_2_1_header_fields() {
        let mut p = pairs(&[
            ("host", "www.example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
            ("x-ows-header", "   Leading and trailing whitespace.   "),
            ("cache-control", "max-age=60"),
            ("cache-control", "   must-revalidate"),
            ("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
            ("x-empty-header", ""),
            ("example-header", "value, with, lots"),
            ("example-header", "of, commas"),
        ]);
        set(
            &mut p,
            "signature-input",
            r#"s=("host" "date" "x-ows-header" "cache-control" "example-dict" "x-empty-header" "example-header" "example-header";bs)"#,
        );
        assert_eq!(
            base_text(&p, "s"),
            concat!(
                "\"host\": www.example.com\n",
                "\"date\": Tue, 20 Apr 2021 02:07:56 GMT\n",
                "\"x-ows-header\": Leading and trailing whitespace.\n",
                "\"cache-control\": max-age=60, must-revalidate\n",
                "\"example-dict\": a=1,    b=2;x=1;y=2,   c=(a   b   c)\n",
                "\"x-empty-header\": \n",
                "\"example-header\": value, with, lots, of, commas\n",
                "\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:\n",
                "\"@signature-params\": (\"host\" \"date\" \"x-ows-header\" \"cache-control\" \"example-dict\" \"x-empty-header\" \"example-header\" \"example-header\";bs)",
            )
        );
        // Section 2.1.2: dictionary members by key.
        set(
            &mut p,
            "example-dict",
            "  a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid",
        );
        set(
            &mut p,
            "signature-input",
            r#"s=("example-dict";key="a" "example-dict";key="d" "example-dict";key="b" "example-dict";key="c")"#,
        );
        assert_eq!(
            base_text(&p, "s"),
            concat!(
                "\"example-dict\";key=\"a\": (1 2)\n",
                "\"example-dict\";key=\"d\": (5 6);valid\n",
                "\"example-dict\";key=\"b\": 3\n",
                "\"example-dict\";key=\"c\": 4;aa=bb\n",
                "\"@signature-params\": (\"example-dict\";key=\"a\" \"example-dict\";key=\"d\" \"example-dict\";key=\"b\" \"example-dict\";key=\"c\")",
            )
        );
        for missing in [
            r#"s=("example-dict";key="zz")"#,
            r#"s=("date";key="a")"#,
            r#"s=("x-absent")"#,
            r#"s=("x-absent";bs)"#,
        ] {
            set(&mut p, "signature-input", missing);
            assert_eq!(
                signature_base(&map(&p), "s"),
                Err(SigError::Components),
                "{missing}"
            );
        }
    }

    #[test]
    fn every_form_of_a_covered_content_digest_binds_the_body() {
        let basic = Requirements::default();
        for form in [
            "\"content-digest\";bs",
            "\"content-digest\";key=\"sha-512\"",
        ] {
            let input = format!(
                r#"("@method" "@authority" "@path" "@query" {form});created={CREATED};keyid="k1""#
            );
            let p = signed(&input, "k1", S1);
            let verified = verify(&map(&p), &ring(&[("k1", S1)]), &basic, NOW)
                .unwrap_or_else(|e| unreachable!("{form}: {e}"));
            assert!(verified.covers_content_digest, "{form}");
        }
    }

    #[test]
    fn a_full_signature_verifies_and_reports_what_it_covers() {
        let p = signed(FULL, "k1", S1);
        let verified = check_strict(&p, NOW).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(verified.key_id, "k1");
        assert_eq!(verified.nonce.as_deref(), Some("n-1"));
        assert!(verified.covers_content_digest);
        assert_eq!(verified.fresh_until_s, Some(CREATED + 330));
        // The identifier is stable and is not the signature itself.
        let again = check_strict(&p, NOW + 1).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(again.id, verified.id);
        let sig = get(&p, "signature");
        assert!(!sig.contains(&BASE64.encode(verified.id)));
        let other = check_strict(&signed(&FULL.replace("n-1", "n-2"), "k1", S1), NOW)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_ne!(other.id, verified.id);
        // The body is bound through the covered digest.
        let digest = get(&p, "content-digest");
        assert!(digest::verify(digest.as_bytes(), BODY).is_ok());
        assert_eq!(
            digest::verify(digest.as_bytes(), br#"{"hello": "mallory"}"#),
            Err(DigestError::Mismatch)
        );
    }

    #[test]
    fn tampering_with_any_covered_component_is_invalid() {
        let p = signed(FULL, "k1", S1);
        let evil_digest = digest::content_digest(DigestAlg::Sha256, b"{}");
        for (name, value) in [
            (":method", "PUT"),
            (":method", "post"),
            (":path", "/bar?param=Value&Pet=dog"),
            (":path", "/foo?param=Value&Pet=cat"),
            (":path", "/foo?param=Value&Pet=dog&admin=1"),
            (":path", "/foo"),
            (":authority", "evil.example"),
            ("content-type", "text/plain"),
            ("content-digest", evil_digest.as_str()),
        ] {
            let mut tampered = p.clone();
            set(&mut tampered, name, value);
            assert_eq!(
                check_strict(&tampered, NOW),
                Err(SigError::Invalid),
                "{name}"
            );
        }
        // A second line of a covered header changes its combined value.
        let mut doubled = p.clone();
        doubled.push(("content-type".to_owned(), "text/html".to_owned()));
        assert_eq!(check_strict(&doubled, NOW), Err(SigError::Invalid));
        // Changing the signed parameters breaks the @signature-params line.
        let mut params = p.clone();
        let input = get(&p, "signature-input").replace("n-1", "n-9");
        set(&mut params, "signature-input", &input);
        assert_eq!(check_strict(&params, NOW), Err(SigError::Invalid));
        // Or the signature itself.
        let mut flipped = p.clone();
        let sig = get(&p, "signature");
        let pos = sig.len() - 5;
        let swapped = if &sig[pos..pos + 1] == "A" { "B" } else { "A" };
        set(
            &mut flipped,
            "signature",
            &format!("{}{swapped}{}", &sig[..pos], &sig[pos + 1..]),
        );
        assert_eq!(check_strict(&flipped, NOW), Err(SigError::Invalid));
        // The wrong secret under the right key id.
        assert_eq!(
            check_strict(&signed(FULL, "k1", S2), NOW),
            Err(SigError::Invalid)
        );
    }

    #[test]
    fn age_expiry_and_clock_skew() {
        let p = signed(FULL, "k1", S1);
        assert!(check_strict(&p, CREATED + 300 + 30).is_ok());
        assert_eq!(check_strict(&p, CREATED + 300 + 31), Err(SigError::Expired));
        assert!(check_strict(&p, CREATED - 30).is_ok());
        assert_eq!(check_strict(&p, CREATED - 31), Err(SigError::Future));
        assert_eq!(check_strict(&p, 0), Err(SigError::Future));
        assert_eq!(check_strict(&p, u64::MAX), Err(SigError::Expired));

        let expiring = signed(&format!("{FULL};expires={}", CREATED + 5), "k1", S1);
        let verified =
            check_strict(&expiring, CREATED + 35).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(verified.expires, Some(CREATED + 5));
        assert_eq!(verified.fresh_until_s, Some(CREATED + 35));
        assert_eq!(
            check_strict(&expiring, CREATED + 36),
            Err(SigError::Expired)
        );

        // Without a maximum age only `expires` bounds a signature.
        let unbounded = Requirements {
            max_age_s: None,
            ..strict()
        };
        let keys = ring(&[("k1", S1)]);
        let verified = verify(&map(&p), &keys, &unbounded, CREATED + 86_400)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(verified.fresh_until_s, None);
        assert_eq!(
            verify(&map(&expiring), &keys, &unbounded, CREATED + 36),
            Err(SigError::Expired)
        );
        // Created is required by default, optional on request.
        let no_created = signed(&FULL.replace(";created=1618884473", ""), "k1", S1);
        assert_eq!(check_strict(&no_created, NOW), Err(SigError::Malformed));
        let optional = Requirements {
            require_created: false,
            ..strict()
        };
        assert!(verify(&map(&no_created), &keys, &optional, NOW).is_ok());
    }

    #[test]
    fn unknown_keys_and_missing_components() {
        let p = signed(FULL, "k1", S1);
        assert_eq!(
            verify(&map(&p), &ring(&[("k2", S1)]), &strict(), NOW),
            Err(SigError::UnknownKey)
        );
        assert_eq!(
            verify(&map(&p), &KeyRing::new(), &strict(), NOW),
            Err(SigError::UnknownKey)
        );
        // Required but not covered.
        let no_query = signed(&FULL.replace(" \"@query\"", ""), "k1", S1);
        assert_eq!(check_strict(&no_query, NOW), Err(SigError::Components));
        let no_digest = signed(&FULL.replace(" \"content-digest\"", ""), "k1", S1);
        assert_eq!(check_strict(&no_digest, NOW), Err(SigError::Components));
        // Covered but absent from the request.
        let mut absent = signed(FULL, "k1", S1);
        absent.retain(|(n, _)| n != "content-type");
        assert_eq!(check_strict(&absent, NOW), Err(SigError::Components));
        let mut no_path = signed(FULL, "k1", S1);
        no_path.retain(|(n, _)| n != ":path");
        assert_eq!(check_strict(&no_path, NOW), Err(SigError::Components));
        // A member of a dictionary field does not stand for the whole field.
        let mut partial = rfc_request();
        set(
            &mut partial,
            "content-digest",
            &format!("{RFC_DIGEST}, md5=:AA==:"),
        );
        add_signature(
            &mut partial,
            "sig1",
            r#"("@method" "@authority" "@path" "@query" "content-digest";key="sha-512");created=1618884473;keyid="k1""#,
            S1,
        );
        assert_eq!(check_strict(&partial, NOW), Err(SigError::Components));
        // @target-uri covers authority, path and query.
        let mut target = rfc_request();
        add_signature(
            &mut target,
            "sig1",
            r#"("@method" "@target-uri" "content-digest");created=1618884473;keyid="k1""#,
            S1,
        );
        assert!(check_strict(&target, NOW).is_ok());
        let mut request_target = rfc_request();
        add_signature(
            &mut request_target,
            "sig1",
            r#"("@method" "@request-target" "content-digest");created=1618884473;keyid="k1""#,
            S1,
        );
        assert_eq!(
            check_strict(&request_target, NOW),
            Err(SigError::Components)
        );
        let without_authority = Requirements {
            components: ["@method", "@path", "@query"].map(String::from).to_vec(),
            ..strict()
        };
        assert!(verify(
            &map(&request_target),
            &ring(&[("k1", S1)]),
            &without_authority,
            NOW
        )
        .is_ok());
    }

    #[test]
    fn keys_rotate_under_new_ids_or_the_same_id() {
        let two_ids = ring(&[("k1", S1), ("k2", S2)]);
        for (id, secret) in [("k1", S1), ("k2", S2)] {
            let verified = verify(&map(&signed(FULL, id, secret)), &two_ids, &strict(), NOW)
                .unwrap_or_else(|e| unreachable!("{id}: {e}"));
            assert_eq!(verified.key_id, id);
        }
        assert_eq!(
            verify(&map(&signed(FULL, "k2", S1)), &two_ids, &strict(), NOW),
            Err(SigError::Invalid)
        );
        let one_id = ring(&[("k", S1), ("k", S2)]);
        assert_eq!(one_id.len(), 2);
        for secret in [S1, S2] {
            assert!(verify(&map(&signed(FULL, "k", secret)), &one_id, &strict(), NOW).is_ok());
        }
        assert_eq!(
            verify(&map(&signed(FULL, "k", S3)), &one_id, &strict(), NOW),
            Err(SigError::Invalid)
        );
        // A client signing with both keys passes a verifier knowing either.
        let mut both = rfc_request();
        add_signature(&mut both, "old", &FULL.replace("\"k1\"", "\"k-old\""), S1);
        add_signature(&mut both, "new", &FULL.replace("\"k1\"", "\"k-new\""), S2);
        let old_only = ring(&[("k-old", S1)]);
        let new_only = ring(&[("k-new", S2)]);
        let by = |keys: &KeyRing| {
            verify(&map(&both), keys, &strict(), NOW)
                .map(|v| v.label)
                .unwrap_or_default()
        };
        assert_eq!(by(&old_only), "old");
        assert_eq!(by(&new_only), "new");
    }

    #[test]
    fn key_ring_refuses_weak_keys_and_hides_secrets() {
        let mut keys = KeyRing::new();
        assert!(keys.is_empty());
        assert_eq!(keys.add("k", &[7; 31]), Err(KeyError::SecretTooShort));
        assert_eq!(keys.add("", S1), Err(KeyError::InvalidKeyId));
        assert_eq!(keys.add("k\u{e9}", S1), Err(KeyError::InvalidKeyId));
        assert_eq!(keys.add("k\n", S1), Err(KeyError::InvalidKeyId));
        assert_eq!(keys.add(&"k".repeat(257), S1), Err(KeyError::InvalidKeyId));
        assert_eq!(keys.add("k 1", b"a secret of thirty-two bytes!!!!"), Ok(()));
        assert!(keys.contains("k 1"));
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("k 1") && !shown.contains("thirty"),
            "{shown}"
        );
    }

    #[test]
    fn signature_selection_by_order_and_label() {
        let keys = ring(&[("k1", S1)]);
        let mut p = rfc_request();
        // Someone else's signature first (an algorithm not supported here).
        add_signature(
            &mut p,
            "theirs",
            r#"("@method");created=1618884473;keyid="k1";alg="ed25519""#,
            S1,
        );
        add_signature(&mut p, "ours", FULL, S1);
        add_signature(&mut p, "later", FULL, S2);
        let v = verify(&map(&p), &keys, &strict(), NOW).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(v.label, "ours");
        // A configured label is the only one considered.
        let pinned = |label: &str| Requirements {
            label: Some(label.to_owned()),
            ..strict()
        };
        assert_eq!(
            verify(&map(&p), &keys, &pinned("later"), NOW),
            Err(SigError::Invalid)
        );
        assert_eq!(
            verify(&map(&p), &keys, &pinned("theirs"), NOW),
            Err(SigError::Malformed)
        );
        assert_eq!(
            verify(&map(&p), &keys, &pinned("nope"), NOW),
            Err(SigError::Missing)
        );
        // Only one signature is MAC-checked: the first acceptable one.
        let mut bad_first = rfc_request();
        add_signature(&mut bad_first, "a", FULL, S2);
        add_signature(&mut bad_first, "b", FULL, S1);
        assert_eq!(
            verify(&map(&bad_first), &keys, &strict(), NOW),
            Err(SigError::Invalid)
        );
        // With none acceptable, the first one's reason.
        let mut none = rfc_request();
        add_signature(&mut none, "a", &FULL.replace(" \"@path\"", ""), S1);
        add_signature(&mut none, "b", &FULL.replace("\"k1\"", "\"k9\""), S1);
        assert_eq!(
            verify(&map(&none), &keys, &strict(), NOW),
            Err(SigError::Components)
        );
        // An explicit alg is accepted when it is ours.
        let explicit = signed(&format!("{FULL};alg=\"hmac-sha256\""), "k1", S1);
        assert!(check_strict(&explicit, NOW).is_ok());
    }

    #[test]
    fn tag_and_nonce_requirements() {
        let keys = ring(&[("k1", S1)]);
        let tagged = Requirements {
            tag: Some("palisade-api".to_owned()),
            require_nonce: true,
            ..strict()
        };
        assert_eq!(tagged.validate(), Ok(()));
        let with_tag = signed(&format!("{FULL};tag=\"palisade-api\""), "k1", S1);
        let v =
            verify(&map(&with_tag), &keys, &tagged, NOW).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(v.tag.as_deref(), Some("palisade-api"));
        for input in [
            FULL.to_owned(),
            format!("{FULL};tag=\"other-app\""),
            FULL.replace(";nonce=\"n-1\"", ";tag=\"palisade-api\""),
            FULL.replace("\"n-1\"", "\"\"") + ";tag=\"palisade-api\"",
        ] {
            assert_eq!(
                verify(&map(&signed(&input, "k1", S1)), &keys, &tagged, NOW),
                Err(SigError::Malformed),
                "{input}"
            );
        }
    }

    #[test]
    fn missing_fields() {
        let keys = ring(&[("k1", S1)]);
        let p = signed(FULL, "k1", S1);
        let mut no_input = p.clone();
        no_input.retain(|(n, _)| n != "signature-input");
        let mut no_sig = p.clone();
        no_sig.retain(|(n, _)| n != "signature");
        let mut empty = p.clone();
        set(&mut empty, "signature", "  ");
        for case in [rfc_request(), no_input, no_sig, empty] {
            assert_eq!(
                verify(&map(&case), &keys, &lenient(), NOW),
                Err(SigError::Missing)
            );
        }
        assert_eq!(
            verify(&HeaderMap::default(), &keys, &lenient(), NOW),
            Err(SigError::Missing)
        );
    }

    #[test]
    fn malformed_structured_fields_are_refused() {
        let keys = ring(&[("k1", S1)]);
        let good_sig = BASE64.encode([0u8; 32]);
        let inputs = [
            "sig1",
            "sig1=",
            "sig1=(",
            r#"sig1=("@method""#,
            r#"sig1=("@method);keyid="k1""#,
            r#"sig1="@method";keyid="k1""#,
            r#"sig1=(@method);keyid="k1""#,
            r#"sig1=(method);keyid="k1""#,
            r#"sig1=("@method" 1);keyid="k1""#,
            r#"sig1=("@method");keyid=k1"#,
            r#"sig1=("@method");keyid="k1";created=abc"#,
            r#"sig1=("@method");keyid="k1";created="1618884473""#,
            r#"sig1=("@method");keyid="k1";created=-1"#,
            r#"sig1=("@method");keyid="k1";created=1618884473.5"#,
            r#"sig1=("@method");keyid="k1";created=9999999999999999"#,
            r#"sig1=("@method");keyid="k1";expires=?1"#,
            r#"sig1=("@method");keyid="k1";nonce=1"#,
            r#"sig1=("@method");keyid="k1";tag=:AA==:"#,
            r#"sig1=("@method");keyid="k1";alg=hmac-sha256"#,
            r#"sig1=("@method");keyid="k1";alg="rsa-pss-sha512""#,
            r#"sig1=("@method");keyid="k1";alg="HMAC-SHA256""#,
            r#"sig1=("@method");created=1618884473"#,
            r#"sig1=("@method");keyid="k1";keyid="k2""#,
            r#"sig1=("@method" "@method");keyid="k1""#,
            r#"sig1=("content-type" "content-type");keyid="k1""#,
            r#"sig1=("@METHOD");keyid="k1""#,
            r#"sig1=("@status");keyid="k1""#,
            r#"sig1=("@signature-params");keyid="k1""#,
            r#"sig1=("@query-param";name="Pet");keyid="k1""#,
            r#"sig1=("@method";bs);keyid="k1""#,
            r#"sig1=("Content-Type");keyid="k1""#,
            r#"sig1=("content type");keyid="k1""#,
            r#"sig1=(":path");keyid="k1""#,
            r#"sig1=("");keyid="k1""#,
            r#"sig1=("content-type";sf);keyid="k1""#,
            r#"sig1=("content-type";req);keyid="k1""#,
            r#"sig1=("content-type";tr);keyid="k1""#,
            r#"sig1=("content-type";bs=?0);keyid="k1""#,
            r#"sig1=("content-type";key=a);keyid="k1""#,
            r#"sig1=("content-type";bs;key="a");keyid="k1""#,
            r#"sig1=("content-type";bs;bs);keyid="k1""#,
            r#"sig1=("@method");keyid="k1", sig1=("@path");keyid="k1""#,
            r#"sig1=("@method");keyid="k1",,"#,
            r#"sig1=("@method");keyid="k1" x"#,
            r#"SIG1=("@method");keyid="k1""#,
            r#"sig1=("@method");keyid="k1";created=@1618884473"#,
            r#"sig1=("@method");keyid=%"k1""#,
        ];
        for input in inputs {
            let mut p = rfc_request();
            set(&mut p, "signature-input", input);
            set(&mut p, "signature", &format!("sig1=:{good_sig}:"));
            assert_eq!(
                verify(&map(&p), &keys, &lenient(), NOW),
                Err(SigError::Malformed),
                "{input}"
            );
        }
        let signatures = [
            "sig1".to_owned(),
            "sig1=".to_owned(),
            "sig1=:".to_owned(),
            "sig1=::".to_owned(),
            "sig1=:not base64!:".to_owned(),
            "sig1=:AAAA:".to_owned(),
            format!("sig1=:{good_sig}AAAA:"),
            format!("sig1=\"{good_sig}\""),
            format!("sig1=(:{good_sig}:)"),
            format!("sig2=:{good_sig}:"),
            format!("sig1=:{good_sig}:, sig1=:{good_sig}:"),
            format!("sig1=:{good_sig}:;a;a"),
            format!("sig1=:{}:", &good_sig[1..]),
        ];
        for signature in &signatures {
            let mut p = rfc_request();
            set(&mut p, "signature-input", r#"sig1=("@method");keyid="k1""#);
            set(&mut p, "signature", signature);
            assert_eq!(
                verify(&map(&p), &keys, &lenient(), NOW),
                Err(SigError::Malformed),
                "{signature}"
            );
        }
        // Well formed but wrong: the zero MAC.
        let mut p = rfc_request();
        set(&mut p, "signature-input", r#"sig1=("@method");keyid="k1""#);
        set(&mut p, "signature", &format!("sig1=:{good_sig}:"));
        assert_eq!(
            verify(&map(&p), &keys, &lenient(), NOW),
            Err(SigError::Invalid)
        );
    }

    #[test]
    fn huge_and_non_utf8_inputs_are_refused() {
        let keys = ring(&[("k1", S1)]);
        let p = signed(FULL, "k1", S1);
        let input = get(&p, "signature-input");
        let sig = get(&p, "signature");
        let many_labels: String = (0..100)
            .map(|n| format!("l{n}=(\"@method\");keyid=\"k1\", "))
            .collect::<String>()
            + &input;
        let long_list = format!(
            "sig1=({});keyid=\"k1\"",
            (0..2000)
                .map(|n| format!("\"x-h{n}\""))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let many_params = format!(
            "{input}{}",
            (0..70).map(|n| format!(";p{n}=1")).collect::<String>()
        );
        let long_nonce = FULL.replace("n-1", &"n".repeat(10_000));
        for huge in [many_labels, long_list, many_params, long_nonce] {
            let mut q = p.clone();
            set(&mut q, "signature-input", &huge);
            assert_eq!(check_strict(&q, NOW), Err(SigError::Malformed));
        }
        // Too many components, or large headers covered several ways.
        let many: String = (0..=MAX_MEMBERS).map(|n| format!("\"x-h{n}\" ")).collect();
        let members: String = (0..1200).map(|n| format!("m{n}=1, ")).collect();
        let mut big = p.clone();
        for name in ["x-big1", "x-big2", "x-big3"] {
            big.push((name.to_owned(), format!("{members}z=2")));
        }
        assert!(members.len() > 9_000 && members.len() * 4 / 3 < MAX_COMPONENT_LEN);
        for input in [
            format!("sig1=({many});keyid=\"k1\""),
            r#"sig1=("x-big1" "x-big1";bs "x-big2" "x-big2";bs "x-big3" "x-big3";bs);keyid="k1""#
                .to_owned(),
            format!(
                "sig1=({});keyid=\"k1\"",
                (0..7)
                    .map(|n| format!("\"x-big1\";key=\"m{n}\""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ] {
            let mut q = big.clone();
            set(&mut q, "signature-input", &input);
            assert_eq!(
                verify(&map(&q), &keys, &lenient(), NOW),
                Err(SigError::Malformed),
                "{input}"
            );
        }
        let mut within = big.clone();
        set(
            &mut within,
            "signature-input",
            r#"sig1=("x-big1" "x-big1";bs "x-big2";key="z");keyid="k1""#,
        );
        assert_eq!(
            verify(&map(&within), &keys, &lenient(), NOW),
            Err(SigError::Invalid)
        );

        // Split over lines, the field is still bounded as a whole.
        let mut lines = p.clone();
        for n in 0..200 {
            lines.push((
                "signature-input".to_owned(),
                format!("x{n}=(\"@method\" \"@path\");keyid=\"nobody\""),
            ));
        }
        assert_eq!(check_strict(&lines, NOW), Err(SigError::Malformed));

        // Non-UTF-8 and control bytes in the signature fields.
        let mut bad_input = input.clone().into_bytes();
        bad_input[6] = 0xff;
        let mut bad_sig = sig.clone().into_bytes();
        bad_sig[8] = 0x80;
        let pairs_with = |name: &'static str, value: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
            p.iter()
                .map(|(n, v)| {
                    let v = if n == name {
                        value.to_vec()
                    } else {
                        v.clone().into_bytes()
                    };
                    (n.clone().into_bytes(), v)
                })
                .collect()
        };
        for (name, value) in [
            ("signature-input", bad_input.as_slice()),
            ("signature", bad_sig.as_slice()),
            (
                "signature-input",
                b"sig1=(\"@method\");keyid=\"k\x001\"".as_slice(),
            ),
        ] {
            let owned = pairs_with(name, value);
            let headers = HeaderMap::from_pairs(
                owned
                    .iter()
                    .map(|(n, v)| (n.as_slice(), v.as_slice()))
                    .collect(),
            );
            assert_eq!(
                verify(&headers, &keys, &strict(), NOW),
                Err(SigError::Malformed)
            );
        }
        // Obs-text in a covered header is signed as bytes; a line break is
        // refused rather than let into the signature base.
        let mut obs = rfc_request();
        obs.push(("x-note".to_owned(), String::new()));
        let input = r#"("x-note");created=1618884473;keyid="k1""#;
        let owned_for = |note: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
            obs.iter()
                .map(|(n, v)| {
                    let v = if n == "x-note" {
                        note.to_vec()
                    } else {
                        v.clone().into_bytes()
                    };
                    (n.clone().into_bytes(), v)
                })
                .collect()
        };
        let req = Requirements {
            components: vec!["x-note".to_owned()],
            ..strict()
        };
        for (note, expected) in [
            (b"caf\xe9".as_slice(), Ok(())),
            (b"a\nb".as_slice(), Err(SigError::Malformed)),
            (b"a\r\nb".as_slice(), Err(SigError::Malformed)),
        ] {
            let mut owned = owned_for(note);
            owned.push((
                b"signature-input".to_vec(),
                format!("sig1={input}").into_bytes(),
            ));
            let view = |o: &[(Vec<u8>, Vec<u8>)]| -> Vec<(Vec<u8>, Vec<u8>)> { o.to_vec() };
            let base = signature_base(
                &HeaderMap::from_pairs(
                    owned
                        .iter()
                        .map(|(n, v)| (n.as_slice(), v.as_slice()))
                        .collect(),
                ),
                "sig1",
            );
            let mut full = view(&owned);
            let mac_b64 = BASE64.encode(mac(&base.clone().unwrap_or_default(), S1));
            full.push((
                b"signature".to_vec(),
                format!("sig1=:{mac_b64}:").into_bytes(),
            ));
            let headers = HeaderMap::from_pairs(
                full.iter()
                    .map(|(n, v)| (n.as_slice(), v.as_slice()))
                    .collect(),
            );
            assert_eq!(
                verify(&headers, &keys, &req, NOW).map(|_| ()),
                expected,
                "{}",
                String::from_utf8_lossy(note)
            );
            if expected.is_ok() {
                assert!(base.is_ok_and(|b| b.windows(4).any(|w| w == b"caf\xe9")));
            }
        }
    }

    #[test]
    fn mutated_signature_fields_never_panic_nor_pass() {
        let keys = ring(&[("k1", S1)]);
        let p = signed(FULL, "k1", S1);
        assert!(check_strict(&p, NOW).is_ok());
        let squash = |s: &[u8]| -> Vec<u8> {
            s.iter()
                .copied()
                .filter(|b| !matches!(b, b' ' | b'\t'))
                .collect()
        };
        let fillers = [
            0u8, 0xff, 0x80, b' ', b'\t', b',', b';', b'=', b':', b'"', b'(', b')', b'?', b'a',
            b'1', b'-', b'*', b'\\', b'%', b'@', b'/', b'+',
        ];
        let mut runs = 0;
        for name in ["signature-input", "signature"] {
            let original = get(&p, name).into_bytes();
            let try_value = |value: &[u8]| {
                let owned: Vec<(&[u8], &[u8])> = p
                    .iter()
                    .map(|(n, v)| {
                        let v = if n == name { value } else { v.as_bytes() };
                        (n.as_bytes(), v)
                    })
                    .collect();
                let result = verify(&HeaderMap::from_pairs(owned), &keys, &strict(), NOW);
                if result.is_ok() {
                    // Only optional whitespace and base64 padding (which RFC
                    // 9651 lets parsers do without) may change.
                    let mut unpadded = original.clone();
                    if unpadded.ends_with(b"=:") {
                        unpadded.remove(unpadded.len() - 2);
                    }
                    assert!(
                        squash(value) == squash(&original) || squash(value) == squash(&unpadded),
                        "{}",
                        String::from_utf8_lossy(value)
                    );
                }
            };
            for at in 0..original.len() {
                try_value(&original[..at]);
                let mut removed = original.clone();
                removed.remove(at);
                try_value(&removed);
                runs += 2;
                for filler in fillers {
                    let mut replaced = original.clone();
                    replaced[at] = filler;
                    try_value(&replaced);
                    let mut inserted = original.clone();
                    inserted.insert(at, filler);
                    try_value(&inserted);
                    runs += 2;
                }
            }
        }
        assert!(runs > 5_000, "{runs}");
    }

    #[test]
    fn requirements_are_validated_once() {
        assert_eq!(Requirements::default().validate(), Ok(()));
        assert_eq!(strict().validate(), Ok(()));
        let with = |components: &[&str]| Requirements {
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            ..Requirements::default()
        };
        for name in DERIVED_COMPONENTS {
            assert_eq!(with(&[name]).validate(), Ok(()));
        }
        for bad in [
            &["@status"][..],
            &["@query-param"],
            &["@signature-params"],
            &["Content-Type"],
            &["content type"],
            &[""],
            &[":path"],
            &["@method", "@method"],
        ] {
            assert!(with(bad).validate().is_err(), "{bad:?}");
        }
        let labelled = |label: &str| Requirements {
            label: Some(label.to_owned()),
            ..Requirements::default()
        };
        assert_eq!(labelled("sig-1").validate(), Ok(()));
        assert!(labelled("Sig").validate().is_err());
        assert!(labelled("").validate().is_err());
        let tagged = Requirements {
            tag: Some("caf\u{e9}".to_owned()),
            ..Requirements::default()
        };
        assert!(tagged.validate().is_err());
    }

    #[test]
    fn reason_codes_are_stable_and_distinct() {
        let codes: Vec<&str> = SigError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            codes,
            [
                "sig.missing",
                "sig.malformed",
                "sig.unknown_key",
                "sig.components",
                "sig.expired",
                "sig.future",
                "sig.invalid"
            ]
        );
        assert_eq!(SigError::Invalid.to_string(), "sig.invalid");
        let digest_codes: Vec<&str> = DigestError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            digest_codes,
            [
                "digest.missing",
                "digest.malformed",
                "digest.mismatch",
                "digest.unsupported"
            ]
        );
    }
}
