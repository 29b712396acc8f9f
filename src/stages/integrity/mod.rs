//! The signature stage: RFC 9421 HTTP message signatures ([`signature`]),
//! the RFC 9530 `Content-Digest` of the body ([`digest`]), replay of a
//! signature or nonce (the shared replay table), and the `signatures`
//! section ([`config`]).

pub mod config;
pub mod digest;
pub mod signature;

use crate::core::cluster::{Counted, Descriptor, Scope};
use crate::core::mode::Mode;
use crate::core::request::{Facts, HeaderMap};
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::StoreError;
use crate::state::replay::{self, Sighting};
use crate::state::slots;
use config::{SignaturePolicy, Signatures};
use digest::ContentDigest;
use signature::Verified;
use std::hash::Hasher;

/// Verifies the RFC 9421 signature, checks that its nonce or itself was not
/// seen before, and prepares the body's digest check, if any. Returns the
/// descriptor of the signature's one use when replicas share replay checks
/// (`replay_scope: global`) and this one had not seen it.
pub fn verify(
    sigs: &Signatures,
    policy: &SignaturePolicy,
    headers: &HeaderMap<'_>,
    facts: &mut Facts<'_>,
    ctx: &Ctx<'_>,
    findings: &mut Vec<Finding>,
    body_digest: &mut Option<(ContentDigest, Mode)>,
) -> Option<Descriptor> {
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        findings.push(ctx.host_failure("clock", Stage::Signature));
        return None;
    };
    let mut flag = |reason| findings.push(Finding::new(Stage::Signature, reason, sigs.mode));
    let verified = match signature::verify(headers, &sigs.keys, &policy.requirements, now_ms / 1000)
    {
        Ok(verified) => verified,
        Err(error) => {
            flag(Reason::Signature(error));
            return None;
        }
    };
    // Verified, so the key id is known even if a later check fails: it
    // is what an investigation of a replay needs.
    facts.key_id = Some(verified.key_id.clone());
    if policy.require_digest || verified.covers_content_digest {
        let digest = match ContentDigest::from_headers(headers) {
            Ok(digest) => digest,
            Err(error) => {
                flag(Reason::Digest(error));
                return None;
            }
        };
        let declared = headers
            .get_str("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > sigs.max_body_bytes as u64) {
            flag(Reason::BodyTooLarge);
            return None;
        }
        *body_digest = Some((digest, sigs.mode));
    }
    if policy.replay {
        match remember(&verified, now_ms, sigs.replay_pages, ctx) {
            // Fresh here; the service says whether another replica saw it.
            Ok(Sighting::Fresh) if sigs.replay_scope == Scope::Global => {
                return global_replay(&verified, now_ms, ctx)
            }
            Ok(Sighting::Fresh) => {}
            Ok(Sighting::Replay) => flag(Reason::SignatureReplay),
            Ok(Sighting::TableFull) => {
                log::error!(
                    "palisade: replay table full; raise signatures.replay_slots (now {})",
                    sigs.replay_pages
                        .saturating_mul(slots::SLOTS_PER_PAGE as u32)
                );
                flag(Reason::ReplayCapacity);
            }
            Err(error) => {
                findings.push(ctx.store_failure("signature replay", Stage::Signature, error));
            }
        }
    }
    None
}

/// The body phase's part of the stage: the body against the signed
/// `Content-Digest`.
pub fn check_body(digest: &ContentDigest, mode: Mode, body: &[u8]) -> Option<Finding> {
    digest
        .check(body)
        .err()
        .map(|e| Finding::new(Stage::Signature, Reason::Digest(e), mode))
}

/// What identifies a verified signature for replay: its key id, and its
/// nonce or, without one, the signature itself.
fn write_replay_id(verified: &Verified, h: &mut impl Hasher) {
    h.write(b"replay");
    h.write(verified.key_id.as_bytes());
    h.write_u8(0xff);
    match &verified.nonce {
        Some(nonce) => {
            h.write_u8(1);
            h.write(nonce.as_bytes());
        }
        None => {
            h.write_u8(0);
            h.write(&verified.id);
        }
    }
}

/// When a verified signature expires anyway (ms): `created` is always
/// required, so there is an end; an hour is a backstop that keeps records
/// from living for ever.
fn expires_ms(verified: &Verified, now_ms: u64) -> u64 {
    verified
        .fresh_until_s
        .map_or(now_ms.saturating_add(3_600_000), |s| {
            s.saturating_add(1).saturating_mul(1000)
        })
}

/// The descriptor of a signature's one use across replicas, for as long
/// as it could be replayed.
fn global_replay(verified: &Verified, now_ms: u64, ctx: &Ctx<'_>) -> Option<Descriptor> {
    Some(Descriptor {
        counted: Counted::Nonce,
        key: ctx.cluster_hash(|h| write_replay_id(verified, h))?,
        max: 1,
        window_s: Descriptor::window_from_ms(expires_ms(verified, now_ms).saturating_sub(now_ms)),
        check_only: false,
    })
}

/// Remembers a verified signature (by nonce when it has one) until it
/// would expire anyway.
fn remember(
    verified: &Verified,
    now_ms: u64,
    pages: u32,
    ctx: &Ctx<'_>,
) -> Result<Sighting, StoreError> {
    let hash = ctx.keyed_hash(|h| write_replay_id(verified, h));
    replay::remember(
        ctx.host.store,
        ctx.host.metrics,
        slots::REPLAY,
        Ctx::address(hash, pages),
        expires_ms(verified, now_ms),
        now_ms,
    )
}
