//! The cloud's VPC, on this machine: a network namespace of the test bed's own holding the whole
//! private block that cloudsim cuts its subnets from, so that sandbox addresses are ordinary VPC
//! addresses (an EndpointSlice refuses loopback ones) and reachable the way the seed requires,
//! over an underlay that routes IDC and VPC addresses to each other (Direct Connect).
//!
//! The namespace is made like a real node's by `host.sh` (a veth to the root namespace whose root
//! end has no address, only routes; index N, gateway 198.18.0.N). On top of that:
//! - the block `10.(100+N).0.0/16` (cut by cloudsim into /20 subnets, [`SUBNET_PREFIX`]) is local inside it (`ip route add local BLOCK dev lo`), so
//!   cloudsim's agents and port responders bind any sandbox address there without an address per
//!   sandbox;
//! - the root namespace routes the block via the gateway, so eklet, the apiserver and tests in the
//!   root namespace reach sandboxes (from the address the root namespace already has; nothing is
//!   added to its interfaces);
//! - [`Vpc::connect`] wires a real node's namespace to the VPC with a veth pair of their own (the
//!   Direct Connect): the node routes the block to the VPC, the VPC routes the node's IP and pod
//!   CIDR back. Nothing forwards in the root namespace.
//!
//! Cleaned up like a real node: when dropped, with its control plane, and by the watchdog. Deleting
//! the namespace deletes its veths (and their peers in the nodes' namespaces), which takes every
//! route through them along.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{RealNode, address::NodeAddress, which};
use crate::{ControlPlane, Error, Result};

/// The subnets cloudsim cuts from a VPC's /16 (`--subnet-prefix`): fifteen /20s of 4,094
/// addresses, one per virtual node.
pub const SUBNET_PREFIX: u8 = 20;

/// The VPC network namespace; see the module documentation.
pub struct Vpc {
    /// The private block, `10.(100+N).0.0/16`: cloudsim's `--private-cidr`.
    pub block: (Ipv4Addr, u8),
    /// The namespace's own address, where the root namespace and the nodes route the block.
    pub gateway: Ipv4Addr,
    /// The namespace's name (`ip netns`).
    pub netns: String,
    /// Owns the namespace (and its cleanup).
    _address: NodeAddress,
}

impl ControlPlane {
    /// A new [`Vpc`]. Needs what a [`NodeAddress`] needs (root, network namespaces, `ip`).
    pub fn add_vpc(&self, name: &str) -> Result<Vpc> {
        let address = self.add_node_address(name)?;
        let idx = address.ip.octets()[3];
        let Some(second) = 100u8.checked_add(idx) else {
            return Err(Error::RealNode(format!(
                "network namespace index {idx} is too high for a VPC block 10.(100+index).0.0/16"
            )));
        };
        let vpc = Vpc {
            block: (Ipv4Addr::new(10, second, 0, 0), 16),
            gateway: address.ip,
            netns: address.netns.clone(),
            _address: address,
        };
        let block = vpc.block_text();
        ip(&["-n", &vpc.netns, "route", "add", "local", &block, "dev", "lo"])?;
        ip(&[
            "route",
            "add",
            &block,
            "via",
            &vpc.gateway.to_string(),
            "dev",
            &format!("tke-rn{idx}h"),
            "onlink",
        ])?;
        Ok(vpc)
    }
}

impl Vpc {
    /// `/run/netns/<netns>`: cloudsim's `--netns`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// The block as `A.B.C.D/P`.
    pub fn block_text(&self) -> String {
        format!("{}/{}", self.block.0, self.block.1)
    }

    /// Direct Connect between `node`'s namespace and the VPC: its pods reach every sandbox, and
    /// sandboxes reach the node and its pods.
    pub fn connect(&self, node: &RealNode) -> Result<()> {
        let vpc_idx = self.gateway.octets()[3];
        let node_idx = node.ip.octets()[3];
        // Named by both indexes, at most 15 bytes: tke-dcNNNvMMM lives in the node, tke-dcMMMnNNN in the VPC.
        let on_node = format!("tke-dc{node_idx}v{vpc_idx}");
        let in_vpc = format!("tke-dc{vpc_idx}n{node_idx}");
        ip(&[
            "link",
            "add",
            &on_node,
            "netns",
            &node.netns,
            "type",
            "veth",
            "peer",
            "name",
            &in_vpc,
            "netns",
            &self.netns,
        ])?;
        // Each end also holds its namespace's own address: ARP asks from an address of the
        // interface it leaves by when there is one, and otherwise from any address of the
        // namespace, which in a node can be 198.18.255.254 (its in-cluster apiserver address, on its
        // loopback), an address the VPC holds too and would refuse to answer.
        let node_ip = node.ip.to_string();
        let gateway = self.gateway.to_string();
        for (ns, dev, own) in [
            (&node.netns, &on_node, &node_ip),
            (&self.netns, &in_vpc, &gateway),
        ] {
            ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"])?;
            ip(&["-n", ns, "addr", "add", &format!("{own}/32"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&[
            "-n",
            &node.netns,
            "route",
            "add",
            &self.block_text(),
            "via",
            &gateway,
            "dev",
            &on_node,
            "onlink",
            "src",
            &node_ip,
        ])?;
        ip(&[
            "-n",
            &self.netns,
            "route",
            "add",
            &format!("{node_ip}/32"),
            "dev",
            &in_vpc,
        ])?;
        let (pods, bits) = node.pod_cidr;
        ip(&[
            "-n",
            &self.netns,
            "route",
            "add",
            &format!("{pods}/{bits}"),
            "via",
            &node_ip,
            "dev",
            &in_vpc,
            "onlink",
        ])?;
        Ok(())
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let program = which("ip").unwrap_or_else(|| Path::new("ip").to_owned());
    let out = Command::new(&program)
        .args(args)
        .output()
        .map_err(|source| Error::Io {
            path: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::RealNode(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
