//! Parameters: compiled from Parameter Objects, checked against a request's
//! path, query, headers and cookies. Values are strings on the wire; each is
//! converted to the JSON type its schema names (integer, number, boolean,
//! string, or an array of those) and validated as a JSON value.

use super::schema::{
    bad, decode, keyed, type_message, Compiler, Fail, NodeId, Schemas, ARRAY, BOOLEAN, INTEGER,
    NUMBER, OBJECT, STRING,
};
use super::{json, Violation, ViolationKind};
use crate::core::config_error::{err, ConfigError};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum In {
    Path,
    Query,
    Header,
    Cookie,
}

#[derive(Clone)]
enum Shape {
    /// One value, converted to one of these types.
    Scalar(u8),
    /// Several values of these types: repeated keys (`explode`), or one
    /// value split at `sep`.
    Array { types: u8, explode: bool, sep: char },
    /// `content` with a JSON media type: the value is a JSON text.
    Json,
}

#[derive(Clone)]
pub(super) struct Param {
    pub(super) name: String,
    pub(super) place: In,
    /// `query.limit`: what a violation names.
    location: String,
    pub(super) required: bool,
    allow_empty: bool,
    shape: Shape,
    schema: NodeId,
    /// Path parameters: position of `{name}` in the template.
    pub(super) slot: usize,
}

fn text<'v>(obj: &'v Value, key: &str, path: &str) -> Result<Option<&'v str>, ConfigError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(&keyed(path, key), "must be a string")),
    }
}

fn flag(obj: &Value, key: &str, path: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(&keyed(path, key), "must be true or false")),
    }
}

/// Whether a media type (`application/json`, `application/problem+json`;
/// lower case, without parameters) is JSON.
pub(super) fn is_json(media: &str) -> bool {
    media
        .split_once('/')
        .is_some_and(|(t, s)| t == "application" && (s == "json" || s.ends_with("+json")))
}

/// Compiles the Parameter Object `raw` at `path` (following `$ref`s).
/// `None`: a header parameter OpenAPI says to ignore (`Accept`,
/// `Content-Type`, `Authorization`).
pub(super) fn compile(
    c: &mut Compiler<'_>,
    raw: &Value,
    path: &str,
) -> Result<Option<Param>, ConfigError> {
    let (mut raw, mut path) = (raw, path.to_string());
    for _ in 0..16 {
        let Some(reference) = raw.get("$ref") else {
            break;
        };
        (raw, path) = c.follow(reference, &keyed(&path, "$ref"))?;
    }
    let path = path.as_str();
    if !raw.is_object() || raw.get("$ref").is_some() {
        return Err(bad(path, "must be a Parameter Object"));
    }
    let name = text(raw, "name", path)?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(path, "a parameter needs a `name`"))?;
    let (place, prefix) = match text(raw, "in", path)? {
        Some("path") => (In::Path, "path."),
        Some("query") => (In::Query, "query."),
        Some("header") => (In::Header, "header."),
        Some("cookie") => (In::Cookie, "cookie."),
        _ => {
            return Err(bad(
                &keyed(path, "in"),
                "must be one of path, query, header, cookie",
            ))
        }
    };
    if place == In::Header
        && ["accept", "content-type", "authorization"].contains(&name.to_ascii_lowercase().as_str())
    {
        return Ok(None);
    }
    let required = flag(raw, "required", path)?.unwrap_or(false);
    if place == In::Path && !required {
        return Err(bad(
            &keyed(path, "required"),
            "a path parameter must have `required: true`",
        ));
    }
    let style = text(raw, "style", path)?;
    let style_at = keyed(path, "style");
    let form = match (place, style) {
        (In::Path | In::Header, None | Some("simple")) => false,
        (In::Query | In::Cookie, None | Some("form")) => true,
        (In::Query, Some("spaceDelimited" | "pipeDelimited")) => false,
        (_, Some(s)) => {
            return Err(err(
                style_at,
                format!("style `{s}` is not supported for this parameter (path and header: simple; query: form, spaceDelimited, pipeDelimited; cookie: form)"),
            ))
        }
    };
    let explode = flag(raw, "explode", path)?.unwrap_or(form);
    let sep = match style {
        Some("spaceDelimited") => ' ',
        Some("pipeDelimited") => '|',
        _ => ',',
    };
    let (schema, shape) = match (raw.get("schema"), raw.get("content")) {
        (Some(schema), None) => {
            let at = keyed(path, "schema");
            let node = c.root(schema, &at)?;
            let (types, items) = c.shape(node);
            let shape = if types & ARRAY != 0 {
                let item_types = items.map_or(0, |i| c.shape(i).0);
                if item_types & (OBJECT | ARRAY) != 0 {
                    return Err(bad(
                        &at,
                        "arrays of objects or arrays are not supported as parameters",
                    ));
                }
                if place == In::Cookie && explode {
                    return Err(bad(
                        &at,
                        "exploded array cookies are not supported (set `explode: false`)",
                    ));
                }
                Shape::Array {
                    types: item_types,
                    explode: explode && place == In::Query,
                    sep,
                }
            } else if types & OBJECT != 0 {
                return Err(bad(&at, "object-valued parameters (deepObject, form objects) are not supported; use `content` with application/json",
                ));
            } else {
                Shape::Scalar(types)
            };
            (node, shape)
        }
        (None, Some(Value::Object(content))) if content.len() == 1 => {
            let Some((media, entry)) = content.iter().next() else {
                return Err(bad(path, "`content` must hold one media type"));
            };
            let at = keyed(&keyed(path, "content"), media);
            if !is_json(&media.to_ascii_lowercase()) {
                return Err(bad(
                    &at,
                    "only JSON media types are supported for parameter `content`",
                ));
            }
            let node = match entry.get("schema") {
                Some(schema) => c.root(schema, &keyed(&at, "schema"))?,
                None => c.root(&Value::Bool(true), &at)?,
            };
            (node, Shape::Json)
        }
        _ => {
            return Err(bad(
                path,
                "a parameter needs either `schema` or `content` with one media type",
            ))
        }
    };
    Ok(Some(Param {
        // Headers are looked up by their lower-case name.
        name: if place == In::Header {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        },
        place,
        location: format!("{prefix}{name}"),
        required,
        allow_empty: place == In::Query && flag(raw, "allowEmptyValue", path)?.unwrap_or(false),
        shape,
        schema,
        slot: 0,
    }))
}

