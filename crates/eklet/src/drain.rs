//! `tke-resilience eklet-drain`: takes this eklet's virtual nodes out of the cluster without
//! leaving a cloud sandbox behind, for `helm uninstall` (the chart's pre-delete hook) or by hand.
//!
//! Order matters, and each step is what makes the next one safe: cordon (nothing new lands),
//! evict every pod through the Eviction API (PodDisruptionBudgets are honoured; eklet, still
//! running, deletes each sandbox and then the Pod), wait until no pod is bound, stop eklet when
//! its Deployment is named (a running eklet registers a deleted node again), and only then delete
//! the Nodes and their Leases. A node that still has pods is never deleted: PodGC would delete
//! those pods and orphan their sandboxes, which would keep billing. Last, the release's other
//! leader-elected Deployments named with `--stop-deployment` are stopped the same way: `helm
//! uninstall` deletes their Roles right after their Deployments, so a component still shutting
//! down then is refused the release of its leader Lease, which stays held until it expires. Each
//! leader Lease, once released, is deleted, so that none outlives the release.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::time::Instant;

use crate::config::Subnet;
use crate::node::LEASE_NAMESPACE;

/// How long a refused eviction (429: a disruption budget) waits before it is asked again.
const EVICTION_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("--eklet-deployment needs --cluster-id: eklet's leader Lease is eklet-<cluster-id>")]
    NoClusterId,
    #[error("kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "not drained after {timeout:?}; no virtual node was deleted. Pods left:\n{}",
        .left.join("\n")
    )]
    PodsLeft { timeout: Duration, left: Vec<String> },
    #[error(
        "eklet (Deployment {deployment}) still holds its leader Lease {lease} after {timeout:?}; \
         the virtual nodes are drained but not deleted (a running eklet would register them again)"
    )]
    EkletStillRunning {
        deployment: String,
        lease: String,
        timeout: Duration,
    },
    #[error(
        "Deployment {deployment} still holds its leader Lease {lease} after {timeout:?}; the virtual \
         nodes are deleted"
    )]
    StillRunning {
        deployment: String,
        lease: String,
        timeout: Duration,
    },
    #[error("--stop-deployment {0:?}: want DEPLOYMENT=LEASE")]
    StopDeployment(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Drains eklet's virtual nodes and deletes them: every pod bound to one is evicted like
/// `kubectl drain --force --ignore-daemonsets` (bare pods too, since their sandboxes would
/// otherwise be orphaned; virtual nodes never run DaemonSet pods), eklet removes each sandbox,
/// then the Node objects and their Leases go. Exits non-zero, deleting no Node, when pods are
/// still bound at --timeout.
#[derive(Debug, Clone, clap::Parser)]
pub struct Args {
    /// A subnet of eklet's, as SUBNET_ID=ZONE (the values eklet gets): its virtual node
    /// `eklet-<SUBNET_ID>` is drained and deleted. Repeatable, or comma-separated.
    #[arg(
        long = "subnet",
        value_name = "SUBNET_ID=ZONE",
        value_delimiter = ',',
        required = true
    )]
    pub subnets: Vec<String>,

    /// Give up after this long (e.g. 10m, 90s): the pods left are named with why (a disruption
    /// budget, still terminating), and no Node is deleted.
    #[arg(long, default_value = "10m", value_parser = tke_runtime::duration::flag)]
    pub timeout: Duration,

    /// eklet's Deployment in --namespace. Once the nodes are empty it is scaled to zero and its
    /// leader Lease awaited free before the Nodes are deleted: a running eklet registers a deleted
    /// node again. Without it nothing stops eklet: for use when eklet is stopped already.
    #[arg(long, requires = "cluster_id")]
    pub eklet_deployment: Option<String>,

    /// eklet's --cluster-id, naming its leader Lease eklet-<cluster-id>.
    #[arg(long)]
    pub cluster_id: Option<String>,

    /// Another leader-elected Deployment in --namespace, as DEPLOYMENT=LEASE, stopped like eklet
    /// (scaled to zero, its Lease awaited free) once the nodes are deleted, while its Role still
    /// lets it hand the Lease back. Repeatable.
    #[arg(long = "stop-deployment", value_name = "DEPLOYMENT=LEASE")]
    pub stop_deployments: Vec<String>,

    /// Namespace of eklet's Deployment and leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,

    /// Kubeconfig file; otherwise $KUBECONFIG, ~/.kube/config or the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// What became of one virtual node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub node: String,
    /// Whether the Node existed at all.
    pub existed: bool,
}

