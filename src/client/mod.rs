//! `fairway::client`: a Rust client for the broker, used by the CLI and the
//! bench, and usable by Rust producers and workers.
//!
//! [`ClientConfig`] says how to reach a broker (address, TLS, mTLS, bearer
//! token); [`Client::connect`] opens one HTTP/2 connection that every
//! service client made from it shares, with the token attached to each
//! call. [`Client::work`] opens a Work stream as a [`WorkStream`]:
//! deliveries in, acks, nacks and extends out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fairway::client::{Client, ClientConfig};
//! use fairway::pb;
//! let client = Client::connect(&ClientConfig::new("http://127.0.0.1:50051")).await?;
//! client.create_queue("emails").await?;
//! client.jobs().enqueue(pb::EnqueueRequest { queue: "emails".into(), payload: b"hi".to_vec().into(), ..Default::default() }).await?;
//! let mut work = client.work(pb::Subscribe { queues: vec!["emails".into()], ..Default::default() }).await?;
//! while let Some(delivery) = work.next_delivery().await? {
//!     work.settler().ack(&delivery).await?;
//! }
//! # Ok(()) }
//! ```

mod work;

pub use work::{Settler, WorkEvent, WorkStream};

use crate::pb;
use crate::pb::{
    admin_service_client::AdminServiceClient, job_service_client::JobServiceClient,
    worker_service_client::WorkerServiceClient,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// The broker address clients use when none is given.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// A connection to the broker that carries the token on every call.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Why a client could not be set up or reach the broker. Calls made on a
/// connected client fail with a [`tonic::Status`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {flag} {path}: {source}")]
    ReadFile { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot reach the broker at {addr}: {why} ({hint})")]
    Unreachable { addr: String, why: String, hint: &'static str },
    #[error(transparent)]
    Status(#[from] Status),
}

/// How to reach a broker. Plain data: the CLI fills it from its flags, a
/// program from its own settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// `http://host:port`, or `https://host:port` for a broker with TLS.
    pub addr: String,
    /// PEM CA to verify the broker's certificate with; unset with an
    /// `https://` address: the system's CAs.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for a broker that requires mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Name to check the broker's certificate against, when it is not the
    /// host in `addr` (e.g. connecting by IP to a certificate for a name).
    pub tls_domain: Option<String>,
    /// Bearer token, for a broker with `--auth-file`.
    pub token: Option<String>,
    /// How long to keep retrying (every 50 ms) a connection that fails,
    /// e.g. a program started together with the broker; unset: one
    /// attempt, so a command line tool fails fast.
    pub retry_connect_for: Option<Duration>,
}

impl ClientConfig {
    /// A plaintext broker with no token.
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig { addr: addr.into(), ..ClientConfig::default() }
    }

    fn wants_tls(&self) -> bool {
        self.addr.starts_with("https://") || self.tls_ca.is_some() || self.client_identity.is_some()
    }

    fn tls(&self) -> Result<ClientTlsConfig, ClientError> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client_identity {
            tls = tls.identity(Identity::from_pem(read("--client-cert", cert)?, read("--client-key", key)?));
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }

    fn bearer(&self) -> Result<Bearer, ClientError> {
        let Some(token) = &self.token else { return Ok(Bearer(None)) };
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::Config("the token holds characters a header cannot carry".into()))?;
        // Keeps it out of Debug output.
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let addr = &self.addr;
        let bad = |e: tonic::transport::Error| ClientError::Config(format!("bad broker address {addr}: {}", chain(&e)));
        let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(bad)?.connect_timeout(Duration::from_secs(5));
        if self.wants_tls() {
            if !addr.starts_with("https://") {
                return Err(ClientError::Config(format!(
                    "TLS settings were given but the address is {addr}: use https://"
                )));
            }
            endpoint = endpoint.tls_config(self.tls()?).map_err(bad)?;
        }
        Ok(endpoint)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile { flag, path: path.to_path_buf(), source })
}

/// An error with its causes: TLS failures say why only in the innermost.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A connected client. Cloning is cheap and shares the connection; the
/// service clients it hands out share it too (HTTP/2 multiplexes calls).
#[derive(Clone)]
pub struct Client {
    /// The channel with the token interceptor: every service client wraps it.
    conn: Conn,
}

