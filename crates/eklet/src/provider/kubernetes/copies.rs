//! Which target copies of IDC ConfigMaps and Secrets exist, which version of the source each
//! holds, and which are behind. The IDC side is followed by metadata watches (the current
//! resourceVersion of every ConfigMap and Secret, nothing else); a copy behind its source is
//! queued once, and the provider's worker rewrites it. This is what carries a ConfigMap edit to
//! the pods that burst (virtual-kubelet#158 never got it).

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use tokio::sync::mpsc;

use super::translate::SourceRef;
pub use crate::provider::Source;
#[cfg(test)]
use crate::provider::SourceKind;

/// The IDC object `reference` names in `namespace`.
pub fn source(namespace: &str, reference: &SourceRef) -> Source {
    Source {
        kind: reference.kind,
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
    }
}

/// A target pod holding copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The target pod's id (`namespace/name`).
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// The target pod's UID (the copies' owner) and the IDC pod's (their label).
    pub uid: String,
    pub source_uid: String,
}

#[derive(Default)]
struct Inner {
    /// Per source: each holder and the source version its copy has (`None`: unknown).
    holders: HashMap<Source, HashMap<String, (Holder, Option<String>)>>,
    by_holder: HashMap<String, Vec<Source>>,
    /// The sources' current versions in the IDC.
    current: HashMap<Source, String>,
    queued: HashSet<Source>,
    /// Where queued sources go: eklet's reader of the current leadership term.
    queue: Option<mpsc::UnboundedSender<Source>>,
}

/// The copy registry and its work queue.
#[derive(Default)]
pub struct Copies {
    inner: Mutex<Inner>,
}

impl Copies {
    /// A new queue for a new reader; what was queued for the previous one is queued again.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Source> {
        let (queue, work) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        for source in &inner.queued {
            let _ = queue.send(source.clone());
        }
        inner.queue = Some(queue);
        work
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(inner: &mut Inner, source: &Source) {
        if inner.queued.insert(source.clone())
            && let Some(queue) = &inner.queue
        {
            let _ = queue.send(source.clone());
        }
    }

    /// A copy of unknown version is behind; a known one only once the IDC is known to have
    /// another (an object the IDC lacks, or that the watch has not shown yet, is not).
    fn behind(inner: &Inner, source: &Source) -> bool {
        let current = inner.current.get(source);
        inner.holders.get(source).is_some_and(|holders| {
            holders
                .values()
                .any(|(_, held)| held.is_none() || current.is_some_and(|c| held.as_ref() != Some(c)))
        })
    }

    /// A target pod holds copies of `sources`, at the versions given where known (a create
    /// just wrote them), unknown otherwise (found after a restart: checked once).
    pub fn hold(&self, holder: &Holder, sources: impl IntoIterator<Item = (Source, Option<String>)>) {
        let mut inner = self.lock();
        for (source, version) in sources {
            let entry = inner
                .holders
                .entry(source.clone())
                .or_default()
                .entry(holder.id.clone())
                .or_insert_with(|| (holder.clone(), None));
            entry.0 = holder.clone();
            if version.is_some() {
                entry.1 = version;
            }
            let listed = inner.by_holder.entry(holder.id.clone()).or_default();
            if !listed.contains(&source) {
                listed.push(source.clone());
            }
            if Self::behind(&inner, &source) {
                Self::enqueue(&mut inner, &source);
            }
        }
    }

    /// The target pod is gone; so are its copies (its owner references see to that).
    pub fn release(&self, holder_id: &str) {
        let mut inner = self.lock();
        for source in inner.by_holder.remove(holder_id).unwrap_or_default() {
            if let Some(holders) = inner.holders.get_mut(&source) {
                holders.remove(holder_id);
                if holders.is_empty() {
                    inner.holders.remove(&source);
                }
            }
        }
    }

    /// The IDC has this version of the source now.
    pub fn source_is(&self, source: Source, version: String) {
        let mut inner = self.lock();
        if inner.current.get(&source) == Some(&version) {
            return;
        }
        inner.current.insert(source.clone(), version);
        if Self::behind(&inner, &source) {
            Self::enqueue(&mut inner, &source);
        }
    }

