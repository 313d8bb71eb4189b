//! The local stand-in for the stack's HTTP API: `GET <any path>` becomes an API Gateway HTTP
//! API v2 event for the real oauth-callback binary, and its answer (the HTML page) goes back to
//! the browser. With an HTTPS tunnel in front, Keap's redirect lands here.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::apigw::{http_event, http_response, into_axum_response, plain_response};
use super::functions::LocalFunction;

/// Stops serving when dropped.
pub struct CallbackServer {
    server: JoinHandle<()>,
}

impl Drop for CallbackServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Shared {
    function: LocalFunction,
    /// The status of every page served: the driver waits for a 200.
    served: mpsc::UnboundedSender<u16>,
}

/// The callback's port, bound before oauth-callback starts: the function's redirect URI
/// (its configuration) must name the port.
pub struct CallbackListener {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
}

impl CallbackListener {
    /// Listens on `127.0.0.1:port` (0 picks a free port).
    pub async fn bind(port: u16) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("no local address: {e}"))?;
        Ok(Self { listener, address })
    }

    /// `http://127.0.0.1:<port>/oauth/callback`.
    pub fn callback_url(&self) -> String {
        format!(
            "http://{}{}",
            self.address,
            keapalive::authorization::CALLBACK_PATH
        )
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves every request through `oauth_callback`; the receiver gets each page's status.
    pub fn serve(
        self,
        oauth_callback: LocalFunction,
    ) -> (CallbackServer, mpsc::UnboundedReceiver<u16>) {
        let (served, served_rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(forward).with_state(Shared {
            function: oauth_callback,
            served,
        });
        let listener = self.listener;
        let server = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        (CallbackServer { server }, served_rx)
    }
}

async fn forward(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let event = http_event(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        &headers,
        &peer.ip().to_string(),
    );
    let answer = match shared.function.invoke(event).await {
        Ok(answer) => answer,
        Err(error) => {
            // API Gateway answers a failed integration with 500 and this body.
            let _ = shared.served.send(500);
            return plain_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{{\"message\":\"Internal Server Error\"}} ({})",
                    error.error_type
                ),
            );
        }
    };
    let page = match http_response(&answer) {
        Ok(page) => page,
        Err(reason) => {
            let _ = shared.served.send(500);
            return plain_response(StatusCode::INTERNAL_SERVER_ERROR, reason);
        }
    };
    let _ = shared.served.send(page.status);
    into_axum_response(page)
}
