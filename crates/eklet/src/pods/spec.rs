//! From a Pod to a provider-neutral [`SandboxSpec`]: what the pod references ([`needs`]), and,
//! once those objects are fetched, the spec itself ([`build`]) — env, volumes (contents only for
//! providers that can mount them), probes, DNS and image pull credentials — checked against the
//! provider's [`Capabilities`]. No I/O here: the caller fetches, this module decides.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use base64::Engine;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Container, PersistentVolume, Pod, Probe, Secret, Volume},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tke_policy::ClaimStatus;

use crate::{
    config::ApiServerAddress,
    dns, events,
    node::NodeView,
    pods::env::{self, Problem as EnvProblem},
    provider::{
        Capabilities, ContainerSpec, DnsSpec, Mount, PodIdentity, ProbeAction, ProbeSpec, RegistryCredential,
        Resources, RestartPolicy, SandboxName, SandboxSpec, VolumeKind, VolumeSource, VolumeSpec,
    },
    quantity,
};

/// Why a pod cannot get a sandbox (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The provider cannot honour something the pod needs; names the feature. Permanent.
    Unsupported(String),
    /// A referenced ConfigMap, Secret, key or claim is missing; retried.
    Config(String),
    /// The pod has a field eklet cannot interpret. Permanent.
    Invalid(String),
}

impl From<EnvProblem> for Problem {
    fn from(problem: EnvProblem) -> Problem {
        match problem {
            EnvProblem::Missing(message) => Problem::Config(message),
            EnvProblem::Unsupported(message) => Problem::Unsupported(message),
            EnvProblem::Invalid(message) => Problem::Invalid(message),
        }
    }
}

/// Something worth a Warning event that does not stop the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub message: String,
}

/// A projected service-account token as the TokenRequest API issued it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds the token is valid for.
    pub expires_in: Duration,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// What a pod refers to by name, to be fetched before [`build`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    /// A service-account token must be requested (only for providers that mount it).
    pub token: bool,
}

/// The fetched objects; absent names are simply not in the maps.
#[derive(Debug, Clone, Default)]
pub struct References {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    pub claims: BTreeMap<String, ClaimStatus>,
    pub token: Option<IssuedToken>,
}

/// The ConfigMap the controller manager publishes in every namespace with the cluster CA.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Whether a volume is the service-account token volume the apiserver adds to pods by itself
/// (`kube-api-access-*`).
pub fn is_automounted_token(volume: &Volume) -> bool {
    volume.name.starts_with("kube-api-access-")
        && volume.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        })
}

/// The claims a pod uses, explicitly or through generic ephemeral volumes (`<pod>-<volume>`).
pub fn claim_names(pod: &Pod) -> BTreeSet<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    volumes(pod)
        .iter()
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some(claim.claim_name.clone())
            } else {
                v.ephemeral.as_ref().map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

fn volumes(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.init_containers.as_deref().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .chain(spec.map(|s| s.containers.as_slice()).unwrap_or_default())
}

/// The names the pod refers to that a sandbox for `capabilities` needs.
pub fn needs(pod: &Pod, capabilities: &Capabilities) -> Needs {
    let mut needs = Needs {
        claims: claim_names(pod),
        ..Needs::default()
    };
    for container in all_containers(pod) {
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                needs.config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                needs.secrets.insert(r.name.clone());
            }
        }
        for var in container.env.iter().flatten() {
            let Some(source) = &var.value_from else { continue };
            if let Some(r) = &source.config_map_key_ref {
                needs.config_maps.insert(r.name.clone());
            }
            if let Some(r) = &source.secret_key_ref {
                needs.secrets.insert(r.name.clone());
            }
        }
    }
    for secret in pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or_default()
    {
        needs.secrets.insert(secret.name.clone());
    }
    // Volume contents are read only when the provider can mount them: a refused pod costs no
    // Secret reads.
    if capabilities.mounts(VolumeKind::Files) {
        for volume in volumes(pod) {
            if is_automounted_token(volume) && !capabilities.service_account_token {
                continue;
            }
            if let Some(cm) = &volume.config_map {
                needs.config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &volume.secret {
                needs.secrets.extend(secret.secret_name.clone());
            }
            for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(cm) = &source.config_map {
                    needs.config_maps.insert(cm.name.clone());
                }
                if let Some(secret) = &source.secret {
                    needs.secrets.insert(secret.name.clone());
                }
                if source.service_account_token.is_some() && capabilities.service_account_token {
                    needs.token = true;
                }
            }
        }
    }
    needs
}

/// Whether a volume projects a service-account token (the automounted `kube-api-access-…` or
/// one the pod declares).
pub fn holds_token(volume: &Volume) -> bool {
    volume.projected.as_ref().is_some_and(|p| {
        p.sources
            .iter()
            .flatten()
            .any(|s| s.service_account_token.is_some())
    })
}

