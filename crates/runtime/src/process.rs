//! What every component process does the same way: its Kubernetes client, its identity in leader
//! elections and events, and when to stop.

use std::path::{Path, PathBuf};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("no --kubeconfig, and no in-cluster configuration or $KUBECONFIG: {0}")]
    Infer(String),
    #[error("kubernetes client: {0}")]
    Client(String),
}

/// The client configuration from `kubeconfig`, or in-cluster (or `$KUBECONFIG`) without one.
pub async fn client_config(kubeconfig: Option<&Path>) -> Result<Config, Error> {
    match kubeconfig {
        Some(path) => {
            let failed = |message: String| Error::Kubeconfig {
                path: path.to_owned(),
                message,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| failed(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| failed(e.to_string()))
        }
        None => Config::infer().await.map_err(|e| Error::Infer(e.to_string())),
    }
}

/// A client from `kubeconfig`, as [`client_config`] reads it.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = client_config(kubeconfig).await?;
    Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
}

/// Who this process is in a Lease and in events: `$HOSTNAME` (the pod name) or `fallback`, and a
/// random suffix, so that two replicas on one host, or a restart that reuses a name, never
/// share an identity (client-go's `hostname_<uuid>`).
pub fn identity(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.trim().is_empty());
    format!("{}_{}", host.as_deref().unwrap_or(fallback), random_suffix(8))
}

/// `len` random lowercase letters and digits.
pub fn random_suffix(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identities_differ_between_processes_on_one_host() {
        let (a, b) = (super::identity("eklet"), super::identity("eklet"));
        assert_ne!(a, b);
        assert!(a.len() > 9, "{a}");
    }
}
