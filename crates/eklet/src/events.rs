//! Kubernetes events eklet publishes, with stable reasons: users and alerts match on these
//! strings, so they are constants and never renamed. Eligibility refusals use the policy
//! crate's reason codes (`DaemonsetForbidden`, …) as the event reason.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Client, Resource};
use tke_runtime::events::{Event, EventType, Recorder, Reporter};

/// The sandbox was created in the cloud.
pub const SANDBOX_CREATED: &str = "SandboxCreated";
/// The sandbox is running.
pub const SANDBOX_RUNNING: &str = "SandboxRunning";
/// The cloud refused the sandbox for a reason retrying cannot fix; the note has the cloud's
/// code and message.
pub const SANDBOX_CREATE_FAILED: &str = "SandboxCreateFailed";
/// A transient cloud error (throttling, 5xx, timeout); creation is retried with backoff.
pub const SANDBOX_CREATE_RETRYING: &str = "SandboxCreateRetrying";
/// The subnet's zone has no capacity now; creation is retried.
pub const RESOURCES_SOLD_OUT: &str = "ResourcesSoldOut";
/// The sandbox did not run within `--wait-sandbox-running-timeout`.
pub const SANDBOX_RUNNING_TIMEOUT: &str = "SandboxRunningTimeout";
/// The sandbox disappeared from the cloud while its pod still existed.
pub const SANDBOX_LOST: &str = "SandboxLost";
/// The sandbox was deleted because its pod is being deleted.
pub const SANDBOX_DELETED: &str = "SandboxDeleted";
/// A sandbox created before this eklet started was taken over.
pub const SANDBOX_ADOPTED: &str = "SandboxAdopted";
/// The pod needs something the active provider cannot do; the note names the feature.
pub const UNSUPPORTED_BY_PROVIDER: &str = "UnsupportedByProvider";
/// The automatically mounted service-account token is not mounted in the sandbox.
pub const SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED: &str = "ServiceAccountTokenNotMounted";
/// A ConfigMap, Secret or key the pod needs is missing (the kubelet's reason).
pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// An `eks.tke.cloud.tencent.com/resolv-conf` annotation could not be parsed; the previous
/// setting (node) or the node's setting (pod) is used.
pub const INVALID_RESOLV_CONF: &str = "InvalidResolvConf";
/// The pod has a field eklet cannot interpret (the apiserver let it through).
pub const INVALID_POD_SPEC: &str = "InvalidPodSpec";
/// The virtual node is cordoned, so the pod gets no sandbox until it is uncordoned.
pub const SUBNET_CORDONED: &str = "SubnetCordoned";

/// Publishes events as `eklet` on behalf of one virtual-node manager instance. Failures to
/// publish are logged, never fatal: an event is a courtesy, the pod status is the contract.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, instance: &str) -> Events {
        let reporter = Reporter {
            controller: "eklet".into(),
            instance: Some(instance.to_owned()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
        }
    }

    pub async fn pod(&self, pod: &Pod, warning: bool, reason: &str, note: impl Into<String>) {
        let reference = pod.object_ref(&());
        self.publish(&reference, warning, reason, note.into()).await;
    }

    pub async fn node(&self, node: &Node, warning: bool, reason: &str, note: impl Into<String>) {
        let reference = node.object_ref(&());
        self.publish(&reference, warning, reason, note.into()).await;
    }

    async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            tracing::warn!(%error, reason, object = ?reference.name, "cannot publish event");
        }
    }
}
