//! The real function binaries, each behind its own local Lambda Runtime API host, as one warm
//! Lambda container each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::supervisor::Supervisor;
use crate::runtime_api::{InvokeError, RuntimeApi, spawn_function};
use crate::workspace;

pub const OAUTH_CALLBACK: &str = "oauth-callback";
pub const TOKEN_REFRESHER: &str = "token-refresher";
pub const CONTACT_UPSERT: &str = "contact-upsert";
/// The non-public function that takes the operator commands (start, register, remove).
pub const OPERATOR: &str = "operator";
/// Any Keap REST request with a connection's credential (docs/keap-proxy.md).
pub const KEAP_PROXY: &str = "keap-proxy";
/// A short-lived token for a service with its own Keap SDK (docs/access-token.md).
pub const ACCESS_TOKEN: &str = "access-token";
/// Keap's REST Hook deliveries onto the bus (docs/events.md, "Keap changes").
pub const KEAP_HOOKS: &str = "keap-hooks";
pub const ALL: [&str; 7] = [
    OAUTH_CALLBACK,
    TOKEN_REFRESHER,
    CONTACT_UPSERT,
    OPERATOR,
    KEAP_PROXY,
    ACCESS_TOKEN,
    KEAP_HOOKS,
];

/// What an invocation of most functions gets: the template's Timeouts are 30 s or less…
pub const INVOKE_DEADLINE: Duration = Duration::from_secs(30);
/// …but the operator's (its hook commands wait on keap-proxy) and token-refresher's.
const OPERATOR_DEADLINE: Duration = Duration::from_secs(90);
const TOKEN_REFRESHER_DEADLINE: Duration = Duration::from_secs(300);
/// From process start to its first `GET /next` (init done). Debug builds on a busy machine are
/// slow to start; a real cold start is well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One running function. Cloning shares the same process.
#[derive(Clone)]
pub struct LocalFunction {
    pub name: &'static str,
    pub runtime: Arc<RuntimeApi>,
}

impl LocalFunction {
    /// The function's remaining time is its template Timeout, as in Lambda.
    pub async fn invoke(&self, event: Value) -> Result<Value, InvokeError> {
        let deadline = match self.name {
            OPERATOR => OPERATOR_DEADLINE,
            TOKEN_REFRESHER => TOKEN_REFRESHER_DEADLINE,
            _ => INVOKE_DEADLINE,
        };
        self.runtime.invoke(event, deadline).await
    }
}

/// The directory cargo puts this build profile's binaries in.
pub fn binary_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace::root().join("target"));
    target.join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

/// Starts `name` (a binary in [`binary_dir`]) with `env` and waits until its init is done.
pub async fn start(
    name: &'static str,
    env: &[(String, String)],
    supervisor: &Supervisor,
) -> Result<LocalFunction, String> {
    let binary = binary_dir().join(name);
    if !binary.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build -p {name}` (or run `make local`)",
            binary.display()
        ));
    }
    let runtime = Arc::new(RuntimeApi::start_named(name).await);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = spawn_function(&binary, &env, &runtime);
    supervisor.adopt_function(name, process);
    if runtime.wait_until_ready(READY_TIMEOUT).await.is_none() {
        let reason = match runtime.init_error() {
            Some(error) => format!("its init failed: {error}"),
            None => format!("it did not ask for an event within {READY_TIMEOUT:?}"),
        };
        let output = supervisor.function_output(name).unwrap_or_default();
        return Err(format!(
            "{name} did not start: {reason}\n{}",
            tail(&output, 20)
        ));
    }
    Ok(LocalFunction { name, runtime })
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
