//! Raft traffic between nodes: every partition's group over one gRPC
//! service (`fairway.raft.v1.RaftTransport`) on each node's `raft` address.
//!
//! A message names its partition; the receiving node hands it to its
//! replica of that partition's group ([`Groups`]). Log entries travel as
//! the log stores them ([`super::entry_codec`]); the small openraft records
//! around them (votes, log ids, answers) as JSON. One HTTP/2 connection per
//! pair of nodes carries every partition ([`Connections`]).

use super::entry_codec;
use super::last_heard::LastHeard;
use super::raft_types::{Member, NodeId, TypeConfig};
use crate::raft_pb::raft_transport_client::RaftTransportClient;
use crate::raft_pb::raft_transport_server::RaftTransport;
use crate::raft_pb::{AppendEntriesMessage, RaftMessage, RaftReply, SnapshotChunk};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::Raft;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tonic::transport::Channel;

/// This node's replicas, by partition: where incoming Raft messages go.
#[derive(Default, Clone)]
pub struct Groups {
    by_partition: Arc<RwLock<HashMap<u32, Raft<TypeConfig>>>>,
    /// Where accepted appends are noted, if anything watches them.
    heard: Option<LastHeard>,
}

impl Groups {
    /// Groups that note in `heard` every append accepted from a leader.
    pub fn hearing(heard: LastHeard) -> Groups {
        Groups { heard: Some(heard), ..Groups::default() }
    }

    pub fn insert(&self, partition: u32, raft: Raft<TypeConfig>) {
        self.by_partition.write().unwrap_or_else(|e| e.into_inner()).insert(partition, raft);
    }

    fn get(&self, partition: u32) -> Result<Raft<TypeConfig>, tonic::Status> {
        self.by_partition
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .cloned()
            .ok_or_else(|| tonic::Status::not_found(format!("this node holds no replica of partition {partition}")))
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::invalid_argument(format!("malformed Raft message ({what}): {e}"))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(bytes).map_err(|e| bad(what, e))
}

fn reply<T: serde::Serialize>(answer: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    let json =
        serde_json::to_vec(answer).map_err(|e| tonic::Status::internal(format!("cannot encode a Raft answer: {e}")))?;
    Ok(tonic::Response::new(RaftReply { json }))
}

/// The server side: hands each message to this node's replica.
pub struct TransportService {
    groups: Groups,
}

impl TransportService {
    pub fn new(groups: Groups) -> TransportService {
        TransportService { groups }
    }

