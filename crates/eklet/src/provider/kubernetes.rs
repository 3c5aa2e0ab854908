//! The `kubernetes` provider: sandboxes are pods in another (target) cluster reached through
//! `--target-kubeconfig` — a TKE Serverless cluster, super nodes behind Direct Connect, any
//! conformant cluster.
//!
//! A sandbox is a target pod named like every sandbox (`eklet-<cluster-id>-<pod-uid>`) and
//! labelled with the cluster id and the IDC pod UID, in a target namespace per IDC namespace
//! (`<cluster-id>-<ns>`) or one fixed namespace; its id is `namespace/name`. The pod is the IDC
//! pod translated ([`translate`]) and is created held by a scheduling gate until the per-pod
//! copies of its ConfigMaps and Secrets and the Secret with its IDC service-account token
//! exist, all owned by the pod so the target's garbage collector removes them with it. The pod
//! and the objects are translated from what eklet read for the create ([`SandboxSpec::source`]);
//! this provider never calls the IDC's apiserver. Copies follow their IDC sources ([`copies`]):
//! eklet watches the sources' versions and reads one again only when a copy is behind it.
//! Status comes from one watch of the target ([`cache`]) and is pushed to eklet as it changes
//! ([`Provider::notifier`]); `describe` reads the cache and makes no API call. A target that
//! cannot be reached leaves the last known states in place, so nothing is failed or evicted for
//! it. Logs and events come from the target's API, usage from its metrics API.
//!
//! [`SandboxSpec::source`]: super::SandboxSpec::source

pub mod cache;
pub mod copies;
pub mod streams;
pub mod translate;

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::mpsc, task::JoinHandle};

use self::{
    cache::{Change, PodCache, TargetPod},
    copies::{Copies, Holder},
    translate::{Namespaces, Object, Placement, Settings},
};
use super::{
    Capabilities, ContainerStats, Error, ErrorKind, ExitStatus, GuardedStream, LogOptions, PortStream,
    ProbeKind, Provider, Result, Sandbox, SandboxChange, SandboxEvent, SandboxName, SandboxStats, Source,
    SourceObject, StatsTarget, StreamIo, VolumeKind, VolumeSource, VolumeSpec,
};
use crate::quantity;

/// A call to either apiserver that has not answered in this long is treated as failed (it may
/// still have been executed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `list` waits for the first list of the target before it reports failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The most `delete` waits for the target pod to finish terminating.
const DELETE_WAIT_MAX: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "eklet";
/// A failed copy is retried after this long.
const COPY_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--provider kubernetes needs --target-kubeconfig")]
    NoKubeconfig,
    #[error("--target-kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// The flags of `--provider kubernetes`, flattened into eklet's.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "kubernetes_flags")]
#[command(next_help_heading = "Provider kubernetes")]
pub struct Flags {
    /// Kubeconfig of the cluster pods burst into with --provider kubernetes.
    #[arg(long, required_if_eq("provider", "kubernetes"))]
    pub target_kubeconfig: Option<PathBuf>,

    /// Put every target pod into this one namespace of the target cluster; by default each
    /// namespace NS gets its own target namespace <cluster-id>-NS.
    #[arg(long)]
    pub target_namespace: Option<String>,

    /// A node selector of target pods, KEY=VALUE; VALUE may contain {zone} and {subnet}, the
    /// virtual node's. Repeatable.
    #[arg(long = "target-node-selector", value_name = "KEY=VALUE")]
    pub target_node_selectors: Vec<String>,

    /// A toleration of target pods, KEY[=VALUE][:EFFECT]. Repeatable.
    #[arg(long = "target-toleration", value_name = "KEY[=VALUE][:EFFECT]")]
    pub target_tolerations: Vec<String>,

    /// An annotation of target pods, KEY=VALUE with the placeholders of --target-node-selector.
    /// Repeatable.
    #[arg(long = "target-pod-annotation", value_name = "KEY=VALUE")]
    pub target_pod_annotations: Vec<String>,

    /// Scheduler of target pods; default: the target cluster's default scheduler.
    #[arg(long)]
    pub target_scheduler_name: Option<String>,

    /// Copy pod labels to target pods (lets target Services select them; a target ReplicaSet
    /// with a matching selector would adopt them).
    #[arg(long, default_value_t = false)]
    pub target_keep_labels: bool,
}

