#!/usr/bin/env python3
"""Writes modserve-shadow.json, the shadow-vs-live Grafana dashboard (stdlib only).

Edit the panel list here and rerun; the JSON is committed. `panels_to_rules.py` turns every
panel expression into a rules file so `promtool check rules` validates them in CI.
"""
import json
import pathlib

PAIR = 'task=~"$task", shadow_model=~"$shadow", shadow_policy=~"$policy"'
# Verdict and score series name the model (live or shadow) instead of the pair.
MODEL = 'task=~"$task"'
# Per-surface views; "All" (.*) also matches the default surface (no `surface` label).
SURFACE = 'surface=~"$surface"'
PANELS = [
    ("Agreement (shadow decision = live decision)", "percentunit", [
        ("{{task}} {{live_model}} vs {{shadow_model}}", f"modserve:shadow_agreement:ratio_rate5m{{{PAIR}}}"),
    ]),
    ("Disagreement direction", "percentunit", [
        ("stricter {{shadow_model}}", f"modserve:shadow_stricter:ratio_rate5m{{{PAIR}}}"),
        ("more lenient {{shadow_model}}", f"modserve:shadow_more_lenient:ratio_rate5m{{{PAIR}}}"),
    ]),
    ("Decision confusion over the range (live -> shadow)", "short", [
        ("{{live_decision}} -> {{shadow_decision}}",
         f"sum by (live_decision, shadow_decision) (increase(modserve_shadow_comparisons_total{{{PAIR}}}[$__range]))"),
    ]),
    ("Score delta (shadow - live), p10 / p50 / p90", "short", [
        (f"p{int(q * 100)} {{{{label}}}}",
         f"histogram_quantile({q}, sum by (le, label) (rate(modserve_shadow_score_delta_bucket{{{PAIR}}}[$__rate_interval])))")
        for q in (0.1, 0.5, 0.9)
    ]),
    ("Top-label flips per second", "short", [
        ("{{shadow_model}}", f"sum by (shadow_model) (rate(modserve_shadow_top_label_flips_total{{{PAIR}}}[$__rate_interval]))"),
    ]),
    ("Inference latency per batch, live vs shadow (p50, p99)", "s", [
        ("p50 {{model}} ({{role}})", "modserve:inference_seconds:p50_rate5m"),
        ("p99 {{model}} ({{role}})", "modserve:inference_seconds:p99_rate5m"),
    ]),
    ("Inference errors per second, live vs shadow", "short", [
        ("{{model}} ({{role}})", "modserve:inference_errors:rate5m"),
    ]),
    ("Shadow coverage: reviews per second by outcome", "short", [
        ("{{shadow_model}} {{outcome}}",
         f"sum by (shadow_model, outcome) (rate(modserve_shadow_reviews_total{{{PAIR}}}[$__rate_interval]))"),
    ]),
    ("Shed and error share of sampled reviews", "percentunit", [
        ("shed {{shadow_model}}", f"modserve:shadow_shed:ratio_rate5m{{{PAIR}}}"),
        ("error {{shadow_model}}", f"modserve:shadow_error:ratio_rate5m{{{PAIR}}}"),
    ]),
    ("Circuit breaker open", "short", [
        ("{{shadow_model}}", f"max by (shadow_model) (modserve_shadow_breaker_open{{{PAIR}}})"),
    ]),
    ("Live calls per second by code, and p99", "short", [
        ("{{method}} {{code}}", "sum by (method, code) (rate(modserve_requests_total[$__rate_interval]))"),
        ("p99 seconds {{method}}", "modserve:request_seconds:p99_rate5m"),
    ]),
    ("Disagreement log lines per second", "short", [
        ("{{outcome}}", "sum by (outcome) (rate(modserve_disagreement_log_lines_total[$__rate_interval]))"),
    ]),
    ("Precision against moderator verdicts (1 day): live vs candidates", "percentunit", [
        ("REJECT {{model}} {{policy}} ({{role}})", f"modserve:verdict_reject_precision:ratio_1d{{{MODEL}}}"),
        ("REVIEW+ {{model}} {{policy}} ({{role}})", f"modserve:verdict_review_precision:ratio_1d{{{MODEL}}}"),
    ]),
    ("Recall against moderator verdicts (1 day): live vs candidates", "percentunit", [
        ("REJECT {{model}} {{policy}} ({{role}})", f"modserve:verdict_reject_recall:ratio_1d{{{MODEL}}}"),
        ("REVIEW+ {{model}} {{policy}} ({{role}})", f"modserve:verdict_review_recall:ratio_1d{{{MODEL}}}"),
    ]),
    ("Verdicts received per second by outcome", "short", [
        ("{{task}} {{outcome}}",
         f"sum by (task, outcome) (rate(modserve_verdicts_received_total{{{MODEL}}}[$__rate_interval]))"),
    ]),
    ("Live decisions per surface (share)", "percentunit", [
        ("{{task}} {{surface}} {{decision}}", f"modserve:surface_decision:ratio_rate5m{{{MODEL}, {SURFACE}}}"),
    ]),
    ("Agreement with live per surface", "percentunit", [
        ("{{surface}} {{shadow_model}} {{shadow_policy}}",
         f"modserve:surface_shadow_agreement:ratio_rate5m{{{PAIR}, {SURFACE}}}"),
    ]),
    ("Disagreement direction per surface", "percentunit", [
        ("stricter {{surface}} {{shadow_model}} {{shadow_policy}}",
         f"modserve:surface_shadow_stricter:ratio_rate5m{{{PAIR}, {SURFACE}}}"),
        ("more lenient {{surface}} {{shadow_model}} {{shadow_policy}}",
         f"modserve:surface_shadow_more_lenient:ratio_rate5m{{{PAIR}, {SURFACE}}}"),
    ]),
    ("Decision confusion per surface over the range (live -> shadow)", "short", [
        ("{{surface}} {{live_decision}} -> {{shadow_decision}}",
         f"sum by (surface, live_decision, shadow_decision) "
         f"(increase(modserve_shadow_comparisons_total{{{PAIR}, {SURFACE}}}[$__range]))"),
    ]),
    ("Precision against verdicts per surface (1 day)", "percentunit", [
        ("REJECT {{surface}} {{model}} {{policy}} ({{role}})",
         f"modserve:surface_verdict_reject_precision:ratio_1d{{{MODEL}, {SURFACE}}}"),
        ("REVIEW+ {{surface}} {{model}} {{policy}} ({{role}})",
         f"modserve:surface_verdict_review_precision:ratio_1d{{{MODEL}, {SURFACE}}}"),
    ]),
    ("Recall against verdicts per surface (1 day)", "percentunit", [
        ("REJECT {{surface}} {{model}} {{policy}} ({{role}})",
         f"modserve:surface_verdict_reject_recall:ratio_1d{{{MODEL}, {SURFACE}}}"),
        ("REVIEW+ {{surface}} {{model}} {{policy}} ({{role}})",
         f"modserve:surface_verdict_review_recall:ratio_1d{{{MODEL}, {SURFACE}}}"),
    ]),
    ("Reviews with a surface the task does not list (per second)", "short", [
        ("{{task}}", f"modserve:surface_fallbacks:rate5m{{{MODEL}}}"),
    ]),
    ("Mean score per label (1 h), live and shadows", "short", [
        ("{{model}} {{label}} ({{role}})", f"modserve:score:mean_rate1h{{{MODEL}}}"),
    ]),
    ("Score distribution over the range", "short", [
        ("{{model}} {{label}} <= {{le}}",
         f"sum by (model, label, le) (increase(modserve_scores_bucket{{{MODEL}}}[$__range]))"),
    ]),
    ("Input quality: unknown tokens, reviews at max length, cut texts", "percentunit", [
        ("unknown tokens {{model}} ({{role}})", "modserve:unknown_tokens:ratio_rate1h"),
        ("at max length {{model}} ({{role}})", "modserve:reviews_at_max_tokens:ratio_rate1h"),
        ("text cut", "modserve:reviews_text_cut:ratio_rate1h"),
    ]),
    ("Languages callers send (share, 1 h)", "percentunit", [
        ("{{language}}", "modserve:reviews_by_language:ratio_rate1h"),
    ]),
]


def panel(i, title, unit, targets):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
            for j, (legend, expr) in enumerate(targets)
        ],
    }


def variable(name, query):
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "refresh": 2,
    }


dashboard = {
    "title": "modserve: shadow vs live",
    "uid": "modserve-shadow",
    "schemaVersion": 39,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "tags": ["modserve"],
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        variable("task", "label_values(modserve_shadow_reviews_total, task)"),
        variable("shadow", "label_values(modserve_shadow_reviews_total{task=~\"$task\"}, shadow_model)"),
        variable("policy",
                 "label_values(modserve_shadow_reviews_total{task=~\"$task\", shadow_model=~\"$shadow\"}, shadow_policy)"),
        variable("surface", "label_values(modserve_reviews_total{task=~\"$task\"}, surface)"),
    ]},
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

out = pathlib.Path(__file__).with_name("modserve-shadow.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