/// Runs the drain; `Ok` once every virtual node is empty and deleted.
pub async fn run(args: Args) -> Result<Vec<Drained>> {
    let nodes = node_names(&args.subnets)?;
    let others = args
        .stop_deployments
        .iter()
        .map(|text| match text.split_once('=') {
            Some((name, lease)) if !name.is_empty() && !lease.is_empty() => Ok(LeaderDeployment {
                namespace: args.namespace.clone(),
                name: name.to_owned(),
                lease: lease.to_owned(),
            }),
            _ => Err(Error::StopDeployment(text.clone())),
        })
        .collect::<Result<Vec<_>>>()?;
    let stop = match (&args.eklet_deployment, &args.cluster_id) {
        (Some(deployment), Some(cluster_id)) => Some(LeaderDeployment {
            namespace: args.namespace.clone(),
            name: deployment.clone(),
            lease: format!("eklet-{cluster_id}"),
        }),
        (Some(_), None) => return Err(Error::NoClusterId),
        (None, _) => None,
    };
    let client = client(args.kubeconfig.as_ref()).await?;
    let deadline = Instant::now() + args.timeout;

    let mut present = Vec::new();
    let mut result = Vec::new();
    for node in &nodes {
        let existed = cordon(&client, node).await?;
        if existed {
            present.push(node.clone());
        } else {
            tracing::info!(%node, "no such virtual node; nothing to drain");
            println!("{node}: not registered, nothing to drain");
        }
        result.push(Drained {
            node: node.clone(),
            existed,
        });
    }
    evict_until_empty(&client, &present, deadline, args.timeout).await?;
    if let Some(eklet) = &stop {
        eklet
            .stop(&client, deadline)
            .await
            .map_err(|still| still.into_error(true, args.timeout))?;
    } else if !present.is_empty() {
        tracing::warn!("no --eklet-deployment: a still running eklet registers its nodes again");
    }
    for node in &present {
        delete_node(&client, node).await?;
    }
    for other in &others {
        other
            .stop(&client, deadline)
            .await
            .map_err(|still| still.into_error(false, args.timeout))?;
    }
    Ok(result)
}

/// The virtual node names of `--subnet` values, validated as eklet validates them.
pub fn node_names(subnets: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for text in subnets {
        let subnet: Subnet = text.parse()?;
        let name = tke_policy::virtual_node::node_name(&subnet.id);
        if names.contains(&name) {
            return Err(crate::config::Error::DuplicateSubnet(subnet.id).into());
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err(crate::config::Error::NoSubnets.into());
    }
    Ok(names)
}

/// The client eklet builds (`--kubeconfig`, else the usual inference: in-cluster in a pod),
/// without kube's own retries.
async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client> {
    let config = tke_runtime::process::client_config(kubeconfig.map(PathBuf::as_path))
        .await
        .map_err(|e| Error::KubeConfig(e.to_string()))?;
    let mut config = config;
    // kube retries a 429 by itself, with a backoff growing to minutes: a refused eviction must
    // come back here, to be reported and asked again on this module's schedule.
    config.default_retry = false;
    Client::try_from(config).map_err(kube("building the client"))
}

/// Marks the node unschedulable; `false` when there is no such Node.
async fn cordon(client: &Client, node: &str) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": true } });
    match nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(%node, "cordoned");
            println!("{node}: cordoned");
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(kube(format!("cordoning node {node}"))(source)),
    }
}

/// Why a pod is still bound, for progress and the timeout error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holdup {
    /// Not asked yet, or asked again after a transient error.
    NotEvicted,
    /// The eviction was refused: a disruption budget (the apiserver's message names it).
    Refused(String),
    /// Evicted: eklet deletes the sandbox, then the Pod.
    Terminating,
}

