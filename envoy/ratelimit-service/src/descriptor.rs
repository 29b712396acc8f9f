//! Validation of a `ShouldRateLimit` request against palisade's descriptor
//! convention (README, "Descriptor convention"): every descriptor carries
//! exactly the entries `palisade`, `key`, `max` and `window`, and so fully
//! names its own limit; nothing is configured in the service.
//!
//! The `key` entry is derived from palisade's secrets (a keyed hash of the
//! client's identity): no error message built here contains its value, or
//! any other entry's value.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::fmt;

/// Largest `max` entry.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// Largest `window` entry, in seconds (31 days).
pub const MAX_WINDOW_SECONDS: u64 = 2_678_400;
/// Longest `palisade` entry.
pub const MAX_NAME_LEN: usize = 64;
/// Longest `key` entry, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest domain.
pub const MAX_DOMAIN_LEN: usize = 128;
/// Most descriptors in one request. palisade sends one per global rule of
/// the route, plus one look per ban length (at most 16) of a rule with
/// global bans, plus a nonce and a refresh token.
pub const MAX_DESCRIPTORS: usize = 512;

/// What one descriptor asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The `palisade` entry: what is counted (`rule.login`, `ban`, ...).
    pub name: String,
    /// The `key` entry: whose counter it is.
    pub key: String,
    /// The `max` entry.
    pub max: u64,
    /// The `window` entry, in seconds.
    pub window: u64,
    /// How much this call adds.
    pub hits: Hits,
}

/// A descriptor's effect on its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hits {
    /// Admit and count this many, or refuse and count nothing.
    Add(u64),
    /// The descriptor's own `hits_addend` is present and 0: report whether
    /// the counter is already at `max`, change nothing.
    CheckOnly,
}

/// A request that breaks the convention; becomes `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest(String);

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidRequest {}

/// A validated request: the Limitador namespace and its descriptors, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
}

/// Checks a whole request; the first problem found fails it.
pub fn parse_request(request: &RateLimitRequest) -> Result<Request, InvalidRequest> {
    if request.domain.is_empty() {
        return Err(InvalidRequest("domain: must not be empty".into()));
    }
    if request.domain.len() > MAX_DOMAIN_LEN
        || !request
            .domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(InvalidRequest(format!(
            "domain: must be 1-{MAX_DOMAIN_LEN} characters of a-z A-Z 0-9 . _ -"
        )));
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(InvalidRequest(format!(
            "descriptors: {} given, at most {MAX_DESCRIPTORS} per request",
            request.descriptors.len()
        )));
    }
    // Envoy's convention: a request-level hits_addend of 0 means 1.
    let request_hits = match request.hits_addend {
        0 => 1,
        n => u64::from(n),
    };
    if request_hits > MAX_LIMIT {
        return Err(InvalidRequest(format!(
            "hits_addend: larger than {MAX_LIMIT}"
        )));
    }
    let descriptors = request
        .descriptors
        .iter()
        .enumerate()
        .map(|(index, descriptor)| parse_descriptor(index, descriptor, request_hits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Request {
        domain: request.domain.clone(),
        descriptors,
    })
}

