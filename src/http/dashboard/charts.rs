//! Inline SVG charts: the ready sparkline (with its scale) and the hour of
//! processed vs failed jobs (with axes).

use super::esc;
use crate::http::history::{Minute, EVERY};
use std::fmt::Write;

/// The smallest of 1, 2 or 5 times a power of ten that is at least `v`:
/// an axis maximum people read at a glance.
pub fn nice_ceiling(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// A sparkline of ready jobs (one value per sample, oldest first), with its
/// scale written next to it: the largest value and the span it covers.
pub fn sparkline(values: &[u64]) -> String {
    let (w, h) = (160.0, 28.0);
    if values.len() < 2 {
        return "<span class=muted>collecting…</span>".into();
    }
    let max = values.iter().copied().max().unwrap_or(0);
    let top = max.max(1) as f64;
    let step = w / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, h - (*v as f64 / top) * (h - 2.0) - 1.0))
        .collect();
    let span_secs = (values.len() as u64 - 1) * EVERY.as_secs();
    let span = super::span(span_secs * 1000);
    format!(
        "<svg width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"ready jobs over the last {span}, \
         from 0 to {max}\"><line x1=0 y1={h} x2={w} y2={h} stroke=#d0d5dd /><polyline fill=none stroke=#1849a9 \
         stroke-width=1.5 points=\"{}\"/></svg> <span class=scale data-field=spark_scale>0–{max} ready, last {span}</span>",
        points.join(" ")
    )
}

/// The last hour, a minute per slot (oldest first): processed (acked) and
/// failed (nacked or expired) attempts as bars, with a y axis in jobs per
/// minute and a time axis. Minutes not seen (the broker was not running, or
/// this page's history starts later) are left empty.
pub fn processed_vs_failed(minutes: &[Option<Minute>]) -> String {
    let (w, h) = (640.0_f64, 200.0_f64);
    let (left, right, top, bottom) = (52.0, 12.0, 14.0, 30.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let seen: Vec<Minute> = minutes.iter().flatten().copied().collect();
    let peak = seen.iter().map(|m| m.processed.max(m.failed)).max().unwrap_or(0);
    let ymax = nice_ceiling(peak.max(1));
    let (processed, failed): (u64, u64) = (seen.iter().map(|m| m.processed).sum(), seen.iter().map(|m| m.failed).sum());
    let slot = pw / minutes.len().max(1) as f64;
    let y = |v: u64| top + ph - (v as f64 / ymax as f64) * ph;
    let mut svg = format!(
        "<svg id=history width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"jobs processed and \
         failed per minute over the last hour\">"
    );
    // Y axis: gridlines and labels at 0, half and the top.
    for v in [0, ymax / 2, ymax] {
        let yy = y(v);
        let _ = write!(
            svg,
            "<line x1={left} y1={yy:.1} x2={:.1} y2={yy:.1} stroke=#e4e7ec /><text x={:.1} y={:.1} font-size=11 \
             text-anchor=end fill=#667085 data-tick=y>{v}</text>",
            left + pw,
            left - 6.0,
            yy + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=12 y={:.1} font-size=11 fill=#667085 transform=\"rotate(-90 12 {:.1})\" text-anchor=middle>\
         jobs / minute</text>",
        top + ph / 2.0,
        top + ph / 2.0
    );
    // X axis: minutes ago.
    let n = minutes.len();
    for (i, label) in
        [(0usize, format!("-{n} min")), (n / 2, format!("-{} min", n - n / 2)), (n.saturating_sub(1), "now".into())]
    {
        let x = left + slot * (i as f64 + 0.5);
        let _ = write!(
            svg,
            "<text x={x:.1} y={:.1} font-size=11 text-anchor=middle fill=#667085 data-tick=x>{}</text>",
            top + ph + 18.0,
            esc(&label)
        );
    }
    let _ = write!(svg, "<line x1={left} y1={:.1} x2={:.1} y2={:.1} stroke=#98a2b3 />", top + ph, left + pw, top + ph);
    for (i, m) in minutes.iter().enumerate() {
        let Some(m) = m else { continue };
        let x = left + slot * i as f64;
        let bw = (slot / 2.0 - 0.5).max(0.5);
        for (j, (v, colour)) in [(m.processed, "#1849a9"), (m.failed, "#d92d20")].into_iter().enumerate() {
            if v == 0 {
                continue;
            }
            let _ = write!(
                svg,
                "<rect x={:.1} y={:.1} width={bw:.1} height={:.1} fill={colour}><title>{v}</title></rect>",
                x + j as f64 * (bw + 0.5),
                y(v),
                top + ph - y(v)
            );
        }
    }
    svg.push_str("</svg>");
    format!(
        "{svg}<p class=scale><span style=\"color:#1849a9\">&#9632;</span> processed (acked): \
         <span data-field=processed_hour>{processed}</span> &nbsp; <span style=\"color:#d92d20\">&#9632;</span> \
         failed attempts (nacked or expired): <span data-field=failed_hour>{failed}</span> &nbsp; \
         over the minutes shown; the chart's history starts when the broker does</p>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(4_100), 5_000);
    }

    #[test]
    fn the_sparkline_says_its_scale() {
        assert!(sparkline(&[1]).contains("collecting"));
        let s = sparkline(&[0, 10]);
        assert!(s.contains("points=\"0.0,27.0 160.0,1.0\""), "{s}");
        assert!(s.contains("0–10 ready, last 2 s"), "{s}");
    }

    #[test]
    fn the_hour_chart_has_axes_and_totals() {
        let mut m = vec![None; 60];
        m[58] = Some(Minute { processed: 30, failed: 4 });
        m[59] = Some(Minute { processed: 12, failed: 0 });
        let s = processed_vs_failed(&m);
        for want in
            ["data-tick=y>0<", "data-tick=y>25<", "data-tick=y>50<", ">-60 min<", ">-30 min<", ">now<", "jobs / minute"]
        {
            assert!(s.contains(want), "{want} missing: {s}");
        }
        assert!(s.contains("data-field=processed_hour>42<") && s.contains("data-field=failed_hour>4<"), "{s}");
        assert_eq!(s.matches("<rect").count(), 3, "no bar for a zero");
    }
}
