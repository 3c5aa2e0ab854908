//! A kubelet API backend of real local processes and loopback connections, and a loopback echo
//! listener, for the streaming tests.

#![allow(dead_code)]

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use tke_kubelet_api::{
    Backend, ExitStatus, LogOptions, LogStream, PodUsage, PortStream, StreamIo,
    backend::{self, RunningPod},
};
use tokio::{
    io::{AsyncRead, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// One pod. Exec runs the command as a local process; attach echoes stdin to stdout;
/// port-forward connects to that port on 127.0.0.1. `running` counts execs in flight, so a test
/// can see the work end.
pub struct LocalNode {
    pub pod: Arc<Pod>,
    pub running: watch::Sender<usize>,
}

impl LocalNode {
    pub fn new(pod: Pod) -> LocalNode {
        LocalNode {
            pod: Arc::new(pod),
            running: watch::channel(0).0,
        }
    }
}

/// Counts one exec in flight for as long as it lives.
struct InFlight(watch::Sender<usize>);

impl InFlight {
    fn new(counter: &watch::Sender<usize>) -> InFlight {
        counter.send_modify(|n| *n += 1);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

fn internal(e: impl std::fmt::Display) -> backend::Error {
    backend::Error::new(backend::ErrorKind::Internal, e.to_string())
}

async fn copy_out(from: Option<impl AsyncRead + Unpin>, to: Option<backend::StreamWriter>) {
    if let (Some(mut from), Some(mut to)) = (from, to) {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
    }
}

impl Backend for LocalNode {
    fn pods(&self) -> Vec<Arc<Pod>> {
        vec![self.pod.clone()]
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let meta = &self.pod.metadata;
        (meta.namespace.as_deref() == Some(namespace) && meta.name.as_deref() == Some(name))
            .then(|| self.pod.clone())
    }

    fn running_pods(&self) -> Vec<RunningPod> {
        Vec::new()
    }

    async fn logs(&self, _: Arc<Pod>, _: &str, _: LogOptions) -> backend::Result<LogStream> {
        Ok(futures::stream::empty().boxed())
    }

    async fn usage(&self, _: &[Arc<Pod>]) -> backend::Result<Vec<PodUsage>> {
        Ok(Vec::new())
    }

    async fn exec(
        &self,
        _pod: Arc<Pod>,
        _container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> backend::Result<ExitStatus> {
        let _in_flight = InFlight::new(&self.running);
        // Stands in for a terminal program (no pty here): reports the first size the client sets.
        if command == ["tty-size"] {
            let (Some(mut resize), Some(mut stdout), true) = (io.resize, io.stdout, io.tty) else {
                return Err(backend::Error::new(
                    backend::ErrorKind::BadRequest,
                    "tty-size needs a tty",
                ));
            };
            let size = resize.recv().await.ok_or_else(|| internal("no terminal size"))?;
            let text = format!("{}x{}\n", size.width, size.height);
            stdout.write_all(text.as_bytes()).await.map_err(internal)?;
            stdout.shutdown().await.map_err(internal)?;
            return Ok(ExitStatus::Code(0));
        }
        let (program, args) = command
            .split_first()
            .ok_or_else(|| backend::Error::new(backend::ErrorKind::BadRequest, "no command"))?;
        let piped = |wanted: bool| {
            if wanted {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(piped(io.stdin.is_some()))
            .stdout(piped(io.stdout.is_some()))
            .stderr(piped(io.stderr.is_some()))
            // Dropping this future (the client went away) kills the process.
            .kill_on_drop(true)
            .spawn()
            .map_err(internal)?;
        let stdin = match (io.stdin, child.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(AbortOnDrop(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }))),
            _ => None,
        };
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (status, (), ()) = tokio::join!(
            child.wait(),
            copy_out(stdout, io.stdout),
            copy_out(stderr, io.stderr)
        );
        drop(stdin);
        let status = status.map_err(internal)?;
        Ok(match status.code() {
            Some(code) => ExitStatus::Code(code),
            None => ExitStatus::Killed(status.to_string()),
        })
    }

    async fn attach(&self, _pod: Arc<Pod>, _container: &str, io: StreamIo) -> backend::Result<()> {
        if let (Some(mut from), Some(mut to)) = (io.stdin, io.stdout) {
            tokio::io::copy(&mut from, &mut to).await.map_err(internal)?;
            to.shutdown().await.map_err(internal)?;
        }
        Ok(())
    }

    async fn port_forward(&self, _pod: Arc<Pod>, port: u16) -> backend::Result<PortStream> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
            backend::Error::new(
                backend::ErrorKind::Unavailable,
                format!("connecting to port {port}: {e}"),
            )
        })?;
        Ok(Box::new(stream))
    }
}

pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A loopback listener that echoes every connection until the peer half-closes.
pub async fn echo_listener() -> anyhow::Result<(u16, AbortOnDrop)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    Ok((port, AbortOnDrop(task)))
}

pub fn payload(seed: u8, length: usize) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
