"""Operator fusion for the MiniLM encoder graph (quantize.quantize_model calls it on the folded fp32 graph,
before quantize_dynamic; abuse-minilm and the v3 encoders get it that way).

The torch-dynamo export of all-MiniLM-L6-v2 spells GELU and attention out in primitive ops that
onnxruntime's own fusions (and onnxruntime.transformers.optimizer) do not recognise. This rewrites them
into com.microsoft contrib ops, which the onnxruntime CPU library the server links (1.31.1) runs:

* GELU: `Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(0.5, .) -> Mul(x, .)` becomes `Gelu(x)` (exact erf GELU,
  same function; the bias Add before it stays, so onnxruntime still folds it into the int8 matmul).
* attention: dynamo's decomposed scaled-dot-product attention (Reshape/Transpose of Q, K and V, Mul by
  head_size^-1/4 on Q and on K^T, MatMul, Add of the key-padding mask Where(mask, 0, -FLT_MAX) built from
  attention_mask, Softmax, IsNaN/Where, MatMul with V, Transpose, Reshape) becomes one
  `MultiHeadAttention(q, k, v, key_padding_mask = int32(attention_mask))` with num_heads 12 and
  scale = the product of the two Mul constants; q/k/v are the [B, S, 384] outputs of the Q/K/V
  projections after their bias Adds. The match checks that the mask depends on attention_mask only.

MASK_FILTER_VALUE: the kernel adds it to the scaled scores of padded keys. The original adds -FLT_MAX
(onnxruntime's default is -10000); either way exp() of such a score is a subnormal float, and subnormal
arithmetic in the softmax and the context product made attention about a third of a padded 32-review
batch. -60 keeps those terms normal and still negligible: a padded key's weight relative to the row's
largest is exp(d - 60), d = its scaled score minus the row's largest real score, and d was at most 11.0
(layer 0; 1.7-4.0 in layers 1-5) over 9,973 held-out texts in length-sorted and unsorted batches, so
weight <= 5e-22, far below float32 resolution. quantize.py checks the fused graph against the same graph
with -FLT_MAX on padded batches (scores must agree to 1e-6; they are equal).

Nodes that no longer feed the outputs (the mask arithmetic, the shape glue) are dropped. Deterministic:
new node names come from the graph's own tensor names.

pack_qkv (since abuse-minilm 1.3.0, abuse-v3 3.3.0, fraud-v3 3.2.0; run after fuse): each
`MultiHeadAttention(q, k, v)` whose q, k and v are `Add(MatMul(x, W), b)` projections of one x becomes one
com.microsoft `Attention(x, [Wq|Wk|Wv], [bq|bk|bv], mask)` (same num_heads, scale, mask_filter_value).
quantize_dynamic turns it into `QAttention`: x is quantized once and the projections run inside the attention
kernel (onnxruntime 1.31.1 does them as one batch of per-head int8 GEMMs, MlasGemmBatch, written straight into
the head-major layout), instead of three MatMulInteger (each with its own Cast/Mul rescale and bias Add)
feeding MultiHeadAttention. Why: fewer ops, same arithmetic; against the 1.2.0
graph (one thread, server options, interleaved; quantize.py has the runs): one review in 0.89-0.95x the time, a
padded 32-review batch in 0.95-0.97x.
The int8 arithmetic is the same: per-channel weight scales make the packed weight's columns the three
weights' columns (quantize.py checks them bit for bit), x's uint8 tensor and scale were already shared by
the three projections, and the scores came out bit-identical (quantize.py checks that too).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
MASK_FILTER_VALUE = -60.0
FLT_MAX = float(np.finfo(np.float32).max)


class NoMatch(Exception):
    pass


class _Graph:
    def __init__(self, m):
        self.g = m.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.prod, self.cons = {}, {}
        for n in self.g.node:
            for o in n.output:
                self.prod[o] = n
            for x in n.input:
                self.cons.setdefault(x, []).append(n)

    def const(self, name):
        """numpy value of an initializer or Constant output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.prod.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def scalar(self, name, value, tol=1e-6):
        v = self.const(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(-1)[0]) - value) <= tol * max(1.0, abs(value))

    def parent(self, node, i, op):
        p = self.prod.get(node.input[i])
        if p is None or p.op_type != op:
            raise NoMatch(f"{node.name}: input {i} is not {op}")
        return p

    def only_child(self, name, op):
        c = self.cons.get(name, [])
        if len(c) != 1 or c[0].op_type != op:
            raise NoMatch(f"{name}: not consumed by exactly one {op}")
        return c[0]

    def other_input(self, node, known):
        x = [i for i in node.input if i != known]
        if len(x) != 1:
            raise NoMatch(node.name)
        return x[0]

    def value_inputs(self, name):
        """The graph inputs whose values (not only their shapes) `name` depends on."""
        gin = {i.name for i in self.g.input}
        seen, stack, out = set(), [name], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if x in gin:
                out.add(x)
            p = self.prod.get(x)
            if p is not None and p.op_type != "Shape":
                stack.extend(i for i in p.input if i)
        return out


