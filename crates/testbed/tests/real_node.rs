//! Real nodes in the test bed: a kubelet with containerd and runc in a network namespace of its own
//! runs real containers from images built without a registry; the apiserver reaches it for logs;
//! the test reaches its pods at their IPs, which are inside that namespace; and nothing of it is
//! left on the host after it is dropped.
//!
//! These tests need root, cgroups and network namespaces. Without them they fail under `CI=true`
//! and are skipped (saying why) elsewhere.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, LogParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use tke_testbed::{ControlPlane, Options, RealNode, images, random_suffix, realnode, wait};

const WAIT: Duration = Duration::from_secs(120);

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A busybox pod on `node` that says hello on stdout and serves a page naming its node.
fn web_pod(name: &str, node: &RealNode) -> anyhow::Result<Pod> {
    let script = format!(
        "mkdir -p /www && echo 'served by {node}' > /www/index.html && echo \"hello from $(hostname) on {node}\" && exec httpd -f -p 8080 -h /www",
        node = node.name
    );
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": images::BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
        }
    }))?)
}

fn pod_ip(pod: &Pod) -> anyhow::Result<Ipv4Addr> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .ok_or_else(|| anyhow::anyhow!("pod {:?} has no IP", pod.metadata.name))?;
    Ok(ip.parse()?)
}

