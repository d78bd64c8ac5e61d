//! The terminal client (`fairway queue|enqueue|stats|jobs|dead|workers|health`)
//! against a live broker.

mod common;

use common::*;
use fairway::pb;
use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::Duration;

async fn fairway(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
    cmd.arg("--addr").arg(format!("http://{addr}")).args(args);
    tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run fairway")
}

/// Runs a command line the CLI printed, e.g. its next-page command, as it
/// is (no `--addr` added: the printed line must carry it).
async fn run_printed(line: &str) -> Output {
    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
    // It starts with the name the CLI was run by (here its path), so it
    // runs as pasted.
    assert_eq!(words.first().map(String::as_str), Some(env!("CARGO_BIN_EXE_fairway")), "{line}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
    cmd.args(&words[1..]).env_remove("FAIRWAY_ADDR");
    tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run fairway")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn cli_creates_enqueues_inspects_and_deletes() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    let out = stdout(&fairway(&addr, &["queue", "create", "emails", "--max-attempts", "5", "--lease", "1m"]).await);
    assert!(out.contains("emails") && out.contains("max_attempts=5") && out.contains("lease=60s"), "{out}");

    let id = stdout(
        &fairway(
            &addr,
            &[
                "enqueue",
                "emails",
                "--tenant",
                "acme",
                "--env",
                "prod",
                "--payload",
                "hi",
                "--priority",
                "-2",
                "--header",
                "k=v",
            ],
        )
        .await,
    );
    let id = id.trim();
    assert_eq!(id.len(), 16, "{id}");
    let dup = stdout(&fairway(&addr, &["enqueue", "emails", "--dedup-key", "x", "--payload", "a"]).await);
    let dup2 = stdout(&fairway(&addr, &["enqueue", "emails", "--dedup-key", "x", "--payload", "a"]).await);
    assert!(dup2.contains("(deduplicated)") && dup2.starts_with(dup.trim()), "{dup} / {dup2}");
    stdout(&fairway(&addr, &["enqueue", "emails", "--delay", "1h", "--payload", "later"]).await);

    let stats = stdout(&fairway(&addr, &["queue", "stats", "emails"]).await);
    assert!(stats.contains("ready 2") && stats.contains("scheduled 1") && stats.contains("deduplicated 1"), "{stats}");
    assert!(stats.contains("acme") && stats.contains("prod"), "{stats}");

    let p = stdout(
        &fairway(
            &addr,
            &[
                "tenant",
                "set-policy",
                "emails",
                "acme",
                "--weight",
                "4",
                "--max-in-flight",
                "2",
                "--enqueue-rate",
                "50",
            ],
        )
        .await,
    );
    assert!(p.contains("weight=4") && p.contains("max_in_flight=2") && p.contains("enqueue_rate=50"), "{p}");
    let p =
        stdout(&fairway(&addr, &["tenant", "set-policy", "emails", "acme", "--env", "prod", "--weight", "3"]).await);
    assert!(p.contains("prod=3") && p.contains("weight=4"), "{p}");
    let stats = stdout(&fairway(&addr, &["queue", "stats", "emails"]).await);
    assert!(stats.contains("POLICY") && stats.contains("prod=3"), "{stats}");

    let paused = stdout(&fairway(&addr, &["queue", "pause", "emails"]).await);
    assert!(paused.contains("paused=true"), "{paused}");
    let resumed = stdout(&fairway(&addr, &["queue", "resume", "emails"]).await);
    assert!(resumed.contains("paused=false"), "{resumed}");
    assert!(stdout(&fairway(&addr, &["queue", "list"]).await).contains("emails"));
    assert_eq!(stdout(&fairway(&addr, &["health"]).await).trim(), "SERVING");

    let again = fairway(&addr, &["queue", "create", "emails"]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"));
    let refused = fairway(&addr, &["queue", "delete", "emails"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("force"), "{}", String::from_utf8_lossy(&refused.stderr));
    stdout(&fairway(&addr, &["queue", "delete", "emails", "--force"]).await);
    s.stop().await;

    // With the broker gone, health fails with a message a person can act on.
    let down = fairway(&addr, &["health"]).await;
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the broker"));
}

/// Job ids at the start of table rows (16 hex digits), in order.
fn ids_in(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(String::from)
        .collect()
}

/// The command a listing printed for its next page, if any.
fn next_page(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("next page: ")).map(String::from)
}

/// The row of `queue` in a stats table, split into its cells.
fn row_of<'a>(table: &'a str, queue: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(queue));
    line.unwrap_or_else(|| panic!("no row for {queue} in:\n{table}")).split_whitespace().collect()
}

