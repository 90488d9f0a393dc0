//! Turns review texts into the padded `input_ids` / `attention_mask` tensors a model takes.
//!
//! Runs on inference worker threads (never on the async runtime). Reads at most
//! `max_sequence_length * CHARS_PER_TOKEN` characters of a review (of a long one, first a prefix
//! of `max_sequence_length * PREFIX_CHARS_PER_TOKEN`, which most often suffices), truncates to
//! the model's `max_sequence_length` and pads to the longest sequence in the batch with id 0 and
//! mask 0, whatever padding the tokenizer file itself asks for. A tokenizer whose cost on crafted text
//! grows faster than its input is refused at load (`Encoder::check_cost`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenizers::{
    DecoderWrapper, Encoding, ModelWrapper, NormalizerWrapper, PostProcessor, PostProcessorWrapper, PreTokenizer,
    Tokenizer, TokenizerImpl, TruncationDirection, TruncationParams, TruncationStrategy,
};

mod stepwise;
mod words;
use stepwise::Stepwise;
use words::PreSplit;

/// A tokenizer without a normaliser, whose `Whitespace` pre-tokenizer splits ASCII text by byte
/// class (`words.rs`): what takes a text normalised step by step.
type Bare = TokenizerImpl<ModelWrapper, NormalizerWrapper, PreSplit, PostProcessorWrapper, DecoderWrapper>;

/// A tokenizer configured for one model.
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Arc<Tokenizer>,
    /// The same tokenizer without its leading Unicode normalisation steps, for ASCII texts, where
    /// those steps are the identity. Most reviews are ASCII, and NFKC alone was ~18% of the
    /// instructions spent tokenizing them (`benches/callgrind.sh`). `None` when the tokenizer has
    /// no such step.
    ascii: Option<Arc<Tokenizer>>,
    /// `tokenizer` and `ascii` for reading a long review's prefix: raw tokens (no special ones),
    /// truncated `PREFIX_MARGIN_TOKENS` past the model's length; see `PREFIX_CHARS_PER_TOKEN`.
    probe: Arc<Tokenizer>,
    ascii_probe: Option<Arc<Tokenizer>>,
    /// For a tokenizer without added tokens: its normaliser run step by step, skipping steps that
    /// cannot change the text, and the tokenizer and probe without a normaliser that take the
    /// result. Used for every text when set (`stepwise.rs`).
    stepwise: Option<(Arc<Stepwise>, Arc<Bare>, Arc<Bare>)>,
    /// Special tokens the tokenizer adds to a text (`[CLS]`, `[SEP]`), within the model's length.
    added: usize,
    /// The id of the tokenizer's unknown token, if it has one (input-quality metrics count it).
    pub unknown_id: Option<i64>,
    pub max_sequence_length: usize,
    /// Characters of a review that are read; see `CHARS_PER_TOKEN`.
    pub max_chars: usize,
    /// Characters tokenized first; see `PREFIX_CHARS_PER_TOKEN`.
    prefix_chars: usize,
}

/// Characters of a review read per token of the model's length limit. The tokens a model keeps
/// come from the start of the text, so tokenizing beyond this is work nobody uses; on crafted
/// text it is also the work that costs, since normaliser patterns run over the whole text before
/// truncation. 32 characters per token is several times the longest run of ordinary words.
pub const CHARS_PER_TOKEN: usize = 32;

/// Characters of a long review tokenized first, per token of the model's length limit: several
/// tokens' worth of ordinary text (about 5 characters a word), a quarter of `CHARS_PER_TOKEN`.
/// When that prefix alone yields `PREFIX_MARGIN_TOKENS` more tokens than the model keeps, its
/// first tokens are the review's own and the rest of the review is not read; otherwise the whole
/// readable part is tokenized. For ordinary text that reads a quarter of the characters.
const PREFIX_CHARS_PER_TOKEN: usize = 8;
/// Tokens past the model's length that the prefix must yield. The prefix ends at whitespace, so a
/// pattern that cannot span whitespace (the URL, e-mail, domain and number patterns of the
/// bundled normaliser) is never cut; one that can (the phone pattern) changes only the tokens from
/// where its match starts, and a greedy match that starts among the kept tokens runs to the cut
/// and becomes one replacement, leaving fewer tokens after them than this, so then the whole
/// text is read.
const PREFIX_MARGIN_TOKENS: usize = 64;

/// A tokenizer is refused when crafted text of `max_chars` costs more than this many times
/// ordinary text of the same length. Measured on 4,096-character probes (Python binding, same
/// core): the bundled tokenizer with bounded patterns at most 4.2x, with the unbounded ones it
/// shipped before 37-292x; longer probes widen the gap (`docs/model-package.md`).
pub const MAX_COST_RATIO: f64 = 10.0;

