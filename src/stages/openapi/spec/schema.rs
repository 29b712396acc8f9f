//! JSON Schema (OpenAPI 3.0 Schema Object, 3.1 / 2020-12 subset) compiled
//! into an arena of nodes, and the validator that walks it.
//!
//! A node is the list of checks of one schema object; `$ref`s and
//! composition point at other nodes by index, so recursive schemas are
//! plain cycles in the arena. A cycle that never descends into the instance
//! (`A = allOf[$ref A]`) would never end and is refused when compiled.
//! Validation counts node visits and nesting against fixed budgets: a
//! document with wide `anyOf`/`oneOf` cannot make one request cost
//! unbounded work; running out is a failure, never a pass.

use super::format::Format;
use crate::core::config_error::{err, ConfigError};
use regex_lite::Regex;
use serde_json::{Map, Value};

/// Most nodes one document may compile into.
pub const MAX_NODES: usize = 20_000;
/// Node visits one value (a body, a parameter) may cost.
pub const MAX_STEPS: u32 = 200_000;
/// Nested node visits (instance depth times in-place composition).
const MAX_DEPTH: u16 = 512;
/// Nesting of schema objects inside one another in the document.
const MAX_DOC_DEPTH: usize = 200;

pub(super) type NodeId = u32;

/// Type bits.
pub(super) const NULL: u8 = 1;
pub(super) const BOOLEAN: u8 = 2;
pub(super) const OBJECT: u8 = 4;
pub(super) const ARRAY: u8 = 8;
pub(super) const NUMBER: u8 = 16;
pub(super) const INTEGER: u8 = 32;
pub(super) const STRING: u8 = 64;

pub(super) enum Check {
    False,
    Type(u8),
    Enum(Vec<Value>),
    Format(Format),
    Length(u64, u64),
    Pattern(Regex),
    Min(f64, bool),
    Max(f64, bool),
    MultipleOf(f64),
    Required(Vec<String>),
    Members {
        props: Vec<(String, NodeId)>,
        patterns: Vec<(Regex, NodeId)>,
        additional: Option<NodeId>,
    },
    MemberCount(u64, u64),
    ItemCount(u64, u64),
    Unique,
    Items(Vec<NodeId>, Option<NodeId>),
    Ref(NodeId),
    AllOf(Vec<NodeId>),
    AnyOf(Vec<NodeId>),
    OneOf(Vec<NodeId>),
    Not(NodeId),
}

impl Check {
    /// Checks run cheapest and most telling first: the type before the
    /// bounds, an object's own members before its composition.
    fn rank(&self) -> u8 {
        match self {
            Check::False => 0,
            Check::Type(_) => 1,
            Check::Enum(_) => 2,
            Check::Format(_) | Check::Length(..) | Check::Pattern(_) => 3,
            Check::Min(..) | Check::Max(..) | Check::MultipleOf(_) => 3,
            Check::Required(_) | Check::MemberCount(..) | Check::ItemCount(..) => 4,
            Check::Members { .. } | Check::Unique | Check::Items(..) => 5,
            _ => 6,
        }
    }
}

/// Adds a check after those of its rank and lower (an insertion, not a
/// sort: `slice::sort` costs kilobytes of wasm per element type).
fn add(checks: &mut Vec<Check>, check: Check) {
    let rank = check.rank();
    let at = checks
        .iter()
        .position(|c| c.rank() > rank)
        .unwrap_or(checks.len());
    checks.insert(at, check);
}

/// The compiled schemas of one document.
#[derive(Default)]
pub struct Schemas {
    nodes: Vec<Vec<Check>>,
}

/// Which OpenAPI version's Schema Object is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    V30,
    V31,
}

pub(super) struct Compiler<'d> {
    doc: &'d Value,
    /// Configuration path prefix of the document.
    base: &'d str,
    dialect: Dialect,
    nodes: Vec<Vec<Check>>,
    /// Configuration path of each node, for errors found after compiling.
    paths: Vec<String>,
    /// `$ref` targets already given a node: (JSON pointer, node).
    memo: Vec<(String, NodeId)>,
    /// Nodes allocated for a `$ref` target, still to compile.
    pending: Vec<(NodeId, String)>,
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "example",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "xml",
    "externalDocs",
    "discriminator",
    "$comment",
    "$schema",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$defs",
    "definitions",
    "contentMediaType",
    "contentEncoding",
];

