//! Behavioural bot signals: what a client does over many requests, kept
//! across requests and worker threads in a shared-data slot table (`bh`).
//!
//! Threat: scripted clients that look like browsers request by request
//! (headers, TLS fingerprint) but not over time: they fire on a timer
//! (`machine_timing`), walk id spaces (`sequential_ids`), sweep many
//! distinct paths (`distinct_paths`), or call an endpoint without the steps
//! a real user takes before it (`flow`: checkout without cart). Each signal
//! is a strength in `0.0..=1.0` that the bot score weighs; none of them
//! refuses anything on its own.
//!
//! State: one [`ClientRecord`] per client key (the keyed hash of the
//! behaviour key, see `Ctx::keyed_hash`), packed into the fixed slot
//! [`Record`] (see [`ClientRecord`] for the layout), and one [`FlowMark`]
//! per (client key, `after` route) for flows. Each request costs one get
//! and at most one compare-and-swap of the client's home page, plus one get
//! per distinct `after` route of the flows whose `route` it is on, and one
//! get and at most one compare-and-swap when it is on an `after` route
//! (none when the mark is less than a second old). Requests on routes no
//! flow names touch no flow record.
//!
//! Assumptions:
//! - Every record carries nothing once it is older than its window (client
//!   records: `window` of silence; flow marks: the longest `within` of the
//!   flows naming the route), so the table holds the clients active within
//!   one window; a client that finds no slot (table full of live records)
//!   gets all-zero behavioural signals and [`Observed::untracked`]. That is
//!   fail-open for scoring only: rate limits, bans and the other stages
//!   still apply, and filling the table takes as many live client keys as
//!   it has slots. Raise `bot.behaviour.slots` when it happens.
//! - Clock: Envoy's wall clock, which may step. A request more than
//!   [`BURST_MS`] earlier than the client's last one means the clock stepped
//!   back: the timing statistics start afresh (the gap across a step is
//!   unknown), the id run is kept (it does not depend on time), the path
//!   sketch restarts when the window changes; a record last seen more than
//!   a window ahead is forgotten (and reclaimable, so records written
//!   before a long step do not squat slots for as long as the step). A flow
//!   mark in the future counts as made now. Records keep their own times in
//!   milliseconds, so steps are told from them rather than from
//!   `updated_s` (whole seconds), which is stamped on every write as the
//!   slot table's contract asks; nothing divides by a gap or a mean that
//!   may be 0, and all time arithmetic saturates.
//! - Concurrency: requests of one client reach several workers at once,
//!   and their clock readings may be out of order by a few milliseconds;
//!   gaps within ±[`BURST_MS`] are bursts, never samples and never steps.
//! - Hashes: the path sketch and flow marks are keyed with the client's
//!   keyed hash, so a client cannot aim paths at one sketch bit nor predict
//!   where another client's records live.

#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{err, slot_pages, ConfigError};
use crate::core::duration::Millis;
use crate::core::routes::{RouteId, RouteTable};
use crate::core::stage::Ctx;
use crate::state::host::{CasRetries, SharedStore, StoreError};
use crate::state::slots::{self, Record, Tenant};
use serde::Deserialize;
use siphasher::sip128::{Hash128, Hasher128, SipHasher13};
use std::hash::Hasher;

/// The behaviour table: pages `palisade.bh.p.<n>`.
pub const TABLE: &str = "bh";

pub const DEFAULT_SLOTS: u32 = 16_384;
pub const DEFAULT_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_MIN_SAMPLES: u8 = 8;
pub const DEFAULT_MAX_JITTER: f64 = 0.1;
pub const DEFAULT_MAX_STEP: u32 = 3;
pub const DEFAULT_MIN_RUN: u8 = 5;
pub const DEFAULT_MAX_DISTINCT: u32 = 30;
/// At most this many flow rules.
pub const MAX_FLOWS: usize = 16;

/// Shortest window: gaps must be able to exceed a burst many times over.
const MIN_WINDOW_MS: u64 = 1_000;
const MAX_MIN_SAMPLES: u8 = 100;
const MAX_STEP_LIMIT: u32 = 1_000;
const MAX_MIN_RUN: u8 = 254;
/// A 64-bit sketch counts distinct paths reliably up to about twice this.
const MAX_MAX_DISTINCT: u32 = 128;

/// Gaps shorter than this (either way) are one burst: a browser loading a
/// page sends its subrequests a few milliseconds apart, and requests of one
/// client on several workers read the clock slightly out of order. They
/// are neither timing samples nor clock steps; the gap after the burst (from
/// its last request) is the sample. A bot firing faster than this on a
/// timer is not seen by `machine_timing`: that is the rate limits' business.
pub const BURST_MS: u64 = 50;
/// Span of the exponentially weighted averages of the timing statistics:
/// the first gaps are averaged plainly, then each new gap weighs 1/8.
const SPAN: u8 = 8;
/// A flow mark younger than this is not rewritten.
const MARK_REFRESH_MS: u64 = 1_000;
/// Fixed point of the stored relative deviation (saturates at 8.0).
const JITTER_ONE: f32 = 8_192.0;
/// `Record::rule` bit of flow marks; client records have it clear.
const FLOW_KIND: u8 = 0x80;
/// Timing samples kept (a count in the low bits of `Record::rule`).
const MAX_SAMPLES: u8 = 0x7f;

// ---------------------------------------------------------------- config

/// `bot.behaviour`: the behavioural signals' table and thresholds.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawBehaviour {
    /// Client records in the shared table (default 16384).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    slots: Option<u32>,
    /// Memory of a client: longer silences forget it (default "60s").
    #[serde(default)]
    window: Option<Millis>,
    /// Gaps seen before timing can look regular (default 8).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 2, max = MAX_MIN_SAMPLES)))]
    min_samples: Option<u8>,
    /// Relative deviation of the gaps below which timing is machine-like
    /// (default 0.1; the signal fades out at twice this).
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))
    )]
    max_jitter: Option<f64>,
    /// Largest id step (either way) that continues a sequential run (default 3).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_STEP_LIMIT)))]
    max_step: Option<u32>,
    /// Sequential steps for full strength (default 5).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_MIN_RUN)))]
    min_run: Option<u8>,
    /// Distinct paths per window for full strength (default 30).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 2, max = MAX_MAX_DISTINCT)))]
    max_distinct: Option<u32>,
}

/// One of `bot.flows`: a request on `route` whose client did not request
/// `after` within `within` before it.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    route: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    after: String,
    within: Millis,
}

