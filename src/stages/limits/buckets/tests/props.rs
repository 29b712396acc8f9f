//! Property tests of the bucket and ban arithmetic, through the shared
//! slot table: random request sequences with clock jumps either way.

use super::*;
use proptest::prelude::*;

/// One step of a client's life: the wall clock moves (forward, or back as
/// after an NTP correction), then the client sends a request.
#[derive(Debug, Clone, Copy)]
enum Step {
    Forward(u64),
    Back(u64),
}

fn steps(max_forward_ms: u64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0..=max_forward_ms).prop_map(Step::Forward),
            1 => (0..=30_000u64).prop_map(Step::Back),
        ],
        1..200,
    )
}

/// Runs `steps` for one key; returns the outcomes and the time that
/// really passed (the forward moves: a step back corrects the clock, it
/// is no time flowing backwards), which bounds the tokens refilled.
fn run(rule: &Rule, bans: &BanPolicy, steps: &[Step]) -> (Vec<RuleOutcome>, u64) {
    let (store, metrics) = limiter_fixture(1);
    let rules = [rule.clone()];
    let limiter = Limiter {
        rules: &rules,
        bans,
        store: &store,
        metrics: &metrics,
        cost: 1,
    };
    let (mut now, mut elapsed) = (T0, 0);
    let mut outcomes = Vec::new();
    for step in steps {
        match *step {
            Step::Forward(ms) => {
                now += ms;
                elapsed += ms;
            }
            Step::Back(ms) => now = now.saturating_sub(ms),
        }
        let outcome = limiter.check(&rules[0], at(1, 0, 1), now, Charge::Take);
        outcomes.push(outcome.unwrap_or_else(|e| unreachable!("store: {e:?}")));
    }
    (outcomes, elapsed)
}

fn allowed(outcomes: &[RuleOutcome]) -> u64 {
    outcomes
        .iter()
        .filter(|o| matches!(o, RuleOutcome::Allowed(_)))
        .count() as u64
}

proptest! {
    /// A bucket that never refills allows at most its capacity, whatever
    /// the clock does.
    #[test]
    fn never_more_than_capacity_without_refill(capacity in 1u32..20, steps in steps(10_000)) {
        let (outcomes, _) = run(&rule(capacity, None, false), &bans(3), &steps);
        prop_assert!(allowed(&outcomes) <= u64::from(capacity));
    }

    /// A refilling bucket allows at most its capacity plus what refilled
    /// in the time that really passed: a clock stepping back (and forward
    /// again) creates no tokens.
    #[test]
    fn clock_jumps_never_create_tokens(
        capacity in 1u32..10,
        tokens in 1u32..5,
        every_ms in 100u64..5_000,
        steps in steps(3_000),
    ) {
        let r = rule(capacity, Some(Refill { tokens, every_ms }), false);
        let (outcomes, elapsed) = run(&r, &bans(3), &steps);
        let refilled = elapsed * u64::from(tokens) / every_ms;
        prop_assert!(
            allowed(&outcomes) <= u64::from(capacity) + refilled,
            "allowed {} of capacity {capacity} + {refilled} refilled",
            allowed(&outcomes)
        );
    }

    /// A ban is never announced as longer than the longest ban, and a
    /// banned key is never allowed before its ban could have ended.
    #[test]
    fn bans_stay_within_their_maximum(steps in steps(2_000)) {
        let r = rule(1, Some(Refill { tokens: 1, every_ms: 1_000 }), true);
        let b = bans(2);
        let (outcomes, _) = run(&r, &b, &steps);
        let max_s = b.max_ms.div_ceil(1000);
        for o in &outcomes {
            if let RuleOutcome::Banned { retry_after_s } = o {
                prop_assert!(*retry_after_s <= max_s, "retry after {retry_after_s} s > {max_s} s");
            }
        }
        // With the clock only moving forward, an allowed request never
        // follows a ban announcement before the ban's end.
        let forward: Vec<Step> = steps
            .iter()
            .map(|s| match s { Step::Back(ms) => Step::Forward(*ms), f => *f })
            .collect();
        let (outcomes, _) = run(&r, &b, &forward);
        let mut now = T0;
        let mut banned_until = 0u64;
        for (step, o) in forward.iter().zip(&outcomes) {
            if let Step::Forward(ms) = step { now += ms; }
            match o {
                RuleOutcome::Banned { retry_after_s } => {
                    banned_until = banned_until.max(now + retry_after_s * 1000 - 1000);
                }
                RuleOutcome::Allowed(_) | RuleOutcome::Reserved { .. } => prop_assert!(now >= banned_until, "allowed at {now} while banned until {banned_until}"),
                RuleOutcome::Throttled { .. } => {}
            }
        }
    }
}
