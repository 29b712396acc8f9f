//! Configuration errors and the checks every section's compile shares:
//! names, header names, route-class references, secrets from the VM
//! environment. Each error names the JSON path it is about.

use crate::core::routes::{RouteId, RouteTable};
use std::fmt;

/// Bounds of every slot table's size (`slots`, `replay_slots`, ...).
pub const MIN_SLOTS: u32 = 16;
pub const MAX_SLOTS: u32 = 1 << 22;
/// Default size of the tables that remember what must be seen once
/// (signature nonces, refresh tokens).
pub const DEFAULT_REPLAY_SLOTS: u32 = 65_536;

/// Pages of a slot table of `slots` records (`default` when unset), after
/// checking the size against the bounds.
pub fn slot_pages(slots: Option<u32>, default: u32, path: &str) -> Result<u32, ConfigError> {
    let slots = slots.unwrap_or(default);
    if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
        return Err(err(
            path,
            format!("must be between {MIN_SLOTS} and {MAX_SLOTS}"),
        ));
    }
    Ok(slots.div_ceil(crate::state::slots::SLOTS_PER_PAGE as u32))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending value, `.` for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration at `{}`: {}",
            self.path, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

pub fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// What [`check_name`] accepts, as a JSON Schema pattern.
pub const NAME_PATTERN: &str = "^[a-z0-9_-]{1,32}$";
/// What [`is_header_name`] accepts (an RFC 9110 token), as a JSON Schema pattern.
pub const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// Names end up in metric tags and response headers: keep them short and
/// free of anything that needs escaping.
pub fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "`{name}` is not a valid name; use 1 to 32 lowercase letters, digits, `_` or `-`"
            ),
        ))
    }
}

pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Indexed by route id: whether the class is one of `names` (checked as
/// [`route_ids`] does).
pub fn route_flags(
    routes: &RouteTable,
    names: &[String],
    path: &str,
) -> Result<Vec<bool>, ConfigError> {
    let mut flags = vec![false; routes.len_with_default()];
    for id in route_ids(routes, names, path)? {
        if let Some(flag) = flags.get_mut(usize::from(id)) {
            *flag = true;
        }
    }
    Ok(flags)
}

pub fn route_ids(
    routes: &RouteTable,
    names: &[String],
    path: &str,
) -> Result<Vec<RouteId>, ConfigError> {
    if names.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            routes.id_of(name).ok_or_else(|| {
                err(
                    format!("{path}[{j}]"),
                    format!("no route class named `{name}` (define it under `routes`, or use `default`)"),
                )
            })
        })
        .collect()
}

/// Gives each route class named at `path` to policy `index`: a class has at
/// most one policy of a kind (`what`).
pub fn assign_routes(
    by_route: &mut [Option<usize>],
    routes: &RouteTable,
    names: &[String],
    path: &str,
    index: usize,
    what: &str,
) -> Result<(), ConfigError> {
    for (j, id) in route_ids(routes, names, path)?.into_iter().enumerate() {
        let Some(slot) = by_route.get_mut(usize::from(id)) else {
            continue;
        };
        if slot.is_some() {
            return Err(err(
                format!("{path}[{j}]"),
                format!("this route class already has {what} policy"),
            ));
        }
        *slot = Some(index);
    }
    Ok(())
}

/// A section's policy per route class: `defaults`, and the classes
/// named under its `routes` with their own (`transport`, `mtls`).
#[derive(Debug, Clone)]
pub struct PerRoute<P> {
    /// `defaults` first.
    policies: Vec<P>,
    /// Indexed by route id: the index of that class's policy.
    by_route: Vec<usize>,
}

impl<P> PerRoute<P> {
    /// Compiles `defaults` (`compile(None, "<section>.defaults")`) and each
    /// `routes.<class>` override (`compile(Some(own), "<section>.routes.<class>")`).
    pub fn compile<R>(
        routes: &RouteTable,
        section: &str,
        overrides: &[(String, R)],
        mut compile: impl FnMut(Option<&R>, &str) -> Result<P, ConfigError>,
    ) -> Result<PerRoute<P>, ConfigError> {
        let mut policies = vec![compile(None, &format!("{section}.defaults"))?];
        let mut by_route = vec![0; routes.len_with_default()];
        for (name, own) in overrides {
            let at = format!("{section}.routes.{name}");
            let Some(id) = routes.id_of(name) else {
                return Err(err(
                    at,
                    format!(
                        "no route class named `{name}` (define it under `routes`, or use `default`)"
                    ),
                ));
            };
            if let Some(slot) = by_route.get_mut(usize::from(id)) {
                *slot = policies.len();
            }
            policies.push(compile(Some(own), &at)?);
        }
        Ok(PerRoute { policies, by_route })
    }

    pub fn get(&self, route: RouteId) -> Option<&P> {
        self.policies.get(*self.by_route.get(usize::from(route))?)
    }

    /// Every route class's policy, `defaults` first.
    pub fn policies(&self) -> &[P] {
        &self.policies
    }
}

/// A secret's text from an environment variable of the wasm VM, for the
/// `{"env": NAME}` form at `path`.
/// The name is quoted only when it reads as a variable name
/// (`PALISADE_KEY`): a secret pasted in place of its name is never echoed.
pub fn env_value(name: &str, path: &str) -> Result<String, ConfigError> {
    let conventional = (1..=64).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let shown = if conventional {
        format!("`{name}`")
    } else {
        "named here (not shown: it is not an upper-case variable name)".to_string()
    };
    std::env::var(name).map_err(|_| {
        err(
            format!("{path}.env"),
            format!(
                "environment variable {shown} is not set in the wasm VM \
                 (list it in Envoy's vm_config.environment_variables)"
            ),
        )
    })
}

/// A JSON object keyed by names (route classes, header names), read as
/// (name, value) pairs in the document's order. One `Vec` per value type
/// costs the wasm far less code than a `BTreeMap` per value type.
/// Names are unique: the document is parsed into a `serde_json::Value`
/// first, whose objects keep one member per name.
#[derive(Debug, Clone)]
pub struct ByName<T>(pub Vec<(String, T)>);

impl<T> Default for ByName<T> {
    fn default() -> Self {
        ByName(Vec::new())
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ByName<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Pairs<T> {
            type Value = ByName<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ByName<T>, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(ByName(pairs))
            }
        }
        deserializer.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> schemars::JsonSchema for ByName<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("ByName_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<T>();
        crate::core::schema::schema(serde_json::json!({
            "type": "object",
            "additionalProperties": value,
        }))
    }
}
