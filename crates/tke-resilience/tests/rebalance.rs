//! `tke-resilience rebalance` end to end: a control plane of its own with two local kwok nodes of
//! three pod slots each, a real eklet on cloudsim as the virtual node and eks-admission, so a pod
//! the IDC cannot hold really bursts. A "filler" Deployment takes the six local slots, the
//! workload under test bursts, the filler goes, and the rebalancer (a real process) decides.
//!
//! The hold-down is 3 s and the round 1 s, so the tests wait seconds, not minutes; nothing here
//! measures time against a threshold.

mod support;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use support::admission::{
    Admission, PATIENCE, VirtualNode, deployment, events_about, http_get, node_of, sample, wait_for_pods,
};
use tke_testbed::{ControlPlane, NodeSpec, Options};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Two control planes at a time are what a 2-core machine runs without starving them.
static CLUSTERS: Semaphore = Semaphore::const_new(2);

struct Bed {
    virtual_node: VirtualNode,
    _admission: Admission,
    client: Client,
    namespace: String,
    cp: ControlPlane,
    _slot: SemaphorePermit<'static>,
}

impl Bed {
    /// The bed with its local nodes full of filler pods.
    async fn start() -> anyhow::Result<Bed> {
        let slot = CLUSTERS.acquire().await?;
        let nodes = (1..=2)
            .map(|i| NodeSpec::new(format!("idc-{i}")).pods(3))
            .collect();
        let cp = ControlPlane::start(Options {
            nodes,
            ..Options::default()
        })
        .await?;
        let client = cp.client().await?;
        let namespace = cp.namespace("shop").await?;
        let virtual_node = VirtualNode::start(&cp).await?;
        let admission = Admission::start(&cp, &[]).await?;
        let bed = Bed {
            virtual_node,
            _admission: admission,
            client,
            namespace,
            cp,
            _slot: slot,
        };
        bed.create(&deployment("filler", 6, &[], json!({}))?).await?;
        wait_for_pods(
            &bed.client,
            &bed.namespace,
            "filler",
            "6 filler pods on local nodes",
            |pods| pods.iter().filter(|p| is_ready(p) && bed.is_local(p)).count() == 6,
        )
        .await?;
        Ok(bed)
    }

