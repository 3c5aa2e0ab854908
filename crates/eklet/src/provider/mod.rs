//! The provider boundary: the one trait eklet drives a cloud through, and the provider-neutral
//! types that cross it. eklet resolves everything Kubernetes-specific (env, volume contents,
//! tokens, DNS) into a [`SandboxSpec`] before it reaches a provider, and reads back [`Sandbox`]
//! observations that it mirrors into Pod status. A provider never calls eklet's apiserver:
//!
//! - What eklet read to build a spec travels with it ([`SandboxSpec::source`]: the Pod and the
//!   ConfigMaps and Secrets it names, at the versions eklet read), for a provider that recreates
//!   the pod elsewhere (`kubernetes`); one read per object per reconcile.
//! - A provider that keeps copies of IDC ConfigMaps and Secrets asks eklet to follow them
//!   ([`Provider::followed_sources`]): eklet watches their versions once and reads a source again
//!   only when the provider's copies are behind it.
//! - A provider that learns of sandbox changes by a watch pushes them ([`Provider::notifier`],
//!   like virtual-kubelet's `PodNotifier`) and is never polled; one that only has an API to ask
//!   (`tencent`) is described in batches every `--status-sync-interval`.
//!
//! Sandboxes are identified to the cloud by a deterministic [`SandboxName`] built from the
//! cluster id and the pod UID, so a restarted eklet finds (adopts) what its predecessor created
//! and a second sandbox for the same pod would be visible as a duplicate name.

pub mod kubernetes;
pub mod selected;
pub mod tencent;

pub use selected::ProviderKind;
pub use tke_kubelet_api::backend::{ExitStatus, PortStream, StreamIo, TerminalSize};

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use tokio::sync::mpsc;

/// The most sandbox ids one [`Provider::describe`] call accepts.
pub const DESCRIBE_BATCH: usize = 100;

/// How a provider failure is handled; the pod controller maps each kind to a retry policy and a
/// pod reason in one place (`pods::failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Throttling, 5xx, timeouts, connection errors: retried with backoff.
    Transient,
    /// The subnet's zone has no capacity now.
    SoldOut,
    /// The sandbox does not exist (deleting it again is success).
    NotFound,
    /// Retrying the same request cannot succeed (credentials, parameters, quota).
    Permanent,
    /// The provider does not implement this operation at all.
    Unsupported,
}

/// A provider failure with the cloud's own code and message, shown verbatim on the Pod.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {code}: {message}")]
pub struct Error {
    pub action: &'static str,
    pub kind: ErrorKind,
    /// The cloud's error code, e.g. `ResourcesSoldOut`, or a client-side code.
    pub code: String,
    pub message: String,
    /// Whether the request may have been executed although it failed (a timeout after sending,
    /// a 5xx); a create that failed this way is looked up by name before it is retried.
    pub maybe_executed: bool,
}

