//! Token-bucket rate limits per client IP, user, route and their
//! combinations, with escalating cooldowns (bans) for keys that keep
//! exceeding a rule.
//!
//! Threat: credential stuffing, scraping and flooding from one source, and
//! attempts to dodge a limit by spreading over worker threads or by flooding
//! the state table. Every bucket lives in a shared-data slot page (see
//! `slots`), updated by compare-and-swap, so a limit holds exactly across
//! workers; a full table sends unplaced keys to a shared overflow bucket.
//!
//! Buckets refilling over time use GCRA: the state is the "theoretical
//! arrival time" (microseconds) at which the bucket would be full again,
//! exact with integer math however often it is read. Buckets that never
//! refill count the requests they let through.

use crate::core::cluster::Scope;
use crate::core::country::CountrySet;
use crate::core::metrics::Metrics;
use crate::core::mode::{string_enum, Mode};
use crate::core::routes::RouteId;
use crate::core::verdict::Quota;
use crate::state::host::{SharedStore, StoreError};
use crate::state::slots::{self, Address, Page, Record, Tenant};
use std::hash::Hasher;

/// Which requests take a token from a rule's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counts {
    /// Every request the rule applies to.
    #[default]
    Requests,
    /// Only requests refused by authentication, authorization or signature
    /// verification; while the bucket is empty (or the key banned) every
    /// request of the key is refused before any of that verification runs.
    Failures,
    /// Only logins the upstream answered with a failure status (`login`
    /// section); while the bucket is empty (or the key banned) every login
    /// of the key is refused before it reaches the upstream.
    FailedLogins,
    /// Only logins naming a username the key did not try within the
    /// rule's window (the time to refill the whole bucket): how many
    /// different users one client tries.
    Usernames,
    /// Only requests from a network (address prefix) new to the key within
    /// the rule's window: how many networks use one token.
    Networks,
    /// Only requests from a client fingerprint new to the key within the
    /// rule's window: how many client programs use one token.
    Fingerprints,
}

string_enum!(Counts, "\"requests\", \"failures\", \"failed_logins\", \"usernames\", \"networks\" or \"fingerprints\"", {
    "requests" => Counts::Requests,
    "failures" => Counts::Failures,
    "failed_logins" => Counts::FailedLogins,
    "usernames" => Counts::Usernames,
    "networks" => Counts::Networks,
    "fingerprints" => Counts::Fingerprints,
});

impl Counts {
    /// Rules that count distinct things a key shows (usernames it tries,
    /// networks and fingerprints it comes from), not requests.
    pub fn distinct(self) -> bool {
        matches!(
            self,
            Counts::Usernames | Counts::Networks | Counts::Fingerprints
        )
    }
}

/// Escalating cooldowns for keys that keep exceeding a rule with `ban: true`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanPolicy {
    pub mode: Mode,
    pub after: u32,
    pub base_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub decay_ms: u64,
    /// `global`: a ban issued on one replica is published to the
    /// rate-limit service, and every replica checks it there.
    pub scope: Scope,
    /// With `global`, [`BanPolicy::lengths_ms`], computed once: a request
    /// looks at each of them.
    pub global_lengths_ms: Vec<u64>,
}

/// Which request attributes make up a rule's key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySpec {
    pub ip: bool,
    pub user: bool,
    pub route: bool,
    /// The verified request-signature key id.
    pub key_id: bool,
    /// The client fingerprint (bot stage): what the request's headers and
    /// TLS hello show, whatever address it comes from.
    pub fingerprint: bool,
    /// The username a login names (`login` section), as a keyed hash.
    pub username: bool,
    /// The verified bearer token, as a keyed hash.
    pub token: bool,
    /// The device identity of the client certificate (`mtls`).
    pub device: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub tokens: u32,
    pub every_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub index: u8,
    pub key: KeySpec,
    /// Indexed by route id: whether the rule applies to that route class.
    applies: Vec<bool>,
    pub capacity: u32,
    pub refill: Option<Refill>,
    pub ban: bool,
    pub counts: Counts,
    /// The countries (`geo`) whose requests the rule applies to; `None`: all.
    pub countries: Option<CountrySet>,
    /// Tokens a worker takes at once while the bucket has plenty, spending
    /// the spare ones without a shared-data round trip (1: no reservation).
    pub reserve: u32,
    /// Local, or also counted by the rate-limit service (`global`).
    pub scope: Scope,
    /// Microseconds per token; `None` when the bucket never refills.
    interval_us: Option<u64>,
    /// Stamp of `capacity` and `refill` kept in the records (never 0).
    limits_stamp: u16,
    /// A hash of `name`, which sets the rule's records apart from other
    /// rules' records of the same client (see `stages::limits`). Stable
    /// across processes: records outlive a reload, and follow the name.
    pub name_salt: u64,
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    pub state: u64,
    pub remaining: u64,
    /// Allowed: µs until the bucket is full again. Refused: µs until the next
    /// token. `None` for buckets that never refill.
    pub wait_us: Option<u64>,
}

/// A rate-limit record's `last_violation_ms` holds the time in its low 48
/// bits (until the year 10889) and the stamp of the limits its bucket state
/// was written under in its top 16 (0: unknown).
const TIME_MASK: u64 = (1 << 48) - 1;

