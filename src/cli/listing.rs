//! Paging through `ListJobs`, shared by `fairway jobs list` and `fairway
//! dead list`: one page per call unless `--all`, a pasteable command for
//! the next page, and `--json` lines.

use super::format::{shell_quote, state_name, system_time};
use super::{emit, CliResult, Remote, Screen};
use fairway::pb;

/// The options every job listing takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The queue to list.
    pub queue: String,
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this environment's jobs.
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Jobs per page (the broker may return fewer and a token to go on).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue from the token a previous page printed.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow page tokens to the end.
    #[arg(long)]
    pub all: bool,
    /// One JSON object per job on stdout; the next-page hint goes to stderr
    /// so stdout stays JSON.
    #[arg(long)]
    pub json: bool,
}

/// What differs between the listings built on [`run`].
pub struct Listing<'a> {
    /// What the jobs are called in messages, e.g. "dead letters".
    pub noun: &'a str,
    /// The words after `fairway` and before QUEUE, e.g. `["dead", "list"]`.
    pub command: &'a [&'a str],
    /// The listing's own options, repeated in the next-page command.
    pub extra: Vec<String>,
    /// The state to list; `None` = every state.
    pub state: Option<pb::JobState>,
    /// The table of one batch of jobs.
    pub render: &'a dyn Fn(&[pb::Job], Screen) -> String,
}

/// Lists one page, or every page with `--all`. The table waits for all its
/// pages so the columns line up; `--json` prints each page as it comes.
pub async fn run(remote: &Remote, a: &ListArgs, l: Listing<'_>) -> CliResult {
    let mut admin = remote.connect().await?.admin();
    let mut token = a.page_token.clone().unwrap_or_default();
    let mut jobs = Vec::new();
    let mut listed = 0usize;
    loop {
        let page = admin
            .list_jobs(pb::ListJobsRequest {
                queue: a.queue.clone(),
                state: l.state.map_or(0, |s| s as i32),
                tenant: a.tenant.clone().unwrap_or_default(),
                environment: a.environment.clone().unwrap_or_default(),
                page_size: a.limit,
                page_token: token,
            })
            .await?
            .into_inner();
        listed += page.jobs.len();
        if a.json {
            let mut lines = String::new();
            for j in &page.jobs {
                lines.push_str(&job_json(j).to_string());
                lines.push('\n');
            }
            emit(&lines)?;
        } else {
            jobs.extend(page.jobs);
        }
        token = page.next_page_token;
        if token.is_empty() || !a.all {
            break;
        }
    }
    if !a.json {
        if jobs.is_empty() {
            let filtered = if a.tenant.is_some() || a.environment.is_some() { " matching the filters" } else { "" };
            let msg = if token.is_empty() {
                format!("no {}{filtered} in {}\n", l.noun, a.queue)
            } else {
                // Each call scans a bounded number of entries, so a page can
                // be empty and still not be the last.
                format!("no {}{filtered} on this page\n", l.noun)
            };
            emit(&msg)?;
        } else {
            emit(&(l.render)(&jobs, Screen::stdout()))?;
        }
    }
    if !token.is_empty() {
        let cmd = next_page_command(&super::confirm::program(), remote, a, &l, &token);
        let hint = format!("{listed} listed; next page token: {token}\nnext page: {cmd}\n");
        if a.json {
            eprint!("{hint}");
        } else {
            emit(&hint)?;
        }
    }
    Ok(())
}

/// The command that lists the page after this one, with the same filters.
/// `program` is the name to start it with (see `confirm::program`).
fn next_page_command(program: &str, remote: &Remote, a: &ListArgs, l: &Listing<'_>, token: &str) -> String {
    let mut words: Vec<String> = vec![program.to_string()];
    words.extend(remote.flags());
    words.extend(l.command.iter().map(|w| w.to_string()));
    words.push(a.queue.clone());
    words.extend(l.extra.iter().cloned());
    for (flag, value) in [("--tenant", &a.tenant), ("--env", &a.environment)] {
        if let Some(v) = value {
            words.extend([flag.into(), v.clone()]);
        }
    }
    words.extend(["--limit".into(), a.limit.to_string(), "--page-token".into(), token.into()]);
    if a.json {
        words.push("--json".into());
    }
    words.iter().map(|w| shell_quote(w).into_owned()).collect::<Vec<_>>().join(" ")
}

