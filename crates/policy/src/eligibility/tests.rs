use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::{Value, json};

use super::*;

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("test pod is a valid Pod")
}

/// A Deployment pod in namespace `shop` whose spec is `spec`.
fn web_pod(spec: Value) -> Pod {
    pod(json!({
        "metadata": {
            "name": "web-5d8f-x7k2p",
            "namespace": "shop",
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "rs-1", "controller": true
            }]
        },
        "spec": spec
    }))
}

fn annotated_pod(annotations: Value) -> Pod {
    let mut pod = web_pod(json!({ "containers": [{ "name": "web", "image": "nginx" }] }));
    pod.metadata.annotations = serde_json::from_value(annotations).expect("annotations");
    pod
}

fn no_claims(_: &str, _: &str) -> ClaimStatus {
    ClaimStatus::NotFound
}

fn violations_with(pod: &Pod, config: &EligibilityConfig) -> Vec<Violation> {
    check(pod, &no_claims, config).violations
}

fn violations(pod: &Pod) -> Vec<Violation> {
    violations_with(pod, &EligibilityConfig::default())
}

fn codes(pod: &Pod) -> Vec<Reason> {
    violations(pod)
        .into_iter()
        .map(|violation| violation.reason)
        .collect()
}

fn container_with_port(name: &str, port: Value) -> Value {
    json!({ "name": name, "image": "nginx", "ports": [port] })
}

#[test]
fn a_plain_deployment_pod_is_eligible() {
    let pod = web_pod(json!({
        "containers": [{
            "name": "web", "image": "nginx",
            "ports": [{ "containerPort": 80, "name": "http" }],
            "livenessProbe": { "httpGet": { "port": "http", "path": "/" } }
        }],
        "volumes": [{ "name": "cache", "emptyDir": {} }]
    }));
    let eligibility = check(&pod, &no_claims, &EligibilityConfig::default());
    assert!(eligibility.is_eligible(), "{:?}", eligibility.violations);
    assert_eq!(eligibility.first(), None);
}

#[test]
fn pods_controlled_by_a_daemonset_are_forbidden() {
    let mut pod = web_pod(json!({ "containers": [{ "name": "agent", "image": "fluent-bit" }] }));
    pod.metadata.owner_references = serde_json::from_value(json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "log-agent", "uid": "ds-1", "controller": true
    }]))
    .expect("owner references");
    let found = violations(&pod);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Reason::DaemonsetForbidden);
    assert_eq!(found[0].reason.as_str(), "DaemonsetForbidden");
    assert!(
        found[0].message.contains("DaemonSet shop/log-agent"),
        "{}",
        found[0].message
    );
}

#[test]
fn advanced_daemonsets_of_other_api_groups_are_forbidden_too() {
    let mut pod = web_pod(json!({ "containers": [{ "name": "agent", "image": "fluent-bit" }] }));
    pod.metadata.owner_references = serde_json::from_value(json!([{
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "DaemonSet", "name": "agent", "uid": "ds-2", "controller": true
    }]))
    .expect("owner references");
    assert_eq!(codes(&pod), [Reason::DaemonsetForbidden]);
}

#[test]
fn a_daemonset_that_only_references_the_pod_without_controlling_it_does_not_count() {
    let mut pod = web_pod(json!({ "containers": [{ "name": "web", "image": "nginx" }] }));
    pod.metadata.owner_references = serde_json::from_value(json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-1"
    }]))
    .expect("owner references");
    assert_eq!(codes(&pod), []);
}

#[test]
fn pods_in_kube_system_and_tke_eni_ip_webhook_are_forbidden_by_default() {
    for namespace in ["kube-system", "tke-eni-ip-webhook"] {
        let mut pod = web_pod(json!({ "containers": [{ "name": "web", "image": "nginx" }] }));
        pod.metadata.namespace = Some(namespace.to_owned());
        let found = violations(&pod);
        assert_eq!(found.len(), 1, "{namespace}: {found:?}");
        assert_eq!(found[0].reason, Reason::ForbiddenNamespace);
        assert!(
            found[0].message.contains(&format!("{namespace:?}")),
            "{}",
            found[0].message
        );
    }
}

