//! Readiness and liveness of cloud pods, end to end: a pod's probes go to the EKS API with the
//! instance (eklet's tencent provider), cloudsim runs them against the pod's responders as a
//! kubelet would, the sandbox agent reports readiness (the API has no field for it), eklet reads it
//! at every status sync, and the pod's Ready condition in Kubernetes follows. A test makes a probe
//! fail by setting the HTTP status of the pod's responder through cloudsim's handle. Probes run
//! every second; the tests wait on what Kubernetes shows, never on a fixed time. Where the test bed
//! can make the cloud's VPC namespace, the sandboxes have VPC addresses and the readiness test also
//! follows the pod in its Service's EndpointSlice (EndpointSlices refuse the loopback addresses of
//! the fallback).

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use support::eklet::*;
use tke_cloudsim::Handle;
use tke_testbed::{ControlPlane, wait};

/// The port the pods' containers declare (each sandbox has its own address).
const WEB_PORT: u16 = 8080;

/// A virtual node of the tencent provider over a cloudsim whose instances have agents (in a VPC
/// namespace of the test's own where one can be made), and a namespace of its own.
struct CloudNode {
    cp: std::sync::Arc<ControlPlane>,
    cloud: Handle,
    pods: Api<Pod>,
    id: Identity,
    _eklet: Eklet,
    /// Dropped after the cloudsim: its VPC outlives the agents in it.
    agents: Agents,
}

impl CloudNode {
    async fn start(label: &str) -> anyhow::Result<CloudNode> {
        tke_testbed::install_crypto();
        let cp = ControlPlane::shared().await?;
        let mut agents = None;
        let cloud = start_cloudsim(|config| agents = Some(enable_agents(&cp, config))).await?;
        let agents = agents.ok_or_else(|| anyhow::anyhow!("cloudsim was not configured"))??;
        let ns = cp.namespace(label).await?;
        let id = Identity::unique();
        let eklet = Eklet::start(&cp, &cloud, &id, &[agents.eklet_arg.as_str()]).await?;
        let pods = Api::namespaced(cp.client().await?, &ns);
        Ok(CloudNode {
            cp,
            cloud,
            pods,
            id,
            _eklet: eklet,
            agents,
        })
    }

    /// Creates pod `name` with one container `web` serving [`WEB_PORT`] and `probes` (the
    /// container's probe fields); returns the id of its instance once it runs.
    async fn create(&self, name: &str, probes: serde_json::Value) -> anyhow::Result<String> {
        let mut web = json!({
            "name": "web",
            "image": "nginx:1.27",
            "env": [{"name": tke_cloudsim::PORTS_ENV, "value": WEB_PORT.to_string()}],
            "ports": [{"containerPort": WEB_PORT}],
        });
        for (field, probe) in probes.as_object().into_iter().flatten() {
            web[field] = probe.clone();
        }
        let mut spec = cloud_pod_spec(&self.id, json!([web]));
        spec["automountServiceAccountToken"] = json!(false);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": spec,
        }))?;
        self.pods.create(&PostParams::default(), &pod).await?;
        wait::until(PATIENCE, &format!("pod {name} Running"), || async {
            self.pods.get(name).await.is_ok_and(|p| is_running(&p))
        })
        .await?;
        let uid = self.pods.get(name).await?.metadata.uid.unwrap_or_default();
        let instance = instance_for(&self.cloud, &self.id.cluster_id, &uid)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no instance for pod {name}"))?;
        Ok(instance.eks_ci_id)
    }

    /// Waits until pod `name`'s Ready condition and its container's `ready` are both `want`.
    async fn until_ready(&self, name: &str, want: bool) -> anyhow::Result<()> {
        let what = format!("pod {name} Ready={want}");
        let begun = std::time::Instant::now();
        let waited = wait::until(PATIENCE, &what, || async {
            self.pods
                .get(name)
                .await
                .is_ok_and(|pod| ready_condition(&pod) == Some(want) && container_ready(&pod) == Some(want))
        })
        .await;
        if waited.is_err() {
            let status = self.pods.get(name).await.ok().and_then(|p| p.status);
            anyhow::bail!("{what} never came; the pod's status: {status:?}");
        }
        // Reported, not asserted: probe period × threshold + status sync + the watch.
        eprintln!("{what} after {:.1}s", begun.elapsed().as_secs_f64());
        Ok(())
    }

    /// A Service `name` over the pods labelled `app=name`, on [`WEB_PORT`].
    async fn expose(&self, name: &str) -> anyhow::Result<()> {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": WEB_PORT}]},
        }))?;
        let namespace = self.pods.namespace().unwrap_or_default();
        Api::<Service>::namespaced(self.cp.client().await?, namespace)
            .create(&PostParams::default(), &service)
            .await?;
        Ok(())
    }

    /// Waits until the ready addresses of Service `name`'s EndpointSlices are `want`.
    async fn until_endpoints(&self, name: &str, want: &BTreeSet<String>) -> anyhow::Result<()> {
        let namespace = self.pods.namespace().unwrap_or_default();
        let slices: Api<EndpointSlice> = Api::namespaced(self.cp.client().await?, namespace);
        let selector = format!("kubernetes.io/service-name={name}");
        let ready = || async {
            let Ok(list) = slices.list(&ListParams::default().labels(&selector)).await else {
                return BTreeSet::new();
            };
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.iter().cloned())
                .collect::<BTreeSet<String>>()
        };
        let what = format!("Service {name}'s ready endpoints {want:?}");
        let begun = std::time::Instant::now();
        if wait::until(PATIENCE, &what, || async { ready().await == *want })
            .await
            .is_err()
        {
            anyhow::bail!("{what} never came: {:?}", ready().await);
        }
        eprintln!("{what} after {:.1}s", begun.elapsed().as_secs_f64());
        Ok(())
    }

    async fn finish(self) {
        remove_node(&self.cp.client().await.expect("a client"), &self.id.node()).await;
    }
}

