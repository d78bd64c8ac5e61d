//! The operators' HTTP port (`--metrics-listen`): `/metrics` for
//! Prometheus and the dashboard at `/`. It is separate from the gRPC port,
//! so it can stay private while producers and workers reach gRPC. With
//! `--tls-cert` it serves HTTPS; with `--auth-file` it needs an admin token
//! ([`auth`]).

mod actions;
mod auth;
pub mod dashboard;
pub mod history;
pub mod metrics;
mod pages;
mod tls_listener;

use crate::auth::Tokens;
use crate::broker::Broker;
use crate::error::BrokerError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use history::History;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every handler needs.
#[derive(Clone)]
struct App {
    broker: Broker,
    /// In a cluster, who leads what on this node (its `/metrics` series);
    /// `None` on a single node.
    cluster: Option<crate::cluster::colocation::Leaders>,
    /// Recent samples for rates and charts.
    history: History,
}

/// A broker error as an HTTP answer: the gRPC code picks the status, the
/// message is the same one gRPC clients get.
struct HttpError(BrokerError);

impl From<BrokerError> for HttpError {
    fn from(e: BrokerError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        use tonic::Code;
        let status = match self.0.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            // With the challenge, so a browser asks for the token.
            Code::Unauthenticated => {
                let challenge = [(header::WWW_AUTHENTICATE, auth::CHALLENGE)];
                return (StatusCode::UNAUTHORIZED, challenge, self.0.to_string()).into_response();
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.0.to_string()).into_response()
    }
}

type HttpResult<T> = Result<T, HttpError>;

/// How the port is protected.
#[derive(Clone, Default)]
pub struct Security {
    /// Serve HTTPS with this config; `None` = plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require an admin token from these; `None` = open.
    pub tokens: Option<Arc<Tokens>>,
}

/// Serves until `shutdown` resolves. Every route, the buttons' posts
/// included, sits behind the admin-token check when `security.tokens` is
/// set; every post also refuses cross-site requests (see `actions`).
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    cluster: Option<crate::cluster::colocation::Leaders>,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let history = History::default();
    let sampler = tokio::spawn(history::sample(broker.clone(), history.clone()));
    let mut app = Router::new()
        .route("/", get(pages::overview))
        .route("/metrics", get(prometheus))
        .route("/workers", get(pages::workers))
        .route("/queues/{name}", get(pages::queue))
        .route("/queues/{name}/jobs/{id}", get(pages::job))
        .route("/queues/{name}/dead/delete", get(pages::confirm_delete_dead).post(actions::delete_dead))
        .route("/queues/{name}/redrive", post(actions::redrive))
        .route("/queues/{name}/pause", post(actions::pause))
        .route("/queues/{name}/resume", post(actions::resume))
        .route("/queues/{name}/jobs/{id}/retry", post(actions::retry))
        .route("/queues/{name}/jobs/{id}/delete", post(actions::delete_job))
        .with_state(App { broker, cluster, history });
    if let Some(tokens) = security.tokens {
        // On every route, unknown paths too: nothing answers without a token.
        app = app.layer(axum::middleware::from_fn_with_state(tokens, auth::require_operator));
    }
    let result = match security.tls {
        Some(tls) => {
            let listener = tls_listener::TlsListener::new(listener, tls)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    };
    sampler.abort();
    result
}

async fn prometheus(State(app): State<App>) -> HttpResult<Response> {
    let cluster = app.cluster.as_ref().map(crate::cluster::status::status);
    let mut body = match app.broker.metrics().await {
        Ok(snapshot) => {
            let names: Vec<String> = snapshot.queues.iter().map(|q| q.name.clone()).collect();
            let figures = app.broker.store_figures(names).await?;
            metrics::render(&snapshot, &figures)
        }
        // A cluster node that is not the home serves no queue: the home
        // exports the queues' series; this node, its view of the cluster.
        Err(e) if cluster.is_some() && e.code() == tonic::Code::Unavailable => metrics::render_build_info(),
        Err(e) => return Err(e.into()),
    };
    if let Some(c) = &cluster {
        body.push_str(&metrics::render_cluster(c));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}
