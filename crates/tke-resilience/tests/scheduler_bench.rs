//! Benchmarks for tke-scheduler, run on demand, not as tests:
//!
//! ```text
//! TKE_TESTBED_BIN=... cargo test -p tke-resilience --test scheduler_bench -- --ignored --nocapture
//! ```
//!
//! * Throughput: the same 500 pods placed by the default kube-scheduler and by tke-scheduler
//!   (the same kube-scheduler binary plus the extender), on the same nodes of one test bed, at
//!   10, 100 and 1,000 kwok nodes (`TKE_BENCH_NODES=10,100,1000`; one test bed, nodes added
//!   between sizes), `TKE_BENCH_ROUNDS` rounds of each (3 by default), alternating, the first of
//!   a round alternating too, after one round of each that is not counted. Both run the same
//!   configuration, `deploy/tke-scheduler.yaml`, the default scheduler without its `extenders:`
//!   section (same client rate, backoff and leader election), so the extender is the only
//!   difference. The pods require pod affinity to an anchor pod that does not exist yet, so both
//!   schedulers give up on all of them; the clock starts when the anchor is created (bound by
//!   name, one write whatever the node count), so neither pod creation by the ReplicaSet
//!   controller nor cordoning a thousand nodes is measured. Per round: pods/s, the 1-minute load
//!   average, each scheduler's own figures from its `/metrics` (attempts by result; scheduling
//!   algorithm time per attempt, which includes the extender's HTTP call; the time from a placed
//!   pod's scheduling cycle to its binding; pods queued by events into the active or backoff
//!   queue), the extender's filter time and request size from its `/metrics`, the CPU time per
//!   pod of each process of the test bed above what it uses idle (measured for 10 s before each
//!   size's rounds), how busy the whole machine was, and the pod watch events and requests the
//!   apiserver served per pod. Per size: the medians over the rounds, the ratio (median of
//!   tke/plain round by round) and the time added per pod. `TKE_BINARY` points at another
//!   `tke-resilience` (a release build) for the extender. No figure is asserted: they depend on
//!   the machine.
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
/// missing), creates the anchor and returns how long binding all of them took from there, and
/// the CPU time per pod each process of the test bed in `run_dir` used meanwhile.
async fn place(
    client: &Client,
    ns: &str,
    nodes: &[String],
    deployment: Deployment,
    run_dir: &std::path::Path,
    idle: &HashMap<String, f64>,
) -> anyhow::Result<(Duration, Vec<(String, f64)>)> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &deployment).await?;
    admission::wait_for_pods(client, ns, &name, "all pods Unschedulable", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::is_unschedulable(pod))
    })
    .await?;
    let anchor = anchor(&name, nodes.first().map_or("", String::as_str))?;
    let api_before = apiserver_pod_stats(client).await?;
    let cpu_before = cpu_seconds(run_dir);
    let machine_before = machine_ticks();
    let started = Instant::now();
    pods.create(&PostParams::default(), &anchor).await?;
    admission::wait_for_pods(client, ns, &name, "all pods bound", |pods| {
        pods.len() == PODS as usize && pods.iter().all(|pod| admission::node_of(pod).is_some())
    })
    .await?;
    let elapsed = started.elapsed();
    let mut cpu = cpu_per_pod(&cpu_before, &cpu_seconds(run_dir), idle, elapsed);
    let api = apiserver_pod_stats(client).await?;
    cpu.push((
        "(pod watch events per pod)".to_owned(),
        (api.0 - api_before.0) / f64::from(PODS),
    ));
    cpu.push((
        "(pod watch KiB per pod)".to_owned(),
        (api.1 - api_before.1) / 1024.0 / f64::from(PODS),
    ));
    cpu.push((
        "(pod requests per pod)".to_owned(),
        (api.2 - api_before.2) / f64::from(PODS),
    ));
    let machine = machine_ticks();
    let (busy, idle) = (machine.0 - machine_before.0, machine.1 - machine_before.1);
    cpu.push((
        "(machine busy %)".to_owned(),
        if busy + idle > 0.0 {
            busy / (busy + idle) * 100.0
        } else {
            0.0
        },
    ));
    deployments.delete(&name, &DeleteParams::foreground()).await?;
    pods.delete(&format!("{name}-anchor"), &DeleteParams::default())
        .await?;
    admission::wait_for_pods(client, ns, &name, "pods gone", |pods| pods.is_empty()).await?;
    Ok((elapsed, cpu))
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

