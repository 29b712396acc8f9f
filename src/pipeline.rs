//! One request through every stage, and the verdict.
//!
//! The stages run in the order of `HEADER_STAGES` (README, "How it
//! works") and stop at the first enforced denial (later stages would only
//! spend host calls). Monitor-mode findings are counted and logged, and the
//! request goes on. A request whose body must be checked (a signed
//! `Content-Digest`, a refresh-token grant) gets its final decision in
//! [`Engine::check_body`]. Each stage's logic lives in its module under
//! `stages/`; this module only orders them and takes the verdict.

use crate::config::Policy;
use crate::core::cluster::Descriptor;
use crate::core::config_error::ConfigError;
use crate::core::event;
use crate::core::hosts::HostKind;
use crate::core::metrics::{self, Counter};
use crate::core::mode::Mode;
use crate::core::remote::FetchPlan;
use crate::core::request::{request_id, Facts, HeaderMap};
use crate::core::routes::RouteId;
use crate::core::stage::{self, Ctx};
use crate::core::verdict::{
    Decision, Finding, LocalResponse, Pseudo, Quota, Reason, Stage, UpstreamHeaders,
};
use crate::stages::account::{
    self,
    config::{Login, LoginOutcome},
};
use crate::stages::anomaly;
use crate::stages::auth::jwks;
use crate::stages::auth::refresh;
use crate::stages::auth::{self, credentials::AuthState};
use crate::stages::bot;
use crate::stages::integrity::{self, digest::ContentDigest};
use crate::stages::limits::buckets::{Counts, Limiter};
use crate::stages::limits::{self, Phase};
use crate::stages::mtls;
use crate::stages::openapi;
use crate::stages::reputation;
use crate::stages::transport;
use crate::stages::validation::{self, BodyPlan};
use crate::stages::{client_ip, geo, routes, user};
use crate::state::host::{create_if_absent, Connection, SharedStore, StoreError};
use crate::state::occupancy::{self, Sampler, Table};
use crate::state::{replay, slots};
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Mutex;

pub use crate::core::stage::Services;
pub use global::{Answer, RemoteCheck};

mod global;

/// Everything `on_configure` writes to shared data before the first
/// request, in order: the process-wide seed (`fresh` if this worker is the
/// first), every table page, and each remote key set's record. Returns the
/// seed. `palisade-check --nginx-zone-size` replays it to size the zone.
pub fn prepare_shared_data(
    policy: &Policy,
    store: &dyn SharedStore,
    fresh: [u8; 16],
) -> Result<[u8; 16], StoreError> {
    let seed = slots::shared_seed(store, fresh)?;
    slots::ensure_pages(store, policy.shared_keys())?;
    // Created before any worker runs, as the pages (Envoy's first insert
    // is not a compare-and-swap); 16 bytes, not a page.
    create_if_absent(store, occupancy::LEASE_KEY, &[0; 16])?;
    for remote in policy
        .auth
        .providers
        .iter()
        .filter_map(|p| p.remote.as_ref())
    {
        jwks::ensure_record(store, remote)?;
    }
    if let Some(rep) = &policy.reputation {
        reputation::ensure_records(rep, store)?;
    }
    Ok(seed)
}

/// A compiled policy bound to the process-wide hash seed, with the
/// worker's authentication state (current key sets, verified tokens).
pub struct Engine {
    pub policy: Policy,
    seed: [u8; 16],
    auth: Mutex<AuthState>,
    /// Remote reputation lists as this worker installed them.
    lists: reputation::State,
    /// Rate-limit state of this worker: held tokens, bans to publish.
    limits: limits::WorkerState,
    /// This worker's requests and answers not yet in the anomaly baselines.
    tallies: anomaly::Tallies,
    /// What this worker has read of the slot tables (table gauges).
    sampler: Mutex<Sampler>,
    /// Per route class: until when (Unix ms) its anomaly lasts, as the
    /// shared record said on this worker's last tick (`tighten_by`).
    tightened: Mutex<Vec<u64>>,
    host: HostKind,
}

/// One step of the header phase.
type Step = fn(&Engine, &mut Request<'_, '_>, &Ctx<'_>);

/// What the header phase leaves the body phase to check: the signed
/// digest, request validation's body checks, the operation's body schema.
type BodyPlans = (
    Option<(ContentDigest, Mode)>,
    Option<BodyPlan>,
    Option<openapi::BodyPlan>,
);

/// The header phase, in order, after the route is classified. Each step
/// decides whether it runs: most only while no enforced finding has
/// stopped the request; `failures` only after a refusal, which it counts.
const HEADER_STAGES: [Step; 18] = [
    Engine::client_ip,        // classify: the client address and its key
    Engine::user,             // classify: the user header
    Engine::fingerprint,      // classify: the client fingerprint
    Engine::transport,        // TLS required on the route class
    Engine::mtls,             // the device identity; client certificate required
    Engine::validate,         // request validation: shape, encodings, injection
    Engine::schema,           // the API document's operations; default deny
    Engine::reputation,       // IP allow and deny lists
    Engine::geo,              // the country from the trusted header; allow/deny per route
    Engine::pre_auth_limits,  // bans and ip/route/fingerprint limits, failures-rule checks
    Engine::bot,              // bot score: allow, challenge or deny
    Engine::signature,        // RFC 9421 signature, replay
    Engine::credentials,      // API key or JWT; roles, scopes, MFA
    Engine::failures,         // a refusal by the two above counts against the client
    Engine::bot_after_auth,   // the bot decision that waited for authentication
    Engine::token_request,    // token parameters in a token request's query
    Engine::travel,           // the user's country against where it was last seen
    Engine::post_auth_limits, // user- and key_id-keyed limits
];

/// A request in the header phase: what the stages learned and found.
struct Request<'a, 'h> {
    headers: &'a HeaderMap<'h>,
    peer: &'a dyn Fn() -> Option<String>,
    connection: &'a dyn Connection,
    facts: Facts<'h>,
    findings: Vec<Finding>,
    quota: Option<Quota>,
    /// The body's digest check, prepared by the signature stage.
    digest: Option<(ContentDigest, Mode)>,
    /// The body's validation, planned by the validation stage.
    validation: Option<BodyPlan>,
    /// The body's schema, planned by the openapi stage.
    schema: Option<openapi::BodyPlan>,
    upstream: UpstreamHeaders,
    /// Where the verification stages' findings start.
    verified_from: usize,
    /// The bot stage's assessment; `true` while its decision waits for
    /// authentication.
    bot: Option<(bot::Assessment, bool)>,
    /// The request passed authentication.
    authenticated: bool,
    /// The bot challenge, when the score calls for one.
    challenge: Option<LocalResponse>,
    /// The address would come from the TCP peer, and no stage needed it:
    /// it is read only if the request gets a security event.
    peer_deferred: bool,
    /// What the rate-limit service is to count (global mode).
    remote: Vec<Descriptor>,
}

impl Request<'_, '_> {
    fn blocked(&self) -> bool {
        self.findings.iter().any(Finding::enforced)
    }
}

/// What the header phase hands to the verdict besides its findings.
#[derive(Default)]
struct Outcome {
    quota: Option<Quota>,
    upstream: UpstreamHeaders,
    body: Option<BodyCheck>,
    /// The bot challenge to answer with, when the bot stage's finding is
    /// the one enforced.
    challenge: Option<LocalResponse>,
    /// Cookies for an allowed request's response (a challenge pass).
    set_cookies: Vec<String>,
    login: Option<Box<LoginCheck>>,
    /// When the request arrived, if the anomaly detector watches its
    /// upstream's answer.
    arrived_ms: Option<u64>,
    /// What the rate-limit service is to count (global mode).
    remote: Vec<Descriptor>,
}

/// The request body as the body phase saw it.
pub enum Body<'a> {
    Complete(&'a [u8]),
    /// Larger than the configured limit; not buffered further.
    TooLarge,
    /// The host failed to hand it over: it cannot be checked.
    Unreadable,
    /// The host will not say whether a body follows (see
    /// [`HeaderMap::body_framing`]): it cannot be checked.
    Unframed,
}

/// What the request-body phase still has to check before the request may
/// go upstream: the body against a signature's `Content-Digest`, and a
/// refresh-token grant against refresh-token reuse.
#[derive(Debug, Clone)]
pub struct BodyCheck {
    /// The digest to check, with the signature stage's mode.
    pub digest: Option<(ContentDigest, Mode)>,
    /// Refresh-token reuse detection applies, in this mode.
    pub refresh: Option<Mode>,
    /// Request validation's checks of the body.
    pub validation: Option<BodyPlan>,
    /// The operation's request body (`openapi`).
    pub schema: Option<openapi::BodyPlan>,
    /// The most the host buffers: the largest limit of the checks.
    pub max_bytes: usize,
    /// The limit of the digest, refresh-token and login checks.
    checks_max_bytes: usize,
    pub later: Later,
    /// Multipart or content-encoded: refresh tokens cannot be read from it.
    pub opaque_body: bool,
    /// A login whose username is read from the body (`login` section).
    pub login: bool,
    /// What the header phase left for the rate-limit service to count: one
    /// call, after the body phase.
    remote: Vec<Descriptor>,
    /// The header phase's tightest local quota (quota headers).
    quota: Option<Quota>,
}

/// What the header phase learned that a later phase of the request reads
/// (the body's checks, the rate-limit service's answer): for its security
/// event, and the rules keyed on the client.
#[derive(Debug, Clone)]
pub struct Later {
    pub route: RouteId,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// Key id of the verified signature, for the security log.
    pub key_id: Option<String>,
    pub fingerprint: Option<u64>,
    /// The device identity (`mtls`), for `device`-keyed rules and events.
    pub device: Option<String>,
}

impl Later {
    fn of(facts: &Facts<'_>) -> Later {
        Later {
            route: facts.route,
            request_id: facts.request_id.to_string(),
            client_ip: facts.client_ip,
            key_id: facts.key_id.clone(),
            fingerprint: facts.fingerprint,
            device: facts.device.clone(),
        }
    }
}

/// A login on its way to the upstream: what its answer is counted against
/// (`failed_logins` rules), and the client a success makes known for the
/// user. Filled in by the header and body phases.
#[derive(Debug, Clone)]
pub struct LoginCheck {
    route: RouteId,
    request_id: String,
    client_ip: Option<IpAddr>,
    fingerprint: Option<u64>,
    username: Option<u128>,
}

/// The outcome of the pipeline for one request.
#[derive(Debug, Clone)]
// Built once per request and moved once into the stream: boxing the
// common variant would cost an allocation on every allowed request.
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// Forward upstream (once `body` passes, if set); add these headers to
    /// the response (quota headers).
    Allow {
        response_headers: Vec<(&'static str, String)>,
        upstream: UpstreamHeaders,
        body: Option<BodyCheck>,
        /// A login whose upstream answer must be accounted for.
        login: Option<Box<LoginCheck>>,
        /// The route class (its `transport` response headers).
        route: RouteId,
        /// Set when the upstream's answer is to be reported with
        /// [`Engine::upstream_answered`]: when the request arrived.
        arrived_ms: Option<u64>,
        /// Set when the rate-limit service must be asked first (global
        /// mode, no body to check): forward once
        /// [`Engine::remote_answered`] says so.
        remote: Option<Box<RemoteCheck>>,
    },
    Respond(LocalResponse),
}

/// The outcome of the body phase.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum BodyVerdict {
    Forward,
    Respond(LocalResponse),
    /// Ask the rate-limit service, then see [`Engine::remote_answered`].
    Ask(Box<RemoteCheck>),
}

impl BodyVerdict {
    /// The response palisade answers with, if it already knows it.
    pub fn response(self) -> Option<LocalResponse> {
        match self {
            BodyVerdict::Respond(response) => Some(response),
            BodyVerdict::Forward | BodyVerdict::Ask(_) => None,
        }
    }
}

impl Engine {
    pub fn new(policy: Policy, seed: [u8; 16], host: HostKind) -> Result<Engine, ConfigError> {
        if policy.global.is_some() && !host.dispatches_grpc() {
            // Refused, not run locally: limits an operator believes hold
            // across replicas would silently hold per replica.
            return Err(ConfigError {
                path: "global".into(),
                message: "needs gRPC calls to the rate-limit service, which ngx_wasm_module does not support; remove the section and scope every rule and table \"local\" on NGINX and Kong".into(),
            });
        }
        if policy.mtls.is_some() && !host.reads_peer_certificates() {
            // Refused, not skipped: routes an operator believes closed to
            // unknown devices would be open.
            return Err(ConfigError {
                path: "mtls".into(),
                message: "needs the client certificate's properties (connection.uri_san_peer_certificate, connection.subject_peer_certificate), which ngx_wasm_module does not implement; remove the section (and `identities`, `device` keys) on NGINX and Kong".into(),
            });
        }
        let auth = AuthState::new(&policy.auth, seed).map_err(|e| ConfigError {
            path: format!("jwt.providers.{}", e.field),
            message: e.message,
        })?;
        Ok(Engine {
            lists: reputation::State::new(policy.reputation.as_ref()),
            policy,
            seed,
            auth: Mutex::new(auth),
            limits: limits::WorkerState::default(),
            tallies: anomaly::Tallies::default(),
            sampler: Mutex::default(),
            tightened: Mutex::default(),
            host,
        })
    }

    /// The proxy this engine was configured for.
    pub fn host(&self) -> HostKind {
        self.host
    }

