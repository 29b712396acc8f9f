//! Every shared table through the whole pipeline under forced
//! compare-and-swap collisions (issue 17 item 5).
//!
//! `tests/integration/test_contention.py` shows exactness through Envoy
//! with 4 workers, but on a small machine real collisions there are rare.
//! Here 4 threads released by a barrier go through `Engine::evaluate` (and
//! `Engine::check_body`) on a store that yields to the other threads after
//! every read, so between a worker's read and its compare-and-swap the
//! others run: collisions are the rule, and a read-modify-write that lost
//! an update would let one request too many through (a bucket, the
//! overflow bucket, a refresh token, a nonce), count a strike twice or not
//! at all (bans), leave a token in a `counts: failures` bucket, or forget a
//! path (the behaviour record). Each test asserts, last, that collisions
//! happened (without the yield, most of these races see none at all).
//!
//! A request whose every compare-and-swap lost is answered 503
//! `store.unavailable`; it changed nothing, so it is counted and sent
//! again, never taken for a pass.

use super::*;
use crate::stages::bot::behaviour::{self, ClientRecord};
use crate::state::host::Versioned;
use crate::state::slots::Page;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

const THREADS: usize = 4;

/// Sends of one request answered 503 `store.unavailable` before giving up.
const MAX_RESENDS: u32 = 10_000;

/// A [`MemoryStore`] that hands the CPU to the other threads after every
/// read, so that their writes land between this thread's read and its
/// compare-and-swap; counts the compare-and-swaps that lost.
struct Interleaving<'a> {
    store: &'a MemoryStore,
    mismatches: AtomicU64,
}

impl SharedStore for Interleaving<'_> {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let read = self.store.get(key);
        std::thread::yield_now();
        for _ in 0..200 {
            std::hint::spin_loop();
        }
        read
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let written = self.store.set(key, value, cas);
        if written == Err(StoreError::CasMismatch) {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        written
    }
}

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Answer {
    status: u16,
    /// The refusal's reason code; empty for a pass.
    reason: String,
    retry_after: Option<String>,
}

impl Answer {
    fn pass() -> Answer {
        Answer {
            status: 200,
            reason: String::new(),
            retry_after: None,
        }
    }

    fn of(r: &LocalResponse) -> Answer {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        Answer {
            status: r.status,
            reason: body["reason"].as_str().unwrap_or("").to_string(),
            retry_after: header(r, "retry-after").map(str::to_string),
        }
    }

    fn is(&self, status: u16, reason: &str) -> bool {
        self.status == status && self.reason == reason
    }
}

/// A [`Fixture`] whose requests go through an [`Interleaving`] store.
struct Race {
    f: Fixture,
    /// Requests sent again after a 503 `store.unavailable`.
    resent: AtomicU64,
    /// Compare-and-swaps that lost, over all races.
    mismatches: AtomicU64,
}

impl Race {
    fn new(json: &str) -> Race {
        Race {
            f: Fixture::new(json),
            resent: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
        }
    }

    /// One request through both phases on `store`, as the fixture's peer.
    fn once(&self, store: &dyn SharedStore, pairs: &[(&str, &str)], body: &[u8]) -> Answer {
        let bytes = encode_map(pairs);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        let services = Services {
            store,
            clock: &self.f.clock,
            metrics: &self.f.metrics,
        };
        let peer = || Some("192.0.2.10:40000".to_string());
        match self.f.engine.evaluate(&headers, &peer, &services) {
            Verdict::Respond(r) => Answer::of(&r),
            Verdict::Allow { body: None, .. } => Answer::pass(),
            Verdict::Allow {
                body: Some(check), ..
            } => match self
                .f
                .engine
                .check_body(&check, Body::Complete(body), &services, None)
                .response()
            {
                None => Answer::pass(),
                Some(r) => Answer::of(&r),
            },
        }
    }

    /// One request, sent again while every compare-and-swap of it lost.
    fn send(&self, store: &dyn SharedStore, pairs: &[(&str, &str)], body: &[u8]) -> Answer {
        for _ in 0..MAX_RESENDS {
            let answer = self.once(store, pairs, body);
            if !answer.is(503, "store.unavailable") {
                return answer;
            }
            self.resent.fetch_add(1, Ordering::Relaxed);
        }
        unreachable!("a request lost every compare-and-swap {MAX_RESENDS} times")
    }

