//! `/`: every queue, one row each.

use super::{charts, esc, page, queue_href, span, Section};
use crate::broker::monitor::{MetricsSnapshot, QueueMetrics};
use crate::http::history::History;
use std::fmt::Write;

/// The queue's alert badges, or `ok`; `paused` when paused.
pub fn status_badges(q: &QueueMetrics) -> String {
    if q.alerts.is_empty() {
        return if q.paused { "<span class=paused>paused</span>".into() } else { "<span class=ok>ok</span>".into() };
    }
    let mut s = String::new();
    for a in &q.alerts {
        let _ = write!(s, "<span class=alert title=\"{}\">{}</span>", esc(&a.message), a.kind.as_str());
    }
    if q.paused {
        s.push_str(" <span class=paused>paused</span>");
    }
    s
}

/// How long the oldest ready job has waited, `-` with none ready.
pub fn oldest(q: &QueueMetrics) -> String {
    q.oldest_ready_age_ms.filter(|_| q.ready > 0).map_or_else(|| "-".into(), span)
}

pub fn overview(m: &MetricsSnapshot, history: &History) -> String {
    let mut b = String::from("<h1>Queues</h1>");
    if m.queues.is_empty() {
        b.push_str("<p>No queues yet. Create one with <code>fairway queue create NAME</code>.</p>");
        return page("Fairway", Section::Queues, 5, &b);
    }
    b.push_str(
        "<table id=queues><tr><th>queue</th><th>status</th><th>ready</th><th>scheduled</th><th>leased</th>\
         <th>dead</th><th>oldest ready</th><th>enqueued/s</th><th>acked/s</th><th>workers</th>\
         <th class=text>ready, last 5 min</th></tr>",
    );
    for q in &m.queues {
        let (enq, ack) = history.rates(&q.name).unwrap_or((0.0, 0.0));
        let _ = write!(
            b,
            "<tr data-queue=\"{name}\"><td><a href=\"{href}\">{name}</a></td><td data-field=status>{status}</td>\
             <td data-field=ready>{}</td><td data-field=scheduled>{}</td><td data-field=leased>{}</td>\
             <td data-field=dead>{}</td><td data-field=oldest>{}</td><td data-field=enqueue_rate>{enq:.1}</td>\
             <td data-field=ack_rate>{ack:.1}</td><td data-field=workers>{}</td><td class=text>{}</td></tr>",
            q.ready,
            q.scheduled,
            q.leased,
            q.dead,
            oldest(q),
            q.workers,
            charts::sparkline(&history.ready_series(&q.name)),
            name = esc(&q.name),
            href = queue_href(&q.name),
            status = status_badges(q),
        );
    }
    b.push_str("</table>");
    page("Fairway", Section::Queues, 5, &b)
}
