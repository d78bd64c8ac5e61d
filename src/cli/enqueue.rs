//! `fairway enqueue`: one job from the command line.

use super::{d, CliResult, Remote};
use fairway::pb;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// The queue to add the job to.
    pub queue: String,
    /// Payload as text (use --payload-file for binary).
    #[arg(long, default_value = "")]
    pub payload: String,
    /// Read the payload from this file instead.
    #[arg(long, conflicts_with = "payload")]
    pub payload_file: Option<std::path::PathBuf>,
    /// Tenant (empty = "default").
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Environment inside the tenant (empty = "default").
    #[arg(long = "env", default_value = "")]
    pub environment: String,
    /// Higher runs first within the tenant and environment.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Run after this delay, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// While a job with this key is live, enqueueing it again returns that job.
    #[arg(long, default_value = "")]
    pub dedup_key: String,
    /// Header as key=value; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("header {s:?} must be key=value"))
}

pub async fn enqueue(remote: &Remote, a: EnqueueArgs) -> CliResult {
    let mut jobs = remote.connect().await?.jobs();
    let payload = match &a.payload_file {
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => a.payload.into_bytes(),
    };
    let r = jobs
        .enqueue(pb::EnqueueRequest {
            queue: a.queue,
            tenant: a.tenant,
            environment: a.environment,
            payload: payload.into(),
            headers: a.headers.into_iter().collect(),
            priority: a.priority,
            schedule: a.delay.map(|x| pb::enqueue_request::Schedule::Delay(d(x))),
            dedup_key: a.dedup_key,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("{}{}", r.job_id, if r.deduplicated { " (deduplicated)" } else { "" });
    Ok(())
}
