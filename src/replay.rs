//! Replay prevention for signed requests, across worker threads.
//!
//! Threat: a captured signed request (or one signed once and sent many
//! times) is valid until its signature expires. Each nonce, or each
//! signature when it carries none, is remembered in a shared-data slot table
//! until the signature could no longer verify anyway; a second sighting in
//! that window is a replay, whichever worker it reaches.
//!
//! Only verified signatures reach this table, so only holders of a key can
//! fill it. A page with no expired slot means the table is too small for
//! the signed traffic: the request is refused (fail closed) rather than
//! accepted unremembered, and `signatures.replay_slots` needs raising.

use crate::host::{Metrics, SharedStore, StoreError};
use crate::slots::{self, Page, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// First sighting: remembered until its expiry.
    Fresh,
    /// Seen before and not yet expired.
    Replay,
    /// No slot could remember it.
    TableFull,
}

/// Records `tag` (a keyed hash of what must be seen once: a signature's key
/// id and nonce, a refresh token) on `page` of `table` until `expires_ms`.
pub fn remember(
    store: &dyn SharedStore,
    metrics: &dyn Metrics,
    table: &str,
    tag: u64,
    page: u32,
    expires_ms: u64,
    now_ms: u64,
) -> Result<Sighting, StoreError> {
    let key = slots::page_key(table, page);
    slots::update(store, metrics, &key, |page: &mut Page| {
        if page
            .records
            .iter()
            .any(|r| r.tag == tag && r.state > now_ms)
        {
            return (false, Sighting::Replay);
        }
        let Some(slot) = page
            .place(tag, |r| r.state <= now_ms)
            .and_then(|i| page.records.get_mut(i))
        else {
            return (false, Sighting::TableFull);
        };
        *slot = Record {
            tag,
            state: expires_ms,
            ..Record::default()
        };
        (true, Sighting::Fresh)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{MemoryMetrics, MemoryStore};

    #[test]
    fn a_tag_is_fresh_once_until_it_expires() {
        let store = MemoryStore::new();
        let metrics = MemoryMetrics::default();
        slots::ensure_pages(&store, [slots::page_key(slots::REPLAY, 0)])
            .unwrap_or_else(|e| unreachable!("{e:?}"));
        let seen = |tag, now| remember(&store, &metrics, slots::REPLAY, tag, 0, now + 1_000, now);
        assert_eq!(seen(7, 0), Ok(Sighting::Fresh));
        assert_eq!(seen(7, 500), Ok(Sighting::Replay));
        assert_eq!(seen(8, 500), Ok(Sighting::Fresh));
        // After expiry the slot is free again, and the same tag is fresh.
        assert_eq!(seen(7, 1_001), Ok(Sighting::Fresh));
    }

    #[test]
    fn a_full_page_refuses_rather_than_forgets() {
        let store = MemoryStore::new();
        let metrics = MemoryMetrics::default();
        for tag in 1..=4 {
            assert_eq!(
                remember(&store, &metrics, slots::REPLAY, tag, 0, 10_000, 0),
                Ok(Sighting::Fresh)
            );
        }
        assert_eq!(
            remember(&store, &metrics, slots::REPLAY, 5, 0, 10_000, 1),
            Ok(Sighting::TableFull)
        );
        assert_eq!(
            remember(&store, &metrics, slots::REPLAY, 2, 0, 10_000, 1),
            Ok(Sighting::Replay),
            "nothing was evicted"
        );
        assert_eq!(
            remember(&store, &metrics, slots::REPLAY, 5, 0, 20_000, 10_000),
            Ok(Sighting::Fresh)
        );
    }
}
