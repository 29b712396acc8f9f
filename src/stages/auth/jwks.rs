//! Remote JWK Sets, fetched once per process and shared by every worker.
//!
//! Envoy runs one wasm VM per worker, each with its own root context and
//! tick. Were each to fetch on its own, N workers would mean N fetches per
//! refresh and N per unknown `kid`: a burst of forged `kid`s would become a
//! fetch storm against the identity provider. So one shared-data record per
//! provider holds the last good key set and the fetch schedule, and a worker
//! fetches only after winning a compare-and-swap that moves the attempt
//! time; every other worker adopts the stored set when its generation
//! changes.
//!
//! Record layout (little-endian): attempt ms, success ms, unknown-kid ms,
//! generation (each u64), then the JWK Set document as fetched.
//!
//! Assumptions: `min_refetch` is at least the fetch timeout (checked in
//! configuration), so an attempt in flight is never duplicated; a fetched
//! document with no usable key is a failure and the last good set stays.

use crate::core::remote::{encode_words, word, Remote};
use crate::stages::auth::jwt::Jwks;
use crate::state::host::{create_if_absent, SharedStore, StoreError};
use crate::state::slots;

const HEADER_LEN: usize = 32;

/// Largest JWK Set document read from a fetch and stored in the shared
/// record (what the NGINX zone size is computed with).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    attempt_ms: u64,
    success_ms: u64,
    kid_miss_ms: u64,
    generation: u64,
    body: Vec<u8>,
}

