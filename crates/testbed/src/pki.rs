//! The test bed's PKI: one CA, the apiserver's serving certificate, client certificates (admin and the
//! apiserver's kubelet client), a service-account signing key, and on-demand serving certificates for
//! components under test (a virtual node's kubelet API, an extender, cloudsim).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The aggregator's identity; the only name extension API servers accept request headers from.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A certificate and its private key, as PEM, and the files they were written to.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The CA and the certificates every control plane needs.
pub struct Pki {
    dir: PathBuf,
    ca_issuer: Issuer<'static, KeyPair>,
    pub ca: CertPair,
    pub apiserver: CertPair,
    pub admin: CertPair,
    /// Presented by kube-apiserver when it calls a kubelet (logs, exec, stats): a virtual node's
    /// kubelet API trusts `ca` as its client CA and sees this identity.
    pub apiserver_kubelet_client: CertPair,
    /// Presented by kube-apiserver's aggregator when it proxies to an extension API server
    /// (metrics-server), which trusts `ca` for it as `--requestheader-client-ca-file`.
    pub front_proxy_client: CertPair,
    /// The service-account token signing key (ECDSA P-256), private and public halves.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tke-testbed-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = write_pair(dir, "ca", ca_cert.pem(), ca_key.serialize_pem())?;
        let ca_issuer = Issuer::new(ca_params, ca_key);

        let mut pki = Self {
            dir: dir.to_owned(),
            ca_issuer,
            ca: ca.clone(),
            apiserver: ca.clone(),
            admin: ca.clone(),
            apiserver_kubelet_client: ca.clone(),
            front_proxy_client: ca,
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        pki.apiserver = pki.issue_server(
            "apiserver",
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "127.0.0.1",
                "10.96.0.1",
            ],
        )?;
        pki.admin = pki.issue_client("admin", "kubernetes-admin", Some("system:masters"))?;
        pki.apiserver_kubelet_client = pki.issue_client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;

        pki.front_proxy_client = pki.issue_client("front-proxy-client", FRONT_PROXY_CLIENT, None)?;

        let sa = KeyPair::generate()?;
        write(&pki.service_account_key, &sa.serialize_pem())?;
        write(&pki.service_account_pub, &sa.public_key_pem())?;
        Ok(pki)
    }

    /// A serving certificate signed by the test bed CA for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, file_stem: &str, common_name: &str, names: &[&str]) -> Result<CertPair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.ca_issuer)?;
        write_pair(&self.dir, file_stem, cert.pem(), key.serialize_pem())
    }

    /// A client certificate for user `common_name` in `group` (the subject's O), signed by the test
    /// bed CA. One group only: rcgen keeps one value per subject attribute.
    pub fn issue_client(&self, file_stem: &str, common_name: &str, group: Option<&str>) -> Result<CertPair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(group) = group {
            params.distinguished_name.push(DnType::OrganizationName, group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca_issuer)?;
        write_pair(&self.dir, file_stem, cert.pem(), key.serialize_pem())
    }
}

fn san(name: &str) -> Result<SanType> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn write_pair(dir: &Path, stem: &str, cert_pem: String, key_pem: String) -> Result<CertPair> {
    let cert_file = dir.join(format!("{stem}.crt"));
    let key_file = dir.join(format!("{stem}.key"));
    write(&cert_file, &cert_pem)?;
    write(&key_file, &key_pem)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        cert_file,
        key_file,
    })
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
