"""The shared WordLevel tokenizer of the v1/v2 models, built from an explicit, deterministic vocabulary.

Normalizer: NFKC, Lowercase, then Replace rules that map URLs, e-mail addresses, phone-like digit
runs (9+ digits) and other digit runs to the signal words xxurl, xxemail, xxphone, xxnum.
Pre-tokenizer: Whitespace (\\w+|[^\\w\\s]+). Vocabulary: [PAD]=0, [UNK]=1, then every word seen at
least MIN_COUNT times in the training texts, ordered by count (descending) then lexicographically,
cut at VOCAB_SIZE. No padding and no truncation are stored in the file: the server sets them.
"""
from collections import Counter

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

VOCAB_SIZE = 25000
MIN_COUNT = 2
PAD, UNK = "[PAD]", "[UNK]"

# Repetition that a failed match backtracks over is bounded, so each rule is linear in the text (the unbounded
# forms were quadratic on crafted runs such as "aaa...a@" or "a-a-a-...a.": 16,000 characters took ~1.5 s).
# Bounds: e-mail local part 64 and domain 255 characters (RFC 5321), domain label 63 (RFC 1035). A trailing
# greedy run (URL tail, TLD, phone digits) is never backtracked into, so it stays unbounded: same ids.
REPLACE_RULES = [
    (r"(?:https?://|www\.)[^\s<>\"]+", " xxurl "),
    (r"[^\s@<>()\[\]]{1,64}@[^\s@<>()\[\]]{1,255}\.[a-z]{2,}", " xxemail "),
    (r"\b[a-z0-9][a-z0-9-]{0,62}\.(?:com|net|org|biz|info|ly|io|co\.uk|us)\b", " xxurl "),
    (r"\+?[0-9](?:[ ().-]{0,2}[0-9]){8,}", " xxphone "),
    (r"[0-9]+", " xxnum "),
]


def _normalizer():
    steps = [normalizers.NFKC(), normalizers.Lowercase()]
    steps += [normalizers.Replace(Regex(p), r) for p, r in REPLACE_RULES]
    return normalizers.Sequence(steps)


def words(text, norm=None, pre=None):
    norm = norm or _normalizer()
    pre = pre or pre_tokenizers.Whitespace()
    return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def build(texts):
    norm, pre = _normalizer(), pre_tokenizers.Whitespace()
    counts = Counter()
    for t in texts:
        counts.update(words(t, norm, pre))
    items = sorted(((w, c) for w, c in counts.items() if c >= MIN_COUNT), key=lambda wc: (-wc[1], wc[0]))
    vocab = {PAD: 0, UNK: 1}
    for w, _ in items[: VOCAB_SIZE - 2]:
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    return tok


def encode(tok_json, texts, max_len):
    """Token ids exactly as the server computes them (truncation to max_len; padding is masked)."""
    tok = Tokenizer.from_str(tok_json)
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return [e.ids for e in tok.encode_batch(texts)]


def encode_padded(tok_json, texts, max_len):
    """Like the server: truncate, pad the batch to its longest with id 0 / mask 0."""
    import numpy as np

    tok = Tokenizer.from_str(tok_json)
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token=PAD)
    enc = tok.encode_batch(texts)
    width = max((len(e.ids) for e in enc), default=0)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = e.attention_mask
    return ids, mask
