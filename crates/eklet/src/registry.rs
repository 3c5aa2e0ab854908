//! Which sandbox runs which pod: the [`Registry`] maps pod UIDs to their sandbox and last
//! observation. Creates and adoption fill it, the status loop ([`crate::sandboxes`]) refreshes
//! it, and deletions empty it. Never locked across an await.
//!
//! It also tells the usage [`Meter`] of every change of what it tracks (a sandbox observed
//! Running, finished, gone, or no longer tracked), under its lock: registry → meter, never the
//! other way.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use crate::{
    provider::{Sandbox, SandboxChange, SandboxName, SandboxPhase},
    usage::{Meter, UsageLabels},
};

/// Consecutive describes that must miss a sandbox before it counts as gone; one miss can be the
/// cloud's eventual consistency right after a create.
const MISSES_BEFORE_GONE: u32 = 2;
/// How long the UID of a deleted pod is remembered: far longer than any create call takes.
const DELETED_MEMORY: Duration = Duration::from_secs(600);

/// One pod's sandbox.
#[derive(Debug, Clone)]
pub struct Record {
    pub sandbox_id: String,
    pub name: SandboxName,
    pub node: String,
    pub pod: ObjectRef<Pod>,
    /// Where the sandbox's usage counts.
    pub usage: UsageLabels,
    pub observed: Sandbox,
    /// When the sandbox was created (or, adopted, when it was created as far as known), for
    /// the running timeout and the latency histogram.
    pub created: Instant,
    pub created_at: Timestamp,
    pub seen_running: bool,
    /// `SandboxRunning` was announced on the pod.
    pub announced_running: bool,
    pub missing: u32,
    /// The cloud no longer has it.
    pub gone: bool,
    pub adopted: bool,
    /// When the projected service-account token must be refreshed, for providers that mount it.
    pub token_refresh_at: Option<Instant>,
}

impl Record {
    pub fn new(sandbox: Sandbox, name: SandboxName, node: String, pod: &Pod) -> Record {
        Record {
            sandbox_id: sandbox.id.clone(),
            name,
            node,
            pod: ObjectRef::from_obj(pod),
            usage: UsageLabels::of(pod),
            seen_running: false,
            observed: sandbox,
            created: Instant::now(),
            created_at: Timestamp::now(),
            announced_running: false,
            missing: 0,
            gone: false,
            adopted: false,
            token_refresh_at: None,
        }
    }

    /// A record for a sandbox found in the cloud, aged by the cloud's creation time (or the pod's
    /// start time) so the running timeout counts from the real creation.
    pub fn adopted(
        sandbox: Sandbox,
        name: SandboxName,
        node: String,
        pod: &Pod,
        started: Option<Timestamp>,
    ) -> Record {
        let created_at = sandbox.created_at.or(started).unwrap_or_else(Timestamp::now);
        let age = Timestamp::now().duration_since(created_at).unsigned_abs();
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let seen_running = sandbox.phase == SandboxPhase::Running;
        Record {
            created,
            created_at,
            seen_running,
            announced_running: seen_running,
            adopted: true,
            ..Record::new(sandbox, name, node, pod)
        }
    }

    /// What the sandbox is billed at now, if it is billed: Running and still there. A provider
    /// that reports no size is metered in pod-seconds only.
    fn billing(&self) -> Option<(&UsageLabels, &crate::provider::BilledSize)> {
        const UNSIZED: &crate::provider::BilledSize = &crate::provider::BilledSize {
            cpu_millis: 0,
            memory_mib: 0,
            gpu: 0,
            gpu_type: None,
        };
        (!self.gone && self.observed.phase == SandboxPhase::Running)
            .then(|| (&self.usage, self.observed.billed.as_ref().unwrap_or(UNSIZED)))
    }
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Record>,
    by_sandbox: HashMap<String, String>,
    /// Pods whose last create failed in a way that may have created the sandbox anyway.
    ambiguous: HashSet<String>,
    /// Consecutive failures per pod, for backoff.
    attempts: HashMap<String, u32>,
    /// (pod uid, reason) warnings already shown, so a pod is told once.
    notices: HashSet<(String, &'static str)>,
    /// Pods seen deleted from the apiserver, and when: a create that was in flight when its pod
    /// went away finds its UID here and deletes what it made at once.
    deleted: HashMap<String, Instant>,
}

/// The adoption map, keyed by pod UID. Never held across an await.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    meter: Arc<Meter>,
}

