//! Fixed-size slot tables in shared data.
//!
//! Shared data has no delete and no TTL, so one key per client would let an
//! attacker grow Envoy's memory without bound. Instead the table is a fixed
//! number of pages, each one shared-data key (`palisade.rl.p.<n>`) holding
//! [`SLOTS_PER_PAGE`] fixed-size records. Memory is pages × page size,
//! whatever the traffic.
//!
//! A client key hashes to a home page and, when that page is full, may
//! spill to one of [`ALTERNATES`] other pages derived from its tag. The home
//! page then keeps a spill entry (tag, alternate, time until which the
//! record may hold information), so a lookup knows where the key lives
//! from the home page alone: a key on its home page, or a new key while the
//! home page has room, costs one get and at most one compare-and-swap; a
//! spilled key one more get. One choice of page per key refuses new keys
//! long before the table is full (a few pages fill while most have room);
//! trying other pages only when the home page is full keeps the common path
//! as cheap and places keys until the table is well filled (see [`upsert`]).
//!
//! A record may be taken over only when it carries no information (the
//! table's [`Tenant`] decides); a client that finds no such record is
//! limited through its rule's shared overflow bucket, never let through.
//!
//! Envoy ignores the CAS version on a key that does not exist, so the first
//! insert of a page is not atomic. [`ensure_pages`] therefore creates every
//! page (of every table: see `Policy::shared_keys`) when the configuration is loaded: Envoy configures the main thread's
//! VM before any worker serves traffic, so by then all pages exist and every
//! later write is a real compare-and-swap.

use crate::state::host::{create_if_absent, CasRetries, SharedStore, StoreError};

pub const SLOTS_PER_PAGE: usize = 16;
pub const RECORD_LEN: usize = 40;
/// Keys of a page that may live on alternates at once.
pub const SPILLS_PER_PAGE: usize = 16;
pub const SPILL_LEN: usize = 16;
pub const PAGE_LEN: usize = SLOTS_PER_PAGE * RECORD_LEN + SPILLS_PER_PAGE * SPILL_LEN;
/// Pages tried, in order, for a new key whose home page is full.
pub const ALTERNATES: u8 = 7;

/// How far ahead a spill entry's alternate must stay full for the entry to
/// be dropped as dangling (see `upsert_once`).
const DANGLING_MARGIN_MS: u64 = 60_000;

/// Attempts of one read-modify-write before giving up on contention.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// One client key's state for one rule. Times are Unix milliseconds except
/// `state`, whose meaning belongs to the rule (see `stages::limits::buckets`).
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

/// The little-endian u64 at `at`, 0 when `bytes` is too short.
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
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

/// A key of a page whose record lives on one of its alternates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spill {
    /// The key's tag; 0 marks an empty entry.
    pub tag: u64,
    /// Unix seconds from which the record surely holds no information
    /// (`u32::MAX`: never); until then the key lives on the alternate only.
    pub until_s: u32,
    /// Which alternate (1..=[`ALTERNATES`]).
    pub alt: u8,
}

impl Spill {
    fn live(&self, now_ms: u64) -> bool {
        self.tag != 0 && u64::from(self.until_s).saturating_mul(1000) > now_ms
    }

    fn decode(bytes: &[u8]) -> Spill {
        Spill {
            tag: u64_at(bytes, 0),
            until_s: bytes
                .get(8..12)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes),
            alt: bytes.get(12).copied().unwrap_or(0),
        }
    }

    fn encode_into(&self, out: &mut [u8; SPILL_LEN]) {
        out[0..8].copy_from_slice(&self.tag.to_le_bytes());
        out[8..12].copy_from_slice(&self.until_s.to_le_bytes());
        out[12] = self.alt;
        out[13..16].fill(0);
    }
}