fn json_time(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(system_time).map_or(serde_json::Value::Null, |t| humantime::format_rfc3339_millis(t).to_string().into())
}

/// Every field of a job as one JSON object. The payload is `payload` (text)
/// when it is UTF-8, else `payload_hex`, whole in both cases.
pub fn job_json(j: &pb::Job) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> =
        j.headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    let mut o = serde_json::json!({
        "id": j.id,
        "queue": j.queue,
        "state": state_name(j.state),
        "tenant": j.tenant,
        "environment": j.environment,
        "priority": j.priority,
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "last_error": j.last_error,
        "created_at": json_time(j.created_at.as_ref()),
        "run_at": json_time(j.run_at.as_ref()),
        "lease_expires_at": json_time(j.lease_expires_at.as_ref()),
        "lease_duration_ms": j.lease_duration.as_ref().map(|d| super::format::duration(d).as_millis() as u64),
        "dedup_key": j.dedup_key,
        "traceparent": j.traceparent,
        "headers": headers,
    });
    let payload = match std::str::from_utf8(&j.payload) {
        Ok(text) => ("payload", serde_json::Value::from(text)),
        Err(_) => ("payload_hex", hex::encode(&j.payload).into()),
    };
    if let Some(map) = o.as_object_mut() {
        map.insert(payload.0.into(), payload.1);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ListArgs {
        ListArgs {
            queue: "emails".into(),
            tenant: Some("acme corp".into()),
            environment: None,
            limit: 2,
            page_token: None,
            all: false,
            json: false,
        }
    }

    fn no_table(_: &[pb::Job], _: Screen) -> String {
        String::new()
    }

    #[test]
    fn next_page_command_repeats_the_filters() {
        let l = Listing {
            noun: "jobs",
            command: &["jobs", "list"],
            extra: vec!["--state".into(), "ready".into()],
            state: Some(pb::JobState::Ready),
            render: &no_table,
        };
        assert_eq!(
            next_page_command("fairway", &Remote::plain(fairway::client::DEFAULT_ADDR), &args(), &l, "0a0b"),
            "fairway jobs list emails --state ready --tenant 'acme corp' --limit 2 --page-token 0a0b"
        );
        let json = ListArgs { json: true, ..args() };
        assert_eq!(
            next_page_command("scripts/fairway", &Remote::plain("http://h:1"), &json, &l, "ff"),
            "scripts/fairway --addr http://h:1 jobs list emails --state ready --tenant 'acme corp' --limit 2 --page-token ff \
             --json"
        );
    }

    #[test]
    fn job_json_escapes_text_and_hexes_binary() {
        let mut j = pb::Job {
            id: "00ff".into(),
            state: pb::JobState::Dead as i32,
            last_error: "said \"no\"\n".into(),
            payload: b"{\"a\":1}".to_vec().into(),
            created_at: Some(prost_types::Timestamp { seconds: 1_750_000_000, nanos: 250_000_000 }),
            ..Default::default()
        };
        j.headers.insert("k".into(), "v".into());
        let text = job_json(&j).to_string();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back["state"], "dead");
        assert_eq!(back["last_error"], "said \"no\"\n");
        assert_eq!(back["payload"], "{\"a\":1}");
        assert_eq!(back["headers"]["k"], "v");
        assert_eq!(back["created_at"], "2025-06-15T15:06:40.250Z");
        assert!(back["lease_expires_at"].is_null() && back.get("payload_hex").is_none(), "{text}");
        j.payload = vec![0xff, 0x00].into();
        let back = job_json(&j);
        assert_eq!(back["payload_hex"], "ff00");
        assert!(back.get("payload").is_none());
    }
}
