//! The built `palisade-ratelimit` binary: its flags, a start while Redis is
//! down, and SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure should stop the test"
)]

mod common;

use common::*;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code as GrpcCode;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-ratelimit");

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn no_env(command: &mut Command) -> &mut Command {
    for name in [
        "PALISADE_RLS_LISTEN",
        "PALISADE_RLS_HEALTH_LISTEN",
        "PALISADE_RLS_REDIS_URL",
        "PALISADE_RLS_REDIS_TIMEOUT",
    ] {
        command.env_remove(name);
    }
    command
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for args in [
        &["--listen", "nowhere"][..],
        &["--bogus"][..],
        &["--redis-timeout", "forever"][..],
        &["--redis-url", "rediss://:hunter2@db:6379"][..],
    ] {
        let out = no_env(&mut Command::new(BIN)).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("palisade-ratelimit: error: "),
            "{stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let out = no_env(&mut Command::new(BIN))
        .env("PALISADE_RLS_LISTEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PALISADE_RLS_LISTEN"));

    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--redis-url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_works_once_it_is_up() {
    let redis_port = free_port();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut service = Service(
        no_env(&mut Command::new(BIN))
            .args(["--listen", &grpc.to_string()])
            .args(["--health-listen", &health.to_string()])
            .args([
                "--redis-url",
                &format!("redis://:hunter2@127.0.0.1:{redis_port}/0"),
            ])
            .args(["--redis-timeout", "300ms"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // Up without Redis: UNAVAILABLE, and unhealthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        if let Ok(c) = envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::connect(format!("http://{grpc}")).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not listen on {grpc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = descriptor("rule.x", &fresh_key("late"), 2, 60);
    let status = call(&mut c, vec![d.clone()]).await.unwrap_err();
    assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}");
    assert_eq!(health_status(health, "/healthz").await, 503);

    let _redis = Redis::start_with(redis_port, Some("hunter2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call(&mut c, vec![d.clone()]).await {
            Ok(r) => {
                assert!(ok(&r), "{r:?}");
                break;
            }
            Err(status) => assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "still UNAVAILABLE 10 s after Redis started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok(&call(&mut c, vec![d.clone()]).await.unwrap()));
    assert!(over(&call(&mut c, vec![d]).await.unwrap()));
    assert_eq!(health_status(health, "/healthz").await, 200);

    // SIGTERM: a clean exit.
    let pid = service.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    service
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains(&format!("gRPC on {grpc}, health on {health}")),
        "{log}"
    );
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(
        log.contains(&format!("redis://127.0.0.1:{redis_port}/0")),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "the password was logged: {log}");
    // Redis down at start: a warning or two, not one per attempt or request.
    let warnings = log.matches("warning").count();
    assert!(warnings <= 2, "{warnings} warnings: {log}");
}
