//! A job too big for one gRPC message, refused with the queue's own limit.
//!
//! tonic refuses a message over [`MAX_MESSAGE`] before any handler sees it,
//! with "decoded message length too large", which says nothing of the
//! limit that matters: the queue's `max_payload_bytes`. This layer reads
//! the first frame of a unary `Enqueue` call's body (it holds the gRPC length
//! prefix and, since protobuf writers put fields in number order, the
//! `queue` field, number 1, right after it); when the length is over the
//! limit it answers at once, naming the queue and its payload limit.
//! Nothing else is read: the rest of the oversized body is never buffered.

use crate::broker::Broker;
use crate::conn_limits::MAX_MESSAGE;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;

/// The call whose message is one job. Not `EnqueueStream`: a streaming
/// client may wait for the response headers before it sends its first job,
/// so waiting here for that job would hang both; nor `EnqueueBatch`, whose
/// first field is a job list, not a queue.
const ENQUEUE_PATH: &str = "/fairway.v1.JobService/Enqueue";

/// Wraps the routes in an [`Oversize`].
#[derive(Clone)]
pub struct OversizeLayer {
    /// Where the queues' payload limits are read.
    pub broker: Broker,
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner, broker: self.broker.clone() }
    }
}

#[derive(Clone)]
pub struct Oversize<S> {
    inner: S,
    broker: Broker,
}

/// The gRPC message length in a body's first bytes, and the queue named
/// by the `EnqueueRequest` that follows it, if those bytes hold it.
pub fn peek(first: &[u8]) -> Option<(usize, Option<String>)> {
    let prefix = first.get(..5)?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let msg = &first[5..];
    // Field 1, length-delimited: tag byte 0x0a, then a varint length.
    let queue = (msg.first() == Some(&0x0a)).then(|| {
        let (n, used) = varint(&msg[1..])?;
        let start = 1 + used;
        let bytes = msg.get(start..start.checked_add(usize::try_from(n).ok()?)?)?;
        std::str::from_utf8(bytes).ok().map(str::to_string)
    });
    Some((len, queue.flatten()))
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The refusal for a message of `len` bytes to `queue` (with its payload
/// limit, when the queue exists).
pub fn refusal(len: usize, queue: Option<&str>, limit: Option<u32>) -> tonic::Status {
    let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
    let whose = match (queue, limit) {
        (Some(q), Some(l)) => format!(
            "queue {q:?} accepts payloads of at most {l} bytes ({:.1} MiB, QueueConfig.max_payload_bytes; at most \
             {} MiB can be set)",
            mib(l as usize),
            crate::limits::MAX_PAYLOAD_LIMIT / (1024 * 1024)
        ),
        (Some(q), None) => format!("queue {q:?} does not exist"),
        _ => "a queue accepts payloads of at most its QueueConfig.max_payload_bytes (1 MiB unless set)".into(),
    };
    tonic::Status::out_of_range(format!(
        "this job is {len} bytes ({:.1} MiB), over the {} MiB ({MAX_MESSAGE} bytes) a gRPC message may carry; \
         {whose}. Store large data elsewhere and enqueue a reference to it",
        mib(len),
        MAX_MESSAGE / (1024 * 1024)
    ))
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Oversize<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path() != ENQUEUE_PATH {
            return Box::pin(inner.call(req));
        }
        let broker = self.broker.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let first = match body.frame().await {
                Some(Ok(frame)) => frame,
                // An empty or broken body: tonic answers it as it always has.
                Some(Err(e)) => {
                    let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter([Err(e)])));
                    return inner.call(http::Request::from_parts(parts, body)).await;
                }
                None => return inner.call(http::Request::from_parts(parts, Body::empty())).await,
            };
            if let Some((len, queue)) = first.data_ref().and_then(|d| peek(d)) {
                if len > MAX_MESSAGE {
                    let limit =
                        queue.as_deref().and_then(|q| broker.queue_info(q).ok()).map(|i| i.config.max_payload_bytes);
                    tracing::info!(queue = ?queue, bytes = len, "enqueue refused: over the gRPC message limit");
                    return Ok(refusal(len, queue.as_deref(), limit).into_http());
                }
            }
            let rest = http_body_util::BodyStream::new(body);
            let stream = futures::StreamExt::chain(futures::stream::iter([Ok::<_, tonic::Status>(first)]), rest);
            let body = Body::new(http_body_util::StreamBody::new(stream));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_queue_is_read_from_the_first_bytes() {
        let req =
            crate::pb::EnqueueRequest { queue: "reports".into(), payload: vec![7; 300].into(), ..Default::default() };
        let msg = req.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(80_000_000u32).to_be_bytes());
        framed.extend_from_slice(&msg[..40]);
        assert_eq!(peek(&framed), Some((80_000_000, Some("reports".into()))));
        assert_eq!(peek(&framed[..3]), None, "not even the prefix");
        assert_eq!(peek(&framed[..8]).map(|(_, q)| q), Some(None), "the name cut off");
    }

    #[test]
    fn the_refusal_names_the_queue_and_its_limit() {
        let s = refusal(83_886_080, Some("reports"), Some(1_048_576));
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        for want in [
            "this job is 83886080 bytes (80.0 MiB)",
            "over the 64 MiB",
            "queue \"reports\" accepts payloads of at most 1048576 bytes (1.0 MiB",
        ] {
            assert!(s.message().contains(want), "{want:?} missing: {}", s.message());
        }
        assert!(refusal(1, Some("nope"), None).message().contains("queue \"nope\" does not exist"));
    }
}
