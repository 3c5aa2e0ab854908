//! The virtual node's kubelet API end to end: the real kube-apiserver dials eklet's kubelet port
//! (the node's InternalIP and daemonEndpoints port) with its kubelet client certificate when a
//! user runs `kubectl logs`, and eklet authenticates and authorises every caller as a kubelet
//! does. Cloud pods run in cloudsim, whose containers write `<time> <container> log line <i>`
//! every log interval.

mod support;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use support::eklet::*;
use support::kubectl::{kubectl, run};
use tke_testbed::{ControlPlane, random_suffix, wait};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Between two lines of a cloudsim container: short, so tests see lines appear quickly.
const LOG_INTERVAL: Duration = Duration::from_millis(300);

/// What the `web` container uses, as its sandbox agent reports it.
const WEB_MILLICORES: u64 = 200;
const WEB_MEMORY: u64 = 48 << 20;

/// cloudsim writing a log line every [`LOG_INTERVAL`], with its sandbox agents on.
async fn cloud_with_agents(cp: &ControlPlane) -> anyhow::Result<(tke_cloudsim::Handle, Agents)> {
    let mut agents = None;
    let cloud = start_cloudsim(|config| {
        config.log_interval = LOG_INTERVAL;
        agents = Some(enable_agents(cp, config));
    })
    .await?;
    let agents = agents.context("cloudsim was not configured")??;
    Ok((cloud, agents))
}

/// One Running pod `web-0` (container `web`) on a virtual node of its own.
struct CloudPod {
    cp: Arc<ControlPlane>,
    client: Client,
    namespace: String,
    name: String,
    node: String,
    pod: Arc<Pod>,
    eklet: Eklet,
    _cloud: tke_cloudsim::Handle,
    _agents: Agents,
}

impl CloudPod {
    async fn start(prefix: &str) -> anyhow::Result<CloudPod> {
        let cp = ControlPlane::shared().await?;
        let client = cp.client().await?;
        let namespace = cp.namespace(prefix).await?;
        let (cloud, agents) = cloud_with_agents(&cp).await?;
        let id = Identity::unique();
        let eklet = Eklet::start(&cp, &cloud, &id, &[agents.as_str()]).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0"},
            "spec": cloud_pod_spec(&id, json!([{"name": "web", "image": "nginx:1.27", "env": [
                {"name": tke_cloudsim::CPU_MILLICORES_ENV, "value": WEB_MILLICORES.to_string()},
                {"name": tke_cloudsim::MEMORY_BYTES_ENV, "value": WEB_MEMORY.to_string()},
            ]}])),
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let running = wait::for_objects(
            pods,
            watcher::Config::default().fields("metadata.name=web-0"),
            PATIENCE,
            "pod web-0 Running on the virtual node",
            |pods| pods.iter().any(|p| is_running(p)),
        )
        .await?;
        let pod = running.into_iter().next().context("pod web-0")?;
        Ok(CloudPod {
            cp,
            client,
            namespace,
            name: "web-0".into(),
            node: id.node(),
            pod,
            eklet,
            _cloud: cloud,
            _agents: agents,
        })
    }

    /// `kubectl logs NAME -n NS ARGS…` through the apiserver: (success, stdout, stderr).
    async fn kubectl_logs(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let mut command = kubectl(&self.cp);
        command
            .args(["logs", "-n", &self.namespace, &self.name])
            .args(args);
        let (code, stdout, stderr) = run(command, None).await?;
        Ok((code == 0, stdout, stderr))
    }

