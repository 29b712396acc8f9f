//! `palisade-check --resolve` end to end: what goes to standard output and
//! standard error, the exit codes, and where relative paths are taken from.
//! What the resolution produces is tested with the resolver itself
//! (src/bin/palisade-check/resolve.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A fresh directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "palisade-resolve-cli-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| unreachable!("{e}"));
    dir
}

/// Writes `dir/name`, creating the directories `name` goes through.
fn write(dir: &Path, name: &str, text: &str) {
    let file = dir.join(name);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| unreachable!("{e}"));
    }
    std::fs::write(file, text).unwrap_or_else(|e| unreachable!("{e}"));
}

/// palisade-check with `args`, run in `dir`, `stdin` on its standard input.
fn check(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-check"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| unreachable!("cannot run palisade-check: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| unreachable!("{e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| unreachable!("{e}"))
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_else(|e| unreachable!("{e}"))
}

#[test]
fn an_unreadable_document_fails_on_standard_error_and_prints_nothing() {
    let dir = scratch("missing");
    write(
        &dir,
        "conf/policy.json",
        r#"{"version": 1, "openapi": {"document": {"file": "specs/api.yaml"}}}"#,
    );
    let out = check(&dir, &["--resolve", "conf/policy.json"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    // Relative to the configuration file's directory, not to the current one.
    let expected = "conf/policy.json: invalid configuration at `openapi.document.file`: \
                    cannot read conf/specs/api.yaml: ";
    assert!(
        text(&out.stderr).starts_with(expected),
        "{}",
        text(&out.stderr)
    );

    // A plain check resolves too, and reports like any invalid configuration.
    let out = check(&dir, &["conf/policy.json"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).starts_with(expected),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn from_standard_input_paths_are_relative_to_the_current_directory() {
    let dir = scratch("stdin");
    // Found (it is read and judged), but not an OpenAPI document.
    write(&dir, "list.yaml", "- a\n- b\n");
    let config = r#"{"openapi": {"document": {"file": "list.yaml"}}}"#;
    let out = check(&dir, &["--resolve", "-"], config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "-: invalid configuration at `openapi.document.file`: the document is an array, \
         not an object (an OpenAPI document is a JSON object or a YAML mapping)\n"
    );
}

#[test]
fn a_configuration_without_references_is_printed_as_it_is() {
    let dir = scratch("plain");
    let config = "{\n  \"version\": 1,\n  \"mode\": \"monitor\"\n}";
    let out = check(&dir, &["--resolve", "-"], config);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("{config}\n"));
}

#[test]
fn an_invalid_configuration_is_not_printed() {
    let dir = scratch("invalid");
    let out = check(&dir, &["--resolve", "-"], r#"{"version": 1, "modes": 1}"#);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).starts_with("-: invalid configuration at `modes`: unknown field"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn resolve_takes_exactly_one_file() {
    let dir = scratch("usage");
    for args in [&["--resolve"][..], &["--resolve", "a.json", "b.json"]] {
        let out = check(&dir, args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stdout), "");
        assert!(text(&out.stderr).starts_with("usage: palisade-check --resolve FILE"));
    }
}

#[test]
fn a_yaml_document_is_inlined_and_the_result_passes_the_check() {
    let dir = scratch("inline");
    write(
        &dir,
        "conf/specs/pets.yaml",
        "openapi: 3.1.0\n\
         info: {title: Pets, version: '1'}\n\
         paths:\n  \
           /pets/{id}:\n    \
             get:\n      \
               parameters:\n        \
                 - {name: id, in: path, required: true, schema: {type: integer}}\n      \
               responses:\n        \
                 200: {description: a pet}\n",
    );
    let config = r#"{"version": 1, "mode": "monitor", "openapi": {"document": {"file": "specs/pets.yaml"}}}"#;
    write(&dir, "conf/policy.json", config);

    // The filter's own check refuses the reference...
    let refused = palisade::config::Policy::from_json(config.as_bytes()).err();
    assert_eq!(
        refused.map(|e| e.path),
        Some("openapi.document.file".to_string())
    );
    // ...a plain palisade-check resolves it first...
    let out = check(&dir, &["conf/policy.json"], "");
    assert_eq!(
        text(&out.stdout),
        "conf/policy.json: ok\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // ...and --resolve prints the configuration with the document inline.
    let out = check(&dir, &["--resolve", "conf/policy.json"], "");
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
    let resolved: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(
        resolved,
        serde_json::json!({"version": 1, "mode": "monitor", "openapi": {"document": {"inline": {
            "openapi": "3.1.0",
            "info": {"title": "Pets", "version": "1"},
            "paths": {"/pets/{id}": {"get": {
                "parameters": [{"name": "id", "in": "path", "required": true,
                                "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "a pet"}}
            }}}
        }}}})
    );
    // What it prints is what the filter loads.
    assert!(palisade::config::Policy::from_json(&out.stdout).is_ok());
    let out = check(&dir, &["-"], text(&out.stdout));
    assert_eq!(text(&out.stdout), "-: ok\n");
}
