//! `fairway.v1.WorkerService`: workers lease, ack, nack and extend.

use super::convert;
use super::outcome_window::OutcomeWindow;
use super::settle_scope::SettleScope;
use super::trace::{self, Tracer};
use super::work_trace::{self, SharedWorkTraces, WorkTraces};
use crate::auth;
use crate::broker::{view, Broker, SettleAction, SettleOutcome, StreamTx};
use crate::error::BrokerError;
use crate::limits;
use crate::model::{JobId, LeaseId};
use crate::pb;
use crate::pb::work_request::Request as WorkMsg;
use crate::pb::worker_service_server::WorkerService;
use std::pin::Pin;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct WorkerApi {
    pub broker: Broker,
    /// Makes the lease, ack and nack spans that continue each job's trace.
    pub tracer: Tracer,
}

/// Ends the subscription however the stream's reader task ends (client
/// closed, connection dropped, task cancelled), so leases never leak.
struct Subscribed {
    broker: Broker,
    id: u64,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.broker.unsubscribe(self.id);
    }
}

fn nack_action(n: &pb::NackRequest) -> Result<SettleAction, BrokerError> {
    Ok(SettleAction::Nack {
        error: n.error.clone(),
        retry_after: convert::opt_duration("retry_after", n.retry_after.as_ref())?,
        dead: n.dead,
    })
}

fn extend_action(e: &pb::ExtendLeaseRequest) -> Result<SettleAction, BrokerError> {
    let duration = convert::opt_duration("lease_duration", e.lease_duration.as_ref())?;
    if let Some(d) = duration {
        crate::model::validate_lease_duration(d)?;
    }
    Ok(SettleAction::Extend { duration })
}

/// The (queue, job, lease) triple every settle names.
fn target(queue: &str, job: &str, lease: &str) -> Result<(String, JobId, LeaseId), BrokerError> {
    Ok((convert::queue_name(queue)?, convert::job_id(job)?, convert::lease_id(lease)?))
}

/// Applies one message sent on a Work stream after its subscribe (an
/// ack, nack, extend, release or drain); the outcome goes back on the
/// stream.
async fn settle_from_stream(
    broker: &Broker,
    (consumer, tx): (u64, &StreamTx),
    msg: WorkMsg,
    traces: Option<&SharedWorkTraces>,
    scope: &SettleScope,
) {
    let (ids, action, kind) = match &msg {
        WorkMsg::Ack(a) => (target(&a.queue, &a.job_id, &a.lease_id), Ok(SettleAction::Ack), "ack"),
        WorkMsg::Nack(n) => (target(&n.queue, &n.job_id, &n.lease_id), nack_action(n), "nack"),
        WorkMsg::Extend(e) => (target(&e.queue, &e.job_id, &e.lease_id), extend_action(e), "extend"),
        WorkMsg::Release(r) => (target(&r.queue, &r.job_id, &r.lease_id), Ok(SettleAction::Release), "release"),
        WorkMsg::Acks(batch) => return acks_from_stream(broker, tx, &batch.acks, traces, scope).await,
        WorkMsg::Drain(_) => {
            if broker.drain(consumer, tx.clone()).await.is_err() {
                let _ = tx.send(Ok(view::outcome(String::new(), "drain", Err(&BrokerError::ShuttingDown))));
            }
            return;
        }
        WorkMsg::Subscribe(_) => {
            let e = BrokerError::FailedPrecondition(
                "this stream is already subscribed; open a new stream to change queues".into(),
            );
            let _ = tx.send(Ok(view::outcome(String::new(), "subscribe", Err(&e))));
            return;
        }
    };
    let job_id = match &msg {
        WorkMsg::Ack(a) => a.job_id.clone(),
        WorkMsg::Nack(n) => n.job_id.clone(),
        WorkMsg::Extend(e) => e.job_id.clone(),
        WorkMsg::Release(r) => r.job_id.clone(),
        WorkMsg::Subscribe(_) | WorkMsg::Drain(_) | WorkMsg::Acks(_) => String::new(),
    };
    let mut checked = ids.and_then(|ids| action.map(|a| (ids, a)));
    let refused = match &checked {
        Ok(((queue, job, _), action)) => scope.check(broker, queue, *job, action.finishes()).await.err(),
        Err(_) => None,
    };
    if let Some(e) = refused {
        checked = Err(e);
    }
    match checked {
        Ok(((queue, job, lease), action)) => {
            if let Some(t) = traces {
                work_trace::lock(t).on_settle(job, lease, &action);
            }
            if let Err(e) = broker.settle_on_stream(queue, job, lease, action, tx.clone()).await {
                let _ = tx.send(Ok(view::outcome(job_id, kind, Err(&e))));
            }
        }
        Err(e) => {
            let _ = tx.send(Ok(view::outcome(job_id, kind, Err(&e))));
        }
    }
}

