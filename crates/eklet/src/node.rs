//! The virtual nodes: one Node per configured subnet, registered with the labels, annotation and
//! taint of SPEC §3, kept Ready by a node Lease renewed every 10 s and a status refreshed every
//! minute — from tasks that never wait on the cloud, so a cloud outage cannot make the node
//! NotReady and get its pods evicted. It also watches its own Node for what users change on it:
//! a cordon (no new sandboxes for that subnet) and the `resolv-conf` annotation.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{
            DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
            NodeSystemInfo,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time},
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tke_policy::virtual_node;
use tokio::sync::mpsc;

use crate::{config::Config, config::Subnet, dns, events, events::Events, provider::DnsSpec};

/// The version `kubectl get node` shows for a virtual node.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"), "-eklet");

/// Node leases live here, named after their node.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Same as the kubelet and virtual-kubelet: renewed every 10 s, a quarter of its duration.
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The full status is rewritten this often even when nothing changed (heartbeat time).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node {node}: {source}")]
    Kube {
        node: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What eklet currently knows about a virtual node that users control.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub subnet: String,
    pub zone: String,
    pub cordoned: bool,
    /// The last valid `resolv-conf` annotation; a malformed one keeps the previous setting.
    pub resolv_conf: Option<DnsSpec>,
    /// The annotation text last looked at, so one bad value is reported once.
    pub resolv_conf_seen: Option<String>,
}

/// The views of every virtual node of this eklet, by node name.
#[derive(Debug, Default)]
pub struct NodeViews {
    views: RwLock<HashMap<String, NodeView>>,
}

impl NodeViews {
    pub fn new(config: &Config) -> NodeViews {
        let views = config
            .subnets
            .iter()
            .map(|subnet| {
                let name = virtual_node::node_name(&subnet.id);
                let view = NodeView {
                    name: name.clone(),
                    subnet: subnet.id.clone(),
                    zone: subnet.zone.clone(),
                    ..NodeView::default()
                };
                (name, view)
            })
            .collect();
        NodeViews {
            views: RwLock::new(views),
        }
    }

    pub fn get(&self, node: &str) -> Option<NodeView> {
        self.views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn update<T>(&self, node: &str, change: impl FnOnce(&mut NodeView) -> T) -> Option<T> {
        self.views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(node)
            .map(change)
    }
}

/// The Node object eklet registers for a subnet: metadata and spec.
pub fn desired_node(subnet: &Subnet) -> Node {
    let name = virtual_node::node_name(&subnet.id);
    let mut labels = virtual_node::node_labels(&subnet.zone);
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let annotations = BTreeMap::from([(virtual_node::SUBNET_ANNOTATION.to_owned(), subnet.id.clone())]);
    Node {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: Some(vec![virtual_node::taint()]),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The node feature that makes a 1.36 apiserver proxy WebSocket streaming to the kubelet as is
/// (KEP-4006, kubernetes#136256).
pub const EXTEND_WEBSOCKETS_TO_KUBELET: &str = "ExtendWebSocketsToKubelet";

/// The status eklet reports for a virtual node whose kubelet API is on `kubelet_port`.
pub fn desired_status(
    config: &Config,
    provider: &str,
    kubelet_port: u16,
    now: Timestamp,
    previous: Option<&NodeStatus>,
) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", config.resources.cpu.clone()),
        ("memory", config.resources.memory.clone()),
        ("pods", config.resources.pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect();
    let previous_conditions = previous.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        // A transition time only moves when the status does.
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        }
    };
    NodeStatus {
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: config.node_ip.to_string(),
        }]),
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "EkletReady",
                "eklet is running and posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "EkletHasSufficientMemory",
                "cloud sandboxes bring their own memory",
            ),
            condition(
                "DiskPressure",
                "False",
                "EkletHasNoDiskPressure",
                "cloud sandboxes bring their own disk",
            ),
            condition(
                "PIDPressure",
                "False",
                "EkletHasSufficientPID",
                "cloud sandboxes bring their own PIDs",
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: String::new(),
            container_runtime_version: format!("eklet://{provider}"),
            kernel_version: String::new(),
            kube_proxy_version: String::new(),
            kubelet_version: VERSION.into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: format!("cloud sandboxes ({provider})"),
            system_uuid: String::new(),
            ..NodeSystemInfo::default()
        }),
        declared_features: config
            .declare_websocket_streaming
            .then(|| vec![EXTEND_WEBSOCKETS_TO_KUBELET.to_owned()]),
        ..NodeStatus::default()
    }
}

