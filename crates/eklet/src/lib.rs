//! `eklet`: the virtual node manager. One virtual node per cloud subnet, and the life of every
//! pod bound to one, run as a cloud sandbox through a [`provider::Provider`].
//!
//! [`run`] wires it: configuration → kube client and provider → metrics port → leader election
//! → (as leader) virtual nodes with their heartbeats, one pod controller per node, adoption of
//! existing sandboxes, the provider's pushed changes or else the batched status loop, the IDC
//! sources a provider keeps copies of ([`sources`]), and the orphan sweep. What the sandboxes
//! cost is metered by the registry into [`usage`] and exported with the other [`metrics`].

pub mod config;
pub mod context;
pub mod dns;
pub mod drain;
pub mod events;
pub mod kubelet;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod provider;
pub mod registry;
pub mod sandboxes;
pub mod sources;
pub mod usage;

/// Resource quantities, shared with the other components.
pub use tke_runtime::quantity;

use std::{collections::HashMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tke_leader as leader;
use tokio::sync::{mpsc, watch};

pub use config::Args;
use config::{ApiServerAddress, Config};
use provider::Provider;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Client(#[from] tke_runtime::process::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Provider(#[from] provider::selected::SetupError),
    #[error(transparent)]
    Metrics(#[from] tke_runtime::metrics::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error("lost leadership; exiting so that a standby takes over")]
    LeadershipLost,
    #[error("{0} stopped unexpectedly")]
    TaskEnded(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs eklet until SIGTERM/SIGINT (returns `Ok`) or a fatal error.
pub async fn run(args: Args) -> Result<()> {
    let mut config = Config::from_args(&args)?;
    let client_config = tke_runtime::process::client_config(args.kubeconfig.as_deref()).await?;
    let apiserver = match config.pod_used_apiserver.clone() {
        Some(address) => address,
        None => client_config
            .cluster_url
            .to_string()
            .parse::<ApiServerAddress>()?,
    };
    config.pod_used_apiserver = Some(apiserver.clone());
    let client = Client::try_from(client_config)?;

    let metrics = Arc::new(metrics::Metrics::new());
    let provider = metrics::Measured::new(
        provider::selected::SelectedProvider::from_args(&args).await?,
        metrics.clone(),
    );

    let kubelet_api = kubelet::Settings::from_args(&args, &config)?;
    let metrics_addr = SocketAddr::new(args.bind_address, args.metrics_port);
    let listener = tke_runtime::metrics::bind(metrics_addr).await?;
    let metrics_server = tokio::spawn(tke_runtime::metrics::serve(listener, {
        let metrics = metrics.clone();
        move || metrics.render()
    }));

    let identity = tke_runtime::process::identity("eklet");
    let config = Arc::new(config);
    let work = async {
        let mut leadership = if args.leader_elect {
            // One Lease per cluster id: `eklet-<cluster-id>` in eklet's namespace.
            let election = leader::Election {
                namespace: args.namespace.clone(),
                name: format!("eklet-{}", config.cluster_id),
                identity: identity.clone(),
                lease_seconds: args.leader_elect_lease_duration.as_secs().max(2),
            };
            let acquire = leader::acquire(client.clone(), &election);
            tokio::select! {
                acquired = acquire => Some(acquired?),
                () = tke_runtime::process::shutdown_signal() => return Ok(()),
            }
        } else {
            None
        };
        metrics.leader.set(1);
        let lost = async {
            match leadership.as_mut() {
                Some(leadership) => leadership.lost().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = lead(client.clone(), config.clone(), apiserver, provider, metrics.clone(), &identity, kubelet_api) => result,
            () = lost => Err(Error::LeadershipLost),
            () = tke_runtime::process::shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
        };
        metrics.leader.set(0);
        // Released explicitly, so that a standby takes over now rather than after the lease expires.
        if let Some(leadership) = leadership {
            leadership.release().await;
        }
        result
    };
    tokio::select! {
        result = work => result,
        served = metrics_server => match served {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(Error::TaskEnded("the metrics server")),
        },
    }
}

type Task = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// Everything the leader does; returns only on a fatal error.
async fn lead<P: Provider>(
    client: Client,
    config: Arc<Config>,
    apiserver: ApiServerAddress,
    provider: P,
    metrics: Arc<metrics::Metrics>,
    identity: &str,
    kubelet_api: kubelet::Settings,
) -> Result<()> {
    let events = events::Events::new(client.clone(), identity);
    let views = Arc::new(node::NodeViews::new(&config));
    for subnet in &config.subnets {
        node::register(&client, &config, provider.name(), subnet).await?;
    }

    let mut tasks: Vec<Task> = Vec::new();
    for subnet in config.subnets.clone() {
        let (client, config, name) = (client.clone(), config.clone(), provider.name());
        tasks.push(Box::pin(async move {
            node::heartbeat(client, config, name, subnet).await;
            "a node heartbeat"
        }));
    }

    // One pod controller per virtual node: a field selector names one node.
    let (gone_tx, gone_rx) = mpsc::unbounded_channel::<Pod>();
    let sweep_now = Arc::new(tokio::sync::Notify::new());
    let mut controllers = Vec::new();
    let mut stores = Vec::new();
    let mut triggers = HashMap::new();
    for node_name in views.names() {
        let pods: Api<Pod> = Api::all(client.clone());
        let selector = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let (wake_tx, wake_rx) = mpsc::unbounded_channel::<ObjectRef<Pod>>();
        let (uncordon_tx, uncordon_rx) = mpsc::unbounded_channel::<()>();
        let writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        // The controller reconciles what is in the cache; a pod deleted from the apiserver is
        // not, so its Delete event is handed to `pods::gone`, and a relist (which drops pods
        // deleted during a watch gap without an event) asks the sweep to look.
        let (gone, relisted) = (gone_tx.clone(), sweep_now.clone());
        let mut lists = 0u64;
        let stream = watcher(pods, selector)
            .default_backoff()
            // Nothing here reads field ownership; it was a third of a cached pod.
            .modify(|pod| kube::ResourceExt::managed_fields_mut(pod).clear())
            .reflect(writer)
            .inspect(move |event| match event {
                Ok(watcher::Event::Delete(pod)) => {
                    let _ = gone.send(pod.clone());
                }
                Ok(watcher::Event::InitDone) => {
                    lists += 1;
                    if lists > 1 {
                        relisted.notify_one();
                    }
                }
                _ => {}
            })
            .applied_objects();
        let controller = Controller::for_stream(stream, store.clone())
            .with_config(controller::Config::default().concurrency(config.pod_sync_workers))
            .reconcile_on(receiver_stream(wake_rx))
            .reconcile_all_on(receiver_stream(uncordon_rx));
        stores.push((node_name.clone(), store));
        triggers.insert(node_name.clone(), wake_tx);
        controllers.push(controller);
        let (client, views, events) = (client.clone(), views.clone(), events.clone());
        tasks.push(Box::pin(async move {
            node::watch(client, views, events, node_name, uncordon_tx).await;
            "a node watch"
        }));
    }

    // A provider that watches its cloud pushes changes from now on; the others are polled.
    let pushed_changes = provider.notifier();
    let (adopted, _) = watch::channel(false);
    let node_cpu_millis = quantity::millis(&config.resources.cpu).unwrap_or(u64::MAX);
    let node_memory_bytes = quantity::units(&config.resources.memory).unwrap_or(u64::MAX);
    let ctx = Arc::new(context::Context {
        client: client.clone(),
        provider,
        config: config.clone(),
        apiserver,
        nodes: views,
        registry: registry::Registry::metered(metrics.usage.clone()),
        events,
        metrics,
        stores,
        triggers,
        adopted,
        sweep_now,
        node_cpu_millis,
        node_memory_bytes,
        pushed: pushed_changes.is_some(),
    });

    if let Some(changes) = pushed_changes {
        let ctx = ctx.clone();
        tasks.push(Box::pin(async move {
            sandboxes::apply_pushed(ctx, changes).await;
            "the provider's change feed"
        }));
    }
    // The IDC objects the provider keeps copies of: watched here, once.
    if let Some(queued) = ctx.provider.followed_sources() {
        for kind in [provider::SourceKind::ConfigMap, provider::SourceKind::Secret] {
            let ctx = ctx.clone();
            tasks.push(Box::pin(async move {
                match kind {
                    provider::SourceKind::ConfigMap => {
                        sources::watch_versions::<ConfigMap, P>(ctx, kind).await
                    }
                    provider::SourceKind::Secret => sources::watch_versions::<Secret, P>(ctx, kind).await,
                }
                "an IDC source watch"
            }));
        }
        let ctx = ctx.clone();
        tasks.push(Box::pin(async move {
            sources::read_queued(ctx, queued).await;
            "the IDC source reader"
        }));
    }

    // Pods gone from the apiserver: their sandboxes are deleted at once, a few at a time, once
    // adoption has filled the registry.
    {
        let ctx = ctx.clone();
        tasks.push(Box::pin(async move {
            let _ = ctx.adopted.subscribe().wait_for(|done| *done).await;
            let workers = usize::from(ctx.config.pod_sync_workers);
            receiver_stream(gone_rx)
                .for_each_concurrent(workers, |pod| {
                    let ctx = ctx.clone();
                    async move { pods::gone(&pod, &ctx).await }
                })
                .await;
            "the deleted-pod handler"
        }));
    }

    // The node's InternalIP is the leader's address: only the leader serves the kubelet API.
    {
        let ctx = ctx.clone();
        tasks.push(Box::pin(async move {
            kubelet::serve(kubelet_api, ctx).await;
            "the kubelet API server"
        }));
    }

    for controller in controllers {
        let ctx = ctx.clone();
        tasks.push(Box::pin(async move {
            controller
                .run(pods::reconcile::<P>, pods::error_policy::<P>, ctx)
                .for_each(|outcome| async move {
                    if let Err(error) = outcome {
                        tracing::debug!(%error, "pod controller");
                    }
                })
                .await;
            "a pod controller"
        }));
    }

    // Adoption: after every pod cache synced, take over what the cloud already runs for this
    // cluster, then let reconciles proceed.
    let adoption = {
        let ctx = ctx.clone();
        async move {
            for (_, store) in &ctx.stores {
                let _ = store.wait_until_ready().await;
            }
            // Until the cloud has been listed, no pod may get a sandbox: keep trying.
            let mut delay = std::time::Duration::from_millis(500);
            let report = loop {
                match sandboxes::sweep(&ctx).await {
                    Ok(report) => break report,
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay, "adoption failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(30));
                    }
                }
            };
            tracing::info!(?report, "adoption done");
            ctx.adopted.send_replace(true);
        }
    };
    let run_tasks = futures::future::select_all(tasks);
    tokio::pin!(run_tasks);
    tokio::select! {
        () = adoption => {}
        (ended, _, _) = &mut run_tasks => return Err(Error::TaskEnded(ended)),
    }
    // Not spawned: when leadership ends, dropping this future stops everything.
    tokio::select! {
        (ended, _, _) = &mut run_tasks => Err(Error::TaskEnded(ended)),
        () = sandboxes::sync_statuses(ctx.clone()) => Err(Error::TaskEnded("the status loop")),
        () = sandboxes::sweep_periodically(ctx.clone()) => Err(Error::TaskEnded("the orphan sweep")),
    }
}

fn receiver_stream<T: Send + 'static>(
    receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
