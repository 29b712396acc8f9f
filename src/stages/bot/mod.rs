//! The bot stage: a client fingerprint, signals of automation from the
//! headers ([`signals`]), a logistic score over them ([`score`]), and what
//! the thresholds make of it: allow, challenge or deny.
//!
//! It runs before authentication (a headless scraper costs no
//! cryptography), except on routes that verify a credential or a signature
//! when `allow.authenticated` is on: there the decision waits for the
//! verification, which a verified client passes whatever its score.

pub mod behaviour;
pub mod challenge;
pub mod config;
pub mod fingerprint;
pub mod score;
pub mod signals;

#[cfg(test)]
pub(crate) mod fixtures;

use crate::core::request::{BotSummary, Facts, HeaderMap};
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, LocalResponse, Reason, Stage};
use challenge::Binding;
use config::{Bot, ChallengeSettings, Events};
use score::Score;
use signals::{Signal, Strengths};
use std::hash::Hasher;
use std::net::IpAddr;

/// Headers palisade sets for the upstream; a client's copies are removed.
pub const FINGERPRINT_HEADER: &str = "x-palisade-fingerprint";
pub const SCORE_HEADER: &str = "x-palisade-bot-score";
pub const REASONS_HEADER: &str = "x-palisade-bot-reasons";
pub const OWNED_HEADERS: [&str; 4] = [
    FINGERPRINT_HEADER,
    SCORE_HEADER,
    REASONS_HEADER,
    // A challenge solution is palisade's business, not the upstream's.
    challenge::SOLUTION_HEADER,
];

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
    /// `Set-Cookie` values for the response: a pass earned by a solution
    /// on this request, and the spent solution cookie cleared.
    pub set_cookies: Vec<String>,
}

/// Whether the client address is on the allowlist: such a request is not
/// scored at all.
pub fn allowlisted(bot: &Bot, facts: &Facts<'_>) -> bool {
    facts
        .client_ip
        .is_some_and(|ip| bot.allow_cidrs.iter().any(|c| c.contains(ip)))
}

/// Scores one request and writes the summary into `facts`.
pub fn assess(
    bot: &Bot,
    headers: &HeaderMap<'_>,
    facts: &mut Facts<'_>,
    ctx: &Ctx<'_>,
    findings: &mut Vec<Finding>,
) -> Assessment {
    let mut strengths = Strengths::default();
    signals::header_signals(headers, &mut strengths);
    if bot.observes_behaviour() {
        if let Some(failure) = observe(bot, headers, facts, ctx, &mut strengths) {
            findings.push(failure);
        }
    }
    let mut set_cookies = Vec::new();
    if let Some(settings) = &bot.challenge {
        if proof(settings, headers, facts, ctx, &mut set_cookies) {
            strengths.set(Signal::ChallengePassed, 1.0);
        }
    }
    let score = bot.model.score(&strengths);
    facts.bot = Some(BotSummary {
        score: score.value,
        reasons: score.reasons.iter().map(|s| s.reason()).collect(),
    });
    Assessment {
        strengths,
        score,
        set_cookies,
    }
}

/// The behavioural signals of the client (fingerprint and address prefix):
/// one shared-data round trip, one more on routes that flows name. A failed
/// clock or store is a finding (`failure_mode` decides).
fn observe(
    bot: &Bot,
    headers: &HeaderMap<'_>,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
    strengths: &mut Strengths,
) -> Option<Finding> {
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        return Some(ctx.host_failure("clock", Stage::Bot));
    };
    let client = ctx.keyed_hash(|h| {
        h.write(b"bot client");
        h.write_u64(facts.fingerprint.unwrap_or_default());
        match facts.ip_key {
            Some(IpAddr::V4(ip)) => h.write(&ip.octets()),
            Some(IpAddr::V6(ip)) => h.write(&ip.octets()),
            None => h.write(b"unknown"),
        }
    });
    let path = headers.get(":path").unwrap_or_default();
    let (store, metrics) = (ctx.host.store, ctx.host.metrics);
    match behaviour::observe(
        &bot.behaviour,
        client,
        facts.route,
        path,
        now_ms,
        store,
        metrics,
    ) {
        Ok(seen) => {
            strengths.set(Signal::MachineTiming, seen.machine_timing);
            strengths.set(Signal::SequentialIds, seen.sequential_ids);
            strengths.set(Signal::DistinctPaths, seen.distinct_paths);
            strengths.set(Signal::Flow, seen.flow);
            None
        }
        Err(error) => Some(ctx.store_failure("bot behaviour", Stage::Bot, error)),
    }
}

/// Passes, and solutions, looked at per request: each costs a MAC (and a
/// solution a SHA-256), so a request cannot make palisade check hundreds.
const MAX_PROOFS: usize = 4;

/// What challenges and passes are bound to: this client's fingerprint and
/// address prefix.
fn binding(facts: &Facts<'_>) -> Binding {
    Binding {
        fingerprint: facts.fingerprint.unwrap_or_default(),
        ip_key: facts.ip_key,
    }
}

