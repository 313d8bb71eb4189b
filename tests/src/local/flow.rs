//! The story, step by step. Every step checks what it claims (the stored generation, the
//! contact in the sandbox), so "ok" means it held.

use std::time::{Duration, Instant};

use keap_sandbox::{DEFAULT_APP, Sandbox};
use keapalive::ConnectionId;
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::{Connection, ConnectionStatus, DynamoDbTokenStore};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::callback_server::{CallbackListener, CallbackServer};
use super::functions::{self, LocalFunction};
use super::hooks::HookRoutes;
use super::progress::Progress;
use super::supervisor::Supervisor;
use super::{Failure, Mode, Options, Outcome, RealKeap, Step, cargo_build, hooks, moto, resources};

pub const SANDBOX_CLIENT_ID: &str = "keapalive-local-client";
pub const SANDBOX_CLIENT_SECRET: &str = "keapalive-local-client-secret";
pub const CUSTOM_FIELD: &str = "Favorite Color";
pub const TAG: &str = "buttonpushed";
const CONNECTION: &str = "default";
/// Keap's delays before hook delivery attempts (30-60 s, 30-60 s, 5 min, 30 min), scaled to
/// 0.3-0.6 s, 0.3-0.6 s, 3 s and 18 s.
const HOOK_DELAY_SCALE: f64 = 0.01;

/// The Keap endpoints the functions are pointed at when they are not Keap's own.
const KEAP_URL_VARIABLES: [&str; 3] = ["KEAP_AUTHORIZE_URL", "KEAP_TOKEN_URL", "KEAP_API_BASE_URL"];

/// Which steps this run has, in order.
pub fn steps(options: &Options) -> Vec<Step> {
    Step::ALL
        .into_iter()
        .filter(|step| match step {
            Step::Build => options.build,
            Step::Sandbox => matches!(options.mode, Mode::Sandbox),
            _ => true,
        })
        .collect()
}

struct Run<'a> {
    options: &'a Options,
    progress: &'a Progress,
}

impl Run<'_> {
    async fn begin(&self, step: Step, title: &str) {
        self.progress.start(step, title);
        if self.options.pause_before == Some(step) {
            println!("PAUSED before step `{step}` (Ctrl-C stops the run)");
            std::future::pending::<()>().await;
        }
    }
}

fn at(step: Step) -> impl FnOnce(String) -> Failure {
    move |message| Failure { step, message }
}

