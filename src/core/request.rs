//! The request as every stage sees it: one read of the header map, parsed
//! without copying, and the facts the stages learn about it.
//!
//! The proxy-wasm SDK's own map decoder unwraps UTF-8 conversions and slice
//! bounds, so a header value with a non-UTF-8 byte (which Envoy forwards)
//! would panic and take the worker's VM down. This decoder borrows bytes,
//! checks every bound, and reports a malformed buffer instead.

use crate::core::routes::RouteId;
use crate::state::host::Clock;
use std::borrow::Cow;
use std::cell::Cell;
use std::net::IpAddr;

/// See [`HeaderMap::body_framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    /// A body of a known, non-zero length follows.
    Length,
    /// A body may follow, or none.
    Unknown,
}

/// Header pairs as the host serialized them: `(name, value)`, in order.
#[derive(Debug, Default)]
pub struct HeaderMap<'a> {
    pairs: Vec<(&'a [u8], &'a [u8])>,
}

/// Header names compare without case, but Envoy's are already lower case:
/// a byte comparison settles them, and the case-folding loop (several times
/// the instructions per byte in wasm) runs only for a name of another case.
fn same_name(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && (name == lower || name.eq_ignore_ascii_case(lower))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

impl<'a> HeaderMap<'a> {
    /// Decodes the proxy-wasm map format: a u32 count, then a (name length,
    /// value length) u32 pair per entry, then each name and value followed by
    /// a NUL byte. Returns `None` for a buffer that does not add up.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        if bytes.is_empty() {
            return Some(HeaderMap::default());
        }
        let count = read_u32(bytes, 0)?;
        let mut data = count.checked_mul(8)?.checked_add(4)?;
        if data > bytes.len() {
            return None;
        }
        let mut pairs = Vec::with_capacity(count);
        for n in 0..count {
            let sizes = 4 + n * 8;
            let name_len = read_u32(bytes, sizes)?;
            let value_len = read_u32(bytes, sizes + 4)?;
            let name = bytes.get(data..data.checked_add(name_len)?)?;
            data = data.checked_add(name_len)?.checked_add(1)?;
            let value = bytes.get(data..data.checked_add(value_len)?)?;
            data = data.checked_add(value_len)?.checked_add(1)?;
            pairs.push((name, value));
        }
        Some(HeaderMap { pairs })
    }

    pub fn from_pairs(pairs: Vec<(&'a [u8], &'a [u8])>) -> Self {
        HeaderMap { pairs }
    }

    /// First value of a header; `name` must be lower case. Names compare
    /// without case (RFC 9110): Envoy hands them over lower case, but
    /// NGINX in the client's case.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| same_name(n, name.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// Every value of a header, in order.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.pairs
            .iter()
            .filter(move |(n, _)| same_name(n, name.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// Every (name, value) pair in the order the host gave them.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.pairs.iter().copied()
    }

    /// Header names in the order the host gave them.
    pub fn names(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.pairs.iter().map(|(n, _)| *n)
    }

    /// Every value of cookie `name`, across the `cookie` headers (HTTP/2
    /// may split them), in order.
    pub fn cookies<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.get_all("cookie")
            .flat_map(move |line| cookie_values(line, name))
    }

    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// What the headers say about the body that follows them, for a host
    /// that reports no end of stream with them (ngx_wasm_module). Only
    /// `Content-Length`, or HTTP/1's rule that a request without it and
    /// without `Transfer-Encoding` has no body, settle it; `http1` is asked
    /// only then (a host call). A chunked body, or an HTTP/2 one without a
    /// length, may turn out empty, and that host hands over no empty body.
    pub fn body_framing(&self, http1: impl FnOnce() -> bool) -> BodyFraming {
        if let Some(length) = self.get("content-length") {
            return match std::str::from_utf8(length).map(|v| v.trim().parse::<u64>()) {
                Ok(Ok(0)) => BodyFraming::Empty,
                Ok(Ok(_)) => BodyFraming::Length,
                _ => BodyFraming::Unknown,
            };
        }
        if self.get("transfer-encoding").is_none() && http1() {
            BodyFraming::Empty
        } else {
            BodyFraming::Unknown
        }
    }

    /// The map with `:authority` taken from the `Host` header, for a host
    /// whose `:authority` is its own server name rather than the request's
    /// (ngx_wasm_module). Without a `Host` header (HTTP/1.0) the map is
    /// unchanged.
    pub fn with_host_as_authority(&self) -> HeaderMap<'a> {
        let mut pairs = self.pairs.clone();
        if let Some(host) = self.get("host") {
            match pairs
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(b":authority"))
            {
                Some(pair) => pair.1 = host,
                None => pairs.push((b":authority", host)),
            }
        }
        HeaderMap { pairs }
    }
}

