//! tonic wiring: the three Fairway services, gRPC health and reflection (v1
//! and v1alpha), and graceful shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future, so `main` and the
//! tests share one entry point.

use crate::api::{admin::AdminApi, jobs::JobsApi, trace::Tracer, worker::WorkerApi};
use crate::broker::Broker;
use crate::config::ServeConfig;
use crate::error::BrokerError;
use crate::pb;
use crate::pb::{
    admin_service_server::AdminServiceServer, job_service_server::JobServiceServer,
    worker_service_server::WorkerServiceServer,
};
use crate::telemetry::{TraceExport, TraceExportError};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;

/// Largest request accepted: room for a maximal batch of small jobs or one
/// job at the largest configurable payload.
const MAX_MESSAGE: usize = 64 << 20;
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
}

const SERVICES: [&str; 3] = ["fairway.v1.JobService", "fairway.v1.WorkerService", "fairway.v1.AdminService"];

/// Serves until `shutdown` resolves, then: health turns NOT_SERVING, the
/// writer finishes every write already sent and closes Work streams and
/// long-polls, open connections drain, RocksDB closes cleanly, and the last
/// spans are exported.
pub async fn run(
    listener: TcpListener,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let broker = Broker::open(&config.data_dir, config.durability)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    for s in SERVICES {
        health.set_service_status(s, ServingStatus::Serving).await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let addr = listener.local_addr().map_err(|e| BrokerError::Storage(format!("listener: {e}")))?;
    // Started last, so no error below can leave it running without a flush.
    let (export, tracer) = match config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let (export, tracer) = TraceExport::start(endpoint)?;
            (Some(export), tracer)
        }
        None => (None, Tracer::default()),
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), durability = ?config.durability, "fairway serving");

    let drain_broker = broker.clone();
    let drain_health = health.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let on_shutdown = async move {
        shutdown.await;
        tracing::info!("shutdown requested: reporting NOT_SERVING and draining");
        drain_health.set_service_status("", ServingStatus::NotServing).await;
        for s in SERVICES {
            drain_health.set_service_status(s, ServingStatus::NotServing).await;
        }
        // Let health probes see NOT_SERVING before connections close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain_broker.shutdown().await;
        let _ = drained_tx.send(());
    };

    // `Server::tcp_nodelay` only covers listeners tonic binds itself: set it
    // on every accepted socket, or Nagle plus delayed ACKs add ~40 ms stalls.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            JobServiceServer::new(JobsApi { broker: broker.clone(), tracer: tracer.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi { broker: broker.clone(), tracer })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            AdminServiceServer::new(AdminApi { broker: broker.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
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
    if let Some(export) = export {
        export.shutdown().await;
    }
    tracing::info!("fairway stopped");
    served
}
