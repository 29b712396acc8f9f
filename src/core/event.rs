//! The JSON security events: one per request with findings, one per
//! anomaly that begins or ends. Versioned (`schema`), timestamped.

use crate::core::names::Names;
use crate::core::request::Facts;
use crate::core::routes::RouteId;
use crate::core::verdict::{Finding, Stage};
use siphasher::sip128::SipHasher13;
use std::hash::Hasher;

/// Version of the event schema (README, Security events). Fields may be
/// added within a version; one that changes meaning or goes away bumps it.
pub const SCHEMA: u32 = 1;

/// One JSON security event for a request with findings (`findings` not
/// empty): the one that decided (the first enforced, else the first) at
/// the top, every finding in `findings`. Only configuration names, enum
/// strings, the client address, keyed hashes and a validated request id
/// are written: never a header value, token or user name. `action`: `deny`,
/// `challenge` or `monitor` for a request's verdict, `flag` for what an
/// upstream's answer showed (a failed login), which the next request is
/// held to. `now_ms`: when (Unix ms), if the host could tell.
pub fn request(
    facts: &Facts<'_>,
    findings: &[Finding],
    action: &str,
    now_ms: Option<u64>,
    names: &dyn Names,
    seed: &[u8; 16],
) {
    let Some(primary) = findings
        .iter()
        .find(|f| f.enforced())
        .or_else(|| findings.first())
    else {
        return;
    };
    let rule = |f: &Finding| {
        f.rule.map(|r| match f.stage {
            Stage::Reputation => names.list_name(r).unwrap_or(""),
            _ => names.rule_name(r).unwrap_or(""),
        })
    };
    let mut reasons: Vec<&str> = Vec::with_capacity(findings.len());
    for f in findings {
        if !reasons.contains(&f.reason.as_str()) {
            reasons.push(f.reason.as_str());
        }
    }
    let detail: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let mut entry = serde_json::json!({
                "stage": f.stage.as_str(),
                "reason": f.reason.as_str(),
                "mode": f.mode.as_str(),
                "rule": rule(f),
            });
            // Where a request broke the API document: names from the
            // document and JSON pointers, never a value.
            if let (Some(d), Some(fields)) = (&f.detail, entry.as_object_mut()) {
                fields.insert("operation".into(), d.operation.clone().into());
                fields.insert("location".into(), d.location.clone().into());
                fields.insert("message".into(), d.message.into());
            }
            entry
        })
        .collect();
    let event = serde_json::json!({
        "schema": SCHEMA,
        "event": "palisade.request",
        "ts": now_ms.map(rfc3339),
        "action": action,
        "reason": primary.reason.as_str(),
        "stage": primary.stage.as_str(),
        "rule": rule(primary),
        "reasons": reasons,
        "findings": detail,
        "route": names.route_name(facts.route),
        "client_ip": facts.client_ip.map(|ip| ip.to_string()),
        "user_hash": facts.user.as_deref().map(|u| short_hash(seed, u)),
        // Already a keyed hash: eight hex digits correlate, reveal nothing.
        "username_hash": facts.username.map(|u| format!("{:08x}", (u >> 96) as u32)),
        "key_id": facts.key_id,
        "fingerprint": facts.fingerprint.map(|id| format!("{id:016x}")),
        "bot_score": facts.bot.as_ref().map(|b| b.score),
        "bot_reasons": facts.bot.as_ref().map(|b| &b.reasons),
        "country": facts.country.as_ref().and_then(|c| std::str::from_utf8(c).ok()),
        "device": facts.device,
        "request_id": facts.request_id,
    });
    log::warn!("{event}");
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-03T07:00:18.123Z`), the
/// form SIEMs parse without configuration.
pub fn rfc3339(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
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
pub fn anomaly(change: &AnomalyChange, now_ms: u64, names: &dyn Names) {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let event = serde_json::json!({
        "schema": SCHEMA,
        "event": "palisade.anomaly",
        "ts": rfc3339(now_ms),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_281_218_123), "2026-12-03T07:00:18.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