    /// Thread `t`'s share of a race in which every one of `keys` client
    /// addresses sends `per_thread` GETs from each thread (see
    /// [`keys_per_thread`]); the answers by key.
    fn every_key(
        &self,
        store: &dyn SharedStore,
        t: usize,
        keys: usize,
        per_thread: usize,
    ) -> Vec<(usize, Answer)> {
        keys_per_thread(t, keys, per_thread)
            .map(|k| {
                let ip = ip(k);
                let pairs = [(":method", "GET"), (":path", "/"), ("x-forwarded-for", &ip)];
                (k, self.send(store, &pairs, b""))
            })
            .collect()
    }

    /// One request alone, on the plain store.
    fn alone(&self, pairs: &[(&str, &str)], body: &[u8]) -> Answer {
        self.send(&self.f.store, pairs, body)
    }

    /// Runs `work(thread, store, barrier)` on [`THREADS`] threads released
    /// together by `barrier` (which `work` may wait on again to start
    /// rounds together), all on one interleaving store; their results by
    /// thread. Prints and adds up the compare-and-swaps that lost (see
    /// [`Race::collided`]).
    fn run<T: Send>(
        &self,
        test: &str,
        work: impl Fn(usize, &Interleaving<'_>, &Barrier) -> T + Sync,
    ) -> Vec<T> {
        let store = Interleaving {
            store: &self.f.store,
            mismatches: AtomicU64::new(0),
        };
        let barrier = Barrier::new(THREADS);
        let results = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, barrier, work) = (&store, &barrier, &work);
                    s.spawn(move || {
                        barrier.wait();
                        work(t, store, barrier)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| unreachable!("a worker failed")))
                .collect::<Vec<T>>()
        });
        let mismatches = store.mismatches.load(Ordering::Relaxed);
        println!(
            "contention: {test}: {mismatches} compare-and-swaps lost; so far in this test {} retries counted, {} requests sent again after 503 store.unavailable",
            self.f.metrics.get(&Counter::CasRetry),
            self.resent.load(Ordering::Relaxed)
        );
        self.mismatches.fetch_add(mismatches, Ordering::Relaxed);
        results
    }

    /// Asserts, after a test's own assertions, that its races made
    /// compare-and-swaps collide: it went through the retry path.
    fn collided(&self) {
        assert!(
            self.mismatches.load(Ordering::Relaxed) > 0,
            "no compare-and-swap collided"
        );
    }
}

/// How many times each answer came, by key.
fn tally<K: Ord>(
    answers: impl IntoIterator<Item = (K, Answer)>,
) -> BTreeMap<K, Vec<(Answer, usize)>> {
    let mut by_key: BTreeMap<K, BTreeMap<Answer, usize>> = BTreeMap::new();
    for (key, answer) in answers {
        *by_key.entry(key).or_default().entry(answer).or_default() += 1;
    }
    by_key
        .into_iter()
        .map(|(k, c)| (k, c.into_iter().collect()))
        .collect()
}

fn count(answers: &[(Answer, usize)], status: u16, reason: &str) -> usize {
    answers
        .iter()
        .filter(|(a, _)| a.is(status, reason))
        .map(|(_, n)| n)
        .sum()
}

fn ip(i: usize) -> String {
    format!("198.18.{}.{}", i / 200, i % 200 + 1)
}

/// Every key `per_thread` times from each thread, each thread starting at
/// another key: the requests of one key are spread over the whole race.
fn keys_per_thread(t: usize, keys: usize, per_thread: usize) -> impl Iterator<Item = usize> {
    (0..keys * per_thread).map(move |i| (i + t * keys / THREADS) % keys)
}

