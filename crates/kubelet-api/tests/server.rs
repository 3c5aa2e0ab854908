//! The kubelet API over real TLS on loopback, with a backend and review API of the test's own:
//! what the apiserver, kubectl and a scraper see on the wire.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::StatusCode;
use tke_kubelet_api::{
    Backend, ContainerUsage, CpuUsage, KubeletApi, LogLine, LogOptions, LogStream, PodUsage, Reviews, User,
    auth::Attributes,
    backend::{self, RunningContainer, RunningPod},
    tls::ServingCertificate,
};
use tokio::sync::mpsc;

const NODE: &str = "eklet-subnet-a";

/// One pod `shop/web-1` with container `web`. Its log is `line 0..n`; a followed log continues
/// with whatever the test sends.
struct FakeNode {
    pod: Arc<Pod>,
    follow: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    asked: Mutex<Vec<LogOptions>>,
}

impl Backend for FakeNode {
    fn pods(&self) -> Vec<Arc<Pod>> {
        vec![self.pod.clone()]
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        (namespace == "shop" && name == "web-1").then(|| self.pod.clone())
    }

    /// What the cloud runs: the image the sandbox reports, which is not the spec's.
    fn running_pods(&self) -> Vec<RunningPod> {
        vec![RunningPod {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "3b0c4a58-0000-4000-8000-000000000001".into(),
            containers: vec![RunningContainer {
                name: "web".into(),
                image: "docker.io/library/nginx:1.27-as-run".into(),
            }],
        }]
    }

    async fn logs(
        &self,
        _pod: Arc<Pod>,
        _container: &str,
        options: LogOptions,
    ) -> backend::Result<LogStream> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(options.clone());
        if options.previous {
            return Err(backend::Error::not_found(
                "previous terminated container \"web\" in pod \"web-1\" not found",
            ));
        }
        let total = 5u64;
        let first = options.tail_lines.map_or(0, |tail| total.saturating_sub(tail));
        let written: Vec<backend::Result<LogLine>> = (first..total)
            .map(|i| {
                Ok(LogLine {
                    time: Some(
                        format!("2026-03-01T10:00:0{i}Z")
                            .parse()
                            .map_err(|_| backend::Error::new(backend::ErrorKind::Internal, "time"))?,
                    ),
                    text: format!("line {i}"),
                })
            })
            .collect();
        let written = futures::stream::iter(written);
        if !options.follow {
            return Ok(written.boxed());
        }
        let receiver = self.follow.lock().unwrap_or_else(|e| e.into_inner()).take();
        let later = futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let text = receiver.recv().await?;
            Some((Ok(LogLine { time: None, text }), Some(receiver)))
        });
        Ok(written.chain(later).boxed())
    }

    async fn usage(&self, pods: &[Arc<Pod>]) -> backend::Result<Vec<PodUsage>> {
        Ok(pods
            .iter()
            .filter_map(|pod| pod.metadata.uid.clone())
            .map(|uid| PodUsage {
                uid,
                time: jiff::Timestamp::now(),
                cpu: CpuUsage {
                    nano_cores: 250_000_000,
                    core_nano_seconds: None,
                },
                memory_working_set_bytes: 70 << 20,
                containers: vec![ContainerUsage {
                    name: "web".into(),
                    cpu: CpuUsage {
                        nano_cores: 250_000_000,
                        core_nano_seconds: None,
                    },
                    memory_working_set_bytes: 64 << 20,
                }],
            })
            .collect())
    }
}

/// Token `reader` may do everything on the node, token `nobody` nothing; so may (not) the users
/// of client certificates named the same.
struct FakeReviews;

impl Reviews for FakeReviews {
    async fn review_token(&self, token: &str) -> tke_kubelet_api::auth::Result<Option<User>> {
        Ok(["reader", "nobody"].contains(&token).then(|| User {
            name: token.to_owned(),
            ..User::default()
        }))
    }

