//! Cold starts: each function and the hello-world baseline started fresh, round after round,
//! interleaved (the order rotates every round) so drift on a noisy machine hits all alike.
//! Each run: process start → first `GET /next` (init), then one invocation (its duration,
//! then `VmHWM`), then kill. The first invocation's requests are the "cold" operation counts.

use std::path::PathBuf;

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
            let env = world.env(subject, &[]);
            let before = world.snapshot(subject).await;

            let container = Container::start(&paths[index], &env).await?;
            let init = container.init;
            let (answer, took) = container.invoke(event, INVOKE_DEADLINE).await?;
            // Read before the kill: VmHWM is the peak over init and this one invocation.
            let peak_rss = container.peak_rss_kib();
            let checked = world.check(subject, &answer);
            let output = container.output_tail();
            container.stop().await;
            checked.map_err(|e| format!("{e}\nits output:\n{output}"))?;
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
                runs.peak_rss_kib.push(peak_rss as f64);
            }
        }
    }
    Ok(results)
}
