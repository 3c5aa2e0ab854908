//! Leader election on a coordination.k8s.io Lease (kube-lease-manager), so that of several
//! replicas of a component (eklet, eks-admission) only one works. The work runs only while this
//! process holds the lease; losing it ends the process (fail-stop, as kube-controller-manager
//! does) instead of risking two writers, and its Deployment restarts it as a standby.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("the election on lease {0} stopped")]
    Stopped(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the lease lives and who this process is.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long the lease stays valid after a renewal; validated by the caller to be at least 2.
    pub lease_seconds: u64,
}

impl Election {
    /// `namespace/name`.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Renew a third of the lease before it expires, like kube-controller-manager's 15 s lease
    /// renewed after 10 s.
    fn renew_margin(&self) -> u64 {
        (self.lease_seconds / 3).max(1)
    }
}

/// How long a release may take before the process moves on; the lease then expires by itself.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Leadership held by this process.
pub struct Leadership {
    lease: String,
    is_leader: watch::Receiver<bool>,
    election: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this process holds the lease.
pub async fn acquire(client: Client, election: &Election) -> Result<Leadership> {
    let lease = election.lease();
    let params = LeaseParams::new(
        election.identity.clone(),
        election.lease_seconds,
        election.renew_margin(),
    );
    let manager = LeaseManagerBuilder::new(client, election.name.clone())
        .with_namespace(election.namespace.clone())
        .with_parameters(params)
        .build()
        .await
        .map_err(|source| Error::Lease {
            lease: lease.clone(),
            source,
        })?;
    let (mut is_leader, election_task) = manager.watch().await;
    tracing::info!(%lease, "waiting for the leader lease");
    if is_leader.wait_for(|leader| *leader).await.is_err() {
        return Err(stopped(lease, election_task).await);
    }
    tracing::info!(%lease, "holding the leader lease");
    Ok(Leadership {
        lease,
        is_leader,
        election: election_task,
    })
}

impl Leadership {
    /// Resolves when the lease is lost or the election stops.
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so that a standby takes over at once instead of after the lease
    /// duration.
    pub async fn release(self) {
        let Leadership {
            lease,
            is_leader,
            election,
        } = self;
        // Dropping the last receiver makes the election task release the lease and end.
        drop(is_leader);
        match tokio::time::timeout(RELEASE_TIMEOUT, election).await {
            Ok(Ok(Ok(_))) => tracing::info!(%lease, "released the leader lease"),
            Ok(Ok(Err(error))) => tracing::warn!(%lease, %error, "releasing the leader lease"),
            Ok(Err(error)) => tracing::warn!(%lease, %error, "the election task failed"),
            Err(_) => tracing::warn!(%lease, "the lease was not released in time; it will expire"),
        }
    }

    pub fn lease(&self) -> &str {
        &self.lease
    }
}

async fn stopped(lease: String, election: JoinHandle<kube_lease_manager::Result<LeaseManager>>) -> Error {
    match election.await {
        Ok(Err(source)) => Error::Lease { lease, source },
        _ => Error::Stopped(lease),
    }
}
