//! Reads served straight from RocksDB on the blocking pool, without going
//! through the writer: they need no in-memory state, and a big listing must
//! never delay enqueues or leases.

use super::lifecycle::effective_max_attempts;
use super::view;
use crate::conn_limits::RESPONSE_SOFT_LIMIT;
use crate::error::{BrokerError, Result};
use crate::model::{now_millis, JobId, JobState, QueueConfig};
use crate::pb;
use crate::storage::batch::Table;
use crate::storage::keys;
use crate::storage::records::{stored_state, JobRecord, LeaseRecord};
use crate::storage::Store;
use prost::Message;

/// Default and largest `ListJobs` page.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Most index entries one `ListJobs` call looks at, whatever the filters:
/// a page may come back short, with a token to go on.
const MAX_SCANNED: usize = 10_000;

/// A validated `ListJobs` request.
#[derive(Debug, Clone)]
pub struct ListJobs {
    pub queue: String,
    pub state: Option<JobState>,
    pub tenant: Option<String>,
    pub environment: Option<String>,
    pub page_size: usize,
    /// The key to continue after.
    pub page_token: Option<Vec<u8>>,
}

fn decode_job(id: JobId, raw: &[u8]) -> Result<JobRecord> {
    JobRecord::decode(raw).map_err(|e| BrokerError::Storage(format!("corrupt job {id}: {e}")))
}

/// Works out a job's state from the indexes that hold it; `lease` is the
/// job's lease entry as read (see [`get_job`] for the order of the reads).
fn resolve(
    store: &Store,
    queue: &str,
    cfg: &QueueConfig,
    id: JobId,
    rec: &JobRecord,
    lease: Option<Vec<u8>>,
) -> Result<pb::Job> {
    let table = Table::Queue(queue);
    let max = effective_max_attempts(rec, cfg);
    if let Some(raw) = lease {
        let l = LeaseRecord::decode(raw.as_slice())
            .map_err(|e| BrokerError::Storage(format!("corrupt lease of job {id}: {e}")))?;
        return Ok(view::job(queue, id, rec, JobState::Leased, l.attempt, max, Some(view::LeaseShown::stored(&l))));
    }
    // A job whose run time is still ahead is scheduled even if this read
    // missed its schedule entry (written in the same batch as the record,
    // but read here at another instant).
    let in_schedule = rec.state == stored_state::SCHEDULED
        && (rec.run_at_ms > now_millis() || store.get(table, &keys::scheduled(rec.run_at_ms, id))?.is_some());
    let state = super::lifecycle::state_of(rec, false, in_schedule);
    Ok(view::job(queue, id, rec, state, rec.attempt, max, None))
}

/// One job as stored. The lease is read before the record: a lease that
/// ends rewrites the record (attempt, last error) and deletes the lease in
/// one batch, so a record read after the lease was found gone is at least
/// as new as that batch. Read the other way round, a job returned by a
/// worker that died showed as ready and never attempted (the record from
/// before, the lease already gone).
pub fn get_job(store: &Store, queue: &str, cfg: &QueueConfig, id: JobId) -> Result<pb::Job> {
    let table = Table::Queue(queue);
    let lease = store.get(table, &keys::lease(id))?;
    let raw = store
        .get(table, &keys::job(id))?
        .ok_or_else(|| BrokerError::JobNotFound { queue: queue.to_string(), job: id.to_string() })?;
    let rec = decode_job(id, &raw)?;
    resolve(store, queue, cfg, id, &rec, lease)
}

/// Pages through one index (chosen by state) in key order.
pub fn list_jobs(store: &Store, cfg: &QueueConfig, req: &ListJobs) -> Result<(Vec<pb::Job>, String)> {
    let page = if req.page_size == 0 { DEFAULT_PAGE } else { req.page_size.min(MAX_PAGE) };
    // The index to walk, and the part of it the tenant/env filters allow.
    let (tag, grouped) = match req.state {
        None => (keys::JOB, false),
        Some(JobState::Ready) => (keys::READY, true),
        Some(JobState::Dead) => (keys::DEAD, true),
        Some(JobState::Scheduled) => (keys::SCHEDULED, false),
        Some(JobState::Leased) => (keys::LEASE, false),
    };
    let prefix = match (grouped, &req.tenant, &req.environment) {
        (true, Some(t), Some(e)) => keys::group_prefix(tag, t, e),
        (true, Some(t), None) => keys::tenant_prefix(tag, t),
        _ => vec![tag],
    };
    let start = match &req.page_token {
        Some(k) if k.starts_with(&prefix) => keys::successor(k),
        Some(_) => return Err(BrokerError::InvalidArgument(
            "page_token does not belong to this listing; pass the token from the previous page with the same filters"
                .into(),
        )),
        None => prefix.clone(),
    };
    let mut jobs = Vec::new();
    let mut bytes = 0;
    let mut last: Option<Vec<u8>> = None;
    let mut more = false;
    let mut scanned = 0;
    store.visit(&req.queue, &start, &keys::prefix_end(&prefix), |k, v| {
        if jobs.len() >= page || scanned >= MAX_SCANNED || bytes >= RESPONSE_SOFT_LIMIT {
            more = true;
            return Ok(false);
        }
        scanned += 1;
        if let Some(job) = listed(store, cfg, req, tag, k, v)? {
            bytes += job.encoded_len();
            jobs.push(job);
        }
        last = Some(k.to_vec());
        Ok(true)
    })?;
    let token = if more { last.map(hex::encode).unwrap_or_default() } else { String::new() };
    Ok((jobs, token))
}

/// The job an index entry of a listing names, if it passes the filters.
fn listed(store: &Store, cfg: &QueueConfig, req: &ListJobs, tag: u8, k: &[u8], v: &[u8]) -> Result<Option<pb::Job>> {
    let id = match tag {
        keys::SCHEDULED => keys::scheduled_parts(k).map(|(_, id)| id),
        _ => keys::trailing_id(k),
    };
    let Some(id) = id else { return Ok(None) };
    let rec = if tag == keys::JOB {
        decode_job(id, v)?
    } else {
        match store.get(Table::Queue(&req.queue), &keys::job(id))? {
            Some(raw) => decode_job(id, &raw)?,
            None => return Ok(None),
        }
    };
    if req.tenant.as_ref().is_some_and(|t| *t != rec.tenant)
        || req.environment.as_ref().is_some_and(|e| *e != rec.environment)
    {
        return Ok(None);
    }
    let lease = store.get(Table::Queue(&req.queue), &keys::lease(id))?;
    let job = resolve(store, &req.queue, cfg, id, &rec, lease)?;
    if req.state.is_some_and(|s| view::state(s) as i32 != job.state) {
        return Ok(None);
    }
    Ok(Some(job))
}
