//! The toleration controller: a watch on unbound Pending pods, a cache of claims and volumes for
//! the volume rule, and a reconcile that, for a pod the scheduler marked Unschedulable, either
//! writes the burst toleration or reports once why the pod may not burst. Every waiting pod is
//! decided again when the global switch changes or a claim it may mount becomes bound.

use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tke_policy::switch::DecidedBy;
use tke_policy::{BurstDecision, ClaimStatus, PlacementOutcome, Reason, Violation, Warning};

use crate::assessment::{Assessment, Policy, assess, unschedulable};
use crate::global_switch::{self, GlobalSwitch, global_switch};
use crate::metrics::{ErrorLabels, Metrics, REFUSED, TOLERATED};
use crate::reported::{PodKey, Reported};
use crate::{events, toleration};
use tke_runtime::events::Recorder;

/// The name the controller reports events under, as the seed's component is called.
pub const REPORTER: &str = "eks-admission";
/// Pods no node has been found for yet.
pub const WAITING_PODS: &str = "spec.nodeName=,status.phase=Pending";
/// How often a toleration patch is retried against a freshly read pod before backing off.
const PATCH_ATTEMPTS: usize = 3;
/// Wait after a failed reconcile.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Toleration(#[from] toleration::Error),
    #[error("reading pod {pod} again after a conflict: {source}")]
    Reread {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {0} kept changing while the toleration was written")]
    KeptChanging(String),
    #[error("the global switch has not been read yet")]
    SwitchNotRead,
    #[error("recording event {reason} on pod {pod}: {source}")]
    Event {
        reason: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    GlobalSwitch(#[from] global_switch::Error),
    #[error("the watch on {0} ended")]
    WatchEnded(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Toleration(toleration::Error::Stale(_)) | Error::KeptChanging(_) => "conflict",
            Error::Toleration(_) => "patch",
            Error::Reread { .. } => "reread",
            Error::SwitchNotRead => "switch_not_read",
            Error::Event { .. } => "event",
            Error::GlobalSwitch(_) | Error::WatchEnded(_) => "watch",
        }
    }
}

/// What the controller is started with besides the client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of ConfigMap `eks-config`.
    pub eks_config_namespace: String,
    pub policy: Policy,
    /// This process's name in events (its leader-election identity).
    pub instance: String,
}

struct Context {
    client: Client,
    recorder: Recorder,
    policy: Policy,
    global: GlobalSwitch,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    reported: Mutex<Reported>,
    metrics: Arc<Metrics>,
}

/// Runs the controller until one of its watches ends, which they do not do on their own.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Result<()> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.to_owned(),
            instance: Some(settings.instance.clone()),
        },
    );
    let (global, switch_watch) = global_switch(&settings.eks_config_namespace);
    let (claims, claims_writer) = reflector::store::<PersistentVolumeClaim>();
    let (volumes, volumes_writer) = reflector::store::<PersistentVolume>();
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: recorder.clone(),
        policy: settings.policy,
        global: global.clone(),
        claims,
        volumes,
        reported: Mutex::new(Reported::default()),
        metrics: metrics.clone(),
    });

    let controller = async {
        // No decision before the switch is known: a pod tolerated under a default "on" while
        // the ConfigMap says false could not be taken back.
        global.synced().await;
        let controller = Controller::new(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(WAITING_PODS),
        );
        let waiting = controller.store();
        controller
            .reconcile_all_on(global.changes())
            .reconcile_all_on(claims_bound(
                Api::all(client.clone()),
                claims_writer,
                waiting.clone(),
            ))
            .reconcile_all_on(volumes_bound(Api::all(client.clone()), volumes_writer, waiting))
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| {
                match result {
                    Err(controller::Error::ObjectNotFound(pod)) => {
                        // Bound or deleted: it left the watch of waiting pods.
                        context
                            .reported()
                            .forget(&(pod.namespace.unwrap_or_default(), pod.name));
                    }
                    Err(controller::Error::QueueError(error)) => {
                        tracing::warn!(%error, "watching waiting pods")
                    }
                    _ => {}
                }
                ready(())
            })
            .await;
    };
    tokio::select! {
        result = switch_watch.run(client.clone(), recorder, &metrics) => result.map_err(Error::from),
        () = controller => Err(Error::WatchEnded("pods")),
    }
}

/// Keeps `writer`'s cache of claims and yields whenever a claim becomes bound in a namespace
/// where pods wait: a pod refused for `UnboundVolume` may burst now.
fn claims_bound(
    api: Api<PersistentVolumeClaim>,
    writer: reflector::store::Writer<PersistentVolumeClaim>,
    waiting: Store<Pod>,
) -> impl Stream<Item = ()> + Send + 'static {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .filter_map(move |claim| {
            let trigger = match claim {
                Ok(claim) => {
                    let bound =
                        claim.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Bound");
                    bound && pods_wait_in(&waiting, claim.namespace().as_deref())
                }
                Err(error) => {
                    tracing::warn!(%error, "watching PersistentVolumeClaims");
                    false
                }
            };
            ready(trigger.then_some(()))
        })
}

/// Keeps `writer`'s cache of volumes and yields whenever a volume is bound to a claim in a
/// namespace where pods wait (the volume can arrive in the cache after its claim).
fn volumes_bound(
    api: Api<PersistentVolume>,
    writer: reflector::store::Writer<PersistentVolume>,
    waiting: Store<Pod>,
) -> impl Stream<Item = ()> + Send + 'static {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .filter_map(move |volume| {
            let trigger = match volume {
                Ok(volume) => {
                    let claim_namespace = volume
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.claim_ref.as_ref())
                        .and_then(|claim| claim.namespace.clone());
                    claim_namespace.is_some() && pods_wait_in(&waiting, claim_namespace.as_deref())
                }
                Err(error) => {
                    tracing::warn!(%error, "watching PersistentVolumes");
                    false
                }
            };
            ready(trigger.then_some(()))
        })
}

