//! From a source (IDC) pod and its resolved [`SandboxSpec`] to what is created in the target
//! cluster: the target pod and the per-pod objects it needs. Pure; the provider fetches and
//! writes.
//!
//! The target pod is the source pod's spec with the IDC's scheduling rewritten for the target
//! (no nodeName, node selectors, affinity, spread, priority or runtime class of the IDC; the
//! operator's target selectors, tolerations and scheduler instead), host namespaces off, and
//! its service account rewired to the IDC: the target's own token is not mounted, the IDC token
//! volume eklet resolved travels as a Secret. ConfigMaps and Secrets the pod references are
//! copied per pod (`<pod>.<name>`) so that they can be kept up to date and are garbage-collected
//! with the pod through owner references; env values and volumes keep referring to them by
//! name, so Secret values never appear in the target pod spec.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::core::v1::{
        ConfigMap, Container, EnvFromSource, EnvVar, KeyToPath, LocalObjectReference, NFSVolumeSource, Pod,
        PodDNSConfig, PodDNSConfigOption, PodSchedulingGate, PodSpec, Secret, SecretVolumeSource, Toleration,
        Volume,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

pub use crate::provider::SourceKind;
use crate::provider::{ContainerSpec, SandboxName, SandboxSpec, SourceObjects, VolumeSource};

/// Label on everything eklet creates in the target: the IDC cluster it belongs to.
pub const LABEL_CLUSTER: &str = "eklet.tke-resilience.io/cluster-id";
/// Label on everything eklet creates in the target: the UID of the IDC pod.
pub const LABEL_POD_UID: &str = "eklet.tke-resilience.io/pod-uid";
/// The IDC pod as `namespace/name`.
pub const ANNOTATION_POD: &str = "eklet.tke-resilience.io/pod";
/// On a target namespace: the IDC namespace whose pods it holds.
pub const ANNOTATION_SOURCE_NAMESPACE: &str = "eklet.tke-resilience.io/source-namespace";
/// The virtual node's subnet and zone, for target operators (webhooks, policies) to place by.
pub const ANNOTATION_SUBNET: &str = "eklet.tke-resilience.io/subnet-id";
pub const ANNOTATION_ZONE: &str = "eklet.tke-resilience.io/zone";
/// The IDC objects copied for this pod, `configmap/NAME,secret/NAME`; read back after a
/// restart to keep the copies up to date.
pub const ANNOTATION_COPIES: &str = "eklet.tke-resilience.io/copies";
/// On a copy: the IDC object it was copied from, `configmap/NAMESPACE/NAME`.
pub const ANNOTATION_SOURCE: &str = "eklet.tke-resilience.io/source";
/// Held on the target pod until its objects exist, so that the target never starts it without
/// them; a pod still gated that no create is working on was left by a crash and never ran.
pub const SCHEDULING_GATE: &str = "eklet.tke-resilience.io/objects";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Why a pod cannot be translated. Permanent: the same pod never translates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the kubernetes provider cannot honour {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

/// Which target namespace a pod goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Each IDC namespace `NS` gets its own target namespace `<cluster-id>-NS`.
    PerSource,
    /// Every pod goes to this one namespace.
    Fixed(String),
}

/// A value with `{subnet}` and `{zone}` placeholders, filled with the virtual node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text.replace("{subnet}", "").replace("{zone}", "");
        if rest.contains(['{', '}']) {
            return Err(format!(
                "{text:?}: only the placeholders {{subnet}} and {{zone}} are known"
            ));
        }
        Ok(Template(text.to_owned()))
    }

    pub fn render(&self, subnet: &str, zone: &str) -> String {
        self.0.replace("{subnet}", subnet).replace("{zone}", zone)
    }
}

/// How target pods are placed and named; from the `--target-*` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub cluster_id: String,
    pub namespaces: Namespaces,
    pub node_selector: Vec<(String, Template)>,
    pub tolerations: Vec<Toleration>,
    pub annotations: Vec<(String, Template)>,
    pub scheduler_name: Option<String>,
    /// Copy the IDC pod's labels. Off by default: a target ReplicaSet whose selector matches
    /// would adopt (and may delete) the pod.
    pub keep_labels: bool,
}

impl Settings {
    /// The target namespace of pods from IDC namespace `source`.
    pub fn namespace_for(&self, source: &str) -> String {
        match &self.namespaces {
            Namespaces::Fixed(name) => name.clone(),
            Namespaces::PerSource => bounded(&format!("{}-{source}", self.cluster_id), MAX_LABEL, '-'),
        }
    }

    /// Labels that select everything eklet created in the target for this cluster.
    pub fn cluster_selector(&self) -> String {
        format!("{LABEL_CLUSTER}={}", self.cluster_id)
    }
}

/// Parses `KEY[=VALUE]:EFFECT`, `KEY=VALUE` or `KEY` into a toleration.
pub fn parse_toleration(text: &str) -> Result<Toleration, String> {
    let (rest, effect) = match text.rsplit_once(':') {
        Some((rest, effect)) => (rest, Some(effect)),
        None => (text, None),
    };
    if let Some(effect) = effect
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        return Err(format!(
            "{text:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match rest.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (rest, None),
    };
    if key.trim().is_empty() {
        return Err(format!("{text:?}: expected KEY[=VALUE][:EFFECT]"));
    }
    Ok(Toleration {
        key: Some(key.trim().to_owned()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
        value: value.map(|v| v.trim().to_owned()),
        effect: effect.map(str::to_owned),
        toleration_seconds: None,
    })
}

/// Parses `KEY=VALUE` where VALUE may use the placeholders.
pub fn parse_pair(text: &str) -> Result<(String, Template), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("{text:?}: the key is empty"));
    }
    Ok((key.trim().to_owned(), Template::parse(value.trim())?))
}

