//! The broker: a cheap, cloneable async handle in front of one writer thread
//! (the [`engine`]) that owns all mutable state and every RocksDB write.
//!
//! Handlers send commands over a bounded channel; the engine applies all
//! commands waiting, commits them as one synced `WriteBatch` (group commit),
//! then answers. Reads that need no in-memory state (`GetJob`, `ListJobs`) go
//! straight to RocksDB on the blocking pool, never on the async runtime.

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

mod admin;
mod dispatch;
mod engine;
#[cfg(test)]
mod engine_tests;
pub mod monitor;
pub mod observe;
mod ops;
mod quarantine;
pub(crate) mod queue_state;
mod rate_limit;
mod reads;
mod record_cache;
mod tasks;
pub mod version_breaker;
pub mod view;

use crate::error::{BrokerError, Result};
use crate::model::{JobId, JobState, LeaseId, Millis, NewJob, QueueConfig, TenantPolicy};
use crate::pb;
use crate::storage::{Durability, Store};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
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
    },
    Unsubscribe {
        id: u64,
    },
    /// A Work stream asks for no more deliveries; answered on `tx`.
    Drain {
        id: u64,
        tx: StreamTx,
    },
    ListWorkers {
        queue: Option<String>,
        reply: Reply<Vec<pb::WorkerInfo>>,
    },
    Lease {
        spec: LeaseSpec,
        reply: Reply<Vec<pb::Delivery>>,
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

/// Bound on queued commands: beyond it, callers wait (backpressure) instead
/// of growing memory without limit.
const COMMAND_QUEUE: usize = 65_536;

/// Opens the data dir's layout (moving a format-1 dir into place, making a
/// new one with `partitions`, default 1) and returns partition 0's
/// directory. This build serves one partition per data dir.
pub fn partition_store_dir(data_dir: &Path, partitions: Option<u32>) -> Result<std::path::PathBuf> {
    use crate::storage::data_dir;
    // A dir that holds a number of partitions is refused another by
    // `open`, saying what it holds; a new one is refused more than one
    // before anything is written.
    if partitions.is_some_and(|n| n > 1) && data_dir::held(data_dir)?.is_none() {
        return Err(BrokerError::InvalidArgument(
            "this build of Fairway serves one partition per data dir (--partitions 1); brokers of \
             several partitions are being built: see docs/partitions.md"
                .into(),
        ));
    }
    let (layout, _) = data_dir::open(data_dir, partitions, 1)?;
    if layout.len() != 1 {
        return Err(BrokerError::FailedPrecondition(format!(
            "data dir {} holds {} partitions; this build of Fairway serves data dirs of one partition",
            data_dir.display(),
            layout.len()
        )));
    }
    Ok(data_dir::partition_dir(data_dir, crate::partition::placement::PartitionId(0)))
}

/// The async face of the broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    tx: flume::Sender<Command>,
    store: Store,
    registry: Registry,
    next_consumer: Arc<std::sync::atomic::AtomicU64>,
    /// Per-tenant enqueue rate limits, checked before the writer.
    limiter: Arc<rate_limit::RateLimiter>,
    /// The writer thread; joined by [`Self::shutdown`], or by the last
    /// handle's drop so storage is closed when the broker is gone.
    engine: Arc<WriterThread>,
    /// Queue name -> healthy, published by the writer as alerts change.
    health: tokio::sync::watch::Receiver<monitor::HealthMap>,
    /// False until the writer has rebuilt its state from disk: calls made
    /// earlier wait for it (async ones) or are refused as retryable.
    ready: tokio::sync::watch::Receiver<bool>,
    /// Why writes to the data dir fail, while they do.
    storage_fault: tokio::sync::watch::Receiver<Option<String>>,
}