/// What a token refresh reads: a new token and the objects the token volumes project beside it
/// (the cluster CA's ConfigMap) — not the pod's other ConfigMaps, Secrets or claims.
pub fn token_needs(pod: &Pod) -> Needs {
    let mut needs = Needs::default();
    for source in volumes(pod)
        .iter()
        .filter(|v| holds_token(v))
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
    {
        if let Some(cm) = &source.config_map {
            needs.config_maps.insert(cm.name.clone());
        }
        if let Some(secret) = &source.secret {
            needs.secrets.insert(secret.name.clone());
        }
        needs.token |= source.service_account_token.is_some();
    }
    needs
}

/// The pod's token volumes with their files, for a refresh in a running sandbox.
pub fn token_volumes(pod: &Pod, refs: &References) -> Result<Vec<VolumeSpec>, Problem> {
    volumes(pod)
        .iter()
        .filter(|v| holds_token(v))
        .map(|volume| {
            Ok(VolumeSpec {
                name: volume.name.clone(),
                source: files_source(pod, volume, refs)?,
            })
        })
        .collect()
}

/// Everything [`build`] needs besides the pod and the fetched objects.
pub struct Setting<'a> {
    pub cluster_id: &'a str,
    pub node: &'a NodeView,
    pub node_ip: &'a str,
    pub apiserver: &'a ApiServerAddress,
    pub capabilities: &'a Capabilities,
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

/// A spec ready for the provider, and warnings to show on the pod.
#[derive(Debug, Clone)]
pub struct Built {
    pub spec: SandboxSpec,
    pub notices: Vec<Notice>,
}

/// Builds the sandbox spec for a pod bound to `setting.node`.
pub fn build(pod: &Pod, refs: &References, setting: &Setting<'_>) -> Result<Built, Problem> {
    let caps = setting.capabilities;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Problem::Invalid("the pod has no spec".into()))?;
    let uid = pod
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Problem::Invalid("the pod has no uid".into()))?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| Problem::Invalid("the pod has no name".into()))?;
    let mut notices = Vec::new();

    let (volume_specs, skipped) = build_volumes(pod, refs, caps, &mut notices)?;

    let service = env::service_variables(setting.apiserver);
    let sources = env::Sources {
        pod,
        config_maps: &refs.config_maps,
        secrets: &refs.secrets,
        host_ip: setting.node_ip,
        pod_ip_available: caps.resolves_pod_ip,
        node_cpu_millis: setting.node_cpu_millis,
        node_memory_bytes: setting.node_memory_bytes,
    };
    let container = |c: &Container| build_container(c, &service, &sources, caps, &skipped);
    let containers = spec
        .containers
        .iter()
        .map(container)
        .collect::<Result<Vec<_>, _>>()?;
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(container)
        .collect::<Result<Vec<_>, _>>()?;
    if containers.is_empty() {
        return Err(Problem::Invalid("the pod has no containers".into()));
    }
    if spec.ephemeral_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Problem::Unsupported("ephemeral containers".into()));
    }

    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(other) => return Err(Problem::Invalid(format!("restartPolicy {other:?}"))),
    };

    let dns = dns_for(pod, setting.node, &mut notices);
    let registry_credentials = pull_credentials(pod, refs);
    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);

    Ok(Built {
        spec: SandboxSpec {
            name: SandboxName::for_pod(setting.cluster_id, &uid),
            pod: PodIdentity {
                namespace,
                name,
                uid,
                cluster_id: setting.cluster_id.to_owned(),
            },
            subnet_id: setting.node.subnet.clone(),
            zone: setting.node.zone.clone(),
            containers,
            init_containers,
            restart_policy,
            volumes: volume_specs,
            dns,
            registry_credentials,
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            termination_grace: Duration::from_secs(grace.unsigned_abs()),
            source: None,
        },
        notices,
    })
}

