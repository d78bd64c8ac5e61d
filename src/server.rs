//! tonic wiring: the three Fairway services, gRPC health and reflection (v1
//! and v1alpha), and graceful shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future, so `main` and the
//! tests share one entry point.
//!
//! Security: with `--tls-cert`/`--tls-key` both ports serve TLS (mTLS with
//! `--tls-client-ca`); with `--auth-file` each Fairway service and
//! reflection sits behind an [`auth::Gate`](crate::auth::Gate). Health stays
//! open so probes work without credentials.

use crate::api::{admin::AdminApi, jobs::JobsApi, trace::Tracer, worker::WorkerApi};
use crate::auth::{AuthFileError, Gate, Need, Tokens};
use crate::broker::monitor::HealthMap;
use crate::broker::Broker;
use crate::cluster::forward::ForwardLayer;
use crate::config::{Listen, ServeConfig};
use crate::conn_limits::{self, MAX_MESSAGE};
use crate::deadline::DeadlineLayer;
use crate::error::BrokerError;
use crate::pb;
use crate::pb::{
    admin_service_server::AdminServiceServer, job_service_server::JobServiceServer,
    worker_service_server::WorkerServiceServer,
};
use crate::telemetry::{TraceExport, TraceExportError};
use crate::tls::TlsError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

/// How long open connections may linger after the broker has drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    TraceExport(#[from] TraceExportError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthFileError),
}

const SERVICES: [&str; 3] = ["fairway.v1.JobService", "fairway.v1.WorkerService", "fairway.v1.AdminService"];

/// The bound sockets the broker serves on.
pub struct Listeners {
    pub grpc: TcpListener,
    /// `/metrics` and the dashboard; `None` = turned off.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &ServeConfig) -> Result<Listeners, String> {
        let grpc =
            TcpListener::bind(config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let http = match config.metrics_listen {
            Listen::Off => None,
            Listen::At(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                format!("cannot listen on {addr} for metrics: {e} (set --metrics-listen to another address or `off`)")
            })?),
        };
        Ok(Listeners { grpc, http })
    }
}

/// The gRPC health name of a queue: NOT_SERVING while an alert is active.
pub fn queue_health_name(queue: &str) -> String {
    format!("fairway.queue.{queue}")
}