/// The texts the load-time cost check tokenizes: shapes that make a regex normaliser with an
/// unbounded repetition backtrack over the rest of the text from every start position.
/// Each is `head`, then `unit` repeated, then `tail`: `max_chars` characters in all.
const COST_PROBES: [Probe; 10] = [
    Probe { name: "run ending in @", head: "", unit: "a", tail: "@" },
    Probe { name: "non-ASCII run ending in @", head: "", unit: "é", tail: "@" },
    Probe { name: "@ then a run", head: "a@", unit: "a", tail: "" },
    Probe { name: "hyphenated run ending in a dot", head: "", unit: "a-", tail: "." },
    Probe { name: "hyphenated digits ending in a dot", head: "", unit: "1-", tail: "1." },
    Probe { name: "dotted run", head: "", unit: "a.", tail: "" },
    Probe { name: "digits and separators", head: "", unit: "1 ", tail: "x" },
    Probe { name: "run of digits", head: "", unit: "1", tail: "" },
    Probe { name: "url-like run", head: "", unit: "www.a", tail: "/" },
    // Not a backtracking shape: a character NFKC turns into 18, which `readable` must count as such.
    Probe { name: "compatibility characters NFKC expands", head: "", unit: "\u{FDFA} ", tail: "" },
];

struct Probe {
    name: &'static str,
    head: &'static str,
    unit: &'static str,
    tail: &'static str,
}

impl Probe {
    /// The probe's text, `n` characters long (`head` and `tail` are ASCII).
    fn text(&self, n: usize) -> String {
        let body = n.saturating_sub(self.head.len() + self.tail.len());
        let mut text = String::with_capacity(n);
        text.push_str(self.head);
        text.extend(self.unit.chars().cycle().take(body));
        text.push_str(self.tail);
        text
    }
}

/// The byte offset at which `text` reaches `n` characters as Unicode compatibility
/// normalisation (NFKC, a tokenizer's usual first step) makes them, `None` if it never does.
/// A compatibility character can become many: U+FDFA becomes 18, and counted as one, 16 KiB of it
/// were tokenized as 98,000 characters, 86 ms a review against 1 ms for English of that size.
/// ASCII is never changed by it, and is counted at once.
pub fn cut_at(text: &str, n: usize) -> Option<usize> {
    let mut counted = 0;
    for (i, c) in text.char_indices() {
        if counted >= n {
            return Some(i);
        }
        counted += if c.is_ascii() { 1 } else { normalised_len(c) };
    }
    None
}

/// How many characters NFKC makes of `c` (at least one).
fn normalised_len(c: char) -> usize {
    use unicode_normalization_alignments::UnicodeNormalization;
    let mut decomposed = 0;
    unicode_normalization_alignments::char::decompose_compatible(c, |_| decomposed += 1);
    // Most characters have no decomposition; a composed one (é) recomposes to itself.
    if decomposed <= 1 { 1 } else { std::iter::once(c).nfkc().count().max(1) }
}

/// Ordinary review text, the cost the probes are compared with.
const COST_BASELINE: &str = "great product, fast delivery and friendly seller. would buy again! ";

/// A batch of token ids and masks, row-major `[rows, seq]`. Reused across batches by a worker so
/// steady-state encoding does not allocate tensors.
#[derive(Debug, Default, Clone)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub seq: usize,
}

/// Unpadded token ids of several texts, concatenated: what a tokenizer produced, before padding.
/// Kept when a shadow shares the live model's tokenizer, so a review is tokenized once.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TokenRows {
    ids: Vec<i64>,
    /// End offset of each row in `ids`.
    ends: Vec<usize>,
}

impl TokenRows {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.ends.clear();
    }

    pub fn row(&self, i: usize) -> &[i64] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.ids[start..self.ends[i]]
    }

    pub fn push(&mut self, row: impl IntoIterator<Item = i64>) {
        self.ids.extend(row);
        self.ends.push(self.ids.len());
    }

    /// Appends rows `range` of `other`.
    pub fn extend_from(&mut self, other: &TokenRows, range: std::ops::Range<usize>) {
        for i in range {
            self.push(other.row(i).iter().copied());
        }
    }
}

impl TokenBatch {
    /// Pads `rows` into this batch (id 0, mask 0), replacing its contents. At least one column,
    /// so a text with no tokens still yields a well-formed tensor.
    pub fn pad_from(&mut self, rows: &TokenRows) {
        let seq = (0..rows.len()).map(|r| rows.row(r).len()).max().unwrap_or(0).max(1);
        self.rows = rows.len();
        self.seq = seq;
        self.ids.clear();
        self.ids.resize(self.rows * seq, 0);
        self.mask.clear();
        self.mask.resize(self.rows * seq, 0);
        for r in 0..rows.len() {
            let row = rows.row(r);
            let base = r * seq;
            self.ids[base..base + row.len()].copy_from_slice(row);
            self.mask[base..base + row.len()].fill(1);
        }
    }
}

