//! What the leader's tasks share: the clients, the provider, the configuration, the virtual
//! nodes' views and pod caches, the sandbox [`Registry`], events and metrics. The pod reconciles
//! ([`crate::pods`]), the status loop and sweep ([`crate::sandboxes`]) and the kubelet API
//! ([`crate::kubelet`]) all read it; it depends on none of them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::sync::{mpsc, watch};

use crate::{
    config::{ApiServerAddress, Config},
    events::Events,
    metrics::{Metrics, PodLabels},
    node::NodeViews,
    provider::{DESCRIBE_BATCH, Provider},
    registry::{Record, Registry},
};

/// Everything the pod reconciles share.
pub struct Context<P> {
    pub client: Client,
    pub provider: P,
    pub config: Arc<Config>,
    pub apiserver: ApiServerAddress,
    pub nodes: Arc<NodeViews>,
    pub registry: Registry,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// The pod cache of each virtual node.
    pub stores: Vec<(String, Store<Pod>)>,
    /// Wakes a pod's reconcile, per virtual node.
    pub triggers: HashMap<String, mpsc::UnboundedSender<ObjectRef<Pod>>>,
    /// Flips to true once the caches synced and existing sandboxes were adopted; reconciles
    /// wait for it, so a pod whose sandbox exists is never given a second one.
    pub adopted: watch::Sender<bool>,
    /// Asks the orphan sweep to run now rather than at its next tick (after a pod watch relisted).
    pub sweep_now: Arc<tokio::sync::Notify>,
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
    /// The provider pushes sandbox changes ([`Provider::notifier`]) and is not polled.
    pub pushed: bool,
}

impl<P: Provider> Context<P> {
    /// Wakes the reconcile of `pod` on `node`.
    pub fn wake(&self, node: &str, pod: ObjectRef<Pod>) {
        if let Some(sender) = self.triggers.get(node) {
            let _ = sender.send(pod);
        }
    }

    /// Every cached pod by UID.
    pub fn cached_pods(&self) -> HashMap<String, Arc<Pod>> {
        self.stores
            .iter()
            .flat_map(|(_, store)| store.state())
            .filter_map(|pod| pod.uid().map(|uid| (uid, pod)))
            .collect()
    }

    pub fn count_pods_by_phase(&self) {
        for (node, store) in &self.stores {
            let mut counts: BTreeMap<String, i64> = ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
                .iter()
                .map(|p| ((*p).to_owned(), 0))
                .collect();
            for pod in store.state() {
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into());
                *counts.entry(phase).or_default() += 1;
            }
            for (phase, count) in counts {
                let labels = PodLabels {
                    node: node.clone(),
                    phase,
                };
                self.metrics.pods.get_or_create(&labels).set(count);
            }
        }
    }

    /// Starts tracking the sandbox of pod `uid`. A pushing provider is asked once for the
    /// sandbox's current state, since changes it pushed before now were ignored.
    pub async fn track(&self, uid: &str, record: Record) {
        let id = record.sandbox_id.clone();
        self.registry.insert(uid, record);
        if self.pushed {
            self.catch_up(vec![id]).await;
        }
    }

    /// Describes these tracked sandboxes once and wakes the pods whose sandbox changed.
    pub async fn catch_up(&self, ids: Vec<String>) {
        for batch in ids.chunks(DESCRIBE_BATCH) {
            match self.provider.describe(batch).await {
                Ok(sandboxes) => {
                    let (wake, latencies) = self.registry.observe(batch, sandboxes);
                    self.observed(wake, latencies);
                }
                Err(error) => tracing::warn!(%error, batch = batch.len(), "describing sandboxes failed"),
            }
        }
    }

    /// Records what an observation found: the create→Running latencies, and the pods to wake.
    pub fn observed(&self, wake: Vec<(String, ObjectRef<Pod>)>, latencies: Vec<std::time::Duration>) {
        for latency in latencies {
            self.metrics.create_to_running.observe(latency.as_secs_f64());
        }
        for (node, pod) in wake {
            self.wake(&node, pod);
        }
    }

    pub(crate) fn node_ip(&self) -> String {
        self.config.node_ip.to_string()
    }
}
