//! `tke-resilience explain pod` against a live control plane: one pod per eligibility rule it
//! breaks, one that passes, the switches read from a real ConfigMap, the local count from real
//! pods on kwok nodes.

mod support;

use std::{collections::BTreeSet, process::Output, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};
use tke_testbed::{ControlPlane, NodeSpec, random_suffix, wait};

const WAIT: Duration = Duration::from_secs(90);

fn explain(cp: &ControlPlane, namespace: &str, pod: &str, extra: &[&str]) -> Output {
    std::process::Command::new(support::binary())
        .args(["explain", "pod", pod, "-n", namespace, "--output", "json"])
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(extra)
        .output()
        .expect("run tke-resilience explain")
}

fn explain_json(cp: &ControlPlane, namespace: &str, pod: &str, extra: &[&str]) -> Value {
    let out = explain(cp, namespace, pod, extra);
    assert!(
        out.status.success(),
        "explain {pod} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

/// The codes of the rules the report says failed.
fn failed_codes(report: &Value) -> BTreeSet<String> {
    report["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| rule["passed"] == false)
        .map(|rule| rule["code"].as_str().expect("code").to_owned())
        .collect()
}

fn codes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|c| c.to_string()).collect()
}

async fn create_pod(client: &Client, namespace: &str, pod: Value) -> String {
    let pod: Pod = serde_json::from_value(pod).expect("pod JSON");
    let created = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    created.metadata.name.expect("name")
}

fn pod(name: &str, extra_spec: Value, annotations: Value) -> Value {
    let mut spec = json!({
        // No node carries this label: the pods stay Pending, which is when explain matters.
        "nodeSelector": {"testbed.tke.io/nowhere": "true"},
        "containers": [{"name": "app", "image": "nginx"}]
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec})
}

#[tokio::test]
async fn each_failing_rule_is_named_with_its_code_and_a_passing_pod_names_none() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("explain").await?;
    let none = json!({});

    let cases: Vec<(&str, Value, Value, &[&str])> = vec![
        ("passes", json!({}), none.clone(), &[]),
        (
            "port",
            json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 62000}]}]}),
            none.clone(),
            &["ReservedPort"],
        ),
        (
            "host-port-in-init",
            json!({"initContainers": [{"name": "init", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 61000}]}]}),
            none.clone(),
            &["ReservedPort"],
        ),
        (
            "probe",
            json!({"containers": [{"name": "app", "image": "nginx",
                "ports": [{"name": "admin", "containerPort": 65534}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "admin"}}}]}),
            none.clone(),
            // The named port resolves to 65534, itself a reserved containerPort.
            &["ReservedPort", "ReservedProbePort"],
        ),
        (
            "sysctl",
            json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "32768 61000"}]}}),
            none.clone(),
            &["ReservedPortRangeSysctl"],
        ),
        (
            "vpc-ip-claim",
            json!({}),
            json!({"tke.cloud.tencent.com/vpc-ip-claim-delete-policy": "Never"}),
            &["VpcIpClaimDeletePolicy"],
        ),
        (
            "fixed-ip",
            json!({}),
            json!({"k8s.v1.cni.galaxy.io/release-policy": "immutable"}),
            &["FixedIp"],
        ),
        (
            "unbound-claim",
            json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "never-bound"}}]}),
            none.clone(),
            &["UnboundVolume"],
        ),
    ];

    // A claim that stays Pending: no PersistentVolume or provisioner serves its class.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "never-bound"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "no-such-class",
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pvc)
        .await?;

    for (name, spec, annotations, expected) in &cases {
        let created = create_pod(&client, &ns, pod(name, spec.clone(), annotations.clone())).await;
        let report = explain_json(&cp, &ns, &created, &[]);
        assert_eq!(failed_codes(&report), codes(expected), "pod {name}: {report:#}");
        assert_eq!(report["eligible"], expected.is_empty(), "pod {name}");
        let placement = report["decision"]["placement"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if expected.is_empty() {
            assert_ne!(placement, "LocalOnly", "pod {name} may burst");
        } else {
            assert_eq!(placement, "LocalOnly", "pod {name} may not burst");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_claim_bound_to_an_unsupported_volume_is_named_and_nfs_is_fine() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("explain-pv").await?;
    let suffix = random_suffix();

    for (kind, source) in [
        (
            "ebs",
            json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}}),
        ),
        ("nfs", json!({"nfs": {"server": "10.0.0.1", "path": "/export"}})),
    ] {
        let pv_name = format!("pv-{kind}-{suffix}");
        let mut pv = json!({
            "metadata": {"name": pv_name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "", "claimRef": {"namespace": ns, "name": kind}}
        });
        if let (Some(spec), Some(src)) = (pv["spec"].as_object_mut(), source.as_object()) {
            spec.extend(src.clone());
        }
        let pv: PersistentVolume = serde_json::from_value(pv)?;
        Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": kind},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))?;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
        pvcs.create(&PostParams::default(), &pvc).await?;
        // The controller manager's volume binder binds the pair.
        let bound = |c: &[std::sync::Arc<PersistentVolumeClaim>]| {
            c.iter()
                .any(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        };
        let by_name = watcher::Config::default().fields(&format!("metadata.name={kind}"));
        wait::for_objects(pvcs, by_name, WAIT, &format!("claim {kind} Bound"), bound).await?;

        let name = create_pod(
            &client,
            &ns,
            pod(
                &format!("uses-{kind}"),
                json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": kind}}]}),
                json!({}),
            ),
        )
        .await;
        let report = explain_json(&cp, &ns, &name, &[]);
        let expected: &[&str] = if kind == "ebs" {
            &["UnsupportedVolume"]
        } else {
            &[]
        };
        assert_eq!(failed_codes(&report), codes(expected), "{kind}: {report:#}");
    }
    Ok(())
}

