//! `keapalive-dev-services` — `make dev-services`: only the services a function needs, for
//! developing with `cargo lambda watch` (docs/development.md).
//!
//! Starts moto (DynamoDB, Secrets Manager, SQS) and the Keap sandbox on 127.0.0.1, creates the
//! connections table and the client secret, authorizes connection `default` with a
//! sandbox-issued pair (tag `buttonpushed` and custom field "Favorite Color" exist, as in
//! `make local`), writes the functions' environment to `.local/dev.env` and the ButtonPush
//! request to `.local/buttonpush.json`, then waits for Ctrl-C and stops everything.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use keap_sandbox::{DEFAULT_APP, Sandbox};
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::DynamoDbTokenStore;
use keapalive_tests::fixture::{connection_id, issued_tokens};
use keapalive_tests::local::progress::Progress;
use keapalive_tests::local::supervisor::Supervisor;
use keapalive_tests::local::{moto, resources};
use keapalive_tests::workspace;
use secrecy::SecretString;
use serde_json::json;

const CLIENT_ID: &str = "keapalive-dev-client";
const CLIENT_SECRET: &str = "keapalive-dev-client-secret";
/// A fixed port, so `.local/dev.env` stays valid across restarts of this tool.
const SANDBOX_PORT: u16 = 9180;
const TAG: &str = "buttonpushed";
const CUSTOM_FIELD: &str = "Favorite Color";

#[tokio::main]
async fn main() -> ExitCode {
    let supervisor = Supervisor::new(false);
    let outcome = tokio::select! {
        result = serve(&supervisor) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    supervisor.shutdown().await;
    match outcome {
        Ok(()) => {
            println!("stopped moto and the Keap sandbox");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(supervisor: &Supervisor) -> Result<(), String> {
    let progress = Progress::new(Vec::new());
    println!("starting moto (first start takes up to a minute)…");
    let endpoint = moto::start(supervisor, &progress).await?;
    let sdk = keapalive_tests::emulator::sdk_config_for(&endpoint);
    let sandbox = Sandbox::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, SANDBOX_PORT)))
        .await
        .map_err(|e| format!("cannot start the Keap sandbox on 127.0.0.1:{SANDBOX_PORT}: {e}"))?;
    sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
    sandbox.add_tag(DEFAULT_APP, TAG);
    sandbox.add_custom_field(DEFAULT_APP, CUSTOM_FIELD, "Text");

    resources::create_table(&sdk).await?;
    resources::store_client_secret(&sdk, CLIENT_ID, &SecretString::from(CLIENT_SECRET)).await?;
    let issued = sandbox.issue_grant(CLIENT_ID, DEFAULT_APP);
    DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&sdk), resources::TABLE)
        .authorize(
            &connection_id("default"),
            &issued_tokens(&issued, None),
            true,
            &keapalive::token_store::new_write_id(),
            now_epoch_secs(),
        )
        .await
        .map_err(|e| format!("cannot store connection `default`: {e}"))?;

    let mut env = resources::aws_env(&endpoint);
    for (name, value) in [
        ("KEAPALIVE_TABLE", resources::TABLE.to_owned()),
        (
            "KEAPALIVE_CLIENT_SECRET_ID",
            resources::CLIENT_SECRET_ID.to_owned(),
        ),
        (
            "KEAPALIVE_REDIRECT_URI",
            "http://127.0.0.1:9000/oauth/callback".to_owned(),
        ),
        ("KEAPALIVE_STAGE", "dev".to_owned()),
        ("KEAP_AUTHORIZE_URL", sandbox.authorize_url()),
        ("KEAP_TOKEN_URL", sandbox.token_url()),
        ("KEAP_API_BASE_URL", sandbox.api_base_url()),
    ] {
        env.push((name.to_owned(), value));
    }
    let dir = workspace::root().join(".local");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let env_file = dir.join("dev.env");
    let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, lines)
        .map_err(|e| format!("cannot write {}: {e}", env_file.display()))?;
    let request = json!({
        "connection_id": "default",
        "contact": {"email": "ada@example.com", "given_name": "Ada", "family_name": "Lovelace",
                    "custom_fields": {CUSTOM_FIELD: "blue"}, "tags": [TAG]},
        "match_on": "email",
    });
    let request_file = dir.join("buttonpush.json");
    std::fs::write(&request_file, format!("{request:#}\n"))
        .map_err(|e| format!("cannot write {}: {e}", request_file.display()))?;

    println!("moto:         {endpoint}");
    println!(
        "Keap sandbox: {} (app `{DEFAULT_APP}`, tag \"{TAG}\")",
        sandbox.base_url()
    );
    println!("connection `default` authorized; environment in .local/dev.env");
    println!("READY — now run `cargo lambda watch --env-file .local/dev.env` (Ctrl-C here stops)");

    let mut last_contacts = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let contacts = sandbox.contacts(DEFAULT_APP);
        if contacts.len() != last_contacts {
            last_contacts = contacts.len();
            for contact in &contacts {
                println!(
                    "sandbox contact {}: tags {}",
                    contact["id"], contact["tag_ids"]
                );
            }
        }
    }
}
