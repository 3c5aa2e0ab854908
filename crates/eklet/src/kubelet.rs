//! eklet's side of the kubelet API (port 10241): the [`tke_kubelet_api::Backend`] over the
//! leader's pod caches, its sandbox registry and its provider, and the TLS server started with
//! the pod controllers (the node's InternalIP is the leader's address, so only the leader serves).
//! Each virtual node has an endpoint of its own, as each kubelet does: the first subnet's node on
//! `--kubelet-port`, the next on the port after it, and so on, published in each node's
//! daemonEndpoints. So `/stats/summary` and `/metrics/resource` of a node (what metrics-server
//! and `kubectl top node` read) hold that node's pods only, and a pod's log is found only through
//! its own node.
//!
//! Logs: providers return a log as text whose lines start with the RFC 3339 time they were
//! written (the EKSCI log action, like `docker logs -t`); the time is split off so that
//! `timestamps=true` shows it in the kubelet's form and `timestamps=false` does not show it.
//! Providers cannot stream, so `follow` polls the provider every [`FOLLOW_POLL`] for lines since
//! the last one seen, until the container stops, the pod goes away or the client hangs up. A log
//! whose lines carry no time cannot be followed that way; it ends after what was written.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tke_kubelet_api::{
    Backend, ContainerUsage, CpuUsage, KubeReviews, KubeletApi, LogLine, LogOptions, LogStream, PodUsage,
    RunningContainer, RunningPod, ServingCertificate,
    backend::{self, ErrorKind},
    backend::{ExitStatus, PortStream, StreamIo},
};
use tke_policy::virtual_node;

use crate::{
    config::{self, Args, Config},
    context::Context,
    provider::{self, ContainerState, ContainerStats, DESCRIBE_BATCH, Provider, StatsTarget},
};

/// How often a followed log asks the provider for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// The kubelet ports as configured: where they listen and their TLS.
pub struct Settings {
    bind: IpAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: tke_kubelet_api::streaming::Limits,
}

impl Settings {
    /// Reads `--tls-cert-file`/`--tls-private-key-file` (or makes a self-signed certificate for
    /// the node IP and node names) and `--client-ca-file`, so a bad file stops eklet at start.
    pub fn from_args(args: &Args, config: &Config) -> config::Result<Settings> {
        let nodes = node_names(config);
        let mut names = vec![config.node_ip.to_string()];
        names.extend(nodes.iter().cloned());
        let common_name = format!(
            "system:node:{}",
            nodes.first().map(String::as_str).unwrap_or("eklet")
        );
        let invalid = |flag: &'static str, value: Option<&PathBuf>, error: tke_kubelet_api::tls::Error| {
            config::Error::Invalid {
                flag,
                value: value.map(|p| p.display().to_string()).unwrap_or_default(),
                reason: error.to_string(),
            }
        };
        let serving = ServingCertificate::from_flags(
            args.tls_cert_file.clone(),
            args.tls_private_key_file.clone(),
            &common_name,
            names,
        )
        .map_err(|e| invalid("--tls-cert-file", args.tls_cert_file.as_ref(), e))?;
        let tls = tke_kubelet_api::server_config(&serving, args.client_ca_file.as_deref());
        let tls = tls.map_err(|e| {
            let (flag, value) = match e {
                tke_kubelet_api::tls::Error::ClientCa { .. } => ("--client-ca-file", &args.client_ca_file),
                _ => ("--tls-cert-file", &args.tls_cert_file),
            };
            invalid(flag, value.as_ref(), e)
        })?;
        if args.max_streaming_sessions == 0 {
            return Err(config::Error::Invalid {
                flag: "--max-streaming-sessions",
                value: "0".into(),
                reason: "at least one session is needed for exec, attach and port-forward".into(),
            });
        }
        Ok(Settings {
            bind: args.bind_address,
            tls,
            limits: tke_kubelet_api::streaming::Limits {
                max_sessions: args.max_streaming_sessions,
                idle_timeout: args.streaming_connection_idle_timeout,
                ..tke_kubelet_api::streaming::Limits::default()
            },
        })
    }
}

