//! Impossible travel through the whole pipeline: the user and country the
//! earlier stages found, the refusal, and what monitor mode does.

use super::*;

fn config(extra: &str) -> String {
    format!(
        r#"{{
        "routes": [{{"name": "api", "prefix": "/api"}}, {{"name": "public", "prefix": "/public"}}],
        "user": {{"header": "x-user-id"}},
        "geo": {{"header": "x-geo-country",
                 "impossible_travel": {{"within": "2h", "routes": ["api"]{extra}}}}}
    }}"#
    )
}

fn from(f: &Fixture, path: &str, user: &str, country: &str) -> (u16, Option<String>) {
    let mut headers = vec![("x-user-id", user)];
    if !country.is_empty() {
        headers.push(("x-geo-country", country));
    }
    match f.send("GET", path, &headers) {
        Verdict::Allow { .. } => (200, None),
        Verdict::Respond(r) => {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            (r.status, body["reason"].as_str().map(str::to_string))
        }
    }
}

#[test]
fn a_second_country_within_the_window_is_refused_and_the_owner_is_not() {
    let f = Fixture::new(&config(""));
    assert_eq!(from(&f, "/api/a", "alice", "DE").0, 200);
    f.clock.advance(60_000);
    assert_eq!(
        from(&f, "/api/a", "alice", "BR"),
        (403, Some("geo.impossible_travel".into()))
    );
    assert_eq!(from(&f, "/api/a", "alice", "DE").0, 200, "the owner");
    assert_eq!(from(&f, "/api/a", "bob", "BR").0, 200, "another user");
    assert_eq!(
        from(&f, "/api/a", "alice", "").0,
        200,
        "no country: not compared"
    );
    assert_eq!(
        from(&f, "/public/x", "alice", "BR").0,
        200,
        "route not checked"
    );
    // Two hours after alice was last seen, Brazil is believable.
    f.clock.advance(2 * 3_600_000 + 1);
    assert_eq!(from(&f, "/api/a", "alice", "BR").0, 200);
    assert_eq!(
        from(&f, "/api/a", "alice", "DE").1.as_deref(),
        Some("geo.impossible_travel")
    );
}

#[test]
fn monitor_mode_logs_and_follows_the_user() {
    let f = Fixture::new(&config(r#", "mode": "monitor""#));
    assert_eq!(from(&f, "/api/a", "alice", "DE").0, 200);
    assert_eq!(from(&f, "/api/a", "alice", "BR").0, 200);
    let flagged = Counter::Finding {
        stage: Stage::Geo,
        reason: Reason::GeoImpossibleTravel,
        mode: Mode::Monitor,
        route: f.route("api"),
    };
    assert_eq!(f.metrics.get(&flagged), 1);
    assert_eq!(from(&f, "/api/a", "alice", "BR").0, 200);
    assert_eq!(f.metrics.get(&flagged), 1, "now in Brazil");
}

#[test]
fn users_are_kept_as_keyed_hashes() {
    let f = Fixture::new(&config(""));
    from(&f, "/api/a", "alice@example.com", "DE");
    assert!(!f.store.holds(b"alice@example.com"));
    assert!(!f.store.holds(b"alice"));
}

#[test]
fn the_section_is_checked() {
    let error = |extra: &str| {
        Policy::from_json(config(extra).as_bytes())
            .err()
            .map(|e| e.path)
    };
    let within = |value: &str| {
        Policy::from_json(config("").replace(r#""2h""#, value).as_bytes())
            .err()
            .map(|e| (e.path, e.message))
    };
    for value in [r#""500ms""#, r#""8d""#] {
        let (path, message) = within(value).unwrap_or_default();
        assert_eq!(path, "geo.impossible_travel.within");
        assert!(message.contains("between 1s and 7d"), "{message}");
    }
    assert_eq!(
        error(r#", "slots": 1"#),
        Some("geo.impossible_travel.slots".into())
    );
    assert_eq!(
        Policy::from_json(config("").replace(r#""api"]"#, r#""nope"]"#).as_bytes())
            .err()
            .map(|e| e.path),
        Some("geo.impossible_travel.routes[0]".into())
    );
}
