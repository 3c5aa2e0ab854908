//! The `tke-scheduler` extender: the local-or-cloud filter that kube-scheduler calls over HTTP.
//!
//! `tke-scheduler` is the upstream kube-scheduler run with a single profile named
//! `tke-scheduler` and this extender (`deploy/tke-scheduler.yaml`). kube-scheduler's own filters
//! run first; the extender then gets the pod and the names of the nodes that passed
//! (`nodeCacheCapable: true`) and keeps either only the local nodes or only the virtual nodes, as
//! [`tke_policy::decide`] says, counting each workload's local pods from its own caches plus a
//! ledger of local decisions whose binding it has not seen yet ([`view`]).
//!
//! A pod that must go to the cloud but lacks the virtual node's toleration is refused everywhere
//! in that attempt (the taint already removed the virtual node); the toleration controller
//! (`tke-resilience admission`) then adds the toleration to the Unschedulable pod, and
//! kube-scheduler retries it on that update (kube-scheduler ≥ 1.29 requeues pods rejected by an
//! extender on any cluster event, kubernetes#122022).

pub mod filter;
pub mod server;
pub mod view;
pub mod watch;
pub mod wire;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tke_policy::PolicyArgs;
use tke_runtime::events::{Recorder, Reporter};
use tracing::info;

pub use filter::PolicyConfig;
pub use server::{Extender, FILTER_VERB, URL_PATH_PREFIX, router};
pub use view::ClusterView;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] tke_runtime::process::Error),
    #[error("loading the TLS certificate {cert} and key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `tke-resilience scheduler-extender`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to serve on. The extender has no authentication of its own, so by default it
    /// listens on loopback only, next to the kube-scheduler that calls it.
    #[arg(long, default_value = "127.0.0.1:10263")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (PEM); needs --tls-private-key-file, and
    /// `enableHTTPS: true` in the scheduler's extender configuration.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Kubeconfig to use; without it, the in-cluster service account or $KUBECONFIG.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The scheduler (profile) name whose pods are counted; it must match the profile in the
    /// scheduler configuration.
    #[arg(long, default_value = "tke-scheduler")]
    pub scheduler_name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// How long a pod decided local counts towards LOCAL_REPLICAS while its binding is not seen
    /// (a binding that fails after the filter, in Reserve, Permit or PreBind). Longer risks
    /// sending pods to the cloud that could have been local; shorter risks exceeding
    /// LOCAL_REPLICAS when binding is slow (volume provisioning in PreBind).
    #[arg(long, default_value = "60s", value_parser = tke_runtime::duration::flag)]
    pub pending_decision_ttl: Duration,
}

impl Args {
    /// The policy settings these flags describe.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            mode: self.policy.switch_mode(),
            eligibility: self.policy.eligibility(),
        }
    }
}

