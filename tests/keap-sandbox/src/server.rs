//! The accept loop. Each connection is served by hyper directly (not `axum::serve`) so that a
//! fault can close a connection without sending a single response byte.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::gate::DropConnection;

/// Runs until `shutdown`'s sender is dropped; then open connections close too.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<()>,
) {
    let service = TowerToHyperService::new(router);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, service.clone(), shutdown.clone()));
                }
                Err(error) => {
                    // Usually EMFILE under a large benchmark: back off instead of spinning.
                    tracing::warn!(%error, "keap sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    mut shutdown: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let abort = Arc::new(Notify::new());
    let abort_for_requests = abort.clone();
    let per_request = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let service = service.clone();
        let abort = abort_for_requests.clone();
        async move {
            // Handled on its own task, so a request runs to completion even when the client
            // hangs up (as on a real server): a timed-out refresh still rotates the token.
            let response: Response = match tokio::spawn(service.call(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_panicked) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
            if response.extensions().get::<DropConnection>().is_some() {
                abort.notify_one();
                // Never answer: the connection future is dropped, closing the socket.
                std::future::pending::<()>().await;
            }
            Ok::<Response<Body>, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), per_request);
    tokio::select! {
        _ = connection => {}
        () = abort.notified() => {}
        _ = shutdown.changed() => {}
    }
}
