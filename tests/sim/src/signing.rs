//! RFC 9421 `hmac-sha256` request signatures and RFC 9530 `Content-Digest`,
//! as an API client makes them.
//!
//! Written independently of palisade's verifier (src/stages/integrity/signature.rs): the
//! simulator is a client, and its signatures are checked against RFC 9421's
//! own test vector below, not against palisade's code.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What the demo's `/payments` policy requires (envoy/envoy.yaml), in the
/// order tests/integration/signing.py covers them.
pub const PAYMENT_COMPONENTS: &[&str] = &[
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-digest",
    "content-type",
];

/// The request as it reaches Envoy: what the covered components are read from.
pub struct Message<'a> {
    pub method: &'a str,
    /// Host and port as sent in `Host` (default ports left out).
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query without its `?`; empty when there is none.
    pub query: &'a str,
    /// Headers the signature may cover (lower-case names).
    pub headers: &'a [(&'a str, &'a str)],
}

/// Signature parameters besides the covered components.
pub struct Params<'a> {
    pub created: u64,
    pub key_id: &'a str,
    pub nonce: Option<&'a str>,
    pub alg: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SignError {
    /// A covered header is not in the message.
    MissingHeader(String),
    /// A derived component this signer does not produce.
    Unsupported(String),
    /// The HMAC refused the key.
    Key,
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::MissingHeader(h) => write!(f, "covered header `{h}` is not in the request"),
            SignError::Unsupported(c) => {
                write!(f, "component `{c}` is not supported by this signer")
            }
            SignError::Key => write!(f, "the HMAC-SHA256 key was refused"),
        }
    }
}

/// `sha-256=:<base64 of SHA-256(body)>:` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", BASE64.encode(Sha256::digest(body)))
}

/// The `@signature-params` value: the inner list of components and the
/// parameters, e.g. `("@method" "@path");created=1;keyid="k"`.
pub fn signature_params(components: &[&str], params: &Params<'_>) -> String {
    let list: Vec<String> = components.iter().map(|c| format!("\"{c}\"")).collect();
    let mut out = format!(
        "({});created={};keyid=\"{}\"",
        list.join(" "),
        params.created,
        params.key_id
    );
    if let Some(nonce) = params.nonce {
        out.push_str(&format!(";nonce=\"{nonce}\""));
    }
    if let Some(alg) = params.alg {
        out.push_str(&format!(";alg=\"{alg}\""));
    }
    out
}

/// The signature base (RFC 9421 section 2.5), without a trailing newline.
pub fn signature_base(
    msg: &Message<'_>,
    components: &[&str],
    sig_params: &str,
) -> Result<String, SignError> {
    let mut base = String::new();
    for &component in components {
        let value = match component {
            "@method" => msg.method.to_ascii_uppercase(),
            "@authority" => msg.authority.to_ascii_lowercase(),
            "@path" if msg.path.is_empty() => "/".to_owned(),
            "@path" => msg.path.to_owned(),
            "@query" => format!("?{}", msg.query),
            c if c.starts_with('@') => return Err(SignError::Unsupported(c.to_owned())),
            header => {
                let values: Vec<&str> = msg
                    .headers
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(header))
                    .map(|(_, v)| v.trim())
                    .collect();
                if values.is_empty() {
                    return Err(SignError::MissingHeader(header.to_owned()));
                }
                values.join(", ")
            }
        };
        base.push_str(&format!("\"{component}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {sig_params}"));
    Ok(base)
}

/// `Signature-Input` and `Signature` header values under `label`.
pub fn sign(
    msg: &Message<'_>,
    components: &[&str],
    params: &Params<'_>,
    label: &str,
    secret: &[u8],
) -> Result<(String, String), SignError> {
    let sig_params = signature_params(components, params);
    let base = signature_base(msg, components, &sig_params)?;
    // HMAC takes keys of every length: this error does not happen in practice.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| SignError::Key)?;
    mac.update(base.as_bytes());
    let tag = mac.finalize().into_bytes();
    Ok((
        format!("{label}={sig_params}"),
        format!("{label}=:{}:", BASE64.encode(tag)),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    /// RFC 9421 appendix B.2.5: HMAC-SHA256 over "date", "@authority" and
    /// "content-type" of the test request, with the shared test secret.
    #[test]
    fn rfc_9421_b25_is_reproduced() {
        let headers = [
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
        ];
        let msg = Message {
            method: "POST",
            authority: "example.com",
            path: "/foo",
            query: "param=Value&Pet=dog",
            headers: &headers,
        };
        let secret = BASE64
            .decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
            .unwrap();
        let params = Params {
            created: 1618884473,
            key_id: "test-shared-secret",
            nonce: None,
            alg: None,
        };
        let (input, signature) = sign(
            &msg,
            &["date", "@authority", "content-type"],
            &params,
            "sig-b25",
            &secret,
        )
        .unwrap();
        assert_eq!(
            input,
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#
        );
        assert_eq!(
            signature,
            "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
        );
    }

    #[test]
    fn payment_base_has_every_component_and_an_empty_query() {
        let headers = [
            ("content-type", "application/json"),
            ("content-digest", "sha-256=:x:"),
        ];
        let msg = Message {
            method: "post",
            authority: "127.0.0.1:10000",
            path: "/payments",
            query: "",
            headers: &headers,
        };
        let params = Params {
            created: 7,
            key_id: "demo-client",
            nonce: Some("n1"),
            alg: Some("hmac-sha256"),
        };
        let sp = signature_params(PAYMENT_COMPONENTS, &params);
        let base = signature_base(&msg, PAYMENT_COMPONENTS, &sp).unwrap();
        assert_eq!(
            base,
            concat!(
                "\"@method\": POST\n",
                "\"@authority\": 127.0.0.1:10000\n",
                "\"@path\": /payments\n",
                "\"@query\": ?\n",
                "\"content-digest\": sha-256=:x:\n",
                "\"content-type\": application/json\n",
                "\"@signature-params\": (\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\" \"content-type\")",
                ";created=7;keyid=\"demo-client\";nonce=\"n1\";alg=\"hmac-sha256\"",
            )
        );
    }

    #[test]
    fn a_missing_covered_header_is_an_error() {
        let msg = Message {
            method: "GET",
            authority: "a",
            path: "/",
            query: "",
            headers: &[],
        };
        let params = Params {
            created: 1,
            key_id: "k",
            nonce: None,
            alg: None,
        };
        assert_eq!(
            sign(&msg, &["content-type"], &params, "sig1", b"k").unwrap_err(),
            SignError::MissingHeader("content-type".to_owned())
        );
    }

    #[test]
    fn content_digest_of_the_empty_body() {
        // RFC 9530 appendix: SHA-256 of the empty string.
        assert_eq!(
            content_digest(b""),
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
    }
}
