//! Which address a request comes from: the `client_ip` section and the
//! classify stage's client step.
//!
//! Trust model: only the last `trusted_hops` entries of `X-Forwarded-For` were
//! written by proxies the operator runs; everything left of them is whatever
//! the client sent, so the client is the `trusted_hops`-th entry from the
//! right. A request with fewer entries did not pass through those proxies,
//! and its TCP peer is the client. An entry that is not an address is a
//! malformed request, not a reason to fall back to a spoofable one.

use crate::core::config_error::{err, ConfigError};
use crate::core::mode::string_enum;
use crate::core::mode::Mode;
use crate::core::request::{Facts, HeaderMap};
use crate::core::verdict::{Finding, Reason, Stage};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The classify stage's second step: the client address, and the part of
/// it that keys `ip` rate limits.
pub fn identify(
    source: ClientIpSource,
    prefixes: IpPrefixes,
    mode: Mode,
    headers: &HeaderMap<'_>,
    peer: &dyn Fn() -> Option<String>,
    facts: &mut Facts<'_>,
    findings: &mut Vec<Finding>,
) {
    match resolve(source, headers, peer) {
        Ok(ip) => {
            facts.client_ip = ip;
            facts.ip_key = ip.map(|ip| prefixes.key_of(ip));
        }
        Err(_) => findings.push(Finding::new(Stage::Classify, Reason::ClientIpInvalid, mode)),
    }
}

