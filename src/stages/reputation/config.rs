//! The `reputation` section: raw types, defaults, validation and compile
//! into the lists the check reads.

#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{check_name, err, route_ids, ConfigError};
use crate::core::duration::Millis;
use crate::core::mode::{string_enum, FailureMode, Mode};
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
    #[cfg_attr(feature = "schema", schemars(with = "RawRemoteList"))]
    remote: Option<RawRemoteList>,
}

/// A text list fetched with dispatch_http_call from an Envoy cluster or, on
/// ngx_wasm_module, a host:port address.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {
        "required": ["cluster"],
        "properties": {"cluster": {"type": "string"}, "address": {"type": "null"}}
    },
    {
        "required": ["address"],
        "properties": {"address": {"type": "string"}, "cluster": {"type": "null"}}
    }
])))]
#[serde(deny_unknown_fields)]
struct RawRemoteList {
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    cluster: Option<String>,
    /// host:port, the port 1-65535.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(regex(
            pattern = r"^[\s\S]+:\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
        ))
    )]
    address: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    path: String,
    #[serde(default)]
    refresh: Option<Millis>,
    #[serde(default)]
    min_refetch: Option<Millis>,
    #[serde(default)]
    timeout: Option<Millis>,
    /// What a request on the list's routes gets while the list was never
    /// loaded: `allow` (default; the list matches nothing) or `deny` (503
    /// `reputation.no_list`). Deny lists only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<FailureMode>"))]
    without_list: FailureMode,
}

/// Where and how often a list is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteList {
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub refresh_ms: u64,
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
    pub without_list: FailureMode,
    /// Shared-data key of the list's fetch schedule; it changes with the
    /// list's name and URI. The list itself is under [`RemoteList::data_key`].
    pub record_key: String,
}

impl RemoteList {
    pub fn data_key(&self) -> String {
        format!("{}.data", self.record_key)
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
                let remote = compile_remote(remote, &list.name, &format!("{at}.remote"))?;
                if action == Action::Allow && remote.without_list == FailureMode::Deny {
                    return Err(err(
                        format!("{at}.remote.without_list"),
                        "only a deny list can refuse requests while it is not loaded",
                    ));
                }
                Source::Remote(remote)
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

fn compile_remote(raw: RawRemoteList, list: &str, at: &str) -> Result<RemoteList, ConfigError> {
    let upstream = match (raw.cluster, raw.address) {
        (Some(cluster), None) if !cluster.is_empty() => cluster,
        (None, Some(address)) => {
            let host_ok = |host: &str| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            };
            let port_ok = |port: &str| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            };
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| host_ok(host) && !host.ends_with(':') && port_ok(port));
            if !valid {
                return Err(err(
                    format!("{at}.address"),
                    format!("`{address}` is not host:port"),
                ));
            }
            address
        }
        _ => {
            return Err(err(
                at,
                "needs exactly one of `cluster` (an Envoy cluster) or `address` (host:port, for ngx_wasm_module)",
            ))
        }
    };
    if !raw.path.starts_with('/') {
        return Err(err(format!("{at}.path"), "must start with `/`"));
    }
    let timeout_ms = raw.timeout.map_or(DEFAULT_TIMEOUT_MS, Millis::as_ms);
    let refresh = raw.refresh.map(Millis::as_ms);
    // Unset, `min_refetch` follows a short `refresh` down to `timeout`.
    let min_refetch_ms = raw.min_refetch.map_or(
        DEFAULT_MIN_REFETCH_MS
            .min(refresh.unwrap_or(u64::MAX))
            .max(timeout_ms),
        Millis::as_ms,
    );
    let refresh_ms = refresh.unwrap_or(DEFAULT_REFRESH_MS.max(min_refetch_ms));
    if timeout_ms > 60_000 {
        return Err(err(format!("{at}.timeout"), "must be at most 60s"));
    }
    if min_refetch_ms < timeout_ms {
        return Err(err(
            format!("{at}.min_refetch"),
            "must not be shorter than `timeout` (one fetch in flight at a time)",
        ));
    }
    if refresh_ms < min_refetch_ms {
        return Err(err(
            format!("{at}.refresh"),
            "must not be shorter than `min_refetch`",
        ));
    }
    let authority = raw.authority.unwrap_or_else(|| upstream.clone());
    let record_key = {
        use std::hash::{Hash, Hasher};
        let mut h = siphasher::sip::SipHasher13::new();
        (list, &upstream, &authority, &raw.path).hash(&mut h);
        format!("palisade.list.{list}.{:016x}", h.finish())
    };
    Ok(RemoteList {
        upstream,
        authority,
        path: raw.path,
        refresh_ms,
        min_refetch_ms,
        timeout_ms,
        without_list: raw.without_list,
        record_key,
    })
}
