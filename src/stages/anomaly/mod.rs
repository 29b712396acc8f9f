//! Anomaly detection: per route class, an exponentially weighted baseline
//! of request rate, upstream 5xx share and upstream latency, shared by all
//! workers, and an `anomaly.*` event when a window spikes beyond it.
//!
//! A request costs no host call here: each worker counts its requests
//! and answers in memory, by window, and adds them to the class's record in
//! shared data on the root context's tick (one get and one compare-and-swap
//! per watched class and tick). A window is judged once every worker's
//! counts for it are in, [`FLUSH_GRACE_MS`] after it ends, by whichever
//! worker flushes first then: the compare-and-swap makes that one worker.

pub mod config;

pub use config::{compile, Anomaly, RawAnomaly, Signal, Watch};

use crate::core::event::AnomalyChange as Change;
use crate::core::routes::RouteId;
use crate::state::host::{SharedStore, StoreError};
use crate::state::slots::MAX_CAS_ATTEMPTS;
use std::sync::Mutex;

/// How long after a window ends its counts may still arrive: workers flush
/// on a tick of at most 1 s (the glue's `TICK_MS`), so two ticks.
pub const FLUSH_GRACE_MS: u64 = 2_000;

/// A run of empty windows longer than this is learned as this many: the
/// baseline has forgotten what came before by then anyway.
const MAX_GAP_WINDOWS: u64 = 1_000;

/// The shared-data key of a route class's record.
pub fn record_key(route: RouteId) -> String {
    format!("palisade.an.{route}")
}

/// What one window saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u32,
    /// Upstream answers (their request arrived in the window).
    pub responses: u32,
    pub errors: u32,
    /// Sum of upstream latencies, in ms.
    pub latency_ms: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.responses = self.responses.saturating_add(other.responses);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency_ms = self.latency_ms.saturating_add(other.latency_ms);
    }

    /// The window's value of `signal`, when it has enough data to mean one.
    fn value(&self, signal: Signal) -> Option<f64> {
        match signal {
            Signal::Rate => Some(f64::from(self.requests)),
            _ if self.responses == 0 => None,
            Signal::Errors => Some(f64::from(self.errors) / f64::from(self.responses)),
            Signal::Latency => Some(self.latency_ms as f64 / f64::from(self.responses)),
        }
    }

    /// Whether the window has enough data for `signal` to be judged.
    fn judged(&self, signal: Signal, min_requests: u32) -> bool {
        match signal {
            Signal::Rate => self.requests >= min_requests,
            _ => self.responses >= min_requests,
        }
    }
}

/// One signal's exponentially weighted mean and variance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub var: f64,
    /// Windows learned.
    pub windows: u32,
}

impl Baseline {
    fn learn(&mut self, x: f64, alpha: f64) {
        if self.windows == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let diff = x - self.mean;
            let step = alpha * diff;
            self.mean += step;
            self.var = (1.0 - alpha) * (self.var + diff * step);
        }
        self.windows = self.windows.saturating_add(1);
    }

    /// The deviation a spike is measured in: the learned one, but never
    /// below the noise a steady signal has anyway (Poisson noise of a count,
    /// binomial noise of a share, a tenth of a latency), so that a
    /// perfectly even baseline does not make every small step a spike.
    fn sigma(&self, signal: Signal, counts: &Counts) -> f64 {
        let floor = match signal {
            Signal::Rate => self.mean.sqrt().max(1.0),
            Signal::Errors => {
                let p = self.mean.clamp(0.01, 0.99);
                (p * (1.0 - p) / f64::from(counts.responses.max(1))).sqrt()
            }
            Signal::Latency => (self.mean * 0.1).max(1.0),
        };
        self.var.max(0.0).sqrt().max(floor)
    }
}

/// A route class's shared record.
#[derive(Debug, Clone, Default, PartialEq)]
struct Record {
    name_hash: u64,
    /// Index (start / window) of the oldest window not yet judged; 0: none yet.
    base: u64,
    /// Counts of windows `base` and `base + 1`.
    open: [Counts; 2],
    baselines: [Baseline; 3],
    /// Per signal: anomalous until (Unix ms), 0 when not anomalous.
    until_ms: [u64; 3],
}

const COUNTS_LEN: usize = 20;
const BASELINE_LEN: usize = 20;
const RECORD_LEN: usize = 16 + 2 * COUNTS_LEN + 3 * BASELINE_LEN + 3 * 8;

