//! The `kubernetes` provider end to end: the real `tke-resilience eklet` binary on an "IDC" control
//! plane bursting into a second, "cloud" control plane whose kwok nodes run the target pods
//! (Pending → Running with an IP from 10.244.0.0/16). Each test has its own cluster id, so its
//! own target namespaces.
//!
//! The test bed cannot stop and restart a control plane, so an unreachable target is a TCP proxy
//! in front of the cloud apiserver that the test cuts (dropping every connection and refusing
//! new ones) and heals.
//!
//! `P1` (pods per second to Running, this provider next to the tencent provider on cloudsim) is an
//! ignored test:
//!
//! ```text
//! TKE_TESTBED_BIN=... cargo test -p tke-resilience --test kubernetes_provider -- --ignored --nocapture
//! ```

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{
    admission::{Admission, scale},
    eklet::*,
    extender::{self, Extender},
};
use tke_eklet::provider::{
    Provider, SandboxName,
    kubernetes::{
        KubernetesProvider,
        translate::{Namespaces, Settings},
    },
};
use tke_testbed::{ControlPlane, NodeSpec, Options, random_suffix, wait};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OnceCell, watch},
    time::Instant,
};

const CLUSTER_LABEL: &str = "eklet.tke-resilience.io/cluster-id";
const POD_UID_LABEL: &str = "eklet.tke-resilience.io/pod-uid";
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

static CLOUD: OnceCell<ControlPlane> = OnceCell::const_new();

/// The target cluster every test bursts into, with room for a few hundred pods.
async fn cloud() -> anyhow::Result<&'static ControlPlane> {
    Ok(CLOUD
        .get_or_try_init(|| {
            ControlPlane::start(Options {
                nodes: (1..=4)
                    .map(|i| {
                        NodeSpec::new(format!("cloud-{i}"))
                            .cpu("64")
                            .memory("256Gi")
                            .pods(250)
                    })
                    .collect(),
                ..Options::default()
            })
        })
        .await?)
}

/// eklet with the kubernetes provider on `idc`, bursting through `target_kubeconfig`.
async fn start_eklet(
    idc: &ControlPlane,
    target_kubeconfig: &std::path::Path,
    id: &Identity,
    extra: &[&str],
) -> anyhow::Result<Eklet> {
    let provider = [
        "--provider=kubernetes".to_owned(),
        format!("--target-kubeconfig={}", target_kubeconfig.display()),
    ];
    Eklet::start_with_provider(idc, &provider, id, extra).await
}

/// The target namespace of IDC namespace `ns` for this eklet.
fn target_namespace(id: &Identity, ns: &str) -> String {
    format!("{}-{ns}", id.cluster_id)
}

fn target_name(id: &Identity, pod: &Pod) -> String {
    format!("eklet-{}-{}", id.cluster_id, pod.uid().unwrap_or_default())
}

async fn deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(())
}

fn nginx() -> serde_json::Value {
    json!([{"name": "app", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}])
}

/// Watches the IDC pods of `app` until `done` holds.
async fn idc_pods(
    client: &Client,
    ns: &str,
    app: &str,
    what: &str,
    done: impl FnMut(&[Arc<Pod>]) -> bool,
) -> anyhow::Result<Vec<Arc<Pod>>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("app={app}"));
    Ok(wait::for_objects(api, config, PATIENCE, what, done).await?)
}

/// Watches this cluster's pods in the target until `done` holds.
async fn target_pods(
    target: &Client,
    id: &Identity,
    what: &str,
    done: impl FnMut(&[Arc<Pod>]) -> bool,
) -> anyhow::Result<Vec<Arc<Pod>>> {
    let api: Api<Pod> = Api::all(target.clone());
    let config = watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={}", id.cluster_id));
    Ok(wait::for_objects(api, config, PATIENCE, what, done).await?)
}

fn source_uid(pod: &Pod) -> String {
    pod.labels().get(POD_UID_LABEL).cloned().unwrap_or_default()
}

