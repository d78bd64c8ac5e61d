//! Limits of the transport: what one connection, stream or request may hold
//! on to, so a slow, idle or hostile client can't pin memory or tasks.
//!
//! [`configure`] applies them to the tonic server builder, [`tune_socket`]
//! to every accepted TCP socket (tonic's own TCP settings only cover
//! listeners it binds itself).

use std::time::Duration;
use tokio::net::TcpStream;

/// Largest gRPC message accepted or sent: room for a maximal batch of small
/// jobs or one job at the largest configurable payload. Bigger ones are
/// refused by tonic with `OUT_OF_RANGE` before they are decoded.
pub const MAX_MESSAGE: usize = 64 << 20;
/// A response that carries jobs (a `ListJobs` page, a unary `Lease` batch)
/// stops taking more once it holds this many encoded bytes. The job that
/// crosses it is still included, and one job is at most
/// [`crate::limits::MAX_PAYLOAD_LIMIT`] plus its headers, so the response
/// stays under [`MAX_MESSAGE`] whatever the payloads: counts alone (1000 a
/// page, 10,000 a lease) would let big payloads build a response tonic can't
/// send, and a leased batch that can't be sent would burn an attempt of
/// every job in it.
pub const RESPONSE_SOFT_LIMIT: usize = 16 << 20;
/// Default for `--max-streams-per-connection`: HTTP/2 streams (calls) open
/// at once on one connection. Each holds a task and buffers; past this the
/// client's HTTP/2 layer queues new calls until one ends. tonic leaves it
/// unlimited unless set.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Default for `--request-timeout`: how long a call may take to produce its
/// response headers (for a unary call, the whole call; for a Work stream,
/// until its `subscribe` is read). Bounds a client trickling a request body.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The broker pings an idle HTTP/2 connection this often...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and closes it when a ping is not answered within this.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive: idle time before the first probe, so connections of
/// vanished hosts (no FIN, no RST) are found even when HTTP/2 is silent.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// TCP keepalive: time between probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes before the kernel drops the connection.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Largest HTTP/2 header list (all request metadata together): headers are
/// buffered whole before any handler runs.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest HTTP/2 frame the broker accepts (the protocol's minimum, which
/// is also the most a peer can make it buffer before flow control counts).
pub const MAX_FRAME_BYTES: u32 = 16 * 1024;

/// The transport limits an operator may tune.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConnLimits {
    /// Longest time a call may take to answer (a unary call in full; a Work
    /// stream until its subscribe is read). A Lease long-poll gets its
    /// largest `wait` on top. Client deadlines shorter than this apply too.
    #[arg(long, env = "FAIRWAY_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Most calls open at once on one HTTP/2 connection (Work streams
    /// included); further calls wait in the client until one ends.
    #[arg(long, env = "FAIRWAY_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// Sets every transport limit on a server builder.
pub fn configure(builder: tonic::transport::Server, limits: &ConnLimits) -> tonic::transport::Server {
    builder
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// Settings of one accepted connection: no Nagle (with delayed ACKs it adds
/// ~40 ms stalls), and TCP keepalive. Failures are logged, not fatal: the
/// connection still works without them.
pub fn tune_socket(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tune_socket(&server);
        let sock = socket2::SockRef::from(&server);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), TCP_KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), TCP_KEEPALIVE_RETRIES);
        assert!(server.nodelay().unwrap());
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: ConnLimits,
    }

    #[test]
    fn flag_defaults_are_the_documented_constants_and_flags_override_them() {
        use clap::Parser;
        let d = ConnLimits::default();
        assert_eq!(d.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(d.max_streams_per_connection, DEFAULT_MAX_STREAMS_PER_CONNECTION);
        assert_eq!(Flags::try_parse_from(["serve"]).unwrap().limits, d);
        let set = Flags::try_parse_from(["serve", "--request-timeout", "90s", "--max-streams-per-connection", "16"])
            .unwrap()
            .limits;
        assert_eq!(set, ConnLimits { request_timeout: Duration::from_secs(90), max_streams_per_connection: 16 });
    }
}