/// An object the pod references, in the pod's own IDC namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    pub kind: SourceKind,
    pub name: String,
}

impl SourceRef {
    fn new(kind: SourceKind, name: &str) -> SourceRef {
        SourceRef {
            kind,
            name: name.to_owned(),
        }
    }
}

/// Writes the copies annotation.
pub fn format_copies(refs: &BTreeSet<SourceRef>) -> String {
    refs.iter()
        .map(|r| format!("{}/{}", r.kind.as_str(), r.name))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the copies annotation back; entries that do not parse are skipped.
pub fn parse_copies(text: &str) -> BTreeSet<SourceRef> {
    text.split(',')
        .filter_map(|entry| {
            let (kind, name) = entry.trim().split_once('/')?;
            let kind = match kind {
                "configmap" => SourceKind::ConfigMap,
                "secret" => SourceKind::Secret,
                _ => return None,
            };
            (!name.is_empty()).then(|| SourceRef::new(kind, name))
        })
        .collect()
}

/// The name of the per-pod copy of `source` next to pod `sandbox`. Object names may contain
/// dots and sandbox names do not, so copies never collide with the files Secrets
/// (`<pod>-<volume>`) or with each other.
pub fn copy_name(sandbox: &str, source: &str) -> String {
    let name = format!("{sandbox}.{source}");
    if name.len() <= MAX_NAME {
        name
    } else {
        format!("{sandbox}.{:016x}", fnv1a(source))
    }
}

/// The name of the Secret holding a volume's resolved files.
pub fn files_secret_name(sandbox: &str, volume: &str) -> String {
    bounded(&format!("{sandbox}-{volume}"), MAX_NAME, '-')
}

/// `name` if it fits in `max`, else a prefix of it and a stable hash of all of it.
fn bounded(name: &str, max: usize, separator: char) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let hash = format!("{:08x}", fnv1a(name) as u32);
    let keep = max - hash.len() - 1;
    let prefix: String = name.chars().take(keep).collect();
    format!("{}{separator}{hash}", prefix.trim_end_matches(['-', '.']))
}

/// FNV-1a: stable across Rust releases (names derived from it must not change on upgrade).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().chain(&spec.containers)
}

/// Whether a projected volume is only ConfigMaps and Secrets, so it can refer to copies (and
/// follow their updates) instead of carrying resolved files.
fn projects_only_objects(volume: &Volume) -> bool {
    volume.projected.as_ref().is_some_and(|p| {
        p.sources.iter().flatten().all(|s| {
            (s.config_map.is_some() || s.secret.is_some())
                && s.service_account_token.is_none()
                && s.downward_api.is_none()
                && s.cluster_trust_bundle.is_none()
                && s.pod_certificate.is_none()
        })
    })
}

/// Every ConfigMap and Secret the pod refers to by name that the target pod refers to as a
/// copy: env, envFrom, configMap/secret volumes, projected volumes of only those, image pull
/// secrets. Volumes carrying a token or downward-API files travel resolved instead.
pub fn references(pod: &Pod) -> BTreeSet<SourceRef> {
    let mut refs = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return refs;
    };
    for container in all_containers(spec) {
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                refs.insert(SourceRef::new(SourceKind::ConfigMap, &r.name));
            }
            if let Some(r) = &from.secret_ref {
                refs.insert(SourceRef::new(SourceKind::Secret, &r.name));
            }
        }
        for var in container.env.iter().flatten() {
            let Some(source) = &var.value_from else { continue };
            if let Some(r) = &source.config_map_key_ref {
                refs.insert(SourceRef::new(SourceKind::ConfigMap, &r.name));
            }
            if let Some(r) = &source.secret_key_ref {
                refs.insert(SourceRef::new(SourceKind::Secret, &r.name));
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            refs.insert(SourceRef::new(SourceKind::ConfigMap, &cm.name));
        }
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            refs.insert(SourceRef::new(SourceKind::Secret, name));
        }
        if projects_only_objects(volume) {
            for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(cm) = &source.config_map {
                    refs.insert(SourceRef::new(SourceKind::ConfigMap, &cm.name));
                }
                if let Some(secret) = &source.secret {
                    refs.insert(SourceRef::new(SourceKind::Secret, &secret.name));
                }
            }
        }
    }
    for secret in spec.image_pull_secrets.iter().flatten() {
        refs.insert(SourceRef::new(SourceKind::Secret, &secret.name));
    }
    refs
}

/// An object created next to the target pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

impl Object {
    pub fn name(&self) -> &str {
        let meta = match self {
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// Makes the object a dependent of the target pod, so the target's garbage collector
    /// removes it with the pod, even when eklet is gone.
    pub fn owned_by(mut self, pod_name: &str, pod_uid: &str) -> Object {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name.to_owned(),
            uid: pod_uid.to_owned(),
            controller: None,
            block_owner_deletion: None,
        };
        let meta = match &mut self {
            Object::ConfigMap(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
        };
        meta.owner_references = Some(vec![owner]);
        self
    }
}

/// Where and for whom an object is created.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub cluster_id: &'a str,
    pub namespace: &'a str,
    pub sandbox: &'a str,
    pub pod_uid: &'a str,
}

impl Placement<'_> {
    fn meta(&self, name: String, annotations: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(
                [
                    (LABEL_CLUSTER.to_owned(), self.cluster_id.to_owned()),
                    (LABEL_POD_UID.to_owned(), self.pod_uid.to_owned()),
                ]
                .into(),
            ),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }
    }
}

