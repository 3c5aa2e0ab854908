//! Resource usage in the kubelet's two formats: the Summary API (`/stats/summary`, JSON of
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1`) and the resource metrics endpoint
//! (`/metrics/resource`, Prometheus text with millisecond timestamps) that metrics-server
//! scrapes for `kubectl top` and the HPA.
//!
//! Both formats carry cumulative CPU time. Cloud sources usually report a rate, so
//! [`CpuCounters`] integrates the rate between observations into a counter that only grows,
//! per container, per pod and for the node.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::{Deserialize, Serialize};

use crate::backend::{CpuUsage, PodUsage};

/// `GET /stats/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub containers: Vec<ContainerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    pub usage_nano_cores: u64,
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    pub working_set_bytes: u64,
    /// The sources report only a working set; the kubelet's usage is at least that.
    pub usage_bytes: u64,
}

/// `metav1.Time` as JSON: RFC 3339 in whole seconds.
fn api_time(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One observation of one pod, ready for either format.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub start_time: Option<Timestamp>,
    pub containers: Vec<ContainerSample>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    pub name: String,
    pub start_time: Option<Timestamp>,
    pub usage: Option<Usage>,
}

/// Usage with CPU as both rate and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub time: Timestamp,
    pub cpu_nano_cores: u64,
    pub cpu_core_nano_seconds: u64,
    pub memory_working_set_bytes: u64,
}

impl Usage {
    fn cpu(&self) -> CpuStats {
        CpuStats {
            time: api_time(self.time),
            usage_nano_cores: self.cpu_nano_cores,
            usage_core_nano_seconds: self.cpu_core_nano_seconds,
        }
    }

    fn memory(&self) -> MemoryStats {
        MemoryStats {
            time: api_time(self.time),
            working_set_bytes: self.memory_working_set_bytes,
            usage_bytes: self.memory_working_set_bytes,
        }
    }
}

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    pub node_name: String,
    pub start_time: Timestamp,
    pub usage: Option<Usage>,
    pub pods: Vec<PodSample>,
}

/// Pods whose usage a scrape asks for: those with containers that may be running.
pub fn running(pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    pods.iter()
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            phase == Some("Running")
        })
        .cloned()
        .collect()
}

/// Integrates CPU rates into the counters the formats need. Keys are (pod UID, container), with
/// an empty container for the pod itself; keys of pods that are gone are dropped each scrape.
#[derive(Default)]
pub struct CpuCounters {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    series: HashMap<(String, String), Counter>,
    node: Option<Counter>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    at: Timestamp,
    core_nano_seconds: u128,
}