/// `path.key`: the configuration path of a member (one function instead
/// of a `format!` at every call site).
#[inline(never)]
pub(super) fn keyed(path: &str, key: &str) -> String {
    let mut out = String::with_capacity(path.len() + key.len() + 1);
    out.push_str(path);
    out.push('.');
    out.push_str(key);
    out
}

/// `path[i]`.
#[inline(never)]
pub(super) fn indexed(path: &str, i: usize) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    out.push_str(path);
    out.push('[');
    out.push_str(itoa::Buffer::new().format(i));
    out.push(']');
    out
}

/// An error with a fixed message (one function instead of `err`'s
/// conversions at every call site).
#[inline(never)]
pub(super) fn bad(path: &str, message: &str) -> ConfigError {
    err(path, message)
}

/// A `$ref` whose target is not in the document.
#[inline(never)]
fn missing(path: impl Into<String>, pointer: &str) -> ConfigError {
    err(path, format!("`$ref` target `#{pointer}` does not exist"))
}

fn count(v: &Value, path: &str) -> Result<u64, ConfigError> {
    match v.as_u64() {
        Some(n) => Ok(n),
        None => match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => Ok(f as u64),
            _ => Err(bad(path, "must be a non-negative integer")),
        },
    }
}

fn number(v: &Value, path: &str) -> Result<f64, ConfigError> {
    v.as_f64().ok_or_else(|| bad(path, "must be a number"))
}

fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| bad(path, "must be true or false"))
}

fn regex(v: &Value, path: &str) -> Result<Regex, ConfigError> {
    let source = v.as_str().ok_or_else(|| bad(path, "must be a string"))?;
    Regex::new(source).map_err(|e| {
        err(
            path,
            format!("pattern `{source}` is not supported (Rust regex syntax, no look-around or backreferences): {e}"),
        )
    })
}

pub(super) fn type_bit(name: &str) -> Option<u8> {
    Some(match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "object" => OBJECT,
        "array" => ARRAY,
        "number" => NUMBER,
        "integer" => INTEGER,
        "string" => STRING,
        _ => return None,
    })
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
pub(super) fn percent_decode(s: &[u8]) -> Vec<u8> {
    decode(s, false)
}

/// Decodes `%XX` escapes, and `+` as a space if `plus`.
pub(super) fn decode(s: &[u8], plus: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let hex = |j: usize| s.get(j).and_then(|&c| (c as char).to_digit(16));
        if let (b'%', Some(h), Some(l)) = (b, hex(i + 1), hex(i + 2)) {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(if plus && b == b'+' { b' ' } else { b });
            i += 1;
        }
    }
    out
}

/// A JSON pointer token unescaped (`~1` is `/`, `~0` is `~`).
fn unescape(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        out.push(match (c, c == '~') {
            (_, true) => match chars.next() {
                Some('1') => '/',
                Some('0') => '~',
                _ => return String::new(),
            },
            (c, false) => c,
        });
    }
    out
}

/// The configuration path of a JSON pointer into the document, and the
/// value there.
pub(super) fn resolve<'d>(
    doc: &'d Value,
    base: &str,
    pointer: &str,
) -> Option<(&'d Value, String)> {
    let mut value = doc;
    let mut path = base.to_string();
    if pointer.is_empty() {
        return Some((value, path));
    }
    let rest = pointer.strip_prefix('/')?;
    for token in rest.split('/') {
        let token = unescape(token);
        match value {
            Value::Object(map) => {
                value = map.get(&token)?;
                path = keyed(&path, &token);
            }
            Value::Array(items) => {
                let i: usize = token.parse().ok()?;
                value = items.get(i)?;
                path = indexed(&path, i);
            }
            _ => return None,
        }
    }
    Some((value, path))
}

