//! Starting `tke-resilience admission` for end-to-end tests, reading its metrics, and the cluster
//! fixtures its tests share: the global switch ConfigMap, a virtual node (eklet on cloudsim),
//! Deployments (the seed's walkthrough among them) and what their pods show. Metrics and events
//! are read with eklet's helpers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use tke_policy::virtual_node;
use tke_testbed::{ControlPlane, Proc, components, wait};

use super::eklet::{Eklet, Identity, start_cloudsim};
pub use super::eklet::{events_about, http_get, is_running, sample, wait_for_event};

pub use super::PATIENCE;

/// A running `tke-resilience admission`.
pub struct Admission {
    proc: Proc,
    pub metrics: SocketAddr,
}

impl Admission {
    /// Starts the controller against `cp` and waits until it leads and has read the global switch.
    pub async fn start(cp: &ControlPlane, extra_args: &[&str]) -> anyhow::Result<Admission> {
        let mut admission = Admission::spawn(cp, extra_args)?;
        admission.wait_ready().await?;
        Ok(admission)
    }

    /// Starts the process without waiting for anything (a standby never becomes ready).
    pub fn spawn(cp: &ControlPlane, extra_args: &[&str]) -> anyhow::Result<Admission> {
        let launcher = components::Admission::new(&super::binary())?
            .name(format!("admission-{}", tke_testbed::random_suffix()))
            .args(extra_args.iter().copied())
            .env("RUST_LOG", "info,tke_admission=debug");
        Ok(Admission {
            proc: launcher.spawn(cp)?,
            metrics: launcher.metrics_addr(),
        })
    }

    /// Whether `/metrics` says this process holds the lease now.
    pub async fn is_leader(&self) -> bool {
        self.metrics_text()
            .await
            .ok()
            .and_then(|text| sample(&text, "eks_admission_leader"))
            == Some(1.0)
    }

    /// SIGKILL: no chance to release the lease.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Waits until it leads and has read the global switch, failing early if it exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let metrics = self.metrics;
        let ready = || async move {
            let Ok(text) = http_get(metrics, "/metrics").await else {
                return false;
            };
            let switch_read = ["true", "false", "undefined"].iter().any(|value| {
                sample(
                    &text,
                    &format!("eks_admission_global_switch{{value=\"{value}\"}}"),
                ) == Some(1.0)
            });
            sample(&text, "eks_admission_leader") == Some(1.0) && switch_read
        };
        components::wait_while_alive(
            std::slice::from_mut(&mut self.proc),
            PATIENCE,
            "admission to lead and read the global switch",
            ready,
        )
        .await?;
        Ok(())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        http_get(self.metrics, "/metrics").await
    }

    /// Waits until the controller shows `value` as the global switch in force.
    pub async fn wait_for_global_switch(&self, value: &str) -> anyhow::Result<()> {
        let series = format!("eks_admission_global_switch{{value=\"{value}\"}}");
        wait::until(
            PATIENCE,
            &format!("admission to read global switch {value}"),
            || async {
                self.metrics_text()
                    .await
                    .ok()
                    .and_then(|text| sample(&text, &series))
                    == Some(1.0)
            },
        )
        .await?;
        Ok(())
    }

    /// How many reconciles the controller has finished.
    pub async fn reconciles(&self) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        sample(&text, "eks_admission_reconcile_duration_seconds_count")
            .context("no reconcile count in /metrics")
    }

    /// The cumulative buckets of histogram `name` (upper bound, count), `+Inf` last.
    pub async fn histogram(&self, name: &str) -> anyhow::Result<Vec<(f64, f64)>> {
        let text = self.metrics_text().await?;
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = text
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (bound, count) = rest.split_once("\"} ")?;
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                };
                Some((bound, count.trim().parse().ok()?))
            })
            .collect();
        Ok(buckets)
    }

    /// The controller's log so far, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

/// The `q` quantile of cumulative histogram buckets, interpolated within a bucket as
/// Prometheus' `histogram_quantile` does; a quantile in the `+Inf` bucket is the last finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    None
}

/// A virtual node for the test's cluster: cloudsim in this test's runtime and eklet on it.
pub struct VirtualNode {
    pub name: String,
    pub eklet: Eklet,
    pub cloud: tke_cloudsim::Handle,
}

impl VirtualNode {
    pub async fn start(cp: &ControlPlane) -> anyhow::Result<VirtualNode> {
        VirtualNode::on(cp, start_cloudsim(|_| {}).await?).await
    }

