//! The TLS trust roots of a container: built once, shared by every HTTPS client it makes.
//!
//! Left alone, reqwest (Keap) and the AWS SDK's HTTP client each load the system's root
//! certificates (on Debian: a 220 kB bundle, then every file of `/etc/ssl/certs`), and the SDK
//! parses them again for every client it builds and every connector it makes. Here the roots
//! are built once into one [`TlsRoots`]: reqwest gets a `rustls::ClientConfig` over its
//! [`RootCertStore`], and every AWS client shares the SDK connectors of one HTTP client
//! ([`TlsRoots::aws_http_client`]: one per set of connector settings, built on first use) over
//! the same certificates.
//!
//! Which roots ([`RootSource`], `KEAPALIVE_TLS_ROOTS`): by default Mozilla's root program,
//! compiled in: no file to read, the same in every container. reqwest's store is the
//! pre-parsed trust anchors of `webpki-roots` (nothing to parse at init); the SDK, whose TLS
//! context takes only PEM, gets the same roots' certificates (`webpki-root-certs`; a test pins
//! the two sets equal), and parses them when its connector is built: on the container's first
//! AWS call, which always comes before any token is presented (a lease or a read comes first),
//! so a commit never waits for it. `system` loads the image's store instead (`rustls-native-certs`,
//! which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`). Either way `KEAPALIVE_EXTRA_CA_CERTS`
//! names a PEM file of extra roots to trust as well, e.g. a TLS-inspecting proxy's CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use aws_smithy_http_client::Connector;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use base64::Engine as _;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where the roots come from: `webpki` (the default) or `system`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootSource {
    /// Mozilla's root program as compiled into the binary (`webpki-root-certs`).
    #[default]
    Webpki,
    /// The image's certificate store, read at init (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
    System,
}

impl RootSource {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "webpki" | "" => Some(Self::Webpki),
            "system" => Some(Self::System),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webpki => "webpki",
            Self::System => "system",
        }
    }
}

/// The TLS part of the configuration (`KEAPALIVE_TLS_ROOTS`, `KEAPALIVE_EXTRA_CA_CERTS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub roots: RootSource,
    /// A PEM file whose certificates are trusted as well (a TLS-inspecting proxy's CA).
    pub extra_ca_certs: Option<PathBuf>,
}

/// Why the trust roots could not be built. One line, naming the variable or file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("KEAPALIVE_EXTRA_CA_CERTS: cannot read {path}: {source}")]
    ExtraRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KEAPALIVE_EXTRA_CA_CERTS: {path} is not a PEM certificate bundle: {source}")]
    ExtraPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "KEAPALIVE_EXTRA_CA_CERTS: {path} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
    )]
    ExtraEmpty { path: PathBuf },
    #[error(
        "KEAPALIVE_EXTRA_CA_CERTS: certificate {index} of {path} is not a usable root: {source}"
    )]
    ExtraInvalid {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    #[error(
        "KEAPALIVE_TLS_ROOTS=system: no root certificate found in the system store \
         (set SSL_CERT_FILE, or use the default KEAPALIVE_TLS_ROOTS=webpki)"
    )]
    NoSystemRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One container's trust roots: a rustls store for reqwest and the same roots' certificates,
/// which the AWS SDK's TLS context takes as PEM.
#[derive(Clone)]
pub struct TlsRoots {
    store: Arc<RootCertStore>,
    /// Exactly the roots in `store`: the SDK panics on a certificate it cannot parse, so it only
    /// ever sees ones rustls accepted (or, compiled in, that a test checked).
    certificates: Arc<Vec<CertificateDer<'static>>>,
    source: RootSource,
    extra: usize,
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRoots")
            .field("source", &self.source)
            .field("roots", &self.store.len())
            .field("extra", &self.extra)
            .finish()
    }
}

