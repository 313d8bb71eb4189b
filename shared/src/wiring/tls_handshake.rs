//! Real handshakes: Keap's client (reqwest over `TlsRoots::reqwest_tls`, built as the functions
//! build it) and an AWS SDK client (over `TlsRoots::aws_http_client`, whose connector parses the
//! PEM roots on its first call) against a local TLS server whose certificate is signed by a CA
//! made in the test, which no root program knows. Here, in the composition root, because the
//! roots come from `Config` as a function's init builds them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::config::{Config, Requirements};
use crate::tls::{RootSource, TlsRoots};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA (PEM) and a server certificate for `localhost` that it signed.
struct TestPki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn make_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "keapalive test CA (made in the test)",
    );
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.der().clone(),
        server_key: server_key.serialize_der(),
    }
}

/// A TLS server on 127.0.0.1 answering every HTTP/1.1 request with `200` and `body` (JSON);
/// counts the requests it answered (so, handshakes that succeeded).
async fn tls_server(pki: &TestPki, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key.clone().into()),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return; // the client refused the certificate
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(read @ 1..) = tls.read(&mut chunk).await else {
                        return;
                    };
                    request.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(response.as_bytes()).await.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, answered)
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("keapalive-handshake-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("temp file");
    path
}

/// The roots a function would build from these `KEAPALIVE_*` variables (through `Config`).
fn roots_from(vars: &[(&str, &str)]) -> TlsRoots {
    let mut all: Vec<(String, String)> = vec![
        ("KEAPALIVE_TABLE".into(), "t".into()),
        ("KEAPALIVE_CLIENT_SECRET_ID".into(), "s".into()),
    ];
    all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = Config::from_vars(&all, Requirements::default()).expect("configuration");
    TlsRoots::load(&config.tls).expect("roots")
}

async fn keap_get(roots: &TlsRoots, port: u16) -> Result<u16, reqwest::Error> {
    let client = crate::keap::http::build_client(
        Duration::from_secs(10),
        roots.reqwest_tls().expect("rustls config"),
    )
    .expect("Keap's client");
    let response = client
        .get(format!(
            "https://localhost:{port}/crm/rest/v1/oauth/connect/userinfo"
        ))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

async fn aws_list_tables(
    roots: &TlsRoots,
    port: u16,
) -> Result<
    usize,
    aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::list_tables::ListTablesError>,
> {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(format!("https://localhost:{port}"))
        .http_client(roots.aws_http_client())
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    let output = aws_sdk_dynamodb::Client::from_conf(config)
        .list_tables()
        .send()
        .await?;
    Ok(output.table_names().len())
}

const LIST_TABLES: &str = r#"{"TableNames":["keapalive-handshake"]}"#;

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let pki = make_pki();
    let (port, answered) = tls_server(&pki, LIST_TABLES).await;
    let roots = roots_from(&[]);

    let keap = keap_get(&roots, port).await;
    assert!(
        keap.is_err(),
        "Keap's client trusted an unknown CA: {keap:?}"
    );
    let aws = aws_list_tables(&roots, port).await;
    assert!(
        matches!(
            aws,
            Err(aws_sdk_dynamodb::error::SdkError::DispatchFailure(_))
        ),
        "the AWS client trusted an unknown CA: {aws:?}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 0, "no request got through");
}

#[tokio::test]
async fn keapalive_extra_ca_certs_naming_the_ca_is_trusted_by_both_clients() {
    let pki = make_pki();
    let (port, answered) = tls_server(&pki, LIST_TABLES).await;
    let ca = write_temp("extra-ca.pem", &pki.ca_pem);
    let ca_path = ca.to_str().expect("utf-8 path");
    let roots = roots_from(&[("KEAPALIVE_EXTRA_CA_CERTS", ca_path)]);
    assert_eq!(roots.extra(), 1);

    assert_eq!(keap_get(&roots, port).await.expect("Keap's client"), 200);
    // The AWS connector does not exist yet: this first call builds it from the PEM roots.
    assert_eq!(
        aws_list_tables(&roots, port).await.expect("the AWS client"),
        1
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
    let _ = std::fs::remove_file(ca);
}

#[tokio::test]
async fn keapalive_tls_roots_system_honours_ssl_cert_file() {
    let pki = make_pki();
    let (port, answered) = tls_server(&pki, LIST_TABLES).await;
    let bundle = write_temp("system-bundle.pem", &pki.ca_pem);
    // The image's store, as a layer or container image sets it: only the test CA. No other
    // test reads SSL_CERT_FILE except the system-store one, which needs a non-empty store.
    // SAFETY: no other thread of this test binary writes the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", &bundle) };
    let roots = roots_from(&[("KEAPALIVE_TLS_ROOTS", "system")]);
    assert_eq!(roots.source(), RootSource::System);

    assert_eq!(keap_get(&roots, port).await.expect("Keap's client"), 200);
    assert_eq!(
        aws_list_tables(&roots, port).await.expect("the AWS client"),
        1
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
    // The file stays: the variable may still be read by the system-store test.
}
