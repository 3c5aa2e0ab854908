//! Traffic to burst pods, end to end: a Service over a burst workload gets an endpoint per Ready
//! replica, local and cloud alike, and its ClusterIP, called from a pod on a real IDC node through
//! kube-proxy, reaches every replica.
//!
//! The control plane runs tke-scheduler with the extender, eks-admission and eklet on cloudsim; its
//! one local node is a real node (kubelet, containerd, kube-proxy in a network namespace). The
//! cloud's VPC is a network namespace of the test bed's own: sandboxes get its addresses, their
//! agents and port responders listen inside it, and the real node reaches it over a veth pair of
//! its own, the Direct Connect of the seed's underlay. Cloud replicas answer HTTP with
//! `cloudsim <instance> <container> port <n>`, the local one with its pod name, so every answer
//! names the replica that gave it.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Command as StdCommand,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, api::PostParams, runtime::watcher};
use serde_json::json;
use support::{
    PATIENCE,
    admission::{Admission, WALKTHROUGH_PORT, is_ready, node_of, scale, wait_for_pods, walkthrough},
    eklet::{Eklet, Identity, enable_agents_in, start_cloudsim},
    extender::{self, Extender},
    kubectl,
};
use tke_testbed::{images, realnode, wait};

const APP: &str = "web";
const PORT: u16 = WALKTHROUGH_PORT;
const CLIENT: &str = "client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_over_a_burst_workload_routes_to_every_ready_replica_local_and_cloud() -> anyhow::Result<()>
{
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let (cp, extender_addr) = extender::control_plane(Vec::new()).await?;
    let _extender = Extender::start(&cp, extender_addr, &[]).await?;
    let real = cp.add_real_node("svc").await?;
    let vpc = cp.add_vpc("vpc")?;
    vpc.connect(&real)?;
    let mut agents = None;
    let cloud = start_cloudsim(|config| agents = Some(enable_agents_in(config, &vpc))).await?;
    let agents = agents.context("cloudsim was not configured")??;
    let identity = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &identity, &[&agents]).await?;
    let _admission = Admission::start(&cp, &[]).await?;
    let client = cp.client().await?;
    let ns = cp.namespace("svc").await?;
    let virtual_node = identity.node();

    // The seed's walkthrough with the test image serving HTTP: 1 local + 3 cloud.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &workload(4)?)
        .await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"port": PORT, "targetPort": PORT}]},
    }))?;
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    let pods = wait_for_pods(&client, &ns, APP, "1 local + 3 cloud replicas Ready", |pods| {
        placement(pods, &real.name, &virtual_node) == (1, 3)
    })
    .await?;

    // One endpoint per Ready replica; the cloud ones are VPC addresses.
    let expected = ready_addresses(&pods);
    let endpoints = wait_endpoints(&client, &ns, "4 endpoints", |ready| ready == &expected).await?;
    let in_vpc = endpoints.iter().filter(|ip| in_block(**ip, vpc.block)).count();
    assert_eq!(
        in_vpc,
        3,
        "cloud endpoints in the VPC {}: {endpoints:?}",
        vpc.block_text()
    );

    // Through kube-proxy from a pod on the real node, every replica answers.
    start_client(&client, &ns, &real.name).await?;
    let replicas = answer_names(&pods, &virtual_node);
    let heard = call_until_heard(&cp, &ns, &cluster_ip, &replicas).await?;
    assert_eq!(heard, replicas.values().cloned().collect::<BTreeSet<_>>());

    // Scaled in: the cloud replicas go first, and their endpoints with them.
    scale(&client, &ns, APP, 2).await?;
    let pods = wait_for_pods(&client, &ns, APP, "1 local + 1 cloud replica", |pods| {
        pods.len() == 2 && placement(pods, &real.name, &virtual_node) == (1, 1)
    })
    .await?;
    let expected = ready_addresses(&pods);
    wait_endpoints(&client, &ns, "2 endpoints", |ready| ready == &expected).await?;

    scale(&client, &ns, APP, 1).await?;
    let pods = wait_for_pods(&client, &ns, APP, "the local replica alone", |pods| {
        pods.len() == 1 && placement(pods, &real.name, &virtual_node) == (1, 0)
    })
    .await?;
    let expected = ready_addresses(&pods);
    wait_endpoints(&client, &ns, "1 endpoint", |ready| ready == &expected).await?;
    let local: BTreeSet<String> = answer_names(&pods, &virtual_node).into_values().collect();
    let answers = call(&cp, &ns, &cluster_ip, 20).await?;
    assert!(
        !answers.is_empty() && answers.iter().all(|a| local.contains(a)),
        "after scaling to 1 only the local replica may answer: {answers:?}"
    );

    // Nothing of the VPC or the node is left on the host.
    let names = [vpc.netns.clone(), real.netns.clone()];
    let block = vpc.block_text();
    drop(eklet);
    drop(cloud);
    drop(real);
    drop(vpc);
    let netns = ip(&["netns", "list"])?;
    let links = ip(&["-o", "link"])?;
    let routes = ip(&["route"])?;
    for name in &names {
        assert!(
            !netns.split_whitespace().any(|w| w == name),
            "namespace {name} left: {netns}"
        );
        assert!(!links.contains(&format!("{name}h")), "veth {name}h left: {links}");
    }
    assert!(!routes.contains(&block), "route to {block} left: {routes}");
    assert!(!links.contains("tke-dc"), "Direct Connect veth left: {links}");
    Ok(())
}

