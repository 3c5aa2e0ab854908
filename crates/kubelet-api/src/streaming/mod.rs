//! Exec, attach, run and port-forward: the kubelet's streaming endpoints. This module owns what
//! both wire protocols share (the query the kubelet reads, protocol negotiation, limits, the
//! exit status on the error channel, copying between the client's channels and the backend's
//! byte streams); `spdy` frames SPDY/3.1 and [`ws`] the WebSocket channel protocols.
//!
//! Every session holds a permit of [`Limits::max_sessions`]; a session ends when the backend is
//! done, or, when the client vanishes (connection closed, idle beyond
//! [`Limits::idle_timeout`]), by dropping the backend's future and every stream handed to it.

pub mod ws;

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{self, Backend, ErrorKind, ExitStatus, StreamIo, TerminalSize},
    spdy::{
        self,
        session::{self, Connection, StreamWriter},
    },
};

/// SPDY subprotocols for exec and attach, newest first (`X-Stream-Protocol-Version`).
pub const EXEC_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Limits of the streaming endpoints, per server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Exec, attach and port-forward sessions open at once; more get 429.
    pub max_sessions: usize,
    /// Streams one SPDY connection may have open at once (a port-forward uses two per forwarded
    /// connection); more are refused.
    pub max_streams_per_connection: usize,
    /// A connection with no frame or message either way for this long is closed (the kubelet's
    /// `streamingConnectionIdleTimeout`, 4h by default).
    pub idle_timeout: Duration,
    /// How long a SPDY client has to open the streams it asked for (the kubelet's 30 s).
    pub stream_creation_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 256,
            max_streams_per_connection: 256,
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

/// The counted sessions of one server.
#[derive(Debug)]
pub struct Sessions {
    limits: Limits,
    permits: Arc<Semaphore>,
}

