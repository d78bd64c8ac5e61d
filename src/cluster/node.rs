//! A cluster node: `fairway serve --cluster FILE --node-id ID`.
//!
//! Opens this node's replica of every partition (its Raft log under
//! `DIR/raft/pNNNN`, its store under `DIR/store/pNNNN`), starts each
//! partition's Raft group and the node-to-node service on this node's
//! `raft` address, joins the groups to the cluster file's nodes the first
//! time (every node does so with the same membership, which Raft allows),
//! and starts a broker whose writers commit through the groups and serve
//! the partitions this node leads.
//!
//! Every partition is led by one node, the home (the leader of partition
//! 0, see [`super::colocation`]); any other node forwards calls to it
//! ([`super::forward`]). This release runs clusters in which every node
//! holds every partition (`replicas` equal to the number of nodes);
//! replicas on a subset of the nodes are still to come (docs/cluster.md).

use super::colocation::{self, Leaders};
use super::config::ClusterConfig;
use super::forward::ForwardLayer;
use super::last_heard::LastHeard;
use super::log_store::LogStore;
use super::network::{Connections, Groups, NetworkFactory, Routes, TransportService};
use super::proposer::RaftProposer;
use super::raft_types::{Member, TypeConfig};
use super::state_machine::PartitionStateMachine;
use crate::broker::{Broker, Recovery};
use crate::error::{BrokerError, Result};
use crate::partition::placement::PartitionId;
use crate::storage::data_dir::partition_dir;
use openraft::Raft;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a running node keeps besides its broker: its Raft groups, the
/// node-to-node server, and what its client port needs to forward calls.
pub struct Node {
    rafts: Arc<[Raft<TypeConfig>]>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    /// Stops the steering of leaders ([`colocation::keep_together`]).
    steering: tokio::sync::watch::Sender<bool>,
    /// Forwards calls this node does not serve to the home.
    pub forward: ForwardLayer,
    /// Who leads what, for status, `/metrics` and health.
    pub leaders: Leaders,
    /// For the health of each partition (a leader unacknowledged for two
    /// timeouts is cut off).
    pub election_timeout_ms: u64,
    /// Set when the node begins to stop: writes still waiting for a
    /// majority give up soon after (see `RaftProposer`).
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Node {
    /// Stops every group, then the node-to-node server (after the broker).
    pub async fn shutdown(self) {
        let _ = self.steering.send(true);
        for r in self.rafts.iter() {
            let _ = r.shutdown().await;
        }
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

fn bad_config(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::InvalidArgument(e.to_string())
}

/// Raft's timing for a cluster's election timeout: heartbeats five times
/// per timeout; a candidate waits between one and two timeouts.
fn raft_config(c: &ClusterConfig) -> Result<Arc<openraft::Config>> {
    let cfg = openraft::Config {
        cluster_name: "fairway".into(),
        heartbeat_interval: (c.election_timeout_ms / 5).max(20),
        election_timeout_min: c.election_timeout_ms,
        election_timeout_max: c.election_timeout_ms * 2,
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate().map_err(|e| BrokerError::Internal(format!("Raft settings: {e}")))?))
}

/// Starts this node (see the module doc).
pub async fn start(file: &Path, node_id: &str, data_dir: &Path) -> Result<(Broker, Recovery, Node)> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| bad_config(format!("cannot read the cluster file {}: {e}", file.display())))?;
    let cluster = ClusterConfig::parse(&text).map_err(bad_config)?;
    let me = cluster.node(node_id).map_err(bad_config)?.clone();
    if usize::from(cluster.replicas) != cluster.nodes.len() {
        return Err(bad_config(format!(
            "the cluster file declares {} nodes and replicas = {}: this release runs clusters in which every node \
             holds every partition, so set replicas = {} (or declare {} nodes)",
            cluster.nodes.len(),
            cluster.replicas,
            cluster.nodes.len(),
            cluster.replicas
        )));
    }
    let partitions = cluster.partitions;
    let stores_root = data_dir.join("store");
    let raft_root = data_dir.join("raft");
    {
        let root = stores_root.clone();
        tokio::task::spawn_blocking(move || crate::storage::data_dir::open(&root, Some(partitions), partitions))
            .await
            .map_err(|e| BrokerError::Internal(format!("start-up task failed: {e}")))??;
    }
    let config = raft_config(&cluster)?;
    let members: BTreeMap<u64, Member> =
        cluster.nodes.iter().map(|n| (n.raft_id, Member::new(&n.id, &n.raft, &n.grpc))).collect();
    let grace = Duration::from_millis(cluster.election_timeout_ms + cluster.max_clock_skew_ms);
    let heard = LastHeard::new(partitions as usize);
    let (groups, connections) = (Groups::hearing(heard.clone()), Connections::default());
    let routes: Routes =
        Arc::new(cluster.nodes.iter().map(|n| (n.raft_id, cluster.dial(&me.id, n).to_string())).collect());
    let (mut rafts, mut stores, mut proposers) = (Vec::new(), Vec::new(), Vec::new());
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    for p in 0..partitions {
        let pid = PartitionId(p as u16);
        let log = LogStore::open(&raft_root.join(pid.to_string()), &pid.to_string()).map_err(BrokerError::Storage)?;
        let sm = PartitionStateMachine::open(&partition_dir(&stores_root, pid)).await.map_err(BrokerError::Storage)?;
        stores.push(sm.slot().get().ok_or_else(|| BrokerError::Internal("store closed at start".into()))?);
        let raft =
            Raft::new(me.raft_id, config.clone(), NetworkFactory::new(p, connections.clone(), routes.clone()), log, sm)
                .await
                .map_err(|e| BrokerError::Internal(format!("partition {p}: Raft did not start: {e}")))?;
        groups.insert(p, raft.clone());
        proposers.push(RaftProposer::new(
            p,
            raft.clone(),
            tokio::runtime::Handle::current(),
            grace,
            stopping_rx.clone(),
        ));
        rafts.push(raft);
    }
    let listener = tokio::net::TcpListener::bind(&me.raft)
        .await
        .map_err(|e| bad_config(format!("cannot listen on this node's raft address {}: {e}", me.raft)))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(TransportService::new(groups).into_server())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the node-to-node server failed");
        }
    });
    for (p, raft) in rafts.iter().enumerate() {
        let fresh = !raft.is_initialized().await.map_err(|e| BrokerError::Internal(format!("partition {p}: {e}")))?;
        if fresh {
            // Every node joins the same first membership; Raft accepts it
            // from each (a node that already has a log refuses, harmlessly).
            if let Err(e) = raft.initialize(members.clone()).await {
                tracing::debug!(partition = p, error = %e, "initialize refused (another node was first)");
            }
        }
    }
    tracing::info!(node = %me.id, raft = %me.raft, partitions, nodes = cluster.nodes.len(), "cluster node started");
    let root = stores_root.clone();
    let (broker, recovery) = tokio::task::spawn_blocking(move || Broker::start_replicated(&root, stores, proposers))
        .await
        .map_err(|e| BrokerError::Internal(format!("start-up task failed: {e}")))??;
    let rafts: Arc<[Raft<TypeConfig>]> = rafts.into();
    let leaders = Leaders::new(me.raft_id, &me.id, rafts.clone());
    for p in 0..rafts.len() {
        tokio::spawn(colocation::watch_roles(p, leaders.clone(), broker.clone()));
    }
    let (steering, steering_stop) = tokio::sync::watch::channel(false);
    let timeout = Duration::from_millis(cluster.election_timeout_ms);
    tokio::spawn(colocation::keep_together(leaders.clone(), heard, broker.clone(), timeout, steering_stop));
    let forward = ForwardLayer::to_home(leaders.clone(), connections, &me.id);
    let election_timeout_ms = cluster.election_timeout_ms;
    Ok((
        broker,
        recovery,
        Node { rafts, stop, server, steering, forward, leaders, election_timeout_ms, stopping: Arc::new(stopping) },
    ))
}
