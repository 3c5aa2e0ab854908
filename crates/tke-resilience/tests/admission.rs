//! `tke-resilience admission` end to end, with the default kube-scheduler and no tke-scheduler:
//! pods the IDC cannot hold get the virtual node's toleration when the switches and the
//! eligibility rules allow it, and otherwise wait with one event that says why.
//!
//! Each test runs its own control plane: they change the cluster-wide global switch and need
//! exact local capacity (two kwok nodes with room for two pods each). The virtual node is a real
//! eklet on cloudsim, so a pod that bursts is one that runs in the (simulated) cloud.

mod support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::admission::{
    Admission, PATIENCE, VirtualNode, burst_tolerations, deployment, events_about, is_running,
    is_unschedulable, node_of, occurrences, quantile, sample, set_global_switch, wait_for_event,
    wait_for_pods,
};
use tke_testbed::{ControlPlane, NodeSpec, Options, wait};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Two control planes at a time are what a 2-core machine runs without starving them.
static CLUSTERS: Semaphore = Semaphore::const_new(2);

/// A control plane of its own with two local nodes that hold two pods each, and a virtual node.
struct Bed {
    virtual_node: VirtualNode,
    client: Client,
    namespace: String,
    cp: ControlPlane,
    _slot: SemaphorePermit<'static>,
}

impl Bed {
    async fn start() -> anyhow::Result<Bed> {
        let slot = CLUSTERS.acquire().await?;
        let nodes = (1..=2)
            .map(|i| NodeSpec::new(format!("idc-{i}")).pods(2))
            .collect();
        let cp = ControlPlane::start(Options {
            nodes,
            ..Options::default()
        })
        .await?;
        let client = cp.client().await?;
        let namespace = cp.namespace("shop").await?;
        let virtual_node = VirtualNode::start(&cp).await?;
        Ok(Bed {
            virtual_node,
            client,
            namespace,
            cp,
            _slot: slot,
        })
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create(&self, deployment: &Deployment) -> anyhow::Result<()> {
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), deployment)
            .await?;
        Ok(())
    }

    /// Four filler pods, Running on the local nodes, which then hold no more.
    async fn fill_local_nodes(&self) -> anyhow::Result<()> {
        self.create(&deployment("filler", 4, &[], json!({}))?).await?;
        wait_for_pods(
            &self.client,
            &self.namespace,
            "filler",
            "4 filler pods Running locally",
            |pods| self.running_where(pods) == (0, 4),
        )
        .await?;
        Ok(())
    }

    fn on_virtual_node(&self, pod: &Pod) -> bool {
        node_of(pod) == Some(self.virtual_node.name.as_str())
    }

    /// Pods Running on the virtual node and on local nodes.
    fn running_where(&self, pods: &[Arc<Pod>]) -> (usize, usize) {
        let running = pods.iter().filter(|pod| is_running(pod));
        let (cloud, local): (Vec<_>, Vec<_>) = running.partition(|pod| self.on_virtual_node(pod));
        (
            cloud.len(),
            local
                .iter()
                .filter(|pod| node_of(pod).is_some_and(|node| node.starts_with("idc-")))
                .count(),
        )
    }

    async fn event(&self, namespace: &str, uid: &str, reason: &str) -> anyhow::Result<String> {
        let event = wait_for_event(&self.client, namespace, uid, reason).await?;
        Ok(event.message.unwrap_or_default())
    }
}

