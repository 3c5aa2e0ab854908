//! The Helm chart `charts/tke-resilience`, with the real helm: it lints and renders with the seed's
//! values and the local stack's, its roles grant no wildcard, its schema names the field it
//! rejects, the scheduler follows the cluster's version (and stays away from the TKE distribution),
//! and every argument it gives our binary is one the binary accepts. Installed into a real control
//! plane, its own ServiceAccounts carry the seed's walkthrough, and uninstalling leaves nothing.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::Value;
use support::{
    PATIENCE,
    chart::{
        Installed, LOCAL_NODE, NAMESPACE, RELEASE, chart_dir, ci_values, documents, helm, object, render,
        render_error, render_text, str_at,
    },
};
use tke_testbed::ControlPlane;

fn read_values(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn names_of(docs: &[Value], kind: &str) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn container<'a>(deployment: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no container {name} in {}", deployment["metadata"]["name"]))
}

/// A container's command line after the image's entrypoint: `command` and `args` together.
fn command_line(container: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .flat_map(|key| container[*key].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn seed_values() -> PathBuf {
    ci_values("seed-values.yaml")
}

fn local_stack_values() -> PathBuf {
    ci_values("local-stack-values.yaml")
}

#[test]
fn the_chart_lints_cleanly_with_the_seed_values_and_the_local_stack_values() -> anyhow::Result<()> {
    let chart = chart_dir().display().to_string();
    for values in [seed_values(), local_stack_values()] {
        let values = values.display().to_string();
        let out = helm(&["lint", "--strict", &chart, "-f", &values])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "helm lint --strict -f {values}:\n{stdout}");
        ensure!(
            !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "helm lint -f {values} reports problems:\n{stdout}"
        );
        // Render too: lint does not fail on every template error.
        let docs = render(&["-f", &values])?;
        assert!(!docs.is_empty(), "{values} renders nothing");
    }
    Ok(())
}

#[test]
fn the_seed_values_configure_eklet_exactly_as_the_seed_describes() -> anyhow::Result<()> {
    let values = read_values(&seed_values())?;
    let docs = render(&["-f", &seed_values().display().to_string()])?;

    let eklet = object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?;
    let line = command_line(container(eklet, "eklet")?);
    assert_eq!(
        line.first().map(String::as_str),
        Some("eklet"),
        "eklet runs `tke-resilience eklet`: {line:?}"
    );
    let subnets = values["cloud"]["subnets"].as_array().context("seed subnets")?;
    for subnet in subnets {
        let flag = format!("--subnet={}={}", str_at(subnet, "/id")?, str_at(subnet, "/zone")?);
        assert!(line.contains(&flag), "{flag} missing from {line:?}");
    }
    for (flag, pointer) in [
        ("--vpc-id", "/cloud/vpcID"),
        ("--region", "/cloud/regionLong"),
        ("--pod-used-apiserver", "/eklet/podUsedApiserver"),
        ("--cluster-id", "/cloud/vpcID"),
    ] {
        let expected = format!("{flag}={}", str_at(&values, pointer)?);
        assert!(line.contains(&expected), "{expected} missing from {line:?}");
    }
    // The seed's install shows both eklet and eks-admission, and (not TKE) tke-scheduler.
    for name in [format!("eks-admission-{RELEASE}"), format!("scheduler-{RELEASE}")] {
        object(&docs, "Deployment", &name)?;
    }
    let eks_config = object(&docs, "ConfigMap", "eks-config")?;
    assert_eq!(eks_config["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        eks_config["data"]["AUTO_SCALE_EKS"], "true",
        "the global switch defaults to on"
    );
    Ok(())
}

#[test]
fn the_local_stack_values_point_eklet_at_cloudsim() -> anyhow::Result<()> {
    let values = read_values(&local_stack_values())?;
    let docs = render(&["-f", &local_stack_values().display().to_string()])?;
    let eklet = object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?;
    let line = command_line(container(eklet, "eklet")?);
    let endpoint = format!("--cloud-endpoint={}", str_at(&values, "/cloud/endpoint")?);
    assert!(line.contains(&endpoint), "{endpoint} missing from {line:?}");
    let cluster_id = format!("--cluster-id={}", str_at(&values, "/cloud/uniqueID")?);
    assert!(line.contains(&cluster_id), "uniqueID wins over vpcID: {line:?}");
    Ok(())
}

#[test]
fn credentials_reach_eklet_only_through_the_secret() -> anyhow::Result<()> {
    let values = read_values(&seed_values())?;
    let id = str_at(&values, "/cloud/secretID")?;
    let key = str_at(&values, "/cloud/secretKey")?;
    let text = render_text(&["-f", &seed_values().display().to_string()])?;
    assert!(
        !text.contains(id) && !text.contains(key),
        "a credential appears in clear in the rendered chart"
    );

    let docs = documents(&text)?;
    let secret_name = format!("{RELEASE}-cloud-credentials");
    let secret = object(&docs, "Secret", &secret_name)?;
    let decode = |field: &str| -> anyhow::Result<String> {
        let b64 = str_at(secret, &format!("/data/{field}"))?;
        Ok(String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(b64)?,
        )?)
    };
    assert_eq!(decode("secretID")?, id);
    assert_eq!(decode("secretKey")?, key);

    let eklet = container(object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?, "eklet")?;
    // Tencent's chart passed them as --secret-id=$(SECRET_ID); none of that here.
    let line = command_line(eklet);
    assert!(
        line.iter()
            .all(|arg| !arg.starts_with("--secret") && !arg.contains("$(")),
        "credentials are never arguments: {line:?}"
    );
    for (env, field) in [
        ("TENCENTCLOUD_SECRET_ID", "secretID"),
        ("TENCENTCLOUD_SECRET_KEY", "secretKey"),
    ] {
        let var = eklet["env"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == env))
            .with_context(|| format!("eklet has no {env}"))?;
        assert_eq!(
            var["valueFrom"]["secretKeyRef"]["name"],
            secret_name.as_str(),
            "{env}"
        );
        assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], field, "{env}");
        assert!(var.get("value").is_none(), "{env} has a literal value");
    }

    // With an existing Secret the chart renders none of its own and points eklet at that one.
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "cloud.secretID=,cloud.secretKey=,cloud.existingSecret=my-keys",
    ])?;
    assert!(
        names_of(&docs, "Secret").is_empty(),
        "no Secret rendered with cloud.existingSecret"
    );
    let eklet = container(object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?, "eklet")?;
    let refs: Vec<&Value> = eklet["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["valueFrom"].get("secretKeyRef"))
        .collect();
    assert_eq!(refs.len(), 2);
    assert!(refs.iter().all(|r| r["name"] == "my-keys"), "{refs:?}");
    Ok(())
}

