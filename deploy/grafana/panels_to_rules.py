#!/usr/bin/env python3
"""Turns every panel expression of a Grafana dashboard into a recording rule, so that
`promtool check rules` validates the PromQL. Grafana variables become plain values.

usage: panels_to_rules.py DASHBOARD.json > panels-rules.yml
"""
import json
import sys

SUBSTITUTIONS = {"$__rate_interval": "5m", "$__range": "1h", "$task": ".*", "$shadow": ".*", "$policy": ".*", "$surface": ".*"}

dashboard = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard-panels\n    rules:")
count = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"]
        for k, v in SUBSTITUTIONS.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, f"unsubstituted variable in panel {panel['title']!r}: {expr}"
        count += 1
        print(f"      - record: dashboard:panel{panel['id']}_{target['refId'].lower()}")
        print(f"        expr: {json.dumps(expr)}")
if count == 0:
    sys.exit("no panel expressions found")
