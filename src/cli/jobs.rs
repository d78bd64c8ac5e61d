//! `fairway jobs list|get|cancel`: the jobs of a queue page by page, one
//! job with every field, and removing one.

use super::format::{fmt_attempts, fmt_time, payload_text, render_table, state_name, Column};
use super::listing::{self, job_json, ListArgs, Listing};
use super::{emit, ok_if_closed, CliResult, Remote, Screen};
use fairway::pb;
use std::fmt::Write as _;

/// Binary payload bytes shown (as hex) by `jobs get`; `--json` has them all.
const PAYLOAD_HEX_BYTES: usize = 256;

/// A job state to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Waiting for a worker.
    Ready,
    /// Waiting for its run time (delayed or backing off).
    Scheduled,
    /// Held by a worker.
    Leased,
    /// Out of attempts, or nacked as dead.
    Dead,
}

impl StateArg {
    fn proto(self) -> pb::JobState {
        match self {
            StateArg::Ready => pb::JobState::Ready,
            StateArg::Scheduled => pb::JobState::Scheduled,
            StateArg::Leased => pb::JobState::Leased,
            StateArg::Dead => pb::JobState::Dead,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsCmd {
    /// List a queue's jobs a page at a time, optionally in one state.
    List {
        /// Only jobs in this state (default: every state).
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one job: every field, its headers and its payload.
    Get {
        /// The job's queue.
        queue: String,
        /// The job id `fairway enqueue` printed.
        id: String,
        /// The job as one JSON object, payload whole.
        #[arg(long)]
        json: bool,
    },
    /// Remove a scheduled, ready or dead job (a leased one is refused: it
    /// ends with its worker's ack or nack, or when its lease expires).
    Cancel {
        /// The job's queue.
        queue: String,
        /// The job id.
        id: String,
    },
}

pub async fn jobs(remote: &Remote, cmd: JobsCmd) -> CliResult {
    match cmd {
        JobsCmd::List { state, list } => {
            let extra = match state {
                Some(s) => vec!["--state".to_string(), state_name(s.proto() as i32)],
                None => Vec::new(),
            };
            let render = |jobs: &[pb::Job], _: Screen| render_jobs(jobs, state);
            let l = Listing {
                noun: "jobs",
                command: &["jobs", "list"],
                extra,
                state: state.map(StateArg::proto),
                render: &render,
            };
            ok_if_closed(listing::run(remote, &list, l).await)
        }
        JobsCmd::Get { queue, id, json } => {
            let mut client = remote.connect().await?.jobs();
            let j = client.get_job(pb::GetJobRequest { queue, job_id: id }).await?.into_inner();
            let text = if json { format!("{}\n", job_json(&j)) } else { render_job(&j) };
            ok_if_closed(emit(&text).map_err(Into::into))
        }
        JobsCmd::Cancel { queue, id } => {
            let mut client = remote.connect().await?.jobs();
            client.cancel_job(pb::CancelJobRequest { queue: queue.clone(), job_id: id.clone() }).await?;
            println!("cancelled job {id} of {queue}");
            Ok(())
        }
    }
}

/// The jobs as a table. Listing scheduled jobs shows when they run;
/// otherwise, when they were created.
pub fn render_jobs(jobs: &[pb::Job], state: Option<StateArg>) -> String {
    let scheduled = state == Some(StateArg::Scheduled);
    let cols = [
        Column::left("ID"),
        Column::left("STATE"),
        Column::left("TENANT"),
        Column::left("ENVIRONMENT"),
        Column::right("PRIORITY"),
        Column::right("ATTEMPT"),
        Column::left(if scheduled { "RUN AT" } else { "CREATED" }),
    ];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let when = if scheduled { &j.run_at } else { &j.created_at };
            vec![
                j.id.clone(),
                state_name(j.state),
                j.tenant.clone(),
                j.environment.clone(),
                j.priority.to_string(),
                fmt_attempts(j),
                fmt_time(when.as_ref()),
            ]
        })
        .collect();
    render_table(&cols, &rows)
}

/// Width of the field names in [`render_job`], so the values line up.
const FIELD_WIDTH: usize = 18;

/// `name value`, with a multi-line value's later lines under its first.
fn field(out: &mut String, name: &str, value: &str) {
    let mut lines = value.lines();
    let _ = writeln!(out, "{name:<FIELD_WIDTH$}{}", lines.next().unwrap_or("-"));
    for line in lines {
        let _ = writeln!(out, "{:FIELD_WIDTH$}{line}", "");
    }
}

/// Every field of a job, one per line, then its headers and payload.
pub fn render_job(j: &pb::Job) -> String {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let mut out = String::new();
    field(&mut out, "id", &j.id);
    field(&mut out, "queue", &j.queue);
    field(&mut out, "state", &state_name(j.state));
    field(&mut out, "tenant", &j.tenant);
    field(&mut out, "environment", &j.environment);
    field(&mut out, "priority", &j.priority.to_string());
    field(&mut out, "attempt", &fmt_attempts(j));
    field(&mut out, "created_at", &fmt_time(j.created_at.as_ref()));
    field(&mut out, "run_at", &fmt_time(j.run_at.as_ref()));
    field(&mut out, "lease_expires_at", &fmt_time(j.lease_expires_at.as_ref()));
    if !j.lease_worker_id.is_empty() {
        let version = if j.lease_worker_version.is_empty() {
            String::new()
        } else {
            format!(" (version {})", j.lease_worker_version)
        };
        field(
            &mut out,
            "leased_by",
            &format!("{}{version} since {}", j.lease_worker_id, fmt_time(j.leased_at.as_ref())),
        );
    }
    let lease = j.lease_duration.as_ref().map(|d| humantime::format_duration(super::format::duration(d)).to_string());
    field(&mut out, "lease_duration", &lease.unwrap_or_else(|| "queue default".into()));
    field(&mut out, "dedup_key", &or_dash(&j.dedup_key));
    field(&mut out, "traceparent", &or_dash(&j.traceparent));
    field(&mut out, "last_error", &or_dash(&j.last_error));
    let mut headers: Vec<String> = j.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    headers.sort();
    field(&mut out, "headers", &if headers.is_empty() { "-".into() } else { headers.join("\n") });
    let n = j.payload.len();
    let kind = match std::str::from_utf8(&j.payload) {
        Ok(_) => "text".to_string(),
        Err(_) if n > PAYLOAD_HEX_BYTES => format!("binary, hex of the first {PAYLOAD_HEX_BYTES}"),
        Err(_) => "binary, hex".to_string(),
    };
    let unit = if n == 1 { "byte" } else { "bytes" };
    let _ = writeln!(out, "payload ({n} {unit}, {kind}):");
    for line in payload_text(&j.payload, PAYLOAD_HEX_BYTES).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: pb::JobState) -> pb::Job {
        pb::Job {
            id: id.into(),
            queue: "emails".into(),
            tenant: "acme".into(),
            environment: "prod".into(),
            state: state as i32,
            priority: -2,
            attempt: 1,
            max_attempts: 10,
            created_at: Some(prost_types::Timestamp { seconds: 1_750_000_000, nanos: 0 }),
            run_at: Some(prost_types::Timestamp { seconds: 1_750_003_600, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn jobs_table_shows_run_at_only_for_scheduled_listings() {
        let jobs = [job("00000000000000aa", pb::JobState::Scheduled)];
        let out = render_jobs(&jobs, Some(StateArg::Scheduled));
        assert!(
            out.starts_with("ID                STATE      TENANT  ENVIRONMENT  PRIORITY  ATTEMPT  RUN AT"),
            "{out}"
        );
        assert!(out.lines().nth(1).is_some_and(|l| l.ends_with("-2     1/10  2025-06-15T16:06:40Z")), "{out}");
        let out = render_jobs(&jobs, None);
        assert!(out.contains("CREATED") && out.contains("2025-06-15T15:06:40Z"), "{out}");
    }

    #[test]
    fn job_detail_has_every_field_headers_and_payload() {
        let mut j = job("00000000000000aa", pb::JobState::Dead);
        j.headers.insert("b".into(), "2".into());
        j.headers.insert("a".into(), "1".into());
        j.last_error = "boom\nat line 3".into();
        j.payload = b"line one\nline two".to_vec().into();
        let out = render_job(&j);
        for want in [
            "state             dead\n",
            "attempt           1/10\n",
            "lease_duration    queue default\n",
            "last_error        boom\n                  at line 3\n",
            "headers           a=1\n                  b=2\n",
            "payload (17 bytes, text):\n  line one\n  line two\n",
        ] {
            assert!(out.contains(want), "{want:?} missing from:\n{out}");
        }
        j.payload = vec![0xde; 300].into();
        let out = render_job(&j);
        assert!(out.contains("payload (300 bytes, binary, hex of the first 256):\n  dedede"), "{out}");
        assert!(out.ends_with(&format!("  {}\n  … (44 more bytes)\n", "de".repeat(32))), "{out}");
    }
}
