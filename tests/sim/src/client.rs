//! One simulated client: an HTTP agent whose requests come from one address.
//!
//! Palisade keys clients on their address. The simulator gives each simulated
//! client its own address in one of two ways ([`Identity`]):
//!
//! - `bind` (default): every socket of the client is bound to its own
//!   loopback address (127.x.y.z; Linux routes all of 127.0.0.0/8 to `lo`)
//!   before it connects, so Envoy sees a different TCP peer per client. This
//!   is what the demo configuration needs (`client_ip.source: peer`), and it
//!   cannot be forged by a header. The target must then be reached over
//!   loopback.
//! - `xff`: the client sends its address in `X-Forwarded-For` (addresses from
//!   198.18.0.0/15, the benchmarking range), for a palisade configured with
//!   `client_ip.source: x-forwarded-for` behind a proxy that passes the
//!   header on.
//!
//! HTTP itself is ureq's (keep-alive, one pool per client); only the socket
//! is opened here, through ureq's connector interface (its `unversioned`
//! module: not covered by semver, hence the exact minor version in
//! Cargo.toml).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Agent;

/// Connect, send and receive timeouts of one request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read (palisade's JSON answers are tiny).
const BODY_LIMIT: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    Bind,
    Xff,
}

impl Identity {
    pub fn name(self) -> &'static str {
        match self {
            Identity::Bind => "bind",
            Identity::Xff => "xff",
        }
    }

    /// Address number `n` of address block `block` (one block per class).
    pub fn address(self, block: u8, n: u32) -> IpAddr {
        let lo = (n % 254 + 1) as u8;
        let hi = n / 254;
        match self {
            // 127.<32+block>.<hi>.<lo>: 63,500 addresses per block.
            Identity::Bind => IpAddr::V4(Ipv4Addr::new(
                127,
                32u8.wrapping_add(block),
                (hi % 250) as u8,
                lo,
            )),
            // 198.18.0.0/15: 16 third-octet values per block, 4,064 addresses.
            Identity::Xff => {
                let third = u32::from(block % 32) * 16 + hi % 16;
                IpAddr::V4(Ipv4Addr::new(
                    198,
                    18 + (third / 256) as u8,
                    (third % 256) as u8,
                    lo,
                ))
            }
        }
    }
}

/// Where the simulated traffic goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    /// `host:port` as sent in `Host` (default port left out): the `@authority`
    /// that signatures cover.
    pub authority: String,
    pub identity: Identity,
}

impl Target {
    /// Parses `http://host[:port][/]`.
    pub fn parse(url: &str, identity: Identity) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("target `{url}`: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "target `{url}`: give scheme, host and port only, e.g. http://127.0.0.1:10000"
            ));
        }
        let authority = authority.to_ascii_lowercase();
        let authority = authority
            .strip_suffix(":80")
            .unwrap_or(&authority)
            .to_owned();
        Ok(Target {
            base: format!("http://{authority}"),
            authority,
            identity,
        })
    }
}

/// One request, as a class builds it.
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
}

/// How a response counts in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the request reached the upstream.
    Allowed,
    /// A challenge verdict: 403 with reason `bot.challenge` (the bot stage
    /// asks for a proof of work).
    Challenged,
    /// 429.
    Throttled,
    /// Any other 4xx (401, 403, 400, 413, ...).
    Denied,
    /// 5xx, anything else, and transport errors.
    Error,
}

/// Palisade's reason code of a challenge (bot stage).
pub const CHALLENGE: &str = "bot.challenge";

pub fn classify(status: u16, reason: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Allowed,
        429 => Outcome::Throttled,
        403 if reason == Some(CHALLENGE) => Outcome::Challenged,
        400..=499 => Outcome::Denied,
        _ => Outcome::Error,
    }
}

/// What came back: the status (none on a transport error), palisade's reason
/// code when it answered itself, and for errors what went wrong.
pub struct Response {
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub outcome: Outcome,
}

pub struct Client {
    agent: Agent,
    base: String,
    xff: Option<String>,
}

