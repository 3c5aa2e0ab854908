//! Benchmarks for tke-scheduler, run on demand, not as tests:
//!
//! ```text
//! TKE_TESTBED_BIN=... cargo test -p tke-resilience --test scheduler_bench -- --ignored --nocapture
//! ```
//!
//! * Throughput: the same 500 pods placed by the default kube-scheduler and by tke-scheduler
//!   (the same kube-scheduler binary plus the extender), on the same nodes of one test bed,
//!   alternating, two rounds each. Pods are created while the nodes are cordoned and the clock
//!   starts at the uncordon, so pod creation by the ReplicaSet controller is not measured.
//! * The toleration path: how much later a pod refused by the extender (LOCAL_REPLICAS reached,
//!   no toleration yet) is bound than one whose template already tolerates the virtual node.

mod support;

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use support::{
    admission::{self, Admission, VirtualNode},
    extender::{self, Extender},
};
use tke_testbed::{NodeSpec, random_suffix};
use tokio::time::Instant;

const PODS: i32 = 500;
const GROUP: &str = "testbed.tke.io/group";

/// A Deployment of `replicas` pods for `scheduler`, on the benchmark's nodes only.
fn pods_for(scheduler: &str, name: &str, replicas: i32, group: &str) -> anyhow::Result<Deployment> {
    let mut deployment = admission::deployment(
        name,
        replicas,
        &[],
        json!({"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}),
    )?;
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut())
    {
        spec.scheduler_name = Some(scheduler.to_owned());
        spec.node_selector = Some([(GROUP.to_owned(), group.to_owned())].into());
    }
    Ok(deployment)
}

async fn cordon(client: &Client, nodes: &[String], unschedulable: bool) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        api.patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": unschedulable}})),
        )
        .await?;
    }
    Ok(())
}