/// `status.conditions[Ready]`, as `kubectl get pod` shows it in READY and an EndpointSlice uses.
fn ready_condition(pod: &Pod) -> Option<bool> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(ready.status == "True")
}

fn container_ready(pod: &Pod) -> Option<bool> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    Some(statuses.iter().find(|s| s.name == "web")?.ready)
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s.iter().find(|s| s.name == "web"))
        .map_or(0, |s| s.restart_count)
}

/// An httpGet probe on [`WEB_PORT`] every second that fails after two failures in a row.
fn http_probe(path: &str) -> serde_json::Value {
    json!({
        "httpGet": {"path": path, "port": WEB_PORT},
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "failureThreshold": 2,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_probe_makes_a_cloud_pod_not_ready_until_it_passes_again() -> anyhow::Result<()> {
    let node = CloudNode::start("readiness").await?;
    let instance = node
        .create("web", json!({"readinessProbe": http_probe("/healthz")}))
        .await?;
    node.until_ready("web", true).await?;
    // EndpointSlices take VPC addresses, not the loopback ones of the fallback.
    let endpoints = node.agents.vpc.is_some();
    let ip: BTreeSet<String> = pod_ip(&node.pods.get("web").await?).into_iter().collect();
    if endpoints {
        node.expose("web").await?;
        node.until_endpoints("web", &ip).await?;
    } else {
        eprintln!("no VPC namespace on this machine: the EndpointSlice is not checked");
    }

    node.cloud
        .set_responder_status(&instance, WEB_PORT, Some("/healthz"), 500)?;
    node.until_ready("web", false).await?;
    let pod = node.pods.get("web").await?;
    assert!(
        is_running(&pod),
        "a failing readiness probe does not stop the pod"
    );
    assert_eq!(restart_count(&pod), 0, "nor restart it");
    if endpoints {
        node.until_endpoints("web", &BTreeSet::new()).await?;
    }

    node.cloud
        .set_responder_status(&instance, WEB_PORT, Some("/healthz"), 200)?;
    node.until_ready("web", true).await?;
    if endpoints {
        node.until_endpoints("web", &ip).await?;
    }
    node.finish().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_cloud_pods_container() -> anyhow::Result<()> {
    let node = CloudNode::start("liveness").await?;
    let instance = node
        .create("alive", json!({"livenessProbe": http_probe("/healthz")}))
        .await?;
    node.until_ready("alive", true).await?;
    assert_eq!(restart_count(&node.pods.get("alive").await?), 0);

    node.cloud
        .set_responder_status(&instance, WEB_PORT, Some("/healthz"), 500)?;
    wait::until(PATIENCE, "the container restarted", || async {
        node.pods.get("alive").await.is_ok_and(|p| restart_count(&p) >= 1)
    })
    .await?;

    // Healthy again: it runs, and stays, ready.
    node.cloud
        .set_responder_status(&instance, WEB_PORT, Some("/healthz"), 200)?;
    node.until_ready("alive", true).await?;
    let pod = node.pods.get("alive").await?;
    assert!(is_running(&pod));
    assert!(restart_count(&pod) >= 1);
    node.finish().await;
    Ok(())
}