/// The sum of the samples of `name` whose labels include each of `labels` (`key="value"`).
fn total(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labelled, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|label| labelled.contains(label))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// What one kube-scheduler's `/metrics` says about the pods of one profile, so far.
#[derive(Clone, Debug, Default)]
struct SchedulerStats {
    /// Scheduling attempts by result.
    scheduled: f64,
    unschedulable: f64,
    errors: f64,
    /// `scheduler_scheduling_algorithm_duration_seconds`: filter, extenders and score, per
    /// attempt (the extender's HTTP call included, binding not).
    algorithm_seconds: f64,
    algorithm_count: f64,
    /// `scheduler_scheduling_attempt_duration_seconds` of the attempts that placed a pod: from
    /// the start of its scheduling cycle to its binding written, so it includes the wait of
    /// binding goroutines for the client's rate limit and the apiserver.
    attempt_seconds: f64,
    attempt_count: f64,
    /// Pods the queue took in because of an event, by queue (active, backoff).
    to_active: f64,
    to_backoff: f64,
}

impl SchedulerStats {
    fn parse(text: &str, profile: &str) -> SchedulerStats {
        let profile = format!("profile=\"{profile}\"");
        let attempts = |result: &str| {
            total(
                text,
                "scheduler_schedule_attempts_total",
                &[&profile, &format!("result=\"{result}\"")],
            )
        };
        SchedulerStats {
            scheduled: attempts("scheduled"),
            unschedulable: attempts("unschedulable"),
            errors: attempts("error"),
            algorithm_seconds: total(text, "scheduler_scheduling_algorithm_duration_seconds_sum", &[]),
            algorithm_count: total(text, "scheduler_scheduling_algorithm_duration_seconds_count", &[]),
            attempt_seconds: total(
                text,
                "scheduler_scheduling_attempt_duration_seconds_sum",
                &[&profile, "result=\"scheduled\""],
            ),
            attempt_count: total(
                text,
                "scheduler_scheduling_attempt_duration_seconds_count",
                &[&profile, "result=\"scheduled\""],
            ),
            to_active: total(text, "scheduler_queue_incoming_pods_total", &["queue=\"active\""]),
            to_backoff: total(
                text,
                "scheduler_queue_incoming_pods_total",
                &["queue=\"backoff\""],
            ),
        }
    }

    /// The attempts made since `before`.
    fn since(&self, before: &SchedulerStats) -> SchedulerStats {
        SchedulerStats {
            scheduled: self.scheduled - before.scheduled,
            unschedulable: self.unschedulable - before.unschedulable,
            errors: self.errors - before.errors,
            algorithm_seconds: self.algorithm_seconds - before.algorithm_seconds,
            algorithm_count: self.algorithm_count - before.algorithm_count,
            attempt_seconds: self.attempt_seconds - before.attempt_seconds,
            attempt_count: self.attempt_count - before.attempt_count,
            to_active: self.to_active - before.to_active,
            to_backoff: self.to_backoff - before.to_backoff,
        }
    }

    /// Mean scheduling algorithm time per attempt, in milliseconds.
    fn algorithm_ms(&self) -> f64 {
        per(self.algorithm_seconds, self.algorithm_count) * 1000.0
    }

    /// Mean time from the start of a placed pod's scheduling cycle to its binding, in
    /// milliseconds.
    fn attempt_ms(&self) -> f64 {
        per(self.attempt_seconds, self.attempt_count) * 1000.0
    }
}

