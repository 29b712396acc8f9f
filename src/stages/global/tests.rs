use super::*;
use crate::core::mode::FailureMode;

fn global() -> Global {
    let raw: RawGlobal = serde_json::from_value(serde_json::json!({
        "cluster": "ratelimit",
        "key_secret": {"base64": "Z2xvYmFsLWtleS1zZWNyZXQtb2YtYXQtbGVhc3QtMzItYnl0ZXM="}
    }))
    .unwrap_or_else(|e| unreachable!("{e}"));
    config::compile(Some(raw), FailureMode::Deny)
        .ok()
        .flatten()
        .unwrap_or_else(|| unreachable!("a valid section refused"))
}

fn answer(overall: i32, statuses: &[(i32, u32, i64, i32)]) -> Vec<u8> {
    proto::RateLimitResponse {
        overall_code: overall,
        statuses: statuses
            .iter()
            .map(
                |&(code, remaining, seconds, nanos)| proto::DescriptorStatus {
                    code,
                    limit_remaining: remaining,
                    duration_until_reset: Some(proto::Duration { seconds, nanos }),
                },
            )
            .collect(),
    }
    .encode_to_vec()
}

#[test]
fn the_request_names_each_descriptor_and_its_limit() {
    let descriptors = [
        Descriptor {
            counted: Counted::Rule(3),
            key: 0xabc,
            max: 20,
            window_s: 60,
            check_only: false,
        },
        Descriptor {
            counted: Counted::Nonce,
            key: u128::MAX,
            max: 1,
            window_s: 330,
            check_only: false,
        },
    ];
    let bytes = encode(&global(), &descriptors, &|i| format!("r{i}"));
    let request = proto::RateLimitRequest::decode(bytes.as_slice()).unwrap_or_default();
    assert_eq!(request.domain, "palisade");
    assert_eq!(request.hits_addend, 1);
    let entries: Vec<Vec<(String, String)>> = request
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect();
    let pairs = |list: [(&str, &str); 4]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        entries,
        [
            pairs([
                ("palisade", "rule.r3"),
                ("key", "00000000000000000000000000000abc"),
                ("max", "20"),
                ("window", "60")
            ]),
            pairs([
                ("palisade", "nonce"),
                ("key", "ffffffffffffffffffffffffffffffff"),
                ("max", "1"),
                ("window", "330")
            ]),
        ]
    );
}

#[test]
fn answers_are_read_per_descriptor_and_checked_against_the_request() {
    let ok = proto::CODE_OK;
    let over = proto::CODE_OVER_LIMIT;
    assert_eq!(
        decode(&answer(over, &[(ok, 4, 10, 0), (over, 0, 59, 500)]), 2),
        Ok(vec![
            Status {
                over: false,
                remaining: 4,
                reset_s: 10
            },
            // Rounded up: a client told to come back early is refused again.
            Status {
                over: true,
                remaining: 0,
                reset_s: 60
            },
        ])
    );
    // An over-limit status always has a wait of at least a second.
    assert_eq!(
        decode(&answer(over, &[(over, 0, 0, 0)]), 1).map(|s| s[0].reset_s),
        Ok(1)
    );
    for (bytes, sent) in [
        (answer(ok, &[(ok, 1, 1, 0)]), 2),   // a status missing
        (answer(ok, &[(over, 0, 1, 0)]), 1), // overall code says otherwise
        (answer(over, &[(ok, 1, 1, 0)]), 1), // overall code says otherwise
        (answer(ok, &[(0, 1, 1, 0)]), 1),    // UNKNOWN code
        (vec![0xff, 0xff, 0xff], 1),         // not protobuf
    ] {
        assert_eq!(decode(&bytes, sent), Err(Failure::Malformed), "{bytes:?}");
    }
}

#[test]
fn the_section_is_checked_where_it_is_written() {
    let error = |json: serde_json::Value| {
        let raw: RawGlobal = serde_json::from_value(json).unwrap_or_else(|e| unreachable!("{e}"));
        match config::compile(Some(raw), FailureMode::Deny) {
            Err(e) => format!("{}: {}", e.path, e.message),
            Ok(_) => String::new(),
        }
    };
    let secret =
        serde_json::json!({"base64": "Z2xvYmFsLWtleS1zZWNyZXQtb2YtYXQtbGVhc3QtMzItYnl0ZXM="});
    let cases = [
        (
            serde_json::json!({"cluster": "", "key_secret": secret}),
            "global.cluster",
        ),
        (
            serde_json::json!({"cluster": "rl", "domain": "a b", "key_secret": secret}),
            "global.domain",
        ),
        (
            serde_json::json!({"cluster": "rl", "timeout": "11s", "key_secret": secret}),
            "global.timeout",
        ),
        (
            serde_json::json!({"cluster": "rl", "key_secret": {"base64": "c2hvcnQ="}}),
            "global.key_secret: must be at least 32 bytes",
        ),
    ];
    for (json, expected) in cases {
        let got = error(json);
        assert!(got.starts_with(expected), "{got}");
        assert!(!got.contains("c2hvcnQ") && !got.contains("short"), "{got}");
    }
    let g = global();
    assert_eq!((g.domain.as_str(), g.timeout_ms), ("palisade", 100));
    assert_eq!(g.failure_mode, FailureMode::Deny);
    // The seed never shows in a debug print.
    assert!(!format!("{g:?}").contains("seed"));
}
