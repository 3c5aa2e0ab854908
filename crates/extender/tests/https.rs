//! The extender over HTTPS (`--tls-cert-file`/`--tls-private-key-file`): kube-scheduler with
//! `enableHTTPS: true` verifies the serving certificate and gets the same answers as over HTTP.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tke_extender::{ClusterView, Extender, PolicyConfig, Tls, bind, router, serve};

fn synced_view() -> anyhow::Result<ClusterView> {
    let mut view = ClusterView::new("kube-system", Duration::from_secs(60));
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "idc-1"}}))?;
    view.on_node(Event::Init);
    view.on_node(Event::InitApply(node));
    view.on_node(Event::InitDone);
    view.on_pod(Event::InitDone);
    view.on_config_map(Event::InitDone);
    view.on_claim(Event::InitDone);
    view.on_volume(Event::InitDone);
    Ok(view)
}

#[tokio::test]
async fn filter_calls_are_answered_over_https_with_the_configured_certificate() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let dir = std::env::temp_dir().join(format!("tke-extender-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = Tls {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&tls.cert, certified.cert.pem())?;
    std::fs::write(&tls.key, certified.signing_key.serialize_pem())?;

    let listener = bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let app = router(Extender::new(synced_view()?, PolicyConfig::default(), None));
    let server = tokio::spawn(serve(app, listener, Some(tls), handle.clone()));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes())?)
        .resolve("localhost", addr)
        .build()?;
    let body = json!({"Pod": {"metadata": {"name": "p", "uid": "u"}}, "Nodes": null, "NodeNames": ["idc-1"]});
    let url = format!("https://localhost:{}/scheduler/filter", addr.port());
    let response = client.post(&url).json(&body).send().await?;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["NodeNames"], json!(["idc-1"]));

    let plain = reqwest::Client::builder().resolve("localhost", addr).build()?;
    let answer = plain
        .post(url.replace("https://", "http://"))
        .json(&body)
        .send()
        .await;
    assert!(
        answer.is_err_and(|e| !e.is_status()),
        "plain HTTP is not served on the HTTPS port"
    );

    handle.shutdown();
    server.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
