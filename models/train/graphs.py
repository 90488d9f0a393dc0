"""ONNX graphs of the shipped models, built with onnx.helper (no exporter, no torch).

Contract (docs/model-package.md): inputs input_ids, attention_mask int64 [batch, seq] (dynamic),
output probabilities float32 [batch, n_labels]. Padded positions (mask 0) get no weight.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _io():
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    return ids, mask


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _masked_mean(nodes, table, ids, maskf, prefix):
    """sum over positions with mask 1 of table[ids], divided by sqrt(max(count, 1))."""
    nodes += [
        helper.make_node("Gather", [table, ids], [f"{prefix}_emb"], axis=0),
        helper.make_node("Unsqueeze", [maskf, "axis2"], [f"{prefix}_mask3"]),
        helper.make_node("Mul", [f"{prefix}_emb", f"{prefix}_mask3"], [f"{prefix}_wemb"]),
        helper.make_node("ReduceSum", [f"{prefix}_wemb", "axis1"], [f"{prefix}_sum"], keepdims=0),
        helper.make_node("ReduceSum", [maskf, "axis1"], [f"{prefix}_cnt"], keepdims=1),
        helper.make_node("Max", [f"{prefix}_cnt", "one_f"], [f"{prefix}_cnt1"]),
        helper.make_node("Sqrt", [f"{prefix}_cnt1"], [f"{prefix}_den"]),
        helper.make_node("Div", [f"{prefix}_sum", f"{prefix}_den"], [f"{prefix}_mean"]),
    ]
    return f"{prefix}_mean"


def _finish(nodes, inits, n_labels, name, doc):
    ids, mask = _io()
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_labels])
    g = helper.make_graph(nodes, name, [ids, mask], [out], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modserve-train",
                          producer_version="1", doc_string=doc)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def _common_inits():
    return [
        _const("axis1", np.array([1], dtype=np.int64)),
        _const("axis2", np.array([2], dtype=np.int64)),
        _const("one_f", np.array(1.0, dtype=np.float32)),
    ]


def embedding_bag_linear(W, b, name, doc):
    """v1: probabilities = sigmoid(sum_t W[id_t] / sqrt(n) + b), t over the n unmasked positions. W [V, L], b [L]."""
    inits = _common_inits() + [_const("W", W.astype(np.float32)), _const("b", b.astype(np.float32))]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT)]
    mean = _masked_mean(nodes, "W", "input_ids", "maskf", "uni")
    nodes += [
        helper.make_node("Add", [mean, "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    return _finish(nodes, inits, W.shape[1], name, doc)


def bigram_ids_np(ids, prime, buckets):
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[:-1] * prime + ids[1:]) % buckets


def embedding_bag_mlp(E_uni, E_bi, b1, W2, b2, prime, buckets, name, doc):
    """v2: h = relu(sum_t E_uni[id_t] / sqrt(n) + sum_t E_bi[bigram_t] / sqrt(n_bi) + b1);
    probabilities = sigmoid(h W2 + b2).

    bigram_t = (id_t * prime + id_{t+1}) mod buckets, over positions where both tokens are unmasked;
    n and n_bi are the counts of unmasked unigrams / bigrams, floored at 1.
    """
    inits = _common_inits() + [
        _const("E_uni", E_uni.astype(np.float32)), _const("E_bi", E_bi.astype(np.float32)),
        _const("b1", b1.astype(np.float32)), _const("W2", W2.astype(np.float32)), _const("b2", b2.astype(np.float32)),
        _const("prime", np.array(prime, dtype=np.int64)), _const("buckets", np.array(buckets, dtype=np.int64)),
        _const("s0", np.array([0], dtype=np.int64)), _const("s1", np.array([1], dtype=np.int64)),
        _const("sm1", np.array([-1], dtype=np.int64)),
        _const("send", np.array([np.iinfo(np.int64).max], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["input_ids", "s0", "sm1", "s1"], ["ids_a"]),
        helper.make_node("Slice", ["input_ids", "s1", "send", "s1"], ["ids_b"]),
        helper.make_node("Mul", ["ids_a", "prime"], ["ids_ap"]),
        helper.make_node("Add", ["ids_ap", "ids_b"], ["big_raw"]),
        helper.make_node("Mod", ["big_raw", "buckets"], ["big_ids"], fmod=0),
        helper.make_node("Slice", ["maskf", "s0", "sm1", "s1"], ["mask_a"]),
        helper.make_node("Slice", ["maskf", "s1", "send", "s1"], ["mask_b"]),
        helper.make_node("Mul", ["mask_a", "mask_b"], ["bmaskf"]),
    ]
    uni = _masked_mean(nodes, "E_uni", "input_ids", "maskf", "uni")
    bi = _masked_mean(nodes, "E_bi", "big_ids", "bmaskf", "bi")
    nodes += [
        helper.make_node("Add", [uni, bi], ["pooled"]),
        helper.make_node("Add", ["pooled", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "W2"], ["out_mm"]),
        helper.make_node("Add", ["out_mm", "b2"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    return _finish(nodes, inits, W2.shape[1], name, doc)


def encoder_with_head(encoder_path, coef, intercept, name, doc):
    """MiniLM: encoder(input_ids, attention_mask, token_type_ids = zeros) -> masked mean pooling ->
    L2 normalisation (max(norm, 1e-12)) -> logistic-regression head -> sigmoid. coef [L, 384], intercept [L]."""
    m = onnx.load(encoder_path)
    g = m.graph
    enc_out = g.output[0].name  # last_hidden_state [b, s, 384]
    keep_inputs = [i for i in g.input if i.name != "token_type_ids"]
    del g.input[:]
    g.input.extend(keep_inputs)
    del g.output[:]
    pre = [
        helper.make_node("Shape", ["input_ids"], ["head_ids_shape"]),
        helper.make_node("ConstantOfShape", ["head_ids_shape"], ["token_type_ids"],
                         value=helper.make_tensor("zero64", TensorProto.INT64, [1], [0])),
    ]
    post = [
        helper.make_node("Cast", ["attention_mask"], ["head_maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["head_maskf", "head_axis2"], ["head_mask3"]),
        helper.make_node("Mul", [enc_out, "head_mask3"], ["head_wemb"]),
        helper.make_node("ReduceSum", ["head_wemb", "head_axis1"], ["head_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["head_maskf", "head_axis1"], ["head_cnt"], keepdims=1),
        helper.make_node("Max", ["head_cnt", "head_tiny"], ["head_den"]),
        helper.make_node("Div", ["head_sum", "head_den"], ["head_mean"]),
        helper.make_node("Mul", ["head_mean", "head_mean"], ["head_sq"]),
        helper.make_node("ReduceSum", ["head_sq", "head_axis1"], ["head_ss"], keepdims=1),
        helper.make_node("Sqrt", ["head_ss"], ["head_norm"]),
        helper.make_node("Max", ["head_norm", "head_eps"], ["head_normc"]),
        helper.make_node("Div", ["head_mean", "head_normc"], ["sentence_embedding"]),
        helper.make_node("MatMul", ["sentence_embedding", "head_W"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend([
        _const("head_axis1", np.array([1], dtype=np.int64)),
        _const("head_axis2", np.array([2], dtype=np.int64)),
        _const("head_tiny", np.array(1e-9, dtype=np.float32)),
        _const("head_eps", np.array(1e-12, dtype=np.float32)),
        _const("head_W", coef.T.astype(np.float32)),
        _const("head_b", intercept.astype(np.float32)),
    ])
    g.output.extend([helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", coef.shape[0]])])
    g.name = name
    m.doc_string = doc
    m.producer_name = "modserve-train"
    m.producer_version = "1"
    onnx.checker.check_model(m)
    return m
