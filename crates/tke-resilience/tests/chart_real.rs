//! The chart installed as a user installs it, on a cluster whose IDC node is real: `helm install`
//! from `charts/tke-resilience` with our image (built from the binary under test, imported into the
//! node's containerd, `imagePullPolicy: Never`), and every component a real pod under its chart
//! ServiceAccount with in-cluster configuration. cloudsim, the cloud, runs as a pod of the same
//! image next to them.
//!
//! How traffic flows (see `tke_testbed::realnode`): pods reach the apiserver at the `kubernetes`
//! Service's ClusterIP, which kube-proxy inside the node's network namespace sends to a forwarder
//! in that namespace (the apiserver stays on loopback); eklet reaches cloudsim at cloudsim's
//! ClusterIP the same way (no cluster DNS: the chart's `cloud.endpoint` is the ClusterIP); the
//! apiserver reaches the real kubelet at the node IP and eklet's kubelet API (the virtual node's
//! InternalIP, eklet's pod IP) through the root namespace's route into the node's namespace; the
//! test reaches pods there too. Out of scope here: cloudsim's sandbox agents (exec, port-forward and
//! metrics of cloud pods), which need loopback addresses in cloudsim's own network namespace.

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration, time::Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Event, Node, Pod, Service},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    admission::{WALKTHROUGH_PORT, is_ready, node_of, scale, walkthrough},
    chart::{NAMESPACE, RELEASE, chart_dir, ci_values, helm_on},
    kubectl::{kubectl, run},
};
use tke_testbed::{ControlPlane, Options, RealNode, images, realnode, wait};

const PATIENCE: Duration = Duration::from_secs(240);
const NODE: &str = "idc-1";
const OUR_IMAGE: &str = "tke-testbed.local/tke-resilience:test";
const SCHEDULER_IMAGE: &str = "tke-testbed.local/kube-scheduler:test";
const CLOUDSIM_PORT: u16 = 18080;
/// The seed's walkthrough, with the test image in place of nginx.
const WALKTHROUGH: &str = "nginx-deployment";
const GREETING: &str = "hello from a real container on the IDC node";
const COMPONENTS: [&str; 3] = ["eklet", "eks-admission", "scheduler"];

/// A control plane with one real IDC node. Dropped node first, then the control plane (whose run
/// directory holds the node's clean-up script).
struct Cluster {
    node: RealNode,
    cp: ControlPlane,
    client: Client,
    values: Value,
}