#[tokio::test]
async fn two_real_nodes_run_busybox_containers_serve_their_logs_and_reach_their_pods() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("realnode").await?;
    let suffix = random_suffix();
    let (name_a, name_b) = (format!("rn-a-{suffix}"), format!("rn-b-{suffix}"));
    let (a, b) = tokio::try_join!(cp.add_real_node(&name_a), cp.add_real_node(&name_b))?;
    for node in [&a, &b] {
        eprintln!(
            "[real_node] {} Ready {:.2}s after start; kubelet + containerd + kube-proxy RSS {} MiB",
            node.name,
            node.started_in.as_secs_f64(),
            node.rss_bytes() / (1024 * 1024)
        );
    }
    assert_ne!(a.ip, b.ip, "each node has an IP of its own");
    assert_ne!(a.netns, b.netns, "each node has a network namespace of its own");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = Instant::now();
    for node in [&a, &b] {
        pods.create(
            &PostParams::default(),
            &web_pod(&format!("web-{}", node.name), node)?,
        )
        .await?;
    }
    let up = wait::for_objects(
        pods.clone(),
        watcher::Config::default().labels("app=web"),
        WAIT,
        "both web pods Ready",
        |p| p.len() == 2 && p.iter().all(|p| ready(p)),
    )
    .await?;
    eprintln!(
        "[real_node] both pods Ready {:.2}s after they were created",
        created.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    for node in [&a, &b] {
        let name = format!("web-{}", node.name);
        let pod = up
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            .ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
        let status = pod.status.as_ref().ok_or_else(|| anyhow::anyhow!("no status"))?;
        assert_eq!(status.host_ip.as_deref(), Some(node.ip.to_string().as_str()));

        // The apiserver fetches the logs from the kubelet at the node IP, over the veth.
        let logs = pods.logs(&name, &LogParams::default()).await?;
        assert!(
            logs.contains(&format!("hello from {name} on {}", node.name)),
            "logs of {name}: {logs:?}"
        );

        // The pod's address is inside the node's namespace, so the test may connect to it.
        let ip = pod_ip(pod)?;
        assert!(node.owns_pod_ip(ip), "{ip} is not in {}'s pod range", node.name);
        let page = http
            .get(format!("http://{ip}:8080/"))
            .send()
            .await?
            .text()
            .await?;
        assert_eq!(page.trim(), format!("served by {}", node.name));

        // exec: apiserver -> kubelet -> containerd's stream server, inside the namespace.
        let exec = tokio::process::Command::new(cp.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["-n", &ns, "exec", &name, "--", "cat", "/www/index.html"])
            .output()
            .await?;
        assert!(
            exec.status.success(),
            "kubectl exec: {}",
            String::from_utf8_lossy(&exec.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout).trim(),
            format!("served by {}", node.name)
        );

        // In-cluster configuration: the `kubernetes` Service's ClusterIP, which the kubelet hands
        // the pod, leads through kube-proxy to the apiserver (a TLS server answering plain HTTP
        // with 400).
        let in_cluster = tokio::process::Command::new(cp.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["-n", &ns, "exec", &name, "--", "sh", "-c"])
            .arg(r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT 2>&1; true")
            .output()
            .await?;
        let answer = String::from_utf8_lossy(&in_cluster.stdout);
        assert!(
            answer.contains("400 Bad Request"),
            "the apiserver through the kubernetes Service from {name}: {answer:?} {}",
            String::from_utf8_lossy(&in_cluster.stderr)
        );

        // The rule the layout exists for: no address on the host's end of the veth, IPv6
        // link-local included.
        assert_eq!(
            root_end_addresses(&node.netns),
            "",
            "addresses on {}h",
            node.netns
        );
    }

    for node in [&a, &b] {
        pods.delete(&format!("web-{}", node.name), &DeleteParams::default())
            .await?;
    }
    wait::for_objects(
        pods,
        watcher::Config::default().labels("app=web"),
        WAIT,
        "the web pods gone (the kubelets stopped their containers)",
        |p| p.is_empty(),
    )
    .await?;
    Ok(())
}

/// `ip -o addr show` of the host's end of a node's veth pair (`<netns>h`).
fn root_end_addresses(netns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", &format!("{netns}h")])
        .output()
        .expect("ip addr show");
    assert!(out.status.success(), "{netns}h exists");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Real-node tests run one at a time: the host sysctls the kubelet changes are machine-wide, and
/// a test checks that the last node on the machine puts them back.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The host sysctls the kubelet sets (`vm.overcommit_memory`, `kernel.panic`,
/// `kernel.panic_on_oops`), when no real node runs on the machine (another test process may run
/// some; then their values are not the machine's own).
fn host_sysctls_without_real_nodes() -> Option<Vec<String>> {
    let any_node = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("tke-rn"));
    (!any_node).then(sysctl_values)
}

fn sysctl_values() -> Vec<String> {
    ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"]
        .iter()
        .map(|k| {
            std::fs::read_to_string(Path::new("/proc/sys").join(k))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

/// After the last real node went away, the sysctls are what they were before the first came.
fn assert_sysctls_restored(before: Option<Vec<String>>) {
    match (before, host_sysctls_without_real_nodes()) {
        (Some(before), Some(after)) => assert_eq!(after, before, "the kubelet's sysctl changes are undone"),
        _ => eprintln!("[real_node] another process runs real nodes; sysctl restore not checked"),
    }
}

/// Everything a running real node has on the host, outside and inside its directory.
struct Footprint {
    dir: PathBuf,
    netns: PathBuf,
    host_link: String,
    cgroup: PathBuf,
    our_network: String,
    sandboxes: Vec<String>,
    shim_sockets: Vec<PathBuf>,
}

impl Footprint {
    fn of(dir: &Path, netns: &str, node_name: &str) -> anyhow::Result<Self> {
        use sha2::{Digest, Sha256};
        let state = dir.join("containerd/state");
        let names = |d: PathBuf| -> Vec<String> {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let address = dir.join("containerd/containerd.sock");
        // /run/containerd/s/sha256(<containerd address>/<namespace>/<id>), one per sandbox or task.
        let shim_sockets = names(state.join("io.containerd.runtime.v2.task/k8s.io"))
            .iter()
            .map(|id| {
                let key = format!("{}/k8s.io/{id}", address.display());
                Path::new("/run/containerd/s").join(hex::encode(Sha256::digest(key.as_bytes())))
            })
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            netns: Path::new("/run/netns").join(netns),
            host_link: format!("{netns}h"),
            cgroup: Path::new("/sys/fs/cgroup/pids").join(netns),
            our_network: format!("tke-{node_name}-"),
            sandboxes: names(state.join("io.containerd.grpc.v1.cri/sandboxes")),
            shim_sockets,
        })
    }

    fn mounts(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.display());
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    fn processes(&self) -> Vec<String> {
        let needle = format!("{}/", self.dir.display());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(&needle).then_some(cmdline)
            })
            .collect()
    }

    /// libcni's cache: <network>-<sandbox id>-<ifname>, for our network and containerd's loopback.
    fn cni_results(&self) -> Vec<String> {
        std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| {
                f.starts_with(&self.our_network) || self.sandboxes.iter().any(|id| f.contains(id.as_str()))
            })
            .collect()
    }

    /// `/var/log/containers/*.log`, the kubelet's links to its pods' logs (a fixed path).
    fn log_links(&self) -> Vec<PathBuf> {
        std::fs::read_dir("/var/log/containers")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&self.dir)))
            .map(|e| e.path())
            .collect()
    }

    fn link_exists(&self) -> bool {
        std::process::Command::new("ip")
            .args(["link", "show", &self.host_link])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn live_shim_sockets(&self) -> Vec<&PathBuf> {
        self.shim_sockets.iter().filter(|s| s.exists()).collect()
    }

    /// What a node running a pod has, so that `assert_gone` cannot pass vacuously.
    fn assert_present(&self) {
        assert!(
            self.netns.exists(),
            "{} exists while the node runs",
            self.netns.display()
        );
        assert!(
            self.link_exists(),
            "the root end of the veth, {}, exists",
            self.host_link
        );
        assert!(
            !self.mounts().is_empty(),
            "the node has mounts under {}",
            self.dir.display()
        );
        assert!(!self.processes().is_empty(), "the node has processes");
        // One shim per pod, addressed by its sandbox's id; its containers have no socket of their own.
        assert!(
            !self.live_shim_sockets().is_empty(),
            "a shim socket among {:?}",
            self.shim_sockets
        );
        assert!(
            self.cni_results().len() >= 2,
            "libcni cached the pod's results: {:?}",
            self.cni_results()
        );
        assert!(!self.log_links().is_empty(), "the kubelet linked its pod's log");
        if Path::new("/sys/fs/cgroup/pids").is_dir() {
            assert!(self.cgroup.exists(), "{} exists", self.cgroup.display());
        }
    }

    fn gone(&self) -> bool {
        !self.netns.exists() && !self.dir.exists()
    }

    fn assert_gone(&self) {
        self.assert_index_gone();
        self.assert_dir_gone();
    }

    /// What is named by the node's index (tke-rnN), which a later node may take again.
    fn assert_index_gone(&self) {
        assert!(!self.netns.exists(), "{} is gone", self.netns.display());
        assert!(!self.link_exists(), "{} is gone", self.host_link);
        assert!(!self.cgroup.exists(), "{} is gone", self.cgroup.display());
    }

    /// What is named by the node's directory.
    fn assert_dir_gone(&self) {
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left");
        assert_eq!(self.processes(), Vec::<String>::new(), "processes left");
        assert!(!self.dir.exists(), "{} is gone", self.dir.display());
        assert_eq!(
            self.live_shim_sockets(),
            Vec::<&PathBuf>::new(),
            "shim sockets left"
        );
        assert_eq!(self.cni_results(), Vec::<String>::new(), "CNI results left");
        assert_eq!(self.log_links(), Vec::<PathBuf>::new(), "pod log links left");
    }
}

