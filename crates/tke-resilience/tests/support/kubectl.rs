//! Real kubectl against a test-bed control plane, as a user types it: a command to the end with
//! its exit code and output, and `kubectl port-forward` running until dropped.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use tke_testbed::ControlPlane;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use super::eklet::PATIENCE;

/// `kubectl --kubeconfig <cp's>`, killed if the test drops it.
pub fn kubectl(cp: &ControlPlane) -> Command {
    let mut command = Command::new(cp.bin("kubectl"));
    command.arg("--kubeconfig").arg(cp.kubeconfig());
    command.kill_on_drop(true);
    command
}

/// Runs kubectl to the end with `stdin` piped in; (exit code, stdout, stderr).
pub async fn run(mut command: Command, stdin: Option<&str>) -> anyhow::Result<(i32, String, String)> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).await?;
        drop(input);
    }
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .context("kubectl did not finish")??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A running `kubectl port-forward`, stopped when dropped.
pub struct PortForward {
    /// The local port kubectl listens on (127.0.0.1).
    pub local: u16,
    _kubectl: Child,
}

impl PortForward {
    /// Starts `command` (a `kubectl port-forward … :PORT`) and waits until it says where it listens.
    pub async fn start(mut command: Command) -> anyhow::Result<PortForward> {
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let local = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return Ok(rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .parse::<u16>()?);
                }
            }
            bail!("kubectl port-forward ended without forwarding")
        })
        .await
        .context("kubectl port-forward did not start")??;
        // kubectl says "Handling connection for …" on every connection: keep reading, or a full or
        // closed pipe would stop it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward {
            local,
            _kubectl: child,
        })
    }

    /// `GET path` over HTTP/1.0 through the forwarded port: (status line, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", self.local)).await?;
        connection
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, connection.read_to_end(&mut response))
            .await
            .context("no answer through the forwarded port")??;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no HTTP header in the answer")?;
        let status = String::from_utf8_lossy(&response[..split])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok((status, response[split + 4..].to_vec()))
    }
}
