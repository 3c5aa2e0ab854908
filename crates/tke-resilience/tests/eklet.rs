//! eklet end to end: the real `tke-resilience eklet` binary against a real control plane (the
//! node-lifecycle controller on, so the virtual node must heartbeat) and a real cloudsim, through
//! the real `tencent` provider. Each test has its own cluster id, subnet and virtual node.

mod support;

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    coordination::v1::Lease,
    core::v1::{ConfigMap, Node, Pod, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use support::eklet::*;
use tke_testbed::{ControlPlane, NodeSpec, random_suffix, wait};

fn env_of(instance: &tke_tencent::model::EksCi, name: &str) -> Option<String> {
    instance
        .containers
        .first()?
        .environment_vars
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn deployment(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
    pod_spec: serde_json::Value,
) -> anyhow::Result<Deployment> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        }
    }))?;
    Ok(api.create(&PostParams::default(), &deployment).await?)
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_the_virtual_node_runs_in_the_cloud_with_its_config_and_is_gone_after_deletion()
-> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-run").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;

    // The virtual node as SPEC §3 describes it, and as kubectl shows it.
    let node = Api::<Node>::all(client.clone()).get(&id.node()).await?;
    let labels = node.labels();
    assert_eq!(
        labels.get("node.kubernetes.io/instance-type").map(String::as_str),
        Some("eklet")
    );
    assert_eq!(labels.get("topology.kubernetes.io/zone"), Some(&id.zone));
    assert_eq!(
        node.annotations().get("eks.tke.cloud.tencent.com/subnet-id"),
        Some(&id.subnet)
    );
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "eks.tke.cloud.tencent.com/eklet" && t.effect == "NoSchedule")
    );
    let status = node.status.clone().unwrap_or_default();
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(i32::from(eklet.kubelet.port())),
        "the kubelet endpoint is the --kubelet-port"
    );
    assert!(
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    let kubectl = std::process::Command::new(cp.bin("kubectl"))
        .args([
            "--kubeconfig",
            &cp.kubeconfig().display().to_string(),
            "get",
            "node",
            &id.node(),
            "--no-headers",
        ])
        .output()?;
    let shown = String::from_utf8_lossy(&kubectl.stdout);
    assert!(
        shown.contains("Ready") && shown.contains("v0.1.0-eklet"),
        "kubectl get node: {shown}"
    );

    // The node Lease is renewed (the kubelet's 10 s cadence), whatever the cloud does.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed_at = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first_renewal = renewed_at(&leases.get(&id.node()).await?).context("lease never renewed")?;
    let node_lease = watcher::Config::default().fields(&format!("metadata.name={}", id.node()));
    wait::for_objects(
        leases.clone(),
        node_lease,
        PATIENCE,
        "a node lease renewal",
        |l| l.iter().any(|l| renewed_at(l).is_some_and(|t| t > first_renewal)),
    )
    .await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"LEVEL": "debug"}}))?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"PASSWORD": "hunter2"}}),
            )?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": cloud_pod_spec(&id, json!([{
            "name": "app", "image": "nginx:1.27",
            "env": [
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        }])),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let by_name = watcher::Config::default().fields("metadata.name=web");
    let up = wait::for_objects(
        pods.clone(),
        by_name.clone(),
        PATIENCE,
        "pod web Running with an IP",
        |p| {
            p.iter()
                .any(|p| is_running(p) && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        },
    )
    .await?;
    let pod = up.first().context("pod web")?;
    let uid = pod.uid().context("uid")?;
    let instance = instance_for(&cloud, &id.cluster_id, &uid)
        .await?
        .context("no cloud instance named for the pod")?;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        Some(instance.private_ip.clone()),
        "the pod shows cloudsim's IP"
    );
    assert_eq!(
        env_of(&instance, "LEVEL").as_deref(),
        Some("debug"),
        "env from a ConfigMap key"
    );
    assert_eq!(
        env_of(&instance, "DB_PASSWORD").as_deref(),
        Some("hunter2"),
        "env from a Secret key"
    );
    assert_eq!(
        env_of(&instance, "CFG_LEVEL").as_deref(),
        Some("debug"),
        "envFrom a ConfigMap"
    );
    assert_eq!(
        env_of(&instance, "POD_NAME").as_deref(),
        Some("web"),
        "the downward API"
    );
    assert_eq!(
        env_of(&instance, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("127.0.0.1"),
        "in-cluster clients reach the apiserver"
    );
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(ready, "the pod is Ready");
    // The apiserver mounted a token the tencent API cannot: skipped, and said so.
    wait_for_event(&client, &ns, &uid, "ServiceAccountTokenNotMounted").await?;
    wait_for_event(&client, &ns, &uid, "SandboxCreated").await?;
    let marked = wait::for_objects(
        pods.clone(),
        by_name.clone(),
        PATIENCE,
        "the deletion cost on the cloud pod",
        |p| {
            p.iter().any(|p| {
                p.annotations()
                    .get("controller.kubernetes.io/pod-deletion-cost")
                    .is_some()
            })
        },
    )
    .await?;
    assert_eq!(
        marked
            .first()
            .and_then(|p| p
                .annotations()
                .get("controller.kubernetes.io/pod-deletion-cost")
                .cloned())
            .as_deref(),
        Some("-1000")
    );

    let running = format!("eklet_pods{{node=\"{}\",phase=\"Running\"}}", id.node());
    wait::until(PATIENCE, "the running pod in eklet's metrics", || async {
        eklet.metrics_text().await.is_ok_and(|text| {
            sample(&text, &running) == Some(1.0)
                && sample(&text, "eklet_sandbox_create_to_running_seconds_count") == Some(1.0)
                && sample(&text, "eklet_cloud_calls_total{action=\"create\"}") == Some(1.0)
        })
    })
    .await?;

    pods.delete("web", &DeleteParams::default()).await?;
    wait::for_objects(pods.clone(), by_name, PATIENCE, "pod web gone", |p| p.is_empty()).await?;
    assert!(
        instance_for(&cloud, &id.cluster_id, &uid).await?.is_none(),
        "the sandbox is deleted with the pod"
    );
    let stats = cloud.stats();
    assert_eq!((stats.creates, stats.deletes, stats.live_instances), (1, 1, 0));

    assert_node_ready(&client, &id.node())
        .await
        .with_context(|| eklet.log_tail(30))?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_pod_on_the_virtual_node_is_refused_and_not_recreated_in_a_loop() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-ds").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let daemonset: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    // Tolerates everything, as node agents do; only this test's virtual node is selected.
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": {"kubernetes.io/hostname": id.node()},
                    "containers": [{"name": "agent", "image": "busybox:1.36"}],
                }
            }
        }
    }))?;
    daemonsets.create(&PostParams::default(), &daemonset).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let agents = watcher::Config::default().labels("app=agent");
    let refused = wait::for_objects(
        pods.clone(),
        agents.clone(),
        PATIENCE,
        "the agent pod refused",
        |p| {
            p.iter()
                .any(|p| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DaemonsetForbidden"))
        },
    )
    .await?;
    let pod = refused.first().context("agent pod")?;
    let uid = pod.uid().context("uid")?;
    assert_eq!(
        phase(pod),
        "Pending",
        "refused, not Failed: the DaemonSet controller replaces Failed pods"
    );
    assert_eq!(node_of(pod), id.node());
    let event = wait_for_event(&client, &ns, &uid, "DaemonsetForbidden").await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    // Watch for a while: a recreated pod (new UID), a deletion or a phase change ends the watch
    // early and fails the test; the watch running out is the pass.
    let churn = wait::for_objects(
        pods.clone(),
        agents,
        Duration::from_secs(20),
        "churn of the agent pod",
        |p| {
            p.iter().any(|p| {
                p.uid().as_deref() != Some(uid.as_str())
                    || p.metadata.deletion_timestamp.is_some()
                    || phase(p) != "Pending"
            })
        },
    )
    .await;
    assert!(
        matches!(churn, Err(tke_testbed::Error::Timeout(..))),
        "the agent pod changed: {churn:?}"
    );
    assert_eq!(cloud.stats().creates, 0, "no cloud instance for a DaemonSet pod");
    let told = events_about(&client, &ns, &uid).await?;
    let count: i32 = told
        .iter()
        .filter(|e| e.reason.as_deref() == Some("DaemonsetForbidden"))
        .map(|e| e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1))
        .sum();
    assert_eq!(count, 1, "told once, not on every reconcile");

    assert_node_ready(&client, &id.node())
        .await
        .with_context(|| eklet.log_tail(30))?;
    daemonsets.delete("agent", &DeleteParams::default()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eklet_killed_during_a_burst_is_replaced_without_duplicate_or_orphan_sandboxes()
-> anyhow::Result<()> {
    let burst: usize = std::env::var("EKLET_BURST_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-kill").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let mut first = Eklet::start(&cp, &cloud, &id, &[]).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    spec["automountServiceAccountToken"] = json!(false);
    deployment(&deployments, "burst", burst as i32, spec).await?;

    // A second eklet of the same cluster waits as a standby while the first leads.
    let mut second = Eklet::spawn(&cp, &cloud, &id, &[])?;
    wait::until(PATIENCE, "the standby serving metrics", || async {
        second
            .metrics_text()
            .await
            .is_ok_and(|text| sample(&text, "eklet_leader") == Some(0.0))
    })
    .await?;

    // Kill the leader mid-burst: some sandboxes exist, others not yet.
    let started = burst / 3;
    wait::until(PATIENCE, &format!("{started} sandboxes created"), || async {
        cloud.stats().creates as usize >= started
    })
    .await?;
    let standby = second.metrics_text().await?;
    assert_eq!(sample(&standby, "eklet_leader"), Some(0.0), "one active eklet");
    assert_eq!(
        sample(&standby, "eklet_sandboxes_created_total"),
        Some(0.0),
        "the standby creates nothing"
    );
    first.kill();
    let at_kill = cloud.stats().creates as usize;
    assert!(
        at_kill < burst,
        "the first eklet finished the burst ({at_kill}) before it was killed"
    );

    second.wait_until_leading().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=burst");
    let all = wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        &format!("{burst} pods Running"),
        |p| running(p) == burst,
    )
    .await
    .with_context(|| second.log_tail(40))?;
    assert!(all.iter().all(|p| node_of(p) == id.node()));

    let stats = cloud.stats();
    assert_eq!(stats.duplicate_names, 0, "no pod got a second sandbox");
    assert_eq!(
        stats.creates as usize, burst,
        "one create per pod, across both eklets"
    );
    assert_eq!(stats.live_instances, burst, "no orphans: live instances == pods");
    let metrics = second.metrics_text().await?;
    assert!(
        sample(&metrics, "eklet_sandboxes_adopted_total").unwrap_or(0.0) >= 1.0,
        "the second eklet adopted:\n{metrics}"
    );

    assert_node_ready(&client, &id.node()).await?;
    deployments.delete("burst", &DeleteParams::default()).await?;
    wait::for_objects(pods, selector, PATIENCE, "burst pods gone", |p| p.is_empty()).await?;
    wait::until(PATIENCE, "cloud instances deleted", || async {
        cloud.stats().live_instances == 0
    })
    .await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// Issue #23, for the tencent provider: a Deployment deleted right after eklet restarted and
/// adopted its sandboxes. The orphan sweep runs once an hour here, so only the deletion path
/// itself can remove them.
async fn deleting_pods_right_after_a_restart_deletes_their_sandboxes(
    grace_seconds: i64,
) -> anyhow::Result<()> {
    const PODS: usize = 20;
    const NO_SWEEP: &str = "--orphan-sweep-interval=1h";
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-restart-delete").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let mut eklet = Eklet::start(&cp, &cloud, &id, &[NO_SWEEP]).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    spec["automountServiceAccountToken"] = json!(false);
    spec["terminationGracePeriodSeconds"] = json!(grace_seconds);
    deployment(&deployments, "web", PODS as i32, spec).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=web");
    wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        "all pods Running",
        |p| running(p) == PODS,
    )
    .await?;

    eklet.kill();
    let eklet = Eklet::start(&cp, &cloud, &id, &[NO_SWEEP]).await?;
    wait::until(PATIENCE, "every sandbox adopted", || async {
        eklet
            .metrics_text()
            .await
            .is_ok_and(|text| sample(&text, "eklet_sandboxes_adopted_total") == Some(PODS as f64))
    })
    .await?;
    deployments.delete("web", &DeleteParams::background()).await?;
    wait::for_objects(pods, selector, PATIENCE, "the pods gone", |p| p.is_empty()).await?;
    wait::until(PATIENCE, "every cloud instance deleted", || async {
        cloud.stats().live_instances == 0
    })
    .await
    .with_context(|| eklet.log_tail(30))?;
    let metrics = eklet.metrics_text().await?;
    assert_eq!(
        sample(&metrics, "eklet_orphan_sandboxes_deleted_total"),
        Some(0.0),
        "the sweep is a safety net, not the mechanism"
    );
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_without_grace_right_after_a_restart_take_their_sandboxes_with_them()
-> anyhow::Result<()> {
    deleting_pods_right_after_a_restart_deletes_their_sandboxes(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_gracefully_right_after_a_restart_take_their_sandboxes_with_them() -> anyhow::Result<()>
{
    deleting_pods_right_after_a_restart_deletes_their_sandboxes(5).await
}

/// Issue #22: events are folded into a series by (object, reason), so a second, different
/// mistake under the same reason used to show the first one's note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_different_resolv_conf_mistake_on_the_node_shows_its_own_message() -> anyhow::Result<()> {
    const ANNOTATION: &str = "eks.tke.cloud.tencent.com/resolv-conf";
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let _eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(&id.node()).await?;
    let uid = node.uid().unwrap_or_default();
    let notes_of = |events: &[std::sync::Arc<k8s_openapi::api::core::v1::Event>]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("InvalidResolvConf"))
            .filter_map(|e| e.message.clone())
            .collect()
    };
    let annotate = |value: &str| {
        let nodes = nodes.clone();
        let patch = json!({"metadata": {"annotations": {ANNOTATION: value}}});
        let name = id.node();
        async move {
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let about_node = watcher::Config::default().fields(&format!("involvedObject.uid={uid}"));

    annotate("nameserver not-an-ip").await?;
    wait::for_objects(
        events.clone(),
        about_node.clone(),
        PATIENCE,
        "the first note",
        |events| notes_of(events).iter().any(|n| n.contains("not-an-ip")),
    )
    .await?;
    annotate("search corp.example\nnameserver 300.1.1.1").await?;
    let seen = wait::for_objects(events, about_node, PATIENCE, "the second note", |events| {
        notes_of(events).iter().any(|n| n.contains("300.1.1.1"))
    })
    .await?;
    let notes = notes_of(&seen);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("line 2") && n.contains("300.1.1.1")),
        "the second mistake is named as such: {notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("line 1") && n.contains("not-an-ip")),
        "the first one is still there as it was: {notes:?}"
    );
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_running_while_the_cloud_throttles_and_fails_calls() -> anyhow::Result<()> {
    let replicas = 20;
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-faults").await?;
    let cloud = start_cloudsim(|config| {
        config.faults.error_rates.insert(
            tke_cloudsim::faults::ANY_ACTION.into(),
            tke_cloudsim::ErrorRates {
                throttle: 0.20,
                internal_error: 0.05,
            },
        );
        config.seed = Some(7);
        // On top of the random share, which depends on how many calls timing leads to, the first
        // creates and describes surely fail once each way, so the test always meets both faults.
        for action in ["CreateEKSContainerInstances", "DescribeEKSContainerInstances"] {
            for code in ["InternalError", "RequestLimitExceeded"] {
                config.faults.fail_next.push(tke_cloudsim::faults::FailNext {
                    action: action.into(),
                    code: code.into(),
                    message: None,
                    count: 2,
                });
            }
        }
    })
    .await?;
    let id = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    spec["automountServiceAccountToken"] = json!(false);
    deployment(&deployments, "flaky", replicas, spec).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=flaky");
    wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        "all pods Running despite faults",
        |p| running(p) == replicas as usize,
    )
    .await
    .with_context(|| eklet.log_tail(40))?;

    let stats = cloud.stats();
    assert!(
        stats.errors_for("RequestLimitExceeded") > 0 && stats.errors_for("InternalError") > 0,
        "faults were injected: {stats:?}"
    );
    assert_eq!(stats.duplicate_names, 0);
    assert_eq!(stats.live_instances, replicas as usize, "one sandbox per pod");

    assert_node_ready(&client, &id.node()).await?;
    deployments.delete("flaky", &DeleteParams::default()).await?;
    wait::for_objects(pods, selector, PATIENCE, "flaky pods gone", |p| p.is_empty()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// eklet's usage counters bill each cloud pod its EKS size for the time it ran: three pods of
/// 1 CPU / 2 GiB for a measured interval come to 3 × that interval in core-seconds, give or take
/// what eklet's observations lag the test's (`--status-sync-interval`, 500 ms here), and each pod
/// shows what it is billed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_usage_counts_each_pods_billed_size_for_the_time_it_ran() -> anyhow::Result<()> {
    use std::{collections::HashMap, time::Instant};

    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-usage").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(
        &id,
        json!([{"name": "app", "image": "nginx:1.27",
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]),
    );
    spec["automountServiceAccountToken"] = json!(false);
    deployment(&deployments, "batch", 3, spec).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=batch");
    // When the test first saw each pod Running: eklet saw its sandbox Running before that.
    let mut running_since: HashMap<String, Instant> = HashMap::new();
    let billed = "eklet.tke-resilience.io/billed-size";
    let shown = wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        "3 cloud pods Running",
        |p| {
            for pod in p.iter().filter(|p| is_running(p)) {
                running_since
                    .entry(pod.uid().unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
            running(p) == 3 && p.iter().all(|p| p.annotations().contains_key(billed))
        },
    )
    .await
    .with_context(|| eklet.log_tail(30))?;
    for pod in &shown {
        assert_eq!(
            pod.annotations().get(billed).map(String::as_str),
            Some("cpu=1,memory=2Gi"),
            "{} shows its billed size",
            pod.name_any()
        );
    }

    // The measured run: the pods are left running for this long.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stopped = Instant::now();
    scale(&deployments, "batch", 0).await?;
    wait::for_objects(pods.clone(), selector, PATIENCE, "the pods gone", |p| {
        p.is_empty()
    })
    .await?;
    let gone = Instant::now();
    wait::until(PATIENCE, "the cloud sandboxes deleted", || async {
        cloud.stats().live_instances == 0
    })
    .await?;

    let ran_at_least: f64 = running_since
        .values()
        .map(|since| stopped.duration_since(*since).as_secs_f64())
        .sum();
    let ran_at_most: f64 = running_since
        .values()
        .map(|since| gone.duration_since(*since).as_secs_f64())
        .sum();
    // eklet sees a sandbox Running up to one status sync (and a status write) before the test.
    let lag = 3.0 * (0.5 + 1.0);
    let metrics = eklet.metrics_text().await?;
    let series =
        |name: &str| format!("{name}{{namespace=\"{ns}\",workload_kind=\"Deployment\",workload=\"batch\"}}");
    let core_seconds = sample(&metrics, &series("eklet_cloud_cpu_core_seconds_total"));
    let pod_seconds = sample(&metrics, &series("eklet_cloud_pod_seconds_total"));
    let byte_seconds = sample(&metrics, &series("eklet_cloud_memory_byte_seconds_total"));
    let in_range = |value: Option<f64>, per_pod_second: f64| {
        value.is_some_and(|v| {
            v >= ran_at_least * per_pod_second - 1e-6 && v <= (ran_at_most + lag) * per_pod_second
        })
    };
    assert!(
        in_range(core_seconds, 1.0) && in_range(pod_seconds, 1.0),
        "core-seconds {core_seconds:?} and pod-seconds {pod_seconds:?} within \
         [{ran_at_least:.1}, {:.1}]:\n{metrics}",
        ran_at_most + lag
    );
    assert!(
        in_range(byte_seconds, 2.0 * f64::from(1u32 << 30)),
        "2 GiB for each pod-second: {byte_seconds:?} for {pod_seconds:?} pod-seconds"
    );
    assert_eq!(
        sample(&metrics, &series("eklet_cloud_gpu_seconds_total")),
        None,
        "no GPU, no GPU-seconds"
    );
    // Nothing runs any more: the counters stand still.
    let later = eklet.metrics_text().await?;
    assert_eq!(
        sample(&later, &series("eklet_cloud_cpu_core_seconds_total")),
        core_seconds
    );

    assert_node_ready(&client, &id.node()).await?;
    deployments.delete("batch", &DeleteParams::default()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_deployment_down_removes_its_cloud_pods_first() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-cost").await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    // A local node with room for exactly two pods.
    let local = format!("idc-{}", random_suffix());
    cp.add_nodes(&[NodeSpec::new(&local).pods(2)]).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("nodeSelector");
    }
    spec["automountServiceAccountToken"] = json!(false);
    spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [local, id.node()]}]}]}}});
    // Two replicas before the virtual node exists: both local.
    deployment(&deployments, "shop", 2, spec).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=shop");
    wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        "2 local pods Running",
        |p| running(p) == 2 && p.iter().all(|p| node_of(p) == local),
    )
    .await?;

    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;
    scale(&deployments, "shop", 4).await?;
    let cost = "controller.kubernetes.io/pod-deletion-cost";
    wait::for_objects(
        pods.clone(),
        selector.clone(),
        PATIENCE,
        "2 local and 2 cloud pods, the cloud ones costed",
        |p| {
            let cloud_pods: Vec<_> = p
                .iter()
                .filter(|p| is_running(p) && node_of(p) == id.node())
                .collect();
            running(p) == 4
                && cloud_pods.len() == 2
                && cloud_pods
                    .iter()
                    .all(|p| p.annotations().get(cost).map(String::as_str) == Some("-1000"))
        },
    )
    .await
    .with_context(|| eklet.log_tail(30))?;

    scale(&deployments, "shop", 2).await?;
    let left = wait::for_objects(pods.clone(), selector, PATIENCE, "2 pods left", |p| p.len() == 2).await?;
    assert!(
        left.iter().all(|p| node_of(p) == local),
        "the local pods stayed: {:?}",
        left.iter().map(|p| node_of(p)).collect::<Vec<_>>()
    );
    wait::until(PATIENCE, "the cloud sandboxes deleted", || async {
        cloud.stats().live_instances == 0
    })
    .await?;

    assert_node_ready(&client, &id.node()).await?;
    deployments.delete("shop", &DeleteParams::default()).await?;
    remove_node(&client, &id.node()).await;
    let _ = Api::<Node>::all(client.clone())
        .delete(&local, &DeleteParams::default())
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_never_runs_fails_its_pod_after_the_timeout_and_is_deleted() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-timeout").await?;
    let cloud = start_cloudsim(|config| config.start_delay = Duration::from_secs(3600)).await?;
    let id = Identity::unique();
    let eklet = Eklet::start(&cp, &cloud, &id, &["--wait-sandbox-running-timeout=3s"]).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    spec["automountServiceAccountToken"] = json!(false);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "slow"}, "spec": spec}))?,
    )
    .await?;
    let by_name = watcher::Config::default().fields("metadata.name=slow");
    let failed = wait::for_objects(pods.clone(), by_name, PATIENCE, "pod slow Failed", |p| {
        p.iter().any(|p| phase(p) == "Failed")
    })
    .await
    .with_context(|| eklet.log_tail(30))?;
    let pod = failed.first().context("pod slow")?;
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("SandboxRunningTimeout"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("--wait-sandbox-running-timeout")
    );
    let stats = cloud.stats();
    assert_eq!(
        (stats.creates, stats.live_instances),
        (1, 0),
        "the sandbox was deleted and not replaced"
    );

    assert_node_ready(&client, &id.node()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_subnet_holds_the_pod_with_the_cloud_code_until_capacity_returns() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("eklet-soldout").await?;
    let id = Identity::unique();
    let cloud = start_cloudsim(|config| {
        config.faults.sold_out_subnets.insert(id.subnet.clone());
    })
    .await?;
    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut spec = cloud_pod_spec(&id, json!([{"name": "app", "image": "nginx:1.27"}]));
    spec["automountServiceAccountToken"] = json!(false);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "wanted"}, "spec": spec}))?,
    )
    .await?;
    let by_name = watcher::Config::default().fields("metadata.name=wanted");
    let held = wait::for_objects(
        pods.clone(),
        by_name.clone(),
        PATIENCE,
        "pod held as sold out",
        |p| {
            p.iter()
                .any(|p| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("ResourcesSoldOut"))
        },
    )
    .await
    .with_context(|| eklet.log_tail(30))?;
    let pod = held.first().context("pod wanted")?;
    assert_eq!(phase(pod), "Pending");
    let event = wait_for_event(&client, &ns, &pod.uid().unwrap_or_default(), "ResourcesSoldOut").await?;
    assert!(
        event.message.unwrap_or_default().starts_with("ResourcesSoldOut:"),
        "the event carries the cloud's code"
    );
    assert_eq!(cloud.stats().live_instances, 0);

    cloud.set_faults(tke_cloudsim::Faults::default())?;
    wait::for_objects(
        pods,
        by_name,
        PATIENCE,
        "pod wanted Running once capacity returns",
        |p| p.iter().any(|p| is_running(p)),
    )
    .await
    .with_context(|| eklet.log_tail(30))?;
    assert_eq!(cloud.stats().live_instances, 1);

    assert_node_ready(&client, &id.node()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_whose_pod_is_gone_are_deleted_and_others_are_left_alone() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let cloud = start_cloudsim(|_| {}).await?;
    let id = Identity::unique();
    let create = |name: String| tke_tencent::model::CreateEksContainerInstancesRequest {
        containers: vec![tke_tencent::model::Container {
            image: "nginx:1.27".into(),
            name: "app".into(),
            ..Default::default()
        }],
        eks_ci_name: name,
        security_group_ids: vec!["sg-eklettest".into()],
        subnet_id: id.subnet.clone(),
        vpc_id: VPC.into(),
        memory: 2.0,
        cpu: 1.0,
        ..Default::default()
    };
    let cloud_client = cloud_client(&cloud)?;
    // Named by this cluster's eklet for a pod that does not exist, and one that is not eklet's.
    let orphan = format!("eklet-{}-deadbeef-0000-4000-8000-000000000001", id.cluster_id);
    cloud_client.create_instances(&create(orphan.clone())).await?;
    cloud_client
        .create_instances(&create("someone-elses-instance".into()))
        .await?;
    assert_eq!(cloud.stats().live_instances, 2);

    let eklet = Eklet::start(&cp, &cloud, &id, &[]).await?;
    wait::until(PATIENCE, "the orphan deleted", || async {
        cloud.stats().live_instances == 1
    })
    .await
    .with_context(|| eklet.log_tail(30))?;
    let left = cloud_client.list_instances(vec![]).await?;
    assert_eq!(
        left.iter().map(|i| i.eks_ci_name.as_str()).collect::<Vec<_>>(),
        vec!["someone-elses-instance"]
    );
    let metrics = eklet.metrics_text().await?;
    assert_eq!(
        sample(&metrics, "eklet_orphan_sandboxes_deleted_total"),
        Some(1.0)
    );

    assert_node_ready(&client, &id.node()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}