impl TlsRoots {
    /// Builds the roots `settings` asks for; the only file read is the extra bundle (and, for
    /// [`RootSource::System`], the system store).
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let mut builder = Builder::new();
        match settings.roots {
            RootSource::Webpki => {
                builder.store.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec();
                builder.certificates = webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
            }
            RootSource::System => {
                let loaded = rustls_native_certs::load_native_certs();
                for error in &loaded.errors {
                    tracing::warn!(%error, "a system root certificate could not be loaded");
                }
                let mut skipped = 0_usize;
                for cert in loaded.certs {
                    if builder.add(cert).is_err() {
                        skipped += 1;
                    }
                }
                if skipped > 0 {
                    tracing::warn!(skipped, "system root certificates skipped: not valid roots");
                }
                if builder.store.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
            }
        }
        let base = builder.store.len();
        if let Some(path) = &settings.extra_ca_certs {
            builder.add_extra(path)?;
        }
        let extra = builder.store.len() - base;
        Ok(Self {
            store: Arc::new(builder.store),
            certificates: Arc::new(builder.certificates),
            source: settings.roots,
            extra,
        })
    }

    /// Number of trusted roots.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// How many of them came from `KEAPALIVE_EXTRA_CA_CERTS`.
    pub fn extra(&self) -> usize {
        self.extra
    }

    pub fn source(&self) -> RootSource {
        self.source
    }

    /// The shared root store.
    pub fn store(&self) -> Arc<RootCertStore> {
        self.store.clone()
    }

    /// A rustls client configuration over these roots for reqwest (HTTP/1.1, aws-lc-rs, the
    /// crypto provider reqwest itself would pick).
    pub fn reqwest_tls(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.store.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The HTTP client every AWS SDK client of the container shares: one connector per set of
    /// connector settings (every keapalive client uses the same; aws-config's own credential
    /// providers may ask for others), each built — parsing the roots once — on the first
    /// request that needs it and kept, so no later client or request parses certificates again.
    pub fn aws_http_client(&self) -> SharedHttpClient {
        SharedHttpClient::new(SharedConnectors {
            roots: self.clone(),
            context: OnceLock::new(),
            built: Mutex::new(Vec::new()),
        })
    }

    /// The certificates as one PEM bundle, the form the SDK's trust store takes.
    fn pem(&self) -> Vec<u8> {
        let mut pem = Vec::with_capacity(self.certificates.len() * 2_048);
        for cert in self.certificates.iter() {
            pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in encoded.as_bytes().chunks(64) {
                pem.extend_from_slice(line);
                pem.push(b'\n');
            }
            pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
        }
        pem
    }
}

struct Builder {
    store: RootCertStore,
    certificates: Vec<CertificateDer<'static>>,
}

impl Builder {
    fn new() -> Self {
        Self {
            store: RootCertStore::empty(),
            certificates: Vec::new(),
        }
    }

    /// Adds `cert` to the store and, once it is known to be a valid root, to the certificates the
    /// SDK gets, so the SDK (which panics on a certificate it cannot parse) never sees an invalid
    /// one.
    fn add(&mut self, cert: CertificateDer<'_>) -> Result<(), rustls::Error> {
        self.store.add(cert.clone())?;
        self.certificates.push(cert.into_owned());
        Ok(())
    }

    fn add_extra(&mut self, path: &Path) -> Result<(), TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::ExtraRead {
            path: path.to_owned(),
            source,
        })?;
        let mut added = 0_usize;
        for (index, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
            let cert = cert.map_err(|source| TlsError::ExtraPem {
                path: path.to_owned(),
                source,
            })?;
            self.add(cert).map_err(|source| TlsError::ExtraInvalid {
                path: path.to_owned(),
                index: index + 1,
                source,
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::ExtraEmpty {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

fn build_connector(context: &TlsContext, settings: &HttpConnectorSettings) -> SharedHttpConnector {
    let mut builder = Connector::builder().connector_settings(settings.clone());
    if let Some(sleep) = aws_smithy_async::rt::sleep::default_async_sleep() {
        builder = builder.sleep_impl(sleep);
    }
    SharedHttpConnector::new(
        builder
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context.clone())
            .build(),
    )
}

/// What distinguishes one connector from another (the SDK's own client keys its cache alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnectorKey {
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
}

impl ConnectorKey {
    fn of(settings: &HttpConnectorSettings) -> Self {
        Self {
            connect_timeout: settings.connect_timeout(),
            read_timeout: settings.read_timeout(),
        }
    }
}

struct SharedConnectors {
    roots: TlsRoots,
    /// Built with the first connector (the PEM encoding, once); the SDK parses the PEM again for
    /// each connector it builds, one per set of connector settings.
    context: OnceLock<Result<TlsContext, String>>,
    built: Mutex<Vec<(ConnectorKey, SharedHttpConnector)>>,
}

impl std::fmt::Debug for SharedConnectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnectors").finish_non_exhaustive()
    }
}

