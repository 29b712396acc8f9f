//! Stateless proof-of-work challenge: a softer answer than a deny for a
//! client that looks like a bot.
//!
//! Threat: cheap automated traffic (scrapers, credential stuffers) that
//! cannot be told from people by its headers alone. A challenge makes every
//! new client (fingerprint and IP prefix) spend CPU time once before it is
//! served, which a person's browser hardly notices and a bot farm pays per
//! identity. A solved challenge earns a pass cookie that lowers the bot score
//! for a while, so the work is not asked again on every request.
//!
//! Protocol (all integers are unsigned; `||` is concatenation; base64url is
//! RFC 4648 section 5 without padding, and trailing bits must be zero, so
//! each token has exactly one text form):
//!
//! - Binding `B` = fingerprint as 8 bytes little-endian `||` the IP key:
//!   `0x00` when there is none, `0x04 || 4 bytes` for IPv4, `0x06 || 16
//!   bytes` for IPv6. The IP key is the client address already cut to its
//!   configured prefix. `B` is never sent: the verifier recomputes it from
//!   the request.
//! - Challenge token = base64url(`F || seal || tag`), 51 characters, where
//!   `F` = `0x01` (format: challenge v1) `||` expiry (unix seconds, 8 bytes
//!   big-endian) `||` difficulty (1 byte) `||` salt (8 bytes, from the
//!   caller's randomness), and with `L` = `"palisade challenge v1"`:
//!   `seal` = HMAC-SHA256(key, `L || 0x00 || F`), first 4 bytes;
//!   `tag` = HMAC-SHA256(key, `L || 0x01 || F || B`), first 16 bytes.
//! - Solution = `<token>.<nonce>`, the nonce 1 to 20 characters of
//!   `[A-Za-z0-9_-]` (the page uses a decimal counter). It is solved when
//!   SHA-256(the solution's ASCII bytes, i.e. token `||` `"."` `||` nonce)
//!   starts with at least `difficulty` zero bits (most significant bit of
//!   the first byte first). API clients send it in the [`SOLUTION_HEADER`]
//!   header, the browser page in the [`SOLUTION_COOKIE`] cookie.
//! - Pass = base64url(`P || seal || tag`), 39 characters, where `P` =
//!   `0x02` (format: pass v1) `||` expiry (8 bytes big-endian) and seal and
//!   tag are computed as above with `L` = `"palisade pass v1"`. Sent back in
//!   the [`PASS_COOKIE`] cookie.
//!
//! Verification order and errors: inputs over [`MAX_INPUT_LEN`] bytes, of
//! the wrong length or alphabet, or of another format byte are `Malformed`
//! before any hashing; a wrong `seal` (forged or altered token, another
//! key) is `BadMac`; then `Expired` (`now > expiry`); then a wrong `tag`
//! with a good `seal` is `WrongClient` (a genuine token or pass carried to
//! another fingerprint or IP prefix: worth counting, it is how solving farms
//! show); then a token with a difficulty outside 1..=[`MAX_DIFFICULTY`] is
//! `TooHard`; last, an unsolved nonce is `NotSolved`. The seal depends on the
//! token only, so telling `BadMac` from `WrongClient` reveals nothing about
//! the binding; being 32 bits, it only sorts errors (a forgery passes it
//! once in 2^32 tries and still meets the 128-bit tag). MACs are compared in constant time. The two labels and the
//! format bytes keep a pass from being taken for a token and the reverse.
//!
//! Assumptions and limits:
//!
//! - Stateless, hence replayable: the same client may present a solution
//!   again until the token expires, and a pass until it expires. That is by
//!   design (either would earn it a pass anyway); another client cannot.
//! - Clock: expiry is checked against the proxy's clock. Proxies sharing the
//!   key should keep their clocks in sync; skew lengthens or shortens
//!   validity by as much.
//! - Key rotation: one key; changing it invalidates every outstanding token
//!   and pass, which costs each client one more challenge. The key must be
//!   as private as any HMAC secret and at least [`MIN_SECRET_LEN`] bytes.
//! - Clients whose IP prefix changes (mobile networks) are challenged again.
//! - The page needs a secure context for `crypto.subtle` (HTTPS, or
//!   `http://localhost`); elsewhere it says so. It reloads the page, so it
//!   suits GET navigations; API clients use the JSON body.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;

type HmacSha256 = Hmac<Sha256>;

/// Header in which API clients send a solution.
pub const SOLUTION_HEADER: &str = "x-palisade-pow";
/// Cookie in which the page sends a solution.
pub const SOLUTION_COOKIE: &str = "palisade_pow";
/// Cookie that carries a pass.
pub const PASS_COOKIE: &str = "palisade_pass";
/// `algorithm` of the JSON body: what an API client must compute.
pub const ALGORITHM: &str = "sha256-leading-zero-bits";

/// Hardest difficulty issued: 2^28 hashes on average is already minutes of
/// a browser's time; more would only lock people out.
pub const MAX_DIFFICULTY: u8 = 28;
/// Longest solution or pass looked at; anything longer is `Malformed` before
/// any hashing, so the work per request is bounded.
pub const MAX_INPUT_LEN: usize = 256;
/// Longest nonce: 20 decimal digits hold any `u64` counter.
pub const MAX_NONCE_LEN: usize = 20;
/// Shortest secret the configuration should accept (RFC 2104: the hash
/// output size). [`ChallengeKey::new`] itself takes any length.
pub const MIN_SECRET_LEN: usize = 32;
/// Lifetime of the page's solution cookie: it only has to survive the
/// reload that follows.
pub const SOLUTION_COOKIE_MAX_AGE_S: u32 = 120;

