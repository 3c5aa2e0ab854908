//! The simulated container instances: creation with the API's validation, per-subnet quotas and
//! private-IP pools, the lifecycle (Pending for the start delay, then Running; exits, restarts under
//! the restart policy, Succeeded/Failed), and what Describe, the event action and the log action
//! return. State is computed from the clock when asked, never by timers, so thousands of instances
//! cost nothing while idle and a manual clock makes every answer predictable.
//!
//! Predictable behaviour a test can rely on:
//! - line `i` (from 0) of a container run is `<RFC 3339 time> <container> log line <i>`, written at
//!   run start + i × log interval; a restarted container starts again at line 0;
//! - a line typed into the simulated process (an attach's stdin, [`Store::type_line`]) is logged
//!   as `<RFC 3339 time> <container> read: <line>` among those, at the time it was typed;
//! - env `CLOUDSIM_EXIT_AFTER=<seconds>` (with optional `CLOUDSIM_EXIT_CODE=<n>`, default 0) on a
//!   container makes every run of it exit after that long with that code;
//! - [`Store::crash`] ends the current run now with a given exit code; [`Store::kill`] does so with
//!   exit code 137 and a message, as a kubelet does for a failed liveness probe (`probes`): the
//!   message shows on the ended run (`CurrentState.Message`) until the next run starts;
//! - env `CLOUDSIM_CPU_MILLICORES=<n>` and `CLOUDSIM_MEMORY_BYTES=<n>` on a container set the usage its
//!   sandbox agent reports ([`Store::samples`]); unset, a container uses 10% of its `Cpu` and 25% of
//!   its `Memory` (or of its share of the instance's), at least 1 millicore and 1 MiB. The CPU counter
//!   is the rate × the running time of the current run: a restart starts it again from 0.
//!   [`Store::set_usage`] changes the rates from now on, and the counter continues from where it was.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use tke_tencent::model::{
    Container, ContainerState, ContainerStateName, CreateEksContainerInstancesRequest,
    DescribeEksContainerInstanceLogRequest, DescribeEksContainerInstancesRequest, EksCi, Event, Filter,
    InstanceStatus, RestartPolicy, filter_names,
};
use tke_tencent::spec::Spec;
use tke_tencent::time::format_api_time;
use tokio::time::Instant;

use crate::clock::SimClock;

pub const EXIT_AFTER_ENV: &str = "CLOUDSIM_EXIT_AFTER";
pub const EXIT_CODE_ENV: &str = "CLOUDSIM_EXIT_CODE";
pub const CPU_MILLICORES_ENV: &str = "CLOUDSIM_CPU_MILLICORES";
pub const MEMORY_BYTES_ENV: &str = "CLOUDSIM_MEMORY_BYTES";
/// 128 + SIGKILL, what a runtime reports for a container killed after a failed liveness probe.
pub const KILLED_EXIT_CODE: i64 = 137;

/// Go's zero time, which the API shows for times that have not happened.
const ZERO_TIME: &str = "0001-01-01 00:00:00 +0000 UTC";
const LOG_TAIL_DEFAULT: u64 = 500;
const LOG_TAIL_MAX: u64 = 2000;
const LOG_MAX_BYTES: usize = 1 << 20;
const EVENTS_DEFAULT: u64 = 50;
const EVENTS_MAX: u64 = 100;
const MAX_REPLICAS: i64 = 100;
const MAX_SUBNETS: u32 = 254;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// An API error answer: the code and message the client will see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

pub type Result<T, E = Refusal> = std::result::Result<T, E>;

pub fn refuse(code: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        code: code.to_string(),
        message: message.into(),
    }
}

/// The block the subnets' private IPs are cut from, one /16 per subnet: `10.0.0.0/8` by default (the
/// first subnet gets 10.1.0.0/16, the next 10.2.0.0/16, ...). Tests use a block of `127.0.0.0/8`,
/// all of which is loopback on Linux, so that a process on this machine reaches every instance's
/// agent at its `PrivateIp`. A block of exactly /16 holds one subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
    /// The size of each subnet cut from the block: 16 unless [`with_subnet_prefix`](Self::with_subnet_prefix)
    /// says otherwise.
    subnet_prefix: u8,
}

impl Ipv4Cidr {
    /// `10.0.0.0/8`, where the real VPCs of the demo live too.
    pub const DEFAULT_PRIVATE: Ipv4Cidr = Ipv4Cidr {
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 8,
        subnet_prefix: 16,
    };
    /// The smallest subnet: 14 hosts.
    pub const MAX_SUBNET_PREFIX: u8 = 28;

    /// A block of at least a /16 (`prefix <= 16`) with no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 16 {
            return Err(format!(
                "{network}/{prefix} is too small: every subnet gets a /16, so the prefix must be 16 or less"
            ));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(format!(
                "{network}/{prefix} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(bits & mask)
            ));
        }
        Ok(Self {
            network,
            prefix,
            subnet_prefix: 16,
        })
    }

    /// The same block cut into subnets of `/subnet_prefix` instead of /16s, e.g. a VPC's /16 into
    /// /20s, one per virtual node. At least the block's own prefix, at most
    /// [`MAX_SUBNET_PREFIX`](Self::MAX_SUBNET_PREFIX).
    pub fn with_subnet_prefix(self, subnet_prefix: u8) -> Result<Self, String> {
        if subnet_prefix < self.prefix || subnet_prefix > Self::MAX_SUBNET_PREFIX {
            return Err(format!(
                "subnets of /{subnet_prefix} do not fit {self}: the subnet prefix must be between {} and {}",
                self.prefix,
                Self::MAX_SUBNET_PREFIX
            ));
        }
        Ok(Self {
            subnet_prefix,
            ..self
        })
    }

    pub fn subnet_prefix(&self) -> u8 {
        self.subnet_prefix
    }

    /// Addresses a subnet hands out: all but its first and last.
    fn hosts_per_subnet(&self) -> u32 {
        (1u32 << (32 - u32::from(self.subnet_prefix))) - 2
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many subnets the block holds.
    fn subnets_in_block(&self) -> u32 {
        1 << (u32::from(self.subnet_prefix) - u32::from(self.prefix))
    }

    /// The first /16 handed out: the second of the block (10.1.0.0/16 of 10.0.0.0/8) unless the block
    /// is a single /16.
    fn first_subnet(&self) -> u32 {
        u32::from(self.subnets_in_block() > 1)
    }

    fn max_subnets(&self) -> u32 {
        (self.subnets_in_block() - self.first_subnet()).min(MAX_SUBNETS)
    }

    /// The base address of the `index`-th subnet (from 0) to be created.
    fn subnet_base(&self, index: u32) -> u32 {
        u32::from(self.network) + ((self.first_subnet() + index) << (32 - u32::from(self.subnet_prefix)))
    }
}

impl Default for Ipv4Cidr {
    fn default() -> Self {
        Self::DEFAULT_PRIVATE
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (network, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a block such as 127.0.0.0/8 (ADDRESS/PREFIX)"))?;
        let network: Ipv4Addr = network
            .parse()
            .map_err(|_| format!("{text:?}: {network:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|prefix| *prefix <= 32)
            .ok_or_else(|| format!("{text:?}: {prefix:?} is not a prefix length (0-32)"))?;
        Self::new(network, prefix)
    }
}

/// A change of a container's usage rates; `None` keeps the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageChange {
    pub cpu_millicores: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// What a sandbox agent reports of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    pub name: String,
    /// The start of the current run.
    pub started: Instant,
    /// CPU time of the current run.
    pub cpu_core_nanoseconds: u64,
    pub memory_working_set_bytes: u64,
}

/// An instance's status and its running containers' usage, as of one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub status: InstanceStatus,
    pub containers: Vec<ContainerSample>,
}

/// Timing of every instance.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    pub start_delay: Duration,
    pub restart_delay: Duration,
    pub log_interval: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub creates: u64,
    pub deletes: u64,
    pub duplicate_names: u64,
}

#[derive(Debug)]
pub struct Store {
    lifecycle: Lifecycle,
    region: String,
    private_cidr: Ipv4Cidr,
    quotas: BTreeMap<String, usize>,
    instances: HashMap<String, Instance>,
    /// Creation order, for stable paging.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    live_names: HashMap<String, usize>,
    subnets: HashMap<String, SubnetPool>,
    next_eip_host: u32,
    pub counters: Counters,
}

#[derive(Debug)]
struct Instance {
    id: String,
    seq: u64,
    request: CreateEksContainerInstancesRequest,
    restart_policy: RestartPolicy,
    private_ip: Ipv4Addr,
    eip: Option<Ipv4Addr>,
    created: Instant,
    started: Instant,
    containers: Vec<ContainerSim>,
}

#[derive(Debug, Clone, Copy)]
struct Script {
    after: Duration,
    code: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    started: Instant,
    finished: Instant,
    code: i64,
}

/// A container's usage: constant rates, and where the CPU counter stood at the last change of them.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_millicores: u64,
    memory_bytes: u64,
    checkpoint: Option<CpuCheckpoint>,
}

