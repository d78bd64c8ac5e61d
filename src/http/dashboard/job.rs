//! `/queues/{name}/jobs/{id}`: one job: its state and attempts, last
//! error, lease holder and expiry, trace, headers and payload, and what can
//! be done to it.

use super::queue::Flash;
use super::{esc, page, path_segment, post_button, relative, time, ts_millis, Section};
use crate::model::Millis;
use crate::pb;
use std::fmt::Write;

/// Payload text shown before it is cut (the CLI's `--json` has it whole).
const PAYLOAD_TEXT_BYTES: usize = 4096;
/// Binary payload bytes shown as hex.
const PAYLOAD_HEX_BYTES: usize = 256;

fn state_name(j: &pb::Job) -> &'static str {
    match j.state() {
        pb::JobState::Scheduled => "scheduled",
        pb::JobState::Ready => "ready",
        pb::JobState::Leased => "leased",
        pb::JobState::Dead => "dead",
        pb::JobState::Unspecified => "unknown",
    }
}

/// The payload as text (cut at a character boundary), or the hex of its
/// first bytes when it is not UTF-8.
pub fn payload_preview(payload: &[u8]) -> (String, String) {
    let n = payload.len();
    match std::str::from_utf8(payload) {
        Ok(text) if n <= PAYLOAD_TEXT_BYTES => (format!("{n} bytes, text"), text.to_string()),
        Ok(text) => {
            let mut cut = PAYLOAD_TEXT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            (format!("{n} bytes, text, the first {cut} shown"), format!("{}…", &text[..cut]))
        }
        Err(_) => {
            let shown = n.min(PAYLOAD_HEX_BYTES);
            let hex: Vec<String> = payload[..shown].chunks(32).map(hex::encode).collect();
            let what = if shown < n { format!("binary, hex of the first {shown}") } else { "binary, hex".into() };
            (format!("{n} bytes, {what}"), hex.join("\n"))
        }
    }
}

/// The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

pub fn job(j: &pb::Job, flash: Option<&Flash>, now: Millis) -> String {
    let base = format!("/queues/{}/jobs/{}", path_segment(&j.queue), path_segment(&j.id));
    let mut b = format!(
        "<p><a href=\"/queues/{}\">&larr; queue {}</a></p><h1>Job {}</h1>",
        path_segment(&j.queue),
        esc(&j.queue),
        esc(&j.id)
    );
    if let Some(f) = flash {
        b.push_str(&f.html());
    }
    let state = state_name(j);
    let actions = match j.state() {
        pb::JobState::Dead => format!(
            "{} {}",
            post_button(&format!("{base}/retry"), "retry", "Retry (back to ready, fresh attempts)", "", &[]),
            post_button(&format!("{base}/delete"), "delete", "Delete", "danger", &[])
        ),
        pb::JobState::Ready | pb::JobState::Scheduled => {
            post_button(&format!("{base}/delete"), "delete", "Cancel (delete) this job", "danger", &[])
        }
        _ => "<span class=muted>A leased job ends with its worker's ack or nack, or when its lease expires.</span>"
            .into(),
    };
    let _ = write!(b, "<p class=actions>{actions}</p><table class=fields id=job>");
    let mut row = |name: &str, field: &str, value: String| {
        let _ = write!(b, "<tr><th>{name}</th><td data-field={field}>{value}</td></tr>");
    };
    let at = |t: Option<&prost_types::Timestamp>| {
        ts_millis(t).map_or_else(|| "-".into(), |ms| format!("{} ({})", time(ms), relative(ms, now)))
    };
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { esc(s) };
    row("state", "state", state.into());
    row("tenant", "tenant", esc(&j.tenant));
    row("environment", "environment", esc(&j.environment));
    row("attempts", "attempts", format!("{} of {}", j.attempt, j.max_attempts));
    row("priority", "priority", j.priority.to_string());
    row("created", "created_at", at(j.created_at.as_ref()));
    let run_label = if j.state() == pb::JobState::Scheduled { "next run" } else { "ready since" };
    row(run_label, "run_at", at(j.run_at.as_ref()));
    if j.state() == pb::JobState::Leased {
        let holder = if j.lease_worker_version.is_empty() {
            dash(&j.lease_worker_id)
        } else {
            format!("{} (version {})", esc(&j.lease_worker_id), esc(&j.lease_worker_version))
        };
        row("leased by", "lease_holder", holder);
        row("leased", "leased_at", at(j.leased_at.as_ref()));
        row("lease expires", "lease_expires_at", at(j.lease_expires_at.as_ref()));
    }
    row("last error", "last_error", dash(&j.last_error));
    row("dedup key", "dedup_key", dash(&j.dedup_key));
    let trace = match trace_id(&j.traceparent) {
        Some(t) => format!("{} <span class=muted>(traceparent {})</span>", esc(t), esc(&j.traceparent)),
        None => dash(&j.traceparent),
    };
    row("trace id", "trace_id", trace);
    b.push_str("</table><h2>Headers</h2>");
    if j.headers.is_empty() {
        b.push_str("<p class=muted>None.</p>");
    } else {
        let mut headers: Vec<_> = j.headers.iter().collect();
        headers.sort();
        b.push_str("<table id=headers><tr><th>name</th><th class=text>value</th></tr>");
        for (k, v) in headers {
            let _ = write!(b, "<tr data-header=\"{k}\"><td>{k}</td><td class=text>{}</td></tr>", esc(v), k = esc(k));
        }
        b.push_str("</table>");
    }
    let (what, text) = payload_preview(&j.payload);
    let _ = write!(
        b,
        "<h2>Payload <span class=muted data-field=payload_kind>({})</span></h2><pre data-field=payload>{}</pre>",
        esc(&what),
        esc(&text)
    );
    page(&format!("Fairway: job {}", j.id), Section::Queues, 0, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_preview_as_text_or_hex() {
        assert_eq!(payload_preview(b"hello"), ("5 bytes, text".into(), "hello".into()));
        let (what, text) = payload_preview(&[0xff; 300]);
        assert_eq!(what, "300 bytes, binary, hex of the first 256");
        assert_eq!(text.lines().count(), 8);
        let long = "é".repeat(3000);
        let (what, text) = payload_preview(long.as_bytes());
        assert_eq!(what, "6000 bytes, text, the first 4096 shown");
        assert!(text.ends_with('…'));
    }

    #[test]
    fn the_trace_id_comes_from_the_traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(""), None);
    }

    #[test]
    fn a_leased_job_shows_its_holder_and_expiry() {
        let j = pb::Job {
            id: "00000000000000aa".into(),
            queue: "q".into(),
            state: pb::JobState::Leased as i32,
            lease_worker_id: "py-1".into(),
            lease_worker_version: "2.4.1".into(),
            lease_expires_at: Some(prost_types::Timestamp { seconds: 1_750_000_030, nanos: 0 }),
            ..Default::default()
        };
        let html = job(&j, None, 1_750_000_000_000);
        assert!(html.contains("data-field=lease_holder>py-1 (version 2.4.1)"), "{html}");
        assert!(html.contains("2025-06-15T15:07:10Z (in 30 s)"), "{html}");
        assert!(!html.contains("/retry"), "only dead jobs are retried");
    }
}
