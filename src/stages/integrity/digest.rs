//! `Content-Digest` (RFC 9530): checks that a request body is the one its
//! sender hashed.
//!
//! Threat: a body altered between a client that signed its request and the
//! upstream. An HTTP message signature (see [`crate::stages::integrity::signature`]) covers the
//! body only through the `content-digest` component: the signature proves the
//! header, and this module proves the header matches the body. A digest that
//! no signature covers proves nothing against an attacker, who can recompute
//! it; it only catches accidental corruption.
//!
//! Supported algorithms: `sha-256` and `sha-512`. Other keys of the
//! dictionary (including the insecure `md5`, `sha`, `unixsum`, ... of the
//! IANA registry) are ignored; a field naming none of the supported ones is
//! `digest.unsupported`. When several supported algorithms are listed, every
//! one of them must match: a sender cannot pair a good digest with a bad one
//! and let the verifier pick.
//!
//! The digest is over the content as received (after any `Content-Encoding`
//! the sender applied, before any decoding), which is what the filter sees.
//! Digests are public values, so they are compared with plain equality.
//!
//! The header is parsed once ([`ContentDigest::parse`], when the request
//! headers arrive, so a malformed field is refused before any body is
//! buffered) and the body is hashed as it streams ([`BodyDigest`]).

use crate::core::request::HeaderMap;
use crate::stages::integrity::signature::{combined_field, parse_dictionary};
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};
use std::fmt;

/// Longest `Content-Digest` field accepted (all lines together). Two
/// supported digests take about 150 bytes.
pub const MAX_FIELD_LEN: usize = 4096;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A supported digest algorithm, by its RFC 9530 registry key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

impl DigestAlg {
    pub const ALL: [DigestAlg; 2] = [DigestAlg::Sha256, DigestAlg::Sha512];

    /// The key of the algorithm in `Content-Digest`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "sha-256",
            DigestAlg::Sha512 => "sha-512",
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlg::Sha256 => 32,
            DigestAlg::Sha512 => 64,
        }
    }
}

pub use crate::core::reasons::DigestError;

/// The digests a `Content-Digest` field announces, for the supported
/// algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentDigest {
    sha256: Option<[u8; 32]>,
    sha512: Option<[u8; 64]>,
}

impl ContentDigest {
    /// Parses one `Content-Digest` field value (RFC 9530 section 2: a
    /// structured-field dictionary of algorithm keys to byte sequences).
    pub fn parse(value: &[u8]) -> Result<ContentDigest, DigestError> {
        if value.iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err(DigestError::Missing);
        }
        if value.len() > MAX_FIELD_LEN {
            return Err(DigestError::Malformed);
        }
        let dict = parse_dictionary(value).ok_or(DigestError::Malformed)?;
        let mut found = ContentDigest {
            sha256: None,
            sha512: None,
        };
        for (key, entry) in &dict {
            match key.as_str() {
                "sha-256" => found.sha256 = Some(digest_bytes(entry)?),
                "sha-512" => found.sha512 = Some(digest_bytes(entry)?),
                _ => {}
            }
        }
        if found.sha256.is_none() && found.sha512.is_none() {
            return Err(DigestError::Unsupported);
        }
        Ok(found)
    }

    /// The request's `Content-Digest`, every field line combined.
    pub fn from_headers(headers: &HeaderMap<'_>) -> Result<ContentDigest, DigestError> {
        match combined_field(headers, "content-digest", MAX_FIELD_LEN) {
            Ok(Some(value)) => ContentDigest::parse(&value),
            Ok(None) => Err(DigestError::Missing),
            Err(_) => Err(DigestError::Malformed),
        }
    }

    /// The algorithms listed, weakest first.
    pub fn algorithms(&self) -> impl Iterator<Item = DigestAlg> + '_ {
        DigestAlg::ALL.into_iter().filter(|alg| match alg {
            DigestAlg::Sha256 => self.sha256.is_some(),
            DigestAlg::Sha512 => self.sha512.is_some(),
        })
    }

    /// A hasher for the body, to feed chunk by chunk.
    pub fn verifier(&self) -> BodyDigest {
        BodyDigest {
            expected: *self,
            sha256: self.sha256.map(|_| Sha256::new()),
            sha512: self.sha512.map(|_| Sha512::new()),
        }
    }

    /// Checks a whole body; returns the strongest algorithm checked.
    pub fn check(&self, body: &[u8]) -> Result<DigestAlg, DigestError> {
        let mut verifier = self.verifier();
        verifier.update(body);
        verifier.finish()
    }
}

fn digest_bytes<const N: usize>(entry: &sfv::ListEntry) -> Result<[u8; N], DigestError> {
    match entry {
        sfv::ListEntry::Item(item) => item
            .bare_item
            .as_byte_sequence()
            .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
            .ok_or(DigestError::Malformed),
        sfv::ListEntry::InnerList(_) => Err(DigestError::Malformed),
    }
}

