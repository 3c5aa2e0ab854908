//! The one boundary the kubelet API server calls through: what runs on the virtual node (pods from
//! a cache), a container's log, and resource usage. The server owns the wire formats (log
//! options, timestamps, byte limits, the Summary API, Prometheus text) and the security; a
//! backend only fetches. It knows nothing of HTTP, and the server knows nothing of the cloud.

use std::{future::Future, sync::Arc};

use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// How a backend failure reaches the client; mapped to an HTTP status in one place
/// (`server::failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pod, container or previous run does not exist (404).
    NotFound,
    /// The request cannot be answered as asked, e.g. the container has not started yet (400).
    BadRequest,
    /// The backend cannot do this at all (501).
    Unsupported,
    /// The cloud is unreachable, throttling or failing; retrying later may work (503).
    Unavailable,
    /// Anything else (500).
    Internal,
}

/// A backend failure with a message fit for the client: it names the pod or container, never a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `kubectl logs` options that decide what a backend fetches. `follow`, `timestamps` and
/// `limitBytes` are the server's business: it keeps the stream open, formats and cuts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<Timestamp>,
    pub previous: bool,
    /// Keep the stream open and send lines as they are written, until the container stops or
    /// the client goes away.
    pub follow: bool,
    /// Passed down so a backend can ask its source for at most this much; the server cuts the
    /// stream at exactly this many bytes either way.
    pub limit_bytes: Option<u64>,
}

/// One line of a container's output, without its line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the line was written, if the source says; shown with `timestamps=true`.
    pub time: Option<Timestamp>,
    pub text: String,
}

/// A container's log: the lines the options select, then (when following) lines as they appear.
/// The stream ends when the log does; an error item ends it early.
pub type LogStream = BoxStream<'static, Result<LogLine>>;

/// Resource usage of one pod at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PodUsage {
    /// The pod UID the usage belongs to.
    pub uid: String,
    /// When it was measured.
    pub time: Timestamp,
    pub cpu: CpuUsage,
    pub memory_working_set_bytes: u64,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu: CpuUsage,
    pub memory_working_set_bytes: u64,
}

/// CPU usage as a source reports it. The kubelet formats need the cumulative counter; when a
/// source only reports a rate, the server integrates it between scrapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuUsage {
    /// The current rate, in billionths of a core.
    pub nano_cores: u64,
    /// CPU time used since the container started, in core-nanoseconds, if the source counts it.
    pub core_nano_seconds: Option<u64>,
}

/// A pod as the runtime sees it (`/runningpods/`): what actually runs, not what the apiserver
/// asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The containers running now, with the image each runs.
    pub containers: Vec<RunningContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    pub name: String,
    pub image: String,
}

/// What the kubelet API serves, for the virtual nodes of one server. Every method may be called
/// concurrently from many requests; pod lookups read a cache and must not block.
pub trait Backend: Send + Sync + 'static {
    /// Every pod bound to one of the server's nodes, including pods being deleted.
    fn pods(&self) -> Vec<Arc<Pod>>;

    /// The pod `namespace/name` if it is bound to one of the server's nodes.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;

    /// The pods with a running container, as the runtime (the cloud) last reported them.
    fn running_pods(&self) -> Vec<RunningPod>;

    /// The log of `container` in `pod` (a container the pod's spec names). Resolves once the first
    /// lines are fetched, so a missing sandbox or an unknown previous run is an error answer, not
    /// an empty stream.
    fn logs(
        &self,
        pod: Arc<Pod>,
        container: &str,
        options: LogOptions,
    ) -> impl Future<Output = Result<LogStream>> + Send;

    /// Resource usage of as many of `pods` as the source can report; pods missing from the answer
    /// are shown without usage.
    fn usage(&self, pods: &[Arc<Pod>]) -> impl Future<Output = Result<Vec<PodUsage>>> + Send;
}

/// A shared backend is a backend.
impl<B: Backend> Backend for Arc<B> {
    fn pods(&self) -> Vec<Arc<Pod>> {
        B::pods(self)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        B::pod(self, namespace, name)
    }

    fn running_pods(&self) -> Vec<RunningPod> {
        B::running_pods(self)
    }

    fn logs(
        &self,
        pod: Arc<Pod>,
        container: &str,
        options: LogOptions,
    ) -> impl Future<Output = Result<LogStream>> + Send {
        B::logs(self, pod, container, options)
    }

    fn usage(&self, pods: &[Arc<Pod>]) -> impl Future<Output = Result<Vec<PodUsage>>> + Send {
        B::usage(self, pods)
    }
}
