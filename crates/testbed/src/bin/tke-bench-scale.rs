//! `tke-bench-scale` (`make bench-scale`): eklet at 1k, 5k and 10k cloud pods on one control plane,
//! a benchmark command, not a test. Each step starts a fresh cloudsim and eklet (tencent provider,
//! one virtual node advertising room for the step), binds N pods to the virtual node at once and
//! measures, until they are all Running and then until they are all gone:
//! - time to all Running and to all gone, next to the bound the real API's 20 requests/s per action
//!   would set (one create per pod; deletes in batches of 20);
//! - eklet's resident memory idle (node Ready, no pods), at its peak, and steady with N pods (after
//!   a settle), and the difference per pod, overall and beyond the step before (the slope, without
//!   the buffers that grow once);
//! - eklet's CPU share while it holds N pods and nothing changes;
//! - cloud calls per second by action (cloudsim's own counts) while pods start, and idle;
//! - requests per second eklet made to the apiserver, from the apiserver's own metrics: eklet runs
//!   as a user of its own that a FlowSchema of the benchmark's matches, so
//!   `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` counts its requests alone.
//!
//! - a crashed container's way to its pod's status, for 200 sandboxes (p50 / p99).
//!
//! Then the overflow step (`--overflow N`, the largest step by default, 0 for none): N pods that
//! no IDC node can hold and that do not tolerate the virtual node, left to the default
//! kube-scheduler. eks-admission, running as a user of its own like eklet, tolerates them; the
//! scheduler binds them to the virtual node; eklet runs them. It prints the time to all tolerated,
//! bound and Running, each pod's creation-to-toleration quantiles, and eks-admission's memory, CPU
//! and apiserver requests per second while it tolerates them and while nothing changes.
//!
//! cloudsim's rate limit is off for the scaling figures (`--cloud-rate-limit 0`, eklet's own
//! limiter too), so what is measured is eklet and the apiserver; `--cloud-rate-limit 20` gives
//! the figures at the real API's limit (the status loop then shares 20 describes/s).
//!
//! Usage: `tke-bench-scale --binary target/release/tke-resilience [--steps 1000,5000,10000]
//!         [--overflow N] [--overflow-waves 1] [--cloud-rate-limit 0] [--eklet-env KEY=VALUE]`

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tke_testbed::{ControlPlane, Options, Proc, components, procstat, random_suffix};

/// The users eklet and eks-admission run as; a FlowSchema of the same name singles out each one's
/// requests in the apiserver's metrics.
const EKLET_USER: &str = "tke-bench-eklet";
const ADMISSION_USER: &str = "tke-bench-admission";
/// How long pods may take to reach a state, or to be gone, before the step fails.
const PATIENCE: Duration = Duration::from_secs(1800);
/// The real API's limit per action, for the bounds.
const API_RATE: f64 = 20.0;
/// Sandboxes one DeleteEKSContainerInstances call may name.
const DELETE_BATCH: f64 = 20.0;
/// How long the steady state is watched for CPU and call rates.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// Between the last pod Running and the steady measurements: the status loop's first sweeps.
const SETTLE: Duration = Duration::from_secs(10);
/// Sandboxes whose container is crashed to time a change's way to the pod status.
const CHANGE_SAMPLE: usize = 200;