/// The per-pod copy of an IDC ConfigMap.
pub fn copy_config_map(source: &ConfigMap, at: &Placement<'_>) -> Object {
    let source_name = source.metadata.name.clone().unwrap_or_default();
    let origin = format!(
        "configmap/{}/{source_name}",
        source.metadata.namespace.as_deref().unwrap_or_default()
    );
    Object::ConfigMap(ConfigMap {
        metadata: at.meta(
            copy_name(at.sandbox, &source_name),
            [(ANNOTATION_SOURCE.to_owned(), origin)].into(),
        ),
        data: source.data.clone(),
        binary_data: source.binary_data.clone(),
        immutable: source.immutable,
    })
}

/// The per-pod copy of an IDC Secret; its type is kept (image pull secrets need theirs).
pub fn copy_secret(source: &Secret, at: &Placement<'_>) -> Object {
    let source_name = source.metadata.name.clone().unwrap_or_default();
    let origin = format!(
        "secret/{}/{source_name}",
        source.metadata.namespace.as_deref().unwrap_or_default()
    );
    let mut data = source.data.clone().unwrap_or_default();
    // stringData is write-only in the API, but a fetched object may still carry it in tests.
    for (key, value) in source.string_data.iter().flatten() {
        data.insert(key.clone(), ByteString(value.as_bytes().to_vec()));
    }
    Object::Secret(Secret {
        metadata: at.meta(
            copy_name(at.sandbox, &source_name),
            [(ANNOTATION_SOURCE.to_owned(), origin)].into(),
        ),
        data: Some(data),
        immutable: source.immutable,
        type_: source.type_.clone(),
        string_data: None,
    })
}

