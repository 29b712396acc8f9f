//! An OpenAPI 3.0 / 3.1 document compiled once, at configuration time, into
//! what a request is checked against: the base paths of its servers, its
//! path templates (sorted by specificity, scanned in order), each
//! operation's parameters, and its request bodies' JSON Schemas.
//!
//! Threat: requests an API does not declare (unknown paths and methods,
//! parameters of the wrong type or out of range, bodies with members or
//! values the schema excludes) reaching an upstream that trusts them. The
//! document is trusted configuration; the request is not: nothing a request
//! holds is ever quoted in a [`Violation`] (only parameter names from the
//! document and JSON pointers into the body, cut at 128 bytes), a request
//! cannot make validation panic, recurse without bound, or run past a fixed
//! budget of steps (running out refuses the request).
//!
//! Why not `jsonschema` or `boon`: they pull regex/fancy-regex, url, idna,
//! ahash and more, hundreds of KB in a wasm that has about 80 KB left of its
//! 1 MiB budget. The document is compiled instead into a small arena of
//! typed nodes (`$ref` cycles are index cycles), with the keywords listed
//! below. A keyword the validator does not implement is refused when the
//! document is compiled, never silently ignored; annotations (`title`,
//! `description`, `example(s)`, `default`, `readOnly`, `writeOnly`,
//! `deprecated`, `discriminator`, `xml`, `$comment`, `$id`, ...) and `x-`
//! extensions are ignored.
//!
//! Schema keywords: `$ref` (local `#/...` pointers; siblings apply, as in
//! 2020-12), `type` (3.1: arrays, "null"), `nullable` (3.0), `enum`,
//! `const`, `properties`, `required` (a required `readOnly` property is
//! required in responses only), `additionalProperties`,
//! `patternProperties`, `items`, `prefixItems` (3.1), `minItems`,
//! `maxItems`, `uniqueItems`, `minLength`/`maxLength` (characters),
//! `pattern`, `minimum`, `maximum`, `exclusiveMinimum`/`exclusiveMaximum`
//! (3.0 booleans, 3.1 numbers), `multipleOf`, `minProperties`,
//! `maxProperties`, `format` (int32, int64, date, date-time, uuid, email,
//! ipv4, ipv6, byte; other formats are annotations), `allOf`, `anyOf`,
//! `oneOf` (exactly one; `discriminator` is not needed for that), `not`,
//! and `true`/`false` schemas.
//!
//! Requests: a concrete path wins over a templated one, and among
//! templates literal segments earlier win; the most specific template that
//! declares the method is taken. A `{param}` (with literal text around it
//! if the template says so) matches one non-empty segment, decoded; the
//! trailing slash counts. Parameters: path and header `simple`, query
//! `form` (exploded arrays as repeated keys, or one value split at `,`),
//! `spaceDelimited`, `pipeDelimited`, cookie `form` (not exploded), and
//! `content` with a JSON media type; object-valued parameters and other
//! styles are refused when compiled. Unknown query parameters pass. Only
//! what operations use is compiled: request schemas and what they refer to
//! (response schemas, webhooks and callbacks are not read).
//!
//! Differences to know: as OpenAPI 3.0.3 says, `nullable` adds null to an
//! explicit `type` only, and an `enum` without null still refuses it.
//! Patterns use Rust regex syntax (regex-lite), not ECMA 262: no
//! look-around or backreferences (refused when compiled), `\d` and `\w`
//! are ASCII; like ECMA, patterns are not anchored. Numbers
//! are compared as f64 (integers beyond 2^53 lose precision). External
//! references and `$id`-relative references are not resolved: bundle the
//! document. Request bodies of JSON media types (`application/json`,
//! `application/*+json`) are parsed (repeated member names refused) and
//! validated; other declared media types are accepted unvalidated.
//! Defaults are never applied: this is validation only.

mod format;
mod json;
mod params;
mod schema;

#[cfg(test)]
mod tests;

use crate::core::config_error::{err, ConfigError};
use params::{In, Param};
use schema::{bad, indexed, keyed, percent_decode, Compiler, Dialect, Fail, NodeId, Schemas};
use serde_json::Value;
use std::sync::Arc;