struct Args {
    binary: PathBuf,
    steps: Vec<usize>,
    cloud_rate_limit: u32,
    /// Extra environment for eklet (`--eklet-env K=V`, repeatable), to compare allocator settings.
    eklet_env: Vec<(String, String)>,
    /// Pods of the overflow step (eks-admission tolerates them); 0 skips it. The largest step by
    /// default.
    overflow: Option<usize>,
    /// Waves of the overflow step with the same eks-admission (`--overflow-waves`, 1 by default).
    overflow_waves: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut binary = None;
    let mut steps = vec![1000, 5000, 10000];
    let mut cloud_rate_limit = 0;
    let mut eklet_env = Vec::new();
    let mut overflow = None;
    let mut overflow_waves = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--binary" => binary = Some(PathBuf::from(value("--binary")?)),
            "--steps" => {
                steps = value("--steps")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .with_context(|| format!("--steps: {s:?} is not a number"))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--cloud-rate-limit" => cloud_rate_limit = value("--cloud-rate-limit")?.parse()?,
            "--overflow-waves" => overflow_waves = value("--overflow-waves")?.parse()?,
            "--overflow" => {
                let n = value("--overflow")?;
                overflow = Some(
                    n.parse()
                        .with_context(|| format!("--overflow: {n:?} is not a number"))?,
                );
            }
            "--eklet-env" => {
                let pair = value("--eklet-env")?;
                let (k, v) = pair.split_once('=').context("--eklet-env takes KEY=VALUE")?;
                eklet_env.push((k.to_owned(), v.to_owned()));
            }
            other => bail!(
                "unknown argument {other:?}; usage: tke-bench-scale --binary PATH [--steps 1000,5000,10000] [--overflow N] [--overflow-waves 1] [--cloud-rate-limit 0] [--eklet-env K=V]"
            ),
        }
    }
    let binary = binary.context("--binary PATH (the tke-resilience binary) is required")?;
    Ok(Args {
        binary: std::fs::canonicalize(&binary).with_context(|| binary.display().to_string())?,
        steps,
        cloud_rate_limit,
        eklet_env,
        overflow,
        overflow_waves,
    })
}

#[derive(Default)]
struct Step {
    pods: usize,
    to_running: Duration,
    to_gone: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    steady_rss_kib: u64,
    idle_cpu_share: f64,
    /// Calls per second by action while the pods started.
    ramp_calls: BTreeMap<String, f64>,
    idle_calls: BTreeMap<String, f64>,
    ramp_apiserver: f64,
    idle_apiserver: f64,
    /// From a sandbox's container crashing in the cloud to its pod's status showing it, sorted.
    change_to_status: Vec<Duration>,
}

impl Step {
    fn rss_per_pod_kib(&self) -> f64 {
        self.steady_rss_kib.saturating_sub(self.idle_rss_kib) as f64 / self.pods.max(1) as f64
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cp = ControlPlane::start(Options::default()).await?;
    let client = cp.client().await?;
    let identities = Identities::create(&cp, &client).await?;
    println!(
        "[bench-scale] control plane up in {:.1}s; steps {:?}; cloud rate limit {} (0 = none)",
        cp.started_in.as_secs_f64(),
        args.steps,
        args.cloud_rate_limit
    );
    let mut steps = Vec::new();
    for &pods in &args.steps {
        println!("[bench-scale] {pods} pods");
        let step = run_step(&cp, &client, &args, &identities.eklet, pods).await?;
        println!(
            "[bench-scale]   a sandbox's change on its pod: {}",
            quantiles(&step.change_to_status)
        );
        println!(
            "[bench-scale]   Running in {:.1}s, gone in {:.1}s; RSS idle {} MiB, peak {} MiB, steady {} MiB ({:.1} KiB per pod)",
            step.to_running.as_secs_f64(),
            step.to_gone.as_secs_f64(),
            step.idle_rss_kib / 1024,
            step.peak_rss_kib / 1024,
            step.steady_rss_kib / 1024,
            step.rss_per_pod_kib()
        );
        steps.push(step);
    }
    println!();
    println!(
        "| pods | all Running | bound (20/s) | all gone | bound (20/s) | RSS idle | RSS peak | RSS steady | per pod | per pod beyond the step before | idle CPU | cloud calls/s starting | cloud calls/s idle | apiserver req/s starting | apiserver req/s idle | change → pod status p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, s) in steps.iter().enumerate() {
        let n = s.pods as f64;
        // The slope between two steps, each a fresh eklet: what one more pod costs, without the
        // buffers that grow once and that the per-pod figure of a small step spreads thinly.
        let beyond = i
            .checked_sub(1)
            .map(|j| &steps[j])
            .filter(|before| before.pods < s.pods)
            .map_or("-".to_owned(), |before| {
                let kib = s.steady_rss_kib as f64 - before.steady_rss_kib as f64;
                format!("{:.1} KiB", kib / (s.pods - before.pods) as f64)
            });
        println!(
            "| {} | {:.1}s | {:.0}s | {:.1}s | {:.1}s | {} MiB | {} MiB | {} MiB | {:.1} KiB | {} | {:.3} | {} | {} | {:.0} | {:.1} | {} |",
            s.pods,
            s.to_running.as_secs_f64(),
            n / API_RATE,
            s.to_gone.as_secs_f64(),
            (n / DELETE_BATCH).ceil() / API_RATE,
            s.idle_rss_kib / 1024,
            s.peak_rss_kib / 1024,
            s.steady_rss_kib / 1024,
            s.rss_per_pod_kib(),
            beyond,
            s.idle_cpu_share,
            rates(&s.ramp_calls),
            rates(&s.idle_calls),
            s.ramp_apiserver,
            s.idle_apiserver,
            quantiles(&s.change_to_status),
        );
    }

    let overflow = args
        .overflow
        .unwrap_or_else(|| args.steps.iter().copied().max().unwrap_or(0));
    if overflow > 0 {
        println!();
        println!("[bench-scale] overflow: {overflow} pods no IDC node can hold, tolerated by eks-admission");
        let o = run_overflow(&cp, &client, &args, &identities, overflow).await?;
        println!();
        println!(
            "| pods | all tolerated | all bound | all Running | all gone | created → tolerated p50 / p99 | Unschedulable → tolerated p50 / p99 (eks-admission's histogram) | eks-admission RSS idle | peak | steady | per pod | pods gone | CPU while tolerating | idle CPU | apiserver req/s tolerating | apiserver req/s idle | eklet RSS steady |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.1}s | {:.1}s | {:.1}s | {:.1}s | {} | {} | {} MiB | {} MiB | {} MiB | {:.1} KiB | {} MiB | {:.2} | {:.3} | {:.0} | {:.1} | {} MiB |",
            o.pods,
            o.to_tolerated.as_secs_f64(),
            o.to_bound.as_secs_f64(),
            o.to_running.as_secs_f64(),
            o.to_gone.as_secs_f64(),
            quantiles(&o.created_to_tolerated),
            o.unschedulable_to_tolerated,
            o.idle_rss_kib / 1024,
            o.peak_rss_kib / 1024,
            o.steady_rss_kib / 1024,
            o.rss_per_pod_kib(),
            o.gone_rss_kib / 1024,
            o.ramp_cpu_share,
            o.idle_cpu_share,
            o.ramp_apiserver,
            o.idle_apiserver,
            o.eklet_steady_rss_kib / 1024,
        );
        for (wave, kib) in o.waves_gone_rss_kib.iter().enumerate() {
            println!(
                "eks-admission's resident memory once wave {} of {overflow} pods is gone: {} MiB",
                wave + 2,
                kib / 1024
            );
        }
    }
    Ok(())
}

/// `call` until it succeeds, five times at most: under this load the apiserver drops connections.
async fn again<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < 5 => {
                println!("[bench-scale]   {what}: {e}; again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
        }
    }
}