/// Little-endian fields read in order; short input reads as zeros.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, rest)) = self.0.split_at_checked(N) {
            out.copy_from_slice(head);
            self.0 = rest;
        }
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f64(&mut self) -> f64 {
        let v = f64::from_le_bytes(self.take());
        if v.is_finite() {
            v
        } else {
            0.0
        }
    }
}

impl Record {
    /// Anything but a record of this length reads as none (the page
    /// placeholder written at start, another version's record).
    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let mut r = Reader(bytes);
        let mut record = Record {
            name_hash: r.u64(),
            base: r.u64(),
            ..Record::default()
        };
        for c in &mut record.open {
            *c = Counts {
                requests: r.u32(),
                responses: r.u32(),
                errors: r.u32(),
                latency_ms: r.u64(),
            };
        }
        for b in &mut record.baselines {
            *b = Baseline {
                mean: r.f64(),
                var: r.f64(),
                windows: r.u32(),
            };
        }
        for u in &mut record.until_ms {
            *u = r.u64();
        }
        Some(record)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&self.name_hash.to_le_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        for c in &self.open {
            out.extend_from_slice(&c.requests.to_le_bytes());
            out.extend_from_slice(&c.responses.to_le_bytes());
            out.extend_from_slice(&c.errors.to_le_bytes());
            out.extend_from_slice(&c.latency_ms.to_le_bytes());
        }
        for b in &self.baselines {
            out.extend_from_slice(&b.mean.to_le_bytes());
            out.extend_from_slice(&b.var.to_le_bytes());
            out.extend_from_slice(&b.windows.to_le_bytes());
        }
        for u in &self.until_ms {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out
    }

    /// Judges and learns every window that can no longer get counts.
    fn settle(&mut self, watch: &Watch, route: RouteId, now_ms: u64, changes: &mut Vec<Change>) {
        let w = watch.window_ms.max(1);
        let closed_before = now_ms.saturating_sub(FLUSH_GRACE_MS) / w;
        if self.base == 0 {
            self.base = closed_before;
            return;
        }
        let mut judged = 0;
        while self.base < closed_before {
            let counts = self.open[0];
            let empty = counts == Counts::default();
            if empty && judged >= MAX_GAP_WINDOWS && self.open[1] == Counts::default() {
                self.base = closed_before;
                break;
            }
            // Idle windows before the first traffic are not part of the baseline.
            if !empty || self.baselines[Signal::Rate.index()].windows > 0 {
                self.judge(
                    watch,
                    route,
                    &counts,
                    self.base.saturating_mul(w),
                    now_ms,
                    changes,
                );
                judged += 1;
            }
            self.open = [self.open[1], Counts::default()];
            self.base += 1;
        }
    }

    fn judge(
        &mut self,
        watch: &Watch,
        route: RouteId,
        counts: &Counts,
        window_start_ms: u64,
        now_ms: u64,
        changes: &mut Vec<Change>,
    ) {
        for signal in Signal::ALL {
            if !watch.watches(signal) {
                continue;
            }
            let i = signal.index();
            let value = counts.value(signal);
            let before = self.baselines[i];
            let sigma = before.sigma(signal, counts);
            let spike = value.is_some_and(|x| {
                before.windows >= watch.warmup_windows
                    && counts.judged(signal, watch.min_requests)
                    && x > before.mean + watch.deviations * sigma
            });
            let change = |started| Change {
                route,
                signal: signal.as_str(),
                started,
                observed: value.unwrap_or(0.0),
                baseline: before.mean,
                sigma,
                window_start_ms,
            };
            if spike {
                if self.until_ms[i] == 0 {
                    changes.push(change(true));
                }
                let end = window_start_ms.saturating_add(watch.window_ms);
                self.until_ms[i] = end.saturating_add(watch.hold_ms).max(1);
            } else if self.until_ms[i] != 0 && self.until_ms[i] <= now_ms {
                self.until_ms[i] = 0;
                changes.push(change(false));
            }
            if let Some(x) = value {
                self.baselines[i].learn(x, watch.alpha);
            }
        }
    }
}

/// Requests and answers of one worker since its last flush, by route
/// class and window index.
#[derive(Default)]
pub struct Tallies {
    by_route: Mutex<Vec<Vec<(u64, Counts)>>>,
}