/// Runs the whole story. Children go to `supervisor`, which the caller shuts down afterwards
/// whatever happened (this future may be dropped half-way on Ctrl-C).
pub async fn run(
    options: &Options,
    supervisor: &Supervisor,
    progress: &Progress,
) -> Result<Outcome, Failure> {
    let run = Run { options, progress };
    let real = match &options.mode {
        Mode::Sandbox => None,
        Mode::RealKeap(real) => Some(real.as_ref()),
    };

    if options.build {
        run.begin(
            Step::Build,
            "Building the function binaries (cargo build; a first build takes ~6 min on 2 cores)",
        )
        .await;
        cargo_build::build_functions()
            .await
            .map_err(at(Step::Build))?;
        progress.ok("");
    }

    run.begin(
        Step::Emulator,
        "Starting the AWS emulator (moto: DynamoDB, Secrets Manager, SQS, EventBridge); first start takes up to a minute",
    )
    .await;
    let endpoint = moto::start(supervisor, progress)
        .await
        .map_err(at(Step::Emulator))?;
    let sdk = crate::emulator::sdk_config_for(&endpoint);
    progress.ok(&endpoint);

    let sandbox = match real {
        None => {
            run.begin(Step::Sandbox, "Starting the Keap sandbox (in this process)")
                .await;
            let sandbox = start_sandbox().await.map_err(at(Step::Sandbox))?;
            progress.ok(&format!(
                "{} (app `{DEFAULT_APP}`, custom field \"{CUSTOM_FIELD}\", tag \"{TAG}\"; hook \
                 deliveries after 1/100 of Keap's delays)",
                sandbox.base_url()
            ));
            Some(sandbox)
        }
        Some(_) => None,
    };

    run.begin(
        Step::Resources,
        "Creating the connections table, the event bus and storing the Keap client secret, as a deployment does",
    )
    .await;
    resources::create_table(&sdk)
        .await
        .map_err(at(Step::Resources))?;
    let (client_id, client_secret) = match real {
        None => (
            SANDBOX_CLIENT_ID.to_owned(),
            SecretString::from(SANDBOX_CLIENT_SECRET),
        ),
        Some(real) => (real.client_id.clone(), real.client_secret.clone()),
    };
    resources::store_client_secret(&sdk, &client_id, &client_secret)
        .await
        .map_err(at(Step::Resources))?;
    let queues = resources::create_event_bus(&sdk)
        .await
        .map_err(at(Step::Resources))?;
    progress.ok(&format!(
        "table {}, secret {}, event bus {} (rules send connection events to queue {}, Keap's \
         changes to queue {})",
        resources::TABLE,
        resources::CLIENT_SECRET_ID,
        resources::EVENT_BUS,
        resources::EVENTS_QUEUE,
        resources::KEAP_EVENTS_QUEUE,
    ));

    run.begin(
        Step::Functions,
        "Starting oauth-callback, token-refresher, contact-upsert, operator, keap-proxy, access-token and keap-hooks (the real binaries, each behind a local Lambda Runtime API)",
    )
    .await;
    let listener = CallbackListener::bind(real.map(|r| r.callback_port).unwrap_or(0))
        .await
        .map_err(at(Step::Functions))?;
    let redirect_uri = match real {
        None => listener.callback_url(),
        Some(real) => real.redirect_uri.to_string(),
    };
    let env = function_env(&endpoint, &redirect_uri, sandbox.as_ref());
    let Functions {
        oauth_callback,
        token_refresher,
        contact_upsert,
        operator,
        keap_proxy,
        access_token,
        hook_routes,
    } = start_functions(&env, supervisor)
        .await
        .map_err(at(Step::Functions))?;
    let callback_port = listener.port();
    let (_callback_server, served): (CallbackServer, _) = listener.serve(oauth_callback.clone());
    progress.ok(&format!(
        "callback route served on 127.0.0.1:{callback_port}, redirect URI {redirect_uri}; \
         Keap's hook deliveries to POST {}/{{token}}",
        hook_routes.base_url()
    ));

    let store = DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&sdk), resources::TABLE);
    let connection_id = ConnectionId::default();

    run.begin(
        Step::StartAuthorization,
        "Starting an authorization: invoke operator {\"start_authorization\": {\"connection_id\": \"default\"}}",
    )
    .await;
    let started = invoke(
        &operator,
        json!({"start_authorization": {"connection_id": CONNECTION}}),
    )
    .await
    .map_err(at(Step::StartAuthorization))?;
    let authorize_url = started
        .get("authorize_url")
        .and_then(Value::as_str)
        .ok_or_else(|| at(Step::StartAuthorization)(format!("no authorize_url in {started}")))?
        .to_owned();
    progress.ok(&format!(
        "authorize URL for {} (valid for 10 minutes)",
        without_query(&authorize_url)
    ));

    match real {
        None => {
            run.begin(
                Step::Consent,
                "Consenting in the Keap sandbox: GET the authorize URL, take Keap's redirect",
            )
            .await;
            let location = consent(&authorize_url, &redirect_uri)
                .await
                .map_err(at(Step::Consent))?;
            progress.ok(&format!(
                "redirected to {} with a code and the state",
                without_query(&location)
            ));

            run.begin(
                Step::Callback,
                "Following the redirect: the callback route turns it into an API Gateway v2 event for oauth-callback",
            )
            .await;
            follow_redirect(&location)
                .await
                .map_err(at(Step::Callback))?;
        }
        Some(real) => {
            run.begin(
                Step::Consent,
                "Waiting for your consent in Keap (open the link below in a browser)",
            )
            .await;
            wait_for_consent(progress, real, &authorize_url, callback_port, served)
                .await
                .map_err(at(Step::Consent))?;
            progress
                .ok("Keap redirected to the callback and the page said the connection is ready");
            run.begin(Step::Callback, "Checking what the callback stored")
                .await;
        }
    }
    let connection = read_connection(&store, &connection_id)
        .await
        .map_err(at(Step::Callback))?;
    if connection.generation != 1 || connection.status != ConnectionStatus::Active {
        return Err(at(Step::Callback)(format!(
            "expected generation 1, active; found generation {}, {}",
            connection.generation,
            connection.status.as_str()
        )));
    }
    progress.ok(&format!(
        "connection `default` stored: generation 1, active, Keap account {}",
        connection.keap_app.as_deref().unwrap_or("unknown")
    ));
    // The lifecycle event the authorization published (docs/events.md), as a rule delivered it.
    let event = resources::receive_event(&sdk, &queues.connection, 5)
        .await
        .map_err(at(Step::Callback))?
        .ok_or_else(|| {
            at(Step::Callback)(format!(
                "no lifecycle event reached queue {} within 5 s",
                resources::EVENTS_QUEUE
            ))
        })?;
    progress.ok(&format!(
        "event on {}: {} {}",
        resources::EVENT_BUS,
        event["detail-type"].as_str().unwrap_or("?"),
        event["detail"]
    ));

    run.begin(
        Step::Refresh,
        "Forcing a refresh: invoke token-refresher {\"connection_id\": \"default\", \"force\": true}",
    )
    .await;
    let summary = invoke(
        &token_refresher,
        json!({"connection_id": CONNECTION, "force": true}),
    )
    .await
    .map_err(at(Step::Refresh))?;
    if summary.get("refreshed").and_then(Value::as_u64) != Some(1) {
        return Err(at(Step::Refresh)(format!(
            "expected one refreshed connection, the refresher answered {summary}"
        )));
    }
    let refreshed = read_connection(&store, &connection_id)
        .await
        .map_err(at(Step::Refresh))?;
    if refreshed.generation != 2 || refreshed.refreshed_at.is_none() {
        return Err(at(Step::Refresh)(format!(
            "expected generation 2 with a refresh time; found generation {}",
            refreshed.generation
        )));
    }
    progress.ok("generation 2: Keap issued a new pair and the old refresh token is spent");

    let request = upsert_request(real);
    run.begin(
        Step::Upsert,
        &format!(
            "Upserting the ButtonPush contact: invoke contact-upsert {}",
            redacted_request(&request)
        ),
    )
    .await;
    let answer = invoke(&contact_upsert, request)
        .await
        .map_err(at(Step::Upsert))?;
    let contact_id = answer
        .get("contact_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| at(Step::Upsert)(format!("no contact_id in {answer}")))?;
    let created = answer.get("created").and_then(Value::as_bool) == Some(true);
    if let Some(sandbox) = &sandbox {
        verify_contact(sandbox, contact_id).map_err(at(Step::Upsert))?;
    }
    progress.ok(&format!(
        "contact {contact_id} {}; answer {answer}",
        if created { "created" } else { "updated" }
    ));

    run.begin(
        Step::Hooks,
        "Subscribing to Keap's contact.add (invoke operator {\"subscribe_hooks\": {\"connection_id\": \"default\", \"event_keys\": [\"contact.add\"]}}) and reading Keap's delivery back from EventBridge",
    )
    .await;
    match &sandbox {
        Some(sandbox) => progress.ok(&hooks::subscribe_deliver_and_read_back(
            progress,
            &operator,
            sandbox,
            &sdk,
            &queues.keap,
            contact_id,
        )
        .await
        .map_err(at(Step::Hooks))?),
        // Subscribing would point real Keap at 127.0.0.1, where it can deliver nothing.
        None => progress.skipped(
            "the real Keap delivers only to a public HTTPS URL, and this run's keap-hooks \
             listens on 127.0.0.1; a deployed stage subscribes with the operator's \
             subscribe_hooks (docs/events.md, \"Keap changes\")",
        ),
    }

    let path = format!("/v1/contacts/{contact_id}");
    run.begin(
        Step::Proxy,
        &format!(
            "Reading the contact back through keap-proxy: invoke keap-proxy \
             {{\"connection_id\": \"default\", \"method\": \"GET\", \"path\": \"{path}\"}}"
        ),
    )
    .await;
    let answer = invoke(
        &keap_proxy,
        json!({"connection_id": CONNECTION, "method": "GET", "path": path}),
    )
    .await
    .map_err(at(Step::Proxy))?;
    progress.ok(&proxy_summary(&answer, contact_id).map_err(at(Step::Proxy))?);

    run.begin(
        Step::Vend,
        &format!(
            "A token for your own SDK: invoke access-token {{\"connection_id\": \"default\", \
             \"min_valid_secs\": 300}}, then GET {path} at Keap with it directly"
        ),
    )
    .await;
    let vended = invoke(
        &access_token,
        json!({"connection_id": CONNECTION, "min_valid_secs": 300}),
    )
    .await
    .map_err(at(Step::Vend))?;
    progress.ok(&use_vended_token(&vended, &path)
        .await
        .map_err(at(Step::Vend))?);

    run.begin(Step::Status, "Connections (keapalive-admin status)")
        .await;
    let connections = store
        .scan_connections()
        .await
        .map_err(|e| at(Step::Status)(e.to_string()))?;
    let rows = keapalive_admin::status::rows(&connections.connections, &connections.malformed);
    println!();
    print!(
        "{}",
        keapalive_admin::format::table(&rows, now_epoch_secs())
    );
    println!();
    progress.ok("");

    Ok(Outcome {
        generation: refreshed.generation,
        contact_id,
        created,
    })
}