struct Attempt {
    next: Instant,
    holdup: Holdup,
}

/// Evicts every pod on `nodes` and waits, on a watch of each node's pods, until none is left.
async fn evict_until_empty(
    client: &Client,
    nodes: &[String],
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for node in nodes {
        let (store, writer) = reflector::store::<Pod>();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher(Api::<Pod>::all(client.clone()), config)
            .default_backoff()
            .reflect(writer)
            .map(|event| event.map(|e| matches!(e, watcher::Event::InitDone)))
            .boxed();
        stores.push((node.clone(), store));
        streams.push(stream);
    }
    let mut events = futures::stream::select_all(streams);
    let mut synced = 0;
    let mut attempts: HashMap<(String, String), Attempt> = HashMap::new();
    let mut reported: BTreeMap<String, usize> = BTreeMap::new();
    // The next retry of a refused eviction; until one is refused, only the watch wakes us.
    let mut wake = deadline;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(true)) => synced += 1,
                Some(Ok(false)) => {}
                Some(Err(error)) => tracing::warn!(%error, "watching the virtual nodes' pods"),
                None => return Err(Error::KubeConfig("the pod watch ended".into())),
            },
            () = tokio::time::sleep_until(wake) => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(Error::PodsLeft { timeout, left: left_over(&stores, &attempts) });
            }
        }
        if synced < stores.len() {
            continue;
        }
        let mut total = 0;
        for (node, store) in &stores {
            let pods = store.state();
            total += pods.len();
            if reported.get(node) != Some(&pods.len()) {
                reported.insert(node.clone(), pods.len());
                tracing::info!(%node, pods = pods.len(), "pods left on the virtual node");
                println!("{} pods left on {node}", pods.len());
            }
        }
        if total == 0 {
            return Ok(());
        }
        let now = Instant::now();
        wake = deadline;
        for (_, store) in &stores {
            for pod in store.state() {
                let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                let attempt = attempts.entry(key.clone()).or_insert(Attempt {
                    next: now,
                    holdup: Holdup::NotEvicted,
                });
                if pod.metadata.deletion_timestamp.is_some() {
                    attempt.holdup = Holdup::Terminating;
                    continue;
                }
                if attempt.next > now {
                    wake = wake.min(attempt.next);
                    continue;
                }
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30);
                attempt.holdup =
                    match tokio::time::timeout_at(deadline, evict(client, &key.0, &key.1, grace)).await {
                        Ok(holdup) => holdup?,
                        Err(_) => {
                            return Err(Error::PodsLeft {
                                timeout,
                                left: left_over(&stores, &attempts),
                            });
                        }
                    };
                if attempt.holdup == Holdup::Terminating {
                    // Evicted: never again, even while the watch has not shown the deletion yet.
                    attempt.next = deadline;
                } else {
                    attempt.next = now + EVICTION_RETRY;
                    wake = wake.min(attempt.next);
                }
            }
        }
        let bound: std::collections::HashSet<(String, String)> = stores
            .iter()
            .flat_map(|(_, store)| store.state())
            .map(|pod| (pod.namespace().unwrap_or_default(), pod.name_any()))
            .collect();
        attempts.retain(|key, _| bound.contains(key));
    }
}