/// The local JSON pointer of a `$ref` (`#/components/...`), or an error.
pub(super) fn ref_pointer(reference: &Value, path: &str) -> Result<String, ConfigError> {
    let reference = reference
        .as_str()
        .ok_or_else(|| bad(path, "must be a string"))?;
    let Some(fragment) = reference.strip_prefix('#') else {
        return Err(err(
            path,
            format!("`{reference}`: external references are not resolved; bundle the document"),
        ));
    };
    if !fragment.is_empty() && !fragment.starts_with('/') {
        return Err(err(
            path,
            format!("`{reference}`: only `#/...` pointers are supported"),
        ));
    }
    String::from_utf8(percent_decode(fragment.as_bytes()))
        .map_err(|_| bad(path, "the reference is not valid UTF-8 once decoded"))
}

impl<'d> Compiler<'d> {
    pub(super) fn new(doc: &'d Value, base: &'d str, dialect: Dialect) -> Compiler<'d> {
        Compiler {
            doc,
            base,
            dialect,
            nodes: Vec::new(),
            paths: Vec::new(),
            memo: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Follows a local `$ref` (for parameters, request bodies, path items):
    /// the value it names and that value's configuration path.
    pub(super) fn follow(
        &self,
        reference: &Value,
        path: &str,
    ) -> Result<(&'d Value, String), ConfigError> {
        let pointer = ref_pointer(reference, path)?;
        resolve(self.doc, self.base, &pointer).ok_or_else(|| missing(path, &pointer))
    }

    /// Compiles the schema `v` found at `path` and every schema it refers
    /// to.
    pub(super) fn root(&mut self, v: &Value, path: &str) -> Result<NodeId, ConfigError> {
        let id = self.compile(v, path, 0)?;
        while let Some((target, pointer)) = self.pending.pop() {
            let Some((value, at)) = resolve(self.doc, self.base, &pointer) else {
                let from = self.paths.get(target as usize).cloned().unwrap_or_default();
                return Err(missing(from, &pointer));
            };
            if let Some(p) = self.paths.get_mut(target as usize) {
                p.clone_from(&at);
            }
            self.fill(target, value, &at, 0)?;
        }
        Ok(id)
    }

    fn alloc(&mut self, path: &str) -> Result<NodeId, ConfigError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(err(
                path,
                format!("the document's schemas compile to more than {MAX_NODES} nodes"),
            ));
        }
        self.nodes.push(Vec::new());
        self.paths.push(path.to_string());
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn compile(&mut self, v: &Value, path: &str, depth: usize) -> Result<NodeId, ConfigError> {
        let id = self.alloc(path)?;
        self.fill(id, v, path, depth)?;
        Ok(id)
    }

