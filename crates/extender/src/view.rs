//! The extender's view of the cluster: which nodes are virtual, which pods each workload has
//! where, the global switch, the volumes eligibility needs, and the ledger of pods decided
//! "local" that the pod cache does not show bound yet. Everything sits behind one lock so that a
//! decision counts a pod exactly once, either from the cache or from the ledger, never from both
//! and never from neither.
//!
//! kube-scheduler calls the filter for one pod at a time but binds asynchronously, so the watch
//! lags behind its decisions by the bind latency. Without the ledger, a Deployment scaled from 0
//! to 100 would see "0 local" for many pods in a row and overshoot `LOCAL_REPLICAS`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, PodStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
};
use kube::runtime::watcher::Event;
use tke_policy::{
    ClaimStatus, SwitchSetting, WorkloadRef, controlling_owner, counts_as_local, is_virtual_node,
};
use tokio::time::Instant;

/// The objects of one kind by key, as the last complete list plus the watch events since; a
/// re-list replaces them all at once when it completes, so a half-listed state is never seen.
#[derive(Debug)]
struct Mirror<V> {
    live: HashMap<String, V>,
    relisting: Option<HashMap<String, V>>,
    synced: bool,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Mirror {
            live: HashMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<V> Mirror<V> {
    /// Applies a watch event; `convert` gives the key and the value to keep (`None`: ignore it).
    /// Returns the keys whose live value changed.
    fn on<K>(&mut self, event: Event<K>, convert: impl Fn(K) -> Option<(String, V)>) -> Changed {
        match event {
            Event::Init => {
                self.relisting = Some(HashMap::new());
                Changed::Nothing
            }
            Event::InitApply(object) => {
                if let Some((key, value)) = convert(object) {
                    self.relisting.get_or_insert_with(HashMap::new).insert(key, value);
                }
                Changed::Nothing
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.live = listed;
                }
                self.synced = true;
                Changed::Everything
            }
            Event::Apply(object) => match convert(object) {
                Some((key, value)) => {
                    self.live.insert(key.clone(), value);
                    Changed::Key(key)
                }
                None => Changed::Nothing,
            },
            Event::Delete(object) => match convert(object) {
                Some((key, _)) => {
                    self.live.remove(&key);
                    Changed::Key(key)
                }
                None => Changed::Nothing,
            },
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.live.get(key)
    }
}

enum Changed {
    Nothing,
    Key(String),
    Everything,
}

/// A node, as far as placement cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Local,
    Virtual,
}

/// A pod decided local that the cache does not show bound yet.
#[derive(Debug, Clone)]
struct PendingLocal {
    owner_uid: String,
    decided_at: Instant,
}

/// Which caches have completed their first list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub nodes: bool,
    pub pods: bool,
    pub config_map: bool,
    pub claims: bool,
    pub volumes: bool,
}

impl Synced {
    pub fn all(&self) -> bool {
        self.nodes && self.pods && self.config_map && self.claims && self.volumes
    }