/// Whole seconds covering `ms`, saturating at "never".
fn seconds_covering(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Page {
    pub records: [Record; SLOTS_PER_PAGE],
    pub spills: [Spill; SPILLS_PER_PAGE],
}

impl Page {
    /// A value of the wrong size (another palisade version sharing the VM
    /// id, or pages of an older palisade after an upgrade) reads as an empty
    /// page and is overwritten on the next update.
    pub fn decode(bytes: &[u8]) -> Page {
        let mut page = Page::default();
        if bytes.len() == PAGE_LEN {
            let (records, spills) = bytes.split_at(SLOTS_PER_PAGE * RECORD_LEN);
            for (record, chunk) in page
                .records
                .iter_mut()
                .zip(records.chunks_exact(RECORD_LEN))
            {
                *record = Record::decode(chunk);
            }
            for (spill, chunk) in page.spills.iter_mut().zip(spills.chunks_exact(SPILL_LEN)) {
                *spill = Spill::decode(chunk);
            }
        }
        page
    }

    pub fn encode(&self) -> [u8; PAGE_LEN] {
        let mut out = [0u8; PAGE_LEN];
        let (records, spills) = out.split_at_mut(SLOTS_PER_PAGE * RECORD_LEN);
        for (record, chunk) in self
            .records
            .iter()
            .zip(records.chunks_exact_mut(RECORD_LEN))
        {
            let mut buf = [0u8; RECORD_LEN];
            record.encode_into(&mut buf);
            chunk.copy_from_slice(&buf);
        }
        for (spill, chunk) in self.spills.iter().zip(spills.chunks_exact_mut(SPILL_LEN)) {
            let mut buf = [0u8; SPILL_LEN];
            spill.encode_into(&mut buf);
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
/// Networks each user logged in from (`stages::account`).
pub const LOGIN: &str = "lg";
/// What keys of rules counting distinct things have shown: usernames a
/// client tried, networks and fingerprints a token came from
/// (`stages::limits`).
pub const SEEN: &str = "sn";
/// The country each user was last seen in (`geo.impossible_travel`).
pub const TRAVEL: &str = "tv";

/// Key of page `index` of `table`. Built on every page access: without
/// `format!`, whose machinery costs more wasm instructions than the rest.
pub fn page_key(table: &str, index: u32) -> String {
    let mut digits = itoa::Buffer::new();
    let index = digits.format(index);
    let mut key = String::with_capacity(12 + table.len() + index.len());
    key.push_str("palisade.");
    key.push_str(table);
    key.push_str(".p.");
    key.push_str(index);
    key
}

/// Key of a rate-limit rule's overflow bucket.
pub fn overflow_key(rule: u8) -> String {
    format!("palisade.rl.o.{rule}")
}

/// Where a client key's record may live in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Hash of the client key, never 0: what its record and spill entry hold.
    pub tag: u64,
    /// The page tried first, and the one that knows where the key lives.
    pub home: u32,
    /// Pages of the table.
    pub pages: u32,
}

impl Address {
    /// Page of alternate `n` (1-based), never the home page; `None` in a
    /// one-page table. Derived from the tag, the half of the keyed hash the
    /// home page does not use, so it is as unpredictable as the home page
    /// and needs no more than what the spill entry stores.
    pub fn alternate(&self, n: u8) -> Option<u32> {
        let others = u64::from(self.pages.checked_sub(1).filter(|&o| o > 0)?);
        let z = spread(self.tag.wrapping_add(u64::from(n).wrapping_mul(GOLDEN)));
        let page = (u64::from(self.home) + 1 + z % others) % u64::from(self.pages);
        u32::try_from(page).ok()
    }
}

/// 2^64 / φ, the step of splitmix64.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finalizer: nearby inputs give unrelated outputs.
pub fn spread(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a table's records mean: only their owner knows when one carries
/// no information.
pub trait Tenant {
    /// Whether `record` may be taken over at `now_ms`.
    fn reclaimable(&self, record: &Record, now_ms: u64) -> bool;
    /// A time (Unix ms) from which `record`, left alone, stays reclaimable
    /// (`u64::MAX`: never). A spill entry lives at least until then.
    fn settles_at(&self, record: &Record) -> u64;
}

/// A page as read: decoded, with its version and the bytes it came from
/// (see [`put`]).
struct Read {
    page: Page,
    cas: u32,
    bytes: Vec<u8>,
}

fn read_page(store: &dyn SharedStore, key: &str) -> Result<Read, StoreError> {
    Ok(match store.get(key)? {
        Some((bytes, cas)) => Read {
            page: Page::decode(&bytes),
            cas,
            bytes,
        },
        None => Read {
            page: Page::default(),
            cas: 0,
            bytes: Vec::new(),
        },
    })
}

/// Writes `page` if `key` is still at version `cas`; `false` when it is not.
fn write_page(
    store: &dyn SharedStore,
    key: &str,
    page: &Page,
    cas: u32,
) -> Result<bool, StoreError> {
    write_bytes(store, key, &page.encode(), cas)
}

/// [`write_page`] for a page already encoded.
fn write_bytes(
    store: &dyn SharedStore,
    key: &str,
    value: &[u8],
    cas: u32,
) -> Result<bool, StoreError> {
    match store.set(key, value, cas) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The record `tag` may use on `page`: its own, or a free one made fresh.
fn take(page: &Page, tag: u64, reclaimable: impl Fn(&Record) -> bool) -> Option<(usize, Record)> {
    let i = page.place(tag, reclaimable)?;
    let found = page.records.get(i)?;
    let record = if found.tag == tag {
        *found
    } else {
        Record {
            tag,
            ..Record::default()
        }
    };
    Some((i, record))
}

/// What one read-modify-write attempt of [`upsert`] came to.
enum Attempt<T> {
    Done(Option<T>),
    Conflict,
}

/// Reads and updates the record of `addr` in `table`, wherever it lives.
/// `change` gets the key's record, or a fresh one holding only its tag, and
/// says whether it changed it; `None` when the key has no record and none
/// can be taken (the caller limits or refuses it). Retries on conflict a
/// bounded number of times, counting each retry.
///
/// A key lives in one place, and its home page alone says which: a record
/// there, else a live spill entry naming an alternate, else nowhere yet.
/// Every placement of a new key is a compare-and-swap of the home page from
/// a version that showed neither (the record itself, or the entry, written
/// before the record on the alternate), so two workers placing one key
/// conflict there and the loser finds the winner's choice on retry; under a
/// live entry, records are only ever written on its alternate, where two
/// writers conflict in turn. An entry lives as long as its record may hold
/// information: a write that would keep the record longer raises the entry
/// first, so once the entry lapses the record carries nothing and the key
/// may start afresh anywhere. A record or entry is taken over only once it
/// carries nothing, and records never move. An entry whose alternate holds
/// no record of its key and stays full (the key lost the race for the
/// alternate's last slot) is dropped, and the key placed afresh.
///
/// Cost: a key on its home page, or a new one while it has room, one get
/// and at most one compare-and-swap; a spilled key one more get (and a
/// second compare-and-swap when its entry must be raised); a new key whose
/// home page is full reads alternates until one has room, then writes the
/// entry and the record.
pub fn upsert<T, R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    table: &str,
    addr: Address,
    now_ms: u64,
    tenant: &dyn Tenant,
    mut change: impl FnMut(&mut Record) -> (bool, T),
) -> Result<Option<T>, StoreError> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            metrics.cas_retry();
        }
        if let Attempt::Done(result) = upsert_once(store, table, addr, now_ms, tenant, &mut change)?
        {
            return Ok(result);
        }
    }
    Err(StoreError::CasMismatch)
}

/// [`upsert`] of several keys of one home page (the rules of one client:
/// see `stages::limits`) in one get and at most one compare-and-swap, while
/// each key has its record on that page or is new there and finds room.
/// `None` when one of them does not (its record is on an alternate, or the
/// page is full), before `change` is called or anything written: the caller
/// then updates the keys one by one with [`upsert`]. `change` gets each
/// key's index in `addrs` and its record, in order, on every attempt.
pub fn upsert_on_home<T, R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    table: &str,
    addrs: &[Address],
    now_ms: u64,
    tenant: &dyn Tenant,
    mut change: impl FnMut(usize, &mut Record) -> (bool, T),
) -> Result<Option<Vec<T>>, StoreError> {
    let Some(first) = addrs.first() else {
        return Ok(Some(Vec::new()));
    };
    if addrs
        .iter()
        .any(|a| (a.home, a.pages) != (first.home, first.pages))
    {
        return Ok(None);
    }
    let key = page_key(table, first.home);
    let reclaimable = |r: &Record| tenant.reclaimable(r, now_ms);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            metrics.cas_retry();
        }
        let Read {
            page: mut home,
            cas,
            bytes,
        } = read_page(store, &key)?;
        let read = home;
        // Every key placed before any change: one that needs the spill
        // path sends all of them through `upsert`.
        let mut placed: Vec<(usize, Record)> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let own = home.records.iter().any(|r| r.tag == addr.tag);
            let spilled = home
                .spills
                .iter()
                .any(|s| s.tag == addr.tag && s.live(now_ms));
            if spilled && !own {
                return Ok(None);
            }
            let Some((i, record)) = take(&home, addr.tag, reclaimable) else {
                return Ok(None);
            };
            if placed.iter().any(|(j, _)| *j == i) {
                return Ok(None);
            }
            // Holds the slot: the next new key takes another.
            if let Some(slot) = home.records.get_mut(i) {
                *slot = record;
            }
            placed.push((i, record));
        }
        let mut results = Vec::with_capacity(addrs.len());
        let mut changed = Vec::with_capacity(addrs.len());
        for (n, (i, mut record)) in placed.into_iter().enumerate() {
            let (wrote, result) = change(n, &mut record);
            if wrote {
                changed.push((i, record));
            }
            results.push(result);
        }
        if changed.is_empty() || put(store, &key, &bytes, &read, cas, &changed)? {
            return Ok(Some(results));
        }
    }
    Err(StoreError::CasMismatch)
}

