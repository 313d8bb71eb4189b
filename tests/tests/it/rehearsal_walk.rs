//! The deploy rehearsal's walk (docs/deploy.md, "Deploy rehearsal"): the stack `make rehearse`
//! transformed (`target/rehearse/stack.json`) is created in this process's emulator through
//! moto's CloudFormation, every function binary starts with the environment the created stack
//! gives it and signs its AWS requests with its own access key id (its function name), and the
//! walk goes through them: start an authorization, consent in the sandbox, the callback, a
//! scheduled refresh of the due connection, upserts (direct, and a batch from the queue with a
//! record that is dead-lettered), a proxied GET, a vended token, a key registration and use,
//! and a removal. The emulator's request log, each request tagged with its step, goes to
//! `target/rehearse/requests.json`, and `infra/checks/rehearse_iam.py` evaluates it against each
//! function's role in infra/template.yaml: every request allowed, every statement needed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use keap_sandbox::{DEFAULT_APP, Sandbox};
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::DynamoDbTokenStore;
use keapalive::token_store::HookToken;
use keapalive_tests::emulator::{self, Emulator};
use keapalive_tests::fixture::{CLIENT_ID, CLIENT_SECRET, connection_id};
use keapalive_tests::local::callback_server::CallbackListener;
use keapalive_tests::local::functions::LocalFunction;
use keapalive_tests::runtime_api::{FunctionProcess, RuntimeApi, binary_path, spawn_function};
use keapalive_tests::workspace;
use serde_json::{Value, json};

const FUNCTIONS: [&str; 7] = [
    "operator",
    "oauth-callback",
    "token-refresher",
    "contact-upsert",
    "keap-proxy",
    "access-token",
    "keap-hooks",
];
/// A second Keap account, reached with a service account key.
const KEY_APP: &str = "sandbox02";
/// Shorter than the stack's refresh window (21,600 s): the authorized connection is due.
const DUE_LIFETIME_SECS: u64 = 3_600;

fn rehearse_dir() -> PathBuf {
    workspace::root().join("target/rehearse")
}

/// One function as the stack created it, running behind its own Runtime API.
struct Function {
    function_name: String,
    runtime: Arc<RuntimeApi>,
    _process: FunctionProcess,
}

struct Walk {
    sdk: SdkConfig,
    stack: Value,
    functions: BTreeMap<&'static str, Function>,
    /// The function each access key id belongs to (the function names the stack chose).
    callers: BTreeMap<String, &'static str>,
    /// The walk's requests so far, each tagged with its step.
    requests: Vec<Value>,
    seen: usize,
}

impl Walk {
    fn resource(&self, logical_id: &str, field: &str) -> String {
        self.stack["resources"][logical_id][field]
            .as_str()
            .unwrap_or_else(|| panic!("the stack has no {logical_id}.{field}"))
            .to_owned()
    }

    fn function(&self, name: &str) -> &Function {
        &self.functions[name]
    }

    async fn invoke(&self, name: &str, event: Value) -> Value {
        self.function(name)
            .runtime
            .invoke(event, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{name} answered {e}"))
    }

    /// Tags the functions' requests since the last mark with `step`; returns how many.
    async fn mark(&mut self, step: &str) -> usize {
        let mine: Vec<Value> = Emulator::shared()
            .request_log()
            .await
            .into_iter()
            .filter(|r| {
                r["caller"]
                    .as_str()
                    .is_some_and(|c| self.callers.contains_key(c))
            })
            .collect();
        let new = mine.len() - self.seen;
        for mut record in mine.into_iter().skip(self.seen) {
            let caller = record["caller"].as_str().unwrap_or_default().to_owned();
            record["function"] = json!(self.callers[caller.as_str()]);
            record["step"] = json!(step);
            self.requests.push(record);
        }
        self.seen += new;
        println!("step {step}: {new} AWS request(s)");
        new
    }

    /// An SQS client signing as `function` (Lambda's poller uses the function's role).
    fn sqs_as(&self, function: &str) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::config::Builder::from(&self.sdk)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                self.function(function).function_name.clone(),
                emulator::SECRET_ACCESS_KEY,
                None,
                None,
                "rehearsal-walk",
            )))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }
}