/// Rate-limit buckets of many keys sharing pages (3 of 16 slots for 46
/// keys: a full page sends keys to another), every throttled request
/// writing its strike too: every key gets exactly its capacity.
#[test]
fn many_keys_each_get_exactly_their_capacity() {
    let (pages, keys, capacity, per_thread) = (3u32, 46, 5, 3);
    let slot_count = pages as usize * slots::SLOTS_PER_PAGE;
    let race = Race::new(&format!(
        r#"{{"client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
            "rate_limits": {{"slots": {slot_count}, "rules": [{{"name": "per-ip", "key": ["ip"], "capacity": {capacity}, "refill": "none", "ban": true}}]}},
            "bans": {{"after": 10000}}}}"#
    ));
    let results = race.run("buckets", |t, store, _| {
        race.every_key(store, t, keys, per_thread)
    });
    // The table after the race: keys placed, keys on an alternate, and
    // spill entries that name no record anywhere.
    let pages: Vec<Page> = (0..pages)
        .map(|i| {
            let key = slots::page_key(slots::RATE_LIMITS, i);
            let bytes = race.f.store.get(&key).ok().flatten().unwrap_or_default().0;
            Page::decode(&bytes)
        })
        .collect();
    let tags: Vec<u64> = pages
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.tag).filter(|&t| t != 0))
        .collect();
    let entries: Vec<u64> = pages
        .iter()
        .flat_map(|p| p.spills.iter().map(|s| s.tag).filter(|&t| t != 0))
        .collect();
    let orphans = entries.iter().filter(|t| !tags.contains(t)).count();
    let table = format!(
        "{} records, {} spill entries, {orphans} of them naming no record",
        tags.len(),
        entries.len()
    );
    println!("contention: buckets: {table}");
    let by_key = tally(results.into_iter().flatten());
    assert_eq!(by_key.len(), keys);
    let sent = THREADS * per_thread;
    for (k, answers) in &by_key {
        assert_eq!(
            count(answers, 200, ""),
            capacity,
            "key {k}: {answers:?}; {table}"
        );
        assert_eq!(
            count(answers, 429, "rl.exhausted"),
            sent - capacity,
            "key {k}: {answers:?}; {table}"
        );
    }
    // The keys did share pages and spill: every key placed, some of them
    // on an alternate.
    assert_eq!(tags.len(), keys, "{table}");
    assert!(
        !entries.is_empty(),
        "no key spilled: the test did not cover alternates"
    );
    race.collided();
}

/// Two rules of one client (per address; per address and route) keep their
/// records on its home page and are charged in one compare-and-swap; with
/// 20 keys (40 records) on 3 pages of 16 slots some records spill, and those clients'
/// rules go one at a time. Either way every key passes exactly the tighter
/// rule's capacity (5), and the looser one (8) is charged only while it
/// has tokens and only for requests it sees: 3 refusals by the tighter
/// rule, then 4 by the looser one, 7 in all of 12.
#[test]
fn rules_of_one_client_charged_together_stay_exact() {
    let (pages, keys, per_thread) = (3u32, 20, 3);
    let slot_count = pages as usize * slots::SLOTS_PER_PAGE;
    let race = Race::new(&format!(
        r#"{{"client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
            "rate_limits": {{"slots": {slot_count}, "rules": [
                {{"name": "ip", "key": ["ip"], "capacity": 8, "refill": "none"}},
                {{"name": "ip-route", "key": ["ip", "route"], "capacity": 5, "refill": "none"}}]}}}}"#
    ));
    let results = race.run("one client's rules", |t, store, _| {
        race.every_key(store, t, keys, per_thread)
    });
    let spilled = (0..pages)
        .map(|i| {
            let key = slots::page_key(slots::RATE_LIMITS, i);
            let bytes = race.f.store.get(&key).ok().flatten().unwrap_or_default().0;
            Page::decode(&bytes)
        })
        .flat_map(|p| p.spills)
        .filter(|s| s.tag != 0)
        .count();
    let by_key = tally(results.into_iter().flatten());
    assert_eq!(by_key.len(), keys);
    for (k, answers) in &by_key {
        assert_eq!(count(answers, 200, ""), 5, "key {k}: {answers:?}");
        assert_eq!(
            count(answers, 429, "rl.exhausted"),
            7,
            "key {k}: {answers:?}"
        );
    }
    assert!(
        spilled > 0,
        "no record spilled: the one-by-one path was not covered"
    );
    race.collided();
}

