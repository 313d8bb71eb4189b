//! Every process the local driver starts is handed to the [`Supervisor`], which stops and reaps
//! them all at the end: after success, after a failed step, and after Ctrl-C (the flow's future
//! is dropped first, then [`Supervisor::shutdown`] runs).
//!
//! If the driver itself is killed (SIGKILL leaves no chance to clean up), the children still go:
//! moto exits when its stdin pipe closes, a function exits when its Runtime API connection
//! drops, and a build is killed by `kill_on_drop` or finishes on its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Child;

use crate::runtime_api::FunctionProcess;

/// How long a killed child may take to be reaped before the driver gives up on it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

enum Process {
    Plain(Child),
    Function(FunctionProcess),
}

impl Process {
    fn child(&mut self) -> &mut Child {
        match self {
            Process::Plain(child) => child,
            Process::Function(function) => &mut function.child,
        }
    }
}

struct Managed {
    name: String,
    process: Process,
}

/// Cheap to clone; every clone manages the same set of children.
#[derive(Clone, Default)]
pub struct Supervisor {
    children: Arc<Mutex<Vec<Managed>>>,
    announce_pids: bool,
}

impl Supervisor {
    /// With `announce_pids`, each adopted child is announced on stdout as
    /// `CHILD_PID=<pid> <name>` (tests use it to prove nothing is left behind).
    pub fn new(announce_pids: bool) -> Self {
        Self {
            children: Arc::default(),
            announce_pids,
        }
    }

    pub fn adopt(&self, name: &str, child: Child) {
        self.add(name, Process::Plain(child));
    }

    pub fn adopt_function(&self, name: &str, function: FunctionProcess) {
        self.add(name, Process::Function(function));
    }

    fn add(&self, name: &str, mut process: Process) {
        if self.announce_pids
            && let Some(pid) = process.child().id()
        {
            println!("CHILD_PID={pid} {name}");
        }
        lock(&self.children).push(Managed {
            name: name.to_owned(),
            process,
        });
    }

    /// Output so far of the function processes (their JSON log lines), for a failure report.
    pub fn function_output(&self, name: &str) -> Option<String> {
        lock(&self.children)
            .iter()
            .find_map(|managed| match &managed.process {
                Process::Function(function) if managed.name == name => Some(function.output()),
                _ => None,
            })
    }

    /// The adopted children that have exited already, with their exit status.
    pub fn exited(&self) -> Vec<(String, String)> {
        let mut children = lock(&self.children);
        children
            .iter_mut()
            .filter_map(|managed| match managed.process.child().try_wait() {
                Ok(Some(status)) => Some((managed.name.clone(), status.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Kills every child and waits for each to be reaped, so that when this returns no process
    /// the driver started is running (or left as a zombie).
    pub async fn shutdown(&self) {
        let children: Vec<Managed> = std::mem::take(&mut *lock(&self.children));
        for mut managed in children {
            let child = managed.process.child();
            let _ = child.start_kill();
            if tokio::time::timeout(REAP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "warning: {} (pid {:?}) did not exit within {REAP_TIMEOUT:?}",
                    managed.name,
                    child.id()
                );
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
