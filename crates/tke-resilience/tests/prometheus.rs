//! The chart's monitoring against a real Prometheus (Debian's 2.42, unpacked by `hack/tools.sh`):
//! Prometheus scrapes eklet, eks-admission and the scheduler extender (its metrics port) on
//! loopback as the chart's ServiceMonitor says (honor_labels, the metrics path, the target's namespace label), and
//! kube-state-metrics (built from its Go module) watching the test's control plane; a burst runs
//! on the virtual node, and then the usage counters in Prometheus match what the test ran, every
//! expression of the dashboard and of the alert rules is one Prometheus evaluates and returns
//! data for (each rule's series, with its own matchers), `promtool check rules` accepts the
//! rendered rules, and `tke-resilience report` prints the same figures.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};
use support::{
    PATIENCE,
    admission::{Admission, VirtualNode},
    chart::{NAMESPACE, ci_values, object, render, str_at},
    extender::{self, Extender},
};
use tke_testbed::{ControlPlane, NodeSpec, Proc, wait};

/// How often Prometheus scrapes and evaluates the rules here (the chart's default is 30s).
const SCRAPE_INTERVAL: &str = "1s";
/// The range the report and the dashboard's `$__range` cover: the whole test.
const RANGE: &str = "10m";
/// Allowed difference between the usage counted and the usage the test measured, in core-seconds
/// (pod-seconds, GPU-seconds): the test sees a pod Running and gone through a watch, a little after
/// eklet does, and Prometheus' increase() extrapolates a scrape interval's worth at each end.
const TOLERANCE: f64 = 10.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// A kwok node: the dashboard counts pods on local nodes too.
const LOCAL_NODE: &str = "idc-1";

/// A Prometheus process of the test bed, supervised with the control plane.
struct Prometheus {
    _proc: Proc,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Prometheus {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts Prometheus with `config` (and the rules in `rules`, when given) and waits until ready.
    async fn start(cp: &ControlPlane, config: &str, rules: Option<&Path>) -> anyhow::Result<Prometheus> {
        let bin = tke_testbed::tools_dir()?.join("prometheus");
        ensure!(
            bin.exists(),
            "{} is missing: run `hack/tools.sh prometheus` (it unpacks Debian's prometheus package)",
            bin.display()
        );
        let dir = cp.run_dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        let mut config = config.to_owned();
        if let Some(rules) = rules {
            config.push_str(&format!("rule_files:\n  - {}\n", rules.display()));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let [port] = tke_testbed::free_ports::<1>()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ];
        let mut proc = cp.spawn_process("prometheus", &bin, &args, &[])?;
        let ready = format!("http://{addr}/-/ready");
        tke_testbed::components::wait_http(std::slice::from_mut(&mut proc), &ready, PATIENCE).await?;
        Ok(Prometheus {
            _proc: proc,
            addr,
            http: reqwest::Client::new(),
        })
    }

    /// `/api/v1/query`: the result of an instant query, or Prometheus' error.
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            answer["status"] == "success",
            "Prometheus refused `{promql}`: {} {}",
            answer["errorType"],
            answer["error"]
        );
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that returns one sample.
    async fn scalar(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(promql).await?;
        match &result[..] {
            [] => Ok(None),
            [one] => Ok(Some(
                str_at(one, "/value/1")?
                    .parse()
                    .with_context(|| format!("`{promql}` gave {one}"))?,
            )),
            many => bail!("`{promql}` gave {} samples: {many:?}", many.len()),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await?
            .json()
            .await?)
    }
}

/// kube-state-metrics watching `cp`'s pods and nodes, on a free loopback port.
async fn start_kube_state_metrics(cp: &ControlPlane) -> anyhow::Result<(Proc, SocketAddr)> {
    let bin = tke_testbed::tools_dir()?.join("kube-state-metrics");
    ensure!(
        bin.exists(),
        "{} is missing: run `hack/tools.sh kube-state-metrics`",
        bin.display()
    );
    let [port, telemetry] = tke_testbed::free_ports::<2>()?;
    let args = vec![
        format!("--kubeconfig={}", cp.kubeconfig().display()),
        "--host=127.0.0.1".to_owned(),
        format!("--port={port}"),
        "--telemetry-host=127.0.0.1".to_owned(),
        format!("--telemetry-port={telemetry}"),
        "--resources=pods,nodes".to_owned(),
    ];
    let mut proc = cp.spawn_process("kube-state-metrics", &bin, &args, &[])?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let metrics = format!("http://{addr}/metrics");
    tke_testbed::components::wait_http(std::slice::from_mut(&mut proc), &metrics, PATIENCE).await?;
    Ok((proc, addr))
}