def _match_gelu(g, erf):
    """Erf node -> (x, the final Mul) of Div(x, sqrt2) -> Erf -> Add(1) -> Mul(0.5) -> Mul(x)."""
    div = g.parent(erf, 0, "Div")
    x = div.input[0]
    if not g.scalar(div.input[1], float(np.sqrt(2.0))):
        raise NoMatch("gelu: Div by sqrt(2)")
    add = g.only_child(erf.output[0], "Add")
    if not g.scalar(g.other_input(add, erf.output[0]), 1.0):
        raise NoMatch("gelu: Add 1")
    half = g.only_child(add.output[0], "Mul")
    if not g.scalar(g.other_input(half, add.output[0]), 0.5):
        raise NoMatch("gelu: Mul 0.5")
    mul = g.only_child(half.output[0], "Mul")
    if g.other_input(mul, half.output[0]) != x:
        raise NoMatch("gelu: Mul x")
    return x, mul


def _projection(g, node, i):
    """node.input[i] = Transpose(0,2,1,3)(Reshape(Add(y, bias[D]))) -> (the Add, the Reshape, D)."""
    tr = g.parent(node, i, "Transpose")
    if list(tr.attribute[0].ints) != [0, 2, 1, 3]:
        raise NoMatch("attention: head transpose")
    rs = g.parent(tr, 0, "Reshape")
    add = g.parent(rs, 0, "Add")
    for j in (0, 1):
        b = g.const(add.input[1 - j])
        if g.const(add.input[j]) is None and b is not None and b.ndim == 1:
            return add, rs, int(b.shape[0])
    raise NoMatch("attention: projection bias")


def _match_attention(g, softmax):
    """Softmax node -> (q, k, v tensor names, scale, num_heads, the final Reshape)."""
    madd = g.parent(softmax, 0, "Add")
    scores = where = None
    for i in (0, 1):
        p = g.prod.get(madd.input[i])
        if p is not None and p.op_type == "MatMul":
            scores, where = p, g.prod.get(madd.input[1 - i])
    if scores is None or where is None or where.op_type != "Where":
        raise NoMatch("attention: scores + mask")
    fill = g.const(where.input[2])
    if not (g.scalar(where.input[1], 0.0) and fill is not None and float(fill.reshape(-1)[0]) <= -1e30):
        raise NoMatch("attention: mask values")
    if g.value_inputs(where.input[0]) != {"attention_mask"}:
        raise NoMatch("attention: mask is not attention_mask's")
    qmul, kmul = g.parent(scores, 0, "Mul"), g.parent(scores, 1, "Mul")
    qin = [x for x in qmul.input if g.const(x) is None][0]
    kin = [x for x in kmul.input if g.const(x) is None][0]
    sq = np.float32(g.const(g.other_input(qmul, qin)).reshape(-1)[0])
    sk = np.float32(g.const(g.other_input(kmul, kin)).reshape(-1)[0])
    qadd, qrs, hidden = _projection(g, qmul, list(qmul.input).index(qin))
    # K^T as dynamo writes it for 4-D: Reshape(Transpose(0,2,1)(Reshape(K_heads, [-1, S, H])), [B, N, H, S])
    r2 = g.prod.get(kin)
    if r2 is None or r2.op_type != "Reshape":
        raise NoMatch("attention: K^T reshape")
    t = g.parent(r2, 0, "Transpose")
    if list(t.attribute[0].ints) != [0, 2, 1]:
        raise NoMatch("attention: K^T transpose")
    kadd, _, _ = _projection(g, g.parent(t, 0, "Reshape"), 0)
    users = g.cons[softmax.output[0]]
    if sorted(u.op_type for u in users) != ["IsNaN", "Where"]:
        raise NoMatch("attention: NaN guard")
    guard = [u for u in users if u.op_type == "Where"][0]
    ctx = g.only_child(guard.output[0], "MatMul")
    vadd, _, _ = _projection(g, ctx, 1)
    out = g.only_child(g.only_child(ctx.output[0], "Transpose").output[0], "Reshape")
    shape = g.prod.get(qrs.input[1])  # Concat(batch, seq, -1, head_size)
    head_size = int(g.const(shape.input[3]).reshape(-1)[0]) if shape is not None and shape.op_type == "Concat" \
        else int(g.const(qrs.input[1])[3])
    return qadd.output[0], kadd.output[0], vadd.output[0], float(sq * sk), hidden // head_size, out


def _drop_dead(g):
    need = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in need for o in n.output):
            keep.append(n)
            need |= {i for i in n.input if i}
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)