/// The body hashed so far, with the digests it must end up matching.
#[derive(Clone)]
pub struct BodyDigest {
    expected: ContentDigest,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyDigest")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl BodyDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(hasher) = &mut self.sha256 {
            hasher.update(chunk);
        }
        if let Some(hasher) = &mut self.sha512 {
            hasher.update(chunk);
        }
    }

    /// Every listed digest must match; returns the strongest one.
    pub fn finish(self) -> Result<DigestAlg, DigestError> {
        let mut strongest = None;
        if let (Some(hasher), Some(expected)) = (self.sha256, self.expected.sha256) {
            if hasher.finalize().as_slice() != expected.as_slice() {
                return Err(DigestError::Mismatch);
            }
            strongest = Some(DigestAlg::Sha256);
        }
        if let (Some(hasher), Some(expected)) = (self.sha512, self.expected.sha512) {
            if hasher.finalize().as_slice() != expected.as_slice() {
                return Err(DigestError::Mismatch);
            }
            strongest = Some(DigestAlg::Sha512);
        }
        strongest.ok_or(DigestError::Unsupported)
    }
}

/// Checks a body against a `Content-Digest` field value: every supported
/// algorithm listed must match. Returns the strongest algorithm checked.
pub fn verify(content_digest_header: &[u8], body: &[u8]) -> Result<DigestAlg, DigestError> {
    ContentDigest::parse(content_digest_header)?.check(body)
}