/// The scrape configuration of one job, as the Prometheus Operator makes it from the chart's
/// ServiceMonitor endpoint: its path and honorLabels, and the target labels the operator adds
/// (namespace of the Service, job, endpoint).
fn scrape_job(job: &str, target: SocketAddr, endpoint: &Value) -> anyhow::Result<String> {
    let honor = endpoint["honorLabels"].as_bool().unwrap_or(false);
    let path = str_at(endpoint, "/path")?;
    let port = str_at(endpoint, "/port")?;
    Ok(format!(
        "  - job_name: {job}\n    honor_labels: {honor}\n    metrics_path: {path}\n    scrape_interval: {SCRAPE_INTERVAL}\n    \
         scrape_timeout: {SCRAPE_INTERVAL}\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          \
         namespace: {NAMESPACE}\n          endpoint: {port}\n          service: {job}\n"
    ))
}

/// When the test saw each pod Running and gone.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    running: Option<Instant>,
    gone: Option<Instant>,
}

/// Watches the namespace's pods in the background and notes when each (by name) first shows
/// Running and when it is deleted.
fn watch_pods(client: &Client, ns: &str) -> Arc<Mutex<HashMap<String, Seen>>> {
    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let notes = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher(pods, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            let now = Instant::now();
            let mut notes = notes.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    let entry = notes
                        .entry(pod.metadata.name.clone().unwrap_or_default())
                        .or_default();
                    if running && entry.running.is_none() {
                        entry.running = Some(now);
                    }
                }
                watcher::Event::Delete(pod) => {
                    let entry = notes
                        .entry(pod.metadata.name.clone().unwrap_or_default())
                        .or_default();
                    entry.gone.get_or_insert(now);
                }
                _ => {}
            }
        }
    });
    seen
}

/// The seconds each pod whose name starts with `prefix` ran, as the test saw it.
fn ran(seen: &Mutex<HashMap<String, Seen>>, prefix: &str) -> anyhow::Result<Vec<f64>> {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, s)| match (s.running, s.gone) {
            (Some(running), Some(gone)) => Ok(gone.duration_since(running).as_secs_f64()),
            _ => bail!("pod {name} was not seen both Running and gone: {s:?}"),
        })
        .collect()
}

