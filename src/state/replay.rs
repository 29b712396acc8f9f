//! Replay prevention for signed requests, across worker threads.
//!
//! Threat: a captured signed request (or one signed once and sent many
//! times) is valid until its signature expires. Each nonce, or each
//! signature when it carries none, is remembered in a shared-data slot table
//! until the signature could no longer verify anyway; a second sighting in
//! that window is a replay, whichever worker it reaches.
//!
//! Only verified signatures reach this table, so only holders of a key can
//! fill it. No expired slot on the home page nor on any alternate means the
//! table is too small for the signed traffic: the request is refused (fail
//! closed) rather than accepted unremembered, and `signatures.replay_slots`
//! needs raising.

use crate::state::host::{CasRetries, SharedStore, StoreError};
use crate::state::slots::{self, Address, Record, Tenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// First sighting: remembered until its expiry.
    Fresh,
    /// Seen before and not yet expired.
    Replay,
    /// No slot could remember it.
    TableFull,
}

/// Records that hold a tag and the time it expires (`state`, Unix ms).
pub struct Expiring;

impl Tenant for Expiring {
    fn reclaimable(&self, record: &Record, now_ms: u64) -> bool {
        record.state <= now_ms
    }

    fn settles_at(&self, record: &Record) -> u64 {
        record.state
    }
}

/// Records `addr`'s tag (a keyed hash of what must be seen once: a
/// signature's key id and nonce, a refresh token) in `table` until
/// `expires_ms`.
pub fn remember<R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    table: &str,
    addr: Address,
    expires_ms: u64,
    now_ms: u64,
) -> Result<Sighting, StoreError> {
    let seen = slots::upsert(store, metrics, table, addr, now_ms, &Expiring, |record| {
        if record.state > now_ms {
            return (false, Sighting::Replay);
        }
        *record = Record {
            tag: record.tag,
            state: expires_ms,
            ..Record::default()
        };
        (true, Sighting::Fresh)
    })?;
    Ok(seen.unwrap_or(Sighting::TableFull))
}

/// Keeps `addr`'s tag in `table` until at least `expires_ms`: remembered
/// afresh, or its expiry moved forward when that gains more than
/// `slack_ms` (writing on every sighting would cost a compare-and-swap
/// each). `false` when no slot could hold it.
pub fn keep<R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    table: &str,
    addr: Address,
    expires_ms: u64,
    slack_ms: u64,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let kept = slots::upsert(store, metrics, table, addr, now_ms, &Expiring, |record| {
        if record.state > now_ms && record.state.saturating_add(slack_ms) >= expires_ms {
            return (false, ());
        }
        *record = Record {
            tag: record.tag,
            state: expires_ms,
            ..Record::default()
        };
        (true, ())
    })?;
    Ok(kept.is_some())
}

