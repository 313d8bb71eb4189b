//! Captures every `tracing` event of the test process (and, through [`append`], the output of
//! spawned function processes) so tests can assert that no token, secret or code is ever logged.

use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Overrides the capture filter (default [`DEFAULT_FILTER`]).
pub const FILTER_ENV: &str = "KEAPALIVE_TEST_LOG";
/// When set to `1`, captured output is also written to stderr as it arrives.
pub const ECHO_ENV: &str = "KEAPALIVE_TEST_ECHO_LOGS";

/// Everything our crates say, down to TRACE, plus DEBUG from libraries, which is more than a
/// deployed function logs: a secret that leaks at any of these levels fails the test.
pub const DEFAULT_FILTER: &str = "debug,keapalive=trace,oauth_callback=trace,token_refresher=trace,\
contact_upsert=trace,keap_sandbox=trace,keapalive_tests=trace,hyper=info,hyper_util=info,h2=info,\
rustls=info,aws_smithy_runtime=info,aws_smithy_runtime_api=info";

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Installs the capturing subscriber as the global default; later calls do nothing.
/// Call it at the start of every test that asserts on logs.
pub fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter = std::env::var(FILTER_ENV).unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
        let installed = tracing_subscriber::fmt()
            .json()
            .with_env_filter(EnvFilter::new(filter))
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(CaptureWriter)
            .try_init();
        if installed.is_err() {
            panic!("another global tracing subscriber was installed before capture_logs()");
        }
    });
}

/// All captured log lines so far, from every test in this process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&buffer()).into_owned()
}

/// A position in the capture, to read only what came after it.
#[derive(Debug, Clone, Copy)]
pub struct LogMark(usize);

pub fn log_mark() -> LogMark {
    LogMark(buffer().len())
}

pub fn captured_logs_since(mark: LogMark) -> String {
    let buffer = buffer();
    String::from_utf8_lossy(buffer.get(mark.0..).unwrap_or_default()).into_owned()
}

/// Adds text from outside `tracing` (a child process's stdout/stderr) to the capture.
pub fn append(text: &[u8]) {
    if std::env::var(ECHO_ENV).as_deref() == Ok("1") {
        eprint!("{}", String::from_utf8_lossy(text));
    }
    buffer().extend_from_slice(text);
}

/// Panics naming the first captured line that contains any of `needles` (empty ones ignored).
pub fn assert_logs_never_contain(needles: &[&str]) {
    let logs = captured_logs();
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        if let Some(line) = logs.lines().find(|line| line.contains(needle)) {
            // Name the line without repeating the secret itself.
            panic!(
                "a secret value ({} chars) appears in a log line: {}",
                needle.len(),
                line.replace(needle, "<SECRET>")
            );
        }
    }
}

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    // A panicking test must not hide every later test's logs.
    BUFFER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct CaptureWriter;

impl io::Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter
    }
}
