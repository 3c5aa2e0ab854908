//! The wire types of the EKS container-instance (EKSCI) actions of product `tke`, version
//! `2018-05-25`, with the API's own PascalCase field names. Required request fields are plain types;
//! optional ones are `Option` and left out of the JSON when unset, as the official SDKs do. Response
//! fields the API documents as nullable read `null` as empty. Each action is a request type
//! implementing [`Action`], which ties it to its name and its response.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The product (signing service) and its API version.
pub const SERVICE: &str = "tke";
pub const VERSION: &str = "2018-05-25";

/// Most instances one DescribeEKSContainerInstances call returns, and most ids it accepts.
pub const DESCRIBE_MAX_LIMIT: u64 = 100;
/// Most ids one DeleteEKSContainerInstances call accepts.
pub const DELETE_MAX_IDS: usize = 20;
/// The API's default page size when `Limit` is not sent.
pub const DESCRIBE_DEFAULT_LIMIT: u64 = 20;

/// One API action: its name, its response, and whether repeating it is harmless.
pub trait Action: Serialize {
    const NAME: &'static str;
    /// False for actions whose repetition has an effect of its own (Create makes a second instance);
    /// the client retries those only where the request provably was not executed.
    const IDEMPOTENT: bool;
    type Response: DeserializeOwned;
}

/// Reads `null` as the type's default, for fields the API documents as "may return null".
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident default $default:expr, { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($variant,)+
            /// A value this client does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                match value.as_str() {
                    $($wire => Self::$variant,)+
                    _ => Self::Other(value),
                }
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.as_str().to_string()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// `EksCi.Status`.
    InstanceStatus default Self::Other(String::new()), {
        Pending => "Pending",
        Running => "Running",
        Succeeded => "Succeeded",
        Failed => "Failed",
    }
);

string_enum!(
    /// `ContainerState.State`.
    ContainerStateName default Self::Unknown, {
        Created => "created",
        Running => "running",
        Exited => "exited",
        Unknown => "unknown",
    }
);

string_enum!(
    /// `RestartPolicy`, default `Always`.
    RestartPolicy default Self::Always, {
        Always => "Always",
        Never => "Never",
        OnFailure => "OnFailure",
    }
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    pub image: String,
    pub name: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Cores this container may use, at most the instance's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Output only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<ContainerState>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub environment_vars: Vec<EnvironmentVariable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<LivenessOrReadinessProbe>,
    /// GiB this container may use, at most the instance's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<LivenessOrReadinessProbe>,
    /// Output only (the official Create example sends it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerState {
    #[serde(deserialize_with = "nullable")]
    pub exit_code: i64,
    /// API time string; see [`crate::time::parse_api_time`]. The zero time means "not finished".
    #[serde(deserialize_with = "nullable")]
    pub finish_time: String,
    #[serde(deserialize_with = "nullable")]
    pub message: String,
    #[serde(deserialize_with = "nullable")]
    pub reason: String,
    #[serde(deserialize_with = "nullable")]
    pub restart_count: i64,
    #[serde(deserialize_with = "nullable")]
    pub start_time: String,
    #[serde(deserialize_with = "nullable")]
    pub state: ContainerStateName,
}

