//! `kubectl exec`, `attach` and `port-forward` of a cloud pod through its sandbox agent, as the
//! client of `tke_tencent::agent_stream`: a signed WebSocket to the agent at the pod IP. Exec and
//! attach relay the client's streams to `v5.channel.k8s.io` frames and back (the agent speaks the
//! kubelet's protocol, so nothing is translated but the frame headers); port-forward is a byte
//! pipe. Dropping a call drops its WebSocket, and the agent then kills the process or closes the
//! forwarded connection.

use std::{net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use tke_tencent::{
    Credentials,
    agent_stream::{self, CLOSE, ERROR, Outcome, RESIZE, STDERR, STDIN, STDOUT},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

use super::super::{Error, ErrorKind, ExitStatus, GuardedStream, PortStream, Result, StreamIo};

/// Read size of the client's stdin and the forwarded connections.
const CHUNK: usize = 32 * 1024;
/// How long reaching an agent and its WebSocket handshake may take: a sandbox whose address does
/// not answer must not hold `kubectl exec` for the kernel's minutes of SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a sandbox's agent is, and which sandbox it serves (the signature names it).
#[derive(Debug, Clone)]
pub struct AgentTarget {
    pub addr: SocketAddr,
    pub instance_id: String,
}

/// Opens a signed WebSocket to `path?query` on the agent.
pub async fn connect(
    action: &'static str,
    credentials: &Credentials,
    target: &AgentTarget,
    path: &str,
    query: &str,
    subprotocol: Option<&'static str>,
) -> Result<WebSocketStream<TcpStream>> {
    let failed = |kind: ErrorKind, code: &str, message: String| Error {
        action,
        kind,
        code: code.to_owned(),
        message,
        maybe_executed: false,
    };
    let addr = target.addr;
    let url = if query.is_empty() {
        format!("ws://{addr}{path}")
    } else {
        format!("ws://{addr}{path}?{query}")
    };
    let mut request = url.as_str().into_client_request().map_err(|e| {
        failed(
            ErrorKind::Permanent,
            "InvalidAgentRequest",
            format!("sandbox {}: {e}", target.instance_id),
        )
    })?;
    let timestamp = jiff::Timestamp::now().as_second();
    let authorization = agent_stream::sign(credentials, &target.instance_id, "GET", path, query, timestamp);
    let mut authorization = HeaderValue::from_str(&authorization).map_err(|_| {
        failed(
            ErrorKind::Permanent,
            "InvalidCredentials",
            "the SecretId cannot travel in an HTTP header".into(),
        )
    })?;
    authorization.set_sensitive(true);
    request
        .headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, authorization);
    if let Some(protocol) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
    }
    let handshake = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            failed(
                ErrorKind::Transient,
                "AgentUnreachable",
                format!("sandbox {} agent at {addr}: {e}", target.instance_id),
            )
        })?;
        let _ = stream.set_nodelay(true);
        Ok(tokio_tungstenite::client_async(request, stream).await)
    };
    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            failed(
                ErrorKind::Transient,
                "AgentUnreachable",
                format!(
                    "sandbox {} agent at {addr} did not answer within {CONNECT_TIMEOUT:?}",
                    target.instance_id
                ),
            )
        })??;
    match handshake {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).trim().to_owned())
                .unwrap_or_default();
            let (kind, code) = match status {
                401 | 403 => (ErrorKind::Permanent, "AgentRefused"),
                404 => (ErrorKind::NotFound, "AgentNotFound"),
                409 => (ErrorKind::Permanent, "SandboxNotRunning"),
                400 => (ErrorKind::Permanent, "InvalidAgentRequest"),
                _ => (ErrorKind::Transient, "AgentUnavailable"),
            };
            Err(failed(
                kind,
                code,
                format!(
                    "sandbox {} agent at {addr} answered HTTP {status}: {body}",
                    target.instance_id
                ),
            ))
        }
        Err(e) => Err(failed(
            ErrorKind::Transient,
            "AgentUnavailable",
            format!("sandbox {} agent at {addr}: {e}", target.instance_id),
        )),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

