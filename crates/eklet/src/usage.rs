//! Cloud usage accounting: the billed size × time of every sandbox eklet runs, per namespace and
//! controlling workload, as Prometheus counters (`eklet_cloud_*_total`).
//!
//! A sandbox is metered from the moment eklet first observes it Running (or adopts it Running)
//! until it is observed finished or gone, or eklet stops tracking it; at the size its provider
//! bills ([`BilledSize`]). The [`Registry`](crate::registry::Registry) tells the [`Meter`] of
//! every change of a sandbox it tracks, under its own lock (registry → meter, never the other
//! way); the counters advance to the current instant whenever they are rendered, so a scrape
//! sees usage up to the scrape itself and no period is left out.
//!
//! Restarts: the counters live in the process and start from 0, as Prometheus expects of a
//! counter (`increase()` handles the reset). A restarted eklet meters the sandboxes it adopts
//! from adoption on, never their past, so no interval is counted by two processes: the previous
//! leader stopped counting when it stopped (its registry was dropped or the process ended).
//!
//! Labels are bounded: namespace and controlling workload, never pod names. A ReplicaSet's pods
//! count under its Deployment (the `pod-template-hash` suffix removed), a Job's under its
//! CronJob when the Job carries the CronJob controller's `-<minutes>` suffix; a pod without a
//! controller counts with empty `workload_kind` and `workload`.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::time::Instant;

use crate::provider::BilledSize;

/// Where a sandbox's usage is counted.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct UsageLabels {
    pub namespace: String,
    pub workload_kind: String,
    pub workload: String,
}

impl UsageLabels {
    /// The pod's namespace and controlling workload.
    pub fn of(pod: &Pod) -> UsageLabels {
        let namespace = pod.namespace().unwrap_or_default();
        let Some(owner) = pod.owner_references().iter().find(|o| o.controller == Some(true)) else {
            return UsageLabels {
                namespace,
                ..UsageLabels::default()
            };
        };
        let (kind, name) = match owner.kind.as_str() {
            "ReplicaSet" => match pod
                .labels()
                .get("pod-template-hash")
                .and_then(|hash| owner.name.strip_suffix(&format!("-{hash}")))
            {
                Some(deployment) => ("Deployment", deployment.to_owned()),
                None => ("ReplicaSet", owner.name.clone()),
            },
            "Job" => match cronjob_of(&owner.name) {
                Some(cronjob) => ("CronJob", cronjob.to_owned()),
                None => ("Job", owner.name.clone()),
            },
            other => (other, owner.name.clone()),
        };
        UsageLabels {
            namespace,
            workload_kind: kind.to_owned(),
            workload: name,
        }
    }
}

/// The CronJob of a Job named by the CronJob controller: `<cronjob>-<scheduled time in minutes>`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (cronjob, minutes) = job.rsplit_once('-')?;
    (!cronjob.is_empty() && minutes.len() >= 8 && minutes.bytes().all(|b| b.is_ascii_digit()))
        .then_some(cronjob)
}

/// Billed size × time, in the counters' units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amount {
    pub cpu_core_seconds: f64,
    pub memory_byte_seconds: f64,
    pub gpu_seconds: f64,
    pub pod_seconds: f64,
}

impl Amount {
    fn of(size: &BilledSize, seconds: f64) -> Amount {
        Amount {
            cpu_core_seconds: size.cores() * seconds,
            memory_byte_seconds: (size.memory_mib as f64) * f64::from(1u32 << 20) * seconds,
            gpu_seconds: size.gpu as f64 * seconds,
            pod_seconds: seconds,
        }
    }

    fn add(&mut self, other: Amount) {
        self.cpu_core_seconds += other.cpu_core_seconds;
        self.memory_byte_seconds += other.memory_byte_seconds;
        self.gpu_seconds += other.gpu_seconds;
        self.pod_seconds += other.pod_seconds;
    }
}

/// A sandbox being metered: where it counts, at what size, and from when not yet counted.
#[derive(Debug, Clone, PartialEq)]
struct Metered {
    labels: UsageLabels,
    size: BilledSize,
    since: Instant,
}

/// The arithmetic of metering, with time passed in: which sandboxes run, and what they used
/// that was not yet taken.
#[derive(Debug, Default)]
pub struct Ledger {
    running: HashMap<String, Metered>,
    owed: HashMap<UsageLabels, Amount>,
}

