//! The events users see on their pods, in words: that the toleration was added and which switch
//! allowed it, or why the pod stays off virtual nodes and what to change. Reason codes are
//! tke-policy's, so events, `explain` and metrics use the same words.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tke_policy::switch::BurstPermission;
use tke_policy::virtual_node::{TAINT_EFFECT, TAINT_KEY};
use tke_policy::{Violation, Warning};

/// Event reason when the toleration was written.
pub const BURST_TOLERATION_ADDED: &str = "BurstTolerationAdded";
/// The events.k8s.io limit on `note`.
pub const MAX_NOTE_BYTES: usize = 1024;

const ACTION: &str = "AddBurstToleration";

/// Publishes events as they are, each a new Event object. kube's [`Recorder`] folds a repeat
/// of the same reason about the same object into the first event's series and keeps the first
/// note, so a second bad switch value would show the first one's words; this controller decides
/// itself what is worth saying again, so each publish uses a recorder with an empty cache.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
}

impl Publisher {
    pub fn new(client: Client, reporter: Reporter) -> Publisher {
        Publisher { client, reporter }
    }

    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(event, regarding)
            .await
    }
}

/// The Normal event for a pod that got the toleration.
pub fn tolerated(permission: &BurstPermission) -> Event {
    Event {
        type_: EventType::Normal,
        reason: BURST_TOLERATION_ADDED.to_owned(),
        note: Some(fit_note(&format!(
            "no local node fits, so the pod may now use a virtual node: added toleration {TAINT_KEY}:{TAINT_EFFECT} \
             (operator Exists) because {}",
            permission.because
        ))),
        action: ACTION.to_owned(),
        secondary: None,
    }
}

/// The Warning event for a pod that may not burst: the first reason is the event's reason, the
/// note lists every violation so the user can fix the pod in one go.
pub fn refused(reasons: &[Violation]) -> Option<Event> {
    let first = reasons.first()?;
    let details: Vec<String> = reasons.iter().map(Violation::to_string).collect();
    Some(Event {
        type_: EventType::Warning,
        reason: first.reason.as_str().to_owned(),
        note: Some(fit_note(&format!(
            "no local node fits and the pod may not use a virtual node, so it waits for local capacity: {}",
            details.join("; ")
        ))),
        action: ACTION.to_owned(),
        secondary: None,
    })
}

/// The Warning event for a bad annotation on the pod.
pub fn warning(warning: &Warning) -> Event {
    Event {
        type_: EventType::Warning,
        reason: warning.reason().to_owned(),
        note: Some(fit_note(&warning.to_string())),
        action: ACTION.to_owned(),
        secondary: None,
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
    use tke_policy::Reason;

    use super::*;

    #[test]
    fn a_refusal_is_named_after_its_first_reason_and_lists_them_all() {
        let reasons = [
            Violation::new(
                Reason::ForbiddenNamespace,
                "namespace \"kube-system\" may not burst",
            ),
            Violation::new(
                Reason::ReservedPort,
                "container \"web\" declares containerPort 62000",
            ),
        ];
        let event = refused(&reasons);
        assert_eq!(
            event.as_ref().map(|event| event.reason.as_str()),
            Some("ForbiddenNamespace")
        );
        assert_eq!(event.as_ref().map(|event| event.type_), Some(EventType::Warning));
        let note = event.and_then(|event| event.note).unwrap_or_default();
        assert!(
            note.contains("ForbiddenNamespace: namespace \"kube-system\" may not burst"),
            "{note}"
        );
        assert!(
            note.contains("ReservedPort: container \"web\" declares containerPort 62000"),
            "{note}"
        );
        assert!(refused(&[]).is_none());
    }

    #[test]
    fn the_toleration_event_says_which_switch_allowed_it() {
        let permission = BurstPermission {
            allowed: true,
            decided_by: tke_policy::DecidedBy::Local,
            because: "pod annotation AUTO_SCALE_EKS=true overrides AUTO_SCALE_EKS=false".to_owned(),
        };
        let event = tolerated(&permission);
        assert_eq!(event.reason, BURST_TOLERATION_ADDED);
        let note = event.note.unwrap_or_default();
        assert!(
            note.contains("eks.tke.cloud.tencent.com/eklet:NoSchedule"),
            "{note}"
        );
        assert!(
            note.ends_with("because pod annotation AUTO_SCALE_EKS=true overrides AUTO_SCALE_EKS=false"),
            "{note}"
        );
    }

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
}
