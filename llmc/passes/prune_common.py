"""Shared machinery of the weight-pruning passes (magnitude, wanda, sparsegpt).

Each pruning pass is a :class:`PruneBase` subclass that computes, for one target linear, the new
weight (pruned positions set to zero, possibly other weights updated); the base class chooses the
targets (:mod:`llmc.passes.select`), validates the sparsity target, drives calibration layer by
layer when the method (or the error measurement) needs activations, writes the result into the
``Param`` with its :class:`~llmc.ir.params.SparsitySpec`, and records per layer the achieved
sparsity and the relative output error on the calibration tokens.

Targets: ``sparsity=R`` prunes a fraction ``R`` (in [0, 1)) of each layer's weights;
``pattern=N:M`` keeps ``N`` non-zeros in every ``M`` consecutive weights of a row (2:4 and 4:8 for
GPU sparse tensor cores, 2:16 / 4:16 / 8:16 for the FlightLLM DSP chain). Tensors are never
modified in place (graph copies share them): passes assign new tensors.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from llmc.errors import PassError
from llmc.ir.graph import Graph
from llmc.ir.params import SparsitySpec, StorageFormat
from llmc.passes.base import CalibrationError, Pass, PassContext, PassOptionError
from llmc.passes.calibration import InputStats, each_target, output_error, run_layerwise
from llmc.passes.select import DEFAULT_EXCLUDE, Target, select_linears
from llmc.safetensors_io import keep

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(pattern: str) -> tuple[int, int]:
    m = _NM_RE.match(pattern)
    if not m:
        raise PassOptionError(f"pattern must be N:M (e.g. 2:4, 4:8, 2:16), got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise PassOptionError(
            f"pattern {n}:{mm} is impossible: N:M keeps N of every M weights, so 0 < N < M "
            "(e.g. 2:4, 4:8, 2:16)"
        )
    return n, mm


def nm_keep_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` along the last axis."""
    rows, cols = score.shape
    g = score.reshape(rows, cols // m, m)
    idx = torch.topk(g, n, dim=-1).indices
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return keep.reshape(rows, cols)


def unstructured_keep_mask(score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
    """Prune the ``ratio`` lowest scores, per row or over the whole matrix."""
    if ratio <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if per_row:
        k = int(score.shape[1] * ratio)
        idx = torch.argsort(score, dim=1)[:, :k]
        return torch.ones_like(score, dtype=torch.bool).scatter_(1, idx, False)
    k = int(score.numel() * ratio)
    idx = torch.argsort(score.flatten())[:k]
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[idx] = False
    return keep.reshape(score.shape)


@dataclass(frozen=True)
class PruneBase(Pass):
    """Options common to the unstructured / N:M pruning passes."""

    sparsity: float | None = None
    pattern: str = ""
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    # measure each layer's output error on calibration data; default: only when the method
    # reads calibration data anyway (a data-free method stays data-free and fast)
    measure: bool | None = None

    #: the method reads activation statistics (and the Hessian when ``needs_hessian``)
    needs_calibration: ClassVar[bool] = False
    needs_hessian: ClassVar[bool] = False

    def check(self) -> None:
        if self.sparsity is not None and self.pattern:
            raise PassOptionError("give sparsity= or pattern=, not both")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise PassOptionError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.pattern:
            parse_nm(self.pattern)

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern) if self.pattern else None

    @property
    def ratio(self) -> float:
        if self.pattern:
            n, m = parse_nm(self.pattern)
            return 1.0 - n / m
        return 0.5 if self.sparsity is None else float(self.sparsity)

    def spec_for(self, density: float) -> SparsitySpec:
        nm = self.nm
        if nm is not None:
            return SparsitySpec("nm", nm[0], nm[1], density)
        return SparsitySpec("unstructured", density=density)

    # -- the method ----------------------------------------------------------------------------
    def prune(self, w: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        """The new float32 weight of one layer (zeros where pruned)."""
        raise NotImplementedError

    # -- driver --------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = select_linears(graph, self.include, self.exclude, pass_name=self.name)
        nm = self.nm
        for t in targets:
            if t.param.format.quant is not None:
                raise PassError(
                    f"{t.path} is already quantized ({t.param.format}); prune before quantizing "
                    f"(put '{self.name}' earlier in the pipeline)"
                )
            if nm is not None and t.in_features % nm[1]:
                raise PassOptionError(
                    f"{t.path} has {t.in_features} input features, not a multiple of M={nm[1]} "
                    f"for pattern {self.pattern}; exclude it (exclude=...) or choose another M"
                )
        rep = ctx.report
        rep.set(target=self.pattern or f"{self.ratio:g}", layers_targeted=len(targets))
        if not targets:
            return
        if any(t.param.is_meta for t in targets):
            for t in targets:  # architecture-only model: record the format, nothing to compute
                t.param.format = StorageFormat(None, self.spec_for(1.0 - self.ratio))
            rep.set(meta=True)
            return
        by_node = {id(t.node): t for t in targets}
        totals = {"weights": 0, "zeros": 0}

        def do(t: Target, stats: InputStats | None) -> None:
            w = t.param.value().to(torch.float32)
            t0 = time.perf_counter()
            new = self.prune(w, stats)
            zeros = int((new == 0).sum())
            totals["weights"] += new.numel()
            totals["zeros"] += zeros
            err = output_error(w, new, stats) if stats is not None else float("nan")
            # spilled during a compile (llmc.safetensors_io.keep)
            t.param.data = {"value": keep(new.to(t.param.data["value"].dtype).contiguous())}
            t.param.format = StorageFormat(None, self.spec_for(1.0 - zeros / new.numel()))
            t.param.invalidate()
            rep.layer(
                t.path,
                sparsity=round(zeros / new.numel(), 6),
                rel_error=None if err != err else round(err, 6),
                seconds=round(time.perf_counter() - t0, 4),
            )

        measure = self.needs_calibration if self.measure is None else self.measure
        calibrate = self.needs_calibration or measure
        if calibrate:
            try:
                info = run_layerwise(
                    graph,
                    ctx,
                    [t.node for t in targets],
                    lambda seg, stats: each_target(stats, lambda n, s: do(by_node[id(n)], s)),
                    hessian=self.needs_hessian or measure,
                )
                rep.set(**info.to_dict())
            except CalibrationError as e:
                if self.needs_calibration:
                    raise
                calibrate = False
                rep.set(calibration=f"unavailable ({e}); no error measured")
            else:
                rep.set(calibration="calibrated" if self.needs_calibration else "measured")
        else:
            rep.set(calibration="data-free")
        if not calibrate:
            for t in targets:
                do(t, None)
        errs = [r["rel_error"] for r in rep.get("layers", []) if r["rel_error"] is not None]
        rep.set(
            weights=totals["weights"],
            weights_zeroed=totals["zeros"],
            sparsity=round(totals["zeros"] / max(totals["weights"], 1), 6),
            mean_rel_error=round(sum(errs) / len(errs), 6) if errs else None,
        )
