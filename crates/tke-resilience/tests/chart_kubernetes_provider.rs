//! The Helm chart with `eklet.provider=kubernetes`: it needs no cloud credentials, VPC or region and
//! renders no credentials Secret; the target kubeconfig reaches eklet only as a read-only file from
//! the Secret the user names; and, installed with the real helm into an "IDC" control plane, the
//! chart's eklet, authenticated as the chart's own ServiceAccount, bursts a pod that uses a
//! ConfigMap and a Secret into a second, "target" control plane as a user who has only the
//! permissions of `files/target-rbac.yaml`, bound cluster-wide or, with a fixed target namespace,
//! only there. Any request either apiserver refuses fails the test, so a rule missing from the
//! chart's ClusterRole or from the target role does.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Pod, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};
use support::chart::{
    NAMESPACE, RELEASE, SERVICE_ACCOUNT_DIR, chart_dir, ci_values, container_env, documents, helm, install,
    object, pod_spec, render, render_error, service_account_kubeconfig,
};
use support::{PATIENCE, eklet::is_running_with_ip};
use tke_testbed::{ControlPlane, NodeSpec, Options, Proc, wait};

/// The user of the target kubeconfig (its client certificate's CN), bound to the target role only.
const TARGET_USER: &str = "idc-eklet";
/// The Secret (and its key) the test stores the target kubeconfig in, as a user would.
const TARGET_SECRET: &str = "target-kubeconfig";
const TARGET_SECRET_KEY: &str = "config";
const CLUSTER_LABEL: &str = "eklet.tke-resilience.io/cluster-id";

fn kubernetes_values() -> PathBuf {
    ci_values("kubernetes-provider-values.yaml")
}

fn eklet_container(docs: &[Value]) -> anyhow::Result<&Value> {
    object(docs, "Deployment", &format!("eklet-{RELEASE}"))?["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "eklet"))
        .context("no container eklet")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Whether a rule of the role grants `verb` on `resource` (core group).
fn grants(role: &Value, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        strings(&rule["apiGroups"]).iter().any(|g| g.is_empty())
            && strings(&rule["resources"]).iter().any(|r| r == resource)
            && strings(&rule["verbs"]).iter().any(|v| v == verb)
    })
}

fn wildcards(role: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
            if strings(&rule[field]).iter().any(|s| s.contains('*')) {
                found.push(format!("{field} in {rule}"));
            }
        }
        if rule.get("nonResourceURLs").is_some() {
            found.push(format!("nonResourceURLs in {rule}"));
        }
    }
    found
}