impl Counter {
    /// Advances to `at` at `nano_cores`; the first observation assumes the rate held since `since`.
    fn advance(previous: Option<Counter>, at: Timestamp, cpu: CpuUsage, since: Option<Timestamp>) -> Counter {
        if let Some(counted) = cpu.core_nano_seconds {
            let counted = u128::from(counted);
            // A source's own counter, kept monotonic across a source that restarts counting.
            let core_nano_seconds = previous.map_or(counted, |p| p.core_nano_seconds.max(counted));
            return Counter {
                at,
                core_nano_seconds,
            };
        }
        let (from, base) = match previous {
            Some(previous) => (Some(previous.at), previous.core_nano_seconds),
            None => (since, 0),
        };
        let elapsed = from
            .map(|from| at.duration_since(from).as_nanos().max(0).unsigned_abs())
            .unwrap_or(0);
        let added = u128::from(cpu.nano_cores) * elapsed / 1_000_000_000;
        Counter {
            at: previous.map_or(at, |p| p.at.max(at)),
            core_nano_seconds: base + added,
        }
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl CpuCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins what the cache knows of `pods` (identity, start times) with what the source measured.
    pub fn sample(
        &self,
        node_name: &str,
        node_start: Timestamp,
        pods: &[Arc<Pod>],
        usage: &[PodUsage],
    ) -> NodeSample {
        let by_uid: HashMap<&str, &PodUsage> = usage.iter().map(|u| (u.uid.as_str(), u)).collect();
        let mut counters = self.lock();
        let mut seen = HashMap::new();
        let mut node_rate = 0u64;
        let mut node_memory = 0u64;
        let mut node_counted = 0u128;
        let mut node_time: Option<Timestamp> = None;
        let mut samples = Vec::new();
        for pod in pods {
            let (Some(namespace), Some(name), Some(uid)) = (
                pod.metadata.namespace.clone(),
                pod.metadata.name.clone(),
                pod.metadata.uid.clone(),
            ) else {
                continue;
            };
            let status = pod.status.as_ref();
            let start_time = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            let statuses: &[ContainerStatus] = status
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or_default();
            let measured = by_uid.get(uid.as_str()).copied();
            let container_names: Vec<String> = pod
                .spec
                .as_ref()
                .map(|spec| spec.containers.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            let mut containers = Vec::new();
            for container in container_names {
                let started = statuses
                    .iter()
                    .find(|s| s.name == container)
                    .and_then(container_started);
                let usage = measured.and_then(|m| {
                    let found = m.containers.iter().find(|c| c.name == container)?;
                    let key = (uid.clone(), container.clone());
                    let counter = Counter::advance(
                        counters.series.get(&key).copied(),
                        m.time,
                        found.cpu,
                        started.or(start_time),
                    );
                    counters.series.insert(key.clone(), counter);
                    seen.insert(key, ());
                    Some(Usage {
                        time: m.time,
                        cpu_nano_cores: found.cpu.nano_cores,
                        cpu_core_nano_seconds: saturate(counter.core_nano_seconds),
                        memory_working_set_bytes: found.memory_working_set_bytes,
                    })
                });
                containers.push(ContainerSample {
                    name: container,
                    start_time: started,
                    usage,
                });
            }
            let usage = measured.map(|m| {
                let key = (uid.clone(), String::new());
                let counter = Counter::advance(counters.series.get(&key).copied(), m.time, m.cpu, start_time);
                counters.series.insert(key.clone(), counter);
                seen.insert(key, ());
                node_rate = node_rate.saturating_add(m.cpu.nano_cores);
                node_memory = node_memory.saturating_add(m.memory_working_set_bytes);
                node_counted += counter.core_nano_seconds;
                node_time = Some(node_time.map_or(m.time, |t| t.max(m.time)));
                Usage {
                    time: m.time,
                    cpu_nano_cores: m.cpu.nano_cores,
                    cpu_core_nano_seconds: saturate(counter.core_nano_seconds),
                    memory_working_set_bytes: m.memory_working_set_bytes,
                }
            });
            samples.push(PodSample {
                namespace,
                name,
                uid,
                start_time,
                containers,
                usage,
            });
        }
        counters.series.retain(|key, _| seen.contains_key(key));

        // The node's counter integrates the node's rate, so it keeps growing when pods come and go.
        let usage = node_time.map(|time| {
            let node = match counters.node {
                Some(previous) => Counter::advance(
                    Some(previous),
                    time,
                    CpuUsage {
                        nano_cores: node_rate,
                        core_nano_seconds: None,
                    },
                    None,
                ),
                None => Counter {
                    at: time,
                    core_nano_seconds: node_counted,
                },
            };
            counters.node = Some(node);
            Usage {
                time,
                cpu_nano_cores: node_rate,
                cpu_core_nano_seconds: saturate(node.core_nano_seconds),
                memory_working_set_bytes: node_memory,
            }
        });
        NodeSample {
            node_name: node_name.to_owned(),
            start_time: node_start,
            usage,
            pods: samples,
        }
    }
}

fn container_started(status: &ContainerStatus) -> Option<Timestamp> {
    let state = status.state.as_ref()?;
    if let Some(running) = &state.running {
        return running.started_at.as_ref().map(|t| t.0);
    }
    state.terminated.as_ref()?.started_at.as_ref().map(|t| t.0)
}

impl NodeSample {
    /// The Summary API document.
    pub fn summary(&self) -> Summary {
        Summary {
            node: NodeStats {
                node_name: self.node_name.clone(),
                start_time: api_time(self.start_time),
                cpu: self.usage.map(|u| u.cpu()),
                memory: self.usage.map(|u| u.memory()),
            },
            pods: self
                .pods
                .iter()
                .map(|pod| PodStats {
                    pod_ref: PodReference {
                        name: pod.name.clone(),
                        namespace: pod.namespace.clone(),
                        uid: pod.uid.clone(),
                    },
                    start_time: pod.start_time.map(api_time),
                    containers: pod
                        .containers
                        .iter()
                        .map(|c| ContainerStats {
                            name: c.name.clone(),
                            start_time: c.start_time.map(api_time),
                            cpu: c.usage.map(|u| u.cpu()),
                            memory: c.usage.map(|u| u.memory()),
                        })
                        .collect(),
                    cpu: pod.usage.map(|u| u.cpu()),
                    memory: pod.usage.map(|u| u.memory()),
                })
                .collect(),
        }
    }

    /// The `/metrics/resource` text, with the kubelet's metric names, help, label names and
    /// millisecond timestamps. `scrape_error` (and its stable name `resource_scrape_error`) is 1
    /// when the source could not be read.
    pub fn resource_metrics(&self, scrape_error: bool) -> String {
        let mut families: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut add = |family: &'static str, labels: &[(&str, &str)], value: f64, time: Timestamp| {
            families.entry(family).or_default().push(format!(
                "{family}{} {value} {}",
                labels_text(labels),
                time.as_millisecond()
            ));
        };
        for pod in &self.pods {
            for container in &pod.containers {
                let labels = [
                    ("container", container.name.as_str()),
                    ("namespace", pod.namespace.as_str()),
                    ("pod", pod.name.as_str()),
                ];
                if let Some(started) = container.start_time {
                    let seconds = started.as_second() as f64;
                    add("container_start_time_seconds", &labels, seconds, started);
                }
                if let Some(usage) = container.usage {
                    add(
                        "container_cpu_usage_seconds_total",
                        &labels,
                        core_seconds(&usage),
                        usage.time,
                    );
                    add(
                        "container_memory_working_set_bytes",
                        &labels,
                        usage.memory_working_set_bytes as f64,
                        usage.time,
                    );
                }
            }
            if let Some(usage) = pod.usage {
                let labels = [("namespace", pod.namespace.as_str()), ("pod", pod.name.as_str())];
                add(
                    "pod_cpu_usage_seconds_total",
                    &labels,
                    core_seconds(&usage),
                    usage.time,
                );
                add(
                    "pod_memory_working_set_bytes",
                    &labels,
                    usage.memory_working_set_bytes as f64,
                    usage.time,
                );
            }
        }
        if let Some(usage) = self.usage {
            add(
                "node_cpu_usage_seconds_total",
                &[],
                core_seconds(&usage),
                usage.time,
            );
            add(
                "node_memory_working_set_bytes",
                &[],
                usage.memory_working_set_bytes as f64,
                usage.time,
            );
        }

        let mut text = String::new();
        for (family, kind, stability, help) in FAMILIES {
            let _ = writeln!(text, "# HELP {family} [{stability}] {help}");
            let _ = writeln!(text, "# TYPE {family} {kind}");
            if let Some(samples) = families.get(family) {
                for sample in samples {
                    text.push_str(sample);
                    text.push('\n');
                }
            }
        }
        let error = u8::from(scrape_error);
        let _ = writeln!(text, "resource_scrape_error {error}");
        let _ = writeln!(
            text,
            "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
        );
        let _ = writeln!(text, "# TYPE scrape_error gauge");
        let _ = writeln!(text, "scrape_error {error}");
        text
    }
}

/// The families in the kubelet's order (alphabetical), `resource_scrape_error` last so its sample
/// follows its header.
const FAMILIES: [(&str, &str, &str, &str); 8] = [
    (
        "container_cpu_usage_seconds_total",
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the container in core-seconds",
    ),
    (
        "container_memory_working_set_bytes",
        "gauge",
        "STABLE",
        "Current working set of the container in bytes",
    ),
    (
        "container_start_time_seconds",
        "gauge",
        "STABLE",
        "Start time of the container since unix epoch in seconds",
    ),
    (
        "node_cpu_usage_seconds_total",
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the node in core-seconds",
    ),
    (
        "node_memory_working_set_bytes",
        "gauge",
        "STABLE",
        "Current working set of the node in bytes",
    ),
    (
        "pod_cpu_usage_seconds_total",
        "counter",
        "STABLE",
        "Cumulative cpu time consumed by the pod in core-seconds",
    ),
    (
        "pod_memory_working_set_bytes",
        "gauge",
        "STABLE",
        "Current working set of the pod in bytes",
    ),
    (
        "resource_scrape_error",
        "gauge",
        "STABLE",
        "1 if there was an error while getting container metrics, 0 otherwise",
    ),
];

fn core_seconds(usage: &Usage) -> f64 {
    usage.cpu_core_nano_seconds as f64 / 1e9
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Prometheus label-value escaping.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ContainerUsage;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod(name: &str, uid: &str) -> Arc<Pod> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": uid},
            "spec": {"nodeName": "eklet-subnet-a", "containers": [{"name": "web"}, {"name": "sidecar"}]},
            "status": {
                "phase": "Running",
                "startTime": "2026-03-01T10:00:00Z",
                "containerStatuses": [
                    {"name": "web", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0,
                     "state": {"running": {"startedAt": "2026-03-01T10:00:02Z"}}},
                    {"name": "sidecar", "image": "busybox", "imageID": "", "ready": false, "restartCount": 1,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                ]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(pod)
    }

    fn usage(uid: &str, time: &str, web_nano_cores: u64, web_memory: u64) -> PodUsage {
        PodUsage {
            uid: uid.into(),
            time: at(time),
            cpu: CpuUsage {
                nano_cores: web_nano_cores,
                core_nano_seconds: None,
            },
            memory_working_set_bytes: web_memory + 1000,
            containers: vec![ContainerUsage {
                name: "web".into(),
                cpu: CpuUsage {
                    nano_cores: web_nano_cores,
                    core_nano_seconds: None,
                },
                memory_working_set_bytes: web_memory,
            }],
        }
    }

    #[test]
    fn a_cpu_rate_becomes_a_counter_that_grows_by_rate_times_elapsed_time() {
        let counters = CpuCounters::default();
        let pods = [pod("web-1", "u1")];
        // Half a core since the container started 8 s before the first observation: 4 core-seconds.
        let first = counters.sample(
            "n",
            at("2026-03-01T09:00:00Z"),
            &pods,
            &[usage("u1", "2026-03-01T10:00:10Z", 500_000_000, 64 << 20)],
        );
        let web = |sample: &NodeSample| {
            sample.pods[0].containers[0]
                .usage
                .map(|u| u.cpu_core_nano_seconds)
        };
        assert_eq!(web(&first), Some(4_000_000_000));
        // Then two cores for 10 s: +20 core-seconds.
        let second = counters.sample(
            "n",
            at("2026-03-01T09:00:00Z"),
            &pods,
            &[usage("u1", "2026-03-01T10:00:20Z", 2_000_000_000, 64 << 20)],
        );
        assert_eq!(web(&second), Some(24_000_000_000));
        let node = |sample: &NodeSample| sample.usage.map(|u| u.cpu_core_nano_seconds);
        assert!(
            node(&second) > node(&first),
            "{:?} then {:?}",
            first.usage,
            second.usage
        );
    }

    #[test]
    fn the_node_counter_never_goes_back_when_a_pod_goes_away() {
        let counters = CpuCounters::default();
        let both = [pod("web-1", "u1"), pod("web-2", "u2")];
        let start = at("2026-03-01T09:00:00Z");
        let t1 = counters.sample(
            "n",
            start,
            &both,
            &[
                usage("u1", "2026-03-01T10:00:10Z", 1_000_000_000, 1),
                usage("u2", "2026-03-01T10:00:10Z", 1_000_000_000, 1),
            ],
        );
        let t2 = counters.sample(
            "n",
            start,
            &both[..1],
            &[usage("u1", "2026-03-01T10:00:20Z", 1_000_000_000, 1)],
        );
        let node = |s: &NodeSample| s.usage.map(|u| u.cpu_core_nano_seconds).unwrap_or(0);
        assert!(node(&t2) >= node(&t1), "{} then {}", node(&t1), node(&t2));
    }

    #[test]
    fn the_summary_has_the_kubelets_field_names_and_pods_without_usage_still_appear() {
        let counters = CpuCounters::default();
        let sample = counters.sample(
            "eklet-subnet-a",
            at("2026-03-01T09:00:00Z"),
            &[pod("web-1", "u1"), pod("web-2", "u2")],
            &[usage("u1", "2026-03-01T10:00:10Z", 250_000_000, 64 << 20)],
        );
        let json = serde_json::to_value(sample.summary()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["node"]["nodeName"], "eklet-subnet-a");
        assert_eq!(json["node"]["startTime"], "2026-03-01T09:00:00Z");
        assert_eq!(json["node"]["cpu"]["usageNanoCores"], 250_000_000);
        let first = &json["pods"][0];
        assert_eq!(
            first["podRef"],
            serde_json::json!({"name": "web-1", "namespace": "shop", "uid": "u1"})
        );
        assert_eq!(first["startTime"], "2026-03-01T10:00:00Z");
        assert_eq!(first["containers"][0]["name"], "web");
        assert_eq!(first["containers"][0]["startTime"], "2026-03-01T10:00:02Z");
        assert_eq!(first["containers"][0]["memory"]["workingSetBytes"], 64 << 20);
        assert_eq!(first["memory"]["workingSetBytes"], (64 << 20) + 1000);
        let second = &json["pods"][1];
        assert_eq!(second["podRef"]["name"], "web-2");
        assert!(second.get("cpu").is_none() && second["containers"][0].get("cpu").is_none());
    }

    #[test]
    fn resource_metrics_carry_the_series_and_labels_metrics_server_reads() {
        let counters = CpuCounters::default();
        let sample = counters.sample(
            "eklet-subnet-a",
            at("2026-03-01T09:00:00Z"),
            &[pod("web-1", "u1")],
            &[usage("u1", "2026-03-01T10:00:10Z", 500_000_000, 1024)],
        );
        let text = sample.resource_metrics(false);
        let ms = at("2026-03-01T10:00:10Z").as_millisecond();
        for line in [
            format!(
                "container_cpu_usage_seconds_total{{container=\"web\",namespace=\"shop\",pod=\"web-1\"}} 4 {ms}"
            ),
            format!(
                "container_memory_working_set_bytes{{container=\"web\",namespace=\"shop\",pod=\"web-1\"}} 1024 {ms}"
            ),
            format!("pod_cpu_usage_seconds_total{{namespace=\"shop\",pod=\"web-1\"}} 5 {ms}"),
            format!("pod_memory_working_set_bytes{{namespace=\"shop\",pod=\"web-1\"}} 2024 {ms}"),
            format!("node_cpu_usage_seconds_total 5 {ms}"),
            format!("node_memory_working_set_bytes 2024 {ms}"),
            "resource_scrape_error 0".to_owned(),
            "scrape_error 0".to_owned(),
            "# TYPE container_cpu_usage_seconds_total counter".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let started = at("2026-03-01T10:00:02Z");
        let start_line = format!(
            "container_start_time_seconds{{container=\"web\",namespace=\"shop\",pod=\"web-1\"}} {} {}",
            started.as_second(),
            started.as_millisecond()
        );
        assert!(text.lines().any(|l| l == start_line), "{text}");
        // The crash-looping sidecar has no start time and no usage: no series at all.
        assert!(!text.contains("container=\"sidecar\""), "{text}");
    }

    #[test]
    fn a_failed_scrape_says_so_and_label_values_are_escaped() {
        let sample = NodeSample {
            node_name: "n".into(),
            start_time: at("2026-03-01T09:00:00Z"),
            usage: None,
            pods: vec![PodSample {
                namespace: "ns".into(),
                name: "we\"ird\\".into(),
                uid: "u".into(),
                start_time: None,
                containers: vec![ContainerSample {
                    name: "c".into(),
                    start_time: Some(at("2026-03-01T10:00:00Z")),
                    usage: None,
                }],
                usage: None,
            }],
        };
        let text = sample.resource_metrics(true);
        assert!(text.lines().any(|l| l == "scrape_error 1"), "{text}");
        assert!(text.lines().any(|l| l == "resource_scrape_error 1"), "{text}");
        assert!(text.contains(r#"pod="we\"ird\\""#), "{text}");
    }
}