/// The function binaries, running, and the routes the operator's hook commands need.
struct Functions {
    oauth_callback: LocalFunction,
    token_refresher: LocalFunction,
    contact_upsert: LocalFunction,
    operator: LocalFunction,
    keap_proxy: LocalFunction,
    access_token: LocalFunction,
    hook_routes: HookRoutes,
}

/// Starts every function with `env`; the operator last, because it is also told where the hook
/// routes to keap-proxy and keap-hooks listen, and those need the two running.
async fn start_functions(
    env: &[(String, String)],
    supervisor: &Supervisor,
) -> Result<Functions, String> {
    let start = |name| functions::start(name, env, supervisor);
    let keap_proxy = start(functions::KEAP_PROXY).await?;
    let keap_hooks = start(functions::KEAP_HOOKS).await?;
    let hook_routes = HookRoutes::start(&keap_proxy, &keap_hooks).await?;
    let mut operator_env = env.to_vec();
    operator_env.extend(hook_routes.operator_env());
    Ok(Functions {
        oauth_callback: start(functions::OAUTH_CALLBACK).await?,
        token_refresher: start(functions::TOKEN_REFRESHER).await?,
        contact_upsert: start(functions::CONTACT_UPSERT).await?,
        access_token: start(functions::ACCESS_TOKEN).await?,
        operator: functions::start(functions::OPERATOR, &operator_env, supervisor).await?,
        keap_proxy,
        hook_routes,
    })
}

