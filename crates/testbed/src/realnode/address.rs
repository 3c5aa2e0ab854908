//! An address the apiserver will dial like a node's, for a component that runs in the root network
//! namespace: kube-apiserver refuses to proxy to loopback (`/api/v1/nodes/NAME/proxy/...` answers
//! "address not allowed"), so eklet's virtual nodes on a loopback InternalIP are out of reach of the
//! node proxy. A [`NodeAddress`] is a network namespace of the test bed's own, made like a real
//! node's by `host.sh` (a veth whose root end has no address, only a route), holding one address;
//! listeners inside it relay each connection to a loopback port in the root namespace
//! ([`Forwarder`]). Cleaned up like a real node: when dropped, with its control plane, and by the
//! watchdog.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use super::{DIR_PREFIX, HOST_SCRIPT, forward::Forwarder, host_script, which};
use crate::{ControlPlane, Error, Result, write_file};

/// Why a [`NodeAddress`] cannot be made here, or `None`: root, network namespaces, `ip`, `flock`.
pub fn unavailable() -> Option<String> {
    let mut reasons = Vec::new();
    if !rustix::process::geteuid().is_root() {
        reasons.push("not root (network namespaces need it)".to_owned());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        reasons.push("no network namespaces".to_owned());
    }
    for program in ["ip", "flock"] {
        if which(program).is_none() {
            reasons.push(format!("no `{program}`"));
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// One address in a network namespace of the test bed's own; see the module documentation.
pub struct NodeAddress {
    pub ip: Ipv4Addr,
    /// The namespace's name (`ip netns`).
    pub netns: String,
    dir: PathBuf,
    forwarders: Vec<Forwarder>,
}

impl ControlPlane {
    /// A new [`NodeAddress`] named `name` (a short label: it names a directory whose Unix
    /// sockets must stay short).
    pub fn add_node_address(&self, name: &str) -> Result<NodeAddress> {
        if let Some(why) = unavailable() {
            return Err(Error::RealNode(why));
        }
        let dir =
            std::path::absolute(self.run_dir().join(format!("{DIR_PREFIX}{name}"))).map_err(|source| {
                Error::Io {
                    path: self.run_dir().to_owned(),
                    source,
                }
            })?;
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        write_file(&dir.join("host.sh"), HOST_SCRIPT)?;
        let owner = std::process::id().to_string();
        let idx: u8 = host_script(&dir, &["up", &owner])?
            .trim()
            .parse()
            .map_err(|e| Error::RealNode(format!("host.sh up printed no index: {e}")))?;
        Ok(NodeAddress {
            ip: Ipv4Addr::new(198, 18, 0, idx),
            netns: format!("tke-rn{idx}"),
            dir,
            forwarders: Vec::new(),
        })
    }
}

impl NodeAddress {
    /// Listens on `port` of this address and relays every connection to `upstream` (a loopback
    /// address of the root namespace).
    pub fn forward(&mut self, port: u16, upstream: SocketAddr) -> Result<()> {
        let netns = PathBuf::from(format!("/run/netns/{}", self.netns));
        let listen = SocketAddr::from((self.ip, port));
        self.forwarders.push(Forwarder::start(&netns, listen, upstream)?);
        Ok(())
    }
}

impl Drop for NodeAddress {
    fn drop(&mut self) {
        self.forwarders.clear();
        if let Err(e) = host_script(&self.dir, &["down"]) {
            eprintln!("[testbed] cleaning up node address {}: {e}", self.ip);
        }
        if !self.dir.parent().is_some_and(|run| run.join("keep").exists()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
