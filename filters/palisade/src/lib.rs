//! proxy-wasm glue: moves data between the host and the palisade core.
//! Policy lives in the core crate; this file only adapts.

mod host;

use host::{
    flush_metrics, HostClock, HostMetrics, HostStore, MAP_HTTP_CALL_RESPONSE_HEADERS,
    MAP_REQUEST_HEADERS, MAP_RESPONSE_HEADERS,
};
use palisade_core::config::Policy;
use palisade_core::core::hosts::HostKind;
use palisade_core::core::metrics::{Counter, CounterBatch};
use palisade_core::core::remote::FetchPlan;
use palisade_core::core::request::{encode_map, BodyFraming, HeaderMap};
use palisade_core::core::routes::RouteId;
use palisade_core::core::verdict::{LocalResponse, Reason, UpstreamHeaders};
use palisade_core::pipeline::{
    prepare_shared_data, Answer, Body, BodyCheck, BodyVerdict, Engine, LoginCheck, RemoteCheck,
    Services, Verdict,
};
use palisade_core::stages::auth::jwks;
use palisade_core::stages::global::{self, Failure};
use palisade_core::stages::reputation;
use palisade_core::state::host::{namespace_prefix, Connection, Namespaced};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

/// How often the root context flushes counters to the host and looks at
/// remote key sets: counters lag by up to this period, and new sets other
/// workers fetched are installed within it.
const TICK_MS: u32 = 1_000;

const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
const LOG_CRITICAL: u32 = 5;

/// `log` records go to the proxy's log; Envoy filters by its own level.
struct ProxyLogger;

impl log::Log for ProxyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => LOG_ERROR,
            log::Level::Warn => LOG_WARN,
            _ => LOG_INFO,
        };
        host::log(level, &record.args().to_string());
    }
    fn flush(&self) {}
}

static LOGGER: ProxyLogger = ProxyLogger;

/// Every allocation of a request goes through it (the SDK's buffers for host
/// data too: `proxy_on_memory_allocate` allocates from the global
/// allocator, and host.rs frees those buffers as Vecs of it). Single-threaded
/// wasm only, as a proxy-wasm VM is.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

proxy_wasm::main! {{
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| host::log(LOG_CRITICAL, &format!("palisade: panic: {info}"))));
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

#[derive(Default)]
struct Root {
    engine: Option<Rc<Engine>>,
    /// Counts of this VM's streams, flushed on the tick.
    counters: Rc<CounterBatch>,
    /// Host metric ids of the counters defined so far.
    metric_ids: HashMap<Counter, u32>,
    /// Host metric ids of the gauges defined so far, by stat name.
    gauge_ids: HashMap<String, u32>,
    /// A number unique to this VM: who holds the table-sampling lease.
    worker: u64,
    /// Fetches in flight, by call token.
    fetches: HashMap<u32, Fetch>,
    /// Shared-data key prefix of this filter instance.
    namespace: Rc<str>,
}

/// What a fetch in flight is for: a provider's key set or a reputation list.
#[derive(Clone, Copy)]
enum Fetch {
    Jwks(usize),
    List(usize),
}

impl Fetch {
    fn max_bytes(self) -> (usize, &'static str) {
        match self {
            Fetch::Jwks(_) => (jwks::MAX_DOCUMENT_BYTES, "the key set"),
            Fetch::List(_) => (reputation::MAX_LIST_BYTES, "the list"),
        }
    }

    /// Hands the result to the engine.
    fn finished(self, engine: &Engine, result: Result<&[u8], String>, services: &Services<'_>) {
        match self {
            Fetch::Jwks(provider) => engine.jwks_fetched(provider, result, services),
            Fetch::List(list) => engine.list_fetched(list, result, services),
        }
    }
}

static HOST_STORE: HostStore = HostStore;

/// The shared store as this filter instance sees it.
fn store(namespace: &str) -> Namespaced<'_> {
    Namespaced {
        store: &HOST_STORE,
        prefix: namespace,
    }
}

/// 128 random bits from the WASI host (std seeds `RandomState` with `random_get`).
fn fresh_seed() -> [u8; 16] {
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish().to_le_bytes()
    };
    let (a, b) = (half(), half());
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&a);
    seed[8..].copy_from_slice(&b);
    seed
}

