//! `fairway stats [QUEUE] [--watch]`: the dashboard's figures in a
//! terminal, once or redrawn every interval.
//!
//! Rates are counter deltas between two snapshots taken by this process, so
//! the first snapshot shows `-` for enqueued/s and acked/s: a one-shot
//! `fairway stats` answers at once instead of waiting an interval.

use super::format::{self, fmt_age, fmt_rate, one_line, render_table, Column};
use super::{describe, emit, ok_if_closed, CliResult, Conn, Remote, Screen};
use fairway::pb;
use fairway::pb::admin_service_client::AdminServiceClient;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

/// Groups listed under a queue's detail, except when watching on a
/// terminal, where as many are listed as fit its height.
const DEFAULT_GROUPS: usize = 20;
/// Groups always listed, however short the terminal.
const MIN_GROUPS: usize = 5;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// One queue in detail (alerts, tenant/environment groups); all queues
    /// when omitted.
    pub queue: Option<String>,
    /// Redraw every --interval until Ctrl-C (or --count snapshots).
    #[arg(long)]
    pub watch: bool,
    /// Time between snapshots with --watch, e.g. 500ms, 2s.
    #[arg(long, default_value = "2s", value_parser = positive_duration, requires = "watch")]
    pub interval: Duration,
    /// Stop after this many snapshots with --watch (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0, requires = "watch")]
    pub count: u64,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// One line of the all-queues table.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    /// The queue's name.
    pub queue: String,
    /// Jobs waiting for a worker now.
    pub ready: u64,
    /// Jobs waiting for their run time.
    pub scheduled: u64,
    /// Jobs held by workers now.
    pub leased: u64,
    /// Dead letters.
    pub dead: u64,
    /// How long the oldest ready job has waited; `None` with nothing ready.
    pub oldest_ready: Option<Duration>,
    /// Enqueues per second since the previous snapshot; `None` on the first.
    pub enqueued_per_sec: Option<f64>,
    /// Acks per second since the previous snapshot; `None` on the first.
    pub acked_per_sec: Option<f64>,
    /// Workers connected on Work streams for the queue.
    pub workers: u32,
    /// Active alert kinds, `ok`, and `paused` when paused.
    pub status: String,
}

impl QueueRow {
    pub fn new(s: &pb::QueueStats, rates: Rates) -> QueueRow {
        QueueRow {
            queue: s.queue.clone(),
            ready: s.ready,
            scheduled: s.scheduled,
            leased: s.leased,
            dead: s.dead,
            oldest_ready: s.oldest_ready_age.as_ref().filter(|_| s.ready > 0).map(format::duration),
            enqueued_per_sec: rates.enqueued,
            acked_per_sec: rates.acked,
            workers: s.connected_workers,
            status: status(s),
        }
    }
}

/// The alerts column: the active alert kinds, else `ok`; `paused` is added
/// when paused, like the dashboard's badges.
pub fn status(s: &pb::QueueStats) -> String {
    let mut parts: Vec<&str> = s.alerts.iter().map(|a| a.kind.as_str()).collect();
    if s.paused {
        parts.push("paused");
    } else if parts.is_empty() {
        parts.push("ok");
    }
    parts.join(",")
}

const QUEUE_COLUMNS: [Column; 10] = [
    Column::left("QUEUE"),
    Column::right("READY"),
    Column::right("SCHEDULED"),
    Column::right("LEASED"),
    Column::right("DEAD"),
    Column::right("OLDEST READY"),
    Column::right("ENQUEUED/S"),
    Column::right("ACKED/S"),
    Column::right("WORKERS"),
    Column::left("ALERTS"),
];

/// The all-queues table, one row per queue.
pub fn render_queue_table(rows: &[QueueRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.queue.clone(),
                r.ready.to_string(),
                r.scheduled.to_string(),
                r.leased.to_string(),
                r.dead.to_string(),
                r.oldest_ready.map(fmt_age).unwrap_or_else(|| "-".into()),
                fmt_rate(r.enqueued_per_sec),
                fmt_rate(r.acked_per_sec),
                r.workers.to_string(),
                r.status.clone(),
            ]
        })
        .collect();
    render_table(&QUEUE_COLUMNS, &cells)
}