    fn ctx<'a>(&'a self, host: &'a Services<'a>) -> Ctx<'a> {
        Ctx {
            host,
            seed: &self.seed,
            failure_mode: self.policy.failure_mode,
            cluster_seed: self.policy.global.as_ref().map(|g| &g.seed),
        }
    }

    /// Called from the root context's tick: installs key sets other
    /// workers fetched, and returns the fetches this worker won.
    pub fn jwks_due(&self, store: &dyn SharedStore, now_ms: u64) -> Vec<FetchPlan> {
        auth::jwks_due(&self.policy.auth, &self.auth, store, now_ms)
    }

    /// A fetch finished: `Ok(body)` for a 200 response, `Err(why)` otherwise
    /// (status, transport failure). See [`auth::jwks_fetched`].
    pub fn jwks_fetched(
        &self,
        provider: usize,
        result: Result<&[u8], String>,
        host: &Services<'_>,
    ) {
        auth::jwks_fetched(&self.policy.auth, &self.auth, provider, result, host);
    }

    /// Called from the root context's tick: installs reputation lists
    /// other workers fetched, and returns the fetches this worker won.
    pub fn lists_due(&self, store: &dyn SharedStore, now_ms: u64) -> Vec<FetchPlan> {
        match &self.policy.reputation {
            Some(rep) => reputation::due(rep, &self.lists, store, now_ms),
            None => Vec::new(),
        }
    }

    /// A list fetch finished (see [`reputation::fetched`]).
    pub fn list_fetched(&self, list: usize, result: Result<&[u8], String>, host: &Services<'_>) {
        if let Some(rep) = &self.policy.reputation {
            reputation::fetched(rep, &self.lists, list, result, host);
        }
    }

    /// Whether any provider's keys or any list are fetched (the root
    /// needs a tick).
    pub fn needs_tick(&self) -> bool {
        let lists = self.policy.reputation.as_ref();
        self.policy
            .auth
            .providers
            .iter()
            .any(|p| p.remote.is_some())
            || lists.is_some_and(|r| r.lists.iter().any(|l| l.remote().is_some()))
            || self.policy.rate_limits.rules.iter().any(|r| r.reserve > 1)
            || self.policy.anomaly.is_some()
    }

    /// Counts a request for the anomaly detector; when the route class's
    /// upstream answers are watched too, returns when it arrived.
    fn count_arrival(&self, facts: &Facts<'_>, host: &Services<'_>) -> Option<u64> {
        let watch = self.policy.anomaly.as_ref()?.watch(facts.route)?;
        let now_ms = facts.now_ms(host.clock)?;
        self.tallies.request(watch, facts.route, now_ms);
        watch.needs_responses().then_some(now_ms)
    }

    /// Tokens a request of `facts.route` takes from each rate-limit rule:
    /// the class's `tighten_by` while an anomaly lasts on it, else 1.
    fn limit_cost(&self, facts: &Facts<'_>, host: &Services<'_>) -> u32 {
        let by = match self
            .policy
            .anomaly
            .as_ref()
            .and_then(|a| a.watch(facts.route))
        {
            Some(w) if w.tighten_by > 1 => w.tighten_by,
            _ => return 1,
        };
        let until = self
            .tightened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(usize::from(facts.route))
            .copied()
            .unwrap_or(0);
        match facts.now_ms(host.clock) {
            Some(now) if now < until => by,
            _ => 1,
        }
    }

    /// Whether the upstream's latency is watched on `route` (the glue then
    /// reads the clock when the answer comes).
    pub fn watches_latency(&self, route: RouteId) -> bool {
        self.policy
            .anomaly
            .as_ref()
            .and_then(|a| a.watch(route))
            .is_some_and(|w| w.watches(anomaly::Signal::Latency))
    }

    /// The upstream answered a request of `route` (see `Verdict::Allow`'s
    /// `arrived_ms`) with `status`, at `now_ms` when the clock was read.
    pub fn upstream_answered(
        &self,
        route: RouteId,
        arrived_ms: u64,
        status: u16,
        now_ms: Option<u64>,
    ) {
        let Some(watch) = self.policy.anomaly.as_ref().and_then(|a| a.watch(route)) else {
            return;
        };
        let latency_ms = now_ms.map(|now| now.saturating_sub(arrived_ms));
        self.tallies
            .response(watch, route, arrived_ms, status, latency_ms);
    }

    /// On the root context's tick, on a host with metrics: when this worker
    /// (`worker`, a number unique to its VM) holds the sampling lease, reads
    /// a few more table pages and returns every table's gauges (stat name,
    /// value); otherwise nothing.
    pub fn table_gauges(
        &self,
        host: &Services<'_>,
        now_ms: u64,
        worker: u64,
    ) -> Vec<(String, u64)> {
        let tables = self.policy.slot_tables();
        if tables.is_empty() {
            return Vec::new();
        }
        match occupancy::hold_lease(host.store, worker, now_ms) {
            Ok(true) => {}
            Ok(false) => return Vec::new(),
            Err(e) => {
                log::warn!("palisade: cannot read the table gauges' lease ({e:?})");
                return Vec::new();
            }
        }
        let limiter = Limiter {
            rules: &self.policy.rate_limits.rules,
            bans: &self.policy.bans,
            store: host.store,
            metrics: host.metrics,
            cost: 1,
        };
        let behaviour = self.policy.bot.as_ref().map(|b| b.behaviour.tenant());
        let tables: Vec<Table<'_>> = tables
            .into_iter()
            .map(|(name, key, pages)| Table {
                name,
                key,
                pages,
                tenant: match (key, &behaviour) {
                    (slots::RATE_LIMITS, _) => &limiter,
                    (bot::behaviour::TABLE, Some(b)) => b,
                    _ => &replay::Expiring,
                },
            })
            .collect();
        let sampled = self
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(host.store, &tables, now_ms, occupancy::PAGES_PER_TICK);
        match sampled {
            Ok(found) => found.iter().flat_map(metrics::table_gauges).collect(),
            Err(e) => {
                log::warn!("palisade: cannot read the slot tables for their gauges ({e:?})");
                Vec::new()
            }
        }
    }

    /// On the root context's tick: this worker's counts go to the shared
    /// baselines; anomalies that begin or end are logged and counted.
    pub fn anomaly_tick(&self, host: &Services<'_>, now_ms: u64) {
        let Some(anomaly) = &self.policy.anomaly else {
            return;
        };
        let retries = || host.metrics.increment(Counter::CasRetry);
        match anomaly::flush(anomaly, &self.tallies, host.store, now_ms, &retries) {
            Ok(flushed) => {
                let mut tightened = self.tightened.lock().unwrap_or_else(|p| p.into_inner());
                for (route, until) in flushed.anomalous_until {
                    let i = usize::from(route);
                    if tightened.len() <= i {
                        tightened.resize(i + 1, 0);
                    }
                    tightened[i] = until;
                }
                for change in flushed.changes {
                    event::anomaly(&change, now_ms, &self.policy);
                    if change.started {
                        host.metrics.increment(Counter::Anomaly {
                            route: change.route,
                            signal: change.signal,
                        });
                    }
                }
            }
            Err(e) => log::warn!(
                "palisade: anomaly counts could not reach shared data ({e:?}); kept for the next tick"
            ),
        }
    }

    /// The root context's tick (whatever its period, see `needs_tick`):
    /// held rate-limit tokens age and expire.
    pub fn tick(&self) {
        limits::lock(&self.limits.held).tick();
    }

    /// Evaluates one request. `connection` answers what the host knows of
    /// the connection (the TCP peer address, TLS); it is only
    /// called when the configuration needs it (each call is a host call).
    pub fn evaluate(
        &self,
        headers: &HeaderMap<'_>,
        connection: &dyn Connection,
        host: &Services<'_>,
    ) -> Verdict {
        let peer = || connection.peer();
        let peer: &dyn Fn() -> Option<String> = &peer;
        let with_host_authority;
        let headers = if self.host.authority_from_host_header() {
            with_host_authority = headers.with_host_as_authority();
            &with_host_authority
        } else {
            headers
        };
        let route = match routes::classify(&self.policy.routes, headers) {
            Ok(route) => route,
            Err(pseudo) => return self.refuse_unclassified(headers, pseudo, host),
        };
        // Palisade's own headers are removed whether or not the stage that
        // sets them is on: an upstream that trusts them must never get a
        // client's copy. A lookup in the map read once; a host call only
        // when one is present.
        let upstream = UpstreamHeaders {
            remove: self
                .policy
                .auth
                .owned_headers
                .iter()
                .map(String::as_str)
                .chain(bot::OWNED_HEADERS)
                .filter(|h| headers.get(h).is_some())
                .map(str::to_string)
                .collect(),
            set: Vec::new(),
        };
        let forged_identity = || {
            // A challenge solution is the client's to send.
            upstream
                .remove
                .iter()
                .any(|h| h != bot::challenge::SOLUTION_HEADER)
        };
        if !self.host.removes_request_headers() && forged_identity() {
            // The client's copy would reach the upstream next to (or
            // instead of) palisade's.
            let finding = Finding::new(Stage::Classify, Reason::IdentityHeader, Mode::Enforce);
            let facts = Facts::new(route, request_id(headers));
            return self.conclude(&facts, vec![finding], Outcome::default(), host);
        }
        let mut request = Request {
            headers,
            peer,
            connection,
            facts: Facts::new(route, request_id(headers)),
            findings: Vec::new(),
            quota: None,
            digest: None,
            validation: None,
            schema: None,
            upstream,
            verified_from: 0,
            bot: None,
            authenticated: false,
            challenge: None,
            peer_deferred: false,
            remote: Vec::new(),
        };
        let ctx = self.ctx(host);
        for step in HEADER_STAGES {
            step(self, &mut request, &ctx);
        }
        if self.policy.needs_fingerprint {
            let upstream_headers = self.policy.bot.as_ref().is_none_or(|b| b.upstream_headers);
            if upstream_headers {
                bot::upstream_headers(&request.facts, &mut request.upstream.set);
            }
        }
        let plans = (request.digest, request.validation, request.schema);
        let mut body = self.body_check(headers, &request.facts, plans);
        // Security events carry the address, the body phase's too.
        let later_event =
            !request.findings.is_empty() || body.is_some() || !request.remote.is_empty();
        if request.peer_deferred && later_event {
            client_ip::from_peer(request.peer, self.policy.ip_prefixes, &mut request.facts);
            if let Some(check) = &mut body {
                check.later.client_ip = request.facts.client_ip;
            }
        }
        let login = self.login_check(&request.facts);
        let arrived_ms = self.count_arrival(&request.facts, host);
        let outcome = Outcome {
            quota: request.quota,
            upstream: request.upstream,
            body,
            challenge: request.challenge,
            set_cookies: request.bot.map(|(a, _)| a.set_cookies).unwrap_or_default(),
            login,
            arrived_ms,
            remote: request.remote,
        };
        self.conclude(&request.facts, request.findings, outcome, host)
    }

    fn client_ip(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        let p = &self.policy;
        let deferred = Cell::new(false);
        let later = || {
            deferred.set(true);
            None
        };
        client_ip::identify(
            p.client_ip,
            p.ip_prefixes,
            p.mode,
            r.headers,
            if p.needs_client_ip { r.peer } else { &later },
            &mut r.facts,
            &mut r.findings,
        );
        r.peer_deferred = deferred.get();
    }

    fn transport(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if let (Some(t), false) = (&self.policy.transport, r.blocked()) {
            transport::check(t, r.facts.route, r.headers, r.connection, &mut r.findings);
        }
    }

    /// Reads the device identity where a stage needs it (one host call),
    /// then the class's certificate requirement.
    fn mtls(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        let Some(m) = &self.policy.mtls else {
            return;
        };
        if !r.blocked() && self.policy.reads_device(r.facts.route) {
            mtls::identify(m.field, r.connection, &mut r.facts);
            mtls::check(m, &r.facts, &mut r.findings);
        }
    }

    fn validate(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if let (Some(v), false) = (&self.policy.validation, r.blocked()) {
            r.validation = validation::check_headers(v, r.facts.route, r.headers, &mut r.findings);
        }
    }

    /// The request against the API document; then, with `default_deny`,
    /// a request no route class and no operation declares is refused.
    fn schema(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        let p = &self.policy;
        let mut declared = false;
        if let (Some(o), false) = (&p.openapi, r.blocked()) {
            let checked = openapi::check_headers(o, r.facts.route, r.headers, &mut r.findings);
            declared = checked.declared;
            r.schema = checked.body;
        }
        if !p.default_deny || r.facts.route != p.routes.default_id() || declared || r.blocked() {
            return;
        }
        // A class the document is `off` on still declares its operations.
        let off_but_declared = p.openapi.as_ref().is_some_and(|o| {
            o.by_route.get(r.facts.route) == Some(&None) && openapi::declares(o, r.headers)
        });
        if !off_but_declared {
            let finding = Finding::new(Stage::Classify, Reason::RouteUndeclared, p.mode);
            r.findings.push(finding);
        }
    }

    fn reputation(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if let (Some(rep), false) = (&self.policy.reputation, r.blocked()) {
            reputation::check(rep, &self.lists, &r.facts, &mut r.findings);
        }
    }

    fn user(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        user::identify(self.policy.user_header.as_deref(), r.headers, &mut r.facts);
    }

    fn fingerprint(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if self.policy.needs_fingerprint {
            let ja4 = self
                .policy
                .bot
                .as_ref()
                .and_then(|b| b.ja4_header.as_deref());
            bot::identify(ja4, r.headers, &mut r.facts);
        }
    }

    /// The country (for events and `countries` rules) and the route
    /// class's country rule.
    fn geo(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if let Some(g) = &self.policy.geo {
            geo::identify(g, r.headers, &mut r.facts);
            if !r.blocked() {
                geo::check(g, &r.facts, &mut r.findings);
            }
        }
    }

    /// Scores the request. On a route that verifies a signature or a
    /// credential, with `allow.authenticated`, the decision waits for the
    /// verification.
    fn bot(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let Some(b) = &self.policy.bot else {
            return;
        };
        if r.blocked() || !b.applies_to(r.facts.route) || bot::allowlisted(b, &r.facts) {
            return;
        }
        let assessment = bot::assess(b, r.headers, &mut r.facts, ctx, &mut r.findings);
        let verifies = self.policy.auth.policy_for(r.facts.route).is_some()
            || self.policy.signatures.policy_for(r.facts.route).is_some();
        let waits = b.allow_authenticated && verifies;
        if !waits {
            self.bot_decide(b, r, &assessment, ctx);
        }
        r.bot = Some((assessment, waits));
    }

    fn bot_after_auth(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let (Some(b), Some((assessment, true))) = (&self.policy.bot, &r.bot) else {
            return;
        };
        let assessment = assessment.clone();
        // A verified signature or credential: the client is known.
        if r.authenticated || r.facts.key_id.is_some() {
            bot::log_assessment(
                b,
                &r.facts,
                self.route_name(r),
                &assessment,
                "authenticated",
            );
        } else if !r.blocked() {
            self.bot_decide(b, r, &assessment, ctx);
        } else {
            bot::log_assessment(b, &r.facts, self.route_name(r), &assessment, "refused");
        }
    }

    fn route_name(&self, r: &Request<'_, '_>) -> &str {
        self.policy.routes.name(r.facts.route)
    }

    fn bot_decide(
        &self,
        b: &bot::config::Bot,
        r: &mut Request<'_, '_>,
        assessment: &bot::Assessment,
        ctx: &Ctx<'_>,
    ) {
        let finding = bot::decide(b, assessment);
        let action = match finding.as_ref().map(|f| f.reason) {
            Some(Reason::BotDeny) => "deny",
            Some(Reason::BotChallenge) => "challenge",
            _ => "allow",
        };
        bot::log_assessment(b, &r.facts, self.route_name(r), assessment, action);
        // Only an enforced challenge is answered: in monitor mode the
        // puzzle would cost a MAC and be thrown away.
        if finding
            .as_ref()
            .is_some_and(|f| f.reason == Reason::BotChallenge && f.enforced())
        {
            r.challenge = bot::challenge_response(b, r.headers, &r.facts, ctx);
        }
        r.findings.extend(finding);
    }

    /// Bans and limits on the address and route, so that a banned or
    /// flooding client costs no cryptography.
    fn pre_auth_limits(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        if !r.blocked() {
            self.limits(Phase::PreAuth, r, ctx);
        }
        r.verified_from = r.findings.len();
    }

    fn signature(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let sigs = &self.policy.signatures;
        if let (false, Some(policy)) = (r.blocked(), sigs.policy_for(r.facts.route)) {
            let one_use = integrity::verify(
                sigs,
                policy,
                r.headers,
                &mut r.facts,
                ctx,
                &mut r.findings,
                &mut r.digest,
            );
            r.remote.extend(one_use);
        }
    }

    /// Authentication and authorization on a route that requires a
    /// credential: the principal becomes the `user` key and the identity
    /// headers.
    fn credentials(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let a = &self.policy.auth;
        if let (false, Some(policy)) = (r.blocked(), a.policy_for(r.facts.route)) {
            let (headers, facts, findings) = (r.headers, &mut r.facts, &mut r.findings);
            let connection = r.connection;
            if let Some(identity) = auth::authenticate(
                a, &self.auth, policy, headers, facts, ctx, connection, findings,
            ) {
                let rules = &self.policy.rate_limits.rules;
                if rules
                    .iter()
                    .any(|r| r.key.token && r.applies_to(facts.route))
                {
                    facts.token = auth::token_key(a, headers, ctx);
                }
                r.upstream.set.extend(identity);
                r.authenticated = true;
            }
        }
    }

    fn failures(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        if refused_credentials(r.findings.get(r.verified_from..).unwrap_or_default()) {
            let counted_from = r.findings.len();
            self.limits(Phase::Failed, r, ctx);
            answer_uncounted_as_store_failure(&mut r.findings, counted_from, r.verified_from);
        }
    }

    fn token_request(&self, r: &mut Request<'_, '_>, _: &Ctx<'_>) {
        if !r.blocked() {
            let finding = refresh::token_request_query(&self.policy.auth, r.headers, r.facts.route);
            r.findings.extend(finding);
        }
    }

    fn travel(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let travel = self.policy.geo.as_ref().and_then(|g| g.travel.as_ref());
        if let (Some(t), false) = (travel, r.blocked()) {
            geo::travel::check(t, &r.facts, ctx, &mut r.findings);
        }
    }

    fn post_auth_limits(&self, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        if !r.blocked() {
            self.limits(Phase::PostAuth, r, ctx);
        }
    }

    fn limits(&self, phase: Phase, r: &mut Request<'_, '_>, ctx: &Ctx<'_>) {
        let (limits, bans) = (&self.policy.rate_limits, &self.policy.bans);
        limits::check(
            phase,
            limits,
            bans,
            &self.limits,
            &r.facts,
            ctx,
            &mut r.findings,
            &mut r.quota,
            &mut r.remote,
            self.limit_cost(&r.facts, ctx.host),
        );
    }

    /// A request that cannot be classified never reaches a stage: it is
    /// refused whatever the mode, since `monitor` would let it pass every
    /// route's policy unchecked.
    fn refuse_unclassified(
        &self,
        headers: &HeaderMap<'_>,
        pseudo: Pseudo,
        host: &Services<'_>,
    ) -> Verdict {
        let finding = Finding::new(
            Stage::Classify,
            Reason::RequestMalformed(pseudo),
            Mode::Enforce,
        );
        self.refuse_unrouted(request_id(headers), finding, host)
    }

    /// The verdict on a request refused before it has a route: it is
    /// counted under `default`.
    fn refuse_unrouted(&self, request_id: &str, finding: Finding, host: &Services<'_>) -> Verdict {
        let facts = Facts::new(self.policy.routes.default_id(), request_id);
        self.conclude(&facts, vec![finding], Outcome::default(), host)
    }

    /// What the body phase must check, if anything: a signed digest, a
    /// refresh-token grant.
    fn body_check(
        &self,
        headers: &HeaderMap<'_>,
        facts: &Facts<'_>,
        (digest, validation, schema): BodyPlans,
    ) -> Option<BodyCheck> {
        let refresh = refresh::mode(&self.policy.auth, headers, facts.route);
        let login = self.reads_username(facts.route);
        let nothing = digest.is_none() && refresh.is_none() && !login;
        if nothing && validation.is_none() && schema.is_none() {
            return None;
        }
        let mut max_bytes = 0;
        if digest.is_some() {
            max_bytes = self.policy.signatures.max_body_bytes;
        }
        if refresh.is_some() {
            max_bytes = max_bytes.max(refresh::MAX_TOKEN_REQUEST_BYTES);
        }
        if let (true, Some(l)) = (login, &self.policy.login) {
            max_bytes = max_bytes.max(l.max_body_bytes);
        }
        let schema_max = match (&schema, &self.policy.openapi) {
            (Some(_), Some(o)) => o.max_body_bytes,
            _ => 0,
        };
        Some(BodyCheck {
            digest,
            refresh,
            max_bytes: max_bytes
                .max(validation.as_ref().map_or(0, |v| v.max_bytes))
                .max(schema_max),
            checks_max_bytes: max_bytes,
            validation,
            schema,
            later: Later::of(facts),
            opaque_body: refresh::body_is_opaque(headers),
            login,
            remote: Vec::new(),
            quota: None,
        })
    }

    /// Whether a login on `route` has its username read from the body: only
    /// when a rule needs it.
    fn reads_username(&self, route: RouteId) -> bool {
        let Some(login) = &self.policy.login else {
            return false;
        };
        login.username_field.is_some()
            && login.applies_to(route)
            && self
                .policy
                .rate_limits
                .rules
                .iter()
                .any(|r| r.applies_to(route) && (r.key.username || r.counts == Counts::Usernames))
    }

    /// What a login's answer is counted against, when `facts.route` is a
    /// login class and something counts it.
    fn login_check(&self, facts: &Facts<'_>) -> Option<Box<LoginCheck>> {
        let login = self.policy.login.as_ref()?;
        let counted = self
            .policy
            .rate_limits
            .rules
            .iter()
            .any(|r| r.applies_to(facts.route) && r.counts == Counts::FailedLogins);
        (login.applies_to(facts.route) && counted).then(|| {
            Box::new(LoginCheck {
                route: facts.route,
                request_id: facts.request_id.to_string(),
                client_ip: facts.client_ip,
                fingerprint: facts.fingerprint,
                username: None,
            })
        })
    }

    fn conclude(
        &self,
        facts: &Facts<'_>,
        findings: Vec<Finding>,
        outcome: Outcome,
        host: &Services<'_>,
    ) -> Verdict {
        let metrics = host.metrics;
        let Outcome {
            quota,
            upstream,
            body,
            challenge,
            set_cookies,
            login,
            arrived_ms,
            remote,
        } = outcome;
        self.record(facts, &findings, false, host);
        if let Some(denial) = findings.iter().find(|f| f.enforced()) {
            metrics.increment(Counter::Request {
                decision: denial.reason.decision(),
                route: facts.route,
            });
            let response = match (denial.reason, challenge) {
                (Reason::BotChallenge, Some(challenge)) => challenge,
                _ => denial.respond(facts.request_id, &self.policy),
            };
            return Verdict::Respond(self.with_security_headers(facts.route, response));
        }
        // With a body still to check or the service to ask, the request is
        // counted when they have answered.
        if body.is_none() && remote.is_empty() {
            metrics.increment(Counter::Request {
                decision: Decision::Allow,
                route: facts.route,
            });
        }
        // The service's answer sets the quota headers then.
        let quota_now = remote.is_empty() && self.policy.rate_limits.quota_headers;
        let mut response_headers = match quota {
            Some(q) if quota_now => q.headers(&self.policy),
            _ => Vec::new(),
        };
        let mut body = body;
        let remote = match &mut body {
            // One call for the request, after its body phase.
            Some(check) => {
                check.remote = remote;
                // Unless its headers were set above already.
                check.quota = quota.filter(|_| !quota_now);
                None
            }
            None => self.remote_check(global::Asking {
                descriptors: remote,
                facts,
                quota,
                refresh_mode: None,
            }),
        };
        response_headers.extend(set_cookies.into_iter().map(|c| ("set-cookie", c)));
        Verdict::Allow {
            response_headers,
            upstream,
            body,
            login,
            route: facts.route,
            arrived_ms,
            remote,
        }
    }

    /// The route class's configured response headers (`transport`), set
    /// on every response, the upstream's and palisade's own.
    pub fn security_headers(&self, route: RouteId) -> &[(String, String)] {
        match &self.policy.transport {
            Some(t) => t.response_headers(route),
            None => &[],
        }
    }

    fn with_security_headers(&self, route: RouteId, mut response: LocalResponse) -> LocalResponse {
        response.security_headers = self.security_headers(route).to_vec();
        response
    }

    /// The body phase: the body against its `Content-Digest`, a refresh
    /// token against reuse. Returns the response to send instead of
    /// forwarding, if any.
    pub fn check_body(
        &self,
        check: &BodyCheck,
        body: Body<'_>,
        host: &Services<'_>,
        login: Option<&mut LoginCheck>,
    ) -> BodyVerdict {
        let mut facts = self.facts_later(&check.later);
        let ctx = self.ctx(host);
        let mut findings = Vec::new();
        let mut remote = check.remote.clone();
        if let (Some(plan), Some(v)) = (&check.validation, &self.policy.validation) {
            let bytes = match body {
                Body::Complete(bytes) => Some(bytes),
                _ => None,
            };
            if bytes.is_some() || matches!(body, Body::TooLarge) {
                validation::check_body(v, plan, bytes, &mut findings);
            }
        }
        if let (Some(plan), Some(o), false) = (
            &check.schema,
            &self.policy.openapi,
            findings.iter().any(Finding::enforced),
        ) {
            let within = |bytes: &[u8]| bytes.len() <= o.max_body_bytes;
            let finding = match body {
                Body::Complete(bytes) => {
                    openapi::check_body(o, plan, Some(bytes).filter(|b| within(b)))
                }
                Body::TooLarge => openapi::check_body(o, plan, None),
                Body::Unreadable | Body::Unframed => None,
            };
            findings.extend(finding);
        }
        let others = check.digest.is_some() || check.refresh.is_some() || check.login;
        // The stage a body that never arrived is counted under.
        let body_stage = if others {
            Stage::Signature
        } else if check.validation.is_some() {
            Stage::Validate
        } else {
            Stage::Schema
        };
        let oversized = |mode| Finding::new(Stage::Signature, Reason::BodyTooLarge, mode);
        match body {
            _ if findings.iter().any(Finding::enforced) => {}
            Body::TooLarge | Body::Complete(_) if !others => {}
            Body::TooLarge => findings.push(oversized(self.body_mode(check))),
            Body::Complete(bytes) if bytes.len() > check.checks_max_bytes => {
                findings.push(oversized(self.body_mode(check)));
            }
            Body::Unreadable => findings.push(Finding::new(
                body_stage,
                Reason::BodyUnreadable,
                self.body_mode(check),
            )),
            Body::Unframed => findings.push(Finding::new(
                body_stage,
                Reason::BodyLengthRequired,
                self.body_mode(check),
            )),
            Body::Complete(bytes) => {
                // In order: the signed digest, then refresh-token reuse.
                if let Some((digest, mode)) = &check.digest {
                    findings.extend(integrity::check_body(digest, *mode, bytes));
                }
                let blocked = findings.iter().any(Finding::enforced);
                if let (Some(mode), false) = (check.refresh, blocked) {
                    let auth = &self.policy.auth;
                    findings.extend(refresh::check_body(
                        auth,
                        check.opaque_body,
                        bytes,
                        mode,
                        &facts,
                        &ctx,
                        &mut remote,
                    ));
                }
                let blocked = findings.iter().any(Finding::enforced);
                if let (true, false, Some(l)) = (check.login, blocked, &self.policy.login) {
                    self.login_body(l, bytes, &mut facts, &ctx, &mut findings);
                }
            }
        }
        if let Some(login) = login {
            login.username = facts.username;
        }
        if refused_credentials(&findings) {
            let counted_from = findings.len();
            self.count_limits(Phase::Failed, &facts, &ctx, &mut findings);
            answer_uncounted_as_store_failure(&mut findings, counted_from, 0);
        }
        self.record(&facts, &findings, false, host);
        let denial = findings.into_iter().find(Finding::enforced);
        if denial.is_none() {
            let asking = global::Asking {
                descriptors: remote,
                facts: &facts,
                quota: check.quota,
                refresh_mode: check.refresh,
            };
            if let Some(remote) = self.remote_check(asking) {
                // Counted once the service has answered.
                return BodyVerdict::Ask(remote);
            }
        }
        match self.settle(&check.later, denial, host) {
            Some(response) => BodyVerdict::Respond(response),
            None => BodyVerdict::Forward,
        }
    }

    /// The end of a request decided after its header phase: counted, and
    /// refused with `denial`'s response if there is one.
    fn settle(
        &self,
        later: &Later,
        denial: Option<Finding>,
        host: &Services<'_>,
    ) -> Option<LocalResponse> {
        host.metrics.increment(Counter::Request {
            decision: denial
                .as_ref()
                .map_or(Decision::Allow, |f| f.reason.decision()),
            route: later.route,
        });
        denial.map(|f| {
            let response = f.respond(&later.request_id, &self.policy);
            self.with_security_headers(later.route, response)
        })
    }

    /// A login's body: its username, then the rules that need it.
    fn login_body(
        &self,
        login: &Login,
        bytes: &[u8],
        facts: &mut Facts<'_>,
        ctx: &Ctx<'_>,
        findings: &mut Vec<Finding>,
    ) {
        let rules = &self.policy.rate_limits.rules;
        let user_rules = rules
            .iter()
            .any(|r| r.key.username && r.applies_to(facts.route));
        if let Some(finding) = account::read_username(login, bytes, facts, ctx, user_rules) {
            findings.push(finding);
        }
        if !findings.iter().any(Finding::enforced) {
            self.count_limits(Phase::Login, facts, ctx, findings);
        }
    }

    /// The rules of a phase after the header phase (no quota to report).
    fn count_limits(
        &self,
        phase: Phase,
        facts: &Facts<'_>,
        ctx: &Ctx<'_>,
        findings: &mut Vec<Finding>,
    ) {
        let (limits, bans) = (&self.policy.rate_limits, &self.policy.bans);
        let cost = self.limit_cost(facts, ctx.host);
        // Only the header and body phases ask the service (rules counting
        // requests, and ban looks): what these phases would add is dropped.
        let mut remote = Vec::new();
        limits::check(
            phase,
            limits,
            bans,
            &self.limits,
            facts,
            ctx,
            findings,
            &mut None,
            &mut remote,
            cost,
        );
    }

    /// What the header phase learned, for a later phase of the request.
    fn facts_later<'a>(&self, later: &'a Later) -> Facts<'a> {
        let mut facts = self.facts_after_headers(
            later.route,
            &later.request_id,
            later.client_ip,
            later.fingerprint,
        );
        facts.key_id = later.key_id.clone();
        facts.device = later.device.clone();
        facts
    }

    fn facts_after_headers<'a>(
        &self,
        route: RouteId,
        request_id: &'a str,
        client_ip: Option<IpAddr>,
        fingerprint: Option<u64>,
    ) -> Facts<'a> {
        let mut facts = Facts::new(route, request_id);
        facts.client_ip = client_ip;
        facts.ip_key = client_ip.map(|ip| self.policy.ip_prefixes.key_of(ip));
        facts.fingerprint = fingerprint;
        facts
    }

    /// The upstream answered a login with `status`: a failure takes a token
    /// from the `failed_logins` rules (the next login of an exhausted key
    /// is refused), a success makes the client known for the user. The
    /// findings are logged and counted; the answer itself goes to the
    /// client unchanged.
    pub fn login_answered(&self, check: &LoginCheck, status: u16, host: &Services<'_>) {
        let Some(login) = &self.policy.login else {
            return;
        };
        let mut facts = self.facts_after_headers(
            check.route,
            &check.request_id,
            check.client_ip,
            check.fingerprint,
        );
        facts.username = check.username;
        let ctx = self.ctx(host);
        match login.outcome(status) {
            LoginOutcome::Failed => {
                host.metrics
                    .increment(Counter::FailedLogin { route: check.route });
                let mut findings = Vec::new();
                self.count_limits(Phase::LoginFailed, &facts, &ctx, &mut findings);
                self.record(&facts, &findings, true, host);
            }
            LoginOutcome::Succeeded => {
                let user_rules = self.policy.rate_limits.rules.iter().any(|r| r.key.username);
                if user_rules {
                    if let Err(error) = account::remember_client(login, &facts, &ctx) {
                        log::warn!("palisade: cannot remember a login's client: {error:?}");
                    }
                }
            }
            LoginOutcome::Unknown => {}
        }
    }

    /// The strictest mode among the body checks: a body that cannot be read
    /// fails every check.
    fn body_mode(&self, check: &BodyCheck) -> Mode {
        let login_enforced = check.login
            && self
                .policy
                .login
                .as_ref()
                .is_some_and(|l| l.mode == Mode::Enforce);
        let enforced = check
            .digest
            .as_ref()
            .is_some_and(|(_, m)| *m == Mode::Enforce)
            || check
                .validation
                .as_ref()
                .is_some_and(|v| v.mode == Mode::Enforce)
            || check.refresh == Some(Mode::Enforce)
            || check
                .schema
                .as_ref()
                .is_some_and(|s| s.mode == Mode::Enforce)
            || login_enforced;
        if enforced {
            Mode::Enforce
        } else {
            Mode::Monitor
        }
    }

    /// Counts a request's findings and writes its one security event
    /// (none without findings). `flag`: findings from an upstream's answer,
    /// not the request's own verdict.
    fn record(&self, facts: &Facts<'_>, findings: &[Finding], flag: bool, host: &Services<'_>) {
        if findings.is_empty() {
            return;
        }
        for finding in findings {
            host.metrics.increment(Counter::Finding {
                stage: finding.stage,
                reason: finding.reason,
                mode: finding.mode,
                route: facts.route,
            });
        }
        let action = match findings.iter().find(|f| f.enforced()) {
            _ if flag => "flag",
            Some(f) if f.reason == Reason::BotChallenge => "challenge",
            Some(_) => "deny",
            None => "monitor",
        };
        let now_ms = facts.now_ms(host.clock);
        event::request(facts, findings, action, now_ms, &self.policy, &self.seed);
    }

    /// The request headers could not be read from the host: nothing can be
    /// classified, so `failure_mode` decides alone.
    pub fn headers_unavailable(&self, host: &Services<'_>) -> Verdict {
        let finding =
            stage::host_failure(self.policy.failure_mode, "request headers", Stage::Classify);
        self.refuse_unrouted("", finding, host)
    }
}

