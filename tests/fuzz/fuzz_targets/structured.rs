//! Header pairs built with `arbitrary`: names from a dictionary of the
//! headers palisade reads, values any bytes, serialized in the proxy-wasm
//! map format and sent through the whole pipeline (up to four times, so
//! that replay, reuse, bans and behaviour see repeats). Reaches deeper
//! than the raw `headers` target, which must first get the map format right.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::core::request::{encode_raw_map, HeaderMap};

#[path = "common.rs"]
mod common;

const NAMES: &[&str] = &[
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "authorization",
    "signature-input",
    "signature",
    "content-digest",
    "content-type",
    "content-encoding",
    "content-length",
    "cookie",
    "user-agent",
    "accept",
    "accept-language",
    "accept-encoding",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
    "x-forwarded-for",
    "x-api-key",
    "x-palisade-pow",
    "x-palisade-ja4",
    "x-user-id",
    "x-request-id",
    "referer",
    "origin",
    "connection",
    "upgrade-insecure-requests",
];

/// Useful values for the pseudo-headers, which must make sense for the
/// request to get past classification.
const METHODS: &[&[u8]] = &[b"GET", b"POST", b"PUT", b"OPTIONS"];
const PATHS: &[&[u8]] = &[
    b"/login",
    b"/api/items/1001",
    b"/payments?x=1",
    b"/account",
    b"/admin",
    b"/partner/report",
    b"/oauth/token",
    b"/cart",
    b"/",
];

/// Selector (see `common::run`), method and path (indices into `METHODS`
/// and `PATHS`), repeats (1..=4), milliseconds between repeats, the header
/// fields (index into `NAMES`, value), the body.
type Input = (u8, u8, u8, u8, u16, Vec<(u8, Vec<u8>)>, Vec<u8>);

fuzz_target!(|input: Input| {
    let (selector, method, path, times, step_ms, fields, body) = input;
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b":method", METHODS[usize::from(method) % METHODS.len()]),
        (b":path", PATHS[usize::from(path) % PATHS.len()]),
        (b":scheme", b"https"),
        (b":authority", b"shop.example"),
    ];
    // A pseudo-header of the dictionary replaces the default one (the last
    // wins); other headers are appended, repeats included.
    for (name, value) in &fields {
        let name = NAMES[usize::from(*name) % NAMES.len()].as_bytes();
        match pairs.iter_mut().take(4).find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => pairs.push((name, value)),
        }
    }
    let map = encode_raw_map(&pairs);
    let Some(headers) = HeaderMap::decode(&map) else {
        panic!("a map we encoded did not decode");
    };
    common::run(selector, &headers, &body, times % 4 + 1, u64::from(step_ms));
});
