//! Helpers shared by the test areas (first written for `contact_upsert` and `service_account_key`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use keap_sandbox::{AuthKind, RecordedRequest};
use keapalive::clock::now_epoch_secs;
use keapalive::contact::{UpsertError, UpsertResponse, UpsertService};
use keapalive::deadline::Deadline;
use keapalive::telemetry::MetricSink;
use keapalive_tests::aws::create_secret_string;
use keapalive_tests::fixture::{Fixture, connection_id};
use serde_json::{Value, json};

pub type Service = UpsertService;

/// One warm container's upsert service, its emitted metric documents captured.
pub struct Container {
    pub service: Service,
    pub metrics: Arc<Mutex<Vec<Value>>>,
}

pub fn container(fx: &Fixture, extra: &[(&str, &str)]) -> Container {
    let metrics = Arc::new(Mutex::new(Vec::new()));
    let sink = metrics.clone();
    let service = fx
        .clients(extra)
        .upsert_service()
        .with_metric_sink(MetricSink::new(move |m, stage| {
            sink.lock().unwrap().push(m.to_emf(stage))
        }));
    Container { service, metrics }
}

impl Container {
    pub fn metric_total(&self, name: &str) -> f64 {
        self.metrics
            .lock()
            .unwrap()
            .iter()
            .filter_map(|doc| doc.get(name).and_then(Value::as_f64))
            .sum()
    }
}

pub fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

pub async fn upsert(service: &Service, request: Value) -> Result<UpsertResponse, UpsertError> {
    let answer = service
        .handle(request.to_string().as_bytes(), deadline())
        .await?;
    Ok(serde_json::from_value(answer).expect("the answer is an UpsertResponse"))
}

