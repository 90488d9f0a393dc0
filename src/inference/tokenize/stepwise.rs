//! A tokenizer's normaliser run one step at a time, outside the tokenizer, so that a step which
//! cannot change the text is skipped instead of run.
//!
//! Inside the tokenizer every step runs over every text with its offset bookkeeping, and on
//! ordinary ASCII reviews most of them change nothing: the Unicode forms are the identity, and
//! the bundled word-level tokenizer's five `Replace` patterns (URLs, e-mail addresses, domains,
//! phone numbers, numbers) find nothing in most reviews. Their Oniguruma searches were 23% and
//! lowercasing 14% of the instructions spent tokenizing the eval reviews (`benches/callgrind.sh`,
//! system allocator). Here, on a text that is ASCII at that step:
//! - a Unicode normalisation form is skipped (the identity on ASCII);
//! - `Lowercase` is `make_ascii_lowercase` (what it does to ASCII);
//! - a `Replace` is skipped when a Rust regex compiled from the same pattern finds no match: a
//!   DFA with literal prefilters, where the tokenizer's Oniguruma engine backtracks from every
//!   position. Only for patterns whose meaning the two engines share on ASCII text (see
//!   `prefilter`); any other pattern always runs.
//!
//! Every other step, and every step on non-ASCII text, runs as the tokenizer runs it. The text is
//! then given to the same tokenizer without a normaliser. That is the same as tokenizing the
//! original only when the tokenizer has no added tokens: those are matched in the raw text
//! before it is normalised, so a tokenizer with any is not run this way (`Stepwise::new`).

use tokenizers::{NormalizedString, Normalizer, NormalizerWrapper};

/// A normaliser's steps, run one at a time.
pub struct Stepwise {
    steps: Vec<Step>,
}

enum Step {
    /// NFC, NFD, NFKC or NFKD.
    UnicodeForm(NormalizerWrapper),
    Lowercase(NormalizerWrapper),
    /// `prefilter`: finds a match in every ASCII text in which the step's own pattern does.
    Replace {
        step: NormalizerWrapper,
        prefilter: Option<regex::Regex>,
    },
    Other(NormalizerWrapper),
}

impl Stepwise {
    /// The steps of `tokenizer`'s normaliser (its JSON form), or `None` when the tokenizer has
    /// added tokens or no normaliser.
    pub fn new(tokenizer: &serde_json::Value) -> Result<Option<Stepwise>, String> {
        if tokenizer["added_tokens"].as_array().is_some_and(|tokens| !tokens.is_empty()) {
            return Ok(None);
        }
        let normalizer = &tokenizer["normalizer"];
        let steps = match normalizer["type"].as_str() {
            None => return Ok(None),
            Some("Sequence") => normalizer["normalizers"].as_array().ok_or("normalizer Sequence without a list")?,
            Some(_) => std::slice::from_ref(normalizer),
        };
        let steps = steps.iter().map(Step::new).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Stepwise { steps }))
    }

    /// `text` as the normaliser leaves it.
    pub fn normalize(&self, text: &str) -> Result<String, String> {
        let mut text = text.to_owned();
        for step in &self.steps {
            let ascii = text.is_ascii();
            match step {
                Step::UnicodeForm(_) if ascii => {}
                Step::Lowercase(_) if ascii => text.make_ascii_lowercase(),
                Step::Replace { prefilter: Some(prefilter), .. } if ascii && !prefilter.is_match(&text) => {}
                Step::UnicodeForm(step) | Step::Lowercase(step) | Step::Replace { step, .. } | Step::Other(step) => {
                    let mut normalized = NormalizedString::from(text.as_str());
                    step.normalize(&mut normalized).map_err(|e| format!("normaliser failed: {e}"))?;
                    text = normalized.get().to_owned();
                }
            }
        }
        Ok(text)
    }
}

