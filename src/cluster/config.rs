//! The cluster file: which nodes make a cluster, where each listens, and how
//! many replicas every partition keeps.
//!
//! ```toml
//! replicas = 3                  # copies of every partition: 1, 3 or 5
//! partitions = 6                # optional; default: 2 per node
//!
//! [[nodes]]
//! id = "n1"
//! grpc = "127.0.0.1:50051"      # the address clients use
//! raft = "127.0.0.1:50061"      # node-to-node traffic
//! ```
//!
//! Parsing and checking are pure ([`ClusterConfig::parse`]), so every rule
//! is unit-tested apart from a running node; every refusal names the field
//! and says what would be accepted. The file is the cluster's *first*
//! membership: once a cluster runs, its membership lives in each
//! partition's Raft log (changed by the admin calls), not in this file.
//!
//! Where the route from one node to another is not the address the other
//! listens on (NAT, a sidecar proxy, the fault suite's proxies), a
//! `[routes.FROM]` table says where FROM dials each such peer:
//!
//! ```toml
//! [routes.n1]
//! n2 = "10.0.0.7:7062"          # n1 reaches n2's raft address through here
//! ```

use std::collections::{BTreeMap, HashSet};

/// Replica counts a partition may have: a majority of 3 survives one lost
/// node, of 5 two; an even count adds a node to every quorum and survives
/// no more failures than the odd count below it.
pub const ALLOWED_REPLICAS: [u8; 3] = [1, 3, 5];

/// Partitions a cluster gets per node when the file does not say: enough
/// that leaders spread over the nodes, few enough that each has a busy log.
pub const DEFAULT_PARTITIONS_PER_NODE: u32 = 2;

/// Why a cluster file was refused; each says which field and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterConfigError {
    #[error("the cluster file is not valid TOML: {0}")]
    Syntax(String),
    #[error("the cluster file's `{field}` {problem}")]
    Field { field: String, problem: String },
    #[error("--node-id {0:?} is not one of the cluster file's [[nodes]] ids ({1})")]
    UnknownNode(String, String),
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError::Field { field: field.into(), problem: problem.into() }
}

/// The file as written (before it is checked).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    replicas: Option<i64>,
    partitions: Option<i64>,
    election_timeout_ms: Option<i64>,
    max_clock_skew_ms: Option<i64>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    /// `[routes.FROM] TO = "host:port"`.
    #[serde(default)]
    routes: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    grpc: String,
    raft: String,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The name operators use (`fairway cluster move --to n2`).
    pub id: String,
    /// The number Raft knows the node by: a hash of `id`, so it stays the
    /// same whatever order the file lists the nodes in.
    pub raft_id: u64,
    /// `host:port` clients call (and other nodes forward client calls to).
    pub grpc: String,
    /// `host:port` of node-to-node Raft traffic: where the node listens,
    /// and where the others dial it unless a route says otherwise.
    pub raft: String,
}

/// A checked cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Copies of every partition (one of [`ALLOWED_REPLICAS`]).
    pub replicas: u8,
    /// Partitions of the cluster, fixed when it is first started.
    pub partitions: u32,
    /// A follower that hears nothing from its leader for this long (plus a
    /// random part up to the same again) stands for election.
    pub election_timeout_ms: u64,
    /// The most two nodes' clocks may differ. A new leader waits election
    /// timeout + this before expiring a lease granted by the old one.
    pub max_clock_skew_ms: u64,
    /// The nodes, in the file's order.
    pub nodes: Vec<NodeSpec>,
    /// Routes that differ from a node's `raft` address: by dialling node,
    /// by dialled node (see [`ClusterConfig::dial`]).
    pub routes: BTreeMap<String, BTreeMap<String, String>>,
}

/// Default election timeout: failover in well under the 3 s target on a
/// loaded machine, without elections on every scheduling hiccup.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// Default allowed clock difference between nodes (NTP keeps real clusters
/// far closer; tests skew clocks by up to this).
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 2000;

