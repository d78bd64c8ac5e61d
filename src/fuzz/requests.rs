//! Target `requests`: arbitrary bytes decoded as every request message the
//! broker takes, then validated as its handlers do. Refusals must be short
//! enough to travel as a gRPC status; whatever passes must be within every
//! limit.

use crate::api::convert;
use crate::api::traceparent::TraceParent;
use crate::broker::queue_state::meta_from_config;
use crate::error::BrokerError;
use crate::limits;
use crate::model::{validate_name, MAX_LEASE};
use crate::pb;
use prost::Message;

/// Longest refusal message: it travels in the `grpc-message` header, which
/// must fit the client's header list limit with room to spare.
pub const MAX_REFUSAL_BYTES: usize = 1024;

pub fn fuzz_one(data: &[u8]) {
    if let Ok(r) = pb::EnqueueRequest::decode(data) {
        enqueue(r);
    }
    if let Ok(r) = pb::EnqueueBatchRequest::decode(data) {
        for j in r.jobs.into_iter().take(64) {
            enqueue(j);
        }
    }
    if let Ok(r) = pb::WorkRequest::decode(data) {
        work(r);
    }
    if let Ok(r) = pb::LeaseRequest::decode(data) {
        lease(r);
    }
    if let Ok(r) = pb::ListJobsRequest::decode(data) {
        if let Some(l) = checked(convert::list_jobs(r)) {
            assert!(l.page_token.is_none_or(|t| t.len() <= limits::MAX_PAGE_TOKEN));
        }
    }
    if let Ok(r) = pb::CreateQueueRequest::decode(data) {
        create_queue(r);
    }
    if let Ok(r) = pb::UpdateQueueRequest::decode(data) {
        if let Some(patch) = checked(convert::config_patch(r.config)) {
            let config = patch.apply(&crate::model::QueueConfig::default());
            if checked(config.validate()).is_some() {
                for attempt in [1, 40, u32::MAX] {
                    assert!(config.backoff(attempt) <= config.backoff_max);
                }
            }
        }
    }
    if let Ok(r) = pb::SetTenantPolicyRequest::decode(data) {
        if let Some((queue, tenant, env, policy)) = checked(convert::tenant_policy(r)) {
            assert!(validate_name("queue", &queue).is_ok() && validate_name("tenant", &tenant).is_ok());
            assert!(env.is_none_or(|e| validate_name("environment", &e).is_ok()));
            assert!(policy.enqueue_rate.is_finite() && policy.enqueue_rate >= 0.0);
            assert!(policy.weight >= 1 && policy.weight <= crate::scheduler::MAX_WEIGHT);
        }
    }
    if let Ok(r) = pb::GetJobRequest::decode(data) {
        checked(convert::queue_name(&r.queue));
        if let Some(id) = checked(convert::job_id(&r.job_id)) {
            assert_eq!(id.to_string(), r.job_id.to_ascii_lowercase(), "job ids must print as they parse");
        }
    }
    if let Ok(r) = pb::PurgeQueueRequest::decode(data) {
        checked(convert::job_state(r.state));
    }
    if let Ok(r) = pb::RedriveDeadLettersRequest::decode(data) {
        checked(convert::scope_filter(&r.tenant, &r.environment));
    }
}

/// The refusal, checked for length; `Some` when the request passed.
fn checked<T>(r: Result<T, BrokerError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let m = e.to_string();
            let head: String = m.chars().take(200).collect();
            assert!(m.len() <= MAX_REFUSAL_BYTES, "refusal of {} bytes: {head}...", m.len());
            None
        }
    }
}

fn enqueue(r: pb::EnqueueRequest) {
    if let Some(parent) = checked(TraceParent::from_field(&r.traceparent, || "traceparent".into())).flatten() {
        assert_eq!(parent.to_string(), r.traceparent, "a traceparent must print as it parsed");
    }
    let Some(job) = checked(convert::new_job(r)) else { return };
    for (kind, name) in [("queue", &job.queue), ("tenant", &job.tenant), ("environment", &job.environment)] {
        assert!(validate_name(kind, name).is_ok(), "accepted {kind} {name:?}");
    }
    assert!(job.dedup_key.len() <= limits::MAX_DEDUP_KEY);
    assert!(limits::check_headers(&job.headers).is_ok());
    assert!(job.lease_duration.is_none_or(|d| !d.is_zero() && d <= MAX_LEASE));
}

fn work(r: pb::WorkRequest) {
    use pb::work_request::Request;
    match r.request {
        Some(Request::Subscribe(s)) => {
            if let Some(sub) = checked(convert::subscription(s, None)) {
                assert!(!sub.queues.is_empty() && sub.queues.len() <= limits::MAX_WORKER_QUEUES);
                assert!(sub.max_in_flight >= 1 && sub.max_in_flight <= limits::MAX_IN_FLIGHT);
                assert!(sub.worker_id.len() <= limits::MAX_WORKER_ID_BYTES);
                assert!(sub.lease_duration.is_none_or(|d| d <= MAX_LEASE));
            }
        }
        Some(Request::Ack(a)) => settle_target(&a.queue, &a.job_id, &a.lease_id),
        Some(Request::Nack(n)) => {
            settle_target(&n.queue, &n.job_id, &n.lease_id);
            checked(convert::opt_duration("retry_after", n.retry_after.as_ref()));
        }
        Some(Request::Extend(e)) => {
            settle_target(&e.queue, &e.job_id, &e.lease_id);
            checked(convert::opt_duration("lease_duration", e.lease_duration.as_ref()));
        }
        Some(Request::Release(r)) => settle_target(&r.queue, &r.job_id, &r.lease_id),
        Some(Request::Acks(b)) => {
            for a in &b.acks {
                settle_target(&a.queue, &a.job_id, &a.lease_id);
            }
        }
        Some(Request::Drain(_)) | None => {}
    }
}

fn settle_target(queue: &str, job: &str, lease: &str) {
    checked(convert::queue_name(queue));
    checked(convert::job_id(job));
    if let Some(l) = checked(convert::lease_id(lease)) {
        assert_eq!(l.to_string(), lease.to_ascii_lowercase(), "lease ids must print as they parse");
    }
}

fn lease(r: pb::LeaseRequest) {
    if let Some(spec) = checked(convert::lease_spec(r, None)) {
        assert!(!spec.queues.is_empty() && spec.queues.len() <= limits::MAX_WORKER_QUEUES);
        assert!(spec.max_jobs >= 1 && spec.max_jobs <= limits::MAX_IN_FLIGHT);
        assert!(spec.wait <= limits::MAX_WAIT);
        assert!(spec.worker_id.len() <= limits::MAX_WORKER_ID_BYTES);
    }
}

fn create_queue(r: pb::CreateQueueRequest) {
    checked(convert::queue_name(&r.name));
    let Some(config) = checked(convert::queue_config(r.config)) else { return };
    assert!(config.validate().is_ok());
    assert!(config.max_payload_bytes >= 1 && config.max_payload_bytes <= limits::MAX_PAYLOAD_LIMIT);
    for attempt in [1, 2, 40, u32::MAX] {
        assert!(config.backoff(attempt) <= config.backoff_max);
    }
    let _ = meta_from_config("q", &config, false, 1).encode_to_vec();
}