    async fn create(&self, deployment: &Deployment) -> anyhow::Result<()> {
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), deployment)
            .await?;
        Ok(())
    }

    /// Deploys `app` with `replicas` and waits until they all run in the cloud.
    async fn burst(&self, app: &str, replicas: usize, annotations: &[(&str, &str)]) -> anyhow::Result<()> {
        self.create(&deployment(app, replicas as i32, annotations, json!({}))?)
            .await?;
        wait_for_pods(
            &self.client,
            &self.namespace,
            app,
            &format!("{replicas} Ready in the cloud"),
            |pods| self.placed(pods) == (0, replicas),
        )
        .await?;
        Ok(())
    }

    async fn delete_filler(&self) -> anyhow::Result<()> {
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .delete("filler", &DeleteParams::default())
            .await?;
        wait_for_pods(
            &self.client,
            &self.namespace,
            "filler",
            "the filler gone",
            |pods| pods.is_empty(),
        )
        .await?;
        Ok(())
    }

    /// Cordons (or uncordons) both local nodes.
    async fn cordon(&self, unschedulable: bool) -> anyhow::Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let patch = json!({"spec": {"unschedulable": unschedulable}});
        for node in ["idc-1", "idc-2"] {
            nodes
                .patch(
                    node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await?;
        }
        Ok(())
    }

    fn is_local(&self, pod: &Pod) -> bool {
        node_of(pod).is_some_and(|n| n.starts_with("idc-"))
    }

    /// Ready pods that are not terminating: (local, cloud).
    fn placed(&self, pods: &[Arc<Pod>]) -> (usize, usize) {
        let ready: Vec<_> = pods.iter().filter(|p| is_ready(p)).collect();
        let local = ready.iter().filter(|p| self.is_local(p)).count();
        let cloud = ready
            .iter()
            .filter(|p| node_of(p) == Some(self.virtual_node.name.as_str()))
            .count();
        (local, cloud)
    }

    /// Starts the rebalancer (its own Lease in `default`) and waits until it leads.
    async fn rebalancer(&self, extra: &[&str]) -> anyhow::Result<Rebalancer> {
        let [port] = tke_testbed::free_ports::<1>()?;
        let mut args = vec![
            "rebalance".to_owned(),
            format!("--kubeconfig={}", self.cp.kubeconfig().display()),
            "--hold-down=3s".into(),
            "--interval=1s".into(),
            "--max-moves-per-minute=30".into(),
            "--leader-election-namespace=default".into(),
            "--leader-election-lease-seconds=2".into(),
            "--metrics-bind-address=127.0.0.1".into(),
            format!("--metrics-port={port}"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let name = format!("rebalance-{}", tke_testbed::random_suffix());
        let proc = self.cp.spawn_process(
            &name,
            &support::binary(),
            &args,
            &[("RUST_LOG", "info,tke_rebalance=debug")],
        )?;
        let rebalancer = Rebalancer {
            proc,
            metrics: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(text) = http_get(rebalancer.metrics, "/metrics").await
                && sample(&text, "tke_rebalance_leader") == Some(1.0)
            {
                return Ok(rebalancer);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the rebalancer did not lead: {}",
                rebalancer.proc.log_tail(20)
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The controlling ReplicaSet of `app`.
    async fn replica_set(&self, app: &str) -> anyhow::Result<ReplicaSet> {
        let sets = Api::<ReplicaSet>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        sets.items
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no ReplicaSet of {app}"))
    }

    /// The reasons of the events about `uid`, with their notes.
    async fn events(&self, uid: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(events_about(&self.client, &self.namespace, uid)
            .await?
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }

    /// `tke-resilience explain pod` of the first cloud pod of `app`, with the rebalancer's flags.
    async fn explain_cloud_pod(&self, app: &str, flags: &[&str]) -> anyhow::Result<String> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        let pod = pods
            .items
            .iter()
            .find(|p| node_of(p) == Some(self.virtual_node.name.as_str()))
            .ok_or_else(|| anyhow::anyhow!("no cloud pod of {app}"))?;
        let output = tokio::process::Command::new(support::binary())
            .args(["explain", "pod", &pod.name_any(), "-n", &self.namespace])
            .arg(format!("--kubeconfig={}", self.cp.kubeconfig().display()))
            .args(flags)
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "explain failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `MovedToLocal` events in the namespace.
    async fn moves(&self) -> anyhow::Result<usize> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let list = events
            .list(&ListParams::default().fields("reason=MovedToLocal"))
            .await?;
        Ok(list.items.len())
    }
}

struct Rebalancer {
    proc: tke_testbed::Proc,
    metrics: std::net::SocketAddr,
}

impl Rebalancer {
    async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = http_get(self.metrics, "/metrics").await?;
        Ok(sample(&text, series).unwrap_or(0.0))
    }

    /// Waits until `series` is at least `value`.
    async fn wait_metric(&self, series: &str, value: f64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.metric(series).await? < value {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{series} never reached {value}: {}",
                self.proc.log_tail(30)
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        Ok(())
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Follows the Ready pods of `app` on every change and keeps the fewest seen once armed.
struct ReadySampler {
    fewest: Arc<Mutex<Option<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadySampler {
    fn start(client: &Client, namespace: &str, app: &str) -> ReadySampler {
        let fewest = Arc::new(Mutex::new(None::<usize>));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().labels(&format!("app={app}"));
        let seen = fewest.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).reflect(writer).boxed();
            let mut listed = false;
            while let Some(event) = events.next().await {
                listed |= matches!(event, Ok(watcher::Event::InitDone));
                if !listed {
                    continue;
                }
                let ready = store.state().iter().filter(|p| is_ready(p)).count();
                let mut fewest = seen.lock().unwrap_or_else(|e| e.into_inner());
                *fewest = Some(fewest.map_or(ready, |f| f.min(ready)));
            }
        });
        ReadySampler { fewest, task }
    }

    fn fewest(&self) -> Option<usize> {
        *self.fewest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ReadySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_spike_six_cloud_pods_come_home_one_at_a_time_also_across_a_restart() -> anyhow::Result<()>
{
    let bed = Bed::start().await?;
    bed.burst("web", 6, &[]).await?;
    let explained = bed.explain_cloud_pod("web", &["--hold-down=0"]).await?;
    assert!(
        explained.contains("Bring home (tke-resilience rebalance): stays: NoLocalNodeFits")
            && explained.contains("closest is idc-"),
        "{explained}"
    );
    let sampler = ReadySampler::start(&bed.client, &bed.namespace, "web");
    let mut rebalancer = bed.rebalancer(&[]).await?;
    bed.delete_filler().await?;

    // Kill the controller right after its first move; its successor must read that move back
    // and not start a second one before the first's replacement is Ready.
    rebalancer
        .wait_metric(r#"tke_rebalance_moves_total{result="moved"}"#, 1.0)
        .await?;
    rebalancer.proc.kill();
    let successor = bed.rebalancer(&[]).await?;

    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "all 6 Ready on local nodes",
        |pods| bed.placed(pods) == (6, 0),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; the rebalancer said:\n{}", successor.proc.log_tail(20)));
    let pods = pods?;
    assert_eq!(pods.iter().filter(|p| is_ready(p)).count(), 6);
    let fewest = sampler.fewest();
    assert!(
        fewest.is_some_and(|f| f >= 5),
        "never fewer than 5 Ready replicas while moving, saw {fewest:?}"
    );
    assert_eq!(bed.moves().await?, 6, "one MovedToLocal event per pod moved");
    assert!(
        successor
            .metric(r#"tke_rebalance_moves_total{result="moved"}"#)
            .await?
            >= 1.0
    );
    let histogram = successor
        .metric("tke_rebalance_eligible_to_moved_seconds_count")
        .await?;
    assert!(histogram >= 1.0, "the time from eligible to moved is measured");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_of_zero_keeps_every_pod_where_it_is_and_says_so() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.burst("web", 4, &[]).await?;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}}
    }))?;
    Api::<PodDisruptionBudget>::namespaced(bed.client.clone(), &bed.namespace)
        .create(&PostParams::default(), &pdb)
        .await?;
    let rebalancer = bed.rebalancer(&[]).await?;
    bed.delete_filler().await?;

    rebalancer
        .wait_metric(r#"tke_rebalance_moves_total{result="disruption_budget"}"#, 2.0)
        .await?;
    let replica_set = bed.replica_set("web").await?;
    let events = bed.events(&replica_set.uid().unwrap_or_default()).await?;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "RebalanceSkipped" && note.starts_with("DisruptionBudget")),
        "the skip is on the workload: {events:?}"
    );
    assert!(
        rebalancer
            .metric(r#"tke_rebalance_skipped_total{reason="DisruptionBudget"}"#)
            .await?
            >= 1.0
    );
    let pods = Api::<Pod>::namespaced(bed.client.clone(), &bed.namespace)
        .list(&ListParams::default().labels("app=web"))
        .await?;
    let pods: Vec<Arc<Pod>> = pods.items.into_iter().map(Arc::new).collect();
    assert_eq!(bed.placed(&pods), (0, 4), "nothing moved");
    assert_eq!(bed.moves().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_above_local_replicas_stay_and_a_missing_local_one_comes_home() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    // Four filler pods leave two local slots: web gets 2 local and 4 cloud pods.
    let fillers = Api::<Deployment>::namespaced(bed.client.clone(), &bed.namespace);
    fillers
        .patch_scale(
            "filler",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await?;
    wait_for_pods(&bed.client, &bed.namespace, "filler", "4 filler pods", |pods| {
        pods.len() == 4
    })
    .await?;
    bed.create(&deployment("web", 6, &[("LOCAL_REPLICAS", "2")], json!({}))?)
        .await?;
    wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "2 local and 4 cloud",
        |pods| bed.placed(pods) == (2, 4),
    )
    .await?;
    let rebalancer = bed.rebalancer(&[]).await?;
    bed.delete_filler().await?;

    rebalancer
        .wait_metric(r#"tke_rebalance_skipped_total{reason="LocalReplicas"}"#, 5.0)
        .await?;
    assert_eq!(
        bed.moves().await?,
        0,
        "the 4 cloud pods are in the cloud by choice"
    );
    let explained = bed.explain_cloud_pod("web", &["--hold-down=0"]).await?;
    assert!(
        explained.contains("stays: LocalReplicas: 2 local pods reach LOCAL_REPLICAS=2"),
        "{explained}"
    );

    // Cordon the local nodes and lose a local pod: its replacement bursts (1 local, 5 cloud).
    bed.cordon(true).await?;
    let pods = Api::<Pod>::namespaced(bed.client.clone(), &bed.namespace);
    let local: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .filter(|p| bed.is_local(p))
        .map(ResourceExt::name_any)
        .collect();
    let victim = local.first().ok_or_else(|| anyhow::anyhow!("no local web pod"))?;
    pods.delete(victim, &DeleteParams::default()).await?;
    wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "1 local and 5 cloud",
        |pods| bed.placed(pods) == (1, 5),
    )
    .await?;
    bed.cordon(false).await?;

    wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "2 local and 4 cloud again",
        |pods| bed.placed(pods) == (2, 4),
    )
    .await?;
    // Long enough for a second move, had there been one to make.
    rebalancer
        .wait_metric(r#"tke_rebalance_skipped_total{reason="LocalReplicas"}"#, 15.0)
        .await?;
    assert_eq!(bed.moves().await?, 1, "exactly the missing local pod came home");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_out_and_single_replica_workloads_stay_and_a_dry_run_moves_nothing() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    bed.burst("optout", 2, &[("tke.cloud.tencent.com/rebalance", "false")])
        .await?;
    bed.burst("solo", 1, &[]).await?;
    bed.burst("dry", 2, &[]).await?;
    let mut dry = bed.rebalancer(&["--dry-run"]).await?;
    bed.delete_filler().await?;

    dry.wait_metric(r#"tke_rebalance_moves_total{result="dry_run"}"#, 3.0)
        .await?;
    let dry_pods = Api::<Pod>::namespaced(bed.client.clone(), &bed.namespace)
        .list(&ListParams::default().labels("app=dry"))
        .await?;
    let mut reported = BTreeSet::new();
    for pod in &dry_pods.items {
        for (reason, note) in bed.events(&pod.uid().unwrap_or_default()).await? {
            if reason == "WouldMoveToLocal" {
                assert!(note.starts_with("dry run:"), "{note}");
                reported.insert(pod.name_any());
            }
        }
    }
    assert!(!reported.is_empty(), "the dry run says what it would move");
    assert_eq!(bed.moves().await?, 0, "a dry run moves nothing");
    assert!(
        dry.metric(r#"tke_rebalance_skipped_total{reason="OptedOut"}"#)
            .await?
            >= 1.0
            && dry
                .metric(r#"tke_rebalance_skipped_total{reason="TooFewReady"}"#)
                .await?
                >= 1.0,
        "opted-out and single-replica workloads are skipped with their reasons"
    );
    for app in ["optout", "solo"] {
        let replica_set = bed.replica_set(app).await?;
        let events = bed.events(&replica_set.uid().unwrap_or_default()).await?;
        let expected = if app == "optout" {
            "OptedOut"
        } else {
            "TooFewReady"
        };
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "RebalanceSkipped" && n.starts_with(expected)),
            "{app}: {events:?}"
        );
    }

    // A real rebalancer in its place brings the dry-run's workload home and only that one.
    dry.proc.kill();
    let real = bed.rebalancer(&[]).await?;
    wait_for_pods(
        &bed.client,
        &bed.namespace,
        "dry",
        "both dry pods local",
        |pods| bed.placed(pods) == (2, 0),
    )
    .await?;
    real.wait_metric(r#"tke_rebalance_skipped_total{reason="OptedOut"}"#, 3.0)
        .await?;
    for (app, cloud) in [("optout", 2), ("solo", 1)] {
        let pods = Api::<Pod>::namespaced(bed.client.clone(), &bed.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        let pods: Vec<Arc<Pod>> = pods.items.into_iter().map(Arc::new).collect();
        assert_eq!(bed.placed(&pods), (0, cloud), "{app} stays in the cloud");
    }
    assert_eq!(
        bed.moves().await?,
        2,
        "the two pods of the workload that may move"
    );
    Ok(())
}
