//! Login accounting through the whole pipeline: failed logins per address,
//! fingerprint and username counted from the upstream's answers, usernames
//! tried per client, known clients of a user under attack, and what is
//! never kept (usernames in clear, passwords).

use super::*;

/// A login route class and `rules` (JSON, without the brackets).
fn config(rules: &str) -> String {
    format!(
        r#"{{
        "client_ip": {{"source": "x-forwarded-for", "trusted_hops": 1}},
        "routes": [{{"name": "login", "path": "/login", "methods": ["POST"]}}, {{"name": "api", "prefix": "/api"}}],
        "login": {{"routes": ["login"], "username_field": "username"}},
        "bans": {{"after": 2, "base": "1m", "decay": "10m"}},
        "rate_limits": {{"rules": [{rules}]}}
    }}"#
    )
}

const PER_IP: &str = r#"{"name": "fail-ip", "key": ["ip"], "counts": "failed_logins", "capacity": 5, "refill": {"tokens": 5, "every": "15m"}, "ban": true}"#;
const PER_USER: &str = r#"{"name": "fail-user", "key": ["username"], "counts": "failed_logins", "capacity": 3, "refill": {"tokens": 3, "every": "15m"}}"#;
const USERNAMES: &str = r#"{"name": "users-ip", "key": ["ip"], "counts": "usernames", "capacity": 3, "refill": {"tokens": 3, "every": "10m"}, "ban": true}"#;

/// What a login came to before the upstream: forwarded (with what its
/// answer is counted against), or answered by palisade.
enum Login {
    Forwarded(Option<Box<LoginCheck>>),
    Refused(LocalResponse),
}

impl Login {
    fn reason(&self) -> Option<String> {
        match self {
            Login::Forwarded(_) => None,
            Login::Refused(r) => serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string)),
        }
    }
}

/// A form login from `ip` through both phases.
fn login(f: &Fixture, ip: &str, username: &str) -> Login {
    let body = format!("username={username}&password=hunter2-{username}");
    login_body(f, ip, body.as_bytes())
}