/// Reads the `--target-*` flags; `cluster_id` names target pods and namespaces.
pub fn settings_from_flags(args: &Flags, cluster_id: &str) -> Result<Settings, SetupError> {
    let invalid = |flag: &'static str, value: &str, reason: &str| SetupError::Invalid {
        flag,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let cluster_id = cluster_id.trim().to_owned();
    // It names target pods and namespaces and is a label value.
    if !is_dns_label(&cluster_id) {
        return Err(invalid(
            "--cluster-id",
            &cluster_id,
            "the kubernetes provider needs lowercase letters, digits and '-' (at most 63, no '-' at the ends)",
        ));
    }
    let namespaces = match args.target_namespace.as_deref().map(str::trim) {
        None => Namespaces::PerSource,
        Some(name) if is_dns_label(name) => Namespaces::Fixed(name.to_owned()),
        Some(name) => return Err(invalid("--target-namespace", name, "not a valid namespace name")),
    };
    let node_selector = args
        .target_node_selectors
        .iter()
        .map(|s| translate::parse_pair(s).map_err(|e| invalid("--target-node-selector", s, &e)))
        .collect::<Result<Vec<_>, _>>()?;
    let annotations = args
        .target_pod_annotations
        .iter()
        .map(|s| translate::parse_pair(s).map_err(|e| invalid("--target-pod-annotation", s, &e)))
        .collect::<Result<Vec<_>, _>>()?;
    let tolerations = args
        .target_tolerations
        .iter()
        .map(|s| translate::parse_toleration(s).map_err(|e| invalid("--target-toleration", s, &e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        cluster_id,
        namespaces,
        node_selector,
        tolerations,
        annotations,
        scheduler_name: args
            .target_scheduler_name
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        keep_labels: args.target_keep_labels,
    })
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

struct Shared {
    target: Client,
    /// The target too, for exec, attach and port-forward.
    streaming: Client,
    settings: Settings,
    cache: PodCache,
    copies: Copies,
    namespaces: Mutex<HashSet<String>>,
    /// Where the target watch pushes sandbox changes: eklet's leader of the current term.
    notifier: Mutex<Option<mpsc::UnboundedSender<SandboxChange>>>,
}

impl Shared {
    fn push(&self, change: SandboxChange) {
        if let Some(notifier) = &*self.notifier.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = notifier.send(change);
        }
    }
}

/// Background tasks, stopped with the provider.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Pods in a target cluster.
pub struct KubernetesProvider {
    shared: Arc<Shared>,
    capabilities: Capabilities,
    tasks: OnceLock<Tasks>,
}

impl KubernetesProvider {
    /// From its flags.
    pub async fn from_flags(args: &Flags, cluster_id: &str) -> Result<KubernetesProvider, SetupError> {
        let settings = settings_from_flags(args, cluster_id)?;
        let path = args.target_kubeconfig.clone().ok_or(SetupError::NoKubeconfig)?;
        let kubeconfig_error = |message: String| SetupError::Kubeconfig {
            path: path.clone(),
            message,
        };
        let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| kubeconfig_error(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| kubeconfig_error(e.to_string()))?;
        // Through a proxy, kube's own client: it knows how to reach one, ours does not.
        let streaming = match config.proxy_url {
            None => Some(streams::client(&config).map_err(|e| kubeconfig_error(e.to_string()))?),
            Some(_) => None,
        };
        let target = Client::try_from(config).map_err(|e| kubeconfig_error(e.to_string()))?;
        let streaming = streaming.unwrap_or_else(|| target.clone());
        Ok(KubernetesProvider::with_streaming_client(
            target, streaming, settings,
        ))
    }

    pub fn new(target: Client, settings: Settings) -> KubernetesProvider {
        KubernetesProvider::with_streaming_client(target.clone(), target, settings)
    }

    /// Opens exec, attach and port-forward with `streaming` (see [`streams::client`]), a client of
    /// the same target.
    pub fn with_streaming_client(
        target: Client,
        streaming: Client,
        settings: Settings,
    ) -> KubernetesProvider {
        KubernetesProvider {
            shared: Arc::new(Shared {
                streaming,
                target,
                settings,
                cache: PodCache::default(),
                copies: Copies::default(),
                namespaces: Mutex::default(),
                notifier: Mutex::default(),
            }),
            capabilities: Capabilities {
                volumes: vec![VolumeKind::Nfs, VolumeKind::EmptyDir, VolumeKind::Files],
                service_account_token: true,
                probes: vec![
                    ProbeKind::Exec,
                    ProbeKind::HttpGet,
                    ProbeKind::TcpSocket,
                    ProbeKind::Grpc,
                ],
                startup_probe: true,
                reports_readiness: true,
                logs: true,
                stats: true,
                // The target kubelet resolves the fieldRef the translated pod keeps (VK#998).
                resolves_pod_ip: true,
                exec: true,
                attach: true,
                port_forward: true,
            },
            tasks: OnceLock::new(),
        }
    }

    /// Starts the target watch on first use, so a standby eklet (which never calls the
    /// provider) watches nothing.
    fn start(&self) {
        self.tasks
            .get_or_init(|| Tasks(vec![tokio::spawn(watch_target_pods(self.shared.clone()))]));
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.shared.target.clone(), namespace)
    }

    /// Pods of `namespace` for exec, attach and port-forward.
    fn streaming_pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.shared.streaming.clone(), namespace)
    }

    /// Pods of this cluster everywhere they can be: one namespace, or all.
    fn scope(&self) -> Api<Pod> {
        match &self.shared.settings.namespaces {
            Namespaces::Fixed(name) => self.pods(name),
            Namespaces::PerSource => Api::all(self.shared.target.clone()),
        }
    }

    async fn ensure_namespace(&self, name: &str, source: &str) -> Result<()> {
        const ACTION: &str = "CreateNamespace";
        if self
            .shared
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
        {
            return Ok(());
        }
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    [(
                        translate::LABEL_CLUSTER.to_owned(),
                        self.shared.settings.cluster_id.clone(),
                    )]
                    .into(),
                ),
                annotations: Some(
                    [(
                        translate::ANNOTATION_SOURCE_NAMESPACE.to_owned(),
                        source.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let api: Api<Namespace> = Api::all(self.shared.target.clone());
        match call(ACTION, api.create(&PostParams::default(), &namespace)).await {
            Ok(_) => {}
            Err(e) if e.code == "AlreadyExists" => {}
            // A fixed namespace the operator made, with eklet allowed only inside it.
            Err(e)
                if e.code == "Forbidden"
                    && matches!(self.shared.settings.namespaces, Namespaces::Fixed(_)) => {}
            Err(e) => return Err(e),
        }
        self.shared
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned());
        Ok(())
    }

    /// Creates the objects, registers the copies and lets the pod be scheduled.
    async fn complete(&self, plan: &translate::Plan, holder: &Holder) -> Result<()> {
        for object in &plan.objects {
            apply(
                &self.shared.target,
                &holder.namespace,
                object.clone().owned_by(&holder.name, &holder.uid),
            )
            .await?;
        }
        let source_namespace = plan
            .pod
            .annotations()
            .get(translate::ANNOTATION_POD)
            .and_then(|p| p.split_once('/'))
            .map(|(ns, _)| ns.to_owned())
            .unwrap_or_default();
        let versions: BTreeMap<_, _> = plan.copied.iter().cloned().collect();
        self.shared.copies.hold(
            holder,
            plan.references.iter().map(|r| {
                // An object the IDC does not have (yet) counts as copied at "no version".
                let version = versions.get(r).cloned().unwrap_or_default();
                (copies::source(&source_namespace, r), Some(version))
            }),
        );
        let ungate = serde_json::json!({ "spec": { "schedulingGates": null } });
        call(
            "UngatePod",
            self.pods(&holder.namespace)
                .patch(&holder.name, &PatchParams::default(), &Patch::Merge(&ungate)),
        )
        .await?;
        Ok(())
    }

    /// Removes a gated pod left by a crashed create; it never ran.
    async fn remove_stale(&self, pod: &TargetPod) {
        tracing::info!(pod = %pod.id, "deleting a target pod whose create did not complete");
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(error) = call("DeletePod", self.pods(&pod.namespace).delete(&pod.name, &params)).await {
            tracing::warn!(pod = %pod.id, %error, "cannot delete an incomplete target pod");
        }
    }

    fn parse_id<'a>(&self, action: &'static str, id: &'a str) -> Result<(&'a str, &'a str)> {
        translate::parse_sandbox_id(id).ok_or_else(|| Error {
            action,
            kind: ErrorKind::NotFound,
            code: "InvalidSandboxId".into(),
            message: format!("{id:?} is not a target pod id (namespace/name)"),
            maybe_executed: false,
        })
    }
}

