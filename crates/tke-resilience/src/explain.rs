//! `tke-resilience explain pod NAME`: fetch what the policy looks at for one pod from a live
//! cluster, and print the policy's own report (`tke_policy::explain`) as text or JSON.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client, api::ListParams};
use tke_policy::{
    ClaimStatus, ExplainInput, PolicyArgs, SwitchSetting, controlling_owner, count_local, is_virtual_node,
    switch::EKS_CONFIG_NAME,
    workload::{bound_node, is_finished},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Why a pod may or may not burst to the cloud, rule by rule, and where it would go.
    Pod(PodArgs),
}

#[derive(Debug, clap::Args)]
struct PodArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    /// The same policy flags the components take, so explain answers as they do.
    #[command(flatten)]
    policy: PolicyArgs,
    /// For a pod on a virtual node: the rebalancer's flags, so explain says whether
    /// `tke-resilience rebalance` would bring it home now.
    #[command(flatten)]
    rebalance: tke_rebalance::PlanArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Errors a user can act on, each printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod {0}/{1} not found")]
    PodNotFound(String, String),
    #[error("not allowed to {verb} {what}: {message}")]
    Forbidden {
        verb: &'static str,
        what: String,
        message: String,
    },
    #[error("cannot {verb} {what}: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("no usable kubeconfig: {0}")]
    Config(String),
}

pub async fn run(args: Args) -> Result<(), Error> {
    let What::Pod(args) = args.what;
    let client = client(args.kubeconfig.as_deref()).await?;
    let explanation = explain_pod(&client, &args.namespace, &args.name, &args.policy).await?;
    let settings = args
        .rebalance
        .settings()
        .map_err(|e| Error::Config(e.to_string()))?;
    let rebalance = explain_rebalance(&client, &args.namespace, &args.name, &settings).await?;
    match args.output {
        Output::Text => {
            print!("{explanation}");
            if let Some(rebalance) = &rebalance {
                println!("\nBring home (tke-resilience rebalance): {}", rebalance.message);
            }
        }
        Output::Json => {
            #[derive(serde::Serialize)]
            struct Report<'a> {
                #[serde(flatten)]
                explanation: &'a tke_policy::Explanation,
                #[serde(skip_serializing_if = "Option::is_none")]
                rebalance: Option<&'a Rebalance>,
            }
            let report = Report {
                explanation: &explanation,
                rebalance: rebalance.as_ref(),
            };
            // Serializing our own report cannot fail; a failure would be a bug worth a clear line.
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| Error::Config(format!("encoding the report: {e}")))?;
            println!("{json}");
        }
    }
    Ok(())
}

/// For a pod on a virtual node, what the rebalancer would do with it now.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rebalance {
    /// Whether it would be evicted to come home in the next round.
    pub moves_now: bool,
    /// The local node that fits it, when it moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The first reason it stays (a stable code), when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
}

/// Judges the pod's workload as `tke-resilience rebalance` would now; `None` for a pod that is not
/// on a virtual node. Reads every node and pod (the rooms of the local nodes, the IDC's pressure)
/// and the workload's past moves.
pub async fn explain_rebalance(
    client: &Client,
    namespace: &str,
    name: &str,
    settings: &tke_rebalance::plan::Settings,
) -> Result<Option<Rebalance>, Error> {
    use tke_rebalance::{
        fit::NodeRoom,
        plan::{self, History, Verdict, Workload},
    };
    let (nodes, virtual_nodes) = nodes(client).await?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("list", "pods in all namespaces".into(), e))?;
    let Some(pod) = pods.items.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(namespace) && p.metadata.name.as_deref() == Some(name)
    }) else {
        return Err(Error::PodNotFound(namespace.into(), name.into()));
    };
    let on_virtual = bound_node(pod).is_some_and(|n| virtual_nodes.contains(n));
    if !on_virtual {
        return Ok(None);
    }
    let Some(owner) = controlling_owner(pod) else {
        return Ok(Some(Rebalance {
            moves_now: false,
            node: None,
            reason: Some("NotMovable".into()),
            message: "stays: a pod of no controller is never moved".into(),
        }));
    };
    let is_virtual = |node: &str| virtual_nodes.contains(node);
    let mut rooms: HashMap<String, NodeRoom> = nodes
        .iter()
        .filter(|n| !is_virtual_node(n))
        .filter_map(NodeRoom::of)
        .map(|room| (room.name.clone(), room))
        .collect();
    for other in &pods.items {
        if let Some(room) = bound_node(other).and_then(|n| rooms.get_mut(n))
            && !is_finished(other)
        {
            room.bind(other);
        }
    }
    let rooms: Vec<NodeRoom> = rooms.into_values().collect();
    let workload = Workload {
        owner: owner.clone(),
        pods: pods
            .items
            .iter()
            .filter(|p| controlling_owner(p).is_some_and(|o| o.uid == owner.uid))
            .collect(),
    };
    let now = jiff::Timestamp::now();
    let moves = tke_rebalance::controller::past_moves(
        client,
        Some(namespace),
        now - settings.cool_down,
        settings.hold_down,
    )
    .await
    .map_err(|e| api_error("list", format!("events in namespace {namespace}"), e))?;
    let history = History {
        last_move: moves.get(&owner.uid).copied(),
    };
    let pressure = plan::pressure(pods.items.iter(), is_virtual, now);
    let verdict = plan::judge(&workload, &history, pressure, &rooms, is_virtual, now, settings);
    Ok(Some(match verdict {
        Verdict::Move { pod: chosen, node } if chosen.metadata.uid == pod.metadata.uid => Rebalance {
            moves_now: true,
            message: format!("would move now: local node {node} fits it"),
            node: Some(node),
            reason: None,
        },
        Verdict::Move { pod: chosen, node } => Rebalance {
            moves_now: false,
            message: format!(
                "stays this round: {owner} moves {} first (local node {node} fits it); one pod per workload at a time",
                chosen.metadata.name.as_deref().unwrap_or_default()
            ),
            node: None,
            reason: Some("AnotherPodFirst".into()),
        },
        Verdict::Skip(skip) => Rebalance {
            moves_now: false,
            node: None,
            reason: Some(skip.reason().into()),
            message: format!("stays: {}: {skip}", skip.reason()),
        },
        Verdict::NoCloudPods => Rebalance {
            moves_now: false,
            node: None,
            reason: Some("NotRunning".into()),
            message: "stays: it is not Running and Ready on the virtual node".into(),
        },
    }))
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    tke_runtime::process::client(kubeconfig)
        .await
        .map_err(|e| Error::Config(e.to_string()))
}

