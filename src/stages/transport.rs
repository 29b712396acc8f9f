//! The `transport` section and stage: route classes that must be reached
//! over TLS, and the security headers every response of a route class
//! carries (`Strict-Transport-Security`, `Cache-Control: no-store` on
//! authentication routes, ...).
//!
//! Whether a request came over TLS is read from the connection (the
//! proxy's `connection.tls_version` property, one host call, on routes
//! that require TLS only), or, behind a load balancer that terminates TLS
//! and overwrites the header, from `X-Forwarded-Proto`. `:scheme` is not
//! evidence: over cleartext HTTP/2 the client sets it, and Envoy passes it
//! on.

use crate::core::config_error::{err, is_header_name, ByName, ConfigError, PerRoute};
use crate::core::mode::{string_enum, Mode};
use crate::core::request::HeaderMap;
use crate::core::routes::{RouteId, RouteTable};
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::Connection;
use serde::Deserialize;

/// Where the request's TLS status comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsFrom {
    /// The downstream connection, as the proxy terminated it.
    #[default]
    Connection,
    /// `X-Forwarded-Proto: https`, set by a trusted edge that overwrites
    /// the client's copy.
    ForwardedProto,
}

string_enum!(TlsFrom, "`connection` or `x-forwarded-proto`", {
    "connection" => TlsFrom::Connection,
    "x-forwarded-proto" => TlsFrom::ForwardedProto,
});

/// What one route class is held to.
#[derive(Debug, Clone, Default)]
struct RoutePolicy {
    require_tls: bool,
    /// Lower-case names; set on every response, replacing the upstream's.
    response_headers: Vec<(String, String)>,
}

/// The compiled `transport` section.
#[derive(Debug, Clone)]
pub struct Transport {
    pub mode: Mode,
    tls_from: TlsFrom,
    policies: PerRoute<RoutePolicy>,
}

impl Transport {
    fn policy(&self, route: RouteId) -> Option<&RoutePolicy> {
        self.policies.get(route)
    }

    /// The headers every response of `route` carries.
    pub fn response_headers(&self, route: RouteId) -> &[(String, String)] {
        self.policy(route)
            .map_or(&[], |p| p.response_headers.as_slice())
    }
}

/// The check: a plain-HTTP request to a route class that requires TLS is
/// refused (`transport.tls_required`).
pub fn check(
    t: &Transport,
    route: RouteId,
    headers: &HeaderMap<'_>,
    connection: &dyn Connection,
    findings: &mut Vec<Finding>,
) {
    if !t.policy(route).is_some_and(|p| p.require_tls) {
        return;
    }
    let tls = match t.tls_from {
        TlsFrom::Connection => connection.tls(),
        // One line, exactly `https`: a list means more than one hop wrote
        // it, and the client's own copy may be among them.
        TlsFrom::ForwardedProto => {
            let mut lines = headers.get_all("x-forwarded-proto");
            matches!((lines.next(), lines.next()), (Some(v), None) if v.eq_ignore_ascii_case(b"https"))
        }
    };
    if !tls {
        findings.push(Finding::new(Stage::Transport, Reason::TlsRequired, t.mode));
    }
}

/// A route class's transport policy; fields left out keep `defaults`.
#[derive(Deserialize, Default, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRoutePolicy {
    /// Refuse plain-HTTP requests (default false).
    #[serde(default)]
    require_tls: Option<bool>,
    /// Header name → value, set on every response (added to `defaults`'s;
    /// a name given here replaces the default's value).
    #[serde(default)]
    response_headers: Option<ByName<String>>,
}

/// The `transport` section.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTransport {
    /// Mode of transport.tls_required findings; the top-level mode by default.
    #[serde(default)]
    mode: Option<Mode>,
    /// Where a request's TLS status comes from (default `connection`).
    #[serde(default)]
    tls_from: TlsFrom,
    /// The policy of every route class.
    #[serde(default)]
    defaults: RawRoutePolicy,
    /// Per route class name (`default` included): what differs from `defaults`.
    #[serde(default)]
    routes: ByName<RawRoutePolicy>,
}

/// Response headers palisade must not set: framing and connection
/// management are the proxy's, cookies are not security headers.
const NOT_SETTABLE: [&str; 7] = [
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "set-cookie",
];

fn headers(raw: &[(String, String)], at: &str) -> Result<Vec<(String, String)>, ConfigError> {
    raw.iter()
        .map(|(name, value)| {
            let path = format!("{at}.{name}");
            let lower = name.to_ascii_lowercase();
            if !is_header_name(name) {
                return Err(err(path, "not a valid HTTP header name"));
            }
            if NOT_SETTABLE.contains(&lower.as_str()) {
                return Err(err(
                    path,
                    "palisade does not set this header (framing, connection or cookies)",
                ));
            }
            // Visible ASCII and spaces: nothing that could end the field.
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            {
                return Err(err(path, "a header value is visible ASCII text, not empty"));
            }
            Ok((lower, value.trim().to_string()))
        })
        .collect()
}

fn compile_policy(
    defaults: &RawRoutePolicy,
    own: Option<&RawRoutePolicy>,
    at: &str,
) -> Result<RoutePolicy, ConfigError> {
    let mut response_headers = headers(
        defaults.response_headers.as_ref().map_or(&[][..], |h| &h.0),
        "transport.defaults.response_headers",
    )?;
    if let Some(over) = own.and_then(|o| o.response_headers.as_ref()) {
        for (name, value) in headers(&over.0, &format!("{at}.response_headers"))? {
            match response_headers.iter_mut().find(|(n, _)| *n == name) {
                Some(pair) => pair.1 = value,
                None => response_headers.push((name, value)),
            }
        }
    }
    Ok(RoutePolicy {
        require_tls: own
            .and_then(|o| o.require_tls)
            .or(defaults.require_tls)
            .unwrap_or(false),
        response_headers,
    })
}