/// The volumes for the provider, and the names of volumes skipped (their mounts are dropped).
fn build_volumes(
    pod: &Pod,
    refs: &References,
    caps: &Capabilities,
    notices: &mut Vec<Notice>,
) -> Result<(Vec<VolumeSpec>, BTreeSet<String>), Problem> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut specs = Vec::new();
    let mut skipped = BTreeSet::new();
    let need = |kind: VolumeKind, what: String| {
        if caps.mounts(kind) {
            Ok(())
        } else {
            Err(Problem::Unsupported(what))
        }
    };
    for volume in volumes(pod) {
        let name = &volume.name;
        if is_automounted_token(volume) && !caps.service_account_token {
            notices.push(Notice {
                reason: events::SERVICE_ACCOUNT_TOKEN_NOT_MOUNTED,
                message: format!(
                    "the cloud provider cannot mount the service-account token volume {name:?}; the sandbox runs \
                     without it (set automountServiceAccountToken: false to silence this)"
                ),
            });
            skipped.insert(name.clone());
            continue;
        }
        let source = if let Some(nfs) = &volume.nfs {
            need(VolumeKind::Nfs, format!("nfs volume {name:?}"))?;
            VolumeSource::Nfs {
                server: nfs.server.clone(),
                path: nfs.path.clone(),
                read_only: nfs.read_only.unwrap_or(false),
            }
        } else if volume.persistent_volume_claim.is_some() || volume.ephemeral.is_some() {
            let claim = match &volume.persistent_volume_claim {
                Some(c) => c.claim_name.clone(),
                None => format!("{pod_name}-{name}"),
            };
            match refs.claims.get(&claim) {
                Some(ClaimStatus::Bound(pv)) => persistent_volume_source(name, &claim, pv, caps)?,
                _ => {
                    return Err(Problem::Config(format!(
                        "persistentvolumeclaim {claim:?} is not bound"
                    )));
                }
            }
        } else if volume.empty_dir.is_some() {
            need(VolumeKind::EmptyDir, format!("emptyDir volume {name:?}"))?;
            VolumeSource::EmptyDir
        } else if volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.projected.is_some()
            || volume.downward_api.is_some()
        {
            let kind = if volume.config_map.is_some() {
                "configMap"
            } else if volume.secret.is_some() {
                "secret"
            } else if volume.projected.is_some() {
                "projected"
            } else {
                "downwardAPI"
            };
            need(VolumeKind::Files, format!("{kind} volume {name:?}"))?;
            files_source(pod, volume, refs)?
        } else if volume.host_path.is_some() {
            // A sandbox is its own machine: there is no host path to share.
            return Err(Problem::Unsupported(format!("hostPath volume {name:?}")));
        } else {
            return Err(Problem::Unsupported(format!("volume {name:?} of its type")));
        };
        specs.push(VolumeSpec {
            name: name.clone(),
            source,
        });
    }
    Ok((specs, skipped))
}

fn persistent_volume_source(
    name: &str,
    claim: &str,
    pv: &Arc<PersistentVolume>,
    caps: &Capabilities,
) -> Result<VolumeSource, Problem> {
    let spec = pv
        .spec
        .as_ref()
        .ok_or_else(|| Problem::Config(format!("persistentvolume of claim {claim:?} has no spec")))?;
    let unsupported = |kind: &str| Problem::Unsupported(format!("{kind} volume {name:?} (claim {claim:?})"));
    if let Some(nfs) = &spec.nfs {
        if !caps.mounts(VolumeKind::Nfs) {
            return Err(unsupported("nfs"));
        }
        return Ok(VolumeSource::Nfs {
            server: nfs.server.clone(),
            path: nfs.path.clone(),
            read_only: nfs.read_only.unwrap_or(false),
        });
    }
    if let Some(csi) = spec
        .csi
        .as_ref()
        .filter(|c| c.driver == tke_policy::eligibility::CBS_CSI_DRIVER)
    {
        if !caps.mounts(VolumeKind::Cbs) {
            return Err(unsupported("cbs"));
        }
        return Ok(VolumeSource::Cbs {
            disk_id: csi.volume_handle.clone(),
        });
    }
    if spec.cephfs.is_some() {
        return Err(unsupported("cephfs"));
    }
    if spec.host_path.is_some() {
        return Err(unsupported("hostPath"));
    }
    Err(unsupported(&tke_policy::eligibility::volume_type(Some(spec))))
}