fn per(sum: f64, count: f64) -> f64 {
    if count > 0.0 { sum / count } else { 0.0 }
}

/// The middle of `values` (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU seconds (user and system) used so far by each process of the test bed in `run_dir`, by
/// name: the processes whose command line names the run directory, which every component's
/// kubeconfig or data directory lives in. The two kube-schedulers are told apart by their
/// configuration file, the extender by its subcommand.
fn cpu_seconds(run_dir: &std::path::Path) -> HashMap<String, f64> {
    let run_dir = run_dir.display().to_string();
    let mut cpu = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        if !args.iter().any(|arg| arg.contains(&run_dir)) {
            continue;
        }
        let program = args
            .first()
            .and_then(|arg| arg.rsplit('/').next())
            .unwrap_or_default()
            .to_owned();
        let name = if args.iter().any(|arg| arg == "scheduler-extender") {
            "extender".to_owned()
        } else if args.iter().any(|arg| arg.ends_with("second-scheduler.yaml")) {
            "tke-scheduler".to_owned()
        } else {
            program
        };
        // utime and stime, the 14th and 15th fields, in clock ticks (100 a second); the name
        // in parentheses may hold spaces, so count from the last `)`.
        let Some(ticks) = std::fs::read_to_string(path.join("stat")).ok().and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        }) else {
            continue;
        };
        *cpu.entry(name).or_default() += ticks / 100.0;
    }
    cpu
}

/// The machine's CPU time so far, busy and idle, in clock ticks (the first line of `/proc/stat`).
fn machine_ticks() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or_default() + fields.get(4).copied().unwrap_or_default();
    let all: f64 = fields.iter().take(8).sum();
    (all - idle, idle)
}

/// The CPU milliseconds per pod each process used between `before` and `after`, less what it
/// uses in `elapsed` with nothing to schedule (`idle`, CPU seconds per second: node heartbeats,
/// leases, leader election), most first. Without that, a round that takes longer would seem to
/// cost more per pod in every process.
fn cpu_per_pod(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    idle: &HashMap<String, f64>,
    elapsed: Duration,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(name, seconds)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            let background = idle.get(name).copied().unwrap_or_default() * elapsed.as_secs_f64();
            (
                name.clone(),
                (seconds - earlier - background) * 1000.0 / f64::from(PODS),
            )
        })
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

/// The CPU seconds per second each process of the test bed in `run_dir` uses over `interval`
/// with nothing to schedule.
async fn idle_cpu(run_dir: &std::path::Path, interval: Duration) -> HashMap<String, f64> {
    let before = cpu_seconds(run_dir);
    tokio::time::sleep(interval).await;
    cpu_seconds(run_dir)
        .into_iter()
        .map(|(name, seconds)| {
            let earlier = before.get(&name).copied().unwrap_or_default();
            (name, (seconds - earlier) / interval.as_secs_f64())
        })
        .collect()
}

/// What the apiserver's `/metrics` says about pods so far: watch events sent (to all watchers),
/// their bytes, and requests on pods and their subresources.
async fn apiserver_pod_stats(client: &Client) -> anyhow::Result<(f64, f64, f64)> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok((
        total(&text, "apiserver_watch_events_total", &["resource=\"pods\""]),
        total(&text, "apiserver_watch_events_sizes_sum", &["resource=\"pods\""]),
        total(&text, "apiserver_request_total", &["resource=\"pods\""]),
    ))
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// How many rounds of each scheduler a size runs: `TKE_BENCH_ROUNDS`, 3 unless set.
fn rounds() -> anyhow::Result<u32> {
    match std::env::var("TKE_BENCH_ROUNDS") {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(rounds) if rounds > 0 => Ok(rounds),
            _ => anyhow::bail!("TKE_BENCH_ROUNDS={text:?} is not a positive number of rounds"),
        },
        Err(_) => Ok(3),
    }
}

/// The figures of one scheduler at one node count, one entry per round.
#[derive(Default)]
struct Runs {
    pods_per_second: Vec<f64>,
    algorithm_ms: Vec<f64>,
    attempt_ms: Vec<f64>,
}

