//! Pod status as eklet writes it: mirrored from a sandbox observation, held Pending with a
//! reason (refused, waiting for a ConfigMap, cordoned subnet), or failed. Pure functions; the
//! controller decides when to write, and writes only when [`differs`] says the pod shows
//! something else, so its own writes never cause another write.

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        ContainerState as KubeContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus as KubeContainerStatus, HostIP, Pod, PodCondition, PodIP,
        PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::provider::{ContainerState, ContainerStatus, Sandbox, SandboxPhase};

/// What a sandbox observation is mirrored with.
pub struct Mirror<'a> {
    pub sandbox: &'a Sandbox,
    pub provider: &'a str,
    pub reports_readiness: bool,
    pub node_ip: &'a str,
    /// When eklet created (or first saw) the sandbox: the pod's `startTime` unless it has one.
    pub created_at: Timestamp,
}

/// Kubernetes times have second precision; a finer one would never compare equal after a round
/// trip through the apiserver.
fn time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

fn current(pod: &Pod) -> Option<&PodStatus> {
    pod.status.as_ref()
}

fn condition(
    pod: &Pod,
    now: Timestamp,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = current(pod)
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

fn host_ips(node_ip: &str) -> (Option<String>, Option<Vec<HostIP>>) {
    (
        Some(node_ip.to_owned()),
        Some(vec![HostIP {
            ip: node_ip.to_owned(),
        }]),
    )
}

fn spec_containers(pod: &Pod, init: bool) -> Vec<(String, String)> {
    let spec = pod.spec.as_ref();
    let containers = if init {
        spec.and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default()
    } else {
        spec.map(|s| s.containers.as_slice()).unwrap_or_default()
    };
    containers
        .iter()
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect()
}

fn kube_state(state: &ContainerState) -> KubeContainerState {
    match state {
        ContainerState::Waiting { reason, message } => KubeContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()).filter(|r| !r.is_empty()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..KubeContainerState::default()
        },
        ContainerState::Running { started_at } => KubeContainerState {
            running: Some(ContainerStateRunning {
                started_at: started_at.map(time),
            }),
            ..KubeContainerState::default()
        },
        ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => KubeContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()).filter(|r| !r.is_empty()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
                started_at: started_at.map(time),
                finished_at: finished_at.map(time),
                ..ContainerStateTerminated::default()
            }),
            ..KubeContainerState::default()
        },
    }
}

fn waiting(reason: &str, message: &str) -> KubeContainerState {
    kube_state(&ContainerState::Waiting {
        reason: reason.to_owned(),
        message: message.to_owned(),
    })
}

fn container_statuses(
    pod: &Pod,
    init: bool,
    observed: &[ContainerStatus],
    m: &Mirror<'_>,
) -> Vec<KubeContainerStatus> {
    spec_containers(pod, init)
        .into_iter()
        .map(|(name, image)| {
            let found = observed.iter().find(|c| c.name == name);
            let running = found.is_some_and(|c| matches!(c.state, ContainerState::Running { .. }));
            let ready = match found {
                None => false,
                Some(c) if init => matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }),
                Some(c) if m.reports_readiness => running && c.ready.unwrap_or(false),
                // Without a readiness report from the cloud, running is the best knowledge.
                Some(_) => running,
            };
            KubeContainerStatus {
                container_id: Some(format!("{}://{}/{name}", m.provider, m.sandbox.id)),
                image: found
                    .map(|c| c.image.clone())
                    .filter(|i| !i.is_empty())
                    .unwrap_or(image),
                image_id: String::new(),
                name: name.clone(),
                ready,
                restart_count: found.map_or(0, |c| i32::try_from(c.restart_count).unwrap_or(i32::MAX)),
                started: Some(running),
                state: Some(match found {
                    Some(c) => kube_state(&c.state),
                    None => waiting("ContainerCreating", ""),
                }),
                ..KubeContainerStatus::default()
            }
        })
        .collect()
}

