//! The bans and rate-limit stage: token buckets (GCRA) and escalating bans
//! in shared slot tables ([`buckets`]), the `rate_limits` and `bans`
//! sections ([`config`]), and which rules run in which phase of a request
//! (here).

pub mod buckets;
pub mod config;
pub mod reserve;

use crate::core::cluster::{Counted, Descriptor, Scope};
use crate::core::metrics::Counter;
use crate::core::request::Facts;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Quota, Reason, Stage};
use crate::state::host::StoreError;
use crate::state::replay::{self, Sighting};
use crate::state::slots;
use buckets::{BanPolicy, Charge, Counts, KeySpec, Limiter, Rule, RuleOutcome};
use config::RateLimits;
use reserve::{Held, Next};
use siphasher::sip128::Hash128;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// What a worker keeps of the stage between requests.
#[derive(Default)]
pub struct WorkerState {
    /// Rate-limit tokens this worker took ahead of need (`reserve`).
    pub held: Mutex<Held>,
    /// Bans this worker issued, for the rate-limit service (`bans.scope:
    /// global`), sent on the next tick.
    pub bans_issued: Mutex<Vec<Descriptor>>,
}

impl WorkerState {
    /// The bans issued since the last call, for the service.
    pub fn take_bans(&self) -> Vec<Descriptor> {
        std::mem::take(&mut *lock(&self.bans_issued))
    }
}

/// Locked only around its own use: never across a shared-data call. A
/// poisoned lock (a panic elsewhere) still holds usable state.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// Bans and rate limits of one phase: both read the same slot record; the
/// rules of one client share a page and are charged in one round trip
/// (see [`Clients`]), except for tokens this worker holds (`held`).
#[allow(clippy::too_many_arguments)]
pub fn check(
    phase: Phase,
    limits: &RateLimits,
    bans: &BanPolicy,
    worker: &WorkerState,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
    findings: &mut Vec<Finding>,
    quota: &mut Option<Quota>,
    remote: &mut Vec<Descriptor>,
    cost: u32,
) {
    if limits.rules.is_empty() {
        return;
    }
    let host = ctx.host;
    let limiter = Limiter {
        rules: &limits.rules,
        bans,
        store: host.store,
        metrics: host.metrics,
        cost,
    };
    // After a refusal or an answer, every rule still counts.
    let counts_all = matches!(phase, Phase::Failed | Phase::LoginFailed);
    let stops = |rule: &Rule, outcome: &RuleOutcome| {
        !counts_all && refusal(rule, outcome, limits, bans).is_some_and(|f| f.enforced())
    };
    let mut tally = Tally {
        limits,
        bans,
        worker,
        ctx,
        facts,
        findings,
        quota,
        remote,
        counts_all,
    };
    let mut clients = Clients::default();
    let mut next = 0;
    while let Some(rule) = limits.rules.get(next) {
        next += 1;
        let Some(charge) = due(phase, rule, facts) else {
            continue;
        };
        let (hash, addr) = clients.address(rule, facts, ctx, limits.pages);
        let charge = match charge {
            // Held tokens are one request each: none are spent or taken
            // while requests cost more.
            Charge::Batch(_) if cost > 1 => Charge::Take,
            Charge::Batch(_) if rule.reserve > 1 => {
                let held = tally.held().next(rule.index, addr.tag, rule.reserve);
                match held {
                    Next::Spent(q) => {
                        tally.counted(q);
                        continue;
                    }
                    Next::Take(n) => Charge::Batch(n),
                }
            }
            other => other,
        };
        // Read once per request, and only when shared state is consulted.
        let Some(now_ms) = facts.now_ms(host.clock) else {
            return tally
                .findings
                .push(ctx.host_failure("clock", Stage::RateLimit));
        };
        let charge = match distinct_item(rule.counts, facts) {
            Some(item) if charge == Charge::Take => {
                match is_new_to_key(rule, hash, item, ctx, limits.distinct_pages, now_ms) {
                    Ok(true) => Charge::Take,
                    Ok(false) => Charge::BanOnly,
                    Err(error) => {
                        tally.settle(rule, addr, Err(error));
                        return;
                    }
                }
            }
            _ => charge,
        };
        // The due rules after it of the same client (home page), charged in
        // the same round trip: those that need nothing before it.
        let mut group = Vec::new();
        let mut after = next;
        if same_trip(rule, facts) {
            while let Some(other) = limits.rules.get(after) {
                let Some(other_charge) = due(phase, other, facts) else {
                    after += 1;
                    continue;
                };
                let (_, other_addr) = clients.address(other, facts, ctx, limits.pages);
                if !same_trip(other, facts) || other_addr.home != addr.home {
                    break;
                }
                if group.is_empty() {
                    group.push((rule, addr, charge));
                }
                group.push((other, other_addr, other_charge));
                after += 1;
            }
        }
        if !group.is_empty() {
            match limiter.check_on_home(&group, now_ms, stops) {
                Ok(Some(outcomes)) => {
                    next = after;
                    for (&(rule, addr, _), outcome) in group.iter().zip(outcomes) {
                        // None: a rule before it ended the request.
                        let Some(outcome) = outcome else {
                            return;
                        };
                        if tally.settle(rule, addr, Ok(outcome)) {
                            return;
                        }
                    }
                    continue;
                }
                // As the first rule's failure; the others get their turn.
                Err(error) => {
                    if tally.settle(rule, addr, Err(error)) {
                        return;
                    }
                    continue;
                }
                // One of them is not on the home page: one by one.
                Ok(None) => {}
            }
        }
        if tally.settle(rule, addr, limiter.check(rule, addr, now_ms, charge)) {
            return;
        }
    }
}

