#!/usr/bin/env python3
"""Baseline peer for modserve benchmarks: a plain grpcio + onnxruntime + tokenizers server.

It implements modserve.v1.Moderation (Classify, ClassifyStream) on the same model packages, the
way a team would write it without modserve: one InferenceSession per live model, a
ThreadPoolExecutor, and each request tokenized and run on its own (no cross-request batching).
It exists only for benchmarks (docs/benchmarks.md); it is not part of the product.

    python server.py --config ../../../modserve.toml --listen 127.0.0.1:50091 [--workers 8]
    python server.py --models abuse=../../../models/abuse-v1,fraud=../../../models/fraud-v1
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import json
import tomllib
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "gen"))

from modserve.v1 import moderation_pb2 as pb  # noqa: E402
from modserve.v1 import moderation_pb2_grpc as pb_grpc  # noqa: E402

# The same limits modserve applies (src/serving/grpc/convert.rs); [limits] in the config overrides the
# configurable ones.
MAX_ID_BYTES = 256
MAX_SIGNALS = 64
F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Limits:
    max_reviews_per_request: int = 64
    max_text_bytes: int = 16384
    oversize_text: str = "reject"  # or "truncate"
    max_message_bytes: int = 4 * 1024 * 1024


@dataclass
class Model:
    """One loaded model package: session, tokenizer, labels and decision policy."""

    name: str
    version: str
    task: str
    labels: list[str]
    policy_name: str
    policy_version: str
    # Per label, in output order: (review, reject) as float32, or None when the label is unlisted.
    thresholds: list[tuple[np.float32 | None, np.float32 | None] | None]
    features: list[tuple[str, float]]
    io: dict[str, str]
    session: ort.InferenceSession
    tokenizer: Tokenizer
    model_ref: pb.ModelRef = field(init=False)

    def __post_init__(self) -> None:
        self.model_ref = pb.ModelRef(
            name=self.name,
            version=self.version,
            policy_name=self.policy_name,
            policy_version=self.policy_version,
        )

    def scores(self, reviews: list["ReviewIn"]) -> np.ndarray:
        """Tokenizes, pads to the longest row (id 0, mask 0) and runs the session: [n, labels]."""
        encodings = self.tokenizer.encode_batch([r.model_text for r in reviews])
        seq = max(1, max(len(e.ids) for e in encodings))
        ids = np.zeros((len(encodings), seq), dtype=np.int64)
        mask = np.zeros((len(encodings), seq), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        feeds = {self.io["input_ids"]: ids, self.io["attention_mask"]: mask}
        if self.features:
            feats = np.array(
                [[r.signal(name, default) for name, default in self.features] for r in reviews],
                dtype=np.float32,
            )
            feeds[self.io["features"]] = feats
        (probs,) = self.session.run([self.io["probabilities"]], feeds)
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (len(reviews), len(self.labels)) or not np.all(np.isfinite(probs)):
            raise InferenceError(f"inference failed on model {self.name}: bad output {probs.shape}")
        return probs

    def decide(self, row: np.ndarray) -> int:
        """Strictest decision any label triggers (modserve's Policy::decide)."""
        decision = pb.DECISION_ALLOW
        for score, th in zip(row, self.thresholds):
            if th is None:
                continue
            review, reject = th
            if reject is not None and score >= reject:
                return pb.DECISION_REJECT
            if review is not None and score >= review:
                decision = pb.DECISION_REVIEW
        return decision


class InvalidArgument(Exception):
    pass


class InferenceError(Exception):
    pass


@dataclass
class ReviewIn:
    id: str
    model_text: str
    rating: float | None
    signals: dict[str, float]

    def signal(self, name: str, default: float) -> float:
        if name in self.signals:
            return self.signals[name]
        if name == "rating" and self.rating is not None:
            return self.rating
        return default


def load_model(path: Path) -> Model:
    manifest = tomllib.loads((path / "manifest.toml").read_text())
    files = manifest.get("files", {})
    io = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "features": "features",
        "probabilities": "probabilities",
    }
    io.update(manifest.get("io", {}))
    labels = list(manifest["labels"])
    policy = manifest.get("policy", {})
    raw_th = policy.get("thresholds", {})

    def f32(v):
        return None if v is None else np.float32(v)

    thresholds = [
        (f32(raw_th[l].get("review")), f32(raw_th[l].get("reject"))) if l in raw_th else None
        for l in labels
    ]
    features = [(f["name"], float(f.get("default", 0.0))) for f in manifest.get("features", [])]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(path / files.get("model", "model.onnx")), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(str(path / files.get("tokenizer", "tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(manifest["max_sequence_length"]))
    model = Model(
        name=manifest["name"],
        version=manifest["version"],
        task=manifest["task"],
        labels=labels,
        policy_name=policy.get("name", ""),
        policy_version=policy.get("version", ""),
        thresholds=thresholds,
        features=features,
        io=io,
        session=session,
        tokenizer=tokenizer,
    )
    # Warm-up, as modserve does before serving.
    model.scores([ReviewIn("warm-up", "modserve warm-up review: great product, fast delivery.", None, {})])
    return model


def load_from_config(config: Path) -> tuple[dict[str, Model], Limits]:
    """The live model of every [tasks.*] in a modserve config, tasks sorted by name."""
    raw = tomllib.loads(config.read_text())
    base = config.resolve().parent
    tasks: dict[str, Model] = {}
    for task in sorted(raw.get("tasks", {})):
        live = raw["tasks"][task]["live"]
        tasks[task] = load_model(base / raw["models"][live]["path"])
    lim = raw.get("limits", {})
    limits = Limits(
        max_reviews_per_request=int(lim.get("max_reviews_per_request", 64)),
        max_text_bytes=int(lim.get("max_text_bytes", 16384)),
        oversize_text=str(lim.get("oversize_text", "reject")),
        max_message_bytes=int(lim.get("max_message_bytes", 4 * 1024 * 1024)),
    )
    return tasks, limits


def load_from_flag(spec: str) -> dict[str, Model]:
    """--models abuse=path,fraud=path (tasks sorted by name, like modserve)."""
    pairs = dict(item.split("=", 1) for item in spec.split(",") if item)
    return {task: load_model(Path(pairs[task])) for task in sorted(pairs)}


def _fit(field_name: str, text: str, limits: Limits) -> str:
    data = text.encode("utf-8")
    if len(data) <= limits.max_text_bytes:
        return text
    if limits.oversize_text == "truncate":
        return data[: limits.max_text_bytes].decode("utf-8", errors="ignore")
    raise InvalidArgument(
        f"{field_name}: {len(data)} bytes exceed the limit of {limits.max_text_bytes} (limits.max_text_bytes)"
    )


def validate(req: pb.ClassifyRequest, limits: Limits, tasks: dict[str, Model]) -> tuple[list[ReviewIn], list[Model]]:
    """The same rules, in the same order, as modserve's convert::validate and resolve_tasks."""
    if not req.reviews:
        raise InvalidArgument("reviews: at least one review is required")
    if len(req.reviews) > limits.max_reviews_per_request:
        raise InvalidArgument(
            f"reviews: {len(req.reviews)} reviews exceed the limit of {limits.max_reviews_per_request} per request"
        )
    seen: dict[str, int] = {}
    for i, r in enumerate(req.reviews):
        if not r.id.strip():
            raise InvalidArgument(f"reviews[{i}].id: must not be empty")
        if len(r.id.encode("utf-8")) > MAX_ID_BYTES:
            raise InvalidArgument(f"reviews[{i}].id: {len(r.id.encode('utf-8'))} bytes exceed the limit of {MAX_ID_BYTES}")
        if r.id in seen:
            raise InvalidArgument(f"reviews[{i}].id: duplicate of reviews[{seen[r.id]}].id {json.dumps(r.id, ensure_ascii=False)}")
        seen[r.id] = i
    reviews = []
    for i, r in enumerate(req.reviews):
        if not r.text.strip():
            raise InvalidArgument(f"reviews[{i}].text: must not be empty or only whitespace")
        text = _fit(f"reviews[{i}].text", r.text, limits)
        title = None
        if r.HasField("title") and r.title.strip():
            title = _fit(f"reviews[{i}].title", r.title, limits)
        rating = r.rating if r.HasField("rating") else None
        if rating is not None and not math.isfinite(rating):
            raise InvalidArgument(f"reviews[{i}].rating: must be a finite number")
        if len(r.signals) > MAX_SIGNALS:
            raise InvalidArgument(f"reviews[{i}].signals: {len(r.signals)} signals exceed the limit of {MAX_SIGNALS}")
        for k, v in r.signals.items():
            if not math.isfinite(v) or abs(v) > F32_MAX:
                raise InvalidArgument(f"reviews[{i}].signals[{json.dumps(k, ensure_ascii=False)}]: must be a finite number within float32 range")
        model_text = f"{title}\n{text}" if title is not None else text
        reviews.append(ReviewIn(r.id, model_text, rating, dict(r.signals)))
    if not req.tasks:
        return reviews, list(tasks.values())
    names: list[str] = []
    for i, t in enumerate(req.tasks):
        if not t:
            raise InvalidArgument(f"tasks[{i}]: must not be empty")
        if t not in names:
            names.append(t)
    chosen: list[Model] = []
    for i, t in enumerate(names):
        if t not in tasks:
            raise InvalidArgument(
                f"tasks[{i}]: unknown task {json.dumps(t, ensure_ascii=False)}; configured tasks are {json.dumps(list(tasks))}"
            )
        chosen.append(tasks[t])
    return reviews, chosen


class Moderation(pb_grpc.ModerationServicer):
    def __init__(self, tasks: dict[str, Model], limits: Limits):
        self.tasks = tasks
        self.limits = limits

    def _classify(self, req: pb.ClassifyRequest) -> pb.ClassifyResponse:
        reviews, models = validate(req, self.limits, self.tasks)
        per_task = []
        for model in models:
            probs = model.scores(reviews)
            per_task.append((model, probs, [model.decide(row) for row in probs]))
        resp = pb.ClassifyResponse(request_id=req.request_id)
        for i, review in enumerate(reviews):
            result = resp.results.add(review_id=review.id)
            for model, probs, decisions in per_task:
                tr = result.tasks.add(task=model.task, decision=decisions[i])
                tr.model.CopyFrom(model.model_ref)
                for label, score in zip(model.labels, probs[i]):
                    tr.scores.add(label=label, score=float(score))
        return resp

    def Classify(self, request, context):
        try:
            return self._classify(request)
        except InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except InferenceError as e:
            context.abort(grpc.StatusCode.INTERNAL, str(e))

    def ClassifyStream(self, request_iterator, context):
        for request in request_iterator:
            try:
                yield self._classify(request)
            except InvalidArgument as e:
                yield pb.ClassifyResponse(
                    request_id=request.request_id,
                    error=pb.Error(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=str(e)),
                )
            except InferenceError as e:
                yield pb.ClassifyResponse(
                    request_id=request.request_id,
                    error=pb.Error(code=grpc.StatusCode.INTERNAL.value[0], message=str(e)),
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="a modserve.toml: serves each [tasks.*] live model")
    src.add_argument("--models", help="task=package_dir,... instead of a config (default limits)")
    ap.add_argument("--listen", default="127.0.0.1:50091")
    ap.add_argument("--workers", type=int, default=8, help="ThreadPoolExecutor max_workers (default 8)")
    args = ap.parse_args()

    if args.config:
        tasks, limits = load_from_config(args.config)
    else:
        tasks, limits = load_from_flag(args.models), Limits()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
        ],
    )
    pb_grpc.add_ModerationServicer_to_server(Moderation(tasks, limits), server)
    try:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        hs = health.HealthServicer()
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        hs.set("modserve.v1.Moderation", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    except ImportError:
        pass
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    models = ", ".join(f"{t}={m.name}" for t, m in tasks.items())
    print(f"python peer listening on {args.listen} (pid {os.getpid()}, workers {args.workers}; {models})", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