fn node_names(config: &Config) -> Vec<String> {
    config
        .subnets
        .iter()
        .map(|subnet| virtual_node::node_name(&subnet.id))
        .collect()
}

/// Serves the kubelet API of every virtual node of this eklet, each on its own port, until
/// dropped; returns only if a port cannot be used or a server fails.
pub async fn serve<P: Provider>(settings: Settings, ctx: Arc<Context<P>>) {
    let reviews = KubeReviews::new(ctx.client.clone());
    let servers = ctx.config.kubelet_endpoints().into_iter().map(|(node, port)| {
        let listen = SocketAddr::new(settings.bind, port);
        let api = KubeletApi::with_limits(
            vec![node.clone()],
            VirtualNodes::for_node(ctx.clone(), &node),
            reviews.clone(),
            settings.limits,
        );
        let tls = settings.tls.clone();
        async move {
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(addr = %listen, %node, %error, "cannot listen on the kubelet port");
                    return;
                }
            };
            tracing::info!(addr = %listen, %node, "kubelet API listening");
            if let Err(error) = tke_kubelet_api::serve(listener, tls, api).await {
                tracing::error!(%node, %error, "kubelet API server failed");
            }
        }
    });
    // One failing server stops them all, so the leader's caller sees the API as down.
    futures::future::select_all(servers.map(Box::pin)).await;
}

/// The pods of one virtual node, as its kubelet API sees them.
pub struct VirtualNodes<P> {
    ctx: Arc<Context<P>>,
    node: String,
}

impl<P: Provider> VirtualNodes<P> {
    /// The pods of `node`.
    pub fn for_node(ctx: Arc<Context<P>>, node: &str) -> VirtualNodes<P> {
        VirtualNodes {
            ctx,
            node: node.to_owned(),
        }
    }

    fn stores(&self) -> impl Iterator<Item = &Store<Pod>> {
        self.ctx
            .stores
            .iter()
            .filter(|(node, _)| *node == self.node)
            .map(|(_, store)| store)
    }
}

fn from_provider(error: provider::Error) -> backend::Error {
    let kind = match error.kind {
        provider::ErrorKind::NotFound => ErrorKind::NotFound,
        provider::ErrorKind::Transient | provider::ErrorKind::SoldOut => ErrorKind::Unavailable,
        provider::ErrorKind::Unsupported => ErrorKind::Unsupported,
        // The cloud's refusals (no previous run, not started yet, bad tail) are about the request.
        provider::ErrorKind::Permanent => ErrorKind::BadRequest,
    };
    backend::Error::new(kind, error.to_string())
}

/// Splits a leading RFC 3339 time off a provider's log line.
fn parse_line(line: &str) -> LogLine {
    if let Some((first, rest)) = line.split_once(' ')
        && let Ok(time) = first.parse::<Timestamp>()
    {
        return LogLine {
            time: Some(time),
            text: rest.to_owned(),
        };
    }
    LogLine {
        time: None,
        text: line.to_owned(),
    }
}

fn parse_log(content: &str) -> Vec<LogLine> {
    content.lines().map(parse_line).collect()
}

/// Where a followed log stands: the newest time seen and the lines seen at exactly that time (a
/// poll "since" that time returns them again).
#[derive(Debug, Clone, Default, PartialEq)]
struct Cursor {
    since: Option<Timestamp>,
    seen_at_since: Vec<String>,
}