impl Record {
    fn decode(bytes: &[u8]) -> Record {
        Record {
            attempt_ms: word(bytes, 0),
            success_ms: word(bytes, 1),
            kid_miss_ms: word(bytes, 2),
            generation: word(bytes, 3),
            body: bytes.get(HEADER_LEN..).unwrap_or_default().to_vec(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let words = [
            self.attempt_ms,
            self.success_ms,
            self.kid_miss_ms,
            self.generation,
        ];
        encode_words(&words, &self.body)
    }

    /// The stored key set, if one was ever stored and its generation is
    /// not `have`. Entries that do not parse were reported when the set was
    /// fetched and are skipped here.
    fn newer_than(&self, have: u64) -> Option<(u64, Jwks)> {
        (self.generation != 0 && self.generation != have)
            .then(|| (self.generation, Jwks::parse(&self.body).0))
    }

    /// Whether a fetch should start now.
    fn due(&self, remote: &Remote, now_ms: u64) -> bool {
        let unknown_kid = self.kid_miss_ms > self.attempt_ms;
        remote.due(self.attempt_ms, self.success_ms, unknown_kid, now_ms)
    }
}

/// Creates the provider's record if it does not exist (at configuration,
/// before traffic: Envoy's first insert is not atomic).
pub fn ensure_record(store: &dyn SharedStore, remote: &Remote) -> Result<(), StoreError> {
    create_if_absent(store, &remote.record_key, &Record::default().encode())
}

fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    change: impl FnMut(&mut Record) -> (bool, T),
) -> Result<T, StoreError> {
    slots::update_value(store, key, Record::decode, Record::encode, || {}, change)
}

/// What one look at the shared record found.
#[derive(Debug, Default)]
pub struct Poll {
    /// A key set of another generation than the caller's, to install.
    pub newer: Option<(u64, Jwks)>,
    /// A fetch is due and this caller won it: dispatch it.
    pub fetch: bool,
}

/// One read of the record per tick: picks up a key set another worker
/// fetched, and claims the next fetch if one is due (a compare-and-swap on
/// the attempt time, which exactly one worker wins).
pub fn poll(
    store: &dyn SharedStore,
    remote: &Remote,
    have: u64,
    now_ms: u64,
) -> Result<Poll, StoreError> {
    let Some((bytes, cas)) = store.get(&remote.record_key)? else {
        return Ok(Poll::default());
    };
    let mut record = Record::decode(&bytes);
    let newer = record.newer_than(have);
    let mut fetch = false;
    if record.due(remote, now_ms) {
        record.attempt_ms = now_ms;
        fetch = match store.set(&remote.record_key, &record.encode(), cas) {
            Ok(()) => true,
            // Another worker claimed it first.
            Err(StoreError::CasMismatch) => false,
            Err(e) => return Err(e),
        };
    }
    Ok(Poll { newer, fetch })
}

/// Asks for a refetch because a token named a `kid` no key has; honoured at
/// most once per `min_refetch`.
pub fn flag_unknown_kid(
    store: &dyn SharedStore,
    remote: &Remote,
    now_ms: u64,
) -> Result<(), StoreError> {
    update(store, &remote.record_key, |record| {
        if record.kid_miss_ms > record.attempt_ms {
            (false, ())
        } else {
            record.kid_miss_ms = now_ms;
            (true, ())
        }
    })
}

/// Stores a fetched document that parsed to at least one key; returns its
/// generation.
pub fn store_fetched(
    store: &dyn SharedStore,
    remote: &Remote,
    now_ms: u64,
    body: &[u8],
) -> Result<u64, StoreError> {
    update(store, &remote.record_key, |record| {
        record.generation = record.generation.wrapping_add(1).max(1);
        record.success_ms = now_ms;
        record.body = body.to_vec();
        (true, record.generation)
    })
}

/// The stored key set, if its generation is not `have` (one read, for the
/// request path on an unknown `kid`).
pub fn read_newer(
    store: &dyn SharedStore,
    remote: &Remote,
    have: u64,
) -> Result<Option<(u64, Jwks)>, StoreError> {
    let Some((bytes, _)) = store.get(&remote.record_key)? else {
        return Ok(None);
    };
    Ok(Record::decode(&bytes).newer_than(have))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::host::MemoryStore;

    fn remote() -> Remote {
        Remote {
            upstream: "idp".into(),
            authority: "idp.example".into(),
            path: "/jwks".into(),
            refresh_ms: 300_000,
            min_refetch_ms: 30_000,
            timeout_ms: 2_000,
            record_key: "palisade.jwks.test".into(),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    fn claimed(store: &MemoryStore, r: &Remote, now_ms: u64) -> Result<bool, StoreError> {
        poll(store, r, u64::MAX, now_ms).map(|p| p.fetch)
    }
    const KEYS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn one_worker_wins_each_fetch_and_the_rest_adopt_its_keys() {
        let store = MemoryStore::new();
        let r = remote();
        ensure_record(&store, &r).unwrap_or_else(|e| unreachable!("{e:?}"));
        let winners = (0..4)
            .filter(|_| claimed(&store, &r, T0) == Ok(true))
            .count();
        assert_eq!(winners, 1, "one fetch for all workers");
        assert_eq!(read_newer(&store, &r, 0).map(|o| o.is_none()), Ok(true));
        assert_eq!(store_fetched(&store, &r, T0 + 10, KEYS), Ok(1));
        let adopted = read_newer(&store, &r, 0).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(adopted.map(|(g, k)| (g, k.len())), Some((1, 1)));
        assert_eq!(read_newer(&store, &r, 1).map(|o| o.is_none()), Ok(true));
        // Nothing is due until the refresh interval passes.
        assert_eq!(claimed(&store, &r, T0 + 60_000), Ok(false));
        assert_eq!(claimed(&store, &r, T0 + 300_010), Ok(true));
    }

    #[test]
    fn unknown_kids_cause_at_most_one_fetch_per_min_refetch() {
        let store = MemoryStore::new();
        let r = remote();
        ensure_record(&store, &r).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(claimed(&store, &r, T0), Ok(true));
        assert_eq!(store_fetched(&store, &r, T0, KEYS), Ok(1));
        let mut fetches = 0;
        // A storm of unknown kids, one per 10 ms for two minutes.
        for step in 0..12_000u64 {
            let now = T0 + 1_000 + step * 10;
            flag_unknown_kid(&store, &r, now).unwrap_or_else(|e| unreachable!("{e:?}"));
            if claimed(&store, &r, now) == Ok(true) {
                fetches += 1;
            }
        }
        // 120 s at most one per 30 s.
        assert!((3..=4).contains(&fetches), "{fetches} fetches");
    }

    #[test]
    fn before_the_first_load_failed_fetches_are_retried_soon() {
        let store = MemoryStore::new();
        let r = remote();
        ensure_record(&store, &r).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(claimed(&store, &r, T0), Ok(true));
        // The fetch failed (nothing stored): retried after 5 s, not 30 s.
        assert_eq!(claimed(&store, &r, T0 + 4_000), Ok(false));
        assert_eq!(claimed(&store, &r, T0 + 5_000), Ok(true));
    }

    #[test]
    fn a_record_survives_truncation_as_empty() {
        assert_eq!(Record::decode(&[1, 2, 3]), Record::default());
        let record = Record {
            attempt_ms: 1,
            success_ms: 2,
            kid_miss_ms: 3,
            generation: 4,
            body: b"{}".to_vec(),
        };
        assert_eq!(Record::decode(&record.encode()), record);
    }
}