/// Creates the rehearsed stack in the shared emulator (moto's CloudFormation, server mode).
fn create_stack(stage: &str, callback_endpoint: &str) -> Value {
    let stack = rehearse_dir().join("stack.json");
    assert!(
        stack.exists(),
        "{} is missing: run `make rehearse` first (it transforms infra/template.yaml)",
        stack.display()
    );
    let out = rehearse_dir().join("walk-stack.json");
    let output = std::process::Command::new(emulator::python())
        .arg("-W")
        .arg("ignore")
        .arg(workspace::root().join("infra/checks/rehearse_stack.py"))
        .args(["--endpoint", Emulator::shared().endpoint_url()])
        .args(["--stage", stage])
        .args(["--callback-endpoint", callback_endpoint])
        .arg(&stack)
        .arg(&out)
        .output()
        .expect("run rehearse_stack.py");
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    assert!(
        output.status.success(),
        "creating the stack failed:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// The stack's environment for `name` (values as Lambda gives them: strings), pointed at the
/// emulator and the sandbox, signing as the function.
fn function_env(stack: &Value, name: &str, sandbox: &Sandbox) -> Vec<(String, String)> {
    let function = &stack["functions"][name];
    let function_name = function["function_name"].as_str().unwrap().to_owned();
    let mut env: Vec<(String, String)> = function["env"]
        .as_object()
        .unwrap_or_else(|| panic!("no environment for {name}"))
        .iter()
        .map(|(k, v)| {
            let value = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            (k.clone(), value)
        })
        .collect();
    // Substituted: Keap is the sandbox, AWS is the emulator.
    env.push(("KEAP_AUTHORIZE_URL".into(), sandbox.authorize_url()));
    env.push(("KEAP_TOKEN_URL".into(), sandbox.token_url()));
    env.push(("KEAP_API_BASE_URL".into(), sandbox.api_base_url()));
    env.extend(Emulator::shared().process_env());
    env.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID");
    env.push(("AWS_ACCESS_KEY_ID".into(), function_name.clone()));
    env.push(("AWS_LAMBDA_FUNCTION_NAME".into(), function_name));
    env
}

async fn start_function(stack: &Value, name: &'static str, sandbox: &Sandbox) -> Function {
    let runtime = Arc::new(RuntimeApi::start_named(name).await);
    let env = function_env(stack, name, sandbox);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = spawn_function(&binary_path(name), &env_refs, &runtime);
    assert!(
        runtime
            .wait_until_ready(Duration::from_secs(120))
            .await
            .is_some(),
        "{name} did not start with the stack's environment: {:?}\n{}",
        runtime.init_error(),
        process.output()
    );
    Function {
        function_name: stack["functions"][name]["function_name"]
            .as_str()
            .unwrap()
            .to_owned(),
        runtime,
        _process: process,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rehearsed_stack_runs_every_function_with_the_roles_it_grants() {
    let sandbox = Sandbox::start().await.expect("sandbox starts");
    sandbox.register_client(CLIENT_ID, CLIENT_SECRET);
    let listener = CallbackListener::bind(0).await.unwrap();
    let callback_endpoint = format!("http://127.0.0.1:{}", listener.port());
    // Unique per process: an external emulator (KEAPALIVE_TEST_AWS_ENDPOINT) may hold an
    // earlier walk's stack, whose function names are fixed by the stage.
    let stage = format!("walk{}", std::process::id() % 100_000);
    let stack = create_stack(&stage, &callback_endpoint);
    let sdk = Emulator::shared().sdk_config();

    // The deployer's one manual step (docs/deploy.md): the Keap app's credentials.
    let client_secret = stack["resources"]["OAuthClientSecret"]["ref"]
        .as_str()
        .unwrap()
        .to_owned();
    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&client_secret)
        .secret_string(json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).to_string())
        .send()
        .await
        .expect("store the client credentials");

    let mut functions = BTreeMap::new();
    let mut callers = BTreeMap::new();
    for name in FUNCTIONS {
        let function = start_function(&stack, name, &sandbox).await;
        callers.insert(function.function_name.clone(), name);
        functions.insert(name, function);
    }
    let mut walk = Walk {
        sdk,
        stack,
        functions,
        callers,
        requests: Vec::new(),
        seen: 0,
    };
    walk.mark("init").await;
    let table = walk.resource("ConnectionsTable", "ref");
    let store = DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&walk.sdk), &table);
    let oauth_callback = LocalFunction {
        name: "oauth-callback",
        runtime: walk.function("oauth-callback").runtime.clone(),
    };
    let (_callback_server, _served) = listener.serve(oauth_callback);

    // operator start_authorization → the sandbox's authorize page → oauth-callback.
    let started = walk
        .invoke(
            "operator",
            json!({"start_authorization": {"connection_id": "default"}}),
        )
        .await;
    let authorize_url = started["authorize_url"].as_str().unwrap().to_owned();
    walk.mark("start_authorization").await;
    sandbox.set_access_token_lifetime(DUE_LIFETIME_SECS);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let consent = browser.get(&authorize_url).send().await.unwrap();
    let location = consent.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.starts_with(&format!("{callback_endpoint}/oauth/callback?")),
        "Keap redirects to the stack's redirect URI"
    );
    let page = reqwest::get(&location).await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    let connection = store.get(&connection_id("default")).await.unwrap().unwrap();
    assert_eq!(connection.generation, 1);
    walk.mark("callback").await;

    // The connection expires within the refresh window: a scheduled run refreshes it. Its new
    // token lives an hour too, so access-token (asked for six hours) refreshes on demand.
    let scheduled = json!({
        "version": "0", "id": "c0ffee", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-23T10:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/keapalive-refresh"], "detail": {}
    });
    let summary = walk.invoke("token-refresher", scheduled).await;
    assert_eq!(summary["refreshed"], 1, "{summary}");
    walk.mark("scheduled_refresh").await;

    let upsert = |email: &str, connection: &str| {
        json!({"connection_id": connection, "match_on": "email",
               "contact": {"email": email, "given_name": "Ada"}})
    };
    let answer = walk
        .invoke("contact-upsert", upsert("ada@example.com", "default"))
        .await;
    assert!(answer["contact_id"].is_i64(), "{answer}");
    walk.mark("upsert_direct").await;

    // A producer sends two messages; Lambda's poller (the function's role) receives them, the
    // function dead-letters the invalid one, and the poller deletes the batch.
    let queue_url = walk.resource("UpsertQueue", "ref");
    let queue_arn = walk.resource("UpsertQueue", "arn");
    let producer = aws_sdk_sqs::Client::new(&walk.sdk);
    for body in [
        upsert("grace@example.com", "default").to_string(),
        json!({"connection_id": "default", "contact": {}}).to_string(),
    ] {
        producer
            .send_message()
            .queue_url(&queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let poller = walk.sqs_as("contact-upsert");
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let received = poller
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        messages.extend(received.messages.unwrap_or_default());
    }
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id(), "receiptHandle": m.receipt_handle(),
                "body": m.body(), "attributes": m.attributes().map(|a| a.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()),
                "messageAttributes": {}, "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn, "awsRegion": "us-east-1"
            })
        })
        .collect();
    let batch = walk
        .invoke("contact-upsert", json!({"Records": records}))
        .await;
    assert_eq!(batch["batchItemFailures"], json!([]), "{batch}");
    for m in &messages {
        poller
            .delete_message()
            .queue_url(&queue_url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    let dead = producer
        .receive_message()
        .queue_url(walk.resource("UpsertDeadLetterQueue", "ref"))
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(
        dead.messages().len(),
        1,
        "the invalid record is dead-lettered"
    );
    walk.mark("upsert_batch").await;

    let proxied = walk
        .invoke(
            "keap-proxy",
            json!({"connection_id": "default", "method": "GET", "path": "/v1/contacts"}),
        )
        .await;
    assert_eq!(proxied["status"], 200, "{proxied}");
    walk.mark("proxy_get").await;

    // The scheduled refresh was moments ago, and a connection rotates for expiry at most once a
    // minute: the deployer's hand moves that refresh two minutes back instead of waiting.
    aws_sdk_dynamodb::Client::new(&walk.sdk)
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("conn#default".into()))
        .update_expression("SET refreshed_at = :then, expiry_rotation_at = :then")
        .expression_attribute_values(
            ":then",
            AttributeValue::N((now_epoch_secs() - 120).to_string()),
        )
        .send()
        .await
        .expect("move the refresh back");
    let vended = walk
        .invoke(
            "access-token",
            json!({"connection_id": "default", "min_valid_secs": 21_600}),
        )
        .await;
    assert!(vended["access_token"].is_string(), "access-token answered");
    walk.mark("access_token").await;

    // A service account key under the stack's key prefix, registered and then used.
    let key = sandbox.issue_service_account_key(KEY_APP);
    let key_secret = format!("keapalive/{stage}/keys/keyed");
    let key_secret_arn = aws_sdk_secretsmanager::Client::new(&walk.sdk)
        .create_secret()
        .name(&key_secret)
        .secret_string(key)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let registered = walk
        .invoke(
            "operator",
            json!({"register_service_account_key": {"connection_id": "keyed", "secret_id": key_secret}}),
        )
        .await;
    assert!(registered.is_object(), "{registered}");
    walk.mark("register_service_account_key").await;
    let answer = walk
        .invoke("contact-upsert", upsert("linus@example.com", "keyed"))
        .await;
    assert!(answer["contact_id"].is_i64(), "{answer}");
    let proxied = walk
        .invoke(
            "keap-proxy",
            json!({"connection_id": "keyed", "method": "GET", "path": "/v1/contacts"}),
        )
        .await;
    assert_eq!(proxied["status"], 200, "{proxied}");
    walk.mark("key_use").await;

    // Keap delivers a change to a subscription (its item as subscribe_hooks writes it) through
    // the hooks route: keap-hooks reads the hook item and puts the event.
    let hook_token = HookToken::generate().unwrap();
    store
        .put_hook(
            &hook_token.hash(),
            &connection_id("default"),
            "contact.add",
            now_epoch_secs(),
        )
        .await
        .unwrap();
    let hooks_path = format!("/keap/hooks/{}", hook_token.expose_secret());
    let mut delivery = keapalive_tests::local::apigw::http_event(
        "POST",
        &hooks_path,
        "",
        &[("content-type".to_owned(), "application/json".to_owned())],
        "127.0.0.1",
    );
    delivery["pathParameters"] = json!({"token": hook_token.expose_secret()});
    delivery["body"] = json!(
        json!({"event_key": "contact.add", "object_type": "contact",
               "object_keys": [{"id": 1, "apiUrl": "", "timestamp": "2026-12-06T10:00:00Z"}]})
        .to_string()
    );
    let published = walk.invoke("keap-hooks", delivery).await;
    assert_eq!(published["statusCode"], 200, "{published}");
    walk.mark("keap_hooks").await;

    // A removal retires the connection's open link too.
    walk.invoke(
        "operator",
        json!({"start_authorization": {"connection_id": "default"}}),
    )
    .await;
    walk.mark("start_authorization").await;
    let removed = walk
        .invoke(
            "operator",
            json!({"remove_connection": {"connection_id": "default"}}),
        )
        .await;
    assert!(removed.is_object(), "{removed}");
    assert!(
        store
            .get(&connection_id("default"))
            .await
            .unwrap()
            .is_none()
    );
    walk.mark("remove_connection").await;

    let per_function: BTreeMap<&str, usize> = FUNCTIONS
        .iter()
        .map(|f| {
            (
                *f,
                walk.requests.iter().filter(|r| r["function"] == *f).count(),
            )
        })
        .collect();
    println!("requests per function: {per_function:?}");
    let log = json!({
        "stage": stage,
        "written_at": now_epoch_secs(),
        "functions": walk.callers,
        "resources": walk.stack["resources"],
        "secrets": {key_secret: key_secret_arn, client_secret.clone(): client_secret},
        "keap_app": DEFAULT_APP,
        "requests": walk.requests,
    });
    let path = rehearse_dir().join("requests.json");
    std::fs::write(&path, serde_json::to_string_pretty(&log).unwrap()).unwrap();

    let output = std::process::Command::new(emulator::python())
        .arg(workspace::root().join("infra/checks/rehearse_iam.py"))
        .arg(workspace::root().join("infra/template.yaml"))
        .arg(&path)
        .output()
        .expect("run rehearse_iam.py");
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    assert!(
        output.status.success(),
        "the roles do not fit the walk:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
