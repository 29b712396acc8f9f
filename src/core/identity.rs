//! Device identity: what a verified client certificate says its holder is
//! (a SPIFFE ID in a URI SAN, or the subject), and the patterns the `mtls`
//! and `authorization` sections accept it with.

use crate::core::config_error::{err, ConfigError};
use crate::core::mode::string_enum;

/// Which field of the client certificate is the device identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityField {
    /// The first URI SAN (`spiffe://trust-domain/path`): what service
    /// meshes and SPIRE issue.
    #[default]
    UriSan,
    /// The subject distinguished name, as the proxy formats it
    /// (`CN=alpha,O=Example`).
    Subject,
}

string_enum!(IdentityField, "\"uri_san\" or \"subject\"", {
    "uri_san" => IdentityField::UriSan,
    "subject" => IdentityField::Subject,
});

/// Longest identity pattern: SPIFFE IDs are at most 2048 bytes, but a
/// pattern that long is a mistake, not a policy.
const MAX_PATTERN_LEN: usize = 512;

/// An accepted identity: exact, or a prefix when it ends in `*`
/// (`spiffe://example.org/ns/payments/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern {
    text: String,
    prefix: bool,
}

impl IdentityPattern {
    pub fn matches(&self, identity: &str) -> bool {
        if self.prefix {
            identity.starts_with(&self.text)
        } else {
            identity == self.text
        }
    }
}

/// The patterns of a list at `path`.
pub fn patterns(raw: &[String], path: &str) -> Result<Vec<IdentityPattern>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, text)| {
            let at = || format!("{path}[{i}]");
            let (stem, prefix) = match text.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (text.as_str(), false),
            };
            if stem.is_empty() || text.len() > MAX_PATTERN_LEN {
                return Err(err(at(), format!("an identity or prefix followed by `*`, 1 to {MAX_PATTERN_LEN} characters (a lone `*` would accept any certificate: leave the list empty for that)")));
            }
            if stem.contains('*') {
                return Err(err(at(), "`*` is allowed only at the end (a prefix)"));
            }
            if stem.chars().any(char::is_control) {
                return Err(err(at(), "must not contain control characters"));
            }
            Ok(IdentityPattern {
                text: stem.to_string(),
                prefix,
            })
        })
        .collect()
}

/// Whether `identity` is accepted by `patterns` (an empty list accepts any).
pub fn allowed(patterns: &[IdentityPattern], identity: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let list = patterns(
            &[
                "spiffe://demo/device/alpha".into(),
                "spiffe://demo/ns/pay/*".into(),
            ],
            "p",
        )
        .unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert!(allowed(&list, "spiffe://demo/device/alpha"));
        assert!(!allowed(&list, "spiffe://demo/device/alphabet"));
        assert!(allowed(&list, "spiffe://demo/ns/pay/sa/api"));
        assert!(!allowed(&list, "spiffe://demo/ns/payroll"));
        assert!(allowed(&[], "anything"));
    }

    #[test]
    fn bad_patterns_name_their_index() {
        for bad in ["*", "", "spiffe://*/x", "a\nb"] {
            let e = patterns(&["ok".into(), bad.into()], "mtls.defaults.identities");
            assert_eq!(
                e.map_err(|e| e.path),
                Err("mtls.defaults.identities[1]".to_string()),
                "{bad:?}"
            );
        }
    }
}
