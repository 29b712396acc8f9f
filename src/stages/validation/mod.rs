//! The `validation` section and stage: a request's shape checked before
//! any expensive stage (method, URL, header and body sizes, media type,
//! JSON well-formedness and depth), and its values read for path
//! traversal, control bytes, SQL and script injection (`rules`).
//!
//! The header phase checks what the headers carry and plans the body
//! phase: a body is buffered (up to `max_body_bytes`) when it must be
//! read (a JSON or form body on a route scanning for injection) or when
//! its size is not declared. One finding per check family per request.

pub mod config;
pub mod rules;

use crate::core::mode::Mode;
use crate::core::reasons::ValidationError;
use crate::core::request::HeaderMap;
use crate::core::verdict::{Finding, Reason, Stage};
use config::{Check, Policy, Validation};
use rules::{Flags, Want};
use std::borrow::Cow;

pub use config::{compile, RawValidation};

/// How a body is read for injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    /// Neither: only its size and media type are checked.
    Opaque,
}

/// What the body phase checks, planned by the header phase.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    pub mode: Mode,
    pub max_bytes: usize,
    pub kind: BodyKind,
    /// The declared media type is not one the route accepts: a non-empty
    /// body is refused (an empty one has no type to check).
    pub refused_media_type: bool,
    json_max_depth: usize,
    want: Want,
}

/// Collects at most one finding per family.
struct Findings<'a> {
    mode: Mode,
    out: &'a mut Vec<Finding>,
}

impl Findings<'_> {
    fn push(&mut self, error: ValidationError) {
        let reason = Reason::Validation(error);
        if !self.out.iter().any(|f| f.reason == reason) {
            self.out
                .push(Finding::new(Stage::Validate, reason, self.mode));
        }
    }

    fn flags(&mut self, flags: Flags) {
        if flags.control {
            self.push(ValidationError::ControlBytes);
        }
        if flags.traversal {
            self.push(ValidationError::Traversal);
        }
        if flags.sqli {
            self.push(ValidationError::Sqli);
        }
        if flags.xss {
            self.push(ValidationError::Xss);
        }
    }
}

fn want(policy: &Policy, line_breaks_ok: bool) -> Want {
    Want {
        traversal: policy.checks.has(Check::Traversal),
        control: policy.checks.has(Check::ControlBytes),
        sqli: policy.checks.has(Check::Sqli),
        xss: policy.checks.has(Check::Xss),
        line_breaks_ok,
    }
}

/// The header phase: checks what the headers carry and returns the body
/// phase's plan, if the body must be seen.
pub fn check_headers(
    v: &Validation,
    route: crate::core::routes::RouteId,
    headers: &HeaderMap<'_>,
    findings: &mut Vec<Finding>,
) -> Option<BodyPlan> {
    let policy = v.policy_for(route)?;
    let mut out = Findings {
        mode: policy.mode,
        out: findings,
    };
    let has = |c| policy.checks.has(c);
    let method = headers.get(":method").unwrap_or_default();
    if has(Check::Method) && !policy.methods.iter().any(|m| m.as_bytes() == method) {
        out.push(ValidationError::Method);
    }
    let path = headers.get(":path").unwrap_or_default();
    if has(Check::UrlLength) && path.len() > policy.max_url_bytes {
        out.push(ValidationError::UrlLength);
    }
    let mut count = 0;
    let mut bytes = 0;
    let mut control = false;
    for (name, value) in headers.pairs() {
        if name.first() == Some(&b':') {
            continue;
        }
        count += 1;
        bytes += name.len() + value.len();
        control = control || rules::has_control(value, false);
    }
    if has(Check::Headers) && count > policy.max_headers {
        out.push(ValidationError::HeaderCount);
    }
    if has(Check::Headers) && bytes > policy.max_header_bytes {
        out.push(ValidationError::HeaderSize);
    }
    if has(Check::ControlBytes) && control {
        out.push(ValidationError::ControlBytes);
    }
    scan_url(v, policy, path, &mut out);
    plan_body(policy, method, headers, &mut out)
}

