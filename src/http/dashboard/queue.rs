//! `/queues/{name}`: one queue: its status and the pause/resume button,
//! alerts, latency, the last hour, its tenants and their limits, the jobs
//! waiting for their run time, and the dead letters with what can be done
//! about them.

use super::overview::{oldest, status_badges};
use super::{charts, count, esc, job_href, latency, page, path_segment, post_button, relative, ts_millis, Section};
use crate::broker::monitor::QueueMetrics;
use crate::broker::observe::Percentiles;
use crate::http::history::History;
use crate::model::{Millis, QueueConfig};
use crate::pb;
use std::collections::HashMap;
use std::fmt::Write;

/// What an action did, shown once at the top of the page it returns to.
/// Carried in the query string by the redirect after a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// Dead letters moved back to ready.
    Redriven(u64),
    /// Dead letters deleted.
    Deleted(u64),
    /// One dead letter retried.
    Retried(String),
    /// One job deleted.
    Removed(String),
    Paused,
    Resumed,
}

impl Flash {
    /// The query string that carries it (after `?`).
    pub fn query(&self) -> String {
        match self {
            Flash::Redriven(n) => format!("redriven={n}"),
            Flash::Deleted(n) => format!("deleted={n}"),
            Flash::Retried(id) => format!("retried={}", path_segment(id)),
            Flash::Removed(id) => format!("removed={}", path_segment(id)),
            Flash::Paused => "paused=1".into(),
            Flash::Resumed => "resumed=1".into(),
        }
    }

    pub fn from_query(q: &HashMap<String, String>) -> Option<Flash> {
        let n = |k: &str| q.get(k).and_then(|v| v.parse().ok());
        if let Some(v) = n("redriven") {
            return Some(Flash::Redriven(v));
        }
        if let Some(v) = n("deleted") {
            return Some(Flash::Deleted(v));
        }
        if let Some(id) = q.get("retried") {
            return Some(Flash::Retried(id.clone()));
        }
        if let Some(id) = q.get("removed") {
            return Some(Flash::Removed(id.clone()));
        }
        if q.contains_key("paused") {
            return Some(Flash::Paused);
        }
        q.contains_key("resumed").then_some(Flash::Resumed)
    }

    pub fn html(&self) -> String {
        let text = match self {
            Flash::Redriven(n) => {
                format!("Redrove {} back to ready.", count(*n, "dead-lettered job", "dead-lettered jobs"))
            }
            Flash::Deleted(n) => format!("Deleted {}.", count(*n, "dead letter", "dead letters")),
            Flash::Retried(id) => format!("Job {id} is ready again, with a fresh attempt budget."),
            Flash::Removed(id) => format!("Job {id} was deleted."),
            Flash::Paused => "Paused: no jobs are leased from this queue; enqueues are still accepted.".into(),
            Flash::Resumed => "Resumed: jobs are leased again.".into(),
        };
        format!("<p class=flash data-field=flash>{}</p>", esc(&text))
    }
}

/// What the queue page shows.
pub struct QueueDetail<'a> {
    pub metrics: &'a QueueMetrics,
    pub stats: &'a pb::QueueStats,
    pub config: &'a QueueConfig,
    /// The first dead letters, and whether there are more.
    pub dead: &'a [pb::Job],
    pub more_dead: bool,
    /// The first jobs waiting for their run time (soonest first).
    pub scheduled: &'a [pb::Job],
    pub more_scheduled: bool,
    pub flash: Option<Flash>,
    pub now: Millis,
}

/// Rows of jobs shown per list; the CLI pages through all of them.
pub const LISTED: usize = 50;

fn percentiles(p: Option<Percentiles>) -> String {
    match p {
        None => "<span class=muted>no jobs yet</span>".into(),
        Some(p) => format!(
            "p50 <span data-field=p50>{}</span> &middot; p99 <span data-field=p99>{}</span> &middot; max {} \
             <span class=muted>(the last {})</span>",
            latency(p.p50),
            latency(p.p99),
            latency(p.max),
            count(p.count as u64, "job", "jobs")
        ),
    }
}

/// A tenant's limits as shown next to its groups.
struct Limits {
    weight: String,
    cap: String,
    rate: String,
}