fn violation_ms(record: &Record) -> u64 {
    record.last_violation_ms & TIME_MASK
}

fn set_violation_ms(record: &mut Record, ms: u64) {
    record.last_violation_ms = (record.last_violation_ms & !TIME_MASK) | ms.min(TIME_MASK);
}

fn limits_of(record: &Record) -> u16 {
    (record.last_violation_ms >> 48) as u16
}

fn set_limits(record: &mut Record, stamp: u16) {
    record.last_violation_ms = violation_ms(record) | (u64::from(stamp) << 48);
}

/// A bucket's state only means something under the limits it was written
/// with; the stamp tells them apart (a change has a 1 in 65,535 chance of
/// keeping the old state, which then drains or refills under the new
/// limits). Stable across processes: records outlive a reload.
fn limits_stamp(capacity: u32, refill: Option<Refill>) -> u16 {
    let (tokens, every_ms) = refill.map_or((0, 0), |r| (r.tokens, r.every_ms));
    let mut z = u64::from(capacity) ^ u64::from(tokens).rotate_left(32) ^ every_ms.rotate_left(17);
    // splitmix64's finalizer: every input bit reaches the low 16.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as u16).max(1)
}

fn ceil_seconds(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

impl Rule {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        index: u8,
        key: KeySpec,
        applies_to: Option<Vec<RouteId>>,
        route_count: usize,
        capacity: u32,
        refill: Option<Refill>,
        ban: bool,
    ) -> Rule {
        let applies = match applies_to {
            None => vec![true; route_count],
            Some(ids) => (0..route_count)
                .map(|id| ids.iter().any(|r| usize::from(*r) == id))
                .collect(),
        };
        let interval_us =
            refill.map(|r| (r.every_ms.saturating_mul(1000) / u64::from(r.tokens)).max(1));
        Rule {
            index,
            key,
            applies,
            capacity,
            refill,
            ban,
            counts: Counts::Requests,
            countries: None,
            reserve: 1,
            scope: Scope::Local,
            interval_us,
            limits_stamp: limits_stamp(capacity, refill),
            name_salt: {
                let mut h = siphasher::sip::SipHasher13::new();
                h.write(name.as_bytes());
                h.finish()
            },
            name,
        }
    }

    pub fn counting(self, counts: Counts) -> Rule {
        Rule { counts, ..self }
    }

    pub fn in_countries(self, countries: Option<CountrySet>) -> Rule {
        Rule { countries, ..self }
    }

    pub fn scoped(self, scope: Scope) -> Rule {
        Rule { scope, ..self }
    }

    pub fn reserving(self, reserve: u32) -> Rule {
        Rule {
            reserve: reserve.max(1),
            ..self
        }
    }

    /// Rules keyed on the user or the signing key run after authentication,
    /// the others before it, so that a flooding or banned client costs no
    /// cryptography.
    pub fn post_auth(&self) -> bool {
        self.key.user || self.key.key_id || self.key.token
    }

    pub fn applies_to(&self, route: RouteId) -> bool {
        self.applies
            .get(usize::from(route))
            .copied()
            .unwrap_or(false)
    }

    /// Milliseconds to refill the whole capacity; `None` when it never refills.
    pub fn window_ms(&self) -> Option<u64> {
        self.interval_us.map(|i| self.burst_us(i).div_ceil(1000))
    }

    /// µs to refill the whole capacity.
    fn burst_us(&self, interval_us: u64) -> u64 {
        interval_us.saturating_mul(u64::from(self.capacity))
    }

    /// Whether a bucket in `state` is full, i.e. remembers nothing.
    pub fn is_full(&self, state: u64, now_us: u64) -> bool {
        match self.interval_us {
            Some(_) => state <= now_us,
            None => state == 0,
        }
    }

    /// The state of a bucket in `state` with no token left now, if it
    /// has one; `None` for a bucket that never refills (no window to wait).
    pub fn emptied(&self, state: u64, now_us: u64) -> Option<u64> {
        let empty = now_us.saturating_add(self.burst_us(self.interval_us?));
        (state < empty).then_some(empty)
    }

    /// Takes one token from a bucket in `state`.
    pub fn take(&self, state: u64, now_us: u64) -> Take {
        self.take_many(state, now_us, 1)
    }

    /// Takes `n` tokens (at least 1) at once, or none.
    pub fn take_many(&self, state: u64, now_us: u64, n: u32) -> Take {
        let n = u64::from(n.max(1));
        let Some(interval) = self.interval_us else {
            let used = state;
            let capacity = u64::from(self.capacity);
            return if used.saturating_add(n) <= capacity {
                Take {
                    allowed: true,
                    state: used + n,
                    remaining: capacity - used - n,
                    wait_us: None,
                }
            } else {
                Take {
                    allowed: false,
                    state,
                    remaining: 0,
                    wait_us: None,
                }
            };
        };
        let burst = self.burst_us(interval);
        // A bucket is never emptier than "empty now": after the wall clock
        // steps back, a stored arrival time far ahead would otherwise refuse
        // the key for as long as the step.
        let state = state.min(now_us.saturating_add(burst));
        let next = state.max(now_us).saturating_add(interval.saturating_mul(n));
        let ahead = next - now_us;
        if ahead <= burst {
            Take {
                allowed: true,
                state: next,
                remaining: (burst - ahead) / interval,
                wait_us: Some(ahead),
            }
        } else {
            Take {
                allowed: false,
                state,
                remaining: 0,
                wait_us: Some(ahead - burst),
            }
        }
    }

    pub fn quota(&self, take: &Take) -> Quota {
        Quota {
            rule: self.index,
            capacity: self.capacity,
            window_s: self.interval_us.map(|i| ceil_seconds(self.burst_us(i))),
            remaining: take.remaining,
            reset_s: take.wait_us.map(ceil_seconds),
        }
    }
}

