//! Hard limits on what one request may carry, and the checks that name the
//! field, the limit and the value seen when a request is over one.
//!
//! Every limit is a named constant here (or, for the transport, in
//! [`crate::conn_limits`]) and listed in docs/limits.md. The
//! point of each is that no single client can make the broker hold, store or
//! index an unbounded amount of anything.

use crate::error::BrokerError;
use std::collections::HashMap;
use std::time::Duration;

/// Longest queue, tenant or environment name: names are key prefixes of
/// every index entry, so they stay short.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest `worker_id`: it is copied into every lease record and log line.
pub const MAX_WORKER_ID_BYTES: usize = 256;
/// Longest `worker_version`: it is kept for as long as the stream is open.
pub const MAX_WORKER_VERSION_BYTES: usize = 128;
/// Longest dedup key, so keys stay cheap to index.
pub const MAX_DEDUP_KEY: usize = 256;
/// Most headers on one job: each is a map entry copied on every delivery.
pub const MAX_HEADERS: usize = 128;
/// Limit on all header keys and values of one job together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest batch accepted by `EnqueueBatch`; bigger batches hold the writer
/// thread for too long and should be split by the client.
pub const MAX_BATCH: usize = 10_000;
/// Hard ceiling on a queue's `max_payload_bytes`, below the message limit
/// of the transport so a maximal job always fits in one request.
pub const MAX_PAYLOAD_LIMIT: u32 = 32 * 1024 * 1024;
/// The error text a nack stores is cut to this (not refused: a worker that
/// is failing should not also fail to report it).
pub const MAX_ERROR_BYTES: usize = 8 * 1024;
/// Largest prefetch window (`Subscribe.max_in_flight`) and unary lease batch
/// (`LeaseRequest.max_jobs`) a worker may ask for.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Most acks in one `AckBatch` on a Work stream.
pub const MAX_ACKS_PER_MESSAGE: usize = 1_000;
/// Longest long-poll of a unary `Lease`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Most queues one worker may name: each is checked on every lease.
pub const MAX_WORKER_QUEUES: usize = 100;
/// Longest `page_token`: tokens the broker hands out are hex of one key,
/// far shorter than this.
pub const MAX_PAGE_TOKEN: usize = 2048;
/// Largest `seconds` of a protobuf Duration, the range its spec allows
/// (10,000 years): beyond it millisecond arithmetic would overflow.
pub const MAX_DURATION_SECS: i64 = 315_576_000_000;
/// Largest `seconds` of a protobuf Timestamp (9999-12-31T23:59:59Z), the
/// range its spec allows.
pub const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;
/// Most characters of a client's value echoed back in an error message:
/// enough to recognise it, never enough to make the error itself large.
pub const MAX_ECHO_CHARS: usize = 64;

/// A bounded, quoted rendering of a client-supplied value for an error
/// message: long values are cut and say how long they were.
pub fn preview(value: &str) -> String {
    if value.chars().count() <= MAX_ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_ECHO_CHARS).collect();
    format!("{head:?}... ({} bytes)", value.len())
}

/// Refuses a string field longer than `max` bytes, naming both.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), BrokerError> {
    if value.len() > max {
        return Err(BrokerError::InvalidArgument(format!(
            "{field} is {} bytes; the limit is {max} (value starts {})",
            value.len(),
            preview(value)
        )));
    }
    Ok(())
}

/// Refuses a repeated field with more than `max` entries.
pub fn check_count(field: &str, count: usize, max: usize) -> Result<(), BrokerError> {
    if count > max {
        return Err(BrokerError::InvalidArgument(format!("{field} has {count} entries; the limit is {max}")));
    }
    Ok(())
}

/// Refuses a number above `max`.
pub fn check_at_most(field: &str, value: u64, max: u64) -> Result<(), BrokerError> {
    if value > max {
        return Err(BrokerError::InvalidArgument(format!("{field} is {value}; the limit is {max}")));
    }
    Ok(())
}

/// The count and total size limits of a job's headers.
pub fn check_headers(headers: &HashMap<String, String>) -> Result<(), BrokerError> {
    check_count("headers", headers.len(), MAX_HEADERS)?;
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(BrokerError::InvalidArgument(format!(
            "headers total {bytes} bytes (keys and values of {} entries); the limit is {MAX_HEADER_BYTES}",
            headers.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_bounded_and_say_how_long_the_value_was() {
        assert_eq!(preview("abc"), "\"abc\"");
        let long = "x".repeat(1 << 20);
        let p = preview(&long);
        assert!(p.len() < 100, "{p}");
        assert!(p.contains("1048576 bytes"), "{p}");
        // Cuts on characters, never inside one.
        let wide = "é".repeat(100);
        assert!(preview(&wide).contains("200 bytes"));
    }

    #[test]
    fn messages_name_field_limit_and_value() {
        let e = check_len("worker_id", &"w".repeat(300), MAX_WORKER_ID_BYTES).unwrap_err().to_string();
        assert!(e.contains("worker_id is 300 bytes; the limit is 256"), "{e}");
        let e = check_count("queues", 101, MAX_WORKER_QUEUES).unwrap_err().to_string();
        assert_eq!(e, "queues has 101 entries; the limit is 100");
        let e = check_at_most("max_in_flight", 10_001, u64::from(MAX_IN_FLIGHT)).unwrap_err().to_string();
        assert_eq!(e, "max_in_flight is 10001; the limit is 10000");
    }

    #[test]
    fn headers_are_limited_by_count_and_by_size() {
        let many: HashMap<String, String> = (0..=MAX_HEADERS).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_headers(&many).unwrap_err().to_string().contains("headers has 129 entries"));
        let big: HashMap<String, String> = [("k".to_string(), "v".repeat(MAX_HEADER_BYTES))].into();
        assert!(check_headers(&big).unwrap_err().to_string().contains("headers total 65537 bytes"));
        let fine: HashMap<String, String> = [("k".to_string(), "v".repeat(MAX_HEADER_BYTES - 1))].into();
        assert!(check_headers(&fine).is_ok());
    }
}
