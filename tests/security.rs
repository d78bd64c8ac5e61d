//! Security: bearer tokens confine producers, workers and admins to their
//! role, queues and tenants; TLS and mutual TLS on both ports; the CLI
//! against a secured broker. Certificates are made here, at test time.

mod common;

use common::*;
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::worker_service_client::WorkerServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const ADMIN: &str = "admin-token-0123456789";
const PRODUCER_A: &str = "producer-a-token-0123456789";
const WORKER_A: &str = "worker-a-token-0123456789";
const WORKER_B: &str = "worker-b-token-0123456789";
/// An admin limited to queue "jobs" and tenant "a".
const ADMIN_A: &str = "admin-a-token-0123456789";

const AUTH_FILE: &str = r#"
[[tokens]]
name = "ops"
token = "admin-token-0123456789"
role = "admin"
queues = ["*"]
tenants = ["*"]

[[tokens]]
name = "producer-a"
token = "producer-a-token-0123456789"
role = "producer"
queues = ["jobs"]
tenants = ["a"]

[[tokens]]
name = "worker-a"
token = "worker-a-token-0123456789"
role = "worker"
queues = ["jobs"]
tenants = ["a"]

[[tokens]]
name = "worker-b"
token = "worker-b-token-0123456789"
role = "worker"
queues = ["jobs"]
tenants = ["b"]

[[tokens]]
name = "admin-a"
token = "admin-a-token-0123456789"
role = "admin"
queues = ["jobs"]
tenants = ["a"]
"#;

/// Every test finishes within this, or fails.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("test finished in time")
}