fn limits(policy: Option<&pb::TenantPolicy>, env: Option<&str>, cfg: &QueueConfig) -> Limits {
    let tenant_weight = policy.map_or(1, |p| p.weight.max(1));
    let weight = match env.and_then(|e| policy?.environment_weights.get(e)) {
        Some(w) => format!("{tenant_weight} (env {w})"),
        None => tenant_weight.to_string(),
    };
    let cap = match policy.map_or(0, |p| p.max_in_flight) {
        0 if cfg.tenant_max_in_flight > 0 => format!("{} (queue default)", cfg.tenant_max_in_flight),
        0 => "none".into(),
        n => n.to_string(),
    };
    let rate = match policy.filter(|p| p.enqueue_rate > 0.0) {
        None => "unlimited".into(),
        Some(p) => {
            let burst = if p.enqueue_burst > 0 { p.enqueue_burst as f64 } else { p.enqueue_rate.max(1.0) };
            format!("{}/s, burst {}", p.enqueue_rate, burst)
        }
    };
    Limits { weight, cap, rate }
}

fn tenants(d: &QueueDetail) -> String {
    let s = d.stats;
    let policies: HashMap<&str, &pb::TenantPolicy> = s.tenant_policies.iter().map(|p| (p.tenant.as_str(), p)).collect();
    let mut b = String::from(
        "<table id=groups><tr><th>tenant</th><th>environment</th><th>ready</th><th>in flight</th><th>weight</th>\
         <th>in-flight cap</th><th>enqueue rate limit</th></tr>",
    );
    let mut shown = std::collections::HashSet::new();
    for g in &s.groups {
        shown.insert(g.tenant.as_str());
        let l = limits(policies.get(g.tenant.as_str()).copied(), Some(&g.environment), d.config);
        let _ = write!(
            b,
            "<tr data-tenant=\"{t}\" data-environment=\"{e}\"><td>{t}</td><td>{e}</td><td data-field=ready>{}</td>\
             <td data-field=leased>{}</td><td data-field=weight>{}</td><td data-field=cap>{}</td>\
             <td data-field=rate>{}</td></tr>",
            g.ready,
            g.leased,
            esc(&l.weight),
            esc(&l.cap),
            esc(&l.rate),
            t = esc(&g.tenant),
            e = esc(&g.environment),
        );
    }
    // Tenants with a policy and nothing ready or in flight: their limits
    // still matter to whoever reads this page.
    for p in s.tenant_policies.iter().filter(|p| !shown.contains(p.tenant.as_str())) {
        let l = limits(Some(p), None, d.config);
        let _ = write!(
            b,
            "<tr data-tenant=\"{t}\" data-environment=\"\"><td>{t}</td><td class=muted>-</td><td data-field=ready>0</td>\
             <td data-field=leased>{}</td><td data-field=weight>{}</td><td data-field=cap>{}</td>\
             <td data-field=rate>{}</td></tr>",
            p.leased,
            esc(&l.weight),
            esc(&l.cap),
            esc(&l.rate),
            t = esc(&p.tenant),
        );
    }
    if s.groups.is_empty() && s.tenant_policies.is_empty() {
        return "<p class=muted>No ready or leased jobs, and no tenant policies.</p>".into();
    }
    b.push_str("</table>");
    b
}

fn scheduled(d: &QueueDetail) -> String {
    if d.scheduled.is_empty() {
        return "<p class=muted>None.</p>".into();
    }
    let mut b = String::from(
        "<table id=scheduled><tr><th>job</th><th>tenant</th><th>environment</th><th>kind</th><th>attempts</th>\
         <th>next run</th><th class=text>last error</th></tr>",
    );
    for j in d.scheduled {
        let run_at = ts_millis(j.run_at.as_ref()).unwrap_or(0);
        let kind = if j.attempt > 0 { "retrying" } else { "delayed" };
        let _ = write!(
            b,
            "<tr data-job=\"{id}\"><td><a href=\"{href}\">{id}</a></td><td>{}</td><td>{}</td><td data-field=kind>{kind}</td>\
             <td>{}/{}</td><td data-field=next_run title=\"{}\">{}</td><td class=text>{}</td></tr>",
            esc(&j.tenant),
            esc(&j.environment),
            j.attempt,
            j.max_attempts,
            super::time(run_at),
            relative(run_at, d.now),
            esc(&j.last_error),
            id = esc(&j.id),
            href = job_href(&d.stats.queue, &j.id),
        );
    }
    b.push_str("</table>");
    if d.more_scheduled {
        let _ = write!(
            b,
            "<p class=muted>Showing the {LISTED} soonest; <code>fairway jobs list {} --state scheduled</code> pages \
             through all.</p>",
            esc(&d.stats.queue)
        );
    }
    b
}

