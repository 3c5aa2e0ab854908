//! The node's way to the apiserver: a TCP forwarder whose listening socket lives in the node's
//! network namespace while its upstream connections are made from the root namespace, to the
//! apiserver on loopback.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life. So
//! one thread enters the node's namespace, binds the listener, and goes back; from then on
//! accepting and connecting are ordinary tokio calls, made on a runtime of the forwarder's own
//! (so that a node outlives the test runtime that started it, and dropping the forwarder ends every
//! relayed connection at once). No address outside loopback and our own namespace is involved.

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr} in {netns}: {source}")]
    Listen {
        addr: SocketAddr,
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("forwarder thread: {0}")]
    Thread(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running forwarder; stopped (listener closed, connections cut) when dropped.
pub struct Forwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `listen` inside the network namespace at `netns` (e.g. `/run/netns/NAME`) and
    /// relays every connection to `upstream`, reached from the caller's namespace.
    pub fn start(netns: &Path, listen: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let netns = netns.to_owned();
        let thread = std::thread::Builder::new()
            .name("tke-testbed-forwarder".into())
            .spawn(move || {
                let listener = match bind_in(&netns, listen) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Thread(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Thread(e.to_string())));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    relay(listener, upstream, stop_rx).await;
                });
                // Dropping the runtime here cancels every relayed connection.
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Thread("exited before listening".into()))??;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds a listener inside `netns`, then returns the thread to the namespace it came from.
fn bind_in(netns: &Path, listen: SocketAddr) -> Result<std::net::TcpListener> {
    let own_path = Path::new("/proc/thread-self/ns/net");
    let own = File::open(own_path).map_err(|source| Error::Open {
        path: own_path.to_owned(),
        source,
    })?;
    let target = File::open(netns).map_err(|source| Error::Open {
        path: netns.to_owned(),
        source,
    })?;
    move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
        Error::Enter {
            path: netns.to_owned(),
            source: e.into(),
        }
    })?;
    let bound = std::net::TcpListener::bind(listen);
    // Back before anything else can happen on this thread, whether the bind worked or not.
    move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| Error::Enter {
        path: own_path.to_owned(),
        source: e.into(),
    })?;
    let listener = bound.map_err(|source| Error::Listen {
        addr: listen,
        netns: netns.to_owned(),
        source,
    })?;
    listener.set_nonblocking(true).map_err(|source| Error::Listen {
        addr: listen,
        netns: netns.to_owned(),
        source,
    })?;
    Ok(listener)
}

async fn relay(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }
    }
}