    /// Waits until the container has written at least `count` lines.
    async fn wait_for_lines(&self, count: usize) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        wait::until(PATIENCE, &format!("{count} log lines from {}", self.name), || {
            let pods = pods.clone();
            async move {
                let params = kube::api::LogParams {
                    container: Some("web".into()),
                    ..Default::default()
                };
                pods.logs("web-0", &params)
                    .await
                    .is_ok_and(|log| log.lines().count() >= count)
            }
        })
        .await?;
        Ok(())
    }

    fn logs_path(&self) -> String {
        format!("/containerLogs/{}/{}/web", self.namespace, self.name)
    }

    /// An HTTPS client for the kubelet port directly, optionally with the apiserver's kubelet
    /// client certificate. The serving certificate is self-signed, as the apiserver accepts it.
    fn kubelet_client(&self, as_apiserver: bool) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(60));
        if as_apiserver {
            let pair = &self.cp.pki().apiserver_kubelet_client;
            builder = builder.identity(reqwest::Identity::from_pem(
                format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes(),
            )?);
        }
        Ok(builder.build()?)
    }

    async fn kubelet_get(
        &self,
        client: &reqwest::Client,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let mut request = client.get(format!("https://{}{path}", self.eklet.kubelet));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("GET {path}"))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    async fn finish(self) {
        remove_node(&self.client, &self.node).await;
    }
}

/// The `i` of `web log line <i>`.
fn line_number(line: &str) -> Option<u64> {
    line.strip_prefix("web log line ")?.parse().ok()
}

fn numbers(text: &str) -> anyhow::Result<Vec<u64>> {
    text.lines()
        .map(|line| line_number(line).with_context(|| format!("not a cloudsim log line: {line:?}")))
        .collect()
}

