//! The pre-tokenizer of a tokenizer run without its normaliser (`stepwise.rs`). The `Whitespace`
//! pre-tokenizer splits a text into the matches of `\w+|[^\w\s]+` (runs of word characters, runs
//! of other non-space characters) with a Unicode regex; on ASCII text that is a split by byte
//! class, which this does without the regex. After the normaliser's skipped steps, that regex
//! was 16% of the instructions spent tokenizing the eval reviews (`benches/callgrind.sh`).
//! Non-ASCII text goes to the `Whitespace` pre-tokenizer itself, and so does every other
//! pre-tokenizer's.

use tokenizers::pattern::{Invert, Pattern};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{
    OffsetReferential, OffsetType, Offsets, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

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

impl PreTokenizer for PreSplit {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        match self {
            PreSplit::Other(pre_tokenizer) => pre_tokenizer.pre_tokenize(pretokenized),
            PreSplit::Whitespace if is_ascii(pretokenized) => pretokenized
                .split(|_, normalized| normalized.split(Invert(AsciiWords), SplitDelimiterBehavior::Removed)),
            PreSplit::Whitespace => Whitespace.pre_tokenize(pretokenized),
        }
    }
}

fn is_ascii(pretokenized: &PreTokenizedString) -> bool {
    pretokenized.get_splits(OffsetReferential::Normalized, OffsetType::Byte).iter().all(|(text, _, _)| text.is_ascii())
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

    /// The pieces (text and offsets) `pre_tokenizer` splits `text` into.
    fn pieces(pre_tokenizer: &impl PreTokenizer, text: &str) -> Vec<(String, Offsets)> {
        let mut pretokenized = PreTokenizedString::from(text);
        pre_tokenizer.pre_tokenize(&mut pretokenized).unwrap();
        pretokenized
            .get_splits(OffsetReferential::Normalized, OffsetType::Byte)
            .into_iter()
            .map(|(piece, offsets, _)| (piece.to_string(), offsets))
            .collect()
    }

    #[test]
    fn ascii_runs_are_the_regex_matches() {
        let every_byte: String = (0u8..128).map(char::from).collect();
        for text in ["", " ", "a", "Hey man!", "  x__y9 -- ..z\t\x0b\x0c\r\n\x1f!", every_byte.as_str()] {
            assert_eq!(pieces(&PreSplit::Whitespace, text), pieces(&Whitespace, text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_ascii_runs_are_the_regex_matches(bytes in proptest::collection::vec(0u8..128, 0..64)) {
            let text = String::from_utf8(bytes).unwrap();
            proptest::prop_assert_eq!(pieces(&PreSplit::Whitespace, &text), pieces(&Whitespace, &text), "{:?}", text);
        }
    }
}
