//! `cloudsim`: a local server that speaks the EKS container-instance API, for the demo, the tests and
//! the benchmarks. The real `tke_tencent` client talks to it unchanged: it verifies TC3 signatures
//! with the same code the client signs with, runs instances through a realistic lifecycle, enforces
//! per-subnet quotas and per-action rate limits, and injects faults on demand.
//!
//! `tke-resilience cloudsim` runs it ([`Args`], [`run`]); tests start it in-process with [`serve`] on
//! `127.0.0.1:0` and steer it through the returned [`Handle`] (or over HTTP: `GET /admin/stats`,
//! `GET`/`POST /admin/faults`, `POST /admin/crash`, `POST /admin/usage`, `POST /admin/responders`,
//! `POST /admin/clock`).
//!
//! What it supports of the real API: the five EKSCI actions eklet uses plus
//! DescribeEKSContainerInstanceRegions; the Describe filters `eks-ci-name`, `status`, `private-ip`,
//! `eip-address` and `vpc-id` (the documented ones — the API has no tags, so a caller identifies its
//! instances by name or by environment variables it sets). See `instances` for the lifecycle, the
//! predictable log lines and the usage model.
//!
//! What the API does not have, it simulates beside it: the agent every sandbox VM runs, which
//! serves the containers' CPU and memory usage as Prometheus text on the instance's private IP
//! (the contract `tke_tencent::agent` reads), and exec, attach and port-forward
//! (`tke_tencent::agent_stream`: real processes on this machine). With [`Config::agent_port`] set, each instance gets a
//! listener on `(PrivateIp, agent_port)` from create to delete. Those listeners live in the VPC: a
//! network namespace ([`Config::netns`]) that holds the whole [`Config::private_cidr`] and is routed
//! from the IDC's namespaces, so eklet, kube-proxy and pods reach sandboxes at ordinary VPC
//! addresses as they reach the real ones over Direct Connect (see [`netns`]). Without a namespace
//! the block must be loopback (`127.0.0.0/8`; tests on machines where namespaces cannot be made).
//! Off by default, so the benchmarks open no sockets.
//!
//! With agents on, cloudsim also runs the containers' readiness and liveness probes as a kubelet
//! would (`probes`): the agent reports readiness (`container_ready`, which the API lacks) and a
//! failed liveness probe restarts the container. A test makes a probe fail by setting the status a
//! responder answers ([`Handle::set_responder_status`], or `POST /admin/responders` with
//! `{"eksCiId": "eksci-…", "port": 80, "path": "/healthz", "status": 500}`; `path` is optional,
//! every path when absent; status 200 restores the default). The probes connect from cloudsim's
//! own namespace, over the route into the VPC, as port-forward does.

mod agents;
mod api;
mod args;
pub mod clock;
pub mod faults;
pub mod instances;
pub mod netns;
mod probes;
pub mod pty;
mod streams;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tke_tencent::Credentials;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use args::{Args, run};
pub use faults::{ErrorRates, FailNext, Faults, Stats};
pub use instances::{
    CPU_MILLICORES_ENV, EXIT_AFTER_ENV, EXIT_CODE_ENV, MEMORY_BYTES_ENV, Refusal, UsageChange,
};

/// A container's environment variable listing the ports (comma-separated) its simulated process
/// listens on: the EKSCI API has no container ports, so a pod that wants `kubectl port-forward`
/// to reach something in cloudsim declares them here. Each is served on the instance's private IP
/// by an HTTP responder naming the instance, container and port.
pub const PORTS_ENV: &str = "CLOUDSIM_PORTS";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cloudsim cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("invalid faults: {0}")]
    Faults(String),
    #[error("no credentials to accept: give at least one SecretId/SecretKey pair")]
    NoCredentials,
    #[error("agent port 0: the sandbox agents need a fixed port, the one eklet scrapes")]
    AgentPortZero,
    #[error("invalid private block: {0}")]
    PrivateCidr(String),
    #[error(
        "sandbox agents run commands and open ports on this machine, so they listen on loopback \
         addresses or in a VPC network namespace (--netns) only: the private block {0} is not within \
         127.0.0.0/8"
    )]
    AgentsOffLoopback(String),
    #[error("the VPC network namespace: {0}")]
    Netns(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    /// The key pairs whose signatures are accepted.
    pub credentials: Vec<Credentials>,
    /// From create to Running.
    pub start_delay: Duration,
    /// From a container's exit to its restart.
    pub restart_delay: Duration,
    /// Between two log lines of a running container.
    pub log_interval: Duration,
    /// Most live instances per subnet id; subnets not listed are unlimited.
    pub quotas: BTreeMap<String, usize>,
    /// Per action; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    pub faults: Faults,
    /// For instance ids, request ids and random faults; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// The clock stands still unless advanced through the handle or `POST /admin/clock`.
    pub manual_clock: bool,
    /// Largest accepted difference between `X-TC-Timestamp` and the server's clock.
    pub max_clock_skew: Duration,
    /// The port of every instance's sandbox agent, on its private IP; `None` runs no agents. A
    /// listener that cannot bind is a warning, not a failed create. Agents run commands and open
    /// ports on this machine, so they need a loopback [`private_cidr`](Self::private_cidr)
    /// (within `127.0.0.0/8`); [`serve`] refuses any other with agents on.
    pub agent_port: Option<u16>,
    /// The block the subnets' private IPs come from, as (network, prefix length): a /16 of it per
    /// subnet, so the prefix is at most 16. `(10.0.0.0, 8)` by default; tests take a block of
    /// `127.0.0.0/8` so that the instances' agents are reachable on this machine.
    pub private_cidr: (Ipv4Addr, u8),
    /// The VPC: a network namespace (e.g. `/run/netns/NAME`) whose addresses include the whole
    /// [`private_cidr`](Self::private_cidr), routed from the IDC's namespaces. The agents and their
    /// port responders listen inside it, so the sandboxes' private IPs need not be loopback (an
    /// EndpointSlice refuses loopback addresses). `None`: agents listen in cloudsim's own namespace.
    pub netns: Option<std::path::PathBuf>,
    /// The size of each subnet cut from [`private_cidr`](Self::private_cidr); `None` for /16s
    /// (e.g. `Some(20)` makes a VPC's /16 into fifteen /20s, one per virtual node).
    pub subnet_prefix: Option<u8>,
}