/// Every value of cookie `name` in a `cookie` header value, in order (a
/// browser sends a parent path's or domain's cookie of the same name too).
pub fn cookie_values<'a, 'n>(
    cookie_header: &'a [u8],
    name: &'n str,
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    cookie_header.split(|&b| b == b';').filter_map(move |pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        if n.trim_ascii() != name.as_bytes() {
            return None;
        }
        let v = v.trim_ascii();
        Some(
            v.strip_prefix(b"\"")
                .and_then(|q| q.strip_suffix(b"\""))
                .unwrap_or(v),
        )
    })
}

/// Encodes pairs in the proxy-wasm map format (tests and the glue's header
/// writes use it).
pub fn encode_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let bytes: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    encode_raw_map(&bytes)
}

/// [`encode_map`] over bytes: HTTP/2 hands the filter values that are not
/// UTF-8 (tests and the fuzzers build such maps).
pub fn encode_raw_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// `x-request-id` is echoed in denial bodies so that a client can quote it to
/// support; only a plain token of at most 64 characters is echoed, never
/// arbitrary client bytes.
pub fn request_id<'a>(headers: &HeaderMap<'a>) -> &'a str {
    match headers.get_str("x-request-id") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            id
        }
        _ => "",
    }
}

/// A request's bot score and the reason codes that weighed most, for
/// the security event and the upstream headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotSummary {
    pub score: u8,
    pub reasons: Vec<&'static str>,
}

/// What the stages learned about a request: each stage reads what earlier
/// ones wrote (route, client, user, signing key).
pub struct Facts<'h> {
    pub route: RouteId,
    pub client_ip: Option<IpAddr>,
    /// The client address cut to its configured prefix (`client_ip`
    /// section): the `ip` key of rate limits.
    pub ip_key: Option<IpAddr>,
    /// The authenticated subject, or the configured user header.
    pub user: Option<Cow<'h, [u8]>>,
    /// Key id of a verified request signature.
    pub key_id: Option<String>,
    pub request_id: &'h str,
    /// The client fingerprint id (bot stage), when computed.
    pub fingerprint: Option<u64>,
    /// The bot score and its top reasons, when the request was scored.
    pub bot: Option<BotSummary>,
    /// A login's username as a keyed hash (never the name itself), once
    /// the body phase has read it.
    pub username: Option<u128>,
    /// The client logged in as `username` before (a known device or network).
    pub known_client: bool,
    /// The verified bearer token as a keyed hash, when a rule keys on it.
    pub token: Option<u128>,
    /// The client's country from the trusted `geo.header`, when known.
    pub country: Option<crate::core::country::Country>,
    /// The device identity of the verified client certificate (`mtls`),
    /// read on route classes that need it.
    pub device: Option<String>,
    /// The clock, read at most once per request (each read is a host call).
    now_ms: Cell<Option<u64>>,
}

impl<'h> Facts<'h> {
    pub fn new(route: RouteId, request_id: &'h str) -> Self {
        Facts {
            route,
            client_ip: None,
            ip_key: None,
            user: None,
            key_id: None,
            request_id,
            fingerprint: None,
            bot: None,
            username: None,
            known_client: false,
            token: None,
            country: None,
            device: None,
            now_ms: Cell::new(None),
        }
    }

