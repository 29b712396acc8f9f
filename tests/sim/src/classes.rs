//! The classes of clients, each a set of threads that send until the deadline.
//!
//! Every class uses its own block of client addresses (see
//! [`Identity::address`](crate::client::Identity::address)), so the per-IP
//! state one class builds up in palisade never touches another's.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{Client, Request, Target};
use crate::fixtures::{self, HeaderSet};
use crate::jwt;
use crate::report::{Kind, Recorder};
use crate::signing::{self, Message, Params, PAYMENT_COMPONENTS};

/// An RFC 9421 HMAC key the target knows.
pub struct SigningKey {
    pub id: String,
    pub secret: Vec<u8>,
}

/// What every class's threads share.
pub struct Ctx {
    pub target: Target,
    pub deadline: Instant,
    pub seed: u64,
    pub key: SigningKey,
    /// Mints the bearer tokens of browsers and of the shared-token class.
    pub jwt: jwt::Issuer,
}

impl Ctx {
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Sleeps until `t`; false (at once) when `t` is past the deadline.
    fn sleep_until(&self, t: Instant) -> bool {
        if t >= self.deadline {
            let now = Instant::now();
            if self.deadline > now {
                std::thread::sleep(self.deadline - now);
            }
            return false;
        }
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
        true
    }

    /// Sleeps a random time in `range` (ms); false when the deadline comes first.
    fn think(&self, rng: &mut StdRng, range: std::ops::Range<u64>) -> bool {
        let pause = Duration::from_millis(rng.gen_range(range));
        self.sleep_until(Instant::now() + pause)
    }

    /// Client address `n` of the class's block, shifted by the seed so that
    /// another seed gives fresh addresses against the same palisade.
    fn address(&self, block: u8, n: u32) -> IpAddr {
        let shift = (self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32;
        self.target
            .identity
            .address(block, n.wrapping_add(shift) % 60_000)
    }

    fn rng(&self, block: u8, thread: usize) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ (u64::from(block) << 40) ^ (thread as u64) << 8)
    }

    /// Simulated client `n` of address block `block`.
    fn client(&self, block: u8, n: u32) -> Simulated {
        let ip = self.address(block, n);
        Simulated {
            ip,
            client: Client::new(&self.target, ip, 1),
        }
    }

    /// Simulated clients `first..first + count` of address block `block`.
    fn clients(&self, block: u8, first: u32, count: u32) -> Vec<Simulated> {
        (first..first + count)
            .map(|n| self.client(block, n))
            .collect()
    }
}

/// Sends at a fixed rate: one request per `interval`, without catching up a
/// backlog of more than a second (a stalled client does not then burst).
struct Pacer {
    next: Instant,
    interval: Duration,
}

impl Pacer {
    fn new(interval: Duration, rng: &mut StdRng) -> Pacer {
        // Threads of a class start spread over one interval.
        let jitter = interval.mul_f64(rng.gen_range(0.0..1.0));
        Pacer {
            next: Instant::now() + jitter,
            interval,
        }
    }

    fn per_second(rate: f64, threads: usize, rng: &mut StdRng) -> Pacer {
        Pacer::new(
            Duration::from_secs_f64(threads as f64 / rate.max(0.001)),
            rng,
        )
    }

    /// Waits for the next slot; false when the run is over.
    fn wait(&mut self, ctx: &Ctx) -> bool {
        if !ctx.sleep_until(self.next) {
            return false;
        }
        self.next += self.interval;
        let now = Instant::now();
        if now > self.next + Duration::from_secs(1) {
            self.next = now;
        }
        true
    }
}

/// A client address and its HTTP client; every response is recorded.
struct Simulated {
    ip: IpAddr,
    client: Client,
}

thread_local! {
    /// Requests sent so far by this thread (the `n` of its request ids).
    static SENT: Cell<u64> = const { Cell::new(0) };
}

