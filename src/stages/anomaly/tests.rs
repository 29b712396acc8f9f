use super::*;
use crate::core::config_error::err;
use crate::core::routes::{PathMatcher, RouteClass, RouteTable};
use crate::core::test_rng::Rng;
use crate::state::host::MemoryStore;

const WINDOW: u64 = 10_000;
/// Some Unix time, on a window boundary.
const T0: u64 = 1_700_000_000_000;

fn routes() -> RouteTable {
    RouteTable::new(vec![RouteClass {
        name: "login".to_string(),
        matcher: PathMatcher::Prefix("/login".to_string()),
        methods: None,
    }])
}

/// The section as `Policy::from_json` reads it: serde's errors with their
/// path, then `compile`.
fn document(json: &str) -> Result<Anomaly, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let raw: RawAnomaly = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| err(format!("anomaly.{}", e.path()), e.inner().to_string()).to_string())?;
    compile(Some(raw), &routes())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "absent".to_string())
}

fn detector(anomaly: &str) -> (Anomaly, RouteId) {
    let anomaly = document(anomaly).unwrap_or_else(|e| unreachable!("{e}"));
    (anomaly, routes().id_of("login").unwrap_or(RouteId::MAX))
}

const WATCH_LOGIN: &str = r#"{"defaults": {"window": "10s", "warmup_windows": 5,
    "baseline_windows": 10, "deviations": 4, "min_requests": 10, "hold": "30s"},
    "routes": {"default": {"disable": true}}}"#;

/// Workers sharing one store, each with its own tallies.
struct Cluster {
    anomaly: Anomaly,
    route: RouteId,
    store: MemoryStore,
    workers: Vec<Tallies>,
    changes: Vec<Change>,
    now: u64,
}

impl Cluster {
    fn new(anomaly: &str, workers: usize) -> Cluster {
        let (anomaly, route) = detector(anomaly);
        Cluster {
            anomaly,
            route,
            store: MemoryStore::new(),
            workers: (0..workers).map(|_| Tallies::default()).collect(),
            changes: Vec::new(),
            now: T0,
        }
    }

    fn watch(&self) -> &Watch {
        self.anomaly
            .watch(self.route)
            .unwrap_or_else(|| unreachable!())
    }

    /// One window: `requests` spread over it and the workers, each
    /// answered with `errors` of them 5xx and `latency` ms; every worker
    /// flushes once a second.
    fn window(&mut self, requests: u32, errors: u32, latency: u64) {
        let start = self.now;
        for second in 0..WINDOW / 1000 {
            let share = |n: u32| n / 10 + u32::from(u32::try_from(second).unwrap_or(0) < n % 10);
            let (n, e) = (share(requests), share(errors));
            for i in 0..n {
                let worker = &self.workers[i as usize % self.workers.len()];
                let at = start + second * 1000 + u64::from(i);
                let watch = self
                    .anomaly
                    .watch(self.route)
                    .unwrap_or_else(|| unreachable!());
                worker.request(watch, self.route, at);
                let status = if i < e { 503 } else { 200 };
                worker.response(watch, self.route, at, status, Some(latency));
            }
            self.now = start + (second + 1) * 1000;
            self.flush_all();
        }
    }

    fn flush_all(&mut self) {
        for worker in &self.workers {
            let found = flush(&self.anomaly, worker, &self.store, self.now, &|| {})
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            self.changes.extend(found.changes);
        }
    }

    fn started(&self, signal: &str) -> usize {
        self.changes
            .iter()
            .filter(|c| c.started && c.signal == signal)
            .count()
    }

    fn ended(&self, signal: &str) -> usize {
        self.changes
            .iter()
            .filter(|c| !c.started && c.signal == signal)
            .count()
    }
}

/// Poisson-like counts around `mean` (normal approximation).
fn noisy(rng: &mut Rng, mean: f64) -> u32 {
    let u = rng.unit().max(1e-12);
    let v = rng.unit();
    let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
    (mean + z * mean.sqrt()).round().max(0.0) as u32
}