/// A refusal that `counts: failures` rules could not count (shared data
/// failed, or every compare-and-swap lost) answers as that store failure
/// (moved to `front`, ahead of the refusal), not as the refusal: otherwise
/// each such request would be a free, uncounted guess.
fn answer_uncounted_as_store_failure(
    findings: &mut Vec<Finding>,
    counted_from: usize,
    front: usize,
) {
    let uncounted = findings
        .iter()
        .skip(counted_from)
        .position(|f| f.enforced() && f.reason == Reason::StoreUnavailable);
    if let Some(i) = uncounted {
        let finding = findings.remove(counted_from + i);
        findings.insert(front.min(findings.len()), finding);
    }
}

/// Whether verification refused the request for something the client
/// sent (or failed to send): such refusals count against the client.
fn refused_credentials(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.enforced() && f.reason.is_credential_failure())
}

#[cfg(test)]
mod tests {
    use super::*;

    mod anomaly;
    mod bot;
    mod contention;
    mod global;
    mod login;
    mod mtls;
    mod openapi;
    mod reserve;
    mod transport;
    mod travel;
    mod validation;
    use crate::core::metrics::MemoryMetrics;
    use crate::core::request::{encode_map, encode_raw_map};

    /// A header pair as HTTP/2 may hand it over: bytes, not text.
    type RawPair<'a> = (&'a [u8], &'a [u8]);
    use crate::stages::auth::jwks;
    use crate::stages::integrity::signature;
    use crate::state::host::{Clock, StoreError};
    use crate::state::host::{ManualClock, MemoryStore};
    use crate::state::slots;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    /// `headers` (whose `signature-input` names `sig1`) with the matching
    /// HMAC-SHA256 `signature` appended.
    fn with_signature(mut headers: Vec<(String, String)>, secret: &[u8]) -> Vec<(String, String)> {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let bytes = encode_map(&pairs);
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        let base =
            signature::signature_base(&map, "sig1").unwrap_or_else(|e| unreachable!("{e:?}"));
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap_or_else(|e| unreachable!("{e}"));
        mac.update(&base);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        headers.push(("signature".into(), format!("sig1=:{sig}:")));
        headers
    }

