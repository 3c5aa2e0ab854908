//! The events users see on their pods, in words: that the toleration was added and which switch
//! allowed it, or why the pod stays off virtual nodes and what to change. Reason codes are
//! tke-policy's, so events, `explain` and metrics use the same words.

use tke_policy::switch::BurstPermission;
use tke_policy::virtual_node::{TAINT_EFFECT, TAINT_KEY};
use tke_policy::{Violation, Warning};
pub use tke_runtime::events::fit_note;
use tke_runtime::events::{Event, EventType};

/// Event reason when the toleration was written.
pub const BURST_TOLERATION_ADDED: &str = "BurstTolerationAdded";
const ACTION: &str = "AddBurstToleration";

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
}
