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
