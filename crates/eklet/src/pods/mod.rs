//! The life of a pod bound to a virtual node: one reconcile per pod key, idempotent, driven by
//! the pod's watch events and by sandbox changes the status loop reports — no per-pod polling.
//!
//! A reconcile: deleting pod → delete its sandbox, then the Pod (grace 0, UID precondition);
//! sandbox known → mirror its state into the pod (and time out, fail on loss, show its billed
//! size, mark the deletion cost); no sandbox → cordon, eligibility, provider capability and env checks, then
//! create it. Every refusal keeps the pod Pending with its reason (never Failed: the DaemonSet
//! and ReplicaSet controllers replace Failed pods, and the replacement would come right back).
//! Cloud failures are classified once, in [`on_create_error`].

pub mod env;
pub mod spec;
pub mod status;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, PodStatus, Secret, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{controller::Action, reflector::ObjectRef},
};
use rand::Rng;
use tke_policy::ClaimStatus;

pub use crate::context::Context;
use crate::{
    events,
    node::NodeView,
    provider::{self, BilledSize, ErrorKind, Provider, SandboxName, SandboxPhase, SourceObjects},
    registry::Record,
};

/// The annotation the ReplicaSet controller ranks victims by on scale-down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost eklet gives running cloud pods: below the default 0 of local pods, so a scale-down
/// removes cloud pods first, and far enough below that hand-set small costs on local pods
/// (-1, -10, -100) still rank above cloud pods. Never written over an existing value. The
/// upstream limit: the ReplicaSet controller consults the cost only after it has ranked
/// unassigned, pending and not-ready pods first, so a not-ready local pod still goes before a
/// ready cloud pod.
pub const CLOUD_POD_DELETION_COST: &str = "-1000";

/// Lifetime asked for projected service-account tokens, as the kubelet asks by default.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3607);
/// Retry after a missing ConfigMap/Secret, a sold-out zone, a permanent cloud error.
const CONFIG_RETRY: Duration = Duration::from_secs(10);
const SOLD_OUT_RETRY: Duration = Duration::from_secs(30);
const PERMANENT_RETRY: Duration = Duration::from_secs(300);
/// Backoff for transient failures: 1 s doubling to 60 s, with jitter.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cloud: {0}")]
    Cloud(#[from] provider::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The reconcile of one pod.
pub async fn reconcile<P: Provider>(pod: Arc<Pod>, ctx: Arc<Context<P>>) -> Result<Action> {
    let mut adopted = ctx.adopted.subscribe();
    // The sender lives in the context, so this only returns once adoption is done.
    let _ = adopted.wait_for(|done| *done).await;
    let Some(uid) = pod.uid() else {
        return Ok(Action::await_change());
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return delete(&pod, &uid, &ctx).await;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // Finished pods keep their sandbox (logs) until they are deleted; the ones eklet failed
        // have none left.
        return Ok(Action::await_change());
    }
    match ctx.registry.get(&uid) {
        Some(record) => mirror(&pod, &uid, record, &ctx).await,
        None => start(&pod, &uid, &ctx).await,
    }
}

/// Transient failures back off per pod: 1 s, 2 s, 4 s … 60 s, with ±20 % jitter.
pub fn error_policy<P: Provider>(pod: Arc<Pod>, error: &Error, ctx: Arc<Context<P>>) -> Action {
    let uid = pod.uid().unwrap_or_default();
    let attempts = ctx.registry.failed_attempt(&uid);
    let base = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.8..1.2);
    tracing::warn!(pod = %ObjectRef::from_obj(pod.as_ref()), %error, attempts, "reconcile failed; retrying");
    Action::requeue(base.mul_f64(jitter))
}

