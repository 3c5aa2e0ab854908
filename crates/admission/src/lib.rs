//! `eks-admission`: the toleration controller. Pods the scheduler could not place
//! (`PodScheduled=False`, reason `Unschedulable`) get the virtual node's toleration when the
//! `AUTO_SCALE_EKS` switches allow bursting and tke-policy finds the pod eligible; otherwise the
//! pod gets one Warning event saying why, and waits for local capacity. It works with any
//! scheduler: the default kube-scheduler retries the pod and now finds the virtual node, and
//! pods that tke-scheduler's extender keeps off local nodes come through here the same way.
//!
//! One replica acts at a time (leader election on a Lease); the global switch (ConfigMap
//! `eks-config`) is watched live, and every waiting pod is decided again when it changes.
//! Decisions and the Unschedulable-to-toleration latency are served as Prometheus metrics.
//!
//! RBAC: pods `list, watch, get, patch`; configmaps (in `--eks-config-namespace`),
//! persistentvolumeclaims and persistentvolumes `list, watch`; `events.k8s.io` events `create,
//! patch`; `coordination.k8s.io` leases `get, list, watch, create, patch` in
//! `--leader-election-namespace`.

pub mod assessment;
pub mod controller;
pub mod events;
pub mod global_switch;
pub mod metrics;
pub mod reported;
pub mod toleration;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;

use kube::Client;
use tke_policy::PolicyArgs;

use crate::assessment::Policy;
use crate::metrics::Metrics;
use tke_leader::{self as leader, Election};

