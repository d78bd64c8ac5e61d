//! The web dashboard: plain server-rendered HTML (no JavaScript, no
//! network fetches), so it works offline and behind any proxy. Charts are
//! inline SVG. Every figure sits in an element with a `data-field`
//! attribute, so scripts and tests can read it without scraping.

use super::history::History;
use crate::broker::monitor::{MetricsSnapshot, QueueMetrics};
use crate::broker::observe::Histogram;
use crate::pb;
use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a queue name for a URL path segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}\
h1{font-size:22px;margin:0 0 16px}h2{font-size:17px;margin:24px 0 8px}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{padding:6px 12px;border-bottom:1px solid #e4e7ec;text-align:right;white-space:nowrap}\
th{background:#f1f3f6;font-weight:600}td:first-child,th:first-child{text-align:left}\
td.text{text-align:left;white-space:normal;max-width:420px}\
.alert{display:inline-block;background:#d92d20;color:#fff;border-radius:10px;padding:1px 8px;margin-right:4px;font-size:12px}\
.ok{color:#067647}.paused{color:#b54708}.muted{color:#667085}a{color:#1849a9}\
.flash{background:#ecfdf3;border:1px solid #abefc6;padding:8px 12px;margin-bottom:12px;display:inline-block}\
button{background:#1849a9;color:#fff;border:0;border-radius:6px;padding:8px 14px;font-size:14px;cursor:pointer}\
ul.alerts{padding-left:18px}ul.alerts li{margin:4px 0}";

fn page(title: &str, refresh_secs: u32, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title>\
         <meta http-equiv=refresh content={refresh_secs}><style>{STYLE}</style></head><body>{body}\
         <p class=muted>Fairway {} &middot; refreshes every {refresh_secs} s &middot; <a href=\"/metrics\">/metrics</a></p>\
         </body></html>",
        esc(title),
        env!("CARGO_PKG_VERSION")
    )
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string(),
    }
}

/// A sparkline of `values` as inline SVG.
fn sparkline(values: &[u64]) -> String {
    let (w, h) = (160.0, 28.0);
    if values.len() < 2 {
        return "<span class=muted>collecting…</span>".into();
    }
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = w / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, h - (*v as f64 / max) * (h - 2.0) - 1.0))
        .collect();
    format!(
        "<svg width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"ready jobs, last 5 minutes, max {max}\">\
         <polyline fill=none stroke=#1849a9 stroke-width=1.5 points=\"{}\"/></svg>",
        points.join(" ")
    )
}

fn alert_badges(q: &QueueMetrics) -> String {
    if q.alerts.is_empty() {
        return if q.paused { "<span class=paused>paused</span>".into() } else { "<span class=ok>ok</span>".into() };
    }
    let mut s = String::new();
    for (k, a) in &q.alerts {
        let _ = write!(s, "<span class=alert title=\"{}\">{}</span>", esc(&a.message), k.as_str());
    }
    if q.paused {
        s.push_str(" <span class=paused>paused</span>");
    }
    s
}

/// An upper estimate of quantile `p` from the histogram's buckets, in ms.
fn quantile_ms(h: &Histogram, p: f64) -> Option<u64> {
    let total = h.count();
    if total == 0 {
        return None;
    }
    let target = (total as f64 * p).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in h.counts.iter().enumerate() {
        seen += c;
        if seen >= target {
            return Some(h.bounds.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

fn quantiles(h: &Histogram) -> String {
    let f = |p| match quantile_ms(h, p) {
        None => "-".to_string(),
        Some(u64::MAX) => format!("> {} ms", h.bounds.last().copied().unwrap_or(0)),
        Some(ms) => format!("≤ {ms} ms"),
    };
    format!("p50 {} · p99 {} ({} jobs)", f(0.5), f(0.99), h.count())
}

pub fn overview(m: &MetricsSnapshot, history: &History) -> String {
    let mut b = String::from("<h1>Fairway</h1>");
    if m.queues.is_empty() {
        b.push_str("<p>No queues yet. Create one with <code>fairway queue create NAME</code>.</p>");
        return page("Fairway", 5, &b);
    }
    b.push_str(
        "<table id=queues><tr><th>queue</th><th>status</th><th>ready</th><th>scheduled</th><th>leased</th>\
         <th>dead</th><th>oldest ready</th><th>enqueued/s</th><th>acked/s</th><th>workers</th>\
         <th>ready, last 5 min</th></tr>",
    );
    for q in &m.queues {
        let (enq, ack) = history.rates(&q.name).unwrap_or((0.0, 0.0));
        let _ = write!(
            b,
            "<tr data-queue=\"{name}\"><td><a href=\"/queues/{path}\">{name}</a></td><td data-field=status>{status}</td>\
             <td data-field=ready>{}</td><td data-field=scheduled>{}</td><td data-field=leased>{}</td>\
             <td data-field=dead>{}</td><td data-field=oldest>{}</td><td data-field=enqueue_rate>{enq:.1}</td>\
             <td data-field=ack_rate>{ack:.1}</td><td data-field=workers>{}</td><td>{}</td></tr>",
            q.ready,
            q.scheduled,
            q.leased,
            q.dead,
            age(q.oldest_ready_age_ms.filter(|_| q.ready > 0)),
            q.workers,
            sparkline(&history.ready_series(&q.name)),
            name = esc(&q.name),
            path = path_segment(&q.name),
            status = alert_badges(q),
        );
    }
    b.push_str("</table>");
    page("Fairway", 5, &b)
}

/// What the queue page shows besides the engine's figures.
pub struct QueueDetail<'a> {
    pub metrics: &'a QueueMetrics,
    pub stats: &'a pb::QueueStats,
    pub dead: &'a [pb::Job],
    /// More dead letters exist than are listed.
    pub more_dead: bool,
    /// Set after a redrive: how many jobs it moved.
    pub redriven: Option<u64>,
}

pub fn queue(d: &QueueDetail, history: &History) -> String {
    let (q, s) = (d.metrics, d.stats);
    let mut b = format!("<p><a href=\"/\">&larr; all queues</a></p><h1>Queue {}</h1>", esc(&q.name));
    if let Some(n) = d.redriven {
        let _ = write!(b, "<p class=flash data-field=redriven>Redrove {n} dead-lettered jobs back to ready.</p>");
    }
    if !q.alerts.is_empty() {
        b.push_str("<h2>Alerts</h2><ul class=alerts>");
        for (k, a) in &q.alerts {
            let since =
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.since));
            let _ = write!(
                b,
                "<li data-alert=\"{}\"><span class=alert>{}</span> {} <span class=muted>since {since}</span></li>",
                k.as_str(),
                k.as_str(),
                esc(&a.message)
            );
        }
        b.push_str("</ul>");
    }
    let (enq, ack) = history.rates(&q.name).unwrap_or((0.0, 0.0));
    let _ = write!(
        b,
        "<table id=summary><tr><th>status</th><th>ready</th><th>scheduled</th><th>leased</th><th>dead</th>\
         <th>oldest ready</th><th>enqueued/s</th><th>acked/s</th><th>workers</th></tr>\
         <tr><td>{}</td><td data-field=ready>{}</td><td data-field=scheduled>{}</td><td data-field=leased>{}</td>\
         <td data-field=dead>{}</td><td data-field=oldest>{}</td><td>{enq:.1}</td><td>{ack:.1}</td>\
         <td data-field=workers>{}</td></tr></table>\
         <p>Ready, last 5 minutes: {}</p>\
         <table id=latency><tr><th>latency</th><th>estimate</th></tr>\
         <tr><td>enqueue to delivery</td><td>{}</td></tr><tr><td>lease to ack</td><td>{}</td></tr></table>\
         <table id=totals><tr><th>enqueued</th><th>leased</th><th>acked</th><th>nacked</th><th>expired</th>\
         <th>deduplicated</th><th>dead-lettered</th></tr><tr><td data-field=enqueued_total>{}</td><td>{}</td>\
         <td data-field=acked_total>{}</td><td>{}</td><td>{}</td><td data-field=deduplicated_total>{}</td>\
         <td data-field=dead_lettered_total>{}</td></tr></table>",
        alert_badges(q),
        q.ready,
        q.scheduled,
        q.leased,
        q.dead,
        age(q.oldest_ready_age_ms.filter(|_| q.ready > 0)),
        q.workers,
        sparkline(&history.ready_series(&q.name)),
        quantiles(&q.delivery),
        quantiles(&q.ack),
        s.enqueued_total,
        s.leased_total,
        s.acked_total,
        s.nacked_total,
        s.expired_total,
        s.deduplicated_total,
        s.dead_lettered_total,
    );

    b.push_str("<h2>Tenants and environments</h2>");
    if s.groups.is_empty() {
        b.push_str("<p class=muted>No ready or leased jobs.</p>");
    } else {
        b.push_str("<table id=groups><tr><th>tenant</th><th>environment</th><th>ready</th><th>in flight</th></tr>");
        for g in &s.groups {
            let _ = write!(
                b,
                "<tr data-tenant=\"{t}\" data-environment=\"{e}\"><td>{t}</td><td>{e}</td>\
                 <td data-field=ready>{}</td><td data-field=leased>{}</td></tr>",
                g.ready,
                g.leased,
                t = esc(&g.tenant),
                e = esc(&g.environment),
            );
        }
        b.push_str("</table>");
    }

    let _ = write!(b, "<h2>Dead letters ({})</h2>", q.dead);
    if d.dead.is_empty() {
        b.push_str("<p class=muted>None.</p>");
    } else {
        let _ = write!(
            b,
            "<form method=post action=\"/queues/{}/redrive\"><button id=redrive type=submit>\
             Redrive all {} dead letters</button></form><br>",
            path_segment(&q.name),
            q.dead
        );
        b.push_str(
            "<table id=dead><tr><th>job</th><th>tenant</th><th>environment</th><th>attempts</th>\
             <th>last error</th></tr>",
        );
        for j in d.dead {
            let _ = write!(
                b,
                "<tr data-job=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td class=text>{}</td></tr>",
                esc(&j.tenant),
                esc(&j.environment),
                j.attempt,
                esc(&j.last_error),
                id = esc(&j.id),
            );
        }
        b.push_str("</table>");
        if d.more_dead {
            b.push_str("<p class=muted>Showing the first 50; <code>fairway dead list</code> pages through all.</p>");
        }
    }
    page(&format!("Fairway: {}", q.name), 10, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::observe::JOB_LATENCY_MS;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = Histogram::new(JOB_LATENCY_MS);
        assert_eq!(quantile_ms(&h, 0.5), None);
        for _ in 0..98 {
            h.observe(3);
        }
        h.observe(400);
        h.observe(400);
        assert_eq!(quantile_ms(&h, 0.5), Some(5));
        assert_eq!(quantile_ms(&h, 0.99), Some(500));
    }

    #[test]
    fn sparkline_scales_to_the_largest_value() {
        assert!(sparkline(&[1]).contains("collecting"));
        let s = sparkline(&[0, 10]);
        assert!(s.contains("points=\"0.0,27.0 160.0,1.0\""), "{s}");
    }
}