#[test]
fn the_forbidden_namespaces_are_configurable() {
    let config = EligibilityConfig {
        forbidden_namespaces: vec!["batch".to_owned()],
        ..EligibilityConfig::default()
    };
    let mut pod = web_pod(json!({ "containers": [{ "name": "web", "image": "nginx" }] }));
    pod.metadata.namespace = Some("batch".to_owned());
    let found = violations_with(&pod, &config);
    assert_eq!(
        found.iter().map(|v| v.reason).collect::<Vec<_>>(),
        [Reason::ForbiddenNamespace]
    );
    pod.metadata.namespace = Some("kube-system".to_owned());
    assert_eq!(violations_with(&pod, &config), []);
}

#[test]
fn declared_ports_are_refused_from_61000_to_65534_inclusive() {
    let cases = [
        (60999, false),
        (61000, true),
        (62000, true),
        (65534, true),
        (65535, false),
        (80, false),
    ];
    for (port, refused) in cases {
        for field in ["containerPort", "hostPort"] {
            let declared = if field == "containerPort" {
                json!({ "containerPort": port })
            } else {
                json!({ "containerPort": 8080, "hostPort": port })
            };
            let pod = web_pod(json!({ "containers": [container_with_port("web", declared)] }));
            let found = violations(&pod);
            assert_eq!(!found.is_empty(), refused, "{field} {port}: {found:?}");
            if refused {
                assert_eq!(found[0].reason, Reason::ReservedPort);
                let expected = format!(
                    "container \"web\" declares {field} {port}, inside 61000-65534 which the cloud sandbox \
                     reserves; use a port outside that range"
                );
                assert_eq!(found[0].message, expected);
            }
        }
    }
}

#[test]
fn init_container_ports_are_checked_like_container_ports() {
    let pod = web_pod(json!({
        "initContainers": [container_with_port("migrate", json!({ "containerPort": 61000 }))],
        "containers": [container_with_port("web", json!({ "containerPort": 8080, "hostPort": 65534 }))]
    }));
    let messages: Vec<String> = violations(&pod)
        .into_iter()
        .map(|violation| violation.message)
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("container \"web\" declares hostPort 65534"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].starts_with("init container \"migrate\" declares containerPort 61000"),
        "{}",
        messages[1]
    );
}

fn probed(probe: &str, action: Value, ports: Value) -> Pod {
    let mut container = json!({ "name": "web", "image": "nginx", "ports": ports });
    container[probe] = action;
    web_pod(json!({ "containers": [container] }))
}

#[test]
fn every_probe_kind_and_action_on_a_reserved_port_is_refused() {
    let actions = [
        json!({ "httpGet": { "port": 62000 } }),
        json!({ "tcpSocket": { "port": 61000 } }),
        json!({ "grpc": { "port": 65534 } }),
    ];
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        for action in &actions {
            let pod = probed(probe, action.clone(), json!([]));
            let found = violations(&pod);
            assert_eq!(found.len(), 1, "{probe} {action}: {found:?}");
            assert_eq!(found[0].reason, Reason::ReservedProbePort);
            assert!(
                found[0]
                    .message
                    .starts_with(&format!("container \"web\" {probe} ")),
                "{}",
                found[0].message
            );
        }
    }
}

#[test]
fn probes_just_outside_the_reserved_range_pass() {
    for port in [60999, 65535] {
        let pod = probed(
            "livenessProbe",
            json!({ "tcpSocket": { "port": port } }),
            json!([]),
        );
        assert_eq!(codes(&pod), [], "port {port}");
    }
}

#[test]
fn named_probe_ports_resolve_through_the_container_ports() {
    let ports =
        json!([{ "name": "admin", "containerPort": 62000 }, { "name": "http", "containerPort": 8080 }]);
    let reserved = probed(
        "readinessProbe",
        json!({ "httpGet": { "port": "admin" } }),
        ports.clone(),
    );
    let found = violations(&reserved);
    // The declared containerPort is refused too; the probe adds its own violation.
    assert_eq!(
        found.iter().map(|v| v.reason).collect::<Vec<_>>(),
        [Reason::ReservedPort, Reason::ReservedProbePort]
    );
    assert!(
        found[1].message.contains("port \"admin\" (containerPort 62000)"),
        "{}",
        found[1].message
    );

    let fine = probed("readinessProbe", json!({ "httpGet": { "port": "http" } }), ports);
    assert_eq!(codes(&fine), [Reason::ReservedPort]);
}

#[test]
fn a_named_probe_port_that_resolves_to_nothing_is_not_a_reserved_port() {
    let pod = probed(
        "livenessProbe",
        json!({ "tcpSocket": { "port": "missing" } }),
        json!([]),
    );
    assert_eq!(codes(&pod), []);
}

