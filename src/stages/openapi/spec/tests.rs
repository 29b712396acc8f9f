#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use serde_json::json;

const PETSTORE: &str = include_str!("fixtures/petstore.json");
const PETSTORE31: &str = include_str!("fixtures/petstore31.json");
const AT: &str = "openapi.document.inline";

fn load(text: &str) -> Api {
    let doc: Value = serde_json::from_str(text).unwrap();
    Api::compile(&doc, &Options::default(), AT).unwrap_or_else(|e| panic!("{e}"))
}

fn petstore() -> Api {
    load(PETSTORE)
}

fn found<'a>(api: &'a Api, method: &str, path: &str) -> Matched<'a> {
    match api.find(method, path) {
        Lookup::Found(m) => m,
        Lookup::MethodNotDeclared => panic!("{method} {path}: method not declared"),
        Lookup::PathNotDeclared => panic!("{method} {path}: path not declared"),
    }
}

fn name_of(api: &Api, method: &str, path: &str) -> String {
    found(api, method, path).operation.name().to_string()
}

/// The error of compiling `doc` (3.0 unless it says otherwise).
fn compile_err(doc: Value) -> ConfigError {
    match Api::compile(&doc, &Options::default(), AT) {
        Ok(_) => panic!("compiled: {doc}"),
        Err(e) => e,
    }
}

/// A 3.0 document with one `POST /x` whose JSON body has `schema`, and
/// `components.schemas` as given.
fn body_doc(schema: Value, components: Value) -> Value {
    json!({
        "openapi": "3.0.3",
        "paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": schema}}}}}},
        "components": {"schemas": components}
    })
}