/// What this registry tracks is no longer metered by it: a leadership term ended.
impl Drop for Registry {
    fn drop(&mut self) {
        let inner = self.lock();
        for record in inner.records.values() {
            self.meter.set(&record.sandbox_id, None);
        }
    }
}

impl Registry {
    /// A registry that meters what it tracks into `meter` (the one [`crate::metrics::Metrics`]
    /// exports).
    pub fn metered(meter: Arc<Meter>) -> Registry {
        Registry {
            inner: Mutex::default(),
            meter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the meter how the record's sandbox is billed now.
    fn meter(&self, record: &Record) {
        self.meter.set(&record.sandbox_id, record.billing());
    }

    pub fn get(&self, uid: &str) -> Option<Record> {
        self.lock().records.get(uid).cloned()
    }

    pub fn insert(&self, uid: &str, record: Record) {
        let mut inner = self.lock();
        inner.ambiguous.remove(uid);
        inner.attempts.remove(uid);
        if let Some(old) = inner.records.get(uid).map(|r| r.sandbox_id.clone()) {
            inner.by_sandbox.remove(&old);
            if old != record.sandbox_id {
                self.meter.set(&old, None);
            }
        }
        self.meter(&record);
        inner.by_sandbox.insert(record.sandbox_id.clone(), uid.to_owned());
        inner.records.insert(uid.to_owned(), record);
    }

    pub fn update(&self, uid: &str, change: impl FnOnce(&mut Record)) {
        if let Some(record) = self.lock().records.get_mut(uid) {
            change(record);
            self.meter(record);
        }
    }

    pub fn remove(&self, uid: &str) -> Option<Record> {
        let mut inner = self.lock();
        let record = inner.records.remove(uid)?;
        self.meter.set(&record.sandbox_id, None);
        inner.by_sandbox.remove(&record.sandbox_id);
        inner.attempts.remove(uid);
        inner.notices.retain(|(owner, _)| owner != uid);
        Some(record)
    }

    /// Forgets everything about a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.remove(uid);
        let mut inner = self.lock();
        inner.ambiguous.remove(uid);
        inner.attempts.remove(uid);
        inner.notices.retain(|(owner, _)| owner != uid);
    }

    /// Records that the pod is gone from the apiserver and forgets everything else about it.
    /// Returns its record, if it had one, and whether its last create was ambiguous.
    pub fn pod_deleted(&self, uid: &str) -> (Option<Record>, bool) {
        let record = self.remove(uid);
        let mut inner = self.lock();
        let ambiguous = inner.ambiguous.remove(uid);
        let now = Instant::now();
        inner
            .deleted
            .retain(|_, at| now.saturating_duration_since(*at) < DELETED_MEMORY);
        inner.deleted.insert(uid.to_owned(), now);
        (record, ambiguous)
    }

    /// Whether the pod was seen deleted (within [`DELETED_MEMORY`]).
    pub fn is_deleted(&self, uid: &str) -> bool {
        self.lock().deleted.contains_key(uid)
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn mark_ambiguous(&self, uid: &str) {
        self.lock().ambiguous.insert(uid.to_owned());
    }

    pub fn is_ambiguous(&self, uid: &str) -> bool {
        self.lock().ambiguous.contains(uid)
    }

    pub fn clear_ambiguous(&self, uid: &str) {
        self.lock().ambiguous.remove(uid);
    }

    /// Counts a failure and returns how many in a row there have been.
    pub fn failed_attempt(&self, uid: &str) -> u32 {
        let mut inner = self.lock();
        let attempts = inner.attempts.entry(uid.to_owned()).or_default();
        *attempts = attempts.saturating_add(1);
        *attempts
    }

    pub fn reset_attempts(&self, uid: &str) {
        self.lock().attempts.remove(uid);
    }

    /// True the first time a pod is told `reason`.
    pub fn first_notice(&self, uid: &str, reason: &'static str) -> bool {
        self.lock().notices.insert((uid.to_owned(), reason))
    }

    /// Every record, for the orphan sweep.
    pub fn snapshot(&self) -> Vec<(String, Record)> {
        self.lock()
            .records
            .iter()
            .map(|(uid, r)| (uid.clone(), r.clone()))
            .collect()
    }

    /// Sandbox ids worth describing: not gone and not finished.
    pub(crate) fn pollable(&self) -> Vec<String> {
        self.lock()
            .records
            .values()
            .filter(|r| !r.gone && !r.observed.phase.is_terminal())
            .map(|r| r.sandbox_id.clone())
            .collect()
    }

    /// Applies one describe answer for `asked`; returns the pods to wake, and for sandboxes
    /// first seen Running, how long they took.
    pub(crate) fn observe(
        &self,
        asked: &[String],
        answer: Vec<Sandbox>,
    ) -> (Vec<(String, ObjectRef<Pod>)>, Vec<Duration>) {
        let mut inner = self.lock();
        let mut wake = Vec::new();
        let mut latencies = Vec::new();
        let mut answered: HashMap<String, Sandbox> = answer.into_iter().map(|s| (s.id.clone(), s)).collect();
        for id in asked {
            let Some(uid) = inner.by_sandbox.get(id).cloned() else {
                continue;
            };
            let Some(record) = inner.records.get_mut(&uid) else {
                continue;
            };
            match answered.remove(id) {
                Some(sandbox) => {
                    record.missing = 0;
                    if sandbox.phase == SandboxPhase::Running && !record.seen_running {
                        record.seen_running = true;
                        if !record.adopted {
                            latencies.push(record.created.elapsed());
                        }
                    }
                    if sandbox != record.observed {
                        record.observed = sandbox;
                        wake.push((record.node.clone(), record.pod.clone()));
                    }
                }
                None => {
                    record.missing += 1;
                    if record.missing >= MISSES_BEFORE_GONE && !record.gone {
                        record.gone = true;
                        wake.push((record.node.clone(), record.pod.clone()));
                    }
                }
            }
            self.meter(record);
        }
        (wake, latencies)
    }

    /// Applies one change a watching provider pushed; a sandbox eklet does not track is ignored
    /// (eklet describes a sandbox once when it starts tracking it). A watch saw the sandbox
    /// removed, so `Gone` needs no second look.
    pub(crate) fn pushed(&self, change: SandboxChange) -> (Vec<(String, ObjectRef<Pod>)>, Vec<Duration>) {
        match change {
            SandboxChange::Observed(sandbox) => {
                let id = sandbox.id.clone();
                self.observe(&[id], vec![sandbox])
            }
            SandboxChange::Gone(id) => {
                let mut inner = self.lock();
                let Some(record) = inner
                    .by_sandbox
                    .get(&id)
                    .cloned()
                    .and_then(|uid| inner.records.get_mut(&uid))
                else {
                    return (Vec::new(), Vec::new());
                };
                record.missing = record.missing.max(MISSES_BEFORE_GONE);
                if record.gone {
                    return (Vec::new(), Vec::new());
                }
                record.gone = true;
                self.meter(record);
                (vec![(record.node.clone(), record.pod.clone())], Vec::new())
            }
        }
    }

    /// Pod UID → sandbox id, for duplicate detection.
    pub(crate) fn sandbox_of(&self, uid: &str) -> Option<String> {
        self.lock().records.get(uid).map(|r| r.sandbox_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::BilledSize;

    fn sandbox(id: &str, phase: SandboxPhase) -> Sandbox {
        Sandbox {
            id: id.into(),
            name: format!("n-{id}"),
            phase,
            ip: None,
            created_at: None,
            containers: vec![],
            init_containers: vec![],
            billed: Some(BilledSize {
                cpu_millis: 1000,
                memory_mib: 2048,
                gpu: 0,
                gpu_type: None,
            }),
        }
    }

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"pod-template-hash": "abc12"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc12",
                    "uid": "rs", "controller": true}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn record(id: &str, phase: SandboxPhase) -> Record {
        Record::new(
            sandbox(id, phase),
            SandboxName::for_pod("c", "u"),
            "eklet-subnet-a".into(),
            &pod(id),
        )
    }

    fn web() -> UsageLabels {
        UsageLabels {
            namespace: "ns".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
        }
    }

    /// Core-seconds counted so far for the `web` Deployment.
    fn core_seconds(meter: &Meter) -> f64 {
        meter.flush();
        meter.cpu_core_seconds.get_or_create(&web()).get()
    }

    #[tokio::test(start_paused = true)]
    async fn usage_counts_from_the_first_running_observation_until_the_sandbox_is_gone() {
        let meter = Arc::new(Meter::default());
        let registry = Registry::metered(meter.clone());
        registry.insert("u1", record("s1", SandboxPhase::Pending));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(core_seconds(&meter), 0.0, "pending costs nothing");
        registry.observe(&["s1".into()], vec![sandbox("s1", SandboxPhase::Running)]);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(core_seconds(&meter), 30.0);
        registry.observe(&["s1".into()], vec![]);
        tokio::time::advance(Duration::from_secs(5)).await;
        registry.observe(&["s1".into()], vec![]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            core_seconds(&meter),
            35.0,
            "counted until the describe that found it gone"
        );
        assert_eq!(
            meter.memory_byte_seconds.get_or_create(&web()).get(),
            70.0 * f64::from(1u32 << 30)
        );
        assert_eq!(meter.pod_seconds.get_or_create(&web()).get(), 35.0);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_stops_when_the_sandbox_finishes_or_eklet_stops_tracking_it() {
        let meter = Arc::new(Meter::default());
        let registry = Registry::metered(meter.clone());
        registry.insert("u1", record("s1", SandboxPhase::Running));
        registry.insert("u2", record("s2", SandboxPhase::Running));
        tokio::time::advance(Duration::from_secs(10)).await;
        registry.observe(&["s1".into()], vec![sandbox("s1", SandboxPhase::Succeeded)]);
        registry.remove("u2");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(core_seconds(&meter), 20.0);
        registry.insert("u3", record("s3", SandboxPhase::Running));
        tokio::time::advance(Duration::from_secs(7)).await;
        registry.pushed(SandboxChange::Gone("s3".into()));
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(core_seconds(&meter), 27.0, "a pushed removal ends it at once");
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_sandbox_counts_only_from_adoption_on() {
        let meter = Arc::new(Meter::default());
        let registry = Registry::metered(meter.clone());
        let mut running = sandbox("s1", SandboxPhase::Running);
        running.created_at = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(3600))
            .ok();
        let adopted = Record::adopted(
            running,
            SandboxName::for_pod("c", "u"),
            "n".into(),
            &pod("p"),
            None,
        );
        registry.insert("u1", adopted);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(core_seconds(&meter), 15.0, "not the hour it ran before");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_eklet_counts_from_zero_and_never_what_its_predecessor_counted() {
        // The first process: one sandbox, 40 s, then it ends (its registry goes with it).
        let first = Arc::new(Meter::default());
        {
            let registry = Registry::metered(first.clone());
            registry.insert("u1", record("s1", SandboxPhase::Running));
            tokio::time::advance(Duration::from_secs(40)).await;
        }
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(core_seconds(&first), 40.0, "a dropped registry stops metering");
        // The next process adopts the same sandbox: its counters start at 0, from adoption.
        let second = Arc::new(Meter::default());
        let registry = Registry::metered(second.clone());
        assert_eq!(core_seconds(&second), 0.0);
        let adopted = Record::adopted(
            sandbox("s1", SandboxPhase::Running),
            SandboxName::for_pod("c", "u"),
            "n".into(),
            &pod("p"),
            None,
        );
        registry.insert("u1", adopted);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(core_seconds(&second), 25.0);
        // A second adoption of what is already tracked (the periodic sweep) changes nothing.
        registry.update("u1", |_| {});
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(core_seconds(&second), 30.0);
    }

    #[test]
    fn only_changed_sandboxes_wake_their_pods() {
        let registry = Registry::default();
        registry.insert("u1", record("s1", SandboxPhase::Pending));
        registry.insert("u2", record("s2", SandboxPhase::Pending));
        let (wake, latencies) = registry.observe(
            &["s1".into(), "s2".into()],
            vec![
                sandbox("s1", SandboxPhase::Running),
                sandbox("s2", SandboxPhase::Pending),
            ],
        );
        assert_eq!(
            wake.iter().map(|(_, pod)| pod.name.clone()).collect::<Vec<_>>(),
            vec!["s1"]
        );
        assert_eq!(latencies.len(), 1, "the first Running is timed");
        let (wake, latencies) = registry.observe(&["s1".into()], vec![sandbox("s1", SandboxPhase::Running)]);
        assert!(wake.is_empty() && latencies.is_empty());
    }

    #[test]
    fn a_sandbox_missing_from_two_describes_in_a_row_is_gone() {
        let registry = Registry::default();
        registry.insert("u1", record("s1", SandboxPhase::Running));
        assert!(registry.observe(&["s1".into()], vec![]).0.is_empty());
        assert!(!registry.get("u1").is_some_and(|r| r.gone));
        let (wake, _) = registry.observe(&["s1".into()], vec![]);
        assert_eq!(wake.len(), 1);
        assert!(registry.get("u1").is_some_and(|r| r.gone));
        assert!(
            registry.pollable().is_empty(),
            "a gone sandbox is not described again"
        );
    }

    #[test]
    fn a_miss_followed_by_an_answer_is_not_gone() {
        let registry = Registry::default();
        registry.insert("u1", record("s1", SandboxPhase::Running));
        registry.observe(&["s1".into()], vec![]);
        registry.observe(&["s1".into()], vec![sandbox("s1", SandboxPhase::Running)]);
        registry.observe(&["s1".into()], vec![]);
        assert!(!registry.get("u1").is_some_and(|r| r.gone));
    }

    #[test]
    fn finished_sandboxes_are_not_described_again() {
        let registry = Registry::default();
        registry.insert("u1", record("s1", SandboxPhase::Succeeded));
        registry.insert("u2", record("s2", SandboxPhase::Running));
        assert_eq!(registry.pollable(), vec!["s2".to_owned()]);
    }

    #[test]
    fn a_pushed_change_wakes_its_pod_and_a_pushed_removal_is_believed_at_once() {
        let registry = Registry::default();
        registry.insert("u1", record("s1", SandboxPhase::Pending));
        let (wake, latencies) =
            registry.pushed(SandboxChange::Observed(sandbox("s1", SandboxPhase::Running)));
        assert_eq!(wake.len(), 1);
        assert_eq!(latencies.len(), 1, "first seen Running: a create→Running latency");
        assert!(
            registry
                .pushed(SandboxChange::Observed(sandbox("s1", SandboxPhase::Running)))
                .0
                .is_empty(),
            "an unchanged state wakes nobody"
        );
        let (wake, _) = registry.pushed(SandboxChange::Gone("s1".into()));
        assert_eq!(wake.len(), 1);
        assert!(
            registry.get("u1").is_some_and(|r| r.gone),
            "one removal is enough"
        );
        assert!(registry.pushed(SandboxChange::Gone("s1".into())).0.is_empty());
        assert!(
            registry
                .pushed(SandboxChange::Observed(sandbox("s9", SandboxPhase::Running)))
                .0
                .is_empty(),
            "a sandbox eklet does not track is ignored"
        );
    }

    #[test]
    fn an_adopted_sandbox_is_aged_by_its_cloud_creation_time() {
        let mut old = sandbox("s1", SandboxPhase::Pending);
        old.created_at = Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(3600))
            .ok();
        let record = Record::adopted(old, SandboxName::for_pod("c", "u"), "n".into(), &pod("p"), None);
        assert!(record.created.elapsed() >= Duration::from_secs(3599));
        assert!(record.adopted);
    }

    #[test]
    fn notices_are_given_once_per_pod_and_reason() {
        let registry = Registry::default();
        assert!(registry.first_notice("u1", "X"));
        assert!(!registry.first_notice("u1", "X"));
        assert!(registry.first_notice("u2", "X"));
        registry.forget("u1");
        assert!(registry.first_notice("u1", "X"));
    }
}