/// The `eks_admission_decisions_total` sample for `outcome` and `reason` in the metrics `text`.
fn decisions(text: &str, outcome: &str, reason: &str) -> Option<f64> {
    sample(
        text,
        &format!(r#"eks_admission_decisions_total{{outcome="{outcome}",reason="{reason}"}}"#),
    )
}

fn uid(pod: &Pod) -> String {
    pod.uid().unwrap_or_default()
}

#[tokio::test]
async fn pods_beyond_local_capacity_run_on_the_virtual_node() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admission = Admission::start(&bed.cp, &[]).await?;

    let scaled_up = tokio::time::Instant::now();
    bed.create(&deployment("web", 6, &[], json!({}))?).await?;
    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "4 pods Running locally, 2 on the virtual node",
        |pods| bed.running_where(pods) == (2, 4),
    )
    .await?;
    let overflow_running = scaled_up.elapsed();

    for pod in &pods {
        let expected = usize::from(bed.on_virtual_node(pod));
        assert_eq!(
            burst_tolerations(pod),
            expected,
            "only the overflow pods are tolerated: {}",
            pod.name_any()
        );
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.tolerations.clone())
            .unwrap_or_default();
        let keys: Vec<&str> = tolerations
            .iter()
            .filter_map(|toleration| toleration.key.as_deref())
            .collect();
        assert!(
            keys.contains(&"node.kubernetes.io/not-ready"),
            "the default tolerations stay: {keys:?}"
        );
        if bed.on_virtual_node(pod) {
            let note = bed
                .event(&bed.namespace, &uid(pod), "BurstTolerationAdded")
                .await?;
            assert!(note.contains("bursting is on by default"), "{note}");
            let events = events_about(&bed.client, &bed.namespace, &uid(pod)).await?;
            assert_eq!(occurrences(&events, "BurstTolerationAdded"), 1);
        }
    }

    let text = admission.metrics_text().await?;
    assert_eq!(decisions(&text, "tolerated", "DefaultOn"), Some(2.0));
    let latency = admission
        .histogram("eks_admission_toleration_latency_seconds")
        .await?;
    assert_eq!(
        latency.last().map(|bucket| bucket.1),
        Some(2.0),
        "one latency sample per toleration"
    );
    eprintln!(
        "[admission] scale-up to the 2 overflow pods Running on eklet: {:.2}s; Unschedulable-to-toleration p50 {:.2}s p99 {:.2}s",
        overflow_running.as_secs_f64(),
        quantile(&latency, 0.5).unwrap_or(f64::NAN),
        quantile(&latency, 0.99).unwrap_or(f64::NAN),
    );
    Ok(())
}

#[tokio::test]
async fn forty_six_overflow_pods_at_once_are_each_tolerated_once() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admission = Admission::start(&bed.cp, &[]).await?;

    let scaled_up = tokio::time::Instant::now();
    bed.create(&deployment("surge", 50, &[], json!({}))?).await?;
    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "surge",
        "4 pods local, 46 on the virtual node",
        |pods| bed.running_where(pods) == (46, 4),
    )
    .await?;
    let overflow_running = scaled_up.elapsed();

    for pod in &pods {
        assert_eq!(
            burst_tolerations(pod),
            usize::from(bed.on_virtual_node(pod)),
            "{}",
            pod.name_any()
        );
    }
    let text = admission.metrics_text().await?;
    assert_eq!(decisions(&text, "tolerated", "DefaultOn"), Some(46.0));
    let latency = admission
        .histogram("eks_admission_toleration_latency_seconds")
        .await?;
    let reconcile = admission
        .histogram("eks_admission_reconcile_duration_seconds")
        .await?;
    eprintln!(
        "[admission] 46 overflow pods: scale-up to all Running on eklet {:.2}s; Unschedulable-to-toleration p50 {:.2}s \
         p99 {:.2}s; reconcile p50 {:.3}s p99 {:.3}s; patch conflicts {}",
        overflow_running.as_secs_f64(),
        quantile(&latency, 0.5).unwrap_or(f64::NAN),
        quantile(&latency, 0.99).unwrap_or(f64::NAN),
        quantile(&reconcile, 0.5).unwrap_or(f64::NAN),
        quantile(&reconcile, 0.99).unwrap_or(f64::NAN),
        sample(&text, "eks_admission_patch_conflicts_total").unwrap_or(f64::NAN),
    );
    Ok(())
}