fn body_api(schema: Value, components: Value) -> Api {
    Api::compile(&body_doc(schema, components), &Options::default(), AT)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn post(api: &Api, body: &str) -> Result<(), Violation> {
    let m = found(api, "POST", "/x");
    m.operation
        .body()
        .unwrap()
        .validate(Some("application/json"), body.as_bytes())
}

fn body_fails(api: &Api, body: &str, location: &str, message: &str) {
    let v = post(api, body).expect_err(body);
    assert_eq!(v.kind, ViolationKind::Body, "{body}");
    assert_eq!(
        (v.location.as_str(), v.message),
        (location, message),
        "{body}"
    );
}

fn no_headers(_: &str) -> Vec<String> {
    Vec::new()
}

/// Checks `GET /v1/pets` with `query` and the required request id.
fn list(query: &str) -> Result<(), Violation> {
    let api = petstore();
    let m = found(&api, "GET", "/v1/pets");
    let header = |name: &str| {
        (name == "x-request-id")
            .then(|| "0b3c8a4e-58e4-4c1f-9b0e-0d7b6a1c2f3e".to_string())
            .into_iter()
            .collect()
    };
    m.operation.check_parameters(&m, Some(query), &header)
}

fn param_fails(result: Result<(), Violation>, location: &str, message: &str) {
    let v = result.expect_err(location);
    assert_eq!(v.kind, ViolationKind::Parameter);
    assert_eq!((v.location.as_str(), v.message), (location, message));
}

// ---- matching ----

#[test]
fn petstore_compiles_every_operation() {
    let api = petstore();
    assert_eq!(api.operation_count(), 10);
    assert_eq!(api.bases, vec!["/v1".to_string()]);
    let api31 = load(PETSTORE31);
    assert_eq!(api31.operation_count(), 1);
}

#[test]
fn literal_path_beats_template() {
    let api = petstore();
    assert_eq!(name_of(&api, "GET", "/v1/pets/mine"), "myPets");
    assert_eq!(name_of(&api, "GET", "/v1/pets/12"), "getPet");
    assert_eq!(name_of(&api, "GET", "/v1/pets"), "listPets");
    assert_eq!(name_of(&api, "GET", "/v1/pets/12/photos/a-1"), "getPhoto");
    // No operationId: method and template.
    assert_eq!(
        name_of(&api, "DELETE", "/v1/pets/12"),
        "DELETE /pets/{petId}"
    );
    // `/pets/mine` has no PUT: the template declares it.
    assert_eq!(name_of(&api, "PUT", "/v1/pets/mine"), "updatePet");
}

#[test]
fn undeclared_method_and_path() {
    let api = petstore();
    assert!(matches!(
        api.find("PATCH", "/v1/pets/1"),
        Lookup::MethodNotDeclared
    ));
    assert!(matches!(
        api.find("CONNECT", "/v1/pets"),
        Lookup::MethodNotDeclared
    ));
    assert!(matches!(
        api.find("GET", "/v1/owners"),
        Lookup::PathNotDeclared
    ));
    assert!(matches!(
        api.find("GET", "/v1/pets/1/photos"),
        Lookup::PathNotDeclared
    ));
    // Outside the base path, or not under it at a segment boundary.
    assert!(matches!(api.find("GET", "/pets"), Lookup::PathNotDeclared));
    assert!(matches!(
        api.find("GET", "/v1pets"),
        Lookup::PathNotDeclared
    ));
    assert!(matches!(
        api.find("GET", "/v2/pets"),
        Lookup::PathNotDeclared
    ));
}

#[test]
fn trailing_slash_and_empty_segments_are_significant() {
    let api = petstore();
    assert!(matches!(
        api.find("GET", "/v1/pets/"),
        Lookup::PathNotDeclared
    ));
    assert!(matches!(
        api.find("GET", "/v1/pets//photos/a"),
        Lookup::PathNotDeclared
    ));
    assert!(matches!(api.find("POST", "/v1/owners/"), Lookup::Found(_)));
    assert!(matches!(
        api.find("POST", "/v1/owners"),
        Lookup::PathNotDeclared
    ));
    // A parameter never spans a `/`, even encoded one stays in its segment.
    assert!(matches!(
        api.find("GET", "/v1/pets/1/2"),
        Lookup::PathNotDeclared
    ));
}

#[test]
fn encoded_segments_match_decoded() {
    let api = petstore();
    assert_eq!(name_of(&api, "GET", "/v1/pets/%6Dine"), "myPets");
    assert_eq!(name_of(&api, "GET", "/v1/%70ets"), "listPets");
    let m = found(&api, "GET", "/v1/pets/a%2Fb/photos/x");
    assert_eq!(m.values, vec![b"a/b".to_vec(), b"x".to_vec()]);
}

#[test]
fn literal_text_around_a_parameter() {
    let api = petstore();
    let m = found(&api, "GET", "/v1/files/report.json");
    assert_eq!(m.values, vec![b"report".to_vec()]);
    assert!(matches!(
        api.find("GET", "/v1/files/.json"),
        Lookup::PathNotDeclared
    ));
    assert!(matches!(
        api.find("GET", "/v1/files/report.xml"),
        Lookup::PathNotDeclared
    ));
}

#[test]
fn base_path_option_overrides_servers() {
    let doc: Value = serde_json::from_str(PETSTORE).unwrap();
    let options = Options {
        base_path: Some("/api/v2/".to_string()),
    };
    let api = Api::compile(&doc, &options, AT).unwrap();
    assert!(matches!(api.find("GET", "/api/v2/pets"), Lookup::Found(_)));
    assert!(matches!(
        api.find("GET", "/v1/pets"),
        Lookup::PathNotDeclared
    ));
    let options = Options {
        base_path: Some("api".to_string()),
    };
    assert_eq!(Api::compile(&doc, &options, AT).err().unwrap().path, AT);
}

#[test]
fn several_servers_and_no_servers() {
    let doc = json!({
        "openapi": "3.0.0",
        "servers": [{"url": "https://a.example/v1"}, {"url": "/"}, {"url": "staging/v1"}],
        "paths": {"/ping": {"get": {}}}
    });
    let api = Api::compile(&doc, &Options::default(), AT).unwrap();
    for path in ["/v1/ping", "/ping", "/staging/v1/ping"] {
        assert!(matches!(api.find("GET", path), Lookup::Found(_)), "{path}");
    }
    let doc = json!({"openapi": "3.0.0", "paths": {"/": {"get": {}}}});
    let api = Api::compile(&doc, &Options::default(), AT).unwrap();
    assert!(matches!(api.find("GET", "/"), Lookup::Found(_)));
    assert!(matches!(api.find("GET", "/x"), Lookup::PathNotDeclared));
}

#[test]
fn server_variables_in_the_path_need_a_base_path() {
    let doc = json!({
        "openapi": "3.0.0",
        "servers": [{"url": "https://api.example/{version}"}],
        "paths": {}
    });
    let e = Api::compile(&doc, &Options::default(), AT).err().unwrap();
    assert_eq!(e.path, format!("{AT}.servers[0].url"));
    let options = Options {
        base_path: Some("/v3".to_string()),
    };
    assert!(Api::compile(&doc, &options, AT).is_ok());
}

#[test]
fn templates_more_literal_earlier_win() {
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {
            "/{a}/b": {"get": {"operationId": "second-literal",
                "parameters": [{"name": "a", "in": "path", "required": true, "schema": {}}]}},
            "/a/{b}": {"get": {"operationId": "first-literal",
                "parameters": [{"name": "b", "in": "path", "required": true, "schema": {}}]}},
            "/a/v{b}": {"get": {"operationId": "partial",
                "parameters": [{"name": "b", "in": "path", "required": true, "schema": {}}]}}
        }
    });
    let api = Api::compile(&doc, &Options::default(), AT).unwrap();
    assert_eq!(name_of(&api, "GET", "/a/b"), "first-literal");
    assert_eq!(name_of(&api, "GET", "/a/v2"), "partial");
    assert_eq!(name_of(&api, "GET", "/z/b"), "second-literal");
}