/// Most distinct ban lengths a `global` ban table may have: each is one
/// descriptor a request checks.
pub const MAX_GLOBAL_BAN_LENGTHS: usize = 16;

impl BanPolicy {
    /// The lengths a ban can have (ms), shortest first: level 1, 2, ...
    /// until `max`. A global ban is a counter whose window is its length,
    /// so a replica checks one per length.
    pub fn lengths_ms(&self) -> Vec<u64> {
        let mut lengths: Vec<u64> = Vec::new();
        for level in 1..=63u8 {
            let ms = self.duration_ms(level);
            if lengths.last() != Some(&ms) {
                lengths.push(ms);
            }
            if ms >= self.max_ms || lengths.len() > MAX_GLOBAL_BAN_LENGTHS {
                break;
            }
        }
        lengths
    }

    /// Cooldown for the `level`-th ban in a row: base × factor^(level−1), capped.
    pub fn duration_ms(&self, level: u8) -> u64 {
        let exponent = i32::from(level.max(1)) - 1;
        let ms = self.base_ms as f64 * self.factor.powi(exponent);
        if ms.is_finite() && ms < self.max_ms as f64 {
            ms as u64
        } else {
            self.max_ms
        }
    }

    /// Level and strikes of `record` at `now_ms` once good behaviour is
    /// accounted for: one level less per `decay` since the last violation or
    /// the end of the last ban, whichever is later; strikes are forgotten
    /// after one `decay` without a violation.
    pub fn decayed(&self, record: &Record, now_ms: u64) -> (u8, u16) {
        // A violation "in the future" (the wall clock stepped back) counts
        // as now: strikes and levels then decay from now, not from then.
        let last_violation_ms = violation_ms(record).min(now_ms);
        let anchor = last_violation_ms.max(record.banned_until_ms);
        let level = if now_ms > anchor {
            let periods = (now_ms - anchor) / self.decay_ms;
            record
                .level
                .saturating_sub(u8::try_from(periods).unwrap_or(u8::MAX))
        } else {
            record.level
        };
        let strikes = if now_ms - last_violation_ms >= self.decay_ms {
            0
        } else {
            record.strikes
        };
        (level, strikes)
    }

    /// Records one violation; returns whether it started a ban.
    pub fn strike(&self, record: &mut Record, now_ms: u64) -> bool {
        let (level, strikes) = self.decayed(record, now_ms);
        record.level = level;
        record.strikes = strikes.saturating_add(1);
        set_violation_ms(record, now_ms);
        if u32::from(record.strikes) < self.after {
            return false;
        }
        record.level = level.saturating_add(1).min(63);
        record.banned_until_ms = now_ms.saturating_add(self.duration_ms(record.level));
        record.strikes = 0;
        true
    }
}

/// Whether a check takes a token or only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Take,
    /// Takes this many tokens at once when the bucket keeps at least as
    /// many after, else one, like `Take` (a rule's `reserve`).
    Batch(u32),
    /// Refuses (and strikes) when the bucket is empty, writes nothing when it
    /// is not: how a `failures` rule guards a request before verification.
    Peek,
    /// Refuses only while the key is banned: how a `usernames` rule guards
    /// a login before its username is known (an empty bucket only refuses
    /// a username the key has not tried).
    BanOnly,
    /// Another authority refused the request (the rate-limit service of a
    /// global rule): one violation toward a ban, and the bucket is emptied,
    /// so the key's next requests here are refused without asking until a
    /// token comes back.
    Strike,
    /// Another replica banned the key, for this many more ms: the ban is
    /// kept here too, so its next requests are refused without asking.
    BannedFor(u64),
}

/// What one rule says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    Allowed(Quota),
    /// Allowed, and `spare` more tokens were taken for this worker to
    /// spend on the key's next requests ([`Charge::Batch`]).
    Reserved {
        quota: Quota,
        spare: u32,
    },
    Throttled {
        quota: Quota,
        retry_after_s: Option<u64>,
        /// The key had no slot and went through the overflow bucket.
        overflow: bool,
        /// The length (ms) of the ban this violation started, if it did.
        ban_ms: Option<u64>,
    },
    Banned {
        retry_after_s: u64,
    },
}

fn seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