#[tokio::test]
async fn with_the_global_switch_off_overflow_pods_wait_unless_their_template_says_true() -> anyhow::Result<()>
{
    let bed = Bed::start().await?;
    set_global_switch(&bed.client, "false").await?;
    let admission = Admission::start(&bed.cp, &[]).await?;
    admission.wait_for_global_switch("false").await?;

    bed.create(&deployment("held", 6, &[], json!({}))?).await?;
    let held = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "held",
        "4 held pods Running, 2 Unschedulable",
        |pods| {
            bed.running_where(pods) == (0, 4) && pods.iter().filter(|pod| is_unschedulable(pod)).count() == 2
        },
    )
    .await?;
    let waiting: Vec<Arc<Pod>> = held.into_iter().filter(|pod| is_unschedulable(pod)).collect();
    for pod in &waiting {
        let note = bed.event(&bed.namespace, &uid(pod), "BurstDisabled").await?;
        assert!(
            note.contains("AUTO_SCALE_EKS=false in ConfigMap kube-system/eks-config"),
            "{note}"
        );
        assert!(
            note.contains("AUTO_SCALE_EKS: \"true\""),
            "the event says how to let it burst: {note}"
        );
    }

    // Seed table row 6: global false, local true → allowed.
    bed.create(&deployment(
        "opted-in",
        2,
        &[("AUTO_SCALE_EKS", "true")],
        json!({}),
    )?)
    .await?;
    let opted_in = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "opted-in",
        "2 opted-in pods on the virtual node",
        |pods| bed.running_where(pods) == (2, 0),
    )
    .await?;
    for pod in &opted_in {
        let note = bed
            .event(&bed.namespace, &uid(pod), "BurstTolerationAdded")
            .await?;
        assert!(
            note.contains("pod annotation AUTO_SCALE_EKS=true overrides AUTO_SCALE_EKS=false"),
            "{note}"
        );
    }

    // Meanwhile the held overflow pods were retried by the scheduler and still wait,
    // untolerated, with their one event each.
    for pod in &waiting {
        let now = bed.pods().get(&pod.name_any()).await?;
        assert_eq!(
            (node_of(&now), burst_tolerations(&now)),
            (None, 0),
            "{} still waits",
            pod.name_any()
        );
        let events = events_about(&bed.client, &bed.namespace, &uid(pod)).await?;
        assert_eq!(
            occurrences(&events, "BurstDisabled"),
            1,
            "one event, not one per retry"
        );
    }

    set_global_switch(&bed.client, "true").await?;
    let held = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "held",
        "the 2 waiting pods on the virtual node",
        |pods| bed.running_where(pods) == (2, 4),
    )
    .await?;
    let mut burst: Vec<String> = held
        .iter()
        .filter(|pod| bed.on_virtual_node(pod))
        .map(|pod| pod.name_any())
        .collect();
    let mut expected: Vec<String> = waiting.iter().map(|pod| pod.name_any()).collect();
    burst.sort();
    expected.sort();
    assert_eq!(burst, expected, "the pods that waited are the ones that burst");
    let text = admission.metrics_text().await?;
    assert_eq!(decisions(&text, "refused", "BurstDisabled"), Some(2.0));
    assert_eq!(decisions(&text, "tolerated", "LocalSwitch"), Some(2.0));
    assert_eq!(decisions(&text, "tolerated", "GlobalSwitch"), Some(2.0));
    Ok(())
}

