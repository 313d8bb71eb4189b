//! Cold starts: each function and the hello-world baseline started fresh, round after round,
//! interleaved (the order rotates every round) so drift on a noisy machine hits all alike.
//! Each run: process start → first `GET /next` (init), then one invocation (its duration,
//! then `VmHWM`), then kill. The first invocation's requests are the "cold" operation counts.
//! The functions run with `KEAPALIVE_INIT_TIMINGS=true` and report their init phases.

use std::path::PathBuf;

use keapalive::wiring::InitTimings;
use serde::Serialize;

use crate::binaries;
use crate::container::{Container, INVOKE_DEADLINE};
use crate::counts::Measured;
use crate::stats::{Summary, ms};
use crate::world::{Subject, World};

#[derive(Debug, Clone, Serialize)]
pub struct ColdRuns {
    pub function: &'static str,
    pub first_invocation: &'static str,
    pub bootstrap_bytes: u64,
    pub init_ms: Vec<f64>,
    pub first_invoke_ms: Vec<f64>,
    /// Per run: init + the first invocation, what a cold request waits for in all.
    pub init_plus_first_ms: Vec<f64>,
    /// Per run, as the function reported them (none for hello-world).
    pub init_phases: Vec<InitTimings>,
    pub peak_rss_kib: Vec<f64>,
    /// The worst first invocation's requests over all runs (warm-up round included).
    #[serde(skip)]
    pub first_invocation_requests: Measured,
    #[serde(skip)]
    pub runs_counted: usize,
}

impl ColdRuns {
    pub fn init(&self) -> Summary {
        Summary::of(&self.init_ms)
    }

    pub fn first_invoke(&self) -> Summary {
        Summary::of(&self.first_invoke_ms)
    }

    pub fn peak_rss(&self) -> Summary {
        Summary::of(&self.peak_rss_kib)
    }

    pub fn init_plus_first(&self) -> Summary {
        Summary::of(&self.init_plus_first_ms)
    }

    /// Medians in ms of the reported phases and of "other" (init minus the phases, per run);
    /// `None` for a binary that reports none.
    pub fn phases(&self) -> Option<PhaseMedians> {
        if self.init_phases.is_empty() {
            return None;
        }
        let of = |f: fn(&InitTimings) -> u64| {
            let samples: Vec<f64> = self
                .init_phases
                .iter()
                .map(|t| f(t) as f64 / 1_000.0)
                .collect();
            Summary::of(&samples).median
        };
        let other: Vec<f64> = self
            .init_ms
            .iter()
            .zip(&self.init_phases)
            .map(|(init, t)| init - t.total_us() as f64 / 1_000.0)
            .collect();
        Some(PhaseMedians {
            tls_roots_ms: of(|t| t.tls_roots_us),
            aws_config_ms: of(|t| t.aws_config_us),
            clients_ms: of(|t| t.clients_us),
            other_ms: Summary::of(&other).median,
        })
    }
}

/// Where a function's init goes, medians over its runs (ms).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PhaseMedians {
    pub tls_roots_ms: f64,
    pub aws_config_ms: f64,
    pub clients_ms: f64,
    /// Exec and loading the binary, tokio, logging, the configuration, the runtime client.
    pub other_ms: f64,
}

/// `rounds` measured rounds after `warmup` discarded ones (page cache, first-touch effects).
pub async fn measure(
    world: &World,
    subjects: &[Subject],
    rounds: usize,
    warmup: usize,
) -> Result<Vec<ColdRuns>, String> {
    let mut results = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    for subject in subjects {
        let path = binaries::locate(subject.binary())?;
        results.push(ColdRuns {
            function: subject.binary(),
            first_invocation: subject.operation(),
            bootstrap_bytes: binaries::size_bytes(&path),
            init_ms: Vec::new(),
            first_invoke_ms: Vec::new(),
            init_plus_first_ms: Vec::new(),
            init_phases: Vec::new(),
            peak_rss_kib: Vec::new(),
            first_invocation_requests: Measured::default(),
            runs_counted: 0,
        });
        paths.push(path);
    }

    for round in 0..warmup + rounds {
        for offset in 0..subjects.len() {
            let index = (round + offset) % subjects.len();
            let subject = subjects[index];
            let event = world.prepare(subject, &format!("cold{round}")).await?;
            let env = world.env(subject, &[("KEAPALIVE_INIT_TIMINGS", "true")]);
            let before = world.snapshot(subject).await;

            let container = Container::start(&paths[index], &env).await?;
            let init = container.init;
            let (answer, took) = container.invoke(event, INVOKE_DEADLINE).await?;
            // Read before the kill: VmHWM is the peak over init and this one invocation.
            let peak_rss = container.peak_rss_kib();
            let phases = container.init_timings();
            let checked = world.check(subject, &answer);
            let output = container.output_tail();
            container.stop().await;
            checked.map_err(|e| format!("{e}\nits output:\n{output}"))?;
            world.consume(subject).await?;
            let peak_rss = peak_rss?;

            let after = world.snapshot(subject).await;
            let runs = &mut results[index];
            if let Some(fixture) = world.fixture(subject) {
                let measured = Measured::between(&before, &after, &fixture.sandbox);
                runs.first_invocation_requests =
                    std::mem::take(&mut runs.first_invocation_requests).worst(measured);
                runs.runs_counted += 1;
            }
            if round >= warmup {
                runs.init_ms.push(ms(init));
                runs.first_invoke_ms.push(ms(took));
                runs.init_plus_first_ms.push(ms(init + took));
                runs.init_phases.extend(phases);
                runs.peak_rss_kib.push(peak_rss as f64);
            }
        }
    }
    Ok(results)
}