/// Reads the pod, the global switch, the nodes, the owner's pods and the pod's claims, and asks
/// the policy. The scheduler alone knows whether a local node fits, so that stays unknown.
pub async fn explain_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    policy: &PolicyArgs,
) -> Result<tke_policy::Explanation, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get(name).await {
        Ok(pod) => pod,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(Error::PodNotFound(namespace.into(), name.into()));
        }
        Err(e) => return Err(api_error("get", format!("pod {namespace}/{name}"), e)),
    };

    let mut warnings = Vec::new();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &policy.eks_config_namespace);
    let config_map = match config_maps.get_opt(EKS_CONFIG_NAME).await {
        Ok(config_map) => config_map,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            warnings.push(format!(
                "not allowed to read ConfigMap {}/{EKS_CONFIG_NAME}; the global switch is shown as undefined",
                policy.eks_config_namespace
            ));
            None
        }
        Err(e) => {
            return Err(api_error(
                "get",
                format!("ConfigMap {}/{EKS_CONFIG_NAME}", policy.eks_config_namespace),
                e,
            ));
        }
    };
    let global = SwitchSetting::global(&policy.eks_config_namespace, config_map.as_ref());

    let local_count = match controlling_owner(&pod) {
        None => 0,
        Some(owner) => {
            let (_, virtual_nodes) = nodes(client).await?;
            let siblings = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error("list", format!("pods in namespace {namespace}"), e))?;
            count_local(&siblings.items, &owner, |node| virtual_nodes.contains(node))
        }
    };

    let claims = claims_of(client, namespace, &pod).await?;
    let lookup = |_: &str, claim: &str| claims.get(claim).cloned().unwrap_or(ClaimStatus::NotFound);
    let eligibility = tke_policy::check(&pod, &lookup, &policy.eligibility());
    let mut explanation = tke_policy::explain(&ExplainInput {
        pod: &pod,
        global: &global,
        mode: policy.switch_mode(),
        eligibility: &eligibility,
        local_count,
        local_node_fits: None,
    });
    explanation.warnings.extend(warnings);
    Ok(explanation)
}

/// Every node, and the names of the virtual ones.
async fn nodes(client: &Client) -> Result<(Vec<Node>, std::collections::HashSet<String>), Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("list", "nodes".into(), e))?
        .items;
    let virtual_nodes = nodes
        .iter()
        .filter(|node| is_virtual_node(node))
        .filter_map(|node| node.metadata.name.clone())
        .collect();
    Ok((nodes, virtual_nodes))
}

/// The status of every claim the pod uses, explicit or generic ephemeral (`<pod>-<volume>`).
async fn claims_of(
    client: &Client,
    namespace: &str,
    pod: &Pod,
) -> Result<HashMap<String, ClaimStatus>, Error> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(
            |volume| match (&volume.persistent_volume_claim, &volume.ephemeral) {
                (Some(claim), _) => Some(claim.claim_name.clone()),
                (None, Some(_)) => Some(format!("{pod_name}-{}", volume.name)),
                (None, None) => None,
            },
        )
        .collect();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut statuses = HashMap::new();
    for name in names {
        let claim = pvcs
            .get_opt(&name)
            .await
            .map_err(|e| api_error("get", format!("PersistentVolumeClaim {namespace}/{name}"), e))?;
        let volume_name = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.clone());
        let volume = match volume_name.filter(|n| !n.is_empty()) {
            Some(volume_name) => pvs
                .get_opt(&volume_name)
                .await
                .map_err(|e| api_error("get", format!("PersistentVolume {volume_name}"), e))?
                .map(Arc::new),
            None => None,
        };
        statuses.insert(name, ClaimStatus::of(claim.as_ref(), |_| volume));
    }
    Ok(statuses)
}

fn api_error(verb: &'static str, what: String, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            verb,
            what,
            message: status.message,
        },
        source => Error::Api { verb, what, source },
    }
}
