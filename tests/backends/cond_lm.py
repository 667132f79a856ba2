"""The toy LM of :mod:`tests.lm_fixtures` with each layer's FFN block wrapped in a ``cond``.

Per layer, the post-attention half (``post_attention_layernorm`` -> SwiGLU -> residual ``add``)
becomes the ``then`` region of ``cond(pred, h)``; the ``else`` region returns ``h`` (the block
skipped). The weights are the toy LM's own (same seed, same names), so a predicate that is always
true gives the toy LM exactly. The predicate is computed in the layer, from a scalar:

- ``parity``: run the FFN when the largest position is even (``cos(pi * pos) > 0``): decode steps
  alternate taken / skipped, the same in every layer;
- ``cos``: FFN-SkipLLM's saturation test, here on the attention block: per row, the cosine
  similarity between the hidden state entering the layer and after the attention residual; the
  FFN runs unless *every* row is above ``threshold`` (``min over rows <= threshold``);
- ``always`` / ``never``: a constant predicate.

``cond`` takes a bool *scalar* (``llmc.ir.ops``: "predicate must be a bool scalar"), so a batch
whose rows disagree is one decision that the graph makes explicitly: ``cos`` reduces over the
rows (any row that wants the FFN runs it for the batch).
"""

from __future__ import annotations

import math

from llmc.ir import Graph, GraphBuilder, TensorType, Value, sym
from tests.lm_fixtures import toy_lm


def _predicate(b: GraphBuilder, how: str, pos: Value, h_in: Value, h: Value, thr: float) -> Value:
    if how == "parity":
        ang = b.emit("mul", b.emit("cast", pos, dtype="f32"), b.emit("constant", value=math.pi))
        top = b.emit("reduce_max", b.emit("cos", ang), dims=(0, 1))
        return b.emit("gt", top, b.emit("constant", value=0.0))
    if how == "cos":

        def dot(x: Value, y: Value) -> Value:
            return b.emit("reduce_sum", b.emit("mul", x, y), dims=(2,))

        cos = b.emit("div", dot(h_in, h), b.emit("sqrt", b.emit("mul", dot(h_in, h_in), dot(h, h))))
        least = b.emit("neg", b.emit("reduce_max", b.emit("neg", cos), dims=(0, 1)))
        return b.emit("le", least, b.emit("constant", value=thr))
    if how in ("always", "never"):
        one = b.emit("constant", value=1.0)
        return b.emit("gt" if how == "always" else "lt", one, b.emit("constant", value=0.0))
    raise ValueError(f"unknown predicate {how!r}")


def _ffn(b: GraphBuilder, h: Value, pre: str, params: dict) -> Value:
    """``h + SwiGLU(rms_norm(h))`` with the toy LM's weights for layer prefix ``pre``."""

    def w(name: str) -> Value:
        return b.param(name, params[name])

    with b.scope(f"{pre}.post_attention_layernorm", "norm"):
        x = b.emit("rms_norm", h, w(f"{pre}.post_attention_layernorm.weight"), eps=1e-5)
    gate = b.emit("linear", x, w(f"{pre}.mlp.gate_proj.weight"))
    up = b.emit("linear", x, w(f"{pre}.mlp.up_proj.weight"))
    m = b.emit("linear", b.emit("mul", b.emit("silu", gate), up), w(f"{pre}.mlp.down_proj.weight"))
    return b.emit("add", h, m)


