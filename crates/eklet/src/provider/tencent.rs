//! The `tencent` provider: sandboxes are EKS container instances, driven through the signed
//! EKSCI API of `tke-tencent` (CreateEKSContainerInstances, DescribeEKSContainerInstances,
//! DeleteEKSContainerInstances, DescribeEKSContainerInstanceEvent,
//! DescribeEksContainerInstanceLog). The API mounts only NFS and CBS volumes, which its
//! [`Capabilities`] say; an instance's name is the sandbox name, the API's only free-form field,
//! so adoption lists the VPC and keeps the names this cluster gave. `kubectl exec`, `attach` and
//! `port-forward` go to each sandbox's agent ([`streams`]).
//!
//! Readiness: the API reports none, the sandbox's agent does (`container_ready`, see
//! `tke_tencent::agent`). Every describe and list reads it from the agents of the Running
//! sandboxes that have a container with a readiness probe (at `--sandbox-metrics-port`: the call
//! has no pod, so no per-pod annotation applies), 16 at once and 1 s each (`AGENT_CONCURRENCY`,
//! `READINESS_TIMEOUT`). Such a container is ready only when its agent says so (an agent that does
//! not answer makes it not ready); any other container is ready when it runs. A pod's readiness
//! thus follows its probe within period × threshold (+ the probe's timeout) on the agent's side,
//! plus one `--status-sync-interval` and at most one agent timeout on ours.

mod deletes;
mod streams;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use futures::StreamExt as _;
use jiff::Timestamp;

use tke_tencent::{
    ClientConfig, Credentials,
    agent::{self, AgentClient},
    agent_stream::{self, StreamRequest},
    annotations::{self, overrides_from_annotations},
    model::{
        self, Capabilities as ModelCapabilities, CbsVolume, Container, CreateEksContainerInstancesRequest,
        DnsConfig, DnsConfigOption, EksCi, EksCiVolume, EnvironmentVariable, Filter, ImageRegistryCredential,
        InstanceStatus, LivenessOrReadinessProbe, NfsVolume, SecurityContext, VolumeMount, filter_names,
    },
    rate_limit::RateLimits,
    spec::{ContainerResources, Spec, pod_totals},
    time::parse_api_time,
};

use super::{
    BilledSize, Capabilities, ContainerSpec, ContainerState, ContainerStats, ContainerStatus, Error,
    ErrorKind, ExitStatus, LogOptions, PortStream, ProbeAction, ProbeKind, ProbeSpec, Provider,
    RestartPolicy, Result, Sandbox, SandboxEvent, SandboxName, SandboxPhase, SandboxSpec, SandboxStats,
    StatsTarget, StreamIo, VolumeKind, VolumeSource, VolumeSpec,
};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cloud credentials: {0}")]
    Credentials(#[from] tke_tencent::credentials::Error),
    #[error("cloud client: {0}")]
    Client(#[from] tke_tencent::Error),
}

const GIB: f64 = (1u64 << 30) as f64;

/// How long one sandbox agent may take to answer a scrape; metrics-server's own timeout is
/// longer, so one slow sandbox costs its pod's usage, not the node's.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Sandbox agents scraped at once for one stats call, or read at once for one describe.
const AGENT_CONCURRENCY: usize = 16;
/// How long a describe waits for one sandbox's agent to say which containers are ready: short, as
/// it delays the status of the whole batch; the next sync asks again.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest span a CPU rate is computed over.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A container's last counter reading older than this is forgotten (its pod is gone or no longer
/// scraped).
const COUNTER_MEMORY: Duration = Duration::from_secs(600);

/// EKS container instances in one VPC.
pub struct TencentProvider {
    client: tke_tencent::Client,
    /// Deletions, batched 20 to a call.
    deletes: deletes::Deletes,
    vpc_id: String,
    security_group_ids: Vec<String>,
    capabilities: Capabilities,
    agents: AgentClient,
    /// The same, with [`READINESS_TIMEOUT`].
    readiness: AgentClient,
    metrics_port: u16,
    /// CPU counter readings per (sandbox, container), to turn the agents' counters into rates.
    readings: Mutex<HashMap<(String, String), Readings>>,
}

/// One container's CPU counter readings: (time, core-nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Readings {
    started: Option<Timestamp>,
    latest: (Timestamp, u64),
    /// The newest reading at least [`RATE_WINDOW`] older than `latest`: the base of the rate when
    /// `latest` is too recent for one.
    base: Option<(Timestamp, u64)>,
}

impl Readings {
    /// The rate at a new reading, and the readings with it. Timestamps travel in milliseconds, so a
    /// rate between two scrapes a few milliseconds apart would be off by tens of percent: the rate
    /// spans at least [`RATE_WINDOW`] when it can, else it is the average since the container
    /// started. A new start time or a counter that went back is a restart.
    fn advance(
        previous: Option<Readings>,
        started: Option<Timestamp>,
        time: Timestamp,
        counter: u64,
    ) -> (u64, Readings) {
        let previous =
            previous.filter(|p| p.started == started && p.latest.1 <= counter && p.latest.0 <= time);
        let old_enough = |at: Timestamp| time.duration_since(at).unsigned_abs() >= RATE_WINDOW;
        let base = previous.and_then(|p| {
            if old_enough(p.latest.0) {
                Some(p.latest)
            } else {
                p.base
            }
        });
        let from = base.or_else(|| started.filter(|s| *s < time).map(|s| (s, 0)));
        let rate = from.map_or(0, |(at, counted)| {
            let elapsed = time.duration_since(at).as_nanos().max(1).unsigned_abs();
            let used = u128::from(counter.saturating_sub(counted));
            u64::try_from(used * 1_000_000_000 / elapsed).unwrap_or(u64::MAX)
        });
        (
            rate,
            Readings {
                started,
                latest: (time, counter),
                base,
            },
        )
    }
}

/// The flags of `--provider tencent`, flattened into eklet's.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "tencent_flags")]
#[command(next_help_heading = "Provider tencent")]
pub struct Flags {
    /// Cloud region, e.g. ap-guangzhou (the chart's regionLong).
    #[arg(long, required_unless_present = "target_kubeconfig", default_value = "")]
    pub region: String,

    /// VPC the sandboxes are placed in.
    #[arg(long, required_unless_present = "target_kubeconfig", default_value = "")]
    pub vpc_id: String,

    /// Security groups for sandboxes whose pod has no security-group-id annotation.
    #[arg(long = "security-group-id", value_delimiter = ',')]
    pub security_group_ids: Vec<String>,

    /// Tencent Cloud API domain; the endpoint is https://tke.<api-domain>.
    #[arg(long, env = "API_DOMAIN", default_value = "tencentcloudapi.com")]
    pub api_domain: String,

    /// Full endpoint URL, overriding --api-domain (e.g. a cloudsim at http://127.0.0.1:8080).
    #[arg(long)]
    pub cloud_endpoint: Option<String>,