/// Enqueues `n` jobs for `tenant`/prod, leases them and nacks them dead
/// with a two-line error. The queue must hold no other ready jobs.
async fn make_dead(s: &TestServer, queue: &str, tenant: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.enqueue(job(queue, tenant, "prod", &format!("payload {i}"))).await.job_id);
    }
    let mut leased = Vec::new();
    while leased.len() < n {
        let got = s.lease(queue, n as u32, Duration::from_secs(5), Some(Duration::from_secs(60))).await;
        assert!(!got.is_empty(), "the jobs just enqueued were not delivered");
        leased.extend(got);
    }
    for d in &leased {
        let id = d.job.as_ref().expect("job").id.clone();
        let nack = pb::NackRequest {
            queue: queue.into(),
            error: format!("failure of {id}\n  at worker.py:42"),
            job_id: id,
            lease_id: d.lease_id.clone(),
            dead: true,
            ..Default::default()
        };
        s.workers().nack(nack).await.expect("nack");
    }
    ids
}

#[tokio::test]
async fn stats_table_and_watch_show_counts_and_alerts() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    let config =
        pb::QueueConfig { alert_unattended_after: Some(dur(Duration::from_millis(100))), ..Default::default() };
    s.create_queue("emails", config).await;
    s.create_queue("quiet", pb::QueueConfig::default()).await;
    s.admin().pause_queue(pb::PauseQueueRequest { queue: "quiet".into() }).await.expect("pause");

    // ops: one dead, one leased; then 3 + 1 ready in two groups, 1 scheduled.
    s.enqueue(job("emails", "ops", "default", "a")).await;
    s.enqueue(job("emails", "ops", "default", "b")).await;
    let leased = s.lease("emails", 2, Duration::from_secs(5), Some(Duration::from_secs(60))).await;
    assert_eq!(leased.len(), 2);
    let first = leased[0].job.as_ref().expect("job");
    let nack = pb::NackRequest {
        queue: "emails".into(),
        job_id: first.id.clone(),
        lease_id: leased[0].lease_id.clone(),
        dead: true,
        ..Default::default()
    };
    s.workers().nack(nack).await.expect("nack");
    for _ in 0..3 {
        s.enqueue(job("emails", "acme", "prod", "x")).await;
    }
    s.enqueue(job("emails", "globex", "staging", "y")).await;
    let mut later = job("emails", "acme", "prod", "later");
    later.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_secs(3600))));
    s.enqueue(later).await;
    let stats = eventually(Duration::from_secs(10), || async {
        let st = s.stats("emails").await;
        st.alerts.iter().any(|a| a.kind == "unattended").then_some(st)
    })
    .await;
    assert_eq!((stats.ready, stats.scheduled, stats.leased, stats.dead), (4, 1, 1, 1));

    let table = stdout(&fairway(&addr, &["stats"]).await);
    assert!(table.starts_with("QUEUE"), "{table}");
    let emails = row_of(&table, "emails");
    // queue ready scheduled leased dead oldest enq/s ack/s workers alerts
    assert_eq!(emails[1..5], ["4", "1", "1", "1"], "{table}");
    assert_ne!(emails[5], "-", "4 jobs are ready, so there is an oldest one: {table}");
    assert_eq!(emails[6..9], ["-", "-", "0"], "no rates on a first snapshot: {table}");
    let kinds: Vec<&str> = emails[9].split(',').collect();
    assert!(kinds.contains(&"unattended") && kinds.contains(&"dead_lettering"), "{table}");
    assert_eq!(row_of(&table, "quiet")[1..], ["0", "0", "0", "0", "-", "-", "-", "0", "paused"], "{table}");

    let out = stdout(&fairway(&addr, &["stats", "emails", "--watch", "--count", "2", "--interval", "200ms"]).await);
    assert!(!out.contains('\x1b'), "no screen clearing when stdout is a pipe:\n{out}");
    let snapshots: Vec<&str> = out.split("== fairway stats emails · every 200ms · ").skip(1).collect();
    assert_eq!(snapshots.len(), 2, "{out}");
    for (i, snap) in snapshots.iter().enumerate() {
        let row = row_of(snap, "emails");
        assert_eq!(row[1..5], ["4", "1", "1", "1"], "{snap}");
        // Rates come from two snapshots; nothing moved between them.
        let rates = if i == 0 { ["-", "-"] } else { ["0.0", "0.0"] };
        assert_eq!(row[6..8], rates, "snapshot {i}:\n{snap}");
        assert!(snap.lines().any(|l| l.starts_with("  unattended (for ") && l.contains("no worker")), "{snap}");
        let groups: Vec<Vec<&str>> = snap
            .lines()
            .skip_while(|l| !l.starts_with("TENANT"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        let want: Vec<Vec<&str>> =
            vec![vec!["acme", "prod", "3", "0"], vec!["globex", "staging", "1", "0"], vec!["ops", "default", "0", "1"]];
        assert_eq!(groups, want, "largest first:\n{snap}");
    }

    let missing = fairway(&addr, &["stats", "nope", "--watch", "--count", "2"]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("error: NotFound"), "{missing:?}");
    s.stop().await;
}

#[tokio::test]
async fn dead_list_pages_through_every_dead_letter_once() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    s.create_queue("mail", pb::QueueConfig::default()).await;
    let mut dead = make_dead(&s, "mail", "acme", 3).await;
    dead.extend(make_dead(&s, "mail", "globex", 2).await);
    // Ready jobs are not dead letters and must not be listed.
    s.enqueue(job("mail", "acme", "prod", "alive")).await;
    let want: HashSet<String> = dead.iter().cloned().collect();

    // Follow the printed next-page command until there is none.
    let mut out = stdout(&fairway(&addr, &["dead", "list", "mail", "--limit", "2"]).await);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let ids = ids_in(&out);
        assert!(!ids.is_empty() && ids.len() <= 2, "page {pages}:\n{out}");
        assert!(out.lines().any(|l| l.contains("1/10") && l.contains("at worker.py:42")), "{out}");
        seen.extend(ids);
        match next_page(&out) {
            Some(cmd) => {
                assert!(cmd.contains("--limit 2 --page-token "), "{cmd}");
                out = stdout(&run_printed(&cmd).await);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "5 dead letters in pages of 2");
    assert_eq!(seen.len(), 5, "no duplicates: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), want);

    let all = stdout(&fairway(&addr, &["dead", "list", "mail", "--limit", "2", "--all"]).await);
    assert_eq!(ids_in(&all).into_iter().collect::<HashSet<_>>(), want, "{all}");
    assert_eq!(ids_in(&all).len(), 5, "{all}");
    assert!(next_page(&all).is_none() && all.starts_with("JOB "), "{all}");

    let acme = stdout(&fairway(&addr, &["dead", "list", "mail", "--tenant", "acme"]).await);
    assert_eq!(ids_in(&acme), dead[..3].to_vec(), "{acme}");

    // --json: one object per job on stdout, the hint on stderr.
    let page = fairway(&addr, &["dead", "list", "mail", "--limit", "2", "--json"]).await;
    let lines: Vec<serde_json::Value> =
        stdout(&page).lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect();
    assert_eq!(lines.len(), 2);
    let hint = String::from_utf8_lossy(&page.stderr);
    assert!(next_page(&hint).is_some_and(|c| c.ends_with("--json")), "{hint}");
    let json = stdout(&fairway(&addr, &["dead", "list", "mail", "--limit", "2", "--all", "--json"]).await);
    let jobs: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(jobs.len(), 5, "{json}");
    let ids: HashSet<String> = jobs.iter().filter_map(|j| j["id"].as_str().map(String::from)).collect();
    assert_eq!(ids, want);
    for j in &jobs {
        let id = j["id"].as_str().unwrap_or_default();
        assert_eq!(j["state"], "dead");
        assert_eq!(j["last_error"], format!("failure of {id}\n  at worker.py:42"), "whole, newline kept");
        assert!(j["payload"].as_str().is_some_and(|p| p.starts_with("payload ")), "{j}");
        assert_eq!(j["attempt"], 1);
    }
    s.stop().await;
}

#[tokio::test]
async fn dead_redrive_moves_dead_letters_back_to_ready() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    s.create_queue("mail", pb::QueueConfig::default()).await;
    make_dead(&s, "mail", "acme", 4).await;
    make_dead(&s, "mail", "globex", 1).await;

    let out = stdout(&fairway(&addr, &["dead", "redrive", "mail", "--tenant", "acme", "--limit", "3"]).await);
    assert_eq!(out.trim(), "moved 3 dead letters of mail back to ready");
    let st = s.stats("mail").await;
    assert_eq!((st.ready, st.dead), (3, 2));

    let out = stdout(&fairway(&addr, &["dead", "redrive", "mail"]).await);
    assert_eq!(out.trim(), "moved 2 dead letters of mail back to ready");
    let table = stdout(&fairway(&addr, &["stats"]).await);
    assert_eq!(row_of(&table, "mail")[1..5], ["5", "0", "0", "0"], "{table}");
    let st = s.stats("mail").await;
    assert_eq!((st.ready, st.dead), (5, 0));
    assert_eq!(stdout(&fairway(&addr, &["dead", "list", "mail"]).await).trim(), "no dead letters in mail");
    s.stop().await;
}

#[tokio::test]
async fn jobs_list_pages_by_state_and_get_shows_one_job() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    s.create_queue("work", pb::QueueConfig::default()).await;
    let leased = s.enqueue(job("work", "ops", "default", "busy")).await.job_id;
    assert_eq!(s.lease("work", 1, Duration::from_secs(5), Some(Duration::from_secs(60))).await.len(), 1);
    let mut ready = Vec::new();
    for (t, e) in [("acme", "prod"), ("acme", "prod"), ("acme", "dev"), ("globex", "prod"), ("initech", "prod")] {
        ready.push(s.enqueue(job("work", t, e, "r")).await.job_id);
    }
    let mut req = job("work", "acme", "prod", "hello\nworld");
    req.headers.insert("trace".into(), "abc".into());
    req.priority = 7;
    req.schedule = Some(pb::enqueue_request::Schedule::Delay(dur(Duration::from_secs(3600))));
    let scheduled = s.enqueue(req).await.job_id;

    let mut out = stdout(&fairway(&addr, &["jobs", "list", "work", "--state", "ready", "--limit", "2"]).await);
    let mut seen = Vec::new();
    loop {
        let rows: Vec<&str> = out.lines().filter(|l| !ids_in(l).is_empty()).collect();
        assert!(!rows.is_empty() && rows.len() <= 2, "{out}");
        assert!(rows.iter().all(|r| r.split_whitespace().nth(1) == Some("ready")), "{out}");
        seen.extend(ids_in(&out));
        match next_page(&out) {
            Some(cmd) => out = stdout(&run_printed(&cmd).await),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ready.iter().cloned().collect());

    let sched = stdout(&fairway(&addr, &["jobs", "list", "work", "--state", "scheduled"]).await);
    assert_eq!(ids_in(&sched), std::slice::from_ref(&scheduled), "{sched}");
    assert!(sched.starts_with("ID") && sched.lines().next().is_some_and(|h| h.ends_with("RUN AT")), "{sched}");
    let row: Vec<&str> = sched.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[1..6], ["scheduled", "acme", "prod", "7", "0/10"], "{sched}");
    let leased_out = stdout(&fairway(&addr, &["jobs", "list", "work", "--state", "leased"]).await);
    assert_eq!(ids_in(&leased_out), std::slice::from_ref(&leased));
    let every = stdout(&fairway(&addr, &["jobs", "list", "work", "--all", "--limit", "3"]).await);
    assert_eq!(ids_in(&every).len(), 7, "{every}");

    let got = stdout(&fairway(&addr, &["jobs", "get", "work", &scheduled]).await);
    for want in [
        format!("id                {scheduled}\n"),
        "state             scheduled\n".into(),
        "tenant            acme\n".into(),
        "priority          7\n".into(),
        "headers           trace=abc\n".into(),
        "payload (11 bytes, text):\n  hello\n  world\n".into(),
    ] {
        assert!(got.contains(&want), "{want:?} missing from:\n{got}");
    }
    let json = stdout(&fairway(&addr, &["jobs", "get", "work", &scheduled, "--json"]).await);
    let j: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!((j["payload"].as_str(), j["headers"]["trace"].as_str()), (Some("hello\nworld"), Some("abc")));

    let missing = fairway(&addr, &["jobs", "get", "work", "00000000000000ff"]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: NotFound: "), "{missing:?}");
    let bad = fairway(&addr, &["jobs", "list", "work", "--state", "done"]).await;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("[possible values: ready, scheduled, leased, dead]"), "{err}");
    s.stop().await;
}

