//! The operators' HTTP port (`--metrics-listen`): `/metrics` for
//! Prometheus and the dashboard at `/`. It is separate from the gRPC port,
//! so it can stay private while producers and workers reach gRPC. With
//! `--tls-cert` it serves HTTPS; with `--auth-file` it needs an admin token
//! ([`auth`]).

mod auth;
pub mod dashboard;
pub mod history;
pub mod metrics;
mod tls_listener;

use crate::auth::Tokens;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::model::JobState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use history::History;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Dead letters listed on a queue's page.
const DEAD_SHOWN: usize = 50;

/// What every handler needs.
#[derive(Clone)]
struct App {
    broker: Broker,
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let history = History::default();
    let sampler = tokio::spawn(history::sample(broker.clone(), history.clone()));
    let mut app = Router::new()
        .route("/", get(overview))
        .route("/metrics", get(prometheus))
        .route("/queues/{name}", get(queue_page))
        .route("/queues/{name}/redrive", post(redrive))
        .with_state(App { broker, history });
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
    let snapshot = app.broker.metrics().await?;
    let names: Vec<String> = snapshot.queues.iter().map(|q| q.name.clone()).collect();
    let store = app.broker.store().clone();
    let figures = tokio::task::spawn_blocking(move || store.figures(&names))
        .await
        .map_err(|e| BrokerError::Storage(format!("reading RocksDB figures: {e}")))?;
    let body = metrics::render(&snapshot, &figures);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

async fn overview(State(app): State<App>) -> HttpResult<Html<String>> {
    let snapshot = app.broker.metrics().await?;
    Ok(Html(dashboard::overview(&snapshot, &app.history)))
}

async fn queue_page(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> HttpResult<Html<String>> {
    let stats = app.broker.stats(name.clone()).await?;
    let snapshot = app.broker.metrics().await?;
    let metrics =
        snapshot.queues.iter().find(|q| q.name == name).ok_or_else(|| BrokerError::QueueNotFound(name.clone()))?;
    let (dead, next) = app
        .broker
        .list_jobs(crate::broker::ListJobs {
            queue: name.clone(),
            state: Some(JobState::Dead),
            tenant: None,
            environment: None,
            page_size: DEAD_SHOWN,
            page_token: None,
        })
        .await?;
    let detail = dashboard::QueueDetail {
        metrics,
        stats: &stats,
        dead: &dead,
        more_dead: !next.is_empty(),
        redriven: query.get("redriven").and_then(|v| v.parse().ok()),
    };
    Ok(Html(dashboard::queue(&detail, &app.history)))
}

/// Moves every dead letter of the queue back to ready, then shows the page.
async fn redrive(State(app): State<App>, Path(name): Path<String>, headers: HeaderMap) -> HttpResult<Response> {
    // A page on another site must not be able to make an operator's
    // browser post here.
    if !same_origin(&headers) {
        return Ok((StatusCode::FORBIDDEN, "cross-site request refused").into_response());
    }
    let moved = app.broker.redrive(name.clone(), None, None, 0).await?;
    tracing::info!(queue = %name, moved, "dead letters redriven from the dashboard");
    Ok(Redirect::to(&format!("/queues/{}?redriven={moved}", dashboard::path_segment(&name))).into_response())
}

/// True unless the browser says the request comes from another origin.
fn same_origin(h: &HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (h.get(header::ORIGIN).and_then(|v| v.to_str().ok()), h.get(header::HOST).and_then(|v| v.to_str().ok())) {
        (Some(origin), Some(host)) => origin.split("://").nth(1) == Some(host),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[])), "curl and other non-browser clients");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[("origin", "http://127.0.0.1:9090"), ("host", "127.0.0.1:9090")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:9090")])));
    }
}
