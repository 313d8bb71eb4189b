//! The one `reqwest::Client` a container uses for Keap, built at init so its connection pool
//! and TLS session survive across warm invocations.

use std::time::Duration;

/// Connect timeout: long enough for a cold TLS handshake, short enough that a dead route
/// fails well inside the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `tls`: the container's shared roots ([`crate::tls::TlsRoots::reqwest_tls`]), so building this
/// client reads and parses no certificate.
///
/// Follows no redirect: a 307 from the token endpoint would re-post the refresh token (on the
/// code exchange, the client secret) to whatever host it names, and a redirected REST call would
/// carry `X-Keap-API-Key` along. A 3xx comes back as an answer; see [`redirect_target`].
pub fn build_client(
    request_timeout: Duration,
    tls: rustls::ClientConfig,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
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

/// Where a 3xx pointed, for the log: the `Location` host only (its path and query may hold
/// anything), never followed.
pub fn redirect_target(headers: &reqwest::header::HeaderMap) -> String {
    let Some(location) = headers
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
    else {
        return "no Location".to_owned();
    };
    match url::Url::parse(location) {
        Ok(url) => url.host_str().unwrap_or("no host").to_owned(),
        Err(_) => "a relative Location on the same host".to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::redirect_target;
    use reqwest::header::{HeaderMap, HeaderValue, LOCATION};

    #[test]
    fn a_redirect_is_named_by_its_host_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(redirect_target(&headers), "no Location");
        headers.insert(
            LOCATION,
            HeaderValue::from_static("https://evil.example:8443/token?refresh_token=x"),
        );
        assert_eq!(redirect_target(&headers), "evil.example");
        headers.insert(LOCATION, HeaderValue::from_static("/elsewhere?code=x"));
        assert_eq!(
            redirect_target(&headers),
            "a relative Location on the same host"
        );
    }
}
