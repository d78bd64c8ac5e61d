//! `JobService.EnqueueStream`: a producer keeps many jobs in flight on one
//! stream. Requests that arrive together travel to the writer as one
//! command (they share a commit anyway); responses go back in request
//! order, each once its job is stored.

use super::convert;
use super::trace::Tracer;
use super::traceparent::TraceParent;
use crate::auth::Access;
use crate::broker::{view, Broker, EnqueueOutcome};
use crate::error::BrokerError;
use crate::pb;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Most requests of one stream accepted but not yet answered: beyond it
/// the stream stops reading (HTTP/2 flow control pushes back on the
/// producer) instead of buffering without bound.
pub const MAX_UNANSWERED: usize = 4096;
/// Most requests gathered into one command.
const GROUP: usize = 512;

pub type EnqueueStream = Pin<Box<dyn futures::Stream<Item = Result<pb::EnqueueResponse, Status>> + Send>>;

/// A job's result as its response.
pub(super) fn answer(r: Result<EnqueueOutcome, BrokerError>) -> pb::EnqueueResponse {
    match r {
        Ok(o) => pb::EnqueueResponse { job_id: o.id.to_string(), deduplicated: o.deduplicated, ..Default::default() },
        Err(e) => pb::EnqueueResponse { error: e.to_string(), code: view::code_name(&e), ..Default::default() },
    }
}

/// Validates and stores one group of requests; answers in their order.
async fn store_group(
    broker: Broker,
    tracer: Tracer,
    access: Access,
    header: Option<TraceParent>,
    group: Vec<pb::EnqueueRequest>,
) -> Vec<pb::EnqueueResponse> {
    let mut slots: Vec<Option<pb::EnqueueResponse>> = Vec::with_capacity(group.len());
    let (mut jobs, mut parents) = (Vec::with_capacity(group.len()), Vec::with_capacity(group.len()));
    for r in group {
        let parent = TraceParent::from_field(&r.traceparent, || "traceparent".into());
        let checked = parent
            .and_then(|p| convert::new_job(r).map(|j| (j, p)))
            .and_then(|(j, p)| access.produce(&j.queue, &j.tenant).map(|_| (j, p)));
        match checked {
            Ok((job, parent)) => {
                slots.push(None);
                jobs.push(job);
                parents.push(parent.or(header));
            }
            Err(e) => slots.push(Some(answer(Err(e)))),
        }
    }
    let spans = tracer.enqueue(&mut jobs, &parents);
    let results = broker.enqueue_each(jobs).await;
    // A span covers several jobs: it fails only if all of them did.
    let summary: Result<Vec<EnqueueOutcome>, BrokerError> = match results.iter().find_map(|r| r.as_ref().err()) {
        Some(e) if results.iter().all(|r| r.is_err()) => Err(e.clone()),
        _ => Ok(results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect()),
    };
    spans.finish(&summary);
    let mut stored = results.into_iter();
    slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| answer(stored.next().unwrap_or(Err(BrokerError::ShuttingDown)))))
        .collect()
}

/// Runs one stream: reads while fewer than [`MAX_UNANSWERED`] are pending,
/// answers in order, ends after the producer closes its side and every job
/// is answered. A job outside `access` is answered PERMISSION_DENIED in
/// place, like any other failed job.
pub fn serve(
    broker: Broker,
    tracer: Tracer,
    access: Access,
    header: Option<TraceParent>,
    mut inbound: Streaming<pb::EnqueueRequest>,
) -> EnqueueStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::EnqueueResponse, Status>>(GROUP);
    tokio::spawn(async move {
        let mut pending = FuturesOrdered::new();
        let mut unanswered = 0usize;
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                // Answer first: it frees room to read more.
                biased;
                Some(done) = pending.next(), if !pending.is_empty() => {
                    let done: Vec<pb::EnqueueResponse> = done;
                    unanswered -= done.len();
                    for r in done {
                        if tx.send(Ok(r)).await.is_err() {
                            return; // the producer went away
                        }
                    }
                }
                msg = inbound.next(), if open && unanswered < MAX_UNANSWERED => {
                    let first = match msg {
                        Some(Ok(r)) => r,
                        Some(Err(status)) => {
                            tracing::debug!(error = %status, "enqueue stream broke");
                            open = false;
                            continue;
                        }
                        None => {
                            open = false;
                            continue;
                        }
                    };
                    let mut group = vec![first];
                    // Take what already arrived, without waiting for more.
                    while group.len() < GROUP && unanswered + group.len() < MAX_UNANSWERED {
                        match inbound.next().now_or_never() {
                            Some(Some(Ok(r))) => group.push(r),
                            Some(Some(Err(_))) | Some(None) => {
                                open = false;
                                break;
                            }
                            None => break,
                        }
                    }
                    unanswered += group.len();
                    pending.push_back(store_group(broker.clone(), tracer.clone(), access.clone(), header, group));
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_the_grpc_code_name() {
        let r = answer(Err(BrokerError::QueueNotFound("q".into())));
        assert_eq!(r.code, "NOT_FOUND");
        assert!(r.error.contains("q"), "{}", r.error);
        assert!(r.job_id.is_empty());
        let ok = answer(Ok(EnqueueOutcome { id: crate::model::JobId(7), deduplicated: true }));
        assert!(ok.error.is_empty() && ok.code.is_empty() && ok.deduplicated);
    }
}