fn parse_descriptor(
    index: usize,
    descriptor: &RateLimitDescriptor,
    request_hits: u64,
) -> Result<Descriptor, InvalidRequest> {
    let fail = |what: &str| InvalidRequest(format!("descriptor {index}: {what}"));
    if descriptor.is_negative_hits {
        return Err(fail("is_negative_hits is not supported"));
    }
    if descriptor.limit.is_some() {
        return Err(fail(
            "a limit override is not supported (the entries max and window name the limit)",
        ));
    }
    let hits = match &descriptor.hits_addend {
        None => Hits::Add(request_hits),
        Some(addend) if addend.value == 0 => Hits::CheckOnly,
        Some(addend) if addend.value > MAX_LIMIT => {
            return Err(fail(&format!("hits_addend: larger than {MAX_LIMIT}")));
        }
        Some(addend) => Hits::Add(addend.value),
    };

    let (mut name, mut key, mut max, mut window) = (None, None, None, None);
    for entry in &descriptor.entries {
        let slot = match entry.key.as_str() {
            "palisade" => &mut name,
            "key" => &mut key,
            "max" => &mut max,
            "window" => &mut window,
            other => {
                return Err(fail(&format!(
                    "unknown entry {} (expected palisade, key, max, window)",
                    entry_name(other)
                )));
            }
        };
        if slot.is_some() {
            return Err(fail(&format!("entry {:?} given twice", entry.key)));
        }
        *slot = Some(entry.value.as_str());
    }
    let missing = |entry: &str| fail(&format!("entry {entry:?} is missing"));
    let name = name.ok_or_else(|| missing("palisade"))?;
    let key = key.ok_or_else(|| missing("key"))?;
    let max = max.ok_or_else(|| missing("max"))?;
    let window = window.ok_or_else(|| missing("window"))?;

    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    {
        return Err(fail(&format!(
            "entry \"palisade\": must be 1-{MAX_NAME_LEN} characters of a-z 0-9 . _ -"
        )));
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(fail(&format!(
            "entry \"key\": must be 1-{MAX_KEY_LEN} bytes"
        )));
    }
    let max = decimal_in(max, 1, MAX_LIMIT).ok_or_else(|| {
        fail(&format!(
            "entry \"max\": must be a decimal integer in 1..={MAX_LIMIT}"
        ))
    })?;
    let window = decimal_in(window, 1, MAX_WINDOW_SECONDS).ok_or_else(|| {
        fail(&format!(
            "entry \"window\": must be a decimal number of seconds in 1..={MAX_WINDOW_SECONDS}"
        ))
    })?;
    Ok(Descriptor {
        name: name.to_owned(),
        key: key.to_owned(),
        max,
        window,
        hits,
    })
}

/// Plain ASCII digits (no sign, no spaces, at most 10 of them) whose value
/// is in `low..=high`.
fn decimal_in(text: &str, low: u64, high: u64) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    (low..=high).contains(&value).then_some(value)
}