#[test]
fn with_the_kubernetes_provider_the_chart_needs_no_cloud_values_and_renders_no_credentials()
-> anyhow::Result<()> {
    let values = kubernetes_values().display().to_string();
    let chart = chart_dir().display().to_string();
    let out = helm(&["lint", "--strict", &chart, "-f", &values])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
        "helm lint --strict -f {values}:\n{stdout}"
    );

    // The values file sets no secretID, secretKey, vpcID, region or security group.
    let docs = render(&["-f", &values])?;
    let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
    assert!(secrets.is_empty(), "the chart renders a Secret: {secrets:?}");
    let eklet = eklet_container(&docs)?;
    let line = strings(&eklet["args"]);
    for expected in [
        "--provider=kubernetes",
        "--target-kubeconfig=/etc/eklet/target/kubeconfig",
        "--cluster-id=idc-shanghai-1",
        "--target-node-selector=topology.kubernetes.io/zone={zone}",
        "--target-toleration=eks.tke.cloud.tencent.com/eklet:NoSchedule",
        "--target-pod-annotation=eks.tke.cloud.tencent.com/burst-from=idc-shanghai-1/{subnet}",
    ] {
        assert!(
            line.iter().any(|a| a == expected),
            "{expected} missing from {line:?}"
        );
    }
    for cloud_flag in [
        "--region",
        "--vpc-id",
        "--security-group-id",
        "--cloud-endpoint",
        "--credentials-file",
        "--sandbox-metrics-port",
    ] {
        assert!(
            !line.iter().any(|a| a.starts_with(cloud_flag)),
            "{cloud_flag} with the kubernetes provider: {line:?}"
        );
    }
    let env = eklet["env"].as_array().cloned().unwrap_or_default();
    for var in &env {
        let name = var["name"].as_str().unwrap_or_default();
        assert!(
            !name.starts_with("TENCENTCLOUD_") && var["valueFrom"].get("secretKeyRef").is_none(),
            "eklet gets a credential: {var}"
        );
    }
    let template = &object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?["spec"]["template"];
    assert!(
        template["metadata"]["annotations"]
            .get("checksum/credentials")
            .is_none(),
        "no credentials to follow"
    );
    // The kubeconfig is the Secret's file, mounted read-only where --target-kubeconfig points.
    let volumes = template["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == "tke-serverless-kubeconfig")
        .with_context(|| format!("no volume of the target kubeconfig Secret: {volumes:?}"))?;
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "kubeconfig", "path": "kubeconfig"}])
    );
    let mount = eklet["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .context("the target kubeconfig is not mounted")?;
    assert_eq!(mount["mountPath"], "/etc/eklet/target");
    assert_eq!(mount["readOnly"], true);

    // The IDC permissions the provider adds, and only with it.
    let role = object(&docs, "ClusterRole", &format!("eklet-{RELEASE}"))?;
    assert!(grants(role, "pods", "get"), "GetSourcePod: {role}");
    for kind in ["configmaps", "secrets"] {
        assert!(
            grants(role, kind, "list") && grants(role, kind, "watch"),
            "the watch of {kind}: {role}"
        );
    }
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let found = wildcards(role);
        assert!(found.is_empty(), "{} grants {found:?}", role["metadata"]["name"]);
    }
    let seed = chart_dir().join("ci/seed-values.yaml").display().to_string();
    let tencent = render(&["-f", &seed])?;
    let role = object(&tencent, "ClusterRole", &format!("eklet-{RELEASE}"))?;
    assert!(
        !grants(role, "pods", "get") && !grants(role, "secrets", "list"),
        "the tencent provider gets the kubernetes provider's rules: {role}"
    );

    // The binary takes every argument (`--help` after them makes clap check each one).
    let out = Command::new(support::binary())
        .args(&line)
        .arg("--help")
        .output()?;
    ensure!(
        out.status.success(),
        "tke-resilience refuses {line:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn kubernetes_provider_values_the_chart_rejects_are_named_in_the_error() -> anyhow::Result<()> {
    let values = kubernetes_values().display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--set", "eklet.kubernetes.targetKubeconfigSecret="],
            "/eklet/kubernetes/targetKubeconfigSecret",
        ),
        (&["--set", "cloud.uniqueID="], "/cloud/uniqueID"),
        (&["--set", "cloud.uniqueID=IDC_1"], "/cloud/uniqueID"),
        (&["--set", "eklet.provider=k8s"], "/eklet/provider"),
        (
            &[
                "--set",
                "eklet.kubernetes.tolerations[0].key=a,eklet.kubernetes.tolerations[0].operator=Exists,eklet.kubernetes.tolerations[0].value=b",
            ],
            "/eklet/kubernetes/tolerations/0/value",
        ),
    ];
    for (extra, field) in cases {
        let mut args = vec!["-f", values.as_str()];
        args.extend_from_slice(extra);
        let error = render_error(&args)?;
        assert!(
            error.contains("values don't meet the specifications of the schema") && error.contains(field),
            "{extra:?}: the error does not name {field}:\n{error}"
        );
    }
    // Without the schema the template still names the missing value.
    let error = render_error(&[
        "-f",
        &values,
        "--skip-schema-validation",
        "--set",
        "eklet.kubernetes.targetKubeconfigSecret=",
    ])?;
    assert!(
        error.contains("eklet.kubernetes.targetKubeconfigSecret is required"),
        "{error}"
    );
    Ok(())
}

