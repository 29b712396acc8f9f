//! The `reputation` section and the check, and remote lists shared by
//! several workers (one `State` each over one store).

use super::*;
use crate::core::config_error::ConfigError;
use crate::core::metrics::MemoryMetrics;
use crate::core::mode::Mode;
use crate::core::routes::{PathMatcher, RouteClass, RouteId, RouteTable};
use crate::state::host::{ManualClock, MemoryStore};
use std::net::IpAddr;

const T0: u64 = 1_700_000_000_000;

/// The section compiled against one route class, `login` (the stage's
/// tests stay below the document: `config` is above the stages).
struct Policy {
    routes: RouteTable,
    reputation: Option<Reputation>,
}

fn compiled(reputation: &str) -> Result<Policy, ConfigError> {
    let routes = RouteTable::new(vec![RouteClass {
        name: "login".into(),
        matcher: PathMatcher::Prefix("/login".into()),
        methods: None,
    }]);
    let value: serde_json::Value =
        serde_json::from_str(reputation).unwrap_or_else(|e| unreachable!("{e}: {reputation}"));
    let raw: config::RawReputation = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => "reputation".to_string(),
            p => format!("reputation.{p}"),
        };
        crate::core::config_error::err(path, e.inner().to_string())
    })?;
    let reputation = config::compile_reputation(Some(raw), Mode::Enforce, &routes)?;
    Ok(Policy { routes, reputation })
}

fn policy(reputation: &str) -> Policy {
    compiled(reputation).unwrap_or_else(|e| unreachable!("{e}"))
}

fn rejected(reputation: &str, path: &str, needle: &str) {
    match compiled(reputation) {
        Ok(_) => unreachable!("accepted: {reputation}"),
        Err(e) => {
            assert_eq!(e.path, path, "{reputation}: {e}");
            assert!(e.message.contains(needle), "{reputation}: {e}");
        }
    }
}

fn route(p: &Policy, name: &str) -> RouteId {
    p.routes
        .id_of(name)
        .unwrap_or_else(|| unreachable!("{name}"))
}

/// The finding for `ip` on `route`: (reason, list name).
fn verdict(p: &Policy, state: &State, route: RouteId, ip: &str) -> Option<(Reason, String)> {
    let rep = p.reputation.as_ref()?;
    let mut facts = Facts::new(route, "");
    facts.client_ip = Some(
        ip.parse::<IpAddr>()
            .unwrap_or_else(|_| unreachable!("{ip}")),
    );
    let mut findings = Vec::new();
    check(rep, state, &facts, &mut findings);
    assert!(findings.len() <= 1);
    findings.first().map(|f| {
        let list = f
            .rule
            .and_then(|r| rep.lists.get(usize::from(r)))
            .map(|l| l.name.clone())
            .unwrap_or_default();
        (f.reason, list)
    })
}

fn deny(list: &str) -> Option<(Reason, String)> {
    Some((Reason::ReputationDeny, list.to_string()))
}