/// A pod without a sandbox: check everything, then create one.
async fn start<P: Provider>(pod: &Pod, uid: &str, ctx: &Context<P>) -> Result<Action> {
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let Some(node) = ctx.nodes.get(&node_name) else {
        return Ok(Action::await_change());
    };

    // A pod whose status says it had a sandbox, which adoption did not find: it was deleted
    // behind eklet's back. The kubelet never restarts a pod elsewhere; neither does eklet.
    if had_sandbox(pod, ctx.provider.name()) {
        let message = "the pod's cloud sandbox no longer exists".to_owned();
        fail(pod, ctx, events::SANDBOX_LOST, &message, None).await?;
        return Ok(Action::await_change());
    }
    if node.cordoned {
        let message = format!(
            "virtual node {node_name} is cordoned: no new sandboxes in subnet {}",
            node.subnet
        );
        hold(pod, ctx, events::SUBNET_CORDONED, &message, false).await?;
        return Ok(Action::await_change());
    }

    let claims = fetch_claims(pod, &ctx.client).await?;
    let lookup = |_: &str, name: &str| claims.get(name).cloned().unwrap_or(ClaimStatus::NotFound);
    let eligibility = tke_policy::check(pod, &lookup, &ctx.config.eligibility);
    if let Some(first) = eligibility.first() {
        let message = eligibility
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        hold(pod, ctx, first.reason.as_str(), &message, true).await?;
        return Ok(Action::await_change());
    }

    let built = build_spec(pod, &node, claims, ctx).await?;
    let built = match built {
        Ok(built) => built,
        Err(spec::Problem::Unsupported(feature)) => {
            let message = format!("the {} provider cannot honour {feature}", ctx.provider.name());
            hold(pod, ctx, events::UNSUPPORTED_BY_PROVIDER, &message, true).await?;
            return Ok(Action::await_change());
        }
        Err(spec::Problem::Invalid(message)) => {
            hold(pod, ctx, events::INVALID_POD_SPEC, &message, true).await?;
            return Ok(Action::await_change());
        }
        Err(spec::Problem::Config(message)) => {
            hold(pod, ctx, events::CREATE_CONTAINER_CONFIG_ERROR, &message, true).await?;
            return Ok(Action::requeue(CONFIG_RETRY));
        }
    };
    for notice in &built.notices {
        if ctx.registry.first_notice(uid, notice.reason) {
            ctx.events.pod(pod, true, notice.reason, &notice.message).await;
        }
    }

    // After a create that may have succeeded although it failed, look before creating again.
    if ctx.registry.is_ambiguous(uid) {
        if let Some(sandbox) = ctx.provider.find(&built.spec.name).await? {
            tracing::info!(pod = %ObjectRef::from_obj(pod), sandbox = %sandbox.id, "found the sandbox of an unanswered create");
            let record = Record::new(sandbox, built.spec.name.clone(), node_name.clone(), pod);
            ctx.track(uid, record.clone()).await;
            return mirror(pod, uid, record, ctx).await;
        }
        ctx.registry.clear_ambiguous(uid);
    }

    match ctx.provider.create(&built.spec).await {
        Ok(sandbox) => {
            tracing::info!(pod = %ObjectRef::from_obj(pod), sandbox = %sandbox.id, "sandbox created");
            ctx.metrics.sandboxes_created.inc();
            let note = format!(
                "created sandbox {} ({}) in subnet {}",
                sandbox.id, built.spec.name, node.subnet
            );
            if ctx.registry.is_deleted(uid) {
                // The pod went away while the create was in flight.
                tracing::info!(pod = %ObjectRef::from_obj(pod), sandbox = %sandbox.id, "the pod was deleted during the create; deleting its sandbox");
                ctx.provider.delete(&sandbox.id, Duration::ZERO).await?;
                ctx.metrics.sandboxes_deleted.inc();
                return Ok(Action::await_change());
            }
            let record = Record::new(sandbox, built.spec.name, node_name, pod);
            ctx.track(uid, record.clone()).await;
            ctx.events.pod(pod, false, events::SANDBOX_CREATED, note).await;
            mirror(pod, uid, record, ctx).await
        }
        Err(error) => on_create_error(pod, uid, ctx, error).await,
    }
}