/// The compiled `bot.behaviour` and `bot.flows`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Pages of the table (slots / slots per page).
    pub pages: u32,
    pub window_ms: u64,
    pub min_samples: u8,
    pub max_jitter: f32,
    pub max_step: u32,
    pub min_run: u8,
    pub max_distinct: u32,
    /// By route id: the `after` routes (and their `within`, ms) a request
    /// on that route must follow.
    checks: Vec<Vec<(RouteId, u64)>>,
    /// By route id: how long a mark of a request on it is kept (the longest
    /// `within` naming it as `after`); 0 when no flow does.
    keep_ms: Vec<u64>,
}

impl Behaviour {
    /// Every page key of the table, for `slots::ensure_pages` in tests
    /// (a policy's keys come from `Policy::slot_tables`).
    #[cfg(test)]
    fn shared_keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.pages).map(|i| slots::page_key(TABLE, i))
    }

    /// What decides whether one of the table's records is still in use.
    pub fn tenant(&self) -> impl Tenant + '_ {
        Tenancy(self)
    }

    /// Whether any flow rule is configured.
    pub fn has_flows(&self) -> bool {
        self.keep_ms.iter().any(|&k| k > 0)
    }

    fn checks(&self, route: RouteId) -> &[(RouteId, u64)] {
        self.checks
            .get(usize::from(route))
            .map_or(&[], Vec::as_slice)
    }

    fn keep_ms(&self, route: RouteId) -> u64 {
        self.keep_ms.get(usize::from(route)).copied().unwrap_or(0)
    }
}

fn route_id(routes: &RouteTable, name: &str, path: String) -> Result<RouteId, ConfigError> {
    routes.id_of(name).ok_or_else(|| {
        err(
            path,
            format!("no route class named `{name}` (define it under `routes`, or use `default`)"),
        )
    })
}

/// Compiles `bot.behaviour` and `bot.flows`; errors name their JSON path
/// under `path` (`"bot"`).
pub fn compile(
    raw: RawBehaviour,
    flows: Vec<RawFlow>,
    routes: &RouteTable,
    path: &str,
) -> Result<Behaviour, ConfigError> {
    let at = |field: &str| format!("{path}.behaviour.{field}");
    let pages = slot_pages(raw.slots, DEFAULT_SLOTS, &at("slots"))?;
    let window_ms = raw.window.map_or(DEFAULT_WINDOW_MS, Millis::as_ms);
    if window_ms < MIN_WINDOW_MS {
        return Err(err(at("window"), "must be at least 1s"));
    }
    let min_samples = raw.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
    if !(2..=MAX_MIN_SAMPLES).contains(&min_samples) {
        return Err(err(
            at("min_samples"),
            format!("must be between 2 and {MAX_MIN_SAMPLES}"),
        ));
    }
    let max_jitter = raw.max_jitter.unwrap_or(DEFAULT_MAX_JITTER);
    if !(max_jitter.is_finite() && max_jitter > 0.0 && max_jitter < 1.0) {
        return Err(err(
            at("max_jitter"),
            "must be a number greater than 0 and less than 1",
        ));
    }
    let max_step = raw.max_step.unwrap_or(DEFAULT_MAX_STEP);
    if !(1..=MAX_STEP_LIMIT).contains(&max_step) {
        return Err(err(
            at("max_step"),
            format!("must be between 1 and {MAX_STEP_LIMIT}"),
        ));
    }
    let min_run = raw.min_run.unwrap_or(DEFAULT_MIN_RUN);
    if !(1..=MAX_MIN_RUN).contains(&min_run) {
        return Err(err(
            at("min_run"),
            format!("must be between 1 and {MAX_MIN_RUN}"),
        ));
    }
    let max_distinct = raw.max_distinct.unwrap_or(DEFAULT_MAX_DISTINCT);
    if !(2..=MAX_MAX_DISTINCT).contains(&max_distinct) {
        return Err(err(
            at("max_distinct"),
            format!("must be between 2 and {MAX_MAX_DISTINCT} (a 64-bit sketch counts no further)"),
        ));
    }
    if flows.len() > MAX_FLOWS {
        return Err(err(
            format!("{path}.flows"),
            format!("at most {MAX_FLOWS} flows"),
        ));
    }
    let count = routes.len_with_default();
    let mut checks: Vec<Vec<(RouteId, u64)>> = vec![Vec::new(); count];
    let mut keep_ms = vec![0u64; count];
    for (i, flow) in flows.into_iter().enumerate() {
        let at = |field: &str| format!("{path}.flows[{i}].{field}");
        let route = route_id(routes, &flow.route, at("route"))?;
        let after = route_id(routes, &flow.after, at("after"))?;
        if route == after {
            return Err(err(at("after"), "must differ from `route`"));
        }
        let within = flow.within.as_ms();
        let Some(list) = checks.get_mut(usize::from(route)) else {
            continue;
        };
        if list.iter().any(|&(a, _)| a == after) {
            return Err(err(
                format!("{path}.flows[{i}]"),
                format!(
                    "a flow from `{}` to `{}` is already defined",
                    flow.after, flow.route
                ),
            ));
        }
        list.push((after, within));
        if let Some(keep) = keep_ms.get_mut(usize::from(after)) {
            *keep = (*keep).max(within);
        }
    }
    Ok(Behaviour {
        pages,
        window_ms,
        min_samples,
        max_jitter: max_jitter as f32,
        max_step,
        min_run,
        max_distinct,
        checks,
        keep_ms,
    })
}

// ---------------------------------------------------------------- records

/// One client's behaviour, packed into a slot [`Record`]:
///
/// | field               | holds                                                        |
/// |---------------------|--------------------------------------------------------------|
/// | `tag`               | the client key's tag                                         |
/// | `state`             | path sketch: bit `h(path) % 64` per path of the current window |
/// | `banned_until_ms`   | `last_ms`: Unix ms of the client's last request (0: none)    |
/// | `last_violation_ms` | low 32 bits: `mean_gap_ms` (f32 bits); high 32: `last_id` (low 32 bits of the id) |
/// | `strikes`           | `jitter`: mean absolute deviation / mean gap, × 8192, saturating at 8.0 |
/// | `level`             | `run`: ids in the current sequential run (0: no id yet)      |
/// | `rule`              | bit 7 clear (a client record); bits 0–6: `samples`, timing gaps averaged (≤ 127) |
/// | `updated_s`         | Unix seconds of the last write                               |
///
/// The path sketch's windows are aligned to the epoch, shifted per client
/// by its tag (so clients do not all restart at once): no start time is
/// stored. Ids are compared by their low 32 bits with wrapping arithmetic,
/// so steps between ids of any size are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientRecord {
    pub last_ms: u64,
    pub sketch: u64,
    pub mean_gap_ms: f32,
    pub jitter: f32,
    pub samples: u8,
    pub last_id: u32,
    pub run: u8,
}