impl HttpClient for SharedConnectors {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = ConnectorKey::of(settings);
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, connector)) = built.iter().find(|(k, _)| *k == key) {
            return connector.clone();
        }
        let started = std::time::Instant::now();
        let context = self.context.get_or_init(|| {
            TlsContext::builder()
                .with_trust_store(TrustStore::empty().with_pem_certificate(self.roots.pem()))
                .build()
                .map_err(|e| e.to_string())
        });
        let connector = match context {
            Ok(context) => build_connector(context, settings),
            Err(reason) => {
                tracing::error!(%reason, "the AWS SDK refused the TLS roots: every AWS call fails");
                SharedHttpConnector::new(RefusedRoots(reason.clone()))
            }
        };
        tracing::debug!(
            ?key,
            micros = started.elapsed().as_micros() as u64,
            "AWS connector built"
        );
        built.push((key, connector.clone()));
        connector
    }

    // No `validate_base_client_config`: the SDK's own client builds a throwaway connector
    // there (parsing every root) for each client; ours are built once, on first use.

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new(
            "hyper",
            Some(std::borrow::Cow::Borrowed("1.x")),
        ))
    }
}

/// The connector of a container whose roots the SDK refused (its TLS context cannot fail
/// today): every AWS call fails with the reason, classified as an I/O-less connector error.
#[derive(Debug)]
struct RefusedRoots(String);

