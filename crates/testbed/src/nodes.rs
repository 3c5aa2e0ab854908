//! Local "IDC" nodes simulated by kwok: the test creates the Node objects, kwok keeps them Ready and
//! runs the pods bound to them.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{Node, NodeSpec as CoreNodeSpec, NodeStatus},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::{Result, wait};

/// The annotation kwok is told to manage nodes by.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A local node: its name, allocatable resources and extra labels.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// A node with 4 CPUs, 8Gi of memory and room for 110 pods.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
        }
    }

    pub fn cpu(mut self, cpu: &str) -> Self {
        self.cpu = cpu.into();
        self
    }

    pub fn memory(mut self, memory: &str) -> Self {
        self.memory = memory.into();
        self
    }

    pub fn pods(mut self, pods: u32) -> Self {
        self.pods = pods;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn to_node(&self) -> Node {
        let mut labels = self.labels.clone();
        for (k, v) in [
            ("kubernetes.io/hostname", self.name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("type", "kwok"),
        ] {
            labels.entry(k.into()).or_insert_with(|| v.into());
        }
        let resources: BTreeMap<String, Quantity> = [
            ("cpu", self.cpu.clone()),
            ("memory", self.memory.clone()),
            ("pods", self.pods.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(
                    [
                        (KWOK_ANNOTATION.to_string(), "fake".to_string()),
                        ("node.alpha.kubernetes.io/ttl".into(), "0".into()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(CoreNodeSpec {
                provider_id: Some(format!("kwok://{}", self.name)),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                allocatable: Some(resources.clone()),
                capacity: Some(resources),
                ..Default::default()
            }),
        }
    }
}

/// Creates the nodes and waits until each is Ready without the not-ready taint that the
/// node-lifecycle controller removes.
pub async fn create(client: &Client, specs: &[NodeSpec]) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for spec in specs {
        api.create(&PostParams::default(), &spec.to_node()).await?;
    }
    for spec in specs {
        let what = format!("node {} Ready and schedulable", spec.name);
        wait::until(Duration::from_secs(90), &what, || {
            let api = api.clone();
            let name = spec.name.clone();
            async move {
                api.get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|n| is_ready_and_untainted(&n))
            }
        })
        .await?;
    }
    Ok(())
}

/// Waits until node `name` (any node: kwok's, a virtual node) reports Ready.
pub async fn wait_ready(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    wait::until(timeout, &format!("node {name} Ready"), || {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| is_ready(&n))
        }
    })
    .await
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_ready_and_untainted(node: &Node) -> bool {
    let ready = is_ready(node);
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
    ready && !tainted
}
