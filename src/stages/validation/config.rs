//! The `validation` section: checks on by default once the section is
//! present, limits with defaults a typical JSON API stays well inside,
//! and per route class overrides (`routes.<class>`) of any of them.

use super::rules::Rules;
use crate::core::config_error::{err, ByName, ConfigError};
use crate::core::mode::{string_enum, Mode};
use crate::core::routes::RouteTable;
use serde::Deserialize;

/// Defaults of the limits (README, `validation`).
const DEFAULT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const DEFAULT_MAX_URL_BYTES: usize = 4096;
const DEFAULT_MAX_HEADERS: usize = 100;
const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_JSON_MAX_DEPTH: usize = 32;
/// Bodies are buffered whole to be checked: 16 MiB is far beyond an API
/// request and Envoy's default buffer (1 MiB).
const MAX_BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Below serde_json's own recursion limit (128), so that depth is what refuses.
const MAX_JSON_DEPTH: usize = 100;

/// A family of checks, as named in `disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Method,
    UrlLength,
    Headers,
    BodySize,
    ContentType,
    Json,
    Traversal,
    ControlBytes,
    Sqli,
    Xss,
}

string_enum!(Check, "a check: method, url_length, headers, body_size, content_type, json, traversal, control_bytes, sqli or xss", {
    "method" => Check::Method,
    "url_length" => Check::UrlLength,
    "headers" => Check::Headers,
    "body_size" => Check::BodySize,
    "content_type" => Check::ContentType,
    "json" => Check::Json,
    "traversal" => Check::Traversal,
    "control_bytes" => Check::ControlBytes,
    "sqli" => Check::Sqli,
    "xss" => Check::Xss,
});

impl Check {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The set of check families on for a route class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks(u16);

impl Checks {
    const ALL: Checks = Checks(u16::MAX);

    pub fn has(self, check: Check) -> bool {
        self.0 & check.bit() != 0
    }

    fn without(self, check: Check) -> Checks {
        Checks(self.0 & !check.bit())
    }
}

/// One media type a route class accepts: `type/subtype`, `type/*`, or
/// `*/*`; parameters (`; charset=...`) are not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange(String);

impl MediaRange {
    pub fn matches(&self, media_type: &str) -> bool {
        match self.0.strip_suffix("/*") {
            Some("*") => true,
            Some(kind) => media_type
                .split_once('/')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind)),
            None => media_type.eq_ignore_ascii_case(&self.0),
        }
    }
}

/// What one route class is held to.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub checks: Checks,
    /// Upper-case methods.
    pub methods: Vec<String>,
    pub max_url_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// `None`: any media type.
    pub content_types: Option<Vec<MediaRange>>,
    pub json_max_depth: usize,
}

/// The compiled `validation` section.
#[derive(Debug, Clone)]
pub struct Validation {
    policies: Vec<Policy>,
    /// Indexed by route id: the policy of that route class.
    by_route: Vec<usize>,
    pub rules: Rules,
}

impl Validation {
    pub fn policy_for(&self, route: crate::core::routes::RouteId) -> Option<&Policy> {
        let i = *self.by_route.get(usize::from(route))?;
        self.policies.get(i)
    }
}

/// The checks of a route class; every field left out keeps the section's
/// value (for `defaults`: the built-in default).
#[derive(Deserialize, Default, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    /// Mode of this class's validation findings.
    #[serde(default)]
    mode: Option<Mode>,
    /// Allowed methods (default GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS).
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = "^[A-Za-z]{1,16}$")))
    )]
    methods: Option<Vec<String>>,
    /// Longest `:path`, query included, in bytes (default 4096).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_url_bytes: Option<usize>,
    /// Most header fields (default 100).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_headers: Option<usize>,
    /// Most bytes of header names and values in all (default 32768).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_header_bytes: Option<usize>,
    /// Largest body in bytes (default 1048576, at most 16 MiB).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = MAX_BODY_BYTES_LIMIT)))]
    max_body_bytes: Option<usize>,
    /// Media types a body may have (`application/json`, `text/*`, `*/*`);
    /// default: any.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(
            length(min = 1),
            inner(regex(pattern = "^([A-Za-z0-9!#$&^_.+-]+|\\*)/([A-Za-z0-9!#$&^_.+-]+|\\*)$"))
        )
    )]
    content_types: Option<Vec<String>>,
    /// Deepest nesting of a JSON body (default 32, at most 100).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_JSON_DEPTH)))]
    json_max_depth: Option<usize>,
    /// Check families turned off.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("uniqueItems" = true)))]
    disable: Option<Vec<Check>>,
}

/// The `validation` section.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawValidation {
    /// Checks of every route class.
    #[serde(default)]
    defaults: RawChecks,
    /// Per route class name (`default` included): what differs from `defaults`.
    #[serde(default)]
    routes: ByName<RawChecks>,
}

