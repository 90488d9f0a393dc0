#!/usr/bin/env python3
"""Writes models/eval/reviews.jsonl (264 hand-written reviews, 0/1 per task) to stdout as the
labelled file `modserve eval --labels` reads: one line per review and task, with 1 as "reject"
and 0 as "allow". Reviews with an empty or blank text (the "empty_ish" category) are left out,
as Classify refuses them. Standard library only.

usage: python3 models/eval/to_labelled.py > labelled.jsonl
       python3 models/eval/to_labelled.py --task abuse --categories threat,veiled_threat,harsh_clean > part.jsonl
       python3 models/eval/to_labelled.py --original > labelled-81.jsonl
(--task keeps one task's lines; --categories keeps the reviews of those categories; --original keeps
only the first 81 lines, the suite as it was before issue 19, for tests that pin its counts)
"""
import argparse
import json
import pathlib
import sys

parser = argparse.ArgumentParser(description="reviews.jsonl -> modserve eval labelled lines")
parser.add_argument("--task", choices=["abuse", "fraud"], help="only this task's lines")
parser.add_argument("--categories", help="comma-separated categories to keep (default: all)")
parser.add_argument("--original", action="store_true", help="only the first 81 reviews (the suite before issue 19)")
args = parser.parse_args()
ORIGINAL = 81
keep = set(args.categories.split(",")) if args.categories else None
tasks = (args.task,) if args.task else ("abuse", "fraud")

reviews = pathlib.Path(__file__).with_name("reviews.jsonl")
skipped = 0
lines = reviews.read_text().splitlines()
for line in lines[:ORIGINAL] if args.original else lines:
    review = json.loads(line)
    if keep is not None and review["category"] not in keep:
        continue
    if not review["text"].strip():
        skipped += 1
        continue
    for task in tasks:
        decision = "reject" if review[task] else "allow"
        print(json.dumps({"id": review["id"], "text": review["text"], "task": task, "decision": decision}))
print(f"to_labelled.py: left out {skipped} review(s) with a blank text", file=sys.stderr)