/// The pod as its sandbox is.
pub fn mirrored(pod: &Pod, m: &Mirror<'_>, now: Timestamp) -> PodStatus {
    let sandbox = m.sandbox;
    let phase = match sandbox.phase {
        SandboxPhase::Pending => "Pending",
        SandboxPhase::Running => "Running",
        SandboxPhase::Succeeded => "Succeeded",
        SandboxPhase::Failed => "Failed",
        SandboxPhase::Unknown => current(pod).and_then(|s| s.phase.as_deref()).unwrap_or("Pending"),
    };
    let containers = container_statuses(pod, false, &sandbox.containers, m);
    let init_containers = container_statuses(pod, true, &sandbox.init_containers, m);
    let started = matches!(
        sandbox.phase,
        SandboxPhase::Running | SandboxPhase::Succeeded | SandboxPhase::Failed
    );
    let initialized = started || init_containers.iter().all(|c| c.ready);
    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty();
    let gates_open = readiness_gates_open(pod);
    let completed = sandbox.phase.is_terminal();
    let not_ready_message =
        (!unready.is_empty()).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let ready_reason = if completed {
        Some("PodCompleted")
    } else if !containers_ready {
        Some("ContainersNotReady")
    } else if !gates_open {
        Some("ReadinessGatesNotReady")
    } else {
        None
    };
    let mut conditions = vec![
        condition(
            pod,
            now,
            "PodReadyToStartContainers",
            sandbox.ip.is_some() || started,
            None,
            None,
        ),
        condition(
            pod,
            now,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            None,
        ),
        condition(
            pod,
            now,
            "ContainersReady",
            containers_ready && !completed,
            if completed {
                Some("PodCompleted")
            } else {
                (!containers_ready).then_some("ContainersNotReady")
            },
            not_ready_message.clone(),
        ),
        condition(
            pod,
            now,
            "Ready",
            containers_ready && gates_open && !completed,
            ready_reason,
            not_ready_message,
        ),
    ];
    if !has_condition(pod, "PodScheduled") {
        conditions.push(condition(pod, now, "PodScheduled", true, None, None));
    }
    let (host_ip, host_ips) = host_ips(m.node_ip);
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        pod_ip: sandbox.ip.clone(),
        pod_ips: sandbox.ip.clone().map(|ip| vec![PodIP { ip }]),
        host_ip,
        host_ips,
        start_time: Some(
            current(pod)
                .and_then(|s| s.start_time.clone())
                .unwrap_or_else(|| time(m.created_at)),
        ),
        container_statuses: Some(containers),
        init_container_statuses: Some(init_containers).filter(|c| !c.is_empty()),
        observed_generation: pod.metadata.generation,
        ..PodStatus::default()
    }
}

fn has_condition(pod: &Pod, type_: &str) -> bool {
    current(pod)
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_))
}

fn readiness_gates_open(pod: &Pod) -> bool {
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or_default();
    gates.iter().all(|gate| {
        current(pod)
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == gate.condition_type && c.status == "True")
            })
    })
}

