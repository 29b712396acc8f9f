//! palisade-sim: drives a running palisade (Envoy with palisade.wasm) with
//! several classes of clients at once, legitimate and abusive, and reports
//! per class the share of requests allowed, challenged, throttled and denied.
//!
//! `make demo` runs it against the demo configuration (envoy/envoy.yaml);
//! tests/integration/test_sim.py runs it with `--json` and checks thresholds.

mod classes;
mod client;
mod fixtures;
mod jwt;
mod report;
mod signing;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use classes::{Ctx, SigningKey};
use client::{Client, Identity, Request, Target};
use report::{Recorder, Summary, Totals};

/// The demo's public signing key (envoy/envoy.yaml, key id `demo-client`).
const DEMO_SIGNING_KEY: &str = "PzMJdwhYCagyf4qv+oAsKv1EnEzOaOye1k/Nl16hJyQ=";

const USAGE: &str = "\
usage: palisade-sim [options]

Sends traffic of several client classes at once to a running palisade and
prints, per class, the share of requests allowed, challenged, throttled and
denied.

options:
  --target URL       base URL of Envoy (default http://127.0.0.1:10000)
  --duration SECS    how long to send (default 25)
  --seed N           random seed; another seed also picks other client addresses (default 1)
  --json PATH        also write the summary as JSON to PATH
  --identity MODE    how clients get distinct addresses: `bind` (default) binds each
                     client's sockets to its own 127.x.y.z address, for a palisade keyed
                     on the TCP peer (the demo); `xff` sends X-Forwarded-For instead
  --key-id ID        key id of the signing key (default demo-client)
  --classes A,B,...  run only these classes (default: all)
  --wait SECS        wait up to SECS for the target to answer GET / with 200 before
                     starting (default: ask once, and stop if it does not)
  --quiet            no progress line
  --list             list the classes (name, kind: legitimate or attack, description) and exit
  -h, --help         this text

environment:
  DEMO_SIGNING_KEY   base64 HMAC secret of the key id (default: the demo's public key)
  DEMO_JWT_KEY       base64url Ed25519 private key (`d`) the bearer tokens are signed with,
                     issuer https://idp.palisade.demo, audience palisade-demo, kid demo-ed25519
                     (default: the demo's, the public example key of RFC 8037)
";

struct Options {
    target: String,
    duration: f64,
    seed: u64,
    json: Option<String>,
    identity: Identity,
    key_id: String,
    classes: Option<Vec<String>>,
    wait: Option<f64>,
    quiet: bool,
    list: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        target: "http://127.0.0.1:10000".to_owned(),
        duration: 25.0,
        seed: 1,
        json: None,
        identity: Identity::Bind,
        key_id: "demo-client".to_owned(),
        classes: None,
        wait: None,
        quiet: false,
        list: false,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--target" => o.target = value("a URL")?,
            "--duration" => o.duration = number(&name, &value("seconds")?, 0.5, 3600.0)?,
            "--seed" => {
                o.seed = value("a number")?
                    .parse()
                    .map_err(|_| "--seed needs an integer".to_owned())?
            }
            "--json" => o.json = Some(value("a path")?),
            "--identity" => {
                o.identity = match value("bind or xff")?.as_str() {
                    "bind" => Identity::Bind,
                    "xff" => Identity::Xff,
                    other => return Err(format!("--identity: `{other}` is neither bind nor xff")),
                }
            }
            "--key-id" => o.key_id = value("a key id")?,
            "--classes" => {
                o.classes = Some(
                    value("class names")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect(),
                )
            }
            "--wait" => o.wait = Some(number(&name, &value("seconds")?, 0.0, 600.0)?),
            "--quiet" => o.quiet = true,
            "--list" => o.list = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(o))
}

fn number(name: &str, s: &str, min: f64, max: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{name}: `{s}` is not a number from {min} to {max}")),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("palisade-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    fixtures::check()?;
    let mut classes = classes::all();
    if opts.list {
        // One class a line: name, kind (legitimate or attack), description.
        for c in &classes {
            println!(
                "{:<20} {:<10} {}",
                c.name,
                format!("{:?}", c.kind).to_lowercase(),
                c.description
            );
        }
        return Ok(());
    }
    if let Some(wanted) = &opts.classes {
        if let Some(unknown) = wanted
            .iter()
            .find(|w| !classes.iter().any(|c| c.name == w.as_str()))
        {
            return Err(format!("unknown class `{unknown}` (see --list)"));
        }
        classes.retain(|c| wanted.iter().any(|w| w == c.name));
    }
    let target = Target::parse(&opts.target, opts.identity)?;
    if opts.identity == Identity::Bind {
        check_loopback(&target)?;
    }
    let secret_b64 =
        std::env::var("DEMO_SIGNING_KEY").unwrap_or_else(|_| DEMO_SIGNING_KEY.to_owned());
    let secret = BASE64
        .decode(secret_b64.trim())
        .map_err(|_| "DEMO_SIGNING_KEY is not standard base64".to_owned())?;
    let jwt_key = std::env::var("DEMO_JWT_KEY").unwrap_or_else(|_| jwt::DEMO_PRIVATE_D.to_owned());
    let jwt = jwt::Issuer::demo(&jwt_key).map_err(|e| format!("DEMO_JWT_KEY: {e}"))?;
    // One GET / first (or until it answers, with --wait): a wrong target
    // fails here rather than as a table of transport errors.
    wait_ready(&target, Duration::from_secs_f64(opts.wait.unwrap_or(0.0)))?;

    let duration = Duration::from_secs_f64(opts.duration);
    let start = Instant::now();
    let ctx = Ctx {
        target: target.clone(),
        deadline: start + duration,
        seed: opts.seed,
        key: SigningKey {
            id: opts.key_id.clone(),
            secret,
        },
        jwt,
    };
    let totals = Totals::default();
    let recorders: Vec<Recorder<'_>> = classes.iter().map(|_| Recorder::new(&totals)).collect();
    let progress = !opts.quiet;
    let tty = std::io::stderr().is_terminal();

    std::thread::scope(|s| -> Result<(), String> {
        let mut workers = Vec::new();
        for (class, rec) in classes.iter().zip(&recorders) {
            for t in 0..class.threads {
                let (ctx, rec) = (&ctx, rec);
                let handle = std::thread::Builder::new()
                    .name(format!("{}-{t}", class.name))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || class.run(ctx, rec, t))
                    .map_err(|e| format!("cannot start a thread: {e}"))?;
                workers.push(handle);
            }
        }
        if progress {
            let mut last_line = Instant::now();
            while workers.iter().any(|w| !w.is_finished()) {
                std::thread::sleep(Duration::from_millis(200));
                let line = progress_line(&totals, start.elapsed(), duration);
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else if last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{line}");
                    last_line = Instant::now();
                }
            }
            if tty {
                eprintln!(
                    "\r{}\x1b[K",
                    progress_line(&totals, start.elapsed(), duration)
                );
            }
        }
        for w in workers {
            if w.join().is_err() {
                return Err("a client thread panicked".to_owned());
            }
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();

    let summary = Summary {
        target: target.base.clone(),
        identity: opts.identity.name().to_owned(),
        seed: opts.seed,
        duration_s: duration.as_secs_f64(),
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        classes: classes
            .iter()
            .zip(&recorders)
            .map(|(c, rec)| rec.report(c.name, c.kind, c.description, c.stopped_by))
            .collect(),
    };
    println!("{}", report::table(&summary));
    if let Some(path) = &opts.json {
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| format!("JSON summary: {e}"))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

fn progress_line(totals: &Totals, elapsed: Duration, duration: Duration) -> String {
    const WIDTH: usize = 24;
    let frac = (elapsed.as_secs_f64() / duration.as_secs_f64()).min(1.0);
    let filled = (frac * WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:>5.1}/{:.0} s  {} requests: {} allowed, {} stopped, {} errors",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        elapsed.as_secs_f64().min(duration.as_secs_f64() + 99.0),
        duration.as_secs_f64(),
        totals.requests.load(Ordering::Relaxed),
        totals.allowed.load(Ordering::Relaxed),
        totals.stopped.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    )
}

/// With `bind`, clients connect from 127.x.y.z: the target must be on loopback.
fn check_loopback(target: &Target) -> Result<(), String> {
    let addrs: Vec<IpAddr> = target
        .authority
        .to_socket_addrs()
        .or_else(|_| format!("{}:80", target.authority).to_socket_addrs())
        .map_err(|e| format!("cannot resolve {}: {e}", target.authority))?
        .map(|a| a.ip())
        .collect();
    if addrs.iter().any(|ip| ip.is_ipv4() && ip.is_loopback()) {
        Ok(())
    } else {
        Err(format!(
            "{} is not an IPv4 loopback address ({addrs:?}): with --identity bind the clients connect \
             from 127.x.y.z addresses; use --identity xff for other targets",
            target.authority
        ))
    }
}

fn wait_ready(target: &Target, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let probe_ip: IpAddr = match target.identity {
        Identity::Bind => IpAddr::from([127, 0, 0, 1]),
        Identity::Xff => IpAddr::from([198, 18, 255, 254]),
    };
    let client = Client::new(target, probe_ip, 1);
    let req = Request {
        method: "GET",
        path: "/",
        headers: &[("user-agent", "palisade-sim (readiness probe)")],
        body: None,
    };
    let mut last = String::new();
    loop {
        let resp = client.send(&req);
        if resp.status == Some(200) {
            return Ok(());
        }
        last = resp
            .error
            .or(resp.status.map(|s| format!("status {s}")))
            .unwrap_or(last);
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not ready after {:.0} s: {last}",
                target.base,
                limit.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Options>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options_parse() {
        let o = args(&[
            "--target",
            "http://127.0.0.1:9",
            "--duration=3",
            "--seed",
            "7",
            "--identity",
            "xff",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.target.as_str(), o.duration, o.seed, o.identity),
            ("http://127.0.0.1:9", 3.0, 7, Identity::Xff)
        );
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&["--duration", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--json"]).is_err());
    }

    #[test]
    fn every_class_has_its_own_address_block_and_a_defense_if_it_attacks() {
        let all = classes::all();
        let mut blocks: Vec<u8> = all.iter().map(|c| c.block).collect();
        blocks.sort();
        blocks.dedup();
        assert_eq!(blocks.len(), all.len());
        for c in &all {
            assert!(c.threads >= 1, "{}", c.name);
            assert_eq!(
                c.kind == report::Kind::Attack,
                !c.stopped_by.is_empty(),
                "{}",
                c.name
            );
        }
    }
}
