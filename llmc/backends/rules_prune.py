"""Lowering rules for token pruning (``token_scores``, ``keep_rows``, ``gather_rows``) on every TVM
target; the TE definitions are in :mod:`llmc.backends.kernels.te_prune`.

**The data-dependent row count.** ``gather_rows`` binds a fresh symbol (``keep_l``) to the number
of kept rows. Its rule counts the mask's kept rows into an ``int64[1]`` tensor, turns it into a
shape (``R.tensor_to_shape``) and binds a new TIR variable to it with ``R.match_cast``, all in the
function's one dataflow block; every later shape that names ``keep_l`` (the pruned layers'
reshapes, their cache lengths ``past_i + keep_l``) then uses that variable. The two gathers of one
pruning step (residual stream, positions) share the mask, so they share the index computation
and the variable (``LowerCtx.prune_sources``). A gather inside an outlined layer function would
bind the variable out of the caller's reach, so layers holding one are lowered inline
(``layers.plan_layers``).

**Decode stays dense.** A decode entry fixes ``seq = 1``; ``keep_rows`` always keeps the last
``recent >= 1`` rows, so on one row its mask is all true: the gather is the identity and
``keep_l = 1`` is static there. The scores and the mask are then unused and dead-code eliminated,
so the decode step is the dense model's (static shapes for GPU GEMV schedules).
"""

from __future__ import annotations

import math

from tvm import relax, tirx

from llmc.backends.kernels import te_prune
from llmc.backends.lower import LowerCtx
from llmc.ir.graph import Node
from llmc.ir.ops import normalize_axis
from llmc.ir.types import sym


def _token_scores(ctx: LowerCtx, n: Node) -> relax.Expr:
    a = n.attrs
    if a.attn_window:
        raise ctx.unsupported("scores under sliding-window attention")
    if a.method == "random":
        return ctx.emit_te(te_prune.random_scores, ctx.arg(n.inputs[2]), a.seed, name="prune_hash")
    q, k = ctx.arg(n.inputs[0]), ctx.arg(n.inputs[1])
    hd = ctx.static(n.inputs[0].type.shape[3])
    if hd is None or ctx.static(n.inputs[0].type.shape[1]) is None:
        raise ctx.unsupported("heads and head_dim must be static")
    scale = a.scale or 1.0 / math.sqrt(hd)
    if a.method == "attention":
        return ctx.emit_te(
            te_prune.attention_scores, q, k, a.window, scale, a.causal, name="prune_scores"
        )
    return ctx.emit_te(
        te_prune.pagerank_scores, q, k, scale, a.causal, a.iters, a.damping, name="prune_pagerank"
    )


def _keep_rows(ctx: LowerCtx, n: Node) -> relax.Expr:
    scores, pos = ctx.args(n)
    a = n.attrs
    total = ctx.dim(sym(a.total)) if a.total else ctx.dim(n.inputs[0].type.shape[1])
    return ctx.emit_te(
        te_prune.keep_rows,
        scores,
        pos,
        total,
        a.keep,
        a.recent,
        a.sink,
        a.method,
        a.theta,
        name="prune_keep",
    )


def _mask_keeps_all(ctx: LowerCtx, n: Node) -> bool:
    """One row and a ``keep_rows`` mask: its last ``recent >= 1`` rows are always kept."""
    mask = n.inputs[1].node
    rows = ctx.static(n.inputs[0].type.shape[normalize_axis(n.attrs.dim, n.inputs[0].type.rank)])
    return rows == 1 and mask is not None and mask.op == "keep_rows"


def _gather_rows(ctx: LowerCtx, n: Node) -> relax.Expr:
    x, mask = ctx.args(n)
    a = n.attrs
    if normalize_axis(a.dim, n.inputs[0].type.rank) != 1:
        raise ctx.unsupported("gather_rows along an axis other than 1")
    if _mask_keeps_all(ctx, n):  # the decode entry: keep_l = 1, nothing to gather
        ctx.env[a.length] = 1
        return x
    got = ctx.prune_sources.get(id(n.inputs[1]))
    if got is None:
        cnt = ctx.emit_te(te_prune.kept_count, mask, name="prune_kept")
        shape = ctx.emit(relax.op.tensor_to_shape(cnt))
        var = tirx.Var(a.length, "int64")
        ctx.bb.match_cast(shape, relax.ShapeType([var]))
        src = ctx.emit_te(te_prune.kept_sources, mask, var, name="prune_sources")
        got = (src, var)
        ctx.prune_sources[id(n.inputs[1])] = got
    src, var = got
    if ctx.env.get(a.length, var) is not var:
        raise ctx.unsupported(f"symbol {a.length} is bound twice")
    ctx.env[a.length] = var
    return ctx.emit_te(te_prune.gather_rows, x, src, name="gather_rows")


PRUNE_RULES = [
    ("token_scores", _token_scores),
    ("keep_rows", _keep_rows),
    ("gather_rows", _gather_rows),
]
