//! tke-scheduler with the global switch off (`AUTO_SCALE_EKS: "false"` in kube-system/eks-config),
//! in a control plane of its own since the switch is cluster-wide: pods beyond LOCAL_REPLICAS
//! stay local or pending, per the seed's table, unless the workload itself says `true`.

mod support;

use std::sync::Arc;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::PostParams};
use serde_json::json;
use support::{
    admission::{self, Admission, VirtualNode},
    extender::{self, Extender},
};
use tke_testbed::{ControlPlane, NodeSpec, random_suffix};
use tokio::sync::OnceCell;

const GROUP: &str = "testbed.tke.io/group";

struct Stack {
    cp: ControlPlane,
    _extender: Extender,
    _admission: Admission,
    virtual_node: String,
    _cloud: VirtualNode,
}

static STACK: OnceCell<Arc<Stack>> = OnceCell::const_new();

async fn stack() -> anyhow::Result<Arc<Stack>> {
    STACK
        .get_or_try_init(|| async {
            let (cp, addr) = extender::control_plane(Vec::new()).await?;
            let client = cp.client().await?;
            // Before the components start, so that their first list already has it.
            admission::set_global_switch(&client, "false").await?;
            let extender = Extender::start(&cp, addr, &[]).await?;
            let admission = Admission::start(&cp, &[]).await?;
            admission.wait_for_global_switch("false").await?;
            let cloud = extender::shared_virtual_node(&cp).await?;
            let virtual_node = cloud.name.clone();
            Ok::<_, anyhow::Error>(Arc::new(Stack {
                cp,
                _extender: extender,
                _admission: admission,
                virtual_node,
                _cloud: cloud,
            }))
        })
        .await
        .cloned()
}

/// A Deployment for tke-scheduler, allowed onto `group`'s nodes and any virtual node.
fn workload(replicas: i32, group: &str, annotations: &[(&str, &str)]) -> anyhow::Result<Deployment> {
    let mut deployment = admission::deployment("web", replicas, annotations, json!({}))?;
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": GROUP, "operator": "In", "values": [group]}]},
        {"matchExpressions": [{"key": tke_policy::virtual_node::INSTANCE_TYPE_LABEL, "operator": "In",
                               "values": [tke_policy::virtual_node::INSTANCE_TYPE]}]},
    ]}}});
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut())
    {
        spec.scheduler_name = Some(extender::SCHEDULER_NAME.to_owned());
        spec.affinity = Some(serde_json::from_value(affinity)?);
    }
    Ok(deployment)
}

fn running(pods: &[Arc<Pod>]) -> usize {
    pods.iter().filter(|pod| admission::is_running(pod)).count()
}

#[tokio::test]
async fn with_the_global_switch_off_pods_beyond_local_replicas_stay_local_and_then_pending()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let client = stack.cp.client().await?;
    let ns = stack.cp.namespace("off").await?;
    let group = format!("off-{}", random_suffix());
    // Room for two of the 100m pods.
    stack
        .cp
        .add_nodes(&[NodeSpec::new(format!("{group}-1"))
            .cpu("250m")
            .label(GROUP, &group)])
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &workload(3, &group, &[("LOCAL_REPLICAS", "1")])?,
        )
        .await?;
    let pods = admission::wait_for_pods(&client, &ns, "web", "2 Running, 1 Unschedulable", |pods| {
        running(pods) == 2 && pods.iter().any(|pod| admission::is_unschedulable(pod))
    })
    .await?;
    let (local, cloud) = extender::split_by_node(&pods, |node| node.starts_with(&group));
    assert_eq!(
        (local, cloud),
        (2, 0),
        "LOCAL_REPLICAS has no effect while bursting is off"
    );
    let waiting = pods
        .iter()
        .find(|pod| admission::is_unschedulable(pod))
        .and_then(|pod| pod.metadata.uid.clone());
    let event = admission::wait_for_event(
        &client,
        &ns,
        &waiting.clone().unwrap_or_default(),
        "BurstDisabled",
    )
    .await?;
    assert!(
        event
            .message
            .is_some_and(|message| message.contains("AUTO_SCALE_EKS")),
        "the toleration controller says why the pod waits"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods.list(&Default::default()).await?;
    let pending = list.items.iter().find(|pod| pod.metadata.uid == waiting);
    assert!(
        pending
            .is_some_and(|pod| admission::burst_tolerations(pod) == 0 && admission::node_of(pod).is_none())
    );
    assert!(
        list.items
            .iter()
            .all(|pod| admission::node_of(pod) != Some(stack.virtual_node.as_str()))
    );
    Ok(())
}

#[tokio::test]
async fn with_the_global_switch_off_a_workload_that_says_true_still_bursts_beyond_local_replicas()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let client = stack.cp.client().await?;
    let ns = stack.cp.namespace("on").await?;
    let group = format!("on-{}", random_suffix());
    stack
        .cp
        .add_nodes(&[NodeSpec::new(format!("{group}-1")).label(GROUP, &group)])
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let annotations = [("LOCAL_REPLICAS", "1"), ("AUTO_SCALE_EKS", "true")];
    deployments
        .create(&PostParams::default(), &workload(3, &group, &annotations)?)
        .await?;
    let pods =
        admission::wait_for_pods(&client, &ns, "web", "3 Running pods", |pods| running(pods) == 3).await?;
    assert_eq!(
        extender::split_by_node(&pods, |node| node.starts_with(&group)),
        (1, 2)
    );
    assert!(
        pods.iter()
            .filter(|pod| !admission::node_of(pod).is_some_and(|n| n.starts_with(&group)))
            .all(|pod| { admission::node_of(pod) == Some(stack.virtual_node.as_str()) })
    );
    Ok(())
}
