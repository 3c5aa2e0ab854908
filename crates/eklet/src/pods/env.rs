//! A container's environment as the kubelet would build it: the apiserver's service variables
//! first (pointing at `--pod-used-apiserver`, since the cluster's service IP is not reachable
//! from the cloud), then `envFrom` in order, then `env`, each later definition winning, with
//! `$(VAR)` references expanded against what is defined before. ConfigMap and Secret values
//! come from objects fetched beforehand, so this module does no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVarSource, Pod, Secret};

use crate::{config::ApiServerAddress, provider::EnvVar, quantity};

/// Why an environment cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required ConfigMap, Secret or key is missing; the kubelet reports this as
    /// `CreateContainerConfigError` and retries, and so does eklet.
    Missing(String),
    /// A downward-API field the provider cannot supply before the sandbox exists.
    Unsupported(String),
    /// The pod spec has a field eklet cannot interpret.
    Invalid(String),
}

/// The objects and facts env values are taken from.
pub struct Sources<'a> {
    pub pod: &'a Pod,
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    pub secrets: &'a BTreeMap<String, Secret>,
    /// The pod's `status.hostIP` (the node's InternalIP).
    pub host_ip: &'a str,
    /// Whether the provider can supply `status.podIP` to the container itself.
    pub pod_ip_available: bool,
    /// What `limits.*` resolve to when the container sets no limit (the node's allocatable).
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

/// The variables the kubelet defines for the `kubernetes` Service, aimed at `apiserver`.
pub fn service_variables(apiserver: &ApiServerAddress) -> Vec<EnvVar> {
    let (host, port) = (&apiserver.host, apiserver.port);
    let addr = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    [
        ("KUBERNETES_SERVICE_HOST", host.clone()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
        ("KUBERNETES_PORT", format!("tcp://{addr}:{port}")),
        (
            &*format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{addr}:{port}"),
        ),
        (&*format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".to_owned()),
        (&*format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (&*format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone()),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value,
    })
    .collect()
}

/// The container's resolved environment, in first-definition order with the last value of
/// each name.
pub fn resolve(
    container: &Container,
    service: &[EnvVar],
    sources: &Sources<'_>,
) -> Result<Vec<EnvVar>, Problem> {
    let mut env = Ordered::default();
    for var in service {
        env.set(&var.name, var.value.clone());
    }
    let namespace = sources.pod.metadata.namespace.as_deref().unwrap_or("default");
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(reference) = &from.config_map_ref {
            let optional = reference.optional.unwrap_or(false);
            match sources.config_maps.get(&reference.name) {
                Some(config_map) => {
                    for (key, value) in config_map.data.iter().flatten() {
                        env.set_from(prefix, key, value.clone());
                    }
                    for (key, value) in config_map.binary_data.iter().flatten() {
                        env.set_from(prefix, key, String::from_utf8_lossy(&value.0).into_owned());
                    }
                }
                None if optional => {}
                None => {
                    return Err(Problem::Missing(format!(
                        "configmap {:?} not found",
                        reference.name
                    )));
                }
            }
        }
        if let Some(reference) = &from.secret_ref {
            let optional = reference.optional.unwrap_or(false);
            match sources.secrets.get(&reference.name) {
                Some(secret) => {
                    for (key, value) in secret.data.iter().flatten() {
                        env.set_from(prefix, key, String::from_utf8_lossy(&value.0).into_owned());
                    }
                    for (key, value) in secret.string_data.iter().flatten() {
                        env.set_from(prefix, key, value.clone());
                    }
                }
                None if optional => {}
                None => return Err(Problem::Missing(format!("secret {:?} not found", reference.name))),
            }
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(source)) => match value_from(source, container, namespace, sources)? {
                Some(value) => value,
                None => continue,
            },
            (Some(value), None) => expand(value, |name| env.get(name)),
            (None, None) => String::new(),
        };
        env.set(&var.name, value);
    }
    Ok(env.into_vars())
}

