//! OpenTelemetry spans for enqueue, lease and ack/nack.
//!
//! Spans are made here, in the async handlers, never on the writer thread,
//! and only when an exporter is configured: with none, every helper is a
//! branch on `None` and the only tracing work left is storing the
//! producer's traceparent unchanged.

use super::traceparent::{TraceParent, METADATA_KEY};
use crate::broker::EnqueueOutcome;
use crate::error::BrokerError;
use crate::model::NewJob;
use crate::pb;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use std::collections::HashMap;

/// Where spans go: the exporter's tracer, or nowhere. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    /// `None` when no exporter is configured, so spans cost nothing.
    inner: Option<SdkTracer>,
}

impl Tracer {
    pub fn new(tracer: SdkTracer) -> Tracer {
        Tracer { inner: Some(tracer) }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the enqueue spans of one request and sets each job's stored
    /// traceparent: the span's own context, so workers become its children.
    ///
    /// One span per distinct (parent, queue, tenant, environment) in the
    /// request: a batch from one producer trace is one span, and items of a
    /// batch that carry their own traces each get a span in their trace, so
    /// every job's worker still joins its producer's trace. Jobs without any
    /// parent start a new trace at the broker.
    pub fn enqueue(&self, jobs: &mut [NewJob], parents: &[Option<TraceParent>]) -> EnqueueSpans {
        let Some(tracer) = &self.inner else {
            for (job, parent) in jobs.iter_mut().zip(parents) {
                job.traceparent = parent.map(|p| p.to_string()).unwrap_or_default();
            }
            return EnqueueSpans::default();
        };
        let mut group_of = Vec::with_capacity(jobs.len());
        let mut firsts = Vec::new();
        {
            let mut index = HashMap::new();
            for (i, (job, parent)) in jobs.iter().zip(parents).enumerate() {
                let key = (*parent, job.queue.as_str(), job.tenant.as_str(), job.environment.as_str());
                let g = *index.entry(key).or_insert_with(|| {
                    firsts.push(i);
                    firsts.len() - 1
                });
                group_of.push(g);
            }
        }
        let mut groups: Vec<EnqueueGroup> = firsts
            .iter()
            .map(|&i| {
                let job = &jobs[i];
                let attrs = scope_attrs(&job.queue, &job.tenant, &job.environment);
                let span = start(tracer, "enqueue", parents.get(i).copied().flatten().map(remote), attrs);
                let stored = from_context(span.span_context()).map(|tp| tp.to_string()).unwrap_or_default();
                EnqueueGroup { span, stored, jobs: Vec::new() }
            })
            .collect();
        for (i, (job, g)) in jobs.iter_mut().zip(group_of).enumerate() {
            // Every index came from `firsts`, so the group exists.
            if let Some(group) = groups.get_mut(g) {
                job.traceparent = group.stored.clone();
                group.jobs.push(i);
            }
        }
        EnqueueSpans { groups }
    }

    /// One span per delivery of a traced job, child of its stored context.
    /// Returns the span's context, the parent of the delivery's ack/nack.
    pub fn delivered(&self, d: &pb::Delivery) -> Option<(SpanContext, Vec<KeyValue>)> {
        let tracer = self.inner.as_ref()?;
        let job = d.job.as_ref()?;
        let parent = TraceParent::parse(&job.traceparent)?;
        let mut attrs = scope_attrs(&job.queue, &job.tenant, &job.environment);
        attrs.push(KeyValue::new("fairway.job_id", job.id.clone()));
        attrs.push(KeyValue::new("fairway.attempt", i64::from(job.attempt)));
        let mut span = start(tracer, "lease", Some(remote(parent)), attrs.clone());
        let cx = span.span_context().clone();
        span.end();
        Some((cx, attrs))
    }

    /// An `ack` or `nack` span under the job's trace; none without a parent,
    /// since a lone settle span in a trace of its own tells nobody anything.
    /// `attrs` is only called when a span is made.
    pub fn settle(
        &self,
        kind: &'static str,
        parent: Option<SpanContext>,
        attrs: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<Span> {
        let (Some(tracer), Some(p)) = (&self.inner, parent) else { return None };
        Some(start(tracer, kind, Some(p), attrs()))
    }
}

/// A server span, child of `parent` (a new trace when there is none).
fn start(tracer: &SdkTracer, name: &'static str, parent: Option<SpanContext>, attrs: Vec<KeyValue>) -> Span {
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(p),
        None => Context::new(),
    };
    tracer.span_builder(name).with_kind(SpanKind::Server).with_attributes(attrs).start_with_context(tracer, &cx)
}

/// The spans one enqueue request started, ended once it is answered.
#[derive(Default)]
pub struct EnqueueSpans {
    /// One per distinct parent and scope in the request.
    groups: Vec<EnqueueGroup>,
}

struct EnqueueGroup {
    /// The broker's enqueue span for these jobs.
    span: Span,
    /// Its context as stored with each of the jobs.
    stored: String,
    /// Request positions of the jobs, to name their ids once known.
    jobs: Vec<usize>,
}

impl EnqueueSpans {
    /// Names the jobs the spans stored (or the error), then ends them.
    pub fn finish(self, result: &Result<Vec<EnqueueOutcome>, BrokerError>) {
        for mut g in self.groups {
            match result {
                Ok(out) => {
                    g.span.set_attribute(KeyValue::new("fairway.job_count", g.jobs.len() as i64));
                    // A span of many jobs names none: a list of thousands of ids
                    // would swamp the collector.
                    if let [i] = g.jobs[..] {
                        if let Some(o) = out.get(i) {
                            g.span.set_attribute(KeyValue::new("fairway.job_id", o.id.to_string()));
                            g.span.set_attribute(KeyValue::new("fairway.deduplicated", o.deduplicated));
                        }
                    }
                }
                Err(e) => g.span.set_status(Status::error(e.to_string())),
            }
            g.span.end();
        }
    }
}

/// Ends a settle span with the settle's outcome.
pub fn end(span: Option<Span>, error: Option<String>) {
    if let Some(mut span) = span {
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }
}

/// Trace context a client sent as `traceparent` metadata. A malformed
/// value is ignored, as standard propagators do: metadata is often set by
/// middleware the caller doesn't control.
pub fn metadata_parent(md: &tonic::metadata::MetadataMap) -> Option<TraceParent> {
    TraceParent::parse(md.get(METADATA_KEY)?.to_str().ok()?)
}

pub fn scope_attrs(queue: &str, tenant: &str, environment: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("fairway.queue", queue.to_string()),
        KeyValue::new("fairway.tenant", tenant.to_string()),
        KeyValue::new("fairway.environment", environment.to_string()),
    ]
}

