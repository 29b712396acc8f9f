//! Counter identities, their Envoy stat names, and the counter sink.
//!
//! Labels are packed into the stat name as `.label.value` pairs after a fixed
//! prefix, and Envoy's `stats_tags` (see `envoy/envoy.yaml`) turns them back
//! into Prometheus labels. Every label value comes from configuration or a
//! fixed enum, never from request data: cardinality stays bounded and no
//! secret can reach a metric.

use crate::core::mode::Mode;
use crate::core::names::Names;
use crate::core::routes::RouteId;
use crate::core::verdict::{Decision, Reason, Stage};
use crate::state::host::CasRetries;
use crate::state::occupancy::Occupancy;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Request {
        decision: Decision,
        route: RouteId,
    },
    Finding {
        stage: Stage,
        reason: Reason,
        mode: Mode,
        route: RouteId,
    },
    BanIssued {
        rule: u8,
    },
    /// The upstream answered a login as failed (`login.failure_statuses`).
    FailedLogin {
        route: RouteId,
    },
    CasRetry,
    /// An anomaly began on a route class (`signal`: rate, errors, latency).
    Anomaly {
        route: RouteId,
        signal: &'static str,
    },
    /// A remote JWK Set fetch finished (`ok`: it brought usable keys).
    JwksFetch {
        provider: u8,
        ok: bool,
    },
    /// A remote reputation list fetch finished (`ok`: the list replaced the last one).
    ListFetch {
        list: u8,
        ok: bool,
    },
    /// A call to the rate-limit service (global mode) ended: `ok` (every
    /// descriptor within its limit), `over`, or `error` (no usable answer).
    GlobalCall {
        outcome: &'static str,
    },
}

/// Reason codes use `.`, which separates stat-name segments; metrics use `_`.
fn metric_safe(text: &str) -> String {
    text.replace('.', "_")
}

impl Counter {
    /// The stat name, with configured names looked up in `names` (the
    /// policy: see `config`).
    pub fn stat_name(&self, names: &dyn Names) -> String {
        match *self {
            Counter::Request { decision, route } => format!(
                "palisade_requests_total.decision.{}.route.{}",
                decision.as_str(),
                names.route_name(route)
            ),
            Counter::Finding {
                stage,
                reason,
                mode,
                route,
            } => format!(
                "palisade_findings_total.stage.{}.reason.{}.mode.{}.route.{}",
                stage.as_str(),
                metric_safe(reason.as_str()),
                mode.as_str(),
                names.route_name(route)
            ),
            Counter::BanIssued { rule } => format!(
                "palisade_bans_total.rule.{}",
                names.rule_name(rule).unwrap_or("unknown")
            ),
            Counter::FailedLogin { route } => format!(
                "palisade_failed_logins_total.route.{}",
                names.route_name(route)
            ),
            Counter::CasRetry => "palisade_shared_data_cas_retries_total".to_string(),
            Counter::Anomaly { route, signal } => format!(
                "palisade_anomalies_total.route.{}.signal.{signal}",
                names.route_name(route)
            ),
            Counter::JwksFetch { provider, ok } => format!(
                "palisade_jwks_fetches_total.provider.{}.result.{}",
                names.provider_name(provider).unwrap_or("unknown"),
                if ok { "ok" } else { "failed" }
            ),
            Counter::ListFetch { list, ok } => format!(
                "palisade_list_fetches_total.list.{}.result.{}",
                names.list_name(list).unwrap_or("unknown"),
                if ok { "ok" } else { "failed" }
            ),
            Counter::GlobalCall { outcome } => {
                format!("palisade_global_calls_total.result.{outcome}")
            }
        }
    }
}

/// The gauges of one slot table: its used slots and its size, by stat name.
pub fn table_gauges(occupancy: &Occupancy) -> [(String, u64); 2] {
    [
        (
            format!("palisade_table_slots_used.table.{}", occupancy.table),
            occupancy.used,
        ),
        (
            format!("palisade_table_slots.table.{}", occupancy.table),
            occupancy.slots,
        ),
    ]
}

/// Counter sink.
pub trait Metrics {
    fn increment(&self, counter: Counter);
}

impl<M: Metrics + ?Sized> CasRetries for M {
    fn cas_retry(&self) {
        self.increment(Counter::CasRetry);
    }
}

/// Increments held in the VM until [`CounterBatch::drain`] hands them to
/// the host: one host call per counter per flush instead of one per
/// increment. What the host shows lags by up to one flush period.
#[derive(Default)]
pub struct CounterBatch {
    /// Few counters move between two flushes: a list beats a hash map.
    pending: RefCell<Vec<(Counter, u64)>>,
}

impl CounterBatch {
    /// The pending counts, each counter once; the batch is empty after.
    pub fn drain(&self) -> Vec<(Counter, u64)> {
        std::mem::take(&mut *self.pending.borrow_mut())
    }
}

impl Metrics for CounterBatch {
    fn increment(&self, counter: Counter) {
        let mut pending = self.pending.borrow_mut();
        match pending.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, n)) => *n += 1,
            None => pending.push((counter, 1)),
        }
    }
}

/// Counts increments per counter, for tests.
#[derive(Default)]
pub struct MemoryMetrics(Mutex<HashMap<Counter, u64>>);

impl MemoryMetrics {
    pub fn get(&self, counter: &Counter) -> u64 {
        self.0
            .lock()
            .map_or(0, |m| m.get(counter).copied().unwrap_or(0))
    }
}

impl Metrics for MemoryMetrics {
    fn increment(&self, counter: Counter) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(counter).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sums_each_counter_once_and_empties_on_drain() {
        let batch = CounterBatch::default();
        let ban = |rule| Counter::BanIssued { rule };
        for counter in [ban(1), ban(2), ban(1), Counter::CasRetry, ban(1)] {
            batch.increment(counter);
        }
        let mut drained = batch.drain();
        drained.sort_by_key(|(c, _)| format!("{c:?}"));
        assert_eq!(drained, [(ban(1), 3), (ban(2), 1), (Counter::CasRetry, 1)]);
        assert!(batch.drain().is_empty());
        batch.increment(ban(2));
        assert_eq!(batch.drain(), [(ban(2), 1)]);
    }
}