/// Shifts a record's times back by how far the wall clock stepped back
/// since the record was written, so that a bucket keeps its fill level and
/// a ban its remaining time instead of lasting as long as the step. Stamps
/// the record with `now`; returns whether it shifted (the record must then
/// be written, or the next read would shift it again from the old stamp).
fn rebase(record: &mut Record, rule: &Rule, now_ms: u64) -> bool {
    let written_ms = u64::from(record.updated_s).saturating_mul(1000);
    // The stamp is rounded down to whole seconds, so with a steady clock it
    // is never ahead of now.
    let step_ms = written_ms.saturating_sub(now_ms);
    if step_ms > 0 {
        let back = |t: u64| if t == 0 { 0 } else { t.saturating_sub(step_ms) };
        if rule.interval_us.is_some() {
            record.state = record.state.saturating_sub(step_ms.saturating_mul(1000));
        }
        record.banned_until_ms = back(record.banned_until_ms);
        set_violation_ms(record, back(violation_ms(record)));
    }
    record.updated_s = seconds(now_ms);
    step_ms > 0
}

/// Everything needed to judge records of any rule (a slot may hold another
/// rule's record, and only its own rule knows whether it is reclaimable).
pub struct Limiter<'a> {
    pub rules: &'a [Rule],
    pub bans: &'a BanPolicy,
    pub store: &'a dyn SharedStore,
    pub metrics: &'a dyn Metrics,
    /// Tokens a request takes: 1, or the route class's `tighten_by` while
    /// an anomaly lasts on it (every limit divided by it).
    pub cost: u32,
}

impl Tenant for Limiter<'_> {
    fn reclaimable(&self, record: &Record, now_ms: u64) -> bool {
        let Some(owner) = self.rules.get(usize::from(record.rule)) else {
            return true;
        };
        record.banned_until_ms <= now_ms
            && owner.is_full(record.state, now_ms.saturating_mul(1000))
            && self.bans.decayed(record, now_ms) == (0, 0)
    }

    /// The latest of: bucket full again, ban over, level and strikes decayed.
    fn settles_at(&self, record: &Record) -> u64 {
        let Some(owner) = self.rules.get(usize::from(record.rule)) else {
            return 0;
        };
        let full = match owner.interval_us {
            Some(_) => record.state.div_ceil(1000),
            None if record.state == 0 => 0,
            None => return u64::MAX,
        };
        let level = if record.level > 0 {
            violation_ms(record)
                .max(record.banned_until_ms)
                .saturating_add(u64::from(record.level).saturating_mul(self.bans.decay_ms))
        } else {
            0
        };
        let strikes = if record.strikes > 0 {
            violation_ms(record).saturating_add(self.bans.decay_ms)
        } else {
            0
        };
        full.max(record.banned_until_ms).max(level).max(strikes)
    }
}