/// Methods of a Path Item, in the order of `Template::ops`.
const METHODS: [(&str, &str); 8] = [
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("head", "HEAD"),
    ("patch", "PATCH"),
    ("trace", "TRACE"),
];

/// Options of the compilation that do not come from the document.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The base path every templated path is under, instead of the path
    /// parts of the document's `servers` URLs (starts with `/`).
    pub base_path: Option<String>,
}

/// A compiled document.
pub struct Api {
    /// Base paths without a trailing `/` (`""`: the root), longest first.
    bases: Vec<String>,
    /// Most specific first.
    templates: Vec<Template>,
    operations: Vec<Operation>,
}

enum Segment {
    Literal(Vec<u8>),
    /// `{name}` with the literal text around it in its segment.
    Param(Vec<u8>, Vec<u8>),
}

struct Template {
    segments: Vec<Segment>,
    /// Index into `Api::operations`, by method.
    ops: [Option<u32>; 8],
}

/// The outcome of [`Api::find`].
pub enum Lookup<'a> {
    Found(Matched<'a>),
    /// A declared path, without this method.
    MethodNotDeclared,
    PathNotDeclared,
}

/// An operation matched by a request, with its path's parameter values.
pub struct Matched<'a> {
    pub operation: &'a Operation,
    /// Percent-decoded bytes of each `{param}`, in template order.
    values: Vec<Vec<u8>>,
}

/// An operation (a method on a path template).
pub struct Operation {
    name: String,
    params: Vec<Param>,
    body: Option<RequestBody>,
    schemas: Arc<Schemas>,
}

/// An operation's `requestBody`.
pub struct RequestBody {
    required: bool,
    /// Declared media ranges (lower case), most specific first.
    media: Vec<Media>,
    schemas: Arc<Schemas>,
}

struct Media {
    range: String,
    schema: Option<NodeId>,
}

/// What a request does that the document does not allow. Holds no request
/// value.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Debug))]
pub struct Violation {
    pub kind: ViolationKind,
    /// `path.petId`, `query.limit`, `header.X-Trace`, `cookie.session`; for
    /// a body, the JSON pointer of the failing value (`/owner/age`, `""`
    /// for the whole body).
    pub location: String,
    pub message: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Debug))]
pub enum ViolationKind {
    Parameter,
    Body,
}

fn body_violation(location: String, message: &'static str) -> Violation {
    Violation {
        kind: ViolationKind::Body,
        location,
        message,
    }
}

/// The path part of a server URL (`https://h/v1/` -> `/v1`, `/v1`, `v1`).
fn server_base(url: &str) -> String {
    let rest = match url.split_once("//") {
        Some((scheme, rest)) if !scheme.contains('/') => {
            rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("")
        }
        _ => url,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// A path template's segments and its parameters' names, in order.
fn parse_template(
    template: &str,
    path: &str,
) -> Result<(Vec<Segment>, Vec<String>, String), ConfigError> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err(bad(path, "a path must start with `/`"));
    };
    let mut segments = Vec::new();
    let mut names: Vec<String> = Vec::new();
    // The template with parameter names erased, to find duplicates.
    let mut shape = String::new();
    for seg in rest.split('/') {
        shape.push('/');
        let literal = |s: &str| percent_decode(s.as_bytes());
        match seg.split_once('{') {
            None if !seg.contains('}') => {
                shape.push_str(seg);
                segments.push(Segment::Literal(literal(seg)));
            }
            Some((prefix, tail)) => {
                let (name, suffix) = tail.split_once('}').unwrap_or(("", ""));
                if name.is_empty()
                    || !tail.contains('}')
                    || [prefix, name, suffix]
                        .iter()
                        .any(|s| s.contains(['{', '}']))
                {
                    return Err(bad(
                        path,
                        "a path segment may hold one `{parameter}`, with literal text around it",
                    ));
                }
                if names.iter().any(|n| n == name) {
                    return Err(err(path, format!("`{{{name}}}` appears twice")));
                }
                names.push(name.to_string());
                shape.push_str(&format!("{prefix}{{}}{suffix}"));
                segments.push(Segment::Param(literal(prefix), literal(suffix)));
            }
            None => return Err(bad(path, "unbalanced `}` in the path")),
        }
    }
    Ok((segments, names, shape))
}