    fn compile_all(
        &mut self,
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Vec<NodeId>, ConfigError> {
        let items = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad(path, "must be a non-empty array of schemas"))?;
        let mut ids = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            ids.push(self.compile(item, &indexed(path, i), depth + 1)?);
        }
        Ok(ids)
    }

    fn reference(&mut self, v: &Value, path: &str) -> Result<NodeId, ConfigError> {
        let pointer = ref_pointer(v, path)?;
        if let Some(&(_, id)) = self.memo.iter().find(|(p, _)| *p == pointer) {
            return Ok(id);
        }
        if resolve(self.doc, self.base, &pointer).is_none() {
            return Err(missing(path, &pointer));
        }
        let id = self.alloc(path)?;
        self.memo.push((pointer.clone(), id));
        self.pending.push((id, pointer));
        Ok(id)
    }

    /// Whether the property schema `v` is `readOnly` (directly or through
    /// one `$ref`): a required read-only property is required in responses
    /// only (OpenAPI 3.0 Schema Object, `readOnly`).
    fn read_only(&self, v: &Value) -> bool {
        let target = v
            .get("$ref")
            .and_then(|r| ref_pointer(r, "").ok())
            .and_then(|p| resolve(self.doc, "", &p))
            .map_or(v, |(t, _)| t);
        [v, target]
            .iter()
            .any(|s| s.get("readOnly").and_then(Value::as_bool) == Some(true))
    }

    fn fill(&mut self, id: NodeId, v: &Value, path: &str, depth: usize) -> Result<(), ConfigError> {
        if depth > MAX_DOC_DEPTH {
            return Err(bad(path, "schemas are nested too deeply"));
        }
        let obj: &Map<String, Value> = match v {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => {
                self.set(id, vec![Check::False]);
                return Ok(());
            }
            Value::Object(obj) => obj,
            _ => {
                return Err(bad(
                    path,
                    "a schema must be an object (or true/false in 3.1)",
                ))
            }
        };
        let v30 = self.dialect == Dialect::V30;
        let mut checks = Vec::new();
        let mut types: Option<u8> = None;
        let mut nullable = false;
        let (mut min, mut max) = (None, None);
        let (mut ex_min, mut ex_max) = (false, false);
        let (mut len_lo, mut len_hi) = (0, u64::MAX);
        let (mut items_lo, mut items_hi) = (0, u64::MAX);
        let (mut mem_lo, mut mem_hi) = (0, u64::MAX);
        let mut members = None;
        let (mut prefix, mut rest) = (Vec::new(), None);
        for (key, value) in obj {
            let at = keyed(path, key);
            let at = at.as_str();
            match key.as_str() {
                "$ref" => add(&mut checks, Check::Ref(self.reference(value, at)?)),
                "type" => {
                    let names: Vec<&Value> = match value {
                        Value::Array(a) if !v30 => a.iter().collect(),
                        other => vec![other],
                    };
                    let mut bits = 0;
                    for name in names {
                        bits |= name.as_str().and_then(type_bit).ok_or_else(|| {
                            bad(
                                at,
                                "must be a JSON Schema type name (or, in 3.1, an array of them)",
                            )
                        })?;
                    }
                    types = Some(bits);
                }
                "nullable" if v30 => nullable = boolean(value, at)?,
                "nullable" => {
                    return Err(bad(
                        at,
                        "`nullable` is OpenAPI 3.0; in 3.1 add \"null\" to `type`",
                    ))
                }
                "enum" => match value {
                    Value::Array(a) if !a.is_empty() => add(&mut checks, Check::Enum(a.clone())),
                    _ => return Err(bad(at, "must be a non-empty array")),
                },
                "const" => add(&mut checks, Check::Enum(vec![value.clone()])),
                "properties" | "patternProperties" | "additionalProperties" => {
                    if members.is_none() {
                        members = Some((Vec::new(), Vec::new(), None));
                    }
                    let Some((props, patterns, additional)) = members.as_mut() else {
                        continue;
                    };
                    if key == "additionalProperties" {
                        *additional = Some(self.compile(value, at, depth + 1)?);
                        continue;
                    }
                    let map = value
                        .as_object()
                        .ok_or_else(|| bad(at, "must be an object of schemas"))?;
                    for (name, schema) in map {
                        let node = self.compile(schema, &keyed(at, name), depth + 1)?;
                        if key == "properties" {
                            props.push((name.clone(), node));
                        } else {
                            patterns.push((
                                regex(&Value::from(name.as_str()), &keyed(at, name))?,
                                node,
                            ));
                        }
                    }
                }
                "required" => {
                    let names = value
                        .as_array()
                        .ok_or_else(|| bad(at, "must be an array of member names"))?;
                    let mut list = Vec::with_capacity(names.len());
                    for (i, name) in names.iter().enumerate() {
                        let name = name
                            .as_str()
                            .ok_or_else(|| bad(&indexed(at, i), "must be a string"))?;
                        let prop = obj.get("properties").and_then(|p| p.get(name));
                        if !prop.is_some_and(|p| self.read_only(p)) {
                            list.push(name.to_string());
                        }
                    }
                    if !list.is_empty() {
                        add(&mut checks, Check::Required(list));
                    }
                }
                "items" => {
                    if value.is_array() {
                        return Err(bad(
                            at,
                            "must be a schema (use `prefixItems` for tuples in 3.1)",
                        ));
                    }
                    rest = Some(self.compile(value, at, depth + 1)?);
                }
                "prefixItems" if !v30 => prefix = self.compile_all(value, at, depth)?,
                "minItems" => items_lo = count(value, at)?,
                "maxItems" => items_hi = count(value, at)?,
                "minLength" => len_lo = count(value, at)?,
                "maxLength" => len_hi = count(value, at)?,
                "minProperties" => mem_lo = count(value, at)?,
                "maxProperties" => mem_hi = count(value, at)?,
                "uniqueItems" => {
                    if boolean(value, at)? {
                        add(&mut checks, Check::Unique)
                    }
                }
                "pattern" => add(&mut checks, Check::Pattern(regex(value, at)?)),
                "minimum" => min = Some(number(value, at)?),
                "maximum" => max = Some(number(value, at)?),
                "exclusiveMinimum" | "exclusiveMaximum" => {
                    let lower = key == "exclusiveMinimum";
                    match value {
                        Value::Bool(b) if v30 => {
                            *(if lower { &mut ex_min } else { &mut ex_max }) = *b
                        }
                        Value::Number(_) if !v30 => {
                            let n = number(value, at)?;
                            add(
                                &mut checks,
                                if lower {
                                    Check::Min(n, true)
                                } else {
                                    Check::Max(n, true)
                                },
                            );
                        }
                        _ if v30 => return Err(bad(at, "must be true or false in OpenAPI 3.0")),
                        _ => return Err(bad(at, "must be a number in OpenAPI 3.1")),
                    }
                }
                "multipleOf" => match value.as_f64() {
                    Some(n) if n > 0.0 => add(&mut checks, Check::MultipleOf(n)),
                    _ => return Err(bad(at, "must be a number greater than 0")),
                },
                "format" => {
                    let name = value.as_str().ok_or_else(|| bad(at, "must be a string"))?;
                    if let Some(f) = Format::named(name) {
                        add(&mut checks, Check::Format(f));
                    }
                }
                "allOf" => add(
                    &mut checks,
                    Check::AllOf(self.compile_all(value, at, depth)?),
                ),
                "anyOf" => add(
                    &mut checks,
                    Check::AnyOf(self.compile_all(value, at, depth)?),
                ),
                "oneOf" => add(
                    &mut checks,
                    Check::OneOf(self.compile_all(value, at, depth)?),
                ),
                "not" => add(&mut checks, Check::Not(self.compile(value, at, depth + 1)?)),
                k if k.starts_with("x-") || ANNOTATIONS.contains(&k) => {}
                k => {
                    return Err(err(
                        at,
                        format!("`{k}` is not supported by palisade's validator"),
                    ))
                }
            }
        }
        if let Some(mut bits) = types {
            if nullable {
                bits |= NULL;
            }
            add(&mut checks, Check::Type(bits));
        }
        if let Some(n) = min {
            add(&mut checks, Check::Min(n, ex_min));
        }
        if let Some(n) = max {
            add(&mut checks, Check::Max(n, ex_max));
        }
        if (len_lo, len_hi) != (0, u64::MAX) {
            add(&mut checks, Check::Length(len_lo, len_hi));
        }
        if (items_lo, items_hi) != (0, u64::MAX) {
            add(&mut checks, Check::ItemCount(items_lo, items_hi));
        }
        if (mem_lo, mem_hi) != (0, u64::MAX) {
            add(&mut checks, Check::MemberCount(mem_lo, mem_hi));
        }
        if let Some((props, patterns, additional)) = members {
            add(
                &mut checks,
                Check::Members {
                    props,
                    patterns,
                    additional,
                },
            );
        }
        if !prefix.is_empty() || rest.is_some() {
            add(&mut checks, Check::Items(prefix, rest));
        }
        self.set(id, checks);
        Ok(())
    }

    fn set(&mut self, id: NodeId, checks: Vec<Check>) {
        if let Some(node) = self.nodes.get_mut(id as usize) {
            *node = checks;
        }
    }

    /// The type bits a node admits, looking through `$ref` and `allOf`
    /// (0: any), and its `items` schema.
    pub(super) fn shape(&self, id: NodeId) -> (u8, Option<NodeId>) {
        let (mut bits, mut items) = (0u8, None);
        let mut todo = vec![id];
        let mut seen = 0;
        while let Some(n) = todo.pop() {
            seen += 1;
            if seen > 64 {
                break;
            }
            for check in self.nodes.get(n as usize).into_iter().flatten() {
                match check {
                    Check::Type(b) if bits == 0 => bits = *b,
                    Check::Type(b) => bits &= *b,
                    Check::Items(_, Some(i)) => items = Some(*i),
                    Check::Ref(r) => todo.push(*r),
                    Check::AllOf(all) => todo.extend(all),
                    _ => {}
                }
            }
        }
        (bits, items)
    }

    /// Refuses cycles of `$ref` and composition that never descend into
    /// the instance, then hands the arena over.
    pub(super) fn finish(self) -> Result<Schemas, ConfigError> {
        let n = self.nodes.len();
        // 0: not seen, 1: on the stack, 2: done.
        let mut state = vec![0u8; n];
        let mut stack: Vec<(NodeId, usize)> = Vec::new();
        for start in 0..n {
            if state.get(start) != Some(&0) {
                continue;
            }
            stack.push((start as NodeId, 0));
            if let Some(s) = state.get_mut(start) {
                *s = 1;
            }
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let edges = self.in_place(node);
                let edge = edges.get(*next).copied();
                *next += 1;
                match edge {
                    Some(child) => match state.get(child as usize) {
                        Some(0) => {
                            if let Some(s) = state.get_mut(child as usize) {
                                *s = 1;
                            }
                            stack.push((child, 0));
                        }
                        Some(1) => {
                            let at = self.paths.get(node as usize).cloned().unwrap_or_default();
                            return Err(bad(
                                &at,
                                "this schema refers back to itself without descending into \
                                 a property or item (a `$ref`/`allOf`/`anyOf`/`oneOf`/`not` cycle)",
                            ));
                        }
                        _ => {}
                    },
                    None => {
                        if let Some(s) = state.get_mut(node as usize) {
                            *s = 2;
                        }
                        stack.pop();
                    }
                }
            }
        }
        Ok(Schemas { nodes: self.nodes })
    }

    /// The nodes a node applies to the same instance.
    fn in_place(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        for check in self.nodes.get(id as usize).into_iter().flatten() {
            match check {
                Check::Ref(r) | Check::Not(r) => out.push(*r),
                Check::AllOf(v) | Check::AnyOf(v) | Check::OneOf(v) => out.extend(v),
                _ => {}
            }
        }
        out
    }
}

