//! The Helm chart in tests: where it is, helm against a test-bed control plane, and kubeconfigs
//! for the chart's own ServiceAccounts (so components run under the chart's RBAC, not as admin).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{Api, Client, api::PostParams};
use serde_json::Value;
use tke_testbed::ControlPlane;

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