/// The CPU time the run `run_started` had used at `at`, when the rate last changed during it.
#[derive(Debug, Clone, Copy)]
struct CpuCheckpoint {
    at: Instant,
    run_started: Instant,
    cpu_nanos: u64,
}

fn cpu_nanos(millicores: u64, running: Duration) -> u64 {
    let nanos = u128::from(millicores) * running.as_nanos() / 1000;
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

impl Usage {
    /// CPU time of the run that started at `run_started`, at `now`. Runs are told apart by their
    /// start: a checkpoint of an earlier run does not carry over (a restart resets the counter).
    fn cpu_at(&self, run_started: Instant, now: Instant) -> u64 {
        match self.checkpoint {
            Some(mark) if mark.run_started == run_started && now >= mark.at => mark
                .cpu_nanos
                .saturating_add(cpu_nanos(self.cpu_millicores, now - mark.at)),
            _ => cpu_nanos(self.cpu_millicores, now.saturating_duration_since(run_started)),
        }
    }
}

#[derive(Debug)]
struct ContainerSim {
    script: Option<Script>,
    usage: Usage,
    /// When the current schedule of runs began (the instance start, or the restart after a crash).
    epoch: Instant,
    epoch_restarts: u32,
    /// The run a crash ended, shown while the container waits to restart and as "previous".
    last_crash: Option<Run>,
    /// Set when a crash ended the container for good.
    terminated: Option<(Run, u32, Option<Run>)>,
    /// Why the run a kill ended was killed, shown with that run.
    killed: Option<(Run, String)>,
    /// Lines typed into the process, when; the last [`LOG_TAIL_MAX`].
    typed: VecDeque<(Instant, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContainerView {
    Creating,
    Running {
        started: Instant,
        restarts: u32,
        previous: Option<Run>,
    },
    /// `terminal`: no restart will follow.
    Exited {
        run: Run,
        restarts: u32,
        terminal: bool,
        previous: Option<Run>,
    },
}

fn restarts_after(policy: &RestartPolicy, code: i64) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Always | RestartPolicy::Other(_) => true,
    }
}

impl ContainerSim {
    fn view(
        &self,
        now: Instant,
        instance_start: Instant,
        policy: &RestartPolicy,
        lifecycle: &Lifecycle,
    ) -> ContainerView {
        if now < instance_start {
            return ContainerView::Creating;
        }
        if let Some((run, restarts, previous)) = self.terminated {
            return ContainerView::Exited {
                run,
                restarts,
                terminal: true,
                previous,
            };
        }
        if let Some(run) = self.last_crash.filter(|_| now < self.epoch) {
            let restarts = self.epoch_restarts.saturating_sub(1);
            return ContainerView::Exited {
                run,
                restarts,
                terminal: false,
                previous: None,
            };
        }
        let elapsed = now.saturating_duration_since(self.epoch);
        let Some(script) = self.script else {
            return ContainerView::Running {
                started: self.epoch,
                restarts: self.epoch_restarts,
                previous: self.last_crash,
            };
        };
        if !restarts_after(policy, script.code) {
            if elapsed < script.after {
                return ContainerView::Running {
                    started: self.epoch,
                    restarts: self.epoch_restarts,
                    previous: self.last_crash,
                };
            }
            let run = Run {
                started: self.epoch,
                finished: self.epoch + script.after,
                code: script.code,
            };
            return ContainerView::Exited {
                run,
                restarts: self.epoch_restarts,
                terminal: true,
                previous: self.last_crash,
            };
        }
        // Every run lasts `after` and the next starts `restart_delay` later: run k is arithmetic.
        let cycle = script.after + lifecycle.restart_delay;
        let k = u32::try_from(elapsed.as_nanos() / cycle.as_nanos().max(1)).unwrap_or(u32::MAX);
        let start_k = self.epoch + cycle.saturating_mul(k);
        let previous = match k {
            0 => self.last_crash,
            _ => {
                let started = self.epoch + cycle.saturating_mul(k - 1);
                Some(Run {
                    started,
                    finished: started + script.after,
                    code: script.code,
                })
            }
        };
        let restarts = self.epoch_restarts.saturating_add(k);
        if now.saturating_duration_since(start_k) < script.after {
            ContainerView::Running {
                started: start_k,
                restarts,
                previous,
            }
        } else {
            let run = Run {
                started: start_k,
                finished: start_k + script.after,
                code: script.code,
            };
            ContainerView::Exited {
                run,
                restarts,
                terminal: false,
                previous,
            }
        }
    }
}

/// Private IPs of one subnet: a /16 of the private block ([`Ipv4Cidr`]) per subnet, freed addresses reused only after the
/// fresh ones run out (as a real VPC avoids handing a just-released IP to the next instance).
#[derive(Debug)]
struct SubnetPool {
    base: u32,
    hosts: u32,
    next_host: u32,
    free: VecDeque<u32>,
    live: usize,
}

impl SubnetPool {
    fn allocate(&mut self) -> Option<Ipv4Addr> {
        let host = if self.next_host <= self.hosts {
            self.next_host += 1;
            self.next_host - 1
        } else {
            self.free.pop_front()?
        };
        self.live += 1;
        Some(Ipv4Addr::from(self.base + host))
    }

    fn release(&mut self, ip: Ipv4Addr) {
        self.free.push_back(u32::from(ip) - self.base);
        self.live = self.live.saturating_sub(1);
    }
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .environment_vars
        .iter()
        .find(|var| var.name == name)
        .map(|var| var.value.as_str())
}

fn script_of(container: &Container) -> Result<Option<Script>> {
    let code = match env_value(container, EXIT_CODE_ENV) {
        Some(code) => Some(code.trim().parse::<i64>().map_err(|_| {
            refuse(
                "InvalidParameterValue",
                format!(
                    "{EXIT_CODE_ENV} of container {} is not an integer",
                    container.name
                ),
            )
        })?),
        None => None,
    };
    let Some(after) = env_value(container, EXIT_AFTER_ENV) else {
        return match code {
            Some(_) => Err(refuse(
                "InvalidParameterValue",
                format!(
                    "{EXIT_CODE_ENV} of container {} needs {EXIT_AFTER_ENV}",
                    container.name
                ),
            )),
            None => Ok(None),
        };
    };
    let seconds = after
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .ok_or_else(|| {
            refuse(
                "InvalidParameterValue",
                format!(
                    "{EXIT_AFTER_ENV} of container {} must be a positive number of seconds",
                    container.name
                ),
            )
        })?;
    Ok(Some(Script {
        after: Duration::from_secs_f64(seconds).max(Duration::from_millis(1)),
        code: code.unwrap_or(0),
    }))
}

/// The usage the container's env asks for, else the default share of what it (or the instance)
/// was given.
fn usage_of(container: &Container, request: &CreateEksContainerInstancesRequest) -> Result<Usage> {
    let explicit = |name: &str| -> Result<Option<u64>> {
        env_value(container, name)
            .map(|value| {
                value.trim().parse::<u64>().map_err(|_| {
                    refuse(
                        "InvalidParameterValue",
                        format!(
                            "{name} of container {} must be a non-negative integer",
                            container.name
                        ),
                    )
                })
            })
            .transpose()
    };
    let containers = request.containers.len().max(1) as f64;
    let share = |own: Option<f64>, total: f64| match own {
        Some(own) if own > 0.0 => own,
        _ => total / containers,
    };
    // metrics-server drops a container that reports zero CPU or memory, so a default never is.
    let cpu_millicores = match explicit(CPU_MILLICORES_ENV)? {
        Some(millicores) => millicores,
        None => ((share(container.cpu, request.cpu) * 100.0).round() as u64).max(1),
    };
    let memory_bytes = match explicit(MEMORY_BYTES_ENV)? {
        Some(bytes) => bytes,
        None => ((share(container.memory, request.memory) * GIB * 0.25) as u64).max(MIB),
    };
    Ok(Usage {
        cpu_millicores,
        memory_bytes,
        checkpoint: None,
    })
}

fn validate_create(request: &CreateEksContainerInstancesRequest) -> Result<()> {
    let missing = |field: &str| {
        refuse(
            "MissingParameter",
            format!("The request is missing a required parameter `{field}`."),
        )
    };
    if request.eks_ci_name.trim().is_empty() {
        return Err(missing("EksCiName"));
    }
    if request.containers.is_empty() {
        return Err(missing("Containers"));
    }
    if request.security_group_ids.is_empty() {
        return Err(missing("SecurityGroupIds"));
    }
    if request.subnet_id.trim().is_empty() {
        return Err(missing("SubnetId"));
    }
    if request.vpc_id.trim().is_empty() {
        return Err(missing("VpcId"));
    }
    if Spec::from_api(request.cpu, request.memory).is_none() {
        return Err(refuse(
            "InvalidParameterValue",
            format!(
                "Cpu {} with Memory {} is not a supported specification.",
                request.cpu, request.memory
            ),
        ));
    }
    let mut names = HashSet::new();
    let init = request.init_containers.iter().flatten();
    for container in request.containers.iter().chain(init) {
        if container.name.trim().is_empty() || container.image.trim().is_empty() {
            return Err(refuse(
                "InvalidParameterValue",
                "Every container needs a Name and an Image.",
            ));
        }
        if !names.insert(container.name.as_str()) {
            return Err(refuse(
                "InvalidParameterValue",
                format!("Container name {} is used twice.", container.name),
            ));
        }
        if container
            .cpu
            .is_some_and(|cpu| !(0.0..=request.cpu).contains(&cpu))
            || container
                .memory
                .is_some_and(|memory| !(0.0..=request.memory).contains(&memory))
        {
            return Err(refuse(
                "InvalidParameterValue",
                format!(
                    "Container {} asks for more than the instance's Cpu or Memory.",
                    container.name
                ),
            ));
        }
    }
    if let Some(RestartPolicy::Other(policy)) = &request.restart_policy {
        return Err(refuse(
            "InvalidParameterValue",
            format!("RestartPolicy {policy} is not Always, Never or OnFailure."),
        ));
    }
    if request
        .replicas
        .is_some_and(|replicas| !(1..=MAX_REPLICAS).contains(&replicas))
    {
        return Err(refuse(
            "InvalidParameterValue",
            format!("Replicas must be within 1..{MAX_REPLICAS}."),
        ));
    }
    if request.auto_create_eip == Some(true)
        && request
            .existed_eip_ids
            .as_ref()
            .is_some_and(|ids| !ids.is_empty())
    {
        return Err(refuse(
            "InvalidParameter",
            "AutoCreateEip and ExistedEipIds are mutually exclusive.",
        ));
    }
    if let Some(gpu_type) = &request.gpu_type {
        for wanted in gpu_type.split(',') {
            if !tke_tencent::annotations::GPU_TYPES.contains(&wanted.trim()) {
                return Err(refuse(
                    "InvalidParameterValue",
                    format!("GpuType {wanted} is not supported."),
                ));
            }
        }
    }
    Ok(())
}

fn status_of(views: &[ContainerView]) -> InstanceStatus {
    if views.contains(&ContainerView::Creating) {
        return InstanceStatus::Pending;
    }
    let mut all_succeeded = true;
    for view in views {
        match view {
            ContainerView::Exited {
                run, terminal: true, ..
            } => all_succeeded &= run.code == 0,
            _ => return InstanceStatus::Running,
        }
    }
    if all_succeeded {
        InstanceStatus::Succeeded
    } else {
        InstanceStatus::Failed
    }
}

impl Instance {
    fn views(&self, now: Instant, lifecycle: &Lifecycle) -> Vec<ContainerView> {
        self.containers
            .iter()
            .map(|c| c.view(now, self.started, &self.restart_policy, lifecycle))
            .collect()
    }

    fn to_api(&self, now: Instant, clock: &SimClock, lifecycle: &Lifecycle) -> EksCi {
        let views = self.views(now, lifecycle);
        let status = status_of(&views);
        let wall = |at: Instant| format_api_time(clock.wall(at));
        let finished = views
            .iter()
            .filter_map(|view| match view {
                ContainerView::Exited { run, .. } => Some(run.finished),
                _ => None,
            })
            .max();
        let succeeded_time = match (&status, finished) {
            (InstanceStatus::Succeeded | InstanceStatus::Failed, Some(at)) => wall(at),
            _ => String::new(),
        };
        let containers = self
            .request
            .containers
            .iter()
            .zip(&self.containers)
            .zip(&views)
            .map(|((container, sim), view)| {
                let state = match *view {
                    ContainerView::Creating => ContainerState {
                        state: ContainerStateName::Created,
                        reason: "ContainerCreating".into(),
                        start_time: ZERO_TIME.into(),
                        finish_time: ZERO_TIME.into(),
                        ..Default::default()
                    },
                    ContainerView::Running {
                        started, restarts, ..
                    } => ContainerState {
                        state: ContainerStateName::Running,
                        start_time: wall(started),
                        finish_time: ZERO_TIME.into(),
                        restart_count: i64::from(restarts),
                        ..Default::default()
                    },
                    ContainerView::Exited { run, restarts, .. } => ContainerState {
                        state: ContainerStateName::Exited,
                        exit_code: run.code,
                        reason: if run.code == 0 { "Completed" } else { "Error" }.into(),
                        message: sim
                            .killed
                            .as_ref()
                            .filter(|(killed, _)| *killed == run)
                            .map(|(_, message)| message.clone())
                            .unwrap_or_default(),
                        start_time: wall(run.started),
                        finish_time: wall(run.finished),
                        restart_count: i64::from(restarts),
                    },
                };
                Container {
                    restart_count: Some(u64::try_from(state.restart_count).unwrap_or(0)),
                    current_state: Some(state),
                    ..container.clone()
                }
            })
            .collect();
        let request = &self.request;
        EksCi {
            auto_created_eip_id: if self.eip.is_some() {
                format!("eip-{}", self.id.trim_start_matches("eksci-"))
            } else {
                String::new()
            },
            cam_role_name: request.cam_role_name.clone().unwrap_or_default(),
            containers,
            cpu: request.cpu,
            cpu_type: request.cpu_type.clone().unwrap_or_else(|| "intel".into()),
            creation_time: wall(self.created),
            eip_address: self.eip.map(|ip| ip.to_string()).unwrap_or_default(),
            eks_ci_id: self.id.clone(),
            eks_ci_name: request.eks_ci_name.clone(),
            eks_ci_volume: Some(request.eks_ci_volume.clone().unwrap_or_default()),
            gpu_count: request.gpu_count.unwrap_or(0),
            gpu_type: request.gpu_type.clone().unwrap_or_default(),
            init_containers: request.init_containers.clone().unwrap_or_default(),
            memory: request.memory,
            persist_status: Some(false),
            private_ip: self.private_ip.to_string(),
            restart_policy: self.restart_policy.clone(),
            security_context: None,
            security_group_ids: request.security_group_ids.clone(),
            status,
            subnet_id: request.subnet_id.clone(),
            succeeded_time,
            vpc_id: request.vpc_id.clone(),
        }
    }

    fn matches(&self, filters: &[Filter], now: Instant, lifecycle: &Lifecycle) -> bool {
        filters.iter().all(|filter| {
            let value = match filter.name.as_str() {
                filter_names::EKS_CI_NAME => self.request.eks_ci_name.clone(),
                filter_names::STATUS => status_of(&self.views(now, lifecycle)).to_string(),
                filter_names::PRIVATE_IP => self.private_ip.to_string(),
                filter_names::EIP_ADDRESS => self.eip.map(|ip| ip.to_string()).unwrap_or_default(),
                filter_names::VPC_ID => self.request.vpc_id.clone(),
                _ => return false,
            };
            filter.values.contains(&value)
        })
    }
}

impl Store {
    pub fn new(
        lifecycle: Lifecycle,
        region: String,
        quotas: BTreeMap<String, usize>,
        private_cidr: Ipv4Cidr,
    ) -> Self {
        Self {
            lifecycle,
            region,
            private_cidr,
            quotas,
            instances: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            live_names: HashMap::new(),
            subnets: HashMap::new(),
            next_eip_host: 1,
            counters: Counters::default(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn live(&self) -> usize {
        self.instances.len()
    }

    pub fn create(
        &mut self,
        request: CreateEksContainerInstancesRequest,
        now: Instant,
        sold_out: &BTreeSet<String>,
        rng: &mut impl Rng,
    ) -> Result<Vec<String>> {
        validate_create(&request)?;
        let scripts = request
            .containers
            .iter()
            .map(script_of)
            .collect::<Result<Vec<_>>>()?;
        let usages = request
            .containers
            .iter()
            .map(|container| usage_of(container, &request))
            .collect::<Result<Vec<_>>>()?;
        let subnet = request.subnet_id.clone();
        if sold_out.contains(&subnet) {
            return Err(refuse(
                "ResourcesSoldOut",
                format!("Resources in the availability zone of subnet {subnet} are sold out."),
            ));
        }
        let replicas = usize::try_from(request.replicas.unwrap_or(1)).unwrap_or(1);
        if !self.subnets.contains_key(&subnet) {
            let index = self.subnets.len() as u32;
            if index >= self.private_cidr.max_subnets() {
                return Err(refuse(
                    "LimitExceeded",
                    format!(
                        "cloudsim serves at most {} subnets in {}.",
                        self.private_cidr.max_subnets(),
                        self.private_cidr
                    ),
                ));
            }
            let base = self.private_cidr.subnet_base(index);
            self.subnets.insert(
                subnet.clone(),
                SubnetPool {
                    base,
                    hosts: self.private_cidr.hosts_per_subnet(),
                    next_host: 1,
                    free: VecDeque::new(),
                    live: 0,
                },
            );
        }
        let pool = self
            .subnets
            .get_mut(&subnet)
            .ok_or_else(|| refuse("InternalError", "subnet pool vanished"))?;
        if let Some(&quota) = self
            .quotas
            .get(&subnet)
            .filter(|&&quota| pool.live + replicas > quota)
        {
            return Err(refuse(
                "LimitExceeded",
                format!(
                    "The quota of {quota} container instances in subnet {subnet} is exceeded ({} live).",
                    pool.live
                ),
            ));
        }
        if pool.live + replicas > pool.hosts as usize {
            return Err(refuse(
                "ResourceInsufficient",
                format!("Subnet {subnet} has no free IP address."),
            ));
        }
        if self
            .live_names
            .get(&request.eks_ci_name)
            .is_some_and(|&live| live > 0)
        {
            self.counters.duplicate_names += 1;
        }
        let restart_policy = request.restart_policy.clone().unwrap_or_default();
        let started = now + self.lifecycle.start_delay;
        let mut ids = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            let private_ip = pool
                .allocate()
                .ok_or_else(|| refuse("ResourceInsufficient", "no free IP"))?;
            let id = loop {
                let suffix: String = (0..8)
                    .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
                    .collect();
                let id = format!("eksci-{suffix}");
                if !self.instances.contains_key(&id) {
                    break id;
                }
            };
            let eip = (request.auto_create_eip == Some(true)).then(|| {
                self.next_eip_host += 1;
                // 198.18.0.0/15 is reserved for benchmarks: never a real address.
                Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.next_eip_host)
            });
            let containers = scripts
                .iter()
                .zip(&usages)
                .map(|(&script, &usage)| ContainerSim {
                    script,
                    usage,
                    epoch: started,
                    epoch_restarts: 0,
                    last_crash: None,
                    terminated: None,
                    killed: None,
                    typed: VecDeque::new(),
                })
                .collect();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.order.insert(seq, id.clone());
            self.instances.insert(
                id.clone(),
                Instance {
                    id: id.clone(),
                    seq,
                    request: request.clone(),
                    restart_policy: restart_policy.clone(),
                    private_ip,
                    eip,
                    created: now,
                    started,
                    containers,
                },
            );
            ids.push(id);
        }
        *self.live_names.entry(request.eks_ci_name.clone()).or_default() += replicas;
        self.counters.creates += replicas as u64;
        Ok(ids)
    }

    pub fn describe(
        &self,
        request: &DescribeEksContainerInstancesRequest,
        now: Instant,
        clock: &SimClock,
    ) -> Result<(u64, Vec<EksCi>)> {
        let limit = request
            .limit
            .unwrap_or(tke_tencent::model::DESCRIBE_DEFAULT_LIMIT);
        if !(1..=tke_tencent::model::DESCRIBE_MAX_LIMIT).contains(&limit) {
            return Err(refuse(
                "InvalidParameterValue",
                format!("Limit {limit} must be within 1..100."),
            ));
        }
        let offset = usize::try_from(request.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let filters = request.filters.as_deref().unwrap_or_default();
        for filter in filters {
            if !filter_names::ALL.contains(&filter.name.as_str()) {
                return Err(refuse(
                    "InvalidParameterValue",
                    format!(
                        "Filter name {} is not one of {}.",
                        filter.name,
                        filter_names::ALL.join(", ")
                    ),
                ));
            }
            if filter.values.is_empty() {
                return Err(refuse(
                    "InvalidParameter",
                    format!("Filter {} has no Values.", filter.name),
                ));
            }
        }
        let lifecycle = &self.lifecycle;
        let matching = |instance: &&Instance| instance.matches(filters, now, lifecycle);
        let (total, page): (usize, Vec<EksCi>) = match &request.eks_ci_ids {
            Some(ids) => {
                if ids.len() > tke_tencent::model::DESCRIBE_MAX_LIMIT as usize {
                    return Err(refuse("InvalidParameterValue", "At most 100 EksCiIds per call."));
                }
                let mut found: Vec<&Instance> = ids.iter().filter_map(|id| self.instances.get(id)).collect();
                found.sort_by_key(|instance| instance.seq);
                found.dedup_by_key(|instance| instance.seq);
                found.retain(|instance| matching(instance));
                let page = found
                    .iter()
                    .skip(offset)
                    .take(limit as usize)
                    .map(|i| i.to_api(now, clock, lifecycle))
                    .collect();
                (found.len(), page)
            }
            None => {
                let all = self.order.values().filter_map(|id| self.instances.get(id));
                if filters.is_empty() {
                    let page = all
                        .skip(offset)
                        .take(limit as usize)
                        .map(|i| i.to_api(now, clock, lifecycle))
                        .collect();
                    (self.instances.len(), page)
                } else {
                    let found: Vec<&Instance> = all.filter(matching).collect();
                    let page = found
                        .iter()
                        .skip(offset)
                        .take(limit as usize)
                        .map(|i| i.to_api(now, clock, lifecycle))
                        .collect();
                    (found.len(), page)
                }
            }
        };
        Ok((total as u64, page))
    }

    /// Deletes all of `ids` or, if one does not exist, none of them.
    pub fn delete(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Err(refuse(
                "MissingParameter",
                "The request is missing a required parameter `EksCiIds`.",
            ));
        }
        if ids.len() > tke_tencent::model::DELETE_MAX_IDS {
            return Err(refuse("InvalidParameterValue", "At most 20 EksCiIds per call."));
        }
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !self.instances.contains_key(*id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(refuse(
                "ResourceNotFound",
                format!("Container instance(s) {} do not exist.", missing.join(", ")),
            ));
        }
        for id in ids {
            let Some(instance) = self.instances.remove(id) else {
                continue;
            };
            self.order.remove(&instance.seq);
            if let Some(pool) = self.subnets.get_mut(&instance.request.subnet_id) {
                pool.release(instance.private_ip);
            }
            if let Some(live) = self.live_names.get_mut(&instance.request.eks_ci_name) {
                *live = live.saturating_sub(1);
                if *live == 0 {
                    self.live_names.remove(&instance.request.eks_ci_name);
                }
            }
            self.counters.deletes += 1;
        }
        Ok(())
    }

    fn instance(&self, id: &str) -> Result<&Instance> {
        self.instances.get(id).ok_or_else(|| {
            refuse(
                "ResourceNotFound",
                format!("Container instance {id} does not exist."),
            )
        })
    }

    /// Events, newest first.
    pub fn events(&self, id: &str, limit: Option<u64>, now: Instant, clock: &SimClock) -> Result<Vec<Event>> {
        let limit = limit.unwrap_or(EVENTS_DEFAULT);
        if !(1..=EVENTS_MAX).contains(&limit) {
            return Err(refuse(
                "InvalidParameterValue",
                format!("Limit {limit} must be within 1..{EVENTS_MAX}."),
            ));
        }
        let instance = self.instance(id)?;
        let delay = self.lifecycle.start_delay;
        let wall = |at: Instant| format_api_time(clock.wall(at));
        let event = |reason: &str, kind: &str, count: u32, first: Instant, last: Instant, message: String| {
            let event = Event {
                pod_name: instance.id.clone(),
                reason: reason.into(),
                r#type: kind.into(),
                count: i64::from(count),
                first_timestamp: wall(first),
                last_timestamp: wall(last),
                message,
            };
            (last, event)
        };
        let mut events = vec![event(
            "Scheduled",
            "Normal",
            1,
            instance.created,
            instance.created,
            format!(
                "Successfully assigned {} to {} in {}",
                instance.id, instance.request.subnet_id, self.region
            ),
        )];
        let (pulling, pulled) = (instance.created + delay / 4, instance.created + delay * 3 / 4);
        for container in &instance.request.containers {
            if now >= pulling {
                events.push(event(
                    "Pulling",
                    "Normal",
                    1,
                    pulling,
                    pulling,
                    format!("Pulling image \"{}\"", container.image),
                ));
            }
            if now >= pulled {
                let took = (delay / 2).as_secs_f64();
                let message = format!("Successfully pulled image \"{}\" in {took}s", container.image);
                events.push(event("Pulled", "Normal", 1, pulled, pulled, message));
            }
        }
        for (container, view) in instance
            .request
            .containers
            .iter()
            .zip(instance.views(now, &self.lifecycle))
        {
            let (last_start, restarts, failed) = match view {
                ContainerView::Creating => continue,
                ContainerView::Running {
                    started,
                    restarts,
                    previous,
                } => (started, restarts, previous.is_some_and(|run| run.code != 0)),
                ContainerView::Exited { run, restarts, .. } => (run.started, restarts, run.code != 0),
            };
            let name = &container.name;
            let runs = restarts.saturating_add(1);
            events.push(event(
                "Created",
                "Normal",
                runs,
                instance.started,
                last_start,
                format!("Created container {name}"),
            ));
            events.push(event(
                "Started",
                "Normal",
                runs,
                instance.started,
                last_start,
                format!("Started container {name}"),
            ));
            if restarts > 0 && failed {
                let message = format!("Back-off restarting failed container {name}");
                events.push(event(
                    "BackOff", "Warning", restarts, last_start, last_start, message,
                ));
            }
        }
        // Chronological, then newest first; the stable sort keeps Started after Created at equal times.
        events.sort_by_key(|(last, _)| *last);
        Ok(events
            .into_iter()
            .rev()
            .take(limit as usize)
            .map(|(_, event)| event)
            .collect())
    }

    pub fn log(
        &self,
        request: &DescribeEksContainerInstanceLogRequest,
        now: Instant,
        clock: &SimClock,
    ) -> Result<(String, String)> {
        let instance = self.instance(&request.eks_ci_id)?;
        let names: Vec<&str> = instance
            .request
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let name = match (&request.container_name, names.as_slice()) {
            (Some(name), _) => name.as_str(),
            (None, [only]) => only,
            (None, _) => {
                return Err(refuse(
                    "InvalidParameter",
                    format!(
                        "ContainerName is required for an instance with containers {}.",
                        names.join(", ")
                    ),
                ));
            }
        };
        let index = names.iter().position(|n| *n == name).ok_or_else(|| {
            refuse(
                "InternalError.ContainerNotFound",
                format!("Container {name} is not in instance {}.", instance.id),
            )
        })?;
        let tail = request.tail.unwrap_or(LOG_TAIL_DEFAULT);
        if tail > LOG_TAIL_MAX {
            return Err(refuse(
                "InvalidParameterValue",
                format!("Tail {tail} exceeds {LOG_TAIL_MAX}."),
            ));
        }
        let view =
            instance.containers[index].view(now, instance.started, &instance.restart_policy, &self.lifecycle);
        let (current, previous) = match view {
            ContainerView::Creating => {
                return Err(refuse(
                    "ResourceUnavailable.EksContainerStatus",
                    format!(
                        "Container {name} of instance {} has not started yet.",
                        instance.id
                    ),
                ));
            }
            ContainerView::Running {
                started, previous, ..
            } => ((started, None), previous),
            ContainerView::Exited { run, previous, .. } => ((run.started, Some(run.finished)), previous),
        };
        let (started, finished) = if request.previous == Some(true) {
            let run = previous.ok_or_else(|| {
                refuse(
                    "InvalidParameterValue",
                    format!(
                        "Container {name} of instance {} has no previous run.",
                        instance.id
                    ),
                )
            })?;
            (run.started, Some(run.finished))
        } else {
            current
        };
        let mut since = started;
        if let Some(seconds) = request.since_seconds {
            since = since.max(now.checked_sub(Duration::from_secs(seconds)).unwrap_or(since));
        }
        if let Some(start_time) = &request.start_time {
            let wall: jiff::Timestamp = start_time.parse().map_err(|_| {
                refuse(
                    "InvalidParameterValue",
                    format!("StartTime {start_time:?} is not an RFC 3339 time."),
                )
            })?;
            since = since.max(clock.instant_of(wall));
        }
        let content = self.log_lines(
            name,
            &instance.containers[index].typed,
            started,
            finished.map_or(now, |f| f.min(now)),
            since,
            tail,
            clock,
        );
        let limit = request.limit_bytes.map_or(LOG_MAX_BYTES, |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(LOG_MAX_BYTES)
        });
        Ok((name.to_string(), truncate_at_char(content, limit)))
    }

    /// Lines `i` written at `started + i × interval` and the lines typed, with `since <= t <= until`,
    /// the last `tail` of them in time order.
    #[allow(clippy::too_many_arguments)]
    fn log_lines(
        &self,
        name: &str,
        typed: &VecDeque<(Instant, String)>,
        started: Instant,
        until: Instant,
        since: Instant,
        tail: u64,
        clock: &SimClock,
    ) -> String {
        if until < started || tail == 0 {
            return String::new();
        }
        let interval = self.lifecycle.log_interval.as_nanos().max(1);
        let count = until.saturating_duration_since(started).as_nanos() / interval + 1;
        let first_since = since
            .saturating_duration_since(started)
            .as_nanos()
            .div_ceil(interval);
        let first = first_since.max(count.saturating_sub(u128::from(tail)));
        let mut lines: Vec<(Instant, String)> = Vec::new();
        for i in first..count {
            let Ok(step) = u32::try_from(i) else { break };
            lines.push((
                started + self.lifecycle.log_interval.saturating_mul(step),
                format!("log line {i}"),
            ));
        }
        let from = since.max(started);
        lines.extend(
            typed
                .iter()
                .filter(|(at, _)| from <= *at && *at <= until)
                .map(|(at, line)| (*at, format!("read: {line}"))),
        );
        // Stable: a typed line comes after a generated one of the same instant.
        lines.sort_by_key(|(at, _)| *at);
        let skip = lines
            .len()
            .saturating_sub(usize::try_from(tail).unwrap_or(usize::MAX));
        let mut content = String::new();
        for (at, line) in &lines[skip..] {
            let time = clock.wall(*at).strftime("%Y-%m-%dT%H:%M:%S%.9fZ");
            content.push_str(&format!("{time} {name} {line}\n"));
            if content.len() > LOG_MAX_BYTES {
                break;
            }
        }
        content
    }

    /// Logs `line` as typed into `container` of instance `id` at `now` (see the module doc).
    pub fn type_line(&mut self, id: &str, container: &str, line: &str, now: Instant) -> Result<()> {
        let instance = self
            .instances
            .get_mut(id)
            .ok_or_else(|| refuse("ResourceNotFound", format!("no instance {id}")))?;
        let index = instance
            .request
            .containers
            .iter()
            .position(|c| c.name == container)
            .ok_or_else(|| {
                refuse(
                    "InternalError.ContainerNotFound",
                    format!("no container {container} in instance {id}"),
                )
            })?;
        let typed = &mut instance.containers[index].typed;
        if typed.len() >= usize::try_from(LOG_TAIL_MAX).unwrap_or(usize::MAX) {
            typed.pop_front();
        }
        typed.push_back((now, line.to_owned()));
        Ok(())
    }

    /// Ends the current run of a container (the first one when `container` is `None`) with `code`.
    pub fn crash(&mut self, id: &str, container: Option<&str>, code: i64, now: Instant) -> Result<()> {
        self.end_run(id, container, code, None, now)
    }

    /// Kills the current run of `container` as a kubelet kills a container whose liveness probe
    /// failed: exit code 137, `message` on the ended run, and a restart under the restart policy.
    pub fn kill(&mut self, id: &str, container: &str, message: String, now: Instant) -> Result<()> {
        self.end_run(id, Some(container), KILLED_EXIT_CODE, Some(message), now)
    }

    fn end_run(
        &mut self,
        id: &str,
        container: Option<&str>,
        code: i64,
        message: Option<String>,
        now: Instant,
    ) -> Result<()> {
        let lifecycle = self.lifecycle;
        let instance = self
            .instances
            .get_mut(id)
            .ok_or_else(|| refuse("ResourceNotFound", format!("no instance {id}")))?;
        let index = match container {
            Some(name) => instance
                .request
                .containers
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    refuse(
                        "InternalError.ContainerNotFound",
                        format!("no container {name} in {id}"),
                    )
                })?,
            None => 0,
        };
        let (started, policy) = (instance.started, instance.restart_policy.clone());
        let sim = &mut instance.containers[index];
        let ContainerView::Running {
            started: run_started,
            restarts,
            previous,
        } = sim.view(now, started, &policy, &lifecycle)
        else {
            return Err(refuse(
                "ResourceUnavailable.EksContainerStatus",
                format!("container {index} of {id} is not running"),
            ));
        };
        let run = Run {
            started: run_started,
            finished: now,
            code,
        };
        sim.killed = message.map(|message| (run, message));
        if restarts_after(&policy, code) {
            sim.last_crash = Some(run);
            sim.epoch = now + lifecycle.restart_delay;
            sim.epoch_restarts = restarts.saturating_add(1);
        } else {
            sim.terminated = Some((run, restarts, previous));
        }
        Ok(())
    }
}

