//! How full the slot tables are, for the `palisade_table_slots_used` and
//! `palisade_table_slots` gauges.
//!
//! Reading every page every second would cost a host call per page per
//! worker; instead one worker at a time (the holder of a lease in shared
//! data) reads a few pages of each table per tick, in turn, and reports
//! what it has seen: the pages read so far, scaled up to the whole table
//! until every page has been read once. A slot is used when its
//! record still carries information (its table's [`Tenant`] says it may
//! not be taken over): that, not a non-zero tag, is what refuses new keys.

use crate::state::host::{SharedStore, StoreError};
use crate::state::slots::{page_key, u64_at, Page, Tenant, SLOTS_PER_PAGE};

/// The lease's shared-data key: (holder, until) as two little-endian u64.
pub const LEASE_KEY: &str = "palisade.gauges";

/// How long a lease outlives its last renewal: three 1 s ticks, so a
/// worker that stops ticking hands over within seconds.
const LEASE_MS: u64 = 3_000;

/// Pages read per tick: 64 shared-data reads a second from one worker;
/// a table of 4,096 pages is read whole in about a minute.
pub const PAGES_PER_TICK: u32 = 64;

/// One slot table as the sampler sees it.
pub struct Table<'a> {
    /// The `table` label (`rate_limits`, `replay`, ...).
    pub name: &'static str,
    /// The table's key prefix (`slots::RATE_LIMITS`, ...).
    pub key: &'static str,
    pub pages: u32,
    pub tenant: &'a dyn Tenant,
}

/// One table's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub table: &'static str,
    pub used: u64,
    pub slots: u64,
}

/// Takes or renews the lease for `worker`; `true` while it holds it.
pub fn hold_lease(store: &dyn SharedStore, worker: u64, now_ms: u64) -> Result<bool, StoreError> {
    let (bytes, cas) = store.get(LEASE_KEY)?.unwrap_or_default();
    // A value of another length is no lease; the zeros written at start
    // are one that expired long ago.
    let held_by_other = bytes.len() == 16 && u64_at(&bytes, 0) != worker;
    if held_by_other && u64_at(&bytes, 8) > now_ms {
        return Ok(false);
    }
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&worker.to_le_bytes());
    value[8..].copy_from_slice(&now_ms.saturating_add(LEASE_MS).to_le_bytes());
    match store.set(LEASE_KEY, &value, cas) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What one worker has read of the tables, page by page.
#[derive(Default)]
pub struct Sampler {
    /// Per table (in the order given), per page: used slots, or `None`
    /// while not read yet.
    used: Vec<Vec<Option<u8>>>,
    /// Per table: the next page to read.
    cursors: Vec<u32>,
}

