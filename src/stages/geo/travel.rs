//! Impossible travel (`geo.impossible_travel`): one user seen from two
//! countries closer in time than a journey between them could take.
//!
//! Threat: a stolen token or session used from the attacker's country while
//! its owner keeps using it at home. Each user (the authenticated subject,
//! or the user header) has one record in a shared slot table, under a keyed
//! hash: the country it was last seen in, and until when a request from
//! another country is impossible (`within` after that sighting).
//!
//! A country is a coarse place with no distance: two neighbours are minutes
//! apart, two continents half a day. `within` is therefore a policy, the
//! shortest time the operator believes a move between any two countries
//! takes, and VPN users look like travellers (hence monitor mode first).
//!
//! Enforced, the request from the other country is refused (403) and the
//! record stays where it was: the owner keeps working, the stranger stays
//! refused while the owner is active. Once the owner has been quiet for
//! `within`, the first country seen wins; that is the trade-off of telling
//! two places apart without knowing which is the owner. In monitor mode the
//! record follows the user. Requests without a country are not compared.
//!
//! Cost: one shared-data get per request of a user with a country; a
//! compare-and-swap when the country changes, and when the record has aged
//! an eighth of `within` (so a flagged move may come up to that much later
//! than `within` after the last request that refreshed the record).

use crate::core::config_error::{err, route_flags, slot_pages, ConfigError};
use crate::core::country::Country;
use crate::core::duration::Millis;
use crate::core::mode::Mode;
use crate::core::request::Facts;
use crate::core::routes::RouteTable;
use crate::core::stage::Ctx;
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::{CasRetries, SharedStore, StoreError};
use crate::state::replay::Expiring;
use crate::state::slots::{self, Address, Record};
use serde::Deserialize;
use std::hash::Hasher;

const DEFAULT_SLOTS: u32 = 65_536;
const DEFAULT_WITHIN_MS: u64 = 3_600_000;
/// A week: longer would keep users apart who really moved.
const MAX_WITHIN_MS: u64 = 7 * 24 * 3_600_000;
const MIN_WITHIN_MS: u64 = 1_000;

/// `geo.impossible_travel`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTravel {
    /// Mode of geo.impossible_travel findings; the `geo` mode by default.
    #[serde(default)]
    mode: Option<Mode>,
    /// The shortest believable move between two countries.
    #[serde(default)]
    within: Option<Millis>,
    /// Route classes checked; every class by default.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = crate::core::config_error::NAME_PATTERN)))
    )]
    routes: Option<Vec<String>>,
    /// Users remembered at once.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    slots: Option<u32>,
}

/// The compiled `geo.impossible_travel`.
#[derive(Debug, Clone)]
pub struct Travel {
    pub mode: Mode,
    within_ms: u64,
    /// Indexed by route id: whether the class is checked.
    applies: Vec<bool>,
    /// Pages of the travel table.
    pub pages: u32,
}

pub fn compile(
    raw: Option<RawTravel>,
    geo_mode: Mode,
    routes: &RouteTable,
) -> Result<Option<Travel>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let within_ms = raw.within.map_or(DEFAULT_WITHIN_MS, Millis::as_ms);
    if !(MIN_WITHIN_MS..=MAX_WITHIN_MS).contains(&within_ms) {
        return Err(err(
            "geo.impossible_travel.within",
            "must be between 1s and 7d",
        ));
    }
    let applies = match &raw.routes {
        None => vec![true; routes.len_with_default()],
        Some(names) => route_flags(routes, names, "geo.impossible_travel.routes")?,
    };
    let pages = slot_pages(raw.slots, DEFAULT_SLOTS, "geo.impossible_travel.slots")?;
    Ok(Some(Travel {
        mode: raw.mode.unwrap_or(geo_mode),
        within_ms,
        applies,
        pages,
    }))
}

impl Travel {
    fn applies_to(&self, facts: &Facts<'_>) -> bool {
        self.applies
            .get(usize::from(facts.route))
            .copied()
            .unwrap_or(false)
    }
}

/// The after-authentication step: the user's country against the one it
/// was last seen in.
pub fn check(travel: &Travel, facts: &Facts<'_>, ctx: &Ctx<'_>, findings: &mut Vec<Finding>) {
    let (Some(user), Some(country)) = (facts.user.as_deref(), facts.country) else {
        return;
    };
    if !travel.applies_to(facts) {
        return;
    }
    let Some(now_ms) = facts.now_ms(ctx.host.clock) else {
        findings.push(ctx.host_failure("clock", Stage::Geo));
        return;
    };
    let hash = ctx.keyed_hash(|h| {
        h.write(b"travel");
        h.write(user);
    });
    let addr = Ctx::address(hash, travel.pages);
    let sighting = Sighting {
        country,
        now_ms,
        within_ms: travel.within_ms,
        // Refused, the request leaves the owner's record alone.
        moves_record: travel.mode != Mode::Enforce,
    };
    match sighting.moved(ctx.host.store, ctx.host.metrics, addr) {
        Ok(false) => {}
        Ok(true) => findings.push(Finding::new(
            Stage::Geo,
            Reason::GeoImpossibleTravel,
            travel.mode,
        )),
        Err(error) => findings.push(ctx.store_failure("travel", Stage::Geo, error)),
    }
}

/// One request of a user from a country.
struct Sighting {
    country: Country,
    now_ms: u64,
    within_ms: u64,
    /// Whether a move updates the record to the new country.
    moves_record: bool,
}

