//! How stored records look on the wire.

use super::queue_state::ActiveLease;
use super::SettleOutcome;
use crate::error::BrokerError;
use crate::model::{JobId, JobState, Millis, QueueConfig};
use crate::pb;
use crate::storage::records::JobRecord;
use std::time::Duration;

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub fn state(s: JobState) -> pb::JobState {
    match s {
        JobState::Scheduled => pb::JobState::Scheduled,
        JobState::Ready => pb::JobState::Ready,
        JobState::Leased => pb::JobState::Leased,
        JobState::Dead => pb::JobState::Dead,
    }
}

pub fn queue(name: &str, c: &QueueConfig, paused: bool) -> pb::Queue {
    pb::Queue {
        name: name.to_string(),
        config: Some(pb::QueueConfig {
            default_lease_duration: Some(duration(c.default_lease)),
            max_attempts: c.max_attempts,
            backoff_initial: Some(duration(c.backoff_initial)),
            backoff_max: Some(duration(c.backoff_max)),
            dedup_window: Some(duration(c.dedup_window)),
            max_payload_bytes: c.max_payload_bytes,
            weight: c.weight,
            max_in_flight: Some(c.max_in_flight),
            tenant_max_in_flight: Some(c.tenant_max_in_flight),
            alert_oldest_ready_age: Some(duration(c.alerts.oldest_ready_age)),
            alert_backlog: Some(c.alerts.backlog),
            alert_stalled_after: Some(duration(c.alerts.stalled_after)),
            alert_unattended_after: Some(duration(c.alerts.unattended_after)),
            alert_dead_letter_window: Some(duration(c.alerts.dead_letter_window)),
            breaker_failure_percent: Some(c.breaker.failure_percent),
            breaker_min_deliveries: Some(c.breaker.min_deliveries),
            breaker_window: Some(c.breaker.window),
            breaker_baseline_max_age: Some(duration(c.breaker.baseline_max_age)),
        }),
        paused,
    }
}

pub fn quarantine(r: &crate::storage::records::QuarantineRecord) -> pb::WorkerVersionQuarantine {
    pb::WorkerVersionQuarantine {
        worker_version: r.worker_version.clone(),
        since: Some(timestamp(r.since_ms)),
        failures: r.failures,
        deliveries: r.deliveries,
        baseline_version: r.baseline_version.clone(),
        baseline_failures: r.baseline_failures,
        baseline_deliveries: r.baseline_deliveries,
        returned_leases: r.returned_leases,
        refunded_attempts: r.refunded_attempts,
    }
}

pub fn tenant_policy(tenant: &str, p: &crate::model::TenantPolicy, leased: u64) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant: tenant.to_string(),
        weight: p.weight,
        max_in_flight: p.max_in_flight,
        enqueue_rate: p.enqueue_rate,
        enqueue_burst: p.enqueue_burst,
        environment_weights: p.env_weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        leased,
    }
}

/// What a job shows of its lease while it is leased.
#[derive(Debug, Clone, Copy)]
pub struct LeaseShown<'a> {
    pub leased_at: Millis,
    pub expires_at: Millis,
    pub worker_id: &'a str,
    pub worker_version: &'a str,
}