impl Ledger {
    /// Sandbox `id` is, as of `now`, running at `size` under `labels` (`Some`) or not running
    /// (`None`). Whatever it ran until now at its previous size is owed; a change of size or
    /// labels starts a new interval.
    pub fn set(&mut self, id: &str, running: Option<(&UsageLabels, &BilledSize)>, now: Instant) {
        if let Some(metered) = self.running.get(id) {
            let same =
                running.is_some_and(|(labels, size)| *labels == metered.labels && *size == metered.size);
            if same {
                return;
            }
            if let Some(ended) = self.running.remove(id) {
                self.accrue(&ended, now);
            }
        }
        if let Some((labels, size)) = running {
            self.running.insert(
                id.to_owned(),
                Metered {
                    labels: labels.clone(),
                    size: size.clone(),
                    since: now,
                },
            );
        }
    }

    /// Everything used up to `now` and not taken before, by labels; running sandboxes are counted
    /// up to `now` and go on from there.
    pub fn take(&mut self, now: Instant) -> HashMap<UsageLabels, Amount> {
        let running: Vec<Metered> = self.running.values().cloned().collect();
        for metered in &running {
            self.accrue(metered, now);
        }
        for metered in self.running.values_mut() {
            metered.since = metered.since.max(now);
        }
        std::mem::take(&mut self.owed)
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    fn accrue(&mut self, metered: &Metered, now: Instant) {
        let seconds = now.saturating_duration_since(metered.since).as_secs_f64();
        if seconds > 0.0 {
            self.owed
                .entry(metered.labels.clone())
                .or_default()
                .add(Amount::of(&metered.size, seconds));
        }
    }
}

type FloatCounter = Counter<f64, AtomicU64>;

/// The usage counters and the ledger behind them.
#[derive(Default)]
pub struct Meter {
    ledger: Mutex<Ledger>,
    pub cpu_core_seconds: Family<UsageLabels, FloatCounter>,
    pub memory_byte_seconds: Family<UsageLabels, FloatCounter>,
    pub gpu_seconds: Family<UsageLabels, FloatCounter>,
    pub pod_seconds: Family<UsageLabels, FloatCounter>,
}

impl Meter {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Ledger::set`], as of now.
    pub fn set(&self, id: &str, running: Option<(&UsageLabels, &BilledSize)>) {
        self.ledger().set(id, running, Instant::now());
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.ledger().is_running(id)
    }

    /// Advances the counters to now.
    pub fn flush(&self) {
        let owed = self.ledger().take(Instant::now());
        for (labels, amount) in owed {
            self.cpu_core_seconds
                .get_or_create(&labels)
                .inc_by(amount.cpu_core_seconds);
            self.memory_byte_seconds
                .get_or_create(&labels)
                .inc_by(amount.memory_byte_seconds);
            if amount.gpu_seconds > 0.0 {
                self.gpu_seconds.get_or_create(&labels).inc_by(amount.gpu_seconds);
            }
            self.pod_seconds.get_or_create(&labels).inc_by(amount.pod_seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn labels(workload: &str) -> UsageLabels {
        UsageLabels {
            namespace: "shop".into(),
            workload_kind: "Deployment".into(),
            workload: workload.into(),
        }
    }

    fn size(cpu_millis: u64, memory_mib: u64, gpu: u64) -> BilledSize {
        BilledSize {
            cpu_millis,
            memory_mib,
            gpu,
            gpu_type: None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_sandbox_counts_its_size_from_running_until_it_is_gone() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let (web, one) = (labels("web"), size(1000, 2048, 0));
        ledger.set("s1", Some((&web, &one)), t0);
        ledger.set("s1", Some((&web, &one)), t0 + secs(5));
        ledger.set("s1", None, t0 + secs(30));
        let taken = ledger.take(t0 + secs(100));
        let amount = taken.get(&web).copied().unwrap_or_default();
        assert_eq!(amount.pod_seconds, 30.0, "Running at 0, gone at 30");
        assert_eq!(amount.cpu_core_seconds, 30.0);
        assert_eq!(amount.memory_byte_seconds, 60.0 * f64::from(1u32 << 30));
        assert_eq!(amount.gpu_seconds, 0.0);
        assert!(ledger.take(t0 + secs(200)).is_empty(), "nothing is taken twice");
    }

    #[test]
    fn running_sandboxes_are_counted_up_to_each_take_and_on_from_there() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let web = labels("web");
        for id in ["a", "b", "c"] {
            ledger.set(id, Some((&web, &size(1000, 2048, 0))), t0);
        }
        let first = ledger.take(t0 + secs(10)).remove(&web).unwrap_or_default();
        assert_eq!(first.cpu_core_seconds, 30.0);
        let second = ledger.take(t0 + secs(25)).remove(&web).unwrap_or_default();
        assert_eq!(second.cpu_core_seconds, 45.0, "15 s more of 3 cores");
        ledger.set("a", None, t0 + secs(25));
        let third = ledger.take(t0 + secs(35)).remove(&web).unwrap_or_default();
        assert_eq!(third.pod_seconds, 20.0, "two pods for 10 s");
    }

    #[test]
    fn gpus_count_per_gpu_and_each_workload_apart() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let (train, web) = (labels("train"), labels("web"));
        ledger.set("g", Some((&train, &size(8000, 32 * 1024, 2))), t0);
        ledger.set("w", Some((&web, &size(250, 512, 0))), t0);
        let taken = ledger.take(t0 + secs(60));
        assert_eq!(taken.get(&train).map(|a| a.gpu_seconds), Some(120.0));
        assert_eq!(taken.get(&train).map(|a| a.cpu_core_seconds), Some(480.0));
        assert_eq!(taken.get(&web).map(|a| a.cpu_core_seconds), Some(15.0));
        assert_eq!(taken.get(&web).map(|a| a.gpu_seconds), Some(0.0));
    }

    #[test]
    fn a_new_size_starts_a_new_interval_at_the_new_size() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        let web = labels("web");
        ledger.set("s", Some((&web, &size(1000, 1024, 0))), t0);
        ledger.set("s", Some((&web, &size(2000, 1024, 0))), t0 + secs(10));
        let taken = ledger.take(t0 + secs(20)).remove(&web).unwrap_or_default();
        assert_eq!(taken.cpu_core_seconds, 10.0 + 20.0);
        assert_eq!(taken.pod_seconds, 20.0, "still one pod");
    }

    #[test]
    fn a_sandbox_never_seen_running_costs_nothing_and_stopping_twice_is_harmless() {
        let t0 = Instant::now();
        let mut ledger = Ledger::default();
        ledger.set("s", None, t0);
        ledger.set("s", None, t0 + secs(10));
        assert!(ledger.take(t0 + secs(20)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_counters_advance_to_the_moment_they_are_flushed() {
        let meter = Meter::default();
        let web = labels("web");
        meter.set("s", Some((&web, &size(1000, 2048, 0))));
        tokio::time::advance(secs(12)).await;
        meter.flush();
        assert_eq!(meter.cpu_core_seconds.get_or_create(&web).get(), 12.0);
        assert_eq!(meter.pod_seconds.get_or_create(&web).get(), 12.0);
        tokio::time::advance(secs(3)).await;
        meter.set("s", None);
        tokio::time::advance(secs(50)).await;
        meter.flush();
        assert_eq!(meter.cpu_core_seconds.get_or_create(&web).get(), 15.0);
    }

    fn pod(owner: serde_json::Value, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "labels": labels, "ownerReferences": owner},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn controller(kind: &str, name: &str) -> serde_json::Value {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}])
    }

    #[test]
    fn pods_count_under_their_controlling_workload_never_their_own_name() {
        let of = |owner, labels| {
            let l = UsageLabels::of(&pod(owner, labels));
            (l.namespace, l.workload_kind, l.workload)
        };
        let shop = |kind: &str, name: &str| ("shop".to_owned(), kind.to_owned(), name.to_owned());
        assert_eq!(
            of(
                controller("ReplicaSet", "web-5d8f9c7b6"),
                json!({"pod-template-hash": "5d8f9c7b6"})
            ),
            shop("Deployment", "web")
        );
        assert_eq!(
            of(controller("ReplicaSet", "web-5d8f9c7b6"), json!({})),
            shop("ReplicaSet", "web-5d8f9c7b6")
        );
        assert_eq!(
            of(controller("StatefulSet", "db"), json!({})),
            shop("StatefulSet", "db")
        );
        assert_eq!(
            of(controller("Job", "backup-29412480"), json!({})),
            shop("CronJob", "backup")
        );
        assert_eq!(
            of(controller("Job", "migrate-v2"), json!({})),
            shop("Job", "migrate-v2")
        );
        assert_eq!(of(json!([]), json!({})), shop("", ""));
    }
}