/// Copies the client's streams to the agent's `v5.channel.k8s.io` session and back until the agent
/// ends it; then the exit status from its error channel.
pub async fn relay<S>(socket: WebSocketStream<S>, io: StreamIo) -> ExitStatus
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (mut sink, mut incoming) = socket.split();
    let StreamIo {
        stdin,
        mut stdout,
        mut stderr,
        resize,
        ..
    } = io;
    let (frames, mut outgoing) = mpsc::channel::<Message>(16);
    let write = async {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    };
    let input = {
        let frames = frames.clone();
        async move {
            let Some(mut stdin) = stdin else { return };
            let mut buffer = vec![0; CHUNK];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.send(frame(STDIN, &buffer[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = frames.send(frame(CLOSE, &[STDIN])).await;
        }
    };
    let sizes = async move {
        let Some(mut sizes) = resize else { return };
        while let Some(size) = sizes.recv().await {
            // As kubectl writes it.
            let json = format!("{{\"Width\":{},\"Height\":{}}}", size.width, size.height);
            if frames.send(frame(RESIZE, json.as_bytes())).await.is_err() {
                return;
            }
        }
    };
    let output = async {
        let mut outcome = None;
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, bytes)) = data.split_first() else {
                continue;
            };
            let sink = match channel {
                STDOUT => stdout.as_mut(),
                STDERR => stderr.as_mut(),
                ERROR => {
                    outcome = Some(agent_stream::parse_status(bytes));
                    continue;
                }
                _ => continue,
            };
            if let Some(sink) = sink {
                // A client that stopped reading must not stop the status from arriving.
                let _ = sink.write_all(bytes).await;
            }
        }
        outcome
    };
    // Input and resizes may outlive the output (a client that keeps stdin open after the command
    // ended); the command's end is the output's end.
    let outcome = tokio::select! {
        outcome = output => outcome,
        () = async { futures::join!(write, input, sizes); std::future::pending::<()>().await } => None,
    };
    for sink in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = sink.shutdown().await;
    }
    match outcome {
        Some(Outcome::Exited(code)) => ExitStatus::Code(code),
        Some(Outcome::Failed(message)) => ExitStatus::Killed(message),
        None => ExitStatus::Killed("the sandbox agent's connection ended without a status".into()),
    }
}

/// One forwarded connection as a byte stream: a pipe to a task relaying it to the agent's
/// WebSocket. Dropping it ends the task, which drops the WebSocket.
pub fn forwarded<S>(socket: WebSocketStream<S>) -> PortStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(CHUNK * 2);
    let task = tokio::spawn(pipe(socket, theirs));
    Box::new(GuardedStream::new(ours, move || task.abort()))
}

/// Relays bytes between `local` and the WebSocket. A zero-length binary message is the local
/// side's half-close (our protocol's end of data), after which the agent's bytes still flow.
async fn pipe<S>(socket: WebSocketStream<S>, local: DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (mut sink, mut incoming) = socket.split();
    let (mut from_local, mut to_local) = tokio::io::split(local);
    let outbound = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            match from_local.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::binary(Vec::new())).await;
        std::future::pending::<()>().await;
    };
    let inbound = async {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(data) if to_local.write_all(&data).await.is_err() => return,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_local.shutdown().await;
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}

#[cfg(test)]
mod tests {
    use tke_kubelet_api::backend::TerminalSize;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// The relay against a scripted agent over an in-memory pipe: stdin goes out on channel 0 and
    /// its end as a close of channel 0, a resize on channel 4; channels 1 and 2 reach stdout and
    /// stderr, which are shut down at the end; the error channel's status is the exit code.
    #[tokio::test]
    async fn the_relay_maps_the_clients_streams_to_v5_frames_and_the_status_to_an_exit_code() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut agent = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let (stdout, mut stdout_read) = tokio::io::duplex(1024);
        let (stderr, mut stderr_read) = tokio::io::duplex(1024);
        let (resize_tx, resize_rx) = mpsc::channel(1);
        resize_tx
            .send(TerminalSize {
                width: 80,
                height: 24,
            })
            .await
            .unwrap();
        drop(resize_tx);
        let io = StreamIo {
            stdin: Some(Box::pin(&b"hello"[..])),
            stdout: Some(Box::pin(stdout)),
            stderr: Some(Box::pin(stderr)),
            tty: false,
            resize: Some(resize_rx),
        };
        let agent = async move {
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match agent.next().await.unwrap().unwrap() {
                    Message::Binary(data) => seen.push(data.to_vec()),
                    _ => continue,
                }
            }
            agent.send(frame(STDOUT, b"out")).await.unwrap();
            agent.send(frame(STDERR, b"err")).await.unwrap();
            agent
                .send(frame(ERROR, &agent_stream::status_json(3)))
                .await
                .unwrap();
            agent.close(None).await.unwrap();
            seen
        };
        let (status, mut seen) = tokio::join!(relay(client, io), agent);
        assert_eq!(status, ExitStatus::Code(3));
        seen.sort();
        assert_eq!(
            seen,
            vec![
                b"\x00hello".to_vec(),
                b"\x04{\"Width\":80,\"Height\":24}".to_vec(),
                vec![CLOSE, STDIN],
            ]
        );
        let mut text = String::new();
        stdout_read.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "out", "stdout ends (is shut down) after the relay");
        text.clear();
        stderr_read.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "err");
    }

    #[tokio::test]
    async fn a_session_that_ends_without_a_status_is_not_a_success() {
        let (client, server) = tokio::io::duplex(1024);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut agent = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let io = StreamIo {
            stdin: None,
            stdout: None,
            stderr: None,
            tty: false,
            resize: None,
        };
        let (status, ()) = tokio::join!(relay(client, io), async move {
            agent.close(None).await.unwrap();
        });
        assert!(matches!(status, ExitStatus::Killed(_)), "{status:?}");
    }
}
