//! Counts the host calls palisade makes for one request, for the bench's
//! "host calls/request" column.
//!
//! Every host call of palisade goes through the core's host traits
//! (`SharedStore`, `Clock`, `Metrics`) or is made by the proxy-wasm glue
//! around `Engine::evaluate` (filters/palisade/src/lib.rs). This program runs
//! the real engine with counting implementations of the traits and adds the
//! glue's own calls the way `on_http_request_headers`, `on_http_request_body`
//! and `on_http_response_headers` make them:
//!
//! * one header-map read (`proxy_get_header_map_pairs`);
//! * one property read per call of the `peer` closure (`source.address`);
//! * no metric call: the glue batches counters in the VM and flushes them
//!   on its 1 s tick (one call per counter that moved, per worker and
//!   second, whatever the request rate), so `metric_increments` stays 0;
//! * one remove or replace per upstream header, one add per response header;
//! * one body read when the request has a body to check;
//! * one response-header read (`:status`) when a login's answer is
//!   accounted for, then `Engine::login_answered` with the job's `status`.
//!
//! Once-per-VM calls are not per request and are left out: the first request
//! of a worker also defines each counter (`proxy_define_metric`) and asks the
//! host's kind (`plugin_vm_id`), so 64 requests go uncounted, then the root
//! context's tick, then 64 are counted and the output is the mean per
//! request. Like wrk in the bench, request `i` comes from the `i`-th of
//! `clients` `X-Forwarded-For` addresses: a rule with `reserve` takes
//! batches for a key busy in the last tick period (the bench's one user),
//! not for addresses that come back once in `clients` requests.
//!
//! Input on stdin: a JSON list of `{"name", "config", "headers": [[name,
//! value], ...], "body": string|null, "status": number|null, "clients":
//! number|null}` (`status`: the upstream's answer to a login, 200 when
//! absent; `clients`: 1 when absent). Output on stdout: a JSON list of
//! `{"name", <count fields>, "total"}` or `{"name", "error"}`.

use palisade::config::Policy;
use palisade::core::hosts::HostKind;
use palisade::core::metrics::{Counter, CounterBatch, Metrics};
use palisade::core::request::{encode_map, HeaderMap};
use palisade::pipeline::{Body, Engine, Services, Verdict};
use palisade::state::host::{Clock, MemoryStore, SharedStore, StoreError, Versioned};
use palisade::state::slots;
use serde_json::{json, Value};
use std::cell::Cell;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default)]
struct Counts {
    header_map_reads: u32,
    property_reads: Cell<u32>,
    clock_reads: Cell<u32>,
    shared_gets: Cell<u32>,
    shared_sets: Cell<u32>,
    metric_increments: Cell<u32>,
    header_writes: u32,
    body_reads: u32,
    response_header_reads: u32,
}

impl Counts {
    fn fields(&self) -> [(&'static str, u32); 9] {
        [
            ("header_map_reads", self.header_map_reads),
            ("property_reads", self.property_reads.get()),
            ("clock_reads", self.clock_reads.get()),
            ("shared_gets", self.shared_gets.get()),
            ("shared_sets", self.shared_sets.get()),
            ("metric_increments", self.metric_increments.get()),
            ("header_writes", self.header_writes),
            ("body_reads", self.body_reads),
            ("response_header_reads", self.response_header_reads),
        ]
    }
}

/// The mean count of each kind over `runs`: a reserving rule makes its
/// shared-data calls once per batch, so one request alone would not tell.
fn mean_json(name: &str, runs: &[Counts]) -> Value {
    let n = runs.len().max(1) as f64;
    let mean = |i: usize| {
        let sum: u32 = runs.iter().map(|c| c.fields()[i].1).sum();
        (f64::from(sum) / n * 100.0).round() / 100.0
    };
    let kinds = Counts::default().fields().len();
    let total = (0..kinds).map(mean).sum::<f64>();
    let mut out = json!({"name": name, "total": (total * 100.0).round() / 100.0});
    for (i, (key, _)) in Counts::default().fields().iter().enumerate() {
        out[*key] = json!(mean(i));
    }
    out
}

fn bump(cell: &Cell<u32>) {
    cell.set(cell.get() + 1);
}

/// The host services of one request, counting each call.
struct Counting<'a> {
    store: &'a MemoryStore,
    counts: &'a Counts,
    batch: CounterBatch,
}

impl SharedStore for Counting<'_> {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        bump(&self.counts.shared_gets);
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        bump(&self.counts.shared_sets);
        self.store.set(key, value, cas)
    }
}

impl Clock for Counting<'_> {
    fn now_ms(&self) -> Option<u64> {
        bump(&self.counts.clock_reads);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    }
}

impl Metrics for Counting<'_> {
    fn increment(&self, counter: Counter) {
        // As the glue does: into the VM's batch, no host call.
        self.batch.increment(counter);
    }
}