#[test]
fn no_role_of_the_chart_grants_a_wildcard() -> anyhow::Result<()> {
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--kube-version",
        "1.36.0",
    ])?;
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert!(
        roles.len() >= 4,
        "the chart's roles did not render: {}",
        roles.len()
    );
    for role in roles {
        let name = &role["metadata"]["name"];
        let rules = role["rules"]
            .as_array()
            .with_context(|| format!("{name} has no rules"))?;
        for rule in rules {
            for field in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                let wildcard = rule[field]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i.as_str().is_some_and(|s| s.contains('*'))));
                assert!(!wildcard, "{name} grants {field} \"*\": {rule}");
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{name} grants non-resource URLs: {rule}"
            );
        }
    }
    // Bindings refer to the chart's own roles, or to the ones Kubernetes ships for a scheduler.
    let ours: Vec<String> = [names_of(&docs, "ClusterRole"), names_of(&docs, "Role")].concat();
    let upstream = [
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
    ];
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let role = str_at(binding, "/roleRef/name")?;
        assert!(
            ours.iter().any(|r| r == role) || upstream.contains(&role),
            "{} binds {role}, which is neither the chart's nor a scheduler role",
            binding["metadata"]["name"]
        );
    }
    Ok(())
}

#[test]
fn values_the_schema_rejects_are_named_in_the_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The seed's values block as written, placeholders and all.
    let raw_seed = dir.path().join("seed-placeholders.yaml");
    std::fs::write(
        &raw_seed,
        r#"cloud:
  appID: "{腾讯云账号APPID}"
  ownerUIN: "{腾讯云用户账号ID}"
  secretID: "{腾讯云账号secretID}"
  secretKey: "{腾讯云账号secretKey}"
  vpcID: "{EKS POD放置的VPC ID}"
  regionShort: "{EKS POD 放置的region简称}"
  regionLong: "{EKS POD 放置的region全称}"
  subnets:
    - id: "{EKS POD 放置的子网ID}"
      zone: "{EKS POD 放置的可用区}"
eklet:
  podUsedApiserver: "{当前集群的API Server地址}"
"#,
    )?;
    let seed = seed_values().display().to_string();
    let raw = raw_seed.display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["-f", &raw],
            vec!["/cloud/subnets/0/id", "/cloud/vpcID", "/eklet/podUsedApiserver"],
        ),
        (
            vec![],
            vec!["/cloud/secretID", "/cloud/subnets", "/eklet/podUsedApiserver"],
        ),
        (
            vec!["-f", &seed, "--set", "cloud.subnets[0].id=sn-1"],
            vec!["/cloud/subnets/0/id"],
        ),
        (
            vec!["-f", &seed, "--set", "cloud.subnets[0].zone=guangzhou"],
            vec!["/cloud/subnets/0/zone"],
        ),
        (
            vec!["-f", &seed, "--set", "eklet.waitSandboxRunningTimeout=1day"],
            vec!["/eklet/waitSandboxRunningTimeout"],
        ),
        (
            vec!["-f", &seed, "--set", "cloud.secretKey="],
            vec!["/cloud/secretKey"],
        ),
        (
            vec!["-f", &seed, "--set", "eksAdmission.autoScaleEKS=maybe"],
            vec!["/eksAdmission/autoScaleEKS"],
        ),
        (
            vec!["-f", &seed, "--set", "eklet.podUsedApiServer=https://x:6443"],
            vec!["podUsedApiServer"],
        ),
        (
            vec!["-f", &seed, "--set", "eklet.replicaCount=-1"],
            vec!["/eklet/replicaCount"],
        ),
        (
            vec!["-f", &seed, "--set", "eklet.streaming.maxSessions=0"],
            vec!["/eklet/streaming/maxSessions"],
        ),
        (
            vec!["-f", &seed, "--set", "eklet.streaming.idleTimeout=forever"],
            vec!["/eklet/streaming/idleTimeout"],
        ),
    ];
    for (args, fields) in cases {
        let error = render_error(&args)?;
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{args:?} failed for another reason than the schema:\n{error}"
        );
        for field in fields {
            assert!(
                error.contains(field),
                "{args:?}: the error does not name {field}:\n{error}"
            );
        }
    }
    Ok(())
}

#[test]
fn template_errors_name_the_value_to_change() -> anyhow::Result<()> {
    let seed = seed_values().display().to_string();
    let error = render_error(&[
        "-f",
        &seed,
        "--set",
        "eklet.image.ref=ccr.ccs.tencentyun.com/tkeimages/eklet-amd64:v2.17.15",
    ])?;
    assert!(error.contains("eklet.image.ref"), "{error}");
    let error = render_error(&["-f", &seed, "--set", "cloud.regionLong=,cloud.regionShort=xx"])?;
    assert!(
        error.contains("cloud.regionShort") && error.contains("cloud.regionLong"),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_short_region_alone_is_enough_and_tencents_quoted_switch_still_works() -> anyhow::Result<()> {
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "cloud.regionLong=,cloud.regionShort=cq",
        "--set-string",
        r#"eksAdmission.autoScaleEKS="false""#,
    ])?;
    let eklet = container(object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?, "eklet")?;
    let line = command_line(eklet);
    assert!(line.contains(&"--region=ap-chongqing".to_owned()), "{line:?}");
    let eks_config = object(&docs, "ConfigMap", "eks-config")?;
    assert_eq!(eks_config["data"]["AUTO_SCALE_EKS"], "false");

    // An empty switch leaves the key out: undefined, which allows bursting.
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "eksAdmission.autoScaleEKS=",
    ])?;
    let eks_config = object(&docs, "ConfigMap", "eks-config")?;
    assert!(eks_config["data"].get("AUTO_SCALE_EKS").is_none(), "{eks_config}");
    Ok(())
}

#[test]
fn tke_scheduler_runs_the_clusters_kube_scheduler_version_unless_switched_off() -> anyhow::Result<()> {
    let seed = seed_values().display().to_string();
    for version in ["1.33.2", "1.36.3"] {
        let docs = render(&["-f", &seed, "--kube-version", version])?;
        let scheduler = object(&docs, "Deployment", &format!("scheduler-{RELEASE}"))?;
        let image = str_at(container(scheduler, "kube-scheduler")?, "/image")?;
        assert_eq!(image, format!("registry.k8s.io/kube-scheduler:v{version}"));
        let line = command_line(container(scheduler, "extender")?);
        assert_eq!(
            line.first().map(String::as_str),
            Some("scheduler-extender"),
            "{line:?}"
        );
    }

    let docs = render(&["-f", &seed, "--set", "scheduler.enabled=false"])?;
    let leftovers: Vec<String> = docs
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("scheduler-"))
        .map(str::to_owned)
        .collect();
    assert!(
        leftovers.is_empty(),
        "scheduler.enabled=false still renders {leftovers:?}"
    );
    object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?;
    object(&docs, "Deployment", &format!("eks-admission-{RELEASE}"))?;
    Ok(())
}

#[test]
fn disruption_budgets_protect_only_components_with_a_standby() -> anyhow::Result<()> {
    let seed = seed_values().display().to_string();
    let docs = render(&["-f", &seed])?;
    let mut budgets = names_of(&docs, "PodDisruptionBudget");
    budgets.sort();
    assert_eq!(
        budgets,
        [
            format!("eklet-{RELEASE}"),
            format!("eks-admission-{RELEASE}"),
            format!("scheduler-{RELEASE}")
        ]
    );
    // A budget over a single replica would only block node drains.
    let docs = render(&["-f", &local_stack_values().display().to_string()])?;
    assert!(names_of(&docs, "PodDisruptionBudget").is_empty());
    Ok(())
}