impl Store {
    /// The containers the instance was created with (names, environment); empty for an unknown id.
    pub fn containers(&self, id: &str) -> Vec<Container> {
        self.instances
            .get(id)
            .map(|instance| instance.request.containers.clone())
            .unwrap_or_default()
    }

    /// The start of the current run of `container` if it is running at `now`, `None` if it is not
    /// (creating, exited, waiting to restart); an error if the instance or container is unknown.
    pub fn running_since(&self, id: &str, container: &str, now: Instant) -> Result<Option<Instant>> {
        let instance = self.instance(id)?;
        let index = instance
            .request
            .containers
            .iter()
            .position(|c| c.name == container)
            .ok_or_else(|| {
                refuse(
                    "InternalError.ContainerNotFound",
                    format!("no container {container} in {id}"),
                )
            })?;
        Ok(
            match instance.containers[index].view(
                now,
                instance.started,
                &instance.restart_policy,
                &self.lifecycle,
            ) {
                ContainerView::Running { started, .. } => Some(started),
                _ => None,
            },
        )
    }

    pub fn private_ip(&self, id: &str) -> Option<Ipv4Addr> {
        self.instances.get(id).map(|instance| instance.private_ip)
    }

    /// What the instance's sandbox agent reports at `now`: its status, and the usage of the
    /// containers running then (in the order of the request).
    pub fn samples(&self, id: &str, now: Instant) -> Result<Samples> {
        let instance = self.instance(id)?;
        let views = instance.views(now, &self.lifecycle);
        let containers = instance
            .request
            .containers
            .iter()
            .zip(&instance.containers)
            .zip(&views)
            .filter_map(|((container, sim), view)| match *view {
                ContainerView::Running { started, .. } => Some(ContainerSample {
                    name: container.name.clone(),
                    started,
                    cpu_core_nanoseconds: sim.usage.cpu_at(started, now),
                    memory_working_set_bytes: sim.usage.memory_bytes,
                }),
                _ => None,
            })
            .collect();
        Ok(Samples {
            status: status_of(&views),
            containers,
        })
    }