    pub fn into_server(self) -> crate::raft_pb::raft_transport_server::RaftTransportServer<TransportService> {
        crate::raft_pb::raft_transport_server::RaftTransportServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Largest Raft message either way: a leader's append carries whole turns.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        req: tonic::Request<AppendEntriesMessage>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let m = req.into_inner();
        let raft = self.groups.get(m.partition)?;
        let entries = m
            .entries
            .iter()
            .map(|b| entry_codec::decode(b).map_err(|e| bad("entry", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: json("vote", &m.vote)?,
            prev_log_id: json("prev_log_id", &m.prev_log_id)?,
            entries,
            leader_commit: json("leader_commit", &m.leader_commit)?,
        };
        let answer = raft.append_entries(rpc).await;
        // Every answer but "higher vote" means the sender leads now.
        if let (Some(heard), Ok(a)) = (&self.groups.heard, &answer) {
            if !matches!(a, AppendEntriesResponse::HigherVote(_)) {
                heard.heard(m.partition);
            }
        }
        reply(&answer)
    }

    async fn vote(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let m = req.into_inner();
        let raft = self.groups.get(m.partition)?;
        let rpc: VoteRequest<NodeId> = json("vote request", &m.json)?;
        reply(&raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<SnapshotChunk>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let m = req.into_inner();
        let raft = self.groups.get(m.partition)?;
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: json("vote", &m.vote)?,
            meta: json("snapshot meta", &m.meta)?,
            offset: m.offset,
            data: m.data.to_vec(),
            done: m.done,
        };
        reply(&raft.install_snapshot(rpc).await)
    }
}

/// One lazily connected channel per node address, shared by every
/// partition's group on this node.
#[derive(Default, Clone)]
pub struct Connections {
    by_addr: Arc<RwLock<HashMap<String, Channel>>>,
}

impl Connections {
    /// The connection to `addr` (made on first use, then shared).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        self.nth_channel(addr, 0)
    }

    /// The `n`th connection to `addr`: several, for traffic that would
    /// outgrow one connection's limit on open streams.
    pub(crate) fn nth_channel(&self, addr: &str, n: usize) -> Result<Channel, String> {
        let key = format!("{addr}#{n}");
        if let Some(c) = self.by_addr.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad node address {addr:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(1));
        let channel = endpoint.connect_lazy();
        self.by_addr.write().unwrap_or_else(|e| e.into_inner()).insert(key, channel.clone());
        Ok(channel)
    }
}

/// Where this node dials each peer's Raft service, by Raft id, as the
/// cluster file says (its `raft` address, or a `[routes]` entry: the route
/// from one machine to another may not be the address the other listens
/// on — NAT, a sidecar, the fault suite's proxy on every link). A peer the
/// file does not name (added later) is dialled at the address its
/// membership entry carries.
pub type Routes = Arc<HashMap<NodeId, String>>;

/// Makes a partition group's clients to its peers.
pub struct NetworkFactory {
    partition: u32,
    connections: Connections,
    routes: Routes,
}

impl NetworkFactory {
    pub fn new(partition: u32, connections: Connections, routes: Routes) -> NetworkFactory {
        NetworkFactory { partition, connections, routes }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        let addr = self.routes.get(&target).cloned().unwrap_or_else(|| node.raft.clone());
        Peer { partition: self.partition, target, addr, connections: self.connections.clone() }
    }
}

/// A partition group's client to one peer.
pub struct Peer {
    partition: u32,
    target: NodeId,
    addr: String,
    connections: Connections,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl Peer {
    fn client(&self) -> Result<RaftTransportClient<Channel>, Unreachable> {
        let channel = self.connections.channel(&self.addr).map_err(|e| Unreachable::new(&TransportError(e)))?;
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Sends one call with the deadline openraft gives it, and decodes the
    /// peer's `Result` answer.
    async fn call<T, E, F>(&self, option: &RPCOption, send: F) -> RpcResult<T, E>
    where
        T: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let answer = match tokio::time::timeout(option.hard_ttl(), send).await {
            Err(_) => {
                let e = TransportError(format!("no answer from {} within {:?}", self.addr, option.hard_ttl()));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(format!(
                    "{}: {}",
                    self.addr,
                    status.message()
                )))));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Network(NetworkError::new(&TransportError(format!("{}: {status}", self.addr)))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<T, RaftError<NodeId, E>> = serde_json::from_slice(&answer.json).map_err(|e| {
            RPCError::Network(NetworkError::new(&TransportError(format!("bad answer from {}: {e}", self.addr))))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // openraft's records are ids and numbers: serializing cannot fail.
    serde_json::to_vec(v).expect("an openraft record serializes")
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let mut client = self.client()?;
        let msg = AppendEntriesMessage {
            partition: self.partition,
            vote: encode_json(&rpc.vote),
            prev_log_id: encode_json(&rpc.prev_log_id),
            leader_commit: encode_json(&rpc.leader_commit),
            entries: rpc.entries.iter().map(|e| entry_codec::encode(e).into()).collect(),
        };
        self.call(&option, client.append_entries(msg)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let mut client = self.client()?;
        let msg = SnapshotChunk {
            partition: self.partition,
            vote: encode_json(&rpc.vote),
            meta: encode_json(&rpc.meta),
            offset: rpc.offset,
            data: rpc.data.into(),
            done: rpc.done,
        };
        self.call(&option, client.install_snapshot(msg)).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let mut client = self.client()?;
        let msg = RaftMessage { partition: self.partition, json: encode_json(&rpc) };
        self.call(&option, client.vote(msg)).await
    }
}
