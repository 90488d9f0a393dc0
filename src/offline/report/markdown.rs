//! The report as Markdown: what `modserve report` prints and writes to `launch-report.md`.

use std::fmt::Write;

use super::Report;
use super::content::{Block, Content, Table, build};
use super::criteria::Decision;
use super::format::md;

pub fn render(r: &Report) -> String {
    let Content { title, preamble, sections } = build(r);
    let mut out = format!("# {}\n\n", md(&title));
    blocks(&mut out, &preamble);
    for s in &sections {
        let _ = write!(out, "## {}\n\n", s.title);
        blocks(&mut out, &s.blocks);
    }
    match r.decision {
        Decision::Go => out.push_str("**Decision: GO**\n"),
        Decision::NoGo => {
            let _ = writeln!(out, "**Decision: NO-GO** — failed: {}", md(&r.failed.join(", ")));
        }
    }
    out
}

fn blocks(out: &mut String, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Text(t) => {
                let _ = write!(out, "{}\n\n", md(t));
            }
            Block::Bullets(items) => {
                for item in items {
                    let _ = writeln!(out, "- {}", md(item));
                }
                out.push('\n');
            }
            Block::Heading(h) => {
                let _ = write!(out, "### {}\n\n", md(h));
            }
            Block::Table(t) => table(out, t),
            Block::Chart(_) => {}
        }
    }
}

fn table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "| {} |", t.header.iter().map(|h| md(h)).collect::<Vec<_>>().join(" | "));
    let align: String = (0..t.header.len()).map(|i| if t.numeric(i) { "--:|" } else { "---|" }).collect();
    let _ = writeln!(out, "|{align}");
    for (r, row) in t.rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| if t.strong.contains(&(r, c)) { format!("**{}**", md(cell)) } else { md(cell) })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::report::LaunchCriteria;
    use crate::offline::report::input::tests::input;

    const SECTIONS: [&str; 10] = [
        "## Traffic compared and coverage",
        "## Agreement",
        "## Decision confusion matrix",
        "## Score deltas",
        "## Latency",
        "## Errors and shed work",
        "## Precision and recall against moderator verdicts",
        "## Disagreement log",
        "## Launch criteria",
        "**Decision: ",
    ];

    #[test]
    fn report_markdown_has_every_section_in_order_and_the_decision_last() {
        let text = Report::build(input(), &LaunchCriteria::default()).markdown();
        let mut at = 0;
        for s in SECTIONS {
            let found = text[at..].find(s).unwrap_or_else(|| panic!("{s:?} missing or out of order in\n{text}"));
            at += found + s.len();
        }
        assert_eq!(text.trim_end().lines().last().unwrap(), "**Decision: GO**");
        assert!(text.contains("| abuse-v2 | 2.0.0 | strict@3 |"), "{text}");
        assert!(text.contains("| **ALLOW** | 1500 | 60 | 10 | 1570 |"), "{text}");
        assert!(text.contains("| Agree | 1760 | 92.6% |"), "{text}");
        assert!(text.contains("| Live | 4.00 ms | 12.00 ms | 5000 |"), "{text}");
        assert!(text.contains("(-0.1, 0] (median)"), "{text}");
        assert!(text.contains("| precision@REJECT | 83.3% [66.4%, 92.7%] | 30 |"), "{text}");
        // Outside text is escaped: no raw HTML or table-breaking pipes.
        assert!(text.contains("&lt;script>alert(1)&lt;/script>"), "{text}");
        assert!(text.contains("you &amp; &lt;b>me&lt;/b> \\| x"), "{text}");
        assert!(!text.contains("<script>"));
    }

    /// The sample input's labelled verdicts, by hand: the candidate flags 12 + 4 verdicts at
    /// p = 1 (4 right) and 6 at p = 0.05 (all right): weighted 124 / 136 = 91.2%, n_eff =
    /// 136^2 / (16 + 6 * 400) = 7.7; unweighted 10 / 22 = 45.5%. Live flags only the 6.
    #[test]
    fn report_markdown_shows_weighted_figures_beside_unweighted_ones() {
        let text = Report::build(input(), &LaunchCriteria::default()).markdown();
        let section = "## Precision and recall from the labelling queue (weighted)";
        let at = text.find(section).unwrap_or_else(|| panic!("no weighted section in\n{text}"));
        assert!(at > text.find("## Precision and recall against moderator verdicts").unwrap());
        let row = "| precision@REVIEW | 100.0% [61.0%, 100.0%] | 6 (6.0) | 100.0% [61.0%, 100.0%] \
                   | 91.2% [56.0%, 98.8%] | 22 (7.7) | 45.5% [26.9%, 65.3%] |";
        assert!(text.contains(row), "{text}");
        assert!(text.contains("picked: 52, of which 16 where live and the candidate disagree"), "{text}");
        let mut i = input();
        i.labelled.clear();
        let text = Report::build(i, &LaunchCriteria::default()).markdown();
        assert!(text.contains("No verdicts on reviews the labelling queue picks"), "{text}");
    }

    #[test]
    fn report_markdown_says_why_a_section_is_empty_and_lists_failures() {
        let mut i = input();
        i.latency = None;
        i.verdicts = None;
        i.disagreements = None;
        i.score_deltas.clear();
        let text = Report::build(i, &LaunchCriteria::default()).markdown();
        assert!(text.contains("No latency offline"), "{text}");
        assert!(text.contains("No moderator verdicts in the window"), "{text}");
        assert!(text.contains("No disagreement log read"), "{text}");
        assert!(text.contains("No score deltas recorded"), "{text}");
        let last = text.trim_end().lines().last().unwrap();
        assert_eq!(
            last,
            "**Decision: NO-GO** — failed: moderator verdicts, precision drop @REVIEW, precision drop @REJECT"
        );
    }
}