impl Sessions {
    pub fn new(limits: Limits) -> Sessions {
        Sessions {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_sessions)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    #[error("no command given: pass it as repeated `command` query parameters")]
    NoCommand,
    #[error("query parameter \"port\" is required")]
    NoPort,
    #[error("unable to parse {0:?} as a port: ports are 1 to 65535")]
    BadPort(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an exec or attach asks for (`remotecommand.NewOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub command: Vec<String>,
}

fn flag(query: &[(String, String)], name: &str) -> bool {
    query
        .iter()
        .any(|(key, value)| key == name && (value == "1" || value.eq_ignore_ascii_case("true")))
}

impl Options {
    /// Reads the kubelet's query parameters. As the kubelet does, a tty drops stderr (a terminal
    /// has one output: the process's stderr shows in stdout): kubectl never asks for both, but
    /// clients that do (the Python client's default `stderr=True`) work against a real node, so
    /// they must here too.
    pub fn parse(query: &[(String, String)]) -> Result<Options> {
        let mut options = Options {
            stdin: flag(query, "input"),
            stdout: flag(query, "output"),
            stderr: flag(query, "error"),
            tty: flag(query, "tty"),
            command: query
                .iter()
                .filter(|(key, _)| key == "command")
                .map(|(_, value)| value.clone())
                .collect(),
        };
        if options.tty && options.stderr {
            tracing::debug!("exec with tty and stderr: stderr dropped, as the kubelet does");
            options.stderr = false;
        }
        if !options.stdin && !options.stdout && !options.stderr {
            return Err(Error::NoStreams);
        }
        Ok(options)
    }
}

/// The ports of a WebSocket port-forward (`port` repeated or comma-separated).
pub fn ports(query: &[(String, String)]) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for (_, value) in query.iter().filter(|(key, _)| key == "port") {
        for part in value.split(',') {
            match part.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(Error::BadPort(part.to_owned())),
            }
        }
    }
    if ports.is_empty() {
        return Err(Error::NoPort);
    }
    Ok(ports)
}

/// The first of `ours` (in our order of preference) that the client offers in any of the
/// `offered` header values (each possibly a comma-separated list).
pub fn negotiate<'a>(offered: &[String], ours: &[&'a str]) -> Option<&'a str> {
    let offered: Vec<&str> = offered
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    ours.iter().copied().find(|ours| offered.contains(ours))
}

/// How the error channel reports the end of a command: the v4+ JSON `Status`, or (v1–v3) the
/// failure message as text and nothing on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
}

/// Our side of one channel, on either protocol.
#[derive(Clone)]
pub enum Outbound {
    Spdy(StreamWriter),
    Ws(ws::ChannelWriter),
}

/// The peer is gone.
#[derive(Debug)]
pub struct Gone;

impl Outbound {
    pub async fn write(&self, data: Bytes) -> Result<(), Gone> {
        match self {
            Outbound::Spdy(writer) => writer.write(data).await.map_err(|_| Gone),
            Outbound::Ws(writer) => writer.write(data).await.map_err(|_| Gone),
        }
    }

    /// Ends our side of the channel where the protocol can say so (SPDY FIN); a WebSocket
    /// channel ends with the connection.
    pub async fn finish(&self) {
        if let Outbound::Spdy(writer) = self {
            let _ = writer.finish().await;
        }
    }
}

/// The channels of one exec or attach, as the protocol opened them.
pub struct Channels {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Outbound>,
    pub stderr: Option<Outbound>,
    pub error: Outbound,
    pub resize: Option<mpsc::Receiver<Bytes>>,
    pub status: StatusFormat,
}

/// One exec or attach, as the request asked for it.
#[derive(Debug, Clone)]
pub struct RemoteCommand {
    pub pod: Arc<Pod>,
    pub container: String,
    pub action: Action,
    pub options: Options,
}

/// What runs: a command, or the container's own process.
#[derive(Debug, Clone)]
pub enum Action {
    Exec(Vec<String>),
    Attach,
}

/// Runs an exec or attach over `channels` until it ends, then writes its status on the error
/// channel. Returns without a status if `client_gone` fires first, dropping the backend's work.
pub async fn remote_command<B: Backend>(
    backend: &B,
    pod: Arc<Pod>,
    container: &str,
    action: Action,
    tty: bool,
    channels: Channels,
    client_gone: CancellationToken,
) {
    let stdin = channels.stdin.map(|receiver| {
        Box::pin(tokio_util::io::StreamReader::new(incoming_stream(receiver))) as backend::StreamReader
    });
    let (stdout, stdout_done) = output_pipe(channels.stdout);
    let (stderr, stderr_done) = output_pipe(channels.stderr);
    let resize = channels.resize.filter(|_| tty).map(resize_events);
    let io = StreamIo {
        stdin,
        stdout,
        stderr,
        tty,
        resize,
    };
    let work = async {
        match action {
            Action::Exec(command) => backend.exec(pod, container, command, io).await.map(Some),
            Action::Attach => backend.attach(pod, container, io).await.map(|()| None),
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = client_gone.cancelled() => {
            tracing::debug!(container, "streaming: the client went away; the backend's work is dropped");
            return;
        }
    };
    // The output pumps end when the backend has dropped or shut down its writers.
    tokio::select! {
        _ = futures::future::join(stdout_done, stderr_done) => {}
        () = client_gone.cancelled() => return,
    }
    let status = end_status(&result);
    let written = match (channels.status, status) {
        (StatusFormat::Json, status) => serde_json::to_vec(&status).ok(),
        (StatusFormat::Text, status) if status.status == "Success" => None,
        (StatusFormat::Text, status) => Some(status.message.unwrap_or_default().into_bytes()),
    };
    if let Some(bytes) = written {
        let _ = channels.error.write(Bytes::from(bytes)).await;
    }
    channels.error.finish().await;
}

/// `metav1.Status` as the error channel carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamStatus {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusDetails {
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusCause {
    pub reason: &'static str,
    pub message: String,
}

/// The status a finished exec or attach reports; `NonZeroExitCode` with an `ExitCode` cause is
/// what makes `kubectl exec` exit with the command's code.
pub fn end_status(result: &backend::Result<Option<ExitStatus>>) -> StreamStatus {
    let failure = |reason, message: String, code, details| StreamStatus {
        metadata: Default::default(),
        status: "Failure",
        message: Some(message),
        reason: Some(reason),
        details,
        code,
    };
    match result {
        Ok(None) | Ok(Some(ExitStatus::Code(0))) => StreamStatus {
            metadata: Default::default(),
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        },
        Ok(Some(ExitStatus::Code(code))) => failure(
            "NonZeroExitCode",
            format!("command terminated with non-zero exit code: exit status {code}"),
            None,
            Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "ExitCode",
                    message: code.to_string(),
                }],
            }),
        ),
        Ok(Some(ExitStatus::Killed(how))) => failure(
            "InternalError",
            format!("Internal error occurred: error executing command in container: {how}"),
            Some(500),
            None,
        ),
        Err(error) => {
            let (reason, code) = match error.kind {
                ErrorKind::NotFound => ("NotFound", 404),
                ErrorKind::BadRequest => ("BadRequest", 400),
                ErrorKind::Unsupported => ("NotImplemented", 501),
                ErrorKind::Unavailable => ("ServiceUnavailable", 503),
                ErrorKind::Internal => ("InternalError", 500),
            };
            failure(reason, error.message.clone(), Some(code), None)
        }
    }
}

fn incoming_stream(
    receiver: mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok(chunk), receiver))
    })
}

/// A writer for the backend whose bytes are copied to `outbound`; the returned future ends
/// when the backend has shut down or dropped the writer and everything is sent.
fn output_pipe(
    outbound: Option<Outbound>,
) -> (
    Option<backend::StreamWriter>,
    impl Future<Output = ()> + Send + 'static,
) {
    let Some(outbound) = outbound else {
        return (None, futures::future::Either::Left(async {}));
    };
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let copy = tokio::spawn(async move {
        let mut ours = ours;
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match ours.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if outbound
                        .write(Bytes::copy_from_slice(&buffer[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        outbound.finish().await;
    });
    let done = futures::future::Either::Right(async move {
        let _ = copy.await;
    });
    (Some(Box::pin(theirs) as backend::StreamWriter), done)
}

/// Terminal sizes from the client's resize channel: JSON objects, back to back.
fn resize_events(mut incoming: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TerminalSize> {
    let (sizes, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(chunk) = incoming.recv().await {
            pending.extend_from_slice(&chunk);
            let mut parsed = serde_json::Deserializer::from_slice(&pending).into_iter::<TerminalSize>();
            loop {
                match parsed.next() {
                    Some(Ok(size)) => {
                        if sizes.send(size).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(error)) if error.is_eof() => break,
                    Some(Err(error)) => {
                        tracing::info!(%error, "streaming: ignoring the rest of a malformed resize stream");
                        return;
                    }
                    None => break,
                }
            }
            let offset = parsed.byte_offset();
            pending.drain(..offset);
            if pending.len() > 64 * 1024 {
                tracing::info!("streaming: a resize message larger than 64 KiB; ignoring the rest");
                return;
            }
        }
    });
    receiver
}

/// One forwarded connection: copies between the client's data channel and a new connection to
/// `port` of the pod, then ends the channels; a failure is written on the error channel.
pub async fn forward<B: Backend>(
    backend: &B,
    pod: Arc<Pod>,
    port: u16,
    mut incoming: mpsc::Receiver<Bytes>,
    data: Outbound,
    error: Outbound,
    client_gone: CancellationToken,
) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let connection = tokio::select! {
        connection = backend.port_forward(pod, port) => connection,
        () = client_gone.cancelled() => return,
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(failure) => {
            let message = format!("error forwarding port {port} to pod {name}, uid {uid}: {failure}");
            tracing::info!(%message, "port-forward");
            let _ = error.write(Bytes::from(message)).await;
            error.finish().await;
            data.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tokio::io::split(connection);
    let upstream = async move {
        while let Some(chunk) = incoming.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client half-closed: so do we, towards the pod.
        let _ = to_pod.shutdown().await;
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if data.write(Bytes::copy_from_slice(&buffer[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        data.finish().await;
    };
    // The pod's side ending ends the forward; the client's half-close only half-closes.
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
        () = client_gone.cancelled() => return,
    }
    error.finish().await;
}

/// Serves exec or attach on a SPDY connection: waits for the streams the options ask for (the
/// error stream, then each of stdin/stdout/stderr asked for, and resize with a tty on v3+),
/// runs, reports, closes.
pub async fn spdy_remote_command<B: Backend>(
    connection: Connection,
    protocol: &str,
    backend: &B,
    command: RemoteCommand,
    limits: Limits,
) {
    let RemoteCommand {
        pod,
        container,
        action,
        options,
    } = command;
    let mut connection = connection;
    let resizing = !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io" | "");
    let expected = 1
        + usize::from(options.stdin)
        + usize::from(options.stdout)
        + usize::from(options.stderr)
        + usize::from(options.tty && resizing);
    let mut streams: HashMap<&'static str, session::Stream> = HashMap::new();
    let deadline = tokio::time::sleep(limits.stream_creation_timeout);
    tokio::pin!(deadline);
    while streams.len() < expected {
        let stream = tokio::select! {
            stream = connection.streams.recv() => stream,
            () = &mut deadline => {
                tracing::info!(expected, got = streams.len(), "SPDY: timed out waiting for the client to create streams");
                connection.close().await;
                return;
            }
        };
        let Some(stream) = stream else {
            tracing::debug!("SPDY: the client left before opening its streams");
            return;
        };
        // Only the streams the query asked for count, so a stray one cannot stand in for one
        // still to come.
        let kind = match spdy::header(&stream.headers, "streamType") {
            Some("error") => "error",
            Some("stdin") if options.stdin => "stdin",
            Some("stdout") if options.stdout => "stdout",
            Some("stderr") if options.stderr => "stderr",
            Some("resize") if resizing && options.tty => "resize",
            other => {
                tracing::info!(stream_type = ?other, "SPDY: refusing a stream the request did not ask for");
                let _ = stream.writer.reset(spdy::RST_CANCEL).await;
                continue;
            }
        };
        streams.insert(kind, stream);
    }
    let Some(error) = streams.remove("error") else {
        tracing::info!("SPDY: the client opened no error stream");
        connection.close().await;
        return;
    };
    let mut take = |kind: &str| streams.remove(kind);
    let stdin = take("stdin");
    let stdout = take("stdout");
    let stderr = take("stderr");
    let resize = take("resize");
    if let Some(stdin) = &stdin
        && matches!(protocol, "channel.k8s.io" | "")
    {
        // v1 clients wait for the server to end its (unused) side of stdin before copying.
        let _ = stdin.writer.finish().await;
    }
    let channels = Channels {
        stdin: stdin.map(|s| s.incoming),
        stdout: stdout.map(|s| Outbound::Spdy(s.writer)),
        stderr: stderr.map(|s| Outbound::Spdy(s.writer)),
        error: Outbound::Spdy(error.writer),
        resize: resize.map(|s| s.incoming),
        status: if matches!(protocol, "v5.channel.k8s.io" | "v4.channel.k8s.io") {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        },
    };
    remote_command(
        backend,
        pod,
        &container,
        action,
        options.tty,
        channels,
        connection.closed(),
    )
    .await;
    connection.close().await;
}

/// Serves port-forward on a SPDY connection (also when tunnelled in a WebSocket): each pair of
/// streams with the same `requestID`, one `data` and one `error`, is one connection to `port`.
pub async fn spdy_port_forward<B: Backend>(
    connection: Connection,
    backend: &B,
    pod: Arc<Pod>,
    limits: Limits,
) {
    struct Pending {
        data: Option<session::Stream>,
        error: Option<session::Stream>,
        deadline: tokio::time::Instant,
    }
    let mut connection = connection;
    let client_gone = connection.closed();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // Forwards run in this task, so they all end (and drop their pod connections) with it.
    let mut forwards = futures::stream::FuturesUnordered::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        let stream = tokio::select! {
            stream = connection.streams.recv() => stream,
            Some(()) = futures::StreamExt::next(&mut forwards) => continue,
            () = sleep_until_some(next_deadline) => {
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| r.clone()).collect();
                for request in expired {
                    let Some(pair) = pending.remove(&request) else { continue };
                    let message = format!("timed out waiting for the data and error streams of request {request}");
                    tracing::info!(%message, "port-forward");
                    if let Some(error) = pair.error {
                        let _ = error.writer.write(Bytes::from(message)).await;
                        let _ = error.writer.finish().await;
                    }
                    if let Some(data) = pair.data {
                        let _ = data.writer.reset(spdy::RST_CANCEL).await;
                    }
                }
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let port = spdy::header(&stream.headers, "port").map(str::to_owned);
        let kind = spdy::header(&stream.headers, "streamType").map(str::to_owned);
        let port = match port.as_deref().map(str::parse::<u16>) {
            Some(Ok(port)) if port > 0 => port,
            _ => {
                tracing::info!(
                    ?port,
                    "port-forward: a stream without a valid port header is refused"
                );
                let _ = stream.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        if !matches!(kind.as_deref(), Some("data" | "error")) {
            tracing::info!(?kind, "port-forward: a stream of unknown type is refused");
            let _ = stream.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        let request = match spdy::header(&stream.headers, "requestID") {
            Some(id) if !id.is_empty() => id.to_owned(),
            // Old clients: the error stream's id names the pair, the data stream is 2 later.
            _ if kind.as_deref() == Some("error") => stream.id.to_string(),
            _ => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pending.entry(request.clone()).or_insert_with(|| Pending {
            data: None,
            error: None,
            deadline: tokio::time::Instant::now() + limits.stream_creation_timeout,
        });
        let slot = if kind.as_deref() == Some("data") {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            tracing::info!(%request, "port-forward: a second stream of the same type for one request is refused");
            let _ = stream.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        let complete = pair.data.is_some() && pair.error.is_some();
        if complete
            && let Some(Pending {
                data: Some(data),
                error: Some(error),
                ..
            }) = pending.remove(&request)
        {
            forwards.push(forward(
                backend,
                pod.clone(),
                port,
                data.incoming,
                Outbound::Spdy(data.writer),
                Outbound::Spdy(error.writer),
                client_gone.clone(),
            ));
        }
    }
    drop(forwards);
    connection.close().await;
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Output gathered in memory (`/run`), at most [`Collected::LIMIT`] bytes.
#[derive(Debug, Clone, Default)]
pub struct Collected(Arc<std::sync::Mutex<Vec<u8>>>);

impl Collected {
    pub const LIMIT: usize = 16 << 20;

    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl tokio::io::AsyncWrite for Collected {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut output = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if output.len() + data.len() > Collected::LIMIT {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "output beyond {} bytes; use exec for this command",
                Collected::LIMIT
            ))));
        }
        output.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A SPDY connection with the server's limits.
pub fn spdy_connection<IO>(io: IO, limits: Limits) -> Connection
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    Connection::start(
        io,
        session::Settings {
            idle_timeout: limits.idle_timeout,
            max_streams: limits.max_streams_per_connection,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_read_one_and_true_and_repeated_commands() {
        let options = Options::parse(&query(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi"),
            ("input", "1"),
            ("output", "true"),
            ("error", "0"),
        ]))
        .unwrap();
        assert_eq!(
            options,
            Options {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            }
        );
    }

    #[test]
    fn a_tty_drops_stderr_and_no_stream_at_all_is_refused() {
        let options = Options::parse(&query(&[("tty", "1"), ("error", "1"), ("output", "1")])).unwrap();
        assert!(options.tty && options.stdout && !options.stderr, "{options:?}");
        assert_eq!(
            Options::parse(&query(&[("tty", "1"), ("error", "1")])),
            Err(Error::NoStreams),
            "stderr alone with a tty is no stream at all"
        );
        assert_eq!(
            Options::parse(&query(&[("command", "ls")])),
            Err(Error::NoStreams)
        );
    }

    #[test]
    fn ports_are_repeated_or_comma_separated_and_never_zero() {
        assert_eq!(
            ports(&query(&[("port", "80,443"), ("port", "8080")])),
            Ok(vec![80, 443, 8080])
        );
        assert_eq!(ports(&query(&[])), Err(Error::NoPort));
        assert_eq!(ports(&query(&[("port", "0")])), Err(Error::BadPort("0".into())));
        assert_eq!(ports(&query(&[("port", "x")])), Err(Error::BadPort("x".into())));
    }

    #[test]
    fn negotiation_takes_our_newest_protocol_the_client_offers() {
        let offered = vec![
            "v4.channel.k8s.io, v3.channel.k8s.io".to_owned(),
            "v5.channel.k8s.io".to_owned(),
        ];
        assert_eq!(negotiate(&offered, &EXEC_PROTOCOLS), Some("v5.channel.k8s.io"));
        assert_eq!(negotiate(&["v9".to_owned()], &EXEC_PROTOCOLS), None);
    }

    #[test]
    fn a_non_zero_exit_code_is_a_failure_status_naming_the_code() {
        let status = serde_json::to_value(end_status(&Ok(Some(ExitStatus::Code(3))))).unwrap();
        assert_eq!(
            status,
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: exit status 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
            })
        );
        let success = serde_json::to_value(end_status(&Ok(Some(ExitStatus::Code(0))))).unwrap();
        assert_eq!(success, serde_json::json!({"metadata": {}, "status": "Success"}));
    }
}
