//! Real nodes: a kubelet (built with the other tools by `hack/tools.sh`) with containerd, runc and
//! the CNI plugins from Debian, joined to a test-bed control plane and running real containers.
//!
//! Each node lives in a network namespace of its own that the test bed creates (see `host.sh`): the
//! kubelet refuses a loopback node IP, and no address may be added to the root namespace. The
//! apiserver reaches the kubelet (logs, exec, stats) at the node IP over a veth pair whose root end
//! has no address, only routes; the kubelet reaches the apiserver through a forwarder listening on
//! the namespace's loopback ([`forward`]). kubelet, containerd and kube-proxy enter only the network
//! namespace (`nsenter --net`), so that their mounts are in one mount namespace and visible to both.
//!
//! Pods reach the apiserver as in any cluster, with in-cluster configuration: the kubelet gives them
//! `KUBERNETES_SERVICE_HOST`, the ClusterIP of the `kubernetes` Service, and kube-proxy (iptables
//! mode, inside the node's namespace only) sends that to the Service's endpoint,
//! [`IN_CLUSTER_APISERVER`]. That address exists only inside each node's namespace, on its loopback,
//! where a second forwarder relays to the apiserver's loopback port; the test bed publishes it as
//! the Service's EndpointSlice (the apiserver itself advertises loopback, which an endpoint may not
//! be). Other ClusterIP Services work between pods of one node; a node's namespace has no route to
//! another node's pods. The apiserver reaches pods (a component's kubelet API, say) at their pod IP
//! through the root namespace's route into the node's namespace. There is no cluster DNS.
//!
//! Cleanup has the test bed's guarantee: `host.sh down` removes processes, mounts, cgroups, the
//! namespace and veth, shim sockets and CNI state outside the run directory, and restores the host
//! sysctls the kubelet changes. It runs when the node is dropped, when its control plane stops, and
//! from the watchdog after the test binary died (panic, SIGKILL).

pub mod address;
pub mod forward;
pub mod vpc;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Node, discovery::v1::EndpointSlice};
use kube::{Api, api::PostParams};

use crate::{
    ControlPlane, Error, Proc, Result,
    images::{self, Image},
    write_file,
};

/// The script that makes and unmakes a node's host side; also run by the watchdog.
pub const HOST_SCRIPT: &str = include_str!("host.sh");
/// Node directories inside a control plane's run directory start with this.
pub const DIR_PREFIX: &str = "rn-";