/// Length of a challenge token, in characters.
pub const TOKEN_LEN: usize = 51;
/// Length of a pass, in characters.
pub const PASS_LEN: usize = 39;

const CHALLENGE_LABEL: &[u8] = b"palisade challenge v1";
const PASS_LABEL: &[u8] = b"palisade pass v1";
const FORMAT_CHALLENGE_V1: u8 = 0x01;
const FORMAT_PASS_V1: u8 = 0x02;

const SEAL_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// Format, expiry, difficulty, salt.
const CHALLENGE_FIELDS: usize = 1 + 8 + 1 + 8;
/// Format, expiry.
const PASS_FIELDS: usize = 1 + 8;
const CHALLENGE_BYTES: usize = CHALLENGE_FIELDS + SEAL_LEN + TAG_LEN;
const PASS_BYTES: usize = PASS_FIELDS + SEAL_LEN + TAG_LEN;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// HMAC-SHA256 key of challenges and passes (from the `bot.challenge.secret`
/// configuration). Kept as a keyed HMAC state, so the key is hashed once;
/// `Debug` does not show it.
#[derive(Clone)]
pub struct ChallengeKey {
    /// `None` cannot happen (HMAC takes keys of any length); if it did,
    /// nothing would verify: fail closed.
    mac: Option<HmacSha256>,
}

impl ChallengeKey {
    pub fn new(secret: &[u8]) -> Self {
        ChallengeKey {
            mac: <HmacSha256 as Mac>::new_from_slice(secret).ok(),
        }
    }
}

impl fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeKey").finish_non_exhaustive()
    }
}

/// What a challenge and a pass are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub fingerprint: u64,
    /// The client address already cut to its configured prefix.
    pub ip_key: Option<IpAddr>,
}

impl Binding {
    fn feed(self, mac: &mut HmacSha256) {
        mac.update(&self.fingerprint.to_le_bytes());
        match self.ip_key {
            None => mac.update(&[0x00]),
            Some(IpAddr::V4(ip)) => {
                mac.update(&[0x04]);
                mac.update(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                mac.update(&[0x06]);
                mac.update(&ip.octets());
            }
        }
    }
}

/// A challenge as issued: what the page and the JSON body show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// After clamping to 1..=[`MAX_DIFFICULTY`].
    pub difficulty: u8,
    /// Unix seconds.
    pub expires_s: u64,
}

/// Why a solution or pass was refused. The string form is stable: it
/// appears in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeError {
    /// Too long, wrong length or alphabet, bad nonce, or another format.
    Malformed,
    /// The seal does not match: forged, altered, or made with another key.
    BadMac,
    /// Past its expiry.
    Expired,
    /// A genuine token or pass bound to another fingerprint or IP prefix.
    WrongClient,
    /// The hash of the solution has too few leading zero bits.
    NotSolved,
    /// A genuine token whose difficulty is outside 1..=[`MAX_DIFFICULTY`]:
    /// not one this version issues.
    TooHard,
}

impl ChallengeError {
    pub const ALL: [ChallengeError; 6] = [
        ChallengeError::Malformed,
        ChallengeError::BadMac,
        ChallengeError::Expired,
        ChallengeError::WrongClient,
        ChallengeError::NotSolved,
        ChallengeError::TooHard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeError::Malformed => "challenge.malformed",
            ChallengeError::BadMac => "challenge.bad_mac",
            ChallengeError::Expired => "challenge.expired",
            ChallengeError::WrongClient => "challenge.wrong_client",
            ChallengeError::NotSolved => "challenge.not_solved",
            ChallengeError::TooHard => "challenge.too_hard",
        }
    }
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ChallengeError {}

/// The seal: HMAC(key, label || 0x00 || fields), unbound.
fn seal_mac(key: &ChallengeKey, label: &[u8], fields: &[u8]) -> Option<HmacSha256> {
    let mut mac = key.mac.clone()?;
    mac.update(label);
    mac.update(&[0x00]);
    mac.update(fields);
    Some(mac)
}

/// The tag: HMAC(key, label || 0x01 || fields || binding).
fn tag_mac(
    key: &ChallengeKey,
    label: &[u8],
    fields: &[u8],
    binding: Binding,
) -> Option<HmacSha256> {
    let mut mac = key.mac.clone()?;
    mac.update(label);
    mac.update(&[0x01]);
    mac.update(fields);
    binding.feed(&mut mac);
    Some(mac)
}

/// `fields || seal || tag`, base64url. With no key (which cannot happen)
/// the MACs are zeros and the result never verifies.
fn seal_and_encode(key: &ChallengeKey, label: &[u8], fields: &[u8], binding: Binding) -> String {
    let seal = seal_mac(key, label, fields).map(|m| m.finalize().into_bytes());
    let tag = tag_mac(key, label, fields, binding).map(|m| m.finalize().into_bytes());
    let mut raw = Vec::with_capacity(CHALLENGE_BYTES);
    raw.extend_from_slice(fields);
    match seal {
        Some(seal) => raw.extend(seal.iter().take(SEAL_LEN)),
        None => raw.extend([0; SEAL_LEN]),
    }
    match tag {
        Some(tag) => raw.extend(tag.iter().take(TAG_LEN)),
        None => raw.extend([0; TAG_LEN]),
    }
    B64.encode(raw)
}