impl Step {
    fn new(json: &serde_json::Value) -> Result<Step, String> {
        let step: NormalizerWrapper =
            serde_json::from_value(json.clone()).map_err(|e| format!("normaliser step {json}: {e}"))?;
        Ok(match step {
            NormalizerWrapper::NFC(_)
            | NormalizerWrapper::NFD(_)
            | NormalizerWrapper::NFKC(_)
            | NormalizerWrapper::NFKD(_) => Step::UnicodeForm(step),
            NormalizerWrapper::Lowercase(_) => Step::Lowercase(step),
            NormalizerWrapper::Replace(_) => {
                let prefilter = match (json["pattern"]["Regex"].as_str(), json["pattern"]["String"].as_str()) {
                    (Some(pattern), _) => prefilter(pattern),
                    (None, Some(literal)) => regex::Regex::new(&regex::escape(literal)).ok(),
                    (None, None) => None,
                };
                Step::Replace { step, prefilter }
            }
            _ => Step::Other(step),
        })
    }
}

/// A Rust regex for an Oniguruma (Ruby syntax) `pattern` that matches somewhere in an ASCII text
/// whenever `pattern` does, or `None` when that cannot be vouched for. On ASCII text the two
/// engines agree on literals, classes (`\s \w \d`, brackets, POSIX names), repetition,
/// alternation, groups and `\b`/`\B`; they differ on `^` and `$` (line anchors in Ruby), on
/// flags (`(?m)` is dot-all in Ruby), on class operators (`--` is a range in Ruby), on Unicode
/// properties and case folding (Oniguruma folds `ß` to `ss`), and Ruby has constructs Rust lacks
/// (look-around, back-references, possessive and atomic groups, `\h`, `\K`). So the pattern must
/// be ASCII, use no group syntax but `(?:`, no class operator and no property, and compile in
/// Rust to an expression whose only assertions are word boundaries; Rust refuses the constructs
/// it lacks. A possessive quantifier (`a++`) Rust reads as a repetition of a repetition, which
/// matches wherever the possessive one does: a prefilter may match more, never less.
fn prefilter(pattern: &str) -> Option<regex::Regex> {
    let plain = pattern.is_ascii()
        && pattern.match_indices("(?").all(|(at, _)| pattern[at..].starts_with("(?:"))
        && !["--", "&&", "~~", "\\p", "\\P"].iter().any(|op| pattern.contains(op));
    if !plain {
        return None;
    }
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    if !only_word_boundaries(&hir) {
        return None;
    }
    regex::Regex::new(pattern).ok()
}

fn only_word_boundaries(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::{HirKind, Look};
    match hir.kind() {
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) => true,
        HirKind::Look(look) => {
            matches!(look, Look::WordUnicode | Look::WordUnicodeNegate | Look::WordAscii | Look::WordAsciiNegate)
        }
        HirKind::Repetition(r) => only_word_boundaries(&r.sub),
        HirKind::Capture(c) => only_word_boundaries(&c.sub),
        HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().all(only_word_boundaries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_whose_meaning_differs_between_the_engines_get_no_prefilter() {
        for pattern in [
            "^www",            // a line anchor in Ruby
            "com$",            // likewise
            "(?m)a.b",         // dot-all in Ruby, multi-line in Rust
            "(?i)stra\u{df}e", // Oniguruma folds ß to ss
            "[+--]",           // a range in Ruby, a difference in Rust
            "\\p{Alpha}+",     // property tables
            "(?=x)y",          // look-ahead: Rust refuses
            "(a)\\1",          // back-reference: Rust refuses
            "\\h+",            // hex digit in Ruby: Rust refuses
            "\\Aabc",          // an anchor
        ] {
            assert!(prefilter(pattern).is_none(), "{pattern}");
        }
        // The bundled word-level tokenizer's patterns all get one.
        for pattern in [
            "(?:https?://|www\\.)[^\\s<>\\\"]+",
            "[^\\s@<>()\\[\\]]{1,64}@[^\\s@<>()\\[\\]]{1,255}\\.[a-z]{2,}",
            "\\b[a-z0-9][a-z0-9-]{0,62}\\.(?:com|net|org|biz|info|ly|io|co\\.uk|us)\\b",
            "\\+?[0-9](?:[ ().-]{0,2}[0-9]){8,}",
            "[0-9]+",
        ] {
            assert!(prefilter(pattern).is_some(), "{pattern}");
        }
    }
}