/// Why a value failed.
pub(super) enum Fail {
    /// The instance's JSON pointer (empty inside `anyOf`/`oneOf`/`not`
    /// branches, where it is not reported) and what is wrong.
    Invalid(String, &'static str),
    /// The step or nesting budget ran out.
    Budget,
}

enum Seg<'v> {
    Key(&'v str),
    Index(usize),
}

struct Run<'v> {
    steps: u32,
    depth: u16,
    quiet: u16,
    path: Vec<Seg<'v>>,
}

/// Longest instance pointer reported, in bytes.
const MAX_POINTER: usize = 128;

fn push_truncated(out: &mut String, s: &str) {
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_POINTER {
            return;
        }
        out.push(c);
    }
}

/// An RFC 6901 pointer to `path` (plus `last`), cut at 128 bytes.
fn pointer(path: &[Seg<'_>], last: Option<&str>) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => push_token(&mut out, k),
            Seg::Index(i) => push_token(&mut out, itoa::Buffer::new().format(*i)),
        }
    }
    if let Some(k) = last {
        push_token(&mut out, k);
    }
    out
}

/// Appends `/token`, escaped (RFC 6901), to a pointer cut at 128 bytes.
pub(super) fn push_token(out: &mut String, key: &str) {
    push_truncated(out, "/");
    for c in key.chars() {
        match c {
            '~' => push_truncated(out, "~0"),
            '/' => push_truncated(out, "~1"),
            c => push_truncated(out, c.encode_utf8(&mut [0; 4])),
        }
    }
}