/// The path and each query parameter's name and value, decoded.
fn scan_url(v: &Validation, policy: &Policy, path: &[u8], out: &mut Findings<'_>) {
    let want = want(policy, false);
    let (path, query) = match path.iter().position(|&b| b == b'?') {
        Some(q) => (&path[..q], &path[q + 1..]),
        None => (path, &[][..]),
    };
    // SQL and script rules read values; a path is segments an application
    // routes on, read for traversal and control bytes only.
    out.flags(v.rules.scan(
        path,
        Want {
            sqli: false,
            xss: false,
            ..want
        },
    ));
    for pair in query.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        for part in [name, value] {
            if part.is_empty() {
                continue;
            }
            // `+` is a space in a query (HTML forms); the rules decode the
            // percent-escapes themselves, raw first.
            let spaced: Cow<'_, [u8]> = if part.contains(&b'+') {
                Cow::Owned(
                    part.iter()
                        .map(|&b| if b == b'+' { b' ' } else { b })
                        .collect(),
                )
            } else {
                Cow::Borrowed(part)
            };
            out.flags(v.rules.scan(&spaced, want));
        }
    }
}

/// `Content-Length`, `Content-Type` against the policy, and what the body
/// phase must do.
fn plan_body(
    policy: &Policy,
    method: &[u8],
    headers: &HeaderMap<'_>,
    out: &mut Findings<'_>,
) -> Option<BodyPlan> {
    let has = |c| policy.checks.has(c);
    let length = headers
        .get("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    if has(Check::BodySize)
        && length.is_some_and(|l| l > u64::try_from(policy.max_body_bytes).unwrap_or(u64::MAX))
    {
        out.push(ValidationError::BodySize);
        return None;
    }
    let media_type = headers
        .get("content-type")
        .map(|v| {
            let v = std::str::from_utf8(v).unwrap_or("\u{fffd}");
            v.split(';').next().unwrap_or_default().trim()
        })
        .unwrap_or_default();
    let refused_media_type = has(Check::ContentType)
        && policy
            .content_types
            .as_ref()
            .is_some_and(|types| !types.iter().any(|t| t.matches(media_type)));
    // A declared body of an unaccepted type is refused now.
    let declared = length.is_some_and(|l| l > 0) || headers.get("transfer-encoding").is_some();
    if refused_media_type && declared {
        out.push(ValidationError::ContentType);
        return None;
    }
    let kind = body_kind(media_type);
    let want = want(policy, true);
    let scans = match kind {
        BodyKind::Json => {
            has(Check::Json) || want.sqli || want.xss || want.traversal || want.control
        }
        BodyKind::Form => want.sqli || want.xss || want.traversal || want.control,
        BodyKind::Opaque => false,
    };
    // A body of undeclared size (chunked, HTTP/2 without a length) is
    // counted as it comes, unless the method cannot carry one.
    let bodiless = matches!(method, b"GET" | b"HEAD" | b"OPTIONS");
    let undeclared = length.is_none() && (!bodiless || headers.get("transfer-encoding").is_some());
    let must_read = (scans && length != Some(0) && (length.is_some() || undeclared))
        || (undeclared && (has(Check::BodySize) || refused_media_type));
    must_read
        .then_some(BodyPlan {
            mode: policy.mode,
            max_bytes: policy.max_body_bytes,
            kind,
            refused_media_type,
            json_max_depth: policy.json_max_depth,
            want: if scans {
                want
            } else {
                Want {
                    traversal: false,
                    control: false,
                    sqli: false,
                    xss: false,
                    line_breaks_ok: true,
                }
            },
        })
        .map(|mut plan| {
            if kind == BodyKind::Json && !has(Check::Json) {
                plan.json_max_depth = usize::MAX;
            }
            plan
        })
}

fn body_kind(media_type: &str) -> BodyKind {
    let lower = media_type.to_ascii_lowercase();
    if lower == "application/json" || lower.ends_with("+json") {
        BodyKind::Json
    } else if lower == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else {
        BodyKind::Opaque
    }
}

/// The body phase: the whole body (or `None` when it was larger than
/// `plan.max_bytes`).
pub fn check_body(
    v: &Validation,
    plan: &BodyPlan,
    body: Option<&[u8]>,
    findings: &mut Vec<Finding>,
) {
    let mut out = Findings {
        mode: plan.mode,
        out: findings,
    };
    let Some(body) = body.filter(|b| b.len() <= plan.max_bytes) else {
        out.push(ValidationError::BodySize);
        return;
    };
    if body.is_empty() {
        return;
    }
    if plan.refused_media_type {
        out.push(ValidationError::ContentType);
        return;
    }
    match plan.kind {
        BodyKind::Json => json::check(v, plan, body, &mut out),
        BodyKind::Form => {
            for (name, value) in form_urlencoded::parse(body) {
                out.flags(v.rules.scan(name.as_bytes(), plan.want));
                out.flags(v.rules.scan(value.as_bytes(), plan.want));
            }
        }
        BodyKind::Opaque => {}
    }
}

mod json;

#[cfg(test)]
mod tests;
