//! The agents' exec, attach and port-forward: the server side of `tke_tencent::agent_stream`, done
//! for real on the machine that runs cloudsim.
//!
//! - exec runs the command as a child process of cloudsim with the container's environment (from
//!   the create request; `PATH` from cloudsim's own unless the container sets one) in the
//!   instance's working directory, a temporary directory removed with the instance. A command
//!   that is not found exits 127 and one that cannot be executed 126, as a container runtime
//!   reports them. With `tty=1` the process runs on a real pseudo-terminal ([`crate::pty`]): its
//!   controlling terminal, stdin, stdout and stderr, all of it read back as stdout; resize
//!   messages set the terminal's size; `TERM=xterm` unless the container sets one, as
//!   containerd does. The process is killed when the WebSocket closes or the instance goes (with a
//!   tty, closing the terminal also hangs its session up).
//! - attach joins the simulated main process: its log lines (the ones DescribeEksContainerInstanceLog
//!   serves) as they are written, and the client's stdin echoed into that output and logged line
//!   by line (`<time> <container> read: <line>`).
//! - port-forward connects to a port on the instance's private IP, where cloudsim serves the ports
//!   the containers declare in [`PORTS_ENV`](crate::PORTS_ENV) (see `agents`).
//!
//! Authentication happens before the upgrade; see `agents::authorize`.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tke_tencent::agent_stream::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, StreamRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::pty::Pty;

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Read size of the process's pipes and the forwarded connections.
const CHUNK: usize = 32 * 1024;
/// After a terminal's process exited, how long its last output may take to be read.
const TERMINAL_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

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

