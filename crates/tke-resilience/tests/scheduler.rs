//! tke-scheduler end to end: the upstream kube-scheduler with the `tke-scheduler` profile and our
//! extender, the toleration controller, and a virtual node, on a real control plane.

mod support;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    admission::{self, Admission, VirtualNode, scale},
    extender::{self, Extender},
};
use tke_testbed::{ControlPlane, NodeSpec, random_suffix};
use tokio::sync::OnceCell;

/// The label that ties a test's local nodes to its pods, so tests sharing the stack do not
/// take each other's local capacity.
const GROUP: &str = "testbed.tke.io/group";

/// What every test here runs against: tke-scheduler, its extender and a virtual node (eklet on
/// cloudsim).
struct Stack {
    cp: ControlPlane,
    extender: Extender,
    virtual_node: String,
    admission: OnceCell<Admission>,
    _cloud: VirtualNode,
}

static STACK: OnceCell<Arc<Stack>> = OnceCell::const_new();

async fn stack() -> anyhow::Result<Arc<Stack>> {
    STACK
        .get_or_try_init(|| async {
            let (cp, addr) = extender::control_plane(Vec::new()).await?;
            let extender = Extender::start(&cp, addr, &[]).await?;
            let cloud = extender::shared_virtual_node(&cp).await?;
            let virtual_node = cloud.name.clone();
            Ok::<_, anyhow::Error>(Arc::new(Stack {
                cp,
                extender,
                virtual_node,
                admission: OnceCell::new(),
                _cloud: cloud,
            }))
        })
        .await
        .cloned()
}

impl Stack {
    /// The toleration controller, started by the first test that needs it.
    async fn admission(&self) -> anyhow::Result<&Admission> {
        self.admission
            .get_or_try_init(|| Admission::start(&self.cp, &[]))
            .await
    }
}

/// A namespace and `count` local nodes of its own (4 CPUs each) for one test.
async fn local_nodes(stack: &Stack, prefix: &str, count: usize) -> anyhow::Result<(Client, String, String)> {
    let client = stack.cp.client().await?;
    let ns = stack.cp.namespace(prefix).await?;
    let group = format!("{prefix}-{}", random_suffix());
    let nodes: Vec<NodeSpec> = (1..=count)
        .map(|i| NodeSpec::new(format!("{group}-{i}")).label(GROUP, &group))
        .collect();
    stack.cp.add_nodes(&nodes).await?;
    Ok((client, ns, group))
}

/// The seed's nginx Deployment for tke-scheduler, allowed onto this test's local nodes and any
/// virtual node.
fn workload(
    name: &str,
    replicas: i32,
    group: &str,
    annotations: &[(&str, &str)],
) -> anyhow::Result<Deployment> {
    let mut deployment = admission::deployment(name, replicas, annotations, json!({}))?;
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

fn running(pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    pods.iter()
        .filter(|pod| admission::is_running(pod))
        .cloned()
        .collect()
}

/// The seed's walkthrough: nginx, 4 replicas, `LOCAL_REPLICAS: "1"`, `AUTO_SCALE_EKS: "true"`,
/// `schedulerName: tke-scheduler`; then `kubectl scale --replicas=3`.
#[tokio::test]
async fn the_seeds_walkthrough_runs_one_pod_locally_three_in_the_cloud_and_scales_in_from_the_cloud()
-> anyhow::Result<()> {
    let stack = stack().await?;
    stack.admission().await?;
    let (client, ns, group) = local_nodes(&stack, "walkthrough", 2).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let annotations = [("LOCAL_REPLICAS", "1"), ("AUTO_SCALE_EKS", "true")];
    deployments
        .create(
            &PostParams::default(),
            &workload("nginx", 4, &group, &annotations)?,
        )
        .await?;
    let on_virtual = |pod: &Arc<Pod>| admission::node_of(pod) == Some(stack.virtual_node.as_str());
    let priced = |pod: &Arc<Pod>| {
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("controller.kubernetes.io/pod-deletion-cost"))
    };
    // eklet marks its pods cheaper to delete once they run; scale in only after it has.
    let pods = admission::wait_for_pods(
        &client,
        &ns,
        "nginx",
        "4 Running pods, the cloud ones priced",
        |pods| running(pods).len() == 4 && pods.iter().filter(|pod| on_virtual(pod)).all(priced),
    )
    .await?;
    let local: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|pod| admission::node_of(pod).is_some_and(|n| n.starts_with(&group)))
        .collect();
    assert_eq!(local.len(), 1, "one pod on a local node");
    assert_eq!(
        pods.iter().filter(|pod| on_virtual(pod)).count(),
        3,
        "three on {}",
        stack.virtual_node
    );
    let local_uid = local.first().and_then(|pod| pod.metadata.uid.clone());

    for (replicas, cloud) in [(3, 2), (1, 0)] {
        scale(&client, &ns, "nginx", replicas).await?;
        let after = admission::wait_for_pods(
            &client,
            &ns,
            "nginx",
            &format!("{replicas} pods left, all Running"),
            |pods| pods.len() == replicas as usize && running(pods).len() == replicas as usize,
        )
        .await?;
        assert!(
            after.iter().any(|pod| pod.metadata.uid == local_uid),
            "scaled to {replicas}: the local pod is kept, cloud pods are removed first"
        );
        assert_eq!(
            after.iter().filter(|pod| on_virtual(pod)).count(),
            cloud,
            "scaled to {replicas}: cloud pods left"
        );
    }
    Ok(())
}