/// Flags of `tke-resilience admission`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Kubeconfig file; without it, $KUBECONFIG or the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The policy flags every component shares (switch ConfigMap, switch mode, eligibility).
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Namespace of the leader-election Lease.
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    pub leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = controller::REPORTER)]
    pub leader_election_name: String,

    /// This replica's identity in the Lease and in events; defaults to $POD_NAME, else the
    /// host name with a random suffix.
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub leader_election_identity: Option<String>,

    /// How long the Lease stays valid without renewal; a standby takes over after at most this.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub leader_election_lease_seconds: u64,

    /// Port of the plain-HTTP /metrics and /healthz endpoints.
    #[arg(long, value_name = "PORT", default_value_t = 10262)]
    pub metrics_port: u16,

    /// Address the metrics port listens on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub metrics_bind_address: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidFlag(String),
    #[error(transparent)]
    Client(#[from] tke_runtime::process::Error),
    #[error(transparent)]
    Metrics(#[from] tke_runtime::metrics::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error(transparent)]
    Controller(#[from] controller::Error),
    #[error("lost the leader lease {0}; exiting so that only one replica acts")]
    LeadershipLost(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Args {
    /// The policy the flags describe.
    pub fn policy(&self) -> Policy {
        Policy {
            mode: self.policy.switch_mode(),
            eligibility: self.policy.eligibility(),
        }
    }

    /// The leader election the flags describe.
    pub fn election(&self) -> Result<Election> {
        if self.leader_election_lease_seconds < 2 {
            return Err(Error::InvalidFlag(format!(
                "--leader-election-lease-seconds must be at least 2 (the lease is renewed before it expires), not {}",
                self.leader_election_lease_seconds
            )));
        }
        for (flag, value) in [
            ("--leader-election-namespace", &self.leader_election_namespace),
            ("--leader-election-name", &self.leader_election_name),
        ] {
            if value.trim().is_empty() {
                return Err(Error::InvalidFlag(format!("{flag} must not be empty")));
            }
        }
        let identity = match self.leader_election_identity.as_deref().map(str::trim) {
            Some(identity) if !identity.is_empty() => identity.to_owned(),
            _ => tke_runtime::process::identity(controller::REPORTER),
        };
        Ok(Election {
            namespace: self.leader_election_namespace.trim().to_owned(),
            name: self.leader_election_name.trim().to_owned(),
            identity,
            lease_seconds: self.leader_election_lease_seconds,
        })
    }
}

/// Runs the controller until SIGTERM or Ctrl-C (then `Ok`), or until it cannot go on.
pub async fn run(args: Args) -> Result<()> {
    let policy = args.policy();
    let election = args.election()?;
    if args.policy.eks_config_namespace.trim().is_empty() {
        return Err(Error::InvalidFlag(
            "--eks-config-namespace must not be empty".to_owned(),
        ));
    }
    let settings = controller::Settings {
        eks_config_namespace: args.policy.eks_config_namespace.trim().to_owned(),
        policy,
        instance: election.identity.clone(),
    };
    let client = tke_runtime::process::client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let address = SocketAddr::new(args.metrics_bind_address, args.metrics_port);
    let listener = tke_runtime::metrics::bind(address).await?;
    let server = tke_runtime::metrics::serve(listener, {
        let metrics = metrics.clone();
        move || metrics.render()
    });
    tracing::info!(%address, identity = %election.identity, "eks-admission serving /metrics and /healthz");
    tokio::select! {
        result = server => result.map_err(Error::from),
        result = lead(client, &election, settings, metrics) => result,
    }
}

/// Acquires the lease, then runs the controller while holding it.
async fn lead(
    client: Client,
    election: &Election,
    settings: controller::Settings,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let mut shutdown = pin!(tke_runtime::process::shutdown_signal());
    let mut leadership = tokio::select! {
        leadership = leader::acquire(client.clone(), election) => leadership?,
        () = &mut shutdown => return Ok(()),
    };
    metrics.leader.set(1);
    let lease = leadership.lease().to_owned();
    let result = tokio::select! {
        result = controller::run(client, settings, metrics.clone()) => result.map_err(Error::from),
        () = leadership.lost() => Err(Error::LeadershipLost(lease)),
        () = &mut shutdown => Ok(()),
    };
    metrics.leader.set(0);
    leadership.release().await;
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tke_policy::{AnnotationMatch, EligibilityConfig, SwitchMode};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> std::result::Result<Args, clap::Error> {
        let argv = std::iter::once("admission").chain(flags.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn defaults_follow_the_seed() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let args = parse(&[])?;
        assert_eq!(args.policy.eks_config_namespace, "kube-system");
        let policy = args.policy();
        assert_eq!(policy.mode, SwitchMode::Seed);
        assert_eq!(policy.eligibility, EligibilityConfig::default());
        let election = args.election()?;
        assert_eq!(
            (election.namespace.as_str(), election.name.as_str()),
            ("kube-system", "eks-admission")
        );
        assert_eq!(args.metrics_port, 10262);
        Ok(())
    }

    #[test]
    fn policy_flags_reach_the_policy() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let args = parse(&[
            "--local-switch-overrides",
            "--forbidden-namespaces=kube-system,payments",
            "--fixed-ip-annotation=tke.cloud.tencent.com/networks=tke-route-eni",
            "--fixed-ip-check=false",
        ])?;
        let policy = args.policy();
        assert_eq!(policy.mode, SwitchMode::LocalOverrides);
        assert_eq!(
            policy.eligibility.forbidden_namespaces,
            ["kube-system", "payments"]
        );
        assert_eq!(
            policy.eligibility.fixed_ip_annotations,
            [AnnotationMatch::with_value(
                "tke.cloud.tencent.com/networks",
                "tke-route-eni"
            )]
        );
        assert!(!policy.eligibility.fixed_ip_check);
        Ok(())
    }

    #[test]
    fn bad_flags_are_refused_with_a_message() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let empty_annotation = parse(&["--fixed-ip-annotation==x"])
            .err()
            .map(|error| error.to_string());
        assert!(empty_annotation.is_some_and(|message| message.contains("empty key")));
        let short_lease = parse(&["--leader-election-lease-seconds=1"])?
            .election()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            short_lease.as_deref(),
            Some(
                "--leader-election-lease-seconds must be at least 2 (the lease is renewed before it expires), not 1"
            )
        );
        assert!(parse(&["--metrics-bind-address=nowhere"]).is_err());
        Ok(())
    }

    #[test]
    fn replicas_on_one_host_get_different_identities() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let (first, second) = (parse(&[])?.election()?, parse(&[])?.election()?);
        assert_ne!(first.identity, second.identity);
        let named = parse(&["--leader-election-identity=eks-admission-7d9f"])?.election()?;
        assert_eq!(named.identity, "eks-admission-7d9f");
        Ok(())
    }
}
