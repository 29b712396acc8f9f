//! One request through every stage, and the verdict.
//!
//! Stages run in the order of DESIGN.md and stop at the first enforced
//! denial (later stages would only spend host calls). Monitor-mode findings
//! are counted and logged, and the request goes on.

use crate::client_ip;
use crate::config::{FailureMode, Mode, Policy};
use crate::host::{Clock, Metrics, SharedStore, StoreError};
use crate::metrics::Counter;
use crate::ratelimit::{Limiter, Rule, RuleOutcome};
use crate::request::{request_id, HeaderMap};
use crate::routes::RouteId;
use crate::verdict::{Decision, Finding, LocalResponse, Quota, Reason, Stage, Verdict};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;
use std::net::IpAddr;

/// A compiled policy bound to the process-wide hash seed.
pub struct Engine {
    pub policy: Policy,
    seed: [u8; 16],
}

/// Host services one evaluation uses.
pub struct Services<'a> {
    pub store: &'a dyn SharedStore,
    pub clock: &'a dyn Clock,
    pub metrics: &'a dyn Metrics,
}

/// What the stages learned about the request.
struct Facts<'h> {
    route: RouteId,
    client_ip: Option<IpAddr>,
    user: Option<&'h [u8]>,
    request_id: &'h str,
}

impl Engine {
    pub fn new(policy: Policy, seed: [u8; 16]) -> Engine {
        Engine { policy, seed }
    }

    /// Evaluates one request. `peer` returns the TCP peer address; it is only
    /// called when the configuration needs it (each call is a host call).
    pub fn evaluate(
        &self,
        headers: &HeaderMap<'_>,
        peer: &dyn Fn() -> Option<String>,
        host: &Services<'_>,
    ) -> Verdict {
        let method = headers.get_str(":method").unwrap_or("");
        let path = headers.get_str(":path").unwrap_or("");
        let route = self.policy.routes.classify(method, path);
        let mut facts = Facts {
            route,
            client_ip: None,
            user: None,
            request_id: request_id(headers),
        };
        let mut findings: Vec<Finding> = Vec::new();
        let mut quota: Option<Quota> = None;

        match client_ip::resolve(self.policy.client_ip, headers, peer) {
            Ok(ip) => facts.client_ip = ip,
            Err(_) => findings.push(Finding::new(
                Stage::Classify,
                Reason::ClientIpInvalid,
                self.policy.mode,
            )),
        }
        facts.user = self
            .policy
            .user_header
            .as_deref()
            .and_then(|h| headers.get(h));

        if !findings.iter().any(Finding::enforced) {
            self.rate_limit(&facts, host, &mut findings, &mut quota);
        }
        self.conclude(&facts, findings, quota, host.metrics)
    }

    /// Bans and rate limits: both read the same slot record, in one round trip.
    fn rate_limit(
        &self,
        facts: &Facts<'_>,
        host: &Services<'_>,
        findings: &mut Vec<Finding>,
        quota: &mut Option<Quota>,
    ) {
        let limits = &self.policy.rate_limits;
        if limits.rules.is_empty() {
            return;
        }
        let now_ms = host.clock.now_ms();
        let limiter = Limiter {
            rules: &limits.rules,
            bans: &self.policy.bans,
            store: host.store,
            metrics: host.metrics,
        };
        for rule in &limits.rules {
            if !rule.applies_to(facts.route) || (rule.key.user && facts.user.is_none()) {
                continue;
            }
            let (tag, page) = self.slot_of(rule, facts, limits.pages);
            let finding = match limiter.check(rule, tag, page, now_ms) {
                Ok(RuleOutcome::Allowed(q)) => {
                    if quota.is_none_or(|best| q.remaining < best.remaining) {
                        *quota = Some(q);
                    }
                    continue;
                }
                Ok(RuleOutcome::Banned { retry_after_s }) => Finding {
                    rule: Some(rule.index),
                    retry_after_s: Some(retry_after_s),
                    ..Finding::new(Stage::Bans, Reason::BanActive, self.policy.bans.mode)
                },
                Ok(RuleOutcome::Throttled {
                    quota: q,
                    retry_after_s,
                    overflow,
                    ban_issued,
                }) => {
                    if ban_issued {
                        host.metrics
                            .increment(Counter::BanIssued { rule: rule.index });
                    }
                    let reason = if overflow {
                        Reason::RateLimitOverflow
                    } else {
                        Reason::RateLimitExhausted
                    };
                    Finding {
                        rule: Some(rule.index),
                        retry_after_s,
                        quota: Some(q),
                        ..Finding::new(Stage::RateLimit, reason, limits.mode)
                    }
                }
                Err(error) => self.store_failure(rule, error),
            };
            let stop = finding.enforced() || finding.reason == Reason::StoreUnavailable;
            findings.push(finding);
            if stop {
                return;
            }
        }
    }

