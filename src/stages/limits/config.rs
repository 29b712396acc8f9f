//! The `rate_limits` and `bans` sections: raw types, defaults, validation
//! and compile into the rules the buckets run.

use crate::core::cluster::Scope;
#[cfg(feature = "schema")]
use crate::core::config_error::NAME_PATTERN;
use crate::core::config_error::{check_name, err, route_ids, slot_pages, ConfigError};
use crate::core::country::CountrySet;
use crate::core::duration::Millis;
use crate::core::mode::{string_enum, Mode};
use crate::core::routes::{RouteId, RouteTable};
use crate::stages::limits::buckets::{
    BanPolicy, Counts, KeySpec, Refill, Rule, MAX_GLOBAL_BAN_LENGTHS,
};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

const MAX_RULES: usize = 255;
pub const DEFAULT_SLOTS: u32 = 65_536;
const MAX_BAN_AFTER: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub mode: Mode,
    /// Number of slot pages in the shared table (slots / slots per page).
    pub pages: u32,
    pub quota_headers: bool,
    pub rules: Vec<Rule>,
    /// Pages of the table where rules counting distinct things remember
    /// what each key showed (`slots::SEEN`); 0 without such rules.
    pub distinct_pages: u32,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    slots: Option<u32>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::core::config_error::MIN_SLOTS, max = crate::core::config_error::MAX_SLOTS)))]
    distinct_slots: Option<u32>,
    #[serde(default)]
    quota_headers: bool,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_RULES)))]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = NAME_PATTERN)))]
    name: String,
    #[cfg_attr(feature = "schema", schemars(length(min = 1), extend("uniqueItems" = true)))]
    key: Vec<KeyPart>,
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    routes: Option<Vec<String>>,
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = u32::MAX)))]
    capacity: u32,
    refill: RawRefill,
    #[serde(default)]
    ban: bool,
    #[serde(default)]
    counts: Counts,
    /// Only requests from these countries (`geo.header`); "unknown" covers
    /// requests without one.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = crate::core::country::LIST_PATTERN)), extend("uniqueItems" = true))
    )]
    countries: Option<Vec<String>>,
    /// Tokens a worker takes at once while the bucket has plenty (1: one
    /// per request, every request a shared-data round trip).
    #[serde(default = "one")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_RESERVE)))]
    reserve: u32,
    /// Where the rule counts: "local" (this proxy's workers) or "global"
    /// (every replica, through the rate-limit service of the `global` section).
    #[serde(default)]
    scope: Scope,
}

fn one() -> u32 {
    1
}

/// Largest `reserve`: what a worker may withhold from the others stays small.
pub const MAX_RESERVE: u32 = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyPart {
    Ip,
    User,
    Route,
    KeyId,
    Fingerprint,
    Username,
    Token,
    Device,
}

string_enum!(KeyPart, "\"ip\", \"user\", \"route\", \"key_id\", \"fingerprint\", \"username\", \"token\" or \"device\"", {
    "ip" => KeyPart::Ip,
    "user" => KeyPart::User,
    "route" => KeyPart::Route,
    "key_id" => KeyPart::KeyId,
    "fingerprint" => KeyPart::Fingerprint,
    "username" => KeyPart::Username,
    "token" => KeyPart::Token,
    "device" => KeyPart::Device,
});

/// Smallest bucket of a `failed_logins` rule: a user who mistypes twice
/// is never refused.
const MIN_FAILED_LOGINS: u32 = 3;

/// What the `login` section tells the rules counting logins.
pub struct LoginRoutes<'a> {
    pub routes: &'a [RouteId],
    /// The section names a username field.
    pub reads_username: bool,
}

/// `"none"` or `{"tokens": n, "every": "<duration>"}`: an explicit choice,
/// because a bucket that never refills is a real but surprising policy.
enum RawRefill {
    Never,
    Every { tokens: u32, every: Millis },
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRefillRate {
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = u32::MAX)))]
    tokens: u32,
    every: Millis,
}

#[cfg(feature = "schema")]
crate::core::schema::json_schema_impl!(RawRefill, "Refill", |generator| serde_json::json!({
    "oneOf": [
        {"type": "string", "enum": ["none"]},
        generator.subschema_for::<RawRefillRate>(),
    ]
}));

