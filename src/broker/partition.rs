//! One partition: a writer thread (the [`engine`](super::engine)) that owns
//! the partition's in-memory state and every write to its own RocksDB, and
//! the async handle through which the [`Broker`](super::Broker) sends it
//! commands. A partition knows nothing of routing: the broker decides which
//! partition a call goes to.

use super::engine::Engine;
use super::shared::Shared;
use super::{Command, RecoveryReport, Registry, Reply};
use crate::error::{BrokerError, Result};
use crate::storage::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Bound on queued commands: beyond it, callers wait (backpressure) instead
/// of growing memory without limit.
const COMMAND_QUEUE: usize = 65_536;

/// The handle of one partition's writer. Cheap to clone.
#[derive(Clone)]
pub(super) struct Partition {
    pub tx: flume::Sender<Command>,
    /// Its storage, for reads that need no in-memory state (GetJob,
    /// ListJobs) and for RocksDB's own figures.
    pub store: Store,
    /// Its queue definitions, readable from any thread.
    pub registry: Registry,
    /// This partition's index, and what the broker's partitions share:
    /// whether this node serves the partition now (in a cluster).
    me: usize,
    shared: Arc<Shared>,
    /// The writer thread; joined by [`Self::join`], or by the last handle's
    /// drop so storage is closed when the broker is gone.
    writer: Arc<WriterThread>,
}

/// How a partition's start-up recovery ended.
pub(super) type PartitionRecovery = oneshot::Receiver<Result<RecoveryReport>>;

impl Partition {
    /// Starts partition `me`'s writer on `store`, which first rebuilds the
    /// partition's state from disk (after `hold`, for tests that watch a
    /// broker still starting).
    pub fn start(
        store: Store,
        me: usize,
        shared: Arc<Shared>,
        hold: Duration,
        log: super::turn_log::TurnLog,
    ) -> Result<(Partition, PartitionRecovery)> {
        let registry: Registry = Arc::default();
        if matches!(log, super::turn_log::TurnLog::Raft(_)) {
            // Refused until its writer has asked Raft who leads.
            shared.set_not_leading(me, Some(format!("partition {me}: this node is starting; retry in a moment")));
        }
        let (tx, rx) = flume::bounded(COMMAND_QUEUE);
        let (recovered_tx, recovered) = oneshot::channel();
        let (engine_store, engine_registry, engine_shared) = (store.clone(), registry.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(format!("fairway-writer-{me}"))
            .spawn(move || {
                if !hold.is_zero() {
                    std::thread::sleep(hold);
                }
                let started = std::time::Instant::now();
                match Engine::recover(engine_store, engine_registry, rx, me, engine_shared, log) {
                    Ok(engine) => {
                        let (queues, leases) = engine.recovered();
                        let _ = recovered_tx.send(Ok(RecoveryReport { queues, leases, elapsed: started.elapsed() }));
                        engine.run();
                    }
                    Err(e) => {
                        let _ = recovered_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| BrokerError::Internal(format!("cannot start writer thread: {e}")))?;
        let p = Partition { tx, store, registry, me, shared, writer: Arc::new(WriterThread(Mutex::new(Some(handle)))) };
        Ok((p, recovered))
    }

    /// In a cluster, refuses at once a call to a partition this node does
    /// not lead (saying which node does); its writer would refuse it too.
    fn served(&self) -> Result<()> {
        match self.shared.not_leading(self.me) {
            None => Ok(()),
            Some(why) => Err(BrokerError::Unavailable(why)),
        }
    }

    /// Sends a command and waits for its answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        self.served()?;
        let (reply, rx) = oneshot::channel();
        self.tx.send_async(make(reply)).await.map_err(|_| BrokerError::ShuttingDown)?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// [`call`](Self::call) from a thread outside the async runtime (start-up
    /// reconciliation).
    pub fn call_blocking<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| BrokerError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Sends a command answered elsewhere (on a stream) or not at all.
    pub async fn send(&self, cmd: Command) -> Result<()> {
        self.served()?;
        self.tx.send_async(cmd).await.map_err(|_| BrokerError::ShuttingDown)
    }

    /// Sends a command that must not be lost even when the caller is being
    /// dropped (an unsubscribe): a blocking send on another thread if the
    /// queue is full, which only happens under extreme load.
    pub fn send_now(&self, cmd: Command) {
        if let Err(flume::TrySendError::Full(cmd)) = self.tx.try_send(cmd) {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(cmd);
            });
        }
    }

    /// Stops the writer after it has answered everything already sent, and
    /// closes its RocksDB cleanly (every acknowledged write is on disk).
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send_async(Command::Shutdown { done }).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(h) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The writer thread's handle. RocksDB must be closed before the process
/// exits: a close racing with static destructors aborts it ("pthread lock:
/// Invalid argument"). So a broker dropped without [`Partition::shutdown`]
/// (a test's runtime torn down, a start-up error) joins its writer here:
/// once the last handle, and with it the last command sender, is gone, the
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
