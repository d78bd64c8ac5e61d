//! Pure text helpers the CLI commands share: aligned tables, ages, times,
//! rates and shell quoting. Nothing here does I/O, so layout is unit-tested.

use fairway::pb;
use std::borrow::Cow;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which side of its column a cell hugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Names and free text.
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// One column of a [`render_table`] table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The header, shown in capitals as given.
    pub title: &'static str,
    /// How cells (and the header) are aligned.
    pub align: Align,
}

impl Column {
    pub const fn left(title: &'static str) -> Column {
        Column { title, align: Align::Left }
    }

    pub const fn right(title: &'static str) -> Column {
        Column { title, align: Align::Right }
    }
}

/// Columns two spaces apart, each as wide as its widest cell, one line per
/// row after the header. Widths count characters, not bytes, so non-ASCII
/// names don't shift the columns after them; lines carry no trailing spaces.
pub fn render_table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.title.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<&str> = columns.iter().map(|c| c.title).collect();
    for cells in std::iter::once(header).chain(rows.iter().map(|r| r.iter().map(String::as_str).collect())) {
        let mut line = String::new();
        for (i, (col, width)) in columns.iter().zip(&widths).enumerate() {
            let cell = cells.get(i).copied().unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            match col.align {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The total width of a table's columns other than the last, with their
/// separators: what is left of a line for a free-text last column.
pub fn leading_width(columns: &[Column], rows: &[Vec<String>]) -> usize {
    let n = columns.len().saturating_sub(1);
    (0..n)
        .map(|i| {
            let cells = rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count());
            cells.chain(std::iter::once(columns[i].title.chars().count())).max().unwrap_or(0) + 2
        })
        .sum()
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` on one line: newlines, tabs and other control characters become
/// spaces (one per run, with the spaces around them), so one cell can't
/// break a table or move the cursor.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// A short age: `850ms`, `12.3s`, `4m05s`, `2h07m`, `3d04h`.
pub fn fmt_age(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A protobuf duration as a std one (negative ones as zero).
pub fn duration(d: &prost_types::Duration) -> Duration {
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    u64::try_from(d.seconds).map(|s| Duration::new(s, nanos)).unwrap_or(Duration::ZERO)
}

/// A protobuf timestamp as a `SystemTime`; `None` before 1970.
pub fn system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// UTC to the second, e.g. `2025-06-01T12:00:00Z`; `-` when unset.
pub fn fmt_time(t: Option<&prost_types::Timestamp>) -> String {
    match t.and_then(system_time) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".into(),
    }
}

/// A per-second rate with one decimal, or `-` when it can't be known yet.
pub fn fmt_rate(rate: Option<f64>) -> String {
    rate.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into())
}

/// Events per second between two readings of a counter. `None` when no
/// time passed or the counter went backwards (the queue was deleted and
/// created again): a made-up figure is worse than none.
pub fn rate(previous: u64, current: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (current >= previous && secs > 0.0).then(|| (current - previous) as f64 / secs)
}

/// `ready`, `dead`, ... for a `pb::JobState` number.
pub fn state_name(state: i32) -> String {
    match pb::JobState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("JOB_STATE_").to_ascii_lowercase(),
        Err(_) => format!("state {state}"),
    }
}

/// `attempt/max`, e.g. `3/5`.
pub fn fmt_attempts(j: &pb::Job) -> String {
    format!("{}/{}", j.attempt, j.max_attempts)
}

/// `s` as one shell word: unchanged when it is plainly safe, else in
/// single quotes, so a printed command can be pasted back as it is.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::from("'");
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// Bytes per line of a hex payload.
const HEX_LINE_BYTES: usize = 32;

/// A payload for people: the text when it is UTF-8, else the hex of its
/// first `max_hex_bytes` bytes, 32 bytes a line.
pub fn payload_text(payload: &[u8], max_hex_bytes: usize) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let shown = &payload[..payload.len().min(max_hex_bytes)];
            let mut s = shown.chunks(HEX_LINE_BYTES).map(hex::encode).collect::<Vec<_>>().join("\n");
            if payload.len() > max_hex_bytes {
                let _ = write!(s, "\n… ({} more bytes)", payload.len() - max_hex_bytes);
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn table_columns_align_left_and_right() {
        let cols = [Column::left("QUEUE"), Column::right("READY"), Column::left("ALERTS")];
        let out = render_table(&cols, &[row(&["emails", "3", "ok"]), row(&["b", "12345", "unattended,aging"])]);
        assert_eq!(
            out,
            "QUEUE   READY  ALERTS\n\
             emails      3  ok\n\
             b       12345  unattended,aging\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let cols = [Column::left("TENANT"), Column::right("N")];
        let out = render_table(&cols, &[row(&["zürich-ä", "1"]), row(&["abcdefgh", "22"])]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1].chars().count(), lines[2].chars().count(), "{out}");
        assert!(lines[1].ends_with(" 1") && lines[2].ends_with("22"), "{out}");
    }

    #[test]
    fn table_with_no_rows_is_its_header() {
        assert_eq!(render_table(&[Column::left("A"), Column::right("BB")], &[]), "A  BB\n");
    }

    #[test]
    fn leading_width_is_what_precedes_the_last_column() {
        let cols = [Column::left("ID"), Column::right("N"), Column::left("ERROR")];
        let rows = [row(&["abcd", "10", "boom"])];
        let out = render_table(&cols, &rows);
        let first = out.lines().nth(1).unwrap_or_default();
        assert_eq!(first.find("boom"), Some(leading_width(&cols, &rows)));
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        assert_eq!(rate(100, 130, Duration::from_secs(2)), Some(15.0));
        assert_eq!(rate(5, 5, Duration::from_millis(500)), Some(0.0));
        assert_eq!(rate(7, 9, Duration::from_millis(250)), Some(8.0));
        // A queue deleted and created again starts its counters over.
        assert_eq!(rate(50, 3, Duration::from_secs(1)), None);
        assert_eq!(rate(1, 2, Duration::ZERO), None);
        assert_eq!(fmt_rate(rate(0, 3, Duration::from_secs(2))), "1.5");
        assert_eq!(fmt_rate(None), "-");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(fmt_age(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_age(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_age(Duration::from_secs(245)), "4m05s");
        assert_eq!(fmt_age(Duration::from_secs(2 * 3600 + 7 * 60 + 5)), "2h07m");
        assert_eq!(fmt_age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
    }

    #[test]
    fn text_is_cut_on_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abcdef", 4).chars().count(), 4);
        assert_eq!(one_line("a\nb\tc\x1b[2J"), "a b c [2J");
        assert_eq!(one_line("boom\n  at line 3"), "boom at line 3");
    }

    #[test]
    fn times_and_states_read_plainly() {
        let t = prost_types::Timestamp { seconds: 1_750_000_000, nanos: 5 };
        assert_eq!(fmt_time(Some(&t)), "2025-06-15T15:06:40Z");
        assert_eq!(fmt_time(None), "-");
        assert_eq!(state_name(pb::JobState::Dead as i32), "dead");
        assert_eq!(state_name(99), "state 99");
        assert_eq!(duration(&prost_types::Duration { seconds: 1, nanos: 500_000_000 }), Duration::from_millis(1500));
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("emails"), "emails");
        assert_eq!(shell_quote("http://127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn payloads_show_as_text_or_cut_hex() {
        assert_eq!(payload_text(b"hello", 4), "hello");
        assert_eq!(payload_text(&[0xff, 0, 1, 2, 3, 4], 4), "ff000102\n… (2 more bytes)");
        let long = payload_text(&[0xab; 70], 100);
        assert_eq!(long.lines().map(str::len).collect::<Vec<_>>(), [64, 64, 12]);
        assert_eq!(payload_text(&[0xff], 4), "ff");
    }
}