/// The figures of one node count.
struct Row {
    nodes: usize,
    plain: Runs,
    tke: Runs,
    /// tke-scheduler's pods/s over the plain scheduler's, round by round.
    ratios: Vec<f64>,
    filter: FilterStats,
    load: Vec<f64>,
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn throughput_of_500_pods_default_scheduler_vs_tke_scheduler() -> anyhow::Result<()> {
    let sizes = sizes()?;
    let rounds = rounds()?;
    let group = format!("bench-{}", random_suffix());
    let first = sizes.first().copied().unwrap_or(1);
    let (cp, addr) = extender::control_plane_for_comparison(bench_nodes(&group, 1, first)).await?;
    let extender = Extender::start(&cp, addr, &[]).await?;
    let client = cp.client().await?;
    let ns = cp.namespace("bench").await?;
    let filter_stats = || async { anyhow::Ok(FilterStats::parse(&extender.metrics_text().await?)) };
    let scheduler_stats = |scheduler: &'static str| {
        let cp = &cp;
        async move {
            let text = if scheduler == extender::SCHEDULER_NAME {
                cp.second_scheduler_metrics().await?
            } else {
                cp.scheduler_metrics().await?
            };
            anyhow::Ok(SchedulerStats::parse(&text, scheduler))
        }
    };

    // One round of each before any is measured: the first pods of a fresh control plane meet
    // caches still filling and controllers still starting, and were up to twice as slow.
    let warm_up: Vec<String> = bench_nodes(&group, 1, first)
        .into_iter()
        .map(|node| node.name)
        .collect();
    for scheduler in ["default-scheduler", extender::SCHEDULER_NAME] {
        let name = format!("{}-warm-up", scheduler.split('-').next().unwrap_or("pods"));
        let (placed, _) = place(
            &client,
            &ns,
            &warm_up,
            pods_for(scheduler, &name, PODS, &group)?,
            cp.run_dir(),
            &HashMap::new(),
        )
        .await?;
        eprintln!(
            "[bench] warm-up, not counted, {scheduler}: {PODS} pods bound in {:.2}s",
            placed.as_secs_f64()
        );
    }

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

