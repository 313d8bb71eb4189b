//! Starts the serialized moto server (`tests/emulator/moto_serialized.py`) as a child the
//! [`Supervisor`] owns. The test harness's [`crate::emulator::Emulator`] lives in a static for
//! the whole test process; the driver needs one it can stop on Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::progress::Progress;
use super::supervisor::Supervisor;
use crate::emulator::PYTHON_ENV;
use crate::workspace;

/// moto imports every backend on start; a loaded 2-core machine can take a while.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// The emulator's base URL, e.g. `http://127.0.0.1:40123`.
pub async fn start(supervisor: &Supervisor, progress: &Progress) -> Result<String, String> {
    let root = workspace::root();
    let python = match std::env::var_os(PYTHON_ENV) {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => root.join(".venv/bin/python"),
    };
    if !python.exists() {
        return Err(format!(
            "{} is missing: run `make local` (it creates .venv with moto first)",
            python.display()
        ));
    }
    let log_dir = root.join("target/keapalive-local");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let log_path = log_dir.join("moto.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;

    let mut child = Command::new(&python)
        .arg(root.join("tests/emulator/moto_serialized.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    supervisor.adopt("moto", child);

    let Some(stdout) = stdout else {
        return Err("moto's stdout is not a pipe".to_owned());
    };
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let port = loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                if started.elapsed() > STARTUP_TIMEOUT {
                    return Err(format!("moto did not start within {STARTUP_TIMEOUT:?}; see {}", log_path.display()));
                }
                progress.still_waiting(started, "moto is importing its AWS backends");
                continue;
            }
        };
        match line {
            Ok(Some(line)) => {
                if let Some(port) = line.strip_prefix("MOTO_PORT=") {
                    break port.trim().to_owned();
                }
            }
            Ok(None) | Err(_) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(format!(
                    "moto exited before it reported its port; last lines of {}:\n{}",
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
    };
    tokio::spawn(async move {
        // moto exits when this pipe closes: when the driver's process ends, however it ends.
        let _stdin = stdin;
        // Keep draining so moto never blocks on a full stdout pipe.
        while let Ok(Some(_)) = lines.next_line().await {}
        std::future::pending::<()>().await;
    });
    Ok(format!("http://127.0.0.1:{port}"))
}