/// Scales a Deployment from 0 to 100 and back three times; each time exactly `LOCAL_REPLICAS`
/// pods must be on local nodes, though the local nodes could take all 100.
async fn scale_up_three_times(
    stack: &Stack,
    deployment: Deployment,
    client: Client,
    ns: String,
    group: String,
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await?;

    for round in 1..=3 {
        scale(&client, &ns, "web", 100).await?;
        let pods = admission::wait_for_pods(&client, &ns, "web", "100 Running pods", |pods| {
            running(pods).len() == 100
        })
        .await?;
        let (local, cloud) = extender::split_by_node(&running(&pods), |node| node.starts_with(&group));
        assert_eq!((local, cloud), (10, 90), "round {round}: local and cloud pods");
        assert!(
            running(&pods).iter().all(|pod| admission::node_of(pod)
                .is_some_and(|n| n.starts_with(&group) || n == stack.virtual_node)),
            "round {round}: every pod is on this test's local nodes or the virtual node"
        );
        scale(&client, &ns, "web", 0).await?;
        admission::wait_for_pods(&client, &ns, "web", "no pods left", |pods| pods.is_empty()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn scaling_from_0_to_100_keeps_exactly_local_replicas_local_every_time() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.admission().await?;
    let (client, ns, group) = local_nodes(&stack, "concurrency", 2).await?;
    let annotations = [("LOCAL_REPLICAS", "10"), ("AUTO_SCALE_EKS", "true")];
    scale_up_three_times(
        &stack,
        workload("web", 0, &group, &annotations)?,
        client,
        ns,
        group,
    )
    .await
}

/// The same without the toleration controller's round trip: pods whose template already
/// tolerates the virtual node are kept off it by the extender alone.
#[tokio::test]
async fn pods_that_already_tolerate_the_virtual_node_still_keep_exactly_local_replicas_local()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let (client, ns, group) = local_nodes(&stack, "tolerating", 2).await?;
    let mut deployment = workload("web", 0, &group, &[("LOCAL_REPLICAS", "10")])?;
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut())
    {
        spec.tolerations = Some(vec![tke_policy::burst_toleration()]);
    }
    scale_up_three_times(&stack, deployment, client, ns, group).await
}

/// kubernetes#122019: a pod the extender refused used to wait up to 5 minutes in the
/// unschedulable pool. Here it must get the toleration and be scheduled on the first update.
#[tokio::test]
async fn a_pod_refused_by_the_extender_gets_the_toleration_and_lands_on_the_virtual_node_within_a_minute()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let admission = stack.admission().await?;
    let (client, ns, group) = local_nodes(&stack, "requeue", 1).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let annotations = [("LOCAL_REPLICAS", "1")];
    deployments
        .create(&PostParams::default(), &workload("web", 1, &group, &annotations)?)
        .await?;
    admission::wait_for_pods(&client, &ns, "web", "the local pod Running", |pods| {
        running(pods).len() == 1
    })
    .await?;

    let started = tokio::time::Instant::now();
    scale(&client, &ns, "web", 2).await?;
    let bound = tokio::time::timeout(
        Duration::from_secs(60),
        admission::wait_for_pods(
            &client,
            &ns,
            "web",
            "the second pod on the virtual node",
            |pods| {
                pods.iter()
                    .any(|pod| admission::node_of(pod) == Some(stack.virtual_node.as_str()))
            },
        ),
    )
    .await;
    let elapsed = started.elapsed();
    let pods = match bound {
        Ok(pods) => pods?,
        Err(_) => anyhow::bail!(
            "the refused pod was not scheduled within 60 s; extender log:\n{}\nadmission log:\n{}",
            stack.extender.log_tail(20),
            admission.log_tail(20)
        ),
    };
    eprintln!(
        "[measured] refused pod scheduled on the virtual node {:.2}s after the scale-up",
        elapsed.as_secs_f64()
    );
    let cloud = pods
        .iter()
        .find(|pod| admission::node_of(pod) == Some(stack.virtual_node.as_str()));
    assert!(
        cloud.is_some_and(|pod| admission::burst_tolerations(pod) == 1),
        "it carries the toleration"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_below_local_replicas_bursts_when_the_local_nodes_are_full() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.admission().await?;
    let client = stack.cp.client().await?;
    let ns = stack.cp.namespace("full").await?;
    let group = format!("full-{}", random_suffix());
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
            &workload("web", 4, &group, &[("LOCAL_REPLICAS", "5")])?,
        )
        .await?;
    let pods = admission::wait_for_pods(&client, &ns, "web", "4 Running pods", |pods| {
        running(pods).len() == 4
    })
    .await?;
    let (local, cloud) = extender::split_by_node(&pods, |node| node.starts_with(&group));
    assert_eq!(
        (local, cloud),
        (2, 2),
        "local nodes full at 2, though LOCAL_REPLICAS is 5"
    );
    Ok(())
}