/// The Raft id of a node named `id`: FNV-1a 64 (fixed here, not the standard
/// library's hasher, so it never changes between builds). 0 is reserved.
pub fn raft_id(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

fn check_node_id(i: usize, id: &str) -> Result<(), ClusterConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(field(
            format!("nodes[{i}].id"),
            format!("{id:?} is not a node id: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// `host:port` with a port; the host may be a name (resolved when used).
fn check_address(name: String, addr: &str) -> Result<(), ClusterConfigError> {
    let bad =
        || field(name.clone(), format!("{addr:?} is not an address like 127.0.0.1:50051 or node1.internal:50051"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) || addr.contains("://") {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) => Err(field(name, format!("{addr:?} has port 0: other nodes must know the port, so name one"))),
        Ok(_) => Ok(()),
        Err(_) => Err(bad()),
    }
}

fn positive(name: &str, v: Option<i64>, default: u64, max: u64) -> Result<u64, ClusterConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v >= 1 && (v as u64) <= max => Ok(v as u64),
        Some(v) => Err(field(name, format!("is {v}; it must be between 1 and {max}"))),
    }
}

impl ClusterConfig {
    /// Parses and checks a cluster file's text.
    pub fn parse(text: &str) -> Result<ClusterConfig, ClusterConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ClusterConfigError::Syntax(e.to_string()))?;
        if raw.nodes.is_empty() {
            return Err(field("nodes", "is missing: declare every node in a [[nodes]] table (id, grpc, raft)"));
        }
        let replicas = match raw.replicas {
            None => return Err(field("replicas", "is missing: set it to 1, 3 or 5")),
            Some(r) if ALLOWED_REPLICAS.iter().any(|&a| i64::from(a) == r) => r as u8,
            Some(r) => return Err(field("replicas", format!("is {r}; it must be 1, 3 or 5"))),
        };
        if usize::from(replicas) > raw.nodes.len() {
            return Err(field(
                "replicas",
                format!(
                    "is {replicas} but the file declares {} node(s): each replica of a partition needs a node of its own",
                    raw.nodes.len()
                ),
            ));
        }
        let max_partitions = u64::from(crate::partition::placement::MAX_PARTITIONS);
        let default_partitions = (raw.nodes.len() as u64 * u64::from(DEFAULT_PARTITIONS_PER_NODE)).min(max_partitions);
        let partitions = positive("partitions", raw.partitions, default_partitions, max_partitions)? as u32;
        let election_timeout_ms =
            positive("election_timeout_ms", raw.election_timeout_ms, DEFAULT_ELECTION_TIMEOUT_MS, 60_000)?;
        if election_timeout_ms < 100 {
            return Err(field(
                "election_timeout_ms",
                format!("is {election_timeout_ms}; below 100 ms a busy node loses its leadership to scheduling delays"),
            ));
        }
        let max_clock_skew_ms =
            positive("max_clock_skew_ms", raw.max_clock_skew_ms, DEFAULT_MAX_CLOCK_SKEW_MS, 60_000)?;

        let mut nodes = Vec::with_capacity(raw.nodes.len());
        let (mut ids, mut raft_ids, mut addrs) = (HashSet::new(), HashSet::new(), HashSet::new());
        for (i, n) in raw.nodes.into_iter().enumerate() {
            check_node_id(i, &n.id)?;
            check_address(format!("nodes[{i}].grpc"), &n.grpc)?;
            check_address(format!("nodes[{i}].raft"), &n.raft)?;
            if !ids.insert(n.id.clone()) {
                return Err(field(format!("nodes[{i}].id"), format!("{:?} is declared twice", n.id)));
            }
            let rid = raft_id(&n.id);
            if !raft_ids.insert(rid) {
                return Err(field(
                    format!("nodes[{i}].id"),
                    format!("{:?} hashes like another node's id; rename it", n.id),
                ));
            }
            for (what, a) in [("grpc", &n.grpc), ("raft", &n.raft)] {
                if !addrs.insert(a.clone()) {
                    return Err(field(format!("nodes[{i}].{what}"), format!("{a:?} is used twice in the file")));
                }
            }
            nodes.push(NodeSpec { id: n.id, raft_id: rid, grpc: n.grpc, raft: n.raft });
        }
        for (from, to_addr) in &raw.routes {
            if !ids.contains(from) {
                return Err(field(format!("routes.{from}"), "names no node of the file's [[nodes]]"));
            }
            for (to, addr) in to_addr {
                if !ids.contains(to) || to == from {
                    return Err(field(format!("routes.{from}.{to}"), "names no other node of the file's [[nodes]]"));
                }
                check_address(format!("routes.{from}.{to}"), addr)?;
            }
        }
        Ok(ClusterConfig { replicas, partitions, election_timeout_ms, max_clock_skew_ms, nodes, routes: raw.routes })
    }

    /// Where node `from` dials `to`'s Raft service: a route if the file
    /// gives one, else `to`'s `raft` address.
    pub fn dial<'a>(&'a self, from: &str, to: &'a NodeSpec) -> &'a str {
        self.routes.get(from).and_then(|r| r.get(&to.id)).map_or(&to.raft, |a| a.as_str())
    }

    /// The node `--node-id` names.
    pub fn node(&self, id: &str) -> Result<&NodeSpec, ClusterConfigError> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            ClusterConfigError::UnknownNode(id.to_string(), known.join(", "))
        })
    }

    /// The node Raft knows as `raft_id`.
    pub fn node_by_raft_id(&self, raft_id: u64) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.raft_id == raft_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