fn dead_letters(d: &QueueDetail) -> String {
    let q = &d.stats.queue;
    let base = format!("/queues/{}", path_segment(q));
    if d.dead.is_empty() {
        return "<p class=muted>None.</p>".into();
    }
    let n = d.stats.dead;
    let mut b = format!(
        "<p class=actions>{} <a class=button id=delete-all href=\"{base}/dead/delete\">Delete all {}…</a></p>",
        post_button(
            &format!("{base}/redrive"),
            "redrive",
            &format!("Redrive all {}", count(n, "dead letter", "dead letters")),
            "",
            &[]
        ),
        count(n, "dead letter", "dead letters"),
    );
    b.push_str(
        "<table id=dead><tr><th>job</th><th>tenant</th><th>environment</th><th>attempts</th><th class=text>last error</th>\
         <th>actions</th></tr>",
    );
    for j in d.dead {
        let jb = format!("{base}/jobs/{}", path_segment(&j.id));
        let _ = write!(
            b,
            "<tr data-job=\"{id}\"><td><a href=\"{href}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=text>{}</td><td>{} {}</td></tr>",
            esc(&j.tenant),
            esc(&j.environment),
            j.attempt,
            esc(&j.last_error),
            post_button(&format!("{jb}/retry"), "", "Retry", "small", &[("back", "queue")]),
            post_button(&format!("{jb}/delete"), "", "Delete", "small danger", &[("back", "queue")]),
            id = esc(&j.id),
            href = job_href(q, &j.id),
        );
    }
    b.push_str("</table>");
    if d.more_dead {
        let _ = write!(
            b,
            "<p class=muted>Showing the first {LISTED}; <code>fairway dead list {}</code> pages through all.</p>",
            esc(q)
        );
    }
    b
}

pub fn queue(d: &QueueDetail, history: &History) -> String {
    let (q, s) = (d.metrics, d.stats);
    let base = format!("/queues/{}", path_segment(&q.name));
    let mut b = format!("<p><a href=\"/\">&larr; all queues</a></p><h1>Queue {}</h1>", esc(&q.name));
    if let Some(f) = &d.flash {
        b.push_str(&f.html());
    }
    let toggle = if q.paused {
        post_button(&format!("{base}/resume"), "resume", "Resume leasing", "", &[])
    } else {
        post_button(&format!("{base}/pause"), "pause", "Pause leasing", "", &[])
    };
    let _ = write!(b, "<p class=actions>{toggle}</p>");
    if !q.alerts.is_empty() {
        b.push_str("<h2>Alerts</h2><ul class=alerts>");
        for a in &q.alerts {
            let _ = write!(
                b,
                "<li data-alert=\"{k}\"><span class=alert>{k}</span> <span data-field=message>{}</span> \
                 <span class=muted>since {}</span></li>",
                esc(&a.message),
                super::time(a.since),
                k = a.kind.as_str(),
            );
        }
        b.push_str("</ul>");
    }
    let (enq, ack) = history.rates(&q.name).unwrap_or((0.0, 0.0));
    let _ = write!(
        b,
        "<table id=summary><tr><th>status</th><th>ready</th><th>scheduled</th><th>leased</th><th>dead</th>\
         <th>oldest ready</th><th>enqueued/s</th><th>acked/s</th><th>workers</th></tr>\
         <tr><td data-field=status>{}</td><td data-field=ready>{}</td><td data-field=scheduled>{}</td>\
         <td data-field=leased>{}</td><td data-field=dead>{}</td><td data-field=oldest>{}</td><td>{enq:.1}</td>\
         <td>{ack:.1}</td><td data-field=workers><a href=\"/workers?queue={}\">{}</a></td></tr></table>\
         <p>Ready: {}</p>",
        status_badges(q),
        q.ready,
        q.scheduled,
        q.leased,
        q.dead,
        oldest(q),
        path_segment(&q.name),
        q.workers,
        charts::sparkline(&history.ready_series(&q.name)),
    );
    let _ = write!(
        b,
        "<h2>Processed and failed, last hour</h2>{}",
        charts::processed_vs_failed(&history.per_minute(&q.name, std::time::SystemTime::now()))
    );
    let _ = write!(
        b,
        "<h2>Latency</h2><table id=latency><tr><th>from … to</th><th class=text>measured</th></tr>\
         <tr data-latency=delivery><td>ready to delivered</td><td class=text>{}</td></tr>\
         <tr data-latency=ack><td>delivered to acked</td><td class=text>{}</td></tr></table>\
         <h2>Totals</h2><table id=totals><tr><th>enqueued</th><th>leased</th><th>acked</th><th>nacked</th><th>expired</th>\
         <th>released</th><th>deduplicated</th><th>dead-lettered</th></tr><tr><td data-field=enqueued_total>{}</td><td>{}</td>\
         <td data-field=acked_total>{}</td><td>{}</td><td>{}</td><td data-field=released_total>{}</td>\
         <td data-field=deduplicated_total>{}</td><td data-field=dead_lettered_total>{}</td></tr></table>",
        percentiles(q.delivery_recent),
        percentiles(q.ack_recent),
        s.enqueued_total,
        s.leased_total,
        s.acked_total,
        s.nacked_total,
        s.expired_total,
        s.released_total,
        s.deduplicated_total,
        s.dead_lettered_total,
    );
    let _ = write!(b, "<h2>Tenants and environments</h2>{}", tenants(d));
    let _ = write!(b, "<h2>Scheduled and retrying ({})</h2>{}", s.scheduled, scheduled(d));
    let _ = write!(b, "<h2>Dead letters ({})</h2>{}", q.dead, dead_letters(d));
    page(&format!("Fairway: {}", q.name), Section::Queues, 10, &b)
}