impl<'de> Deserialize<'de> for RawRefill {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefillVisitor;
        impl<'de> Visitor<'de> for RefillVisitor {
            type Value = RawRefill;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\" or an object {\"tokens\": n, \"every\": \"1s\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRefill, E> {
                match v {
                    "none" => Ok(RawRefill::Never),
                    other => Err(E::custom(format!(
                        "unknown refill `{other}`; expected \"none\" or {{\"tokens\": n, \"every\": \"1s\"}}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRefill, A::Error> {
                let rate = RawRefillRate::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRefill::Every {
                    tokens: rate.tokens,
                    every: rate.every,
                })
            }
        }
        deserializer.deserialize_any(RefillVisitor)
    }
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawBans {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_BAN_AFTER)))]
    after: Option<u32>,
    #[serde(default)]
    base: Option<Millis>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    factor: Option<f64>,
    #[serde(default)]
    max: Option<Millis>,
    #[serde(default)]
    decay: Option<Millis>,
    /// Where bans hold: "local" (this proxy's workers) or "global" (every
    /// replica, through the `global` section's service).
    #[serde(default)]
    scope: Scope,
}

pub fn compile_bans(raw: &RawBans, global: Mode) -> Result<BanPolicy, ConfigError> {
    let after = raw.after.unwrap_or(3);
    if after == 0 || after > MAX_BAN_AFTER {
        return Err(err(
            "bans.after",
            format!("must be between 1 and {MAX_BAN_AFTER}"),
        ));
    }
    let factor = raw.factor.unwrap_or(2.0);
    if !factor.is_finite() || !(1.0..=100.0).contains(&factor) {
        return Err(err("bans.factor", "must be a number between 1 and 100"));
    }
    let base_ms = raw.base.map_or(30_000, Millis::as_ms);
    let max_ms = raw.max.map_or(3_600_000, Millis::as_ms);
    if max_ms < base_ms {
        return Err(err("bans.max", "must not be shorter than bans.base"));
    }
    let bans = BanPolicy {
        mode: raw.mode.unwrap_or(global),
        after,
        base_ms,
        factor,
        max_ms,
        decay_ms: raw.decay.map_or(600_000, Millis::as_ms),
        scope: raw.scope,
        global_lengths_ms: Vec::new(),
    };
    let bans = BanPolicy {
        global_lengths_ms: match bans.scope {
            Scope::Global => bans.lengths_ms(),
            Scope::Local => Vec::new(),
        },
        ..bans
    };
    if bans.global_lengths_ms.len() > MAX_GLOBAL_BAN_LENGTHS {
        return Err(err(
            "bans.scope",
            format!(
                "a global ban is checked once for each length a ban can have, and base, factor and max give more than {MAX_GLOBAL_BAN_LENGTHS}: raise factor or base, or lower max"
            ),
        ));
    }
    Ok(bans)
}