    /// The one place that decides what a shared-data failure means.
    fn store_failure(&self, rule: &Rule, error: StoreError) -> Finding {
        log::error!(
            "palisade: shared data failed for rule `{}` ({error:?}); failure_mode is {}",
            rule.name,
            match self.policy.failure_mode {
                FailureMode::Deny => "deny",
                FailureMode::Allow => "allow",
            }
        );
        let mode = match self.policy.failure_mode {
            FailureMode::Deny => Mode::Enforce,
            FailureMode::Allow => Mode::Monitor,
        };
        Finding {
            rule: Some(rule.index),
            ..Finding::new(Stage::RateLimit, Reason::StoreUnavailable, mode)
        }
    }

    /// Slot tag and page of the rule's key for this request. The key is
    /// hashed with the process seed, so neither the page nor the tag of a
    /// victim can be predicted.
    fn slot_of(&self, rule: &Rule, facts: &Facts<'_>, pages: u32) -> (u64, u32) {
        let mut h = SipHasher13::new_with_key(&self.seed);
        h.write(rule.name.as_bytes());
        h.write_u8(0xff);
        if rule.key.ip {
            match facts.client_ip {
                Some(IpAddr::V4(ip)) => h.write(&ip.octets()),
                Some(IpAddr::V6(ip)) => h.write(&ip.octets()),
                None => h.write(b"unknown"),
            }
            h.write_u8(0xff);
        }
        if rule.key.user {
            h.write(facts.user.unwrap_or_default());
            h.write_u8(0xff);
        }
        if rule.key.route {
            h.write_u16(facts.route);
        }
        let hash = h.finish128();
        let tag = hash.h1.max(1);
        let page = u32::try_from(hash.h2 % u64::from(pages.max(1))).unwrap_or(0);
        (tag, page)
    }

    fn conclude(
        &self,
        facts: &Facts<'_>,
        findings: Vec<Finding>,
        quota: Option<Quota>,
        metrics: &dyn Metrics,
    ) -> Verdict {
        for finding in &findings {
            metrics.increment(Counter::Finding {
                stage: finding.stage,
                reason: finding.reason,
                mode: finding.mode,
                route: facts.route,
            });
            self.log_event(facts, finding);
        }
        let Some(denial) = findings.iter().find(|f| f.enforced()) else {
            metrics.increment(Counter::Request {
                decision: Decision::Allow,
                route: facts.route,
            });
            let response_headers = match quota {
                Some(q) if self.policy.rate_limits.quota_headers => self.quota_headers(&q),
                _ => Vec::new(),
            };
            return Verdict::Allow { response_headers };
        };
        metrics.increment(Counter::Request {
            decision: denial.reason.decision(),
            route: facts.route,
        });
        Verdict::Respond(self.respond(denial, facts.request_id))
    }

    fn rule_name(&self, rule: u8) -> &str {
        self.policy
            .rate_limits
            .rules
            .get(usize::from(rule))
            .map_or("", |r| r.name.as_str())
    }

    /// `RateLimit-Policy` and `RateLimit` (IETF httpapi ratelimit headers).
    fn quota_headers(&self, q: &Quota) -> Vec<(&'static str, String)> {
        let name = self.rule_name(q.rule);
        let mut policy = format!("\"{name}\";q={}", q.capacity);
        if let Some(w) = q.window_s {
            policy.push_str(&format!(";w={w}"));
        }
        let mut state = format!("\"{name}\";r={}", q.remaining);
        if let Some(t) = q.reset_s {
            state.push_str(&format!(";t={t}"));
        }
        vec![("ratelimit-policy", policy), ("ratelimit", state)]
    }

