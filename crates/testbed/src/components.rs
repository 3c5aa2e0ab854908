//! How each tke-resilience component is launched next to a control plane, written once for
//! `tke-stack`, `tke-bench` and the end-to-end tests: [`Cloudsim`], [`Eklet`], [`Admission`] and
//! [`Extender`] (with [`scheduler_config`], the kube-scheduler configuration that calls it). Each
//! launcher holds the flags that matter, picks free ports for what it serves, and starts the process
//! under the control plane's supervision ([`ControlPlane::spawn_process`]). What a caller adds beyond
//! them goes through `arg`/`args`, spelled as a user would type it.
//!
//! The `tke-resilience` binary is passed in: the test bed does not depend on the crate that builds
//! it. Waiting for a launched process is [`wait_while_alive`] (and [`wait_http`]): it fails at once,
//! with the log, when a process exits.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{ControlPlane, Error, Proc, Result, free_ports, workspace_root};

/// `deploy/tke-scheduler.yaml`, the one copy of tke-scheduler's KubeSchedulerConfiguration.
pub fn scheduler_config_path() -> PathBuf {
    workspace_root().join("deploy/tke-scheduler.yaml")
}

/// tke-scheduler's configuration with `${EXTENDER_URL}` filled in with `extender_url`; the control
/// plane fills `${KUBECONFIG}` ([`crate::Options::second_scheduler_config`]).
pub fn scheduler_config(extender_url: &str) -> Result<String> {
    let path = scheduler_config_path();
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    if !text.contains("${EXTENDER_URL}") {
        return Err(Error::Config {
            path,
            message: "no ${EXTENDER_URL} placeholder".into(),
        });
    }
    Ok(text.replace("${EXTENDER_URL}", extender_url))
}