impl Cursor {
    /// The lines of a poll that are new, advancing the cursor past them.
    fn advance(&mut self, lines: Vec<LogLine>) -> Vec<LogLine> {
        let mut fresh = Vec::new();
        // Each poll repeats every line at `since`; match them once per poll.
        let mut repeated = self.seen_at_since.clone();
        for line in lines {
            let Some(time) = line.time else {
                // Without a time a line cannot be placed; it was shown by the first fetch.
                continue;
            };
            match self.since {
                Some(since) if time < since => continue,
                Some(since) if time == since => {
                    if let Some(i) = repeated.iter().position(|t| *t == line.text) {
                        repeated.swap_remove(i);
                        continue;
                    }
                }
                _ => {}
            }
            fresh.push(line);
        }
        if let Some(newest) = fresh.iter().filter_map(|l| l.time).max() {
            if self.since != Some(newest) {
                self.seen_at_since.clear();
            }
            self.since = Some(newest);
        }
        let since = self.since;
        self.seen_at_since
            .extend(fresh.iter().filter(|l| l.time == since).map(|l| l.text.clone()));
        fresh
    }
}

struct Follow<P> {
    ctx: Arc<Context<P>>,
    uid: String,
    container: String,
    cursor: Cursor,
    finished: bool,
}

impl<P: Provider> Follow<P> {
    /// Whether the followed container can still write: its pod has a sandbox and the container
    /// has not terminated.
    fn still_running(&self) -> bool {
        let Some(record) = self.ctx.registry.get(&self.uid) else {
            return false;
        };
        if record.gone || record.observed.phase.is_terminal() {
            return false;
        }
        !record
            .observed
            .containers
            .iter()
            .chain(&record.observed.init_containers)
            .any(|c| c.name == self.container && matches!(c.state, ContainerState::Terminated { .. }))
    }

    async fn poll(&mut self) -> backend::Result<Vec<LogLine>> {
        let Some(record) = self.ctx.registry.get(&self.uid) else {
            return Ok(Vec::new());
        };
        let options = provider::LogOptions {
            since_time: self.cursor.since,
            timestamps: true,
            ..provider::LogOptions::default()
        };
        let content = self
            .ctx
            .provider
            .logs(&record.sandbox_id, &self.container, &options)
            .await
            .map_err(from_provider)?;
        Ok(self.cursor.advance(parse_log(&content)))
    }

    /// The next batch of new lines, or `None` when the log has ended. Transient cloud errors
    /// are retried at the next poll; others end the stream.
    async fn next(mut self) -> Option<(Vec<backend::Result<LogLine>>, Self)> {
        loop {
            if self.finished {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            // Read the state before the lines: a container that stopped after this check still
            // gets its last lines read by this poll or the next one.
            let running = self.still_running();
            if !running {
                self.finished = true;
            }
            match self.poll().await {
                Ok(lines) if lines.is_empty() => continue,
                Ok(lines) => return Some((lines.into_iter().map(Ok).collect(), self)),
                Err(error) if error.kind == ErrorKind::Unavailable && running => {
                    tracing::debug!(%error, "following a log; trying again");
                }
                Err(error) => {
                    self.finished = true;
                    return Some((vec![Err(error)], self));
                }
            }
        }
    }
}

impl<P: Provider> VirtualNodes<P> {
    /// The sandbox of `pod` if `container` runs in it now: what exec, attach and port-forward
    /// need. Refusals as the kubelet gives them: no such sandbox 404, not running 400.
    fn running_sandbox(&self, pod: &Pod, container: Option<&str>) -> backend::Result<String> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let record = pod
            .metadata
            .uid
            .as_deref()
            .and_then(|uid| self.ctx.registry.get(uid))
            .filter(|record| !record.gone)
            .ok_or_else(|| backend::Error::not_found(format!("pod {name:?} has no sandbox on this node")))?;
        let running = match container {
            Some(container) => record
                .observed
                .containers
                .iter()
                .chain(&record.observed.init_containers)
                .any(|c| c.name == container && matches!(c.state, ContainerState::Running { .. })),
            None => record.observed.phase == provider::SandboxPhase::Running,
        };
        if !running {
            let what = container.map_or_else(
                || format!("pod {name:?}"),
                |c| format!("container {c:?} of pod {name:?}"),
            );
            return Err(backend::Error::new(
                ErrorKind::BadRequest,
                format!("{what} is not running"),
            ));
        }
        Ok(record.sandbox_id)
    }