/// A TCP proxy in front of the cloud apiserver that a test can cut and heal.
struct Partition {
    url: String,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Partition> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let (up, state) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    continue;
                }
                let mut down = state.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Partition { url, up, task })
    }

    /// Every connection is dropped and new ones are refused.
    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn heal(&self) {
        self.up.send_replace(true);
    }

    /// A copy of `kubeconfig` that reaches the apiserver `server` through this proxy.
    fn kubeconfig(
        &self,
        kubeconfig: &std::path::Path,
        server: &str,
        dir: &std::path::Path,
    ) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(kubeconfig)?;
        if !text.contains(server) {
            bail!("{} does not name {server}", kubeconfig.display());
        }
        let path = dir.join(format!("target-via-proxy-{}.kubeconfig", random_suffix()));
        std::fs::write(&path, text.replace(server, &self.url))?;
        Ok(path)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_a_configmap_and_a_secret_bursts_with_its_config_and_follows_configmap_edits()
-> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-config").await?;
    let id = Identity::unique();
    let _eklet = start_eklet(
        &idc,
        cloud.kubeconfig(),
        &id,
        &["--pod-used-apiserver=https://idc-apiserver.example:6443"],
    )
    .await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}),
            )?,
        )
        .await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}),
            )?,
        )
        .await?;
    let mut spec = cloud_pod_spec(
        &id,
        json!([{
            "name": "app", "image": "nginx:1.27",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ],
            "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}, {"name": "creds", "mountPath": "/etc/creds"}]
        }]),
    );
    spec["volumes"] = json!([
        {"name": "conf", "configMap": {"name": "settings"}},
        {"name": "creds", "secret": {"secretName": "db"}}
    ]);
    deployment(&client, &ns, "web", 2, spec).await?;

    let pods = idc_pods(&client, &ns, "web", "2 Running pods with IPs", |pods| {
        pods.iter().filter(|p| is_running_with_ip(p)).count() == 2
    })
    .await?;
    let target_ns = target_namespace(&id, &ns);
    let in_target: Api<Pod> = Api::namespaced(target.clone(), &target_ns);
    let idc_ca = idc.pki().ca.cert_pem.trim().to_owned();
    for pod in &pods {
        let name = target_name(&id, pod);
        let twin = in_target
            .get(&name)
            .await
            .with_context(|| format!("target pod {target_ns}/{name}"))?;
        assert_eq!(
            pod_ip(pod),
            pod_ip(&twin),
            "the IDC pod shows its target pod's IP"
        );
        assert_eq!(twin.labels().get(POD_UID_LABEL), pod.uid().as_ref());
        let twin_spec = twin.spec.clone().unwrap_or_default();
        assert!(
            twin_spec
                .node_name
                .as_deref()
                .is_some_and(|n| n.starts_with("cloud-")),
            "placed by the target's scheduler on its own nodes: {:?}",
            twin_spec.node_name
        );
        assert_eq!(twin_spec.automount_service_account_token, Some(false));
        let shown = serde_json::to_string(&twin)?;
        assert!(
            !shown.contains("hunter2"),
            "a Secret value in the target pod spec"
        );

        let container = twin_spec.containers.first().context("a container")?;
        let env: HashMap<String, k8s_openapi::api::core::v1::EnvVar> = container
            .env
            .iter()
            .flatten()
            .map(|v| (v.name.clone(), v.clone()))
            .collect();
        let value = |name: &str| env.get(name).and_then(|v| v.value.clone());
        assert_eq!(
            value("KUBERNETES_SERVICE_HOST").as_deref(),
            Some("idc-apiserver.example")
        );
        assert_eq!(value("KUBERNETES_SERVICE_PORT").as_deref(), Some("6443"));
        assert_eq!(value("POD_NAME"), pod.metadata.name, "the IDC pod's own name");
        // status.podIP is left to the target kubelet, which knows the IP (VK#998).
        let pod_ip_field = env
            .get("POD_IP")
            .and_then(|v| v.value_from.as_ref())
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(pod_ip_field.as_deref(), Some("status.podIP"), "{env:?}");
        let settings_copy = env
            .get("GREETING")
            .and_then(|v| v.value_from.as_ref())
            .and_then(|f| f.config_map_key_ref.as_ref())
            .map(|r| r.name.clone())
            .context("GREETING from a ConfigMap")?;
        let db_copy = env
            .get("PASSWORD")
            .and_then(|v| v.value_from.as_ref())
            .and_then(|f| f.secret_key_ref.as_ref())
            .map(|r| r.name.clone())
            .context("PASSWORD from a Secret")?;

        let copied = Api::<ConfigMap>::namespaced(target.clone(), &target_ns)
            .get(&settings_copy)
            .await?;
        assert_eq!(
            copied
                .data
                .unwrap_or_default()
                .get("greeting")
                .map(String::as_str),
            Some("hello")
        );
        let secret = Api::<Secret>::namespaced(target.clone(), &target_ns)
            .get(&db_copy)
            .await?;
        assert_eq!(
            secret
                .data
                .unwrap_or_default()
                .get("password")
                .map(|b| b.0.clone()),
            Some(b"hunter2".to_vec())
        );

        // The IDC token, CA and namespace, where in-cluster clients look for them.
        let token_volume = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == TOKEN_PATH)
            .map(|m| m.name.clone())
            .context("the service-account mount")?;
        let token_secret = twin_spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == token_volume)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
            .context("the token volume is a Secret")?;
        let token = Api::<Secret>::namespaced(target.clone(), &target_ns)
            .get(&token_secret)
            .await?;
        let data = token.data.clone().unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(text("ca.crt"), idc_ca, "the IDC cluster's CA");
        assert_eq!(text("namespace"), ns);
        assert_eq!(
            text("token").split('.').count(),
            3,
            "a JWT from the IDC's TokenRequest API"
        );
        assert_eq!(
            token.owner_references().first().map(|o| o.uid.clone()),
            twin.uid(),
            "garbage-collected with its pod"
        );
    }

    config_maps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
        )
        .await?;
    let copies: Api<ConfigMap> = Api::namespaced(target.clone(), &target_ns);
    let config = watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={}", id.cluster_id));
    wait::for_objects(copies, config, PATIENCE, "both target copies edited", |copies| {
        copies
            .iter()
            .filter(|c| {
                c.data
                    .as_ref()
                    .and_then(|d| d.get("greeting"))
                    .map(String::as_str)
                    == Some("bonjour")
            })
            .count()
            == 2
    })
    .await?;

    Api::<Deployment>::namespaced(client.clone(), &ns)
        .delete("web", &DeleteParams::foreground())
        .await?;
    target_pods(
        &target,
        &id,
        "no target pods after the Deployment is gone",
        |pods| pods.is_empty(),
    )
    .await?;
    let copies: Api<ConfigMap> = Api::namespaced(target.clone(), &target_ns);
    let config = watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={}", id.cluster_id));
    wait::for_objects(copies, config, PATIENCE, "the copies garbage-collected", |c| {
        c.is_empty()
    })
    .await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_idc_pod_deletes_its_target_pod_and_a_target_pod_deleted_behind_eklets_back_fails_its_idc_pod()
-> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-delete").await?;
    let id = Identity::unique();
    // The provider pushes what its target watch sees; eklet never polls it, so with a status
    // loop that would first look in an hour, Running and the lost target pod arrive by push.
    let _eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &["--status-sync-interval=1h"]).await?;
    deployment(&client, &ns, "web", 2, cloud_pod_spec(&id, nginx())).await?;
    let pods = idc_pods(&client, &ns, "web", "2 Running pods", |pods| running(pods) == 2).await?;
    let (first, second) = match pods.as_slice() {
        [a, b] => (a.clone(), b.clone()),
        other => bail!("expected 2 pods, found {}", other.len()),
    };
    let (first_uid, second_uid) = (first.uid().unwrap_or_default(), second.uid().unwrap_or_default());

    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&first.name_any(), &DeleteParams::default())
        .await?;
    target_pods(&target, &id, "the deleted pod's target pod gone", |pods| {
        !pods.iter().any(|p| source_uid(p) == first_uid)
    })
    .await?;
    idc_pods(&client, &ns, "web", "the deleted IDC pod gone", |pods| {
        !pods.iter().any(|p| p.uid().as_deref() == Some(&first_uid))
    })
    .await?;

    let target_ns = target_namespace(&id, &ns);
    Api::<Pod>::namespaced(target.clone(), &target_ns)
        .delete(
            &target_name(&id, &second),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
    let after = idc_pods(
        &client,
        &ns,
        "web",
        "the pod whose target pod vanished Failed, and 2 others Running",
        |pods| {
            let lost = pods
                .iter()
                .any(|p| p.uid().as_deref() == Some(&second_uid) && phase(p) == "Failed");
            let others = pods
                .iter()
                .filter(|p| p.uid().as_deref() != Some(&second_uid) && is_running(p))
                .count();
            lost && others == 2
        },
    )
    .await?;
    let lost = after
        .iter()
        .find(|p| p.uid().as_deref() == Some(&second_uid))
        .context("the lost pod")?;
    assert_eq!(
        lost.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("SandboxLost")
    );
    let twins = target_pods(&target, &id, "2 target pods", |pods| pods.len() == 2).await?;
    assert!(
        !twins.iter().any(|p| source_uid(p) == second_uid),
        "eklet never starts a pod again elsewhere"
    );
    assert_node_ready(&client, &id.node()).await?;
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// What a watch saw of the IDC pods during a test.
#[derive(Default)]
struct Seen {
    uids: BTreeSet<String>,
    failed: BTreeSet<String>,
}

/// Records every IDC pod of `app` and every one that failed, until dropped.
fn record(client: &Client, ns: &str, app: &str) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut pods = watcher(api, config).default_backoff().applied_objects().boxed();
        while let Some(pod) = pods.next().await {
            let Ok(pod) = pod else { continue };
            let mut seen = log.lock().unwrap_or_else(|e| e.into_inner());
            let uid = pod.uid().unwrap_or_default();
            if phase(&pod) == "Failed" {
                seen.failed.insert(uid.clone());
            }
            seen.uids.insert(uid);
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_during_a_burst_evicts_and_duplicates_nothing_and_all_run_once_it_is_back()
-> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-partition").await?;
    let id = Identity::unique();
    let upstream: SocketAddr = cloud
        .apiserver_url()
        .trim_start_matches("https://")
        .parse()
        .context("the cloud apiserver address")?;
    let partition = Partition::start(upstream).await?;
    let kubeconfig = partition.kubeconfig(cloud.kubeconfig(), cloud.apiserver_url(), idc.run_dir())?;
    let _eklet = start_eklet(&idc, &kubeconfig, &id, &[]).await?;
    let (seen, recorder) = record(&client, &ns, "web");

    deployment(&client, &ns, "web", 4, cloud_pod_spec(&id, nginx())).await?;
    let before = idc_pods(&client, &ns, "web", "4 Running pods", |pods| running(pods) == 4).await?;
    let ips: HashMap<String, Option<String>> = before
        .iter()
        .map(|p| (p.uid().unwrap_or_default(), pod_ip(p)))
        .collect();

    // The burst goes on while the target cannot be reached, for longer than the
    // node-lifecycle controller's grace period (40 s), after which it would evict from a node
    // whose heartbeat had stopped.
    partition.cut();
    scale(&client, &ns, "web", 8).await?;
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_node_ready(&client, &id.node()).await?;
    let during = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&kube::api::ListParams::default().labels("app=web"))
        .await?
        .items;
    for pod in &during {
        let uid = pod.uid().unwrap_or_default();
        match ips.get(&uid) {
            Some(ip) => {
                assert!(is_running(pod), "pod {uid} kept Running, was {}", phase(pod));
                assert_eq!(&pod_ip(pod), ip, "pod {uid} keeps its IP");
            }
            None => assert_eq!(phase(pod), "Pending", "pod {uid} waits for the target"),
        }
    }
    assert_eq!(during.len(), 8);

    partition.heal();
    let after = idc_pods(&client, &ns, "web", "8 Running pods", |pods| running(pods) == 8).await?;
    let twins = target_pods(&target, &id, "8 target pods Running", |pods| {
        pods.iter().filter(|p| phase(p) == "Running").count() == 8
    })
    .await?;
    let idc_uids: BTreeSet<String> = after.iter().filter_map(|p| p.uid()).collect();
    let twin_uids: Vec<String> = twins.iter().map(|p| source_uid(p)).collect();
    assert_eq!(twin_uids.len(), 8, "one target pod per IDC pod");
    assert_eq!(twin_uids.into_iter().collect::<BTreeSet<_>>(), idc_uids);
    recorder.abort();
    let (uids, failed) = {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.uids.clone(), seen.failed.clone())
    };
    assert!(failed.is_empty(), "pods failed: {failed:?}");
    assert_eq!(uids, idc_uids, "no IDC pod was replaced");
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_eklet_restarted_mid_burst_adopts_its_target_pods_and_duplicates_none()
-> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-restart").await?;
    let id = Identity::unique();
    let mut eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[]).await?;
    const PODS: usize = 30;
    deployment(&client, &ns, "web", PODS as i32, cloud_pod_spec(&id, nginx())).await?;
    target_pods(&target, &id, "a third of the target pods created", |pods| {
        pods.len() >= PODS / 3
    })
    .await?;
    eklet.kill();
    let _eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[]).await?;

    let pods = idc_pods(&client, &ns, "web", "all pods Running", |pods| {
        running(pods) == PODS
    })
    .await?;
    let twins = target_pods(&target, &id, "a Running target pod per pod", |pods| {
        pods.iter().filter(|p| phase(p) == "Running").count() >= PODS
    })
    .await?;
    let idc_uids: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    let mut per_uid: HashMap<String, usize> = HashMap::new();
    for twin in &twins {
        *per_uid.entry(source_uid(twin)).or_default() += 1;
        let gates = twin
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.clone())
            .unwrap_or_default();
        assert!(gates.is_empty(), "{} is still gated", twin.name_any());
    }
    assert_eq!(twins.len(), PODS, "target pods: {per_uid:?}");
    assert!(per_uid.values().all(|n| *n == 1), "duplicates: {per_uid:?}");
    assert_eq!(per_uid.keys().cloned().collect::<BTreeSet<_>>(), idc_uids);
    for pod in &pods {
        let twin = twins
            .iter()
            .find(|t| source_uid(t) == pod.uid().unwrap_or_default())
            .context("a target pod")?;
        assert_eq!(pod_ip(pod), pod_ip(twin));
    }
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// The token secret of a target pod: (token, ca.crt, namespace).
async fn token_files(target: &Client, target_ns: &str, twin: &Pod) -> anyhow::Result<[String; 3]> {
    let spec = twin.spec.clone().unwrap_or_default();
    let volume = spec
        .containers
        .first()
        .and_then(|c| c.volume_mounts.as_ref())
        .and_then(|mounts| mounts.iter().find(|m| m.mount_path == TOKEN_PATH))
        .map(|m| m.name.clone())
        .context("the service-account mount")?;
    let secret_name = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .context("the token volume is a Secret")?;
    let data = Api::<Secret>::namespaced(target.clone(), target_ns)
        .get(&secret_name)
        .await?
        .data
        .unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .unwrap_or_default()
    };
    Ok([text("token"), text("ca.crt"), text("namespace")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_token_in_the_target_is_refreshed_with_its_volume_otherwise_unchanged()
-> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-token-refresh").await?;
    let id = Identity::unique();
    let _eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &["--sa-token-refresh-interval=1s"]).await?;
    deployment(&client, &ns, "web", 1, cloud_pod_spec(&id, nginx())).await?;
    let pods = idc_pods(&client, &ns, "web", "a Running pod", |pods| running(pods) == 1).await?;
    let pod = pods.first().context("a pod")?;
    let target_ns = target_namespace(&id, &ns);
    let twin = Api::<Pod>::namespaced(target.clone(), &target_ns)
        .get(&target_name(&id, pod))
        .await?;
    let [first, ca, namespace] = token_files(&target, &target_ns, &twin).await?;
    assert_eq!(first.split('.').count(), 3, "a JWT");
    wait::until(PATIENCE, "a new token in the target", || async {
        token_files(&target, &target_ns, &twin)
            .await
            .is_ok_and(|[token, ..]| token != first)
    })
    .await?;
    let [token, ca_after, namespace_after] = token_files(&target, &target_ns, &twin).await?;
    assert_eq!(token.split('.').count(), 3, "a JWT");
    assert_eq!(
        (ca_after, namespace_after),
        (ca, namespace),
        "the rest of the volume as it was"
    );
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// Issue #23: a Deployment deleted right after eklet restarted and adopted its target pods.
/// The orphan sweep runs once an hour here, so only the deletion path itself can remove them.
async fn deleting_pods_right_after_a_restart_deletes_their_target_pods(
    grace_seconds: i64,
) -> anyhow::Result<()> {
    const PODS: usize = 20;
    const NO_SWEEP: &str = "--orphan-sweep-interval=1h";
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let (client, target) = (idc.client().await?, cloud.client().await?);
    let ns = idc.namespace("k8s-restart-delete").await?;
    let id = Identity::unique();
    let mut eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[NO_SWEEP]).await?;
    let mut spec = cloud_pod_spec(&id, nginx());
    spec["terminationGracePeriodSeconds"] = json!(grace_seconds);
    deployment(&client, &ns, "web", PODS as i32, spec).await?;
    idc_pods(&client, &ns, "web", "all pods Running", |pods| {
        running(pods) == PODS
    })
    .await?;
    target_pods(&target, &id, "a Running target pod per pod", |pods| {
        pods.iter().filter(|p| phase(p) == "Running").count() == PODS
    })
    .await?;

    eklet.kill();
    let eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[NO_SWEEP]).await?;
    wait::until(PATIENCE, "every target pod adopted", || async {
        eklet
            .metrics_text()
            .await
            .is_ok_and(|text| sample(&text, "eklet_sandboxes_adopted_total") == Some(PODS as f64))
    })
    .await?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .delete("web", &DeleteParams::background())
        .await?;
    idc_pods(&client, &ns, "web", "the IDC pods gone", |pods| pods.is_empty()).await?;
    target_pods(&target, &id, "every target pod gone", |pods| pods.is_empty())
        .await
        .with_context(|| eklet.log_tail(30))?;
    let metrics = eklet.metrics_text().await?;
    assert_eq!(
        sample(&metrics, "eklet_orphan_sandboxes_deleted_total"),
        Some(0.0),
        "the sweep is a safety net, not the mechanism"
    );
    remove_node(&client, &id.node()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_without_grace_right_after_a_restart_take_their_target_pods_with_them()
-> anyhow::Result<()> {
    deleting_pods_right_after_a_restart_deletes_their_target_pods(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_gracefully_right_after_a_restart_take_their_target_pods_with_them() -> anyhow::Result<()>
{
    deleting_pods_right_after_a_restart_deletes_their_target_pods(5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_pod_left_gated_by_a_crashed_create_is_removed_not_adopted() -> anyhow::Result<()> {
    let cloud = cloud().await?;
    let target = cloud.client().await?;
    let cluster_id = format!("cls-{}", random_suffix());
    let uid = "2f6c0d5e-1111-2222-3333-444455556666";
    let name = SandboxName::for_pod(&cluster_id, uid);
    let target_ns = cloud.namespace("k8s-gated").await?;
    let gated: Pod = serde_json::from_value(json!({
        "metadata": {"name": name.as_str(), "labels": {CLUSTER_LABEL: cluster_id, POD_UID_LABEL: uid}},
        "spec": {"schedulingGates": [{"name": "eklet.tke-resilience.io/objects"}],
                 "containers": [{"name": "app", "image": "nginx:1.27"}]}
    }))?;
    let pods: Api<Pod> = Api::namespaced(target.clone(), &target_ns);
    pods.create(&PostParams::default(), &gated).await?;

    // What a restarted eklet does first: list its sandboxes to adopt them.
    let provider = KubernetesProvider::new(
        target.clone(),
        Settings {
            cluster_id: cluster_id.clone(),
            namespaces: Namespaces::Fixed(target_ns.clone()),
            node_selector: vec![],
            tolerations: vec![],
            annotations: vec![],
            scheduler_name: None,
            keep_labels: false,
        },
    );
    let listed = provider.list(&cluster_id).await?;
    assert!(listed.is_empty(), "an incomplete pod is not adopted: {listed:?}");
    let config = watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={cluster_id}"));
    wait::for_objects(pods, config, PATIENCE, "the gated pod deleted", |pods| {
        pods.is_empty()
    })
    .await?;
    assert!(
        provider.find(&name).await?.is_none(),
        "find does not return it either"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_of_a_burst_pod_asks_the_target_and_reports_its_refusal() -> anyhow::Result<()> {
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let client = idc.client().await?;
    let ns = idc.namespace("k8s-logs").await?;
    let id = Identity::unique();
    let _eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[]).await?;
    deployment(&client, &ns, "web", 1, cloud_pod_spec(&id, nginx())).await?;
    let pods = idc_pods(&client, &ns, "web", "a Running pod", |pods| running(pods) == 1).await?;
    let pod = pods.first().context("a pod")?;
    // kwok serves no container logs, so the target's log API answers with an error; it must
    // come back to the user as one, not as an empty log or a hang.
    let output = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(idc.bin("kubectl"))
            .args([
                "--kubeconfig",
                &idc.kubeconfig().display().to_string(),
                "logs",
                "-n",
                &ns,
                &pod.name_any(),
            ])
            .output(),
    )
    .await
    .context("kubectl logs hung")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "kubectl logs succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains("ReadPodLog: TargetLogsUnavailable"),
        "the target's answer is named: {stderr}"
    );
    remove_node(&client, &id.node()).await;
    Ok(())
}

/// The seed's walkthrough with this provider: nginx, 4 replicas, `LOCAL_REPLICAS: "1"`, placed
/// by tke-scheduler; 3 run in the target cluster; scaled to 3, a cloud pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_walkthrough_bursts_three_of_four_pods_into_the_target_cluster_and_scales_in_from_it()
-> anyhow::Result<()> {
    let cloud = cloud().await?;
    let target = cloud.client().await?;
    let group = format!("walk-{}", random_suffix());
    let (idc, addr) = extender::control_plane(vec![
        NodeSpec::new(format!("{group}-1")).label("testbed.tke.io/group", &group),
    ])
    .await?;
    let _extender = Extender::start(&idc, addr, &[]).await?;
    let _admission = Admission::start(&idc, &[]).await?;
    let id = Identity::unique();
    let _eklet = start_eklet(&idc, cloud.kubeconfig(), &id, &[]).await?;
    let client = idc.client().await?;
    let ns = idc.namespace("walkthrough").await?;
    let mut deployment = support::admission::deployment(
        "nginx",
        4,
        &[("LOCAL_REPLICAS", "1"), ("AUTO_SCALE_EKS", "true")],
        json!({}),
    )?;
    if let Some(spec) = deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.scheduler_name = Some(extender::SCHEDULER_NAME.to_owned());
        spec.affinity = Some(serde_json::from_value(
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "testbed.tke.io/group", "operator": "In", "values": [group]}]},
                {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["eklet"]}]}
            ]}}}),
        )?);
    }
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let node = id.node();
    let on_virtual = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
    let priced = |p: &Pod| {
        p.annotations()
            .contains_key("controller.kubernetes.io/pod-deletion-cost")
    };
    let pods = idc_pods(
        &client,
        &ns,
        "nginx",
        "4 Running, the cloud ones priced",
        |pods| running(pods) == 4 && pods.iter().filter(|p| on_virtual(p)).all(|p| priced(p)),
    )
    .await?;
    assert_eq!(
        pods.iter().filter(|p| on_virtual(p)).count(),
        3,
        "three on {node}"
    );
    let twins = target_pods(&target, &id, "3 Running target pods", |pods| {
        pods.iter().filter(|p| phase(p) == "Running").count() == 3
    })
    .await?;
    assert_eq!(twins.len(), 3);
    let local_uid = pods.iter().find(|p| !on_virtual(p)).and_then(|p| p.uid());

    scale(&client, &ns, "nginx", 3).await?;
    let after = idc_pods(&client, &ns, "nginx", "3 Running pods", |pods| {
        pods.len() == 3 && running(pods) == 3
    })
    .await?;
    assert!(
        after.iter().any(|p| p.uid() == local_uid),
        "the local pod is kept"
    );
    target_pods(&target, &id, "2 target pods", |pods| pods.len() == 2).await?;
    Ok(())
}