#[tokio::test]
async fn ineligible_overflow_pods_wait_with_one_event_naming_the_reason() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let admission = Admission::start(&bed.cp, &[]).await?;

    bed.fill_local_nodes().await?;

    let reserved_port = json!({"ports": [{"containerPort": 62000}]});
    bed.create(&deployment("reserved", 1, &[], reserved_port)?)
        .await?;
    let reserved = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "reserved",
        "the reserved-port pod Unschedulable",
        |pods| pods.iter().any(|pod| is_unschedulable(pod)),
    )
    .await?;
    let reserved = reserved
        .first()
        .map(|pod| Pod::clone(pod))
        .ok_or_else(|| anyhow::anyhow!("no reserved-port pod"))?;
    let note = bed.event(&bed.namespace, &uid(&reserved), "ReservedPort").await?;
    assert!(note.contains("62000"), "the event names the port: {note}");

    // Even asking for it, a kube-system pod never bursts.
    let system_pods: Api<Pod> = Api::namespaced(bed.client.clone(), "kube-system");
    let system_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "system-overflow", "annotations": {"AUTO_SCALE_EKS": "true"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m"}}}]}
    }))?;
    let system_pod = system_pods.create(&PostParams::default(), &system_pod).await?;
    let note = bed
        .event("kube-system", &uid(&system_pod), "ForbiddenNamespace")
        .await?;
    assert!(note.contains("kube-system"), "{note}");

    // An eligible pod in the same spot bursts, so the refusals above are the rules at work.
    bed.create(&deployment("eligible", 1, &[], json!({}))?).await?;
    wait_for_pods(
        &bed.client,
        &bed.namespace,
        "eligible",
        "the eligible overflow pod on the virtual node",
        |pods| bed.running_where(pods) == (1, 0),
    )
    .await?;

    // Every update is a retry for the controller; none may repeat the event.
    for retry in 0..3 {
        let before = admission.reconciles().await?;
        let labels = json!({"metadata": {"labels": {"retry": retry.to_string()}}});
        bed.pods()
            .patch(
                &reserved.name_any(),
                &PatchParams::default(),
                &Patch::Merge(labels),
            )
            .await?;
        wait::until(PATIENCE, "the controller to look at the pod again", || async {
            admission.reconciles().await.is_ok_and(|after| after > before)
        })
        .await?;
    }
    let reserved_now = bed.pods().get(&reserved.name_any()).await?;
    assert_eq!(
        (node_of(&reserved_now), burst_tolerations(&reserved_now)),
        (None, 0),
        "the reserved-port pod waits"
    );
    let events = events_about(&bed.client, &bed.namespace, &uid(&reserved)).await?;
    assert_eq!(
        occurrences(&events, "ReservedPort"),
        1,
        "exactly one ReservedPort event: {events:?}"
    );
    assert_eq!(occurrences(&events, "BurstTolerationAdded"), 0);

    let system_now = system_pods.get("system-overflow").await?;
    assert_eq!(
        (node_of(&system_now), burst_tolerations(&system_now)),
        (None, 0),
        "the kube-system pod waits"
    );
    let system_events = events_about(&bed.client, "kube-system", &uid(&system_pod)).await?;
    assert_eq!(occurrences(&system_events, "ForbiddenNamespace"), 1);

    let text = admission.metrics_text().await?;
    assert_eq!(decisions(&text, "refused", "ReservedPort"), Some(1.0));
    assert_eq!(decisions(&text, "refused", "ForbiddenNamespace"), Some(1.0));
    Ok(())
}