/// Server-side apply as eklet, which owns every field it writes.
async fn apply(client: &Client, namespace: &str, object: Object) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = object.name().to_owned();
    match object {
        Object::ConfigMap(cm) => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            call("ApplyConfigMap", api.patch(&name, &params, &Patch::Apply(&cm))).await?;
        }
        Object::Secret(secret) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            call("ApplySecret", api.patch(&name, &params, &Patch::Apply(&secret))).await?;
        }
    }
    Ok(())
}

/// Runs one apiserver call with a deadline and classifies its failure.
async fn call<T>(action: &'static str, request: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(classify(action, error)),
        Err(_) => Err(Error {
            action,
            kind: ErrorKind::Transient,
            code: "Timeout".into(),
            message: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            maybe_executed: true,
        }),
    }
}

/// The one place apiserver failures become provider error kinds.
fn classify(action: &'static str, error: kube::Error) -> Error {
    let kube::Error::Api(status) = error else {
        // Connection refused, TLS, a broken stream: the target is unreachable for now.
        return Error {
            action,
            kind: ErrorKind::Transient,
            code: "TargetUnreachable".into(),
            message: error.to_string(),
            maybe_executed: true,
        };
    };
    let code = if status.reason.is_empty() {
        format!("HTTP{}", status.code)
    } else {
        status.reason.clone()
    };
    let message = status.message.clone();
    let (kind, maybe_executed) = match status.code {
        404 => (ErrorKind::NotFound, false),
        409 | 410 => (ErrorKind::Transient, true),
        429 => (ErrorKind::Transient, false),
        500..=599 => (ErrorKind::Transient, true),
        // A new namespace's default ServiceAccount appears a moment after the namespace.
        403 if message.contains("error looking up service account") => (ErrorKind::Transient, false),
        403 if message.contains("exceeded quota") => (ErrorKind::SoldOut, false),
        _ => (ErrorKind::Permanent, false),
    };
    Error {
        action,
        kind,
        code,
        message,
        maybe_executed,
    }
}