    struct Fixture {
        engine: Engine,
        store: MemoryStore,
        clock: ManualClock,
        metrics: MemoryMetrics,
    }

    impl Fixture {
        fn new(json: &str) -> Fixture {
            Fixture::on_host(json, HostKind::Envoy)
        }

        fn on_host(json: &str, host: HostKind) -> Fixture {
            let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
            let store = MemoryStore::new();
            slots::ensure_pages(&store, policy.shared_keys())
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            Fixture {
                engine: Engine::new(policy, [7; 16], host).unwrap_or_else(|e| unreachable!("{e}")),
                store,
                clock: ManualClock::at(T0),
                metrics: MemoryMetrics::default(),
            }
        }

        fn services(&self) -> Services<'_> {
            Services {
                store: &self.store,
                clock: &self.clock,
                metrics: &self.metrics,
            }
        }

        fn send(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> Verdict {
            let mut pairs = vec![(":method", method), (":path", path)];
            pairs.extend_from_slice(extra);
            self.send_headers(&pairs)
        }

        fn send_headers(&self, pairs: &[(&str, &str)]) -> Verdict {
            let bytes = encode_map(pairs);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let services = Services {
                store: &self.store,
                clock: &self.clock,
                metrics: &self.metrics,
            };
            self.engine.evaluate(
                &headers,
                &|| Some("192.0.2.10:40000".to_string()),
                &services,
            )
        }

        fn status(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
            match self.send(method, path, extra) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            }
        }

