//! An `EnqueueBatch` whose jobs belong to several partitions, stored all or
//! nothing even when the broker dies half way.
//!
//! Each partition has its own RocksDB, so no single write can hold the whole
//! batch. The batch is decided by one write instead, at its *coordinating*
//! partition (the lowest one it touches):
//!
//! 1. The coordinator stores its own jobs **and** an intent (Meta key
//!    `intent/SEQ`, a `BatchIntentRecord`: every other partition's jobs as
//!    the producer sent them) in one fsynced write. From then on the batch
//!    is decided: it will be stored whole.
//! 2. Each other partition stores its part **and** a marker (Meta key
//!    `applied/FROM SEQ`) in one fsynced write. A part whose marker is there
//!    already is not stored again, so applying a part twice (once before a
//!    crash, once after) stores it once.
//! 3. The producer is answered once every part is stored, with every job's
//!    id (a part is stored by its own partition, which makes its ids).
//! 4. The intent is dropped (fsynced), then the markers (relaxed: a marker
//!    left behind by a crash is dropped at the next start).
//!
//! A crash before step 1's write leaves nothing; after it, the next start
//! applies every intent still held to the partitions whose marker is
//! missing ([`replay`]), before the broker serves, then drops the intents
//! and every marker. The producer of a batch cut short by a crash got no
//! answer, so nothing it was told is undone; what it did not hear about is
//! stored whole.
//!
//! Steps 2 to 4 run in a task of their own: a producer that gives up (its
//! deadline, a disconnect) does not leave a part unstored until the next
//! start. A part refused by its partition's disk (full, failing) is tried
//! again until the disk takes it; a part refused for good (its queue was
//! deleted, or its settings changed, meanwhile) is given up with a log
//! line, the producer gets the refusal, and the rest of the batch stays.
//!
//! A batch within one partition needs none of this: it is one write.

use super::engine::Engine;
use super::partition::Partition;
use super::reply_after;
use super::{Broker, Command, EnqueueOutcome, Reply};
use crate::error::{BrokerError, Result};
use crate::model::{duration_millis, NewJob};
use crate::storage::batch::Table;
use crate::storage::records::{BatchIntentRecord, IntentJob, IntentPart};
use crate::storage::Store;
use prost::Message;
use std::time::Duration;
use tokio::sync::oneshot;

/// First wait before a part refused by its partition's disk is tried
/// again; doubled on each refusal up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One partition's jobs of a batch, with each job's place in the request.
pub(super) type Part = (usize, Vec<usize>, Vec<NewJob>);

/// Each partition's outcomes with their places in the request.
pub(super) type Stored = Vec<(Vec<usize>, Vec<EnqueueOutcome>)>;