#[test]
fn a_probe_port_written_as_a_numeric_string_is_read_as_a_number_like_the_kubelet_does() {
    let pod = probed(
        "livenessProbe",
        json!({ "httpGet": { "port": "63000" } }),
        json!([]),
    );
    assert_eq!(codes(&pod), [Reason::ReservedProbePort]);
}

#[test]
fn probes_of_init_containers_are_checked() {
    let pod = web_pod(json!({
        "initContainers": [{
            "name": "proxy", "image": "envoy", "restartPolicy": "Always",
            "startupProbe": { "tcpSocket": { "port": 64000 } }
        }],
        "containers": [{ "name": "web", "image": "nginx" }]
    }));
    let found = violations(&pod);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .starts_with("init container \"proxy\" startupProbe tcpSocket port 64000"),
        "{}",
        found[0].message
    );
}

fn with_sysctls(sysctls: Value) -> Pod {
    web_pod(json!({
        "securityContext": { "sysctls": sysctls },
        "containers": [{ "name": "web", "image": "nginx" }]
    }))
}

fn port_range_pod(value: &str) -> Pod {
    with_sysctls(json!([{ "name": "net.ipv4.ip_local_port_range", "value": value }]))
}

#[test]
fn a_local_port_range_overlapping_the_reserved_ports_is_refused_even_partly() {
    let cases = [
        ("32768 60999", false),
        ("32768 61000", true),
        ("61500 62000", true),
        ("65534 65535", true),
        ("65535 65535", false),
        ("1024 65535", true),
        ("32768\t60999", false),
        ("  40000   61001 ", true),
    ];
    for (value, refused) in cases {
        let found = violations(&port_range_pod(value));
        assert_eq!(!found.is_empty(), refused, "{value:?}: {found:?}");
        if refused {
            assert_eq!(found[0].reason, Reason::ReservedPortRangeSysctl);
            assert!(
                found[0].message.contains("overlaps 61000-65534"),
                "{}",
                found[0].message
            );
            assert!(
                found[0].message.contains(&format!("{value:?}")),
                "{}",
                found[0].message
            );
        }
    }
}

#[test]
fn a_malformed_local_port_range_is_refused_with_what_is_wrong() {
    let cases = [
        ("abc", "is not two port numbers"),
        ("32768", "is not two port numbers"),
        ("1 2 3", "is not two port numbers"),
        ("-1 100", "is not two port numbers"),
        ("", "is not two port numbers"),
        ("0 1000", "outside 1-65535"),
        ("70000 80000", "outside 1-65535"),
        ("60999 32768", "starts at 60999, above its end 32768"),
    ];
    for (value, problem) in cases {
        let found = violations(&port_range_pod(value));
        assert_eq!(found.len(), 1, "{value:?}: {found:?}");
        assert_eq!(found[0].reason, Reason::ReservedPortRangeSysctl);
        assert!(
            found[0].message.contains(problem),
            "{value:?}: {}",
            found[0].message
        );
        assert!(
            found[0].message.contains("would refuse it"),
            "{value:?}: {}",
            found[0].message
        );
    }
}

#[test]
fn the_port_range_sysctl_may_be_written_with_slashes_and_other_sysctls_are_ignored() {
    let pod = with_sysctls(json!([
        { "name": "net.core.somaxconn", "value": "62000" },
        { "name": "net/ipv4/ip_local_port_range", "value": "61000 61100" }
    ]));
    assert_eq!(codes(&pod), [Reason::ReservedPortRangeSysctl]);
}

#[test]
fn the_port_range_parser_reads_what_the_kernel_accepts() {
    assert_eq!(parse_port_range("32768 60999"), Ok((32768, 60999)));
    assert_eq!(parse_port_range("1\t65535\n"), Ok((1, 65535)));
    assert_eq!(parse_port_range("80 80"), Ok((80, 80)));
    assert!(parse_port_range("+80 90").is_err());
    assert!(!overlaps_reserved_ports(1, 60999));
    assert!(overlaps_reserved_ports(60999, 61000));
    assert!(!overlaps_reserved_ports(65535, 65535));
}