impl Sampler {
    /// Reads about `budget` more pages, shared among the tables by size
    /// (at least one each, so a small table has a figure from the first
    /// tick), and returns every table's gauges.
    pub fn sample(
        &mut self,
        store: &dyn SharedStore,
        tables: &[Table<'_>],
        now_ms: u64,
        budget: u32,
    ) -> Result<Vec<Occupancy>, StoreError> {
        let sizes_changed = self.used.len() != tables.len()
            || self
                .used
                .iter()
                .zip(tables)
                .any(|(u, t)| u.len() != t.pages as usize);
        if sizes_changed {
            self.used = tables
                .iter()
                .map(|t| vec![None; t.pages as usize])
                .collect();
            self.cursors = vec![0; tables.len()];
        }
        let total: u64 = tables
            .iter()
            .map(|t| u64::from(t.pages))
            .sum::<u64>()
            .max(1);
        for ((table, used), cursor) in tables.iter().zip(&mut self.used).zip(&mut self.cursors) {
            let share = (u64::from(budget) * u64::from(table.pages)).div_ceil(total);
            for _ in 0..share.clamp(1, u64::from(table.pages)) {
                let page = *cursor % table.pages.max(1);
                let count = match store.get(&page_key(table.key, page))? {
                    Some((bytes, _)) => live_slots(&Page::decode(&bytes), table.tenant, now_ms),
                    None => 0,
                };
                if let Some(slot) = used.get_mut(page as usize) {
                    *slot = Some(count);
                }
                *cursor = page + 1;
            }
        }
        Ok(tables
            .iter()
            .zip(&self.used)
            .map(|(table, pages)| {
                let slots = u64::from(table.pages) * SLOTS_PER_PAGE as u64;
                let read: Vec<u64> = pages.iter().flatten().map(|&n| u64::from(n)).collect();
                let used = match read.len() {
                    0 => 0,
                    n => read.iter().sum::<u64>() * u64::from(table.pages) / n as u64,
                };
                Occupancy {
                    table: table.name,
                    used,
                    slots,
                }
            })
            .collect())
    }
}

/// Slots of `page` whose record may not be taken over at `now_ms`.
fn live_slots(page: &Page, tenant: &dyn Tenant, now_ms: u64) -> u8 {
    let live = page
        .records
        .iter()
        .filter(|r| r.tag != 0 && !tenant.reclaimable(r, now_ms))
        .count();
    u8::try_from(live).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::host::MemoryStore;
    use crate::state::replay::Expiring;
    use crate::state::slots::ensure_pages;

    fn fill(store: &MemoryStore, key: &str, page: u32, live: usize, expired: usize) {
        let mut p = Page::default();
        for (i, r) in p.records.iter_mut().enumerate().take(live + expired) {
            r.tag = i as u64 + 1;
            r.state = if i < live { 2_000 } else { 500 };
        }
        let name = page_key(key, page);
        let (_, cas) = store.get(&name).ok().flatten().unwrap_or_default();
        assert_eq!(store.set(&name, &p.encode(), cas), Ok(()));
    }

    #[test]
    fn a_full_pass_counts_live_records_only_and_partial_passes_scale_up() {
        let store = MemoryStore::new();
        let keys = (0..8)
            .map(|i| page_key("a", i))
            .chain((0..4).map(|i| page_key("b", i)));
        assert_eq!(ensure_pages(&store, keys), Ok(()));
        for page in 0..8 {
            fill(&store, "a", page, 4, 3);
        }
        fill(&store, "b", 0, 16, 0);
        let tables = [
            Table {
                name: "alpha",
                key: "a",
                pages: 8,
                tenant: &Expiring,
            },
            Table {
                name: "beta",
                key: "b",
                pages: 4,
                tenant: &Expiring,
            },
        ];
        let mut sampler = Sampler::default();
        let first = sampler.sample(&store, &tables, 1_000, 3);
        assert_eq!(
            first,
            Ok(vec![
                Occupancy {
                    table: "alpha",
                    used: 32,
                    slots: 128
                },
                Occupancy {
                    table: "beta",
                    used: 64,
                    slots: 64
                },
            ]),
            "two pages of alpha and one of beta read, each scaled up to its table"
        );
        let whole = sampler.sample(&store, &tables, 1_000, 12);
        assert_eq!(
            whole,
            Ok(vec![
                Occupancy {
                    table: "alpha",
                    used: 32,
                    slots: 128
                },
                Occupancy {
                    table: "beta",
                    used: 16,
                    slots: 64
                },
            ])
        );
        // Later, everything has expired: the next pass sees it.
        let later = sampler.sample(&store, &tables, 5_000, 12);
        assert_eq!(later.map(|o| o.iter().map(|x| x.used).sum::<u64>()), Ok(0));
    }

    #[test]
    fn one_worker_holds_the_lease_until_it_stops_renewing() {
        let store = MemoryStore::new();
        assert_eq!(hold_lease(&store, 1, 10_000), Ok(true));
        assert_eq!(hold_lease(&store, 2, 10_500), Ok(false));
        assert_eq!(hold_lease(&store, 1, 11_000), Ok(true), "renewed");
        assert_eq!(hold_lease(&store, 2, 13_500), Ok(false));
        assert_eq!(
            hold_lease(&store, 2, 14_001),
            Ok(true),
            "1 stopped renewing"
        );
        assert_eq!(hold_lease(&store, 1, 14_500), Ok(false));
    }
}
