//! The `reputation` section: raw types, defaults, validation and compile
//! into the lists the check reads.

#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{check_name, err, route_ids, ConfigError};
use crate::core::mode::{string_enum, FailureMode, Mode};
use crate::core::remote::{self, RawRemote, Remote, Timing};
use crate::core::routes::{RouteId, RouteTable};
use crate::stages::reputation::table::{Prefix, Table};
use serde::Deserialize;
use std::sync::Arc;

/// Lists in the section.
pub const MAX_LISTS: usize = 16;

const DEFAULT_REFRESH_MS: u64 = 3_600_000;
const DEFAULT_MIN_REFETCH_MS: u64 = 60_000;
const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// IP allow and deny lists (README, `reputation`). Absent: off.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawReputation {
    #[serde(default)]
    mode: Option<Mode>,
    /// At most 16 lists; an address on an `allow` list is never denied by a
    /// `deny` list.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_LISTS)))]
    lists: Vec<RawList>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

string_enum!(Action, "\"allow\" or \"deny\"", { "allow" => Action::Allow, "deny" => Action::Deny });

/// One list: inline `cidrs`, or a `remote` text list (one prefix a line).
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {"required": ["cidrs"], "not": {"required": ["remote"]}},
    {"required": ["remote"], "not": {"required": ["cidrs"]}}
])))]
#[serde(deny_unknown_fields)]
struct RawList {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    name: String,
    action: Action,
    /// Route classes the list applies to; absent or null: all.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    routes: Option<Vec<String>>,
    /// Prefixes (`203.0.113.0/24`, `2001:db8::/32`) or addresses.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<String>"))]
    cidrs: Option<Vec<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "RawRemote"))]
    remote: Option<RawRemote>,
    /// A remote deny list that was never loaded: `allow` (default; the list
    /// matches nothing) or `deny` (503 `reputation.no_list`).
    #[serde(default)]
    without_list: Option<FailureMode>,
}

/// A fetched list: where from and how often, and what its routes get
/// before it was ever loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteList {
    /// Its schedule record is `fetch.record_key`; the list itself is under
    /// [`RemoteList::data_key`].
    pub fetch: Remote,
    pub without_list: FailureMode,
}

impl RemoteList {
    pub fn data_key(&self) -> String {
        format!("{}.data", self.fetch.record_key)
    }
}

#[derive(Debug, Clone)]
pub enum Source {
    Inline(Arc<Table>),
    Remote(RemoteList),
}

#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    pub action: Action,
    /// `None`: every route class.
    pub routes: Option<Vec<RouteId>>,
    pub source: Source,
}

impl List {
    pub fn applies_to(&self, route: RouteId) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }

    pub fn remote(&self) -> Option<&RemoteList> {
        match &self.source {
            Source::Remote(r) => Some(r),
            Source::Inline(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reputation {
    pub mode: Mode,
    pub lists: Vec<List>,
}

/// `None` when the section is absent or has no list (the stage is off).
pub fn compile_reputation(
    raw: Option<RawReputation>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Reputation>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.lists.is_empty() {
        return Ok(None);
    }
    if raw.lists.len() > MAX_LISTS {
        return Err(err(
            "reputation.lists",
            format!("at most {MAX_LISTS} lists"),
        ));
    }
    let mut lists = Vec::with_capacity(raw.lists.len());
    for (i, list) in raw.lists.into_iter().enumerate() {
        let at = format!("reputation.lists[{i}]");
        check_name(&format!("{at}.name"), &list.name)?;
        if lists.iter().any(|l: &List| l.name == list.name) {
            return Err(err(
                format!("{at}.name"),
                format!("another list is named `{}`", list.name),
            ));
        }
        let action = list.action;
        let route_list = match &list.routes {
            None => None,
            Some(names) => Some(route_ids(routes, names, &format!("{at}.routes"))?),
        };
        if list.without_list.is_some() && list.remote.is_none() {
            return Err(err(
                format!("{at}.without_list"),
                "is for a `remote` list (an inline list is always loaded)",
            ));
        }
        let source = match (list.cidrs, list.remote) {
            (Some(cidrs), None) => {
                let mut table = Table::new();
                for (j, text) in cidrs.iter().enumerate() {
                    let prefix = Prefix::parse(text.trim()).ok_or_else(|| {
                        err(
                            format!("{at}.cidrs[{j}]"),
                            format!("`{text}` is not an IPv4 or IPv6 prefix (`203.0.113.0/24`, `2001:db8::/32`) or address"),
                        )
                    })?;
                    table.insert(prefix);
                }
                table.shrink();
                Source::Inline(Arc::new(table))
            }
            (None, Some(remote)) => {
                let defaults = Timing {
                    refresh_ms: DEFAULT_REFRESH_MS,
                    min_refetch_ms: DEFAULT_MIN_REFETCH_MS,
                    timeout_ms: DEFAULT_TIMEOUT_MS,
                };
                let remote_at = format!("{at}.remote");
                let fetch =
                    remote::compile(remote, "palisade.list", &list.name, &remote_at, defaults)?;
                let without_list = list.without_list.unwrap_or(FailureMode::Allow);
                if action == Action::Allow && without_list == FailureMode::Deny {
                    return Err(err(
                        format!("{at}.without_list"),
                        "only a deny list can refuse requests while it is not loaded",
                    ));
                }
                Source::Remote(RemoteList {
                    fetch,
                    without_list,
                })
            }
            _ => {
                return Err(err(
                    at,
                    "needs exactly one of `cidrs` (inline prefixes) or `remote` (a fetched list)",
                ))
            }
        };
        lists.push(List {
            name: list.name,
            action,
            routes: route_list,
            source,
        });
    }
    Ok(Some(Reputation {
        mode: raw.mode.unwrap_or(global),
        lists,
    }))
}
