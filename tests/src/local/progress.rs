//! Progress lines on stdout, so a first run (a long build, moto's slow start) never looks hung:
//! `[3/13] title` when a step starts, `       ok (1.2 s): detail` when it ends, and a
//! "still waiting" line every few seconds in between for slow steps.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use super::Step;

pub struct Progress {
    steps: Vec<Step>,
    current: Mutex<Option<(Step, Instant)>>,
}

const INDENT: &str = "       ";

impl Progress {
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            current: Mutex::new(None),
        }
    }

    /// Announces `step`; its end is [`Progress::ok`].
    pub fn start(&self, step: Step, title: &str) {
        let number = self
            .steps
            .iter()
            .position(|s| *s == step)
            .map(|i| i + 1)
            .unwrap_or(0);
        *lock(&self.current) = Some((step, Instant::now()));
        print_line(&format!("[{number}/{}] {title}", self.steps.len()));
    }

    pub fn ok(&self, detail: &str) {
        let elapsed = lock(&self.current)
            .take()
            .map(|(_, started)| started.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        if detail.is_empty() {
            print_line(&format!("{INDENT}ok ({elapsed:.1} s)"));
        } else {
            print_line(&format!("{INDENT}ok ({elapsed:.1} s): {detail}"));
        }
    }

    /// The end of a step this run cannot make, and why.
    pub fn skipped(&self, reason: &str) {
        lock(&self.current).take();
        print_line(&format!("{INDENT}skipped: {reason}"));
    }

    /// An indented line under the current step.
    pub fn note(&self, text: &str) {
        for line in text.lines() {
            print_line(&format!("{INDENT}{line}"));
        }
    }

    pub fn still_waiting(&self, since: Instant, what: &str) {
        print_line(&format!(
            "{INDENT}... still waiting ({:.0} s): {what}",
            since.elapsed().as_secs_f64()
        ));
    }

    /// The step that was running when something failed or the run was interrupted.
    pub fn current(&self) -> Option<Step> {
        lock(&self.current).as_ref().map(|(step, _)| *step)
    }
}

fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
