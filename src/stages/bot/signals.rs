//! The bot signals a request's headers show, each a strength in 0..=1
//! that the model weighs ([`super::score`]). Behaviour over time (timing,
//! enumeration, flows) is [`super::behaviour`]'s.
//!
//! Each check looks for what real browsers always do and scripts rarely
//! bother to copy: the headers of the family the User-Agent claims, client
//! hints that agree with it, `sec-fetch-*` that agree with the request,
//! and the header order of that family.

use crate::core::request::HeaderMap;
use crate::stages::bot::fingerprint::before;

/// The signals, in the model's feature order. The string forms are stable:
/// they name the model's weights in configuration, and `bot.<name>` is the
/// reason code in events and upstream headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    AutomationUa,
    HeadlessUa,
    MissingBrowserHeaders,
    ClientHintsMismatch,
    SecFetchMismatch,
    HeaderOrder,
    MachineTiming,
    SequentialIds,
    DistinctPaths,
    Flow,
    /// A valid challenge pass: a negative weight lowers the score.
    ChallengePassed,
}

pub const SIGNALS: usize = 11;

impl Signal {
    pub const ALL: [Signal; SIGNALS] = [
        Signal::AutomationUa,
        Signal::HeadlessUa,
        Signal::MissingBrowserHeaders,
        Signal::ClientHintsMismatch,
        Signal::SecFetchMismatch,
        Signal::HeaderOrder,
        Signal::MachineTiming,
        Signal::SequentialIds,
        Signal::DistinctPaths,
        Signal::Flow,
        Signal::ChallengePassed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::AutomationUa => "automation_ua",
            Signal::HeadlessUa => "headless_ua",
            Signal::MissingBrowserHeaders => "missing_browser_headers",
            Signal::ClientHintsMismatch => "client_hints_mismatch",
            Signal::SecFetchMismatch => "sec_fetch_mismatch",
            Signal::HeaderOrder => "header_order",
            Signal::MachineTiming => "machine_timing",
            Signal::SequentialIds => "sequential_ids",
            Signal::DistinctPaths => "distinct_paths",
            Signal::Flow => "flow",
            Signal::ChallengePassed => "challenge_passed",
        }
    }

    /// The reason code in events and the `x-palisade-bot-reasons` header.
    pub fn reason(self) -> &'static str {
        match self {
            Signal::AutomationUa => "bot.automation_ua",
            Signal::HeadlessUa => "bot.headless_ua",
            Signal::MissingBrowserHeaders => "bot.missing_browser_headers",
            Signal::ClientHintsMismatch => "bot.client_hints_mismatch",
            Signal::SecFetchMismatch => "bot.sec_fetch_mismatch",
            Signal::HeaderOrder => "bot.header_order",
            Signal::MachineTiming => "bot.machine_timing",
            Signal::SequentialIds => "bot.sequential_ids",
            Signal::DistinctPaths => "bot.distinct_paths",
            Signal::Flow => "bot.flow",
            Signal::ChallengePassed => "bot.challenge_passed",
        }
    }

    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Signal strengths of one request, indexed by [`Signal::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Strengths(pub [f32; SIGNALS]);

impl Strengths {
    pub fn set(&mut self, signal: Signal, strength: f32) {
        if let Some(s) = self.0.get_mut(signal.index()) {
            *s = strength.clamp(0.0, 1.0);
        }
    }

    pub fn get(&self, signal: Signal) -> f32 {
        self.0.get(signal.index()).copied().unwrap_or(0.0)
    }
}

/// The browser family a User-Agent claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Chrome, Edge, Opera, Brave, ... on Blink: they send client hints.
    Chromium {
        major: u32,
    },
    Firefox {
        major: u32,
    },
    Safari {
        major: u32,
    },
    /// Anything else: a script, an SDK, a crawler.
    Other,
}

/// The number after `marker` up to the first non-digit.
fn version_after(ua: &str, marker: &str) -> Option<u32> {
    let at = ua.find(marker)? + marker.len();
    let digits: &str = ua.get(at..)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits.get(..end)?.parse().ok()
}

pub fn family(ua: &str) -> Family {
    if !ua.starts_with("Mozilla/5.0 ") {
        return Family::Other;
    }
    // Chrome on iOS is WebKit underneath: it behaves like Safari.
    if !ua.contains("CriOS/") && !ua.contains("iPhone") && !ua.contains("iPad") {
        if let Some(major) = version_after(ua, "Chrome/").or_else(|| version_after(ua, "Chromium/"))
        {
            return Family::Chromium { major };
        }
    }
    if ua.contains("Gecko/") {
        if let Some(major) = version_after(ua, "Firefox/") {
            return Family::Firefox { major };
        }
    }
    if ua.contains("AppleWebKit/") && ua.contains("Safari/") {
        if let Some(major) = version_after(ua, "Version/") {
            return Family::Safari { major };
        }
        if ua.contains("CriOS/") {
            return Family::Safari { major: 17 };
        }
    }
    Family::Other
}

/// Scripting clients and automation tools, lower case.
const AUTOMATION: [&str; 26] = [
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "lwp::",
    "scrapy",
    "node-fetch",
    "axios/",
    "undici",
    "postmanruntime",
    "insomnia",
    "httpie",
    "guzzlehttp",
    "php/",
    "ruby",
    "mechanize",
    "powershell",
    "bot/",
    "spider",
];

/// Headless browsers and browser automation.
const HEADLESS: [&str; 9] = [
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "webdriver",
    "electron/",
    "jsdom",
    "cypress",
];

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

/// Whether the browser would send client hints and `sec-fetch-*`: only to
/// potentially trustworthy origins (HTTPS or loopback).
fn secure_context(headers: &HeaderMap<'_>) -> bool {
    if headers.get(":scheme") == Some(b"https")
        || headers.get("x-forwarded-proto") == Some(b"https")
    {
        return true;
    }
    let host = headers
        .get_str(":authority")
        .or_else(|| headers.get_str("host"))
        .unwrap_or("");
    // Without the port: `[::1]:8080` → `[::1]`, `localhost:10000` → `localhost`.
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            if name.starts_with('[') || !name.contains(':') {
                name
            } else {
                host
            }
        }
        _ => host,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The header signals of one request.
pub fn header_signals(headers: &HeaderMap<'_>, out: &mut Strengths) {
    let ua = headers.get_str("user-agent").unwrap_or("");
    let lower = ua.to_ascii_lowercase();
    let hints = headers.get_str("sec-ch-ua").map(str::to_ascii_lowercase);
    let headless =
        contains_any(&lower, &HEADLESS) || hints.as_deref().is_some_and(|h| h.contains("headless"));
    out.set(Signal::HeadlessUa, if headless { 1.0 } else { 0.0 });
    let automation = ua.trim().is_empty() || (!headless && contains_any(&lower, &AUTOMATION));
    out.set(Signal::AutomationUa, if automation { 1.0 } else { 0.0 });

    let family = family(ua);
    if family == Family::Other {
        // Client hints claim a Chromium browser the User-Agent does not.
        if hints.is_some() {
            out.set(Signal::ClientHintsMismatch, 1.0);
        }
        return;
    }
    let secure = secure_context(headers);
    let missing = ["accept", "accept-language", "accept-encoding"]
        .iter()
        .filter(|h| headers.get(h).is_none())
        .count();
    out.set(Signal::MissingBrowserHeaders, missing as f32 / 3.0);
    out.set(
        Signal::ClientHintsMismatch,
        client_hints_mismatch(headers, ua, family, hints.as_deref(), secure),
    );
    out.set(
        Signal::SecFetchMismatch,
        sec_fetch_mismatch(headers, family, secure),
    );
    out.set(Signal::HeaderOrder, header_order(headers, family));
}

fn client_hints_mismatch(
    headers: &HeaderMap<'_>,
    ua: &str,
    family: Family,
    hints: Option<&str>,
    secure: bool,
) -> f32 {
    let Family::Chromium { major } = family else {
        // Only Chromium browsers send client hints.
        return if hints.is_some() { 1.0 } else { 0.0 };
    };
    let Some(hints) = hints else {
        // Chromium sends them to every secure origin since version 89.
        return if secure && major >= 89 { 1.0 } else { 0.0 };
    };
    // `"Chromium";v="131"` (or another brand's) must carry the UA's major.
    let agrees = hints.split(',').any(|brand| {
        let brand = brand.trim();
        let version = brand
            .split_once(";v=\"")
            .and_then(|(_, v)| v.strip_suffix('"'))
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok());
        version == Some(major) && !brand.contains("not")
    });
    if !agrees {
        return 1.0;
    }
    let mobile_ua = ua.contains("Mobile");
    match headers.get("sec-ch-ua-mobile") {
        Some(b"?1") if !mobile_ua => return 1.0,
        Some(b"?0") if mobile_ua => return 1.0,
        _ => {}
    }
    if let Some(platform) = headers.get_str("sec-ch-ua-platform") {
        let claimed = platform.trim_matches('"');
        let agrees = match claimed {
            "Windows" => ua.contains("Windows"),
            "macOS" => ua.contains("Macintosh"),
            "Linux" => ua.contains("Linux") && !ua.contains("Android"),
            "Android" => ua.contains("Android"),
            "Chrome OS" | "Chromium OS" => ua.contains("CrOS"),
            _ => true,
        };
        if !agrees {
            return 1.0;
        }
    }
    0.0
}

fn sec_fetch_mismatch(headers: &HeaderMap<'_>, family: Family, secure: bool) -> f32 {
    let site = headers.get("sec-fetch-site");
    let mode = headers.get("sec-fetch-mode");
    let dest = headers.get("sec-fetch-dest");
    if site.is_none() && mode.is_none() && dest.is_none() {
        let sends = match family {
            Family::Chromium { major } => major >= 80,
            Family::Firefox { major } => major >= 90,
            Family::Safari { major } => major >= 17,
            Family::Other => false,
        };
        return if secure && sends { 1.0 } else { 0.0 };
    }
    let site_ok = matches!(
        site,
        Some(b"same-origin" | b"same-site" | b"cross-site" | b"none")
    );
    let navigate = mode == Some(b"navigate");
    let document_like = matches!(
        dest,
        Some(b"document" | b"iframe" | b"frame" | b"embed" | b"object")
    );
    let user_ok = headers.get("sec-fetch-user").is_none() || navigate;
    let method_ok = !navigate
        || matches!(
            headers.get(":method"),
            Some(b"GET" | b"POST" | b"HEAD") | None
        );
    let consistent = site_ok
        && mode.is_some()
        && dest.is_some()
        && navigate == document_like
        && user_ok
        && method_ok;
    if consistent {
        0.0
    } else {
        1.0
    }
}

/// Pairs of headers in the order each family always sends them (checked
/// against tests/fixtures/browsers.json).
fn order_rules(family: Family) -> &'static [(&'static str, &'static str)] {
    match family {
        Family::Chromium { .. } => &[
            ("user-agent", "accept-encoding"),
            ("accept", "accept-language"),
            ("accept-encoding", "accept-language"),
            ("sec-fetch-site", "sec-fetch-mode"),
            ("sec-fetch-mode", "sec-fetch-dest"),
        ],
        Family::Firefox { .. } => &[
            ("user-agent", "accept"),
            ("accept", "accept-language"),
            ("accept-language", "accept-encoding"),
            ("sec-fetch-dest", "sec-fetch-mode"),
            ("sec-fetch-mode", "sec-fetch-site"),
        ],
        Family::Safari { .. } => &[
            ("accept", "user-agent"),
            ("accept-language", "accept-encoding"),
            ("user-agent", "accept-encoding"),
            ("sec-fetch-site", "sec-fetch-dest"),
            ("sec-fetch-dest", "sec-fetch-mode"),
        ],
        Family::Other => &[],
    }
}

fn header_order(headers: &HeaderMap<'_>, family: Family) -> f32 {
    let broken = order_rules(family)
        .iter()
        .any(|(a, b)| before(headers, a, b) == Some(false));
    if broken {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::bot::fixtures;

    fn strengths(name: &str, extra: &[(&str, &str)]) -> Strengths {
        let set = fixtures::headers(name);
        let mut pairs = set.pairs();
        for (n, v) in extra {
            pairs.push((n.as_bytes(), v.as_bytes()));
        }
        let mut out = Strengths::default();
        header_signals(&HeaderMap::from_pairs(pairs), &mut out);
        out
    }

    /// Over HTTPS, as browsers are seen in production.
    const HTTPS: &[(&str, &str)] = &[(":scheme", "https"), (":method", "GET")];

    #[test]
    fn current_browsers_and_an_sdk_show_no_signal() {
        for name in [
            "chrome_windows_navigate",
            "chrome_windows_fetch",
            "chrome_android_navigate",
            "edge_windows_navigate",
            "firefox_linux_navigate",
            "firefox_windows_fetch",
            "safari_macos_navigate",
            "safari_ios_fetch",
            "api_client_sdk",
        ] {
            assert_eq!(strengths(name, HTTPS), Strengths::default(), "{name}");
        }
    }

    #[test]
    fn scripts_and_headless_browsers_show_theirs() {
        let s = strengths("curl", HTTPS);
        assert_eq!(s.get(Signal::AutomationUa), 1.0);
        let s = strengths("python_requests", HTTPS);
        assert_eq!(s.get(Signal::AutomationUa), 1.0);
        let s = strengths("headless_chrome", HTTPS);
        assert_eq!(s.get(Signal::HeadlessUa), 1.0);
        assert_eq!(s.get(Signal::AutomationUa), 0.0);
        let s = strengths("script_as_chrome", HTTPS);
        assert_eq!(s.get(Signal::ClientHintsMismatch), 1.0, "no client hints");
        assert_eq!(s.get(Signal::SecFetchMismatch), 1.0, "no sec-fetch");
        assert_eq!(s.get(Signal::HeaderOrder), 1.0, "language before encoding");
        let s = strengths("script_chrome_hints_mismatch", HTTPS);
        assert_eq!(s.get(Signal::ClientHintsMismatch), 1.0);
        assert_eq!(s.get(Signal::SecFetchMismatch), 1.0);
        assert_eq!(s.get(Signal::HeaderOrder), 0.0);
    }

    #[test]
    fn missing_headers_count_by_thirds() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(
            b"user-agent",
            b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )];
        let mut out = Strengths::default();
        header_signals(&HeaderMap::from_pairs(pairs), &mut out);
        assert_eq!(out.get(Signal::MissingBrowserHeaders), 1.0);
        assert_eq!(out.get(Signal::SecFetchMismatch), 0.0, "plain http");
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (
                b"user-agent",
                b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
            (b"accept", b"*/*"),
        ];
        let mut out = Strengths::default();
        header_signals(&HeaderMap::from_pairs(pairs), &mut out);
        assert!((out.get(Signal::MissingBrowserHeaders) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn sec_fetch_must_agree_with_itself_and_the_method() {
        let bad = [
            [("sec-fetch-dest", "empty")].as_slice(), // navigate to a non-document
            &[("sec-fetch-site", "elsewhere")],
            &[(":method", "DELETE")],
        ];
        for change in bad {
            let set = fixtures::headers("chrome_windows_navigate");
            let mut pairs: Vec<(&[u8], &[u8])> = set
                .pairs()
                .into_iter()
                .filter(|(n, _)| !change.iter().any(|(c, _)| c.as_bytes() == *n))
                .collect();
            for (n, v) in change {
                pairs.push((n.as_bytes(), v.as_bytes()));
            }
            pairs.push((b":scheme", b"https"));
            let mut out = Strengths::default();
            header_signals(&HeaderMap::from_pairs(pairs), &mut out);
            assert_eq!(out.get(Signal::SecFetchMismatch), 1.0, "{change:?}");
        }
    }

    #[test]
    fn loopback_hosts_are_secure_contexts() {
        for (host, secure) in [
            ("localhost:10000", true),
            ("127.0.0.1", true),
            ("[::1]:8080", true),
            ("shop.example", false),
            ("127.example", false),
        ] {
            let pairs: Vec<(&[u8], &[u8])> = vec![(b":authority", host.as_bytes())];
            assert_eq!(
                secure_context(&HeaderMap::from_pairs(pairs)),
                secure,
                "{host}"
            );
        }
    }

    #[test]
    fn families() {
        for (name, want) in [
            ("chrome_windows_navigate", Family::Chromium { major: 131 }),
            ("edge_windows_navigate", Family::Chromium { major: 131 }),
            ("firefox_linux_navigate", Family::Firefox { major: 133 }),
            ("safari_ios_fetch", Family::Safari { major: 18 }),
            ("curl", Family::Other),
        ] {
            let set = fixtures::headers(name);
            let map = set.map();
            assert_eq!(
                family(map.get_str("user-agent").unwrap_or("")),
                want,
                "{name}"
            );
        }
        assert_eq!(family("Mozilla/5.0 Chrome/"), Family::Other);
        assert_eq!(family(""), Family::Other);
    }
}