/// A pod that gets no sandbox (yet): Pending, with the reason in `status.reason` (what
/// `kubectl get pod` prints as STATUS), in the Ready condition and in each container's waiting
/// state. Pending, not Failed: a DaemonSet or ReplicaSet replaces Failed pods, and the
/// replacement would land here again and again.
pub fn held(pod: &Pod, reason: &str, message: &str, node_ip: &str, now: Timestamp) -> PodStatus {
    let waiting_containers = |init: bool| {
        spec_containers(pod, init)
            .into_iter()
            .map(|(name, image)| KubeContainerStatus {
                image,
                name,
                ready: false,
                restart_count: 0,
                started: Some(false),
                state: Some(waiting(reason, message)),
                ..KubeContainerStatus::default()
            })
            .collect::<Vec<_>>()
    };
    let mut conditions = vec![
        condition(
            pod,
            now,
            "ContainersReady",
            false,
            Some(reason),
            Some(message.to_owned()),
        ),
        condition(pod, now, "Ready", false, Some(reason), Some(message.to_owned())),
    ];
    if !has_condition(pod, "PodScheduled") {
        conditions.push(condition(pod, now, "PodScheduled", true, None, None));
    }
    let (host_ip, host_ips) = host_ips(node_ip);
    PodStatus {
        phase: Some("Pending".into()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        conditions: Some(conditions),
        host_ip,
        host_ips,
        container_statuses: Some(waiting_containers(false)),
        init_container_statuses: Some(waiting_containers(true)).filter(|c| !c.is_empty()),
        observed_generation: pod.metadata.generation,
        ..PodStatus::default()
    }
}

/// A pod whose sandbox timed out or vanished: Failed, every unfinished container terminated
/// the way the kubelet reports containers it cannot find (exit code 137).
pub fn failed(
    pod: &Pod,
    reason: &str,
    message: &str,
    last: Option<&Mirror<'_>>,
    node_ip: &str,
    now: Timestamp,
) -> PodStatus {
    let terminate = |status: KubeContainerStatus| -> KubeContainerStatus {
        let finished = status.state.as_ref().is_some_and(|s| s.terminated.is_some());
        KubeContainerStatus {
            ready: false,
            started: Some(false),
            state: if finished {
                status.state.clone()
            } else {
                Some(KubeContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some("ContainerStatusUnknown".into()),
                        message: Some(message.to_owned()),
                        finished_at: Some(time(now)),
                        ..ContainerStateTerminated::default()
                    }),
                    ..KubeContainerState::default()
                })
            },
            ..status
        }
    };
    let (containers, init_containers) = match last {
        Some(m) => (
            container_statuses(pod, false, &m.sandbox.containers, m),
            container_statuses(pod, true, &m.sandbox.init_containers, m),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let base = |init: bool, known: Vec<KubeContainerStatus>| {
        if !known.is_empty() {
            return known;
        }
        spec_containers(pod, init)
            .into_iter()
            .map(|(name, image)| KubeContainerStatus {
                name,
                image,
                ..KubeContainerStatus::default()
            })
            .collect()
    };
    let (host_ip, host_ips) = host_ips(node_ip);
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        conditions: Some(vec![
            condition(pod, now, "ContainersReady", false, Some("PodFailed"), None),
            condition(pod, now, "Ready", false, Some("PodFailed"), None),
        ]),
        host_ip,
        host_ips,
        pod_ip: current(pod).and_then(|s| s.pod_ip.clone()),
        pod_ips: current(pod).and_then(|s| s.pod_ips.clone()),
        start_time: current(pod).and_then(|s| s.start_time.clone()),
        container_statuses: Some(base(false, containers).into_iter().map(terminate).collect()),
        init_container_statuses: Some(
            base(true, init_containers)
                .into_iter()
                .map(terminate)
                .collect::<Vec<_>>(),
        )
        .filter(|c| !c.is_empty()),
        observed_generation: pod.metadata.generation,
        ..PodStatus::default()
    }
}

