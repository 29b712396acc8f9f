//! The authenticate and authorize stages: API keys and JWTs
//! ([`credentials`], [`jwt`]), remote key sets ([`jwks`]), roles, scopes
//! and MFA per route, refresh-token reuse ([`refresh`]), and the `jwt`,
//! `api_keys` and `authorization` sections ([`config`]).

pub mod config;
pub mod credentials;
pub mod jwks;
pub mod jwt;
pub mod refresh;

use crate::core::metrics::Counter;
use crate::core::mode::{FailureMode, Mode};
use crate::core::remote::FetchPlan;
use crate::core::request::{Facts, HeaderMap};
use crate::core::stage::{Ctx, Services};
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::{Connection, SharedStore};
use credentials::{Auth, AuthState, AuthzPolicy};
use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::Mutex;

/// Authentication and authorization on a route that requires a
/// credential: the principal becomes the `user` key, and its identity
/// headers (for the upstream) are returned.
#[allow(clippy::too_many_arguments)]
pub fn authenticate(
    auth: &Auth,
    state: &Mutex<AuthState>,
    policy: &AuthzPolicy,
    headers: &HeaderMap<'_>,
    facts: &mut Facts<'_>,
    ctx: &Ctx<'_>,
    connection: &dyn Connection,
    findings: &mut Vec<Finding>,
) -> Option<Vec<(String, String)>> {
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        findings.push(ctx.host_failure("clock", Stage::Authenticate));
        return None;
    };
    let certificate_sha256 = || connection.peer_certificate_sha256();
    let peer = credentials::Peer {
        device: facts.device.as_deref(),
        certificate_sha256: &certificate_sha256,
    };
    match credentials::check(auth, state, policy, headers, now_ms, ctx.host.store, &peer) {
        Ok(principal) => {
            facts.user = Some(Cow::Owned(principal.user_key));
            return Some(principal.headers);
        }
        Err(refusal)
            if refusal.reason == Reason::JwtNoKeys && auth.without_keys == FailureMode::Allow =>
        {
            findings.push(Finding::new(
                Stage::Authenticate,
                Reason::JwtNoKeys,
                Mode::Monitor,
            ));
        }
        Err(refusal) => {
            let reason = refusal.reason;
            let (stage, mode) = if reason.status() == 403 {
                (Stage::Authorize, auth.authz_mode)
            } else {
                (Stage::Authenticate, auth.jwt_mode)
            };
            // Known but not authorized: the event can correlate the user.
            if let Some(key) = refusal.user_key {
                facts.user = Some(Cow::Owned(key));
            }
            findings.push(Finding::new(stage, reason, mode));
        }
    }
    None
}

/// The bearer token of an authenticated request as a keyed hash: the
/// `token` key of rate limits (never the token itself).
pub fn token_key(auth: &Auth, headers: &HeaderMap<'_>, ctx: &Ctx<'_>) -> Option<u128> {
    let token = credentials::bearer_token(&auth.sources, headers).ok()?;
    let hash = ctx.keyed_hash(|h| {
        h.write(b"token");
        h.write(token.as_bytes());
    });
    Some(hash.as_u128())
}

/// Called from the root context's tick: installs key sets other
/// workers fetched, and returns the fetches this worker won.
pub fn jwks_due(
    auth: &Auth,
    state: &Mutex<AuthState>,
    store: &dyn SharedStore,
    now_ms: u64,
) -> Vec<FetchPlan> {
    let mut plans = Vec::new();
    for (index, spec) in auth.providers.iter().enumerate() {
        let Some(remote) = &spec.remote else {
            continue;
        };
        let have = credentials::lock(state).generation(index).unwrap_or(0);
        let poll = match jwks::poll(store, remote, have, now_ms) {
            Ok(poll) => poll,
            Err(e) => {
                log::warn!(
                    "palisade: cannot read the shared key set of provider `{}` ({e:?})",
                    spec.name
                );
                continue;
            }
        };
        if let Some((generation, keys)) = poll.newer {
            credentials::lock(state).install(index, keys, generation);
        }
        if poll.fetch {
            plans.push(remote.plan(index));
        }
    }
    plans
}

/// Skipped entries of one fetched key set named in the log.
const MAX_SKIPPED_LOGGED: usize = 8;

/// A fetch finished: `Ok(body)` for a 200 response, `Err(why)` otherwise
/// (status, transport failure). A set with at least one usable key
/// replaces the provider's keys on every worker; anything else keeps the
/// last good set.
pub fn jwks_fetched(
    auth: &Auth,
    state: &Mutex<AuthState>,
    provider: usize,
    result: Result<&[u8], String>,
    host: &Services<'_>,
) {
    let Some(spec) = auth.providers.get(provider) else {
        return;
    };
    let Some(remote) = &spec.remote else {
        return;
    };
    let counter = |ok| Counter::JwksFetch {
        provider: u8::try_from(provider).unwrap_or(u8::MAX),
        ok,
    };
    let body = match result {
        Ok(body) => body,
        Err(why) => {
            log::warn!(
                "palisade: JWKS fetch for provider `{}` failed: {why}; the last good key set stays in use",
                spec.name
            );
            return host.metrics.increment(counter(false));
        }
    };
    let (keys, errors) = jwt::Jwks::parse(body);
    // A hostile or broken key set may hold a hundred thousand bad entries:
    // name the first few, count the rest, so one fetch is a few log lines.
    for e in errors.iter().take(MAX_SKIPPED_LOGGED) {
        log::warn!(
            "palisade: provider `{}`: JWKS entry skipped: {e}",
            spec.name
        );
    }
    if errors.len() > MAX_SKIPPED_LOGGED {
        log::warn!(
            "palisade: provider `{}`: {} more JWKS entries skipped",
            spec.name,
            errors.len() - MAX_SKIPPED_LOGGED
        );
    }
    if keys.is_empty() {
        log::warn!(
            "palisade: JWKS of provider `{}` has no usable key; the last good key set stays in use",
            spec.name
        );
        return host.metrics.increment(counter(false));
    }
    let Some(now_ms) = host.clock.now_ms() else {
        log::warn!(
            "palisade: no clock to stamp the key set of provider `{}`; the last good key set stays in use",
            spec.name
        );
        return host.metrics.increment(counter(false));
    };
    match jwks::store_fetched(host.store, remote, now_ms, body) {
        Ok(generation) => {
            log::info!(
                "palisade: provider `{}`: fetched key set generation {generation} ({} keys)",
                spec.name,
                keys.len()
            );
            credentials::lock(state).install(provider, keys, generation);
            host.metrics.increment(counter(true));
        }
        Err(e) => {
            log::warn!(
                "palisade: cannot share the key set of provider `{}` ({e:?})",
                spec.name
            );
            host.metrics.increment(counter(false));
        }
    }
}