    /// Taken off the queue: the holders whose copy is not at `version`.
    pub fn take(&self, source: &Source, version: &str) -> Vec<Holder> {
        let mut inner = self.lock();
        inner.queued.remove(source);
        inner
            .holders
            .get(source)
            .map(|holders| {
                holders
                    .values()
                    .filter(|(_, held)| held.as_deref() != Some(version))
                    .map(|(holder, _)| holder.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks the source as worked on (the worker found nothing to do, or will retry).
    pub fn done(&self, source: &Source) {
        self.lock().queued.remove(source);
    }

    /// Queues the source again (after a failure).
    pub fn retry(&self, source: &Source) {
        let mut inner = self.lock();
        Self::enqueue(&mut inner, source);
    }

    /// The holder's copy is at `version` now.
    pub fn copied(&self, source: &Source, holder_id: &str, version: &str) {
        if let Some((_, held)) = self
            .lock()
            .holders
            .get_mut(source)
            .and_then(|holders| holders.get_mut(holder_id))
        {
            *held = Some(version.to_owned());
        }
    }

    pub fn is_held(&self, source: &Source) -> bool {
        self.lock().holders.contains_key(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            kind: SourceKind::ConfigMap,
            namespace: "shop".into(),
            name: "settings".into(),
        }
    }

    fn holder(id: &str) -> Holder {
        Holder {
            id: id.into(),
            namespace: "t".into(),
            name: id.into(),
            uid: format!("uid-{id}"),
            source_uid: "s".into(),
        }
    }

    fn queued(work: &mut mpsc::UnboundedReceiver<Source>) -> usize {
        let mut n = 0;
        while work.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn an_edit_in_the_idc_queues_the_copies_that_are_behind_once() {
        let copies = Copies::default();
        let mut work = copies.subscribe();
        copies.source_is(source(), "41".into());
        copies.hold(&holder("a"), [(source(), Some("41".to_owned()))]);
        copies.hold(&holder("b"), [(source(), Some("41".to_owned()))]);
        assert_eq!(queued(&mut work), 0, "fresh copies need nothing");
        copies.source_is(source(), "42".into());
        copies.source_is(source(), "43".into());
        assert_eq!(queued(&mut work), 1, "one queue entry for many holders and edits");
        let behind = copies.take(&source(), "43");
        assert_eq!(behind.len(), 2);
        copies.copied(&source(), "a", "43");
        copies.copied(&source(), "b", "43");
        assert!(copies.take(&source(), "43").is_empty());
    }

    #[test]
    fn copies_found_after_a_restart_are_checked_once() {
        let copies = Copies::default();
        let mut work = copies.subscribe();
        copies.hold(&holder("a"), [(source(), None)]);
        assert_eq!(queued(&mut work), 1);
        copies.hold(&holder("a"), [(source(), None)]);
        assert_eq!(queued(&mut work), 0, "still queued");
    }

    #[test]
    fn a_new_leader_term_gets_what_was_queued_for_the_last_one() {
        let copies = Copies::default();
        copies.hold(&holder("a"), [(source(), None)]);
        let mut old = copies.subscribe();
        assert_eq!(queued(&mut old), 1);
        // The old term ended before the source was read.
        let mut new = copies.subscribe();
        assert_eq!(queued(&mut new), 1, "queued again for the new reader");
        copies.source_is(source(), "7".into());
        assert_eq!(queued(&mut old), 0, "nothing goes to the old reader any more");
    }

    #[test]
    fn a_released_holder_is_not_copied_to_again() {
        let copies = Copies::default();
        let mut work = copies.subscribe();
        copies.hold(&holder("a"), [(source(), Some("1".to_owned()))]);
        copies.release("a");
        assert!(!copies.is_held(&source()));
        copies.source_is(source(), "2".into());
        assert_eq!(queued(&mut work), 0);
        assert!(copies.take(&source(), "2").is_empty());
    }
}
