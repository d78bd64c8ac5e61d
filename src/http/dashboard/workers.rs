//! `/workers`: every worker connected on a Work stream, and the jobs each
//! one holds.

use super::{esc, job_href, page, queue_href, relative, span, time, ts_millis, Section};
use crate::model::Millis;
use crate::pb;
use std::fmt::Write;

pub fn workers(list: &[pb::WorkerInfo], queue: Option<&str>, now: Millis) -> String {
    let mut b = match queue {
        Some(q) => format!(
            "<h1>Workers of <a href=\"{}\">{}</a></h1><p><a href=\"/workers\">all workers</a></p>",
            queue_href(q),
            esc(q)
        ),
        None => "<h1>Workers</h1>".to_string(),
    };
    if list.is_empty() {
        b.push_str(
            "<p class=muted>No worker is connected on a Work stream. (Workers that poll with the unary Lease \
                    call are not connected between calls, so they are not listed.)</p>",
        );
        return page("Fairway: workers", Section::Workers, 5, &b);
    }
    b.push_str(
        "<table id=workers><tr><th>worker</th><th>version</th><th>queues</th><th>in flight</th><th>connected</th>\
         <th>state</th></tr>",
    );
    for w in list {
        let since = ts_millis(w.connected_at.as_ref()).unwrap_or(now);
        let queues: Vec<String> =
            w.queues.iter().map(|q| format!("<a href=\"{}\">{}</a>", queue_href(q), esc(q))).collect();
        let _ = write!(
            b,
            "<tr data-worker=\"{id}\"><td>{id}</td><td data-field=version>{}</td><td data-field=queues>{}</td>\
             <td data-field=in_flight>{}/{}</td><td data-field=connected title=\"{}\">{}</td><td data-field=state>{}</td></tr>",
            if w.worker_version.is_empty() { "-".into() } else { esc(&w.worker_version) },
            queues.join(", "),
            w.in_flight,
            w.max_in_flight,
            time(since),
            format_args!("for {}", span(now.saturating_sub(since))),
            if w.draining { "<span class=paused>draining</span>" } else { "working" },
            id = esc(&w.worker_id),
        );
    }
    b.push_str("</table><h2>What they run</h2>");
    let held: Vec<(&pb::WorkerInfo, &pb::WorkerLease)> =
        list.iter().flat_map(|w| w.leases.iter().map(move |l| (w, l))).collect();
    if held.is_empty() {
        b.push_str("<p class=muted>Nothing: every connected worker is idle.</p>");
    } else {
        b.push_str(
            "<table id=running><tr><th>worker</th><th>queue</th><th>job</th><th>tenant</th><th>environment</th>\
             <th>attempt</th><th>running for</th><th>lease expires</th></tr>",
        );
        for (w, l) in held {
            let leased = ts_millis(l.leased_at.as_ref()).unwrap_or(now);
            let expires = ts_millis(l.lease_expires_at.as_ref()).unwrap_or(now);
            let _ = write!(
                b,
                "<tr data-job=\"{job}\"><td>{}</td><td>{}</td><td><a href=\"{}\">{job}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td data-field=running_for>{}</td><td data-field=expires>{}</td></tr>",
                esc(&w.worker_id),
                esc(&l.queue),
                job_href(&l.queue, &l.job_id),
                esc(&l.tenant),
                esc(&l.environment),
                l.attempt,
                span(now.saturating_sub(leased)),
                relative(expires, now),
                job = esc(&l.job_id),
            );
        }
        b.push_str("</table>");
    }
    page("Fairway: workers", Section::Workers, 5, &b)
}
