//! The reputation stage: CIDR allow and deny lists for IPv4 and IPv6, given
//! inline or fetched from a URL on an interval ([`config`]), each compiled
//! into a prefix trie whose lookups cost at most one node per address bit
//! whatever the list's size ([`table`]).
//!
//! An address on an `allow` list that applies to the route is never denied
//! by a `deny` list (it is not exempt from the other stages). An address on
//! a `deny` list gets 403 `reputation.deny`; the security event's `rule` is
//! the list's name.
//!
//! Remote lists are fetched the way remote JWK Sets are: one worker per
//! process fetches per interval (it wins a compare-and-swap on the list's
//! schedule record), stores the list in its compact binary form under a
//! second key, and every worker installs it when the generation changes.
//! A failed fetch, a list over [`MAX_LIST_BYTES`] or one with no prefix
//! among unreadable lines keeps the last good list.
//!
//! Schedule record (little-endian u64s): attempt ms, success ms,
//! generation. Data record: generation, then the binary list.

pub mod config;
pub mod table;

use crate::core::metrics::Counter;
use crate::core::mode::FailureMode;
use crate::core::remote::{encode_words, word, FetchPlan};
use crate::core::request::Facts;
use crate::core::stage::Services;
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::{create_if_absent, SharedStore, StoreError};
use crate::state::slots;
use config::{Action, RemoteList, Reputation, Source};
use std::sync::{Arc, Mutex, MutexGuard};
use table::Table;

/// Largest list document read from a fetch (text), and largest binary
/// form stored in shared data (what the NGINX zone size is computed with).
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// The remote lists this worker has installed: generation and table, by
/// list index (`None` for inline lists and lists not loaded yet).
#[derive(Debug, Default)]
pub struct State {
    installed: Mutex<Vec<Option<Installed>>>,
}

/// A fetched list's generation and table.
type Installed = (u64, Arc<Table>);

