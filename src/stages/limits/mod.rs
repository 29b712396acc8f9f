//! The bans and rate-limit stage: token buckets (GCRA) and escalating bans
//! in shared slot tables ([`buckets`]), the `rate_limits` and `bans`
//! sections ([`config`]), and which rules run in which phase of a request
//! (here).

pub mod buckets;
pub mod config;
pub mod reserve;

use crate::core::metrics::Counter;
use crate::core::request::Facts;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Quota, Reason, Stage};
use crate::state::host::StoreError;
use crate::state::replay::{self, Sighting};
use crate::state::slots;
use buckets::{BanPolicy, Charge, Counts, Limiter, Rule, RuleOutcome};
use config::RateLimits;
use reserve::{Held, Next};
use siphasher::sip128::Hash128;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// When a group of rate-limit rules runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any verification: rules keyed on what every request carries.
    PreAuth,
    /// After authentication: rules keyed on the user or the signing key.
    PostAuth,
    /// The request was refused by verification: `failures` rules take a token.
    Failed,
    /// A login's body named its username: `failed_logins` rules keyed on
    /// it look, `usernames` rules take a token for a username new to the key.
    Login,
    /// The upstream answered a login with a failure status:
    /// `failed_logins` rules take a token.
    LoginFailed,
}

/// Bans and rate limits of one phase: both read the same slot record, in
/// one round trip per rule, except for tokens this worker holds (`held`).
#[allow(clippy::too_many_arguments)]
pub fn check(
    phase: Phase,
    limits: &RateLimits,
    bans: &BanPolicy,
    held: &Mutex<Held>,
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
                (Phase::PreAuth, Counts::Requests) if !rule.post_auth() => Charge::Batch(1),
                (Phase::PreAuth, Counts::Failures) => Charge::Peek,
                (Phase::PreAuth, Counts::FailedLogins) if !rule.key.username => Charge::Peek,
                (Phase::PreAuth, Counts::Usernames) => Charge::BanOnly,
                (Phase::PostAuth, Counts::Requests) if rule.post_auth() => Charge::Batch(1),
                (Phase::Failed, Counts::Failures) => Charge::Take,
                // A known client of the user is not held to the user's rules.
                (Phase::Login, Counts::FailedLogins)
                    if rule.key.username && !facts.known_client =>
                {
                    Charge::Peek
                }
                // Take or look: decided by whether the username is new to the key.
                (Phase::Login, Counts::Usernames) if facts.username.is_some() => Charge::Take,
                // The same for the network or fingerprint of a token.
                (Phase::PostAuth, Counts::Networks | Counts::Fingerprints) => Charge::Take,
                (Phase::LoginFailed, Counts::FailedLogins) => Charge::Take,
                _ => return None,
            };
            let applies = rule.applies_to(facts.route)
                && !(rule.key.user && facts.user.is_none())
                && !(rule.key.key_id && facts.key_id.is_none())
                && !(rule.key.username && facts.username.is_none())
                && !(rule.key.token && facts.token.is_none())
                && rule.countries.is_none_or(|c| c.contains(facts.country));
            applies.then_some((rule, charge))
        })
        .peekable();
    if due.peek().is_none() {
        return;
    }
    let limiter = Limiter {
        rules: &limits.rules,
        bans,
        store: host.store,
        metrics: host.metrics,
    };
    // Locked only around its own use: never across a shared-data call.
    let held = || held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let counted = |quota: &mut Option<Quota>, q: Quota| {
        if quota.is_none_or(|best| q.remaining < best.remaining) {
            *quota = Some(q);
        }
    };
    for (rule, charge) in due {
        let hash = key_hash(rule, facts, ctx);
        let addr = Ctx::address(hash, limits.pages);
        let charge = match charge {
            Charge::Batch(_) if rule.reserve > 1 => {
                let next = held().next(rule.index, addr.tag, rule.reserve);
                match next {
                    Next::Spent(q) => {
                        counted(quota, q);
                        continue;
                    }
                    Next::Take(n) => Charge::Batch(n),
                }
            }
            other => other,
        };
        // Read once per request, and only when shared state is consulted.
        let Some(now_ms) = facts.now_ms(host.clock) else {
            return findings.push(ctx.host_failure("clock", Stage::RateLimit));
        };
        let charge = match distinct_item(rule.counts, facts) {
            Some(item) if charge == Charge::Take => {
                match is_new_to_key(rule, hash, item, ctx, limits.distinct_pages, now_ms) {
                    Ok(true) => Charge::Take,
                    Ok(false) => Charge::BanOnly,
                    Err(error) => {
                        findings.push(Finding {
                            rule: Some(rule.index),
                            ..ctx.store_failure(&rule.name, Stage::RateLimit, error)
                        });
                        return;
                    }
                }
            }
            _ => charge,
        };
        let finding = match limiter.check(rule, addr, now_ms, charge) {
            Ok(RuleOutcome::Allowed(q)) => {
                // A failures rule is no quota of the client's requests.
                if rule.counts == Counts::Requests {
                    counted(quota, q);
                }
                continue;
            }
            Ok(RuleOutcome::Reserved { quota: q, spare }) => {
                held().keep(rule.index, addr.tag, spare, q);
                // The held tokens are the client's too.
                let remaining = q.remaining.saturating_add(u64::from(spare));
                counted(quota, Quota { remaining, ..q });
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
                    exhausted_reason(rule)
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
        // After a refusal or an answer, every rule still counts.
        let counts_all = matches!(phase, Phase::Failed | Phase::LoginFailed);
        if stop && !counts_all {
            return;
        }
    }
}

/// What an empty bucket of `rule` is called.
fn exhausted_reason(rule: &Rule) -> Reason {
    match rule.counts {
        Counts::Requests | Counts::Failures => Reason::RateLimitExhausted,
        Counts::Usernames => Reason::LoginDistinctUsers,
        Counts::Networks | Counts::Fingerprints => Reason::TokenShared,
        Counts::FailedLogins if rule.key.username => Reason::LoginFailuresUser,
        Counts::FailedLogins if rule.key.fingerprint && !rule.key.ip => {
            Reason::LoginFailuresFingerprint
        }
        Counts::FailedLogins => Reason::LoginFailuresIp,
    }
}

/// What a rule counting distinct things counts on this request: the
/// username, the network (address prefix) or the fingerprint.
fn distinct_item(counts: Counts, facts: &Facts<'_>) -> Option<u128> {
    match counts {
        Counts::Usernames => facts.username,
        Counts::Networks => Some(match facts.ip_key? {
            IpAddr::V4(ip) => u128::from(ip.to_ipv6_mapped()),
            IpAddr::V6(ip) => u128::from(ip),
        }),
        Counts::Fingerprints => facts.fingerprint.map(u128::from),
        _ => None,
    }
}

/// Whether the key of a rule counting distinct things shows `item` for the
/// first time within the rule's window (the time to refill its whole
/// bucket; at most 30 days for a bucket that never refills). The pair is
/// remembered in the distinct table; a full table counts the item as new,
/// so a flood of pairs cannot hide a spraying client or a shared token.
fn is_new_to_key(
    rule: &Rule,
    key: Hash128,
    item: u128,
    ctx: &Ctx<'_>,
    pages: u32,
    now_ms: u64,
) -> Result<bool, StoreError> {
    const LONGEST_MS: u64 = 30 * 24 * 3_600_000;
    let pair = ctx.keyed_hash(|h| {
        h.write(b"seen");
        h.write_u128(key.as_u128());
        h.write_u128(item);
    });
    let window = rule.window_ms().unwrap_or(LONGEST_MS).min(LONGEST_MS);
    let sighting = replay::remember(
        ctx.host.store,
        ctx.host.metrics,
        slots::SEEN,
        Ctx::address(pair, pages),
        now_ms.saturating_add(window),
        now_ms,
    )?;
    Ok(sighting != Sighting::Replay)
}

/// Keyed hash of the rule's key for this request (its slot address).
fn key_hash(rule: &Rule, facts: &Facts<'_>, ctx: &Ctx<'_>) -> Hash128 {
    ctx.keyed_hash(|h| {
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
        if rule.key.username {
            h.write_u128(facts.username.unwrap_or_default());
            h.write_u8(0xff);
        }
        if rule.key.token {
            h.write_u128(facts.token.unwrap_or_default());
            h.write_u8(0xff);
        }
        if rule.key.route {
            h.write_u16(facts.route);
        }
    })
}
