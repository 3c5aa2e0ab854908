//! The target pods of this cluster, kept by one watch (label `cluster-id`), so that eklet's
//! batched describes cost no API call at all and status follows the target within one watch
//! event.
//!
//! The cache is never wrong towards "gone": a pod leaves it only on a Delete event or when a
//! re-list after a reconnect does not contain it. While the target is unreachable the last
//! known state stays, which keeps IDC pods as they were instead of failing them. Pods this
//! process created are answered from their creation until the watch has seen them.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus as KubeContainerStatus, Pod};
use kube::ResourceExt;
use tokio::{sync::watch, time::Instant};

use super::translate::{self, ANNOTATION_COPIES, ANNOTATION_POD, LABEL_POD_UID, SCHEDULING_GATE, SourceRef};
use crate::{
    provider::{BilledSize, ContainerState, ContainerStatus, Sandbox, SandboxPhase},
    quantity,
};

/// How long a created pod is vouched for before the watch must have shown it.
const UNSEEN_GRACE: Duration = Duration::from_secs(120);

/// What eklet needs of one target pod.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPod {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The IDC pod's UID and namespace.
    pub source_uid: String,
    pub source_namespace: Option<String>,
    /// Still held by eklet's scheduling gate.
    pub gated: bool,
    pub deleting: bool,
    pub copies: Vec<SourceRef>,
    pub sandbox: Sandbox,
}

impl TargetPod {
    pub fn of(pod: &Pod) -> Option<TargetPod> {
        let namespace = pod.namespace()?;
        let name = pod.metadata.name.clone()?;
        let annotations = pod.annotations();
        let source_namespace = annotations
            .get(ANNOTATION_POD)
            .and_then(|p| p.split_once('/'))
            .map(|(ns, _)| ns.to_owned());
        Some(TargetPod {
            id: translate::sandbox_id(&namespace, &name),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            source_uid: pod.labels().get(LABEL_POD_UID).cloned().unwrap_or_default(),
            source_namespace,
            gated: pod
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_gates.as_ref())
                .is_some_and(|gates| gates.iter().any(|g| g.name == SCHEDULING_GATE)),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            copies: annotations
                .get(ANNOTATION_COPIES)
                .map(|text| translate::parse_copies(text).into_iter().collect())
                .unwrap_or_default(),
            sandbox: sandbox(pod),
            namespace,
            name,
        })
    }
}

/// The target pod's state as a provider-neutral observation.
pub fn sandbox(pod: &Pod) -> Sandbox {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => SandboxPhase::Running,
        Some("Succeeded") => SandboxPhase::Succeeded,
        Some("Failed") => SandboxPhase::Failed,
        Some("Unknown") => SandboxPhase::Unknown,
        _ => SandboxPhase::Pending,
    };
    let spec = pod.spec.as_ref();
    // Until the target schedules the pod there are no container statuses; say why it waits, so
    // `kubectl get pod` in the IDC shows it instead of a bare Pending.
    let unscheduled = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    });
    let waiting_for_target = |name: &str, image: &str| ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        state: ContainerState::Waiting {
            reason: unscheduled
                .and_then(|c| c.reason.clone())
                .map(|r| format!("Target{r}"))
                .unwrap_or_else(|| "ContainerCreating".into()),
            message: unscheduled.and_then(|c| c.message.clone()).unwrap_or_default(),
        },
        restart_count: 0,
        ready: Some(false),
    };
    let statuses = |reported: Option<&Vec<KubeContainerStatus>>, init: bool| -> Vec<ContainerStatus> {
        match reported {
            Some(list) if !list.is_empty() => list.iter().map(container_status).collect(),
            _ if unscheduled.is_some() => {
                let containers = if init {
                    spec.and_then(|s| s.init_containers.as_deref())
                        .unwrap_or_default()
                } else {
                    spec.map(|s| s.containers.as_slice()).unwrap_or_default()
                };
                containers
                    .iter()
                    .map(|c| waiting_for_target(&c.name, c.image.as_deref().unwrap_or_default()))
                    .collect()
            }
            _ => Vec::new(),
        }
    };
    Sandbox {
        id: translate::sandbox_id(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        ),
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase,
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        containers: statuses(status.and_then(|s| s.container_statuses.as_ref()), false),
        init_containers: statuses(status.and_then(|s| s.init_container_statuses.as_ref()), true),
        billed: pod.spec.as_ref().map(requested_size),
    }
}

