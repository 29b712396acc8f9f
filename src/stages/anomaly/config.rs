//! The `anomaly` section: which route classes are watched, how long a
//! window is, how fast the baseline forgets, and how far from it a window
//! must be to count as a spike. `defaults` apply to every route class,
//! `routes.<class>` overrides them (`disable: true` stops watching one).

use super::FLUSH_GRACE_MS;
use crate::core::config_error::{err, ByName, ConfigError};
use crate::core::duration::Millis;
use crate::core::mode::string_enum;
use crate::core::routes::{RouteId, RouteTable};
use serde::Deserialize;

const DEFAULT_WINDOW_MS: u64 = 10_000;
const DEFAULT_BASELINE_WINDOWS: u32 = 30;
const DEFAULT_WARMUP_WINDOWS: u32 = 6;
const DEFAULT_DEVIATIONS: f64 = 4.0;
const DEFAULT_MIN_REQUESTS: u32 = 20;
const DEFAULT_HOLD_MS: u64 = 60_000;
/// A window shorter than the time counts take to reach shared data would
/// be judged before its counts are in.
const MIN_WINDOW_MS: u64 = FLUSH_GRACE_MS;
const MAX_WINDOW_MS: u64 = 3_600_000;

/// What the detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Requests per window, every request of the class (refused ones too).
    Rate,
    /// Share of upstream answers with a 5xx status.
    Errors,
    /// Mean time from the request's headers to the upstream's response headers.
    Latency,
}

string_enum!(Signal, "a signal: rate, errors or latency", {
    "rate" => Signal::Rate,
    "errors" => Signal::Errors,
    "latency" => Signal::Latency,
});

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Rate, Signal::Errors, Signal::Latency];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Rate => "rate",
            Signal::Errors => "errors",
            Signal::Latency => "latency",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How one route class is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    pub window_ms: u64,
    /// EWMA weight of the newest window: 2 / (baseline_windows + 1).
    pub alpha: f64,
    pub warmup_windows: u32,
    pub deviations: f64,
    pub min_requests: u32,
    pub signals: [bool; 3],
    pub hold_ms: u64,
    /// While an anomaly lasts, requests of the class take this many
    /// tokens of every rate-limit rule (its limits divided by it); 1: off.
    pub tighten_by: u32,
}

impl Watch {
    pub fn watches(&self, signal: Signal) -> bool {
        self.signals[signal.index()]
    }

    /// Whether upstream answers must be read (status, and the clock for latency).
    pub fn needs_responses(&self) -> bool {
        self.watches(Signal::Errors) || self.watches(Signal::Latency)
    }
}

/// The compiled `anomaly` section: a watch per route class, or none.
#[derive(Debug, Clone)]
pub struct Anomaly {
    by_route: Vec<Option<Watch>>,
    /// A stable hash of each class's name: a record written for another
    /// class at the same index (after a reload) starts over.
    pub name_hashes: Vec<u64>,
}

impl Anomaly {
    pub fn watch(&self, route: RouteId) -> Option<&Watch> {
        self.by_route.get(usize::from(route))?.as_ref()
    }

    /// Route ids with a watch.
    pub fn watched(&self) -> impl Iterator<Item = (RouteId, &Watch)> {
        self.by_route
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((RouteId::try_from(i).ok()?, w.as_ref()?)))
    }
}

/// How a route class is watched; every field left out keeps the section's
/// value (for `defaults`: the built-in default).
#[derive(Deserialize, Default, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    /// Stop watching this class.
    #[serde(default)]
    disable: Option<bool>,
    /// Length of one observation window (default 10s, at least 2s).
    #[serde(default)]
    window: Option<Millis>,
    /// Span of the baseline's exponential average, in windows (default 30).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 10000)))]
    baseline_windows: Option<u32>,
    /// Windows of traffic learned before the class can raise an anomaly (default 6).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 10000)))]
    warmup_windows: Option<u32>,
    /// How many standard deviations above the baseline is a spike (default 4).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1.0, max = 100.0)))]
    deviations: Option<f64>,
    /// Fewest requests (rate) or upstream answers (errors, latency) in a
    /// window for it to be judged (default 20).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    min_requests: Option<u32>,
    /// Signals watched (default all: rate, errors, latency).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1), extend("uniqueItems" = true)))]
    signals: Option<Vec<Signal>>,
    /// How long an anomaly lasts after its last spiking window (default 60s).
    #[serde(default)]
    hold: Option<Millis>,
    /// Divide the class's rate limits by this while an anomaly lasts on it
    /// (each request takes this many tokens); default 1, off.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    tighten_by: Option<u32>,
}

