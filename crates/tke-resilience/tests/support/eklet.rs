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
use tke_testbed::{ControlPlane, Proc, components, random_suffix, wait};

pub use super::PATIENCE;

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

/// Sandbox agents for a cloudsim, and the VPC they listen in. Keep it as long as the cloudsim runs.
/// Derefs to the eklet flag that points the tencent provider at the agents.
pub struct Agents {
    pub eklet_arg: String,
    /// `None` where network namespaces cannot be made (not root): the block is then loopback.
    pub vpc: Option<tke_testbed::realnode::vpc::Vpc>,
}

impl std::ops::Deref for Agents {
    type Target = String;

    fn deref(&self) -> &String {
        &self.eklet_arg
    }
}

/// Gives every instance of `config` a sandbox agent this machine reaches as eklet reaches the real
/// ones over Direct Connect: in a VPC network namespace of the test's own (on `cp`'s run
/// directory) where this machine can make one, else on a loopback block of the test's own.
pub fn enable_agents(cp: &ControlPlane, config: &mut tke_cloudsim::Config) -> anyhow::Result<Agents> {
    if tke_testbed::realnode::address::unavailable().is_some() {
        let block = components::AgentBlock::new()?;
        config.agent_port = Some(block.port);
        config.private_cidr = (block.network, block.prefix);
        return Ok(Agents {
            eklet_arg: block.eklet_arg(),
            vpc: None,
        });
    }
    let vpc = cp.add_vpc(&format!("vpc-{}", random_suffix()))?;
    let eklet_arg = enable_agents_in(config, &vpc)?;
    Ok(Agents {
        eklet_arg,
        vpc: Some(vpc),
    })
}

/// Gives every instance of `config` a sandbox agent in `vpc`, the VPC network namespace of the
/// test's own: sandboxes get addresses of its block, routed from this namespace and from the real
/// nodes connected to it. Returns the eklet flag that points the tencent provider at the agents.
pub fn enable_agents_in(
    config: &mut tke_cloudsim::Config,
    vpc: &tke_testbed::realnode::vpc::Vpc,
) -> anyhow::Result<String> {
    let block = components::AgentBlock::in_vpc(vpc)?;
    config.agent_port = Some(block.port);
    config.private_cidr = (block.network, block.prefix);
    config.netns.clone_from(&block.netns);
    config.subnet_prefix = block.subnet_prefix;
    Ok(block.eklet_arg())
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
        Eklet::spawn(cp, cloud, identity, extra)?
            .until_ready(cp, identity)
            .await
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(
        cp: &ControlPlane,
        cloud: &Handle,
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        let launcher =
            launcher(identity, extra)?.tencent(&cloud.endpoint(), "ap-guangzhou", VPC, "sg-eklettest");
        Eklet::spawn_launcher(cp, launcher, extra)
    }

    /// Starts eklet with other provider flags than cloudsim's (e.g. `--provider=kubernetes`)
    /// and waits until its virtual node is Ready.
    pub async fn start_with_provider(
        cp: &ControlPlane,
        provider_args: &[String],
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        Eklet::spawn_with_provider(cp, provider_args, identity, extra)?
            .until_ready(cp, identity)
            .await
    }

    /// Starts the process with these provider flags, without waiting for anything.
    pub fn spawn_with_provider(
        cp: &ControlPlane,
        provider_args: &[String],
        identity: &Identity,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        let launcher = launcher(identity, extra)?.provider_args(provider_args);
        Eklet::spawn_launcher(cp, launcher, extra)
    }

    /// Waits until it leads and its virtual node is Ready.
    async fn until_ready(mut self, cp: &ControlPlane, identity: &Identity) -> anyhow::Result<Eklet> {
        self.wait_until_leading().await?;
        wait_node_ready(&cp.client().await?, &identity.node()).await?;
        Ok(self)
    }

    fn spawn_launcher(
        cp: &ControlPlane,
        launcher: components::Eklet,
        extra: &[&str],
    ) -> anyhow::Result<Eklet> {
        if std::env::var_os("EKLET_TEST_KEEP").is_some() {
            cp.keep_run_dir();
        }
        let launcher = launcher.args(extra.iter().copied());
        Ok(Eklet {
            proc: launcher.spawn(cp)?,
            metrics: launcher.metrics_addr(),
            kubelet: launcher.kubelet_addr(),
        })
    }

    /// Waits until `/metrics` says this process leads; fails at once if it exits.
    pub async fn wait_until_leading(&mut self) -> anyhow::Result<()> {
        let metrics = self.metrics;
        components::wait_while_alive(
            std::slice::from_mut(&mut self.proc),
            PATIENCE,
            "eklet to lead",
            || async move {
                http_get(metrics, "/metrics")
                    .await
                    .is_ok_and(|text| sample(&text, "eklet_leader") == Some(1.0))
            },
        )
        .await?;
        Ok(())
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

/// eklet as the tests run it: this identity's one subnet, a Lease quick enough for tests, the test
/// credentials, and a quick `--status-sync-interval`, `--node-ip` and `--orphan-sweep-interval`
/// unless `extra` sets them.
fn launcher(identity: &Identity, extra: &[&str]) -> anyhow::Result<components::Eklet> {
    let sets = |flag: &str| extra.iter().any(|a| a.starts_with(flag));
    let mut launcher = components::Eklet::new(
        &super::binary(),
        &identity.cluster_id,
        &identity.subnet,
        &identity.zone,
    )?
    .name(format!("eklet-{}-{}", identity.cluster_id, random_suffix()))
    .args(["--namespace=default", "--leader-elect-lease-duration=6s"])
    .env("TENCENTCLOUD_SECRET_ID", SECRET_ID)
    .env("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    // EKLET_TEST_LOG: another filter, e.g. `debug` to see a stream's connections.
    .env(
        "RUST_LOG",
        std::env::var("EKLET_TEST_LOG").unwrap_or_else(|_| "info,tke_eklet=debug".into()),
    );
    if !sets("--status-sync-interval") {
        launcher = launcher.arg("--status-sync-interval=500ms");
    }
    if sets("--node-ip") {
        launcher = launcher.node_ip(None);
    }
    if !sets("--orphan-sweep-interval") {
        launcher = launcher.arg("--orphan-sweep-interval=10s");
    }
    Ok(launcher)
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

/// Running and not being deleted.
pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && phase(pod) == "Running"
}

/// The pod's IP, once it has a non-empty one.
pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

/// [`is_running`] and reachable: it has a pod IP.
pub fn is_running_with_ip(pod: &Pod) -> bool {
    is_running(pod) && pod_ip(pod).is_some()
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
