//! The API document through the pipeline: undeclared operations, bad
//! parameters and bodies refused with where they failed, monitor route
//! classes, the body phase's size bound and `default_deny`.

use super::*;

const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "pets", "version": "1"},
  "servers": [{"url": "https://api.example/v1"}],
  "paths": {
    "/pets": {
      "get": {"operationId": "listPets", "parameters": [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["available", "sold"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
      ], "responses": {"200": {"description": "ok"}}},
      "post": {"operationId": "createPet", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
               "responses": {"201": {"description": "created"}}}
    },
    "/pets/{petId}": {
      "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}}],
      "get": {"operationId": "getPet", "responses": {"200": {"description": "ok"}}}
    },
    "/uploads": {
      "post": {"requestBody": {"content": {"multipart/form-data": {}, "application/json": {"schema": {"type": "object"}}}},
               "responses": {"201": {"description": "stored"}}}
    },
    "/legacy/{id}": {
      "get": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
              "responses": {"200": {"description": "ok"}}}
    }
  },
  "components": {"schemas": {
    "Pet": {"type": "object", "required": ["name", "kind"], "additionalProperties": false, "properties": {
      "name": {"type": "string", "minLength": 1},
      "age": {"type": "integer", "minimum": 0},
      "kind": {"oneOf": [{"const": "cat"}, {"const": "dog"}]},
      "owner": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
    }}
  }}
}"##;

fn config(extra: &str) -> String {
    format!(
        r#"{{
        "routes": [{{"name": "legacy", "prefix": "/v1/legacy"}}, {{"name": "health", "path": "/healthz"}}],
        "openapi": {{"document": {{"inline": {DOCUMENT}}}, "max_body_bytes": 256,
                     "routes": {{"legacy": "monitor", "health": "off"}}}}
        {extra}
    }}"#
    )
}

/// Status and body of a request through both phases.
fn send(f: &Fixture, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let json = [("content-type", "application/json")];
    let extra: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    let parse = |r: LocalResponse| (r.status, serde_json::from_str(&r.body).unwrap_or_default());
    let check = match f.send(method, path, extra) {
        Verdict::Respond(r) => return parse(r),
        Verdict::Allow { body: None, .. } => return (200, serde_json::Value::Null),
        Verdict::Allow {
            body: Some(check), ..
        } => check,
    };
    let bytes = body.unwrap_or_default().as_bytes();
    let arrived = if bytes.len() > check.max_bytes {
        Body::TooLarge
    } else {
        Body::Complete(bytes)
    };
    match f
        .engine
        .check_body(&check, arrived, &f.services(), None)
        .response()
    {
        None => (200, serde_json::Value::Null),
        Some(r) => parse(r),
    }
}

fn refusal(answer: &(u16, serde_json::Value)) -> (u16, &str, &str) {
    let text = |k: &str| answer.1[k].as_str().unwrap_or_default();
    (answer.0, text("reason"), text("location"))
}

#[test]
fn declared_operations_pass_and_undeclared_ones_are_refused() {
    let f = Fixture::new(&config(""));
    assert_eq!(send(&f, "GET", "/v1/pets?status=sold&limit=5", None).0, 200);
    assert_eq!(send(&f, "GET", "/v1/pets/42", None).0, 200);
    for (method, path) in [
        ("GET", "/v1/admin"),
        ("DELETE", "/v1/pets"),
        ("GET", "/pets"),
    ] {
        let answer = send(&f, method, path, None);
        assert_eq!(
            refusal(&answer),
            (404, "schema.unknown_operation", ""),
            "{method} {path}"
        );
    }
}

#[test]
fn parameters_are_checked_and_the_refusal_names_which() {
    let f = Fixture::new(&config(""));
    let bad_enum = send(&f, "GET", "/v1/pets?status=eaten", None);
    assert_eq!(
        refusal(&bad_enum),
        (400, "schema.parameter", "query.status")
    );
    let too_many = send(&f, "GET", "/v1/pets?limit=1000", None);
    assert_eq!(refusal(&too_many), (400, "schema.parameter", "query.limit"));
    let not_int = send(&f, "GET", "/v1/pets/abc", None);
    assert_eq!(refusal(&not_int), (400, "schema.parameter", "path.petId"));
    // A value given twice: palisade would check one, the upstream read
    // either; an integer in another notation than digits.
    for query in [
        "limit=10&limit=1000",
        "limit=1000&limit=10",
        "status=sold&status=eaten",
    ] {
        let answer = send(&f, "GET", &format!("/v1/pets?{query}"), None);
        assert_eq!(answer.0, 400, "{query}");
        assert_eq!(answer.1["message"], "is given more than once", "{query}");
    }
    for query in ["limit=1e1", "limit=10.0", "limit=+5", "limit="] {
        let answer = send(&f, "GET", &format!("/v1/pets?{query}"), None);
        assert_eq!(
            refusal(&answer),
            (400, "schema.parameter", "query.limit"),
            "{query}"
        );
    }
    assert_eq!(
        send(&f, "GET", "/v1/pets?limit=-0", None).0,
        400,
        "below the minimum"
    );
    assert_eq!(send(&f, "GET", "/v1/pets/1e3", None).0, 400);
    // A body where the operation declares none.
    let with_body = f.send("GET", "/v1/pets", &[("content-length", "12")]);
    let Verdict::Respond(r) = with_body else {
        unreachable!("a body on a bodiless operation passed")
    };
    assert!(r.body.contains("schema.body"), "{}", r.body);
    assert_eq!(f.status("GET", "/v1/pets", &[("content-length", "0")]), 200);
    // The value the client sent is never echoed.
    assert!(!bad_enum.1.to_string().contains("eaten"), "{}", bad_enum.1);
}