/// Whether the pod shows something other than `desired` in what users and controllers read:
/// phase, reason, IPs, condition statuses and container states. Times are not compared, so a
/// status eklet wrote always compares equal to itself.
pub fn differs(current: Option<&PodStatus>, desired: &PodStatus) -> bool {
    let Some(current) = current else { return true };
    if current.phase != desired.phase
        || current.reason != desired.reason
        || current.message != desired.message
        || current.pod_ip != desired.pod_ip
        || current.host_ip != desired.host_ip
        || current.start_time.is_none() != desired.start_time.is_none()
    {
        return true;
    }
    let conditions = current.conditions.as_deref().unwrap_or_default();
    for wanted in desired.conditions.iter().flatten() {
        let same = conditions
            .iter()
            .any(|c| c.type_ == wanted.type_ && c.status == wanted.status && c.reason == wanted.reason);
        if !same {
            return true;
        }
    }
    let containers_differ = |current: Option<&Vec<KubeContainerStatus>>,
                             desired: Option<&Vec<KubeContainerStatus>>| {
        let (current, desired) = (
            current.map(Vec::as_slice).unwrap_or_default(),
            desired.map(Vec::as_slice).unwrap_or_default(),
        );
        current.len() != desired.len()
            || current.iter().zip(desired).any(|(c, d)| {
                c.name != d.name
                    || c.ready != d.ready
                    || c.restart_count != d.restart_count
                    || c.started.unwrap_or(false) != d.started.unwrap_or(false)
                    || c.container_id != d.container_id
                    || state_key(c.state.as_ref()) != state_key(d.state.as_ref())
            })
    };
    containers_differ(
        current.container_statuses.as_ref(),
        desired.container_statuses.as_ref(),
    ) || containers_differ(
        current.init_container_statuses.as_ref(),
        desired.init_container_statuses.as_ref(),
    )
}

/// A container state without its times.
fn state_key(state: Option<&KubeContainerState>) -> (u8, Option<String>, i32) {
    let Some(state) = state else { return (0, None, 0) };
    if let Some(t) = &state.terminated {
        (3, t.reason.clone(), t.exit_code)
    } else if state.running.is_some() {
        (2, None, 0)
    } else if let Some(w) = &state.waiting {
        (1, w.reason.clone(), 0)
    } else {
        (0, None, 0)
    }
}

