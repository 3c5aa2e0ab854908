//! Waiting on conditions, never on fixed sleeps: a watch when the caller has an API and a selector,
//! a short poll for one-off checks during start-up.

use std::{future::Future, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Polls `check` every 100 ms until it returns true, or fails after `timeout` naming `what`.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let poll = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(timeout, poll)
        .await
        .map_err(|_| Error::Timeout(timeout, what.to_owned()))
}

/// Watches the objects `config` selects until `done` holds for the current set of them, and returns
/// that set. `what` names the condition in the timeout error.
pub async fn for_objects<K, F>(
    api: Api<K>,
    config: watcher::Config,
    timeout: Duration,
    what: &str,
    mut done: F,
) -> Result<Vec<std::sync::Arc<K>>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: FnMut(&[std::sync::Arc<K>]) -> bool,
{
    let (store, writer) = reflector::store();
    let mut stream = watcher(api, config).default_backoff().reflect(writer).boxed();
    let watch = async {
        let mut synced = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => synced = true,
                Ok(_) => {}
                Err(_) => continue,
            }
            if synced {
                let objects = store.state();
                if done(&objects) {
                    return objects;
                }
            }
        }
        Vec::new()
    };
    tokio::time::timeout(timeout, watch)
        .await
        .map_err(|_| Error::Timeout(timeout, what.to_owned()))
}
