//! The broker: a cheap, cloneable async handle in front of P partitions,
//! each a writer thread (the [`engine`]) that owns its partition's state and
//! every write to its RocksDB.
//!
//! Handlers send commands over a bounded channel to the partition that owns
//! them (an enqueue by its queue and tenant, a job by the partition in its
//! id) or to all of them (Work streams, stats); a writer applies all
//! commands waiting, commits them as one synced batch (group commit), then
//! answers. What a command does to a job is in [`lifecycle`]. Reads that
//! need no in-memory state (`GetJob`, `ListJobs`) go straight to RocksDB on
//! the blocking pool, never on the async runtime.

/// The value of a `Result`, or: answer `reply` with its error and return
/// (`None` when a third argument says so). The engine's commands end this
/// way whenever a lookup or scan fails.
macro_rules! or_reply {
    ($result:expr, $reply:expr) => {
        or_reply!($result, $reply, ())
    };
    ($result:expr, $reply:expr, $ret:expr) => {
        match $result {
            Ok(v) => v,
            Err(e) => {
                let _ = $reply.send(Err(e));
                return $ret;
            }
        }
    };
}

/// Answers `reply` after the commit: with `value` if it succeeded, else
/// with the commit's error.
fn reply_after<T: Send + 'static>(reply: Reply<T>, value: T) -> engine::AfterCommit {
    Box::new(move |err| {
        let _ = reply.send(match err {
            None => Ok(value),
            Some(e) => Err(e.clone()),
        });
    })
}

mod admin;
mod batch_intent;
mod catalog;
mod clock;
mod dispatch;
mod engine;
#[cfg(test)]
mod engine_tests;
mod leadership;
mod leases;
mod lifecycle;
mod merge;
pub mod monitor;
pub mod observe;
mod partition;
mod quarantine;
pub(crate) mod queue_state;
mod rate_limit;
mod reads;
mod record_cache;
mod recovery;
mod shared;
mod tasks;
pub(crate) mod turn_log;
pub mod version_breaker;
pub mod view;
mod writes;

use crate::error::{BrokerError, Result};
use crate::model::{JobId, JobState, LeaseId, Millis, NewJob, QueueConfig, TenantPolicy};
use crate::partition::placement::{Layout, PartitionId};
use crate::pb;
use crate::storage::{Durability, Store};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where a Work stream's responses go.
pub type StreamTx = mpsc::UnboundedSender<std::result::Result<pb::WorkResponse, tonic::Status>>;

/// What a queue looks like to request handlers (validation without a round
/// trip to the writer).
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub config: QueueConfig,
    pub paused: bool,
    /// Tenant policies (for the enqueue rate limiter).
    pub policies: HashMap<String, TenantPolicy>,
}

/// Queue definitions readable from any thread; only the engine writes it.
pub type Registry = Arc<RwLock<HashMap<String, QueueInfo>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueOutcome {
    pub id: JobId,
    pub deduplicated: bool,
}

/// What a worker does with a leased job.
#[derive(Debug, Clone)]
pub enum SettleAction {
    Ack,
    Nack {
        error: String,
        retry_after: Option<Duration>,
        dead: bool,
    },
    Extend {
        duration: Option<Duration>,
    },
    /// Given back unstarted: ready again, and not an attempt.
    Release,
}

