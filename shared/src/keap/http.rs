//! The one `reqwest::Client` a container uses for Keap, built at init so its connection pool
//! and TLS session survive across warm invocations.

use std::time::Duration;

/// Connect timeout: long enough for a cold TLS handshake, short enough that a dead route
/// fails well inside the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `tls`: the container's shared roots ([`crate::tls::TlsRoots::reqwest_tls`]), so building this
/// client reads and parses no certificate.
pub fn build_client(
    request_timeout: Duration,
    tls: rustls::ClientConfig,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT.min(request_timeout))
        .timeout(request_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("keapalive/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a transport error happened before the request could have reached Keap.
///
/// Only a failed connect is certain: once bytes were written, Keap may have acted on them
/// (a refresh token may be spent) even though no answer came back.
pub fn never_sent(error: &reqwest::Error) -> bool {
    error.is_connect() || error.is_builder()
}

/// `Retry-After` in seconds (Keap sends seconds when it sends it at all).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