#[test]
fn steady_traffic_raises_nothing() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 2);
    let mut rng = Rng(7);
    for _ in 0..120 {
        let requests = noisy(&mut rng, 200.0);
        cluster.window(requests, requests / 100, 40 + rng.next_u64() % 5);
    }
    assert_eq!(cluster.changes, [], "steady traffic is not an anomaly");
    let record = Record::decode(
        &cluster
            .store
            .get(&record_key(cluster.route))
            .ok()
            .flatten()
            .unwrap_or_default()
            .0,
    )
    .unwrap_or_default();
    let rate = record.baselines[Signal::Rate.index()];
    assert!((rate.mean - 200.0).abs() < 20.0, "{rate:?}");
    assert!(rate.windows >= 115, "every window was learned: {rate:?}");
}

#[test]
fn a_rate_spike_across_workers_starts_one_anomaly_which_ends_after_the_hold() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 2);
    for _ in 0..10 {
        cluster.window(100, 0, 20);
    }
    assert_eq!(cluster.changes, []);
    // Five times the rate: each worker alone sees 2.5 times the baseline's
    // total, so only the shared count can tell.
    cluster.window(500, 0, 20);
    cluster.window(500, 0, 20);
    cluster.window(100, 0, 20);
    assert_eq!(cluster.started("rate"), 1, "{:?}", cluster.changes);
    let start = cluster.changes[0];
    assert_eq!(start.route, cluster.route);
    assert_eq!(start.observed, 500.0);
    assert!((start.baseline - 100.0).abs() < 1e-9, "{start:?}");
    assert_eq!(
        cluster.ended("rate"),
        0,
        "held for 30s after the last spike"
    );
    for _ in 0..4 {
        cluster.window(100, 0, 20);
    }
    assert_eq!(cluster.ended("rate"), 1, "{:?}", cluster.changes);
    assert_eq!(cluster.started("errors") + cluster.started("latency"), 0);
}

#[test]
fn an_error_burst_and_slow_answers_are_anomalies_of_their_own() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 2);
    let mut rng = Rng(3);
    for _ in 0..10 {
        cluster.window(noisy(&mut rng, 100.0), 1, 20);
    }
    cluster.window(100, 40, 20);
    // A window is judged once the next one is under way.
    cluster.window(100, 1, 20);
    assert_eq!(cluster.started("errors"), 1, "{:?}", cluster.changes);
    assert_eq!(cluster.started("latency"), 0);
    for _ in 0..6 {
        cluster.window(noisy(&mut rng, 100.0), 1, 20);
    }
    cluster.window(100, 1, 200);
    cluster.window(100, 1, 20);
    assert_eq!(cluster.started("latency"), 1, "{:?}", cluster.changes);
    assert_eq!(cluster.started("rate"), 0, "{:?}", cluster.changes);
}

#[test]
fn nothing_is_raised_during_warmup_or_below_min_requests() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 1);
    for _ in 0..3 {
        cluster.window(100, 0, 20);
    }
    cluster.window(1000, 0, 20);
    cluster.window(100, 0, 20);
    assert_eq!(cluster.changes, [], "three windows are not a baseline yet");

    let mut quiet = Cluster::new(WATCH_LOGIN, 1);
    for _ in 0..10 {
        quiet.window(1, 0, 20);
    }
    quiet.window(9, 9, 500);
    quiet.window(1, 0, 20);
    assert_eq!(quiet.changes, [], "nine requests are below min_requests");
    quiet.window(30, 0, 20);
    quiet.window(1, 0, 20);
    assert_eq!(quiet.started("rate"), 1, "{:?}", quiet.changes);
}