/// Creates the pods with the nodes cordoned, waits until the scheduler has given up on all of
/// them, uncordons and returns how long binding all of them took.
async fn place(
    client: &Client,
    ns: &str,
    nodes: &[String],
    deployment: Deployment,
) -> anyhow::Result<Duration> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    cordon(client, nodes, true).await?;
    deployments.create(&PostParams::default(), &deployment).await?;
    admission::wait_for_pods(client, ns, &name, "all pods Unschedulable", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::is_unschedulable(pod))
    })
    .await?;
    let started = Instant::now();
    cordon(client, nodes, false).await?;
    admission::wait_for_pods(client, ns, &name, "all pods bound", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::node_of(pod).is_some())
    })
    .await?;
    let elapsed = started.elapsed();
    deployments.delete(&name, &DeleteParams::foreground()).await?;
    admission::wait_for_pods(client, ns, &name, "pods gone", |pods| pods.is_empty()).await?;
    Ok(elapsed)
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn throughput_of_500_pods_default_scheduler_vs_tke_scheduler() -> anyhow::Result<()> {
    let group = format!("bench-{}", random_suffix());
    let nodes: Vec<NodeSpec> = (1..=5)
        .map(|i| {
            NodeSpec::new(format!("{group}-{i}"))
                .cpu("16")
                .memory("64Gi")
                .pods(110)
                .label(GROUP, &group)
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    let (cp, addr) = extender::control_plane(nodes).await?;
    let extender = Extender::start(&cp, addr, &[]).await?;
    let client = cp.client().await?;
    let ns = cp.namespace("bench").await?;
    let filter_time = || async {
        let text = extender.metrics_text().await?;
        let sum = admission::sample(&text, "tke_extender_filter_duration_seconds_sum").unwrap_or_default();
        let count =
            admission::sample(&text, "tke_extender_filter_duration_seconds_count").unwrap_or_default();
        anyhow::Ok((sum, count))
    };

    let mut results: HashMap<&str, Vec<Duration>> = HashMap::new();
    for round in 1..=2 {
        for scheduler in ["default-scheduler", extender::SCHEDULER_NAME] {
            let name = format!("{}-{round}", scheduler.split('-').next().unwrap_or("pods"));
            let (sum_before, count_before) = filter_time().await?;
            let elapsed = place(&client, &ns, &names, pods_for(scheduler, &name, PODS, &group)?).await?;
            let (sum, count) = filter_time().await?;
            let calls = count - count_before;
            let inside = if calls > 0.0 {
                (sum - sum_before) / calls * 1000.0
            } else {
                0.0
            };
            eprintln!(
                "[bench] round {round} {scheduler:>17}: {PODS} pods bound in {:.2}s = {:.0} pods/s \
                 ({calls:.0} filter calls, {inside:.2} ms each inside the extender)",
                elapsed.as_secs_f64(),
                f64::from(PODS) / elapsed.as_secs_f64()
            );
            results.entry(scheduler).or_default().push(elapsed);
        }
    }
    let rate = |scheduler: &str| {
        let total: Duration = results
            .get(scheduler)
            .map(|runs| runs.iter().sum())
            .unwrap_or_default();
        let runs = results.get(scheduler).map_or(0, Vec::len) as f64;
        f64::from(PODS) * runs / total.as_secs_f64()
    };
    let (plain, tke) = (rate("default-scheduler"), rate(extender::SCHEDULER_NAME));
    eprintln!(
        "[bench] default-scheduler {plain:.0} pods/s, tke-scheduler {tke:.0} pods/s, ratio tke/default {:.2}",
        tke / plain
    );
    assert!(plain > 0.0 && tke > 0.0);
    Ok(())
}

/// Watches the pods of `app` and returns, for each, how long after it first appeared it was
/// bound, once `count` are bound. `listed` fires when the watch is in place, before which no pod
/// of `app` may be created.
async fn bind_latencies(
    client: Client,
    ns: String,
    app: String,
    count: usize,
    listed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Vec<Duration>> {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut events = watcher(pods, watcher::Config::default().labels(&format!("app={app}"))).boxed();
    let mut listed = Some(listed);
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut bound: HashMap<String, Duration> = HashMap::new();
    let watch = async {
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                _ => continue,
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let first = *seen.entry(uid.clone()).or_insert_with(Instant::now);
            if admission::node_of(&pod).is_some() {
                bound.entry(uid).or_insert_with(|| first.elapsed());
            }
            if bound.len() >= count {
                break;
            }
        }
    };
    tokio::time::timeout(admission::PATIENCE, watch).await?;
    let mut latencies: Vec<Duration> = bound.into_values().collect();
    latencies.sort();
    Ok(latencies)
}

fn describe(latencies: &[Duration]) -> String {
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    format!(
        "median {:.2}s, p90 {:.2}s, max {:.2}s",
        at(0.5).as_secs_f64(),
        at(0.9).as_secs_f64(),
        at(1.0).as_secs_f64()
    )
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn latency_added_by_the_toleration_path() -> anyhow::Result<()> {
    const CLOUD_PODS: usize = 20;
    let group = format!("lat-{}", random_suffix());
    let (cp, addr) =
        extender::control_plane(vec![NodeSpec::new(format!("{group}-1")).label(GROUP, &group)]).await?;
    let _extender = Extender::start(&cp, addr, &[]).await?;
    let _admission = Admission::start(&cp, &[]).await?;
    let client = cp.client().await?;
    let _cloud = VirtualNode::start(&cp).await?;
    let ns = cp.namespace("latency").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    for (app, tolerate) in [
        ("tolerating", true),
        ("refused", false),
        ("tolerating-again", true),
        ("refused-again", false),
    ] {
        let mut deployment =
            admission::deployment(app, CLOUD_PODS as i32, &[("LOCAL_REPLICAS", "0")], json!({}))?;
        if let Some(spec) = deployment
            .spec
            .as_mut()
            .and_then(|spec| spec.template.spec.as_mut())
        {
            spec.scheduler_name = Some(extender::SCHEDULER_NAME.to_owned());
            if tolerate {
                spec.tolerations = Some(vec![tke_policy::burst_toleration()]);
            }
        }
        let (listed, watch_ready) = tokio::sync::oneshot::channel();
        let watching = tokio::spawn(bind_latencies(
            client.clone(),
            ns.clone(),
            app.to_owned(),
            CLOUD_PODS,
            listed,
        ));
        watch_ready.await?;
        deployments.create(&PostParams::default(), &deployment).await?;
        let latencies = watching.await??;
        eprintln!(
            "[bench] {app:>16}: creation to binding on the virtual node, {}",
            describe(&latencies)
        );
        deployments.delete(app, &DeleteParams::foreground()).await?;
        admission::wait_for_pods(&client, &ns, app, "pods gone", |pods| pods.is_empty()).await?;
    }
    Ok(())
}
