//! Number and text formatting shared by the renderers: percentages with one decimal, latency in
//! milliseconds with two, counts as integers, "n/a" for anything undefined; escaping for
//! Markdown and HTML.

use super::derived::DeltaBucket;
use super::stats::Estimate;
use super::weighted::WeightedEstimate;

/// A share as a percentage with one decimal, or "n/a".
/// The first `chars` characters of `text`, with "…" when anything was cut.
pub fn cut(text: &str, chars: usize) -> String {
    let mut cut: String = text.chars().take(chars).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

/// Two shares that are about to be compared: one decimal, or three when one decimal would
/// print them alike although they differ (so "0.1% > 0.1%" never appears).
pub fn pct_pair(a: f64, b: f64) -> (String, String) {
    let (x, y) = (format!("{:.1}%", a * 100.0), format!("{:.1}%", b * 100.0));
    if x == y && a != b { (format!("{:.3}%", a * 100.0), format!("{:.3}%", b * 100.0)) } else { (x, y) }
}

/// A difference of shares in percentage points, e.g. "6.0 pp".
pub fn points(v: f64) -> String {
    format!("{:.1} pp", v * 100.0)
}

/// A forecast count (fractional) with one decimal, e.g. "1234.5".
pub fn count(v: f64) -> String {
    format!("{v:.1}")
}

/// A signed change as a percentage with one decimal, e.g. "+10.0%".
pub fn signed_pct(v: f64) -> String {
    format!("{:+.1}%", v * 100.0)
}

/// Seconds as milliseconds with two decimals, or "n/a".
pub fn ms(seconds: Option<f64>) -> String {
    seconds.filter(|s| s.is_finite()).map_or_else(|| "n/a".into(), |s| format!("{:.2} ms", s * 1000.0))
}

/// An estimate as "81.0% [74.2%, 86.5%]", or "n/a".
pub fn estimate(e: &Estimate) -> String {
    match (e.value, e.ci95) {
        (Some(v), Some((lo, hi))) => format!("{:.1}% [{:.1}%, {:.1}%]", v * 100.0, lo * 100.0, hi * 100.0),
        _ => "n/a".into(),
    }
}

/// A weighted estimate as "81.0% [74.2%, 86.5%]", or "n/a".
pub fn weighted_estimate(e: &WeightedEstimate) -> String {
    match (e.value, e.ci95) {
        (Some(v), Some((lo, hi))) => format!("{:.1}% [{:.1}%, {:.1}%]", v * 100.0, lo * 100.0, hi * 100.0),
        _ => "n/a".into(),
    }
}

/// A bucket's range, e.g. "(-0.1, 0]", "≤ -1" or "> 1".
pub fn bucket(b: &DeltaBucket) -> String {
    match (b.lower, b.upper) {
        (None, Some(u)) => format!("≤ {u}"),
        (Some(l), None) => format!("> {l}"),
        (Some(l), Some(u)) => format!("({l}, {u}]"),
        (None, None) => "all".into(),
    }
}

/// A score with three decimals.
pub fn score(v: f64) -> String {
    format!("{v:.3}")
}

/// Escapes text for HTML element content and attribute values.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// Escapes text for a Markdown table cell or line: `&` and `<` as entities (so a renderer that
/// allows HTML shows tags as text, and no autolink forms; `>` alone is harmless), the characters that
/// break tables or start code and emphasis with a backslash, `](` so no link forms, and line
/// breaks as spaces. Underscores stay: GitHub Markdown ignores them inside words
/// (`queue_full`).
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '\n' | '\r' | '\t' => out.push(' '),
            '|' | '\\' | '`' | '*' => {
                out.push('\\');
                out.push(c);
            }
            ']' if chars.peek() == Some(&'(') => out.push_str("\\]"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_numbers_have_fixed_decimals_and_undefined_is_na() {
        assert_eq!(pct(Some(0.8125)), "81.2%");
        assert_eq!(pct(None), "n/a");
        assert_eq!(ms(Some(0.0185)), "18.50 ms");
        assert_eq!(ms(Some(f64::NAN)), "n/a");
        assert_eq!(points(0.06), "6.0 pp");
        assert_eq!(pct_pair(0.00105, 0.001), ("0.105%".to_string(), "0.100%".to_string()));
        assert_eq!(pct_pair(0.5, 0.25), ("50.0%".to_string(), "25.0%".to_string()));
        assert_eq!(estimate(&Estimate::new(8, 10)), "80.0% [49.0%, 94.3%]");
        assert_eq!(estimate(&Estimate::new(0, 0)), "n/a");
    }

    #[test]
    fn report_text_is_escaped_for_html_and_markdown() {
        assert_eq!(html("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        assert_eq!(md("a|b <script>\n*x*"), "a\\|b &lt;script> \\*x\\*");
        assert_eq!(md("[a](javascript:x) [1, 2] queue_full"), "[a\\](javascript:x) [1, 2] queue_full");
    }
}