/// Decodes exactly `N` bytes from exactly `chars` canonical base64url
/// characters.
fn decode<const N: usize>(text: &[u8], chars: usize) -> Option<[u8; N]> {
    if text.len() != chars {
        return None;
    }
    // decode_slice wants room for its estimate, which rounds up.
    let mut buf = [0u8; 64];
    let n = B64.decode_slice(text, &mut buf).ok()?;
    if n != N {
        return None;
    }
    buf.get(..N)?.try_into().ok()
}

/// Checks seal, expiry, then the tag.
fn authenticate(
    key: &ChallengeKey,
    label: &[u8],
    fields: &[u8],
    seal_and_tag: &[u8],
    expires_s: u64,
    now_s: u64,
    binding: Binding,
) -> Result<(), ChallengeError> {
    let (seal, tag) = seal_and_tag
        .split_at_checked(SEAL_LEN)
        .ok_or(ChallengeError::Malformed)?;
    let seal_ok =
        seal_mac(key, label, fields).is_some_and(|m| m.verify_truncated_left(seal).is_ok());
    if !seal_ok {
        return Err(ChallengeError::BadMac);
    }
    if now_s > expires_s {
        return Err(ChallengeError::Expired);
    }
    let tag_ok =
        tag_mac(key, label, fields, binding).is_some_and(|m| m.verify_truncated_left(tag).is_ok());
    if !tag_ok {
        return Err(ChallengeError::WrongClient);
    }
    Ok(())
}

/// Issues a challenge for `binding`, valid `ttl_s` seconds. `difficulty` is
/// clamped to 1..=[`MAX_DIFFICULTY`] (a larger one is a configuration bug
/// that validation should catch; clamping keeps the page solvable). `salt`
/// is the caller's randomness: it makes each token, hence each puzzle,
/// unique, so solutions cannot be precomputed.
pub fn issue(
    key: &ChallengeKey,
    binding: Binding,
    now_s: u64,
    ttl_s: u32,
    difficulty: u8,
    salt: u64,
) -> Issued {
    let difficulty = difficulty.clamp(1, MAX_DIFFICULTY);
    let expires_s = now_s.saturating_add(u64::from(ttl_s));
    let mut fields = [0u8; CHALLENGE_FIELDS];
    let bytes = std::iter::once(FORMAT_CHALLENGE_V1)
        .chain(expires_s.to_be_bytes())
        .chain(std::iter::once(difficulty))
        .chain(salt.to_be_bytes());
    for (dst, src) in fields.iter_mut().zip(bytes) {
        *dst = src;
    }
    Issued {
        token: seal_and_encode(key, CHALLENGE_LABEL, &fields, binding),
        difficulty,
        expires_s,
    }
}

/// Verifies a solution `<token>.<nonce>` (see the module documentation).
pub fn verify_solution(
    key: &ChallengeKey,
    binding: Binding,
    now_s: u64,
    solution: &[u8],
) -> Result<(), ChallengeError> {
    if solution.len() > MAX_INPUT_LEN {
        return Err(ChallengeError::Malformed);
    }
    let dot = solution
        .iter()
        .position(|&b| b == b'.')
        .ok_or(ChallengeError::Malformed)?;
    let token = solution.get(..dot).ok_or(ChallengeError::Malformed)?;
    let nonce = solution.get(dot + 1..).ok_or(ChallengeError::Malformed)?;
    if nonce.is_empty()
        || nonce.len() > MAX_NONCE_LEN
        || !nonce
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ChallengeError::Malformed);
    }
    let raw: [u8; CHALLENGE_BYTES] = decode(token, TOKEN_LEN).ok_or(ChallengeError::Malformed)?;
    let (fields, seal_and_tag) = raw
        .split_first_chunk::<CHALLENGE_FIELDS>()
        .ok_or(ChallengeError::Malformed)?;
    let (format, rest) = fields.split_first().ok_or(ChallengeError::Malformed)?;
    let (expires, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(ChallengeError::Malformed)?;
    let difficulty = rest.first().copied().ok_or(ChallengeError::Malformed)?;
    if *format != FORMAT_CHALLENGE_V1 {
        return Err(ChallengeError::Malformed);
    }
    let expires_s = u64::from_be_bytes(*expires);
    authenticate(
        key,
        CHALLENGE_LABEL,
        fields,
        seal_and_tag,
        expires_s,
        now_s,
        binding,
    )?;
    if !(1..=MAX_DIFFICULTY).contains(&difficulty) {
        return Err(ChallengeError::TooHard);
    }
    if leading_zero_bits(&Sha256::digest(solution)) < u32::from(difficulty) {
        return Err(ChallengeError::NotSolved);
    }
    Ok(())
}

fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        bits += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    bits
}

/// Issues a pass for `binding`, valid `pass_ttl_s` seconds; the caller
/// sends it with [`pass_cookie`] once a solution verified.
pub fn issue_pass(key: &ChallengeKey, binding: Binding, now_s: u64, pass_ttl_s: u32) -> String {
    let expires_s = now_s.saturating_add(u64::from(pass_ttl_s));
    let mut fields = [0u8; PASS_FIELDS];
    let bytes = std::iter::once(FORMAT_PASS_V1).chain(expires_s.to_be_bytes());
    for (dst, src) in fields.iter_mut().zip(bytes) {
        *dst = src;
    }
    seal_and_encode(key, PASS_LABEL, &fields, binding)
}

