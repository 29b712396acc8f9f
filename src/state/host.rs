//! What the core needs from its host, as small traits: the proxy-wasm glue
//! implements them over host calls, tests over memory. Nothing in the core
//! calls the host any other way, so every policy can be tested natively.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// What the host knows of a request's connection. Each call is a host
/// call: stages ask only when their configuration needs the answer.
pub trait Connection {
    /// The TCP peer's address (`source.address`).
    fn peer(&self) -> Option<String>;
    /// Whether the downstream connection is TLS (`connection.tls_version`).
    fn tls(&self) -> bool;
    /// The verified client certificate's first URI SAN
    /// (`connection.uri_san_peer_certificate`).
    fn peer_uri_san(&self) -> Option<String> {
        None
    }
    /// The verified client certificate's subject
    /// (`connection.subject_peer_certificate`).
    fn peer_subject(&self) -> Option<String> {
        None
    }
    /// SHA-256 of the client certificate's DER
    /// (`connection.sha256_peer_certificate_digest`): what RFC 8705 binds
    /// tokens to.
    fn peer_certificate_sha256(&self) -> Option<[u8; 32]> {
        None
    }
}

/// A function returning the peer is a connection without TLS (tests).
impl<F: Fn() -> Option<String>> Connection for F {
    fn peer(&self) -> Option<String> {
        self()
    }

    fn tls(&self) -> bool {
        false
    }
}

/// Wall-clock milliseconds since the Unix epoch, read once per request.
/// `None` when the host cannot tell: a time of 0 would make every bucket
/// full and every ban over, so callers go through `failure_mode` instead.
pub trait Clock {
    fn now_ms(&self) -> Option<u64>;
}

/// Why a shared-store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since we read it: read again and retry.
    CasMismatch,
    /// The host answered with an unexpected status (its numeric code).
    Host(u32),
}

/// A value and the version it was read at.
pub type Versioned = (Vec<u8>, u32);

/// Process-wide key/value store shared by all worker threads, with
/// compare-and-swap: proxy-wasm shared data.
///
/// On Envoy, `set` with a non-zero `cas` fails with
/// [`StoreError::CasMismatch`] when the key changed since that version, but
/// on a key that does not exist yet `set` always inserts, whatever `cas` says
/// (the first insert is not atomic, which is why slot pages are created up
/// front, see [`crate::state::slots`]), and `cas` 0 overwrites. On
/// ngx_wasm_module the version must match exactly, 0 standing for "absent":
/// `cas` 0 creates a key only if it does not exist. Code that works under
/// both reads before it writes and takes a creation's mismatch as "created
/// by another worker" ([`create_if_absent`]).
pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Writes `value` under `key` unless the key exists. Two workers that both
/// find it missing both write: on Envoy the later write wins (callers write
/// the same initial value), on ngx_wasm_module the later one gets a CAS
/// mismatch, which here means the key now exists, as wanted.
pub fn create_if_absent(
    store: &dyn SharedStore,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    if store.get(key)?.is_some() {
        return Ok(());
    }
    match store.set(key, value, 0) {
        Ok(()) | Err(StoreError::CasMismatch) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The key [`cas_zero_overwrites`] writes.
pub const HOST_PROBE_KEY: &str = "palisade.host-probe";

/// Whether a write with `cas` 0 replaces an existing value (Envoy) or only
/// creates one (ngx_wasm_module): two writes of [`HOST_PROBE_KEY`] tell,
/// without a host call that either host logs or traps on.
pub fn cas_zero_overwrites(store: &dyn SharedStore) -> Result<bool, StoreError> {
    match store.set(HOST_PROBE_KEY, b"1", 0) {
        Ok(()) | Err(StoreError::CasMismatch) => {}
        Err(e) => return Err(e),
    }
    match store.set(HOST_PROBE_KEY, b"1", 0) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A store whose keys carry a filter instance's prefix, so that two
/// palisade filters in one VM (same `vm_id`, shared data per VM) keep
/// separate tables, seeds and key sets instead of evicting each other's.
pub struct Namespaced<'a> {
    pub store: &'a dyn SharedStore,
    /// From [`namespace_prefix`].
    pub prefix: &'a str,
}

impl SharedStore for Namespaced<'_> {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        if self.prefix.is_empty() {
            return self.store.get(key);
        }
        self.store.get(&self.full_key(key))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.prefix.is_empty() {
            return self.store.set(key, value, cas);
        }
        self.store.set(&self.full_key(key), value, cas)
    }
}