fn consecutive(numbers: &[u64]) -> bool {
    numbers.windows(2).all(|pair| pair[1] == pair[0] + 1)
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_shows_the_cloud_containers_lines_with_tail_timestamps_and_limits() -> anyhow::Result<()>
{
    let pod = CloudPod::start("kubelet-logs").await?;
    pod.wait_for_lines(4).await?;

    let (ok, all, stderr) = pod.kubectl_logs(&[]).await?;
    assert!(ok, "kubectl logs: {stderr}");
    let all = numbers(&all)?;
    assert!(
        all.len() >= 4 && all.first() == Some(&0) && consecutive(&all),
        "{all:?}"
    );

    let (ok, tail, stderr) = pod.kubectl_logs(&["--tail=2"]).await?;
    assert!(ok, "kubectl logs --tail=2: {stderr}");
    let tail = numbers(&tail)?;
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert!(
        consecutive(&tail) && tail[1] >= *all.last().unwrap_or(&0),
        "{tail:?} after {all:?}"
    );

    let (ok, stamped, stderr) = pod.kubectl_logs(&["--timestamps", "--tail=3"]).await?;
    assert!(ok, "kubectl logs --timestamps: {stderr}");
    let mut times = Vec::new();
    let mut stamped_numbers = Vec::new();
    for line in stamped.lines() {
        let (time, rest) = line
            .split_once(' ')
            .with_context(|| format!("no timestamp in {line:?}"))?;
        // The kubelet's form: RFC 3339, UTC, nine fractional digits.
        assert!(time.len() == 30 && time.ends_with('Z'), "{time:?}");
        times.push(time.parse::<jiff::Timestamp>()?);
        stamped_numbers.push(line_number(rest).with_context(|| format!("{rest:?}"))?);
    }
    assert_eq!(stamped_numbers.len(), 3, "{stamped}");
    assert!(consecutive(&stamped_numbers), "{stamped}");
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "{stamped}");

    let (ok, limited, stderr) = pod.kubectl_logs(&["--limit-bytes=20"]).await?;
    assert!(ok, "kubectl logs --limit-bytes: {stderr}");
    assert_eq!(limited, "web log line 0\nweb l");

    let (ok, _, stderr) = pod.kubectl_logs(&["-c", "nope"]).await?;
    assert!(!ok && stderr.contains("nope"), "an unknown container: {stderr}");
    let (ok, _, stderr) = pod.kubectl_logs(&["--previous"]).await?;
    assert!(
        !ok && stderr.contains("no previous run"),
        "a container that never restarted: {stderr}"
    );

    pod.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_follow_streams_lines_written_after_it_started() -> anyhow::Result<()> {
    let pod = CloudPod::start("kubelet-follow").await?;
    pod.wait_for_lines(2).await?;
    let kubeconfig = pod.cp.kubeconfig().display().to_string();
    let mut child = tokio::process::Command::new(pod.cp.bin("kubectl"))
        .args([
            "--kubeconfig",
            &kubeconfig,
            "logs",
            "-f",
            "--tail=1",
            "-n",
            &pod.namespace,
            &pod.name,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // The first line was the newest when the request started; the next four did not exist yet.
    while seen.len() < 5 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .with_context(|| format!("kubectl logs -f: lines so far {seen:?}"))??;
        let Some(line) = line else {
            let output = child.wait_with_output().await?;
            bail!(
                "kubectl logs -f ended after {seen:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        seen.push(line_number(&line).with_context(|| format!("{line:?}"))?);
    }
    child.kill().await?;
    assert!(consecutive(&seen), "{seen:?}");
    pod.finish().await;
    Ok(())
}

/// A ServiceAccount in the pod's namespace and a token for it.
async fn service_account_token(pod: &CloudPod, name: &str) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(pod.client.clone(), &pod.namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    let request = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}}))?;
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    token
        .status
        .and_then(|s| s.token)
        .context("no token in the TokenRequest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_port_wants_credentials_and_asks_rbac_about_nodes_log() -> anyhow::Result<()> {
    install_crypto();
    let pod = CloudPod::start("kubelet-auth").await?;
    let anonymous = pod.kubelet_client(false)?;
    let logs = pod.logs_path();

    let (status, body) = pod.kubelet_get(&anonymous, &logs, None).await?;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{body}");

    let outsider = service_account_token(&pod, "no-logs").await?;
    let (status, body) = pod.kubelet_get(&anonymous, &logs, Some(&outsider)).await?;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    let user = format!("system:serviceaccount:{}:no-logs", pod.namespace);
    assert!(body.contains(&user) && body.contains("subresource=log"), "{body}");

    // nodes/log on this node only, as a cluster admin would grant it.
    let role = grant_on_node(&pod, "nodes/log", "get", "log-reader").await?;
    let reader = service_account_token(&pod, "log-reader").await?;
    // RBAC reaches the apiserver's authorizer through a watch; poll until it has.
    let granted = async {
        loop {
            let answer = pod.kubelet_get(&anonymous, &logs, Some(&reader)).await?;
            if answer.0 == reqwest::StatusCode::OK {
                return anyhow::Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let last = tokio::time::timeout(PATIENCE, granted)
        .await
        .context("the log-reader binding never took effect")??;
    assert!(numbers(&last.1).is_ok_and(|n| !n.is_empty()), "{last:?}");
    // Logs only: the same token may not read the node's metrics.
    let (status, body) = pod
        .kubelet_get(&anonymous, "/metrics/resource", Some(&reader))
        .await?;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("subresource=metrics"), "{body}");

    // The apiserver's kubelet client certificate (CN kube-apiserver-kubelet-client, O
    // system:masters), verified against the client CA, is let in.
    let (status, body) = pod
        .kubelet_get(&pod.kubelet_client(true)?, "/healthz", None)
        .await?;
    assert_eq!((status, body.as_str()), (reqwest::StatusCode::OK, "ok"));

    revoke(&pod, &role).await;
    pod.finish().await;
    Ok(())
}

/// Lets ServiceAccount `account` of the pod's namespace do `verb` on `resource` (a `nodes/…`
/// subresource) of the pod's node only, as a cluster admin would; returns the role's name.
async fn grant_on_node(pod: &CloudPod, resource: &str, verb: &str, account: &str) -> anyhow::Result<String> {
    let role = format!("kubelet-api-{account}-{}", random_suffix());
    Api::<ClusterRole>::all(pod.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": role},
                "rules": [{"apiGroups": [""], "resources": [resource], "verbs": [verb], "resourceNames": [pod.node]}],
            }))?,
        )
        .await?;
    Api::<ClusterRoleBinding>::all(pod.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": pod.namespace}],
            }))?,
        )
        .await?;
    Ok(role)
}