/// A query string's `key=value` pairs, percent-decoded (`+` is a space).
pub(super) fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k.as_bytes(), true), decode(v.as_bytes(), true))
        })
        .collect()
}

/// A string value converted to one of the JSON types `types` (0: any,
/// kept as a string).
fn scalar(s: &str, types: u8) -> Option<Value> {
    // An integer is written in plain digits: `1e3` and `10.0` are numbers
    // servers read differently (`parseInt("1e3")` is 1).
    let digits = {
        let d = s.strip_prefix('-').unwrap_or(s);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
    };
    let number = types & NUMBER != 0 || (types & INTEGER != 0 && digits);
    if number {
        if let Ok(n) = s.parse::<serde_json::Number>() {
            return Some(Value::Number(n));
        }
    }
    if types & BOOLEAN != 0 {
        match s {
            "true" => return Some(Value::Bool(true)),
            "false" => return Some(Value::Bool(false)),
            _ => {}
        }
    }
    (types == 0 || types & STRING != 0).then(|| Value::String(s.to_string()))
}

impl Param {
    fn violation(&self, message: &'static str) -> Violation {
        Violation {
            kind: ViolationKind::Parameter,
            location: self.location.clone(),
            message,
        }
    }

    /// Checks the parameter's raw values (several only for an exploded
    /// array in the query; empty: absent).
    pub(super) fn check(&self, schemas: &Schemas, raw: &[&[u8]]) -> Result<(), Violation> {
        let mut texts = Vec::with_capacity(raw.len());
        for bytes in raw {
            texts.push(
                std::str::from_utf8(bytes).map_err(|_| self.violation("is not valid UTF-8"))?,
            );
        }
        let Some(&first) = texts.first() else {
            return if self.required {
                Err(self.violation("required parameter missing"))
            } else {
                Ok(())
            };
        };
        if self.allow_empty && texts.len() == 1 && first.is_empty() {
            return Ok(());
        }
        // Palisade would check one value and the upstream may read another.
        let repeats = !matches!(self.shape, Shape::Array { explode: true, .. });
        if repeats && texts.len() > 1 {
            return Err(self.violation("is given more than once"));
        }
        let value = match &self.shape {
            Shape::Scalar(types) => {
                scalar(first, *types).ok_or_else(|| self.violation(type_message(*types)))?
            }
            Shape::Json => json::parse(first.as_bytes())
                .map_err(|_| self.violation("is not valid JSON (duplicate members refused)"))?,
            Shape::Array {
                types,
                explode,
                sep,
            } => {
                let parts: Vec<&str> = if *explode {
                    texts
                } else {
                    first.split(*sep).map(str::trim).collect()
                };
                let mut items = Vec::with_capacity(parts.len());
                for part in parts {
                    items.push(
                        scalar(part, *types)
                            .ok_or_else(|| self.violation("has an item of the wrong type"))?,
                    );
                }
                Value::Array(items)
            }
        };
        schemas
            .validate(self.schema, &value)
            .map_err(|fail| match fail {
                Fail::Invalid(_, message) => self.violation(message),
                Fail::Budget => self.violation("too complex to validate"),
            })
    }
}