/// Sends `authorization: Bearer <token>` (or nothing) with every call.
#[derive(Clone)]
struct Token(Option<&'static str>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Token>;

fn jobs(ch: &Channel, t: Option<&'static str>) -> JobServiceClient<Authed> {
    JobServiceClient::with_interceptor(ch.clone(), Token(t))
}

fn workers(ch: &Channel, t: Option<&'static str>) -> WorkerServiceClient<Authed> {
    WorkerServiceClient::with_interceptor(ch.clone(), Token(t))
}

fn admin(ch: &Channel, t: Option<&'static str>) -> AdminServiceClient<Authed> {
    AdminServiceClient::with_interceptor(ch.clone(), Token(t))
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.expect_err("the call is refused").code()
}

fn denied_saying<T: std::fmt::Debug>(r: Result<T, Status>, words: &[&str]) {
    let s = r.expect_err("the call is refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    for w in words {
        assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

async fn secured() -> (TestServer, tempfile::TempDir) {
    let files = tempfile::tempdir().expect("temp dir");
    let auth = write(files.path(), "auth.toml", AUTH_FILE);
    let s = TestServer::start_with(|c| c.auth_file = Some(auth)).await;
    admin(&s.channel, Some(ADMIN))
        .create_queue(pb::CreateQueueRequest { name: "jobs".into(), config: None })
        .await
        .expect("admin creates a queue");
    (s, files)
}

fn lease_req(max: u32) -> pb::LeaseRequest {
    pb::LeaseRequest { queues: vec!["jobs".into()], max_jobs: max, worker_id: "w".into(), ..Default::default() }
}

fn tenants_of(ds: &[pb::Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.job.as_ref().expect("job").tenant.clone()).collect()
}

#[tokio::test]
async fn producers_enqueue_only_for_their_queues_and_tenants() {
    bounded(async {
        let (s, _files) = secured().await;
        admin(&s.channel, Some(ADMIN))
            .create_queue(pb::CreateQueueRequest { name: "other".into(), config: None })
            .await
            .expect("create");
        let mut p = jobs(&s.channel, Some(PRODUCER_A));
        p.enqueue(job("jobs", "a", "", "ok")).await.expect("own tenant");
        denied_saying(p.enqueue(job("jobs", "b", "", "x")).await, &["producer-a", "\"b\"", "tenants"]);
        denied_saying(p.enqueue(job("other", "a", "", "x")).await, &["queue \"other\"", "queues"]);
        // An empty tenant is "default", which the token does not cover.
        denied_saying(p.enqueue(job("jobs", "", "", "x")).await, &["\"default\""]);
        let batch = pb::EnqueueBatchRequest { jobs: vec![job("jobs", "a", "", "1"), job("jobs", "b", "", "2")] };
        denied_saying(p.enqueue_batch(batch).await, &["jobs[1]"]);
        let mut root = admin(&s.channel, Some(ADMIN));
        let stats = root.get_queue_stats(pb::GetQueueStatsRequest { queue: "jobs".into() }).await;
        assert_eq!(stats.expect("stats").into_inner().ready, 1, "only the first job was stored");
    })
    .await
}

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated() {
    bounded(async {
        let (s, _files) = secured().await;
        for t in [None, Some("not-a-token-0123456789")] {
            assert_eq!(code(jobs(&s.channel, t).enqueue(job("jobs", "a", "", "x")).await), Code::Unauthenticated);
            assert_eq!(code(workers(&s.channel, t).lease(lease_req(1)).await), Code::Unauthenticated);
            assert_eq!(code(admin(&s.channel, t).list_queues(pb::ListQueuesRequest {}).await), Code::Unauthenticated);
        }
        let e = jobs(&s.channel, None).enqueue(job("jobs", "a", "", "x")).await.expect_err("refused");
        assert!(e.message().contains("Bearer"), "says how to authenticate: {}", e.message());
        // Health stays open for probes.
        let h = HealthClient::new(s.channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
        assert_eq!(h.expect("health needs no token").into_inner().status, 1);
    })
    .await
}

#[tokio::test]
async fn enqueue_stream_refuses_foreign_jobs_in_place() {
    bounded(async {
        let (s, _files) = secured().await;
        let reqs = vec![job("jobs", "a", "", "1"), job("jobs", "b", "", "2"), job("jobs", "a", "", "3")];
        let out = jobs(&s.channel, Some(PRODUCER_A))
            .enqueue_stream(tokio_stream::iter(reqs))
            .await
            .expect("stream opens")
            .into_inner();
        let answers: Vec<pb::EnqueueResponse> = tokio_stream::StreamExt::collect::<Vec<_>>(out)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("answers");
        let codes: Vec<&str> = answers.iter().map(|a| a.code.as_str()).collect();
        assert_eq!(codes, ["", "PERMISSION_DENIED", ""]);
        assert!(answers[1].error.contains("\"b\""), "{}", answers[1].error);
    })
    .await
}

#[tokio::test]
async fn workers_receive_and_settle_only_their_tenants_jobs() {
    bounded(async {
        let (s, _files) = secured().await;
        let mut ops = jobs(&s.channel, Some(ADMIN));
        let mut b_ids = Vec::new();
        for i in 0..5 {
            b_ids.push(
                ops.enqueue(job("jobs", "b", "", &format!("b{i}"))).await.expect("enqueue b").into_inner().job_id,
            );
        }
        for i in 0..3 {
            ops.enqueue(job("jobs", "a", "", &format!("a{i}"))).await.expect("enqueue a");
        }

        // Unary lease: A's three jobs, none of B's five that were ready first.
        let mut wa = workers(&s.channel, Some(WORKER_A));
        let got = wa.lease(lease_req(10)).await.expect("lease").into_inner().deliveries;
        assert_eq!(tenants_of(&got), ["a", "a", "a"]);
        assert!(wa.lease(lease_req(10)).await.expect("lease").into_inner().deliveries.is_empty());
        let mut ops_admin = admin(&s.channel, Some(ADMIN));
        let stats = ops_admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "jobs".into() }).await;
        let stats = stats.expect("stats").into_inner();
        assert_eq!((stats.ready, stats.leased), (5, 3), "B's jobs stay ready");

        // A Work stream with A's token: new A jobs arrive, B's never do.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let subscribe = pb::Subscribe { queues: vec!["jobs".into()], max_in_flight: 20, ..Default::default() };
        tx.send(pb::WorkRequest { request: Some(pb::work_request::Request::Subscribe(subscribe)) }).expect("send");
        let mut stream = workers(&s.channel, Some(WORKER_A))
            .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("subscribe")
            .into_inner();
        for i in 0..2 {
            ops.enqueue(job("jobs", "a", "", &format!("late{i}"))).await.expect("enqueue a");
        }
        for _ in 0..2 {
            let msg = stream.message().await.expect("stream").expect("a message");
            let Some(pb::work_response::Response::Delivery(d)) = msg.response else { panic!("a delivery: {msg:?}") };
            assert_eq!(d.job.expect("job").tenant, "a");
        }
        let stats = ops_admin.get_queue_stats(pb::GetQueueStatsRequest { queue: "jobs".into() }).await;
        assert_eq!(stats.expect("stats").into_inner().ready, 5, "the A stream took none of B's jobs");

        // B's worker gets B's jobs; A's token cannot settle them, unary or
        // on its stream, even holding the lease id.
        let b_got = workers(&s.channel, Some(WORKER_B)).lease(lease_req(10)).await.expect("lease b").into_inner();
        let b_got = b_got.deliveries;
        assert_eq!(tenants_of(&b_got), ["b"; 5]);
        let d = &b_got[0];
        let id = d.job.as_ref().expect("job").id.clone();
        let ack = pb::AckRequest { queue: "jobs".into(), job_id: id.clone(), lease_id: d.lease_id.clone() };
        denied_saying(wa.ack(ack.clone()).await, &["worker-a", "\"b\""]);
        let nack = pb::NackRequest {
            queue: "jobs".into(),
            job_id: id.clone(),
            lease_id: d.lease_id.clone(),
            ..Default::default()
        };
        denied_saying(wa.nack(nack).await, &["\"b\""]);
        let extend = pb::ExtendLeaseRequest {
            queue: "jobs".into(),
            job_id: id.clone(),
            lease_id: d.lease_id.clone(),
            lease_duration: None,
        };
        denied_saying(wa.extend_lease(extend).await, &["\"b\""]);
        tx.send(pb::WorkRequest { request: Some(pb::work_request::Request::Ack(ack.clone())) }).expect("send ack");
        let msg = stream.message().await.expect("stream").expect("an outcome");
        let Some(pb::work_response::Response::Outcome(o)) = msg.response else { panic!("an outcome: {msg:?}") };
        assert!(!o.ok && o.code == "PERMISSION_DENIED", "{o:?}");
        workers(&s.channel, Some(WORKER_B)).ack(ack).await.expect("B acks its own job");
        assert!(!b_ids.is_empty());

        // Queues outside the token are refused outright.
        let other = pb::LeaseRequest { queues: vec!["elsewhere".into()], ..lease_req(1) };
        denied_saying(wa.lease(other).await, &["queue \"elsewhere\""]);
        // A producer token cannot lease at all.
        denied_saying(workers(&s.channel, Some(PRODUCER_A)).lease(lease_req(1)).await, &["WorkerService"]);
        // Nor read or cancel another tenant's job by id.
        let mut pa = jobs(&s.channel, Some(PRODUCER_A));
        let get = pb::GetJobRequest { queue: "jobs".into(), job_id: b_ids[1].clone() };
        denied_saying(pa.get_job(get).await, &["\"b\""]);
        let cancel = pb::CancelJobRequest { queue: "jobs".into(), job_id: b_ids[1].clone() };
        denied_saying(pa.cancel_job(cancel).await, &["\"b\""]);
    })
    .await
}

#[tokio::test]
async fn admin_rpcs_need_an_admin_token() {
    bounded(async {
        let (s, _files) = secured().await;
        for t in [PRODUCER_A, WORKER_A] {
            let mut a = admin(&s.channel, Some(t));
            denied_saying(a.create_queue(pb::CreateQueueRequest { name: "x".into(), config: None }).await, &["admin"]);
            denied_saying(a.list_queues(pb::ListQueuesRequest {}).await, &["AdminService"]);
            denied_saying(a.get_queue_stats(pb::GetQueueStatsRequest { queue: "jobs".into() }).await, &["admin"]);
            denied_saying(
                a.purge_queue(pb::PurgeQueueRequest { queue: "jobs".into(), ..Default::default() }).await,
                &["admin"],
            );
            let redrive = pb::RedriveDeadLettersRequest { queue: "jobs".into(), ..Default::default() };
            denied_saying(a.redrive_dead_letters(redrive).await, &["admin"]);
            let policy = pb::SetTenantPolicyRequest { queue: "jobs".into(), tenant: "a".into(), ..Default::default() };
            denied_saying(a.set_tenant_policy(policy).await, &["admin"]);
            let lift = pb::LiftQuarantineRequest { queue: "jobs".into(), worker_version: "v2".into() };
            denied_saying(a.lift_quarantine(lift).await, &["admin"]);
            denied_saying(
                a.delete_queue(pb::DeleteQueueRequest { queue: "jobs".into(), force: true }).await,
                &["admin"],
            );
        }
        let mut root = admin(&s.channel, Some(ADMIN));
        root.create_queue(pb::CreateQueueRequest { name: "x".into(), config: None }).await.expect("admin creates");
        root.purge_queue(pb::PurgeQueueRequest { queue: "jobs".into(), ..Default::default() })
            .await
            .expect("admin purges");
        let names: Vec<String> = root
            .list_queues(pb::ListQueuesRequest {})
            .await
            .expect("list")
            .into_inner()
            .queues
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // An admin limited to queue "jobs" and tenant "a" manages just that.
        let mut scoped = admin(&s.channel, Some(ADMIN_A));
        let names: Vec<String> = scoped
            .list_queues(pb::ListQueuesRequest {})
            .await
            .expect("list")
            .into_inner()
            .queues
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names, ["jobs"]);
        let own =
            pb::SetTenantPolicyRequest { queue: "jobs".into(), tenant: "a".into(), weight: 2, ..Default::default() };
        scoped.set_tenant_policy(own).await.expect("its own tenant");
        let foreign = pb::SetTenantPolicyRequest { queue: "jobs".into(), tenant: "b".into(), ..Default::default() };
        denied_saying(scoped.set_tenant_policy(foreign).await, &["\"b\""]);
        denied_saying(
            scoped.purge_queue(pb::PurgeQueueRequest { queue: "jobs".into(), ..Default::default() }).await,
            &["every tenant"],
        );
        let lift = pb::LiftQuarantineRequest { queue: "jobs".into(), worker_version: "v2".into() };
        denied_saying(scoped.lift_quarantine(lift).await, &["every tenant"]);
        denied_saying(scoped.get_queue(pb::GetQueueRequest { queue: "x".into() }).await, &["queue \"x\""]);
    })
    .await
}

/// One HTTP/1.1 request over `io`: (status, head, body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    io.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

async fn plain_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(tcp, path, authorization).await.expect("http exchange")
}