impl State {
    pub fn new(reputation: Option<&Reputation>) -> State {
        let lists = reputation.map_or(0, |r| r.lists.len());
        State {
            installed: Mutex::new(vec![None; lists]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Installed>>> {
        // One wasm VM per worker, single-threaded: a poisoned lock only
        // means a panic elsewhere, and the data is still whole.
        self.installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self, list: usize) -> u64 {
        self.lock()
            .get(list)
            .and_then(|e| e.as_ref().map(|(g, _)| *g))
            .unwrap_or(0)
    }

    fn install(&self, list: usize, generation: u64, table: Arc<Table>) {
        if let Some(slot) = self.lock().get_mut(list) {
            *slot = Some((generation, table));
        }
    }

    fn table(&self, list: usize) -> Option<Arc<Table>> {
        self.lock()
            .get(list)
            .and_then(|e| e.as_ref().map(|(_, t)| t.clone()))
    }
}

/// The check: allow lists first, then deny lists, on the lists that apply
/// to the request's route. No client address (the client_ip stage flagged
/// it): nothing to look up.
pub fn check(rep: &Reputation, state: &State, facts: &Facts<'_>, findings: &mut Vec<Finding>) {
    let Some(ip) = facts.client_ip else {
        return;
    };
    let mut denied = None;
    let mut unloaded = None;
    for (index, list) in rep.lists.iter().enumerate() {
        if !list.applies_to(facts.route) {
            continue;
        }
        let hit = match &list.source {
            Source::Inline(table) => table.contains(ip),
            Source::Remote(remote) => match state.table(index) {
                Some(table) => table.contains(ip),
                None => {
                    if list.action == Action::Deny && remote.without_list == FailureMode::Deny {
                        unloaded.get_or_insert(index);
                    }
                    false
                }
            },
        };
        match (hit, list.action) {
            (true, Action::Allow) => return,
            (true, Action::Deny) => {
                denied.get_or_insert(index);
            }
            (false, _) => {}
        }
    }
    let (reason, index) = match (denied, unloaded) {
        (Some(i), _) => (Reason::ReputationDeny, i),
        (None, Some(i)) => (Reason::ReputationNoList, i),
        (None, None) => return,
    };
    let mut finding = Finding::new(Stage::Reputation, reason, rep.mode);
    finding.rule = u8::try_from(index).ok();
    findings.push(finding);
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Schedule {
    attempt_ms: u64,
    success_ms: u64,
    generation: u64,
}

impl Schedule {
    fn decode(bytes: &[u8]) -> Schedule {
        Schedule {
            attempt_ms: word(bytes, 0),
            success_ms: word(bytes, 1),
            generation: word(bytes, 2),
        }
    }

    fn encode(&self) -> Vec<u8> {
        encode_words(&[self.attempt_ms, self.success_ms, self.generation], &[])
    }

    fn due(&self, remote: &RemoteList, now_ms: u64) -> bool {
        let fetch = &remote.fetch;
        fetch.due(self.attempt_ms, self.success_ms, false, now_ms)
    }
}

/// Creates each remote list's schedule record (at configuration, before
/// traffic: Envoy's first insert is not atomic).
pub fn ensure_records(rep: &Reputation, store: &dyn SharedStore) -> Result<(), StoreError> {
    for remote in rep.lists.iter().filter_map(|l| l.remote()) {
        create_if_absent(
            store,
            &remote.fetch.record_key,
            &Schedule::default().encode(),
        )?;
    }
    Ok(())
}

/// Called from the root context's tick: installs lists other workers
/// fetched, and returns the fetches this worker won.
pub fn due(
    rep: &Reputation,
    state: &State,
    store: &dyn SharedStore,
    now_ms: u64,
) -> Vec<FetchPlan> {
    let mut plans = Vec::new();
    for (index, list) in rep.lists.iter().enumerate() {
        let Some(remote) = list.remote() else {
            continue;
        };
        match poll(remote, state, index, store, now_ms) {
            Ok(true) => plans.push(remote.fetch.plan(index)),
            Ok(false) => {}
            Err(e) => log::warn!(
                "palisade: cannot read the shared state of list `{}` ({e:?})",
                list.name
            ),
        }
    }
    plans
}

/// One look at a list's schedule: installs a newer list, claims a due
/// fetch (true when this worker won it).
fn poll(
    remote: &RemoteList,
    state: &State,
    index: usize,
    store: &dyn SharedStore,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let Some((bytes, cas)) = store.get(&remote.fetch.record_key)? else {
        return Ok(false);
    };
    let mut schedule = Schedule::decode(&bytes);
    if schedule.generation != 0 && schedule.generation != state.generation(index) {
        if let Some((bytes, _)) = store.get(&remote.data_key())? {
            let generation = bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes);
            match (generation, bytes.get(8..).and_then(Table::decode)) {
                (Some(generation), Some(table)) => state.install(index, generation, Arc::new(table)),
                _ => log::warn!("palisade: the shared copy of a list is damaged; the last good list stays in use"),
            }
        }
    }
    if !schedule.due(remote, now_ms) {
        return Ok(false);
    }
    schedule.attempt_ms = now_ms;
    match store.set(&remote.fetch.record_key, &schedule.encode(), cas) {
        Ok(()) => Ok(true),
        // Another worker claimed it first.
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A fetch finished: `Ok(body)` for a 200 response, `Err(why)` otherwise.
/// A list that parsed replaces the list on every worker; anything else
/// keeps the last good list.
pub fn fetched(
    rep: &Reputation,
    state: &State,
    index: usize,
    result: Result<&[u8], String>,
    host: &Services<'_>,
) {
    let Some(list) = rep.lists.get(index) else {
        return;
    };
    let Some(remote) = list.remote() else {
        return;
    };
    let name = &list.name;
    let counter = |ok| Counter::ListFetch {
        list: u8::try_from(index).unwrap_or(u8::MAX),
        ok,
    };
    let failed = |why: &str| {
        log::warn!("palisade: list `{name}`: {why}; the last good list stays in use");
        host.metrics.increment(counter(false));
    };
    let body = match result {
        Ok(body) if body.len() > MAX_LIST_BYTES => {
            return failed(&format!("the fetched list is over {MAX_LIST_BYTES} bytes"))
        }
        Ok(body) => body,
        Err(why) => return failed(&format!("fetch failed: {why}")),
    };
    let parsed = table::parse_list(body);
    if let Some(first) = parsed.first_bad_line {
        log::warn!(
            "palisade: list `{name}`: {} lines are not a prefix and were skipped (the first is line {first})",
            parsed.bad_lines
        );
    }
    if parsed.table.is_empty() && parsed.bad_lines > 0 {
        return failed("the fetched document has no prefix");
    }
    let binary = parsed.table.encode();
    if binary.len() > MAX_LIST_BYTES {
        return failed(&format!(
            "the list's shared form is over {MAX_LIST_BYTES} bytes"
        ));
    }
    let Some(now_ms) = host.clock.now_ms() else {
        return failed("no clock to stamp the list");
    };
    match share(host.store, remote, now_ms, &binary) {
        Ok(generation) => {
            log::info!(
                "palisade: list `{name}`: fetched generation {generation} ({} prefixes)",
                parsed.table.len()
            );
            state.install(index, generation, Arc::new(parsed.table));
            host.metrics.increment(counter(true));
        }
        Err(e) => failed(&format!("cannot share the list ({e:?})")),
    }
}

/// Stores the binary list under the data key, then moves the schedule to
/// its generation: a worker that sees the new generation finds the list.
fn share(
    store: &dyn SharedStore,
    remote: &RemoteList,
    now_ms: u64,
    binary: &[u8],
) -> Result<u64, StoreError> {
    let current = store
        .get(&remote.fetch.record_key)?
        .map_or(0, |(bytes, _)| Schedule::decode(&bytes).generation);
    let generation = current.wrapping_add(1).max(1);
    let mut data = Vec::with_capacity(8 + binary.len());
    data.extend_from_slice(&generation.to_le_bytes());
    data.extend_from_slice(binary);
    slots::update_value(
        store,
        &remote.data_key(),
        <[u8]>::to_vec,
        Vec::clone,
        || {},
        |stored| {
            stored.clone_from(&data);
            (true, ())
        },
    )?;
    slots::update_value(
        store,
        &remote.fetch.record_key,
        Schedule::decode,
        Schedule::encode,
        || {},
        |schedule| {
            schedule.generation = generation;
            schedule.success_ms = now_ms;
            (true, ())
        },
    )?;
    Ok(generation)
}

#[cfg(test)]
mod tests;