/// A context received from outside, as a parent.
pub fn remote(tp: TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::default(),
    )
}

/// A span's context in traceparent form; `None` for an invalid context.
pub fn from_context(sc: &SpanContext) -> Option<TraceParent> {
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;

    /// A tracer with no exporter: spans get real ids and are then dropped.
    pub(crate) fn tracer() -> Tracer {
        Tracer::new(opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("test"))
    }

    fn job(queue: &str) -> NewJob {
        crate::api::convert::new_job(pb::EnqueueRequest { queue: queue.into(), ..Default::default() }).unwrap()
    }

    const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_the_producer_context_is_stored_unchanged() {
        let mut jobs = vec![job("q"), job("q")];
        let spans = Tracer::default().enqueue(&mut jobs, &[TraceParent::parse(PRODUCER), None]);
        assert!(spans.groups.is_empty());
        assert_eq!(jobs[0].traceparent, PRODUCER);
        assert_eq!(jobs[1].traceparent, "");
    }

    #[test]
    fn stored_context_is_a_child_in_the_producer_trace() {
        let producer = TraceParent::parse(PRODUCER).unwrap();
        let mut jobs = vec![job("q"), job("q"), job("other"), job("q")];
        let other = TraceParent { trace_id: [7; 16], span_id: [8; 8], flags: 1 };
        let parents = [Some(producer), Some(producer), Some(producer), Some(other)];
        let spans = tracer().enqueue(&mut jobs, &parents);
        // Same parent and scope share a span; another queue or trace does not.
        assert_eq!(spans.groups.len(), 3);
        assert_eq!(jobs[0].traceparent, jobs[1].traceparent);
        let stored: Vec<TraceParent> = jobs.iter().map(|j| TraceParent::parse(&j.traceparent).unwrap()).collect();
        assert_eq!(stored[0].trace_id, producer.trace_id);
        assert_ne!(stored[0].span_id, producer.span_id, "the broker's own span is the parent");
        assert_eq!(stored[2].trace_id, producer.trace_id);
        assert_ne!(stored[2].span_id, stored[0].span_id);
        assert_eq!(stored[3].trace_id, other.trace_id);
        spans.finish(&Err(BrokerError::ShuttingDown));
    }

    #[test]
    fn jobs_without_a_parent_start_a_trace_at_the_broker() {
        let mut jobs = vec![job("q")];
        tracer().enqueue(&mut jobs, &[None]).finish(&Ok(vec![]));
        assert!(TraceParent::parse(&jobs[0].traceparent).is_some());
    }

    #[test]
    fn deliveries_of_untraced_jobs_make_no_span() {
        let mut d = pb::Delivery { job: Some(pb::Job { id: "1".into(), ..Default::default() }), ..Default::default() };
        assert!(tracer().delivered(&d).is_none());
        d.job.as_mut().unwrap().traceparent = PRODUCER.into();
        let (cx, attrs) = tracer().delivered(&d).unwrap();
        assert_eq!(cx.trace_id().to_bytes(), TraceParent::parse(PRODUCER).unwrap().trace_id);
        assert!(attrs.iter().any(|kv| kv.key.as_str() == "fairway.attempt"));
        assert!(Tracer::default().delivered(&d).is_none());
    }

    #[test]
    fn metadata_parent_ignores_malformed_values() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(metadata_parent(&md), None);
        md.insert(METADATA_KEY, "garbage".parse().unwrap());
        assert_eq!(metadata_parent(&md), None);
        md.insert(METADATA_KEY, PRODUCER.parse().unwrap());
        assert_eq!(metadata_parent(&md), TraceParent::parse(PRODUCER));
    }
}
