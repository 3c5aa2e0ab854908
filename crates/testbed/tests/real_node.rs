//! Real nodes in the test bed: a kubelet with containerd and runc in a network namespace of its own
//! runs real containers from images built without a registry; the apiserver reaches it for logs;
//! the test reaches its pods at their IPs, which are inside that namespace; and nothing of it is
//! left on the host after it is dropped.
//!
//! These tests need root, cgroups and network namespaces. Without them they fail under `CI=true`
//! and are skipped (saying why) elsewhere.

use std::{net::Ipv4Addr, path::Path, time::Duration, time::Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, LogParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use tke_testbed::{ControlPlane, RealNode, images, random_suffix, realnode, wait};

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
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("realnode").await?;
    let suffix = random_suffix();
    let (name_a, name_b) = (format!("rn-a-{suffix}"), format!("rn-b-{suffix}"));
    let (a, b) = tokio::try_join!(cp.add_real_node(&name_a), cp.add_real_node(&name_b))?;
    for node in [&a, &b] {
        eprintln!(
            "[real_node] {} Ready {:.2}s after start; kubelet + containerd RSS {} MiB",
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

/// Shim sockets of a node's sandboxes and containers: /run/containerd/s/sha256(<address>/k8s.io/<id>).
fn shim_sockets(node_dir: &Path) -> Vec<std::path::PathBuf> {
    use sha2::{Digest, Sha256};
    let address = node_dir.join("containerd/containerd.sock");
    let tasks = node_dir.join("containerd/state/io.containerd.runtime.v2.task/k8s.io");
    std::fs::read_dir(tasks)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let key = format!("{}/k8s.io/{}", address.display(), e.file_name().to_string_lossy());
            Path::new("/run/containerd/s").join(hex::encode(Sha256::digest(key.as_bytes())))
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix) || *m == prefix.trim_end_matches('/'))
        .map(str::to_owned)
        .collect()
}

fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
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

#[tokio::test]
async fn a_dropped_real_node_leaves_nothing_on_the_host() -> anyhow::Result<()> {
    if !realnode::available_or_skip() {
        return Ok(());
    }
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("realnode-drop").await?;
    let node = cp.add_real_node(&format!("rn-drop-{}", random_suffix())).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &web_pod("web", &node)?)
        .await?;
    wait::for_objects(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=web"),
        WAIT,
        "the web pod Ready",
        |p| p.len() == 1 && ready(&p[0]),
    )
    .await?;

    // What a running node has on the host, so that the checks below cannot pass vacuously.
    let dir = node.dir().to_owned();
    let netns = Path::new("/run/netns").join(&node.netns);
    let host_link = format!("{}h", node.netns);
    let cgroup = Path::new("/sys/fs/cgroup/pids").join(&node.netns);
    let our_network = format!("tke-{}-", node.name);
    let sockets = shim_sockets(&dir);
    assert!(netns.exists(), "{} exists while the node runs", netns.display());
    assert!(
        !mounts_under(&dir).is_empty(),
        "the node has mounts under {}",
        dir.display()
    );
    assert!(!processes_naming(&dir).is_empty(), "the node has processes");
    // One shim per pod, addressed by its sandbox's id; its containers have no socket of their own.
    assert!(
        sockets.iter().any(|s| s.exists()),
        "a shim socket among {sockets:?}; there are {:?}",
        std::fs::read_dir("/run/containerd/s").map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    let sandboxes: Vec<String> =
        std::fs::read_dir(dir.join("containerd/state/io.containerd.grpc.v1.cri/sandboxes"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    // libcni's cache: <network>-<sandbox id>-<ifname>, for our network and containerd's loopback.
    let cni_results = || -> Vec<String> {
        std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(&our_network) || sandboxes.iter().any(|id| f.contains(id.as_str())))
            .collect()
    };
    assert!(
        cni_results().len() >= 2,
        "libcni cached the pod's results: {:?}",
        cni_results()
    );
    let link_exists = |name: &str| {
        std::process::Command::new("ip")
            .args(["link", "show", name])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(link_exists(&host_link), "the root end of the veth exists");

    drop(node);

    assert!(!netns.exists(), "{} is gone", netns.display());
    assert!(!link_exists(&host_link), "{host_link} is gone");
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
    assert_eq!(processes_naming(&dir), Vec::<String>::new(), "processes left");
    assert!(!dir.exists(), "{} is gone", dir.display());
    let left: Vec<_> = sockets.iter().filter(|s| s.exists()).collect();
    assert!(left.is_empty(), "shim sockets left: {left:?}");
    assert_eq!(cni_results(), Vec::<String>::new(), "CNI results left");
    if Path::new("/sys/fs/cgroup/pids").is_dir() {
        assert!(!cgroup.exists(), "{} is gone", cgroup.display());
    }
    Ok(())
}
