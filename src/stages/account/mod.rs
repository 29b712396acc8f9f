//! Account protection on login routes (the `login` section).
//!
//! Threat: credential stuffing and password spraying. A route-wide cap on
//! the login route stops a rotating attack only by refusing real users
//! too; what tells the attack apart is the outcome of its attempts. This
//! stage reads the username a login names (from its body, bounded) and the
//! upstream's answer to it, and hands both to the rate-limit rules that
//! count `failed_logins` (per address, fingerprint or username) and
//! `usernames` (how many different users one client tries), whose
//! exhaustion escalates into the `bans`.
//!
//! A username is hashed with the process seed as soon as it is read; only
//! keyed hashes reach shared data, events carry eight hex digits of one.
//! Passwords are never read: only the username parameter is looked up.
//!
//! A username under attack from many addresses can be held to a tight
//! `failed_logins` rule keyed on `username`. Its owner is not locked out
//! by it on a network they logged in from before: each successful login
//! remembers the (user, address prefix) pair for `remember_clients`, and
//! such a known client is exempt from `username`-keyed rules (never from
//! the address rules). Not the fingerprint: it names client software that
//! thousands share, and an attacker can send a stock browser's.

pub mod config;

use crate::core::body;
use crate::core::request::Facts;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::StoreError;
use crate::state::replay;
use crate::state::slots;
use config::Login;
use std::hash::Hasher;
use std::net::IpAddr;

/// The username a login body names, normalised (trimmed, lower case: most
/// services treat `Alice` and `alice ` as one account, and an attacker
/// must not get a fresh budget per spelling). `Ok(None)` when the body names
/// none. A body that names it twice, or differently to a form parser and a
/// JSON parser, is refused: the server might check another user than the
/// one counted.
pub fn username_of(field: &str, bytes: &[u8]) -> Result<Option<String>, Reason> {
    let mut found: Option<String> = None;
    for params in &body::readings(bytes) {
        if body::has_repeated(params, Some(field)) {
            return Err(Reason::LoginRepeatedUsername);
        }
        let Some(value) = body::value(params, field) else {
            continue;
        };
        let name = value.trim().to_ascii_lowercase();
        match &found {
            Some(other) if *other != name => return Err(Reason::LoginRepeatedUsername),
            _ => found = Some(name),
        }
    }
    Ok(found.filter(|n| !n.is_empty()))
}

/// The body phase of a login: the username as a keyed hash in `facts`, and
/// whether this client logged in as that user before. A finding when the
/// body cannot name one user.
pub fn read_username(
    login: &Login,
    bytes: &[u8],
    facts: &mut Facts<'_>,
    ctx: &Ctx<'_>,
    needs_known: bool,
) -> Option<Finding> {
    let field = login.username_field.as_deref()?;
    let name = match username_of(field, bytes) {
        Ok(Some(name)) => name,
        Ok(None) => return None,
        Err(reason) => return Some(Finding::new(Stage::Login, reason, login.mode)),
    };
    let hash = ctx.keyed_hash(|h| {
        h.write(b"username");
        h.write(name.as_bytes());
    });
    facts.username = Some(hash.as_u128());
    if !needs_known {
        return None;
    }
    let now_ms = match facts.now_ms(ctx.host.clock) {
        Some(now) => now,
        None => return Some(ctx.host_failure("clock", Stage::Login)),
    };
    let addr = client_pair(login, facts, ctx)?;
    match replay::seen(ctx.host.store, ctx.host.metrics, slots::LOGIN, addr, now_ms) {
        Ok(known) => facts.known_client = known,
        Err(error) => return Some(ctx.store_failure("known clients", Stage::Login, error)),
    }
    None
}

/// A successful login: the client becomes known for the user.
pub fn remember_client(login: &Login, facts: &Facts<'_>, ctx: &Ctx<'_>) -> Result<(), StoreError> {
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        return Ok(());
    };
    let Some(addr) = client_pair(login, facts, ctx) else {
        return Ok(());
    };
    // Each success keeps the network known for `remember_ms` from then,
    // rewritten at most once a thirtieth of that. A full table forgets a
    // network, which only costs its owner the exemption; nothing to refuse
    // after the fact.
    replay::keep(
        ctx.host.store,
        ctx.host.metrics,
        slots::LOGIN,
        addr,
        now_ms.saturating_add(login.remember_ms),
        login.remember_ms / 30,
        now_ms,
    )?;
    Ok(())
}

/// The (user, address prefix) pair of a login, when both are known.
fn client_pair(login: &Login, facts: &Facts<'_>, ctx: &Ctx<'_>) -> Option<slots::Address> {
    let (user, ip) = (facts.username?, facts.ip_key?);
    let hash = ctx.keyed_hash(|h| {
        h.write(b"known-client");
        h.write_u128(user);
        match ip {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
    });
    Some(Ctx::address(hash, login.pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_username_is_read_from_a_form_or_json_and_normalised() {
        let read = |body: &[u8]| username_of("username", body);
        assert_eq!(read(b"username=Alice&password=x"), Ok(Some("alice".into())));
        assert_eq!(
            read(br#"{"username": " ALICE@example.com ", "password": "x"}"#),
            Ok(Some("alice@example.com".into()))
        );
        assert_eq!(read(b"user=alice"), Ok(None));
        assert_eq!(read(b"username=&password=x"), Ok(None));
        assert_eq!(read(b""), Ok(None));
        assert_eq!(read(b"{not json"), Ok(None));
    }

    #[test]
    fn a_body_naming_two_users_is_refused() {
        let read = |body: &[u8]| username_of("username", body);
        assert_eq!(
            read(b"username=a&username=b"),
            Err(Reason::LoginRepeatedUsername)
        );
        assert_eq!(
            read(br#"{"username": "a", "username": "b"}"#),
            Err(Reason::LoginRepeatedUsername)
        );
        // A JSON string that a form parser reads as another username.
        assert_eq!(
            read(br#"{"username": "a", "x": "&username=b&"}"#),
            Err(Reason::LoginRepeatedUsername)
        );
        // The same name both ways is one user.
        assert_eq!(
            read(br#"{"x": "&username=a&", "username": "A"}"#),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn other_parameters_may_repeat() {
        assert_eq!(
            username_of("username", b"username=a&scope=x&scope=y"),
            Ok(Some("a".into()))
        );
    }
}
