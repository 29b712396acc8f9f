//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over
//! Limitador's Redis storage.
//!
//! Each descriptor names its own limit (see `descriptor.rs`), registered in
//! Limitador on first use as `Limit { namespace: "<domain>/<palisade>/<max>/
//! <window>", max_value: max, seconds: window, conditions:
//! descriptors[0].palisade == name, descriptors[0].max == max,
//! descriptors[0].window == window, variables: descriptors[0].key }`.
//!
//! One limit per namespace: Limitador finds a request's limits by cloning
//! its namespace's whole set of limits and evaluating every one's
//! conditions (CEL), so with the domain alone as namespace each descriptor
//! would cost time in proportion to all limits known (measured: 1.1 ms a
//! call with 100 limits, 13 ms with 1,000). Limitador's own identity of a
//! limit leaves out `max_value`; here the namespace and the conditions
//! carry `max`, so two limits that differ only in `max` (a configuration
//! change rolling out) stay two limits with two counters, and a descriptor
//! always matches exactly one.
//!
//! Admission is exact across replicas: Limitador's `reserve` is one Lua
//! script that admits `hits` only if the committed value, the live holds of
//! other requests and `hits` together stay within `max`, and then holds
//! `hits`; `commit_reservation` adds them to the counter and drops the hold.
//! `check_rate_limited_and_update` (a read, then an increment) would let
//! concurrent requests through past `max`.
//! A refusal that only holds of requests in flight caused is tried again
//! for a few ms (`Backend::evaluate`).
//!
//! Limitador also lists every counter of a limit in a Redis set it never
//! shrinks; `Backend::sweep` deletes those sets now and then.

use crate::descriptor::{self, Descriptor, Hits};
use crate::log;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::{Context, Limit, Namespace, Predicate};
use limitador::reservation::ReservationLimits;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncStorage;
use limitador::{AsyncRateLimiter, AsyncRateLimiterBuilder};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::ConnectionInfo;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};

/// Most distinct (domain, palisade, max, window) limits kept in memory.
pub const MAX_LIMITS: usize = 10_000;

/// How much longer than the Redis deadline a reservation is held. A hold
/// outlives its request (committed or abandoned) by this margin, which is
/// also how far the replicas' clocks may disagree: the script compares a
/// hold's expiry, set by one replica's clock, with another replica's clock.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// Pauses of a request refused while other requests' holds are in flight:
/// 1, 2, 4, 8, 16... ms, for at most a quarter of the Redis deadline and
/// at most `CONTENTION_BUDGET` (palisade waits 100 ms by default).
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LAST_PAUSE: Duration = Duration::from_millis(16);
const CONTENTION_BUDGET: Duration = Duration::from_millis(50);

/// Pause between attempts to reach Redis at start.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Redis 7.0: Limitador's scripts use `EXPIRE ... NX`.
const MIN_REDIS_MAJOR: u32 = 7;

/// State shared by the gRPC service, the health endpoint and the task that
/// connects to Redis.
pub struct State {
    backend: OnceLock<Arc<Backend>>,
    timeout: Duration,
    storage_warnings: log::Throttled,
    degraded: AtomicBool,
}

impl State {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            backend: OnceLock::new(),
            timeout,
            storage_warnings: log::Throttled::new(Duration::from_secs(10)),
            degraded: AtomicBool::new(false),
        })
    }

    /// Whether Redis answers a PING within the deadline.
    pub async fn redis_answers(&self) -> bool {
        let Some(backend) = self.backend.get() else {
            return false;
        };
        let mut connection = backend.redis.clone();
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut connection);
        matches!(tokio::time::timeout(self.timeout, answer).await, Ok(Ok(_)))
    }

    /// Connects to Redis, trying again every second until it answers or
    /// `stop` resolves. Requests get `UNAVAILABLE` until then.
    pub async fn connect(&self, info: ConnectionInfo, stop: impl std::future::Future<Output = ()>) {
        let display = crate::config::redis_display(&info);
        let attempts = async {
            // A new reason is logged at once, the same one again at most
            // every 10 s.
            let mut last_reason = String::new();
            loop {
                match Backend::connect(&info, self.timeout).await {
                    Ok(backend) => {
                        if self.backend.set(Arc::new(backend)).is_ok() {
                            log::info(format_args!("connected to Redis at {display}"));
                        }
                        return;
                    }
                    Err(why) => {
                        let message =
                            || format!("Redis at {display}: {why}; trying again every second");
                        if why == last_reason {
                            self.storage_warnings.warn(message);
                        } else {
                            log::warn(message());
                            last_reason = why;
                        }
                    }
                }
                tokio::time::sleep(CONNECT_RETRY).await;
            }
        };
        tokio::select! {
            () = attempts => {}
            () = stop => {}
        }
    }

    /// Every `every`, deletes Limitador's lists of counters (see
    /// `Backend::sweep`), until `stop` resolves.
    pub async fn sweep(&self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        let sweeps = async {
            loop {
                tokio::time::sleep(every).await;
                let Some(backend) = self.backend.get() else {
                    continue;
                };
                match tokio::time::timeout(self.timeout * 10, backend.sweep()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => self
                        .storage_warnings
                        .warn(|| format!("Redis: deleting the lists of counters: {why}")),
                    Err(_) => self
                        .storage_warnings
                        .warn(|| "Redis: deleting the lists of counters: no answer".to_owned()),
                }
            }
        };
        tokio::select! {
            () = sweeps => {}
            () = stop => {}
        }
    }

    fn storage_failed(&self, why: &str) {
        self.degraded.store(true, Ordering::Relaxed);
        self.storage_warnings
            .warn(|| format!("Redis: {why}; answering UNAVAILABLE"));
    }

    fn storage_ok(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            log::info("Redis answers again");
        }
    }
}