/// What the target pod reserves, which is what its nodes are paid for: the kube-scheduler's
/// effective request (the larger of the containers' sum and the largest init container, plus the
/// pod overhead). Unparseable quantities count as nothing.
fn requested_size(spec: &k8s_openapi::api::core::v1::PodSpec) -> BilledSize {
    type Requests =
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;
    let amount = |requests: Option<&Requests>, name: &str, parse: fn(&str) -> Option<u64>| {
        requests
            .and_then(|r| r.get(name))
            .and_then(|q| parse(&q.0))
            .unwrap_or(0)
    };
    let millis = |text: &str| quantity::millis(text).ok();
    let units = |text: &str| quantity::units(text).ok();
    let size = |requests: Option<&Requests>| {
        (
            amount(requests, "cpu", millis),
            amount(requests, "memory", units),
            amount(requests, "nvidia.com/gpu", units),
        )
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        size(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let sum = spec
        .containers
        .iter()
        .map(of)
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(of)
        .fold((0, 0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2)));
    let overhead = size(spec.overhead.as_ref());
    BilledSize {
        cpu_millis: sum.0.max(init.0) + overhead.0,
        memory_mib: (sum.1.max(init.1) + overhead.1).div_ceil(1 << 20),
        gpu: sum.2.max(init.2),
        gpu_type: None,
    }
}

fn container_status(status: &KubeContainerStatus) -> ContainerStatus {
    let state = status.state.as_ref();
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| -> Option<Timestamp> {
        t.as_ref().map(|t| t.0)
    };
    let state = if let Some(running) = state.and_then(|s| s.running.as_ref()) {
        ContainerState::Running {
            started_at: time(&running.started_at),
        }
    } else if let Some(done) = state.and_then(|s| s.terminated.as_ref()) {
        ContainerState::Terminated {
            exit_code: done.exit_code,
            reason: done.reason.clone().unwrap_or_default(),
            message: done.message.clone().unwrap_or_default(),
            started_at: time(&done.started_at),
            finished_at: time(&done.finished_at),
        }
    } else {
        let waiting = state.and_then(|s| s.waiting.as_ref());
        ContainerState::Waiting {
            reason: waiting
                .and_then(|w| w.reason.clone())
                .unwrap_or_else(|| "ContainerCreating".into()),
            message: waiting.and_then(|w| w.message.clone()).unwrap_or_default(),
        }
    };
    ContainerStatus {
        name: status.name.clone(),
        image: status.image.clone(),
        state,
        restart_count: u32::try_from(status.restart_count).unwrap_or(0),
        ready: Some(status.ready),
    }
}

/// What changed in the cache, for the copies to follow.
#[derive(Debug, Default)]
pub struct Change {
    pub seen: Vec<TargetPod>,
    pub removed: Vec<TargetPod>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, TargetPod>,
    /// Ids seen during a re-list in progress.
    relisting: Option<HashSet<String>>,
    /// Created by this process and not yet seen by the watch.
    unseen: HashMap<String, (Instant, Sandbox)>,
    /// Gated pods a create of this process is still completing.
    in_flight: HashSet<String>,
}

/// The watch-fed cache of target pods.
pub struct PodCache {
    inner: Mutex<Inner>,
    synced: watch::Sender<bool>,
    version: watch::Sender<u64>,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache {
            inner: Mutex::default(),
            synced: watch::channel(false).0,
            version: watch::channel(0).0,
        }
    }
}

