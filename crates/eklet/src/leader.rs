//! Leader election: of several eklets of one cluster, one is active. The Lease is
//! `eklet-<cluster-id>` in eklet's namespace. Losing it is fail-stop: the process exits and its
//! Deployment restarts it as a standby, which is simpler to reason about than stopping every
//! task in place while a successor starts the same work.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("leader election stopped before this eklet became the leader")]
    Stopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The lease name for a cluster.
pub fn lease_name(cluster_id: &str) -> String {
    format!("eklet-{cluster_id}")
}

/// Held leadership. Dropping it releases the Lease so a standby takes over at once.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Resolves when leadership is lost (the lease was taken or could not be renewed).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up and waits until it is released.
    pub async fn release(self) {
        let Leadership { state, task } = self;
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// Waits until this process holds the Lease.
pub async fn acquire(
    client: Client,
    namespace: &str,
    cluster_id: &str,
    identity: &str,
    duration: Duration,
) -> Result<Leadership> {
    let name = lease_name(cluster_id);
    let seconds = duration.as_secs().max(2);
    // Renew a third of the duration before expiry.
    let grace = (seconds / 3).max(1);
    let lease_error = |source| Error::Lease {
        namespace: namespace.to_owned(),
        name: name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(seconds)
        .with_grace(grace)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %name, %namespace, identity, "waiting to become the leader");
    if state.wait_for(|leader| *leader).await.is_err() {
        return Err(Error::Stopped);
    }
    tracing::info!(lease = %name, identity, "became the leader");
    Ok(Leadership { state, task })
}
