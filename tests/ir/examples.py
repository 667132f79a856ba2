"""Hand-built graphs with real data, used by the golden, verifier and interpreter tests.

Each builder is deterministic (fixed seeds) and returns a graph that passes the verifier.
"""

from __future__ import annotations

import torch

from llmc.ir import Graph, GraphBuilder, Param, QuantSpec, SparsitySpec, StorageFormat, TensorType
from llmc.ir.graph import Value
from llmc.ir.types import sym

B, S, P = sym("batch"), sym("seq"), sym("past")


def quantized(
    name: str, out_f: int, in_f: int, bits: int, group: int, symmetric: bool, seed: int
) -> Param:
    """A quantized [out, in] weight with random codes, positive scales and (asym) zero points."""
    gen = torch.Generator().manual_seed(seed)
    q = QuantSpec(bits, group, symmetric)
    groups = 1 if group == 0 else in_f // group
    data = {
        "qvalue": torch.randint(q.qmin, q.qmax + 1, (out_f, in_f), generator=gen).to(torch.int8),
        "scale": torch.rand(out_f, groups, generator=gen) * 0.05 + 0.01,
    }
    if not symmetric:
        data["zero"] = torch.randint(q.qmin, q.qmax + 1, (out_f, groups), generator=gen).to(
            torch.int8
        )
    return Param(name, TensorType((out_f, in_f), "f32"), StorageFormat(q, None), data)