/// A `valueFrom` value; `None` when an optional source is absent.
fn value_from(
    source: &EnvVarSource,
    container: &Container,
    namespace: &str,
    sources: &Sources<'_>,
) -> Result<Option<String>, Problem> {
    if let Some(selector) = &source.config_map_key_ref {
        let optional = selector.optional.unwrap_or(false);
        let Some(config_map) = sources.config_maps.get(&selector.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(Problem::Missing(format!(
                    "configmap {:?} not found",
                    selector.name
                )))
            };
        };
        let value = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(&selector.key).cloned())
            .or_else(|| {
                config_map
                    .binary_data
                    .as_ref()
                    .and_then(|d| d.get(&selector.key))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
        return match value {
            Some(value) => Ok(Some(value)),
            None if optional => Ok(None),
            None => Err(Problem::Missing(format!(
                "couldn't find key {} in ConfigMap {namespace}/{}",
                selector.key, selector.name
            ))),
        };
    }
    if let Some(selector) = &source.secret_key_ref {
        let optional = selector.optional.unwrap_or(false);
        let Some(secret) = sources.secrets.get(&selector.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(Problem::Missing(format!("secret {:?} not found", selector.name)))
            };
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&selector.key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&selector.key).cloned())
            });
        return match value {
            Some(value) => Ok(Some(value)),
            None if optional => Ok(None),
            None => Err(Problem::Missing(format!(
                "couldn't find key {} in Secret {namespace}/{}",
                selector.key, selector.name
            ))),
        };
    }
    if let Some(field) = &source.field_ref {
        return field_value(&field.field_path, sources).map(Some);
    }
    if let Some(resource) = &source.resource_field_ref {
        let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) if name != container.name => sources
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == name))
                .ok_or_else(|| {
                    Problem::Invalid(format!("resourceFieldRef names unknown container {name:?}"))
                })?,
            _ => container,
        };
        return resource_value(
            target,
            &resource.resource,
            resource.divisor.as_ref().map(|d| d.0.as_str()),
            sources,
        )
        .map(Some);
    }
    Err(Problem::Invalid("env valueFrom without a source".into()))
}

fn field_value(path: &str, sources: &Sources<'_>) -> Result<String, Problem> {
    let metadata = &sources.pod.metadata;
    let spec = sources.pod.spec.as_ref();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_owned)
    };
    let value = match path {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(metadata.labels.as_ref()),
        "metadata.annotations" => format_map(metadata.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => sources.host_ip.to_owned(),
        "status.podIP" | "status.podIPs" if !sources.pod_ip_available => {
            return Err(Problem::Unsupported(format!(
                "the downward API field {path}: the cloud assigns the pod IP when it creates the sandbox, after its \
                 environment is fixed"
            )));
        }
        "status.podIP" | "status.podIPs" => String::new(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(Problem::Invalid(format!("unsupported fieldPath {path:?}")));
            }
        }
    };
    Ok(value)
}

/// `k="v"` lines sorted by key, as the kubelet formats whole label and annotation maps.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    sources: &Sources<'_>,
) -> Result<String, Problem> {
    let resources = container.resources.as_ref();
    let get = |map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
               key: &str| { map.and_then(|m| m.get(key)).map(|q| q.0.clone()) };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let parse = |text: &str| quantity::parse(text).map_err(|e| Problem::Invalid(e.to_string()));
    let (value, default_divisor) = match resource {
        "limits.cpu" => (
            get(limits, "cpu")
                .map(|q| parse(&q))
                .transpose()?
                .unwrap_or(sources.node_cpu_millis as f64 / 1000.0),
            "1",
        ),
        "limits.memory" => (
            get(limits, "memory")
                .map(|q| parse(&q))
                .transpose()?
                .unwrap_or(sources.node_memory_bytes as f64),
            "1",
        ),
        "requests.cpu" => (
            get(requests, "cpu")
                .or_else(|| get(limits, "cpu"))
                .map(|q| parse(&q))
                .transpose()?
                .unwrap_or(0.0),
            "1",
        ),
        "requests.memory" => (
            get(requests, "memory")
                .or_else(|| get(limits, "memory"))
                .map(|q| parse(&q))
                .transpose()?
                .unwrap_or(0.0),
            "1",
        ),
        other if other.starts_with("limits.") || other.starts_with("requests.") => {
            let (kind, name) = other.split_once('.').unwrap_or_default();
            let map = if kind == "limits" { limits } else { requests };
            (get(map, name).map(|q| parse(&q)).transpose()?.unwrap_or(0.0), "1")
        }
        other => {
            return Err(Problem::Invalid(format!(
                "unsupported resourceFieldRef resource {other:?}"
            )));
        }
    };
    let divisor = parse(divisor.unwrap_or(default_divisor))?;
    if divisor <= 0.0 {
        return Err(Problem::Invalid(
            "resourceFieldRef divisor must be positive".into(),
        ));
    }
    // The kubelet rounds up: 250m CPU with divisor 1 is "1".
    let scaled = value / divisor;
    let rounded = if (scaled - scaled.round()).abs() < 1e-9 {
        scaled.round()
    } else {
        scaled.ceil()
    };
    Ok(format!("{}", rounded as u64))
}