#[tokio::test]
async fn the_metrics_port_needs_an_admin_token() {
    bounded(async {
        let (s, _files) = secured().await;
        let (status, head, _) = plain_get(s.http_addr, "/metrics", None).await;
        assert_eq!(status, 401);
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "{head}");
        assert_eq!(plain_get(s.http_addr, "/", Some("Bearer nope-nope-0123456789")).await.0, 401);
        assert_eq!(plain_get(s.http_addr, "/metrics", Some(&format!("Bearer {PRODUCER_A}"))).await.0, 403);
        assert_eq!(plain_get(s.http_addr, "/metrics", Some(&format!("Bearer {ADMIN_A}"))).await.0, 403);
        let (status, _, body) = plain_get(s.http_addr, "/metrics", Some(&format!("Bearer {ADMIN}"))).await;
        assert_eq!(status, 200);
        assert!(body.contains("fairway_"), "{body}");
        // A browser logs in with Basic: any user name, the token as password.
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("operator:{ADMIN}"));
        assert_eq!(plain_get(s.http_addr, "/", Some(&format!("Basic {basic}"))).await.0, 200);
        // Every console page and button: no token 401, a narrow admin 403.
        let narrow = format!("Bearer {ADMIN_A}");
        for (method, path) in [
            ("GET", "/workers"),
            ("GET", "/queues/jobs/jobs/0000000000000001"),
            ("GET", "/queues/jobs/dead/delete"),
            ("POST", "/queues/jobs/pause"),
            ("POST", "/queues/jobs/resume"),
            ("POST", "/queues/jobs/redrive"),
            ("POST", "/queues/jobs/dead/delete"),
            ("POST", "/queues/jobs/jobs/0000000000000001/retry"),
            ("POST", "/queues/jobs/jobs/0000000000000001/delete"),
        ] {
            assert_eq!(http_with(s.http_addr, method, path, &[]).await.0, 401, "{method} {path}");
            assert_eq!(
                http_with(s.http_addr, method, path, &[("authorization", &narrow)]).await.0,
                403,
                "{method} {path}"
            );
        }
    })
    .await
}

