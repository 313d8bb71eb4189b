//! The stack's HTTP API in front of one function, for a route with one path parameter
//! (`POST /keap/hooks/{token}`): each request becomes an API Gateway payload 2.0 event, body
//! and `pathParameters` included, for a function process behind a test [`RuntimeApi`]; its
//! answer goes back as the HTTP response. A failed invocation is API Gateway's 500.
//! <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html>

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::local::apigw::{http_event, http_response, into_axum_response, plain_response};
use crate::runtime_api::RuntimeApi;

/// Serves until dropped.
pub struct HttpFront {
    address: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for HttpFront {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Route {
    function: Arc<RuntimeApi>,
    /// `/keap/hooks/`: what follows is the parameter.
    prefix: &'static str,
    parameter: &'static str,
}

impl HttpFront {
    /// Forwards `prefix{parameter}` to `function`; other paths get API Gateway's 404. Panics
    /// when no port is free (tests); [`HttpFront::try_start`] says why instead.
    pub async fn start(
        function: Arc<RuntimeApi>,
        prefix: &'static str,
        parameter: &'static str,
    ) -> Self {
        Self::try_start(function, prefix, parameter)
            .await
            .expect("bind the HTTP front on 127.0.0.1")
    }

    /// [`HttpFront::start`], for `make local`: a port that cannot be bound is its step's
    /// failure, not a panic.
    pub async fn try_start(
        function: Arc<RuntimeApi>,
        prefix: &'static str,
        parameter: &'static str,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new().fallback(forward).with_state(Route {
            function,
            prefix,
            parameter,
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Ok(Self { address, server })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

async fn forward(
    State(route): State<Route>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(value) = uri
        .path()
        .strip_prefix(route.prefix)
        .filter(|v| !v.is_empty() && !v.contains('/'))
    else {
        return plain_response(StatusCode::NOT_FOUND, "{\"message\":\"Not Found\"}".into());
    };
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let mut event = http_event(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        &headers,
        &peer.ip().to_string(),
    );
    event["pathParameters"] = json!({ route.parameter: value });
    event["routeKey"] = json!(format!("POST {}{{{}}}", route.prefix, route.parameter));
    // API Gateway passes a text body as is and anything else base64-encoded.
    match std::str::from_utf8(&body) {
        Ok(text) => event["body"] = json!(text),
        Err(_) => {
            event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
            event["isBase64Encoded"] = json!(true);
        }
    }
    // API Gateway's integration timeout is 30 s.
    let answer = match route.function.invoke(event, Duration::from_secs(30)).await {
        Ok(answer) => answer,
        Err(_) => {
            return plain_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"message\":\"Internal Server Error\"}".into(),
            );
        }
    };
    let Ok(page) = http_response(&answer) else {
        return plain_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"message\":\"Internal Server Error\"}".into(),
        );
    };
    into_axum_response(page)
}
