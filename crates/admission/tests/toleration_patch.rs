//! The conflict-safe toleration patch against a real apiserver: it lands once on the pod as
//! read, and a pod that changed in between is left alone for the caller to read again.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tke_admission::toleration::{self, Error};
use tke_policy::virtual_node::TAINT_KEY;
use tke_testbed::ControlPlane;

fn burst_tolerations(pod: &Pod) -> usize {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.tolerations.as_ref())
        .map_or(0, |tolerations| {
            tolerations
                .iter()
                .filter(|t| t.key.as_deref() == Some(TAINT_KEY))
                .count()
        })
}

#[tokio::test]
async fn the_toleration_lands_once_and_never_on_a_pod_that_changed_since_it_was_read() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let namespace = cp.namespace("patch").await?;
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, &namespace);
    // A scheduler that does not exist keeps the pod unbound and otherwise untouched, so the only
    // changes to it are this test's.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "waiting"},
        "spec": {
            "schedulerName": "no-such-scheduler",
            "containers": [{"name": "web", "image": "nginx"}]
        }
    }))?;
    let as_read = pods.create(&PostParams::default(), &pod).await?;
    let default_tolerations = as_read
        .spec
        .as_ref()
        .and_then(|spec| spec.tolerations.clone())
        .unwrap_or_default();

    let labelled = pods
        .patch(
            "waiting",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    let stale = toleration::add(&pods, &as_read).await;
    assert!(
        matches!(stale, Err(Error::Stale(_))),
        "a patch on the old version is refused as stale: {stale:?}"
    );
    assert_eq!(
        burst_tolerations(&pods.get("waiting").await?),
        0,
        "the refused patch changed nothing"
    );

    let tolerated = toleration::add(&pods, &labelled).await?;
    assert_eq!(burst_tolerations(&tolerated), 1);
    let again = toleration::add(&pods, &labelled).await;
    assert!(
        matches!(again, Err(Error::Stale(_))),
        "a second patch from the same read is refused: {again:?}"
    );

    let now = pods.get("waiting").await?;
    assert_eq!(burst_tolerations(&now), 1, "exactly one burst toleration");
    let tolerations = now
        .spec
        .as_ref()
        .and_then(|spec| spec.tolerations.clone())
        .unwrap_or_default();
    assert_eq!(
        &tolerations[..default_tolerations.len()],
        &default_tolerations[..],
        "existing tolerations are kept"
    );
    assert_eq!(
        now.metadata.labels,
        Some(BTreeMap::from([("touched".to_owned(), "yes".to_owned())]))
    );
    Ok(())
}