/// A counter's value in eklet's own `/metrics` for the workload namespace `ns`, summed over workloads.
fn eklet_counter(text: &str, name: &str, ns: &str) -> f64 {
    let prefix = format!("{name}{{namespace=\"{ns}\"");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn close(what: &str, got: f64, want: f64, tolerance: f64) -> anyhow::Result<()> {
    eprintln!("[prometheus] {what}: {got:.2} (measured {want:.2}, ± {tolerance})");
    ensure!(
        (got - want).abs() <= tolerance,
        "{what}: {got} counted, {want} measured (tolerance {tolerance})"
    );
    Ok(())
}

/// `tke-resilience report` with `args`: its exit status, stdout and stderr.
fn report(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(support::binary())
        .arg("report")
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The metric names an expression reads that start with one of `prefixes`, each with the label
/// matchers that follow it (`eklet_pods{namespace="x",phase="Pending"}`).
fn selectors(expr: &str, prefixes: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < expr.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && prefixes.iter().any(|p| expr[i..].starts_with(p)) {
            let end = i + expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(expr.len() - i);
            let mut selector = expr[i..end].to_owned();
            let mut next = end;
            if expr[end..].starts_with('{')
                && let Some(close) = expr[end..].find('}')
            {
                selector.push_str(&expr[end..=end + close]);
                next = end + close + 1;
            }
            found.push(selector);
            i = next;
        } else {
            i += 1;
        }
    }
    found
}

/// The dashboard's expressions with Grafana's variables filled in: each textbox variable its
/// default, `$release_namespace` the chart's namespace, `$__range` the test's range and
/// `$__rate_interval` a window of a few scrapes.
fn dashboard_queries(dashboard: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let mut variables: Vec<(String, String)> = vec![
        ("release_namespace".into(), NAMESPACE.into()),
        ("__rate_interval".into(), "30s".into()),
        ("__range".into(), RANGE.into()),
    ];
    for variable in dashboard["templating"]["list"].as_array().context("templating")? {
        if variable["type"] == "textbox" {
            variables.push((
                str_at(variable, "/name")?.to_owned(),
                str_at(variable, "/current/value")?.to_owned(),
            ));
        }
    }
    // Longest names first, so $price_core_hour is not taken for a $price variable.
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = str_at(target, "/expr")?.to_owned();
            for (name, value) in &variables {
                expr = expr
                    .replace(&format!("${{{name}}}"), value)
                    .replace(&format!("${name}"), value);
            }
            ensure!(!expr.contains('$'), "a variable the test does not know in {expr}");
            queries.push((str_at(panel, "/title")?.to_owned(), expr));
        }
    }
    Ok(queries)
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<PathBuf> {
    // JSON is YAML: Prometheus and promtool read it as a rules file.
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(path.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_what_the_burst_used_and_every_dashboard_and_alert_query_evaluates()
-> anyhow::Result<()> {
    let started = Instant::now();
    // The chart as a user enables its monitoring: a ServiceMonitor, the alert rules, the dashboard.
    let docs = render(&[
        "-f",
        &ci_values("seed-values.yaml").display().to_string(),
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
    ])?;
    let monitor = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .context("no ServiceMonitor rendered")?;
    let endpoint = &monitor["spec"]["endpoints"][0];
    ensure!(
        endpoint["honorLabels"] == true,
        "the ServiceMonitor drops honorLabels: {endpoint}"
    );
    let rule = object(
        &docs,
        "PrometheusRule",
        &format!("tke-resilience-{}", support::chart::RELEASE),
    )?;
    let dashboard_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"].is_string())
        .context("no dashboard ConfigMap rendered")?;
    let (_, dashboard_text) = dashboard_map["data"]
        .as_object()
        .and_then(|data| data.iter().next())
        .context("empty dashboard ConfigMap")?;
    let dashboard: Value = serde_json::from_str(dashboard_text.as_str().context("dashboard text")?)?;

    // The stack: tke-scheduler's extender, eks-admission, eklet on cloudsim.
    let (cp, extender_addr) = extender::control_plane(vec![NodeSpec::new(LOCAL_NODE)]).await?;
    // The extender's own metrics port, as the chart's monitors scrape it (its filter port stays
    // on loopback inside the scheduler pod).
    let [extender_metrics_port] = tke_testbed::free_ports::<1>()?;
    let extender_metrics = SocketAddr::from(([127, 0, 0, 1], extender_metrics_port));
    let _extender = Extender::start(
        &cp,
        extender_addr,
        &[
            &format!("--metrics-port={extender_metrics_port}"),
            "--metrics-bind-address=127.0.0.1",
        ],
    )
    .await?;
    let admission = Admission::start(&cp, &[]).await?;
    let virtual_node = VirtualNode::start(&cp).await?;
    let eklet = &virtual_node.eklet;

    // The rules as the PrometheusRule carries them, checked by promtool and loaded into Prometheus.
    let rules = write_json(
        &cp.run_dir().join("tke-resilience-rules.yml"),
        &json!({"groups": rule["spec"]["groups"]}),
    )?;
    let promtool = Command::new(tke_testbed::tools_dir()?.join("promtool"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .context("running promtool")?;
    ensure!(
        promtool.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    // kube-state-metrics as kube-prometheus-stack scrapes it: its own labels kept.
    let (_ksm, ksm_addr) = start_kube_state_metrics(&cp).await?;
    let config = format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n{}{}{}  \
         - job_name: kube-state-metrics\n    honor_labels: true\n    static_configs:\n      - targets: ['{ksm_addr}']\n",
        scrape_job("eklet", eklet.metrics, endpoint)?,
        scrape_job("eks-admission", admission.metrics, endpoint)?,
        scrape_job("tke-scheduler-extender", extender_metrics, endpoint)?,
    );
    let prometheus = Prometheus::start(&cp, &config, Some(&rules)).await?;
    let url = prometheus.url();
    wait::until(PATIENCE, "Prometheus to scrape all four targets", || async {
        prometheus
            .scalar("sum(up)")
            .await
            .ok()
            .flatten()
            .is_some_and(|up| up == 4.0)
    })
    .await?;

    // Nothing has run in the cloud yet.
    let (ok, stdout, stderr) = report(&["--prometheus", &url, "--since", RANGE])?;
    ensure!(ok, "report before the burst failed: {stderr}");
    assert_eq!(stdout.trim(), format!("no cloud usage in the last {RANGE}"));

    // The burst: 3 pods of 1 CPU and 2 GiB in one namespace; in another, a pod with a GPU and one
    // that eklet holds Pending (a ConfigMap volume, which EKS container instances cannot mount),
    // so the refusal panel and the not-running alert have data.
    let client = cp.client().await?;
    let shop = cp.namespace("shop").await?;
    let lab = cp.namespace("lab").await?;
    let seen_shop = watch_pods(&client, &shop);
    let seen_lab = watch_pods(&client, &lab);
    let node = virtual_node.name.clone();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "web", "image": "nginx:1.27",
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}}],
                },
            },
        },
    }))?;
    // One create fails in the cloud (eklet retries it): the error panels and alerts have a series.
    virtual_node.cloud.set_faults(tke_cloudsim::Faults {
        fail_next: vec![tke_cloudsim::FailNext {
            action: "CreateEKSContainerInstances".into(),
            code: "InternalError".into(),
            message: Some("injected by the test".into()),
            count: 1,
        }],
        ..tke_cloudsim::Faults::default()
    })?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &shop);
    deployments.create(&PostParams::default(), &deployment).await?;
    let lab_pods: Api<Pod> = Api::namespaced(client.clone(), &lab);
    let gpu: Pod = serde_json::from_value(json!({
        "metadata": {"name": "train", "annotations": {"eks.tke.cloud.tencent.com/gpu-type": "T4"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "train", "image": "pytorch:2",
                "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}}],
        },
    }))?;
    lab_pods.create(&PostParams::default(), &gpu).await?;
    let held: Pod = serde_json::from_value(json!({
        "metadata": {"name": "held"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "nginx:1.27", "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "app"}}],
        },
    }))?;
    lab_pods.create(&PostParams::default(), &held).await?;
    let local: Pod = serde_json::from_value(json!({
        "metadata": {"name": "local"},
        "spec": {"nodeName": LOCAL_NODE, "containers": [{"name": "app", "image": "nginx:1.27"}]},
    }))?;
    lab_pods.create(&PostParams::default(), &local).await?;

    // Let the three run for about a minute (180 core-seconds), as eklet counts them.
    wait::until(
        PATIENCE,
        "eklet to count 180 core-seconds in the burst's namespace",
        || async {
            eklet
                .metrics_text()
                .await
                .is_ok_and(|text| eklet_counter(&text, "eklet_cloud_cpu_core_seconds_total", &shop) >= 180.0)
        },
    )
    .await?;
    let counted_before_end = Instant::now();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    lab_pods.delete("train", &DeleteParams::default()).await?;
    wait::until(PATIENCE, "the burst's pods to be gone", || async {
        ran(&seen_shop, "web-").is_ok_and(|r| r.len() == 3)
            && ran(&seen_lab, "train").is_ok_and(|r| r.len() == 1)
    })
    .await?;
    let web_seconds: f64 = ran(&seen_shop, "web-")?.iter().sum();
    let train_seconds: f64 = ran(&seen_lab, "train")?.iter().sum();
    eprintln!(
        "[prometheus] the test saw the web pods run {web_seconds:.1} pod-seconds, train {train_seconds:.1} s \
         ({:.1} s after eklet counted 180 core-seconds the web pods were gone)",
        counted_before_end.elapsed().as_secs_f64()
    );

    // Prometheus has the final values once its latest scrape equals what eklet shows now (both
    // read again each time, in case eklet's last interval ends a moment after the pod is gone).
    let in_prometheus = format!("sum(eklet_cloud_cpu_core_seconds_total{{namespace=\"{shop}\"}})");
    wait::until(
        PATIENCE,
        "Prometheus to scrape eklet's final counters",
        || async {
            let Ok(text) = eklet.metrics_text().await else {
                return false;
            };
            let at_eklet = eklet_counter(&text, "eklet_cloud_cpu_core_seconds_total", &shop);
            let in_prometheus = prometheus.scalar(&in_prometheus).await.ok().flatten();
            in_prometheus.is_some_and(|v| (v - at_eklet).abs() < 1e-6)
        },
    )
    .await?;
    let final_cpu = eklet_counter(
        &eklet.metrics_text().await?,
        "eklet_cloud_cpu_core_seconds_total",
        &shop,
    );

    // eklet's counters, and their increase() in Prometheus, against what the test measured.
    close("eklet's own CPU core-seconds", final_cpu, web_seconds, TOLERANCE)?;
    let increase = |metric: &str, ns: &str| format!("sum(increase({metric}{{namespace=\"{ns}\"}}[{RANGE}]))");
    let get = |q: String| {
        let prometheus = &prometheus;
        async move {
            prometheus
                .scalar(&q)
                .await?
                .with_context(|| format!("no data for {q}"))
        }
    };
    let cpu = get(increase("eklet_cloud_cpu_core_seconds_total", &shop)).await?;
    close("increase() of CPU core-seconds", cpu, web_seconds, TOLERANCE)?;
    let memory = get(increase("eklet_cloud_memory_byte_seconds_total", &shop)).await? / GIB;
    close(
        "increase() of memory GiB-seconds",
        memory,
        2.0 * web_seconds,
        2.0 * TOLERANCE,
    )?;
    let pods = get(increase("eklet_cloud_pod_seconds_total", &shop)).await?;
    close("increase() of pod-seconds", pods, web_seconds, TOLERANCE)?;
    let gpu_seconds = get(increase("eklet_cloud_gpu_seconds_total", &lab)).await?;
    close("increase() of GPU-seconds", gpu_seconds, train_seconds, TOLERANCE)?;
    let no_gpu = prometheus
        .query(&format!("eklet_cloud_gpu_seconds_total{{namespace=\"{shop}\"}}"))
        .await?;
    ensure!(
        no_gpu.is_empty(),
        "GPU-seconds counted for pods without a GPU: {no_gpu:?}"
    );

    // The report prints those figures.
    let (ok, stdout, stderr) = report(&[
        "--prometheus",
        &url,
        "--since",
        RANGE,
        "--output",
        "json",
        "--price-core-hour",
        "0.12",
        "--price-gib-hour",
        "0.016",
        "--price-gpu-hour",
        "2.5",
        "--currency",
        "CNY",
    ])?;
    ensure!(ok, "report --output json failed: {stderr}");
    let json: Value = serde_json::from_str(&stdout).with_context(|| format!("report's JSON: {stdout}"))?;
    let group = |ns: &str| {
        json["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["namespace"] == ns))
            .cloned()
            .with_context(|| format!("no {ns} in {json}"))
    };
    let figure = |g: &Value, key: &str| g[key].as_f64().with_context(|| format!("no {key} in {g}"));
    let shop_line = group(&shop)?;
    close(
        "report: CPU core-hours × 3600",
        figure(&shop_line, "cpu_core_hours")? * 3600.0,
        web_seconds,
        TOLERANCE,
    )?;
    close(
        "report: memory GiB-hours × 3600",
        figure(&shop_line, "memory_gib_hours")? * 3600.0,
        2.0 * web_seconds,
        2.0 * TOLERANCE,
    )?;
    close(
        "report: pod-hours × 3600",
        figure(&shop_line, "pod_hours")? * 3600.0,
        web_seconds,
        TOLERANCE,
    )?;
    let lab_line = group(&lab)?;
    close(
        "report: GPU-hours × 3600",
        figure(&lab_line, "gpu_hours")? * 3600.0,
        train_seconds,
        TOLERANCE,
    )?;
    let expected_cost =
        figure(&shop_line, "cpu_core_hours")? * 0.12 + figure(&shop_line, "memory_gib_hours")? * 0.016;
    ensure!(
        (figure(&shop_line, "cost")? - expected_cost).abs() < 1e-9,
        "{shop_line}"
    );
    let total_cpu = figure(&json["total"], "cpu_core_hours")?;
    let sum_cpu = figure(&shop_line, "cpu_core_hours")? + figure(&lab_line, "cpu_core_hours")?;
    ensure!(
        (total_cpu - sum_cpu).abs() < 1e-9,
        "the total is not the sum: {json}"
    );

    let (ok, table, stderr) = report(&[
        "--prometheus",
        &url,
        "--since",
        RANGE,
        "--price-core-hour",
        "0.12",
    ])?;
    ensure!(ok, "report failed: {stderr}");
    eprintln!("[prometheus] tke-resilience report --since {RANGE}:\n{table}");
    let shop_row = table
        .lines()
        .find(|l| l.starts_with(&shop))
        .with_context(|| format!("no {shop} line in\n{table}"))?;
    let cells: Vec<&str> = shop_row.split_whitespace().collect();
    let hours = |cell: &str| {
        cell.parse::<f64>()
            .with_context(|| format!("{cell:?} in {shop_row}"))
    };
    // POD-HOURS, CPU CORE-HOURS, MEMORY GIB-HOURS as three decimals of the JSON's figures.
    ensure!(cells.len() == 6, "{shop_row}");
    ensure!(
        (hours(cells[2])? - figure(&shop_line, "cpu_core_hours")?).abs() <= 0.0005,
        "{shop_row}"
    );
    ensure!(
        (hours(cells[3])? - figure(&shop_line, "memory_gib_hours")?).abs() <= 0.0005,
        "{shop_row}"
    );
    ensure!(
        table.lines().last().is_some_and(|l| l.starts_with("TOTAL")),
        "{table}"
    );
    let (ok, by_workload, stderr) = report(&["--prometheus", &url, "--since", RANGE, "--by", "workload"])?;
    ensure!(ok, "report --by workload failed: {stderr}");
    ensure!(
        by_workload
            .lines()
            .any(|l| l.starts_with(&shop) && l.contains("Deployment/web")),
        "{by_workload}"
    );
    ensure!(
        by_workload
            .lines()
            .any(|l| l.starts_with(&lab) && l.contains("(no controller)")),
        "{by_workload}"
    );

    // Every dashboard query evaluates and returns data.
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries(&dashboard)? {
        let result = prometheus
            .query(&expr)
            .await
            .with_context(|| format!("panel {title}"))?;
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    // Every alert rule evaluates, and every series it reads exists with
    // the rule's own matchers (the namespace the chart filters on is the scrape target's).
    for group in rule["spec"]["groups"].as_array().context("groups")? {
        for r in group["rules"].as_array().context("rules")? {
            let (alert, expr) = (str_at(r, "/alert")?, str_at(r, "/expr")?);
            prometheus
                .query(expr)
                .await
                .with_context(|| format!("alert {alert}"))?;
            for selector in selectors(expr, &["eklet_", "eks_admission_", "kube_"]) {
                if prometheus.query(&selector).await?.is_empty() {
                    empty.push(format!("alert {alert}: {selector}"));
                }
            }
        }
    }
    ensure!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
    // The pod eklet holds Pending, with the burst toleration, is what two alerts are about.
    for alert in [
        "TKEResilienceSandboxesNotRunning",
        "TKEResilienceBurstPodsStuckPending",
    ] {
        let found = rule["spec"]["groups"][0]["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["alert"] == alert))
            .context(alert)?;
        let firing = prometheus.query(str_at(found, "/expr")?).await?;
        ensure!(
            firing.len() == 1,
            "the held pod does not show in {alert}: {firing:?}"
        );
    }

    // Prometheus loaded the rules and evaluated each without an error.
    let loaded = prometheus.get("/api/v1/rules").await?;
    let evaluated: Vec<&Value> = loaded["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    ensure!(!evaluated.is_empty(), "Prometheus loaded no rule: {loaded}");
    for r in &evaluated {
        ensure!(
            r["health"] == "ok" || r["health"] == "unknown",
            "rule {} is {}: {}",
            r["name"],
            r["health"],
            r["lastError"]
        );
    }

    // The extender is scraped too.
    let extender_up = prometheus.scalar("up{job=\"tke-scheduler-extender\"}").await?;
    ensure!(extender_up == Some(1.0), "extender up = {extender_up:?}");

    // Errors name what is wrong: a closed port, something that is not Prometheus, an error of
    // Prometheus, a bad duration.
    let [closed] = tke_testbed::free_ports::<1>()?;
    let closed_url = format!("http://127.0.0.1:{closed}");
    let (ok, _, stderr) = report(&["--prometheus", &closed_url])?;
    ensure!(
        !ok && stderr.contains(&format!("cannot reach Prometheus at {closed_url}")),
        "{stderr}"
    );
    let not_prometheus = format!("http://{}", eklet.metrics);
    let (ok, _, stderr) = report(&["--prometheus", &not_prometheus])?;
    ensure!(
        !ok && stderr.contains(&not_prometheus) && stderr.contains("is not a Prometheus query result"),
        "{stderr}"
    );
    // Prometheus' own error: a range beyond what its durations hold (about 292 years).
    let (ok, _, stderr) = report(&["--prometheus", &url, "--since", "300y"])?;
    ensure!(
        !ok && stderr.contains(&format!("Prometheus at {url} answered HTTP 400 with an error"))
            && stderr.contains("bad_data"),
        "{stderr}"
    );
    let (ok, _, stderr) = report(&["--prometheus", &url, "--since", "30 days"])?;
    ensure!(!ok && stderr.contains("30d, 12h or 1h30m"), "{stderr}");

    lab_pods.delete("held", &DeleteParams::default()).await?;
    eprintln!("[prometheus] test took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
