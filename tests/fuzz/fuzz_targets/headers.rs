//! Raw bytes as the host's header map, through the whole pipeline.
//!
//! Input: a selector byte (policy, peer address, body mode: see
//! `common::run`), a u16 little-endian length `n`, `n` bytes of header map
//! in the proxy-wasm format (`HeaderMap::decode`), and the rest as the body
//! (`Engine::check_body` when the verdict asks for it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::core::request::HeaderMap;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (len, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => return,
    };
    let (map, body) = rest.split_at(len.min(rest.len()));
    let Some(headers) = HeaderMap::decode(map) else {
        return;
    };
    common::run(selector, &headers, body, 1, 0);
});
