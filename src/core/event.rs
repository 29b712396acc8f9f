//! The JSON security event written for every finding.

use crate::core::names::Names;
use crate::core::request::Facts;
use crate::core::routes::RouteId;
use crate::core::verdict::{Finding, Stage};
use siphasher::sip128::SipHasher13;
use std::hash::Hasher;

/// One JSON security event per finding. Only configuration names, enum
/// strings, the client address and a validated request id are written:
/// never a header value, token or user name. `action`: `deny` or
/// `monitor` for a request's verdict, `flag` for what an upstream's answer
/// showed (a failed login), which the next request is held to.
pub fn log(facts: &Facts<'_>, finding: &Finding, action: &str, names: &dyn Names, seed: &[u8; 16]) {
    let event = serde_json::json!({
        "event": "palisade.finding",
        "action": action,
        "reason": finding.reason.as_str(),
        "stage": finding.stage.as_str(),
        "route": names.route_name(facts.route),
        "rule": finding.rule.map(|r| match finding.stage {
            Stage::Reputation => names.list_name(r).unwrap_or(""),
            _ => names.rule_name(r).unwrap_or(""),
        }),
        "client_ip": facts.client_ip.map(|ip| ip.to_string()),
        "user_hash": facts.user.as_deref().map(|u| short_hash(seed, u)),
        // Already a keyed hash: eight hex digits correlate, reveal nothing.
        "username_hash": facts.username.map(|u| format!("{:08x}", (u >> 96) as u32)),
        "key_id": facts.key_id,
        "fingerprint": facts.fingerprint.map(|id| format!("{id:016x}")),
        "bot_score": facts.bot.as_ref().map(|b| b.score),
        "bot_reasons": facts.bot.as_ref().map(|b| &b.reasons),
        "country": facts.country.as_ref().and_then(|c| std::str::from_utf8(c).ok()),
        "request_id": facts.request_id,
    });
    log::warn!("{event}");
}

/// What the anomaly detector found when it judged a window: an anomaly
/// began (`started`) or ended on a route class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyChange {
    pub route: RouteId,
    /// `rate`, `errors` or `latency`.
    pub signal: &'static str,
    pub started: bool,
    /// The window's value, the baseline before it, and the deviation the
    /// spike was measured in.
    pub observed: f64,
    pub baseline: f64,
    pub sigma: f64,
    /// Start of the window judged (Unix ms).
    pub window_start_ms: u64,
}

/// One JSON event per anomaly that begins or ends: numbers and names only.
pub fn anomaly(change: &AnomalyChange, names: &dyn Names) {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let event = serde_json::json!({
        "event": "palisade.anomaly",
        "action": if change.started { "start" } else { "end" },
        "reason": format!("anomaly.{}", change.signal),
        "route": names.route_name(change.route),
        "signal": change.signal,
        "observed": round(change.observed),
        "baseline": round(change.baseline),
        "deviation": round(change.sigma),
        "window_start_ms": change.window_start_ms,
    });
    log::warn!("{event}");
}

/// A short keyed hash that correlates events of one user without
/// revealing who it is.
fn short_hash(seed: &[u8; 16], value: &[u8]) -> String {
    let mut h = SipHasher13::new_with_key(seed);
    h.write(b"user");
    h.write(value);
    format!("{:08x}", h.finish() >> 32)
}