    /// Changes the usage rates of one container (all of them when `container` is `None`) from `now`
    /// on. The CPU counter of a running container continues from its value now.
    pub fn set_usage(
        &mut self,
        id: &str,
        container: Option<&str>,
        change: UsageChange,
        now: Instant,
    ) -> Result<()> {
        let lifecycle = self.lifecycle;
        let instance = self
            .instances
            .get_mut(id)
            .ok_or_else(|| refuse("ResourceNotFound", format!("no instance {id}")))?;
        let selected: Vec<usize> = match container {
            Some(name) => vec![
                instance
                    .request
                    .containers
                    .iter()
                    .position(|c| c.name == name)
                    .ok_or_else(|| {
                        refuse(
                            "InternalError.ContainerNotFound",
                            format!("no container {name} in {id}"),
                        )
                    })?,
            ],
            None => (0..instance.containers.len()).collect(),
        };
        let (started, policy) = (instance.started, instance.restart_policy.clone());
        for index in selected {
            let sim = &mut instance.containers[index];
            let view = sim.view(now, started, &policy, &lifecycle);
            let usage = &mut sim.usage;
            usage.checkpoint = match view {
                ContainerView::Running {
                    started: run_started, ..
                } => Some(CpuCheckpoint {
                    at: now,
                    run_started,
                    cpu_nanos: usage.cpu_at(run_started, now),
                }),
                // Not running: the next run starts from 0 at the new rate anyway.
                _ => None,
            };
            if let Some(millicores) = change.cpu_millicores {
                usage.cpu_millicores = millicores;
            }
            if let Some(bytes) = change.memory_bytes {
                usage.memory_bytes = bytes;
            }
        }
        Ok(())
    }
}