/// The strategic-merge patch that makes the pod's status `desired`: conditions merge by type
/// (other components' conditions stay), the fields eklet owns are replaced or cleared.
pub fn patch(desired: &PodStatus) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "phase": desired.phase,
            "reason": desired.reason,
            "message": desired.message,
            "conditions": desired.conditions,
            "hostIP": desired.host_ip,
            "hostIPs": desired.host_ips,
            "podIP": desired.pod_ip,
            "podIPs": desired.pod_ips,
            "startTime": desired.start_time,
            "containerStatuses": desired.container_statuses,
            "initContainerStatuses": desired.init_container_statuses,
            "observedGeneration": desired.observed_generation,
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "sidecar", "image": "envoy"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn sandbox(phase: SandboxPhase, states: &[ContainerState]) -> Sandbox {
        Sandbox {
            id: "eksci-1".into(),
            name: "eklet-cls-1-u-1".into(),
            phase,
            ip: Some("10.1.0.5".into()),
            created_at: None,
            containers: ["app", "sidecar"]
                .iter()
                .zip(states)
                .map(|(name, state)| ContainerStatus {
                    name: (*name).into(),
                    image: String::new(),
                    state: state.clone(),
                    restart_count: 0,
                    ready: None,
                })
                .collect(),
            init_containers: vec![],
            billed: None,
        }
    }

    fn mirror(sandbox: &Sandbox) -> Mirror<'_> {
        Mirror {
            sandbox,
            provider: "tencent",
            reports_readiness: false,
            node_ip: "10.0.0.7",
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn condition_of(status: &PodStatus, type_: &str) -> Option<String> {
        status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    }

    #[test]
    fn a_running_sandbox_makes_a_ready_running_pod_with_its_ip() {
        let running = ContainerState::Running {
            started_at: Some(Timestamp::UNIX_EPOCH),
        };
        let sandbox = sandbox(SandboxPhase::Running, &[running.clone(), running]);
        let status = mirrored(&pod(), &mirror(&sandbox), Timestamp::now());
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.1.0.5"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.7"));
        for type_ in [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ] {
            assert_eq!(condition_of(&status, type_).as_deref(), Some("True"), "{type_}");
        }
        let containers = status.container_statuses.clone().unwrap_or_default();
        assert_eq!(containers.len(), 2);
        assert!(containers.iter().all(|c| c.ready && c.started == Some(true)));
        assert_eq!(
            containers[0].container_id.as_deref(),
            Some("tencent://eksci-1/app")
        );
        assert_eq!(containers[0].image, "nginx:1.27");
        assert!(
            !status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "PodScheduled"),
            "kept as the scheduler wrote it"
        );
    }

    #[test]
    fn a_container_still_starting_keeps_the_pod_unready_and_names_it() {
        let sandbox = sandbox(
            SandboxPhase::Running,
            &[
                ContainerState::Running { started_at: None },
                ContainerState::Waiting {
                    reason: "Pulling".into(),
                    message: String::new(),
                },
            ],
        );
        let status = mirrored(&pod(), &mirror(&sandbox), Timestamp::now());
        assert_eq!(condition_of(&status, "Ready").as_deref(), Some("False"));
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [sidecar]")
        );
    }

    #[test]
    fn an_unmet_readiness_gate_keeps_the_pod_unready() {
        let mut pod = pod();
        if let Some(spec) = pod.spec.as_mut() {
            spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "lb.ready".into(),
            }]);
        }
        let running = ContainerState::Running { started_at: None };
        let sandbox = sandbox(SandboxPhase::Running, &[running.clone(), running]);
        let status = mirrored(&pod, &mirror(&sandbox), Timestamp::now());
        assert_eq!(condition_of(&status, "ContainersReady").as_deref(), Some("True"));
        assert_eq!(condition_of(&status, "Ready").as_deref(), Some("False"));
    }

    #[test]
    fn a_refused_pod_stays_pending_and_shows_the_reason_everywhere() {
        let status = held(
            &pod(),
            "DaemonsetForbidden",
            "DaemonSet pods do not run on virtual nodes",
            "10.0.0.7",
            Timestamp::now(),
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.reason.as_deref(), Some("DaemonsetForbidden"));
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("DaemonsetForbidden"))
        );
        let waiting = status.container_statuses.unwrap_or_default()[0]
            .state
            .clone()
            .and_then(|s| s.waiting);
        assert_eq!(
            waiting.and_then(|w| w.reason).as_deref(),
            Some("DaemonsetForbidden")
        );
    }

    #[test]
    fn a_lost_sandbox_fails_the_pod_with_every_container_terminated() {
        let status = failed(
            &pod(),
            "SandboxLost",
            "the sandbox is gone",
            None,
            "10.0.0.7",
            Timestamp::now(),
        );
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let containers = status.container_statuses.unwrap_or_default();
        assert_eq!(containers.len(), 2);
        for c in containers {
            let terminated = c.state.and_then(|s| s.terminated).unwrap_or_default();
            assert_eq!(
                (terminated.exit_code, terminated.reason.as_deref()),
                (137, Some("ContainerStatusUnknown"))
            );
        }
    }

    #[test]
    fn a_status_compares_equal_to_itself_after_the_apiserver_round_trip() {
        let running = ContainerState::Running {
            started_at: Some(Timestamp::now()),
        };
        let sandbox = sandbox(SandboxPhase::Running, &[running.clone(), running]);
        let desired = mirrored(&pod(), &mirror(&sandbox), Timestamp::now());
        // What the apiserver returns: the patch applied and re-serialised.
        let round_trip: PodStatus =
            serde_json::from_value(patch(&desired)["status"].clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!differs(Some(&round_trip), &desired));
        let mut restarted = round_trip.clone();
        if let Some(containers) = restarted.container_statuses.as_mut() {
            containers[0].restart_count = 1;
        }
        assert!(differs(Some(&restarted), &desired));
        assert!(differs(None, &desired));
    }

    #[test]
    fn the_patch_clears_a_previous_reason() {
        let running = ContainerState::Running { started_at: None };
        let sandbox = sandbox(SandboxPhase::Running, &[running.clone(), running]);
        let body = patch(&mirrored(&pod(), &mirror(&sandbox), Timestamp::now()));
        assert!(body["status"]["reason"].is_null());
        assert!(
            body["status"]
                .as_object()
                .is_some_and(|s| s.contains_key("reason"))
        );
    }
}