/// One request as the proxy-wasm glue handles it.
fn one_request(
    engine: &Engine,
    store: &MemoryStore,
    map: &[u8],
    body: Option<&[u8]>,
    status: u16,
) -> Result<Counts, String> {
    let mut counts = Counts {
        header_map_reads: 1,
        ..Counts::default()
    };
    let headers = HeaderMap::decode(map).ok_or("malformed header map")?;
    let host = Counting {
        store,
        counts: &counts,
        batch: CounterBatch::default(),
    };
    let services = Services {
        store: &host,
        clock: &host,
        metrics: &host,
    };
    let peer = || {
        bump(&counts.property_reads);
        Some("127.0.0.1".to_string())
    };
    let (writes, check, mut login) = match engine.evaluate(&headers, &peer, &services) {
        Verdict::Allow {
            response_headers,
            upstream,
            body,
            login,
            ..
        } => (
            upstream.remove.len() + upstream.set.len() + response_headers.len(),
            body,
            login,
        ),
        Verdict::Respond(response) => {
            return Err(format!(
                "the request was answered {} by palisade",
                response.status
            ))
        }
    };
    let mut body_reads = 0;
    if let Some(check) = check {
        // A request with a body: the glue reads it once, at its end.
        let bytes = body.unwrap_or_default();
        body_reads = u32::from(!bytes.is_empty());
        let answer = engine.check_body(
            &check,
            Body::Complete(bytes),
            &services,
            login.as_deref_mut(),
        );
        if let Some(response) = answer {
            return Err(format!("the body check answered {}", response.status));
        }
    }
    let answered = login.is_some();
    if let Some(login) = login {
        engine.login_answered(&login, status, &services);
    }
    counts.header_writes = u32::try_from(writes).unwrap_or(u32::MAX);
    counts.body_reads = body_reads;
    counts.response_header_reads = u32::from(answered);
    Ok(counts)
}

fn count(job: &Value) -> Result<Vec<Counts>, String> {
    let config = job["config"].as_str().ok_or("config missing")?;
    let policy = Policy::from_json(config.as_bytes()).map_err(|e| e.to_string())?;
    // What on_configure prepares.
    let store = MemoryStore::new();
    let seed = slots::shared_seed(&store, [7; 16]).map_err(|e| format!("{e:?}"))?;
    slots::ensure_pages(&store, policy.shared_keys()).map_err(|e| format!("{e:?}"))?;
    let engine = Engine::new(policy, seed, HostKind::Envoy).map_err(|e| e.to_string())?;
    let pairs: Vec<(&str, &str)> = job["headers"]
        .as_array()
        .ok_or("headers missing")?
        .iter()
        .filter_map(|pair| Some((pair.get(0)?.as_str()?, pair.get(1)?.as_str()?)))
        .collect();
    let body = job["body"].as_str().map(str::as_bytes);
    let status = job["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(200);
    // `clients`: the bench's requests come from that many X-Forwarded-For
    // addresses in turn; request `i` gets the `i`-th.
    let clients = job["clients"].as_u64().unwrap_or(1).max(1);
    let map_of = |i: u64| {
        let address = format!("198.18.{}.{}", (i % clients) / 250, (i % clients) % 250 + 1);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|&(n, v)| {
                (
                    n,
                    if n == "x-forwarded-for" {
                        address.as_str()
                    } else {
                        v
                    },
                )
            })
            .collect();
        encode_map(&pairs)
    };
    let mut sent = 0;
    let mut send = |n: u64| -> Result<Vec<Counts>, String> {
        (0..n)
            .map(|_| {
                sent += 1;
                one_request(&engine, &store, &map_of(sent), body, status)
            })
            .collect()
    };
    // A period of traffic, the tick, then the counted requests: a key as
    // busy as the bench's takes its batches (`reserve`), one that comes
    // back once in `clients` requests does not.
    send(WARM_UP)?;
    engine.tick();
    send(COUNTED_REQUESTS)
}

/// Requests before the tick: those that verify and cache the token, define
/// counters and let a busy key's rate be known.
const WARM_UP: u64 = 64;
/// Requests counted: a multiple of every `reserve`.
const COUNTED_REQUESTS: u64 = 64;

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: reading stdin: {e}");
        std::process::exit(2);
    }
    let jobs: Vec<Value> = match serde_json::from_str(&input) {
        Ok(jobs) => jobs,
        Err(e) => {
            eprintln!("error: stdin is not a JSON list of jobs: {e}");
            std::process::exit(2);
        }
    };
    let out: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let name = job["name"].as_str().unwrap_or("?");
            count(job).map_or_else(
                |e| json!({"name": name, "error": e}),
                |runs| mean_json(name, &runs),
            )
        })
        .collect();
    println!("{}", Value::Array(out));
}