impl Config {
    /// The real API's behaviour: 20 requests/s per action, five minutes of clock skew, instances
    /// running one second after creation.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            region: "ap-guangzhou".to_string(),
            credentials: vec![credentials],
            start_delay: Duration::from_secs(1),
            restart_delay: Duration::from_secs(1),
            log_interval: Duration::from_secs(1),
            quotas: BTreeMap::new(),
            rate_limit_per_second: tke_tencent::rate_limit::DEFAULT_PER_SECOND,
            faults: Faults::default(),
            seed: None,
            manual_clock: false,
            max_clock_skew: Duration::from_secs(300),
            agent_port: None,
            private_cidr: (
                instances::Ipv4Cidr::DEFAULT_PRIVATE.network(),
                instances::Ipv4Cidr::DEFAULT_PRIVATE.prefix(),
            ),
            netns: None,
            subnet_prefix: None,
        }
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    sim: Arc<api::Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Handle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration pointing at this simulator, in its region.
    pub fn client_config(&self, credentials: Credentials) -> tke_tencent::ClientConfig {
        let region = self.sim.region().to_string();
        tke_tencent::ClientConfig {
            endpoint: self.endpoint(),
            ..tke_tencent::ClientConfig::new(region, credentials)
        }
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    pub fn faults(&self) -> Faults {
        self.sim.faults()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<()> {
        self.sim.set_faults(faults).map_err(Error::Faults)
    }

    /// Ends the current run of a container now with `exit_code`; the first container when `None`.
    pub fn crash(&self, eks_ci_id: &str, container: Option<&str>, exit_code: i64) -> Result<(), Refusal> {
        self.sim.crash(eks_ci_id, container, exit_code)
    }

    /// Changes the usage the sandbox agent reports for a container (all of the instance's when
    /// `None`) from now on; the CPU counter continues from its current value.
    pub fn set_usage(
        &self,
        eks_ci_id: &str,
        container: Option<&str>,
        change: UsageChange,
    ) -> Result<(), Refusal> {
        self.sim.set_usage(eks_ci_id, container, change)
    }

    /// Makes the responder on `port` of an instance answer `status` (200-599) from now on, for
    /// requests for `path` only when given (a path's status wins over the port's); 200 restores
    /// the default. Readiness and liveness probes against it see the new status at their next
    /// period.
    pub fn set_responder_status(
        &self,
        eks_ci_id: &str,
        port: u16,
        path: Option<&str>,
        status: u16,
    ) -> Result<(), Refusal> {
        self.sim
            .set_responder_status(eks_ci_id, port, path.map(str::to_owned), status)
    }

    /// Moves the simulator's clock forward (the only way a manual clock moves).
    pub fn advance_clock(&self, by: Duration) {
        self.sim.clock.advance(by);
    }

    /// Stops accepting, lets in-flight requests finish, waits for the server to end, then stops
    /// every sandbox agent (their ports are closed when this returns).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let served = match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result.map_err(Error::Listen),
                Err(join) => Err(Error::Listen(std::io::Error::other(join))),
            },
            None => Ok(()),
        };
        self.sim.stop_agents().await;
        served
    }
}

/// Serves the simulator on `listener` in a background task.
pub async fn serve(config: Config, listener: TcpListener) -> Result<Handle> {
    if config.credentials.is_empty() {
        return Err(Error::NoCredentials);
    }
    config.faults.validate().map_err(Error::Faults)?;
    if config.agent_port == Some(0) {
        return Err(Error::AgentPortZero);
    }
    let (network, prefix) = config.private_cidr;
    let mut private_cidr = instances::Ipv4Cidr::new(network, prefix).map_err(Error::PrivateCidr)?;
    if let Some(subnet_prefix) = config.subnet_prefix {
        private_cidr = private_cidr
            .with_subnet_prefix(subnet_prefix)
            .map_err(Error::PrivateCidr)?;
    }
    let listeners = match &config.netns {
        Some(path) => netns::Listeners::open(path).map_err(Error::Netns)?,
        None if config.agent_port.is_some() && !(network.is_loopback() && prefix >= 8) => {
            return Err(Error::AgentsOffLoopback(format!("{network}/{prefix}")));
        }
        None => netns::Listeners::Here,
    };
    let addr = listener.local_addr()?;
    let sim = Arc::new(api::Sim::new(config, private_cidr, listeners));
    let (shutdown, stop) = oneshot::channel::<()>();
    let app = api::router(sim.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped handle stops the server as an explicit shutdown does.
                let _ = stop.await;
            })
            .await
    });
    Ok(Handle {
        addr,
        sim,
        shutdown: Some(shutdown),
        task: Some(task),
    })
}
