//! The port rules: declared container and host ports, probe ports (named ports resolved as the
//! kubelet resolves them) and the `net.ipv4.ip_local_port_range` sysctl, all measured against
//! the range the cloud sandbox keeps for itself.

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::quote::quoted;
use crate::reason::{Reason, Violation};

/// First port the cloud sandbox reserves for its own agents.
pub const RESERVED_PORTS_FIRST: u16 = 61000;
/// Last reserved port (inclusive).
pub const RESERVED_PORTS_LAST: u16 = 65534;
/// The sysctl whose range must stay clear of the reserved ports.
pub const PORT_RANGE_SYSCTL: &str = "net.ipv4.ip_local_port_range";

pub type Result<T, E = InvalidPortRange> = std::result::Result<T, E>;

/// An `ip_local_port_range` value the kernel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPortRange {
    #[error(
        "{} is not two port numbers separated by whitespace, like \"32768 60999\"",
        quoted(value)
    )]
    NotTwoNumbers { value: String },
    #[error("{} has a port outside 1-65535", quoted(value))]
    OutOfRange { value: String },
    #[error("{} starts at {low}, above its end {high}", quoted(value))]
    Reversed { value: String, low: u16, high: u16 },
}

/// Whether a port number falls in the reserved range.
pub fn is_reserved_port(port: i32) -> bool {
    (i32::from(RESERVED_PORTS_FIRST)..=i32::from(RESERVED_PORTS_LAST)).contains(&port)
}

/// Reads an `ip_local_port_range` value: two decimal ports separated by spaces or tabs, each in
/// 1-65535, the first not above the second, as the kernel accepts them.
pub fn parse_port_range(value: &str) -> Result<(u16, u16)> {
    let not_two_numbers = || InvalidPortRange::NotTwoNumbers {
        value: value.to_owned(),
    };
    let mut fields = value.split_whitespace();
    let (Some(low), Some(high), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(not_two_numbers());
    };
    let port = |field: &str| -> Result<u16> {
        if field.is_empty() || !field.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(not_two_numbers());
        }
        match field.parse::<u32>() {
            Ok(port @ 1..=65535) => u16::try_from(port).map_err(|_| not_two_numbers()),
            _ => Err(InvalidPortRange::OutOfRange {
                value: value.to_owned(),
            }),
        }
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(InvalidPortRange::Reversed {
            value: value.to_owned(),
            low,
            high,
        });
    }
    Ok((low, high))
}

/// Whether `[low, high]` shares at least one port with the reserved range.
pub fn overlaps_reserved_ports(low: u16, high: u16) -> bool {
    low <= RESERVED_PORTS_LAST && high >= RESERVED_PORTS_FIRST
}

/// Sysctl names may use `/` as the separator (`net/ipv4/ip_local_port_range`).
fn is_port_range_sysctl(name: &str) -> bool {
    name.trim().replace('/', ".") == PORT_RANGE_SYSCTL
}

pub(super) fn check_port_range_sysctl(spec: &PodSpec, violations: &mut Vec<Violation>) {
    let sysctls = spec
        .security_context
        .as_ref()
        .and_then(|context| context.sysctls.as_ref())
        .into_iter()
        .flatten()
        .filter(|sysctl| is_port_range_sysctl(&sysctl.name));
    for sysctl in sysctls {
        let message = match parse_port_range(&sysctl.value) {
            Ok((low, high)) if overlaps_reserved_ports(low, high) => format!(
                "sysctl {PORT_RANGE_SYSCTL}={} overlaps {RESERVED_PORTS_FIRST}-{RESERVED_PORTS_LAST}, which the \
                 cloud sandbox reserves; choose a range outside it, for example \"32768 60999\"",
                quoted(&sysctl.value)
            ),
            Ok(_) => continue,
            Err(invalid) => format!(
                "sysctl {PORT_RANGE_SYSCTL} value {invalid}, so the cloud sandbox would refuse it; \
                 write \"LOW HIGH\" outside {RESERVED_PORTS_FIRST}-{RESERVED_PORTS_LAST}, for example \"32768 60999\""
            ),
        };
        violations.push(Violation::new(Reason::ReservedPortRangeSysctl, message));
    }
}

/// Containers then init containers, each with the words that name it in a message.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
    let containers = spec
        .containers
        .iter()
        .map(|c| (format!("container {}", quoted(&c.name)), c));
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (format!("init container {}", quoted(&c.name)), c));
    containers.chain(init_containers)
}

pub(super) fn check_declared_ports(spec: &PodSpec, violations: &mut Vec<Violation>) {
    for (who, container) in all_containers(spec) {
        for port in container.ports.iter().flatten() {
            let declared = [
                ("containerPort", Some(port.container_port)),
                ("hostPort", port.host_port),
            ];
            for (field, number) in declared {
                let Some(number) = number.filter(|number| is_reserved_port(*number)) else {
                    continue;
                };
                violations.push(Violation::new(
                    Reason::ReservedPort,
                    format!(
                        "{who} declares {field} {number}, inside {RESERVED_PORTS_FIRST}-{RESERVED_PORTS_LAST} \
                         which the cloud sandbox reserves; use a port outside that range"
                    ),
                ));
            }
        }
    }
}

pub(super) fn check_probe_ports(spec: &PodSpec, violations: &mut Vec<Violation>) {
    for (who, container) in all_containers(spec) {
        let probes = [
            ("livenessProbe", &container.liveness_probe),
            ("readinessProbe", &container.readiness_probe),
            ("startupProbe", &container.startup_probe),
        ];
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            for (action, target, port) in probe_targets(probe, container) {
                if !is_reserved_port(port) {
                    continue;
                }
                violations.push(Violation::new(
                    Reason::ReservedProbePort,
                    format!(
                        "{who} {kind} {action} port {target} is inside {RESERVED_PORTS_FIRST}-\
                         {RESERVED_PORTS_LAST} which the cloud sandbox reserves; probe a port outside that range"
                    ),
                ));
            }
        }
    }
}

/// The probe's actions with the port each targets: `(action, how it was written, port)`.
/// A named port that names none of the container's ports is left out: the kubelet would fail
/// that probe everywhere, and it reserves nothing in the sandbox.
fn probe_targets(probe: &Probe, container: &Container) -> Vec<(&'static str, String, i32)> {
    let mut targets = Vec::new();
    if let Some(action) = &probe.http_get
        && let Some(target) = resolve(&action.port, container)
    {
        targets.push(("httpGet", target.0, target.1));
    }
    if let Some(action) = &probe.tcp_socket
        && let Some(target) = resolve(&action.port, container)
    {
        targets.push(("tcpSocket", target.0, target.1));
    }
    if let Some(action) = &probe.grpc {
        targets.push(("grpc", action.port.to_string(), action.port));
    }
    targets
}

/// Resolves a probe port like the kubelet's `extractPort`: a number as is; a name through the
/// container's named ports, and failing that a name that is itself a number.
fn resolve(port: &IntOrString, container: &Container) -> Option<(String, i32)> {
    match port {
        IntOrString::Int(number) => Some((number.to_string(), *number)),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|declared| declared.name.as_deref() == Some(name.as_str()))
                .map(|declared| declared.container_port);
            match named {
                Some(number) => Some((format!("{} (containerPort {number})", quoted(name)), number)),
                None => name.parse::<i32>().ok().map(|number| (quoted(name), number)),
            }
        }
    }
}