    fn lacks(&self, what: &str) -> backend::Error {
        backend::Error::new(
            ErrorKind::Unsupported,
            format!(
                "the {} provider has no {what} for cloud pods",
                self.ctx.provider.name()
            ),
        )
    }
}

impl<P: Provider> Backend for VirtualNodes<P> {
    fn pods(&self) -> Vec<Arc<Pod>> {
        self.stores().flat_map(|store| store.state()).collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let key = ObjectRef::<Pod>::new(name).within(namespace);
        self.stores().find_map(|store| store.get(&key))
    }

    async fn exec(
        &self,
        pod: Arc<Pod>,
        container: &str,
        command: Vec<String>,
        io: StreamIo,
    ) -> backend::Result<ExitStatus> {
        if !self.ctx.provider.capabilities().exec {
            return Err(self.lacks("exec"));
        }
        let id = self.running_sandbox(&pod, Some(container))?;
        self.ctx
            .provider
            .exec(&id, container, command, io)
            .await
            .map_err(from_provider)
    }

    async fn attach(&self, pod: Arc<Pod>, container: &str, io: StreamIo) -> backend::Result<()> {
        if !self.ctx.provider.capabilities().attach {
            return Err(self.lacks("attach"));
        }
        let id = self.running_sandbox(&pod, Some(container))?;
        self.ctx
            .provider
            .attach(&id, container, io)
            .await
            .map_err(from_provider)
    }

    async fn port_forward(&self, pod: Arc<Pod>, port: u16) -> backend::Result<PortStream> {
        if !self.ctx.provider.capabilities().port_forward {
            return Err(self.lacks("port-forward"));
        }
        let id = self.running_sandbox(&pod, None)?;
        self.ctx
            .provider
            .port_forward(&id, port)
            .await
            .map_err(from_provider)
    }

    fn running_pods(&self) -> Vec<RunningPod> {
        let mut running: Vec<RunningPod> = self
            .ctx
            .registry
            .snapshot()
            .into_iter()
            .filter(|(_, record)| record.node == self.node && !record.gone)
            .filter_map(|(uid, record)| {
                let containers: Vec<RunningContainer> = record
                    .observed
                    .containers
                    .iter()
                    .chain(&record.observed.init_containers)
                    .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                    .map(|c| RunningContainer {
                        name: c.name.clone(),
                        image: c.image.clone(),
                    })
                    .collect();
                (!containers.is_empty()).then(|| RunningPod {
                    namespace: record.pod.namespace.clone().unwrap_or_default(),
                    name: record.pod.name.clone(),
                    uid,
                    containers,
                })
            })
            .collect();
        running.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        running
    }

