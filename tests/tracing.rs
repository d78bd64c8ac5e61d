//! OpenTelemetry tracing against a real OTLP receiver: the broker binary
//! exports to a tonic `TraceService` started here, and the spans of enqueue,
//! lease and ack must form one trace with the producer's span.

mod common;

use common::*;
use fairway::pb;
use fairway::pb::job_service_client::JobServiceClient;
use fairway::pb::work_request::Request as Req;
use fairway::pb::work_response::Response as Resp;
use fairway::pb::worker_service_client::WorkerServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PRODUCER_SPAN: &str = "b7ad6b7169203331";
const WAIT: Duration = Duration::from_secs(30);

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// The trace and span id of a traceparent, as hex.
fn ids(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {tp:?}");
    (parts[1].to_string(), parts[2].to_string())
}

/// A minimal OTLP collector: records every export it receives.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver::default();
        let svc = TraceServiceServer::new(r.clone());
        tokio::spawn(
            tonic::transport::Server::builder().add_service(svc).serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (r, addr)
    }

    /// Every span received, each with its resource's service.name.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for req in self.got.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }

    /// Waits until spans named `names` have arrived in `trace`, and returns
    /// them in that order.
    async fn wait_for(&self, trace: &str, names: &[&str]) -> Vec<Span> {
        eventually(WAIT, || async {
            let spans = self.spans();
            names
                .iter()
                .map(|n| {
                    spans
                        .iter()
                        .find(|(_, s)| s.name == *n && hex::encode(&s.trace_id) == trace)
                        .map(|(_, s)| s.clone())
                })
                .collect()
        })
        .await
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    match s.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()? {
        Value::StringValue(v) => Some(v.clone()),
        Value::IntValue(v) => Some(v.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The broker binary, so its exporter is its own process's.
struct Broker {
    child: Option<Child>,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn spawn(otlp: Option<SocketAddr>, schedule_delay_ms: u64) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"])
            .arg(dir.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(addr) = otlp {
            cmd.args(["--otlp-endpoint", &format!("http://{addr}")]);
        }
        let mut child = cmd.spawn().expect("spawn fairway");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("read stdout");
            line
        })
        .await
        .unwrap();
        let addr = line.trim().strip_prefix("fairway listening on ").unwrap_or_else(|| panic!("first line {line:?}"));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let b = Broker { child: Some(child), channel, _dir: dir };
        let mut admin = pb::admin_service_client::AdminServiceClient::new(b.channel.clone());
        eventually(Duration::from_secs(10), || {
            let mut a = admin.clone();
            async move { a.create_queue(pb::CreateQueueRequest { name: "q".into(), config: None }).await.ok() }
        })
        .await;
        let _ = &mut admin;
        b
    }

    fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }

    fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
    }

    /// SIGTERM, then the exit status: a graceful stop.
    async fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()));
        exit.await.expect("broker exits after SIGTERM").unwrap().unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn with_traceparent<T>(msg: T, tp: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("traceparent", tp.parse().unwrap());
    req
}