impl Cluster {
    async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        helm_on(&self.cp, self.cp.run_dir(), args).await
    }

    fn subnet(&self) -> anyhow::Result<String> {
        self.values
            .pointer("/cloud/subnets/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("no cloud.subnets[0].id in the local-stack values")
    }

    fn values_str(&self, pointer: &str) -> anyhow::Result<String> {
        self.values
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no {pointer} in the local-stack values"))
    }

    /// cloudsim as a pod of our image in the release namespace, and its Service; returns the
    /// Service's ClusterIP.
    async fn start_cloudsim(&self) -> anyhow::Result<String> {
        let labels = json!({"app": "cloudsim"});
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "cloudsim", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsNonRoot": true},
                        "containers": [{
                            "name": "cloudsim",
                            "image": OUR_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": [
                                "cloudsim",
                                format!("--listen=0.0.0.0:{CLOUDSIM_PORT}"),
                                format!("--region={}", self.values_str("/cloud/regionLong")?),
                                "--start-delay=500ms",
                                "--log-interval=1s",
                            ],
                            "env": [
                                {"name": "TENCENTCLOUD_SECRET_ID", "value": self.values_str("/cloud/secretID")?},
                                {"name": "TENCENTCLOUD_SECRET_KEY", "value": self.values_str("/cloud/secretKey")?},
                            ],
                            "ports": [{"name": "api", "containerPort": CLOUDSIM_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": "api"}, "periodSeconds": 1},
                        }],
                    },
                },
            },
        }))?;
        Api::<Deployment>::namespaced(self.client.clone(), NAMESPACE)
            .create(&PostParams::default(), &deployment)
            .await?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "cloudsim"},
            "spec": {"selector": labels, "ports": [{"name": "api", "port": CLOUDSIM_PORT, "targetPort": "api"}]},
        }))?;
        let service = Api::<Service>::namespaced(self.client.clone(), NAMESPACE)
            .create(&PostParams::default(), &service)
            .await?;
        self.ready_pods(NAMESPACE, "app=cloudsim", 1).await?;
        service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the cloudsim Service has no ClusterIP")
    }

    /// cloudsim's counters (`/admin/stats`), read at its pod IP inside the node's namespace.
    async fn cloud_stats(&self) -> anyhow::Result<Value> {
        let pods = self.pods(NAMESPACE, "app=cloudsim").await?;
        let ip = pods
            .iter()
            .find(|p| is_ready(p))
            .and_then(pod_ip)
            .context("no Ready cloudsim pod")?;
        let text = support::eklet::http_get((ip, CLOUDSIM_PORT).into(), "/admin/stats").await?;
        Ok(serde_json::from_str(&text)?)
    }

    async fn live_instances(&self) -> anyhow::Result<u64> {
        let stats = self.cloud_stats().await?;
        stats["live_instances"]
            .as_u64()
            .with_context(|| format!("no live_instances in {stats}"))
    }

    async fn pods(&self, namespace: &str, selector: &str) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        Ok(pods.list(&ListParams::default().labels(selector)).await?.items)
    }

    /// Waits until exactly `count` pods match and all are Ready (and none is terminating).
    async fn ready_pods(&self, namespace: &str, selector: &str, count: usize) -> anyhow::Result<Vec<Pod>> {
        let what = format!("{count} Ready pods {selector} in {namespace}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let config = kube::runtime::watcher::Config::default().labels(selector);
        let found = wait::for_objects(pods, config, PATIENCE, &what, |pods: &[Arc<Pod>]| {
            pods.len() == count
                && pods
                    .iter()
                    .all(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
        })
        .await
        .with_context(|| self.diagnosis())?;
        Ok(found.iter().map(|p| (**p).clone()).collect())
    }

    /// Pods of the walkthrough: (Running and Ready on the real node, Running on the virtual node,
    /// all).
    async fn placement(&self, namespace: &str, virtual_node: &str) -> anyhow::Result<(usize, usize, usize)> {
        let pods = self.pods(namespace, &format!("app={WALKTHROUGH}")).await?;
        Ok(placement(&pods, virtual_node))
    }

    async fn wait_placement(
        &self,
        namespace: &str,
        virtual_node: &str,
        want: (usize, usize, usize),
    ) -> anyhow::Result<Vec<Pod>> {
        let what = format!("the walkthrough's pods placed (real node, cloud, all) = {want:?}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let config = kube::runtime::watcher::Config::default().labels(&format!("app={WALKTHROUGH}"));
        let found = wait::for_objects(pods, config, PATIENCE, &what, |pods: &[Arc<Pod>]| {
            let pods: Vec<Pod> = pods.iter().map(|p| (**p).clone()).collect();
            placement(&pods, virtual_node) == want
        })
        .await
        .with_context(|| self.diagnosis())?;
        Ok(found.iter().map(|p| (**p).clone()).collect())
    }

    /// Where to look when a wait fails.
    fn diagnosis(&self) -> String {
        format!(
            "kubelet, kube-proxy and containerd logs in {}/logs, pod logs in {}",
            self.cp.run_dir().display(),
            self.node.dir().join("kubelet/pod-logs").display()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installed_with_our_image_on_a_real_node_bursts_the_walkthrough_and_uninstalls_cleanly()
-> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let begun = Instant::now();
    let cp = ControlPlane::start(Options::default()).await?;
    let node = cp.add_real_node(NODE).await?;
    let client = cp.client().await?;
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(ci_values("local-stack-values.yaml"))?)?;
    let cluster = Cluster {
        node,
        cp,
        client,
        values,
    };
    let node_started = cluster.node.started_in;

    // Our image from the binary under test, and kube-scheduler's from the test bed's.
    let images_begun = Instant::now();
    let binary = support::binary();
    let ours = images::tke_resilience(
        &binary,
        &images::shared_libraries(&binary)?,
        OUR_IMAGE,
        &cluster.cp.run_dir().join("tke-resilience.tar"),
    )?;
    let scheduler = images::tool(
        &cluster.cp.bin("kube-scheduler"),
        SCHEDULER_IMAGE,
        &cluster.cp.run_dir().join("kube-scheduler.tar"),
    )?;
    cluster.node.import(&ours)?;
    cluster.node.import(&scheduler)?;
    let images_in = images_begun.elapsed();

    let cloudsim_ip = cluster.start_cloudsim().await?;

    // helm install, as the README says, with the image and the addresses of this cluster.
    let install_begun = Instant::now();
    let apiserver_port = cluster
        .cp
        .apiserver_url()
        .rsplit(':')
        .next()
        .context("apiserver port")?
        .to_owned();
    let (repository, tag) = OUR_IMAGE.rsplit_once(':').context("image tag")?;
    let set = format!(
        "image.repository={repository},image.tag={tag},image.pullPolicy=Never,\
         scheduler.image.ref={SCHEDULER_IMAGE},scheduler.image.pullPolicy=Never,\
         cloud.endpoint=http://{cloudsim_ip}:{CLOUDSIM_PORT},\
         eklet.podUsedApiserver=https://{}:{apiserver_port}",
        realnode::IN_CLUSTER_APISERVER
    );
    let chart = chart_dir().display().to_string();
    let values_file = ci_values("local-stack-values.yaml").display().to_string();
    cluster
        .helm(&[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "-f",
            &values_file,
            "--set",
            &set,
            "--wait",
            "--timeout",
            "4m",
        ])
        .await
        .with_context(|| cluster.diagnosis())?;

    // Every component Ready by its own probes, under its chart ServiceAccount, in-cluster.
    let mut component_pods = BTreeMap::new();
    for component in COMPONENTS {
        let selector = component_selector(component);
        let pods = cluster.ready_pods(NAMESPACE, &selector, 1).await?;
        let pod = &pods[0];
        let spec = pod.spec.as_ref().context("pod spec")?;
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(format!("{component}-{RELEASE}").as_str()),
            "{component} runs under its chart ServiceAccount"
        );
        assert_eq!(
            spec.node_name.as_deref(),
            Some(NODE),
            "{component} on the real node"
        );
        for container in &spec.containers {
            let args = container
                .args
                .iter()
                .flatten()
                .chain(container.command.iter().flatten());
            assert!(
                !args.into_iter().any(|a| a.contains("kubeconfig")),
                "{component}/{} is given no kubeconfig: in-cluster configuration",
                container.name
            );
            assert!(
                container.readiness_probe.is_some() || container.name == "extender",
                "{component}/{} has a readiness probe",
                container.name
            );
        }
        component_pods.insert(component, pod.metadata.name.clone().context("pod name")?);
    }
    let installed_in = install_begun.elapsed();

    // The virtual node registers, at eklet's pod IP (where the apiserver calls its kubelet API).
    let virtual_node = format!("eklet-{}", cluster.subnet()?);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    wait_node_ready(
        &nodes,
        &virtual_node,
        &format!("virtual node {virtual_node} Ready"),
    )
    .await
    .with_context(|| cluster.diagnosis())?;
    let eklet_ip = cluster
        .ready_pods(NAMESPACE, &component_selector("eklet"), 1)
        .await?[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("eklet pod IP")?;
    let internal_ip = nodes
        .get(&virtual_node)
        .await?
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address);
    assert_eq!(internal_ip, Some(eklet_ip), "the virtual node's InternalIP");

    // The seed's walkthrough with the test image: 1 on the real node, 3 in the cloud.
    let ns = cluster.cp.namespace("walkthrough").await?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &walkthrough(
                WALKTHROUGH,
                4,
                &format!("echo '{GREETING}' > /www/index.html && echo '{GREETING}'"),
                json!({"readinessProbe": {
                    "httpGet": {"path": "/index.html", "port": WALKTHROUGH_PORT},
                    "periodSeconds": 1,
                }}),
                json!({}),
            )?,
        )
        .await?;
    let pods = cluster.wait_placement(&ns, &virtual_node, (1, 3, 4)).await?;
    let local = pods
        .iter()
        .find(|p| node_of(p) == Some(NODE))
        .context("no local pod")?;
    let local_ip = pod_ip(local).context("the local pod's IP")?;
    assert!(
        cluster.node.owns_pod_ip(local_ip),
        "{local_ip} is the real node's"
    );
    let page = support::eklet::http_get((local_ip, WALKTHROUGH_PORT).into(), "/index.html").await?;
    assert!(page.contains(GREETING), "the real container serves HTTP: {page}");
    assert_eq!(cluster.live_instances().await?, 3, "one sandbox per cloud pod");

    // kubectl logs of both kinds of pod.
    let local_name = local.metadata.name.clone().context("local pod name")?;
    let mut logs = kubectl(&cluster.cp);
    logs.args(["logs", "-n", &ns, &local_name]);
    let (code, stdout, stderr) = run(logs, None).await?;
    assert_eq!(
        (code, stdout.trim()),
        (0, GREETING),
        "kubectl logs of the local pod: {stderr}"
    );
    let cloud_name = pods
        .iter()
        .find(|p| node_of(p) == Some(virtual_node.as_str()))
        .and_then(|p| p.metadata.name.clone())
        .context("no cloud pod")?;
    wait::until(PATIENCE, "kubectl logs of a cloud pod", || {
        let mut logs = kubectl(&cluster.cp);
        logs.args(["logs", "-n", &ns, &cloud_name]);
        async move {
            run(logs, None)
                .await
                .is_ok_and(|(code, out, _)| code == 0 && !out.trim().is_empty())
        }
    })
    .await?;

    // Every component's pod killed at once: new ones replace them (each waiting out its
    // predecessor's leader Lease) and the burst path keeps working.
    let mut delete = kubectl(&cluster.cp);
    delete.args(["delete", "pod", "-n", NAMESPACE, "--grace-period=0", "--force"]);
    delete.args(component_pods.values());
    let (code, _, stderr) = run(delete, None).await?;
    assert_eq!(code, 0, "{stderr}");
    for component in COMPONENTS {
        let replaced = cluster
            .ready_pods(NAMESPACE, &component_selector(component), 1)
            .await?;
        assert_ne!(
            replaced[0].metadata.name.as_ref(),
            Some(&component_pods[component]),
            "a new {component} pod"
        );
    }
    scale(&cluster.client, &ns, WALKTHROUGH, 5).await?;
    cluster.wait_placement(&ns, &virtual_node, (1, 4, 5)).await?;
    assert_eq!(cluster.live_instances().await?, 4, "one sandbox per cloud pod");

    // helm upgrade with a changed value: every component rolls, no sandbox is lost or made again.
    let before = cloud_pods(
        &cluster.pods(&ns, &format!("app={WALKTHROUGH}")).await?,
        &virtual_node,
    );
    let stats = cluster.cloud_stats().await?;
    let old_pods: BTreeMap<&str, String> = {
        let mut old = BTreeMap::new();
        for component in COMPONENTS {
            let pods = cluster.pods(NAMESPACE, &component_selector(component)).await?;
            old.insert(component, pods[0].metadata.name.clone().unwrap_or_default());
        }
        old
    };
    cluster
        .helm(&[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "4m",
        ])
        .await
        .with_context(|| cluster.diagnosis())?;
    for component in COMPONENTS {
        let pods = cluster
            .ready_pods(NAMESPACE, &component_selector(component), 1)
            .await?;
        assert_ne!(
            pods[0].metadata.name.as_deref(),
            Some(old_pods[component].as_str()),
            "helm upgrade rolled {component}"
        );
        let env = pods[0]
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten());
        if component != "scheduler" {
            assert!(
                env.clone()
                    .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")),
                "{component} runs with the new logLevel"
            );
        }
    }
    // The new eklet adopts every sandbox: the same pods, Running, and not one create or delete.
    wait_node_ready(
        &nodes,
        &virtual_node,
        "the new eklet leading and the virtual node Ready",
    )
    .await?;
    let after = cloud_pods(
        &cluster.pods(&ns, &format!("app={WALKTHROUGH}")).await?,
        &virtual_node,
    );
    assert_eq!(
        after, before,
        "the cloud pods and their containers after helm upgrade"
    );
    let stats_after = cluster.cloud_stats().await?;
    assert_eq!(
        (
            &stats_after["creates"],
            &stats_after["deletes"],
            &stats_after["live_instances"]
        ),
        (&stats["creates"], &stats["deletes"], &stats["live_instances"]),
        "cloudsim's instances across helm upgrade"
    );
    assert_eq!(cluster.placement(&ns, &virtual_node).await?, (1, 4, 5));

    // helm uninstall: the drain hook Job runs for real and leaves no sandbox, virtual node or Lease.
    let uninstall_begun = Instant::now();
    cluster
        .helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "4m",
        ])
        .await
        .with_context(|| cluster.diagnosis())?;
    let uninstalled_in = uninstall_begun.elapsed();
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let drain_job = format!("eklet-drain-{RELEASE}");
    let job_events: Vec<String> = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={drain_job}")))
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    ensure!(
        job_events.iter().any(|r| r == "SuccessfulCreate") && job_events.iter().any(|r| r == "Completed"),
        "the drain Job {drain_job} ran to completion (its events: {job_events:?})"
    );
    assert_eq!(
        cluster.live_instances().await?,
        0,
        "sandboxes left after helm uninstall"
    );
    assert!(
        nodes.get_opt(&virtual_node).await?.is_none(),
        "the virtual node outlived helm uninstall"
    );
    let node_leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    assert!(
        node_leases.get_opt(&virtual_node).await?.is_none(),
        "the virtual node's Lease outlived helm uninstall"
    );
    // The components' pods stop (each hands back its leader Lease as it goes).
    wait::until(PATIENCE, "the components' pods gone", || async {
        let mut left = 0;
        for component in COMPONENTS {
            left += cluster
                .pods(NAMESPACE, &component_selector(component))
                .await
                .map_or(1, |pods| pods.len());
        }
        left == 0
    })
    .await?;
    // Every leader Lease handed back and deleted: the drain hook stopped eklet, eks-admission and
    // tke-scheduler while their Roles still allowed it (helm deletes the Roles before the pods
    // have stopped).
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let leader_leases = [
        format!("eklet-{}", cluster.values_str("/cloud/uniqueID")?),
        "eks-admission".to_owned(),
        "tke-scheduler".to_owned(),
    ];
    let mut left = Vec::new();
    for name in &leader_leases {
        if let Some(lease) = leases.get_opt(name).await? {
            let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            left.push(format!("{name} (holder {holder:?})"));
        }
    }
    assert!(
        left.is_empty(),
        "leader Leases left after helm uninstall: {left:?}"
    );

    eprintln!(
        "[chart_real] real node Ready in {:.1}s; images built and imported in {:.1}s; install to all \
         components Ready in {:.1}s; uninstall {:.1}s; node kubelet+containerd+kube-proxy {} MiB; \
         whole test {:.1}s",
        node_started.as_secs_f64(),
        images_in.as_secs_f64(),
        installed_in.as_secs_f64(),
        uninstalled_in.as_secs_f64(),
        cluster.node.rss_bytes() / (1024 * 1024),
        begun.elapsed().as_secs_f64()
    );
    Ok(())
}