/// One queue in detail: its row, lifetime totals, active alerts with their
/// messages, then its tenant/environment groups, largest first, at most
/// `max_groups` of them.
pub fn render_queue_detail(s: &pb::QueueStats, rates: Rates, max_groups: usize, now: SystemTime) -> String {
    let mut out = render_queue_table(&[QueueRow::new(s, rates)]);
    let _ = writeln!(
        out,
        "totals: enqueued {}  leased {}  acked {}  nacked {}  expired {}  deduplicated {}  dead-lettered {}",
        s.enqueued_total,
        s.leased_total,
        s.acked_total,
        s.nacked_total,
        s.expired_total,
        s.deduplicated_total,
        s.dead_lettered_total
    );
    out.push('\n');
    if s.alerts.is_empty() {
        out.push_str("alerts: none\n");
    } else {
        out.push_str("alerts:\n");
        for a in &s.alerts {
            let since = a
                .since
                .as_ref()
                .and_then(format::system_time)
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!(" (for {})", fmt_age(d)))
                .unwrap_or_default();
            let _ = writeln!(out, "  {}{since}: {}", a.kind, one_line(&a.message));
        }
    }
    for line in super::quarantine::lines(s) {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    if s.groups.is_empty() {
        out.push_str("groups: no ready or leased jobs\n");
        return out;
    }
    // The broker sends them largest first already; sorting again keeps the
    // "top N" promise whatever order a future broker picks.
    let mut groups: Vec<&pb::GroupStats> = s.groups.iter().collect();
    groups.sort_by(|a, b| (b.ready + b.leased).cmp(&(a.ready + a.leased)).then_with(|| a.tenant.cmp(&b.tenant)));
    let shown = groups.len().min(max_groups);
    let cells: Vec<Vec<String>> = groups[..shown]
        .iter()
        .map(|g| vec![g.tenant.clone(), g.environment.clone(), g.ready.to_string(), g.leased.to_string()])
        .collect();
    let cols =
        [Column::left("TENANT"), Column::left("ENVIRONMENT"), Column::right("READY"), Column::right("IN FLIGHT")];
    out.push_str(&render_table(&cols, &cells));
    if groups.len() > shown {
        let more = groups.len() - shown;
        let _ = writeln!(out, "… {more} more {}", if more == 1 { "group" } else { "groups" });
    }
    out
}

/// Enqueue and ack rates of one queue between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Enqueues per second; `None` without an earlier snapshot.
    pub enqueued: Option<f64>,
    /// Acks per second; `None` without an earlier snapshot.
    pub acked: Option<f64>,
}

/// The counters of one queue when they were read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// When the answer arrived.
    at: Instant,
    /// `QueueStats.enqueued_total` then.
    enqueued: u64,
    /// `QueueStats.acked_total` then.
    acked: u64,
}

/// The previous reading of each queue, to turn counters into rates.
#[derive(Debug, Default)]
struct RateTracker {
    /// Queue name -> its last reading.
    last: HashMap<String, Reading>,
}

impl RateTracker {
    /// The rates since the queue's previous reading, remembering this one.
    fn observe(&mut self, s: &pb::QueueStats, at: Instant) -> Rates {
        let now = Reading { at, enqueued: s.enqueued_total, acked: s.acked_total };
        let rates = match self.last.get(&s.queue) {
            Some(prev) => {
                let elapsed = now.at.saturating_duration_since(prev.at);
                Rates {
                    enqueued: format::rate(prev.enqueued, now.enqueued, elapsed),
                    acked: format::rate(prev.acked, now.acked, elapsed),
                }
            }
            None => Rates::default(),
        };
        self.last.insert(s.queue.clone(), now);
        rates
    }
}