    async fn review_access(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> tke_kubelet_api::auth::Result<bool> {
        Ok(user.name == "reader"
            && attributes.node == NODE
            && ["get", "create"].contains(&attributes.verb.as_str()))
    }
}

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// PEM cert + key.
    fn issue(
        &self,
        common_name: &str,
        purpose: ExtendedKeyUsagePurpose,
        sans: Vec<String>,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

struct Running {
    url: String,
    pki: Pki,
    backend: Arc<FakeNode>,
    follow: mpsc::UnboundedSender<String>,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

async fn start() -> Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new("test-ca")?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = pki.issue(
        "system:node:eklet-subnet-a",
        ExtendedKeyUsagePurpose::ServerAuth,
        vec!["127.0.0.1".into()],
    )?;
    let write = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let serving = ServingCertificate::Files {
        cert: write("tls.crt", &cert)?,
        key: write("tls.key", &key)?,
    };
    let client_ca = write("ca.crt", &pki.ca_pem)?;
    let tls = tke_kubelet_api::server_config(&serving, Some(&client_ca))?;

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "3b0c4a58-0000-4000-8000-000000000001"},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Running", "startTime": "2026-03-01T10:00:00Z",
            "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-03-01T10:00:01Z"}}}]}
    }))?;
    let (follow, receiver) = mpsc::unbounded_channel();
    let backend = Arc::new(FakeNode {
        pod: Arc::new(pod),
        follow: Mutex::new(Some(receiver)),
        asked: Mutex::new(Vec::new()),
    });
    let node = KubeletApi::new(vec![NODE.to_owned()], backend.clone(), FakeReviews);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let server = {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(error) = tke_kubelet_api::serve(listener, tls, node).await {
                eprintln!("{error}");
            }
        })
    };
    Ok(Running {
        url,
        pki,
        backend,
        follow,
        _dir: dir,
        _server: server,
    })
}

impl Running {
    fn client(&self, identity: Option<(String, String)>) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(60));
        if let Some((cert, key)) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes())?);
        }
        Ok(builder.build()?)
    }

    fn apiserver(&self) -> Result<reqwest::Client> {
        let identity = self
            .pki
            .issue("reader", ExtendedKeyUsagePurpose::ClientAuth, Vec::new())?;
        self.client(Some(identity))
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String)> {
        let mut request = client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("GET {path}"))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }
}

#[tokio::test]
async fn requests_without_credentials_get_401_and_unknown_tokens_too() -> Result<()> {
    let node = start().await?;
    let anonymous = node.client(None)?;
    for path in [
        "/healthz",
        "/containerLogs/shop/web-1/web",
        "/stats/summary",
        "/metrics/resource",
        "/exec/a/b/c",
    ] {
        let (status, body) = node.get(&anonymous, path, None).await?;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::UNAUTHORIZED, "Unauthorized"),
            "{path}"
        );
    }
    let (status, _) = node.get(&anonymous, "/healthz", Some("stolen")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_from_the_client_ca_authenticates_its_common_name() -> Result<()> {
    let node = start().await?;
    let (status, body) = node
        .get(&node.apiserver()?, "/containerLogs/shop/web-1/web", None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "line 0\nline 1\nline 2\nline 3\nline 4\n");
    // The same name from a certificate of another CA never gets through the handshake.
    let stranger = Pki::new("other-ca")?.issue("reader", ExtendedKeyUsagePurpose::ClientAuth, Vec::new())?;
    let refused = node
        .client(Some(stranger))?
        .get(format!("{}/healthz", node.url))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    Ok(())
}

#[tokio::test]
async fn a_token_the_access_review_denies_gets_403_naming_the_user_and_subresource() -> Result<()> {
    let node = start().await?;
    let client = node.client(None)?;
    let (status, body) = node
        .get(&client, "/containerLogs/shop/web-1/web", Some("nobody"))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "Forbidden (user=nobody, verb=get, resource=nodes, subresource=log)"
    );
    let (status, body) = node.get(&client, "/metrics/resource", Some("nobody")).await?;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=nobody, verb=get, resource=nodes, subresource=metrics)"
        )
    );
    let (status, body) = node
        .get(
            &client,
            "/containerLogs/shop/web-1/web?tailLines=2",
            Some("reader"),
        )
        .await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "line 3\nline 4\n"));
    Ok(())
}