impl PodCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list has completed.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(timeout, synced.wait_for(|s| *s))
            .await
            .is_ok()
    }

    /// A watch event: the pod as it is now.
    pub fn apply(&self, pod: &Pod) -> Change {
        let Some(target) = TargetPod::of(pod) else {
            return Change::default();
        };
        let mut inner = self.lock();
        // A create of this process registers its copies itself, with the versions it wrote.
        let created_here = inner.in_flight.contains(&target.id) || inner.unseen.contains_key(&target.id);
        inner.unseen.remove(&target.id);
        if !target.gated {
            inner.in_flight.remove(&target.id);
        }
        if let Some(seen) = &mut inner.relisting {
            seen.insert(target.id.clone());
        }
        let previous = inner.pods.insert(target.id.clone(), target.clone());
        drop(inner);
        self.bump();
        Change {
            // The copies care about new pods, not status updates.
            seen: if !created_here && previous.is_none_or(|p| p.uid != target.uid) {
                vec![target]
            } else {
                Vec::new()
            },
            removed: Vec::new(),
        }
    }

    pub fn delete(&self, pod: &Pod) -> Change {
        let Some(target) = TargetPod::of(pod) else {
            return Change::default();
        };
        let mut inner = self.lock();
        inner.unseen.remove(&target.id);
        inner.in_flight.remove(&target.id);
        let removed = inner.pods.remove(&target.id);
        drop(inner);
        self.bump();
        Change {
            seen: Vec::new(),
            removed: removed.into_iter().collect(),
        }
    }

    /// A re-list starts: pods not in it are gone when it is done.
    pub fn relist_started(&self) {
        self.lock().relisting = Some(HashSet::new());
    }

    pub fn relist_done(&self) -> Change {
        let mut inner = self.lock();
        let seen = inner.relisting.take().unwrap_or_default();
        let gone: Vec<String> = inner
            .pods
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        let removed = gone.iter().filter_map(|id| inner.pods.remove(id)).collect();
        drop(inner);
        self.synced.send_replace(true);
        self.bump();
        Change {
            seen: Vec::new(),
            removed,
        }
    }

    /// A pod this process is creating (gated until its objects exist).
    pub fn creating(&self, id: &str) {
        self.lock().in_flight.insert(id.to_owned());
    }

    /// The create finished: vouch for the pod until the watch shows it.
    pub fn created(&self, sandbox: &Sandbox) {
        self.lock()
            .unseen
            .insert(sandbox.id.clone(), (Instant::now(), sandbox.clone()));
    }

    /// The create failed or the pod was deleted.
    pub fn abandoned(&self, id: &str) {
        let mut inner = self.lock();
        inner.in_flight.remove(id);
        inner.unseen.remove(id);
    }

    pub fn get(&self, id: &str) -> Option<TargetPod> {
        self.lock().pods.get(id).cloned()
    }

    /// Whether a gated pod was left by a create that is no longer running (a crash).
    pub fn is_stale_gate(&self, pod: &TargetPod) -> bool {
        pod.gated && !self.lock().in_flight.contains(&pod.id)
    }

    /// The known state of these pods; pods the target does not have are absent.
    pub fn describe(&self, ids: &[String]) -> Vec<Sandbox> {
        let inner = self.lock();
        ids.iter()
            .filter_map(|id| match inner.pods.get(id) {
                Some(pod) => Some(pod.sandbox.clone()),
                None => inner
                    .unseen
                    .get(id)
                    .filter(|(since, _)| since.elapsed() < UNSEEN_GRACE)
                    .map(|(_, sandbox)| sandbox.clone()),
            })
            .collect()
    }

    /// Every cached pod.
    pub fn all(&self) -> Vec<TargetPod> {
        self.lock().pods.values().cloned().collect()
    }

    /// Waits until `id` is gone from the target or `timeout` passes; true when gone.
    pub async fn wait_gone(&self, id: &str, timeout: Duration) -> bool {
        let mut version = self.version.subscribe();
        let gone = async {
            loop {
                if !self.lock().pods.contains_key(id) {
                    return;
                }
                if version.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::time::timeout(timeout, gone).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "eklet-c-2f6c0d5e-1111-2222-3333-444455556666", "namespace": "c-shop", "uid": "t-1",
                         "creationTimestamp": "2026-01-02T03:04:05Z",
                         "labels": {"eklet.tke-resilience.io/pod-uid": "2f6c0d5e-1111-2222-3333-444455556666"},
                         "annotations": {"eklet.tke-resilience.io/pod": "shop/web-0",
                                         "eklet.tke-resilience.io/copies": "configmap/settings,secret/db"}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_target_pod_is_billed_at_its_effective_request() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "512Mi", "nvidia.com/gpu": "1"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "256Mi"}}}],
            "overhead": {"cpu": "250m"},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            requested_size(&spec).annotation(),
            "cpu=2.25,memory=1536Mi,gpu=1",
            "init CPU wins over the containers' sum, their memory over the init's; plus the overhead"
        );
    }

    #[test]
    fn a_running_target_pod_is_a_running_sandbox_with_its_ip_and_readiness() {
        let pod = pod(json!({
            "phase": "Running", "podIP": "10.244.0.7",
            "containerStatuses": [{"name": "app", "image": "docker.io/library/nginx:1.27", "imageID": "",
                "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2026-01-02T03:04:09Z"}}}]
        }));
        let target = TargetPod::of(&pod).unwrap_or_else(|| panic!("ours"));
        assert_eq!(target.id, "c-shop/eklet-c-2f6c0d5e-1111-2222-3333-444455556666");
        assert_eq!(target.source_namespace.as_deref(), Some("shop"));
        assert_eq!(target.copies.len(), 2);
        let sandbox = target.sandbox;
        assert_eq!(sandbox.phase, SandboxPhase::Running);
        assert_eq!(sandbox.ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(sandbox.containers[0].ready, Some(true));
        assert_eq!(sandbox.containers[0].restart_count, 2);
        assert!(matches!(
            sandbox.containers[0].state,
            ContainerState::Running { started_at: Some(_) }
        ));
        assert!(sandbox.created_at.is_some());
    }

    #[test]
    fn a_pod_the_target_cannot_schedule_says_so_in_its_container_state() {
        let pod = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available"}]
        }));
        let sandbox = sandbox(&pod);
        assert_eq!(sandbox.phase, SandboxPhase::Pending);
        match &sandbox.containers[0].state {
            ContainerState::Waiting { reason, message } => {
                assert_eq!(reason, "TargetUnschedulable");
                assert!(message.contains("0/3"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_terminated_container_keeps_its_exit_code_and_reason() {
        let pod = pod(json!({
            "phase": "Failed",
            "containerStatuses": [{"name": "app", "image": "nginx", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
        }));
        let sandbox = sandbox(&pod);
        assert_eq!(sandbox.phase, SandboxPhase::Failed);
        assert!(matches!(
            &sandbox.containers[0].state,
            ContainerState::Terminated { exit_code: 137, reason, .. } if reason == "OOMKilled"
        ));
    }

    #[test]
    fn pods_leave_the_cache_only_when_deleted_or_missing_from_a_relist() {
        let cache = PodCache::default();
        let first = pod(json!({"phase": "Running"}));
        let id = TargetPod::of(&first).map(|t| t.id).unwrap_or_default();
        assert_eq!(cache.apply(&first).seen.len(), 1);
        assert!(
            cache.apply(&first).seen.is_empty(),
            "a status update is not a new pod"
        );
        cache.relist_started();
        let change = cache.relist_done();
        assert_eq!(change.removed.len(), 1, "not in the re-list: gone");
        assert!(cache.describe(std::slice::from_ref(&id)).is_empty());
        cache.apply(&first);
        cache.delete(&first);
        assert!(cache.get(&id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_created_pod_is_vouched_for_until_the_watch_shows_it_but_not_forever() {
        let cache = PodCache::default();
        let created = sandbox(&pod(json!({})));
        let id = created.id.clone();
        cache.created(&created);
        assert_eq!(cache.describe(std::slice::from_ref(&id)).len(), 1);
        tokio::time::advance(UNSEEN_GRACE + Duration::from_secs(1)).await;
        assert!(cache.describe(std::slice::from_ref(&id)).is_empty());
    }

    #[test]
    fn a_gated_pod_is_stale_only_when_no_create_is_completing_it() {
        let cache = PodCache::default();
        let mut gated = pod(json!({}));
        if let Some(spec) = &mut gated.spec {
            spec.scheduling_gates = Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: SCHEDULING_GATE.into(),
            }]);
        }
        let target = TargetPod::of(&gated).unwrap_or_else(|| panic!("ours"));
        cache.creating(&target.id);
        cache.apply(&gated);
        assert!(!cache.is_stale_gate(&target));
        cache.abandoned(&target.id);
        assert!(cache.is_stale_gate(&target));
    }
}
