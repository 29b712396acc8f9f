//! The bot challenge's parsers with a fixed key and binding: solutions,
//! passes and the cookie header must never panic; a pass just issued must
//! verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::stages::bot::challenge::{
    cookies, issue, issue_pass, verify_pass, verify_solution, Binding, ChallengeKey, PASS_COOKIE,
    SOLUTION_COOKIE,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

const NOW_S: u64 = 1_700_000_000;

fn key() -> &'static ChallengeKey {
    static KEY: OnceLock<ChallengeKey> = OnceLock::new();
    KEY.get_or_init(|| ChallengeKey::new(b"fuzz-only-bot-challenge-key-32-bytes!!"))
}

fn binding(selector: u8) -> Binding {
    Binding {
        fingerprint: 0x5eed_f00d_u64.wrapping_mul(u64::from(selector & 0x3)),
        ip_key: (selector & 0x4 != 0).then_some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0))),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let key = key();
    let binding = binding(selector);
    // Time around the fixed instant, so expiry is reachable either way.
    let now_s = NOW_S.wrapping_add(u64::from(selector >> 3).wrapping_mul(60));

    let _ = verify_solution(key, binding, now_s, rest);
    let _ = verify_pass(key, binding, now_s, rest);
    for name in [PASS_COOKIE, SOLUTION_COOKIE, "", "a b", "="] {
        for value in cookies(rest, name) {
            let _ = verify_solution(key, binding, now_s, value);
            let _ = verify_pass(key, binding, now_s, value);
        }
    }

    // Properties: what we issue ourselves verifies (or is an unsolved
    // challenge), with any ttl and salt.
    let ttl = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(60, u32::from_le_bytes)
        .max(1);
    let pass = issue_pass(key, binding, now_s, ttl);
    assert!(
        verify_pass(key, binding, now_s, pass.as_bytes()).is_ok(),
        "a fresh pass must verify"
    );
    let issued = issue(key, binding, now_s, ttl, selector, u64::from(ttl));
    let mut solution = issued.token.into_bytes();
    solution.push(b'.');
    solution.extend_from_slice(rest.get(4..).unwrap_or_default());
    let _ = verify_solution(key, binding, now_s, &solution);
});
