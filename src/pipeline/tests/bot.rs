//! The bot stage through the whole pipeline: thresholds, challenge round
//! trip, authentication, allowlist, behaviour and the fingerprint key.

use super::*;
use crate::stages::bot::{challenge, fixtures};
use sha2::{Digest, Sha256};

const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(extra: &str) -> String {
    format!(
        r#"{{
        "routes": [{{"name": "api", "prefix": "/api"}}, {{"name": "account", "prefix": "/account"}}],
        "api_keys": {{"header": "x-api-key", "keys": [{{"id": "partner", "sha256": "{}"}}]}},
        "authorization": {{"policies": [{{"routes": ["account"], "credentials": ["api_key"]}}]}},
        "bot": {{"challenge": {{"secret": {{"base64": "{SECRET}"}}, "difficulty": 6}}{extra}}}
    }}"#,
        hex_sha256(b"partner-key")
    )
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fixture header set plus the pseudo-headers and `extra`.
fn request(f: &Fixture, set: &str, path: &str, extra: &[(&str, &str)]) -> Verdict {
    let set = fixtures::headers(set);
    let mut owned: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":path".into(), path.into()),
        (":scheme".into(), "https".into()),
        (":authority".into(), "shop.example".into()),
    ];
    for (n, v) in set.pairs() {
        owned.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    owned.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let pairs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    f.send_headers(&pairs)
}

fn upstream_header(verdict: &Verdict, name: &str) -> Option<String> {
    match verdict {
        Verdict::Allow { upstream, .. } => upstream
            .set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        Verdict::Respond(_) => None,
    }
}

fn refused(verdict: &Verdict) -> Option<&LocalResponse> {
    match verdict {
        Verdict::Respond(r) => Some(r),
        Verdict::Allow { .. } => None,
    }
}

fn reason(verdict: &Verdict) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(&refused(verdict)?.body).ok()?;
    body["reason"].as_str().map(str::to_string)
}

/// Brute-forces a solution to the challenge in a JSON challenge body.
fn solve(response: &LocalResponse) -> String {
    let body: serde_json::Value =
        serde_json::from_str(&response.body).unwrap_or_else(|e| unreachable!("{e}"));
    let token = body["challenge"]["token"].as_str().unwrap_or_default();
    let difficulty = body["challenge"]["difficulty"].as_u64().unwrap_or(64) as u32;
    for nonce in 0u64.. {
        let solution = format!("{token}.{nonce}");
        let digest = Sha256::digest(solution.as_bytes());
        let mut zeros = 0;
        for byte in digest {
            zeros += byte.leading_zeros();
            if byte != 0 {
                break;
            }
        }
        if zeros >= difficulty {
            return solution;
        }
    }
    unreachable!("no nonce")
}

#[test]
fn browsers_pass_with_a_low_score_and_their_fingerprint_upstream() {
    let f = Fixture::new(&config(""));
    for set in [
        "chrome_windows_navigate",
        "firefox_linux_navigate",
        "safari_macos_navigate",
    ] {
        let verdict = request(&f, set, "/api/items", &[("x-palisade-bot-score", "0")]);
        let score = upstream_header(&verdict, "x-palisade-bot-score");
        assert_eq!(score.as_deref(), Some("2"), "{set}");
        assert_eq!(
            upstream_header(&verdict, "x-palisade-bot-reasons").as_deref(),
            Some("")
        );
        let fp = upstream_header(&verdict, "x-palisade-fingerprint").unwrap_or_default();
        assert_eq!(fp.len(), 16, "{set}");
        let Verdict::Allow { upstream, .. } = &verdict else {
            unreachable!()
        };
        assert!(upstream.remove.iter().any(|h| h == "x-palisade-bot-score"));
    }
}

