//! Starting `tke-resilience eklet` for end-to-end tests: an in-process cloudsim to be its cloud,
//! the eklet binary as a child process (so a test can SIGKILL it), and the checks every eklet
//! test repeats (the virtual node is Ready, pods by phase, what cloudsim holds).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta},
    runtime::watcher,
};
use tke_cloudsim::Handle;
use tke_tencent::{
    Credentials,
    model::{EksCi, Filter, filter_names},
};
use tke_testbed::{ControlPlane, Proc, random_suffix, wait};

/// How long anything in these tests may take before it counts as failed; generous for a busy
/// 2-core machine, never a performance threshold.
pub const PATIENCE: Duration = Duration::from_secs(180);

pub const SECRET_ID: &str = "AKIDeklettest";
pub const SECRET_KEY: &str = "eklet-test-secret-key";
pub const VPC: &str = "vpc-eklettest";

/// A cloudsim in this test's runtime, with the credentials eklet is given.
pub async fn start_cloudsim(configure: impl FnOnce(&mut tke_cloudsim::Config)) -> anyhow::Result<Handle> {
    let mut config = tke_cloudsim::Config::new(Credentials::new(SECRET_ID, SECRET_KEY));
    config.start_delay = Duration::from_millis(500);
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(tke_cloudsim::serve(config, listener).await?)
}

/// Gives every instance of `config` a sandbox agent this machine can reach: a loopback block of
/// the test's own (cloudsim cuts a /16 per subnet from it) and a free port. Returns the eklet flag
/// that points the tencent provider at that port.
pub fn enable_agents(config: &mut tke_cloudsim::Config) -> anyhow::Result<String> {
    let [port] = tke_testbed::free_ports::<1>()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let second = 16 + ((nanos ^ std::process::id()) % 200) as u8;
    config.agent_port = Some(port);
    config.private_cidr = (std::net::Ipv4Addr::new(127, second, 0, 0), 16);
    Ok(format!("--sandbox-metrics-port={port}"))
}

/// A tencent client of the test's own, to look at cloudsim as the cloud console would.
pub fn cloud_client(cloud: &Handle) -> anyhow::Result<tke_tencent::Client> {
    Ok(tke_tencent::Client::new(
        cloud.client_config(Credentials::new(SECRET_ID, SECRET_KEY)),
    )?)
}

/// The instance cloudsim holds for a pod, found by the sandbox name eklet gives it.
pub async fn instance_for(cloud: &Handle, cluster_id: &str, pod_uid: &str) -> anyhow::Result<Option<EksCi>> {
    let name = format!("eklet-{cluster_id}-{pod_uid}");
    let found = cloud_client(cloud)?
        .list_instances(vec![Filter::new(filter_names::EKS_CI_NAME, [name.as_str()])])
        .await?;
    Ok(found.into_iter().next())
}

/// Who this eklet is: its cluster id and its one subnet (so its one virtual node).
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: String,
    pub subnet: String,
    pub zone: String,
}

impl Identity {
    /// A cluster id and subnet no other test uses.
    pub fn unique() -> Identity {
        let suffix = random_suffix();
        Identity {
            cluster_id: format!("cls-{suffix}"),
            subnet: format!("subnet-{suffix}"),
            zone: "ap-guangzhou-3".into(),
        }
    }

    pub fn node(&self) -> String {
        format!("eklet-{}", self.subnet)
    }
}

/// A running `tke-resilience eklet`.
pub struct Eklet {
    proc: Proc,
    pub metrics: SocketAddr,
    /// The kubelet API (TLS), which trusts the test bed CA for client certificates.
    pub kubelet: SocketAddr,
}

