//! Trace state of one Work stream (only when tracing is on): which delivery
//! each lease came from, so its ack or nack span joins the job's trace, and
//! the settle spans waiting for the outcome the writer sends back.

use super::trace::{self, Tracer};
use crate::broker::SettleAction;
use crate::model::{duration_millis, now_millis, JobId, LeaseId, Millis};
use crate::pb;
use crate::pb::work_response::Response as WorkMsg;
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Shared by the stream's reader task (settles) and its response stream
/// (deliveries and outcomes).
pub type SharedWorkTraces = Arc<Mutex<WorkTraces>>;

pub struct WorkTraces {
    /// Where settle spans go.
    tracer: Tracer,
    /// The stream's prefetch window: more live leases than this cannot
    /// exist, so past it the map holds stale entries worth sweeping.
    max_in_flight: usize,
    /// Deliveries of traced jobs not yet settled, by lease.
    delivered: HashMap<LeaseId, Delivered>,
    /// Ack/nack spans whose outcome has not come back yet, by job.
    settling: HashMap<JobId, Settling>,
}

struct Delivered {
    /// The lease span: the parent of the ack or nack.
    cx: SpanContext,
    /// The job's attributes, repeated on the settle span.
    attrs: Vec<KeyValue>,
    /// Past this the lease is gone (unless extended), and so is the entry's
    /// use: leases that expire unsettled are swept on this.
    expires_at: Millis,
    /// The lease's length, which an extend without a duration renews.
    lease_ms: u64,
}

struct Settling {
    /// "ack" or "nack": an extend outcome for the same job must not end it.
    kind: &'static str,
    /// Ended when the outcome passes, so it covers the durable write.
    span: Span,
}

pub fn lock(t: &SharedWorkTraces) -> MutexGuard<'_, WorkTraces> {
    // The state is only trace bookkeeping: a panic elsewhere must not stop
    // the stream from using it.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(t: &prost_types::Timestamp) -> Millis {
    (t.seconds.max(0) as u64).saturating_mul(1000).saturating_add(t.nanos.max(0) as u64 / 1_000_000)
}

impl WorkTraces {
    pub fn new(tracer: Tracer, max_in_flight: u32) -> SharedWorkTraces {
        Arc::new(Mutex::new(WorkTraces {
            tracer,
            max_in_flight: max_in_flight.max(1) as usize,
            delivered: HashMap::new(),
            settling: HashMap::new(),
        }))
    }

    /// A message on its way to the worker: a delivery gets its lease span,
    /// an ack/nack outcome ends the span of that settle.
    pub fn on_response(&mut self, r: &pb::WorkResponse) {
        match &r.response {
            Some(WorkMsg::Delivery(d)) => self.on_delivery(d),
            Some(WorkMsg::Outcome(o)) => {
                let Ok(job) = JobId::parse(&o.job_id) else { return };
                if self.settling.get(&job).is_some_and(|s| s.kind == o.kind) {
                    let s = self.settling.remove(&job).map(|s| s.span);
                    trace::end(s, (!o.ok).then(|| o.error.clone()));
                }
            }
            None => {}
        }
    }

    fn on_delivery(&mut self, d: &pb::Delivery) {
        let Ok(lease) = LeaseId::parse(&d.lease_id) else { return };
        let Some((cx, attrs)) = self.tracer.delivered(d) else { return };
        let now = now_millis();
        if self.delivered.len() >= self.max_in_flight {
            self.delivered.retain(|_, e| e.expires_at > now);
        }
        let expires_at = d.lease_expires_at.as_ref().map(millis).unwrap_or(now);
        let lease_ms = expires_at.saturating_sub(now);
        self.delivered.insert(lease, Delivered { cx, attrs, expires_at, lease_ms });
    }

    /// A settle the worker sent, before it goes to the writer.
    pub fn on_settle(&mut self, job: JobId, lease: LeaseId, action: &SettleAction) {
        match action {
            SettleAction::Extend { duration } => {
                if let Some(e) = self.delivered.get_mut(&lease) {
                    let d = duration.map(duration_millis).unwrap_or(e.lease_ms);
                    e.expires_at = e.expires_at.max(now_millis().saturating_add(d));
                }
            }
            // Given back unstarted: no settle span, nothing more to follow.
            SettleAction::Release => {
                self.delivered.remove(&lease);
            }
            SettleAction::Ack | SettleAction::Nack { .. } => {
                let Some(e) = self.delivered.remove(&lease) else { return };
                let kind = action.kind();
                if let Some(span) = self.tracer.settle(kind, Some(e.cx), || e.attrs) {
                    if let Some(mut replaced) = self.settling.insert(job, Settling { kind, span }) {
                        replaced.span.end();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::traceparent::TraceParent;
    use crate::broker::view;

    const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn delivery(job: JobId, lease: LeaseId, expires_at: Millis) -> pb::WorkResponse {
        let job = pb::Job { id: job.to_string(), traceparent: PRODUCER.into(), ..Default::default() };
        let d = pb::Delivery {
            job: Some(job),
            lease_id: lease.to_string(),
            lease_expires_at: Some(view::timestamp(expires_at)),
        };
        pb::WorkResponse { response: Some(WorkMsg::Delivery(d)) }
    }

    fn traces(max_in_flight: u32) -> SharedWorkTraces {
        WorkTraces::new(trace::tests::tracer(), max_in_flight)
    }

    #[test]
    fn a_settle_span_lives_from_the_request_to_its_outcome() {
        let t = traces(10);
        let mut t = lock(&t);
        let (job, lease) = (JobId(1), LeaseId::random());
        t.on_response(&delivery(job, lease, now_millis() + 30_000));
        assert_eq!(t.delivered.len(), 1);
        t.on_settle(job, lease, &SettleAction::Ack);
        assert!(t.delivered.is_empty());
        let span_trace = t.settling[&job].span.span_context().trace_id().to_bytes();
        assert_eq!(span_trace, TraceParent::parse(PRODUCER).unwrap().trace_id);
        // An extend's outcome for the same job leaves the ack span alone.
        t.on_response(&view::outcome(job.to_string(), "extend", Ok(crate::broker::SettleOutcome::Acked)));
        assert_eq!(t.settling.len(), 1);
        t.on_response(&view::outcome(job.to_string(), "ack", Ok(crate::broker::SettleOutcome::Acked)));
        assert!(t.settling.is_empty());
    }

    #[test]
    fn unknown_leases_make_no_span() {
        let t = traces(10);
        let mut t = lock(&t);
        t.on_settle(JobId(1), LeaseId::random(), &SettleAction::Ack);
        assert!(t.settling.is_empty());
    }

    #[test]
    fn leases_that_expired_unsettled_are_swept_but_extended_ones_stay() {
        let t = traces(2);
        let mut t = lock(&t);
        let now = now_millis();
        let (old, extended) = (LeaseId::random(), LeaseId::random());
        t.on_response(&delivery(JobId(1), old, now.saturating_sub(1)));
        t.on_response(&delivery(JobId(2), extended, now.saturating_sub(1)));
        t.on_settle(JobId(2), extended, &SettleAction::Extend { duration: Some(std::time::Duration::from_secs(60)) });
        t.on_response(&delivery(JobId(3), LeaseId::random(), now + 30_000));
        assert_eq!(t.delivered.len(), 2);
        assert!(!t.delivered.contains_key(&old));
        assert!(t.delivered.contains_key(&extended));
    }
}