/// Whether `addr`'s tag is remembered in `table` and not yet expired. Only
/// reads (one get, two for a spilled tag); a table without room reads as
/// not remembered.
pub fn seen<R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    table: &str,
    addr: Address,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let live = slots::upsert(store, metrics, table, addr, now_ms, &Expiring, |record| {
        (false, record.state > now_ms)
    })?;
    Ok(live.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::MemoryMetrics;
    use crate::state::host::MemoryStore;

    const FULL: u64 = slots::SLOTS_PER_PAGE as u64;

    fn at(tag: u64, pages: u32) -> Address {
        Address {
            tag,
            home: 0,
            pages,
        }
    }

    fn fixture(pages: u32) -> (MemoryStore, MemoryMetrics) {
        let store = MemoryStore::new();
        slots::ensure_pages(
            &store,
            (0..pages).map(|i| slots::page_key(slots::REPLAY, i)),
        )
        .unwrap_or_else(|e| unreachable!("{e:?}"));
        (store, MemoryMetrics::default())
    }

    #[test]
    fn a_tag_is_fresh_once_until_it_expires() {
        let (store, metrics) = fixture(1);
        let seen = |tag, now| {
            remember(
                &store,
                &metrics,
                slots::REPLAY,
                at(tag, 1),
                now + 1_000,
                now,
            )
        };
        assert_eq!(seen(7, 0), Ok(Sighting::Fresh));
        assert_eq!(seen(7, 500), Ok(Sighting::Replay));
        assert_eq!(seen(8, 500), Ok(Sighting::Fresh));
        // After expiry the slot is free again, and the same tag is fresh.
        assert_eq!(seen(7, 1_001), Ok(Sighting::Fresh));
    }

    #[test]
    fn seen_only_reads() {
        let (store, metrics) = fixture(1);
        let looked = |tag, now| super::seen(&store, &metrics, slots::REPLAY, at(tag, 1), now);
        assert_eq!(looked(7, 0), Ok(false));
        assert_eq!(looked(7, 0), Ok(false), "a lookup remembers nothing");
        let remembered = remember(&store, &metrics, slots::REPLAY, at(7, 1), 1_000, 0);
        assert_eq!(remembered, Ok(Sighting::Fresh));
        assert_eq!(looked(7, 999), Ok(true));
        assert_eq!(looked(7, 1_000), Ok(false), "expired");
    }

    #[test]
    fn kept_tags_live_on_from_their_last_sighting() {
        let (store, metrics) = fixture(1);
        const DAY: u64 = 86_400_000;
        let keep = |now: u64| {
            super::keep(
                &store,
                &metrics,
                slots::REPLAY,
                at(7, 1),
                now + 30 * DAY,
                DAY,
                now,
            )
        };
        let version = || {
            store
                .get(&slots::page_key(slots::REPLAY, 0))
                .ok()
                .flatten()
                .map(|(_, cas)| cas)
        };
        let looked = |now| super::seen(&store, &metrics, slots::REPLAY, at(7, 1), now);
        assert_eq!(keep(0), Ok(true));
        let first = version();
        assert_eq!(keep(DAY), Ok(true));
        assert_eq!(version(), first, "within the slack: no write");
        assert_eq!(keep(2 * DAY), Ok(true));
        assert_ne!(version(), first, "moved forward");
        // Thirty days after the first sighting, the later one still holds.
        assert_eq!(looked(31 * DAY), Ok(true));
        assert_eq!(looked(32 * DAY), Ok(false));
    }

    #[test]
    fn a_full_table_refuses_rather_than_forgets() {
        let (store, metrics) = fixture(1);
        let seen =
            |tag, expires, now| remember(&store, &metrics, slots::REPLAY, at(tag, 1), expires, now);
        for tag in 1..=FULL {
            assert_eq!(seen(tag, 10_000, 0), Ok(Sighting::Fresh));
        }
        assert_eq!(seen(FULL + 1, 10_000, 1), Ok(Sighting::TableFull));
        assert_eq!(
            seen(2, 10_000, 1),
            Ok(Sighting::Replay),
            "nothing was evicted"
        );
        assert_eq!(seen(FULL + 1, 20_000, 10_000), Ok(Sighting::Fresh));
    }

    #[test]
    fn a_spilled_tag_is_a_replay_even_when_its_home_page_has_room_again() {
        let (store, metrics) = fixture(2);
        let seen =
            |tag, expires, now| remember(&store, &metrics, slots::REPLAY, at(tag, 2), expires, now);
        for tag in 1..=FULL {
            assert_eq!(seen(tag, 1_000, 0), Ok(Sighting::Fresh));
        }
        assert_eq!(seen(99, 60_000, 0), Ok(Sighting::Fresh), "spilled");
        // The home page's records expired: room at home, yet the tag is
        // found on its alternate instead of being remembered afresh.
        assert_eq!(seen(99, 60_000, 2_000), Ok(Sighting::Replay));
        for tag in 100..100 + FULL {
            assert_eq!(seen(tag, 60_000, 2_000), Ok(Sighting::Fresh));
        }
        assert_eq!(seen(99, 60_000, 3_000), Ok(Sighting::Replay));
        // Once expired it is fresh again, placed wherever there is room.
        assert_eq!(seen(99, 90_000, 60_000), Ok(Sighting::Fresh));
        assert_eq!(seen(99, 90_000, 60_001), Ok(Sighting::Replay));
    }
}