impl Eklet {
    /// Starts eklet against `cp` and `cloud` and waits until its virtual node is Ready.
    pub async fn start(
        cp: &ControlPlane,
        cloud: &Handle,
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        let mut eklet = Eklet::spawn(cp, cloud, identity, extra)?;
        eklet.wait_until_leading().await?;
        wait_node_ready(&cp.client().await?, &identity.node()).await?;
        Ok(eklet)
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(
        cp: &ControlPlane,
        cloud: &Handle,
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        let cloud_args = [
            "--region=ap-guangzhou".to_owned(),
            format!("--vpc-id={VPC}"),
            "--security-group-id=sg-eklettest".into(),
            format!("--cloud-endpoint={}", cloud.endpoint()),
        ];
        Eklet::spawn_with_provider(cp, &cloud_args, identity, extra)
    }

    /// Starts eklet with other provider flags than cloudsim's (e.g. `--provider=kubernetes`)
    /// and waits until its virtual node is Ready.
    pub async fn start_with_provider(
        cp: &ControlPlane,
        provider_args: &[String],
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        let mut eklet = Eklet::spawn_with_provider(cp, provider_args, identity, extra)?;
        eklet.wait_until_leading().await?;
        wait_node_ready(&cp.client().await?, &identity.node()).await?;
        Ok(eklet)
    }

    /// Starts the process with these provider flags, without waiting for anything.
    pub fn spawn_with_provider(
        cp: &ControlPlane,
        provider_args: &[String],
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        if std::env::var_os("EKLET_TEST_KEEP").is_some() {
            cp.keep_run_dir();
        }
        let [port, kubelet_port] = tke_testbed::free_ports::<2>()?;
        let mut args = vec![
            "eklet".to_owned(),
            format!("--kubeconfig={}", cp.kubeconfig().display()),
            format!("--cluster-id={}", identity.cluster_id),
            format!("--subnet={}={}", identity.subnet, identity.zone),
        ];
        args.extend(provider_args.iter().cloned());
        args.extend([
            "--bind-address=127.0.0.1".to_owned(),
            format!("--metrics-port={port}"),
            format!("--kubelet-port={kubelet_port}"),
            format!("--client-ca-file={}", cp.pki().ca.cert_file.display()),
            "--namespace=default".into(),
            "--leader-elect-lease-duration=6s".into(),
            "--status-sync-interval=500ms".into(),
        ]);
        if !extra.iter().any(|a| a.starts_with("--node-ip")) {
            args.push("--node-ip=127.0.0.1".into());
        }
        if !extra.iter().any(|a| a.starts_with("--orphan-sweep-interval")) {
            args.push("--orphan-sweep-interval=10s".into());
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let name = format!("eklet-{}-{}", identity.cluster_id, random_suffix());
        // EKLET_TEST_LOG: another filter, e.g. `debug` to see a stream's connections.
        let log = std::env::var("EKLET_TEST_LOG").unwrap_or_else(|_| "info,tke_eklet=debug".into());
        let proc = cp.spawn_process(
            &name,
            &super::binary(),
            &args,
            &[
                ("TENCENTCLOUD_SECRET_ID", SECRET_ID),
                ("TENCENTCLOUD_SECRET_KEY", SECRET_KEY),
                ("RUST_LOG", log.as_str()),
            ],
        )?;
        Ok(Eklet {
            proc,
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            kubelet: SocketAddr::from(([127, 0, 0, 1], kubelet_port)),
        })
    }

    /// Waits until `/metrics` says this process leads; fails at once if it exits.
    pub async fn wait_until_leading(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.proc.exited() {
                bail!("eklet exited with {status}:\n{}", self.proc.log_tail(40));
            }
            if let Ok(text) = self.metrics_text().await
                && sample(&text, "eklet_leader") == Some(1.0)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "eklet not leading after {PATIENCE:?}:\n{}",
                    self.proc.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        http_get(self.metrics, "/metrics").await
    }

    /// SIGKILL: no chance to release its lease or finish a request.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

/// Waits until the node is Ready and carries no not-ready/unreachable taint.
pub async fn wait_node_ready(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    wait::for_objects(nodes, config, PATIENCE, &format!("node {node} Ready"), |nodes| {
        nodes.iter().any(|n| is_ready(n))
    })
    .await?;
    Ok(())
}

/// Fails the test if the node is not Ready now: the node-lifecycle controller would have
/// marked it if its heartbeat had stopped.
pub async fn assert_node_ready(client: &Client, node: &str) -> anyhow::Result<()> {
    let found = Api::<Node>::all(client.clone()).get(node).await?;
    if !is_ready(&found) {
        bail!(
            "node {node} is not Ready: {:?} {:?}",
            found.status.and_then(|s| s.conditions),
            found.spec.and_then(|s| s.taints)
        );
    }
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let lifecycle_taint = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
    ready && !lifecycle_taint
}

/// Removes the virtual node a test created, so dead nodes do not pile up in the shared cluster.
pub async fn remove_node(client: &Client, node: &str) {
    let _ = Api::<Node>::all(client.clone())
        .delete(node, &DeleteParams::default())
        .await;
}

/// The pod template metadata and spec that put a pod on `identity`'s virtual node.
pub fn cloud_pod_spec(identity: &Identity, containers: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "nodeSelector": {"kubernetes.io/hostname": identity.node()},
        "tolerations": [{"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 5,
        "containers": containers,
    })
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && phase(pod) == "Running"
}

pub fn running(pods: &[Arc<Pod>]) -> usize {
    pods.iter().filter(|p| is_running(p)).count()
}

/// Object metadata with a name and labels.
pub fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ObjectMeta::default()
    }
}

/// The value of one sample (`name` or `name{labels}`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A plain HTTP/1.0 GET on loopback, enough for /metrics.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The events about an object (by UID), as `kubectl describe` lists them.
pub async fn events_about(
    client: &Client,
    namespace: &str,
    uid: &str,
) -> anyhow::Result<Vec<k8s_openapi::api::core::v1::Event>> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let list = events
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?;
    Ok(list.items)
}

/// Waits (watching) until an event with `reason` is recorded about the object.
pub async fn wait_for_event(
    client: &Client,
    namespace: &str,
    uid: &str,
    reason: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Event> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("involvedObject.uid={uid}"));
    let found = wait::for_objects(
        events,
        config,
        PATIENCE,
        &format!("event {reason} about {uid}"),
        |events| events.iter().any(|e| e.reason.as_deref() == Some(reason)),
    )
    .await?;
    found
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason))
        .map(|e| (*e).clone())
        .context("event vanished")
}