fn upsert_once<T>(
    store: &dyn SharedStore,
    table: &str,
    addr: Address,
    now_ms: u64,
    tenant: &dyn Tenant,
    change: &mut impl FnMut(&mut Record) -> (bool, T),
) -> Result<Attempt<T>, StoreError> {
    let reclaimable = |r: &Record| tenant.reclaimable(r, now_ms);
    let home_key = page_key(table, addr.home);
    let Read {
        page: mut home,
        cas: home_cas,
        bytes: home_bytes,
    } = read_page(store, &home_key)?;
    let own = home.records.iter().any(|r| r.tag == addr.tag);
    let spilled = home
        .spills
        .iter()
        .position(|s| s.tag == addr.tag && s.live(now_ms));

    // On its home page, or new there while the page has room.
    if own || spilled.is_none() {
        if let Some((i, mut record)) = take(&home, addr.tag, reclaimable) {
            let (changed, result) = change(&mut record);
            if !changed {
                return Ok(Attempt::Done(Some(result)));
            }
            let written = put(
                store,
                &home_key,
                &home_bytes,
                &home,
                home_cas,
                &[(i, record)],
            )?;
            return Ok(done_if(written, result));
        }
    }

    // Spilled: on the alternate its entry names, and only there while the
    // entry is live. New while the home page is full: a free entry, then
    // the first alternate with room; no free entry means no room.
    let (e, alternates) = match spilled.and_then(|e| Some((e, home.spills.get(e)?))) {
        Some((e, spill)) => (e, spill.alt..=spill.alt),
        None => match home.spills.iter().position(|s| !s.live(now_ms)) {
            Some(e) => (e, 1..=ALTERNATES),
            None => return Ok(Attempt::Done(None)),
        },
    };
    let mut tried = [addr.home; ALTERNATES as usize];
    for (n, t) in alternates.zip(0..tried.len()) {
        let Some(index) = addr.alternate(n) else {
            break;
        };
        // Alternates of a small table may repeat a page: read it once.
        if tried.contains(&index) {
            continue;
        }
        if let Some(t) = tried.get_mut(t) {
            *t = index;
        }
        let alt_key = page_key(table, index);
        let Read {
            page: alt,
            cas: alt_cas,
            bytes: alt_bytes,
        } = read_page(store, &alt_key)?;
        let Some((i, mut record)) = take(&alt, addr.tag, reclaimable) else {
            if let Some(e) = spilled {
                // The entry's alternate holds no record of the key and has
                // no room: the key lost the race for its last slot after
                // writing the entry (or its settled record was taken over).
                // Such an entry pins the key to a full page; drop it and
                // place the key afresh. Room is judged `DANGLING_MARGIN_MS`
                // ahead, so that no worker whose clock runs a little later
                // can still see room there and write the key's record.
                let later = now_ms.saturating_add(DANGLING_MARGIN_MS);
                if take(&alt, addr.tag, |r| tenant.reclaimable(r, later)).is_none() {
                    if let Some(entry) = home.spills.get_mut(e) {
                        *entry = Spill::default();
                    }
                    write_page(store, &home_key, &home, home_cas)?;
                    return Ok(Attempt::Conflict);
                }
            }
            continue;
        };
        let (changed, result) = change(&mut record);
        if !changed {
            return Ok(Attempt::Done(Some(result)));
        }
        // The entry must cover the record before the record is written: a
        // new entry, or a live one raised, with slack (twice the time
        // left) so that a key in steady use does not write its home page
        // on every request.
        let settles = tenant.settles_at(&record);
        let until_s = match spilled.and_then(|e| home.spills.get(e)) {
            None => Some(seconds_covering(settles)),
            Some(spill) if seconds_covering(settles) > spill.until_s => Some(seconds_covering(
                settles.saturating_add(settles.saturating_sub(now_ms)),
            )),
            Some(_) => None,
        };
        if let Some(until_s) = until_s {
            if let Some(entry) = home.spills.get_mut(e) {
                *entry = Spill {
                    tag: addr.tag,
                    until_s,
                    alt: n,
                };
            }
            if !write_page(store, &home_key, &home, home_cas)? {
                return Ok(Attempt::Conflict);
            }
        }
        let written = put(store, &alt_key, &alt_bytes, &alt, alt_cas, &[(i, record)])?;
        return Ok(done_if(written, result));
    }
    Ok(Attempt::Done(None))
}