    /// The caches still missing, e.g. `pods, nodes`.
    pub fn missing(&self) -> String {
        let names = [
            (self.nodes, "nodes"),
            (self.pods, "pods"),
            (self.config_map, "the eks-config ConfigMap"),
            (self.claims, "persistent volume claims"),
            (self.volumes, "persistent volumes"),
        ];
        names
            .iter()
            .filter(|(done, _)| !done)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The extender's view of the cluster.
#[derive(Debug)]
pub struct ClusterView {
    eks_config_namespace: String,
    pending_ttl: Duration,
    nodes: Mirror<NodeKind>,
    /// Pods by UID, stripped to what counting reads.
    pods: Mirror<Pod>,
    /// Pod UIDs by controlling-owner UID.
    pods_by_owner: HashMap<String, HashSet<String>>,
    config_map: Mirror<ConfigMap>,
    claims: Mirror<PersistentVolumeClaim>,
    volumes: Mirror<Arc<PersistentVolume>>,
    /// Pods decided local and not yet seen bound, by pod UID.
    pending: HashMap<String, PendingLocal>,
}

impl ClusterView {
    /// An empty view. `pending_ttl` bounds how long a local decision counts while its binding
    /// is not seen, for bindings that never happen (a failed Reserve or PreBind, for example).
    pub fn new(eks_config_namespace: &str, pending_ttl: Duration) -> ClusterView {
        ClusterView {
            eks_config_namespace: eks_config_namespace.to_owned(),
            pending_ttl,
            nodes: Mirror::default(),
            pods: Mirror::default(),
            pods_by_owner: HashMap::new(),
            config_map: Mirror::default(),
            claims: Mirror::default(),
            volumes: Mirror::default(),
            pending: HashMap::new(),
        }
    }

    pub fn synced(&self) -> Synced {
        Synced {
            nodes: self.nodes.synced,
            pods: self.pods.synced,
            config_map: self.config_map.synced,
            claims: self.claims.synced,
            volumes: self.volumes.synced,
        }
    }

    pub fn on_node(&mut self, event: Event<Node>) {
        self.nodes.on(event, |node| {
            let kind = if is_virtual_node(&node) {
                NodeKind::Virtual
            } else {
                NodeKind::Local
            };
            Some((node.metadata.name?, kind))
        });
    }

    pub fn on_pod(&mut self, event: Event<Pod>) {
        let previous_owner = match &event {
            Event::Apply(pod) | Event::Delete(pod) => pod
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| self.pods.get(uid))
                .and_then(controlling_owner)
                .map(|owner| owner.uid),
            _ => None,
        };
        match self
            .pods
            .on(event, |pod| Some((pod.metadata.uid.clone()?, slim(pod))))
        {
            Changed::Nothing => {}
            Changed::Key(uid) => {
                if let Some(owner_uid) = previous_owner
                    && let Some(pods) = self.pods_by_owner.get_mut(&owner_uid)
                {
                    pods.remove(&uid);
                    if pods.is_empty() {
                        self.pods_by_owner.remove(&owner_uid);
                    }
                }
                if let Some(owner) = self.pods.get(&uid).and_then(controlling_owner) {
                    self.pods_by_owner
                        .entry(owner.uid)
                        .or_default()
                        .insert(uid.clone());
                }
                // After a single event, a pod missing from the cache has just been deleted.
                self.settle_pending(&uid, true);
            }
            Changed::Everything => {
                self.pods_by_owner.clear();
                for (uid, pod) in &self.pods.live {
                    if let Some(owner) = controlling_owner(pod) {
                        self.pods_by_owner
                            .entry(owner.uid)
                            .or_default()
                            .insert(uid.clone());
                    }
                }
                // After a re-list, a missing pod may also be one created after the list was
                // taken, so only its deletion event or the TTL clears it.
                let pending: Vec<String> = self.pending.keys().cloned().collect();
                for uid in pending {
                    self.settle_pending(&uid, false);
                }
            }
        }
    }

    pub fn on_config_map(&mut self, event: Event<ConfigMap>) {
        self.config_map.on(event, |config_map| {
            Some((config_map.metadata.name.clone()?, config_map))
        });
    }

    pub fn on_claim(&mut self, event: Event<PersistentVolumeClaim>) {
        self.claims.on(event, |claim| {
            let key = claim_key(
                claim.metadata.namespace.as_deref()?,
                claim.metadata.name.as_deref()?,
            );
            Some((key, claim))
        });
    }

    pub fn on_volume(&mut self, event: Event<PersistentVolume>) {
        self.volumes.on(event, |volume| {
            Some((volume.metadata.name.clone()?, Arc::new(volume)))
        });
    }

    /// What the node cache says about `name`; `None` for a node it has not seen (yet).
    pub fn node_kind(&self, name: &str) -> Option<NodeKind> {
        self.nodes.get(name).copied()
    }

    /// The global switch as the ConfigMap cache has it now.
    pub fn global_switch(&self) -> SwitchSetting {
        let config_map = self.config_map.get(tke_policy::switch::EKS_CONFIG_NAME);
        SwitchSetting::global(&self.eks_config_namespace, config_map)
    }

    /// A PersistentVolumeClaim's status for the eligibility rules.
    pub fn claim(&self, namespace: &str, name: &str) -> ClaimStatus {
        ClaimStatus::of(self.claims.get(&claim_key(namespace, name)), |volume| {
            self.volumes.get(volume).cloned()
        })
    }

    /// The workload's local pods: bound to a node that is not virtual (an unknown node counts as
    /// local, so a cache lag can only keep a pod from going local, never overshoot), plus the
    /// pods decided local whose binding the cache does not show yet. `except` (the pod being
    /// decided) is left out.
    pub fn local_count(&self, owner: &WorkloadRef, except: &str, now: Instant) -> u32 {
        let is_virtual = |node: &str| self.node_kind(node) == Some(NodeKind::Virtual);
        let bound = self.pods_by_owner.get(&owner.uid).map_or(0, |uids| {
            uids.iter()
                .filter(|uid| uid.as_str() != except)
                .filter_map(|uid| self.pods.get(uid))
                .filter(|pod| counts_as_local(pod, is_virtual))
                .count()
        });
        let pending = self
            .pending
            .iter()
            .filter(|(uid, entry)| {
                uid.as_str() != except && entry.owner_uid == owner.uid && !self.expired(entry, now)
            })
            .count();
        u32::try_from(bound + pending).unwrap_or(u32::MAX)
    }

    /// Records that the pod was sent to local nodes, until the cache shows it bound.
    pub fn pending_local(&mut self, pod_uid: &str, owner: &WorkloadRef, now: Instant) {
        self.pending
            .retain(|_, entry| now.saturating_duration_since(entry.decided_at) < self.pending_ttl);
        self.pending.insert(
            pod_uid.to_owned(),
            PendingLocal {
                owner_uid: owner.uid.clone(),
                decided_at: now,
            },
        );
    }

    /// Forgets a local decision (the pod was decided again, differently).
    pub fn forget_pending(&mut self, pod_uid: &str) {
        self.pending.remove(pod_uid);
    }

    /// Pods decided local and not yet seen bound.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    fn expired(&self, entry: &PendingLocal, now: Instant) -> bool {
        now.saturating_duration_since(entry.decided_at) >= self.pending_ttl
    }