/// Mirrors the broker's queue health into the gRPC health service until
/// `stop` turns true; and the broker as a whole (and each service) as
/// NOT_SERVING while writes to its data dir fail (disk full, read-only).
async fn mirror_queue_health(
    mut health: tonic_health::server::HealthReporter,
    mut queues: tokio::sync::watch::Receiver<HealthMap>,
    mut storage_fault: tokio::sync::watch::Receiver<Option<String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut shown = HealthMap::new();
    let mut shown_fault = false;
    loop {
        let now = queues.borrow_and_update().clone();
        for (name, healthy) in &now {
            if shown.get(name) != Some(healthy) {
                let status = if *healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
                health.set_service_status(queue_health_name(name), status).await;
            }
        }
        for name in shown.keys().filter(|n| !now.contains_key(*n)) {
            health.clear_service_status(&queue_health_name(name)).await;
        }
        shown = now;
        let fault = storage_fault.borrow_and_update().is_some();
        if fault != shown_fault {
            let status = if fault { ServingStatus::NotServing } else { ServingStatus::Serving };
            for s in std::iter::once("").chain(SERVICES) {
                health.set_service_status(s, status).await;
            }
            shown_fault = fault;
        }
        tokio::select! {
            changed = queues.changed() => if changed.is_err() { return },
            changed = storage_fault.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Says loudly at start when a port other machines can reach lets anyone
/// in, or carries tokens in clear text.
fn warn_if_exposed(grpc: Option<SocketAddr>, http: Option<SocketAddr>, tls: bool, tokens: Option<&Tokens>) {
    let ports = [
        ("gRPC", grpc, "enqueue, take, cancel and purge jobs and delete queues"),
        ("metrics/dashboard", http, "read every queue's figures and redrive dead letters"),
    ];
    for (port, addr, anyone_may) in ports {
        let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) else { continue };
        if tokens.is_none() {
            tracing::warn!(%addr, "NO AUTHENTICATION: the {port} port listens beyond loopback and there is no \
                --auth-file, so anyone who can connect may {anyone_may}; pass --auth-file (see docs/security.md)");
        } else if !tls {
            tracing::warn!(%addr, "the {port} port listens beyond loopback without TLS: bearer tokens cross the \
                network in clear text; pass --tls-cert and --tls-key");
        }
    }
}

/// Serves until `shutdown` resolves, then: health turns NOT_SERVING, the
/// writer finishes every write already sent and closes Work streams and
/// long-polls, open connections drain, RocksDB closes cleanly, and the last
/// spans are exported.
pub async fn run(
    listeners: Listeners,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = listeners.grpc;
    // Read before anything starts, so a bad file stops the broker at once.
    if config.cluster.is_some() && config.tls_cert.is_some() {
        // Forwarded calls and Raft would travel in clear to a TLS port.
        return Err(BrokerError::InvalidArgument(
            "--cluster with --tls-cert: node-to-node TLS (Raft and forwarded calls) is not built yet, and a node \
             forwards calls to the others in plain gRPC; run cluster nodes without --tls-cert on a private network \
             (see docs/cluster.md), or a single node with TLS"
                .into(),
        )
        .into());
    }
    let tls = crate::tls::load(config)?;
    let tokens = config.auth_file.as_deref().map(Tokens::load).transpose()?.map(Arc::new);
    let http_addr = listeners.http.as_ref().and_then(|l| l.local_addr().ok());
    warn_if_exposed(listener.local_addr().ok(), http_addr, tls.is_some(), tokens.as_deref());
    // Opening RocksDB (WAL replay; a locked or incompatible data dir is
    // refused here) blocks, so it runs off the runtime. The writer then
    // rebuilds its state in the background while health already answers
    // NOT_SERVING; it turns SERVING when recovery is done.
    let (dir, durability, hold, partitions) =
        (config.data_dir.clone(), config.durability, config.recovery_hold, config.partitions);
    let machine_partitions = crate::config::machine_partitions();
    let (broker, recovery, cluster_node) = match (&config.cluster, &config.node_id) {
        (Some(file), Some(node_id)) => {
            let (broker, recovery, node) = crate::cluster::node::start(file, node_id, &config.data_dir).await?;
            (broker, recovery, Some(node))
        }
        _ => {
            let (broker, recovery) = tokio::task::spawn_blocking(move || {
                Broker::start_with(&dir, durability, hold, partitions, machine_partitions)
            })
            .await
            .map_err(|e| BrokerError::Internal(format!("start-up task failed: {e}")))??;
            (broker, recovery, None)
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;
    for s in SERVICES {
        health.set_service_status(s, ServingStatus::NotServing).await;
    }
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<BrokerError>();
    let recovered = {
        let (health, mut stopping) = (health.clone(), stopping.clone());
        tokio::spawn(async move {
            match recovery.await {
                Ok(Ok(report)) => {
                    if *stopping.borrow() {
                        return;
                    }
                    health.set_service_status("", ServingStatus::Serving).await;
                    for s in SERVICES {
                        health.set_service_status(s, ServingStatus::Serving).await;
                    }
                    tracing::info!(
                        queues = report.queues,
                        leases = report.leases,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "recovery done: serving"
                    );
                    let _ = stopping.wait_for(|s| *s).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "recovery failed: stopping");
                    let _ = failed_tx.send(e);
                }
                Err(_) => {
                    let _ = failed_tx.send(BrokerError::Internal("the writer thread ended during recovery".into()));
                }
            }
        })
    };
    let mirror =
        tokio::spawn(mirror_queue_health(health.clone(), broker.health(), broker.storage_fault(), stopping.clone()));
    if let Some(node) = &cluster_node {
        let (leaders, timeout) = (node.leaders.clone(), node.election_timeout_ms);
        tokio::spawn(crate::cluster::status::mirror_health(leaders, timeout, health.clone(), stopping.clone()));
    }
    let http = listeners.http.map(|l| {
        let mut stop = stopping.clone();
        let stop = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let security = crate::http::Security { tls: tls.as_ref().map(|t| t.http.clone()), tokens: tokens.clone() };
        let cluster = cluster_node.as_ref().map(|n| n.leaders.clone());
        tokio::spawn(crate::http::serve(l, broker.clone(), cluster, security, stop))
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let addr = listener.local_addr().map_err(|e| BrokerError::Internal(format!("listener: {e}")))?;
    // Started last, so no error below can leave it running without a flush.
    let (export, tracer) = match config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let (export, tracer) = TraceExport::start(endpoint)?;
            (Some(export), tracer)
        }
        None => (None, Tracer::default()),
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), durability = ?config.durability,
        tls = tls.is_some(), mutual_tls = tls.as_ref().is_some_and(|t| t.mutual),
        tokens = tokens.as_ref().map_or(0, |t| t.len()), "fairway serving");

    let drain_broker = broker.clone();
    let drain_health = health.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let failure = Arc::new(std::sync::Mutex::new(None::<BrokerError>));
    let failure_seen = failure.clone();
    let proposals_stopping = cluster_node.as_ref().map(|n| n.stopping.clone());
    let on_shutdown = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown requested: reporting NOT_SERVING and draining"),
            Ok(e) = failed_rx => {
                if let Ok(mut f) = failure_seen.lock() {
                    *f = Some(e);
                }
            }
        }
        let _ = stopping_tx.send(true);
        if let Some(p) = &proposals_stopping {
            let _ = p.send(true);
        }
        let _ = mirror.await;
        drain_health.set_service_status("", ServingStatus::NotServing).await;
        let queues: Vec<String> = drain_broker.health().borrow().keys().cloned().collect();
        for s in SERVICES.iter().map(|s| s.to_string()).chain(queues.iter().map(|q| queue_health_name(q))) {
            drain_health.set_service_status(s, ServingStatus::NotServing).await;
        }
        // Let health probes see NOT_SERVING before connections close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain_broker.shutdown().await;
        let _ = drained_tx.send(());
    };

    // tonic's TCP settings only cover listeners it binds itself.
    let incoming = TcpListenerStream::new(listener).map(|conn| conn.inspect(conn_limits::tune_socket));
    let mut builder = conn_limits::configure(tonic::transport::Server::builder(), &config.limits);
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.grpc.clone())?;
    }
    let gate = |need| Gate::new(tokens.clone(), need);
    let forward = cluster_node.as_ref().map_or_else(ForwardLayer::off, |n| n.forward.clone());
    let serve = builder
        .layer(forward)
        .layer(DeadlineLayer { timeout: config.limits.request_timeout })
        .layer(crate::api::oversize::OversizeLayer { broker: broker.clone() })
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, gate(Need::AnyToken)))
        .add_service(InterceptedService::new(reflection_v1alpha, gate(Need::AnyToken)))
        .add_service(InterceptedService::new(
            JobServiceServer::new(JobsApi { broker: broker.clone(), tracer: tracer.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            gate(Need::Produce),
        ))
        .add_service(InterceptedService::new(
            WorkerServiceServer::new(WorkerApi { broker: broker.clone(), tracer })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            gate(Need::Work),
        ))
        .add_service(InterceptedService::new(
            AdminServiceServer::new(AdminApi {
                broker: broker.clone(),
                cluster: cluster_node.as_ref().map(|n| n.leaders.clone()),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
            gate(Need::Admin),
        ))
        .serve_with_incoming_shutdown(incoming, on_shutdown);
    tokio::pin!(serve);
    let served = tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        // Storage is closed; don't wait forever on clients that keep idle
        // connections open.
        _ = async {
            if drained_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("connections still open {}s after draining; closing them", DRAIN_TIMEOUT.as_secs());
            Ok(())
        }
    };
    broker.shutdown().await;
    if let Some(node) = cluster_node {
        node.shutdown().await;
    }
    recovered.abort();
    if let Some(h) = http {
        match h.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
            Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(export) = export {
        export.shutdown().await;
    }
    tracing::info!("fairway stopped");
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e.into());
    }
    served
}