/// `/queues/{name}/dead/delete`: asks before deleting every dead letter.
pub fn confirm_delete_all(queue: &str, dead: u64) -> String {
    let base = format!("/queues/{}", path_segment(queue));
    let b = format!(
        "<p><a href=\"{base}\">&larr; back to {q}</a></p><h1>Delete every dead letter of {q}?</h1>\
         <p class=warn>This deletes <b data-field=dead>{}</b> for good: they cannot be redriven afterwards. \
         Redrive them instead to run them again.</p><p class=actions>{} &nbsp; <a href=\"{base}\">Cancel</a></p>",
        count(dead, "dead letter", "dead letters"),
        post_button(&format!("{base}/dead/delete"), "confirm-delete", "Delete them", "danger", &[("confirm", "yes")]),
        q = esc(queue),
    );
    page(&format!("Fairway: delete dead letters of {queue}"), Section::Queues, 0, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flashes_go_through_the_query_string() {
        for f in [Flash::Redriven(3), Flash::Deleted(1), Flash::Retried("00ff".into()), Flash::Paused, Flash::Resumed] {
            let q: HashMap<String, String> =
                f.query().split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
            assert_eq!(Flash::from_query(&q), Some(f));
        }
        assert!(Flash::Redriven(1).html().contains("Redrove 1 dead-lettered job back"));
        assert!(Flash::Removed("<x>".into()).html().contains("&lt;x&gt;"), "escaped");
    }

    #[test]
    fn limits_say_where_they_come_from() {
        let cfg = QueueConfig { tenant_max_in_flight: 8, ..Default::default() };
        let l = limits(None, Some("prod"), &cfg);
        assert_eq!((l.weight.as_str(), l.cap.as_str(), l.rate.as_str()), ("1", "8 (queue default)", "unlimited"));
        let mut p = pb::TenantPolicy {
            tenant: "acme".into(),
            weight: 3,
            max_in_flight: 10,
            enqueue_rate: 500.0,
            ..Default::default()
        };
        p.environment_weights.insert("prod".into(), 2);
        let l = limits(Some(&p), Some("prod"), &QueueConfig::default());
        assert_eq!((l.weight.as_str(), l.cap.as_str(), l.rate.as_str()), ("3 (env 2)", "10", "500/s, burst 500"));
    }
}