/// The files of a ConfigMap, Secret, projected or downward-API volume.
fn files_source(pod: &Pod, volume: &Volume, refs: &References) -> Result<VolumeSource, Problem> {
    let mut files = BTreeMap::new();
    let mut mode = 0o644;
    let config_map_files =
        |files: &mut BTreeMap<String, Vec<u8>>,
         name: &str,
         optional: bool,
         items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
            let Some(cm) = refs.config_maps.get(name) else {
                return if optional {
                    Ok(())
                } else {
                    Err(Problem::Config(format!("configmap {name:?} not found")))
                };
            };
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect();
            data.extend(
                cm.binary_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone())),
            );
            select(files, data, items, optional, &format!("ConfigMap {name}"))
        };
    let secret_files = |files: &mut BTreeMap<String, Vec<u8>>,
                        name: &str,
                        optional: bool,
                        items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
        let Some(secret) = refs.secrets.get(name) else {
            return if optional {
                Ok(())
            } else {
                Err(Problem::Config(format!("secret {name:?} not found")))
            };
        };
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        data.extend(
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
        );
        select(files, data, items, optional, &format!("Secret {name}"))
    };
    if let Some(cm) = &volume.config_map {
        mode = cm
            .default_mode
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(mode);
        config_map_files(
            &mut files,
            &cm.name,
            cm.optional.unwrap_or(false),
            cm.items.as_ref(),
        )?;
    } else if let Some(secret) = &volume.secret {
        mode = secret
            .default_mode
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(mode);
        let name = secret.secret_name.clone().unwrap_or_default();
        secret_files(
            &mut files,
            &name,
            secret.optional.unwrap_or(false),
            secret.items.as_ref(),
        )?;
    } else if let Some(downward) = &volume.downward_api {
        mode = downward
            .default_mode
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(mode);
        for item in downward.items.iter().flatten() {
            files.insert(item.path.clone(), downward_file(pod, item)?);
        }
    } else if let Some(projected) = &volume.projected {
        mode = projected
            .default_mode
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(mode);
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                config_map_files(
                    &mut files,
                    &cm.name,
                    cm.optional.unwrap_or(false),
                    cm.items.as_ref(),
                )?;
            }
            if let Some(secret) = &source.secret {
                secret_files(
                    &mut files,
                    &secret.name,
                    secret.optional.unwrap_or(false),
                    secret.items.as_ref(),
                )?;
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    files.insert(item.path.clone(), downward_file(pod, item)?);
                }
            }
            if let Some(token) = &source.service_account_token {
                let issued = refs
                    .token
                    .as_ref()
                    .ok_or_else(|| Problem::Config("no service-account token issued yet".into()))?;
                files.insert(token.path.clone(), issued.token.as_bytes().to_vec());
            }
            if source.cluster_trust_bundle.is_some() || source.pod_certificate.is_some() {
                return Err(Problem::Unsupported(format!(
                    "projected volume {:?} with cluster trust bundles or pod certificates",
                    volume.name
                )));
            }
        }
    }
    Ok(VolumeSource::Files { files, mode })
}