impl HttpConnector for RefusedRoots {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let reason = format!("the AWS SDK refused the TLS roots: {}", self.0);
        HttpConnectorFuture::ready(Err(ConnectorError::other(reason.into(), None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (an example "inspecting proxy" root), PEM.
    const PROXY_CA: &str = include_str!("../testdata/proxy-ca.pem");

    fn write_temp(name: &str, contents: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("keapalive-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp file");
        path
    }

    #[test]
    fn compiled_in_roots_are_many_and_shared_by_both_clients() {
        let roots = TlsRoots::load(&TlsSettings::default()).expect("webpki roots");
        assert!(roots.len() > 100, "only {} roots", roots.len());
        assert_eq!(roots.extra(), 0);
        assert_eq!(roots.source(), RootSource::Webpki);
        // The SDK's copy holds exactly the store's certificates.
        let pem_certs = CertificateDer::pem_slice_iter(&roots.pem()).count();
        assert_eq!(pem_certs, roots.len());
        roots.reqwest_tls().expect("rustls config");
        roots.aws_http_client();
    }

    /// reqwest trusts `webpki-roots`' pre-parsed anchors and the SDK `webpki-root-certs`'
    /// certificates: the same roots only if every certificate parses to one of the anchors
    /// and no anchor is left over. An anchor may carry name constraints its certificate lacks
    /// (Mozilla constrains some roots, e.g. TUBITAK's to `.tr`, and only an anchor can say so):
    /// reqwest is then the stricter of the two, never the laxer.
    #[test]
    fn compiled_in_anchors_and_certificates_are_the_same_roots() {
        use std::collections::BTreeMap;
        type Anchors = BTreeMap<(Vec<u8>, Vec<u8>), Option<Vec<u8>>>;
        let index = |roots: &[rustls::pki_types::TrustAnchor<'_>]| -> Anchors {
            roots
                .iter()
                .map(|a| {
                    (
                        (a.subject.to_vec(), a.subject_public_key_info.to_vec()),
                        a.name_constraints.as_ref().map(|n| n.to_vec()),
                    )
                })
                .collect()
        };
        let mut parsed = RootCertStore::empty();
        for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            parsed
                .add(cert.clone())
                .expect("every compiled-in root parses");
        }
        let from_certificates = index(&parsed.roots);
        let anchors = index(webpki_roots::TLS_SERVER_ROOTS);
        assert_eq!(
            from_certificates.len(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.len()
        );
        let name = |subject: &[u8]| String::from_utf8_lossy(subject).into_owned();
        let only_one_side: Vec<String> = from_certificates
            .keys()
            .filter(|k| !anchors.contains_key(*k))
            .chain(
                anchors
                    .keys()
                    .filter(|k| !from_certificates.contains_key(*k)),
            )
            .map(|(subject, _)| name(subject))
            .collect();
        assert!(
            only_one_side.is_empty(),
            "webpki-roots ({}) and webpki-root-certs ({}) hold different roots, align their \
             versions: {only_one_side:#?}",
            anchors.len(),
            from_certificates.len()
        );
        for (key, constraints) in &from_certificates {
            if constraints.is_some() {
                assert_eq!(&anchors[key], constraints, "{}", name(&key.0));
            }
        }
    }

    #[test]
    fn an_extra_bundle_is_trusted_as_well() {
        let path = write_temp("extra.pem", PROXY_CA.as_bytes());
        let base = TlsRoots::load(&TlsSettings::default()).expect("base").len();
        let roots = TlsRoots::load(&TlsSettings {
            roots: RootSource::Webpki,
            extra_ca_certs: Some(path.clone()),
        })
        .expect("with the extra root");
        assert_eq!(roots.extra(), 1);
        assert_eq!(roots.len(), base + 1);
        assert_eq!(
            CertificateDer::pem_slice_iter(&roots.pem()).count(),
            base + 1
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_bad_extra_bundle_fails_naming_the_variable() {
        let missing = TlsRoots::load(&TlsSettings {
            roots: RootSource::Webpki,
            extra_ca_certs: Some(PathBuf::from("/nonexistent/keapalive-ca.pem")),
        })
        .unwrap_err();
        assert!(matches!(missing, TlsError::ExtraRead { .. }), "{missing}");
        assert!(missing.to_string().starts_with("KEAPALIVE_EXTRA_CA_CERTS"));

        let empty = write_temp("empty.pem", b"no certificate here\n");
        let error = TlsRoots::load(&TlsSettings {
            roots: RootSource::Webpki,
            extra_ca_certs: Some(empty.clone()),
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::ExtraEmpty { .. }), "{error}");
        let _ = std::fs::remove_file(empty);

        let garbage = write_temp(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let error = TlsRoots::load(&TlsSettings {
            roots: RootSource::Webpki,
            extra_ca_certs: Some(garbage.clone()),
        })
        .unwrap_err();
        assert!(
            matches!(error, TlsError::ExtraInvalid { index: 1, .. }),
            "{error}"
        );
        let _ = std::fs::remove_file(garbage);
    }

    #[test]
    fn the_system_store_is_shared_the_same_way() {
        // This machine (and CI's) has the ca-certificates bundle.
        let roots = TlsRoots::load(&TlsSettings {
            roots: RootSource::System,
            extra_ca_certs: None,
        })
        .expect("the system store");
        assert!(!roots.is_empty());
        assert_eq!(
            CertificateDer::pem_slice_iter(&roots.pem()).count(),
            roots.len()
        );
    }

    #[test]
    fn root_source_parses() {
        assert_eq!(RootSource::parse("webpki"), Some(RootSource::Webpki));
        assert_eq!(RootSource::parse(" System "), Some(RootSource::System));
        assert_eq!(RootSource::parse("native"), None);
    }
}
