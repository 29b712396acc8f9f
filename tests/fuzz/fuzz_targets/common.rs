//! What the `headers` and `structured` targets share: the rich policy
//! (tests/fuzz/policy.json, the demo's policy with small tables, a flow and
//! behaviour) compiled once, and one request through a fresh engine, store
//! and clock, so that every input replays the same way. The `jwks` target
//! uses the fresh store and clock ([`World`]) only.

use palisade::config::Policy;
use palisade::core::hosts::HostKind;
use palisade::core::metrics::MemoryMetrics;
use palisade::core::request::HeaderMap;
use palisade::pipeline::{prepare_shared_data, Body, Engine, Services, Verdict};
use palisade::state::host::{ManualClock, MemoryStore};
use std::sync::OnceLock;

/// The policy document; `X_FORWARDED_FOR` swaps its client address source.
const POLICY: &str = include_str!("../policy.json");
const X_FORWARDED_FOR: &str =
    r#""client_ip": {"source": "x-forwarded-for", "trusted_hops": 1, "ipv6_prefix": 64}"#;
const PEER: &str = r#""client_ip": {
    "source": "peer"
  }"#;

pub const T0_MS: u64 = 1_700_000_000_000;

/// One worker's surroundings: a shared store as `on_configure` leaves it,
/// a clock at [`T0_MS`], counters.
pub struct World {
    pub store: MemoryStore,
    pub clock: ManualClock,
    pub metrics: MemoryMetrics,
}

impl World {
    pub fn new(policy: &Policy) -> World {
        let store = MemoryStore::new();
        if let Err(e) = prepare_shared_data(policy, &store, [7; 16]) {
            panic!("prepare_shared_data: {e:?}");
        }
        World {
            store,
            clock: ManualClock::at(T0_MS),
            metrics: MemoryMetrics::default(),
        }
    }

    pub fn services(&self) -> Services<'_> {
        Services {
            store: &self.store,
            clock: &self.clock,
            metrics: &self.metrics,
        }
    }
}

/// Peer addresses the selector byte picks from (`None`: the host has none).
const PEERS: [Option<&str>; 8] = [
    Some("192.0.2.10:40000"),
    Some("192.0.2.11:40001"),
    Some("[2001:db8::1]:443"),
    Some("[2001:db8::2]:443"),
    Some("198.51.100.7:1"),
    None,
    Some("not-an-address"),
    Some("10.0.0.1"),
];

/// The two policies (peer address, x-forwarded-for), compiled once.
fn policies() -> &'static [Policy; 2] {
    static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        assert!(POLICY.contains(PEER), "policy.json: client_ip changed");
        let compile = |json: &str| match Policy::from_json(json.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("tests/fuzz/policy.json does not load: {e}"),
        };
        [
            compile(POLICY),
            compile(&POLICY.replace(PEER, X_FORWARDED_FOR)),
        ]
    })
}

/// Sends `headers` `times` times (1..=4), `step_ms` apart, through a fresh
/// engine, and checks the body of every allowed request that needs it.
/// `selector` picks the policy (bit 0), the peer address (bits 1..=3) and
/// the host (bit 7: ngx_wasm_module's header handling); bits 4..=7 the body.
pub fn run(selector: u8, headers: &HeaderMap<'_>, body: &[u8], times: u8, step_ms: u64) {
    let policy = &policies()[usize::from(selector & 1)];
    let host = if selector & 0x80 == 0 {
        HostKind::Envoy
    } else {
        HostKind::NgxWasm
    };
    let engine = match Engine::new(policy.clone(), [7; 16], host) {
        Ok(e) => e,
        Err(e) => panic!("engine: {e}"),
    };
    let world = World::new(policy);
    let services = world.services();
    let peer = PEERS[usize::from((selector >> 1) & 7)];
    let peer = || peer.map(str::to_string);
    for _ in 0..times.clamp(1, 4) {
        let verdict = engine.evaluate(headers, &peer, &services);
        if let Verdict::Allow {
            body: check,
            mut login,
            ..
        } = verdict
        {
            let mut forwarded = true;
            if let Some(check) = check {
                let body = match selector >> 4 {
                    0 => Body::TooLarge,
                    1 => Body::Unreadable,
                    _ => Body::Complete(body),
                };
                forwarded = engine
                    .check_body(&check, body, &services, login.as_deref_mut())
                    .response()
                    .is_none();
            }
            // The upstream's answer to a login: a failure or a success.
            if let (Some(login), true) = (login, forwarded) {
                let status = if step_ms % 2 == 0 { 401 } else { 200 };
                engine.login_answered(&login, status, &services);
            }
        }
        world.clock.advance(step_ms);
    }
}