/// Puts each `(i, record)` of `changes` at `i` of `page` (read as `bytes`)
/// and writes the page if `key` is still at version `cas`; `false` when it
/// is not. Only those records are encoded, into the bytes read: encoding
/// all 16 records and 16 spill entries was a quarter of a one-rule
/// request's wasm instructions.
fn put(
    store: &dyn SharedStore,
    key: &str,
    bytes: &[u8],
    page: &Page,
    cas: u32,
    changes: &[(usize, Record)],
) -> Result<bool, StoreError> {
    match with_records(bytes, changes) {
        Some(value) => write_bytes(store, key, &value, cas),
        // Nothing usable was read (no page, or one of another size).
        None => {
            let mut page = *page;
            for (i, record) in changes {
                if let Some(slot) = page.records.get_mut(*i) {
                    *slot = *record;
                }
            }
            write_page(store, key, &page, cas)
        }
    }
}

/// Page bytes `bytes` with each record `i` of `changes` replaced: what
/// encoding the decoded page with those records gives (a record's 40 bytes
/// decode and encode back unchanged; only a spill entry's unused padding may
/// differ). `None` unless `bytes` is a whole page and each `i` one of its
/// records.
fn with_records(bytes: &[u8], changes: &[(usize, Record)]) -> Option<[u8; PAGE_LEN]> {
    let mut page = <[u8; PAGE_LEN]>::try_from(bytes).ok()?;
    for (i, record) in changes {
        if *i >= SLOTS_PER_PAGE {
            return None;
        }
        let slot = page.get_mut(i * RECORD_LEN..(i + 1) * RECORD_LEN)?;
        let mut encoded = [0u8; RECORD_LEN];
        record.encode_into(&mut encoded);
        slot.copy_from_slice(&encoded);
    }
    Some(page)
}

