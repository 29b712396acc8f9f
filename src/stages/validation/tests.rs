use super::*;
use crate::core::config_error::{err, ConfigError};
use crate::core::request::encode_map;
use crate::core::routes::{PathMatcher, RouteClass, RouteTable};

fn routes() -> RouteTable {
    let class = |name: &str| RouteClass {
        name: name.to_string(),
        matcher: PathMatcher::Prefix(format!("/{name}")),
        methods: None,
    };
    RouteTable::new(vec![class("api"), class("upload"), class("cms")])
}

/// The section as `Policy::from_json` reads it: serde's errors with their
/// path, then `compile`.
fn document(json: &str) -> Result<Option<Validation>, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let raw: RawValidation = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| err(format!("validation.{}", e.path()), e.inner().to_string()))?;
    compile(Some(raw), Mode::Enforce, &routes())
}

fn validation(json: &str) -> Validation {
    document(json)
        .ok()
        .flatten()
        .unwrap_or_else(|| unreachable!("{json}"))
}

/// The reason codes of the header phase, and its body plan.
fn headers(v: &Validation, pairs: &[(&str, &str)]) -> (Vec<&'static str>, Option<BodyPlan>) {
    let bytes = encode_map(pairs);
    let map = HeaderMap::decode(&bytes).unwrap_or_default();
    let path = map.get_str(":path").unwrap_or("/");
    let route = routes().classify("GET", path);
    let mut findings = Vec::new();
    let plan = check_headers(v, route, &map, &mut findings);
    (findings.iter().map(|f| f.reason.as_str()).collect(), plan)
}

fn get(v: &Validation, path: &str) -> Vec<&'static str> {
    headers(v, &[(":method", "GET"), (":path", path)]).0
}

fn body(v: &Validation, content_type: &str, body: &str) -> Vec<&'static str> {
    let length = body.len().to_string();
    let (mut codes, plan) = headers(
        v,
        &[
            (":method", "POST"),
            (":path", "/api/items"),
            ("content-type", content_type),
            ("content-length", &length),
        ],
    );
    if let Some(plan) = plan {
        let mut findings = Vec::new();
        check_body(v, &plan, Some(body.as_bytes()), &mut findings);
        codes.extend(findings.iter().map(|f| f.reason.as_str()));
    }
    codes
}

#[test]
fn an_ordinary_request_passes_every_default_check() {
    let v = validation("{}");
    assert!(get(&v, "/api/search?q=O%27Brien+%26+sons&page=2&sort=-date").is_empty());
    assert!(body(
        &v,
        "application/json",
        r#"{"name": "Siobhán O'Neill", "note": "3 < 5, \"quoted\"", "tags": ["a", "b"], "n": 1.5, "ok": null}"#
    )
    .is_empty());
    assert!(body(
        &v,
        "application/x-www-form-urlencoded",
        "name=D%27Arcy&comment=line+one%0D%0Aline+two"
    )
    .is_empty());
}

