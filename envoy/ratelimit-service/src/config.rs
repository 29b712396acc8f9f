//! Command-line flags and their environment variables.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub const USAGE: &str = "\
usage: palisade-ratelimit [options]

Envoy rate-limit service (envoy.service.ratelimit.v3) over Limitador and Redis,
for palisade's global mode. Options (each also read from its environment
variable; a flag wins over the variable):

  --listen ADDR          gRPC (h2c) address          PALISADE_RLS_LISTEN         [0.0.0.0:8081]
  --health-listen ADDR   HTTP /healthz and /readyz   PALISADE_RLS_HEALTH_LISTEN  [0.0.0.0:8080]
  --redis-url URL        redis://[:password@]host[:port][/db] or redis+unix:///path
                                                     PALISADE_RLS_REDIS_URL      [redis://127.0.0.1:6379]
  --redis-timeout TIME   per-call Redis deadline, e.g. 1s or 250ms (10ms to 60s)
                                                     PALISADE_RLS_REDIS_TIMEOUT  [1s]
  --help, --version
";

/// The service's settings.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub health_listen: SocketAddr,
    pub redis: ConnectionInfo,
    pub redis_timeout: Duration,
    /// How often Limitador's ever-growing lists of counters are deleted
    /// (`service::State::sweep`); no flag, the tests shorten it.
    pub sweep_interval: Duration,
}

/// The default `sweep_interval`.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

impl Config {
    /// Where Redis is, without credentials: for log lines.
    pub fn redis_display(&self) -> String {
        redis_display(&self.redis)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("health_listen", &self.health_listen)
            .field("redis", &self.redis_display())
            .field("redis_timeout", &self.redis_timeout)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// A bad flag or value; the message is printed as is (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

struct Setting {
    flag: &'static str,
    env: &'static str,
    default: &'static str,
}

const LISTEN: Setting = Setting {
    flag: "--listen",
    env: "PALISADE_RLS_LISTEN",
    default: "0.0.0.0:8081",
};
const HEALTH_LISTEN: Setting = Setting {
    flag: "--health-listen",
    env: "PALISADE_RLS_HEALTH_LISTEN",
    default: "0.0.0.0:8080",
};
const REDIS_URL: Setting = Setting {
    flag: "--redis-url",
    env: "PALISADE_RLS_REDIS_URL",
    default: "redis://127.0.0.1:6379",
};
const REDIS_TIMEOUT: Setting = Setting {
    flag: "--redis-timeout",
    env: "PALISADE_RLS_REDIS_TIMEOUT",
    default: "1s",
};
const SETTINGS: [&Setting; 4] = [&LISTEN, &HEALTH_LISTEN, &REDIS_URL, &REDIS_TIMEOUT];

/// Reads the flags (`--flag value` or `--flag=value`), then the environment
/// (`env` looks a variable up) for the flags not given.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut given: [Option<String>; 4] = Default::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(index) = SETTINGS.iter().position(|s| s.flag == flag) else {
            let shown = if flag.starts_with('-') {
                flag
            } else {
                "an argument"
            };
            return Err(ConfigError(format!(
                "unknown option {shown:?} (see --help)"
            )));
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| ConfigError(format!("{flag} needs a value")))?,
        };
        if given[index].replace(value).is_some() {
            return Err(ConfigError(format!("{flag} given twice")));
        }
    }
    let [listen, health_listen, redis_url, redis_timeout] = given;
    let pick = |value: Option<String>, setting: &Setting| -> (String, String) {
        match value {
            Some(value) => (value, setting.flag.to_owned()),
            None => match env(setting.env) {
                Some(value) => (value, setting.env.to_owned()),
                None => (setting.default.to_owned(), setting.flag.to_owned()),
            },
        }
    };

    let address = |(value, source): (String, String)| {
        value.parse::<SocketAddr>().map_err(|_| {
            ConfigError(format!(
                "{source}: {value:?} is not an address such as 0.0.0.0:8081 or [::]:8081"
            ))
        })
    };
    let listen = address(pick(listen, &LISTEN))?;
    let health_listen = address(pick(health_listen, &HEALTH_LISTEN))?;
    if listen == health_listen {
        return Err(ConfigError(format!(
            "--listen and --health-listen are both {listen}"
        )));
    }
    let (url, source) = pick(redis_url, &REDIS_URL);
    let redis = redis_url_info(&url).map_err(|why| ConfigError(format!("{source}: {why}")))?;
    let (timeout, source) = pick(redis_timeout, &REDIS_TIMEOUT);
    let redis_timeout = parse_duration(&timeout)
        .filter(|d| (Duration::from_millis(10)..=Duration::from_secs(60)).contains(d))
        .ok_or_else(|| {
            ConfigError(format!(
                "{source}: {timeout:?} is not a duration from 10ms to 60s (such as 1s or 250ms)"
            ))
        })?;
    Ok(Command::Run(Config {
        listen,
        health_listen,
        redis,
        redis_timeout,
        sweep_interval: SWEEP_INTERVAL,
    }))
}