#[tokio::test]
async fn log_options_reach_the_backend_and_the_body_is_formatted_and_cut_as_asked() -> Result<()> {
    let node = start().await?;
    let client = node.apiserver()?;
    let (status, body) = node
        .get(
            &client,
            "/containerLogs/shop/web-1/web?tailLines=2&timestamps=true",
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "2026-03-01T10:00:03.000000000Z line 3\n2026-03-01T10:00:04.000000000Z line 4\n"
    );
    let (_, body) = node
        .get(&client, "/containerLogs/shop/web-1/web?limitBytes=10", None)
        .await?;
    assert_eq!(body, "line 0\nlin");
    let (_, _) = node
        .get(
            &client,
            "/containerLogs/shop/web-1/web?sinceTime=2026-03-01T10:00:02Z&previous=false",
            None,
        )
        .await?;
    let asked = node
        .backend
        .asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        asked.last().and_then(|o| o.since_time).map(|t| t.to_string()),
        Some("2026-03-01T10:00:02Z".into())
    );
    let (status, body) = node
        .get(&client, "/containerLogs/shop/web-1/web?tailLines=-3", None)
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("tailLines"), "{body}");
    let (status, body) = node
        .get(&client, "/containerLogs/shop/web-1/web?previous=true", None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("previous terminated container"), "{body}");
    Ok(())
}