impl Sighting {
    /// Whether the user was seen in another country less than `within`
    /// ago; records this sighting. A user the full table cannot hold is not
    /// compared: refusing it would let whoever fills the table lock users
    /// out, and records lapse `within` after a user's last request.
    fn moved<R: CasRetries + ?Sized>(
        &self,
        store: &dyn SharedStore,
        metrics: &R,
        addr: Address,
    ) -> Result<bool, StoreError> {
        // The record's `state` is the end of the window in which another
        // country is impossible; `strikes` holds the country's two letters.
        let code = u16::from_be_bytes(self.country);
        let until = self.now_ms.saturating_add(self.within_ms);
        let fresh_from = until.saturating_sub(self.within_ms / 8);
        let moved = slots::upsert(
            store,
            metrics,
            slots::TRAVEL,
            addr,
            self.now_ms,
            &Expiring,
            |record| {
                let live = record.state > self.now_ms;
                let moved = live && record.strikes != code;
                if (moved && !self.moves_record) || (!moved && live && record.state >= fresh_from) {
                    return (false, moved);
                }
                *record = Record {
                    tag: record.tag,
                    state: until,
                    strikes: code,
                    ..Record::default()
                };
                (true, moved)
            },
        )?;
        Ok(moved.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::MemoryMetrics;
    use crate::state::host::MemoryStore;

    const HOUR: u64 = 3_600_000;

    fn fixture(pages: u32) -> (MemoryStore, MemoryMetrics) {
        let store = MemoryStore::new();
        slots::ensure_pages(
            &store,
            (0..pages).map(|i| slots::page_key(slots::TRAVEL, i)),
        )
        .unwrap_or_else(|e| unreachable!("{e:?}"));
        (store, MemoryMetrics::default())
    }

    fn user(tag: u64) -> Address {
        Address {
            tag,
            home: 0,
            pages: 1,
        }
    }

    fn seen(
        (store, metrics): &(MemoryStore, MemoryMetrics),
        tag: u64,
        country: &[u8; 2],
        now_ms: u64,
        moves_record: bool,
    ) -> bool {
        let sighting = Sighting {
            country: *country,
            now_ms,
            within_ms: HOUR,
            moves_record,
        };
        sighting
            .moved(store, metrics, user(tag))
            .unwrap_or_else(|e| unreachable!("{e:?}"))
    }

    #[test]
    fn another_country_within_the_window_is_a_move() {
        let f = fixture(1);
        assert!(!seen(&f, 1, b"DE", 0, false));
        assert!(!seen(&f, 1, b"DE", HOUR / 2, false));
        assert!(seen(&f, 1, b"BR", HOUR / 2 + 1, false));
        // Another user is not affected.
        assert!(!seen(&f, 2, b"BR", HOUR / 2 + 1, false));
    }

    #[test]
    fn a_refused_move_leaves_the_owner_where_it_was() {
        let f = fixture(1);
        assert!(!seen(&f, 1, b"DE", 0, false));
        assert!(seen(&f, 1, b"BR", 10, false));
        assert!(seen(&f, 1, b"BR", 20, false), "still refused");
        assert!(!seen(&f, 1, b"DE", 30, false), "the owner keeps working");
        // Quiet for the window, the next country seen wins.
        assert!(!seen(&f, 1, b"BR", 30 + HOUR, false));
        assert!(seen(&f, 1, b"DE", 40 + HOUR, false));
    }

    #[test]
    fn in_monitor_mode_the_record_follows_the_user() {
        let f = fixture(1);
        assert!(!seen(&f, 1, b"DE", 0, true));
        assert!(seen(&f, 1, b"BR", 10, true));
        assert!(!seen(&f, 1, b"BR", 20, true), "now in Brazil");
        assert!(seen(&f, 1, b"DE", 30, true));
    }

    #[test]
    fn the_window_runs_from_the_last_refresh() {
        let f = fixture(1);
        assert!(!seen(&f, 1, b"DE", 0, false));
        // Within an eighth of the window the record is not rewritten.
        assert!(!seen(&f, 1, b"DE", HOUR / 8 - 1, false));
        // After it, it is: the window now ends an hour after this request.
        assert!(!seen(&f, 1, b"DE", HOUR / 2, false));
        assert!(seen(&f, 1, b"BR", HOUR + HOUR / 4, false));
        assert!(!seen(&f, 1, b"BR", HOUR / 2 + HOUR, false), "window over");
    }

    #[test]
    fn only_moves_and_aged_records_are_written() {
        let f = fixture(1);
        let version = |f: &(MemoryStore, MemoryMetrics)| {
            f.0.get(&slots::page_key(slots::TRAVEL, 0))
                .ok()
                .flatten()
                .map(|(_, cas)| cas)
        };
        seen(&f, 1, b"DE", 0, false);
        let first = version(&f);
        for t in 1..100 {
            seen(&f, 1, b"DE", t * 1_000, false);
        }
        assert_eq!(version(&f), first, "a steady user costs no write");
        seen(&f, 1, b"BR", 200_000, false);
        assert_eq!(version(&f), first, "a refused move writes nothing");
        seen(&f, 1, b"DE", HOUR / 4, false);
        assert_ne!(version(&f), first);
    }

    #[test]
    fn a_full_table_compares_no_one_and_refuses_no_one() {
        let f = fixture(1);
        for tag in 1..=slots::SLOTS_PER_PAGE as u64 {
            assert!(!seen(&f, tag, b"DE", 0, false));
        }
        let extra = slots::SLOTS_PER_PAGE as u64 + 1;
        assert!(!seen(&f, extra, b"DE", 1, false));
        assert!(!seen(&f, extra, b"BR", 2, false));
    }
}