/// The seed's walkthrough: the local replica serves its pod name; a cloud replica's port is served
/// by cloudsim's responder (`CLOUDSIM_PORTS`).
fn workload(replicas: i32) -> anyhow::Result<Deployment> {
    walkthrough(
        APP,
        replicas,
        "hostname > /www/index.html",
        json!({
            "env": [{"name": tke_cloudsim::PORTS_ENV, "value": PORT.to_string()}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        }),
        json!({"terminationGracePeriodSeconds": 0}),
    )
}

/// (local, cloud) replicas that are Ready and not being deleted; any other pod counts against both.
fn placement(pods: &[Arc<Pod>], local_node: &str, virtual_node: &str) -> (usize, usize) {
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if live.len() != pods.len() || !live.iter().all(|p| is_ready(p)) {
        return (usize::MAX, usize::MAX);
    }
    let local = live.iter().filter(|p| node_of(p) == Some(local_node)).count();
    let cloud = live.iter().filter(|p| node_of(p) == Some(virtual_node)).count();
    (local, cloud)
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

fn ready_addresses(pods: &[Arc<Pod>]) -> BTreeSet<Ipv4Addr> {
    pods.iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| pod_ip(p))
        .collect()
}

fn in_block(ip: Ipv4Addr, (network, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network)
}

/// What each replica answers: the local one its pod name, a cloud one cloudsim's responder line
/// naming its instance (the sandbox id in its container ID, `tencent://<instance>/<container>`).
fn answer_names(pods: &[Arc<Pod>], virtual_node: &str) -> BTreeMap<String, String> {
    pods.iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.clone()?;
            if node_of(pod) != Some(virtual_node) {
                return Some((name.clone(), name));
            }
            let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let id = status.container_id.as_deref()?.strip_prefix("tencent://")?;
            let (instance, container) = id.split_once('/')?;
            Some((name, format!("cloudsim {instance} {container} port {PORT}")))
        })
        .collect()
}

/// The ready addresses of the Service's EndpointSlices, once `done` holds for them.
async fn wait_endpoints(
    client: &Client,
    ns: &str,
    what: &str,
    mut done: impl FnMut(&BTreeSet<Ipv4Addr>) -> bool,
) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={APP}"));
    let slices = wait::for_objects(slices, config, PATIENCE, what, |slices| {
        done(&ready_endpoints(slices))
    })
    .await?;
    Ok(ready_endpoints(&slices))
}

fn ready_endpoints(slices: &[Arc<EndpointSlice>]) -> BTreeSet<Ipv4Addr> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// A pod on the real node to call the Service from.
async fn start_client(client: &Client, ns: &str, node: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": CLIENT, "labels": {"app": CLIENT}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "client",
                "image": images::BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?;
    wait_for_pods(client, ns, CLIENT, "the client pod Running", |pods| {
        pods.iter().all(|p| is_ready(p)) && !pods.is_empty()
    })
    .await?;
    Ok(())
}

/// `count` HTTP requests to `ip:PORT` from the client pod (`kubectl exec`); the last line of every
/// answer.
async fn call(cp: &tke_testbed::ControlPlane, ns: &str, ip: &str, count: u32) -> anyhow::Result<Vec<String>> {
    let script = format!(
        "for i in $(seq 1 {count}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {PORT} | tail -n 1; done"
    );
    let mut command = kubectl::kubectl(cp);
    command.args(["exec", "-n", ns, CLIENT, "--", "sh", "-c", &script]);
    let (code, stdout, stderr) = kubectl::run(command, None).await?;
    if code != 0 {
        bail!("kubectl exec exited {code}: {stderr}");
    }
    Ok(stdout
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Calls the Service until every replica in `replicas` has answered (at most five rounds of 40
/// requests: kube-proxy picks endpoints at random); what was heard.
async fn call_until_heard(
    cp: &tke_testbed::ControlPlane,
    ns: &str,
    ip: &str,
    replicas: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeSet<String>> {
    let wanted: BTreeSet<String> = replicas.values().cloned().collect();
    let mut heard = BTreeSet::new();
    for _ in 0..5 {
        for answer in call(cp, ns, ip, 40).await? {
            if !wanted.contains(&answer) {
                bail!("an answer from no replica of the Service: {answer:?} (replicas: {replicas:?})");
            }
            heard.insert(answer);
        }
        if heard == wanted {
            break;
        }
    }
    Ok(heard)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = StdCommand::new("ip").args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