/// The unknown token's id. WordPiece, WordLevel and BPE models name the token; Unigram keeps
/// only its id, which no accessor exposes, so only for Unigram is the model serialised to read it.
fn unknown_id(tokenizer: &Tokenizer) -> Option<i64> {
    let token = match tokenizer.get_model() {
        ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
        ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
        ModelWrapper::BPE(m) => m.unk_token.clone(),
        ModelWrapper::Unigram(m) => {
            return serde_json::to_value(m).ok()?.get("unk_id")?.as_i64();
        }
    };
    tokenizer.token_to_id(&token?).map(i64::from)
}

impl Encoder {
    pub fn new(mut tokenizer: Tokenizer, max_sequence_length: usize) -> Result<Encoder, String> {
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_sequence_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("cannot set truncation to {max_sequence_length}: {e}"))?;
        // We pad ourselves (to the batch's longest row): a tokenizer file with fixed padding
        // would otherwise make every review cost the full length.
        tokenizer.with_padding(None);
        // The tokenizer as JSON, read once by the two variants below.
        let json = tokenizer.to_string(false).map_err(|e| format!("cannot serialise the tokenizer: {e}"))?;
        let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("tokenizer JSON: {e}"))?;
        let stepwise = Stepwise::new(&json)?;
        let ascii = ascii_variant(json)?;
        let unknown_id = unknown_id(&tokenizer);
        let added = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let probe_truncation = TruncationParams {
            max_length: max_sequence_length + PREFIX_MARGIN_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        let probe = |t: &Tokenizer| probe_variant(t, &probe_truncation).map(|p| Arc::new(Tokenizer::from(p)));
        let stepwise = match stepwise {
            Some(steps) => {
                let bare = bare_variant(&tokenizer)?;
                let bare_probe = probe_variant(&bare, &probe_truncation)?;
                Some((Arc::new(steps), Arc::new(bare_probe), Arc::new(bare)))
            }
            None => None,
        };
        Ok(Encoder {
            probe: probe(&tokenizer)?,
            ascii_probe: ascii.as_ref().map(probe).transpose()?,
            stepwise,
            added,
            tokenizer: Arc::new(tokenizer),
            ascii: ascii.map(Arc::new),
            unknown_id,
            max_sequence_length,
            max_chars: max_sequence_length.saturating_mul(CHARS_PER_TOKEN).max(1),
            prefix_chars: max_sequence_length.saturating_mul(PREFIX_CHARS_PER_TOKEN).max(1),
        })
    }

    /// The part of `text` that is tokenized: its first `max_chars` characters, as normalisation
    /// counts them (`cut_at`).
    pub fn readable<'a>(&self, text: &'a str) -> &'a str {
        match cut_at(text, self.max_chars) {
            Some(cut) => &text[..cut],
            None => text,
        }
    }

    /// The first words of a readable text longer than `prefix_chars` (as `cut_at` counts), cut at
    /// the last whitespace before that; `None` for a shorter text or one without whitespace there.
    fn prefix<'a>(&self, text: &'a str) -> Option<&'a str> {
        let cut = cut_at(text, self.prefix_chars)?;
        let end = text[..cut].rfind(char::is_whitespace)?;
        Some(&text[..end])
    }

    /// Measures the tokenizer on crafted texts of `max_chars` characters against ordinary text
    /// of the same length, and refuses it (saying which shape and how slow) when one costs
    /// more than `MAX_COST_RATIO` times as much. Both texts are tokenized whole (no prefix read:
    /// like with like), timed alternately, each the fastest of its tries, so a busy machine slows
    /// both sides alike; a ratio over the limit is measured again with more tries before the
    /// tokenizer is refused, since a pattern that backtracks stays slow and a burst of load does
    /// not (under a parallel build, one pass of three tries put the bundled tokenizer at 11-13x).
    pub fn check_cost(&self) -> Result<(), String> {
        let n = self.max_chars;
        let ordinary = Probe { name: "ordinary", head: "", unit: COST_BASELINE, tail: "" }.text(n);
        for probe in &COST_PROBES {
            // What a review of it would have read.
            let crafted = probe.text(n);
            let crafted = self.readable(&crafted);
            let mut times = self.fastest_alternately(crafted, &ordinary, 3)?;
            if ratio(times) > MAX_COST_RATIO {
                times = self.fastest_alternately(crafted, &ordinary, 15)?;
            }
            let (took, baseline) = times;
            let ratio = ratio(times);
            if ratio > MAX_COST_RATIO {
                let name = probe.name;
                return Err(format!(
                    "tokenizing a crafted text ({name}, {n} characters) took {:.1} ms, {ratio:.0}x ordinary text \
                     of the same length ({:.2} ms; the limit is {MAX_COST_RATIO}x): a normaliser or \
                     pre-tokenizer pattern backtracks super-linearly; bound its repetitions (e.g. {{1,64}} \
                     instead of +), see docs/model-package.md",
                    took.as_secs_f64() * 1e3,
                    baseline.as_secs_f64() * 1e3,
                ));
            }
        }
        Ok(())
    }

    /// The fastest of `tries` whole tokenizations of `a` and of `b`, timed alternately; the
    /// second at least 50 us, so a tiny baseline cannot make a ratio.
    fn fastest_alternately(&self, a: &str, b: &str, tries: usize) -> Result<(Duration, Duration), String> {
        let time = |text: &str| -> Result<Duration, String> {
            let start = Instant::now();
            self.tokenizer_for(text).encode_fast(text, true).map_err(failed)?;
            Ok(start.elapsed())
        };
        let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
        for _ in 0..tries {
            best_a = best_a.min(time(a)?);
            best_b = best_b.min(time(b)?);
        }
        Ok((best_a, best_b.max(Duration::from_micros(50))))
    }

    /// Appends each text's truncated, unpadded token ids to `rows`.
    pub fn encode_rows<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
        rows: &mut TokenRows,
    ) -> Result<(), String> {
        for text in texts {
            let text = self.readable(text);
            let encoding = match self.encode_prefix(text)? {
                Some(encoding) => encoding,
                None => self.encode(text, false)?,
            };
            // Unpadded, every token is attended to: the mask is all ones, so ids suffice.
            rows.push(encoding.get_ids().iter().map(|&id| i64::from(id)));
        }
        Ok(())
    }

    /// `text` encoded whole with special tokens, or as raw tokens by the prefix `probe`.
    fn encode(&self, text: &str, probe: bool) -> Result<Encoding, String> {
        if let Some((steps, bare_probe, bare)) = &self.stepwise {
            let normalized = steps.normalize(text)?;
            let tokenizer = if probe { bare_probe } else { bare };
            return tokenizer.encode_fast(normalized, !probe).map_err(failed);
        }
        let tokenizer = match (&self.ascii, &self.ascii_probe) {
            (Some(ascii), Some(ascii_probe)) if text.is_ascii() => {
                if probe {
                    ascii_probe
                } else {
                    ascii
                }
            }
            _ if probe => &self.probe,
            _ => &self.tokenizer,
        };
        tokenizer.encode_fast(text, !probe).map_err(failed)
    }

    /// The tokenizer that runs every step of its normaliser on `text` (the one without Unicode
    /// normalisation for ASCII text): what the cost check measures, since a pattern that
    /// backtracks on a text without a match also does on one with a match after the crafted run,
    /// where the step-by-step path runs it too.
    fn tokenizer_for(&self, text: &str) -> &Tokenizer {
        match &self.ascii {
            Some(ascii) if text.is_ascii() => ascii,
            _ => &self.tokenizer,
        }
    }

    /// `text`'s encoding read from its prefix, when the prefix yields `PREFIX_MARGIN_TOKENS` more
    /// tokens than the model keeps; `None` when the whole text has to be read.
    fn encode_prefix(&self, text: &str) -> Result<Option<Encoding>, String> {
        let Some(prefix) = self.prefix(text) else {
            return Ok(None);
        };
        let mut raw = self.encode(prefix, true)?;
        if raw.len() < self.max_sequence_length + PREFIX_MARGIN_TOKENS {
            return Ok(None);
        }
        raw.truncate(self.max_sequence_length.saturating_sub(self.added), 0, TruncationDirection::Right);
        self.tokenizer.post_process(raw, None, true).map(Some).map_err(failed)
    }

    /// Encodes `texts` into `out`, replacing its contents.
    pub fn encode_into<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
        out: &mut TokenBatch,
    ) -> Result<(), String> {
        let mut rows = TokenRows::default();
        self.encode_rows(texts, &mut rows)?;
        out.pad_from(&rows);
        Ok(())
    }
}

