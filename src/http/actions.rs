//! What the console's buttons do (POST): pause and resume a queue, redrive
//! or delete its dead letters, retry or delete one job. Each refuses a
//! cross-site request (a page elsewhere must not make an operator's browser
//! act here), then redirects to the page it came from with what it did.

use super::dashboard::{self, queue::Flash};
use super::{App, HttpResult};
use crate::broker::{GroupScope, Redrive};
use crate::error::BrokerError;
use crate::model::{JobId, JobState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use std::collections::HashMap;

type Fields = Form<HashMap<String, String>>;

fn refused() -> Response {
    (StatusCode::FORBIDDEN, "cross-site request refused").into_response()
}

fn back_to_queue(queue: &str, flash: Flash) -> Response {
    Redirect::to(&format!("{}?{}", dashboard::queue_href(queue), flash.query())).into_response()
}

pub(super) async fn redrive(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    if !same_origin(&headers) {
        return Ok(refused());
    }
    let moved = app.broker.redrive(name.clone(), Redrive::Matching { scope: GroupScope::default(), limit: 0 }).await?;
    tracing::info!(queue = %name, moved, "dead letters redriven from the dashboard");
    Ok(back_to_queue(&name, Flash::Redriven(moved)))
}

/// Deletes every dead letter; only with `confirm=yes`, which the
/// confirmation page's button sends.
pub(super) async fn delete_dead(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> HttpResult<Response> {
    if !same_origin(&headers) {
        return Ok(refused());
    }
    if fields.get("confirm").map(String::as_str) != Some("yes") {
        let e = "deleting every dead letter needs confirm=yes: use the button on the confirmation page";
        return Ok((StatusCode::BAD_REQUEST, e).into_response());
    }
    let deleted = app.broker.purge(name.clone(), Some(JobState::Dead), GroupScope::default()).await?;
    tracing::info!(queue = %name, deleted, "dead letters deleted from the dashboard");
    Ok(back_to_queue(&name, Flash::Deleted(deleted)))
}

async fn set_paused(app: App, name: String, headers: HeaderMap, paused: bool) -> HttpResult<Response> {
    if !same_origin(&headers) {
        return Ok(refused());
    }
    app.broker.set_paused(name.clone(), paused).await?;
    tracing::info!(queue = %name, paused, "queue paused or resumed from the dashboard");
    Ok(back_to_queue(&name, if paused { Flash::Paused } else { Flash::Resumed }))
}

pub(super) async fn pause(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    set_paused(app, name, headers, true).await
}

pub(super) async fn resume(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> HttpResult<Response> {
    set_paused(app, name, headers, false).await
}

/// Where a per-job action returns: the queue page when its button was in
/// the queue's dead-letter list (`back=queue`), else the job's own page.
fn after_job_action(
    queue: &str,
    id: &str,
    fields: &HashMap<String, String>,
    flash: Flash,
    job_still_there: bool,
) -> Response {
    if fields.get("back").map(String::as_str) == Some("queue") || !job_still_there {
        return back_to_queue(queue, flash);
    }
    Redirect::to(&format!("{}?{}", dashboard::job_href(queue, id), flash.query())).into_response()
}

pub(super) async fn retry(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> HttpResult<Response> {
    if !same_origin(&headers) {
        return Ok(refused());
    }
    let job = JobId::parse(&id)?;
    app.broker.redrive(name.clone(), Redrive::Job(job)).await?;
    tracing::info!(queue = %name, job_id = %job, "dead letter retried from the dashboard");
    Ok(after_job_action(&name, &id, &fields, Flash::Retried(id.clone()), true))
}

/// Deletes one job (any state but leased: CancelJob).
pub(super) async fn delete_job(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> HttpResult<Response> {
    if !same_origin(&headers) {
        return Ok(refused());
    }
    let job = JobId::parse(&id)?;
    match app.broker.cancel(name.clone(), job).await {
        Ok(_) => {}
        Err(BrokerError::JobNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(queue = %name, job_id = %job, "job deleted from the dashboard");
    Ok(after_job_action(&name, &id, &fields, Flash::Removed(id.clone()), false))
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
