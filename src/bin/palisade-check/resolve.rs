//! `openapi.document` given by reference, resolved when the configuration
//! is built (`palisade-check --resolve`, and before every check).
//!
//! The filter cannot read files or wait on an HTTP call in `on_configure`,
//! so it accepts the document only inline. `{"file": PATH}` (relative to
//! the configuration file's directory, or to the current directory for
//! standard input) and `{"uri": "file:///...", "http://...",
//! "https://..."}` are read or fetched here and replaced by
//! `{"inline": DOCUMENT}`.
//!
//! A document is JSON when its first non-blank character is `{` (and it
//! parses as JSON; otherwise it is tried as YAML, whose flow mappings also
//! begin with `{`), YAML otherwise; the file name's extension plays no
//! part. YAML is turned into JSON values: integer keys (`200:` under
//! `responses`, which OpenAPI asks to be quoted but is often not) become
//! their decimal text, merge keys (`<<`) are applied, and any other
//! non-string key, a custom tag (`!Ref`) or a non-finite number (`.nan`,
//! `.inf`) is an error naming where it is.

use palisade::core::config_error::{err, ConfigError};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest document fetched over HTTP(S).
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// Whole exchange (connection, redirects, body) of one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed before a fetch fails.
pub const MAX_REDIRECTS: u32 = 5;

/// Where a referenced document is.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Http(String),
}

/// `bytes` (a configuration) with its referenced documents resolved. The
/// bytes are returned unchanged when they are not JSON (the check then
/// reports it as it always does) or reference nothing, re-serialized
/// (compact, key order not kept) otherwise.
pub fn resolve_config(bytes: Vec<u8>, base_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let Ok(mut config) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(bytes);
    };
    if !resolve_documents(&mut config, base_dir)? {
        return Ok(bytes);
    }
    serde_json::to_vec(&config)
        .map_err(|e| err(".", format!("cannot write the resolved configuration: {e}")))
}

/// Replaces `openapi.document` by `{"inline": ...}` when it is a
/// `{"file": ...}` or `{"uri": ...}` reference; relative paths are joined
/// to `base_dir`. Returns whether anything was replaced. Anything else
/// (no `openapi`, an inline document, an object of another shape) is left
/// for the configuration check to judge.
pub fn resolve_documents(config: &mut Value, base_dir: &Path) -> Result<bool, ConfigError> {
    let Some(document) = config
        .get_mut("openapi")
        .and_then(|openapi| openapi.get_mut("document"))
    else {
        return Ok(false);
    };
    let Some((kind, target)) = document
        .as_object()
        .filter(|members| members.len() == 1)
        .and_then(|members| members.iter().next())
    else {
        return Ok(false);
    };
    let path = format!("openapi.document.{kind}");
    let source = match (kind.as_str(), target) {
        ("file" | "uri", Value::String(target)) if target.is_empty() => {
            return Err(err(path, "must not be empty"))
        }
        ("file", Value::String(file)) => Source::File(base_dir.join(file)),
        ("uri", Value::String(uri)) => source_of_uri(uri).map_err(|m| err(&path, m))?,
        ("file", _) => {
            return Err(err(
                path,
                "must be a string: a path, relative to the configuration file's directory",
            ))
        }
        ("uri", _) => {
            return Err(err(
                path,
                "must be a string: a file://, http:// or https:// URI",
            ))
        }
        _ => return Ok(false),
    };
    let bytes = match &source {
        Source::File(file) => {
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
        }
        Source::Http(uri) => fetch(uri),
    }
    .map_err(|m| err(&path, m))?;
    let parsed = parse_document(&bytes).map_err(|m| err(&path, m))?;
    *document = Value::Object(Map::from_iter([("inline".to_string(), parsed)]));
    Ok(true)
}