    /// `None` when the host clock failed (see `Ctx::host_failure`).
    pub fn now_ms(&self, clock: &dyn Clock) -> Option<u64> {
        if let Some(now) = self.now_ms.get() {
            return Some(now);
        }
        let now = clock.now_ms()?;
        self.now_ms.set(Some(now));
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_stands_in_for_authority_where_asked() {
        let pairs = [
            (":authority", "localhost:8080"),
            (":path", "/"),
            ("Host", "api.example"),
        ];
        let bytes = encode_map(&pairs);
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        let rewritten = map.with_host_as_authority();
        assert_eq!(rewritten.get_str(":authority"), Some("api.example"));
        assert_eq!(rewritten.get_str(":path"), Some("/"));
        assert_eq!(map.get_str(":authority"), Some("localhost:8080"));
        // No Host (HTTP/1.0): unchanged; no :authority: added.
        let bare = encode_map(&[(":authority", "localhost:8080")]);
        let bare = HeaderMap::decode(&bare).unwrap_or_default();
        assert_eq!(
            bare.with_host_as_authority().get_str(":authority"),
            Some("localhost:8080")
        );
        let only_host = encode_map(&[("host", "api.example")]);
        let only_host = HeaderMap::decode(&only_host).unwrap_or_default();
        assert_eq!(
            only_host.with_host_as_authority().get_str(":authority"),
            Some("api.example")
        );
    }

    #[test]
    fn only_a_length_or_http1_framing_settles_whether_a_body_follows() {
        use BodyFraming::*;
        let framing = |pairs: &[(&str, &str)], http1: bool| {
            let bytes = encode_map(pairs);
            HeaderMap::decode(&bytes)
                .unwrap_or_default()
                .body_framing(|| http1)
        };
        for http1 in [true, false] {
            assert_eq!(framing(&[("Content-Length", "12")], http1), Length);
            assert_eq!(framing(&[("content-length", "0")], http1), Empty);
            assert_eq!(framing(&[("content-length", "twelve")], http1), Unknown);
            assert_eq!(framing(&[("transfer-encoding", "chunked")], http1), Unknown);
        }
        assert_eq!(framing(&[], true), Empty);
        // HTTP/2 without a length: DATA frames may follow.
        assert_eq!(framing(&[], false), Unknown);
    }

    #[test]
    fn decodes_what_it_encodes() {
        let bytes = encode_map(&[
            (":method", "GET"),
            (":path", "/a?b"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        assert_eq!(map.get_str(":method"), Some("GET"));
        assert_eq!(map.get_str(":path"), Some("/a?b"));
        assert_eq!(map.get_all("x-forwarded-for").count(), 2);
        assert_eq!(map.get("missing"), None);
    }

    #[test]
    fn names_compare_without_case() {
        let bytes = encode_map(&[("User-Agent", "x"), ("X-Forwarded-For", "1.2.3.4")]);
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        assert_eq!(map.get_str("user-agent"), Some("x"));
        assert_eq!(map.get_all("x-forwarded-for").count(), 1);
    }

    #[test]
    fn non_utf8_values_are_kept_as_bytes() {
        let mut bytes = encode_map(&[("x-bin", "ab")]);
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        let map = HeaderMap::decode(&bytes).unwrap_or_default();
        assert_eq!(map.get("x-bin"), Some(&[0xff, b'b'][..]));
        assert_eq!(map.get_str("x-bin"), None);
    }

    #[test]
    fn malformed_buffers_are_refused_not_panicked_on() {
        let good = encode_map(&[("a", "b"), ("cc", "dd")]);
        for cut in 1..good.len() - 1 {
            // Every truncation either fails or decodes fewer bytes; none panics.
            let _ = HeaderMap::decode(&good[..cut]);
        }
        assert!(HeaderMap::decode(&[1, 0, 0]).is_none());
        assert!(HeaderMap::decode(&[255, 255, 255, 255]).is_none());
        let mut huge_len = good.clone();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::decode(&huge_len).is_none());
        assert!(HeaderMap::decode(&[]).is_some_and(|m| m.get("a").is_none()));
    }

    #[test]
    fn request_id_is_echoed_only_when_plain() {
        let ok = encode_map(&[("x-request-id", "3f1c-AB_9")]);
        assert_eq!(
            request_id(&HeaderMap::decode(&ok).unwrap_or_default()),
            "3f1c-AB_9"
        );
        for bad in ["", "<script>", "a b", &"x".repeat(65)] {
            let bytes = encode_map(&[("x-request-id", bad)]);
            assert_eq!(
                request_id(&HeaderMap::decode(&bytes).unwrap_or_default()),
                "",
                "{bad:?}"
            );
        }
    }
}