/// What is known to Limitador once Redis has been reached.
struct Backend {
    limiter: AsyncRateLimiter,
    redis: ConnectionManager,
    limits: Mutex<HashSet<LimitId>>,
    hold: Duration,
    contention_budget: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LimitId {
    domain: String,
    name: String,
    max: u64,
    window: u64,
}

impl LimitId {
    /// The Limitador namespace of this limit, and of it only. Unambiguous:
    /// the name, max and window hold no `/`.
    fn namespace(&self) -> String {
        format!("{}/{}/{}/{}", self.domain, self.name, self.max, self.window)
    }

    /// The Limitador limit of this identity; the same one each time.
    fn limit(&self) -> Result<Limit, String> {
        let condition =
            |text: String| Predicate::parse(text).map_err(|e| format!("limit condition: {e}"));
        let conditions = [
            // The name is a-z 0-9 . _ - only (descriptor.rs): nothing to escape.
            condition(format!("descriptors[0].palisade == \"{}\"", self.name))?,
            condition(format!("descriptors[0].max == \"{}\"", self.max))?,
            condition(format!("descriptors[0].window == \"{}\"", self.window))?,
        ];
        let variable = "descriptors[0].key"
            .try_into()
            .map_err(|e| format!("limit variable: {e}"))?;
        Ok(Limit::new(
            self.namespace(),
            self.max,
            self.window,
            conditions,
            [variable],
        ))
    }

    /// The Redis set in which Limitador's scripts list every counter of the
    /// limit (`keys::key_for_counters_of_limit` in limitador 0.14.0, which
    /// is private: the format is repeated here, for the pinned version).
    fn counters_set(&self) -> Result<String, String> {
        let limit = serde_json::to_string(&self.limit()?).map_err(|e| e.to_string())?;
        Ok(format!(
            "namespace:{{{}}},counters_of_limit:{limit}",
            self.namespace()
        ))
    }
}

/// One descriptor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    over: bool,
    max: u64,
    remaining: u64,
    reset: Duration,
}

#[derive(Debug)]
enum Failure {
    /// Redis did not answer, or answered with an error.
    Storage(String),
    /// A bug here or in Limitador.
    Internal(String),
}

impl From<LimitadorError> for Failure {
    fn from(error: LimitadorError) -> Self {
        match error {
            LimitadorError::StorageError(e) => Failure::Storage(e.msg().to_owned()),
            LimitadorError::InterpreterError(e) => Failure::Internal(format!("limitador: {e}")),
        }
    }
}

