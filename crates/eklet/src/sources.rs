//! The IDC ConfigMaps and Secrets a provider keeps copies of (the `kubernetes` provider copies
//! them into the target cluster), followed for it: one metadata watch per kind tells the
//! provider every object's current version ([`Provider::source_version`]), and a source the
//! provider queues because a copy is behind ([`Provider::followed_sources`]) is read once and
//! handed over ([`Provider::source_read`]). This is the only place eklet watches those objects,
//! and the provider never calls eklet's apiserver.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;

use crate::{
    context::Context,
    provider::{Provider, Source, SourceKind, SourceObject},
};

/// A source that could not be read is read again after this long.
const READ_RETRY: Duration = Duration::from_secs(5);

/// Tells the provider the version of every ConfigMap or Secret as it changes (metadata only).
/// Never returns.
pub async fn watch_versions<K, P>(ctx: Arc<Context<P>>, kind: SourceKind)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    P: Provider,
{
    let api: Api<PartialObjectMeta<K>> = Api::all(ctx.client.clone());
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .boxed();
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(meta) => {
                failing = false;
                let (Some(namespace), Some(name), Some(version)) = (
                    meta.metadata.namespace,
                    meta.metadata.name,
                    meta.metadata.resource_version,
                ) else {
                    continue;
                };
                ctx.provider.source_version(
                    Source {
                        kind,
                        namespace,
                        name,
                    },
                    version,
                );
            }
            Err(error) => {
                if !failing {
                    let kind = kind.as_str();
                    tracing::warn!(%error, kind, "watching the IDC for changes failed; copies may lag");
                }
                failing = true;
            }
        }
    }
}

/// Reads each source the provider queues, once, and hands it over; a failed read is retried.
/// Returns when the provider drops its queue.
pub async fn read_queued<P: Provider>(ctx: Arc<Context<P>>, mut queued: mpsc::UnboundedReceiver<Source>) {
    let (retry, mut retried) = mpsc::unbounded_channel::<Source>();
    loop {
        let source = tokio::select! {
            source = queued.recv() => match source {
                Some(source) => source,
                None => return,
            },
            Some(source) = retried.recv() => source,
        };
        match read(&ctx.client, &source).await {
            Ok(object) => ctx.provider.source_read(&source, object).await,
            Err(error) => {
                let what = format!("{}/{}/{}", source.kind.as_str(), source.namespace, source.name);
                tracing::warn!(%error, source = %what, "reading an IDC object for its copies failed; retrying");
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(READ_RETRY).await;
                    let _ = retry.send(source);
                });
            }
        }
    }
}

async fn read(client: &Client, source: &Source) -> kube::Result<Option<SourceObject>> {
    Ok(match source.kind {
        SourceKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), &source.namespace)
            .get_opt(&source.name)
            .await?
            .map(SourceObject::ConfigMap),
        SourceKind::Secret => Api::<Secret>::namespaced(client.clone(), &source.namespace)
            .get_opt(&source.name)
            .await?
            .map(SourceObject::Secret),
    })
}
