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
    CasRetry,
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
            Counter::CasRetry => "palisade_shared_data_cas_retries_total".to_string(),
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
        }
    }
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