/// A full table (32 slots, 48 keys, buckets that never refill): every key
/// without a slot goes through the rule's one overflow bucket, which lets
/// exactly the rule's capacity through for all of them together.
#[test]
fn the_overflow_bucket_holds_exactly_the_rules_capacity() {
    let (slot_count, keys, capacity, per_thread) = (32, 48, 5, 2);
    let race = Race::new(&format!(
        r#"{{"client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
            "rate_limits": {{"slots": {slot_count}, "rules": [{{"name": "tiny", "key": ["ip"], "capacity": {capacity}, "refill": "none"}}]}}}}"#
    ));
    let results = race.run("overflow", |t, store, _| {
        race.every_key(store, t, keys, per_thread)
    });
    let by_key = tally(results.into_iter().flatten());
    let sent = THREADS * per_thread;
    let (placed, unplaced): (Vec<_>, Vec<_>) = by_key
        .iter()
        .partition(|(_, a)| count(a, 429, "rl.exhausted") > 0);
    for (k, answers) in &by_key {
        let known = count(answers, 200, "")
            + count(answers, 429, "rl.exhausted")
            + count(answers, 429, "rl.overflow");
        assert_eq!(known, sent, "key {k}: {answers:?}");
    }
    for (k, answers) in &placed {
        assert_eq!(count(answers, 200, ""), capacity, "key {k}: {answers:?}");
        assert_eq!(
            count(answers, 429, "rl.overflow"),
            0,
            "key {k}: {answers:?}"
        );
    }
    assert_eq!(placed.len(), slot_count, "every slot is used");
    let overflow_passes: usize = unplaced.iter().map(|(_, a)| count(a, 200, "")).sum();
    assert_eq!(
        overflow_passes,
        capacity,
        "the overflow bucket's passes for {} unplaced keys",
        unplaced.len()
    );
    let late = ip(keys + 1);
    let answer = race.alone(
        &[
            (":method", "GET"),
            (":path", "/"),
            ("x-forwarded-for", &late),
        ],
        b"",
    );
    assert!(answer.is(429, "rl.overflow"), "{answer:?}");
    race.collided();
}

/// One client's concurrent violations: exactly `capacity` passes, exactly
/// `after` throttles (the last issues the ban), the rest banned with the
/// first level's Retry-After; one ban issued.
#[test]
fn concurrent_violations_make_exactly_one_first_level_ban() {
    let (capacity, after, per_thread) = (20, 30, 40);
    let race = Race::new(&format!(
        r#"{{"rate_limits": {{"rules": [{{"name": "b", "key": ["ip"], "capacity": {capacity}, "refill": "none", "ban": true}}]}},
            "bans": {{"after": {after}, "base": "60s", "factor": 2.0, "max": "1h", "decay": "10m"}}}}"#
    ));
    let results = race.run("bans", |_, store, _| {
        (0..per_thread)
            .map(|_| {
                (
                    (),
                    race.send(store, &[(":method", "GET"), (":path", "/")], b""),
                )
            })
            .collect::<Vec<_>>()
    });
    let all = tally(results.into_iter().flatten());
    let answers = all.get(&()).cloned().unwrap_or_default();
    let n = THREADS * per_thread;
    assert_eq!(count(&answers, 200, ""), capacity, "{answers:?}");
    assert_eq!(count(&answers, 429, "rl.exhausted"), after, "{answers:?}");
    assert_eq!(
        count(&answers, 403, "ban.active"),
        n - capacity - after,
        "{answers:?}"
    );
    // The clock stands still: the first level is 60 s to go, the second 120.
    for (answer, _) in answers.iter().filter(|(a, _)| a.status == 403) {
        assert_eq!(answer.retry_after.as_deref(), Some("60"), "{answer:?}");
    }
    assert_eq!(race.f.metrics.get(&Counter::BanIssued { rule: 0 }), 1);
    let later = race.alone(&[(":method", "GET"), (":path", "/")], b"");
    assert_eq!(
        (later.status, later.retry_after.as_deref()),
        (403, Some("60"))
    );
    race.collided();
}

const GOOD_API_KEY: &str = "contention-native-good-key";

fn failures_config(capacity: usize) -> String {
    let hash: String = sha2::Sha256::digest(GOOD_API_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"{{"client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
            "routes": [{{"name": "api", "prefix": "/api/"}}],
            "api_keys": {{"header": "x-api-key", "keys": [{{"id": "good", "sha256": "{hash}", "roles": ["r"]}}]}},
            "authorization": {{"policies": [{{"routes": ["api"], "credentials": ["api_key"]}}]}},
            "rate_limits": {{"rules": [{{"name": "api-failures", "key": ["ip"], "routes": ["api"], "capacity": {capacity}, "refill": "none", "counts": "failures"}}]}}}}"#
    )
}

use sha2::Digest as _;