/// How the writer's start-up recovery ended: `Ok` once the broker serves,
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
    /// Opens (or creates) the data dir and starts the writer, which first
    /// rebuilds its in-memory state (O(queues + groups + leases), never
    /// O(jobs)) and then serves. Returns at once after opening RocksDB (a
    /// locked or incompatible data dir is refused here); `Recovery` says when
    /// the broker is ready. Blocking: call it off the async runtime.
    pub fn start(data_dir: &Path, durability: Durability) -> Result<(Broker, Recovery)> {
        Self::start_with(data_dir, durability, Duration::ZERO, None)
    }

    /// [`start`](Self::start), with the writer pausing `hold` before it
    /// recovers: lets tests observe a broker that is still starting.
    #[doc(hidden)]
    pub fn start_with(
        data_dir: &Path,
        durability: Durability,
        hold: Duration,
        partitions: Option<u32>,
    ) -> Result<(Broker, Recovery)> {
        Self::start_on(Store::open(&partition_store_dir(data_dir, partitions)?, durability)?, hold)
    }

    /// [`start`](Self::start), with `tap` seeing every batch the broker
    /// commits, in order: how a second copy of its storage is kept (the
    /// test of the storage boundary today, a replica tomorrow).
    pub fn start_with_tap(
        data_dir: &Path,
        durability: Durability,
        tap: crate::storage::CommitTap,
    ) -> Result<(Broker, Recovery)> {
        let dir = partition_store_dir(data_dir, None)?;
        Self::start_on(Store::open_with_tap(&dir, durability, Some(tap))?, Duration::ZERO)
    }

    fn start_on(store: Store, hold: Duration) -> Result<(Broker, Recovery)> {
        let registry: Registry = Arc::default();
        let (tx, rx) = flume::bounded(COMMAND_QUEUE);
        let (health_tx, health) = tokio::sync::watch::channel(monitor::HealthMap::new());
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (recovered_tx, recovered) = oneshot::channel();
        let (engine_store, engine_registry) = (store.clone(), registry.clone());
        let (fault_tx, storage_fault) = tokio::sync::watch::channel(None);
        let handle = std::thread::Builder::new()
            .name("fairway-writer".into())
            .spawn(move || {
                if !hold.is_zero() {
                    std::thread::sleep(hold);
                }
                let started = std::time::Instant::now();
                match engine::Engine::recover(engine_store, engine_registry, rx, health_tx) {
                    Ok(mut engine) => {
                        engine.fault_tx = fault_tx;
                        let (queues, leases) = engine.recovered();
                        let _ = ready_tx.send(true);
                        let _ = recovered_tx.send(Ok(RecoveryReport { queues, leases, elapsed: started.elapsed() }));
                        engine.run();
                    }
                    Err(e) => {
                        let _ = recovered_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| BrokerError::Storage(format!("cannot start writer thread: {e}")))?;
        let broker = Broker {
            tx,
            store,
            registry,
            next_consumer: Arc::new(1.into()),
            limiter: Arc::default(),
            engine: Arc::new(WriterThread(Mutex::new(Some(handle)))),
            health,
            ready,
            storage_fault,
        };
        Ok((broker, recovered))
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

    /// The queue registry, once recovery has filled it; before that a
    /// retryable refusal, never a false "queue does not exist".
    fn reg(&self) -> Result<std::sync::RwLockReadGuard<'_, HashMap<String, QueueInfo>>> {
        if !*self.ready.borrow() {
            return Err(BrokerError::Starting);
        }
        self.registry.read().map_err(|_| BrokerError::Storage("queue registry poisoned".into()))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        self.until_ready().await?;
        let (reply, rx) = oneshot::channel();
        self.tx.send_async(make(reply)).await.map_err(|_| BrokerError::ShuttingDown)?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    pub fn queue_info(&self, queue: &str) -> Result<QueueInfo> {
        self.reg()?.get(queue).cloned().ok_or_else(|| BrokerError::QueueNotFound(queue.to_string()))
    }

    /// Enqueues jobs atomically: either all are stored or none.
    pub async fn enqueue(&self, jobs: Vec<NewJob>, batch: bool) -> Result<Vec<EnqueueOutcome>> {
        self.until_ready().await?;
        self.admit(&jobs, batch)?;
        self.call(|reply| Command::Enqueue { jobs, batch, reply }).await
    }

    /// Enqueues jobs independently: each gets its own result, and one
    /// refused job doesn't stop the others (EnqueueStream). The accepted ones
    /// still travel to the writer as one command, so they share a commit.
    pub async fn enqueue_each(&self, jobs: Vec<NewJob>) -> Vec<Result<EnqueueOutcome>> {
        if let Err(e) = self.until_ready().await {
            return jobs.iter().map(|_| Err(e.clone())).collect();
        }
        let mut results: Vec<Option<Result<EnqueueOutcome>>> = Vec::with_capacity(jobs.len());
        let mut accepted = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.admit(std::slice::from_ref(&job), false) {
                Ok(()) => {
                    results.push(None);
                    accepted.push(job);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut stored = match accepted.is_empty() {
            true => Ok(Vec::new()),
            false => self.call(|reply| Command::Enqueue { jobs: accepted, batch: false, reply }).await,
        };
        let mut outcomes = match &mut stored {
            Ok(v) => std::mem::take(v).into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        results
            .into_iter()
            .map(|r| match r {
                Some(refused) => refused,
                None => match &stored {
                    Ok(_) => {
                        outcomes.next().ok_or_else(|| BrokerError::Storage("enqueue returned too few results".into()))
                    }
                    Err(e) => Err(e.clone()),
                },
            })
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
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Settle { queue, job, lease, action, reply: SettleReply::Unary(reply) };
        self.tx.send_async(cmd).await.map_err(|_| BrokerError::ShuttingDown)?;
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
        let reply = SettleReply::Stream { tx, job_id: job.to_string(), kind: action.kind() };
        let cmd = Command::Settle { queue, job, lease, action, reply };
        self.tx.send_async(cmd).await.map_err(|_| BrokerError::ShuttingDown)
    }

    /// Acks from one `AckBatch`: one command to the writer, each ack applied
    /// in order as if sent alone, each outcome pushed onto the stream.
    pub async fn acks_on_stream(&self, acks: Vec<(String, JobId, LeaseId)>, tx: StreamTx) -> Result<()> {
        self.tx.send_async(Command::Acks { acks, tx }).await.map_err(|_| BrokerError::ShuttingDown)
    }

    pub async fn cancel(&self, queue: String, job: JobId) -> Result<bool> {
        self.call(|reply| Command::Cancel { queue, job, reply }).await
    }

    /// Registers a Work stream; deliveries flow to `tx` until [`Self::unsubscribe`].
    pub async fn subscribe(&self, sub: Subscription, tx: StreamTx) -> Result<u64> {
        self.until_ready().await?;
        for q in &sub.queues {
            self.queue_info(q)?;
        }
        let id = self.next_consumer.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx.send_async(Command::Subscribe { id, sub, tx }).await.map_err(|_| BrokerError::ShuttingDown)?;
        Ok(id)
    }

    /// A Work stream asks for no more deliveries; the broker answers on
    /// `tx` with an Outcome of kind "drain", after which none follow.
    pub async fn drain(&self, id: u64, tx: StreamTx) -> Result<()> {
        self.tx.send_async(Command::Drain { id, tx }).await.map_err(|_| BrokerError::ShuttingDown)
    }

    /// Ends a Work stream: its leases go back to ready at once.
    pub fn unsubscribe(&self, id: u64) {
        // Must not be lost even if the caller is being dropped: a blocking
        // send is fine here because the queue only fills under extreme load.
        if self.tx.try_send(Command::Unsubscribe { id }).is_err() {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(Command::Unsubscribe { id });
            });
        }
    }

    pub async fn lease(&self, spec: LeaseSpec) -> Result<Vec<pb::Delivery>> {
        self.until_ready().await?;
        for q in &spec.queues {
            self.queue_info(q)?;
        }
        self.call(|reply| Command::Lease { spec, reply }).await
    }

    pub async fn create_queue(&self, name: String, config: QueueConfig) -> Result<pb::Queue> {
        self.call(|reply| Command::CreateQueue { name, config, reply }).await
    }

    pub async fn update_queue(&self, name: String, patch: QueueConfigPatch) -> Result<pb::Queue> {
        self.call(|reply| Command::UpdateQueue { name, patch, reply }).await
    }

    pub async fn delete_queue(&self, name: String, force: bool) -> Result<bool> {
        self.call(|reply| Command::DeleteQueue { name, force, reply }).await
    }

    pub async fn set_paused(&self, name: String, paused: bool) -> Result<pb::Queue> {
        self.call(|reply| Command::SetPaused { name, paused, reply }).await
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
        self.call(|reply| Command::Stats { queue, reply }).await
    }

    /// Every queue's figures, for `/metrics` and the dashboard.
    pub async fn metrics(&self) -> Result<monitor::MetricsSnapshot> {
        self.call(|reply| Command::Metrics { reply }).await
    }

    /// Queue name -> healthy (no alert active); changes as alerts do.
    pub fn health(&self) -> tokio::sync::watch::Receiver<monitor::HealthMap> {
        self.health.clone()
    }

    /// Why writes to the data dir fail (disk full, read-only), while they
    /// do; `None` when they work.
    pub fn storage_fault(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.storage_fault.clone()
    }

    /// The RocksDB handle, for its own figures (properties) on `/metrics`.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn redrive(&self, queue: String, which: Redrive) -> Result<u64> {
        self.call(|reply| Command::Redrive { queue, which, reply }).await
    }

    /// Replaces a tenant's policy; with `env`, only that environment's weight.
    pub async fn set_tenant_policy(
        &self,
        queue: String,
        tenant: String,
        env: Option<String>,
        policy: TenantPolicy,
    ) -> Result<pb::TenantPolicy> {
        self.call(|reply| Command::SetTenantPolicy { queue, tenant, env, policy, reply }).await
    }

    /// Lets a quarantined worker version receive jobs of `queue` again.
    pub async fn lift_quarantine(&self, queue: String, version: String) -> Result<pb::WorkerVersionQuarantine> {
        self.call(|reply| Command::LiftQuarantine { queue, version, reply }).await
    }

    pub async fn purge(&self, queue: String, state: Option<JobState>, scope: GroupScope) -> Result<u64> {
        self.call(|reply| Command::Purge { queue, state, scope, reply }).await
    }

    /// The workers connected on Work streams (to `queue`, or to any).
    pub async fn list_workers(&self, queue: Option<String>) -> Result<Vec<pb::WorkerInfo>> {
        if let Some(q) = &queue {
            self.until_ready().await?;
            self.queue_info(q)?;
        }
        self.call(|reply| Command::ListWorkers { queue, reply }).await
    }

    pub async fn get_job(&self, queue: String, job: JobId) -> Result<pb::Job> {
        self.until_ready().await?;
        let info = self.queue_info(&queue)?;
        let store = self.store.clone();
        spawn_read(move || reads::get_job(&store, &queue, &info.config, job)).await
    }

    pub async fn list_jobs(&self, req: reads::ListJobs) -> Result<(Vec<pb::Job>, String)> {
        self.until_ready().await?;
        let info = self.queue_info(&req.queue)?;
        let store = self.store.clone();
        spawn_read(move || reads::list_jobs(&store, &info.config, &req)).await
    }

    /// Stops the writer after it has answered everything already sent, and
    /// closes RocksDB cleanly (every acknowledged write is on disk).
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send_async(Command::Shutdown { done }).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(h) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The writer thread's handle. RocksDB must be closed before the process
/// exits: a close racing with static destructors aborts it ("pthread lock:
/// Invalid argument"). So a broker dropped without [`Broker::shutdown`] (a
/// test's runtime torn down, a start-up error) joins its writer here: once
/// the last handle, and with it the last command sender, is gone, the
/// writer commits what it has, syncs the WAL and closes storage, and the
/// drop returns after that.
struct WriterThread(Mutex<Option<std::thread::JoinHandle<()>>>);

impl WriterThread {
    fn take(&self) -> Option<std::thread::JoinHandle<()>> {
        self.0.lock().ok().and_then(|mut h| h.take())
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(h) = self.take() {
            let _ = h.join();
        }
    }
}

async fn spawn_read<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BrokerError::Storage(format!("read task failed: {e}")))?
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
