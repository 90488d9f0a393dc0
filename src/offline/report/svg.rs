//! Hand-written SVG charts for the HTML report: inline `<svg>` elements (no `xmlns`, which
//! HTML does not need, so the page holds no URL), every text escaped, tooltips as `<title>`.

use std::fmt::Write;

use super::derived::{Accuracy, DeltaDistribution, ModelAccuracy};
use super::format::{bucket, html, pct};
use super::input::{DECISIONS, REJECT, REVIEW};
use super::stats::{Estimate, ratio};

const LIVE: &str = "#4e79a7";
const CANDIDATE: &str = "#f28e2b";
const BAR: &str = "#8fb3d9";
const MEDIAN: &str = "#2f5597";
const GRID: &str = "#dddddd";
const INK: &str = "#333333";
/// Confusion cells: agree, candidate stricter, candidate more lenient.
const AGREE: &str = "#2e7d32";
const STRICTER: &str = "#c62828";
const LENIENT: &str = "#1565c0";

fn open(out: &mut String, width: f64, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{l}" font-family="sans-serif" font-size="11"><title>{l}</title>"#,
        l = html(label)
    );
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, extra: &str, content: &str) {
    let _ = write!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" fill="{INK}"{extra}>{}</text>"#,
        html(content)
    );
}

fn line(out: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
    let _ = write!(
        out,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
    );
}

fn rect(out: &mut String, (x, y, w, h): (f64, f64, f64, f64), fill: &str, tooltip: &str) {
    let _ = write!(
        out,
        r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"><title>{}</title></rect>"#,
        html(tooltip)
    );
}

/// Picks one figure of a model's accuracy.
type Pick = fn(&ModelAccuracy) -> Estimate;

