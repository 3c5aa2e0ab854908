//! `kubectl exec`, `attach`, `cp` and `port-forward` end to end: the real kube-apiserver of the test bed
//! dials this kubelet API at the node's InternalIP and daemonEndpoints port with its kubelet
//! client certificate, the server authenticates and authorises it through the apiserver
//! (TokenReview/SubjectAccessReview), and a backend of local processes and loopback connections
//! does the work. Run twice: for a node that does not declare `ExtendWebSocketsToKubelet` (the
//! apiserver turns kubectl's WebSocket into SPDY towards us) and for one that does (the
//! apiserver passes the WebSocket, or SPDY tunnelled in it, through).

mod support;

use std::{collections::BTreeMap, process::Stdio, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{AbortOnDrop, LocalNode, echo_listener, payload};
use tke_kubelet_api::{KubeReviews, KubeletApi, tls::ServingCertificate};
use tke_testbed::{ControlPlane, random_suffix};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// A node of its own served by this kubelet API, with one Running pod `web-0` (container `web`).
struct ServedNode {
    namespace: String,
    _server: AbortOnDrop,
}

async fn serve_node(cp: &ControlPlane, client: &Client, websockets_to_kubelet: bool) -> Result<ServedNode> {
    let node = format!("stream-{}", random_suffix());
    let namespace = cp.namespace("stream").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node}}))?,
        )
        .await?;
    let declared = if websockets_to_kubelet {
        json!(["ExtendWebSocketsToKubelet"])
    } else {
        json!([])
    };
    nodes
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
                    "lastTransitionTime": jiff::Timestamp::now().to_string()}],
                "declaredFeatures": declared,
            }})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "web-0"},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "busybox"}]},
        }))?,
    )
    .await?;
    let now = jiff::Timestamp::now().to_string();
    let pod = pods
        .patch_status(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "image": "busybox", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {"startedAt": now}}}],
            }})),
        )
        .await?;

    let serving = cp
        .pki()
        .issue_server(&format!("kubelet-{node}"), &node, &["127.0.0.1"])?;
    let tls = tke_kubelet_api::server_config(
        &ServingCertificate::Files {
            cert: serving.cert_file.clone(),
            key: serving.key_file.clone(),
        },
        Some(&cp.pki().ca.cert_file),
    )?;
    let api = KubeletApi::new(
        vec![node],
        Arc::new(LocalNode::new(pod)),
        KubeReviews::new(client.clone()),
    );
    let server = tokio::spawn(async move {
        if let Err(error) = tke_kubelet_api::serve(listener, tls, api).await {
            eprintln!("{error}");
        }
    });
    Ok(ServedNode {
        namespace,
        _server: AbortOnDrop(server),
    })
}

fn kubectl(cp: &ControlPlane) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(cp.bin("kubectl"));
    command
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .kill_on_drop(true);
    command
}