async fn start_sandbox() -> Result<Sandbox, String> {
    let sandbox = Sandbox::start()
        .await
        .map_err(|e| format!("cannot start the sandbox: {e}"))?;
    sandbox.register_client(SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET);
    // The ButtonPush account already has the field and the tag, as a real Keap account would.
    sandbox.add_custom_field(DEFAULT_APP, CUSTOM_FIELD, "Text");
    sandbox.add_tag(DEFAULT_APP, TAG);
    // Keap waits 30-60 s before a hook delivery's first attempt; the run should not. Its retries
    // shrink alike, while an answer still gets Keap's full 30 s (a debug build may be slow).
    sandbox.set_hook_delay_scale(HOOK_DELAY_SCALE);
    sandbox.set_hook_timeout_scale(1.0);
    Ok(sandbox)
}

/// The functions' configuration contract (docs/design.md, "Configuration") for this run.
fn function_env(
    endpoint: &str,
    redirect_uri: &str,
    sandbox: Option<&Sandbox>,
) -> Vec<(String, String)> {
    let mut env = resources::aws_env(endpoint);
    for (name, value) in [
        ("KEAPALIVE_TABLE", resources::TABLE),
        ("KEAPALIVE_CLIENT_SECRET_ID", resources::CLIENT_SECRET_ID),
        ("KEAPALIVE_REDIRECT_URI", redirect_uri),
        ("KEAPALIVE_STAGE", "local"),
        ("KEAPALIVE_EVENT_BUS", resources::EVENT_BUS),
    ] {
        env.push((name.to_owned(), value.to_owned()));
    }
    match sandbox {
        Some(sandbox) => {
            env.push(("KEAP_AUTHORIZE_URL".into(), sandbox.authorize_url()));
            env.push(("KEAP_TOKEN_URL".into(), sandbox.token_url()));
            env.push(("KEAP_API_BASE_URL".into(), sandbox.api_base_url()));
        }
        // The real Keap unless this process was told otherwise (tests point them at a sandbox).
        None => {
            for name in KEAP_URL_VARIABLES {
                if let Ok(value) = std::env::var(name) {
                    env.push((name.to_owned(), value));
                }
            }
        }
    }
    env
}

