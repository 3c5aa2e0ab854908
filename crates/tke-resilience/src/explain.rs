//! `tke-resilience explain pod NAME`: fetch what the policy looks at for one pod from a live
//! cluster, and print the policy's own report (`tke_policy::explain`) as text or JSON.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client, api::ListParams};
use tke_policy::{
    ClaimStatus, ExplainInput, PolicyArgs, SwitchSetting, controlling_owner, count_local, is_virtual_node,
    switch::EKS_CONFIG_NAME,
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
    match args.output {
        Output::Text => print!("{explanation}"),
        Output::Json => {
            // Serializing our own report cannot fail; a failure would be a bug worth a clear line.
            let json = serde_json::to_string_pretty(&explanation)
                .map_err(|e| Error::Config(format!("encoding the report: {e}")))?;
            println!("{json}");
        }
    }
    Ok(())
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
            let nodes = Api::<Node>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error("list", "nodes".into(), e))?;
            let virtual_nodes: std::collections::HashSet<String> = nodes
                .items
                .iter()
                .filter(|node| is_virtual_node(node))
                .filter_map(|node| node.metadata.name.clone())
                .collect();
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