        let idle = idle_cpu(cp.run_dir(), Duration::from_secs(10)).await;
        eprintln!(
            "[bench] {size} nodes idle, CPU ms per second: {}",
            idle.iter()
                .map(|(name, seconds)| format!("{name} {:.1}", seconds * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (mut plain, mut tke) = (Runs::default(), Runs::default());
        let mut ratios = Vec::new();
        let mut filter = FilterStats::default();
        let mut load = Vec::new();
        for round in 1..=rounds {
            // Which scheduler goes first alternates too, so neither always follows the other's
            // clean-up.
            let order = if round % 2 == 1 {
                ["default-scheduler", extender::SCHEDULER_NAME]
            } else {
                [extender::SCHEDULER_NAME, "default-scheduler"]
            };
            let mut rates = HashMap::new();
            for scheduler in order {
                let name = format!("{}-{size}-{round}", scheduler.split('-').next().unwrap_or("pods"));
                load.push(load_average());
                let before = (filter_stats().await?, scheduler_stats(scheduler).await?);
                let (placed, cpu) = place(
                    &client,
                    &ns,
                    &names,
                    pods_for(scheduler, &name, PODS, &group)?,
                    cp.run_dir(),
                    &idle,
                )
                .await?;
                let calls = filter_stats().await?.since(&before.0);
                let attempts = scheduler_stats(scheduler).await?.since(&before.1);
                let rate = f64::from(PODS) / placed.as_secs_f64();
                eprintln!(
                    "[bench] {size} nodes, round {round} {scheduler:>17} (load {:.1}): {PODS} pods bound in {:.2}s \
                     = {rate:.0} pods/s; attempts {:.0} scheduled, {:.0} unschedulable, {:.0} error; algorithm \
                     {:.2} ms per attempt, attempt to binding {:.2} ms; queued by events: {:.0} active, \
                     {:.0} backoff; extender: {:.0} filter calls, mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, \
                     {:.0} B per request; CPU ms per pod above idle: {}",
                    load.last().copied().unwrap_or_default(),
                    placed.as_secs_f64(),
                    attempts.scheduled,
                    attempts.unschedulable,
                    attempts.errors,
                    attempts.algorithm_ms(),
                    attempts.attempt_ms(),
                    attempts.to_active,
                    attempts.to_backoff,
                    calls.calls,
                    calls.mean_ms(),
                    calls.quantile_ms(0.5),
                    calls.quantile_ms(0.99),
                    calls.bytes_per_call(),
                    cpu.iter()
                        .map(|(name, ms)| format!("{name} {ms:.2}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                let runs = if scheduler == extender::SCHEDULER_NAME {
                    filter.add(&calls);
                    &mut tke
                } else {
                    &mut plain
                };
                runs.pods_per_second.push(rate);
                runs.algorithm_ms.push(attempts.algorithm_ms());
                runs.attempt_ms.push(attempts.attempt_ms());
                rates.insert(scheduler, rate);
            }
            let (Some(plain_rate), Some(tke_rate)) = (
                rates.get("default-scheduler"),
                rates.get(extender::SCHEDULER_NAME),
            ) else {
                anyhow::bail!("a round without both schedulers");
            };
            ratios.push(tke_rate / plain_rate);
        }
        rows.push(Row {
            nodes: size,
            plain,
            tke,
            ratios,
            filter,
            load,
        });
    }

    eprintln!(
        "[bench] {PODS} pods, {rounds} rounds of each scheduler, alternating, medians over the rounds; pods/s from \
         the anchor's creation to all bound; ratio = median of tke/plain round by round; added = 1/tke - 1/plain \
         (medians); algorithm = kube-scheduler's own time per attempt (filter, extender call, score); filter = the \
         extender's own time (body decoded to answer built); load = 1-minute load average, min-max over the rounds"
    );
    eprintln!(
        "[bench] {:>6} {:>9} {:>9} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>9}",
        "nodes",
        "plain/s",
        "tke/s",
        "ratio",
        "added",
        "algo plain",
        "algo tke",
        "filter mean",
        "filter p99",
        "bytes",
        "load min",
        "load max"
    );
    for row in &rows {
        let (plain, tke) = (
            median(&row.plain.pods_per_second),
            median(&row.tke.pods_per_second),
        );
        eprintln!(
            "[bench] {:>6} {:>9.0} {:>9.0} {:>5.2}x {:>6.2} ms {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>8.2} ms {:>8.0} \
             {:>8.1} {:>9.1}",
            row.nodes,
            plain,
            tke,
            median(&row.ratios),
            (1.0 / tke - 1.0 / plain) * 1000.0,
            median(&row.plain.algorithm_ms),
            median(&row.tke.algorithm_ms),
            row.filter.mean_ms(),
            row.filter.quantile_ms(0.99),
            row.filter.bytes_per_call(),
            row.load.iter().copied().fold(f64::INFINITY, f64::min),
            row.load.iter().copied().fold(0.0, f64::max),
        );
        eprintln!(
            "[bench] {:>6} rounds: plain {:?} pods/s, tke {:?} pods/s, ratios {:?}; attempt to binding plain {:?} \
             ms, tke {:?} ms",
            row.nodes,
            rounded(&row.plain.pods_per_second, 0),
            rounded(&row.tke.pods_per_second, 0),
            rounded(&row.ratios, 2),
            rounded(&row.plain.attempt_ms, 2),
            rounded(&row.tke.attempt_ms, 2),
        );
    }
    Ok(())
}

/// `values` rounded to `digits` decimals, for printing.
fn rounded(values: &[f64], digits: i32) -> Vec<f64> {
    let scale = 10f64.powi(digits);
    values
        .iter()
        .map(|value| (value * scale).round() / scale)
        .collect()
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
