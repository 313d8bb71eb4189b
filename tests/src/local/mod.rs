//! `keapalive-local` (`make local`): the whole keapalive story on one machine, with the real
//! function binaries. moto stands in for DynamoDB and Secrets Manager; the Keap sandbox (or, with
//! `--real-keap`, the real Keap) for Keap.
//!
//! start authorization → consent → callback stores generation 1 → forced refresh → generation
//! 2 → upsert the ButtonPush contact → subscribe `contact.add` and read Keap's delivery back
//! from the bus → read the contact back through keap-proxy → a vended token → status table.
//!
//! The pieces are reusable: [`invoke_api::InvokeApi`] (a local Lambda Invoke API that the AWS
//! CLI and SDKs can call), [`callback_server`] (an HTTP API stand-in for the callback route),
//! [`functions`] (a real binary behind a Runtime API host) and [`supervisor::Supervisor`] (every
//! child stopped, also on Ctrl-C).

pub mod apigw;
pub mod callback_server;
mod cargo_build;
mod flow;
pub mod functions;
mod hooks;
pub mod invoke_api;
pub mod moto;
pub mod progress;
pub mod resources;
pub mod supervisor;

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

pub use flow::{run, steps as flow_steps};

/// The steps of the run, in order. Their names appear in progress lines, in the failure line
/// and in `--pause-before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Build,
    Emulator,
    Sandbox,
    Resources,
    Functions,
    StartAuthorization,
    Consent,
    Callback,
    Refresh,
    Upsert,
    Hooks,
    Proxy,
    Vend,
    Status,
}

impl Step {
    pub const ALL: [Step; 14] = [
        Step::Build,
        Step::Emulator,
        Step::Sandbox,
        Step::Resources,
        Step::Functions,
        Step::StartAuthorization,
        Step::Consent,
        Step::Callback,
        Step::Refresh,
        Step::Upsert,
        Step::Hooks,
        Step::Proxy,
        Step::Vend,
        Step::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Build => "build",
            Step::Emulator => "emulator",
            Step::Sandbox => "sandbox",
            Step::Resources => "resources",
            Step::Functions => "functions",
            Step::StartAuthorization => "start-authorization",
            Step::Consent => "consent",
            Step::Callback => "callback",
            Step::Refresh => "refresh",
            Step::Upsert => "upsert",
            Step::Hooks => "hooks",
            Step::Proxy => "proxy",
            Step::Vend => "vend",
            Step::Status => "status",
        }
    }

    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.name() == name)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Against the real Keap: the developer app's credentials and its registered redirect URI.
pub struct RealKeap {
    pub client_id: String,
    pub client_secret: SecretString,
    /// The HTTPS URL registered with the Keap app that reaches `callback_port` (a tunnel).
    pub redirect_uri: url::Url,
    pub callback_port: u16,
    /// The test contact to upsert once authorized.
    pub contact_email: String,
    /// Existing tags to apply (none by default: the run must not invent tags in a real account).
    pub tags: Vec<String>,
    /// How long to wait for the browser consent (Keap's state works for 10 minutes).
    pub consent_timeout: Duration,
}

pub enum Mode {
    Sandbox,
    RealKeap(Box<RealKeap>),
}

pub struct Options {
    pub mode: Mode,
    /// Run `cargo build` of the function binaries first (the Makefile has just built them).
    pub build: bool,
    /// Print `CHILD_PID=<pid> <name>` for every child process.
    pub announce_pids: bool,
    /// Stop before this step and wait (for tests that interrupt the run mid-flow).
    pub pause_before: Option<Step>,
}

/// A step that did not hold.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.message)
    }
}

/// What the run established, for the closing lines and for tests.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub generation: u64,
    pub contact_id: i64,
    pub created: bool,
}