/// How many times the first duration is the second.
fn ratio((a, b): (Duration, Duration)) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn failed(e: tokenizers::Error) -> String {
    format!("tokenizer failed: {e}")
}

/// A copy of `tokenizer` for reading a long review's prefix: raw tokens (no post-processor),
/// truncated at `truncation`.
fn probe_variant<PT: PreTokenizer + Clone>(
    tokenizer: &TokenizerImpl<ModelWrapper, NormalizerWrapper, PT, PostProcessorWrapper, DecoderWrapper>,
    truncation: &TruncationParams,
) -> Result<TokenizerImpl<ModelWrapper, NormalizerWrapper, PT, PostProcessorWrapper, DecoderWrapper>, String> {
    let mut probe = tokenizer.clone();
    probe
        .with_truncation(Some(truncation.clone()))
        .map_err(|e| format!("cannot set truncation for the prefix probe: {e}"))?;
    probe.with_post_processor(None::<PostProcessorWrapper>);
    Ok(probe)
}

/// `tokenizer` (one without added tokens) without its normaliser, its pre-tokenizer as `PreSplit`.
fn bare_variant(tokenizer: &Tokenizer) -> Result<Bare, String> {
    let mut bare = Bare::new(tokenizer.get_model().clone());
    bare.with_pre_tokenizer(tokenizer.get_pre_tokenizer().cloned().map(PreSplit::from))
        .with_post_processor(tokenizer.get_post_processor().cloned())
        .with_decoder(tokenizer.get_decoder().cloned())
        .with_truncation(tokenizer.get_truncation().cloned())
        .map_err(|e| format!("tokenizer without its normaliser: {e}"))?;
    Ok(bare)
}

