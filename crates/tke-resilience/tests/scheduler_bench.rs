//! Benchmarks for tke-scheduler, run on demand, not as tests:
//!
//! ```text
//! TKE_TESTBED_BIN=... cargo test -p tke-resilience --test scheduler_bench -- --ignored --nocapture
//! ```
//!
//! * Throughput: the same 500 pods placed by the default kube-scheduler and by tke-scheduler
//!   (the same kube-scheduler binary plus the extender), on the same nodes of one test bed,
//!   alternating, two rounds each, at 10, 100 and 1,000 kwok nodes (`TKE_BENCH_NODES=10,100,1000`;
//!   one test bed, nodes added between sizes). The pods require pod affinity to an anchor pod
//!   that does not exist yet, so both schedulers give up on all of them; the clock starts when
//!   the anchor is created (bound by name, one write whatever the node count), so neither pod
//!   creation by the ReplicaSet controller nor cordoning a thousand nodes is measured. Per size:
//!   pods/s of each, the ratio, the extender's own p50/p99 filter time (its `/metrics`
//!   histogram) and the request body per filter call. `TKE_BINARY` points at another
//!   `tke-resilience` (a release build) for the extender.
//! * The toleration path: how much later a pod refused by the extender (LOCAL_REPLICAS reached,
//!   no toleration yet) is bound than one whose template already tolerates the virtual node.

mod support;

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
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
/// The label of the pod whose binding lets a round's pods be placed.
const ANCHOR: &str = "testbed.tke.io/anchor";
/// The node counts the throughput benchmark runs at, smallest first, unless `TKE_BENCH_NODES`
/// names others (comma-separated).
const DEFAULT_SIZES: &str = "10,100,1000";

/// A Deployment of `replicas` pods for `scheduler`, on the benchmark's nodes only, that cannot
/// be placed before their anchor ([`anchor`]) is bound: they require pod affinity to it within
/// the benchmark's nodes.
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
        spec.affinity = Some(serde_json::from_value(json!({
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {ANCHOR: name}},
                "topologyKey": GROUP,
            }]},
        }))?);
    }
    Ok(deployment)
}

/// The pod that opens the gate for the pods of `name`: bound by name to `node`, so no scheduler
/// is involved, and one write makes all of them schedulable at once.
fn anchor(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-anchor"), "labels": {ANCHOR: name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "anchor", "image": "registry.k8s.io/pause:3.10"}],
            "terminationGracePeriodSeconds": 0,
        },
    }))?)
}

/// The node counts from `TKE_BENCH_NODES` (or [`DEFAULT_SIZES`]), ascending, without repeats.
fn sizes() -> anyhow::Result<Vec<usize>> {
    let text = std::env::var("TKE_BENCH_NODES").unwrap_or_else(|_| DEFAULT_SIZES.to_owned());
    let mut sizes = text
        .split(',')
        .map(|size| match size.trim().parse::<usize>() {
            Ok(size) if size > 0 => Ok(size),
            _ => anyhow::bail!("TKE_BENCH_NODES={text:?}: {size:?} is not a positive node count"),
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// Nodes `from..=to` of the benchmark's group; each has room for all the pods, so every size
/// places the same pods.
fn bench_nodes(group: &str, from: usize, to: usize) -> Vec<NodeSpec> {
    (from..=to)
        .map(|i| {
            NodeSpec::new(format!("{group}-{i}"))
                .cpu("16")
                .memory("64Gi")
                .pods(PODS as u32 + 10)
                .label(GROUP, group)
        })
        .collect()
}

/// Creates the pods, waits until the scheduler has given up on all of them (their anchor is
/// missing), creates the anchor and returns how long binding all of them took from there.
async fn place(
    client: &Client,
    ns: &str,
    nodes: &[String],
    deployment: Deployment,
) -> anyhow::Result<Duration> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &deployment).await?;
    admission::wait_for_pods(client, ns, &name, "all pods Unschedulable", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::is_unschedulable(pod))
    })
    .await?;
    let anchor = anchor(&name, nodes.first().map_or("", String::as_str))?;
    let started = Instant::now();
    pods.create(&PostParams::default(), &anchor).await?;
    admission::wait_for_pods(client, ns, &name, "all pods bound", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::node_of(pod).is_some())
    })
    .await?;
    let elapsed = started.elapsed();
    deployments.delete(&name, &DeleteParams::foreground()).await?;
    pods.delete(&format!("{name}-anchor"), &DeleteParams::default())
        .await?;
    admission::wait_for_pods(client, ns, &name, "pods gone", |pods| pods.is_empty()).await?;
    Ok(elapsed)
}

/// What the extender's `/metrics` says about its filter calls so far.
#[derive(Clone, Debug, Default)]
struct FilterStats {
    /// `(le, cumulative count)` of `tke_extender_filter_duration_seconds`, `+Inf` last.
    buckets: Vec<(f64, f64)>,
    calls: f64,
    seconds: f64,
    request_bytes: f64,
}

impl FilterStats {
    fn parse(text: &str) -> FilterStats {
        let buckets = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("tke_extender_filter_duration_seconds_bucket{le=\"")?;
                let (le, rest) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect();
        FilterStats {
            buckets,
            calls: admission::sample(text, "tke_extender_filter_duration_seconds_count").unwrap_or_default(),
            seconds: admission::sample(text, "tke_extender_filter_duration_seconds_sum").unwrap_or_default(),
            request_bytes: admission::sample(text, "tke_extender_filter_request_bytes_sum")
                .unwrap_or_default(),
        }
    }

