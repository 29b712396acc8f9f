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

const TIGHTENING: &str = r#"{
    "routes": [{"name": "login", "prefix": "/login"}],
    "user": {"header": "x-user"},
    "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "routes": ["login"],
                               "capacity": 4, "refill": {"tokens": 1, "every": "1h"}}]},
    "anomaly": {"defaults": {"window": "2s", "warmup_windows": 3, "min_requests": 5,
                             "signals": ["rate"], "hold": "10s", "tighten_by": 2},
                "routes": {"default": {"disable": true}}}
}"#;

/// Requests of a fresh user until the first refusal.
fn allowed_for_new_user(f: &Fixture, user: &str) -> usize {
    (0..10)
        .take_while(|_| {
            matches!(
                f.send("POST", "/login", &[("x-user", user)]),
                Verdict::Allow { .. }
            )
        })
        .count()
}

#[test]
fn limits_tighten_while_an_anomaly_lasts_and_relax_after() {
    let f = Fixture::new(TIGHTENING);
    let steady = |f: &Fixture, n: usize| {
        for second in 0..2 {
            for i in 0..n / 2 {
                f.send(
                    "POST",
                    "/login",
                    &[("x-user", &format!("steady-{second}-{i}"))],
                );
            }
            f.clock.advance(1000);
            f.engine.anomaly_tick(&f.services(), f.clock.now_ms());
        }
    };
    for _ in 0..6 {
        steady(&f, 8);
    }
    assert_eq!(allowed_for_new_user(&f, "before"), 4, "normal limits");
    steady(&f, 80);
    steady(&f, 8);
    assert_eq!(
        allowed_for_new_user(&f, "during"),
        2,
        "halved while the anomaly lasts"
    );
    for _ in 0..6 {
        steady(&f, 8);
    }
    assert_eq!(
        allowed_for_new_user(&f, "after"),
        4,
        "relaxed once it is over"
    );
}