def cond_lm(
    pred: str = "parity",
    threshold: float = 0.0,
    *,
    block: str = "cond",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 64,
    vocab: int = 300,
    seed: int = 0,
) -> Graph:
    """The toy LM (same arguments, same weights) with every FFN block behind a ``cond``
    (``block="cond"``), or, as baselines for measurements, the FFN always run without a ``cond``
    (``"plain"``, the toy LM's computation) or removed (``"none"``)."""
    toy = toy_lm(
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        ffn=ffn,
        vocab=vocab,
        seed=seed,
    )
    params = toy.params
    hd = hidden // heads
    B, S, P = sym("batch"), sym("seq"), sym("past")
    b = GraphBuilder("cond_toy")
    ids = b.input("input_ids", TensorType((B, S), "i64"))
    pos = b.input("positions", TensorType((B, S), "i64"))
    past = []
    for i in range(layers):
        k = b.input(f"past_k_{i}", TensorType((B, kv_heads, P, hd), "f32"))
        v = b.input(f"past_v_{i}", TensorType((B, kv_heads, P, hd), "f32"))
        past.append((k, v))
    with b.scope("model.embed_tokens", "embed"):
        h = b.emit(
            "embedding",
            ids,
            b.param("model.embed_tokens.weight", params["model.embed_tokens.weight"]),
        )
    presents = []
    for i in range(layers):
        pre = f"model.layers.{i}"
        h_in = h
        with b.scope(f"{pre}.input_layernorm", "norm"):
            x = b.emit(
                "rms_norm",
                h,
                b.param(f"{pre}.input_layernorm.weight", params[f"{pre}.input_layernorm.weight"]),
                eps=1e-5,
            )
        with b.scope(f"{pre}.self_attn", "attn"):

            def proj(name: str, x: Value = x, pre: str = pre) -> Value:
                w = f"{pre}.self_attn.{name}.weight"
                with b.scope(f"{pre}.self_attn.{name}", "attn"):
                    return b.emit("linear", x, b.param(w, params[w]))

            def heads_first(t: Value, n: int) -> Value:
                return b.emit(
                    "permute", b.emit("reshape", t, shape=(B, S, n, hd)), perm=(0, 2, 1, 3)
                )

            q = b.emit("rope", heads_first(proj("q_proj"), heads), pos, theta=10000.0)
            k = b.emit("rope", heads_first(proj("k_proj"), kv_heads), pos, theta=10000.0)
            v = heads_first(proj("v_proj"), kv_heads)
            kf = b.emit("concat", past[i][0], k, dim=2, name=f"present_k_{i}")
            vf = b.emit("concat", past[i][1], v, dim=2, name=f"present_v_{i}")
            presents += [kf, vf]
            a = b.emit("attention", q, kf, vf, causal=True)
            a = b.emit("reshape", b.emit("permute", a, perm=(0, 2, 1, 3)), shape=(B, S, hidden))
        with b.scope(f"{pre}.self_attn.o_proj", "attn"):
            w = f"{pre}.self_attn.o_proj.weight"
            a = b.emit("linear", a, b.param(w, params[w]))
        with b.scope(pre):
            h = b.emit("add", h, a)
        if block == "plain":
            with b.scope(f"{pre}.mlp", "ffn"):
                h = _ffn(b, h, pre, params)
        elif block == "cond":
            with b.scope(f"{pre}.mlp", "ffn"):
                flag = _predicate(b, pred, pos, h_in, h, threshold)
                run_b, (hr,) = b.region(h.type, hint="ffn_in")
                run_b.output(_ffn(run_b, hr, pre, params))
                skip_b, (hs,) = b.region(h.type, hint="ffn_skip")
                skip_b.output(hs)
                h = b.emit(
                    "cond",
                    flag,
                    h,
                    then_branch=run_b.finish(),
                    else_branch=skip_b.finish(),
                    name=f"ffn_{i}",
                )
        elif block != "none":
            raise ValueError(f"unknown block {block!r}")
    with b.scope("model.norm", "norm"):
        h = b.emit(
            "rms_norm", h, b.param("model.norm.weight", params["model.norm.weight"]), eps=1e-5
        )
    with b.scope("lm_head", "head"):
        logits = b.emit(
            "linear", h, b.param("lm_head.weight", params["lm_head.weight"]), name="logits"
        )
    b.output(logits, *presents)
    graph = b.finish()
    graph.meta = dict(toy.meta, family="toy-cond")
    return graph


def ffn_decisions(graph: Graph, args: list) -> list[bool]:
    """Run the interpreter and return, per layer, whether its FFN ``cond`` took the block."""
    from llmc.runtime.interp import run

    seen: list[bool] = []
    conds = {id(n) for n in graph.nodes if n.op == "cond"}

    def hook(node, res):
        if node.op in ("gt", "le", "lt") and any(id(u) in conds for u in users.get(node.out, [])):
            seen.append(bool(res))

    users = graph.users()
    run(graph, args, hooks=[hook])
    return seen