/// A `file://` URI's path (absolute, percent-decoded), or an HTTP(S) URI
/// without its fragment.
fn source_of_uri(uri: &str) -> Result<Source, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "`{uri}` is not an absolute URI (file:///..., http://... or https://...); \
             for a path relative to the configuration, use {{\"file\": ...}}"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {
            let without_fragment = uri.split_once('#').map_or(uri, |(before, _)| before);
            Ok(Source::Http(without_fragment.to_string()))
        }
        "file" => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(format!(
                    "`{uri}`: a file URI names an absolute path on this host (file:///path/to/openapi.yaml)"
                ));
            }
            if path.contains(['?', '#']) {
                return Err(format!(
                    "`{uri}`: a file URI with a query or a fragment is not supported"
                ));
            }
            percent_decode(path)
                .map(|p| Source::File(PathBuf::from(p)))
                .ok_or_else(|| {
                    format!("`{uri}`: invalid percent-encoding (or not UTF-8 once decoded)")
                })
        }
        other => Err(format!(
            "unsupported URI scheme `{other}`: use file://, http:// or https://"
        )),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// GET `uri`: at most [`MAX_REDIRECTS`] redirects, [`FETCH_TIMEOUT`] in
/// all, [`MAX_DOCUMENT_BYTES`] of body; a status other than 2xx is an error.
fn fetch(uri: &str) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(MAX_REDIRECTS)
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(uri)
        .header(
            "accept",
            "application/json, application/yaml;q=0.9, text/yaml;q=0.9, */*;q=0.5",
        )
        .call()
        .map_err(|e| format!("cannot fetch {uri}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "cannot fetch {uri}: the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string());
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => format!(
                "cannot fetch {uri}: the document is larger than {} MiB",
                MAX_DOCUMENT_BYTES >> 20
            ),
            e => format!("cannot fetch {uri}: {e}"),
        })
}

/// A document's bytes as a JSON object: JSON when it begins with `{`
/// (YAML when that fails), YAML otherwise.
pub fn parse_document(bytes: &[u8]) -> Result<Value, String> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let json_like = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let json = if json_like {
        serde_json::from_slice::<Value>(bytes).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        Err(String::new())
    };
    let value = match json {
        Ok(value) => value,
        Err(json_error) => {
            let yaml = from_yaml(bytes).map_err(|yaml_error| {
                if json_like {
                    json_error
                } else {
                    format!("not valid JSON or YAML: {yaml_error}")
                }
            })?;
            yaml_to_json(yaml, "")?
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        other => Err(format!(
            "the document is {}, not an object (an OpenAPI document is a JSON object or a YAML mapping)",
            json_kind(&other)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty or null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// YAML text as YAML values, merge keys applied.
fn from_yaml(bytes: &[u8]) -> Result<yaml_serde::Value, String> {
    let mut yaml: yaml_serde::Value = yaml_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    yaml.apply_merge().map_err(|e| e.to_string())?;
    Ok(yaml)
}

/// `at` (a JSON path, empty for the top level) for messages.
fn place(at: &str) -> String {
    if at.is_empty() {
        "at the top level".to_string()
    } else {
        format!("at `{at}`")
    }
}

fn yaml_to_json(yaml: yaml_serde::Value, at: &str) -> Result<Value, String> {
    use yaml_serde::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("`{n}` {} is not a JSON number", place(at)))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut object = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                    other => {
                        return Err(format!(
                            "the key {} {} is not a string; JSON keys are strings (quote it)",
                            yaml_key(&other),
                            place(at)
                        ))
                    }
                };
                let inner = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let value = yaml_to_json(value, &inner)?;
                if object.insert(key, value).is_some() {
                    return Err(format!(
                        "`{inner}` is given twice (once as a number, once as a string)"
                    ));
                }
            }
            Value::Object(object)
        }
        Y::Tagged(tagged) => {
            return Err(format!(
                "the tag `{}` {} has no JSON equivalent",
                tagged.tag,
                place(at)
            ))
        }
    })
}