/// Secret keys allow `[-._a-zA-Z0-9]` only; file paths may have `/`.
fn valid_key(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_NAME
        && path != "."
        && !path.starts_with("..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Secret keys and their file paths for a volume's resolved files.
fn file_keys(files: &BTreeMap<String, Vec<u8>>) -> Vec<(String, &str, &Vec<u8>)> {
    files
        .iter()
        .enumerate()
        .map(|(i, (path, content))| {
            let key = if valid_key(path) {
                path.clone()
            } else {
                format!("file-{i}")
            };
            (key, path.as_str(), content)
        })
        .collect()
}

/// The Secret that carries a volume's resolved files (the IDC service-account token, CA and
/// namespace; downward-API files), and the volume that mounts it.
pub fn files_secret(
    volume: &str,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
    at: &Placement<'_>,
) -> (Object, Volume) {
    let name = files_secret_name(at.sandbox, volume);
    let keys = file_keys(files);
    let secret = Secret {
        metadata: at.meta(name.clone(), BTreeMap::new()),
        data: Some(
            keys.iter()
                .map(|(key, _, content)| (key.clone(), ByteString((*content).clone())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    let mount = Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(name),
            default_mode: i32::try_from(mode & 0o777).ok(),
            items: Some(
                keys.iter()
                    .map(|(key, path, _)| KeyToPath {
                        key: key.clone(),
                        path: (*path).to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            optional: None,
        }),
        ..Volume::default()
    };
    (Object::Secret(secret), mount)
}

/// The target pod and the objects to create for it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pod: Pod,
    /// Created after the (gated) pod, owned by it.
    pub objects: Vec<Object>,
    /// The IDC objects copied, with the resourceVersion copied.
    pub copied: Vec<(SourceRef, String)>,
    pub references: BTreeSet<SourceRef>,
}

/// Translates the source pod for the target cluster, with the objects eklet read for `spec`.
pub fn plan(spec: &SandboxSpec, fetched: &SourceObjects, settings: &Settings) -> Result<Plan, Problem> {
    let source = &fetched.pod;
    let source_spec = source
        .spec
        .as_ref()
        .ok_or_else(|| Problem::Invalid("the pod has no spec".into()))?;
    if source_spec
        .resource_claims
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        return Err(Problem::Unsupported("resource claims (DRA)".into()));
    }
    let sandbox = spec.name.as_str();
    let namespace = settings.namespace_for(&spec.pod.namespace);
    let at = Placement {
        cluster_id: &settings.cluster_id,
        namespace: &namespace,
        sandbox,
        pod_uid: &spec.pod.uid,
    };
    let references = references(source);
    let rename = |name: &str| copy_name(sandbox, name);

    let mut objects = Vec::new();
    let mut copied = Vec::new();
    for reference in &references {
        let (object, version) = match reference.kind {
            SourceKind::ConfigMap => match fetched.config_maps.get(&reference.name) {
                Some(cm) => (copy_config_map(cm, &at), cm.metadata.resource_version.clone()),
                None => continue,
            },
            SourceKind::Secret => match fetched.secrets.get(&reference.name) {
                Some(secret) => (copy_secret(secret, &at), secret.metadata.resource_version.clone()),
                None => continue,
            },
        };
        objects.push(object);
        copied.push((reference.clone(), version.unwrap_or_default()));
    }

    let mut volumes = Vec::new();
    for volume in source_spec.volumes.iter().flatten() {
        // Volumes eklet did not resolve (skipped for this provider) are left out with their
        // mounts.
        let Some(resolved) = spec.volumes.iter().find(|v| v.name == volume.name) else {
            continue;
        };
        let mut target = Volume {
            name: volume.name.clone(),
            ..Volume::default()
        };
        if let Some(cm) = &volume.config_map {
            let mut cm = cm.clone();
            cm.name = rename(&cm.name);
            target.config_map = Some(cm);
        } else if let Some(secret) = &volume.secret {
            let mut secret = secret.clone();
            secret.secret_name = secret.secret_name.as_deref().map(rename);
            target.secret = Some(secret);
        } else if projects_only_objects(volume) {
            let mut projected = volume.projected.clone().unwrap_or_default();
            for source in projected.sources.iter_mut().flatten() {
                if let Some(cm) = &mut source.config_map {
                    cm.name = rename(&cm.name);
                }
                if let Some(secret) = &mut source.secret {
                    secret.name = rename(&secret.name);
                }
            }
            target.projected = Some(projected);
        } else {
            match &resolved.source {
                VolumeSource::Files { files, mode } => {
                    let (secret, mount) = files_secret(&volume.name, files, *mode, &at);
                    objects.push(secret);
                    target = mount;
                }
                VolumeSource::Nfs {
                    server,
                    path,
                    read_only,
                } => {
                    target.nfs = Some(NFSVolumeSource {
                        server: server.clone(),
                        path: path.clone(),
                        read_only: Some(*read_only),
                    });
                }
                VolumeSource::EmptyDir => {
                    target.empty_dir = Some(volume.empty_dir.clone().unwrap_or_default())
                }
                VolumeSource::Cbs { .. } => {
                    return Err(Problem::Unsupported(format!("cbs volume {:?}", volume.name)));
                }
            }
        }
        volumes.push(target);
    }
    let kept: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();

    let resolved_of = |name: &str, init: bool| {
        let list = if init {
            &spec.init_containers
        } else {
            &spec.containers
        };
        list.iter().find(|c| c.name == name)
    };
    let containers = source_spec
        .containers
        .iter()
        .map(|c| container(c, resolved_of(&c.name, false), &rename, &kept))
        .collect();
    let init_containers = source_spec.init_containers.as_ref().map(|list| {
        list.iter()
            .map(|c| container(c, resolved_of(&c.name, true), &rename, &kept))
            .collect()
    });

    let mut tolerations: Vec<Toleration> = source_spec
        .tolerations
        .iter()
        .flatten()
        .filter(|t| t.key.as_deref() != Some(tke_policy::virtual_node::TAINT_KEY))
        .cloned()
        .collect();
    tolerations.extend(settings.tolerations.iter().cloned());
    let node_selector: BTreeMap<String, String> = settings
        .node_selector
        .iter()
        .map(|(key, value)| (key.clone(), value.render(&spec.subnet_id, &spec.zone)))
        .collect();

    let (dns_policy, dns_config) = match &spec.dns {
        // eklet already chose between the pod's and the node's resolv-conf annotation.
        Some(dns) => (
            Some("None".to_owned()),
            Some(PodDNSConfig {
                nameservers: Some(dns.nameservers.clone()),
                searches: Some(dns.searches.clone()),
                options: Some(
                    dns.options
                        .iter()
                        .map(|(name, value)| PodDNSConfigOption {
                            name: Some(name.clone()),
                            value: Some(value.clone()).filter(|v| !v.is_empty()),
                        })
                        .collect(),
                ),
            }),
        ),
        None => (source_spec.dns_policy.clone(), source_spec.dns_config.clone()),
    };
    let hostname = source_spec
        .hostname
        .clone()
        .or_else(|| Some(spec.pod.name.clone()).filter(|n| n.len() <= MAX_LABEL && !n.contains('.')));

    let target_spec = PodSpec {
        node_name: None,
        scheduler_name: settings.scheduler_name.clone(),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        affinity: None,
        topology_spread_constraints: None,
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        priority: None,
        priority_class_name: None,
        preemption_policy: None,
        runtime_class_name: None,
        overhead: None,
        service_account: None,
        service_account_name: None,
        automount_service_account_token: Some(false),
        host_network: None,
        host_pid: None,
        host_ipc: None,
        readiness_gates: None,
        scheduling_gates: Some(vec![PodSchedulingGate {
            name: SCHEDULING_GATE.into(),
        }]),
        scheduling_group: None,
        subdomain: None,
        set_hostname_as_fqdn: None,
        hostname,
        enable_service_links: Some(false),
        ephemeral_containers: None,
        image_pull_secrets: source_spec.image_pull_secrets.as_ref().map(|secrets| {
            secrets
                .iter()
                .map(|s| LocalObjectReference {
                    name: rename(&s.name),
                })
                .collect()
        }),
        volumes: (!volumes.is_empty()).then_some(volumes),
        containers,
        init_containers,
        dns_policy,
        dns_config,
        termination_grace_period_seconds: Some(
            i64::try_from(spec.termination_grace.as_secs()).unwrap_or(i64::MAX),
        ),
        ..source_spec.clone()
    };

    let mut labels = if settings.keep_labels {
        source.metadata.labels.clone().unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    labels.insert(LABEL_CLUSTER.into(), settings.cluster_id.clone());
    labels.insert(LABEL_POD_UID.into(), spec.pod.uid.clone());
    let mut annotations = spec.annotations.clone();
    annotations.remove(LAST_APPLIED);
    for (key, value) in &settings.annotations {
        annotations.insert(key.clone(), value.render(&spec.subnet_id, &spec.zone));
    }
    annotations.insert(
        ANNOTATION_POD.into(),
        format!("{}/{}", spec.pod.namespace, spec.pod.name),
    );
    annotations.insert(ANNOTATION_SUBNET.into(), spec.subnet_id.clone());
    annotations.insert(ANNOTATION_ZONE.into(), spec.zone.clone());
    if !references.is_empty() {
        annotations.insert(ANNOTATION_COPIES.into(), format_copies(&references));
    }

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(sandbox.to_owned()),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(target_spec),
        status: None,
    };
    Ok(Plan {
        pod,
        objects,
        copied,
        references,
    })
}

/// The variables eklet sets for the `kubernetes` Service, aimed at `--pod-used-apiserver`.
fn is_service_variable(name: &str) -> bool {
    matches!(
        name,
        "KUBERNETES_SERVICE_HOST"
            | "KUBERNETES_SERVICE_PORT"
            | "KUBERNETES_SERVICE_PORT_HTTPS"
            | "KUBERNETES_PORT"
    ) || name.strip_prefix("KUBERNETES_PORT_").is_some_and(|rest| {
        rest.ends_with("_TCP")
            || rest.ends_with("_TCP_PROTO")
            || rest.ends_with("_TCP_PORT")
            || rest.ends_with("_TCP_ADDR")
    })
}

fn container(
    source: &Container,
    resolved: Option<&ContainerSpec>,
    rename: &dyn Fn(&str) -> String,
    kept_volumes: &BTreeSet<&str>,
) -> Container {
    let resolved_value = |name: &str| {
        resolved
            .and_then(|r| r.env.iter().find(|v| v.name == name))
            .map(|v| v.value.clone())
    };
    // The IDC apiserver's address first, as the kubelet puts its service variables first;
    // explicit entries also override the ones the target's kubelet adds for its own apiserver.
    let mut env: Vec<EnvVar> = resolved
        .map(|r| r.env.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|v| is_service_variable(&v.name))
        .map(|v| EnvVar {
            name: v.name.clone(),
            value: Some(v.value.clone()),
            value_from: None,
        })
        .collect();
    for var in source.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            env.push(var.clone());
            continue;
        };
        let mut from = from.clone();
        if let Some(r) = &mut from.config_map_key_ref {
            r.name = rename(&r.name);
        } else if let Some(r) = &mut from.secret_key_ref {
            r.name = rename(&r.name);
        } else if from.file_key_ref.is_some() {
            // Read by the target kubelet from the pod's own volume, as in the IDC.
        } else if from
            .field_ref
            .as_ref()
            .is_some_and(|f| matches!(f.field_path.as_str(), "status.podIP" | "status.podIPs"))
        {
            // The target kubelet knows the pod IP, which the IDC pod will show too.
        } else {
            // Pod facts (name, namespace, labels, node, host IP, resource limits) are the IDC's,
            // as eklet resolved them; the target would answer with its own.
            match resolved_value(&var.name) {
                Some(value) => env.push(EnvVar {
                    name: var.name.clone(),
                    value: Some(value),
                    value_from: None,
                }),
                None => continue,
            }
            continue;
        }
        env.push(EnvVar {
            name: var.name.clone(),
            value: None,
            value_from: Some(from),
        });
    }
    let env_from: Option<Vec<EnvFromSource>> = source.env_from.as_ref().map(|list| {
        list.iter()
            .map(|from| {
                let mut from = from.clone();
                if let Some(r) = &mut from.config_map_ref {
                    r.name = rename(&r.name);
                }
                if let Some(r) = &mut from.secret_ref {
                    r.name = rename(&r.name);
                }
                from
            })
            .collect()
    });
    let volume_mounts = source.volume_mounts.as_ref().map(|mounts| {
        mounts
            .iter()
            .filter(|m| kept_volumes.contains(m.name.as_str()))
            .cloned()
            .collect()
    });
    Container {
        env: (!env.is_empty()).then_some(env),
        env_from,
        volume_mounts,
        // Block devices come from claims, which do not exist in the target.
        volume_devices: None,
        ..source.clone()
    }
}

/// The target pod's owner-independent identity, from what eklet keeps: `namespace/name`.
pub fn sandbox_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Splits a sandbox id back into namespace and name.
pub fn parse_sandbox_id(id: &str) -> Option<(&str, &str)> {
    let (namespace, name) = id.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
}

/// The source pod UID a target pod name stands for.
pub fn pod_uid_of(cluster_id: &str, name: &str) -> Option<String> {
    SandboxName::parse(cluster_id, name).map(|(_, uid)| uid)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::provider::{DnsSpec, EnvVar as ResolvedVar, PodIdentity, RestartPolicy, VolumeSpec};

    const UID: &str = "2f6c0d5e-1111-2222-3333-444455556666";

    fn settings() -> Settings {
        Settings {
            cluster_id: "idc-1".into(),
            namespaces: Namespaces::PerSource,
            node_selector: vec![(
                "topology.kubernetes.io/zone".into(),
                Template::parse("{zone}").unwrap_or_else(|e| panic!("{e}")),
            )],
            tolerations: vec![
                parse_toleration("virtual-kubelet.io/provider:NoSchedule").unwrap_or_else(|e| panic!("{e}")),
            ],
            annotations: vec![(
                "example.com/subnet".into(),
                Template::parse("{subnet}").unwrap_or_else(|e| panic!("{e}")),
            )],
            scheduler_name: None,
            keep_labels: false,
        }
    }

    fn source_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-7d9c-abcde", "namespace": "shop", "uid": UID,
                         "labels": {"app": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"}},
            "spec": {
                "nodeName": "eklet-subnet-a",
                "schedulerName": "tke-scheduler",
                "serviceAccountName": "web",
                "priorityClassName": "high", "priority": 1000,
                "nodeSelector": {"kubernetes.io/hostname": "eklet-subnet-a"},
                "affinity": {"nodeAffinity": {}},
                "hostNetwork": true,
                "readinessGates": [{"conditionType": "example.com/ready"}],
                "tolerations": [
                    {"key": "eks.tke.cloud.tencent.com/eklet", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}
                ],
                "imagePullSecrets": [{"name": "registry"}],
                "volumes": [
                    {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a.conf"}]}},
                    {"name": "creds", "secret": {"secretName": "db", "defaultMode": 256}},
                    {"name": "kube-api-access-x1", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                    ]}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory"}}
                ],
                "containers": [{
                    "name": "app", "image": "nginx:1.27",
                    "ports": [{"containerPort": 8080}],
                    "env": [
                        {"name": "LEVEL", "value": "debug"},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "envFrom": [{"prefix": "X_", "secretRef": {"name": "extra"}}],
                    "volumeMounts": [
                        {"name": "conf", "mountPath": "/etc/app"},
                        {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                        {"name": "data", "mountPath": "/data"},
                        {"name": "gone", "mountPath": "/gone"}
                    ]
                }]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn var(name: &str, value: &str) -> ResolvedVar {
        ResolvedVar {
            name: name.into(),
            value: value.into(),
        }
    }

    fn sandbox_spec() -> SandboxSpec {
        SandboxSpec {
            name: SandboxName::for_pod("idc-1", UID),
            pod: PodIdentity {
                namespace: "shop".into(),
                name: "web-7d9c-abcde".into(),
                uid: UID.into(),
                cluster_id: "idc-1".into(),
            },
            subnet_id: "subnet-a".into(),
            zone: "ap-guangzhou-3".into(),
            containers: vec![ContainerSpec {
                name: "app".into(),
                image: "nginx:1.27".into(),
                env: vec![
                    var("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                    var("KUBERNETES_SERVICE_PORT", "6443"),
                    var("KUBERNETES_PORT_6443_TCP_ADDR", "10.0.0.1"),
                    var("LEVEL", "debug"),
                    var("MODE", "fast"),
                    var("PASSWORD", "hunter2"),
                    var("POD_NAME", "web-7d9c-abcde"),
                    var("POD_IP", ""),
                ],
                ..ContainerSpec::default()
            }],
            init_containers: vec![],
            restart_policy: RestartPolicy::Always,
            volumes: vec![
                VolumeSpec {
                    name: "conf".into(),
                    source: VolumeSource::Files {
                        files: [("a.conf".to_owned(), b"x".to_vec())].into(),
                        mode: 0o644,
                    },
                },
                VolumeSpec {
                    name: "creds".into(),
                    source: VolumeSource::Files {
                        files: BTreeMap::new(),
                        mode: 0o400,
                    },
                },
                VolumeSpec {
                    name: "kube-api-access-x1".into(),
                    source: VolumeSource::Files {
                        files: [
                            ("token".to_owned(), b"idc-token".to_vec()),
                            ("ca.crt".to_owned(), b"idc-ca".to_vec()),
                            ("namespace".to_owned(), b"shop".to_vec()),
                        ]
                        .into(),
                        mode: 0o644,
                    },
                },
                VolumeSpec {
                    name: "data".into(),
                    source: VolumeSource::Nfs {
                        server: "10.0.0.9".into(),
                        path: "/exports".into(),
                        read_only: false,
                    },
                },
                VolumeSpec {
                    name: "scratch".into(),
                    source: VolumeSource::EmptyDir,
                },
            ],
            dns: None,
            registry_credentials: vec![],
            annotations: source_pod().metadata.annotations.unwrap_or_default(),
            termination_grace: Duration::from_secs(30),
            source: None,
        }
    }

    fn fetched() -> SourceObjects {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "settings", "namespace": "shop", "resourceVersion": "41"},
            "data": {"a": "x", "mode": "fast"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let db: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "42"},
            "data": {"password": "aHVudGVyMg=="}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let registry: Secret = serde_json::from_value(json!({
            "metadata": {"name": "registry", "namespace": "shop", "resourceVersion": "43"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        SourceObjects {
            pod: source_pod(),
            config_maps: [("settings".to_owned(), cm)].into(),
            secrets: [("db".to_owned(), db), ("registry".to_owned(), registry)].into(),
        }
    }

    fn planned() -> Plan {
        plan(&sandbox_spec(), &fetched(), &settings()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn target_spec(plan: &Plan) -> &PodSpec {
        plan.pod.spec.as_ref().unwrap_or_else(|| panic!("no spec"))
    }

    #[test]
    fn the_target_pod_is_named_for_the_cluster_and_pod_uid_and_labelled_with_both() {
        let plan = planned();
        let meta = &plan.pod.metadata;
        assert_eq!(
            meta.name.as_deref(),
            Some("eklet-idc-1-2f6c0d5e-1111-2222-3333-444455556666")
        );
        assert_eq!(meta.namespace.as_deref(), Some("idc-1-shop"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_CLUSTER).map(String::as_str), Some("idc-1"));
        assert_eq!(labels.get(LABEL_POD_UID).map(String::as_str), Some(UID));
        assert!(
            !labels.contains_key("app"),
            "IDC labels are not copied by default"
        );
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(ANNOTATION_POD).map(String::as_str),
            Some("shop/web-7d9c-abcde")
        );
        assert_eq!(
            annotations.get(ANNOTATION_SUBNET).map(String::as_str),
            Some("subnet-a")
        );
        assert_eq!(
            annotations.get("example.com/subnet").map(String::as_str),
            Some("subnet-a")
        );
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            parse_copies(
                annotations
                    .get(ANNOTATION_COPIES)
                    .map(String::as_str)
                    .unwrap_or_default()
            ),
            plan.references
        );
    }

    #[test]
    fn idc_scheduling_is_replaced_by_the_targets() {
        let plan = planned();
        let spec = target_spec(&plan);
        assert_eq!(spec.node_name, None);
        assert_eq!(spec.scheduler_name, None);
        assert_eq!(
            spec.node_selector,
            Some(
                [(
                    "topology.kubernetes.io/zone".to_owned(),
                    "ap-guangzhou-3".to_owned()
                )]
                .into()
            )
        );
        assert!(spec.affinity.is_none() && spec.priority.is_none() && spec.priority_class_name.is_none());
        assert!(
            spec.readiness_gates.is_none(),
            "IDC readiness gates are judged on the IDC pod"
        );
        assert_eq!(spec.host_network, None);
        let keys: Vec<_> = spec
            .tolerations
            .iter()
            .flatten()
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(keys, vec!["dedicated", "virtual-kubelet.io/provider"]);
        assert_eq!(
            spec.scheduling_gates.as_ref().map(|g| g.len()),
            Some(1),
            "held until its objects exist"
        );
        assert_eq!(spec.hostname.as_deref(), Some("web-7d9c-abcde"));
    }

    #[test]
    fn the_idc_service_account_token_travels_as_a_secret_and_the_targets_is_not_mounted() {
        let plan = planned();
        let spec = target_spec(&plan);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name, None);
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "kube-api-access-x1")
            .unwrap_or_else(|| panic!("token volume"));
        let secret_name = volume.secret.as_ref().and_then(|s| s.secret_name.clone());
        assert_eq!(
            secret_name.as_deref(),
            Some("eklet-idc-1-2f6c0d5e-1111-2222-3333-444455556666-kube-api-access-x1")
        );
        let secret = plan
            .objects
            .iter()
            .find_map(|o| match o {
                Object::Secret(s) if s.metadata.name == secret_name => Some(s),
                _ => None,
            })
            .unwrap_or_else(|| panic!("token secret"));
        let data = secret.data.clone().unwrap_or_default();
        assert_eq!(data.get("token").map(|b| b.0.as_slice()), Some(&b"idc-token"[..]));
        assert_eq!(data.get("ca.crt").map(|b| b.0.as_slice()), Some(&b"idc-ca"[..]));
        let app = &spec.containers[0];
        let mounts: Vec<_> = app
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/var/run/secrets/kubernetes.io/serviceaccount"));
        assert!(
            !mounts.contains(&"/gone"),
            "mounts of volumes left out are dropped"
        );
    }

    #[test]
    fn env_keeps_referring_to_copies_and_secret_values_never_appear_in_the_pod() {
        let plan = planned();
        let app = &target_spec(&plan).containers[0];
        let env = app.env.clone().unwrap_or_default();
        let names: Vec<_> = env.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "KUBERNETES_SERVICE_HOST",
                "KUBERNETES_SERVICE_PORT",
                "KUBERNETES_PORT_6443_TCP_ADDR",
                "LEVEL",
                "MODE",
                "PASSWORD",
                "POD_NAME",
                "POD_IP"
            ]
        );
        let get = |name: &str| env.iter().find(|v| v.name == name).cloned().unwrap_or_default();
        assert_eq!(get("KUBERNETES_SERVICE_HOST").value.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            get("POD_NAME").value.as_deref(),
            Some("web-7d9c-abcde"),
            "the IDC pod's name"
        );
        assert_eq!(
            get("POD_IP")
                .value_from
                .and_then(|f| f.field_ref)
                .map(|f| f.field_path),
            Some("status.podIP".to_owned()),
            "the target kubelet fills the pod IP"
        );
        assert_eq!(
            get("PASSWORD")
                .value_from
                .and_then(|f| f.secret_key_ref)
                .map(|r| r.name),
            Some(copy_name(
                plan.pod.metadata.name.as_deref().unwrap_or_default(),
                "db"
            ))
        );
        let shown = serde_json::to_string(&plan.pod).unwrap_or_default();
        assert!(!shown.contains("hunter2"), "{shown}");
        let from = app.env_from.clone().unwrap_or_default();
        assert_eq!(
            from[0].secret_ref.as_ref().map(|r| r.name.as_str()),
            Some(copy_name(plan.pod.metadata.name.as_deref().unwrap_or_default(), "extra").as_str())
        );
    }

    #[test]
    fn referenced_objects_are_copied_per_pod_with_their_type_and_version() {
        let plan = planned();
        let sandbox = plan.pod.metadata.name.clone().unwrap_or_default();
        let copies: Vec<_> = plan
            .copied
            .iter()
            .map(|(r, v)| (r.name.as_str(), v.as_str()))
            .collect();
        assert_eq!(copies, vec![("settings", "41"), ("db", "42"), ("registry", "43")]);
        assert!(
            plan.references
                .contains(&SourceRef::new(SourceKind::Secret, "extra")),
            "a missing optional object is still watched for"
        );
        let registry = plan
            .objects
            .iter()
            .find_map(|o| match o {
                Object::Secret(s) if s.metadata.name.as_deref() == Some(&copy_name(&sandbox, "registry")) => {
                    Some(s)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("registry copy"));
        assert_eq!(registry.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        let spec = target_spec(&plan);
        assert_eq!(
            spec.image_pull_secrets.clone().unwrap_or_default()[0].name,
            copy_name(&sandbox, "registry")
        );
        let conf = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "conf")
            .and_then(|v| v.config_map.clone());
        assert_eq!(conf.map(|c| c.name), Some(copy_name(&sandbox, "settings")));
        let data = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "data")
            .and_then(|v| v.nfs.clone());
        assert_eq!(
            data.map(|n| n.server),
            Some("10.0.0.9".to_owned()),
            "claims become their NFS volume"
        );
        let owned = plan.objects[0].clone().owned_by(&sandbox, "target-uid");
        let Object::ConfigMap(cm) = owned else {
            panic!("configmap first")
        };
        assert_eq!(
            cm.metadata.owner_references.unwrap_or_default()[0].uid,
            "target-uid"
        );
    }

    #[test]
    fn the_resolv_conf_choice_becomes_the_target_dns_config() {
        let mut spec = sandbox_spec();
        spec.dns = Some(DnsSpec {
            nameservers: vec!["10.0.0.53".into()],
            searches: vec!["svc.idc".into()],
            options: vec![("ndots".into(), "2".into()), ("rotate".into(), String::new())],
        });
        let plan = plan(&spec, &fetched(), &settings()).unwrap_or_else(|e| panic!("{e}"));
        let target = target_spec(&plan);
        assert_eq!(target.dns_policy.as_deref(), Some("None"));
        let config = target.dns_config.clone().unwrap_or_default();
        assert_eq!(config.nameservers, Some(vec!["10.0.0.53".to_owned()]));
        assert_eq!(config.options.unwrap_or_default()[1].value, None);
    }

    #[test]
    fn names_stay_within_kubernetes_limits_and_are_stable() {
        let long_ns = "n".repeat(63);
        let ns = settings().namespace_for(&long_ns);
        assert!(ns.len() <= 63, "{ns}");
        assert_eq!(ns, settings().namespace_for(&long_ns));
        assert_ne!(ns, settings().namespace_for(&"m".repeat(63)));
        let sandbox = SandboxName::for_pod("idc-1", UID);
        let long = copy_name(sandbox.as_str(), &"c".repeat(250));
        assert!(long.len() <= 253 && long.starts_with(sandbox.as_str()), "{long}");
        assert_ne!(long, copy_name(sandbox.as_str(), &"d".repeat(250)));
        let fixed = Settings {
            namespaces: Namespaces::Fixed("burst".into()),
            ..settings()
        };
        assert_eq!(fixed.namespace_for("shop"), "burst");
    }

    #[test]
    fn file_paths_that_are_not_secret_keys_are_mapped_through_items() {
        let files: BTreeMap<String, Vec<u8>> = [
            ("conf/app.yaml".to_owned(), b"a".to_vec()),
            ("plain".to_owned(), b"b".to_vec()),
        ]
        .into();
        let at = Placement {
            cluster_id: "c",
            namespace: "ns",
            sandbox: "eklet-c-u",
            pod_uid: "u",
        };
        let (Object::Secret(secret), volume) = files_secret("v", &files, 0o600, &at) else {
            panic!("a secret")
        };
        let items = volume.secret.and_then(|s| s.items).unwrap_or_default();
        let paths: Vec<_> = items.iter().map(|i| (i.key.as_str(), i.path.as_str())).collect();
        assert_eq!(paths, vec![("file-0", "conf/app.yaml"), ("plain", "plain")]);
        assert!(secret.data.unwrap_or_default().keys().all(|k| valid_key(k)));
    }

    #[test]
    fn flags_parse_into_tolerations_and_templates_or_name_the_mistake() {
        let t =
            parse_toleration("eks.tke.cloud.tencent.com/eklet:NoSchedule").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.operator.as_deref(), t.effect.as_deref()),
            (Some("Exists"), Some("NoSchedule"))
        );
        let t = parse_toleration("pool=burst").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.operator.as_deref(), t.value.as_deref(), t.effect),
            (Some("Equal"), Some("burst"), None)
        );
        assert!(parse_toleration("k:Sometimes").unwrap_err().contains("effect"));
        assert!(parse_toleration(":NoSchedule").is_err());
        assert!(parse_pair("zone={region}").unwrap_err().contains("placeholders"));
        assert!(parse_pair("novalue").is_err());
        let (key, value) = parse_pair("topology.kubernetes.io/zone={zone}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (key.as_str(), value.render("s", "z").as_str()),
            ("topology.kubernetes.io/zone", "z")
        );
    }

    #[test]
    fn sandbox_ids_round_trip_and_bad_ones_are_rejected() {
        assert_eq!(parse_sandbox_id(&sandbox_id("ns", "pod")), Some(("ns", "pod")));
        assert_eq!(parse_sandbox_id("nopod"), None);
        assert_eq!(parse_sandbox_id("/pod"), None);
        assert_eq!(parse_sandbox_id("a/b/c"), None);
    }

    #[test]
    fn pods_with_resource_claims_are_refused_by_name() {
        let mut pod = source_pod();
        if let Some(spec) = &mut pod.spec {
            spec.resource_claims = Some(vec![
                serde_json::from_value(json!({"name": "gpu"})).unwrap_or_else(|e| panic!("{e}")),
            ]);
        }
        let fetched = SourceObjects { pod, ..fetched() };
        let error = plan(&sandbox_spec(), &fetched, &settings()).unwrap_err();
        assert!(matches!(error, Problem::Unsupported(ref m) if m.contains("resource claims")));
    }
}