/// Specificity of a template, compared lexicographically (lower first):
/// literal segments before partly literal ones before bare parameters.
fn rank(t: &Template) -> Vec<u8> {
    t.segments
        .iter()
        .map(|s| match s {
            Segment::Literal(_) => 0,
            Segment::Param(p, s) if !p.is_empty() || !s.is_empty() => 1,
            Segment::Param(..) => 2,
        })
        .collect()
}

/// Compiles a list of Parameter Objects, refusing repeats of (name, in).
fn compile_params(
    c: &mut Compiler<'_>,
    list: Option<&Value>,
    path: &str,
) -> Result<Vec<Param>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let at = keyed(path, "parameters");
    let list = list
        .as_array()
        .ok_or_else(|| bad(&at, "must be an array"))?;
    let mut out: Vec<Param> = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let here = indexed(&at, i);
        if let Some(p) = params::compile(c, raw, &here)? {
            if out.iter().any(|q| same(q, &p)) {
                return Err(bad(
                    &here,
                    "this parameter (name and `in`) is declared twice",
                ));
            }
            out.push(p);
        }
    }
    Ok(out)
}

fn same(a: &Param, b: &Param) -> bool {
    a.place == b.place
        && if a.place == In::Header {
            a.name.eq_ignore_ascii_case(&b.name)
        } else {
            a.name == b.name
        }
}

fn compile_body(
    c: &mut Compiler<'_>,
    raw: &Value,
    path: &str,
) -> Result<(bool, Vec<Media>), ConfigError> {
    let (mut raw, mut path) = (raw, path.to_string());
    for _ in 0..16 {
        let Some(reference) = raw.get("$ref") else {
            break;
        };
        (raw, path) = c.follow(reference, &keyed(&path, "$ref"))?;
    }
    let required = match raw.get("required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad(&keyed(&path, "required"), "must be true or false")),
    };
    let at = keyed(&path, "content");
    let content = raw
        .get("content")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                &at,
                "a request body needs `content` (an object of media types)",
            )
        })?;
    let mut media = Vec::new();
    for (range, entry) in content {
        let here = keyed(&at, range);
        let essence = range
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !essence.contains('/') {
            return Err(bad(
                &here,
                "must be a media type or range (`application/json`, `image/*`)",
            ));
        }
        let schema = match entry.get("schema") {
            Some(s) => Some(c.root(s, &keyed(&here, "schema"))?),
            None => None,
        };
        // Most specific first (inserted in order: no `sort` code in the wasm).
        let rank = media_rank(&essence);
        let at = media
            .iter()
            .position(|m: &Media| media_rank(&m.range) > rank)
            .unwrap_or(media.len());
        media.insert(
            at,
            Media {
                range: essence,
                schema,
            },
        );
    }
    Ok((required, media))
}

/// Exact types first, then `application/*+json`, `type/*`, `*/*`.
fn media_rank(range: &str) -> u8 {
    match range.split_once('/') {
        Some(("*", _)) => 3,
        Some((_, "*")) => 2,
        Some((_, s)) if s.starts_with('*') => 1,
        _ => 0,
    }
}

fn media_matches(range: &str, media: &str) -> bool {
    let (Some((rt, rs)), Some((mt, ms))) = (range.split_once('/'), media.split_once('/')) else {
        return false;
    };
    (rt == "*" || rt == mt)
        && (rs == "*"
            || rs == ms
            || rs
                .strip_prefix('*')
                .is_some_and(|suffix| ms.ends_with(suffix)))
}