/// Fetches what the pod references and builds its sandbox spec.
async fn build_spec<P: Provider>(
    pod: &Pod,
    node: &NodeView,
    claims: BTreeMap<String, ClaimStatus>,
    ctx: &Context<P>,
) -> Result<Result<spec::Built, spec::Problem>> {
    let capabilities = ctx.provider.capabilities();
    let needs = spec::needs(pod, capabilities);
    let refs = gather(pod, &ctx.client, &needs, claims).await?;
    let node_ip = ctx.node_ip();
    let setting = spec::Setting {
        cluster_id: &ctx.config.cluster_id,
        node,
        node_ip: &node_ip,
        apiserver: &ctx.apiserver,
        capabilities,
        node_cpu_millis: ctx.node_cpu_millis,
        node_memory_bytes: ctx.node_memory_bytes,
    };
    let mut built = spec::build(pod, &refs, &setting);
    // What was just read travels with the spec, so a provider never reads it a second time.
    if let Ok(built) = &mut built {
        built.spec.source = Some(Arc::new(SourceObjects {
            pod: pod.clone(),
            config_maps: refs.config_maps,
            secrets: refs.secrets,
        }));
    }
    Ok(built)
}

/// For providers that mount the projected service-account token: puts a fresh one into the
/// running sandbox every `--sa-token-refresh-interval`, and always well before the token
/// expires. Returns when to look again.
async fn refresh_token<P: Provider>(
    pod: &Pod,
    uid: &str,
    record: &Record,
    ctx: &Context<P>,
) -> Result<Option<Duration>> {
    let holds_token = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .any(spec::holds_token);
    if !ctx.provider.capabilities().service_account_token || !holds_token {
        return Ok(None);
    }
    let period = ctx
        .config
        .sa_token_refresh_interval
        .min(TOKEN_LIFETIME.mul_f64(0.8))
        .max(Duration::from_secs(1));
    let now = tokio::time::Instant::now();
    // A sandbox eklet just created has a fresh token; an adopted one's age is unknown.
    let due = match record.token_refresh_at {
        Some(at) => now >= at,
        None => record.adopted,
    };
    if !due {
        let at = record.token_refresh_at.unwrap_or(now + period);
        ctx.registry.update(uid, |r| r.token_refresh_at = Some(at));
        return Ok(Some(at.saturating_duration_since(now)));
    }
    // Only the token volumes, and only what they project: not the whole sandbox spec again.
    let refs = gather(pod, &ctx.client, &spec::token_needs(pod), BTreeMap::new()).await?;
    let volumes = match spec::token_volumes(pod, &refs) {
        Ok(volumes) => volumes,
        Err(problem) => {
            tracing::warn!(pod = %ObjectRef::from_obj(pod), ?problem, "cannot refresh the service-account token");
            return Ok(Some(CONFIG_RETRY));
        }
    };
    for volume in &volumes {
        ctx.provider.refresh_files(&record.sandbox_id, volume).await?;
    }
    ctx.registry
        .update(uid, |r| r.token_refresh_at = Some(now + period));
    Ok(Some(period))
}

/// The one place cloud failures turn into retries, pod reasons and events.
async fn on_create_error<P: Provider>(
    pod: &Pod,
    uid: &str,
    ctx: &Context<P>,
    error: provider::Error,
) -> Result<Action> {
    if error.maybe_executed {
        ctx.registry.mark_ambiguous(uid);
    }
    let message = format!("{}: {}", error.code, error.message);
    match error.kind {
        ErrorKind::Transient => {
            ctx.events
                .pod(
                    pod,
                    true,
                    events::SANDBOX_CREATE_RETRYING,
                    format!("{message}; retrying"),
                )
                .await;
            Err(error.into())
        }
        ErrorKind::SoldOut => {
            hold(pod, ctx, events::RESOURCES_SOLD_OUT, &message, true).await?;
            Ok(Action::requeue(SOLD_OUT_RETRY))
        }
        ErrorKind::Permanent | ErrorKind::NotFound | ErrorKind::Unsupported => {
            hold(pod, ctx, events::SANDBOX_CREATE_FAILED, &message, true).await?;
            Ok(Action::requeue(PERMANENT_RETRY))
        }
    }
}