def nm_sparse(name: str, out_f: int, in_f: int, n: int, m: int, seed: int) -> Param:
    """A dense-valued [out, in] weight with at most ``n`` non-zeros in every ``m`` inputs."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen) / in_f**0.5
    keep = torch.rand(out_f, in_f // m, m, generator=gen).argsort(-1).argsort(-1) < n
    w = w * keep.reshape(out_f, in_f)
    fmt = StorageFormat(None, SparsitySpec("nm", n, m, n / m))
    return Param(name, TensorType((out_f, in_f), "f32"), fmt, {"value": w})


def mlp() -> Graph:
    """Static shapes, dense weights, bias, layer_norm, gelu."""
    torch.manual_seed(0)
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((2, 8), "f32"))
    with b.scope("fc1", block="ffn"):
        h = b.emit(
            "linear",
            x,
            b.param("fc1.weight", torch.randn(16, 8)),
            b.param("fc1.bias", torch.randn(16)),
            name="h",
        )
        h = b.emit("gelu", h, approximate="tanh")
    with b.scope("fc2", block="ffn"):
        y = b.emit("linear", h, b.param("fc2.weight", torch.randn(8, 16)), name="y")
    with b.scope("norm", block="norm"):
        ln_w = b.param("norm.weight", torch.ones(8))
        ln_b = b.param("norm.bias", torch.zeros(8))
        out = b.emit("layer_norm", b.emit("add", x, y), ln_w, ln_b, eps=1e-05, name="out")
    b.output(out)
    return b.finish()


def llama_block() -> Graph:
    """One pre-norm decoder block with a KV cache: symbolic dims, GQA attention with rope,
    quantized (int4 grouped asymmetric, int8 per channel), 2:4 sparse and sparse+quantized
    weights, SwiGLU MLP, scopes and block tags, meta."""
    torch.manual_seed(1)
    hid, heads, kvh, d, ffn = 16, 4, 2, 4, 32
    b = GraphBuilder("llama_block")
    g = b.graph
    g.meta = {"family": "llama", "layers": 1}
    x = b.input("x", TensorType((B, S, hid), "f32"))
    pos = b.input("positions", TensorType((B, S), "i64"))
    kc = b.input("k_cache", TensorType((B, kvh, P, d), "f32"))
    vc = b.input("v_cache", TensorType((B, kvh, P, d), "f32"))
    pre = "model.layers.0"
    with b.scope(f"{pre}.input_layernorm", block="norm"):
        h = b.emit(
            "rms_norm", x, b.param(f"{pre}.input_layernorm.weight", torch.ones(hid)), name="h"
        )
    weights = {
        "q": quantized(f"{pre}.self_attn.q_proj.weight", heads * d, hid, 4, 8, False, 10),
        "k": quantized(f"{pre}.self_attn.k_proj.weight", kvh * d, hid, 8, 0, True, 11),
        "v": nm_sparse(f"{pre}.self_attn.v_proj.weight", kvh * d, hid, 2, 4, 12),
    }
    qkv: dict[str, Value] = {}
    with b.scope(f"{pre}.self_attn", block="attn"):
        for name, nh in (("q", heads), ("k", kvh), ("v", kvh)):
            with b.scope(f"{pre}.self_attn.{name}_proj"):
                y = b.emit("linear", h, b.param(weights[name].name, weights[name]), name=name)
            y = b.emit("reshape", y, shape=(B, S, nh, d))
            qkv[name] = b.emit("permute", y, perm=(0, 2, 1, 3))
        with b.scope(f"{pre}.self_attn.rotary_emb", block="rope"):
            rope = {"theta": 500000.0, "scaling": "llama3", "factor": 8.0}
            q = b.emit("rope", qkv["q"], pos, **rope)
            k = b.emit("rope", qkv["k"], pos, **rope)
        k = b.emit("concat", kc, k, dim=2, name="k_all")
        v = b.emit("concat", vc, qkv["v"], dim=2, name="v_all")
        a = b.emit("attention", q, k, v, window=4)
        a = b.emit("reshape", b.emit("permute", a, perm=(0, 2, 1, 3)), shape=(B, S, -1))
        wo = quantized(f"{pre}.self_attn.o_proj.weight", hid, heads * d, 4, 4, True, 13)
        wo.data["qvalue"] = wo.data["qvalue"] * (torch.arange(heads * d) % 2 == 0)
        wo = Param(
            wo.name, wo.type, StorageFormat(wo.format.quant, SparsitySpec("nm", 1, 2, 0.5)), wo.data
        )
        with b.scope(f"{pre}.self_attn.o_proj"):
            a = b.emit("linear", a, b.param(wo.name, wo), name="o")
    h1 = b.emit("add", x, a, name="resid")
    with b.scope(f"{pre}.post_attention_layernorm", block="norm"):
        w = b.param(f"{pre}.post_attention_layernorm.weight", torch.ones(hid))
        h2 = b.emit("rms_norm", h1, w, eps=1e-05)
    with b.scope(f"{pre}.mlp", block="ffn"):
        gate = b.emit(
            "linear", h2, b.param(f"{pre}.mlp.gate_proj.weight", torch.randn(ffn, hid) / 4)
        )
        up = b.emit("linear", h2, b.param(f"{pre}.mlp.up_proj.weight", torch.randn(ffn, hid) / 4))
        act = b.emit("mul", b.emit("silu", gate), up)
        down = b.emit(
            "linear", act, b.param(f"{pre}.mlp.down_proj.weight", torch.randn(hid, ffn) / 6)
        )
    out = b.emit("add", h1, down, name="out")
    b.output(out, k, v)
    return b.finish()


def region(parent: Graph, types: list[TensorType], body, name: str = "region") -> Graph:
    """A region of ``parent`` taking ``types``; ``body(builder, *args)`` returns its result."""
    r = Graph(name)
    r.parent = parent
    rb = GraphBuilder(graph=r)
    args: list[Value] = []
    for t in types:
        n = parent.fresh_name(f"{name}_arg")
        v = Value(n, t)  # fresh_name claimed the name already
        r.inputs.append(v)
        args.append(v)
    rb.output(body(rb, *args))
    return r


def with_cond() -> Graph:
    """``cond`` with a computed predicate, two operands, a param read inside a region, and a
    nested ``cond`` in the else branch."""
    torch.manual_seed(2)
    b = GraphBuilder("gated")
    g = b.graph
    t = TensorType((B, 4), "f32")
    x = b.input("x", t)
    y = b.input("y", t)
    flag = b.input("flag", TensorType((), "bool"))
    b.param("skip.scale", torch.full((4,), 0.5))
    m = b.emit("reduce_max", x, dims=(0, 1))
    pred = b.emit("gt", m, b.emit("constant", value=0.0), name="pred")

    def then_body(rb: GraphBuilder, a: Value, c: Value) -> Value:
        return rb.emit("add", a, c)

    def inner_then(rb: GraphBuilder, a: Value) -> Value:
        return rb.emit("neg", a)

    def inner_else(rb: GraphBuilder, a: Value) -> Value:
        return a

    def else_body(rb: GraphBuilder, a: Value, c: Value) -> Value:
        s = rb.emit("param", attrs={"name": "skip.scale"})
        prod = rb.emit("mul", a, s)
        return rb.emit(
            "cond",
            flag_in_region(rb, a),
            prod,
            then_branch=region(rb.graph, [t], inner_then, "inner_then"),
            else_branch=region(rb.graph, [t], inner_else, "inner_else"),
        )

    def flag_in_region(rb: GraphBuilder, a: Value) -> Value:
        mn = rb.emit("reduce_sum", a, dims=(0, 1))
        return rb.emit("lt", mn, rb.emit("constant", value=1.0))

    with b.scope("model.layers.0", block="skip"):
        out = b.emit(
            "cond",
            pred,
            x,
            y,
            then_branch=region(g, [t, t], then_body, "then"),
            else_branch=region(g, [t, t], else_body, "else"),
            name="gated",
        )
    with b.scope("model.layers.1", block="skip"):
        out2 = b.emit(
            "cond",
            flag,
            out,
            then_branch=region(g, [t], inner_then, "flip"),
            else_branch=region(g, [t], inner_else, "keep"),
        )
    b.output(out2)
    return b.finish()


def layout() -> Graph:
    """Layout ops with symbolic dims: reshape with -1, slices (negative start, symbolic start,
    step), concat on ``past + seq``, index_select, cast, reductions, where with -inf."""
    torch.manual_seed(3)
    b = GraphBuilder("layout")
    x = b.input("x", TensorType((B, S, 8), "f32"))
    cache = b.input("cache", TensorType((B, P, 8), "f32"))
    allx = b.emit("concat", cache, x, dim=1, name="all")  # [batch, past + seq, 8]
    new = b.emit("slice", allx, dim=1, start=P, name="new")  # [batch, seq, 8]
    last = b.emit("slice", new, dim=-2, start=-1, name="last")  # [batch, 1, 8]
    flat = b.emit("reshape", new, shape=(-1, 8), name="flat")  # [batch*seq, 8]
    back = b.emit("reshape", flat, shape=(B, -1, 2, 4))  # [batch, seq, 2, 4]
    perm = b.emit("permute", back, perm=(0, 2, 1, 3))
    even = b.emit("slice", perm, dim=3, start=0, end=4, step=2)  # [batch, 2, seq, 2]
    idx = b.param("idx", torch.tensor([1, 0, 1]))
    sel = b.emit("index_select", even, idx, dim=1)  # [batch, 3, seq, 2]
    half = b.emit("cast", b.emit("cast", sel, dtype="f16"), dtype="f32")
    mx = b.emit("reduce_max", half, dims=(1,), keepdim=True)
    mean = b.emit("reduce_mean", last, dims=(-1,))
    neg_inf = b.emit("constant", value=float("-inf"))
    masked = b.emit("where", b.emit("ge", half, mx), half, neg_inf, name="masked")
    p = b.emit("softmax", masked, dim=1)
    b.output(p, mean)
    return b.finish()


GOLDEN_GRAPHS = {
    "mlp": mlp,
    "llama_block": llama_block,
    "with_cond": with_cond,
    "layout": layout,
}
