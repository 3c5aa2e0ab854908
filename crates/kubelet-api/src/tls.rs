//! The kubelet port's TLS: the serving certificate from `--tls-cert-file`/`--tls-private-key-file`
//! or, when none is given, a self-signed one made at start (the apiserver does not verify the
//! kubelet's serving certificate unless `--kubelet-certificate-authority` is set); and, with a
//! client CA, client certificates verified against it but not required, so that bearer tokens
//! still work. Always the ring provider, whatever the process default is.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

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
/// uses either.
pub fn server_config(serving: &ServingCertificate, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = match serving {
        ServingCertificate::Files { cert, key } => {
            let chain = certificates(&read(cert)?).map_err(|what| Error::Pem {
                path: cert.clone(),
                what,
            })?;
            let pem = read(key)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
                path: key.clone(),
                what: format!("no usable private key: {e}"),
            })?;
            (chain, key)
        }
        ServingCertificate::SelfSigned { common_name, names } => self_signed(common_name, names)?,
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