/// The engine's counters, on a host that has metrics.
fn metrics(engine: &Engine, counters: &Rc<CounterBatch>) -> HostMetrics {
    HostMetrics {
        batch: counters.clone(),
        enabled: engine.host().has_metrics(),
    }
}

/// Runs `call` with the host services of one engine call: this filter
/// instance's shared store, the host clock, the engine's counters.
fn with_services<T>(
    engine: &Engine,
    counters: &Rc<CounterBatch>,
    namespace: &str,
    call: impl FnOnce(&Services<'_>) -> T,
) -> T {
    let metrics = metrics(engine, counters);
    let store = store(namespace);
    call(&Services {
        store: &store,
        clock: &HostClock,
        metrics: &metrics,
    })
}

impl Context for Root {
    /// The answer to a ban publication: only a failure is worth a line.
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, _response_size: usize) {
        if status_code != 0 {
            log::error!("palisade: the rate-limit service did not record this worker's bans ({}); other replicas do not see them", Failure::Status(status_code).describe());
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(fetch), Some(engine)) = (self.fetches.remove(&token_id), self.engine.clone())
        else {
            return;
        };
        let (max_bytes, what) = fetch.max_bytes();
        let status = host::header_map_bytes(MAP_HTTP_CALL_RESPONSE_HEADERS)
            .ok()
            .and_then(|bytes| {
                HeaderMap::decode(&bytes)?
                    .get_str(":status")
                    .map(str::to_owned)
            });
        let body;
        let result = match status.as_deref() {
            Some("200") if body_size > max_bytes => Err(format!("{what} is over {max_bytes} bytes")),
            Some("200") => match host::http_call_response_body(body_size) {
                Ok(bytes) => {
                    body = bytes;
                    Ok(body.as_slice())
                }
                Err(status) => Err(format!(
                    "cannot read the response body (host status {status})"
                )),
            },
            // Envoy answers a call it could not make itself: 503 when the
            // connection failed, 504 on its timeout.
            Some(other @ ("503" | "504")) => Err(format!(
                "HTTP status {other} (from the provider, or from Envoy when the connection failed or timed out)"
            )),
            Some(other) => Err(format!("HTTP status {other}")),
            None => Err("no response".to_string()),
        };
        with_services(&engine, &self.counters, &self.namespace, |services| {
            fetch.finished(&engine, result, services);
        });
    }
}

impl Root {
    /// Sends the bans this worker issued since its last tick to the
    /// rate-limit service (`bans.scope: global`).
    fn publish_bans(&self, engine: &Engine) {
        let (Some(message), Some((cluster, timeout_ms))) =
            (engine.ban_publications(), engine.global_call())
        else {
            return;
        };
        let call = self.dispatch_grpc_call(
            cluster,
            global::SERVICE,
            global::METHOD,
            Vec::new(),
            Some(&message),
            Duration::from_millis(timeout_ms.max(1_000)),
        );
        if let Err(status) = call {
            log::error!("palisade: cannot publish bans to the rate-limit service on cluster {cluster} ({status:?})");
        }
    }

    /// Hands the counts of this VM's streams to the host.
    fn flush_metrics(&mut self) {
        if let Some(engine) = &self.engine {
            if engine.host().has_metrics() {
                flush_metrics(&self.counters, &mut self.metric_ids, &engine.policy);
            }
        }
    }

