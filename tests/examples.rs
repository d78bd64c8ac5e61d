//! The worker libraries in examples/python and examples/node, each driven
//! through its example script against a live broker: parallel jobs and
//! retries, lease heartbeats on a job longer than its lease, dead-lettering
//! a failing job, a graceful SIGTERM (drain, release what never started,
//! finish what runs), a kill -9, and reconnecting after a broker restart.
//! Every test runs once per language.
//!
//! The example scripts print one JSON line per event (started, done, acked,
//! nacked, dead, released, lost) and a summary line at exit, which is what
//! these tests read.

mod common;

use common::*;
use fairway::pb;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

fn node() -> String {
    let modules = format!("{ROOT}/examples/node/node_modules/@grpc/grpc-js");
    assert!(Path::new(&modules).exists(), "{modules} missing: run scripts/setup (it runs npm ci in examples/node)");
    std::env::var("FAIRWAY_NODE").unwrap_or_else(|_| "node".into())
}

impl Lang {
    fn command(self) -> Command {
        let (program, script) = match self {
            Lang::Python => (python(), "examples/python/worker.py"),
            Lang::Node => (node(), "examples/node/worker.js"),
        };
        let mut cmd = Command::new(program);
        cmd.arg(format!("{ROOT}/{script}"));
        cmd
    }
}

/// An example worker process, its stdout parsed line by line as it comes.
struct Worker {
    child: Child,
    lang: Lang,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How a worker process ended.
struct Finished {
    events: Vec<Value>,
    summary: Value,
}

impl Finished {
    fn events(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }
}

impl Worker {
    fn start(lang: Lang, addr: SocketAddr, queue: &str, args: &[&str]) -> Worker {
        let mut cmd = lang.command();
        cmd.args(["--addr", &addr.to_string(), "--queue", queue]).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the {lang:?} worker: {e}"));
        let (lines, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(String::new())));
        let out = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // A line that is not JSON is kept as a string, to show in a failure.
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Worker { child, lang, lines, stderr, readers: vec![stdout_reader, stderr_reader] }
    }

    /// What the worker printed so far, for failure messages.
    fn output(&self) -> String {
        let lines: Vec<String> = self.lines.lock().unwrap().iter().map(|v| v.to_string()).collect();
        format!("{:?} worker stdout:\n{}\nstderr:\n{}", self.lang, lines.join("\n"), self.stderr.lock().unwrap())
    }