/// Whether the request proves a solved challenge: a valid pass, or a valid
/// solution, which earns a pass (added to `set_cookies`). Stateless: the
/// proofs are checked by their MAC, binding and expiry alone.
fn proof(
    settings: &ChallengeSettings,
    headers: &HeaderMap<'_>,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
    set_cookies: &mut Vec<String>,
) -> bool {
    // A browser may hold a stale cookie of the same name (another path or
    // domain) before the current one: a few of each are tried.
    let solutions = headers
        .get(challenge::SOLUTION_HEADER)
        .into_iter()
        .chain(headers.cookies(challenge::SOLUTION_COOKIE))
        .take(MAX_PROOFS);
    let mut passes = headers
        .cookies(challenge::PASS_COOKIE)
        .take(MAX_PROOFS)
        .peekable();
    let mut solutions = solutions.peekable();
    if solutions.peek().is_none() && passes.peek().is_none() {
        return false;
    }
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        return false;
    };
    let (key, binding, now_s) = (&settings.key, binding(facts), now_ms / 1000);
    if passes.any(|p| challenge::verify_pass(key, binding, now_s, p).is_ok()) {
        return true;
    }
    let solved = solutions.any(
        |s| match challenge::verify_solution(key, binding, now_s, s) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("palisade: challenge solution refused: {}", e.as_str());
                false
            }
        },
    );
    if !solved {
        return false;
    }
    let pass = challenge::issue_pass(key, binding, now_s, settings.pass_ttl_s);
    let secure = headers.get(":scheme") == Some(b"https");
    set_cookies.push(challenge::pass_cookie(&pass, settings.pass_ttl_s, secure));
    if headers.get(challenge::SOLUTION_HEADER).is_none() {
        set_cookies.push(format!(
            "{}=; Max-Age=0; Path=/; SameSite=Lax",
            challenge::SOLUTION_COOKIE
        ));
    }
    true
}

/// The challenge a request gets instead of the upstream: the page for a
/// browser navigating, JSON for anything else. `None` without a clock.
pub fn challenge_response(
    bot: &Bot,
    headers: &HeaderMap<'_>,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
) -> Option<LocalResponse> {
    let settings = bot.challenge.as_ref()?;
    let now_ms = facts.now_ms(ctx.host.clock)?;
    // Unpredictable without the seed, different for every request.
    let salt = ctx
        .keyed_hash(|h| {
            h.write(b"challenge salt");
            h.write_u64(now_ms);
            h.write(facts.request_id.as_bytes());
            h.write_u64(facts.fingerprint.unwrap_or_default());
        })
        .h1;
    let issued = challenge::issue(
        &settings.key,
        binding(facts),
        now_ms / 1000,
        settings.ttl_s,
        settings.difficulty,
        salt,
    );
    let wants_page = headers.get(":method") == Some(b"GET")
        && headers
            .get_str("accept")
            .is_some_and(|a| a.contains("text/html"));
    let mut response_headers = vec![("cache-control", "no-store".to_string())];
    let body = if wants_page {
        response_headers.push(("content-type", "text/html; charset=utf-8".to_string()));
        response_headers.push(("content-security-policy", challenge::page_csp()));
        challenge::page(&issued)
    } else {
        response_headers.push(("content-type", "application/json".to_string()));
        challenge::json_body(&issued, facts.request_id)
    };
    Some(LocalResponse {
        status: Reason::BotChallenge.status(),
        headers: response_headers,
        body,
        security_headers: Vec::new(),
    })
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
    // Inserted one by one: collecting into the map would link a slice
    // sort for this one type (about 4 KB of wasm).
    let mut signals = serde_json::Map::new();
    for s in Signal::ALL {
        signals.insert(s.name().to_string(), assessment.strengths.get(s).into());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mode::Mode;
    use crate::core::routes::RouteTable;

    /// The scores README quotes for the shipped model, over HTTPS.
    #[test]
    fn shipped_model_scores_as_documented() {
        let Ok(Some(bot)) = config::compile_bot(
            serde_json::from_str("{}").ok(),
            Mode::Enforce,
            &RouteTable::new(Vec::new()),
        ) else {
            unreachable!("the empty bot section compiles")
        };
        for (set, want) in [
            ("chrome_windows_navigate", 2),
            ("firefox_linux_navigate", 2),
            ("safari_macos_navigate", 2),
            ("api_client_sdk", 2),
            ("curl", 73),
            ("script_as_chrome", 99),
            ("headless_chrome", 97),
        ] {
            let headers = fixtures::headers(set);
            let mut pairs = headers.pairs();
            pairs.push((b":scheme", b"https"));
            let mut strengths = Strengths::default();
            signals::header_signals(&HeaderMap::from_pairs(pairs), &mut strengths);
            assert_eq!(bot.model.score(&strengths).value, want, "{set}");
        }
    }
}
