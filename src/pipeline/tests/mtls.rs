//! Device identity through the pipeline: certificate required per route
//! class, identities in authorization policies, certificate-bound tokens
//! (RFC 8705) and `device`-keyed limits, read from a fake connection that
//! counts its property reads.

use super::credentials::{claims, mint};
use super::*;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::cell::Cell;

/// A connection with a client certificate or none.
struct Conn {
    uri_san: Option<&'static str>,
    der: Option<&'static [u8]>,
    reads: Cell<u32>,
}

impl Conn {
    fn new(uri_san: Option<&'static str>, der: Option<&'static [u8]>) -> Conn {
        Conn {
            uri_san,
            der,
            reads: Cell::new(0),
        }
    }
}

impl Connection for Conn {
    fn peer(&self) -> Option<String> {
        Some("192.0.2.10:40000".into())
    }
    fn tls(&self) -> bool {
        true
    }
    fn peer_uri_san(&self) -> Option<String> {
        self.reads.set(self.reads.get() + 1);
        self.uri_san.map(str::to_string)
    }
    fn peer_subject(&self) -> Option<String> {
        self.reads.set(self.reads.get() + 1);
        self.uri_san.map(|_| "CN=alpha,O=Demo".to_string())
    }
    fn peer_certificate_sha256(&self) -> Option<[u8; 32]> {
        self.reads.set(self.reads.get() + 1);
        self.der.map(|der| Sha256::digest(der).into())
    }
}

const ALPHA: Option<&str> = Some("spiffe://demo/device/alpha");
const BETA: Option<&str> = Some("spiffe://demo/device/beta");
const ALPHA_DER: &[u8] = b"alpha certificate";
const BETA_DER: &[u8] = b"beta certificate";

fn config() -> String {
    super::credentials_config(
        r#",
        "mtls": {"routes": {"admin": {"required": true, "identities": ["spiffe://demo/device/alpha"]}}},
        "rate_limits": {"rules": [{"name": "per-device", "key": ["device"], "routes": ["api"],
                                   "capacity": 2, "refill": {"tokens": 1, "every": "1h"}}]}"#,
    )
}

fn send(f: &Fixture, path: &str, extra: &[(&str, &str)], conn: &Conn) -> (u16, String) {
    let mut pairs = vec![(":method", "GET"), (":path", path)];
    pairs.extend_from_slice(extra);
    let bytes = encode_map(&pairs);
    let headers = HeaderMap::decode(&bytes).unwrap_or_default();
    match f.engine.evaluate(&headers, conn, &f.services()) {
        Verdict::Allow { .. } => (200, String::new()),
        Verdict::Respond(r) => (r.status, r.body),
    }
}