#[tokio::test]
async fn namespace_and_daemonset_rules_use_the_real_owner_and_namespace() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;

    let in_kube_system = create_pod(
        &client,
        "kube-system",
        pod(&format!("sys-{}", random_suffix()), json!({}), json!({})),
    )
    .await;
    let report = explain_json(&cp, "kube-system", &in_kube_system, &[]);
    assert_eq!(failed_codes(&report), codes(&["ForbiddenNamespace"]));
    // The list is configurable: with another list, kube-system is allowed.
    let report = explain_json(
        &cp,
        "kube-system",
        &in_kube_system,
        &["--forbidden-namespaces=infra"],
    );
    assert_eq!(failed_codes(&report), codes(&[]));

    // A real DaemonSet on a node of this test's own creates the pod.
    let ns = cp.namespace("explain-ds").await?;
    let node = format!("explain-ds-{}", random_suffix());
    cp.add_nodes(&[NodeSpec::new(&node).label("testbed.tke.io/group", &node)])
        .await?;
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"nodeSelector": {"testbed.tke.io/group": node},
                                  "containers": [{"name": "agent", "image": "busybox"}]}}
        }
    }))?;
    Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await?;
    let pods = wait::for_objects(
        Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=agent"),
        WAIT,
        "the DaemonSet's pod",
        |p| !p.is_empty(),
    )
    .await?;
    let name = pods[0].metadata.name.clone().unwrap_or_default();
    let report = explain_json(&cp, &ns, &name, &[]);
    assert_eq!(failed_codes(&report), codes(&["DaemonsetForbidden"]));
    assert_eq!(report["workload"]["kind"], "DaemonSet");
    Ok(())
}

#[tokio::test]
async fn switches_come_from_the_configmap_and_the_pod_and_local_replicas_from_running_pods()
-> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("explain-switch").await?;
    // The global switch is read from this test's namespace, so the shared cluster's kube-system is
    // left alone.
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "eks-config"}, "data": {"AUTO_SCALE_EKS": "false"}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let flags = [format!("--eks-config-namespace={ns}")];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let off = create_pod(&client, &ns, pod("no-annotation", json!({}), json!({}))).await;
    let report = explain_json(&cp, &ns, &off, &flags);
    assert_eq!(report["switches"]["global"]["value"], "false", "{report:#}");
    assert_eq!(report["switches"]["burstAllowed"], false);
    assert_eq!(report["decision"]["placement"], "LocalOnly");
    assert_eq!(
        report["decision"]["reasons"][0]["reason"], "BurstDisabled",
        "{report:#}"
    );

    // Seed table row 6: global false, local true → allowed.
    let on = create_pod(
        &client,
        &ns,
        pod("opted-in", json!({}), json!({"AUTO_SCALE_EKS": "true"})),
    )
    .await;
    let report = explain_json(&cp, &ns, &on, &flags);
    assert_eq!(report["switches"]["burstAllowed"], true, "{report:#}");

    // A bad local value is undefined, reported, and row "false / undefined" applies.
    let bad = create_pod(
        &client,
        &ns,
        pod("bad-value", json!({}), json!({"AUTO_SCALE_EKS": "yes please"})),
    )
    .await;
    let report = explain_json(&cp, &ns, &bad, &flags);
    assert_eq!(report["switches"]["local"]["value"], "undefined");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("yes please"),
        "the warning names the bad value: {warnings}"
    );

    // LOCAL_REPLICAS: 1 with two pods Running on a local kwok node: the local count is 2 and the
    // next pod of the same ReplicaSet goes to the cloud.
    let node = format!("explain-lr-{}", random_suffix());
    cp.add_nodes(&[NodeSpec::new(&node).label("testbed.tke.io/group", &node)])
        .await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"},
                                           "annotations": {"LOCAL_REPLICAS": "1", "AUTO_SCALE_EKS": "true"}},
                              "spec": {"nodeSelector": {"testbed.tke.io/group": node},
                                       "containers": [{"name": "web", "image": "nginx"}]}}}
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let running = |p: &[std::sync::Arc<Pod>]| {
        p.iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
            == 2
    };
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let pods = wait::for_objects(
        pods_api.clone(),
        watcher::Config::default().labels("app=web"),
        WAIT,
        "2 Running",
        running,
    )
    .await?;
    let name = pods[0].metadata.name.clone().unwrap_or_default();
    let report = explain_json(&cp, &ns, &name, &flags);
    assert_eq!(report["localReplicas"]["value"], 1, "{report:#}");
    assert_eq!(report["localReplicas"]["localCount"], 2);
    assert_eq!(report["workload"]["kind"], "ReplicaSet");
    assert_eq!(report["decision"]["placement"], "Cloud");
    assert!(pods_api.list(&ListParams::default()).await?.items.len() >= 2);
    Ok(())
}

#[tokio::test]
async fn a_missing_pod_is_one_clear_line_and_a_non_zero_exit() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let out = explain(&cp, "default", "no-such-pod", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: pod default/no-such-pod not found");
    assert!(out.stdout.is_empty());

    let text = std::process::Command::new(support::binary())
        .args(["explain", "pod", "no-such-pod", "-n", "default"])
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .output()?;
    assert!(!text.status.success());
    Ok(())
}
