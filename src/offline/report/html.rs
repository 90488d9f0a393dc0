//! The report as one self-contained HTML page (`launch-report.html`): inline CSS and SVG, no
//! scripts, no external URL, every piece of text escaped. A GO (green) or NO-GO (red) banner
//! opens it.

use std::fmt::Write;

use super::Report;
use super::content::{Block, Chart, Content, Table, build};
use super::criteria::Decision;
use super::format::html;
use super::svg;

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; margin: 0 auto;
       max-width: 1000px; padding: 0 16px 48px; line-height: 1.4; }
h1 { font-size: 1.5em; margin-top: 0.8em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 8px 0 12px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top;
         max-width: 420px; overflow-wrap: break-word; }
th { background: #f4f4f4; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
svg { display: block; max-width: 100%; height: auto; margin: 8px 0; }
.banner { margin: 16px 0 0; padding: 16px 20px; border-radius: 6px; color: #fff; }
.banner .decision { font-size: 2.4em; font-weight: bold; letter-spacing: 0.04em; }
.go { background: #2e7d32; }
.nogo { background: #c62828; }
.pass { color: #2e7d32; font-weight: bold; }
.fail { color: #c62828; font-weight: bold; }
.muted { color: #777; }
";

pub fn render(r: &Report) -> String {
    let Content { title, preamble, sections } = build(r);
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        html(&title)
    );
    banner(&mut out, r);
    let _ = writeln!(out, "<h1>{}</h1>", html(&title));
    blocks(&mut out, r, &preamble);
    for s in &sections {
        let _ = writeln!(out, "<section>\n<h2>{}</h2>", html(s.title));
        blocks(&mut out, r, &s.blocks);
        out.push_str("</section>\n");
    }
    let _ = writeln!(out, "<p><strong>Decision: {}</strong>{}</p>", r.decision.as_str(), failed(r));
    out.push_str("</body>\n</html>\n");
    out
}

fn failed(r: &Report) -> String {
    if r.failed.is_empty() { String::new() } else { format!(" — failed: {}", html(&r.failed.join(", "))) }
}

fn banner(out: &mut String, r: &Report) {
    let (class, detail) = match r.decision {
        Decision::Go => ("go", "Every checked launch criterion passed.".to_string()),
        Decision::NoGo => ("nogo", format!("Failed: {}", html(&r.failed.join(", ")))),
    };
    let _ = writeln!(
        out,
        "<div class=\"banner {class}\"><div class=\"decision\">{}</div><div>{detail}</div></div>",
        r.decision.as_str()
    );
}

fn blocks(out: &mut String, r: &Report, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Text(t) => {
                let _ = writeln!(out, "<p>{}</p>", html(t));
            }
            Block::Bullets(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", html(item));
                }
                out.push_str("</ul>\n");
            }
            Block::Heading(h) => {
                let _ = writeln!(out, "<h3>{}</h3>", html(h));
            }
            Block::Table(t) => table(out, t),
            Block::Chart(c) => chart(out, r, *c),
        }
    }
}

fn table(out: &mut String, t: &Table) {
    out.push_str("<table>\n<thead><tr>");
    for (c, h) in t.header.iter().enumerate() {
        let class = if t.numeric(c) { " class=\"num\"" } else { "" };
        let _ = write!(out, "<th{class}>{}</th>", html(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (r, row) in t.rows.iter().enumerate() {
        out.push_str("<tr>");
        for (c, cell) in row.iter().enumerate() {
            let class = match cell.as_str() {
                "PASS" => " class=\"pass\"",
                "FAIL" => " class=\"fail\"",
                "not checked" | "skipped" => " class=\"muted\"",
                _ if t.numeric(c) => " class=\"num\"",
                _ => "",
            };
            if t.strong.contains(&(r, c)) {
                let _ = write!(out, "<td{class}><strong>{}</strong></td>", html(cell));
            } else {
                let _ = write!(out, "<td{class}>{}</td>", html(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn chart(out: &mut String, r: &Report, chart: Chart) {
    let d = &r.derived;
    let svg = match chart {
        Chart::Confusion => Some(svg::confusion(&r.input.comparisons)),
        Chart::ScoreDeltas(i) => d.score_deltas.iter().nth(i).map(|(label, dist)| svg::score_deltas(label, dist)),
        Chart::Accuracy => d.accuracy.as_ref().map(svg::accuracy),
    };
    if let Some(svg) = svg {
        out.push_str(&svg);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::report::LaunchCriteria;
    use crate::offline::report::input::tests::input;

    /// Counts of `<tag>` / `<tag ...>` openings and `</tag>` closings.
    fn balance(text: &str, tag: &str) -> (usize, usize) {
        let opens = text.matches(&format!("<{tag}>")).count() + text.matches(&format!("<{tag} ")).count();
        (opens, text.matches(&format!("</{tag}>")).count())
    }

    #[test]
    fn report_html_is_self_contained_balanced_and_escaped() {
        let page = Report::build(input(), &LaunchCriteria::default()).html();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<div class=\"banner go\"><div class=\"decision\">GO</div>"), "a GO banner");
        assert_eq!(balance(&page, "svg"), (4, 4), "confusion, two labels' deltas, accuracy");
        for tag in ["html", "head", "body", "table", "tr", "td", "section", "text", "rect", "title", "ul", "li", "p"] {
            let (open, close) = balance(&page, tag);
            assert!(open > 0 && open == close, "<{tag}>: {open} opened, {close} closed");
        }
        // Nothing is fetched: no links, sources, imports or namespaces; the only "http" is
        // the Prometheus address printed as the source.
        for fetch in ["href=", "src=", "url(", "@import", "xmlns", "<script", "<link", "<img", "<iframe"] {
            assert!(!page.contains(fetch), "{fetch}");
        }
        assert_eq!(page.matches("http").count(), 1);
        assert!(page.contains("Source: Prometheus at http://127.0.0.1:9090"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("you &amp; &lt;b&gt;me&lt;/b&gt; | x"));
        assert!(!page.contains("NaN"));
    }

    #[test]
    fn report_html_shows_a_no_go_banner_naming_the_failures() {
        let mut i = input();
        i.verdicts = None;
        i.score_deltas.clear();
        let page = Report::build(i, &LaunchCriteria::default()).html();
        assert!(
            page.contains(
                "<div class=\"banner nogo\"><div class=\"decision\">NO-GO</div><div>Failed: moderator verdicts"
            )
        );
        assert_eq!(balance(&page, "svg"), (1, 1), "only the confusion matrix has data");
        assert!(page.contains("No moderator verdicts in the window"));
    }
}