impl Error {
    pub fn unsupported(action: &'static str, what: &str) -> Error {
        Error {
            action,
            kind: ErrorKind::Unsupported,
            code: "UnsupportedByProvider".into(),
            message: format!("this provider cannot {what}"),
            maybe_executed: false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cloud name of the sandbox that runs one pod: `eklet-<cluster-id>-<pod-uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxName(String);

const NAME_PREFIX: &str = "eklet-";

impl SandboxName {
    pub fn for_pod(cluster_id: &str, pod_uid: &str) -> SandboxName {
        SandboxName(format!("{}{pod_uid}", Self::cluster_prefix(cluster_id)))
    }

    /// The prefix every sandbox of this cluster's eklet carries; what [`Provider::list`] filters on.
    pub fn cluster_prefix(cluster_id: &str) -> String {
        format!("{NAME_PREFIX}{cluster_id}-")
    }

    /// Recognises a name this cluster's eklet gave, returning the pod UID in it.
    pub fn parse(cluster_id: &str, name: &str) -> Option<(SandboxName, String)> {
        let uid = name.strip_prefix(&Self::cluster_prefix(cluster_id))?;
        // Pod UIDs are RFC 4122 UUIDs; anything else was named by someone else.
        let looks_like_uid = uid.len() == 36
            && uid.chars().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        looks_like_uid.then(|| (SandboxName(name.to_owned()), uid.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Kinds of pod volume a provider may be able to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VolumeKind {
    Nfs,
    /// Tencent Cloud Block Storage, from a PersistentVolume of the CBS CSI driver.
    Cbs,
    EmptyDir,
    /// ConfigMap, Secret, projected and downward-API volumes: files eklet resolves.
    Files,
    HostPath,
    CephFs,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Nfs => "nfs",
            VolumeKind::Cbs => "cbs",
            VolumeKind::EmptyDir => "emptyDir",
            VolumeKind::Files => "files",
            VolumeKind::HostPath => "hostPath",
            VolumeKind::CephFs => "cephfs",
        }
    }
}

/// Probe mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Exec,
    HttpGet,
    TcpSocket,
    Grpc,
}

/// What a provider can honour. eklet refuses a pod that needs more (`UnsupportedByProvider`,
/// naming the feature) instead of silently running it wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub volumes: Vec<VolumeKind>,
    /// Mounting a projected service-account token (and refreshing it, see
    /// [`Provider::refresh_files`]).
    pub service_account_token: bool,
    /// Liveness and readiness probe mechanisms.
    pub probes: Vec<ProbeKind>,
    pub startup_probe: bool,
    /// Whether the provider reports container readiness; otherwise a running container counts
    /// as ready.
    pub reports_readiness: bool,
    /// Container logs through [`Provider::logs`].
    pub logs: bool,
    /// Resource usage through [`Provider::stats`].
    pub stats: bool,
    /// The provider's own runtime fills downward-API `status.podIP` env in the sandbox (a target
    /// kubelet does); otherwise such pods are refused, since eklet fixes env before the IP exists.
    pub resolves_pod_ip: bool,
    /// `kubectl exec`, `attach` and `port-forward` through [`Provider::exec`],
    /// [`Provider::attach`] and [`Provider::port_forward`].
    pub exec: bool,
    pub attach: bool,
    pub port_forward: bool,
}

impl Capabilities {
    pub fn mounts(&self, kind: VolumeKind) -> bool {
        self.volumes.contains(&kind)
    }
}

/// Everything a provider needs to run one pod, with Kubernetes references already resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub name: SandboxName,
    pub pod: PodIdentity,
    pub subnet_id: String,
    pub zone: String,
    pub containers: Vec<ContainerSpec>,
    pub init_containers: Vec<ContainerSpec>,
    pub restart_policy: RestartPolicy,
    pub volumes: Vec<VolumeSpec>,
    pub dns: Option<DnsSpec>,
    pub registry_credentials: Vec<RegistryCredential>,
    /// The pod's annotations; providers honour the ones they have fields for (EKS pod
    /// annotations such as `eks.tke.cloud.tencent.com/cpu`).
    pub annotations: BTreeMap<String, String>,
    pub termination_grace: Duration,
    /// The IDC objects the spec was resolved from, as eklet read them for this create; `None`
    /// where no reconcile read them (specs built in tests). Only a provider that recreates the
    /// pod elsewhere needs them; it must not read them again.
    pub source: Option<Arc<SourceObjects>>,
}

/// The Pod and the ConfigMaps and Secrets it names, exactly as eklet read them (absent objects
/// are not in the maps).
#[derive(Clone, Default, PartialEq)]
pub struct SourceObjects {
    pub pod: Pod,
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

/// Secrets hold credentials: only names and versions (`name@resourceVersion`) are shown.
impl fmt::Debug for SourceObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn versioned(name: &str, meta: &ObjectMeta) -> String {
            format!("{name}@{}", meta.resource_version.as_deref().unwrap_or("?"))
        }
        let config_maps: Vec<String> = self
            .config_maps
            .iter()
            .map(|(n, o)| versioned(n, &o.metadata))
            .collect();
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|(n, o)| versioned(n, &o.metadata))
            .collect();
        f.debug_struct("SourceObjects")
            .field(
                "pod",
                &versioned(
                    self.pod.metadata.name.as_deref().unwrap_or_default(),
                    &self.pod.metadata,
                ),
            )
            .field("config_maps", &config_maps)
            .field("secrets", &secrets)
            .finish()
    }
}

/// The kinds of IDC object a provider may keep copies of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::ConfigMap => "configmap",
            SourceKind::Secret => "secret",
        }
    }
}

/// One IDC ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub kind: SourceKind,
    pub namespace: String,
    pub name: String,
}

/// A followed source as eklet just read it.
#[derive(Clone)]
pub enum SourceObject {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

impl SourceObject {
    pub fn resource_version(&self) -> Option<&str> {
        match self {
            SourceObject::ConfigMap(o) => o.metadata.resource_version.as_deref(),
            SourceObject::Secret(o) => o.metadata.resource_version.as_deref(),
        }
    }
}

/// A sandbox change a watching provider pushes ([`Provider::notifier`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxChange {
    /// The sandbox as it is now.
    Observed(Sandbox),
    /// The sandbox with this id no longer exists.
    Gone(String),
}

/// Which pod a sandbox runs, for providers that label or tag what they create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cluster_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Fully resolved, in the order the kubelet would set them (later entries win).
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub resources: Resources,
    pub mounts: Vec<Mount>,
    pub liveness_probe: Option<ProbeSpec>,
    pub readiness_probe: Option<ProbeSpec>,
    pub startup_probe: Option<ProbeSpec>,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Values may come from Secrets: only names are shown.
impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Requests and limits in base units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub gpu: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay_seconds: i32,
    pub period_seconds: i32,
    pub timeout_seconds: i32,
    pub success_threshold: i32,
    pub failure_threshold: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Exec { command: Vec<String> },
    HttpGet { path: String, port: u16, scheme: String },
    TcpSocket { port: u16 },
    Grpc { port: u16, service: Option<String> },
}

impl ProbeAction {
    pub fn kind(&self) -> ProbeKind {
        match self {
            ProbeAction::Exec { .. } => ProbeKind::Exec,
            ProbeAction::HttpGet { .. } => ProbeKind::HttpGet,
            ProbeAction::TcpSocket { .. } => ProbeKind::TcpSocket,
            ProbeAction::Grpc { .. } => ProbeKind::Grpc,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSpec {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Clone, PartialEq)]
pub enum VolumeSource {
    Nfs {
        server: String,
        path: String,
        read_only: bool,
    },
    Cbs {
        disk_id: String,
    },
    EmptyDir,
    /// ConfigMap, Secret, projected or downward-API contents: relative path → bytes. A projected
    /// service-account token is among them and must be refreshed through
    /// [`Provider::refresh_files`] before it expires.
    Files {
        files: BTreeMap<String, Vec<u8>>,
        mode: u32,
    },
}

/// Files may hold Secret data and tokens: never print them.
impl fmt::Debug for VolumeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeSource::Nfs {
                server,
                path,
                read_only,
            } => f
                .debug_struct("Nfs")
                .field("server", server)
                .field("path", path)
                .field("read_only", read_only)
                .finish(),
            VolumeSource::Cbs { disk_id } => f.debug_struct("Cbs").field("disk_id", disk_id).finish(),
            VolumeSource::EmptyDir => f.write_str("EmptyDir"),
            VolumeSource::Files { files, mode } => f
                .debug_struct("Files")
                .field("paths", &files.keys().collect::<Vec<_>>())
                .field("mode", mode)
                .finish(),
        }
    }
}

impl VolumeSource {
    pub fn kind(&self) -> VolumeKind {
        match self {
            VolumeSource::Nfs { .. } => VolumeKind::Nfs,
            VolumeSource::Cbs { .. } => VolumeKind::Cbs,
            VolumeSource::EmptyDir => VolumeKind::EmptyDir,
            VolumeSource::Files { .. } => VolumeKind::Files,
        }
    }
}

/// The sandbox's resolver configuration, from the `resolv-conf` annotation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsSpec {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `(name, value)`; value is empty for flags such as `rotate`.
    pub options: Vec<(String, String)>,
}

/// Image pull credentials from the pod's `imagePullSecrets`.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    pub server: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the cloud reports about one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub phase: SandboxPhase,
    pub ip: Option<String>,
    pub created_at: Option<Timestamp>,
    pub containers: Vec<ContainerStatus>,
    pub init_containers: Vec<ContainerStatus>,
    /// The size the cloud bills the sandbox at, as the provider knows it; `None` when it does not.
    pub billed: Option<BilledSize>,
}

/// What a sandbox is billed at: the tencent provider's standard EKS specification (CPU and memory
/// rounded up to one the API sells, or the `cpu`/`mem` annotations), the kubernetes provider's
/// target pod requests. eklet's usage counters ([`crate::usage`]) multiply it by the time the
/// sandbox runs, and each cloud pod shows it in [`BilledSize::ANNOTATION`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BilledSize {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    /// GPUs; 0 when none.
    pub gpu: u64,
    /// The GPU type, when the provider names one (EKS `GpuType`).
    pub gpu_type: Option<String>,
}

impl BilledSize {
    /// The pod annotation that shows the billed size: `cpu=<cores>,memory=<n>Gi|Mi`, then
    /// `,gpu=<count>` and `,gpu-type=<type>` when the sandbox has GPUs; e.g. `cpu=1,memory=2Gi`,
    /// `cpu=0.25,memory=512Mi`, `cpu=8,memory=32Gi,gpu=1,gpu-type=T4`.
    pub const ANNOTATION: &'static str = "eklet.tke-resilience.io/billed-size";

    /// The annotation's value.
    pub fn annotation(&self) -> String {
        let cores = if self.cpu_millis.is_multiple_of(1000) {
            (self.cpu_millis / 1000).to_string()
        } else {
            let text = format!("{}.{:03}", self.cpu_millis / 1000, self.cpu_millis % 1000);
            text.trim_end_matches('0').to_owned()
        };
        let memory = if self.memory_mib.is_multiple_of(1024) {
            format!("{}Gi", self.memory_mib / 1024)
        } else {
            format!("{}Mi", self.memory_mib)
        };
        let mut text = format!("cpu={cores},memory={memory}");
        if self.gpu > 0 {
            text.push_str(&format!(",gpu={}", self.gpu));
            if let Some(kind) = self.gpu_type.as_deref().filter(|t| !t.is_empty()) {
                text.push_str(&format!(",gpu-type={kind}"));
            }
        }
        text
    }

    /// Cores, memory in GiB and GPUs, as the usage counters count them.
    pub fn cores(&self) -> f64 {
        self.cpu_millis as f64 / 1000.0
    }

    pub fn memory_gib(&self) -> f64 {
        self.memory_mib as f64 / 1024.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl SandboxPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, SandboxPhase::Succeeded | SandboxPhase::Failed)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub restart_count: u32,
    /// `None` when the provider does not report readiness.
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Option<Timestamp>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: Option<Timestamp>,
        finished_at: Option<Timestamp>,
    },
}

/// `kubectl logs` options a provider may honour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
    pub previous: bool,
    pub timestamps: bool,
}

/// An event the cloud recorded for a sandbox (image pulls, starts, capacity problems).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    pub reason: String,
    pub message: String,
    pub warning: bool,
    pub count: u32,
}

/// A sandbox to measure, with what eklet knows of it: a provider that reads usage from the
/// sandbox itself (the tencent provider scrapes the sandbox agent) needs its address and the pod's
/// annotations (`eks.tke.cloud.tencent.com/metrics-port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsTarget {
    pub id: String,
    pub ip: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// Resource usage of one sandbox's running containers.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxStats {
    pub id: String,
    /// When it was measured.
    pub time: Timestamp,
    pub containers: Vec<ContainerStats>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    pub name: String,
    /// The current rate, in billionths of a core.
    pub cpu_nano_cores: u64,
    /// CPU time since the container started, if the source counts it (the kubelet formats need
    /// it; without it the kubelet API integrates the rate).
    pub cpu_core_nano_seconds: Option<u64>,
    pub memory_working_set_bytes: u64,
}

/// A cloud that runs sandboxes. One instance serves the whole process; every method may be
/// called concurrently from many tasks, so implementations keep no per-call mutable state
/// outside what they synchronise themselves (rate limiters, connection pools).
///
/// Concurrency contract, as virtual-kubelet's `PodLifecycleHandler` states it: eklet never
/// calls `create` or `delete` concurrently for the same pod (one reconcile per pod at a time),
/// but does call them concurrently for different pods, and calls `describe`/`list` concurrently
/// with both. Arguments are borrowed for the call only; a provider copies what it keeps.
pub trait Provider: Send + Sync + 'static {
    /// Short name, e.g. `tencent`; shown in metrics and in the node's container runtime version.
    fn name(&self) -> &'static str;

    /// What this provider can honour; constant for the life of the provider.
    fn capabilities(&self) -> &Capabilities;

    /// Creates the sandbox for `spec` and returns it as first observed. Not idempotent in the
    /// cloud: eklet calls it only after making sure (adoption map, then [`Provider::find`] after
    /// an ambiguous failure) that no sandbox named `spec.name` exists.
    fn create(&self, spec: &SandboxSpec) -> impl Future<Output = Result<Sandbox>> + Send;

    /// Deletes a sandbox, letting its containers stop within `grace` where the cloud supports
    /// it. Deleting a sandbox that no longer exists returns `Ok`. May be called more than once.
    fn delete(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;

    /// The current state of up to [`DESCRIBE_BATCH`] sandboxes in one call. Sandboxes that no
    /// longer exist are absent from the answer.
    fn describe(&self, ids: &[String]) -> impl Future<Output = Result<Vec<Sandbox>>> + Send;

    /// The sandbox with this name, if one exists; used after a create whose outcome is unknown.
    fn find(&self, name: &SandboxName) -> impl Future<Output = Result<Option<Sandbox>>> + Send;

    /// Every sandbox this cluster's eklet created (named with [`SandboxName::cluster_prefix`]),
    /// for adoption after a restart and for finding orphans.
    fn list(&self, cluster_id: &str) -> impl Future<Output = Result<Vec<Sandbox>>> + Send;

    /// Replaces the contents of a files volume (a refreshed service-account token) in a running
    /// sandbox. Only called when [`Capabilities::service_account_token`] is true.
    fn refresh_files(&self, id: &str, volume: &VolumeSpec) -> impl Future<Output = Result<()>> + Send;

    /// A container's log, as far as the options allow.
    fn logs(
        &self,
        id: &str,
        container: &str,
        options: &LogOptions,
    ) -> impl Future<Output = Result<String>> + Send;

    /// What the cloud recorded about a sandbox, newest first.
    fn events(&self, id: &str) -> impl Future<Output = Result<Vec<SandboxEvent>>> + Send;

    /// Resource usage of as many of the given sandboxes (at most [`DESCRIBE_BATCH`]) as can be
    /// measured now; a sandbox missing from the answer is shown without usage. An error means
    /// none could be.
    fn stats(&self, targets: &[StatsTarget]) -> impl Future<Output = Result<Vec<SandboxStats>>> + Send;

    /// Runs `command` in `container` of a running sandbox with the client's streams, until it
    /// exits. The contract is the kubelet API's ([`tke_kubelet_api::Backend::exec`]): dropping the
    /// future (the client went away) drops the streams and must stop the remote command. Only
    /// called when [`Capabilities::exec`] is true.
    fn exec(
        &self,
        id: &str,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> impl Future<Output = Result<ExitStatus>> + Send {
        drop((command, io));
        std::future::ready(Err(unsupported(
            "ExecContainer",
            self.name(),
            "exec",
            id,
            container,
        )))
    }

    /// Attaches the client's streams to the main process of `container` until it ends. Only
    /// called when [`Capabilities::attach`] is true.
    fn attach(&self, id: &str, container: &str, io: StreamIo) -> impl Future<Output = Result<()>> + Send {
        drop(io);
        std::future::ready(Err(unsupported(
            "AttachContainer",
            self.name(),
            "attach",
            id,
            container,
        )))
    }

    /// One connection to `port` of the sandbox, as from inside it. Only called when
    /// [`Capabilities::port_forward`] is true.
    fn port_forward(&self, id: &str, port: u16) -> impl Future<Output = Result<PortStream>> + Send {
        let container = format!("port {port}");
        std::future::ready(Err(unsupported(
            "PortForward",
            self.name(),
            "port-forward",
            id,
            &container,
        )))
    }

    /// For a provider that learns of sandbox changes by a watch: the changes, as they happen.
    /// eklet then never calls [`Provider::describe`] on a timer; it describes a sandbox only once,
    /// right after it starts tracking it (a change pushed before that was not yet wanted), and
    /// relies on the provider to push every later change, including after the provider's own
    /// watch relisted. Called once per leadership term; each call replaces the previous channel.
    /// `None` (the default): eklet polls.
    fn notifier(&self) -> Option<mpsc::UnboundedReceiver<SandboxChange>> {
        None
    }

    /// For a provider that keeps copies of IDC ConfigMaps and Secrets: the sources whose current
    /// content it needs, each queued once until [`Provider::source_read`] answers it. eklet
    /// follows every ConfigMap's and Secret's version with one metadata watch, tells the provider
    /// through [`Provider::source_version`], and reads a queued source once. Called once per
    /// leadership term; each call replaces the previous queue and re-queues what was pending.
    /// `None` (the default): eklet follows nothing.
    fn followed_sources(&self) -> Option<mpsc::UnboundedReceiver<Source>> {
        None
    }

    /// The IDC has `version` of `source` now (every ConfigMap and Secret, as the watch sees them).
    fn source_version(&self, source: Source, version: String) {
        drop((source, version));
    }

    /// A queued source as eklet just read it; `None`: the IDC has no such object. The provider
    /// retries its own failures (by queueing the source again).
    fn source_read(&self, source: &Source, object: Option<SourceObject>) -> impl Future<Output = ()> + Send {
        drop((source, object));
        std::future::ready(())
    }
}

/// A forwarded connection whose relay stops when the stream is dropped: both providers hand the
/// kubelet API one end of an in-memory pipe and keep the other in a task or client of theirs, and
/// the kubelet API drops the stream when the client goes away.
pub struct GuardedStream {
    stream: tokio::io::DuplexStream,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl GuardedStream {
    /// `stream`, and what stops its other end once it is dropped.
    pub fn new(stream: tokio::io::DuplexStream, stop: impl FnOnce() + Send + 'static) -> GuardedStream {
        GuardedStream {
            stream,
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl tokio::io::AsyncRead for GuardedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The refusal of a streaming call a provider does not have.
fn unsupported(action: &'static str, provider: &str, what: &str, id: &str, target: &str) -> Error {
    Error {
        action,
        kind: ErrorKind::Unsupported,
        code: "UnsupportedByProvider".into(),
        message: format!("the {provider} provider has no {what} (sandbox {id}, {target})"),
        maybe_executed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_name_carries_the_cluster_and_the_pod_uid_and_parses_back() {
        let uid = "2f6c0d5e-1111-2222-3333-444455556666";
        let name = SandboxName::for_pod("cls-a1", uid);
        assert_eq!(name.as_str(), "eklet-cls-a1-2f6c0d5e-1111-2222-3333-444455556666");
        assert_eq!(
            SandboxName::parse("cls-a1", name.as_str()),
            Some((name.clone(), uid.to_owned()))
        );
    }

    #[test]
    fn names_from_another_cluster_or_not_ending_in_a_uid_are_not_ours() {
        let name = SandboxName::for_pod("cls-a1", "2f6c0d5e-1111-2222-3333-444455556666");
        assert_eq!(SandboxName::parse("cls-a", name.as_str()), None);
        assert_eq!(SandboxName::parse("cls-a1", "eklet-cls-a1-web"), None);
        assert_eq!(
            SandboxName::parse("cls-a1", "eklet-cls-a1-2f6c0d5e-1111-2222-3333-44445555666g"),
            None
        );
        assert_eq!(SandboxName::parse("cls-a1", ""), None);
    }

    #[test]
    fn the_billed_size_annotation_reads_as_quantities_do() {
        let size = |cpu_millis, memory_mib, gpu, gpu_type: Option<&str>| BilledSize {
            cpu_millis,
            memory_mib,
            gpu,
            gpu_type: gpu_type.map(str::to_owned),
        };
        assert_eq!(size(1000, 2048, 0, None).annotation(), "cpu=1,memory=2Gi");
        assert_eq!(size(250, 512, 0, None).annotation(), "cpu=0.25,memory=512Mi");
        assert_eq!(
            size(1500, 1536, 0, Some("T4")).annotation(),
            "cpu=1.5,memory=1536Mi"
        );
        assert_eq!(
            size(8000, 32 * 1024, 1, Some("T4")).annotation(),
            "cpu=8,memory=32Gi,gpu=1,gpu-type=T4"
        );
        assert_eq!(
            size(4000, 16 * 1024, 2, None).annotation(),
            "cpu=4,memory=16Gi,gpu=2"
        );
    }

    #[test]
    fn volume_contents_never_show_in_debug_output() {
        let source = VolumeSource::Files {
            files: [("token".to_owned(), b"s3cr3t".to_vec())].into(),
            mode: 0o644,
        };
        let shown = format!("{source:?}");
        assert!(shown.contains("token") && !shown.contains("s3cr3t"), "{shown}");
        let env = EnvVar {
            name: "DB_PASSWORD".into(),
            value: "hunter2".into(),
        };
        assert!(!format!("{env:?}").contains("hunter2"));
        let credential = RegistryCredential {
            server: "ccr".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
    }
}