        fn route(&self, name: &str) -> RouteId {
            self.engine
                .policy
                .routes
                .id_of(name)
                .unwrap_or(RouteId::MAX)
        }
    }

    fn header<'a>(response: &'a LocalResponse, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    const LOGIN: &str = r#"{
        "routes": [{"name": "login", "prefix": "/login", "methods": ["POST"]}, {"name": "public", "prefix": "/public"}],
        "rate_limits": {"rules": [
            {"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 5, "refill": {"tokens": 5, "every": "1m"}},
            {"name": "public-ip", "key": ["ip"], "routes": ["public"], "capacity": 100, "refill": {"tokens": 100, "every": "1s"}}
        ]}
    }"#;

    /// Deterministic pseudo-random keys (splitmix64) for the sizing tests.
    struct Keys(u64);

    impl Keys {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(slots::GOLDEN);
            slots::spread(self.0)
        }
    }

    /// Table size and load levels (percent of the slots) of the sizing tests.
    const SIZING_SLOTS: u32 = 4096;
    const LOADS: [u32; 4] = [25, 50, 75, 90];

    /// Sends the first request of `SIZING_SLOTS` × 90 % distinct keys, one
    /// each; `refused(i)` sends key `i`'s. Returns how many were refused by
    /// the time the table held each of `LOADS`, printed for the README
    /// (`cargo test sizing -- --nocapture`).
    fn refusals(table: &str, mut refused: impl FnMut(u32) -> bool) -> [u32; 4] {
        let mut counts = [0; 4];
        let mut total = 0;
        for i in 0..SIZING_SLOTS * LOADS[3] / 100 {
            total += u32::from(refused(i));
            for (count, load) in counts.iter_mut().zip(LOADS) {
                if i < SIZING_SLOTS * load / 100 {
                    *count = total;
                }
            }
        }
        println!(
            "sizing: {table}: first requests refused at {LOADS:?} % of {SIZING_SLOTS} slots: {counts:?}"
        );
        counts
    }

    #[test]
    fn sizing_rate_limits_place_new_clients_until_the_table_is_well_filled() {
        let f = Fixture::new(&format!(
            r#"{{"client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
                "rate_limits": {{"slots": {SIZING_SLOTS}, "rules": [{{"name": "per-ip", "key": ["ip"], "capacity": 10, "refill": {{"tokens": 10, "every": "1m"}}}}]}}}}"#
        ));
        // Drain the overflow bucket: every key without a slot shows as refused.
        let key = slots::overflow_key(0);
        let drained = slots::update(&f.store, &f.metrics, &key, |page| {
            page.records[0].state = u64::MAX;
            (true, ())
        });
        assert_eq!(drained, Ok(()));
        let mut keys = Keys(11);
        let counts = refusals("rate_limits", |_| {
            let ip = std::net::Ipv4Addr::from(keys.next() as u32).to_string();
            match f.send("GET", "/", &[("x-forwarded-for", ip.as_str())]) {
                Verdict::Allow { .. } => false,
                Verdict::Respond(r) => {
                    assert!(r.body.contains("rl.overflow"), "{}", r.body);
                    true
                }
            }
        });
        assert_eq!(counts[..3], [0, 0, 0]);
    }

    #[test]
    fn unreadable_pseudo_headers_are_refused_not_classified_as_default() {
        // Without the fix, `/login?q=\xff` read as "" and skipped login-ip.
        let f = Fixture::new(LOGIN);
        let cases: [(&[RawPair<'_>], &str); 5] = [
            (
                &[(b":method", b"POST"), (b":path", b"/login?q=\xff")],
                "request.path",
            ),
            (
                &[(b":method", b"POST"), (b":path", b"/log\xc3in")],
                "request.path",
            ),
            (
                &[(b":method", b"P\xffST"), (b":path", b"/login")],
                "request.method",
            ),
            (&[(b":method", b"POST")], "request.path"),
            (
                &[
                    (b":method", b"POST"),
                    (b":path", b"/login"),
                    (b":authority", b"h\xff"),
                ],
                "request.authority",
            ),
        ];
        for (pairs, reason) in cases {
            let bytes = encode_raw_map(pairs);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let verdict = f.engine.evaluate(&headers, &|| None, &f.services());
            let Verdict::Respond(r) = verdict else {
                unreachable!("{reason}: allowed");
            };
            assert_eq!(r.status, 400, "{reason}");
            assert!(r.body.contains(reason), "{reason}: {}", r.body);
        }
        // Monitor mode does not let such a request through either.
        let monitor = Fixture::new(&LOGIN.replacen('{', r#"{"mode": "monitor","#, 1));
        let bytes = encode_raw_map(&[(b":method", b"POST"), (b":path", b"/login?\xff")]);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        assert!(matches!(
            monitor
                .engine
                .evaluate(&headers, &|| None, &monitor.services()),
            Verdict::Respond(LocalResponse { status: 400, .. })
        ));
        // Five valid logins still pass and the sixth is throttled: the
        // refused requests took no token and skipped nothing.
        let logins: Vec<u16> = (0..6)
            .map(|_| f.status("POST", "/login?q=%FF", &[]))
            .collect();
        assert_eq!(logins, [200, 200, 200, 200, 200, 429]);
    }

    #[test]
    fn endpoint_rules_differ_per_route() {
        let f = Fixture::new(LOGIN);
        let logins: Vec<u16> = (0..6).map(|_| f.status("POST", "/login", &[])).collect();
        assert_eq!(logins, [200, 200, 200, 200, 200, 429]);
        assert!((0..50).all(|_| f.status("GET", "/public/items", &[]) == 200));
        assert_eq!(
            f.status("GET", "/login", &[]),
            200,
            "GET is not the login route class"
        );
        f.clock.advance(12_000);
        assert_eq!(
            f.status("POST", "/login", &[]),
            200,
            "one token back after 12 s"
        );
        assert_eq!(f.status("POST", "/login", &[]), 429);
    }

    #[test]
    fn throttled_response_carries_headers_and_no_secrets() {
        let f = Fixture::new(LOGIN);
        let secret = [
            ("authorization", "Bearer secret-token-123"),
            ("x-request-id", "req-42"),
            ("cookie", "sid=hunter2"),
        ];
        for _ in 0..5 {
            f.send("POST", "/login", &secret);
        }
        let Verdict::Respond(r) = f.send("POST", "/login", &secret) else {
            unreachable!("sixth login should be throttled");
        };
        assert_eq!(r.status, 429);
        assert_eq!(header(&r, "retry-after"), Some("12"));
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"login-ip\";q=5;w=60")
        );
        assert_eq!(header(&r, "ratelimit"), Some("\"login-ip\";r=0;t=12"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(body["reason"], "rl.exhausted");
        assert_eq!(body["error"], "too_many_requests");
        assert_eq!(body["request_id"], "req-42");
        let everything = format!("{r:?}");
        assert!(!everything.contains("secret-token") && !everything.contains("hunter2"));
        let route = f.route("login");
        assert_eq!(
            f.metrics.get(&Counter::Request {
                decision: Decision::Throttle,
                route
            }),
            1
        );
    }

    #[test]
    fn quota_headers_on_allowed_responses_only_when_asked() {
        let f = Fixture::new(LOGIN);
        assert!(matches!(
            f.send("POST", "/login", &[]),
            Verdict::Allow { response_headers, body: None, .. } if response_headers.is_empty()
        ));
        let with = Fixture::new(&LOGIN.replace(
            "\"rate_limits\": {",
            "\"rate_limits\": {\"quota_headers\": true,",
        ));
        let Verdict::Allow {
            response_headers, ..
        } = with.send("POST", "/login", &[])
        else {
            unreachable!("first login is allowed");
        };
        assert_eq!(
            response_headers,
            vec![
                ("ratelimit-policy", "\"login-ip\";q=5;w=60".to_string()),
                ("ratelimit", "\"login-ip\";r=4;t=12".to_string())
            ]
        );
    }

    #[test]
    fn monitor_mode_counts_but_lets_through() {
        let f = Fixture::new(&LOGIN.replacen('{', "{\"mode\": \"monitor\",", 1));
        assert!((0..10).all(|_| f.status("POST", "/login", &[]) == 200));
        let route = f.route("login");
        let flagged = Counter::Finding {
            stage: Stage::RateLimit,
            reason: Reason::RateLimitExhausted,
            mode: Mode::Monitor,
            route,
        };
        assert_eq!(f.metrics.get(&flagged), 5);
    }

    #[test]
    fn bans_escalate_after_repeated_violations_and_decay() {
        let f = Fixture::new(
            r#"{"rate_limits": {"rules": [{"name": "r", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1, "every": "1h"}, "ban": true}]},
                "bans": {"after": 2, "base": "2s", "factor": 2.0, "max": "8s", "decay": "3s"}}"#,
        );
        let retry_after = |f: &Fixture| match f.send("GET", "/", &[]) {
            Verdict::Respond(r) => (r.status, header(&r, "retry-after").map(str::to_string)),
            Verdict::Allow { .. } => (200, None),
        };
        assert_eq!(f.status("GET", "/", &[]), 200);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(
            f.status("GET", "/", &[]),
            429,
            "second strike issues the ban"
        );
        assert_eq!(retry_after(&f), (403, Some("2".into())));
        f.clock.advance(2_000);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(f.status("GET", "/", &[]), 429);
        assert_eq!(
            retry_after(&f),
            (403, Some("4".into())),
            "level 2: base × factor"
        );
        // Ban ends after 4 s; two decay periods of 3 s bring the level to 0.
        f.clock.advance(4_000 + 6_000);
        f.send("GET", "/", &[]);
        f.send("GET", "/", &[]);
        assert_eq!(
            retry_after(&f),
            (403, Some("2".into())),
            "decayed back to level 1"
        );
        assert_eq!(f.metrics.get(&Counter::BanIssued { rule: 0 }), 3);
    }

    #[test]
    fn invalid_forwarded_for_is_a_400_with_a_reason() {
        let f = Fixture::new(
            r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                "rate_limits": {"rules": [{"name": "r", "key": ["ip"], "capacity": 2, "refill": "none"}]}}"#,
        );
        let Verdict::Respond(r) = f.send("GET", "/", &[("x-forwarded-for", "nonsense")]) else {
            unreachable!("garbage XFF must be refused");
        };
        assert_eq!(r.status, 400);
        assert!(r.body.contains("client_ip.invalid"));
        // Clients behind the trusted proxy are told apart by the trusted entry only.
        let xff = |left: &'static str| [("x-forwarded-for", left)];
        assert_eq!(f.status("GET", "/", &xff("1.1.1.1, 198.51.100.1")), 200);
        assert_eq!(f.status("GET", "/", &xff("2.2.2.2, 198.51.100.1")), 200);
        assert_eq!(f.status("GET", "/", &xff("3.3.3.3, 198.51.100.1")), 429);
        assert_eq!(f.status("GET", "/", &xff("198.51.100.2")), 200);
    }

    #[test]
    fn user_rules_apply_only_to_requests_with_a_user() {
        let f = Fixture::new(
            r#"{"user": {"header": "x-user-id"},
                "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "capacity": 1, "refill": "none"}]}}"#,
        );
        assert_eq!(f.status("GET", "/", &[("x-user-id", "alice")]), 200);
        assert_eq!(f.status("GET", "/", &[("x-user-id", "alice")]), 429);
        assert_eq!(f.status("GET", "/", &[("x-user-id", "bob")]), 200);
        assert_eq!(f.status("GET", "/", &[]), 200);
        assert_eq!(f.status("GET", "/", &[]), 200);
    }

    /// A store whose every call fails, as if the host refused shared data.
    struct BrokenStore;
    impl SharedStore for BrokenStore {
        fn get(&self, _: &str) -> Result<Option<crate::state::host::Versioned>, StoreError> {
            Err(StoreError::Host(10))
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Host(10))
        }
    }

    #[test]
    fn shared_data_failure_follows_failure_mode() {
        for (mode, expected) in [("deny", 503), ("allow", 200)] {
            let f = Fixture::new(&format!(
                r#"{{"failure_mode": "{mode}", "rate_limits": {{"rules": [{{"name": "r", "key": ["ip"], "capacity": 9, "refill": "none"}}]}}}}"#
            ));
            let bytes = encode_map(&[(":method", "GET"), (":path", "/")]);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let services = Services {
                store: &BrokenStore,
                clock: &f.clock,
                metrics: &f.metrics,
            };
            let status = match f.engine.evaluate(&headers, &|| None, &services) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            };
            assert_eq!(status, expected, "failure_mode {mode}");
        }
    }

    #[test]
    fn exact_limit_across_concurrent_workers() {
        let f = Arc::new(Fixture::new(
            r#"{"rate_limits": {"rules": [{"name": "burst", "key": ["ip"], "capacity": 50, "refill": "none"}]}}"#,
        ));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    // A request whose every compare-and-swap lost (503
                    // store.unavailable: a loaded test machine can
                    // deschedule a worker that long) is sent again: what
                    // is tested is that no update is lost.
                    let allowed = || loop {
                        match f.status("GET", "/", &[]) {
                            503 => continue,
                            status => break status == 200,
                        }
                    };
                    (0..50).filter(|_| allowed()).count()
                })
            })
            .collect();
        let allowed: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn a_flood_of_new_clients_is_bounded_and_frees_no_ban() {
        let f = Fixture::new(
            r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                "rate_limits": {"slots": 64, "rules": [{"name": "r", "key": ["ip"], "capacity": 3, "refill": {"tokens": 1, "every": "1h"}, "ban": true}]},
                "bans": {"after": 1, "base": "1h"}}"#,
        );
        let victim = [("x-forwarded-for", "203.0.113.7")];
        while f.status("GET", "/", &victim) != 403 {}
        let keys_before = f.store.key_count();
        let bytes_before = f.store.byte_size();
        let mut overflowed = 0;
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            if let Verdict::Respond(r) = f.send("GET", "/", &[("x-forwarded-for", ip.as_str())]) {
                overflowed += usize::from(r.body.contains("rl.overflow"));
            }
        }
        assert_eq!(f.store.key_count(), keys_before, "no key per client");
        assert_eq!(f.store.byte_size(), bytes_before, "fixed-size records");
        assert!(
            overflowed > 90_000,
            "unplaced clients are limited, not let through ({overflowed})"
        );
        assert_eq!(
            f.status("GET", "/", &victim),
            403,
            "the ban survived the flood"
        );
    }

    mod signed {
        use super::*;
        use crate::stages::integrity::digest::{content_digest, DigestAlg};
        use base64::Engine as _;

        const SECRET: &[u8] = b"a-demo-secret-of-at-least-32-bytes!!";
        const OTHER: &[u8] = b"another-secret-of-at-least-32-bytes!";

        fn config(policy_extra: &str) -> String {
            let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
            format!(
                r#"{{"routes": [{{"name": "pay", "prefix": "/pay"}}],
                    "signatures": {{
                        "keys": [{{"id": "client-a", "secret": {{"base64": "{}"}}}},
                                 {{"id": "client-b", "secret": {{"base64": "{}"}}}}],
                        "max_body_bytes": 64,
                        "policies": [{{"routes": ["pay"], "components": ["@method", "@path", "@query", "content-digest"],
                                       "require_digest": true {policy_extra}}}]}},
                    "rate_limits": {{"rules": [{{"name": "per-signer", "key": ["key_id"], "routes": ["pay"], "capacity": 3, "refill": "none"}}]}}}}"#,
                b64(SECRET),
                b64(OTHER)
            )
        }

        /// Headers of a request signed over method, path, query and content-digest.
        fn signed(
            path: &str,
            body: &[u8],
            key: (&str, &[u8]),
            params: &str,
        ) -> Vec<(String, String)> {
            let headers: Vec<(String, String)> = vec![
                (":method".into(), "POST".into()),
                (":path".into(), path.into()),
                (":authority".into(), "api.example".into()),
                (
                    "content-digest".into(),
                    content_digest(DigestAlg::Sha256, body),
                ),
                (
                    "signature-input".into(),
                    format!(
                        r#"sig1=("@method" "@path" "@query" "content-digest");keyid="{}"{params}"#,
                        key.0
                    ),
                ),
            ];
            with_signature(headers, key.1)
        }

        type Headers = Vec<(String, String)>;

        fn created(f: &Fixture) -> String {
            format!(";created={}", f.clock.now_ms() / 1000)
        }

        fn send(f: &Fixture, headers: &[(String, String)]) -> Verdict {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            f.send_headers(&pairs)
        }

        /// Status after headers and, when asked for, the body phase.
        fn outcome(f: &Fixture, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
            match send(f, headers) {
                Verdict::Respond(r) => (r.status, r.body),
                Verdict::Allow { body: None, .. } => (200, String::new()),
                Verdict::Allow {
                    body: Some(check), ..
                } => {
                    match f
                        .engine
                        .check_body(&check, Body::Complete(body), &f.services(), None)
                        .response()
                    {
                        None => (200, String::new()),
                        Some(r) => (r.status, r.body),
                    }
                }
            }
        }

        fn reason(outcome: &(u16, String)) -> String {
            let body: serde_json::Value = serde_json::from_str(&outcome.1).unwrap_or_default();
            body["reason"].as_str().unwrap_or("").to_string()
        }

        #[test]
        fn sizing_replay_remembers_every_nonce_until_the_table_is_well_filled() {
            let json = config("")
                .replace(
                    r#""max_body_bytes": 64,"#,
                    &format!(r#""max_body_bytes": 64, "replay_slots": {SIZING_SLOTS},"#),
                )
                .replace(r#""capacity": 3,"#, r#""capacity": 100000,"#);
            let f = Fixture::new(&json);
            let mut keys = Keys(12);
            let body = br#"{"amount": 5}"#;
            let counts = refusals("signatures.replay_slots", |_| {
                let nonce = format!("{:016x}{:016x}", keys.next(), keys.next());
                let params = format!("{};nonce=\"{nonce}\"", created(&f));
                let headers = signed("/pay", body, ("client-a", SECRET), &params);
                let (status, body) = outcome(&f, &headers, body);
                assert!(
                    status == 200 || body.contains("sig.replay_capacity"),
                    "{status} {body}"
                );
                status != 200
            });
            assert_eq!(counts[..3], [0, 0, 0]);
        }

        #[test]
        fn a_signed_request_with_its_body_passes_once() {
            let f = Fixture::new(&config(""));
            let body = br#"{"amount": 5}"#;
            let headers = signed(
                "/pay?x=1",
                body,
                ("client-a", SECRET),
                &format!("{};nonce=\"n1\"", created(&f)),
            );
            assert_eq!(outcome(&f, &headers, body).0, 200);
            let replay = outcome(&f, &headers, body);
            assert_eq!((replay.0, reason(&replay)), (401, "sig.replay".into()));
        }

        #[test]
        fn on_ngx_wasm_authority_is_the_host_header() {
            // ngx_wasm_module's `:authority` is nginx's own name and port.
            let json = config("").replace(
                r#""components": ["@method", "@path", "@query", "content-digest"]"#,
                r#""components": ["@method", "@authority", "@path", "@query", "content-digest"]"#,
            );
            let body = br#"{"amount": 5}"#;
            for (host, expected) in [(HostKind::NgxWasm, 200), (HostKind::Envoy, 401)] {
                let f = Fixture::on_host(&json, host);
                let mut headers: Headers = vec![
                    (":method".into(), "POST".into()),
                    (":path".into(), "/pay".into()),
                    (":authority".into(), "api.example".into()),
                    (
                        "content-digest".into(),
                        content_digest(DigestAlg::Sha256, body),
                    ),
                    (
                        "signature-input".into(),
                        format!(
                            r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");keyid="client-a"{}"#,
                            created(&f)
                        ),
                    ),
                ];
                headers = with_signature(headers, SECRET);
                headers[2].1 = "localhost:8080".into();
                headers.push(("Host".into(), "api.example".into()));
                assert_eq!(outcome(&f, &headers, body).0, expected, "{host:?}");
            }
        }

        #[test]
        fn a_body_the_host_cannot_frame_is_refused_not_passed_unchecked() {
            let body = br#"{"amount": 5}"#;
            let monitor = r#""signatures": {"mode": "monitor","#;
            for (section, expected) in [(r#""signatures": {"#, Some(411)), (monitor, None)] {
                let json = config("").replace(r#""signatures": {"#, section);
                let f = Fixture::on_host(&json, HostKind::NgxWasm);
                let headers = signed("/pay", body, ("client-a", SECRET), &created(&f));
                let Verdict::Allow {
                    body: Some(check), ..
                } = send(&f, &headers)
                else {
                    unreachable!("a signed request waits for its body");
                };
                let got = f
                    .engine
                    .check_body(&check, Body::Unframed, &f.services(), None)
                    .response();
                assert_eq!(got.as_ref().map(|r| r.status), expected, "{section}");
                if let Some(r) = got {
                    assert_eq!(reason(&(r.status, r.body)), "body.length_required");
                }
            }
        }

        #[test]
        fn without_nonce_the_same_signature_is_accepted_once() {
            let f = Fixture::new(&config(""));
            let headers = signed("/pay", b"", ("client-a", SECRET), &created(&f));
            assert_eq!(outcome(&f, &headers, b"").0, 200);
            assert_eq!(reason(&outcome(&f, &headers, b"")), "sig.replay");
            // Disabled replay protection accepts it again.
            let open = Fixture::new(&config(r#", "replay": false"#));
            let again = signed("/pay", b"", ("client-a", SECRET), &created(&open));
            assert_eq!(outcome(&open, &again, b"").0, 200);
            assert_eq!(outcome(&open, &again, b"").0, 200);
        }

        #[test]
        fn tampering_and_bad_signatures_are_refused_with_their_reason() {
            let f = Fixture::new(&config(""));
            let c = created(&f);
            let body = b"amount=5";
            let case = |mutate: &dyn Fn(&mut Headers),
                        params: &str,
                        key: (&str, &[u8]),
                        sent_body: &[u8]| {
                let mut headers = signed("/pay?x=1", body, key, params);
                mutate(&mut headers);
                reason(&outcome(&f, &headers, sent_body))
            };
            let set = |name: &'static str, value: &'static str| {
                move |h: &mut Vec<(String, String)>| {
                    h.retain(|(n, _)| n != name);
                    h.push((name.to_string(), value.to_string()));
                }
            };
            let none = |_: &mut Vec<(String, String)>| {};
            assert_eq!(
                case(&set(":path", "/pay?x=2"), &c, ("client-a", SECRET), body),
                "sig.invalid"
            );
            assert_eq!(
                case(&set(":method", "PUT"), &c, ("client-a", SECRET), body),
                "sig.invalid"
            );
            assert_eq!(
                case(&none, &c, ("client-a", SECRET), b"amount=6"),
                "digest.mismatch"
            );
            assert_eq!(case(&none, &c, ("client-a", OTHER), body), "sig.invalid");
            assert_eq!(
                case(&none, &c, ("client-z", SECRET), body),
                "sig.unknown_key"
            );
            let old = format!(";created={}", f.clock.now_ms() / 1000 - 600);
            assert_eq!(case(&none, &old, ("client-a", SECRET), body), "sig.expired");
            let future = format!(";created={}", f.clock.now_ms() / 1000 + 600);
            assert_eq!(
                case(&none, &future, ("client-a", SECRET), body),
                "sig.future"
            );
            let unsigned =
                |h: &mut Vec<(String, String)>| h.retain(|(n, _)| !n.starts_with("signature"));
            assert_eq!(
                case(&unsigned, &c, ("client-a", SECRET), body),
                "sig.missing"
            );
            let no_digest =
                |h: &mut Vec<(String, String)>| h.retain(|(n, _)| n != "content-digest");
            assert_eq!(
                case(&no_digest, &c, ("client-a", SECRET), body),
                "sig.components"
            );
            // Routes without a policy are not checked.
            let mut elsewhere = signed("/other", body, ("client-z", SECRET), &c);
            elsewhere.retain(|(n, _)| !n.starts_with("signature"));
            assert_eq!(outcome(&f, &elsewhere, body).0, 200);
        }

        #[test]
        fn bodies_over_the_limit_are_413_before_and_after_buffering() {
            let f = Fixture::new(&config(""));
            let big = [b'x'; 65];
            let buffered = signed("/pay", &big, ("client-a", SECRET), &created(&f));
            assert_eq!(outcome(&f, &buffered, &big).0, 413);
            let mut headers = signed(
                "/pay",
                &big,
                ("client-a", SECRET),
                &format!("{};nonce=\"x\"", created(&f)),
            );
            headers.push(("content-length".into(), "65".into()));
            let Verdict::Respond(r) = send(&f, &headers) else {
                unreachable!("declared length over the limit is refused at once");
            };
            assert_eq!(r.status, 413);
        }

        #[test]
        fn both_rotated_keys_verify_and_key_id_is_a_rate_limit_key() {
            let f = Fixture::new(&config(""));
            let statuses: Vec<u16> = (0..4)
                .map(|n| {
                    let params = format!("{};nonce=\"a{n}\"", created(&f));
                    outcome(&f, &signed("/pay", b"", ("client-a", SECRET), &params), b"").0
                })
                .collect();
            assert_eq!(statuses, [200, 200, 200, 429], "three per signer");
            let params = format!("{};nonce=\"b0\"", created(&f));
            assert_eq!(
                outcome(&f, &signed("/pay", b"", ("client-b", OTHER), &params), b"").0,
                200
            );
        }

        #[test]
        fn monitor_mode_lets_bad_signatures_through_but_counts_them() {
            let f = Fixture::new(&config("").replace(
                "\"signatures\": {",
                "\"signatures\": {\"mode\": \"monitor\",",
            ));
            let mut headers = signed("/pay", b"", ("client-a", SECRET), &created(&f));
            headers.retain(|(n, _)| n != "signature");
            assert_eq!(outcome(&f, &headers, b"").0, 200);
            let counted = Counter::Finding {
                stage: Stage::Signature,
                reason: Reason::Signature(signature::SigError::Missing),
                mode: Mode::Monitor,
                route: f.route("pay"),
            };
            assert_eq!(f.metrics.get(&counted), 1);
        }
    }

    /// Authentication and authorization through the whole pipeline, with
    /// HS256 tokens minted here (the `hmac` crate signs) and verified by the
    /// `jwt` module.
    use credentials::config as credentials_config;

    mod credentials {
        use super::*;
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        use sha2::{Digest, Sha256};

        const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
        const B64: base64::engine::GeneralPurpose =
            base64::engine::general_purpose::URL_SAFE_NO_PAD;

        pub(super) fn mint(claims: serde_json::Value) -> String {
            let header = B64.encode(br#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#);
            let payload = B64.encode(claims.to_string());
            let input = format!("{header}.{payload}");
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap_or_else(|_| unreachable!());
            mac.update(input.as_bytes());
            format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
        }

        pub(super) fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
            let now = T0 / 1000;
            let mut c = serde_json::json!({
                "iss": "https://idp.example", "aud": "api", "sub": sub,
                "iat": now, "exp": now + 300
            });
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            c
        }

        pub(super) fn config(extra: &str) -> String {
            let k = B64.encode(KEY);
            let api_hash = hex(&Sha256::digest(b"partner-secret"));
            format!(
                r#"{{
                "routes": [{{"name": "admin", "prefix": "/admin"}}, {{"name": "api", "prefix": "/api"}},
                           {{"name": "token", "path": "/oauth/token", "methods": ["POST"]}}],
                "jwt": {{"providers": [{{"name": "idp", "issuer": "https://idp.example", "audiences": ["api"],
                         "algorithms": ["HS256"], "max_lifetime": "1h",
                         "jwks": {{"inline": {{"keys": [{{"kty": "oct", "kid": "k1", "k": "{k}"}}]}}}},
                         "forward_claims": [{{"claim": "tenant", "header": "x-tenant"}}]}}],
                         "refresh_tokens": {{"routes": ["token"], "slots": 64}}}},
                "api_keys": {{"header": "x-api-key", "keys": [{{"id": "partner", "sha256": "{api_hash}", "roles": ["reports"]}}]}},
                "authorization": {{"policies": [
                    {{"routes": ["admin"], "roles": ["admin"], "amr": ["mfa"]}},
                    {{"routes": ["api"], "credentials": ["jwt", "api_key"]}}
                ]}}
                {extra}
            }}"#
            )
        }

        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }

        fn bearer(token: &str) -> String {
            format!("Bearer {token}")
        }

        fn respond(v: Verdict) -> LocalResponse {
            match v {
                Verdict::Respond(r) => r,
                Verdict::Allow { .. } => unreachable!("expected a refusal"),
            }
        }

        fn reason(r: &LocalResponse) -> String {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            body["reason"].as_str().unwrap_or("").to_string()
        }

        #[test]
        fn a_token_used_from_too_many_networks_or_programs_is_refused() {
            let f = Fixture::new(&config(
                r#", "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                "rate_limits": {"rules": [
                    {"name": "token-nets", "key": ["token"], "counts": "networks", "capacity": 3, "refill": {"tokens": 3, "every": "10m"}},
                    {"name": "token-fps", "key": ["token"], "counts": "fingerprints", "capacity": 2, "refill": {"tokens": 2, "every": "10m"}}
                ]}"#,
            ));
            let token = mint(claims("alice", serde_json::json!({})));
            let auth = bearer(&token);
            let from = |ip: &str, ua: &str| {
                f.send(
                    "GET",
                    "/api/x",
                    &[
                        ("authorization", &auth),
                        ("x-forwarded-for", ip),
                        ("user-agent", ua),
                    ],
                )
            };
            for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
                assert!(matches!(from(ip, "app/1"), Verdict::Allow { .. }), "{ip}");
            }
            // Back on a network it used: no new network.
            assert!(matches!(
                from("198.51.100.1", "app/1"),
                Verdict::Allow { .. }
            ));
            let r = respond(from("198.51.100.4", "app/1"));
            assert_eq!((r.status, reason(&r).as_str()), (403, "token.shared"));
            // A second program is fine, a third is not.
            assert!(matches!(
                from("198.51.100.2", "app/2"),
                Verdict::Allow { .. }
            ));
            let r = respond(from("198.51.100.2", "curl/8"));
            assert_eq!(reason(&r), "token.shared");
            // Another user's token is its own.
            let other = bearer(&mint(claims("bob", serde_json::json!({}))));
            let v = f.send(
                "GET",
                "/api/x",
                &[
                    ("authorization", &other),
                    ("x-forwarded-for", "198.51.100.4"),
                ],
            );
            assert!(matches!(v, Verdict::Allow { .. }));
            assert!(!f.store.holds(token.as_bytes()));
            assert!(!f.store.holds(b"alice"));
        }

        #[test]
        fn token_rules_need_tokens_and_a_token_key() {
            let no_jwt = r#"{"rate_limits": {"rules": [{"name": "t", "key": ["token"], "capacity": 3, "refill": "none"}]}}"#;
            let e = Policy::from_json(no_jwt.as_bytes()).err().map(|e| e.path);
            assert_eq!(e.as_deref(), Some("rate_limits.rules[0].key"));
            let ip_networks = config(
                r#", "rate_limits": {"rules": [{"name": "t", "key": ["ip"], "counts": "networks", "capacity": 3, "refill": "none"}]}"#,
            );
            let e = Policy::from_json(ip_networks.as_bytes()).err();
            assert!(e.is_some_and(
                |e| e.path == "rate_limits.rules[0].key" && e.message.contains("token")
            ));
        }

        #[test]
        fn a_protected_route_needs_a_valid_token_and_says_why_not() {
            let f = Fixture::new(&config(""));
            let r = respond(f.send("GET", "/api/items", &[]));
            assert_eq!((r.status, reason(&r).as_str()), (401, "auth.missing"));
            assert_eq!(
                header(&r, "www-authenticate"),
                Some("Bearer error=\"invalid_token\", error_description=\"auth.missing\"")
            );
            let expired = mint(claims("alice", serde_json::json!({"exp": T0 / 1000 - 60})));
            let r = respond(f.send("GET", "/api/items", &[("authorization", &bearer(&expired))]));
            assert_eq!((r.status, reason(&r).as_str()), (401, "jwt.expired"));
            let mut tampered = mint(claims("alice", serde_json::json!({})));
            tampered.insert(tampered.len() - 3, 'A');
            let r = respond(f.send(
                "GET",
                "/api/items",
                &[("authorization", &bearer(&tampered))],
            ));
            assert_eq!(r.status, 401);
            let long_lived = mint(claims(
                "alice",
                serde_json::json!({"exp": T0 / 1000 + 7200}),
            ));
            let r = respond(f.send(
                "GET",
                "/api/items",
                &[("authorization", &bearer(&long_lived))],
            ));
            assert_eq!(reason(&r), "jwt.lifetime");
            assert!(!r.body.contains(&expired) && !format!("{r:?}").contains(&long_lived));
        }

        #[test]
        fn a_valid_token_sets_the_identity_and_strips_forged_copies() {
            let f = Fixture::new(&config(""));
            let token = mint(claims("alice", serde_json::json!({"tenant": "acme"})));
            let auth = bearer(&token);
            let Verdict::Allow { upstream, .. } = f.send(
                "GET",
                "/api/items",
                &[
                    ("authorization", &auth),
                    ("x-palisade-user", "mallory"),
                    ("x-tenant", "evil"),
                ],
            ) else {
                unreachable!("a valid token is allowed");
            };
            assert_eq!(upstream.remove, ["x-palisade-user", "x-tenant"]);
            let identity = [
                ("x-palisade-user".to_string(), "alice".to_string()),
                ("x-tenant".to_string(), "acme".to_string()),
            ];
            assert_eq!(upstream.set, identity);
            // The token is cached now, with the identity derived from it.
            let Verdict::Allow { upstream, .. } =
                f.send("GET", "/api/items", &[("authorization", &auth)])
            else {
                unreachable!("a cached valid token is allowed");
            };
            assert_eq!(upstream.set, identity);
            // Forged identity headers are removed on unprotected routes too.
            let Verdict::Allow { upstream, .. } =
                f.send("GET", "/public", &[("x-palisade-user", "mallory")])
            else {
                unreachable!("public route");
            };
            assert_eq!(upstream.remove, ["x-palisade-user"]);
            assert!(upstream.set.is_empty());
        }

        #[test]
        fn on_ngx_wasm_a_forged_identity_header_is_refused_not_forwarded() {
            let f = Fixture::on_host(&config(""), HostKind::NgxWasm);
            let token = mint(claims("alice", serde_json::json!({"tenant": "acme"})));
            let auth = bearer(&token);
            for (path, forged) in [
                ("/api/items", ("X-Palisade-User", "mallory")),
                ("/api/items", ("x-tenant", "evil")),
                ("/public", ("x-palisade-user", "mallory")),
                ("/public", ("X-Palisade-Bot-Score", "0")),
            ] {
                let r = respond(f.send("GET", path, &[("authorization", &auth), forged]));
                assert_eq!(
                    (r.status, reason(&r)),
                    (400, "request.identity_header".to_string()),
                    "{path} {forged:?}"
                );
            }
            // Without forged copies: the identity is set, nothing to remove.
            let Verdict::Allow { upstream, .. } =
                f.send("GET", "/api/items", &[("authorization", &auth)])
            else {
                unreachable!("a valid token is allowed");
            };
            assert!(upstream.remove.is_empty());
            assert_eq!(upstream.set[0], ("x-palisade-user".into(), "alice".into()));
            // A challenge solution is not an identity.
            assert!(matches!(
                f.send("GET", "/public", &[("x-palisade-pow", "1:2")]),
                Verdict::Allow { .. }
            ));
        }

        #[test]
        fn roles_and_mfa_are_required_where_configured() {
            let f = Fixture::new(&config(""));
            let user = mint(claims(
                "bob",
                serde_json::json!({"roles": ["user"], "amr": ["mfa"]}),
            ));
            let r = respond(f.send("GET", "/admin", &[("authorization", &bearer(&user))]));
            assert_eq!((r.status, reason(&r).as_str()), (403, "authz.role"));
            assert_eq!(
                header(&r, "www-authenticate"),
                Some("Bearer error=\"insufficient_scope\", error_description=\"authz.role\"")
            );
            // Cached with its roles: judged again per route, the same way.
            let r = respond(f.send("GET", "/admin", &[("authorization", &bearer(&user))]));
            assert_eq!((r.status, reason(&r).as_str()), (403, "authz.role"));
            assert_eq!(
                f.status("GET", "/api/items", &[("authorization", &bearer(&user))]),
                200
            );
            let no_mfa = mint(claims(
                "root",
                serde_json::json!({"roles": ["admin"], "amr": ["pwd"]}),
            ));
            let r = respond(f.send("GET", "/admin", &[("authorization", &bearer(&no_mfa))]));
            assert_eq!(reason(&r), "authz.mfa");
            let admin = mint(claims(
                "root",
                serde_json::json!({"roles": ["admin"], "amr": ["pwd", "mfa"]}),
            ));
            assert_eq!(
                f.status("GET", "/admin", &[("authorization", &bearer(&admin))]),
                200
            );
            // API keys are not accepted where only tokens are.
            let r = respond(f.send("GET", "/admin", &[("x-api-key", "partner-secret")]));
            assert_eq!(reason(&r), "auth.missing");
        }

        #[test]
        fn a_token_cannot_pass_for_an_api_key() {
            let f = Fixture::new(&config(""));
            let forged = mint(claims("apikey:partner", serde_json::json!({})));
            // Refused when verified, and again once cached.
            for _ in 0..2 {
                let r = respond(f.send("GET", "/api/x", &[("authorization", &bearer(&forged))]));
                assert_eq!((r.status, reason(&r).as_str()), (401, "jwt.claims"));
            }
        }

        #[test]
        fn api_keys_authenticate_by_hash() {
            let f = Fixture::new(&config(""));
            let Verdict::Allow { upstream, .. } =
                f.send("GET", "/api/x", &[("x-api-key", "partner-secret")])
            else {
                unreachable!("a valid key is allowed");
            };
            assert_eq!(
                upstream.set,
                [("x-palisade-user".to_string(), "apikey:partner".to_string())]
            );
            let r = respond(f.send("GET", "/api/x", &[("x-api-key", "partner-secreT")]));
            assert_eq!((r.status, reason(&r).as_str()), (401, "apikey.invalid"));
        }

        /// Two credential lines: palisade would check one and the upstream
        /// may read the other, so the request is refused whatever the order.
        #[test]
        fn a_credential_header_sent_twice_is_refused() {
            let f = Fixture::new(&config(""));
            let (good, bad) = (("x-api-key", "partner-secret"), ("x-api-key", "wrong"));
            for pair in [[good, bad], [bad, good], [good, good]] {
                let r = respond(f.send("GET", "/api/x", &pair));
                assert_eq!((r.status, reason(&r).as_str()), (401, "apikey.invalid"));
            }
            let token = bearer(&mint(claims("alice", serde_json::json!({}))));
            let twice = [
                ("authorization", token.as_str()),
                ("authorization", token.as_str()),
            ];
            let r = respond(f.send("GET", "/api/x", &twice));
            assert_eq!((r.status, reason(&r).as_str()), (401, "jwt.malformed"));
            assert!(matches!(
                f.send("GET", "/api/x", &twice[..1]),
                Verdict::Allow { .. }
            ));
        }

        #[test]
        fn the_verified_subject_is_the_user_rate_limit_key() {
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "routes": ["api"], "capacity": 2, "refill": "none"}]}"#,
            ));
            let alice = bearer(&mint(claims("alice", serde_json::json!({}))));
            let alice_again = bearer(&mint(claims("alice", serde_json::json!({"jti": "2"}))));
            let bob = bearer(&mint(claims("bob", serde_json::json!({}))));
            let statuses: Vec<u16> = [&alice, &alice_again, &alice]
                .iter()
                .map(|t| f.status("GET", "/api/x", &[("authorization", t.as_str())]))
                .collect();
            assert_eq!(
                statuses,
                [200, 200, 429],
                "two tokens, one subject, one bucket"
            );
            assert_eq!(f.status("GET", "/api/x", &[("authorization", &bob)]), 200);
        }

        /// A `refresh_token` grant on the token route: its refusal, if any.
        fn grant(f: &Fixture, token: &str) -> Option<LocalResponse> {
            let body = format!("grant_type=refresh_token&refresh_token={token}&client_id=web");
            let Verdict::Allow {
                body: Some(check), ..
            } = f.send(
                "POST",
                "/oauth/token",
                &[("content-type", "application/x-www-form-urlencoded")],
            )
            else {
                unreachable!("the token route holds the body");
            };
            f.engine
                .check_body(&check, Body::Complete(body.as_bytes()), &f.services(), None)
                .response()
        }

        #[test]
        fn a_refresh_token_is_accepted_once() {
            let f = Fixture::new(&config(""));
            let grant = |token: &str| grant(&f, token);
            assert_eq!(grant("rt-1"), None);
            let r = grant("rt-1").unwrap_or_else(|| unreachable!("reuse is refused"));
            assert_eq!(
                (r.status, reason(&r).as_str()),
                (400, "oauth.refresh_reuse")
            );
            assert!(r.body.contains("\"invalid_grant\"") && !r.body.contains("rt-1"));
            assert_eq!(grant("rt-2"), None);
            f.clock.advance(31 * 86_400_000);
            assert_eq!(grant("rt-1"), None, "forgotten after `remember`");
        }

        #[test]
        fn tokens_without_a_subject_share_no_user_key() {
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "routes": ["api"], "capacity": 1, "refill": "none"}]}"#,
            ));
            let without = |extra: serde_json::Value| {
                let mut c = claims("", extra);
                if let Some(c) = c.as_object_mut() {
                    c.remove("sub");
                }
                bearer(&mint(c))
            };
            let a = without(serde_json::json!({"jti": "a"}));
            let b = without(serde_json::json!({"jti": "b"}));
            let empty = bearer(&mint(claims("", serde_json::json!({"jti": "c"}))));
            for token in [&a, &b, &empty] {
                let Verdict::Allow { upstream, .. } =
                    f.send("GET", "/api/x", &[("authorization", token)])
                else {
                    unreachable!("each token has a bucket of its own");
                };
                assert!(upstream.set.is_empty(), "no user to forward");
            }
            assert_eq!(f.status("GET", "/api/x", &[("authorization", &a)]), 429);
            let numeric = bearer(&mint(claims("", serde_json::json!({"sub": 42}))));
            let r = respond(f.send("GET", "/api/x", &[("authorization", &numeric)]));
            assert_eq!((r.status, reason(&r).as_str()), (401, "jwt.claims"));
        }

        /// A token request through both phases: `None` when it may go on.
        fn token_request(
            f: &Fixture,
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> Option<LocalResponse> {
            let Verdict::Allow {
                body: Some(check), ..
            } = f.send("POST", path, headers)
            else {
                unreachable!("the token route holds the body of {path}");
            };
            f.engine
                .check_body(&check, Body::Complete(body.as_bytes()), &f.services(), None)
                .response()
        }

        const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
        const JSON: (&str, &str) = ("content-type", "application/json");

        fn refused(r: Option<LocalResponse>) -> (u16, String, String) {
            let r = r.unwrap_or_else(|| unreachable!("expected a refusal"));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            (
                r.status,
                reason(&r),
                body["error"].as_str().unwrap_or("").to_string(),
            )
        }

        #[test]
        fn a_repeated_token_request_parameter_is_refused() {
            let f = Fixture::new(&config(""));
            let used = "grant_type=refresh_token&refresh_token=rt-used";
            assert_eq!(token_request(&f, "/oauth/token", &[FORM], used), None);
            let repeated = (
                400,
                "oauth.repeated_parameter".to_string(),
                "invalid_request".to_string(),
            );
            // A server reading the first value would accept the replay.
            for body in [
                "grant_type=refresh_token&refresh_token=rt-used&refresh_token=rt-fresh-1",
                "grant_type=refresh_token&refresh_token=rt-fresh-2&refresh_token=rt-used",
                "grant_type=refresh_token&grant_type=authorization_code&refresh_token=rt-used",
                "grant_type=authorization_code&code=c&code=d",
                "grant_type=refresh_token&refresh%5Ftoken=rt-used&refresh_token=rt-fresh-3",
            ] {
                assert_eq!(
                    refused(token_request(&f, "/oauth/token", &[FORM], body)),
                    repeated,
                    "{body}"
                );
            }
            for body in [
                r#"{"grant_type": "refresh_token", "refresh_token": "rt-used", "refresh_token": "rt-fresh-4"}"#,
                r#"{"grant_type": "authorization_code", "grant_type": "refresh_token", "refresh_token": "rt-fresh-5"}"#,
            ] {
                assert_eq!(
                    refused(token_request(&f, "/oauth/token", &[JSON], body)),
                    repeated,
                    "{body}"
                );
            }
            // Some servers read the query too, and first: refused before
            // the body is read.
            for path in [
                "/oauth/token?refresh_token=rt-used",
                "/oauth/token?grant_type=refresh_token",
                "/oauth/token?tenant=a&tenant=b",
            ] {
                let r = respond(f.send("POST", path, &[FORM]));
                assert_eq!(
                    (r.status, reason(&r), r.body.contains("\"invalid_request\"")),
                    (400, "oauth.repeated_parameter".to_string(), true),
                    "{path}"
                );
            }
            assert_eq!(
                token_request(&f, "/oauth/token?tenant=a", &[FORM], "grant_type=password"),
                None
            );
            // Nested duplicates are not parameters; other grants go on.
            let nested = r#"{"grant_type": "password", "x": {"a": 1, "a": 2}}"#;
            assert_eq!(token_request(&f, "/oauth/token", &[JSON], nested), None);
        }

        #[test]
        fn refresh_grants_are_checked_whatever_their_content_type() {
            let f = Fixture::new(&config(""));
            let form = |rt: &str| format!("grant_type=refresh_token&refresh_token={rt}");
            let json = |rt: &str| {
                format!(r#" {{"grant_type": "refresh_token", "refresh_token": "{rt}"}}"#)
            };
            let declared: [&[(&str, &str)]; 5] = [
                &[],
                &[("content-type", "text/plain")],
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                )],
                &[JSON],
                &[FORM],
            ];
            for (i, headers) in declared.iter().enumerate() {
                for body in [form(&format!("rt-form-{i}")), json(&format!("rt-json-{i}"))] {
                    assert_eq!(token_request(&f, "/oauth/token", headers, &body), None);
                    assert_eq!(
                        refused(token_request(&f, "/oauth/token", headers, &body)).1,
                        "oauth.refresh_reuse",
                        "{headers:?} {body}"
                    );
                }
            }
            // The same token in either encoding is the same token.
            assert_eq!(
                refused(token_request(
                    &f,
                    "/oauth/token",
                    &[JSON],
                    &json("rt-form-0")
                ))
                .1,
                "oauth.refresh_reuse"
            );
            // Bodies palisade cannot read are refused, not waved through.
            for headers in [
                [("content-type", "multipart/form-data; boundary=x")],
                [("content-encoding", "gzip")],
            ] {
                assert_eq!(
                    refused(token_request(&f, "/oauth/token", &headers, "--x")),
                    (
                        400,
                        "oauth.unsupported_body".to_string(),
                        "invalid_request".to_string()
                    ),
                    "{headers:?}"
                );
            }
        }

        #[test]
        fn the_token_route_matches_with_a_trailing_slash() {
            let f = Fixture::new(&config(""));
            let body = "grant_type=refresh_token&refresh_token=rt-slash";
            assert_eq!(token_request(&f, "/oauth/token", &[FORM], body), None);
            assert_eq!(
                refused(token_request(&f, "/oauth/token/", &[FORM], body)).1,
                "oauth.refresh_reuse"
            );
            assert_eq!(f.route("token"), {
                let Verdict::Allow {
                    body: Some(check), ..
                } = f.send("POST", "/oauth/token/?x=1", &[FORM])
                else {
                    unreachable!("the token route holds the body");
                };
                check.later.route
            });
        }

        #[test]
        fn sizing_refresh_remembers_every_token_until_the_table_is_well_filled() {
            let json = config("").replace(r#""slots": 64"#, &format!(r#""slots": {SIZING_SLOTS}"#));
            let f = Fixture::new(&json);
            let mut keys = Keys(13);
            let counts = refusals("jwt.refresh_tokens.slots", |_| {
                let token = format!(
                    "{:016x}{:016x}{:016x}",
                    keys.next(),
                    keys.next(),
                    keys.next()
                );
                match grant(&f, &token) {
                    None => false,
                    Some(r) => {
                        assert_eq!(reason(&r), "oauth.refresh_capacity");
                        true
                    }
                }
            });
            assert_eq!(counts[..3], [0, 0, 0]);
        }

        fn remote_config(without_keys: &str) -> String {
            format!(
                r#"{{"routes": [{{"name": "api", "prefix": "/api"}}],
                "jwt": {{"without_keys": "{without_keys}", "providers": [{{"name": "idp", "issuer": "https://idp.example",
                    "audiences": ["api"], "algorithms": ["EdDSA"],
                    "jwks": {{"remote": {{"cluster": "idp", "path": "/jwks", "min_refetch": "10s"}}}}}}]}},
                "authorization": {{"policies": [{{"routes": ["api"]}}]}}}}"#
            )
        }

        /// The RFC 8037 A.1 Ed25519 key pair.
        const ED_JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

        #[test]
        fn remote_keys_fail_closed_until_loaded_and_are_fetched_once() {
            let f = Fixture::new(&remote_config("deny"));
            jwks::ensure_record(
                &f.store,
                f.engine.policy.auth.providers[0]
                    .remote
                    .as_ref()
                    .unwrap_or_else(|| unreachable!()),
            )
            .unwrap_or_else(|e| unreachable!("{e:?}"));
            let token = bearer("eyJhbGciOiJFZERTQSJ9.e30.AAAA");
            let r = respond(f.send("GET", "/api/x", &[("authorization", &token)]));
            assert_eq!((r.status, reason(&r).as_str()), (503, "jwt.no_keys"));
            let plans = f.engine.jwks_due(&f.store, T0);
            assert_eq!(plans.len(), 1);
            assert_eq!(
                (plans[0].upstream.as_str(), plans[0].path.as_str()),
                ("idp", "/jwks")
            );
            assert!(
                f.engine.jwks_due(&f.store, T0 + 1).is_empty(),
                "one fetch in flight"
            );
            f.engine
                .jwks_fetched(0, Err("HTTP status 500".into()), &f.services());
            assert_eq!(
                f.metrics.get(&Counter::JwksFetch {
                    provider: 0,
                    ok: false
                }),
                1
            );
            f.engine.jwks_fetched(0, Ok(ED_JWKS), &f.services());
            assert_eq!(
                f.metrics.get(&Counter::JwksFetch {
                    provider: 0,
                    ok: true
                }),
                1
            );
            // Keys are there: the token is now judged on its merits.
            let r = respond(f.send("GET", "/api/x", &[("authorization", &token)]));
            assert_eq!((r.status, reason(&r).as_str()), (401, "jwt.signature"));
            // A garbage document keeps the last good keys.
            f.engine.jwks_fetched(0, Ok(b"<html>"), &f.services());
            let r = respond(f.send("GET", "/api/x", &[("authorization", &token)]));
            assert_eq!(reason(&r), "jwt.signature");
        }

        #[test]
        fn without_keys_allow_lets_requests_through_unauthenticated() {
            let f = Fixture::new(&remote_config("allow"));
            assert_eq!(
                f.status("GET", "/api/x", &[("authorization", "Bearer a.b.c")]),
                200
            );
        }

        #[test]
        fn an_unknown_kid_asks_for_one_refetch() {
            let f = Fixture::new(&remote_config("deny"));
            let remote = f.engine.policy.auth.providers[0]
                .remote
                .clone()
                .unwrap_or_else(|| unreachable!());
            jwks::ensure_record(&f.store, &remote).unwrap_or_else(|e| unreachable!("{e:?}"));
            assert_eq!(f.engine.jwks_due(&f.store, T0).len(), 1);
            f.engine.jwks_fetched(0, Ok(ED_JWKS), &f.services());
            f.clock.advance(20_000);
            assert!(
                f.engine.jwks_due(&f.store, T0 + 20_000).is_empty(),
                "refresh is 5 min"
            );
            let unknown = bearer(&format!(
                "{}.e30.AAAA",
                B64.encode(br#"{"alg":"EdDSA","kid":"rotated"}"#)
            ));
            for _ in 0..50 {
                let r = respond(f.send("GET", "/api/x", &[("authorization", &unknown)]));
                assert_eq!(reason(&r), "jwt.unknown_kid");
            }
            assert_eq!(
                f.engine.jwks_due(&f.store, T0 + 20_001).len(),
                1,
                "one refetch for 50 misses"
            );
            assert!(f.engine.jwks_due(&f.store, T0 + 20_002).is_empty());
        }

        #[test]
        fn configuration_errors_name_their_path() {
            let bad = config("").replace("\"HS256\"", "\"HS257\"");
            let e = Policy::from_json(bad.as_bytes())
                .err()
                .unwrap_or_else(|| unreachable!());
            assert_eq!(e.path, "jwt.providers[0].algorithms[0]");
            let bad = config("").replace(
                "\"roles\": [\"admin\"], ",
                "\"roles\": [\"admin\"], \"providers\": [\"nope\"], ",
            );
            let e = Policy::from_json(bad.as_bytes())
                .err()
                .unwrap_or_else(|| unreachable!());
            assert_eq!(e.path, "authorization.policies[0].providers[0]");
            let bad = config("")
                .replace("\"kty\": \"oct\"", "\"kty\": \"oct\", \"k2\": 1")
                .replace("\"k\": ", "\"x\": ");
            let e = Policy::from_json(bad.as_bytes())
                .err()
                .unwrap_or_else(|| unreachable!());
            assert_eq!(e.path, "jwt.providers[0].jwks.inline.keys[0]");
            let bad = remote_config("deny").replace(
                "\"min_refetch\": \"10s\"",
                "\"min_refetch\": \"1s\", \"timeout\": \"5s\"",
            );
            let e = Policy::from_json(bad.as_bytes())
                .err()
                .unwrap_or_else(|| unreachable!());
            assert_eq!(e.path, "jwt.providers[0].jwks.remote.min_refetch");
        }
    }

    /// Issue 11: failed authentication is throttled and banned, and bans run
    /// before any verification.
    mod phases {
        use super::credentials_config as config;
        use super::*;

        fn reason(v: &Verdict) -> (u16, String) {
            match v {
                Verdict::Allow { .. } => (200, String::new()),
                Verdict::Respond(r) => {
                    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                    (r.status, body["reason"].as_str().unwrap_or("").to_string())
                }
            }
        }

        fn wrong_keys(f: &Fixture, n: usize) -> Vec<(u16, String)> {
            (0..n)
                .map(|i| {
                    let key = format!("guess-{i}");
                    reason(&f.send("GET", "/api/items", &[("x-api-key", &key)]))
                })
                .collect()
        }

        #[test]
        fn wrong_credentials_from_one_address_are_throttled_then_banned() {
            // An address rule counting every request: it runs before
            // authentication, so refused requests take tokens too.
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "api-ip", "key": ["ip"], "routes": ["api"],
                     "capacity": 2, "refill": "none", "ban": true}]},
                   "bans": {"after": 2, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"}"#,
            ));
            let got = wrong_keys(&f, 20);
            let verified = got.iter().filter(|r| r.1 == "apikey.invalid").count();
            assert_eq!(verified, 2, "{got:?}");
            assert_eq!(got[2].1, "rl.exhausted");
            assert_eq!(got[3].1, "rl.exhausted", "second strike bans");
            assert!(got[4..].iter().all(|r| r.1 == "ban.active"), "{got:?}");
        }

        #[test]
        fn a_failures_rule_counts_only_refusals_and_guards_before_verification() {
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "api-failures", "key": ["ip"], "routes": ["api"],
                     "capacity": 3, "refill": {"tokens": 3, "every": "1m"}, "ban": true, "counts": "failures"}]},
                   "bans": {"after": 1, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"}"#,
            ));
            let good = [("x-api-key", "partner-secret")];
            // Successes take nothing: far more than the capacity pass.
            for _ in 0..10 {
                assert_eq!(reason(&f.send("GET", "/api/items", &good)).0, 200);
            }
            let got = wrong_keys(&f, 20);
            let verified = got.iter().filter(|r| r.1 == "apikey.invalid").count();
            assert_eq!(verified, 3, "only the capacity is ever verified: {got:?}");
            assert_eq!(got[3].1, "rl.exhausted", "refused before verification");
            assert!(got[4..].iter().all(|r| r.1 == "ban.active"), "{got:?}");
            // The ban holds for the good key too: it is the address that is banned.
            assert_eq!(reason(&f.send("GET", "/api/items", &good)).1, "ban.active");
            assert_eq!(f.metrics.get(&Counter::BanIssued { rule: 0 }), 1);
        }

        #[test]
        fn a_banned_client_costs_no_verification() {
            // A route that needs a token, and a remote key set never loaded:
            // verification would answer 503 jwt.no_keys. A banned address
            // gets 403 ban.active instead, so the ban ran first.
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "admin-ip", "key": ["ip"], "routes": ["admin"],
                     "capacity": 1, "refill": "none", "ban": true}]},
                   "bans": {"after": 1, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"}"#,
            ));
            let got: Vec<_> = (0..3)
                .map(|_| reason(&f.send("GET", "/admin/x", &[("authorization", "Bearer x.y.z")])))
                .collect();
            assert_eq!(
                got[0].1, "jwt.malformed",
                "verified while the address has tokens"
            );
            assert_eq!(got[1].1, "rl.exhausted");
            assert_eq!(got[2].1, "ban.active");
        }

        #[test]
        fn body_phase_refusals_count_too() {
            let f = Fixture::new(&config(
                r#", "rate_limits": {"rules": [{"name": "token-failures", "key": ["ip"], "routes": ["token"],
                     "capacity": 1, "refill": "none", "counts": "failures"}]}"#,
            ));
            let form = [("content-type", "application/x-www-form-urlencoded")];
            let grant = b"grant_type=refresh_token&refresh_token=rt-1";
            let outcome = || match f.send("POST", "/oauth/token", &form) {
                Verdict::Allow {
                    body: Some(check), ..
                } => f
                    .engine
                    .check_body(&check, Body::Complete(grant), &f.services(), None)
                    .response()
                    .map_or(200, |r| r.status),
                other => reason(&other).0,
            };
            assert_eq!(outcome(), 200);
            assert_eq!(
                outcome(),
                400,
                "reuse: a refusal, which takes the one token"
            );
            assert_eq!(outcome(), 429, "the failures bucket is empty");
        }
    }

    #[test]
    fn a_clock_stepping_back_neither_empties_buckets_nor_stretches_bans() {
        let f = Fixture::new(
            r#"{"routes": [{"name": "api", "prefix": "/api"}],
                "rate_limits": {"rules": [
                    {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 10,
                     "refill": {"tokens": 10, "every": "10s"}, "ban": true}]},
                "bans": {"after": 1, "base": "30s", "factor": 2.0, "max": "1h", "decay": "10m"}}"#,
        );
        for _ in 0..3 {
            assert_eq!(f.status("GET", "/api/x", &[]), 200);
        }
        f.clock.step_back(3_600_000);
        // Before: 429 with Retry-After 3600. Now the bucket keeps its level:
        // exactly the 7 tokens left.
        let after: Vec<u16> = (0..8).map(|_| f.status("GET", "/api/x", &[])).collect();
        assert_eq!(after, [200, 200, 200, 200, 200, 200, 200, 429]);
        f.clock.advance(1_000);
        // Empty the bucket and get banned (30 s), then step back an hour.
        while f.status("GET", "/api/x", &[]) == 200 {}
        f.clock.step_back(3_600_000);
        let Verdict::Respond(r) = f.send("GET", "/api/x", &[]) else {
            unreachable!("banned");
        };
        let retry: u64 = header(&r, "retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(retry <= 30, "Retry-After {retry}");
        f.clock.advance(31_000);
        assert_eq!(
            f.status("GET", "/api/x", &[]),
            200,
            "the ban ended 30 s later"
        );
        // And forward: a jump ahead refills, as the clock says.
        while f.status("GET", "/api/x", &[]) == 200 {}
        f.clock.advance(24 * 3_600_000);
        assert_eq!(f.status("GET", "/api/x", &[]), 200);
    }

    struct BrokenClock;
    impl Clock for BrokenClock {
        fn now_ms(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn a_failed_clock_goes_through_failure_mode() {
        for (failure_mode, expect) in [("deny", 503), ("allow", 200)] {
            let f = Fixture::new(&LOGIN.replacen(
                '{',
                &format!(r#"{{"failure_mode": "{failure_mode}","#),
                1,
            ));
            let bytes = encode_map(&[(":method", "POST"), (":path", "/login")]);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let services = Services {
                store: &f.store,
                clock: &BrokenClock,
                metrics: &f.metrics,
            };
            let status = match f.engine.evaluate(&headers, &|| None, &services) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => {
                    assert!(r.body.contains("host.unavailable"), "{}", r.body);
                    r.status
                }
            };
            assert_eq!(status, expect, "{failure_mode}");
            let unread = match f.engine.headers_unavailable(&f.services()) {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            };
            assert_eq!(unread, expect, "unreadable header map, {failure_mode}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let rules = r#""routes": [{"name": "api", "prefix": "/api"}],
            "rate_limits": {"rules": [{"name": "api-ip", "key": ["ip"], "routes": ["api"],
                "capacity": 2, "refill": "none"}]}"#;
        let from = |f: &Fixture, peer: &str| {
            let bytes = encode_map(&[(":method", "GET"), (":path", "/api/x")]);
            let headers = HeaderMap::decode(&bytes).unwrap_or_default();
            let peer = peer.to_string();
            match f
                .engine
                .evaluate(&headers, &move || Some(peer.clone()), &f.services())
            {
                Verdict::Allow { .. } => 200,
                Verdict::Respond(r) => r.status,
            }
        };
        // Default /64: every address of one /64 shares the bucket.
        let f = Fixture::new(&format!("{{{rules}}}"));
        let same_64: Vec<u16> = [
            "[2001:db8:1:2::1]:1",
            "[2001:db8:1:2::2]:1",
            "[2001:db8:1:2:ffff::9]:1",
        ]
        .iter()
        .map(|a| from(&f, a))
        .collect();
        assert_eq!(same_64, [200, 200, 429]);
        assert_eq!(from(&f, "[2001:db8:1:3::1]:1"), 200, "another /64");
        assert_eq!(from(&f, "192.0.2.1:1"), 200);
        assert_eq!(from(&f, "192.0.2.1:1"), 200);
        assert_eq!(from(&f, "192.0.2.2:1"), 200, "IPv4 keyed by /32");
        // Configurable: /128 separates them, /24 groups IPv4.
        let f = Fixture::new(&format!(
            r#"{{"client_ip": {{"ipv6_prefix": 128, "ipv4_prefix": 24}}, {rules}}}"#
        ));
        for a in ["[2001:db8::1]:1", "[2001:db8::2]:1", "[2001:db8::3]:1"] {
            assert_eq!(from(&f, a), 200, "{a}");
        }
        let v4: Vec<u16> = ["192.0.2.1:1", "192.0.2.200:1", "192.0.2.3:1"]
            .iter()
            .map(|a| from(&f, a))
            .collect();
        assert_eq!(v4, [200, 200, 429]);
    }

    /// `peer` answers like the host and counts its calls: each one is a
    /// host call (a property read) on the request's path.
    fn peer_reads(f: &Fixture, pairs: &[(&str, &str)]) -> (u32, Verdict, Option<IpAddr>) {
        let reads = std::cell::Cell::new(0);
        let peer = || {
            reads.set(reads.get() + 1);
            Some("192.0.2.10:40000".to_string())
        };
        let bytes = encode_map(pairs);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        let verdict = f.engine.evaluate(&headers, &peer, &f.services());
        let seen = match &verdict {
            Verdict::Allow {
                body: Some(check), ..
            } => check.later.client_ip,
            _ => None,
        };
        (reads.get(), verdict, seen)
    }

    #[test]
    fn the_peer_is_read_only_when_a_stage_or_an_event_needs_it() {
        let geo = r#"{"routes": [{"name": "api", "prefix": "/api"}],
            "geo": {"header": "x-geo-country", "rules": [{"routes": ["api"], "deny": ["BR"]}]}}"#;
        let f = Fixture::new(geo);
        let get = [
            (":method", "GET"),
            (":path", "/api/a"),
            ("x-geo-country", "DE"),
        ];
        let (reads, verdict, _) = peer_reads(&f, &get);
        assert!(matches!(verdict, Verdict::Allow { .. }));
        assert_eq!(reads, 0, "nothing needed the address of an allowed request");
        // A finding's security event carries the address: read then, once.
        let refused = [
            (":method", "GET"),
            (":path", "/api/a"),
            ("x-geo-country", "BR"),
        ];
        let (reads, verdict, _) = peer_reads(&f, &refused);
        assert!(matches!(verdict, Verdict::Respond(ref r) if r.status == 403));
        assert_eq!(reads, 1);
        // From X-Forwarded-For nothing is deferred, and a malformed entry
        // is still refused without a stage asking for the address.
        let f = Fixture::new(r#"{"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1}}"#);
        let bad = [
            (":method", "GET"),
            (":path", "/"),
            ("x-forwarded-for", "nonsense"),
        ];
        let (reads, verdict, _) = peer_reads(&f, &bad);
        assert!(matches!(verdict, Verdict::Respond(ref r) if r.status == 400));
        assert_eq!(reads, 0);
        // A rule keyed on the address reads it for every request.
        let f = Fixture::new(
            r#"{"rate_limits": {"rules": [{"name": "ip", "key": ["ip"], "capacity": 5, "refill": {"tokens": 5, "every": "1s"}}]}}"#,
        );
        let (reads, verdict, _) = peer_reads(&f, &[(":method", "GET"), (":path", "/")]);
        assert!(matches!(verdict, Verdict::Allow { .. }));
        assert_eq!(reads, 1);
    }

    #[test]
    fn a_body_phase_gets_the_address_it_deferred() {
        // The body phase may log findings of its own: its check carries the
        // address even though no header-phase stage needed it.
        let f = Fixture::new(
            r#"{"routes": [{"name": "token", "prefix": "/token", "methods": ["POST"]}],
                "jwt": {"refresh_tokens": {"routes": ["token"]}}}"#,
        );
        let post = [
            (":method", "POST"),
            (":path", "/token"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let (reads, verdict, ip) = peer_reads(&f, &post);
        assert!(
            matches!(verdict, Verdict::Allow { body: Some(_), .. }),
            "{verdict:?}"
        );
        assert_eq!(reads, 1);
        assert_eq!(ip, "192.0.2.10".parse().ok());
    }

    thread_local! {
        static LOG_LINES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Counts the log lines of the thread that writes them (tests run on
    /// many threads; the logger is the process's one).
    struct LineCounter;

    impl log::Log for LineCounter {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, _: &log::Record) {
            LOG_LINES.with(|n| n.set(n.get() + 1));
        }
        fn flush(&self) {}
    }

    static LINE_COUNTER: LineCounter = LineCounter;

    fn log_lines_of(run: impl FnOnce()) -> u32 {
        if log::set_logger(&LINE_COUNTER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        let before = LOG_LINES.with(std::cell::Cell::get);
        run();
        LOG_LINES.with(std::cell::Cell::get) - before
    }

    #[test]
    fn an_allowed_request_writes_no_log_line() {
        let f = Fixture::new(LOGIN);
        let lines = log_lines_of(|| {
            for _ in 0..3 {
                assert_eq!(
                    f.status("GET", "/public/a", &[("x-forwarded-for", "192.0.2.1")]),
                    200
                );
                assert_eq!(f.status("POST", "/login", &[]), 200);
            }
        });
        assert_eq!(lines, 0);
        // The counter does count: a refusal is an event.
        let lines = log_lines_of(|| {
            for _ in 0..6 {
                f.status("POST", "/login", &[]);
            }
        });
        assert!(lines >= 1, "{lines}");
    }
}
