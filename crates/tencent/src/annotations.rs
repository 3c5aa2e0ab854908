//! The EKS pod annotations (`eks.tke.cloud.tencent.com/...`) that have a field in
//! CreateEKSContainerInstances, turned into request overrides by one pure function over the
//! annotation map. Annotations the real eklet honours but the public API has no field for are listed
//! back in [`Overrides::without_api_field`], so the caller can warn instead of silently dropping them.
//!
//! | annotation | request field |
//! |---|---|
//! | `cpu` + `mem` (both or neither) | `Cpu`, `Memory` (must be a standard specification) |
//! | `cpu-type` | `CpuType` |
//! | `gpu-type`, `gpu-count` | `GpuType`, `GpuCount` |
//! | `security-group-id` | `SecurityGroupIds` |
//! | `resolv-conf` | `DnsConfig` |
//! | `role-name` | `CamRoleName` |
//! | `eip-attributes`, `eip-claim-delete-policy` | `AutoCreateEip`, `AutoCreateEipAttribute` |
//!
//! `metrics-port` has no request field either, but it is honoured: it is where the caller scrapes
//! the sandbox agent ([`crate::agent`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{CreateEksContainerInstancesRequest, DnsConfig, DnsConfigOption, EipAttribute};
use crate::spec::{self, Spec};

pub const PREFIX: &str = "eks.tke.cloud.tencent.com/";
pub const CPU: &str = "eks.tke.cloud.tencent.com/cpu";
pub const MEM: &str = "eks.tke.cloud.tencent.com/mem";
pub const CPU_TYPE: &str = "eks.tke.cloud.tencent.com/cpu-type";
pub const GPU_TYPE: &str = "eks.tke.cloud.tencent.com/gpu-type";
pub const GPU_COUNT: &str = "eks.tke.cloud.tencent.com/gpu-count";
pub const SECURITY_GROUP_ID: &str = "eks.tke.cloud.tencent.com/security-group-id";
pub const RESOLV_CONF: &str = "eks.tke.cloud.tencent.com/resolv-conf";
pub const ROLE_NAME: &str = "eks.tke.cloud.tencent.com/role-name";
pub const EIP_ATTRIBUTES: &str = "eks.tke.cloud.tencent.com/eip-attributes";
pub const EIP_CLAIM_DELETE_POLICY: &str = "eks.tke.cloud.tencent.com/eip-claim-delete-policy";

/// The `GpuType` values CreateEKSContainerInstances documents.
pub const GPU_TYPES: [&str; 6] = ["1/4*V100", "1/2*V100", "V100", "1/4*T4", "1/2*T4", "T4"];