#[test]
fn the_target_role_is_one_cluster_role_without_wildcards() -> anyhow::Result<()> {
    let docs = documents(&std::fs::read_to_string(
        chart_dir().join("files/target-rbac.yaml"),
    )?)?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ClusterRole"], "files/target-rbac.yaml holds {kinds:?}");
    let found = wildcards(&docs[0]);
    assert!(found.is_empty(), "the target role grants {found:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The chart in a real IDC cluster, bursting into a real target cluster.

/// The eklet process, run with the installed Deployment's arguments, authenticated to the IDC as
/// the chart's ServiceAccount and to the target as [`TARGET_USER`].
struct Eklet {
    proc: Proc,
    /// The identities whose refusals count: the chart's ServiceAccount and the target user.
    users: [String; 2],
}

impl Eklet {
    /// The requests either apiserver refused eklet so far.
    fn refusals(&self) -> Vec<String> {
        refusals_in(&self.proc.log, &self.users)
    }

    /// Runs `work`, failing at once (with the refused requests) when an apiserver refuses eklet
    /// or eklet exits, and with eklet's log when `work` fails.
    async fn step<T>(
        &mut self,
        what: &str,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let proc = &mut self.proc;
        let users = &self.users;
        let watchdog = async {
            loop {
                let refused = refusals_in(&proc.log, users);
                if !refused.is_empty() {
                    return format!("{what}: the apiserver refused eklet:\n{}", refused.join("\n"));
                }
                if let Some(status) = proc.exited() {
                    return format!("{what}: eklet exited with {status}:\n{}", proc.log_tail(40));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        tokio::select! {
            result = work => result.with_context(|| format!("{what}; eklet log:\n{}", self.proc.log_tail(30))),
            failure = watchdog => bail!(failure),
        }
    }
}

/// The refusals in eklet's log: RBAC's `... is forbidden: User "<user>" cannot ...` for one of
/// `users`, or a 401 "Unauthorized".
fn refusals_in(log: &Path, users: &[String]) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            (line.to_lowercase().contains("forbidden") && users.iter().any(|u| line.contains(u.as_str())))
                || line.contains("Unauthorized")
        })
        .map(str::to_owned)
        .collect()
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Output> {
    let kubeconfig = cp.kubeconfig().display().to_string();
    let run = tokio::process::Command::new(cp.bin("kubectl"))
        .args(["--kubeconfig", &kubeconfig])
        .args(args)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .with_context(|| format!("kubectl {args:?} hung"))?
        .with_context(|| format!("kubectl {args:?}"))
}

/// A kubeconfig for the target cluster as user [`TARGET_USER`], self-contained as one in a Secret
/// must be: certificates embedded, no file paths.
fn target_kubeconfig(target: &ControlPlane) -> anyhow::Result<String> {
    let pair = target.pki().issue_client("idc-eklet", TARGET_USER, None)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: target\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {TARGET_USER}\n  user:\n    client-certificate-data: {cert}\n    \
         client-key-data: {key}\ncontexts:\n- name: target\n  context:\n    cluster: target\n    user: {TARGET_USER}\n\
         current-context: target\n",
        server = target.apiserver_url(),
        ca = b64(&target.pki().ca.cert_pem),
        cert = b64(&pair.cert_pem),
        key = b64(&pair.key_pem),
    ))
}

/// Creates `files/target-rbac.yaml` in the target and binds it to [`TARGET_USER`] as its
/// instructions say: cluster-wide, or with a fixed target namespace (which the operator creates)
/// only there.
async fn grant_target_role(target: &Client, fixed_namespace: Option<&str>) -> anyhow::Result<()> {
    let docs = documents(&std::fs::read_to_string(
        chart_dir().join("files/target-rbac.yaml"),
    )?)?;
    let role: ClusterRole =
        serde_json::from_value(docs.first().context("an empty target-rbac.yaml")?.clone())?;
    let role_name = role.name_any();
    Api::<ClusterRole>::all(target.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding = json!({
        "metadata": {"name": "tke-resilience-eklet"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TARGET_USER}],
    });
    let post = PostParams::default();
    match fixed_namespace {
        None => {
            Api::<ClusterRoleBinding>::all(target.clone())
                .create(&post, &serde_json::from_value(binding)?)
                .await?;
        }
        Some(namespace) => {
            Api::<Namespace>::all(target.clone())
                .create(
                    &post,
                    &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
                )
                .await?;
            Api::<RoleBinding>::namespaced(target.clone(), namespace)
                .create(&post, &serde_json::from_value(binding)?)
                .await?;
        }
    }
    Ok(())
}

/// The installed eklet container's command line and environment, resolved as the kubelet would on
/// this machine: env from the pod's fields, each Secret volume written to a directory of `dir`
/// that replaces its mount path in the arguments, the cluster CA for the service-account one.
async fn installed_eklet(
    cp: &ControlPlane,
    client: &Client,
    dir: &Path,
) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
    let name = format!("eklet-{RELEASE}");
    let spec = pod_spec(client, &name).await?;
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == "eklet")
        .context("no container eklet")?;
    let mut line: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("no volume {}", mount.name))?;
        let source = volume.secret.as_ref().with_context(|| {
            format!(
                "volume {} is not a Secret, which this test does not resolve",
                volume.name
            )
        })?;
        ensure!(
            mount.read_only == Some(true),
            "volume {} is mounted writable",
            volume.name
        );
        let secret_name = source.secret_name.clone().unwrap_or_default();
        let secret = secrets
            .get(&secret_name)
            .await
            .with_context(|| format!("Secret {secret_name} of volume {}", volume.name))?;
        let data = secret.data.unwrap_or_default();
        let local = dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&local)?;
        for item in source.items.iter().flatten() {
            let bytes = data
                .get(&item.key)
                .with_context(|| format!("Secret {secret_name} has no key {}", item.key))?;
            std::fs::write(local.join(&item.path), &bytes.0)?;
        }
        line = line
            .into_iter()
            .map(|arg| arg.replace(&mount.mount_path, &local.display().to_string()))
            .collect();
    }
    let ca = format!("{SERVICE_ACCOUNT_DIR}/ca.crt");
    let line: Vec<String> = line
        .into_iter()
        .map(|arg| arg.replace(&ca, &cp.pki().ca.cert_file.display().to_string()))
        .collect();
    if let Some(arg) = line.iter().find(|a| a.contains(SERVICE_ACCOUNT_DIR)) {
        bail!("eklet reads {arg}, which this test does not provide");
    }
    // The kubernetes provider needs no cloud credentials: nothing of its env comes from a Secret.
    if let Some(var) = container.env.iter().flatten().find(|var| {
        var.value_from
            .as_ref()
            .is_some_and(|from| from.field_ref.is_none())
    }) {
        bail!(
            "env {} comes from {:?}, which the kubernetes provider should not need",
            var.name,
            var.value_from
        );
    }
    let mut env = container_env(client, container, &format!("{name}-0")).await?;
    env.push(("RUST_BACKTRACE".to_owned(), "0".to_owned()));
    Ok((line, env))
}