/// Runs `spec`'s command to its end without a stream, as an exec probe does: stdin closed, stdout
/// and stderr captured. The exit code (127 or 126 when it cannot start, as for an exec) and the
/// output; the process is killed if the future is dropped (a probe's timeout).
pub async fn run_to_end(spec: &ExecSpec) -> (i32, Vec<u8>) {
    let Some((program, args)) = spec.request.command.split_first() else {
        return (126, b"no command given".to_vec());
    };
    let mut command = tokio::process::Command::new(program);
    command_env(spec, &mut command);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match command.output().await {
        Ok(output) => {
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            // Killed by a signal: what a shell would report.
            let code = output.status.code().unwrap_or(128 + 9);
            (code, text)
        }
        Err(err) => (spawn_failure_code(&err), format!("{program}: {err}").into_bytes()),
    }
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
    if request.tty {
        return exec_in_terminal(sink, incoming, (program, args), &spec, stop).await;
    }
    let mut command = tokio::process::Command::new(program);
    command_env(&spec, &mut command);
    command
        .args(args)
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
        .stderr(if request.stderr {
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
            if request.stderr {
                let _ = sink.send(frame(STDERR, message.as_bytes())).await;
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
    let run = async {
        futures::join!(
            pump(stdout, STDOUT, frames.clone()),
            pump(stderr, STDERR, frames.clone())
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

/// The process environment of an exec: cloudsim's `PATH` unless the container sets one, `HOME` the
/// working directory, then the container's variables.
fn command_env(spec: &ExecSpec, command: &mut tokio::process::Command) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &spec.workdir);
    if spec.request.tty {
        command.env("TERM", "xterm");
    }
    command
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir);
}

/// A resize message's size (`{"Width":80,"Height":24}`, as kubectl writes it).
fn terminal_size(payload: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    serde_json::from_slice::<Size>(payload)
        .ok()
        .map(|size| (size.width, size.height))
}

/// An exec with a tty: the process on a pseudo-terminal, whose output (stdout and stderr alike)
/// goes out as stdout; stdin is typed into it and resize messages set its size. The end of the
/// client's stdin is typed as the terminal's end-of-file (Ctrl-D), as a user would.
async fn exec_in_terminal(
    mut sink: SplitSink<Socket, Message>,
    mut incoming: SplitStream<Socket>,
    (program, args): (&String, &[String]),
    spec: &ExecSpec,
    stop: CancellationToken,
) {
    let request = &spec.request;
    let started = Pty::open(80, 24).and_then(|mut pty| {
        let mut command = pty.command(program, args)?;
        command_env(spec, &mut command);
        command.kill_on_drop(true);
        // Dropping the command closes our copies of the terminal's slave side.
        Ok((command.spawn()?, pty))
    });
    let (mut child, pty) = match started {
        Ok(started) => started,
        Err(err) => {
            let failure = agent_stream::failure_json(&format!("starting a terminal: {err}"));
            let _ = sink.send(frame(ERROR, &failure)).await;
            let _ = sink.close().await;
            return;
        }
    };
    let output = async {
        let mut buffer = vec![0; CHUNK];
        let mut exited = None;
        loop {
            let read = if exited.is_some() {
                // What the process wrote last. A background job it left may hold the terminal
                // open: the exec still ends with the process, as a runtime's does.
                match tokio::time::timeout(TERMINAL_DRAIN, pty.read(&mut buffer)).await {
                    Ok(read) => read,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    read = pty.read(&mut buffer) => read,
                    status = child.wait() => {
                        exited = Some(status);
                        continue;
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if request.stdout && sink.send(frame(STDOUT, &buffer[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let status = match exited {
            Some(status) => status,
            None => child.wait().await,
        };
        let status = match status {
            Ok(status) => match status.code() {
                Some(code) => agent_stream::status_json(code),
                None => agent_stream::failure_json(&format!("the command was killed ({status})")),
            },
            Err(err) => agent_stream::failure_json(&format!("waiting for the command: {err}")),
        };
        let _ = sink.send(frame(ERROR, &status)).await;
        let _ = sink.close().await;
    };
    let input = async {
        let mut typing = request.stdin;
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((&STDIN, bytes)) if typing && pty.write_all(bytes).await.is_err() => {
                    typing = false;
                }
                Some((&RESIZE, size)) => {
                    if let Some((width, height)) = terminal_size(size) {
                        let _ = pty.resize(width, height);
                    }
                }
                Some((&CLOSE, [STDIN])) if typing => {
                    typing = false;
                    let _ = pty.write_all(b"\x04").await;
                }
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

/// What the client typed, for the simulated process to echo.
enum Typed {
    Bytes(Vec<u8>),
    /// The end of its input: stdin closed, or Ctrl-D or Ctrl-C typed on a terminal.
    End,
}

/// Splits what was typed on a terminal at an end-of-input key (Ctrl-D, or Ctrl-C, which would
/// end a process like `cat`): the bytes before it, and whether it came. A terminal shows Enter
/// (`\r` in raw mode) as a new line.
fn typed_on_terminal(bytes: &[u8]) -> (Vec<u8>, bool) {
    let end = bytes.iter().position(|b| matches!(b, 0x03 | 0x04));
    let mut shown = Vec::with_capacity(bytes.len());
    for &byte in &bytes[..end.unwrap_or(bytes.len())] {
        match byte {
            b'\r' => shown.extend_from_slice(b"\r\n"),
            byte => shown.push(byte),
        }
    }
    (shown, end.is_some())
}

/// Attaches to the simulated main process: `lines` yields its output as it is written (ending when
/// the process does); the client's stdin is echoed into it, as by `cat` (on a terminal, Enter as a
/// new line), and each line typed goes to `read` (which logs it: other attaches and the log see
/// it, in `lines` too). The end of that input (stdin closed, or Ctrl-D or Ctrl-C on a terminal)
/// ends the attach with success, so `kubectl run -i`/`-it --rm` finishes; the simulated process
/// itself runs on, as its log lines do.
pub async fn attach(
    socket: Socket,
    request: StreamRequest,
    mut lines: mpsc::Receiver<String>,
    read: impl Fn(&str) + Send,
    stop: CancellationToken,
) {
    let (mut sink, mut incoming) = socket.split();
    let (echo, mut echoed) = mpsc::channel::<Typed>(16);
    // A terminal's lines end in "\r\n".
    let newline = if request.tty { "\r\n" } else { "\n" };
    let output = async {
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) if request.stdout => {
                        let line = line.trim_end_matches('\n');
                        if sink.send(frame(STDOUT, format!("{line}{newline}").as_bytes())).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                Some(typed) = echoed.recv() => match typed {
                    Typed::Bytes(bytes) => {
                        if request.stdout && sink.send(frame(STDOUT, &bytes)).await.is_err() {
                            return;
                        }
                    }
                    Typed::End => break,
                },
            }
        }
        let _ = sink.send(frame(ERROR, &agent_stream::status_json(0))).await;
        let _ = sink.close().await;
    };
    let input = async {
        // What was typed since the last end of line.
        let mut line = Vec::new();
        let read_lines = |bytes: &[u8], line: &mut Vec<u8>| {
            for &byte in bytes {
                if byte == b'\n' || (request.tty && byte == b'\r') {
                    read(&String::from_utf8_lossy(line));
                    line.clear();
                } else {
                    line.push(byte);
                }
            }
        };
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => return,
                _ => continue,
            };
            match data.split_first() {
                Some((&STDIN, bytes)) if request.stdin => {
                    let (shown, ended) = if request.tty {
                        typed_on_terminal(bytes)
                    } else {
                        (bytes.to_vec(), false)
                    };
                    let typed = bytes.iter().position(|b| request.tty && matches!(b, 0x03 | 0x04));
                    read_lines(&bytes[..typed.unwrap_or(bytes.len())], &mut line);
                    if !shown.is_empty() {
                        let _ = echo.send(Typed::Bytes(shown)).await;
                    }
                    if ended {
                        break;
                    }
                }
                Some((&CLOSE, [STDIN])) if request.stdin => break,
                _ => {}
            }
        }
        if !line.is_empty() {
            read(&String::from_utf8_lossy(&line));
        }
        // The end of the input: the output ends the session; the WebSocket closing ends it too.
        let _ = echo.send(Typed::End).await;
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    };
    tokio::select! {
        () = output => {}
        () = input => {}
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_on_a_terminal_shows_enter_as_a_new_line_and_ends_at_ctrl_d_or_ctrl_c() {
        assert_eq!(typed_on_terminal(b"hi\r"), (b"hi\r\n".to_vec(), false));
        assert_eq!(typed_on_terminal(b"bye\x04ignored"), (b"bye".to_vec(), true));
        assert_eq!(typed_on_terminal(b"\x03"), (Vec::new(), true));
    }

    #[test]
    fn a_resize_message_reads_as_kubectl_writes_it() {
        assert_eq!(terminal_size(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        assert_eq!(terminal_size(b"not json"), None);
    }
}