async fn invoke(function: &LocalFunction, event: Value) -> Result<Value, String> {
    function.invoke(event).await.map_err(|e| {
        format!(
            "{} answered {}: {}",
            function.name, e.error_type, e.error_message
        )
    })
}

/// What a browser does on the consent screen, minus the clicking: Keap answers the authorize
/// URL with a redirect to the redirect URI.
async fn consent(authorize_url: &str, redirect_uri: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(authorize_url)
        .send()
        .await
        .map_err(|e| format!("GET authorize URL: {e}"))?;
    let status = response.status();
    if !status.is_redirection() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!(
            "the authorize URL answered {status}, not a redirect: {body}"
        ));
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the authorize URL answered {status} without a Location"))?
        .to_owned();
    if !location.starts_with(redirect_uri) {
        return Err(format!(
            "Keap redirected to {}, not to the redirect URI {redirect_uri}",
            without_query(&location)
        ));
    }
    if location.contains("error=") {
        return Err(format!(
            "Keap redirected with an error: {}",
            location.split_once('?').map(|(_, q)| q).unwrap_or("")
        ));
    }
    Ok(location)
}

async fn follow_redirect(location: &str) -> Result<(), String> {
    let response = reqwest::get(location)
        .await
        .map_err(|e| format!("GET the callback: {e}"))?;
    let status = response.status();
    let page = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "the callback page answered {status}: {}",
            page_text(&page)
        ));
    }
    Ok(())
}

