//! Any node accepts any call: a `fairway.v1` call that reaches a node
//! which is not the cluster's home (see [`super::colocation`]) is forwarded
//! as it is (its headers, bearer token and deadline, its body, and streams
//! in both directions) to the home's client address, and the home's answer
//! comes back the same way. Python and Node workers, grpcurl and the CLI
//! need no change, and tokens and tenant scopes are checked once, by the
//! node that serves the call.
//!
//! A forwarded call carries `fairway-forwarded-by: <node>` and is never
//! forwarded again: a home that has just lost its leadership refuses it
//! (`UNAVAILABLE`, naming the new leader) rather than bounce it around.
//! Health and reflection are always answered by the node itself. While no
//! home is known (an election), the node serves the call itself, which its
//! broker refuses with `UNAVAILABLE` until a leader is known.

use super::colocation::{Home, Leaders};
use super::network::Connections;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tower::ServiceExt;

/// The header a forwarded call carries: the node that forwarded it.
pub const FORWARDED_BY: &str = "fairway-forwarded-by";

/// Connections a node forwards over, taken in turn: the home limits open
/// calls per connection (`--max-streams-per-connection`), and one node may
/// forward the Work streams of many workers.
const FORWARD_CONNECTIONS: usize = 8;

/// Forwards to the home what this node does not serve (none on one node).
#[derive(Clone)]
pub struct ForwardLayer {
    route: Option<std::sync::Arc<Route>>,
}

/// What a node needs to forward: who leads, connections to the others,
/// its own name for the header.
struct Route {
    leaders: Leaders,
    connections: Connections,
    me: http::HeaderValue,
    /// The next connection to use.
    turn: std::sync::atomic::AtomicUsize,
}

impl ForwardLayer {
    /// A single node: nothing is forwarded.
    pub fn off() -> ForwardLayer {
        ForwardLayer { route: None }
    }

    /// A cluster node named `me`.
    pub fn to_home(leaders: Leaders, connections: Connections, me: &str) -> ForwardLayer {
        let me = http::HeaderValue::from_str(me).unwrap_or_else(|_| http::HeaderValue::from_static("node"));
        ForwardLayer { route: Some(std::sync::Arc::new(Route { leaders, connections, me, turn: Default::default() })) }
    }
}

impl<S> tower::Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Forward<S> {
        Forward { inner, route: self.route.clone() }
    }
}

#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    route: Option<std::sync::Arc<Route>>,
}

/// Whether a call on `path` is one a node forwards: every `fairway.v1`
/// call but the cluster status, which each node answers for itself.
fn forwardable(path: &str) -> bool {
    path.starts_with("/fairway.v1.") && path != "/fairway.v1.AdminService/GetClusterStatus"
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for Forward<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let home = match &self.route {
            Some(route) if forwardable(req.uri().path()) && !req.headers().contains_key(FORWARDED_BY) => {
                match route.leaders.home() {
                    Home::At(home) => Some((route.clone(), home)),
                    Home::Here | Home::Unknown => None,
                }
            }
            _ => None,
        };
        let Some((route, home)) = home else {
            // The clone is the one driven later; `self.inner` was made ready.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { inner.call(req).await.map(|r| r.map(Body::new)) });
        };
        req.headers_mut().insert(FORWARDED_BY, route.me.clone());
        Box::pin(async move {
            let refused = |why: String| {
                tonic::Status::unavailable(format!(
                    "this node forwards calls to {home}, which leads the cluster's partitions, and {why}: retry (if \
                     that node is down, another is elected within seconds; a call cut off in flight may have been \
                     done, as with any answer lost on the way)"
                ))
                .into_http()
            };
            let n = route.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % FORWARD_CONNECTIONS;
            let channel = match route.connections.nth_channel(&home.grpc, n) {
                Ok(c) => c,
                Err(e) => return Ok(refused(format!("its address is unusable: {e}"))),
            };
            match channel.oneshot(req).await {
                Ok(answer) => Ok(answer),
                Err(e) => Ok(refused(format!("cannot be reached: {e}"))),
            }
        })
    }
}