/// Expands `$(NAME)` references as Kubernetes does: `$$` is a literal `$`, unknown names and
/// unclosed references are kept as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            None => out.push('$'),
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            Some((open, '(')) => match input[open + 1..].find(')') {
                Some(len) => {
                    let name = &input[open + 1..open + 1 + len];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    let end = open + 1 + len;
                    while chars.peek().is_some_and(|(j, _)| *j <= end) {
                        chars.next();
                    }
                }
                None => {
                    chars.next();
                    out.push_str("$(");
                }
            },
            Some((_, other)) => {
                chars.next();
                out.push('$');
                out.push(other);
            }
        }
    }
    out
}

/// Variables in first-definition order, later values replacing earlier ones.
#[derive(Default)]
struct Ordered {
    vars: Vec<EnvVar>,
}

impl Ordered {
    fn get(&self, name: &str) -> Option<String> {
        self.vars.iter().find(|v| v.name == name).map(|v| v.value.clone())
    }

    fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|v| v.name == name) {
            Some(var) => var.value = value,
            None => self.vars.push(EnvVar {
                name: name.to_owned(),
                value,
            }),
        }
    }

    /// `envFrom` keys that are not valid variable names are skipped, as the kubelet does.
    fn set_from(&mut self, prefix: &str, key: &str, value: String) {
        let name = format!("{prefix}{key}");
        let valid = !name.is_empty() && !name.contains('=') && name.chars().all(|c| c.is_ascii_graphic());
        if valid {
            self.set(&name, value);
        }
    }

    fn into_vars(self) -> Vec<EnvVar> {
        self.vars
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1", "labels": {"app": "web", "tier": "front"}},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    struct Fixture {
        config_maps: BTreeMap<String, ConfigMap>,
        secrets: BTreeMap<String, Secret>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                config_maps: [(
                    "settings".to_owned(),
                    config_map(&[("LEVEL", "debug"), ("MODE", "fast"), ("bad=key", "x")]),
                )]
                .into(),
                secrets: [("creds".to_owned(), secret(&[("PASSWORD", "hunter2")]))].into(),
            }
        }

        fn resolve(&self, pod: &Pod) -> Result<Vec<EnvVar>, Problem> {
            let container = pod
                .spec
                .as_ref()
                .map(|s| s.containers[0].clone())
                .unwrap_or_default();
            let sources = Sources {
                pod,
                config_maps: &self.config_maps,
                secrets: &self.secrets,
                host_ip: "10.0.0.7",
                pod_ip_available: false,
                node_cpu_millis: 8000,
                node_memory_bytes: 16 << 30,
            };
            let service = service_variables(&ApiServerAddress {
                host: "10.0.0.1".into(),
                port: 6443,
            });
            resolve(&container, &service, &sources)
        }
    }

    fn value(env: &[EnvVar], name: &str) -> Option<String> {
        env.iter().find(|v| v.name == name).map(|v| v.value.clone())
    }

    #[test]
    fn config_map_and_secret_values_arrive_by_key_and_wholesale() {
        let pod = pod(json!({"containers": [{"name": "app", "image": "nginx",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
        ]}]}));
        let env = Fixture::new().resolve(&pod).unwrap();
        assert_eq!(value(&env, "LEVEL").as_deref(), Some("debug"));
        assert_eq!(value(&env, "DB_PASSWORD").as_deref(), Some("hunter2"));
        assert_eq!(value(&env, "CFG_MODE").as_deref(), Some("fast"));
        assert_eq!(
            value(&env, "CFG_bad=key"),
            None,
            "invalid names from envFrom are skipped"
        );
    }

    #[test]
    fn in_cluster_clients_are_pointed_at_the_pod_used_apiserver_unless_the_pod_overrides_it() {
        let plain = pod(json!({"containers": [{"name": "app", "image": "nginx"}]}));
        let env = Fixture::new().resolve(&plain).unwrap();
        assert_eq!(
            value(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(value(&env, "KUBERNETES_SERVICE_PORT").as_deref(), Some("6443"));
        assert_eq!(
            value(&env, "KUBERNETES_PORT").as_deref(),
            Some("tcp://10.0.0.1:6443")
        );
        let overriding = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "api.example"}]}]}));
        let env = Fixture::new().resolve(&overriding).unwrap();
        assert_eq!(
            value(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
            Some("api.example")
        );
    }

    #[test]
    fn a_missing_required_reference_is_reported_and_an_optional_one_skipped() {
        let required = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "NOPE"}}}]}]}));
        assert_eq!(
            Fixture::new().resolve(&required),
            Err(Problem::Missing(
                "couldn't find key NOPE in ConfigMap shop/settings".into()
            ))
        );
        let missing_secret = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "envFrom": [{"secretRef": {"name": "absent"}}]}]}));
        assert_eq!(
            Fixture::new().resolve(&missing_secret),
            Err(Problem::Missing("secret \"absent\" not found".into()))
        );
        let optional = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}}],
            "envFrom": [{"configMapRef": {"name": "absent", "optional": true}}]}]}));
        let env = Fixture::new().resolve(&optional).unwrap();
        assert_eq!(value(&env, "X"), None);
    }

    #[test]
    fn the_downward_api_gives_pod_facts_and_refuses_the_pod_ip() {
        let pod_with = |path: &str| {
            pod(
                json!({"nodeName": "eklet-subnet-a", "containers": [{"name": "app", "image": "nginx",
                "env": [{"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path}}}]}]}),
            )
        };
        let fixture = Fixture::new();
        let get = |path: &str| {
            fixture
                .resolve(&pod_with(path))
                .map(|env| value(&env, "V").unwrap_or_default())
        };
        assert_eq!(get("metadata.name").as_deref(), Ok("web-0"));
        assert_eq!(get("metadata.namespace").as_deref(), Ok("shop"));
        assert_eq!(get("metadata.labels['tier']").as_deref(), Ok("front"));
        assert_eq!(
            get("metadata.labels").as_deref(),
            Ok("app=\"web\"\ntier=\"front\"")
        );
        assert_eq!(get("spec.nodeName").as_deref(), Ok("eklet-subnet-a"));
        assert_eq!(get("status.hostIP").as_deref(), Ok("10.0.0.7"));
        assert!(matches!(get("status.podIP"), Err(Problem::Unsupported(m)) if m.contains("status.podIP")));
        assert!(matches!(get("spec.bogus"), Err(Problem::Invalid(_))));
    }

    #[test]
    fn resource_fields_round_up_by_the_divisor_and_default_to_the_node() {
        let pod = pod(json!({"containers": [{"name": "app", "image": "nginx",
        "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
        "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "REQ_CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ]}]}));
        let env = Fixture::new().resolve(&pod).unwrap();
        assert_eq!(value(&env, "CPU").as_deref(), Some("1"));
        assert_eq!(value(&env, "CPU_M").as_deref(), Some("250"));
        assert_eq!(value(&env, "MEM_MI").as_deref(), Some("64"));
        assert_eq!(
            value(&env, "REQ_CPU_M").as_deref(),
            Some("250"),
            "requests default to limits"
        );
        let unlimited = super::tests::pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}]}));
        assert_eq!(
            value(&Fixture::new().resolve(&unlimited).unwrap(), "CPU").as_deref(),
            Some("8")
        );
    }

    #[test]
    fn references_expand_against_earlier_variables_like_kubernetes() {
        let lookup = |name: &str| (name == "A").then(|| "1".to_owned());
        assert_eq!(expand("x$(A)y", lookup), "x1y");
        assert_eq!(expand("$(B)", lookup), "$(B)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("cost $5 $", lookup), "cost $5 $");
        assert_eq!(expand("é$(A)ü", lookup), "é1ü");
        let pod = pod(json!({"containers": [{"name": "app", "image": "nginx",
            "env": [{"name": "HOST", "value": "db"}, {"name": "URL", "value": "http://$(HOST):5432"}]}]}));
        assert_eq!(
            value(&Fixture::new().resolve(&pod).unwrap(), "URL").as_deref(),
            Some("http://db:5432")
        );
    }
}