async fn revoke(pod: &CloudPod, role: &str) {
    let _ = Api::<ClusterRoleBinding>::all(pod.client.clone())
        .delete(role, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(pod.client.clone())
        .delete(role, &DeleteParams::default())
        .await;
}

/// The value of the sample `series` (`name{labels}`) in Prometheus text, ignoring its timestamp.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_summary_resource_metrics_and_pods_describe_the_cloud_pod() -> anyhow::Result<()> {
    install_crypto();
    let pod = CloudPod::start("kubelet-stats").await?;
    let apiserver = pod.kubelet_client(true)?;
    let uid = pod.pod.uid().context("uid")?;
    let status = pod.pod.status.clone().unwrap_or_default();
    let pod_started = status.start_time.clone().context("pod startTime")?.0;
    let container_started = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "web")
        .and_then(|c| c.state?.running?.started_at)
        .context("container web startedAt")?
        .0;

    let (code, text) = pod.kubelet_get(&apiserver, "/metrics/resource", None).await?;
    assert_eq!(code, reqwest::StatusCode::OK, "{text}");
    let labels = format!(
        "{{container=\"web\",namespace=\"{}\",pod=\"{}\"}}",
        pod.namespace, pod.name
    );
    assert_eq!(
        sample_value(&text, &format!("container_start_time_seconds{labels}")),
        Some(container_started.as_second() as f64),
        "{text}"
    );
    // Usage as the sandbox's agent reports it.
    assert_eq!(sample_value(&text, "scrape_error"), Some(0.0), "{text}");
    assert_eq!(sample_value(&text, "resource_scrape_error"), Some(0.0), "{text}");
    assert_eq!(
        sample_value(&text, &format!("container_memory_working_set_bytes{labels}")),
        Some(WEB_MEMORY as f64),
        "{text}"
    );
    let pod_labels = format!("{{namespace=\"{}\",pod=\"{}\"}}", pod.namespace, pod.name);
    assert_eq!(
        sample_value(&text, &format!("pod_memory_working_set_bytes{pod_labels}")),
        Some(WEB_MEMORY as f64),
        "{text}"
    );
    let cpu = sample_value(&text, &format!("container_cpu_usage_seconds_total{labels}"))
        .with_context(|| format!("no CPU counter in {text}"))?;
    let running_for = (jiff::Timestamp::now() - container_started).get_seconds() as f64;
    assert!(
        cpu > 0.0 && cpu <= WEB_MILLICORES as f64 / 1000.0 * (running_for + 1.0),
        "{cpu} core-seconds after {running_for} s at {WEB_MILLICORES}m: {text}"
    );

    let (code, body) = pod.kubelet_get(&apiserver, "/stats/summary", None).await?;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(summary["node"]["nodeName"], pod.node.as_str());
    let entry = summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["uid"] == uid.as_str()))
        .with_context(|| format!("the pod is not in {body}"))?;
    assert_eq!(entry["podRef"]["namespace"], pod.namespace.as_str());
    assert_eq!(entry["podRef"]["name"], pod.name.as_str());
    assert_eq!(
        entry["startTime"]
            .as_str()
            .map(|t| t.parse::<jiff::Timestamp>().ok()),
        Some(Some(pod_started))
    );
    assert_eq!(entry["containers"][0]["name"], "web");
    assert_eq!(
        entry["containers"][0]["memory"]["workingSetBytes"], WEB_MEMORY,
        "{body}"
    );
    assert_eq!(entry["memory"]["workingSetBytes"], WEB_MEMORY, "{body}");
    let nano_cores = entry["containers"][0]["cpu"]["usageNanoCores"]
        .as_u64()
        .with_context(|| format!("no usageNanoCores in {body}"))?;
    // A rate between two readings of the agent's counter (or since the container started).
    let expected = WEB_MILLICORES * 1_000_000;
    assert!(
        nano_cores.abs_diff(expected) <= expected / 50,
        "{nano_cores} nanocores, want about {expected}: {body}"
    );

    let (code, body) = pod.kubelet_get(&apiserver, "/pods", None).await?;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(list["kind"], "PodList");
    let uids: Vec<&str> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| p["metadata"]["uid"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(uids, [uid.as_str()]);

    // Streaming calls without a streaming protocol are refused, saying what they need (with a
    // protocol they reach the sandbox agent: tests/exec_cloudsim.rs).
    for path in [
        format!("/exec/{}/{}/web?command=ls&output=1", pod.namespace, pod.name),
        format!("/portForward/{}/{}", pod.namespace, pod.name),
    ] {
        let response = apiserver
            .post(format!("https://{}{path}", pod.eklet.kubelet))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains("needs a connection upgrade"), "{path}: {body}");
    }
    pod.finish().await;
    Ok(())
}