#[test]
fn json_bodies_are_validated_in_the_body_phase() {
    let f = Fixture::new(&config(""));
    let pet = r#"{"name": "Rex", "kind": "dog", "age": 3, "owner": {"email": "a@example.org"}}"#;
    assert_eq!(send(&f, "POST", "/v1/pets", Some(pet)).0, 200);
    let cases = [
        (r#"{"name": "Rex", "kind": "dog", "age": -1}"#, "/age"),
        (r#"{"name": "Rex", "kind": "cow"}"#, "/kind"),
        (r#"{"name": "Rex"}"#, ""),
        (
            r#"{"name": "Rex", "kind": "cat", "owner": {"email": "nope"}}"#,
            "/owner/email",
        ),
        (r#"{"name": "Rex", "kind": "cat", "admin": true}"#, ""),
        ("not json", ""),
        ("", ""),
    ];
    for (body, at) in cases {
        let answer = send(&f, "POST", "/v1/pets", Some(body));
        let (status, reason, location) = refusal(&answer);
        assert_eq!((status, reason), (400, "schema.body"), "{body}");
        assert!(location.starts_with(at), "{body}: {location}");
        assert!(!answer.1["message"].as_str().unwrap_or_default().is_empty());
    }
    let big = format!(r#"{{"name": "{}", "kind": "cat"}}"#, "x".repeat(300));
    assert_eq!(
        refusal(&send(&f, "POST", "/v1/pets", Some(&big))).1,
        "schema.body"
    );
}

#[test]
fn monitor_and_off_route_classes_let_requests_through() {
    let f = Fixture::new(&config(""));
    // `legacy` is monitored: the bad path parameter is counted, not refused.
    assert_eq!(send(&f, "GET", "/v1/legacy/abc", None).0, 200);
    let counted = Counter::Finding {
        stage: Stage::Schema,
        reason: Reason::SchemaParameter,
        mode: Mode::Monitor,
        route: f.route("legacy"),
    };
    assert_eq!(f.metrics.get(&counted), 1);
    // `health` is off: the document does not declare it, and that is fine.
    assert_eq!(send(&f, "GET", "/healthz", None).0, 200);
}

#[test]
fn default_deny_refuses_what_nothing_declares() {
    let json = config(r#", "default_deny": true"#)
        .replace(r#""health": "off""#, r#""health": "off", "default": "off""#);
    let f = Fixture::new(&json);
    // Declared by a route class, or by an operation of the document.
    assert_eq!(send(&f, "GET", "/healthz", None).0, 200);
    assert_eq!(send(&f, "GET", "/v1/pets", None).0, 200);
    let answer = send(&f, "GET", "/v1/new-endpoint", None);
    assert_eq!(refusal(&answer), (404, "route.undeclared", ""));
    // Without a document, only the route classes declare.
    let f =
        Fixture::new(r#"{"routes": [{"name": "api", "prefix": "/api"}], "default_deny": true}"#);
    assert_eq!(send(&f, "GET", "/api/x", None).0, 200);
    assert_eq!(
        refusal(&send(&f, "GET", "/other", None)),
        (404, "route.undeclared", "")
    );
}

#[test]
fn a_document_left_as_a_reference_or_broken_is_a_configuration_error() {
    let path = |json: &str| Policy::from_json(json.as_bytes()).err().map(|e| e.path);
    assert_eq!(
        path(r#"{"openapi": {"document": {"file": "api.json"}}}"#),
        Some("openapi.document.file".into())
    );
    assert_eq!(
        path(r#"{"openapi": {"document": {"inline": {"openapi": "2.0", "paths": {}}}}}"#),
        Some("openapi.document.inline.openapi".into())
    );
    assert_eq!(
        path(&config("").replace(r#""legacy": "monitor""#, r#""nope": "monitor""#)),
        Some("openapi.routes.nope".into())
    );
}

#[test]
fn uploads_are_not_buffered_and_an_unreadable_body_is_not_a_pass() {
    let f = Fixture::new(&config(""));
    let upload = [("content-type", "multipart/form-data; boundary=x")];
    let Verdict::Allow { body, .. } = f.send("POST", "/v1/uploads", &upload) else {
        unreachable!("a declared upload was refused")
    };
    assert!(body.is_none(), "a declared non-JSON body is passed unread");
    let json = [("content-type", "application/json")];
    let Verdict::Allow {
        body: Some(check), ..
    } = f.send("POST", "/v1/uploads", &json)
    else {
        unreachable!("a JSON body was not planned")
    };
    let answer = f
        .engine
        .check_body(&check, Body::Unreadable, &f.services(), None);
    let status = answer.response().map(|r| r.status);
    assert_eq!(status, Some(503), "an enforced check whose body never came");
    // An undeclared media type is refused.
    let xml = [("content-type", "application/xml")];
    let Verdict::Allow {
        body: Some(check), ..
    } = f.send("POST", "/v1/uploads", &xml)
    else {
        unreachable!("an undeclared media type was not planned")
    };
    let answer = f
        .engine
        .check_body(&check, Body::Complete(b"<a/>"), &f.services(), None);
    assert_eq!(answer.response().map(|r| r.status), Some(400));
}
