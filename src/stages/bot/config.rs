//! The `bot` section: raw types, defaults, validation and compile.

use crate::core::config_error::{err, is_header_name, route_ids, ConfigError};
#[cfg(feature = "schema")]
use crate::core::config_error::{HEADER_NAME_PATTERN, NAME_PATTERN};
use crate::core::duration::Millis;
use crate::core::mode::{string_enum, Mode};
use crate::core::routes::{RouteId, RouteTable};
use crate::core::secret::{decode_secret, RawSecret};
#[cfg(feature = "schema")]
use crate::stages::bot::behaviour::MAX_FLOWS;
use crate::stages::bot::behaviour::{self, Behaviour, RawBehaviour, RawFlow};
use crate::stages::bot::challenge::{ChallengeKey, MIN_SECRET_LEN};
use crate::stages::bot::score::Model;
use crate::stages::bot::signals::{Signal, SIGNALS};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The shipped model, in the same form `make train` writes (a config
/// fragment): the defaults a configuration's `bot.model` overrides.
const SHIPPED_MODEL: &str = include_str!("model.json");

const DEFAULT_DENY: u8 = 90;
const DEFAULT_CHALLENGE: u8 = 60;
const DEFAULT_DIFFICULTY: u8 = 16;
const MAX_DIFFICULTY: u8 = 24;
const DEFAULT_CHALLENGE_TTL_MS: u64 = 5 * 60_000;
const DEFAULT_PASS_TTL_MS: u64 = 30 * 60_000;
const MAX_CIDRS: usize = 1024;

/// Which scored requests get a `palisade.bot` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Events {
    /// Only those the thresholds flag (challenge or deny), as findings.
    #[default]
    Flagged,
    /// Every scored request, with its signals: labelled traffic to train on.
    All,
}

string_enum!(Events, "\"flagged\" or \"all\"", {
    "flagged" => Events::Flagged,
    "all" => Events::All,
});

/// An address range of the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 {
                0
            } else {
                bits >> (width - keep)
            }
        }
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V4(a)) => n
                .to_ipv4_mapped()
                .is_some_and(|_| self.contains(IpAddr::V6(a.to_ipv6_mapped()))),
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| self.contains(IpAddr::V4(a))),
        }
    }
}

/// The compiled challenge settings.
#[derive(Debug, Clone)]
pub struct ChallengeSettings {
    pub key: ChallengeKey,
    pub difficulty: u8,
    pub ttl_s: u32,
    pub pass_ttl_s: u32,
}

#[derive(Debug, Clone)]
pub struct Bot {
    pub mode: Mode,
    /// Route classes scored; `None`: all.
    pub routes: Option<Vec<RouteId>>,
    /// The trusted header a proxy in front sets to the TLS JA4 fingerprint.
    pub ja4_header: Option<String>,
    pub model: Model,
    /// Score from which a request is challenged (`None`: never).
    pub challenge_at: Option<u8>,
    /// Score from which a request is denied (`None`: never).
    pub deny_at: Option<u8>,
    pub allow_cidrs: Vec<Cidr>,
    /// A request that passes authentication on its route is not held
    /// to its score: a verified API client is known, not guessed at.
    pub allow_authenticated: bool,
    pub challenge: Option<ChallengeSettings>,
    pub events: Events,
    /// Score, reasons and fingerprint go to the upstream as headers.
    pub upstream_headers: bool,
    pub behaviour: Behaviour,
}