/// `<class>-<thread>-<n>`: the name of the sending thread (main.rs names
/// each `<class>-<thread>`) and its request count, so that palisade's log
/// lines (which carry the request id) can be told apart by class. Only
/// `[A-Za-z0-9_-]`, at most 64 characters: what palisade echoes.
fn next_request_id() -> String {
    let n = SENT.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let thread = std::thread::current();
    let name: String = thread
        .name()
        .unwrap_or("sim")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{name}-{n}")
}

/// The class name of a request id made by [`next_request_id`].
#[cfg(test)]
pub fn class_of_request_id(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '-');
    let (_n, _thread) = (parts.next()?, parts.next()?);
    parts.next()
}

impl Simulated {
    /// Sends with the class's headers in their order, then `x-request-id`.
    fn send(
        &self,
        rec: &Recorder<'_>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        let id = next_request_id();
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 1);
        all.extend_from_slice(headers);
        all.push(("x-request-id", id.as_str()));
        let req = Request {
            method,
            path,
            headers: &all,
            body,
        };
        rec.record(self.ip, &self.client.send(&req));
    }

    fn get(&self, rec: &Recorder<'_>, path: &str, headers: &[(&str, &str)]) {
        self.send(rec, "GET", path, headers, None);
    }

    fn post(&self, rec: &Recorder<'_>, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.send(rec, "POST", path, headers, Some(body));
    }

    /// A GET with a header set the class owns (fixture sets).
    fn get_owned(&self, rec: &Recorder<'_>, path: &str, headers: &[(String, String)]) {
        self.get(rec, path, &borrowed(headers));
    }

    /// A POST with headers the class built and owns (signed requests).
    fn post_owned(
        &self,
        rec: &Recorder<'_>,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) {
        self.post(rec, path, &borrowed(headers), body);
    }
}

fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// The one token all clients of the shared-token class send: minted once,
/// and again only when half its lifetime is gone (long runs).
#[derive(Default)]
pub(crate) struct SharedToken(Mutex<Option<(u64, String)>>);

impl SharedToken {
    fn current(&self, ctx: &Ctx) -> String {
        let mut slot = match self.0.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = unix_now();
        match &*slot {
            Some((minted, token)) if now < minted + jwt::LIFETIME_S / 2 => token.clone(),
            _ => {
                let token = ctx.jwt.mint(SHARED_USER, now);
                *slot = Some((now, token.clone()));
                token
            }
        }
    }
}

/// One class of clients.
pub struct Class {
    pub name: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// The defense meant to stop it (attack classes).
    pub stopped_by: &'static str,
    pub threads: usize,
    /// Address block: distinct per class.
    pub block: u8,
    pub(crate) behaviour: Behaviour,
}

pub(crate) enum Behaviour {
    Browsers,
    SignedApi,
    StuffingFewIps,
    StuffingRotating(AtomicU32),
    Scraper(AtomicU64),
    SharedToken(SharedToken),
    Replay,
    LoginFlood,
    ApiClient,
    SlowScraper(AtomicU64),
    MachineTiming,
    ResidentialScraper(Residential),
}

/// The residential scraper's progress: the next item id (one walk over the
/// whole run) and the next address (one per sticky session).
#[derive(Default)]
pub(crate) struct Residential {
    next_id: AtomicU64,
    next_address: AtomicU32,
}

/// User agents of the older classes that send a few headers only (scraper,
/// shared token): browsers' user agents on clients that are no browsers.
const BROWSER_UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];
const ACCEPT_JSON: &str = "application/json, text/plain, */*";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
/// The one header set (fingerprint) the rotating stuffing botnet sends from
/// every address: a script that sends a Chrome user agent.
const BOTNET_SET: &str = "script_as_chrome";
/// The account whose token is shared.
const SHARED_USER: &str = "acct-4711";
const PAYMENTS_UA: &str = "acme-payments/2.3";