/// A pod with a sandbox: reflect it, and act on timeouts and losses.
async fn mirror<P: Provider>(pod: &Pod, uid: &str, record: Record, ctx: &Context<P>) -> Result<Action> {
    ctx.registry.reset_attempts(uid);
    let node_ip = ctx.node_ip();
    let view = status::Mirror {
        sandbox: &record.observed,
        provider: ctx.provider.name(),
        reports_readiness: ctx.provider.capabilities().reports_readiness,
        node_ip: &node_ip,
        created_at: record.created_at,
    };
    if record.gone {
        let message = format!("the cloud sandbox {} no longer exists", record.sandbox_id);
        ctx.registry.remove(uid);
        fail(pod, ctx, events::SANDBOX_LOST, &message, Some(&view)).await?;
        return Ok(Action::await_change());
    }
    let timeout = ctx.config.wait_sandbox_running_timeout;
    let waited = record.created.elapsed();
    if !record.seen_running && record.observed.phase != SandboxPhase::Running && waited >= timeout {
        ctx.provider.delete(&record.sandbox_id, Duration::ZERO).await?;
        ctx.registry.remove(uid);
        ctx.metrics.sandboxes_deleted.inc();
        let message = format!(
            "sandbox {} was not running after {} (--wait-sandbox-running-timeout); it was deleted",
            record.sandbox_id,
            humanize(timeout)
        );
        fail(pod, ctx, events::SANDBOX_RUNNING_TIMEOUT, &message, Some(&view)).await?;
        return Ok(Action::await_change());
    }

    let desired = status::mirrored(pod, &view, Timestamp::now());
    write_status(pod, ctx, &desired).await?;

    let running = record.observed.phase == SandboxPhase::Running;
    if running && !record.announced_running {
        ctx.registry.update(uid, |r| r.announced_running = true);
        let ip = record.observed.ip.clone().unwrap_or_default();
        ctx.events
            .pod(
                pod,
                false,
                events::SANDBOX_RUNNING,
                format!("sandbox {} is running with IP {ip}", record.sandbox_id),
            )
            .await;
    }
    annotate(pod, &record, running, ctx).await?;
    if running && let Some(next) = refresh_token(pod, uid, &record, ctx).await? {
        return Ok(Action::requeue(next));
    }
    if running || record.observed.phase.is_terminal() {
        Ok(Action::await_change())
    } else {
        // The status loop wakes this pod when the sandbox changes; this is only the deadline.
        Ok(Action::requeue(
            timeout.saturating_sub(waited).max(Duration::from_secs(1)),
        ))
    }
}

