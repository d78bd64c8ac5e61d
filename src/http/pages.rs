//! The console's pages (GET): each gathers what it shows from the broker,
//! then renders it with `dashboard`.

use super::dashboard::{self, queue::Flash};
use super::{App, HttpResult};
use crate::broker::ListJobs;
use crate::error::BrokerError;
use crate::model::{now_millis, JobId, JobState};
use axum::extract::{Path, Query, State};
use axum::response::Html;
use std::collections::HashMap;

type Params = Query<HashMap<String, String>>;

pub(super) async fn overview(State(app): State<App>) -> HttpResult<Html<String>> {
    let snapshot = app.broker.metrics().await?;
    Ok(Html(dashboard::overview::overview(&snapshot, &app.history)))
}

/// The first [`dashboard::queue::LISTED`] jobs of `queue` in `state`, and
/// whether there are more.
async fn first_jobs(app: &App, queue: &str, state: JobState) -> HttpResult<(Vec<crate::pb::Job>, bool)> {
    let req = ListJobs {
        queue: queue.to_string(),
        state: Some(state),
        tenant: None,
        environment: None,
        page_size: dashboard::queue::LISTED,
        page_token: None,
    };
    let (jobs, next) = app.broker.list_jobs(req).await?;
    Ok((jobs, !next.is_empty()))
}

pub(super) async fn queue(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Params,
) -> HttpResult<Html<String>> {
    let stats = app.broker.stats(name.clone()).await?;
    let config = app.broker.queue_info(&name)?.config;
    let snapshot = app.broker.metrics().await?;
    let metrics =
        snapshot.queues.iter().find(|q| q.name == name).ok_or_else(|| BrokerError::QueueNotFound(name.clone()))?;
    let (dead, more_dead) = first_jobs(&app, &name, JobState::Dead).await?;
    let (scheduled, more_scheduled) = first_jobs(&app, &name, JobState::Scheduled).await?;
    let detail = dashboard::queue::QueueDetail {
        metrics,
        stats: &stats,
        config: &config,
        dead: &dead,
        more_dead,
        scheduled: &scheduled,
        more_scheduled,
        flash: Flash::from_query(&query),
        now: now_millis(),
    };
    Ok(Html(dashboard::queue::queue(&detail, &app.history)))
}

pub(super) async fn job(
    State(app): State<App>,
    Path((name, id)): Path<(String, String)>,
    Query(query): Params,
) -> HttpResult<Html<String>> {
    let job = app.broker.get_job(name, JobId::parse(&id)?).await?;
    Ok(Html(dashboard::job::job(&job, Flash::from_query(&query).as_ref(), now_millis())))
}

pub(super) async fn workers(State(app): State<App>, Query(query): Params) -> HttpResult<Html<String>> {
    let queue = query.get("queue").filter(|q| !q.is_empty()).cloned();
    let list = app.broker.list_workers(queue.clone()).await?;
    Ok(Html(dashboard::workers::workers(&list, queue.as_deref(), now_millis())))
}

pub(super) async fn confirm_delete_dead(State(app): State<App>, Path(name): Path<String>) -> HttpResult<Html<String>> {
    let stats = app.broker.stats(name.clone()).await?;
    Ok(Html(dashboard::queue::confirm_delete_all(&name, stats.dead)))
}