/// An unknown entry's name for an error message: quoted, and cut short.
fn entry_name(name: &str) -> String {
    let short: String = name.chars().take(32).collect();
    if short.len() < name.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::google::protobuf::UInt64Value;

    const SECRET_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015";

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn good() -> RateLimitDescriptor {
        descriptor(&[
            ("palisade", "rule.login"),
            ("key", SECRET_KEY),
            ("max", "20"),
            ("window", "60"),
        ])
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "palisade".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    fn error(request: &RateLimitRequest) -> String {
        match parse_request(request) {
            Ok(parsed) => format!("unexpectedly valid: {parsed:?}"),
            Err(e) => {
                assert!(!e.0.contains(SECRET_KEY), "the key leaked: {e}");
                e.0
            }
        }
    }

    #[test]
    fn a_valid_descriptor_parses() -> Result<(), InvalidRequest> {
        let parsed = parse_request(&request(vec![good()]))?;
        assert_eq!(parsed.domain, "palisade");
        assert_eq!(
            parsed.descriptors,
            vec![Descriptor {
                name: "rule.login".into(),
                key: SECRET_KEY.into(),
                max: 20,
                window: 60,
                hits: Hits::Add(1),
            }]
        );
        Ok(())
    }

    #[test]
    fn entries_may_come_in_any_order() -> Result<(), InvalidRequest> {
        let d = descriptor(&[
            ("window", "2678400"),
            ("max", "1000000000"),
            ("key", "k"),
            ("palisade", "nonce"),
        ]);
        let parsed = parse_request(&request(vec![d]))?;
        assert_eq!(parsed.descriptors[0].max, MAX_LIMIT);
        assert_eq!(parsed.descriptors[0].window, MAX_WINDOW_SECONDS);
        Ok(())
    }

    #[test]
    fn hits_come_from_the_descriptor_then_the_request() -> Result<(), InvalidRequest> {
        let mut r = request(vec![good(), good(), good()]);
        r.hits_addend = 3;
        r.descriptors[1].hits_addend = Some(UInt64Value { value: 7 });
        r.descriptors[2].hits_addend = Some(UInt64Value { value: 0 });
        let parsed = parse_request(&r)?;
        let hits: Vec<Hits> = parsed.descriptors.iter().map(|d| d.hits).collect();
        assert_eq!(hits, vec![Hits::Add(3), Hits::Add(7), Hits::CheckOnly]);
        r.hits_addend = 0;
        assert_eq!(parse_request(&r)?.descriptors[0].hits, Hits::Add(1));
        Ok(())
    }

    #[test]
    fn no_descriptors_is_a_valid_request() -> Result<(), InvalidRequest> {
        assert!(parse_request(&request(vec![]))?.descriptors.is_empty());
        Ok(())
    }

    #[test]
    fn bad_requests_name_the_descriptor_and_entry() {
        let cases: Vec<(RateLimitRequest, &str)> = vec![
            (
                RateLimitRequest {
                    domain: String::new(),
                    ..request(vec![good()])
                },
                "domain: must not be empty",
            ),
            (
                RateLimitRequest {
                    domain: "a/b".into(),
                    ..request(vec![good()])
                },
                "domain: must be 1-128 characters",
            ),
            (
                RateLimitRequest {
                    domain: "d".repeat(129),
                    ..request(vec![good()])
                },
                "domain: must be 1-128 characters",
            ),
            (
                request(vec![
                    good(),
                    descriptor(&[("palisade", "x"), ("key", SECRET_KEY), ("max", "1")]),
                ]),
                "descriptor 1: entry \"window\" is missing",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "0"),
                    ("window", "1"),
                ])]),
                "descriptor 0: entry \"max\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "+5"),
                    ("window", "1"),
                ])]),
                "descriptor 0: entry \"max\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "1000000001"),
                    ("window", "1"),
                ])]),
                "descriptor 0: entry \"max\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", "2678401"),
                ])]),
                "descriptor 0: entry \"window\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", " 60"),
                ])]),
                "descriptor 0: entry \"window\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "Rule"),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", "60"),
                ])]),
                "descriptor 0: entry \"palisade\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", &"a".repeat(65)),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", "60"),
                ])]),
                "descriptor 0: entry \"palisade\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", ""),
                    ("max", "5"),
                    ("window", "60"),
                ])]),
                "descriptor 0: entry \"key\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", &"k".repeat(129)),
                    ("max", "5"),
                    ("window", "60"),
                ])]),
                "descriptor 0: entry \"key\"",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", "60"),
                ])]),
                "descriptor 0: entry \"key\" given twice",
            ),
            (
                request(vec![descriptor(&[
                    ("palisade", "x"),
                    ("key", SECRET_KEY),
                    ("max", "5"),
                    ("window", "60"),
                    ("remote_address", SECRET_KEY),
                ])]),
                "descriptor 0: unknown entry \"remote_address\"",
            ),
        ];
        for (r, expected) in cases {
            let message = error(&r);
            assert!(
                message.starts_with(expected),
                "{message:?} does not start with {expected:?}"
            );
        }
    }

    #[test]
    fn unsupported_fields_are_refused() {
        let mut negative = good();
        negative.is_negative_hits = true;
        assert!(error(&request(vec![negative])).contains("is_negative_hits"));

        let mut limit = good();
        limit.limit = Some(RateLimitOverride {
            requests_per_unit: 5,
            unit: 1,
        });
        assert!(error(&request(vec![good(), limit])).starts_with("descriptor 1: a limit override"));

        let mut big = good();
        big.hits_addend = Some(UInt64Value {
            value: MAX_LIMIT + 1,
        });
        assert!(error(&request(vec![big])).starts_with("descriptor 0: hits_addend"));

        let mut r = request(vec![good()]);
        r.hits_addend = u32::MAX;
        assert!(error(&r).starts_with("hits_addend"));

        assert!(error(&request(vec![good(); MAX_DESCRIPTORS + 1])).starts_with("descriptors:"));
    }

    #[test]
    fn a_long_unknown_entry_name_is_cut_short() {
        let long = "x".repeat(1000);
        let message = error(&request(vec![descriptor(&[(long.as_str(), "v")])]));
        assert!(message.len() < 120, "{message}");
    }
}
