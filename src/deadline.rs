//! A server-side deadline on every call, so a client that opens a call and
//! then trickles (or never finishes) its request can't hold a task and a
//! partly read message forever.
//!
//! The deadline covers the handler up to its response headers: all of a
//! unary call, and a stream's start (a Work stream until its `subscribe` is
//! read). Streams that are open and flowing are not cut; idle connections
//! are the keepalive's job. tonic's own `Server::timeout` takes one value
//! for every path, but a `Lease` long-poll legitimately waits up to
//! [`MAX_WAIT`] first, so that path gets the wait on top.

use crate::limits::MAX_WAIT;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The one path whose handler may wait on purpose.
const LONG_POLL_PATH: &str = "/fairway.v1.WorkerService/Lease";

/// Wraps the routes in a [`Deadline`].
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    /// Deadline of every call but the long-poll.
    pub timeout: Duration,
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, timeout: self.timeout }
    }
}

/// Answers `DEADLINE_EXCEEDED` for a call whose handler overruns.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    /// Deadline of every call but the long-poll.
    timeout: Duration,
}

impl<S> Deadline<S> {
    /// How long a call on `path` may take to answer.
    pub fn limit_for(&self, path: &str) -> Duration {
        if path == LONG_POLL_PATH {
            self.timeout.saturating_add(MAX_WAIT)
        } else {
            self.timeout
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let limit = self.limit_for(req.uri().path());
        // Kept for the refusal; a Uri clone shares its bytes.
        let uri = req.uri().clone();
        // The clone is the one driven later; `self.inner` was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match tokio::time::timeout(limit, inner.call(req)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let path = uri.path();
                    tracing::debug!(%path, ?limit, "call overran the server deadline");
                    let status = tonic::Status::deadline_exceeded(format!(
                        "{path} did not complete within the server's limit of {}s (--request-timeout): \
                         send the whole request promptly, or split the work",
                        limit.as_secs_f64()
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service};

    /// Answers "done" after its delay.
    #[derive(Clone)]
    struct Slow(Duration);

    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = BoxFuture<http::Response<String>, Infallible>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _req: http::Request<()>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new("done".to_string()))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(format!("http://x{path}")).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn overrunning_calls_get_deadline_exceeded() {
        let mut svc = DeadlineLayer { timeout: Duration::from_secs(1) }.layer(Slow(Duration::from_secs(5)));
        let res = svc.call(request("/fairway.v1.JobService/Enqueue")).await.unwrap();
        let status = tonic::Status::from_header_map(res.headers()).expect("grpc status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("--request-timeout"), "{}", status.message());
        assert!(res.into_body().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_long_poll_gets_its_wait_on_top_and_quick_calls_pass() {
        let layer = DeadlineLayer { timeout: Duration::from_secs(1) };
        let mut poll = layer.layer(Slow(MAX_WAIT));
        let res = poll.call(request(LONG_POLL_PATH)).await.unwrap();
        assert_eq!(res.into_body(), "done");
        let mut quick = layer.layer(Slow(Duration::from_millis(10)));
        let res = quick.call(request("/fairway.v1.JobService/GetJob")).await.unwrap();
        assert_eq!(res.into_body(), "done");
    }
}