fn select(
    files: &mut BTreeMap<String, Vec<u8>>,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: bool,
    what: &str,
) -> Result<(), Problem> {
    match items {
        None => files.extend(data),
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.insert(item.path.clone(), value.clone());
                    }
                    None if optional => {}
                    None => {
                        return Err(Problem::Config(format!(
                            "couldn't find key {} in {what}",
                            item.key
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_file(
    pod: &Pod,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
) -> Result<Vec<u8>, Problem> {
    let Some(field) = &item.field_ref else {
        return Err(Problem::Unsupported(format!(
            "downwardAPI file {:?} with resourceFieldRef",
            item.path
        )));
    };
    let metadata = &pod.metadata;
    let map = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let value = match field.field_path.as_str() {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        "metadata.labels" => map(metadata.labels.as_ref()),
        "metadata.annotations" => map(metadata.annotations.as_ref()),
        other => return Err(Problem::Unsupported(format!("downwardAPI file field {other:?}"))),
    };
    Ok(value.into_bytes())
}

fn build_container(
    container: &Container,
    service: &[crate::provider::EnvVar],
    sources: &env::Sources<'_>,
    caps: &Capabilities,
    skipped: &BTreeSet<String>,
) -> Result<ContainerSpec, Problem> {
    let image = container
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Problem::Invalid(format!("container {:?} has no image", container.name)))?;
    let env = env::resolve(container, service, sources)?;
    let lookup = |name: &str| env.iter().find(|v| v.name == name).map(|v| v.value.clone());
    let expand_all = |items: &Option<Vec<String>>| {
        items
            .iter()
            .flatten()
            .map(|s| env::expand(s, lookup))
            .collect::<Vec<_>>()
    };
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        if skipped.contains(&mount.name) {
            continue;
        }
        if mount.sub_path_expr.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(Problem::Unsupported(format!(
                "subPathExpr in the mount of {:?} in container {:?}",
                mount.name, container.name
            )));
        }
        mounts.push(Mount {
            volume: mount.name.clone(),
            path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
            sub_path: mount.sub_path.clone().filter(|s| !s.is_empty()),
        });
    }
    if container.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(Problem::Unsupported(format!(
            "volumeDevices in container {:?}",
            container.name
        )));
    }
    let probe = |probe: &Option<Probe>, what: &str| -> Result<Option<ProbeSpec>, Problem> {
        let Some(probe) = probe else { return Ok(None) };
        let spec = probe_spec(container, probe, what)?;
        if !caps.probes.contains(&spec.action.kind()) {
            return Err(Problem::Unsupported(format!(
                "{:?} {what} probe in container {:?}",
                spec.action.kind(),
                container.name
            )));
        }
        Ok(Some(spec))
    };
    let liveness_probe = probe(&container.liveness_probe, "liveness")?;
    let readiness_probe = probe(&container.readiness_probe, "readiness")?;
    let startup_probe = probe(&container.startup_probe, "startup")?;
    if startup_probe.is_some() && !caps.startup_probe {
        return Err(Problem::Unsupported(format!(
            "startup probe in container {:?}",
            container.name
        )));
    }
    let capabilities = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    Ok(ContainerSpec {
        name: container.name.clone(),
        image,
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().filter(|w| !w.is_empty()),
        resources: resources(container)?,
        mounts,
        liveness_probe,
        readiness_probe,
        startup_probe,
        capabilities_add: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: capabilities.and_then(|c| c.drop.clone()).unwrap_or_default(),
        env,
    })
}

fn resources(container: &Container) -> Result<Resources, Problem> {
    let resources = container.resources.as_ref();
    let get = |limits: bool, key: &str| {
        resources
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .and_then(|m| m.get(key))
            .map(|q| q.0.clone())
    };
    let invalid = |e: quantity::Error| Problem::Invalid(format!("container {:?}: {e}", container.name));
    Ok(Resources {
        cpu_request_millis: get(false, "cpu")
            .map(|q| quantity::millis(&q))
            .transpose()
            .map_err(invalid)?,
        cpu_limit_millis: get(true, "cpu")
            .map(|q| quantity::millis(&q))
            .transpose()
            .map_err(invalid)?,
        memory_request_bytes: get(false, "memory")
            .map(|q| quantity::units(&q))
            .transpose()
            .map_err(invalid)?,
        memory_limit_bytes: get(true, "memory")
            .map(|q| quantity::units(&q))
            .transpose()
            .map_err(invalid)?,
        gpu: get(true, "nvidia.com/gpu")
            .or_else(|| get(false, "nvidia.com/gpu"))
            .map(|q| quantity::units(&q))
            .transpose()
            .map_err(invalid)?,
    })
}

fn probe_spec(container: &Container, probe: &Probe, what: &str) -> Result<ProbeSpec, Problem> {
    let port = |port: &IntOrString| -> Result<u16, Problem> {
        let number = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    Problem::Invalid(format!(
                        "{what} probe of container {:?} names unknown port {name:?}",
                        container.name
                    ))
                })?,
        };
        u16::try_from(number)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Problem::Invalid(format!("{what} probe port {number}")))
    };
    let action = if let Some(exec) = &probe.exec {
        ProbeAction::Exec {
            command: exec.command.clone().unwrap_or_default(),
        }
    } else if let Some(http) = &probe.http_get {
        ProbeAction::HttpGet {
            path: http.path.clone().unwrap_or_else(|| "/".into()),
            port: port(&http.port)?,
            scheme: http.scheme.clone().unwrap_or_else(|| "HTTP".into()),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::TcpSocket {
            port: port(&tcp.port)?,
        }
    } else if let Some(grpc) = &probe.grpc {
        ProbeAction::Grpc {
            port: port(&IntOrString::Int(grpc.port))?,
            service: grpc.service.clone(),
        }
    } else {
        return Err(Problem::Invalid(format!(
            "{what} probe of container {:?} has no action",
            container.name
        )));
    };
    Ok(ProbeSpec {
        action,
        initial_delay_seconds: probe.initial_delay_seconds.unwrap_or(0),
        period_seconds: probe.period_seconds.unwrap_or(10),
        timeout_seconds: probe.timeout_seconds.unwrap_or(1),
        success_threshold: probe.success_threshold.unwrap_or(1),
        failure_threshold: probe.failure_threshold.unwrap_or(3),
    })
}

/// The pod's annotation wins over a `dnsPolicy: None` dnsConfig, which wins over the node's
/// annotation. A malformed pod annotation is reported and falls back.
fn dns_for(pod: &Pod, node: &NodeView, notices: &mut Vec<Notice>) -> Option<DnsSpec> {
    if let Some(text) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(dns::RESOLV_CONF_ANNOTATION))
    {
        match dns::parse(text) {
            Ok(spec) => return Some(spec),
            Err(problem) => notices.push(Notice {
                reason: events::INVALID_RESOLV_CONF,
                message: format!(
                    "{}: {problem}; the node's DNS setting is used",
                    dns::RESOLV_CONF_ANNOTATION
                ),
            }),
        }
    }
    let spec = pod.spec.as_ref()?;
    if spec.dns_policy.as_deref() == Some("None")
        && let Some(config) = &spec.dns_config
    {
        return Some(DnsSpec {
            nameservers: config.nameservers.clone().unwrap_or_default(),
            searches: config.searches.clone().unwrap_or_default(),
            options: config
                .options
                .iter()
                .flatten()
                .filter_map(|o| o.name.clone().map(|n| (n, o.value.clone().unwrap_or_default())))
                .collect(),
        });
    }
    node.resolv_conf.clone()
}