/// Creates the Node, or brings an existing one back to what eklet owns (labels, annotation,
/// taint) without touching what others added, then writes its status.
pub async fn register(client: &Client, config: &Config, provider: &str, subnet: &Subnet) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = desired_node(subnet);
    let name = desired.name_any();
    let kube = |source| Error::Kube {
        node: name.clone(),
        source,
    };
    let node = match nodes.get_opt(&name).await.map_err(kube)? {
        None => match nodes.create(&PostParams::default(), &desired).await {
            Ok(node) => node,
            // Created by a predecessor a moment ago.
            Err(kube::Error::Api(status)) if status.code == 409 => nodes.get(&name).await.map_err(kube)?,
            Err(e) => return Err(kube(e)),
        },
        Some(existing) => {
            let mut taints = existing
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let ours = virtual_node::taint();
            if !taints
                .iter()
                .any(|t| t.key == ours.key && t.effect == ours.effect)
            {
                taints.push(ours);
            }
            let patch = serde_json::json!({
                "metadata": {
                    "labels": desired.metadata.labels,
                    "annotations": desired.metadata.annotations,
                },
                "spec": { "taints": taints },
            });
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube)?
        }
    };
    write_status(client, config, provider, &name).await?;
    tracing::info!(node = %name, subnet = %subnet.id, zone = %subnet.zone, "virtual node registered");
    Ok(node)
}

async fn write_status(client: &Client, config: &Config, provider: &str, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let kube = |source| Error::Kube {
        node: name.to_owned(),
        source,
    };
    let current = nodes.get_status(name).await.map_err(kube)?;
    let port = config.kubelet_port_of(name).unwrap_or(config.kubelet_port);
    let status = desired_status(config, provider, port, Timestamp::now(), current.status.as_ref());
    // A strategic merge keeps conditions other components set (by type) and replaces ours.
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(kube)?;
    Ok(())
}

/// Renews the node's Lease every 10 s and rewrites its status every minute, re-registering the
/// node if someone deleted it. Never returns; errors are logged and retried on the next tick.
pub async fn heartbeat(client: Client, config: Arc<Config>, provider: &'static str, subnet: Subnet) {
    let name = virtual_node::node_name(&subnet.id);
    let mut ticker = tokio::time::interval(LEASE_RENEW_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let mut result = renew_lease(&client, &name).await;
        if result.is_ok() && last_status.elapsed() >= STATUS_INTERVAL {
            result = write_status(&client, &config, provider, &name).await;
            if result.is_ok() {
                last_status = tokio::time::Instant::now();
            }
        }
        match result {
            Ok(()) => {}
            Err(error) if error.is_not_found() => {
                tracing::warn!(node = %name, "virtual node is gone; registering it again");
                match register(&client, &config, provider, &subnet).await {
                    Ok(_) => last_status = tokio::time::Instant::now(),
                    Err(error) => tracing::warn!(node = %name, %error, "cannot register the virtual node"),
                }
            }
            Err(error) => tracing::warn!(node = %name, %error, "virtual node heartbeat failed"),
        }
    }
}

impl Error {
    fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(status), .. } if status.code == 404)
    }
}

/// Renews (or creates) the node's Lease; a 404 for the Node itself is reported as such so the
/// caller re-registers it.
async fn renew_lease(client: &Client, name: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let kube = |source| Error::Kube {
        node: name.to_owned(),
        source,
    };
    let now = MicroTime(Timestamp::now());
    let patch = serde_json::json!({ "spec": { "renewTime": now, "holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS } });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            // The lease is owned by the node, as the kubelet does it, so it goes when the node goes.
            let node = Api::<Node>::all(client.clone()).get(name).await.map_err(kube)?;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(LEASE_NAMESPACE.to_owned()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_owned(),
                        uid: node.uid().unwrap_or_default(),
                        ..OwnerReference::default()
                    }]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_owned()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(kube(e)),
            }
        }
        Err(e) => Err(kube(e)),
    }
}

