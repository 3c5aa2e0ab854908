//! The probes a kubelet would run, run by cloudsim for instances with sandbox agents: the EKSCI API
//! takes a container's `ReadinessProbe` and `LivenessProbe` but reports no readiness, so, as in a
//! real sandbox VM, the agent evaluates them and says what the API cannot (see `agents`).
//!
//! Each instance has a [`Prober`] from its create to its delete (started and stopped with its
//! agent), one task per probe of a Running container, with the kubelet's semantics and defaults:
//! nothing before `InitialDelaySeconds` after the run started, then one attempt every
//! `PeriodSeconds` (10) that fails after `TimeoutSeconds` (1); `SuccessThreshold` (1) consecutive
//! successes or `FailureThreshold` (3) consecutive failures change the result.
//! - httpGet: `GET http://PrivateIp:port/path`; 2xx and 3xx succeed (redirects are not followed).
//!   HTTPS fails: cloudsim's responders speak plain HTTP.
//! - tcpSocket: a TCP connect to `PrivateIp:port`.
//! - exec: the command runs as an agent's exec does (`streams`: the container's environment, the
//!   instance's working directory); exit 0 succeeds.
//!
//! Readiness starts false for every run of a container and is kept per run, so a restart resets
//! it; the agent serves it as `container_ready` (the contract in `tke_tencent::agent`). A liveness
//! result of failure kills the run as a kubelet does ([`Store::kill`](crate::instances::Store::kill):
//! exit code 137, `Liveness probe failed: ...`), and the restart policy brings it back after the
//! restart delay.
//!
//! The responders (`agents`) answer 200 unless a test set another status for their instance and
//! port, optionally for one path only ([`Board::set_status`], `POST /admin/responders`): a way to
//! make a probe fail and pass again.
//!
//! Probes run on tokio time (a period is a real second), but a run's start and its initial delay
//! are read from the simulator's clock, like the rest of the lifecycle. A probe task holds the
//! simulator's lock only to read or write a few fields, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use tke_tencent::agent_stream::StreamRequest;
use tke_tencent::model::{Container, LivenessOrReadinessProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Sim;
use crate::streams::{self, ExecSpec};

const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// How often a probe looks again at a container that is not running.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The longest status line of an HTTP answer read.
const STATUS_LINE_MAX: usize = 1024;
/// How much of an exec probe's output a failure message quotes.
const OUTPUT_EXCERPT: usize = 200;

/// What the probes found and what the tests asked of the responders, kept in the simulator's
/// state.
#[derive(Debug, Default)]
pub struct Board {
    /// (instance, container) → the run the result belongs to, and whether it is ready.
    ready: HashMap<(String, String), (Instant, bool)>,
    /// (instance, port) → path (`None`: every path) → the status answered.
    statuses: HashMap<(String, u16), BTreeMap<Option<String>, u16>>,
}

impl Board {
    /// From now on the responder on `port` of instance `id` answers `status` to requests for
    /// `path` (every path when `None`; a path's own status wins). 200 restores the default.
    pub fn set_status(&mut self, id: &str, port: u16, path: Option<String>, status: u16) {
        let key = (id.to_owned(), port);
        let paths = self.statuses.entry(key.clone()).or_default();
        if status == 200 {
            paths.remove(&path);
        } else {
            paths.insert(path, status);
        }
        if paths.is_empty() {
            self.statuses.remove(&key);
        }
    }

    /// The status the responder on `port` of instance `id` answers for `path`.
    pub fn status(&self, id: &str, port: u16, path: &str) -> u16 {
        let Some(paths) = self.statuses.get(&(id.to_owned(), port)) else {
            return 200;
        };
        paths
            .get(&Some(path.to_owned()))
            .or_else(|| paths.get(&None))
            .copied()
            .unwrap_or(200)
    }

    pub fn set_ready(&mut self, id: &str, container: &str, run: Instant, ready: bool) {
        self.ready
            .insert((id.to_owned(), container.to_owned()), (run, ready));
    }

    /// Whether the run of `container` that started at `running_since` is ready: false when it is
    /// not running or its probe has not passed in this run.
    pub fn ready(&self, id: &str, container: &str, running_since: Option<Instant>) -> bool {
        let Some(since) = running_since else {
            return false;
        };
        self.ready
            .get(&(id.to_owned(), container.to_owned()))
            .is_some_and(|&(run, ready)| run == since && ready)
    }

    /// Forgets a deleted instance.
    pub fn forget(&mut self, id: &str) {
        self.ready.retain(|(instance, _), _| instance != id);
        self.statuses.retain(|(instance, _), _| instance != id);
    }
}

/// The answer of a responder: `body`, with the status the [`Board`] holds for the request's path.
pub fn responder(sim: Weak<Sim>, eks_ci_id: String, port: u16, body: String) -> Router {
    Router::new().fallback(move |uri: Uri| {
        let status = sim
            .upgrade()
            .map_or(200, |sim| sim.responder_status(&eks_ci_id, port, uri.path()));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let body = body.clone();
        async move { (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body) }
    })
}

/// The probe tasks of one instance; dropping it stops them (and kills an exec probe's process).
#[derive(Debug)]
pub struct Prober {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Readiness,
    Liveness,
}

/// One probe of one container, its defaults applied.
#[derive(Debug, Clone)]
struct Check {
    eks_ci_id: String,
    container: String,
    kind: Kind,
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

#[derive(Debug, Clone)]
enum Action {
    HttpGet {
        addr: SocketAddr,
        path: String,
    },
    TcpSocket {
        addr: SocketAddr,
    },
    Exec(ExecSpec),
    /// A probe that cannot be run (no action, a bad port, HTTPS): it always fails, saying why.
    Invalid(String),
}

impl Prober {
    /// The probes of `containers` of instance `eks_ci_id`, on its private `ip`, execs in `workdir`;
    /// `None` when no container has one. Must be called within a Tokio runtime.
    pub fn start(
        sim: Weak<Sim>,
        eks_ci_id: &str,
        ip: IpAddr,
        containers: &[Container],
        workdir: &Path,
    ) -> Option<Self> {
        let checks: Vec<Check> = containers
            .iter()
            .flat_map(|container| {
                [
                    (Kind::Readiness, &container.readiness_probe),
                    (Kind::Liveness, &container.liveness_probe),
                ]
                .into_iter()
                .filter_map(move |(kind, probe)| Some((container, kind, probe.as_ref()?)))
            })
            .map(|(container, kind, probe)| check(eks_ci_id, container, kind, probe, ip, workdir))
            .collect();
        if checks.is_empty() {
            return None;
        }
        let tasks = checks
            .into_iter()
            .map(|check| tokio::spawn(watch(sim.clone(), check)))
            .collect();
        Some(Self { tasks })
    }
}

fn seconds(value: Option<i64>, default: Duration) -> Duration {
    match value {
        Some(seconds) if seconds > 0 => Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        _ => default,
    }
}

fn threshold(value: Option<i64>, default: u32) -> u32 {
    match value {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        _ => default,
    }
}

fn check(
    eks_ci_id: &str,
    container: &Container,
    kind: Kind,
    probe: &LivenessOrReadinessProbe,
    ip: IpAddr,
    workdir: &Path,
) -> Check {
    let port = |port: i64| {
        u16::try_from(port)
            .ok()
            .filter(|port| *port > 0)
            .map(|port| SocketAddr::new(ip, port))
            .ok_or_else(|| format!("port {port} is not a port number (1-65535)"))
    };
    let action = if let Some(http) = &probe.http_get {
        let path = if http.path.is_empty() {
            "/".to_owned()
        } else if http.path.starts_with('/') {
            http.path.clone()
        } else {
            format!("/{}", http.path)
        };
        match port(http.port) {
            Err(message) => Action::Invalid(message),
            Ok(_) if http.scheme.eq_ignore_ascii_case("HTTPS") => {
                Action::Invalid("HTTPS: cloudsim's responders speak plain HTTP".to_owned())
            }
            Ok(_) if path.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                Action::Invalid(format!("the path {path:?} is not a request path"))
            }
            Ok(addr) => Action::HttpGet { addr, path },
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        match port(i64::try_from(tcp.port).unwrap_or(-1)) {
            Ok(addr) => Action::TcpSocket { addr },
            Err(message) => Action::Invalid(message),
        }
    } else if let Some(exec) = probe.exec.as_ref().filter(|exec| !exec.commands.is_empty()) {
        Action::Exec(ExecSpec {
            request: StreamRequest {
                command: exec.commands.clone(),
                stdout: true,
                stderr: true,
                ..StreamRequest::default()
            },
            env: container
                .environment_vars
                .iter()
                .map(|var| (var.name.clone(), var.value.clone()))
                .collect(),
            workdir: workdir.to_owned(),
        })
    } else {
        Action::Invalid("the probe has no httpGet, tcpSocket or exec action".to_owned())
    };
    let settings = &probe.probe;
    Check {
        eks_ci_id: eks_ci_id.to_owned(),
        container: container.name.clone(),
        kind,
        action,
        initial_delay: Duration::from_secs(
            settings
                .initial_delay_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        ),
        period: seconds(settings.period_seconds, DEFAULT_PERIOD),
        timeout: seconds(settings.timeout_seconds, DEFAULT_TIMEOUT),
        // A liveness probe's success threshold is 1, as the API server insists.
        success_threshold: match kind {
            Kind::Readiness => threshold(settings.success_threshold, 1),
            Kind::Liveness => 1,
        },
        failure_threshold: threshold(settings.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
    }
}

/// Consecutive outcomes of one probe in one run, against its thresholds.
#[derive(Debug, Clone, Copy)]
struct Tally {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
}

impl Tally {
    fn new(check: &Check) -> Self {
        Self {
            success_threshold: check.success_threshold,
            failure_threshold: check.failure_threshold,
            successes: 0,
            failures: 0,
        }
    }

    /// Counts an outcome; the result it settles, if it settles one: `Some(true)` after
    /// `success_threshold` successes in a row, `Some(false)` after `failure_threshold` failures in
    /// a row (and after every further one).
    fn record(&mut self, passed: bool) -> Option<bool> {
        if passed {
            (self.successes, self.failures) = (self.successes.saturating_add(1), 0);
            (self.successes >= self.success_threshold).then_some(true)
        } else {
            (self.successes, self.failures) = (0, self.failures.saturating_add(1));
            (self.failures >= self.failure_threshold).then_some(false)
        }
    }
}

/// Runs one probe for as long as the instance exists.
async fn watch(sim: Weak<Sim>, check: Check) {
    let (id, name) = (check.eks_ci_id.as_str(), check.container.as_str());
    let mut run: Option<Instant> = None;
    let mut tally = Tally::new(&check);
    loop {
        let (now, since) = {
            let Some(sim) = sim.upgrade() else { return };
            let now = sim.clock.now();
            match sim.running_since(id, name, now) {
                Ok(since) => (now, since),
                // The instance is gone.
                Err(_) => return,
            }
        };
        let Some(started) = since else {
            run = None;
            tokio::time::sleep(check.period.min(IDLE_POLL)).await;
            continue;
        };
        if run != Some(started) {
            run = Some(started);
            tally = Tally::new(&check);
        }
        let age = now.saturating_duration_since(started);
        if age < check.initial_delay {
            tokio::time::sleep((check.initial_delay - age).min(check.period)).await;
            continue;
        }
        let outcome = match tokio::time::timeout(check.timeout, attempt(&check.action)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {}s", check.timeout.as_secs())),
        };
        let settled = tally.record(outcome.is_ok());
        {
            let Some(sim) = sim.upgrade() else { return };
            match (check.kind, settled, outcome) {
                (Kind::Readiness, Some(true), _) => sim.set_ready(id, name, started, true),
                (Kind::Readiness, Some(false), Err(why)) => {
                    tracing::debug!(eks_ci_id = id, container = name, reason = %why, "readiness probe failed");
                    sim.set_ready(id, name, started, false);
                }
                (Kind::Liveness, Some(false), Err(why)) => {
                    tracing::debug!(eks_ci_id = id, container = name, reason = %why, "liveness probe failed; killing the container");
                    sim.kill_run(id, name, started, format!("Liveness probe failed: {why}"));
                    // The next run counts afresh (as it would anyway: a new run start).
                    tally = Tally::new(&check);
                }
                _ => {}
            }
        }
        tokio::time::sleep(check.period).await;
    }
}

/// One attempt: `Err` says why it failed, in the kubelet's words where it has them.
async fn attempt(action: &Action) -> Result<(), String> {
    match action {
        Action::HttpGet { addr, path } => http_get(*addr, path).await,
        Action::TcpSocket { addr } => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|err| format!("dial tcp {addr}: {err}")),
        Action::Exec(spec) => match streams::run_to_end(spec).await {
            (0, _) => Ok(()),
            (code, output) => {
                let output = String::from_utf8_lossy(&output);
                let output: String = output.trim().chars().take(OUTPUT_EXCERPT).collect();
                Err(format!(
                    "command {:?} exited with {code}: {output}",
                    spec.request.command.join(" ")
                ))
            }
        },
        Action::Invalid(why) => Err(why.clone()),
    }
}

/// A GET whose answer's status line decides: 2xx and 3xx succeed.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let url = format!("http://{addr}{path}");
    let failed = |err: std::io::Error| format!("Get \"{url}\": {err}");
    let mut stream = TcpStream::connect(addr).await.map_err(failed)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/cloudsim\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < STATUS_LINE_MAX {
        let read = stream.read(&mut chunk).await.map_err(failed)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("Get \"{url}\": not an HTTP answer"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_status_wins_over_the_port_status_and_200_restores() {
        let mut board = Board::default();
        assert_eq!(board.status("i", 80, "/healthz"), 200);
        board.set_status("i", 80, None, 503);
        board.set_status("i", 80, Some("/healthz".into()), 500);
        assert_eq!(board.status("i", 80, "/healthz"), 500);
        assert_eq!(board.status("i", 80, "/"), 503);
        assert_eq!(board.status("i", 81, "/"), 200);
        assert_eq!(board.status("j", 80, "/"), 200);
        board.set_status("i", 80, Some("/healthz".into()), 200);
        assert_eq!(board.status("i", 80, "/healthz"), 503);
        board.forget("i");
        assert_eq!(board.status("i", 80, "/"), 200);
    }

    #[test]
    fn thresholds_count_consecutive_outcomes_only() {
        let mut tally = Tally {
            success_threshold: 2,
            failure_threshold: 3,
            successes: 0,
            failures: 0,
        };
        assert_eq!(tally.record(true), None, "one success of two");
        assert_eq!(tally.record(true), Some(true));
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(true), None, "a success breaks the failures' run");
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), None);
        assert_eq!(tally.record(false), Some(false), "three failures in a row");
        assert_eq!(tally.record(false), Some(false));
        assert_eq!(tally.record(true), None);
        assert_eq!(tally.record(true), Some(true));
    }

    #[test]
    fn kubelet_defaults_apply_to_unset_or_invalid_settings() {
        let container = Container {
            name: "web".into(),
            ..Container::default()
        };
        let probe = LivenessOrReadinessProbe {
            probe: tke_tencent::model::Probe {
                period_seconds: Some(0),
                success_threshold: Some(5),
                failure_threshold: Some(-1),
                ..Default::default()
            },
            tcp_socket: Some(tke_tencent::model::TcpSocket { port: 70_000 }),
            ..Default::default()
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let liveness = check("i", &container, Kind::Liveness, &probe, ip, Path::new("/"));
        assert_eq!(
            (liveness.period, liveness.timeout, liveness.initial_delay),
            (DEFAULT_PERIOD, DEFAULT_TIMEOUT, Duration::ZERO)
        );
        assert_eq!((liveness.success_threshold, liveness.failure_threshold), (1, 3));
        assert!(matches!(&liveness.action, Action::Invalid(why) if why.contains("70000")));
        let readiness = check("i", &container, Kind::Readiness, &probe, ip, Path::new("/"));
        assert_eq!(readiness.success_threshold, 5);
        let empty = LivenessOrReadinessProbe::default();
        let none = check("i", &container, Kind::Readiness, &empty, ip, Path::new("/"));
        assert!(matches!(none.action, Action::Invalid(_)));
    }

    #[test]
    fn readiness_belongs_to_one_run() {
        let mut board = Board::default();
        let run = Instant::now();
        assert!(!board.ready("i", "web", Some(run)));
        board.set_ready("i", "web", run, true);
        assert!(board.ready("i", "web", Some(run)));
        assert!(!board.ready("i", "web", None));
        assert!(!board.ready("i", "web", Some(run + Duration::from_secs(1))));
    }
}
