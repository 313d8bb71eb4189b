//! One function process behind its own local Lambda Runtime API: a Lambda container.

use std::path::Path;
use std::time::{Duration, Instant};

use keapalive::wiring::InitTimings;
use keapalive_tests::runtime_api::{FunctionProcess, RuntimeApi, spawn_function};
use serde_json::Value;

const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The deadline an ordinary invocation gets (Lambda's `Lambda-Runtime-Deadline-Ms`).
pub const INVOKE_DEADLINE: Duration = Duration::from_secs(60);

pub struct Container {
    name: String,
    runtime: RuntimeApi,
    process: FunctionProcess,
    /// Process start to the first `GET /runtime/invocation/next`.
    pub init: Duration,
}

impl Container {
    /// Starts `binary` and waits until it asks for its first event.
    pub async fn start(binary: &Path, env: &[(String, String)]) -> Result<Self, String> {
        let name = binary.file_name().map_or_else(
            || "function".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let runtime = RuntimeApi::start_named(&name).await;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = spawn_function(binary, &env, &runtime);
        let Some(init) = runtime.wait_until_ready(INIT_TIMEOUT).await else {
            return Err(format!(
                "{name} did not finish init (init error: {:?}); its output:\n{}",
                runtime.init_error(),
                tail(&process.output())
            ));
        };
        Ok(Self {
            name,
            runtime,
            process,
            init,
        })
    }

    /// One invocation, timed from queueing the event to receiving the answer.
    pub async fn invoke(
        &self,
        event: Value,
        deadline: Duration,
    ) -> Result<(Value, Duration), String> {
        let started = Instant::now();
        let answer = self.runtime.invoke(event, deadline).await;
        let took = started.elapsed();
        answer.map(|value| (value, took)).map_err(|e| {
            format!(
                "{} answered with an error: {e}; its output:\n{}",
                self.name,
                tail(&self.process.output())
            )
        })
    }

    /// `VmHWM`: the peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64, String> {
        let pid = self
            .process
            .child
            .id()
            .ok_or_else(|| format!("{} has exited", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))
    }

    /// The init phases the function reported (`KEAPALIVE_INIT_TIMINGS`), if it did.
    pub fn init_timings(&self) -> Option<InitTimings> {
        self.process
            .output()
            .lines()
            .find_map(InitTimings::from_line)
    }

    pub fn output_tail(&self) -> String {
        tail(&self.process.output())
    }

    pub async fn stop(mut self) {
        self.process.kill().await;
    }
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
