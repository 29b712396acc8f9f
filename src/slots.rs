//! Fixed-size slot tables in shared data.
//!
//! Shared data has no delete and no TTL, so one key per client would let an
//! attacker grow Envoy's memory without bound. Instead the table is a fixed
//! number of pages, each one shared-data key (`palisade.rl.p.<n>`) holding
//! [`SLOTS_PER_PAGE`] fixed-size records. A client key hashes to one page
//! and may take any record in it: one get and one compare-and-swap read and
//! update every candidate at once. Memory is pages × page size, whatever the
//! traffic.
//!
//! A record may be taken over only when it carries no information (the
//! caller decides, see `ratelimit`); a client that finds no such record is
//! limited through its rule's shared overflow bucket, never let through.
//!
//! Envoy ignores the CAS version on a key that does not exist, so the first
//! insert of a page is not atomic. [`ensure_pages`] therefore creates every
//! page (of every table: see `Policy::shared_keys`) when the configuration is loaded: Envoy configures the main thread's
//! VM before any worker serves traffic, so by then all pages exist and every
//! later write is a real compare-and-swap.

use crate::host::{Metrics, SharedStore, StoreError};
use crate::metrics::Counter;

pub const SLOTS_PER_PAGE: usize = 4;
pub const RECORD_LEN: usize = 40;
pub const PAGE_LEN: usize = SLOTS_PER_PAGE * RECORD_LEN;

/// Attempts of one read-modify-write before giving up on contention.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// One client key's state for one rule. Times are Unix milliseconds except
/// `state`, whose meaning belongs to the rule (see `ratelimit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Hash of (rule, client key); 0 marks an empty record.
    pub tag: u64,
    pub state: u64,
    pub banned_until_ms: u64,
    pub last_violation_ms: u64,
    pub strikes: u16,
    pub rule: u8,
    pub level: u8,
    /// Unix seconds of the last write (0: unknown). Lets a reader whose wall
    /// clock stepped back since then shift the record's times by the step.
    pub updated_s: u32,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

