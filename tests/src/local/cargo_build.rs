//! Builds the function binaries before the run, with cargo's own progress on the terminal.
//!
//! cargo runs in its own process group: on Ctrl-C the driver stops the whole group (cargo and
//! every rustc it started), not only cargo.

use std::process::Stdio;

use tokio::process::Command;

use super::functions::ALL;
use crate::workspace;

/// Kills the build's process group when dropped before the build finished (Ctrl-C).
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
        }
    }
}

pub async fn build_functions() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command.current_dir(workspace::root()).arg("build");
    for name in ALL {
        command.args(["-p", name]);
    }
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let mut child = command
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let mut guard = GroupGuard {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    guard.pgid = None;
    if !status.success() {
        return Err(format!(
            "`cargo build` of {} failed ({status})",
            ALL.join(", ")
        ));
    }
    Ok(())
}
