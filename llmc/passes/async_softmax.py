"""FlashDecoding++'s asynchronous softmax: calibrate the logit range, choose the unified max.

``attention`` -> ``attention_async`` (:mod:`llmc.ir.ops_attention`) for every attention of the
model, with one unified max ``phi`` for the whole model, chosen from the range ``[a, b]`` that
holds ``coverage`` of the attention logits on the calibration text.

The safe range of ``x - phi`` comes from the precision of the exponentials (``dtype``): the
largest term of a row must not underflow (``x - phi >= lo = ln(smallest normal)``) and a chunk's
sums over up to ``max_positions`` keys, weighted by values up to ``e^headroom``, must not overflow
(``x - phi <= hi = ln(largest finite) - ln(max_positions) - headroom``). ``phi`` centres
``[a, b]`` in ``[lo, hi]``; if ``b - a`` exceeds ``hi - lo`` the pass declines, leaves the graph
unchanged and says why in its report (FlashDecoding++ does this for OPT-6.7B, whose logits span
about [-497, 364]). Logits outside ``[a, b]`` at run time are not an error: the kernel checks every
partial and recomputes out-of-range rows with the synchronized softmax.

An exact rewrite: the report carries the measured difference of the logits before and after on a
calibration batch, and the fraction of attention rows that took the fallback there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmc.ir.graph import Graph, Node
from llmc.passes.base import Pass, PassContext, PassOptionError
from llmc.passes.registry import register_pass

#: (smallest normal, largest finite) per dtype of the exponentials.
DTYPE_LIMITS = {
    "f32": (1.1754944e-38, 3.4028235e38),
    "bf16": (1.1754944e-38, 3.3895314e38),
    "f16": (6.1035156e-05, 65504.0),
}
MAX_SAMPLE = 1 << 20  # logits kept per calibration batch for the quantiles


def safe_window(dtype: str, max_positions: int, headroom: float) -> tuple[float, float]:
    """``[lo, hi]`` for ``x - phi`` (see the module docstring)."""
    tiny, big = DTYPE_LIMITS[dtype]
    lo = math.log(tiny)
    hi = math.log(big) - math.log(max(max_positions, 1)) - headroom
    return lo, hi


@dataclass
class LogitRange:
    low: float  # the `coverage` range
    high: float
    min: float  # absolute extremes seen
    max: float
    count: int


def calibrate_logits(graph: Graph, ctx: PassContext, coverage: float) -> LogitRange:
    """Run the calibration batches through the interpreter and measure the attention logits
    (``scale * q . k`` over visible keys) of every attention node."""
    from llmc.ir.ops import attention_mask
    from llmc.runtime.interp import run

    att = [n for n in graph.nodes if n.op == "attention"]
    wanted = {id(v): None for n in att for v in n.inputs[:2]}
    by_out = {id(n.out): n for n in att}
    held: dict[int, torch.Tensor] = {}
    samples: list[torch.Tensor] = []
    lo_abs, hi_abs, count = math.inf, -math.inf, 0
    gen = torch.Generator().manual_seed(ctx.calib_seed)

    def hook(node: Node, result: torch.Tensor) -> None:
        nonlocal lo_abs, hi_abs, count
        if id(node.out) in wanted:
            held[id(node.out)] = result
        n = by_out.get(id(node.out))
        if n is None:
            return
        q, k = held[id(n.inputs[0])], held[id(n.inputs[1])]
        h, kvh, d = q.shape[1], k.shape[1], q.shape[3]
        if h != kvh:
            k = k.repeat_interleave(h // kvh, dim=1)
        scale = n.attrs.scale or 1.0 / math.sqrt(d)
        x = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        mask = attention_mask(q.shape[2], k.shape[2], n.attrs.causal, n.attrs.window, x.device)
        vals = x[mask.expand_as(x)] if mask is not None else x.reshape(-1)
        if vals.numel():
            lo_abs = min(lo_abs, float(vals.min()))
            hi_abs = max(hi_abs, float(vals.max()))
            count += vals.numel()
            if vals.numel() > MAX_SAMPLE:
                idx = torch.randint(0, vals.numel(), (MAX_SAMPLE,), generator=gen)
                vals = vals[idx]
            samples.append(vals.cpu())

    for batch in ctx.calibration().batches(graph):
        run(graph, batch, device=ctx.device, hooks=[hook])
        held.clear()
    if not samples:
        return LogitRange(0.0, 0.0, 0.0, 0.0, 0)
    allv = torch.cat(samples)
    if allv.numel() > 8 * MAX_SAMPLE:
        allv = allv[torch.randint(0, allv.numel(), (8 * MAX_SAMPLE,), generator=gen)]
    tail = (1.0 - coverage) / 2
    low = float(torch.quantile(allv, tail)) if tail > 0 else lo_abs
    high = float(torch.quantile(allv, 1 - tail)) if tail > 0 else hi_abs
    return LogitRange(low, high, lo_abs, hi_abs, count)


@register_pass
@dataclass(frozen=True)
class AsyncSoftmax(Pass):
    """Rewrite attention to FlashDecoding++'s asynchronous softmax (unified max, with fallback)."""

    name: ClassVar[str] = "async-softmax"
    exact: ClassVar[bool] = True

    coverage: float = 0.9999  # fraction of calibration logits the range [a, b] must hold
    dtype: str = "f32"  # precision of the exponentials (f32: what the kernels accumulate in)
    chunk: int = 64  # keys per split-KV partial
    max_positions: int = 0  # 0: the model's max_position_embeddings
    headroom: float = 4.0  # log of the largest |v| the sums must absorb
    measure: bool = True  # compare logits before/after on one calibration batch

    def check(self) -> None:
        if not 0.5 < self.coverage <= 1.0:
            raise PassOptionError(f"coverage must be in (0.5, 1], got {self.coverage}")
        if self.dtype not in DTYPE_LIMITS:
            raise PassOptionError(f"dtype must be one of {sorted(DTYPE_LIMITS)}, got {self.dtype}")
        if self.chunk < 1:
            raise PassOptionError(f"chunk must be >= 1, got {self.chunk}")
        if self.max_positions < 0 or self.headroom < 0:
            raise PassOptionError("max_positions and headroom must be >= 0")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        att = [n for n in graph.nodes if n.op == "attention"]
        rep = ctx.report
        if not att:
            rep.set(applied=False, reason="no attention op in the graph")
            return
        capped = [n for n in att if n.attrs.softcap > 0]
        if capped:
            # The unified max phi bounds x - phi for raw logits; a soft-capped logit is a
            # different function of q.k, and the split-KV kernels do not apply the cap.
            reason = (
                f"{len(capped)} attention op(s) soft-cap their logits (softcap "
                f"{capped[0].attrs.softcap:g} at {capped[0].scope or '?'}); the asynchronous "
                "softmax does not apply a soft-cap, so attention is left synchronized"
            )
            rep.set(applied=False, reason=reason)
            ctx.info(f"async-softmax: declined: {reason}")
            return
        max_pos = self.max_positions or int(graph.meta.get("max_position_embeddings", 4096))
        lo, hi = safe_window(self.dtype, max_pos, self.headroom)
        rng = calibrate_logits(graph, ctx, self.coverage)
        rep.set(
            logit_range=[rng.low, rng.high],
            logit_extremes=[rng.min, rng.max],
            logits_seen=rng.count,
            coverage=self.coverage,
            safe_range=[lo, hi],
            exp_dtype=self.dtype,
        )
        width = rng.high - rng.low
        if width > hi - lo:
            rep.set(
                applied=False,
                reason=(
                    f"calibrated logit range [{rng.low:.1f}, {rng.high:.1f}] (width {width:.1f}) "
                    f"is wider than the safe range of x - phi for {self.dtype} exponentials "
                    f"[{lo:.1f}, {hi:.1f}] (width {hi - lo:.1f}); attention left synchronized"
                ),
            )
            ctx.info(f"async-softmax: declined: range width {width:.1f} > {hi - lo:.1f}")
            return
        phi = (rng.low + rng.high) / 2 - (lo + hi) / 2
        before = graph.copy() if self.measure else None
        for n in att:
            _rewrite(graph, n, phi, lo, hi, self.chunk)
        rep.set(applied=True, phi=phi, rewritten=len(att), chunk=self.chunk)
        if before is not None:
            rep.set(**_measure(before, graph, ctx))


def _rewrite(graph: Graph, n: Node, phi: float, lo: float, hi: float, chunk: int) -> None:
    a = n.attrs
    new = graph.make_node(
        "attention_async",
        list(n.inputs),
        {
            "phi": float(phi),
            "lo": float(lo),
            "hi": float(hi),
            "scale": a.scale,
            "causal": a.causal,
            "window": a.window,
            "chunk": chunk,
        },
        name=n.out.name + "_async",
        scope=n.scope,
        block=n.block,
    )
    graph.insert_before(n, new)
    graph.replace_uses(n.out, new.out)
    graph.remove(n)


def _measure(before: Graph, after: Graph, ctx: PassContext) -> dict[str, Any]:
    """Max |logits before - after| and the fallback rate on the first calibration batch."""
    from llmc.ir.ops_attention import count_fallbacks
    from llmc.runtime.interp import run

    batch = ctx.calibration().batches(after)[0]
    want = run(before, batch, device=ctx.device)[0].float()
    with count_fallbacks() as c:
        got = run(after, batch, device=ctx.device)[0].float()
    return {
        "max_abs_error": float((got - want).abs().max()),
        "fallback_rows": c.fallback_rows,
        "rows": c.rows,
        "fallback_rate": c.rate,
    }