#[test]
fn methods_url_and_header_limits_are_enforced() {
    let v = validation(
        r#"{"defaults": {"methods": ["GET"], "max_url_bytes": 32, "max_headers": 2, "max_header_bytes": 40}}"#,
    );
    let (codes, _) = headers(&v, &[(":method", "TRACE"), (":path", "/api")]);
    assert_eq!(codes, ["validation.method"]);
    assert_eq!(
        get(&v, &format!("/api/{}", "a".repeat(40))),
        ["validation.url_length"]
    );
    let (codes, _) = headers(
        &v,
        &[
            (":method", "GET"),
            (":path", "/api"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ],
    );
    assert_eq!(codes, ["validation.header_count"]);
    let long = "x".repeat(40);
    let (codes, _) = headers(&v, &[(":method", "GET"), (":path", "/api"), ("a", &long)]);
    assert_eq!(codes, ["validation.header_size"]);
}

#[test]
fn control_bytes_in_a_header_value_are_refused() {
    let v = validation("{}");
    let (codes, _) = headers(
        &v,
        &[(":method", "GET"), (":path", "/api"), ("x-a", "a\u{1}b")],
    );
    assert_eq!(codes, ["validation.control_bytes"]);
    let (codes, _) = headers(
        &v,
        &[(":method", "GET"), (":path", "/api"), ("x-a", "a\tb")],
    );
    assert!(codes.is_empty());
}

#[test]
fn attacks_in_the_query_and_path_are_refused_with_their_family() {
    let v = validation("{}");
    assert_eq!(get(&v, "/api/search?q=%27+or+1%3D1--"), ["validation.sqli"]);
    assert_eq!(
        get(&v, "/api/search?q=%3Cscript%3Ealert(1)%3C/script%3E"),
        ["validation.xss"]
    );
    assert_eq!(
        get(&v, "/api/files?name=..%252f..%252fetc%252fpasswd"),
        ["validation.traversal"]
    );
    assert_eq!(
        get(&v, "/api/files/..%2f..%2fetc/passwd"),
        ["validation.traversal"]
    );
    assert_eq!(
        get(&v, "/api/files?name=a%00.png"),
        ["validation.control_bytes"]
    );
    // A parameter's name is read too.
    assert_eq!(get(&v, "/api/search?%3Cscript%3E=1"), ["validation.xss"]);
    // Path segments are not read as SQL: `/api/select/from` is a route.
    assert!(get(&v, "/api/select/1%20or%201=1").is_empty());
}

#[test]
fn json_bodies_must_parse_within_their_depth() {
    let v = validation(r#"{"defaults": {"json_max_depth": 2}}"#);
    assert!(body(&v, "application/json", r#"{"a": {"b": 1}}"#).is_empty());
    assert_eq!(
        body(&v, "application/json", r#"{"a": {"b": [1]}}"#),
        ["validation.json_depth"]
    );
    assert_eq!(
        body(&v, "application/json", r#"{"a": 1"#),
        ["validation.json"]
    );
    assert_eq!(
        body(&v, "application/json", r#"{"a": 1} x"#),
        ["validation.json"]
    );
    assert_eq!(
        body(&v, "application/vnd.api+json", "nope"),
        ["validation.json"]
    );
    // Depth is counted in arrays and objects alike; a scalar has none.
    assert!(body(&v, "application/json", "[[1]]").is_empty());
    assert!(body(&v, "application/json", "\"just a string\"").is_empty());
}

#[test]
fn attacks_in_body_values_and_member_names_are_refused() {
    let v = validation("{}");
    assert_eq!(
        body(
            &v,
            "application/json",
            r#"{"q": "1' UNION SELECT password FROM users--"}"#
        ),
        ["validation.sqli"]
    );
    assert_eq!(
        body(
            &v,
            "application/json",
            r#"{"<img src=x onerror=alert(1)>": 1}"#
        ),
        ["validation.xss"]
    );
    assert_eq!(
        body(
            &v,
            "application/json",
            r#"{"files": [{"path": "../../etc/passwd"}]}"#
        ),
        ["validation.traversal"]
    );
    assert_eq!(
        body(&v, "application/json", r#"{"a": "nul\u0000"}"#),
        ["validation.control_bytes"]
    );
    assert_eq!(
        body(
            &v,
            "application/x-www-form-urlencoded",
            "user=admin%27--&pass=x"
        ),
        ["validation.sqli"]
    );
    // Two families in one body: one finding each.
    assert_eq!(
        body(
            &v,
            "application/json",
            r#"{"a": "' or 1=1--", "b": "<script>", "c": "' or 2=2--"}"#
        ),
        ["validation.sqli", "validation.xss"]
    );
}

#[test]
fn content_types_and_body_size_are_enforced() {
    let v = validation(
        r#"{"defaults": {"content_types": ["application/json", "text/*"], "max_body_bytes": 16}}"#,
    );
    assert!(body(&v, "application/json; charset=utf-8", "{}").is_empty());
    assert!(body(&v, "text/plain", "hello").is_empty());
    assert_eq!(
        body(&v, "application/xml", "<a/>"),
        ["validation.content_type"]
    );
    assert_eq!(
        body(
            &v,
            "application/json",
            &format!("[{}]", "1,".repeat(20) + "1")
        ),
        ["validation.body_size"]
    );
    // Undeclared size: the body is counted in the body phase.
    let (codes, plan) = headers(
        &v,
        &[
            (":method", "POST"),
            (":path", "/api"),
            ("content-type", "text/plain"),
        ],
    );
    assert!(codes.is_empty());
    let plan = plan.unwrap_or_else(|| unreachable!("a body of unknown size is planned"));
    let mut findings = Vec::new();
    check_body(&v, &plan, None, &mut findings);
    assert_eq!(findings[0].reason.as_str(), "validation.body_size");
    // A GET without a body needs no body phase.
    assert!(headers(&v, &[(":method", "GET"), (":path", "/api")])
        .1
        .is_none());
    // A declared small opaque body of an accepted type needs none either.
    let (_, plan) = headers(
        &v,
        &[
            (":method", "POST"),
            (":path", "/api"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
        ],
    );
    assert!(plan.is_none());
}

#[test]
fn routes_override_defaults_and_disable_families() {
    let v = validation(
        r#"{"defaults": {"max_url_bytes": 100},
            "routes": {"cms": {"disable": ["xss"]}, "upload": {"max_url_bytes": 20, "mode": "monitor"}}}"#,
    );
    assert_eq!(get(&v, "/api?html=%3Cscript%3E"), ["validation.xss"]);
    assert!(get(&v, "/cms?html=%3Cscript%3E").is_empty());
    // The class keeps the defaults it does not override.
    assert_eq!(
        get(&v, &format!("/cms?a={}", "b".repeat(100))),
        ["validation.url_length"]
    );
    let bytes = encode_map(&[
        (":method", "GET"),
        (":path", "/upload/aaaaaaaaaaaaaaaaaaaaa"),
    ]);
    let map = HeaderMap::decode(&bytes).unwrap_or_default();
    let mut findings = Vec::new();
    let route = routes().classify("GET", "/upload/");
    check_headers(&v, route, &map, &mut findings);
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].mode, Mode::Monitor);
}

#[test]
fn invalid_sections_are_refused_with_their_path() {
    for (json, path) in [
        (
            r#"{"defaults": {"max_url_bytes": 0}}"#,
            "validation.defaults.max_url_bytes",
        ),
        (
            r#"{"defaults": {"methods": []}}"#,
            "validation.defaults.methods",
        ),
        (
            r#"{"defaults": {"methods": ["GET /"]}}"#,
            "validation.defaults.methods[0]",
        ),
        (
            r#"{"defaults": {"json_max_depth": 101}}"#,
            "validation.defaults.json_max_depth",
        ),
        (
            r#"{"defaults": {"max_body_bytes": 999999999}}"#,
            "validation.defaults.max_body_bytes",
        ),
        (
            r#"{"defaults": {"content_types": ["json"]}}"#,
            "validation.defaults.content_types[0]",
        ),
        (
            r#"{"defaults": {"content_types": ["*/json"]}}"#,
            "validation.defaults.content_types[0]",
        ),
        (r#"{"routes": {"nope": {}}}"#, "validation.routes.nope"),
        (
            r#"{"routes": {"api": {"max_headers": 0}}}"#,
            "validation.routes.api.max_headers",
        ),
        (
            r#"{"defaults": {"disable": ["csrf"]}}"#,
            "validation.defaults.disable[0]",
        ),
        (r#"{"defaults": {"unknown": 1}}"#, "validation.defaults"),
    ] {
        match document(json) {
            Err(e) => assert!(e.path.starts_with(path), "{json}: {e}"),
            Ok(_) => unreachable!("{json} was accepted"),
        }
    }
}

#[test]
fn every_member_of_a_json_body_is_read_repeated_ones_too() {
    let v = validation("{}");
    // A server may read the first `q` where a JSON value keeps the last.
    assert_eq!(
        body(
            &v,
            "application/json",
            r#"{"q": "<script>alert(1)</script>", "q": "fine"}"#
        ),
        ["validation.xss"]
    );
}
