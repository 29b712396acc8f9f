//! Tokens a worker took from a shared bucket ahead of need (a rule's
//! `reserve`), spent on the key's next requests without touching shared
//! data or the clock.
//!
//! Every held token was taken from the shared bucket, so a key is never
//! allowed more than the bucket gives, whichever worker spends it. What a
//! reservation costs is fairness: held tokens are missing from the other
//! workers' view until spent, and those not spent within two ticks of the
//! root context are dropped, not handed back. So that a slow client does
//! not burn its bucket in batches it never uses, a batch is sized by what
//! the key sent this worker in the last tick period: a key seen once a
//! second takes one token at a time, a flood takes `reserve`.

use crate::core::verdict::Quota;

/// Keys a worker keeps track of at once; a key is placed by its tag alone
/// (no hashing, no probing), and a newcomer does not displace a key that
/// still holds tokens.
pub const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Slot {
    rule: u8,
    /// The key's tag (never 0); 0: empty.
    tag: u64,
    /// Held tokens, spendable up to and including tick `until_tick`.
    left: u32,
    until_tick: u32,
    /// The bucket as the batch left it, for quota headers.
    quota: Quota,
    /// Requests of the key in tick period `tick`, and in the one before.
    tick: u32,
    seen: u32,
    seen_before: u32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        rule: 0,
        tag: 0,
        left: 0,
        until_tick: 0,
        quota: Quota {
            rule: 0,
            capacity: 0,
            window_s: None,
            remaining: 0,
            reset_s: None,
        },
        tick: 0,
        seen: 0,
        seen_before: 0,
    };

    fn holds(&self, rule: u8, tag: u64) -> bool {
        self.tag == tag && self.rule == rule
    }

    fn live(&self, ticks: u32) -> bool {
        self.left > 0 && self.until_tick >= ticks
    }
}

/// One worker's held tokens and recent keys.
#[derive(Debug)]
pub struct Held {
    ticks: u32,
    slots: Vec<Slot>,
}

impl Default for Held {
    /// Empty until a reserving rule first needs it (about 400 KB a worker).
    fn default() -> Held {
        Held {
            ticks: 0,
            slots: Vec::new(),
        }
    }
}

/// What a request of a reserving rule does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A held token was spent: no shared data needed.
    Spent(Quota),
    /// Take this many tokens from the shared bucket (at least 1).
    Take(u32),
}

impl Held {
    fn slot(&mut self, rule: u8, tag: u64) -> &mut Slot {
        if self.slots.is_empty() {
            self.slots = vec![Slot::EMPTY; SLOTS];
        }
        let index = (tag ^ u64::from(rule).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize % SLOTS;
        &mut self.slots[index]
    }

    /// Counts a request of `rule` for the key `tag`, and spends a held
    /// token for it or says how many to take: up to `reserve`, as many as
    /// the key sent this worker in the previous tick period.
    pub fn next(&mut self, rule: u8, tag: u64, reserve: u32) -> Next {
        let ticks = self.ticks;
        let slot = self.slot(rule, tag);
        if !slot.holds(rule, tag) {
            if slot.live(ticks) {
                // Another key's tokens stay; this one takes one at a time.
                return Next::Take(1);
            }
            *slot = Slot {
                rule,
                tag,
                tick: ticks,
                ..Slot::EMPTY
            };
        }
        match ticks.wrapping_sub(slot.tick) {
            0 => {}
            1 => (slot.seen_before, slot.seen) = (slot.seen, 0),
            _ => (slot.seen_before, slot.seen) = (0, 0),
        }
        slot.tick = ticks;
        slot.seen = slot.seen.saturating_add(1);
        if slot.live(ticks) {
            slot.left -= 1;
            let mut quota = slot.quota;
            quota.remaining = quota.remaining.saturating_add(u64::from(slot.left));
            return Next::Spent(quota);
        }
        Next::Take(slot.seen_before.clamp(1, reserve.max(1)))
    }

    /// Keeps `spare` tokens for the key `tag` of `rule`, taken from the
    /// shared bucket with `quota` left there (right after [`Held::next`]).
    pub fn keep(&mut self, rule: u8, tag: u64, spare: u32, quota: Quota) {
        let ticks = self.ticks;
        let slot = self.slot(rule, tag);
        if spare > 0 && slot.holds(rule, tag) {
            slot.left = spare;
            slot.until_tick = ticks.wrapping_add(1);
            slot.quota = quota;
        }
    }

    /// The root context's tick: held tokens age (they expire lazily).
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
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

    /// Sends `n` requests of key `tag`; the batches asked for.
    fn takes(held: &mut Held, tag: u64, n: usize) -> Vec<u32> {
        (0..n)
            .filter_map(|_| match held.next(0, tag, 8) {
                Next::Take(k) => {
                    held.keep(0, tag, k - 1, quota(50));
                    Some(k)
                }
                Next::Spent(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_key_takes_batches_only_after_a_busy_tick_period() {
        let mut held = Held::default();
        assert_eq!(takes(&mut held, 7, 20), [1; 20], "nothing known yet");
        held.tick();
        // 20 last period: batches of 8, each spent before the next.
        assert_eq!(takes(&mut held, 7, 20), [8, 8, 8]);
        held.tick();
        held.tick();
        // A quiet period: one at a time again.
        assert_eq!(takes(&mut held, 7, 3), [1, 1, 1]);
    }

    #[test]
    fn a_slow_key_never_holds_tokens() {
        let mut held = Held::default();
        for _ in 0..10 {
            assert_eq!(takes(&mut held, 9, 1), [1]);
            held.tick();
        }
    }

    #[test]
    fn held_tokens_are_spent_with_their_quota_then_expire_on_the_second_tick() {
        let mut held = Held::default();
        takes(&mut held, 3, 5);
        held.tick();
        assert_eq!(held.next(0, 3, 8), Next::Take(5));
        held.keep(0, 3, 4, quota(90));
        assert_eq!(held.next(0, 3, 8), Next::Spent(quota(93)));
        held.tick();
        assert_eq!(held.next(0, 3, 8), Next::Spent(quota(92)), "one tick on");
        held.tick();
        assert!(
            matches!(held.next(0, 3, 8), Next::Take(_)),
            "two ticks: dropped"
        );
    }

    #[test]
    fn a_newcomer_does_not_displace_held_tokens_nor_share_them() {
        let mut held = Held::default();
        takes(&mut held, 5, 8);
        held.tick();
        assert_eq!(takes(&mut held, 5, 1), [8]);
        // The same slot, another key or rule: one token at a time, and the
        // first key keeps its 7.
        let same_slot = 5 + SLOTS as u64;
        assert_eq!(held.next(0, same_slot, 8), Next::Take(1));
        assert_eq!(held.next(1, 5, 8), Next::Take(1));
        assert!(matches!(held.next(0, 5, 8), Next::Spent(_)));
    }
}