impl Client {
    /// Connects; retries failed attempts for `retry_connect_for`.
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let endpoint = config.endpoint()?;
        let bearer = config.bearer()?;
        let deadline = Instant::now() + config.retry_connect_for.unwrap_or_default();
        loop {
            match endpoint.connect().await {
                Ok(channel) => return Ok(Client { conn: InterceptedService::new(channel, bearer) }),
                Err(e) => {
                    let why = chain(&e);
                    // A certificate problem won't fix itself: say so at once.
                    if why.contains("certificate") || Instant::now() >= deadline {
                        let hint = if why.contains("certificate") {
                            "check --tls-ca, --tls-domain and the broker's certificate"
                        } else {
                            "is `fairway serve` running?"
                        };
                        return Err(ClientError::Unreachable { addr: config.addr.clone(), why, hint });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The connection itself, for service clients this module has no
    /// shortcut for.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// `fairway.v1.JobService`: enqueue, get, cancel.
    pub fn jobs(&self) -> JobServiceClient<Conn> {
        JobServiceClient::new(self.conn.clone())
    }

    /// `fairway.v1.WorkerService`: lease, ack, nack, extend (unary); see
    /// [`Client::work`] for the stream.
    pub fn workers(&self) -> WorkerServiceClient<Conn> {
        WorkerServiceClient::new(self.conn.clone())
    }

    /// `fairway.v1.AdminService`: queues, stats, dead letters, tenants.
    pub fn admin(&self) -> AdminServiceClient<Conn> {
        AdminServiceClient::new(self.conn.clone())
    }

    /// gRPC health (`grpc.health.v1.Health`).
    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Conn> {
        tonic_health::pb::health_client::HealthClient::new(self.conn.clone())
    }

    /// Creates a queue with the broker's defaults; an existing queue of
    /// that name is fine (`ALREADY_EXISTS` is not an error here).
    pub async fn create_queue(&self, name: &str) -> Result<(), Status> {
        let req = pb::CreateQueueRequest { name: name.into(), config: None };
        match self.admin().create_queue(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Opens a Work stream and sends `subscribe` first.
    pub async fn work(&self, subscribe: pb::Subscribe) -> Result<WorkStream, Status> {
        WorkStream::open(self.workers(), subscribe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_out_as_a_bearer_header_and_stays_out_of_debug_output() {
        let cfg = ClientConfig { token: Some("abc".into()), ..ClientConfig::new(DEFAULT_ADDR) };
        let mut b = cfg.bearer().unwrap();
        let req = b.call(Request::new(())).unwrap();
        let v = req.metadata().get("authorization").unwrap();
        assert_eq!(v, "Bearer abc");
        assert!(!format!("{v:?}").contains("abc"));
        let mut none = ClientConfig::new(DEFAULT_ADDR).bearer().unwrap();
        assert!(none.call(Request::new(())).unwrap().metadata().get("authorization").is_none());
    }

    #[test]
    fn a_token_a_header_cannot_carry_is_refused() {
        let cfg = ClientConfig { token: Some("bad\ntoken".into()), ..ClientConfig::new(DEFAULT_ADDR) };
        assert!(matches!(cfg.bearer(), Err(ClientError::Config(_))));
    }

    #[tokio::test]
    async fn tls_settings_need_an_https_address() {
        let cfg = ClientConfig { tls_ca: Some("ca.pem".into()), ..ClientConfig::new("http://127.0.0.1:1") };
        let e = Client::connect(&cfg).await.err().unwrap().to_string();
        assert!(e.contains("use https://"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_reported_with_its_address_after_the_timeout() {
        // A port nothing listens on: bind, note it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let cfg = ClientConfig {
            retry_connect_for: Some(Duration::from_millis(200)),
            ..ClientConfig::new(format!("http://{addr}"))
        };
        let started = Instant::now();
        let e = Client::connect(&cfg).await.err().unwrap().to_string();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(e.contains(&addr.to_string()) && e.contains("fairway serve"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_ca_file_is_named() {
        let cfg =
            ClientConfig { tls_ca: Some("/nonexistent/ca.pem".into()), ..ClientConfig::new("https://127.0.0.1:1") };
        let e = Client::connect(&cfg).await.err().unwrap().to_string();
        assert!(e.contains("--tls-ca") && e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