impl Namespaced<'_> {
    fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(self.prefix);
        full.push_str(key);
        full
    }
}

/// The key prefix of a filter instance (Envoy: the filter's `name`), or
/// none when the host names no instance. Bytes outside `A-Z a-z 0-9 _ - .`
/// are escaped (`%xx`), so different names never share a prefix, and no
/// `/` appears (ngx_wasm_module reads `<zone>/` as a shm_kv zone).
pub fn namespace_prefix(instance: &str) -> String {
    if instance.is_empty() {
        return String::new();
    }
    let mut prefix = String::with_capacity(instance.len() + 1);
    for b in instance.bytes().take(128) {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            prefix.push(char::from(b));
        } else {
            prefix.push_str(&format!("%{b:02x}"));
        }
    }
    prefix.push(':');
    prefix
}

/// Where shared-data contention is counted. The state layer knows no
/// metric vocabulary: every `Metrics` sink of the core implements this as
/// its `CasRetry` counter.
pub trait CasRetries {
    fn cas_retry(&self);
}

/// In-memory [`SharedStore`] with Envoy's semantics (or ngx_wasm_module's,
/// from [`MemoryStore::ngx_wasm`]), safe to share between threads so native
/// tests can play several workers at once.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Versioned>>,
    next_cas: AtomicU32,
    /// `cas` must match exactly, 0 meaning "absent" (ngx_wasm_module).
    exact_cas: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with ngx_wasm_module's compare-and-swap.
    pub fn ngx_wasm() -> Self {
        MemoryStore {
            exact_cas: true,
            ..Self::default()
        }
    }

    /// Number of keys ever written: what bounds memory.
    pub fn key_count(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    /// Whether any key or value holds `needle` (tests that look for a
    /// secret in shared state).
    pub fn holds(&self, needle: &[u8]) -> bool {
        self.entries.lock().is_ok_and(|m| {
            m.iter().any(|(k, (v, _))| {
                [k.as_bytes(), v.as_slice()]
                    .iter()
                    .any(|b| b.windows(needle.len().max(1)).any(|w| w == needle))
            })
        })
    }

    /// Total bytes of keys and values held.
    pub fn byte_size(&self) -> usize {
        self.entries
            .lock()
            .map_or(0, |m| m.iter().map(|(k, (v, _))| k.len() + v.len()).sum())
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let entries = self.entries.lock().map_err(|_| StoreError::Host(1))?;
        Ok(entries.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().map_err(|_| StoreError::Host(1))?;
        let version = self
            .next_cas
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        match entries.get_mut(key) {
            Some(entry) => {
                if (cas != 0 || self.exact_cas) && cas != entry.1 {
                    return Err(StoreError::CasMismatch);
                }
                *entry = (value.to_vec(), version);
            }
            None if self.exact_cas && cas != 0 => return Err(StoreError::CasMismatch),
            None => {
                entries.insert(key.to_string(), (value.to_vec(), version));
            }
        }
        Ok(())
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl ManualClock {
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Moves the clock back, as an NTP step would.
    pub fn step_back(&self, ms: u64) {
        self.0.fetch_sub(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Option<u64> {
        Some(self.0.load(Ordering::SeqCst))
    }
}

/// A store where another worker creates every key between this
/// worker's read and its write: the race two starting workers run.
#[cfg(test)]
pub(crate) struct CreatedMeanwhile(pub MemoryStore);

#[cfg(test)]
impl SharedStore for CreatedMeanwhile {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let found = self.0.get(key)?;
        if found.is_none() {
            self.0.set(key, b"theirs", 0)?;
        }
        Ok(found)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.0.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_stores_do_not_see_each_other() {
        let store = MemoryStore::new();
        let (pa, pb) = (namespace_prefix("edge"), namespace_prefix("edge/2"));
        assert_eq!((pa.as_str(), pb.as_str()), ("edge:", "edge%2f2:"));
        let a = Namespaced {
            store: &store,
            prefix: &pa,
        };
        let b = Namespaced {
            store: &store,
            prefix: &pb,
        };
        assert_eq!(a.set("palisade.seed", b"A", 0), Ok(()));
        assert_eq!(b.get("palisade.seed"), Ok(None));
        assert_eq!(b.set("palisade.seed", b"B", 0), Ok(()));
        assert_eq!(
            a.get("palisade.seed").ok().flatten().map(|v| v.0),
            Some(b"A".to_vec())
        );
        assert_eq!(store.key_count(), 2);
        let bare = Namespaced {
            store: &store,
            prefix: "",
        };
        assert_eq!(
            bare.get("edge:palisade.seed").ok().flatten().map(|v| v.0),
            Some(b"A".to_vec())
        );
    }

    #[test]
    fn memory_store_follows_envoy_cas_semantics() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k"), Ok(None));
        // First insert ignores cas, as Envoy does.
        assert_eq!(store.set("k", b"a", 12345), Ok(()));
        let (value, cas) = store.get("k").ok().flatten().unwrap_or_default();
        assert_eq!(value, b"a");
        assert_eq!(store.set("k", b"b", cas), Ok(()));
        assert_eq!(
            store.set("k", b"c", cas),
            Err(StoreError::CasMismatch),
            "stale version"
        );
        assert_eq!(store.set("k", b"d", 0), Ok(()), "cas 0 overwrites");
        assert_eq!(
            store.get("k").ok().flatten().map(|v| v.0),
            Some(b"d".to_vec())
        );
        assert_eq!(store.key_count(), 1);
    }

    #[test]
    fn ngx_wasm_store_creates_with_cas_zero_only() {
        let store = MemoryStore::ngx_wasm();
        assert_eq!(store.set("k", b"a", 7), Err(StoreError::CasMismatch));
        assert_eq!(store.set("k", b"a", 0), Ok(()));
        assert_eq!(
            store.set("k", b"b", 0),
            Err(StoreError::CasMismatch),
            "cas 0 only creates"
        );
        let (_, cas) = store.get("k").ok().flatten().unwrap_or_default();
        assert_eq!(store.set("k", b"c", cas), Ok(()));
    }

    #[test]
    fn the_cas_zero_probe_tells_the_hosts_apart() {
        assert_eq!(cas_zero_overwrites(&MemoryStore::new()), Ok(true));
        assert_eq!(cas_zero_overwrites(&MemoryStore::ngx_wasm()), Ok(false));
        // Another worker probed first.
        let ngx = MemoryStore::ngx_wasm();
        assert_eq!(ngx.set(HOST_PROBE_KEY, b"1", 0), Ok(()));
        assert_eq!(cas_zero_overwrites(&ngx), Ok(false));
        let envoy = MemoryStore::new();
        assert_eq!(envoy.set(HOST_PROBE_KEY, b"1", 0), Ok(()));
        assert_eq!(cas_zero_overwrites(&envoy), Ok(true));
    }

    #[test]
    fn creating_a_key_another_worker_just_created_is_not_an_error() {
        let store = CreatedMeanwhile(MemoryStore::ngx_wasm());
        assert_eq!(create_if_absent(&store, "k", b"mine"), Ok(()));
        assert_eq!(
            store.0.get("k").ok().flatten().map(|v| v.0),
            Some(b"theirs".to_vec())
        );
        // The bare write is what used to fail.
        let bare = CreatedMeanwhile(MemoryStore::ngx_wasm());
        assert_eq!(bare.get("j"), Ok(None));
        assert_eq!(bare.set("j", b"mine", 0), Err(StoreError::CasMismatch));
    }
}