impl ClientRecord {
    /// A record of another kind, or with unusable timing, reads as what it
    /// can still tell (nothing, or no timing).
    pub fn from_record(record: &Record) -> ClientRecord {
        if record.rule & FLOW_KIND != 0 {
            return ClientRecord::default();
        }
        let mean_gap_ms = f32::from_bits(record.last_violation_ms as u32);
        let mut client = ClientRecord {
            last_ms: record.banned_until_ms,
            sketch: record.state,
            mean_gap_ms,
            jitter: f32::from(record.strikes) / JITTER_ONE,
            samples: record.rule & MAX_SAMPLES,
            last_id: (record.last_violation_ms >> 32) as u32,
            run: record.level,
        };
        if !(mean_gap_ms.is_finite() && mean_gap_ms >= 0.0) {
            client.reset_timing();
        }
        client
    }

    pub fn into_record(self, tag: u64, now_ms: u64) -> Record {
        let mean = if self.mean_gap_ms.is_finite() {
            self.mean_gap_ms.max(0.0)
        } else {
            0.0
        };
        // `as` saturates (NaN to 0): a quantized ratio in 0..=8.
        let jitter = (self.jitter * JITTER_ONE).round() as u16;
        Record {
            tag,
            state: self.sketch,
            banned_until_ms: self.last_ms,
            last_violation_ms: u64::from(mean.to_bits()) | (u64::from(self.last_id) << 32),
            strikes: jitter,
            rule: self.samples.min(MAX_SAMPLES),
            level: self.run,
            updated_s: seconds(now_ms),
        }
    }

    fn reset_timing(&mut self) {
        self.mean_gap_ms = 0.0;
        self.jitter = 0.0;
        self.samples = 0;
    }

    /// Adds one inter-arrival gap to the timing statistics: plain averages
    /// for the first [`SPAN`] gaps, exponentially weighted (1/[`SPAN`])
    /// after. The deviation of a gap is taken from the mean before it.
    fn sample(&mut self, gap_ms: u64) {
        let gap = gap_ms as f32;
        let n = self.samples.saturating_add(1).min(MAX_SAMPLES);
        if self.samples == 0 || self.mean_gap_ms <= 0.0 {
            self.mean_gap_ms = gap;
            self.jitter = 0.0;
            self.samples = 1;
            return;
        }
        let k = f32::from(n.min(SPAN));
        let k_dev = f32::from(n.saturating_sub(1).clamp(1, SPAN));
        let mean = self.mean_gap_ms;
        let deviation = self.jitter * mean;
        let new_mean = mean + (gap - mean) / k;
        let new_deviation = deviation + ((gap - mean).abs() - deviation) / k_dev;
        self.mean_gap_ms = new_mean;
        self.jitter = if new_mean > 0.0 && new_deviation.is_finite() {
            (new_deviation / new_mean).clamp(0.0, f32::from(u16::MAX) / JITTER_ONE)
        } else {
            0.0
        };
        self.samples = n;
    }

    /// Accounts for one request at `now_ms` and returns the signals it
    /// leaves (all but `flow`).
    fn see(&mut self, cfg: &Behaviour, request: &Request, now_ms: u64) -> Observed {
        let window = cfg.window_ms;
        let window = window.max(1);
        let shift = request.tag % window;
        let window_of = |t: u64| t.saturating_add(shift) / window;
        let same_window = self.last_ms != 0 && window_of(self.last_ms) == window_of(now_ms);
        if self.last_ms == 0 || now_ms.abs_diff(self.last_ms) > window {
            // New, silent for a whole window, or last seen more than a
            // window ahead of a clock that stepped back: nothing carries
            // over (the table may already reclaim such a record).
            *self = ClientRecord {
                last_ms: now_ms,
                ..ClientRecord::default()
            };
        } else if now_ms >= self.last_ms {
            let gap = now_ms - self.last_ms;
            if gap >= BURST_MS {
                self.sample(gap);
            }
            self.last_ms = now_ms;
        } else if self.last_ms - now_ms > BURST_MS {
            // The clock stepped back: the gap is unknown.
            self.reset_timing();
            self.last_ms = now_ms;
        }
        if !same_window {
            self.sketch = 0;
        }
        self.sketch |= 1u64 << (request.path_bit % 64);
        if let Some(id) = request.id {
            let id = id as u32;
            let step = id
                .wrapping_sub(self.last_id)
                .min(self.last_id.wrapping_sub(id));
            if self.run == 0 || step > cfg.max_step {
                self.run = 1;
            } else if step > 0 {
                self.run = self.run.saturating_add(1);
            }
            // The same id again (a page and its subresources) neither
            // extends nor breaks the run.
            self.last_id = id;
        }
        Observed {
            machine_timing: self.timing_strength(cfg),
            sequential_ids: self.sequence_strength(cfg),
            distinct_paths: self.distinct_strength(cfg),
            flow: 0.0,
            untracked: false,
        }
    }

    fn timing_strength(&self, cfg: &Behaviour) -> f32 {
        if self.samples < cfg.min_samples || self.mean_gap_ms <= 0.0 {
            return 0.0;
        }
        let j = cfg.max_jitter;
        unit((2.0 * j - self.jitter) / j)
    }

    fn sequence_strength(&self, cfg: &Behaviour) -> f32 {
        let steps = self.run.saturating_sub(1);
        unit(f32::from(steps) / f32::from(cfg.min_run.max(1)))
    }

    /// Distinct paths estimated from the sketch by linear counting
    /// (`-64 ln(1 - bits/64)`: several paths may share a bit).
    fn distinct_strength(&self, cfg: &Behaviour) -> f32 {
        let bits = f64::from(self.sketch.count_ones());
        let distinct = if bits >= 64.0 {
            f64::INFINITY
        } else {
            -64.0 * (1.0 - bits / 64.0).ln()
        };
        let half = f64::from(cfg.max_distinct) / 2.0;
        unit(((distinct - half) / half.max(1.0)) as f32)
    }
}

/// A client's last request on one `after` route, packed into a slot
/// [`Record`]: `tag` from (client key, route), `banned_until_ms` the time
/// (Unix ms), `strikes` the route id, `rule` [`FLOW_KIND`], `updated_s` the
/// last write; the other fields 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowMark {
    pub at_ms: u64,
    pub after: RouteId,
}

impl FlowMark {
    /// `None` for a record of another kind, or a fresh one.
    pub fn from_record(record: &Record) -> Option<FlowMark> {
        (record.rule == FLOW_KIND && record.banned_until_ms != 0).then_some(FlowMark {
            at_ms: record.banned_until_ms,
            after: record.strikes,
        })
    }

    pub fn into_record(self, tag: u64, now_ms: u64) -> Record {
        Record {
            tag,
            banned_until_ms: self.at_ms,
            strikes: self.after,
            rule: FLOW_KIND,
            updated_s: seconds(now_ms),
            ..Record::default()
        }
    }
}