#[test]
fn only_watched_signals_are_judged() {
    let mut cluster = Cluster::new(
        r#"{"defaults": {"signals": ["errors"], "warmup_windows": 2, "min_requests": 5}}"#,
        1,
    );
    for _ in 0..5 {
        cluster.window(20, 0, 20);
    }
    cluster.window(400, 0, 20);
    cluster.window(20, 20, 20);
    cluster.window(20, 0, 20);
    assert_eq!(cluster.started("rate"), 0);
    assert_eq!(cluster.started("errors"), 1, "{:?}", cluster.changes);
    assert!(!cluster.watch().watches(Signal::Latency));
}

#[test]
fn idle_time_is_learned_and_late_counts_are_dropped() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 1);
    for _ in 0..10 {
        cluster.window(100, 0, 20);
    }
    // An hour without traffic: the rate baseline decays towards zero.
    cluster.now += 3_600_000;
    cluster.flush_all();
    let key = record_key(cluster.route);
    let read = |store: &MemoryStore| {
        Record::decode(&store.get(&key).ok().flatten().unwrap_or_default().0).unwrap_or_default()
    };
    let record = read(&cluster.store);
    assert!(
        record.baselines[Signal::Rate.index()].mean < 1.0,
        "{record:?}"
    );
    // A count for a window judged long ago changes nothing.
    let watch = cluster.watch().clone();
    cluster.workers[0].request(&watch, cluster.route, T0);
    cluster.flush_all();
    assert_eq!(read(&cluster.store).open, record.open);
}

#[test]
fn a_record_of_another_class_or_version_starts_over() {
    let mut cluster = Cluster::new(WATCH_LOGIN, 1);
    for _ in 0..3 {
        cluster.window(100, 0, 20);
    }
    let key = record_key(cluster.route);
    let (bytes, _) = cluster.store.get(&key).ok().flatten().unwrap_or_default();
    let record = Record::decode(&bytes).unwrap_or_default();
    assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
    assert_eq!(Record::decode(&bytes[1..]), None);
    let mut other = cluster.anomaly.clone();
    other.name_hashes = vec![1; other.name_hashes.len()];
    flush(
        &other,
        &cluster.workers[0],
        &cluster.store,
        cluster.now,
        &|| {},
    )
    .unwrap_or_else(|e| unreachable!("{e:?}"));
    let (bytes, _) = cluster.store.get(&key).ok().flatten().unwrap_or_default();
    let fresh = Record::decode(&bytes).unwrap_or_default();
    assert_eq!(fresh.baselines[0].windows, 0, "{fresh:?}");
}

#[test]
fn the_section_is_checked_naming_the_field() {
    for (anomaly, path) in [
        (
            r#"{"defaults": {"window": "1s"}}"#,
            "anomaly.defaults.window",
        ),
        (
            r#"{"defaults": {"deviations": 0.5}}"#,
            "anomaly.defaults.deviations",
        ),
        (
            r#"{"defaults": {"signals": []}}"#,
            "anomaly.defaults.signals",
        ),
        (
            r#"{"defaults": {"signals": ["cpu"]}}"#,
            "anomaly.defaults.signals[0]",
        ),
        (
            r#"{"defaults": {"min_requests": 0}}"#,
            "anomaly.defaults.min_requests",
        ),
        (
            r#"{"defaults": {"tighten_by": 0}}"#,
            "anomaly.defaults.tighten_by",
        ),
        (r#"{"routes": {"nope": {}}}"#, "anomaly.routes.nope"),
        (
            r#"{"routes": {"login": {"baseline_windows": 0}}}"#,
            "anomaly.routes.login.baseline_windows",
        ),
        (r#"{"defaults": {"treshold": 3}}"#, "anomaly.defaults"),
    ] {
        let error = document(anomaly).err().unwrap_or_default();
        assert!(error.contains(path), "{anomaly}: {error}");
    }
    let (on, login) = detector(r#"{"routes": {"default": {"disable": true}}}"#);
    assert_eq!(on.watched().map(|(r, _)| r).collect::<Vec<_>>(), [login]);
    let watch = on.watch(login).unwrap_or_else(|| unreachable!());
    assert_eq!(watch.window_ms, 10_000);
    assert!(watch.needs_responses());
}