    /// Drops the pod's ledger entry once the cache accounts for it: bound (it is counted from
    /// the cache now), deleted, terminating or finished. A pod the cache has not seen yet keeps
    /// its entry: our watch can show a new pod later than the scheduler's does.
    fn settle_pending(&mut self, uid: &str, absent_means_deleted: bool) {
        if !self.pending.contains_key(uid) {
            return;
        }
        let settled = match self.pods.get(uid) {
            Some(pod) => {
                tke_policy::workload::bound_node(pod).is_some()
                    || tke_policy::workload::is_terminating(pod)
                    || tke_policy::workload::is_finished(pod)
            }
            None => absent_means_deleted,
        };
        if settled {
            self.pending.remove(uid);
        }
    }
}

/// A Pod as the pod watch decodes it: only the fields [`slim`] keeps are built; the rest of the
/// JSON (containers, volumes, managedFields, conditions) is skipped without being allocated.
/// Every tke-scheduler pod is decoded a few times on its way to a node, so this is the
/// extender's main cost per pod besides the filter call.
#[derive(Clone, Debug, Default)]
pub struct WatchedPod(pub Pod);

impl k8s_openapi::Resource for WatchedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for WatchedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl<'de> serde::Deserialize<'de> for WatchedPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: Meta,
            spec: Option<Spec>,
            status: Option<Status>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            deletion_timestamp: Option<Time>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            node_name: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Status {
            phase: Option<String>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(WatchedPod(Pod {
            metadata: ObjectMeta {
                name: wire.metadata.name,
                namespace: wire.metadata.namespace,
                uid: wire.metadata.uid,
                owner_references: wire.metadata.owner_references,
                deletion_timestamp: wire.metadata.deletion_timestamp,
                ..ObjectMeta::default()
            },
            spec: wire.spec.map(|spec| PodSpec {
                node_name: spec.node_name,
                ..PodSpec::default()
            }),
            status: wire.status.map(|status| PodStatus {
                phase: status.phase,
                ..PodStatus::default()
            }),
        }))
    }
}

