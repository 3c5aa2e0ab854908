//! What the controller has already told users about each waiting pod, so that a pod that may
//! not burst gets one Warning event per reason instead of one per scheduling retry. A pod is
//! reconciled every time the scheduler rewrites its status; without this memory each retry would
//! publish the same complaint again.

use std::collections::{BTreeSet, HashMap};

use tke_policy::Reason;

/// A pod by namespace and name. The UID is kept beside it: a pod recreated under the same name
/// is a new pod and hears everything again.
pub type PodKey = (String, String);

#[derive(Debug, Default)]
struct Told {
    uid: String,
    /// The reasons of the last refusal reported, in the order they were reported.
    refusal: Option<Vec<Reason>>,
    /// Warning texts (bad annotations) already reported for this pod.
    warnings: BTreeSet<String>,
}

/// The memory of reported refusals and warnings, per pod.
#[derive(Debug, Default)]
pub struct Reported {
    pods: HashMap<PodKey, Told>,
}

impl Reported {
    /// Whether a refusal for these reasons is news for the pod: it is the first refusal, or
    /// the reasons differ from the last one reported. Remembers it either way.
    pub fn refusal_is_news(&mut self, key: &PodKey, uid: &str, reasons: &[Reason]) -> bool {
        let told = self.entry(key, uid);
        if told.refusal.as_deref() == Some(reasons) {
            return false;
        }
        told.refusal = Some(reasons.to_vec());
        true
    }

    /// Whether this warning is news for the pod. Remembers it.
    pub fn warning_is_news(&mut self, key: &PodKey, uid: &str, warning: &str) -> bool {
        self.entry(key, uid).warnings.insert(warning.to_owned())
    }

    /// Drops what was said about the pod: it was tolerated, bound or deleted. Should it wait
    /// again, its refusal is reported again.
    pub fn forget(&mut self, key: &PodKey) {
        self.pods.remove(key);
    }

    /// How many pods are remembered.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn entry(&mut self, key: &PodKey, uid: &str) -> &mut Told {
        let told = self.pods.entry(key.clone()).or_default();
        if told.uid != uid {
            *told = Told {
                uid: uid.to_owned(),
                ..Told::default()
            };
        }
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PodKey {
        ("shop".to_owned(), name.to_owned())
    }

    #[test]
    fn a_refusal_is_reported_once_however_often_the_pod_is_retried() {
        let mut reported = Reported::default();
        let reasons = [Reason::ReservedPort];
        let news: Vec<bool> = (0..5)
            .map(|_| reported.refusal_is_news(&key("web-1"), "uid-1", &reasons))
            .collect();
        assert_eq!(news, [true, false, false, false, false]);
    }

    #[test]
    fn a_change_of_reason_is_reported_again() {
        let mut reported = Reported::default();
        assert!(reported.refusal_is_news(&key("web-1"), "uid-1", &[Reason::BurstDisabled]));
        assert!(reported.refusal_is_news(
            &key("web-1"),
            "uid-1",
            &[Reason::BurstDisabled, Reason::ReservedPort]
        ));
        assert!(!reported.refusal_is_news(
            &key("web-1"),
            "uid-1",
            &[Reason::BurstDisabled, Reason::ReservedPort]
        ));
        assert!(reported.refusal_is_news(&key("web-1"), "uid-1", &[Reason::BurstDisabled]));
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_hears_everything_again() {
        let mut reported = Reported::default();
        assert!(reported.refusal_is_news(&key("db-0"), "uid-1", &[Reason::UnboundVolume]));
        assert!(reported.warning_is_news(&key("db-0"), "uid-1", "bad switch"));
        assert!(reported.refusal_is_news(&key("db-0"), "uid-2", &[Reason::UnboundVolume]));
        assert!(reported.warning_is_news(&key("db-0"), "uid-2", "bad switch"));
        assert_eq!(reported.len(), 1, "one entry per pod name, not per incarnation");
    }

    #[test]
    fn pods_are_remembered_separately_and_forgotten_when_done() {
        let mut reported = Reported::default();
        assert!(reported.refusal_is_news(&key("a"), "uid-a", &[Reason::ReservedPort]));
        assert!(reported.refusal_is_news(&key("b"), "uid-b", &[Reason::ReservedPort]));
        assert!(reported.warning_is_news(&key("a"), "uid-a", "w"));
        assert!(!reported.warning_is_news(&key("a"), "uid-a", "w"));
        reported.forget(&key("a"));
        assert_eq!(reported.len(), 1);
        assert!(reported.refusal_is_news(&key("a"), "uid-a", &[Reason::ReservedPort]));
        assert!(!reported.refusal_is_news(&key("b"), "uid-b", &[Reason::ReservedPort]));
        reported.forget(&key("a"));
        reported.forget(&key("b"));
        assert!(reported.is_empty());
    }
}