/// Checks and compiles the `transport` section (`None`: absent, off).
pub fn compile(
    raw: Option<RawTransport>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Transport>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let policies = PerRoute::compile(routes, "transport", &raw.routes.0, |own, at| {
        compile_policy(&raw.defaults, own, at)
    })?;
    Ok(Some(Transport {
        mode: raw.mode.unwrap_or(global),
        tls_from: raw.tls_from,
        policies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::request::encode_map;
    use crate::core::routes::{PathMatcher, RouteClass};
    use std::cell::Cell;

    fn routes() -> RouteTable {
        let class = |name: &str| RouteClass {
            name: name.to_string(),
            matcher: PathMatcher::Prefix(format!("/{name}")),
            methods: None,
        };
        RouteTable::new(vec![class("login"), class("api")])
    }

    fn transport(json: &str) -> Result<Option<Transport>, ConfigError> {
        let raw: RawTransport =
            serde_json::from_str(json).map_err(|e| err("transport", e.to_string()))?;
        compile(Some(raw), Mode::Enforce, &routes())
    }

    /// A connection that counts how often its TLS status is asked for.
    struct Conn {
        tls: bool,
        asked: Cell<u32>,
    }

    impl Connection for Conn {
        fn peer(&self) -> Option<String> {
            None
        }
        fn tls(&self) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.tls
        }
    }

    fn refused(t: &Transport, path: &str, extra: &[(&str, &str)], tls: bool) -> (bool, u32) {
        let mut pairs = vec![(":method", "GET"), (":path", path)];
        pairs.extend_from_slice(extra);
        let bytes = encode_map(&pairs);
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        let conn = Conn {
            tls,
            asked: Cell::new(0),
        };
        let mut findings = Vec::new();
        check(
            t,
            routes().classify("GET", path),
            &map,
            &conn,
            &mut findings,
        );
        (!findings.is_empty(), conn.asked.get())
    }

    #[test]
    fn plain_http_is_refused_where_tls_is_required_and_only_there_is_the_connection_asked() {
        let t = transport(r#"{"routes": {"login": {"require_tls": true}}}"#)
            .ok()
            .flatten()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(refused(&t, "/login", &[], false), (true, 1));
        assert_eq!(refused(&t, "/login", &[], true), (false, 1));
        // A client's `:scheme` or forwarded proto is not evidence here.
        assert_eq!(
            refused(&t, "/login", &[("x-forwarded-proto", "https")], false),
            (true, 1)
        );
        assert_eq!(refused(&t, "/api", &[], false), (false, 0));
    }

    #[test]
    fn a_trusted_forwarded_proto_is_one_line_of_https() {
        let t =
            transport(r#"{"tls_from": "x-forwarded-proto", "defaults": {"require_tls": true}}"#)
                .ok()
                .flatten()
                .unwrap_or_else(|| unreachable!());
        assert_eq!(
            refused(&t, "/api", &[("x-forwarded-proto", "HTTPS")], false),
            (false, 0)
        );
        assert!(refused(&t, "/api", &[("x-forwarded-proto", "http")], true).0);
        assert!(refused(&t, "/api", &[], true).0);
        let two = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ];
        assert!(refused(&t, "/api", &two, true).0);
    }

    #[test]
    fn route_headers_add_to_and_replace_the_defaults() {
        let t = transport(
            r#"{"defaults": {"response_headers": {"Strict-Transport-Security": "max-age=63072000", "x-frame-options": "DENY"}},
                "routes": {"login": {"response_headers": {"cache-control": "no-store", "x-frame-options": "SAMEORIGIN"}}}}"#,
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| unreachable!());
        let login = routes().classify("GET", "/login");
        let api = routes().classify("GET", "/api");
        let pairs = |r| {
            t.response_headers(r)
                .iter()
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(login),
            [
                "strict-transport-security: max-age=63072000",
                "x-frame-options: SAMEORIGIN",
                "cache-control: no-store"
            ]
        );
        assert_eq!(
            pairs(api),
            [
                "strict-transport-security: max-age=63072000",
                "x-frame-options: DENY"
            ]
        );
    }

    #[test]
    fn invalid_sections_are_refused_with_their_path() {
        for (json, path) in [
            (r#"{"routes": {"nope": {}}}"#, "transport.routes.nope"),
            (
                r#"{"defaults": {"response_headers": {"bad name": "x"}}}"#,
                "transport.defaults.response_headers.bad name",
            ),
            (
                r#"{"defaults": {"response_headers": {"set-cookie": "a=b"}}}"#,
                "transport.defaults.response_headers.set-cookie",
            ),
            (
                r#"{"routes": {"api": {"response_headers": {"x-a": "a\r\nb: c"}}}}"#,
                "transport.routes.api.response_headers.x-a",
            ),
            (
                r#"{"routes": {"api": {"response_headers": {"x-a": ""}}}}"#,
                "transport.routes.api.response_headers.x-a",
            ),
        ] {
            match transport(json) {
                Err(e) => assert_eq!(e.path, path, "{json}: {e}"),
                Ok(_) => unreachable!("{json} was accepted"),
            }
        }
    }
}