def fuse(model, mask_filter_value=MASK_FILTER_VALUE):
    """A new ModelProto with every GELU and attention block fused, and the fused-op counts.
    Raises NoMatch if a block does not have the expected form (nothing is half-fused)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(m)
    replace = {}  # id(last node of a block) -> the nodes that take its place
    counts = {"Gelu": 0, "MultiHeadAttention": 0}
    for erf in [n for n in m.graph.node if n.op_type == "Erf"]:
        x, last = _match_gelu(g, erf)
        replace[id(last)] = [helper.make_node("Gelu", [x], list(last.output), domain=MS, name=last.output[0] + "_gelu")]
        counts["Gelu"] += 1
    mask = "attention_mask_int32"
    for sm in [n for n in m.graph.node if n.op_type == "Softmax"]:
        q, k, v, scale, heads, last = _match_attention(g, sm)
        new = [] if counts["MultiHeadAttention"] else [
            helper.make_node("Cast", ["attention_mask"], [mask], to=TensorProto.INT32, name="attention_mask_int32_cast")]
        new.append(helper.make_node("MultiHeadAttention", [q, k, v, "", mask], list(last.output), domain=MS,
                                    name=last.output[0] + "_mha", num_heads=heads, scale=scale,
                                    mask_filter_value=float(mask_filter_value)))
        replace[id(last)] = new
        counts["MultiHeadAttention"] += 1
    if not counts["Gelu"] or not counts["MultiHeadAttention"]:
        raise NoMatch(f"nothing to fuse: {counts}")
    nodes = []
    for n in m.graph.node:
        nodes += replace.get(id(n), [n])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _drop_dead(m.graph)
    if not any(o.domain == MS for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(MS, 1))
    left = {n.op_type for n in m.graph.node} & {"Erf", "Softmax", "Transpose", "IsNaN"}
    if left:
        raise NoMatch(f"unfused ops left: {sorted(left)}")
    onnx.checker.check_model(m)
    return m, counts


def _bias_projection(g, t):
    """t = Add(MatMul(x, W), b), W [D, D'] and b [D'] constants, the MatMul feeding only that Add -> (x, W, b, W's name)."""
    add = g.prod.get(t)
    if add is None or add.op_type != "Add":
        raise NoMatch(f"pack: {t} is not a bias Add")
    for j in (0, 1):
        b, mm = g.const(add.input[1 - j]), g.prod.get(add.input[j])
        if b is None or b.ndim != 1 or mm is None or mm.op_type != "MatMul":
            continue
        w = g.const(mm.input[1])
        if w is None or w.ndim != 2 or w.shape[1] != b.shape[0] or g.const(mm.input[0]) is not None:
            raise NoMatch(f"pack: {mm.name} has no constant [D, D'] weight")
        if len(g.cons[mm.output[0]]) != 1:
            raise NoMatch(f"pack: {mm.name}'s product is used elsewhere")
        return mm.input[0], w, b, mm.input[1]
    raise NoMatch(f"pack: {add.name} is not MatMul + bias")


def pack_qkv(model):
    """A new ModelProto with every MultiHeadAttention(q, k, v, "", mask) over Add(MatMul(x, W), b) projections of
    one x replaced by Attention(x, [Wq|Wk|Wv], [bq|bk|bv], mask), and {packed weight name: (Wq, Wk, Wv names)}.
    Raises NoMatch if any MultiHeadAttention does not have that form (nothing is half-packed)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(m)
    replace, new_inits, packed = {}, [], {}
    for n in [n for n in m.graph.node if n.op_type == "MultiHeadAttention" and n.domain == MS]:
        if len(n.input) != 5 or n.input[3] or any(len(g.cons.get(t, [])) != 1 for t in n.input[:3]):
            raise NoMatch(f"pack: {n.name} inputs")
        proj = [_bias_projection(g, t) for t in n.input[:3]]
        if len({p[0] for p in proj}) != 1:
            raise NoMatch(f"pack: {n.name}'s q, k, v are not projections of one tensor")
        if len({p[1].shape for p in proj}) != 1:
            raise NoMatch(f"pack: {n.name}'s projections differ in shape")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if set(attrs) != {"num_heads", "scale", "mask_filter_value"}:
            raise NoMatch(f"pack: {n.name} attributes {sorted(attrs)}")
        wn, bn = n.output[0] + "_qkv_w", n.output[0] + "_qkv_b"
        new_inits += [numpy_helper.from_array(np.concatenate([p[1] for p in proj], 1).astype(np.float32), wn),
                      numpy_helper.from_array(np.concatenate([p[2] for p in proj]).astype(np.float32), bn)]
        packed[wn] = tuple(p[3] for p in proj)
        replace[id(n)] = helper.make_node("Attention", [proj[0][0], wn, bn, n.input[4]], list(n.output), domain=MS,
                                          name=n.output[0] + "_attention", **attrs)
    if not packed:
        raise NoMatch("pack: no MultiHeadAttention")
    nodes = [replace.get(id(n), n) for n in m.graph.node]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(new_inits)
    _drop_dead(m.graph)
    left = {n.op_type for n in m.graph.node} & {"MultiHeadAttention"}
    if left:
        raise NoMatch(f"unpacked ops left: {sorted(left)}")
    onnx.checker.check_model(m)
    return m, packed