#[tokio::test]
async fn an_ineligible_pod_is_never_placed_on_the_virtual_node_even_when_it_tolerates_it()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let client = stack.cp.client().await?;
    let ns = stack.cp.namespace("ineligible").await?;
    let group = format!("ineligible-{}", random_suffix());
    // Room for one of the 100m pods.
    stack
        .cp
        .add_nodes(&[NodeSpec::new(format!("{group}-1"))
            .cpu("150m")
            .label(GROUP, &group)])
        .await?;
    let mut deployment = workload("web", 2, &group, &[("LOCAL_REPLICAS", "0")])?;
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut())
    {
        spec.tolerations = Some(vec![tke_policy::burst_toleration()]);
        if let Some(container) = spec.containers.first_mut() {
            container.ports = Some(vec![serde_json::from_value(json!({"containerPort": 62000}))?]);
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await?;
    let pods = admission::wait_for_pods(&client, &ns, "web", "one Running, one Unschedulable", |pods| {
        running(pods).len() == 1 && pods.iter().any(|pod| admission::is_unschedulable(pod))
    })
    .await?;
    assert!(
        pods.iter()
            .all(|pod| admission::node_of(pod) != Some(stack.virtual_node.as_str()))
    );
    let waiting = pods
        .iter()
        .find(|pod| admission::is_unschedulable(pod))
        .and_then(|pod| pod.metadata.uid.clone());
    let event =
        admission::wait_for_event(&client, &ns, &waiting.unwrap_or_default(), "FailedScheduling").await?;
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("this pod may not run on a virtual node: ReservedPort"),
        "the pod's FailedScheduling event says why the virtual node was refused:\n{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rolling_update_ends_with_local_replicas_local_pods_in_the_new_replica_set() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.admission().await?;
    let (client, ns, group) = local_nodes(&stack, "rolling", 2).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &workload("web", 4, &group, &[("LOCAL_REPLICAS", "2")])?,
        )
        .await?;
    let before = admission::wait_for_pods(&client, &ns, "web", "4 Running pods", |pods| {
        running(pods).len() == 4
    })
    .await?;
    assert_eq!(
        extender::split_by_node(&before, |node| node.starts_with(&group)),
        (2, 2)
    );

    let change = json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(change))
        .await?;
    let updated = |pod: &Arc<Pod>| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("rollout"))
            .map(String::as_str)
            == Some("2")
    };
    let after = admission::wait_for_pods(
        &client,
        &ns,
        "web",
        "4 Running pods of the new ReplicaSet only",
        |pods| pods.len() == 4 && running(pods).len() == 4 && pods.iter().all(updated),
    )
    .await?;
    assert_eq!(
        extender::split_by_node(&after, |node| node.starts_with(&group)),
        (2, 2),
        "new ReplicaSet: local, cloud"
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_local_replicas_is_reported_once_on_the_workload_and_pods_go_local_first()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let (client, ns, group) = local_nodes(&stack, "invalid", 1).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &workload("web", 3, &group, &[("LOCAL_REPLICAS", "abc")])?,
        )
        .await?;
    let pods = admission::wait_for_pods(&client, &ns, "web", "3 Running pods", |pods| {
        running(pods).len() == 3
    })
    .await?;
    assert_eq!(
        extender::split_by_node(&pods, |node| node.starts_with(&group)),
        (3, 0),
        "treated as unset"
    );
    let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let uid = replica_sets
        .list(&Default::default())
        .await?
        .items
        .first()
        .and_then(|rs| rs.metadata.uid.clone());
    let uid = uid.unwrap_or_default();
    let event = admission::wait_for_event(&client, &ns, &uid, "InvalidLocalReplicas").await?;
    let events = admission::events_about(&client, &ns, &uid).await?;
    assert_eq!(
        admission::occurrences(&events, "InvalidLocalReplicas"),
        1,
        "one warning for three pods"
    );
    let note = event.message.unwrap_or_default();
    assert!(note.contains("abc"), "the warning names the bad value: {note}");
    Ok(())
}