/// Keeps the pod cache, pushes every change to eklet and tells the copies which pods come and
/// go.
async fn watch_target_pods(shared: Arc<Shared>) {
    let api: Api<Pod> = match &shared.settings.namespaces {
        Namespaces::Fixed(name) => Api::namespaced(shared.target.clone(), name),
        Namespaces::PerSource => Api::all(shared.target.clone()),
    };
    let config = watcher::Config::default().labels(&shared.settings.cluster_selector());
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut failing = false;
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(event) => {
                if failing {
                    tracing::info!("the target cluster's pod watch is back");
                    failing = false;
                }
                match event {
                    watcher::Event::Init => {
                        shared.cache.relist_started();
                        Change::default()
                    }
                    watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                        let change = shared.cache.apply(&pod);
                        if let Some(target) = TargetPod::of(&pod) {
                            shared.push(SandboxChange::Observed(target.sandbox));
                        }
                        change
                    }
                    watcher::Event::InitDone => shared.cache.relist_done(),
                    watcher::Event::Delete(pod) => shared.cache.delete(&pod),
                }
            }
            Err(error) => {
                // The last known states stay: pods are neither failed nor evicted for this.
                if !failing {
                    tracing::warn!(%error, "the target's pod watch failed; keeping the last known states");
                }
                failing = true;
                Change::default()
            }
        };
        for pod in change.seen {
            let Some(namespace) = pod.source_namespace.clone() else {
                continue;
            };
            let holder = Holder {
                id: pod.id.clone(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                source_uid: pod.source_uid.clone(),
            };
            shared.copies.hold(
                &holder,
                pod.copies.iter().map(|r| (copies::source(&namespace, r), None)),
            );
        }
        for pod in change.removed {
            shared.copies.release(&pod.id);
            shared.push(SandboxChange::Gone(pod.id));
        }
    }
}