/// Unicode normalisation forms: each maps an ASCII string to itself, offsets included.
const UNICODE_FORMS: [&str; 4] = ["NFC", "NFD", "NFKC", "NFKD"];

/// `tokenizer` with the Unicode normalisation steps that open its normaliser removed, or `None`
/// if it has none. Only a leading run is removed: a later step could see non-ASCII text made by
/// an earlier one (a `Replace` with non-ASCII content), so skipping it would not be exact.
fn ascii_variant(mut value: serde_json::Value) -> Result<Option<Tokenizer>, String> {
    let is_form = |n: &serde_json::Value| n["type"].as_str().is_some_and(|t| UNICODE_FORMS.contains(&t));
    let normalizer = &mut value["normalizer"];
    if is_form(normalizer) {
        *normalizer = serde_json::Value::Null;
    } else if normalizer["type"] == "Sequence" {
        let steps = normalizer["normalizers"].as_array_mut().ok_or("normalizer Sequence without a list")?;
        let leading = steps.iter().take_while(|n| is_form(n)).count();
        if leading == 0 {
            return Ok(None);
        }
        steps.drain(..leading);
    } else {
        return Ok(None);
    }
    Tokenizer::from_str(&value.to_string())
        .map(Some)
        .map_err(|e| format!("tokenizer without Unicode normalisation: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(max: usize) -> Encoder {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-abuse/tokenizer.json");
        Encoder::new(Tokenizer::from_file(path).unwrap(), max).unwrap()
    }

    #[test]
    fn the_unknown_token_is_found_and_used_for_unseen_words() {
        let e = encoder(64);
        let unk = e.unknown_id.expect("the fixture's WordLevel model names [UNK]");
        let mut rows = TokenRows::default();
        e.encode_rows(["qzxv idiot"], &mut rows).unwrap();
        assert!(rows.row(0).contains(&unk), "{:?}", rows.row(0));
        assert!(rows.row(0).iter().any(|&id| id != unk), "{:?}", rows.row(0));
    }

    #[test]
    fn pads_to_the_longest_row_with_zeros() {
        let mut batch = TokenBatch::default();
        encoder(64).encode_into(["you idiot", "great product fast delivery"], &mut batch).unwrap();
        assert_eq!((batch.rows, batch.seq), (2, 4));
        assert_eq!(&batch.mask, &[1, 1, 0, 0, 1, 1, 1, 1]);
        assert!(batch.ids[..2].iter().all(|&id| id > 1), "known words: {:?}", batch.ids);
        assert_eq!(&batch.ids[2..4], &[0, 0]);
    }

    #[test]
    fn truncates_to_the_model_length() {
        let mut batch = TokenBatch::default();
        let long = "great ".repeat(100);
        encoder(8).encode_into([long.as_str()], &mut batch).unwrap();
        assert_eq!((batch.rows, batch.seq), (1, 8));
        assert!(batch.mask.iter().all(|&m| m == 1));
    }

    #[test]
    fn reuses_buffers_without_stale_values() {
        let enc = encoder(64);
        let mut batch = TokenBatch::default();
        enc.encode_into(["great product fast delivery", "you"], &mut batch).unwrap();
        enc.encode_into(["you"], &mut batch).unwrap();
        assert_eq!((batch.rows, batch.seq), (1, 1));
        assert_eq!(batch.ids.len(), 1);
        assert_eq!(batch.mask, [1]);
    }

    #[test]
    fn rows_round_trip_through_padding() {
        let enc = encoder(64);
        let mut rows = TokenRows::default();
        enc.encode_rows(["you idiot", "great product fast delivery"], &mut rows).unwrap();
        let mut copy = TokenRows::default();
        copy.extend_from(&rows, 1..2);
        assert_eq!(copy.row(0), rows.row(1));
        let (mut a, mut b) = (TokenBatch::default(), TokenBatch::default());
        a.pad_from(&rows);
        enc.encode_into(["you idiot", "great product fast delivery"], &mut b).unwrap();
        assert_eq!((a.ids, a.mask), (b.ids, b.mask));
    }

    /// The bundled models' tokenizer: NFKC, lowercase and five regex replacements.
    fn bundled() -> &'static Encoder {
        static ENCODER: std::sync::OnceLock<Encoder> = std::sync::OnceLock::new();
        ENCODER.get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/abuse-v1/tokenizer.json");
            Encoder::new(Tokenizer::from_file(path).unwrap(), 256).unwrap()
        })
    }

    /// The MiniLM candidate's tokenizer: BERT normaliser and pre-tokenizer, WordPiece, 128 tokens.
    fn minilm() -> &'static Encoder {
        static ENCODER: std::sync::OnceLock<Encoder> = std::sync::OnceLock::new();
        ENCODER.get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/abuse-minilm/tokenizer.json");
            Encoder::new(Tokenizer::from_file(path).unwrap(), 128).unwrap()
        })
    }

    /// Ids of the whole readable part of `text`, as the tokenizer file says, without the prefix.
    fn whole_ids(enc: &Encoder, text: &str) -> Vec<u32> {
        reference_ids(enc, enc.readable(text))
    }

    fn eval_texts() -> Vec<String> {
        let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/eval/reviews.jsonl")).unwrap();
        file.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_long_review_read_from_its_prefix_gives_the_ids_of_the_whole_text() {
        let texts = eval_texts();
        let mut from_prefix = 0;
        for enc in [bundled(), minilm()] {
            // Long reviews made of the eval reviews, starting at each one in turn, so the prefix
            // is cut at many different places; then ones with a phone number, a URL and an
            // e-mail address across each possible cut.
            let mut long: Vec<String> = (0..texts.len())
                .map(|start| texts.iter().cycle().skip(start).take(60).cloned().collect::<Vec<_>>().join(" "))
                .collect();
            let words = "great product fast delivery ".repeat(enc.prefix_chars / 28);
            for shift in 0..40 {
                let head = &words[..words.len() - shift];
                for tail in [
                    "+1 (555) 123-4567 89 call now",
                    "https://example.com/a/b?c=d ok",
                    "me@example.com ok",
                    "9 9 9 9 9 9 9 9 9 9",
                ] {
                    long.push(format!("{head}{tail} {words}"));
                }
            }
            for text in &long {
                from_prefix += usize::from(enc.encode_prefix(enc.readable(text)).unwrap().is_some());
                assert_eq!(fast_ids(enc, text), whole_ids(enc, text), "{text}");
            }
        }
        assert!(from_prefix > 100, "the prefix was used for only {from_prefix} texts");
    }

    #[test]
    fn a_text_whose_prefix_yields_too_few_tokens_is_read_whole() {
        let enc = bundled();
        // One word as long as the prefix, then ordinary words: the prefix is a few tokens.
        let text = format!("{} {}", "a".repeat(enc.prefix_chars), "you idiot ".repeat(400));
        assert!(enc.encode_prefix(enc.readable(&text)).unwrap().is_none());
        assert_eq!(fast_ids(enc, &text), whole_ids(enc, &text));
        assert_eq!(fast_ids(enc, &text).len(), 256, "the words after the long one are read");
    }

    /// Ids from the tokenizer file as written, bypassing the ASCII variant.
    fn reference_ids(enc: &Encoder, text: &str) -> Vec<u32> {
        enc.tokenizer.encode_fast(text, true).unwrap().get_ids().to_vec()
    }

    fn fast_ids(enc: &Encoder, text: &str) -> Vec<u32> {
        let mut rows = TokenRows::default();
        enc.encode_rows([text], &mut rows).unwrap();
        rows.row(0).iter().map(|&id| id as u32).collect()
    }

    #[test]
    fn the_ascii_variant_drops_only_the_leading_unicode_normalisation() {
        let enc = bundled();
        let ascii = enc.ascii.as_ref().expect("NFKC leads the bundled normaliser");
        let steps = |t: &Tokenizer| {
            let v: serde_json::Value = serde_json::from_str(&t.to_string(false).unwrap()).unwrap();
            v["normalizer"]["normalizers"].as_array().unwrap().iter().map(|n| n["type"].to_string()).collect::<Vec<_>>()
        };
        let (full, short) = (steps(&enc.tokenizer), steps(ascii));
        assert_eq!(full[0], "\"NFKC\"");
        assert_eq!(short, full[1..]);
        // A tokenizer without Unicode normalisation has no variant.
        assert!(encoder(64).ascii.is_none());
    }

    #[test]
    fn non_ascii_text_still_goes_through_nfkc() {
        let enc = bundled();
        // Fullwidth letters and a ligature: NFKC folds them to ASCII words the vocabulary knows.
        for text in ["ｙｏｕ ａｒｅ ａｎ ｉｄｉｏｔ", "ﬁne product", "Café crème, 5★"] {
            assert_eq!(fast_ids(enc, text), reference_ids(enc, text), "{text}");
        }
        assert_eq!(fast_ids(enc, "ｉｄｉｏｔ"), fast_ids(enc, "idiot"));
    }

    #[test]
    fn eval_reviews_tokenize_exactly_as_the_tokenizer_file_says() {
        let enc = bundled();
        let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/eval/reviews.jsonl")).unwrap();
        let mut ascii = 0;
        for line in file.lines() {
            let text = serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].as_str().unwrap().to_string();
            ascii += usize::from(text.is_ascii());
            assert_eq!(fast_ids(enc, &text), reference_ids(enc, &text), "{text}");
        }
        assert!(ascii > 0, "the eval file exercises the ASCII path");
    }

    proptest::proptest! {
        #[test]
        fn ascii_fast_path_gives_the_same_ids(text in "[ -~\t\n\r]{0,300}") {
            let enc = bundled();
            proptest::prop_assert_eq!(fast_ids(enc, &text), reference_ids(enc, &text));
        }

        #[test]
        fn long_url_phone_and_email_like_text_gives_the_ids_of_the_whole_text(
            text in "([A-Za-z]{1,8}|[0-9]{1,12}|www\\.|https?://|@|\\.(com|co\\.uk|biz)|[ ().+-]|\\t| ){300,900}"
        ) {
            for enc in [bundled(), minilm()] {
                proptest::prop_assert_eq!(fast_ids(enc, &text), whole_ids(enc, &text));
            }
        }

        #[test]
        fn ascii_fast_path_gives_the_same_ids_on_url_phone_and_email_like_text(
            text in "([A-Za-z]{1,8}|[0-9]{1,12}|www\\.|https?://|@|\\.(com|co\\.uk|biz)|[ ().+-]|\\t){0,40}"
        ) {
            let enc = bundled();
            proptest::prop_assert_eq!(fast_ids(enc, &text), reference_ids(enc, &text));
        }
    }

    #[test]
    fn only_the_first_max_chars_characters_are_read() {
        let e = encoder(8);
        assert_eq!(e.max_chars, 8 * CHARS_PER_TOKEN);
        let text = "great ".repeat(100) + "idiot";
        assert_eq!(e.readable(&text).chars().count(), e.max_chars);
        // Multi-byte characters are counted as characters and cut on a boundary.
        let accents = "é".repeat(1000);
        assert_eq!(e.readable(&accents), "é".repeat(e.max_chars));
        // A compatibility character counts as the characters NFKC makes of it: U+FDFA as 18.
        let expanding = "\u{FDFA}".repeat(1000);
        assert_eq!(e.readable(&expanding), "\u{FDFA}".repeat(e.max_chars.div_ceil(18)));
        assert_eq!(cut_at("a\u{FDFA}b", 2), Some(1 + '\u{FDFA}'.len_utf8()));
        assert_eq!(e.readable("short"), "short");
        // The tokens a model keeps come from the part that is read.
        let (mut whole, mut part) = (TokenRows::default(), TokenRows::default());
        e.encode_rows([text.as_str()], &mut whole).unwrap();
        part.push(e.tokenizer.encode_fast(e.readable(&text), true).unwrap().get_ids().iter().map(|&id| i64::from(id)));
        assert_eq!(whole, part);
    }

    /// The tiny fixture's tokenizer with `pattern` as a `Replace` normaliser, at 256 tokens.
    fn with_replace(pattern: &str) -> Encoder {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-abuse/tokenizer.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        json["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "Lowercase"},
            {"type": "Replace", "pattern": {"Regex": pattern}, "content": " xxemail "},
        ]});
        Encoder::new(Tokenizer::from_str(&json.to_string()).unwrap(), 256).unwrap()
    }

    #[test]
    fn a_normaliser_that_backtracks_is_refused_and_its_bounded_form_passes() {
        let unbounded = with_replace(r"[^\s@<>()\[\]]+@[^\s@<>()\[\]]+\.[a-z]{2,}");
        let refusal = unbounded.check_cost().expect_err("quadratic on a run ending in @");
        assert!(refusal.contains("run ending in @") && refusal.contains("8192 characters"), "{refusal}");
        let bounded = with_replace(r"[^\s@<>()\[\]]{1,64}@[^\s@<>()\[\]]{1,255}\.[a-z]{2,24}");
        bounded.check_cost().expect("bounded repetitions are linear");
        encoder(64).check_cost().expect("no normaliser patterns at all");
    }

    #[test]
    fn a_text_with_no_tokens_still_makes_a_well_formed_row() {
        let mut batch = TokenBatch::default();
        encoder(64).encode_into(["   "], &mut batch).unwrap();
        assert_eq!((batch.rows, batch.seq), (1, 1));
        assert_eq!((batch.ids[0], batch.mask[0]), (0, 0));
    }

    /// The bundled word-level tokenizer (`models/abuse-v1`, shared by the v1 and v2 models).
    fn word_level() -> (Tokenizer, Encoder) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/abuse-v1/tokenizer.json");
        let tokenizer = Tokenizer::from_file(path).unwrap();
        let encoder = Encoder::new(tokenizer.clone(), 256).unwrap();
        assert!(encoder.stepwise.is_some(), "no added tokens: normalised step by step");
        (tokenizer, encoder)
    }

    /// The ids `tokenizer` itself gives `text` (every normaliser step run inside it), truncated
    /// to `max`.
    fn own_ids(tokenizer: &Tokenizer, text: &str, max: usize) -> Vec<u32> {
        let mut ids = tokenizer.encode_fast(text, true).unwrap().get_ids().to_vec();
        ids.truncate(max);
        ids
    }

    #[test]
    fn the_step_by_step_normaliser_gives_the_tokenizers_own_ids_on_the_eval_reviews() {
        let (tokenizer, encoder) = word_level();
        let file = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/eval/reviews.jsonl"));
        let mut texts = 0;
        for line in file.lines() {
            let Ok(review) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let text = review["text"].as_str().unwrap();
            let ids: Vec<u32> = encoder.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(ids, own_ids(&tokenizer, text, 256), "{text}");
            texts += 1;
        }
        assert!(texts > 100, "{texts} reviews read");
        // Each pattern's replacement, and text that skips all of them.
        for (text, marker) in [
            ("see http://spam.example/deal now", Some("xxurl")),
            ("mail me at Deals@Example.COM today", Some("xxemail")),
            ("visit cheapstuff.biz for more", Some("xxurl")),
            ("call +1 (555) 123-4567 now", Some("xxphone")),
            ("5 stars", Some("xxnum")),
            ("Great Product, Fast Delivery!", None),
        ] {
            let ids = encoder.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(ids, own_ids(&tokenizer, text, 256), "{text}");
            let marker_id = marker.map(|m| tokenizer.token_to_id(m).unwrap());
            assert_eq!(marker_id.map(|id| ids.contains(&id)), marker.map(|_| true), "{text}: {ids:?}");
        }
    }

    /// Texts made of fragments that each pattern matches, nearly matches or is cut by, mixed with
    /// upper case and non-ASCII text (where every step runs as in the tokenizer, and a Unicode
    /// form or lowercasing can turn text ASCII or a replacement can make it non-ASCII).
    const FRAGMENTS: [&str; 43] = [
        "http://a.b/c",
        "https://",
        "www.",
        "WWW.Shop.COM",
        "x.com",
        "co.uk",
        ".us",
        "a-b-c.",
        "a@b.co",
        "@",
        "User@",
        "@host.",
        "+1",
        "(555)",
        " 123-4567",
        "1",
        "12 34",
        "0.5",
        "9-",
        "great",
        "PRODUCT",
        "idiot",
        " ",
        "  ",
        "\t",
        "\n",
        ".",
        ",",
        "-",
        "<",
        ">",
        "\"",
        "(",
        ")",
        "\u{e9}",
        "Stra\u{df}e",
        "\u{fb01}ne",
        "\u{3a3}",
        "\u{130}",
        "e\u{301}",
        "_",
        "\u{b}",
        "\u{1f}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn the_step_by_step_normaliser_gives_the_tokenizers_own_ids_on_crafted_text(
            picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..24),
        ) {
            thread_local!(static WORD_LEVEL: (Tokenizer, Encoder) = word_level());
            let text: String = picks.iter().map(|&i| FRAGMENTS[i]).collect();
            WORD_LEVEL.with(|(tokenizer, encoder)| {
                let ids = encoder.encode(&text, false).unwrap().get_ids().to_vec();
                proptest::prop_assert_eq!(ids, own_ids(tokenizer, &text, 256), "{:?}", text);
                Ok(())
            })?;
        }
    }

    #[test]
    fn a_tokenizer_with_added_tokens_is_not_normalised_outside_it() {
        // MiniLM's WordPiece tokenizer matches [CLS], [SEP], ... in the raw text.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/abuse-minilm/tokenizer.json");
        let encoder = Encoder::new(Tokenizer::from_file(path).unwrap(), 128).unwrap();
        assert!(encoder.stepwise.is_none());
    }
}