impl Api {
    /// Compiles an OpenAPI 3.0.x or 3.1.x document found at `path` in the
    /// configuration (errors name `path` plus the place in the document).
    pub fn compile(doc: &Value, options: &Options, path: &str) -> Result<Api, ConfigError> {
        let Value::Object(top) = doc else {
            return Err(bad(path, "must be an OpenAPI document (a JSON object)"));
        };
        let version = top.get("openapi").and_then(Value::as_str).unwrap_or("");
        let dialect = if version.starts_with("3.0.") {
            Dialect::V30
        } else if version.starts_with("3.1.") {
            Dialect::V31
        } else {
            return Err(bad(
                &keyed(path, "openapi"),
                "must be an OpenAPI version 3.0.x or 3.1.x",
            ));
        };
        let found = match &options.base_path {
            Some(base) if !base.starts_with('/') => {
                return Err(bad(path, "the base path must start with `/`"))
            }
            Some(base) => vec![base.trim_end_matches('/').to_string()],
            None => Self::server_bases(doc, path)?,
        };
        // Longest first, each once.
        let mut bases: Vec<String> = Vec::new();
        for base in found {
            if !bases.contains(&base) {
                let at = bases
                    .iter()
                    .position(|b| b.len() < base.len())
                    .unwrap_or(bases.len());
                bases.insert(at, base);
            }
        }

        let mut c = Compiler::new(doc, path, dialect);
        let mut templates = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut operations = Vec::new();
        let mut shapes: Vec<(String, String)> = Vec::new();
        let paths_at = keyed(path, "paths");
        let paths = match top.get("paths") {
            Some(Value::Object(paths)) => Some(paths),
            None if dialect == Dialect::V31 => None,
            _ => return Err(bad(&paths_at, "must be an object of path templates")),
        };
        for (template, item) in paths.into_iter().flatten() {
            let mut at = keyed(&paths_at, template);
            let (segments, names, shape) = parse_template(template, &at)?;
            if let Some((other, _)) = shapes.iter().find(|(_, s)| *s == shape) {
                return Err(err(&at, format!("the same template as `{other}`")));
            }
            shapes.push((template.clone(), shape));
            let mut item = item;
            if let Some(reference) = item.get("$ref") {
                (item, at) = c.follow(reference, &keyed(&at, "$ref"))?;
            }
            if !item.is_object() {
                return Err(bad(&at, "must be a Path Item Object"));
            }
            if item.get("servers").is_some() && options.base_path.is_none() {
                return Err(bad(
                    &keyed(&at, "servers"),
                    "servers of a path are not supported (set the base path instead)",
                ));
            }
            let shared = compile_params(&mut c, item.get("parameters"), &at)?;
            let mut ops = [None; 8];
            for (slot, (key, upper)) in ops.iter_mut().zip(METHODS) {
                let Some(op) = item.get(key) else { continue };
                let here = keyed(&at, key);
                if !op.is_object() {
                    return Err(bad(&here, "must be an Operation Object"));
                }
                if op.get("servers").is_some() && options.base_path.is_none() {
                    return Err(bad(
                        &keyed(&here, "servers"),
                        "servers of an operation are not supported (set the base path instead)",
                    ));
                }
                let mut list = compile_params(&mut c, op.get("parameters"), &here)?;
                for p in &shared {
                    if !list.iter().any(|q| same(q, p)) {
                        list.push(p.clone());
                    }
                }
                for p in list.iter_mut().filter(|p| p.place == In::Path) {
                    p.slot = names.iter().position(|n| *n == p.name).ok_or_else(|| {
                        err(
                            &here,
                            format!("path parameter `{}` is not in the path template", p.name),
                        )
                    })?;
                }
                for name in &names {
                    if !list.iter().any(|p| p.place == In::Path && p.name == *name) {
                        return Err(err(
                            &here,
                            format!(
                                "path parameter `{name}` is not declared (as `in: path`, `required: true`)"
                            ),
                        ));
                    }
                }
                let body = match op.get("requestBody") {
                    Some(raw) => Some(compile_body(&mut c, raw, &keyed(&here, "requestBody"))?),
                    None => None,
                };
                let name = match op.get("operationId") {
                    Some(Value::String(id)) => id.clone(),
                    _ => format!("{upper} {template}"),
                };
                *slot = Some(operations.len() as u32);
                operations.push((name, list, body));
            }
            // Most specific first (see `rank`).
            let template = Template { segments, ops };
            let key = rank(&template);
            let at = keys.iter().position(|k| *k > key).unwrap_or(keys.len());
            keys.insert(at, key);
            templates.insert(at, template);
        }
        let schemas = Arc::new(c.finish()?);
        let operations = operations
            .into_iter()
            .map(|(name, params, body)| Operation {
                name,
                params,
                body: body.map(|(required, media)| RequestBody {
                    required,
                    media,
                    schemas: Arc::clone(&schemas),
                }),
                schemas: Arc::clone(&schemas),
            })
            .collect();
        Ok(Api {
            bases,
            templates,
            operations,
        })
    }