async fn wait_for_consent(
    progress: &Progress,
    real: &RealKeap,
    authorize_url: &str,
    callback_port: u16,
    mut served: mpsc::UnboundedReceiver<u16>,
) -> Result<(), String> {
    progress.note(
        "Use a Keap developer app of its own for local runs: authorizing the Keap account with a \
         deployed stage's client id here replaces that stage's grant.",
    );
    progress.note("Open this link in a browser, sign in to Keap and allow access:");
    println!("\n    {authorize_url}\n");
    progress.note(&format!(
        "Keap then redirects the browser to {} which must reach 127.0.0.1:{callback_port} \
         (an HTTPS tunnel).",
        real.redirect_uri
    ));
    let started = Instant::now();
    let give_up = started + real.consent_timeout;
    loop {
        let status = tokio::select! {
            status = served.recv() => status,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                if Instant::now() >= give_up {
                    return Err(format!(
                        "no callback within {:?}: was the link opened, and does the redirect \
                         URI reach 127.0.0.1:{callback_port}?",
                        real.consent_timeout
                    ));
                }
                progress.still_waiting(started, "for the browser to come back through the callback");
                continue;
            }
        };
        match status {
            Some(200) => return Ok(()),
            // A browser also asks for /favicon.ico and the like: not the callback.
            Some(404 | 405) => continue,
            Some(status) => {
                return Err(format!(
                    "the callback answered {status}: the browser shows why (denied, expired \
                     link, wrong client secret ...); run again to get a new link"
                ));
            }
            None => return Err("the callback server stopped".to_owned()),
        }
    }
}

async fn read_connection(
    store: &DynamoDbTokenStore,
    id: &ConnectionId,
) -> Result<Connection, String> {
    store
        .get(id)
        .await
        .map_err(|e| format!("reading connection `{id}`: {e}"))?
        .ok_or_else(|| format!("connection `{id}` is not in the table"))
}

fn upsert_request(real: Option<&RealKeap>) -> Value {
    match real {
        None => json!({
            "connection_id": CONNECTION,
            "contact": {
                "email": "ada@example.com",
                "given_name": "Ada",
                "family_name": "Lovelace",
                "custom_fields": { CUSTOM_FIELD: "blue" },
                "tags": [TAG],
            },
            "match_on": "email",
        }),
        Some(real) => json!({
            "connection_id": CONNECTION,
            "contact": {
                "email": real.contact_email,
                "given_name": "Keapalive",
                "family_name": "Local Test",
                "tags": real.tags,
            },
            "match_on": "email",
        }),
    }
}

/// The request as a progress line may show it: the email redacted (a real run's is a person's).
fn redacted_request(request: &Value) -> Value {
    let mut shown = request.clone();
    if let Some(email) = shown.pointer_mut("/contact/email")
        && let Some(text) = email.as_str()
    {
        *email = Value::String(keapalive::redact::email(text));
    }
    shown
}

/// Uses access-token's answer the way a caller's SDK would: `GET {api_base_url}{path}` with the
/// bearer token. The line says the generation, how long the token lives and Keap's status;
/// never the token. `Err` unless Keap answered 200.
async fn use_vended_token(vended: &Value, path: &str) -> Result<String, String> {
    let field = |name: &str| vended.get(name).and_then(Value::as_str);
    let (Some(token), Some(base)) = (field("access_token"), field("api_base_url")) else {
        return Err("access-token's answer lacks access_token or api_base_url".to_owned());
    };
    let generation = vended
        .get("generation")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let expires_in = vended
        .get("expires_at")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        - now_epoch_secs();
    let status = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("Keap did not answer the vended token's request: {e}"))?
        .status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("Keap answered {status} to the vended token"));
    }
    Ok(format!(
        "token of generation {generation}, valid {} h {} min more; Keap answered 200 to GET {path} with it",
        expires_in / 3600,
        expires_in % 3600 / 60
    ))
}