#[tokio::test]
async fn a_malformed_global_switch_is_reported_on_the_config_map_and_bursting_proceeds() -> anyhow::Result<()>
{
    let bed = Bed::start().await?;
    set_global_switch(&bed.client, "maybe").await?;
    let admission = Admission::start(&bed.cp, &[]).await?;
    admission.wait_for_global_switch("undefined").await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), "kube-system");
    let config_map_uid = config_maps.get("eks-config").await?.uid().unwrap_or_default();
    let note = bed
        .event("kube-system", &config_map_uid, "InvalidAutoScaleEks")
        .await?;
    assert!(
        note.contains("\"maybe\""),
        "the event names the bad value: {note}"
    );

    bed.create(&deployment("web", 5, &[], json!({}))?).await?;
    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "4 pods local and 1 on the virtual node",
        |pods| bed.running_where(pods) == (1, 4),
    )
    .await?;
    let burst = pods
        .iter()
        .find(|pod| bed.on_virtual_node(pod))
        .map(|pod| uid(pod))
        .unwrap_or_default();
    let note = bed.event(&bed.namespace, &burst, "BurstTolerationAdded").await?;
    assert!(
        note.contains("bursting is on by default") && note.contains("maybe"),
        "{note}"
    );

    // A different bad value is news; the old one was reported once.
    set_global_switch(&bed.client, "perhaps").await?;
    let config = watcher::Config::default().fields(&format!("involvedObject.uid={config_map_uid}"));
    let events_api: Api<Event> = Api::namespaced(bed.client.clone(), "kube-system");
    let events = wait::for_objects(
        events_api,
        config,
        PATIENCE,
        "an event naming \"perhaps\"",
        |events| {
            events.iter().any(|event| {
                event
                    .message
                    .as_deref()
                    .is_some_and(|message| message.contains("\"perhaps\""))
            })
        },
    )
    .await?;
    let events: Vec<Event> = events.iter().map(|event| Event::clone(event)).collect();
    assert_eq!(
        occurrences(&events, "InvalidAutoScaleEks"),
        2,
        "one event per bad value: {events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn only_the_leader_tolerates_and_a_standby_takes_over_when_it_dies() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let flags = |identity: &str| {
        [
            format!("--leader-election-identity={identity}"),
            "--leader-election-lease-seconds=4".into(),
        ]
    };
    let [first_identity, first_lease] = flags("first");
    let mut first = Admission::start(&bed.cp, &[&first_identity, &first_lease]).await?;
    let [second_identity, second_lease] = flags("second");
    let mut second = Admission::spawn(&bed.cp, &[&second_identity, &second_lease])?;
    wait::until(PATIENCE, "the standby to serve metrics", || async {
        second.metrics_text().await.is_ok()
    })
    .await?;
    assert!(
        !second.is_leader().await,
        "while the first holds the lease the second stands by"
    );

    bed.create(&deployment("web", 5, &[], json!({}))?).await?;
    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "1 pod on the virtual node",
        |pods| bed.running_where(pods) == (1, 4),
    )
    .await?;
    let burst = pods
        .iter()
        .find(|pod| bed.on_virtual_node(pod))
        .map(|pod| Pod::clone(pod))
        .unwrap_or_default();
    assert_eq!(burst_tolerations(&burst), 1);
    wait_for_event(&bed.client, &bed.namespace, &uid(&burst), "BurstTolerationAdded").await?;
    let events = events_about(&bed.client, &bed.namespace, &uid(&burst)).await?;
    let reporters: Vec<Option<&str>> = events
        .iter()
        .filter(|event| event.reason.as_deref() == Some("BurstTolerationAdded"))
        .map(|event| event.reporting_instance.as_deref())
        .collect();
    assert_eq!(reporters, [Some("first")], "one event, from the leader");

    first.kill();
    second.wait_ready().await?;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &bed.namespace);
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await?;
    let pods = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "web",
        "2 pods on the virtual node",
        |pods| bed.running_where(pods) == (2, 4),
    )
    .await?;
    let newcomer = pods
        .iter()
        .find(|pod| bed.on_virtual_node(pod) && pod.uid() != burst.uid())
        .map(|pod| uid(pod))
        .unwrap_or_default();
    let event = wait_for_event(&bed.client, &bed.namespace, &newcomer, "BurstTolerationAdded").await?;
    assert_eq!(
        event.reporting_instance.as_deref(),
        Some("second"),
        "the standby took over"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_waiting_for_its_claim_bursts_once_the_claim_is_bound() -> anyhow::Result<()> {
    let bed = Bed::start().await?;
    let _admission = Admission::start(&bed.cp, &[]).await?;
    bed.fill_local_nodes().await?;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), &bed.namespace);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let mut db = deployment(
        "db",
        1,
        &[],
        json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
    )?;
    if let Some(spec) = db.spec.as_mut().and_then(|spec| spec.template.spec.as_mut()) {
        spec.volumes = Some(vec![serde_json::from_value(
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}),
        )?]);
    }
    bed.create(&db).await?;
    let waiting = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "db",
        "the db pod Unschedulable",
        |pods| pods.iter().any(|pod| is_unschedulable(pod)),
    )
    .await?;
    let pod_uid = waiting.first().map(|pod| uid(pod)).unwrap_or_default();
    let note = bed.event(&bed.namespace, &pod_uid, "UnboundVolume").await?;
    assert!(note.contains("\"data\""), "the event names the claim: {note}");

    let volumes: Api<PersistentVolume> = Api::all(bed.client.clone());
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-data", bed.namespace)},
        "spec": {
            "storageClassName": "",
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "nfs": {"server": "10.0.0.10", "path": "/exports/data"},
            "claimRef": {"namespace": bed.namespace, "name": "data"}
        }
    }))?;
    volumes.create(&PostParams::default(), &volume).await?;
    let tolerated = wait_for_pods(
        &bed.client,
        &bed.namespace,
        "db",
        "the db pod tolerated",
        |pods| pods.iter().any(|pod| burst_tolerations(pod) == 1),
    )
    .await?;
    assert_eq!(
        tolerated.first().map(|pod| uid(pod)),
        Some(pod_uid.clone()),
        "the same pod, not a replacement"
    );
    let note = bed
        .event(&bed.namespace, &pod_uid, "BurstTolerationAdded")
        .await?;
    assert!(note.contains("no local node fits"), "{note}");
    Ok(())
}
