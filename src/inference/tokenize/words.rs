//! The pre-tokenizer of a tokenizer run without its normaliser (`stepwise.rs`). The `Whitespace`
//! pre-tokenizer splits a text into the matches of `\w+|[^\w\s]+` (runs of word characters, runs
//! of other non-space characters) with a Unicode regex; on ASCII text that is a split by byte
//! class, which this does without the regex. After the normaliser's skipped steps, that regex
//! was 31% of the instructions spent tokenizing the eval reviews (`benches/callgrind.sh`).
//! Non-ASCII text, and every other pre-tokenizer, is split as the tokenizer splits it.

use std::sync::LazyLock;

use tokenizers::pattern::{Invert, Pattern};
use tokenizers::{Offsets, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

#[derive(Clone)]
pub enum PreSplit {
    /// `Whitespace`: by byte class on ASCII text.
    Whitespace,
    Other(PreTokenizerWrapper),
}

impl From<PreTokenizerWrapper> for PreSplit {
    fn from(pre_tokenizer: PreTokenizerWrapper) -> PreSplit {
        match pre_tokenizer {
            PreTokenizerWrapper::Whitespace(_) => PreSplit::Whitespace,
            other => PreSplit::Other(other),
        }
    }
}

/// The `Whitespace` pre-tokenizer's own pattern (same `regex` crate as `tokenizers`).
static WORDS: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(r"\w+|[^\w\s]+").expect("valid"));

impl PreTokenizer for PreSplit {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        match self {
            PreSplit::Other(pre_tokenizer) => pre_tokenizer.pre_tokenize(pretokenized),
            PreSplit::Whitespace => pretokenized.split(|_, normalized| {
                if normalized.get().is_ascii() {
                    normalized.split(Invert(AsciiWords), SplitDelimiterBehavior::Removed)
                } else {
                    normalized.split(Invert(&*WORDS), SplitDelimiterBehavior::Removed)
                }
            }),
        }
    }
}

/// `\w+|[^\w\s]+` on ASCII text: `\w` is `[0-9A-Za-z_]` and `\s` is tab, line feed, vertical tab,
/// form feed, carriage return and space (Unicode `White_Space` within ASCII).
struct AsciiWords;

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Word,
    Space,
    Other,
}

impl Class {
    fn of(byte: u8) -> Class {
        match byte {
            b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'_' => Class::Word,
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
            _ => Class::Other,
        }
    }
}

impl Pattern for AsciiWords {
    /// Each run of one class, a match unless it is space: what the regex gives (a greedy `\w+`
    /// or `[^\w\s]+` match is exactly such a run), covering the text in order.
    fn find_matches(&self, inside: &str) -> tokenizers::Result<Vec<(Offsets, bool)>> {
        let bytes = inside.as_bytes();
        let Some(&first) = bytes.first() else {
            return Ok(vec![((0, 0), false)]);
        };
        let mut runs = Vec::new();
        let (mut start, mut class) = (0, Class::of(first));
        for (at, &byte) in bytes.iter().enumerate().skip(1) {
            let next = Class::of(byte);
            if next != class {
                runs.push(((start, at), class != Class::Space));
                (start, class) = (at, next);
            }
        }
        runs.push(((start, bytes.len()), class != Class::Space));
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_runs_are_the_regex_matches() {
        let every_byte: String = (0u8..128).map(char::from).collect();
        for text in ["", " ", "a", "Hey man!", "  x__y9 -- ..z\t\x0b\x0c\r\n\x1f!", every_byte.as_str()] {
            assert_eq!(AsciiWords.find_matches(text).unwrap(), (&*WORDS).find_matches(text).unwrap(), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_ascii_runs_are_the_regex_matches(bytes in proptest::collection::vec(0u8..128, 0..64)) {
            let text = String::from_utf8(bytes).unwrap();
            proptest::prop_assert_eq!(
                AsciiWords.find_matches(&text).unwrap(),
                (&*WORDS).find_matches(&text).unwrap(),
                "{:?}", text
            );
        }
    }
}
