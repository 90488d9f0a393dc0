#!/usr/bin/env python3
"""The compute bound of a transformer package on this core: the encoder's multiply-adds per token
(read from the graph: every matrix multiply with a constant weight, plus the attention products),
times the tokens of the benchmark's reviews, over the measured rate of the same int8 kernel
(onnxruntime's DynamicQuantizeMatMul, one thread) at the same shapes. Prints one JSON object.

It bounds what any server can do with this graph on one core: only the matrix multiplies are
counted (layer norms, softmax, GELU, pooling, tokenizing and the RPC are left out), each at the
kernel's best measured rate.

    python compute_bound.py models/abuse-minilm [--texts models/eval/reviews.jsonl] [--batch 32]

Needs onnx, onnxruntime, numpy and tokenizers (benches/transformer.sh makes .tools/bound-venv).
"""

import argparse
import logging
import collections
import json
import os
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer


ATTENTION_OPS = ("MultiHeadAttention", "Attention", "QAttention")


def constant_matmul_shapes(model):
    """(K, N) of every matrix multiply whose weight is an initializer, and the hidden size and
    layer count for the attention products (one Softmax per layer, or one fused
    MultiHeadAttention / Attention / QAttention node per layer). An Attention or QAttention node
    (abuse-minilm 1.3.0, abuse-v3 3.3.0, fraud-v3 3.2.0) carries the layer's Q, K and V projections
    as one packed [K, 3N] weight [Wq|Wk|Wv] (input 1): it counts as three (K, N) products, the
    multiply-adds and kernel shapes of the three separate Q/K/V MatMulIntegers of a graph without
    packing, so a model's bound does not depend on how its export packs them (timed as one
    (K, 3N) product instead, the int8 kernel's faster rate at that shape raised the bound by
    about 7% on 2026-12-06; onnxruntime's QAttention kernel runs the projection as per-head GEMMs,
    neither shape). A `MatMulIntegerToFloat` (static activation scales: abuse-minilm 1.4.0, abuse-v3
    3.4.0, fraud-v3 3.3.0) carries its int8 weight as input 1, as `MatMulInteger` does."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "MatMulInteger", "MatMulIntegerToFloat", "Attention", "QAttention") \
                and len(node.input) > 1 \
                and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            if len(dims) == 2 and node.op_type in ("Attention", "QAttention"):
                assert dims[1] % 3 == 0, (node.name, dims)
                shapes += [(dims[0], dims[1] // 3)] * 3
            elif len(dims) == 2:
                shapes.append((dims[0], dims[1]))
    layers = sum(1 for n in model.graph.node if n.op_type == "Softmax" or n.op_type in ATTENTION_OPS)
    return shapes, layers


def review_tokens(package, texts_path):
    manifest = tomllib.loads((package / "manifest.toml").read_text())
    tokenizer = Tokenizer.from_file(str(package / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=manifest["max_sequence_length"])
    texts = [json.loads(line)["text"] for line in Path(texts_path).read_text().splitlines() if line.strip()]
    texts = [t for t in texts if t.strip()]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return statistics.mean(lengths), len(texts)


def kernel_seconds(k, n, rows, tries=30):
    """Fastest run of an int8 dynamic-quantized [rows, k] x [k, n] on one thread."""
    rng = np.random.default_rng(42)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "bound",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=False,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(dst, options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((rows, k)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"x": x})
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, time.perf_counter() - start)
    return best


def main():
    logging.disable(logging.WARNING)  # quantize_dynamic suggests pre-processing on every call
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("--texts", default=str(Path(__file__).resolve().parent.parent / "models/eval/reviews.jsonl"))
    parser.add_argument("--batch", type=int, default=32, help="reviews per run for the rate")
    args = parser.parse_args()
    model = onnx.load(str(args.package / "model.onnx"))
    shapes, layers = constant_matmul_shapes(model)
    tokens, n_texts = review_tokens(args.package, args.texts)
    hidden = max((k for k, _ in shapes), key=lambda k: sum(1 for s in shapes if s[0] == k))
    rows = max(1, round(args.batch * tokens))
    counts = collections.Counter(shapes)
    seconds_per_token = 0.0
    rates = {}
    for (k, n), count in sorted(counts.items()):
        if n == 1:
            continue  # the classifier head: one output column, negligible
        t = kernel_seconds(k, n, rows)
        rates[f"{k}x{n}"] = k * n * rows / t
        seconds_per_token += count * t / rows
    macs_per_token = sum(k * n * c for (k, n), c in counts.items())
    # Attention scores and context: 2 products of [seq, hidden] per token and layer, counted at
    # the slowest measured int8 rate (they run in fp32 in the graph; about 1% of the work here).
    attention_macs = 2 * layers * tokens * hidden
    seconds_per_token += attention_macs / min(rates.values())
    macs_per_token += attention_macs
    review_seconds = tokens * seconds_per_token
    print(json.dumps({
        "package": str(args.package),
        "texts": n_texts,
        "tokens_per_review": round(tokens, 2),
        "macs_per_token": macs_per_token,
        "macs_per_review": round(macs_per_token * tokens),
        "rows_per_run": rows,
        "int8_macs_per_s_by_shape": {k: round(v) for k, v in rates.items()},
        "effective_macs_per_s": round(macs_per_token / seconds_per_token),
        "bound_reviews_per_s": round(1.0 / review_seconds, 1),
    }))


if __name__ == "__main__":
    main()