impl Backend {
    async fn connect(info: &ConnectionInfo, timeout: Duration) -> Result<Backend, String> {
        let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
        // Reconnection after Redis went away: attempts at most 0.5 s apart
        // (redis-rs' default backoff grows to a minute), each bounded by the
        // deadline. A request meanwhile waits at most the deadline.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(3)
            .set_max_delay(500);
        let setup = async {
            let redis = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| e.to_string())?;
            check_version(&mut redis.clone()).await?;
            let storage = AsyncRedisStorage::new_with_conn_manager(redis.clone())
                .await
                .map_err(|e| format!("loading Limitador's scripts: {e}"))?;
            Ok::<_, String>((redis, storage))
        };
        let (redis, storage) = tokio::time::timeout(timeout * 4 + Duration::from_secs(2), setup)
            .await
            .map_err(|_| "no answer".to_owned())??;
        let hold = timeout + HOLD_MARGIN;
        let limiter =
            AsyncRateLimiterBuilder::new(AsyncStorage::with_counter_storage(Box::new(storage)))
                // max_fraction 1.0: a reservation holds everything it asks for
                // (below 1.0 a limit of 1 would hold nothing and not be atomic).
                .reservation_limits(ReservationLimits {
                    max_fraction: 1.0,
                    max_ttl: hold,
                })
                .build();
        Ok(Backend {
            limiter,
            redis,
            limits: Mutex::new(HashSet::new()),
            hold,
            contention_budget: (timeout / 4).min(CONTENTION_BUDGET),
        })
    }

    /// Makes sure Limitador knows the descriptor's limit; returns its
    /// namespace.
    fn register(&self, domain: &str, d: &Descriptor) -> Result<Namespace, Status> {
        let id = LimitId {
            domain: domain.to_owned(),
            name: d.name.clone(),
            max: d.max,
            window: d.window,
        };
        let namespace = Namespace::from(id.namespace());
        let mut known = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if known.contains(&id) {
            return Ok(namespace);
        }
        if known.len() >= MAX_LIMITS {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_LIMITS} distinct limits (domain, palisade, max, window); \
                 restart the service to forget unused ones"
            )));
        }
        let limit = id.limit().map_err(Status::internal)?;
        self.limiter.add_limit(limit);
        known.insert(id);
        Ok(namespace)
    }

    /// Deletes the sets in which Limitador lists each limit's counters.
    /// Its scripts add every counter key they create to its limit's set and
    /// nothing ever removes them, so with one counter per client the sets
    /// would grow without end (and a client that changes its key at will
    /// could grow Redis at will). Only Limitador's counter listing and
    /// deletion read them, which this service does not use; a set that is
    /// deleted is started again by the next new counter.
    async fn sweep(&self) -> Result<usize, String> {
        let ids: Vec<LimitId> = self
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let mut deleted = 0;
        for chunk in ids.chunks(100) {
            let mut unlink = redis::cmd("UNLINK");
            for id in chunk {
                unlink.arg(id.counters_set()?);
            }
            let mut connection = self.redis.clone();
            deleted += unlink
                .query_async::<usize>(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(deleted)
    }

    async fn evaluate(&self, namespace: &Namespace, d: &Descriptor) -> Result<Outcome, Failure> {
        // Limitador's view of an Envoy request, as limitador-server builds
        // it: a list of descriptors, each a map of its entries. Here the
        // list has this descriptor only, with max and window written the way
        // the limit's conditions spell them.
        let mut ctx = Context::default();
        ctx.list_binding(
            "descriptors".to_owned(),
            vec![HashMap::from([
                ("palisade".to_owned(), d.name.clone()),
                ("key".to_owned(), d.key.clone()),
                ("max".to_owned(), d.max.to_string()),
                ("window".to_owned(), d.window.to_string()),
            ])],
        );
        match d.hits {
            Hits::CheckOnly => {
                let result = self.limiter.is_rate_limited(namespace, &ctx, 1).await?;
                let counter = only_counter(&result.counters)?;
                let remaining = counter.remaining().unwrap_or(d.max);
                // Nothing counted yet: nothing to wait for.
                let reset = if remaining >= d.max {
                    Duration::ZERO
                } else {
                    counter.expires_in().unwrap_or_default()
                };
                Ok(Outcome {
                    over: result.limited,
                    max: d.max,
                    remaining,
                    reset,
                })
            }
            Hits::Add(hits) => {
                let started = Instant::now();
                let mut pause = FIRST_PAUSE;
                loop {
                    let reserved = self
                        .limiter
                        .reserve(namespace, &ctx, hits, Some(self.hold))
                        .await?;
                    let counter = only_counter(&reserved.counters)?;
                    // After this request: max minus the committed value,
                    // the live holds and, when admitted, this request's hits.
                    let outcome = Outcome {
                        over: reserved.limited,
                        max: d.max,
                        remaining: counter.remaining().unwrap_or(0),
                        reset: counter.expires_in().unwrap_or_default(),
                    };
                    if !reserved.limited {
                        self.limiter
                            .commit_reservation(
                                namespace,
                                &ctx,
                                reserved.reservation_id.as_ref(),
                                hits,
                            )
                            .await?;
                        return Ok(outcome);
                    }
                    // Refused. A commit adds to the counter before it drops
                    // its hold, so for a moment both count: a refusal can be
                    // early. When the committed value alone would admit this
                    // request, holds of requests in flight refused it; try
                    // again once they are settled, within the budget.
                    if started.elapsed() + pause > self.contention_budget {
                        return Ok(outcome);
                    }
                    let committed = self.limiter.is_rate_limited(namespace, &ctx, hits).await?;
                    if committed.limited {
                        return Ok(outcome);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LAST_PAUSE);
                }
            }
        }
    }
}

fn only_counter(counters: &[Counter]) -> Result<&Counter, Failure> {
    match counters {
        [counter] => Ok(counter),
        other => Err(Failure::Internal(format!(
            "a descriptor matched {} limits instead of 1",
            other.len()
        ))),
    }
}

/// Refuses a Redis older than 7.0. A server that does not say its version
/// (INFO not allowed) is taken as it is.
async fn check_version(redis: &mut ConnectionManager) -> Result<(), String> {
    let Ok(info) = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(redis)
        .await
    else {
        return Ok(());
    };
    let Some(version) = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
    else {
        return Ok(());
    };
    match version.split('.').next().and_then(|m| m.parse::<u32>().ok()) {
        Some(major) if major < MIN_REDIS_MAJOR => Err(format!(
            "Redis {version} is too old: Limitador's scripts need {MIN_REDIS_MAJOR}.0 or later (EXPIRE NX)"
        )),
        _ => Ok(()),
    }
}

/// The gRPC service.
pub struct RateLimiter {
    state: Arc<State>,
}

impl RateLimiter {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = descriptor::parse_request(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(backend) = self.state.backend.get().cloned() else {
            return Err(Status::unavailable("Redis not reached yet"));
        };
        // Every limit is known before any counter moves, so that a refusal
        // here (RESOURCE_EXHAUSTED) leaves all counters as they were.
        let namespaces = request
            .descriptors
            .iter()
            .map(|d| backend.register(&request.domain, d))
            .collect::<Result<Vec<_>, _>>()?;
        let count = request.descriptors.len();

        // Each descriptor in its own task: Redis round trips overlap, and a
        // panic in Limitador becomes INTERNAL instead of a reset stream.
        let mut tasks = JoinSet::new();
        for (index, (d, namespace)) in request.descriptors.into_iter().zip(namespaces).enumerate() {
            let backend = Arc::clone(&backend);
            tasks.spawn(async move { (index, backend.evaluate(&namespace, &d).await) });
        }
        let gather = async {
            let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, Ok(outcome))) => {
                        if let Some(slot) = outcomes.get_mut(index) {
                            *slot = Some(outcome);
                        }
                    }
                    Ok((_, Err(failure))) => return Err(failure),
                    Err(e) if e.is_panic() => {
                        return Err(Failure::Internal(
                            "a descriptor's evaluation panicked".into(),
                        ))
                    }
                    Err(e) => return Err(Failure::Internal(format!("a descriptor's task: {e}"))),
                }
            }
            outcomes
                .into_iter()
                .collect::<Option<Vec<Outcome>>>()
                .ok_or_else(|| Failure::Internal("a descriptor went unanswered".into()))
        };
        // Dropping `tasks` on the deadline aborts what is still running.
        let outcomes = match tokio::time::timeout(self.state.timeout, gather).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(Failure::Storage(why))) => {
                self.state.storage_failed(&why);
                return Err(Status::unavailable("Redis error"));
            }
            Ok(Err(Failure::Internal(why))) => {
                log::error(format_args!("internal error: {why}"));
                return Err(Status::internal(why));
            }
            Err(_) => {
                self.state.storage_failed(&format!(
                    "no answer within {} ms",
                    self.state.timeout.as_millis()
                ));
                return Err(Status::unavailable("Redis did not answer in time"));
            }
        };
        self.state.storage_ok();
        Ok(Response::new(response(&outcomes)))
    }
}