const HANDLED: [&str; 11] = [
    CPU,
    MEM,
    CPU_TYPE,
    GPU_TYPE,
    GPU_COUNT,
    SECURITY_GROUP_ID,
    RESOLV_CONF,
    ROLE_NAME,
    EIP_ATTRIBUTES,
    EIP_CLAIM_DELETE_POLICY,
    crate::agent::METRICS_PORT_ANNOTATION,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {reason}")]
pub struct Error {
    pub key: String,
    pub reason: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(key: &str, reason: impl Into<String>) -> Error {
    Error {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// What the annotations change in a create request; `None` leaves the caller's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub spec: Option<Spec>,
    pub cpu_type: Option<String>,
    pub gpu_type: Option<String>,
    pub gpu_count: Option<u64>,
    pub security_group_ids: Option<Vec<String>>,
    pub dns_config: Option<DnsConfig>,
    pub cam_role_name: Option<String>,
    pub auto_create_eip: Option<EipAttribute>,
    /// `eks.tke.cloud.tencent.com/` annotations present on the pod that the API cannot express
    /// (e.g. `root-cbs-size`, `spot-pod`, `retain-ip`), sorted.
    pub without_api_field: Vec<String>,
}

impl Overrides {
    pub fn apply(&self, request: &mut CreateEksContainerInstancesRequest) {
        if let Some(spec) = self.spec {
            request.cpu = spec.cpu_cores();
            request.memory = spec.memory_gib();
        }
        if let Some(cpu_type) = &self.cpu_type {
            request.cpu_type = Some(cpu_type.clone());
        }
        if let Some(gpu_type) = &self.gpu_type {
            request.gpu_type = Some(gpu_type.clone());
        }
        if let Some(gpu_count) = self.gpu_count {
            request.gpu_count = Some(gpu_count);
        }
        if let Some(groups) = &self.security_group_ids {
            request.security_group_ids = groups.clone();
        }
        if let Some(dns) = &self.dns_config {
            request.dns_config = Some(dns.clone());
        }
        if let Some(role) = &self.cam_role_name {
            request.cam_role_name = Some(role.clone());
        }
        if let Some(eip) = &self.auto_create_eip {
            request.auto_create_eip = Some(true);
            request.auto_create_eip_attribute = Some(eip.clone());
        }
    }
}

/// Reads the annotations of one pod. Every invalid value is an error naming the annotation.
pub fn overrides_from_annotations(annotations: &BTreeMap<String, String>) -> Result<Overrides> {
    let get = |key: &str| annotations.get(key).map(|value| value.trim());
    let mut overrides = Overrides {
        without_api_field: annotations
            .keys()
            .filter(|key| key.starts_with(PREFIX) && !HANDLED.contains(&key.as_str()))
            .cloned()
            .collect(),
        ..Overrides::default()
    };

    overrides.spec = match (get(CPU), get(MEM)) {
        (None, None) => None,
        (Some(_), None) => return Err(invalid(CPU, format!("must be set together with {MEM}"))),
        (None, Some(_)) => return Err(invalid(MEM, format!("must be set together with {CPU}"))),
        (Some(cpu), Some(mem)) => {
            let cpu_millis = parse_cpu(cpu).ok_or_else(|| {
                invalid(
                    CPU,
                    format!("{cpu:?} is not a number of cores such as \"0.25\" or \"8\""),
                )
            })?;
            let memory_mib = parse_memory(mem)?;
            Some(
                Spec::standard(cpu_millis, memory_mib)
                    .map_err(|err: spec::Error| invalid(CPU, err.to_string()))?,
            )
        }
    };

    if let Some(value) = get(CPU_TYPE) {
        let types = priority_list(CPU_TYPE, value)?;
        if let Some(bad) = types
            .iter()
            .find(|t| !t.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(invalid(
                CPU_TYPE,
                format!("{bad:?} is not intel, amd or a CPU model such as S4"),
            ));
        }
        overrides.cpu_type = Some(types.join(","));
    }

    if let Some(value) = get(GPU_TYPE) {
        let types = priority_list(GPU_TYPE, value)?;
        if let Some(bad) = types.iter().find(|t| !GPU_TYPES.contains(&t.as_str())) {
            return Err(invalid(
                GPU_TYPE,
                format!("{bad:?} is not one of {}", GPU_TYPES.join(", ")),
            ));
        }
        overrides.gpu_type = Some(types.join(","));
    }

    if let Some(value) = get(GPU_COUNT) {
        let count = value
            .parse::<u64>()
            .ok()
            .filter(|&count| count > 0)
            .ok_or_else(|| {
                invalid(
                    GPU_COUNT,
                    format!("{value:?} is not a positive whole number of cards"),
                )
            })?;
        if overrides.gpu_type.is_none() {
            return Err(invalid(GPU_COUNT, format!("needs {GPU_TYPE} to say which GPU")));
        }
        overrides.gpu_count = Some(count);
    }

    if let Some(value) = get(SECURITY_GROUP_ID) {
        let groups = priority_list(SECURITY_GROUP_ID, value)?;
        if let Some(bad) = groups.iter().find(|g| {
            !g.strip_prefix("sg-")
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
        }) {
            return Err(invalid(
                SECURITY_GROUP_ID,
                format!("{bad:?} is not a security group id such as sg-1a2b3c4d"),
            ));
        }
        overrides.security_group_ids = Some(groups);
    }

    if let Some(value) = annotations.get(RESOLV_CONF) {
        overrides.dns_config = Some(parse_resolv_conf(value).map_err(|reason| invalid(RESOLV_CONF, reason))?);
    }

    if let Some(value) = get(ROLE_NAME) {
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            return Err(invalid(ROLE_NAME, format!("{value:?} is not a CAM role name")));
        }
        overrides.cam_role_name = Some(value.to_string());
    }

    if let Some(value) = get(EIP_ATTRIBUTES) {
        overrides.auto_create_eip = Some(parse_eip_attributes(value)?);
    }
    if let Some(policy) = get(EIP_CLAIM_DELETE_POLICY) {
        let Some(eip) = overrides.auto_create_eip.as_mut() else {
            return Err(invalid(
                EIP_CLAIM_DELETE_POLICY,
                format!("needs {EIP_ATTRIBUTES} to create an EIP"),
            ));
        };
        eip.delete_policy = policy.to_string();
    }

    Ok(overrides)
}

/// Comma-separated, order kept (it is a preference order), no empty entries.
fn priority_list(key: &str, value: &str) -> Result<Vec<String>> {
    let items: Vec<String> = value.split(',').map(|item| item.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(invalid(key, format!("{value:?} has an empty entry")));
    }
    Ok(items)
}

/// Cores as a decimal without unit: "0.25", "8".
fn parse_cpu(value: &str) -> Option<u32> {
    scaled_decimal(value, 1000).and_then(|millis| u32::try_from(millis).ok())
}

/// `512Mi`, `0.5Gi`, `16Gi`. The documentation warns that `G` (decimal) gives parameter errors.
fn parse_memory(value: &str) -> Result<u32> {
    let bad = || {
        invalid(
            MEM,
            format!("{value:?} is not a size in Mi or Gi such as \"512Mi\" or \"0.5Gi\""),
        )
    };
    let (number, mib_per_unit) = if let Some(number) = value.strip_suffix("Gi") {
        (number, 1024)
    } else if let Some(number) = value.strip_suffix("Mi") {
        (number, 1)
    } else {
        return Err(bad());
    };
    scaled_decimal(number, mib_per_unit)
        .and_then(|mib| u32::try_from(mib).ok())
        .ok_or_else(bad)
}

/// `value × scale` when that is a whole number, computed without floats.
fn scaled_decimal(value: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits_ok = |s: &str| s.len() <= 9 && s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || (value.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let numerator: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scaled = numerator * u128::from(scale);
    scaled
        .is_multiple_of(denominator)
        .then(|| u64::try_from(scaled / denominator).ok())
        .flatten()
}

/// `''`, `'{}'` or a JSON object of the EIP fields the API takes.
fn parse_eip_attributes(value: &str) -> Result<EipAttribute> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Given {
        delete_policy: Option<String>,
        internet_service_provider: Option<String>,
        internet_max_bandwidth_out: Option<u64>,
    }
    let given: Given = if value.is_empty() {
        Given {
            delete_policy: None,
            internet_service_provider: None,
            internet_max_bandwidth_out: None,
        }
    } else {
        serde_json::from_str(value).map_err(|err| {
            invalid(
                EIP_ATTRIBUTES,
                format!(
                    "{err}; expected a JSON object of DeletePolicy, InternetServiceProvider, InternetMaxBandwidthOut"
                ),
            )
        })?
    };
    Ok(EipAttribute {
        // Anything but "Never" releases the EIP with the instance, which is the chart's default.
        delete_policy: given.delete_policy.unwrap_or_default(),
        internet_service_provider: given.internet_service_provider,
        internet_max_bandwidth_out: given.internet_max_bandwidth_out,
    })
}

/// Parses `/etc/resolv.conf` content (the `resolv-conf` annotation, on a pod or a virtual node) into
/// the API's `DnsConfig`. `domain` counts as a search domain; `options` become name/value pairs
/// (`ndots:5` → `ndots`/`5`, `rotate` → `rotate`/``). Other directives are refused, since the API
/// could not carry them.
pub fn parse_resolv_conf(content: &str) -> std::result::Result<DnsConfig, String> {
    let mut dns = DnsConfig::default();
    for (index, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let directive = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let line_no = index + 1;
        match directive {
            "nameserver" => {
                let [server] = args.as_slice() else {
                    return Err(format!("line {line_no}: nameserver takes exactly one address"));
                };
                if server.parse::<IpAddr>().is_err() {
                    return Err(format!("line {line_no}: {server:?} is not an IP address"));
                }
                dns.nameservers.push((*server).to_string());
            }
            "search" | "domain" => {
                if args.is_empty() {
                    return Err(format!("line {line_no}: {directive} needs at least one domain"));
                }
                dns.searches.extend(args.iter().map(|domain| domain.to_string()));
            }
            "options" => {
                if args.is_empty() {
                    return Err(format!("line {line_no}: options needs at least one option"));
                }
                for option in args {
                    let (name, value) = option.split_once(':').unwrap_or((option, ""));
                    dns.options.push(DnsConfigOption {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
            }
            other => return Err(format!("line {line_no}: unsupported directive {other:?}")),
        }
    }
    if dns.nameservers.is_empty() {
        return Err("no nameserver line".to_string());
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn overrides(pairs: &[(&str, &str)]) -> Result<Overrides> {
        overrides_from_annotations(&annotations(pairs))
    }

    #[test]
    fn no_eks_annotations_change_nothing() {
        assert_eq!(
            overrides(&[("AUTO_SCALE_EKS", "true")]).unwrap(),
            Overrides::default()
        );
    }

    #[test]
    fn cpu_and_mem_annotations_set_a_standard_spec() {
        let got = overrides(&[(CPU, "0.25"), (MEM, "512Mi")]).unwrap();
        assert_eq!(
            got.spec,
            Some(Spec {
                cpu_millis: 250,
                memory_mib: 512
            })
        );
        let got = overrides(&[(CPU, "8"), (MEM, "16Gi")]).unwrap();
        assert_eq!(
            got.spec,
            Some(Spec {
                cpu_millis: 8000,
                memory_mib: 16 * 1024
            })
        );
        let got = overrides(&[(CPU, "0.5"), (MEM, "0.5Gi")]);
        assert!(got.unwrap_err().reason.contains("0.5 cores allows 1, 2, 3, 4Gi"));
    }

    #[test]
    fn cpu_without_mem_and_bad_units_are_refused() {
        assert_eq!(overrides(&[(CPU, "2")]).unwrap_err().key, CPU);
        assert_eq!(overrides(&[(MEM, "4Gi")]).unwrap_err().key, MEM);
        let err = overrides(&[(CPU, "2"), (MEM, "4G")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation eks.tke.cloud.tencent.com/mem: \"4G\" is not a size in Mi or Gi such as \"512Mi\" or \"0.5Gi\""
        );
        for bad_cpu in ["2c", "-1", "", ".5", "1.", "1e3", "99999999999999"] {
            assert_eq!(
                overrides(&[(CPU, bad_cpu), (MEM, "4Gi")]).unwrap_err().key,
                CPU,
                "{bad_cpu:?}"
            );
        }
    }

    #[test]
    fn cpu_and_gpu_types_are_priority_lists() {
        let got = overrides(&[(CPU_TYPE, "amd, intel"), (GPU_TYPE, "T4,V100"), (GPU_COUNT, "2")]).unwrap();
        assert_eq!(got.cpu_type.as_deref(), Some("amd,intel"));
        assert_eq!(got.gpu_type.as_deref(), Some("T4,V100"));
        assert_eq!(got.gpu_count, Some(2));
        assert!(
            overrides(&[(GPU_TYPE, "A100")])
                .unwrap_err()
                .reason
                .contains("is not one of 1/4*V100")
        );
        assert!(
            overrides(&[(CPU_TYPE, "amd,,intel")])
                .unwrap_err()
                .reason
                .contains("empty entry")
        );
        assert_eq!(
            overrides(&[(GPU_TYPE, "T4"), (GPU_COUNT, "0")]).unwrap_err().key,
            GPU_COUNT
        );
        assert_eq!(overrides(&[(GPU_COUNT, "1")]).unwrap_err().key, GPU_COUNT);
    }

    #[test]
    fn security_groups_keep_their_order_and_must_look_like_ids() {
        let got = overrides(&[(SECURITY_GROUP_ID, "sg-2,sg-1")]).unwrap();
        assert_eq!(
            got.security_group_ids,
            Some(vec!["sg-2".to_string(), "sg-1".to_string()])
        );
        assert_eq!(
            overrides(&[(SECURITY_GROUP_ID, "default")]).unwrap_err().key,
            SECURITY_GROUP_ID
        );
    }

    #[test]
    fn resolv_conf_becomes_the_dns_config() {
        let content = "# cloud\nnameserver 183.60.83.19\nnameserver 2001:db8::1\nsearch default.svc.cluster.local svc.cluster.local\ndomain cluster.local\noptions ndots:5 rotate\n";
        let got = overrides(&[(RESOLV_CONF, content)]).unwrap();
        let dns = got.dns_config.unwrap();
        assert_eq!(dns.nameservers, ["183.60.83.19", "2001:db8::1"]);
        assert_eq!(
            dns.searches,
            ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
        assert_eq!(
            dns.options,
            [
                DnsConfigOption {
                    name: "ndots".into(),
                    value: "5".into()
                },
                DnsConfigOption {
                    name: "rotate".into(),
                    value: String::new()
                }
            ]
        );
    }

    #[test]
    fn malformed_resolv_conf_is_refused_with_the_line() {
        assert_eq!(
            parse_resolv_conf("nameserver dns.example\n").unwrap_err(),
            "line 1: \"dns.example\" is not an IP address"
        );
        assert_eq!(
            parse_resolv_conf("nameserver 1.1.1.1\nsortlist 10.0.0.0\n").unwrap_err(),
            "line 2: unsupported directive \"sortlist\""
        );
        assert_eq!(
            parse_resolv_conf("search a.b\n").unwrap_err(),
            "no nameserver line"
        );
    }

    #[test]
    fn eip_annotations_request_an_automatic_eip() {
        let got = overrides(&[
            (EIP_ATTRIBUTES, r#"{"InternetMaxBandwidthOut":2}"#),
            (EIP_CLAIM_DELETE_POLICY, "Never"),
        ])
        .unwrap();
        assert_eq!(
            got.auto_create_eip,
            Some(EipAttribute {
                delete_policy: "Never".into(),
                internet_service_provider: None,
                internet_max_bandwidth_out: Some(2)
            })
        );
        assert_eq!(
            overrides(&[(EIP_ATTRIBUTES, "")])
                .unwrap()
                .auto_create_eip
                .unwrap()
                .delete_policy,
            ""
        );
        assert!(
            overrides(&[(EIP_ATTRIBUTES, r#"{"Bandwidth":2}"#)])
                .unwrap_err()
                .reason
                .contains("unknown field")
        );
        assert_eq!(
            overrides(&[(EIP_CLAIM_DELETE_POLICY, "Never")]).unwrap_err().key,
            EIP_CLAIM_DELETE_POLICY
        );
    }

    #[test]
    fn annotations_without_an_api_field_are_listed_not_dropped_silently() {
        let got = overrides(&[
            (CPU_TYPE, "intel"),
            ("eks.tke.cloud.tencent.com/spot-pod", "true"),
            ("eks.tke.cloud.tencent.com/root-cbs-size", "50"),
            // Honoured by the caller (where to scrape the sandbox agent), so no warning.
            (crate::agent::METRICS_PORT_ANNOTATION, "9200"),
        ])
        .unwrap();
        assert_eq!(
            got.without_api_field,
            [
                "eks.tke.cloud.tencent.com/root-cbs-size",
                "eks.tke.cloud.tencent.com/spot-pod"
            ]
        );
    }

    #[test]
    fn overrides_apply_to_a_create_request() {
        let got = overrides(&[
            (CPU, "2"),
            (MEM, "8Gi"),
            (SECURITY_GROUP_ID, "sg-9"),
            (ROLE_NAME, "TkeRole"),
        ])
        .unwrap();
        let mut request = CreateEksContainerInstancesRequest {
            cpu: 1.0,
            memory: 2.0,
            security_group_ids: vec!["sg-default".into()],
            ..Default::default()
        };
        got.apply(&mut request);
        assert_eq!((request.cpu, request.memory), (2.0, 8.0));
        assert_eq!(request.security_group_ids, ["sg-9"]);
        assert_eq!(request.cam_role_name.as_deref(), Some("TkeRole"));
        assert_eq!(request.cpu_type, None);
    }
}
