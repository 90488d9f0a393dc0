#!/usr/bin/env python3
"""Runs `modserve eval` on groups of eval-suite categories and prints one Markdown table: for each group
(a task's target categories plus that task's clean look-alikes) and each model, recall, false positives
and precision at REVIEW and REJECT, and each shadow's GO/NO-GO under the config's [launch] criteria.
Standard library only; the scoring is the server's.

usage: python3 models/eval/by_group.py --modserve PATH/modserve --config eval.toml --out DIR

The config must name the live models and shadows to compare (the groups below use tasks abuse and fraud).
"""
import argparse
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

# The groups of the done criteria (fixed before the v3 results were seen). LOOKALIKES are the clean
# reviews a task's model must not flag; every target group is evaluated together with them.
LOOKALIKES = {
    "abuse": ["clean_negative", "harsh_clean", "second_person_clean", "violent_words_clean", "escalation_clean",
              "identity_clean"],
    "fraud": ["honest_link_clean", "honest_disclosure_clean", "comparison_clean", "glowing_clean", "clean_positive",
              "clean_negative", "second_person_clean"],
}
GROUPS = {
    "abuse": {
        "threats": ["threat", "veiled_threat"],
        "identity attacks": ["identity_attack", "slur"],
        "insults": ["insult_seller", "insult_reviewer", "insult_sarcastic"],
        "non-English abuse": ["non_english_abusive"],
    },
    "fraud": {
        "review spam": ["self_review", "incentivised", "competitor_promo", "review_selling", "spam_link_review",
                        "promo_offtopic", "spam_link"],
        "phone spam": ["spam_phone"],
        "fabricated praise": ["fake_glowing"],
        "non-English spam": ["non_english_spam"],
    },
}


def run(modserve, config, labels, out):
    p = subprocess.run([modserve, "eval", "--config", config, "--labels", str(labels), "--out", str(out)],
                       capture_output=True, text=True)
    if p.returncode not in (0, 2):
        sys.exit(f"modserve eval failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def figures(report, who):
    """(recall, FP, precision) at review and reject for 'live' or 'candidate' from a launch-report.json."""
    v = report["input"]["verdicts"][who]  # rows: model decision allow/review/reject; columns: label
    out = {}
    for level, rows in (("REVIEW", (1, 2)), ("REJECT", (2,))):
        tp = sum(v[r][c] for r in rows for c in (1, 2))
        fp = sum(v[r][0] for r in rows)
        pos = sum(v[r][c] for r in range(3) for c in (1, 2))
        out[level] = (tp, pos, fp, tp / (tp + fp) if tp + fp else None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modserve", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| task | group (+ look-alikes) | model | recall @REVIEW | false positives @REVIEW | precision @REVIEW | "
            "recall @REJECT | false positives @REJECT | precision @REJECT | modserve eval |",
            "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(f, level):
        tp, pos, fp, prec = f[level]
        return [f"{tp}/{pos}", str(fp), "n/a" if prec is None else f"{prec:.3f}"]

    for task, groups in GROUPS.items():
        for gname, cats in list(groups.items()) + [("whole suite", None)]:
            slug = f"{task}-{gname.replace(' ', '_')}"
            cmd = [sys.executable, str(HERE / "to_labelled.py"), "--task", task]
            if cats is not None:
                cmd += ["--categories", ",".join(cats + LOOKALIKES[task])]
            labels = out / f"{slug}.jsonl"
            labels.write_text(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            stdout = run(a.modserve, a.config, labels, out / slug)
            decisions = {}
            for line in stdout.splitlines():
                if ": " in line and (" GO " in line + " " or "NO-GO" in line):
                    name, rest = line.split(": ", 1)
                    decisions[name.rsplit("/", 1)[-1]] = rest.split()[0]
            live_done = False
            for d in sorted((out / slug).iterdir()):
                rep = d / "launch-report.json"
                if not d.is_dir() or not rep.exists():
                    continue
                r = json.loads(rep.read_text())
                if r["input"]["task"] != task:
                    continue
                label = gname if cats is None else f"{gname} ({', '.join(cats)})"
                if not live_done:
                    f = figures(r, "live")
                    rows.append("| " + " | ".join([task, label, r["input"]["live"]["model"] + " (live)"]
                                                  + fmt(f, "REVIEW") + fmt(f, "REJECT") + ["-"]) + " |")
                    live_done = True
                f = figures(r, "candidate")
                rows.append("| " + " | ".join([task, label, r["input"]["candidate"]["model"]]
                                              + fmt(f, "REVIEW") + fmt(f, "REJECT")
                                              + [decisions.get(d.name, r.get("decision", "?"))]) + " |")
    table = "\n".join(rows)
    (out / "by_group.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