impl RawChecks {
    /// `self` with the fields `over` sets replaced.
    fn overlaid(&self, over: &RawChecks) -> RawChecks {
        RawChecks {
            mode: over.mode.or(self.mode),
            methods: over.methods.clone().or_else(|| self.methods.clone()),
            max_url_bytes: over.max_url_bytes.or(self.max_url_bytes),
            max_headers: over.max_headers.or(self.max_headers),
            max_header_bytes: over.max_header_bytes.or(self.max_header_bytes),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            content_types: over
                .content_types
                .clone()
                .or_else(|| self.content_types.clone()),
            json_max_depth: over.json_max_depth.or(self.json_max_depth),
            disable: over.disable.clone().or_else(|| self.disable.clone()),
        }
    }

    /// `at` is the JSON path of the object that set each field.
    fn compile(&self, global: Mode, at: &dyn Fn(&str) -> String) -> Result<Policy, ConfigError> {
        let methods = match &self.methods {
            None => DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(err(at("methods"), "must not be empty"));
                }
                for (i, m) in list.iter().enumerate() {
                    if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(err(
                            format!("{}[{i}]", at("methods")),
                            "a method is 1 to 16 letters",
                        ));
                    }
                }
                list.iter().map(|m| m.to_ascii_uppercase()).collect()
            }
        };
        let positive = |value: Option<usize>, default: usize, field: &str| match value {
            Some(0) => Err(err(at(field), "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(err(
                at("max_body_bytes"),
                format!("at most {MAX_BODY_BYTES_LIMIT} (bodies are buffered whole to be checked)"),
            ));
        }
        let json_max_depth = self.json_max_depth.unwrap_or(DEFAULT_JSON_MAX_DEPTH);
        if !(1..=MAX_JSON_DEPTH).contains(&json_max_depth) {
            return Err(err(
                at("json_max_depth"),
                format!("must be between 1 and {MAX_JSON_DEPTH}"),
            ));
        }
        let content_types = match &self.content_types {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(err(at("content_types"), "must not be empty"))
            }
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, t)| media_range(t, &format!("{}[{i}]", at("content_types"))))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let mut checks = Checks::ALL;
        for check in self.disable.iter().flatten() {
            checks = checks.without(*check);
        }
        Ok(Policy {
            mode: self.mode.unwrap_or(global),
            checks,
            methods,
            max_url_bytes: positive(self.max_url_bytes, DEFAULT_MAX_URL_BYTES, "max_url_bytes")?,
            max_headers: positive(self.max_headers, DEFAULT_MAX_HEADERS, "max_headers")?,
            max_header_bytes: positive(
                self.max_header_bytes,
                DEFAULT_MAX_HEADER_BYTES,
                "max_header_bytes",
            )?,
            max_body_bytes,
            content_types,
            json_max_depth,
        })
    }
}

fn media_range(text: &str, path: &str) -> Result<MediaRange, ConfigError> {
    let token = |s: &str| {
        s == "*"
            || (!s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b)))
    };
    match text.split_once('/') {
        Some(("*", sub)) if sub != "*" => Err(err(path, "`*/subtype` is not a media range")),
        Some((kind, sub)) if token(kind) && token(sub) => Ok(MediaRange(text.to_ascii_lowercase())),
        _ => Err(err(
            path,
            "a media type `type/subtype` (`type/*` and `*/*` match several)",
        )),
    }
}

/// Checks and compiles the `validation` section (`None`: absent, off).
pub fn compile(
    raw: Option<RawValidation>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Validation>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let defaults = raw
        .defaults
        .compile(global, &|f| format!("validation.defaults.{f}"))?;
    let mut policies = vec![defaults];
    let mut by_route = vec![0; routes.len_with_default()];
    for (name, over) in &raw.routes.0 {
        let Some(id) = routes.id_of(name) else {
            return Err(err(
                format!("validation.routes.{name}"),
                format!(
                    "no route class named `{name}` (define it under `routes`, or use `default`)"
                ),
            ));
        };
        let merged = raw.defaults.overlaid(over);
        // Errors name the object that set the field.
        let at = |f: &str| {
            let own = match f {
                "methods" => over.methods.is_some(),
                "max_body_bytes" => over.max_body_bytes.is_some(),
                "json_max_depth" => over.json_max_depth.is_some(),
                "content_types" => over.content_types.is_some(),
                _ => true,
            };
            if own {
                format!("validation.routes.{name}.{f}")
            } else {
                format!("validation.defaults.{f}")
            }
        };
        let policy = merged.compile(global, &at)?;
        if let Some(slot) = by_route.get_mut(usize::from(id)) {
            *slot = policies.len();
        }
        policies.push(policy);
    }
    Ok(Some(Validation {
        policies,
        by_route,
        rules: Rules::new().map_err(|e| {
            err(
                "validation",
                format!("the built-in rule set does not compile: {e}"),
            )
        })?,
    }))
}