/// Applies an `AckBatch`: each ack checked as if sent alone (a refused one
/// is answered at once and the rest go on), the accepted ones sent to the
/// broker together, each answered with its own Outcome.
async fn acks_from_stream(
    broker: &Broker,
    tx: &StreamTx,
    acks: &[pb::AckRequest],
    traces: Option<&SharedWorkTraces>,
    scope: &SettleScope,
) {
    if acks.is_empty() || acks.len() > limits::MAX_ACKS_PER_MESSAGE {
        let e = BrokerError::InvalidArgument(format!(
            "an AckBatch carries 1 to {} acks; this one has {} (none applied)",
            limits::MAX_ACKS_PER_MESSAGE,
            acks.len()
        ));
        let _ = tx.send(Ok(view::outcome(String::new(), "acks", Err(&e))));
        return;
    }
    let mut accepted = Vec::with_capacity(acks.len());
    for a in acks {
        let checked = match target(&a.queue, &a.job_id, &a.lease_id) {
            Ok((queue, job, lease)) => scope.check(broker, &queue, job, true).await.map(|()| (queue, job, lease)),
            Err(e) => Err(e),
        };
        match checked {
            Ok((queue, job, lease)) => {
                if let Some(t) = traces {
                    work_trace::lock(t).on_settle(job, lease, &SettleAction::Ack);
                }
                accepted.push((queue, job, lease));
            }
            Err(e) => {
                let _ = tx.send(Ok(view::outcome(a.job_id.clone(), "ack", Err(&e))));
            }
        }
    }
    if accepted.is_empty() {
        return;
    }
    let ids: Vec<String> = accepted.iter().map(|(_, job, _)| job.to_string()).collect();
    if let Err(e) = broker.acks_on_stream(accepted, tx.clone()).await {
        for id in ids {
            let _ = tx.send(Ok(view::outcome(id, "ack", Err(&e))));
        }
    }
}