impl Tallies {
    fn count(&self, route: RouteId, window: u64, add: impl FnOnce(&mut Counts)) {
        let mut by_route = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        let route = usize::from(route);
        if by_route.len() <= route {
            by_route.resize_with(route + 1, Vec::new);
        }
        let Some(windows) = by_route.get_mut(route) else {
            return;
        };
        match windows.iter_mut().find(|(w, _)| *w == window) {
            Some((_, counts)) => add(counts),
            None => {
                let mut counts = Counts::default();
                add(&mut counts);
                windows.push((window, counts));
            }
        }
    }

    /// A request of `route` arrived at `now_ms`.
    pub fn request(&self, watch: &Watch, route: RouteId, now_ms: u64) {
        self.count(route, now_ms / watch.window_ms.max(1), |c| c.requests += 1);
    }

    /// The upstream answered a request of `route` that arrived at
    /// `arrived_ms`; `latency_ms` when the clock was read at the answer.
    pub fn response(
        &self,
        watch: &Watch,
        route: RouteId,
        arrived_ms: u64,
        status: u16,
        latency_ms: Option<u64>,
    ) {
        self.count(route, arrived_ms / watch.window_ms.max(1), |c| {
            c.responses += 1;
            c.errors += u32::from(status >= 500);
            c.latency_ms = c.latency_ms.saturating_add(latency_ms.unwrap_or(0));
        });
    }

    fn take(&self, route: RouteId) -> Vec<(u64, Counts)> {
        let mut by_route = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        by_route
            .get_mut(usize::from(route))
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Puts counts a failed flush took back, for the next one.
    fn restore(&self, route: RouteId, windows: Vec<(u64, Counts)>) {
        for (window, counts) in windows {
            self.count(route, window, |c| c.add(&counts));
        }
    }
}

/// What a flush found.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Anomalies that began or ended, for the caller to report: exactly one
    /// worker sees each.
    pub changes: Vec<Change>,
    /// Per watched class: until when (Unix ms) its latest anomaly lasts,
    /// 0 for none, as the shared record says.
    pub anomalous_until: Vec<(RouteId, u64)>,
}

/// Adds this worker's counts to every watched class's shared record and
/// judges the windows that are complete. `retries` counts CAS conflicts.
pub fn flush(
    anomaly: &Anomaly,
    tallies: &Tallies,
    store: &dyn SharedStore,
    now_ms: u64,
    retries: &dyn Fn(),
) -> Result<Flushed, StoreError> {
    let mut flushed = Flushed::default();
    for (route, watch) in anomaly.watched() {
        let name_hash = anomaly
            .name_hashes
            .get(usize::from(route))
            .copied()
            .unwrap_or(0);
        let counts = tallies.take(route);
        match flush_route(watch, route, name_hash, &counts, store, now_ms, retries) {
            Ok((found, until)) => {
                flushed.changes.extend(found);
                flushed.anomalous_until.push((route, until));
            }
            Err(e) => {
                tallies.restore(route, counts);
                return Err(e);
            }
        }
    }
    Ok(flushed)
}

fn flush_route(
    watch: &Watch,
    route: RouteId,
    name_hash: u64,
    counts: &[(u64, Counts)],
    store: &dyn SharedStore,
    now_ms: u64,
    retries: &dyn Fn(),
) -> Result<(Vec<Change>, u64), StoreError> {
    let key = record_key(route);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            retries();
        }
        let (read, cas) = store.get(&key)?.unwrap_or_default();
        let mut record = Record::decode(&read)
            .filter(|r| r.name_hash == name_hash)
            .unwrap_or(Record {
                name_hash,
                ..Record::default()
            });
        let before = record.clone();
        let mut changes = Vec::new();
        record.settle(watch, route, now_ms, &mut changes);
        for (window, c) in counts {
            // Older windows are judged already: a late count is dropped.
            if let Some(slot) = window
                .checked_sub(record.base)
                .and_then(|i| record.open.get_mut(usize::try_from(i).ok()?))
            {
                slot.add(c);
            }
        }
        let until = record.until_ms.iter().copied().max().unwrap_or(0);
        if record == before {
            return Ok((changes, until));
        }
        match store.set(&key, &record.encode(), cas) {
            Ok(()) => return Ok((changes, until)),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

#[cfg(test)]
mod tests;