pub fn all() -> Vec<Class> {
    vec![
        Class {
            name: "browsers",
            kind: Kind::Legitimate,
            description: "people in current browsers (Chrome, Edge, Firefox, Safari header sets of tests/fixtures, in order): one address each, a short session (page, login, /account with their own token, a few API reads) at human pace",
            stopped_by: "",
            threads: 24,
            block: 0,
            behaviour: Behaviour::Browsers,
        },
        Class {
            name: "api-signed",
            kind: Kind::Legitimate,
            description: "an API client POSTing /payments with RFC 9421 signatures (fresh nonce each), 1.25 requests/s",
            stopped_by: "",
            threads: 1,
            block: 1,
            behaviour: Behaviour::SignedApi,
        },
        Class {
            name: "stuffing-few-ips",
            kind: Kind::Attack,
            description: "credential stuffing: POST /login with leaked pairs from 3 addresses, 8 requests/s each",
            stopped_by: "per-IP rate limit on the login route, with escalating bans",
            threads: 3,
            block: 2,
            behaviour: Behaviour::StuffingFewIps,
        },
        Class {
            name: "stuffing-rotating",
            kind: Kind::Attack,
            description: "credential stuffing from a botnet: 2 attempts per address, every address sending the same headers (a script dressed as Chrome), 20/s",
            stopped_by: "fingerprint-keyed limits and bot scoring (bot stage), failed-login counting per user",
            threads: 4,
            block: 3,
            behaviour: Behaviour::StuffingRotating(AtomicU32::new(0)),
        },
        Class {
            name: "scraper",
            kind: Kind::Attack,
            description: "one address walking /api/items/<N> in sequence as fast as 400 requests/s",
            stopped_by: "per-IP rate limit on the API route (sequential-ID detection: bot stage)",
            // Many connections: an allowed request waits for the upstream
            // (the demo upstream takes about 40 ms on a keep-alive
            // connection), a refused one does not.
            threads: 16,
            block: 4,
            behaviour: Behaviour::Scraper(AtomicU64::new(100_000)),
        },
        Class {
            name: "shared-token",
            kind: Kind::Attack,
            description: "one valid bearer token (one account) used from 30 addresses at once, on /account and the API, 6 requests/s in all",
            stopped_by: "token binding: one token seen from too many clients (not the per-user rate limit)",
            threads: 6,
            block: 5,
            behaviour: Behaviour::SharedToken(SharedToken::default()),
        },
        Class {
            name: "replay",
            kind: Kind::Attack,
            description: "one captured signed /payments request sent again and again from 2 addresses, 4/s (the first send is the original)",
            stopped_by: "signature nonce replay check",
            threads: 1,
            block: 6,
            behaviour: Behaviour::Replay,
        },
        Class {
            name: "login-flood",
            kind: Kind::Attack,
            description: "POST /login flood from 16 addresses, 200 requests/s in all",
            stopped_by: "per-IP rate limit on the login route, with escalating bans",
            threads: 4,
            block: 7,
            behaviour: Behaviour::LoginFlood,
        },
        Class {
            name: "api-client",
            kind: Kind::Legitimate,
            description: "2 well-behaved API clients (an SDK's user agent, a bearer token each) reading the API and /account, about 1.2 requests/s each, irregular",
            stopped_by: "",
            threads: 2,
            block: 8,
            behaviour: Behaviour::ApiClient,
        },
        Class {
            name: "slow-scraper",
            kind: Kind::Attack,
            description: "headless Chrome on one address walking /api/items/<N> in sequence, 2-4 requests/s (far below the per-IP limit)",
            stopped_by: "bot scoring: headless user agent, sequential ids (bot stage)",
            threads: 1,
            block: 9,
            behaviour: Behaviour::SlowScraper(AtomicU64::new(200_000)),
        },
        Class {
            name: "machine-timing",
            kind: Kind::Attack,
            description: "3 addresses with a Chrome fetch header set reading random items like a metronome: every 250 ms +-1%",
            stopped_by: "bot scoring: machine timing (bot stage)",
            threads: 3,
            block: 10,
            behaviour: Behaviour::MachineTiming,
        },
        Class {
            name: "residential-scraper",
            kind: Kind::Attack,
            description: "a Chrome header set from rotating residential addresses, ~15 requests per address (sticky session), enumerating /api/items/<N> in sequence over the whole run, 2 sessions at a time",
            stopped_by: "bot scoring: sequential ids and flow per fingerprint (bot stage)",
            threads: 2,
            block: 11,
            behaviour: Behaviour::ResidentialScraper(Residential {
                next_id: AtomicU64::new(300_000),
                next_address: AtomicU32::new(0),
            }),
        },
    ]
}

