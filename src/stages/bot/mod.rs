//! The bot stage: a client fingerprint, signals of automation from the
//! headers ([`signals`]), a logistic score over them ([`score`]), and what
//! the thresholds make of it: allow, challenge or deny.
//!
//! It runs before authentication (a headless scraper costs no
//! cryptography), except on routes that take a credential when
//! `allow.authenticated` is on: there the decision waits for
//! authentication, which a verified client passes whatever its score.

pub mod challenge;
pub mod config;
pub mod fingerprint;
pub mod score;
pub mod signals;

#[cfg(test)]
pub(crate) mod fixtures;

use crate::core::request::{BotSummary, Facts, HeaderMap};
use crate::core::verdict::{Finding, Reason, Stage};
use config::{Bot, Events};
use score::Score;
use signals::{Signal, Strengths};

/// Headers palisade sets for the upstream; a client's copies are removed.
pub const FINGERPRINT_HEADER: &str = "x-palisade-fingerprint";
pub const SCORE_HEADER: &str = "x-palisade-bot-score";
pub const REASONS_HEADER: &str = "x-palisade-bot-reasons";
pub const OWNED_HEADERS: [&str; 3] = [FINGERPRINT_HEADER, SCORE_HEADER, REASONS_HEADER];

/// The request's fingerprint id, from its headers and the trusted JA4
/// header when one is configured.
pub fn identify(ja4_header: Option<&str>, headers: &HeaderMap<'_>, facts: &mut Facts<'_>) {
    let ja4 = ja4_header.and_then(|h| headers.get(h));
    facts.fingerprint = Some(fingerprint::fingerprint(headers, ja4));
}

/// One request's assessment, kept until its decision is taken.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub strengths: Strengths,
    pub score: Score,
}

/// Whether the client address is on the allowlist: such a request is not
/// scored at all.
pub fn allowlisted(bot: &Bot, facts: &Facts<'_>) -> bool {
    facts
        .client_ip
        .is_some_and(|ip| bot.allow_cidrs.iter().any(|c| c.contains(ip)))
}

/// Scores one request and writes the summary into `facts`.
pub fn assess(bot: &Bot, headers: &HeaderMap<'_>, facts: &mut Facts<'_>) -> Assessment {
    let mut strengths = Strengths::default();
    signals::header_signals(headers, &mut strengths);
    let score = bot.model.score(&strengths);
    facts.bot = Some(BotSummary {
        score: score.value,
        reasons: score.reasons.iter().map(|s| s.reason()).collect(),
    });
    Assessment { strengths, score }
}

/// The finding the thresholds make of a score, if any.
pub fn decide(bot: &Bot, assessment: &Assessment) -> Option<Finding> {
    let value = assessment.score.value;
    let reason = if bot.deny_at.is_some_and(|t| value >= t) {
        Reason::BotDeny
    } else if bot.challenge_at.is_some_and(|t| value >= t) {
        Reason::BotChallenge
    } else {
        return None;
    };
    Some(Finding::new(Stage::Bot, reason, bot.mode))
}

/// The `palisade.bot` line of `events: all`: every scored request with its
/// signals, the labelled traffic `make train` learns from. Only the
/// fingerprint id, the address, names and numbers: no header value.
pub fn log_assessment(
    bot: &Bot,
    facts: &Facts<'_>,
    route: &str,
    assessment: &Assessment,
    action: &str,
) {
    if bot.events != Events::All {
        return;
    }
    let signals: serde_json::Map<String, serde_json::Value> = Signal::ALL
        .iter()
        .map(|s| (s.name().to_string(), assessment.strengths.get(*s).into()))
        .collect();
    let event = serde_json::json!({
        "event": "palisade.bot",
        "request_id": facts.request_id,
        "route": route,
        "client_ip": facts.client_ip.map(|ip| ip.to_string()),
        "fingerprint": facts.fingerprint.map(fingerprint::text),
        "score": assessment.score.value,
        "action": action,
        "signals": signals,
    });
    log::warn!("{event}");
}

/// Headers for the upstream: fingerprint, score and reasons.
pub fn upstream_headers(facts: &Facts<'_>, out: &mut Vec<(String, String)>) {
    if let Some(id) = facts.fingerprint {
        out.push((FINGERPRINT_HEADER.to_string(), fingerprint::text(id)));
    }
    if let Some(summary) = &facts.bot {
        out.push((SCORE_HEADER.to_string(), summary.score.to_string()));
        out.push((REASONS_HEADER.to_string(), summary.reasons.join(",")));
    }
}