impl<'a> LeaseShown<'a> {
    pub fn of(l: &'a ActiveLease) -> LeaseShown<'a> {
        LeaseShown {
            leased_at: l.leased_at,
            expires_at: l.expires_at,
            worker_id: &l.worker_id,
            worker_version: &l.worker_version,
        }
    }

    pub fn stored(l: &'a crate::storage::records::LeaseRecord) -> LeaseShown<'a> {
        LeaseShown {
            leased_at: l.leased_at(),
            expires_at: l.expires_at_ms,
            worker_id: &l.worker_id,
            worker_version: &l.worker_version,
        }
    }
}

/// A job as clients see it. `attempt` and `lease` come from the lease when
/// the job is leased.
pub fn job(
    queue: &str,
    id: JobId,
    rec: &JobRecord,
    st: JobState,
    attempt: u32,
    max_attempts: u32,
    lease: Option<LeaseShown>,
) -> pb::Job {
    pb::Job {
        id: id.to_string(),
        queue: queue.to_string(),
        tenant: rec.tenant.clone(),
        environment: rec.environment.clone(),
        payload: rec.payload.clone(),
        headers: rec.headers.clone(),
        priority: rec.priority,
        state: state(st) as i32,
        attempt,
        max_attempts,
        last_error: rec.last_error.clone(),
        created_at: Some(timestamp(rec.created_at_ms)),
        run_at: Some(timestamp(rec.run_at_ms)),
        dedup_key: rec.dedup_key.clone(),
        lease_duration: (rec.lease_duration_ms > 0).then(|| duration(Duration::from_millis(rec.lease_duration_ms))),
        lease_expires_at: lease.map(|l| timestamp(l.expires_at)),
        traceparent: rec.traceparent.clone(),
        lease_worker_id: lease.map(|l| l.worker_id.to_string()).unwrap_or_default(),
        lease_worker_version: lease.map(|l| l.worker_version.to_string()).unwrap_or_default(),
        leased_at: lease.map(|l| timestamp(l.leased_at)),
    }
}

pub fn delivery(queue: &str, id: JobId, l: &ActiveLease, max_attempts: u32) -> pb::Delivery {
    pb::Delivery {
        job: Some(job(queue, id, &l.record, JobState::Leased, l.attempt, max_attempts, Some(LeaseShown::of(l)))),
        lease_id: l.lease_id.to_string(),
        lease_expires_at: Some(timestamp(l.expires_at)),
    }
}

/// What `ListWorkers` shows of one lease.
pub fn worker_lease(queue: &str, id: JobId, l: &ActiveLease) -> pb::WorkerLease {
    pb::WorkerLease {
        queue: queue.to_string(),
        job_id: id.to_string(),
        tenant: l.record.tenant.clone(),
        environment: l.record.environment.clone(),
        attempt: l.attempt,
        leased_at: Some(timestamp(l.leased_at)),
        lease_expires_at: Some(timestamp(l.expires_at)),
    }
}

/// The answer to a `drain` on a Work stream: no delivery follows it.
pub fn drained() -> pb::WorkResponse {
    let o = pb::Outcome { ok: true, kind: "drain".into(), ..Default::default() };
    pb::WorkResponse { response: Some(pb::work_response::Response::Outcome(o)) }
}

/// The answer to an ack/nack/extend/release sent on a Work stream.
pub fn outcome(job_id: String, kind: &str, res: Result<SettleOutcome, &BrokerError>) -> pb::WorkResponse {
    let mut o = pb::Outcome { job_id, ok: res.is_ok(), kind: kind.to_string(), ..Default::default() };
    match res {
        Ok(SettleOutcome::Extended { expires_at }) => o.lease_expires_at = Some(timestamp(expires_at)),
        Ok(SettleOutcome::Nacked { state: s, run_at }) => {
            o.state = state(s) as i32;
            o.run_at = run_at.map(timestamp);
        }
        Ok(SettleOutcome::Acked | SettleOutcome::Released) => {}
        Err(e) => {
            o.error = e.to_string();
            o.code = code_name(e);
        }
    }
    pb::WorkResponse { response: Some(pb::work_response::Response::Outcome(o)) }
}

/// The gRPC status code name of an error, e.g. "FAILED_PRECONDITION".
pub fn code_name(e: &BrokerError) -> String {
    format!("{:?}", e.code()).to_uppercase_snake()
}

trait UpperSnake {
    fn to_uppercase_snake(&self) -> String;
}

impl UpperSnake for String {
    /// "FailedPrecondition" -> "FAILED_PRECONDITION", the gRPC code name.
    fn to_uppercase_snake(&self) -> String {
        let mut out = String::with_capacity(self.len() + 4);
        for (i, ch) in self.chars().enumerate() {
            if ch.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_the_grpc_code() {
        let e = BrokerError::LeaseNotHeld("stale".into());
        let r = outcome("j".into(), "ack", Err(&e));
        let Some(pb::work_response::Response::Outcome(o)) = r.response else { panic!() };
        assert!(!o.ok);
        assert_eq!(o.code, "FAILED_PRECONDITION");
        assert_eq!(o.kind, "ack");
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