/// The client address from the TCP peer, for a request whose address
/// [`identify`] left to be read only when needed.
pub fn from_peer(peer: &dyn Fn() -> Option<String>, prefixes: IpPrefixes, facts: &mut Facts<'_>) {
    let ip = peer().as_deref().and_then(parse_addr);
    facts.client_ip = ip;
    facts.ip_key = ip.map(|ip| prefixes.key_of(ip));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpError {
    /// The trusted `X-Forwarded-For` entry is not an IP address.
    InvalidForwardedFor,
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` and `[::1]:80`.
pub fn parse_addr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<IpAddr>().ok())
}

/// The client address, or `Ok(None)` when the host cannot tell (no peer
/// address, e.g. a Unix socket listener): such requests share one key.
pub fn resolve(
    source: ClientIpSource,
    headers: &HeaderMap<'_>,
    peer: &dyn Fn() -> Option<String>,
) -> Result<Option<IpAddr>, ClientIpError> {
    let from_peer = || peer().as_deref().and_then(parse_addr);
    let hops = match source {
        ClientIpSource::Peer => return Ok(from_peer()),
        ClientIpSource::ForwardedFor { trusted_hops } => trusted_hops as usize,
    };
    // Several X-Forwarded-For lines are one list, in order (RFC 9110 5.3).
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        entries.extend(value.split(|b| *b == b','));
    }
    if entries.len() < hops {
        return Ok(from_peer());
    }
    let Some(trusted) = entries.get(entries.len() - hops) else {
        return Ok(from_peer());
    };
    std::str::from_utf8(trusted)
        .ok()
        .and_then(parse_addr)
        .map(Some)
        .ok_or(ClientIpError::InvalidForwardedFor)
}

/// How much of a client address makes its `ip` key: one IPv6 host can use a
/// whole /64, so keying by /128 would give it billions of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefixes {
    pub v4: u8,
    pub v6: u8,
}

impl IpPrefixes {
    /// The address cut to its prefix: what keys `ip` rate limits.
    pub fn key_of(self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask_u32(self.v4))),
            IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask_u128(self.v6))),
        }
    }
}

/// The first `bits` bits set (`bits` is validated to 8..=32).
fn mask_u32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

/// The first `bits` bits set (`bits` is validated to 16..=128).
fn mask_u128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

impl Default for IpPrefixes {
    fn default() -> Self {
        IpPrefixes { v4: 32, v6: 64 }
    }
}

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    /// The TCP peer of Envoy.
    Peer,
    /// The `n`-th `X-Forwarded-For` entry from the right, for `n` proxies in
    /// front of Envoy that each append the address they saw.
    ForwardedFor { trusted_hops: u32 },
}

/// Where the client address comes from.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("oneOf" = [
    {
        "description": "peer (the default): trusted_hops does not apply.",
        "properties": {"source": {"enum": ["peer"]}, "trusted_hops": {"type": "null"}}
    },
    {
        "description": "x-forwarded-for: trusted_hops (1-16) is required.",
        "required": ["source", "trusted_hops"],
        "properties": {"source": {"enum": ["x-forwarded-for"]}, "trusted_hops": {"type": "integer"}}
    }
])))]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    #[serde(default)]
    source: RawIpSource,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 16)))]
    trusted_hops: Option<u32>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 8, max = 32)))]
    ipv4_prefix: Option<u8>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 16, max = 128)))]
    ipv6_prefix: Option<u8>,
}

#[derive(Default, PartialEq)]
enum RawIpSource {
    #[default]
    Peer,
    ForwardedFor,
}

string_enum!(RawIpSource, "\"peer\" or \"x-forwarded-for\"", {
    "peer" => RawIpSource::Peer,
    "x-forwarded-for" => RawIpSource::ForwardedFor,
});

pub fn compile_client_ip(raw: &RawClientIp) -> Result<ClientIpSource, ConfigError> {
    match (&raw.source, raw.trusted_hops) {
        (RawIpSource::Peer, None) => Ok(ClientIpSource::Peer),
        (RawIpSource::Peer, Some(_)) => Err(err(
            "client_ip.trusted_hops",
            "only applies with \"source\": \"x-forwarded-for\"",
        )),
        (RawIpSource::ForwardedFor, None) => Err(err(
            "client_ip.trusted_hops",
            "required with \"source\": \"x-forwarded-for\": the number of proxies in front of Envoy that append to X-Forwarded-For",
        )),
        (RawIpSource::ForwardedFor, Some(0)) => Err(err(
            "client_ip.trusted_hops",
            "must be at least 1; with no trusted proxy use \"source\": \"peer\"",
        )),
        (RawIpSource::ForwardedFor, Some(n)) if n > 16 => {
            Err(err("client_ip.trusted_hops", format!("{n} is more hops than any real deployment; at most 16")))
        }
        (RawIpSource::ForwardedFor, Some(n)) => Ok(ClientIpSource::ForwardedFor { trusted_hops: n }),
    }
}

pub fn compile_ip_prefixes(raw: &RawClientIp) -> Result<IpPrefixes, ConfigError> {
    let mut prefixes = IpPrefixes::default();
    if let Some(v4) = raw.ipv4_prefix {
        if !(8..=32).contains(&v4) {
            return Err(err("client_ip.ipv4_prefix", "must be between 8 and 32"));
        }
        prefixes.v4 = v4;
    }
    if let Some(v6) = raw.ipv6_prefix {
        if !(16..=128).contains(&v6) {
            return Err(err("client_ip.ipv6_prefix", "must be between 16 and 128"));
        }
        prefixes.v6 = v6;
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::request::encode_map;

    fn resolve_with(
        source: ClientIpSource,
        xff: &[&str],
        peer: Option<&str>,
    ) -> Result<Option<IpAddr>, ClientIpError> {
        let pairs: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        let bytes = encode_map(&pairs);
        let headers = HeaderMap::decode(&bytes).unwrap_or_default();
        let peer = peer.map(str::to_string);
        resolve(source, &headers, &move || peer.clone())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn peer_source_ignores_forwarded_for() {
        let got = resolve_with(ClientIpSource::Peer, &["9.9.9.9"], Some("10.0.0.1:5555"));
        assert_eq!(got, Ok(ip("10.0.0.1")));
        assert_eq!(
            resolve_with(ClientIpSource::Peer, &[], Some("[2001:db8::1]:443")),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(resolve_with(ClientIpSource::Peer, &[], None), Ok(None));
    }

    #[test]
    fn forwarded_for_takes_the_trusted_hop_from_the_right() {
        let one = ClientIpSource::ForwardedFor { trusted_hops: 1 };
        let two = ClientIpSource::ForwardedFor { trusted_hops: 2 };
        assert_eq!(
            resolve_with(one, &["6.6.6.6, 198.51.100.7"], Some("10.0.0.1:1")),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve_with(two, &["6.6.6.6, 198.51.100.7 ,10.0.0.9"], None),
            Ok(ip("198.51.100.7"))
        );
        // Two header lines are one list.
        assert_eq!(
            resolve_with(two, &["6.6.6.6", "198.51.100.7", "10.0.0.9"], None),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            resolve_with(one, &["[2001:db8::5]:8080"], None),
            Ok(ip("2001:db8::5"))
        );
        assert_eq!(
            resolve_with(one, &["192.0.2.1:3000"], None),
            Ok(ip("192.0.2.1"))
        );
    }

    #[test]
    fn too_few_entries_means_the_peer_is_the_client() {
        let two = ClientIpSource::ForwardedFor { trusted_hops: 2 };
        assert_eq!(
            resolve_with(two, &["6.6.6.6"], Some("10.0.0.1:1")),
            Ok(ip("10.0.0.1"))
        );
        assert_eq!(
            resolve_with(two, &[], Some("10.0.0.1:1")),
            Ok(ip("10.0.0.1"))
        );
    }

    #[test]
    fn a_garbage_trusted_entry_is_an_error_not_a_fallback() {
        let one = ClientIpSource::ForwardedFor { trusted_hops: 1 };
        for bad in ["nonsense", "1.2.3.4, ", "999.1.1.1", "", "1.2.3.4 5.6.7.8"] {
            assert_eq!(
                resolve_with(one, &[bad], Some("10.0.0.1:1")),
                Err(ClientIpError::InvalidForwardedFor),
                "{bad:?}"
            );
        }
        // Garbage left of the trusted entry is the client's business.
        assert_eq!(
            resolve_with(one, &["<script>, 203.0.113.9"], None),
            Ok(ip("203.0.113.9"))
        );
    }
}