/// Verifies a pass (the [`PASS_COOKIE`] value).
pub fn verify_pass(
    key: &ChallengeKey,
    binding: Binding,
    now_s: u64,
    pass: &[u8],
) -> Result<(), ChallengeError> {
    if pass.len() > MAX_INPUT_LEN {
        return Err(ChallengeError::Malformed);
    }
    let raw: [u8; PASS_BYTES] = decode(pass, PASS_LEN).ok_or(ChallengeError::Malformed)?;
    let (fields, seal_and_tag) = raw
        .split_first_chunk::<PASS_FIELDS>()
        .ok_or(ChallengeError::Malformed)?;
    let (format, expires) = fields
        .split_first_chunk::<1>()
        .ok_or(ChallengeError::Malformed)?;
    if *format != [FORMAT_PASS_V1] {
        return Err(ChallengeError::Malformed);
    }
    let expires: [u8; 8] = expires.try_into().map_err(|_| ChallengeError::Malformed)?;
    authenticate(
        key,
        PASS_LABEL,
        fields,
        seal_and_tag,
        u64::from_be_bytes(expires),
        now_s,
        binding,
    )
}

/// Value of cookie `name` in a `cookie` header value (`a=b; c=d`): the
/// first match, surrounding blanks and one pair of double quotes removed;
/// `None` if absent. Names match exactly (case-sensitive, as browsers send
/// them).
pub fn cookie<'a>(cookie_header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    cookies(cookie_header, name).next()
}

/// Every value of cookie `name` in a `cookie` header value, in order.
pub use crate::core::request::cookie_values as cookies;

/// The `Set-Cookie` value for a pass. `HttpOnly`: page scripts never need
/// it; `SameSite=Lax`: sent on top-level navigations from other sites, so
/// links into the site do not meet the challenge again.
pub fn pass_cookie(pass: &str, ttl_s: u32, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{PASS_COOKIE}={pass}; Max-Age={ttl_s}; Path=/; HttpOnly; SameSite=Lax{secure}")
}

/// The page's script. Static (the token comes from data attributes), so a
/// Content-Security-Policy can allow it by hash ([`page_csp`]). `solve` is
/// the whole proof of work; the tests run this very text under Node.
const SCRIPT: &str = r#"
"use strict";
async function solve(token, difficulty) {
  const enc = new TextEncoder(), full = difficulty >> 3, rest = difficulty & 7;
  for (let n = 0; ; n += 256) {
    const batch = [];
    for (let i = 0; i < 256; i++) batch.push(crypto.subtle.digest("SHA-256", enc.encode(token + "." + (n + i))));
    const hashes = await Promise.all(batch);
    for (let i = 0; i < 256; i++) {
      const b = new Uint8Array(hashes[i]);
      let k = 0;
      while (k < full && b[k] === 0) k++;
      if (k === full && (rest === 0 || b[full] >> (8 - rest) === 0)) return String(n + i);
    }
  }
}
(function () {
  const el = document.getElementById("pow"), msg = document.getElementById("msg");
  const say = function (t) { msg.textContent = t; };
  if (typeof crypto !== "object" || !crypto || !crypto.subtle) {
    say("This check needs a current browser and a secure (HTTPS) connection.");
    return;
  }
  let tries = 0;
  try {
    const s = (sessionStorage.getItem("palisade_pow") || "0,0").split(","), now = Date.now();
    tries = now - s[1] < 60000 ? +s[0] || 0 : 0;
    sessionStorage.setItem("palisade_pow", (tries + 1) + "," + now);
  } catch (e) {}
  if (tries >= 3) { say("Your browser could not be verified. Please try again later."); return; }
  const token = el.dataset.token;
  solve(token, +el.dataset.difficulty).then(function (nonce) {
    document.cookie = "palisade_pow=" + token + "." + nonce + "; Path=/; Max-Age=120; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
    location.reload();
  }, function () { say("Your browser could not be verified."); });
})();
"#;

const STYLE: &str =
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:15vh auto;padding:0 1em;color:#222}";

/// The HTML page for a browser (the status is the caller's; send it with
/// `cache-control: no-store` and [`page_csp`]). Self-contained: no external
/// resources. Only palisade-made values (base64url token, a number) are
/// inserted, so nothing needs escaping.
pub fn page(issued: &Issued) -> String {
    let parts: [&str; 9] = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"robots\" content=\"noindex\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Checking your browser</title><style>",
        STYLE,
        "</style></head>\n<body><main id=\"pow\" data-token=\"",
        &issued.token,
        "\" data-difficulty=\"",
        &issued.difficulty.to_string(),
        "\"><h1>Checking your browser</h1><p id=\"msg\">This takes a moment and happens once.</p>\
         <noscript><p>Please enable JavaScript to continue.</p></noscript></main>\n<script>",
        SCRIPT,
        "</script></body></html>\n",
    ];
    parts.concat()
}

/// A `content-security-policy` for [`page`]: nothing but its own inline
/// script and style, allowed by hash.
pub fn page_csp() -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        b64.encode(Sha256::digest(SCRIPT)),
        b64.encode(Sha256::digest(STYLE)),
    )
}