/// Type names, for messages.
pub(super) fn type_message(bits: u8) -> &'static str {
    match bits {
        BOOLEAN => "must be a boolean",
        OBJECT => "must be an object",
        ARRAY => "must be an array",
        NUMBER => "must be a number",
        INTEGER => "must be an integer",
        STRING => "must be a string",
        NULL => "must be null",
        _ => "has the wrong type",
    }
}

fn bits_of(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        Value::Number(n) if is_integer(n) => NUMBER | INTEGER,
        Value::Number(_) => NUMBER,
    }
}

/// How many values `v` holds, itself included.
fn weight(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(weight).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(weight).sum::<usize>(),
        _ => 1,
    }
}

/// A number with no fractional part (`1.0` too).
fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// JSON equality with numbers compared by value (`1 == 1.0`).
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Null, Value::Null) => true,
        _ => false,
    }
}

fn multiple_of(n: &serde_json::Number, m: f64) -> bool {
    if let (Some(i), true) = (n.as_i64(), m.fract() == 0.0 && m < 9.0e18) {
        return i % (m as i64) == 0;
    }
    let Some(x) = n.as_f64() else { return false };
    let q = x / m;
    q.is_finite() && (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
}

impl Schemas {
    /// Validates `v` against node `id`.
    pub(super) fn validate(&self, id: NodeId, v: &Value) -> Result<(), Fail> {
        let mut run = Run {
            steps: MAX_STEPS,
            depth: 0,
            quiet: 0,
            path: Vec::new(),
        };
        self.node(id, v, &mut run)
    }

    fn node<'v>(&self, id: NodeId, v: &'v Value, run: &mut Run<'v>) -> Result<(), Fail> {
        if run.steps == 0 || run.depth >= MAX_DEPTH {
            return Err(Fail::Budget);
        }
        run.steps -= 1;
        run.depth += 1;
        let result = self.checks(id, v, run);
        run.depth -= 1;
        result
    }

    fn fail(run: &Run<'_>, last: Option<&str>, message: &'static str) -> Result<(), Fail> {
        let at = if run.quiet > 0 {
            String::new()
        } else {
            pointer(&run.path, last)
        };
        Err(Fail::Invalid(at, message))
    }

    fn charge(run: &mut Run<'_>, cost: usize) -> Result<(), Fail> {
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        run.steps = run.steps.checked_sub(cost).ok_or(Fail::Budget)?;
        Ok(())
    }

    /// Whether `v` matches node `id`, for a composition branch (the
    /// budget still counts; running out is an error, not a mismatch).
    fn matches<'v>(&self, id: NodeId, v: &'v Value, run: &mut Run<'v>) -> Result<bool, Fail> {
        let len = run.path.len();
        run.quiet += 1;
        let result = self.node(id, v, run);
        run.quiet -= 1;
        run.path.truncate(len);
        match result {
            Ok(()) => Ok(true),
            Err(Fail::Invalid(..)) => Ok(false),
            Err(Fail::Budget) => Err(Fail::Budget),
        }
    }

    fn checks<'v>(&self, id: NodeId, v: &'v Value, run: &mut Run<'v>) -> Result<(), Fail> {
        let Some(checks) = self.nodes.get(id as usize) else {
            return Ok(());
        };
        for check in checks {
            match (check, v) {
                (Check::False, _) => return Self::fail(run, None, "not allowed here"),
                (Check::Type(bits), _) if bits & bits_of(v) == 0 => {
                    return Self::fail(run, None, type_message(*bits));
                }
                (Check::Enum(values), _) => {
                    Self::charge(run, values.len())?;
                    if !values.iter().any(|e| json_eq(e, v)) {
                        return Self::fail(run, None, "is not one of the allowed values");
                    }
                }
                (Check::Format(f), _) => {
                    if let Err(message) = f.check(v) {
                        return Self::fail(run, None, message);
                    }
                }
                (Check::Length(lo, hi), Value::String(s)) => {
                    Self::charge(run, s.len() / 256)?;
                    let n = s.chars().count() as u64;
                    if n < *lo {
                        return Self::fail(run, None, "is too short");
                    }
                    if n > *hi {
                        return Self::fail(run, None, "is too long");
                    }
                }
                (Check::Pattern(re), Value::String(s)) => {
                    Self::charge(run, s.len() / 16)?;
                    if !re.is_match(s) {
                        return Self::fail(run, None, "does not match the pattern");
                    }
                }
                (Check::Min(m, exclusive), Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    if x < *m || (*exclusive && x == *m) {
                        return Self::fail(run, None, "is below the minimum");
                    }
                }
                (Check::Max(m, exclusive), Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    if x > *m || (*exclusive && x == *m) {
                        return Self::fail(run, None, "is above the maximum");
                    }
                }
                (Check::MultipleOf(m), Value::Number(n)) if !multiple_of(n, *m) => {
                    return Self::fail(run, None, "is not a multiple of `multipleOf`");
                }
                (Check::Required(names), Value::Object(map)) => {
                    Self::charge(run, names.len())?;
                    if let Some(name) = names.iter().find(|n| !map.contains_key(n.as_str())) {
                        return Self::fail(run, Some(name), "required member missing");
                    }
                }
                (Check::MemberCount(lo, hi), Value::Object(map)) => {
                    let n = map.len() as u64;
                    if n < *lo {
                        return Self::fail(run, None, "has too few members");
                    }
                    if n > *hi {
                        return Self::fail(run, None, "has too many members");
                    }
                }
                (Check::ItemCount(lo, hi), Value::Array(items)) => {
                    let n = items.len() as u64;
                    if n < *lo {
                        return Self::fail(run, None, "has too few items");
                    }
                    if n > *hi {
                        return Self::fail(run, None, "has too many items");
                    }
                }
                (Check::Unique, Value::Array(items)) => {
                    // A comparison costs up to the smaller item's size.
                    let sizes: Vec<usize> = items.iter().map(weight).collect();
                    Self::charge(run, sizes.iter().sum())?;
                    for (i, a) in items.iter().enumerate() {
                        let size = sizes.get(i).copied().unwrap_or(1);
                        for (j, b) in items.iter().enumerate().skip(i + 1) {
                            Self::charge(run, size.min(sizes.get(j).copied().unwrap_or(1)))?;
                            if json_eq(a, b) {
                                return Self::fail(run, None, "has duplicate items");
                            }
                        }
                    }
                }
                (
                    Check::Members {
                        props,
                        patterns,
                        additional,
                    },
                    Value::Object(map),
                ) => {
                    for (key, value) in map {
                        Self::charge(run, 1 + props.len() / 8)?;
                        let mut known = false;
                        let declared = props.iter().find(|(name, _)| name == key);
                        // A name the document does not declare is the
                        // client's own text, which may be a secret: a
                        // pointer shows it as `*`.
                        let shown = if declared.is_some() {
                            key.as_str()
                        } else {
                            "*"
                        };
                        run.path.push(Seg::Key(shown));
                        if let Some((_, node)) = declared {
                            known = true;
                            self.node(*node, value, run)?;
                        }
                        for (re, node) in patterns {
                            Self::charge(run, key.len() / 16)?;
                            if re.is_match(key) {
                                known = true;
                                self.node(*node, value, run)?;
                            }
                        }
                        if let (false, Some(node)) = (known, additional) {
                            self.node(*node, value, run)?;
                        }
                        run.path.pop();
                    }
                }
                (Check::Items(prefix, rest), Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let node = match prefix.get(i) {
                            Some(n) => *n,
                            None => match rest {
                                Some(n) => *n,
                                None => break,
                            },
                        };
                        run.path.push(Seg::Index(i));
                        self.node(node, item, run)?;
                        run.path.pop();
                    }
                }
                (Check::Ref(node), _) => self.node(*node, v, run)?,
                (Check::AllOf(nodes), _) => {
                    for node in nodes {
                        self.node(*node, v, run)?;
                    }
                }
                (Check::AnyOf(nodes), _) => {
                    let mut any = false;
                    for node in nodes {
                        if self.matches(*node, v, run)? {
                            any = true;
                            break;
                        }
                    }
                    if !any {
                        return Self::fail(run, None, "matches none of the `anyOf` schemas");
                    }
                }
                (Check::OneOf(nodes), _) => {
                    let mut n = 0;
                    for node in nodes {
                        if self.matches(*node, v, run)? {
                            n += 1;
                        }
                    }
                    if n == 0 {
                        return Self::fail(run, None, "matches none of the `oneOf` schemas");
                    }
                    if n > 1 {
                        return Self::fail(
                            run,
                            None,
                            "matches more than one of the `oneOf` schemas",
                        );
                    }
                }
                (Check::Not(node), _) if self.matches(*node, v, run)? => {
                    return Self::fail(run, None, "matches the `not` schema");
                }
                _ => {}
            }
        }
        Ok(())
    }
}