/// A request to the failures rule's route from `ip` with API key `key`.
fn api_key_request<'a>(ip: &'a str, key: &'a str) -> [(&'a str, &'a str); 4] {
    [
        (":method", "GET"),
        (":path", "/api/x"),
        ("x-forwarded-for", ip),
        ("x-api-key", key),
    ]
}

/// Rate-limit findings `store.unavailable` counted so far: requests whose
/// every compare-and-swap on a bucket lost.
fn lost_takes(race: &Race) -> u64 {
    race.f.metrics.get(&Counter::Finding {
        stage: Stage::RateLimit,
        reason: Reason::StoreUnavailable,
        mode: Mode::Enforce,
        route: race.f.route("api"),
    })
}

/// A `counts: failures` rule takes exactly one token per refused request:
/// `capacity - 1` refusals at once leave exactly one token; ten times the
/// capacity at once verify at least the capacity, at most one more per
/// other thread, and empty the bucket.
#[test]
fn a_failures_rule_takes_exactly_one_token_per_refusal() {
    let capacity = 60;
    let race = Race::new(&failures_config(capacity));
    let request = |race: &Race, store: &dyn SharedStore, ip: &str, key: &str| {
        race.send(store, &api_key_request(ip, key), b"")
    };
    let first = "198.51.100.20";
    let results = race.run("failures (capacity - 1)", |t, store, _| {
        (0..capacity - 1)
            .filter(|i| i % THREADS == t)
            .map(|i| ((), request(&race, store, first, &format!("wrong-{i}"))))
            .collect::<Vec<_>>()
    });
    let got = tally(results.into_iter().flatten());
    assert_eq!(
        got.get(&()).map(|a| count(a, 401, "apikey.invalid")),
        Some(capacity - 1),
        "{got:?}"
    );
    let plain: &dyn SharedStore = &race.f.store;
    let sequel = [
        request(&race, plain, first, GOOD_API_KEY),
        request(&race, plain, first, "wrong-last"),
        request(&race, plain, first, "wrong-after"),
        request(&race, plain, first, GOOD_API_KEY),
    ];
    let sequel: Vec<(u16, &str)> = sequel
        .iter()
        .map(|a| (a.status, a.reason.as_str()))
        .collect();
    assert_eq!(
        sequel,
        [
            (200, ""),
            (401, "apikey.invalid"),
            (429, "rl.exhausted"),
            (429, "rl.exhausted")
        ],
        "successes take nothing, the last token goes to the next refusal; {} takes lost every compare-and-swap",
        lost_takes(&race)
    );

    let second = "198.51.100.21";
    let n = 10 * capacity;
    let results = race.run("failures (10 × capacity)", |t, store, _| {
        (0..n)
            .filter(|i| i % THREADS == t)
            .map(|i| ((), request(&race, store, second, &format!("wrong-{i}"))))
            .collect::<Vec<_>>()
    });
    let got = tally(results.into_iter().flatten());
    let answers = got.get(&()).cloned().unwrap_or_default();
    let lost = lost_takes(&race);
    let refused = count(&answers, 401, "apikey.invalid");
    let throttled = count(&answers, 429, "rl.exhausted");
    println!("contention: failures: {n} wrong keys, capacity {capacity}: {refused} verified and refused, {throttled} throttled");
    assert_eq!(refused + throttled, n, "{answers:?}");
    // A request reads, verifies and takes within one evaluation: at most
    // one per other thread reads the bucket before its last token goes.
    assert!(
        (capacity..capacity + THREADS).contains(&refused),
        "{answers:?}; {lost} takes lost every compare-and-swap so far"
    );
    assert!(request(&race, plain, second, GOOD_API_KEY).is(429, "rl.exhausted"));
    race.collided();
}

const REFRESH_CONFIG: &str = r#"{
    "routes": [{"name": "token", "path": "/oauth/token", "methods": ["POST"]}],
    "jwt": {"refresh_tokens": {"routes": ["token"], "remember": "1d", "slots": 512}}
}"#;

/// Rounds the threads start together in the tests of once-only tables: a
/// token or nonce collides only when it is first written, so each round
/// brings new ones for every thread at the same time.
const ROUNDS: usize = 24;
/// Copies of a round's shared token or nonce each thread sends.
const COPIES: usize = 3;

/// The once-only items of round `r` as thread `t` sends them: the one
/// item every thread sends in every round, the round's shared item
/// [`COPIES`] times, and the thread's own item once, each as its name.
fn once_only_items(r: usize, t: usize) -> Vec<String> {
    let shared = format!("shared-{r}");
    vec![
        "one".to_string(),
        shared.clone(),
        format!("own-{r}-{t}"),
        shared.clone(),
        shared,
    ]
}