/// One eviction; a refusal or a transient failure is a [`Holdup`], a permission error is fatal.
async fn evict(client: &Client, namespace: &str, name: &str, grace_seconds: i64) -> Result<Holdup> {
    // At least a second of grace: a pod deleted at once (terminationGracePeriodSeconds: 0) would
    // be gone before eklet removed its sandbox, leaving it to the orphan sweep, which may not run
    // before the drain stops eklet. With grace the Pod stays Terminating until eklet is done.
    // The Eviction is posted by hand: kube's `Api::evict` sends its delete options as
    // `delete_options`, which the apiserver ignores (the field is `deleteOptions`).
    let eviction = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": {"gracePeriodSeconds": grace_seconds.max(1)},
    });
    let request = http::Request::post(format!("/api/v1/namespaces/{namespace}/pods/{name}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&eviction).unwrap_or_default())
        .map_err(|e| Error::KubeConfig(format!("building the eviction of {namespace}/{name}: {e}")))?;
    match client.request::<serde_json::Value>(request).await {
        Ok(_) => {
            tracing::info!(pod = %format!("{namespace}/{name}"), "evicted");
            Ok(Holdup::Terminating)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Holdup::Terminating),
        Err(kube::Error::Api(status)) if status.code == 429 => {
            let causes: Vec<String> = status
                .details
                .iter()
                .flat_map(|d| d.causes.iter().map(|c| c.message.clone()))
                .filter(|m| !m.is_empty())
                .collect();
            let reason = if causes.is_empty() {
                status.message.clone()
            } else {
                format!("{} {}", status.message, causes.join("; "))
            };
            tracing::info!(pod = %format!("{namespace}/{name}"), %reason, "eviction refused; retrying");
            Ok(Holdup::Refused(reason))
        }
        Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
            Err(kube(format!("evicting pod {namespace}/{name}"))(
                kube::Error::Api(status),
            ))
        }
        Err(error) => {
            tracing::warn!(pod = %format!("{namespace}/{name}"), %error, "eviction failed; retrying");
            Ok(Holdup::NotEvicted)
        }
    }
}

fn left_over(
    stores: &[(String, reflector::Store<Pod>)],
    attempts: &HashMap<(String, String), Attempt>,
) -> Vec<String> {
    let mut left = Vec::new();
    for (node, store) in stores {
        for pod in store.state() {
            let key = (pod.namespace().unwrap_or_default(), pod.name_any());
            let why = match attempts.get(&key).map(|a| &a.holdup) {
                _ if pod.metadata.deletion_timestamp.is_some() => {
                    "still terminating (eklet deletes its sandbox, then the pod)".to_owned()
                }
                Some(Holdup::Refused(reason)) => format!("eviction refused: {reason}"),
                Some(Holdup::Terminating) => "evicted, still terminating".to_owned(),
                Some(Holdup::NotEvicted) | None => "not evicted yet".to_owned(),
            };
            left.push(format!("  {}/{} on {node}: {why}", key.0, key.1));
        }
    }
    left.sort();
    left
}

/// A Deployment whose pods elect a leader: eklet's, stopped before its nodes are deleted, or
/// another of the release's (`--stop-deployment`).
struct LeaderDeployment {
    namespace: String,
    name: String,
    lease: String,
}

/// A [`LeaderDeployment`] that did not stop: an error, or still holding its Lease at the deadline.
enum NotStopped {
    Error(Error),
    StillHeld { deployment: String, lease: String },
}

impl From<Error> for NotStopped {
    fn from(error: Error) -> Self {
        NotStopped::Error(error)
    }
}

impl NotStopped {
    fn into_error(self, eklet: bool, timeout: Duration) -> Error {
        match self {
            NotStopped::Error(error) => error,
            NotStopped::StillHeld { deployment, lease } if eklet => Error::EkletStillRunning {
                deployment,
                lease,
                timeout,
            },
            NotStopped::StillHeld { deployment, lease } => Error::StillRunning {
                deployment,
                lease,
                timeout,
            },
        }
    }
}

impl LeaderDeployment {
    /// Scales the Deployment to zero, waits until no replica holds the leader Lease (released on
    /// SIGTERM, or expired) and deletes it: for eklet, from then on nothing renews or registers the
    /// virtual nodes.
    async fn stop(&self, client: &Client, deadline: Instant) -> std::result::Result<(), NotStopped> {
        let deployment = format!("{}/{}", self.namespace, self.name);
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), &self.namespace);
        let scale = serde_json::json!({ "spec": { "replicas": 0 } });
        match deployments
            .patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(&scale))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(%deployment, "no Deployment to stop");
            }
            Err(source) => return Err(kube(format!("scaling Deployment {deployment} to 0"))(source).into()),
        }
        tracing::info!(%deployment, lease = %self.lease, "scaled to 0; waiting for its leader Lease to be free");
        println!("{deployment} scaled to 0; waiting for it to stop");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.lease));
        let (store, writer) = reflector::store::<Lease>();
        let mut stream = watcher(leases, config).default_backoff().reflect(writer).boxed();
        let mut synced = false;
        // An unreleased Lease (a killed eklet) frees itself at its expiry: look again then.
        let mut recheck = Instant::now();
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::InitDone)) => synced = true,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => tracing::warn!(%error, lease = %self.lease, "watching a leader Lease"),
                    None => return Err(Error::KubeConfig("the lease watch ended".into()).into()),
                },
                () = tokio::time::sleep_until(recheck) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(NotStopped::StillHeld { deployment, lease: self.lease.clone() });
                }
            }
            if !synced {
                continue;
            }
            match store.state().first().map(|l| lease_free_in(l)) {
                None | Some(None) => {
                    println!("{deployment} stopped");
                    break;
                }
                Some(Some(wait)) => recheck = Instant::now() + wait,
            }
        }
        // Free, and nothing left to take it: the Lease goes too, so that no object outlives the
        // release (a new replica would create it again).
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        match leases.delete(&self.lease, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => {
                Err(kube(format!("deleting lease {}/{}", self.namespace, self.lease))(source).into())
            }
        }
    }
}