async fn exec_exit_code_and_streams(cp: &ControlPlane, served: &ServedNode) -> Result<()> {
    let mut child = kubectl(cp)
        .args(["exec", "-i", "-n", &served.namespace, "web-0", "-c", "web", "--"])
        .args(["sh", "-c", "read line; echo \"out:$line\"; echo err >&2; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"hello\n").await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert_eq!(stdout, "out:hello\n", "stderr {stderr:?}");
    assert!(stderr.starts_with("err\n"), "{stderr:?}");
    Ok(())
}

async fn attach_echoes(cp: &ControlPlane, served: &ServedNode) -> Result<()> {
    let mut child = kubectl(cp)
        .args([
            "attach",
            "-i",
            "-q",
            "-n",
            &served.namespace,
            "web-0",
            "-c",
            "web",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"ping\n").await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ping\n", "{stderr}");
    Ok(())
}

/// `kubectl cp` both ways: tar through exec's stdin and stdout. The "container" is this machine,
/// so the pod's paths are in a temporary directory.
async fn cp_round_trip(cp: &ControlPlane, served: &ServedNode) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("local.bin");
    let content = payload(9, 300 * 1024);
    std::fs::write(&local, &content)?;
    let remote = dir.path().join("in-pod.bin");
    let pod_path = format!("{}/web-0:{}", served.namespace, remote.display());
    for (from, to) in [
        (local.display().to_string(), pod_path.clone()),
        (pod_path, dir.path().join("back.bin").display().to_string()),
    ] {
        let output = kubectl(cp).args(["cp", "-c", "web", &from, &to]).output().await?;
        assert!(
            output.status.success(),
            "kubectl cp {from} {to}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(
        std::fs::read(&remote)? == content,
        "the copy into the pod differs"
    );
    assert!(
        std::fs::read(dir.path().join("back.bin"))? == content,
        "the copy out of the pod differs"
    );
    Ok(())
}

async fn port_forward_round_trip(cp: &ControlPlane, served: &ServedNode) -> Result<()> {
    let (port, _echo) = echo_listener().await?;
    let mut forward = kubectl(cp)
        .args(["port-forward", "-n", &served.namespace, "pod/web-0"])
        .args(["--address", "127.0.0.1", &format!(":{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(forward.stdout.take().context("stdout")?).lines();
    // "Forwarding from 127.0.0.1:LOCAL -> PORT"
    let local = loop {
        let Some(line) = lines.next_line().await? else {
            let mut stderr = String::new();
            if let Some(mut err) = forward.stderr.take() {
                err.read_to_string(&mut stderr).await?;
            }
            bail!("kubectl port-forward ended: {stderr}");
        };
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .with_context(|| format!("{line:?}"))?;
        }
    };
    let _drain = AbortOnDrop(tokio::spawn(async move {
        while let Ok(Some(_)) = lines.next_line().await {}
    }));
    // Two connections at once, each more than a SPDY window.
    let connections = (0..2u8).map(|i| async move {
        let sent = payload(i, 100 * 1024);
        let mut stream = TcpStream::connect(("127.0.0.1", local)).await?;
        let (mut read, mut write) = stream.split();
        let upload = async {
            write.write_all(&sent).await?;
            write.shutdown().await
        };
        let mut received = Vec::new();
        let (uploaded, downloaded) = tokio::join!(upload, read.read_to_end(&mut received));
        uploaded?;
        downloaded?;
        anyhow::ensure!(
            received == sent,
            "{} bytes back of {}",
            received.len(),
            sent.len()
        );
        anyhow::Ok(())
    });
    for result in futures::future::join_all(connections).await {
        result?;
    }
    forward.start_kill()?;
    Ok(())
}

/// `apiserver_websocket_streaming_requests_total` by (proxy_type, subresource).
async fn streaming_requests(client: &Client) -> Result<BTreeMap<(String, String), u64>> {
    let metrics = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        Some(line[start..].split('"').next()?.to_owned())
    };
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("apiserver_websocket_streaming_requests_total{"))
        .filter_map(|line| {
            let count = line.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some(((label(line, "proxy_type")?, label(line, "subresource")?), count))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_attach_cp_and_port_forward_work_whether_the_apiserver_speaks_spdy_or_websocket_to_the_node()
-> Result<()> {
    tke_testbed::install_crypto();
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    for websockets_to_kubelet in [false, true] {
        let before = streaming_requests(&client).await?;
        let served = serve_node(&cp, &client, websockets_to_kubelet).await?;
        tokio::time::timeout(Duration::from_secs(300), async {
            exec_exit_code_and_streams(&cp, &served).await.with_context(|| {
                format!("kubectl exec, WebSockets to the kubelet: {websockets_to_kubelet}")
            })?;
            attach_echoes(&cp, &served).await.with_context(|| {
                format!("kubectl attach, WebSockets to the kubelet: {websockets_to_kubelet}")
            })?;
            cp_round_trip(&cp, &served)
                .await
                .with_context(|| format!("kubectl cp, WebSockets to the kubelet: {websockets_to_kubelet}"))?;
            port_forward_round_trip(&cp, &served).await.with_context(|| {
                format!("kubectl port-forward, WebSockets to the kubelet: {websockets_to_kubelet}")
            })
        })
        .await
        .context("kubectl did not finish")??;
        // Which way the apiserver went, by its own count of WebSocket requests.
        let after = streaming_requests(&client).await?;
        let proxy_type = if websockets_to_kubelet {
            "proxied_to_kubelet"
        } else {
            "translated_at_apiserver"
        };
        for subresource in ["exec", "attach", "portforward"] {
            let key = (proxy_type.to_owned(), subresource.to_owned());
            assert!(
                after.get(&key) > before.get(&key),
                "{key:?} did not count the request: before {before:?}, after {after:?}"
            );
        }
    }
    Ok(())
}
