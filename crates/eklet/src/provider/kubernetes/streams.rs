//! `kubectl exec`, `attach` and `port-forward` of a burst pod, through the target cluster's own
//! `pods/exec`, `pods/attach` and `pods/portforward` (kube's WebSocket client): the client's
//! streams are copied to the target pod's and back, the exit status comes from the target's
//! error channel, and dropping the call (the client went away) closes the target connection.

use futures::SinkExt;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioExecutor};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess, TerminalSize as KubeTerminalSize};
use kube::client::ConfigExt;
use tokio::io::AsyncWriteExt;

use super::super::{ExitStatus, StreamIo};

/// The client exec, attach and port-forward open their target connections with. Each is a new
/// TLS connection (an upgraded one cannot be pooled), so unlike kube's default client this one
/// sets TCP_NODELAY: with Nagle, the upgrade request written right behind the TLS handshake's last
/// flight waits for the apiserver's delayed ACK, 40 ms on every exec (kube's default connector
/// cannot be told otherwise). Otherwise it is kube's: the server, TLS, connect timeout,
/// authentication and extra headers of `config`; no read timeout, as kube's default has none (an
/// exec may be idle for hours).
pub fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(http)?;
    let connections = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The authentication layer's own errors are boxed: so are the connections'.
        .map_err(tower::BoxError::from)
        .service(connections);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// Buffer between the client's streams and the target's (kube's default is 1 KiB).
const BUFFER: usize = 64 * 1024;

/// The attach parameters for the streams the client asked for.
pub fn params(container: &str, io: &StreamIo) -> AttachParams {
    AttachParams {
        container: Some(container.to_owned()),
        stdin: io.stdin.is_some(),
        stdout: io.stdout.is_some(),
        stderr: io.stderr.is_some(),
        tty: io.tty,
        max_stdin_buf_size: Some(BUFFER),
        max_stdout_buf_size: Some(BUFFER),
        max_stderr_buf_size: Some(BUFFER),
    }
}

/// Copies the client's streams to `process` and back until its output ends; then its status.
pub async fn relay(mut process: AttachedProcess, io: StreamIo) -> ExitStatus {
    let status = process.take_status();
    let (stdin, stdout, stderr) = (process.stdin(), process.stdout(), process.stderr());
    let terminal = process.terminal_size();
    let input = async {
        if let (Some(mut from), Some(mut to)) = (io.stdin, stdin) {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = to.shutdown().await;
        }
    };
    let resize = async {
        if let (Some(mut sizes), Some(mut sender)) = (io.resize, terminal) {
            while let Some(size) = sizes.recv().await {
                let size = KubeTerminalSize {
                    width: size.width,
                    height: size.height,
                };
                if sender.send(size).await.is_err() {
                    break;
                }
            }
        }
    };
    let output = async {
        let out = async {
            if let (Some(mut from), Some(mut to)) = (stdout, io.stdout) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        let err = async {
            if let (Some(mut from), Some(mut to)) = (stderr, io.stderr) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        futures::join!(out, err);
    };
    // Input and resizes may outlive the output (a client that keeps stdin open after the command
    // ended); the command's end is the output's end.
    tokio::select! {
        () = output => {}
        () = async { futures::join!(input, resize); std::future::pending::<()>().await } => {}
    }
    match status {
        Some(status) => exit_status(status.await),
        None => ExitStatus::Killed("the target sent no status".into()),
    }
}

/// The kubelet's status on the error channel, as an exit status.
pub fn exit_status(status: Option<Status>) -> ExitStatus {
    let Some(status) = status else {
        return ExitStatus::Killed("the target's connection ended without a status".into());
    };
    if status.status.as_deref() == Some("Success") {
        return ExitStatus::Code(0);
    }
    let code = (status.reason.as_deref() == Some("NonZeroExitCode"))
        .then(|| status.details.as_ref()?.causes.as_ref())
        .flatten()
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message.as_deref()?.parse().ok())
        });
    match code {
        Some(code) => ExitStatus::Code(code),
        None => ExitStatus::Killed(status.message.unwrap_or_else(|| "the command failed".into())),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    use super::*;

    #[test]
    fn the_targets_status_becomes_the_exit_code_kubectl_returns() {
        let success = Status {
            status: Some("Success".into()),
            ..Status::default()
        };
        assert_eq!(exit_status(Some(success)), ExitStatus::Code(0));
        let three = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            message: Some("command terminated with non-zero exit code".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    ..StatusCause::default()
                }]),
                ..StatusDetails::default()
            }),
            ..Status::default()
        };
        assert_eq!(exit_status(Some(three)), ExitStatus::Code(3));
        let other = Status {
            status: Some("Failure".into()),
            message: Some("container not found".into()),
            ..Status::default()
        };
        assert_eq!(
            exit_status(Some(other)),
            ExitStatus::Killed("container not found".into())
        );
        assert!(matches!(exit_status(None), ExitStatus::Killed(_)));
    }
}
