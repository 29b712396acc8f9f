//! Tokens a worker took from a shared bucket ahead of need (a rule's
//! `reserve`), spent on the key's next requests without touching shared
//! data or the clock.
//!
//! Every held token was taken from the shared bucket, so a key is never
//! allowed more than the bucket gives, whichever worker spends it. What a
//! reservation costs is fairness, not safety: tokens held by one worker are
//! missing from the others' view until spent or dropped. They are dropped
//! (never handed back) once the reservation has lived through two ticks
//! of the root context, so a worker withholds at most `reserve - 1` tokens
//! per key, for at most two tick periods.

use crate::core::verdict::Quota;
use std::collections::HashMap;

/// Reservations kept at once per worker; past this, new ones are not kept
/// (their spare tokens are forfeited, which only under-admits).
pub const MAX_HELD: usize = 4096;

/// Ticks a reservation survives: made just before a tick, it lives one
/// period; made just after, nearly two.
const LIFETIME_TICKS: u32 = 2;

#[derive(Debug)]
struct Reservation {
    left: u32,
    /// Last tick count at which the tokens may still be spent.
    until_tick: u32,
    /// The bucket as the reservation left it, for quota headers.
    quota: Quota,
}

/// One worker's reservations, by rule and key tag.
#[derive(Debug, Default)]
pub struct Held {
    ticks: u32,
    by_key: HashMap<(u8, u64), Reservation>,
}

impl Held {
    /// Spends one held token of `rule` for the key `tag`: the quota to
    /// report, or `None` when none is held.
    pub fn spend(&mut self, rule: u8, tag: u64) -> Option<Quota> {
        let held = self.by_key.get_mut(&(rule, tag))?;
        if held.left == 0 || held.until_tick < self.ticks {
            self.by_key.remove(&(rule, tag));
            return None;
        }
        held.left -= 1;
        let mut quota = held.quota;
        quota.remaining = quota.remaining.saturating_add(u64::from(held.left));
        if held.left == 0 {
            self.by_key.remove(&(rule, tag));
        }
        Some(quota)
    }

    /// Keeps `spare` tokens of `rule` for the key `tag`, taken from the
    /// shared bucket with `quota` left there.
    pub fn keep(&mut self, rule: u8, tag: u64, spare: u32, quota: Quota) {
        if spare == 0 {
            return;
        }
        if self.by_key.len() >= MAX_HELD && !self.by_key.contains_key(&(rule, tag)) {
            self.drop_expired();
            if self.by_key.len() >= MAX_HELD {
                return;
            }
        }
        self.by_key.insert(
            (rule, tag),
            Reservation {
                left: spare,
                until_tick: self.ticks.wrapping_add(LIFETIME_TICKS - 1),
                quota,
            },
        );
    }

    /// The root context's tick: reservations age, the expired go.
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        self.drop_expired();
    }

    fn drop_expired(&mut self) {
        let now = self.ticks;
        self.by_key.retain(|_, r| r.left > 0 && r.until_tick >= now);
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: u64) -> Quota {
        Quota {
            rule: 0,
            capacity: 100,
            window_s: Some(60),
            remaining,
            reset_s: Some(1),
        }
    }

    #[test]
    fn held_tokens_are_spent_once_each_then_gone() {
        let mut held = Held::default();
        assert_eq!(held.spend(0, 7), None);
        held.keep(0, 7, 3, quota(90));
        let left: Vec<u64> = (0..4)
            .map_while(|_| held.spend(0, 7).map(|q| q.remaining))
            .collect();
        assert_eq!(
            left,
            [92, 91, 90],
            "the client sees its held tokens as left"
        );
        assert!(held.is_empty());
        // Another rule or key holds nothing.
        held.keep(0, 7, 2, quota(90));
        assert_eq!(held.spend(1, 7), None);
        assert_eq!(held.spend(0, 8), None);
    }

    #[test]
    fn reservations_expire_on_the_second_tick() {
        let mut held = Held::default();
        held.keep(0, 1, 5, quota(10));
        held.tick();
        assert!(held.spend(0, 1).is_some(), "one tick later: still held");
        held.tick();
        assert_eq!(
            held.spend(0, 1),
            None,
            "two ticks: dropped, not handed back"
        );
        assert!(held.is_empty());
    }

    #[test]
    fn a_full_table_keeps_no_more_reservations() {
        let mut held = Held::default();
        for tag in 0..MAX_HELD as u64 {
            held.keep(0, tag, 1, quota(10));
        }
        held.keep(0, u64::MAX, 1, quota(10));
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(held.spend(0, u64::MAX), None);
        // Once the old ones expire there is room again.
        held.tick();
        held.tick();
        held.keep(0, u64::MAX, 1, quota(10));
        assert!(held.spend(0, u64::MAX).is_some());
    }
}
