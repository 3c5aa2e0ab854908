//! The agents' exec, attach and port-forward: the server side of `tke_tencent::agent_stream`, done
//! for real on the machine that runs cloudsim.
//!
//! - exec runs the command as a child process of cloudsim with the container's environment (from
//!   the create request; `PATH` from cloudsim's own unless the container sets one) in the
//!   instance's working directory, a temporary directory removed with the instance. A command
//!   that is not found exits 127 and one that cannot be executed 126, as a container runtime
//!   reports them. There is no pty: with `tty=1` the process still gets pipes, its stderr merged
//!   into stdout as a terminal would show it, and resizes are ignored. The process is killed when
//!   the WebSocket closes or the instance goes.
//! - attach joins the simulated main process: its log lines (the ones DescribeEksContainerInstanceLog
//!   serves) as they are written, and the client's stdin echoed into that output.
//! - port-forward connects to a port on the instance's private IP, where cloudsim serves the ports
//!   the containers declare in [`PORTS_ENV`](crate::PORTS_ENV) (see `agents`).
//!
//! Authentication happens before the upgrade; see `agents::authorize`.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tke_tencent::agent_stream::{self, CLOSE, ERROR, STDERR, STDIN, STDOUT, StreamRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Read size of the process's pipes and the forwarded connections.
const CHUNK: usize = 32 * 1024;

/// The WebSocket over an upgraded connection.
pub async fn websocket(upgraded: hyper::upgrade::Upgraded) -> Socket {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
}

/// What an exec runs.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub request: StreamRequest,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

/// The exit code a container runtime reports for a command that could not be started.
fn spawn_failure_code(err: &io::Error) -> i32 {
    match err.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Runs one exec over `socket` until the process exits (the status goes out on the error channel),
/// the client closes the WebSocket, or `stop` (the instance is gone): both kill the process.
pub async fn exec(socket: Socket, spec: ExecSpec, stop: CancellationToken) {
    let (mut sink, mut incoming) = socket.split();
    let request = &spec.request;
    let Some((program, args)) = request.command.split_first() else {
        let _ = sink
            .send(frame(ERROR, &agent_stream::failure_json("no command given")))
            .await;
        let _ = sink.close().await;
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &spec.workdir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if request.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if request.stderr || (request.tty && request.stdout) {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let code = spawn_failure_code(&err);
            let message = format!("{program}: {err}\n");
            let channel = if request.tty { STDOUT } else { STDERR };
            if request.stderr || request.tty {
                let _ = sink.send(frame(channel, message.as_bytes())).await;
            }
            let _ = sink.send(frame(ERROR, &agent_stream::status_json(code))).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (frames, mut outgoing) = mpsc::channel::<Message>(16);
    // Without a pty, a terminal's view of stderr is stdout.
    let stderr_channel = if request.tty { STDOUT } else { STDERR };
    let run = async {
        futures::join!(
            pump(stdout, STDOUT, frames.clone()),
            pump(stderr, stderr_channel, frames.clone())
        );
        let status = match child.wait().await {
            Ok(status) => match status.code() {
                Some(code) => agent_stream::status_json(code),
                None => agent_stream::failure_json(&format!("the command was killed ({status})")),
            },
            Err(err) => agent_stream::failure_json(&format!("waiting for the command: {err}")),
        };
        let _ = frames.send(frame(ERROR, &status)).await;
        drop(frames);
    };
    let write = async {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return false;
            }
        }
        let _ = sink.close().await;
        true
    };
    let input = async {
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((&STDIN, bytes)) => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(bytes).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some((&CLOSE, [STDIN])) => stdin = None,
                _ => {}
            }
        }
    };
    // The process's end is the output's end; the client going away (or the instance) ends it early,
    // and dropping `child` then kills the process.
    tokio::select! {
        _ = async { futures::join!(run, write) } => {}
        () = input => {}
        () = stop.cancelled() => {}
    }
}

/// Copies a pipe of the process into frames of `channel`.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, channel: u8, frames: mpsc::Sender<Message>) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0; CHUNK];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frames.send(frame(channel, &buffer[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Relays one forwarded connection between `socket` and `connection` (made before the upgrade, so
/// that a refused port is an HTTP error the client sees) until either side is done.
pub async fn port_forward(socket: Socket, connection: TcpStream, stop: CancellationToken) {
    let (mut sink, mut incoming) = socket.split();
    let (mut from_target, mut to_target) = connection.into_split();
    let outbound = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            match from_target.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let inbound = async {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                // The client's half-close: the target still answers.
                Message::Binary(data) if data.is_empty() => {
                    let _ = to_target.shutdown().await;
                }
                Message::Binary(data) if to_target.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
        () = stop.cancelled() => {}
    }
}

/// Attaches to the simulated main process: `lines` yields its output as it is written (ending when
/// the process does); the client's stdin is echoed into it.
pub async fn attach(
    socket: Socket,
    request: StreamRequest,
    mut lines: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    let (mut sink, mut incoming) = socket.split();
    let (echo, mut echoed) = mpsc::channel::<Vec<u8>>(16);
    let output = async {
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) if request.stdout => {
                        if sink.send(frame(STDOUT, line.as_bytes())).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                Some(bytes) = echoed.recv() => {
                    if request.stdout && sink.send(frame(STDOUT, &bytes)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(frame(ERROR, &agent_stream::status_json(0))).await;
        let _ = sink.close().await;
    };
    let input = async {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(data) => {
                    if let Some((&STDIN, bytes)) = data.split_first()
                        && request.stdin
                    {
                        let _ = echo.send(bytes.to_vec()).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        () = output => {}
        () = input => {}
        () = stop.cancelled() => {}
    }
}