impl Engine {
    /// Step 1: the coordinator's own jobs and the intent, in one write.
    pub(super) fn enqueue_coordinated(
        &mut self,
        jobs: Vec<NewJob>,
        intent: Vec<u8>,
        reply: Reply<(Vec<EnqueueOutcome>, u64)>,
    ) {
        match self.stage_enqueue(jobs, true) {
            Ok(out) => {
                // An id is unique for ever (the high-water mark is stored
                // with this write), so it numbers the intent too.
                let seq = self.alloc_id().0;
                self.w.put_intent(seq, &intent);
                self.w.after(reply_after(reply, (out, seq)));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Step 2: this partition's part and its marker, in one write; nothing
    /// when the marker says the part is stored already.
    pub(super) fn apply_part(
        &mut self,
        from: u16,
        seq: u64,
        jobs: Vec<NewJob>,
        reply: Reply<Option<Vec<EnqueueOutcome>>>,
    ) {
        match self.w.store.get(Table::Meta, &Store::applied_key(from, seq)) {
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
            Ok(Some(_)) => {
                let _ = reply.send(Ok(None));
                return;
            }
            Ok(None) => {}
        }
        match self.stage_enqueue(jobs, true) {
            Ok(out) => {
                self.w.put_applied(from, seq);
                self.w.after(reply_after(reply, Some(out)));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Step 4: the intent goes once every part is stored.
    pub(super) fn drop_intent(&mut self, seq: u64, reply: Reply<()>) {
        self.w.delete_intent(seq);
        self.w.after(reply_after(reply, ()));
    }

    /// Step 4: a marker whose intent is surely gone, or every marker (at
    /// start, once every intent is done).
    pub(super) fn drop_applied(&mut self, which: Option<(u16, u64)>, reply: Option<Reply<()>>) {
        let markers = match which {
            Some(one) => vec![one],
            None => match self.w.store.load_applied() {
                Ok(all) => all,
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                    return;
                }
            },
        };
        self.w.relaxed = true;
        for (from, seq) in markers {
            self.w.delete_applied(from, seq);
        }
        self.w.relaxed = false;
        if let Some(r) = reply {
            self.w.after(reply_after(r, ()));
        }
    }
}

impl Broker {
    /// Stores a batch whose jobs belong to several partitions (`parts`, by
    /// partition, the lowest first); returns each partition's outcomes with
    /// their places in the request.
    pub(super) async fn enqueue_across(&self, parts: Vec<Part>) -> Result<Stored> {
        let mut parts = parts.into_iter();
        let Some((c, c_idx, c_jobs)) = parts.next() else { return Ok(Vec::new()) };
        let others: Vec<Part> = parts.collect();
        let intent = BatchIntentRecord {
            parts: others
                .iter()
                .map(|(p, _, jobs)| IntentPart { partition: *p as u32, jobs: jobs.iter().map(intent_job).collect() })
                .collect(),
        }
        .encode_to_vec();
        let (own, seq) =
            self.parts[c].call(|reply| Command::EnqueueCoordinated { jobs: c_jobs, intent, reply }).await?;
        crate::failpoint::hit("batch-intent-stored");
        let (answer, answered) = oneshot::channel();
        let broker = self.clone();
        // Detached: it finishes the batch even if this call is dropped.
        tokio::spawn(async move { broker.complete(c as u16, seq, others, answer).await });
        let mut out = answered.await.map_err(|_| BrokerError::ShuttingDown)??;
        out.push((c_idx, own));
        Ok(out)
    }

    /// Steps 2 to 4 of intent `seq` of partition `from`; the producer's
    /// answer goes on `answer` after step 2.
    async fn complete(self, from: u16, seq: u64, others: Vec<Part>, answer: oneshot::Sender<Result<Stored>>) {
        let calls = others.into_iter().map(|(p, idx, jobs)| {
            let this = &self;
            async move {
                let out = this.apply_until_stored(p, from, seq, jobs).await?;
                let out = out.ok_or_else(|| {
                    BrokerError::Storage(format!("part of batch {seq} in partition {p} was stored twice"))
                })?;
                Ok::<_, BrokerError>((p, idx, out))
            }
        });
        let mut stored = Vec::new();
        let mut refused = None;
        let mut shutting_down = false;
        for r in futures::future::join_all(calls).await {
            match r {
                Ok((p, idx, out)) => stored.push((p, idx, out)),
                Err(BrokerError::ShuttingDown) => shutting_down = true,
                Err(e) => {
                    tracing::error!(intent = seq, partition = from, error = %e,
                        "part of a batch across partitions refused for good; the rest of the batch stays stored");
                    refused.get_or_insert(e);
                }
            }
        }
        if shutting_down {
            // The intent stays: the next start stores what is missing.
            let _ = answer.send(Err(BrokerError::ShuttingDown));
            return;
        }
        crate::failpoint::hit("batch-parts-stored");
        let touched: Vec<usize> = stored.iter().map(|(p, _, _)| *p).collect();
        let _ = answer.send(match refused {
            Some(e) => Err(e),
            None => Ok(stored.into_iter().map(|(_, idx, out)| (idx, out)).collect()),
        });
        let dropped = self.parts[from as usize].call(|reply| Command::DropIntent { seq, reply }).await;
        if dropped.is_err() {
            // Held until the next start, which drops it and its markers.
            return;
        }
        for p in touched {
            let _ = self.parts[p].send(Command::DropApplied { which: Some((from, seq)), reply: None }).await;
        }
    }

    /// Step 2 for one partition, tried again while its disk refuses writes.
    async fn apply_until_stored(
        &self,
        p: usize,
        from: u16,
        seq: u64,
        jobs: Vec<NewJob>,
    ) -> Result<Option<Vec<EnqueueOutcome>>> {
        let mut jobs = Some(jobs);
        let mut wait = RETRY_FIRST;
        loop {
            let batch = match jobs.take() {
                Some(j) => j,
                None => self.part_from_intent(from, seq, p).await?,
            };
            match self.parts[p].call(|reply| Command::ApplyPart { from, seq, jobs: batch, reply }).await {
                Err(e @ (BrokerError::Storage(_) | BrokerError::DiskFull(_))) => {
                    tracing::warn!(intent = seq, partition = p, error = %e,
                        "partition refused its part of a batch across partitions; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// Partition `p`'s jobs of intent `seq`, read back from the coordinator
    /// (for a retry: the first try moved them into its command).
    async fn part_from_intent(&self, from: u16, seq: u64, p: usize) -> Result<Vec<NewJob>> {
        let intents = self.parts[from as usize].call(|reply| Command::Intents { reply }).await?;
        let (_, intent) = intents
            .into_iter()
            .find(|(s, _)| *s == seq)
            .ok_or_else(|| BrokerError::Storage(format!("intent {seq} of partition {from} vanished")))?;
        Ok(intent
            .parts
            .into_iter()
            .filter(|part| part.partition as usize == p)
            .flat_map(|part| part.jobs)
            .map(new_job)
            .collect())
    }
}

/// At start, before the broker serves: stores the missing parts of every
/// intent a partition still holds, drops the intents, then every marker.
/// Returns how many batches were completed.
pub(super) fn replay(parts: &[Partition]) -> Result<usize> {
    if parts.len() == 1 {
        return Ok(0);
    }
    let mut completed = 0;
    for (from, coordinator) in parts.iter().enumerate() {
        for (seq, intent) in coordinator.call_blocking(|reply| Command::Intents { reply })? {
            let mut stored = 0;
            for part in intent.parts {
                let target = parts.get(part.partition as usize).ok_or_else(|| {
                    BrokerError::Storage(format!(
                        "intent {seq} of partition {from} names partition {} of {}",
                        part.partition,
                        parts.len()
                    ))
                })?;
                let jobs: Vec<NewJob> = part.jobs.into_iter().map(new_job).collect();
                let n = jobs.len();
                let from = from as u16;
                match target.call_blocking(|reply| Command::ApplyPart { from, seq, jobs, reply }) {
                    Ok(Some(_)) => stored += n,
                    Ok(None) => {}
                    Err(e @ (BrokerError::QueueNotFound(_) | BrokerError::InvalidArgument(_))) => {
                        tracing::error!(intent = seq, partition = part.partition, error = %e,
                            "part of a batch cut short by a stop cannot be stored; its queue is gone or changed");
                    }
                    Err(e) => return Err(e),
                }
            }
            coordinator.call_blocking(|reply| Command::DropIntent { seq, reply })?;
            tracing::warn!(
                intent = seq,
                partition = from,
                jobs_stored_now = stored,
                "completed a batch across partitions that a stop cut short"
            );
            completed += 1;
        }
    }
    // Every intent is gone (fsynced): no marker is needed any more.
    for p in parts {
        p.call_blocking(|reply| Command::DropApplied { which: None, reply: Some(reply) })?;
    }
    Ok(completed)
}

fn intent_job(j: &NewJob) -> IntentJob {
    IntentJob {
        queue: j.queue.clone(),
        tenant: j.tenant.clone(),
        environment: j.environment.clone(),
        payload: j.payload.clone(),
        headers: j.headers.clone(),
        priority: j.priority,
        run_at_ms: j.run_at,
        dedup_key: j.dedup_key.clone(),
        max_attempts: j.max_attempts,
        lease_duration_ms: j.lease_duration.map(duration_millis),
        traceparent: j.traceparent.clone(),
    }
}

fn new_job(j: IntentJob) -> NewJob {
    NewJob {
        queue: j.queue,
        tenant: j.tenant,
        environment: j.environment,
        payload: j.payload,
        headers: j.headers,
        priority: j.priority,
        run_at: j.run_at_ms,
        dedup_key: j.dedup_key,
        max_attempts: j.max_attempts,
        lease_duration: j.lease_duration_ms.map(Duration::from_millis),
        traceparent: j.traceparent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_intent_unchanged() {
        let job = NewJob {
            queue: "q".into(),
            tenant: "t".into(),
            environment: "e".into(),
            payload: bytes::Bytes::from_static(b"payload"),
            headers: [("k".to_string(), "v".to_string())].into(),
            priority: -3,
            run_at: Some(1_700_000_000_123),
            dedup_key: "d".into(),
            max_attempts: 7,
            lease_duration: Some(Duration::from_millis(1500)),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let rec = BatchIntentRecord { parts: vec![IntentPart { partition: 3, jobs: vec![intent_job(&job)] }] };
        let back = BatchIntentRecord::decode(rec.encode_to_vec().as_slice()).expect("decodes");
        let got = new_job(back.parts[0].jobs[0].clone());
        assert_eq!(format!("{got:?}"), format!("{job:?}"));
        let unset = NewJob { run_at: None, lease_duration: None, ..job };
        let got = new_job(intent_job(&unset));
        assert_eq!((got.run_at, got.lease_duration), (None, None), "unset stays unset, not 0");
    }
}