#[test]
fn the_scheduler_configuration_is_the_shared_file_adapted_to_the_cluster() -> anyhow::Result<()> {
    let shared_path = tke_testbed::workspace_root().join("deploy/tke-scheduler.yaml");
    let shared = read_values(&shared_path)?;
    let port = 17777;
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        &format!("scheduler.extender.port={port}"),
    ])?;
    let config_map = object(&docs, "ConfigMap", &format!("scheduler-{RELEASE}-config"))?;
    let config: Value = serde_saphyr::from_str(str_at(config_map, "/data/tke-scheduler.yaml")?)?;

    assert_eq!(config["kind"], shared["kind"]);
    assert_eq!(
        config["profiles"], shared["profiles"],
        "the profiles are the shared file's"
    );
    assert!(
        config.pointer("/clientConnection/kubeconfig").is_none(),
        "in a cluster: the service account"
    );
    assert_eq!(config["leaderElection"]["leaderElect"], true);
    assert_eq!(config["leaderElection"]["resourceName"], "tke-scheduler");
    assert_eq!(config["leaderElection"]["resourceNamespace"], NAMESPACE);
    let rendered = config["extenders"].as_array().context("rendered extenders")?;
    let original = shared["extenders"].as_array().context("shared extenders")?;
    assert_eq!(rendered.len(), original.len());
    for (r, o) in rendered.iter().zip(original) {
        assert_eq!(r["urlPrefix"], format!("http://127.0.0.1:{port}/scheduler"));
        for key in ["filterVerb", "nodeCacheCapable", "ignorable", "httpTimeout"] {
            assert_eq!(r[key], o[key], "extender {key}");
        }
    }
    // The extender listens where kube-scheduler calls it.
    let scheduler = object(&docs, "Deployment", &format!("scheduler-{RELEASE}"))?;
    let line = command_line(container(scheduler, "extender")?);
    assert!(line.contains(&format!("--listen=127.0.0.1:{port}")), "{line:?}");

    // helm follows the chart's symlink when it packages, so the released chart carries the file.
    let out_dir = tempfile::tempdir()?;
    let chart = chart_dir().display().to_string();
    let out = helm(&["package", &chart, "-d", &out_dir.path().display().to_string()])?;
    ensure!(
        out.status.success(),
        "helm package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = std::fs::read_dir(out_dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("helm package wrote no .tgz")?;
    let packed = Command::new("tar")
        .arg("-xzOf")
        .arg(&archive)
        .arg("tke-resilience/files/tke-scheduler.yaml")
        .output()?;
    ensure!(
        packed.status.success(),
        "the package lacks files/tke-scheduler.yaml"
    );
    assert_eq!(
        packed.stdout,
        std::fs::read(&shared_path)?,
        "the packaged configuration is deploy/'s"
    );
    Ok(())
}

/// Every argument the chart passes to `tke-resilience` parses: `--help` after them makes clap
/// check each flag and value without starting the component.
#[test]
fn the_binary_accepts_every_argument_the_chart_renders() -> anyhow::Result<()> {
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "policy.localSwitchOverrides=true,policy.allowFixedIP=true,cloud.securityGroupIDs[0]=sg-abc123",
        "--set",
        "policy.fixedIPAnnotations[0]=tke.cloud.tencent.com/networks=tke-route-eni",
    ])?;
    let ours = [
        (format!("eklet-{RELEASE}"), "eklet"),
        (format!("eks-admission-{RELEASE}"), "eks-admission"),
        (format!("scheduler-{RELEASE}"), "extender"),
    ];
    let mut refused = Vec::new();
    for (deployment, name) in ours {
        let line = command_line(container(object(&docs, "Deployment", &deployment)?, name)?);
        let out = Command::new(support::binary())
            .args(&line)
            .arg("--help")
            .output()?;
        if !out.status.success() {
            refused.push(format!(
                "{deployment}/{name}: {line:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if !refused.is_empty() {
        bail!(
            "tke-resilience refuses the chart's arguments:\n{}",
            refused.join("\n")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The chart in a real cluster.

/// A component process, for readiness checks and the log scan.
struct Component {
    name: &'static str,
    /// The ServiceAccount it authenticates as, whose refusals count.
    account: Option<String>,
    proc: tke_testbed::Proc,
}

const WALKTHROUGH: &str = "nginx-deployment";

/// The components of the walkthrough, run as the chart's containers would run them.
impl Installed {
    fn spawn(
        &self,
        name: &'static str,
        account: Option<&str>,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Component> {
        // Errors, not the backtraces a developer's RUST_BACKTRACE would add to them.
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("RUST_BACKTRACE", "0"));
        Ok(Component {
            name,
            account: account.map(str::to_owned),
            proc: self.cp.spawn_process(name, program, args, &env)?,
        })
    }

    /// `tke-resilience <the chart's arguments>` as the component's ServiceAccount.
    async fn ours(
        &self,
        name: &'static str,
        deployment: &str,
        container: &str,
        account: &str,
    ) -> anyhow::Result<Component> {
        let (line, env) = self.command_line(deployment, container, account).await?;
        self.spawn(name, Some(account), &support::binary(), &line, &env)
    }

    /// The upstream kube-scheduler with the chart's command line and the configuration the chart
    /// installed, as ServiceAccount `account`.
    async fn kube_scheduler(&self, account: &str) -> anyhow::Result<Component> {
        let deployment = format!("scheduler-{RELEASE}");
        let (line, env) = self
            .container(&deployment, "kube-scheduler", &format!("{deployment}-0"))
            .await?;
        let kubeconfig = self
            .service_account_kubeconfig(account)
            .await?
            .display()
            .to_string();
        let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(self.client.clone(), NAMESPACE);
        let installed = config_maps.get(&format!("{deployment}-config")).await?;
        let text = installed
            .data
            .and_then(|d| d.get("tke-scheduler.yaml").cloned())
            .context("the scheduler ConfigMap has no tke-scheduler.yaml")?;
        let mut config: Value = serde_saphyr::from_str(&text)?;
        // In a pod the client is the service account's in-cluster configuration; here, its kubeconfig.
        config["clientConnection"]["kubeconfig"] = Value::from(kubeconfig.clone());
        let path = self.dir.join("tke-scheduler.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        ensure!(
            line.first().is_some_and(|c| c == "kube-scheduler"),
            "the scheduler container runs {line:?}"
        );
        let mut args: Vec<String> = line
            .into_iter()
            .skip(1)
            .map(|arg| {
                if arg.starts_with("--config=") {
                    format!("--config={}", path.display())
                } else {
                    arg
                }
            })
            .collect();
        args.extend([
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.ports.scheduler),
        ]);
        self.spawn(
            "tke-scheduler",
            Some(account),
            &self.cp.bin("kube-scheduler"),
            &args,
            &env,
        )
    }
}

impl Component {
    /// Polls `check` until it holds, failing early with the log when the process exits or the
    /// apiserver refuses it something.
    async fn until<F, Fut>(&mut self, what: &str, mut check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.proc.exited() {
                bail!(
                    "{} exited with {status} while waiting for {what}:\n{}",
                    self.name,
                    self.proc.log_tail(40)
                );
            }
            let refusals = self.refusals();
            if !refusals.is_empty() {
                bail!(
                    "waiting for {what}, the apiserver refused {}:\n{}",
                    self.name,
                    refusals.join("\n")
                );
            }
            if check().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{what}: not after {PATIENCE:?}; {} log:\n{}",
                    self.name,
                    self.proc.log_tail(40)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Log lines in which the apiserver refused the component: RBAC's 403 ("... is forbidden: User
    /// \"system:serviceaccount:<namespace>:<account>\" cannot ...") for its own account, or a 401
    /// "Unauthorized". A request eklet's kubelet API refuses someone else is not the component's
    /// refusal, and kube-scheduler's flag dump mentions `--authorization-webhook-cache-unauthorized-ttl`.
    fn refusals(&self) -> Vec<String> {
        let Some(account) = &self.account else {
            return Vec::new();
        };
        let user = format!("system:serviceaccount:{NAMESPACE}:{account}");
        let log = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        log.lines()
            .filter(|line| {
                (line.to_lowercase().contains("forbidden") && line.contains(&user))
                    || line.contains("Unauthorized")
            })
            .map(|line| format!("{}: {line}", self.name))
            .collect()
    }
}

/// What went wrong, for a failed wait: the refused requests first, then each component's last lines.
fn diagnosis(components: &[&Component]) -> String {
    let mut text = String::new();
    let refusals: Vec<String> = components.iter().flat_map(|c| c.refusals()).collect();
    if !refusals.is_empty() {
        text.push_str(&format!("refused requests:\n{}\n", refusals.join("\n")));
    }
    for c in components {
        text.push_str(&format!(
            "--- {} (log {}):\n{}\n",
            c.name,
            c.proc.log.display(),
            c.proc.log_tail(15)
        ));
    }
    text
}

/// Runs `work`, failing at once (instead of at its timeout) when the apiserver refuses a component.
async fn unless_refused<T>(
    components: &[&Component],
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let refused = async {
        loop {
            let refusals: Vec<String> = components.iter().flat_map(|c| c.refusals()).collect();
            if !refusals.is_empty() {
                return refusals;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        result = work => result.with_context(|| diagnosis(components)),
        refusals = refused => bail!("the apiserver refused the chart's service accounts:\n{}", refusals.join("\n")),
    }
}

/// The seed's nginx-deployment (4 replicas, AUTO_SCALE_EKS "true", LOCAL_REPLICAS "1"), with
/// `schedulerName: tke-scheduler` as the seed says for a cluster that is not the TKE distribution.
fn seed_walkthrough() -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let mut deployment = support::admission::deployment(
        WALKTHROUGH,
        4,
        &[("AUTO_SCALE_EKS", "true"), ("LOCAL_REPLICAS", "1")],
        serde_json::json!({"imagePullPolicy": "IfNotPresent"}),
    )?;
    if let Some(spec) = deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.scheduler_name = Some("tke-scheduler".to_owned());
        // The seed's default grace period: a pod with none is deleted by the apiserver at once, so
        // eklet's graceful deletion (sandbox first, then the Pod) would go untested.
        spec.termination_grace_period_seconds = None;
    }
    Ok(deployment)
}

/// A pod on the virtual node whose env comes from a ConfigMap and a Secret; returns its name.
async fn cloud_pod_with_env(
    client: &kube::Client,
    namespace: &str,
    virtual_node: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
    let post = kube::api::PostParams::default();
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "greeting"}, "data": {"GREETING": "hello from the IDC"}
    }))?;
    kube::Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&post, &config_map)
        .await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "password"}, "stringData": {"PASSWORD": "s3cret"}
    }))?;
    kube::Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&post, &secret)
        .await?;
    let name = "env-from-config";
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": virtual_node},
            "tolerations": [tke_policy::virtual_node::burst_toleration()],
            "containers": [{
                "name": "app",
                "image": "busybox:1.36",
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "GREETING"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "password", "key": "PASSWORD"}}},
                ],
            }],
        },
    }))?;
    kube::Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&post, &pod)
        .await?;
    Ok(name.to_owned())
}