#[test]
fn the_vpc_ip_claim_delete_policy_annotation_is_refused_whatever_its_value() {
    for value in ["Never", "Immediate", ""] {
        let found = violations(&annotated_pod(json!({ VPC_IP_CLAIM_DELETE_POLICY: value })));
        assert_eq!(found.len(), 1, "{value:?}");
        assert_eq!(found[0].reason, Reason::VpcIpClaimDeletePolicy);
        assert!(
            found[0].message.contains("remove the annotation"),
            "{}",
            found[0].message
        );
    }
    assert_eq!(codes(&annotated_pod(json!({ "other": "x" }))), []);
}

#[test]
fn galaxy_fixed_ip_annotations_are_refused_by_default() {
    let cases = [
        (json!({ GALAXY_RELEASE_POLICY: "never" }), true),
        (json!({ GALAXY_RELEASE_POLICY: "Immutable" }), true),
        (json!({ GALAXY_RELEASE_POLICY: "" }), false),
        (json!({ GALAXY_RELEASE_POLICY: "release-on-delete" }), false),
        (json!({ GALAXY_ENI_IP_POOL: "shared-pool" }), true),
    ];
    for (annotations, refused) in cases {
        let found = codes(&annotated_pod(annotations.clone()));
        assert_eq!(found == [Reason::FixedIp], refused, "{annotations}: {found:?}");
    }
}

#[test]
fn the_fixed_ip_check_can_be_switched_off() {
    let config = EligibilityConfig {
        fixed_ip_check: false,
        ..EligibilityConfig::default()
    };
    let pod = annotated_pod(json!({ GALAXY_RELEASE_POLICY: "never" }));
    assert_eq!(violations_with(&pod, &config), []);
}

#[test]
fn the_fixed_ip_annotations_are_configurable() {
    let matcher: AnnotationMatch = "tke.cloud.tencent.com/networks=tke-route-eni"
        .parse()
        .expect("flag value");
    let config = EligibilityConfig {
        fixed_ip_annotations: vec![matcher],
        ..EligibilityConfig::default()
    };
    for (value, refused) in [
        ("tke-route-eni", true),
        ("galaxy-k8s-vlan, tke-route-eni", true),
        ("galaxy-flannel", false),
    ] {
        let pod = annotated_pod(json!({ "tke.cloud.tencent.com/networks": value }));
        let found = violations_with(&pod, &config);
        assert_eq!(!found.is_empty(), refused, "{value:?}: {found:?}");
        if refused {
            assert_eq!(found[0].reason, Reason::FixedIp);
            assert!(
                found[0].message.contains("tke.cloud.tencent.com/networks"),
                "{}",
                found[0].message
            );
        }
    }
    // The defaults are replaced, not extended.
    let galaxy = annotated_pod(json!({ GALAXY_RELEASE_POLICY: "never" }));
    assert_eq!(violations_with(&galaxy, &config), []);
}

#[test]
fn annotation_matches_parse_from_flag_values() {
    assert_eq!("a/b".parse(), Ok(AnnotationMatch::present("a/b")));
    assert_eq!(" a/b = v ".parse(), Ok(AnnotationMatch::with_value("a/b", "v")));
    assert_eq!(AnnotationMatch::with_value("a/b", "v").to_string(), "a/b=v");
    let error = "=v".parse::<AnnotationMatch>().expect_err("empty key");
    assert!(error.to_string().contains("empty key"), "{error}");
}

fn persistent_volume(name: &str, spec: Value) -> Arc<PersistentVolume> {
    Arc::new(serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec })).expect("test PV"))
}

/// Claims in namespace `shop` by name; records every lookup.
struct Claims {
    known: BTreeMap<&'static str, ClaimStatus>,
    asked: Mutex<Vec<(String, String)>>,
}

impl Claims {
    fn new(known: impl IntoIterator<Item = (&'static str, ClaimStatus)>) -> Claims {
        Claims {
            known: known.into_iter().collect(),
            asked: Mutex::new(Vec::new()),
        }
    }

    fn asked(&self) -> Vec<(String, String)> {
        self.asked.lock().map(|asked| asked.clone()).unwrap_or_default()
    }
}

impl VolumeLookup for Claims {
    fn claim(&self, namespace: &str, name: &str) -> ClaimStatus {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((namespace.to_owned(), name.to_owned()));
        }
        match (namespace, self.known.get(name)) {
            ("shop", Some(status)) => status.clone(),
            _ => ClaimStatus::NotFound,
        }
    }
}