/// Reads what one snapshot shows and renders it.
async fn snapshot(
    admin: &AdminServiceClient<Conn>,
    queue: Option<&str>,
    tracker: &mut RateTracker,
    fit_rows: Option<usize>,
) -> Result<String, Box<dyn std::error::Error>> {
    match queue {
        Some(name) => {
            let s = admin.clone().get_queue_stats(pb::GetQueueStatsRequest { queue: name.into() }).await?.into_inner();
            let rates = tracker.observe(&s, Instant::now());
            let now = SystemTime::now();
            let max_groups = match fit_rows {
                // Fit the groups under everything else, keeping a line for
                // the watch header and one for the "more groups" note.
                Some(rows) => {
                    let rest = render_queue_detail(&s, rates, 0, now).lines().count();
                    rows.saturating_sub(rest + 3).max(MIN_GROUPS)
                }
                None => DEFAULT_GROUPS,
            };
            Ok(render_queue_detail(&s, rates, max_groups, now))
        }
        None => {
            let queues = admin.clone().list_queues(pb::ListQueuesRequest {}).await?.into_inner().queues;
            if queues.is_empty() {
                return Ok("no queues; create one with `fairway queue create NAME`\n".into());
            }
            let reads = queues.iter().map(|q| {
                let mut admin = admin.clone();
                let queue = q.name.clone();
                async move {
                    let r = admin.get_queue_stats(pb::GetQueueStatsRequest { queue }).await;
                    (r, Instant::now())
                }
            });
            let mut rows = Vec::with_capacity(queues.len());
            for (r, at) in futures::future::join_all(reads).await {
                match r {
                    Ok(s) => {
                        let s = s.into_inner();
                        rows.push(QueueRow::new(&s, tracker.observe(&s, at)));
                    }
                    // Deleted between the listing and its stats: not an error.
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(status.into()),
                }
            }
            tracker.last.retain(|name, _| rows.iter().any(|r| &r.queue == name));
            Ok(render_queue_table(&rows))
        }
    }
}

/// The line above each watched snapshot: what it is and when it was taken.
fn watch_header(queue: Option<&str>, interval: Duration, tty: bool) -> String {
    let what = queue.map(|q| format!("fairway stats {q}")).unwrap_or_else(|| "fairway stats".into());
    let every = humantime::format_duration(interval);
    let at = humantime::format_rfc3339_seconds(SystemTime::now());
    let stop = if tty { " · Ctrl-C to stop" } else { "" };
    format!("== {what} · every {every} · {at}{stop}\n")
}

pub async fn stats(remote: &Remote, a: StatsArgs) -> CliResult {
    ok_if_closed(watch(remote, a).await)
}