    /// The calls made since `before`.
    fn since(&self, before: &FilterStats) -> FilterStats {
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(other, _)| *other == le)
                .map_or(0.0, |(_, count)| *count)
        };
        FilterStats {
            buckets: self
                .buckets
                .iter()
                .map(|(le, count)| (*le, count - earlier(*le)))
                .collect(),
            calls: self.calls - before.calls,
            seconds: self.seconds - before.seconds,
            request_bytes: self.request_bytes - before.request_bytes,
        }
    }

    fn add(&mut self, other: &FilterStats) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.iter().map(|(le, _)| (*le, 0.0)).collect();
        }
        for ((_, count), (_, more)) in self.buckets.iter_mut().zip(&other.buckets) {
            *count += more;
        }
        self.calls += other.calls;
        self.seconds += other.seconds;
        self.request_bytes += other.request_bytes;
    }

    /// The `q` quantile of the filter time in milliseconds, interpolated inside its bucket.
    fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |(_, count)| *count);
        if total <= 0.0 {
            return 0.0;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in &self.buckets {
            if *count >= rank {
                if le.is_infinite() {
                    return lower * 1000.0;
                }
                let share = if count > &below {
                    (rank - below) / (count - below)
                } else {
                    1.0
                };
                return (lower + (le - lower) * share) * 1000.0;
            }
            (lower, below) = (*le, *count);
        }
        lower * 1000.0
    }

    fn mean_ms(&self) -> f64 {
        if self.calls > 0.0 {
            self.seconds / self.calls * 1000.0
        } else {
            0.0
        }
    }

    fn bytes_per_call(&self) -> f64 {
        if self.calls > 0.0 {
            self.request_bytes / self.calls
        } else {
            0.0
        }
    }
}

/// The figures of one node count.
struct Row {
    nodes: usize,
    plain: f64,
    tke: f64,
    filter: FilterStats,
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn throughput_of_500_pods_default_scheduler_vs_tke_scheduler() -> anyhow::Result<()> {
    let sizes = sizes()?;
    let group = format!("bench-{}", random_suffix());
    let first = sizes.first().copied().unwrap_or(1);
    let (cp, addr) = extender::control_plane(bench_nodes(&group, 1, first)).await?;
    let extender = Extender::start(&cp, addr, &[]).await?;
    let client = cp.client().await?;
    let ns = cp.namespace("bench").await?;
    let filter_stats = || async { anyhow::Ok(FilterStats::parse(&extender.metrics_text().await?)) };

    let mut rows = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for size in sizes {
        let more = bench_nodes(&group, names.len() + 1, size);
        if names.len() >= first {
            let adding = Instant::now();
            cp.add_nodes(&more).await?;
            eprintln!(
                "[bench] {} more nodes Ready in {:.1}s",
                more.len(),
                adding.elapsed().as_secs_f64()
            );
        }
        names.extend(more.into_iter().map(|node| node.name));

        let mut results: HashMap<&str, Vec<Duration>> = HashMap::new();
        let mut filter = FilterStats::default();
        for round in 1..=2 {
            for scheduler in ["default-scheduler", extender::SCHEDULER_NAME] {
                let name = format!("{}-{size}-{round}", scheduler.split('-').next().unwrap_or("pods"));
                let before = filter_stats().await?;
                let placed = place(&client, &ns, &names, pods_for(scheduler, &name, PODS, &group)?).await?;
                let calls = filter_stats().await?.since(&before);
                eprintln!(
                    "[bench] {size} nodes, round {round} {scheduler:>17}: {PODS} pods bound in {:.2}s = {:.0} pods/s \
                     ({:.0} filter calls, mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms inside the extender, \
                     {:.0} B per request)",
                    placed.as_secs_f64(),
                    f64::from(PODS) / placed.as_secs_f64(),
                    calls.calls,
                    calls.mean_ms(),
                    calls.quantile_ms(0.5),
                    calls.quantile_ms(0.99),
                    calls.bytes_per_call(),
                );
                filter.add(&calls);
                results.entry(scheduler).or_default().push(placed);
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
        assert!(plain > 0.0 && tke > 0.0);
        rows.push(Row {
            nodes: size,
            plain,
            tke,
            filter,
        });
    }

    eprintln!(
        "[bench] {PODS} pods, two rounds each, alternating; pods/s from the anchor's creation to all bound; \
         added per pod = 1/tke - 1/plain; filter times are the extender's own (body decoded to answer built)"
    );
    eprintln!(
        "[bench] {:>6} {:>13} {:>13} {:>6} {:>14} {:>12} {:>12} {:>12} {:>14}",
        "nodes",
        "plain pods/s",
        "tke pods/s",
        "ratio",
        "added per pod",
        "filter mean",
        "filter p50",
        "filter p99",
        "bytes/request"
    );
    for row in &rows {
        eprintln!(
            "[bench] {:>6} {:>13.0} {:>13.0} {:>5.2}x {:>11.2} ms {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>14.0}",
            row.nodes,
            row.plain,
            row.tke,
            row.tke / row.plain,
            (1.0 / row.tke - 1.0 / row.plain) * 1000.0,
            row.filter.mean_ms(),
            row.filter.quantile_ms(0.5),
            row.filter.quantile_ms(0.99),
            row.filter.bytes_per_call(),
        );
    }
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
