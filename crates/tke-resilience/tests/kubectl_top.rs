//! `kubectl top` for pods in the cloud, end to end: metrics-server (built from its Go module and
//! registered as the `metrics.k8s.io` APIService) scrapes the virtual node's kubelet API like any
//! kubelet's, eklet's tencent provider scrapes each sandbox's agent at the pod IP, and cloudsim's
//! agents report the usage the pod's containers were told to have (`CLOUDSIM_CPU_MILLICORES`,
//! `CLOUDSIM_MEMORY_BYTES`). cloudsim gives instances loopback addresses so that the agents are
//! reachable from this machine, as the VPC is from the IDC over Direct Connect.
//!
//! With the kubernetes provider eklet reads the target cluster's metrics API instead; the last test
//! bursts into a target whose node is real, so what `kubectl top` shows in the IDC is a real
//! container's usage from the real kubelet's cgroups.
//!
//! metrics-server's APIService is cluster-wide, so this test runs on a control plane of its own.

mod support;

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod};
use kube::{Api, api::PostParams, runtime::watcher};
use serde_json::json;
use support::eklet::*;
use support::kubectl::{kubectl, run};
use tke_testbed::{ControlPlane, Options, metrics_server, wait};

/// metrics-server needs two scrapes for a rate, one per resolution (its floor is 10 s).
const TOP_PATIENCE: Duration = Duration::from_secs(120);

/// `kubectl top ARGS…` through the apiserver and the aggregation layer: (success, stdout, stderr).
async fn kubectl_top(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let mut command = kubectl(cp);
    command.arg("top").args(args);
    let (code, stdout, stderr) = run(command, None).await?;
    Ok((code == 0, stdout, stderr))
}

/// The columns of the row whose first column is `name`.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|columns| columns.first().is_some_and(|c| c == name))
}

/// Millicores of a `kubectl top` CPU column (`250m`, `1`).
fn millicores(cpu: &str) -> Option<u64> {
    match cpu.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cpu.parse::<u64>().ok().map(|cores| cores * 1000),
    }
}

