//! The Helm chart in tests: where it is, helm against a test-bed control plane, kubeconfigs for
//! the chart's own ServiceAccounts (so components run under the chart's RBAC, not as admin), and
//! [`Installed`], the chart installed into a cluster of its own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{Api, Client, api::PostParams};
use serde_json::Value;
use tke_testbed::{ControlPlane, components};

/// The release name and namespace the tests install the chart as, as the seed does.
pub const RELEASE: &str = "tke-resilience";
pub const NAMESPACE: &str = "kube-system";

pub fn chart_dir() -> PathBuf {
    tke_testbed::workspace_root().join("charts/tke-resilience")
}

/// A values file of the chart's `ci/` directory.
pub fn ci_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(name)
}

/// The string at a JSON pointer, or an error naming the pointer.
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("{pointer} is not a string in {value}"))
}

/// helm with no cluster (`template`, `lint`).
pub fn helm(args: &[&str]) -> anyhow::Result<Output> {
    let helm = tke_testbed::tools_dir()?.join("helm");
    Command::new(&helm)
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))
}

/// Runs helm against `cp`, with its cache and configuration in `dir`; its stdout, or an error with
/// everything it printed.
pub async fn helm_on(cp: &ControlPlane, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let helm = cp.bin("helm");
    let kubeconfig = cp.kubeconfig().display().to_string();
    let mut command = tokio::process::Command::new(&helm);
    command.args(args).args(["--kubeconfig", &kubeconfig]);
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        command.env(var, dir.join("helm").join(sub));
    }
    let out = command
        .output()
        .await
        .with_context(|| format!("running {}", helm.display()))?;
    ensure!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A token for ServiceAccount `name` of [`NAMESPACE`] from the TokenRequest API.
pub async fn service_account_token(client: &Client, name: &str) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token for ServiceAccount {NAMESPACE}/{name}"))?
        .status
        .and_then(|s| s.token)
        .with_context(|| format!("no token in the TokenRequest for {name}"))
}

/// A kubeconfig in `dir` that authenticates to `cp` as ServiceAccount `name` of [`NAMESPACE`].
pub async fn service_account_kubeconfig(
    cp: &ControlPlane,
    client: &Client,
    dir: &Path,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let token = service_account_token(client, name).await?;
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  \
             context:\n    cluster: testbed\n    user: {name}\ncurrent-context: {name}\n",
            server = cp.apiserver_url(),
            ca = cp.pki().ca.cert_file.display(),
        ),
    )?;
    Ok(path)
}

/// `helm template` of the chart as [`RELEASE`] in [`NAMESPACE`], with `extra` arguments.
pub fn template(extra: &[&str]) -> anyhow::Result<Output> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    helm(&args)
}

