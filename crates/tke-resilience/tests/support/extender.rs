//! Starting `tke-resilience scheduler-extender` for end-to-end tests, and the tke-scheduler that
//! calls it: a control plane whose second kube-scheduler runs `deploy/tke-scheduler.yaml`, the
//! one copy of that configuration.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use tke_testbed::{ControlPlane, NodeSpec, Options, Proc, components};

use super::{
    PATIENCE,
    admission::{VirtualNode, http_get},
    eklet::start_cloudsim,
};

/// The scheduler name pods select to be placed by tke-scheduler.
pub const SCHEDULER_NAME: &str = "tke-scheduler";

/// `deploy/tke-scheduler.yaml`.
pub fn scheduler_config_path() -> PathBuf {
    components::scheduler_config_path()
}

/// The scheduler configuration with `${EXTENDER_URL}` filled in; the test bed fills `${KUBECONFIG}`.
pub fn scheduler_config(extender_url: &str) -> anyhow::Result<String> {
    Ok(components::scheduler_config(extender_url)?)
}

/// A control plane running tke-scheduler next to the default scheduler, with `nodes` as local
/// nodes, and the address its extender must listen on (start it with [`Extender::start`]).
pub async fn control_plane(nodes: Vec<NodeSpec>) -> anyhow::Result<(ControlPlane, SocketAddr)> {
    let [port] = tke_testbed::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = scheduler_config(&format!("http://{addr}"))?;
    let cp = ControlPlane::start(Options {
        second_scheduler_config: Some(config),
        nodes,
        ..Options::default()
    })
    .await?;
    Ok((cp, addr))
}

/// Like [`control_plane`], but the default scheduler runs tke-scheduler's own configuration
/// without the extender ([`plain_scheduler_config`]), so a benchmark comparing the two measures
/// the extender and nothing else.
pub async fn control_plane_for_comparison(
    nodes: Vec<NodeSpec>,
) -> anyhow::Result<(ControlPlane, SocketAddr)> {
    let [port] = tke_testbed::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = scheduler_config(&format!("http://{addr}"))?;
    let plain = plain_scheduler_config(&config)?;
    let cp = ControlPlane::start(Options {
        second_scheduler_config: Some(config),
        default_scheduler_config: Some(plain),
        nodes,
    })
    .await?;
    Ok((cp, addr))
}

/// tke-scheduler's configuration as the cluster's default scheduler without the extender: the
/// same client rate, backoff and leader election, under the default scheduler's profile and lease
/// names, and no `extenders:` section.
pub fn plain_scheduler_config(tke: &str) -> anyhow::Result<String> {
    let (before, _extenders) = tke
        .split_once("\nextenders:")
        .ok_or_else(|| anyhow::anyhow!("tke-scheduler's configuration has no `extenders:` section"))?;
    let mut plain = format!("{before}\n");
    for (from, to) in [
        ("resourceName: tke-scheduler", "resourceName: kube-scheduler"),
        (
            &format!("- schedulerName: {SCHEDULER_NAME}") as &str,
            "- schedulerName: default-scheduler",
        ),
    ] {
        anyhow::ensure!(
            plain.matches(from).count() == 1,
            "tke-scheduler's configuration must hold `{from}` once"
        );
        plain = plain.replace(from, to);
    }
    Ok(plain)
}

/// A running `tke-resilience scheduler-extender`.
pub struct Extender {
    proc: Proc,
    pub addr: SocketAddr,
}

impl Extender {
    /// Starts the extender on `addr` against `cp` and waits until its caches are listed.
    pub async fn start(cp: &ControlPlane, addr: SocketAddr, extra_args: &[&str]) -> anyhow::Result<Extender> {
        let launcher = components::Extender::new(&super::binary(), addr)
            .args(extra_args.iter().copied())
            .env("RUST_LOG", "info");
        let mut proc = launcher.spawn(cp)?;
        components::wait_http(std::slice::from_mut(&mut proc), &launcher.ready_url(), PATIENCE).await?;
        Ok(Extender { proc, addr })
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        http_get(self.addr, "/metrics").await
    }

    /// The extender's log so far, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

/// A runtime that outlives every test of the binary, for the in-process servers (cloudsim) of a
/// stack that tests share while each test has a runtime of its own.
pub fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("the background runtime cannot start: {error}"))
    })
}

/// A virtual node (eklet on cloudsim) that stays up for the whole test binary.
pub async fn shared_virtual_node(cp: &ControlPlane) -> anyhow::Result<VirtualNode> {
    let cloud = background().spawn(start_cloudsim(|_| {})).await??;
    VirtualNode::on(cp, cloud).await
}

/// Pods bound to a node for which `is_local` holds, and to any other node.
pub fn split_by_node(pods: &[Arc<Pod>], is_local: impl Fn(&str) -> bool) -> (usize, usize) {
    let nodes: Vec<&str> = pods
        .iter()
        .filter_map(|pod| super::admission::node_of(pod))
        .collect();
    let local = nodes.iter().filter(|node| is_local(node)).count();
    (local, nodes.len() - local)
}
