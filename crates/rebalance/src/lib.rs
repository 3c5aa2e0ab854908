//! `tke-resilience rebalance`: brings burst pods home. A pod that went to the cloud because the
//! IDC was full is evicted once a local node fits it again, so its workload's controller
//! recreates it and the scheduler places it locally — one pod per workload at a time, through
//! the Eviction API (PodDisruptionBudgets hold), after the IDC has been quiet for a hold-down,
//! with a margin of every node kept free, a cool-down for a workload whose replacement went to
//! the cloud again, never for a workload with fewer than 2 Ready replicas, never for pods above
//! `LOCAL_REPLICAS` (in the cloud by choice). [`plan`] decides, [`fit`] judges a local node as
//! the scheduler would, [`controller`] watches and evicts.
//!
//! A process of its own rather than a task of eks-admission: it is off unless installed (chart
//! value `rebalance.enabled`), its RBAC is only what moving needs, and its leader Lease is its own.
//!
//! RBAC: pods and nodes `list, watch`; `pods/eviction` `create`; events `list` (to read back
//! past moves) and `events.k8s.io` events `create, patch`; `coordination.k8s.io` leases in
//! `--leader-election-namespace`.

pub mod controller;
pub mod fit;
pub mod metrics;
pub mod plan;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::pin,
    sync::Arc,
    time::Duration,
};

use jiff::SignedDuration;
use kube::Client;
use tke_leader::{self as leader, Election};

use crate::metrics::Metrics;

/// Flags of `tke-resilience rebalance`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Kubeconfig file; without it, $KUBECONFIG or the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Report what would move (log, metric, `WouldMoveToLocal` event) and move nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The decision's knobs, shared with `tke-resilience explain`.
    #[command(flatten)]
    pub plan: PlanArgs,

    /// At most this many pods are moved per minute, over all workloads.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_moves_per_minute: u32,

    /// How often workloads are judged.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = tke_runtime::duration::flag)]
    pub interval: Duration,

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
    #[arg(long, value_name = "PORT", default_value_t = 10263)]
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

/// The flags of the decision itself, which `tke-resilience explain pod` takes too so that it
/// answers as the controller would.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Share of each local node's allocatable CPU and memory kept free when judging whether a
    /// pod fits, 0 to 0.9.
    #[arg(long, value_name = "SHARE", default_value_t = 0.1)]
    pub margin: f64,

    /// How long the IDC must have been quiet (no pod scheduled onto a virtual node, no pod left
    /// unschedulable) before anything moves.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = tke_runtime::duration::flag)]
    pub hold_down: Duration,

    /// How long a workload whose replacement landed in the cloud again is left alone.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = tke_runtime::duration::flag)]
    pub cool_down: Duration,
}

impl PlanArgs {
    /// The decision's knobs, checked.
    pub fn settings(&self) -> Result<plan::Settings> {
        if !(0.0..=0.9).contains(&self.margin) {
            return Err(Error::InvalidFlag(format!(
                "--margin must be between 0 and 0.9 (a share of each node kept free), not {}",
                self.margin
            )));
        }
        let signed = |d: Duration| SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
        Ok(plan::Settings {
            margin: self.margin,
            hold_down: signed(self.hold_down),
            cool_down: signed(self.cool_down),
        })
    }
}

impl Args {
    pub fn election(&self) -> Result<Election> {
        if self.leader_election_lease_seconds < 2 {
            return Err(Error::InvalidFlag(format!(
                "--leader-election-lease-seconds must be at least 2, not {}",
                self.leader_election_lease_seconds
            )));
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

/// Runs until SIGTERM or Ctrl-C (then `Ok`), or until it cannot go on.
pub async fn run(args: Args) -> Result<()> {
    let plan = args.plan.settings()?;
    let election = args.election()?;
    if args.interval.is_zero() {
        return Err(Error::InvalidFlag("--interval must be above 0".into()));
    }
    let settings = controller::Settings {
        plan,
        interval: args.interval,
        max_moves_per_minute: args.max_moves_per_minute,
        dry_run: args.dry_run,
        instance: election.identity.clone(),
    };
    let config = tke_runtime::process::client_config(args.kubeconfig.as_deref()).await?;
    let build = |config: kube::Config| {
        Client::try_from(config).map_err(|e| tke_runtime::process::Error::Client(e.to_string()))
    };
    let client = build(config.clone())?;
    // An eviction a PodDisruptionBudget refuses answers 429 with Retry-After; kube's default retry
    // would wait it out for minutes. Here a 429 is an answer: skip, and judge again next round.
    let mut once = config;
    once.default_retry = false;
    let evictions = build(once)?;
    let metrics = Arc::new(Metrics::new());
    let listener =
        tke_runtime::metrics::bind(SocketAddr::new(args.metrics_bind_address, args.metrics_port)).await?;
    let rendered = metrics.clone();
    let server = tke_runtime::metrics::serve(listener, move || rendered.render());
    tracing::info!(identity = %election.identity, dry_run = args.dry_run, "tke-rebalance starting");
    tokio::select! {
        result = server => result.map_err(Error::from),
        result = lead(client, evictions, &election, settings, metrics) => result,
    }
}

async fn lead(
    client: Client,
    evictions: Client,
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
        result = controller::run(client, evictions, settings, metrics.clone()) => result.map_err(Error::from),
        () = leadership.lost() => Err(Error::LeadershipLost(lease)),
        () = &mut shutdown => Ok(()),
    };
    metrics.leader.set(0);
    leadership.release().await;
    result
}
