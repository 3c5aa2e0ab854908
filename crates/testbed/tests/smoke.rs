//! The test bed itself, end to end: a Deployment on kwok nodes through the real apiserver, controller
//! manager and scheduler.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use tke_testbed::{ControlPlane, NodeSpec, random_suffix, wait};

const WAIT: Duration = Duration::from_secs(120);

fn running(pods: &[std::sync::Arc<Pod>]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
}

#[tokio::test]
async fn a_deployment_runs_scales_down_and_goes_away_on_kwok_nodes() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("smoke").await?;

    // Two local nodes only this test's pods select, so other tests sharing the control plane do not
    // disturb the placement.
    let group = format!("smoke-{}", random_suffix());
    let nodes: Vec<NodeSpec> = (1..=2)
        .map(|i| NodeSpec::new(format!("{group}-{i}")).label("testbed.tke.io/group", &group))
        .collect();
    cp.add_nodes(&nodes).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"testbed.tke.io/group": group},
                    "containers": [{"name": "web", "image": "nginx:1.27",
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]
                }
            }
        }
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = watcher::Config::default().labels("app=web");
    let up = wait::for_objects(pods.clone(), selector.clone(), WAIT, "3 Running pods", |p| {
        running(p) == 3
    })
    .await?;
    for pod in &up {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with(&group),
            "pod {:?} landed on {node}, not on this test's nodes",
            pod.metadata.name
        );
    }

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    let after_scale = wait::for_objects(pods.clone(), selector.clone(), WAIT, "exactly 1 pod left", |p| {
        p.len() == 1
    })
    .await?;
    assert_eq!(running(&after_scale), 1, "the one pod left is Running");

    deployments.delete("web", &DeleteParams::background()).await?;
    wait::for_objects(pods, selector, WAIT, "no pods left", |p| p.is_empty()).await?;
    Ok(())
}

#[tokio::test]
async fn the_server_reports_the_pinned_kubernetes_version() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let info = cp.client().await?.apiserver_version().await?;
    let pinned = std::fs::read_to_string(tke_testbed::workspace_root().join("tools/versions.env"))?
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION=").map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("K8S_VERSION missing from tools/versions.env"))?;
    assert_eq!(info.git_version, pinned);

    // kubectl, built from the same module, agrees.
    let out = std::process::Command::new(cp.bin("kubectl"))
        .args([
            "--kubeconfig",
            &cp.kubeconfig().display().to_string(),
            "version",
            "-o",
            "json",
        ])
        .output()?;
    let version: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(version["serverVersion"]["gitVersion"], pinned.as_str());
    Ok(())
}