fn truncate_at_char(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tke_tencent::model::EnvironmentVariable;

    const SECOND: Duration = Duration::from_secs(1);

    struct Fixture {
        store: Store,
        clock: SimClock,
        rng: StdRng,
    }

    fn fixture() -> Fixture {
        let lifecycle = Lifecycle {
            start_delay: 10 * SECOND,
            restart_delay: 2 * SECOND,
            log_interval: SECOND,
        };
        Fixture {
            store: Store::new(
                lifecycle,
                "ap-guangzhou".into(),
                BTreeMap::from([("subnet-small".into(), 2)]),
                Ipv4Cidr::DEFAULT_PRIVATE,
            ),
            clock: SimClock::manual(),
            rng: StdRng::seed_from_u64(3),
        }
    }

    fn request(
        name: &str,
        policy: RestartPolicy,
        env: &[(&str, &str)],
    ) -> CreateEksContainerInstancesRequest {
        CreateEksContainerInstancesRequest {
            containers: vec![Container {
                image: "nginx".into(),
                name: "web".into(),
                environment_vars: env
                    .iter()
                    .map(|(n, v)| EnvironmentVariable {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }],
            eks_ci_name: name.into(),
            security_group_ids: vec!["sg-1".into()],
            subnet_id: "subnet-a".into(),
            vpc_id: "vpc-1".into(),
            memory: 2.0,
            cpu: 1.0,
            restart_policy: Some(policy),
            ..Default::default()
        }
    }

    impl Fixture {
        fn create(&mut self, request: CreateEksContainerInstancesRequest) -> Result<String> {
            let now = self.clock.now();
            Ok(self
                .store
                .create(request, now, &BTreeSet::new(), &mut self.rng)?
                .remove(0))
        }

        fn get(&self, id: &str) -> EksCi {
            let request = DescribeEksContainerInstancesRequest {
                eks_ci_ids: Some(vec![id.into()]),
                ..Default::default()
            };
            self.store
                .describe(&request, self.clock.now(), &self.clock)
                .unwrap()
                .1
                .remove(0)
        }

        fn state(&self, id: &str) -> ContainerState {
            self.get(id).containers[0].current_state.clone().unwrap()
        }
    }

    fn usage(f: &Fixture, id: &str) -> Vec<(String, u64, u64)> {
        f.store
            .samples(id, f.clock.now())
            .unwrap()
            .containers
            .into_iter()
            .map(|c| (c.name, c.cpu_core_nanoseconds, c.memory_working_set_bytes))
            .collect()
    }

    /// Name, `Cpu`, `Memory` and environment of a container.
    type ContainerSpec<'a> = (&'a str, Option<f64>, Option<f64>, &'a [(&'a str, &'a str)]);

    fn containers(specs: &[ContainerSpec<'_>]) -> Vec<Container> {
        specs
            .iter()
            .map(|(name, cpu, memory, env)| Container {
                image: "nginx".into(),
                name: name.to_string(),
                cpu: *cpu,
                memory: *memory,
                environment_vars: env
                    .iter()
                    .map(|(n, v)| EnvironmentVariable {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn the_env_sets_the_usage_and_the_cpu_counter_is_rate_times_running_time() {
        let mut f = fixture();
        let env = [(CPU_MILLICORES_ENV, "250"), (MEMORY_BYTES_ENV, "67108864")];
        let id = f.create(request("u", RestartPolicy::Always, &env)).unwrap();
        let pending = f.store.samples(&id, f.clock.now()).unwrap();
        assert_eq!(
            (pending.status, pending.containers.len()),
            (InstanceStatus::Pending, 0)
        );
        f.clock.advance(10 * SECOND);
        assert_eq!(usage(&f, &id), [("web".to_string(), 0, 64 << 20)]);
        f.clock.advance(10 * SECOND);
        assert_eq!(usage(&f, &id), [("web".to_string(), 2_500_000_000, 64 << 20)]);
        let explicit_zero = [(CPU_MILLICORES_ENV, "0"), (MEMORY_BYTES_ENV, "0")];
        let zero = f
            .create(request("z", RestartPolicy::Always, &explicit_zero))
            .unwrap();
        f.clock.advance(10 * SECOND);
        assert_eq!(
            usage(&f, &zero),
            [("web".to_string(), 0, 0)],
            "asked for explicitly, zero is honoured"
        );
    }

    #[test]
    fn without_env_a_container_uses_a_share_of_what_it_was_given_never_zero() {
        let mut f = fixture();
        let own = CreateEksContainerInstancesRequest {
            containers: containers(&[
                ("sized", Some(0.5), Some(1.0), &[]),
                ("tiny", Some(0.001), Some(0.001), &[]),
                ("unsized", None, None, &[]),
            ]),
            ..request("d", RestartPolicy::Always, &[])
        };
        let id = f.create(own).unwrap();
        f.clock.advance(10 * SECOND + 10 * SECOND);
        assert_eq!(
            usage(&f, &id),
            [
                // 10% of 0.5 cores = 50m for 10 s; 25% of 1 GiB.
                ("sized".to_string(), 500_000_000, 256 << 20),
                ("tiny".to_string(), 10_000_000, 1 << 20),
                // A third of the instance's 1 core and 2 GiB.
                ("unsized".to_string(), 330_000_000, (2u64 << 30) / 3 / 4),
            ]
        );
    }

    #[test]
    fn usage_env_that_is_not_a_non_negative_integer_is_refused_naming_the_container() {
        let mut f = fixture();
        for (name, value) in [
            (CPU_MILLICORES_ENV, "-1"),
            (CPU_MILLICORES_ENV, "1.5"),
            (MEMORY_BYTES_ENV, "64Mi"),
            (MEMORY_BYTES_ENV, ""),
        ] {
            let err = f
                .create(request("bad", RestartPolicy::Always, &[(name, value)]))
                .unwrap_err();
            assert_eq!(err.code, "InvalidParameterValue", "{name}={value}");
            assert!(
                err.message.contains(name) && err.message.contains("container web"),
                "{}",
                err.message
            );
        }
        assert_eq!(f.store.live(), 0);
    }

    #[test]
    fn a_restart_starts_the_cpu_counter_again_and_moves_the_start_time() {
        let mut f = fixture();
        let id = f
            .create(request(
                "r",
                RestartPolicy::Always,
                &[(CPU_MILLICORES_ENV, "1000")],
            ))
            .unwrap();
        f.clock.advance(14 * SECOND);
        let first = f.store.samples(&id, f.clock.now()).unwrap().containers[0].clone();
        assert_eq!(first.cpu_core_nanoseconds, 4_000_000_000);
        f.store.crash(&id, None, 1, f.clock.now()).unwrap();
        f.clock.advance(SECOND);
        assert_eq!(usage(&f, &id), [], "an exited container is not reported");
        f.clock.advance(SECOND + 3 * SECOND);
        let second = f.store.samples(&id, f.clock.now()).unwrap().containers[0].clone();
        assert_eq!(second.cpu_core_nanoseconds, 3_000_000_000);
        assert_eq!(second.started - first.started, 4 * SECOND + 2 * SECOND);
    }

    #[test]
    fn a_usage_change_keeps_the_cpu_counter_continuous() {
        let mut f = fixture();
        let two = CreateEksContainerInstancesRequest {
            containers: containers(&[
                ("a", None, None, &[(CPU_MILLICORES_ENV, "250")]),
                (
                    "b",
                    None,
                    None,
                    &[(CPU_MILLICORES_ENV, "100"), (MEMORY_BYTES_ENV, "1000")],
                ),
            ]),
            ..request("c", RestartPolicy::Always, &[])
        };
        let id = f.create(two).unwrap();
        // Before the start: nothing to carry over, the first run counts at the new rate.
        let faster = UsageChange {
            cpu_millicores: Some(500),
            memory_bytes: None,
        };
        f.store.set_usage(&id, Some("a"), faster, f.clock.now()).unwrap();
        f.clock.advance(10 * SECOND + 10 * SECOND);
        assert_eq!(usage(&f, &id)[0].1, 5_000_000_000);
        let change = UsageChange {
            cpu_millicores: Some(2000),
            memory_bytes: Some(4096),
        };
        f.store.set_usage(&id, None, change, f.clock.now()).unwrap();
        assert_eq!(usage(&f, &id)[0].1, 5_000_000_000, "no jump at the change");
        f.clock.advance(5 * SECOND);
        assert_eq!(
            usage(&f, &id),
            [
                ("a".to_string(), 15_000_000_000, 4096),
                ("b".to_string(), 1_000_000_000 + 10_000_000_000, 4096),
            ]
        );
        let err = f
            .store
            .set_usage(&id, Some("nope"), change, f.clock.now())
            .unwrap_err();
        assert_eq!(err.code, "InternalError.ContainerNotFound");
        let err = f
            .store
            .set_usage("eksci-missing", None, change, f.clock.now())
            .unwrap_err();
        assert_eq!(err.code, "ResourceNotFound");
    }

    #[test]
    fn private_ips_come_from_the_configured_block_a_sixteen_per_subnet() {
        let store = |cidr: &str| {
            Store::new(
                fixture().store.lifecycle,
                "ap-guangzhou".into(),
                BTreeMap::new(),
                cidr.parse().unwrap(),
            )
        };
        let mut f = fixture();
        f.store = store("127.0.0.0/8");
        let a = f.create(request("a", RestartPolicy::Always, &[])).unwrap();
        let other_subnet = CreateEksContainerInstancesRequest {
            subnet_id: "subnet-b".into(),
            ..request("b", RestartPolicy::Always, &[])
        };
        let b = f.create(other_subnet.clone()).unwrap();
        assert_eq!(
            (f.get(&a).private_ip.as_str(), f.get(&b).private_ip.as_str()),
            ("127.1.0.1", "127.2.0.1")
        );
        f.store = store("127.42.0.0/16");
        let a = f.create(request("a", RestartPolicy::Always, &[])).unwrap();
        assert_eq!(f.get(&a).private_ip, "127.42.0.1");
        let err = f.create(other_subnet).unwrap_err();
        assert_eq!(err.code, "LimitExceeded", "a /16 holds one subnet");
        assert!(err.message.contains("127.42.0.0/16"), "{}", err.message);
        assert_eq!(Ipv4Cidr::DEFAULT_PRIVATE.to_string(), "10.0.0.0/8");
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().max_subnets(), 254);
    }

    #[test]
    fn a_vpc_block_cut_into_smaller_subnets_gives_each_subnet_its_own() {
        let block: Ipv4Cidr = "10.102.0.0/16".parse().unwrap();
        let vpc = block.with_subnet_prefix(20).unwrap();
        let mut f = fixture();
        f.store = Store::new(
            fixture().store.lifecycle,
            "ap-guangzhou".into(),
            BTreeMap::new(),
            vpc,
        );
        let subnet = |n: usize| CreateEksContainerInstancesRequest {
            subnet_id: format!("subnet-{n}"),
            ..request(&format!("p{n}"), RestartPolicy::Always, &[])
        };
        let ips: Vec<String> = (1..=15)
            .map(|n| {
                let id = f.create(subnet(n)).unwrap();
                f.get(&id).private_ip
            })
            .collect();
        // The first /20 is skipped as the first /16 of a larger block is; then one /20 each.
        assert_eq!(ips[0], "10.102.16.1");
        assert_eq!(ips[1], "10.102.32.1");
        assert_eq!(ips[14], "10.102.240.1");
        let err = f.create(subnet(16)).unwrap_err();
        assert_eq!(err.code, "LimitExceeded", "a /16 holds fifteen /20s");
        assert_eq!(vpc.hosts_per_subnet(), 4094);
        assert_eq!(block.hosts_per_subnet(), 65534);
        for bad in [15, 29] {
            let err = block.with_subnet_prefix(bad).unwrap_err();
            assert!(err.contains("between 16 and 28"), "{err}");
        }
    }

    #[test]
    fn an_instance_is_pending_for_the_start_delay_then_running() {
        let mut f = fixture();
        let id = f.create(request("a", RestartPolicy::Always, &[])).unwrap();
        assert_eq!(f.get(&id).status, InstanceStatus::Pending);
        assert_eq!(f.state(&id).state, ContainerStateName::Created);
        f.clock.advance(10 * SECOND);
        assert_eq!(f.get(&id).status, InstanceStatus::Running);
        assert_eq!(f.state(&id).state, ContainerStateName::Running);
        assert_eq!(f.get(&id).private_ip, "10.1.0.1");
    }

    #[test]
    fn a_scripted_exit_under_never_ends_the_instance_with_the_exit_code() {
        let mut f = fixture();
        let failed = f
            .create(request(
                "f",
                RestartPolicy::Never,
                &[(EXIT_AFTER_ENV, "5"), (EXIT_CODE_ENV, "3")],
            ))
            .unwrap();
        let done = f
            .create(request("d", RestartPolicy::OnFailure, &[(EXIT_AFTER_ENV, "5")]))
            .unwrap();
        f.clock.advance(14 * SECOND);
        assert_eq!(f.get(&failed).status, InstanceStatus::Running);
        f.clock.advance(SECOND);
        assert_eq!(f.get(&failed).status, InstanceStatus::Failed);
        assert_eq!(f.state(&failed).exit_code, 3);
        assert_eq!(f.get(&done).status, InstanceStatus::Succeeded);
        assert_eq!(f.state(&done).reason, "Completed");
        assert!(!f.get(&done).succeeded_time.is_empty());
    }

    #[test]
    fn a_scripted_exit_under_always_restarts_and_counts_restarts() {
        let mut f = fixture();
        let id = f
            .create(request(
                "r",
                RestartPolicy::Always,
                &[(EXIT_AFTER_ENV, "5"), (EXIT_CODE_ENV, "1")],
            ))
            .unwrap();
        // Runs of 5 s with 2 s between them, from t = 10 s: [10,15) [17,22) [24,29) ...
        f.clock.advance(16 * SECOND);
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.exit_code, state.restart_count),
            (ContainerStateName::Exited, 1, 0)
        );
        f.clock.advance(9 * SECOND);
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.restart_count),
            (ContainerStateName::Running, 2)
        );
        assert_eq!(f.get(&id).status, InstanceStatus::Running);
    }

    #[test]
    fn a_crash_restarts_the_container_after_the_restart_delay_with_fresh_logs() {
        let mut f = fixture();
        let id = f.create(request("c", RestartPolicy::Always, &[])).unwrap();
        f.clock.advance(13 * SECOND);
        f.store.crash(&id, None, 137, f.clock.now()).unwrap();
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.exit_code, state.restart_count),
            (ContainerStateName::Exited, 137, 0)
        );
        f.clock.advance(2 * SECOND);
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.restart_count),
            (ContainerStateName::Running, 1)
        );
        f.clock.advance(SECOND);
        let log = |previous| DescribeEksContainerInstanceLogRequest {
            eks_ci_id: id.clone(),
            previous: Some(previous),
            ..Default::default()
        };
        let (_, current) = f.store.log(&log(false), f.clock.now(), &f.clock).unwrap();
        let (_, previous) = f.store.log(&log(true), f.clock.now(), &f.clock).unwrap();
        let lines = |text: &str| {
            text.lines()
                .map(|l| l.split_once(' ').unwrap().1.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&current), ["web log line 0", "web log line 1"]);
        assert_eq!(
            lines(&previous),
            [
                "web log line 0",
                "web log line 1",
                "web log line 2",
                "web log line 3"
            ]
        );
        let events = f.store.events(&id, None, f.clock.now(), &f.clock).unwrap();
        assert_eq!(events[0].reason, "BackOff");
        assert_eq!(events.iter().find(|e| e.reason == "Started").unwrap().count, 2);
    }

    #[test]
    fn a_liveness_kill_of_a_scripted_container_shows_why_and_the_script_goes_on() {
        let mut f = fixture();
        let id = f
            .create(request("k", RestartPolicy::Always, &[(EXIT_AFTER_ENV, "5")]))
            .unwrap();
        f.clock.advance(12 * SECOND);
        let run = f.store.running_since(&id, "web", f.clock.now()).unwrap();
        assert_eq!(run, Some(f.clock.now() - 2 * SECOND));
        f.store
            .kill(&id, "web", "Liveness probe failed: boom".into(), f.clock.now())
            .unwrap();
        let state = f.state(&id);
        assert_eq!(
            (
                state.state,
                state.exit_code,
                state.reason.as_str(),
                state.message.as_str()
            ),
            (
                ContainerStateName::Exited,
                KILLED_EXIT_CODE,
                "Error",
                "Liveness probe failed: boom"
            )
        );
        assert_eq!(f.store.running_since(&id, "web", f.clock.now()).unwrap(), None);
        f.clock.advance(2 * SECOND);
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.restart_count),
            (ContainerStateName::Running, 1)
        );
        assert_eq!(state.message, "");
        // The script runs again from the restart: exit after 5 s, back 2 s later.
        f.clock.advance(5 * SECOND);
        let state = f.state(&id);
        assert_eq!(
            (state.state, state.exit_code, state.message.as_str()),
            (ContainerStateName::Exited, 0, "")
        );
        f.clock.advance(2 * SECOND);
        assert_eq!(f.state(&id).restart_count, 2);
        assert!(f.store.running_since(&id, "db", f.clock.now()).is_err());
    }

    #[test]
    fn a_crash_under_never_fails_the_instance() {
        let mut f = fixture();
        let id = f.create(request("n", RestartPolicy::Never, &[])).unwrap();
        assert!(
            f.store.crash(&id, None, 2, f.clock.now()).is_err(),
            "a pending container cannot crash"
        );
        f.clock.advance(11 * SECOND);
        f.store.crash(&id, Some("web"), 2, f.clock.now()).unwrap();
        f.clock.advance(60 * SECOND);
        assert_eq!(f.get(&id).status, InstanceStatus::Failed);
        assert_eq!(f.state(&id).exit_code, 2);
    }

    #[test]
    fn logs_honour_tail_since_seconds_and_limit_bytes() {
        let mut f = fixture();
        let id = f.create(request("l", RestartPolicy::Always, &[])).unwrap();
        f.clock.advance(10 * SECOND + 99 * SECOND);
        let now = f.clock.now();
        let get =
            |request: DescribeEksContainerInstanceLogRequest| f.store.log(&request, now, &f.clock).unwrap().1;
        let base = DescribeEksContainerInstanceLogRequest {
            eks_ci_id: id.clone(),
            ..Default::default()
        };
        assert_eq!(get(base.clone()).lines().count(), 100);
        let tail = get(DescribeEksContainerInstanceLogRequest {
            tail: Some(3),
            ..base.clone()
        });
        assert!(tail.lines().last().unwrap().ends_with("web log line 99"));
        assert_eq!(tail.lines().count(), 3);
        let since = get(DescribeEksContainerInstanceLogRequest {
            since_seconds: Some(10),
            ..base.clone()
        });
        assert!(since.lines().next().unwrap().ends_with("web log line 89"));
        let limited = get(DescribeEksContainerInstanceLogRequest {
            limit_bytes: Some(10),
            ..base.clone()
        });
        assert_eq!(limited.len(), 10);
        let err = f.store.log(
            &DescribeEksContainerInstanceLogRequest {
                tail: Some(2001),
                ..base
            },
            now,
            &f.clock,
        );
        assert_eq!(err.unwrap_err().code, "InvalidParameterValue");
    }

    #[test]
    fn lines_typed_into_the_process_are_logged_among_its_own_in_time_order() {
        let mut f = fixture();
        let id = f.create(request("t", RestartPolicy::Always, &[])).unwrap();
        f.clock.advance(10 * SECOND + 5 * SECOND);
        f.store.type_line(&id, "web", "hello", f.clock.now()).unwrap();
        f.clock.advance(2 * SECOND);
        let log = |tail| {
            let request = DescribeEksContainerInstanceLogRequest {
                eks_ci_id: id.clone(),
                tail: Some(tail),
                ..Default::default()
            };
            f.store.log(&request, f.clock.now(), &f.clock).unwrap().1
        };
        let ends: Vec<String> = log(4)
            .lines()
            .map(|line| line.split_once(' ').unwrap().1.to_owned())
            .collect();
        assert_eq!(
            ends,
            [
                "web log line 5",
                "web read: hello",
                "web log line 6",
                "web log line 7"
            ]
        );
        assert_eq!(log(100).lines().count(), 9, "lines 0 to 7 and the typed one");
        assert!(f.store.type_line(&id, "nope", "x", f.clock.now()).is_err());
    }

    #[test]
    fn the_subnet_quota_and_sold_out_subnets_refuse_creates() {
        let mut f = fixture();
        let small = |name: &str| CreateEksContainerInstancesRequest {
            subnet_id: "subnet-small".into(),
            ..request(name, RestartPolicy::Always, &[])
        };
        f.create(small("1")).unwrap();
        f.create(small("2")).unwrap();
        assert_eq!(f.create(small("3")).unwrap_err().code, "LimitExceeded");
        let now = f.clock.now();
        let sold_out = BTreeSet::from(["subnet-a".to_string()]);
        let err = f
            .store
            .create(
                request("x", RestartPolicy::Always, &[]),
                now,
                &sold_out,
                &mut f.rng,
            )
            .unwrap_err();
        assert_eq!(err.code, "ResourcesSoldOut");
        assert!(err.message.contains("subnet-a"));
    }

    #[test]
    fn deleting_frees_the_ip_and_the_name_and_unknown_ids_delete_nothing() {
        let mut f = fixture();
        let a = f.create(request("same", RestartPolicy::Always, &[])).unwrap();
        let b = f.create(request("same", RestartPolicy::Always, &[])).unwrap();
        assert_eq!(f.store.counters.duplicate_names, 1);
        let err = f.store.delete(&[a.clone(), "eksci-missing".into()]).unwrap_err();
        assert_eq!(err.code, "ResourceNotFound");
        assert_eq!(f.store.live(), 2);
        f.store.delete(&[a, b]).unwrap();
        assert_eq!((f.store.live(), f.store.counters.deletes), (0, 2));
        f.create(request("same", RestartPolicy::Always, &[])).unwrap();
        assert_eq!(f.store.counters.duplicate_names, 1, "the name was free again");
    }

    #[test]
    fn invalid_creates_are_refused_with_the_api_codes() {
        let mut f = fixture();
        let odd_spec = CreateEksContainerInstancesRequest {
            cpu: 3.0,
            ..request("s", RestartPolicy::Always, &[])
        };
        assert_eq!(f.create(odd_spec).unwrap_err().code, "InvalidParameterValue");
        let no_name = request("", RestartPolicy::Always, &[]);
        assert_eq!(f.create(no_name).unwrap_err().code, "MissingParameter");
        let bad_policy = request("p", RestartPolicy::Other("Sometimes".into()), &[]);
        assert_eq!(f.create(bad_policy).unwrap_err().code, "InvalidParameterValue");
        let bad_script = request("e", RestartPolicy::Always, &[(EXIT_AFTER_ENV, "soon")]);
        assert_eq!(f.create(bad_script).unwrap_err().code, "InvalidParameterValue");
        assert_eq!(f.store.live(), 0);
    }

    #[test]
    fn describe_filters_and_pages_in_creation_order() {
        let mut f = fixture();
        let ids: Vec<String> = (0..5)
            .map(|i| {
                f.create(request(&format!("n{i}"), RestartPolicy::Always, &[]))
                    .unwrap()
            })
            .collect();
        let describe = |request: DescribeEksContainerInstancesRequest| {
            f.store.describe(&request, f.clock.now(), &f.clock)
        };
        let (total, page) = describe(DescribeEksContainerInstancesRequest {
            limit: Some(2),
            offset: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(total, 5);
        assert_eq!(
            page.iter().map(|i| i.eks_ci_id.clone()).collect::<Vec<_>>(),
            ids[2..4]
        );
        let by_name = Filter::new(filter_names::EKS_CI_NAME, ["n1", "n3"]);
        let (total, _) = describe(DescribeEksContainerInstancesRequest {
            filters: Some(vec![by_name]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(total, 2);
        let pending = Filter::new(filter_names::STATUS, ["Pending"]);
        let other_vpc = Filter::new(filter_names::VPC_ID, ["vpc-2"]);
        let (total, _) = describe(DescribeEksContainerInstancesRequest {
            filters: Some(vec![pending, other_vpc]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(total, 0, "filters are ANDed");
        let unknown = Filter::new("tag:pod-uid", ["x"]);
        let err = describe(DescribeEksContainerInstancesRequest {
            filters: Some(vec![unknown]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
        let err = describe(DescribeEksContainerInstancesRequest {
            limit: Some(101),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
    }

    #[test]
    fn describe_by_ids_honours_the_limit_like_the_api() {
        let mut f = fixture();
        let ids: Vec<String> = (0..30)
            .map(|i| {
                f.create(request(&format!("n{i}"), RestartPolicy::Always, &[]))
                    .unwrap()
            })
            .collect();
        let request = DescribeEksContainerInstancesRequest {
            eks_ci_ids: Some(ids.clone()),
            ..Default::default()
        };
        let (total, page) = f.store.describe(&request, f.clock.now(), &f.clock).unwrap();
        assert_eq!(
            (total, page.len()),
            (30, 20),
            "the default Limit of 20 cuts the answer"
        );
    }
}
