//! One request through every stage, and the verdict.
//!
//! Stages run in the order of DESIGN.md and stop at the first enforced
//! denial (later stages would only spend host calls). Monitor-mode findings
//! are counted and logged, and the request goes on. A request whose body
//! must be checked (a signed `Content-Digest`) gets its final decision in
//! [`Engine::check_body`].

use crate::client_ip;
use crate::config::{FailureMode, Mode, Policy, SignaturePolicy};
use crate::digest::{ContentDigest, DigestError};
use crate::host::{Clock, Metrics, SharedStore, StoreError};
use crate::metrics::Counter;
use crate::ratelimit::{Limiter, Rule, RuleOutcome};
use crate::replay::{self, Sighting};
use crate::request::{request_id, HeaderMap};
use crate::routes::RouteId;
use crate::signature::{self, Verified};
use crate::verdict::{BodyCheck, Decision, Finding, LocalResponse, Quota, Reason, Stage, Verdict};
use siphasher::sip128::{Hash128, Hasher128, SipHasher13};
use std::cell::Cell;
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
    /// Key id of a verified request signature.
    key_id: Option<String>,
    request_id: &'h str,
    /// The clock, read at most once per request (each read is a host call).
    now_ms: Cell<Option<u64>>,
}

impl Facts<'_> {
    fn now_ms(&self, clock: &dyn Clock) -> u64 {
        match self.now_ms.get() {
            Some(now) => now,
            None => {
                let now = clock.now_ms();
                self.now_ms.set(Some(now));
                now
            }
        }
    }
}