    /// Cloud API requests per second, per action (the API allows 20).
    #[arg(long, default_value_t = 20)]
    pub cloud_rate_limit: u32,

    /// The port each sandbox's agent serves its containers' usage on (`/metrics`, cAdvisor
    /// names), unless the pod's `eks.tke.cloud.tencent.com/metrics-port` annotation says another.
    /// eklet scrapes it at the pod IP when metrics-server asks the virtual node for usage.
    #[arg(long, default_value_t = tke_tencent::agent::DEFAULT_METRICS_PORT)]
    pub sandbox_metrics_port: u16,

    /// Read the cloud credentials from this file or mounted Secret directory instead of the
    /// TENCENTCLOUD_* environment variables.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
}

/// What the agent is asked for: `command` (none for attach) and the streams the client has.
fn stream_request(command: Vec<String>, io: &StreamIo) -> StreamRequest {
    StreamRequest {
        command,
        stdin: io.stdin.is_some(),
        stdout: io.stdout.is_some(),
        stderr: io.stderr.is_some(),
        tty: io.tty,
    }
}

impl TencentProvider {
    /// A signed `v5.channel.k8s.io` session with the agent of sandbox `id` at `path` (exec and
    /// attach differ only in path and command).
    async fn agent_session(
        &self,
        action: &'static str,
        id: &str,
        path: &str,
        request: StreamRequest,
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
        let target = self.agent_of(action, id).await?;
        streams::connect(
            action,
            self.client.credentials(),
            &target,
            path,
            &request.query(),
            Some(agent_stream::SUBPROTOCOL),
        )
        .await
    }