/// Starts a real node on `cp` running one web pod, and waits until the pod is Ready.
async fn node_with_a_pod(cp: &ControlPlane, prefix: &str) -> anyhow::Result<RealNode> {
    let ns = cp.namespace(prefix).await?;
    let node = cp.add_real_node(&format!("{prefix}-{}", random_suffix())).await?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    pods.create(&PostParams::default(), &web_pod("web", &node)?)
        .await?;
    wait::for_objects(
        pods,
        watcher::Config::default().fields("metadata.name=web"),
        WAIT,
        "the web pod Ready",
        |p| p.len() == 1 && ready(&p[0]),
    )
    .await?;
    Ok(node)
}

#[tokio::test]
async fn a_dropped_real_node_leaves_nothing_on_the_host() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared().await?;
    let sysctls = host_sysctls_without_real_nodes();
    let node = node_with_a_pod(&cp, "rn-drop").await?;
    eprintln!(
        "[real_node] host sysctls {sysctls:?} before, {:?} with a kubelet",
        sysctl_values()
    );
    let footprint = Footprint::of(node.dir(), &node.netns, &node.name)?;
    footprint.assert_present();

    drop(node);

    footprint.assert_gone();
    assert_sysctls_restored(sysctls);
    Ok(())
}

/// Where the process that `a_real_node_is_cleaned_up_after_its_test_process_is_killed` starts
/// reports its node.
const REPORT_ENV: &str = "TKE_REAL_NODE_REPORT";