/// How `rule` is charged in `phase`, if it applies to the request.
fn due(phase: Phase, rule: &Rule, facts: &Facts<'_>) -> Option<Charge> {
    let charge = match (phase, rule.counts) {
        (Phase::PreAuth, Counts::Requests) if !rule.post_auth() => Charge::Batch(1),
        (Phase::PreAuth, Counts::Failures) => Charge::Peek,
        (Phase::PreAuth, Counts::FailedLogins) if !rule.key.username => Charge::Peek,
        (Phase::PreAuth, Counts::Usernames) => Charge::BanOnly,
        (Phase::PostAuth, Counts::Requests) if rule.post_auth() => Charge::Batch(1),
        (Phase::Failed, Counts::Failures) => Charge::Take,
        // A known client of the user is not held to the user's rules.
        (Phase::Login, Counts::FailedLogins) if rule.key.username && !facts.known_client => {
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
        && !(rule.key.device && facts.device.is_none())
        && rule.countries.is_none_or(|c| c.contains(facts.country));
    applies.then_some(charge)
}

/// What the rules of one phase have come to so far.
struct Tally<'a, 'c> {
    limits: &'a RateLimits,
    bans: &'a BanPolicy,
    worker: &'a WorkerState,
    ctx: &'a Ctx<'c>,
    facts: &'a Facts<'c>,
    findings: &'a mut Vec<Finding>,
    quota: &'a mut Option<Quota>,
    /// The global rules' descriptors, for the service to count.
    remote: &'a mut Vec<Descriptor>,
    counts_all: bool,
}

impl Tally<'_, '_> {
    /// A global rule the local bucket allowed is counted by the service
    /// too: the local bucket is the pre-check, the service the limit. With
    /// global bans, the service is asked whether another replica banned
    /// the key: one look per length a ban can have.
    fn ask_service(&mut self, rule: &Rule) {
        let global_rule = rule.scope == Scope::Global;
        let global_ban = rule.ban && self.bans.scope == Scope::Global;
        if !global_rule && !global_ban {
            return;
        }
        let Some(key) = global_key(rule, self.facts, self.ctx) else {
            return;
        };
        // The bans first: a banned key's answer is the ban, as here.
        if global_ban {
            for &length_ms in &self.bans.global_lengths_ms {
                self.remote.push(ban_descriptor(rule, key, length_ms, true));
            }
        }
        if let (true, Some(window_ms)) = (global_rule, rule.window_ms()) {
            self.remote.push(Descriptor {
                counted: Counted::Rule(rule.index),
                key,
                max: u64::from(rule.capacity),
                window_s: Descriptor::window_from_ms(window_ms),
                check_only: false,
            });
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        lock(&self.worker.held)
    }

    /// The client's quota is that of its tightest rule.
    fn counted(&mut self, q: Quota) {
        if self.quota.is_none_or(|best| q.remaining < best.remaining) {
            *self.quota = Some(q);
        }
    }

    /// Takes in the outcome of `rule`; whether the phase ends with it.
    fn settle(
        &mut self,
        rule: &Rule,
        addr: slots::Address,
        outcome: Result<RuleOutcome, StoreError>,
    ) -> bool {
        let finding = match outcome {
            Ok(RuleOutcome::Allowed(q)) => {
                // A failures rule is no quota of the client's requests.
                if rule.counts == Counts::Requests {
                    self.counted(q);
                }
                self.ask_service(rule);
                return false;
            }
            Ok(RuleOutcome::Reserved { quota: q, spare }) => {
                self.ask_service(rule);
                self.held().keep(rule.index, addr.tag, spare, q);
                // The held tokens are the client's too.
                let remaining = q.remaining.saturating_add(u64::from(spare));
                self.counted(Quota { remaining, ..q });
                return false;
            }
            Ok(outcome) => {
                if let RuleOutcome::Throttled {
                    ban_ms: Some(length_ms),
                    ..
                } = outcome
                {
                    let keys = KeysOf {
                        limits: self.limits,
                        bans: self.bans,
                        worker: self.worker,
                        facts: self.facts,
                        ctx: self.ctx,
                    };
                    keys.banned(rule, length_ms);
                }
                match refusal(rule, &outcome, self.limits, self.bans) {
                    Some(finding) => finding,
                    None => return false,
                }
            }
            Err(error) => Finding {
                rule: Some(rule.index),
                ..self.ctx.store_failure(&rule.name, Stage::RateLimit, error)
            },
        };
        let stop = finding.enforced() || finding.reason == Reason::StoreUnavailable;
        self.findings.push(finding);
        stop && !self.counts_all
    }
}

/// The descriptor of a ban of `rule`'s key lasting `length_ms`: a counter
/// of limit 1 over that window. `look`: whether it is banned; else the ban.
fn ban_descriptor(rule: &Rule, key: u128, length_ms: u64, look: bool) -> Descriptor {
    Descriptor {
        counted: Counted::Ban(rule.index),
        key,
        max: 1,
        window_s: Descriptor::window_from_ms(length_ms),
        check_only: look,
    }
}

/// A request's keys after its phases: what the rate-limit service's answer
/// (global mode) changes of them, and the bans issued meanwhile.
pub struct KeysOf<'a, 'c> {
    pub limits: &'a RateLimits,
    pub bans: &'a BanPolicy,
    pub worker: &'a WorkerState,
    pub facts: &'a Facts<'c>,
    pub ctx: &'a Ctx<'c>,
}

impl KeysOf<'_, '_> {
    /// Counts a ban of `rule`'s key; with global bans, queues it for the
    /// service (sent on the worker's next tick: its length is the window,
    /// so it ends there when it ends here).
    fn banned(&self, rule: &Rule, length_ms: u64) {
        self.ctx
            .host
            .metrics
            .increment(Counter::BanIssued { rule: rule.index });
        if self.bans.scope != Scope::Global {
            return;
        }
        if let Some(key) = global_key(rule, self.facts, self.ctx) {
            lock(&self.worker.bans_issued).push(ban_descriptor(rule, key, length_ms, false));
        }
    }

    /// The rate-limit service refused `rule` for this request (a global
    /// rule): one violation of the key toward a ban, as a local refusal
    /// is, and its local bucket emptied, so that its next requests here
    /// are refused without a call until a token comes back.
    pub fn strike(&self, rule: &Rule) -> Result<(), StoreError> {
        if let Some(RuleOutcome::Throttled {
            ban_ms: Some(length_ms),
            ..
        }) = self.charge(rule, Charge::Strike)?
        {
            self.banned(rule, length_ms);
        }
        Ok(())
    }

    /// Another replica banned `rule`'s key for `left_ms` more (the
    /// service says so): the ban is kept here too, so that the key's next
    /// requests are refused without a call.
    pub fn adopt_ban(&self, rule: &Rule, left_ms: u64) -> Result<(), StoreError> {
        self.charge(rule, Charge::BannedFor(left_ms)).map(|_| ())
    }

    /// `charge` on `rule`'s key; `None` when the clock failed.
    fn charge(&self, rule: &Rule, charge: Charge) -> Result<Option<RuleOutcome>, StoreError> {
        let Some(now_ms) = self.facts.now_ms(self.ctx.host.clock) else {
            return Ok(None);
        };
        let (_, addr) = Clients::default().address(rule, self.facts, self.ctx, self.limits.pages);
        let limiter = Limiter {
            rules: &self.limits.rules,
            bans: self.bans,
            store: self.ctx.host.store,
            metrics: self.ctx.host.metrics,
            cost: 1,
        };
        limiter.check(rule, addr, now_ms, charge).map(Some)
    }
}

/// The finding a ban or an empty bucket of `rule` makes; none for a pass.
fn refusal(
    rule: &Rule,
    outcome: &RuleOutcome,
    limits: &RateLimits,
    bans: &BanPolicy,
) -> Option<Finding> {
    match *outcome {
        RuleOutcome::Allowed(_) | RuleOutcome::Reserved { .. } => None,
        RuleOutcome::Banned { retry_after_s } => Some(Finding {
            rule: Some(rule.index),
            retry_after_s: Some(retry_after_s),
            ..Finding::new(Stage::Bans, Reason::BanActive, bans.mode)
        }),
        RuleOutcome::Throttled {
            quota,
            retry_after_s,
            overflow,
            ..
        } => {
            let reason = if overflow {
                Reason::RateLimitOverflow
            } else {
                exhausted_reason(rule)
            };
            Some(Finding {
                rule: Some(rule.index),
                retry_after_s,
                quota: Some(quota),
                ..Finding::new(Stage::RateLimit, reason, limits.mode)
            })
        }
    }
}

/// Whether `rule` may be charged in the round trip of the rule before it:
/// it holds no tokens of its own (`reserve`) and counts nothing distinct
/// (whose table is read first).
fn same_trip(rule: &Rule, facts: &Facts<'_>) -> bool {
    rule.reserve <= 1 && distinct_item(rule.counts, facts).is_none()
}

/// What an empty bucket of `rule` is called.
pub fn exhausted_reason(rule: &Rule) -> Reason {
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

/// Where the rules of one request find their clients' records. A rule's
/// record has its home page from the client alone (the key without the
/// route) and its tag from the client, the rule's name and the route:
/// every rule keyed on one client keeps its record on one page, and a
/// request charges them in one round trip ([`Limiter::check_on_home`]).
#[derive(Default)]
struct Clients {
    /// The client part last hashed, and its keyed hash: rules of one
    /// client come one after another.
    last: Option<(KeySpec, Hash128)>,
}

impl Clients {
    /// A keyed hash of `rule`'s key for this request, and its address.
    fn address(
        &mut self,
        rule: &Rule,
        facts: &Facts<'_>,
        ctx: &Ctx<'_>,
        pages: u32,
    ) -> (Hash128, slots::Address) {
        let part = KeySpec {
            route: false,
            ..rule.key
        };
        let client = match self.last {
            Some((seen, hash)) if seen == part => hash,
            _ => {
                let hash = client_hash(part, facts, ctx);
                self.last = Some((part, hash));
                hash
            }
        };
        // The client's half of the keyed hash the home page does not use,
        // told apart per rule and route by a bijective mix: as unpredictable
        // as the client hash, and distinct for one client's rules. Not the
        // limits: a reload that changes them keeps the record, its ban and
        // strikes (`Rule::limits_stamp` resets only the bucket).
        let route = if rule.key.route {
            u64::from(facts.route).wrapping_add(1)
        } else {
            0
        };
        let tag =
            slots::spread(client.h1 ^ rule.name_salt ^ route.wrapping_mul(slots::GOLDEN)).max(1);
        let addr = slots::Address {
            tag,
            ..Ctx::address(client, pages)
        };
        (
            Hash128 {
                h1: tag,
                h2: client.h2,
            },
            addr,
        )
    }
}

/// Keyed hash of the client parts of a key (all but the route).
fn client_hash(key: KeySpec, facts: &Facts<'_>, ctx: &Ctx<'_>) -> Hash128 {
    ctx.keyed_hash(|h| write_client(key, facts, h))
}

/// The key of `rule`'s global counter for this request: the rule's name,
/// the route class when keyed on it, and the client parts, hashed the same
/// way on every replica.
fn global_key(rule: &Rule, facts: &Facts<'_>, ctx: &Ctx<'_>) -> Option<u128> {
    ctx.cluster_hash(|h| {
        h.write(rule.name.as_bytes());
        h.write_u8(0xff);
        if rule.key.route {
            h.write_u16(facts.route);
        }
        h.write_u8(0xff);
        write_client(rule.key, facts, h);
    })
}

/// The client parts of a key, into a hash.
fn write_client(key: KeySpec, facts: &Facts<'_>, h: &mut impl Hasher) {
    {
        if key.ip {
            // The address is already cut to its prefix (`client_ip`).
            match facts.ip_key {
                Some(IpAddr::V4(ip)) => h.write(&ip.octets()),
                Some(IpAddr::V6(ip)) => h.write(&ip.octets()),
                None => h.write(b"unknown"),
            }
            h.write_u8(0xff);
        }
        if key.user {
            h.write(facts.user.as_deref().unwrap_or_default());
            h.write_u8(0xff);
        }
        if key.key_id {
            h.write(facts.key_id.as_deref().unwrap_or_default().as_bytes());
            h.write_u8(0xff);
        }
        if key.fingerprint {
            h.write_u64(facts.fingerprint.unwrap_or_default());
            h.write_u8(0xff);
        }
        if key.username {
            h.write_u128(facts.username.unwrap_or_default());
            h.write_u8(0xff);
        }
        if key.token {
            h.write_u128(facts.token.unwrap_or_default());
            h.write_u8(0xff);
        }
        if key.device {
            h.write(facts.device.as_deref().unwrap_or_default().as_bytes());
            h.write_u8(0xff);
        }
    }
}