#[test]
fn a_headless_browser_is_denied_before_authentication() {
    let f = Fixture::new(&config(""));
    let verdict = request(&f, "headless_chrome", "/api/items", &[]);
    assert_eq!(refused(&verdict).map(|r| r.status), Some(403));
    assert_eq!(reason(&verdict).as_deref(), Some("bot.deny"));
    let denied = Counter::Finding {
        stage: Stage::Bot,
        reason: Reason::BotDeny,
        mode: Mode::Enforce,
        route: f.route("api"),
    };
    assert_eq!(f.metrics.get(&denied), 1);
}

#[test]
fn monitor_mode_scores_and_forwards() {
    let f = Fixture::new(&config(r#", "mode": "monitor""#));
    let verdict = request(&f, "headless_chrome", "/api/items", &[]);
    let score: u32 = upstream_header(&verdict, "x-palisade-bot-score")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(score >= 90, "{score}");
    assert_eq!(
        upstream_header(&verdict, "x-palisade-bot-reasons").as_deref(),
        Some("bot.headless_ua")
    );
}

#[test]
fn a_script_is_challenged_and_a_solution_earns_a_pass_bound_to_it() {
    let f = Fixture::new(&config(""));
    let first = request(&f, "curl", "/api/items", &[]);
    let Some(challenge) = refused(&first) else {
        unreachable!("curl was not challenged")
    };
    assert_eq!(challenge.status, 403);
    assert_eq!(header(challenge, "cache-control"), Some("no-store"));
    assert_eq!(reason(&first).as_deref(), Some("bot.challenge"));
    let solution = solve(challenge);

    // An unsolved or foreign solution is challenged again.
    let wrong = format!("{}x", &solution[..solution.len() - 1]);
    let again = request(&f, "curl", "/api/items", &[("x-palisade-pow", &wrong)]);
    assert_eq!(reason(&again).as_deref(), Some("bot.challenge"));
    let other = request(
        &f,
        "python_requests",
        "/api/items",
        &[("x-palisade-pow", &solution)],
    );
    assert_eq!(
        reason(&other).as_deref(),
        Some("bot.challenge"),
        "another fingerprint"
    );

    let solved = request(&f, "curl", "/api/items", &[("x-palisade-pow", &solution)]);
    let Verdict::Allow {
        response_headers, ..
    } = &solved
    else {
        unreachable!("a solved challenge was refused: {solved:?}")
    };
    let cookie = response_headers
        .iter()
        .find(|(n, v)| *n == "set-cookie" && v.starts_with("palisade_pass="))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("Secure"), "https request: {cookie}");
    let pass = cookie.split(';').next().unwrap_or_default().to_string();
    assert!(upstream_header(&solved, "x-palisade-bot-score")
        .and_then(|s| s.parse::<u32>().ok())
        .is_some_and(|s| s < 60));

    // The pass lowers the score for later requests of this client only.
    let later = request(
        &f,
        "curl",
        "/api/items",
        &[("cookie", &format!("a=b; {pass}"))],
    );
    assert!(matches!(later, Verdict::Allow { .. }), "{later:?}");
    let stolen = request(&f, "python_requests", "/api/items", &[("cookie", &pass)]);
    assert_eq!(reason(&stolen).as_deref(), Some("bot.challenge"));
    // Expired.
    f.clock.advance(31 * 60_000);
    let expired = request(&f, "curl", "/api/items", &[("cookie", &pass)]);
    assert_eq!(reason(&expired).as_deref(), Some("bot.challenge"));
}

#[test]
fn a_browser_navigation_gets_the_page() {
    let f = Fixture::new(&config(r#", "thresholds": {"challenge": 20, "deny": 100}"#));
    // A script with a browser's User-Agent and a navigation's accept.
    let verdict = request(&f, "script_as_chrome", "/api/page", &[]);
    let Some(page) = refused(&verdict) else {
        unreachable!("not challenged")
    };
    assert_eq!(
        header(page, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(header(page, "content-security-policy").is_some());
    assert!(page.body.contains("data-token"));
    assert!(page.body.contains(challenge::SOLUTION_COOKIE));
}

#[test]
fn a_verified_api_client_is_not_held_to_its_score() {
    let f = Fixture::new(&config(""));
    // curl with a valid API key on a credential route: allowed.
    let ok = request(&f, "curl", "/account", &[("x-api-key", "partner-key")]);
    assert!(matches!(ok, Verdict::Allow { .. }), "{ok:?}");
    // Without one: the credential stage answers, not the bot.
    let missing = request(&f, "curl", "/account", &[]);
    assert_eq!(reason(&missing).as_deref(), Some("auth.missing"));
    // With the allowlist off, its score decides.
    let f = Fixture::new(&config(r#", "allow": {"authenticated": false}"#));
    let held = request(&f, "curl", "/account", &[("x-api-key", "partner-key")]);
    assert_eq!(reason(&held).as_deref(), Some("bot.challenge"));
}

#[test]
fn allowlisted_addresses_are_not_scored() {
    // The fixture's peer is 192.0.2.10.
    let f = Fixture::new(&config(r#", "allow": {"cidrs": ["192.0.2.0/24"]}"#));
    let verdict = request(&f, "headless_chrome", "/api/items", &[]);
    assert!(matches!(verdict, Verdict::Allow { .. }));
    assert_eq!(upstream_header(&verdict, "x-palisade-bot-score"), None);
    assert!(upstream_header(&verdict, "x-palisade-fingerprint").is_some());
}

#[test]
fn a_browser_walking_ids_at_machine_pace_is_caught_by_behaviour() {
    let f = Fixture::new(&config(""));
    let mut refused_at = None;
    for i in 0..40u64 {
        f.clock.advance(500);
        let verdict = request(
            &f,
            "chrome_windows_fetch",
            &format!("/api/items/{}", 1000 + i),
            &[],
        );
        if refused(&verdict).is_some() {
            refused_at = Some(i);
            break;
        }
    }
    let Some(at) = refused_at else {
        unreachable!("never flagged")
    };
    assert!((4..=12).contains(&at), "flagged at request {at}");
    // The same browser reading at human pace, in no order, is not.
    let f = Fixture::new(&config(""));
    let mut gap = 1_300u64;
    for i in 0..40u64 {
        gap = (gap * 7919 + 1_000) % 9_000 + 400;
        f.clock.advance(gap);
        let item = (i * 7_919) % 5_000;
        let verdict = request(
            &f,
            "chrome_windows_fetch",
            &format!("/api/items/{item}"),
            &[],
        );
        assert!(matches!(verdict, Verdict::Allow { .. }), "request {i}");
    }
}

#[test]
fn fingerprint_is_a_rate_limit_key_across_addresses() {
    let json = r#"{
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "rate_limits": {"rules": [
            {"name": "fp", "key": ["fingerprint"], "capacity": 3, "refill": "none"}
        ]}
    }"#;
    let f = Fixture::new(json);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let ip = format!("198.51.100.{i}");
        let verdict = request(&f, "python_requests", "/login", &[("x-forwarded-for", &ip)]);
        statuses.push(refused(&verdict).map_or(200, |r| r.status));
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Another client software has its own bucket.
    let other = request(&f, "curl", "/login", &[("x-forwarded-for", "198.51.100.9")]);
    assert!(matches!(other, Verdict::Allow { .. }));
    assert!(upstream_header(&other, "x-palisade-fingerprint").is_some());
}

#[test]
fn palisade_headers_are_removed_even_without_the_bot_stage() {
    let f = Fixture::new("{}");
    let verdict = f.send(
        "GET",
        "/",
        &[
            ("x-palisade-bot-score", "0"),
            ("x-palisade-fingerprint", "0000000000000000"),
            ("x-palisade-pow", "forged.1"),
        ],
    );
    let Verdict::Allow { upstream, .. } = &verdict else {
        unreachable!("{verdict:?}")
    };
    for h in [
        "x-palisade-bot-score",
        "x-palisade-fingerprint",
        "x-palisade-pow",
    ] {
        assert!(upstream.remove.iter().any(|r| r == h), "{h}");
    }
    assert!(upstream.set.is_empty());
}
