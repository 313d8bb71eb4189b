//! The one table `make bench` prints, the targets it is judged against, and the JSON copy.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cold::ColdRuns;
use crate::counts::OperationCount;
use crate::machine::Machine;
use crate::stats::ratio;
use crate::throughput::ThroughputRun;
use crate::warm::Overhead;

/// The goal for cold init (median), as a ratio to hello-world's.
pub const TARGET_INIT_RATIO: f64 = 1.3;
/// Issue 17's acceptance: median cold init at most 2× hello-world's, its p90 at most 2.5×
/// hello-world's p90.
pub const ACCEPT_INIT_RATIO: f64 = 2.0;
pub const ACCEPT_INIT_P90_RATIO: f64 = 2.5;
pub const TARGET_BOOTSTRAP_BYTES: u64 = 8_000_000;
pub const TARGET_RSS_KIB: f64 = 30_000_000.0 / 1_024.0;
pub const TARGET_OVERHEAD_MS: f64 = 1.0;
/// keap-proxy's cold init against contact-upsert's (issue 23): the goal, and beyond the limit a
/// failure (reported: timings are never enforced on these noisy machines).
pub const TARGET_PROXY_INIT_RATIO: f64 = 1.1;
pub const ACCEPT_PROXY_INIT_RATIO: f64 = 1.3;
pub const TARGET_THROUGHPUT_RATIO: f64 = 1.2;
/// keap-hooks (issue 25): a warm answer's p99, `PutEvents` included, and its cold init against
/// contact-upsert's (medians of at least 20 interleaved runs).
pub const TARGET_HOOKS_ANSWER_P99_MS: f64 = 1_000.0;
pub const TARGET_HOOKS_INIT_RATIO: f64 = 1.1;

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
    /// For a missed target: by how much, in its unit and as a share of the target.
    pub missed_by: Option<String>,
}

