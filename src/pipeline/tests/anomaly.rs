//! Anomaly detection through the pipeline: every request of a watched
//! class is counted (refused ones too), answers only where watched, and the
//! tick reports a spike once, as an event and a counter.

use super::*;

const CONFIG: &str = r#"{
    "routes": [{"name": "login", "prefix": "/login"}],
    "rate_limits": {"rules": [{"name": "login-ip", "key": ["ip"], "routes": ["login"],
                               "capacity": 5, "refill": {"tokens": 5, "every": "1s"}}]},
    "anomaly": {"defaults": {"window": "2s", "warmup_windows": 3, "min_requests": 5,
                             "signals": ["rate", "latency"]},
                "routes": {"default": {"disable": true}}}
}"#;

/// Sends `n` login requests spread over one 2 s window, ticking each second.
fn window(f: &Fixture, n: u32) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for _ in 0..2 {
        for _ in 0..n / 2 {
            verdicts.push(f.send("POST", "/login", &[]));
        }
        f.clock.advance(1000);
        f.engine.anomaly_tick(&f.services(), f.clock.now_ms());
    }
    verdicts
}

#[test]
fn a_spike_of_refused_requests_is_counted_and_reported_once() {
    let f = Fixture::new(CONFIG);
    let login = f.route("login");
    let anomalies = || {
        f.metrics.get(&Counter::Anomaly {
            route: login,
            signal: "rate",
        })
    };
    for _ in 0..6 {
        window(&f, 8);
    }
    assert_eq!(anomalies(), 0, "steady traffic");
    // Fifty requests: most are throttled, all are counted.
    let verdicts = window(&f, 50);
    assert!(verdicts
        .iter()
        .any(|v| matches!(v, Verdict::Respond(r) if r.status == 429)));
    window(&f, 8);
    assert_eq!(anomalies(), 1);
    // Watched answers carry their arrival; the default class is not watched.
    let Verdict::Allow {
        arrived_ms, route, ..
    } = f.send("GET", "/other", &[])
    else {
        unreachable!("an unlimited class was refused")
    };
    assert_eq!(arrived_ms, None);
    assert!(!f.engine.watches_latency(route));
    f.clock.advance(10_000);
    let Verdict::Allow {
        arrived_ms, route, ..
    } = f.send("POST", "/login", &[])
    else {
        unreachable!("a login after the bucket refilled was refused")
    };
    assert_eq!((arrived_ms, route), (Some(f.clock.now_ms()), login));
    assert!(f.engine.watches_latency(login));
}