/// `p50 / p99 (n)` of sorted durations.
fn quantiles(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let at = |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    format!(
        "{:.1}s / {:.1}s ({})",
        at(0.5).as_secs_f64(),
        at(0.99).as_secs_f64(),
        sorted.len()
    )
}

/// Crashes the container of `sample` sandboxes spread over the pods (cloudsim's
/// `POST /admin/crash`) and times, for each, until its pod's status shows it: the container no
/// longer running since the same start, or restarted. Sorted.
async fn change_to_status(api: &Api<Pod>, cloud: &str, sample: usize) -> anyhow::Result<Vec<Duration>> {
    // In pages: one answer of 10,000 pods is a connection the loaded apiserver may drop.
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = again("listing the pods", || api.list(&params)).await?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    let every = (items.len() / sample.max(1)).max(1);
    let chosen: HashMap<String, (String, String)> = items
        .iter()
        .step_by(every)
        .take(sample)
        .filter_map(|pod| {
            let name = pod.metadata.name.clone()?;
            let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let (id, _) = status
                .container_id
                .as_deref()?
                .strip_prefix("tencent://")?
                .split_once('/')?;
            let started = status
                .state
                .as_ref()?
                .running
                .as_ref()?
                .started_at
                .as_ref()?
                .0
                .to_string();
            Some((name, (id.to_owned(), started)))
        })
        .collect();
    let changed: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let (api, changed, chosen) = (api.clone(), changed.clone(), chosen.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = events.next().await {
                let Some(name) = pod.metadata.name.as_deref() else {
                    continue;
                };
                let Some((_, started)) = chosen.get(name) else {
                    continue;
                };
                let status = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref()?.first().cloned());
                let same_run = status.as_ref().is_some_and(|c| {
                    c.restart_count == 0
                        && c.state
                            .as_ref()
                            .and_then(|s| s.running.as_ref()?.started_at.as_ref())
                            .is_some_and(|t| &t.0.to_string() == started)
                });
                if !same_run {
                    changed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    // The watch's first list shows every chosen pod unchanged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = reqwest::Client::new();
    let mut crashed = HashMap::new();
    for (name, (id, _)) in &chosen {
        http.post(format!("{cloud}/admin/crash"))
            .json(&json!({"eks_ci_id": id}))
            .send()
            .await?
            .error_for_status()?;
        crashed.insert(name.clone(), Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while changed.lock().unwrap_or_else(|e| e.into_inner()).len() < chosen.len() && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let changed = changed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut latencies: Vec<Duration> = crashed
        .iter()
        .filter_map(|(name, at)| Some(changed.get(name)?.saturating_duration_since(*at)))
        .collect();
    if latencies.len() < chosen.len() {
        println!(
            "[bench-scale]   {} of {} crashed sandboxes never showed on their pods within 300 s",
            chosen.len() - latencies.len(),
            chosen.len()
        );
    }
    latencies.sort();
    Ok(latencies)
}

/// `≤ p50 / ≤ p99 (n)` of a Prometheus histogram in `text`, as the bounds of the buckets the
/// quantiles fall in.
fn histogram_quantiles(text: &str, name: &str) -> String {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((le.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    let Some(&(_, total)) = buckets.last() else {
        return "-".to_owned();
    };
    if total == 0.0 {
        return "-".to_owned();
    }
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or("-".to_owned(), |(le, _)| format!("≤ {le}s"))
    };
    format!("{} / {} ({total})", at(0.5), at(0.99))
}

fn rates(by_action: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = by_action
        .iter()
        .filter(|(_, rate)| **rate >= 0.05)
        .map(|(action, rate)| {
            let short = action
                .replace("EKSContainerInstances", "")
                .replace("EKSContainerInstance", "");
            format!("{short} {rate:.1}")
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The kubeconfigs eklet and eks-admission run with.
struct Identities {
    eklet: PathBuf,
    admission: PathBuf,
}

impl Identities {
    async fn create(cp: &ControlPlane, client: &Client) -> anyhow::Result<Identities> {
        Ok(Identities {
            eklet: identity(cp, client, EKLET_USER, 3).await?,
            admission: identity(cp, client, ADMISSION_USER, 4).await?,
        })
    }
}

/// A client certificate for `user` (a user of its own, bound to cluster-admin: `system:masters`
/// would put it under the `exempt` FlowSchema, which no other may precede) and a FlowSchema of the
/// same name matching that user at `precedence`, so the apiserver counts its requests apart.
async fn identity(
    cp: &ControlPlane,
    client: &Client,
    user: &str,
    precedence: u32,
) -> anyhow::Result<PathBuf> {
    let pair = cp.pki().issue_client(user, user, None)?;
    let path = cp.run_dir().join(format!("{user}.kubeconfig"));
    cp.write_client_kubeconfig(&path, &pair)?;
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .with_context(|| format!("binding the benchmark's user {user} to cluster-admin"))?;
    let schema: serde_json::Value = json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": user},
        "spec": {
            // Ahead of every suggested schema but `exempt` (1) and `probes` (2).
            "matchingPrecedence": precedence,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": user}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "namespaces": ["*"], "clusterScope": true}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    });
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "flowcontrol.apiserver.k8s.io".into(),
            version: "v1".into(),
            api_version: "flowcontrol.apiserver.k8s.io/v1".into(),
            kind: "FlowSchema".into(),
            plural: "flowschemas".into(),
        },
    );
    api.create(&PostParams::default(), &serde_json::from_value(schema)?)
        .await
        .with_context(|| format!("creating the benchmark's FlowSchema {user}"))?;
    Ok(path)
}

/// Requests the apiserver dispatched for `flow_schema` so far.
async fn apiserver_requests(client: &Client, flow_schema: &str) -> anyhow::Result<f64> {
    let mut attempt = 0;
    let text = loop {
        attempt += 1;
        match client
            .request_text(http::Request::get("/metrics").body(Vec::new())?)
            .await
        {
            Ok(text) => break text,
            Err(e) if attempt < 5 => {
                println!("[bench-scale]   reading the apiserver's metrics: {e}; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&format!("flow_schema=\"{flow_schema}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// cloudsim's calls so far, by action (`GET /admin/stats`).
async fn cloud_calls(stats_url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let stats: serde_json::Value = reqwest::get(stats_url).await?.error_for_status()?.json().await?;
    let requests = stats
        .get("requests")
        .and_then(|r| r.as_object())
        .context("cloudsim's stats have no requests")?;
    Ok(requests
        .iter()
        .filter_map(|(action, n)| Some((action.clone(), n.as_f64()?)))
        .collect())
}

fn per_second(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    took: Duration,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(action, n)| {
            let delta = n - before.get(action).copied().unwrap_or(0.0);
            (action.clone(), delta / took.as_secs_f64().max(0.001))
        })
        .collect()
}

/// A fresh cloudsim and an eklet on it whose virtual node has room for `pods`.
struct VirtualNode {
    node: String,
    eklet: Proc,
    /// cloudsim.
    procs: Vec<Proc>,
    cloud_endpoint: String,
    stats_url: String,
}

impl VirtualNode {
    async fn start(
        cp: &ControlPlane,
        client: &Client,
        args: &Args,
        kubeconfig: &Path,
        pods: usize,
    ) -> anyhow::Result<VirtualNode> {
        let suffix = random_suffix();
        let dir = cp.run_dir().join(format!("scale-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        let credentials = dir.join("cloud-credentials");
        components::write_credentials(&credentials, "AKIDscale", "scale-secret-key")?;
        let cloudsim = components::Cloudsim::new(&args.binary, &credentials)?
            .name(format!("cloudsim-{suffix}"))
            .arg(format!("--rate-limit={}", args.cloud_rate_limit));
        let mut procs: Vec<Proc> = vec![cloudsim.spawn(cp)?];
        components::wait_http(&mut procs, &cloudsim.stats_url(), Duration::from_secs(60)).await?;
        let eklet = components::Eklet::new(
            &args.binary,
            &format!("scale{suffix}"),
            &format!("subnet-{suffix}s"),
            "ap-guangzhou-3",
        )?
        .tencent(&cloudsim.endpoint(), "ap-guangzhou", "vpc-scale", "sg-scale")
        .kubeconfig(kubeconfig)
        .arg(format!("--credentials-file={}", credentials.display()))
        .args([
            // Room for every pod of the step as a scheduler counts it, with some to spare.
            format!("--node-pods={}", pods + 100),
            format!("--node-cpu={}", pods / 4 + 100),
            format!("--node-memory={}Gi", pods / 2 + 100),
            format!("--cloud-rate-limit={}", args.cloud_rate_limit),
        ])
        .env("RUST_LOG", "warn");
        let eklet = args.eklet_env.iter().fold(eklet, |eklet, (k, v)| eklet.env(k, v));
        let node = eklet.node_name();
        let eklet = eklet.name(&node).spawn(cp)?;
        tke_testbed::nodes::wait_ready(client, &node, Duration::from_secs(60)).await?;
        Ok(VirtualNode {
            node,
            eklet,
            procs,
            cloud_endpoint: cloudsim.endpoint(),
            stats_url: cloudsim.stats_url(),
        })
    }

    /// Stops eklet and cloudsim and deletes the node, so no later step's scheduler sees it.
    async fn stop(mut self, client: &Client) -> anyhow::Result<()> {
        self.eklet.kill();
        drop(self.procs);
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        match nodes.delete(&self.node, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("deleting node {}", self.node))),
        }
    }
}

/// What a watch of the step's pods has seen: when each pod first carried the virtual node's
/// toleration, and which are bound and Running.
#[derive(Default)]
struct Seen {
    tolerated: HashMap<String, Instant>,
    bound: HashSet<String>,
    running: HashSet<String>,
}

/// The virtual node's taint key (`tke_policy::virtual_node::TAINT_KEY`), which eks-admission's
/// toleration names.
const TAINT_KEY: &str = "eks.tke.cloud.tencent.com/eklet";

fn watch_pods(api: &Api<Pod>) -> (Arc<std::sync::Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
    let task = {
        let (api, seen) = (api.clone(), seen.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = events.next().await {
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                let spec = pod.spec.as_ref();
                let tolerated = spec
                    .and_then(|s| s.tolerations.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key.as_deref() == Some(TAINT_KEY)));
                let bound = spec.is_some_and(|s| s.node_name.is_some());
                let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if tolerated {
                    seen.tolerated.entry(name.clone()).or_insert_with(Instant::now);
                }
                if bound {
                    seen.bound.insert(name.clone());
                }
                if running {
                    seen.running.insert(name);
                }
            }
        })
    };
    (seen, task)
}

/// Creates `pods` pods, 32 at a time: bound to `node` and tolerating everything, or (`None`)
/// left to the scheduler with no toleration, as a workload that overflows the IDC would be.
/// Returns when each was created.
fn create_pods(
    api: &Api<Pod>,
    pods: usize,
    node: Option<String>,
) -> tokio::task::JoinHandle<anyhow::Result<HashMap<String, Instant>>> {
    let api = api.clone();
    tokio::spawn(async move {
        stream::iter(0..pods)
            .map(|i| {
                let (api, node) = (api.clone(), node.clone());
                async move {
                    let name = format!("p-{i:05}");
                    let mut pod = json!({
                        "metadata": {"name": name, "labels": {"app": "scale"}},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "containers": [{"name": "app", "image": "nginx",
                                            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]
                        }
                    });
                    if let Some(node) = node {
                        pod["spec"]["nodeName"] = json!(node);
                        pod["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
                    }
                    let pod: Pod = serde_json::from_value(pod)?;
                    // Under this load the apiserver may drop a connection after it created
                    // the pod: try again, and take "already exists" as done.
                    for attempt in 1.. {
                        match api.create(&PostParams::default(), &pod).await {
                            Ok(_) => break,
                            Err(kube::Error::Api(e)) if e.code == 409 => break,
                            Err(e) if attempt < 5 => {
                                println!("[bench-scale]   creating a pod: {e}; again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    anyhow::Ok((name, Instant::now()))
                }
            })
            .buffer_unordered(32)
            .try_collect::<HashMap<_, _>>()
            .await
    })
}

/// Waits until `done` counts `pods` in what the watch has seen, printing progress every 10 s and
/// sampling the peak resident memory of `watched` processes (pid, peak so far).
async fn wait_for(
    seen: &std::sync::Mutex<Seen>,
    what: &str,
    done: impl Fn(&Seen) -> usize,
    pods: usize,
    eklet: &mut Proc,
    watched: &mut [(u32, &mut u64)],
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        for (pid, peak) in watched.iter_mut() {
            **peak = (**peak).max(procstat::peak_rss_kib(*pid));
        }
        let count = done(&seen.lock().unwrap_or_else(|e| e.into_inner()));
        if count >= pods {
            return Ok(());
        }
        if let Some(status) = eklet.exited() {
            bail!(
                "eklet exited ({status}) with {count} of {pods} pods {what}; log {}",
                eklet.log.display()
            );
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{count} of {pods} pods {what} after {} s; log {}",
                PATIENCE.as_secs(),
                eklet.log.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "[bench-scale]   {count}/{pods} {what} after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes the step's pods together and waits until eklet has finished them all.
async fn delete_all(api: &Api<Pod>, eklet: &mut Proc) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    let (delete, all, one) = (
        DeleteParams::default(),
        ListParams::default(),
        ListParams::default().limit(1),
    );
    again("deleting the pods", || api.delete_collection(&delete, &all)).await?;
    loop {
        let left = again("counting the pods left", || api.list_metadata(&one)).await?;
        let remaining = left.items.len() + left.metadata.remaining_item_count.unwrap_or(0).max(0) as usize;
        if remaining == 0 {
            return Ok(start.elapsed());
        }
        if let Some(status) = eklet.exited() {
            bail!(
                "eklet exited ({status}) with {remaining} pods left; log {}",
                eklet.log.display()
            );
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{remaining} pods left after {} s; log {}",
                PATIENCE.as_secs(),
                eklet.log.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "[bench-scale]   {remaining} pods left after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A process's CPU share, cloud calls per second and apiserver requests per second over
/// [`IDLE_WINDOW`].
struct Idle {
    cpu_share: f64,
    calls: BTreeMap<String, f64>,
    apiserver: f64,
}

async fn idle(client: &Client, pid: u32, stats_url: &str, flow_schema: &str) -> anyhow::Result<Idle> {
    let (cpu_before, calls_before, api_before, begun) = (
        procstat::cpu_time(pid),
        cloud_calls(stats_url).await?,
        apiserver_requests(client, flow_schema).await?,
        Instant::now(),
    );
    tokio::time::sleep(IDLE_WINDOW).await;
    let took = begun.elapsed();
    Ok(Idle {
        cpu_share: procstat::cpu_time(pid).saturating_sub(cpu_before).as_secs_f64() / took.as_secs_f64(),
        calls: per_second(&calls_before, &cloud_calls(stats_url).await?, took),
        apiserver: (apiserver_requests(client, flow_schema).await? - api_before) / took.as_secs_f64(),
    })
}

async fn run_step(
    cp: &ControlPlane,
    client: &Client,
    args: &Args,
    kubeconfig: &Path,
    pods: usize,
) -> anyhow::Result<Step> {
    let mut vn = VirtualNode::start(cp, client, args, kubeconfig, pods).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = vn.eklet.pid();
    let mut step = Step {
        pods,
        idle_rss_kib: procstat::rss_kib(pid),
        ..Step::default()
    };

    let ns = cp.namespace("scale").await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (seen, watch) = watch_pods(&api);
    let calls_before = cloud_calls(&vn.stats_url).await?;
    let api_before = apiserver_requests(client, EKLET_USER).await?;
    let start = Instant::now();
    let creating = create_pods(&api, pods, Some(vn.node.clone()));
    let running = |seen: &Seen| seen.running.len();
    let mut peak = 0;
    wait_for(
        &seen,
        "Running",
        running,
        pods,
        &mut vn.eklet,
        &mut [(pid, &mut peak)],
    )
    .await?;
    step.to_running = start.elapsed();
    creating.await??;
    step.ramp_calls = per_second(&calls_before, &cloud_calls(&vn.stats_url).await?, step.to_running);
    step.ramp_apiserver =
        (apiserver_requests(client, EKLET_USER).await? - api_before) / step.to_running.as_secs_f64();
    watch.abort();

    // Steady: N pods, nothing changing.
    tokio::time::sleep(SETTLE).await;
    let idle = idle(client, pid, &vn.stats_url, EKLET_USER).await?;
    (step.idle_cpu_share, step.idle_calls, step.idle_apiserver) =
        (idle.cpu_share, idle.calls, idle.apiserver);
    step.steady_rss_kib = procstat::rss_kib(pid);
    step.change_to_status = change_to_status(&api, &vn.cloud_endpoint, CHANGE_SAMPLE).await?;

    step.to_gone = delete_all(&api, &mut vn.eklet).await?;
    step.peak_rss_kib = peak.max(procstat::peak_rss_kib(pid));
    vn.stop(client).await?;
    Ok(step)
}

/// The overflow step: eks-admission tolerates what the IDC cannot hold.
#[derive(Default)]
struct Overflow {
    pods: usize,
    /// From the first create until every pod carries the toleration, is bound, is Running.
    to_tolerated: Duration,
    to_bound: Duration,
    to_running: Duration,
    to_gone: Duration,
    /// Each pod's creation to its toleration, sorted.
    created_to_tolerated: Vec<Duration>,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    steady_rss_kib: u64,
    /// eks-admission's CPU share while it tolerated the pods, and while nothing changed.
    ramp_cpu_share: f64,
    idle_cpu_share: f64,
    ramp_apiserver: f64,
    idle_apiserver: f64,
    /// eklet's resident memory with the pods, for comparison with the bound step of the same size.
    eklet_steady_rss_kib: u64,
    /// eks-admission's resident memory once the pods are gone.
    gone_rss_kib: u64,
    /// The same after each further wave (`--overflow-waves`).
    waves_gone_rss_kib: Vec<u64>,
    /// eks-admission's own Unschedulable-to-toleration histogram, p50 / p99 as bucket bounds.
    unschedulable_to_tolerated: String,
}

impl Overflow {
    fn rss_per_pod_kib(&self) -> f64 {
        self.steady_rss_kib.saturating_sub(self.idle_rss_kib) as f64 / self.pods.max(1) as f64
    }
}

/// `pods` pods that no IDC node can hold (the control plane has none) and that do not tolerate
/// the virtual node: the default kube-scheduler finds them Unschedulable, eks-admission (running
/// as a user of its own, like eklet) adds the virtual node's toleration, the scheduler binds them
/// to the virtual node and eklet runs them.
async fn run_overflow(
    cp: &ControlPlane,
    client: &Client,
    args: &Args,
    kubeconfigs: &Identities,
    pods: usize,
) -> anyhow::Result<Overflow> {
    let mut vn = VirtualNode::start(cp, client, args, &kubeconfigs.eklet, pods).await?;
    let admission = components::Admission::new(&args.binary)?
        .kubeconfig(&kubeconfigs.admission)
        .env("RUST_LOG", "warn");
    let health = format!("http://{}/healthz", admission.metrics_addr());
    let metrics = format!("http://{}/metrics", admission.metrics_addr());
    let mut procs = vec![admission.spawn(cp)?];
    components::wait_http(&mut procs, &health, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = procs[0].pid();
    let mut step = Overflow {
        pods,
        idle_rss_kib: procstat::rss_kib(pid),
        ..Overflow::default()
    };

    let ns = cp.namespace("overflow").await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (seen, watch) = watch_pods(&api);
    let (cpu_before, api_before) = (
        procstat::cpu_time(pid),
        apiserver_requests(client, ADMISSION_USER).await?,
    );
    let start = Instant::now();
    let creating = create_pods(&api, pods, None);
    let (eklet_pid, mut eklet_peak) = (vn.eklet.pid(), 0);
    let mut watched = [(pid, &mut step.peak_rss_kib), (eklet_pid, &mut eklet_peak)];
    let tolerated = |seen: &Seen| seen.tolerated.len();
    wait_for(&seen, "tolerated", tolerated, pods, &mut vn.eklet, &mut watched).await?;
    step.to_tolerated = start.elapsed();
    step.ramp_cpu_share =
        procstat::cpu_time(pid).saturating_sub(cpu_before).as_secs_f64() / step.to_tolerated.as_secs_f64();
    step.ramp_apiserver =
        (apiserver_requests(client, ADMISSION_USER).await? - api_before) / step.to_tolerated.as_secs_f64();
    let bound = |seen: &Seen| seen.bound.len();
    wait_for(&seen, "bound", bound, pods, &mut vn.eklet, &mut watched).await?;
    step.to_bound = start.elapsed();
    let running = |seen: &Seen| seen.running.len();
    wait_for(&seen, "Running", running, pods, &mut vn.eklet, &mut watched).await?;
    step.to_running = start.elapsed();
    let created = creating.await??;
    watch.abort();
    {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        step.created_to_tolerated = created
            .iter()
            .filter_map(|(name, at)| Some(seen.tolerated.get(name)?.saturating_duration_since(*at)))
            .collect();
        step.created_to_tolerated.sort();
    }

    tokio::time::sleep(SETTLE).await;
    let idle = idle(client, pid, &vn.stats_url, ADMISSION_USER).await?;
    (step.idle_cpu_share, step.idle_apiserver) = (idle.cpu_share, idle.apiserver);
    step.steady_rss_kib = procstat::rss_kib(pid);
    step.eklet_steady_rss_kib = procstat::rss_kib(eklet_pid);
    let text = reqwest::get(&metrics).await?.error_for_status()?.text().await?;
    step.unschedulable_to_tolerated = histogram_quantiles(&text, "eks_admission_toleration_latency_seconds");

    step.to_gone = delete_all(&api, &mut vn.eklet).await?;
    step.peak_rss_kib = step.peak_rss_kib.max(procstat::peak_rss_kib(pid));
    step.gone_rss_kib = procstat::rss_kib(pid);
    // The same wave again, to tell memory kept for reuse (no growth) from memory lost (growth).
    for _ in 1..args.overflow_waves {
        let ns = cp.namespace("overflow").await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let (seen, watch) = watch_pods(&api);
        let creating = create_pods(&api, pods, None);
        let mut watched = [(pid, &mut step.peak_rss_kib)];
        let running = |seen: &Seen| seen.running.len();
        wait_for(&seen, "Running", running, pods, &mut vn.eklet, &mut watched).await?;
        creating.await??;
        watch.abort();
        delete_all(&api, &mut vn.eklet).await?;
        step.waves_gone_rss_kib.push(procstat::rss_kib(pid));
    }
    drop(procs);
    vn.stop(client).await?;
    Ok(step)
}
