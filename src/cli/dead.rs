//! `fairway dead list|redrive|delete`: the dead letters of a queue, moving
//! them back to ready, and deleting them.

use super::confirm::{confirm, count, declined};
use super::format::{fmt_attempts, fmt_time, leading_width, one_line, render_table, truncate, Column};
use super::listing::{self, ListArgs, Listing};
use super::{ok_if_closed, CliResult, Remote, Screen};
use fairway::pb;

/// Room for the last error when the terminal's width is unknown (output
/// piped or redirected); `--json` has it whole.
const ERROR_WIDTH: usize = 80;
/// Room for the last error however narrow the terminal.
const MIN_ERROR_WIDTH: usize = 20;

#[derive(Debug, clap::Subcommand)]
pub enum DeadCmd {
    /// List dead-lettered jobs with their last error, a page at a time.
    List(ListArgs),
    /// Move dead letters back to ready with a fresh attempt budget: one
    /// job, or every one matching the filters.
    Redrive {
        /// The queue whose dead letters to redrive.
        queue: String,
        /// Only this dead job.
        #[arg(conflicts_with_all = ["tenant", "environment", "limit"])]
        job: Option<String>,
        /// Only this tenant's dead letters.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this environment's dead letters.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Move at most this many (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// Delete dead letters for good: one job, or every one matching the
    /// filters (asks first unless --yes).
    Delete {
        /// The queue whose dead letters to delete.
        queue: String,
        /// Only this dead job (no confirmation asked).
        #[arg(conflicts_with_all = ["tenant", "environment", "yes"])]
        job: Option<String>,
        /// Only this tenant's dead letters.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this environment's dead letters.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Don't ask: delete at once (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

pub async fn dead(remote: &Remote, cmd: DeadCmd) -> CliResult {
    match cmd {
        DeadCmd::List(a) => {
            let l = Listing {
                noun: "dead letters",
                command: &["dead", "list"],
                extra: Vec::new(),
                state: Some(pb::JobState::Dead),
                render: &render_dead,
            };
            ok_if_closed(listing::run(remote, &a, l).await)
        }
        DeadCmd::Redrive { queue, job, tenant, environment, limit } => {
            let mut admin = remote.connect().await?.admin();
            let r = admin
                .redrive_dead_letters(pb::RedriveDeadLettersRequest {
                    queue: queue.clone(),
                    tenant: tenant.unwrap_or_default(),
                    environment: environment.unwrap_or_default(),
                    limit,
                    job_id: job.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            match job {
                Some(id) => println!("moved dead letter {id} of {queue} back to ready"),
                None => {
                    println!("moved {} of {queue} back to ready", count(r.redriven, "dead letter", "dead letters"))
                }
            }
            Ok(())
        }
        DeadCmd::Delete { queue, job: Some(id), .. } => {
            let client = remote.connect().await?;
            // CancelJob removes a job in any state but leased: make sure
            // this one is a dead letter before it goes.
            let j = client.jobs().get_job(pb::GetJobRequest { queue: queue.clone(), job_id: id.clone() }).await?;
            if j.get_ref().state() != pb::JobState::Dead {
                let state = super::format::state_name(j.get_ref().state);
                return Err(format!(
                    "job {id} of {queue} is not a dead letter (it is {state}); nothing deleted \
                     (`jobs cancel` removes a job in any state but leased)"
                )
                .into());
            }
            client.jobs().cancel_job(pb::CancelJobRequest { queue: queue.clone(), job_id: id.clone() }).await?;
            println!("deleted dead letter {id} of {queue}");
            Ok(())
        }
        DeadCmd::Delete { queue, job: None, tenant, environment, yes } => {
            let mut admin = remote.connect().await?.admin();
            let filtered = tenant.is_some() || environment.is_some();
            let question = if filtered {
                let mut which = String::new();
                if let Some(t) = &tenant {
                    which.push_str(&format!(" of tenant {t}"));
                }
                if let Some(e) = &environment {
                    which.push_str(&format!(" in environment {e}"));
                }
                format!("Delete the dead letters{which} in {queue} for good?")
            } else {
                let dead = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: queue.clone() }).await?;
                let n = dead.get_ref().dead;
                if n == 0 {
                    println!("no dead letters in {queue}");
                    return Ok(());
                }
                format!(
                    "Delete {} of {queue} for good?",
                    if n == 1 { "the 1 dead letter".into() } else { format!("all {n} dead letters") }
                )
            };
            if !confirm(&question, yes)? {
                return declined();
            }
            let r = admin
                .purge_queue(pb::PurgeQueueRequest {
                    queue: queue.clone(),
                    state: pb::JobState::Dead as i32,
                    tenant: tenant.unwrap_or_default(),
                    environment: environment.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("deleted {} of {queue}", count(r.purged, "dead letter", "dead letters"));
            Ok(())
        }
    }
}

const DEAD_COLUMNS: [Column; 6] = [
    Column::left("JOB"),
    Column::left("TENANT"),
    Column::left("ENVIRONMENT"),
    Column::right("ATTEMPTS"),
    Column::left("CREATED"),
    // Last: it is the one cut to fit, and cutting it shifts nothing.
    Column::left("LAST ERROR"),
];

/// The dead letters as a table whose last error is cut to what is left of
/// the terminal's width, or to [`ERROR_WIDTH`] when that is unknown.
pub fn render_dead(jobs: &[pb::Job], screen: Screen) -> String {
    let mut rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.tenant.clone(),
                j.environment.clone(),
                fmt_attempts(j),
                fmt_time(j.created_at.as_ref()),
                one_line(&j.last_error),
            ]
        })
        .collect();
    let room = match screen.width() {
        Some(w) => w.saturating_sub(leading_width(&DEAD_COLUMNS, &rows)).max(MIN_ERROR_WIDTH),
        None => ERROR_WIDTH,
    };
    for row in &mut rows {
        if let Some(err) = row.last_mut() {
            *err = truncate(err, room);
        }
    }
    render_table(&DEAD_COLUMNS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_job(id: &str, error: &str) -> pb::Job {
        pb::Job {
            id: id.into(),
            tenant: "acme".into(),
            environment: "prod".into(),
            attempt: 3,
            max_attempts: 3,
            last_error: error.into(),
            created_at: Some(prost_types::Timestamp { seconds: 1_750_000_000, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn last_error_fits_the_terminal_or_80_characters() {
        let long = "x".repeat(300);
        let jobs = [dead_job("00000000000000aa", &long), dead_job("00000000000000bb", "boom\nat line 3")];
        let piped = render_dead(&jobs, Screen { tty: false, size: None });
        let lines: Vec<&str> = piped.lines().collect();
        assert!(lines[0].starts_with("JOB               TENANT  ENVIRONMENT  ATTEMPTS  CREATED"), "{piped}");
        assert!(lines[1].contains("3/3") && lines[1].contains("2025-06-15T15:06:40Z"), "{piped}");
        assert!(lines[1].ends_with(&format!("{}…", "x".repeat(79))), "{piped}");
        assert!(lines[2].ends_with("boom at line 3"), "{piped}");

        let narrow = render_dead(&jobs, Screen { tty: true, size: Some((100, 40)) });
        assert!(narrow.lines().all(|l| l.chars().count() <= 100), "{narrow}");
        assert!(narrow.lines().nth(1).is_some_and(|l| l.ends_with('…') && l.chars().count() == 100), "{narrow}");
    }
}
