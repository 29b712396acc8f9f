//! The `openapi` section: the API document, where it is enforced, and how
//! much of a body is validated.

use super::spec::{Api, Options};
use crate::core::config_error::{err, ByName, ConfigError, PerRoute};
use crate::core::mode::{string_enum, Mode};
use crate::core::routes::RouteTable;
#[cfg(feature = "schema")]
use crate::core::schema::json_schema_impl;
use serde::Deserialize;
use std::sync::Arc;

/// Bodies up to this size are validated by default.
const DEFAULT_MAX_BODY: u64 = 64 * 1024;
/// Most a body validation may buffer: the host holds it in memory.
const MAX_MAX_BODY: u64 = 8 * 1024 * 1024;

/// Where the document comes from. Only `inline` reaches the filter:
/// `palisade-check --resolve` replaces `file` and `uri` with the document,
/// since the filter can neither read files nor wait for a fetch while it
/// is configured.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RawDocument {
    Inline(serde_json::Value),
    File(String),
    Uri(String),
}

#[cfg(feature = "schema")]
json_schema_impl!(RawDocument, "OpenApiDocument", |_| serde_json::json!({
    "description": "The OpenAPI 3.0/3.1 document: {\"inline\": <document>}, or {\"file\": \"path\"} / {\"uri\": \"https://...\"} that `palisade-check --resolve` inlines.",
    "type": "object",
    "additionalProperties": false,
    "properties": {
        // A document of another format, open as OpenAPI leaves it;
        // palisade compiles it and names where it fails.
        "inline": {"type": "object", "additionalProperties": true},
        "file": {"type": "string", "minLength": 1},
        "uri": {"type": "string", "minLength": 1},
    },
    "oneOf": [{"required": ["inline"]}, {"required": ["file"]}, {"required": ["uri"]}],
}));

/// How a route class is held to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSetting {
    Enforce,
    Monitor,
    /// Not checked against the document.
    Off,
}

string_enum!(RouteSetting, "\"enforce\", \"monitor\" or \"off\"", {
    "enforce" => RouteSetting::Enforce,
    "monitor" => RouteSetting::Monitor,
    "off" => RouteSetting::Off,
});

/// The `openapi` section.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawOpenApi {
    /// Mode of schema.* findings on route classes not listed in `routes`;
    /// the top-level mode by default.
    #[serde(default)]
    mode: Option<Mode>,
    /// The OpenAPI 3.0 or 3.1 document (JSON).
    document: RawDocument,
    /// The path every operation is under, instead of the path parts of the
    /// document's `servers` URLs.
    #[serde(default)]
    base_path: Option<String>,
    /// Per route class name (`default` included): `enforce`, `monitor` or
    /// `off` (not checked).
    #[serde(default)]
    routes: ByName<RouteSetting>,
    /// Largest JSON body validated against its schema (default 65536); a
    /// larger body of an operation that declares one is refused.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_MAX_BODY)))]
    max_body_bytes: Option<u64>,
}

/// The compiled `openapi` section (shared: the document is compiled once
/// and the policy is cloned).
pub struct OpenApi {
    pub api: Api,
    /// The mode each route class is checked in, if at all.
    pub by_route: PerRoute<Option<Mode>>,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("operations", &self.api.operation_count())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Checks and compiles the `openapi` section (`None`: absent, off).
pub fn compile(
    raw: Option<RawOpenApi>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Arc<OpenApi>>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let doc = match &raw.document {
        RawDocument::Inline(doc) => doc,
        RawDocument::File(_) | RawDocument::Uri(_) => {
            let field = match raw.document {
                RawDocument::File(_) => "file",
                _ => "uri",
            };
            return Err(err(
                format!("openapi.document.{field}"),
                "is resolved when the configuration is built, not by the proxy: run `palisade-check --resolve` on this configuration and load its output (the document inlined)",
            ));
        }
    };
    if let Some(base) = &raw.base_path {
        if !base.starts_with('/') || base.contains(['?', '#', '{']) {
            return Err(err(
                "openapi.base_path",
                "a path starting with `/`, without query, fragment or template",
            ));
        }
    }
    let max_body = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if !(1..=MAX_MAX_BODY).contains(&max_body) {
        return Err(err(
            "openapi.max_body_bytes",
            format!("must be between 1 and {MAX_MAX_BODY}"),
        ));
    }
    let options = Options {
        base_path: raw.base_path.clone(),
    };
    let api = Api::compile(doc, &options, "openapi.document.inline")?;
    let mode = raw.mode.unwrap_or(global);
    let by_route = PerRoute::compile(routes, "openapi", &raw.routes.0, |own, _| {
        Ok(match own {
            None => Some(mode),
            Some(RouteSetting::Enforce) => Some(Mode::Enforce),
            Some(RouteSetting::Monitor) => Some(Mode::Monitor),
            Some(RouteSetting::Off) => None,
        })
    })?;
    Ok(Some(Arc::new(OpenApi {
        api,
        by_route,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
    })))
}