const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where every real node's pods reach the apiserver (see the module documentation); in the
/// benchmarking range like the node IPs, and never on an interface of the root namespace.
pub const IN_CLUSTER_APISERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
/// kube-proxy's health port on the node IP.
const KUBE_PROXY_HEALTH_PORT: u16 = 10256;
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Why real nodes cannot run on this machine, or `None` when they can: root, cgroups, network
/// namespaces, and the programs from `hack/realnode-deps.sh`.
pub fn unavailable() -> Option<String> {
    let mut reasons = Vec::new();
    if !rustix::process::geteuid().is_root() {
        reasons.push("not root (network namespaces, cgroups and mounts need it)".to_owned());
    }
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && !Path::new("/sys/fs/cgroup/cpu").is_dir() {
        reasons.push("no cgroups at /sys/fs/cgroup".to_owned());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        reasons.push("no network namespaces (/proc/self/ns/net)".to_owned());
    }
    let mut missing = Vec::new();
    for program in [
        "ip",
        "nsenter",
        "flock",
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "iptables",
        "iptables-restore",
        "iptables-save",
    ] {
        if which(program).is_none() {
            missing.push(program.to_owned());
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            missing.push(format!("{CNI_BIN_DIR}/{plugin}"));
        }
    }
    if !Path::new(images::BUSYBOX_BINARY).is_file() {
        missing.push(images::BUSYBOX_BINARY.to_owned());
    }
    if !missing.is_empty() {
        reasons.push(format!(
            "missing {} (hack/realnode-deps.sh installs them, as root)",
            missing.join(", ")
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// For tests that need real nodes: true when they can run here. Otherwise, under `CI=true`, panics
/// saying why (CI must not pass without them); elsewhere says why on stderr, past the test
/// harness' capture so that a skip is never silent, and returns false.
pub fn available_or_skip() -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("real nodes cannot run on this machine: {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: real nodes cannot run on this machine: {why}"
    );
    false
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A running real node. Stopped and cleaned up when dropped.
pub struct RealNode {
    pub name: String,
    /// The node's InternalIP, inside its network namespace.
    pub ip: Ipv4Addr,
    /// The pods' addresses, on the node's CNI bridge inside its namespace.
    pub pod_cidr: (Ipv4Addr, u8),
    /// The network namespace's name (`ip netns`); its file is `/run/netns/<netns>`.
    pub netns: String,
    /// From the first host change to the Node being Ready.
    pub started_in: Duration,
    dir: PathBuf,
    containerd_socket: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    kubelet: Option<Proc>,
    containerd: Option<Proc>,
    kube_proxy: Option<Proc>,
    forwarders: Vec<forward::Forwarder>,
}

impl ControlPlane {
    /// Starts a real node named `name` (containerd, a kubelet and kube-proxy in a network namespace
    /// of its own) and waits until it is Ready and its Services work. The test images ([`images::PAUSE`], [`images::BUSYBOX`]) are
    /// imported; pods use them with `imagePullPolicy: Never`.
    pub async fn add_real_node(&self, name: &str) -> Result<RealNode> {
        if let Some(why) = unavailable() {
            return Err(Error::RealNode(why));
        }
        let begun = Instant::now();
        let kubelet_bin = self.bin("kubelet");
        if !kubelet_bin.is_file() {
            return Err(Error::Tools(format!(
                "{} is missing; run `make tools`",
                kubelet_bin.display()
            )));
        }
        // Absolute: host.sh matches processes by it, and refuses anything else.
        let dir =
            std::path::absolute(self.run_dir().join(format!("{DIR_PREFIX}{name}"))).map_err(|source| {
                Error::Io {
                    path: self.run_dir().to_owned(),
                    source,
                }
            })?;
        // The deepest Unix socket under it; sun_path holds 107 bytes.
        let deepest = dir.join("kubelet/root/pod-resources/kubelet.sock");
        if deepest.as_os_str().len() > 107 {
            return Err(Error::RealNode(format!(
                "{} is too long for a Unix socket; use a shorter node name or TKE_TESTBED_DIR",
                deepest.display()
            )));
        }
        for sub in [
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet/root",
            "kubelet/pod-logs",
            "kube-proxy",
            "images",
        ] {
            mkdir(&dir.join(sub))?;
        }
        // The script first, so that whoever cleans up finds it even if `up` fails half-way.
        write_file(&dir.join("host.sh"), HOST_SCRIPT)?;
        let mut node = RealNode {
            name: name.to_owned(),
            ip: Ipv4Addr::UNSPECIFIED,
            pod_cidr: (Ipv4Addr::UNSPECIFIED, 24),
            netns: String::new(),
            started_in: Duration::ZERO,
            containerd_socket: dir.join("containerd/containerd.sock"),
            dir,
            kubectl: self.bin("kubectl"),
            kubeconfig: self.kubeconfig().to_owned(),
            kubelet: None,
            containerd: None,
            kube_proxy: None,
            forwarders: Vec::new(),
        };
        let owner = std::process::id().to_string();
        let idx: u8 = host_script(&node.dir, &["up", &owner])?
            .trim()
            .parse()
            .map_err(|e| Error::RealNode(format!("host.sh up printed no node index: {e}")))?;
        node.ip = Ipv4Addr::new(198, 18, 0, idx);
        node.pod_cidr = (Ipv4Addr::new(198, 19, idx, 0), 24);
        node.netns = format!("tke-rn{idx}");
        let netns_file = PathBuf::from(format!("/run/netns/{}", node.netns));

        // The kubelet's way to the apiserver: the same loopback port inside the namespace.
        let apiserver: SocketAddr = self
            .apiserver_url()
            .trim_start_matches("https://")
            .parse()
            .map_err(|e| Error::RealNode(format!("apiserver address {}: {e}", self.apiserver_url())))?;
        node.forwarders
            .push(forward::Forwarder::start(&netns_file, apiserver, apiserver)?);
        // The pods' way: the `kubernetes` Service's endpoint, on the same port.
        let in_cluster = SocketAddr::from((IN_CLUSTER_APISERVER, apiserver.port()));
        node.forwarders
            .push(forward::Forwarder::start(&netns_file, in_cluster, apiserver)?);
        self.publish_in_cluster_apiserver(in_cluster.port()).await?;

        let pki = self.pki();
        let client = pki.issue_client(
            &format!("node-{name}-client"),
            &format!("system:node:{name}"),
            Some("system:nodes"),
        )?;
        let serving = pki.issue_server(
            &format!("node-{name}-serving"),
            &format!("system:node:{name}"),
            &[&node.ip.to_string(), name],
        )?;
        let kubeconfig = node.dir.join("kubelet/kubeconfig");
        self.write_client_kubeconfig(&kubeconfig, &client)?;
        // The identity the default RBAC gives kube-proxy (ClusterRoleBinding system:node-proxier).
        let proxy_client = pki.issue_client(&format!("node-{name}-proxy"), "system:kube-proxy", None)?;
        let proxy_kubeconfig = node.dir.join("kube-proxy/kubeconfig");
        self.write_client_kubeconfig(&proxy_kubeconfig, &proxy_client)?;
        write_file(
            &node.dir.join("kube-proxy/config.yaml"),
            &kube_proxy_config(&node, &proxy_kubeconfig),
        )?;

        let network = format!("tke-{name}");
        write_file(&node.dir.join("cni-network"), &network)?;
        write_file(
            &node.dir.join("cni/net.d/10-testbed.conflist"),
            &cni_config(&network, &node),
        )?;
        write_file(&node.dir.join("containerd.toml"), &containerd_config(&node.dir))?;
        // Pods get no name server: the host's would be outside our namespaces.
        write_file(
            &node.dir.join("resolv.conf"),
            "# no DNS on a test-bed real node\n",
        )?;
        write_file(
            &node.dir.join("kubelet/config.yaml"),
            &kubelet_config(&node, idx, &serving, &pki.ca.cert_file),
        )?;

        let pause = images::pause(&node.dir.join("images/pause.tar"))?;
        let busybox = images::busybox(&node.dir.join("images/busybox.tar"))?;

        let nsenter = which("nsenter").unwrap_or_else(|| "nsenter".into());
        let in_netns = |program: &Path, args: Vec<String>| {
            let mut all = vec![format!("--net={}", netns_file.display()), "--".into()];
            all.push(program.display().to_string());
            all.extend(args);
            all
        };
        let containerd = which("containerd").unwrap_or_else(|| "containerd".into());
        node.containerd = Some(self.spawn_process(
            &format!("containerd-{name}"),
            &nsenter,
            &in_netns(
                &containerd,
                vec![format!("--config={}", node.dir.join("containerd.toml").display())],
            ),
            &[],
        )?);
        node.wait_containerd().await?;
        node.import(&pause)?;
        node.import(&busybox)?;

        let kubelet_args = vec![
            format!("--config={}", node.dir.join("kubelet/config.yaml").display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", node.dir.join("kubelet/root").display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={}", node.ip),
            "--v=1".into(),
        ];
        let client = self.client().await?;
        for attempt in 1.. {
            let proc_name = match attempt {
                1 => format!("kubelet-{name}"),
                n => format!("kubelet-{name}-{n}"),
            };
            node.kubelet = Some(self.spawn_process(
                &proc_name,
                &nsenter,
                &in_netns(&kubelet_bin, kubelet_args.clone()),
                &[],
            )?);
            match node.wait_ready(&client).await {
                // cAdvisor takes the root filesystem's device from the mounts of the tmpfs the
                // kubelet's root is on; another real node's containerd mounts layers there for a
                // moment, and a kubelet that picked one exits when it vanishes. Start it again.
                Err(Error::Exited(_, _, tail))
                    if attempt < 3 && tail.contains("Failed to start ContainerManager") =>
                {
                    eprintln!(
                        "[testbed] kubelet of {name} lost a race with another node's mount; starting it again"
                    );
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        // After the Node exists: kube-proxy takes the node's addresses from it.
        node.kube_proxy = Some(self.spawn_process(
            &format!("kube-proxy-{name}"),
            &nsenter,
            &in_netns(
                &self.bin("kube-proxy"),
                vec![
                    format!("--config={}", node.dir.join("kube-proxy/config.yaml").display()),
                    "--v=1".into(),
                ],
            ),
            &[],
        )?);
        node.wait_kube_proxy().await?;
        node.started_in = begun.elapsed();
        eprintln!(
            "[testbed] real node {name} Ready in {:.1}s (node IP {}, pods {}/{}, netns {})",
            node.started_in.as_secs_f64(),
            node.ip,
            node.pod_cidr.0,
            node.pod_cidr.1,
            node.netns
        );
        Ok(node)
    }
}

impl RealNode {
    /// Loads an image archive into the node's containerd (`ctr images import`), for pods with
    /// `imagePullPolicy: Never`.
    pub fn import(&self, image: &Image) -> Result<()> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&image.archive)
            .output()
            .map_err(|source| Error::Io {
                path: "ctr".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::RealNode(format!(
                "importing {} into {}: {}",
                image.archive.display(),
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Whether `ip` is one of this node's pod addresses (inside its namespace).
    pub fn owns_pod_ip(&self, ip: Ipv4Addr) -> bool {
        let (net, bits) = self.pod_cidr;
        let mask = u32::MAX << (32 - u32::from(bits));
        u32::from(ip) & mask == u32::from(net) & mask
    }

    /// The node's directory (configuration, containerd and kubelet state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resident memory of the node's kubelet, containerd and kube-proxy, in bytes (shims and pods
    /// excluded).
    pub fn rss_bytes(&self) -> u64 {
        [&self.kubelet, &self.containerd, &self.kube_proxy]
            .into_iter()
            .flatten()
            .map(|p| rss_of(p.pid()))
            .sum()
    }

    async fn wait_containerd(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd_socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    Duration::from_secs(30),
                    format!("containerd of {}", self.name),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_ready(&mut self, client: &kube::Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(node)) = nodes.get_opt(&self.name).await
                && is_ready(&node)
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    READY_TIMEOUT,
                    format!("real node {} Ready (logs in {})", self.name, self.dir.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until kube-proxy says it has written the Services' rules once (its health check).
    async fn wait_kube_proxy(&mut self) -> Result<()> {
        let url = format!("http://{}:{KUBE_PROXY_HEALTH_PORT}/healthz", self.ip);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| Error::RealNode(format!("http client: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    Duration::from_secs(60),
                    format!("kube-proxy of {} healthy at {url}", self.name),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        for proc in [&mut self.containerd, &mut self.kubelet, &mut self.kube_proxy]
            .into_iter()
            .flatten()
        {
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
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.forwarders.clear();
        for mut proc in [
            self.kube_proxy.take(),
            self.kubelet.take(),
            self.containerd.take(),
        ]
        .into_iter()
        .flatten()
        {
            proc.kill();
        }
        if let Err(e) = host_script(&self.dir, &["down"]) {
            eprintln!("[testbed] cleaning up real node {}: {e}", self.name);
        }
        // The Node object would stay NotReady in a shared cluster; best effort.
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "node",
                &self.name,
                "--wait=false",
                "--request-timeout=5s",
            ])
            .output();
        if !self.dir.parent().is_some_and(|run| run.join("keep").exists()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ControlPlane {
    /// Makes [`IN_CLUSTER_APISERVER`]:`port` the endpoint of the `kubernetes` Service (once per
    /// control plane; the apiserver writes none, its endpoint reconciler is off).
    async fn publish_in_cluster_apiserver(&self, port: u16) -> Result<()> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client().await?, "default");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "kubernetes-testbed",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "tke-testbed.local",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [IN_CLUSTER_APISERVER.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }))
        .map_err(|e| Error::RealNode(format!("the kubernetes EndpointSlice: {e}")))?;
        match slices.create(&PostParams::default(), &slice).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs `host.sh up DIR OWNER` or `host.sh down DIR`; returns its standard output.
pub(crate) fn host_script(dir: &Path, args: &[&str]) -> Result<String> {
    let (command, rest) = args.split_first().unwrap_or((&"down", &[]));
    let out = Command::new("sh")
        .arg(dir.join("host.sh"))
        .arg(command)
        .arg(dir)
        .args(rest)
        .output()
        .map_err(|source| Error::Io {
            path: dir.join("host.sh"),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::RealNode(format!(
            "host.sh {command} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `host.sh down` for every real node under a control plane's run directory (what its
/// nodes' `Drop` would have done).
pub(crate) fn clean_up_all(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_node = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
        if is_node && dir.join("host.sh").is_file() {
            let _ = host_script(&dir, &["down"]);
        }
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// bridge + host-local + loopback; no portmap, so nothing touches iptables.
fn cni_config(network: &str, node: &RealNode) -> String {
    let (net, bits) = node.pod_cidr;
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": node.dir.join("cni/ipam"),
                    "ranges": [[{"subnet": format!("{net}/{bits}")}]],
                },
            },
            {"type": "loopback"},
        ],
    })
    .to_string()
}

/// containerd 1.6 (config version 2), everything under the node's directory except the shim
/// sockets (`/run/containerd/s`, fixed in 1.6) and libcni's result cache. `restrict_oom_score_adj`:
/// root may lack CAP_SYS_RESOURCE (it does in the project's VMs), and then every sandbox fails.
fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "{d}/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      options = {{ Root = "{d}/runc", SystemdCgroup = false }}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni/net.d"
"#,
        pause = images::PAUSE,
    )
}

/// iptables mode in the node's namespace only. Every Service connection is masqueraded, so a pod
/// reaching a Service whose endpoint is on its own bridge gets the answer back through the node's
/// stack (no `br_netfilter` needed). Host-wide settings stay as they are: no conntrack table size
/// or timeouts, no OOM score (root may lack CAP_SYS_RESOURCE), no localhost NodePorts.
fn kube_proxy_config(node: &RealNode, kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
bindAddress: {ip}
healthzBindAddress: {ip}:{KUBE_PROXY_HEALTH_PORT}
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: 198.19.0.0/16
nodePortAddresses: ["{ip}/32"]
oomScoreAdj: 0
iptables:
  masqueradeAll: true
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
        name = node.name,
        ip = node.ip,
    )
}

/// cgroup v1 needs `failCgroupV1: false`; `makeIPTablesUtilChains: false` keeps iptables alone;
/// image GC never runs (the images cannot be pulled again).
fn kubelet_config(node: &RealNode, idx: u8, serving: &crate::pki::CertPair, client_ca: &Path) -> String {
    let d = node.dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /tke-rn{idx}
containerRuntimeEndpoint: unix://{d}/containerd/containerd.sock
address: {ip}
port: 10250
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
makeIPTablesUtilChains: false
podLogsDir: {d}/kubelet/pod-logs
volumePluginDir: {d}/kubelet/volume-plugins
resolvConf: {d}/resolv.conf
failSwapOn: false
nodeStatusUpdateFrequency: 5s
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        ip = node.ip,
        cert = serving.cert_file.display(),
        key = serving.key_file.display(),
        ca = client_ca.display(),
    )
}
