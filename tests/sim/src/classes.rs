//! The classes of clients, each a set of threads that send until the deadline.
//!
//! Every class uses its own block of client addresses (see
//! [`Identity::address`](crate::client::Identity::address)), so the per-IP
//! state one class builds up in palisade never touches another's.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{Client, Request, Target};
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

impl Simulated {
    fn get(&self, rec: &Recorder<'_>, path: &str, headers: &[(&str, &str)]) {
        let req = Request {
            method: "GET",
            path,
            headers,
            body: None,
        };
        rec.record(self.ip, &self.client.send(&req));
    }

    fn post(&self, rec: &Recorder<'_>, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let req = Request {
            method: "POST",
            path,
            headers,
            body: Some(body),
        };
        rec.record(self.ip, &self.client.send(&req));
    }

    /// A POST with headers the class built and owns (signed requests).
    fn post_owned(
        &self,
        rec: &Recorder<'_>,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.post(rec, path, &headers, body);
    }
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
}

const BROWSER_UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];
const LANGUAGES: &[&str] = &[
    "en-US,en;q=0.9",
    "de-DE,de;q=0.9,en;q=0.8",
    "fr-FR,fr;q=0.9,en;q=0.7",
    "en-GB,en;q=0.9",
];
const ACCEPT_HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const ACCEPT_JSON: &str = "application/json, text/plain, */*";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
/// The one fingerprint the rotating stuffing botnet sends from every address.
const BOTNET_UA: &str = BROWSER_UAS[0];
/// The account whose token is shared.
const SHARED_USER: &str = "acct-4711";
const PAYMENTS_UA: &str = "acme-payments/2.3";

pub fn all() -> Vec<Class> {
    vec![
        Class {
            name: "browsers",
            kind: Kind::Legitimate,
            description: "people in browsers: one address each, a short session (page, login, /account with their own token, a few API reads) at human pace",
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
            description: "credential stuffing from a botnet: 2 attempts per address, every address sending the same headers, 20/s",
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
        }
    }
}

fn hex(rng: &mut impl Rng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

fn login_body(rng: &mut StdRng) -> String {
    let user = rng.gen_range(1..1_000_000u32);
    format!(
        r#"{{"username": "user{user}@example.com", "password": "{}"}}"#,
        hex(rng, 6)
    )
}

/// A browser session per address: the page, one login, a few API reads,
/// with a person's pauses in between; then the next person.
fn browsers(class: &Class, ctx: &Ctx, rec: &Recorder<'_>, thread: usize, rng: &mut StdRng) {
    let mut session = 0u32;
    if !ctx.think(rng, 0..1500) {
        return;
    }
    while ctx.running() {
        let n = thread as u32 + session * class.threads as u32;
        session += 1;
        let person = ctx.client(class.block, n);
        let ua = BROWSER_UAS[rng.gen_range(0..BROWSER_UAS.len())];
        let lang = LANGUAGES[rng.gen_range(0..LANGUAGES.len())];
        let user = format!("user{}", rng.gen_range(1..1_000_000u32));
        let cookie = format!("session={}", hex(rng, 16));
        let bearer = format!("Bearer {}", ctx.jwt.mint(&user, unix_now()));

        let page = [
            ("user-agent", ua),
            ("accept", ACCEPT_HTML),
            ("accept-language", lang),
        ];
        person.get(rec, "/", &page);
        if !ctx.think(rng, 300..1500) {
            return;
        }
        let form = format!("username={user}%40example.com&password={}", hex(rng, 8));
        let login = [
            ("user-agent", ua),
            ("accept", ACCEPT_HTML),
            ("accept-language", lang),
            ("content-type", FORM),
        ];
        person.post(rec, "/login", &login, form.as_bytes());

        let api = [
            ("user-agent", ua),
            ("accept", ACCEPT_JSON),
            ("accept-language", lang),
            ("cookie", cookie.as_str()),
            ("authorization", bearer.as_str()),
        ];
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
            person.get(rec, &path, &api);
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
    let headers = [
        ("user-agent", BOTNET_UA),
        ("accept", ACCEPT_JSON),
        ("accept-language", "en-US,en;q=0.9"),
        ("content-type", JSON),
    ];
    let mut pacer = Pacer::per_second(20.0 / 2.0, class.threads, rng);
    while pacer.wait(ctx) {
        let bot = ctx.client(class.block, next.fetch_add(1, Ordering::Relaxed));
        bot.post(rec, "/login", &headers, login_body(rng).as_bytes());
        if !ctx.think(rng, 50..150) {
            return;
        }
        bot.post(rec, "/login", &headers, login_body(rng).as_bytes());
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