    /// Waits for the first event line of `kind` about job `id`.
    async fn wait_for(&self, kind: &str, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self.lines.lock().unwrap().iter().find(|e| e["event"] == kind && e["id"] == id).cloned();
            if let Some(e) = found {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event for {id} within {timeout:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM through the shell's `kill` builtin (no libc crate needed).
    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("sh").args(["-c", "kill -TERM \"$0\"", &pid]).status().expect("sh").success();
        assert!(ok, "kill -TERM {pid} failed");
    }

    /// SIGKILL: the process gets no chance to settle or release anything.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own (it must succeed) and reads
    /// everything it printed.
    async fn finish(&mut self, timeout: Duration) -> Finished {
        let deadline = tokio::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {timeout:?}\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipes are closed now: the readers end once they have read it all.
        for r in std::mem::take(&mut self.readers) {
            tokio::task::spawn_blocking(move || r.join()).await.unwrap().expect("reader thread");
        }
        assert!(status.success(), "the worker exited with {status}\n{}", self.output());
        let events = self.lines.lock().unwrap().clone();
        let summary = events.last().filter(|v| v.get("acked").is_some()).cloned();
        let summary = summary.unwrap_or_else(|| panic!("no summary line at exit\n{}", self.output()));
        Finished { events, summary }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of the events of `kind`, sorted.
fn ids(events: &[&Value]) -> Vec<String> {
    let mut out: Vec<String> = events.iter().map(|e| e["id"].as_str().expect("id").to_string()).collect();
    out.sort();
    out
}

async fn get_job(s: &TestServer, queue: &str, id: &str) -> pb::Job {
    let req = pb::GetJobRequest { queue: queue.into(), job_id: id.into() };
    s.jobs().get_job(req).await.unwrap_or_else(|e| panic!("get job {id}: {e}")).into_inner()
}

fn results(summary: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<_> = summary["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| (j["result"].as_str().unwrap().to_string(), j["attempt"].as_u64().unwrap()))
        .collect();
    out.sort();
    out
}

/// Runs `$name(Lang)` as a test per language: `$name::python`, `$name::node`.
macro_rules! both_languages {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn python() {
                super::$name(super::Lang::Python).await
            }
            #[tokio::test]
            async fn node() {
                super::$name(super::Lang::Node).await
            }
        }
    )*};
}

both_languages!(
    completes_jobs_in_parallel_and_retries,
    extends_the_lease_of_a_slow_job,
    dead_letters_a_failing_job,
    finishes_its_job_on_sigterm,
    a_graceful_stop_spends_no_attempt_of_a_job_it_never_ran,
    a_graceful_stop_releases_the_jobs_it_holds_unstarted_after_reconnects,
    a_kill_9_of_a_worker_counts_its_running_job_as_an_attempt,
    reconnects_after_a_broker_restart,
);

async fn completes_jobs_in_parallel_and_retries(lang: Lang) {
    let s = TestServer::start().await;
    s.create_queue("emails", Default::default()).await;
    for p in ["sleep:0.5:one", "sleep:0.5:two", "sleep:0.5:three", "sleep:0.5:four", "retry-me"] {
        s.enqueue(job("emails", "acme", "prod", p)).await;
    }
    // Five acks and the one nack of "retry-me"'s first attempt.
    let mut w = Worker::start(lang, s.addr, "emails", &["--concurrency", "2", "--count", "6"]);
    let done = w.finish(Duration::from_secs(60)).await;
    assert_eq!(done.summary["acked"], 5, "{}", done.summary);
    let want = [("four", 1), ("one", 1), ("retry-me", 2), ("three", 1), ("two", 1)];
    assert_eq!(results(&done.summary), want.map(|(r, a)| (r.to_string(), a)));

    // The handler ran two jobs at once, and never more.
    let (mut running, mut most) = (0, 0);
    for e in &done.events {
        match e["event"].as_str() {
            Some("started") => running += 1,
            Some("done") => running -= 1,
            _ => {}
        }
        most = most.max(running);
    }
    assert_eq!(most, 2, "{:?}", done.events);

    let st = s.stats("emails").await;
    assert_eq!((st.acked_total, st.nacked_total, st.ready, st.scheduled, st.leased), (5, 1, 0, 0, 0));
    // The stream's establishment is logged, with the worker's id and version.
    let out = w.output();
    assert!(out.contains(&format!("connected to {} as ", s.addr)), "{out}");
    assert!(out.contains("(version example-1)"), "{out}");
    s.stop().await;
}

async fn extends_the_lease_of_a_slow_job(lang: Lang) {
    let s = TestServer::start().await;
    let config = pb::QueueConfig { default_lease_duration: Some(dur(Duration::from_secs(1))), ..Default::default() };
    s.create_queue("reports", config).await;
    let id = s.enqueue(job("reports", "acme", "prod", "sleep:3:report")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "reports", &["--count", "1"]);
    let done = w.finish(Duration::from_secs(60)).await;

    // Three times its lease, yet delivered once: without heartbeats the
    // lease would expire and the job run again as attempt 2.
    assert_eq!(results(&done.summary), [("report".to_string(), 1)]);
    assert_eq!(done.events("started").len(), 1, "{:?}", done.events);
    assert_eq!(done.summary["jobs"][0]["id"], id.as_str());
    let st = s.stats("reports").await;
    assert_eq!((st.leased_total, st.expired_total, st.acked_total, st.nacked_total), (1, 0, 1, 0), "{st:?}");
    s.stop().await;
}

async fn dead_letters_a_failing_job(lang: Lang) {
    let s = TestServer::start().await;
    let config = pb::QueueConfig {
        max_attempts: 2,
        backoff_initial: Some(dur(Duration::from_millis(50))),
        ..Default::default()
    };
    s.create_queue("flaky", config).await;
    let id = s.enqueue(job("flaky", "acme", "prod", "fail-always")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "flaky", &["--count", "2"]);
    let done = w.finish(Duration::from_secs(60)).await;
    // The first nack retries it; the second's Outcome says it is dead.
    let counts = ["acked", "nacked", "dead"].map(|k| done.summary[k].as_u64());
    assert_eq!(counts, [Some(0), Some(1), Some(1)], "{}", done.summary);
    let dead_events = done.events("dead");
    assert_eq!(dead_events.len(), 1, "{:?}", done.events);
    assert_eq!((dead_events[0]["id"].as_str(), dead_events[0]["attempt"].as_u64()), (Some(id.as_str()), Some(2)));
    assert!(done.events("nacked").iter().all(|e| e["attempt"] == 1), "{:?}", done.events);
    let out = w.output();
    assert!(out.contains(&format!("dead-lettered job {id} after 2 attempts")), "{out}");

    let dead = eventually(Duration::from_secs(10), || async {
        let req = pb::ListJobsRequest { queue: "flaky".into(), state: pb::JobState::Dead as i32, ..Default::default() };
        let jobs = s.admin().list_jobs(req).await.expect("list").into_inner().jobs;
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].attempt), (id.as_str(), 2));
    // The handler's exception, as the library sent it in the nack.
    assert!(dead[0].last_error.contains("cannot process 'fail-always'"), "last_error: {:?}", dead[0].last_error);
    let st = s.stats("flaky").await;
    assert_eq!((st.dead, st.dead_lettered_total, st.nacked_total), (1, 1, 2));
    s.stop().await;
}

async fn finishes_its_job_on_sigterm(lang: Lang) {
    let s = TestServer::start().await;
    s.create_queue("deploys", Default::default()).await;
    let first = s.enqueue(job("deploys", "acme", "prod", "sleep:2:in-flight")).await.job_id;
    let second = s.enqueue(job("deploys", "acme", "prod", "queued-behind")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "deploys", &["--concurrency", "1"]);
    w.wait_for("started", &first, Duration::from_secs(30)).await;
    w.sigterm();
    let done = w.finish(Duration::from_secs(30)).await;

    // The running job finished and its ack reached the broker before exit.
    assert_eq!(results(&done.summary), [("in-flight".to_string(), 1)]);
    let st = s.stats("deploys").await;
    assert_eq!((st.acked_total, st.leased, st.expired_total, st.connected_workers), (1, 0, 0, 0), "{st:?}");
    // No new job was started; the one behind it is ready for another
    // worker, none of its attempts spent (never delivered, or released).
    assert!(done.events("started").iter().all(|e| e["id"] != second.as_str()), "{:?}", done.events);
    let behind = get_job(&s, "deploys", &second).await;
    assert_eq!((behind.state(), behind.attempt), (pb::JobState::Ready, 0), "{behind:?}");
    assert_eq!(done.summary["released"].as_u64(), Some(st.released_total), "{} vs {st:?}", done.summary);
    s.stop().await;
}

/// With one attempt allowed, a job the worker held but never ran must not
/// be spent by its stop. With concurrency 1 the second job can only reach
/// the worker in the moment between the first one's ack and the end of the
/// stream: the drain, sent on SIGTERM, keeps the broker from sending it,
/// and if it comes anyway it is released, not carried away by the stream's
/// end (which would count the attempt and dead-letter it).
async fn a_graceful_stop_spends_no_attempt_of_a_job_it_never_ran(lang: Lang) {
    let s = TestServer::start().await;
    s.create_queue("drain1", pb::QueueConfig { max_attempts: 1, ..Default::default() }).await;
    let first = s.enqueue(job("drain1", "acme", "prod", "sleep:3:first")).await.job_id;
    let second = s.enqueue(job("drain1", "acme", "prod", "second-never-ran")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "drain1", &["--concurrency", "1"]);
    w.wait_for("started", &first, Duration::from_secs(30)).await;
    w.sigterm();
    let done = w.finish(Duration::from_secs(30)).await;
    assert_eq!(results(&done.summary), [("first".to_string(), 1)]);
    assert!(done.events("started").iter().all(|e| e["id"] != second.as_str()), "{:?}", done.events);
    // If it was delivered at all, it was given back.
    let released = done.events("released");
    assert!(released.iter().all(|e| e["id"] == second.as_str()), "{:?}", done.events);
    assert_eq!(done.summary["released"].as_u64(), Some(released.len() as u64), "{}", done.summary);
    assert!(done.events("lost").is_empty(), "{:?}", done.events);

    let behind = get_job(&s, "drain1", &second).await;
    assert_eq!((behind.state(), behind.attempt), (pb::JobState::Ready, 0), "{behind:?}");
    let st = s.stats("drain1").await;
    let want = (1, 0, 0, 0, released.len() as u64, 1, 0, 0);
    let got = (
        st.acked_total,
        st.dead,
        st.dead_lettered_total,
        st.expired_total,
        st.released_total,
        st.ready,
        st.leased,
        st.connected_workers,
    );
    assert_eq!(got, want, "{st:?}");

    // Its one attempt is still there: the next worker runs it once, as attempt 1.
    let mut w = Worker::start(lang, s.addr, "drain1", &["--count", "1"]);
    let done = w.finish(Duration::from_secs(30)).await;
    assert_eq!(results(&done.summary), [("second-never-ran".to_string(), 1)]);
    assert_eq!(done.events("started").len(), 1, "{:?}", done.events);
    let st = s.stats("drain1").await;
    let got = (st.acked_total, st.dead, st.dead_lettered_total, st.ready, st.leased);
    assert_eq!(got, (2, 0, 0, 0, 0), "{st:?}");
    s.stop().await;
}

/// Deliveries that sit unstarted for sure: a worker with one slot, busy
/// with a long job, reconnects after each of two broker restarts (a
/// graceful stop keeps leases), and each new stream has a full window, so
/// each sends one more job that has to wait for the slot. On SIGTERM both
/// are released (the older one on the newer stream), and the busy job
/// still finishes and is acked.
async fn a_graceful_stop_releases_the_jobs_it_holds_unstarted_after_reconnects(lang: Lang) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path()).await;
    let config = pb::QueueConfig {
        max_attempts: 1,
        default_lease_duration: Some(dur(Duration::from_secs(30))),
        ..Default::default()
    };
    s.create_queue("backlog", config).await;
    let busy = s.enqueue(job("backlog", "acme", "prod", "sleep:20:busy")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "backlog", &["--concurrency", "1"]);
    w.wait_for("started", &busy, Duration::from_secs(30)).await;

    let addr = s.addr;
    let mut waiting = Vec::new();
    for payload in ["behind-1", "behind-2"] {
        s.stop().await;
        s = TestServer::start_at(dir.path(), addr).await;
        let id = s.enqueue(job("backlog", "acme", "prod", payload)).await.job_id;
        // Leased: the reconnected worker holds it, with no slot to run it.
        eventually(Duration::from_secs(30), || async {
            (get_job(&s, "backlog", &id).await.state() == pb::JobState::Leased).then_some(())
        })
        .await;
        waiting.push(id);
    }
    let busy_done = w.lines.lock().unwrap().iter().any(|e| e["event"] == "done" && e["id"] == busy.as_str());
    assert!(!busy_done, "the busy job ended before both restarts were over: it must run longer\n{}", w.output());

    w.sigterm();
    let done = w.finish(Duration::from_secs(60)).await;
    assert_eq!(results(&done.summary), [("busy".to_string(), 1)]);
    assert_eq!(done.events("started").len(), 1, "{:?}", done.events);
    waiting.sort();
    assert_eq!(ids(&done.events("released")), waiting, "{:?}", done.events);
    assert_eq!(done.summary["released"].as_u64(), Some(2), "{}", done.summary);
    for id in &waiting {
        let j = get_job(&s, "backlog", id).await;
        assert_eq!((j.state(), j.attempt), (pb::JobState::Ready, 0), "{j:?}");
    }
    let st = s.stats("backlog").await;
    let got = (st.released_total, st.dead, st.dead_lettered_total, st.expired_total, st.ready, st.leased);
    assert_eq!(got, (2, 0, 0, 0, 2, 0), "{st:?}");
    s.stop().await;
}

