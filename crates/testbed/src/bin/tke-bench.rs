//! `tke-bench`: benchmarks run side by side on one test-bed control plane, reporting ratios.
//!
//! `tke-bench eklet --binary target/release/tke-resilience --vk PATH [--pods 500] [--rounds 1]`:
//! N pods bound (by `spec.nodeName`) to one virtual node, first served by virtual-kubelet's mock
//! provider, then by eklet with the `tencent` provider against cloudsim (zero start delay), on the
//! same control plane. For each: time from the first create to the last pod Running, pods/s, p50/p99
//! create-to-Running latency, and the node agent's peak RSS and CPU time. Then, with every pod
//! Running, what metrics-server does each resolution: a scrape of the node's `/metrics/resource`
//! (median of several, and how many pods it reported usage for). virtual-kubelet's mock provider
//! makes its numbers up in memory; eklet reads each sandbox's agent (cloudsim's, on loopback).
//! Last, what Prometheus costs eklet with every pod Running: the size of its own `/metrics`, the
//! time of a scrape (p50 and max of [`METRICS_SCRAPES`]) and eklet's CPU time per scrape (its
//! `/proc/PID/stat` CPU time over the scrapes, less that of an idle interval as long).
//! `--workloads N` spreads the pods over N controlling owners, so eklet's usage counters (a series
//! per namespace and workload) have N workloads to report; the owners are ConfigMaps, which no
//! controller acts on, so the pods stay exactly as created.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tke_testbed::{ControlPlane, Options, Proc, components, free_ports, procstat, random_suffix};

/// Back-to-back scrapes of eklet's `/metrics` after a warm-up one.
const METRICS_SCRAPES: usize = 1000;

struct Args {
    binary: PathBuf,
    vk: PathBuf,
    pods: usize,
    /// Controlling owners the pods are spread over; 0 = none (bare pods).
    workloads: usize,
    rounds: usize,
    /// Requests per second per cloud API action, in cloudsim and in eklet's client; 0 = unlimited.
    cloud_rate_limit: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("eklet") {
        bail!(
            "usage: tke-bench eklet --binary PATH --vk PATH [--pods N] [--workloads N] [--rounds R] [--cloud-rate-limit N]"
        );
    }
    let (mut binary, mut vk, mut pods, mut rounds, mut cloud_rate_limit) = (None, None, 500, 1, 20);
    let mut workloads = 0;
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--binary" => binary = Some(PathBuf::from(value()?)),
            "--vk" => vk = Some(PathBuf::from(value()?)),
            "--pods" => pods = value()?.parse()?,
            "--workloads" => workloads = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--cloud-rate-limit" => cloud_rate_limit = value()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let canonical = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| p.display().to_string());
    Ok(Args {
        binary: canonical(binary.context("--binary PATH (tke-resilience) is required")?)?,
        vk: canonical(vk.context("--vk PATH (virtual-kubelet) is required")?)?,
        pods,
        workloads,
        rounds,
        cloud_rate_limit,
    })
}

/// One agent's run.
struct Result_ {
    agent: &'static str,
    total: Duration,
    latencies: Vec<Duration>,
    peak_rss_kib: u64,
    cpu: Duration,
    /// Set when the agent died before every pod was Running: what it said last.
    crashed: Option<String>,
    /// Median time of a `/metrics/resource` scrape with every pod Running, and the pods it gave
    /// usage for; `None` when the agent died first or never answered.
    scrape: Option<(Duration, usize)>,
    /// What a scrape of the agent's own `/metrics` costs (eklet only).
    self_metrics: Option<SelfMetrics>,
}

/// The cost of scraping an agent's own Prometheus `/metrics`.
struct SelfMetrics {
    bytes: usize,
    series: usize,
    p50: Duration,
    max: Duration,
    /// The agent's CPU time per scrape, its idle CPU time subtracted.
    cpu_per_scrape: Duration,
}

impl Result_ {
    fn pods_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.total.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cp = ControlPlane::start(Options::default()).await?;
    let client = cp.client().await?;
    println!(
        "[bench] cloud API rate limit: {} requests/s per action (0 = none)",
        args.cloud_rate_limit
    );
    println!(
        "[bench] control plane up in {:.1}s; {} pods per run over {} workloads, {} round(s)",
        cp.started_in.as_secs_f64(),
        args.pods,
        args.workloads,
        args.rounds
    );

