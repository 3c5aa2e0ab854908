//! The kubelet port's TLS: the serving certificate from `--tls-cert-file`/`--tls-private-key-file`
//! or, when none is given, a self-signed one made at start (the apiserver does not verify the
//! kubelet's serving certificate unless `--kubelet-certificate-authority` is set); and, with a
//! client CA, client certificates verified against it but not required, so that bearer tokens
//! still work. Always the ring provider, whatever the process default is.
//!
//! Certificate files are watched as the kubelet watches its own: their modification times are
//! looked at on a handshake at most every [`RELOAD_CHECK`], and a changed pair is loaded, so a
//! rotated Secret (cert-manager, a CSR renewed by hand) takes effect without a restart. A pair that
//! does not load (half-written, key and certificate out of step) keeps the previous one in
//! service, with a warning.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::time::Instant;

/// How often a handshake may look at the certificate files' modification times.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("--tls-cert-file and --tls-private-key-file go together; {0} is missing")]
    HalfPair(&'static str),
    #[error("making a self-signed serving certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingCertificate {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Made at start for these subject alternative names (DNS names or IP addresses).
    SelfSigned {
        common_name: String,
        names: Vec<String>,
    },
}

impl ServingCertificate {
    /// From the two optional flags: both, or neither (then self-signed for `names`).
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        common_name: &str,
        names: Vec<String>,
    ) -> Result<ServingCertificate> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(ServingCertificate::Files { cert, key }),
            (None, None) => Ok(ServingCertificate::SelfSigned {
                common_name: common_name.to_owned(),
                names,
            }),
            (Some(_), None) => Err(Error::HalfPair("--tls-private-key-file")),
            (None, Some(_)) => Err(Error::HalfPair("--tls-cert-file")),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM bundle, or what is wrong with it.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

/// The rustls configuration of the kubelet port. HTTP/2 and HTTP/1.1 are offered; the apiserver
/// uses either. Certificate files are reloaded when they change (see the module docs).
pub fn server_config(serving: &ServingCertificate, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    server_config_checking_every(serving, client_ca, RELOAD_CHECK)
}

/// [`server_config`] with another interval between looks at the certificate files.
pub fn server_config_checking_every(
    serving: &ServingCertificate,
    client_ca: Option<&Path>,
    check_every: Duration,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver: Arc<dyn ResolvesServerCert> = match serving {
        ServingCertificate::Files { cert, key } => Arc::new(ReloadingCertificate::load(
            cert.clone(),
            key.clone(),
            provider.clone(),
            check_every,
        )?),
        ServingCertificate::SelfSigned { common_name, names } => {
            let (chain, key) = self_signed(common_name, names)?;
            Arc::new(FixedCertificate(Arc::new(certified_key(chain, key, &provider)?)))
        }
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let certified = CertifiedKey::from_der(chain, key, provider)?;
    Ok(certified)
}

/// The pair in two files, as read now.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let chain = certificates(&read(cert)?).map_err(|what| Error::Pem {
        path: cert.to_owned(),
        what,
    })?;
    let pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        path: key.to_owned(),
        what: format!("no usable private key: {e}"),
    })?;
    // from_der checks that the key is the certificate's, so a half-rotated pair is refused.
    certified_key(chain, private, provider).map_err(|e| Error::Pem {
        path: cert.to_owned(),
        what: format!("does not go with {}: {e}", key.display()),
    })
}

#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The certificate files' current pair.
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    check_every: Duration,
    state: Mutex<Loaded>,
}

struct Loaded {
    pair: Arc<CertifiedKey>,
    /// The files' modification times when `pair` was read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCertificate {
    fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
    ) -> Result<ReloadingCertificate> {
        let stamp = (modified(&cert), modified(&key));
        let pair = Arc::new(read_pair(&cert, &key, &provider)?);
        Ok(ReloadingCertificate {
            cert,
            key,
            provider,
            check_every,
            state: Mutex::new(Loaded {
                pair,
                stamp,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= self.check_every {
            state.checked = Instant::now();
            let stamp = (modified(&self.cert), modified(&self.key));
            if stamp != state.stamp {
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        state.pair = Arc::new(pair);
                        state.stamp = stamp;
                    }
                    // Try again at the next check: the other file of the pair may be on its way.
                    Err(error) => {
                        tracing::warn!(%error, "serving certificate changed but does not load; keeping the previous one");
                    }
                }
            }
        }
        Some(state.pair.clone())
    }
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let invalid = |message: String| Error::ClientCa {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates(&pem).map_err(invalid)?);
    if added == 0 {
        return Err(invalid("no usable CA certificate".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid(e.to_string()))
}

fn self_signed(
    common_name: &str,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| Error::Pem {
        path: PathBuf::from("<self-signed>"),
        what: e.to_owned(),
    })?;
    Ok((vec![cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_certificate_files_the_port_serves_a_self_signed_certificate() {
        let serving = ServingCertificate::from_flags(None, None, "system:node:n", vec!["127.0.0.1".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let config = server_config(&serving, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn half_a_certificate_pair_is_refused_naming_the_missing_flag() {
        let error = ServingCertificate::from_flags(Some("tls.crt".into()), None, "n", vec![]).err();
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.to_string().contains("--tls-private-key-file")),
            "{error:?}"
        );
    }

    #[test]
    fn missing_or_malformed_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing.pem");
        let serving = ServingCertificate::Files {
            cert: missing.clone(),
            key: missing.clone(),
        };
        let error = server_config(&serving, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("missing.pem"), "{error}");
        let self_signed = ServingCertificate::SelfSigned {
            common_name: "n".into(),
            names: vec![],
        };
        let error = server_config(&self_signed, Some(&garbage))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("garbage.pem"), "{error}");
        let missing_ca = server_config(&self_signed, Some(&missing)).err();
        assert!(
            matches!(&missing_ca, Some(Error::ClientCa { path, .. }) if *path == missing),
            "{missing_ca:?}"
        );
    }
}
