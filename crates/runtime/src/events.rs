//! Kubernetes events (`events.k8s.io/v1`) as users read them. A repeat of the same event about the
//! same object — same type, reason, action and **note** — is folded into the first one's series
//! (`kubectl get events` shows it once, with a count), as the Kubernetes recorders do. A
//! different note is a different event: kube's `Recorder` folds on (object, reason, action)
//! alone and keeps the first note, so a second, different mistake under the same reason (a
//! `resolv-conf` annotation fixed on line 1 and broken on line 2, a cloud error code that
//! changed) would be shown with the first one's words.
//!
//! Publishing is a courtesy, never the contract: callers log a failure and go on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
pub use kube::runtime::events::{Event, EventType, Reporter};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

/// The events API's limit on `note`.
pub const MAX_NOTE_BYTES: usize = 1024;
/// How long after its last occurrence an event still takes repeats into its series; the
/// client-go and kube-rs recorders use the same window.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two publishes the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    regarding: Reference,
    related: Option<Reference>,
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
}

/// The identity of an object reference (the resource version and field path do not make a
/// different object).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Reference {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl From<&ObjectReference> for Reference {
    fn from(r: &ObjectReference) -> Reference {
        Reference {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// An event already in the API, for its series.
#[derive(Debug, Clone)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes events for one reporting controller instance; cheap to clone (the series memory is
/// shared).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    published: Arc<Mutex<HashMap<Key, Published>>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            published: Arc::default(),
        }
    }

    /// Publishes `event` about `regarding`: a new Event, or the next occurrence of an identical
    /// one published within the series window. Cluster-scoped objects get their events in
    /// `default`. The note is cut to the API's limit.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let note = event.note.as_deref().map(fit_note);
        let key = Key {
            regarding: regarding.into(),
            related: event.secondary.as_ref().map(Reference::from),
            warning: event.type_ == EventType::Warning,
            reason: event.reason.clone(),
            action: event.action.clone(),
            note: note.clone(),
        };
        let previous = {
            let mut published = self.lock();
            published.retain(|_, p| p.last + SERIES_WINDOW > now);
            published.get(&key).cloned()
        };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(previous) = previous {
            let count = previous.count + 1;
            let series = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api
                .patch(&previous.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.lock().insert(
                        key,
                        Published {
                            count,
                            last: now,
                            ..previous
                        },
                    );
                    return Ok(());
                }
                // Expired or deleted meanwhile: start a new one.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let object = self.new_event(event, note, regarding, &namespace, now);
        let name = object.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &object).await?;
        self.lock().insert(
            key,
            Published {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn new_event(
        &self,
        event: &Event,
        note: Option<String>,
        regarding: &ObjectReference,
        namespace: &str,
        now: Timestamp,
    ) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note,
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            ..K8sEvent::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Published>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The note cut to what the API accepts, at a character boundary, marked as cut.
pub fn fit_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_owned();
    }
    const MORE: &str = " …";
    let mut end = MAX_NOTE_BYTES - MORE.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_api_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_NOTE_BYTES);
        let note = fit_note(&long);
        assert!(note.len() <= MAX_NOTE_BYTES, "{} bytes", note.len());
        assert!(note.ends_with(" …"));
        assert!(note.starts_with("éé"));
        assert_eq!(fit_note("short"), "short");
        let exact = "a".repeat(MAX_NOTE_BYTES);
        assert_eq!(fit_note(&exact), exact);
    }

    #[test]
    fn the_same_object_and_reason_with_another_note_is_another_event() {
        let pod = ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("ns".into()),
            name: Some("p".into()),
            uid: Some("u1".into()),
            resource_version: Some("1".into()),
            ..ObjectReference::default()
        };
        let key = |note: &str, reference: &ObjectReference| Key {
            regarding: reference.into(),
            related: None,
            warning: true,
            reason: "InvalidResolvConf".into(),
            action: "InvalidResolvConf".into(),
            note: Some(note.into()),
        };
        let later = ObjectReference {
            resource_version: Some("2".into()),
            ..pod.clone()
        };
        assert_eq!(
            key("line 1", &pod),
            key("line 1", &later),
            "a new resourceVersion is the same object"
        );
        assert_ne!(key("line 1", &pod), key("line 2", &pod));
    }
}