    async fn logs(&self, pod: Arc<Pod>, container: &str, options: LogOptions) -> backend::Result<LogStream> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if !self.ctx.provider.capabilities().logs {
            return Err(backend::Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} provider cannot read container logs",
                    self.ctx.provider.name()
                ),
            ));
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(record) = self.ctx.registry.get(&uid) else {
            return Err(backend::Error::new(
                ErrorKind::BadRequest,
                format!(
                    "container {container:?} in pod {name:?} is waiting to start: its cloud sandbox does not exist yet"
                ),
            ));
        };
        // The limit is the server's: the provider would count the time prefixes it strips.
        let fetch = provider::LogOptions {
            tail_lines: options.tail_lines,
            since_seconds: options.since_seconds,
            since_time: options.since_time,
            limit_bytes: None,
            previous: options.previous,
            timestamps: true,
        };
        // Taken before the fetch: when nothing has been written yet, following starts here.
        let asked_at = Timestamp::now();
        let content = self
            .ctx
            .provider
            .logs(&record.sandbox_id, container, &fetch)
            .await
            .map_err(from_provider)?;
        let lines = parse_log(&content);
        let written = stream::iter(lines.clone().into_iter().map(Ok));
        let untimed = !lines.is_empty() && lines.iter().all(|l| l.time.is_none());
        if !options.follow || options.previous || untimed {
            return Ok(written.boxed());
        }
        let mut cursor = Cursor {
            since: Some(asked_at),
            seen_at_since: Vec::new(),
        };
        if lines.iter().any(|l| l.time.is_some()) {
            cursor = Cursor::default();
            cursor.advance(lines);
        }
        let follow = Follow {
            ctx: self.ctx.clone(),
            uid,
            container: container.to_owned(),
            cursor,
            finished: false,
        };
        let later = stream::unfold(follow, Follow::next).flat_map(stream::iter);
        Ok(written.chain(later).boxed())
    }

    async fn usage(&self, pods: &[Arc<Pod>]) -> backend::Result<Vec<PodUsage>> {
        if !self.ctx.provider.capabilities().stats {
            return Err(backend::Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} provider reports no resource usage",
                    self.ctx.provider.name()
                ),
            ));
        }
        let mut by_sandbox = std::collections::HashMap::new();
        let mut targets = Vec::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            let Some(record) = self.ctx.registry.get(uid) else {
                continue;
            };
            by_sandbox.insert(record.sandbox_id.clone(), uid.to_owned());
            targets.push(StatsTarget {
                ip: record
                    .observed
                    .ip
                    .clone()
                    .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone())),
                id: record.sandbox_id,
                annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            });
        }
        let mut usage = Vec::new();
        for batch in targets.chunks(DESCRIBE_BATCH) {
            let measured = self.ctx.provider.stats(batch).await.map_err(from_provider)?;
            for stats in measured {
                let Some(uid) = by_sandbox.get(&stats.id) else {
                    continue;
                };
                let cpu = |c: &ContainerStats| CpuUsage {
                    nano_cores: c.cpu_nano_cores,
                    core_nano_seconds: c.cpu_core_nano_seconds,
                };
                // The pod's counter is the containers' sum only when every container counts.
                let counted: Option<u64> = stats
                    .containers
                    .iter()
                    .map(|c| c.cpu_core_nano_seconds)
                    .try_fold(0u64, |sum, c| Some(sum.saturating_add(c?)));
                usage.push(PodUsage {
                    uid: uid.clone(),
                    time: stats.time,
                    cpu: CpuUsage {
                        nano_cores: stats.containers.iter().map(|c| c.cpu_nano_cores).sum(),
                        core_nano_seconds: counted,
                    },
                    memory_working_set_bytes: stats
                        .containers
                        .iter()
                        .map(|c| c.memory_working_set_bytes)
                        .sum(),
                    containers: stats
                        .containers
                        .iter()
                        .map(|c| ContainerUsage {
                            name: c.name.clone(),
                            cpu: cpu(c),
                            memory_working_set_bytes: c.memory_working_set_bytes,
                        })
                        .collect(),
                });
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, text: &str) -> LogLine {
        LogLine {
            time: Some(time.parse().unwrap_or_else(|e| panic!("{e}"))),
            text: text.into(),
        }
    }

    #[test]
    fn a_leading_rfc3339_time_is_split_off_and_other_lines_are_kept_whole() {
        assert_eq!(
            parse_log("2026-03-01T10:00:00.5Z web log line 0\nno time here\n\n"),
            vec![
                line("2026-03-01T10:00:00.5Z", "web log line 0"),
                LogLine {
                    time: None,
                    text: "no time here".into()
                },
                LogLine {
                    time: None,
                    text: String::new()
                },
            ]
        );
    }

    #[test]
    fn a_poll_since_the_last_time_yields_only_lines_not_seen_yet() {
        let mut cursor = Cursor::default();
        let first = cursor.advance(vec![
            line("2026-03-01T10:00:00Z", "a"),
            line("2026-03-01T10:00:01Z", "b"),
            line("2026-03-01T10:00:01Z", "c"),
        ]);
        assert_eq!(first.len(), 3);
        // The provider answers "since 10:00:01" with b and c again, then what is new.
        let second = cursor.advance(vec![
            line("2026-03-01T10:00:01Z", "b"),
            line("2026-03-01T10:00:01Z", "c"),
            line("2026-03-01T10:00:01Z", "d"),
            line("2026-03-01T10:00:02Z", "e"),
        ]);
        assert_eq!(
            second,
            vec![
                line("2026-03-01T10:00:01Z", "d"),
                line("2026-03-01T10:00:02Z", "e")
            ]
        );
        for _ in 0..3 {
            let again = cursor.advance(vec![line("2026-03-01T10:00:02Z", "e")]);
            assert!(again.is_empty(), "{again:?}");
        }
        assert_eq!(cursor.since, "2026-03-01T10:00:02Z".parse().ok());
    }

    #[test]
    fn lines_older_than_the_cursor_are_never_shown_again() {
        let mut cursor = Cursor::default();
        cursor.advance(vec![line("2026-03-01T10:00:05Z", "x")]);
        assert!(
            cursor
                .advance(vec![line("2026-03-01T10:00:04Z", "old")])
                .is_empty()
        );
    }

    fn settings(extra: &[&str]) -> config::Result<Settings> {
        use clap::Parser;
        let mut argv = vec![
            "eklet",
            "--subnet=subnet-a=ap-guangzhou-3",
            "--cluster-id=cls-1",
            "--region=ap-guangzhou",
            "--vpc-id=vpc-1",
        ];
        argv.extend(extra);
        let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        Settings::from_args(&args, &Config::from_args(&args)?)
    }

    #[test]
    fn without_certificate_flags_the_kubelet_port_gets_a_self_signed_certificate() {
        let settings = settings(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            settings.tls.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn streaming_limits_come_from_the_flags_and_zero_sessions_is_refused() {
        let limited = settings(&[
            "--max-streaming-sessions=3",
            "--streaming-connection-idle-timeout=90s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(limited.limits.max_sessions, 3);
        assert_eq!(limited.limits.idle_timeout, Duration::from_secs(90));
        let error = settings(&["--max-streaming-sessions=0"])
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("--max-streaming-sessions")),
            "{error:?}"
        );
    }

    #[test]
    fn bad_certificate_flags_stop_eklet_at_start_naming_the_flag() {
        let error = settings(&["--client-ca-file=/nonexistent/ca.crt"])
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("--client-ca-file") && e.contains("/nonexistent/ca.crt")),
            "{error:?}"
        );
        let error = settings(&["--tls-cert-file=/nonexistent/tls.crt"])
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("--tls-private-key-file")),
            "{error:?}"
        );
    }

    #[test]
    fn cloud_errors_reach_the_client_with_a_fitting_status_and_the_clouds_message() {
        let error = |kind| provider::Error {
            action: "DescribeEksContainerInstanceLog",
            kind,
            code: "InvalidParameterValue".into(),
            message: "Container web of instance eksci-1 has no previous run.".into(),
            maybe_executed: false,
        };
        let mapped = from_provider(error(provider::ErrorKind::Permanent));
        assert_eq!(mapped.kind, ErrorKind::BadRequest);
        assert!(
            mapped.message.contains("has no previous run"),
            "{}",
            mapped.message
        );
        assert_eq!(
            from_provider(error(provider::ErrorKind::Transient)).kind,
            ErrorKind::Unavailable
        );
        assert_eq!(
            from_provider(error(provider::ErrorKind::NotFound)).kind,
            ErrorKind::NotFound
        );
    }
}
