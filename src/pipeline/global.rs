//! The end of a request with global descriptors: one call to the
//! rate-limit service for all of them, and its answer read as the local
//! stages' findings would be (the same reasons, statuses and headers).

use super::{Engine, Later, Services};
use crate::core::cluster::{Counted, Descriptor};
use crate::core::metrics::Counter;
use crate::core::mode::Mode;
use crate::core::request::Facts;
use crate::core::verdict::{Finding, LocalResponse, Quota, Reason, Stage};
use crate::stages::global::{self, Failure, Status};
use crate::stages::limits;

/// A request waiting for the rate-limit service: the call to make, and
/// what its answer is read against.
#[derive(Debug, Clone)]
pub struct RemoteCheck {
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
    descriptors: Vec<Descriptor>,
    later: Later,
    /// The local rules' tightest quota, for the quota headers.
    quota: Option<Quota>,
    /// The mode of refresh-token reuse, when a refresh token is counted.
    refresh_mode: Option<Mode>,
}

/// What a request becomes once the service answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Forward upstream, adding these headers to its response (quota headers).
    Forward(Vec<(&'static str, String)>),
    Respond(LocalResponse),
}

/// What the header (or body) phase knew of the request, for its answer.
pub(super) struct Asking<'a> {
    pub descriptors: Vec<Descriptor>,
    pub facts: &'a Facts<'a>,
    pub quota: Option<Quota>,
    pub refresh_mode: Option<Mode>,
}

impl Engine {
    fn rule_name(&self, index: u8) -> String {
        let rules = &self.policy.rate_limits.rules;
        rules
            .get(usize::from(index))
            .map_or_else(String::new, |r| r.name.clone())
    }

    /// The service's cluster, and how long a call may take (ms); `None`
    /// without a `global` section.
    pub fn global_call(&self) -> Option<(&str, u64)> {
        let g = self.policy.global.as_ref()?;
        Some((&g.cluster, g.timeout_ms))
    }

    /// The call for a request's descriptors; `None` when it has none.
    pub(super) fn remote_check(&self, asking: Asking<'_>) -> Option<Box<RemoteCheck>> {
        let global = self.policy.global.as_ref()?;
        if asking.descriptors.is_empty() {
            return None;
        }
        let message = global::encode(global, &asking.descriptors, &|index| self.rule_name(index));
        let facts = asking.facts;
        Some(Box::new(RemoteCheck {
            message,
            descriptors: asking.descriptors,
            later: Later::of(facts),
            quota: asking.quota,
            refresh_mode: asking.refresh_mode,
        }))
    }

    /// The service's answer (the response message, or why there is none)
    /// to `check`: forward, or refuse as the local stage would have.
    pub fn remote_answered(
        &self,
        check: &RemoteCheck,
        answer: Result<&[u8], Failure>,
        host: &Services<'_>,
    ) -> Answer {
        let facts = self.facts_later(&check.later);
        let mut quota = check.quota;
        let findings = match answer.and_then(|bytes| global::decode(bytes, check.descriptors.len()))
        {
            Ok(statuses) => self.read_statuses(check, &statuses, &facts, host, &mut quota),
            Err(failure) => vec![self.service_failure(&failure)],
        };
        host.metrics.increment(Counter::GlobalCall {
            outcome: match findings.first() {
                None => "ok",
                Some(f) if f.reason == Reason::GlobalUnavailable => "error",
                Some(_) => "over",
            },
        });
        self.record(&facts, &findings, false, host);
        let denial = findings.into_iter().find(Finding::enforced);
        match self.settle(&check.later, denial, host) {
            Some(response) => Answer::Respond(response),
            None => Answer::Forward(match quota {
                Some(q) if self.policy.rate_limits.quota_headers => q.headers(&self.policy),
                _ => Vec::new(),
            }),
        }
    }

    /// Findings of the descriptors the service found over their limit;
    /// the tightest quota of the rules it counted.
    fn read_statuses(
        &self,
        check: &RemoteCheck,
        statuses: &[Status],
        facts: &Facts<'_>,
        host: &Services<'_>,
        quota: &mut Option<Quota>,
    ) -> Vec<Finding> {
        let ctx = self.ctx(host);
        let (limits, bans) = (&self.policy.rate_limits, &self.policy.bans);
        let keys = limits::KeysOf {
            limits,
            bans,
            worker: &self.limits,
            facts,
            ctx: &ctx,
        };
        let mut findings = Vec::new();
        for (descriptor, status) in check.descriptors.iter().zip(statuses) {
            match descriptor.counted {
                Counted::Rule(index) => {
                    let Some(rule) = self.policy.rate_limits.rules.get(usize::from(index)) else {
                        continue;
                    };
                    let q = Quota {
                        rule: index,
                        capacity: rule.capacity,
                        window_s: Some(descriptor.window_s),
                        remaining: if status.over { 0 } else { status.remaining },
                        reset_s: Some(status.reset_s),
                    };
                    if status.over {
                        // A strike toward a ban, as a local refusal is.
                        if let Err(error) = keys.strike(rule) {
                            log::warn!("palisade: a refusal of the rate-limit service could not count toward a ban: {error:?}");
                        }
                        findings.push(Finding {
                            rule: Some(index),
                            retry_after_s: Some(status.reset_s),
                            quota: Some(q),
                            ..Finding::new(
                                Stage::RateLimit,
                                limits::exhausted_reason(rule),
                                self.policy.rate_limits.mode,
                            )
                        });
                    } else if quota.is_none_or(|best| q.remaining < best.remaining) {
                        *quota = Some(q);
                    }
                }
                Counted::Nonce if status.over => findings.push(Finding::new(
                    Stage::Signature,
                    Reason::SignatureReplay,
                    self.policy.signatures.mode,
                )),
                Counted::Refresh if status.over => findings.push(Finding::new(
                    Stage::Authenticate,
                    Reason::RefreshReuse,
                    check.refresh_mode.unwrap_or(Mode::Enforce),
                )),
                Counted::Ban(index) if status.over => {
                    if let Some(rule) = limits.rules.get(usize::from(index)) {
                        let left_ms = status.reset_s.saturating_mul(1000);
                        if let Err(error) = keys.adopt_ban(rule, left_ms) {
                            log::warn!("palisade: a ban the rate-limit service holds could not be kept here: {error:?}");
                        }
                    }
                    findings.push(Finding {
                        rule: Some(index),
                        retry_after_s: Some(status.reset_s),
                        ..Finding::new(Stage::Bans, Reason::BanActive, bans.mode)
                    });
                }
                Counted::Nonce | Counted::Refresh | Counted::Ban(_) => {}
            }
        }
        findings
    }

    /// The bans this worker issued since its last tick, as one call for the
    /// service to record them (`bans.scope: global`); `None` without any.
    pub fn ban_publications(&self) -> Option<Vec<u8>> {
        let global = self.policy.global.as_ref()?;
        let bans = self.limits.take_bans();
        if bans.is_empty() {
            return None;
        }
        Some(global::encode(global, &bans, &|index| {
            self.rule_name(index)
        }))
    }

    /// What a failed call means: `global.failure_mode` decides, as
    /// `failure_mode` does for shared data.
    fn service_failure(&self, failure: &Failure) -> Finding {
        let failure_mode = self
            .policy
            .global
            .as_ref()
            .map_or(self.policy.failure_mode, |g| g.failure_mode);
        log::error!(
            "palisade: the rate-limit service {}; global.failure_mode is {}",
            failure.describe(),
            failure_mode.as_str()
        );
        Finding::new(
            Stage::Global,
            Reason::GlobalUnavailable,
            failure_mode.mode(),
        )
    }
}
