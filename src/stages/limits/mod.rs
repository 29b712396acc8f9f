//! The bans and rate-limit stage: token buckets (GCRA) and escalating bans
//! in shared slot tables ([`buckets`]), the `rate_limits` and `bans`
//! sections ([`config`]), and which rules run in which phase of a request
//! (here).

pub mod buckets;
pub mod config;

use crate::core::metrics::Counter;
use crate::core::request::Facts;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Quota, Reason, Stage};
use crate::state::slots;
use buckets::{BanPolicy, Charge, Counts, Limiter, Rule, RuleOutcome};
use config::RateLimits;
use std::hash::Hasher;
use std::net::IpAddr;

/// When a group of rate-limit rules runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any verification: rules keyed on what every request carries.
    PreAuth,
    /// After authentication: rules keyed on the user or the signing key.
    PostAuth,
    /// The request was refused by verification: `failures` rules take a token.
    Failed,
}

/// Bans and rate limits of one phase: both read the same slot record, in
/// one round trip per rule.
pub fn check(
    phase: Phase,
    limits: &RateLimits,
    bans: &BanPolicy,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
    findings: &mut Vec<Finding>,
    quota: &mut Option<Quota>,
) {
    let host = ctx.host;
    let mut due = limits
        .rules
        .iter()
        .filter_map(|rule| {
            let charge = match (phase, rule.counts) {
                (Phase::PreAuth, Counts::Requests) if !rule.post_auth() => Charge::Take,
                (Phase::PreAuth, Counts::Failures) => Charge::Peek,
                (Phase::PostAuth, Counts::Requests) if rule.post_auth() => Charge::Take,
                (Phase::Failed, Counts::Failures) => Charge::Take,
                _ => return None,
            };
            let applies = rule.applies_to(facts.route)
                && !(rule.key.user && facts.user.is_none())
                && !(rule.key.key_id && facts.key_id.is_none())
                && rule.countries.is_none_or(|c| c.contains(facts.country));
            applies.then_some((rule, charge))
        })
        .peekable();
    if due.peek().is_none() {
        return;
    }
    let Some(now_ms) = facts.now_ms(host.clock) else {
        return findings.push(ctx.host_failure("clock", Stage::RateLimit));
    };
    let limiter = Limiter {
        rules: &limits.rules,
        bans,
        store: host.store,
        metrics: host.metrics,
    };
    for (rule, charge) in due {
        let addr = slot_of(rule, facts, ctx, limits.pages);
        let finding = match limiter.check(rule, addr, now_ms, charge) {
            Ok(RuleOutcome::Allowed(q)) => {
                // A failures rule is no quota of the client's requests.
                let counted = rule.counts == Counts::Requests;
                if counted && quota.is_none_or(|best| q.remaining < best.remaining) {
                    *quota = Some(q);
                }
                continue;
            }
            Ok(RuleOutcome::Banned { retry_after_s }) => Finding {
                rule: Some(rule.index),
                retry_after_s: Some(retry_after_s),
                ..Finding::new(Stage::Bans, Reason::BanActive, bans.mode)
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
                ..ctx.store_failure(&rule.name, Stage::RateLimit, error)
            },
        };
        let stop = finding.enforced() || finding.reason == Reason::StoreUnavailable;
        findings.push(finding);
        if stop && phase != Phase::Failed {
            return;
        }
    }
}

/// Slot address of the rule's key for this request.
fn slot_of(rule: &Rule, facts: &Facts<'_>, ctx: &Ctx<'_>, pages: u32) -> slots::Address {
    let hash = ctx.keyed_hash(|h| {
        h.write(rule.name.as_bytes());
        h.write_u8(0xff);
        // Not the limits: a reload that changes them keeps the record, its
        // ban and strikes (`Rule::limits_stamp` resets only the bucket).
        if rule.key.ip {
            // The address is already cut to its prefix (`client_ip`).
            match facts.ip_key {
                Some(IpAddr::V4(ip)) => h.write(&ip.octets()),
                Some(IpAddr::V6(ip)) => h.write(&ip.octets()),
                None => h.write(b"unknown"),
            }
            h.write_u8(0xff);
        }
        if rule.key.user {
            h.write(facts.user.as_deref().unwrap_or_default());
            h.write_u8(0xff);
        }
        if rule.key.key_id {
            h.write(facts.key_id.as_deref().unwrap_or_default().as_bytes());
            h.write_u8(0xff);
        }
        if rule.key.fingerprint {
            h.write_u64(facts.fingerprint.unwrap_or_default());
            h.write_u8(0xff);
        }
        if rule.key.route {
            h.write_u16(facts.route);
        }
    });
    Ctx::address(hash, pages)
}