#[test]
fn bad_sections_name_the_path() {
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "cidrs": ["10.0.0.0/8", "::/0", "2001:db8::/32", "10.0.0.0/33"]}]}"#,
        "reputation.lists[0].cidrs[3]",
        "not an IPv4 or IPv6 prefix",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny"}]}"#,
        "reputation.lists[0]",
        "exactly one of",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "cidrs": [], "remote": {"cluster": "c", "path": "/l"}}]}"#,
        "reputation.lists[0]",
        "exactly one of",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "block", "cidrs": []}]}"#,
        "reputation.lists[0].action",
        "allow",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "cidrs": []}, {"name": "x", "action": "allow", "cidrs": []}]}"#,
        "reputation.lists[1].name",
        "another list",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "cidrs": [], "routes": ["login", "nope"]}]}"#,
        "reputation.lists[0].routes[1]",
        "nope",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "allow", "remote": {"cluster": "c", "path": "/l"}, "without_list": "deny"}]}"#,
        "reputation.lists[0].without_list",
        "deny list",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"address": "nope", "path": "/l"}}]}"#,
        "reputation.lists[0].remote.address",
        "host:port",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"cluster": "c", "path": "/l", "refresh": "10s", "min_refetch": "20s"}}]}"#,
        "reputation.lists[0].remote.refresh",
        "min_refetch",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"cluster": "c", "path": "/l", "bogus": 1}}]}"#,
        "reputation.lists[0].remote.bogus",
        "unknown field",
    );
    rejected(
        r#"{"lists": {"name": "x"}}"#,
        "reputation.lists",
        "expected a sequence",
    );
    rejected(
        r#"{"lists": [{"action": "deny"}]}"#,
        "reputation.lists[0]",
        "missing field `name`",
    );
    rejected(
        r#"{"lists": [{"name": "x", "cidrs": []}]}"#,
        "reputation.lists[0]",
        "missing field `action`",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "cidrs": [1]}]}"#,
        "reputation.lists[0].cidrs[0]",
        "expected a string",
    );
    rejected(
        r#"{"mode": "off", "lists": []}"#,
        "reputation.mode",
        "enforce",
    );
    rejected(r#"{"list": 1}"#, "reputation.list", "unknown field");
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"cluster": "c"}}]}"#,
        "reputation.lists[0].remote",
        "missing field `path`",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"cluster": "c", "path": "/l", "timeout": "5"}}]}"#,
        "reputation.lists[0].remote.timeout",
        "no unit",
    );
    rejected(
        r#"{"lists": [{"name": "x", "action": "deny", "remote": {"cluster": "c", "path": "/l"}, "without_list": "maybe"}]}"#,
        "reputation.lists[0].without_list",
        "allow",
    );
    rejected("null", "reputation", "expected struct");
    // Null optional fields are absent ones; an empty section is off.
    let p = policy(
        r#"{"lists": [{"name": "x", "action": "deny", "routes": null, "cidrs": ["10.0.0.0/8"], "remote": null}]}"#,
    );
    assert!(p.reputation.is_some());
    assert!(policy(r#"{"lists": []}"#).reputation.is_none());
}

#[test]
fn inline_lists_allow_wins_and_routes_apply() {
    let p = policy(
        r#"{"lists": [
            {"name": "blocked", "action": "deny", "cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
            {"name": "login-only", "action": "deny", "routes": ["login"], "cidrs": ["198.51.100.0/24"]},
            {"name": "office", "action": "allow", "cidrs": ["203.0.113.8/29", "2001:db8:1::/48"]}
        ]}"#,
    );
    let state = State::new(p.reputation.as_ref());
    let (login, other) = (route(&p, "login"), route(&p, "default"));
    assert_eq!(verdict(&p, &state, other, "203.0.113.1"), deny("blocked"));
    assert_eq!(verdict(&p, &state, other, "2001:db8:2::1"), deny("blocked"));
    assert_eq!(
        verdict(&p, &state, other, "::ffff:203.0.113.1"),
        deny("blocked")
    );
    // On the allow list: not denied, on any route.
    assert_eq!(verdict(&p, &state, other, "203.0.113.9"), None);
    assert_eq!(verdict(&p, &state, login, "2001:db8:1::9"), None);
    assert_eq!(verdict(&p, &state, other, "192.0.2.1"), None);
    // A list restricted to `login`.
    assert_eq!(
        verdict(&p, &state, login, "198.51.100.1"),
        deny("login-only")
    );
    assert_eq!(verdict(&p, &state, other, "198.51.100.1"), None);
    let rep = p.reputation.as_ref().unwrap_or_else(|| unreachable!());
    assert_eq!(rep.mode, Mode::Enforce);
    assert_eq!(rep.lists[1].name, "login-only");
}

#[test]
fn monitor_mode_findings_do_not_deny() {
    let p = policy(
        r#"{"mode": "monitor", "lists": [{"name": "b", "action": "deny", "cidrs": ["10.0.0.0/8"]}]}"#,
    );
    let rep = p.reputation.as_ref().unwrap_or_else(|| unreachable!());
    let mut facts = Facts::new(route(&p, "default"), "");
    facts.client_ip = "10.1.1.1".parse().ok();
    let mut findings = Vec::new();
    check(rep, &State::new(Some(rep)), &facts, &mut findings);
    assert_eq!(findings.len(), 1);
    assert!(!findings.iter().any(Finding::enforced));
}

/// Workers over one store, like Envoy's VMs over shared data.
struct Process {
    policy: Policy,
    store: MemoryStore,
    clock: ManualClock,
    metrics: MemoryMetrics,
    workers: Vec<State>,
}

impl Process {
    fn new(without_list: &str) -> Process {
        let policy = policy(&format!(
            r#"{{"lists": [{{"name": "feed", "action": "deny", "remote": {{"cluster": "lists", "path": "/feed.txt",
                "refresh": "60s", "min_refetch": "10s", "timeout": "2s"}}, "without_list": "{without_list}"}}]}}"#
        ));
        let store = MemoryStore::new();
        let rep = policy.reputation.as_ref().unwrap_or_else(|| unreachable!());
        ensure_records(rep, &store).unwrap_or_else(|e| unreachable!("{e:?}"));
        let workers = (0..4).map(|_| State::new(Some(rep))).collect();
        Process {
            store,
            clock: ManualClock::at(T0),
            metrics: MemoryMetrics::default(),
            workers,
            policy,
        }
    }

    fn rep(&self) -> &Reputation {
        self.policy
            .reputation
            .as_ref()
            .unwrap_or_else(|| unreachable!())
    }

    /// Every worker ticks; the fetches they won.
    fn tick(&self) -> Vec<usize> {
        let now = self.clock.now_ms();
        (0..self.workers.len())
            .filter(|&w| !due(self.rep(), &self.workers[w], &self.store, now).is_empty())
            .collect()
    }

    fn fetched(&self, worker: usize, result: Result<&[u8], String>) {
        let services = Services {
            store: &self.store,
            clock: &self.clock,
            metrics: &self.metrics,
        };
        fetched(self.rep(), &self.workers[worker], 0, result, &services);
    }

    fn verdicts(&self, ip: &str) -> Vec<Option<(Reason, String)>> {
        let route = route(&self.policy, "default");
        self.workers
            .iter()
            .map(|w| verdict(&self.policy, w, route, ip))
            .collect()
    }

    fn fetches(&self, ok: bool) -> u64 {
        self.metrics.get(&Counter::ListFetch { list: 0, ok })
    }
}