// ---- parameters ----

#[test]
fn query_parameters_pass() {
    list("").unwrap();
    list("status=sold&limit=100&tags=a&tags=b&ids=1,2,3&born=2020-02-29").unwrap();
    list("limit=1&unknown=whatever&status=pending").unwrap();
    list("tags=with+space&tags=%C3%A9t%C3%A9").unwrap();
}

#[test]
fn query_parameters_fail() {
    param_fails(
        list("status=lost"),
        "query.status",
        "is not one of the allowed values",
    );
    param_fails(list("limit=0"), "query.limit", "is below the minimum");
    param_fails(list("limit=101"), "query.limit", "is above the maximum");
    param_fails(list("limit=ten"), "query.limit", "must be an integer");
    param_fails(list("limit=1.5"), "query.limit", "must be an integer");
    param_fails(list("limit="), "query.limit", "must be an integer");
    param_fails(
        list("tags=a&tags=b&tags=c&tags=d"),
        "query.tags",
        "has too many items",
    );
    param_fails(
        list("tags=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        "query.tags",
        "is too long",
    );
    param_fails(
        list("ids=1,x"),
        "query.ids",
        "has an item of the wrong type",
    );
    param_fails(list("ids=1,0"), "query.ids", "is below the minimum");
    param_fails(list("born=2021-02-29"), "query.born", "is not a valid date");
    param_fails(list("tags=%FF"), "query.tags", "is not valid UTF-8");
}

#[test]
fn violations_never_quote_the_value() {
    for query in [
        "status=s3cr3t-t0ken",
        "limit=s3cr3t-t0ken",
        "born=s3cr3t-t0ken",
    ] {
        let v = list(query).unwrap_err();
        assert!(!v.location.contains("s3cr3t") && !v.message.contains("s3cr3t"));
    }
    let api = body_api(
        json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        json!({}),
    );
    let v = post(&api, r#"{"a": "s3cr3t-t0ken"}"#).unwrap_err();
    assert_eq!(v.location, "/*");
    assert!(!v.message.contains("s3cr3t"));
    // Nor a member name the document does not declare (`sk_live_...`),
    // nor one given twice.
    let v = post(&api, r#"{"sk_live_s3cr3t": "x"}"#).unwrap_err();
    assert_eq!(v.location, "/*");
    let v = post(&api, r#"{"sk_live_s3cr3t": 1, "sk_live_s3cr3t": 2}"#).unwrap_err();
    assert!(!v.location.contains("s3cr3t"), "{}", v.location);
}

#[test]
fn header_parameters() {
    let api = petstore();
    let m = found(&api, "GET", "/v1/pets");
    // Required and missing; `Accept` is ignored as OpenAPI says.
    param_fails(
        m.operation.check_parameters(&m, None, &no_headers),
        "header.X-Request-Id",
        "required parameter missing",
    );
    let bad = |name: &str| -> Vec<String> {
        (name == "x-request-id")
            .then(|| "not-a-uuid".to_string())
            .into_iter()
            .collect()
    };
    param_fails(
        m.operation.check_parameters(&m, None, &bad),
        "header.X-Request-Id",
        "is not a valid uuid",
    );
}

#[test]
fn path_parameters() {
    let api = petstore();
    let check = |path: &str| {
        let m = found(&api, "GET", path);
        m.operation.check_parameters(&m, None, &no_headers)
    };
    check("/v1/pets/42").unwrap();
    check("/v1/pets/42/photos/a-b-1").unwrap();
    // The operation's petId (integer, minimum 1) overrides the path's (string).
    param_fails(check("/v1/pets/0"), "path.petId", "is below the minimum");
    param_fails(check("/v1/pets/rex"), "path.petId", "must be an integer");
    param_fails(check("/v1/pets/%FF"), "path.petId", "is not valid UTF-8");
    param_fails(
        check("/v1/pets/1/photos/ABC"),
        "path.photoId",
        "does not match the pattern",
    );
    param_fails(
        check("/v1/pets/1/photos/abcdefghijklm"),
        "path.photoId",
        "is too long",
    );
    param_fails(
        check("/v1/pets/x/photos/abc"),
        "path.petId",
        "must be an integer",
    );
}

#[test]
fn boolean_and_cookie_parameters() {
    let api = petstore();
    let m = found(&api, "GET", "/v1/pets/1");
    let cookie = |value: &'static str| {
        move |name: &str| -> Vec<String> {
            (name == "cookie")
                .then(|| value.to_string())
                .into_iter()
                .collect()
        }
    };
    m.operation
        .check_parameters(&m, Some("verbose=true"), &cookie("a=b; session=12345678"))
        .unwrap();
    param_fails(
        m.operation
            .check_parameters(&m, Some("verbose=yes"), &no_headers),
        "query.verbose",
        "must be a boolean",
    );
    param_fails(
        m.operation
            .check_parameters(&m, None, &cookie("session=short")),
        "cookie.session",
        "is too short",
    );
}

#[test]
fn json_content_parameter_and_31_types() {
    let api = load(PETSTORE31);
    let m = found(&api, "PATCH", "/api/pets/3");
    m.operation
        .check_parameters(
            &m,
            Some("filter=%7B%22field%22%3A%22name%22%7D"),
            &no_headers,
        )
        .unwrap();
    param_fails(
        m.operation
            .check_parameters(&m, Some("filter=%7B%7D"), &no_headers),
        "query.filter",
        "required member missing",
    );
    param_fails(
        m.operation
            .check_parameters(&m, Some("filter=%7B"), &no_headers),
        "query.filter",
        "is not valid JSON (duplicate members refused)",
    );
    // exclusiveMinimum 0 (3.1 numeric form).
    let m = found(&api, "PATCH", "/api/pets/0");
    param_fails(
        m.operation.check_parameters(&m, None, &no_headers),
        "path.petId",
        "is below the minimum",
    );
}

// ---- bodies ----

fn create_pet(body: &str) -> Result<(), Violation> {
    let api = petstore();
    let m = found(&api, "POST", "/v1/pets");
    let b = m.operation.body().unwrap();
    assert!(b.required());
    b.validate(Some("application/json; charset=utf-8"), body.as_bytes())
}

const OWNER: &str = r#""owner": {"email": "ann@example.com", "age": 40}"#;

#[test]
fn nested_bodies_pass() {
    create_pet(&format!(
        r#"{{"name": "Tom", "kind": "cat", "lives": 9, {OWNER}}}"#
    ))
    .unwrap();
    create_pet(&format!(
        r#"{{"name": "Rex", "kind": "dog", "goodBoy": true, "weight": 12.5, "tags": ["a", "b"],
            "born": "2019-05-01T10:00:00.5+02:00", "chip": null,
            "category": {{"name": "dogs", "children": [{{"name": "terriers", "children": []}}]}},
            {OWNER}}}"#
    ))
    .unwrap();
}

#[test]
fn nested_bodies_fail_at_the_right_pointer() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"name": "Tom", "kind": "cat", "owner": {"email": "ann@example.com", "age": 151}}"#,
            "/owner/age",
            "is above the maximum",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "owner": {"email": "ann.example.com"}}"#,
            "/owner/email",
            "is not a valid email address",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "owner": {}}"#,
            "/owner/email",
            "required member missing",
        ),
        (
            r#"{"kind": "cat", "owner": {"email": "a@b.c"}}"#,
            "/name",
            "required member missing",
        ),
        (
            r#"{"name": "", "kind": "cat", "owner": {"email": "a@b.c"}}"#,
            "/name",
            "is too short",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "color": "red", "owner": {"email": "a@b.c"}}"#,
            "/*",
            "not allowed here",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "tags": ["a", "a"], "owner": {"email": "a@b.c"}}"#,
            "/tags",
            "has duplicate items",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "tags": ["a", 1], "owner": {"email": "a@b.c"}}"#,
            "/tags/1",
            "must be a string",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "weight": 0, "owner": {"email": "a@b.c"}}"#,
            "/weight",
            "is below the minimum",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "weight": 1.2, "owner": {"email": "a@b.c"}}"#,
            "/weight",
            "is not a multiple of `multipleOf`",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "born": "2019-05-01 10:00", "owner": {"email": "a@b.c"}}"#,
            "/born",
            "is not a valid date-time",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "chip": "x", "owner": {"email": "a@b.c"}}"#,
            "/chip",
            "is not a valid uuid",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "owner": {"email": "a@b.c", "address": {"zip": "1234"}}}"#,
            "/owner/address/zip",
            "does not match the pattern",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "owner": {"email": "a@b.c", "address": {"city": 7}}}"#,
            "/owner/address/*",
            "must be a string",
        ),
        (
            r#"{"name": "Tom", "kind": "cat", "category": {"name": "a", "children": [{"name": "b", "children": [{}]}]}, "owner": {"email": "a@b.c"}}"#,
            "/category/children/0/children/0/name",
            "required member missing",
        ),
        (r#"["not", "an", "object"]"#, "", "must be an object"),
    ];
    for (body, location, message) in cases {
        let v = create_pet(body).expect_err(body);
        assert_eq!(
            (v.location.as_str(), v.message),
            (*location, *message),
            "{body}"
        );
    }
}