/// The `anomaly` section.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    /// How every route class is watched.
    #[serde(default)]
    defaults: RawWatch,
    /// Per route class name (`default` included): what differs from `defaults`.
    #[serde(default)]
    routes: ByName<RawWatch>,
}

impl RawWatch {
    fn overlaid(&self, over: &RawWatch) -> RawWatch {
        RawWatch {
            disable: over.disable.or(self.disable),
            window: over.window.or(self.window),
            baseline_windows: over.baseline_windows.or(self.baseline_windows),
            warmup_windows: over.warmup_windows.or(self.warmup_windows),
            deviations: over.deviations.or(self.deviations),
            min_requests: over.min_requests.or(self.min_requests),
            signals: over.signals.clone().or_else(|| self.signals.clone()),
            hold: over.hold.or(self.hold),
            tighten_by: over.tighten_by.or(self.tighten_by),
        }
    }

    /// `at(field)` is the JSON path of the object that set the field.
    fn compile(&self, at: &dyn Fn(&str) -> String) -> Result<Option<Watch>, ConfigError> {
        if self.disable == Some(true) {
            return Ok(None);
        }
        let window_ms = self.window.map_or(DEFAULT_WINDOW_MS, Millis::as_ms);
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
            return Err(err(
                at("window"),
                "between 2s and 1h (counts reach shared data on a 1s tick)",
            ));
        }
        let baseline = self.baseline_windows.unwrap_or(DEFAULT_BASELINE_WINDOWS);
        if !(1..=10_000).contains(&baseline) {
            return Err(err(at("baseline_windows"), "between 1 and 10000"));
        }
        let warmup_windows = self.warmup_windows.unwrap_or(DEFAULT_WARMUP_WINDOWS);
        if warmup_windows > 10_000 {
            return Err(err(at("warmup_windows"), "at most 10000"));
        }
        let deviations = self.deviations.unwrap_or(DEFAULT_DEVIATIONS);
        if !(1.0..=100.0).contains(&deviations) {
            return Err(err(at("deviations"), "between 1 and 100"));
        }
        let min_requests = self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
        if min_requests == 0 {
            return Err(err(at("min_requests"), "must be at least 1"));
        }
        let tighten_by = self.tighten_by.unwrap_or(1);
        if !(1..=100).contains(&tighten_by) {
            return Err(err(at("tighten_by"), "between 1 (off) and 100"));
        }
        let mut signals = [false; 3];
        match &self.signals {
            None => signals = [true; 3],
            Some(list) if list.is_empty() => {
                return Err(err(
                    at("signals"),
                    "must not be empty (use `disable: true` to stop watching)",
                ))
            }
            Some(list) => list.iter().for_each(|s| signals[s.index()] = true),
        }
        Ok(Some(Watch {
            window_ms,
            alpha: 2.0 / (f64::from(baseline) + 1.0),
            warmup_windows,
            deviations,
            min_requests,
            signals,
            hold_ms: self.hold.map_or(DEFAULT_HOLD_MS, Millis::as_ms),
            tighten_by,
        }))
    }
}

/// A stable (across processes and versions) hash of a route class name.
fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(name.as_bytes());
    h.finish()
}

/// Checks and compiles the `anomaly` section (`None`: absent, off).
pub fn compile(
    raw: Option<RawAnomaly>,
    routes: &RouteTable,
) -> Result<Option<Anomaly>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let defaults = raw.defaults.compile(&|f| format!("anomaly.defaults.{f}"))?;
    let count = routes.len_with_default();
    let mut by_route = vec![defaults; count];
    for (name, over) in &raw.routes.0 {
        let Some(id) = routes.id_of(name) else {
            return Err(err(
                format!("anomaly.routes.{name}"),
                format!(
                    "no route class named `{name}` (define it under `routes`, or use `default`)"
                ),
            ));
        };
        let at = |f: &str| format!("anomaly.routes.{name}.{f}");
        let watch = raw.defaults.overlaid(over).compile(&at)?;
        if let Some(slot) = by_route.get_mut(usize::from(id)) {
            *slot = watch;
        }
    }
    let name_hashes = (0..count)
        .map(|i| RouteId::try_from(i).map_or(0, |id| name_hash(routes.name(id))))
        .collect();
    Ok(Some(Anomaly {
        by_route,
        name_hashes,
    }))
}