/// Writes the cloud credentials file that cloudsim (`--credentials-file`) and eklet read.
pub fn write_credentials(path: &Path, secret_id: &str, secret_key: &str) -> Result<()> {
    std::fs::write(path, format!("secretID={secret_id}\nsecretKey={secret_key}\n")).map_err(|source| {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Where cloudsim's sandbox agents listen, so that eklet reads their usage as it would over Direct
/// Connect: a loopback block of this process's own (cloudsim cuts a /16 per subnet from it) and
/// one port.
#[derive(Clone, Debug)]
pub struct AgentBlock {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub port: u16,
    /// The VPC namespace the block lives in (cloudsim's `--netns`); `None` for a loopback block.
    pub netns: Option<PathBuf>,
    /// cloudsim's `--subnet-prefix`: a VPC's /16 is cut into /20s, one per virtual node.
    pub subnet_prefix: Option<u8>,
}

impl AgentBlock {
    /// A free port and a `127.X.0.0/16` that another process on this machine is unlikely to use.
    pub fn new() -> Result<AgentBlock> {
        let [port] = free_ports::<1>()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let second = 16 + ((nanos ^ std::process::id()) % 200) as u8;
        Ok(AgentBlock {
            network: Ipv4Addr::new(127, second, 0, 0),
            prefix: 16,
            port,
            netns: None,
            subnet_prefix: None,
        })
    }

    /// The block of `vpc` and a free port: sandboxes get VPC addresses, their agents listen in it.
    pub fn in_vpc(vpc: &crate::realnode::vpc::Vpc) -> Result<AgentBlock> {
        let [port] = free_ports::<1>()?;
        Ok(AgentBlock {
            network: vpc.block.0,
            prefix: vpc.block.1,
            port,
            netns: Some(vpc.netns_path()),
            subnet_prefix: Some(crate::realnode::vpc::SUBNET_PREFIX),
        })
    }

    /// cloudsim's `--agent-port`, `--private-cidr` and (in a VPC) `--netns`.
    pub fn cloudsim_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--agent-port={}", self.port),
            format!("--private-cidr={}/{}", self.network, self.prefix),
        ];
        if let Some(netns) = &self.netns {
            args.push(format!("--netns={}", netns.display()));
        }
        if let Some(bits) = self.subnet_prefix {
            args.push(format!("--subnet-prefix={bits}"));
        }
        args
    }

    /// eklet's flag that points the tencent provider at the agents' port.
    pub fn eklet_arg(&self) -> String {
        format!("--sandbox-metrics-port={}", self.port)
    }
}

/// The parts every launcher shares: the binary, the process name, extra arguments and environment.
#[derive(Clone, Debug)]
struct Common {
    binary: PathBuf,
    name: String,
    kubeconfig: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Common {
    fn new(binary: &Path, name: &str) -> Common {
        Common {
            binary: binary.to_owned(),
            name: name.to_owned(),
            kubeconfig: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn kubeconfig_arg(&self, cp: &ControlPlane) -> String {
        let path = self.kubeconfig.as_deref().unwrap_or(cp.kubeconfig());
        format!("--kubeconfig={}", path.display())
    }

    fn spawn(&self, cp: &ControlPlane, mut args: Vec<String>) -> Result<Proc> {
        args.extend(self.args.iter().cloned());
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cp.spawn_process(&self.name, &self.binary, &args, &env)
    }
}

/// The builder methods every launcher has, over its [`Common`].
macro_rules! common_setters {
    () => {
        /// The process's name in the run directory's `logs/`.
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.common.name = name.into();
            self
        }

        /// Another kubeconfig than the control plane's admin one.
        pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
            self.common.kubeconfig = Some(path.into());
            self
        }

        /// One more argument, after the launcher's own.
        pub fn arg(mut self, arg: impl Into<String>) -> Self {
            self.common.args.push(arg.into());
            self
        }

        /// More arguments, after the launcher's own.
        pub fn args<I, S>(mut self, args: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.common.args.extend(args.into_iter().map(Into::into));
            self
        }

        /// An environment variable of the process.
        pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
            self.common.env.push((key.into(), value.into()));
            self
        }
    };
}

/// `tke-resilience cloudsim`, the local Tencent Cloud EKS container-instance API, on a free port.
#[derive(Clone, Debug)]
pub struct Cloudsim {
    common: Common,
    port: u16,
    credentials_file: PathBuf,
}

impl Cloudsim {
    /// cloudsim accepting the credentials in `credentials_file` (see [`write_credentials`]).
    pub fn new(binary: &Path, credentials_file: &Path) -> Result<Cloudsim> {
        let [port] = free_ports::<1>()?;
        Ok(Cloudsim {
            common: Common::new(binary, "cloudsim"),
            port,
            credentials_file: credentials_file.to_owned(),
        })
    }

    common_setters!();

    /// Listens on this port instead of the free one picked.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sandbox agents in `block` (see [`AgentBlock`]).
    pub fn agents(self, block: &AgentBlock) -> Self {
        self.args(block.cloudsim_args())
    }

    /// `--region`, the one region it serves.
    pub fn region(self, region: &str) -> Self {
        self.arg(format!("--region={region}"))
    }

    /// `--start-delay`, how long a sandbox takes to run (`0` for benchmarks and walkthroughs).
    pub fn start_delay(self, delay: &str) -> Self {
        self.arg(format!("--start-delay={delay}"))
    }

    /// `http://127.0.0.1:PORT`, what eklet's `--cloud-endpoint` names.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its admin API's statistics, which answer once it serves.
    pub fn stats_url(&self) -> String {
        format!("{}/admin/stats", self.endpoint())
    }

    pub fn spawn(&self, cp: &ControlPlane) -> Result<Proc> {
        self.common.spawn(
            cp,
            vec![
                "cloudsim".into(),
                format!("--listen=127.0.0.1:{}", self.port),
                format!("--credentials-file={}", self.credentials_file.display()),
            ],
        )
    }

    /// Starts it and waits until its admin API answers.
    pub async fn start(&self, cp: &ControlPlane, patience: Duration) -> Result<Proc> {
        let mut proc = self.spawn(cp)?;
        wait_http(std::slice::from_mut(&mut proc), &self.stats_url(), patience).await?;
        Ok(proc)
    }
}

/// `tke-resilience eklet` with one subnet, so one virtual node, serving its kubelet API and
/// `/metrics` on free loopback ports. The kubelet API trusts the control plane's CA for client
/// certificates, as the apiserver's kubelet client presents one.
#[derive(Clone, Debug)]
pub struct Eklet {
    common: Common,
    cluster_id: String,
    subnet: String,
    zone: String,
    node_ip: Option<String>,
    metrics_port: u16,
    kubelet_port: u16,
    provider: Vec<String>,
    serving: Option<(PathBuf, PathBuf)>,
}

impl Eklet {
    pub fn new(binary: &Path, cluster_id: &str, subnet: &str, zone: &str) -> Result<Eklet> {
        let [metrics_port, kubelet_port] = free_ports::<2>()?;
        Ok(Eklet {
            common: Common::new(binary, "eklet"),
            cluster_id: cluster_id.to_owned(),
            subnet: subnet.to_owned(),
            zone: zone.to_owned(),
            node_ip: Some("127.0.0.1".into()),
            metrics_port,
            kubelet_port,
            provider: Vec::new(),
            serving: None,
        })
    }

    common_setters!();

    /// The tencent provider against `endpoint` (cloudsim's), in `region` and VPC `vpc_id`.
    pub fn tencent(mut self, endpoint: &str, region: &str, vpc_id: &str, security_group_id: &str) -> Self {
        self.provider = vec![
            format!("--region={region}"),
            format!("--vpc-id={vpc_id}"),
            format!("--security-group-id={security_group_id}"),
            format!("--cloud-endpoint={endpoint}"),
        ];
        self
    }

    /// Other provider flags (`--provider=kubernetes`, ...) in place of [`Eklet::tencent`]'s.
    pub fn provider_args(mut self, args: &[String]) -> Self {
        self.provider = args.to_vec();
        self
    }

    /// `--node-ip`, the address the virtual node reports (127.0.0.1 unless set); `None` leaves the
    /// flag to the extra arguments.
    pub fn node_ip(mut self, ip: Option<String>) -> Self {
        self.node_ip = ip;
        self
    }

    /// The kubelet API's serving certificate and key (`--tls-cert-file`, `--tls-private-key-file`).
    pub fn serving_certificate(mut self, cert: &Path, key: &Path) -> Self {
        self.serving = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// The tencent provider reads sandbox usage from the agents of `block`.
    pub fn agents(self, block: &AgentBlock) -> Self {
        self.arg(block.eklet_arg())
    }

    /// The virtual node eklet registers for its subnet.
    pub fn node_name(&self) -> String {
        format!("eklet-{}", self.subnet)
    }

    /// `/metrics` and `/healthz`.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }

    /// The kubelet API (TLS).
    pub fn kubelet_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.kubelet_port))
    }

    pub fn spawn(&self, cp: &ControlPlane) -> Result<Proc> {
        let mut args = vec![
            "eklet".to_owned(),
            self.common.kubeconfig_arg(cp),
            format!("--cluster-id={}", self.cluster_id),
            format!("--subnet={}={}", self.subnet, self.zone),
        ];
        args.extend(self.provider.iter().cloned());
        args.extend([
            "--bind-address=127.0.0.1".to_owned(),
            format!("--metrics-port={}", self.metrics_port),
            format!("--kubelet-port={}", self.kubelet_port),
            // The apiserver's kubelet client certificate is signed by the test bed CA.
            format!("--client-ca-file={}", cp.pki().ca.cert_file.display()),
        ]);
        if let Some((cert, key)) = &self.serving {
            args.push(format!("--tls-cert-file={}", cert.display()));
            args.push(format!("--tls-private-key-file={}", key.display()));
        }
        if let Some(ip) = &self.node_ip {
            args.push(format!("--node-ip={ip}"));
        }
        self.common.spawn(cp, args)
    }
}