/// keap-proxy's answer to `GET /v1/contacts/{id}` as a progress line: Keap's status and the
/// contact it found, its email redacted (a real run's is a person's). `Err` unless Keap answered
/// 200 with that contact.
fn proxy_summary(answer: &Value, contact_id: i64) -> Result<String, String> {
    let status = answer.get("status").and_then(Value::as_u64);
    let contact = answer.get("body").unwrap_or(&Value::Null);
    if status != Some(200) || contact.get("id").and_then(Value::as_i64) != Some(contact_id) {
        return Err(format!(
            "expected Keap's 200 with contact {contact_id}; keap-proxy answered status {}",
            status.map_or_else(|| "none".to_owned(), |s| s.to_string())
        ));
    }
    let text = |pointer: &str| contact.pointer(pointer).and_then(Value::as_str);
    let name = [text("/given_name"), text("/family_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let email = text("/email_addresses/0/email")
        .map(keapalive::redact::email)
        .unwrap_or_else(|| "no email".to_owned());
    let tags = contact
        .get("tag_ids")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok(format!(
        "Keap answered 200 (body_encoding {}): contact {contact_id} found, \"{name}\", {email}, {tags} tag(s)",
        answer
            .get("body_encoding")
            .and_then(Value::as_str)
            .unwrap_or("?")
    ))
}

/// The sandbox holds the contact with its email, custom field and tag.
fn verify_contact(sandbox: &Sandbox, contact_id: i64) -> Result<(), String> {
    let contacts = sandbox.contacts(DEFAULT_APP);
    let contact = contacts
        .iter()
        .find(|c| c.get("id").and_then(Value::as_i64) == Some(contact_id))
        .ok_or_else(|| format!("the sandbox has no contact {contact_id}"))?;
    let email = contact
        .pointer("/email_addresses/0/email")
        .and_then(Value::as_str);
    if email != Some("ada@example.com") {
        return Err(format!("contact {contact_id} has email {email:?}"));
    }
    // Adding an existing field or tag returns its id.
    let field_id = sandbox.add_custom_field(DEFAULT_APP, CUSTOM_FIELD, "Text");
    let has_field = contact
        .get("custom_fields")
        .and_then(Value::as_array)
        .is_some_and(|fields| {
            fields.iter().any(|f| {
                f.get("id").and_then(Value::as_i64) == Some(field_id)
                    && f.get("content").and_then(Value::as_str) == Some("blue")
            })
        });
    if !has_field {
        return Err(format!(
            "contact {contact_id} lacks \"{CUSTOM_FIELD}\": blue: {contact}"
        ));
    }
    let tag_id = sandbox.add_tag(DEFAULT_APP, TAG);
    let tagged = contact
        .get("tag_ids")
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|id| id.as_i64() == Some(tag_id)));
    if !tagged {
        return Err(format!(
            "contact {contact_id} lacks the tag {TAG}: {contact}"
        ));
    }
    Ok(())
}

/// A URL without its query: the state and code in it are credentials for a few minutes.
fn without_query(url: &str) -> &str {
    url.split_once('?').map(|(base, _)| base).unwrap_or(url)
}

/// The readable text of a small HTML page, for an error line.
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            without_query("http://127.0.0.1:1/oauth/callback?code=c&state=s"),
            "http://127.0.0.1:1/oauth/callback"
        );
        let shown = redacted_request(&upsert_request(None));
        assert_eq!(shown["contact"]["email"], "a***@example.com");
    }

    #[test]
    fn the_proxy_line_redacts_the_email_and_needs_the_contact() {
        let answer = json!({"status": 200, "body_encoding": "json", "headers": {},
            "body": {"id": 7, "given_name": "Ada", "family_name": "Lovelace",
                     "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}],
                     "tag_ids": [90]}});
        let line = proxy_summary(&answer, 7).unwrap();
        assert!(line.contains("contact 7 found, \"Ada Lovelace\", a***@example.com, 1 tag(s)"));
        assert!(!line.contains("ada@example.com"), "{line}");
        assert!(proxy_summary(&answer, 8).is_err());
        let missing = json!({"status": 404, "body": {"message": "Contact with id 7 not found"}});
        assert!(
            proxy_summary(&missing, 7)
                .unwrap_err()
                .contains("status 404")
        );
    }

    #[test]
    fn page_text_strips_markup() {
        assert_eq!(
            page_text("<html><h1>Denied</h1><p>Start again.</p></html>"),
            "Denied Start again."
        );
    }
}
