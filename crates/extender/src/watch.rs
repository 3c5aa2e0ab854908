//! Feeding the view from the API server: one watch per kind the decision reads (nodes, the
//! scheduler's pods, the `eks-config` ConfigMap, claims and volumes), each event applied under
//! the view's lock. Watches retry with backoff forever; until every one has listed once, the
//! extender answers 503 rather than decide from a partial view.

use std::{fmt::Debug, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tke_policy::switch::EKS_CONFIG_NAME;
use tracing::warn;

use crate::{
    server::Extender,
    view::{ClusterView, WatchedPod},
};

/// Starts every watch on the runtime; they run until the process ends.
pub fn spawn_all(
    client: &Client,
    extender: &Arc<Extender>,
    scheduler_name: &str,
    eks_config_namespace: &str,
) {
    let all = watcher::Config::default();
    spawn(
        Api::<Node>::all(client.clone()),
        all.clone(),
        extender,
        "nodes",
        ClusterView::on_node,
    );
    // Only this scheduler's pods: a workload's pods share their template's schedulerName, so
    // every pod a LOCAL_REPLICAS count needs is among them, and the cache stays small.
    // Decoded as `WatchedPod`: only the fields the view keeps.
    spawn(
        Api::<WatchedPod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.schedulerName={scheduler_name}")),
        extender,
        "pods",
        ClusterView::on_watched_pod,
    );
    spawn(
        Api::<ConfigMap>::namespaced(client.clone(), eks_config_namespace),
        watcher::Config::default().fields(&format!("metadata.name={EKS_CONFIG_NAME}")),
        extender,
        "the eks-config ConfigMap",
        ClusterView::on_config_map,
    );
    spawn(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        all.clone(),
        extender,
        "persistent volume claims",
        ClusterView::on_claim,
    );
    spawn(
        Api::<PersistentVolume>::all(client.clone()),
        all,
        extender,
        "persistent volumes",
        ClusterView::on_volume,
    );
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    extender: &Arc<Extender>,
    what: &'static str,
    apply: fn(&mut ClusterView, watcher::Event<K>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let extender = extender.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => extender.update(|view| apply(view, event)),
                Err(error) => warn!(%error, "watching {what} failed; retrying"),
            }
        }
        warn!("the watch on {what} ended");
    });
}