/// Checks a rule counting logins against the `login` section; returns its
/// route classes (the login classes when it names none).
fn login_rule_routes(
    counts: &Counts,
    key: &KeySpec,
    capacity: u32,
    applies_to: Option<Vec<RouteId>>,
    login: Option<&LoginRoutes<'_>>,
    routes: &RouteTable,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<RouteId>, ConfigError> {
    let Some(login) = login else {
        return Err(err(
            at("counts"),
            "counts logins but there is no `login` section naming the login route classes",
        ));
    };
    if key.user || key.key_id || key.token {
        return Err(err(
            at("key"),
            "a rule counting logins is keyed on what a login carries: \"ip\", \"route\", \"fingerprint\" and (failed_logins only) \"username\"",
        ));
    }
    let needs_username = key.username || *counts == Counts::Usernames;
    if needs_username && !login.reads_username {
        return Err(err(
            at("key"),
            "needs the username of a login but `login.username_field` is not set",
        ));
    }
    if *counts == Counts::Usernames && key.username {
        return Err(err(
            at("key"),
            "counts the usernames a client tries, so it cannot be keyed on the username",
        ));
    }
    if *counts == Counts::FailedLogins && capacity < MIN_FAILED_LOGINS {
        return Err(err(
            at("capacity"),
            format!("must be at least {MIN_FAILED_LOGINS} for failed_logins: a user who mistypes twice must never be refused"),
        ));
    }
    let Some(ids) = applies_to else {
        return Ok(login.routes.to_vec());
    };
    for (j, id) in ids.iter().enumerate() {
        if !login.routes.contains(id) {
            return Err(err(
                format!("{}[{j}]", at("routes")),
                format!(
                    "`{}` is not a login route class (`login.routes`)",
                    routes.name(*id)
                ),
            ));
        }
    }
    Ok(ids)
}

/// Longest window and largest limit the rate-limit service counts (its
/// own bounds, `envoy/ratelimit-service`).
const MAX_GLOBAL_WINDOW_MS: u64 = 31 * 24 * 3_600_000;
const MAX_GLOBAL_LIMIT: u64 = 1_000_000_000;

/// What a `"scope": "global"` rule must be: the service counts requests in
/// fixed windows (the time the bucket takes to refill whole), and every
/// request of it is one remote hit.
fn global_rule(rule: &Rule, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if rule.counts != Counts::Requests {
        return Err(err(
            at("scope"),
            "\"global\" is for rules counting \"requests\"; keep this rule \"local\"",
        ));
    }
    if u64::from(rule.capacity) > MAX_GLOBAL_LIMIT {
        return Err(err(
            at("capacity"),
            "a \"global\" rule's capacity is at most 1000000000 (the rate-limit service's bound)",
        ));
    }
    if rule.reserve > 1 {
        return Err(err(
            at("reserve"),
            "a \"global\" rule takes one remote hit per request; reserve applies to \"local\" rules",
        ));
    }
    // The window the service is sent (see `limits::Tally::ask_service`).
    let Some(window_ms) = rule.window_ms() else {
        return Err(err(
            at("refill"),
            "a \"global\" rule needs a refill: the service counts fixed windows, the time the bucket takes to refill whole",
        ));
    };
    if window_ms > MAX_GLOBAL_WINDOW_MS {
        return Err(err(
            at("refill"),
            "a \"global\" rule's window (capacity / refill rate) must be at most 31 days",
        ));
    }
    Ok(())
}

pub fn compile_rate_limits(
    raw: RawRateLimits,
    global: Mode,
    routes: &RouteTable,
    has_user_header: bool,
    has_signatures: bool,
    has_tokens: bool,
    login: Option<LoginRoutes<'_>>,
) -> Result<RateLimits, ConfigError> {
    let pages = slot_pages(raw.slots, DEFAULT_SLOTS, "rate_limits.slots")?;
    if raw.rules.len() > MAX_RULES {
        return Err(err(
            "rate_limits.rules",
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let at = |field: &str| format!("rate_limits.rules[{i}].{field}");
        check_name(&at("name"), &rule.name)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(err(
                at("name"),
                format!("duplicate rule name `{}`", rule.name),
            ));
        }
        if rule.key.is_empty() {
            return Err(err(
                at("key"),
                "must name at least one of \"ip\", \"user\", \"route\", \"key_id\", \"fingerprint\", \"username\", \"token\", \"device\"",
            ));
        }
        let mut key = KeySpec::default();
        for (j, part) in rule.key.iter().enumerate() {
            let seen = match part {
                KeyPart::Ip => std::mem::replace(&mut key.ip, true),
                KeyPart::User => std::mem::replace(&mut key.user, true),
                KeyPart::Route => std::mem::replace(&mut key.route, true),
                KeyPart::KeyId => std::mem::replace(&mut key.key_id, true),
                KeyPart::Fingerprint => std::mem::replace(&mut key.fingerprint, true),
                KeyPart::Username => std::mem::replace(&mut key.username, true),
                KeyPart::Token => std::mem::replace(&mut key.token, true),
                KeyPart::Device => std::mem::replace(&mut key.device, true),
            };
            if seen {
                return Err(err(
                    format!("rate_limits.rules[{i}].key[{j}]"),
                    "listed twice",
                ));
            }
        }
        if key.user && !has_user_header {
            return Err(err(
                at("key"),
                "keys on \"user\" but no `user.header` is configured",
            ));
        }
        if key.key_id && !has_signatures {
            return Err(err(
                at("key"),
                "keys on \"key_id\" but no `signatures.policies` verify any signature",
            ));
        }
        if key.token && !has_tokens {
            return Err(err(
                at("key"),
                "keys on \"token\" but no `jwt.providers` verify any token",
            ));
        }
        if matches!(rule.counts, Counts::Networks | Counts::Fingerprints) {
            let others = key.ip || key.user || key.key_id || key.fingerprint || key.username;
            if !key.token || others {
                return Err(err(
                    at("key"),
                    "a rule counting the networks or fingerprints a token comes from is keyed on \"token\" (and \"route\")",
                ));
            }
        }
        if rule.counts == Counts::Failures && (key.user || key.key_id || key.token) {
            return Err(err(
                at("counts"),
                "a rule counting failures is checked before authentication, so its key can only use \"ip\", \"route\" and \"fingerprint\"",
            ));
        }
        let mut applies_to = match rule.routes {
            None => None,
            Some(names) => Some(route_ids(routes, &names, &at("routes"))?),
        };
        if matches!(rule.counts, Counts::FailedLogins | Counts::Usernames) {
            applies_to = Some(login_rule_routes(
                &rule.counts,
                &key,
                rule.capacity,
                applies_to,
                login.as_ref(),
                routes,
                &at,
            )?);
        } else if key.username {
            return Err(err(
                at("key"),
                "keys on \"username\", which only rules with \"counts\": \"failed_logins\" know",
            ));
        }
        if rule.capacity == 0 {
            return Err(err(
                at("capacity"),
                "must be at least 1: a bucket of zero would refuse every request",
            ));
        }
        let refill =
            match rule.refill {
                RawRefill::Never => None,
                RawRefill::Every { tokens: 0, .. } => return Err(err(
                    format!("rate_limits.rules[{i}].refill.tokens"),
                    "must be at least 1; use \"refill\": \"none\" for a bucket that never refills",
                )),
                RawRefill::Every { tokens, every } => Some(Refill {
                    tokens,
                    every_ms: every.as_ms(),
                }),
            };
        let countries = match rule.countries {
            None => None,
            Some(list) => Some(CountrySet::compile(&list, &at("countries"))?),
        };
        if !(1..=MAX_RESERVE).contains(&rule.reserve) {
            return Err(err(at("reserve"), format!("must be 1 to {MAX_RESERVE}")));
        }
        if rule.reserve > 1 && rule.counts != Counts::Requests {
            return Err(err(
                at("reserve"),
                "only rules counting \"requests\" take tokens ahead of need",
            ));
        }
        if rule.reserve > 1 && rule.reserve.saturating_mul(2) > rule.capacity {
            return Err(err(
                at("reserve"),
                format!(
                    "{} needs a capacity of at least {} (twice the reserve): a worker only takes a batch while the bucket keeps as many",
                    rule.reserve,
                    rule.reserve.saturating_mul(2)
                ),
            ));
        }
        let compiled = Rule::new(
            rule.name,
            u8::try_from(i).unwrap_or(u8::MAX),
            key,
            applies_to,
            routes.len_with_default(),
            rule.capacity,
            refill,
            rule.ban,
        )
        .counting(rule.counts)
        .in_countries(countries)
        .reserving(rule.reserve)
        .scoped(rule.scope);
        if compiled.scope == Scope::Global {
            global_rule(&compiled, &at)?;
        }
        rules.push(compiled);
    }
    let distinct_pages = slot_pages(
        raw.distinct_slots,
        DEFAULT_SLOTS,
        "rate_limits.distinct_slots",
    )?;
    let distinct_pages = if rules.iter().any(|r| r.counts.distinct()) {
        distinct_pages
    } else {
        0
    };
    Ok(RateLimits {
        mode: raw.mode.unwrap_or(global),
        pages,
        quota_headers: raw.quota_headers,
        rules,
        distinct_pages,
    })
}
