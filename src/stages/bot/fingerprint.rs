//! The client fingerprint: a stable id from what a request shows about the
//! software that sent it, whatever address it comes from.
//!
//! What goes in (README, "Bot defense"): the values of `user-agent`,
//! `accept-language`, `accept-encoding` and the `sec-ch-ua*` client hints;
//! which of `accept` and the `sec-fetch-*` headers are present; the
//! relative order of header pairs each browser family keeps the same on
//! every request ([`ORDER_PAIRS`]); and the TLS JA4 fingerprint from a
//! trusted header, when configured. Left out on purpose: the values of
//! `accept` and `sec-fetch-*`, and the headers only a navigation sends,
//! which change between a browser's page loads and its API calls, so one
//! browser would get several ids.
//!
//! The id is an unkeyed SipHash: the same client gets the same id on every
//! worker, replica and restart, so ids can be compared across logs. It is
//! made from what the client sends, so it identifies software, not a
//! person, and needs no collision resistance: a client can always send
//! another client's headers.

use crate::core::request::HeaderMap;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Headers whose value is part of the id.
const VALUES: [&str; 6] = [
    "user-agent",
    "accept-language",
    "accept-encoding",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
];

/// Headers whose presence alone is part of the id.
const PRESENCE: [&str; 4] = [
    "accept",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
];

/// Pairs of headers whose relative order is part of the id: within each
/// browser family it is the same on navigations and API calls (checked
/// against tests/fixtures/browsers.json), across families and scripts it
/// differs.
pub const ORDER_PAIRS: [(&str, &str); 6] = [
    ("user-agent", "accept"),
    ("user-agent", "accept-encoding"),
    ("accept", "accept-language"),
    ("accept-encoding", "accept-language"),
    ("sec-fetch-site", "sec-fetch-mode"),
    ("sec-fetch-mode", "sec-fetch-dest"),
];

/// A fixed, public key: the id must be the same everywhere.
const KEY: [u8; 16] = *b"palisade-fp-v1\0\0";

/// Position of the first `name` header, if any.
pub fn position(headers: &HeaderMap<'_>, name: &str) -> Option<usize> {
    headers
        .names()
        .position(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// Whether `a` comes before `b`: `None` unless both are present.
pub fn before(headers: &HeaderMap<'_>, a: &str, b: &str) -> Option<bool> {
    Some(position(headers, a)? < position(headers, b)?)
}

/// The fingerprint id of a request. `ja4` is the value of the trusted JA4
/// header, when one is configured and present.
pub fn fingerprint(headers: &HeaderMap<'_>, ja4: Option<&[u8]>) -> u64 {
    let mut h = SipHasher13::new_with_key(&KEY);
    for name in VALUES {
        match headers.get(name) {
            Some(value) => {
                h.write_u8(1);
                h.write_usize(value.len());
                h.write(value);
            }
            None => h.write_u8(0),
        }
    }
    for name in PRESENCE {
        h.write_u8(u8::from(headers.get(name).is_some()));
    }
    for (a, b) in ORDER_PAIRS {
        h.write_u8(match before(headers, a, b) {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        });
    }
    match ja4 {
        Some(value) => {
            h.write_u8(1);
            h.write_usize(value.len());
            h.write(value);
        }
        None => h.write_u8(0),
    }
    h.finish()
}

/// The id as it appears in headers and events: 16 hex digits.
pub fn text(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::bot::fixtures;

    #[test]
    fn one_browser_has_one_id_on_page_loads_and_api_calls() {
        let nav = fixtures::headers("chrome_windows_navigate");
        let fetch = fixtures::headers("chrome_windows_fetch");
        let (nav, fetch) = (nav.map(), fetch.map());
        assert_eq!(fingerprint(&nav, None), fingerprint(&fetch, None));
    }

    #[test]
    fn browsers_scripts_and_tls_hellos_get_different_ids() {
        let mut seen = std::collections::HashMap::new();
        for name in fixtures::names() {
            if name == "chrome_windows_fetch" {
                continue; // the same browser as chrome_windows_navigate
            }
            let set = fixtures::headers(name);
            let id = fingerprint(&set.map(), None);
            if let Some(other) = seen.insert(id, name) {
                unreachable!("{name} and {other} share a fingerprint");
            }
        }
        let set = fixtures::headers("chrome_windows_navigate");
        let map = set.map();
        assert_ne!(
            fingerprint(&map, Some(b"t13d1516h2_8daaf6152771_02713d6af862")),
            fingerprint(&map, Some(b"t13d1517h2_8daaf6152771_b0da82dd1658"))
        );
        assert_ne!(fingerprint(&map, None), fingerprint(&map, Some(b"")));
    }

    #[test]
    fn header_order_changes_the_id() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"user-agent", b"x"),
            (b"accept-encoding", b"gzip"),
            (b"accept-language", b"en"),
        ];
        let mut swapped = pairs.clone();
        swapped.swap(1, 2);
        assert_ne!(
            fingerprint(&HeaderMap::from_pairs(pairs), None),
            fingerprint(&HeaderMap::from_pairs(swapped), None)
        );
        assert_eq!(text(0xab), "00000000000000ab");
    }
}