async fn watch(remote: &Remote, a: StatsArgs) -> CliResult {
    let admin = remote.connect().await?.admin();
    let mut tracker = RateTracker::default();
    let limit = if a.watch { a.count } else { 1 };
    let mut ticker = tokio::time::interval(a.interval);
    // After a slow answer, wait a whole interval again rather than burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; taking it now puts the second snapshot
    // one interval after the first, however long reading it took.
    ticker.tick().await;
    let mut shown: u64 = 0;
    // One listener for the whole watch, so a Ctrl-C that lands while a
    // snapshot is being read still ends it. Without signal support, only
    // --count ends it.
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stop);
    loop {
        // Asked each time, so a resized terminal gets a fitting frame.
        let screen = Screen::stdout();
        let fit_rows = screen.height().filter(|_| a.watch);
        let read = snapshot(&admin, a.queue.as_deref(), &mut tracker, fit_rows);
        let result = if a.watch {
            tokio::select! {
                r = read => r,
                _ = &mut stop => return Ok(()),
            }
        } else {
            read.await
        };
        let body = match result {
            Ok(body) => body,
            // A typo in the queue name or a broker that is down should fail
            // at once; once watching, a broker restart shouldn't end it.
            Err(e) if shown == 0 => return Err(e),
            Err(e) => format!("{}\n", describe(e.as_ref())),
        };
        let frame = match (a.watch, screen.tty) {
            (false, _) => body,
            (true, true) => format!("\x1b[2J\x1b[H{}{body}", watch_header(a.queue.as_deref(), a.interval, true)),
            (true, false) => {
                let gap = if shown > 0 { "\n" } else { "" };
                format!("{gap}{}{body}", watch_header(a.queue.as_deref(), a.interval, false))
            }
        };
        emit(&frame)?;
        shown += 1;
        if limit != 0 && shown >= limit {
            return Ok(());
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str) -> pb::QueueStats {
        pb::QueueStats { queue: name.into(), ..Default::default() }
    }

    #[test]
    fn queue_table_aligns_every_column() {
        let mut a = QueueRow::new(&stats("emails"), Rates { enqueued: Some(12.25), acked: Some(3.0) });
        a.ready = 1500;
        a.oldest_ready = Some(Duration::from_secs(75));
        let mut b = QueueRow::new(&stats("x"), Rates::default());
        b.dead = 7;
        let out = render_queue_table(&[a, b]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("QUEUE   READY  SCHEDULED  LEASED  DEAD  OLDEST READY"), "{out}");
        // Right-aligned figures end where their header ends.
        for (title, cell_row, value) in [("READY", 1, "1500"), ("DEAD", 2, "7"), ("ENQUEUED/S", 1, "12.2")] {
            let end = lines[0].find(title).map(|i| i + title.len());
            let cell = lines[cell_row].find(&format!(" {value} ")).map(|i| i + 1 + value.len());
            assert_eq!(end, cell, "{title} in:\n{out}");
        }
        assert!(lines[1].contains("1m15s") && lines[1].ends_with("ok"), "{out}");
        // Without an earlier snapshot there are no rates yet.
        assert_eq!(lines[2].matches(" - ").count(), 3, "oldest, enq/s, ack/s:\n{out}");
    }

    #[test]
    fn status_lists_alerts_then_paused() {
        let mut s = stats("q");
        assert_eq!(status(&s), "ok");
        s.paused = true;
        assert_eq!(status(&s), "paused");
        s.alerts.push(pb::QueueAlert { kind: "unattended".into(), ..Default::default() });
        s.alerts.push(pb::QueueAlert { kind: "aging".into(), ..Default::default() });
        assert_eq!(status(&s), "unattended,aging,paused");
        s.paused = false;
        assert_eq!(status(&s), "unattended,aging");
    }

    #[test]
    fn rates_are_deltas_between_snapshots() {
        let mut t = RateTracker::default();
        let t0 = Instant::now();
        let mut s = stats("q");
        s.enqueued_total = 100;
        s.acked_total = 40;
        assert_eq!(t.observe(&s, t0), Rates::default());
        s.enqueued_total = 150;
        s.acked_total = 60;
        let r = t.observe(&s, t0 + Duration::from_secs(2));
        assert_eq!(r, Rates { enqueued: Some(25.0), acked: Some(10.0) });
        // Another queue's first reading has no rate of its own.
        assert_eq!(t.observe(&stats("other"), t0 + Duration::from_secs(2)), Rates::default());
    }

    #[test]
    fn detail_shows_alerts_and_the_largest_groups() {
        let mut s = stats("emails");
        s.ready = 30;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        s.alerts.push(pb::QueueAlert {
            kind: "unattended".into(),
            since: Some(prost_types::Timestamp { seconds: 990, nanos: 0 }),
            message: "30 ready jobs and\nno worker".into(),
        });
        for i in 0..25u64 {
            s.groups.push(pb::GroupStats {
                tenant: format!("t{i:02}"),
                environment: "prod".into(),
                ready: i,
                leased: 1,
            });
        }
        let out = render_queue_detail(&s, Rates::default(), 20, now);
        assert!(out.contains("unattended (for 10.0s): 30 ready jobs and no worker"), "{out}");
        assert!(out.lines().nth(1).is_some_and(|l| l.ends_with("unattended")), "{out}");
        let groups: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("TENANT")).skip(1).collect();
        assert_eq!(groups.len(), 21, "{out}");
        assert!(groups[0].starts_with("t24") && groups[19].starts_with("t05"), "{out}");
        assert_eq!(groups[20], "… 5 more groups");
        let all = render_queue_detail(&s, Rates::default(), 100, now);
        assert!(!all.contains("more groups") && all.contains("t00"), "{all}");
    }
}
