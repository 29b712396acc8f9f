//! Refresh-token reuse (OAuth 2.0 Security BCP): on token endpoints
//! (`jwt.refresh_tokens`), the refresh token of each `refresh_token` grant
//! is remembered in a shared table, and a second presentation is refused.
//! The grant is read from the body, so this is the auth stage's part of
//! the body phase; a query that carries token parameters is refused with
//! the headers.

use crate::core::body;
use crate::core::cluster::{Counted, Descriptor, Scope};
use crate::core::mode::Mode;
use crate::core::request::{Facts, HeaderMap};
use crate::core::routes::RouteId;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Reason, Stage};
use crate::stages::auth::credentials::Auth;
use crate::state::replay::{self, Sighting};
use crate::state::slots;
use siphasher::sip128::SipHasher13;
use std::hash::Hasher;

/// Whether the body is multipart or content-encoded: palisade cannot read
/// its parameters. Any other body is read as a form and, when it is a JSON
/// object, as JSON, whatever its declared `Content-Type`.
pub fn body_is_opaque(headers: &HeaderMap<'_>) -> bool {
    let encoded = headers
        .get_str("content-encoding")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let multipart = headers.get_str("content-type").is_some_and(|v| {
        v.trim_start()
            .get(..10)
            .is_some_and(|t| t.eq_ignore_ascii_case("multipart/"))
    });
    encoded || multipart
}

/// The mode of refresh-token checks, when `route` is a token endpoint's
/// and the request a token request.
pub fn mode(auth: &Auth, headers: &HeaderMap<'_>, route: RouteId) -> Option<Mode> {
    auth.refresh
        .as_ref()
        .filter(|r| r.applies_to(route) && headers.get_str(":method") == Some("POST"))
        .map(|_| auth.jwt_mode)
}

/// `grant_type` and `refresh_token` belong in a token request's body
/// (RFC 6749 section 6); some servers read the query too, and take its
/// value first. Such a request, or one whose query repeats a parameter,
/// is refused: the body phase could not tell which value a server uses.
pub fn token_request_query(
    auth: &Auth,
    headers: &HeaderMap<'_>,
    route: RouteId,
) -> Option<Finding> {
    let mode = mode(auth, headers, route)?;
    let query = headers.get_str(":path")?.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    let mut seen = std::collections::HashSet::new();
    let refused = form_urlencoded::parse(query.as_bytes())
        .any(|(k, _)| matches!(k.as_ref(), "grant_type" | "refresh_token") || !seen.insert(k));
    refused.then(|| Finding::new(Stage::Authenticate, Reason::RefreshRepeatedParameter, mode))
}

/// Remembers the refresh token of a `refresh_token` grant; a second
/// presentation within `remember` is reuse (OAuth 2.0 Security BCP:
/// a stolen refresh token used after the client used it).
pub fn check_body(
    auth: &Auth,
    opaque_body: bool,
    body: &[u8],
    mode: Mode,
    facts: &Facts<'_>,
    ctx: &Ctx<'_>,
    remote: &mut Vec<Descriptor>,
) -> Option<Finding> {
    let host = ctx.host;
    let refresh = auth.refresh.as_ref()?;
    let flag = |reason| Some(Finding::new(Stage::Authenticate, reason, mode));
    if opaque_body {
        return flag(Reason::RefreshUnsupportedBody);
    }
    let tokens = match refresh_tokens_of(body) {
        Ok(tokens) => tokens,
        Err(reason) => return flag(reason),
    };
    let Some(now_ms) = facts.now_ms(host.clock) else {
        return Some(ctx.host_failure("clock", Stage::Authenticate));
    };
    let expires_ms = now_ms.saturating_add(refresh.remember_ms);
    for token in tokens {
        let write_token = |h: &mut SipHasher13| {
            h.write(b"refresh");
            h.write(token.as_bytes());
        };
        let addr = Ctx::address(ctx.keyed_hash(write_token), refresh.pages);
        match replay::remember(
            host.store,
            host.metrics,
            slots::REFRESH,
            addr,
            expires_ms,
            now_ms,
        ) {
            // Fresh here; the service says whether another replica saw it.
            Ok(Sighting::Fresh) if refresh.scope == Scope::Global => {
                remote.extend(ctx.cluster_hash(write_token).map(|key| Descriptor {
                    counted: Counted::Refresh,
                    key,
                    max: 1,
                    window_s: Descriptor::window_from_ms(refresh.remember_ms),
                    check_only: false,
                }));
            }
            Ok(Sighting::Fresh) => {}
            Ok(Sighting::Replay) => return flag(Reason::RefreshReuse),
            Ok(Sighting::TableFull) => {
                log::error!(
                    "palisade: refresh-token table full; raise jwt.refresh_tokens.slots (now {})",
                    refresh.pages.saturating_mul(slots::SLOTS_PER_PAGE as u32)
                );
                return flag(Reason::RefreshCapacity);
            }
            Err(error) => {
                return Some(ctx.store_failure("refresh tokens", Stage::Authenticate, error))
            }
        }
    }
    None
}

/// Largest token-endpoint request body read for a refresh-token grant.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// The refresh tokens of a `grant_type=refresh_token` request (RFC 6749
/// section 6) as any server could read its body, whatever the declared
/// content type: as a form, and, when it is a JSON object, as JSON. Servers
/// differ in what they read, so every reading is checked. A parameter
/// present twice in a reading is an error (RFC 6749 section 3.1 forbids
/// it): a server may take the first value where palisade would take the
/// last.
fn refresh_tokens_of(body: &[u8]) -> Result<Vec<String>, Reason> {
    let mut tokens = Vec::new();
    for params in &body::readings(body) {
        if body::has_repeated(params, None) {
            return Err(Reason::RefreshRepeatedParameter);
        }
        if body::value(params, "grant_type") == Some("refresh_token") {
            if let Some(token) = body::value(params, "refresh_token").filter(|t| !t.is_empty()) {
                if !tokens.iter().any(|t| t == token) {
                    tokens.push(token.to_string());
                }
            }
        }
    }
    Ok(tokens)
}