    fn respond(&self, finding: &Finding, request_id: &str) -> LocalResponse {
        let reason = finding.reason;
        let mut headers: Vec<(&'static str, String)> =
            vec![("content-type", "application/json".to_string())];
        if let Some(seconds) = finding.retry_after_s {
            headers.push(("retry-after", seconds.to_string()));
        }
        if let Some(q) = &finding.quota {
            headers.extend(self.quota_headers(q));
        }
        let body = serde_json::json!({
            "error": reason.error_word(),
            "reason": reason.as_str(),
            "request_id": request_id,
        })
        .to_string();
        LocalResponse {
            status: reason.status(),
            headers,
            body,
        }
    }

    /// One JSON security event per finding. Only configuration names, enum
    /// strings, the client address and a validated request id are written:
    /// never a header value, token or user name.
    fn log_event(&self, facts: &Facts<'_>, finding: &Finding) {
        let event = serde_json::json!({
            "event": "palisade.finding",
            "action": if finding.enforced() { "deny" } else { "monitor" },
            "reason": finding.reason.as_str(),
            "stage": finding.stage.as_str(),
            "route": self.policy.routes.name(facts.route),
            "rule": finding.rule.map(|r| self.rule_name(r)),
            "client_ip": facts.client_ip.map(|ip| ip.to_string()),
            "user_hash": facts.user.map(|u| self.short_hash(u)),
            "request_id": facts.request_id,
        });
        log::warn!("{event}");
    }

    /// A short keyed hash that correlates events of one user without
    /// revealing who it is.
    fn short_hash(&self, value: &[u8]) -> String {
        let mut h = SipHasher13::new_with_key(&self.seed);
        h.write(b"user");
        h.write(value);
        format!("{:08x}", h.finish() >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{ManualClock, MemoryMetrics, MemoryStore};
    use crate::request::encode_map;
    use crate::slots;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    struct Fixture {
        engine: Engine,
        store: MemoryStore,
        clock: ManualClock,
        metrics: MemoryMetrics,
    }

    impl Fixture {
        fn new(json: &str) -> Fixture {
            let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
            let store = MemoryStore::new();
            slots::ensure_pages(
                &store,
                policy.rate_limits.pages,
                policy.rate_limits.rules.len(),
            )
            .unwrap_or_else(|e| unreachable!("{e:?}"));
            Fixture {
                engine: Engine::new(policy, [7; 16]),
                store,
                clock: ManualClock::at(T0),
                metrics: MemoryMetrics::default(),
            }
        }

        fn send(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> Verdict {
            let mut pairs = vec![(":method", method), (":path", path)];
            pairs.extend_from_slice(extra);
            let bytes = encode_map(&pairs);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let services = Services {
                store: &self.store,
                clock: &self.clock,
                metrics: &self.metrics,
            };
            self.engine.evaluate(
                &headers,
                &|| Some("192.0.2.10:40000".to_string()),
                &services,
            )
        }

        fn status(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
            match self.send(method, path, extra) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            }
        }

        fn route(&self, name: &str) -> RouteId {
            self.engine
                .policy
                .routes
                .id_of(name)
                .unwrap_or(RouteId::MAX)
        }
    }

    fn header<'a>(response: &'a LocalResponse, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    const LOGIN: &str = r#"{
        "routes": [{"name": "login", "prefix": "/login", "methods": ["POST"]}, {"name": "public", "prefix": "/public"}],
        "rate_limits": {"rules": [
            {"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 5, "refill": {"tokens": 5, "every": "1m"}},
            {"name": "public-ip", "key": ["ip"], "routes": ["public"], "capacity": 100, "refill": {"tokens": 100, "every": "1s"}}
        ]}
    }"#;

    #[test]
    fn endpoint_rules_differ_per_route() {
        let f = Fixture::new(LOGIN);
        let logins: Vec<u16> = (0..6).map(|_| f.status("POST", "/login", &[])).collect();
        assert_eq!(logins, [200, 200, 200, 200, 200, 429]);
        assert!((0..50).all(|_| f.status("GET", "/public/items", &[]) == 200));
        assert_eq!(
            f.status("GET", "/login", &[]),
            200,
            "GET is not the login route class"
        );
        f.clock.advance(12_000);
        assert_eq!(
            f.status("POST", "/login", &[]),
            200,
            "one token back after 12 s"
        );
        assert_eq!(f.status("POST", "/login", &[]), 429);
    }

    #[test]
    fn throttled_response_carries_headers_and_no_secrets() {
        let f = Fixture::new(LOGIN);
        let secret = [
            ("authorization", "Bearer secret-token-123"),
            ("x-request-id", "req-42"),
            ("cookie", "sid=hunter2"),
        ];
        for _ in 0..5 {
            f.send("POST", "/login", &secret);
        }
        let Verdict::Respond(r) = f.send("POST", "/login", &secret) else {
            unreachable!("sixth login should be throttled");
        };
        assert_eq!(r.status, 429);
        assert_eq!(header(&r, "retry-after"), Some("12"));
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"login-ip\";q=5;w=60")
        );
        assert_eq!(header(&r, "ratelimit"), Some("\"login-ip\";r=0;t=12"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(body["reason"], "rl.exhausted");
        assert_eq!(body["error"], "too_many_requests");
        assert_eq!(body["request_id"], "req-42");
        let everything = format!("{r:?}");
        assert!(!everything.contains("secret-token") && !everything.contains("hunter2"));
        let route = f.route("login");
        assert_eq!(
            f.metrics.get(&Counter::Request {
                decision: Decision::Throttle,
                route
            }),
            1
        );
    }

    #[test]
    fn quota_headers_on_allowed_responses_only_when_asked() {
        let f = Fixture::new(LOGIN);
        assert_eq!(
            f.send("POST", "/login", &[]),
            Verdict::Allow {
                response_headers: vec![]
            }
        );
        let with = Fixture::new(&LOGIN.replace(
            "\"rate_limits\": {",
            "\"rate_limits\": {\"quota_headers\": true,",
        ));
        let Verdict::Allow { response_headers } = with.send("POST", "/login", &[]) else {
            unreachable!("first login is allowed");
        };
        assert_eq!(
            response_headers,
            vec![
                ("ratelimit-policy", "\"login-ip\";q=5;w=60".to_string()),
                ("ratelimit", "\"login-ip\";r=4;t=12".to_string())
            ]
        );
    }

    #[test]
    fn monitor_mode_counts_but_lets_through() {
        let f = Fixture::new(&LOGIN.replacen('{', "{\"mode\": \"monitor\",", 1));
        assert!((0..10).all(|_| f.status("POST", "/login", &[]) == 200));
        let route = f.route("login");
        let flagged = Counter::Finding {
            stage: Stage::RateLimit,
            reason: Reason::RateLimitExhausted,
            mode: Mode::Monitor,
            route,
        };
        assert_eq!(f.metrics.get(&flagged), 5);
    }

    #[test]
    fn bans_escalate_after_repeated_violations_and_decay() {
        let f = Fixture::new(
            r#"{"rate_limits": {"rules": [{"name": "r", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1, "every": "1h"}, "ban": true}]},
                "bans": {"after": 2, "base": "2s", "factor": 2.0, "max": "8s", "decay": "3s"}}"#,
        );
        let retry_after = |f: &Fixture| match f.send("GET", "/", &[]) {
            Verdict::Respond(r) => (r.status, header(&r, "retry-after").map(str::to_string)),
            Verdict::Allow { .. } => (200, None),
        };
        assert_eq!(f.status("GET", "/", &[]), 200);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(
            f.status("GET", "/", &[]),
            429,
            "second strike issues the ban"
        );
        assert_eq!(retry_after(&f), (403, Some("2".into())));
        f.clock.advance(2_000);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(
            retry_after(&f),
            (403, Some("4".into())),
            "level 2: base × factor"
        );
        // Ban ends after 4 s; two decay periods of 3 s bring the level to 0.
        f.clock.advance(4_000 + 6_000);
        f.send("GET", "/", &[]);
        f.send("GET", "/", &[]);
        assert_eq!(
            retry_after(&f),
            (403, Some("2".into())),
            "decayed back to level 1"
        );
        assert_eq!(f.metrics.get(&Counter::BanIssued { rule: 0 }), 3);
    }

    #[test]
    fn invalid_forwarded_for_is_a_400_with_a_reason() {
        let f = Fixture::new(
            r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                "rate_limits": {"rules": [{"name": "r", "key": ["ip"], "capacity": 2, "refill": "none"}]}}"#,
        );
        let Verdict::Respond(r) = f.send("GET", "/", &[("x-forwarded-for", "nonsense")]) else {
            unreachable!("garbage XFF must be refused");
        };
        assert_eq!(r.status, 400);
        assert!(r.body.contains("client_ip.invalid"));
        // Clients behind the trusted proxy are told apart by the trusted entry only.
        let xff = |left: &'static str| [("x-forwarded-for", left)];
        assert_eq!(f.status("GET", "/", &xff("1.1.1.1, 198.51.100.1")), 200);
        assert_eq!(f.status("GET", "/", &xff("2.2.2.2, 198.51.100.1")), 200);
        assert_eq!(f.status("GET", "/", &xff("3.3.3.3, 198.51.100.1")), 429);
        assert_eq!(f.status("GET", "/", &xff("198.51.100.2")), 200);
    }

    #[test]
    fn user_rules_apply_only_to_requests_with_a_user() {
        let f = Fixture::new(
            r#"{"user": {"header": "x-user-id"},
                "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "capacity": 1, "refill": "none"}]}}"#,
        );
        assert_eq!(f.status("GET", "/", &[("x-user-id", "alice")]), 200);
        assert_eq!(f.status("GET", "/", &[("x-user-id", "alice")]), 429);
        assert_eq!(f.status("GET", "/", &[("x-user-id", "bob")]), 200);
        assert_eq!(f.status("GET", "/", &[]), 200);
        assert_eq!(f.status("GET", "/", &[]), 200);
    }

    /// A store whose every call fails, as if the host refused shared data.
    struct BrokenStore;
    impl SharedStore for BrokenStore {
        fn get(&self, _: &str) -> Result<Option<crate::host::Versioned>, StoreError> {
            Err(StoreError::Host(10))
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Host(10))
        }
    }