/// The pod is being deleted: its sandbox goes first, then the Pod object.
async fn delete<P: Provider>(pod: &Pod, uid: &str, ctx: &Context<P>) -> Result<Action> {
    let grace = Duration::from_secs(
        pod.metadata
            .deletion_grace_period_seconds
            .unwrap_or(0)
            .max(0)
            .unsigned_abs(),
    );
    if let Some(record) = ctx.registry.get(uid) {
        if !record.gone {
            ctx.provider.delete(&record.sandbox_id, grace).await?;
            ctx.metrics.sandboxes_deleted.inc();
            tracing::info!(pod = %ObjectRef::from_obj(pod), sandbox = %record.sandbox_id, "sandbox deleted");
        }
    } else if ctx.registry.is_ambiguous(uid) {
        let name = SandboxName::for_pod(&ctx.config.cluster_id, uid);
        if let Some(sandbox) = ctx.provider.find(&name).await? {
            ctx.provider.delete(&sandbox.id, grace).await?;
            ctx.metrics.sandboxes_deleted.inc();
        }
    }
    ctx.registry.forget(uid);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => {}
        // Already gone, or the name now belongs to a new pod.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Attempts at deleting the sandbox of a pod that is gone, before the sweep is left to do it.
const GONE_ATTEMPTS: u32 = 5;

/// The pod is gone from the apiserver: deleted with no grace period (`--force`, or a
/// `terminationGracePeriodSeconds: 0` pod deleted by its controller), or at the end of a graceful
/// delete. No reconcile runs for an object that is no longer in the cache, so this is the one
/// place its sandbox is deleted at once, whatever its reconcile was doing.
pub async fn gone<P: Provider>(pod: &Pod, ctx: &Context<P>) {
    let Some(uid) = pod.uid() else {
        return;
    };
    let reference = ObjectRef::from_obj(pod);
    let known = match ctx.registry.pod_deleted(&uid) {
        (Some(record), _) if record.gone => return,
        (Some(record), _) => Some(record.sandbox_id),
        // A create that may have succeeded: look for what it made.
        (None, true) => None,
        (None, false) => return,
    };
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=GONE_ATTEMPTS {
        match delete_sandbox_of(&uid, known.as_deref(), ctx).await {
            Ok(Some(id)) => {
                ctx.metrics.sandboxes_deleted.inc();
                tracing::info!(pod = %reference, sandbox = %id, "sandbox deleted: its pod is gone");
                return;
            }
            Ok(None) => return,
            Err(error) if attempt < GONE_ATTEMPTS => {
                tracing::warn!(pod = %reference, %error, attempt, "cannot delete the sandbox of a deleted pod; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                tracing::warn!(pod = %reference, %error, "cannot delete the sandbox of a deleted pod; the orphan sweep will");
            }
        }
    }
}

/// Deletes sandbox `known`, or the one named for the pod; returns its id, or `None` when there
/// was nothing to delete.
async fn delete_sandbox_of<P: Provider>(
    uid: &str,
    known: Option<&str>,
    ctx: &Context<P>,
) -> Result<Option<String>, provider::Error> {
    let id = match known {
        Some(id) => id.to_owned(),
        None => match ctx
            .provider
            .find(&SandboxName::for_pod(&ctx.config.cluster_id, uid))
            .await?
        {
            Some(sandbox) => sandbox.id,
            None => return Ok(None),
        },
    };
    match ctx.provider.delete(&id, Duration::ZERO).await {
        Ok(()) => Ok(Some(id)),
        Err(error) if error.kind == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether eklet wrote a sandbox's state into this pod before.
fn had_sandbox(pod: &Pod, provider: &str) -> bool {
    let prefix = format!("{provider}://");
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.container_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(&prefix))
            })
        })
}

/// Keeps the pod Pending with `reason`; the Warning event is published when the pod first shows
/// this reason, so a reconcile that runs again tells nobody twice.
async fn hold<P: Provider>(
    pod: &Pod,
    ctx: &Context<P>,
    reason: &str,
    message: &str,
    warn: bool,
) -> Result<()> {
    let desired = status::held(pod, reason, message, &ctx.node_ip(), Timestamp::now());
    if write_status(pod, ctx, &desired).await? {
        tracing::info!(pod = %ObjectRef::from_obj(pod), reason, message, "pod held without a sandbox");
        ctx.metrics.refused(reason);
        if warn {
            ctx.events.pod(pod, true, reason, message).await;
        }
    }
    Ok(())
}

async fn fail<P: Provider>(
    pod: &Pod,
    ctx: &Context<P>,
    reason: &str,
    message: &str,
    last: Option<&status::Mirror<'_>>,
) -> Result<()> {
    let desired = status::failed(pod, reason, message, last, &ctx.node_ip(), Timestamp::now());
    if write_status(pod, ctx, &desired).await? {
        tracing::warn!(pod = %ObjectRef::from_obj(pod), reason, message, "pod failed");
        ctx.events.pod(pod, true, reason, message).await;
    }
    Ok(())
}

/// Writes the status if the pod shows something else; true when it wrote. The patch carries
/// the pod's UID, so it never lands on a new pod that took the name.
async fn write_status<P: Provider>(pod: &Pod, ctx: &Context<P>, desired: &PodStatus) -> Result<bool> {
    if !status::differs(pod.status.as_ref(), desired) {
        return Ok(false);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let mut body = status::patch(desired);
    body["metadata"] = serde_json::json!({ "uid": pod.uid() });
    match pods
        .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&body))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The annotations eklet owes a pod with a sandbox that it does not show yet: its billed size