fn login_body(f: &Fixture, ip: &str, body: &[u8]) -> Login {
    let verdict = f.send(
        "POST",
        "/login",
        &[
            ("x-forwarded-for", ip),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    );
    let (check, mut login) = match verdict {
        Verdict::Respond(r) => return Login::Refused(r),
        Verdict::Allow { body, login, .. } => (body, login),
    };
    if let Some(check) = check {
        let answer = f
            .engine
            .check_body(
                &check,
                Body::Complete(body),
                &f.services(),
                login.as_deref_mut(),
            )
            .response();
        if let Some(refused) = answer {
            return Login::Refused(refused);
        }
    }
    Login::Forwarded(login)
}

/// The upstream answers a forwarded login with `status`.
fn answer(f: &Fixture, login: &Login, status: u16) {
    if let Login::Forwarded(Some(check)) = login {
        f.engine.login_answered(check, status, &f.services());
    }
}

fn failed_login(f: &Fixture, ip: &str, username: &str) -> Login {
    let l = login(f, ip, username);
    answer(f, &l, 401);
    l
}

#[test]
fn failed_logins_from_one_address_are_refused_then_banned() {
    let f = Fixture::new(&config(PER_IP));
    for i in 0..5 {
        let l = failed_login(&f, "198.51.100.1", &format!("user{i}"));
        assert!(matches!(l, Login::Forwarded(Some(_))), "attempt {i}");
    }
    // The sixth attempt never reaches the upstream.
    let sixth = login(&f, "198.51.100.1", "user5");
    assert_eq!(sixth.reason().as_deref(), Some("login.failures_ip"));
    let Login::Refused(r) = &sixth else {
        unreachable!()
    };
    assert_eq!(r.status, 429);
    assert!(header(r, "retry-after").is_some());
    // The second refusal is the second strike, which bans the address
    // (`after`: 2).
    assert_eq!(
        login(&f, "198.51.100.1", "user6").reason().as_deref(),
        Some("login.failures_ip")
    );
    assert_eq!(
        login(&f, "198.51.100.1", "user7").reason().as_deref(),
        Some("ban.active")
    );
    // Other addresses and other routes are untouched.
    assert!(matches!(
        login(&f, "198.51.100.2", "user0"),
        Login::Forwarded(_)
    ));
    assert_eq!(
        f.status("GET", "/api/x", &[("x-forwarded-for", "198.51.100.1")]),
        200
    );
}

#[test]
fn a_user_who_mistypes_twice_is_never_refused() {
    let f = Fixture::new(&config(&format!("{PER_IP}, {PER_USER}, {USERNAMES}")));
    for day in 0..3u64 {
        f.clock.advance(day * 3_600_000);
        for _ in 0..2 {
            let l = failed_login(&f, "203.0.113.9", "alice");
            assert!(matches!(l, Login::Forwarded(Some(_))), "a mistype");
        }
        let ok = login(&f, "203.0.113.9", "alice");
        assert!(matches!(ok, Login::Forwarded(Some(_))), "day {day}");
        answer(&f, &ok, 200);
    }
}

#[test]
fn only_configured_failure_statuses_count() {
    let f = Fixture::new(&config(PER_IP));
    for status in [200, 302, 400, 404, 429, 500, 503] {
        for _ in 0..3 {
            let l = login(&f, "198.51.100.7", "bob");
            assert!(matches!(l, Login::Forwarded(_)), "status {status}");
            answer(&f, &l, status);
        }
    }
    let failed = Counter::FailedLogin {
        route: f.route("login"),
    };
    assert_eq!(f.metrics.get(&failed), 0);
    failed_login(&f, "198.51.100.7", "bob");
    assert_eq!(f.metrics.get(&failed), 1, "a 401 is a failed login");
}

#[test]
fn a_client_spraying_usernames_is_stopped_but_may_retry_one() {
    let f = Fixture::new(&config(USERNAMES));
    for name in ["a", "b", "c"] {
        assert!(matches!(
            login(&f, "198.51.100.3", name),
            Login::Forwarded(_)
        ));
    }
    // Trying a user it tried before is no new username.
    for _ in 0..5 {
        assert!(matches!(
            login(&f, "198.51.100.3", "B"),
            Login::Forwarded(_)
        ));
    }
    let fourth = login(&f, "198.51.100.3", "d");
    assert_eq!(fourth.reason().as_deref(), Some("login.distinct_users"));
    // Its own users are still open to it, until a second strike bans it.
    assert!(matches!(
        login(&f, "198.51.100.3", "a"),
        Login::Forwarded(_)
    ));
    assert_eq!(
        login(&f, "198.51.100.3", "e").reason().as_deref(),
        Some("login.distinct_users")
    );
    // Banned: refused before its body is read.
    let verdict = f.send("POST", "/login", &[("x-forwarded-for", "198.51.100.3")]);
    assert!(matches!(verdict, Verdict::Respond(r) if r.status == 403));
    // Once the ban and a window are over it may try new users again.
    f.clock.advance(10 * 60_000);
    let later = login(&f, "198.51.100.3", "f");
    assert!(matches!(later, Login::Forwarded(_)), "{:?}", later.reason());
}

#[test]
fn a_username_under_attack_stays_open_to_its_owners_known_clients() {
    let f = Fixture::new(&config(PER_USER));
    // The owner logs in from home once.
    let home = login(&f, "203.0.113.50", "alice");
    answer(&f, &home, 200);
    // A botnet fails three times from three addresses.
    for i in 0..3 {
        failed_login(&f, &format!("198.51.100.{}", 20 + i), "alice");
    }
    // Unknown clients are refused for that username only…
    let stranger = login(&f, "198.51.100.99", "alice");
    assert_eq!(stranger.reason().as_deref(), Some("login.failures_user"));
    assert!(matches!(
        login(&f, "198.51.100.99", "bob"),
        Login::Forwarded(_)
    ));
    // …its owner, from a network it logged in from, is not.
    let owner = login(&f, "203.0.113.50", "ALICE");
    assert!(matches!(owner, Login::Forwarded(Some(_))));
}

#[test]
fn a_successful_login_does_not_lift_a_ban() {
    let f = Fixture::new(&config(PER_IP));
    for i in 0..5 {
        failed_login(&f, "198.51.100.4", &format!("u{i}"));
    }
    for _ in 0..2 {
        assert!(matches!(login(&f, "198.51.100.4", "x"), Login::Refused(_)));
    }
    assert_eq!(
        login(&f, "198.51.100.4", "x").reason().as_deref(),
        Some("ban.active")
    );
    // The attacker finally guesses one: still banned, and the success the
    // upstream would report (had it been reached) changes nothing.
    let check = Box::new(LoginCheck {
        route: f.route("login"),
        request_id: String::new(),
        client_ip: "198.51.100.4".parse().ok(),
        fingerprint: None,
        username: None,
    });
    f.engine.login_answered(&check, 200, &f.services());
    assert_eq!(
        login(&f, "198.51.100.4", "x").reason().as_deref(),
        Some("ban.active")
    );
}

#[test]
fn a_body_naming_two_users_is_refused() {
    let f = Fixture::new(&config(PER_USER));
    let l = login_body(&f, "198.51.100.5", b"username=a&username=b&password=x");
    assert_eq!(l.reason().as_deref(), Some("login.repeated_username"));
    let Login::Refused(r) = l else { unreachable!() };
    assert_eq!(r.status, 400);
}

#[test]
fn usernames_and_passwords_never_reach_shared_state() {
    let f = Fixture::new(&config(&format!("{PER_IP}, {PER_USER}, {USERNAMES}")));
    for i in 0..4 {
        failed_login(&f, "198.51.100.6", "victim-user");
        let ok = login(&f, &format!("203.0.113.{i}"), "victim-user");
        answer(&f, &ok, 200);
    }
    assert!(!f.store.holds(b"victim-user"));
    assert!(!f.store.holds(b"hunter2"));
}

#[test]
fn in_monitor_mode_nothing_is_refused_but_findings_are_counted() {
    let json = config(PER_IP).replace(
        r#""rate_limits": {"#,
        r#""rate_limits": {"mode": "monitor", "#,
    );
    let json = json.replace(r#""bans": {"#, r#""bans": {"mode": "monitor", "#);
    let f = Fixture::new(&json);
    for i in 0..8 {
        let l = failed_login(&f, "198.51.100.8", &format!("u{i}"));
        assert!(matches!(l, Login::Forwarded(_)), "attempt {i}");
    }
    let flagged = f.metrics.get(&Counter::Finding {
        stage: Stage::RateLimit,
        reason: Reason::LoginFailuresIp,
        mode: Mode::Monitor,
        route: f.route("login"),
    });
    assert!(flagged >= 2, "{flagged}");
    let bans = f.metrics.get(&Counter::Finding {
        stage: Stage::Bans,
        reason: Reason::BanActive,
        mode: Mode::Monitor,
        route: f.route("login"),
    });
    assert!(bans >= 1, "{bans}");
}

#[test]
fn login_rules_are_checked_against_the_login_section() {
    let reject = |json: &str, path: &str, needle: &str| match Policy::from_json(json.as_bytes()) {
        Ok(_) => unreachable!("accepted: {json}"),
        Err(e) => {
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
    };
    let no_login = r#"{"routes": [{"name": "login", "path": "/login"}],
        "rate_limits": {"rules": [{"name": "f", "key": ["ip"], "counts": "failed_logins", "capacity": 5, "refill": "none"}]}}"#;
    reject(
        no_login,
        "rate_limits.rules[0].counts",
        "no `login` section",
    );
    let small = config(
        r#"{"name": "f", "key": ["ip"], "counts": "failed_logins", "capacity": 2, "refill": "none"}"#,
    );
    reject(&small, "rate_limits.rules[0].capacity", "mistypes twice");
    let not_login = config(
        r#"{"name": "f", "key": ["ip"], "routes": ["api"], "counts": "failed_logins", "capacity": 5, "refill": "none"}"#,
    );
    reject(
        &not_login,
        "rate_limits.rules[0].routes[0]",
        "not a login route",
    );
    let user_key = config(r#"{"name": "f", "key": ["username"], "capacity": 5, "refill": "none"}"#);
    reject(&user_key, "rate_limits.rules[0].key", "failed_logins");
    let self_count = config(
        r#"{"name": "f", "key": ["username"], "counts": "usernames", "capacity": 5, "refill": "none"}"#,
    );
    reject(
        &self_count,
        "rate_limits.rules[0].key",
        "cannot be keyed on the username",
    );
    let no_field = config(PER_USER).replace(r#", "username_field": "username""#, "");
    reject(&no_field, "rate_limits.rules[0].key", "username_field");
    let bad_status = config(PER_IP).replace(
        r#""username_field": "username""#,
        r#""username_field": "username", "failure_statuses": [200]"#,
    );
    reject(&bad_status, "login.failure_statuses[0]", "error status");
}
