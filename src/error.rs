//! The broker's one error type, and the one table that maps it to gRPC codes.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("queue {0:?} does not exist; create it with AdminService.CreateQueue or `fairway queue create {0}`")]
    QueueNotFound(String),
    #[error("queue {0:?} already exists")]
    QueueExists(String),
    #[error("job {job} does not exist in queue {queue:?} (it may have been acked, cancelled or purged)")]
    JobNotFound { queue: String, job: String },
    /// Fencing: the caller's lease is not the job's current lease.
    #[error("{0}")]
    LeaseNotHeld(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A not-found with a caller-supplied message (e.g. naming a batch item).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A tenant's enqueue rate limit; carries when to retry.
    #[error("tenant {tenant:?} is over its enqueue rate of {rate}/s in queue {queue:?}; retry in {} ms", retry_after.as_millis())]
    RateLimited { queue: String, tenant: String, rate: f64, retry_after: std::time::Duration },
    #[error("the broker is shutting down; retry against a running instance")]
    ShuttingDown,
    /// Start-up recovery has not finished; health says NOT_SERVING meanwhile.
    #[error("the broker is starting (rebuilding its state from the data dir); retry in a moment")]
    Starting,
    /// No token, or one the auth file does not hold.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token, outside its role, queues or tenants.
    #[error("{0}")]
    PermissionDenied(String),
    /// In a cluster: the write could not be committed (this node does not
    /// lead the partition, or its group has no quorum); says where to go.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug in the broker: an invariant it keeps did not hold (a lease it
    /// holds in memory is gone, a thread it started ended). Not the
    /// caller's fault, and not the disk's.
    #[error("internal error: {0}")]
    Internal(String),
    /// The data dir's filesystem is full: the write was not stored.
    #[error(
        "the broker's disk is full, so nothing was stored ({0}). Free space on the data dir's filesystem: \
         the broker resumes writing by itself once there is room, and reports NOT_SERVING until then"
    )]
    DiskFull(String),
    /// The data dir cannot be written (read-only filesystem, I/O error):
    /// the write was not stored.
    #[error(
        "the broker cannot write to its data dir, so nothing was stored ({0}). Make the filesystem writable \
         again and restart the broker; it reports NOT_SERVING until writes succeed"
    )]
    StorageUnavailable(String),
}

impl From<rocksdb::Error> for BrokerError {
    fn from(e: rocksdb::Error) -> Self {
        let kind = e.kind();
        let msg = e.into_string();
        // RocksDB keeps answering writes with the error that stopped them, so
        // every write while the disk is full or read-only lands here too.
        if msg.contains("No space left on device") || msg.contains("Disk quota exceeded") {
            BrokerError::DiskFull(msg)
        } else if kind == rocksdb::ErrorKind::IOError {
            BrokerError::StorageUnavailable(msg)
        } else {
            BrokerError::Storage(msg)
        }
    }
}

impl BrokerError {
    pub fn code(&self) -> Code {
        match self {
            BrokerError::InvalidArgument(_) => Code::InvalidArgument,
            BrokerError::QueueNotFound(_) | BrokerError::JobNotFound { .. } | BrokerError::NotFound(_) => {
                Code::NotFound
            }
            BrokerError::QueueExists(_) => Code::AlreadyExists,
            BrokerError::LeaseNotHeld(_) | BrokerError::FailedPrecondition(_) => Code::FailedPrecondition,
            BrokerError::ResourceExhausted(_) | BrokerError::RateLimited { .. } => Code::ResourceExhausted,
            BrokerError::ShuttingDown | BrokerError::Starting | BrokerError::Unavailable(_) => Code::Unavailable,
            BrokerError::Unauthenticated(_) => Code::Unauthenticated,
            BrokerError::PermissionDenied(_) => Code::PermissionDenied,
            BrokerError::Storage(_) | BrokerError::Internal(_) => Code::Internal,
            BrokerError::DiskFull(_) => Code::ResourceExhausted,
            BrokerError::StorageUnavailable(_) => Code::Unavailable,
        }
    }

    /// A failure of the storage itself (not of the request): the batch it
    /// happened in must not commit.
    pub fn is_storage(&self) -> bool {
        matches!(self, BrokerError::Storage(_) | BrokerError::DiskFull(_) | BrokerError::StorageUnavailable(_))
    }

    /// The batch this error happened in while it was being built must not
    /// commit: a storage failure, or a broken invariant part way through a
    /// transition (some of its writes may be staged).
    pub fn poisons_batch(&self) -> bool {
        self.is_storage() || matches!(self, BrokerError::Internal(_))
    }

    /// Prefixes the message, e.g. with the index of a bad batch item.
    pub fn context(self, prefix: &str) -> BrokerError {
        match self {
            BrokerError::InvalidArgument(m) => BrokerError::InvalidArgument(format!("{prefix}: {m}")),
            BrokerError::FailedPrecondition(m) => BrokerError::FailedPrecondition(format!("{prefix}: {m}")),
            BrokerError::PermissionDenied(m) => BrokerError::PermissionDenied(format!("{prefix}: {m}")),
            e @ (BrokerError::QueueNotFound(_) | BrokerError::JobNotFound { .. } | BrokerError::NotFound(_)) => {
                BrokerError::NotFound(format!("{prefix}: {e}"))
            }
            other => other,
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let BrokerError::RateLimited { retry_after, .. } = &e {
            // Machine-readable retry hint for clients that back off.
            if let Ok(v) = retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
        }
        status
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_precise_code() {
        assert_eq!(Status::from(BrokerError::QueueNotFound("q".into())).code(), Code::NotFound);
        assert_eq!(Status::from(BrokerError::QueueExists("q".into())).code(), Code::AlreadyExists);
        assert_eq!(Status::from(BrokerError::LeaseNotHeld("x".into())).code(), Code::FailedPrecondition);
        assert_eq!(Status::from(BrokerError::ShuttingDown).code(), Code::Unavailable);
        assert_eq!(Status::from(BrokerError::Starting).code(), Code::Unavailable);
        assert_eq!(Status::from(BrokerError::Unavailable("p".into())).code(), Code::Unavailable);
        assert_eq!(Status::from(BrokerError::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(Status::from(BrokerError::PermissionDenied("x".into())).code(), Code::PermissionDenied);
        let s = Status::from(BrokerError::QueueNotFound("emails".into()));
        assert!(s.message().contains("fairway queue create emails"));
    }

    #[test]
    fn disk_trouble_maps_to_codes_a_client_can_act_on() {
        let full = BrokerError::DiskFull("IO error: No space left on device: While appending to file".into());
        assert_eq!(Status::from(full.clone()).code(), Code::ResourceExhausted);
        assert!(full.to_string().contains("disk is full") && full.to_string().contains("Free space"), "{full}");
        let ro = BrokerError::StorageUnavailable("IO error: Read-only file system".into());
        assert_eq!(Status::from(ro.clone()).code(), Code::Unavailable);
        assert!(ro.to_string().contains("cannot write to its data dir"), "{ro}");
        assert!(full.is_storage() && ro.is_storage() && BrokerError::Storage("x".into()).is_storage());
        assert!(!BrokerError::ShuttingDown.is_storage());
    }

    #[test]
    fn context_names_the_item() {
        let e = BrokerError::InvalidArgument("bad".into()).context("jobs[3]");
        assert_eq!(e.to_string(), "jobs[3]: bad");
        let e = BrokerError::QueueNotFound("q".into()).context("jobs[1]");
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.to_string().starts_with("jobs[1]: queue \"q\" does not exist"));
    }
}