#[test]
fn one_of_needs_exactly_one_branch() {
    let base = format!(r#""name": "Tom", {OWNER}"#);
    create_pet(&format!(r#"{{{base}, "kind": "dog", "goodBoy": true}}"#)).unwrap();
    // Cat and Dog both match.
    let v = create_pet(&format!(r#"{{{base}, "kind": "cat", "goodBoy": true}}"#)).unwrap_err();
    assert_eq!(
        (v.location.as_str(), v.message),
        ("", "matches more than one of the `oneOf` schemas")
    );
    // Neither.
    let v = create_pet(&format!(r#"{{{base}, "kind": "dog"}}"#)).unwrap_err();
    assert_eq!(
        (v.location.as_str(), v.message),
        ("", "matches none of the `oneOf` schemas")
    );
    let v = create_pet(&format!(r#"{{{base}, "kind": "cat", "lives": 10}}"#)).unwrap_err();
    assert_eq!(v.message, "matches none of the `oneOf` schemas");
}

#[test]
fn read_only_required_is_not_required_in_requests() {
    let api = petstore();
    let m = found(&api, "PUT", "/v1/pets/3");
    let b = m.operation.body().unwrap();
    let body = format!(r#"{{"name": "Tom", {OWNER}}}"#);
    b.validate(Some("application/json"), body.as_bytes())
        .unwrap();
    let v = b.validate(Some("application/json"), b"").unwrap_err();
    assert_eq!(
        (v.location.as_str(), v.message),
        ("", "required body missing")
    );
}

#[test]
fn media_types() {
    let api = petstore();
    let m = found(&api, "PUT", "/v1/pets/3");
    let b = m.operation.body().unwrap();
    assert!(b.validates(Some("application/json")));
    assert!(b.validates(Some("Application/JSON; charset=utf-8")));
    assert!(b.validates(Some("application/merge-patch+json")));
    assert!(!b.validates(Some("image/png")));
    assert!(!b.validates(Some("text/plain")));
    assert!(!b.validates(None));
    // A declared media range, accepted unvalidated.
    b.validate(Some("image/png"), b"\x89PNG").unwrap();
    b.validate(Some("application/merge-patch+json"), b"{}")
        .unwrap();
    let v = b
        .validate(Some("application/merge-patch+json"), b"[]")
        .unwrap_err();
    assert_eq!(v.message, "must be an object");
    let v = b.validate(Some("text/plain"), b"hi").unwrap_err();
    assert_eq!(
        (v.kind, v.message),
        (ViolationKind::Body, "media type not declared")
    );
    let v = b.validate(None, b"hi").unwrap_err();
    assert_eq!(v.message, "Content-Type missing");
    // An optional body may be absent; a form body is not parsed.
    let m = found(&api, "POST", "/v1/owners/");
    let b = m.operation.body().unwrap();
    assert!(!b.required());
    b.validate(None, b"").unwrap();
    b.validate(Some("application/x-www-form-urlencoded"), b"email=x")
        .unwrap();
    // The 3.1 document declares `application/*+json`.
    let api = load(PETSTORE31);
    let m = found(&api, "PATCH", "/api/pets/1");
    let b = m.operation.body().unwrap();
    assert!(b.validates(Some("application/merge-patch+json")));
    assert!(!b.validates(Some("application/json")));
}

#[test]
fn bad_json_and_duplicate_members() {
    let api = body_api(json!({}), json!({}));
    body_fails(&api, "{", "", "not valid JSON");
    body_fails(&api, r#"{"a": 1} x"#, "", "not valid JSON");
    body_fails(&api, r#"{"a": 1, "a": 2}"#, "", "duplicate member");
    body_fails(
        &api,
        r#"{"a": [0, {"b/c": {"d": 1, "d": 1}}]}"#,
        "",
        "duplicate member",
    );
    body_fails(&api, &"[".repeat(200), "", "not valid JSON");
    post(&api, &format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
}

#[test]
fn integers_numbers_and_enums() {
    let api = body_api(
        json!({"type": "object", "properties": {
            "i": {"type": "integer", "format": "int32"},
            "e": {"enum": [1, "one", null, {"a": [1]}]},
            "m": {"type": "integer", "multipleOf": 3}
        }}),
        json!({}),
    );
    post(&api, r#"{"i": 1.0, "e": 1.0, "m": 9}"#).unwrap();
    post(&api, r#"{"e": {"a": [1.0]}}"#).unwrap();
    post(&api, r#"{"e": null}"#).unwrap();
    body_fails(&api, r#"{"i": 1.5}"#, "/i", "must be an integer");
    body_fails(
        &api,
        r#"{"i": 2147483648}"#,
        "/i",
        "is out of the int32 range",
    );
    body_fails(
        &api,
        r#"{"e": "two"}"#,
        "/e",
        "is not one of the allowed values",
    );
    body_fails(
        &api,
        r#"{"m": 10}"#,
        "/m",
        "is not a multiple of `multipleOf`",
    );
}

#[test]
fn version_31_bodies() {
    let api = load(PETSTORE31);
    let m = found(&api, "PATCH", "/api/pets/1");
    let b = m.operation.body().unwrap();
    let ok = |body: &str| b.validate(Some("application/merge-patch+json"), body.as_bytes());
    ok(r#"{"name": null, "weight": 99.5, "version": 1, "point": [1, 2], "extra": {"x-a": "b"}, "anything": [1]}"#).unwrap();
    let fails = |body: &str, location: &str, message: &str| {
        let v = ok(body).expect_err(body);
        assert_eq!(
            (v.location.as_str(), v.message),
            (location, message),
            "{body}"
        );
    };
    fails(r#"{"name": 1}"#, "/name", "has the wrong type");
    fails(r#"{"weight": 0}"#, "/weight", "is below the minimum");
    fails(r#"{"weight": 100}"#, "/weight", "is above the maximum");
    fails(
        r#"{"version": 2}"#,
        "/version",
        "is not one of the allowed values",
    );
    fails(r#"{"point": [1, 2, 3]}"#, "/point/2", "not allowed here");
    fails(r#"{"point": ["a"]}"#, "/point/0", "must be a number");
    fails(r#"{"extra": {"y": "b"}}"#, "/extra/*", "not allowed here");
    fails(r#"{"extra": {"x-y": 1}}"#, "/extra/*", "must be a string");
    fails(r#"{"nothing": 0}"#, "/nothing", "not allowed here");
}

#[test]
fn formats() {
    let api = body_api(
        json!({"type": "object", "properties": {
            "ip4": {"format": "ipv4"}, "ip6": {"format": "ipv6"},
            "b": {"format": "byte"}, "dt": {"format": "date-time"}, "u": {"format": "whatever"}
        }}),
        json!({}),
    );
    post(
        &api,
        r#"{"ip4": "10.0.0.1", "ip6": "::1", "b": "aGk=", "dt": "2024-02-29T23:59:60Z", "u": "x"}"#,
    )
    .unwrap();
    body_fails(
        &api,
        r#"{"ip4": "10.0.0.256"}"#,
        "/ip4",
        "is not a valid IPv4 address",
    );
    body_fails(
        &api,
        r#"{"ip6": "1::2::3"}"#,
        "/ip6",
        "is not a valid IPv6 address",
    );
    body_fails(&api, r#"{"b": "aGk"}"#, "/b", "is not valid base64");
    body_fails(
        &api,
        r#"{"dt": "2023-02-29T00:00:00Z"}"#,
        "/dt",
        "is not a valid date-time",
    );
    body_fails(
        &api,
        r#"{"dt": "2023-01-01T00:00:00+2:00"}"#,
        "/dt",
        "is not a valid date-time",
    );
}

#[test]
fn any_of_not_and_lengths_in_characters() {
    let api = body_api(
        json!({"type": "object", "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "n": {"not": {"type": "string"}},
            "s": {"type": "string", "maxLength": 2},
            "o": {"type": "object", "minProperties": 1, "maxProperties": 2}
        }}),
        json!({}),
    );
    post(&api, r#"{"a": 1, "n": 1, "s": "éé", "o": {"x": 1}}"#).unwrap();
    body_fails(
        &api,
        r#"{"a": true}"#,
        "/a",
        "matches none of the `anyOf` schemas",
    );
    body_fails(&api, r#"{"n": "x"}"#, "/n", "matches the `not` schema");
    body_fails(&api, r#"{"s": "ééé"}"#, "/s", "is too long");
    body_fails(&api, r#"{"o": {}}"#, "/o", "has too few members");
    body_fails(
        &api,
        r#"{"o": {"a": 1, "b": 2, "c": 3}}"#,
        "/o",
        "has too many members",
    );
}

#[test]
fn pointers_are_escaped_and_cut() {
    // Declared names only (the others show as `*`).
    let long = "k".repeat(300);
    let api = body_api(
        json!({"properties": {"a~b/c": {"type": "integer"}, long.clone(): {"type": "integer"}}}),
        json!({}),
    );
    body_fails(&api, r#"{"a~b/c": "x"}"#, "/a~0b~1c", "must be an integer");
    let v = post(&api, &format!(r#"{{"{long}": "x"}}"#)).unwrap_err();
    assert_eq!(v.location.len(), 128);
    assert!(v.location.starts_with("/kkk"));
}

#[test]
fn work_is_bounded() {
    // Each level tries both branches of an anyOf whose first branch fails
    // deep down: exponential without the budget.
    let api = body_api(
        json!({"$ref": "#/components/schemas/T"}),
        json!({"T": {"anyOf": [
            {"allOf": [{"items": {"$ref": "#/components/schemas/T"}}, {"minItems": 3}]},
            {"type": "array", "items": {"$ref": "#/components/schemas/T"}}
        ]}}),
    );
    post(&api, "[[[]]]").unwrap();
    let nested = format!("{}{}", "[".repeat(40), "]".repeat(40));
    body_fails(&api, &nested, "", "too complex to validate");
    // Wide uniqueItems comparisons count too.
    let api = body_api(json!({"uniqueItems": true}), json!({}));
    let items: Vec<String> = (0..1000).map(|i| format!("[{i}]")).collect();
    body_fails(
        &api,
        &format!("[{}]", items.join(",")),
        "",
        "too complex to validate",
    );
}

// ---- malformed documents ----

fn err_at(doc: Value, path: &str, message_part: &str) {
    let e = compile_err(doc);
    assert_eq!(e.path, format!("{AT}{path}"), "{}", e.message);
    assert!(e.message.contains(message_part), "{}", e.message);
}

#[test]
fn malformed_documents_name_the_place() {
    err_at(json!([1]), "", "a JSON object");
    err_at(
        json!({"openapi": "2.0", "paths": {}}),
        ".openapi",
        "3.0.x or 3.1.x",
    );
    err_at(json!({"swagger": "2.0"}), ".openapi", "3.0.x or 3.1.x");
    err_at(json!({"openapi": "3.0.3"}), ".paths", "object");
    err_at(
        json!({"openapi": "3.0.3", "paths": {"pets": {}}}),
        ".paths.pets",
        "start with `/`",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/a/{x}{y}": {}}}),
        ".paths./a/{x}{y}",
        "one `{parameter}`",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/a/{x}": {}, "/a/{y}": {}}}),
        ".paths./a/{y}",
        "same template",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/pets/{petId}": {"get": {}}}}),
        ".paths./pets/{petId}.get",
        "`petId` is not declared",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/pets": {"get": {"parameters": [
            {"name": "id", "in": "path", "required": true, "schema": {}}]}}}}),
        ".paths./pets.get",
        "not in the path template",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/pets/{id}": {"get": {"parameters": [
            {"name": "id", "in": "path", "schema": {}}]}}}}),
        ".paths./pets/{id}.get.parameters[0].required",
        "required: true",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/p": {"get": {"parameters": [
            {"name": "f", "in": "query", "style": "deepObject", "schema": {"type": "object"}}]}}}}),
        ".paths./p.get.parameters[0].style",
        "not supported",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/p": {"get": {"parameters": [
            {"name": "f", "in": "query", "schema": {"type": "object"}}]}}}}),
        ".paths./p.get.parameters[0].schema",
        "object-valued parameters",
    );
    err_at(
        json!({"openapi": "3.0.3", "paths": {"/p": {"get": {"parameters": [
            {"$ref": "#/components/parameters/Nope"}]}}}}),
        ".paths./p.get.parameters[0].$ref",
        "does not exist",
    );
}

#[test]
fn malformed_schemas_name_the_place() {
    let at = ".paths./x.post.requestBody.content.application/json.schema";
    err_at(
        body_doc(json!({"$ref": "#/components/schemas/Nope"}), json!({})),
        &format!("{at}.$ref"),
        "does not exist",
    );
    err_at(
        body_doc(json!({"$ref": "other.yaml#/Pet"}), json!({})),
        &format!("{at}.$ref"),
        "external references are not resolved",
    );
    err_at(
        body_doc(json!({"properties": {"a": {"if": {}}}}), json!({})),
        &format!("{at}.properties.a.if"),
        "`if` is not supported by palisade's validator",
    );
    err_at(
        body_doc(
            json!({"$ref": "#/components/schemas/A"}),
            json!({"A": {"items": {"unevaluatedItems": false}}}),
        ),
        ".components.schemas.A.items.unevaluatedItems",
        "not supported",
    );
    err_at(
        body_doc(json!({"pattern": "(?=a)"}), json!({})),
        &format!("{at}.pattern"),
        "pattern `(?=a)` is not supported",
    );
    err_at(
        body_doc(json!({"type": "int"}), json!({})),
        &format!("{at}.type"),
        "type name",
    );
    err_at(
        body_doc(json!({"minLength": -1}), json!({})),
        &format!("{at}.minLength"),
        "non-negative",
    );
    err_at(
        body_doc(json!({"exclusiveMinimum": 1}), json!({})),
        &format!("{at}.exclusiveMinimum"),
        "true or false in OpenAPI 3.0",
    );
    // A cycle that never descends into the instance.
    err_at(
        body_doc(
            json!({"$ref": "#/components/schemas/A"}),
            json!({
                "A": {"allOf": [{"$ref": "#/components/schemas/B"}]},
                "B": {"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/A"}]}
            }),
        ),
        ".components.schemas.B.anyOf[1]",
        "refers back to itself",
    );
}

#[test]
fn version_specific_keywords() {
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {"nullable": true}}}}}}}
    });
    err_at(
        doc,
        ".paths./x.post.requestBody.content.application/json.schema.nullable",
        "in 3.1 add",
    );
    let doc = body_doc(json!({"type": ["string", "null"]}), json!({}));
    err_at(
        doc,
        ".paths./x.post.requestBody.content.application/json.schema.type",
        "type name",
    );
    // 3.0 nullable adds null to an explicit type only.
    let api = body_api(json!({"type": "string", "nullable": true}), json!({}));
    post(&api, "null").unwrap();
    body_fails(&api, "1", "", "has the wrong type");
}