/// Not a test on its own: the process that the SIGKILL test starts and kills. It starts a control
/// plane and a real node running a pod, reports the node, and waits to be killed.
#[tokio::test]
#[ignore = "started by a_real_node_is_cleaned_up_after_its_test_process_is_killed"]
async fn real_node_until_killed() -> anyhow::Result<()> {
    let Some(report) = std::env::var_os(REPORT_ENV) else {
        return Ok(());
    };
    let cp = ControlPlane::start(Options::default()).await?;
    let node = node_with_a_pod(&cp, "rn-kill").await?;
    let line = format!("{}\n{}\n{}\n", node.dir().display(), node.netns, node.name);
    std::fs::write(format!("{}.tmp", report.to_string_lossy()), line)?;
    std::fs::rename(format!("{}.tmp", report.to_string_lossy()), &report)?;
    std::future::pending::<()>().await;
    Ok(())
}

/// A test process (this binary, running `real_node_until_killed`) with a real node running a pod.
struct ChildWithANode {
    child: std::process::Child,
    report: PathBuf,
    footprint: Footprint,
}

impl ChildWithANode {
    async fn start() -> anyhow::Result<Self> {
        let report = std::env::temp_dir().join(format!("tke-real-node-{}", random_suffix()));
        let log = std::fs::File::create(report.with_extension("log"))?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["--ignored", "--exact", "real_node_until_killed", "--nocapture"])
            .env(REPORT_ENV, &report)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let started = wait::until(WAIT, "the child's real node running a pod", || {
            let ready = report.exists();
            async move { ready }
        })
        .await;
        if let Err(e) = started {
            let _ = child.kill();
            let output = std::fs::read_to_string(report.with_extension("log")).unwrap_or_default();
            anyhow::bail!("{e}; the child said:\n{output}");
        }
        let text = std::fs::read_to_string(&report)?;
        let [dir, netns, name] = text.lines().collect::<Vec<_>>()[..] else {
            anyhow::bail!("bad report {text:?}");
        };
        let footprint = Footprint::of(Path::new(dir), netns, name)?;
        Ok(Self {
            child,
            report,
            footprint,
        })
    }

    /// SIGKILL: no destructor runs.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The child's watchdog: `sh -c SCRIPT tke-testbed-watchdog <owner pid> <run dir>`.
    fn watchdog_pid(&self) -> Option<u32> {
        let owner = self.child.id().to_string();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_it =
                args.get(3) == Some(&&b"tke-testbed-watchdog"[..]) && args.get(4) == Some(&owner.as_bytes());
            if is_it {
                e.file_name().to_str()?.parse().ok()
            } else {
                None
            }
        })
    }
}

impl Drop for ChildWithANode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A child whose watchdog was killed too leaves its control plane running: stop it here
        // (the real node is host.sh's business, and tested).
        if let Some(run_dir) = self.footprint.dir.parent()
            && let Ok(pids) = std::fs::read_to_string(run_dir.join("pids"))
        {
            for pid in pids.lines() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*run_dir.to_string_lossy()) {
                    let _ = std::process::Command::new("kill").args(["-9", pid]).status();
                }
            }
            if self.watchdog_pid().is_none() {
                let _ = std::fs::remove_dir_all(run_dir);
            }
        }
        let _ = std::fs::remove_file(&self.report);
        let _ = std::fs::remove_file(self.report.with_extension("log"));
    }
}