fn seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

fn unit(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// The table's records: reclaimable once their last time is a keep span
/// old (client records: `window`; flow marks: the longest `within` naming
/// their route, 0 once no flow does), or more than a keep span in the
/// future: the clock stepped back by more than the record is kept, so its
/// times can no longer be placed, and for scoring forgetting it is safe.
struct Tenancy<'a>(&'a Behaviour);

impl Tenancy<'_> {
    /// (last time, how long it is kept).
    fn span(&self, record: &Record) -> (u64, u64) {
        let keep = if record.rule & FLOW_KIND != 0 {
            self.0.keep_ms(record.strikes)
        } else {
            self.0.window_ms
        };
        (record.banned_until_ms, keep)
    }
}

impl Tenant for Tenancy<'_> {
    fn reclaimable(&self, record: &Record, now_ms: u64) -> bool {
        let (last, keep) = self.span(record);
        last.saturating_add(keep) <= now_ms || last > now_ms.saturating_add(keep)
    }

    fn settles_at(&self, record: &Record) -> u64 {
        let (last, keep) = self.span(record);
        last.saturating_add(keep)
    }
}

// ---------------------------------------------------------------- observe

/// The behavioural signals of one request, each `0.0..=1.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    pub machine_timing: f32,
    pub sequential_ids: f32,
    pub distinct_paths: f32,
    pub flow: f32,
    /// The client's record could not be placed (the table is full of live
    /// records): the first three signals are 0. Worth a counter.
    pub untracked: bool,
}

/// What one request brings: its path's sketch bit and id.
struct Request {
    tag: u64,
    path_bit: u64,
    id: Option<u64>,
}

/// The path without query string or fragment.
fn path_only(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The id a request names: its path's last all-digit segment
/// (`/api/items/1043/reviews` → 1043), else the value of a query parameter
/// named `id`, `…_id`, `…Id` or `page` (`?page=7`: paging is walking too).
pub fn request_id(path: &[u8]) -> Option<u64> {
    let only = path_only(path);
    if let Some(id) = only.rsplit(|&b| b == b'/').find_map(digits) {
        return Some(id);
    }
    let query = path.get(only.len()..)?.strip_prefix(b"?")?;
    let query = query.split(|&b| b == b'#').next().unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let name = kv.next()?;
        let id_like = name == b"id"
            || name == b"page"
            || name.ends_with(b"_id")
            || (name.len() > 2 && name.ends_with(b"Id"));
        if id_like {
            digits(kv.next()?)
        } else {
            None
        }
    })
}

/// Sketch bit of `path` (without query) for `client`: keyed with the
/// client's hash, so no one can choose paths that share bits.
fn path_bit(client: Hash128, path: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(client.h1, client.h2);
    h.write(path_only(path));
    h.finish() % 64
}

/// Hash of (client, `after` route): where the client's mark of that route
/// lives.
fn flow_hash(client: Hash128, after: RouteId) -> Hash128 {
    let mut h = SipHasher13::new_with_keys(client.h2, client.h1);
    h.write(b"palisade.flow");
    h.write_u16(after);
    h.finish128()
}

/// One request of a client on `route` at `now_ms`: updates its record(s)
/// and returns the signals. `client` is the keyed hash of the behaviour key
/// (the integrator computes it, e.g. from fingerprint and IP, with
/// `Ctx::keyed_hash`). A store error is returned as is for the caller's
/// `failure_mode`.
pub fn observe<R: CasRetries + ?Sized>(
    cfg: &Behaviour,
    client: Hash128,
    route: RouteId,
    path: &[u8],
    now_ms: u64,
    store: &dyn SharedStore,
    metrics: &R,
) -> Result<Observed, StoreError> {
    let tenant = Tenancy(cfg);
    let addr = Ctx::address(client, cfg.pages);
    let request = Request {
        tag: addr.tag,
        path_bit: path_bit(client, path),
        id: request_id(path),
    };
    let placed = slots::upsert(store, metrics, TABLE, addr, now_ms, &tenant, |record| {
        let mut client = ClientRecord::from_record(record);
        let observed = client.see(cfg, &request, now_ms);
        let updated = client.into_record(record.tag, now_ms);
        let changed = updated != *record;
        *record = updated;
        (changed, observed)
    })?;
    let mut observed = placed.unwrap_or(Observed {
        untracked: true,
        ..Observed::default()
    });
    observed.flow = flows(cfg, client, route, now_ms, store, metrics, &tenant)?;
    Ok(observed)
}