/// Runs the extender until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = tke_runtime::process::client(args.kubeconfig.as_deref()).await?;
    let reporter = Reporter {
        controller: "tke-scheduler-extender".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let view = ClusterView::new(&args.policy.eks_config_namespace, args.pending_decision_ttl);
    let extender = Extender::new(
        view,
        args.policy_config(),
        Some(Recorder::new(client.clone(), reporter)),
    );
    watch::spawn_all(
        &client,
        &extender,
        &args.scheduler_name,
        &args.policy.eks_config_namespace,
    );
    let listener = bind(args.listen)?;
    let tls = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => Some(Tls {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        tke_runtime::process::shutdown_signal().await;
        info!("shutting down");
        shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    serve(router(extender), listener, tls, handle).await
}

/// The certificate and key files to serve HTTPS with.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `handle` shuts it down.
pub async fn serve(
    app: axum::Router,
    listener: std::net::TcpListener,
    tls: Option<Tls>,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<()> {
    let service = app.into_make_service();
    let addr = listener.local_addr().map_err(Error::Serve)?;
    match tls {
        Some(Tls { cert, key }) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|source| Error::Tls { cert, key, source })?;
            info!(%addr, "serving the extender over HTTPS");
            axum_server::from_tcp_rustls(listener, config)
                .map_err(Error::Serve)?
                .handle(handle)
                .serve(service)
                .await
                .map_err(Error::Serve)
        }
        None => {
            info!(%addr, "serving the extender over HTTP");
            axum_server::from_tcp(listener)
                .map_err(Error::Serve)?
                .handle(handle)
                .serve(service)
                .await
                .map_err(Error::Serve)
        }
    }
}

/// Binds before serving so that a taken port is reported as such, at start-up.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Listen { addr, source })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use tke_policy::{AnnotationMatch, EligibilityConfig, SwitchMode};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("scheduler-extender").chain(flags.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn defaults_listen_on_loopback_and_keep_the_policy_defaults() {
        let args = parse(&[]).expect("no flags parse");
        assert!(args.listen.ip().is_loopback());
        assert_eq!(args.pending_decision_ttl, Duration::from_secs(60));
        let policy = args.policy_config();
        assert_eq!(policy.mode, SwitchMode::Seed);
        assert_eq!(policy.eligibility, EligibilityConfig::default());
    }

    #[test]
    fn policy_flags_reach_the_policy() {
        let args = parse(&[
            "--local-switch-overrides",
            "--forbidden-namespaces=kube-system,infra",
            "--fixed-ip-annotation=example.com/ip=fixed",
            "--pending-decision-ttl=2m",
        ])
        .expect("flags parse");
        let policy = args.policy_config();
        assert_eq!(policy.mode, SwitchMode::LocalOverrides);
        assert_eq!(policy.eligibility.forbidden_namespaces, ["kube-system", "infra"]);
        assert_eq!(
            policy.eligibility.fixed_ip_annotations,
            [AnnotationMatch::with_value("example.com/ip", "fixed")]
        );
        assert_eq!(args.pending_decision_ttl, Duration::from_secs(120));
    }

    /// The scheduler configuration and this server agree on paths, names and placeholders.
    #[test]
    fn the_scheduler_configuration_calls_this_extender_for_the_tke_scheduler_profile_only() {
        let text = include_str!("../../../deploy/tke-scheduler.yaml");
        let filled = text
            .replace("${KUBECONFIG}", "/k")
            .replace("${EXTENDER_URL}", "http://127.0.0.1:1");
        assert!(
            !filled.contains("${"),
            "only ${{KUBECONFIG}} and ${{EXTENDER_URL}} are placeholders"
        );
        let config: serde_json::Value = serde_saphyr::from_str(&filled).expect("the configuration is YAML");
        assert_eq!(config["apiVersion"], "kubescheduler.config.k8s.io/v1");
        assert_eq!(config["kind"], "KubeSchedulerConfiguration");
        assert_eq!(config["clientConnection"]["kubeconfig"], "/k");
        let default_name = parse(&[]).expect("no flags parse").scheduler_name;
        assert_eq!(
            config["profiles"],
            serde_json::json!([{"schedulerName": default_name}])
        );
        assert_ne!(
            config["leaderElection"]["resourceName"], "kube-scheduler",
            "the default scheduler's lease must not be shared"
        );
        let extenders = config["extenders"].as_array().expect("extenders");
        assert_eq!(extenders.len(), 1);
        let extender = &extenders[0];
        assert_eq!(
            extender["urlPrefix"],
            format!("http://127.0.0.1:1{URL_PATH_PREFIX}")
        );
        assert_eq!(extender["filterVerb"], FILTER_VERB);
        assert_eq!(extender["nodeCacheCapable"], true);
        assert_eq!(extender["ignorable"], false);
        for verb in ["prioritizeVerb", "bindVerb", "preemptVerb"] {
            assert!(extender.get(verb).is_none(), "{verb} is not served");
        }
        assert!(
            config["podInitialBackoffSeconds"]
                .as_u64()
                .is_some_and(|s| s <= 1)
        );
        assert!(config["podMaxBackoffSeconds"].as_u64().is_some_and(|s| s <= 5));
    }

    #[test]
    fn bad_flag_values_are_refused_with_the_value() {
        let error = parse(&["--pending-decision-ttl=soon"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("\"soon\" is not a duration"), "{error}");
        let error = parse(&["--tls-cert-file=/tmp/c.pem"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("--tls-private-key-file"), "{error}");
    }
}
