//! The `routes` section and the classify stage: named route classes by
//! path prefix, exact path or regex, and methods; every request gets one
//! (the unmatched ones `default`). The table itself is in
//! [`crate::core::routes`], since every section names its classes.

#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{check_name, err, is_header_name, ConfigError};
use crate::core::request::HeaderMap;
use crate::core::routes::{PathMatcher, RouteClass, RouteId, RouteTable};
use crate::core::verdict::Pseudo;
use serde::Deserialize;

/// At most this many route classes, `default` aside.
pub const MAX_ROUTES: usize = 255;

/// The classify stage's first step: the route class of the request, or
/// the pseudo-header that makes it unclassifiable.
pub fn classify(routes: &RouteTable, headers: &HeaderMap<'_>) -> Result<RouteId, Pseudo> {
    let (method, path) = request_line(headers)?;
    Ok(routes.classify(method, path))
}

/// `:method` and `:path` as text, and a check that `:authority`, when
/// present, is text too. Envoy's HTTP/2 codec passes raw non-UTF-8 bytes in
/// the query through; reading such a path as empty would classify the
/// request as `default` and skip every route's policy.
fn request_line<'h>(headers: &HeaderMap<'h>) -> Result<(&'h str, &'h str), Pseudo> {
    let text = |name, pseudo| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or(pseudo)
    };
    let method = text(":method", Pseudo::Method)?;
    let path = text(":path", Pseudo::Path)?;
    if headers
        .get(":authority")
        .is_some_and(|v| std::str::from_utf8(v).is_err())
    {
        return Err(Pseudo::Authority);
    }
    Ok((method, path))
}

/// A route class: exactly one of `prefix`, `path` or `regex`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {
        "required": ["prefix"],
        "properties": {"prefix": {"type": "string"}, "path": {"type": "null"}, "regex": {"type": "null"}}
    },
    {
        "required": ["path"],
        "properties": {"path": {"type": "string"}, "prefix": {"type": "null"}, "regex": {"type": "null"}}
    },
    {
        "required": ["regex"],
        "properties": {"regex": {"type": "string"}, "prefix": {"type": "null"}, "path": {"type": "null"}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = NAME_PATTERN), extend("not" = {"enum": ["default"]}))
    )]
    name: String,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    prefix: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    path: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = METHOD_PATTERN)))
    )]
    methods: Option<Vec<String>>,
}

/// An upper-case method token (what `compile_routes` accepts).
#[cfg(feature = "schema")]
const METHOD_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Z-]+$";

pub fn compile_routes(raw: Vec<RawRoute>) -> Result<RouteTable, ConfigError> {
    if raw.len() > MAX_ROUTES {
        return Err(err("routes", format!("at most {MAX_ROUTES} route classes")));
    }
    let mut classes: Vec<RouteClass> = Vec::with_capacity(raw.len());
    for (i, route) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        check_name(&at("name"), &route.name)?;
        if route.name == RouteTable::DEFAULT_NAME {
            return Err(err(
                at("name"),
                "`default` is reserved for requests no route matches",
            ));
        }
        if classes.iter().any(|c| c.name == route.name) {
            return Err(err(
                at("name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        let matcher = match (route.prefix, route.path, route.regex) {
            (Some(prefix), None, None) => {
                if !prefix.starts_with('/') {
                    return Err(err(at("prefix"), "must start with `/`"));
                }
                PathMatcher::Prefix(prefix)
            }
            (None, Some(path), None) => {
                if !path.starts_with('/') {
                    return Err(err(at("path"), "must start with `/`"));
                }
                PathMatcher::Exact(path)
            }
            (None, None, Some(pattern)) => {
                let regex = regex_lite::Regex::new(&pattern)
                    .map_err(|e| err(at("regex"), format!("invalid regular expression: {e}")))?;
                PathMatcher::Regex(regex)
            }
            _ => {
                return Err(err(
                    format!("routes[{i}]"),
                    "needs exactly one of `prefix`, `path` or `regex`",
                ))
            }
        };
        let methods = match route.methods {
            None => None,
            Some(methods) => {
                if methods.is_empty() {
                    return Err(err(
                        at("methods"),
                        "must not be empty; omit it to match every method",
                    ));
                }
                for (j, m) in methods.iter().enumerate() {
                    if !is_header_name(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                        return Err(err(
                            format!("routes[{i}].methods[{j}]"),
                            format!("`{m}` is not an upper-case HTTP method"),
                        ));
                    }
                }
                Some(methods)
            }
        };
        classes.push(RouteClass {
            name: route.name,
            matcher,
            methods,
        });
    }
    Ok(RouteTable::new(classes))
}