fn pods_wait_in(waiting: &Store<Pod>, namespace: Option<&str>) -> bool {
    namespace.is_some_and(|namespace| {
        waiting
            .find(|pod| pod.namespace().as_deref() == Some(namespace))
            .is_some()
    })
}

async fn reconcile(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action> {
    let started = tokio::time::Instant::now();
    let result = context.decide(pod).await;
    context
        .metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result.map(|()| Action::await_change())
}

fn error_policy(pod: Arc<Pod>, error: &Error, context: Arc<Context>) -> Action {
    let labels = ErrorLabels {
        error: error.metric_label().to_owned(),
    };
    context.metrics.reconcile_errors.get_or_create(&labels).inc();
    tracing::warn!(pod = %pod_name(&pod), %error, "deciding on the pod failed; trying again");
    Action::requeue(RETRY_AFTER)
}

impl Context {
    async fn decide(&self, mut pod: Arc<Pod>) -> Result<()> {
        let global = self.global.current().ok_or(Error::SwitchNotRead)?;
        // The caches fill while the controller runs; an error means their watch is gone, which
        // ends the controller anyway.
        let _ = self.claims.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let lookup = |namespace: &str, name: &str| {
            let claim = self.claims.get(&ObjectRef::new(name).within(namespace));
            ClaimStatus::of(claim.as_deref(), |volume| {
                self.volumes.get(&ObjectRef::new(volume))
            })
        };
        for _ in 0..PATCH_ATTEMPTS {
            let outcome = match assess(&pod, &global, &self.policy, &lookup) {
                Assessment::NotWaiting | Assessment::AlreadyTolerated => return Ok(()),
                Assessment::Decided(outcome) => outcome,
            };
            self.report_warnings(&pod, &outcome.warnings).await?;
            if let BurstDecision::LocalOnly { reasons } = &outcome.decision {
                return self.report_refusal(&pod, reasons).await;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            match toleration::add(&api, &pod).await {
                Ok(_) => return self.tolerated(&pod, &outcome).await,
                Err(toleration::Error::Stale(_)) => {
                    self.metrics.patch_conflicts.inc();
                    let name = pod.name_any();
                    match api.get_opt(&name).await {
                        Ok(Some(fresh)) => pod = Arc::new(fresh),
                        Ok(None) => return Ok(()),
                        Err(source) => {
                            return Err(Error::Reread {
                                pod: pod_name(&pod),
                                source,
                            });
                        }
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(Error::KeptChanging(pod_name(&pod)))
    }

    async fn tolerated(&self, pod: &Pod, outcome: &PlacementOutcome) -> Result<()> {
        if let Some(since) = unschedulable(pod).and_then(|waiting| waiting.since) {
            // Wall-clock on purpose: the start is an apiserver timestamp, not a tokio instant.
            let waited = jiff::Timestamp::now()
                .duration_since(since)
                .as_secs_f64()
                .max(0.0);
            self.metrics.toleration_latency.observe(waited);
        }
        self.metrics
            .decided(TOLERATED, allowed_by(outcome.permission.decided_by));
        self.reported().forget(&key(pod));
        tracing::info!(pod = %pod_name(pod), because = %outcome.permission.because, "added the burst toleration");
        self.publish(&events::tolerated(&outcome.permission), pod).await
    }

    async fn report_refusal(&self, pod: &Pod, reasons: &[Violation]) -> Result<()> {
        let codes: Vec<Reason> = reasons.iter().map(|violation| violation.reason).collect();
        let Some(event) = events::refused(reasons) else {
            return Ok(());
        };
        if !self.reported().refusal_is_news(&key(pod), &uid(pod), &codes) {
            return Ok(());
        }
        self.metrics.decided(REFUSED, &event.reason);
        tracing::info!(pod = %pod_name(pod), reasons = ?codes, "the pod may not burst");
        self.publish(&event, pod)
            .await
            .inspect_err(|_| self.reported().forget(&key(pod)))
    }

    async fn report_warnings(&self, pod: &Pod, warnings: &[Warning]) -> Result<()> {
        // LOCAL_REPLICAS is the scheduler extender's to judge and report; here it changes nothing.
        for warning in warnings
            .iter()
            .filter(|warning| matches!(warning, Warning::InvalidSwitch(_)))
        {
            if self
                .reported()
                .warning_is_news(&key(pod), &uid(pod), &warning.to_string())
            {
                self.publish(&events::warning(warning), pod)
                    .await
                    .inspect_err(|_| self.reported().forget(&key(pod)))?;
            }
        }
        Ok(())
    }

    async fn publish(&self, event: &Event, pod: &Pod) -> Result<()> {
        self.recorder
            .publish(event, &pod.object_ref(&()))
            .await
            .map_err(|source| Error::Event {
                reason: event.reason.clone(),
                pod: pod_name(pod),
                source,
            })
    }

    fn reported(&self) -> MutexGuard<'_, Reported> {
        // The memory stays consistent even if a holder panicked: every update is one insert.
        self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `reason` label of a toleration decision: which switch allowed it.
fn allowed_by(decided_by: DecidedBy) -> &'static str {
    match decided_by {
        DecidedBy::Global => "GlobalSwitch",
        DecidedBy::Local => "LocalSwitch",
        DecidedBy::Default => "DefaultOn",
    }
}

fn key(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn uid(pod: &Pod) -> String {
    pod.uid().unwrap_or_default()
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}