/// Polls `kubectl top` until a row for `name` shows up; returns it, or fails with what kubectl said.
async fn top_row(cp: &ControlPlane, args: &[&str], name: &str) -> anyhow::Result<Vec<String>> {
    let begun = tokio::time::Instant::now();
    let deadline = begun + TOP_PATIENCE;
    loop {
        let (ok, out, err) = kubectl_top(cp, args).await?;
        if ok && let Some(row) = row(&out, name) {
            eprintln!(
                "kubectl top {} showed {name} after {:.1}s: {row:?}",
                args.join(" "),
                begun.elapsed().as_secs_f64()
            );
            return Ok(row);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("kubectl top {args:?} never showed {name}: stdout {out:?} stderr {err:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A control plane of its own with one virtual node whose sandboxes have agents, and
/// metrics-server scraping that node.
struct MeteredCloud {
    cp: ControlPlane,
    namespace: String,
    id: Identity,
    _cloud: tke_cloudsim::Handle,
    _eklet: Eklet,
    _metrics_server: metrics_server::MetricsServer,
    _agents: Agents,
}

impl MeteredCloud {
    async fn start(prefix: &str) -> anyhow::Result<MeteredCloud> {
        tke_testbed::install_crypto();
        let cp = ControlPlane::start(Options::default()).await?;
        let namespace = cp.namespace(prefix).await?;
        let id = Identity::unique();
        let mut agents = None;
        let cloud = start_cloudsim(|config| agents = Some(enable_agents(&cp, config))).await?;
        let agents = agents.context("cloudsim was not configured")??;
        let mut flags = serving_flags(&cp, &id)?;
        flags.push(agents.eklet_arg.clone());
        let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
        let eklet = Eklet::start(&cp, &cloud, &id, &extra).await?;
        let metrics_server = start_metrics_server(&cp, &id).await?;
        Ok(MeteredCloud {
            cp,
            namespace,
            id,
            _cloud: cloud,
            _eklet: eklet,
            _metrics_server: metrics_server,
            _agents: agents,
        })
    }
}

/// eklet's kubelet API flags for a serving certificate from the cluster CA, so that
/// metrics-server verifies the virtual kubelet as it verifies kubelets.
fn serving_flags(cp: &ControlPlane, id: &Identity) -> anyhow::Result<Vec<String>> {
    let serving = cp.pki().issue_server(
        &format!("kubelet-{}", id.node()),
        &id.node(),
        &["127.0.0.1", "localhost"],
    )?;
    Ok(vec![
        format!("--tls-cert-file={}", serving.cert_file.display()),
        format!("--tls-private-key-file={}", serving.key_file.display()),
    ])
}

/// metrics-server scraping the virtual node of `id` only (kwok nodes have no kubelet).
async fn start_metrics_server(
    cp: &ControlPlane,
    id: &Identity,
) -> anyhow::Result<metrics_server::MetricsServer> {
    Ok(cp
        .start_metrics_server(metrics_server::Options {
            node_selector: Some(format!("kubernetes.io/hostname={}", id.node())),
            kubelet_ca: Some(cp.pki().ca.cert_file.clone()),
            ..Default::default()
        })
        .await?)
}

/// Env that makes a cloudsim container use this much CPU and memory.
fn usage_env(millicores: u64, memory: u64) -> serde_json::Value {
    json!([
        {"name": tke_cloudsim::CPU_MILLICORES_ENV, "value": millicores.to_string()},
        {"name": tke_cloudsim::MEMORY_BYTES_ENV, "value": memory.to_string()},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_the_usage_of_pods_running_in_the_cloud() -> anyhow::Result<()> {
    let metered = MeteredCloud::start("top").await?;
    let (cp, namespace, id) = (&metered.cp, &metered.namespace, &metered.id);
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "busy-0"},
        "spec": cloud_pod_spec(id, json!([
            {"name": "web", "image": "nginx:1.27", "env": usage_env(250, 64 << 20)},
            {"name": "sidecar", "image": "busybox:1.36", "env": usage_env(50, 16 << 20)},
        ])),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait::for_objects(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=busy-0"),
        PATIENCE,
        "pod busy-0 Running on the virtual node",
        |pods| pods.iter().any(|p| is_running(p)),
    )
    .await?;

    let pod_row = top_row(cp, &["pod", "-n", namespace], "busy-0").await?;
    let cpu = millicores(&pod_row[1]).with_context(|| format!("cpu column of {pod_row:?}"))?;
    assert!(
        (299..=301).contains(&cpu),
        "the pod's CPU is its containers' 250m + 50m: {pod_row:?}"
    );
    assert_eq!(pod_row[2], "80Mi", "the pod's memory is 64Mi + 16Mi: {pod_row:?}");

    let (ok, out, err) = kubectl_top(cp, &["pod", "busy-0", "-n", namespace, "--containers"]).await?;
    assert!(ok, "{err}");
    let web = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.get(1) == Some(&"web"))
        .with_context(|| format!("no web container in {out}"))?;
    assert!((249..=251).contains(&millicores(web[2]).unwrap_or(0)), "{out}");
    assert_eq!(web[3], "64Mi", "{out}");

    // The virtual node's own usage is the sum of its pods'.
    let node_row = top_row(cp, &["node"], &id.node()).await?;
    let node_cpu = millicores(&node_row[1]).with_context(|| format!("{node_row:?}"))?;
    assert!((295..=305).contains(&node_cpu), "{node_row:?}");
    assert_eq!(node_row[3], "80Mi", "{node_row:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_scales_a_deployment_running_in_the_cloud_on_its_cpu_usage() -> anyhow::Result<()> {
    let metered = MeteredCloud::start("hpa").await?;
    let (cp, namespace, id) = (&metered.cp, &metered.namespace, &metered.id);
    let client = cp.client().await?;
    // Each replica requests 100m and uses 250m: 250% of its request, over the HPA's 100% target,
    // so the HPA wants ceil(1 × 250 / 100) = 3 replicas, its maximum.
    let mut spec = cloud_pod_spec(
        id,
        json!([{
            "name": "web",
            "image": "nginx:1.27",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "env": usage_env(250, 32 << 20),
        }]),
    );
    spec["terminationGracePeriodSeconds"] = json!(1);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
        },
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments.create(&PostParams::default(), &deployment).await?;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 100},
            }}],
        },
    }))?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    hpas.create(&PostParams::default(), &hpa).await?;
    let hpa_created = tokio::time::Instant::now();

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let node = id.node();
    wait::for_objects(
        pods,
        watcher::Config::default().labels("app=web"),
        TOP_PATIENCE + PATIENCE,
        "3 replicas Running on the virtual node",
        |pods| {
            pods.iter()
                .filter(|p| is_running(p))
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
                .count()
                == 3
        },
    )
    .await?;
    eprintln!(
        "the HPA had 3 replicas Running {:.1}s after it was created",
        hpa_created.elapsed().as_secs_f64()
    );
    let hpa = hpas.get("web").await?;
    let status = hpa.status.context("HPA status")?;
    assert_eq!(status.desired_replicas, 3, "{status:?}");
    let utilization = status
        .current_metrics
        .unwrap_or_default()
        .into_iter()
        .find_map(|m| m.resource?.current.average_utilization)
        .context("the HPA reports no CPU utilization")?;
    assert!(
        (240..=260).contains(&utilization),
        "each replica uses 250% of its CPU request: {utilization}"
    );
    Ok(())
}