/// An environment variable. Values are often resolved Secrets, so `Debug` shows only their length.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvironmentVariable {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for EnvironmentVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvironmentVariable")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeMount {
    pub mount_path: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path_expr: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LivenessOrReadinessProbe {
    pub probe: Probe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Exec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Exec {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpGet {
    pub path: String,
    pub port: i64,
    /// `HTTP` or `HTTPS`.
    pub scheme: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TcpSocket {
    pub port: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EksCiVolume {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub cbs_volumes: Vec<CbsVolume>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub nfs_volumes: Vec<NfsVolume>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CbsVolume {
    pub cbs_disk_id: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NfsVolume {
    pub name: String,
    pub path: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Registry credentials for pulling images. The password never shows in `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRegistryCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Debug for ImageRegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageRegistryCredential")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsConfig {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<DnsConfigOption>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsConfigOption {
    pub name: String,
    /// Required by the API; empty for flag options such as `rotate`.
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EipAttribute {
    /// `Never` keeps the EIP after the instance is deleted; anything else releases it.
    pub delete_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_service_provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_max_bandwidth_out: Option<u64>,
}

/// A Describe filter: several filters are ANDed, the values of one filter ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// The filter names DescribeEKSContainerInstances documents.
pub mod filter_names {
    pub const EKS_CI_NAME: &str = "eks-ci-name";
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    pub const STATUS: &str = "status";
    pub const PRIVATE_IP: &str = "private-ip";
    pub const EIP_ADDRESS: &str = "eip-address";
    pub const VPC_ID: &str = "vpc-id";
    pub const ALL: [&str; 5] = [EKS_CI_NAME, STATUS, PRIVATE_IP, EIP_ADDRESS, VPC_ID];
}

impl Filter {
    pub fn new(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            name: name.to_string(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

/// A container instance as Describe returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EksCi {
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub auto_created_eip_id: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub cam_role_name: String,
    #[serde(deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(deserialize_with = "nullable")]
    pub cpu: f64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub cpu_type: String,
    #[serde(deserialize_with = "nullable")]
    pub creation_time: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub eip_address: String,
    #[serde(deserialize_with = "nullable")]
    pub eks_ci_id: String,
    #[serde(deserialize_with = "nullable")]
    pub eks_ci_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eks_ci_volume: Option<EksCiVolume>,
    #[serde(deserialize_with = "nullable")]
    pub gpu_count: u64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub gpu_type: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(deserialize_with = "nullable")]
    pub memory: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_status: Option<bool>,
    #[serde(deserialize_with = "nullable")]
    pub private_ip: String,
    #[serde(deserialize_with = "nullable")]
    pub restart_policy: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(deserialize_with = "nullable")]
    pub security_group_ids: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub status: InstanceStatus,
    #[serde(deserialize_with = "nullable")]
    pub subnet_id: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub succeeded_time: String,
    #[serde(deserialize_with = "nullable")]
    pub vpc_id: String,
}

/// An instance event (image pulls, starts, failures), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Event {
    #[serde(deserialize_with = "nullable")]
    pub pod_name: String,
    #[serde(deserialize_with = "nullable")]
    pub reason: String,
    /// `Normal` or `Warning`.
    #[serde(deserialize_with = "nullable")]
    pub r#type: String,
    #[serde(deserialize_with = "nullable")]
    pub count: i64,
    #[serde(deserialize_with = "nullable")]
    pub first_timestamp: String,
    #[serde(deserialize_with = "nullable")]
    pub last_timestamp: String,
    #[serde(deserialize_with = "nullable")]
    pub message: String,
}

// === CreateEKSContainerInstances ===

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEksContainerInstancesRequest {
    pub containers: Vec<Container>,
    pub eks_ci_name: String,
    pub security_group_ids: Vec<String>,
    pub subnet_id: String,
    pub vpc_id: String,
    /// GiB; must be a standard specification together with `cpu` (see [`crate::spec`]).
    pub memory: f64,
    /// Cores.
    pub cpu: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry_credentials: Option<Vec<ImageRegistryCredential>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eks_ci_volume: Option<EksCiVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existed_eip_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create_eip_attribute: Option<EipAttribute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create_eip: Option<bool>,
    /// `intel`, `amd`, a model, or a priority list such as `amd,intel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cam_role_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEksContainerInstancesResponse {
    #[serde(deserialize_with = "nullable")]
    pub eks_ci_ids: Vec<String>,
    pub request_id: String,
}

impl Action for CreateEksContainerInstancesRequest {
    const NAME: &'static str = "CreateEKSContainerInstances";
    const IDEMPOTENT: bool = false;
    type Response = CreateEksContainerInstancesResponse;
}

// === DescribeEKSContainerInstances ===

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeEksContainerInstancesRequest {
    /// Default 20, at most 100; it also caps the answer to a list of `EksCiIds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<Filter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eks_ci_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeEksContainerInstancesResponse {
    #[serde(deserialize_with = "nullable")]
    pub total_count: u64,
    #[serde(deserialize_with = "nullable")]
    pub eks_cis: Vec<EksCi>,
    pub request_id: String,
}

impl Action for DescribeEksContainerInstancesRequest {
    const NAME: &'static str = "DescribeEKSContainerInstances";
    const IDEMPOTENT: bool = true;
    type Response = DescribeEksContainerInstancesResponse;
}

// === DeleteEKSContainerInstances ===

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteEksContainerInstancesRequest {
    /// At most 20.
    pub eks_ci_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_auto_created_eip: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeleteEksContainerInstancesResponse {
    pub request_id: String,
}

impl Action for DeleteEksContainerInstancesRequest {
    const NAME: &'static str = "DeleteEKSContainerInstances";
    const IDEMPOTENT: bool = true;
    type Response = DeleteEksContainerInstancesResponse;
}

// === DescribeEKSContainerInstanceEvent ===

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeEksContainerInstanceEventRequest {
    pub eks_ci_id: String,
    /// Default 50, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeEksContainerInstanceEventResponse {
    #[serde(deserialize_with = "nullable")]
    pub events: Vec<Event>,
    #[serde(deserialize_with = "nullable")]
    pub eks_ci_id: String,
    pub request_id: String,
}

impl Action for DescribeEksContainerInstanceEventRequest {
    const NAME: &'static str = "DescribeEKSContainerInstanceEvent";
    const IDEMPOTENT: bool = true;
    type Response = DescribeEksContainerInstanceEventResponse;
}

// === DescribeEksContainerInstanceLog (lower-case "Eks" in the action name) ===

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeEksContainerInstanceLogRequest {
    pub eks_ci_id: String,
    /// Required in practice for instances with more than one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Last lines to return: default 500, at most 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// The previous container, after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DescribeEksContainerInstanceLogResponse {
    #[serde(deserialize_with = "nullable")]
    pub container_name: String,
    #[serde(deserialize_with = "nullable")]
    pub log_content: String,
    pub request_id: String,
}

impl Action for DescribeEksContainerInstanceLogRequest {
    const NAME: &'static str = "DescribeEksContainerInstanceLog";
    const IDEMPOTENT: bool = true;
    type Response = DescribeEksContainerInstanceLogResponse;
}

// === The API 3.0 envelope ===

/// `{"Response": {...}}`, the shape of every answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(rename = "Response")]
    pub response: T,
}

/// `Response.Error` of a failed call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// The body of a failed call: `{"Response": {"Error": {...}, "RequestId": "..."}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ErrorBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub request_id: String,
}