/// ([`BilledSize::ANNOTATION`]) as soon as the provider reports one, and, once it runs, the low
/// deletion cost unless someone set one.
fn owed_annotations(pod: &Pod, record: &Record, running: bool) -> BTreeMap<&'static str, String> {
    let shown = pod.annotations();
    let mut owed = BTreeMap::new();
    if let Some(billed) = &record.observed.billed {
        let value = billed.annotation();
        if shown.get(BilledSize::ANNOTATION) != Some(&value) {
            owed.insert(BilledSize::ANNOTATION, value);
        }
    }
    if running && !shown.contains_key(POD_DELETION_COST) {
        owed.insert(POD_DELETION_COST, CLOUD_POD_DELETION_COST.to_owned());
    }
    owed
}

/// Writes the [`owed_annotations`] in one patch, conditional on the resourceVersion eklet read,
/// so a cost set meanwhile is never overwritten; the pod's next reconcile looks again.
async fn annotate<P: Provider>(pod: &Pod, record: &Record, running: bool, ctx: &Context<P>) -> Result<()> {
    let owed = owed_annotations(pod, record, running);
    if owed.is_empty() {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": {
            "uid": pod.uid(),
            "resourceVersion": pod.resource_version(),
            "annotations": owed,
        }
    });
    match pods
        .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Changed meanwhile (the next reconcile looks again) or gone.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The pod's claims and their volumes, for the eligibility rule and for cloud volumes.
async fn fetch_claims(pod: &Pod, client: &Client) -> Result<BTreeMap<String, ClaimStatus>> {
    let names = spec::claim_names(pod);
    let mut claims = BTreeMap::new();
    if names.is_empty() {
        return Ok(claims);
    }
    let namespace = pod.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in names {
        let claim = pvcs.get_opt(&name).await?;
        let volume_name = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.clone());
        let volume = match volume_name.filter(|n| !n.is_empty()) {
            Some(volume) => pvs.get_opt(&volume).await?.map(Arc::new),
            None => None,
        };
        claims.insert(name, ClaimStatus::of(claim.as_ref(), |_| volume));
    }
    Ok(claims)
}

/// Fetches what the pod references; absent objects are left out for [`spec::build`] to judge.
async fn gather(
    pod: &Pod,
    client: &Client,
    needs: &spec::Needs,
    claims: BTreeMap<String, ClaimStatus>,
) -> Result<spec::References> {
    let namespace = pod.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut refs = spec::References {
        claims,
        ..spec::References::default()
    };
    for name in &needs.config_maps {
        if let Some(object) = config_maps.get_opt(name).await? {
            refs.config_maps.insert(name.clone(), object);
        }
    }
    for name in &needs.secrets {
        if let Some(object) = secrets.get_opt(name).await? {
            refs.secrets.insert(name.clone(), object);
        }
    }
    if needs.token {
        refs.token = Some(request_token(pod, client).await?);
    }
    Ok(refs)
}

/// A token for the pod's service account, bound to the pod so it dies with it.
async fn request_token(pod: &Pod, client: &Client) -> Result<spec::IssuedToken> {
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.uid(),
            }),
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await?;
    let token = issued.status.and_then(|s| s.token).unwrap_or_default();
    Ok(spec::IssuedToken {
        token,
        expires_in: TOKEN_LIFETIME,
    })
}

fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod machine_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_the_flag_is_written() {
        assert_eq!(humanize(Duration::from_secs(86_400)), "24h");
        assert_eq!(humanize(Duration::from_secs(90)), "90s");
        assert_eq!(humanize(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn the_cloud_deletion_cost_is_below_the_default_of_local_pods() {
        let cost: i32 = CLOUD_POD_DELETION_COST.parse().unwrap_or(0);
        assert!(cost < 0);
    }
}
