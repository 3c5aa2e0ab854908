//! The one boundary the kubelet API server calls through: what runs on the virtual node (pods from
//! a cache), a container's log, and resource usage. The server owns the wire formats (log
//! options, timestamps, byte limits, the Summary API, Prometheus text) and the security; a
//! backend only fetches. It knows nothing of HTTP, and the server knows nothing of the cloud.
//!
//! Exec, attach and port-forward hand the backend plain byte streams ([`StreamIo`],
//! [`PortStream`]); whether they travel over SPDY or a WebSocket is the server's business.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};

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

/// The client's input: what it types or pipes in. Ends when the client closes its stdin.
pub type StreamReader = Pin<Box<dyn AsyncRead + Send>>;
/// Output to the client. Shut it down (or drop it) when the output ends.
pub type StreamWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A terminal's size, as the client's resize stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The streams of one exec or attach, each present only if the client asked for it.
pub struct StreamIo {
    pub stdin: Option<StreamReader>,
    pub stdout: Option<StreamWriter>,
    /// Never present with `tty`: a terminal merges stderr into stdout.
    pub stderr: Option<StreamWriter>,
    /// The client wants a terminal (a pty in the container).
    pub tty: bool,
    /// Terminal sizes as the client's terminal changes (only with `tty`); ends with the client.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code; 0 is success and anything else reaches `kubectl exec` as its
    /// own exit code.
    Code(i32),
    /// It did not exit by itself (killed by a signal, the sandbox went away); the text says how.
    Killed(String),
}

/// A byte stream both ways, such as a TCP connection to a pod's port.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// One port-forward connection to a port of a pod.
pub type PortStream = Box<dyn Duplex>;

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

    /// Runs `command` in `container` of `pod` (a container the pod's spec names), copying the
    /// client's stdin into it and its stdout/stderr out, until the command exits.
    ///
    /// Contract: called once per `kubectl exec`, concurrently with any other call. Resolve when
    /// the command has exited and its output is written; shut down or drop `io.stdout` and
    /// `io.stderr` by then (the server sends the exit status after both end). When the client
    /// goes away the server drops this future: everything the backend holds for it, streams
    /// included, must be dropped with it, so a backend that started a remote process stops it
    /// (for example with a guard whose `Drop` kills it). Never block a thread. A container that
    /// does not run is `ErrorKind::BadRequest`.
    fn exec(
        &self,
        pod: Arc<Pod>,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> impl Future<Output = Result<ExitStatus>> + Send {
        let message = format!(
            "exec into container {container:?} of pod {:?} is not supported by this node's backend \
             (it implements no Backend::exec)",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        drop((command, io));
        async move { Err(Error::new(ErrorKind::Unsupported, message)) }
    }

    /// Attaches to the running process of `container` in `pod`: its output to the client, the
    /// client's input to it, until the process ends (`Ok`) or the client goes away (the future is
    /// dropped, as for [`exec`](Backend::exec); the process keeps running).
    fn attach(
        &self,
        pod: Arc<Pod>,
        container: &str,
        io: StreamIo,
    ) -> impl Future<Output = Result<()>> + Send {
        let message = format!(
            "attach to container {container:?} of pod {:?} is not supported by this node's backend \
             (it implements no Backend::attach)",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        drop(io);
        async move { Err(Error::new(ErrorKind::Unsupported, message)) }
    }

    /// Opens one connection to `port` of `pod`, as a TCP connect from inside the pod's network
    /// namespace would. Called once per forwarded connection, concurrently. The server copies
    /// both ways and drops the stream when either side is done or the client goes away; shutting
    /// down its write side is the client's half-close. A refused connection is an error, which the
    /// client sees on the port's error stream.
    fn port_forward(&self, pod: Arc<Pod>, port: u16) -> impl Future<Output = Result<PortStream>> + Send {
        let message = format!(
            "port-forward to port {port} of pod {:?} is not supported by this node's backend \
             (it implements no Backend::port_forward)",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        async move { Err(Error::new(ErrorKind::Unsupported, message)) }
    }
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

    fn exec(
        &self,
        pod: Arc<Pod>,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> impl Future<Output = Result<ExitStatus>> + Send {
        B::exec(self, pod, container, command, io)
    }

    fn attach(
        &self,
        pod: Arc<Pod>,
        container: &str,
        io: StreamIo,
    ) -> impl Future<Output = Result<()>> + Send {
        B::attach(self, pod, container, io)
    }

    fn port_forward(&self, pod: Arc<Pod>, port: u16) -> impl Future<Output = Result<PortStream>> + Send {
        B::port_forward(self, pod, port)
    }
}
