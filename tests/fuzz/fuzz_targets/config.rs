//! Any bytes as a configuration document: `Policy::from_json` must answer
//! `Ok` or `Err`, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::config::Policy;

fuzz_target!(|data: &[u8]| {
    let _ = Policy::from_json(data);
});
