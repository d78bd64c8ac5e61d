//! The operator console: plain server-rendered HTML (no JavaScript, no
//! network fetches), so it works offline and behind any proxy. Charts are
//! inline SVG. Every figure sits in an element with a `data-field`
//! attribute, so scripts and tests can read it without scraping.
//!
//! One file per page: [`overview`] (every queue), [`queue`] (one queue:
//! alerts, latency, history, tenants, scheduled jobs, dead letters and the
//! buttons that act on them), [`job`] (one job), [`workers`] (who is
//! connected and what they run); [`charts`] draws. The buttons post forms
//! that `http::actions` checks and applies.

pub mod charts;
pub mod job;
pub mod overview;
pub mod queue;
pub mod workers;

use crate::model::Millis;
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

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

/// Percent-encodes a name for a URL path segment.
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

/// The path of a queue's page.
pub fn queue_href(queue: &str) -> String {
    format!("/queues/{}", path_segment(queue))
}

/// The path of a job's page.
pub fn job_href(queue: &str, job: &str) -> String {
    format!("/queues/{}/jobs/{}", path_segment(queue), path_segment(job))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}\
main{margin:24px}nav{background:#1d2330;padding:10px 24px}nav a{color:#fff;margin-right:18px;text-decoration:none}\
nav a.here{font-weight:700;border-bottom:2px solid #fff}\
h1{font-size:22px;margin:0 0 16px}h2{font-size:17px;margin:28px 0 8px}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{padding:6px 12px;border-bottom:1px solid #e4e7ec;text-align:right;white-space:nowrap}\
th{background:#f1f3f6;font-weight:600}td:first-child,th:first-child{text-align:left}\
td.text,th.text{text-align:left;white-space:normal;max-width:420px;word-break:break-word}\
table.fields th{text-align:left;width:170px}table.fields td{text-align:left;white-space:normal}\
pre{background:#fff;border:1px solid #e4e7ec;padding:10px;max-width:900px;overflow:auto;white-space:pre-wrap}\
.alert{display:inline-block;background:#d92d20;color:#fff;border-radius:10px;padding:1px 8px;margin-right:4px;font-size:12px}\
.ok{color:#067647}.paused{color:#b54708}.muted{color:#667085}a{color:#1849a9}.scale{color:#667085;font-size:12px}\
.flash{background:#ecfdf3;border:1px solid #abefc6;padding:8px 12px;margin-bottom:12px;display:inline-block}\
.warn{background:#fffaeb;border:1px solid #fedf89;padding:8px 12px;margin-bottom:12px;display:inline-block}\
form.inline{display:inline;margin:0}.actions{margin:8px 0}\
button{background:#1849a9;color:#fff;border:0;border-radius:6px;padding:7px 13px;font-size:14px;cursor:pointer}\
button.small{padding:3px 9px;font-size:12px}button.danger{background:#b42318}a.button{display:inline-block;\
background:#b42318;color:#fff;border-radius:6px;padding:7px 13px;text-decoration:none}\
ul.alerts{padding-left:18px}ul.alerts li{margin:4px 0}";

/// Which page of the navigation bar is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Queues,
    Workers,
}

/// A whole page: navigation, `body`, and a footer. It reloads itself every
/// `refresh_secs` (0 = never: pages that hold a form to fill in).
pub fn page(title: &str, section: Section, refresh_secs: u32, body: &str) -> String {
    let here = |s: Section| if s == section { " class=here" } else { "" };
    let refresh =
        if refresh_secs > 0 { format!("<meta http-equiv=refresh content={refresh_secs}>") } else { String::new() };
    let refreshes =
        if refresh_secs > 0 { format!(" &middot; refreshes every {refresh_secs} s") } else { String::new() };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title>{refresh}<style>{STYLE}</style>\
         </head><body><nav><a href=\"/\"{}>Queues</a><a href=\"/workers\"{}>Workers</a>\
         <a href=\"/metrics\">/metrics</a></nav><main>{body}\
         <p class=muted>Fairway {}{refreshes}</p></main></body></html>",
        esc(title),
        here(Section::Queues),
        here(Section::Workers),
        env!("CARGO_PKG_VERSION")
    )
}

/// A short age or span: `850 ms`, `12 s`, `4m 5s`, `2h 7m`.
pub fn span(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A measured latency: `0.4 ms`… `850 ms`, `4.2 s`, `3m 10s`.
pub fn latency(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => span(ms),
    }
}

/// A wall-clock time, to the second (UTC).
pub fn time(ms: Millis) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A protobuf timestamp as milliseconds since the epoch.
pub fn ts_millis(t: Option<&prost_types::Timestamp>) -> Option<Millis> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(secs * 1000 + u64::try_from(t.nanos).unwrap_or(0) / 1_000_000)
}

/// "in 4m 5s" or "4m 5s ago", from `now`.
pub fn relative(at: Millis, now: Millis) -> String {
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// "1 dead letter", "3 dead letters".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A button that posts to `action` (a same-origin form, see
/// `http::actions`), with hidden fields.
pub fn post_button(action: &str, id: &str, label: &str, class: &str, fields: &[(&str, &str)]) -> String {
    let mut hidden = String::new();
    for (k, v) in fields {
        let _ = write!(hidden, "<input type=hidden name=\"{}\" value=\"{}\">", esc(k), esc(v));
    }
    let id = if id.is_empty() { String::new() } else { format!(" id=\"{}\"", esc(id)) };
    format!(
        "<form class=inline method=post action=\"{}\">{hidden}<button{id} class=\"{class}\" type=submit>{}</button></form>",
        esc(action),
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(job_href("q", "00ff"), "/queues/q/jobs/00ff");
    }

    #[test]
    fn times_read_plainly() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(65_000), "1m 5s");
        assert_eq!(span(7_500_000), "2h 5m");
        assert_eq!(latency(4_210), "4.2 s");
        assert_eq!(latency(190_000), "3m 10s");
        assert_eq!(relative(10_000, 4_000), "in 6 s");
        assert_eq!(relative(4_000, 10_000), "6 s ago");
        assert_eq!(count(1, "dead letter", "dead letters"), "1 dead letter");
        assert_eq!(count(2, "dead letter", "dead letters"), "2 dead letters");
        assert_eq!(time(1_750_000_000_000), "2025-06-15T15:06:40Z");
    }

    #[test]
    fn post_buttons_escape_their_fields() {
        let b = post_button("/queues/q/pause", "pause", "Pause", "", &[("back", "a\"b")]);
        assert!(b.contains("method=post action=\"/queues/q/pause\""), "{b}");
        assert!(b.contains("value=\"a&quot;b\""), "{b}");
        assert!(b.contains("<button id=\"pause\""), "{b}");
    }
}
