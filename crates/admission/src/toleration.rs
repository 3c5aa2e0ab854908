//! Writing the burst toleration into a pod, conflict-safe. Kubernetes lets an update append to
//! `spec.tolerations` (and nothing else in the pod spec), so a JSON patch appends it; the patch
//! also carries the resourceVersion the decision was made on, which the apiserver checks as a
//! precondition (409 Conflict otherwise). So it never lands on a pod that changed in between:
//! not twice when a second replica or a user added it meanwhile, not on a pod bound meanwhile.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tke_policy::burst_toleration;

/// The field manager that shows in the pod's managedFields.
pub const FIELD_MANAGER: &str = "eks-admission";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod {0} has no resourceVersion to make a conflict-safe patch against")]
    NoResourceVersion(String),
    #[error("building the toleration patch: {0}")]
    Encode(#[source] serde_json::Error),
    /// The pod changed since it was read; read it again and decide again.
    #[error("pod {0} changed since it was read")]
    Stale(String),
    #[error("patching pod {pod}: {source}")]
    Patch {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JSON patch that appends the burst toleration to exactly this version of the pod.
pub fn patch_for(pod: &Pod) -> Result<json_patch::Patch> {
    let resource_version = pod
        .metadata
        .resource_version
        .as_deref()
        .filter(|version| !version.is_empty())
        .ok_or_else(|| Error::NoResourceVersion(name(pod)))?;
    let toleration = serde_json::to_value(burst_toleration()).map_err(Error::Encode)?;
    let has_tolerations = pod.spec.as_ref().is_some_and(|spec| spec.tolerations.is_some());
    let append: Value = if has_tolerations {
        json!({"op": "add", "path": "/spec/tolerations/-", "value": toleration})
    } else {
        json!({"op": "add", "path": "/spec/tolerations", "value": [toleration]})
    };
    let operations = json!([
        // Not a `test` operation: a failed test comes back as an anonymous 422 that cannot be
        // told from a validation error, a stale resourceVersion as 409 Conflict.
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version},
        append,
    ]);
    serde_json::from_value(operations).map_err(Error::Encode)
}

/// Appends the burst toleration to the pod as read; [`Error::Stale`] when it changed since.
pub async fn add(api: &Api<Pod>, pod: &Pod) -> Result<Pod> {
    let patch = patch_for(pod)?;
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(|source| match &source {
            kube::Error::Api(status) if is_stale(status) => Error::Stale(self::name(pod)),
            _ => Error::Patch {
                pod: self::name(pod),
                source,
            },
        })
}

fn is_stale(status: &kube::core::Status) -> bool {
    status.code == 409
}

fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(resource_version: Option<&str>, tolerations: Option<Vec<Toleration>>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".to_owned()),
                namespace: Some("shop".to_owned()),
                resource_version: resource_version.map(str::to_owned),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                tolerations,
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn as_json(patch: &json_patch::Patch) -> Value {
        serde_json::to_value(patch).unwrap_or_default()
    }

    #[test]
    fn the_patch_appends_the_toleration_to_the_version_it_was_decided_on() {
        let existing = Toleration {
            key: Some("node.kubernetes.io/not-ready".to_owned()),
            ..Toleration::default()
        };
        let patch = patch_for(&pod(Some("4711"), Some(vec![existing]))).map(|patch| as_json(&patch));
        let expected = json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "4711"},
            {"op": "add", "path": "/spec/tolerations/-",
             "value": {"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"}},
        ]);
        assert_eq!(patch.ok(), Some(expected));
    }

    #[test]
    fn a_pod_without_tolerations_gets_a_list_of_one() {
        let patch = patch_for(&pod(Some("12"), None)).map(|patch| as_json(&patch));
        let expected = json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "12"},
            {"op": "add", "path": "/spec/tolerations",
             "value": [{"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"}]},
        ]);
        assert_eq!(patch.ok(), Some(expected));
    }

    #[test]
    fn a_pod_without_a_resource_version_is_refused_rather_than_patched_blindly() {
        for version in [None, Some("")] {
            let error = patch_for(&pod(version, None))
                .err()
                .map(|error| error.to_string());
            assert_eq!(
                error.as_deref(),
                Some("pod shop/web-1 has no resourceVersion to make a conflict-safe patch against")
            );
        }
    }

    #[test]
    fn conflicts_count_as_stale_and_other_refusals_do_not() {
        let status = |code: u16, reason: &str| kube::core::Status {
            code,
            reason: reason.to_owned(),
            ..kube::core::Status::default()
        };
        assert!(is_stale(&status(409, "Conflict")));
        assert!(!is_stale(&status(422, "Invalid")));
        assert!(!is_stale(&status(403, "Forbidden")));
    }
}