/// The JSON body for an API client: the token and how to solve it.
pub fn json_body(issued: &Issued, request_id: &str) -> String {
    serde_json::json!({
        "error": "challenge",
        "reason": "bot.challenge",
        "request_id": request_id,
        "challenge": {
            "token": issued.token,
            "difficulty": issued.difficulty,
            "algorithm": ALGORITHM,
            "expires": issued.expires_s,
            "header": SOLUTION_HEADER,
            "format": "<token>.<nonce>",
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = &[7; 32];
    const A: Binding = Binding {
        fingerprint: 0x0123_4567_89ab_cdef,
        ip_key: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0))),
    };

    fn key() -> ChallengeKey {
        ChallengeKey::new(SECRET)
    }

    /// The first decimal nonce that solves `token` (the page's search).
    fn solve(token: &str, difficulty: u8) -> String {
        (0u64..)
            .map(|n| format!("{token}.{n}"))
            .find(|s| leading_zero_bits(&Sha256::digest(s)) >= u32::from(difficulty))
            .unwrap_or_default()
    }

    /// The first decimal nonce that does not solve `token`.
    fn unsolved(token: &str, difficulty: u8) -> String {
        (0u64..)
            .map(|n| format!("{token}.{n}"))
            .find(|s| leading_zero_bits(&Sha256::digest(s)) < u32::from(difficulty))
            .unwrap_or_default()
    }

    fn raw_of(text: &str) -> Vec<u8> {
        B64.decode(text).unwrap_or_default()
    }

    #[test]
    fn issue_solve_verify() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        assert_eq!(issued.token.len(), TOKEN_LEN);
        assert_eq!(issued.difficulty, 8);
        assert_eq!(issued.expires_s, NOW + 300);
        let solution = solve(&issued.token, 8);
        assert_eq!(verify_solution(&key, A, NOW, solution.as_bytes()), Ok(()));
        // Valid up to and including the expiry second.
        assert_eq!(
            verify_solution(&key, A, NOW + 300, solution.as_bytes()),
            Ok(())
        );
        assert_eq!(
            verify_solution(&key, A, NOW + 301, solution.as_bytes()),
            Err(ChallengeError::Expired)
        );
        // Another salt, another token.
        assert_ne!(issue(&key, A, NOW, 300, 8, 43).token, issued.token);
    }

    #[test]
    fn nonce_alphabet_is_the_documented_one() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 1, 1);
        // Difficulty 1: half of all nonces solve it; find one per shape.
        for stem in ["aZ_-", "x", "-", "012345678901234567"] {
            let found = (0..64)
                .map(|i| format!("{}.{stem}{i}", issued.token))
                .find(|s| {
                    s.len() - TOKEN_LEN - 1 <= MAX_NONCE_LEN
                        && leading_zero_bits(&Sha256::digest(s)) >= 1
                });
            let s = found.unwrap_or_default();
            assert_eq!(verify_solution(&key, A, NOW, s.as_bytes()), Ok(()), "{s}");
        }
        let twenty = format!("{}.{}", issued.token, "9".repeat(20));
        assert_ne!(
            verify_solution(&key, A, NOW, twenty.as_bytes()),
            Err(ChallengeError::Malformed)
        );
        let twenty_one = format!("{}.{}", issued.token, "9".repeat(21));
        assert_eq!(
            verify_solution(&key, A, NOW, twenty_one.as_bytes()),
            Err(ChallengeError::Malformed)
        );
    }

    #[test]
    fn solution_bound_to_client() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        let solution = solve(&issued.token, 8);
        let others = [
            Binding {
                fingerprint: A.fingerprint ^ 1,
                ..A
            },
            Binding {
                fingerprint: A.fingerprint ^ (1 << 63),
                ..A
            },
            Binding {
                ip_key: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 3, 0))),
                ..A
            },
            Binding { ip_key: None, ..A },
            Binding {
                ip_key: Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 0).to_ipv6_mapped())),
                ..A
            },
        ];
        for other in others {
            assert_eq!(
                verify_solution(&key, other, NOW, solution.as_bytes()),
                Err(ChallengeError::WrongClient),
                "{other:?}"
            );
        }
        // And the other way round: issued without an IP, shown with one.
        let none = Binding { ip_key: None, ..A };
        let issued = issue(&key, none, NOW, 300, 8, 42);
        let solution = solve(&issued.token, 8);
        assert_eq!(
            verify_solution(&key, none, NOW, solution.as_bytes()),
            Ok(())
        );
        assert_eq!(
            verify_solution(&key, A, NOW, solution.as_bytes()),
            Err(ChallengeError::WrongClient)
        );
        let v6 = Binding {
            fingerprint: 9,
            ip_key: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0))),
        };
        let issued = issue(&key, v6, NOW, 300, 8, 1);
        let solution = solve(&issued.token, 8);
        assert_eq!(verify_solution(&key, v6, NOW, solution.as_bytes()), Ok(()));
        let v6b = Binding {
            ip_key: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 0))),
            ..v6
        };
        assert_eq!(
            verify_solution(&key, v6b, NOW, solution.as_bytes()),
            Err(ChallengeError::WrongClient)
        );
    }

    #[test]
    fn another_key_is_bad_mac() {
        let issued = issue(&key(), A, NOW, 300, 8, 42);
        let solution = solve(&issued.token, 8);
        let other = ChallengeKey::new(&[8; 32]);
        assert_eq!(
            verify_solution(&other, A, NOW, solution.as_bytes()),
            Err(ChallengeError::BadMac)
        );
        let pass = issue_pass(&key(), A, NOW, 600);
        assert_eq!(
            verify_pass(&other, A, NOW, pass.as_bytes()),
            Err(ChallengeError::BadMac)
        );
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        let raw = raw_of(&issued.token);
        assert_eq!(raw.len(), CHALLENGE_BYTES);
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut flipped = raw.clone();
                if let Some(b) = flipped.get_mut(i) {
                    *b ^= 1 << bit;
                }
                let token = B64.encode(&flipped);
                // Any nonce: the MACs are checked before the work.
                let got = verify_solution(&key, A, NOW, format!("{token}.0").as_bytes());
                let want = if i == 0 {
                    ChallengeError::Malformed
                } else if i < CHALLENGE_FIELDS + SEAL_LEN {
                    ChallengeError::BadMac
                } else {
                    ChallengeError::WrongClient
                };
                assert_eq!(got, Err(want), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_character_change_is_rejected() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        let solution = solve(&issued.token, 8);
        let alphabet: Vec<u8> = (0..=255u8).collect();
        for i in 0..issued.token.len() {
            for &c in &alphabet {
                let mut bytes = solution.clone().into_bytes();
                match bytes.get_mut(i) {
                    Some(b) if *b != c => *b = c,
                    _ => continue,
                }
                assert!(
                    verify_solution(&key, A, NOW, &bytes).is_err(),
                    "position {i} byte {c}"
                );
            }
        }
    }

    #[test]
    fn unsolved_nonce() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 16, 42);
        let solution = unsolved(&issued.token, 16);
        assert_eq!(
            verify_solution(&key, A, NOW, solution.as_bytes()),
            Err(ChallengeError::NotSolved)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        let t = &issued.token;
        let huge = format!("{t}.{}", "1".repeat(1000));
        let mut non_utf8 = format!("{t}.").into_bytes();
        non_utf8.extend([0xff, 0xfe]);
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b".".to_vec(),
            b"..........".to_vec(),
            t.clone().into_bytes(),
            format!("{t}.").into_bytes(),
            format!(".{t}").into_bytes(),
            format!("{t}.1.2").into_bytes(),
            format!("{t}..1").into_bytes(),
            format!("{t}.1+").into_bytes(),
            format!("{t}.1=").into_bytes(),
            format!("{t}. 1").into_bytes(),
            format!("{t}=.1").into_bytes(),
            format!("{}.1", &t[1..]).into_bytes(),
            format!("{t}A.1").into_bytes(),
            format!("{}.1", "A".repeat(TOKEN_LEN)).into_bytes(),
            format!("{}.1", "a".repeat(TOKEN_LEN)).into_bytes(),
            format!("{}.1", "_".repeat(TOKEN_LEN)).into_bytes(),
            huge.into_bytes(),
            non_utf8,
            vec![0xff; MAX_INPUT_LEN + 1],
            vec![b'.'; 10_000],
        ];
        for case in &cases {
            assert_eq!(
                verify_solution(&key, A, NOW, case),
                Err(ChallengeError::Malformed),
                "{}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(
                verify_pass(&key, A, NOW, case),
                Err(ChallengeError::Malformed),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // Every byte value in every position of a pass-length input.
        for c in 0..=255u8 {
            let input = vec![c; PASS_LEN];
            assert!(verify_pass(&key, A, NOW, &input).is_err());
        }
    }

    #[test]
    fn difficulty_clamped_and_out_of_range_refused() {
        let key = key();
        assert_eq!(issue(&key, A, NOW, 300, 0, 1).difficulty, 1);
        assert_eq!(issue(&key, A, NOW, 300, 29, 1).difficulty, MAX_DIFFICULTY);
        assert_eq!(issue(&key, A, NOW, 300, 255, 1).difficulty, MAX_DIFFICULTY);
        // A genuine token of a difficulty this version never issues.
        for difficulty in [0u8, MAX_DIFFICULTY + 1, 255] {
            let mut fields = [0u8; CHALLENGE_FIELDS];
            let bytes = std::iter::once(FORMAT_CHALLENGE_V1)
                .chain((NOW + 300).to_be_bytes())
                .chain(std::iter::once(difficulty))
                .chain(5u64.to_be_bytes());
            for (dst, src) in fields.iter_mut().zip(bytes) {
                *dst = src;
            }
            let token = seal_and_encode(&key, CHALLENGE_LABEL, &fields, A);
            assert_eq!(
                verify_solution(&key, A, NOW, format!("{token}.0").as_bytes()),
                Err(ChallengeError::TooHard),
                "{difficulty}"
            );
        }
        // Expiry saturates instead of wrapping.
        assert_eq!(issue(&key, A, u64::MAX - 1, 300, 8, 1).expires_s, u64::MAX);
    }

    #[test]
    fn pass_round_trip() {
        let key = key();
        let pass = issue_pass(&key, A, NOW, 3600);
        assert_eq!(pass.len(), PASS_LEN);
        assert_eq!(verify_pass(&key, A, NOW, pass.as_bytes()), Ok(()));
        assert_eq!(verify_pass(&key, A, NOW + 3600, pass.as_bytes()), Ok(()));
        assert_eq!(
            verify_pass(&key, A, NOW + 3601, pass.as_bytes()),
            Err(ChallengeError::Expired)
        );
        let other = Binding {
            fingerprint: 1,
            ..A
        };
        assert_eq!(
            verify_pass(&key, other, NOW, pass.as_bytes()),
            Err(ChallengeError::WrongClient)
        );
        let other_ip = Binding { ip_key: None, ..A };
        assert_eq!(
            verify_pass(&key, other_ip, NOW, pass.as_bytes()),
            Err(ChallengeError::WrongClient)
        );
        // Every bit flip.
        let raw = raw_of(&pass);
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut flipped = raw.clone();
                if let Some(b) = flipped.get_mut(i) {
                    *b ^= 1 << bit;
                }
                let got = verify_pass(&key, A, NOW, B64.encode(&flipped).as_bytes());
                assert!(got.is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn pass_and_challenge_do_not_mix() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 8, 42);
        let solution = solve(&issued.token, 8);
        let pass = issue_pass(&key, A, NOW, 3600);
        for wrong in [issued.token.as_str(), solution.as_str()] {
            assert_eq!(
                verify_pass(&key, A, NOW, wrong.as_bytes()),
                Err(ChallengeError::Malformed)
            );
        }
        assert_eq!(
            verify_solution(&key, A, NOW, format!("{pass}.0").as_bytes()),
            Err(ChallengeError::Malformed)
        );
        // Same layouts, other label: the MACs alone keep them apart.
        let mut pass_fields = [0u8; PASS_FIELDS];
        let bytes = std::iter::once(FORMAT_PASS_V1).chain((NOW + 60).to_be_bytes());
        for (dst, src) in pass_fields.iter_mut().zip(bytes) {
            *dst = src;
        }
        let cross = seal_and_encode(&key, CHALLENGE_LABEL, &pass_fields, A);
        assert_eq!(
            verify_pass(&key, A, NOW, cross.as_bytes()),
            Err(ChallengeError::BadMac)
        );
        let raw = raw_of(&issued.token);
        let fields = raw.get(..CHALLENGE_FIELDS).unwrap_or_default();
        let cross = seal_and_encode(&key, PASS_LABEL, fields, A);
        assert_eq!(
            verify_solution(&key, A, NOW, solve(&cross, 8).as_bytes()),
            Err(ChallengeError::BadMac)
        );
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80, 0]), 0);
        assert_eq!(leading_zero_bits(&[0x01, 0]), 7);
        assert_eq!(leading_zero_bits(&[0, 0, 0x01, 0xff]), 23);
        assert_eq!(leading_zero_bits(&[0, 0x10]), 11);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
    }

    #[test]
    fn error_codes_are_distinct() {
        let codes: Vec<&str> = ChallengeError::ALL.iter().map(|e| e.as_str()).collect();
        for (i, c) in codes.iter().enumerate() {
            assert!(c.starts_with("challenge."), "{c}");
            assert!(!codes.iter().skip(i + 1).any(|d| d == c), "{c}");
        }
        assert_eq!(
            ChallengeError::WrongClient.to_string(),
            "challenge.wrong_client"
        );
    }

    #[test]
    fn key_debug_hides_the_secret() {
        let debug = format!(
            "{:?}",
            ChallengeKey::new(b"super-secret-value-0123456789abcdef")
        );
        assert_eq!(debug, "ChallengeKey { .. }");
    }

    #[test]
    fn cookie_parsing() {
        let h: &[u8] = b"a=1; palisade_pass=abc; palisade_pass=second";
        assert_eq!(cookie(h, PASS_COOKIE), Some(&b"abc"[..]));
        assert_eq!(cookie(h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(h, "b"), None);
        assert_eq!(cookie(b"", PASS_COOKIE), None);
        assert_eq!(
            cookie(b"xpalisade_pass=1; palisade_passx=2", PASS_COOKIE),
            None
        );
        assert_eq!(
            cookie(b"xpalisade_pass=1; palisade_pass=3", PASS_COOKIE),
            Some(&b"3"[..])
        );
        assert_eq!(
            cookie(b"  palisade_pow = t.1 ;x=y", SOLUTION_COOKIE),
            Some(&b"t.1"[..])
        );
        assert_eq!(
            cookie(b"\tpalisade_pow=v\t", SOLUTION_COOKIE),
            Some(&b"v"[..])
        );
        assert_eq!(cookie(b"palisade_pass=; a=b", PASS_COOKIE), Some(&b""[..]));
        assert_eq!(cookie(b"palisade_pass=\"q\"", PASS_COOKIE), Some(&b"q"[..]));
        assert_eq!(cookie(b"palisade_pass=a=b", PASS_COOKIE), Some(&b"a=b"[..]));
        assert_eq!(cookie(b"palisade_pass;a=b", PASS_COOKIE), None);
        assert_eq!(cookie(b";;;=;=x", PASS_COOKIE), None);
        assert_eq!(cookie(b"Palisade_Pass=1", PASS_COOKIE), None);
        assert_eq!(
            cookie(b"a=\xff\xfe; palisade_pass=\xff", PASS_COOKIE),
            Some(&b"\xff"[..])
        );
        assert_eq!(cookie(b"=novalue", ""), Some(&b"novalue"[..]));
        let all: Vec<&[u8]> =
            cookies(b"palisade_pass=a; x=1; palisade_pass=b", PASS_COOKIE).collect();
        assert_eq!(all, [&b"a"[..], &b"b"[..]]);
    }

    #[test]
    fn pass_cookie_attributes() {
        assert_eq!(
            pass_cookie("P", 600, false),
            "palisade_pass=P; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            pass_cookie("P", 1, true),
            "palisade_pass=P; Max-Age=1; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        // What the caller sets comes back through `cookie` and verifies.
        let key = key();
        let pass = issue_pass(&key, A, NOW, 600);
        let set = pass_cookie(&pass, 600, true);
        let value = set.split(';').next().unwrap_or_default();
        let got = cookie(value.as_bytes(), PASS_COOKIE).unwrap_or_default();
        assert_eq!(verify_pass(&key, A, NOW, got), Ok(()));
    }

    fn attr<'h>(html: &'h str, name: &str) -> &'h str {
        let start = format!("{name}=\"");
        html.split_once(&start)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(value, _)| value)
    }

    fn script_of(html: &str) -> &str {
        html.split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script)
    }

    #[test]
    fn page_carries_the_challenge() {
        let issued = issue(&key(), A, NOW, 300, 16, 42);
        let html = page(&issued);
        assert_eq!(attr(&html, "data-token"), issued.token);
        assert_eq!(attr(&html, "data-difficulty"), "16");
        assert!(html.contains("<meta name=\"robots\" content=\"noindex\">"));
        assert!(html.contains("<noscript>"));
        assert!(html.contains("async function solve(token, difficulty)"));
        assert!(!html.contains("{token}") && !html.contains("{difficulty}"));
        assert!(!html.contains("{{") && !html.contains("}}"));
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("src="));
        assert!(html.len() < 3072, "{} bytes", html.len());
        assert_eq!(script_of(&html), SCRIPT);
        // The policy allows exactly this script and style.
        let csp = page_csp();
        let b64 = base64::engine::general_purpose::STANDARD;
        let script_hash = b64.encode(Sha256::digest(script_of(&html)));
        assert!(
            csp.contains(&format!("script-src 'sha256-{script_hash}'")),
            "{csp}"
        );
        let style = html
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .map_or("", |(style, _)| style);
        let style_hash = b64.encode(Sha256::digest(style));
        assert!(
            csp.contains(&format!("style-src 'sha256-{style_hash}'")),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none'"));
    }

    #[test]
    fn json_body_fields() {
        let issued = issue(&key(), A, NOW, 300, 16, 42);
        let body = json_body(&issued, "req-\"1\"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"], "challenge");
        assert_eq!(v["reason"], "bot.challenge");
        assert_eq!(v["request_id"], "req-\"1\"");
        let c = &v["challenge"];
        assert_eq!(c["token"], issued.token.as_str());
        assert_eq!(c["difficulty"], 16);
        assert_eq!(c["algorithm"], ALGORITHM);
        assert_eq!(c["expires"], NOW + 300);
        assert_eq!(c["header"], SOLUTION_HEADER);
        assert_eq!(c["format"], "<token>.<nonce>");
    }

    /// Runs the page's own script under Node with a stub DOM: what it puts
    /// in `document.cookie` before reloading, or what it tells the user.
    fn run_page_script(html: &str, prelude: &str) -> Option<(bool, String, String)> {
        let harness = r#"
let jar = "", said = "";
globalThis.document = {
  getElementById(id) {
    if (id === "pow") return { dataset: { token: TOKEN, difficulty: DIFFICULTY } };
    return { set textContent(t) { said = t; process.stderr.write(t); } };
  },
  set cookie(v) { jar = v; },
  get cookie() { return jar; },
};
globalThis.location = { protocol: "http:", reload() { process.stdout.write(jar); } };
"#;
        let json = |s: &str| serde_json::Value::from(s).to_string();
        let code = format!(
            "{prelude}\n{}\n{}",
            harness
                .replace("TOKEN", &json(attr(html, "data-token")))
                .replace("DIFFICULTY", &json(attr(html, "data-difficulty"))),
            script_of(html)
        );
        // From stdin, not `-e`: `-e` would expose Node's `crypto` module as
        // a global, which is not the Web Crypto object a browser has.
        let child = std::process::Command::new("node")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                eprintln!("skipped: cannot run node ({e})");
                return None;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            assert!(stdin.write_all(code.as_bytes()).is_ok());
        }
        let out = child.wait_with_output().ok()?;
        Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    #[test]
    fn page_script_solves_under_node() {
        let key = key();
        let issued = issue(&key, A, NOW, 300, 12, 0xdead_beef);
        let Some((ok, stdout, stderr)) = run_page_script(&page(&issued), "") else {
            return;
        };
        assert!(ok, "node failed: {stderr}");
        assert!(stderr.is_empty(), "the page said: {stderr}");
        let attributes = format!("; Path=/; Max-Age={SOLUTION_COOKIE_MAX_AGE_S}; SameSite=Lax");
        assert!(stdout.ends_with(&attributes), "{stdout}");
        let solution = cookie(stdout.as_bytes(), SOLUTION_COOKIE).unwrap_or_default();
        assert!(solution.starts_with(issued.token.as_bytes()), "{stdout}");
        assert_eq!(verify_solution(&key, A, NOW, solution), Ok(()), "{stdout}");
        // Node found the first solving nonce, as the Rust search does.
        assert_eq!(solution, solve(&issued.token, 12).as_bytes());
    }

    #[test]
    fn page_script_without_subtle_crypto_says_so() {
        let issued = issue(&key(), A, NOW, 300, 12, 1);
        let prelude = r#"Object.defineProperty(globalThis, "crypto", { value: undefined, configurable: true });"#;
        let Some((ok, stdout, stderr)) = run_page_script(&page(&issued), prelude) else {
            return;
        };
        assert!(ok, "node failed: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains("secure (HTTPS) connection"), "{stderr}");
    }
}