impl Bot {
    pub fn applies_to(&self, route: RouteId) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }

    /// Whether behaviour is worth its shared-data round trip: some
    /// behavioural signal has a weight.
    pub fn observes_behaviour(&self) -> bool {
        self.model.weighs_any(&[
            Signal::MachineTiming,
            Signal::SequentialIds,
            Signal::DistinctPaths,
        ]) || (self.behaviour.has_flows() && self.model.weight(Signal::Flow) != 0.0)
    }
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("anyOf" = [
    {
        "description": "no challenge threshold",
        "properties": {"thresholds": {"properties": {"challenge": {"type": "null"}}}}
    },
    {
        "description": "a challenge threshold needs the challenge section",
        "required": ["challenge"],
        "properties": {"challenge": {"not": {"type": "null"}}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawBot {
    #[serde(default)]
    mode: Option<Mode>,
    /// Route classes to score (default: all).
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), inner(regex(pattern = NAME_PATTERN)))
    )]
    routes: Option<Vec<String>>,
    #[serde(default)]
    fingerprint: RawFingerprint,
    /// Overrides of the shipped model: bias and weights by signal name.
    #[serde(default)]
    model: Option<RawModel>,
    #[serde(default)]
    thresholds: RawThresholds,
    #[serde(default)]
    allow: RawAllow,
    /// The proof-of-work challenge; without it, `thresholds.challenge` is off.
    #[serde(default)]
    challenge: Option<RawChallenge>,
    #[serde(default)]
    events: Events,
    #[serde(default = "yes")]
    upstream_headers: bool,
    /// Timing, enumeration and the table that remembers them.
    #[serde(default)]
    behaviour: RawBehaviour,
    /// Route classes that must follow another within a time (checkout after cart).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_FLOWS)))]
    flows: Vec<RawFlow>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawFingerprint {
    /// A header set by a proxy in front (never the client) to the TLS JA4
    /// fingerprint; the proxy must remove any copy the client sent.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = HEADER_NAME_PATTERN)))]
    ja4_header: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    bias: Option<f64>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "weights_schema"))]
    weights: BTreeMap<String, f64>,
}

/// The weights object names its signals: closed, like every object.
#[cfg(feature = "schema")]
fn weights_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let properties: serde_json::Map<String, serde_json::Value> = Signal::ALL
        .iter()
        .map(|s| {
            let weight = serde_json::json!({"type": "number", "minimum": -1000, "maximum": 1000});
            (s.name().to_string(), weight)
        })
        .collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    schemars::Schema::try_from(schema).unwrap_or_default()
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    /// Default 60 when `challenge` is configured.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    challenge: Option<u8>,
    /// Default 90; 0 never denies.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 100)))]
    deny: Option<u8>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawAllow {
    /// Client addresses never scored (a monitoring probe, a partner's egress).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_CIDRS)))]
    cidrs: Vec<String>,
    #[serde(default = "yes")]
    authenticated: bool,
}

