//! Any bytes as a fetched JWK Set document, through the path the filter
//! takes for a 200 response (`on_http_call_response`):
//! `Engine::jwks_fetched` parses it (`Jwks::parse`), stores it in the
//! shared record when it has a usable key (`jwks::store_fetched`) and
//! installs it; a second engine sharing the store (another worker) then
//! picks it up from the record on its tick (`Engine::jwks_due`:
//! `Record::decode`, `newer_than`, `Jwks::parse` again). Finally that
//! engine judges requests carrying tokens of every supported family (bad
//! signatures, with and without a `kid`), so that whatever keys were
//! installed are used. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::config::Policy;
use palisade::core::hosts::HostKind;
use palisade::core::request::HeaderMap;
use palisade::pipeline::{Engine, Services};
use std::sync::OnceLock;

// Only its `World` and `T0_MS`; the rest serves the request targets.
#[allow(dead_code)]
#[path = "common.rs"]
mod common;
use common::{World, T0_MS};

/// One remote provider on route `/api` (every algorithm a fetched set may
/// serve a key for).
const POLICY: &str = r#"{
  "version": 1,
  "routes": [{"name": "api", "prefix": "/api"}],
  "rate_limits": {"slots": 16},
  "jwt": {
    "without_keys": "deny",
    "providers": [{
      "name": "remote",
      "issuer": "https://remote.example",
      "audiences": ["api"],
      "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
      "jwks": {"remote": {"cluster": "idp_jwks", "path": "/jwks", "refresh": "5m",
                          "min_refetch": "1s", "timeout": "1s"}}
    }]
  },
  "authorization": {"policies": [{"routes": ["api"]}]}
}"#;

/// `{"iss":"https://remote.example","aud":"api","sub":"u","iat":1700000000,"exp":4102444800}`
const PAYLOAD: &str = "eyJpc3MiOiJodHRwczovL3JlbW90ZS5leGFtcGxlIiwiYXVkIjoiYXBpIiwic3ViIjoidSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ";

/// Protected headers: `{"alg":…}` and `{"alg":…,"kid":"a"}` for each
/// family (RSA: RS256 without, PS256 with a `kid`).
const HEADERS: [&str; 8] = [
    "eyJhbGciOiJSUzI1NiJ9",
    "eyJhbGciOiJQUzI1NiIsImtpZCI6ImEifQ",
    "eyJhbGciOiJFUzI1NiJ9",
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImEifQ",
    "eyJhbGciOiJFUzM4NCJ9",
    "eyJhbGciOiJFUzM4NCIsImtpZCI6ImEifQ",
    "eyJhbGciOiJFZERTQSJ9",
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImEifQ",
];

/// Signatures of the right length for RSA-2048, P-256, P-384 and Ed25519
/// (all bytes 0x41): verification runs to the end and fails.
fn signature(header: &str) -> String {
    let len = match header {
        h if h.starts_with("eyJhbGciOiJSUz") || h.starts_with("eyJhbGciOiJQUz") => 256,
        h if h.starts_with("eyJhbGciOiJFUzM4") => 96,
        _ => 64,
    };
    // base64url of 0x41 bytes: "QUFB" per 3 bytes.
    let mut out = "QUFB".repeat(len / 3);
    match len % 3 {
        1 => out.push_str("QQ"),
        2 => out.push_str("QUE"),
        _ => {}
    }
    out
}

fn setup() -> &'static (Policy, Vec<String>) {
    static SETUP: OnceLock<(Policy, Vec<String>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let policy = match Policy::from_json(POLICY.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("the fuzz policy does not load: {e}"),
        };
        assert!(
            policy.auth.providers.iter().any(|p| p.remote.is_some()),
            "the fuzz policy has no remote provider"
        );
        let tokens = HEADERS
            .iter()
            .map(|h| format!("Bearer {h}.{PAYLOAD}.{}", signature(h)))
            .collect();
        (policy, tokens)
    })
}

fn engine(policy: &Policy) -> Engine {
    match Engine::new(policy.clone(), [7; 16], HostKind::Envoy) {
        Ok(e) => e,
        Err(e) => panic!("engine: {e}"),
    }
}

fn judge(engine: &Engine, tokens: &[String], services: &Services<'_>) {
    for token in tokens {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", b"/api/x"),
            (b":authority", b"palisade.test"),
            (b":scheme", b"http"),
            (b"authorization", token.as_bytes()),
        ];
        let headers = HeaderMap::from_pairs(pairs);
        let _ = engine.evaluate(&headers, &|| Some("192.0.2.1:1".to_string()), services);
    }
}

fuzz_target!(|data: &[u8]| {
    let (policy, tokens) = setup();
    let world = World::new(policy);
    let services = world.services();
    let fetcher = engine(policy);
    let other = engine(policy);
    // The fetching worker wins the first fetch, and the body comes back.
    let plans = fetcher.jwks_due(&world.store, T0_MS);
    assert_eq!(plans.len(), 1, "the first fetch is due");
    fetcher.jwks_fetched(plans[0].index, Ok(data), &services);
    // Another worker's tick installs what the record holds.
    world.clock.advance(1_000);
    let _ = other.jwks_due(&world.store, T0_MS + 1_000);
    // One engine judges (both hold the same set; `other` took the path
    // through the record): RSA checks are slow under the sanitizer.
    judge(&other, tokens, &services);
});