/// Running pods on the local node and on the virtual node.
fn placement(
    pods: &[std::sync::Arc<k8s_openapi::api::core::v1::Pod>],
    virtual_node: &str,
) -> (usize, usize, usize) {
    let running: Vec<_> = pods
        .iter()
        .filter(|p| support::admission::is_running(p))
        .collect();
    let on = |node: &str| {
        running
            .iter()
            .filter(|p| support::admission::node_of(p) == Some(node))
            .count()
    };
    (on(LOCAL_NODE), on(virtual_node), pods.len())
}

async fn leftovers<K>(api: kube::Api<K>) -> anyhow::Result<Vec<String>>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let selector = kube::api::ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    Ok(api
        .list(&selector)
        .await?
        .items
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                K::kind(&Default::default()),
                o.meta().name.clone().unwrap_or_default()
            )
        })
        .collect())
}

#[tokio::test]
async fn the_seed_walkthrough_runs_on_the_charts_own_service_accounts_and_uninstall_cleans_up()
-> anyhow::Result<()> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use kube::Api;

    let chart = Installed::install(0).await?;
    let client = chart.client.clone();
    let virtual_node = format!("eklet-{}", chart.subnet_id()?);

    let mut cloudsim = Component {
        name: "cloudsim",
        account: None,
        proc: chart.cloudsim().await?,
    };
    let eklet_sa = format!("eklet-{RELEASE}");
    let admission_sa = format!("eks-admission-{RELEASE}");
    let scheduler_sa = format!("scheduler-{RELEASE}");
    let mut eklet = chart.ours("eklet", &eklet_sa, "eklet", &eklet_sa).await?;
    let mut admission = chart
        .ours("eks-admission", &admission_sa, "eks-admission", &admission_sa)
        .await?;
    let mut extender = chart
        .ours("scheduler-extender", &scheduler_sa, "extender", &scheduler_sa)
        .await?;
    let mut scheduler = chart.kube_scheduler(&scheduler_sa).await?;

    let nodes: Api<core::Node> = Api::all(client.clone());
    eklet
        .until(&format!("virtual node {virtual_node} Ready"), || {
            let nodes = nodes.clone();
            let name = virtual_node.clone();
            async move {
                nodes.get_opt(&name).await.ok().flatten().is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
            }
        })
        .await?;
    let admission_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], chart.ports.admission_metrics));
    admission
        .until("eks-admission to lead", || async move {
            support::admission::http_get(admission_metrics, "/metrics")
                .await
                .is_ok_and(|text| support::admission::sample(&text, "eks_admission_leader") == Some(1.0))
        })
        .await?;
    let extender_addr = std::net::SocketAddr::from(([127, 0, 0, 1], chart.ports.extender));
    extender
        .until("the extender's caches", || async move {
            support::admission::http_get(extender_addr, "/readyz")
                .await
                .is_ok()
        })
        .await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), NAMESPACE);
    scheduler
        .until("tke-scheduler to hold its Lease", || {
            let leases = leases.clone();
            async move {
                leases
                    .get_opt("tke-scheduler")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .is_some()
            }
        })
        .await?;

    // The seed's walkthrough: 4 replicas, LOCAL_REPLICAS 1 → 1 local and 3 in the cloud.
    let deployments: Api<apps::Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&kube::api::PostParams::default(), &seed_walkthrough()?)
        .await?;
    let all = [&eklet, &admission, &extender, &scheduler];
    let pods = unless_refused(
        &all,
        support::admission::wait_for_pods(
            &client,
            "default",
            WALKTHROUGH,
            "1 local and 3 cloud pods Running",
            |p| placement(p, &virtual_node) == (1, 3, 4),
        ),
    )
    .await?;
    assert_eq!(placement(&pods, &virtual_node), (1, 3, 4));
    let instances = chart.cloud_instances().await?;
    assert_eq!(instances, 3, "one cloud instance per pod on {virtual_node}");

    // What Prometheus scrapes from the scheduler pod: the extender's own metrics port (its filter
    // port stays on loopback) counts the placements it decided.
    let extender_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], chart.ports.extender_metrics));
    let text = support::admission::http_get(extender_metrics, "/metrics").await?;
    let decided = |outcome: &str| {
        support::admission::sample(
            &text,
            &format!("tke_extender_decisions_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or_default()
    };
    assert!(
        decided("Local") >= 1.0 && decided("Cloud") >= 3.0,
        "the extender's metrics port shows its decisions:\n{text}"
    );

    // `kubectl logs` of a cloud pod: the apiserver calls eklet's kubelet API with its client
    // certificate, which eklet verifies against the CA the chart names and authorises with a
    // SubjectAccessReview.
    let cloud_pod = pods
        .iter()
        .find(|p| support::admission::node_of(p) == Some(virtual_node.as_str()))
        .and_then(|p| p.metadata.name.clone())
        .context("no cloud pod")?;
    let kubectl = chart.cp.bin("kubectl");
    let kubeconfig = chart.cp.kubeconfig().display().to_string();
    let logs = || {
        let (kubectl, kubeconfig, pod) = (kubectl.clone(), kubeconfig.clone(), cloud_pod.clone());
        async move {
            tokio::process::Command::new(&kubectl)
                .args(["--kubeconfig", &kubeconfig, "logs", "-n", "default", &pod])
                .output()
                .await
                .is_ok_and(|out| out.status.success() && !out.stdout.is_empty())
        }
    };
    unless_refused(&all, async {
        Ok(tke_testbed::wait::until(PATIENCE, "kubectl logs of a cloud pod", logs).await?)
    })
    .await?;

    // Scale to 3: a cloud pod is the one removed.
    deployments
        .patch(
            WALKTHROUGH,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await?;
    let pods = unless_refused(
        &all,
        support::admission::wait_for_pods(&client, "default", WALKTHROUGH, "1 local and 2 cloud pods", |p| {
            placement(p, &virtual_node) == (1, 2, 3)
        }),
    )
    .await?;
    assert_eq!(placement(&pods, &virtual_node), (1, 2, 3));
    unless_refused(
        &all,
        cloudsim.until("2 cloud instances left", || async {
            chart.cloud_instances().await.is_ok_and(|n| n == 2)
        }),
    )
    .await?;

    // A cloud pod whose environment comes from a ConfigMap and a Secret: eklet reads both.
    let env_pod = cloud_pod_with_env(&client, "default", &virtual_node).await?;
    let pods: Api<core::Pod> = Api::namespaced(client.clone(), "default");
    let running = |name: &str| {
        let (pods, name) = (pods.clone(), name.to_owned());
        async move {
            pods.get_opt(&name)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| support::admission::is_running(&p))
        }
    };
    unless_refused(&all, async {
        Ok(tke_testbed::wait::until(
            PATIENCE,
            "the pod with env from a ConfigMap and a Secret Running",
            || running(&env_pod),
        )
        .await?)
    })
    .await?;
    pods.delete(&env_pod, &kube::api::DeleteParams::default()).await?;
    unless_refused(&all, async {
        Ok(
            tke_testbed::wait::until(PATIENCE, "the pod with env deleted", || {
                let pods = pods.clone();
                let name = env_pod.clone();
                async move { pods.get_opt(&name).await.is_ok_and(|p| p.is_none()) }
            })
            .await?,
        )
    })
    .await?;

    // A bearer token on the kubelet API: eklet authenticates it (TokenReview) and, since
    // eks-admission's account may not read node logs, refuses it (SubjectAccessReview): 403, not 401.
    tke_testbed::install_crypto();
    let token = chart.service_account_token(&admission_sa).await?;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    let url = format!(
        "https://127.0.0.1:{}/containerLogs/default/{cloud_pod}/web",
        chart.ports.eklet_kubelet
    );
    let status = http.get(&url).bearer_auth(&token).send().await?.status();
    assert_eq!(
        status,
        reqwest::StatusCode::FORBIDDEN,
        "a token without nodes/log on {url}"
    );

    // Uninstall: first the workload, which eklet drains from the cloud while it still runs...
    deployments
        .delete(WALKTHROUGH, &kube::api::DeleteParams::background())
        .await?;
    unless_refused(
        &all,
        support::admission::wait_for_pods(
            &client,
            "default",
            WALKTHROUGH,
            "the walkthrough's pods gone",
            |p| p.is_empty(),
        ),
    )
    .await?;
    unless_refused(
        &all,
        cloudsim.until("no cloud instances left", || async {
            chart.cloud_instances().await.is_ok_and(|n| n == 0)
        }),
    )
    .await?;

    // Not one request was refused: the chart's roles cover everything the components did.
    let refusals: Vec<String> = all.iter().flat_map(|c| c.refusals()).collect();
    assert!(
        refusals.is_empty(),
        "the apiserver refused the chart's service accounts:\n{}",
        refusals.join("\n")
    );

    // ...then the chart, which must go without anything stuck on a finalizer.
    chart
        .helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "2m",
        ])
        .await?;
    for component in [&mut eklet, &mut admission, &mut extender, &mut scheduler] {
        component.proc.kill();
    }
    let mut left = Vec::new();
    for ns in [NAMESPACE, "kube-node-lease"] {
        left.extend(leftovers(Api::<apps::Deployment>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<core::ServiceAccount>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<core::Secret>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<core::ConfigMap>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<core::Service>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<rbac::Role>::namespaced(client.clone(), ns)).await?);
        left.extend(leftovers(Api::<rbac::RoleBinding>::namespaced(client.clone(), ns)).await?);
    }
    left.extend(leftovers(Api::<rbac::ClusterRole>::all(client.clone())).await?);
    left.extend(leftovers(Api::<rbac::ClusterRoleBinding>::all(client.clone())).await?);
    assert!(left.is_empty(), "helm uninstall left {left:?}");
    let config_maps: Api<core::ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    assert!(
        config_maps.get_opt("eks-config").await?.is_none(),
        "eks-config outlived the chart"
    );

    // Virtual nodes are eklet's, not the chart's, and eklet leaves them when it stops: deleting
    // them afterwards, as the chart's README says, must work with no finalizer in the way.
    let virtual_nodes = kube::api::ListParams::default().labels("node.kubernetes.io/instance-type=eklet");
    let stuck: Vec<String> = nodes
        .list(&virtual_nodes)
        .await?
        .items
        .into_iter()
        .filter(|n| n.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()))
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(
        stuck.is_empty(),
        "virtual nodes with finalizers after uninstall: {stuck:?}"
    );
    nodes
        .delete_collection(&kube::api::DeleteParams::default(), &virtual_nodes)
        .await?;
    tke_testbed::wait::until(PATIENCE, "the virtual nodes deleted", || {
        let (nodes, params) = (nodes.clone(), virtual_nodes.clone());
        async move { nodes.list(&params).await.is_ok_and(|l| l.items.is_empty()) }
    })
    .await?;
    assert_eq!(
        chart.cloud_instances().await?,
        0,
        "cloud instances outlived the chart"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The TKE distribution.

/// A loopback HTTP proxy in front of the real apiserver that adds `suffix` to the gitVersion of
/// `/version`, as a TKE distribution apiserver reports it (`v1.30.2-tke.1`). helm reads the
/// version from the server; `helm template --kube-version` cannot carry such a suffix.
async fn version_suffix_proxy(
    client: kube::Client,
    suffix: &'static str,
) -> anyhow::Result<std::net::SocketAddr> {
    use axum::{
        body::Body,
        extract::Request,
        http::{StatusCode, header},
        response::{IntoResponse, Response},
    };
    const LIMIT: usize = 64 << 20;
    async fn forward(client: kube::Client, request: Request, suffix: &str) -> anyhow::Result<Response> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, LIMIT).await?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut upstream = axum::http::Request::builder().method(parts.method).uri(&path);
        for name in [header::ACCEPT, header::CONTENT_TYPE] {
            if let Some(value) = parts.headers.get(&name) {
                upstream = upstream.header(name, value);
            }
        }
        let response = client
            .send(upstream.body(kube::client::Body::from(body.to_vec()))?)
            .await?;
        let (mut parts, body) = response.into_parts();
        let mut bytes = axum::body::to_bytes(Body::new(body), LIMIT).await?.to_vec();
        // client-go asks for /version?timeout=32s.
        if parts_path(&path) == "/version" {
            let mut version: Value = serde_json::from_slice(&bytes)?;
            let git = format!("{}{suffix}", version["gitVersion"].as_str().unwrap_or_default());
            version["gitVersion"] = Value::from(git);
            bytes = serde_json::to_vec(&version)?;
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        Ok(Response::from_parts(parts, Body::from(bytes)))
    }
    fn parts_path(path_and_query: &str) -> &str {
        path_and_query.split('?').next().unwrap_or(path_and_query)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |request: Request| {
        let client = client.clone();
        async move {
            forward(client, request, suffix)
                .await
                .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// `helm template --validate`: rendered with the capabilities of the server `kubeconfig` names.
fn render_for_server(kubeconfig: &Path) -> anyhow::Result<Vec<Value>> {
    render(&[
        "-f",
        &seed_values().display().to_string(),
        "--validate",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
    ])
}

#[tokio::test]
async fn the_tke_distribution_gets_no_tke_scheduler() -> anyhow::Result<()> {
    let cp = ControlPlane::shared().await?;
    let scheduler = format!("scheduler-{RELEASE}");

    // The community cluster of the test bed: tke-scheduler is part of the install.
    let docs = render_for_server(cp.kubeconfig())?;
    object(&docs, "Deployment", &scheduler)?;

    for suffix in ["-tke.1", "-tce.3"] {
        let addr = version_suffix_proxy(cp.client().await?, suffix).await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: tke\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: tke\n  user: {{}}\ncontexts:\n- name: tke\n  context:\n    cluster: tke\n    user: tke\n\
                 current-context: tke\n"
            ),
        )?;
        let docs = tokio::task::spawn_blocking(move || render_for_server(&kubeconfig)).await??;
        let scheduler_objects: Vec<String> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .filter(|n| n.starts_with(&scheduler))
            .map(str::to_owned)
            .collect();
        assert!(
            scheduler_objects.is_empty(),
            "a {suffix} cluster still gets {scheduler_objects:?}"
        );
        object(&docs, "Deployment", &format!("eklet-{RELEASE}"))?;
        object(&docs, "Deployment", &format!("eks-admission-{RELEASE}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalancer_moves_a_cloud_pod_home_on_the_charts_own_service_account_and_then_cools_down()
-> anyhow::Result<()> {
    use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Node};
    use kube::api::{ListParams, PostParams};

    let installed = Installed::install(0).await?;
    let chart = chart_dir().display().to_string();
    let [metrics_port] = tke_testbed::free_ports::<1>()?;
    let set = format!(
        "rebalance.enabled=true,rebalance.replicaCount=0,rebalance.holdDown=1s,rebalance.interval=1s,\
         rebalance.metricsPort={metrics_port}"
    );
    installed
        .helm(&[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            &set,
        ])
        .await?;

    // A node that looks virtual (kwok runs its pods) and a workload of two Ready pods on it.
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "eklet-subnet-rebalance",
            "labels": tke_policy::virtual_node::node_labels("ap-guangzhou-3"),
            "annotations": {tke_testbed::nodes::KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": [{"key": tke_policy::virtual_node::TAINT_KEY, "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "100"},
                   "capacity": {"cpu": "64", "memory": "256Gi", "pods": "100"}}
    }))?;
    kube::Api::<Node>::all(installed.client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    let namespace = installed.cp.namespace("rebalanced").await?;
    let replica_set: ReplicaSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"nodeName": "eklet-subnet-rebalance", "terminationGracePeriodSeconds": 0,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "web", "image": "nginx",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}
    }))?;
    kube::Api::<ReplicaSet>::namespaced(installed.client.clone(), &namespace)
        .create(&PostParams::default(), &replica_set)
        .await?;

    let account = format!("tke-rebalance-{RELEASE}");
    let mut rebalancer = installed
        .ours("tke-rebalance", &account, "tke-rebalance", &account)
        .await?;
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(installed.client.clone(), &namespace);
    // The replacement lands on the "virtual" node again (its template names it), so a move is
    // followed by a cool-down: eviction, both events and the Lease all on the chart's account.
    for reason in ["MovedToLocal", "RebalanceCoolDown"] {
        let events = events.clone();
        rebalancer
            .until(&format!("a {reason} event"), move || {
                let events = events.clone();
                async move {
                    let params = ListParams::default().fields(&format!("reason={reason}"));
                    events.list(&params).await.is_ok_and(|l| !l.items.is_empty())
                }
            })
            .await?;
    }
    // Cooling down: five more rounds judge the workload, and none evicts again.
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    rebalancer
        .until("five rounds in the cool-down", move || async move {
            let text = support::eklet::http_get(metrics, "/metrics")
                .await
                .unwrap_or_default();
            support::eklet::sample(&text, r#"tke_rebalance_skipped_total{reason="CoolDown"}"#)
                .is_some_and(|n| n >= 5.0)
        })
        .await?;
    let moved = events
        .list(&ListParams::default().fields("reason=MovedToLocal"))
        .await?;
    assert_eq!(moved.items.len(), 1, "not evicted again during the cool-down");
    Ok(())
}