    fn server_bases(doc: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
        let Some(servers) = doc.get("servers") else {
            return Ok(vec![String::new()]);
        };
        let at = keyed(path, "servers");
        let servers = servers
            .as_array()
            .ok_or_else(|| bad(&at, "must be an array"))?;
        let mut bases = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let here = keyed(&indexed(&at, i), "url");
            let url = server
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&here, "a server needs a `url` (a string)"))?;
            let base = server_base(url);
            if base.contains(['{', '}']) {
                return Err(bad(&here, "a server URL with `{variables}` in its path needs the base path set explicitly",
                ));
            }
            bases.push(base);
        }
        if bases.is_empty() {
            bases.push(String::new());
        }
        Ok(bases)
    }

    /// The index of an operation [`Api::find`] returned, for
    /// [`Api::operation`] in a later phase of the request.
    pub fn index_of(&self, operation: &Operation) -> Option<usize> {
        self.operations
            .iter()
            .position(|o| std::ptr::eq(o, operation))
    }

    pub fn operation(&self, index: usize) -> Option<&Operation> {
        self.operations.get(index)
    }

    pub fn operation_count(&self) -> usize {
        self.operations.len()
    }

    /// The operation for `method` (upper case) on `path` (without the
    /// query, still percent-encoded). The most specific template that
    /// declares the method wins: literal segments over templated ones,
    /// earlier literal segments first.
    pub fn find<'a>(&'a self, method: &str, path: &str) -> Lookup<'a> {
        let method = METHODS.iter().position(|(_, m)| *m == method);
        let mut outcome = Lookup::PathNotDeclared;
        for base in &self.bases {
            let Some(rest) = path.strip_prefix(base.as_str()) else {
                continue;
            };
            let rest = if rest.is_empty() { "/" } else { rest };
            let Some(rest) = rest.strip_prefix('/') else {
                continue;
            };
            let decoded: Vec<std::borrow::Cow<'_, [u8]>> = rest
                .split('/')
                .map(|s| {
                    if s.contains('%') {
                        percent_decode(s.as_bytes()).into()
                    } else {
                        s.as_bytes().into()
                    }
                })
                .collect();
            for t in &self.templates {
                if t.segments.len() != decoded.len() || !t.matches(&decoded) {
                    continue;
                }
                let op = method
                    .and_then(|m| t.ops.get(m).copied().flatten())
                    .and_then(|i| self.operations.get(i as usize));
                let Some(operation) = op else {
                    outcome = Lookup::MethodNotDeclared;
                    continue;
                };
                let values = t
                    .segments
                    .iter()
                    .zip(&decoded)
                    .filter_map(|(seg, value)| match seg {
                        Segment::Param(p, s) => value
                            .get(p.len()..value.len().saturating_sub(s.len()))
                            .map(<[u8]>::to_vec),
                        Segment::Literal(_) => None,
                    })
                    .collect();
                return Lookup::Found(Matched { operation, values });
            }
        }
        outcome
    }
}