/// Subscribes to "q", takes one delivery, acks it on the stream and waits
/// for the ack's outcome. Returns the delivered job.
async fn work_one(b: &Broker) -> pb::Job {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sub = pb::Subscribe { queues: vec!["q".into()], max_in_flight: 1, ..Default::default() };
    tx.send(pb::WorkRequest { request: Some(Req::Subscribe(sub)) }).await.unwrap();
    let mut stream = b.workers().work(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let Some(Resp::Delivery(d)) = stream.message().await.unwrap().unwrap().response else { panic!("no delivery") };
    let job = d.job.unwrap();
    let ack = pb::AckRequest { queue: "q".into(), job_id: job.id.clone(), lease_id: d.lease_id };
    tx.send(pb::WorkRequest { request: Some(Req::Ack(ack)) }).await.unwrap();
    let Some(Resp::Outcome(o)) = stream.message().await.unwrap().unwrap().response else { panic!("no outcome") };
    assert!(o.ok && o.kind == "ack", "{o:?}");
    job
}

#[tokio::test]
async fn enqueue_lease_and_ack_spans_join_the_producer_trace() {
    let (receiver, addr) = Receiver::start().await;
    let b = Broker::spawn(Some(addr), 50).await;
    let producer = traceparent(TRACE, PRODUCER_SPAN);
    let enq = b.jobs().enqueue(with_traceparent(job("q", "acme", "prod", "x"), &producer)).await.unwrap();
    let job_id = enq.into_inner().job_id;

    let job = work_one(&b).await;
    assert_eq!(job.id, job_id);
    let (trace, stored_parent) = ids(&job.traceparent);
    assert_eq!(trace, TRACE, "the delivery continues the producer's trace");
    assert_ne!(stored_parent, PRODUCER_SPAN, "the broker's enqueue span is the worker's parent");

    let [enqueue, lease, ack]: [Span; 3] =
        receiver.wait_for(TRACE, &["enqueue", "lease", "ack"]).await.try_into().unwrap();
    assert_eq!(hex::encode(&enqueue.parent_span_id), PRODUCER_SPAN);
    assert_eq!(hex::encode(&enqueue.span_id), stored_parent);
    assert_eq!(lease.parent_span_id, enqueue.span_id);
    assert_eq!(ack.parent_span_id, lease.span_id);
    for s in [&enqueue, &lease, &ack] {
        assert_eq!(attr(s, "fairway.queue").as_deref(), Some("q"), "{}", s.name);
        assert_eq!(attr(s, "fairway.tenant").as_deref(), Some("acme"), "{}", s.name);
        assert_eq!(attr(s, "fairway.environment").as_deref(), Some("prod"), "{}", s.name);
        assert_eq!(attr(s, "fairway.job_id"), Some(job_id.clone()), "{}", s.name);
        assert_ne!(s.status.as_ref().map(|st| st.code()), Some(StatusCode::Error), "{}", s.name);
    }
    assert_eq!(attr(&lease, "fairway.attempt").as_deref(), Some("1"));
    let services: Vec<String> = receiver.spans().into_iter().map(|(svc, _)| svc).collect();
    assert!(services.iter().all(|s| s == "fairway"), "service.name: {services:?}");
}

#[tokio::test]
async fn batch_items_keep_their_own_traces_and_unary_settles_join_them() {
    let (receiver, addr) = Receiver::start().await;
    let b = Broker::spawn(Some(addr), 50).await;
    let (own, header) = ("11111111111111111111111111111111", "22222222222222222222222222222222");
    let mut first = job("q", "t", "e", "own");
    first.traceparent = traceparent(own, PRODUCER_SPAN);
    let batch = pb::EnqueueBatchRequest { jobs: vec![first, job("q", "t", "e", "header")] };
    b.jobs().enqueue_batch(with_traceparent(batch, &traceparent(header, PRODUCER_SPAN))).await.unwrap();

    let mut w = b.workers();
    let lease = pb::LeaseRequest { queues: vec!["q".into()], max_jobs: 2, ..Default::default() };
    let deliveries = w.lease(lease).await.unwrap().into_inner().deliveries;
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        let j = d.job.as_ref().unwrap();
        let want = if j.payload.as_ref() == b"own" { own } else { header };
        assert_eq!(ids(&j.traceparent).0, want, "job {:?} keeps its producer's trace", j.payload);
        // The worker's own span, child of the delivered context, is what it
        // passes to the unary ack.
        let worker_span = "c0ffee00c0ffee00";
        let ack = pb::AckRequest { queue: "q".into(), job_id: j.id.clone(), lease_id: d.lease_id.clone() };
        w.ack(with_traceparent(ack, &traceparent(want, worker_span))).await.unwrap();
        let [enqueue, lease, ack]: [Span; 3] =
            receiver.wait_for(want, &["enqueue", "lease", "ack"]).await.try_into().unwrap();
        assert_eq!(hex::encode(&enqueue.parent_span_id), PRODUCER_SPAN);
        assert_eq!(hex::encode(&enqueue.span_id), ids(&j.traceparent).1);
        assert_eq!(lease.parent_span_id, enqueue.span_id);
        assert_eq!(hex::encode(&ack.parent_span_id), worker_span);
        assert_eq!(attr(&ack, "fairway.job_id"), Some(j.id.clone()));
    }
}

#[tokio::test]
async fn buffered_spans_are_exported_when_the_broker_stops() {
    let (receiver, addr) = Receiver::start().await;
    // A schedule far longer than the test: only the shutdown flush sends.
    let b = Broker::spawn(Some(addr), 600_000).await;
    let producer = traceparent(TRACE, PRODUCER_SPAN);
    b.jobs().enqueue(with_traceparent(job("q", "t", "e", "x"), &producer)).await.unwrap();
    assert!(b.stop().await.success());
    let [enqueue]: [Span; 1] = receiver.wait_for(TRACE, &["enqueue"]).await.try_into().unwrap();
    assert_eq!(hex::encode(&enqueue.parent_span_id), PRODUCER_SPAN);
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_context_passes_through() {
    let (receiver, _addr) = Receiver::start().await;
    let b = Broker::spawn(None, 50).await;
    let producer = traceparent(TRACE, PRODUCER_SPAN);
    b.jobs().enqueue(with_traceparent(job("q", "t", "e", "x"), &producer)).await.unwrap();
    let job = work_one(&b).await;
    assert_eq!(job.traceparent, producer, "stored and delivered unchanged");
    assert!(b.stop().await.success());
    assert!(receiver.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_traceparents_are_refused_in_fields_and_ignored_in_metadata() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let mut bad = job("q", "t", "e", "x");
    bad.traceparent = "00-not-a-trace-01".into();
    let e = s.jobs().enqueue(bad.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("traceparent \"00-not-a-trace-01\" is malformed"), "{}", e.message());
    let batch = pb::EnqueueBatchRequest { jobs: vec![job("q", "t", "e", "ok"), bad] };
    let e = s.jobs().enqueue_batch(batch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("jobs[1].traceparent "), "{}", e.message());
    assert_eq!(s.stats("q").await.ready, 0, "a bad item stores nothing");

    // Metadata is often set by middleware: a bad value there is ignored.
    let id = s.jobs().enqueue(with_traceparent(job("q", "t", "e", "x"), "garbage")).await.unwrap().into_inner().job_id;
    let j = s.jobs().get_job(pb::GetJobRequest { queue: "q".into(), job_id: id }).await.unwrap().into_inner();
    assert_eq!(j.traceparent, "");
    s.stop().await;
}