impl Class {
    /// Thread `thread` of the class: sends until the deadline.
    pub fn run(&self, ctx: &Ctx, rec: &Recorder<'_>, thread: usize) {
        let mut rng = ctx.rng(self.block, thread);
        match &self.behaviour {
            Behaviour::Browsers => browsers(self, ctx, rec, thread, &mut rng),
            Behaviour::SignedApi => signed_api(self, ctx, rec, &mut rng),
            Behaviour::StuffingFewIps => stuffing_few_ips(self, ctx, rec, thread, &mut rng),
            Behaviour::StuffingRotating(next) => stuffing_rotating(self, ctx, rec, next, &mut rng),
            Behaviour::Scraper(next_id) => scraper(self, ctx, rec, next_id, &mut rng),
            Behaviour::SharedToken(token) => shared_token(self, ctx, rec, thread, token, &mut rng),
            Behaviour::Replay => replay(self, ctx, rec, &mut rng),
            Behaviour::LoginFlood => login_flood(self, ctx, rec, thread, &mut rng),
            Behaviour::ApiClient => api_client(self, ctx, rec, thread, &mut rng),
            Behaviour::SlowScraper(next_id) => slow_scraper(self, ctx, rec, next_id, &mut rng),
            Behaviour::MachineTiming => machine_timing(self, ctx, rec, thread, &mut rng),
            Behaviour::ResidentialScraper(state) => {
                residential_scraper(self, ctx, rec, state, &mut rng)
            }
        }
    }
}

