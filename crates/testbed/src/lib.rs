//! A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler (and a second scheduler when asked) built from their Go
//! modules by `hack/tools.sh`, and kwok for simulated local "IDC" nodes.
//!
//! Tests that can be isolated by namespace share one control plane per test binary
//! ([`ControlPlane::shared`]); a test that needs a pristine cluster starts its own
//! ([`ControlPlane::start`]) and it is torn down when dropped. Either way no process outlives the test
//! binary, also when it panics or is killed (see [`process`]).
//!
//! Real nodes (kubelet, containerd, runc, kube-proxy; [`realnode`]) join a control plane with
//! [`ControlPlane::add_real_node`] and run containers from images built here ([`images`]).
//!
//! Our own components (eklet, eks-admission, tke-scheduler's extender, cloudsim) start next to a
//! control plane through [`components`], the one place that knows their flags, for the end-to-end
//! tests as for `tke-stack` (`make up`) and `tke-bench`.

pub mod components;
pub mod images;
pub mod metrics_server;
pub mod nodes;
pub mod pki;
pub mod process;
pub mod procstat;
pub mod realnode;
pub mod wait;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub use nodes::NodeSpec;
use pki::Pki;
pub use process::Proc;
use process::Supervisor;
pub use realnode::{RealNode, address::NodeAddress};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("test-bed tools: {0}")]
    Tools(String),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
    #[error("{0} exited during start-up; last lines of {1}:\n{2}")]
    Exited(String, PathBuf, String),
    #[error("{name} exited ({status}) while waiting for {waiting_for}; last lines of {log}:\n{tail}")]
    Died {
        name: String,
        status: std::process::ExitStatus,
        waiting_for: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{what} not healthy after {after:?}; logs in {logs}")]
    NotHealthy {
        what: String,
        after: Duration,
        logs: PathBuf,
    },
    #[error("io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("real node: {0}")]
    RealNode(String),
    #[error(transparent)]
    Images(#[from] images::Error),
    #[error(transparent)]
    Forward(#[from] realnode::forward::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a control plane runs besides etcd, the apiserver, the controller manager and the default
/// scheduler.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A second kube-scheduler with this KubeSchedulerConfiguration. Every `${KUBECONFIG}` in it is
    /// replaced by the admin kubeconfig's path.
    pub second_scheduler_config: Option<String>,
    /// The default scheduler's KubeSchedulerConfiguration, `${KUBECONFIG}` replaced likewise;
    /// without one it runs with flags only (leader election off, client QPS 200, burst 400).
    /// A benchmark comparing it with the second scheduler gives both the same settings.
    pub default_scheduler_config: Option<String>,
    /// Local nodes kwok creates and keeps Ready before `start` returns.
    pub nodes: Vec<NodeSpec>,
}

/// Ports, paths and processes of one running control plane.
pub struct ControlPlane {
    run_dir: PathBuf,
    bin_dir: PathBuf,
    pki: Pki,
    kubeconfig: PathBuf,
    apiserver_url: String,
    /// The secure ports of the default scheduler and, when there is one, the second scheduler.
    scheduler_port: u16,
    second_scheduler_port: Option<u16>,
    /// How long `start` took from the first process to a healthy cluster.
    pub started_in: Duration,
    procs: Mutex<Vec<Proc>>,
    supervisor: Mutex<Option<Supervisor>>,
}

static SHARED: tokio::sync::OnceCell<Arc<ControlPlane>> = tokio::sync::OnceCell::const_new();

/// Installs ring as the process's rustls provider (the only one in the workspace).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use. Isolate
    /// tests by namespace ([`ControlPlane::namespace`]) and by node labels.
    pub async fn shared() -> Result<Arc<ControlPlane>> {
        SHARED
            .get_or_try_init(|| async { ControlPlane::start(Options::default()).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// Starts a fresh control plane of its own; it is stopped when dropped.
    pub async fn start(options: Options) -> Result<ControlPlane> {
        install_crypto();
        let bin_dir = tools_dir()?;
        let run_dir = new_run_dir()?;
        let begun = Instant::now();
        let pki = Pki::generate(&run_dir.join("pki"))?;
        let supervisor = Supervisor::new(&run_dir)?;
        let cp = ControlPlane {
            kubeconfig: run_dir.join("admin.kubeconfig"),
            apiserver_url: String::new(),
            scheduler_port: 0,
            second_scheduler_port: None,
            run_dir,
            bin_dir,
            pki,
            started_in: Duration::ZERO,
            procs: Mutex::new(Vec::new()),
            supervisor: Mutex::new(Some(supervisor)),
        };
        eprintln!("[testbed] starting a control plane in {}", cp.run_dir.display());
        if std::env::var_os("TKE_TESTBED_KEEP").is_some() {
            // The watchdog, which may outlive us, honours the marker file rather than our environment.
            cp.keep_run_dir();
        }
        let mut cp = cp;
        cp.boot(&options).await?;
        cp.started_in = begun.elapsed();
        eprintln!(
            "[testbed] control plane healthy in {:.1}s ({})",
            cp.started_in.as_secs_f64(),
            cp.apiserver_url
        );
        Ok(cp)
    }

    async fn boot(&mut self, options: &Options) -> Result<()> {
        let run = self.run_dir.clone();
        let p = |s: &Path| s.display().to_string();
        let [etcd_client, etcd_peer, apiserver, kcm, scheduler, second] = free_ports::<6>()?;

        let etcd_data = run.join("etcd");
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        self.spawn(
            "etcd",
            &[
                "--name=testbed".into(),
                format!("--data-dir={}", p(&etcd_data)),
                // The run directory in every command line is how the watchdog recognises its processes.
                format!("--log-outputs={}", p(&run.join("logs/etcd-structured.log"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--auto-compaction-retention=1".into(),
                "--quota-backend-bytes=2147483648".into(),
                "--log-level=warn".into(),
            ],
        )?;
        self.wait_healthy("etcd", &format!("{etcd_url}/health"), Duration::from_secs(30))
            .await?;

        let pki = &self.pki;
        self.apiserver_url = format!("https://127.0.0.1:{apiserver}");
        let args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--etcd-prefix=/registry".into(),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver}"),
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", p(&pki.apiserver.cert_file)),
            format!("--tls-private-key-file={}", p(&pki.apiserver.key_file)),
            format!("--client-ca-file={}", p(&pki.ca.cert_file)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&pki.service_account_pub)),
            format!(
                "--service-account-signing-key-file={}",
                p(&pki.service_account_key)
            ),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!(
                "--kubelet-client-certificate={}",
                p(&pki.apiserver_kubelet_client.cert_file)
            ),
            format!(
                "--kubelet-client-key={}",
                p(&pki.apiserver_kubelet_client.key_file)
            ),
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            // The aggregation layer, for metrics-server (`kubectl top`, HPA). One CA signs the
            // front-proxy client too; only its name may assert request headers.
            format!("--requestheader-client-ca-file={}", p(&pki.ca.cert_file)),
            format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CLIENT),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                p(&pki.front_proxy_client.cert_file)
            ),
            format!("--proxy-client-key-file={}", p(&pki.front_proxy_client.key_file)),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        self.spawn("kube-apiserver", &args)?;
        self.wait_healthy(
            "kube-apiserver",
            &format!("{}/readyz", self.apiserver_url),
            Duration::from_secs(90),
        )
        .await?;
        self.write_kubeconfig()?;

        let kubeconfig = p(&self.kubeconfig);
        let component_auth = |port: u16| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--leader-elect=false".into(),
            ]
        };
        let mut kcm_args = component_auth(kcm);
        kcm_args.extend([
            "--controllers=*".into(),
            format!("--root-ca-file={}", p(&self.pki.ca.cert_file)),
            format!(
                "--service-account-private-key-file={}",
                p(&self.pki.service_account_key)
            ),
            format!("--cluster-signing-cert-file={}", p(&self.pki.ca.cert_file)),
            format!("--cluster-signing-key-file={}", p(&self.pki.ca.key_file)),
            // The node-lifecycle controller stays on: virtual nodes must heartbeat like real ones.
            "--node-monitor-period=5s".into(),
            "--node-monitor-grace-period=40s".into(),
            // HPAs react within seconds instead of the default 15 s.
            "--horizontal-pod-autoscaler-sync-period=5s".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ]);
        self.spawn("kube-controller-manager", &kcm_args)?;

        // A kube-scheduler run from a KubeSchedulerConfiguration written to `file`, with
        // `${KUBECONFIG}` filled in, serving on `port`.
        let configured = |file: &str, config: &str, port: u16| -> Result<Vec<String>> {
            let path = run.join(file);
            write_file(&path, &config.replace("${KUBECONFIG}", &kubeconfig))?;
            Ok(vec![
                format!("--config={}", p(&path)),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--v=1".into(),
            ])
        };
        let sched_args = match &options.default_scheduler_config {
            Some(config) => configured("default-scheduler.yaml", config, scheduler)?,
            None => {
                let mut args = component_auth(scheduler);
                args.extend([
                    "--kube-api-qps=200".into(),
                    "--kube-api-burst=400".into(),
                    "--v=1".into(),
                ]);
                args
            }
        };
        self.spawn("kube-scheduler", &sched_args)?;
        self.scheduler_port = scheduler;

        let mut health = vec![
            (
                "kube-controller-manager",
                format!("https://127.0.0.1:{kcm}/healthz"),
            ),
            ("kube-scheduler", format!("https://127.0.0.1:{scheduler}/healthz")),
        ];
        if let Some(config) = &options.second_scheduler_config {
            self.spawn(
                "second-scheduler",
                &configured("second-scheduler.yaml", config, second)?,
            )?;
            health.push(("second-scheduler", format!("https://127.0.0.1:{second}/healthz")));
            self.second_scheduler_port = Some(second);
        }
        self.start_kwok()?;
        for (name, url) in health {
            self.wait_healthy(name, &url, Duration::from_secs(60)).await?;
        }

        // The controller manager creates `default` service accounts; pods cannot be created before.
        let client = self.client().await?;
        wait::until(
            Duration::from_secs(60),
            "the default ServiceAccount in namespace default",
            || {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                async move { api.get_opt("default").await.ok().flatten().is_some() }
            },
        )
        .await?;
        if !options.nodes.is_empty() {
            nodes::create(&client, &options.nodes).await?;
        }
        Ok(())
    }

    fn start_kwok(&self) -> Result<()> {
        let home = self.run_dir.join("kwok-home");
        std::fs::create_dir_all(&home).map_err(|source| Error::Io {
            path: home.clone(),
            source,
        })?;
        let stages = self.bin_dir.join("kwok-stages.yaml");
        if !stages.is_file() {
            return Err(Error::Tools(format!(
                "{} is missing; run `make tools`",
                stages.display()
            )));
        }
        let home_str = home.display().to_string();
        self.spawn_with_env(
            "kwok",
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--config={}", stages.display()),
                "--manage-all-nodes=false".into(),
                format!(
                    "--manage-nodes-with-annotation-selector={}={}",
                    nodes::KWOK_ANNOTATION,
                    "fake"
                ),
                "--node-lease-duration-seconds=40".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.244.0.1".into(),
            ],
            // kwok also reads ~/.kwok/kwok.yaml; a private HOME keeps the user's out.
            &[("HOME", &home_str)],
        )
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<()> {
        self.spawn_with_env(name, args, &[])
    }

    fn spawn_with_env(&self, name: &str, args: &[String], envs: &[(&str, &str)]) -> Result<()> {
        let program = match name {
            "second-scheduler" => self.bin("kube-scheduler"),
            other => self.bin(other),
        };
        let mut supervisor = self.supervisor.lock().unwrap_or_else(|e| e.into_inner());
        let supervisor = supervisor
            .as_mut()
            .ok_or_else(|| Error::Tools("control plane stopped".into()))?;
        let proc = supervisor.spawn(name, &program, args, envs)?;
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).push(proc);
        Ok(())
    }

    /// Starts a process under test (a component of ours, a benchmark peer) next to the control plane.
    /// It is killed when the returned handle is dropped, when the control plane stops, and when the
    /// test binary dies. Its arguments must name a path inside [`ControlPlane::run_dir`] (for example
    /// `--kubeconfig` with [`ControlPlane::kubeconfig`]) so that the watchdog recognises it.
    pub fn spawn_process(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<Proc> {
        let mut supervisor = self.supervisor.lock().unwrap_or_else(|e| e.into_inner());
        let supervisor = supervisor
            .as_mut()
            .ok_or_else(|| Error::Tools("control plane stopped".into()))?;
        Ok(supervisor.spawn(name, program, args, envs)?)
    }

    /// Polls `url` until it answers 200, failing early (with its log) when a process has exited.
    async fn wait_healthy(&self, what: &str, url: &str, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Tools(format!("http client: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = http.get(url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::NotHealthy {
                    what: what.into(),
                    after: timeout,
                    logs: self.run_dir.join("logs"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for proc in procs.iter_mut() {
            if proc.exited().is_some() {
                return Err(Error::Exited(
                    proc.name.clone(),
                    proc.log.clone(),
                    proc.log_tail(30),
                ));
            }
        }
        Ok(())
    }

    fn write_kubeconfig(&self) -> Result<()> {
        self.write_client_kubeconfig(&self.kubeconfig, &self.pki.admin)
    }

    /// Writes to `path` a kubeconfig for the user of a client certificate of this control plane's
    /// CA (see [`pki::Pki::issue_client`]), for running a component under an identity of its own.
    pub fn write_client_kubeconfig(&self, path: &Path, client: &pki::CertPair) -> Result<()> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let yaml = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: user
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: user
current-context: testbed
",
            server = self.apiserver_url,
            ca = b64(&self.pki.ca.cert_pem),
            cert = b64(&client.cert_pem),
            key = b64(&client.key_pem),
        );
        write_file(path, &yaml)
    }

    /// The Prometheus text of the default scheduler's `/metrics` (read as the admin user, whom
    /// the scheduler's delegated authorization lets in).
    pub async fn scheduler_metrics(&self) -> Result<String> {
        self.admin_get(self.scheduler_port, "/metrics").await
    }

    /// The Prometheus text of the second scheduler's `/metrics`, if there is a second scheduler.
    pub async fn second_scheduler_metrics(&self) -> Result<String> {
        let port = self
            .second_scheduler_port
            .ok_or_else(|| Error::Tools("this control plane has no second scheduler".into()))?;
        self.admin_get(port, "/metrics").await
    }

    /// GETs `path` from a component's secure port on loopback with the admin client certificate.
    async fn admin_get(&self, port: u16, path: &str) -> Result<String> {
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", self.pki.admin.cert_pem, self.pki.admin.key_pem).as_bytes(),
        )
        .map_err(|e| Error::Tools(format!("admin client identity: {e}")))?;
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .identity(identity)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Tools(format!("http client: {e}")))?;
        let url = format!("https://127.0.0.1:{port}{path}");
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|e| Error::Tools(format!("GET {url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Error::Tools(format!("GET {url}: {e}")))?;
        if !status.is_success() {
            return Err(Error::Tools(format!("GET {url}: {status}: {text}")));
        }
        Ok(text)
    }

    /// A new client for the admin user, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<Client> {
        let config = self.client_config().await?;
        Ok(Client::try_from(config)?)
    }

    /// The admin client configuration, for building clients with other credentials or settings.
    pub async fn client_config(&self) -> Result<Config> {
        install_crypto();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// Creates a namespace named `<prefix>-<random>` and waits until pods can be created in it.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let client = self.client().await?;
        let name = format!("{prefix}-{}", random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let what = format!("the default ServiceAccount in namespace {name}");
        wait::until(Duration::from_secs(60), &what, || {
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
            async move { api.get_opt("default").await.ok().flatten().is_some() }
        })
        .await?;
        Ok(name)
    }

    /// Creates kwok-managed local nodes and waits until they are Ready and schedulable.
    pub async fn add_nodes(&self, specs: &[NodeSpec]) -> Result<()> {
        nodes::create(&self.client().await?, specs).await
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The path of a test-bed tool (`kubectl`, `helm`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Keeps the run directory (logs, kubeconfig) after the control plane stops, for debugging.
    pub fn keep_run_dir(&self) {
        let _ = std::fs::write(self.run_dir.join("keep"), "");
    }

    /// Stops every process now (etcd last) and removes the run directory.
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut proc) = procs.pop() {
            proc.kill();
        }
        // Real nodes still running (their handles outlived the control plane, or leaked).
        realnode::clean_up_all(&self.run_dir);
        self.supervisor.lock().unwrap_or_else(|e| e.into_inner()).take();
        if !self.run_dir.join("keep").exists() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding the test-bed binaries: `$TKE_TESTBED_BIN`, else what `hack/tools.sh`
/// prints (it builds missing tools first, which takes minutes when cold).
pub fn tools_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("TKE_TESTBED_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = workspace_root().join("hack/tools.sh");
        eprintln!(
            "[testbed] TKE_TESTBED_BIN unset; running {} (builds missing tools)",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed with {}", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} printed no directory", script.display()))
    })
    .clone()
    .map_err(Error::Tools)
}

/// The root of this repository.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Run directories live under `$TKE_TESTBED_DIR`, else on tmpfs (`/dev/shm`) where the machine has
/// one, since etcd and the apiserver write a lot, else in the temp directory.
fn new_run_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("TKE_TESTBED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm/tke-testbed"),
        None => std::env::temp_dir().join("tke-testbed"),
    };
    let dir = base.join(format!("run-{}-{}", std::process::id(), random_suffix()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Lowercase letters and digits, safe in object names.
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// `N` distinct free loopback ports. They are released before use, so a port can in principle be taken
/// in between; start-up fails loudly if that ever happens.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?;
        *port = l
            .local_addr()
            .map_err(|source| Error::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?
            .port();
        listeners.push(l);
    }
    Ok(ports)
}
