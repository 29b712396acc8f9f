//! Helpers of the integration tests: a throwaway `redis-server` on a free
//! port, the service in-process or as the built binary, a gRPC client and a
//! bare HTTP GET for the health endpoint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "tests: a failure should stop the test"
)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use palisade_ratelimit::Config;
use redis::IntoConnectionInfo;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const DOMAIN: &str = "palisade";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key no other test (or earlier round) uses.
pub fn fresh_key(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}{:x}{n:04x}", nanos & 0xffff_ffff_ffff)
}

/// `redis-server` on 127.0.0.1:`port`, no persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, None)
    }

    /// With `requirepass`.
    pub fn start_with(port: u16, password: Option<&str>) -> Redis {
        let mut redis = Redis {
            port,
            password: password.map(str::to_owned),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the server again (same port) after `stop`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need Redis >= 7.0 on PATH \
                     (Debian: apt-get install redis-server, or `make redis`)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to the clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        // Up, with or without a password: +PONG or -NOAUTH.
        let mut reply = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok()
    }

    /// The names of the keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .unwrap()
    }

    /// A blocking connection, to look at what the service stored.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The committed value of the counter whose key is `key`, if any.
    pub fn counter_value(&self, key: &str) -> Option<u64> {
        let mut con = self.connection();
        let names: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{key}*"))
            .query(&mut con)
            .unwrap();
        let counters: Vec<&String> = names
            .iter()
            .filter(|n| !n.ends_with(",reservations") && n.contains(",counter:"))
            .collect();
        assert!(
            counters.len() <= 1,
            "several counters for one key: {counters:?}"
        );
        let name = counters.first()?;
        let value: Option<u64> = redis::cmd("GET")
            .arg(name.as_str())
            .query(&mut con)
            .unwrap();
        value
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn config(redis_url: &str, timeout: Duration) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: "127.0.0.1:0".parse().unwrap(),
        redis: redis_url.into_connection_info().unwrap(),
        redis_timeout: timeout,
        sweep_interval: palisade_ratelimit::config::SWEEP_INTERVAL,
    }
}

/// The service in this process, on free ports.
pub async fn service(redis_url: &str, timeout: Duration) -> palisade_ratelimit::Handle {
    palisade_ratelimit::start(config(redis_url, timeout))
        .await
        .unwrap()
}

/// Waits until the service has reached Redis (its health check says so).
pub async fn wait_healthy(health: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if health_status(health, "/healthz").await == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not healthy within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn client(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A descriptor of palisade's convention.
pub fn descriptor(name: &str, key: &str, max: u64, window: u64) -> RateLimitDescriptor {
    entries(&[
        ("palisade", name),
        ("key", key),
        ("max", &max.to_string()),
        ("window", &window.to_string()),
    ])
}

pub fn entries(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The same descriptor, asking only whether it is over its limit.
pub fn check_only(mut d: RateLimitDescriptor) -> RateLimitDescriptor {
    d.hits_addend = Some(UInt64Value { value: 0 });
    d
}

pub fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: DOMAIN.into(),
        descriptors,
        hits_addend: 0,
    }
}

pub async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    descriptors: Vec<RateLimitDescriptor>,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .should_rate_limit(request(descriptors))
        .await
        .map(tonic::Response::into_inner)
}

pub fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

pub fn over(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::OverLimit as i32
}

/// The status code of `GET path` on the health listener (0: no answer).
pub async fn health_status(addr: SocketAddr, path: &str) -> u16 {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return 0;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return 0;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    })
    .await
    .unwrap()
}