/// The node names of the pods a kubelet endpoint lists at `/pods`.
async fn listed_pods(client: &reqwest::Client, port: u16) -> anyhow::Result<Vec<String>> {
    let body = client
        .get(format!("https://127.0.0.1:{port}/pods"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let list: serde_json::Value = serde_json::from_str(&body)?;
    Ok(list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_virtual_node_has_its_own_kubelet_endpoint_with_only_its_pods() -> anyhow::Result<()> {
    install_crypto();
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let namespace = cp.namespace("kubelet-nodes").await?;
    let cloud = start_cloudsim(|config| config.log_interval = LOG_INTERVAL).await?;
    let id = Identity::unique();
    let second_subnet = format!("{}b", id.subnet);
    let second_node = format!("eklet-{second_subnet}");
    let eklet = Eklet::start(
        &cp,
        &cloud,
        &id,
        &[&format!("--subnet={second_subnet}={}", id.zone)],
    )
    .await?;
    wait_node_ready(&client, &second_node).await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let port_of = |node: k8s_openapi::api::core::v1::Node| {
        node.status
            .and_then(|s| s.daemon_endpoints?.kubelet_endpoint)
            .map(|e| e.port)
    };
    let first_port = eklet.kubelet.port();
    assert_eq!(port_of(nodes.get(&id.node()).await?), Some(i32::from(first_port)));
    assert_eq!(
        port_of(nodes.get(&second_node).await?),
        Some(i32::from(first_port) + 1)
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for (name, node) in [("a-0", id.node()), ("b-0", second_node.clone())] {
        let mut spec = cloud_pod_spec(&id, json!([{"name": "web", "image": "nginx:1.27"}]));
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    wait::for_objects(
        pods.clone(),
        watcher::Config::default(),
        PATIENCE,
        "a-0 and b-0 Running",
        |pods| pods.iter().filter(|p| is_running(p)).count() == 2,
    )
    .await?;

    // Through the apiserver, which dials each node's own port: both logs are there.
    for name in ["a-0", "b-0"] {
        wait::until(PATIENCE, &format!("kubectl logs {name}"), || {
            let pods = pods.clone();
            async move {
                pods.logs(name, &Default::default())
                    .await
                    .is_ok_and(|log| log.contains("web log line 0"))
            }
        })
        .await?;
    }
    // Each endpoint lists its own node's pods, and does not serve the other node's.
    let pair = &cp.pki().apiserver_kubelet_client;
    let apiserver = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(reqwest::Identity::from_pem(
            format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes(),
        )?)
        .build()?;
    assert_eq!(listed_pods(&apiserver, first_port).await?, ["a-0"]);
    assert_eq!(listed_pods(&apiserver, first_port + 1).await?, ["b-0"]);
    let wrong_node = apiserver
        .get(format!(
            "https://127.0.0.1:{first_port}/containerLogs/{namespace}/b-0/web"
        ))
        .send()
        .await?;
    assert_eq!(wrong_node.status(), reqwest::StatusCode::NOT_FOUND);

    remove_node(&client, &id.node()).await;
    remove_node(&client, &second_node).await;
    Ok(())
}

/// Issue #22: kube-apiserver refuses to proxy to a loopback node address, so on a loopback
/// InternalIP every `/api/v1/nodes/NAME/proxy/...` failed with "address not allowed". With eklet's
/// node address inside a network namespace of the test bed's own, the node proxy reaches eklet's
/// kubelet API as it reaches a kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_node_proxy_reaches_the_virtual_nodes_kubelet_api() -> anyhow::Result<()> {
    if let Some(why) = tke_testbed::realnode::address::unavailable() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("node addresses cannot be made on this machine: {why}");
        }
        eprintln!("SKIPPED: node addresses cannot be made on this machine: {why}");
        return Ok(());
    }
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let namespace = cp.namespace("node-proxy").await?;
    let (cloud, agents) = cloud_with_agents(&cp).await?;
    let mut address = cp.add_node_address("proxy")?;
    let id = Identity::unique();
    let node_ip = format!("--node-ip={}", address.ip);
    let eklet = Eklet::start(&cp, &cloud, &id, &[agents.as_str(), node_ip.as_str()]).await?;
    address.forward(eklet.kubelet.port(), eklet.kubelet)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": cloud_pod_spec(&id, json!([{"name": "web", "image": "nginx:1.27"}])),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(PATIENCE, "web-0 Running with a log line", || async {
        pods.get("web-0").await.is_ok_and(|p| is_running(&p))
            && pods
                .logs("web-0", &kube::api::LogParams::default())
                .await
                .is_ok_and(|log| !log.is_empty())
    })
    .await?;

    let node = id.node();
    let proxy = |path: String| {
        let client = client.clone();
        let uri = format!("/api/v1/nodes/{node}/proxy{path}");
        async move {
            let request = http::Request::get(&uri).body(Vec::new())?;
            client
                .request_text(request)
                .await
                .with_context(|| format!("GET {uri}"))
        }
    };
    let listed = proxy("/pods".into()).await?;
    assert!(listed.contains("\"web-0\""), "{listed}");
    let summary = proxy("/stats/summary".into()).await?;
    assert!(summary.contains(&node) && summary.contains("web-0"), "{summary}");
    let log = proxy(format!("/containerLogs/{namespace}/web-0/web")).await?;
    assert!(log.contains("web log line"), "{log}");
    let running = proxy("/runningpods/".into()).await?;
    assert!(running.contains("\"web-0\""), "{running}");
    let unknown = proxy("/no-such-thing".into()).await.unwrap_err();
    assert!(format!("{unknown:#}").contains("404"), "{unknown:#}");
    remove_node(&client, &node).await;
    Ok(())
}

/// Issue #17: exec is authorised as `create` on `nodes/proxy` whatever the HTTP method. A
/// WebSocket upgrade is a GET, and a token allowed only `get` on `nodes/proxy` must not run
/// commands with it (kubernetes#136550). Real TokenReview and SubjectAccessReview.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_the_kubelet_port_needs_create_on_nodes_proxy_even_as_a_websocket_get() -> anyhow::Result<()>
{
    install_crypto();
    let pod = CloudPod::start("kubelet-exec-auth").await?;
    let client = pod.kubelet_client(false)?;
    let exec = format!(
        "https://{}/exec/{}/{}/web?command=id&output=1",
        pod.eklet.kubelet, pod.namespace, pod.name
    );
    let upgrade = |token: Option<&str>| {
        let mut request = client
            .get(&exec)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Protocol", "v5.channel.k8s.io");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await?;
            let status = response.status();
            anyhow::Ok((status, response.text().await?))
        }
    };
    let (status, body) = upgrade(None).await?;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{body}");

    // get on nodes/proxy for this node: enough for /pods, not for exec.
    let role = grant_on_node(&pod, "nodes/proxy", "get", "proxy-getter").await?;
    let getter = service_account_token(&pod, "proxy-getter").await?;
    // The binding is in effect once the same token may list the node's pods.
    let granted = async {
        loop {
            if pod.kubelet_get(&client, "/pods", Some(&getter)).await?.0 == reqwest::StatusCode::OK {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(PATIENCE, granted)
        .await
        .context("the proxy-getter binding never took effect")??;
    let (status, body) = upgrade(Some(&getter)).await?;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("verb=create") && body.contains("subresource=proxy"),
        "{body}"
    );

    revoke(&pod, &role).await;
    pod.finish().await;
    Ok(())
}