/// The `Content-Digest` field value for a body with one algorithm, e.g.
/// `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:` for
/// `{"hello": "world"}`.
pub fn content_digest(alg: DigestAlg, body: &[u8]) -> String {
    let encoded = match alg {
        DigestAlg::Sha256 => BASE64.encode(Sha256::digest(body)),
        DigestAlg::Sha512 => BASE64.encode(Sha512::digest(body)),
    };
    format!("{}=:{}:", alg.as_str(), encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = br#"{"hello": "world"}"#;
    // RFC 9530 section 2 / Appendix D.1 (and RFC 9421 Appendix B.2).
    const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    #[test]
    fn rfc_9530_examples_are_reproduced_and_verified() {
        assert_eq!(content_digest(DigestAlg::Sha256, HELLO), HELLO_SHA256);
        assert_eq!(content_digest(DigestAlg::Sha512, HELLO), HELLO_SHA512);
        assert_eq!(
            verify(HELLO_SHA256.as_bytes(), HELLO),
            Ok(DigestAlg::Sha256)
        );
        assert_eq!(
            verify(HELLO_SHA512.as_bytes(), HELLO),
            Ok(DigestAlg::Sha512)
        );
        let both = format!("{HELLO_SHA512}, {HELLO_SHA256}");
        assert_eq!(verify(both.as_bytes(), HELLO), Ok(DigestAlg::Sha512));
    }

    #[test]
    fn a_changed_body_or_digest_is_a_mismatch() {
        assert_eq!(
            verify(HELLO_SHA256.as_bytes(), br#"{"hello": "World"}"#),
            Err(DigestError::Mismatch)
        );
        assert_eq!(
            verify(HELLO_SHA512.as_bytes(), b""),
            Err(DigestError::Mismatch)
        );
        // One good digest does not excuse a bad one.
        let other = content_digest(DigestAlg::Sha512, b"other");
        let mixed = format!("{HELLO_SHA256}, {other}");
        assert_eq!(verify(mixed.as_bytes(), HELLO), Err(DigestError::Mismatch));
        let mixed = format!("{other}, {HELLO_SHA256}");
        assert_eq!(verify(mixed.as_bytes(), HELLO), Err(DigestError::Mismatch));
    }

    #[test]
    fn unknown_algorithms_are_ignored_but_not_enough() {
        assert_eq!(
            verify(b"md5=:XrY7u+Ae7tCTyyK7j1rNww==:", HELLO),
            Err(DigestError::Unsupported)
        );
        assert_eq!(
            verify(b"unixsum=12345, id-sha-256=:AAAA:", HELLO),
            Err(DigestError::Unsupported)
        );
        let with_unknown = format!("md5=:XrY7u+Ae7tCTyyK7j1rNww==:, {HELLO_SHA256}, crc32c=?1");
        assert_eq!(
            verify(with_unknown.as_bytes(), HELLO),
            Ok(DigestAlg::Sha256)
        );
    }

    #[test]
    fn absent_and_malformed_fields() {
        assert_eq!(verify(b"", HELLO), Err(DigestError::Missing));
        assert_eq!(verify(b"  \t", HELLO), Err(DigestError::Missing));
        let malformed: &[&[u8]] = &[
            b"sha-256",
            b"sha-256=",
            b"sha-256=:",
            b"sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
            b"sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\"",
            b"sha-256=(:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:)",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBP=:",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=!:",
            b"sha-256=:AAAA:",
            b"sha-512=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            b"SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:,",
            b", sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:;",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=: x",
            b"\xff\xfe",
            b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\xff",
            b"\0",
        ];
        for value in malformed {
            assert_eq!(
                verify(value, HELLO),
                Err(DigestError::Malformed),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        // A repeated key is refused rather than resolved by "last one wins".
        let twice = format!("{HELLO_SHA256}, {HELLO_SHA256}");
        assert_eq!(verify(twice.as_bytes(), HELLO), Err(DigestError::Malformed));
        let huge = format!("{HELLO_SHA256}, {}", "x=1, ".repeat(2000));
        assert_eq!(verify(huge.as_bytes(), HELLO), Err(DigestError::Malformed));
    }

    #[test]
    fn unpadded_base64_is_accepted_as_rfc_9651_asks() {
        // RFC 9651 section 4.2.7: parsers SHOULD NOT fail on missing padding.
        assert_eq!(
            verify(
                b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE:",
                HELLO
            ),
            Ok(DigestAlg::Sha256)
        );
    }

    #[test]
    fn parameters_on_a_digest_are_ignored() {
        let with_param = format!("{HELLO_SHA256};note=1");
        assert_eq!(verify(with_param.as_bytes(), HELLO), Ok(DigestAlg::Sha256));
    }

    #[test]
    fn streaming_matches_one_shot() {
        let body: Vec<u8> = (0..10_000u32).map(|n| (n % 251) as u8).collect();
        let header = format!(
            "{}, {}",
            content_digest(DigestAlg::Sha256, &body),
            content_digest(DigestAlg::Sha512, &body)
        );
        let expected =
            ContentDigest::parse(header.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            expected.algorithms().collect::<Vec<_>>(),
            vec![DigestAlg::Sha256, DigestAlg::Sha512]
        );
        let mut streaming = expected.verifier();
        for chunk in body.chunks(777) {
            streaming.update(chunk);
        }
        assert_eq!(streaming.finish(), Ok(DigestAlg::Sha512));
        let mut short = expected.verifier();
        short.update(&body[..9_999]);
        assert_eq!(short.finish(), Err(DigestError::Mismatch));
    }

    #[test]
    fn from_headers_combines_lines() {
        let sha512 = content_digest(DigestAlg::Sha512, HELLO);
        let map = crate::core::request::HeaderMap::from_pairs(vec![
            (b"content-digest".as_slice(), HELLO_SHA256.as_bytes()),
            (b"content-type".as_slice(), b"application/json".as_slice()),
            (b"content-digest".as_slice(), sha512.as_bytes()),
        ]);
        let found = ContentDigest::from_headers(&map).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(found.algorithms().count(), 2);
        assert_eq!(found.check(HELLO), Ok(DigestAlg::Sha512));
        let none = crate::core::request::HeaderMap::from_pairs(vec![]);
        assert_eq!(
            ContentDigest::from_headers(&none),
            Err(DigestError::Missing)
        );
        let twice = crate::core::request::HeaderMap::from_pairs(vec![
            (b"content-digest".as_slice(), HELLO_SHA256.as_bytes()),
            (b"content-digest".as_slice(), HELLO_SHA256.as_bytes()),
        ]);
        assert_eq!(
            ContentDigest::from_headers(&twice),
            Err(DigestError::Malformed)
        );
    }

    #[test]
    fn mutated_fields_never_panic() {
        let both = format!("{HELLO_SHA256}, {HELLO_SHA512};a=?1, md5=:AA==:");
        let good = both.as_bytes();
        assert_eq!(verify(good, HELLO), Ok(DigestAlg::Sha512));
        let fillers = [
            0u8, 0xff, 0x80, b' ', b'\t', b',', b';', b'=', b':', b'"', b'(', b')', b'?', b'a',
            b'1', b'-', b'*', b'\\', b'%', b'@',
        ];
        let sha256_b64 = &HELLO_SHA256.as_bytes()[9..HELLO_SHA256.len() - 1];
        let sha512_b64 = &HELLO_SHA512.as_bytes()[9..HELLO_SHA512.len() - 1];
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let mut accepted = 0;
        let mut check = |mutated: &[u8]| {
            if verify(mutated, HELLO).is_ok() {
                accepted += 1;
                // A mutation can only pass if it left a checked digest intact
                // (it hit the unknown member, a parameter, whitespace, or
                // renamed one algorithm into an unknown one).
                assert!(
                    contains(mutated, sha256_b64) || contains(mutated, sha512_b64),
                    "{}",
                    String::from_utf8_lossy(mutated)
                );
            }
        };
        for at in 0..good.len() {
            let cut = &good[..at];
            assert!(verify(cut, HELLO).is_err() || contains(cut, HELLO_SHA256.as_bytes()));
            let mut removed = good.to_vec();
            removed.remove(at);
            check(&removed);
            for filler in fillers {
                let mut replaced = good.to_vec();
                replaced[at] = filler;
                check(&replaced);
                let mut inserted = good.to_vec();
                inserted.insert(at, filler);
                check(&inserted);
            }
        }
        assert!(accepted > 0 && accepted < good.len() * 10, "{accepted}");
    }
}