impl Target {
    /// `measured ≤ limit`, both in `unit` (`"×"`, `" MB"`, `" ms"`), printed with `decimals`.
    fn at_most(what: String, limit: f64, measured: f64, unit: &str, decimals: usize) -> Self {
        let met = measured <= limit;
        Self {
            what,
            target: format!("≤ {limit:.decimals$}{unit}"),
            measured: format!("{measured:.decimals$}{unit}"),
            met,
            missed_by: (!met).then(|| {
                format!(
                    "+{:.decimals$}{unit} ({:.0} % over)",
                    measured - limit,
                    (measured / limit - 1.0) * 100.0
                )
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub mode: &'static str,
    pub cold_rounds: usize,
    pub cold: Vec<ColdRuns>,
    pub operations: Vec<OperationCount>,
    pub overhead: Overhead,
    pub proxy_overhead: Overhead,
    /// access-token warm: no Keap request, so its invocation time is its latency.
    pub access_token_latency: Overhead,
    /// keap-hooks warm: no Keap request, so its invocation time is the answer Keap waits for.
    pub hooks_answer: Overhead,
    pub throughput: Vec<ThroughputRun>,
    pub targets: Vec<Target>,
    pub floor_violations: Vec<String>,
}

impl Report {
    pub fn hello(&self) -> Option<&ColdRuns> {
        self.cold
            .iter()
            .find(|c| c.function == crate::binaries::HELLO)
    }

    pub fn evaluate(&mut self) {
        let mut targets = Vec::new();
        let hello_init = self.hello().map_or(f64::NAN, |h| h.init().median);
        let hello_p90 = self.hello().map_or(f64::NAN, |h| h.init().p90);
        for runs in self
            .cold
            .iter()
            .filter(|c| c.function != crate::binaries::HELLO)
        {
            targets.push(Target::at_most(
                format!("{} cold init, ratio to hello-world (goal)", runs.function),
                TARGET_INIT_RATIO,
                ratio(runs.init().median, hello_init),
                "×",
                2,
            ));
            targets.push(Target::at_most(
                format!("{} cold init, ratio to hello-world", runs.function),
                ACCEPT_INIT_RATIO,
                ratio(runs.init().median, hello_init),
                "×",
                2,
            ));
            targets.push(Target::at_most(
                format!(
                    "{} cold init p90, ratio to hello-world's p90",
                    runs.function
                ),
                ACCEPT_INIT_P90_RATIO,
                ratio(runs.init().p90, hello_p90),
                "×",
                2,
            ));
            targets.push(Target::at_most(
                format!("{} bootstrap (stripped)", runs.function),
                TARGET_BOOTSTRAP_BYTES as f64 / 1e6,
                runs.bootstrap_bytes as f64 / 1e6,
                " MB",
                2,
            ));
            targets.push(Target::at_most(
                format!("{} peak RSS, init + 1 invocation", runs.function),
                TARGET_RSS_KIB * 1_024.0 / 1e6,
                runs.peak_rss().median * 1_024.0 / 1e6,
                " MB",
                1,
            ));
        }
        let mut overhead = Target::at_most(
            "warm upsert overhead (median of invocation − Keap handling)".to_owned(),
            TARGET_OVERHEAD_MS,
            self.overhead.overhead_ms.median,
            " ms",
            3,
        );
        overhead.measured = format!(
            "{} ({:.3} ms net of the hello-world round trip)",
            overhead.measured, self.overhead.net_overhead_ms
        );
        targets.push(overhead);
        let mut proxy_overhead = Target::at_most(
            "warm proxy overhead (median of invocation − Keap handling)".to_owned(),
            TARGET_OVERHEAD_MS,
            self.proxy_overhead.overhead_ms.median,
            " ms",
            3,
        );
        proxy_overhead.measured = format!(
            "{} ({:.3} ms net of the hello-world round trip)",
            proxy_overhead.measured, self.proxy_overhead.net_overhead_ms
        );
        targets.push(proxy_overhead);
        let init_of = |function: &str| {
            self.cold
                .iter()
                .find(|c| c.function == function)
                .map_or(f64::NAN, |c| c.init().median)
        };
        let proxy_to_upsert = ratio(
            init_of(crate::binaries::PROXY),
            init_of(crate::binaries::UPSERT),
        );
        for (label, limit) in [
            ("(goal)", TARGET_PROXY_INIT_RATIO),
            ("(fails above)", ACCEPT_PROXY_INIT_RATIO),
        ] {
            targets.push(Target::at_most(
                format!("keap-proxy cold init, ratio to contact-upsert's {label}"),
                limit,
                proxy_to_upsert,
                "×",
                2,
            ));
        }
        targets.push(Target::at_most(
            "keap-hooks cold init, ratio to contact-upsert's (goal)".to_owned(),
            TARGET_HOOKS_INIT_RATIO,
            ratio(
                init_of(crate::binaries::HOOKS),
                init_of(crate::binaries::UPSERT),
            ),
            "×",
            2,
        ));
        let answer = &self.hooks_answer.upsert_ms;
        let mut hooks_answer = Target::at_most(
            "keap-hooks warm answer p99, PutEvents included".to_owned(),
            TARGET_HOOKS_ANSWER_P99_MS,
            answer.p99,
            " ms",
            2,
        );
        hooks_answer.measured = format!(
            "{} (p50 {:.2} ms, max {:.2} ms)",
            hooks_answer.measured, answer.median, answer.max
        );
        targets.push(hooks_answer);
        for run in &self.throughput {
            let mut target = Target::at_most(
                format!(
                    "refresher, {} due connections, ratio to ideal",
                    run.connections
                ),
                TARGET_THROUGHPUT_RATIO,
                run.ratio_to_ideal,
                "×",
                2,
            );
            target.measured = format!(
                "{} ({:.2}× max(ideal, emulator alone))",
                target.measured, run.ratio_to_bound
            );
            targets.push(target);
        }
        self.targets = targets;
        self.floor_violations = self
            .operations
            .iter()
            .flat_map(OperationCount::violations)
            .collect();
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "keapalive bench ({}) — {} — {} cores, {} — Linux {} — {} build",
            self.mode, m.date_utc, m.cores, m.cpu_model, m.kernel, m.profile
        );
        self.cold_table(&mut out);
        self.operations_table(&mut out);
        self.overhead_table(&mut out);
        self.throughput_table(&mut out);
        self.targets_table(&mut out);
        out
    }

    fn cold_table(&self, out: &mut String) {
        let hello = self.hello();
        let hello_init = hello.map_or(f64::NAN, |h| h.init().median);
        let hello_first = hello.map_or(f64::NAN, |h| h.first_invoke().median);
        let _ = writeln!(
            out,
            "\n1+2. Cold start and memory — {} runs each, interleaved with hello-world, medians \
             (p10–p90); init = process start → first GET /runtime/invocation/next",
            self.cold_rounds
        );
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>15} {:>7} {:>12} {:>17} {:>9} {:>10}  first invocation",
            "function",
            "init ms",
            "(p10–p90)",
            "×hello",
            "1st call ms",
            "(p10–p90)",
            "RSS MB",
            "bootstrap"
        );
        for runs in &self.cold {
            let init = runs.init();
            let first = runs.first_invoke();
            let _ = writeln!(
                out,
                "{:<16} {:>8.2} {:>15} {:>7} {:>12.2} {:>17} {:>9.1} {:>10}  {}",
                runs.function,
                init.median,
                format!("{:.2}–{:.2}", init.p10, init.p90),
                times(ratio(init.median, hello_init)),
                first.median,
                format!("{:.2}–{:.2}", first.p10, first.p90),
                runs.peak_rss().median * 1_024.0 / 1e6,
                mb(runs.bootstrap_bytes as f64),
                runs.first_invocation
            );
        }
        let _ = writeln!(
            out,
            "(first call ×hello: {})",
            self.cold
                .iter()
                .filter(|c| Some(c.function) != hello.map(|h| h.function))
                .map(|c| format!(
                    "{} {}",
                    c.function,
                    times(ratio(c.first_invoke().median, hello_first))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.cold_totals_table(out);
        self.phases_table(out);
    }

    /// Init + first invocation per run, and the init p90 ratio, against hello-world's.
    fn cold_totals_table(&self, out: &mut String) {
        let hello = self.hello();
        let hello_total = hello.map_or(f64::NAN, |h| h.init_plus_first().median);
        let hello_p90 = hello.map_or(f64::NAN, |h| h.init().p90);
        let _ = writeln!(
            out,
            "\nCold request — init + first invocation per run, medians (p10–p90), and init's p90 \
             against hello-world's p90"
        );
        let _ = writeln!(
            out,
            "{:<16} {:>13} {:>17} {:>7} {:>9} {:>10}",
            "function", "init+1st ms", "(p10–p90)", "×hello", "init p90", "×hello p90"
        );
        for runs in &self.cold {
            let total = runs.init_plus_first();
            let init = runs.init();
            let _ = writeln!(
                out,
                "{:<16} {:>13.2} {:>17} {:>7} {:>9.2} {:>10}",
                runs.function,
                total.median,
                format!("{:.2}–{:.2}", total.p10, total.p90),
                times(ratio(total.median, hello_total)),
                init.p90,
                times(ratio(init.p90, hello_p90)),
            );
        }
    }

    /// Where init goes (the functions' own timings, `KEAPALIVE_INIT_TIMINGS`), and how far
    /// each function is from the 1.3× goal.
    fn phases_table(&self, out: &mut String) {
        let hello_init = self.hello().map_or(f64::NAN, |h| h.init().median);
        let _ = writeln!(
            out,
            "\nInit phases — medians in ms, as each function times them; other = init − the \
             phases (exec and page-in of the binary, tokio, logging, configuration, runtime client)"
        );
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>10} {:>11} {:>8} {:>8} {:>12} {:>12}",
            "function",
            "init",
            "TLS roots",
            "AWS config",
            "clients",
            "other",
            "hello init",
            "over 1.3×"
        );
        for runs in &self.cold {
            let Some(phases) = runs.phases() else {
                continue;
            };
            let init = runs.init().median;
            let _ = writeln!(
                out,
                "{:<16} {:>8.2} {:>10.2} {:>11.2} {:>8.2} {:>8.2} {:>12.2} {:>+12.2}",
                runs.function,
                init,
                phases.tls_roots_ms,
                phases.aws_config_ms,
                phases.clients_ms,
                phases.other_ms,
                hello_init,
                init - TARGET_INIT_RATIO * hello_init,
            );
        }
    }

    fn operations_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n3. Requests per operation — Keap counted at the sandbox, AWS at the emulator \
             (scoped to the function's table, secret and bus); floor K=Keap R/W=DynamoDB \
             reads/writes S=Secrets Manager E=EventBridge PutEvents"
        );
        let _ = writeln!(
            out,
            "{:<38} {:>5} {:<34} {:>3} {:>5} {:<26} {:<4} {:>7}  notes",
            "operation", "Keap", "DynamoDB", "SM", "EB", "floor", "ok", "samples"
        );
        for op in &self.operations {
            let ok = if op.violations().is_empty() {
                "ok"
            } else {
                "OVER"
            };
            let _ = writeln!(
                out,
                "{:<38} {:>5} {:<34} {:>3} {:>5} {:<26} {:<4} {:>7}  {}",
                op.operation,
                op.measured.keap,
                op.measured.dynamodb_summary(),
                op.measured.secrets,
                op.measured.put_events,
                op.floor.describe(),
                ok,
                op.samples,
                op.note
            );
        }
    }

    fn overhead_table(&self, out: &mut String) {
        self.one_overhead_table(out, "4.", "upsert", "PUT", &self.overhead);
        self.one_overhead_table(out, "4b.", "proxy", "GET", &self.proxy_overhead);
        self.one_overhead_table(
            out,
            "4c.",
            "access-token",
            "(none: a cached token)",
            &self.access_token_latency,
        );
        self.hooks_answer_table(out);
    }

    /// keap-hooks' answer has a tail target, so its table shows the tail.
    fn hooks_answer_table(&self, out: &mut String) {
        let o = &self.hooks_answer;
        let _ = writeln!(
            out,
            "\n4d. Warm keap-hooks answer — {} warm deliveries (contact.add, 3 objects) \
             interleaved with {} hello-world invocations through the runtime API host, in ms; \
             each a consistent GetItem and a PutEvents against moto (a consumer rule routes it to \
             an SQS queue, emptied between deliveries), no Keap request",
            o.invocations, o.invocations
        );
        let _ = writeln!(
            out,
            "{:<48} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "", "p10", "p50", "p90", "p99", "max"
        );
        for (label, s) in [
            (
                "keap-hooks answer (host queues → host gets it)",
                &o.upsert_ms,
            ),
            (
                "hello-world invocation (runtime API round trip)",
                &o.hello_ms,
            ),
        ] {
            let _ = writeln!(
                out,
                "{label:<48} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                s.p10, s.median, s.p90, s.p99, s.max
            );
        }
    }

    fn one_overhead_table(
        &self,
        out: &mut String,
        number: &str,
        what: &str,
        keap_call: &str,
        o: &Overhead,
    ) {
        let _ = writeln!(
            out,
            "\n{number} Warm {what} overhead — {} warm {what} invocations interleaved with {} \
             hello-world invocations through the runtime API host, medians (p10–p90) in ms; the \
             container's Keap limiter at {}/s and invocations started ≥ 1.5 ms apart, so none \
             waits for its Keap slot",
            o.invocations, o.invocations, o.keap_rate_per_sec
        );
        let row = |out: &mut String, label: &str, s: &crate::stats::Summary| {
            let _ = writeln!(
                out,
                "{label:<58} {:>8.3}  ({:.3}–{:.3})",
                s.median, s.p10, s.p90
            );
        };
        row(
            out,
            &format!("{what} invocation (host queues event → host gets answer)"),
            &o.upsert_ms,
        );
        row(
            out,
            &format!("  Keap sandbox's own handling of the {keap_call}"),
            &o.keap_handling_ms,
        );
        row(
            out,
            "  overhead = invocation − Keap handling",
            &o.overhead_ms,
        );
        row(
            out,
            "hello-world invocation (runtime API round trip)",
            &o.hello_ms,
        );
        let _ = writeln!(
            out,
            "{:<58} {:>8.3}  (includes: request parse + validation, cached token, rate limiter, \
             Keap request over loopback HTTP/1.1 and response parse, answer encoding, logging)",
            "net overhead = median overhead − median hello", o.net_overhead_ms
        );
    }

    fn throughput_table(&self, out: &mut String) {
        let Some(first) = self.throughput.first() else {
            return;
        };
        let s = first.settings;
        let _ = writeln!(
            out,
            "\n5. Refresher throughput — one token-refresher invocation, L={} concurrent, R={}/s, \
             Keap token latency {} ms, unserialized emulator; ideal = max(N×latency/L, N/R)",
            s.concurrency, s.rate_per_sec, s.keap_latency_ms
        );
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14} {:>8} {:>8}  dominated by",
            "N",
            "wall s",
            "N·lat/L",
            "N/R",
            "ideal s",
            "×ideal",
            "emulator alone",
            "bound s",
            "×bound"
        );
        for run in &self.throughput {
            let dominant = if run
                .emulator_alone_s
                .is_some_and(|alone| alone > run.ideal_s)
            {
                "the emulator (moto), not Keap or the refresher"
            } else if run.rate_bound_s >= run.latency_bound_s {
                "the rate limit R"
            } else {
                "Keap's latency"
            };
            let _ = writeln!(
                out,
                "{:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>14} {:>8.2} {:>8.2}  {}",
                run.connections,
                run.wall_s,
                run.latency_bound_s,
                run.rate_bound_s,
                run.ideal_s,
                run.ratio_to_ideal,
                run.emulator_alone_s
                    .map_or_else(|| "—".to_owned(), |alone| format!("{alone:.2}")),
                run.bound_s,
                run.ratio_to_bound,
                dominant
            );
        }
        let _ = writeln!(
            out,
            "(emulator alone = the same scan + lease + commit requests through the token store at \
             concurrency L with no Keap call, timed only for a run that misses its target; the \
             Keap limiter spaces requests 5 % wider than 1/R, so 1.05× is the floor)"
        );
    }

    fn targets_table(&self, out: &mut String) {
        let _ = writeln!(out, "\nTargets");
        for target in &self.targets {
            let _ = writeln!(
                out,
                "{:<4} {:<58} {:<10} measured {}{}",
                if target.met { "met" } else { "MISS" },
                target.what,
                target.target,
                target.measured,
                target
                    .missed_by
                    .as_ref()
                    .map_or_else(String::new, |by| format!(" — missed by {by}"))
            );
        }
        if self.floor_violations.is_empty() {
            let _ = writeln!(out, "\nRequest floors: all kept.");
        } else {
            let _ = writeln!(out, "\nREQUEST FLOORS EXCEEDED:");
            for violation in &self.floor_violations {
                let _ = writeln!(out, "  {violation}");
            }
        }
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

fn times(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}×")
    } else {
        "n/a".to_owned()
    }
}