/// `None` when nobody holds the Lease (released or expired), else how long until it expires.
fn lease_free_in(lease: &Lease) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity.as_ref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let expiry = renewed
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()?;
    let left = jiff::Timestamp::now().duration_until(expiry);
    if left.is_negative() || left.is_zero() {
        return None;
    }
    Some(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(100))
}

/// Deletes the Node and its Lease; either already gone is fine.
async fn delete_node(client: &Client, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => return Err(kube(format!("deleting node {node}"))(source)),
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    match leases.delete(node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => return Err(kube(format!("deleting lease {LEASE_NAMESPACE}/{node}"))(source)),
    }
    tracing::info!(%node, "virtual node and its lease deleted");
    println!("{node}: deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_nodes_are_named_as_eklet_names_them() {
        let names =
            node_names(&["subnet-a=ap-guangzhou-3".into(), "subnet-b=ap-guangzhou-4".into()]).unwrap();
        assert_eq!(names, ["eklet-subnet-a", "eklet-subnet-b"]);
        assert!(node_names(&["subnet-a=z".into(), "subnet-a=y".into()]).is_err());
        assert!(node_names(&["subnet-a".into()]).is_err());
    }

    #[tokio::test]
    async fn a_stop_deployment_without_its_lease_is_refused_before_the_cluster_is_touched() {
        for bad in ["eks-admission-x", "eks-admission-x=", "=eks-admission"] {
            let args = Args::try_parse_from([
                "eklet-drain",
                "--subnet=subnet-a=ap-guangzhou-3",
                "--kubeconfig=/nonexistent",
                &format!("--stop-deployment={bad}"),
            ])
            .unwrap();
            assert!(
                matches!(run(args).await, Err(Error::StopDeployment(ref v)) if v == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_timeout_is_a_go_duration_defaulting_to_ten_minutes() {
        let args = Args::try_parse_from(["eklet-drain", "--subnet=subnet-a=z"]).unwrap();
        assert_eq!(args.timeout, Duration::from_secs(600));
        let args = Args::try_parse_from(["eklet-drain", "--subnet=subnet-a=z", "--timeout=1m30s"]).unwrap();
        assert_eq!(args.timeout, Duration::from_secs(90));
        assert!(Args::try_parse_from(["eklet-drain", "--subnet=a=z", "--eklet-deployment=eklet"]).is_err());
    }

    #[test]
    fn a_released_or_expired_lease_is_free() {
        use k8s_openapi::{api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime};
        let lease = |holder: Option<&str>, renewed: jiff::Timestamp| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        let now = jiff::Timestamp::now();
        assert_eq!(lease_free_in(&lease(None, now)), None);
        assert_eq!(lease_free_in(&lease(Some(""), now)), None);
        let long_ago = now - jiff::SignedDuration::from_secs(60);
        assert_eq!(lease_free_in(&lease(Some("eklet-0"), long_ago)), None);
        let held = lease_free_in(&lease(Some("eklet-0"), now)).unwrap();
        assert!(
            held > Duration::from_secs(10) && held <= Duration::from_secs(16),
            "{held:?}"
        );
    }
}
