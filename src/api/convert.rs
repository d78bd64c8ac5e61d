//! Proto -> domain conversion and validation for every request.

use crate::broker::{LeaseSpec, ListJobs, QueueConfigPatch, Subscription, TenantFilter};
use crate::error::{BrokerError, Result};
use crate::limits::{self, check_at_most, check_count, check_len, MAX_IN_FLIGHT, MAX_WAIT};
use crate::model::{
    self, duration_millis, now_millis, scope_or_default, validate_job_shape, validate_lease_duration, validate_name,
    JobState, NewJob, QueueConfig,
};
use crate::pb;
use std::time::Duration;

fn invalid(m: String) -> BrokerError {
    BrokerError::InvalidArgument(m)
}

/// A protobuf Duration as a std one; negative or malformed ones are refused.
pub fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(format!("{field} must be a non-negative duration")));
    }
    if d.seconds > limits::MAX_DURATION_SECS {
        return Err(invalid(format!(
            "{field} is {}s; the limit is {}s (10,000 years, the protobuf Duration range)",
            d.seconds,
            limits::MAX_DURATION_SECS
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub fn opt_duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    d.map(|d| duration(field, d)).transpose()
}

fn timestamp_millis(field: &str, t: &prost_types::Timestamp) -> Result<u64> {
    if t.seconds < 0 || t.nanos < 0 || t.nanos >= 1_000_000_000 {
        return Err(invalid(format!("{field} must be a timestamp after 1970")));
    }
    if t.seconds > limits::MAX_TIMESTAMP_SECS {
        return Err(invalid(format!(
            "{field} is {}s after 1970; the limit is {}s (9999-12-31, the protobuf Timestamp range)",
            t.seconds,
            limits::MAX_TIMESTAMP_SECS
        )));
    }
    Ok((t.seconds as u64).saturating_mul(1000).saturating_add((t.nanos as u64) / 1_000_000))
}

pub fn queue_name(name: &str) -> Result<String> {
    validate_name("queue", name)?;
    Ok(name.to_string())
}

pub fn new_job(r: pb::EnqueueRequest) -> Result<NewJob> {
    let queue = queue_name(&r.queue)?;
    let tenant = scope_or_default("tenant", &r.tenant)?;
    let environment = scope_or_default("environment", &r.environment)?;
    let run_at = match &r.schedule {
        None => None,
        Some(pb::enqueue_request::Schedule::Delay(d)) => {
            let d = duration("delay", d)?;
            Some(now_millis().saturating_add(duration_millis(d)))
        }
        Some(pb::enqueue_request::Schedule::RunAt(t)) => Some(timestamp_millis("run_at", t)?),
    };
    let job = NewJob {
        queue,
        tenant,
        environment,
        payload: r.payload,
        headers: r.headers,
        priority: r.priority,
        run_at,
        dedup_key: r.dedup_key,
        max_attempts: r.max_attempts,
        lease_duration: opt_duration("lease_duration", r.lease_duration.as_ref())?,
        // Filled by the API layer: what is stored depends on its enqueue span.
        traceparent: String::new(),
    };
    validate_job_shape(&job)?;
    Ok(job)
}

/// A full config for `CreateQueue`: unset or zero fields take the defaults.
pub fn queue_config(c: Option<pb::QueueConfig>) -> Result<QueueConfig> {
    let patch = config_patch(c)?;
    let config = patch.apply(&QueueConfig::default());
    config.validate()?;
    Ok(config)
}

/// The fields of an `UpdateQueue` config that were set (non-zero).
pub fn config_patch(c: Option<pb::QueueConfig>) -> Result<QueueConfigPatch> {
    let Some(c) = c else { return Ok(QueueConfigPatch::default()) };
    Ok(QueueConfigPatch {
        default_lease: opt_duration("default_lease_duration", c.default_lease_duration.as_ref())?,
        max_attempts: (c.max_attempts > 0).then_some(c.max_attempts),
        backoff_initial: opt_duration("backoff_initial", c.backoff_initial.as_ref())?,
        backoff_max: opt_duration("backoff_max", c.backoff_max.as_ref())?,
        dedup_window: opt_duration("dedup_window", c.dedup_window.as_ref())?,
        max_payload_bytes: (c.max_payload_bytes > 0).then_some(c.max_payload_bytes),
        weight: (c.weight > 0).then_some(c.weight),
        max_in_flight: c.max_in_flight,
        tenant_max_in_flight: c.tenant_max_in_flight,
        alert_oldest_ready_age: opt_duration("alert_oldest_ready_age", c.alert_oldest_ready_age.as_ref())?,
        alert_backlog: c.alert_backlog,
        alert_stalled_after: opt_duration("alert_stalled_after", c.alert_stalled_after.as_ref())?,
        alert_unattended_after: opt_duration("alert_unattended_after", c.alert_unattended_after.as_ref())?,
        alert_dead_letter_window: opt_duration("alert_dead_letter_window", c.alert_dead_letter_window.as_ref())?,
        breaker_failure_percent: c.breaker_failure_percent,
        breaker_min_deliveries: c.breaker_min_deliveries,
        breaker_window: c.breaker_window,
        breaker_baseline_max_age: opt_duration("breaker_baseline_max_age", c.breaker_baseline_max_age.as_ref())?,
    })
}

fn queue_list(queues: &[String]) -> Result<Vec<String>> {
    if queues.is_empty() {
        return Err(invalid("name at least one queue to take jobs from".into()));
    }
    check_count("queues", queues.len(), limits::MAX_WORKER_QUEUES)?;
    let mut out: Vec<String> = Vec::with_capacity(queues.len());
    for q in queues {
        validate_name("queue", q)?;
        if !out.contains(q) {
            out.push(q.clone());
        }
    }
    Ok(out)
}

fn worker_lease(d: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    let d = opt_duration("lease_duration", d)?;
    match d {
        Some(d) if d.is_zero() => Ok(None),
        Some(d) => validate_lease_duration(d).map(|_| Some(d)),
        None => Ok(None),
    }
}

/// `tenants`: whose jobs the worker may receive (from its token).
pub fn subscription(s: pb::Subscribe, tenants: TenantFilter) -> Result<Subscription> {
    check_at_most("max_in_flight", s.max_in_flight.into(), MAX_IN_FLIGHT.into())?;
    check_len("worker_id", &s.worker_id, limits::MAX_WORKER_ID_BYTES)?;
    check_len("worker_version", &s.worker_version, limits::MAX_WORKER_VERSION_BYTES)?;
    Ok(Subscription {
        queues: queue_list(&s.queues)?,
        worker_id: s.worker_id,
        worker_version: s.worker_version,
        max_in_flight: s.max_in_flight.max(1),
        lease_duration: worker_lease(s.lease_duration.as_ref())?,
        tenants,
    })
}

/// `tenants`: whose jobs the worker may receive (from its token).
pub fn lease_spec(r: pb::LeaseRequest, tenants: TenantFilter) -> Result<LeaseSpec> {
    check_at_most("max_jobs", r.max_jobs.into(), MAX_IN_FLIGHT.into())?;
    check_len("worker_id", &r.worker_id, limits::MAX_WORKER_ID_BYTES)?;
    check_len("worker_version", &r.worker_version, limits::MAX_WORKER_VERSION_BYTES)?;
    let wait = opt_duration("wait", r.wait.as_ref())?.unwrap_or_default();
    if wait > MAX_WAIT {
        return Err(invalid(format!("wait is {:?}; the limit is {}s", wait, MAX_WAIT.as_secs())));
    }
    Ok(LeaseSpec {
        queues: queue_list(&r.queues)?,
        max_jobs: r.max_jobs.max(1),
        wait,
        lease_duration: worker_lease(r.lease_duration.as_ref())?,
        worker_id: r.worker_id,
        worker_version: r.worker_version,
        tenants,
    })
}

/// The target of `LiftQuarantine`: a queue and a non-empty worker version.
pub fn lift_quarantine(r: pb::LiftQuarantineRequest) -> Result<(String, String)> {
    let queue = queue_name(&r.queue)?;
    if r.worker_version.is_empty() {
        return Err(invalid(
            "worker_version is empty: name the quarantined version to lift (see QueueStats.quarantined_versions)"
                .into(),
        ));
    }
    check_len("worker_version", &r.worker_version, limits::MAX_WORKER_VERSION_BYTES)?;
    Ok((queue, r.worker_version))
}

pub fn job_state(v: i32) -> Result<Option<JobState>> {
    match pb::JobState::try_from(v) {
        Ok(pb::JobState::Unspecified) => Ok(None),
        Ok(pb::JobState::Scheduled) => Ok(Some(JobState::Scheduled)),
        Ok(pb::JobState::Ready) => Ok(Some(JobState::Ready)),
        Ok(pb::JobState::Leased) => Ok(Some(JobState::Leased)),
        Ok(pb::JobState::Dead) => Ok(Some(JobState::Dead)),
        Err(_) => Err(invalid(format!("state {v} is not a JobState"))),
    }
}

fn optional_scope(kind: &str, v: &str) -> Result<Option<String>> {
    if v.is_empty() {
        Ok(None)
    } else {
        validate_name(kind, v)?;
        Ok(Some(v.to_string()))
    }
}

pub fn list_jobs(r: pb::ListJobsRequest) -> Result<ListJobs> {
    check_len("page_token", &r.page_token, limits::MAX_PAGE_TOKEN)?;
    let page_token = if r.page_token.is_empty() {
        None
    } else {
        Some(
            hex::decode(&r.page_token)
                .map_err(|_| invalid("page_token is malformed; pass next_page_token unchanged".into()))?,
        )
    };
    Ok(ListJobs {
        queue: queue_name(&r.queue)?,
        state: job_state(r.state)?,
        tenant: optional_scope("tenant", &r.tenant)?,
        environment: optional_scope("environment", &r.environment)?,
        page_size: r.page_size as usize,
        page_token,
    })
}

pub fn scope_filter(tenant: &str, env: &str) -> Result<(Option<String>, Option<String>)> {
    Ok((optional_scope("tenant", tenant)?, optional_scope("environment", env)?))
}

/// `SetTenantPolicy` as (queue, tenant, environment, policy).
pub fn tenant_policy(r: pb::SetTenantPolicyRequest) -> Result<(String, String, Option<String>, model::TenantPolicy)> {
    let queue = queue_name(&r.queue)?;
    validate_name("tenant", &r.tenant)?;
    let env = optional_scope("environment", &r.environment)?;
    let policy = model::TenantPolicy {
        weight: model::TenantPolicy::validate_weight(r.weight)?,
        max_in_flight: r.max_in_flight,
        enqueue_rate: model::TenantPolicy::validate_rate(r.enqueue_rate)?,
        enqueue_burst: r.enqueue_burst,
        env_weights: Default::default(),
    };
    Ok((queue, r.tenant, env, policy))
}

pub fn job_id(s: &str) -> Result<model::JobId> {
    model::JobId::parse(s)
}

pub fn lease_id(s: &str) -> Result<model::LeaseId> {
    model::LeaseId::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_scopes_default_and_bad_ones_are_refused() {
        let job = new_job(pb::EnqueueRequest { queue: "q".into(), ..Default::default() }).unwrap();
        assert_eq!((job.tenant.as_str(), job.environment.as_str()), ("default", "default"));
        let bad = new_job(pb::EnqueueRequest { queue: "q".into(), tenant: "Bad Tenant".into(), ..Default::default() });
        assert!(bad.unwrap_err().to_string().contains("tenant name"));
    }

    #[test]
    fn negative_delays_are_refused() {
        let r = pb::EnqueueRequest {
            queue: "q".into(),
            schedule: Some(pb::enqueue_request::Schedule::Delay(prost_types::Duration { seconds: -1, nanos: 0 })),
            ..Default::default()
        };
        assert!(new_job(r).unwrap_err().to_string().contains("delay"));
    }

    #[test]
    fn create_config_fills_defaults() {
        let c = queue_config(Some(pb::QueueConfig { max_attempts: 3, ..Default::default() })).unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.default_lease, Duration::from_secs(30));
        assert!(queue_config(Some(pb::QueueConfig {
            backoff_initial: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
            backoff_max: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        }))
        .is_err());
    }
}
