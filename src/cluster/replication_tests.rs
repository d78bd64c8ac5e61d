//! One partition's Raft group on three nodes in this process, each with its
//! own Raft log, store and gRPC server on loopback: turns' batches
//! replicate, replicas stay identical, a new leader takes over when the
//! leader stops, a node that joins late catches up from a snapshot, and a
//! broker whose writer commits through the group loses no acknowledged job
//! when its node stops.

use super::log_store::LogStore;
use super::network::{Connections, Groups, NetworkFactory, TransportService};
use super::raft_types::Member;
use super::raft_types::{TurnBatch, TypeConfig};
use super::state_machine::{PartitionStateMachine, StoreSlot};
use crate::broker::Broker;
use crate::partition::placement::PartitionId;
use crate::storage::batch::{Batch, Table};
use crate::storage::data_dir::partition_dir;
use crate::storage::DumpEntry;
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const PARTITION: u32 = 7;
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct Node {
    id: u64,
    addr: String,
    /// The node's data dir (partition stores in `p0000/`...).
    data: std::path::PathBuf,
    raft: Raft<TypeConfig>,
    store: StoreSlot,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Raft settings for the tests; `purging` builds a snapshot every 8
/// entries and purges the log behind it at once, so a late node can only
/// catch up from a snapshot. (Not for nodes running a broker: a follower's
/// writer holds its store, and an install waits for it; docs/cluster.md.)
fn config(purging: bool) -> Arc<Config> {
    let mut c = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    };
    if purging {
        c.snapshot_policy = SnapshotPolicy::LogsSinceLast(8);
        c.max_in_snapshot_log_to_keep = 0;
        c.purge_batch_size = 1;
    }
    Arc::new(c.validate().expect("a valid Raft config"))
}

async fn start_with(id: u64, partition: u32, purging: bool) -> Node {
    // `RUST_LOG=openraft=debug` shows the groups' traffic when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    crate::storage::data_dir::open(&data, Some(partition + 1), 1).unwrap();
    let log = LogStore::open(&dir.path().join("raft"), &format!("n{id}")).unwrap();
    let sm = PartitionStateMachine::open(&partition_dir(&data, PartitionId(partition as u16))).await.unwrap();
    let store = sm.slot();
    let raft = Raft::new(
        id,
        config(purging),
        NetworkFactory::new(partition, Connections::default(), Default::default()),
        log,
        sm,
    )
    .await
    .unwrap();
    let groups = Groups::default();
    groups.insert(partition, raft.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TransportService::new(groups).into_server())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    Node { id, addr, data, raft, store, stop: Some(stop), _dir: dir }
}

/// Nodes 1 to 3, joined as one group of `partition` (see [`config`] for
/// `purging`).
async fn group_of_three(partition: u32, purging: bool) -> [Node; 3] {
    let nodes = [
        start_with(1, partition, purging).await,
        start_with(2, partition, purging).await,
        start_with(3, partition, purging).await,
    ];
    let members: BTreeMap<u64, Member> =
        nodes.iter().map(|n| (n.id, Member::new(&n.id.to_string(), &n.addr, &n.addr))).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    nodes
}

async fn stop(node: &mut Node) {
    let _ = node.raft.shutdown().await;
    if let Some(s) = node.stop.take() {
        let _ = s.send(());
    }
}

async fn leader_among(nodes: &[&Node]) -> u64 {
    let first = nodes[0];
    let m = first
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some_and(|l| nodes.iter().any(|n| n.id == l)), "a leader among the live nodes")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    let node = nodes.iter().find(|n| n.id == leader).unwrap();
    node.raft.wait(WAIT).state(ServerState::Leader, "the leader knows it").await.unwrap();
    leader
}