fn claiming(claims: &[&str]) -> Pod {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|claim| json!({ "name": format!("vol-{claim}"), "persistentVolumeClaim": { "claimName": claim } }))
        .collect();
    web_pod(json!({ "containers": [{ "name": "web", "image": "nginx" }], "volumes": volumes }))
}

#[test]
fn claims_bound_to_nfs_cephfs_host_path_or_cbs_csi_volumes_are_eligible() {
    let claims = Claims::new([
        (
            "nfs",
            ClaimStatus::Bound(persistent_volume(
                "pv-nfs",
                json!({ "nfs": { "server": "10.0.0.2", "path": "/" } }),
            )),
        ),
        (
            "ceph",
            ClaimStatus::Bound(persistent_volume(
                "pv-ceph",
                json!({ "cephfs": { "monitors": ["10.0.0.3"] } }),
            )),
        ),
        (
            "host",
            ClaimStatus::Bound(persistent_volume(
                "pv-host",
                json!({ "hostPath": { "path": "/data" } }),
            )),
        ),
        (
            "cbs",
            ClaimStatus::Bound(persistent_volume(
                "pv-cbs",
                json!({ "csi": { "driver": CBS_CSI_DRIVER, "volumeHandle": "disk-1" } }),
            )),
        ),
    ]);
    let pod = claiming(&["nfs", "ceph", "host", "cbs"]);
    let eligibility = check(&pod, &claims, &EligibilityConfig::default());
    assert!(eligibility.is_eligible(), "{:?}", eligibility.violations);
    let asked: Vec<String> = claims
        .asked()
        .into_iter()
        .map(|(namespace, name)| format!("{namespace}/{name}"))
        .collect();
    assert_eq!(asked, ["shop/nfs", "shop/ceph", "shop/host", "shop/cbs"]);
}

#[test]
fn claims_bound_to_other_volume_types_are_unsupported_and_named() {
    let claims = Claims::new([
        (
            "ebs",
            ClaimStatus::Bound(persistent_volume(
                "pv-ebs",
                json!({ "awsElasticBlockStore": { "volumeID": "vol-1" } }),
            )),
        ),
        (
            "other-csi",
            ClaimStatus::Bound(persistent_volume(
                "pv-cfs",
                json!({ "csi": { "driver": "com.tencent.cloud.csi.cfs", "volumeHandle": "cfs-1" } }),
            )),
        ),
        (
            "flex",
            ClaimStatus::Bound(persistent_volume(
                "pv-flex",
                json!({ "flexVolume": { "driver": "cloud.tencent.com/qcloud-cbs" } }),
            )),
        ),
        (
            "bare",
            ClaimStatus::Bound(persistent_volume("pv-bare", json!({}))),
        ),
    ]);
    let pod = claiming(&["ebs", "other-csi", "flex", "bare"]);
    let found = check(&pod, &claims, &EligibilityConfig::default()).violations;
    assert!(
        found
            .iter()
            .all(|violation| violation.reason == Reason::UnsupportedVolume),
        "{found:?}"
    );
    let expected = [
        ("pv-ebs", "awsElasticBlockStore"),
        ("pv-cfs", "csi (driver \"com.tencent.cloud.csi.cfs\")"),
        ("pv-flex", "flexVolume (driver \"cloud.tencent.com/qcloud-cbs\")"),
        ("pv-bare", "unknown (no volume source)"),
    ];
    assert_eq!(found.len(), expected.len(), "{found:?}");
    for (violation, (volume, kind)) in found.iter().zip(expected) {
        assert!(
            violation
                .message
                .contains(&format!("PersistentVolume \"{volume}\" of type {kind}")),
            "{}",
            violation.message
        );
    }
}

#[test]
fn unbound_or_missing_claims_are_not_eligible_yet() {
    let claims = Claims::new([("pending", ClaimStatus::Unbound)]);
    let pod = claiming(&["pending", "absent"]);
    let found = check(&pod, &claims, &EligibilityConfig::default()).violations;
    assert_eq!(
        found.iter().map(|v| v.reason).collect::<Vec<_>>(),
        [Reason::UnboundVolume, Reason::UnboundVolume]
    );
    assert!(
        found[0].message.contains("\"pending\", which is not bound"),
        "{}",
        found[0].message
    );
    assert!(
        found[1].message.contains("\"absent\", which does not exist"),
        "{}",
        found[1].message
    );
}

