//! Where the sandboxes' listeners live. In the cloud every sandbox is a VM in the VPC; on this
//! machine the VPC can be a network namespace ([`Config::netns`](crate::Config)) holding the
//! whole private block, routed from the IDC's namespaces like Direct Connect. cloudsim itself stays
//! in its own namespace (its API listens where eklet reaches it): only the agents' and responders'
//! listening sockets are made inside the VPC.
//!
//! A socket belongs, for its whole life, to the network namespace of the thread that created it.
//! So a bind enters the VPC on the calling thread, binds, and comes back before anything else runs
//! on that thread: two `setns` calls around one `bind`, no await in between.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Binds sandbox listeners: here, or inside the VPC's network namespace.
#[derive(Debug)]
pub enum Listeners {
    /// In cloudsim's own namespace (the private block is loopback).
    Here,
    /// Inside the namespace at `path`, held open so that it outlives a deleted name.
    In { path: PathBuf, netns: File },
}

impl Listeners {
    /// Opens the namespace at `path` (e.g. `/run/netns/NAME`), checking that this process may enter
    /// it by entering it once.
    pub fn open(path: &Path) -> io::Result<Self> {
        let netns = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening network namespace {}: {e}", path.display()),
            )
        })?;
        let listeners = Self::In {
            path: path.to_owned(),
            netns,
        };
        // Port 0 on the loopback address every namespace has: proves setns works here.
        listeners.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(listeners)
    }

    /// A non-blocking listener on `addr`.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let listener = match self {
            Self::Here => std::net::TcpListener::bind(addr)?,
            Self::In { path, netns } => bind_in(path, netns, addr)?,
        };
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}

fn bind_in(path: &Path, netns: &File, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let own = File::open("/proc/thread-self/ns/net")?;
    move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("entering network namespace {}: {e}", path.display()),
        )
    })?;
    let bound = std::net::TcpListener::bind(addr);
    // Back before anything else can happen on this thread, whether the bind worked or not. Staying
    // behind would put every later socket of this (runtime) thread in the VPC: abort rather.
    if let Err(e) = move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Network)) {
        eprintln!(
            "cloudsim: cannot return from network namespace {}: {e}",
            path.display()
        );
        std::process::abort();
    }
    bound.map_err(|e| io::Error::new(e.kind(), format!("{addr} in {}: {e}", path.display())))
}
