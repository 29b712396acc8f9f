//! Counter identities and their Envoy stat names.
//!
//! Labels are packed into the stat name as `.label.value` pairs after a fixed
//! prefix, and Envoy's `stats_tags` (see `envoy/envoy.yaml`) turns them back
//! into Prometheus labels. Every label value comes from configuration or a
//! fixed enum, never from request data: cardinality stays bounded and no
//! secret can reach a metric.

use crate::config::{Mode, Policy};
use crate::routes::RouteId;
use crate::verdict::{Decision, Reason, Stage};

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
}

/// Reason codes use `.`, which separates stat-name segments; metrics use `_`.
fn metric_safe(text: &str) -> String {
    text.replace('.', "_")
}

impl Counter {
    pub fn stat_name(&self, policy: &Policy) -> String {
        match *self {
            Counter::Request { decision, route } => format!(
                "palisade_requests_total.decision.{}.route.{}",
                decision.as_str(),
                policy.routes.name(route)
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
                policy.routes.name(route)
            ),
            Counter::BanIssued { rule } => format!(
                "palisade_bans_total.rule.{}",
                policy
                    .rate_limits
                    .rules
                    .get(usize::from(rule))
                    .map_or("unknown", |r| r.name.as_str())
            ),
            Counter::CasRetry => "palisade_shared_data_cas_retries_total".to_string(),
            Counter::JwksFetch { provider, ok } => format!(
                "palisade_jwks_fetches_total.provider.{}.result.{}",
                policy
                    .auth
                    .providers
                    .get(usize::from(provider))
                    .map_or("unknown", |p| p.name.as_str()),
                if ok { "ok" } else { "failed" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_carry_only_configured_or_fixed_labels() {
        let policy = Policy::from_json(
            br#"{"routes": [{"name": "login", "prefix": "/login"}],
                 "rate_limits": {"rules": [{"name": "login-ip", "key": ["ip"], "capacity": 1, "refill": "none"}]}}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let finding = Counter::Finding {
            stage: Stage::RateLimit,
            reason: Reason::RateLimitExhausted,
            mode: Mode::Monitor,
            route: 0,
        };
        assert_eq!(
            finding.stat_name(&policy),
            "palisade_findings_total.stage.ratelimit.reason.rl_exhausted.mode.monitor.route.login"
        );
        let request = Counter::Request {
            decision: Decision::Throttle,
            route: 1,
        };
        assert_eq!(
            request.stat_name(&policy),
            "palisade_requests_total.decision.throttle.route.default"
        );
        assert_eq!(
            Counter::BanIssued { rule: 0 }.stat_name(&policy),
            "palisade_bans_total.rule.login-ip"
        );
    }
}