/// Rewrites the copies of `source` that are behind the version eklet just read.
async fn copy_once(shared: &Shared, source: &Source, object: Option<&SourceObject>) -> Result<()> {
    // Deleted in the IDC: the copies keep the last content, as a kubelet keeps mounted files.
    let Some(object) = object else {
        shared.copies.done(source);
        return Ok(());
    };
    let version = object.resource_version().unwrap_or_default().to_owned();
    for holder in shared.copies.take(source, &version) {
        if shared.cache.is_synced() && shared.cache.get(&holder.id).is_none() {
            shared.copies.release(&holder.id);
            continue;
        }
        let at = Placement {
            cluster_id: &shared.settings.cluster_id,
            namespace: &holder.namespace,
            sandbox: &holder.name,
            pod_uid: &holder.source_uid,
        };
        let copy = match object {
            SourceObject::ConfigMap(cm) => translate::copy_config_map(cm, &at),
            SourceObject::Secret(secret) => translate::copy_secret(secret, &at),
        };
        apply(
            &shared.target,
            &holder.namespace,
            copy.owned_by(&holder.name, &holder.uid),
        )
        .await?;
        shared.copies.copied(source, &holder.id, &version);
        tracing::debug!(pod = %holder.id, source = %source.name, %version, "target copy updated");
    }
    Ok(())
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn create(&self, spec: &super::SandboxSpec) -> Result<Sandbox> {
        const ACTION: &str = "CreatePod";
        self.start();
        // The pod and its objects as eklet read them for this create: never read twice.
        let fetched = spec.source.as_deref().ok_or_else(|| Error {
            action: ACTION,
            kind: ErrorKind::Permanent,
            code: "NoSourceObjects".into(),
            message: format!(
                "the spec of pod {}/{} came without the objects it was built from",
                spec.pod.namespace, spec.pod.name
            ),
            maybe_executed: false,
        })?;
        let plan = translate::plan(spec, fetched, &self.shared.settings).map_err(|problem| Error {
            action: ACTION,
            kind: ErrorKind::Permanent,
            code: match problem {
                translate::Problem::Unsupported(_) => "UnsupportedByProvider".into(),
                translate::Problem::Invalid(_) => "InvalidPod".into(),
            },
            message: problem.to_string(),
            maybe_executed: false,
        })?;
        let namespace = self.shared.settings.namespace_for(&spec.pod.namespace);
        self.ensure_namespace(&namespace, &spec.pod.namespace).await?;

        let name = spec.name.as_str();
        let id = translate::sandbox_id(&namespace, name);
        self.shared.cache.creating(&id);
        let created = match call(
            ACTION,
            self.pods(&namespace).create(&PostParams::default(), &plan.pod),
        )
        .await
        {
            Ok(created) => created,
            Err(mut error) => {
                self.shared.cache.abandoned(&id);
                if error.kind == ErrorKind::NotFound {
                    // The namespace was deleted since eklet made it: make it again next time.
                    self.shared
                        .namespaces
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&namespace);
                    error.kind = ErrorKind::Transient;
                }
                return Err(error);
            }
        };
        let holder = Holder {
            id: id.clone(),
            namespace: namespace.clone(),
            name: name.to_owned(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            source_uid: spec.pod.uid.clone(),
        };
        if let Err(mut error) = self.complete(&plan, &holder).await {
            // The pod is still gated, so nothing ran; take it back so the retry starts clean.
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let removed = call("DeletePod", self.pods(&namespace).delete(name, &params)).await;
            self.shared.copies.release(&id);
            self.shared.cache.abandoned(&id);
            error.maybe_executed = removed.is_err_and(|e| e.kind != ErrorKind::NotFound);
            return Err(error);
        }
        let mut sandbox = cache::sandbox(&created);
        sandbox.id = id;
        self.shared.cache.created(&sandbox);
        Ok(sandbox)
    }

    async fn delete(&self, id: &str, grace: Duration) -> Result<()> {
        const ACTION: &str = "DeletePod";
        self.start();
        let (namespace, name) = match self.parse_id(ACTION, id) {
            Ok(parts) => parts,
            Err(_) => return Ok(()),
        };
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        match call(ACTION, self.pods(namespace).delete(name, &params)).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.shared.cache.abandoned(id);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.shared.cache.abandoned(id);
        // The IDC pod stays Terminating while the target pod terminates, as it would on a node.
        if self.shared.cache.is_synced() {
            let wait = grace.min(DELETE_WAIT_MAX) + Duration::from_secs(5);
            if !self.shared.cache.wait_gone(id, wait).await {
                tracing::info!(pod = %id, "target pod still terminating; the target finishes it");
            }
        }
        Ok(())
    }

    async fn describe(&self, ids: &[String]) -> Result<Vec<Sandbox>> {
        self.start();
        if !self.shared.cache.is_synced() {
            return Err(Error {
                action: "DescribePods",
                kind: ErrorKind::Transient,
                code: "TargetNotSynced".into(),
                message: "the target cluster has not been listed yet".into(),
                maybe_executed: false,
            });
        }
        Ok(self.shared.cache.describe(ids))
    }

    async fn find(&self, name: &SandboxName) -> Result<Option<Sandbox>> {
        const ACTION: &str = "ListPods";
        self.start();
        let cluster_id = &self.shared.settings.cluster_id;
        let Some(uid) = translate::pod_uid_of(cluster_id, name.as_str()) else {
            return Ok(None);
        };
        let params = ListParams::default().labels(&format!(
            "{},{}={uid}",
            self.shared.settings.cluster_selector(),
            translate::LABEL_POD_UID
        ));
        let found = call(ACTION, self.scope().list(&params)).await?;
        for pod in &found.items {
            let Some(target) = TargetPod::of(pod) else {
                continue;
            };
            if target.name != name.as_str() {
                continue;
            }
            if self.shared.cache.is_stale_gate(&target) {
                self.remove_stale(&target).await;
                continue;
            }
            if target.deleting {
                return Err(Error {
                    action: ACTION,
                    kind: ErrorKind::Transient,
                    code: "SandboxTerminating".into(),
                    message: format!("target pod {} is still terminating", target.id),
                    maybe_executed: false,
                });
            }
            return Ok(Some(target.sandbox));
        }
        Ok(None)
    }

    async fn list(&self, cluster_id: &str) -> Result<Vec<Sandbox>> {
        self.start();
        if !self.shared.cache.wait_synced(SYNC_TIMEOUT).await {
            return Err(Error {
                action: "ListPods",
                kind: ErrorKind::Transient,
                code: "TargetNotSynced".into(),
                message: format!(
                    "the target cluster could not be listed within {}s",
                    SYNC_TIMEOUT.as_secs()
                ),
                maybe_executed: false,
            });
        }
        let mut sandboxes = Vec::new();
        for pod in self.shared.cache.all() {
            if translate::pod_uid_of(cluster_id, &pod.name).is_none() {
                continue;
            }
            if self.shared.cache.is_stale_gate(&pod) {
                self.remove_stale(&pod).await;
                continue;
            }
            sandboxes.push(pod.sandbox);
        }
        Ok(sandboxes)
    }

    async fn refresh_files(&self, id: &str, volume: &VolumeSpec) -> Result<()> {
        const ACTION: &str = "ApplySecret";
        self.start();
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let VolumeSource::Files { files, mode } = &volume.source else {
            return Ok(());
        };
        let owner_uid = match self.shared.cache.get(id) {
            Some(pod) => pod.uid,
            None => call("GetPod", self.pods(namespace).get(name))
                .await?
                .metadata
                .uid
                .unwrap_or_default(),
        };
        let source_uid = translate::pod_uid_of(&self.shared.settings.cluster_id, name).unwrap_or_default();
        let at = Placement {
            cluster_id: &self.shared.settings.cluster_id,
            namespace,
            sandbox: name,
            pod_uid: &source_uid,
        };
        let (secret, _) = translate::files_secret(&volume.name, files, *mode, &at);
        apply(&self.shared.target, namespace, secret.owned_by(name, &owner_uid)).await
    }

    async fn exec(
        &self,
        id: &str,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> Result<ExitStatus> {
        const ACTION: &str = "ExecPod";
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let params = streams::params(container, &io);
        // The opening is most of what eklet adds to an exec (a TLS connection and an upgrade
        // through the target's apiserver): logged, so the latency can be taken apart.
        let started = tokio::time::Instant::now();
        let process = call(
            ACTION,
            self.streaming_pods(namespace).exec(name, command, &params),
        )
        .await?;
        let opened = started.elapsed();
        let status = streams::relay(process, io).await;
        tracing::debug!(sandbox = id, ?opened, total = ?started.elapsed(), "target exec done");
        Ok(status)
    }

    async fn attach(&self, id: &str, container: &str, io: StreamIo) -> Result<()> {
        const ACTION: &str = "AttachPod";
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let params = streams::params(container, &io);
        let process = call(ACTION, self.streaming_pods(namespace).attach(name, &params)).await?;
        streams::relay(process, io).await;
        Ok(())
    }

    async fn port_forward(&self, id: &str, port: u16) -> Result<PortStream> {
        const ACTION: &str = "PortForwardPod";
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let mut forwarder = call(ACTION, self.streaming_pods(namespace).portforward(name, &[port])).await?;
        let stream = forwarder.take_stream(port).ok_or_else(|| Error {
            action: ACTION,
            kind: ErrorKind::Transient,
            code: "NoStream".into(),
            message: format!("the target gave no stream for port {port} of {id}"),
            maybe_executed: false,
        })?;
        // The target connection closes when the stream is dropped.
        Ok(Box::new(GuardedStream::new(stream, move || forwarder.abort())))
    }

    fn notifier(&self) -> Option<mpsc::UnboundedReceiver<SandboxChange>> {
        let (notifier, changes) = mpsc::unbounded_channel();
        *self.shared.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
        self.start();
        Some(changes)
    }

    fn followed_sources(&self) -> Option<mpsc::UnboundedReceiver<Source>> {
        Some(self.shared.copies.subscribe())
    }

    fn source_version(&self, source: Source, version: String) {
        self.shared.copies.source_is(source, version);
    }

    async fn source_read(&self, source: &Source, object: Option<SourceObject>) {
        if let Err(error) = copy_once(&self.shared, source, object.as_ref()).await {
            let what = format!("{}/{}/{}", source.kind.as_str(), source.namespace, source.name);
            tracing::warn!(%error, source = %what, "updating target copies failed; retrying");
            self.shared.copies.done(source);
            let (shared, source) = (self.shared.clone(), source.clone());
            tokio::spawn(async move {
                tokio::time::sleep(COPY_RETRY).await;
                shared.copies.retry(&source);
            });
        }
    }

    async fn logs(&self, id: &str, container: &str, options: &LogOptions) -> Result<String> {
        const ACTION: &str = "ReadPodLog";
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let params = LogParams {
            container: Some(container.to_owned()),
            follow: false,
            limit_bytes: options.limit_bytes.and_then(|b| i64::try_from(b).ok()),
            pretty: false,
            previous: options.previous,
            // The API takes one of the two.
            since_seconds: options
                .since_seconds
                .filter(|_| options.since_time.is_none())
                .and_then(|s| i64::try_from(s).ok()),
            since_time: options.since_time,
            tail_lines: options.tail_lines.and_then(|t| i64::try_from(t).ok()),
            timestamps: options.timestamps,
        };
        match call(ACTION, self.pods(namespace).logs(name, &params)).await {
            // The pod exists but the target's node cannot serve its log (a virtual node of its
            // own, no kubelet endpoint): a refusal to show the user, not a missing pod.
            Err(e)
                if e.kind == ErrorKind::NotFound
                    && !e.message.contains(&format!("pods \"{name}\" not found")) =>
            {
                Err(Error {
                    kind: ErrorKind::Permanent,
                    code: "TargetLogsUnavailable".into(),
                    message: format!(
                        "the target cluster cannot serve this log: {} {}",
                        e.code, e.message
                    ),
                    ..e
                })
            }
            other => other,
        }
    }

    async fn events(&self, id: &str) -> Result<Vec<SandboxEvent>> {
        const ACTION: &str = "ListEvents";
        let (namespace, name) = self.parse_id(ACTION, id)?;
        let api: Api<Event> = Api::namespaced(self.shared.target.clone(), namespace);
        let params =
            ListParams::default().fields(&format!("involvedObject.kind=Pod,involvedObject.name={name}"));
        let mut events = call(ACTION, api.list(&params)).await?.items;
        let when = |e: &Event| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        };
        events.sort_by_key(|e| std::cmp::Reverse(when(e)));
        Ok(events
            .into_iter()
            .map(|e| SandboxEvent {
                reason: e.reason.unwrap_or_default(),
                message: e.message.unwrap_or_default(),
                warning: e.type_.as_deref() == Some("Warning"),
                count: e.count.and_then(|c| u32::try_from(c).ok()).unwrap_or(1),
            })
            .collect())
    }

    async fn stats(&self, targets: &[StatsTarget]) -> Result<Vec<SandboxStats>> {
        const ACTION: &str = "ListPodMetrics";
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let resource = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let wanted: HashSet<&str> = ids.iter().copied().collect();
        let namespaces: HashSet<&str> = ids
            .iter()
            .filter_map(|id| translate::parse_sandbox_id(id).map(|(ns, _)| ns))
            .collect();
        let params = ListParams::default().labels(&self.shared.settings.cluster_selector());
        let mut stats = Vec::new();
        for namespace in namespaces {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.shared.target.clone(), namespace, &resource);
            let listed = match call(ACTION, api.list(&params)).await {
                Ok(listed) => listed,
                Err(e) if e.kind == ErrorKind::NotFound => {
                    return Err(Error {
                        kind: ErrorKind::Unsupported,
                        code: "MetricsUnavailable".into(),
                        message:
                            "the target cluster serves no metrics.k8s.io API (install metrics-server there)"
                                .into(),
                        ..e
                    });
                }
                Err(e) => return Err(e),
            };
            for item in listed.items {
                let id = translate::sandbox_id(namespace, item.metadata.name.as_deref().unwrap_or_default());
                if wanted.contains(id.as_str()) {
                    stats.push(usage(id, &item.data));
                }
            }
        }
        Ok(stats)
    }
}

