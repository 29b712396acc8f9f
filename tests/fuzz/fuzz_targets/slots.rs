//! Shared-data pages: whatever bytes the store holds, decoding and
//! re-encoding must be a fixed point: decode(encode(decode(x))) == decode(x).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::state::slots::{Page, PAGE_LEN};

fn round_trip(bytes: &[u8]) {
    let page = Page::decode(bytes);
    let encoded = page.encode();
    assert_eq!(Page::decode(&encoded), page, "page round trip");
    assert_eq!(
        Page::decode(&encoded).encode(),
        encoded,
        "encoding is stable"
    );
}

fuzz_target!(|data: &[u8]| {
    // As given (only PAGE_LEN bytes decode to anything but an empty page)...
    round_trip(data);
    // ...and cut or zero-padded to a page, so that every input reaches the
    // record and spill decoders.
    let mut page = [0u8; PAGE_LEN];
    let n = data.len().min(PAGE_LEN);
    page[..n].copy_from_slice(&data[..n]);
    round_trip(&page);
});