/// Credentials from the pod's image pull secrets (`.dockerconfigjson` or legacy `.dockercfg`).
/// A missing or unreadable secret is skipped, as the kubelet does: the pull may still work.
fn pull_credentials(pod: &Pod, refs: &References) -> Vec<RegistryCredential> {
    let mut credentials = Vec::new();
    for reference in pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or_default()
    {
        let Some(data) = refs.secrets.get(&reference.name).and_then(|s| s.data.as_ref()) else {
            continue;
        };
        let auths: Option<serde_json::Map<String, serde_json::Value>> = data
            .get(".dockerconfigjson")
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
            .and_then(|v| v.get("auths").and_then(|a| a.as_object()).cloned())
            .or_else(|| {
                data.get(".dockercfg")
                    .and_then(|b| serde_json::from_slice(&b.0).ok())
            });
        for (server, entry) in auths.into_iter().flatten() {
            let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (username, password) = match (field("username"), field("password")) {
                (Some(u), Some(p)) => (u, p),
                _ => {
                    let decoded = field("auth")
                        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                        .and_then(|b| String::from_utf8(b).ok());
                    match decoded.as_deref().and_then(|d| d.split_once(':')) {
                        Some((u, p)) => (u.to_owned(), p.to_owned()),
                        None => continue,
                    }
                }
            };
            credentials.push(RegistryCredential {
                server,
                username,
                password,
            });
        }
    }
    credentials
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use serde_json::json;

    use super::*;
    use crate::provider::ProbeKind;

    fn tencent_like() -> Capabilities {
        Capabilities {
            volumes: vec![VolumeKind::Nfs, VolumeKind::Cbs],
            service_account_token: false,
            probes: vec![ProbeKind::Exec, ProbeKind::HttpGet, ProbeKind::TcpSocket],
            startup_probe: false,
            reports_readiness: false,
            logs: true,
            stats: false,
            resolves_pod_ip: false,
            exec: false,
            attach: false,
            port_forward: false,
        }
    }

    fn everything() -> Capabilities {
        Capabilities {
            volumes: vec![
                VolumeKind::Nfs,
                VolumeKind::Cbs,
                VolumeKind::EmptyDir,
                VolumeKind::Files,
            ],
            service_account_token: true,
            probes: vec![
                ProbeKind::Exec,
                ProbeKind::HttpGet,
                ProbeKind::TcpSocket,
                ProbeKind::Grpc,
            ],
            startup_probe: true,
            reports_readiness: true,
            logs: true,
            stats: true,
            resolves_pod_ip: true,
            exec: false,
            attach: false,
            port_forward: false,
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        pod_with(json!({}), spec)
    }

    fn pod_with(annotations: serde_json::Value, spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "2f6c0d5e-1111-2222-3333-444455556666",
                         "annotations": annotations},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn automount() -> serde_json::Value {
        json!({"name": "kube-api-access-abcde", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}})
    }

    fn node() -> NodeView {
        NodeView {
            name: "eklet-subnet-a".into(),
            subnet: "subnet-a".into(),
            zone: "ap-guangzhou-3".into(),
            ..NodeView::default()
        }
    }

    fn build_with(pod: &Pod, refs: &References, caps: &Capabilities) -> Result<Built, Problem> {
        let node = node();
        let apiserver = ApiServerAddress {
            host: "10.0.0.1".into(),
            port: 6443,
        };
        let setting = Setting {
            cluster_id: "cls-1",
            node: &node,
            node_ip: "10.0.0.7",
            apiserver: &apiserver,
            capabilities: caps,
            node_cpu_millis: 8000,
            node_memory_bytes: 16 << 30,
        };
        build(pod, refs, &setting)
    }

    #[test]
    fn the_automounted_token_is_skipped_with_a_warning_where_it_cannot_be_mounted() {
        let pod = pod(
            json!({"volumes": [automount()], "containers": [{"name": "app", "image": "nginx",
            "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}]}),
        );
        assert!(!needs(&pod, &tencent_like()).token);
        let built = build_with(&pod, &References::default(), &tencent_like()).unwrap();
        assert!(built.spec.volumes.is_empty());
        assert!(built.spec.containers[0].mounts.is_empty());
        assert_eq!(built.notices.len(), 1);
        assert_eq!(built.notices[0].reason, "ServiceAccountTokenNotMounted");
        assert_eq!(
            built.spec.name.as_str(),
            "eklet-cls-1-2f6c0d5e-1111-2222-3333-444455556666"
        );
    }

    #[test]
    fn a_volume_the_provider_cannot_mount_is_refused_by_name() {
        for (volume, feature) in [
            (
                json!({"name": "conf", "configMap": {"name": "c"}}),
                "configMap volume \"conf\"",
            ),
            (
                json!({"name": "creds", "secret": {"secretName": "s"}}),
                "secret volume \"creds\"",
            ),
            (
                json!({"name": "scratch", "emptyDir": {}}),
                "emptyDir volume \"scratch\"",
            ),
            (
                json!({"name": "host", "hostPath": {"path": "/data"}}),
                "hostPath volume \"host\"",
            ),
        ] {
            let pod = pod(json!({"volumes": [volume], "containers": [{"name": "app", "image": "nginx"}]}));
            assert_eq!(
                build_with(&pod, &References::default(), &tencent_like()).unwrap_err(),
                Problem::Unsupported(feature.into())
            );
        }
    }

    #[test]
    fn nfs_and_cbs_claims_become_cloud_volumes() {
        let pod = pod(json!({"volumes": [
                {"name": "share", "nfs": {"server": "10.0.0.9", "path": "/exports"}},
                {"name": "disk", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "app", "image": "nginx", "volumeMounts": [{"name": "disk", "mountPath": "/data"}]}]}));
        let pv: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "pv-1"},
            "spec": {"csi": {"driver": "com.tencent.cloud.csi.cbs", "volumeHandle": "disk-123"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let refs = References {
            claims: [("data".to_owned(), ClaimStatus::Bound(Arc::new(pv)))].into(),
            ..References::default()
        };
        let built = build_with(&pod, &refs, &tencent_like()).unwrap();
        assert_eq!(
            built.spec.volumes[0].source,
            VolumeSource::Nfs {
                server: "10.0.0.9".into(),
                path: "/exports".into(),
                read_only: false
            }
        );
        assert_eq!(
            built.spec.volumes[1].source,
            VolumeSource::Cbs {
                disk_id: "disk-123".into()
            }
        );
        assert_eq!(built.spec.containers[0].mounts[0].path, "/data");
    }

    #[test]
    fn providers_that_mount_files_get_the_contents_and_a_fresh_token() {
        let pod = pod(
            json!({"volumes": [automount(), {"name": "conf", "configMap": {"name": "settings"}}],
            "containers": [{"name": "app", "image": "nginx"}]}),
        );
        let needs = needs(&pod, &everything());
        assert!(needs.token);
        assert!(needs.config_maps.contains("settings") && needs.config_maps.contains(ROOT_CA_CONFIG_MAP));
        let cm = |data: &[(&str, &str)]| ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        let refs = References {
            config_maps: [
                ("settings".to_owned(), cm(&[("app.conf", "x=1")])),
                (ROOT_CA_CONFIG_MAP.to_owned(), cm(&[("ca.crt", "PEM")])),
            ]
            .into(),
            token: Some(IssuedToken {
                token: "tok".into(),
                expires_in: Duration::from_secs(3607),
            }),
            ..References::default()
        };
        let built = build_with(&pod, &refs, &everything()).unwrap();
        let VolumeSource::Files { files, .. } = &built.spec.volumes[0].source else {
            panic!("not files")
        };
        assert_eq!(files.get("token").map(Vec::as_slice), Some(&b"tok"[..]));
        assert_eq!(files.get("ca.crt").map(Vec::as_slice), Some(&b"PEM"[..]));
        assert_eq!(files.get("namespace").map(Vec::as_slice), Some(&b"shop"[..]));
        let VolumeSource::Files { files, .. } = &built.spec.volumes[1].source else {
            panic!("not files")
        };
        assert_eq!(files.get("app.conf").map(Vec::as_slice), Some(&b"x=1"[..]));
    }

    #[test]
    fn a_token_refresh_reads_only_what_the_token_volume_projects() {
        let pod = pod(json!({
            "volumes": [automount(), {"name": "conf", "configMap": {"name": "settings"}},
                        {"name": "creds", "secret": {"secretName": "db"}}],
            "containers": [{"name": "app", "image": "nginx",
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "api", "key": "k"}}}]}]}));
        let needs = token_needs(&pod);
        assert!(needs.token);
        assert_eq!(needs.config_maps, [ROOT_CA_CONFIG_MAP.to_owned()].into());
        assert!(needs.secrets.is_empty(), "{:?}", needs.secrets);
        let refs = References {
            config_maps: [(
                ROOT_CA_CONFIG_MAP.to_owned(),
                ConfigMap {
                    data: Some([("ca.crt".to_owned(), "PEM".to_owned())].into()),
                    ..ConfigMap::default()
                },
            )]
            .into(),
            token: Some(IssuedToken {
                token: "fresh".into(),
                expires_in: Duration::from_secs(3607),
            }),
            ..References::default()
        };
        let volumes = token_volumes(&pod, &refs).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(volumes.len(), 1, "only the token volume");
        let VolumeSource::Files { files, .. } = &volumes[0].source else {
            panic!("not files")
        };
        assert_eq!(files.get("token").map(Vec::as_slice), Some(&b"fresh"[..]));
        assert_eq!(files.get("ca.crt").map(Vec::as_slice), Some(&b"PEM"[..]));
        assert_eq!(files.get("namespace").map(Vec::as_slice), Some(&b"shop"[..]));
    }

    #[test]
    fn pod_ip_env_is_refused_unless_the_provider_resolves_it_itself() {
        let pod = pod(json!({"containers": [{"name": "app", "image": "nginx", "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]}));
        assert!(
            matches!(build_with(&pod, &References::default(), &tencent_like()), Err(Problem::Unsupported(m)) if m.contains("status.podIP"))
        );
        // A target kubelet (the kubernetes provider) fills it in the sandbox.
        assert!(build_with(&pod, &References::default(), &everything()).is_ok());
    }

    #[test]
    fn probes_are_mapped_with_named_ports_and_unsupported_kinds_refused() {
        let pod = pod(
            json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5}}]}),
        );
        let built = build_with(&pod, &References::default(), &tencent_like()).unwrap();
        let probe = built.spec.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(
            probe.action,
            ProbeAction::HttpGet {
                path: "/ready".into(),
                port: 8080,
                scheme: "HTTP".into()
            }
        );
        assert_eq!((probe.period_seconds, probe.failure_threshold), (5, 3));
        let grpc = super::tests::pod(
            json!({"containers": [{"name": "app", "image": "nginx", "livenessProbe": {"grpc": {"port": 9000}}}]}),
        );
        assert!(
            matches!(build_with(&grpc, &References::default(), &tencent_like()), Err(Problem::Unsupported(m)) if m.contains("liveness"))
        );
        let startup = super::tests::pod(
            json!({"containers": [{"name": "app", "image": "nginx", "startupProbe": {"tcpSocket": {"port": 80}}}]}),
        );
        assert!(
            matches!(build_with(&startup, &References::default(), &tencent_like()), Err(Problem::Unsupported(m)) if m.contains("startup"))
        );
    }

    #[test]
    fn the_pod_resolv_conf_wins_and_a_malformed_one_falls_back_to_the_node() {
        let mut node_view = node();
        node_view.resolv_conf = Some(DnsSpec {
            nameservers: vec!["1.1.1.1".into()],
            ..DnsSpec::default()
        });
        let mut notices = Vec::new();
        let good = pod_with(
            json!({"eks.tke.cloud.tencent.com/resolv-conf": "nameserver 4.4.4.4\n"}),
            json!({"containers": []}),
        );
        assert_eq!(
            dns_for(&good, &node_view, &mut notices).map(|d| d.nameservers),
            Some(vec!["4.4.4.4".into()])
        );
        let bad = pod_with(
            json!({"eks.tke.cloud.tencent.com/resolv-conf": "nameserver x\n"}),
            json!({"containers": []}),
        );
        assert_eq!(
            dns_for(&bad, &node_view, &mut notices).map(|d| d.nameservers),
            Some(vec!["1.1.1.1".into()])
        );
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "InvalidResolvConf");
    }

    #[test]
    fn image_pull_secrets_become_registry_credentials() {
        let pod = pod(
            json!({"imagePullSecrets": [{"name": "regcred"}, {"name": "absent"}],
            "containers": [{"name": "app", "image": "ccr.ccs.tencentyun.com/team/app:1"}]}),
        );
        let config = json!({"auths": {"ccr.ccs.tencentyun.com": {"auth": base64::engine::general_purpose::STANDARD.encode("robot:pa:ss")}}});
        let secret = Secret {
            data: Some(
                [(
                    ".dockerconfigjson".to_owned(),
                    ByteString(config.to_string().into_bytes()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        let refs = References {
            secrets: [("regcred".to_owned(), secret)].into(),
            ..References::default()
        };
        let built = build_with(&pod, &refs, &tencent_like()).unwrap();
        assert_eq!(
            built.spec.registry_credentials,
            vec![RegistryCredential {
                server: "ccr.ccs.tencentyun.com".into(),
                username: "robot".into(),
                password: "pa:ss".into()
            }]
        );
    }

    #[test]
    fn commands_and_args_expand_container_variables() {
        let pod = pod(
            json!({"containers": [{"name": "app", "image": "busybox", "command": ["sh", "-c"],
            "args": ["echo $(GREETING) $(UNKNOWN)"], "env": [{"name": "GREETING", "value": "hi"}],
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"nvidia.com/gpu": "1"}}}]}),
        );
        let built = build_with(&pod, &References::default(), &tencent_like()).unwrap();
        let container = &built.spec.containers[0];
        assert_eq!(container.args, vec!["echo hi $(UNKNOWN)"]);
        assert_eq!(container.resources.cpu_request_millis, Some(250));
        assert_eq!(container.resources.memory_request_bytes, Some(64 << 20));
        assert_eq!(container.resources.gpu, Some(1));
        assert_eq!(built.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(built.spec.termination_grace, Duration::from_secs(30));
    }
}
