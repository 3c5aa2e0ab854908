//! The PersistentVolume rule: a pod's claims must be bound to volumes the cloud sandbox can
//! mount. The claims and volumes come through [`VolumeLookup`], so the rule stays pure and each
//! caller answers from whatever cache it keeps.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod};

use crate::quote::quoted;
use crate::reason::{Reason, Violation};
use crate::workload::namespace_of;

/// The one CSI driver whose volumes a cloud sandbox can mount (Tencent Cloud Block Storage).
pub const CBS_CSI_DRIVER: &str = "com.tencent.cloud.csi.cbs";

/// What is known about a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimStatus {
    /// Bound, with the PersistentVolume it is bound to.
    Bound(Arc<PersistentVolume>),
    /// Exists but is not bound yet, or its volume is not known yet.
    Unbound,
    /// No such claim.
    NotFound,
}

impl ClaimStatus {
    /// The status of `claim` (`None`: not found), finding its volume by name with `volume`.
    pub fn of(
        claim: Option<&PersistentVolumeClaim>,
        volume: impl FnOnce(&str) -> Option<Arc<PersistentVolume>>,
    ) -> ClaimStatus {
        let Some(claim) = claim else {
            return ClaimStatus::NotFound;
        };
        let bound = claim.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Bound");
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|spec| spec.volume_name.as_deref())
            .filter(|name| !name.is_empty());
        match volume_name.filter(|_| bound).and_then(volume) {
            Some(volume) => ClaimStatus::Bound(volume),
            None => ClaimStatus::Unbound,
        }
    }
}

/// Answers "what is claim `name` in `namespace`?" for the volume rule.
pub trait VolumeLookup {
    fn claim(&self, namespace: &str, name: &str) -> ClaimStatus;
}

impl<F: Fn(&str, &str) -> ClaimStatus> VolumeLookup for F {
    fn claim(&self, namespace: &str, name: &str) -> ClaimStatus {
        self(namespace, name)
    }
}

/// The volume type of a PersistentVolume as the user wrote it, e.g. `nfs` or
/// `csi (driver ebs.csi.aws.com)`.
pub fn volume_type(spec: Option<&PersistentVolumeSpec>) -> String {
    let Some(spec) = spec else {
        return "unknown (no spec)".to_owned();
    };
    if let Some(csi) = &spec.csi {
        return format!("csi (driver {})", quoted(&csi.driver));
    }
    if let Some(flex) = &spec.flex_volume {
        return format!("flexVolume (driver {})", quoted(&flex.driver));
    }
    let types = [
        ("nfs", spec.nfs.is_some()),
        ("cephfs", spec.cephfs.is_some()),
        ("hostPath", spec.host_path.is_some()),
        ("awsElasticBlockStore", spec.aws_elastic_block_store.is_some()),
        ("azureDisk", spec.azure_disk.is_some()),
        ("azureFile", spec.azure_file.is_some()),
        ("cinder", spec.cinder.is_some()),
        ("fc", spec.fc.is_some()),
        ("flocker", spec.flocker.is_some()),
        ("gcePersistentDisk", spec.gce_persistent_disk.is_some()),
        ("glusterfs", spec.glusterfs.is_some()),
        ("iscsi", spec.iscsi.is_some()),
        ("local", spec.local.is_some()),
        ("photonPersistentDisk", spec.photon_persistent_disk.is_some()),
        ("portworxVolume", spec.portworx_volume.is_some()),
        ("quobyte", spec.quobyte.is_some()),
        ("rbd", spec.rbd.is_some()),
        ("scaleIO", spec.scale_io.is_some()),
        ("storageos", spec.storageos.is_some()),
        ("vsphereVolume", spec.vsphere_volume.is_some()),
    ];
    types
        .into_iter()
        .find_map(|(name, set)| set.then(|| name.to_owned()))
        .unwrap_or_else(|| "unknown (no volume source)".to_owned())
}

/// Whether a cloud sandbox can mount this PersistentVolume: nfs, cephfs, hostPath, or CSI with
/// the Tencent CBS driver. The in-tree/flex `qcloudcbs` plugin is not accepted: the sandbox
/// attaches CBS disks through the CSI driver only.
pub fn is_supported_volume(spec: Option<&PersistentVolumeSpec>) -> bool {
    spec.is_some_and(|spec| {
        spec.nfs.is_some()
            || spec.cephfs.is_some()
            || spec.host_path.is_some()
            || spec.csi.as_ref().is_some_and(|csi| csi.driver == CBS_CSI_DRIVER)
    })
}

/// The claims the pod mounts, with the volume that mounts each: explicit claims, and the
/// claims Kubernetes creates for generic ephemeral volumes (named `<pod>-<volume>`).
fn claims_of(pod: &Pod) -> Vec<(&str, String)> {
    let volumes = pod.spec.as_ref().and_then(|spec| spec.volumes.as_ref());
    let pod_name = pod.metadata.name.as_deref();
    volumes
        .into_iter()
        .flatten()
        .filter_map(|volume| {
            if let Some(claim) = &volume.persistent_volume_claim {
                return Some((volume.name.as_str(), claim.claim_name.clone()));
            }
            let ephemeral = volume.ephemeral.as_ref()?;
            ephemeral.volume_claim_template.as_ref()?;
            Some((volume.name.as_str(), format!("{}-{}", pod_name?, volume.name)))
        })
        .collect()
}

pub(super) fn check_volumes(pod: &Pod, lookup: &dyn VolumeLookup, violations: &mut Vec<Violation>) {
    let namespace = namespace_of(pod);
    for (volume, claim) in claims_of(pod) {
        let (volume, claim_shown) = (quoted(volume), quoted(&claim));
        match lookup.claim(namespace, &claim) {
            ClaimStatus::Bound(pv) if is_supported_volume(pv.spec.as_ref()) => {}
            ClaimStatus::Bound(pv) => violations.push(Violation::new(
                Reason::UnsupportedVolume,
                format!(
                    "volume {volume} uses PersistentVolume {} of type {} through claim {claim_shown}; a cloud \
                     sandbox mounts only nfs, cephfs, hostPath and Tencent CBS (CSI driver {CBS_CSI_DRIVER}) \
                     volumes, so use one of those or keep the pod local",
                    quoted(pv.metadata.name.as_deref().unwrap_or_default()),
                    volume_type(pv.spec.as_ref()),
                ),
            )),
            ClaimStatus::Unbound => violations.push(Violation::new(
                Reason::UnboundVolume,
                format!(
                    "volume {volume} uses PersistentVolumeClaim {claim_shown}, which is not bound to a \
                     PersistentVolume yet; the pod can burst once it is bound"
                ),
            )),
            ClaimStatus::NotFound => violations.push(Violation::new(
                Reason::UnboundVolume,
                format!(
                    "volume {volume} uses PersistentVolumeClaim {claim_shown}, which does not exist in namespace \
                     {}; create it (the pod cannot start anywhere without it)",
                    quoted(namespace)
                ),
            )),
        }
    }
}
