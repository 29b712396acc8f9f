//! The `geo` section and stage: the client's country from a header a
//! trusted component sets, and country allow or deny lists per route class.
//!
//! Trust model: palisade cannot tell where a country came from; it reads
//! the configured header as the request carries it. The header is only
//! worth what sets it: Envoy's geoip filter (which overwrites a client's
//! copy only when its lookup finds the address, so the client's copy must
//! be removed before it runs), or an edge such as a CDN that always
//! overwrites it. A value that is not two letters (absent, empty, `--`, a
//! name, several header lines) is no country: `"unknown"` in a rule's list
//! stands for it (an allow list without it refuses such requests, a deny
//! list without it lets them pass).
//!
//! After authentication, `impossible_travel` compares the user's country
//! with the one it was last seen in (`travel`).

pub mod travel;

use crate::core::config_error::{assign_routes, err, is_header_name, ConfigError};
use crate::core::country::{self, Country, CountrySet};
use crate::core::mode::Mode;
use crate::core::request::{Facts, HeaderMap};
use crate::core::routes::RouteTable;
use crate::core::verdict::{Finding, Reason, Stage};
use serde::Deserialize;

/// At most this many rules (a route class has at most one).
const MAX_RULES: usize = 64;

/// The compiled `geo` section.
#[derive(Debug, Clone)]
pub struct Geo {
    pub mode: Mode,
    /// Lower-cased name of the header that carries the country.
    pub header: String,
    rules: Vec<GeoRule>,
    /// Indexed by route id: the rule of that route class.
    by_route: Vec<Option<usize>>,
    pub travel: Option<travel::Travel>,
}

#[derive(Debug, Clone)]
struct GeoRule {
    /// `true`: the countries are the only ones allowed; `false`: they are
    /// refused.
    allow_list: bool,
    /// With "unknown" for the requests without a country.
    countries: CountrySet,
}

impl GeoRule {
    fn allows(&self, country: Option<Country>) -> bool {
        self.countries.contains(country) == self.allow_list
    }
}

/// The classify stage's country step: the country the header names, or
/// none (absent, more than one line, not two letters).
pub fn identify(geo: &Geo, headers: &HeaderMap<'_>, facts: &mut Facts<'_>) {
    let mut lines = headers.get_all(&geo.header);
    facts.country = match (lines.next(), lines.next()) {
        (Some(value), None) => country::parse(value),
        _ => None,
    };
}

/// The route class's country rule, if it has one.
pub fn check(geo: &Geo, facts: &Facts<'_>, findings: &mut Vec<Finding>) {
    let rule = geo
        .by_route
        .get(usize::from(facts.route))
        .copied()
        .flatten()
        .and_then(|i| geo.rules.get(i));
    if rule.is_some_and(|r| !r.allows(facts.country)) {
        findings.push(Finding::new(Stage::Geo, Reason::GeoDenied, geo.mode));
    }
}

/// The `geo` section.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    /// Mode of geo.denied findings; the top-level mode by default.
    #[serde(default)]
    mode: Option<Mode>,
    /// The header a trusted component sets to the client's ISO 3166-1
    /// alpha-2 country code (Envoy's geoip filter, a CDN).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::core::config_error::HEADER_NAME_PATTERN)))]
    header: String,
    /// At most one rule per route class.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_RULES)))]
    rules: Vec<RawGeoRule>,
    /// The same user from two countries too close in time.
    #[serde(default)]
    impossible_travel: Option<travel::RawTravel>,
}

/// Exactly one of `allow` and `deny`; "unknown" in either list stands for
/// requests without a country.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {"required": ["allow"], "not": {"required": ["deny"]}},
    {"required": ["deny"], "not": {"required": ["allow"]}}
])))]
#[serde(deny_unknown_fields)]
struct RawGeoRule {
    #[cfg_attr(feature = "schema", schemars(length(min = 1), inner(regex(pattern = crate::core::config_error::NAME_PATTERN))))]
    routes: Vec<String>,
    /// Only these countries pass ("unknown": requests without one too).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1), inner(regex(pattern = country::LIST_PATTERN)), extend("uniqueItems" = true)))]
    allow: Option<Vec<String>>,
    /// These countries are refused ("unknown": requests without one too).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1), inner(regex(pattern = country::LIST_PATTERN)), extend("uniqueItems" = true)))]
    deny: Option<Vec<String>>,
}