impl Default for RawAllow {
    fn default() -> Self {
        RawAllow {
            cidrs: Vec::new(),
            authenticated: true,
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawChallenge {
    /// HMAC key of challenges and passes: every replica needs the same one.
    secret: RawSecret,
    /// Leading zero bits of SHA-256 a solution needs (default 16).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_DIFFICULTY)))]
    difficulty: Option<u8>,
    /// How long a challenge may be solved (default 5m).
    #[serde(default)]
    ttl: Option<Millis>,
    /// How long a solved challenge's pass lowers the score (default 30m).
    #[serde(default)]
    pass_ttl: Option<Millis>,
}

/// The shipped model, parsed with the same code as an operator's.
fn shipped_model() -> Result<Model, ConfigError> {
    #[derive(Deserialize)]
    struct Fragment {
        bot: Shipped,
    }
    #[derive(Deserialize)]
    struct Shipped {
        model: RawModel,
    }
    let fragment: Fragment = serde_json::from_str(SHIPPED_MODEL)
        .map_err(|e| err("bot.model", format!("the shipped model is unreadable: {e}")))?;
    let zero = Model {
        bias: 0.0,
        weights: [0.0; SIGNALS],
    };
    apply_model(zero, &fragment.bot.model)
}

fn finite(value: f64, path: &str) -> Result<f32, ConfigError> {
    if value.is_finite() && value.abs() <= 1000.0 {
        Ok(value as f32)
    } else {
        Err(err(path, "must be a number between -1000 and 1000"))
    }
}

fn apply_model(mut model: Model, raw: &RawModel) -> Result<Model, ConfigError> {
    if let Some(bias) = raw.bias {
        model.bias = finite(bias, "bot.model.bias")?;
    }
    for (name, weight) in &raw.weights {
        let path = format!("bot.model.weights.{name}");
        let signal = Signal::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
            err(
                path.as_str(),
                format!("unknown signal; expected one of {}", known.join(", ")),
            )
        })?;
        if let Some(w) = model.weights.get_mut(signal.index()) {
            *w = finite(*weight, &path)?;
        }
    }
    Ok(model)
}

fn seconds(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

pub fn compile_bot(
    raw: Option<RawBot>,
    global: Mode,
    routes: &RouteTable,
) -> Result<Option<Bot>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let route_list = match &raw.routes {
        None => None,
        Some(names) => Some(route_ids(routes, names, "bot.routes")?),
    };
    let ja4_header = match raw.fingerprint.ja4_header {
        None => None,
        Some(name) => {
            let lower = name.to_ascii_lowercase();
            if !is_header_name(&lower) || lower.starts_with(':') {
                return Err(err(
                    "bot.fingerprint.ja4_header",
                    "must be a header name (a proxy in front sets it)",
                ));
            }
            Some(lower)
        }
    };
    let mut model = shipped_model()?;
    if let Some(m) = &raw.model {
        model = apply_model(model, m)?;
    }
    let challenge = match &raw.challenge {
        None => None,
        Some(c) => Some(compile_challenge(c)?),
    };
    let challenge_at = match (raw.thresholds.challenge, &challenge) {
        (Some(_), None) => {
            return Err(err(
                "bot.thresholds.challenge",
                "needs a `bot.challenge` section (its secret signs the puzzles)",
            ))
        }
        (Some(t), Some(_)) if !(1..=100).contains(&t) => {
            return Err(err("bot.thresholds.challenge", "must be between 1 and 100"))
        }
        (Some(t), Some(_)) => Some(t),
        (None, Some(_)) => Some(DEFAULT_CHALLENGE),
        (None, None) => None,
    };
    let deny_at = match raw.thresholds.deny.unwrap_or(DEFAULT_DENY) {
        0 => None,
        t if t > 100 => return Err(err("bot.thresholds.deny", "must be between 0 and 100")),
        t => Some(t),
    };
    if let (Some(c), Some(d)) = (challenge_at, deny_at) {
        if c >= d {
            return Err(err(
                "bot.thresholds.challenge",
                format!("must be below the deny threshold ({d}): a challenge between them is what a client can pass"),
            ));
        }
    }
    if raw.allow.cidrs.len() > MAX_CIDRS {
        return Err(err(
            "bot.allow.cidrs",
            format!("at most {MAX_CIDRS} ranges"),
        ));
    }
    let allow_cidrs = raw
        .allow
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Cidr::parse(text).ok_or_else(|| {
                err(
                    format!("bot.allow.cidrs[{i}]"),
                    format!(
                        "`{text}` is not an address or CIDR range (e.g. 10.0.0.0/8, 2001:db8::/32)"
                    ),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let behaviour = behaviour::compile(raw.behaviour, raw.flows, routes, "bot")?;
    Ok(Some(Bot {
        mode: raw.mode.unwrap_or(global),
        routes: route_list,
        ja4_header,
        model,
        challenge_at,
        deny_at,
        allow_cidrs,
        allow_authenticated: raw.allow.authenticated,
        challenge,
        events: raw.events,
        upstream_headers: raw.upstream_headers,
        behaviour,
    }))
}

fn compile_challenge(raw: &RawChallenge) -> Result<ChallengeSettings, ConfigError> {
    let secret = decode_secret(&raw.secret, "bot.challenge.secret")?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(err(
            "bot.challenge.secret",
            format!("must be at least {MIN_SECRET_LEN} random bytes"),
        ));
    }
    let difficulty = raw.difficulty.unwrap_or(DEFAULT_DIFFICULTY);
    if !(1..=MAX_DIFFICULTY).contains(&difficulty) {
        return Err(err(
            "bot.challenge.difficulty",
            format!(
                "must be between 1 and {MAX_DIFFICULTY} (leading zero bits; each doubles the work)"
            ),
        ));
    }
    Ok(ChallengeSettings {
        key: ChallengeKey::new(&secret),
        difficulty,
        ttl_s: seconds(raw.ttl.map_or(DEFAULT_CHALLENGE_TTL_MS, Millis::as_ms)),
        pass_ttl_s: seconds(raw.pass_ttl.map_or(DEFAULT_PASS_TTL_MS, Millis::as_ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Option<Bot>, ConfigError> {
        let raw: RawBot = serde_json::from_str(json).map_err(|e| err("bot", e.to_string()))?;
        compile_bot(Some(raw), Mode::Enforce, &RouteTable::new(Vec::new()))
    }

    fn rejected(json: &str, path: &str, needle: &str) {
        match compile(json) {
            Ok(_) => unreachable!("accepted: {json}"),
            Err(e) => {
                assert_eq!(e.path, path, "{e}");
                assert!(e.message.contains(needle), "{e}");
            }
        }
    }

    #[test]
    fn defaults_are_the_shipped_model_and_deny_only() {
        let bot = compile("{}").ok().flatten();
        let Some(bot) = bot else {
            unreachable!("no bot")
        };
        assert_eq!(bot.mode, Mode::Enforce);
        assert_eq!(bot.deny_at, Some(90));
        assert_eq!(bot.challenge_at, None);
        assert!(bot.allow_authenticated);
        assert!(bot.model.bias < 0.0);
        assert!(bot.model.weight(Signal::HeadlessUa) > 0.0);
        assert!(bot.model.weight(Signal::ChallengePassed) < 0.0);
        assert!(
            compile_bot(None, Mode::Enforce, &RouteTable::new(Vec::new()))
                .is_ok_and(|b| b.is_none())
        );
    }

    #[test]
    fn model_overrides_merge_over_the_shipped_one() {
        let bot = compile(r#"{"model": {"weights": {"flow": 0, "header_order": 1.5}}}"#)
            .ok()
            .flatten();
        let Some(bot) = bot else {
            unreachable!("no bot")
        };
        assert_eq!(bot.model.weight(Signal::Flow), 0.0);
        assert_eq!(bot.model.weight(Signal::HeaderOrder), 1.5);
        assert!(bot.model.weight(Signal::HeadlessUa) > 0.0);
    }

    #[test]
    fn bad_sections_name_their_path() {
        rejected(
            r#"{"model": {"weights": {"mouse_moves": 1}}}"#,
            "bot.model.weights.mouse_moves",
            "unknown signal",
        );
        rejected(r#"{"model": {"bias": 1e300}}"#, "bot.model.bias", "between");
        rejected(
            r#"{"thresholds": {"challenge": 50}}"#,
            "bot.thresholds.challenge",
            "needs a `bot.challenge`",
        );
        let secret = r#""secret": {"base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}"#;
        rejected(
            &format!(r#"{{"challenge": {{{secret}}}, "thresholds": {{"challenge": 95}}}}"#),
            "bot.thresholds.challenge",
            "below the deny threshold",
        );
        rejected(
            r#"{"challenge": {"secret": {"base64": "c2hvcnQ="}}}"#,
            "bot.challenge.secret",
            "at least 32 random bytes",
        );
        rejected(
            &format!(r#"{{"challenge": {{{secret}, "difficulty": 40}}}}"#),
            "bot.challenge.difficulty",
            "between 1 and 24",
        );
        rejected(
            r#"{"allow": {"cidrs": ["10.0.0.0/8", "10.0.0.0/33"]}}"#,
            "bot.allow.cidrs[1]",
            "not an address or CIDR",
        );
        rejected(
            r#"{"fingerprint": {"ja4_header": "x ja4"}}"#,
            "bot.fingerprint.ja4_header",
            "header name",
        );
        rejected(r#"{"routes": ["nope"]}"#, "bot.routes[0]", "nope");
    }

    #[test]
    fn challenge_defaults() {
        let secret = r#"{"challenge": {"secret": {"base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}}}"#;
        let Some(bot) = compile(secret).ok().flatten() else {
            unreachable!("no bot")
        };
        assert_eq!(bot.challenge_at, Some(60));
        let c = bot
            .challenge
            .as_ref()
            .map(|c| (c.difficulty, c.ttl_s, c.pass_ttl_s));
        assert_eq!(c, Some((16, 300, 1800)));
    }

    #[test]
    fn cidrs() {
        let c = |t: &str| Cidr::parse(t).unwrap_or_else(|| unreachable!("{t}"));
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|_| unreachable!("{t}"));
        assert!(c("10.0.0.0/8").contains(ip("10.200.1.1")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(c("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!c("10.0.0.0/8").contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "::/129",
            "10.0.0.0/+8",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