impl SettleAction {
    pub fn kind(&self) -> &'static str {
        match self {
            SettleAction::Ack => "ack",
            SettleAction::Nack { .. } => "nack",
            SettleAction::Extend { .. } => "extend",
            SettleAction::Release => "release",
        }
    }

    /// True when the action ends the lease (everything but an extend).
    pub fn finishes(&self) -> bool {
        !matches!(self, SettleAction::Extend { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SettleOutcome {
    Acked,
    Nacked { state: JobState, run_at: Option<Millis> },
    Extended { expires_at: Millis },
    Released,
}

/// Who hears about a settle: a unary caller, or a Work stream.
pub enum SettleReply {
    Unary(oneshot::Sender<Result<SettleOutcome>>),
    Stream { tx: StreamTx, job_id: String, kind: &'static str },
}

/// A Work stream's subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub queues: Vec<String>,
    pub worker_id: String,
    pub worker_version: String,
    pub max_in_flight: u32,
    pub lease_duration: Option<Duration>,
    /// Only jobs of these tenants are delivered; `None` = every tenant. Set
    /// from the worker's token, so a tenant's worker never sees another's jobs.
    pub tenants: TenantFilter,
}

/// The tenants a worker may receive jobs of; `None` = every tenant. Shared,
/// because every lease made for the worker consults it.
pub type TenantFilter = Option<Arc<[String]>>;

/// A unary long-poll lease.
#[derive(Debug, Clone)]
pub struct LeaseSpec {
    pub queues: Vec<String>,
    pub max_jobs: u32,
    pub wait: Duration,
    pub lease_duration: Option<Duration>,
    pub worker_id: String,
    /// As [`Subscription::worker_version`]: the circuit breaker judges and
    /// fences unary workers by it too.
    pub worker_version: String,
    /// As [`Subscription::tenants`].
    pub tenants: TenantFilter,
}

/// Which jobs an admin operation covers: every tenant, one tenant, or one
/// tenant's environment; `environment` alone means that environment of
/// every tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupScope {
    pub tenant: Option<String>,
    pub environment: Option<String>,
}

impl GroupScope {
    pub fn covers(&self, tenant: &str, environment: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.environment.as_deref().is_none_or(|e| e == environment)
    }
}

/// Which dead letters a redrive moves back to ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// Those in scope, at most `limit` (0 = all).
    Matching { scope: GroupScope, limit: u64 },
    /// One job, by id.
    Job(JobId),
}

/// Fields of `UpdateQueue` that were set.
#[derive(Debug, Clone, Default)]
pub struct QueueConfigPatch {
    pub default_lease: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub backoff_initial: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub dedup_window: Option<Duration>,
    pub max_payload_bytes: Option<u32>,
    pub weight: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub tenant_max_in_flight: Option<u32>,
    pub alert_oldest_ready_age: Option<Duration>,
    pub alert_backlog: Option<u64>,
    pub alert_stalled_after: Option<Duration>,
    pub alert_unattended_after: Option<Duration>,
    pub alert_dead_letter_window: Option<Duration>,
    pub breaker_failure_percent: Option<u32>,
    pub breaker_min_deliveries: Option<u32>,
    pub breaker_window: Option<u32>,
    pub breaker_baseline_max_age: Option<Duration>,
}

impl QueueConfigPatch {
    pub fn apply(&self, base: &QueueConfig) -> QueueConfig {
        QueueConfig {
            default_lease: self.default_lease.unwrap_or(base.default_lease),
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            backoff_initial: self.backoff_initial.unwrap_or(base.backoff_initial),
            backoff_max: self.backoff_max.unwrap_or(base.backoff_max),
            dedup_window: self.dedup_window.unwrap_or(base.dedup_window),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(base.max_payload_bytes),
            weight: self.weight.unwrap_or(base.weight),
            max_in_flight: self.max_in_flight.unwrap_or(base.max_in_flight),
            tenant_max_in_flight: self.tenant_max_in_flight.unwrap_or(base.tenant_max_in_flight),
            alerts: crate::model::AlertConfig {
                oldest_ready_age: self.alert_oldest_ready_age.unwrap_or(base.alerts.oldest_ready_age),
                backlog: self.alert_backlog.unwrap_or(base.alerts.backlog),
                stalled_after: self.alert_stalled_after.unwrap_or(base.alerts.stalled_after),
                unattended_after: self.alert_unattended_after.unwrap_or(base.alerts.unattended_after),
                dead_letter_window: self.alert_dead_letter_window.unwrap_or(base.alerts.dead_letter_window),
            },
            breaker: crate::model::BreakerConfig {
                failure_percent: self.breaker_failure_percent.unwrap_or(base.breaker.failure_percent),
                min_deliveries: self.breaker_min_deliveries.unwrap_or(base.breaker.min_deliveries),
                window: self.breaker_window.unwrap_or(base.breaker.window),
                baseline_max_age: self.breaker_baseline_max_age.unwrap_or(base.breaker.baseline_max_age),
            },
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Everything the engine can be asked to do.
pub(crate) enum Command {
    Enqueue {
        jobs: Vec<NewJob>,
        batch: bool,
        reply: Reply<Vec<EnqueueOutcome>>,
    },
    /// The coordinating partition's part of a batch across partitions, and
    /// the intent naming the other parts (encoded), in one write; answered
    /// with the intent's number. See `batch_intent.rs`.
    EnqueueCoordinated {
        jobs: Vec<NewJob>,
        intent: Vec<u8>,
        reply: Reply<(Vec<EnqueueOutcome>, u64)>,
    },
    /// This partition's part of intent `seq` of partition `from`, stored
    /// with a marker; `None` when the marker says it was stored already.
    ApplyPart {
        from: u16,
        seq: u64,
        jobs: Vec<NewJob>,
        reply: Reply<Option<Vec<EnqueueOutcome>>>,
    },
    /// Every part of intent `seq` is stored: drop it (fsynced).
    DropIntent {
        seq: u64,
        reply: Reply<()>,
    },
    /// Drop a marker whose intent is gone, or (at start, once every intent
    /// is done) all of them.
    DropApplied {
        which: Option<(u16, u64)>,
        reply: Option<Reply<()>>,
    },
    /// At start: the intents this partition coordinates.
    Intents {
        reply: Reply<Vec<(u64, crate::storage::records::BatchIntentRecord)>>,
    },
    Settle {
        queue: String,
        job: JobId,
        lease: LeaseId,
        action: SettleAction,
        reply: SettleReply,
    },
    /// Acks of one `AckBatch` on a Work stream, each answered on `tx`.
    Acks {
        acks: Vec<(String, JobId, LeaseId)>,
        tx: StreamTx,
    },
    Cancel {
        queue: String,
        job: JobId,
        reply: Reply<bool>,
    },
    Subscribe {
        id: u64,
        sub: Subscription,
        tx: StreamTx,
        /// The stream's slots, shared by every partition.
        window: Arc<crate::partition::window::Window>,
    },
    Unsubscribe {
        id: u64,
    },
    /// A Work stream asks for no more deliveries; `done` once what the
    /// partition had to answer before it is answered.
    Drain {
        id: u64,
        done: oneshot::Sender<()>,
    },
    ListWorkers {
        queue: Option<String>,
        reply: Reply<Vec<(u64, pb::WorkerInfo)>>,
    },
    Lease {
        spec: LeaseSpec,
        /// The call's `max_jobs`, shared by every partition.
        window: Arc<crate::partition::window::Window>,
        reply: Reply<Vec<pb::Delivery>>,
    },
    /// Look at the streams again: another partition freed a slot this one
    /// wanted, or left it one.
    Wake,
    /// Every queue's definition as this partition holds it.
    Definitions {
        reply: Reply<Vec<catalog::QueueDef>>,
    },
    /// Bring this partition's copy of one queue to the catalog's.
    Adopt {
        def: catalog::QueueDef,
        reply: Option<Reply<()>>,
    },
    /// A quarantine decided by partition `from`'s breaker.
    Quarantined {
        queue: String,
        rec: crate::storage::records::QuarantineRecord,
        from: usize,
    },
    CreateQueue {
        name: String,
        config: QueueConfig,
        reply: Reply<pb::Queue>,
    },
    UpdateQueue {
        name: String,
        patch: QueueConfigPatch,
        reply: Reply<pb::Queue>,
    },
    DeleteQueue {
        name: String,
        force: bool,
        reply: Reply<bool>,
    },
    SetPaused {
        name: String,
        paused: bool,
        reply: Reply<pb::Queue>,
    },
    Stats {
        queue: String,
        reply: Reply<pb::QueueStats>,
    },
    Metrics {
        reply: Reply<monitor::MetricsSnapshot>,
    },
    Redrive {
        queue: String,
        which: Redrive,
        reply: Reply<u64>,
    },
    Purge {
        queue: String,
        state: Option<JobState>,
        scope: GroupScope,
        reply: Reply<u64>,
    },
    SetTenantPolicy {
        queue: String,
        tenant: String,
        env: Option<String>,
        policy: TenantPolicy,
        reply: Reply<pb::TenantPolicy>,
    },
    LiftQuarantine {
        queue: String,
        version: String,
        reply: Reply<pb::WorkerVersionQuarantine>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Partition 0's directory in a data dir (opening the layout, moving a
/// format-1 dir into place): where a broker of one partition keeps its
/// RocksDB. For tests that open that RocksDB themselves.
pub fn partition_store_dir(data_dir: &Path, partitions: Option<u32>) -> Result<std::path::PathBuf> {
    crate::storage::data_dir::open(data_dir, partitions, 1)?;
    Ok(crate::storage::data_dir::partition_dir(data_dir, PartitionId(0)))
}

/// The async face of the broker: routes each call to the partition that
/// owns it (a job by its id, an enqueue by its queue and tenant), or to all
/// of them (a Work stream, a long-poll, the stats), and makes queue
/// definitions the same in all ([`catalog`]). Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    parts: Arc<[partition::Partition]>,
    /// Which partition holds a (queue, tenant).
    layout: Arc<Layout>,
    shared: Arc<shared::Shared>,
    next_consumer: Arc<std::sync::atomic::AtomicU64>,
    /// Per-tenant enqueue rate limits, checked before the writers.
    limiter: Arc<rate_limit::RateLimiter>,
    /// False until every partition has rebuilt its state from disk and
    /// agrees with the catalog: calls made earlier wait for it (async ones)
    /// or are refused as retryable.
    ready: tokio::sync::watch::Receiver<bool>,
}

/// How the broker's start-up recovery ended: `Ok` once the broker serves,
/// or the error that stops it.
pub type Recovery = oneshot::Receiver<Result<RecoveryReport>>;

/// What recovery found, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryReport {
    pub queues: usize,
    pub leases: usize,
    pub elapsed: Duration,
}

impl Broker {
    /// Opens (or creates) the data dir and starts a writer per partition,
    /// each of which first rebuilds its in-memory state (O(queues, groups
    /// and leases), never O(jobs)) and then serves. Returns at once after
    /// opening RocksDB (a locked or incompatible data dir is refused here);
    /// `Recovery` says when the broker is ready. Blocking: call it off the
    /// async runtime.
    pub fn start(data_dir: &Path, durability: Durability) -> Result<(Broker, Recovery)> {
        Self::start_with(data_dir, durability, Duration::ZERO, None, 1)
    }

    /// [`start`](Self::start) with `partitions` asked for (`None`: what an
    /// existing data dir holds, `new_dir_partitions` for a new one; asking
    /// an existing dir for another number is refused), the writers pausing
    /// `hold` before they recover: lets tests observe a broker that is
    /// still starting.
    #[doc(hidden)]
    pub fn start_with(
        data_dir: &Path,
        durability: Durability,
        hold: Duration,
        partitions: Option<u32>,
        new_dir_partitions: u32,
    ) -> Result<(Broker, Recovery)> {
        let (layout, _) = crate::storage::data_dir::open(data_dir, partitions, new_dir_partitions)?;
        let mut stores = Vec::with_capacity(layout.len());
        let memory = crate::storage::Memory::new();
        for p in 0..layout.len() {
            let dir = crate::storage::data_dir::partition_dir(data_dir, PartitionId(p as u16));
            stores.push(Store::open_sharing(&dir, durability, None, &memory)?);
        }
        let logs = stores.iter().map(|_| turn_log::TurnLog::Local).collect();
        Self::start_on(layout, stores, logs, hold)
    }

    /// [`start`](Self::start) of a data dir of one partition, with `tap`
    /// seeing every batch the broker commits, in order: how a second copy of
    /// its storage is kept (the test of the storage boundary today, a
    /// replica tomorrow).
    pub fn start_with_tap(
        data_dir: &Path,
        durability: Durability,
        tap: crate::storage::CommitTap,
    ) -> Result<(Broker, Recovery)> {
        let (layout, _) = crate::storage::data_dir::open(data_dir, None, 1)?;
        if layout.len() != 1 {
            return Err(BrokerError::InvalidArgument("a commit tap follows a data dir of one partition".into()));
        }
        let dir = crate::storage::data_dir::partition_dir(data_dir, PartitionId(0));
        let store = Store::open_with_tap(&dir, durability, Some(tap))?;
        Self::start_on(layout, vec![store], vec![turn_log::TurnLog::Local], Duration::ZERO)
    }

    /// A cluster node's broker over its replicas of every partition: each
    /// partition's store is its Raft group's state machine (opened by the
    /// caller in `partition_dir(data_dir, p)`), and each writer turn is
    /// proposed through `proposers[p]` and answered once a majority has it.
    /// Blocking: call it off the async runtime.
    #[doc(hidden)]
    pub fn start_replicated(
        data_dir: &Path,
        stores: Vec<Store>,
        proposers: Vec<crate::cluster::proposer::RaftProposer>,
    ) -> Result<(Broker, Recovery)> {
        let n = stores.len() as u32;
        if proposers.len() != stores.len() {
            return Err(BrokerError::Internal(format!("{} stores but {} Raft groups", stores.len(), proposers.len())));
        }
        let (layout, _) = crate::storage::data_dir::open(data_dir, Some(n), n)?;
        let logs = proposers.into_iter().map(turn_log::TurnLog::Raft).collect();
        Self::start_on(layout, stores, logs, Duration::ZERO)
    }

    /// In a cluster, on the node that has just come to lead every
    /// partition: completes what an earlier home may have left half done
    /// (a queue created or deleted on some partitions only, a batch across
    /// partitions with parts unstored), as a single node does at start.
    /// Calls are refused until [`Broker::repaired`]. Blocking.
    #[doc(hidden)]
    pub fn repair(&self) -> Result<()> {
        catalog::reconcile(&self.parts)?;
        batch_intent::replay(&self.parts)?;
        Ok(())
    }

    /// In a cluster: partition `p`'s leader on this node has not heard from
    /// a majority for long (`Some`, why), so calls to it are refused with
    /// `UNAVAILABLE` at once; or it has again (`None`).
    #[doc(hidden)]
    pub fn set_cut_off(&self, p: usize, why: Option<String>) {
        self.shared.set_cut_off(p, why);
    }

    /// Refuses calls until the next [`Broker::repair`] and
    /// [`Broker::repaired`] (a cluster node that is not, or no longer, the
    /// home of every partition).
    #[doc(hidden)]
    pub fn hold_for_repair(&self) {
        self.shared.set_repairing(true);
    }

    /// Ends what [`Broker::repair`] began: calls are served again.
    #[doc(hidden)]
    pub fn repaired(&self) {
        self.shared.set_repairing(false);
    }

    fn start_on(
        layout: Layout,
        stores: Vec<Store>,
        logs: Vec<turn_log::TurnLog>,
        hold: Duration,
    ) -> Result<(Broker, Recovery)> {
        let replicated = logs.iter().any(|l| matches!(l, turn_log::TurnLog::Raft(_)));
        let shared = Arc::new(shared::Shared::new(stores.len()));
        // A cluster node repairs when it becomes the home, not at start
        // (it leads nothing yet). One partition has nothing to repair.
        shared.set_repairing(replicated && stores.len() > 1);
        let mut parts = Vec::with_capacity(stores.len());
        let mut recoveries = Vec::with_capacity(stores.len());
        for (p, (store, log)) in stores.into_iter().zip(logs).enumerate() {
            let (part, recovery) = partition::Partition::start(store, p, shared.clone(), hold, log)?;
            parts.push(part);
            recoveries.push(recovery);
        }
        shared.set_peers(parts.iter().map(|p| p.tx.downgrade()).collect());
        let parts: Arc<[partition::Partition]> = parts.into();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (recovered_tx, recovered) = oneshot::channel();
        let waiting = parts.clone();
        std::thread::Builder::new()
            .name("fairway-recovery".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let result = recover_all(&waiting, recoveries, !replicated).map(|mut report| {
                    report.elapsed = started.elapsed();
                    report
                });
                if result.is_ok() {
                    let _ = ready_tx.send(true);
                }
                let _ = recovered_tx.send(result);
            })
            .map_err(|e| BrokerError::Internal(format!("cannot start recovery thread: {e}")))?;
        let broker = Broker {
            parts,
            layout: Arc::new(layout),
            shared,
            next_consumer: Arc::new(1.into()),
            limiter: Arc::default(),
            ready,
        };
        Ok((broker, recovered))
    }

    /// Wakes partition `p`'s writer for a turn now (in a cluster, when its
    /// node's role in the partition changed). A full command queue means
    /// the writer is turning anyway.
    pub fn wake_partition(&self, p: usize) {
        if let Some(part) = self.parts.get(p) {
            let _ = part.tx.try_send(Command::Wake);
        }
    }

    /// Partitions this broker holds.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Partition 0's storage, for tests that inject faults into it.
    #[doc(hidden)]
    pub fn store(&self) -> &Store {
        &self.parts[0].store
    }

    /// Waits until start-up recovery is done: every async entry point calls
    /// it first, so calls made while the broker starts wait (bounded by the
    /// server's request deadline) rather than fail.
    async fn until_ready(&self) -> Result<()> {
        if *self.ready.borrow() {
            return Ok(());
        }
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.map(|_| ()).map_err(|_| BrokerError::ShuttingDown)
    }

    /// The catalog's queue registry (partition 0's), once recovery is done;
    /// before that a retryable refusal, never a false "queue does not
    /// exist".
    fn reg(&self) -> Result<std::sync::RwLockReadGuard<'_, HashMap<String, QueueInfo>>> {
        if !*self.ready.borrow() {
            return Err(BrokerError::Starting);
        }
        // In a cluster the catalog is partition 0's: on a node that does not
        // lead it, the copy here may be stale, so nothing is judged by it.
        if let Some(why) = self.shared.not_leading(0) {
            return Err(BrokerError::Unavailable(why));
        }
        self.parts[0].registry.read().map_err(|_| BrokerError::Internal("queue registry poisoned".into()))
    }

    fn catalog(&self) -> &partition::Partition {
        &self.parts[0]
    }

    /// The partition of a (queue, tenant).
    fn place(&self, queue: &str, tenant: &str) -> usize {
        if self.parts.len() == 1 {
            return 0;
        }
        usize::from(self.layout.place(queue, tenant).0)
    }

    /// The partition that made job `id` (named in its top bits).
    fn owner(&self, queue: &str, id: JobId) -> Result<&partition::Partition> {
        let p = usize::from(crate::partition::placement::partition_of_job(id).0);
        self.parts.get(p).ok_or_else(|| BrokerError::JobNotFound { queue: queue.to_string(), job: id.to_string() })
    }

    pub fn queue_info(&self, queue: &str) -> Result<QueueInfo> {
        self.reg()?.get(queue).cloned().ok_or_else(|| BrokerError::QueueNotFound(queue.to_string()))
    }

    /// Sends the same command to every partition and gathers the answers,
    /// in partition order.
    async fn call_all<T>(&self, make: impl Fn(Reply<T>) -> Command) -> Result<Vec<T>> {
        self.until_ready().await?;
        let calls = self.parts.iter().map(|p| p.call(&make));
        futures::future::join_all(calls).await.into_iter().collect()
    }

    /// Enqueues jobs atomically: either all are stored or none. A batch
    /// whose jobs belong to several partitions is stored by each of them;
    /// see docs/partitions.md for what that means after a crash.
    pub async fn enqueue(&self, jobs: Vec<NewJob>, batch: bool) -> Result<Vec<EnqueueOutcome>> {
        self.until_ready().await?;
        self.admit(&jobs, batch)?;
        let split = self.split_jobs(jobs);
        let stored = if batch && split.len() > 1 {
            // All or nothing across partitions, crashes included.
            self.enqueue_across(split).await?
        } else {
            let calls = split.into_iter().map(|(p, idx, jobs)| async move {
                let out = self.parts[p].call(|reply| Command::Enqueue { jobs, batch, reply }).await?;
                Ok::<_, BrokerError>((idx, out))
            });
            futures::future::join_all(calls).await.into_iter().collect::<Result<Vec<_>>>()?
        };
        let mut results: Vec<Option<EnqueueOutcome>> = Vec::new();
        for (idx, out) in stored {
            for (i, o) in idx.into_iter().zip(out) {
                if results.len() <= i {
                    results.resize(i + 1, None);
                }
                results[i] = Some(o);
            }
        }
        results
            .into_iter()
            .map(|o| o.ok_or_else(|| BrokerError::Internal("enqueue returned too few results".into())))
            .collect()
    }

    /// Groups jobs by partition, remembering each one's place in the input.
    fn split_jobs(&self, jobs: Vec<NewJob>) -> Vec<(usize, Vec<usize>, Vec<NewJob>)> {
        if self.parts.len() == 1 {
            let idx = (0..jobs.len()).collect();
            return vec![(0, idx, jobs)];
        }
        let mut by: BTreeMap<usize, (Vec<usize>, Vec<NewJob>)> = BTreeMap::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let e = by.entry(self.place(&job.queue, &job.tenant)).or_default();
            e.0.push(i);
            e.1.push(job);
        }
        by.into_iter().map(|(p, (idx, jobs))| (p, idx, jobs)).collect()
    }

    /// Enqueues jobs independently: each gets its own result, and one
    /// refused job doesn't stop the others (EnqueueStream). The accepted ones
    /// of each partition still travel to its writer as one command, so they
    /// share a commit.
    pub async fn enqueue_each(&self, jobs: Vec<NewJob>) -> Vec<Result<EnqueueOutcome>> {
        if let Err(e) = self.until_ready().await {
            return jobs.iter().map(|_| Err(e.clone())).collect();
        }
        let mut results: Vec<Option<Result<EnqueueOutcome>>> = Vec::with_capacity(jobs.len());
        let mut accepted = Vec::with_capacity(jobs.len());
        let mut places = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            match self.admit(std::slice::from_ref(&job), false) {
                Ok(()) => {
                    results.push(None);
                    places.push(i);
                    accepted.push(job);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let calls = self.split_jobs(accepted).into_iter().map(|(p, idx, jobs)| async move {
            (idx, self.parts[p].call(|reply| Command::Enqueue { jobs, batch: false, reply }).await)
        });
        for (idx, stored) in futures::future::join_all(calls).await {
            match stored {
                Ok(out) => {
                    let mut out = out.into_iter();
                    for i in idx {
                        let r =
                            out.next().ok_or_else(|| BrokerError::Internal("enqueue returned too few results".into()));
                        results[places[i]] = Some(r);
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[places[i]] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::Internal("enqueue returned too few results".into()))))
            .collect()
    }

    /// Checks every job against its queue (exists, payload size) and the
    /// tenants' enqueue rates, under one read of the registry and without
    /// copying queue settings: this runs for every enqueue.
    fn admit(&self, jobs: &[NewJob], batch: bool) -> Result<()> {
        let reg = self.reg()?;
        let mut wants: HashMap<(String, String), u32> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let ctx = |e: BrokerError| if batch { e.context(&format!("jobs[{i}]")) } else { e };
            let info = reg.get(&job.queue).ok_or_else(|| ctx(BrokerError::QueueNotFound(job.queue.clone())))?;
            if job.payload.len() > info.config.max_payload_bytes as usize {
                return Err(ctx(BrokerError::InvalidArgument(format!(
                    "payload is {} bytes; queue {:?} accepts at most {} (QueueConfig.max_payload_bytes)",
                    job.payload.len(),
                    job.queue,
                    info.config.max_payload_bytes
                ))));
            }
            if info.policies.get(&job.tenant).is_some_and(|p| p.enqueue_rate > 0.0) {
                *wants.entry((job.queue.clone(), job.tenant.clone())).or_default() += 1;
            }
        }
        if wants.is_empty() {
            return Ok(());
        }
        self.limiter.admit(&wants, |queue, tenant| reg.get(queue).and_then(|q| q.policies.get(tenant).cloned()))
    }

    pub async fn settle(
        &self,
        queue: String,
        job: JobId,
        lease: LeaseId,
        action: SettleAction,
    ) -> Result<SettleOutcome> {
        let part = self.owner(&queue, job)?;
        let (reply, rx) = oneshot::channel();
        part.send(Command::Settle { queue, job, lease, action, reply: SettleReply::Unary(reply) }).await?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Settles from a Work stream: the outcome is pushed onto the stream.
    pub async fn settle_on_stream(
        &self,
        queue: String,
        job: JobId,
        lease: LeaseId,
        action: SettleAction,
        tx: StreamTx,
    ) -> Result<()> {
        let part = self.owner(&queue, job)?;
        let reply = SettleReply::Stream { tx, job_id: job.to_string(), kind: action.kind() };
        part.send(Command::Settle { queue, job, lease, action, reply }).await
    }

    /// Acks from one `AckBatch`: one command to each partition they belong
    /// to, each ack applied in order as if sent alone, each outcome pushed
    /// onto the stream.
    pub async fn acks_on_stream(&self, acks: Vec<(String, JobId, LeaseId)>, tx: StreamTx) -> Result<()> {
        if self.parts.len() == 1 {
            return self.parts[0].send(Command::Acks { acks, tx }).await;
        }
        let mut by: BTreeMap<usize, Vec<(String, JobId, LeaseId)>> = BTreeMap::new();
        for ack in acks {
            let p = usize::from(crate::partition::placement::partition_of_job(ack.1).0).min(self.parts.len() - 1);
            by.entry(p).or_default().push(ack);
        }
        for (p, acks) in by {
            self.parts[p].send(Command::Acks { acks, tx: tx.clone() }).await?;
        }
        Ok(())
    }

    pub async fn cancel(&self, queue: String, job: JobId) -> Result<bool> {
        self.until_ready().await?;
        self.owner(&queue, job)?.call(|reply| Command::Cancel { queue, job, reply }).await
    }

    /// Registers a Work stream with every partition, sharing one window of
    /// `max_in_flight` slots; deliveries flow to `tx` until
    /// [`Self::unsubscribe`].
    pub async fn subscribe(&self, sub: Subscription, tx: StreamTx) -> Result<u64> {
        self.until_ready().await?;
        for q in &sub.queues {
            self.queue_info(q)?;
        }
        let id = self.next_consumer.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let window = Arc::new(crate::partition::window::Window::new(sub.max_in_flight.max(1)));
        for p in self.parts.iter() {
            let cmd = Command::Subscribe { id, sub: sub.clone(), tx: tx.clone(), window: window.clone() };
            p.send(cmd).await?;
        }
        Ok(id)
    }

    /// A Work stream asks for no more deliveries; the broker answers on
    /// `tx` with an Outcome of kind "drain" once every partition has
    /// stopped delivering to it, after which none follow.
    pub async fn drain(&self, id: u64, tx: StreamTx) -> Result<()> {
        let mut dones = Vec::with_capacity(self.parts.len());
        for p in self.parts.iter() {
            let (done, rx) = oneshot::channel();
            p.send(Command::Drain { id, done }).await?;
            dones.push(rx);
        }
        tokio::spawn(async move {
            for d in dones {
                if d.await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(view::drained()));
        });
        Ok(())
    }

    /// Ends a Work stream: its leases go back to ready at once.
    pub fn unsubscribe(&self, id: u64) {
        for p in self.parts.iter() {
            p.send_now(Command::Unsubscribe { id });
        }
    }

    /// A unary long-poll. With several partitions, first a round without
    /// waiting: `max_jobs` split between partitions in proportion to their
    /// demand for the call's queues (`split::quotas`; each partition's
    /// scheduler then serves its tenants by weight, so the call's jobs
    /// follow the tenants' weights across partitions), and what a partition
    /// could not fill offered to those that filled theirs. Only when that
    /// finds nothing does the call wait: every partition may lease for it
    /// from one shared budget, and the first one with jobs answers it (the
    /// others then answer what they hold at once).
    pub async fn lease(&self, spec: LeaseSpec) -> Result<Vec<pb::Delivery>> {
        self.until_ready().await?;
        for q in &spec.queues {
            self.queue_info(q)?;
        }
        let max = spec.max_jobs.max(1);
        if self.parts.len() == 1 {
            let window = Arc::new(crate::partition::window::Window::new(max));
            return self.parts[0].call(|reply| Command::Lease { spec, window, reply }).await;
        }
        let got = self.lease_by_quota(&spec, max).await?;
        if !got.is_empty() || spec.wait.is_zero() {
            return Ok(got);
        }
        self.lease_waiting(spec, max).await
    }

    /// The rounds without waiting of [`lease`](Self::lease).
    async fn lease_by_quota(&self, spec: &LeaseSpec, max: u32) -> Result<Vec<pb::Delivery>> {
        let n = self.parts.len();
        // Each queue's weight, split between partitions by their demand for
        // it (their tenants' weights): the partitions' shares of the call.
        let mut demand = vec![0u64; n];
        for q in &spec.queues {
            let weight = self.queue_info(q).map_or(1, |i| u64::from(i.config.weight.max(1)));
            let of_queue = self.shared.shares.of(q).demands();
            let total: u64 = of_queue.iter().sum();
            if total == 0 {
                continue;
            }
            for (d, q) in demand.iter_mut().zip(of_queue) {
                *d += (u128::from(weight) * u128::from(q) * 1_000_000 / u128::from(total)) as u64;
            }
        }
        let (mut want, mut open, mut got) = (max, vec![true; n], Vec::new());
        let mut first_error = None;
        for _round in 0..3 {
            let mut d: Vec<u64> = demand.iter().zip(&open).map(|(d, o)| if *o { *d } else { 0 }).collect();
            if d.iter().all(|x| *x == 0) {
                d = open.iter().map(|o| u64::from(*o)).collect();
            }
            let quotas = match spec.queues.as_slice() {
                // One queue: as its split would hand the jobs out one by
                // one, so successive calls add up to the tenants' shares.
                [q] if open.iter().all(|o| *o) => self.shared.shares.of(q).quotas(want),
                _ => crate::partition::split::quotas(want, &d),
            };
            let calls = quotas.iter().enumerate().filter(|(_, q)| **q > 0).map(|(p, q)| {
                let spec = LeaseSpec { wait: Duration::ZERO, max_jobs: *q, ..spec.clone() };
                let window = Arc::new(crate::partition::window::Window::new(*q));
                let quota = *q;
                async move { (p, quota, self.parts[p].call(|reply| Command::Lease { spec, window, reply }).await) }
            });
            let mut progress = false;
            for (p, quota, answer) in futures::future::join_all(calls).await {
                match answer {
                    Ok(jobs) => {
                        open[p] &= jobs.len() as u32 >= quota;
                        progress |= !jobs.is_empty();
                        want = want.saturating_sub(jobs.len() as u32);
                        got.extend(jobs);
                    }
                    Err(e) => {
                        open[p] = false;
                        first_error.get_or_insert(e);
                    }
                }
            }
            if want == 0 || !progress || !open.iter().any(|o| *o) {
                break;
            }
        }
        match first_error {
            Some(e) if got.is_empty() => Err(e),
            _ => Ok(got),
        }
    }

    /// The waiting part of [`lease`](Self::lease).
    async fn lease_waiting(&self, spec: LeaseSpec, max: u32) -> Result<Vec<pb::Delivery>> {
        let window = Arc::new(crate::partition::window::Window::new(max));
        let mut pending = futures::stream::FuturesUnordered::new();
        for p in self.parts.iter() {
            let (spec, window) = (spec.clone(), window.clone());
            pending.push(p.call(move |reply| Command::Lease { spec, window, reply }));
        }
        use futures::StreamExt;
        let mut got = Vec::new();
        let mut first_error = None;
        while let Some(answer) = pending.next().await {
            match answer {
                Ok(jobs) => {
                    if !jobs.is_empty() && !window.is_closed() {
                        window.close();
                        for p in self.parts.iter() {
                            p.send_now(Command::Wake);
                        }
                    }
                    got.extend(jobs);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if got.is_empty() => Err(e),
            _ => Ok(got),
        }
    }

    /// After a change partition 0 committed to queue `name`: every other
    /// partition adopts partition 0's definition of it.
    async fn spread(&self, name: &str) -> Result<()> {
        if self.parts.len() == 1 {
            return Ok(());
        }
        let defs = self.catalog().call(|reply| Command::Definitions { reply }).await?;
        let Some(def) = defs.into_iter().find(|d| d.name() == name) else { return Ok(()) };
        let calls = self.parts[1..].iter().map(|p| {
            let def = def.clone();
            p.call(move |reply| Command::Adopt { def, reply: Some(reply) })
        });
        futures::future::join_all(calls).await.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(())
    }

    pub async fn create_queue(&self, name: String, config: QueueConfig) -> Result<pb::Queue> {
        self.until_ready().await?;
        let n = name.clone();
        let q = self.catalog().call(|reply| Command::CreateQueue { name: n, config, reply }).await?;
        self.spread(&name).await?;
        Ok(q)
    }

    pub async fn update_queue(&self, name: String, patch: QueueConfigPatch) -> Result<pb::Queue> {
        self.until_ready().await?;
        let n = name.clone();
        let q = self.catalog().call(|reply| Command::UpdateQueue { name: n, patch, reply }).await?;
        self.spread(&name).await?;
        Ok(q)
    }

    /// Deletes a queue in every partition. Forced: partition 0 first (the
    /// delete has happened once it commits), then the others. Not forced:
    /// the others first, each refusing if it still holds jobs (and then the
    /// ones that had dropped theirs take the definition back), partition 0
    /// last.
    pub async fn delete_queue(&self, name: String, force: bool) -> Result<bool> {
        self.until_ready().await?;
        let del = |p: &partition::Partition, force: bool| delete_in(p.clone(), name.clone(), force);
        if force || self.parts.len() == 1 {
            let deleted = del(self.catalog(), force).await?;
            for p in self.parts[1..].iter() {
                match del(p, true).await {
                    Ok(_) | Err(BrokerError::QueueNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(deleted);
        }
        self.queue_info(&name)?;
        let mut dropped = Vec::new();
        let mut refusal = None;
        for (i, p) in self.parts.iter().enumerate().skip(1) {
            match del(p, false).await {
                Ok(_) | Err(BrokerError::QueueNotFound(_)) => dropped.push(i),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        if refusal.is_none() {
            match del(self.catalog(), false).await {
                Ok(deleted) => return Ok(deleted),
                Err(e) => refusal = Some(e),
            }
        }
        // Not deleted: the partitions that dropped their (empty) copy take
        // the catalog's definition back.
        let defs = self.catalog().call(|reply| Command::Definitions { reply }).await?;
        if let Some(def) = defs.into_iter().find(|d| d.name() == name) {
            for i in dropped {
                let def = def.clone();
                self.parts[i].call(move |reply| Command::Adopt { def, reply: Some(reply) }).await?;
            }
        }
        Err(refusal.unwrap_or_else(|| BrokerError::Internal("delete refused".into())))
    }

    pub async fn set_paused(&self, name: String, paused: bool) -> Result<pb::Queue> {
        self.until_ready().await?;
        let n = name.clone();
        let q = self.catalog().call(|reply| Command::SetPaused { name: n, paused, reply }).await?;
        self.spread(&name).await?;
        Ok(q)
    }

    pub async fn get_queue(&self, name: &str) -> Result<pb::Queue> {
        self.until_ready().await?;
        let info = self.queue_info(name)?;
        Ok(view::queue(name, &info.config, info.paused))
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::Queue>> {
        self.until_ready().await?;
        let reg = self.reg()?;
        let mut out: Vec<_> = reg.iter().map(|(n, i)| view::queue(n, &i.config, i.paused)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn stats(&self, queue: String) -> Result<pb::QueueStats> {
        let all = self.call_all(|reply| Command::Stats { queue: queue.clone(), reply }).await?;
        merge::stats(all).ok_or_else(|| BrokerError::Internal("no partition answered".into()))
    }

    /// Every queue's figures, for `/metrics` and the dashboard.
    pub async fn metrics(&self) -> Result<monitor::MetricsSnapshot> {
        Ok(merge::metrics(self.call_all(|reply| Command::Metrics { reply }).await?))
    }

    /// Queue name -> healthy (no alert active in any partition); changes as
    /// alerts do.
    pub fn health(&self) -> tokio::sync::watch::Receiver<monitor::HealthMap> {
        self.shared.health()
    }

    /// Why writes to the data dir fail (disk full, read-only), while they
    /// do; `None` when they work.
    pub fn storage_fault(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.storage_fault()
    }

    /// RocksDB's own figures (properties) for `/metrics`, over every
    /// partition's database.
    pub async fn store_figures(&self, queues: Vec<String>) -> Result<crate::storage::figures::StoreFigures> {
        let reads = self.parts.iter().map(|p| {
            let (store, names) = (p.store.clone(), queues.clone());
            spawn_read(move || Ok(store.figures(&names)))
        });
        let all = futures::future::join_all(reads).await.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(merge::figures(all))
    }

    pub async fn redrive(&self, queue: String, which: Redrive) -> Result<u64> {
        if let Redrive::Job(id) = &which {
            let id = *id;
            self.until_ready().await?;
            return self.owner(&queue, id)?.call(|reply| Command::Redrive { queue, which, reply }).await;
        }
        let counts =
            self.call_all(|reply| Command::Redrive { queue: queue.clone(), which: which.clone(), reply }).await?;
        Ok(counts.into_iter().sum())
    }

    /// Replaces a tenant's policy; with `env`, only that environment's weight.
    pub async fn set_tenant_policy(
        &self,
        queue: String,
        tenant: String,
        env: Option<String>,
        policy: TenantPolicy,
    ) -> Result<pb::TenantPolicy> {
        self.until_ready().await?;
        let q = queue.clone();
        let set =
            self.catalog().call(|reply| Command::SetTenantPolicy { queue: q, tenant, env, policy, reply }).await?;
        self.spread(&queue).await?;
        Ok(set)
    }

    /// Lets a quarantined worker version receive jobs of `queue` again: in
    /// every other partition first, in partition 0 (the catalog) last, so a
    /// lift cut short by a crash is undone at restart rather than half done.
    pub async fn lift_quarantine(&self, queue: String, version: String) -> Result<pb::WorkerVersionQuarantine> {
        self.until_ready().await?;
        let lift = |p: &partition::Partition| lift_in(p.clone(), queue.clone(), version.clone());
        let mut lifted = None;
        for p in self.parts[1..].iter() {
            match lift(p).await {
                Ok(rec) => {
                    lifted.get_or_insert(rec);
                }
                Err(BrokerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match lift(self.catalog()).await {
            Ok(rec) => Ok(rec),
            Err(BrokerError::NotFound(_)) if lifted.is_some() => lifted.ok_or(BrokerError::ShuttingDown),
            Err(e) => Err(e),
        }
    }

    pub async fn purge(&self, queue: String, state: Option<JobState>, scope: GroupScope) -> Result<u64> {
        let counts =
            self.call_all(|reply| Command::Purge { queue: queue.clone(), state, scope: scope.clone(), reply }).await?;
        Ok(counts.into_iter().sum())
    }

    /// The workers connected on Work streams (to `queue`, or to any).
    pub async fn list_workers(&self, queue: Option<String>) -> Result<Vec<pb::WorkerInfo>> {
        if let Some(q) = &queue {
            self.until_ready().await?;
            self.queue_info(q)?;
        }
        let all = self.call_all(|reply| Command::ListWorkers { queue: queue.clone(), reply }).await?;
        Ok(merge::workers(all, dispatch::WORKER_LEASES_SHOWN))
    }

    pub async fn get_job(&self, queue: String, job: JobId) -> Result<pb::Job> {
        self.until_ready().await?;
        let info = self.queue_info(&queue)?;
        let store = self.owner(&queue, job)?.store.clone();
        spawn_read(move || reads::get_job(&store, &queue, &info.config, job)).await
    }

    /// A page of a queue's jobs. With several partitions the partitions are
    /// listed one after the other, and the page token names the partition
    /// (its first two bytes) and the key to go on after. A page is filled
    /// from the next partitions when one runs out, so an empty page means
    /// the listing is over, never "look further".
    pub async fn list_jobs(&self, mut req: reads::ListJobs) -> Result<(Vec<pb::Job>, String)> {
        self.until_ready().await?;
        let info = self.queue_info(&req.queue)?;
        let n = self.parts.len();
        if n == 1 {
            let store = self.parts[0].store.clone();
            return spawn_read(move || reads::list_jobs(&store, &info.config, &req)).await;
        }
        let foreign = || {
            BrokerError::InvalidArgument(
                "page_token does not belong to this listing; pass the token from the previous page".into(),
            )
        };
        let (first, key) = match req.page_token.take() {
            None => (0, None),
            Some(t) if t.len() >= 2 => {
                let p = usize::from(u16::from_be_bytes([t[0], t[1]]));
                if p >= n {
                    return Err(foreign());
                }
                (p, (t.len() > 2).then(|| t[2..].to_vec()))
            }
            Some(_) => return Err(foreign()),
        };
        req.page_token = key;
        let stores: Vec<_> = self.parts[first..].iter().map(|p| p.store.clone()).collect();
        spawn_read(move || {
            let page = if req.page_size == 0 { reads::DEFAULT_PAGE } else { req.page_size.min(reads::MAX_PAGE) };
            let mut jobs = Vec::new();
            let mut bytes = 0;
            for (i, store) in stores.iter().enumerate() {
                let p = first + i;
                req.page_size = page - jobs.len();
                let (got, token) = reads::list_jobs(store, &info.config, &req)?;
                bytes += got.iter().map(prost::Message::encoded_len).sum::<usize>();
                jobs.extend(got);
                let next = if !token.is_empty() {
                    // This partition has more (a full page, or its scan
                    // budget spent): go on inside it.
                    let key = hex::decode(&token).map_err(|e| {
                        BrokerError::InvalidArgument(format!(
                            "page_token is not one this broker gave out ({e}); start again without it"
                        ))
                    })?;
                    let mut t = (p as u16).to_be_bytes().to_vec();
                    t.extend(key);
                    Some(hex::encode(t))
                } else if p + 1 < n && (jobs.len() >= page || bytes >= crate::conn_limits::RESPONSE_SOFT_LIMIT) {
                    Some(hex::encode(((p + 1) as u16).to_be_bytes()))
                } else {
                    None
                };
                if let Some(next) = next {
                    return Ok((jobs, next));
                }
                req.page_token = None;
            }
            Ok((jobs, String::new()))
        })
        .await
    }

    /// Stops every writer after it has answered everything already sent,
    /// and closes each RocksDB cleanly (every acknowledged write is on disk).
    pub async fn shutdown(&self) {
        self.shared.begin_stopping();
        futures::future::join_all(self.parts.iter().map(|p| p.shutdown())).await;
    }
}

async fn delete_in(p: partition::Partition, name: String, force: bool) -> Result<bool> {
    p.call(move |reply| Command::DeleteQueue { name, force, reply }).await
}

async fn lift_in(p: partition::Partition, queue: String, version: String) -> Result<pb::WorkerVersionQuarantine> {
    p.call(move |reply| Command::LiftQuarantine { queue, version, reply }).await
}

/// Waits for every partition's recovery, then brings them all to the
/// catalog's definitions before the broker serves.
fn recover_all(
    parts: &[partition::Partition],
    recoveries: Vec<partition::PartitionRecovery>,
    repair: bool,
) -> Result<RecoveryReport> {
    let mut report = RecoveryReport { queues: 0, leases: 0, elapsed: Duration::ZERO };
    for r in recoveries {
        let got =
            r.blocking_recv().map_err(|_| BrokerError::Internal("a writer thread ended during recovery".into()))??;
        report.queues = report.queues.max(got.queues);
        report.leases += got.leases;
    }
    if repair {
        catalog::reconcile(parts)?;
        batch_intent::replay(parts)?;
    }
    Ok(report)
}

async fn spawn_read<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BrokerError::Internal(format!("read task failed: {e}")))?
}

pub use reads::ListJobs;

#[cfg(test)]
mod tests {
    use super::*;

    async fn started(dir: &Path) -> Broker {
        let (broker, recovery) = Broker::start(dir, Durability::Strict).expect("start");
        recovery.await.expect("writer answers").expect("recovered");
        broker
    }

    /// Storage closes when the last handle goes, before the drop returns:
    /// the data dir can be opened again at once, with what was written.
    #[tokio::test]
    async fn dropping_the_last_handle_closes_storage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = started(dir.path()).await;
        broker.create_queue("q".into(), QueueConfig::default()).await.expect("create");
        let other = broker.clone();
        drop(broker);
        let err = Broker::start(dir.path(), Durability::Strict).err().expect("a live handle keeps the dir locked");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(other);
        let again = started(dir.path()).await;
        let names: Vec<String> = again.list_queues().await.expect("list").into_iter().map(|q| q.name).collect();
        assert_eq!(names, ["q"]);
        again.shutdown().await;
    }
}