#[tokio::test]
async fn unknown_pods_and_containers_get_404s_that_name_them() -> Result<()> {
    let node = start().await?;
    let client = node.apiserver()?;
    let (status, body) = node.get(&client, "/containerLogs/shop/web-9/web", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("\"web-9\"") && body.contains("\"shop\""), "{body}");
    let (status, body) = node.get(&client, "/containerLogs/shop/web-1/db", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("container \"db\" not found in pod \"web-1\"") && body.contains("web"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn followed_logs_arrive_line_by_line_as_they_are_written() -> Result<()> {
    let node = start().await?;
    let response = node
        .apiserver()?
        .get(format!(
            "{}/containerLogs/shop/web-1/web?follow=true&tailLines=1",
            node.url
        ))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let mut response = response;
    let mut seen = String::new();
    let mut read_until = async |needle: &str| -> Result<()> {
        while !seen.contains(needle) {
            let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk())
                .await
                .with_context(|| format!("waiting for {needle:?}, have {seen:?}"))??
                .context("body ended")?;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok(())
    };
    read_until("line 4\n").await?;
    // Nothing more is written until the test writes it, so each line below can only arrive
    // because it was sent on its own while the response stays open.
    node.follow.send("written later".into())?;
    read_until("written later\n").await?;
    node.follow.send("and later still".into())?;
    read_until("and later still\n").await?;
    assert_eq!(seen, "line 4\nwritten later\nand later still\n");
    Ok(())
}

#[tokio::test]
async fn streaming_paths_without_an_upgrade_answer_400_with_and_without_uid() -> Result<()> {
    let node = start().await?;
    let client = node.apiserver()?;
    for path in [
        "/exec/shop/web-1/web?command=ls&output=1",
        "/exec/shop/web-1/3b0c4a58-0000-4000-8000-000000000001/web?command=ls&output=1",
        "/attach/shop/web-1/web?output=1",
        "/attach/shop/web-1/3b0c4a58-0000-4000-8000-000000000001/web?output=1",
        "/portForward/shop/web-1",
        "/portForward/shop/web-1/3b0c4a58-0000-4000-8000-000000000001",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = client
                .request(method.clone(), format!("{}{path}", node.url))
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
            assert!(body.contains("needs a connection upgrade"), "{body}");
        }
    }
    let (status, body) = node.get(&client, "/configz", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test]
async fn run_on_a_backend_without_exec_answers_501_naming_what_is_missing() -> Result<()> {
    let node = start().await?;
    let response = node
        .apiserver()?
        .post(format!("{}/run/shop/web-1/web?cmd=ls", node.url))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("Backend::exec"), "{body}");
    Ok(())
}

#[tokio::test]
async fn pods_health_summary_and_resource_metrics_describe_the_node() -> Result<()> {
    let node = start().await?;
    let client = node.apiserver()?;
    assert_eq!(
        node.get(&client, "/healthz", None).await?,
        (StatusCode::OK, "ok".to_owned())
    );

    let (status, body) = node.get(&client, "/pods", None).await?;
    assert_eq!(status, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web-1");

    let (status, body) = node.get(&client, "/stats/summary", None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let summary: tke_kubelet_api::stats::Summary = serde_json::from_str(&body)?;
    assert_eq!(summary.node.node_name, NODE);
    assert_eq!(summary.pods.len(), 1);
    let pod = &summary.pods[0];
    assert_eq!(
        (pod.pod_ref.namespace.as_str(), pod.pod_ref.name.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(
        pod.containers[0].memory.as_ref().map(|m| m.working_set_bytes),
        Some(64 << 20)
    );
    assert_eq!(pod.cpu.as_ref().map(|c| c.usage_nano_cores), Some(250_000_000));

    let (status, text) = node.get(&client, "/metrics/resource", None).await?;
    assert_eq!(status, StatusCode::OK);
    let series = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let memory =
        series("container_memory_working_set_bytes{container=\"web\",namespace=\"shop\",pod=\"web-1\"}");
    assert!(memory.contains(&format!(" {} ", 64u64 << 20)), "{text}");
    assert!(
        !series("pod_cpu_usage_seconds_total{namespace=\"shop\",pod=\"web-1\"}").is_empty(),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "scrape_error 0"), "{text}");
    Ok(())
}

#[tokio::test]
async fn running_pods_lists_what_the_runtime_runs_in_the_kubelets_format_to_whom_may_read_pods() -> Result<()>
{
    let node = start().await?;
    let client = node.apiserver()?;
    for path in ["/runningpods/", "/runningpods"] {
        let (status, body) = node.get(&client, path, None).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let list: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(list["kind"], "PodList");
        let pod = &list["items"][0];
        assert_eq!(pod["metadata"]["name"], "web-1");
        assert_eq!(pod["metadata"]["namespace"], "shop");
        assert_eq!(pod["metadata"]["uid"], "3b0c4a58-0000-4000-8000-000000000001");
        assert_eq!(pod["spec"]["containers"][0]["name"], "web");
        assert_eq!(
            pod["spec"]["containers"][0]["image"], "docker.io/library/nginx:1.27-as-run",
            "the runtime's view, not the spec's"
        );
        assert!(pod.get("status").is_none(), "{pod}");
    }
    let (status, body) = node
        .get(&node.client(None)?, "/runningpods/", Some("nobody"))
        .await?;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=nobody, verb=get, resource=nodes, subresource=pods)"
        )
    );
    Ok(())
}

/// The certificate the server presents on a new connection.
async fn presented_certificate(url: &str, ca_pem: &str) -> Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .tls_info(true)
        .build()?;
    let response = client.get(format!("{url}/healthz")).send().await?;
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .context("no TLS info")?;
    info.peer_certificate()
        .map(<[u8]>::to_vec)
        .context("no peer certificate")
}

fn der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

#[tokio::test]
async fn a_rotated_serving_certificate_is_served_without_a_restart_and_a_half_written_pair_is_not()
-> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new("rotation-ca")?;
    let dir = tempfile::tempdir()?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let issue = || {
        pki.issue(
            "system:node:n",
            ExtendedKeyUsagePurpose::ServerAuth,
            vec!["127.0.0.1".into()],
        )
    };
    let (first_cert, first_key) = issue()?;
    std::fs::write(&cert_path, &first_cert)?;
    std::fs::write(&key_path, &first_key)?;
    let serving = ServingCertificate::Files {
        cert: cert_path.clone(),
        key: key_path.clone(),
    };
    let tls = tke_kubelet_api::tls::server_config_checking_every(&serving, None, Duration::ZERO)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let backend = Arc::new(FakeNode {
        pod: Arc::new(Pod::default()),
        follow: Mutex::new(None),
        asked: Mutex::new(Vec::new()),
    });
    let api = KubeletApi::new(vec![NODE.to_owned()], backend, FakeReviews);
    let _server = tokio::spawn(async move {
        let _ = tke_kubelet_api::serve(listener, tls, api).await;
    });
    assert_eq!(presented_certificate(&url, &pki.ca_pem).await?, der(&first_cert)?);

    // The certificate is replaced but its key is not yet: the old pair stays in service.
    let (second_cert, second_key) = issue()?;
    std::fs::write(&cert_path, &second_cert)?;
    assert_eq!(presented_certificate(&url, &pki.ca_pem).await?, der(&first_cert)?);
    // Now the pair is whole again.
    std::fs::write(&key_path, &second_key)?;
    assert_eq!(
        presented_certificate(&url, &pki.ca_pem).await?,
        der(&second_cert)?
    );
    Ok(())
}
