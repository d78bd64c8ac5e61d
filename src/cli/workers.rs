//! `fairway workers [QUEUE]`: who is connected on Work streams and what
//! each one runs.

use super::format::{fmt_age, render_table, system_time, Column};
use super::{emit, ok_if_closed, CliResult, Remote};
use fairway::pb;
use std::time::SystemTime;

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// Only the workers of this queue.
    pub queue: Option<String>,
    /// Also list the jobs each worker holds.
    #[arg(long)]
    pub jobs: bool,
}

pub async fn workers(remote: &Remote, a: WorkersArgs) -> CliResult {
    let mut admin = remote.connect().await?.admin();
    let req = pb::ListWorkersRequest { queue: a.queue.clone().unwrap_or_default() };
    let workers = admin.list_workers(req).await?.into_inner().workers;
    let text = render_workers(&workers, a.jobs, SystemTime::now());
    let text = if workers.is_empty() {
        match &a.queue {
            Some(q) => format!("no workers connected to {q}\n"),
            None => "no workers connected\n".to_string(),
        }
    } else {
        text
    };
    ok_if_closed(emit(&text).map_err(Into::into))
}

fn since(t: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    t.and_then(system_time).and_then(|t| now.duration_since(t).ok()).map_or_else(|| "-".into(), fmt_age)
}

/// One row per worker; with `jobs`, its leases under it.
pub fn render_workers(workers: &[pb::WorkerInfo], jobs: bool, now: SystemTime) -> String {
    let cols = [
        Column::left("WORKER"),
        Column::left("VERSION"),
        Column::left("QUEUES"),
        Column::right("IN FLIGHT"),
        Column::left("CONNECTED FOR"),
        Column::left("STATE"),
    ];
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                if w.worker_version.is_empty() { "-".into() } else { w.worker_version.clone() },
                w.queues.join(","),
                format!("{}/{}", w.in_flight, w.max_in_flight),
                since(w.connected_at.as_ref(), now),
                if w.draining { "draining".into() } else { "working".into() },
            ]
        })
        .collect();
    let mut out = render_table(&cols, &rows);
    if jobs {
        let cols = [
            Column::left("WORKER"),
            Column::left("QUEUE"),
            Column::left("JOB"),
            Column::left("TENANT"),
            Column::left("ENVIRONMENT"),
            Column::right("ATTEMPT"),
            Column::left("RUNNING FOR"),
        ];
        let rows: Vec<Vec<String>> = workers
            .iter()
            .flat_map(|w| {
                w.leases.iter().map(|l| {
                    vec![
                        w.worker_id.clone(),
                        l.queue.clone(),
                        l.job_id.clone(),
                        l.tenant.clone(),
                        l.environment.clone(),
                        l.attempt.to_string(),
                        since(l.leased_at.as_ref(), now),
                    ]
                })
            })
            .collect();
        out.push('\n');
        out.push_str(&render_table(&cols, &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn workers_show_their_window_age_and_jobs() {
        let at = |s: i64| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
        let w = pb::WorkerInfo {
            worker_id: "py-1".into(),
            worker_version: "2.4.1".into(),
            queues: vec!["emails".into(), "reports".into()],
            in_flight: 2,
            max_in_flight: 8,
            connected_at: at(1_000),
            draining: true,
            leases: vec![pb::WorkerLease {
                queue: "emails".into(),
                job_id: "00000000000000aa".into(),
                tenant: "acme".into(),
                environment: "prod".into(),
                attempt: 2,
                leased_at: at(1_090),
                ..Default::default()
            }],
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_100);
        let out = render_workers(&[w], true, now);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("WORKER  VERSION  QUEUES          IN FLIGHT  CONNECTED FOR  STATE"), "{out}");
        assert!(lines[1].contains("emails,reports") && lines[1].contains("2/8") && lines[1].contains("1m40s"), "{out}");
        assert!(lines[1].ends_with("draining"), "{out}");
        assert!(lines[4].contains("00000000000000aa") && lines[4].ends_with("10.0s"), "{out}");
    }
}
