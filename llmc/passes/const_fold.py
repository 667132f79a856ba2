"""Constant folding and algebraic identities, as a rule table."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmc.ir.graph import Graph, Node, Value
from llmc.ir.params import Param
from llmc.ir.registry import get_op
from llmc.ir.types import from_torch_dtype
from llmc.passes.base import Pass, PassContext
from llmc.passes.rewrite import Rewriter, Rule, apply_rules


def _same(n: Node, v: Value) -> Value | None:
    """``v`` if it can stand in for ``n`` (identical type: no broadcast, no promotion)."""
    return v if v.type == n.out.type else None


def _identity_right(value: float):
    def fn(n: Node, rw: Rewriter) -> Value | None:
        return _same(n, n.inputs[0]) if rw.is_const(n.inputs[1], value) else None

    return fn


def _identity_left(value: float):
    def fn(n: Node, rw: Rewriter) -> Value | None:
        return _same(n, n.inputs[1]) if rw.is_const(n.inputs[0], value) else None

    return fn


def _neg_neg(n: Node, rw: Rewriter) -> Value | None:
    x = n.inputs[0].node
    return _same(n, x.inputs[0]) if x is not None and x.op == "neg" else None


def _noop_layout(n: Node, rw: Rewriter) -> Value | None:
    x = n.inputs[0]
    if n.op == "cast" and n.attrs.dtype == x.type.dtype:
        return x
    if n.op == "reshape" and tuple(n.out.type.shape) == tuple(x.type.shape):
        return x
    if n.op == "permute" and tuple(n.attrs.perm) == tuple(range(len(n.attrs.perm))):
        return x
    return None


def _reshape_reshape(n: Node, rw: Rewriter) -> Value | None:
    x = n.inputs[0].node
    if x is None or x.op != "reshape":
        return None
    return rw.emit("reshape", x.inputs[0], shape=tuple(n.out.type.shape))


def _permute_permute(n: Node, rw: Rewriter) -> Value | None:
    x = n.inputs[0].node
    if x is None or x.op != "permute":
        return None
    perm = tuple(x.attrs.perm[p] for p in n.attrs.perm)
    if perm == tuple(range(len(perm))):
        return _same(n, x.inputs[0])
    return rw.emit("permute", x.inputs[0], perm=perm)


def _fold_scalars(n: Node, rw: Rewriter) -> Value | None:
    """op(constants...) -> constant, when the result is a scalar."""
    if n.op == "constant" or not n.inputs or n.out.type.rank != 0:
        return None
    vals = [rw.constant_of(v) for v in n.inputs]
    if any(v is None for v in vals):
        return None
    od = get_op(n.op)
    if od.has_side_effects or od.region_fields:
        return None
    from llmc.ir.types import to_torch_dtype
    from llmc.runtime.interp import Interpreter

    args = [
        torch.tensor(v, dtype=to_torch_dtype(x.type.dtype))
        for v, x in zip(vals, n.inputs, strict=True)
    ]
    res = Interpreter(rw.graph).eval_node(n, args)
    return rw.emit(
        "constant", value=float(res), dtype=from_torch_dtype(res.dtype), name=n.out.name + "_c"
    )


#: (ops, rule): each rule's docstring-free comment states the identity it applies.
RULES: list[Rule] = [
    Rule(("mul",), _identity_right(1.0), "x*1 -> x"),
    Rule(("mul",), _identity_left(1.0), "1*x -> x"),
    Rule(("add",), _identity_right(0.0), "x+0 -> x"),
    Rule(("add",), _identity_left(0.0), "0+x -> x"),
    Rule(("sub",), _identity_right(0.0), "x-0 -> x"),
    Rule(("div",), _identity_right(1.0), "x/1 -> x"),
    Rule(("pow",), _identity_right(1.0), "x**1 -> x"),
    Rule(("neg",), _neg_neg, "-(-x) -> x"),
    Rule(("cast", "reshape", "permute"), _noop_layout, "cast/reshape/permute to itself -> x"),
    Rule(("reshape",), _reshape_reshape, "reshape(reshape(x)) -> reshape(x)"),
    Rule(("permute",), _permute_permute, "permute(permute(x, p), q) -> permute(x, p[q])"),
    Rule((), _fold_scalars, "op(c1, c2, ...) -> c"),
]


def _fold_params(graph: Graph) -> int:
    """Nodes whose operands are all dense params or constants -> a new dense param.

    One partial evaluation by the interpreter: dense params and constants are known, and so is
    every node computed from known values alone; the hook records each computed node."""
    from llmc.runtime.interp import Interpreter

    def can_run(n: Node) -> bool:
        if n.op == "constant":
            return True
        if n.op == "param":
            p = graph.params[n.attrs.name]
            return p.format.is_dense and not p.is_meta
        od = get_op(n.op)
        return not (od.has_side_effects or od.region_fields or n.out.type.symbols())

    folded: list[tuple[Node, torch.Tensor]] = []

    def hook(n: Node, args: list[torch.Tensor], out: torch.Tensor) -> None:
        if n.op not in ("param", "constant"):
            folded.append((n, out))

    Interpreter(graph, hook=hook).partial({}, can_run)
    for n, value in folded:
        base = (n.scope + "." if n.scope else "") + f"folded_{n.out.name}"
        pname, i = base, 1
        while pname in graph.params:
            pname, i = f"{base}_{i}", i + 1
        graph.add_param(Param.dense(pname, value.contiguous()))
        new = graph.make_node(
            "param", (), {"name": pname}, name=n.out.name + "_f", scope=n.scope, block=n.block
        )
        graph.insert_before(n, new)
        graph.replace_uses(n.out, new.out)
    return len(folded)


@dataclass(frozen=True)
class ConstantFolding(Pass):
    """Fold scalar constant expressions and apply algebraic identities (x*1, x+0, -(-x),
    no-op casts/reshapes/permutes, reshape/permute chains); with ``params=true`` also evaluate
    subgraphs of dense params into new params (renames weights: off by default)."""

    name = "const-fold"
    exact = True
    params: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> None:
        rewrites = apply_rules(graph, RULES)
        folded = _fold_params(graph) if self.params else 0
        removed = graph.dce()
        ctx.report.set(rewrites=rewrites, params_folded=folded, nodes_removed=removed)
