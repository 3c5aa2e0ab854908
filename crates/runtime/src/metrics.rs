//! The plain-HTTP port every component serves next to its work: `/metrics`, the component's
//! registry as OpenMetrics text for Prometheus, and `/healthz`, `ok` while the process serves. One
//! implementation, so the paths, the content type and the bind-before-start rule are the same in
//! eklet, eks-admission, tke-rebalance and the scheduler extender (which also serves them on its
//! filter port). Every component's registry carries the same `<prefix>_build_info{version}`.

use std::net::SocketAddr;

use axum::{Router, http::header, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

/// The content type of `/metrics`: what `prometheus_client`'s text encoder writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving /metrics and /healthz: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Registers `build_info`, always 1, with this build's version (the workspace's, which every
/// component shares) as its label, so a query can tell which version each process runs.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    let build_info = Family::<VersionLabels, Gauge>::default();
    build_info
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    registry.register(
        "build_info",
        format!("Always 1; the version of this {component} as a label"),
        build_info,
    );
}

/// Binds `addr` now, so that a taken port fails start-up instead of a background task.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// `GET /metrics` (what `render` returns, as [`OPENMETRICS`]) and `GET /healthz`, to serve alone
/// ([`serve`]) or merged into a component's own routes.
pub fn routes<S>(render: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = render();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves [`routes`] on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    axum::serve(listener, routes::<()>(render))
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response");
        response
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text_and_healthz_says_ok() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve(listener, || "up 1\n# EOF\n".to_owned()));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.lines().next().is_some_and(|l| l.ends_with(" 200 OK")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("content-type: {OPENMETRICS}")),
            "{metrics}"
        );
        assert!(metrics.ends_with("up 1\n# EOF\n"), "{metrics}");
        let health = get(addr, "/healthz").await;
        assert!(
            health.lines().next().is_some_and(|l| l.ends_with(" 200 OK")) && health.ends_with("\r\n\r\nok"),
            "{health}"
        );
    }

    #[tokio::test]
    async fn a_taken_port_fails_the_bind() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
        let addr = taken.local_addr().expect("address");
        assert!(matches!(bind(addr).await, Err(Error::Bind { .. })));
    }
}
