//! No secret written in a configuration comes back in an error: not in
//! `ConfigError`'s Display (what Envoy logs), not in `palisade-check`'s
//! output. Every secret path gets every kind of mistake; each error must
//! still name its path and say what was expected.

use palisade::config::Policy;
use std::process::Command;

/// HMAC key (base64), long enough.
const SIG_B64: &str = "UGFsaXNhZGVUZXN0U2lnbmluZ0tleU9mVGhpcnR5VHdvISE=";
/// HMAC key (base64), too short.
const SHORT_B64: &str = "c2hvcnQtc2VjcmV0LWtleQ==";
/// Not base64.
const BAD_B64: &str = "not*base64*UGFsaXNhZGVTZWNyZXQ";
/// A secret that JSON and Rust's Debug both escape.
const QUOTED: &str = "se\"cr\\et-with-quote-4711";
/// SHA-256 of an API key.
const HEX: &str = "9f2c6a1be0d34c7789aa01f3e5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e";
/// 63 hex digits.
const HEX63: &str = "9f2c6a1be0d34c7789aa01f3e5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7";
/// 64 characters, not hex.
const NON_HEX: &str = "zz2c6a1be0d34c7789aa01f3e5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6dzz";
/// A secret written as a JSON number.
const NUMBER: &str = "987654321012345";
/// An HMAC `oct` JWK's `k` (base64url, 48 bytes).
const OCT_K: &str = "b2N0LWp3ay1zZWNyZXQtZm9yLXBhbGlzYWRlLWNvbmZpZy1lcnJvci10ZXN0cw";
/// An `oct` `k` of 13 bytes.
const OCT_SHORT: &str = "c2hvcnQtb2N0LWtleQ";
/// A variable holding a value that is not base64 / not a hash.
const BAD_ENV: &str = "PALISADE_TEST_CONFIG_SECRETS_BAD";
const BAD_ENV_VALUE: &str = "env-held*secret*value-0815";