fn reason(answer: &(u16, String)) -> String {
    serde_json::from_str::<serde_json::Value>(&answer.1)
        .ok()
        .and_then(|v| v.get("reason")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn token(extra: serde_json::Value) -> String {
    format!("Bearer {}", mint(claims("ops", extra)))
}

#[test]
fn a_route_class_requiring_a_certificate_accepts_only_its_identities() {
    let f = Fixture::new(&config());
    let admin = token(serde_json::json!({"roles": ["admin"], "amr": ["mfa"]}));
    let auth = [("authorization", admin.as_str())];
    let alpha = Conn::new(ALPHA, Some(ALPHA_DER));
    assert_eq!(send(&f, "/admin", &auth, &alpha).0, 200);
    let beta = send(&f, "/admin", &auth, &Conn::new(BETA, Some(BETA_DER)));
    assert_eq!(
        (beta.0, reason(&beta)),
        (403, "mtls.identity_not_allowed".into())
    );
    let none = send(&f, "/admin", &auth, &Conn::new(None, None));
    assert_eq!((none.0, reason(&none)), (403, "mtls.required".into()));
    // The certificate comes before the credential: no token, same answer.
    let bare = send(&f, "/admin", &[], &Conn::new(None, None));
    assert_eq!(reason(&bare), "mtls.required");
}

#[test]
fn the_identity_is_read_only_on_classes_that_use_it() {
    let f = Fixture::new(&config());
    let conn = Conn::new(ALPHA, Some(ALPHA_DER));
    // `default`: no mtls policy, no device rule, no identities.
    assert_eq!(send(&f, "/other", &[], &conn).0, 200);
    assert_eq!(conn.reads.get(), 0);
}

#[test]
fn device_keyed_limits_count_each_certificate_apart() {
    let f = Fixture::new(&config());
    let t = token(serde_json::json!({}));
    let auth = [("authorization", t.as_str())];
    let alpha = Conn::new(ALPHA, Some(ALPHA_DER));
    let beta = Conn::new(BETA, Some(BETA_DER));
    let statuses: Vec<u16> = (0..3)
        .map(|_| send(&f, "/api/x", &auth, &alpha).0)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(send(&f, "/api/x", &auth, &beta).0, 200);
}

#[test]
fn a_certificate_bound_token_is_refused_over_another_certificate() {
    let f = Fixture::new(&config());
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(ALPHA_DER));
    let bound = token(serde_json::json!({"cnf": {"x5t#S256": x5t}}));
    let auth = [("authorization", bound.as_str())];
    assert_eq!(
        send(&f, "/api/a", &auth, &Conn::new(ALPHA, Some(ALPHA_DER))).0,
        200
    );
    let beta = send(&f, "/api/a", &auth, &Conn::new(BETA, Some(BETA_DER)));
    assert_eq!((beta.0, reason(&beta)), (401, "jwt.binding".into()));
    let none = send(&f, "/api/a", &auth, &Conn::new(None, None));
    assert_eq!((none.0, reason(&none)), (401, "jwt.binding".into()));
    // A cached verification does not skip the binding.
    let again = send(&f, "/api/a", &auth, &Conn::new(BETA, Some(BETA_DER)));
    assert_eq!(reason(&again), "jwt.binding");
}

#[test]
fn authorization_policies_can_require_identities_and_bound_tokens() {
    let json = super::credentials_config("").replace(
        r#"{"routes": ["api"], "credentials": ["jwt", "api_key"]}"#,
        r#"{"routes": ["api"], "identities": ["spiffe://demo/device/*"], "bound_tokens": true}"#,
    ) .replace("\"api_keys\"", "\"mtls\": {}, \"api_keys\"");
    let f = Fixture::new(&json);
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(ALPHA_DER));
    let bound = token(serde_json::json!({"cnf": {"x5t#S256": x5t}}));
    let unbound = token(serde_json::json!({}));
    let alpha = || Conn::new(ALPHA, Some(ALPHA_DER));
    assert_eq!(
        send(&f, "/api/a", &[("authorization", &bound)], &alpha()).0,
        200
    );
    let plain = send(&f, "/api/a", &[("authorization", &unbound)], &alpha());
    assert_eq!((plain.0, reason(&plain)), (401, "jwt.binding".into()));
    let outsider = Conn::new(Some("spiffe://other/device/alpha"), Some(ALPHA_DER));
    let refused = send(&f, "/api/a", &[("authorization", &bound)], &outsider);
    assert_eq!(
        (refused.0, reason(&refused)),
        (403, "authz.identity".into())
    );
}

#[test]
fn the_section_is_refused_on_nginx_and_device_uses_need_it() {
    let policy = Policy::from_json(config().as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
    let e = Engine::new(policy, [7; 16], HostKind::NgxWasm).err();
    assert_eq!(e.map(|e| e.path), Some("mtls".to_string()));
    let without = super::credentials_config(
        r#", "rate_limits": {"rules": [{"name": "d", "key": ["device"], "capacity": 2,
                                        "refill": {"tokens": 1, "every": "1h"}}]}"#,
    );
    let e = Policy::from_json(without.as_bytes()).err();
    assert_eq!(
        e.map(|e| e.path),
        Some("rate_limits.rules[0].key".to_string())
    );
    let required_false = config().replace(
        r#""required": true, "identities""#,
        r#""required": false, "identities""#,
    );
    let e = Policy::from_json(required_false.as_bytes()).err();
    assert_eq!(
        e.map(|e| e.path),
        Some("mtls.routes.admin.required".to_string())
    );
    // Inherited from `defaults`: the class's own list is named.
    let inherited = config()
        .replace(
            r#""mtls": {"routes""#,
            r#""mtls": {"defaults": {"required": false}, "routes""#,
        )
        .replace(r#""required": true, "identities""#, r#""identities""#);
    let e = Policy::from_json(inherited.as_bytes()).err();
    assert_eq!(
        e.map(|e| e.path),
        Some("mtls.routes.admin.identities".to_string())
    );
}