impl Template {
    fn matches(&self, segments: &[std::borrow::Cow<'_, [u8]>]) -> bool {
        self.segments.iter().zip(segments).all(|(t, s)| match t {
            Segment::Literal(l) => **l == **s,
            Segment::Param(p, x) => {
                s.len() > p.len() + x.len() && s.starts_with(p) && s.ends_with(x)
            }
        })
    }
}

impl Operation {
    /// The `operationId`, or `GET /pets/{petId}`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the path, query, header and cookie parameters. `header` reads
    /// every value of a request header by its lower-case name.
    pub fn check_parameters(
        &self,
        matched: &Matched<'_>,
        query: Option<&str>,
        header: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<(), Violation> {
        let pairs = match query {
            Some(q) if self.params.iter().any(|p| p.place == In::Query) => params::query_pairs(q),
            _ => Vec::new(),
        };
        // Several `cookie` fields (HTTP/2 splits them) are one list.
        let cookies = if self.params.iter().any(|p| p.place == In::Cookie) {
            header("cookie").join(";")
        } else {
            String::new()
        };
        for p in &self.params {
            let owned;
            let raw: Vec<&[u8]> = match p.place {
                In::Path => matched
                    .values
                    .get(p.slot)
                    .map(Vec::as_slice)
                    .into_iter()
                    .collect(),
                In::Query => pairs
                    .iter()
                    .filter(|(k, _)| *k == p.name.as_bytes())
                    .map(|(_, v)| v.as_slice())
                    .collect(),
                In::Header => {
                    owned = header(&p.name);
                    owned.iter().map(|v| v.as_bytes()).collect()
                }
                // Every occurrence: a name given twice is refused.
                In::Cookie => cookies
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(k, _)| *k == p.name)
                    .map(|(_, v)| v.as_bytes())
                    .collect(),
            };
            p.check(&self.schemas, &raw)?;
        }
        Ok(())
    }

    pub fn body(&self) -> Option<&RequestBody> {
        self.body.as_ref()
    }
}

/// The media type of a Content-Type value: lower case, no parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl RequestBody {
    pub fn required(&self) -> bool {
        self.required
    }

    /// The declared media range a Content-Type falls under.
    fn media(&self, content_type: &str) -> Option<(&Media, bool)> {
        let media = essence(content_type);
        self.media
            .iter()
            .find(|m| media_matches(&m.range, &media))
            .map(|m| (m, params::is_json(&media)))
    }

    /// Whether a body of this Content-Type is parsed (so the caller
    /// buffers it): a declared JSON media type.
    pub fn validates(&self, content_type: Option<&str>) -> bool {
        content_type
            .and_then(|ct| self.media(ct))
            .is_some_and(|(_, json)| json)
    }

    /// Whether a body of this Content-Type is accepted as it is: a declared
    /// media type that is not JSON (a form, an upload), which the caller
    /// need not buffer.
    pub fn passes_unread(&self, content_type: &str) -> bool {
        self.media(content_type).is_some_and(|(_, json)| !json)
    }

    /// Checks a body (empty: none) and its Content-Type. JSON bodies are
    /// parsed and validated against the declared schema; other declared
    /// media types are accepted as they are.
    pub fn validate(&self, content_type: Option<&str>, body: &[u8]) -> Result<(), Violation> {
        if body.is_empty() {
            return if self.required {
                Err(body_violation(String::new(), "required body missing"))
            } else {
                Ok(())
            };
        }
        let Some(content_type) = content_type else {
            return Err(body_violation(String::new(), "Content-Type missing"));
        };
        let Some((media, json)) = self.media(content_type) else {
            return Err(body_violation(String::new(), "media type not declared"));
        };
        if !json {
            return Ok(());
        }
        let value = json::parse(body).map_err(|bad| match bad {
            json::Bad::Syntax => body_violation(String::new(), "not valid JSON"),
            // Where, only as the whole body: the names are the client's.
            json::Bad::Duplicate => body_violation(String::new(), "duplicate member"),
        })?;
        let Some(schema) = media.schema else {
            return Ok(());
        };
        self.schemas
            .validate(schema, &value)
            .map_err(|fail| match fail {
                Fail::Invalid(at, message) => body_violation(at, message),
                Fail::Budget => body_violation(String::new(), "too complex to validate"),
            })
    }
}