/// Parses a Redis URL. The messages never contain the URL itself, which may
/// hold a password.
fn redis_url_info(url: &str) -> Result<ConnectionInfo, String> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "redis+unix" | "unix") => {}
        Some("rediss") => {
            return Err("TLS to Redis (rediss://) is not supported by this build".into());
        }
        _ => {
            return Err(
                "not a Redis URL (redis://[:password@]host[:port][/db] or redis+unix:///path)"
                    .into(),
            )
        }
    }
    url.into_connection_info()
        .map_err(|_| "not a valid Redis URL (redis://[:password@]host[:port][/db])".into())
}

/// `<digits>s` or `<digits>ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (digits, millis) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, true)
    } else {
        (text.strip_suffix('s')?, false)
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(if millis {
        Duration::from_millis(n)
    } else {
        Duration::from_secs(n)
    })
}

/// `host:port/db` or the socket path; never the user name or password.
pub fn redis_display(info: &ConnectionInfo) -> String {
    let db = info.redis.db;
    match &info.addr {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        other => format!("{other}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match parse(args.iter().map(|a| (*a).to_owned()), lookup)? {
            Command::Run(config) => Ok(config),
            other => Err(ConfigError(format!("not a run: {other:?}"))),
        }
    }

    fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env) {
            Ok(config) => format!("unexpectedly valid: {config:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn defaults() -> Result<(), ConfigError> {
        let c = run(&[], &[])?;
        assert_eq!(c.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(c.health_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.redis_display(), "redis://127.0.0.1:6379/0");
        assert_eq!(c.redis_timeout, Duration::from_secs(1));
        Ok(())
    }

    #[test]
    fn flags_win_over_the_environment() -> Result<(), ConfigError> {
        let env = [
            ("PALISADE_RLS_LISTEN", "127.0.0.1:9000"),
            ("PALISADE_RLS_HEALTH_LISTEN", "127.0.0.1:9001"),
            ("PALISADE_RLS_REDIS_URL", "redis://redis.internal:6380/2"),
            ("PALISADE_RLS_REDIS_TIMEOUT", "250ms"),
        ];
        let c = run(&[], &env)?;
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.health_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.redis_display(), "redis://redis.internal:6380/2");
        assert_eq!(c.redis_timeout, Duration::from_millis(250));
        let c = run(&["--listen", "[::1]:7000", "--redis-timeout=2s"], &env)?;
        assert_eq!(c.listen.to_string(), "[::1]:7000");
        assert_eq!(c.redis_timeout, Duration::from_secs(2));
        assert_eq!(c.health_listen.to_string(), "127.0.0.1:9001");
        Ok(())
    }

    #[test]
    fn the_password_is_never_shown() -> Result<(), ConfigError> {
        let c = run(&["--redis-url", "redis://user:hunter2@db:6379/1"], &[])?;
        assert_eq!(c.redis_display(), "redis://db:6379/1");
        assert!(!format!("{c:?}").contains("hunter2"));
        let message = fails(&["--redis-url", "rediss://:hunter2@db"], &[]);
        assert!(
            message.contains("rediss://") && !message.contains("hunter2"),
            "{message}"
        );
        let message = fails(&["--redis-url", "http://:hunter2@db"], &[]);
        assert!(!message.contains("hunter2"), "{message}");
        let message = fails(&["--redis-url", "redis://:hunter2@db:notaport"], &[]);
        assert!(
            message.starts_with("--redis-url:") && !message.contains("hunter2"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn bad_flags_are_explained() {
        assert!(fails(&["--listen"], &[]).contains("needs a value"));
        assert!(fails(&["--listen", "8081"], &[]).starts_with("--listen: \"8081\""));
        assert!(fails(&["--bogus"], &[]).contains("unknown option \"--bogus\""));
        assert!(fails(&["stray"], &[]).contains("unknown option"));
        assert!(fails(&["--listen=1.2.3.4:1", "--listen=1.2.3.4:2"], &[]).contains("twice"));
        assert!(fails(&["--redis-timeout", "1"], &[]).starts_with("--redis-timeout"));
        assert!(fails(&["--redis-timeout", "5ms"], &[]).starts_with("--redis-timeout"));
        assert!(fails(&["--redis-timeout", "61s"], &[]).starts_with("--redis-timeout"));
        assert!(fails(&[], &[("PALISADE_RLS_REDIS_TIMEOUT", "x")])
            .starts_with("PALISADE_RLS_REDIS_TIMEOUT"));
        assert!(fails(
            &["--listen", "127.0.0.1:1", "--health-listen", "127.0.0.1:1"],
            &[]
        )
        .contains("both"));
    }

    #[test]
    fn help_and_version() {
        let parse_one = |a: &str| parse([a.to_owned()], |_| None);
        assert!(matches!(parse_one("--help"), Ok(Command::Help)));
        assert!(matches!(parse_one("--version"), Ok(Command::Version)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1m"), None);
    }
}