// Monitoring: the Prometheus Operator objects and the Grafana dashboard.

const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

fn is_dashboard(doc: &Value) -> bool {
    doc["kind"] == "ConfigMap" && doc["metadata"]["labels"]["grafana_dashboard"] == "1"
}

/// Whether `labels` carries every `matchLabels` pair and meets every `In` expression of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels[k] == *v));
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            e["operator"] == "In"
                && e["values"]
                    .as_array()
                    .is_some_and(|vs| vs.contains(&labels[e["key"].as_str().unwrap_or_default()]))
        })
    });
    by_labels && by_expressions
}

/// The components (`app.kubernetes.io/component`) of the Deployments whose pods `selector` selects.
fn selected_components(docs: &[Value], selector: &Value) -> Vec<String> {
    let mut components: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .filter(|d| selects(selector, &d["spec"]["template"]["metadata"]["labels"]))
        .filter_map(|d| d["metadata"]["labels"]["app.kubernetes.io/component"].as_str())
        .map(str::to_owned)
        .collect();
    components.sort();
    components
}

/// The container ports of a Deployment, by name.
fn container_port(deployment: &Value, name: &str) -> Option<u64> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

#[test]
fn monitors_rules_and_the_dashboard_are_off_by_default() -> anyhow::Result<()> {
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "rebalance.enabled=true",
    ])?;
    for kind in MONITORING_KINDS {
        assert!(names_of(&docs, kind).is_empty(), "{kind} rendered by default");
    }
    assert!(
        !docs.iter().any(is_dashboard),
        "a dashboard ConfigMap rendered by default"
    );
    let services = names_of(&docs, "Service");
    assert_eq!(
        services,
        [format!("eklet-{RELEASE}")],
        "only eklet's Service by default"
    );
    // A misspelt switch would silently leave monitoring off; the schema names it instead.
    let error = render_error(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "metrics.serviceMonitors.enabled=true",
    ])?;
    assert!(error.contains("serviceMonitors"), "{error}");
    Ok(())
}