#[test]
fn generic_ephemeral_volumes_are_checked_through_the_claim_kubernetes_creates_for_them() {
    let pod = web_pod(json!({
        "containers": [{ "name": "web", "image": "nginx" }],
        "volumes": [{ "name": "scratch", "ephemeral": { "volumeClaimTemplate": { "spec": {} } } }]
    }));
    let claims = Claims::new([(
        "web-5d8f-x7k2p-scratch",
        ClaimStatus::Bound(persistent_volume(
            "pv-local",
            json!({ "local": { "path": "/mnt/ssd" } }),
        )),
    )]);
    let found = check(&pod, &claims, &EligibilityConfig::default()).violations;
    assert_eq!(
        found.iter().map(|v| v.reason).collect::<Vec<_>>(),
        [Reason::UnsupportedVolume]
    );
    assert!(found[0].message.contains("of type local"), "{}", found[0].message);
}

#[test]
fn inline_pod_volumes_are_not_persistent_volumes_and_need_no_lookup() {
    let pod = web_pod(json!({
        "containers": [{ "name": "web", "image": "nginx" }],
        "volumes": [
            { "name": "share", "nfs": { "server": "10.0.0.2", "path": "/" } },
            { "name": "config", "configMap": { "name": "web" } },
            { "name": "token", "projected": { "sources": [] } },
            { "name": "disk", "awsElasticBlockStore": { "volumeID": "vol-1" } }
        ]
    }));
    let claims = Claims::new([]);
    assert!(check(&pod, &claims, &EligibilityConfig::default()).is_eligible());
    assert_eq!(claims.asked(), []);
}

#[test]
fn claim_status_follows_the_claim_phase_and_its_volume() {
    let claim = |phase: &str, volume: &str| -> PersistentVolumeClaim {
        serde_json::from_value(json!({ "spec": { "volumeName": volume }, "status": { "phase": phase } }))
            .expect("PVC")
    };
    let pv = persistent_volume("pv-1", json!({ "nfs": { "server": "s", "path": "/" } }));
    let known = |name: &str| (name == "pv-1").then(|| pv.clone());
    assert_eq!(
        ClaimStatus::of(Some(&claim("Bound", "pv-1")), known),
        ClaimStatus::Bound(pv.clone())
    );
    assert_eq!(
        ClaimStatus::of(Some(&claim("Bound", "pv-gone")), known),
        ClaimStatus::Unbound
    );
    assert_eq!(
        ClaimStatus::of(Some(&claim("Pending", "pv-1")), known),
        ClaimStatus::Unbound
    );
    assert_eq!(
        ClaimStatus::of(Some(&claim("Bound", "")), known),
        ClaimStatus::Unbound
    );
    assert_eq!(ClaimStatus::of(None, known), ClaimStatus::NotFound);
}

#[test]
fn every_violation_is_reported_in_rule_order() {
    let mut pod = web_pod(json!({
        "securityContext": { "sysctls": [{ "name": "net.ipv4.ip_local_port_range", "value": "1024 65535" }] },
        "containers": [{
            "name": "web", "image": "nginx",
            "ports": [{ "containerPort": 62000 }],
            "livenessProbe": { "grpc": { "port": 63000 } }
        }],
        "volumes": [
            { "name": "a", "persistentVolumeClaim": { "claimName": "pending" } },
            { "name": "b", "persistentVolumeClaim": { "claimName": "ebs" } }
        ]
    }));
    pod.metadata.namespace = Some("kube-system".to_owned());
    pod.metadata.annotations = serde_json::from_value(json!({
        VPC_IP_CLAIM_DELETE_POLICY: "Never",
        GALAXY_RELEASE_POLICY: "never"
    }))
    .expect("annotations");
    pod.metadata.owner_references = serde_json::from_value(json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-1", "controller": true
    }]))
    .expect("owner references");
    let claims = |_: &str, name: &str| match name {
        "pending" => ClaimStatus::Unbound,
        _ => ClaimStatus::Bound(persistent_volume(
            "pv-ebs",
            json!({ "awsElasticBlockStore": { "volumeID": "v" } }),
        )),
    };
    let eligibility = check(&pod, &claims, &EligibilityConfig::default());
    assert_eq!(eligibility.reasons(), Reason::ELIGIBILITY_RULES);
    assert_eq!(
        eligibility.first().map(|violation| violation.reason),
        Some(Reason::DaemonsetForbidden)
    );
    assert_eq!(
        check(&pod, &claims, &EligibilityConfig::default()),
        eligibility,
        "same pod, same answer"
    );
}