impl ClusterView {
    /// [`ClusterView::on_pod`] for the pod watch's [`WatchedPod`]s.
    pub fn on_watched_pod(&mut self, event: Event<WatchedPod>) {
        self.on_pod(match event {
            Event::Init => Event::Init,
            Event::InitApply(pod) => Event::InitApply(pod.0),
            Event::InitDone => Event::InitDone,
            Event::Apply(pod) => Event::Apply(pod.0),
            Event::Delete(pod) => Event::Delete(pod.0),
        });
    }
}

/// Keeps only what counting reads, so the cache stays small in large clusters.
fn slim(pod: Pod) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            uid: pod.metadata.uid,
            owner_references: pod.metadata.owner_references,
            deletion_timestamp: pod.metadata.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: pod.spec.map(|spec| PodSpec {
            node_name: spec.node_name,
            ..PodSpec::default()
        }),
        status: pod.status.map(|status| PodStatus {
            phase: status.phase,
            ..PodStatus::default()
        }),
    }
}

fn claim_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, is_virtual: bool) -> Node {
        let labels = if is_virtual {
            json!({"node.kubernetes.io/instance-type": "eklet"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node fixture")
    }

    #[test]
    fn a_relist_replaces_the_cache_only_once_it_is_complete() {
        let mut view = ClusterView::new("kube-system", Duration::from_secs(60));
        view.on_node(Event::Init);
        view.on_node(Event::InitApply(node("idc-1", false)));
        view.on_node(Event::InitDone);
        assert_eq!(view.node_kind("idc-1"), Some(NodeKind::Local));

        view.on_node(Event::Init);
        view.on_node(Event::InitApply(node("eklet-subnet-1", true)));
        assert_eq!(
            view.node_kind("idc-1"),
            Some(NodeKind::Local),
            "the old list holds until the new one is done"
        );
        assert_eq!(view.node_kind("eklet-subnet-1"), None);
        view.on_node(Event::InitDone);
        assert_eq!(view.node_kind("idc-1"), None, "gone from the new list");
        assert_eq!(view.node_kind("eklet-subnet-1"), Some(NodeKind::Virtual));
    }

    #[test]
    fn readiness_names_the_caches_still_listing() {
        let mut view = ClusterView::new("kube-system", Duration::from_secs(60));
        view.on_node(Event::InitDone);
        view.on_pod(Event::InitDone);
        let synced = view.synced();
        assert!(!synced.all());
        assert_eq!(
            synced.missing(),
            "the eks-config ConfigMap, persistent volume claims, persistent volumes"
        );
    }

    #[test]
    fn the_global_switch_comes_from_eks_config_in_the_configured_namespace() {
        let mut view = ClusterView::new("ops", Duration::from_secs(60));
        assert_eq!(view.global_switch().value, tke_policy::Switch::Undefined);
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "eks-config", "namespace": "ops"}, "data": {"AUTO_SCALE_EKS": " FALSE "},
        }))
        .expect("config map fixture");
        view.on_config_map(Event::Apply(config_map.clone()));
        assert_eq!(view.global_switch().value, tke_policy::Switch::Off);
        assert_eq!(view.global_switch().location(), "ConfigMap ops/eks-config");
        view.on_config_map(Event::Delete(config_map));
        assert_eq!(view.global_switch().value, tke_policy::Switch::Undefined);
    }

    #[test]
    fn the_watched_pod_keeps_what_slim_keeps_and_nothing_else() {
        let full = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x",
                                     "uid": "rs1", "controller": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}],
            },
            "spec": {"nodeName": "idc-1", "schedulerName": "tke-scheduler",
                     "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let watched: WatchedPod = serde_json::from_value(full.clone()).expect("a pod decodes");
        let expected = slim(serde_json::from_value(full).expect("a pod decodes"));
        assert_eq!(watched.0, expected);
        assert_eq!(
            watched.0.spec.and_then(|spec| spec.node_name).as_deref(),
            Some("idc-1")
        );
    }

    #[test]
    fn a_watched_pod_that_is_not_a_pod_is_an_error_not_a_panic() {
        assert!(serde_json::from_value::<WatchedPod>(json!({"metadata": {"name": 3}})).is_err());
        assert!(serde_json::from_value::<WatchedPod>(json!("pod")).is_err());
    }
}