/// Watches one virtual node for cordons and the `resolv-conf` annotation, updating `views`.
/// Sends on `uncordoned` when the node becomes schedulable again, so pods held back are
/// reconciled.
pub async fn watch(
    client: Client,
    views: Arc<NodeViews>,
    events: Events,
    node: String,
    uncordoned: mpsc::UnboundedSender<()>,
) {
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(nodes, config).default_backoff().applied_objects().boxed();
    while let Some(item) = stream.next().await {
        let object = match item {
            Ok(object) => object,
            Err(error) => {
                tracing::warn!(%node, %error, "watching the virtual node");
                continue;
            }
        };
        let cordoned = object
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let annotation = object.annotations().get(dns::RESOLV_CONF_ANNOTATION).cloned();
        let outcome = views.update(&node, |view| apply_node_change(view, cordoned, annotation));
        let Some(outcome) = outcome else { continue };
        if let Some(problem) = outcome.invalid_resolv_conf {
            events
                .node(
                    &object,
                    true,
                    events::INVALID_RESOLV_CONF,
                    format!(
                        "{}: {problem}; new sandboxes keep the previous DNS setting",
                        dns::RESOLV_CONF_ANNOTATION
                    ),
                )
                .await;
        }
        if outcome.uncordoned {
            tracing::info!(%node, "virtual node uncordoned");
            let _ = uncordoned.send(());
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct NodeChange {
    uncordoned: bool,
    invalid_resolv_conf: Option<dns::Error>,
}

fn apply_node_change(view: &mut NodeView, cordoned: bool, annotation: Option<String>) -> NodeChange {
    let mut change = NodeChange {
        uncordoned: view.cordoned && !cordoned,
        ..NodeChange::default()
    };
    view.cordoned = cordoned;
    if annotation != view.resolv_conf_seen {
        match annotation.as_deref().map(dns::parse) {
            None => view.resolv_conf = None,
            Some(Ok(spec)) => view.resolv_conf = Some(spec),
            Some(Err(problem)) => change.invalid_resolv_conf = Some(problem),
        }
        view.resolv_conf_seen = annotation;
    }
    change
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::config::{Args, Config};
    use clap::Parser;

    fn config() -> Config {
        let args = Args::try_parse_from([
            "eklet",
            "--subnet",
            "subnet-bu17jw8a=ap-guangzhou-3",
            "--cluster-id",
            "cls-1",
            "--region",
            "ap-guangzhou",
            "--vpc-id",
            "vpc-1",
            "--node-ip",
            "10.0.0.7",
            "--node-pods",
            "300",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        Config::from_args(&args).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_node_is_named_labelled_annotated_and_tainted_as_the_spec_says() {
        let subnet = Subnet {
            id: "subnet-bu17jw8a".into(),
            zone: "ap-guangzhou-3".into(),
        };
        let node = desired_node(&subnet);
        assert_eq!(node.metadata.name.as_deref(), Some("eklet-subnet-bu17jw8a"));
        let labels = node.metadata.labels.clone().unwrap_or_default();
        for (key, value) in [
            ("node.kubernetes.io/instance-type", "eklet"),
            ("eks.tke.cloud.tencent.com/zone-name", "ap-guangzhou-3"),
            ("topology.kubernetes.io/zone", "ap-guangzhou-3"),
            ("eks.tke.cloud.tencent.com/version", "v2"),
            ("kubernetes.io/os", "linux"),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "label {key}");
        }
        assert_eq!(
            node.metadata
                .annotations
                .unwrap_or_default()
                .get("eks.tke.cloud.tencent.com/subnet-id")
                .map(String::as_str),
            Some("subnet-bu17jw8a")
        );
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (taints[0].key.as_str(), taints[0].effect.as_str()),
            ("eks.tke.cloud.tencent.com/eklet", "NoSchedule")
        );
        assert!(tke_policy::is_virtual_node(&desired_node(&subnet)));
    }

    #[test]
    fn the_node_declares_websocket_streaming_unless_told_not_to() {
        let declared = |config: &Config| {
            desired_status(config, "kubernetes", 10241, Timestamp::now(), None)
                .declared_features
                .unwrap_or_default()
        };
        let mut config = config();
        assert_eq!(declared(&config), vec![EXTEND_WEBSOCKETS_TO_KUBELET.to_owned()]);
        config.declare_websocket_streaming = false;
        assert!(declared(&config).is_empty());
    }

    #[test]
    fn the_status_is_ready_with_configured_capacity_address_port_and_version() {
        let config = config();
        let status = desired_status(&config, "tencent", 10241, Timestamp::now(), None);
        let ready = status
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        assert_eq!(ready.map(|c| c.status), Some("True".into()));
        assert_eq!(
            status
                .capacity
                .as_ref()
                .and_then(|c| c.get("pods"))
                .map(|q| q.0.as_str()),
            Some("300")
        );
        assert_eq!(status.allocatable, status.capacity);
        let address = status.addresses.unwrap_or_default().remove(0);
        assert_eq!(
            (address.type_.as_str(), address.address.parse::<IpAddr>().ok()),
            ("InternalIP", Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))))
        );
        assert_eq!(
            status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10241)
        );
        assert_eq!(
            status.node_info.map(|i| i.kubelet_version),
            Some("v0.1.0-eklet".to_owned())
        );
    }

    #[test]
    fn a_heartbeat_keeps_the_transition_time_of_an_unchanged_condition() {
        let config = config();
        let first = desired_status(
            &config,
            "tencent",
            10241,
            Timestamp::from_second(1_000).unwrap_or_default(),
            None,
        );
        let later = desired_status(
            &config,
            "tencent",
            10241,
            Timestamp::from_second(2_000).unwrap_or_default(),
            Some(&first),
        );
        let ready = |s: &NodeStatus| {
            s.conditions
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
        };
        let (first, later) = (ready(&first), ready(&later));
        assert_eq!(
            first.as_ref().and_then(|c| c.last_transition_time.clone()),
            later.as_ref().and_then(|c| c.last_transition_time.clone())
        );
        assert_ne!(
            first.and_then(|c| c.last_heartbeat_time),
            later.and_then(|c| c.last_heartbeat_time)
        );
    }

    #[test]
    fn a_malformed_resolv_conf_keeps_the_previous_setting_and_is_reported_once() {
        let mut view = NodeView::default();
        let good = Some("nameserver 4.4.4.4\n".to_owned());
        assert_eq!(apply_node_change(&mut view, false, good), NodeChange::default());
        assert_eq!(
            view.resolv_conf.as_ref().map(|d| d.nameservers.clone()),
            Some(vec!["4.4.4.4".to_owned()])
        );
        let bad = Some("nameserver four\n".to_owned());
        assert!(
            apply_node_change(&mut view, false, bad.clone())
                .invalid_resolv_conf
                .is_some()
        );
        assert_eq!(
            view.resolv_conf.as_ref().map(|d| d.nameservers.clone()),
            Some(vec!["4.4.4.4".to_owned()])
        );
        assert_eq!(
            apply_node_change(&mut view, false, bad).invalid_resolv_conf,
            None,
            "reported once"
        );
        apply_node_change(&mut view, false, None);
        assert_eq!(view.resolv_conf, None);
    }

    #[test]
    fn uncordoning_is_noticed_so_held_pods_are_reconciled() {
        let mut view = NodeView::default();
        assert!(!apply_node_change(&mut view, true, None).uncordoned);
        assert!(view.cordoned);
        assert!(apply_node_change(&mut view, false, None).uncordoned);
        assert!(!apply_node_change(&mut view, false, None).uncordoned);
    }
}
