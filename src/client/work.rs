//! A Work stream from the worker's side: deliveries and outcomes in; acks,
//! nacks, extends, releases and the drain out through a [`Settler`] that
//! any task may hold.

use super::Conn;
use crate::pb;
use crate::pb::work_request::Request;
use crate::pb::work_response::Response;
use crate::pb::worker_service_client::WorkerServiceClient;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Requests queued for the stream before the sender waits: enough for a
/// full prefetch window of acks without blocking the worker.
const OUTBOX: usize = 4096;

/// What arrives on a Work stream.
// Deliveries are nearly every event: boxing them would add an allocation
// per job to spare the rare outcome a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WorkEvent {
    /// A leased job.
    Delivery(pb::Delivery),
    /// The answer to an ack, nack or extend sent earlier.
    Outcome(pb::Outcome),
}

/// An open Work stream (already subscribed).
pub struct WorkStream {
    /// Where acks, nacks and extends go; cloned into each [`Settler`].
    tx: mpsc::Sender<pb::WorkRequest>,
    /// What the broker sends.
    rx: Streaming<pb::WorkResponse>,
}

impl WorkStream {
    pub(super) async fn open(
        mut client: WorkerServiceClient<Conn>,
        subscribe: pb::Subscribe,
    ) -> Result<WorkStream, Status> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        // The subscribe goes first; the channel is empty, so this can't wait.
        tx.send(pb::WorkRequest { request: Some(Request::Subscribe(subscribe)) })
            .await
            .map_err(|_| Status::internal("work stream closed before it opened"))?;
        let rx = client.work(ReceiverStream::new(rx)).await?.into_inner();
        Ok(WorkStream { tx, rx })
    }

    /// The next delivery or outcome; `None` when the broker ended the
    /// stream (e.g. it is shutting down: reconnect).
    pub async fn next(&mut self) -> Result<Option<WorkEvent>, Status> {
        loop {
            let Some(msg) = self.rx.message().await? else { return Ok(None) };
            match msg.response {
                Some(Response::Delivery(d)) => return Ok(Some(WorkEvent::Delivery(d))),
                Some(Response::Outcome(o)) => return Ok(Some(WorkEvent::Outcome(o))),
                // A response kind newer than this client: skip it.
                None => continue,
            }
        }
    }

    /// The next delivery, skipping outcomes; `None` when the stream ended.
    /// For workers that don't track what became of their acks.
    pub async fn next_delivery(&mut self) -> Result<Option<pb::Delivery>, Status> {
        loop {
            match self.next().await? {
                Some(WorkEvent::Delivery(d)) => return Ok(Some(d)),
                Some(WorkEvent::Outcome(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// A handle that settles deliveries of this stream from any task.
    pub fn settler(&self) -> Settler {
        Settler { tx: self.tx.clone() }
    }
}

/// Sends acks, nacks and extends up a Work stream. Each is answered by a
/// [`WorkEvent::Outcome`] on the stream. Dropping every settler and the
/// stream closes it; the broker then returns unsettled leases to ready.
#[derive(Clone)]
pub struct Settler {
    /// The stream's outbox.
    tx: mpsc::Sender<pb::WorkRequest>,
}

/// The queue, job and lease a delivery is settled by.
fn target(d: &pb::Delivery) -> (String, String, String) {
    let (queue, job_id) = d.job.as_ref().map(|j| (j.queue.clone(), j.id.clone())).unwrap_or_default();
    (queue, job_id, d.lease_id.clone())
}

impl Settler {
    async fn send(&self, request: Request) -> Result<(), Status> {
        self.tx
            .send(pb::WorkRequest { request: Some(request) })
            .await
            .map_err(|_| Status::unavailable("the work stream is closed"))
    }

    /// The job is done.
    pub async fn ack(&self, d: &pb::Delivery) -> Result<(), Status> {
        let (queue, job_id, lease_id) = target(d);
        self.send(Request::Ack(pb::AckRequest { queue, job_id, lease_id })).await
    }

    /// Several jobs are done: one message for all of them (at most
    /// [`crate::limits::MAX_ACKS_PER_MESSAGE`]), each answered with its own
    /// Outcome.
    pub async fn ack_all(&self, deliveries: &[pb::Delivery]) -> Result<(), Status> {
        let acks = deliveries
            .iter()
            .map(|d| {
                let (queue, job_id, lease_id) = target(d);
                pb::AckRequest { queue, job_id, lease_id }
            })
            .collect();
        self.send(Request::Acks(pb::AckBatch { acks })).await
    }

    /// The job failed: retried after `retry_after` (unset: the queue's
    /// backoff) while attempts remain, else dead-lettered.
    pub async fn nack(&self, d: &pb::Delivery, error: &str, retry_after: Option<Duration>) -> Result<(), Status> {
        let (queue, job_id, lease_id) = target(d);
        let retry_after = retry_after.map(crate::broker::view::duration);
        let nack = pb::NackRequest { queue, job_id, lease_id, error: error.into(), retry_after, dead: false };
        self.send(Request::Nack(nack)).await
    }

    /// The job can never succeed: dead-letter it now.
    pub async fn dead_letter(&self, d: &pb::Delivery, error: &str) -> Result<(), Status> {
        let (queue, job_id, lease_id) = target(d);
        let nack = pb::NackRequest { queue, job_id, lease_id, error: error.into(), retry_after: None, dead: true };
        self.send(Request::Nack(nack)).await
    }

    /// Still working: the lease runs `lease_duration` from now (unset: its
    /// original duration).
    pub async fn extend(&self, d: &pb::Delivery, lease_duration: Option<Duration>) -> Result<(), Status> {
        let (queue, job_id, lease_id) = target(d);
        let lease_duration = lease_duration.map(crate::broker::view::duration);
        self.send(Request::Extend(pb::ExtendLeaseRequest { queue, job_id, lease_id, lease_duration })).await
    }

    /// Not started, and not going to be: the job goes back to ready at
    /// once, and this delivery does not count as an attempt.
    pub async fn release(&self, d: &pb::Delivery) -> Result<(), Status> {
        let (queue, job_id, lease_id) = target(d);
        self.send(Request::Release(pb::ReleaseRequest { queue, job_id, lease_id })).await
    }

    /// This stream is stopping: the broker sends no more deliveries after
    /// its Outcome of kind "drain". Settles and releases still apply.
    pub async fn drain(&self) -> Result<(), Status> {
        self.send(Request::Drain(pb::Drain {})).await
    }
}
