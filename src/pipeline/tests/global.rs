//! The global mode through the pipeline, with two engines standing for
//! two replicas (each its own shared data, the same key secret) and a
//! counting double of the rate-limit service between them. The real
//! service (Limitador on Redis) runs in tests/integration/test_global.py.

use super::*;
use crate::stages::global::{proto, Failure};
use prost::Message;
use std::collections::HashMap;
use std::sync::Mutex;

/// Counts descriptors in fixed windows, as the service does, by the
/// entries it is sent: what a replica sends must be enough.
/// A descriptor's entries, and its count and window start (s).
type Counters = HashMap<Vec<(String, String)>, (u64, u64)>;

#[derive(Default)]
struct Service {
    counters: Mutex<Counters>,
    calls: Mutex<u32>,
}

impl Service {
    fn answer(&self, message: &[u8], now_s: u64) -> Vec<u8> {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let request = proto::RateLimitRequest::decode(message).unwrap_or_default();
        assert_eq!(request.domain, "palisade");
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut statuses = Vec::new();
        for d in &request.descriptors {
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let value = |k: &str| {
                entries
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
                    .unwrap_or_else(|| unreachable!("no {k} entry"))
            };
            let (max, window) = (value("max"), value("window"));
            let (count, start) = counters.entry(entries.clone()).or_insert((0, now_s));
            if now_s >= *start + window {
                (*count, *start) = (0, now_s);
            }
            let over = *count + 1 > max;
            let look = d.hits_addend.as_ref().is_some_and(|h| h.value == 0);
            if !over && !look {
                *count += 1;
            }
            statuses.push(proto::DescriptorStatus {
                code: if over {
                    proto::CODE_OVER_LIMIT
                } else {
                    proto::CODE_OK
                },
                limit_remaining: u32::try_from(max - *count).unwrap_or(0),
                duration_until_reset: Some(proto::Duration {
                    seconds: i64::try_from(*start + window - now_s).unwrap_or(0),
                    nanos: 0,
                }),
            });
        }
        let over = statuses.iter().any(|s| s.code == proto::CODE_OVER_LIMIT);
        proto::RateLimitResponse {
            overall_code: if over {
                proto::CODE_OVER_LIMIT
            } else {
                proto::CODE_OK
            },
            statuses,
        }
        .encode_to_vec()
    }

    fn calls(&self) -> u32 {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const SECRET_B64: &str = "Z2xvYmFsLWtleS1zZWNyZXQtb2YtYXQtbGVhc3QtMzItYnl0ZXM=";

fn config(extra: &str) -> String {
    format!(
        r#"{{"routes": [{{"name": "login", "prefix": "/login"}}],
            "global": {{"cluster": "ratelimit", "key_secret": {{"base64": "{SECRET_B64}"}} {extra}}},
            "rate_limits": {{"quota_headers": true, "rules": [
                {{"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 5,
                  "refill": {{"tokens": 5, "every": "1m"}}, "scope": "global"}},
                {{"name": "all-ip", "key": ["ip"], "capacity": 1000, "refill": {{"tokens": 1000, "every": "1m"}}}}]}}}}"#
    )
}