/// The `flow` signal of a request on `route`, and its mark when `route` is
/// some flow's `after`. A mark that cannot be placed, or read because the
/// table is full, counts as satisfied (fail-open for scoring).
fn flows<R: CasRetries + ?Sized>(
    cfg: &Behaviour,
    client: Hash128,
    route: RouteId,
    now_ms: u64,
    store: &dyn SharedStore,
    metrics: &R,
    tenant: &Tenancy<'_>,
) -> Result<f32, StoreError> {
    let mut strength = 0.0;
    for &(after, within) in cfg.checks(route) {
        let addr = Ctx::address(flow_hash(client, after), cfg.pages);
        let mark = slots::upsert(store, metrics, TABLE, addr, now_ms, tenant, |record| {
            (false, FlowMark::from_record(record))
        })?;
        let satisfied = match mark {
            None => true,
            // A mark in the future (the clock stepped back) counts as now.
            Some(mark) => mark.is_some_and(|m| now_ms.saturating_sub(m.at_ms) <= within),
        };
        if !satisfied {
            strength = 1.0;
        }
    }
    if cfg.keep_ms(route) > 0 {
        let addr = Ctx::address(flow_hash(client, route), cfg.pages);
        slots::upsert(store, metrics, TABLE, addr, now_ms, tenant, |record| {
            let fresh = FlowMark::from_record(record).is_some_and(|m| {
                m.after == route && m.at_ms <= now_ms && now_ms - m.at_ms < MARK_REFRESH_MS
            });
            if fresh {
                return (false, ());
            }
            let mark = FlowMark {
                at_ms: now_ms,
                after: route,
            };
            *record = mark.into_record(record.tag, now_ms);
            (true, ())
        })?;
    }
    Ok(strength)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::{Counter, MemoryMetrics};
    use crate::core::routes::{PathMatcher, RouteClass};
    use crate::state::host::{MemoryStore, Versioned};
    use std::cell::Cell;

    const T0: u64 = 1_700_000_000_000;

    fn routes() -> RouteTable {
        let class = |name: &str, prefix: &str| RouteClass {
            name: name.into(),
            matcher: PathMatcher::Prefix(prefix.into()),
            methods: None,
        };
        RouteTable::new(vec![
            class("cart", "/cart"),
            class("checkout", "/checkout"),
            class("login", "/login"),
            class("api", "/api"),
        ])
    }

    fn try_config(
        behaviour: serde_json::Value,
        flows: serde_json::Value,
    ) -> Result<Behaviour, ConfigError> {
        let raw: RawBehaviour =
            serde_json::from_value(behaviour).unwrap_or_else(|e| unreachable!("{e}"));
        let flows: Vec<RawFlow> =
            serde_json::from_value(flows).unwrap_or_else(|e| unreachable!("{e}"));
        compile(raw, flows, &routes(), "bot")
    }

    fn config(behaviour: serde_json::Value, flows: serde_json::Value) -> Behaviour {
        try_config(behaviour, flows).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn defaults() -> Behaviour {
        config(
            serde_json::json!({}),
            serde_json::json!([
                {"route": "checkout", "after": "cart", "within": "10m"}
            ]),
        )
    }

    fn client(n: u64) -> Hash128 {
        Hash128 {
            h1: slots::spread(n.wrapping_mul(slots::GOLDEN) ^ 0x5555),
            h2: slots::spread(n ^ 0xaaaa),
        }
    }

    fn route(name: &str) -> RouteId {
        routes().id_of(name).unwrap_or(RouteId::MAX)
    }

    /// A table with its pages created, and the client playing the requests.
    struct Fixture {
        cfg: Behaviour,
        store: MemoryStore,
        metrics: MemoryMetrics,
    }

    impl Fixture {
        fn new(cfg: Behaviour) -> Fixture {
            let store = MemoryStore::new();
            slots::ensure_pages(&store, cfg.shared_keys())
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            Fixture {
                cfg,
                store,
                metrics: MemoryMetrics::default(),
            }
        }

        fn on(&self, who: u64, route_name: &str, path: &str, now: u64) -> Observed {
            observe(
                &self.cfg,
                client(who),
                route(route_name),
                path.as_bytes(),
                now,
                &self.store,
                &self.metrics,
            )
            .unwrap_or_else(|e| unreachable!("{e:?}"))
        }

        fn get(&self, who: u64, path: &str, now: u64) -> Observed {
            self.on(who, "default", path, now)
        }

        /// The client's record as stored.
        fn record(&self, who: u64) -> Option<Record> {
            let addr = Ctx::address(client(who), self.cfg.pages);
            std::iter::once(addr.home)
                .chain((1..=slots::ALTERNATES).filter_map(|n| addr.alternate(n)))
                .filter_map(|i| self.store.get(&slots::page_key(TABLE, i)).ok().flatten())
                .flat_map(|(bytes, _)| slots::Page::decode(&bytes).records)
                .find(|r| r.tag == addr.tag)
        }
    }

    use crate::core::test_rng::Rng;

    /// Timings for the tests, from the shared test generator.
    trait Timings {
        fn exponential(&mut self, mean: f64) -> u64;
        fn around(&mut self, center: u64, spread: u64) -> u64;
    }

    impl Timings for Rng {
        /// Exponentially distributed with mean `mean`.
        fn exponential(&mut self, mean: f64) -> u64 {
            (-mean * (1.0 - self.unit()).ln()) as u64
        }

        /// Uniform in `center` ± `spread`.
        fn around(&mut self, center: u64, spread: u64) -> u64 {
            center - spread + self.next_u64() % (2 * spread + 1)
        }
    }

    #[test]
    fn a_regular_bot_is_machine_timed_once_it_has_min_samples() {
        let f = Fixture::new(defaults());
        let mut rng = Rng(7);
        let mut now = T0;
        for gaps in 0..40u8 {
            let seen = f.get(1, "/api/status", now);
            let expected = if gaps < DEFAULT_MIN_SAMPLES { 0.0 } else { 1.0 };
            assert_eq!(seen.machine_timing, expected, "after {gaps} gaps");
            now += rng.around(500, 10);
        }
        let stored = f.record(1).map(|r| ClientRecord::from_record(&r));
        assert!(stored.is_some_and(|c| (c.mean_gap_ms - 500.0).abs() < 10.0 && c.jitter < 0.02));
    }

    #[test]
    fn timing_fades_out_between_max_jitter_and_twice_it() {
        let cfg = defaults();
        let mut c = ClientRecord {
            mean_gap_ms: 500.0,
            samples: 8,
            ..ClientRecord::default()
        };
        for (jitter, strength) in [(0.05, 1.0), (0.1, 1.0), (0.15, 0.5), (0.2, 0.0), (0.7, 0.0)] {
            c.jitter = jitter;
            assert!(
                (c.timing_strength(&cfg) - strength).abs() < 1e-4,
                "{jitter}"
            );
        }
        c.samples = 7;
        c.jitter = 0.0;
        assert_eq!(c.timing_strength(&cfg), 0.0, "too few samples");
    }

    #[test]
    fn human_gaps_never_look_regular() {
        let f = Fixture::new(defaults());
        let mut rng = Rng(0x1234_5678);
        let mut now = T0;
        let mut samples = 0;
        for i in 0..500 {
            let seen = f.get(1, &format!("/page/{}", i % 7), now);
            assert_eq!(seen.machine_timing, 0.0, "request {i}");
            samples = samples.max(f.record(1).map_or(0, |r| r.rule & MAX_SAMPLES));
            now += rng.exponential(4_000.0).max(1);
        }
        assert!(samples >= DEFAULT_MIN_SAMPLES, "timing was judged");
    }

    #[test]
    fn browser_bursts_do_not_make_a_human_regular() {
        let f = Fixture::new(defaults());
        let mut rng = Rng(99);
        let mut now = T0;
        for view in 0..60 {
            // A page and its subresources, 2 to 3 ms apart.
            for sub in 0..12 {
                let seen = f.get(1, &format!("/static/{sub}.js"), now);
                assert_eq!(seen.machine_timing, 0.0, "view {view}, request {sub}");
                now += 2 + rng.next_u64() % 2;
            }
            now += rng.exponential(6_000.0).max(BURST_MS);
        }
        // A bot sending a burst on a timer is still regular: the gap after
        // each burst is the sample.
        let mut now = T0;
        let mut last = 0.0;
        for _ in 0..20 {
            for sub in 0..3 {
                last = f
                    .get(2, &format!("/feed/{sub}"), now + sub * 3)
                    .machine_timing;
            }
            now += 1_000;
        }
        assert_eq!(last, 1.0);
    }

    /// Runs a regular bot walking ids and paths until every signal is on.
    fn train(f: &Fixture, who: u64, start: u64) -> u64 {
        let mut now = start;
        let mut seen = Observed::default();
        for i in 0..60 {
            seen = f.get(who, &format!("/api/items/{}", 100 + i), now);
            now += 500;
        }
        assert_eq!(
            (
                seen.machine_timing,
                seen.sequential_ids,
                seen.distinct_paths
            ),
            (1.0, 1.0, 1.0)
        );
        now - 500
    }

    #[test]
    fn a_gap_longer_than_the_window_forgets_everything() {
        let f = Fixture::new(defaults());
        let last = train(&f, 1, T0);
        let seen = f.get(1, "/api/items/160", last + DEFAULT_WINDOW_MS + 1);
        assert_eq!(seen, Observed::default());
        // Exactly one window later is still the same client's history.
        let f = Fixture::new(defaults());
        let last = train(&f, 1, T0);
        let seen = f.get(1, "/api/items/160", last + DEFAULT_WINDOW_MS);
        assert_eq!(seen.sequential_ids, 1.0);
    }

    #[test]
    fn a_clock_step_back_restarts_timing_without_breaking_anything() {
        let f = Fixture::new(defaults());
        let last = train(&f, 1, T0);
        // Out of order by a few ms (two workers): a burst, nothing lost.
        let seen = f.get(1, "/api/items/160", last - 20);
        assert_eq!(seen.machine_timing, 1.0);
        // Stepped back 10 s: the gap is unknown, timing starts afresh.
        let mut now = last - 10_000;
        let seen = f.get(1, "/api/items/161", now);
        assert_eq!(seen.machine_timing, 0.0);
        assert_eq!(seen.sequential_ids, 1.0, "ids do not depend on time");
        for gaps in 1..=8u8 {
            now += 500;
            let seen = f.get(1, "/api/items/162", now);
            assert_eq!(seen.machine_timing, if gaps < 8 { 0.0 } else { 1.0 });
        }
        // Stepped back by more than the window, then to the epoch: forgotten.
        assert_eq!(f.get(1, "/x", now - 3_600_000), Observed::default());
        assert_eq!(f.get(1, "/x", 0).machine_timing, 0.0);
        assert_eq!(f.get(1, "/x", u64::MAX).machine_timing, 0.0);
    }

    #[test]
    fn sequential_ids_count_steps_up_to_max_step_either_way() {
        let f = Fixture::new(defaults());
        let mut now = T0;
        let mut id = |path: String| {
            now += 1_000;
            f.get(1, &path, now).sequential_ids
        };
        let walk: Vec<f32> = (1043..1050)
            .map(|n| id(format!("/api/items/{n}")))
            .collect();
        assert_eq!(walk, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]);
        assert_eq!(id("/api/items/2000".into()), 0.0, "a jump resets");
        assert_eq!(id("/api/items/1997".into()), 0.2, "down by max_step");
        assert_eq!(id("/api/items/1993".into()), 0.0, "max_step + 1 resets");
        assert_eq!(id("/api/items/1992".into()), 0.2);
        assert_eq!(id("/about".into()), 0.2, "no id: untouched");
        assert_eq!(
            id("/api/items/1992/reviews".into()),
            0.2,
            "same id: untouched"
        );
        assert_eq!(id("/api/items?id=1991".into()), 0.4, "an id in the query");
        assert_eq!(id("/api/items/1990?page=7".into()), 0.6, "path first");
        // Another client's ids are its own.
        assert_eq!(f.get(2, "/api/items/1989", now + 1).sequential_ids, 0.0);
    }

    #[test]
    fn ids_come_from_the_last_digit_segment_or_an_id_parameter() {
        for (path, id) in [
            ("/api/items/1043", Some(1043)),
            ("/api/items/1043/reviews", Some(1043)),
            ("/api/v2/items/7/", Some(7)),
            ("/a/1/b/2", Some(2)),
            ("/api/items/10x", None),
            ("/api/items", None),
            ("", None),
            ("/search?q=1&id=55", Some(55)),
            ("/search?itemId=9", Some(9)),
            ("/search?user_id=3#top", Some(3)),
            ("/search?page=4", Some(4)),
            ("/search?pid=4", None),
            ("/search?id=", None),
            ("/search?id=12a", None),
            ("/n/99999999999999999999999", None),
            ("/n/18446744073709551615", Some(u64::MAX)),
        ] {
            assert_eq!(request_id(path.as_bytes()), id, "{path}");
        }
    }

    #[test]
    fn distinct_paths_count_per_window() {
        let f = Fixture::new(defaults());
        // Few distinct paths, however many requests: nothing.
        let mut seen = Observed::default();
        for i in 0..200 {
            seen = f.get(1, &format!("/p/{}?q={i}", i % 10), T0);
        }
        assert_eq!(seen.distinct_paths, 0.0);
        // Many: up to full strength, never down within the window.
        let mut previous = 0.0;
        for i in 0..60 {
            seen = f.get(2, &format!("/p/{i}"), T0 + i);
            assert!(seen.distinct_paths >= previous, "{i}");
            previous = seen.distinct_paths;
        }
        assert_eq!(seen.distinct_paths, 1.0);
        // The next window starts over.
        let seen = f.get(2, "/p/0", T0 + 59 + DEFAULT_WINDOW_MS);
        assert_eq!(seen.distinct_paths, 0.0);
        let bits = f.record(2).map(|r| r.state.count_ones());
        assert_eq!(bits, Some(1));
    }

    #[test]
    fn the_sketch_estimates_distinct_paths_with_collisions() {
        let cfg = defaults();
        let strength = |bits: u32| {
            let sketch = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            ClientRecord {
                sketch,
                ..ClientRecord::default()
            }
            .distinct_strength(&cfg)
        };
        assert_eq!(strength(12), 0.0, "about 13 paths");
        assert!((0.0..1.0).contains(&strength(18)), "about 21 paths");
        assert_eq!(strength(24), 1.0, "about 30 paths");
        assert_eq!(strength(64), 1.0);
    }

    #[test]
    fn flows_want_their_after_route_within_the_span() {
        let f = Fixture::new(defaults());
        // Violated: checkout without cart.
        assert_eq!(f.on(1, "checkout", "/checkout", T0).flow, 1.0);
        // Satisfied: cart, then checkout within 10 minutes.
        assert_eq!(f.on(2, "cart", "/cart", T0).flow, 0.0);
        assert_eq!(f.on(2, "checkout", "/checkout", T0 + 600_000).flow, 0.0);
        // Expired.
        assert_eq!(f.on(2, "checkout", "/checkout", T0 + 600_001).flow, 1.0);
        // Client 2's cart does not count for client 1.
        assert_eq!(f.on(1, "checkout", "/checkout", T0 + 1).flow, 1.0);
        // A later cart renews the mark; one within a second of it is not
        // written again (and still counts).
        assert_eq!(f.on(2, "cart", "/cart", T0 + 700_000).flow, 0.0);
        assert_eq!(f.on(2, "cart", "/cart", T0 + 700_999).flow, 0.0);
        assert_eq!(f.on(2, "checkout", "/checkout", T0 + 1_300_000).flow, 0.0);
        assert_eq!(f.on(2, "checkout", "/checkout", T0 + 1_300_001).flow, 1.0);
        // A mark "in the future" (the clock stepped back) counts as now.
        assert_eq!(f.on(3, "cart", "/cart", T0 + 3_600_000).flow, 0.0);
        assert_eq!(f.on(3, "checkout", "/checkout", T0).flow, 0.0);
    }

    #[test]
    fn several_flows_may_guard_one_route() {
        let f = Fixture::new(config(
            serde_json::json!({}),
            serde_json::json!([
                {"route": "checkout", "after": "cart", "within": "10m"},
                {"route": "checkout", "after": "login", "within": "1h"},
                {"route": "cart", "after": "login", "within": "1h"},
            ]),
        ));
        assert_eq!(f.on(1, "login", "/login", T0).flow, 0.0);
        assert_eq!(
            f.on(1, "checkout", "/checkout", T0 + 1).flow,
            1.0,
            "no cart"
        );
        assert_eq!(f.on(1, "cart", "/cart", T0 + 2).flow, 0.0, "after login");
        assert_eq!(f.on(1, "checkout", "/checkout", T0 + 3).flow, 0.0);
        assert_eq!(f.on(2, "cart", "/cart", T0 + 4).flow, 1.0, "no login");
    }

    /// Counts host calls.
    struct Counting<'a> {
        store: &'a MemoryStore,
        gets: Cell<u32>,
        sets: Cell<u32>,
    }

    impl Counting<'_> {
        fn calls(&self) -> (u32, u32) {
            (self.gets.replace(0), self.sets.replace(0))
        }
    }

    impl SharedStore for Counting<'_> {
        fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.gets.set(self.gets.get() + 1);
            self.store.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.store.set(key, value, cas)
        }
    }

    #[test]
    fn flows_touch_the_store_only_on_their_routes() {
        let f = Fixture::new(defaults());
        let host = Counting {
            store: &f.store,
            gets: Cell::new(0),
            sets: Cell::new(0),
        };
        let on = |name: &str, now: u64| {
            let seen = observe(
                &f.cfg,
                client(1),
                route(name),
                b"/x",
                now,
                &host,
                &f.metrics,
            );
            assert!(seen.is_ok());
            host.calls()
        };
        assert_eq!(
            on("api", T0),
            (1, 1),
            "no flow names it: the client record only"
        );
        assert_eq!(on("login", T0 + 100), (1, 1));
        assert_eq!(on("cart", T0 + 200), (2, 2), "and the mark");
        assert_eq!(
            on("cart", T0 + 300),
            (2, 1),
            "a fresh mark is not rewritten"
        );
        assert_eq!(on("checkout", T0 + 400), (2, 1), "and a read of the mark");
        assert_eq!(f.metrics.get(&Counter::CasRetry), 0);
    }

    #[test]
    fn two_clients_do_not_share_state() {
        let f = Fixture::new(defaults());
        let mut now = T0;
        let mut human = T0;
        let mut rng = Rng(5);
        for i in 0..40u64 {
            let a = f.get(1, &format!("/api/items/{i}"), now);
            // Client 2 interleaves, with human gaps and one page.
            human += rng.exponential(500.0).max(1);
            let b = f.get(2, "/home", human);
            assert_eq!(
                (b.machine_timing, b.sequential_ids, b.distinct_paths),
                (0.0, 0.0, 0.0)
            );
            if i >= 8 {
                assert_eq!(a.machine_timing, 1.0, "{i}");
            }
            now += 500;
        }
        assert_ne!(f.record(1).map(|r| r.state), f.record(2).map(|r| r.state));
    }

    #[test]
    fn a_full_table_leaves_newcomers_untracked_and_never_panics() {
        let f = Fixture::new(config(
            serde_json::json!({"slots": 16}),
            serde_json::json!([{"route": "checkout", "after": "cart", "within": "10m"}]),
        ));
        assert_eq!(f.cfg.pages, 1);
        for who in 100..100 + slots::SLOTS_PER_PAGE as u64 {
            assert!(!f.get(who, "/a/1", T0).untracked);
        }
        let seen = f.get(1, "/a/1", T0 + 1);
        assert!(seen.untracked);
        assert_eq!(
            seen,
            Observed {
                untracked: true,
                ..Observed::default()
            }
        );
        // A flow whose mark has no room neither writes nor flags.
        assert_eq!(f.on(1, "cart", "/cart", T0 + 2).flow, 0.0);
        assert_eq!(f.on(1, "checkout", "/checkout", T0 + 3).flow, 0.0);
        // A tracked client keeps its state; once the others are a window
        // old, newcomers find room.
        assert!(!f.get(100, "/a/2", T0 + 4).untracked);
        assert!(!f.get(1, "/a/1", T0 + 5 + DEFAULT_WINDOW_MS).untracked);
    }

    #[test]
    fn records_are_reclaimable_once_they_carry_nothing() {
        let cfg = defaults();
        let tenant = Tenancy(&cfg);
        let client = ClientRecord {
            last_ms: T0,
            ..ClientRecord::default()
        }
        .into_record(9, T0);
        assert!(!tenant.reclaimable(&client, T0 + DEFAULT_WINDOW_MS - 1));
        assert!(tenant.reclaimable(&client, T0 + DEFAULT_WINDOW_MS));
        assert_eq!(tenant.settles_at(&client), T0 + DEFAULT_WINDOW_MS);
        assert!(
            !tenant.reclaimable(&client, T0 - 1_000),
            "a small step back"
        );
        assert!(tenant.reclaimable(&client, T0 - 3_600_000), "a long one");
        let mark = FlowMark {
            at_ms: T0,
            after: route("cart"),
        }
        .into_record(10, T0);
        assert!(!tenant.reclaimable(&mark, T0 + 599_999));
        assert!(tenant.reclaimable(&mark, T0 + 600_000));
        let orphan = FlowMark {
            at_ms: T0,
            after: route("login"),
        }
        .into_record(11, T0);
        assert!(tenant.reclaimable(&orphan, T0), "no flow keeps it");
    }

    #[test]
    fn client_records_round_trip_through_slot_records() {
        let c = ClientRecord {
            last_ms: T0 + 123,
            sketch: 0x8000_0000_0000_0001,
            mean_gap_ms: 512.25,
            jitter: 0.125,
            samples: 100,
            last_id: 0xdead_beef,
            run: 17,
        };
        let record = c.into_record(42, T0 + 999);
        assert_eq!((record.tag, record.updated_s), (42, 1_700_000_000));
        assert_eq!(record.rule & FLOW_KIND, 0);
        assert_eq!(ClientRecord::from_record(&record), c);
        assert_eq!(FlowMark::from_record(&record), None, "not a mark");
        let mark = FlowMark {
            at_ms: T0,
            after: 3,
        };
        let record = mark.into_record(43, T0);
        assert_eq!(FlowMark::from_record(&record), Some(mark));
        assert_eq!(ClientRecord::from_record(&record), ClientRecord::default());
        // Garbage timing reads as none.
        let bad = Record {
            last_violation_ms: u64::from(f32::NAN.to_bits()),
            rule: 9,
            ..Record::default()
        };
        assert_eq!(ClientRecord::from_record(&bad).samples, 0);
    }

    #[test]
    fn two_workers_lose_no_update() {
        use std::sync::Barrier;
        const CLIENTS: u64 = 6;
        let f = Fixture::new(config(
            serde_json::json!({"slots": 16}),
            serde_json::json!([]),
        ));
        // Per client, 64 paths that set all 64 sketch bits, split between
        // two workers: an update lost to a race would leave a bit unset.
        let paths: Vec<Vec<String>> = (0..CLIENTS)
            .map(|who| {
                let mut by_bit = vec![String::new(); 64];
                let mut n = 0u64;
                while by_bit.iter().any(String::is_empty) {
                    let path = format!("/p/{n}");
                    let bit = path_bit(client(who), path.as_bytes()) as usize;
                    if by_bit.get(bit).is_some_and(String::is_empty) {
                        by_bit[bit] = path;
                    }
                    n += 1;
                }
                by_bit
            })
            .collect();
        let start = Barrier::new(2);
        std::thread::scope(|scope| {
            for worker in 0..2usize {
                let (f, paths, start) = (&f, &paths, &start);
                scope.spawn(move || {
                    start.wait();
                    for i in (worker..64).step_by(2) {
                        for who in 0..CLIENTS {
                            let path = &paths[who as usize][i];
                            // A worker that loses every compare-and-swap of one
                            // call (a loaded test machine can deschedule it that
                            // long) tries the request again: what is tested is
                            // that no update is lost, not the retry bound.
                            let seen = (0..100)
                                .map(|_| {
                                    observe(
                                        &f.cfg,
                                        client(who),
                                        route("default"),
                                        path.as_bytes(),
                                        T0,
                                        &f.store,
                                        &f.metrics,
                                    )
                                })
                                .find(|r| r != &Err(StoreError::CasMismatch));
                            assert!(seen.is_some_and(|r| r.is_ok_and(|s| !s.untracked)));
                        }
                    }
                });
            }
        });
        for who in 0..CLIENTS {
            assert_eq!(
                f.record(who).map(|r| r.state),
                Some(u64::MAX),
                "client {who}"
            );
        }
    }

    #[test]
    fn configuration_errors_name_their_path() {
        use serde_json::json;
        let cases = [
            (json!({"slots": 8}), json!([]), "bot.behaviour.slots"),
            (
                json!({"slots": 1u64 << 23}),
                json!([]),
                "bot.behaviour.slots",
            ),
            (
                json!({"window": "500ms"}),
                json!([]),
                "bot.behaviour.window",
            ),
            (
                json!({"min_samples": 1}),
                json!([]),
                "bot.behaviour.min_samples",
            ),
            (
                json!({"max_jitter": 0.0}),
                json!([]),
                "bot.behaviour.max_jitter",
            ),
            (
                json!({"max_jitter": 1.0}),
                json!([]),
                "bot.behaviour.max_jitter",
            ),
            (json!({"max_step": 0}), json!([]), "bot.behaviour.max_step"),
            (json!({"min_run": 0}), json!([]), "bot.behaviour.min_run"),
            (json!({"min_run": 255}), json!([]), "bot.behaviour.min_run"),
            (
                json!({"max_distinct": 1}),
                json!([]),
                "bot.behaviour.max_distinct",
            ),
            (
                json!({"max_distinct": 129}),
                json!([]),
                "bot.behaviour.max_distinct",
            ),
            (
                json!({}),
                json!([{"route": "checkout", "after": "basket", "within": "1m"}]),
                "bot.flows[0].after",
            ),
            (
                json!({}),
                json!([
                    {"route": "checkout", "after": "cart", "within": "1m"},
                    {"route": "pay", "after": "cart", "within": "1m"},
                ]),
                "bot.flows[1].route",
            ),
            (
                json!({}),
                json!([{"route": "cart", "after": "cart", "within": "1m"}]),
                "bot.flows[0].after",
            ),
            (
                json!({}),
                json!([
                    {"route": "checkout", "after": "cart", "within": "1m"},
                    {"route": "checkout", "after": "cart", "within": "2m"},
                ]),
                "bot.flows[1]",
            ),
            (
                json!({}),
                json!(vec![
                    json!({"route": "checkout", "after": "cart", "within": "1m"});
                    17
                ]),
                "bot.flows",
            ),
        ];
        for (behaviour, flows, path) in cases {
            let got = try_config(behaviour.clone(), flows).map(|_| ());
            assert_eq!(
                got.map_err(|e| e.path),
                Err(path.to_string()),
                "{behaviour}"
            );
        }
        assert!(serde_json::from_value::<RawBehaviour>(json!({"windwo": "1m"})).is_err());
        assert!(serde_json::from_value::<RawFlow>(json!({"route": "a", "after": "b"})).is_err());
        // The defaults, and the default route class by name.
        let cfg = config(
            json!({}),
            json!([{"route": "default", "after": "login", "within": "1h"}]),
        );
        assert_eq!(
            (
                cfg.pages,
                cfg.window_ms,
                cfg.min_samples,
                cfg.max_step,
                cfg.min_run,
                cfg.max_distinct
            ),
            (1_024, 60_000, 8, 3, 5, 30)
        );
        assert!((cfg.max_jitter - 0.1).abs() < 1e-6 && cfg.has_flows());
        assert_eq!(cfg.shared_keys().next().as_deref(), Some("palisade.bh.p.0"));
        assert!(!config(json!({}), json!([])).has_flows());
    }
    #[cfg(feature = "schema")]
    #[test]
    fn the_schema_carries_the_bounds() {
        let schema = serde_json::to_value(schemars::schema_for!(RawBehaviour)).unwrap_or_default();
        let props = &schema["properties"];
        assert_eq!(props["max_jitter"]["exclusiveMaximum"], 1);
        assert_eq!(
            props["slots"]["minimum"],
            crate::core::config_error::MIN_SLOTS
        );
        assert_eq!(props["max_distinct"]["maximum"], MAX_MAX_DISTINCT);
        assert_eq!(schema["additionalProperties"], false);
        let flow = serde_json::to_value(schemars::schema_for!(RawFlow)).unwrap_or_default();
        assert_eq!(
            flow["required"],
            serde_json::json!(["route", "after", "within"])
        );
    }
}