fn done_if<T>(written: bool, result: T) -> Attempt<T> {
    if written {
        Attempt::Done(Some(result))
    } else {
        Attempt::Conflict
    }
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
        create_if_absent(store, &key, &empty)?;
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
            None => create_if_absent(store, SEED_KEY, SEED_PENDING)?,
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
pub fn update<T, R: CasRetries + ?Sized>(
    store: &dyn SharedStore,
    metrics: &R,
    key: &str,
    change: impl FnMut(&mut Page) -> (bool, T),
) -> Result<T, StoreError> {
    update_value(
        store,
        key,
        Page::decode,
        |page| page.encode().to_vec(),
        || metrics.cas_retry(),
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
    use crate::core::metrics::{Counter, MemoryMetrics};
    use crate::state::host::MemoryStore;
    use std::cell::{Cell, RefCell};

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
        page.spills[SPILLS_PER_PAGE - 1] = Spill {
            tag: u64::MAX - 2,
            until_s: u32::MAX - 3,
            alt: ALTERNATES,
        };
        let bytes = page.encode();
        assert_eq!(bytes.len(), PAGE_LEN);
        assert_eq!(Page::decode(&bytes), page);
        assert_eq!(
            Page::decode(&bytes[..PAGE_LEN - 1]),
            Page::default(),
            "wrong size reads empty"
        );
        assert_eq!(
            Page::decode(&[7u8; 4 * RECORD_LEN]),
            Page::default(),
            "a page of an older palisade reads empty"
        );
    }

    #[test]
    fn page_keys_name_table_and_index() {
        assert_eq!(page_key(RATE_LIMITS, 0), "palisade.rl.p.0");
        assert_eq!(page_key(TRAVEL, 4_294_967_295), "palisade.tv.p.4294967295");
    }

    #[test]
    fn one_record_written_into_the_page_read_is_the_whole_page_encoded() {
        let mut page = Page::default();
        for (i, record) in page.records.iter_mut().enumerate() {
            let i = i as u64 + 1;
            *record = Record {
                tag: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                state: i * 1_000,
                banned_until_ms: i * 7,
                last_violation_ms: i * 11,
                strikes: i as u16,
                rule: i as u8,
                level: (i % 4) as u8,
                updated_s: i as u32 * 3,
            };
        }
        page.spills[3] = Spill {
            tag: 42,
            until_s: 9,
            alt: 2,
        };
        let read = page.encode();
        let record = Record {
            tag: 77,
            state: u64::MAX,
            banned_until_ms: 1,
            last_violation_ms: 2,
            strikes: u16::MAX,
            rule: 200,
            level: 3,
            updated_s: u32::MAX,
        };
        for i in 0..SLOTS_PER_PAGE {
            let mut changed = page;
            changed.records[i] = record;
            assert_eq!(
                with_records(&read, &[(i, record)]),
                Some(changed.encode()),
                "record {i}"
            );
        }
        let other = Record { tag: 78, ..record };
        let mut both = page;
        both.records[2] = record;
        both.records[9] = other;
        assert_eq!(
            with_records(&read, &[(2, record), (9, other)]),
            Some(both.encode()),
            "two records"
        );
        assert_eq!(
            with_records(&read, &[(SLOTS_PER_PAGE, record)]),
            None,
            "a spill entry is no record"
        );
        assert_eq!(
            with_records(&read[1..], &[(0, record)]),
            None,
            "not a whole page"
        );
        assert_eq!(with_records(&[], &[(0, record)]), None, "no page read");
    }

    #[test]
    fn alternates_are_other_pages_spread_over_the_table() {
        let one = Address {
            tag: 5,
            home: 0,
            pages: 1,
        };
        assert_eq!(one.alternate(1), None, "a one-page table has none");
        let mut hits = [0u32; 64];
        for tag in 1..=1_000u64 {
            let addr = Address {
                tag,
                home: (tag % 64) as u32,
                pages: 64,
            };
            for n in 1..=ALTERNATES {
                let page = addr.alternate(n).unwrap_or(addr.home);
                assert_ne!(page, addr.home);
                if let Some(h) = hits.get_mut(page as usize) {
                    *h += 1;
                }
            }
        }
        // 7,000 alternates over 64 pages: about 109 each.
        assert!(hits.iter().all(|&h| (60..170).contains(&h)), "{hits:?}");
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

    /// Records holding their expiry (Unix ms) in `state`, a count of
    /// updates in `strikes`.
    struct Until;

    impl Tenant for Until {
        fn reclaimable(&self, record: &Record, now_ms: u64) -> bool {
            record.state <= now_ms
        }

        fn settles_at(&self, record: &Record) -> u64 {
            record.state
        }
    }

    /// Counts host calls, and may play another worker before a write.
    struct Host<'a> {
        store: &'a MemoryStore,
        gets: Cell<u32>,
        sets: Cell<u32>,
        before_set: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
    }

    impl<'a> Host<'a> {
        fn new(store: &'a MemoryStore) -> Host<'a> {
            Host {
                store,
                gets: Cell::new(0),
                sets: Cell::new(0),
                before_set: RefCell::new(None),
            }
        }

        /// Host calls since the last look: (gets, sets).
        fn calls(&self) -> (u32, u32) {
            (self.gets.replace(0), self.sets.replace(0))
        }
    }

    impl SharedStore for Host<'_> {
        fn get(&self, key: &str) -> Result<Option<crate::state::host::Versioned>, StoreError> {
            self.gets.set(self.gets.get() + 1);
            self.store.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            let other = self.before_set.borrow_mut().take();
            if let Some(other) = other {
                other();
            }
            self.store.set(key, value, cas)
        }
    }

    const TABLE: &str = "t";

    fn table(pages: u32) -> MemoryStore {
        let store = MemoryStore::new();
        ensure_pages(&store, (0..pages).map(|i| page_key(TABLE, i)))
            .unwrap_or_else(|e| unreachable!("{e:?}"));
        store
    }

    /// One sighting of `tag`: a new record lives until `expires`, a live one
    /// counts the sighting. Returns the count, `None` without a slot.
    fn see(
        store: &dyn SharedStore,
        addr: Address,
        expires: u64,
        now: u64,
    ) -> Result<Option<u16>, StoreError> {
        upsert(
            store,
            &MemoryMetrics::default(),
            TABLE,
            addr,
            now,
            &Until,
            |r| {
                if r.state <= now {
                    r.state = expires;
                    r.strikes = 0;
                }
                r.strikes += 1;
                (true, r.strikes)
            },
        )
    }

    fn at(tag: u64, home: u32, pages: u32) -> Address {
        Address { tag, home, pages }
    }

    /// Every record of `tag` in the table: (page, record).
    fn records_of(store: &MemoryStore, pages: u32, tag: u64) -> Vec<(u32, Record)> {
        (0..pages)
            .flat_map(|i| {
                let page = store
                    .get(&page_key(TABLE, i))
                    .ok()
                    .flatten()
                    .map(|(b, _)| Page::decode(&b))
                    .unwrap_or_default();
                page.records
                    .into_iter()
                    .filter(move |r| r.tag == tag)
                    .map(move |r| (i, r))
            })
            .collect()
    }

    /// Fills page `home` of a `pages`-page table with records that expire at `expires`.
    fn fill(store: &MemoryStore, home: u32, pages: u32, expires: u64) {
        for tag in 1..=SLOTS_PER_PAGE as u64 {
            let addr = at(1_000_000 * u64::from(home + 1) + tag, home, pages);
            assert_eq!(see(store, addr, expires, 0), Ok(Some(1)));
        }
    }

    /// [`see`] of several keys of one home page at once.
    fn see_all(
        store: &dyn SharedStore,
        addrs: &[Address],
        expires: u64,
        now: u64,
    ) -> Result<Option<Vec<u16>>, StoreError> {
        upsert_on_home(
            store,
            &MemoryMetrics::default(),
            TABLE,
            addrs,
            now,
            &Until,
            |_, r| {
                if r.state <= now {
                    r.state = expires;
                    r.strikes = 0;
                }
                r.strikes += 1;
                (true, r.strikes)
            },
        )
    }

    #[test]
    fn keys_of_one_home_page_share_one_get_and_one_compare_and_swap() {
        let store = table(4);
        let host = Host::new(&store);
        let (a, b) = (at(42, 1, 4), at(43, 1, 4));
        assert_eq!(see_all(&host, &[a, b], 10_000, 0), Ok(Some(vec![1, 1])));
        assert_eq!(host.calls(), (1, 1), "both new, on one page");
        assert_eq!(see_all(&host, &[a, b], 10_000, 1), Ok(Some(vec![2, 2])));
        assert_eq!(host.calls(), (1, 1), "both placed");
        assert_eq!(see(&store, b, 10_000, 2), Ok(Some(3)), "one record each");
        assert_eq!(records_of(&store, 4, 42).len(), 1);
        // Keys of other home pages: not for this path, nothing read.
        assert_eq!(see_all(&host, &[a, at(44, 2, 4)], 10_000, 3), Ok(None));
        assert_eq!(host.calls(), (0, 0));
        // A full home page: a new key among them sends all of them one by
        // one, before anything is written.
        fill(&store, 1, 4, 10_000);
        let c = at(45, 1, 4);
        assert_eq!(see_all(&host, &[a, c], 10_000, 4), Ok(None));
        assert_eq!(host.calls(), (1, 0));
        assert_eq!(see(&store, a, 10_000, 4), Ok(Some(3)), "a was not counted");
        // Spilled to an alternate (its entry on the home page): the same.
        assert_eq!(see(&store, c, 10_000, 5), Ok(Some(1)));
        assert!(records_of(&store, 4, 45).iter().all(|(page, _)| *page != 1));
        assert_eq!(see_all(&host, &[a, c], 10_000, 6), Ok(None));
        assert_eq!(host.calls(), (1, 0));
    }

    #[test]
    fn the_common_path_is_one_get_and_one_compare_and_swap() {
        let store = table(4);
        let host = Host::new(&store);
        let key = at(42, 0, 4);
        assert_eq!(see(&host, key, 10_000, 0), Ok(Some(1)));
        assert_eq!(host.calls(), (1, 1), "new, home page has room");
        assert_eq!(see(&host, key, 10_000, 1), Ok(Some(2)));
        assert_eq!(host.calls(), (1, 1), "on its home page");
        let unchanged = upsert(
            &host,
            &MemoryMetrics::default(),
            TABLE,
            key,
            2,
            &Until,
            |_| (false, ()),
        );
        assert_eq!(unchanged, Ok(Some(())));
        assert_eq!(host.calls(), (1, 0), "nothing to write");
    }

    #[test]
    fn a_full_home_page_spills_to_an_alternate_at_the_cost_of_one_more_get() {
        let store = table(4);
        fill(&store, 0, 4, 10_000);
        let host = Host::new(&store);
        let key = at(42, 0, 4);
        assert_eq!(see(&host, key, 5_000, 0), Ok(Some(1)));
        assert_eq!(host.calls(), (2, 2), "home, first alternate; entry, record");
        assert_eq!(see(&host, key, 5_000, 1), Ok(Some(2)));
        assert_eq!(host.calls(), (2, 1), "home names the alternate");
        let first = key.alternate(1).unwrap_or(0);
        assert_eq!(
            records_of(&store, 4, 42)
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>(),
            [first]
        );
        // A write that keeps the record past its entry raises the entry first.
        let keep = upsert(
            &host,
            &MemoryMetrics::default(),
            TABLE,
            key,
            2,
            &Until,
            |r| {
                r.state = 8_000;
                (true, ())
            },
        );
        assert_eq!(keep, Ok(Some(())));
        assert_eq!(host.calls(), (2, 2));
        let home = store
            .get(&page_key(TABLE, 0))
            .ok()
            .flatten()
            .map(|(b, _)| Page::decode(&b))
            .unwrap_or_default();
        let entry = home.spills.iter().find(|s| s.tag == 42).copied();
        // 8 s settle, raised with slack to 8 + (8 - 0.002) s.
        assert_eq!(entry.map(|s| (s.until_s, s.alt)), Some((16, 1)));
    }

    #[test]
    fn a_spilled_key_stays_on_its_alternate_until_its_entry_lapses() {
        let store = table(4);
        fill(&store, 0, 4, 1_000);
        let key = at(42, 0, 4);
        assert_eq!(see(&store, key, 60_000, 0), Ok(Some(1)));
        // Home records expired: there is room at home, but the key's record
        // (and only it) is on the alternate.
        assert_eq!(see(&store, key, 60_000, 2_000), Ok(Some(2)));
        for tag in 100..100 + SLOTS_PER_PAGE as u64 {
            assert_eq!(see(&store, at(tag, 0, 4), 90_000, 2_000), Ok(Some(1)));
        }
        assert_eq!(see(&store, key, 60_000, 3_000), Ok(Some(3)));
        assert_eq!(records_of(&store, 4, 42).len(), 1);
        // Once it settled, the entry lapses with it: the key starts afresh
        // wherever there is room, its old record carrying nothing.
        assert_eq!(see(&store, key, 120_000, 60_000), Ok(Some(1)));
        let live: Vec<_> = records_of(&store, 4, 42)
            .into_iter()
            .filter(|(_, r)| r.state > 60_000)
            .collect();
        assert_eq!(live.len(), 1, "{live:?}");
    }

    #[test]
    fn without_a_free_entry_or_alternate_there_is_no_slot() {
        let store = table(2);
        fill(&store, 0, 2, 10_000);
        fill(&store, 1, 2, 10_000);
        let host = Host::new(&store);
        assert_eq!(see(&host, at(42, 0, 2), 5_000, 0), Ok(None));
        assert_eq!(host.calls(), (2, 0), "one alternate in a two-page table");
        let store = table(64);
        fill(&store, 0, 64, 10_000);
        for tag in 1..=SPILLS_PER_PAGE as u64 {
            assert_eq!(see(&store, at(tag, 0, 64), 10_000, 0), Ok(Some(1)));
        }
        let host = Host::new(&store);
        assert_eq!(see(&host, at(42, 0, 64), 10_000, 0), Ok(None));
        assert_eq!(host.calls(), (1, 0), "every entry taken: no alternate read");
        // Entries lapse with their records.
        assert_eq!(see(&host, at(42, 0, 64), 20_000, 10_000), Ok(Some(1)));
    }

    /// Worker A sees key 42 at `a_now`; worker B sees it at `b_now`, after
    /// A's reads and before A's first write. The home page is full until
    /// 1,000 ms. Returns A's count and the pages holding the key's records.
    fn race(a_now: u64, b_now: u64) -> (Result<Option<u16>, StoreError>, Vec<u32>) {
        let store = table(4);
        fill(&store, 0, 4, 1_000);
        let key = at(42, 0, 4);
        let a = Host::new(&store);
        *a.before_set.borrow_mut() = Some(Box::new(|| {
            assert_eq!(see(&store, key, 5_000, b_now), Ok(Some(1)));
        }));
        let seen = see(&a, key, 5_000, a_now);
        let pages = records_of(&store, 4, 42).iter().map(|(p, _)| *p).collect();
        (seen, pages)
    }

    #[test]
    fn racing_workers_agree_on_one_record() {
        let first = at(42, 0, 4).alternate(1).unwrap_or(0);
        // Both place at home, or both spill: A's write conflicts, A finds B's record.
        assert_eq!(race(1_000, 1_000), (Ok(Some(2)), vec![0]));
        assert_eq!(race(0, 0), (Ok(Some(2)), vec![first]));
        // A saw the home page full, B a moment later with room, and placed
        // the key at home: A's entry would conflict, A finds it at home.
        assert_eq!(race(999, 1_000), (Ok(Some(2)), vec![0]));
        // The other way round: B spilled while A was about to place at
        // home. A's write conflicts with B's entry, A follows it.
        assert_eq!(race(1_000, 999), (Ok(Some(2)), vec![first]));
    }

    #[test]
    fn concurrent_workers_never_split_a_key_over_two_records() {
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::Barrier;
        const PAGES: u32 = 4;
        const KEYS: u64 = 12;
        const WORKERS: usize = 4;
        let store = table(PAGES);
        // Home page 0 is full until 60 ms; key k first comes at 10·k + 1 ms
        // by the first worker's clock, which the others run 4, 8 and 12 ms
        // ahead of: keys 0 to 4 spill, key 5 is placed by whichever worker
        // comes first (full for three, room for one), the others at home.
        fill(&store, 0, PAGES, 60);
        let updates: Vec<AtomicU16> = (0..KEYS).map(|_| AtomicU16::new(0)).collect();
        let start = Barrier::new(WORKERS);
        std::thread::scope(|scope| {
            for worker in 0..WORKERS as u64 {
                let (store, updates, start) = (&store, &updates, &start);
                scope.spawn(move || {
                    start.wait();
                    for tick in 0..300u64 {
                        for k in 0..KEYS.min(tick.div_ceil(10)) {
                            let key = at(500 + k, 0, PAGES);
                            let now = tick + 4 * worker;
                            if let Ok(Some(_)) = see(store, key, 60_000, now) {
                                if let Some(u) = updates.get(k as usize) {
                                    u.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
        let mut spilled = 0;
        for k in 0..KEYS {
            let records = records_of(&store, PAGES, 500 + k);
            let counted = updates.get(k as usize).map(|u| u.load(Ordering::Relaxed));
            assert_eq!(records.len(), 1, "key {k}: {records:?}");
            assert_eq!(records.first().map(|(_, r)| r.strikes), counted, "key {k}");
            spilled += usize::from(records.first().is_some_and(|(p, _)| *p != 0));
        }
        assert!((5..=6).contains(&spilled), "{spilled} spilled");
    }

    #[test]
    fn workers_starting_together_on_ngx_wasm_agree_on_seed_and_tables() {
        use crate::state::host::CreatedMeanwhile;
        // Every key this worker finds missing, another creates before its
        // write: each write then meets ngx_wasm_module's "create only".
        let store = CreatedMeanwhile(MemoryStore::ngx_wasm());
        let keys = test_keys(4, 1);
        assert_eq!(ensure_pages(&store, keys.clone()), Ok(()));
        assert_eq!(
            keys.iter()
                .filter(|k| store.0.get(k).ok().flatten().is_some())
                .count(),
            5
        );
        let seed = shared_seed(&store, [7; 16]);
        assert!(seed.is_ok(), "seed despite the race: {seed:?}");
        assert_eq!(seed, shared_seed(&store.0, [9; 16]), "the second worker's");
    }
}