fn component_selector(component: &str) -> String {
    format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}")
}

fn placement(pods: &[Pod], virtual_node: &str) -> (usize, usize, usize) {
    let running = |p: &&Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    let local = pods
        .iter()
        .filter(running)
        .filter(|p| node_of(p) == Some(NODE) && is_ready(p))
        .count();
    let cloud = pods
        .iter()
        .filter(running)
        .filter(|p| node_of(p) == Some(virtual_node))
        .count();
    (local, cloud, pods.len())
}

/// Name → container IDs of the pods on the virtual node (a container ID names its sandbox).
fn cloud_pods(pods: &[Pod], virtual_node: &str) -> BTreeMap<String, Vec<String>> {
    pods.iter()
        .filter(|p| node_of(p) == Some(virtual_node))
        .map(|p| {
            let ids = p
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .filter_map(|c| c.container_id.clone())
                .collect();
            (p.metadata.name.clone().unwrap_or_default(), ids)
        })
        .collect()
}

fn pod_ip(pod: &Pod) -> Option<std::net::Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// Waits until the node `name` is Ready.
async fn wait_node_ready(nodes: &Api<Node>, name: &str, what: &str) -> tke_testbed::Result<()> {
    wait::until(PATIENCE, what, || {
        let (nodes, name) = (nodes.clone(), name.to_owned());
        async move {
            nodes
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| node_ready(&n))
        }
    })
    .await
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