/// The commands that delete or move jobs: one job by id, or a filtered set;
/// bulk deletes refuse to run unasked without a terminal.
#[tokio::test]
async fn cli_cancels_purges_redrives_and_deletes_and_lists_workers() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    let cfg = pb::QueueConfig { max_attempts: 1, ..Default::default() };
    s.create_queue("ops", cfg).await;
    let id = |o: &Output| stdout(o).trim().to_string();
    let ready = id(&fairway(&addr, &["enqueue", "ops", "--tenant", "acme", "--payload", "r"]).await);
    let later = id(&fairway(&addr, &["enqueue", "ops", "--tenant", "acme", "--delay", "1h", "--payload", "s"]).await);
    // Three dead letters: two of acme, one of globex.
    for t in ["acme", "acme", "globex"] {
        fairway(&addr, &["enqueue", "ops", "--tenant", t, "--env", "prod", "--payload", "d"]).await;
    }
    let leased = s.lease("ops", 4, Duration::from_secs(5), None).await;
    let mut dead = Vec::new();
    for d in &leased {
        let j = d.job.as_ref().unwrap();
        if j.environment == "prod" {
            let nack = pb::NackRequest {
                queue: "ops".into(),
                job_id: j.id.clone(),
                lease_id: d.lease_id.clone(),
                dead: true,
                ..Default::default()
            };
            s.workers().nack(nack).await.expect("nack");
            dead.push((j.tenant.clone(), j.id.clone()));
        } else {
            s.workers()
                .release(pb::ReleaseRequest { queue: "ops".into(), job_id: j.id.clone(), lease_id: d.lease_id.clone() })
                .await
                .expect("release");
        }
    }
    assert_eq!(s.stats("ops").await.dead, 3);

    // jobs cancel: the ready one goes.
    assert_eq!(
        stdout(&fairway(&addr, &["jobs", "cancel", "ops", &ready]).await).trim(),
        format!("cancelled job {ready} of ops")
    );
    // dead redrive ID, then dead delete ID, which refuses a job that is not dead.
    let (_, acme1) = dead.iter().find(|(t, _)| t == "acme").unwrap().clone();
    let out = stdout(&fairway(&addr, &["dead", "redrive", "ops", &acme1]).await);
    assert_eq!(out.trim(), format!("moved dead letter {acme1} of ops back to ready"));
    let refused = fairway(&addr, &["dead", "delete", "ops", &acme1]).await;
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("is not a dead letter (it is ready)")
    );
    let missing = fairway(&addr, &["dead", "redrive", "ops", &ready]).await;
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    // Bulk deletes need --yes without a terminal (stdin is not one here).
    let unasked = fairway(&addr, &["dead", "delete", "ops", "--tenant", "globex"]).await;
    assert!(!unasked.status.success());
    assert!(
        String::from_utf8_lossy(&unasked.stderr).contains("Add --yes"),
        "{}",
        String::from_utf8_lossy(&unasked.stderr)
    );
    assert_eq!(s.stats("ops").await.dead, 2, "nothing deleted unasked");
    let out = stdout(&fairway(&addr, &["dead", "delete", "ops", "--tenant", "globex", "--yes"]).await);
    assert_eq!(out.trim(), "deleted 1 dead letter of ops");
    let out = stdout(&fairway(&addr, &["dead", "delete", "ops", "--yes"]).await);
    assert_eq!(out.trim(), "deleted 1 dead letter of ops");
    // queue purge by state.
    let unasked = fairway(&addr, &["queue", "purge", "ops", "--state", "scheduled"]).await;
    assert!(!unasked.status.success());
    let out = stdout(&fairway(&addr, &["queue", "purge", "ops", "--state", "scheduled", "--yes"]).await);
    assert_eq!(out.trim(), "purged 1 job of ops");
    let gone = s.jobs().get_job(pb::GetJobRequest { queue: "ops".into(), job_id: later }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let st = s.stats("ops").await;
    assert_eq!((st.ready, st.scheduled, st.dead, st.released_total), (1, 0, 0, 1), "{st:?}");

    // workers: none, then one on a Work stream, with the job it holds.
    assert_eq!(stdout(&fairway(&addr, &["workers"]).await).trim(), "no workers connected");
    let client =
        fairway::client::Client::connect(&fairway::client::ClientConfig::new(format!("http://{addr}"))).await.unwrap();
    let sub = pb::Subscribe {
        queues: vec!["ops".into()],
        worker_id: "cli-worker".into(),
        worker_version: "1.0".into(),
        max_in_flight: 2,
        ..Default::default()
    };
    let mut work = client.work(sub).await.unwrap();
    let d = work.next_delivery().await.unwrap().unwrap();
    let out = stdout(&fairway(&addr, &["workers", "ops", "--jobs"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("WORKER") && lines[1].starts_with("cli-worker"), "{out}");
    assert!(lines[1].contains("1/2") && lines[1].ends_with("working"), "{out}");
    assert!(out.contains(&d.job.as_ref().unwrap().id), "{out}");
    work.settler().drain().await.unwrap();
    eventually(Duration::from_secs(5), || async {
        stdout(&fairway(&addr, &["workers"]).await).contains("draining").then_some(())
    })
    .await;
    drop(work);
    s.stop().await;
}
