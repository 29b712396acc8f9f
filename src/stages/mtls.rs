//! The `mtls` section and stage: device identity from the verified client
//! certificate, required per route class and held to a list of accepted
//! identities.
//!
//! The proxy verifies the certificate (Envoy's `require_client_certificate`
//! and `validation_context` on the listener); palisade reads what it
//! verified from the connection's properties, one host call on the route
//! classes that need the identity, and never parses a certificate itself.
//! A listener that accepts certificates without verifying them makes any
//! identity claimable: the README says how to set one up.

use crate::core::config_error::{err, ByName, ConfigError, PerRoute};
use crate::core::identity::{self, IdentityField, IdentityPattern};
use crate::core::mode::Mode;
use crate::core::request::Facts;
use crate::core::routes::{RouteId, RouteTable};
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::Connection;
use serde::Deserialize;

/// What one route class requires of the client certificate.
#[derive(Debug, Clone, Default)]
struct RoutePolicy {
    required: bool,
    /// Empty: any verified certificate.
    identities: Vec<IdentityPattern>,
}

/// The compiled `mtls` section.
#[derive(Debug, Clone)]
pub struct Mtls {
    pub mode: Mode,
    pub field: IdentityField,
    policies: PerRoute<RoutePolicy>,
}

impl Mtls {
    /// Whether requests of `route` must come with a certificate.
    pub fn requires(&self, route: RouteId) -> bool {
        self.policies.get(route).is_some_and(|p| p.required)
    }
}

/// The device identity of the request's connection, when `field` is read.
pub fn identify(field: IdentityField, connection: &dyn Connection, facts: &mut Facts<'_>) {
    facts.device = match field {
        IdentityField::UriSan => connection.peer_uri_san(),
        IdentityField::Subject => connection.peer_subject(),
    }
    .filter(|identity| !identity.is_empty());
}

/// The check: no identity on a class that requires one is
/// `mtls.required`; one outside the class's list `mtls.identity_not_allowed`.
pub fn check(m: &Mtls, facts: &Facts<'_>, findings: &mut Vec<Finding>) {
    let Some(policy) = m.policies.get(facts.route).filter(|p| p.required) else {
        return;
    };
    let reason = match facts.device.as_deref() {
        None => Reason::MtlsRequired,
        Some(device) if !identity::allowed(&policy.identities, device) => {
            Reason::MtlsIdentityNotAllowed
        }
        Some(_) => return,
    };
    findings.push(Finding::new(Stage::Mtls, reason, m.mode));
}

/// A route class's certificate policy; fields left out keep `defaults`.
#[derive(Deserialize, Default, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRoutePolicy {
    /// Refuse requests without a verified client certificate (default
    /// false; true whenever identities are listed).
    #[serde(default)]
    required: Option<bool>,
    /// Accepted identities: exact, or a prefix ending in `*`. Empty: any
    /// verified certificate.
    #[serde(default)]
    identities: Option<Vec<String>>,
}

/// The `mtls` section.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// Mode of mtls.* findings; the top-level mode by default.
    #[serde(default)]
    mode: Option<Mode>,
    /// Which certificate field is the device identity (default `uri_san`).
    #[serde(default)]
    identity: IdentityField,
    /// The policy of every route class.
    #[serde(default)]
    defaults: RawRoutePolicy,
    /// Per route class name (`default` included): what differs from `defaults`.
    #[serde(default)]
    routes: ByName<RawRoutePolicy>,
}

/// Checks and compiles the `mtls` section (`None`: absent, off).
pub fn compile(
    raw: Option<RawMtls>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Mtls>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let defaults = &raw.defaults;
    let policies = PerRoute::compile(routes, "mtls", &raw.routes.0, |own, at| {
        let (list, list_at): (&[String], String) = match own.and_then(|o| o.identities.as_deref()) {
            Some(list) => (list, format!("{at}.identities")),
            None => (
                defaults.identities.as_deref().unwrap_or_default(),
                "mtls.defaults.identities".into(),
            ),
        };
        let identities = identity::patterns(list, &list_at)?;
        let (required, required_at) = match own.and_then(|o| o.required) {
            Some(required) => (Some(required), format!("{at}.required")),
            None => (defaults.required, "mtls.defaults.required".into()),
        };
        // A list with `required: false` would let a request without a
        // certificate through where one with another identity is refused.
        if required == Some(false) && !identities.is_empty() {
            // Named where the class's own setting is: a list of its own
            // under an inherited `false` is the list's mistake.
            let inherited = own.is_some_and(|o| o.required.is_none() && o.identities.is_some());
            let (path, message) = if inherited {
                (list_at, format!("are listed while `required` is false (from `{required_at}`): set `\"required\": true` here"))
            } else {
                (required_at, "is false while identities are listed: a request without a certificate would pass where one with another identity is refused".to_string())
            };
            return Err(err(path, message));
        }
        Ok(RoutePolicy {
            required: required.unwrap_or(false) || !identities.is_empty(),
            identities,
        })
    })?;
    Ok(Some(Mtls {
        mode: raw.mode.unwrap_or(global),
        field: raw.identity,
        policies,
    }))
}