/// A CA, a server certificate for localhost and 127.0.0.1, a client
/// certificate it signed, and one from a CA the broker does not trust.
struct Pki {
    /// Holds the PEM files.
    dir: tempfile::TempDir,
    ca: String,
    client: (String, String),
    stranger: (String, String),
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-signed CA");
    (Issuer::new(params, key), cert.pem())
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (issuer, ca) = new_ca("fairway test CA");
        let (server_cert, server_key) = leaf(&issuer, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(&issuer, &["worker-1"], ExtendedKeyUsagePurpose::ClientAuth);
        let (other, _) = new_ca("some other CA");
        let stranger = leaf(&other, &["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
        write(dir.path(), "ca.pem", &ca);
        write(dir.path(), "server.pem", &server_cert);
        write(dir.path(), "server.key", &server_key);
        write(dir.path(), "client.pem", &client.0);
        write(dir.path(), "client.key", &client.1);
        Pki { dir, ca, client, stranger }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, mutual: bool) -> impl FnOnce(&mut fairway::config::ServeConfig) + '_ {
        move |c| {
            c.tls_cert = Some(self.path("server.pem"));
            c.tls_key = Some(self.path("server.key"));
            c.tls_client_ca = mutual.then(|| self.path("ca.pem"));
        }
    }

    fn channel(&self, addr: SocketAddr, identity: Option<&(String, String)>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls config")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    /// HTTPS GET on the metrics port.
    async fn https_get(
        &self,
        addr: SocketAddr,
        path: &str,
        identity: Option<&(String, String)>,
    ) -> std::io::Result<u16> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca.as_bytes()).expect("ca der")).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        Ok(exchange(tls, path, None).await?.0)
    }
}