/// The other side of the rule: a worker that dies without a word (kill -9)
/// cannot say which jobs it never started, so the job it was running comes
/// back as a spent attempt, at once (its stream's end returns the lease,
/// no waiting for the 30 s lease to expire).
async fn a_kill_9_of_a_worker_counts_its_running_job_as_an_attempt(lang: Lang) {
    let s = TestServer::start().await;
    let config = pb::QueueConfig {
        max_attempts: 3,
        default_lease_duration: Some(dur(Duration::from_secs(30))),
        ..Default::default()
    };
    s.create_queue("crashy", config).await;
    let id = s.enqueue(job("crashy", "acme", "prod", "sleep:30:long")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "crashy", &["--concurrency", "1"]);
    w.wait_for("started", &id, Duration::from_secs(30)).await;
    w.kill9();

    let back = eventually(Duration::from_secs(15), || async {
        let j = get_job(&s, "crashy", &id).await;
        (j.state() == pb::JobState::Ready).then_some(j)
    })
    .await;
    // The worker's own account (and the stats) say how a job came back
    // without an attempt, should it ever do so.
    let st = s.stats("crashy").await;
    assert_eq!(back.attempt, 1, "{back:?}\n{st:?}\n{}", w.output());
    let got = (st.expired_total, st.released_total, st.dead, st.ready, st.leased);
    assert_eq!(got, (0, 0, 0, 1, 0), "{st:?}");
    s.stop().await;
}

