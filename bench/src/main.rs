//! `make bench`: cold start, memory, requests per operation and refresher throughput of the
//! functions, measured side by side in one run through the local Lambda Runtime API host,
//! against the Keap sandbox and the AWS emulator. Prints one table, writes it as JSON, and
//! exits non-zero (naming the operation) when an operation costs more requests than its floor.
//! Timing targets are reported, never enforced: these machines are noisy.

mod binaries;
mod cold;
mod container;
mod counts;
mod events;
mod machine;
mod options;
mod report;
mod stats;
mod throughput;
mod warm;
mod world;

use std::process::ExitCode;

use keapalive_tests::emulator::Emulator;

use crate::options::Options;
use crate::report::Report;
use crate::world::{Subject, World};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&options).await {
        Ok(report) => report,
        Err(message) => {
            eprintln!("bench failed: {message}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.table());
    match serde_json::to_vec_pretty(&report) {
        Ok(json) => match std::fs::write(&options.json, json) {
            Ok(()) => println!("results written to {}", options.json.display()),
            Err(e) => eprintln!("could not write {}: {e}", options.json.display()),
        },
        Err(e) => eprintln!("could not encode the results: {e}"),
    }
    if report.floor_violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bench failed: an operation costs more requests than its floor: {}",
            report.floor_violations.join("; ")
        );
        ExitCode::from(1)
    }
}

async fn run(options: &Options) -> Result<Report, String> {
    let machine = machine::Machine::describe();
    if machine.profile == "debug" && !options.quick {
        eprintln!(
            "warning: a debug build; timings and sizes are not what Lambda runs (use `make bench`)"
        );
    }
    // Fail before any work if a binary is missing.
    for subject in Subject::ALL {
        binaries::locate(subject.binary())?;
    }
    eprintln!("==> starting the Keap sandboxes and the AWS emulator");
    let world = World::new().await?;

    eprintln!(
        "==> cold starts: {} rounds (+{} warm-up) of {} binaries",
        options.rounds,
        options.warmup_rounds,
        Subject::ALL.len()
    );
    let cold = cold::measure(&world, &Subject::ALL, options.rounds, options.warmup_rounds).await?;
    let mut operations = Vec::new();
    for runs in &cold {
        let (operation, floor, note) = match runs.function {
            binaries::UPSERT => (
                "cold upsert, no tags",
                warm::UPSERT_COLD,
                "first invocation: reads the connection once",
            ),
            binaries::REFRESHER => (
                "one refresh, cold container",
                warm::REFRESH_COLD,
                "scheduled run, 1 due: status-index queries (with the tombstone sweep) + lease + commit, secret read",
            ),
            binaries::ACCESS_TOKEN => (
                "cold access-token",
                warm::ACCESS_TOKEN_COLD,
                "first invocation: reads the connection once, no Keap request",
            ),
            binaries::PROXY => (
                "cold proxy GET",
                warm::PROXY_COLD,
                "first invocation: reads the connection once",
            ),
            binaries::CALLBACK => (
                "callback, cold container",
                warm::CALLBACK_COLD,
                "state consume + code exchange + pair write + state retired + projected read-back + secret read",
            ),
            binaries::HOOKS => (
                "cold hook delivery",
                warm::HOOK_DELIVERY,
                "first invocation: consistent read of the hook item + 1 PutEvents, no Keap request",
            ),
            _ => continue,
        };
        operations.push(counts::OperationCount {
            operation: operation.to_owned(),
            measured_through: runs.function.to_owned(),
            samples: runs.runs_counted,
            measured: runs.first_invocation_requests.clone(),
            floor,
            note: format!("{note}; worst of the cold runs"),
        });
    }

    eprintln!("==> warm operations");
    operations.push(warm::warm_refresh(&world).await?);
    operations.push(warm::warm_callback(&world).await?);
    eprintln!(
        "==> warm upsert overhead: {} invocations each of contact-upsert and hello-lambda",
        options.warm_invocations
    );
    let upsert = warm::upsert(&world, options.warm_invocations).await?;
    operations.extend(upsert.operations);
    eprintln!(
        "==> warm proxy overhead: {} invocations each of keap-proxy and hello-lambda",
        options.warm_invocations
    );
    let proxy = warm::proxy(&world, options.warm_invocations).await?;
    operations.extend(proxy.operations);
    eprintln!(
        "==> warm access-token latency: {} invocations each of access-token and hello-lambda",
        options.warm_invocations
    );
    let vending = warm::access_token(&world, options.warm_invocations).await?;
    operations.extend(vending.operations);
    eprintln!(
        "==> warm keap-hooks answer: {} deliveries interleaved with as many hello-lambda invocations",
        options.warm_invocations
    );
    let hooks = warm::hooks(&world, options.warm_invocations).await?;
    operations.extend(hooks.operations);
    // By function (a stable sort keeps cold before warm), for a table that reads top to bottom.
    operations.sort_by_key(|op| function_group(&op.operation));
    drop(world);

    let mut throughput = Vec::new();
    if !options.connections.is_empty() {
        eprintln!("==> starting an unserialized emulator for the throughput runs");
        let emulator = tokio::task::spawn_blocking(Emulator::start_unserialized)
            .await
            .map_err(|e| format!("the unserialized emulator did not start: {e}"))?;
        let settings = throughput::Settings {
            concurrency: options.concurrency,
            rate_per_sec: options.rate_per_sec,
            keap_latency_ms: options.keap_latency_ms,
        };
        for &connections in &options.connections {
            eprintln!("==> refresher throughput: {connections} due connections");
            let (run, count) = throughput::measure(&emulator, connections, settings).await?;
            throughput.push(run);
            operations.push(count);
        }
    }

    let mut report = Report {
        machine,
        mode: if options.quick { "quick" } else { "full" },
        cold_rounds: options.rounds,
        cold,
        operations,
        overhead: upsert.overhead,
        proxy_overhead: proxy.overhead,
        access_token_latency: vending.overhead,
        hooks_answer: hooks.overhead,
        throughput,
        targets: Vec::new(),
        floor_violations: Vec::new(),
    };
    report.evaluate();
    Ok(report)
}

fn function_group(operation: &str) -> u8 {
    if operation.contains("upsert") {
        0
    } else if operation.contains("proxy") || operation.contains("access-token") {
        1
    } else if operation.contains("refresh") {
        2
    } else if operation.contains("hook") {
        4
    } else {
        3
    }
}
