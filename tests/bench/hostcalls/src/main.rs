//! Counts the host calls palisade.wasm makes per request, and the wasm
//! instructions it executes, for tests/bench/bench.py.
//!
//! It runs the shipped module itself, not a reconstruction of it: wasmi
//! (an interpreter) executes palisade.wasm against a small proxy-wasm host
//! (`host.rs`) that answers each import as Envoy does and counts it. Every
//! request goes through the callbacks Envoy makes for a request answered by
//! the route: context create, request headers (and body), response headers
//! and body, log, done, delete. wasmi's fuel gives the instructions each
//! callback executes (about one per wasm instruction; bulk memory copies
//! cost by size), which no Envoy run can resolve: the bench shows them next
//! to the calls.
//!
//! Once-per-VM work is not per request and is left out: the VM start and
//! configuration, then 64 requests uncounted (the first of them defines
//! counters and verifies the token that is then cached), then the root
//! context's tick, then 64 counted; the output is the mean per request.
//! Like wrk in the bench, request `i` comes from the `i`-th of `clients`
//! `X-Forwarded-For` addresses: a rule with `reserve` takes batches for a
//! key busy in the last tick period (the bench's one user), not for
//! addresses that come back once in `clients` requests.
//!
//! usage: palisade-hostcalls <palisade.wasm> < jobs.json
//!
//! Input: a JSON list of `{"name", "config", "headers": [[name, value],
//! ...], "body": string|null, "status": number|null, "clients":
//! number|null}` (`status`: the route's answer, which a login's accounting
//! reads, 200 when absent; `clients`: 1 when absent). Output: a JSON list of
//! `{"name", <count per kind>, "total", "wasm": {"instructions",
//! "callbacks"}}` or `{"name", "error"}`.

mod host;

use host::{Host, SharedHost};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmi::{Config, Engine, ExternType, Func, Instance, Linker, Module, Store, Val};

/// Requests before the tick: those that verify and cache the token, define
/// counters and let a busy key's rate be known.
const WARM_UP: u64 = 64;
/// Requests counted: a multiple of every `reserve`.
const COUNTED_REQUESTS: u64 = 64;
/// More than any request needs; what is left after a call tells its cost.
const FUEL: u64 = 1 << 60;
const ROOT_CONTEXT: i32 = 1;

/// The bench's columns, by the imports that make them.
const KINDS: [(&str, &[&str]); 10] = [
    ("header_map_reads", &["proxy_get_header_map_pairs"]),
    ("header_value_reads", &["proxy_get_header_map_value"]),
    ("property_reads", &["proxy_get_property"]),
    ("clock_reads", &["proxy_get_current_time_nanoseconds"]),
    ("shared_gets", &["proxy_get_shared_data"]),
    ("shared_sets", &["proxy_set_shared_data"]),
    (
        "metric_increments",
        &["proxy_increment_metric", "proxy_record_metric"],
    ),
    (
        "header_writes",
        &[
            "proxy_add_header_map_value",
            "proxy_replace_header_map_value",
            "proxy_remove_header_map_value",
        ],
    ),
    ("body_reads", &["proxy_get_buffer_bytes"]),
    ("log_calls", &["proxy_log"]),
];

fn main() {
    let Some(wasm_path) = std::env::args().nth(1) else {
        eprintln!("error: usage: palisade-hostcalls <palisade.wasm> < jobs.json");
        std::process::exit(2);
    };
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
    let mut config = Config::default();
    config.consume_fuel(true);
    let engine = Engine::new(&config);
    let module = match std::fs::read(&wasm_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| Module::new(&engine, &bytes).map_err(|e| e.to_string()))
    {
        Ok(module) => module,
        Err(e) => {
            eprintln!("error: {wasm_path}: {e}");
            std::process::exit(2);
        }
    };
    let out: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let name = job["name"].as_str().unwrap_or("?");
            run(&engine, &module, job).unwrap_or_else(|e| json!({"name": name, "error": e}))
        })
        .collect();
    println!("{}", Value::Array(out));
}

/// One instance of the module, configured by the plugin configuration.
struct Filter {
    store: Store<SharedHost>,
    instance: Instance,
}

