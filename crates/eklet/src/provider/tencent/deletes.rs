//! Deletions batched into DeleteEKSContainerInstances calls of up to 20 sandboxes
//! ([`DELETE_MAX_IDS`]), the API's limit. The real API allows 20 calls a second per action, so one
//! sandbox a call would take 500 s to delete 10,000 pods; 20 a call, 25 s.
//!
//! No timer and no added latency: a deletion joins a queue, and while fewer than
//! [`MAX_CALLS`] calls are under way it starts one, which takes up to 20 waiting sandboxes per call
//! until the queue is empty. A lone deletion is sent at once, alone; under load (calls waiting for
//! the rate limit or the network) the queue fills and each call takes a full batch.
//!
//! The API fails a whole call when one of its sandboxes does not exist (ResourceNotFound). A
//! sandbox that is already gone counts as deleted, so such a batch is sent again one sandbox a
//! call, and each deletion gets its own answer.

use std::sync::{Arc, Mutex};

use tke_tencent::model::DELETE_MAX_IDS;
use tokio::sync::oneshot;

use super::{Error, ErrorKind, Result, cloud_error};

const ACTION: &str = "DeleteEKSContainerInstances";
/// Calls under way at once.
pub const MAX_CALLS: usize = 4;

type Waiter = (String, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    calls: usize,
}

/// The queue of deletions of one provider. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct Deletes {
    client: tke_tencent::Client,
    queue: Arc<Mutex<Queue>>,
}

impl Deletes {
    pub fn new(client: tke_tencent::Client) -> Deletes {
        Deletes {
            client,
            queue: Arc::default(),
        }
    }

    /// Deletes sandbox `id` in the next call with room; a sandbox that does not exist is deleted.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push((id.to_owned(), done));
            let start = queue.calls < MAX_CALLS;
            if start {
                queue.calls += 1;
            }
            start
        };
        if start {
            // A task of its own: the caller may stop waiting, the batch it took must still be sent.
            tokio::spawn(self.clone().drain());
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error {
                action: ACTION,
                kind: ErrorKind::Transient,
                code: "DeletionAbandoned".into(),
                message: "the deletion was dropped before it was sent".into(),
                maybe_executed: true,
            })
        })
    }

    /// Sends batches until the queue is empty.
    async fn drain(self) {
        loop {
            let batch: Vec<Waiter> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if queue.waiting.is_empty() {
                    queue.calls -= 1;
                    return;
                }
                let take = queue.waiting.len().min(DELETE_MAX_IDS);
                queue.waiting.drain(..take).collect()
            };
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Vec<Waiter>) {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        match self.client.delete_instances(&ids).await {
            Ok(()) => answer_all(batch, &Ok(())),
            Err(e) if e.kind() == tke_tencent::ErrorKind::NotFound && batch.len() > 1 => {
                for (id, done) in batch {
                    let _ = done.send(self.delete_one(&id).await);
                }
            }
            Err(e) if e.kind() == tke_tencent::ErrorKind::NotFound => answer_all(batch, &Ok(())),
            Err(e) => answer_all(batch, &Err(cloud_error(ACTION, e))),
        }
    }

    async fn delete_one(&self, id: &str) -> Result<()> {
        match self.client.delete_instances(&[id.to_owned()]).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == tke_tencent::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(cloud_error(ACTION, e)),
        }
    }
}

fn answer_all(batch: Vec<Waiter>, result: &Result<()>) {
    for (_, done) in batch {
        // The caller may have stopped waiting; the sandbox is deleted (or not) all the same.
        let _ = done.send(result.clone());
    }
}