async fn wait_for_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    done: impl Fn(Option<&Pod>) -> bool,
) -> anyhow::Result<Option<Arc<Pod>>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let pods = wait::for_objects(api, config, PATIENCE, what, |pods| {
        done(pods.first().map(|p| p.as_ref()))
    })
    .await?;
    Ok(pods.into_iter().next())
}

/// Waits until the target copy the target pod's `reference` names holds `key` = `value`.
async fn copy_holds(
    target: &Client,
    namespace: &str,
    reference: &CopyRef,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let what = format!("the target copy {} with {key}={value}", reference.name());
    wait::until(PATIENCE, &what, || async {
        let found = match reference {
            CopyRef::ConfigMap(name) => Api::<ConfigMap>::namespaced(target.clone(), namespace)
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data.and_then(|d| d.get(key).cloned())),
            CopyRef::Secret(name) => Api::<Secret>::namespaced(target.clone(), namespace)
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data.and_then(|d| d.get(key).cloned()))
                .and_then(|b| String::from_utf8(b.0).ok()),
        };
        found.as_deref() == Some(value)
    })
    .await?;
    Ok(())
}

enum CopyRef {
    ConfigMap(String),
    Secret(String),
}

impl CopyRef {
    fn name(&self) -> &str {
        match self {
            CopyRef::ConfigMap(name) | CopyRef::Secret(name) => name,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_eklet_bursts_a_pod_with_its_configmap_into_a_target_cluster_on_the_charts_and_the_target_roles_alone()
-> anyhow::Result<()> {
    burst_through_the_chart(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fixed_target_namespace_the_target_role_bound_in_that_namespace_alone_is_enough()
-> anyhow::Result<()> {
    burst_through_the_chart(Some("burst")).await
}

/// Installs the chart in an IDC control plane with the kubernetes provider, runs its eklet as its
/// ServiceAccount against a target control plane as [`TARGET_USER`], and follows one pod with a
/// ConfigMap and a Secret from creation to deletion. `fixed_namespace`: the chart's
/// eklet.kubernetes.targetNamespace, with the target role bound only there.
async fn burst_through_the_chart(fixed_namespace: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let (target, idc) = tokio::try_join!(
        ControlPlane::start(Options {
            nodes: vec![
                NodeSpec::new("cloud-1")
                    .cpu("64")
                    .memory("256Gi")
                    .pods(110)
                    // The values file selects target nodes in the virtual node's zone.
                    .label("topology.kubernetes.io/zone", "ap-guangzhou-3"),
            ],
            ..Options::default()
        }),
        ControlPlane::start(Options::default()),
    )?;
    let (target_client, client) = (target.client().await?, idc.client().await?);
    grant_target_role(&target_client, fixed_namespace).await?;

    // The user's part: the target kubeconfig in a Secret of the release namespace.
    let dir = idc.run_dir().join("chart");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = target_kubeconfig(&target)?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": TARGET_SECRET},
        "stringData": {TARGET_SECRET_KEY: kubeconfig},
    }))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    secrets.create(&PostParams::default(), &secret).await?;

    // The chart, with its Deployments at zero replicas: kwok would mark their pods Running without
    // running anything, so eklet runs below as a process with the installed container's arguments.
    let [kubelet_port, metrics_port] = tke_testbed::free_ports::<2>()?;
    let mut set = format!(
        "eklet.replicaCount=0,eksAdmission.replicaCount=0,scheduler.enabled=false,\
         eklet.podUsedApiserver={},eklet.kubeletPort={kubelet_port},eklet.metricsPort={metrics_port},\
         eklet.kubernetes.targetKubeconfigSecret={TARGET_SECRET},eklet.kubernetes.targetKubeconfigKey={TARGET_SECRET_KEY}",
        idc.apiserver_url(),
    );
    if let Some(namespace) = fixed_namespace {
        set.push_str(&format!(",eklet.kubernetes.targetNamespace={namespace}"));
    }
    install(&idc, &dir, &kubernetes_values(), &set).await?;
    let ours = secrets
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
        .await?;
    assert!(
        ours.items.is_empty(),
        "the chart installed Secrets: {:?}",
        ours.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    );

    let (mut line, env) = installed_eklet(&idc, &client, &dir).await?;
    let account = format!("eklet-{RELEASE}");
    line.push(format!(
        "--kubeconfig={}",
        service_account_kubeconfig(&idc, &client, &dir, &account)
            .await?
            .display()
    ));
    let cluster_id = line
        .iter()
        .find_map(|a| a.strip_prefix("--cluster-id="))
        .context("no --cluster-id")?
        .to_owned();
    let subnet = line
        .iter()
        .find_map(|a| a.strip_prefix("--subnet="))
        .and_then(|s| s.split_once('='))
        .map(|(id, _)| id.to_owned())
        .context("no --subnet")?;
    let virtual_node = format!("eklet-{subnet}");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut eklet = Eklet {
        proc: idc.spawn_process("eklet", &support::binary(), &line, &env)?,
        users: [
            format!("system:serviceaccount:{NAMESPACE}:{account}"),
            TARGET_USER.to_owned(),
        ],
    };

    let nodes: Api<Node> = Api::all(client.clone());
    eklet
        .step(&format!("virtual node {virtual_node} Ready"), async {
            let config = watcher::Config::default().fields(&format!("metadata.name={virtual_node}"));
            wait::for_objects(
                nodes.clone(),
                config,
                PATIENCE,
                "the virtual node Ready",
                |nodes| {
                    nodes.iter().any(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    })
                },
            )
            .await?;
            Ok(())
        })
        .await?;

    // A pod on the virtual node with env from a ConfigMap and a Secret volume.
    let ns = idc.namespace("shop").await?;
    let post = PostParams::default();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(
                json!({"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}),
            )?,
        )
        .await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(
                json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}),
            )?,
        )
        .await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": virtual_node},
            "tolerations": [tke_policy::virtual_node::burst_toleration()],
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}}],
                "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}],
            }],
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}}],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&post, &pod).await?;
    let running = eklet
        .step(
            "the IDC pod Running with an IP",
            wait_for_pod(&client, &ns, "web", "the IDC pod Running", |p| {
                p.is_some_and(is_running_with_ip)
            }),
        )
        .await?
        .context("the IDC pod vanished")?;

    // Its target pod runs on the target's own node, in the namespace eklet made for `ns` (or the
    // fixed one).
    let target_ns = fixed_namespace.map_or_else(|| format!("{cluster_id}-{ns}"), str::to_owned);
    let target_name = format!("eklet-{cluster_id}-{}", running.uid().unwrap_or_default());
    let twin = eklet
        .step(
            "the target pod Running",
            wait_for_pod(
                &target_client,
                &target_ns,
                &target_name,
                "the target pod Running",
                |p| p.is_some_and(is_running_with_ip),
            ),
        )
        .await?
        .context("the target pod vanished")?;
    let twin_spec = twin.spec.clone().unwrap_or_default();
    assert_eq!(twin_spec.node_name.as_deref(), Some("cloud-1"));
    assert_eq!(
        twin.labels().get(CLUSTER_LABEL).map(String::as_str),
        Some(cluster_id.as_str())
    );
    assert_eq!(
        twin.annotations()
            .get("eks.tke.cloud.tencent.com/burst-from")
            .map(String::as_str),
        Some(format!("idc-shanghai-1/{subnet}").as_str()),
        "the values' pod annotation with {{subnet}} filled in"
    );
    assert_eq!(
        running.status.as_ref().and_then(|s| s.pod_ip.clone()),
        twin.status.as_ref().and_then(|s| s.pod_ip.clone()),
        "the IDC pod shows its target pod's IP"
    );
    let container = twin_spec.containers.first().context("a target container")?;
    let config_copy = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "GREETING")
        .and_then(|v| v.value_from.as_ref())
        .and_then(|f| f.config_map_key_ref.as_ref())
        .map(|r| CopyRef::ConfigMap(r.name.clone()))
        .context("GREETING is not from a ConfigMap in the target")?;
    let secret_copy = twin_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "creds")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .map(CopyRef::Secret)
        .context("no Secret volume creds in the target")?;
    copy_holds(&target_client, &target_ns, &config_copy, "greeting", "hello").await?;
    copy_holds(&target_client, &target_ns, &secret_copy, "password", "hunter2").await?;

    // Edits in the IDC reach the copies: eklet watches ConfigMaps and Secrets.
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
        )
        .await?;
    let password = base64::engine::general_purpose::STANDARD.encode("swordfish");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"password": password}})),
        )
        .await?;
    eklet
        .step("the ConfigMap edit in the target copy", async {
            copy_holds(&target_client, &target_ns, &config_copy, "greeting", "bonjour").await
        })
        .await?;
    eklet
        .step("the Secret edit in the target copy", async {
            copy_holds(&target_client, &target_ns, &secret_copy, "password", "swordfish").await
        })
        .await?;

    // `kubectl logs` reaches the target pod's log (kwok serves none, so the target answers with
    // an error that eklet names; a refused request would be a Forbidden instead).
    let logs = eklet
        .step(
            "kubectl logs of the burst pod",
            kubectl(&idc, &["logs", "-n", &ns, "web"]),
        )
        .await?;
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(
        stderr.contains("ReadPodLog: TargetLogsUnavailable"),
        "kubectl logs does not come from the target: {stderr}"
    );
    // metrics-server's scrape of the virtual node (here with the apiserver's kubelet client
    // certificate) asks the target's metrics API, which this target does not serve: the node
    // still lists its pod, where a refused request would fail the scrape.
    let pair = &idc.pki().apiserver_kubelet_client;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(reqwest::Identity::from_pem(
            format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes(),
        )?)
        .timeout(PATIENCE)
        .build()?;
    let url = format!("https://127.0.0.1:{kubelet_port}/stats/summary");
    let response = eklet
        .step("the virtual node's stats", async {
            Ok(http.get(&url).send().await?)
        })
        .await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    let summary: Value = serde_json::from_str(&body)?;
    let listed: Vec<&str> = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["podRef"]["name"].as_str())
        .collect();
    assert_eq!(listed, ["web"], "{summary}");

    // Deleting the IDC pod deletes its target pod, then the IDC pod goes.
    pods.delete("web", &DeleteParams::default()).await?;
    eklet
        .step(
            "the target pod deleted",
            wait_for_pod(
                &target_client,
                &target_ns,
                &target_name,
                "the target pod gone",
                |p| p.is_none(),
            ),
        )
        .await?;
    eklet
        .step(
            "the IDC pod deleted",
            wait_for_pod(&client, &ns, "web", "the IDC pod gone", |p| p.is_none()),
        )
        .await?;

    let refusals = eklet.refusals();
    assert!(refusals.is_empty(), "refused:\n{}", refusals.join("\n"));
    eprintln!(
        "[chart_kubernetes_provider] the burst end to end (target namespace {target_ns}) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