/// One PodMetrics object as usage: a rate over the target's window, no counter.
fn usage(id: String, data: &serde_json::Value) -> SandboxStats {
    let time = data["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or_else(Timestamp::now);
    let containers = data["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let read = |key: &str, scale: f64| {
                c["usage"][key]
                    .as_str()
                    .and_then(|q| quantity::parse(q).ok())
                    .map_or(0, |v| (v * scale).round() as u64)
            };
            ContainerStats {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                cpu_nano_cores: read("cpu", 1e9),
                cpu_core_nano_seconds: None,
                memory_working_set_bytes: read("memory", 1.0),
            }
        })
        .collect();
    SandboxStats { id, time, containers }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    use crate::{config::Args, provider::ProviderKind};

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "eklet",
            "--subnet",
            "subnet-a=ap-guangzhou-3",
            "--cluster-id",
            "idc-1",
            "--provider",
            "kubernetes",
            "--target-kubeconfig",
            "/dev/null",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_kubernetes_provider_needs_no_cloud_flags_but_a_target_kubeconfig() {
        let parsed = args(&[]);
        assert_eq!(parsed.provider, ProviderKind::Kubernetes);
        let missing = Args::try_parse_from([
            "eklet",
            "--subnet",
            "s=z",
            "--cluster-id",
            "c",
            "--provider",
            "kubernetes",
        ]);
        assert!(missing.unwrap_err().to_string().contains("--target-kubeconfig"));
        let tencent = Args::try_parse_from(["eklet", "--subnet", "s=z", "--cluster-id", "c"]);
        assert!(tencent.unwrap_err().to_string().contains("--region"));
    }

    #[test]
    fn target_flags_become_settings_and_bad_ones_are_named() {
        let parsed = args(&[
            "--target-namespace",
            "burst",
            "--target-node-selector",
            "topology.kubernetes.io/zone={zone}",
            "--target-toleration",
            "eks.tke.cloud.tencent.com/eklet:NoSchedule",
            "--target-scheduler-name",
            "serverless",
        ]);
        let settings =
            settings_from_flags(&parsed.kubernetes, &parsed.cluster_id).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.namespaces, Namespaces::Fixed("burst".into()));
        assert_eq!(settings.node_selector.len(), 1);
        assert_eq!(settings.scheduler_name.as_deref(), Some("serverless"));
        let flags = |extra: &[&str]| args(extra).kubernetes;
        let bad =
            settings_from_flags(&flags(&["--target-namespace", "Not_A_Namespace"]), "idc-1").unwrap_err();
        assert!(bad.to_string().contains("--target-namespace"), "{bad}");
        let bad = settings_from_flags(&flags(&["--target-toleration", "k:Always"]), "idc-1").unwrap_err();
        assert!(bad.to_string().contains("--target-toleration"), "{bad}");
        assert!(
            settings_from_flags(&flags(&[]), "IDC-1")
                .unwrap_err()
                .to_string()
                .contains("--cluster-id")
        );
    }

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn apiserver_failures_map_to_retries_capacity_and_refusals() {
        let kind = |e: kube::Error| classify("CreatePod", e).kind;
        assert_eq!(kind(status(404, "NotFound", "")), ErrorKind::NotFound);
        assert_eq!(kind(status(429, "TooManyRequests", "")), ErrorKind::Transient);
        assert_eq!(kind(status(503, "ServiceUnavailable", "")), ErrorKind::Transient);
        assert_eq!(
            kind(status(422, "Invalid", "spec.containers: Required value")),
            ErrorKind::Permanent
        );
        assert_eq!(
            kind(status(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: exceeded quota: burst"
            )),
            ErrorKind::SoldOut
        );
        assert_eq!(
            kind(status(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: error looking up service account ns/default: serviceaccount \"default\" not found"
            )),
            ErrorKind::Transient
        );
        let conflict = classify("CreatePod", status(409, "AlreadyExists", "exists"));
        assert!(conflict.maybe_executed, "a name taken may be our own create");
        assert_eq!(conflict.code, "AlreadyExists");
    }

    #[test]
    fn pod_metrics_become_usage_in_nanocores_and_bytes() {
        let stats = usage(
            "ns/p".into(),
            &serde_json::json!({"timestamp": "2026-12-01T10:00:00Z", "containers": [
                {"name": "app", "usage": {"cpu": "250m", "memory": "64Mi"}},
                {"name": "side", "usage": {"cpu": "1500000n", "memory": "1Ki"}}
            ]}),
        );
        assert_eq!(stats.time, "2026-12-01T10:00:00Z".parse::<Timestamp>().unwrap());
        let app = &stats.containers[0];
        assert_eq!(
            (
                app.name.as_str(),
                app.cpu_nano_cores,
                app.memory_working_set_bytes
            ),
            ("app", 250_000_000, 64 * 1024 * 1024)
        );
        let side = &stats.containers[1];
        assert_eq!(
            (side.cpu_nano_cores, side.memory_working_set_bytes),
            (1_500_000, 1024)
        );
        assert!(
            stats.containers.iter().all(|c| c.cpu_core_nano_seconds.is_none()),
            "PodMetrics carry rates, not counters"
        );
    }
}