impl Record {
    fn decode(bytes: &[u8]) -> Record {
        Record {
            tag: u64_at(bytes, 0),
            state: u64_at(bytes, 8),
            banned_until_ms: u64_at(bytes, 16),
            last_violation_ms: u64_at(bytes, 24),
            strikes: bytes
                .get(32..34)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map_or(0, u16::from_le_bytes),
            rule: bytes.get(34).copied().unwrap_or(0),
            level: bytes.get(35).copied().unwrap_or(0),
            updated_s: bytes
                .get(36..40)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes),
        }
    }

    fn encode_into(&self, out: &mut [u8; RECORD_LEN]) {
        out[0..8].copy_from_slice(&self.tag.to_le_bytes());
        out[8..16].copy_from_slice(&self.state.to_le_bytes());
        out[16..24].copy_from_slice(&self.banned_until_ms.to_le_bytes());
        out[24..32].copy_from_slice(&self.last_violation_ms.to_le_bytes());
        out[32..34].copy_from_slice(&self.strikes.to_le_bytes());
        out[34] = self.rule;
        out[35] = self.level;
        out[36..40].copy_from_slice(&self.updated_s.to_le_bytes());
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Page {
    pub records: [Record; SLOTS_PER_PAGE],
}

impl Page {
    /// A value of the wrong size (another palisade version sharing the VM id)
    /// reads as an empty page and is overwritten on the next update.
    pub fn decode(bytes: &[u8]) -> Page {
        let mut page = Page::default();
        if bytes.len() == PAGE_LEN {
            for (record, chunk) in page.records.iter_mut().zip(bytes.chunks_exact(RECORD_LEN)) {
                *record = Record::decode(chunk);
            }
        }
        page
    }

    pub fn encode(&self) -> [u8; PAGE_LEN] {
        let mut out = [0u8; PAGE_LEN];
        for (record, chunk) in self.records.iter().zip(out.chunks_exact_mut(RECORD_LEN)) {
            let mut buf = [0u8; RECORD_LEN];
            record.encode_into(&mut buf);
            chunk.copy_from_slice(&buf);
        }
        out
    }

    /// The record holding `tag`, or else a free one: empty first, then one
    /// `reclaimable` says carries no information. `None` when the page is full.
    pub fn place(&self, tag: u64, reclaimable: impl Fn(&Record) -> bool) -> Option<usize> {
        self.records
            .iter()
            .position(|r| r.tag == tag)
            .or_else(|| self.records.iter().position(|r| r.tag == 0))
            .or_else(|| self.records.iter().position(reclaimable))
    }
}

/// The rate-limit table (buckets and bans).
pub const RATE_LIMITS: &str = "rl";
/// The replay table (signature nonces and ids).
pub const REPLAY: &str = "rp";
/// The refresh-token table (tokens presented to the token endpoint).
pub const REFRESH: &str = "rt";

/// Key of page `index` of `table`.
pub fn page_key(table: &str, index: u32) -> String {
    format!("palisade.{table}.p.{index}")
}

/// Key of a rate-limit rule's overflow bucket.
pub fn overflow_key(rule: u8) -> String {
    format!("palisade.rl.o.{rule}")
}

const SEED_KEY: &str = "palisade.seed";
const SEED_PENDING: &[u8] = b"pending";

/// Creates every key in `keys` that does not exist yet. Existing keys are
/// left as they are, so a reload or another worker's start never resets
/// state.
pub fn ensure_pages(
    store: &dyn SharedStore,
    keys: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let empty = Page::default().encode();
    for key in keys {
        if store.get(&key)?.is_none() {
            store.set(&key, &empty, 0)?;
        }
    }
    Ok(())
}

/// The process-wide hash seed: the first VM to configure picks it, all others
/// read it, so every worker maps a client to the same page while an attacker
/// who does not know the seed cannot aim keys at one page.
///
/// The first write is a placeholder every racer writes identically, then the
/// real seed goes in by compare-and-swap, so two VMs starting together still
/// agree on one seed.
pub fn shared_seed(store: &dyn SharedStore, fresh: [u8; 16]) -> Result<[u8; 16], StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        match store.get(SEED_KEY)? {
            None => store.set(SEED_KEY, SEED_PENDING, 0)?,
            Some((value, cas)) => {
                if let Ok(seed) = <[u8; 16]>::try_from(value.as_slice()) {
                    return Ok(seed);
                }
                match store.set(SEED_KEY, &fresh, cas) {
                    Ok(()) | Err(StoreError::CasMismatch) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(StoreError::CasMismatch)
}

/// Read-modify-write of one page under compare-and-swap. `change` edits the
/// page and says whether anything changed; an unchanged page is not written.
/// Retries on conflict a bounded number of times, counting each retry.
pub fn update<T>(
    store: &dyn SharedStore,
    metrics: &dyn Metrics,
    key: &str,
    change: impl FnMut(&mut Page) -> (bool, T),
) -> Result<T, StoreError> {
    update_value(
        store,
        key,
        Page::decode,
        |page| page.encode().to_vec(),
        || metrics.increment(Counter::CasRetry),
        change,
    )
}

/// The compare-and-swap loop of any shared record: read and decode (a
/// missing key reads as `decode(&[])`), change, write back if changed,
/// retry on conflict a bounded number of times.
pub fn update_value<R, T>(
    store: &dyn SharedStore,
    key: &str,
    decode: impl Fn(&[u8]) -> R,
    encode: impl Fn(&R) -> Vec<u8>,
    mut on_retry: impl FnMut(),
    mut change: impl FnMut(&mut R) -> (bool, T),
) -> Result<T, StoreError> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            on_retry();
        }
        let (mut record, cas) = match store.get(key)? {
            Some((bytes, cas)) => (decode(&bytes), cas),
            None => (decode(&[]), 0),
        };
        let (changed, result) = change(&mut record);
        if !changed {
            return Ok(result);
        }
        match store.set(key, &encode(&record), cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{MemoryMetrics, MemoryStore};

    fn test_keys(pages: u32, rules: u8) -> Vec<String> {
        (0..pages)
            .map(|i| page_key(RATE_LIMITS, i))
            .chain((0..rules).map(overflow_key))
            .collect()
    }

    #[test]
    fn records_round_trip_through_bytes() {
        let mut page = Page::default();
        page.records[2] = Record {
            tag: u64::MAX - 1,
            state: 123_456_789,
            banned_until_ms: 1_700_000_000_000,
            last_violation_ms: 1_699_999_999_999,
            strikes: 513,
            rule: 7,
            level: 9,
            updated_s: 1_700_000_000,
        };
        let bytes = page.encode();
        assert_eq!(bytes.len(), PAGE_LEN);
        assert_eq!(Page::decode(&bytes), page);
        assert_eq!(
            Page::decode(&bytes[..PAGE_LEN - 1]),
            Page::default(),
            "wrong size reads empty"
        );
    }

    #[test]
    fn placement_prefers_own_then_empty_then_reclaimable() {
        let mut page = Page::default();
        for (i, r) in page.records.iter_mut().enumerate() {
            r.tag = 10 + i as u64;
        }
        assert_eq!(page.place(12, |_| false), Some(2));
        assert_eq!(
            page.place(99, |_| false),
            None,
            "full page, nothing reclaimable"
        );
        assert_eq!(page.place(99, |r| r.tag == 13), Some(3));
        page.records[1].tag = 0;
        assert_eq!(
            page.place(99, |r| r.tag == 13),
            Some(1),
            "empty before reclaimable"
        );
    }

    #[test]
    fn ensure_pages_creates_once_and_never_resets() {
        let store = MemoryStore::new();
        ensure_pages(&store, test_keys(8, 2)).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(store.key_count(), 10);
        let mut page = Page::default();
        page.records[0].tag = 5;
        let (_, cas) = store
            .get(&page_key(RATE_LIMITS, 3))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(
            store.set(&page_key(RATE_LIMITS, 3), &page.encode(), cas),
            Ok(())
        );
        ensure_pages(&store, test_keys(8, 2)).unwrap_or_else(|e| unreachable!("{e:?}"));
        let after = store
            .get(&page_key(RATE_LIMITS, 3))
            .ok()
            .flatten()
            .map(|(b, _)| Page::decode(&b));
        assert_eq!(after, Some(page));
    }

    #[test]
    fn every_vm_gets_the_same_seed() {
        let store = MemoryStore::new();
        let a = shared_seed(&store, [1; 16]);
        let b = shared_seed(&store, [2; 16]);
        assert_eq!(a, Ok([1; 16]));
        assert_eq!(b, Ok([1; 16]));
    }

    #[test]
    fn update_retries_on_conflict_and_skips_unchanged_writes() {
        let store = MemoryStore::new();
        let metrics = MemoryMetrics::default();
        ensure_pages(&store, test_keys(1, 0)).unwrap_or_else(|e| unreachable!("{e:?}"));
        let key = page_key(RATE_LIMITS, 0);
        let mut first = true;
        let result = update(&store, &metrics, &key, |page| {
            if first {
                // Another worker writes between our read and our write.
                first = false;
                let (_, cas) = store.get(&key).ok().flatten().unwrap_or_default();
                let mut other = Page::default();
                other.records[1].tag = 77;
                let _ = store.set(&key, &other.encode(), cas);
            }
            page.records[0].tag = 42;
            (true, ())
        });
        assert_eq!(result, Ok(()));
        assert_eq!(metrics.get(&Counter::CasRetry), 1);
        let page = store
            .get(&key)
            .ok()
            .flatten()
            .map(|(b, _)| Page::decode(&b))
            .unwrap_or_default();
        assert_eq!(
            (page.records[0].tag, page.records[1].tag),
            (42, 77),
            "both writes survive"
        );
        let before = store.get(&key).ok().flatten().map(|v| v.1);
        let _ = update(&store, &metrics, &key, |_| (false, ()));
        assert_eq!(
            store.get(&key).ok().flatten().map(|v| v.1),
            before,
            "no write when unchanged"
        );
    }
}