/// The text of `helm template`, for checks on everything it renders.
pub fn render_text(extra: &[&str]) -> anyhow::Result<String> {
    let out = template(extra)?;
    ensure!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template`, parsed into documents.
pub fn render(extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    documents(&render_text(extra)?)
}

/// The error `helm template` gives for these values; fails the test if it renders.
pub fn render_error(extra: &[&str]) -> anyhow::Result<String> {
    let out = template(extra)?;
    ensure!(
        !out.status.success(),
        "helm template {extra:?} rendered although it should not"
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The YAML documents of a text, empty ones left out.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML documents")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The rendered object of this kind and name.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

/// `helm install` of the chart as [`RELEASE`] in [`NAMESPACE`] with the values file `values` and
/// `--set set`, waiting (up to two minutes) for what it installs.
pub async fn install(cp: &ControlPlane, dir: &Path, values: &Path, set: &str) -> anyhow::Result<String> {
    let chart = chart_dir().display().to_string();
    let values = values.display().to_string();
    helm_on(
        cp,
        dir,
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "-f",
            &values,
            "--set",
            set,
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await
}

/// The pod template of the chart's Deployment `name`.
pub async fn pod_spec(client: &Client, name: &str) -> anyhow::Result<k8s_openapi::api::core::v1::PodSpec> {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .get(name)
        .await
        .with_context(|| format!("the chart's Deployment {name}"))?
        .spec
        .and_then(|s| s.template.spec)
        .with_context(|| format!("the chart's Deployment {name} has no pod template"))
}

/// A container's environment, resolved as the kubelet would for a pod named `pod` of [`NAMESPACE`]
/// on this machine: `HOSTNAME`, values, the pod's fields and Secret keys.
pub async fn container_env(
    client: &Client,
    container: &k8s_openapi::api::core::v1::Container,
    pod: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let name = &container.name;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut env = vec![("HOSTNAME".to_owned(), pod.to_owned())];
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                (Some(field), _) => match field.field_path.as_str() {
                    "status.podIP" => "127.0.0.1".to_owned(),
                    "metadata.namespace" => NAMESPACE.to_owned(),
                    "metadata.name" => pod.to_owned(),
                    other => bail!(
                        "{name}: env {} from field {other}, which this test does not resolve",
                        var.name
                    ),
                },
                (None, Some(key)) => {
                    let secret = secrets
                        .get(&key.name)
                        .await
                        .with_context(|| format!("Secret {}", key.name))?;
                    let bytes = secret
                        .data
                        .and_then(|d| d.get(&key.key).cloned())
                        .with_context(|| format!("Secret {} has no key {}", key.name, key.key))?;
                    String::from_utf8(bytes.0)?
                }
                (None, None) => bail!(
                    "{name}: env {} from a source this test does not resolve",
                    var.name
                ),
            },
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// The local node of an [`Installed`] cluster.
pub const LOCAL_NODE: &str = "idc-1";
/// Where a pod finds its service account's token and the cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The chart installed with the real helm, with the local stack's values, into a fresh control
/// plane with one local node. kwok would mark the chart's pods Running without running anything,
/// so a test runs the components it needs here, as processes with the installed containers' own
/// arguments and environment ([`Installed::command_line`]), authenticated as the chart's
/// ServiceAccounts, so that a permission the chart forgot fails the test.
pub struct Installed {
    pub cp: ControlPlane,
    pub client: Client,
    /// Where helm keeps its cache and configuration, and the service accounts' kubeconfigs live.
    pub dir: PathBuf,
    /// `ci/local-stack-values.yaml`.
    pub values: Value,
    pub ports: Ports,
}

/// The ports the chart is told to use, free on this machine.
pub struct Ports {
    pub cloudsim: u16,
    pub eklet_kubelet: u16,
    pub eklet_metrics: u16,
    pub admission_metrics: u16,
    pub extender: u16,
    pub extender_metrics: u16,
    pub scheduler: u16,
}

impl Ports {
    fn free() -> anyhow::Result<Ports> {
        let ports = tke_testbed::free_ports::<7>()?;
        Ok(Ports {
            cloudsim: ports[0],
            eklet_kubelet: ports[1],
            eklet_metrics: ports[2],
            admission_metrics: ports[3],
            extender: ports[4],
            scheduler: ports[5],
            extender_metrics: ports[6],
        })
    }
}

impl Installed {
    /// Installs the chart with eks-admission and the scheduler at zero replicas and eklet at
    /// `eklet_replicas`: zero where the test runs eklet itself, one where the process it runs
    /// stands for kwok's pod (and stops when the Deployment is scaled to zero).
    pub async fn install(eklet_replicas: u32) -> anyhow::Result<Installed> {
        let cp = ControlPlane::start(tke_testbed::Options {
            nodes: vec![tke_testbed::NodeSpec::new(LOCAL_NODE)],
            ..Default::default()
        })
        .await?;
        let client = cp.client().await?;
        let dir = cp.run_dir().join("chart");
        std::fs::create_dir_all(&dir)?;
        let ports = Ports::free()?;
        let values_file = ci_values("local-stack-values.yaml");
        let values_text = std::fs::read_to_string(&values_file)
            .with_context(|| format!("reading {}", values_file.display()))?;
        let set = format!(
            "eklet.replicaCount={eklet_replicas},eksAdmission.replicaCount=0,scheduler.replicaCount=0,\
             cloud.endpoint=http://127.0.0.1:{},eklet.podUsedApiserver={},\
             eklet.kubeletPort={},eklet.metricsPort={},eksAdmission.metricsPort={},scheduler.extender.port={},\
             scheduler.extender.metricsPort={}",
            ports.cloudsim,
            cp.apiserver_url(),
            ports.eklet_kubelet,
            ports.eklet_metrics,
            ports.admission_metrics,
            ports.extender,
            ports.extender_metrics,
        );
        install(&cp, &dir, &values_file, &set).await?;
        Ok(Installed {
            cp,
            client,
            dir,
            values: serde_saphyr::from_str(&values_text)?,
            ports,
        })
    }

    /// Runs helm against this control plane, with its state kept in the run directory.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        helm_on(&self.cp, &self.dir, args).await
    }

    /// The subnet of the values, whose virtual node eklet registers.
    pub fn subnet_id(&self) -> anyhow::Result<String> {
        Ok(str_at(&self.values, "/cloud/subnets/0/id")?.to_owned())
    }

    pub fn virtual_node(&self) -> anyhow::Result<String> {
        Ok(tke_policy::virtual_node::node_name(&self.subnet_id()?))
    }

    /// A kubeconfig that authenticates as ServiceAccount `name` with a token from the TokenRequest API.
    pub async fn service_account_kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        service_account_kubeconfig(&self.cp, &self.client, &self.dir, name).await
    }

    /// A token for ServiceAccount `name` from the TokenRequest API.
    pub async fn service_account_token(&self, name: &str) -> anyhow::Result<String> {
        service_account_token(&self.client, name).await
    }

    /// A container of an installed Deployment: its command line and its environment, resolved as
    /// the kubelet would for a pod named `pod` on this machine.
    pub async fn container(
        &self,
        deployment: &str,
        container: &str,
        pod: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
        let spec = pod_spec(&self.client, deployment).await?;
        let c = spec
            .containers
            .into_iter()
            .find(|c| c.name == container)
            .with_context(|| format!("no container {container}"))?;
        let env = container_env(&self.client, &c, pod).await?;
        let line: Vec<String> = c
            .command
            .unwrap_or_default()
            .into_iter()
            .chain(c.args.unwrap_or_default())
            .collect();
        Ok((line, env))
    }

    /// `tke-resilience <the chart's arguments>` for a container of ours, as ServiceAccount
    /// `account`: the cluster CA of the service-account volume is the test bed's here, and the
    /// client is the account's kubeconfig. Its environment as [`Installed::container`] resolves it,
    /// without the backtraces a developer's RUST_BACKTRACE would add to errors.
    pub async fn command_line(
        &self,
        deployment: &str,
        container: &str,
        account: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
        let (line, mut env) = self
            .container(deployment, container, &format!("{deployment}-0"))
            .await?;
        let ca = format!("{SERVICE_ACCOUNT_DIR}/ca.crt");
        let mut line: Vec<String> = line
            .into_iter()
            .map(|arg| arg.replace(&ca, &self.cp.pki().ca.cert_file.display().to_string()))
            .collect();
        if let Some(arg) = line.iter().find(|arg| arg.contains(SERVICE_ACCOUNT_DIR)) {
            bail!("{deployment}/{container} reads {arg}, which this test does not provide");
        }
        line.push(format!(
            "--kubeconfig={}",
            self.service_account_kubeconfig(account).await?.display()
        ));
        env.push(("RUST_BACKTRACE".to_owned(), "0".to_owned()));
        Ok((line, env))
    }

    /// cloudsim on the port the chart's `cloud.endpoint` names, accepting the values' credentials;
    /// returns once it answers.
    pub async fn cloudsim(&self) -> anyhow::Result<tke_testbed::Proc> {
        let credentials = self.dir.join("cloudsim-credentials");
        components::write_credentials(
            &credentials,
            str_at(&self.values, "/cloud/secretID")?,
            str_at(&self.values, "/cloud/secretKey")?,
        )?;
        let cloudsim = components::Cloudsim::new(&super::binary(), &credentials)?
            .port(self.ports.cloudsim)
            .region(str_at(&self.values, "/cloud/regionLong")?)
            .start_delay("0");
        Ok(cloudsim.start(&self.cp, super::PATIENCE).await?)
    }

    /// Live sandboxes in cloudsim, as its admin API counts them.
    pub async fn cloud_instances(&self) -> anyhow::Result<u64> {
        super::cloudsim::live_instances(SocketAddr::from(([127, 0, 0, 1], self.ports.cloudsim))).await
    }
}