/// Runs [`ROUNDS`] rounds of `send(item)` over the items of
/// [`once_only_items`], and checks that each item passed exactly once
/// (every other copy refused with `replayed`).
fn check_once_only(
    race: &Race,
    test: &str,
    replayed: (u16, &str),
    send: impl Fn(&dyn SharedStore, &str) -> Answer + Sync,
) {
    let results = race.run(test, |t, store, barrier| {
        let mut answers = Vec::new();
        for r in 0..ROUNDS {
            barrier.wait();
            for item in once_only_items(r, t) {
                let answer = send(store, &item);
                answers.push((item, answer));
            }
        }
        answers
    });
    let by_item = tally(results.into_iter().flatten());
    assert_eq!(by_item.len(), 1 + ROUNDS + ROUNDS * THREADS);
    for (item, answers) in &by_item {
        let sent = if item == "one" {
            ROUNDS * THREADS
        } else if item.starts_with("shared-") {
            COPIES * THREADS
        } else {
            1
        };
        assert_eq!(count(answers, 200, ""), 1, "{item}: {answers:?}");
        assert_eq!(
            count(answers, replayed.0, replayed.1),
            sent - 1,
            "{item}: {answers:?}"
        );
    }
}

fn grant(race: &Race, store: &dyn SharedStore, token: &str) -> Answer {
    let body = format!("grant_type=refresh_token&refresh_token=rt-{token}&client_id=web");
    race.send(
        store,
        &[
            (":method", "POST"),
            (":path", "/oauth/token"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

/// One refresh token presented by every thread in every round passes once;
/// each round's shared token, presented by every thread at once, passes
/// once; every thread's own token passes (distinct tokens are never
/// mistaken for each other).
#[test]
fn refresh_tokens_pass_exactly_once() {
    let race = Race::new(REFRESH_CONFIG);
    check_once_only(
        &race,
        "refresh tokens",
        (400, "oauth.refresh_reuse"),
        |store, token| grant(&race, store, token),
    );
    for token in ["one", "shared-0", "own-0-0"] {
        assert!(grant(&race, &race.f.store, token).is(400, "oauth.refresh_reuse"));
    }
    race.collided();
}

const SIGNING_SECRET: &[u8] = b"contention-native-signing-secret";

fn signature_config() -> String {
    let secret = base64::engine::general_purpose::STANDARD.encode(SIGNING_SECRET);
    format!(
        r#"{{"routes": [{{"name": "payments", "prefix": "/payments"}}],
            "signatures": {{
                "keys": [{{"id": "k1", "secret": {{"base64": "{secret}"}}}}],
                "replay_slots": 512,
                "policies": [{{"routes": ["payments"], "components": ["@method", "@authority", "@path", "@query"], "require_nonce": true}}]}}}}"#
    )
}

/// Headers of a GET of `path` signed over method, authority, path and
/// query with a nonce.
fn signed_get(path: &str, nonce: &str) -> Vec<(String, String)> {
    let headers: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":path".into(), path.into()),
        (":authority".into(), "api.example".into()),
        (
            "signature-input".into(),
            format!(
                r#"sig1=("@method" "@authority" "@path" "@query");keyid="k1";created={};nonce="{nonce}""#,
                T0 / 1000
            ),
        ),
    ];
    with_signature(headers, SIGNING_SECRET)
}

fn send_signed(race: &Race, store: &dyn SharedStore, headers: &[(String, String)]) -> Answer {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    race.send(store, &pairs, b"")
}

/// A signed request replayed by every thread in every round passes once;
/// each round's shared signed request, sent by every thread at once, passes
/// once; every thread's own passes.
#[test]
fn signature_nonces_pass_exactly_once() {
    let race = Race::new(&signature_config());
    let mut requests = HashMap::new();
    for r in 0..ROUNDS {
        for t in 0..THREADS {
            for item in once_only_items(r, t) {
                requests
                    .entry(item.clone())
                    .or_insert_with(|| signed_get(&format!("/payments/{item}?ref=x"), &item));
            }
        }
    }
    check_once_only(
        &race,
        "signature nonces",
        (401, "sig.replay"),
        |store, item| {
            let headers = requests.get(item).cloned().unwrap_or_default();
            send_signed(&race, store, &headers)
        },
    );
    race.collided();
}

