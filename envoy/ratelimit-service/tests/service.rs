//! The service against a real `redis-server`, driven over gRPC the way
//! Envoy and palisade's filter call it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure should stop the test"
)]

mod common;

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::time::{Duration, Instant};
use tonic::Code as GrpcCode;

const TIMEOUT: Duration = Duration::from_secs(1);

/// `calls` concurrent hits of one descriptor, spread over the clients;
/// returns how many were admitted.
async fn admitted(
    clients: &[envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient<tonic::transport::Channel>],
    calls: usize,
    name: &str,
    key: &str,
    max: u64,
    window: u64,
) -> usize {
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let mut client = clients[i % clients.len()].clone();
        let d = descriptor(name, key, max, window);
        tasks.push(tokio::spawn(
            async move { call(&mut client, vec![d]).await },
        ));
    }
    let mut admitted = 0;
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.statuses.len(), 1);
        if ok(&response) {
            admitted += 1;
        } else {
            assert!(over(&response));
        }
    }
    admitted
}

/// Two service instances sharing one Redis, each reached over two HTTP/2
/// connections.
async fn two_instances(
    redis: &Redis,
) -> (
    Vec<palisade_ratelimit::Handle>,
    Vec<envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient<tonic::transport::Channel>>,
){
    let mut handles = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let handle = service(&redis.url(), TIMEOUT).await;
        wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
        clients.push(client(handle.grpc_addr).await);
        clients.push(client(handle.grpc_addr).await);
        handles.push(handle);
    }
    (handles, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_max_are_admitted_under_concurrency_across_replicas() {
    let redis = Redis::start();
    let (_handles, clients) = two_instances(&redis).await;
    for round in 0..3 {
        let key = fresh_key("round");
        let n = admitted(&clients, 200, "rule.login", &key, 20, 60).await;
        assert_eq!(n, 20, "round {round}: {n} of 200 admitted with max 20");
        // Committed exactly once each: the counter is 20, not more.
        assert_eq!(redis.counter_value(&key), Some(20), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_is_admitted_once() {
    let redis = Redis::start();
    let (_handles, mut clients) = two_instances(&redis).await;
    let nonce = fresh_key("nonce");
    assert_eq!(admitted(&clients, 50, "nonce", &nonce, 1, 300).await, 1);
    let other = call(
        &mut clients[0],
        vec![descriptor("nonce", &fresh_key("nonce"), 1, 300)],
    )
    .await
    .unwrap();
    assert!(ok(&other), "another nonce: {other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_only_counts_nothing_and_reports_the_reset() {
    let redis = Redis::start();
    let handle = service(&redis.url(), TIMEOUT).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let key = fresh_key("ban");
    let ban = descriptor("ban", &key, 1, 5);

    for _ in 0..3 {
        let r = call(&mut c, vec![check_only(ban.clone())]).await.unwrap();
        assert!(ok(&r), "{r:?}");
        assert_eq!(r.statuses[0].limit_remaining, 1);
        let reset = r.statuses[0].duration_until_reset.unwrap();
        assert_eq!(
            (reset.seconds, reset.nanos),
            (0, 0),
            "no counter, nothing to wait for"
        );
    }
    assert_eq!(redis.counter_value(&key).unwrap_or(0), 0);

    let hit = call(&mut c, vec![ban.clone()]).await.unwrap();
    assert!(ok(&hit), "the first hit: {hit:?}");
    assert_eq!(hit.statuses[0].limit_remaining, 0);

    let r = call(&mut c, vec![check_only(ban.clone())]).await.unwrap();
    assert!(over(&r), "{r:?}");
    let reset = r.statuses[0].duration_until_reset.unwrap();
    let reset = Duration::new(reset.seconds as u64, reset.nanos as u32);
    assert!(
        reset > Duration::ZERO && reset <= Duration::from_secs(5),
        "duration_until_reset {reset:?}"
    );
    assert_eq!(
        redis.counter_value(&key),
        Some(1),
        "check-only added nothing"
    );
    assert!(over(&call(&mut c, vec![ban]).await.unwrap()));
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_resets() {
    let redis = Redis::start();
    let handle = service(&redis.url(), TIMEOUT).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let d = descriptor("rule.api", &fresh_key("win"), 2, 1);
    assert!(ok(&call(&mut c, vec![d.clone()]).await.unwrap()));
    assert!(ok(&call(&mut c, vec![d.clone()]).await.unwrap()));
    let refused = call(&mut c, vec![d.clone()]).await.unwrap();
    assert!(over(&refused));
    let reset = refused.statuses[0].duration_until_reset.unwrap();
    let reset = Duration::new(reset.seconds as u64, reset.nanos as u32);
    assert!(reset <= Duration::from_secs(1), "{reset:?}");
    tokio::time::sleep(reset + Duration::from_millis(100)).await;
    let again = call(&mut c, vec![d]).await.unwrap();
    assert!(ok(&again), "after the window: {again:?}");
    assert_eq!(again.statuses[0].limit_remaining, 1);

    // Same name, another window: another limit, another counter.
    let key = fresh_key("win");
    let two = descriptor("rule.api", &key, 1, 2);
    assert!(ok(&call(&mut c, vec![two.clone()]).await.unwrap()));
    assert!(over(&call(&mut c, vec![two.clone()]).await.unwrap()));
    assert!(ok(&call(&mut c, vec![descriptor("rule.api", &key, 1, 3)])
        .await
        .unwrap()));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(ok(&call(&mut c, vec![two]).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_descriptor_is_answered_and_counted_in_order() {
    let redis = Redis::start();
    let handle = service(&redis.url(), TIMEOUT).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let (ka, kb, kc) = (fresh_key("a"), fresh_key("b"), fresh_key("c"));
    let a = descriptor("rule.a", &ka, 5, 60);
    let b = descriptor("rule.b", &kb, 1, 60);
    let cc = descriptor("rule.c", &kc, 3, 60);
    assert!(ok(&call(&mut c, vec![b.clone()]).await.unwrap()));

    let r = call(&mut c, vec![a.clone(), b.clone(), cc.clone()])
        .await
        .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        vec![Code::Ok as i32, Code::OverLimit as i32, Code::Ok as i32]
    );
    let limits: Vec<(u32, i32)> = r
        .statuses
        .iter()
        .map(|s| {
            let l = s.current_limit.clone().unwrap();
            (l.requests_per_unit, l.unit)
        })
        .collect();
    let unknown = Unit::Unknown as i32;
    assert_eq!(limits, vec![(5, unknown), (1, unknown), (3, unknown)]);
    let remaining: Vec<u32> = r.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, vec![4, 0, 2]);

    // The admitted ones took their hit although another was over.
    assert_eq!(redis.counter_value(&ka), Some(1));
    assert_eq!(redis.counter_value(&kb), Some(1));
    assert_eq!(redis.counter_value(&kc), Some(1));

    // The request's hits_addend applies to every descriptor without its own.
    let mut req = request(vec![a.clone(), check_only(cc.clone())]);
    req.hits_addend = 4;
    let r = c.should_rate_limit(req).await.unwrap().into_inner();
    assert!(ok(&r), "{r:?}");
    assert_eq!(redis.counter_value(&ka), Some(5));
    assert_eq!(redis.counter_value(&kc), Some(1));

    // Ten descriptors in one call.
    let many: Vec<_> = (0..10)
        .map(|i| descriptor(&format!("rule.m{i}"), &fresh_key("m"), 10, 60))
        .collect();
    let r = call(&mut c, many).await.unwrap();
    assert!(ok(&r));
    assert_eq!(r.statuses.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_without_the_key() {
    let redis = Redis::start();
    let handle = service(&redis.url(), TIMEOUT).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let key = fresh_key("secret");
    let good = descriptor("rule.x", &key, 5, 60);
    let mut negative = good.clone();
    negative.is_negative_hits = true;

    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (
            request(vec![
                good.clone(),
                entries(&[("palisade", "rule.x"), ("key", &key), ("window", "60")]),
            ]),
            "descriptor 1: entry \"max\" is missing",
        ),
        (
            request(vec![descriptor("rule.x", &key, 0, 60)]),
            "descriptor 0: entry \"max\"",
        ),
        (
            request(vec![descriptor("rule.x", &key, 5, 2_678_401)]),
            "descriptor 0: entry \"window\"",
        ),
        (
            request(vec![entries(&[
                ("palisade", "rule.x"),
                ("key", &key),
                ("max", "5"),
                ("window", "60"),
                ("generic_key", &key),
            ])]),
            "descriptor 0: unknown entry \"generic_key\"",
        ),
        (request(vec![negative]), "descriptor 0: is_negative_hits"),
        (
            RateLimitRequest {
                domain: String::new(),
                ..request(vec![good.clone()])
            },
            "domain",
        ),
    ];
    for (req, expected) in cases {
        let status = c.should_rate_limit(req).await.unwrap_err();
        assert_eq!(status.code(), GrpcCode::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(expected),
            "{:?} does not start with {expected:?}",
            status.message()
        );
        assert!(
            !status.message().contains(&key),
            "the key leaked: {status:?}"
        );
    }
    // The valid descriptor next to an invalid one was not counted.
    assert_eq!(redis.counter_value(&key), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_unavailable_and_coming_back_is_healed() {
    let timeout = Duration::from_millis(300);
    let mut redis = Redis::start();
    let handle = service(&redis.url(), timeout).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let d = descriptor("rule.x", &fresh_key("down"), 100, 60);
    assert!(ok(&call(&mut c, vec![d.clone()]).await.unwrap()));

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let status = call(&mut c, vec![d.clone()]).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}");
        assert!(
            took < timeout + Duration::from_millis(700),
            "UNAVAILABLE after {took:?}"
        );
    }
    assert_eq!(health_status(handle.health_addr, "/healthz").await, 503);
    assert_eq!(health_status(handle.health_addr, "/readyz").await, 503);
    // Down for longer than redis-rs' reconnection attempts last, so that
    // one round of them fails and the next request starts another.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(4) {
        let status = call(&mut c, vec![d.clone()]).await.unwrap_err();
        assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let healed = loop {
        match call(&mut c, vec![d.clone()]).await {
            Ok(r) if ok(&r) => break Instant::now(),
            Ok(r) => panic!("unexpected answer {r:?}"),
            Err(status) => assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "still UNAVAILABLE 10 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "answers again {:?} after Redis came back",
        healed - (deadline - Duration::from_secs(10))
    );
    assert_eq!(health_status(handle.health_addr, "/healthz").await, 200);
    assert_eq!(health_status(handle.health_addr, "/nothing").await, 404);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_distinct_limits_are_refused() {
    let redis = Redis::start();
    let handle = service(&redis.url(), TIMEOUT).await;
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let cap = palisade_ratelimit::service::MAX_LIMITS;
    let limit = |i: usize| check_only(descriptor(&format!("rule.r{i}"), "k", 1, 60));
    let started = Instant::now();
    for first in (0..cap).step_by(64) {
        let batch: Vec<_> = (first..(first + 64).min(cap)).map(limit).collect();
        assert!(ok(&call(&mut c, batch).await.unwrap()));
    }
    // Each call costs the same whatever the number of limits known.
    eprintln!("{cap} limits registered in {:?}", started.elapsed());
    assert!(ok(&call(&mut c, vec![limit(0)]).await.unwrap()));
    let key = fresh_key("capped");
    let status = call(&mut c, vec![descriptor("rule.a", &key, 5, 60), limit(cap)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), GrpcCode::ResourceExhausted, "{status:?}");
    assert_eq!(redis.counter_value(&key), None, "counted although refused");
    // Another domain is no way around the cap.
    let other = RateLimitRequest {
        domain: "other".into(),
        ..request(vec![limit(0)])
    };
    let status = c.should_rate_limit(other).await.unwrap_err();
    assert_eq!(status.code(), GrpcCode::ResourceExhausted, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limitadors_lists_of_counters_are_deleted() {
    let redis = Redis::start();
    let mut config = config(&redis.url(), TIMEOUT);
    config.sweep_interval = Duration::from_millis(300);
    let handle = palisade_ratelimit::start(config).await.unwrap();
    wait_healthy(handle.health_addr, Duration::from_secs(10)).await;
    let mut c = client(handle.grpc_addr).await;
    let lists = "*,counters_of_limit:*";
    let mut keys = Vec::new();
    for (name, max, window) in [("rule.a", 5, 60), ("rule.a", 6, 60), ("ban", 1, 30)] {
        let key = fresh_key("swept");
        assert!(ok(&call(&mut c, vec![descriptor(name, &key, max, window)])
            .await
            .unwrap()));
        keys.push(key);
    }
    // Each limit's list names its counters, and nothing else removes them.
    let found = redis.keys(lists);
    assert!(
        !found.is_empty(),
        "no lists of counters: Limitador changed its keys?"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis.keys(lists).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not deleted: {:?}",
            redis.keys(lists)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The counters themselves are untouched.
    for key in &keys {
        assert_eq!(redis.counter_value(key), Some(1));
    }
    let again = call(&mut c, vec![descriptor("ban", &keys[2], 1, 30)])
        .await
        .unwrap();
    assert!(over(&again));
    handle.shutdown(Duration::from_secs(5)).await;
}