async fn health(ch: &Channel) -> Result<i32, Status> {
    Ok(HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await?.into_inner().status)
}

/// Health over `ch` once the broker has finished starting (NOT_SERVING
/// until then): SERVING is 1.
async fn health_once_started(ch: &Channel) -> Result<i32, Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health(ch).await?;
        if status == 1 || tokio::time::Instant::now() > deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tls_serves_both_ports_and_plaintext_is_refused() {
    bounded(async {
        let pki = Pki::new();
        let s = TestServer::start_with(pki.server(false)).await;
        let ch = pki.channel(s.addr, None);
        assert_eq!(health_once_started(&ch).await.expect("TLS health"), 1);
        create_queue_on(&ch, "q").await;
        JobServiceClient::new(ch.clone()).enqueue(job("q", "a", "", "over tls")).await.expect("enqueue over TLS");

        let plain = Endpoint::from_shared(format!("http://{}", s.addr)).expect("endpoint").connect_lazy();
        assert!(health(&plain).await.is_err(), "a plaintext client is refused on the TLS port");

        assert_eq!(pki.https_get(s.http_addr, "/metrics", None).await.expect("https"), 200);
        let (status, _, _) = plain_get(s.http_addr, "/metrics", None).await;
        assert_ne!(status, 200, "plain HTTP gets no metrics from the TLS port");
    })
    .await
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_trusted_ca() {
    bounded(async {
        let pki = Pki::new();
        let s = TestServer::start_with(pki.server(true)).await;
        let ch = pki.channel(s.addr, Some(&pki.client));
        assert_eq!(health_once_started(&ch).await.expect("mTLS health"), 1);
        create_queue_on(&ch, "q").await;

        assert!(health(&pki.channel(s.addr, None)).await.is_err(), "no client certificate: refused");
        assert!(health(&pki.channel(s.addr, Some(&pki.stranger))).await.is_err(), "untrusted CA: refused");

        assert_eq!(pki.https_get(s.http_addr, "/metrics", Some(&pki.client)).await.expect("https"), 200);
        let without = pki.https_get(s.http_addr, "/metrics", None).await;
        assert!(without.is_err() || without.is_ok_and(|st| st != 200), "the metrics port wants the certificate too");
    })
    .await
}

async fn create_queue_on(ch: &Channel, name: &str) {
    AdminServiceClient::new(ch.clone())
        .create_queue(pb::CreateQueueRequest { name: name.into(), config: None })
        .await
        .expect("create queue");
}

/// The CLI against a broker with mTLS and tokens.
async fn cli(s: &TestServer, pki: &Pki, token: Option<&str>, identity: bool, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fairway"));
    for var in [
        "FAIRWAY_ADDR",
        "FAIRWAY_TLS_CA",
        "FAIRWAY_CLIENT_CERT",
        "FAIRWAY_CLIENT_KEY",
        "FAIRWAY_TOKEN",
        "FAIRWAY_TLS_DOMAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--addr").arg(format!("https://127.0.0.1:{}", s.addr.port())).arg("--tls-ca").arg(pki.path("ca.pem"));
    if identity {
        cmd.arg("--client-cert").arg(pki.path("client.pem")).arg("--client-key").arg(pki.path("client.key"));
    }
    if let Some(t) = token {
        cmd.env("FAIRWAY_TOKEN", t);
    }
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run fairway")
}

#[tokio::test]
async fn the_cli_works_against_a_secured_broker() {
    bounded(async {
        let pki = Pki::new();
        let files = tempfile::tempdir().expect("temp dir");
        let auth = write(files.path(), "auth.toml", AUTH_FILE);
        let tls = pki.server(true);
        let s = TestServer::start_with(|c| {
            tls(c);
            c.auth_file = Some(auth);
        })
        .await;
        let ok = cli(&s, &pki, Some(ADMIN), true, &["queue", "create", "jobs"]).await;
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let ok = cli(&s, &pki, Some(PRODUCER_A), true, &["enqueue", "jobs", "--tenant", "a", "--payload", "hi"]).await;
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

        let no_token = cli(&s, &pki, None, true, &["queue", "list"]).await;
        assert!(!no_token.status.success());
        assert!(String::from_utf8_lossy(&no_token.stderr).contains("Unauthenticated"), "{no_token:?}");
        let wrong_tenant =
            cli(&s, &pki, Some(PRODUCER_A), true, &["enqueue", "jobs", "--tenant", "b", "--payload", "x"]).await;
        assert!(String::from_utf8_lossy(&wrong_tenant.stderr).contains("PermissionDenied"), "{wrong_tenant:?}");
        let no_cert = cli(&s, &pki, Some(ADMIN), false, &["queue", "list"]).await;
        assert!(!no_cert.status.success(), "mTLS refuses the CLI without --client-cert");
        // Health needs no token, only the TLS settings.
        let h = cli(&s, &pki, None, true, &["health"]).await;
        assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    })
    .await
}
