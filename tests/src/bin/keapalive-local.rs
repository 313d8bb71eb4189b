//! `keapalive-local` — `make local` and `make local-keap`: the whole keapalive flow on this
//! machine with the real function binaries (see `keapalive_tests::local`).
//!
//! Exits 0 when every step held, 1 naming the failed step otherwise, 2 on bad arguments, 130 on
//! Ctrl-C (143 on SIGTERM); in every case after stopping every process it started.

use std::process::ExitCode;
use std::time::Duration;

use keapalive_tests::local::progress::Progress;
use keapalive_tests::local::supervisor::Supervisor;
use keapalive_tests::local::{Mode, Options, RealKeap, Step, functions, run};
use secrecy::SecretString;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "\
usage: keapalive-local [--no-build] [--print-pids] [--pause-before STEP]
       keapalive-local --real-keap --client-id ID --client-secret-file FILE
                       --redirect-uri https://HOST/oauth/callback [--callback-port 8787]
                       [--contact-email EMAIL] [--tag NAME]... [--consent-timeout-secs 600]

Runs moto (DynamoDB, Secrets Manager, SQS, EventBridge), the Keap sandbox (or the real Keap
with --real-keap) and the function binaries on 127.0.0.1, then: start authorization -> consent
-> callback (generation 1) -> forced refresh (generation 2) -> upsert a contact -> subscribe
contact.add and read Keap's delivery back from the bus (sandbox only) -> read the contact back
through keap-proxy -> a token from access-token used against Keap directly -> status table.

  --no-build            use the binaries in target/ as they are (make local builds them first)
  --print-pids          print CHILD_PID=<pid> <name> for every child process
  --pause-before STEP   stop before STEP and wait for Ctrl-C (for tests); steps: build,
                        emulator, sandbox, resources, functions, start-authorization, consent,
                        callback, refresh, upsert, hooks, proxy, vend, status
  --real-keap           talk to Keap itself: your developer app's client id, a file holding its
                        client secret, and the HTTPS redirect URI registered with the app, which
                        must reach 127.0.0.1:<callback-port> (an HTTPS tunnel; see docs/deploy.md)";

const DEFAULT_CALLBACK_PORT: u16 = 8787;
const DEFAULT_CONTACT_EMAIL: &str = "keapalive-local-test@example.com";
/// Keap's authorize link (our state) works for 10 minutes.
const DEFAULT_CONSENT_TIMEOUT_SECS: u64 = 600;

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut build = true;
    let mut announce_pids = false;
    let mut pause_before = None;
    let mut real_keap = false;
    let mut client_id = None;
    let mut client_secret_file = None;
    let mut redirect_uri = None;
    let mut callback_port = DEFAULT_CALLBACK_PORT;
    let mut contact_email = DEFAULT_CONTACT_EMAIL.to_owned();
    let mut tags = Vec::new();
    let mut consent_timeout_secs = DEFAULT_CONSENT_TIMEOUT_SECS;

    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(USAGE.to_owned()),
            "--no-build" => build = false,
            "--print-pids" => announce_pids = true,
            "--pause-before" => {
                let name = value(&flag)?;
                pause_before =
                    Some(Step::parse(&name).ok_or_else(|| format!("unknown step {name}"))?);
            }
            "--real-keap" => real_keap = true,
            "--client-id" => client_id = Some(value(&flag)?),
            "--client-secret-file" => client_secret_file = Some(value(&flag)?),
            "--redirect-uri" => redirect_uri = Some(value(&flag)?),
            "--callback-port" => {
                callback_port = value(&flag)?
                    .parse()
                    .map_err(|_| "--callback-port: not a port number".to_owned())?
            }
            "--contact-email" => contact_email = value(&flag)?,
            "--tag" => tags.push(value(&flag)?),
            "--consent-timeout-secs" => {
                consent_timeout_secs = value(&flag)?
                    .parse()
                    .map_err(|_| "--consent-timeout-secs: not a number".to_owned())?
            }
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }

    let mode = if real_keap {
        let client_id = client_id.ok_or("--real-keap needs --client-id")?;
        let file = client_secret_file.ok_or("--real-keap needs --client-secret-file")?;
        let client_secret = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read --client-secret-file {file}: {e}"))?;
        let client_secret = client_secret.trim();
        if client_secret.is_empty() {
            return Err(format!("--client-secret-file {file} is empty"));
        }
        let raw_uri = redirect_uri.ok_or("--real-keap needs --redirect-uri")?;
        let redirect_uri = url::Url::parse(&raw_uri)
            .map_err(|e| format!("--redirect-uri is not an absolute URL: {e}"))?;
        check_redirect_uri(&redirect_uri)?;
        Mode::RealKeap(Box::new(RealKeap {
            client_id,
            client_secret: SecretString::from(client_secret.to_owned()),
            redirect_uri,
            callback_port,
            contact_email,
            tags,
            consent_timeout: Duration::from_secs(consent_timeout_secs),
        }))
    } else {
        if client_id.is_some() || client_secret_file.is_some() || redirect_uri.is_some() {
            return Err(
                "--client-id, --client-secret-file and --redirect-uri go with --real-keap"
                    .to_owned(),
            );
        }
        Mode::Sandbox
    };
    Ok(Options {
        mode,
        build,
        announce_pids,
        pause_before,
    })
}

