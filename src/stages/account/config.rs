//! The `login` section: which route classes are logins, where their
//! username is, which upstream answers are failed logins.

use crate::core::config_error::{err, route_flags, slot_pages, ConfigError};
use crate::core::duration::Millis;
use crate::core::mode::Mode;
use crate::core::routes::{RouteId, RouteTable};
use serde::Deserialize;

pub const DEFAULT_SLOTS: u32 = 65_536;
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_FIELD_LEN: usize = 64;
const DEFAULT_REMEMBER_MS: u64 = 30 * 24 * 3_600_000;

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    #[serde(default)]
    mode: Option<Mode>,
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = crate::core::config_error::NAME_PATTERN)))
    )]
    routes: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_FIELD_LEN)))]
    username_field: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 64, max = MAX_BODY_BYTES)))]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(range(min = 400, max = 599)))
    )]
    failure_statuses: Option<Vec<u16>>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    slots: Option<u32>,
    #[serde(default)]
    remember_clients: Option<Millis>,
}

/// The compiled `login` section.
#[derive(Debug, Clone)]
pub struct Login {
    pub mode: Mode,
    /// Indexed by route id: whether the class is a login.
    applies: Vec<bool>,
    /// The body parameter (form field or top-level JSON member) that names
    /// the user; `None`: the body is not read.
    pub username_field: Option<String>,
    pub max_body_bytes: usize,
    failure_statuses: Vec<u16>,
    /// Pages of the login table (usernames tried, clients remembered).
    pub pages: u32,
    /// How long a client that logged in as a user stays known for it.
    pub remember_ms: u64,
}

/// What the upstream's answer to a login says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Failed,
    Succeeded,
    /// Neither (a server error, a 4xx that is not a configured failure):
    /// it says nothing about the credentials.
    Unknown,
}

impl Login {
    pub fn applies_to(&self, route: RouteId) -> bool {
        self.applies
            .get(usize::from(route))
            .copied()
            .unwrap_or(false)
    }

    /// The route ids of the login classes.
    pub fn route_ids(&self) -> Vec<RouteId> {
        (0..self.applies.len())
            .filter_map(|i| RouteId::try_from(i).ok())
            .filter(|id| self.applies_to(*id))
            .collect()
    }

    pub fn outcome(&self, status: u16) -> LoginOutcome {
        if self.failure_statuses.contains(&status) {
            LoginOutcome::Failed
        } else if (200..400).contains(&status) {
            LoginOutcome::Succeeded
        } else {
            LoginOutcome::Unknown
        }
    }
}

pub fn compile_login(
    raw: Option<RawLogin>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Login>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let applies = route_flags(routes, &raw.routes, "login.routes")?;
    if let Some(field) = &raw.username_field {
        let printable = field.bytes().all(|b| b.is_ascii_graphic());
        if field.is_empty() || field.len() > MAX_FIELD_LEN || !printable {
            return Err(err(
                "login.username_field",
                format!("must be 1 to {MAX_FIELD_LEN} printable ASCII characters (a form field or top-level JSON member name)"),
            ));
        }
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(64..=MAX_BODY_BYTES).contains(&max_body_bytes) {
        return Err(err(
            "login.max_body_bytes",
            format!("must be between 64 and {MAX_BODY_BYTES}"),
        ));
    }
    let failure_statuses = raw.failure_statuses.unwrap_or_else(|| vec![401, 403]);
    if failure_statuses.is_empty() {
        return Err(err(
            "login.failure_statuses",
            "must list at least one status (the default is [401, 403])",
        ));
    }
    for (i, status) in failure_statuses.iter().enumerate() {
        if !(400..=599).contains(status) {
            return Err(err(
                format!("login.failure_statuses[{i}]"),
                "must be an HTTP error status (400 to 599): a failed login is never a success status",
            ));
        }
    }
    let pages = slot_pages(raw.slots, DEFAULT_SLOTS, "login.slots")?;
    Ok(Some(Login {
        mode: raw.mode.unwrap_or(global),
        applies,
        username_field: raw.username_field,
        max_body_bytes,
        failure_statuses,
        pages,
        remember_ms: raw
            .remember_clients
            .map_or(DEFAULT_REMEMBER_MS, Millis::as_ms),
    }))
}