    /// eklet with an identity of its own on `cloud`.
    pub async fn on(cp: &ControlPlane, cloud: tke_cloudsim::Handle) -> anyhow::Result<VirtualNode> {
        let identity = Identity::unique();
        let eklet = Eklet::start(cp, &cloud, &identity, &[]).await?;
        Ok(VirtualNode {
            name: identity.node(),
            eklet,
            cloud,
        })
    }
}

/// Creates or replaces ConfigMap kube-system/eks-config with `AUTO_SCALE_EKS: value`.
pub async fn set_global_switch(client: &Client, value: &str) -> anyhow::Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("eks-config".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("AUTO_SCALE_EKS".to_owned(), value.to_owned())])),
        ..ConfigMap::default()
    };
    let params = PatchParams::apply("tke-resilience-tests").force();
    config_maps
        .patch("eks-config", &params, &Patch::Apply(&config_map))
        .await?;
    Ok(())
}

/// The events with `reason`, with how often each was seen (a repeated event counts each time).
pub fn occurrences(events: &[Event], reason: &str) -> i32 {
    events
        .iter()
        .filter(|event| event.reason.as_deref() == Some(reason))
        .map(|event| {
            let series = event.series.as_ref().and_then(|series| series.count);
            series.or(event.count).unwrap_or(1).max(1)
        })
        .sum()
}

/// How many burst tolerations the pod carries.
pub fn burst_tolerations(pod: &Pod) -> usize {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.tolerations.as_ref())
        .map_or(0, |tolerations| {
            tolerations
                .iter()
                .filter(|toleration| toleration.key.as_deref() == Some(virtual_node::TAINT_KEY))
                .count()
        })
}

/// The node the pod is bound to.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the scheduler has marked the pod Unschedulable.
pub fn is_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// A Deployment of `replicas` small nginx pods labelled `app: name`, with pod-template
/// annotations and extra container fields.
pub fn deployment(
    name: &str,
    replicas: i32,
    annotations: &[(&str, &str)],
    container: serde_json::Value,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    let mut container_spec = json!({
        "name": "web",
        "image": "nginx:1.27",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    });
    if let (Some(spec), Some(extra)) = (container_spec.as_object_mut(), container.as_object()) {
        spec.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [container_spec], "terminationGracePeriodSeconds": 0},
            },
        },
    }))?)
}

/// The port the walkthrough's containers serve HTTP on.
pub const WALKTHROUGH_PORT: u16 = 8080;

/// The seed's walkthrough: its nginx-deployment (`AUTO_SCALE_EKS: "true"`, `LOCAL_REPLICAS: "1"`,
/// `schedulerName: tke-scheduler`), labelled `app: name`, with the test image in place of nginx:
/// busybox's httpd serves `/www` on [`WALKTHROUGH_PORT`] once the shell `page` has written
/// `/www/index.html`. `container` and `pod` add fields to the container and to the pod spec.
pub fn walkthrough(
    name: &str,
    replicas: i32,
    page: &str,
    container: serde_json::Value,
    pod: serde_json::Value,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let mut container_spec = json!({
        "name": "nginx",
        "image": tke_testbed::images::BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", format!(
            "mkdir -p /www && {page} && exec httpd -f -p {WALKTHROUGH_PORT} -h /www"
        )],
        "ports": [{"containerPort": WALKTHROUGH_PORT}],
    });
    if let (Some(spec), Some(extra)) = (container_spec.as_object_mut(), container.as_object()) {
        spec.extend(extra.clone());
    }
    let mut pod_spec = json!({
        "schedulerName": super::extender::SCHEDULER_NAME,
        "containers": [container_spec],
    });
    if let (Some(spec), Some(extra)) = (pod_spec.as_object_mut(), pod.as_object()) {
        spec.extend(extra.clone());
    }
    let labels = json!({"app": name});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"AUTO_SCALE_EKS": "true", "LOCAL_REPLICAS": "1"},
                },
                "spec": pod_spec,
            },
        },
    }))?)
}

/// Sets the Deployment `name`'s replicas (a merge patch).
pub async fn scale(client: &Client, namespace: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// Watches the pods labelled `app=name` until `done` holds for them.
pub async fn wait_for_pods(
    client: &Client,
    namespace: &str,
    app: &str,
    what: &str,
    done: impl FnMut(&[Arc<Pod>]) -> bool,
) -> anyhow::Result<Vec<Arc<Pod>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().labels(&format!("app={app}"));
    Ok(wait::for_objects(pods, config, PATIENCE, what, done).await?)
}