/// The request body as the body phase saw it.
pub enum Body<'a> {
    Complete(&'a [u8]),
    /// Larger than the configured limit; not buffered further.
    TooLarge,
    /// The host failed to hand it over: it cannot be checked.
    Unreadable,
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
            key_id: None,
            request_id: request_id(headers),
            now_ms: Cell::new(None),
        };
        let mut findings: Vec<Finding> = Vec::new();
        let mut quota: Option<Quota> = None;
        let mut body: Option<BodyCheck> = None;

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

        let blocked = |findings: &[Finding]| findings.iter().any(Finding::enforced);
        if !blocked(&findings) {
            if let Some(policy) = self.policy.signatures.policy_for(route) {
                self.authenticate(policy, headers, &mut facts, host, &mut findings, &mut body);
            }
        }
        if !blocked(&findings) {
            self.rate_limit(&facts, host, &mut findings, &mut quota);
        }
        self.conclude(&facts, findings, quota, body, host.metrics)
    }

    /// The signature stage: verify the RFC 9421 signature, check that its
    /// nonce or itself was not seen before, and prepare the body's digest
    /// check.
    fn authenticate(
        &self,
        policy: &SignaturePolicy,
        headers: &HeaderMap<'_>,
        facts: &mut Facts<'_>,
        host: &Services<'_>,
        findings: &mut Vec<Finding>,
        body: &mut Option<BodyCheck>,
    ) {
        let sigs = &self.policy.signatures;
        let mut flag = |reason| findings.push(Finding::new(Stage::Signature, reason, sigs.mode));
        let now_ms = facts.now_ms(host.clock);
        let verified =
            match signature::verify(headers, &sigs.keys, &policy.requirements, now_ms / 1000) {
                Ok(verified) => verified,
                Err(error) => return flag(Reason::Signature(error)),
            };
        // Verified, so the key id is known even if a later check fails: it
        // is what an investigation of a replay needs.
        facts.key_id = Some(verified.key_id.clone());
        if policy.require_digest || verified.covers_content_digest {
            let digest = match ContentDigest::from_headers(headers) {
                Ok(digest) => digest,
                Err(error) => return flag(Reason::Digest(error)),
            };
            let declared = headers
                .get_str("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|len| len > sigs.max_body_bytes as u64) {
                return flag(Reason::BodyTooLarge);
            }
            *body = Some(BodyCheck {
                digest,
                max_bytes: sigs.max_body_bytes,
                mode: sigs.mode,
                route: facts.route,
                client_ip: facts.client_ip,
                key_id: verified.key_id.clone(),
                request_id: facts.request_id.to_string(),
            });
        }
        if policy.replay {
            match self.remember(&verified, now_ms, host) {
                Ok(Sighting::Fresh) => {}
                Ok(Sighting::Replay) => flag(Reason::SignatureReplay),
                Ok(Sighting::TableFull) => {
                    log::error!(
                        "palisade: replay table full; raise signatures.replay_slots (now {})",
                        sigs.replay_pages.saturating_mul(4)
                    );
                    flag(Reason::ReplayCapacity);
                }
                Err(error) => {
                    findings.push(self.store_failure("signature replay", Stage::Signature, error));
                }
            }
        }
    }

    /// Remembers a verified signature (by nonce when it has one) until it
    /// would expire anyway.
    fn remember(
        &self,
        verified: &Verified,
        now_ms: u64,
        host: &Services<'_>,
    ) -> Result<Sighting, StoreError> {
        let hash = self.keyed_hash(|h| {
            h.write(b"replay");
            h.write(verified.key_id.as_bytes());
            h.write_u8(0xff);
            match &verified.nonce {
                Some(nonce) => {
                    h.write_u8(1);
                    h.write(nonce.as_bytes());
                }
                None => {
                    h.write_u8(0);
                    h.write(&verified.id);
                }
            }
        });
        let pages = self.policy.signatures.replay_pages;
        let (tag, page) = Self::tag_and_page(hash, pages);
        // `created` is always required, so there is an end; an hour is a
        // backstop that keeps records from living for ever.
        let expires_ms = verified
            .fresh_until_s
            .map_or(now_ms.saturating_add(3_600_000), |s| {
                s.saturating_add(1).saturating_mul(1000)
            });
        replay::remember(host.store, host.metrics, tag, page, expires_ms, now_ms)
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
        let now_ms = facts.now_ms(host.clock);
        let limiter = Limiter {
            rules: &limits.rules,
            bans: &self.policy.bans,
            store: host.store,
            metrics: host.metrics,
        };
        for rule in &limits.rules {
            if !rule.applies_to(facts.route)
                || (rule.key.user && facts.user.is_none())
                || (rule.key.key_id && facts.key_id.is_none())
            {
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
                Err(error) => Finding {
                    rule: Some(rule.index),
                    ..self.store_failure(&rule.name, Stage::RateLimit, error)
                },
            };
            let stop = finding.enforced() || finding.reason == Reason::StoreUnavailable;
            findings.push(finding);
            if stop {
                return;
            }
        }
    }

    /// The one place that decides what a shared-data failure means.
    fn store_failure(&self, what: &str, stage: Stage, error: StoreError) -> Finding {
        log::error!(
            "palisade: shared data failed for `{what}` ({error:?}); failure_mode is {}",
            match self.policy.failure_mode {
                FailureMode::Deny => "deny",
                FailureMode::Allow => "allow",
            }
        );
        let mode = match self.policy.failure_mode {
            FailureMode::Deny => Mode::Enforce,
            FailureMode::Allow => Mode::Monitor,
        };
        Finding::new(stage, Reason::StoreUnavailable, mode)
    }

    /// SipHash-1-3 keyed with the process seed: neither a slot nor a tag of
    /// someone else's key can be predicted without the seed.
    fn keyed_hash(&self, write: impl FnOnce(&mut SipHasher13)) -> Hash128 {
        let mut h = SipHasher13::new_with_key(&self.seed);
        write(&mut h);
        h.finish128()
    }

    fn tag_and_page(hash: Hash128, pages: u32) -> (u64, u32) {
        let tag = hash.h1.max(1);
        let page = u32::try_from(hash.h2 % u64::from(pages.max(1))).unwrap_or(0);
        (tag, page)
    }

    /// Slot tag and page of the rule's key for this request.
    fn slot_of(&self, rule: &Rule, facts: &Facts<'_>, pages: u32) -> (u64, u32) {
        let hash = self.keyed_hash(|h| {
            h.write(rule.name.as_bytes());
            h.write_u8(0xff);
            // A reload that changes a rule's limits starts fresh buckets:
            // a bucket's state only means something under its own limits.
            h.write_u32(rule.capacity);
            if let Some(refill) = rule.refill {
                h.write_u32(refill.tokens);
                h.write_u64(refill.every_ms);
            }
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
            if rule.key.key_id {
                h.write(facts.key_id.as_deref().unwrap_or_default().as_bytes());
                h.write_u8(0xff);
            }
            if rule.key.route {
                h.write_u16(facts.route);
            }
        });
        Self::tag_and_page(hash, pages)
    }

    fn conclude(
        &self,
        facts: &Facts<'_>,
        findings: Vec<Finding>,
        quota: Option<Quota>,
        body: Option<BodyCheck>,
        metrics: &dyn Metrics,
    ) -> Verdict {
        for finding in &findings {
            self.record(facts, finding, metrics);
        }
        if let Some(denial) = findings.iter().find(|f| f.enforced()) {
            metrics.increment(Counter::Request {
                decision: denial.reason.decision(),
                route: facts.route,
            });
            return Verdict::Respond(self.respond(denial, facts.request_id));
        }
        // With a body still to check, the request is counted when it is.
        if body.is_none() {
            metrics.increment(Counter::Request {
                decision: Decision::Allow,
                route: facts.route,
            });
        }
        let response_headers = match quota {
            Some(q) if self.policy.rate_limits.quota_headers => self.quota_headers(&q),
            _ => Vec::new(),
        };
        Verdict::Allow {
            response_headers,
            body,
        }
    }

    /// The body phase: the request's body against its `Content-Digest`.
    /// Returns the response to send instead of forwarding, if any.
    pub fn check_body(
        &self,
        check: &BodyCheck,
        body: Body<'_>,
        metrics: &dyn Metrics,
    ) -> Option<LocalResponse> {
        let failure = match body {
            Body::TooLarge => Some(Reason::BodyTooLarge),
            Body::Unreadable => Some(Reason::BodyUnreadable),
            Body::Complete(bytes) if bytes.len() > check.max_bytes => Some(Reason::BodyTooLarge),
            Body::Complete(bytes) => check
                .digest
                .check(bytes)
                .err()
                .map(|e: DigestError| Reason::Digest(e)),
        };
        let finding = failure.map(|reason| Finding::new(Stage::Signature, reason, check.mode));
        let facts = Facts {
            route: check.route,
            client_ip: check.client_ip,
            user: None,
            key_id: Some(check.key_id.clone()),
            request_id: &check.request_id,
            now_ms: Cell::new(None),
        };
        if let Some(finding) = &finding {
            self.record(&facts, finding, metrics);
        }
        let denial = finding.filter(Finding::enforced);
        metrics.increment(Counter::Request {
            decision: denial
                .as_ref()
                .map_or(Decision::Allow, |f| f.reason.decision()),
            route: check.route,
        });
        denial.map(|f| self.respond(&f, &check.request_id))
    }

    /// Counts and logs one finding.
    fn record(&self, facts: &Facts<'_>, finding: &Finding, metrics: &dyn Metrics) {
        metrics.increment(Counter::Finding {
            stage: finding.stage,
            reason: finding.reason,
            mode: finding.mode,
            route: facts.route,
        });
        self.log_event(facts, finding);
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
            "key_id": facts.key_id,
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
            slots::ensure_pages(&store, policy.shared_keys())
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
            self.send_headers(&pairs)
        }

        fn send_headers(&self, pairs: &[(&str, &str)]) -> Verdict {
            let bytes = encode_map(pairs);
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
        assert!(matches!(
            f.send("POST", "/login", &[]),
            Verdict::Allow { response_headers, body: None } if response_headers.is_empty()
        ));
        let with = Fixture::new(&LOGIN.replace(
            "\"rate_limits\": {",
            "\"rate_limits\": {\"quota_headers\": true,",
        ));
        let Verdict::Allow {
            response_headers, ..
        } = with.send("POST", "/login", &[])
        else {
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

    mod signed {
        use super::*;
        use crate::digest::{content_digest, DigestAlg};
        use base64::Engine as _;
        use hmac::{Hmac, Mac};

        const SECRET: &[u8] = b"a-demo-secret-of-at-least-32-bytes!!";
        const OTHER: &[u8] = b"another-secret-of-at-least-32-bytes!";

        fn config(policy_extra: &str) -> String {
            let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
            format!(
                r#"{{"routes": [{{"name": "pay", "prefix": "/pay"}}],
                    "signatures": {{
                        "keys": [{{"id": "client-a", "secret": {{"base64": "{}"}}}},
                                 {{"id": "client-b", "secret": {{"base64": "{}"}}}}],
                        "max_body_bytes": 64,
                        "policies": [{{"routes": ["pay"], "components": ["@method", "@path", "@query", "content-digest"],
                                       "require_digest": true {policy_extra}}}]}},
                    "rate_limits": {{"rules": [{{"name": "per-signer", "key": ["key_id"], "routes": ["pay"], "capacity": 3, "refill": "none"}}]}}}}"#,
                b64(SECRET),
                b64(OTHER)
            )
        }

        /// Headers of a request signed over method, path, query and content-digest.
        fn signed(
            path: &str,
            body: &[u8],
            key: (&str, &[u8]),
            params: &str,
        ) -> Vec<(String, String)> {
            let mut headers: Vec<(String, String)> = vec![
                (":method".into(), "POST".into()),
                (":path".into(), path.into()),
                (":authority".into(), "api.example".into()),
                (
                    "content-digest".into(),
                    content_digest(DigestAlg::Sha256, body),
                ),
                (
                    "signature-input".into(),
                    format!(
                        r#"sig1=("@method" "@path" "@query" "content-digest");keyid="{}"{params}"#,
                        key.0
                    ),
                ),
            ];
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let bytes = encode_map(&pairs);
            let map = HeaderMap::decode(&bytes).unwrap_or_default();
            let base =
                signature::signature_base(&map, "sig1").unwrap_or_else(|e| unreachable!("{e:?}"));
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(key.1).unwrap_or_else(|e| unreachable!("{e}"));
            mac.update(&base);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            headers.push(("signature".into(), format!("sig1=:{sig}:")));
            headers
        }

        type Headers = Vec<(String, String)>;

        fn created(f: &Fixture) -> String {
            format!(";created={}", f.clock.now_ms() / 1000)
        }

        fn send(f: &Fixture, headers: &[(String, String)]) -> Verdict {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            f.send_headers(&pairs)
        }

        /// Status after headers and, when asked for, the body phase.
        fn outcome(f: &Fixture, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
            match send(f, headers) {
                Verdict::Respond(r) => (r.status, r.body),
                Verdict::Allow { body: None, .. } => (200, String::new()),
                Verdict::Allow {
                    body: Some(check), ..
                } => {
                    match f
                        .engine
                        .check_body(&check, Body::Complete(body), &f.metrics)
                    {
                        None => (200, String::new()),
                        Some(r) => (r.status, r.body),
                    }
                }
            }
        }

        fn reason(outcome: &(u16, String)) -> String {
            let body: serde_json::Value = serde_json::from_str(&outcome.1).unwrap_or_default();
            body["reason"].as_str().unwrap_or("").to_string()
        }

        #[test]
        fn a_signed_request_with_its_body_passes_once() {
            let f = Fixture::new(&config(""));
            let body = br#"{"amount": 5}"#;
            let headers = signed(
                "/pay?x=1",
                body,
                ("client-a", SECRET),
                &format!("{};nonce=\"n1\"", created(&f)),
            );
            assert_eq!(outcome(&f, &headers, body).0, 200);
            let replay = outcome(&f, &headers, body);
            assert_eq!((replay.0, reason(&replay)), (401, "sig.replay".into()));
        }

        #[test]
        fn without_nonce_the_same_signature_is_accepted_once() {
            let f = Fixture::new(&config(""));
            let headers = signed("/pay", b"", ("client-a", SECRET), &created(&f));
            assert_eq!(outcome(&f, &headers, b"").0, 200);
            assert_eq!(reason(&outcome(&f, &headers, b"")), "sig.replay");
            // Disabled replay protection accepts it again.
            let open = Fixture::new(&config(r#", "replay": false"#));
            let again = signed("/pay", b"", ("client-a", SECRET), &created(&open));
            assert_eq!(outcome(&open, &again, b"").0, 200);
            assert_eq!(outcome(&open, &again, b"").0, 200);
        }

        #[test]
        fn tampering_and_bad_signatures_are_refused_with_their_reason() {
            let f = Fixture::new(&config(""));
            let c = created(&f);
            let body = b"amount=5";
            let case = |mutate: &dyn Fn(&mut Headers),
                        params: &str,
                        key: (&str, &[u8]),
                        sent_body: &[u8]| {
                let mut headers = signed("/pay?x=1", body, key, params);
                mutate(&mut headers);
                reason(&outcome(&f, &headers, sent_body))
            };
            let set = |name: &'static str, value: &'static str| {
                move |h: &mut Vec<(String, String)>| {
                    h.retain(|(n, _)| n != name);
                    h.push((name.to_string(), value.to_string()));
                }
            };
            let none = |_: &mut Vec<(String, String)>| {};
            assert_eq!(
                case(&set(":path", "/pay?x=2"), &c, ("client-a", SECRET), body),
                "sig.invalid"
            );
            assert_eq!(
                case(&set(":method", "PUT"), &c, ("client-a", SECRET), body),
                "sig.invalid"
            );
            assert_eq!(
                case(&none, &c, ("client-a", SECRET), b"amount=6"),
                "digest.mismatch"
            );
            assert_eq!(case(&none, &c, ("client-a", OTHER), body), "sig.invalid");
            assert_eq!(
                case(&none, &c, ("client-z", SECRET), body),
                "sig.unknown_key"
            );
            let old = format!(";created={}", f.clock.now_ms() / 1000 - 600);
            assert_eq!(case(&none, &old, ("client-a", SECRET), body), "sig.expired");
            let future = format!(";created={}", f.clock.now_ms() / 1000 + 600);
            assert_eq!(
                case(&none, &future, ("client-a", SECRET), body),
                "sig.future"
            );
            let unsigned =
                |h: &mut Vec<(String, String)>| h.retain(|(n, _)| !n.starts_with("signature"));
            assert_eq!(
                case(&unsigned, &c, ("client-a", SECRET), body),
                "sig.missing"
            );
            let no_digest =
                |h: &mut Vec<(String, String)>| h.retain(|(n, _)| n != "content-digest");
            assert_eq!(
                case(&no_digest, &c, ("client-a", SECRET), body),
                "sig.components"
            );
            // Routes without a policy are not checked.
            let mut elsewhere = signed("/other", body, ("client-z", SECRET), &c);
            elsewhere.retain(|(n, _)| !n.starts_with("signature"));
            assert_eq!(outcome(&f, &elsewhere, body).0, 200);
        }

        #[test]
        fn bodies_over_the_limit_are_413_before_and_after_buffering() {
            let f = Fixture::new(&config(""));
            let big = [b'x'; 65];
            let buffered = signed("/pay", &big, ("client-a", SECRET), &created(&f));
            assert_eq!(outcome(&f, &buffered, &big).0, 413);
            let mut headers = signed(
                "/pay",
                &big,
                ("client-a", SECRET),
                &format!("{};nonce=\"x\"", created(&f)),
            );
            headers.push(("content-length".into(), "65".into()));
            let Verdict::Respond(r) = send(&f, &headers) else {
                unreachable!("declared length over the limit is refused at once");
            };
            assert_eq!(r.status, 413);
        }

        #[test]
        fn both_rotated_keys_verify_and_key_id_is_a_rate_limit_key() {
            let f = Fixture::new(&config(""));
            let statuses: Vec<u16> = (0..4)
                .map(|n| {
                    let params = format!("{};nonce=\"a{n}\"", created(&f));
                    outcome(&f, &signed("/pay", b"", ("client-a", SECRET), &params), b"").0
                })
                .collect();
            assert_eq!(statuses, [200, 200, 200, 429], "three per signer");
            let params = format!("{};nonce=\"b0\"", created(&f));
            assert_eq!(
                outcome(&f, &signed("/pay", b"", ("client-b", OTHER), &params), b"").0,
                200
            );
        }

        #[test]
        fn monitor_mode_lets_bad_signatures_through_but_counts_them() {
            let f = Fixture::new(&config("").replace(
                "\"signatures\": {",
                "\"signatures\": {\"mode\": \"monitor\",",
            ));
            let mut headers = signed("/pay", b"", ("client-a", SECRET), &created(&f));
            headers.retain(|(n, _)| n != "signature");
            assert_eq!(outcome(&f, &headers, b"").0, 200);
            let counted = Counter::Finding {
                stage: Stage::Signature,
                reason: Reason::Signature(signature::SigError::Missing),
                mode: Mode::Monitor,
                route: f.route("pay"),
            };
            assert_eq!(f.metrics.get(&counted), 1);
        }
    }
}