    /// Starts the fetch `plan` of `fetch`'s document.
    fn dispatch(&mut self, engine: &Rc<Engine>, fetch: Fetch, plan: &FetchPlan, accept: &str) {
        let upstream = plan.upstream.as_str();
        let headers = vec![
            (":method", "GET"),
            (":path", plan.path.as_str()),
            (":authority", plan.authority.as_str()),
            ("accept", accept),
        ];
        // The SDK's call registers the token with its dispatcher, which
        // routes the response back here (a raw call would not be routed).
        // It panics only on statuses outside the ABI's documented
        // BadArgument/InternalFailure.
        match proxy_wasm::hostcalls::dispatch_http_call(
            upstream,
            headers,
            None,
            vec![],
            Duration::from_millis(plan.timeout_ms),
        ) {
            Ok(token) => {
                self.fetches.insert(token, fetch);
            }
            Err(status) => {
                let why = format!(
                    "cannot call upstream `{upstream}` ({status:?}); is the cluster defined?"
                );
                with_services(engine, &self.counters, &self.namespace, |services| {
                    fetch.finished(engine, Err(why), services);
                });
            }
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!(
            "palisade {} starting ({} build)",
            palisade_core::VERSION,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(bytes) => bytes,
            Err(status) => {
                log::error!(
                    "palisade: cannot read the plugin configuration (host status {status})"
                );
                return false;
            }
        };
        let policy = match Policy::from_json(&bytes) {
            Ok(policy) => policy,
            Err(e) => {
                log::error!("palisade: {e}");
                return false;
            }
        };
        // The host first: ngx_wasm_module (3bed278) crashes the worker on
        // `plugin_name` outside a request.
        let Some(kind) = host::detect_host() else {
            log::error!("palisade: the shared-data store refused a write; on NGINX, declare a `shm_kv *` zone in the wasm block");
            return false;
        };
        if !kind.has_metrics() {
            log::warn!("palisade: ngx_wasm_module host: counters are off (its proxy_define_metric traps on long names and a full metrics zone); findings are still logged");
        }
        // Envoy: the filter's `name`; two palisade filters in one VM need
        // different names to keep separate state.
        let instance = match kind {
            HostKind::Envoy => host::property(&["plugin_name"])
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default(),
            HostKind::NgxWasm => String::new(),
        };
        self.namespace = Rc::from(namespace_prefix(&instance));
        let seed = match prepare_shared_data(&policy, &store(&self.namespace), fresh_seed()) {
            Ok(seed) => seed,
            Err(e) => {
                log::error!("palisade: cannot prepare shared data tables: {e:?}");
                return false;
            }
        };
        let summary = format!(
            "{} route classes, {} rate-limit rules, {} slot pages, {} token providers",
            policy.routes.len_with_default() - 1,
            policy.rate_limits.rules.len(),
            policy.rate_limits.pages,
            policy.auth.providers.len()
        );
        let engine = match Engine::new(policy, seed, kind) {
            Ok(engine) => Rc::new(engine),
            Err(e) => {
                log::error!("palisade: {e}");
                return false;
            }
        };
        log::info!("palisade: configured: {summary}");
        if engine.needs_tick() || kind.has_metrics() {
            if let Err(status) = host::set_tick_period_ms(TICK_MS) {
                log::error!("palisade: cannot start the timer (host status {status})");
                return false;
            }
        }
        // Counts so far are named after the routes and rules of the
        // configuration they were made under.
        self.flush_metrics();
        self.engine = Some(engine);
        self.fetches.clear();
        self.metric_ids.clear();
        self.gauge_ids.clear();
        if self.worker == 0 {
            let seed = fresh_seed();
            self.worker = u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])).max(1);
        }
        true
    }

    fn on_tick(&mut self) {
        self.flush_metrics();
        let Some(engine) = self.engine.clone() else {
            return;
        };
        engine.tick();
        self.publish_bans(&engine);
        let Some(now_ms) = host::now_ms() else {
            log::warn!("palisade: the host clock failed; key sets are looked at on the next tick");
            return;
        };
        let namespace = self.namespace.clone();
        let gauges = with_services(&engine, &self.counters, &namespace, |services| {
            engine.anomaly_tick(services, now_ms);
            if engine.host().has_metrics() {
                engine.table_gauges(services, now_ms, self.worker)
            } else {
                Vec::new()
            }
        });
        host::record_gauges(&gauges, &mut self.gauge_ids);
        let store = store(&namespace);
        for plan in engine.jwks_due(&store, now_ms) {
            self.dispatch(&engine, Fetch::Jwks(plan.index), &plan, "application/json");
        }
        for plan in engine.lists_due(&store, now_ms) {
            self.dispatch(&engine, Fetch::List(plan.index), &plan, "text/plain");
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            engine: self.engine.clone(),
            counters: self.counters.clone(),
            response_headers: Vec::new(),
            body_check: None,
            login: None,
            namespace: self.namespace.clone(),
            route: None,
            arrived_ms: None,
            remote: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    engine: Option<Rc<Engine>>,
    counters: Rc<CounterBatch>,
    response_headers: Vec<(&'static str, String)>,
    /// Set while the body must still be checked before the request goes on.
    body_check: Option<BodyCheck>,
    /// A login forwarded upstream: its answer is accounted for.
    login: Option<Box<LoginCheck>>,
    namespace: Rc<str>,
    /// The route class of a request forwarded upstream: its response
    /// gets the class's `transport` headers.
    route: Option<RouteId>,
    /// When a request whose answer the anomaly detector watches arrived.
    arrived_ms: Option<u64>,
    /// The call to the rate-limit service the request waits for (global
    /// mode): its token, and what its answer is read against.
    remote: Option<(u32, Box<RemoteCheck>)>,
}

/// The request's connection, read through properties (each a host call).
struct HostConnection;

impl Connection for HostConnection {
    fn peer(&self) -> Option<String> {
        host::property(&["source", "address"]).and_then(|v| String::from_utf8(v).ok())
    }

    /// `connection.tls_version` is set (`TLSv1.3`) on a TLS connection
    /// only, on Envoy and on ngx_wasm_module (nginx's `$ssl_protocol`).
    fn tls(&self) -> bool {
        host::property(&["connection", "tls_version"]).is_some_and(|v| !v.is_empty())
    }

    fn peer_uri_san(&self) -> Option<String> {
        host::property(&["connection", "uri_san_peer_certificate"])
            .and_then(|v| String::from_utf8(v).ok())
    }

    fn peer_subject(&self) -> Option<String> {
        host::property(&["connection", "subject_peer_certificate"])
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// Envoy writes the digest as 64 lower-case hex digits.
    fn peer_certificate_sha256(&self) -> Option<[u8; 32]> {
        let hex = host::property(&["connection", "sha256_peer_certificate_digest"])?;
        let mut digest = [0u8; 32];
        if hex.len() != 64 {
            return None;
        }
        for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(digest)
    }
}

impl Stream {
    /// Finishes a pending body check: forwards the request, or answers.
    fn finish_body(&mut self, body: Body<'_>) -> Action {
        let (Some(check), Some(engine)) = (self.body_check.take(), self.engine.clone()) else {
            return Action::Continue;
        };
        let login = self.login.as_deref_mut();
        let verdict = with_services(&engine, &self.counters, &self.namespace, |services| {
            engine.check_body(&check, body, services, login)
        });
        match verdict {
            BodyVerdict::Forward => Action::Continue,
            BodyVerdict::Respond(response) => self.send(response),
            BodyVerdict::Ask(check) => self.ask_service(&engine, check),
        }
    }

    /// Calls the rate-limit service and holds the request until it
    /// answers; a call that cannot start is answered as a failure at once.
    fn ask_service(&mut self, engine: &Rc<Engine>, check: Box<RemoteCheck>) -> Action {
        let Some((cluster, timeout_ms)) = engine.global_call() else {
            return self.service_answered(engine, &check, Err(Failure::Dispatch));
        };
        let call = self.dispatch_grpc_call(
            cluster,
            global::SERVICE,
            global::METHOD,
            Vec::new(),
            Some(&check.message),
            Duration::from_millis(timeout_ms),
        );
        match call {
            Ok(token) => {
                self.remote = Some((token, check));
                Action::Pause
            }
            Err(status) => {
                log::error!("palisade: cannot call the rate-limit service on cluster {cluster} ({status:?})");
                self.service_answered(engine, &check, Err(Failure::Dispatch))
            }
        }
    }

    /// Forwards or answers the request as the service's answer says.
    fn service_answered(
        &mut self,
        engine: &Rc<Engine>,
        check: &RemoteCheck,
        answer: Result<&[u8], Failure>,
    ) -> Action {
        let answer = with_services(engine, &self.counters, &self.namespace, |services| {
            engine.remote_answered(check, answer, services)
        });
        match answer {
            Answer::Forward(headers) => {
                self.response_headers.extend(headers);
                Action::Continue
            }
            Answer::Respond(response) => self.send(response),
        }
    }

    /// Answers instead of the upstream: nothing upstream to account for.
    fn send(&mut self, response: LocalResponse) -> Action {
        self.login = None;
        self.arrived_ms = None;
        self.respond(
            response.status,
            &response.headers,
            &response.security_headers,
            &response.body,
        )
    }

    fn respond(
        &self,
        status: u16,
        headers: &[(&'static str, String)],
        security_headers: &[(String, String)],
        body: &str,
    ) -> Action {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(
                security_headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .collect();
        if let Err(status) = host::send_local_response(status, &encode_map(&pairs), body) {
            log::error!("palisade: cannot send local response (host status {status})");
        }
        Action::Pause
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some((token, check)), Some(engine)) = (self.remote.take(), self.engine.clone()) else {
            return;
        };
        if token != token_id {
            self.remote = Some((token, check));
            return;
        }
        let body = match status_code {
            0 => host::grpc_response_body(response_size).map_err(|status| {
                log::error!(
                    "palisade: cannot read the rate-limit service's answer (host status {status})"
                );
                Failure::Malformed
            }),
            code => Err(Failure::Status(code)),
        };
        let action = self.service_answered(&engine, &check, body.as_deref().map_err(Clone::clone));
        if action == Action::Continue {
            self.resume_http_request();
        }
    }
}

/// How the rest of a request's body reaches the filter after its headers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyArrival {
    /// There is none: check the empty body now.
    None,
    /// The host will not tell, and would not hand over an empty body: a
    /// check would never run, so the request is refused.
    Unframed,
    /// In parts, until end of stream (Envoy): hold the headers until then.
    Streamed,
    /// Whole, in one call, once the headers step has let the request go on
    /// (ngx_wasm_module, which resumes a request paused at its headers only
    /// after an HTTP call).
    Whole,
}

impl Stream {
    /// Carries out the header phase's verdict. `body_arrival` is asked
    /// only when the body must be checked (it may cost a host call).
    fn apply(&mut self, verdict: Verdict, body_arrival: impl FnOnce() -> BodyArrival) -> Action {
        match verdict {
            Verdict::Allow {
                response_headers,
                upstream,
                body,
                login,
                route,
                arrived_ms,
                remote,
            } => {
                apply_upstream_headers(&upstream);
                self.route = Some(route);
                self.arrived_ms = arrived_ms;
                self.response_headers = response_headers;
                self.body_check = body;
                self.login = login;
                if self.body_check.is_none() {
                    return match (remote, self.engine.clone()) {
                        (Some(check), Some(engine)) => self.ask_service(&engine, check),
                        _ => Action::Continue,
                    };
                }
                match body_arrival() {
                    BodyArrival::Whole => Action::Continue,
                    BodyArrival::None => self.finish_body(Body::Complete(&[])),
                    BodyArrival::Unframed => self.finish_body(Body::Unframed),
                    // Hold the headers until the body is verified.
                    BodyArrival::Streamed => Action::Pause,
                }
            }
            Verdict::Respond(response) => self.send(response),
        }
    }
}

impl Stream {
    fn finish_buffered_body(&mut self, max_size: usize) -> Action {
        match host::request_body(max_size) {
            Ok(bytes) => self.finish_body(Body::Complete(&bytes)),
            Err(status) => {
                log::error!("palisade: cannot read the request body (host status {status})");
                self.finish_body(Body::Unreadable)
            }
        }
    }
}

/// Removes client copies of palisade's identity headers, sets the verified
/// ones. A failure is logged; a header that cannot be removed would let a
/// forged identity through, so it is logged at error level.
fn apply_upstream_headers(upstream: &UpstreamHeaders) {
    for name in &upstream.remove {
        if let Err(status) = host::remove_header(MAP_REQUEST_HEADERS, name) {
            log::error!("palisade: cannot remove request header {name} (host status {status})");
        }
    }
    for (name, value) in &upstream.set {
        if let Err(status) = host::replace_header(MAP_REQUEST_HEADERS, name, value) {
            log::warn!("palisade: cannot set request header {name} (host status {status})");
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            // Unreachable in Envoy (a refused configuration never gets
            // traffic); fail closed anyway.
            let body = format!(
                r#"{{"error":"unavailable","reason":"{}","request_id":""}}"#,
                Reason::ConfigMissing.as_str()
            );
            return self.respond(
                503,
                &[("content-type", "application/json".to_string())],
                &[],
                &body,
            );
        };
        let unavailable = |stream: &mut Stream| {
            let verdict = with_services(&engine, &stream.counters, &stream.namespace, |services| {
                engine.headers_unavailable(services)
            });
            stream.apply(verdict, || BodyArrival::None)
        };
        let bytes = match host::header_map_bytes(MAP_REQUEST_HEADERS) {
            Ok(bytes) => bytes,
            Err(status) => {
                log::error!("palisade: cannot read request headers (host status {status})");
                return unavailable(self);
            }
        };
        let Some(headers) = HeaderMap::decode(&bytes) else {
            log::error!("palisade: malformed header map from host");
            return unavailable(self);
        };
        let verdict = with_services(&engine, &self.counters, &self.namespace, |services| {
            engine.evaluate(&headers, &HostConnection, services)
        });
        let body_arrival = || {
            if end_of_stream {
                BodyArrival::None
            } else if !engine.host().delivers_body_whole() {
                BodyArrival::Streamed
            } else {
                let http1 = || {
                    host::property(&["request", "protocol"])
                        .is_some_and(|p| p.starts_with(b"HTTP/1"))
                };
                match headers.body_framing(http1) {
                    BodyFraming::Empty => BodyArrival::None,
                    BodyFraming::Length => BodyArrival::Whole,
                    BodyFraming::Unknown => BodyArrival::Unframed,
                }
            }
        };
        self.apply(verdict, body_arrival)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.remote.is_some() {
            // Continue would also let the held headers go before the
            // service has answered.
            return Action::Pause;
        }
        let Some(check) = &self.body_check else {
            return Action::Continue;
        };
        if body_size > check.max_bytes {
            return self.finish_body(Body::TooLarge);
        }
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Action::Pause;
        }
        self.finish_buffered_body(body_size)
    }

    /// With HTTP/2 trailers the last body callback may not see
    /// `end_of_stream`: the trailers end the body.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.remote.is_some() {
            return Action::Pause;
        }
        match &self.body_check {
            None => Action::Continue,
            Some(check) => {
                let limit = check.max_bytes.saturating_add(1);
                self.finish_buffered_body(limit)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let watched = self.arrived_ms.take().zip(self.route);
        let status = || {
            host::header_value(MAP_RESPONSE_HEADERS, ":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
        };
        let status = if watched.is_some() || self.login.is_some() {
            status()
        } else {
            None
        };
        if let (Some((arrived_ms, route)), Some(engine), Some(status)) =
            (watched, &self.engine, status)
        {
            let now_ms = engine.watches_latency(route).then(host::now_ms).flatten();
            engine.upstream_answered(route, arrived_ms, status, now_ms);
        }
        if let (Some(login), Some(engine)) = (self.login.take(), self.engine.clone()) {
            match status {
                Some(status) => {
                    with_services(&engine, &self.counters, &self.namespace, |services| {
                        engine.login_answered(&login, status, services);
                    });
                }
                None => {
                    log::warn!("palisade: a login's answer has no readable :status; not counted")
                }
            }
        }
        for (name, value) in self.response_headers.drain(..) {
            if let Err(status) = host::add_header(MAP_RESPONSE_HEADERS, name, &value) {
                log::warn!("palisade: cannot add response header {name} (host status {status})");
            }
        }
        if let (Some(route), Some(engine)) = (self.route.take(), &self.engine) {
            for (name, value) in engine.security_headers(route) {
                if let Err(status) = host::replace_header(MAP_RESPONSE_HEADERS, name, value) {
                    log::warn!(
                        "palisade: cannot set response header {name} (host status {status})"
                    );
                }
            }
        }
        Action::Continue
    }
}