#[test]
fn the_service_monitor_scrapes_the_metrics_port_of_every_component_that_serves_one() -> anyhow::Result<()> {
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "metrics.serviceMonitor.enabled=true,rebalance.enabled=true",
        "--set",
        "metrics.serviceMonitor.additionalLabels.release=kube-prometheus-stack,metrics.serviceMonitor.interval=15s",
    ])?;
    let monitors: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ServiceMonitor").collect();
    let [monitor] = monitors[..] else {
        bail!("expected one ServiceMonitor, got {}", monitors.len());
    };
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "additionalLabels reach the ServiceMonitor, which kube-prometheus-stack selects on"
    );
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"][0], NAMESPACE);
    let endpoints = monitor["spec"]["endpoints"].as_array().context("endpoints")?;
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let port = str_at(&endpoints[0], "/port")?;
    assert_eq!(endpoints[0]["interval"], "15s");
    assert_eq!(
        endpoints[0]["honorLabels"], true,
        "without honorLabels the usage counters' namespace becomes exported_namespace"
    );

    // Every Service it selects names that port, and that port leads to a container port of the
    // component's pods (the Service and the Deployment select the same pods).
    let selector = &monitor["spec"]["selector"];
    let mut scraped = Vec::new();
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        if !selects(selector, &service["metadata"]["labels"]) {
            continue;
        }
        let component = str_at(service, "/metadata/labels/app.kubernetes.io~1component")?;
        let service_port = service["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == port))
            .with_context(|| format!("Service {} has no port {port}", service["metadata"]["name"]))?;
        let target = str_at(service_port, "/targetPort")?;
        let deployment = docs
            .iter()
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
            })
            .with_context(|| format!("no Deployment of {component}"))?;
        assert!(
            selects(
                &serde_json::json!({ "matchLabels": service["spec"]["selector"] }),
                &deployment["spec"]["template"]["metadata"]["labels"]
            ),
            "Service {} does not select {component}'s pods",
            service["metadata"]["name"]
        );
        assert!(
            container_port(deployment, target).is_some(),
            "{component}'s pods have no port {target}"
        );
        scraped.push(component.to_owned());
    }
    scraped.sort();
    assert_eq!(scraped, ["eklet", "eks-admission", "scheduler", "tke-rebalance"]);
    Ok(())
}