#[test]
fn node_count_is_bounded() {
    let wide: serde_json::Map<String, Value> =
        (0..20_001).map(|i| (format!("p{i}"), json!({}))).collect();
    let e = compile_err(body_doc(json!({"properties": wide}), json!({})));
    assert!(e.message.contains("20000 nodes"), "{}", e.message);
}

#[test]
fn recursive_schema_through_properties_compiles() {
    let api = body_api(
        json!({"$ref": "#/components/schemas/Node"}),
        json!({"Node": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}}),
    );
    post(&api, r#"{"next": {"next": {}}}"#).unwrap();
    body_fails(
        &api,
        r#"{"next": {"next": 1}}"#,
        "/next/next",
        "must be an object",
    );
}

#[test]
fn deepest_parsable_body_validates() {
    // serde_json parses 128 levels; 63 nested categories are 126.
    let mut body = r#"{"name": "leaf"}"#.to_string();
    for _ in 0..62 {
        body = format!(r#"{{"name": "c", "children": [{body}]}}"#);
    }
    let api = load(PETSTORE);
    let m = found(&api, "POST", "/v1/categories");
    let b = m.operation.body().unwrap();
    b.validate(Some("application/json"), body.as_bytes())
        .unwrap();
    let bad = body.replace(r#"{"name": "leaf"}"#, r#"{"name": 1}"#);
    let v = b
        .validate(Some("application/json"), bad.as_bytes())
        .unwrap_err();
    assert_eq!(v.message, "must be a string");
    assert_eq!(v.location.len(), 128);
}

#[test]
fn path_item_refs_and_any_media_type() {
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/upload": {"$ref": "#/components/pathItems/Upload"}},
        "components": {"pathItems": {"Upload": {"post": {
            "operationId": "upload",
            "requestBody": {"content": {"*/*": {}, "application/json": {"schema": {"type": "array"}}}}
        }}}}
    });
    let api = Api::compile(&doc, &Options::default(), AT).unwrap();
    let m = found(&api, "POST", "/upload");
    assert_eq!(m.operation.name(), "upload");
    let b = m.operation.body().unwrap();
    b.validate(Some("text/csv"), b"a,b").unwrap();
    b.validate(Some("application/json"), b"[]").unwrap();
    let v = b.validate(Some("application/json"), b"{}").unwrap_err();
    assert_eq!(v.message, "must be an array");
    // JSON under `*/*` only: parsed, no schema.
    assert!(b.validates(Some("application/ld+json")));
    let v = b.validate(Some("application/ld+json"), b"{").unwrap_err();
    assert_eq!(v.message, "not valid JSON");
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/upload": {"$ref": "#/components/pathItems/Nope"}}
    });
    err_at(doc, ".paths./upload.$ref", "does not exist");
}