/// A bar per bucket of one label's score deltas; the median bucket is darker.
pub fn score_deltas(label: &str, d: &DeltaDistribution) -> String {
    let (width, height) = (640.0, 260.0);
    let (left, right, top, bottom) = (56.0, 12.0, 16.0, 78.0);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let max = d.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let y = |v: f64| top + ph - v / max * ph;
    let mut out = String::new();
    open(&mut out, width, height, &format!("Score deltas for {label}"));
    for tick in [0.0, max / 2.0, max] {
        line(&mut out, (left, y(tick)), (left + pw, y(tick)), GRID, 1.0);
        text(&mut out, left - 6.0, y(tick) + 4.0, "end", "", &format!("{}", tick.round()));
    }
    let slot = pw / d.buckets.len().max(1) as f64;
    for (i, b) in d.buckets.iter().enumerate() {
        let x = left + slot * i as f64;
        let fill = if d.median_bucket == Some(i) { MEDIAN } else { BAR };
        let h = b.count as f64 / max * ph;
        let tip = format!("{}: {} reviews ({})", bucket(b), b.count, pct(ratio(b.count, d.total)));
        rect(&mut out, (x + slot * 0.1, top + ph - h, slot * 0.8, h), fill, &tip);
        let (lx, ly) = (x + slot / 2.0, top + ph + 12.0);
        let rotate = format!(r#" transform="rotate(-45 {lx:.1} {ly:.1})""#);
        text(&mut out, lx, ly, "end", &rotate, &bucket(b));
    }
    line(&mut out, (left, top + ph), (left + pw, top + ph), INK, 1.0);
    text(&mut out, left + pw / 2.0, height - 4.0, "middle", "", "candidate score − live score (darker: median)");
    let (yx, yy) = (14.0, top + ph / 2.0);
    text(&mut out, yx, yy, "middle", &format!(r#" transform="rotate(-90 {yx} {yy})""#), "reviews");
    out.push_str("</svg>");
    out
}

/// Live and candidate precision and recall at both levels, with 95% interval whiskers.
pub fn accuracy(a: &Accuracy) -> String {
    let (width, height) = (640.0, 300.0);
    let (left, right, top, bottom) = (48.0, 12.0, 50.0, 34.0);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let y = |v: f64| top + ph * (1.0 - v);
    let mut out = String::new();
    open(&mut out, width, height, "Precision and recall, live vs candidate");
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        line(&mut out, (left, y(tick)), (left + pw, y(tick)), GRID, 1.0);
        text(&mut out, left - 6.0, y(tick) + 4.0, "end", "", &format!("{:.0}%", tick * 100.0));
    }
    let groups: [(&str, Pick); 4] = [
        ("precision@REVIEW", |m| m.at(REVIEW).precision),
        ("recall@REVIEW", |m| m.at(REVIEW).recall),
        ("precision@REJECT", |m| m.at(REJECT).precision),
        ("recall@REJECT", |m| m.at(REJECT).recall),
    ];
    let slot = pw / groups.len() as f64;
    let bar = slot * 0.3;
    for (g, (name, pick)) in groups.iter().enumerate() {
        let center = left + slot * (g as f64 + 0.5);
        for (x, who, colour, e) in [
            (center - bar - 2.0, "live", LIVE, pick(&a.live)),
            (center + 2.0, "candidate", CANDIDATE, pick(&a.candidate)),
        ] {
            let mid = x + bar / 2.0;
            let (Some(v), Some((lo, hi))) = (e.value, e.ci95) else {
                text(&mut out, mid, y(0.0) - 4.0, "middle", "", "n/a");
                continue;
            };
            let tip = format!("{who} {name}: {} [{}, {}], n = {}", pct(Some(v)), pct(Some(lo)), pct(Some(hi)), e.n);
            rect(&mut out, (x, y(v), bar, y(0.0) - y(v)), colour, &tip);
            line(&mut out, (mid, y(lo)), (mid, y(hi)), INK, 1.5);
            line(&mut out, (mid - 5.0, y(lo)), (mid + 5.0, y(lo)), INK, 1.5);
            line(&mut out, (mid - 5.0, y(hi)), (mid + 5.0, y(hi)), INK, 1.5);
            text(&mut out, mid, y(hi) - 4.0, "middle", "", &pct(Some(v)));
        }
        text(&mut out, center, height - 14.0, "middle", "", name);
    }
    line(&mut out, (left, y(0.0)), (left + pw, y(0.0)), INK, 1.0);
    for (i, (who, colour)) in [("live", LIVE), ("candidate", CANDIDATE)].iter().enumerate() {
        let x = left + 8.0 + 110.0 * i as f64;
        rect(&mut out, (x, 8.0, 12.0, 12.0), colour, who);
        text(&mut out, x + 16.0, 18.0, "start", "", who);
    }
    text(&mut out, width - right, 18.0, "end", "", "whiskers: 95% Wilson interval");
    out.push_str("</svg>");
    out
}

/// The 3x3 live-by-candidate matrix as a heat map: darker cells hold more reviews; green agrees,
/// red is the candidate stricter, blue more lenient.
pub fn confusion(m: &[[u64; 3]; 3]) -> String {
    let (cell_w, cell_h, left, top) = (110.0, 56.0, 96.0, 44.0);
    let (width, height) = (left + 3.0 * cell_w + 8.0, top + 3.0 * cell_h + 8.0);
    let total: u64 = m.iter().flatten().sum();
    let max = m.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let mut out = String::new();
    open(&mut out, width, height, "Decision confusion matrix, live rows by candidate columns");
    text(&mut out, left + 1.5 * cell_w, 14.0, "middle", r#" font-weight="bold""#, "candidate decision");
    for (c, name) in DECISIONS.iter().enumerate() {
        text(&mut out, left + cell_w * (c as f64 + 0.5), top - 8.0, "middle", "", name);
    }
    for (l, row) in m.iter().enumerate() {
        let y = top + cell_h * l as f64;
        text(&mut out, left - 8.0, y + cell_h / 2.0 + 4.0, "end", "", &format!("live {}", DECISIONS[l]));
        for (c, &n) in row.iter().enumerate() {
            let x = left + cell_w * c as f64;
            let colour = match c.cmp(&l) {
                std::cmp::Ordering::Equal => AGREE,
                std::cmp::Ordering::Greater => STRICTER,
                std::cmp::Ordering::Less => LENIENT,
            };
            let opacity = 0.08 + 0.92 * n as f64 / max;
            let share = pct(ratio(n, total));
            let tip = format!("live {} → candidate {}: {n} reviews ({share})", DECISIONS[l], DECISIONS[c]);
            let _ = write!(
                out,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{colour}" fill-opacity="{opacity:.3}" stroke="#ffffff" stroke-width="2"><title>{tip}</title></rect>"##,
                w = cell_w,
                h = cell_h,
                tip = html(&tip)
            );
            let ink = if opacity > 0.5 { r#" style="fill:#ffffff""# } else { "" };
            let (cx, cy) = (x + cell_w / 2.0, y + cell_h / 2.0);
            text(&mut out, cx, cy - 2.0, "middle", &format!(r#" font-size="14"{ink}"#), &n.to_string());
            text(&mut out, cx, cy + 14.0, "middle", ink, &share);
        }
    }
    out.push_str("</svg>");
    out
}