impl Filter {
    fn new(engine: &Engine, module: &Module, host: SharedHost) -> Result<Filter, String> {
        let mut store = Store::new(engine, host);
        store.set_fuel(FUEL).map_err(|e| e.to_string())?;
        let mut linker = <Linker<SharedHost>>::new(engine);
        for import in module.imports() {
            let ExternType::Func(ty) = import.ty() else {
                return Err(format!("import {} is not a function", import.name()));
            };
            let name = import.name().to_string();
            let func = Func::new(
                &mut store,
                ty.clone(),
                move |mut caller, params, results| {
                    let status =
                        host::call(&name, &mut caller, params).map_err(wasmi::Error::new)?;
                    if let Some(result) = results.first_mut() {
                        *result = match result {
                            Val::I64(_) => Val::I64(i64::from(status)),
                            _ => Val::I32(status),
                        };
                    }
                    Ok(())
                },
            );
            linker
                .define(import.module(), import.name(), func)
                .map_err(|e| e.to_string())?;
        }
        let instance = linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| format!("instantiating: {e}"))?;
        Ok(Filter { store, instance })
    }

    /// Calls an export: its i32 result (0 when it has none) and the fuel it
    /// spent.
    fn call(&mut self, name: &str, args: &[i32]) -> Result<(i32, u64), String> {
        let func = self
            .instance
            .get_func(&self.store, name)
            .ok_or_else(|| format!("the module does not export {name}"))?;
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        let before = self.store.get_fuel().map_err(|e| e.to_string())?;
        func.call(&mut self.store, &params, &mut results)
            .map_err(|e| format!("{name}: {e}"))?;
        let after = self.store.get_fuel().map_err(|e| e.to_string())?;
        let result = match results.first() {
            Some(Val::I32(v)) => *v,
            _ => 0,
        };
        Ok((result, before.saturating_sub(after)))
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn run(engine: &Engine, module: &Module, job: &Value) -> Result<Value, String> {
    let name = job["name"].as_str().unwrap_or("?");
    let config = job["config"].as_str().ok_or("config missing")?;
    let headers: Vec<(String, String)> = job["headers"]
        .as_array()
        .ok_or("headers missing")?
        .iter()
        .filter_map(|pair| {
            Some((
                pair.get(0)?.as_str()?.to_string(),
                pair.get(1)?.as_str()?.to_string(),
            ))
        })
        .collect();
    let body = job["body"]
        .as_str()
        .map(|b| b.as_bytes().to_vec())
        .unwrap_or_default();
    let status = job["status"].as_u64().unwrap_or(200);
    let clients = job["clients"].as_u64().unwrap_or(1).max(1);
    let host: SharedHost = Rc::new(RefCell::new(Host {
        request_headers: headers,
        // A route's answer: a status and a short body.
        response_headers: vec![
            (":status".to_string(), status.to_string()),
            ("content-length".to_string(), "2".to_string()),
        ],
        body,
        plugin_configuration: config.as_bytes().to_vec(),
        peer_address: "127.0.0.1:40000".to_string(),
        now_ns: now_ns(),
        ..Host::default()
    }));
    let mut filter = Filter::new(engine, module, host.clone())?;
    filter.call("_initialize", &[])?;
    filter.call("proxy_on_context_create", &[ROOT_CONTEXT, 0])?;
    filter.call("proxy_on_vm_start", &[ROOT_CONTEXT, 0])?;
    let size = i32::try_from(config.len()).map_err(|_| "config too large")?;
    if filter.call("proxy_on_configure", &[ROOT_CONTEXT, size])?.0 == 0 {
        let logs = host.borrow().logs.join("; ");
        return Err(format!("the filter refused its configuration: {logs}"));
    }
    let mut spent: BTreeMap<&'static str, u64> = BTreeMap::new();
    for sent in 1..=WARM_UP + COUNTED_REQUESTS {
        let counting = sent > WARM_UP;
        if sent == WARM_UP + 1 {
            filter.call("proxy_on_tick", &[ROOT_CONTEXT])?;
        }
        {
            let mut h = host.borrow_mut();
            h.counting = counting;
            h.now_ns = now_ns();
            let i = sent % clients;
            let address = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            if let Some(xff) = h
                .request_headers
                .iter_mut()
                .find(|(n, _)| n == "x-forwarded-for")
            {
                xff.1 = address;
            }
        }
        let context = i32::try_from(sent + 1).map_err(|_| "too many requests")?;
        for (callback, fuel) in request(&mut filter, &host, context)? {
            if counting {
                *spent.entry(callback).or_default() += fuel;
            }
        }
        if let Some(status) = host.borrow_mut().local_response.take() {
            return Err(format!(
                "request {sent} was answered {status} by the filter"
            ));
        }
    }
    let per_request = |n: u64| n as f64 / COUNTED_REQUESTS as f64;
    let calls = host.borrow().calls.clone();
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    let mut total = 0.0;
    for (kind, imports) in KINDS {
        let n: u64 = imports.iter().filter_map(|i| calls.get(*i)).sum();
        total += per_request(n);
        out.insert(kind.into(), json!(per_request(n)));
    }
    // An import no column names (a new kind of call) is shown by its name.
    for (import, n) in &calls {
        if !KINDS
            .iter()
            .any(|(_, imports)| imports.contains(&import.as_str()))
        {
            let column = import.trim_start_matches("proxy_").to_string();
            total += per_request(*n);
            out.insert(column, json!(per_request(*n)));
        }
    }
    out.insert("total".into(), json!((total * 100.0).round() / 100.0));
    let instructions: u64 = spent.values().sum();
    out.insert(
        "wasm".into(),
        json!({
            "instructions": per_request(instructions).round(),
            "callbacks": spent
                .iter()
                .map(|(callback, fuel)| (callback.trim_start_matches("proxy_on_").to_string(), json!(per_request(*fuel).round())))
                .collect::<Map<_, _>>(),
        }),
    );
    Ok(Value::Object(out))
}

/// One request's callbacks, as Envoy makes them for a request its route
/// answers: (callback, fuel spent) for each.
fn request(
    filter: &mut Filter,
    host: &SharedHost,
    context: i32,
) -> Result<Vec<(&'static str, u64)>, String> {
    let (header_count, body_len) = {
        let h = host.borrow();
        (h.request_headers.len(), h.body.len())
    };
    let header_count = i32::try_from(header_count).map_err(|_| "too many headers")?;
    let body_len = i32::try_from(body_len).map_err(|_| "body too large")?;
    let has_body = body_len > 0;
    let mut steps: Vec<(&'static str, Vec<i32>)> = vec![
        ("proxy_on_context_create", vec![context, ROOT_CONTEXT]),
        (
            "proxy_on_request_headers",
            vec![context, header_count, i32::from(!has_body)],
        ),
    ];
    if has_body {
        steps.push(("proxy_on_request_body", vec![context, body_len, 1]));
    }
    steps.extend([
        ("proxy_on_response_headers", vec![context, 2, 0]),
        ("proxy_on_response_body", vec![context, 2, 1]),
        ("proxy_on_log", vec![context]),
        ("proxy_on_done", vec![context]),
        ("proxy_on_delete", vec![context]),
    ]);
    steps
        .into_iter()
        .map(|(callback, args)| Ok((callback, filter.call(callback, &args)?.1)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a fixed module and job
mod tests {
    use super::*;

    /// Per request: one header-map read, a CAS round trip, then a write
    /// with the version it already used, which a host with Envoy's CAS
    /// refuses; the module logs only that refusal.
    const MODULE: &str = r#"(module
      (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
      (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $next (mut i32) (i32.const 4096))
      (data (i32.const 0) "key")
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (global.get $next)
        (global.set $next (i32.add (global.get $next) (local.get $n))))
      (func (export "_initialize"))
      (func (export "proxy_on_context_create") (param i32 i32) (global.set $next (i32.const 4096)))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_tick") (param i32))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $pairs (i32.const 0) (i32.const 100) (i32.const 104)))
        (drop (call $set (i32.const 0) (i32.const 3) (i32.const 0) (i32.const 3) (i32.const 0)))
        (drop (call $get (i32.const 0) (i32.const 3) (i32.const 100) (i32.const 104) (i32.const 108)))
        (drop (call $set (i32.const 0) (i32.const 3) (i32.const 0) (i32.const 3) (i32.load (i32.const 108))))
        (if (i32.eq (i32.const 8)
                    (call $set (i32.const 0) (i32.const 3) (i32.const 0) (i32.const 3) (i32.load (i32.const 108))))
          (then (drop (call $log (i32.const 2) (i32.const 0) (i32.const 3)))))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_log") (param i32))
      (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
      (func (export "proxy_on_delete") (param i32)))"#;

    #[test]
    fn counts_each_call_of_the_module_per_request() {
        let mut config = Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, MODULE).unwrap();
        let job = json!({"name": "t", "config": "{}", "headers": [[":path", "/"]], "clients": 3});
        let out = run(&engine, &module, &job).unwrap();
        assert_eq!(out["header_map_reads"], json!(1.0));
        assert_eq!(out["shared_gets"], json!(1.0));
        assert_eq!(out["shared_sets"], json!(3.0));
        assert_eq!(
            out["log_calls"],
            json!(1.0),
            "the stale CAS write must be refused"
        );
        assert_eq!(out["total"], json!(6.0));
        assert!(out["wasm"]["instructions"].as_f64().unwrap() > 10.0);
    }
}