/// A turn's batch: `n` jobs written into queue `q` (made by the first turn).
fn turn(round: u32, create: bool) -> TurnBatch {
    let mut b = Batch::new();
    if create {
        b.create_queue("q");
    }
    for i in 0..20u32 {
        let key = [&[b'J'][..], &round.to_be_bytes(), &i.to_be_bytes()].concat();
        b.put(Table::Queue("q"), &key, format!("job {round}/{i}").as_bytes());
    }
    if round > 0 {
        let old = [&[b'J'][..], &(round - 1).to_be_bytes(), &0u32.to_be_bytes()].concat();
        b.delete(Table::Queue("q"), &old);
    }
    TurnBatch(b.encode())
}

/// Waits until every node has applied what the leader has, then checks
/// they hold the same bytes (callers stop writing first: the replicas then
/// converge, and any difference that stays is a bug).
async fn all_applied(nodes: &[&Node], leader: &Node) -> Vec<DumpEntry> {
    let dump = |n: &Node| n.store.get().expect("store open").dump().unwrap();
    let since = std::time::Instant::now();
    loop {
        let index = leader.raft.metrics().borrow().last_applied.map(|l| l.index);
        for n in nodes {
            n.raft.wait(WAIT).applied_index_at_least(index, "replica caught up").await.unwrap();
        }
        let want = dump(leader);
        let differs = nodes.iter().map(|n| (n.id, dump(n))).find(|(_, got)| *got != want);
        let Some((id, got)) = differs else { return want };
        if since.elapsed() > Duration::from_secs(10) {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            let show = |d: &[DumpEntry]| {
                d.get(first).map(|(c, k, v)| {
                    (c.clone(), String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())
                })
            };
            panic!(
                "node {id} differs from the leader {} ({} vs {} entries), first at {first}: {:?} vs {:?}",
                leader.id,
                got.len(),
                want.len(),
                show(&got),
                show(&want),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_replicates_fails_over_and_catches_a_new_node_up() {
    let mut nodes = group_of_three(PARTITION, true).await;

    // Turns committed on the leader reach every replica, byte for byte.
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_among(&all).await;
    let l = nodes.iter().find(|n| n.id == leader).unwrap();
    for round in 0..12 {
        l.raft.client_write(turn(round, round == 0)).await.unwrap();
    }
    let before = all_applied(&all, l).await;
    assert!(before.iter().any(|(cf, k, _)| cf == "q.q" && k.len() == 9 && k[1..5] == 11u32.to_be_bytes()));

    // The leader stops: the other two elect one of themselves and go on.
    let li = nodes.iter().position(|n| n.id == leader).unwrap();
    stop(&mut nodes[li]).await;
    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = leader_among(&live).await;
    assert_ne!(new_leader, leader);
    let nl: &Node = live.iter().find(|n| n.id == new_leader).unwrap();
    for round in 12..24 {
        nl.raft.client_write(turn(round, false)).await.unwrap();
    }
    let after = all_applied(&live, nl).await;
    assert_ne!(before, after);

    // Snapshots were built and the log purged behind them, so a new node
    // can only catch up from a snapshot: it does, and holds the same bytes.
    let m = nl.raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some() && m.purged.is_some(), "snapshot {:?}, purged {:?}", m.snapshot, m.purged);
    let n4 = start_with(4, PARTITION, true).await;
    nl.raft.add_learner(4, Member::new("4", &n4.addr, &n4.addr), true).await.unwrap();
    let voters: BTreeSet<u64> = live.iter().map(|n| n.id).chain([4]).collect();
    nl.raft.change_membership(voters, false).await.unwrap();
    nl.raft.client_write(turn(24, false)).await.unwrap();
    let mut live: Vec<&Node> = live;
    live.push(&n4);
    all_applied(&live, nl).await;
    let m4 = n4.raft.metrics().borrow().clone();
    assert!(m4.snapshot.is_some(), "node 4 caught up from a snapshot");

    let mut n4 = n4;
    stop(&mut n4).await;
    for n in nodes.iter_mut() {
        stop(n).await;
    }
}

/// A one-partition broker on `node`, its writer committing every turn
/// through the node's Raft group.
async fn broker_on(node: &Node) -> Broker {
    let grace = Duration::from_millis(800 + 2000);
    let proposer = super::proposer::RaftProposer::new(
        0,
        node.raft.clone(),
        tokio::runtime::Handle::current(),
        grace,
        tokio::sync::watch::channel(false).1,
    );
    let (data, store) = (node.data.clone(), node.store.get().expect("store open"));
    let (broker, recovery) =
        tokio::task::spawn_blocking(move || Broker::start_replicated(&data, vec![store], vec![proposer]))
            .await
            .unwrap()
            .unwrap();
    recovery.await.unwrap().unwrap();
    broker
}

fn job(i: u32) -> crate::model::NewJob {
    crate::model::NewJob {
        queue: "emails".into(),
        tenant: format!("t{}", i % 3),
        environment: String::new(),
        payload: bytes::Bytes::from(format!("job {i}")),
        headers: Default::default(),
        priority: 0,
        run_at: None,
        dedup_key: String::new(),
        max_attempts: 0,
        lease_duration: None,
        traceparent: String::new(),
    }
}

fn lease_spec(n: u32) -> crate::broker::LeaseSpec {
    crate::broker::LeaseSpec {
        queues: vec!["emails".into()],
        max_jobs: n,
        wait: Duration::ZERO,
        lease_duration: Some(Duration::from_secs(120)),
        worker_id: "w1".into(),
        worker_version: String::new(),
        tenants: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_raft_loses_no_acknowledged_job_when_its_leader_stops() {
    let mut nodes = group_of_three(0, false).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_among(&all).await;
    let l = nodes.iter().find(|n| n.id == leader).unwrap();

    // The leader's broker: a queue, 30 acknowledged enqueues, 10 leased, 4 acked.
    let broker = broker_on(l).await;
    until_served("create on the leader", || broker.create_queue("emails".into(), Default::default())).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(broker.enqueue(vec![job(i)], false).await.unwrap()[0].id);
    }
    let leased = broker.lease(lease_spec(10)).await.unwrap();
    assert_eq!(leased.len(), 10);
    let mut acked = Vec::new();
    for d in leased.iter().take(4) {
        let job = d.job.as_ref().unwrap();
        let id = crate::model::JobId::parse(&job.id).unwrap();
        let lease = crate::model::LeaseId::parse(&d.lease_id).unwrap();
        broker.settle("emails".into(), id, lease, crate::broker::SettleAction::Ack).await.unwrap();
        acked.push(id);
    }
    // Every replica holds exactly the leader's bytes.
    broker.shutdown().await;
    all_applied(&all, l).await;

    // The leader's node stops; a new leader's broker rebuilds from its
    // replica: every acknowledged job is there, acked ones are gone, and
    // the six leases still held are still held.
    let li = nodes.iter().position(|n| n.id == leader).unwrap();
    stop(&mut nodes[li]).await;
    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = leader_among(&live).await;
    let nl: &Node = live.iter().find(|n| n.id == new_leader).unwrap();
    let broker = broker_on(nl).await;
    until_served("the new leader", || broker.stats("emails".into())).await;
    for id in &ids {
        let got = broker.get_job("emails".into(), *id).await;
        assert_eq!(got.is_ok(), !acked.contains(id), "job {id}: {got:?}");
    }
    let stats = broker.stats("emails".into()).await.unwrap();
    assert_eq!((stats.ready, stats.leased), (20, 6), "{stats:?}");
    // It serves: the 20 ready jobs lease and ack on the new leader.
    let rest = broker.lease(lease_spec(50)).await.unwrap();
    assert_eq!(rest.len(), 20);
    for d in &rest {
        let id = crate::model::JobId::parse(&d.job.as_ref().unwrap().id).unwrap();
        let lease = crate::model::LeaseId::parse(&d.lease_id).unwrap();
        broker.settle("emails".into(), id, lease, crate::broker::SettleAction::Ack).await.unwrap();
    }
    broker.shutdown().await;
    all_applied(&live, nl).await;
    for n in nodes.iter_mut() {
        stop(n).await;
    }
}

fn on(brokers: &[(u64, Broker)], id: u64) -> Broker {
    brokers.iter().find(|(n, _)| *n == id).map(|(_, b)| b.clone()).expect("a broker on that node")
}

/// Retries `f` until it succeeds (a writer taking over refuses meanwhile),
/// returning how long that took.
async fn until_served<T, F, Fut>(what: &str, f: F) -> (T, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let since = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return (v, since.elapsed()),
            Err(e) if since.elapsed() < Duration::from_secs(20) => {
                assert!(matches!(e, crate::error::BrokerError::Unavailable(_)), "{what}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: still refused after 20 s: {e}"),
        }
    }
}

/// Brokers run on all three nodes at once. Only the leader's serves; the
/// others refuse with UNAVAILABLE naming the leader. When the leader's node
/// stops, the broker already running on the new leader takes over by
/// itself, within seconds, with every acknowledged job and the leases
/// still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_on_the_new_leader_takes_over_by_itself() {
    let mut nodes = group_of_three(0, false).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_among(&all).await;
    let mut brokers = Vec::new();
    for n in &nodes {
        brokers.push((n.id, broker_on(n).await));
    }

    let b = on(&brokers, leader);
    until_served("create on the leader", || b.create_queue("emails".into(), Default::default())).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(b.enqueue(vec![job(i)], false).await.unwrap()[0].id);
    }
    let old_leases = b.lease(lease_spec(5)).await.unwrap();
    assert_eq!(old_leases.len(), 5);

    // A follower refuses, naming the leader's address.
    let leader_addr = nodes.iter().find(|n| n.id == leader).unwrap().addr.clone();
    let follower = nodes.iter().find(|n| n.id != leader).unwrap().id;
    // (A follower that has not yet heard from the leader says so: retry.)
    let since = std::time::Instant::now();
    loop {
        let refused = on(&brokers, follower).enqueue(vec![job(99)], false).await.unwrap_err();
        let crate::error::BrokerError::Unavailable(m) = &refused else { panic!("{refused}") };
        if m.contains(&leader_addr) {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(5), "the follower never named the leader: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The leader's node stops (its broker with it).
    let li = nodes.iter().position(|n| n.id == leader).unwrap();
    stop(&mut nodes[li]).await;
    let old = brokers.remove(brokers.iter().position(|(n, _)| *n == leader).unwrap()).1;
    tokio::task::spawn_blocking(move || drop(old)).await.unwrap();
    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = leader_among(&live).await;

    // The broker already running there serves, with everything acknowledged.
    let b = on(&brokers, new_leader);
    let (stats, took) = until_served("stats on the new leader", || b.stats("emails".into())).await;
    assert!(took < Duration::from_secs(5), "took over in {took:?}");
    assert_eq!((stats.ready, stats.leased), (15, 5), "{stats:?}");
    for id in &ids {
        b.get_job("emails".into(), *id).await.unwrap();
    }
    // A lease granted by the old leader is acked on the new one.
    let d = &old_leases[0];
    let (id, lease) = (
        crate::model::JobId::parse(&d.job.as_ref().unwrap().id).unwrap(),
        crate::model::LeaseId::parse(&d.lease_id).unwrap(),
    );
    b.settle("emails".into(), id, lease, crate::broker::SettleAction::Ack).await.unwrap();
    b.enqueue(vec![job(20)], false).await.unwrap();
    assert_eq!(b.lease(lease_spec(50)).await.unwrap().len(), 16, "the 4 other old leases are still held");

    for (_, b) in brokers {
        b.shutdown().await;
    }
    for n in nodes.iter_mut() {
        stop(n).await;
    }
}
