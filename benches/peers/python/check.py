#!/usr/bin/env python3
"""Self-test of the Python peer: starts server.py on a free port, classifies three reviews through
the generated stubs and compares every score with onnxruntime run directly on the same package
(independently of server.py's code). Exits non-zero on any failure.

    .venv/bin/python check.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
sys.path.insert(0, str(HERE / "gen"))

from modserve.v1 import moderation_pb2 as pb  # noqa: E402
from modserve.v1 import moderation_pb2_grpc as pb_grpc  # noqa: E402

CONFIG = REPO / "modserve.toml"
REVIEWS = [
    pb.Review(id="r1", text="Great kettle, boils fast and the handle stays cool. Would buy again."),
    pb.Review(id="r2", text="you are a stupid idiot and your product is garbage, moron", title="idiot seller"),
    pb.Review(id="r3", text="WINNER!! Claim your FREE prize now, call 0800 123 456 or text WIN to 80082"),
]
failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct(package: Path, texts: list[str]) -> tuple[dict, np.ndarray]:
    """Scores straight from onnxruntime, one text at a time (no padding involved)."""
    manifest = tomllib.loads((package / "manifest.toml").read_text())
    tok = Tokenizer.from_file(str(package / manifest["files"]["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(max_length=manifest["max_sequence_length"])
    sess = ort.InferenceSession(str(package / manifest["files"]["model"]), providers=["CPUExecutionProvider"])
    rows = []
    for t in texts:
        ids = np.array([tok.encode(t).ids], dtype=np.int64)
        (p,) = sess.run(["probabilities"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        rows.append(p[0])
    return manifest, np.array(rows, dtype=np.float32)


def expected_decision(manifest: dict, scores: np.ndarray) -> int:
    decision = pb.DECISION_ALLOW
    for label, score in zip(manifest["labels"], scores):
        th = manifest["policy"]["thresholds"].get(label)
        if th is None:
            continue
        if "reject" in th and score >= np.float32(th["reject"]):
            return pb.DECISION_REJECT
        if "review" in th and score >= np.float32(th["review"]):
            decision = pb.DECISION_REVIEW
    return decision


def main() -> int:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--config", str(CONFIG), "--listen", addr, "--workers", "4"],
        cwd=HERE,
    )
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.ModerationStub(channel)

        resp = stub.Classify(pb.ClassifyRequest(reviews=REVIEWS, request_id="check-1"), timeout=30)
        check(resp.request_id == "check-1", "request_id echoed")
        check([r.review_id for r in resp.results] == ["r1", "r2", "r3"], "one result per review, in order")

        config = tomllib.loads(CONFIG.read_text())
        tasks = sorted(config["tasks"])
        texts = [f"{r.title}\n{r.text}" if r.HasField("title") else r.text for r in REVIEWS]
        for t_index, task in enumerate(tasks):
            live = config["tasks"][task]["live"]
            manifest, want = direct(REPO / config["models"][live]["path"], texts)
            for i, result in enumerate(resp.results):
                check([t.task for t in result.tasks] == tasks, f"{result.review_id}: tasks {tasks} in config order")
                tr = result.tasks[t_index]
                got = np.array([s.score for s in tr.scores], dtype=np.float32)
                check([s.label for s in tr.scores] == manifest["labels"], f"{result.review_id}/{task}: labels")
                check(bool(np.all((got >= 0) & (got <= 1))), f"{result.review_id}/{task}: scores in [0, 1]")
                diff = float(np.max(np.abs(got - want[i])))
                check(diff <= 1e-5, f"{result.review_id}/{task}: score {got.tolist()} vs direct {want[i].tolist()} (|diff| {diff:.2e})")
                dec = expected_decision(manifest, got)
                check(tr.decision == dec, f"{result.review_id}/{task}: decision {pb.Decision.Name(tr.decision)}")
                m = tr.model
                check(
                    (m.name, m.version, m.policy_name, m.policy_version)
                    == (manifest["name"], manifest["version"], manifest["policy"]["name"], manifest["policy"]["version"]),
                    f"{result.review_id}/{task}: model ref {m.name} {m.version} policy {m.policy_name}/{m.policy_version}",
                )
        # Sanity of the models themselves on these obvious examples.
        dec = {(r.review_id, t.task): t.decision for r in resp.results for t in r.tasks}
        check(dec[("r1", "abuse")] == pb.DECISION_ALLOW and dec[("r1", "fraud")] == pb.DECISION_ALLOW, "clean review allowed")
        check(dec[("r2", "abuse")] != pb.DECISION_ALLOW, "insulting review flagged for abuse")
        check(dec[("r3", "fraud")] != pb.DECISION_ALLOW, "spam review flagged for fraud")

        # Requested task subset, in request order.
        sub = stub.Classify(pb.ClassifyRequest(reviews=REVIEWS[:1], tasks=["fraud", "abuse"]), timeout=30)
        check([t.task for t in sub.results[0].tasks] == ["fraud", "abuse"], "tasks in requested order")

        # Invalid input fails the call with INVALID_ARGUMENT.
        for name, req in [
            ("no reviews", pb.ClassifyRequest()),
            ("empty id", pb.ClassifyRequest(reviews=[pb.Review(id="", text="x")])),
            ("empty text", pb.ClassifyRequest(reviews=[pb.Review(id="a", text="  ")])),
            ("unknown task", pb.ClassifyRequest(reviews=[pb.Review(id="a", text="x")], tasks=["nope"])),
        ]:
            try:
                stub.Classify(req, timeout=30)
                check(False, f"{name}: INVALID_ARGUMENT")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {e.code().name} ({e.details()})")

        # ClassifyStream: one response per message, in order; a bad message gets `error`.
        msgs = [
            pb.ClassifyRequest(reviews=REVIEWS[:2], request_id="s1"),
            pb.ClassifyRequest(request_id="s2"),
            pb.ClassifyRequest(reviews=REVIEWS[2:], request_id="s3"),
        ]
        out = list(stub.ClassifyStream(iter(msgs), timeout=30))
        check([o.request_id for o in out] == ["s1", "s2", "s3"], "stream: one response per message, in order")
        check(len(out[0].results) == 2 and len(out[2].results) == 1, "stream: results per message")
        check(out[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not out[1].results, "stream: error message carried")
        channel.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