/// What a unary settle knows of its job without reading it: tenant and
/// environment are left out rather than costing a read.
fn settle_attrs(queue: &str, job: JobId) -> Vec<opentelemetry::KeyValue> {
    vec![
        opentelemetry::KeyValue::new("fairway.queue", queue.to_string()),
        opentelemetry::KeyValue::new("fairway.job_id", job.to_string()),
    ]
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type WorkStream = WorkStream;

    async fn work(&self, req: Request<Streaming<pb::WorkRequest>>) -> Result<Response<WorkStream>, Status> {
        let access = auth::access(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the Work stream closed before its first message (subscribe)"))?;
        let sub = match first.request {
            Some(WorkMsg::Subscribe(s)) => {
                let tenants = access.work(&s.queues)?;
                convert::subscription(s, tenants)?
            }
            _ => {
                return Err(Status::failed_precondition(
                    "the first message on a Work stream must be `subscribe` naming the queues to work on",
                ))
            }
        };
        let traces = self.tracer.is_enabled().then(|| WorkTraces::new(self.tracer.clone(), sub.max_in_flight));
        let scope = SettleScope::stream(access, sub.max_in_flight);
        let reader_scope = scope.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let id = self.broker.subscribe(sub, tx.clone()).await?;
        let guard = Subscribed { broker: self.broker.clone(), id };
        let reader_traces = traces.clone();
        let window = OutcomeWindow::default();
        let reader_window = window.clone();
        tokio::spawn(async move {
            let guard = guard;
            loop {
                let next = tokio::select! {
                    // Room for the outcome first: a client that doesn't read
                    // its outcomes stops being read.
                    m = async {
                        reader_window.reserve().await;
                        inbound.message().await
                    } => m,
                    // The response side is gone (client left, or the broker
                    // ended the stream at shutdown): stop reading, which also
                    // releases the request half of the HTTP/2 stream.
                    _ = tx.closed() => break,
                };
                match next {
                    Ok(Some(pb::WorkRequest { request: Some(msg) })) => {
                        if let WorkMsg::Acks(b) = &msg {
                            // One outcome per ack (or one refusal): room for
                            // each beyond the one already reserved.
                            // (A batch refused whole gets one outcome.)
                            let n = match b.acks.len() {
                                n @ 1..=limits::MAX_ACKS_PER_MESSAGE => n,
                                _ => 1,
                            };
                            reader_window.reserve_many(n - 1).await;
                        }
                        let stream = (guard.id, &tx);
                        settle_from_stream(&guard.broker, stream, msg, reader_traces.as_ref(), &reader_scope).await
                    }
                    Ok(Some(_)) => reader_window.release(),
                    Ok(None) | Err(_) => break,
                }
            }
        });
        let out = UnboundedReceiverStream::new(rx).map(move |item| {
            if let Ok(pb::WorkResponse { response: Some(pb::work_response::Response::Outcome(_)) }) = &item {
                window.release();
            }
            item
        });
        let out: WorkStream = match traces {
            None => Box::pin(out),
            // Deliveries are traced as they leave, on this side of the writer.
            Some(t) => Box::pin(out.map(move |item| {
                if let Ok(r) = &item {
                    work_trace::lock(&t).on_response(r);
                }
                item
            })),
        };
        let out: WorkStream = if scope.watches_deliveries() {
            Box::pin(out.map(move |item| {
                if let Ok(r) = &item {
                    scope.on_response(r);
                }
                item
            }))
        } else {
            out
        };
        Ok(Response::new(out))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let tenants = access.work(&r.queues)?;
        let spec = convert::lease_spec(r, tenants)?;
        let deliveries = self.broker.lease(spec).await?;
        if self.tracer.is_enabled() {
            for d in &deliveries {
                // Unary settles take their parent from the worker's metadata,
                // so the lease span's context is not kept.
                let _ = self.tracer.delivered(d);
            }
        }
        Ok(Response::new(pb::LeaseResponse { deliveries }))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let scope = SettleScope::unary(auth::access(&req)?);
        let parent = trace::metadata_parent(req.metadata());
        let r = req.into_inner();
        let (queue, job, lease) = target(&r.queue, &r.job_id, &r.lease_id)?;
        scope.check(&self.broker, &queue, job, true).await?;
        let span = self.tracer.settle("ack", parent.map(trace::remote), || settle_attrs(&queue, job));
        let result = self.broker.settle(queue, job, lease, SettleAction::Ack).await;
        trace::end(span, result.as_ref().err().map(|e| e.to_string()));
        result?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn nack(&self, req: Request<pb::NackRequest>) -> Result<Response<pb::NackResponse>, Status> {
        let scope = SettleScope::unary(auth::access(&req)?);
        let parent = trace::metadata_parent(req.metadata());
        let r = req.into_inner();
        let (queue, job, lease) = target(&r.queue, &r.job_id, &r.lease_id)?;
        scope.check(&self.broker, &queue, job, true).await?;
        let action = nack_action(&r)?;
        let span = self.tracer.settle("nack", parent.map(trace::remote), || settle_attrs(&queue, job));
        let result = self.broker.settle(queue, job, lease, action).await;
        trace::end(span, result.as_ref().err().map(|e| e.to_string()));
        match result? {
            SettleOutcome::Nacked { state, run_at } => Ok(Response::new(pb::NackResponse {
                state: view::state(state) as i32,
                run_at: run_at.map(view::timestamp),
            })),
            other => Err(Status::internal(format!("nack answered with {other:?}"))),
        }
    }

    async fn extend_lease(
        &self,
        req: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let scope = SettleScope::unary(auth::access(&req)?);
        let r = req.into_inner();
        let (queue, job, lease) = target(&r.queue, &r.job_id, &r.lease_id)?;
        scope.check(&self.broker, &queue, job, false).await?;
        let action = extend_action(&r)?;
        match self.broker.settle(queue, job, lease, action).await? {
            SettleOutcome::Extended { expires_at } => {
                Ok(Response::new(pb::ExtendLeaseResponse { lease_expires_at: Some(view::timestamp(expires_at)) }))
            }
            other => Err(Status::internal(format!("extend answered with {other:?}"))),
        }
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let scope = SettleScope::unary(auth::access(&req)?);
        let r = req.into_inner();
        let (queue, job, lease) = target(&r.queue, &r.job_id, &r.lease_id)?;
        scope.check(&self.broker, &queue, job, true).await?;
        self.broker.settle(queue, job, lease, SettleAction::Release).await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}