/// A non-string YAML key, as the message shows it.
fn yaml_key(key: &yaml_serde::Value) -> String {
    use yaml_serde::Value as Y;
    match key {
        Y::Null => "`null` (or empty)".to_string(),
        Y::Bool(b) => format!("`{b}`"),
        Y::Number(n) => format!("`{n}`"),
        Y::String(s) => format!("`{s}`"),
        Y::Sequence(_) => "that is a sequence".to_string(),
        Y::Mapping(_) => "that is a mapping".to_string(),
        Y::Tagged(t) => format!("tagged `{}`", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A fresh directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-resolve-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| unreachable!("{e}"));
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| unreachable!("{e}"));
    }

    fn with_document(document: Value) -> Value {
        json!({"version": 1, "routes": [{"name": "api", "prefix": "/api"}],
               "openapi": {"document": document, "mode": "enforce"}})
    }

    fn resolved(document: Value, base: &Path) -> Result<Value, ConfigError> {
        let mut config = with_document(document);
        resolve_documents(&mut config, base).map(|_| config)
    }

    fn error(document: Value, base: &Path) -> ConfigError {
        match resolved(document, base) {
            Ok(config) => unreachable!("resolved: {config}"),
            Err(e) => e,
        }
    }

    const PETSTORE_YAML: &str = "\
openapi: 3.0.3
info: {title: Petstore, version: '1.0'}
x-common: &common
  description: a pet
paths:
  /pets/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer}}
      responses:
        200:
          <<: *common
        '404':
          description: missing