const BEHAVIOUR_CONFIG: &str = r#"{
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "bot": {"mode": "monitor", "behaviour": {"window": "24h", "max_distinct": 128, "slots": 64}}
}"#;

const BROWSER: [(&str, &str); 4] = [
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    ),
    ("accept", "*/*"),
    ("accept-language", "en-US,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
];

/// The behaviour records of the table by tag (the clients' keyed hashes).
fn behaviour_records(store: &MemoryStore) -> HashMap<u64, ClientRecord> {
    (0..4)
        .flat_map(|i| {
            let key = slots::page_key(behaviour::TABLE, i);
            let bytes = store.get(&key).ok().flatten().unwrap_or_default().0;
            Page::decode(&bytes).records
        })
        .filter(|r| r.tag != 0)
        .map(|r| (r.tag, ClientRecord::from_record(&r)))
        .collect()
}

/// Paths of several clients (sharing the table's 4 pages), each sent by
/// every thread at once, leave exactly the records the same paths leave
/// sent one by one: a lost update would have forgotten a sketch bit.
#[test]
fn concurrent_paths_all_reach_the_behaviour_record() {
    let (clients, paths) = (6, 40);
    let client_ip = |c: usize| format!("203.0.{}.7", 10 + c);
    // Letters only: no path names an id, so the records hold only the
    // sketch and the (still) clock.
    let path = |c: usize, p: usize| format!("/catalogue/c{c}p{p}x/view");
    let request = |race: &Race, store: &dyn SharedStore, k: usize| {
        let (ip, path) = (client_ip(k / paths), path(k / paths, k % paths));
        let mut pairs = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            ("x-forwarded-for", ip.as_str()),
        ];
        pairs.extend_from_slice(&BROWSER);
        race.send(store, &pairs, b"")
    };
    let race = Race::new(BEHAVIOUR_CONFIG);
    let results = race.run("behaviour", |t, store, _| {
        keys_per_thread(t, clients * paths, 1)
            .map(|k| ((), request(&race, store, k)))
            .collect::<Vec<_>>()
    });
    let got = tally(results.into_iter().flatten());
    assert_eq!(
        got.get(&()).map(|a| count(a, 200, "")),
        Some(THREADS * clients * paths),
        "{got:?}"
    );

    let one_by_one = Race::new(BEHAVIOUR_CONFIG);
    for k in 0..clients * paths {
        assert_eq!(request(&one_by_one, &one_by_one.f.store, k), Answer::pass());
    }
    let raced = behaviour_records(&race.f.store);
    let expected = behaviour_records(&one_by_one.f.store);
    assert_eq!(expected.len(), clients, "one record per client");
    for (tag, record) in &expected {
        let bits = record.sketch.count_ones();
        assert!((20..64).contains(&bits), "sketch of {bits} bits");
        assert_eq!(raced.get(tag), Some(record), "client {tag:x}");
    }
    assert_eq!(raced.len(), clients);
    race.collided();
}

// ---------------------------------------------------------------------
// Deterministic reproductions of the two races the tests above hit now
// and then (one run in 5 to 10).

/// A store whose every compare-and-swap loses while `armed`, as if other
/// workers always wrote first.
struct Losing<'a> {
    store: &'a MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

impl SharedStore for Losing<'_> {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.armed.load(Ordering::Relaxed) {
            return Err(StoreError::CasMismatch);
        }
        self.store.set(key, value, cas)
    }
}

