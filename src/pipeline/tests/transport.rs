//! Transport policy through the pipeline: the refusal comes before
//! validation and limits, and palisade's own answers carry the route
//! class's security headers.

use super::*;

const CONFIG: &str = r#"{
    "routes": [{"name": "login", "prefix": "/login"}],
    "validation": {},
    "transport": {"defaults": {"response_headers": {"x-frame-options": "DENY"}},
                  "routes": {"login": {"require_tls": true, "response_headers": {"cache-control": "no-store"}}}}
}"#;

#[test]
fn plain_http_to_a_tls_route_is_refused_with_the_route_headers() {
    let f = Fixture::new(CONFIG);
    // Also an attack: the transport refusal comes first.
    let Verdict::Respond(r) = f.send("GET", "/login?q=%3Cscript%3E", &[]) else {
        unreachable!("plain HTTP to login was let through")
    };
    assert_eq!(r.status, 403);
    assert!(r.body.contains("transport.tls_required"), "{}", r.body);
    assert_eq!(
        r.security_headers,
        [
            ("x-frame-options".to_string(), "DENY".to_string()),
            ("cache-control".to_string(), "no-store".to_string())
        ]
    );
    // Another class: through, and its response gets the defaults only.
    let Verdict::Allow { route, .. } = f.send("GET", "/public", &[]) else {
        unreachable!("a request to a class without require_tls was refused")
    };
    assert_eq!(
        f.engine.security_headers(route),
        [("x-frame-options".to_string(), "DENY".to_string())]
    );
}