#[test]
fn one_worker_fetches_and_every_worker_installs() {
    let p = Process::new("allow");
    assert_eq!(p.tick().len(), 1, "one fetch for all workers");
    assert!(p.tick().is_empty());
    // Not loaded yet, `without_list: allow`: nothing is denied.
    assert_eq!(p.verdicts("203.0.113.1"), vec![None; 4]);
    p.fetched(0, Ok(b"# feed\n203.0.113.0/24\n2001:db8::/32 ; doc\n"));
    assert_eq!(p.fetches(true), 1);
    assert!(p.tick().is_empty(), "installs, fetches nothing");
    assert_eq!(p.verdicts("203.0.113.1"), vec![deny("feed"); 4]);
    assert_eq!(p.verdicts("2001:db8::5"), vec![deny("feed"); 4]);
    // Refresh after 60 s: an address added to the list is denied.
    p.clock.advance(59_000);
    assert!(p.tick().is_empty());
    p.clock.advance(1_000);
    let winners = p.tick();
    assert_eq!(winners.len(), 1);
    p.fetched(winners[0], Ok(b"203.0.113.0/24\n198.51.100.7\n"));
    p.tick();
    assert_eq!(p.verdicts("198.51.100.7"), vec![deny("feed"); 4]);
    assert_eq!(p.verdicts("2001:db8::5"), vec![None; 4], "removed");
}

#[test]
fn failures_keep_the_last_good_list() {
    let p = Process::new("allow");
    p.tick();
    p.fetched(0, Ok(b"203.0.113.0/24\n"));
    p.tick();
    for bad in [
        Err("HTTP status 503".to_string()),
        Ok(b"<html>oops</html>\n".as_slice()),
        Ok(vec![b'#'; MAX_LIST_BYTES + 1].as_slice()),
    ] {
        p.clock.advance(60_000);
        let winners = p.tick();
        assert_eq!(winners.len(), 1);
        p.fetched(
            winners[0],
            bad.map(|b| b.to_vec()).as_deref().map_err(Clone::clone),
        );
        p.tick();
        assert_eq!(p.verdicts("203.0.113.1"), vec![deny("feed"); 4]);
    }
    assert_eq!((p.fetches(true), p.fetches(false)), (1, 3));
    // Bad lines beside good ones are skipped, the good ones load.
    p.clock.advance(60_000);
    let winners = p.tick();
    p.fetched(winners[0], Ok(b"not-a-prefix\n192.0.2.0/24\n"));
    p.tick();
    assert_eq!(p.verdicts("192.0.2.1"), vec![deny("feed"); 4]);
    assert_eq!(p.verdicts("203.0.113.1"), vec![None; 4]);
}

#[test]
fn without_list_deny_refuses_until_the_first_load() {
    let p = Process::new("deny");
    assert_eq!(p.tick().len(), 1);
    let no_list = Some((Reason::ReputationNoList, "feed".to_string()));
    assert_eq!(p.verdicts("192.0.2.1"), vec![no_list.clone(); 4]);
    p.fetched(0, Err("HTTP status 404".into()));
    // Before a first load, retried after 5 s rather than `min_refetch`.
    p.clock.advance(4_000);
    assert!(p.tick().is_empty());
    p.clock.advance(1_000);
    assert_eq!(p.tick().len(), 1);
    assert_eq!(p.verdicts("192.0.2.1"), vec![no_list; 4]);
    p.fetched(1, Ok(b"203.0.113.0/24\n"));
    p.tick();
    assert_eq!(p.verdicts("192.0.2.1"), vec![None; 4]);
    assert_eq!(p.verdicts("203.0.113.1"), vec![deny("feed"); 4]);
}

#[test]
fn a_damaged_shared_copy_keeps_the_installed_list() {
    let p = Process::new("allow");
    p.tick();
    p.fetched(0, Ok(b"203.0.113.0/24\n"));
    p.tick();
    let remote = p.rep().lists[0]
        .remote()
        .cloned()
        .unwrap_or_else(|| unreachable!());
    // A newer generation whose data does not decode.
    let mut schedule = Schedule::decode(
        &p.store
            .get(&remote.fetch.record_key)
            .ok()
            .flatten()
            .map(|(b, _)| b)
            .unwrap_or_default(),
    );
    schedule.generation += 1;
    let _ = p.store.set(&remote.fetch.record_key, &schedule.encode(), 0);
    let _ = p
        .store
        .set(&remote.data_key(), &[9, 0, 0, 0, 0, 0, 0, 0, 250], 0);
    p.tick();
    assert_eq!(p.verdicts("203.0.113.1"), vec![deny("feed"); 4]);
}