/// The status and reason a request ends with on `f`, the service asked
/// when the verdict says so.
fn through(
    f: &Fixture,
    service: &Service,
    path: &str,
) -> (u16, String, Vec<(&'static str, String)>) {
    match f.send("GET", path, &[]) {
        Verdict::Allow {
            remote: None,
            response_headers,
            ..
        } => (200, String::new(), response_headers),
        Verdict::Allow {
            remote: Some(check),
            response_headers,
            ..
        } => {
            let answer = service.answer(&check.message, T0 / 1000);
            match f.engine.remote_answered(&check, Ok(&answer), &f.services()) {
                Answer::Forward(headers) => (
                    200,
                    String::new(),
                    response_headers.into_iter().chain(headers).collect(),
                ),
                Answer::Respond(r) => (r.status, reason_of(&r), r.headers),
            }
        }
        Verdict::Respond(r) => (r.status, reason_of(&r), r.headers),
    }
}

fn reason_of(r: &LocalResponse) -> String {
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    body["reason"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_global_rule_holds_across_replicas_and_only_its_routes_call() {
    let (a, b) = (Fixture::new(&config("")), Fixture::new(&config("")));
    let service = Service::default();
    let mut allowed = 0;
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (status, reason, headers) = through(replica, &service, "/login");
        if status == 200 {
            allowed += 1;
            let quota = headers.iter().find(|(n, _)| *n == "ratelimit");
            assert!(
                quota.is_some_and(|(_, v)| v.contains(&format!("r={}", 5 - allowed))),
                "{headers:?}"
            );
        } else {
            assert_eq!((status, reason.as_str()), (429, "rl.exhausted"));
            // The service's window (60 s), or once a replica's own
            // bucket is empty, its next token (12 s).
            let retry = headers.iter().find(|(n, _)| *n == "retry-after");
            assert!(
                retry.is_some_and(|(_, v)| v == "60" || v == "12"),
                "{headers:?}"
            );
        }
    }
    // Each replica alone would have allowed 5 (its local bucket): the
    // service holds them to 5 together.
    assert_eq!(allowed, 5);
    // A refusal by the service empties the replica's bucket: its next
    // requests are refused without a call (two refusals were asked).
    assert_eq!(service.calls(), 7);
    // A route without a global rule makes no call.
    assert!(matches!(
        a.send("GET", "/other", &[]),
        Verdict::Allow { remote: None, .. }
    ));
}

#[test]
fn the_local_bucket_refuses_without_a_call() {
    let f = Fixture::new(&config(""));
    let service = Service::default();
    for _ in 0..5 {
        assert_eq!(through(&f, &service, "/login").0, 200);
    }
    let calls = service.calls();
    let (status, reason, _) = through(&f, &service, "/login");
    assert_eq!((status, reason.as_str()), (429, "rl.exhausted"));
    assert_eq!(
        service.calls(),
        calls,
        "the local pre-check asked the service"
    );
}

#[test]
fn a_failed_call_follows_the_failure_mode() {
    for (mode, status) in [("deny", 503), ("allow", 200)] {
        let f = Fixture::new(&config(&format!(r#", "failure_mode": "{mode}""#)));
        let Verdict::Allow {
            remote: Some(check),
            ..
        } = f.send("GET", "/login", &[])
        else {
            unreachable!("no call for a global rule")
        };
        for failure in [Failure::Status(14), Failure::Status(4), Failure::Dispatch] {
            let got = match f
                .engine
                .remote_answered(&check, Err(failure), &f.services())
            {
                Answer::Forward(_) => (200, String::new()),
                Answer::Respond(r) => (r.status, reason_of(&r)),
            };
            let reason = if status == 503 {
                "global.unavailable"
            } else {
                ""
            };
            assert_eq!(got, (status, reason.to_string()), "{mode}");
        }
        // An answer that does not match the request is a failure too.
        let other = proto::RateLimitResponse {
            overall_code: proto::CODE_OK,
            statuses: vec![],
        };
        let got = f
            .engine
            .remote_answered(&check, Ok(&other.encode_to_vec()), &f.services());
        assert_eq!(matches!(got, Answer::Forward(_)), status == 200, "{mode}");
        assert_eq!(
            f.metrics.get(&Counter::GlobalCall { outcome: "error" }),
            4,
            "{mode}"
        );
    }
}

#[test]
fn descriptors_carry_the_limit_and_a_keyed_hash_the_same_on_every_replica() {
    let (a, b) = (Fixture::new(&config("")), Fixture::new(&config("")));
    let message = |f: &Fixture| match f.send("GET", "/login", &[]) {
        Verdict::Allow {
            remote: Some(check),
            ..
        } => check.message.clone(),
        _ => unreachable!("no call"),
    };
    let (from_a, from_b) = (message(&a), message(&b));
    assert_eq!(from_a, from_b, "replicas name the same client differently");
    let request = proto::RateLimitRequest::decode(from_a.as_slice()).unwrap_or_default();
    assert_eq!(request.descriptors.len(), 1);
    let entries: Vec<(&str, &str)> = request.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries[0], ("palisade", "rule.login-ip"));
    assert_eq!(entries[1].0, "key");
    assert_eq!(entries[1].1.len(), 32);
    assert!(
        !entries[1].1.contains("192.0.2"),
        "the address left the proxy"
    );
    assert_eq!(entries[2..], [("max", "5"), ("window", "60")]);
    // Another secret, another key: Redis learns nothing it could join.
    let other = config("").replace(
        SECRET_B64,
        "b3RoZXIta2V5LXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcyE=",
    );
    assert_ne!(message(&Fixture::new(&other)), from_a);
}

#[test]
fn global_mode_is_refused_where_grpc_calls_cannot_be_made() {
    let policy = Policy::from_json(config("").as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
    let Err(e) = Engine::new(policy, [7; 16], HostKind::NgxWasm) else {
        unreachable!("global mode accepted on ngx_wasm_module")
    };
    assert_eq!(e.path, "global");
    assert!(e.message.contains("ngx_wasm_module"), "{}", e.message);
}

#[test]
fn global_settings_are_checked_where_they_are_written() {
    let error = |json: &str| match Policy::from_json(json.as_bytes()) {
        Err(e) => format!("{}: {}", e.path, e.message),
        Ok(_) => String::new(),
    };
    let rule = |extra: &str| {
        config("").replace(
            r#""scope": "global"}"#,
            &format!(r#""scope": "global"{extra}}}"#),
        )
    };
    let without_section = rule("").replace(
        &format!(
            r#""global": {{"cluster": "ratelimit", "key_secret": {{"base64": "{SECRET_B64}"}} }},"#
        ),
        "",
    );
    let cases = [
        (
            without_section,
            "rate_limits.rules[0].scope: is \"global\" but there is no `global` section",
        ),
        (
            rule(r#", "counts": "failures""#),
            "rate_limits.rules[0].scope: \"global\" is for rules counting \"requests\"",
        ),
        (rule(r#", "reserve": 2"#), "rate_limits.rules[0].reserve"),
        (
            config("").replace(r#""capacity": 5,"#, r#""capacity": 1000000001,"#),
            "rate_limits.rules[0].capacity: a \"global\" rule's capacity is at most",
        ),
        (
            config("").replace(
                r#""refill": {"tokens": 5, "every": "1m"}, "scope""#,
                r#""refill": "none", "scope""#,
            ),
            "rate_limits.rules[0].refill: a \"global\" rule needs a refill",
        ),
        (
            r#"{"signatures": {"replay_scope": "global"}}"#.to_string(),
            "signatures.replay_scope: is \"global\"",
        ),
        (
            r#"{"routes": [{"name": "token", "prefix": "/token"}],
                "jwt": {"refresh_tokens": {"routes": ["token"], "scope": "global"}}}"#
                .to_string(),
            "jwt.refresh_tokens.scope: is \"global\"",
        ),
        (
            config("").replace(r#""scope": "global""#, r#""scope": "cluster""#),
            "rate_limits.rules[0].scope",
        ),
        (r#"{"bans": {"scope": "global"}}"#.to_string(), "bans.scope: is \"global\""),
        (
            config(r#""#).replace(
                r#""rate_limits""#,
                r#""bans": {"scope": "global", "base": "1s", "factor": 1.1, "max": "1h"}, "rate_limits""#,
            ),
            "bans.scope: a global ban is checked once for each length",
        ),
    ];
    for (json, expected) in cases {
        let got = error(&json);
        assert!(got.starts_with(expected), "{expected}\n got {got}");
    }
}

const SIGNING: &[u8] = b"a-demo-secret-of-at-least-32-bytes!!";

fn replay_config() -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(SIGNING);
    format!(
        r#"{{"routes": [{{"name": "pay", "prefix": "/pay"}}, {{"name": "token", "path": "/oauth/token", "methods": ["POST"]}}],
            "global": {{"cluster": "ratelimit", "key_secret": {{"base64": "{SECRET_B64}"}}}},
            "signatures": {{"replay_scope": "global", "keys": [{{"id": "client-a", "secret": {{"base64": "{key}"}}}}],
                           "policies": [{{"routes": ["pay"], "components": ["@method", "@path"], "max_age": "5m"}}]}},
            "jwt": {{"refresh_tokens": {{"routes": ["token"], "scope": "global", "remember": "1d"}}}}}}"#
    )
}

/// A request the replica `f` received: ask the service if the verdict (or
/// its body phase) says so; the status and reason it ends with.
fn ends(f: &Fixture, service: &Service, verdict: Verdict, body: &[u8]) -> (u16, String) {
    let check = match verdict {
        Verdict::Respond(r) => return (r.status, reason_of(&r)),
        Verdict::Allow {
            remote: Some(check),
            ..
        } => check,
        Verdict::Allow { body: Some(b), .. } => {
            match f
                .engine
                .check_body(&b, Body::Complete(body), &f.services(), None)
            {
                BodyVerdict::Forward => return (200, String::new()),
                BodyVerdict::Respond(r) => return (r.status, reason_of(&r)),
                BodyVerdict::Ask(check) => check,
            }
        }
        Verdict::Allow { .. } => return (200, String::new()),
    };
    let answer = service.answer(&check.message, T0 / 1000);
    match f.engine.remote_answered(&check, Ok(&answer), &f.services()) {
        Answer::Forward(_) => (200, String::new()),
        Answer::Respond(r) => (r.status, reason_of(&r)),
    }
}

#[test]
fn a_nonce_or_a_refresh_token_used_on_one_replica_is_refused_on_the_other() {
    let (a, b) = (
        Fixture::new(&replay_config()),
        Fixture::new(&replay_config()),
    );
    let service = Service::default();
    let signed = |nonce: &str| {
        let headers: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/pay".into()),
            (
                "signature-input".into(),
                format!(
                    r#"sig1=("@method" "@path");keyid="client-a";created={};nonce="{nonce}""#,
                    T0 / 1000
                ),
            ),
        ];
        with_signature(headers, SIGNING)
    };
    let send = |f: &Fixture, headers: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        ends(f, &service, f.send_headers(&pairs), b"")
    };
    assert_eq!(send(&a, &signed("n-1")), (200, String::new()));
    assert_eq!(send(&b, &signed("n-1")), (401, "sig.replay".to_string()));
    // Seen on this replica already: refused without a call.
    let calls = service.calls();
    assert_eq!(send(&a, &signed("n-1")), (401, "sig.replay".to_string()));
    assert_eq!(service.calls(), calls);
    assert_eq!(send(&b, &signed("n-2")), (200, String::new()));

    let grant = |f: &Fixture, token: &str| {
        let body = format!("grant_type=refresh_token&refresh_token={token}");
        let verdict = f.send(
            "POST",
            "/oauth/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "60"),
            ],
        );
        ends(f, &service, verdict, body.as_bytes())
    };
    assert_eq!(grant(&a, "rt-1"), (200, String::new()));
    assert_eq!(grant(&b, "rt-1"), (400, "oauth.refresh_reuse".to_string()));
    assert_eq!(grant(&b, "rt-2"), (200, String::new()));
    assert_eq!(grant(&a, "rt-2"), (400, "oauth.refresh_reuse".to_string()));
}

fn ban_config(rule_scope: &str) -> String {
    format!(
        r#"{{"routes": [{{"name": "login", "prefix": "/login"}}],
            "global": {{"cluster": "ratelimit", "key_secret": {{"base64": "{SECRET_B64}"}}}},
            "bans": {{"after": 1, "base": "1m", "factor": 2.0, "max": "4m", "scope": "global"}},
            "rate_limits": {{"rules": [
                {{"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 2,
                  "refill": {{"tokens": 2, "every": "1m"}}, "ban": true, "scope": "{rule_scope}"}}]}}}}"#
    )
}

/// Hands the bans `f` issued to the service, as its tick does.
fn publish(f: &Fixture, service: &Service) -> bool {
    match f.engine.ban_publications() {
        Some(message) => {
            service.answer(&message, T0 / 1000);
            true
        }
        None => false,
    }
}

#[test]
fn a_ban_issued_on_one_replica_holds_on_the_other() {
    let (a, b) = (
        Fixture::new(&ban_config("local")),
        Fixture::new(&ban_config("local")),
    );
    let service = Service::default();
    let seen: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let (status, reason, _) = through(&a, &service, "/login");
            (status, reason)
        })
        .collect();
    assert_eq!(seen[..2], [(200, String::new()), (200, String::new())]);
    assert_eq!(seen[2], (429, "rl.exhausted".to_string()), "{seen:?}");
    assert_eq!(seen[3], (403, "ban.active".to_string()), "{seen:?}");
    // The other replica does not know yet: its bucket is full.
    assert!(
        !publish(&b, &service),
        "a replica that banned nobody publishes"
    );
    assert!(
        publish(&a, &service),
        "the ban was not queued for the service"
    );
    assert!(!publish(&a, &service), "a ban is published once");
    let (status, reason, headers) = through(&b, &service, "/login");
    assert_eq!((status, reason.as_str()), (403, "ban.active"));
    let retry = headers.iter().find(|(n, _)| *n == "retry-after");
    assert!(retry.is_some_and(|(_, v)| v == "60"), "{headers:?}");
    // Replica b keeps the ban: refused without a call from now on.
    let calls = service.calls();
    let again = b.send("GET", "/login", &[]);
    let Verdict::Respond(r) = again else {
        unreachable!("a ban learned from the service was not kept")
    };
    assert_eq!((r.status, reason_of(&r).as_str()), (403, "ban.active"));
    assert_eq!(service.calls(), calls);
    // Each request looks for each length a ban can have: 1, 2 and 4 minutes.
    let Verdict::Allow {
        remote: Some(check),
        ..
    } = Fixture::new(&ban_config("local")).send("GET", "/login", &[])
    else {
        unreachable!("no ban look")
    };
    let request = proto::RateLimitRequest::decode(check.message.as_slice()).unwrap_or_default();
    let windows: Vec<String> = request
        .descriptors
        .iter()
        .filter(|d| d.hits_addend.as_ref().is_some_and(|h| h.value == 0))
        .map(|d| d.entries[3].value.clone())
        .collect();
    assert_eq!(windows, ["60", "120", "240"]);
}

#[test]
fn refusals_by_the_service_count_toward_a_ban_and_the_ban_is_published() {
    let (a, b) = (
        Fixture::new(&ban_config("global")),
        Fixture::new(&ban_config("global")),
    );
    let service = Service::default();
    // Two requests use up the global limit of 2, one on each replica.
    assert_eq!(through(&a, &service, "/login").0, 200);
    assert_eq!(through(&b, &service, "/login").0, 200);
    // Replica a's bucket still has a token: the service refuses, which is
    // a strike there (after: 1), and a ban.
    assert_eq!(through(&a, &service, "/login").1, "rl.exhausted");
    assert_eq!(a.metrics.get(&Counter::BanIssued { rule: 0 }), 1);
    assert!(publish(&a, &service));
    assert_eq!(through(&b, &service, "/login").1, "ban.active");
}

#[test]
fn a_call_never_carries_more_descriptors_than_the_service_takes() {
    let rules: Vec<String> = (0..32)
        .map(|i| {
            format!(
                r#"{{"name": "r{i}", "key": ["ip"], "capacity": 5, "refill": {{"tokens": 5, "every": "1m"}}, "ban": true}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"global": {{"cluster": "ratelimit", "key_secret": {{"base64": "{SECRET_B64}"}}}},
            "bans": {{"scope": "global", "base": "1s", "factor": 2.0, "max": "9h"}},
            "rate_limits": {{"rules": [{}]}}}}"#,
        rules.join(",")
    );
    let Err(e) = Policy::from_json(json.as_bytes()) else {
        unreachable!("32 rules × 16 ban lengths accepted")
    };
    assert_eq!(e.path, "bans.scope");
    assert!(
        e.message.contains("more than 500 descriptors"),
        "{}",
        e.message
    );
    // Half as many rules fit.
    let fewer = json.replace(&format!(",{}", rules[16..].join(",")), "");
    assert!(Policy::from_json(fewer.as_bytes()).is_ok());
}
