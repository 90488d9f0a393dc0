//! Turns review texts into the padded `input_ids` / `attention_mask` tensors a model takes.
//!
//! Runs on inference worker threads (never on the async runtime). Truncates to the model's
//! `max_sequence_length` and pads to the longest sequence in the batch with id 0 and mask 0,
//! whatever padding the tokenizer file itself asks for.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A tokenizer configured for one model.
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
}

/// A batch of token ids and masks, row-major `[rows, seq]`. Reused across batches by a worker so
/// steady-state encoding does not allocate tensors.
#[derive(Debug, Default, Clone)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub seq: usize,
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
        Ok(Encoder { tokenizer })
    }

    /// Encodes `texts` into `out`, replacing its contents.
    pub fn encode_into<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
        out: &mut TokenBatch,
    ) -> Result<(), String> {
        let mut encodings = Vec::new();
        for text in texts {
            let encoding = self.tokenizer.encode_fast(text, true).map_err(|e| format!("tokenizer failed: {e}"))?;
            encodings.push(encoding);
        }
        // At least one column, so a text with no tokens still yields a well-formed tensor.
        let seq = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let rows = encodings.len();
        out.rows = rows;
        out.seq = seq;
        out.ids.clear();
        out.ids.resize(rows * seq, 0);
        out.mask.clear();
        out.mask.resize(rows * seq, 0);
        for (row, encoding) in encodings.iter().enumerate() {
            let base = row * seq;
            for (i, (&id, &m)) in encoding.get_ids().iter().zip(encoding.get_attention_mask()).enumerate() {
                out.ids[base + i] = i64::from(id);
                out.mask[base + i] = i64::from(m);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(max: usize) -> Encoder {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-abuse/tokenizer.json");
        Encoder::new(Tokenizer::from_file(path).unwrap(), max).unwrap()
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
    fn a_text_with_no_tokens_still_makes_a_well_formed_row() {
        let mut batch = TokenBatch::default();
        encoder(64).encode_into(["   "], &mut batch).unwrap();
        assert_eq!((batch.rows, batch.seq), (1, 1));
        assert_eq!((batch.ids[0], batch.mask[0]), (0, 0));
    }
}