/// Checks and compiles the `geo` section (`None`: absent, the stage is off).
pub fn compile(
    raw: Option<RawGeo>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Geo>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if !is_header_name(&raw.header) {
        return Err(err(
            "geo.header",
            format!("`{}` is not a valid HTTP header name", raw.header),
        ));
    }
    if raw.rules.len() > MAX_RULES {
        return Err(err("geo.rules", format!("at most {MAX_RULES} rules")));
    }
    let mut by_route = vec![None; routes.len_with_default()];
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let at = format!("geo.rules[{i}]");
        assign_routes(
            &mut by_route,
            routes,
            &rule.routes,
            &format!("{at}.routes"),
            i,
            "a geo",
        )?;
        let (allow_list, list, field) = match (rule.allow, rule.deny) {
            (Some(list), None) => (true, list, "allow"),
            (None, Some(list)) => (false, list, "deny"),
            _ => {
                return Err(err(
                    at,
                    "needs exactly one of `allow` (only these countries pass) and `deny` (these are refused)",
                ))
            }
        };
        let path = format!("{at}.{field}");
        let countries = CountrySet::compile(&list, &path)?;
        rules.push(GeoRule {
            allow_list,
            countries,
        });
    }
    let mode = raw.mode.unwrap_or(global);
    Ok(Some(Geo {
        mode,
        header: raw.header.to_ascii_lowercase(),
        rules,
        by_route,
        travel: travel::compile(raw.impossible_travel, mode, routes)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::request::encode_map;
    use crate::core::routes::RouteId;
    use crate::stages::routes::{compile_routes, RawRoute};

    fn route_table() -> RouteTable {
        let raw: Vec<RawRoute> = serde_json::from_str(
            r#"[{"name": "admin", "prefix": "/admin"}, {"name": "login", "prefix": "/login"},
                {"name": "api", "prefix": "/api"}]"#,
        )
        .unwrap_or_default();
        compile_routes(raw).unwrap_or_else(|_| RouteTable::new(Vec::new()))
    }

    fn compiled(json: &str) -> Result<Option<Geo>, ConfigError> {
        let doc = format!(
            r#"{{"routes": [{{"name": "admin", "prefix": "/admin"}}, {{"name": "login", "prefix": "/login"}},
            {{"name": "api", "prefix": "/api"}}], "geo": {json}}}"#
        );
        crate::config::Policy::from_json(doc.as_bytes()).map(|p| p.geo)
    }

    fn geo(json: &str) -> Geo {
        match compiled(json) {
            Ok(Some(geo)) => geo,
            other => unreachable!("{json}: {:?}", other.err()),
        }
    }

    fn error_path(json: &str) -> String {
        compiled(json).err().map(|e| e.path).unwrap_or_default()
    }

    /// The finding's mode for a request on `route` with these header
    /// lines, or `None` when it passes.
    fn verdict(geo: &Geo, route: &str, lines: &[&str]) -> Option<Mode> {
        let routes = route_table();
        let id: RouteId = routes.id_of(route).unwrap_or(routes.default_id());
        let pairs: Vec<(&str, &str)> = lines.iter().map(|v| ("X-Geo-Country", *v)).collect();
        let bytes = encode_map(&pairs);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        let mut facts = Facts::new(id, "");
        identify(geo, &headers, &mut facts);
        let mut findings = Vec::new();
        check(geo, &facts, &mut findings);
        assert!(findings
            .iter()
            .all(|f| f.reason == Reason::GeoDenied && f.stage == Stage::Geo));
        findings.first().map(|f| f.mode)
    }

    const POLICY: &str = r#"{"header": "x-geo-country", "rules": [
        {"routes": ["admin"], "allow": ["US", "CA"]},
        {"routes": ["login"], "deny": ["KP", "XX"]}]}"#;

    #[test]
    fn allow_lists_pass_only_their_countries() {
        let g = geo(POLICY);
        assert_eq!(verdict(&g, "admin", &["US"]), None);
        assert_eq!(verdict(&g, "admin", &[" ca "]), None);
        assert_eq!(verdict(&g, "admin", &["DE"]), Some(Mode::Enforce));
        assert_eq!(verdict(&g, "admin", &["KP"]), Some(Mode::Enforce));
    }

    #[test]
    fn deny_lists_refuse_only_their_countries() {
        let g = geo(POLICY);
        assert_eq!(verdict(&g, "login", &["KP"]), Some(Mode::Enforce));
        assert_eq!(verdict(&g, "login", &["kp"]), Some(Mode::Enforce));
        assert_eq!(verdict(&g, "login", &["XX"]), Some(Mode::Enforce));
        assert_eq!(verdict(&g, "login", &["US"]), None);
        assert_eq!(verdict(&g, "login", &["DE"]), None);
    }

    #[test]
    fn routes_without_a_rule_are_not_checked() {
        let g = geo(POLICY);
        for lines in [&["KP"][..], &[], &["--"]] {
            assert_eq!(verdict(&g, "api", lines), None, "{lines:?}");
            assert_eq!(verdict(&g, "default", lines), None, "{lines:?}");
        }
    }

    #[test]
    fn anything_but_one_two_letter_line_is_unknown() {
        let g = geo(POLICY);
        let unknown: [&[&str]; 7] = [
            &[],
            &[""],
            &["--"],
            &["T1"],
            &["USA"],
            &["US, KP"],
            // Two lines: which one would the upstream read?
            &["US", "US"],
        ];
        for lines in unknown {
            // An allow list without "unknown" refuses it, a deny list
            // without it lets it pass.
            assert_eq!(
                verdict(&g, "admin", lines),
                Some(Mode::Enforce),
                "{lines:?}"
            );
            assert_eq!(verdict(&g, "login", lines), None, "{lines:?}");
        }
        let listed = geo(r#"{"header": "x-geo-country", "rules": [
                {"routes": ["login"], "deny": ["KP", "unknown"]},
                {"routes": ["admin"], "allow": ["unknown", "US"]}]}"#);
        assert_eq!(verdict(&listed, "login", &["--"]), Some(Mode::Enforce));
        assert_eq!(verdict(&listed, "login", &[]), Some(Mode::Enforce));
        assert_eq!(verdict(&listed, "login", &["DE"]), None);
        assert_eq!(verdict(&listed, "admin", &["--"]), None);
        assert_eq!(verdict(&listed, "admin", &["US"]), None);
        assert_eq!(verdict(&listed, "admin", &["DE"]), Some(Mode::Enforce));
    }

    #[test]
    fn the_country_becomes_a_fact_on_every_route() {
        let g = geo(POLICY);
        let bytes = encode_map(&[("x-geo-country", "de")]);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        let mut facts = Facts::new(0, "");
        identify(&g, &headers, &mut facts);
        assert_eq!(facts.country, Some(*b"DE"));
    }

    #[test]
    fn monitor_mode_findings_do_not_deny() {
        let g = geo(r#"{"mode": "monitor", "header": "x-geo-country",
                "rules": [{"routes": ["login"], "deny": ["KP"]}]}"#);
        assert_eq!(verdict(&g, "login", &["KP"]), Some(Mode::Monitor));
    }

    #[test]
    fn errors_name_the_json_path() {
        let h = r#""header": "x-geo-country""#;
        for (rules, path) in [
            (
                r#"[{"routes": ["login"], "deny": ["KP", "kp"]}]"#,
                "geo.rules[0].deny[1]",
            ),
            (
                r#"[{"routes": ["admin"], "allow": ["US"]}, {"routes": ["login"], "deny": ["KP", "XXX"]}]"#,
                "geo.rules[1].deny[1]",
            ),
            (
                r#"[{"routes": ["login"], "allow": []}]"#,
                "geo.rules[0].allow",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["KP"], "allow": ["US"]}]"#,
                "geo.rules[0]",
            ),
            (r#"[{"routes": ["login"]}]"#, "geo.rules[0]"),
            (
                r#"[{"routes": ["nope"], "deny": ["KP"]}]"#,
                "geo.rules[0].routes[0]",
            ),
            (r#"[{"routes": [], "deny": ["KP"]}]"#, "geo.rules[0].routes"),
            (
                r#"[{"routes": ["login"], "deny": ["KP"]}, {"routes": ["api", "login"], "deny": ["US"]}]"#,
                "geo.rules[1].routes[1]",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["KP", "KP"]}]"#,
                "geo.rules[0].deny[1]",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["Unknown"]}]"#,
                "geo.rules[0].deny[0]",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["unknown", "unknown"]}]"#,
                "geo.rules[0].deny[1]",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["KP"], "unknown": "deny"}]"#,
                "geo.rules[0].unknown",
            ),
            (
                r#"[{"routes": ["login"], "deny": "KP"}]"#,
                "geo.rules[0].deny",
            ),
            (
                r#"[{"routes": ["login"], "deny": ["KP", 7]}]"#,
                "geo.rules[0].deny[1]",
            ),
            (
                r#"[{"routes": "login", "deny": ["KP"]}]"#,
                "geo.rules[0].routes",
            ),
            (r#"[{"deny": ["KP"]}]"#, "geo.rules[0]"),
            (r#"[7]"#, "geo.rules[0]"),
            (r#"{}"#, "geo.rules"),
        ] {
            assert_eq!(
                error_path(&format!("{{{h}, \"rules\": {rules}}}")),
                path,
                "{rules}"
            );
        }
        assert_eq!(error_path(r#"{"header": "x geo"}"#), "geo.header");
        assert_eq!(error_path(r#"{"header": 7}"#), "geo.header");
        assert_eq!(error_path(r#"{"rules": []}"#), "geo");
        assert_eq!(error_path(r#"{"header": "h", "bogus": 1}"#), "geo.bogus");
        assert_eq!(error_path(r#"{"header": "h", "mode": "off"}"#), "geo.mode");
        assert_eq!(error_path(r#"["h"]"#), "geo");
        let nulls = r#"{"header": "h", "mode": null, "rules": [{"routes": ["login"], "deny": ["KP"], "allow": null}]}"#;
        assert!(compiled(nulls).is_ok_and(|g| g.is_some()));
        assert!(compiled(r#"{"header": "X-Geo-Country"}"#)
            .is_ok_and(|g| g.is_some_and(|g| g.header == "x-geo-country")));
    }

    /// The whole pipeline: the geo step before the limits, and the
    /// `countries` filter of rate-limit rules.
    mod pipeline {
        use crate::config::Policy;
        use crate::core::hosts::HostKind;
        use crate::core::metrics::MemoryMetrics;
        use crate::core::request::{encode_map, HeaderMap};
        use crate::pipeline::{Engine, Services, Verdict};
        use crate::state::host::{ManualClock, MemoryStore};
        use crate::state::slots;

        const POLICY: &str = r#"{
            "routes": [{"name": "login", "prefix": "/login"}, {"name": "admin", "prefix": "/admin"}],
            "geo": {"header": "x-geo-country", "rules": [
                {"routes": ["admin"], "allow": ["US"]},
                {"routes": ["login"], "deny": ["XX"]}]},
            "rate_limits": {"rules": [
                {"name": "strict", "key": ["ip"], "routes": ["login"], "countries": ["KP", "unknown"],
                 "capacity": 2, "refill": "none"},
                {"name": "everyone", "key": ["ip"], "routes": ["login"], "capacity": 20, "refill": "none"}
            ]}
        }"#;

        struct World {
            engine: Engine,
            store: MemoryStore,
            clock: ManualClock,
            metrics: MemoryMetrics,
        }

        impl World {
            fn new(json: &str) -> World {
                let policy =
                    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
                let store = MemoryStore::new();
                slots::ensure_pages(&store, policy.shared_keys())
                    .unwrap_or_else(|e| unreachable!("{e:?}"));
                World {
                    engine: Engine::new(policy, [3; 16], HostKind::Envoy)
                        .unwrap_or_else(|e| unreachable!("{e}")),
                    store,
                    clock: ManualClock::at(1_700_000_000_000),
                    metrics: MemoryMetrics::default(),
                }
            }

            /// Status and reason of a request from `peer` with these
            /// country header lines.
            fn send(&self, path: &str, peer: &str, countries: &[&str]) -> (u16, String) {
                let mut pairs = vec![(":method", "GET"), (":path", path)];
                pairs.extend(countries.iter().map(|c| ("x-geo-country", *c)));
                let bytes = encode_map(&pairs);
                let headers = HeaderMap::decode(&bytes).unwrap_or_default();
                let services = Services {
                    store: &self.store,
                    clock: &self.clock,
                    metrics: &self.metrics,
                };
                let peer = format!("{peer}:4000");
                match self
                    .engine
                    .evaluate(&headers, &|| Some(peer.clone()), &services)
                {
                    Verdict::Allow { .. } => (200, String::new()),
                    Verdict::Respond(r) => {
                        let body: serde_json::Value =
                            serde_json::from_str(&r.body).unwrap_or_default();
                        (r.status, body["reason"].as_str().unwrap_or("").to_string())
                    }
                }
            }

            fn statuses(&self, path: &str, peer: &str, countries: &[&str], n: usize) -> Vec<u16> {
                (0..n).map(|_| self.send(path, peer, countries).0).collect()
            }
        }

        #[test]
        fn a_denied_country_gets_403_geo_denied() {
            let w = World::new(POLICY);
            assert_eq!(
                w.send("/admin", "192.0.2.1", &["DE"]),
                (403, "geo.denied".into())
            );
            assert_eq!(
                w.send("/admin", "192.0.2.1", &[]),
                (403, "geo.denied".into())
            );
            assert_eq!(w.send("/admin", "192.0.2.1", &["us"]).0, 200);
            assert_eq!(
                w.send("/login", "192.0.2.2", &["XX"]),
                (403, "geo.denied".into())
            );
        }

        #[test]
        fn a_geo_refusal_takes_no_token() {
            let w = World::new(POLICY);
            // Refused before the limits: the address keeps its whole bucket.
            for _ in 0..5 {
                assert_eq!(w.send("/login", "192.0.2.3", &["XX"]).1, "geo.denied");
            }
            assert_eq!(
                w.statuses("/login", "192.0.2.3", &["FR"], 20),
                vec![200; 20]
            );
            assert_eq!(
                w.send("/login", "192.0.2.3", &["FR"]),
                (429, "rl.exhausted".into())
            );
        }

        #[test]
        fn listed_countries_get_the_stricter_rule() {
            let w = World::new(POLICY);
            // KP: the capacity-2 rule applies, then refuses.
            assert_eq!(
                w.statuses("/login", "192.0.2.4", &["KP"], 2),
                vec![200, 200]
            );
            assert_eq!(
                w.send("/login", "192.0.2.4", &["KP"]),
                (429, "rl.exhausted".into())
            );
            // Another country from another address: only the capacity-20 one.
            assert_eq!(
                w.statuses("/login", "192.0.2.5", &["US"], 20),
                vec![200; 20]
            );
            assert_eq!(w.send("/login", "192.0.2.5", &["US"]).0, 429);
            // No country at all: "unknown" is listed, so the strict one.
            assert_eq!(
                w.statuses("/login", "192.0.2.6", &["--"], 2),
                vec![200, 200]
            );
            assert_eq!(w.send("/login", "192.0.2.6", &[]).0, 429);
        }

        #[test]
        fn countries_need_the_geo_section_and_codes() {
            let error = |json: &str| Policy::from_json(json.as_bytes()).err().map(|e| e.path);
            let rules = |countries: &str| {
                format!(
                    r#"{{"rules": [{{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none"}},
                        {{"name": "b", "key": ["ip"], "capacity": 1, "refill": "none", "countries": {countries}}}]}}"#
                )
            };
            let rule = |countries: &str| {
                format!(
                    r#"{{"rate_limits": {}, "geo": {{"header": "x-geo-country"}}}}"#,
                    rules(countries)
                )
            };
            assert_eq!(error(&rule(r#"["KP", "unknown"]"#)), None);
            assert_eq!(
                error(&rule(r#"["KP", "kp"]"#)).as_deref(),
                Some("rate_limits.rules[1].countries[1]")
            );
            assert_eq!(
                error(&rule("[]")).as_deref(),
                Some("rate_limits.rules[1].countries")
            );
            assert_eq!(
                error(&rule(r#"["Unknown"]"#)).as_deref(),
                Some("rate_limits.rules[1].countries[0]")
            );
            let without_geo = format!(r#"{{"rate_limits": {}}}"#, rules(r#"["KP"]"#));
            assert_eq!(
                error(&without_geo).as_deref(),
                Some("rate_limits.rules[1].countries")
            );
            assert_eq!(error(r#"{"geo": null}"#).as_deref(), Some("geo"));
            assert_eq!(
                error(r#"{"geo": {"header": "x-geo-country", "rules": {}}}"#).as_deref(),
                Some("geo.rules")
            );
        }
    }
}
