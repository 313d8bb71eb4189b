//! `keap-sandbox --port N --client-id X --client-secret Y [--app NAME]`: runs the sandbox as a
//! process for the local demo. Prints `KEAP_SANDBOX_URL=http://127.0.0.1:N` once it accepts
//! connections, serves until SIGINT or SIGTERM. Drive it through the `/_sandbox` control API.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use keap_sandbox::{Consent, Sandbox};

const USAGE: &str = "usage: keap-sandbox [--port N] [--client-id X --client-secret Y] [--app NAME]";

struct Args {
    port: u16,
    client: Option<(String, String)>,
    app: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut port = 0;
    let mut client_id = None;
    let mut client_secret = None;
    let mut app = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--port" => {
                port = value
                    .parse()
                    .map_err(|_| format!("--port: not a port number: {value}"))?
            }
            "--client-id" => client_id = Some(value),
            "--client-secret" => client_secret = Some(value),
            "--app" => app = Some(value),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    let client = match (client_id, client_secret) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        _ => {
            return Err(format!(
                "--client-id and --client-secret go together\n{USAGE}"
            ));
        }
    };
    Ok(Args { port, client, app })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let sandbox = match Sandbox::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await
    {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("keap-sandbox: cannot listen on port {}: {error}", args.port);
            return ExitCode::FAILURE;
        }
    };
    if let Some((id, secret)) = &args.client {
        sandbox.register_client(id, secret);
    }
    if let Some(app) = args.app {
        sandbox.set_consent(Consent::Approve { app });
    }
    let mut stdout = std::io::stdout();
    // Callers wait for this exact line, so flush it before anything else can block.
    if writeln!(stdout, "KEAP_SANDBOX_URL={}", sandbox.base_url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    match wait_for_termination().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keap-sandbox: cannot wait for signals: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_termination() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
