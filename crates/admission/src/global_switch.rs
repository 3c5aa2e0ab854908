//! The global switch, live: a watch on ConfigMap `eks-config` that keeps the current
//! [`SwitchSetting`] for every decision, tells the controller when it changed (so pods already
//! waiting are decided again), and reports an unreadable value once as a Warning event on the
//! ConfigMap. A missing ConfigMap or key is "undefined", which allows bursting.

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tke_policy::switch::EKS_CONFIG_NAME;
use tke_policy::{SwitchSetting, Warning};
use tokio::sync::watch;

use crate::metrics::Metrics;
use tke_runtime::events::Recorder;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the watch on ConfigMap {0}/{EKS_CONFIG_NAME} ended")]
    WatchEnded(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The global switch as last seen; `None` until the ConfigMap has been listed once.
#[derive(Clone)]
pub struct GlobalSwitch {
    current: watch::Receiver<Option<SwitchSetting>>,
}

/// The watch that feeds a [`GlobalSwitch`]; [`SwitchWatch::run`] must be polled for the
/// switch to follow the ConfigMap.
pub struct SwitchWatch {
    namespace: String,
    current: watch::Sender<Option<SwitchSetting>>,
    /// The unreadable value last reported, so each bad value is reported once.
    warned: Option<String>,
}

/// A switch for ConfigMap `eks-config` in `namespace`, and the watch that feeds it.
pub fn global_switch(namespace: &str) -> (GlobalSwitch, SwitchWatch) {
    let (sender, receiver) = watch::channel(None);
    (
        GlobalSwitch { current: receiver },
        SwitchWatch {
            namespace: namespace.to_owned(),
            current: sender,
            warned: None,
        },
    )
}

impl GlobalSwitch {
    /// The switch as last seen, `None` before the first list.
    pub fn current(&self) -> Option<SwitchSetting> {
        self.current.borrow().clone()
    }

    /// Waits until the ConfigMap has been listed once, so that no decision is made on a switch
    /// not yet read.
    pub async fn synced(&self) {
        let mut current = self.current.clone();
        // An error means the watch is gone; the caller notices that through SwitchWatch::run.
        let _ = current.wait_for(Option::is_some).await;
    }

    /// One item each time the switch changes (value, text or existence of the ConfigMap).
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut current = self.current.clone();
        current.mark_unchanged();
        stream::unfold(current, |mut current| async move {
            current.changed().await.ok().map(|()| ((), current))
        })
    }
}

impl SwitchWatch {
    /// Follows the ConfigMap until the watch ends, which it does not do on its own: watch
    /// errors are retried with backoff while the last value seen stays in force.
    pub async fn run(mut self, client: Client, recorder: Recorder, metrics: &Metrics) -> Result<()> {
        let api: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={EKS_CONFIG_NAME}"));
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut listing: Option<ConfigMap> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = None,
                Ok(watcher::Event::InitApply(config_map)) => listing = Some(config_map),
                Ok(watcher::Event::InitDone) => self.seen(listing.take(), &recorder, metrics).await,
                Ok(watcher::Event::Apply(config_map)) => {
                    self.seen(Some(config_map), &recorder, metrics).await
                }
                Ok(watcher::Event::Delete(_)) => self.seen(None, &recorder, metrics).await,
                Err(error) => {
                    tracing::warn!(%error, namespace = %self.namespace, "watching the global switch; keeping the last value seen");
                }
            }
        }
        Err(Error::WatchEnded(self.namespace))
    }

    async fn seen(&mut self, config_map: Option<ConfigMap>, recorder: &Recorder, metrics: &Metrics) {
        let setting = SwitchSetting::global(&self.namespace, config_map.as_ref());
        metrics.global_switch(setting.value);
        match (setting.warning(), config_map.as_ref()) {
            (Some(invalid), Some(config_map)) if self.warned.as_ref() != Some(&invalid.value) => {
                let note = format!(
                    "{invalid} in {}; until it is true or false the global switch is undefined, which allows bursting",
                    setting.location()
                );
                tracing::warn!(%note, "global switch unreadable");
                let event = Event {
                    type_: EventType::Warning,
                    // The code tke-policy gives a bad pod annotation: one word for one mistake.
                    reason: Warning::InvalidSwitch(invalid.clone()).reason().to_owned(),
                    note: Some(crate::events::fit_note(&note)),
                    action: "ReadGlobalSwitch".to_owned(),
                    secondary: None,
                };
                match recorder.publish(&event, &config_map.object_ref(&())).await {
                    Ok(()) => self.warned = Some(invalid.value),
                    Err(error) => tracing::warn!(%error, "recording the unreadable global switch"),
                }
            }
            (Some(_), _) => {}
            (None, _) => self.warned = None,
        }
        let changed = self.current.send_if_modified(|current| {
            if current.as_ref() == Some(&setting) {
                return false;
            }
            tracing::info!(switch = %setting, "global switch");
            *current = Some(setting);
            true
        });
        if changed {
            metrics.global_switch_changes.inc();
        }
    }
}