/// An SQS event as Lambda delivers it; `records` are (messageId, body).
pub fn sqs_event(records: &[(&str, &str)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| {
            json!({
                "messageId": id,
                "receiptHandle": format!("handle-{id}"),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1700000000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1700000000001"
                },
                "messageAttributes": {},
                "md5OfBody": "0",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:contacts",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Runs a batch through the real event type and returns the failed message ids, sorted.
/// `run_batch` for records built at run time: `(message id, body)` pairs.
pub async fn run_owned_batch(service: &Service, records: &[(String, String)]) -> Vec<String> {
    let borrowed: Vec<(&str, &str)> = records
        .iter()
        .map(|(id, body)| (id.as_str(), body.as_str()))
        .collect();
    run_batch(service, &borrowed).await
}

pub async fn run_batch(service: &Service, records: &[(&str, &str)]) -> Vec<String> {
    let event: SqsEvent = serde_json::from_value(sqs_event(records)).expect("SqsEvent");
    let response = service
        .handle_batch(event, deadline())
        .await
        .expect("the batch is answered");
    let mut failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    failed.sort();
    failed
}

/// Requests to Keap's REST API (not the token endpoint).
pub fn api_requests(fx: &Fixture) -> Vec<RecordedRequest> {
    fx.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/crm/rest/"))
        .collect()
}

pub fn refresh_requests(fx: &Fixture) -> usize {
    fx.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token" && r.grant_type.as_deref() == Some("refresh_token"))
        .count()
}

pub fn token_endpoint_requests(fx: &Fixture) -> usize {
    fx.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .count()
}

pub fn all_used_api_key(requests: &[RecordedRequest]) -> bool {
    requests.iter().all(|r| r.auth == AuthKind::ApiKey)
}

/// A service-account-key connection: the key in a fresh secret, the connection registered.
/// Returns (key, secret id).
pub async fn seed_key_connection(fx: &Fixture, id: &str, app: &str) -> (String, String) {
    let key = fx.sandbox.issue_service_account_key(app);
    let secret_id = create_secret_string(&fx.sdk, &key).await;
    fx.store()
        .register_service_account_key(&connection_id(id), &secret_id, Some(app), now_epoch_secs())
        .await
        .expect("register the key connection");
    (key, secret_id)
}

/// The contact whose EMAIL1 is `email`, from the sandbox's state.
pub fn contact_with_email(fx: &Fixture, app: &str, email: &str) -> Option<Value> {
    fx.sandbox.contacts(app).into_iter().find(|c| {
        c["email_addresses"]
            .as_array()
            .is_some_and(|list| list.iter().any(|e| e["email"] == email))
    })
}

pub fn tag_ids(contact: &Value) -> Vec<i64> {
    contact["tag_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Held by the tests that load the one shared emulator hardest (hundreds of conditional writes
/// at once: `refresh_race`, `refresh_scale`), so no two of them run at the same time. On a
/// loaded 2-core machine two of them together starve each other's SDK calls into the 3 s
/// attempt timeout, a failure of the machine, not of the protocol.
pub async fn one_heavy_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A plain HTTP listener on 127.0.0.1 that records every byte any client sends it and answers
/// each connection `200 {}`: the "other host" a redirect names. Whatever a client that follows
/// the redirect would deliver (a refresh token in a form, an API key header) lands in
/// [`CaptureServer::received`].
pub struct CaptureServer {
    pub url: String,
    received: Arc<Mutex<Vec<u8>>>,
}

impl CaptureServer {
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    while let Ok(Ok(read @ 1..)) =
                        tokio::time::timeout(Duration::from_millis(300), socket.read(&mut chunk))
                            .await
                    {
                        sink.lock().unwrap().extend_from_slice(&chunk[..read]);
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                        .await;
                });
            }
        });
        Self { url, received }
    }

    /// Everything received so far, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// A warm contact-upsert binary against `fx` (its environment contract, the emulator, and
/// `extra` on top), started as Lambda starts it; panics with its output if init fails.
pub async fn upsert_binary(
    fx: &Fixture,
    extra: &[(&str, &str)],
) -> (
    keapalive_tests::runtime_api::RuntimeApi,
    keapalive_tests::runtime_api::FunctionProcess,
) {
    function_binary(fx, "contact-upsert", extra).await
}

/// A warm binary of one of the directly invoked functions (`contact-upsert`, `keap-proxy`,
/// `access-token`) against `fx`, as [`upsert_binary`].
pub async fn function_binary(
    fx: &Fixture,
    name: &str,
    extra: &[(&str, &str)],
) -> (
    keapalive_tests::runtime_api::RuntimeApi,
    keapalive_tests::runtime_api::FunctionProcess,
) {
    use keapalive_tests::runtime_api::{RuntimeApi, binary_path, spawn_function};
    let runtime = RuntimeApi::start_named(name).await;
    let mut env = fx.env(&[]);
    env.retain(|(k, _)| k != "KEAPALIVE_REDIRECT_URI");
    env.extend(keapalive_tests::emulator::Emulator::shared().process_env());
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let function = spawn_function(&binary_path(name), &env, &runtime);
    assert!(
        runtime
            .wait_until_ready(Duration::from_secs(120))
            .await
            .is_some(),
        "init failed: {:?}\n{}",
        runtime.init_error(),
        function.output()
    );
    (runtime, function)
}

/// Records on `id`'s item that Keap first confirmed rejecting its key `secs_ago` seconds ago
/// (`key_rejected_since`): how a test moves a key rejection into its marking window (the
/// recheck interval + 30 s to 10 minutes after it) without waiting for it.
pub async fn key_rejected_since_secs_ago(fx: &Fixture, id: &str, secs_ago: i64) {
    use aws_sdk_dynamodb::types::AttributeValue;
    aws_sdk_dynamodb::Client::new(&fx.sdk)
        .update_item()
        .table_name(&fx.table)
        .key("pk", AttributeValue::S(format!("conn#{id}")))
        .update_expression("SET key_rejected_since = :since")
        .expression_attribute_values(
            ":since",
            AttributeValue::N((now_epoch_secs() - secs_ago).to_string()),
        )
        .send()
        .await
        .expect("set key_rejected_since");
}