    /// From its flags; credentials from `--credentials-file` or the `TENCENTCLOUD_*`
    /// environment.
    pub fn from_flags(args: &Flags) -> Result<TencentProvider, SetupError> {
        let credentials = match &args.credentials_file {
            Some(path) => Credentials::from_path(path)?,
            None => Credentials::from_env()?,
        };
        let mut config = ClientConfig::new(args.region.clone(), credentials);
        config.endpoint = match &args.cloud_endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned() + "/",
            None => ClientConfig::endpoint_for_domain(&args.api_domain) + "/",
        };
        config.rate_limits = RateLimits {
            per_second: args.cloud_rate_limit,
            ..RateLimits::default()
        };
        Ok(TencentProvider::new(
            tke_tencent::Client::new(config)?,
            &args.vpc_id,
            args.security_group_ids.clone(),
        )
        .with_metrics_port(args.sandbox_metrics_port))
    }

    pub fn new(
        client: tke_tencent::Client,
        vpc_id: &str,
        security_group_ids: Vec<String>,
    ) -> TencentProvider {
        TencentProvider {
            deletes: deletes::Deletes::new(client.clone()),
            client,
            vpc_id: vpc_id.to_owned(),
            security_group_ids,
            capabilities: Capabilities {
                volumes: vec![VolumeKind::Nfs, VolumeKind::Cbs],
                service_account_token: false,
                probes: vec![ProbeKind::Exec, ProbeKind::HttpGet, ProbeKind::TcpSocket],
                startup_probe: false,
                // From each sandbox's agent, which runs the readiness probes.
                reports_readiness: true,
                logs: true,
                // From each sandbox's agent, not the API (it has no metrics action).
                stats: true,
                // Env is fixed at create time, before the API assigns the IP.
                resolves_pod_ip: false,
                // Through each sandbox's agent (`tke_tencent::agent_stream`).
                exec: true,
                attach: true,
                port_forward: true,
            },
            agents: AgentClient::new(AGENT_TIMEOUT),
            readiness: AgentClient::new(READINESS_TIMEOUT),
            metrics_port: agent::DEFAULT_METRICS_PORT,
            readings: Mutex::new(HashMap::new()),
        }
    }

    /// The agent port of pods without the `metrics-port` annotation.
    pub fn with_metrics_port(mut self, port: u16) -> TencentProvider {
        self.metrics_port = port;
        self
    }

    /// Where the agent of sandbox `id` listens: its private IP from the API, and the agent port
    /// (`--sandbox-metrics-port`; the API call has no pod, so no per-pod annotation applies).
    async fn agent_of(&self, action: &'static str, id: &str) -> Result<streams::AgentTarget> {
        let instances = self
            .client
            .describe_instances_by_id(&[id.to_owned()])
            .await
            .map_err(|e| cloud_error(action, e))?;
        let failed = |kind: ErrorKind, code: &str, message: String| Error {
            action,
            kind,
            code: code.to_owned(),
            message,
            maybe_executed: false,
        };
        let instance = instances.into_iter().find(|i| i.eks_ci_id == id).ok_or_else(|| {
            failed(
                ErrorKind::NotFound,
                "ResourceNotFound",
                format!("sandbox {id} does not exist"),
            )
        })?;
        let ip: IpAddr = instance.private_ip.parse().map_err(|_| {
            failed(
                ErrorKind::Transient,
                "NoAddress",
                format!("sandbox {id} has no IP yet"),
            )
        })?;
        Ok(streams::AgentTarget {
            addr: SocketAddr::new(ip, self.metrics_port),
            instance_id: id.to_owned(),
        })
    }

    /// The sandboxes of `instances`, with the readiness of probed containers read from the agents
    /// (see the module doc).
    async fn sandboxes(&self, instances: &[EksCi]) -> Vec<Sandbox> {
        let mut sandboxes: Vec<Sandbox> = instances.iter().map(sandbox).collect();
        let asks: Vec<_> = instances
            .iter()
            .enumerate()
            .filter(|(_, instance)| {
                instance.status == InstanceStatus::Running
                    && instance.containers.iter().any(|c| c.readiness_probe.is_some())
            })
            .filter_map(|(index, instance)| {
                let ip: IpAddr = instance.private_ip.parse().ok()?;
                let addr = SocketAddr::new(ip, self.metrics_port);
                Some(async move { (index, addr, self.readiness.scrape_page(addr).await) })
            })
            .collect();
        let pages: Vec<_> = futures::stream::iter(asks)
            .buffer_unordered(AGENT_CONCURRENCY)
            .collect()
            .await;
        for (index, addr, page) in pages {
            let (instance, sandbox) = (&instances[index], &mut sandboxes[index]);
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    // The probed containers stay not ready; the next sync asks again.
                    tracing::debug!(sandbox = %instance.eks_ci_id, %addr, %error, "no readiness from the sandbox agent");
                    continue;
                }
            };
            for (status, container) in sandbox.containers.iter_mut().zip(&instance.containers) {
                if container.readiness_probe.is_some() {
                    let running = matches!(status.state, ContainerState::Running { .. });
                    status.ready = Some(running && page.ready.get(&container.name) == Some(&true));
                }
            }
        }
        sandboxes
    }

    /// One sandbox's usage from its agent, with rates from the previous reading (or, the first
    /// time, the average since the container started).
    async fn scrape(&self, target: &StatsTarget) -> Result<SandboxStats> {
        let failed = |code: &str, message: String| Error {
            action: "ScrapeSandboxAgent",
            kind: ErrorKind::Transient,
            code: code.to_owned(),
            message,
            maybe_executed: false,
        };
        let ip: IpAddr = target
            .ip
            .as_deref()
            .ok_or_else(|| failed("NoAddress", format!("sandbox {} has no IP yet", target.id)))?
            .parse()
            .map_err(|_| failed("NoAddress", format!("sandbox {} has a malformed IP", target.id)))?;
        let port = agent::metrics_port(&target.annotations, self.metrics_port).map_err(|message| Error {
            kind: ErrorKind::Permanent,
            ..failed("InvalidMetricsPort", message)
        })?;
        let containers = self.agents.scrape(SocketAddr::new(ip, port)).await.map_err(|e| {
            failed(
                "AgentUnavailable",
                format!("sandbox {} at {ip}:{port}: {e}", target.id),
            )
        })?;
        let now = Timestamp::now();
        let mut readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        let stats = containers
            .into_iter()
            .map(|c| {
                let time = c.time.unwrap_or(now);
                let key = (target.id.clone(), c.name.clone());
                let (nano_cores, next) = Readings::advance(
                    readings.get(&key).copied(),
                    c.start_time,
                    time,
                    c.cpu_core_nano_seconds,
                );
                readings.insert(key, next);
                (
                    time,
                    ContainerStats {
                        name: c.name,
                        cpu_nano_cores: nano_cores,
                        cpu_core_nano_seconds: Some(c.cpu_core_nano_seconds),
                        memory_working_set_bytes: c.memory_working_set_bytes,
                    },
                )
            })
            .collect::<Vec<_>>();
        Ok(SandboxStats {
            id: target.id.clone(),
            time: stats.iter().map(|(t, _)| *t).max().unwrap_or(now),
            containers: stats.into_iter().map(|(_, c)| c).collect(),
        })
    }

    /// The CreateEKSContainerInstances request for a spec.
    pub fn request(&self, spec: &SandboxSpec) -> Result<CreateEksContainerInstancesRequest> {
        let invalid = |code: &str, message: String| Error {
            action: "CreateEKSContainerInstances",
            kind: ErrorKind::Permanent,
            code: code.to_owned(),
            message,
            maybe_executed: false,
        };
        let resources = |c: &ContainerSpec| ContainerResources {
            cpu_request_millis: c.resources.cpu_request_millis.unwrap_or(0),
            cpu_limit_millis: c.resources.cpu_limit_millis.unwrap_or(0),
            memory_request_bytes: c.resources.memory_request_bytes.unwrap_or(0),
            memory_limit_bytes: c.resources.memory_limit_bytes.unwrap_or(0),
        };
        let totals = pod_totals(
            &spec.containers.iter().map(resources).collect::<Vec<_>>(),
            &spec.init_containers.iter().map(resources).collect::<Vec<_>>(),
        );
        let size =
            Spec::for_totals(totals).map_err(|e| invalid("ClientError.UnsupportedSpec", e.to_string()))?;
        let mut volumes = EksCiVolume::default();
        for volume in &spec.volumes {
            match &volume.source {
                VolumeSource::Nfs {
                    server,
                    path,
                    read_only,
                } => volumes.nfs_volumes.push(NfsVolume {
                    name: volume.name.clone(),
                    path: path.clone(),
                    server: server.clone(),
                    read_only: Some(*read_only),
                }),
                VolumeSource::Cbs { disk_id } => volumes.cbs_volumes.push(CbsVolume {
                    cbs_disk_id: disk_id.clone(),
                    name: volume.name.clone(),
                }),
                // The capability check keeps these away; never send what the API cannot mount.
                other => {
                    return Err(invalid(
                        "UnsupportedByProvider",
                        format!("volume {:?} of kind {}", volume.name, other.kind().as_str()),
                    ));
                }
            }
        }
        let gpu: u64 = spec.containers.iter().filter_map(|c| c.resources.gpu).sum();
        let mut request = CreateEksContainerInstancesRequest {
            containers: spec.containers.iter().map(container).collect(),
            eks_ci_name: spec.name.as_str().to_owned(),
            security_group_ids: self.security_group_ids.clone(),
            subnet_id: spec.subnet_id.clone(),
            vpc_id: self.vpc_id.clone(),
            memory: size.memory_gib(),
            cpu: size.cpu_cores(),
            restart_policy: Some(match spec.restart_policy {
                RestartPolicy::Always => model::RestartPolicy::Always,
                RestartPolicy::OnFailure => model::RestartPolicy::OnFailure,
                RestartPolicy::Never => model::RestartPolicy::Never,
            }),
            image_registry_credentials: Some(
                spec.registry_credentials
                    .iter()
                    .map(|c| ImageRegistryCredential {
                        server: Some(c.server.clone()),
                        username: Some(c.username.clone()),
                        password: Some(c.password.clone()),
                        name: None,
                    })
                    .collect::<Vec<_>>(),
            )
            .filter(|c| !c.is_empty()),
            eks_ci_volume: (!volumes.nfs_volumes.is_empty() || !volumes.cbs_volumes.is_empty())
                .then_some(volumes),
            init_containers: Some(spec.init_containers.iter().map(container).collect::<Vec<_>>())
                .filter(|c| !c.is_empty()),
            dns_config: spec.dns.as_ref().map(|dns| DnsConfig {
                nameservers: dns.nameservers.clone(),
                searches: dns.searches.clone(),
                options: dns
                    .options
                    .iter()
                    .map(|(name, value)| DnsConfigOption {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            }),
            gpu_count: (gpu > 0).then_some(gpu),
            ..CreateEksContainerInstancesRequest::default()
        };
        // eklet resolved the resolv-conf annotation already (pod over node, malformed → fallback).
        let mut pod_annotations: BTreeMap<String, String> = spec.annotations.clone();
        pod_annotations.remove(annotations::RESOLV_CONF);
        let overrides = overrides_from_annotations(&pod_annotations)
            .map_err(|e| invalid("InvalidAnnotation", e.to_string()))?;
        overrides.apply(&mut request);
        if request.security_group_ids.is_empty() {
            return Err(invalid(
                "MissingParameter",
                format!(
                    "no security group: start eklet with --security-group-id or annotate the pod with {}",
                    annotations::SECURITY_GROUP_ID
                ),
            ));
        }
        Ok(request)
    }
}

fn container(spec: &ContainerSpec) -> Container {
    let probe = |probe: &Option<ProbeSpec>| {
        probe.as_ref().map(|p| LivenessOrReadinessProbe {
            probe: model::Probe {
                failure_threshold: Some(i64::from(p.failure_threshold)),
                initial_delay_seconds: Some(i64::from(p.initial_delay_seconds)),
                period_seconds: Some(i64::from(p.period_seconds)),
                success_threshold: Some(i64::from(p.success_threshold)),
                timeout_seconds: Some(i64::from(p.timeout_seconds)),
            },
            exec: match &p.action {
                ProbeAction::Exec { command } => Some(model::Exec {
                    commands: command.clone(),
                }),
                _ => None,
            },
            http_get: match &p.action {
                ProbeAction::HttpGet { path, port, scheme } => Some(model::HttpGet {
                    path: path.clone(),
                    port: i64::from(*port),
                    scheme: scheme.clone(),
                }),
                _ => None,
            },
            tcp_socket: match &p.action {
                ProbeAction::TcpSocket { port } => Some(model::TcpSocket {
                    port: u64::from(*port),
                }),
                _ => None,
            },
        })
    };
    let security_context =
        (!spec.capabilities_add.is_empty() || !spec.capabilities_drop.is_empty()).then(|| SecurityContext {
            capabilities: Some(ModelCapabilities {
                add: spec.capabilities_add.clone(),
                drop: spec.capabilities_drop.clone(),
            }),
        });
    Container {
        image: spec.image.clone(),
        name: spec.name.clone(),
        args: spec.args.clone(),
        commands: spec.command.clone(),
        cpu: spec.resources.cpu_limit_millis.map(|m| m as f64 / 1000.0),
        memory: spec.resources.memory_limit_bytes.map(|b| b as f64 / GIB),
        environment_vars: spec
            .env
            .iter()
            .map(|v| EnvironmentVariable {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect(),
        gpu_limit: spec.resources.gpu,
        liveness_probe: probe(&spec.liveness_probe),
        readiness_probe: probe(&spec.readiness_probe),
        security_context,
        volume_mounts: spec
            .mounts
            .iter()
            .map(|m| VolumeMount {
                mount_path: m.path.clone(),
                name: m.volume.clone(),
                read_only: Some(m.read_only),
                sub_path: m.sub_path.clone(),
                ..VolumeMount::default()
            })
            .collect(),
        working_dir: spec.working_dir.clone(),
        ..Container::default()
    }
}

fn cloud_error(action: &'static str, error: tke_tencent::Error) -> Error {
    let kind = match error.kind() {
        tke_tencent::ErrorKind::Transient => ErrorKind::Transient,
        tke_tencent::ErrorKind::SoldOut { .. } => ErrorKind::SoldOut,
        tke_tencent::ErrorKind::NotFound => ErrorKind::NotFound,
        tke_tencent::ErrorKind::Permanent => ErrorKind::Permanent,
    };
    Error {
        action,
        kind,
        code: error.code().to_owned(),
        message: error.message(),
        maybe_executed: !error.request_was_not_executed(),
    }
}

/// What the API reports, in provider-neutral terms.
pub fn sandbox(instance: &EksCi) -> Sandbox {
    let phase = match &instance.status {
        InstanceStatus::Pending => SandboxPhase::Pending,
        InstanceStatus::Running => SandboxPhase::Running,
        InstanceStatus::Succeeded => SandboxPhase::Succeeded,
        InstanceStatus::Failed => SandboxPhase::Failed,
        // The Terraform provider treats these as still being created.
        InstanceStatus::Other(s) if s == "Creating" || s == "Updating" => SandboxPhase::Pending,
        InstanceStatus::Other(_) => SandboxPhase::Unknown,
    };
    let statuses = |containers: &[Container]| containers.iter().map(container_status).collect::<Vec<_>>();
    Sandbox {
        id: instance.eks_ci_id.clone(),
        name: instance.eks_ci_name.clone(),
        phase,
        ip: Some(instance.private_ip.clone()).filter(|ip| !ip.is_empty()),
        created_at: parse_api_time(&instance.creation_time),
        containers: statuses(&instance.containers),
        init_containers: statuses(&instance.init_containers),
        billed: billed_size(
            instance.cpu,
            instance.memory,
            instance.gpu_count,
            &instance.gpu_type,
        ),
    }
}

/// The size the API bills, from its `Cpu` (cores) and `Memory` (GiB) fields; `None` when the
/// answer carries no size.
fn billed_size(cpu_cores: f64, memory_gib: f64, gpu: u64, gpu_type: &str) -> Option<BilledSize> {
    let cpu_millis = (cpu_cores * 1000.0).round();
    let memory_mib = (memory_gib * 1024.0).round();
    (cpu_millis > 0.0 || memory_mib > 0.0).then(|| BilledSize {
        cpu_millis: cpu_millis.max(0.0) as u64,
        memory_mib: memory_mib.max(0.0) as u64,
        gpu,
        gpu_type: (gpu > 0 && !gpu_type.is_empty()).then(|| gpu_type.to_owned()),
    })
}

fn container_status(container: &Container) -> ContainerStatus {
    let current = container.current_state.as_ref();
    let state = match current.map(|s| &s.state) {
        Some(model::ContainerStateName::Running) => ContainerState::Running {
            started_at: current.and_then(|s| parse_api_time(&s.start_time)),
        },
        Some(model::ContainerStateName::Exited) => {
            let exit_code = current.map_or(0, |s| i32::try_from(s.exit_code).unwrap_or(i32::MAX));
            let reason = current.map(|s| s.reason.clone()).filter(|r| !r.is_empty());
            ContainerState::Terminated {
                exit_code,
                reason: reason.unwrap_or_else(|| {
                    if exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    }
                }),
                message: current.map(|s| s.message.clone()).unwrap_or_default(),
                started_at: current.and_then(|s| parse_api_time(&s.start_time)),
                finished_at: current.and_then(|s| parse_api_time(&s.finish_time)),
            }
        }
        Some(model::ContainerStateName::Created) | None => ContainerState::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        },
        Some(_) => ContainerState::Waiting {
            reason: current
                .map(|s| s.reason.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Unknown".into()),
            message: current.map(|s| s.message.clone()).unwrap_or_default(),
        },
    };
    let restart_count = container
        .restart_count
        .or_else(|| current.map(|s| u64::try_from(s.restart_count).unwrap_or(0)))
        .unwrap_or(0);
    // Without a readiness probe a running container is ready; with one, only when its agent says
    // so (`TencentProvider::sandboxes`).
    let ready = container.readiness_probe.is_none() && matches!(state, ContainerState::Running { .. });
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone(),
        state,
        restart_count: u32::try_from(restart_count).unwrap_or(u32::MAX),
        ready: Some(ready),
    }
}

impl Provider for TencentProvider {
    fn name(&self) -> &'static str {
        "tencent"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        const ACTION: &str = "CreateEKSContainerInstances";
        let request = self.request(spec)?;
        let ids = self
            .client
            .create_instances(&request)
            .await
            .map_err(|e| cloud_error(ACTION, e))?;
        let Some(id) = ids.into_iter().next() else {
            return Err(Error {
                action: ACTION,
                kind: ErrorKind::Transient,
                code: "ClientError.EmptyResponse".into(),
                message: "the API returned no instance id".into(),
                maybe_executed: true,
            });
        };
        // The first observation is what was asked for; the status loop brings the real state.
        Ok(Sandbox {
            id,
            name: spec.name.as_str().to_owned(),
            phase: SandboxPhase::Pending,
            ip: None,
            created_at: None,
            containers: Vec::new(),
            init_containers: Vec::new(),
            billed: billed_size(
                request.cpu,
                request.memory,
                request.gpu_count.unwrap_or(0),
                request.gpu_type.as_deref().unwrap_or_default(),
            ),
        })
    }

    async fn delete(&self, id: &str, _grace: Duration) -> Result<()> {
        // The API has no grace period: deletion stops the instance at once. Batched with other
        // deletions under way ([`deletes`]).
        self.deletes.delete(id).await
    }

    async fn describe(&self, ids: &[String]) -> Result<Vec<Sandbox>> {
        let instances = self
            .client
            .describe_instances_by_id(ids)
            .await
            .map_err(|e| cloud_error("DescribeEKSContainerInstances", e))?;
        Ok(self.sandboxes(&instances).await)
    }

    async fn find(&self, name: &SandboxName) -> Result<Option<Sandbox>> {
        let instances = self
            .client
            .list_instances(vec![Filter::new(filter_names::EKS_CI_NAME, [name.as_str()])])
            .await
            .map_err(|e| cloud_error("DescribeEKSContainerInstances", e))?;
        Ok(instances
            .iter()
            .find(|i| i.eks_ci_name == name.as_str())
            .map(sandbox))
    }

    async fn list(&self, cluster_id: &str) -> Result<Vec<Sandbox>> {
        let prefix = SandboxName::cluster_prefix(cluster_id);
        let instances = self
            .client
            .list_instances(vec![Filter::new(filter_names::VPC_ID, [self.vpc_id.as_str()])])
            .await
            .map_err(|e| cloud_error("DescribeEKSContainerInstances", e))?;
        let ours: Vec<EksCi> = instances
            .into_iter()
            .filter(|i| i.eks_ci_name.starts_with(&prefix))
            .collect();
        Ok(self.sandboxes(&ours).await)
    }

    async fn refresh_files(&self, _id: &str, _volume: &VolumeSpec) -> Result<()> {
        Err(Error::unsupported(
            "UpdateEKSContainerInstance",
            "replace volume contents",
        ))
    }

    async fn logs(&self, id: &str, container: &str, options: &LogOptions) -> Result<String> {
        let request = model::DescribeEksContainerInstanceLogRequest {
            eks_ci_id: id.to_owned(),
            container_name: Some(container.to_owned()),
            tail: options.tail_lines,
            start_time: options.since_time.map(|t| t.to_string()),
            previous: options.previous.then_some(true),
            since_seconds: options.since_seconds,
            limit_bytes: options.limit_bytes,
        };
        let response = self
            .client
            .describe_log(&request)
            .await
            .map_err(|e| cloud_error("DescribeEksContainerInstanceLog", e))?;
        Ok(response.log_content)
    }

    async fn events(&self, id: &str) -> Result<Vec<SandboxEvent>> {
        let events = self
            .client
            .describe_events(id, Some(100))
            .await
            .map_err(|e| cloud_error("DescribeEKSContainerInstanceEvent", e))?;
        Ok(events
            .into_iter()
            .map(|e| SandboxEvent {
                reason: e.reason,
                message: e.message,
                warning: e.r#type == "Warning",
                count: u32::try_from(e.count).unwrap_or(0),
            })
            .collect())
    }

    async fn exec(
        &self,
        id: &str,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> Result<ExitStatus> {
        const ACTION: &str = "ExecSandboxAgent";
        let path = agent_stream::exec_path(container);
        let socket = self
            .agent_session(ACTION, id, &path, stream_request(command, &io))
            .await?;
        Ok(streams::relay(socket, io).await)
    }

    async fn attach(&self, id: &str, container: &str, io: StreamIo) -> Result<()> {
        const ACTION: &str = "AttachSandboxAgent";
        let path = agent_stream::attach_path(container);
        let socket = self
            .agent_session(ACTION, id, &path, stream_request(vec![], &io))
            .await?;
        streams::relay(socket, io).await;
        Ok(())
    }

    async fn port_forward(&self, id: &str, port: u16) -> Result<PortStream> {
        const ACTION: &str = "PortForwardSandboxAgent";
        let target = self.agent_of(ACTION, id).await?;
        let socket = streams::connect(
            ACTION,
            self.client.credentials(),
            &target,
            agent_stream::PORT_FORWARD_PATH,
            &format!("port={port}"),
            None,
        )
        .await?;
        Ok(streams::forwarded(socket))
    }

    async fn stats(&self, targets: &[StatsTarget]) -> Result<Vec<SandboxStats>> {
        // The futures are built first: a closure in the stream would not be `Send` for every
        // lifetime, as the trait's future must be.
        let scrapes: Vec<_> = targets.iter().map(|target| self.scrape(target)).collect();
        let results: Vec<Result<SandboxStats>> = futures::stream::iter(scrapes)
            .buffer_unordered(AGENT_CONCURRENCY)
            .collect()
            .await;
        // Once per call, not per sandbox: readings of containers no longer scraped go.
        let cutoff = Timestamp::now()
            .checked_sub(COUNTER_MEMORY)
            .unwrap_or(Timestamp::MIN);
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, r| r.latest.0 > cutoff);
        let mut measured = Vec::with_capacity(results.len());
        let mut first_error = None;
        for result in results {
            match result {
                Ok(stats) => measured.push(stats),
                Err(e) => {
                    tracing::debug!(error = %e, "no usage for a sandbox");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if measured.is_empty() => Err(e),
            _ => Ok(measured),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{EnvVar, Mount, PodIdentity, Resources};

    fn provider() -> TencentProvider {
        let config = ClientConfig::new("ap-guangzhou", Credentials::new("AKIDEXAMPLE", "key"));
        let client = tke_tencent::Client::new(config).unwrap_or_else(|e| panic!("{e}"));
        TencentProvider::new(client, "vpc-1", vec!["sg-1".into()])
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            name: SandboxName::for_pod("cls-1", "2f6c0d5e-1111-2222-3333-444455556666"),
            pod: PodIdentity {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "u".into(),
                cluster_id: "cls-1".into(),
            },
            subnet_id: "subnet-a".into(),
            zone: "ap-guangzhou-3".into(),
            containers: vec![ContainerSpec {
                name: "app".into(),
                image: "nginx:1.27".into(),
                env: vec![EnvVar {
                    name: "LEVEL".into(),
                    value: "debug".into(),
                }],
                resources: Resources {
                    cpu_request_millis: Some(1500),
                    memory_request_bytes: Some(3 << 30),
                    ..Resources::default()
                },
                mounts: vec![Mount {
                    volume: "share".into(),
                    path: "/data".into(),
                    read_only: false,
                    sub_path: None,
                }],
                ..ContainerSpec::default()
            }],
            init_containers: vec![],
            restart_policy: RestartPolicy::Always,
            volumes: vec![VolumeSpec {
                name: "share".into(),
                source: VolumeSource::Nfs {
                    server: "10.0.0.9".into(),
                    path: "/exports".into(),
                    read_only: false,
                },
            }],
            dns: None,
            registry_credentials: vec![],
            annotations: BTreeMap::new(),
            termination_grace: Duration::from_secs(30),
            source: None,
        }
    }

    #[test]
    fn a_spec_becomes_a_create_request_sized_to_a_standard_specification() {
        let request = provider().request(&spec()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            request.eks_ci_name,
            "eklet-cls-1-2f6c0d5e-1111-2222-3333-444455556666"
        );
        assert_eq!(
            (request.cpu, request.memory),
            (2.0, 4.0),
            "1.5 cores / 3Gi round up to 2 cores / 4Gi"
        );
        assert_eq!(
            (request.subnet_id.as_str(), request.vpc_id.as_str()),
            ("subnet-a", "vpc-1")
        );
        assert_eq!(request.security_group_ids, vec!["sg-1"]);
        assert_eq!(
            request.containers[0].environment_vars,
            vec![EnvironmentVariable {
                name: "LEVEL".into(),
                value: "debug".into()
            }]
        );
        let volumes = request.eks_ci_volume.unwrap_or_default();
        assert_eq!(volumes.nfs_volumes[0].server, "10.0.0.9");
        assert_eq!(request.containers[0].volume_mounts[0].mount_path, "/data");
    }

    #[test]
    fn annotations_with_api_fields_override_and_bad_ones_are_permanent_errors() {
        let mut spec = spec();
        spec.annotations.insert(
            "eks.tke.cloud.tencent.com/security-group-id".into(),
            "sg-a,sg-b".into(),
        );
        spec.annotations
            .insert("eks.tke.cloud.tencent.com/resolv-conf".into(), "garbage".into());
        let request = provider().request(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.security_group_ids, vec!["sg-a", "sg-b"]);
        spec.annotations
            .insert("eks.tke.cloud.tencent.com/cpu".into(), "3".into());
        let error = provider().request(&spec).unwrap_err();
        assert_eq!(
            (error.kind, error.code.as_str()),
            (ErrorKind::Permanent, "InvalidAnnotation")
        );
    }

    #[test]
    fn a_pod_too_large_for_any_specification_is_refused_before_calling_the_cloud() {
        let mut spec = spec();
        spec.containers[0].resources.cpu_request_millis = Some(64_000);
        let error = provider().request(&spec).unwrap_err();
        assert_eq!(
            (error.kind, error.code.as_str()),
            (ErrorKind::Permanent, "ClientError.UnsupportedSpec")
        );
    }

    #[test]
    fn the_official_describe_example_maps_to_a_running_sandbox() {
        let instance: EksCi = serde_json::from_value(serde_json::json!({
            "EksCiId": "eksci-iu09upos", "EksCiName": "eklet-cls-1-x", "Memory": 2, "Cpu": 1,
            "SecurityGroupIds": ["sg-1cghduvc"], "RestartPolicy": "Always", "VpcId": "vpc-1", "SubnetId": "subnet-1",
            "Status": "Running", "CreationTime": "2021-06-24 03:32:02 +0000 UTC", "SucceededTime": "",
            "Containers": [{"Image": "nginx", "Name": "app", "Cpu": 0, "Memory": 0, "Commands": ["sleep"], "Args": ["1"],
                "EnvironmentVars": [], "CurrentState": {"StartTime": "2021-06-24 03:32:43.420750215 +0000 UTC", "State": "running",
                "FinishTime": "0001-01-01 00:00:00 +0000 UTC", "ExitCode": 0, "Reason": "", "Message": "", "RestartCount": 0},
                "RestartCount": 2, "WorkingDir": "", "ReadinessProbe": null, "VolumeMounts": null, "GpuLimit": null,
                "LivenessProbe": null, "SecurityContext": null}],
            "InitContainers": null, "EksCiVolume": {"CbsVolumes": null, "NfsVolumes": null}, "SecurityContext": null,
            "PrivateIp": "10.1.0.1", "EipAddress": "", "CpuType": "amd,intel", "GpuType": "", "GpuCount": 0,
            "CamRoleName": "", "AutoCreatedEipId": "", "PersistStatus": false
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let sandbox = sandbox(&instance);
        assert_eq!(sandbox.phase, SandboxPhase::Running);
        assert_eq!(sandbox.ip.as_deref(), Some("10.1.0.1"));
        assert_eq!(sandbox.containers[0].restart_count, 2);
        assert!(matches!(
            sandbox.containers[0].state,
            ContainerState::Running { started_at: Some(_) }
        ));
        assert!(sandbox.created_at.is_some());
        assert_eq!(
            sandbox.billed.map(|b| b.annotation()).as_deref(),
            Some("cpu=1,memory=2Gi"),
            "billed at the instance's Cpu and Memory"
        );
    }

    /// A cloudsim with agents on the loopback block `127.<octet>.0.0/16` on a manual clock, the
    /// provider pointed at it, and a Running sandbox whose container has `env`; a free port on the
    /// sandbox's address is handed to `env` first.
    async fn sandbox_with_agent(
        octet: u8,
        env: impl FnOnce(u16) -> Vec<EnvVar>,
    ) -> (tke_cloudsim::Handle, TencentProvider, String, u16) {
        sandbox_with_container(octet, |container, port| container.env = env(port)).await
    }

    /// [`sandbox_with_agent`], with the container shaped by `shape` (given the free port).
    async fn sandbox_with_container(
        octet: u8,
        shape: impl FnOnce(&mut ContainerSpec, u16),
    ) -> (tke_cloudsim::Handle, TencentProvider, String, u16) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = Credentials::new("AKIDEXAMPLE", "key");
        let mut config = tke_cloudsim::Config::new(credentials.clone());
        config.manual_clock = true;
        config.start_delay = Duration::ZERO;
        // The manual clock never refills a rate limit's bucket, and tests poll.
        config.rate_limit_per_second = 0;
        let free = || {
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, octet, 0, 1), 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (agent_port, free_port) = (free(), free());
        config.agent_port = Some(agent_port);
        config.private_cidr = (std::net::Ipv4Addr::new(127, octet, 0, 0), 16);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cloud = tke_cloudsim::serve(config, listener).await.unwrap();
        let client = tke_tencent::Client::new(cloud.client_config(credentials)).unwrap();
        let provider =
            TencentProvider::new(client, "vpc-1", vec!["sg-1".into()]).with_metrics_port(agent_port);
        let mut spec = spec();
        spec.volumes.clear();
        spec.containers[0].mounts.clear();
        shape(&mut spec.containers[0], free_port);
        let created = provider.create(&spec).await.unwrap();
        cloud.advance_clock(Duration::from_secs(10));
        (cloud, provider, created.id, free_port)
    }

    /// Deletions under way share DeleteEKSContainerInstances calls, 20 sandboxes a call, and one
    /// sandbox that no longer exists (which fails the API's whole call) spoils no other's.
    #[tokio::test]
    async fn deletions_under_way_share_calls_of_twenty_and_a_missing_sandbox_spoils_none() {
        let (cloud, provider, first, _) = sandbox_with_container(234, |_, _| {}).await;
        let mut ids = vec![first];
        for i in 1..50 {
            let mut spec = spec();
            spec.volumes.clear();
            spec.containers[0].mounts.clear();
            spec.name = SandboxName::for_pod("cls-1", &format!("2f6c0d5e-1111-2222-3333-{i:012}"));
            ids.push(provider.create(&spec).await.unwrap().id);
        }
        let calls = || {
            cloud
                .stats()
                .requests
                .get("DeleteEKSContainerInstances")
                .copied()
                .unwrap_or(0)
        };
        let live = || cloud.stats().live_instances;

        // 45 at once: three calls (20, 20, 5), not 45.
        let (now, later) = ids.split_at(45);
        let results =
            futures::future::join_all(now.iter().map(|id| provider.delete(id, Duration::ZERO))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!((calls(), live()), (3, 5));

        // The 5 left with one already deleted: the call of 6 fails as a whole, then each is sent
        // alone; every deletion succeeds and the 5 are gone.
        let mut again: Vec<&String> = later.iter().collect();
        again.push(&now[0]);
        let results =
            futures::future::join_all(again.iter().map(|id| provider.delete(id, Duration::ZERO))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!((calls(), live()), (3 + 1 + 6, 0));

        // A lone deletion is sent at once, alone, and a missing sandbox counts as deleted.
        provider.delete(&now[1], Duration::ZERO).await.unwrap();
        assert_eq!(calls(), 11);
        cloud.shutdown().await.unwrap();
    }

    /// Readiness comes from the sandbox's agent, which runs the readiness probe: not ready until it
    /// passes, not ready while it fails, and a container without a probe is ready when it runs.
    #[tokio::test]
    async fn readiness_of_a_probed_container_comes_from_the_sandbox_agent() {
        let (cloud, provider, id, web_port) = sandbox_with_container(233, |container, port| {
            container.env = vec![EnvVar {
                name: tke_cloudsim::PORTS_ENV.into(),
                value: port.to_string(),
            }];
            container.readiness_probe = Some(ProbeSpec {
                action: ProbeAction::HttpGet {
                    path: "/ready".into(),
                    port,
                    scheme: "HTTP".into(),
                },
                initial_delay_seconds: 0,
                period_seconds: 1,
                timeout_seconds: 1,
                success_threshold: 1,
                failure_threshold: 1,
            });
        })
        .await;
        assert!(provider.capabilities().reports_readiness);
        let ready = || async {
            let sandbox = provider
                .describe(std::slice::from_ref(&id))
                .await
                .unwrap()
                .remove(0);
            assert_eq!(sandbox.phase, SandboxPhase::Running);
            sandbox.containers[0].ready
        };
        let until = |want: bool| async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                while ready().await != Some(want) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never ready={want}"));
        };
        until(true).await;
        cloud
            .set_responder_status(&id, web_port, Some("/ready"), 503)
            .unwrap();
        until(false).await;
        cloud.set_responder_status(&id, web_port, None, 200).unwrap();
        cloud
            .set_responder_status(&id, web_port, Some("/ready"), 200)
            .unwrap();
        until(true).await;

        // An agent that does not answer (nothing listens where this provider looks): not ready,
        // and the describe still succeeds.
        let client =
            tke_tencent::Client::new(cloud.client_config(Credentials::new("AKIDEXAMPLE", "key"))).unwrap();
        // Free on the sandbox's address: neither its agent nor a responder.
        let closed = std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 233, 0, 1), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let misdirected =
            TencentProvider::new(client, "vpc-1", vec!["sg-1".into()]).with_metrics_port(closed);
        let sandbox = misdirected
            .describe(std::slice::from_ref(&id))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (sandbox.phase, sandbox.containers[0].ready),
            (SandboxPhase::Running, Some(false))
        );
        let unprobed = Container {
            name: "plain".into(),
            current_state: Some(model::ContainerState {
                state: model::ContainerStateName::Running,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(container_status(&unprobed).ready, Some(true));
        cloud.shutdown().await.unwrap();
    }

    /// exec and port-forward through the provider to cloudsim's agents: a real process with the
    /// container's env, its streams, its exit code; a refusal names the cause; a forwarded
    /// connection reaches the declared port's responder.
    #[tokio::test]
    async fn exec_and_port_forward_reach_the_sandbox_through_its_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_cloud, provider, id, web_port) = sandbox_with_agent(231, |port| {
            vec![
                EnvVar {
                    name: "GREETING".into(),
                    value: "hi".into(),
                },
                EnvVar {
                    name: tke_cloudsim::PORTS_ENV.into(),
                    value: port.to_string(),
                },
            ]
        })
        .await;
        assert!(provider.capabilities().exec && provider.capabilities().attach);
        assert!(provider.capabilities().port_forward);
        let (stdout, mut stdout_read) = tokio::io::duplex(4096);
        let (stderr, mut stderr_read) = tokio::io::duplex(4096);
        let io = StreamIo {
            stdin: Some(Box::pin(&b"from stdin"[..])),
            stdout: Some(Box::pin(stdout)),
            stderr: Some(Box::pin(stderr)),
            tty: false,
            resize: None,
        };
        let script = "echo \"$GREETING\"; cat; echo oops >&2; exit 3";
        let command = ["sh", "-c", script].map(String::from).to_vec();
        let status = provider.exec(&id, "app", command, io).await.unwrap();
        assert_eq!(status, ExitStatus::Code(3));
        let mut text = String::new();
        stdout_read.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hi\nfrom stdin");
        text.clear();
        stderr_read.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "oops\n");

        let none = StreamIo {
            stdin: None,
            stdout: None,
            stderr: None,
            tty: false,
            resize: None,
        };
        let missing = provider
            .exec(&id, "no-such-container", vec!["true".into()], none)
            .await
            .unwrap_err();
        assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");

        let closed = provider
            .port_forward(&id, 1)
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(closed.message.contains("HTTP 502"), "{closed}");
        let mut connection = provider.port_forward(&id, web_port).await.unwrap();
        connection
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        connection.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.ends_with(&format!("cloudsim {} app port {web_port}\n", id)),
            "{answer}"
        );
    }

    /// The kubelet API drops the exec future when the client goes away: the WebSocket closes and
    /// the agent kills the process.
    #[tokio::test]
    async fn dropping_an_exec_kills_the_process_in_the_sandbox() {
        use tokio::io::AsyncBufReadExt;
        let (_cloud, provider, id, _) = sandbox_with_agent(232, |_| vec![]).await;
        let (stdout, stdout_read) = tokio::io::duplex(4096);
        let io = StreamIo {
            stdin: None,
            stdout: Some(Box::pin(stdout)),
            stderr: None,
            tty: false,
            resize: None,
        };
        let command = ["sh", "-c", "echo $$; exec sleep 1000"]
            .map(String::from)
            .to_vec();
        let exec = provider.exec(&id, "app", command, io);
        let mut lines = tokio::io::BufReader::new(stdout_read).lines();
        let pid = tokio::select! {
            status = exec => panic!("the sleep ended: {status:?}"),
            line = lines.next_line() => line.unwrap().unwrap(),
        };
        // `exec` is dropped with the select.
        let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
        tokio::time::timeout(Duration::from_secs(60), async {
            while std::fs::read_to_string(&stat)
                .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the process is killed once the exec is dropped");
    }

    /// The provider against cloudsim's sandbox agents on a manual clock: the first reading's rate
    /// is the average since the container started, later ones the rate between readings, and the
    /// counter is the agent's own.
    #[tokio::test]
    async fn usage_comes_from_the_sandbox_agent_as_counters_and_rates() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = Credentials::new("AKIDEXAMPLE", "key");
        let mut config = tke_cloudsim::Config::new(credentials.clone());
        config.manual_clock = true;
        config.start_delay = Duration::ZERO;
        let [agent_port] = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            [l.local_addr().unwrap().port()]
        };
        config.agent_port = Some(agent_port);
        config.private_cidr = (std::net::Ipv4Addr::new(127, 230, 0, 0), 16);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cloud = tke_cloudsim::serve(config, listener).await.unwrap();
        let client = tke_tencent::Client::new(cloud.client_config(credentials)).unwrap();
        let provider =
            TencentProvider::new(client, "vpc-1", vec!["sg-1".into()]).with_metrics_port(agent_port);

        let mut spec = spec();
        spec.volumes.clear();
        spec.containers[0].mounts.clear();
        spec.containers[0].env = vec![
            EnvVar {
                name: tke_cloudsim::CPU_MILLICORES_ENV.into(),
                value: "250".into(),
            },
            EnvVar {
                name: tke_cloudsim::MEMORY_BYTES_ENV.into(),
                value: (64u64 << 20).to_string(),
            },
        ];
        let created = provider.create(&spec).await.unwrap();
        cloud.advance_clock(Duration::from_secs(10));
        let sandbox = provider.describe(&[created.id]).await.unwrap().remove(0);
        assert_eq!(sandbox.phase, SandboxPhase::Running);
        let target = StatsTarget {
            id: sandbox.id.clone(),
            ip: sandbox.ip.clone(),
            annotations: BTreeMap::new(),
        };

        let first = provider.stats(std::slice::from_ref(&target)).await.unwrap();
        let app = &first[0].containers[0];
        assert_eq!(app.name, "app");
        assert_eq!(app.memory_working_set_bytes, 64 << 20);
        assert_eq!(app.cpu_core_nano_seconds, Some(2_500_000_000), "10 s at 250m");
        // Timestamps travel in milliseconds, so rates are exact to about that.
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 1000;
        assert!(
            near(app.cpu_nano_cores, 250_000_000),
            "the average since the start: {app:?}"
        );

        cloud
            .set_usage(
                &sandbox.id,
                None,
                tke_cloudsim::UsageChange {
                    cpu_millicores: Some(1000),
                    memory_bytes: None,
                },
            )
            .unwrap();
        cloud.advance_clock(Duration::from_secs(5));
        let second = provider.stats(std::slice::from_ref(&target)).await.unwrap();
        let app = &second[0].containers[0];
        assert_eq!(
            app.cpu_core_nano_seconds,
            Some(7_500_000_000),
            "2.5 + 5 s at one core"
        );
        assert_eq!(
            app.cpu_nano_cores, 1_000_000_000,
            "the rate since the last reading"
        );
        assert!(second[0].time > first[0].time);

        // A port annotation that is no port is the pod's error, not a scrape of the wrong port.
        let bad = StatsTarget {
            annotations: BTreeMap::from([(agent::METRICS_PORT_ANNOTATION.to_owned(), "http".to_owned())]),
            ..target.clone()
        };
        let err = provider.stats(&[bad]).await.unwrap_err();
        assert_eq!(err.code, "InvalidMetricsPort", "{err:?}");
        // One sandbox without an agent costs only its own usage.
        let missing = StatsTarget {
            id: "eksci-gone".into(),
            ip: Some("127.230.9.9".into()),
            annotations: BTreeMap::new(),
        };
        let both = provider.stats(&[missing, target]).await.unwrap();
        assert_eq!(
            both.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [sandbox.id.as_str()]
        );
    }

    #[test]
    fn cpu_rates_span_at_least_a_second_of_millisecond_timestamps() {
        let at = |ms: i64| Timestamp::from_millisecond(ms).unwrap();
        let started = Some(at(1_000_000));
        // First reading, 10 s after the start at 250m: the average since the start.
        let (rate, r) = Readings::advance(None, started, at(1_010_000), 2_500_000_000);
        assert_eq!(rate, 250_000_000);
        // 5 s later at one core: the rate over those 5 s.
        let (rate, r) = Readings::advance(Some(r), started, at(1_015_000), 7_500_000_000);
        assert_eq!(rate, 1_000_000_000);
        // 3 ms later (one millisecond of timestamp error is a third of that): still over >= 1 s.
        let (rate, r) = Readings::advance(Some(r), started, at(1_015_003), 7_503_500_000);
        assert_eq!(rate, (7_503_500_000u64 - 2_500_000_000) * 1000 / 5_003);
        assert_eq!(
            r.base,
            Some((at(1_010_000), 2_500_000_000)),
            "the newest reading >= 1 s older"
        );
        // A restart (new start time) starts over from the new start.
        let restarted = Some(at(1_016_000));
        let (rate, r) = Readings::advance(Some(r), restarted, at(1_018_000), 1_000_000_000);
        assert_eq!((rate, r.base), (500_000_000, None));
        // So does a counter that went back under the same start time.
        let (rate, _) = Readings::advance(Some(r), restarted, at(1_020_000), 400_000_000);
        assert_eq!(rate, 100_000_000);
    }
}