fn response(outcomes: &[Outcome]) -> RateLimitResponse {
    let code = |over: bool| if over { Code::OverLimit } else { Code::Ok } as i32;
    RateLimitResponse {
        overall_code: code(outcomes.iter().any(|o| o.over)),
        statuses: outcomes
            .iter()
            .map(|o| DescriptorStatus {
                code: code(o.over),
                // Envoy's units cannot say "per 90 s": the unit is left
                // UNKNOWN; palisade knows its windows.
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(o.max).unwrap_or(u32::MAX),
                    unit: Unit::Unknown as i32,
                }),
                limit_remaining: u32::try_from(o.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(PbDuration {
                    seconds: i64::try_from(o.reset.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(o.reset.subsec_nanos()).unwrap_or(0),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_lists_every_descriptor_in_order() {
        let outcomes = [
            Outcome {
                over: false,
                max: 20,
                remaining: 19,
                reset: Duration::from_millis(59_500),
            },
            Outcome {
                over: true,
                max: 1,
                remaining: 0,
                reset: Duration::from_secs(3),
            },
        ];
        let r = response(&outcomes);
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses.len(), 2);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, 19);
        assert_eq!(
            r.statuses[0].duration_until_reset,
            Some(PbDuration {
                seconds: 59,
                nanos: 500_000_000
            })
        );
        let limit = r.statuses[0].current_limit.clone().unwrap_or_default();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (20, Unit::Unknown as i32)
        );
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);

        assert_eq!(response(&outcomes[..1]).overall_code, Code::Ok as i32);
        assert_eq!(response(&[]).overall_code, Code::Ok as i32);
    }
}