#[test]
fn the_pod_monitor_selects_the_metrics_port_of_the_components_pods() -> anyhow::Result<()> {
    let seed = seed_values().display().to_string();
    let docs = render(&[
        "-f",
        &seed,
        "--set",
        "metrics.podMonitor.enabled=true,metrics.podMonitor.additionalLabels.release=prom",
    ])?;
    let monitor = object(&docs, "PodMonitor", &format!("tke-resilience-{RELEASE}"))?;
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .context("endpoints")?;
    let port = str_at(&endpoints[0], "/port")?;
    let selector = &monitor["spec"]["selector"];
    // The scheduler pod: its extender's metrics port (the filter stays on loopback).
    assert_eq!(
        selected_components(&docs, selector),
        ["eklet", "eks-admission", "scheduler"]
    );
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        if selects(selector, &deployment["spec"]["template"]["metadata"]["labels"]) {
            assert!(
                container_port(deployment, port).is_some(),
                "{} has no container port {port}",
                deployment["metadata"]["name"]
            );
        }
    }
    assert!(names_of(&docs, "ServiceMonitor").is_empty());

    let error = render_error(&[
        "-f",
        &seed,
        "--set",
        "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true",
    ])?;
    assert!(
        error.contains("metrics.serviceMonitor.enabled") && error.contains("metrics.podMonitor.enabled"),
        "{error}"
    );
    Ok(())
}

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (in `{...}` or the lists of `by`, `on`, ...), strings, durations or Grafana
/// variables. A small lexer, enough for the expressions this chart ships.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_until = |i: usize, end: char| {
        chars[i..]
            .iter()
            .position(|&c| c == end)
            .map_or(chars.len(), |p| i + p + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_until(i + 1, c);
        } else if c == '{' {
            i = skip_until(i + 1, '}');
        } else if c == '[' {
            i = skip_until(i + 1, ']');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // An aggregation may put its `by (...)` or `without (...)` before its argument.
            let rest: String = chars[next..].iter().take(8).collect();
            let called = chars.get(next) == Some(&'(')
                || ["by", "without"].iter().any(|k| {
                    rest.strip_prefix(k)
                        .is_some_and(|r| r.starts_with(|c: char| c == '(' || c.is_whitespace()))
                });
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip_until(next + 1, ')');
            } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every series name our components export, from the chart README's tables of their metrics