fn hex(rng: &mut impl Rng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// The one password envoy/demo_upstream.py accepts.
const DEMO_PASSWORD: &str = "demo";

fn login_body(rng: &mut StdRng) -> String {
    let user = rng.gen_range(1..1_000_000u32);
    format!(
        r#"{{"username": "user{user}@example.com", "password": "{}"}}"#,
        hex(rng, 6)
    )
}

/// A browser session per address: the page, one login, a few API reads,
/// with a person's pauses in between; then the next person. Each person
/// uses one browser of the fixture: its navigation headers for the page
/// and the login form, its fetch headers for the API calls.
fn browsers(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    let kinds = fixtures::browsers();
    let mut session = 0u32;
    if !ctx.think(rng, 0..1500) {
        return;
    }
    while ctx.running() {
        let n = thread as u32 + session * class.threads as u32;
        session += 1;
        let person = ctx.client(class.block, n);
        let browser = &kinds[rng.gen_range(0..kinds.len())];
        let user = format!("user{}", rng.gen_range(1..1_000_000u32));
        let cookie = format!("session={}", hex(rng, 16));
        let bearer = format!("Bearer {}", ctx.jwt.mint(&user, unix_now()));

        person.get_owned(rec, "/", &browser.navigate);
        if !ctx.think(rng, 300..1500) {
            return;
        }
        // The password the demo upstream accepts (envoy/demo_upstream.py):
        // people know theirs, so their logins succeed.
        let form = format!("username={user}%40example.com&password={DEMO_PASSWORD}");
        // The login form is a navigation from the page: same origin.
        let login = fixtures::with(
            fixtures::with(browser.navigate.clone(), "sec-fetch-site", "same-origin"),
            "content-type",
            FORM,
        );
        person.post_owned(rec, "/login", &login, form.as_bytes());

        let api: HeaderSet = fixtures::with(
            fixtures::with(browser.fetch.clone(), "cookie", &cookie),
            "authorization",
            &bearer,
        );
        let reads = rng.gen_range(3..=6);
        for i in 0..reads {
            if !ctx.think(rng, 300..1500) {
                return;
            }
            let path = match i {
                0 => "/account".to_owned(),
                1 => "/api/items?page=1".to_owned(),
                _ => format!("/api/items/{}", rng.gen_range(1..5000)),
            };
            person.get_owned(rec, &path, &api);
        }
        if !ctx.think(rng, 0..1000) {
            return;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A signed `POST /payments` (fresh nonce, created now): headers and body.
fn signed_payment(ctx: &Ctx, rng: &mut StdRng) -> Result<(Vec<(String, String)>, String), String> {
    let body = format!(
        r#"{{"amount": {}, "currency": "EUR", "reference": "order-{}"}}"#,
        rng.gen_range(100..100_000u32),
        hex(rng, 6)
    );
    let digest = signing::content_digest(body.as_bytes());
    let covered = [("content-type", JSON), ("content-digest", digest.as_str())];
    let msg = Message {
        method: "POST",
        authority: &ctx.target.authority,
        path: "/payments",
        query: "",
        headers: &covered,
    };
    // From the OS, not from the seeded generator: a nonce must never repeat,
    // not even in a second run with the same seed.
    let nonce = hex(&mut rand::thread_rng(), 16);
    let params = Params {
        created: unix_now(),
        key_id: &ctx.key.id,
        nonce: Some(&nonce),
        alg: Some("hmac-sha256"),
    };
    let (input, signature) =
        signing::sign(&msg, PAYMENT_COMPONENTS, &params, "sig1", &ctx.key.secret)
            .map_err(|e| e.to_string())?;
    let headers = [
        ("user-agent", PAYMENTS_UA),
        ("accept", JSON),
        ("content-type", JSON),
        ("content-digest", digest.as_str()),
        ("signature-input", input.as_str()),
        ("signature", signature.as_str()),
    ];
    Ok((
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body,
    ))
}

/// A well-behaved API client: each payment freshly signed, below the
/// per-signer limit of the demo (100 per minute).
fn signed_api(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, rng: &mut StdRng) {
    let api = ctx.client(class.block, 0);
    let mut pacer = Pacer::per_second(1.25, 1, rng);
    while pacer.wait(ctx) {
        match signed_payment(ctx, rng) {
            Ok((headers, body)) => api.post_owned(rec, "/payments", &headers, body.as_bytes()),
            Err(e) => {
                eprintln!("palisade-sim: api-signed: cannot sign: {e}");
                return;
            }
        }
    }
}

/// Three addresses, each trying leaked credentials at 8 per second.
fn stuffing_few_ips(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    let bot = ctx.client(class.block, thread as u32);
    let headers = [
        ("user-agent", "python-requests/2.32.3"),
        ("accept", "*/*"),
        ("content-type", JSON),
    ];
    let mut pacer = Pacer::per_second(8.0, 1, rng);
    while pacer.wait(ctx) {
        bot.post(rec, "/login", &headers, login_body(rng).as_bytes());
    }
}

/// Two attempts per address, then a fresh address; every address sends the
/// very same headers in the same order.
fn stuffing_rotating(
    class: &Class,
    ctx: &Ctx,
    rec: &Recorder<'_>,
    next: &AtomicU32,
    rng: &mut StdRng,
) {
    let headers = fixtures::with(fixtures::set(BOTNET_SET), "content-type", JSON);
    let mut pacer = Pacer::per_second(20.0 / 2.0, class.threads, rng);
    while pacer.wait(ctx) {
        let bot = ctx.client(class.block, next.fetch_add(1, Ordering::Relaxed));
        bot.post_owned(rec, "/login", &headers, login_body(rng).as_bytes());
        if !ctx.think(rng, 50..150) {
            return;
        }
        bot.post_owned(rec, "/login", &headers, login_body(rng).as_bytes());
    }
}

/// One address, many connections (one per thread), sequential item ids.
fn scraper(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, next_id: &AtomicU64, rng: &mut StdRng) {
    let bot = ctx.client(class.block, 0);
    let headers = [("user-agent", BROWSER_UAS[2]), ("accept", ACCEPT_JSON)];
    let mut pacer = Pacer::per_second(400.0, class.threads, rng);
    while pacer.wait(ctx) {
        let path = format!("/api/items/{}", next_id.fetch_add(1, Ordering::Relaxed));
        bot.get(rec, &path, &headers);
    }
}

/// Five addresses per thread take turns with the same token, on the
/// authenticated /account and on the API.
fn shared_token(
    class: &Class,
    ctx: &Ctx,
    rec: &Recorder<'_>,
    thread: usize,
    token: &SharedToken,
    rng: &mut StdRng,
) {
    const PER_THREAD: u32 = 5;
    let holders = ctx.clients(class.block, thread as u32 * PER_THREAD, PER_THREAD);
    let uas: Vec<&str> = holders
        .iter()
        .map(|_| BROWSER_UAS[rng.gen_range(0..BROWSER_UAS.len())])
        .collect();
    let mut pacer = Pacer::per_second(6.0, class.threads, rng);
    let mut turn = 0usize;
    while pacer.wait(ctx) {
        let i = turn % holders.len();
        turn += 1;
        let bearer = format!("Bearer {}", token.current(ctx));
        let headers = [
            ("user-agent", uas[i]),
            ("accept", ACCEPT_JSON),
            ("authorization", bearer.as_str()),
        ];
        let path = if turn % 2 == 0 {
            "/account".to_owned()
        } else {
            format!("/api/items/{}", rng.gen_range(1..5000))
        };
        holders[i].get(rec, &path, &headers);
    }
}

/// The first send is the client's own request; every later one replays it
/// byte for byte, from two addresses in turn.
fn replay(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, rng: &mut StdRng) {
    let (headers, body) = match signed_payment(ctx, rng) {
        Ok(signed) => signed,
        Err(e) => {
            eprintln!("palisade-sim: replay: cannot sign: {e}");
            return;
        }
    };
    let senders = ctx.clients(class.block, 0, 2);
    let mut pacer = Pacer::per_second(4.0, 1, rng);
    let mut turn = 0usize;
    while pacer.wait(ctx) {
        senders[turn % senders.len()].post_owned(rec, "/payments", &headers, body.as_bytes());
        turn += 1;
    }
}

/// Four addresses per thread take turns posting the same login.
fn login_flood(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    const PER_THREAD: u32 = 4;
    let bots = ctx.clients(class.block, thread as u32 * PER_THREAD, PER_THREAD);
    let headers = [("user-agent", "Go-http-client/1.1"), ("content-type", JSON)];
    let body = br#"{"username": "admin", "password": "admin"}"#;
    let mut pacer = Pacer::per_second(200.0, class.threads, rng);
    let mut turn = 0usize;
    while pacer.wait(ctx) {
        bots[turn % bots.len()].post(rec, "/login", &headers, body);
        turn += 1;
    }
}

/// A service using the API with its own token (refreshed at half its
/// lifetime) and an SDK's headers, at an irregular, moderate pace: requests
/// follow the work it has, not a timer.
fn api_client(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    let service = ctx.client(class.block, thread as u32);
    let sub = format!("svc-orders-{thread}");
    let sdk = fixtures::set("api_client_sdk");
    let mut minted: Option<(u64, String)> = None;
    let mut turn = 0u32;
    if !ctx.think(rng, 0..800) {
        return;
    }
    while ctx.running() {
        let now = unix_now();
        let bearer = match &minted {
            Some((at, bearer)) if now < at + jwt::LIFETIME_S / 2 => bearer.clone(),
            _ => {
                let bearer = format!("Bearer {}", ctx.jwt.mint(&sub, now));
                minted = Some((now, bearer.clone()));
                bearer
            }
        };
        let headers = fixtures::with(sdk.clone(), "authorization", &bearer);
        let path = match turn % 4 {
            0 => format!("/api/items?page={}", rng.gen_range(1..50)),
            3 => "/account".to_owned(),
            _ => format!("/api/items/{}", rng.gen_range(1..5000)),
        };
        turn += 1;
        service.get_owned(rec, &path, &headers);
        if !ctx.think(rng, 300..1300) {
            return;
        }
    }
}

/// Headless Chrome on one address, one item after the other, a few per
/// second with jitter: far below any per-IP limit.
fn slow_scraper(
    class: &Class,
    ctx: &Ctx,
    rec: &Recorder<'_>,
    next_id: &AtomicU64,
    rng: &mut StdRng,
) {
    let bot = ctx.client(class.block, 0);
    let headers = fixtures::set("headless_chrome");
    while ctx.think(rng, 250..500) {
        let path = format!("/api/items/{}", next_id.fetch_add(1, Ordering::Relaxed));
        bot.get_owned(rec, &path, &headers);
    }
}

/// One address per thread with a browser's fetch headers, reading random
/// items on a metronome: every 250 ms, +-1%.
fn machine_timing(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    const INTERVAL_S: f64 = 0.250;
    let bot = ctx.client(class.block, thread as u32);
    let headers = fixtures::set("chrome_windows_fetch");
    let mut next = Instant::now() + Duration::from_secs_f64(INTERVAL_S * rng.gen_range(0.0..1.0));
    while ctx.sleep_until(next) {
        let path = format!("/api/items/{}", rng.gen_range(1..5000));
        bot.get_owned(rec, &path, &headers);
        next += Duration::from_secs_f64(INTERVAL_S * rng.gen_range(0.99..1.01));
        let now = Instant::now();
        if now > next + Duration::from_secs(1) {
            next = now;
        }
    }
}

/// Sticky sessions from residential addresses: each session a fresh
/// address, the catalogue page with Chrome's navigation headers, then
/// about 15 item reads with its fetch headers, continuing the one
/// sequential walk over the item ids.
fn residential_scraper(
    class: &Class,
    ctx: &Ctx,
    rec: &Recorder<'_>,
    state: &Residential,
    rng: &mut StdRng,
) {
    let Some(chrome) = fixtures::browsers()
        .into_iter()
        .find(|b| b.name == "chrome_windows_navigate")
    else {
        return;
    };
    if !ctx.think(rng, 0..500) {
        return;
    }
    while ctx.running() {
        let n = state.next_address.fetch_add(1, Ordering::Relaxed);
        let bot = ctx.client(class.block, n);
        bot.get_owned(rec, "/", &chrome.navigate);
        for _ in 1..rng.gen_range(13..=17) {
            if !ctx.think(rng, 250..750) {
                return;
            }
            let path = format!(
                "/api/items/{}",
                state.next_id.fetch_add(1, Ordering::Relaxed)
            );
            bot.get_owned(rec, &path, &chrome.fetch);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    #[test]
    fn request_ids_name_class_and_thread_and_are_echoable() {
        let ids = std::thread::Builder::new()
            .name("residential-scraper-1".to_owned())
            .spawn(|| (next_request_id(), next_request_id()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(ids.0, "residential-scraper-1-1");
        assert_eq!(ids.1, "residential-scraper-1-2");
        assert_eq!(class_of_request_id(&ids.1), Some("residential-scraper"));
        for c in all() {
            let id = format!("{}-{}-{}", c.name, c.threads - 1, u64::MAX);
            assert!(id.len() <= 64, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(class_of_request_id(&id), Some(c.name));
        }
        let odd = std::thread::Builder::new()
            .name("a b/c".to_owned())
            .spawn(next_request_id)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(odd, "a_b_c-1");
    }
}