replicas = 3
[[nodes]]
id = "n1"
grpc = "127.0.0.1:50051"
raft = "127.0.0.1:50061"
[[nodes]]
id = "n2"
grpc = "127.0.0.1:50052"
raft = "127.0.0.1:50062"
[[nodes]]
id = "n3"
grpc = "node3.internal:50053"
raft = "[::1]:50063"
"#;

    fn refused(text: &str) -> String {
        ClusterConfig::parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn the_issue_s_example_parses_with_defaults() {
        let c = ClusterConfig::parse(THREE).unwrap();
        assert_eq!(c.replicas, 3);
        assert_eq!(c.partitions, 6, "two per node by default");
        assert_eq!(c.election_timeout_ms, DEFAULT_ELECTION_TIMEOUT_MS);
        assert_eq!(c.max_clock_skew_ms, DEFAULT_MAX_CLOCK_SKEW_MS);
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.node("n2").unwrap().grpc, "127.0.0.1:50052");
        assert_eq!(c.node_by_raft_id(raft_id("n3")).unwrap().raft, "[::1]:50063");
    }

    #[test]
    fn raft_ids_are_pinned_and_never_zero() {
        // Pinned: a node's Raft id is stored in every partition's log.
        assert_eq!(raft_id("n1"), 626_980_046_172_116_160);
        assert_ne!(raft_id(""), 0);
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases: &[(&str, &str)] = &[
            ("replicas = 3", "`nodes` is missing"),
            ("[[nodes]]\nid = \"a\"\ngrpc = \"h:1\"\nraft = \"h:2\"", "`replicas` is missing"),
            (&THREE.replace("replicas = 3", "replicas = 2"), "`replicas` is 2; it must be 1, 3 or 5"),
            (&THREE.replace("replicas = 3", "replicas = 5"), "`replicas` is 5 but the file declares 3 node(s)"),
            (&THREE.replace("replicas = 3", "replicas = 3\npartitions = 0"), "`partitions` is 0"),
            (&THREE.replace("replicas = 3", "replicas = 3\nelection_timeout_ms = 20"), "`election_timeout_ms` is 20"),
            (&THREE.replace("\"n2\"", "\"n1\""), "`nodes[1].id` \"n1\" is declared twice"),
            (&THREE.replace("\"n2\"", "\"n 2\""), "`nodes[1].id` \"n 2\" is not a node id"),
            (&THREE.replace("127.0.0.1:50052", "127.0.0.1:50051"), "`nodes[1].grpc` \"127.0.0.1:50051\" is used twice"),
            (&THREE.replace("127.0.0.1:50062", "127.0.0.1"), "`nodes[1].raft` \"127.0.0.1\" is not an address"),
            (&THREE.replace("127.0.0.1:50062", "127.0.0.1:0"), "`nodes[1].raft` \"127.0.0.1:0\" has port 0"),
            (&THREE.replace("127.0.0.1:50062", "http://h:5"), "is not an address"),
            (&THREE.replace("replicas = 3", "replicas = 3\nreplica = 3"), "not valid TOML"),
            (&format!("{THREE}[routes.n4]\nn2 = \"h:1\""), "`routes.n4` names no node"),
            (&format!("{THREE}[routes.n1]\nn1 = \"h:1\""), "`routes.n1.n1` names no other node"),
            (&format!("{THREE}[routes.n1]\nn2 = \"h\""), "`routes.n1.n2` \"h\" is not an address"),
        ];
        for (text, want) in cases {
            let got = refused(text);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }

    #[test]
    fn a_route_changes_where_one_node_dials_one_peer_only() {
        let c = ClusterConfig::parse(&format!("{THREE}[routes.n1]\nn2 = \"proxy:7012\"")).unwrap();
        let n2 = c.node("n2").unwrap();
        assert_eq!(c.dial("n1", n2), "proxy:7012");
        assert_eq!(c.dial("n3", n2), "127.0.0.1:50062");
        assert_eq!(c.dial("n1", c.node("n3").unwrap()), "[::1]:50063");
    }

    #[test]
    fn an_unknown_node_id_lists_the_known_ones() {
        let c = ClusterConfig::parse(THREE).unwrap();
        let e = c.node("n9").unwrap_err().to_string();
        assert!(e.contains("\"n9\"") && e.contains("n1, n2, n3"), "{e}");
    }

    #[test]
    fn one_node_with_one_replica_is_a_cluster_of_one() {
        let c = ClusterConfig::parse("replicas = 1\n[[nodes]]\nid = \"solo\"\ngrpc = \"h:1\"\nraft = \"h:2\"").unwrap();
        assert_eq!((c.replicas, c.partitions), (1, 2));
    }
}