impl Limiter<'_> {
    /// Applies `rule` to the client at `addr`.
    pub fn check(
        &self,
        rule: &Rule,
        addr: Address,
        now_ms: u64,
        charge: Charge,
    ) -> Result<RuleOutcome, StoreError> {
        let now_us = now_ms.saturating_mul(1000);
        let placed = slots::upsert(
            self.store,
            self.metrics,
            slots::RATE_LIMITS,
            addr,
            now_ms,
            self,
            |record| self.apply(rule, record, now_ms, charge),
        )?;
        match placed {
            Some(outcome) => Ok(outcome),
            None => self.check_overflow(rule, now_us, charge),
        }
    }

    /// [`Limiter::check`] of several rules of one client, whose records
    /// share a home page, in one round trip (see
    /// [`slots::upsert_on_home`]). In order; once `stops` says an outcome
    /// ends the request, the rules after it are not charged (`None`).
    /// `None` as a whole when one record is not on the home page (spilled,
    /// or no room there): nothing was charged, check the rules one by one.
    pub fn check_on_home(
        &self,
        rules: &[(&Rule, Address, Charge)],
        now_ms: u64,
        stops: impl Fn(&Rule, &RuleOutcome) -> bool,
    ) -> Result<Option<Vec<Option<RuleOutcome>>>, StoreError> {
        let addrs: Vec<Address> = rules.iter().map(|(_, addr, _)| *addr).collect();
        let mut stopped = false;
        slots::upsert_on_home(
            self.store,
            self.metrics,
            slots::RATE_LIMITS,
            &addrs,
            now_ms,
            self,
            |n, record| {
                // Each attempt runs the rules from the first.
                if n == 0 {
                    stopped = false;
                }
                let Some((rule, _, charge)) = rules.get(n).filter(|_| !stopped) else {
                    return (false, None);
                };
                let (write, outcome) = self.apply(rule, record, now_ms, *charge);
                stopped = stops(rule, &outcome);
                (write, Some(outcome))
            },
        )
    }

    /// `rule` charged on its client's record: whether the record changed,
    /// and the outcome.
    fn apply(
        &self,
        rule: &Rule,
        record: &mut Record,
        now_ms: u64,
        charge: Charge,
    ) -> (bool, RuleOutcome) {
        // The rule index follows reloads that reorder rules.
        record.rule = rule.index;
        let mut write = rebase(record, rule, now_ms);
        if limits_of(record) != rule.limits_stamp {
            // Limits changed by a reload (or a record of an older build):
            // a fresh bucket; ban, level and strikes stay.
            write |= record.state != 0;
            record.state = 0;
            set_limits(record, rule.limits_stamp);
        }
        let outcome = self.judge(rule, record, &mut write, now_ms, charge);
        (write, outcome)
    }

    /// The rule's verdict on one placed record; sets `write` when the
    /// record changed.
    fn judge(
        &self,
        rule: &Rule,
        record: &mut Record,
        write: &mut bool,
        now_ms: u64,
        charge: Charge,
    ) -> RuleOutcome {
        if let Charge::BannedFor(left_ms) = charge {
            let until = now_ms.saturating_add(left_ms);
            if until > record.banned_until_ms {
                record.banned_until_ms = until;
                // The level whose length covers it, so the safety net
                // below keeps it whole.
                while record.level < 63 && self.bans.duration_ms(record.level) < left_ms {
                    record.level += 1;
                }
                *write = true;
            }
        }
        if record.banned_until_ms > now_ms {
            // A ban never outlasts its level's length from now (a safety net
            // behind `rebase` for records written without a time stamp).
            let longest = self.bans.duration_ms(record.level);
            if record.banned_until_ms - now_ms > longest {
                record.banned_until_ms = now_ms + longest;
                *write = true;
            }
            let left = record.banned_until_ms - now_ms;
            return RuleOutcome::Banned {
                retry_after_s: left.div_ceil(1000).max(1),
            };
        }
        let now_us = now_ms.saturating_mul(1000);
        if charge == Charge::Strike {
            if let Some(empty) = rule.emptied(record.state, now_us) {
                record.state = empty;
                *write = true;
            }
            return RuleOutcome::Throttled {
                quota: rule.quota(&rule.take_many(record.state, now_us, 1)),
                retry_after_s: None,
                overflow: false,
                ban_ms: self.violation(rule, record, write, now_ms),
            };
        }
        if let Charge::Batch(n @ 2..) = charge {
            let batch = rule.take_many(record.state, now_us, n);
            // Only while the bucket has plenty: near its limit every worker
            // takes one token at a time and none is held back.
            if batch.allowed && batch.remaining >= u64::from(n) {
                record.state = batch.state;
                *write = true;
                return RuleOutcome::Reserved {
                    quota: rule.quota(&batch),
                    spare: n - 1,
                };
            }
        }
        let take = rule.take_many(record.state, now_us, self.cost);
        let quota = rule.quota(&take);
        if take.allowed || charge == Charge::BanOnly {
            if matches!(charge, Charge::Take | Charge::Batch(_)) {
                record.state = take.state;
                *write = true;
            }
            return RuleOutcome::Allowed(quota);
        }
        RuleOutcome::Throttled {
            quota,
            retry_after_s: take.wait_us.map(|us| ceil_seconds(us).max(1)),
            overflow: false,
            ban_ms: self.violation(rule, record, write, now_ms),
        }
    }

    /// A refusal of `rule`'s key: a strike when the rule bans; the length
    /// (ms) of the ban it started, if it did.
    fn violation(
        &self,
        rule: &Rule,
        record: &mut Record,
        write: &mut bool,
        now_ms: u64,
    ) -> Option<u64> {
        *write |= rule.ban;
        (rule.ban && self.bans.strike(record, now_ms))
            .then(|| record.banned_until_ms.saturating_sub(now_ms))
    }

    /// All keys of `rule` that found no slot share one bucket with the rule's
    /// own limits: a full table throttles newcomers, it never frees them.
    fn check_overflow(
        &self,
        rule: &Rule,
        now_us: u64,
        charge: Charge,
    ) -> Result<RuleOutcome, StoreError> {
        slots::update(
            self.store,
            self.metrics,
            &slots::overflow_key(rule.index),
            |page: &mut Page| {
                let record = &mut page.records[0];
                let take = rule.take_many(record.state, now_us, self.cost);
                let quota = rule.quota(&take);
                let looks = !matches!(charge, Charge::Take | Charge::Batch(_));
                if (take.allowed && looks)
                    || !matches!(charge, Charge::Take | Charge::Batch(_) | Charge::Peek)
                {
                    return (false, RuleOutcome::Allowed(quota));
                }
                if take.allowed {
                    record.state = take.state;
                    record.rule = rule.index;
                    return (true, RuleOutcome::Allowed(quota));
                }
                let outcome = RuleOutcome::Throttled {
                    quota,
                    retry_after_s: take.wait_us.map(|us| ceil_seconds(us).max(1)),
                    overflow: true,
                    ban_ms: None,
                };
                (false, outcome)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod props;
    use crate::core::metrics::MemoryMetrics;
    use crate::core::mode::Mode;
    use crate::state::host::MemoryStore;

    fn rule(capacity: u32, refill: Option<Refill>, ban: bool) -> Rule {
        Rule::new(
            "r".into(),
            0,
            KeySpec {
                ip: true,
                ..KeySpec::default()
            },
            None,
            1,
            capacity,
            refill,
            ban,
        )
    }

    fn bans(after: u32) -> BanPolicy {
        BanPolicy {
            mode: Mode::Enforce,
            after,
            base_ms: 1_000,
            factor: 2.0,
            max_ms: 8_000,
            decay_ms: 10_000,
            scope: Scope::Local,
            global_lengths_ms: Vec::new(),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_batch_is_taken_whole_or_not_at_all() {
        let refilling = rule(
            10,
            Some(Refill {
                tokens: 10,
                every_ms: 10_000,
            }),
            false,
        );
        let never = rule(10, None, false);
        let now = T0 * 1000;
        for r in [&refilling, &never] {
            let batch = r.take_many(0, now, 8);
            assert!(batch.allowed);
            assert_eq!(batch.remaining, 2);
            assert!(!r.take_many(batch.state, now, 3).allowed, "3 of 2 left");
            let two = r.take_many(batch.state, now, 2);
            assert!(two.allowed);
            assert_eq!(two.remaining, 0);
            assert_eq!(r.take(0, now).state, r.take_many(0, now, 1).state);
        }
        // Refilled at one token a second: 3 s later a batch of 3 fits again.
        let empty = refilling.take_many(0, now, 10).state;
        assert!(!refilling.take_many(empty, now + 2_999_999, 3).allowed);
        assert!(refilling.take_many(empty, now + 3_000_000, 3).allowed);
    }

    #[test]
    fn refilling_bucket_allows_capacity_then_one_per_interval() {
        let r = rule(
            5,
            Some(Refill {
                tokens: 5,
                every_ms: 60_000,
            }),
            false,
        );
        let now = T0 * 1000;
        let mut state = 0;
        for left in (0..5).rev() {
            let t = r.take(state, now);
            assert!(t.allowed);
            assert_eq!(t.remaining, left);
            state = t.state;
        }
        let refused = r.take(state, now);
        assert!(!refused.allowed);
        assert_eq!(refused.wait_us, Some(12_000_000), "one token every 12 s");
        assert_eq!(refused.state, state, "a refusal costs nothing");
        assert!(!r.take(state, now + 11_999_999).allowed);
        assert!(r.take(state, now + 12_000_000).allowed);
        assert!(r.is_full(state, now + 60_000_000));
        assert!(!r.is_full(state, now + 59_999_999));
    }

    #[test]
    fn frequent_reads_do_not_lose_fractional_refill() {
        // 1 token per 3 s, read every millisecond: exactly one token per 3 s.
        let r = rule(
            1,
            Some(Refill {
                tokens: 1,
                every_ms: 3_000,
            }),
            false,
        );
        let mut state = 0;
        let mut allowed = 0;
        for ms in 0..30_000u64 {
            let t = r.take(state, (T0 + ms) * 1000);
            if t.allowed {
                allowed += 1;
                state = t.state;
            }
        }
        assert_eq!(allowed, 10);
    }

    #[test]
    fn bucket_without_refill_counts_down_for_ever() {
        let r = rule(2, None, false);
        let a = r.take(0, 0);
        let b = r.take(a.state, 0);
        let c = r.take(b.state, u64::MAX / 2);
        assert!(a.allowed && b.allowed && !c.allowed);
        assert_eq!(c.wait_us, None);
        assert_eq!(r.quota(&c).window_s, None);
    }

    #[test]
    fn quota_reports_window_and_reset() {
        let r = rule(
            2,
            Some(Refill {
                tokens: 1,
                every_ms: 10_000,
            }),
            false,
        );
        let first = r.take(0, 5);
        let q = r.quota(&first);
        assert_eq!(
            (q.capacity, q.window_s, q.remaining, q.reset_s),
            (2, Some(20), 1, Some(10))
        );
    }

    #[test]
    fn bans_escalate_cap_and_decay() {
        let b = bans(2);
        assert_eq!(
            [1, 2, 3, 4, 5].map(|l| b.duration_ms(l)),
            [1_000, 2_000, 4_000, 8_000, 8_000]
        );
        let mut rec = Record::default();
        assert!(!b.strike(&mut rec, T0));
        assert!(b.strike(&mut rec, T0 + 1), "second strike bans");
        assert_eq!((rec.level, rec.banned_until_ms), (1, T0 + 1 + 1_000));
        assert!(!b.strike(&mut rec, T0 + 2_000));
        assert!(b.strike(&mut rec, T0 + 2_001));
        assert_eq!((rec.level, rec.banned_until_ms), (2, T0 + 2_001 + 2_000));
        // One decay period after the ban ended: level 1; two: level 0.
        let end = rec.banned_until_ms;
        assert_eq!(b.decayed(&rec, end + 9_999), (2, 0));
        assert_eq!(b.decayed(&rec, end + 10_000), (1, 0));
        assert_eq!(b.decayed(&rec, end + 20_000), (0, 0));
        // Strikes alone are forgotten after one decay period.
        let mut fresh = Record::default();
        b.strike(&mut fresh, T0);
        assert_eq!(b.decayed(&fresh, T0 + 9_999), (0, 1));
        assert_eq!(b.decayed(&fresh, T0 + 10_000), (0, 0));
    }

    #[test]
    fn huge_factors_cap_at_max() {
        let b = BanPolicy {
            factor: 100.0,
            ..bans(1)
        };
        assert_eq!(b.duration_ms(63), 8_000);
    }

    fn limiter_fixture(pages: u32) -> (MemoryStore, MemoryMetrics) {
        let store = MemoryStore::new();
        slots::ensure_pages(
            &store,
            (0..pages)
                .map(|i| slots::page_key(slots::RATE_LIMITS, i))
                .chain([slots::overflow_key(0)]),
        )
        .unwrap_or_else(|e| unreachable!("{e:?}"));
        (store, MemoryMetrics::default())
    }

    fn at(tag: u64, home: u32, pages: u32) -> Address {
        Address { tag, home, pages }
    }

    const FULL: u64 = slots::SLOTS_PER_PAGE as u64;

    #[test]
    fn a_full_page_sends_newcomers_to_the_overflow_bucket() {
        let (store, metrics) = limiter_fixture(1);
        let rules = [rule(
            2,
            Some(Refill {
                tokens: 1,
                every_ms: 60_000,
            }),
            false,
        )];
        let b = bans(3);
        let limiter = Limiter {
            rules: &rules,
            bans: &b,
            store: &store,
            metrics: &metrics,
            cost: 1,
        };
        let check = |tag, now| limiter.check(&rules[0], at(tag, 0, 1), now, Charge::Take);
        // Each key takes a token: their buckets are not full, so they hold their slots.
        for tag in 1..=FULL {
            assert!(matches!(check(tag, T0), Ok(RuleOutcome::Allowed(_))));
        }
        // Newcomers share the overflow bucket of capacity 2.
        assert!(matches!(check(FULL + 1, T0), Ok(RuleOutcome::Allowed(_))));
        assert!(matches!(check(FULL + 2, T0), Ok(RuleOutcome::Allowed(_))));
        assert!(matches!(
            check(FULL + 3, T0),
            Ok(RuleOutcome::Throttled { overflow: true, .. })
        ));
        // Key 1 kept its half-empty bucket: one more token, then throttled.
        assert!(matches!(check(1, T0), Ok(RuleOutcome::Allowed(_))));
        assert!(matches!(
            check(1, T0),
            Ok(RuleOutcome::Throttled {
                overflow: false,
                ..
            })
        ));
        // Once buckets are full again, slots are reclaimed.
        assert!(matches!(
            check(FULL + 4, T0 + 120_000),
            Ok(RuleOutcome::Allowed(_))
        ));
    }

    /// One token a second.
    fn per_second(ban: bool) -> Rule {
        rule(
            1,
            Some(Refill {
                tokens: 1,
                every_ms: 1_000,
            }),
            ban,
        )
    }

    /// Bans at the first violation, for an hour.
    fn hour_bans() -> BanPolicy {
        BanPolicy {
            base_ms: 3_600_000,
            max_ms: 3_600_000,
            ..bans(1)
        }
    }

    #[test]
    fn a_banned_key_keeps_its_slot_through_a_flood() {
        let (store, metrics) = limiter_fixture(4);
        let rules = [per_second(true)];
        let b = hour_bans();
        let limiter = Limiter {
            rules: &rules,
            bans: &b,
            store: &store,
            metrics: &metrics,
            cost: 1,
        };
        assert!(matches!(
            limiter.check(&rules[0], at(1, 0, 4), T0, Charge::Take),
            Ok(RuleOutcome::Allowed(_))
        ));
        assert!(matches!(
            limiter.check(&rules[0], at(1, 0, 4), T0, Charge::Take),
            Ok(RuleOutcome::Throttled {
                ban_ms: Some(_),
                ..
            })
        ));
        // Newcomers on every page, spilling to alternates while they can.
        for tag in 2..10_000u64 {
            let _ = limiter.check(
                &rules[0],
                at(tag, (tag % 4) as u32, 4),
                T0 + tag,
                Charge::Take,
            );
        }
        assert!(matches!(
            limiter.check(&rules[0], at(1, 0, 4), T0 + 20_000, Charge::Take),
            Ok(RuleOutcome::Banned { retry_after_s }) if retry_after_s > 3_500
        ));
        assert_eq!(
            store.key_count(),
            5,
            "four pages and one overflow bucket, whatever the traffic"
        );
    }

    #[test]
    fn a_spilled_key_keeps_its_ban_when_its_home_page_frees_a_slot() {
        let (store, metrics) = limiter_fixture(2);
        // Rule 0 refills within a second; rule 1 bans for an hour.
        let rules = [
            per_second(false),
            Rule {
                index: 1,
                ..per_second(true)
            },
        ];
        let b = hour_bans();
        let limiter = Limiter {
            rules: &rules,
            bans: &b,
            store: &store,
            metrics: &metrics,
            cost: 1,
        };
        for tag in 1..=FULL {
            assert!(matches!(
                limiter.check(&rules[0], at(tag, 0, 2), T0, Charge::Take),
                Ok(RuleOutcome::Allowed(_))
            ));
        }
        let spilled = at(99, 0, 2);
        assert!(matches!(
            limiter.check(&rules[1], spilled, T0, Charge::Take),
            Ok(RuleOutcome::Allowed(_))
        ));
        assert!(matches!(
            limiter.check(&rules[1], spilled, T0, Charge::Take),
            Ok(RuleOutcome::Throttled {
                ban_ms: Some(_),
                ..
            })
        ));
        let home = store
            .get(&slots::page_key(slots::RATE_LIMITS, 0))
            .ok()
            .flatten()
            .map(|(b, _)| Page::decode(&b))
            .unwrap_or_default();
        assert!(
            home.records.iter().all(|r| r.tag != 99),
            "the key spilled to its alternate"
        );
        // A minute later every record on the home page is reclaimable: the
        // key must still be found where it lives, not start afresh at home.
        assert!(matches!(
            limiter.check(&rules[1], spilled, T0 + 60_000, Charge::Take),
            Ok(RuleOutcome::Banned { retry_after_s }) if retry_after_s > 3_500
        ));
        // A newcomer takes a home slot; the banned key is still banned.
        assert!(matches!(
            limiter.check(&rules[0], at(500, 0, 2), T0 + 60_000, Charge::Take),
            Ok(RuleOutcome::Allowed(_))
        ));
        assert!(matches!(
            limiter.check(&rules[1], spilled, T0 + 61_000, Charge::Take),
            Ok(RuleOutcome::Banned { .. })
        ));
        let tagged: usize = (0..2)
            .filter_map(|i| {
                store
                    .get(&slots::page_key(slots::RATE_LIMITS, i))
                    .ok()
                    .flatten()
            })
            .map(|(b, _)| {
                Page::decode(&b)
                    .records
                    .iter()
                    .filter(|r| r.tag == 99)
                    .count()
            })
            .sum();
        assert_eq!(tagged, 1, "one record for the key");
    }

    #[test]
    fn new_limits_start_a_fresh_bucket_but_keep_the_ban_and_strikes() {
        let (store, metrics) = limiter_fixture(1);
        let b = BanPolicy {
            after: 2,
            ..hour_bans()
        };
        let check = |rule: &Rule, key: u64, now: u64| {
            let rules = [rule.clone()];
            let limiter = Limiter {
                rules: &rules,
                bans: &b,
                store: &store,
                metrics: &metrics,
                cost: 1,
            };
            limiter.check(rule, at(key, 0, 1), now, Charge::Take)
        };
        let hourly = |capacity| {
            rule(
                capacity,
                Some(Refill {
                    tokens: 1,
                    every_ms: 3_600_000,
                }),
                true,
            )
        };
        let (before, after) = (hourly(1), hourly(2));
        // Key 1 banned, key 2 with an empty bucket and one strike.
        for now in [T0, T0 + 1, T0 + 2] {
            let _ = check(&before, 1, now);
        }
        assert!(matches!(
            check(&before, 1, T0 + 3),
            Ok(RuleOutcome::Banned { .. })
        ));
        let _ = check(&before, 2, T0);
        assert!(matches!(
            check(&before, 2, T0 + 1),
            Ok(RuleOutcome::Throttled { ban_ms: None, .. })
        ));

        // A reload doubles the capacity: the ban holds, the bucket is fresh
        // (two tokens) and the strike still counts towards the next ban.
        assert!(matches!(
            check(&after, 1, T0 + 10),
            Ok(RuleOutcome::Banned { retry_after_s }) if retry_after_s > 3_500
        ));
        for now in [T0 + 10, T0 + 11] {
            assert!(matches!(check(&after, 2, now), Ok(RuleOutcome::Allowed(_))));
        }
        assert!(matches!(
            check(&after, 2, T0 + 12),
            Ok(RuleOutcome::Throttled {
                ban_ms: Some(_),
                ..
            })
        ));
        // Unchanged limits keep the bucket as it is: after the ban, one
        // token has come back in the hour, not a fresh bucket of two.
        let later = T0 + 3_600_020;
        assert!(matches!(
            check(&after, 2, later),
            Ok(RuleOutcome::Allowed(_))
        ));
        assert!(matches!(
            check(&after, 2, later + 1),
            Ok(RuleOutcome::Throttled { .. })
        ));
        assert_ne!(before.limits_stamp, after.limits_stamp);
        assert_eq!(
            after.limits_stamp,
            hourly(2).limits_stamp,
            "stable across builds of a rule"
        );
    }

    #[test]
    fn a_record_settles_exactly_when_it_becomes_reclaimable() {
        let (store, metrics) = limiter_fixture(1);
        let rules = [
            rule(
                3,
                Some(Refill {
                    tokens: 1,
                    every_ms: 7_000,
                }),
                true,
            ),
            rule(3, None, false),
        ];
        let b = bans(2);
        let limiter = Limiter {
            rules: &rules,
            bans: &b,
            store: &store,
            metrics: &metrics,
            cost: 1,
        };
        // Records as a key's requests leave them: a token taken now and
        // then, strikes, bans and their decay.
        let mut record = Record {
            tag: 1,
            ..Record::default()
        };
        let mut seen = 0;
        for step in 0..400u64 {
            let now = T0 + step * 1_300;
            if step % 3 != 2 {
                let take = rules[0].take(record.state, now * 1000);
                if take.allowed {
                    record.state = take.state;
                } else {
                    b.strike(&mut record, now);
                }
            }
            let settles = limiter.settles_at(&record);
            for later in [0, 1, 10_000, 10_000_000] {
                assert!(limiter.reclaimable(&record, settles + later), "{record:?}");
            }
            if settles > 0 {
                assert!(!limiter.reclaimable(&record, settles - 1), "{record:?}");
                seen += 1;
            }
        }
        assert!(seen > 300);
        let counted = Record {
            rule: 1,
            state: 1,
            ..record
        };
        assert_eq!(limiter.settles_at(&counted), u64::MAX, "never refills");
        let orphan = Record { rule: 9, ..record };
        assert_eq!(limiter.settles_at(&orphan), 0, "no such rule");
    }
}