/// A refusal whose `counts: failures` token cannot be taken (its every
/// compare-and-swap lost) must not go out as an uncounted refusal: README,
/// "Exact under contention": a failures rule takes exactly one token per
/// refusal, and a request whose compare-and-swap loses 16 times in a row
/// is refused with 503 `store.unavailable`. (Seen in
/// `a_failures_rule_takes_exactly_one_token_per_refusal`: one verification
/// more than the capacity allows.)
#[test]
fn a_refusal_whose_token_take_lost_every_compare_and_swap_is_not_an_uncounted_refusal() {
    let capacity = 3;
    let race = Race::new(&failures_config(capacity));
    let ip = "198.51.100.30";
    let request =
        |store: &dyn SharedStore, key: &str| race.once(store, &api_key_request(ip, key), b"");
    let losing = Losing {
        store: &race.f.store,
        armed: std::sync::atomic::AtomicBool::new(true),
    };
    let contended = request(&losing, "wrong-contended");
    losing.armed.store(false, Ordering::Relaxed);
    let verified = (0..capacity + 2)
        .map(|i| request(&losing, &format!("wrong-{i}")))
        .take_while(|a| a.is(401, "apikey.invalid"))
        .count();
    // Either the contended request is refused as store.unavailable (its
    // refusal could not be counted, so it tells nothing) or it is a
    // counted refusal: never more refusals than the capacity.
    assert!(
        contended.is(401, "apikey.invalid") || contended.is(503, "store.unavailable"),
        "{contended:?}"
    );
    let refusals = verified + usize::from(contended.is(401, "apikey.invalid"));
    assert_eq!(
        refusals,
        capacity,
        "wrong keys refused by verification (the contended one answered {contended:?}); {} takes lost every compare-and-swap",
        lost_takes(&race)
    );
}

/// Never reclaimable: buckets that never refill.
struct Kept;

impl slots::Tenant for Kept {
    fn reclaimable(&self, _: &slots::Record, _: u64) -> bool {
        false
    }
    fn settles_at(&self, _: &slots::Record) -> u64 {
        u64::MAX
    }
}

/// A store on which another worker takes the last free record of `page`
/// just before this worker's first write of it lands.
struct Overtaken<'a> {
    store: &'a MemoryStore,
    page: String,
    done: std::sync::atomic::AtomicBool,
}

impl SharedStore for Overtaken<'_> {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if key == self.page && !self.done.swap(true, Ordering::Relaxed) {
            let (bytes, version) = self.store.get(key).ok().flatten().unwrap_or_default();
            let mut page = Page::decode(&bytes);
            if let Some(free) = page.records.iter_mut().find(|r| r.tag == 0) {
                free.tag = 0xdead;
            }
            self.store.set(key, &page.encode(), version)?;
        }
        self.store.set(key, value, cas)
    }
}

/// A new key whose home page is full writes its spill entry (naming the
/// first alternate with room), then loses the race for that alternate's
/// last record. Its retry must still place it while another page has
/// room; the entry it wrote names no record, so it pins nothing. (Seen in
/// `many_keys_each_get_exactly_their_capacity`: a key limited by the
/// overflow bucket while the table had free records.)
#[test]
fn a_key_that_lost_its_alternate_is_placed_on_another() {
    let store = MemoryStore::new();
    let pages = 3;
    // A tag whose first alternate is page 1 and whose others include 2.
    let addr = (1u64..)
        .map(|tag| slots::Address {
            tag,
            home: 0,
            pages,
        })
        .find(|a| {
            a.alternate(1) == Some(1) && (2..=slots::ALTERNATES).any(|n| a.alternate(n) == Some(2))
        })
        .unwrap_or_else(|| unreachable!());
    let fill = |index: u32, records: usize, first_tag: u64| {
        let mut page = Page::default();
        for (i, r) in page.records.iter_mut().take(records).enumerate() {
            r.tag = first_tag + i as u64;
            r.state = 1;
        }
        let key = slots::page_key(slots::RATE_LIMITS, index);
        assert_eq!(store.set(&key, &page.encode(), 0), Ok(()));
    };
    fill(0, slots::SLOTS_PER_PAGE, 1_000);
    fill(1, slots::SLOTS_PER_PAGE - 1, 2_000);
    fill(2, 0, 0);
    let racing = Overtaken {
        store: &store,
        page: slots::page_key(slots::RATE_LIMITS, 1),
        done: std::sync::atomic::AtomicBool::new(false),
    };
    let metrics = MemoryMetrics::default();
    let placed = slots::upsert(
        &racing,
        &metrics,
        slots::RATE_LIMITS,
        addr,
        T0,
        &Kept,
        |record| {
            record.state = 1;
            (true, ())
        },
    );
    let on_page_2 = Page::decode(
        &store
            .get(&slots::page_key(slots::RATE_LIMITS, 2))
            .ok()
            .flatten()
            .unwrap_or_default()
            .0,
    )
    .records
    .iter()
    .any(|r| r.tag == addr.tag);
    assert_eq!(
        (placed, on_page_2),
        (Ok(Some(())), true),
        "page 2 was empty: the key must be placed there"
    );
}