/// P1: pods per second from a Deployment's creation to all its pods Running, through this
/// provider and, side by side on the same IDC, through the tencent provider on cloudsim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_pods_per_second_to_running() -> anyhow::Result<()> {
    const PODS: usize = 100;
    let idc = ControlPlane::shared().await?;
    let cloud = cloud().await?;
    let client = idc.client().await?;
    let cloudsim = start_cloudsim(|_| {}).await?;
    // The floor: the same Deployment on a local kwok node, without eklet (ReplicaSet
    // controller, scheduler and kwok only).
    let local = format!("bench-local-{}", random_suffix());
    idc.add_nodes(&[NodeSpec::new(&local).cpu("64").memory("256Gi").pods(250)])
        .await?;
    let mut rates = Vec::new();
    for round in 0..2 {
        for provider in ["kubernetes", "tencent", "local"] {
            let id = Identity::unique();
            let (_eklet, spec) = match provider {
                "kubernetes" => (
                    Some(start_eklet(&idc, cloud.kubeconfig(), &id, &[]).await?),
                    cloud_pod_spec(&id, nginx()),
                ),
                "tencent" => (
                    Some(Eklet::start(&idc, &cloudsim, &id, &[]).await?),
                    cloud_pod_spec(&id, nginx()),
                ),
                _ => (
                    None,
                    json!({"nodeSelector": {"kubernetes.io/hostname": local}, "containers": nginx()}),
                ),
            };
            let ns = idc.namespace("k8s-bench").await?;
            let started = Instant::now();
            deployment(&client, &ns, "web", PODS as i32, spec).await?;
            idc_pods(&client, &ns, "web", "all Running", |pods| running(pods) == PODS).await?;
            let seconds = started.elapsed().as_secs_f64();
            let rate = PODS as f64 / seconds;
            println!("round {round} {provider}: {PODS} pods Running in {seconds:.1}s = {rate:.1} pods/s");
            rates.push((provider, rate));
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .delete("web", &DeleteParams::default())
                .await?;
            if provider != "local" {
                remove_node(&client, &id.node()).await;
            }
        }
    }
    let mean = |name: &str| {
        let all: Vec<f64> = rates
            .iter()
            .filter(|(p, _)| *p == name)
            .map(|(_, r)| *r)
            .collect();
        all.iter().sum::<f64>() / all.len().max(1) as f64
    };
    println!(
        "P1 kubernetes {:.1} pods/s, tencent on cloudsim {:.1} pods/s (ratio {:.2}), local kwok without eklet {:.1} pods/s",
        mean("kubernetes"),
        mean("tencent"),
        mean("kubernetes") / mean("tencent"),
        mean("local")
    );
    Ok(())
}
