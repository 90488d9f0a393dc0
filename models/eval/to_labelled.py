#!/usr/bin/env python3
"""Writes models/eval/reviews.jsonl (264 hand-written reviews, 0/1 per task) to stdout as the
labelled file `modserve eval --labels` reads: one line per review and task, with 1 as "reject"
and 0 as "allow". Reviews with an empty or blank text (the "empty_ish" category) are left out,
as Classify refuses them. Standard library only.

usage: python3 models/eval/to_labelled.py > labelled.jsonl
"""
import json
import pathlib
import sys

reviews = pathlib.Path(__file__).with_name("reviews.jsonl")
skipped = 0
for line in reviews.read_text().splitlines():
    review = json.loads(line)
    if not review["text"].strip():
        skipped += 1
        continue
    for task in ("abuse", "fraud"):
        decision = "reject" if review[task] else "allow"
        print(json.dumps({"id": review["id"], "text": review["text"], "task": task, "decision": decision}))
print(f"to_labelled.py: left out {skipped} review(s) with a blank text", file=sys.stderr)
