//! Request validation through the whole pipeline: refusals before any
//! other stage, the body phase, monitor mode, and a body checked for both
//! validation and a signature's digest.

use super::*;

const CONFIG: &str = r#"{
    "routes": [{"name": "api", "prefix": "/api"}, {"name": "cms", "prefix": "/cms"}],
    "rate_limits": {"rules": [{"name": "per-ip", "key": ["ip"], "capacity": 100, "refill": {"tokens": 1, "every": "1s"}}]},
    "validation": {"defaults": {"max_body_bytes": 64},
                   "routes": {"cms": {"mode": "monitor"}}}
}"#;

/// Status and reason of a request with `body`, through both phases.
fn post(f: &Fixture, path: &str, content_type: &str, body: Body<'_>) -> (u16, String) {
    let verdict = f.send(
        "POST",
        path,
        &[
            ("content-type", content_type),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    );
    let check = match verdict {
        Verdict::Respond(r) => return (r.status, reason(&r.body)),
        Verdict::Allow { body: None, .. } => return (200, String::new()),
        Verdict::Allow {
            body: Some(check), ..
        } => check,
    };
    match f
        .engine
        .check_body(&check, body, &f.services(), None)
        .response()
    {
        None => (200, String::new()),
        Some(r) => (r.status, reason(&r.body)),
    }
}

fn reason(body: &str) -> String {
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    body["reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_attack_in_the_query_is_refused_with_its_family_and_counted() {
    let f = Fixture::new(CONFIG);
    assert_eq!(
        f.status("GET", "/api/search?q=1%27%20OR%201%3D1--", &[]),
        403
    );
    assert_eq!(f.status("GET", "/api/search?q=fine", &[]), 200);
    let api = f.route("api");
    let refused = Counter::Finding {
        stage: Stage::Validate,
        reason: Reason::Validation(crate::core::reasons::ValidationError::Sqli),
        mode: Mode::Enforce,
        route: api,
    };
    assert_eq!(f.metrics.get(&refused), 1);
    assert_eq!(f.status("TRACE", "/api", &[]), 405);
}

#[test]
fn bodies_are_checked_in_the_body_phase() {
    let f = Fixture::new(CONFIG);
    let json = "application/json";
    assert_eq!(
        post(
            &f,
            "/api/items",
            json,
            Body::Complete(br#"{"name": "O'Hara"}"#)
        ),
        (200, String::new())
    );
    assert_eq!(
        post(
            &f,
            "/api/items",
            json,
            Body::Complete(br#"{"name": "<script>alert(1)</script>"}"#)
        ),
        (403, "validation.xss".into())
    );
    assert_eq!(
        post(&f, "/api/items", json, Body::Complete(b"{")),
        (400, "validation.json".into())
    );
    assert_eq!(
        post(&f, "/api/items", json, Body::TooLarge),
        (413, "validation.body_size".into())
    );
    assert_eq!(
        post(&f, "/api/items", "text/plain", Body::Complete(&[b'a'; 65])),
        (413, "validation.body_size".into())
    );
    // The host could not hand the body over: refused, never let through.
    assert_eq!(post(&f, "/api/items", json, Body::Unreadable).0, 503);
}

#[test]
fn monitor_mode_counts_and_lets_the_request_through() {
    let f = Fixture::new(CONFIG);
    assert_eq!(f.status("GET", "/cms/page?html=%3Cscript%3E", &[]), 200);
    assert_eq!(
        post(
            &f,
            "/cms/page",
            "application/json",
            Body::Complete(br#"{"a": "<script>"}"#)
        )
        .0,
        200
    );
    let monitored = Counter::Finding {
        stage: Stage::Validate,
        reason: Reason::Validation(crate::core::reasons::ValidationError::Xss),
        mode: Mode::Monitor,
        route: f.route("cms"),
    };
    assert_eq!(f.metrics.get(&monitored), 2);
}