    let mut results = Vec::new();
    for round in 1..=args.rounds {
        println!("[bench] round {round}: virtual-kubelet (mock provider)");
        results.push(run_vk(&cp, &client, &args).await?);
        println!("[bench] round {round}: eklet (tencent provider, cloudsim)");
        results.push(run_eklet(&cp, &client, &args).await?);
    }

    println!();
    println!(
        "| agent | pods | all Running | pods/s | p50 | p99 | peak RSS | CPU time | /metrics/resource | pods with usage |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let (scrape, measured) = match r.scrape {
            Some((took, pods)) => (format!("{:.0} ms", took.as_secs_f64() * 1000.0), pods.to_string()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {} | {:.1}s | {:.1} | {:.2}s | {:.2}s | {} MiB | {:.1}s | {scrape} | {measured} |",
            r.agent,
            match &r.crashed {
                None => r.latencies.len().to_string(),
                Some(_) => format!("{} (crashed)", r.latencies.len()),
            },
            r.total.as_secs_f64(),
            r.pods_per_second(),
            r.percentile(0.5).as_secs_f64(),
            r.percentile(0.99).as_secs_f64(),
            r.peak_rss_kib / 1024,
            r.cpu.as_secs_f64()
        );
    }
    if results.iter().any(|r| r.self_metrics.is_some()) {
        println!();
        println!("| agent | pods | /metrics bytes | series | scrape p50 | scrape max | CPU per scrape |");
        println!("|---|---|---|---|---|---|---|");
        for r in &results {
            if let Some(m) = &r.self_metrics {
                println!(
                    "| {} | {} | {} ({:.1} KiB) | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
                    r.agent,
                    r.latencies.len(),
                    m.bytes,
                    m.bytes as f64 / 1024.0,
                    m.series,
                    m.p50.as_secs_f64() * 1000.0,
                    m.max.as_secs_f64() * 1000.0,
                    m.cpu_per_scrape.as_secs_f64() * 1000.0
                );
            }
        }
    }
    let mean = |agent: &str, f: &dyn Fn(&Result_) -> f64| {
        let xs: Vec<f64> = results.iter().filter(|r| r.agent == agent).map(f).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    };
    let (vk, ek) = (
        mean("virtual-kubelet", &|r| r.pods_per_second()),
        mean("eklet", &|r| r.pods_per_second()),
    );
    println!();
    println!(
        "[bench] throughput ratio eklet / virtual-kubelet: {:.2}x",
        ek / vk
    );
    let (vk99, ek99) = (
        mean("virtual-kubelet", &|r| r.percentile(0.99).as_secs_f64()),
        mean("eklet", &|r| r.percentile(0.99).as_secs_f64()),
    );
    println!(
        "[bench] p99 latency ratio eklet / virtual-kubelet: {:.2}x",
        ek99 / vk99
    );
    let scrape = |agent: &str| {
        let xs: Vec<f64> = results
            .iter()
            .filter(|r| r.agent == agent)
            .filter_map(|r| r.scrape.map(|(took, _)| took.as_secs_f64()))
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    if let (Some(vk), Some(ek)) = (scrape("virtual-kubelet"), scrape("eklet")) {
        println!(
            "[bench] /metrics/resource scrape time ratio eklet / virtual-kubelet: {:.2}x ({:.0} ms vs {:.0} ms)",
            ek / vk,
            ek * 1000.0,
            vk * 1000.0
        );
    }
    Ok(())
}

async fn run_vk(cp: &ControlPlane, client: &Client, args: &Args) -> anyhow::Result<Result_> {
    let node = format!("vk-mock-{}", random_suffix());
    let dir = cp.run_dir().join(&node);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("mock.json");
    std::fs::write(
        &config,
        json!({ &node: {"cpu": "1000", "memory": "4000Gi", "pods": "5000"} }).to_string(),
    )?;
    let cert = cp
        .pki()
        .issue_server(&node, &format!("system:node:{node}"), &["127.0.0.1"])?;
    let [port, metrics] = free_ports::<2>()?;
    let (cert_file, key_file) = (
        cert.cert_file.display().to_string(),
        cert.key_file.display().to_string(),
    );
    let port_s = port.to_string();
    let proc = cp.spawn_process(
        &node,
        &args.vk,
        &[
            format!("--kubeconfig={}", cp.kubeconfig().display()),
            "--provider=mock".into(),
            format!("--provider-config={}", config.display()),
            format!("--nodename={node}"),
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            "--enable-node-lease".into(),
        ],
        &[
            ("APISERVER_CERT_LOCATION", &cert_file),
            ("APISERVER_KEY_LOCATION", &key_file),
            ("KUBELET_PORT", &port_s),
            ("VKUBELET_POD_IP", "127.0.0.1"),
        ],
    )?;
    tke_testbed::nodes::wait_ready(client, &node, Duration::from_secs(60)).await?;
    measure("virtual-kubelet", cp, client, &node, port, None, proc, args).await
}

async fn run_eklet(cp: &ControlPlane, client: &Client, args: &Args) -> anyhow::Result<Result_> {
    let suffix = random_suffix();
    let dir = cp.run_dir().join(format!("eklet-{suffix}"));
    std::fs::create_dir_all(&dir)?;
    let credentials = dir.join("cloud-credentials");
    components::write_credentials(&credentials, "AKIDbench", "bench-secret-key")?;
    // A usage agent per sandbox on a loopback address, as eklet reaches them over Direct Connect.
    let agents = components::AgentBlock::new()?;
    let cloudsim = components::Cloudsim::new(&args.binary, &credentials)?
        .name(format!("cloudsim-{suffix}"))
        .start_delay("0s")
        // The real API allows 20 requests/s per action (the default here).
        .arg(format!("--rate-limit={}", args.cloud_rate_limit))
        .agents(&agents);
    let cloudsim_proc = cloudsim.spawn(cp)?;
    let eklet = components::Eklet::new(
        &args.binary,
        &format!("bench{suffix}"),
        &format!("subnet-{suffix}b"),
        "ap-guangzhou-3",
    )?
    .tencent(&cloudsim.endpoint(), "ap-guangzhou", "vpc-bench", "sg-bench")
    .arg(format!("--credentials-file={}", credentials.display()))
    .args([
        "--node-pods=5000".to_owned(),
        format!("--cloud-rate-limit={}", args.cloud_rate_limit),
    ])
    .agents(&agents)
    .env("RUST_LOG", "warn");
    let node = eklet.node_name();
    let eklet = eklet.name(&node);
    let proc = eklet.spawn(cp)?;
    let kubelet = eklet.kubelet_addr().port();
    tke_testbed::nodes::wait_ready(client, &node, Duration::from_secs(60)).await?;
    let metrics = Some(eklet.metrics_addr());
    let result = measure("eklet", cp, client, &node, kubelet, metrics, proc, args).await;
    drop(cloudsim_proc);
    result
}

/// Creates `args.pods` pods bound to `node` (over `args.workloads` owners) and measures until all
/// are Running; then the cost of a `/metrics/resource` scrape and, given the agent's own `metrics`
/// address, of a `/metrics` one.
#[allow(clippy::too_many_arguments)]
async fn measure(
    agent: &'static str,
    cp: &ControlPlane,
    client: &Client,
    node: &str,
    kubelet_port: u16,
    metrics: Option<SocketAddr>,
    mut proc: Proc,
    args: &Args,
) -> anyhow::Result<Result_> {
    let pods = args.pods;
    let ns = cp
        .namespace(&format!("bench-{}", agent.split('-').next().unwrap_or(agent)))
        .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let owners = create_owners(client, &ns, args.workloads).await?;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    // Watch first so no transition is missed.
    let watch = {
        let (api, running) = (api.clone(), running.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = events.next().await {
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && let Some(name) = pod.metadata.name
                {
                    running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let cpu_before = procstat::cpu_time(proc.pid());
    let start = Instant::now();
    stream::iter(0..pods)
        .map(|i| {
            let (api, created) = (api.clone(), created.clone());
            let node = node.to_owned();
            let owner = (!owners.is_empty()).then(|| owners[i % owners.len()].clone());
            async move {
                let name = format!("p-{i:05}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "bench"},
                                 "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default()},
                    "spec": {
                        "nodeName": node,
                        "automountServiceAccountToken": false,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "app", "image": "nginx",
                                        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]
                    }
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    // Until every pod is Running, or the agent dies (virtual-kubelet's mock provider has been seen
    // to crash under this load), or a generous bound passes. CPU and RSS are sampled while it lives.
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut cpu, mut peak_rss_kib, mut crashed) = (Duration::ZERO, 0, None);
    loop {
        let done = running.lock().unwrap_or_else(|e| e.into_inner()).len() >= pods;
        if let Some(status) = proc.exited() {
            crashed = Some(format!("{status}: {}", last_error_line(&proc.log_tail(80))));
            break;
        }
        cpu = procstat::cpu_time(proc.pid()).saturating_sub(cpu_before);
        peak_rss_kib = procstat::peak_rss_kib(proc.pid()).max(peak_rss_kib);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{agent}: not all {pods} pods Running after 900 s; log {}",
                proc.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    watch.abort();
    let scrape = match crashed {
        None => scrape_resource_metrics(cp, kubelet_port).await,
        Some(_) => None,
    };
    let self_metrics = match (metrics, &crashed) {
        (Some(addr), None) => scrape_self_metrics(addr, proc.pid()).await,
        _ => None,
    };
    let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let running = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let latencies: Vec<Duration> = created
        .iter()
        .filter_map(|(name, at)| running.get(name).map(|done| done.saturating_duration_since(*at)))
        .collect();
    proc.kill();
    if let Some(why) = &crashed {
        println!(
            "[bench] {agent} died after {} of {pods} pods were Running: {why}",
            latencies.len()
        );
    }
    Ok(Result_ {
        agent,
        total,
        latencies,
        peak_rss_kib,
        cpu,
        crashed,
        scrape,
        self_metrics,
    })
}

/// `count` ConfigMaps in `ns`, as the controlling owner references of the pods spread over them:
/// a workload each for eklet's usage counters, and nothing any controller acts on.
async fn create_owners(client: &Client, ns: &str, count: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("workload-{i:05}");
                let map = serde_json::from_value(json!({"metadata": {"name": name}}))?;
                let map = api.create(&PostParams::default(), &map).await?;
                anyhow::Ok(json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": name,
                    "uid": map.metadata.uid.context("a created ConfigMap has a uid")?,
                    "controller": true,
                }))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
}

/// Scrapes the agent's own `/metrics` as Prometheus does, [`METRICS_SCRAPES`] times back to back
/// after a warm-up one, and takes its CPU time over them less its CPU time over an idle interval
/// as long just before (its background work: status loops, lease renewals).
async fn scrape_self_metrics(addr: SocketAddr, pid: u32) -> Option<SelfMetrics> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .ok()?;
    let url = format!("http://{addr}/metrics");
    let get = || async {
        match http.get(&url).send().await.and_then(|r| r.error_for_status()) {
            Ok(response) => response.text().await.ok(),
            Err(error) => {
                println!("[bench] scraping {url}: {error}");
                None
            }
        }
    };
    get().await?;
    let mut times = Vec::with_capacity(METRICS_SCRAPES);
    let mut text = String::new();
    let (begun, cpu_begun) = (Instant::now(), procstat::cpu_time(pid));
    for _ in 0..METRICS_SCRAPES {
        let sent = Instant::now();
        text = get().await?;
        times.push(sent.elapsed());
    }
    let scraping = begun.elapsed();
    let scrapes_cpu = procstat::cpu_time(pid).saturating_sub(cpu_begun);
    let idle_begun = procstat::cpu_time(pid);
    tokio::time::sleep(scraping).await;
    let idle_cpu = procstat::cpu_time(pid).saturating_sub(idle_begun);
    times.sort();
    Some(SelfMetrics {
        bytes: text.len(),
        series: text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        p50: times[times.len() / 2],
        max: times[times.len() - 1],
        cpu_per_scrape: scrapes_cpu.saturating_sub(idle_cpu) / METRICS_SCRAPES as u32,
    })
}

/// Scrapes `/metrics/resource` as metrics-server does (as the apiserver's kubelet client, which
/// the test bed's CA signs): the median time of five scrapes after a warm-up one, and the pods the
/// last one gave memory usage for.
async fn scrape_resource_metrics(cp: &ControlPlane, port: u16) -> Option<(Duration, usize)> {
    let pair = &cp.pki().apiserver_kubelet_client;
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes()).ok()?;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(identity)
        .timeout(Duration::from_secs(30))
        .build()
        .ok()?;
    let url = format!("https://127.0.0.1:{port}/metrics/resource");
    let mut times = Vec::new();
    let mut pods = 0;
    for round in 0..6 {
        let begun = Instant::now();
        let text = match http.get(&url).send().await.and_then(|r| r.error_for_status()) {
            Ok(response) => response.text().await.ok()?,
            Err(error) => {
                println!("[bench] scraping {url}: {error}");
                return None;
            }
        };
        if round > 0 {
            times.push(begun.elapsed());
        }
        pods = text
            .lines()
            .filter(|l| l.starts_with("pod_memory_working_set_bytes{"))
            .count();
    }
    times.sort();
    Some((times[times.len() / 2], pods))
}

/// The line of a log tail that says why a process died.
fn last_error_line(tail: &str) -> String {
    tail.lines()
        .find(|l| l.starts_with("fatal error") || l.starts_with("panic"))
        .or_else(|| tail.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no log")
        .to_owned()
}
