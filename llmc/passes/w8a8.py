"""W8A8: int8 per-channel weights and int8 per-token activations (``qlinear_a8``).

Alone it is the naive W8A8 baseline; after ``smoothquant`` it is SmoothQuant W8A8.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from llmc.ir.graph import Graph, Node
from llmc.ir.params import QuantSpec
from llmc.passes.base import CalibrationError, Pass, PassContext, PassOptionError
from llmc.passes.calibration import InputStats, each_target, output_error, run_layerwise
from llmc.passes.quant_common import head_targets, rtn_quantize, store_quantized, untie_head
from llmc.passes.select import DEFAULT_EXCLUDE, Target, select_linears


@dataclass(frozen=True)
class W8A8(Pass):
    """Rewrite linears to qlinear_a8: int8 per-channel weights, int8 per-token activations."""

    name = "w8a8"
    act: Literal["token", "tensor"] = "token"  # dynamic per-token, or static per-tensor scale
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    measure: bool = True
    # the LM head too (a tied head gets its own copy of the table; see quant_common); false:
    # keep it a float linear
    head: bool = True

    def check(self) -> None:
        if self.act not in ("token", "tensor"):
            raise PassOptionError(f"act must be token or tensor, got {self.act!r}")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = select_linears(graph, self.include, self.exclude, pass_name=self.name)
        for t in targets:
            if t.param.format.quant is not None:
                raise PassOptionError(
                    f"{t.path} is already quantized ({t.param.format}); w8a8 quantizes "
                    "float weights (use it instead of rtn/gptq, not after them)"
                )
        heads = head_targets(graph, self.include, targets) if self.head else []
        bytes_before = sum(t.param.storage_bytes() for t in targets + heads)
        targets = targets + [untie_head(graph, t) for t in heads]
        rep = ctx.report
        rep.set(act=self.act, layers_targeted=len(targets))
        if heads:
            rep.set(head={"bits": 8, "params": [t.param.name for t in targets[-len(heads) :]]})
        if not targets:
            return
        method = "smoothquant" if graph.meta.get("smoothquant") else "w8a8"
        act_scales: dict[int, float] = {}
        by_node = {id(t.node): t for t in targets}

        def do(t: Target, stats: InputStats | None) -> None:
            t0 = time.perf_counter()
            if not t.param.is_meta:
                w = t.param.value().to(torch.float32)
                keep = (w != 0) if t.param.format.sparsity is not None else None
                codes, scale, _ = rtn_quantize(w, 8, 0, True, keep)
                store_quantized(t.param, codes, scale, None, QuantSpec(8, 0, True, method))
                err = output_error(w, t.param.value().to(torch.float32), stats) if stats else None
                t.param.invalidate()  # no dequantized copy kept (calibration.release_params)
            else:
                store_quantized_meta(t)
                err = None
            if stats is not None and stats.absmax is not None:
                act_scales[id(t.node)] = float(stats.absmax.max()) / 127.0
            rep.layer(
                t.path,
                rel_error=None if err is None else round(err, 6),
                seconds=round(time.perf_counter() - t0, 4),
            )

        calibrate = (self.measure or self.act == "tensor") and not any(
            t.param.is_meta for t in targets
        )
        if calibrate:
            try:
                info = run_layerwise(
                    graph,
                    ctx,
                    [t.node for t in targets],
                    lambda seg, stats: each_target(stats, lambda n, s: do(by_node[id(n)], s)),
                    hessian=self.measure,
                )
                rep.set(**info.to_dict())
            except CalibrationError:
                if self.act == "tensor":
                    raise
                calibrate = False
        if not calibrate:
            for t in targets:
                do(t, None)
        for t in targets:
            _to_qlinear(
                graph,
                t.node,
                t.param.name,
                act_scales.get(id(t.node), 0.0) if self.act == "tensor" else 0.0,
            )
        bytes_after = sum(t.param.storage_bytes() for t in targets)
        errs = [r["rel_error"] for r in rep.get("layers", []) if r["rel_error"] is not None]
        rep.set(
            method=method,
            bytes_before=int(bytes_before),
            bytes_after=int(bytes_after),
            bytes_saved=int(bytes_before - bytes_after),
            mean_rel_error=round(sum(errs) / len(errs), 6) if errs else None,
        )


def store_quantized_meta(t: Target) -> None:
    from llmc.ir.params import StorageFormat

    shape = tuple(int(d) for d in t.param.type.shape)
    t.param.data = {
        "qvalue": torch.empty(shape, dtype=torch.int8, device="meta"),
        "scale": torch.empty((shape[0], 1), dtype=torch.float32, device="meta"),
    }
    t.param.format = StorageFormat(QuantSpec(8, 0, True, "w8a8"), t.param.format.sparsity)


def _to_qlinear(graph: Graph, n: Node, weight: str, act_scale: float) -> None:
    """Replace ``linear`` node ``n`` by a ``qlinear_a8`` node in place (same inputs, result)."""
    new = graph.make_node(
        "qlinear_a8",
        n.inputs,
        {"weight": weight, "act_scale": act_scale},
        scope=n.scope,
        block=n.block,
        type=n.out.type,
    )
    # keep the result value (and its name): every use follows without rewiring
    out = n.out
    new.out = out
    out.node = new
    graph.nodes[graph.nodes.index(n)] = new