/// The kubernetes provider end to end, with a target cluster whose own virtual node runs its pods
/// in cloudsim: an IDC pod bursts into the target, and `kubectl logs` and `kubectl top` in the IDC
/// show what the target's kubelet (eklet, tencent provider) and metrics-server report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_burst_into_a_target_cluster_shows_its_logs_and_usage_in_the_idc() -> anyhow::Result<()> {
    let target = MeteredCloud::start("target").await?;
    let idc = ControlPlane::start(Options::default()).await?;
    let namespace = idc.namespace("burst").await?;
    let id = Identity::unique();
    let provider = [
        "--provider=kubernetes".to_owned(),
        format!("--target-kubeconfig={}", target.cp.kubeconfig().display()),
        format!(
            "--target-node-selector=kubernetes.io/hostname={}",
            target.id.node()
        ),
        "--target-toleration=eks.tke.cloud.tencent.com/eklet:NoSchedule".to_owned(),
    ];
    let serving = serving_flags(&idc, &id)?;
    let extra: Vec<&str> = serving.iter().map(String::as_str).collect();
    let _eklet = Eklet::start_with_provider(&idc, &provider, &id, &extra).await?;
    let _metrics_server = start_metrics_server(&idc, &id).await?;

    let pods: Api<Pod> = Api::namespaced(idc.client().await?, &namespace);
    let mut spec = cloud_pod_spec(
        &id,
        json!([{"name": "web", "image": "nginx:1.27", "env": usage_env(250, 64 << 20)}]),
    );
    // The kubernetes provider would carry the token over as a Secret volume, which the target's
    // own virtual node (the tencent provider) cannot mount.
    spec["automountServiceAccountToken"] = json!(false);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "burst-0"}, "spec": spec}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait::for_objects(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=burst-0"),
        PATIENCE,
        "pod burst-0 Running through the target cluster",
        |pods| pods.iter().any(|p| is_running(p)),
    )
    .await?;

    // IDC apiserver → IDC eklet → target apiserver → target eklet → cloudsim's log lines.
    wait::until(PATIENCE, "kubectl logs burst-0 through the target", || {
        let pods = pods.clone();
        async move {
            pods.logs("burst-0", &Default::default())
                .await
                .is_ok_and(|log| log.contains("web log line 0"))
        }
    })
    .await?;

    // The target's metrics-server reads the target's virtual kubelet; the IDC's reads eklet,
    // which reads the target's metrics API.
    let row = top_row(&idc, &["pod", "-n", &namespace], "burst-0").await?;
    let cpu = millicores(&row[1]).with_context(|| format!("{row:?}"))?;
    assert!((245..=255).contains(&cpu), "the cloud container's 250m: {row:?}");
    assert_eq!(row[2], "64Mi", "{row:?}");
    Ok(())
}

/// The kubernetes provider against a target whose node is real: the burst pod is a real container
/// in the target, held to 100m of CPU by its limit while it spins, with 48 MiB written to its
/// `/dev/shm`; `kubectl top` in the IDC shows that real usage, read by the target's metrics-server
/// from the real kubelet's cgroups, through the target's metrics API and eklet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_burst_into_a_target_with_a_real_node_shows_its_real_usage_in_the_idc() -> anyhow::Result<()> {
    if !tke_testbed::realnode::available_or_skip() {
        return Ok(());
    }
    tke_testbed::install_crypto();
    // Dropped in reverse: metrics-servers and eklet, the IDC, the real node, then its control plane.
    let target = ControlPlane::start(Options::default()).await?;
    let real_node = target.add_real_node("tgt-top").await?;
    let _target_metrics = target
        .start_metrics_server(metrics_server::Options {
            node_selector: Some(format!("kubernetes.io/hostname={}", real_node.name)),
            kubelet_ca: Some(target.pki().ca.cert_file.clone()),
            ..Default::default()
        })
        .await?;
    let idc = ControlPlane::start(Options::default()).await?;
    let namespace = idc.namespace("top-real").await?;
    let id = Identity::unique();
    let provider = [
        "--provider=kubernetes".to_owned(),
        format!("--target-kubeconfig={}", target.kubeconfig().display()),
    ];
    let serving = serving_flags(&idc, &id)?;
    let extra: Vec<&str> = serving.iter().map(String::as_str).collect();
    let _eklet = Eklet::start_with_provider(&idc, &provider, &id, &extra).await?;
    let _idc_metrics = start_metrics_server(&idc, &id).await?;

    let pods: Api<Pod> = Api::namespaced(idc.client().await?, &namespace);
    let spec = cloud_pod_spec(
        &id,
        json!([{
            "name": "spin",
            "image": tke_testbed::images::BUSYBOX,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c",
                "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; echo filled; while :; do :; done"],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "100m", "memory": "128Mi"},
            },
        }]),
    );
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "spin"}, "spec": spec}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(PATIENCE, "the burst pod filled its memory", || {
        let pods = pods.clone();
        async move {
            pods.logs("spin", &Default::default())
                .await
                .is_ok_and(|log| log.contains("filled"))
        }
    })
    .await?;

    let row = top_row(&idc, &["pod", "-n", &namespace], "spin").await?;
    let cpu = millicores(&row[1]).with_context(|| format!("{row:?}"))?;
    assert!(
        (60..=110).contains(&cpu),
        "a container spinning under a 100m limit: {row:?}"
    );
    let memory: u64 = row[2]
        .strip_suffix("Mi")
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("{row:?}"))?;
    assert!(
        (48..128).contains(&memory),
        "48 MiB written to /dev/shm, under a 128Mi limit: {row:?}"
    );
    Ok(())
}
