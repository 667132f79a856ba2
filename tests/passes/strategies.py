"""Hypothesis strategies: random small graphs for property tests of exact rewrites.

Graphs take one to three ``f32[batch, F]`` inputs and mix elementwise unary/binary ops, scalar
constants (0, 1, 2, ...: the identities constant folding knows), duplicated nodes (CSE), reshape
and permute round trips, no-op casts, double negations and linears with parameter weights, then
return one or two values. Dead nodes arise naturally.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from llmc.ir import Graph, GraphBuilder, TensorType, Value, sym

UNARY = ["neg", "abs", "relu", "sigmoid", "tanh", "silu", "sin", "cos"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]
CONSTS = [0.0, 1.0, 2.0, 0.5, -1.0]


@st.composite
def graphs(draw: st.DrawFn, max_ops: int = 14) -> Graph:
    F = draw(st.sampled_from([4, 6, 8]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    b = GraphBuilder("rand")
    B = sym("batch")
    vals: list[Value] = []
    for i in range(draw(st.integers(1, 3))):
        vals.append(b.input(f"x{i}", TensorType((B, F), "f32")))
    nparams = 0

    def pick() -> Value:
        return vals[draw(st.integers(0, len(vals) - 1))]

    def param(shape: tuple[int, ...]) -> Value:
        nonlocal nparams
        nparams += 1
        return b.param(f"p{nparams}", torch.randn(*shape, generator=gen) * 0.5)

    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(
            st.sampled_from(
                [
                    "unary",
                    "binary",
                    "const",
                    "dup",
                    "linear",
                    "reshape",
                    "permute",
                    "cast",
                    "negneg",
                    "vec",
                ]
            )
        )
        x = pick()
        if kind == "unary":
            v = b.emit(draw(st.sampled_from(UNARY)), x)
        elif kind == "binary":
            v = b.emit(draw(st.sampled_from(BINARY)), x, pick())
        elif kind == "const":
            c = b.emit("constant", value=draw(st.sampled_from(CONSTS)))
            op = draw(st.sampled_from(["add", "sub", "mul", "div", "maximum"]))
            if op == "div":
                c = b.emit("constant", value=draw(st.sampled_from([1.0, 2.0, 0.5])))
            v = b.emit(op, c, x) if draw(st.booleans()) and op != "div" else b.emit(op, x, c)
        elif kind == "dup":
            n = draw(st.sampled_from([n for n in b.graph.nodes if n.op != "param"] or [None]))
            if n is None:
                continue
            v = b.emit(n.op, *n.inputs, attrs=n.attrs)
        elif kind == "linear":
            if x.type.rank != 2:
                continue
            out = draw(st.sampled_from([F, F]))
            bias = param((out,)) if draw(st.booleans()) else None
            w = param((out, int(x.type.shape[-1])))
            v = b.emit("linear", x, w, *([bias] if bias is not None else []))
        elif kind == "reshape":
            if x.type.rank != 2 or F % 2:
                continue
            r = b.emit("reshape", x, shape=(B, F // 2, 2))
            if draw(st.booleans()):
                r = b.emit("tanh", r)
            v = b.emit("reshape", b.emit("reshape", r, shape=(B, 2, F // 2)), shape=(B, F))
        elif kind == "permute":
            if x.type.rank != 2:
                continue
            p = b.emit("permute", x, perm=(1, 0))
            if draw(st.booleans()):
                p = b.emit("sigmoid", p)
            v = b.emit("permute", p, perm=(1, 0))
        elif kind == "cast":
            v = b.emit("cast", x, dtype="f32")
        elif kind == "negneg":
            v = b.emit("neg", b.emit("neg", x))
        else:  # "vec": broadcast a [F] param against a [batch, F] value
            v = b.emit(draw(st.sampled_from(["add", "mul"])), x, param((F,)))
        if v.type.shape == (B, F):  # keep the pool uniform: every value broadcasts with all
            vals.append(v)
    n_out = draw(st.integers(1, 2))
    outs = [vals[-1]] + [pick() for _ in range(n_out - 1)]
    b.output(*outs)
    g = b.finish()
    g.meta["seed"] = seed
    return g


def random_inputs(g: Graph, batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*(batch if not isinstance(d, int) else d for d in v.type.shape), generator=gen)
        for v in g.inputs
    ]