impl Client {
    /// A client whose requests come from `ip`. `connections`: how many
    /// keep-alive connections it keeps (one per thread that shares it).
    pub fn new(target: &Target, ip: IpAddr, connections: usize) -> Client {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(TIMEOUT))
            .max_idle_connections(connections.max(1))
            .max_idle_connections_per_host(connections.max(1))
            // Each class sets its own user-agent and accept headers.
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .build();
        let (agent, xff) = match target.identity {
            Identity::Bind => (
                Agent::with_parts(
                    config,
                    SourceBound { source: ip },
                    DefaultResolver::default(),
                ),
                None,
            ),
            Identity::Xff => (Agent::new_with_config(config), Some(ip.to_string())),
        };
        Client {
            agent,
            base: target.base.clone(),
            xff,
        }
    }

    pub fn send(&self, req: &Request<'_>) -> Response {
        match self.exchange(req) {
            Ok((status, body)) => {
                let reason = if (200..300).contains(&status) {
                    None
                } else {
                    reason_of(&body)
                };
                let outcome = classify(status, reason.as_deref());
                // An error that is not palisade's own (no reason code), e.g. a
                // 503 of Envoy's when the upstream does not answer: keep its
                // first words for the report.
                let error = (outcome == Outcome::Error && reason.is_none()).then(|| {
                    let text = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
                    format!("HTTP {status}: {}", text.trim())
                });
                Response {
                    status: Some(status),
                    reason,
                    error,
                    outcome,
                }
            }
            Err(e) => Response {
                status: None,
                reason: None,
                error: Some(e.to_string()),
                outcome: Outcome::Error,
            },
        }
    }

    /// Status and body (at most BODY_LIMIT bytes).
    fn exchange(&self, req: &Request<'_>) -> Result<(u16, Vec<u8>), ureq::Error> {
        let url = format!("{}{}", self.base, req.path);
        let mut builder = ureq::http::Request::builder().method(req.method).uri(url);
        for (name, value) in req.headers {
            builder = builder.header(*name, *value);
        }
        if let Some(xff) = &self.xff {
            builder = builder.header("x-forwarded-for", xff.as_str());
        }
        let response = match req.body {
            Some(body) => self.agent.run(builder.body(body)?)?,
            None => self.agent.run(builder.body(())?)?,
        };
        let status = response.status().as_u16();
        // Read the body whatever the status, so the connection can be reused.
        let body = response
            .into_body()
            .into_with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()?;
        Ok((status, body))
    }
}

/// `reason` of palisade's JSON error body, if the body is one. A refusal
/// may also be an HTML page (a challenge for a client that accepts
/// text/html): its reason is the bot stage's code if the page names one,
/// else `bot.challenge` for palisade's proof-of-work page (its
/// `data-difficulty` attribute, src/stages/bot/challenge.rs) or a page
/// that speaks of a challenge.
pub fn reason_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        reason: String,
    }
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        return Some(b.reason);
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if !text.contains("<html") && !text.contains("<!doctype html") {
        return None;
    }
    ["bot.challenge", "bot.deny"]
        .into_iter()
        .find(|code| text.contains(code))
        .or_else(|| {
            (text.contains("data-difficulty=") || text.contains("challenge")).then_some(CHALLENGE)
        })
        .map(str::to_owned)
}

/// ureq connector that opens plain TCP connections from a fixed source address.
struct SourceBound {
    source: IpAddr,
}

impl fmt::Debug for SourceBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceBound")
            .field("source", &self.source)
            .finish()
    }
}

impl Connector<()> for SourceBound {
    type Out = BoundTcp;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if details.needs_tls() {
            return Err(ureq::Error::Other(
                "the simulator speaks plain HTTP only".into(),
            ));
        }
        let mut last = io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no address of the target's family",
        );
        for addr in details
            .addrs
            .iter()
            .filter(|a| a.is_ipv4() == self.source.is_ipv4())
        {
            match connect_from(self.source, *addr) {
                Ok(stream) => {
                    let config = details.config;
                    let buffers =
                        LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size());
                    return Ok(Some(BoundTcp { stream, buffers }));
                }
                Err(e) => last = e,
            }
        }
        Err(ureq::Error::Io(last))
    }
}

fn connect_from(source: IpAddr, dest: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&dest.into(), TIMEOUT)?;
    socket.set_tcp_nodelay(true)?;
    // Fixed socket timeouts instead of ureq's per-call budget: every request
    // of the simulator has the same one, and the agent's global timeout still
    // bounds a whole call.
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.set_write_timeout(Some(TIMEOUT))?;
    Ok(socket.into())
}