/// (which tests/metrics.rs keeps equal to their registries; a counter adds `_total`, a histogram
/// `_bucket`, `_sum` and `_count`), and the kube-state-metrics metrics the chart uses:
/// kube_node_status_condition, kube_pod_status_phase, kube_pod_info (kube-state-metrics'
/// docs/metrics/cluster/node-metrics.md and workload/pod-metrics.md) and kube_pod_tolerations
/// (pod-metrics.md, v2.9 and later).
fn known_series() -> Vec<String> {
    let mut series: Vec<String> = [
        "kube_node_status_condition",
        "kube_pod_status_phase",
        "kube_pod_info",
        "kube_pod_tolerations",
    ]
    .map(str::to_owned)
    .into();
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("the chart README");
    for component in ["eklet", "eks-admission", "extender", "rebalance"] {
        let table = readme
            .split(&format!("<!-- {component}-metrics: begin -->"))
            .nth(1)
            .and_then(|rest| rest.split(&format!("<!-- {component}-metrics: end -->")).next())
            .unwrap_or_else(|| panic!("the {component} metrics table in the chart README"));
        for row in table.lines().filter_map(|l| l.strip_prefix("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            if let [name, kind, ..] = cells[..] {
                let name = name.trim_end_matches('`');
                match kind {
                    "histogram" => series.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
                    _ => series.push(name.to_owned()),
                }
            }
        }
    }
    series
}

#[test]
fn the_promql_lexer_finds_the_metric_names_and_nothing_else() {
    assert_eq!(
        metric_names(
            r#"sum by (action) (rate(eklet_cloud_errors_total{namespace="x",code=~"a|b"}[10m])) / on (action) group_left sum(ekelt_typo) > bool 0.2 * $price_core_hour"#
        ),
        ["eklet_cloud_errors_total", "ekelt_typo"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(m_bucket[$__rate_interval])))"),
        ["m_bucket"]
    );
}

#[test]
fn the_alert_rules_and_the_dashboard_query_only_metrics_that_exist() -> anyhow::Result<()> {
    let known = known_series();
    assert!(known.iter().any(|s| s == "eklet_leader"), "{known:?}");
    let docs = render(&[
        "-f",
        &seed_values().display().to_string(),
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.prometheusRule.additionalLabels.release=prom",
    ])?;
    let check = |what: &str, expr: &str| -> anyhow::Result<()> {
        let names = metric_names(expr);
        ensure!(!names.is_empty(), "{what} reads no metric: {expr}");
        let unknown: Vec<&String> = names.iter().filter(|n| !known.contains(n)).collect();
        ensure!(
            unknown.is_empty(),
            "{what} reads metrics nothing exports: {unknown:?} in {expr}"
        );
        Ok(())
    };

    let rule = object(&docs, "PrometheusRule", &format!("tke-resilience-{RELEASE}"))?;
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let mut alerts = Vec::new();
    for group in rule["spec"]["groups"].as_array().context("groups")? {
        for r in group["rules"].as_array().context("rules")? {
            let alert = str_at(r, "/alert")?;
            check(alert, str_at(r, "/expr")?)?;
            ensure!(r["labels"]["severity"].is_string(), "{alert} has no severity");
            alerts.push(alert.to_owned());
        }
    }
    // The burst path's ways of being down, each with its alert.
    for alert in [
        "TKEResilienceNoEkletLeader",
        "TKEResilienceVirtualNodeNotReady",
        "TKEResilienceCloudErrorRatioHigh",
        "TKEResilienceBurstPodsStuckPending",
        "TKEResilienceSandboxCreatesFailing",
    ] {
        assert!(
            alerts.iter().any(|a| a == alert),
            "{alert} missing from {alerts:?}"
        );
    }

    let dashboards: Vec<&Value> = docs.iter().filter(|d| is_dashboard(d)).collect();
    let [dashboard] = dashboards[..] else {
        bail!("expected one dashboard ConfigMap, got {}", dashboards.len());
    };
    let data = dashboard["data"].as_object().context("dashboard data")?;
    let (file, json) = data.iter().next().context("empty dashboard ConfigMap")?;
    let json: Value = serde_json::from_str(json.as_str().context("dashboard text")?)
        .with_context(|| format!("{file} is not JSON"))?;
    let panels = json["panels"].as_array().context("panels")?;
    let mut exprs = Vec::new();
    for panel in panels {
        let title = str_at(panel, "/title")?;
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.with_context(|| format!("panel {title} queries nothing"))?;
        for target in targets {
            let expr = str_at(target, "/expr")?;
            check(&format!("panel {title}"), expr)?;
            exprs.push(expr.to_owned());
        }
    }
    // The burst overview: create→Running quantiles, usage and the estimated cost.
    let all = exprs.join("\n");
    for needed in [
        "eklet_sandbox_create_to_running_seconds_bucket",
        "eklet_cloud_cpu_core_seconds_total",
        "eklet_cloud_memory_byte_seconds_total",
        "$price_core_hour",
        "$price_gib_hour",
    ] {
        assert!(all.contains(needed), "no panel uses {needed}");
    }
    let variables: Vec<&str> = json["templating"]["list"]
        .as_array()
        .context("templating")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for used in [
        "datasource",
        "release_namespace",
        "price_core_hour",
        "price_gib_hour",
        "price_gpu_hour",
    ] {
        assert!(
            variables.contains(&used),
            "dashboard variable {used} missing: {variables:?}"
        );
    }
    Ok(())
}

/// Copies a directory, following symlinks (the chart's files/tke-scheduler.yaml is one).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if std::fs::metadata(entry.path())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The chart's NOTES.txt as `helm install` would print it, with the seed's values and `set`:
/// `helm template` leaves NOTES out, so a copy of the chart renders it into a ConfigMap.
fn render_notes(set: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let chart = dir.path().join("tke-resilience");
    copy_dir(&chart_dir(), &chart)?;
    let templates = chart.join("templates");
    let notes = std::fs::read_to_string(templates.join("NOTES.txt"))?;
    std::fs::remove_file(templates.join("NOTES.txt"))?;
    std::fs::write(
        templates.join("_notes.tpl"),
        format!("{{{{- define \"test.notes\" -}}}}\n{notes}\n{{{{- end }}}}\n"),
    )?;
    std::fs::write(
        templates.join("notes.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | toJson }}\n",
    )?;
    let chart = chart.display().to_string();
    let seed = seed_values().display().to_string();
    let out = helm(&[
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "-f",
        &seed,
        "--set",
        set,
        "-s",
        "templates/notes.yaml",
    ])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = documents(&String::from_utf8_lossy(&out.stdout))?;
    Ok(str_at(object(&docs, "ConfigMap", "notes")?, "/data/notes")?.to_owned())
}

#[test]
fn the_notes_name_the_label_kube_prometheus_stack_selects_monitors_by() -> anyhow::Result<()> {
    // liqo#2805: a monitor without the Prometheus release's label is silently never scraped.
    let notes = render_notes("metrics.serviceMonitor.enabled=true")?;
    assert!(
        notes.contains("metrics.serviceMonitor.additionalLabels.release")
            && notes.contains("serviceMonitorSelector"),
        "{notes}"
    );
    let notes =
        render_notes("metrics.podMonitor.enabled=true,metrics.podMonitor.additionalLabels.release=kps")?;
    assert!(notes.contains("This PodMonitor carries release: kps."), "{notes}");
    let notes = render_notes("metrics.grafanaDashboard.enabled=false")?;
    assert!(
        !notes.contains("Monitor"),
        "monitoring notes without a monitor:\n{notes}"
    );
    Ok(())
}