/// `tke-resilience admission`, eks-admission, serving `/metrics` and `/healthz` on a free loopback
/// port.
#[derive(Clone, Debug)]
pub struct Admission {
    common: Common,
    metrics_port: u16,
}

impl Admission {
    pub fn new(binary: &Path) -> Result<Admission> {
        let [metrics_port] = free_ports::<1>()?;
        Ok(Admission {
            common: Common::new(binary, "admission"),
            metrics_port,
        })
    }

    common_setters!();

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }

    pub fn spawn(&self, cp: &ControlPlane) -> Result<Proc> {
        self.common.spawn(
            cp,
            vec![
                "admission".into(),
                self.common.kubeconfig_arg(cp),
                "--metrics-bind-address=127.0.0.1".into(),
                format!("--metrics-port={}", self.metrics_port),
            ],
        )
    }
}

/// `tke-resilience scheduler-extender`, tke-scheduler's extender, on `listen`: the address the
/// control plane's second kube-scheduler was configured with ([`scheduler_config`]) before it
/// started, so picked by the caller.
#[derive(Clone, Debug)]
pub struct Extender {
    common: Common,
    listen: SocketAddr,
}

impl Extender {
    pub fn new(binary: &Path, listen: SocketAddr) -> Extender {
        Extender {
            common: Common::new(binary, "scheduler-extender"),
            listen,
        }
    }

    common_setters!();

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `/readyz`, which answers once the extender's caches are listed.
    pub fn ready_url(&self) -> String {
        format!("http://{}/readyz", self.listen)
    }

    pub fn spawn(&self, cp: &ControlPlane) -> Result<Proc> {
        self.common.spawn(
            cp,
            vec![
                "scheduler-extender".into(),
                self.common.kubeconfig_arg(cp),
                format!("--listen={}", self.listen),
            ],
        )
    }
}

/// Polls `check` every 100 ms until it holds, failing at once with its log when one of `procs`
/// exits, or after `patience` naming `what`.
pub async fn wait_while_alive<F, Fut>(
    procs: &mut [Proc],
    patience: Duration,
    what: &str,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await {
            return Ok(());
        }
        for proc in procs.iter_mut() {
            if let Some(status) = proc.exited() {
                return Err(Error::Died {
                    name: proc.name.clone(),
                    status,
                    waiting_for: what.to_owned(),
                    log: proc.log.clone(),
                    tail: proc.log_tail(30),
                });
            }
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log.display().to_string()).collect();
            return Err(Error::Timeout(
                patience,
                format!("{what}; logs: {}", logs.join(", ")),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `url` answers 2xx, failing at once when one of `procs` exits (see
/// [`wait_while_alive`]).
pub async fn wait_http(procs: &mut [Proc], url: &str, patience: Duration) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Tools(format!("http client: {e}")))?;
    wait_while_alive(procs, patience, &format!("an answer from {url}"), || {
        let request = http.get(url).send();
        async move { request.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await
}