/// A plain TCP transport for ureq (its own is not public): writes what ureq
/// encoded, reads what the server sent into ureq's buffers.
struct BoundTcp {
    stream: TcpStream,
    buffers: LazyBuffers,
}

impl fmt::Debug for BoundTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundTcp")
            .field("local", &self.stream.local_addr().ok())
            .finish()
    }
}

impl Transport for BoundTcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, _timeout: NextTimeout) -> Result<(), ureq::Error> {
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output).map_err(ureq::Error::Io)
    }

    fn await_input(&mut self, _timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match self.stream.read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(ureq::Error::Io)?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Whether a pooled connection can be reused: nothing to read and not
    /// closed by the server.
    fn is_open(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8];
        let idle =
            matches!(self.stream.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).is_ok() && idle
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    #[test]
    fn statuses_count_as_the_brief_says() {
        assert_eq!(classify(200, None), Outcome::Allowed);
        assert_eq!(classify(204, None), Outcome::Allowed);
        assert_eq!(classify(429, Some("rl.exhausted")), Outcome::Throttled);
        for s in [400, 401, 403, 413] {
            assert_eq!(classify(s, None), Outcome::Denied, "{s}");
        }
        assert_eq!(classify(403, Some("bot.challenge")), Outcome::Challenged);
        assert_eq!(classify(403, Some("bot.deny")), Outcome::Denied);
        assert_eq!(classify(403, Some("ban.active")), Outcome::Denied);
        // Only a 403 is a challenge.
        assert_eq!(classify(401, Some("bot.challenge")), Outcome::Denied);
        for s in [302, 500, 503] {
            assert_eq!(classify(s, None), Outcome::Error, "{s}");
        }
    }

    #[test]
    fn palisade_reason_is_read_from_its_json_body() {
        let body = br#"{"error": "unauthorized", "reason": "sig.replay", "request_id": "x"}"#;
        assert_eq!(reason_of(body).as_deref(), Some("sig.replay"));
        assert_eq!(reason_of(b"upstream connect error"), None);
        let challenge = br#"{"error": "challenge", "reason": "bot.challenge", "request_id": "x"}"#;
        assert_eq!(reason_of(challenge).as_deref(), Some("bot.challenge"));
        let page = b"<!DOCTYPE html><html><body>Checking your browser: challenge</body></html>";
        assert_eq!(reason_of(page).as_deref(), Some("bot.challenge"));
        let pow = b"<!doctype html>\n<html lang=\"en\"><head><title>Checking your browser</title></head>\n\
            <body><main id=\"pow\" data-token=\"abc\" data-difficulty=\"16\"></main></body></html>\n";
        assert_eq!(reason_of(pow).as_deref(), Some("bot.challenge"));
        let deny = b"<html><body>refused (bot.deny)</body></html>";
        assert_eq!(reason_of(deny).as_deref(), Some("bot.deny"));
        assert_eq!(reason_of(b"<html><body>forbidden</body></html>"), None);
        assert_eq!(reason_of(b"a challenge, not HTML"), None);
    }

    #[test]
    fn addresses_are_distinct_per_block_and_number() {
        for identity in [Identity::Bind, Identity::Xff] {
            let mut seen = std::collections::HashSet::new();
            for block in 0..12 {
                for n in 0..2000 {
                    assert!(
                        seen.insert(identity.address(block, n)),
                        "{identity:?} {block} {n}"
                    );
                }
            }
        }
        assert_eq!(
            Identity::Bind.address(0, 0),
            "127.32.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(Identity::Xff
            .address(7, 3000)
            .to_string()
            .starts_with("198.1"));
    }

    #[test]
    fn target_urls() {
        let t = Target::parse("http://LocalHost:10000/", Identity::Bind).unwrap();
        assert_eq!(
            (t.base.as_str(), t.authority.as_str()),
            ("http://localhost:10000", "localhost:10000")
        );
        assert_eq!(
            Target::parse("http://example.com:80", Identity::Xff)
                .unwrap()
                .authority,
            "example.com"
        );
        assert!(Target::parse("https://x", Identity::Bind).is_err());
        assert!(Target::parse("http://x/api", Identity::Bind).is_err());
    }
}