async fn reconnects_after_a_broker_restart(lang: Lang) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path()).await;
    // Long enough for the lease to outlive the restart.
    let config = pb::QueueConfig { default_lease_duration: Some(dur(Duration::from_secs(30))), ..Default::default() };
    s.create_queue("imports", config).await;
    let id = s.enqueue(job("imports", "acme", "prod", "sleep:2:imported")).await.job_id;
    let mut w = Worker::start(lang, s.addr, "imports", &["--count", "1"]);
    w.wait_for("started", &id, Duration::from_secs(30)).await;

    // A graceful broker stop ends the stream with UNAVAILABLE and keeps the
    // lease; the worker reconnects to the restarted broker and acks there.
    let addr = s.addr;
    s.stop().await;
    let s = TestServer::start_at(dir.path(), addr).await;
    let done = w.finish(Duration::from_secs(60)).await;
    assert_eq!(results(&done.summary), [("imported".to_string(), 1)], "{}", w.output());
    assert_eq!(done.events("started").len(), 1, "{:?}", done.events);
    assert!(w.output().contains("reconnecting"), "{}", w.output());
    // Connected once to each broker.
    assert!(w.output().matches(&format!("connected to {addr} as ")).count() >= 2, "{}", w.output());
    let gone = s.jobs().get_job(pb::GetJobRequest { queue: "imports".into(), job_id: id }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "an acked job is deleted");
    let st = s.stats("imports").await;
    assert_eq!((st.ready, st.leased, st.expired_total), (0, 0, 0), "{st:?}");
    s.stop().await;
}