const SECRETS: [&str; 11] = [
    SIG_B64,
    SHORT_B64,
    BAD_B64,
    QUOTED,
    HEX,
    HEX63,
    NON_HEX,
    NUMBER,
    OCT_K,
    OCT_SHORT,
    BAD_ENV_VALUE,
];

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `(document, path prefix the error must name, word the message must hold)`.
fn cases() -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    let sig = |entry: &str| format!(r#"{{"signatures": {{"keys": [{entry}]}}}}"#);
    let sig_secret = |secret: &str| sig(&format!(r#"{{"id": "k", "secret": {secret}}}"#));
    for s in [SIG_B64, SHORT_B64, BAD_B64, QUOTED] {
        let q = json_string(s);
        for secret in [
            q.clone(),
            format!("{{{q}: null}}"),
            format!("{{{q}: {q}}}"),
            format!(r#"{{"base64x": {q}}}"#),
            format!(r#"{{"base64": {q}, "extra": 1}}"#),
            format!(r#"{{"base64": {q}, {q}: 1}}"#),
            format!(r#"{{"base64": {q}, "env": {q}}}"#),
            format!(r#"{{"base64": [{q}]}}"#),
            format!(r#"{{"base64": {{"value": {q}}}}}"#),
            format!(r#"{{"env": [{q}]}}"#),
            format!("[{q}]"),
            format!(r#"[{{"base64": {q}}}]"#),
        ] {
            out.push((sig_secret(&secret), "signatures.keys", "expected"));
        }
        out.push((
            sig_secret(&format!(r#"{{"env": {q}}}"#)),
            "signatures.keys[0].secret.env",
            "not set",
        ));
        out.push((sig(&q), "signatures.keys", "expected"));
        out.push((
            format!(r#"{{"signatures": {{"keys": {q}}}}}"#),
            "signatures.keys",
            "expected",
        ));
        out.push((
            sig(&format!(
                r#"{{"id": "k", "secret": {{"base64": {q}}}, {q}: 1}}"#
            )),
            "signatures.keys[0]",
            "expected",
        ));
        out.push((
            sig(&format!(r#"{{"id": "k", {q}: {{"base64": {q}}}}}"#)),
            "signatures.keys[0]",
            "expected",
        ));
        out.push((
            sig(&format!(r#"["k", {{"base64": {q}}}]"#)),
            "signatures.keys[0]",
            "expected",
        ));
    }
    out.push((
        sig_secret(&format!(r#"{{"base64": {}}}"#, json_string(SHORT_B64))),
        "signatures.keys[0]",
        "32",
    ));
    out.push((
        sig_secret(&format!(r#"{{"base64": {}}}"#, json_string(BAD_B64))),
        "signatures.keys[0].secret.base64",
        "base64",
    ));
    out.push((
        sig_secret(&format!(r#"{{"env": "{BAD_ENV}"}}"#)),
        "signatures.keys[0].secret.env",
        "base64",
    ));
    out.push((sig_secret(NUMBER), "signatures.keys[0].secret", "number"));
    out.push((
        sig_secret(&format!(r#"{{"base64": {NUMBER}}}"#)),
        "signatures.keys[0].secret.base64",
        "number",
    ));
    out.push((
        sig_secret(&format!(r#"{{"env": {NUMBER}}}"#)),
        "signatures.keys[0].secret.env",
        "number",
    ));
    out.push((
        sig_secret(&format!(r#"{{"{NUMBER}": {NUMBER}}}"#)),
        "signatures.keys[0].secret",
        "expected",
    ));

    let api =
        |entry: &str| format!(r#"{{"api_keys": {{"header": "x-api-key", "keys": [{entry}]}}}}"#);
    let api_hash = |hash: &str| api(&format!(r#"{{"id": "a", "sha256": {hash}}}"#));
    for s in [HEX, HEX63, NON_HEX, QUOTED] {
        let q = json_string(s);
        for hash in [
            format!("{{{q}: null}}"),
            format!(r#"{{"env": {q}, "extra": 1}}"#),
            format!(r#"{{"env": {q}, {q}: 1}}"#),
            format!(r#"{{"env": [{q}]}}"#),
            format!(r#"{{"hex": {q}}}"#),
            format!("[{q}]"),
        ] {
            out.push((api_hash(&hash), "api_keys.keys[0].sha256", "expected"));
        }
        out.push((
            api_hash(&format!(r#"{{"env": {q}}}"#)),
            "api_keys.keys[0].sha256.env",
            "not set",
        ));
        out.push((api(&q), "api_keys.keys", "expected"));
        out.push((
            format!(r#"{{"api_keys": {{"header": "x-api-key", "keys": {q}}}}}"#),
            "api_keys.keys",
            "expected",
        ));
        out.push((
            api(&format!(r#"{{"id": "a", "sha256": {q}, {q}: 1}}"#)),
            "api_keys.keys[0]",
            "expected",
        ));
        out.push((
            api(&format!(r#"{{"id": "a", {q}: {q}}}"#)),
            "api_keys.keys[0]",
            "expected",
        ));
    }
    for s in [HEX63, NON_HEX, QUOTED] {
        out.push((api_hash(&json_string(s)), "api_keys.keys[0].sha256", "hex"));
    }
    out.push((api_hash(NUMBER), "api_keys.keys[0].sha256", "number"));
    out.push((
        api_hash(&format!(r#"{{"env": "{BAD_ENV}"}}"#)),
        "api_keys.keys[0].sha256.env",
        "hex",
    ));

    let jwks = |set: &str| {
        format!(
            r#"{{"jwt": {{"providers": [{{"name": "p", "issuer": "https://i", "algorithms": ["HS256"], "jwks": {set}}}]}}}}"#
        )
    };
    let oct = |k: &str| {
        jwks(&format!(
            r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {k}}}]}}}}"#
        ))
    };
    for s in [OCT_K, OCT_SHORT, QUOTED] {
        let q = json_string(s);
        for set in [
            q.clone(),
            format!("{{{q}: 1}}"),
            format!("[{q}]"),
            format!(r#"{{"inline": {q}}}"#),
            format!(r#"{{"inline": [{q}]}}"#),
            format!(r#"{{"inline": {{"keys": {q}}}}}"#),
            format!(r#"{{"inline": {{"keys": [{q}]}}}}"#),
            format!(r#"{{"inline": {{"keys": [[{q}]]}}}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": [{q}]}}]}}}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": {q}, "k": {q}}}]}}}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {q}, "kid": 5}}]}}}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {q}, "use": {q}}}]}}}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {q}, "alg": "RS256"}}]}}}}"#),
            format!(
                r#"{{"inline": {{"keys": [{{"kty": "RSA", "n": {q}, "e": "AQAB", "d": {q}}}]}}}}"#
            ),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {q}}}]}}, {q}: 1}}"#),
            format!(r#"{{"inline": {{"keys": [{{"kty": "oct", "k": {q}}}]}}, "remote": {q}}}"#),
            format!(r#"{{"remote": {q}}}"#),
        ] {
            out.push((jwks(&set), "jwt.providers[0].jwks", ""));
        }
    }
    out.push((
        oct(&json_string(OCT_SHORT)),
        "jwt.providers[0].jwks.inline",
        "32",
    ));
    out.push((
        oct(&json_string(QUOTED)),
        "jwt.providers[0].jwks.inline",
        "",
    ));
    out.push((oct(NUMBER), "jwt.providers[0].jwks.inline", ""));
    out
}

/// The secrets as they would appear quoted by JSON or by Rust's `{:?}`.
fn spellings() -> Vec<String> {
    SECRETS
        .iter()
        .flat_map(|s| {
            let json = json_string(s);
            let inner = json.trim_matches('"').to_string();
            let debug = format!("{s:?}");
            [s.to_string(), inner, debug.trim_matches('"').to_string()]
        })
        .collect()
}

fn leaked_in(text: &str) -> Vec<String> {
    spellings()
        .into_iter()
        .filter(|s| text.contains(s.as_str()))
        .collect()
}

#[test]
fn configuration_errors_never_quote_a_secret() {
    std::env::set_var(BAD_ENV, BAD_ENV_VALUE);
    let mut failures = Vec::new();
    for (doc, path, needle) in cases() {
        let error = match Policy::from_json(doc.as_bytes()) {
            Ok(_) => {
                failures.push(format!("accepted: {doc}"));
                continue;
            }
            Err(e) => e,
        };
        let shown = error.to_string();
        let leaked = leaked_in(&shown);
        if !leaked.is_empty() {
            failures.push(format!("{shown}\n    leaks {leaked:?}\n    for {doc}"));
        }
        // Array-for-object errors name any index `[..]`.
        if !error.path.replace("[..]", "[0]").starts_with(path) {
            failures.push(format!(
                "{shown}\n    does not name `{path}`\n    for {doc}"
            ));
        }
        if !error.message.contains(needle) || error.message.trim().is_empty() {
            failures.push(format!(
                "{shown}\n    does not say {needle:?}\n    for {doc}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

#[test]
fn palisade_check_output_never_quotes_a_secret() {
    let dir = std::env::temp_dir().join(format!("palisade-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| unreachable!("{e}"));
    let files: Vec<_> = cases()
        .iter()
        .enumerate()
        .map(|(i, (doc, _, _))| {
            let file = dir.join(format!("case-{i}.json"));
            std::fs::write(&file, doc).unwrap_or_else(|e| unreachable!("{e}"));
            file
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-check"))
        .args(&files)
        .env(BAD_ENV, BAD_ENV_VALUE)
        .output()
        .unwrap_or_else(|e| unreachable!("cannot run palisade-check: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(
        text.matches("invalid configuration at `").count(),
        files.len(),
        "one error per file:\n{text}"
    );
    let leaked = leaked_in(&text);
    assert!(
        leaked.is_empty(),
        "palisade-check printed {leaked:?}:\n{text}"
    );
}