";

    fn petstore() -> Value {
        json!({
            "openapi": "3.0.3",
            "info": {"title": "Petstore", "version": "1.0"},
            "x-common": {"description": "a pet"},
            "paths": {"/pets/{id}": {"get": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "a pet"}, "404": {"description": "missing"}}
            }}}
        })
    }

    #[test]
    fn a_yaml_file_relative_to_the_configuration_becomes_inline() {
        let dir = scratch("yaml");
        std::fs::create_dir_all(dir.join("specs")).unwrap_or_else(|e| unreachable!("{e}"));
        write(&dir.join("specs"), "petstore.yaml", PETSTORE_YAML);
        let config = resolved(json!({"file": "specs/petstore.yaml"}), &dir)
            .unwrap_or_else(|e| unreachable!("{e}"));
        // Everything else is kept as it was.
        assert_eq!(config, with_document(json!({"inline": petstore()})));
    }

    #[test]
    fn a_json_file_is_read_as_json() {
        let dir = scratch("json");
        write(
            &dir,
            "api.yaml",
            &format!(
                "\u{feff}  \n{}",
                serde_json::to_string_pretty(&petstore()).unwrap_or_default()
            ),
        );
        let config =
            resolved(json!({"file": "api.yaml"}), &dir).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(config["openapi"]["document"], json!({"inline": petstore()}));
    }

    #[test]
    fn a_yaml_flow_mapping_that_is_not_json_is_still_read() {
        assert_eq!(
            parse_document(b"{openapi: 3.1.0, paths: {}}"),
            Ok(json!({"openapi": "3.1.0", "paths": {}}))
        );
    }

    #[test]
    fn nothing_to_resolve_leaves_the_configuration_alone() {
        let dir = scratch("none");
        for mut config in [
            json!({"version": 1}),
            with_document(json!({"inline": {"openapi": "3.1.0"}})),
            with_document(json!({"file": "a.json", "inline": {}})),
            json!({"openapi": [1]}),
        ] {
            let before = config.clone();
            assert_eq!(resolve_documents(&mut config, &dir), Ok(false));
            assert_eq!(config, before);
        }
        let bytes = b"{not json".to_vec();
        assert_eq!(resolve_config(bytes.clone(), &dir), Ok(bytes));
        let bytes = b"{\"version\": 1}".to_vec();
        assert_eq!(resolve_config(bytes.clone(), &dir), Ok(bytes));
    }

    #[test]
    fn resolve_config_returns_the_resolved_json() {
        let dir = scratch("config");
        write(&dir, "doc.json", r#"{"openapi": "3.1.0", "paths": {}}"#);
        let bytes = br#"{"openapi": {"document": {"file": "doc.json"}}}"#.to_vec();
        let out = resolve_config(bytes, &dir).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap_or_default(),
            json!({"openapi": {"document": {"inline": {"openapi": "3.1.0", "paths": {}}}}})
        );
    }

    #[test]
    fn a_missing_file_names_the_member_and_the_path() {
        let dir = scratch("missing");
        let e = error(json!({"file": "nope.yaml"}), &dir);
        assert_eq!(e.path, "openapi.document.file");
        assert!(e.message.starts_with("cannot read "), "{e}");
        assert!(e.message.contains("nope.yaml"), "{e}");
        assert!(
            e.to_string()
                .starts_with("invalid configuration at `openapi.document.file`: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn references_of_the_wrong_type_are_errors() {
        let dir = scratch("types");
        let e = error(json!({"file": 3}), &dir);
        assert_eq!(e.path, "openapi.document.file");
        assert!(e.message.starts_with("must be a string"), "{e}");
        let e = error(json!({"uri": ""}), &dir);
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("openapi.document.uri", "must not be empty")
        );
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        let cases: [(&[u8], &str); 7] = [
            (b"{\"openapi\": ", "not valid JSON: "),
            (b"openapi: [1, 2", "not valid JSON or YAML: "),
            (b"- a\n- b\n", "the document is an array, not an object"),
            (b"", "the document is empty or null, not an object"),
            (b"just text", "the document is a string, not an object"),
            (b"a: 1\n---\nb: 2\n", "not valid JSON or YAML: "),
            (b"a: 1\na: 2\n", "not valid JSON or YAML: "),
        ];
        for (text, expected) in cases {
            match parse_document(text) {
                Ok(v) => unreachable!("{}: {v}", String::from_utf8_lossy(text)),
                Err(m) => assert!(m.starts_with(expected), "{m}"),
            }
        }
    }

    #[test]
    fn yaml_that_has_no_json_equivalent_is_refused_where_it_is() {
        let cases = [
            (
                "paths:\n  /a:\n    true: 1\n",
                "the key `true` at `paths./a` is not a string",
            ),
            (
                "? [a, b]\n: 1\n",
                "the key that is a sequence at the top level is not a string",
            ),
            (
                "a:\n  ~: 1\n",
                "the key `null` (or empty) at `a` is not a string",
            ),
            ("a:\n  1.5: x\n", "the key `1.5` at `a` is not a string"),
            ("a: [1, .nan]\n", "`.nan` at `a[1]` is not a JSON number"),
            ("a: -.inf\n", "`-.inf` at `a` is not a JSON number"),
            (
                "a: !Ref b\n",
                "the tag `!Ref` at `a` has no JSON equivalent",
            ),
            ("r:\n  200: x\n  '200': y\n", "`r.200` is given twice"),
        ];
        for (text, expected) in cases {
            match parse_document(text.as_bytes()) {
                Ok(v) => unreachable!("{text}: {v}"),
                Err(m) => assert!(m.starts_with(expected), "{text}: {m}"),
            }
        }
    }

    #[test]
    fn yaml_scalars_map_to_json() {
        let text = "i: -3\nu: 18446744073709551615\nf: 1.5\nb: yes\nt: true\nn: ~\ns: '007'\nk:\n  404: x\n";
        assert_eq!(
            parse_document(text.as_bytes()),
            Ok(
                json!({"i": -3, "u": u64::MAX, "f": 1.5, "b": "yes", "t": true, "n": null,
                      "s": "007", "k": {"404": "x"}})
            )
        );
    }

    #[test]
    fn file_uris_name_absolute_paths() {
        let dir = scratch("file uri");
        write(&dir, "my doc.json", r#"{"openapi": "3.1.0"}"#);
        let encoded = dir
            .join("my doc.json")
            .display()
            .to_string()
            .replace(' ', "%20");
        for uri in [
            format!("file://{encoded}"),
            format!("FILE://localhost{encoded}"),
        ] {
            let config = resolved(json!({"uri": uri}), Path::new("/nonexistent"))
                .unwrap_or_else(|e| unreachable!("{uri}: {e}"));
            assert_eq!(
                config["openapi"]["document"],
                json!({"inline": {"openapi": "3.1.0"}})
            );
        }
        let cases = [
            ("file:doc.json", "`file:doc.json` is not an absolute URI"),
            (
                "file://doc.json",
                "`file://doc.json`: a file URI names an absolute path",
            ),
            ("file:///a%2", "`file:///a%2`: invalid percent-encoding"),
            (
                "file:///a.json#/paths",
                "`file:///a.json#/paths`: a file URI with a query",
            ),
            ("ftp://example.com/a.json", "unsupported URI scheme `ftp`"),
        ];
        for (uri, expected) in cases {
            let e = error(json!({"uri": uri}), &dir);
            assert_eq!(e.path, "openapi.document.uri");
            assert!(e.message.starts_with(expected), "{uri}: {e}");
        }
    }

    /// Serves on 127.0.0.1 until the test ends: `answer(path)` gives the
    /// status line's code, extra headers and the body. Returns the base URL.
    fn serve(answer: fn(&str) -> (u16, String, Vec<u8>)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| unreachable!("{e}"));
        let base = format!(
            "http://{}",
            listener
                .local_addr()
                .unwrap_or_else(|e| unreachable!("{e}"))
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, headers, body) = answer(&path);
                let mut stream = reader.into_inner();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        base
    }

    fn answer(path: &str) -> (u16, String, Vec<u8>) {
        match path {
            "/openapi.json" => (
                200,
                String::new(),
                br#"{"openapi": "3.1.0", "paths": {}}"#.to_vec(),
            ),
            "/openapi.yaml" => (
                200,
                "content-type: application/yaml\r\n".into(),
                PETSTORE_YAML.into(),
            ),
            "/moved" => (301, "location: /hop/2\r\n".into(), Vec::new()),
            "/loop" => (302, "location: /loop\r\n".into(), Vec::new()),
            "/huge" => (
                200,
                String::new(),
                vec![b' '; MAX_DOCUMENT_BYTES as usize + 1],
            ),
            p if p.starts_with("/hop/") => {
                let n: u32 = p.trim_start_matches("/hop/").parse().unwrap_or(0);
                if n >= MAX_REDIRECTS {
                    (200, String::new(), br#"{"openapi": "3.0.0"}"#.to_vec())
                } else {
                    (307, format!("location: /hop/{}\r\n", n + 1), Vec::new())
                }
            }
            _ => (404, String::new(), b"not here".to_vec()),
        }
    }

    #[test]
    fn http_documents_are_fetched() {
        let base = serve(answer);
        let dir = Path::new("/nonexistent");
        let config = resolved(json!({"uri": format!("{base}/openapi.json")}), dir)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            config["openapi"]["document"],
            json!({"inline": {"openapi": "3.1.0", "paths": {}}})
        );
        let config = resolved(json!({"uri": format!("{base}/openapi.yaml#ignored")}), dir)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(config["openapi"]["document"], json!({"inline": petstore()}));
        // Four redirects, then the document.
        let config = resolved(json!({"uri": format!("{base}/moved")}), dir)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            config["openapi"]["document"],
            json!({"inline": {"openapi": "3.0.0"}})
        );
        // Exactly MAX_REDIRECTS.
        assert!(resolved(json!({"uri": format!("{base}/hop/0")}), dir).is_ok());
    }

    #[test]
    fn http_failures_name_the_status_or_the_cause() {
        let base = serve(answer);
        let dir = Path::new("/nonexistent");
        let e = error(json!({"uri": format!("{base}/absent.json")}), dir);
        assert_eq!(e.path, "openapi.document.uri");
        assert_eq!(
            e.message,
            format!("cannot fetch {base}/absent.json: the server answered HTTP 404 Not Found")
        );
        let e = error(json!({"uri": format!("{base}/loop")}), dir);
        assert!(
            e.message
                .starts_with(&format!("cannot fetch {base}/loop: ")),
            "{e}"
        );
        assert!(e.message.contains("redirect"), "{e}");
        let e = error(json!({"uri": format!("{base}/huge")}), dir);
        assert_eq!(
            e.message,
            format!("cannot fetch {base}/huge: the document is larger than 16 MiB")
        );
        // Nothing listens there any more.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| unreachable!("{e}"));
            listener
                .local_addr()
                .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let e = error(json!({"uri": format!("http://{closed}/openapi.json")}), dir);
        assert!(e.message.starts_with("cannot fetch http://"), "{e}");
    }
}
