"""FFN skipping (FFN-SkipLLM, Jaiswal et al. 2024) and its static baseline, FFN dropping.

``ffn-skip`` decides per token, in the graph: after the FFN block of a *monitored* layer, the
cosine similarity between the residual stream entering the block and the stream after its update
measures saturation; once it exceeds ``threshold`` the token's following skippable FFN blocks are
skipped (greedy: a saturated token stays saturated). Attention always runs, so the KV cache stays
complete. The first and last ``protect`` layers always run their FFN; prefill rows and the first
``warmup`` generated tokens never skip. ``ratio`` calibrates the threshold on calibration text so
that that fraction of the FFN blocks is skipped.

The IR (per skippable layer ``l``; ``sat`` is a bool ``[batch, seq, 1]`` "saturated" mask)::

    %skip_pred_l = lt(reduce_max(cast(not sat)), 0.5)            // every row skips: bool[]
    %h_l = cond(%skip_pred_l, %sat, %r_l, ...) {
      then_branch = region(...) { return %r }                  // the FFN block costs nothing
      else_branch = region(...) { ...FFN...; %u = add(%r, %ffn); return where(%sat, %r, %u) }
    } @model.layers.l #skip

Each row takes its own decision (the ``where``); the ``cond`` skips the compute when *every* row
of the call skips, which is always the case in batch-1 decode. With batch > 1 a block runs when
any row needs it and the saturated rows keep their input (the same result per row as decoding
each row alone). Eligibility is ``positions >= decode_start + warmup``, with ``decode_start`` an
LM-ABI input (:data:`llmc.ir.structure.LM_OPTIONAL_INPUTS`): rows of the prompt never skip.

``ffn-drop`` removes the FFN blocks of the same kind of layers for every token (layer dropping),
chosen by calibration (the most saturated on average) or given by ``layers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llmc.errors import PassError
from llmc.ir.graph import Graph, GraphBuilder, Node, Value
from llmc.ir.structure import Structure, layer_scope
from llmc.ir.types import TensorType
from llmc.passes.base import Pass, PassContext, PassOptionError

DEFAULT_RATIO = 0.25


@dataclass
class FFNBlock:
    """The FFN block of one layer: ``add`` computes ``resid + out`` (or ``out + resid``), and
    ``nodes`` (graph order) compute ``out`` from ``frees`` and nothing else reads them."""

    layer: int
    add: Node
    resid: Value
    out: Value
    nodes: list[Node] = field(default_factory=list)
    frees: list[Value] = field(default_factory=list)


def ffn_blocks(graph: Graph) -> dict[int, FFNBlock]:
    """Each layer's FFN block, found through :class:`~llmc.ir.structure.Structure` (``#ffn``
    nodes) and the residual ``add`` that consumes their result. Layers whose FFN block is not
    one residual update (no ``#ffn`` nodes, or several results used outside) are left out."""
    s = Structure(graph)
    users = graph.users()
    outputs = {id(v) for v in graph.outputs}
    found: dict[int, FFNBlock] = {}
    for layer in s.layers:
        ffn = [n for n in s.blocks(layer, "ffn") if n.op != "param"]
        if not ffn:
            continue
        ids = {id(n) for n in ffn}
        leaving = [n for n in ffn if any(id(u) not in ids for u in users.get(n.out, []))]
        if len(leaving) != 1 or id(leaving[0].out) in outputs:
            continue
        out = leaving[0].out
        adds = users.get(out, [])
        if len(adds) != 1 or adds[0].op != "add" or adds[0].block in ("ffn", "attn"):
            continue
        add = adds[0]
        resid = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if resid is out:
            continue
        nodes = _exclusive_slice(graph, out, resid, add, users, outputs)
        frees: list[Value] = []
        made = {id(n.out) for n in nodes}
        for n in nodes:
            for v in n.inputs:
                if id(v) not in made and all(v is not f for f in frees):
                    frees.append(v)
        found[layer] = FFNBlock(layer, add, resid, out, nodes, frees)
    return found


def _exclusive_slice(
    graph: Graph,
    out: Value,
    resid: Value,
    add: Node,
    users: dict[Value, list[Node]],
    outputs: set[int],
) -> list[Node]:
    """Nodes computing ``out`` that nothing but ``out``'s computation (and ``add``) reads."""
    cand: dict[int, Node] = {}
    stack = [out]
    while stack:
        v = stack.pop()
        n = v.node
        if n is None or v is resid or id(n) in cand:
            continue
        cand[id(n)] = n
        stack.extend(n.inputs)
    changed = True
    while changed:  # drop nodes read from outside the slice; what only they read goes too
        changed = False
        for k, n in list(cand.items()):
            ext = any(id(u) not in cand and u is not add for u in users.get(n.out, []))
            if ext or (id(n.out) in outputs) or (n.out is not out and add in users.get(n.out, [])):
                del cand[k]
                changed = True
    if id(out.node) not in cand:
        return []
    return [n for n in graph.nodes if id(n) in cand]


# ----------------------------------------------------------------------------------------------
# options shared by both passes


def _layer_list(name: str, items: tuple[str, ...]) -> list[int]:
    out = []
    for x in items:
        if not x.isdigit():
            raise PassOptionError(f"{name} must list layer indices (e.g. 1|2), got {x!r}")
        out.append(int(x))
    return out


def _plan(graph: Graph, pname: str, protect: int) -> tuple[dict[int, FFNBlock], int, list[int]]:
    """FFN blocks, layer count and the skippable layers (not protected), or one-line errors."""
    if any(n.op == "gather_rows" for _, n in graph.walk()):
        raise PassError(
            f"pass '{pname}': the graph prunes tokens (gather_rows); run {pname} before token-prune"
        )
    if any(n.op == "cond" and n.block == "skip" for _, n in graph.walk()):
        raise PassError(f"pass '{pname}': the graph already skips FFN blocks (ffn-skip ran)")
    blocks = ffn_blocks(graph)
    s = Structure(graph)
    num = int(graph.meta.get("num_layers", len(s.layers)) or len(s.layers))
    if not blocks:
        raise PassOptionError(
            f"pass '{pname}': the model has no FFN blocks to skip (no #ffn nodes feeding a "
            "residual add in any layer)"
        )
    if protect < 0 or 2 * protect > num:
        raise PassOptionError(
            f"pass '{pname}': protect={protect} must be in 0..{num // 2} (at most half of the "
            f"model's {num} layers)"
        )
    skippable = [i for i in sorted(blocks) if protect <= i < num - protect]
    if not skippable:
        raise PassOptionError(
            f"pass '{pname}': protect={protect} leaves no FFN block to skip in {num} layers"
        )
    return blocks, num, skippable


def _cosine_rows(r: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity (float32), as the graph computes it."""
    r = r.to(torch.float32)
    o = o.to(torch.float32)
    num = (r * o).sum(-1)
    den = torch.sqrt((r * r).sum(-1) * (o * o).sum(-1)).clamp_min(1e-12)
    return num / den


def calibrate_cosines(
    graph: Graph, ctx: PassContext, blocks: dict[int, FFNBlock], warmup: int
) -> dict[int, torch.Tensor]:
    """Dense per-token cosines ``cos(resid, resid + ffn)`` of every layer's FFN block on the
    calibration text (rows at positions ``>= warmup``), collected with the Interpreter hook."""
    from llmc.runtime.interp import Interpreter

    by_add = {id(b.add): (layer, b) for layer, b in blocks.items()}
    got: dict[int, list[torch.Tensor]] = {layer: [] for layer in blocks}

    def hook(n: Node, ins: list[torch.Tensor], out: torch.Tensor) -> None:
        hit = by_add.get(id(n))
        if hit is not None:
            layer, b = hit
            r = ins[0] if n.inputs[0] is b.resid else ins[1]
            c = _cosine_rows(r, out)
            skip_first = warmup if c.shape[-1] > warmup else 0  # short windows: every row
            got[layer].append(c[..., skip_first:].reshape(-1))

    from llmc.console import track

    interp = Interpreter(graph, device=ctx.device, hook=hook)
    for batch in track(ctx.calibration().batches(graph), "ffn-skip calibrate (batches)"):
        batch = dict(batch)
        if "decode_start" in batch:
            batch["decode_start"] = torch.tensor(0, dtype=torch.int64)
        interp.run(batch)
        interp.rt.env.clear()
    return {layer: torch.cat(v) if v else torch.empty(0) for layer, v in got.items()}


def skip_counts(
    cos: dict[int, torch.Tensor], monitor: list[int], skippable: list[int], threshold: float
) -> torch.Tensor:
    """Per token, how many FFN blocks the greedy rule skips at ``threshold`` (dense cosines)."""
    tokens = next(iter(cos.values())).numel()
    first = torch.full((tokens,), 10**9, dtype=torch.int64)
    for layer in sorted(monitor, reverse=True):
        first = torch.where(cos[layer] > threshold, torch.tensor(layer), first)
    after = torch.tensor(skippable)
    return (after[None, :] > first[:, None]).sum(-1)


def fit_threshold(
    cos: dict[int, torch.Tensor],
    monitor: list[int],
    skippable: list[int],
    num_layers: int,
    ratio: float,
) -> tuple[float, float]:
    """The threshold whose skip fraction (of ``num_layers`` blocks per token) is closest to
    ``ratio`` from below, by bisection; returns ``(threshold, fraction)``."""

    def frac(t: float) -> float:
        return float(skip_counts(cos, monitor, skippable, t).float().mean()) / num_layers

    lo, hi = -1.0, 1.0  # frac(lo) is the most, frac(hi) = 0
    if ratio <= 0:
        return 1.0, 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if frac(mid) > ratio:
            lo = mid
        else:
            hi = mid
    return hi, frac(hi)


def measured_fraction(
    graph: Graph,
    ctx: PassContext,
    skippable: list[int],
    monitor: list[int],
    warmup: int,
    threshold: float,
) -> float:
    """The skip fraction the rewritten graph really takes on the calibration windows (one
    forward per batch, rows at positions ``>= warmup``): skipping earlier tokens changes what
    later tokens attend to, which the dense cosines of :func:`fit_threshold` do not see."""
    from llmc.runtime.lm import InterpLM

    g = graph.copy()
    rewrite_skip(g, ffn_blocks(g), skippable, monitor, threshold, warmup)
    lm = InterpLM(g, device=ctx.device)
    lm.decode_start = 0
    windows = ctx.calibration().tokens(graph)
    skipped = 0
    for i in range(0, windows.shape[0], ctx.calib_batch):
        lm.logits(windows[i : i + ctx.calib_batch])
        assert lm.last_skips is not None
        skipped += int(lm.last_skips[:, warmup:].sum())
    rows = windows.shape[0] * max(windows.shape[1] - warmup, 1)
    return skipped / (rows * lm.abi.num_layers)


def refine_threshold(
    graph: Graph,
    ctx: PassContext,
    cos: dict[int, torch.Tensor],
    plan: tuple[list[int], list[int], int, int],
    ratio: float,
    steps: int,
) -> tuple[float, float, list[tuple[float, float, float]]]:
    """Closed loop: bisect the *open-loop target* ``r'`` (the threshold is
    ``fit_threshold(cos, ..., r')``) until the measured fraction (:func:`measured_fraction`) is
    within 1% of ``ratio`` or ``steps`` graphs were measured; returns the threshold whose measured fraction is closest, that fraction, and every
    ``(r', threshold, measured)`` tried."""
    skippable, monitor, num, warmup = plan
    top = sum(1 for s in skippable if s > min(monitor)) / num

    def trial(r: float) -> tuple[float, float, float]:
        t, _ = fit_threshold(cos, monitor, skippable, num, r)
        return r, t, measured_fraction(graph, ctx, skippable, monitor, warmup, t)

    tried = [trial(ratio)]
    lo, hi = (ratio, top) if tried[0][2] < ratio else (0.0, ratio)
    for _ in range(steps - 1):
        if abs(tried[-1][2] - ratio) <= 0.01 * ratio:  # within 1%: done
            break
        got = trial((lo + hi) / 2)
        tried.append(got)
        if got[2] < ratio:
            lo = got[0]
        else:
            hi = got[0]
    best = min(tried, key=lambda x: abs(x[2] - ratio))
    return best[1], best[2], tried


# ----------------------------------------------------------------------------------------------
# ffn-skip


@dataclass(frozen=True)
class FFNSkip(Pass):
    """FFN-SkipLLM: per decode token, skip the FFN blocks after the one whose cosine(in, out)
    passes a threshold (calibrated to skip `ratio` of the blocks), inside a `cond`."""

    name = "ffn-skip"
    ratio: float | None = None
    threshold: float | None = None
    protect: int = 1
    warmup: int = 4
    monitor: tuple[str, ...] = ()
    refine: int = 0  # closed-loop bisection steps: measure the skip graph itself on the text

    def check(self) -> None:
        if self.refine < 0:
            raise PassOptionError(f"refine must be >= 0, got {self.refine}")
        if self.ratio is not None and self.threshold is not None:
            raise PassOptionError("give ratio or threshold, not both")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise PassOptionError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.threshold is not None and not -1 <= self.threshold <= 1:
            raise PassOptionError(f"threshold must be a cosine in [-1, 1], got {self.threshold}")
        if self.protect < 0:
            raise PassOptionError(f"protect must be >= 0, got {self.protect}")
        if self.warmup < 0:
            raise PassOptionError(f"warmup must be >= 0, got {self.warmup}")
        _layer_list("monitor", self.monitor)

    def run(self, graph: Graph, ctx: PassContext) -> None:
        pos = [v for v in graph.inputs if v.name == "positions"]
        if not pos or pos[0].type.dtype != "i64" or pos[0].type.rank != 2:
            raise PassError(
                f"pass '{self.name}': the graph has no LM-ABI input positions: i64[batch, seq] "
                "(a token may skip only after the prompt and the warm-up)"
            )
        blocks, num, skippable = _plan(graph, self.name, self.protect)
        monitor = self._monitor(blocks, skippable, num)
        rep = ctx.report
        if self.threshold is not None:
            threshold = self.threshold
            rep.set(threshold=threshold)
        else:
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            best = sum(1 for s in skippable if s > min(monitor)) / num
            if ratio > best:
                raise PassOptionError(
                    f"pass '{self.name}': ratio={ratio} is more than the {best:.3g} this model "
                    f"can skip ({len(skippable)} skippable of {num} layers with "
                    f"protect={self.protect}, monitoring from layer {min(monitor)})"
                )
            cos = calibrate_cosines(graph, ctx, blocks, self.warmup)
            threshold, expected = fit_threshold(cos, monitor, skippable, num, ratio)
            if self.refine:
                rep.set(open_loop_threshold=threshold, open_loop_fraction=expected)
                plan = (skippable, monitor, num, self.warmup)
                threshold, expected, steps = refine_threshold(
                    graph, ctx, cos, plan, ratio, self.refine
                )
                rep.set(refine_steps=[list(x) for x in steps])
            rep.set(
                ratio=ratio,
                threshold=threshold,
                expected_skip_fraction=expected,
                calib_tokens=int(next(iter(cos.values())).numel()),
                mean_cosine={str(k): float(v.mean()) for k, v in sorted(cos.items())},
            )
        rewrite_skip(graph, blocks, skippable, monitor, threshold, self.warmup)
        rep.set(
            layers_skippable=skippable,
            layers_monitored=monitor,
            protect=self.protect,
            warmup=self.warmup,
            num_layers=num,
        )

    def _monitor(self, blocks: dict[int, FFNBlock], skippable: list[int], num: int) -> list[int]:
        if self.monitor:
            got = _layer_list("monitor", self.monitor)
            bad = [i for i in got if i not in blocks or i >= max(skippable)]
            if bad:
                raise PassOptionError(
                    f"pass '{self.name}': monitor layer {bad[0]} has no FFN block or no "
                    f"skippable layer after it (skippable: {skippable})"
                )
            return sorted(set(got))
        got = [i for i in sorted(blocks) if i < max(skippable)]
        if not got:
            raise PassOptionError(
                f"pass '{self.name}': no FFN layer before the skippable ones ({skippable}) to "
                f"monitor; lower protect={self.protect} or use a deeper model"
            )
        return got


def rewrite_skip(
    graph: Graph,
    blocks: dict[int, FFNBlock],
    skippable: list[int],
    monitor: list[int],
    threshold: float,
    warmup: int,
) -> None:
    """Put each skippable layer's FFN block inside a ``cond`` and compute the saturation mask
    after each monitored layer (see the module docstring)."""
    pos = next(v for v in graph.inputs if v.name == "positions")
    names = [v.name for v in graph.inputs]
    if "decode_start" in names:
        start = graph.inputs[names.index("decode_start")]
    else:
        start = graph.add_input("decode_start", TensorType((), "i64"))
    sat: Value | None = None
    e: Value | None = None
    eligs: dict[tuple[object, ...], Value] = {}
    skipped: dict[int, Value] = {}  # layer -> the per-row mask its cond skips on
    prefix = Structure(graph).prefix or "model.layers"
    for layer in sorted(set(skippable) | set(monitor)):
        blk = blocks[layer]
        where = blk.add
        scope = layer_scope(prefix, layer)
        emit = _Emitter(graph, scope)
        # the block's rows: [batch, seq] for most families, [batch*seq] where the FFN runs on
        # flattened rows (OPT); the masks follow the rows of the block they are used in
        rows = (*blk.resid.type.shape[:-1], 1)
        if e is None:
            w = emit("add", start, emit("constant", value=float(warmup), dtype="i64"))
            e = emit("ge", pos, w)
        if rows not in eligs:
            eligs[rows] = emit("reshape", e, shape=rows)
        elig = eligs[rows]
        if sat is not None and sat.type.shape != rows:
            sat = emit("reshape", sat, shape=rows)
        result = blk.add.out
        if layer in skippable and sat is not None:
            result = _emit_cond(graph, blk, sat, emit)
            skipped[layer] = sat
        if layer in monitor:
            r32, o32 = blk.resid, result
            if r32.type.dtype != "f32":
                r32, o32 = emit("cast", r32, dtype="f32"), emit("cast", o32, dtype="f32")
            den = emit("sqrt", emit("mul", emit.dot(r32, r32), emit.dot(o32, o32)))
            den = emit("maximum", den, emit("constant", value=1e-12))
            cos = emit("div", emit.dot(r32, o32), den)
            hit = emit("gt", cos, emit("constant", value=float(threshold)))
            hit = emit("where", elig, hit, elig)  # hit and eligible
            sat = hit if sat is None else emit("where", sat, sat, hit)  # sat or hit
        # insert the new nodes where the block's add was (the add moves into the cond)
        i = graph.nodes.index(where)
        graph.nodes[i + 1 : i + 1] = emit.nodes
        if result is not blk.add.out:
            graph.replace_uses(blk.add.out, result, after=result.node)
            for n in [*blk.nodes, blk.add]:
                graph.remove(n)
    _skip_output(graph, pos, skipped)
    graph.dce()
    graph.meta["ffn_skip"] = {
        "threshold": threshold,
        "skippable": list(skippable),
        "monitor": list(monitor),
        "warmup": warmup,
    }


def _skip_output(graph: Graph, pos: Value, skipped: dict[int, Value]) -> None:
    """Append the LM-ABI output ``ffn_skipped: bool[batch, seq, num_layers]``: per row and layer,
    whether the row's FFN block did not run (false in layers that always run), so that every
    runner, compiled ones included, counts skips from the graph's outputs."""
    if any(v.name == "ffn_skipped" for v in graph.outputs):
        raise PassError("pass 'ffn-skip': the graph already reports skipped FFN blocks")
    num = int(graph.meta["num_layers"])
    emit = _Emitter(graph, "")
    rows = (*pos.type.shape, 1)
    never = emit("reshape", emit("gt", pos, pos), shape=rows)  # false for every row
    cols = []
    for layer in range(num):
        m = skipped.get(layer)
        if m is not None and m.type.shape != rows:
            m = emit("reshape", m, shape=rows)
        cols.append(never if m is None else m)
    cat = graph.make_node("concat", cols, {"dim": 2}, name="ffn_skipped", block="skip")
    if cat.out.name != "ffn_skipped":
        raise PassError("pass 'ffn-skip': the value name ffn_skipped is taken in the graph")
    graph.nodes.extend([*emit.nodes, cat])
    graph.outputs.append(cat.out)


class _Emitter:
    """Makes ``#skip`` nodes at ``scope`` and collects them (inserted by the caller)."""

    def __init__(self, graph: Graph, scope: str) -> None:
        self.graph, self.scope = graph, scope
        self.nodes: list[Node] = []

    def __call__(self, op: str, *ins: Value, **attrs: object) -> Value:
        n = self.graph.make_node(op, ins, attrs or None, scope=self.scope, block="skip")
        self.nodes.append(n)
        return n.out

    def dot(self, a: Value, b: Value) -> Value:
        """Row-wise dot product over the last axis, kept as a size-1 axis."""
        return self("reduce_sum", self("mul", a, b), dims=(a.type.rank - 1,), keepdim=True)


def _emit_cond(graph: Graph, blk: FFNBlock, sat: Value, emit: _Emitter) -> Value:
    """``cond(all rows saturated, sat, resid, *frees)``: identity, or the FFN block per row."""
    # runs = 1 - sat is 1 where a row needs the block; "every row skips" = max(runs) < 0.5
    runs = emit("sub", emit("constant", value=1.0), emit("cast", sat, dtype="f32"))
    rank = sat.type.rank
    pred = emit(
        "lt",
        emit("reduce_max", runs, dims=tuple(range(rank))),
        emit("constant", value=0.5),
    )
    others = [v for v in blk.frees if v is not blk.resid]
    types = [sat.type, blk.resid.type, *[v.type for v in others]]
    b = GraphBuilder(graph=graph)
    then_b, (_, r_t, *_) = b.region(*types, hint="skip")
    then_b.output(r_t)
    else_b, (m_e, r_e, *o_e) = b.region(*types, hint="ffn")
    env: dict[int, Value] = {id(blk.resid): r_e}
    env.update({id(v): a for v, a in zip(others, o_e, strict=True)})
    for n in [*blk.nodes, blk.add]:
        c = else_b.graph.make_node(
            n.op, [env[id(v)] for v in n.inputs], n.attrs, scope=n.scope, block=n.block
        )
        else_b.graph.append(c)
        env[id(n.out)] = c.out
    sel = else_b.graph.make_node(
        "where", [m_e, r_e, env[id(blk.add.out)]], None, scope=blk.add.scope, block="skip"
    )
    else_b.graph.append(sel)
    else_b.output(sel.out)
    return emit(
        "cond",
        pred,
        sat,
        blk.resid,
        *others,
        then_branch=then_b.finish(),
        else_branch=else_b.finish(),
    )


# ----------------------------------------------------------------------------------------------
# ffn-drop


@dataclass(frozen=True)
class FFNDrop(Pass):
    """Layer dropping, the static baseline of ffn-skip: remove the FFN blocks of the `ratio`
    most saturated layers (or of `layers`) for every token."""

    name = "ffn-drop"
    ratio: float | None = None
    layers: tuple[str, ...] = ()
    protect: int = 1

    def check(self) -> None:
        if self.ratio is not None and self.layers:
            raise PassOptionError("give ratio or layers, not both")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise PassOptionError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.protect < 0:
            raise PassOptionError(f"protect must be >= 0, got {self.protect}")
        _layer_list("layers", self.layers)

    def run(self, graph: Graph, ctx: PassContext) -> None:
        blocks, num, skippable = _plan(graph, self.name, self.protect)
        rep = ctx.report
        if self.layers:
            drop = sorted(set(_layer_list("layers", self.layers)))
            bad = [i for i in drop if i not in blocks]
            if bad:
                raise PassOptionError(f"pass '{self.name}': layer {bad[0]} has no FFN block")
        else:
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            k = math.floor(ratio * num + 0.5)
            if k > len(skippable):
                raise PassOptionError(
                    f"pass '{self.name}': ratio={ratio} drops {k} of {num} FFN blocks but "
                    f"protect={self.protect} leaves {len(skippable)} droppable"
                )
            cos = calibrate_cosines(graph, ctx, blocks, 0)
            mean = {i: float(cos[i].mean()) for i in skippable}
            drop = sorted(sorted(skippable, key=lambda i: -mean[i])[:k])
            rep.set(ratio=ratio, mean_cosine={str(i): mean[i] for i in skippable})
        for i in drop:
            b = blocks[i]
            graph.replace_uses(b.add.out, b.resid, after=b.add)
        graph.dce()
        graph.prune_params()
        rep.set(layers_dropped=drop, skip_fraction=len(drop) / num, num_layers=num)
