//! `keapalive-bench --quick`, smaller still (debug build, a few seconds plus two moto starts):
//! the table prints and no operation costs more requests than its floor. No timing is
//! asserted: timings belong to `make bench`.

use std::process::Command;

use keapalive_tests::runtime_api::binary_path;

#[test]
fn quick_bench_prints_the_table_and_keeps_every_request_floor() {
    // The bench finds the functions next to itself; make sure they are built and current.
    for function in [
        "token-refresher",
        "contact-upsert",
        "oauth-callback",
        "keap-proxy",
        "access-token",
        "keap-hooks",
    ] {
        binary_path(function);
    }
    let json =
        std::env::temp_dir().join(format!("keapalive-bench-quick-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_keapalive-bench"))
        .args([
            "--quick",
            "--rounds",
            "1",
            "--warm",
            "20",
            "--connections",
            "20",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    for heading in [
        "Cold start and memory",
        "init + first invocation",
        "Init phases",
        "Requests per operation",
        "Warm upsert overhead",
        "Warm proxy overhead",
        "Warm access-token overhead",
        "keap-proxy cold init, ratio to contact-upsert's",
        "Warm keap-hooks answer",
        "keap-hooks cold init, ratio to contact-upsert's",
        "keap-hooks warm answer p99, PutEvents included",
        "Refresher throughput",
        "Request floors: all kept.",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    for function in [
        "hello-lambda",
        "token-refresher",
        "contact-upsert",
        "oauth-callback",
        "keap-proxy",
        "access-token",
        "keap-hooks",
    ] {
        assert!(
            stdout.contains(function),
            "no row for {function} in:\n{stdout}"
        );
    }

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON was written"))
            .expect("the results are JSON");
    let _ = std::fs::remove_file(&json);
    assert_eq!(results["floor_violations"], serde_json::json!([]));
    // Every function reported its init phases (KEAPALIVE_INIT_TIMINGS) on every measured run.
    for cold in results["cold"].as_array().expect("cold runs") {
        let phases = cold["init_phases"].as_array().expect("init_phases");
        if cold["function"] == "hello-lambda" {
            assert!(phases.is_empty());
        } else {
            assert_eq!(
                phases.len(),
                cold["init_ms"].as_array().map_or(0, Vec::len),
                "{}",
                cold["function"]
            );
            assert!(phases.iter().all(|p| p["tls_roots_us"].as_u64() > Some(0)));
        }
    }
    let operations = results["operations"].as_array().expect("operations");
    for expected in [
        "cold upsert, no tags",
        "warm upsert, no tags",
        "warm upsert, 2 tags (ids cached)",
        "one refresh, cold container",
        "one refresh, warm container",
        "callback, cold container",
        "callback, warm container",
        "scheduled run, 20 due",
    ] {
        let op = operations
            .iter()
            .find(|op| op["operation"] == expected)
            .unwrap_or_else(|| panic!("no {expected:?} in {operations:?}"));
        // Each operation really happened: at least one Keap request was counted.
        assert!(op["measured"]["keap"].as_u64() >= Some(1), "{op}");
    }
    let warm = operations
        .iter()
        .find(|op| op["operation"] == "warm upsert, no tags")
        .unwrap();
    assert_eq!(warm["measured"]["keap"], 1, "{warm}");
    assert_eq!(
        warm["measured"]["dynamodb"],
        serde_json::json!({}),
        "{warm}"
    );
    assert_eq!(warm["measured"]["secrets"], 0, "{warm}");

    // keap-hooks: no Keap request; per delivery one consistent GetItem and one PutEvents (the
    // warm loop's row holds totals over its 20 deliveries).
    for (expected, deliveries) in [("cold hook delivery", 1), ("warm hook delivery", 20)] {
        let op = operations
            .iter()
            .find(|op| op["operation"] == expected)
            .unwrap_or_else(|| panic!("no {expected:?} in {operations:?}"));
        assert_eq!(op["measured"]["keap"], 0, "{op}");
        assert_eq!(
            op["measured"]["dynamodb"],
            serde_json::json!({ "GetItem": deliveries }),
            "{op}"
        );
        assert_eq!(op["measured"]["put_events"], deliveries, "{op}");
        assert_eq!(op["measured"]["secrets"], 0, "{op}");
    }
    assert_eq!(results["hooks_answer"]["invocations"], 20);
}