#[tokio::test]
async fn a_real_node_is_cleaned_up_after_its_test_process_is_killed() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let sysctls = host_sysctls_without_real_nodes();
    let mut child = ChildWithANode::start().await?;
    let footprint = &child.footprint;
    footprint.assert_present();

    child.kill()?; // the watchdog cleans up
    let killed = Instant::now();
    let footprint = &child.footprint;
    wait::until(WAIT, "the watchdog's clean-up", || {
        let gone = footprint.gone();
        async move { gone }
    })
    .await?;
    eprintln!(
        "[real_node] cleaned up {:.2}s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );

    footprint.assert_gone();
    assert_sysctls_restored(sysctls);
    Ok(())
}

#[tokio::test]
async fn a_real_node_left_behind_by_a_killed_process_and_watchdog_is_reaped_by_the_next_node()
-> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let sysctls = host_sysctls_without_real_nodes();
    let mut child = ChildWithANode::start().await?;
    child.footprint.assert_present();
    // What ending a whole session does: the watchdog dies with the test process.
    let watchdog = child
        .watchdog_pid()
        .ok_or_else(|| anyhow::anyhow!("the child's watchdog is not running"))?;
    std::process::Command::new("kill")
        .args(["-9", &watchdog.to_string()])
        .status()?;
    child.kill()?;
    // Nobody cleaned up: the node is all there (its kubelet and containerd still run).
    child.footprint.assert_present();

    let cp = ControlPlane::shared().await?;
    let begun = Instant::now();
    let next = cp.add_real_node(&format!("rn-next-{}", random_suffix())).await?;
    eprintln!(
        "[real_node] reaped the stale node and started {} in {:.2}s",
        next.name,
        begun.elapsed().as_secs_f64()
    );
    child.footprint.assert_dir_gone();
    if next.netns.as_str() == child.footprint.host_link.trim_end_matches('h') {
        // The next node took the same index: `ip netns add` succeeded, so the old one was gone.
        eprintln!("[real_node] {} reaped and taken again", next.netns);
    } else {
        child.footprint.assert_index_gone();
    }
    drop(next);
    assert_sysctls_restored(sysctls);
    Ok(())
}

/// The binary the image is made of: tke-resilience when there is one (see
/// `images::built_tke_resilience`), else this package's `tke-image`, a Rust binary of the same
/// toolchain and linking.
fn image_binary() -> PathBuf {
    images::built_tke_resilience().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tke-image")))
}

#[tokio::test]
async fn our_image_runs_on_a_real_node_as_a_non_root_user() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared().await?;
    let ns = cp.namespace("rn-image").await?;
    let node = cp.add_real_node(&format!("rn-image-{}", random_suffix())).await?;
    let binary = image_binary();
    let name = "tke-testbed.local/tke-resilience:test";
    let image = images::tke_resilience(
        &binary,
        &images::shared_libraries(&binary)?,
        name,
        &node.dir().join("images/tke-resilience.tar"),
    )?;
    let begun = Instant::now();
    node.import(&image)?;
    eprintln!(
        "[real_node] {} ({}) imported in {:.2}s",
        binary.display(),
        image.digest,
        begun.elapsed().as_secs_f64()
    );

    // runAsNonRoot: the kubelet refuses to start a container whose image runs as root.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ours"},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true},
            "containers": [{
                "name": "ours",
                "image": name,
                "imagePullPolicy": "Never",
                "args": ["--help"],
            }],
        }
    }))?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
    pods.create(&PostParams::default(), &pod).await?;
    let done = wait::for_objects(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=ours"),
        WAIT,
        "our pod finished",
        |p| {
            p.len() == 1
                && matches!(
                    p[0].status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        },
    )
    .await?;
    let status = done[0].status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{status:?}");
    let logs = pods.logs("ours", &LogParams::default()).await?;
    assert!(logs.to_lowercase().contains("usage"), "logs: {logs:?}");
    Ok(())
}