    #[test]
    fn shared_data_failure_follows_failure_mode() {
        for (mode, expected) in [("deny", 503), ("allow", 200)] {
            let f = Fixture::new(&format!(
                r#"{{"failure_mode": "{mode}", "rate_limits": {{"rules": [{{"name": "r", "key": ["ip"], "capacity": 9, "refill": "none"}}]}}}}"#
            ));
            let bytes = encode_map(&[(":method", "GET"), (":path", "/")]);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let services = Services {
                store: &BrokenStore,
                clock: &f.clock,
                metrics: &f.metrics,
            };
            let status = match f.engine.evaluate(&headers, &|| None, &services) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            };
            assert_eq!(status, expected, "failure_mode {mode}");
        }
    }

    #[test]
    fn exact_limit_across_concurrent_workers() {
        let f = Arc::new(Fixture::new(
            r#"{"rate_limits": {"rules": [{"name": "burst", "key": ["ip"], "capacity": 50, "refill": "none"}]}}"#,
        ));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    (0..50).filter(|_| f.status("GET", "/", &[]) == 200).count()
                })
            })
            .collect();
        let allowed: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn a_flood_of_new_clients_is_bounded_and_frees_no_ban() {
        let f = Fixture::new(
            r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                "rate_limits": {"slots": 64, "rules": [{"name": "r", "key": ["ip"], "capacity": 3, "refill": {"tokens": 1, "every": "1h"}, "ban": true}]},
                "bans": {"after": 1, "base": "1h"}}"#,
        );
        let victim = [("x-forwarded-for", "203.0.113.7")];
        while f.status("GET", "/", &victim) != 403 {}
        let keys_before = f.store.key_count();
        let bytes_before = f.store.byte_size();
        let mut overflowed = 0;
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            if let Verdict::Respond(r) = f.send("GET", "/", &[("x-forwarded-for", ip.as_str())]) {
                overflowed += usize::from(r.body.contains("rl.overflow"));
            }
        }
        assert_eq!(f.store.key_count(), keys_before, "no key per client");
        assert_eq!(f.store.byte_size(), bytes_before, "fixed-size records");
        assert!(
            overflowed > 90_000,
            "unplaced clients are limited, not let through ({overflowed})"
        );
        assert_eq!(
            f.status("GET", "/", &victim),
            403,
            "the ban survived the flood"
        );
    }
}