/// Keap accepts only HTTPS redirect URIs; plain HTTP is allowed for loopback hosts only, which
/// is useful solely against a local sandbox.
fn check_redirect_uri(uri: &url::Url) -> Result<(), String> {
    let loopback = matches!(uri.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match uri.scheme() {
        "https" => Ok(()),
        "http" if loopback => {
            eprintln!(
                "note: Keap requires an HTTPS redirect URI; {uri} only works with a local sandbox"
            );
            Ok(())
        }
        _ => Err(format!(
            "--redirect-uri must be https (Keap refuses anything else): {uri}\n\
             Put an HTTPS tunnel in front of 127.0.0.1:<callback-port> and register its URL + \
             /oauth/callback with your Keap app"
        )),
    }
}

enum Ended {
    Finished(Result<keapalive_tests::local::Outcome, keapalive_tests::local::Failure>),
    Signal(&'static str, u8),
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            eprintln!("cannot install a SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let supervisor = Supervisor::new(options.announce_pids);
    let progress = Progress::new(keapalive_tests::local::flow_steps(&options));
    println!(
        "keapalive local run: {} and an AWS emulator on 127.0.0.1, the real function binaries",
        match options.mode {
            Mode::Sandbox => "the Keap sandbox",
            Mode::RealKeap(_) => "the real Keap",
        }
    );

    let ended = tokio::select! {
        result = run(&options, &supervisor, &progress) => Ended::Finished(result),
        _ = tokio::signal::ctrl_c() => Ended::Signal("Ctrl-C", 130),
        _ = terminate.recv() => Ended::Signal("SIGTERM", 143),
    };

    let code = match ended {
        Ended::Finished(Ok(outcome)) => {
            println!(
                "All steps held: authorized, refreshed to generation {}, contact {} {}.",
                outcome.generation,
                outcome.contact_id,
                if outcome.created {
                    "created"
                } else {
                    "updated"
                }
            );
            if matches!(options.mode, Mode::RealKeap(_)) {
                println!(
                    "This connection lived in the local emulator only and ends with this run; \
                     your deployed stage needs its own authorization (docs/connections.md: \"Authorize a connection\")."
                );
            }
            0
        }
        Ended::Finished(Err(failure)) => {
            eprintln!("\nFAILED: {failure}");
            report_function_logs(&supervisor, failure.step);
            1
        }
        Ended::Signal(name, code) => {
            let during = progress
                .current()
                .map(|step| format!(" during step `{step}`"))
                .unwrap_or_default();
            eprintln!("\n{name}{during}: stopping");
            code
        }
    };
    eprintln!("stopping every process this run started...");
    supervisor.shutdown().await;
    ExitCode::from(code)
}

/// The functions behind a failed step, their last log lines (JSON; never a token), and any
/// child that died on its own.
fn report_function_logs(supervisor: &Supervisor, step: Step) {
    let involved: &[&str] = match step {
        Step::StartAuthorization => &[functions::OPERATOR],
        Step::Consent | Step::Callback => &[functions::OAUTH_CALLBACK],
        Step::Refresh => &[functions::TOKEN_REFRESHER],
        Step::Upsert => &[functions::CONTACT_UPSERT],
        // The operator subscribes through keap-proxy; Keap verifies and delivers to keap-hooks.
        Step::Hooks => &[
            functions::OPERATOR,
            functions::KEAP_PROXY,
            functions::KEAP_HOOKS,
        ],
        Step::Proxy => &[functions::KEAP_PROXY],
        Step::Vend => &[functions::ACCESS_TOKEN],
        _ => &[],
    };
    for function in involved {
        if let Some(output) = supervisor.function_output(function)
            && !output.trim().is_empty()
        {
            eprintln!(
                "last log lines of {function}:\n{}",
                functions::tail(&output, 15)
            );
        }
    }
    for (name, status) in supervisor.exited() {
        eprintln!("{name} had exited: {status}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn sandbox_is_the_default() {
        let options = parsed(&["--no-build", "--pause-before", "upsert"]).unwrap();
        assert!(matches!(options.mode, Mode::Sandbox));
        assert!(!options.build);
        assert_eq!(options.pause_before, Some(Step::Upsert));
        assert!(parsed(&["--pause-before", "nap"]).is_err());
        assert!(parsed(&["--client-id", "x"]).is_err());
    }

    #[test]
    fn real_keap_needs_https_except_on_loopback() {
        let secret = std::env::temp_dir().join(format!("keapalive-local-{}", std::process::id()));
        std::fs::write(&secret, "s3cret\n").unwrap();
        let secret = secret.to_string_lossy().into_owned();
        let with = |uri: &str| {
            parsed(&[
                "--real-keap",
                "--client-id",
                "id",
                "--client-secret-file",
                &secret,
                "--redirect-uri",
                uri,
            ])
        };
        assert!(with("https://abc.example.net/oauth/callback").is_ok());
        assert!(with("http://127.0.0.1:8787/oauth/callback").is_ok());
        assert!(with("http://abc.example.net/oauth/callback").is_err());
        assert!(parsed(&["--real-keap", "--client-id", "id"]).is_err());
    }
}
