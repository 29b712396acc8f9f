//! The `openapi` stage: a positive security model. The operator's OpenAPI
//! document says which operations exist and what they take; a request to
//! an operation it does not declare (a shadow or retired endpoint) is
//! refused, its path, query, header and cookie parameters are checked
//! against their declarations, and a JSON body against the operation's
//! schema, in the body phase. The document is compiled once, when the
//! configuration is loaded ([`spec`]).

pub mod config;
pub mod spec;

use crate::core::mode::Mode;
use crate::core::request::HeaderMap;
use crate::core::routes::RouteId;
use crate::core::verdict::{Detail, Finding, Reason, Stage};
pub use config::{OpenApi, RawOpenApi};
use spec::{Lookup, Violation, ViolationKind};

/// What the body phase validates: the matched operation's request body.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    /// Index of the operation in the document.
    pub operation: usize,
    pub mode: Mode,
    /// The request's `Content-Type`, as sent.
    pub content_type: Option<String>,
}

/// What the header check learned.
pub struct Checked {
    /// The request is an operation of the document.
    pub declared: bool,
    pub body: Option<BodyPlan>,
}

/// The method and path (without its query) of a request, and its query.
fn target<'h>(headers: &HeaderMap<'h>) -> Option<(&'h str, &'h str, Option<&'h str>)> {
    let method = headers.get_str(":method")?;
    let full = headers.get_str(":path")?;
    let (path, query) = match full.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (full, None),
    };
    Some((method, path, query))
}

fn finding(reason: Reason, mode: Mode, operation: Option<&str>, v: Violation) -> Finding {
    Finding {
        detail: Some(Box::new(Detail {
            operation: operation.map(str::to_string),
            location: v.location,
            message: v.message,
        })),
        ..Finding::new(Stage::Schema, reason, mode)
    }
}

/// Whether the document declares the request's operation, whatever the
/// route class's setting (`default_deny`).
pub fn declares(o: &OpenApi, headers: &HeaderMap<'_>) -> bool {
    target(headers)
        .is_some_and(|(method, path, _)| matches!(o.api.find(method, path), Lookup::Found(_)))
}

/// The header phase: the operation, then its parameters. The body, if
/// the operation declares one, is left to [`check_body`].
pub fn check_headers(
    o: &OpenApi,
    route: RouteId,
    headers: &HeaderMap<'_>,
    findings: &mut Vec<Finding>,
) -> Checked {
    let unchecked = Checked {
        declared: false,
        body: None,
    };
    let (Some(Some(mode)), Some((method, path, query))) =
        (o.by_route.get(route).copied(), target(headers))
    else {
        return unchecked;
    };
    let matched = match o.api.find(method, path) {
        Lookup::Found(matched) => matched,
        Lookup::MethodNotDeclared | Lookup::PathNotDeclared => {
            let message = "no operation of the API has this method and path";
            let v = Violation {
                kind: ViolationKind::Parameter,
                location: String::new(),
                message,
            };
            findings.push(finding(Reason::SchemaUnknownOperation, mode, None, v));
            return unchecked;
        }
    };
    let operation = matched.operation;
    let header = |name: &str| {
        let values = headers.get_all(name);
        values
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    if let Err(v) = operation.check_parameters(&matched, query, &header) {
        let reason = match v.kind {
            ViolationKind::Parameter => Reason::SchemaParameter,
            ViolationKind::Body => Reason::SchemaBody,
        };
        findings.push(finding(reason, mode, Some(operation.name()), v));
    }
    // A body where the operation declares none: a smuggling channel past
    // the document (seen from the framing headers; an HTTP/2 body without
    // `content-length` is not).
    let sends_body = headers.get("transfer-encoding").is_some()
        || headers
            .get_str("content-length")
            .is_some_and(|n| n.trim() != "0");
    if operation.body().is_none() && sends_body {
        let v = Violation {
            kind: ViolationKind::Body,
            location: String::new(),
            message: "the operation takes no body",
        };
        findings.push(finding(Reason::SchemaBody, mode, Some(operation.name()), v));
    }
    // The body phase buffers and reads the body unless its declared media
    // type is one palisade does not parse (an upload may be large).
    let content_type = headers.get_str("content-type");
    let body = match (operation.body(), o.api.index_of(operation)) {
        (Some(b), Some(index)) if !content_type.is_some_and(|ct| b.passes_unread(ct)) => {
            Some(BodyPlan {
                operation: index,
                mode,
                content_type: content_type.map(str::to_string),
            })
        }
        _ => None,
    };
    Checked {
        declared: true,
        body,
    }
}

/// The body phase: `bytes` against the operation's request body; `None`
/// for a body over `max_body_bytes`.
pub fn check_body(o: &OpenApi, plan: &BodyPlan, bytes: Option<&[u8]>) -> Option<Finding> {
    let operation = o.api.operation(plan.operation)?;
    let body = operation.body()?;
    let result = match bytes {
        Some(bytes) => body.validate(plan.content_type.as_deref(), bytes),
        None => Err(Violation {
            kind: ViolationKind::Body,
            location: String::new(),
            message: "body larger than openapi.max_body_bytes",
        }),
    };
    let v = result.err()?;
    Some(finding(
        Reason::SchemaBody,
        plan.mode,
        Some(operation.name()),
        v,
    ))
}
