"""Layer folding: the cost of an L-layer model's streams from its 2-, 3- and 4-layer copies.

A co-design sweep simulates thousands of points; lowering and simulating every stream of a 32-layer
model would take seconds per point, most of it spent on 30 identical middle layers. When every
decoder layer is the same (ops, attributes, shapes, param storage formats) and no weight spills
to DDR, the ``L``-layer stream of a bucket is the 2-layer stream with ``L - 2`` copies of one
middle layer inserted, and its cost is affine in ``L``:

    cost(L) = cost(2) + (L - 2) * (cost(3) - cost(2))

for every additive counter (instructions, unit busy cycles, useful MACs, HBM bytes, per-op
counts) exactly, and for the cycle count as far as the cycle model settles into the same overlap
pattern after every middle layer. :class:`FoldedCosts` runs the 2-, 3- and 4-layer streams and
uses the formula for a stream only if it predicts the 4-layer stream (cycle count within one
cycle, counters exactly, up to float rounding); otherwise that stream is lowered and simulated in
full. The affine arithmetic runs on the exact (fractional) finishing time, not on the rounded
cycle count, whose per-layer step alternates (1427, 1428, ... for a 1427.67-cycle layer).
``tests/fpga/test_fold.py`` checks folded against full simulation (every stream within one
cycle) on an 8-layer model; ``llmc simulate --no-fold`` (``simulate(..., fold=False)``) runs the
full simulation.

The per-layer breakdown maps the 3-layer copy's layers onto the model's: layer 0 is layer 0, every
middle layer is layer 1, the last layer is layer 2.
"""

from __future__ import annotations

import math
from typing import Any

from llmc.fpga.perf import PerfModel, StreamPerf, simulate_stream
from llmc.fpga.program import Program, build_program
from llmc.ir.graph import Graph, Node
from llmc.ir.structure import layer_of

POINTS = (2, 3, 4)
MIN_LAYERS = 6  # below this, folding saves nothing


class FullCosts:
    """Stream costs by lowering and simulating the program's own streams."""

    folded = False

    def __init__(self, prog: Program, pm: PerfModel) -> None:
        self.prog, self.pm = prog, pm
        self._perf: dict[tuple[str, int, tuple[int, ...]], StreamPerf] = {}

    def perf(self, stage: str, bucket: int, taken: tuple[int, ...] = ()) -> StreamPerf:
        """The stream's cost; ``taken``: the ``BR``s this run takes (FFN-skip)."""
        key = (stage, bucket, taken)
        if key not in self._perf:
            s = self.prog.stream(stage, bucket).instrs
            self._perf[key] = simulate_stream(s, self.pm, taken)
        return self._perf[key]

    def count(self, stage: str, bucket: int) -> int:
        """Instructions of a stream (without building the dependency bits when not cached)."""
        from llmc.fpga.lower import lower_stream

        if (stage, bucket) in self.prog._streams:
            return len(self.prog._streams[(stage, bucket)].instrs)
        return len(lower_stream(self.prog, stage, bucket, deps=False).instrs)


class FoldedCosts(FullCosts):
    """Stream costs of ``prog`` from the 2-, 3- and 4-layer copies (see the module docstring)."""

    folded = True

    def __init__(self, prog: Program, pm: PerfModel, small: dict[int, Program]) -> None:
        super().__init__(prog, pm)
        self.small = small
        self.layers = int(prog.graph.meta["num_layers"])
        self.fallbacks: list[tuple[str, int]] = []
        self._small_perf: dict[tuple[int, str, int], StreamPerf] = {}

    def _sp(self, k: int, stage: str, bucket: int) -> StreamPerf:
        key = (k, stage, bucket)
        if key not in self._small_perf:
            s = self.small[k].stream(stage, bucket)
            self._small_perf[key] = simulate_stream(s.instrs, self.pm)
        return self._small_perf[key]

    def perf(self, stage: str, bucket: int, taken: tuple[int, ...] = ()) -> StreamPerf:
        key = (stage, bucket, taken)
        if taken:  # a folded model has no branches (its layers would differ)
            return super().perf(stage, bucket, taken)
        if key in self._perf:
            return self._perf[key]
        p2, p3, p4 = (self._sp(k, stage, bucket) for k in POINTS)
        prefix = self.prog.graph.meta.get("layer_prefix", "")
        if _predicts(_extrapolate(p2, p3, 4, prefix), p4):
            got = _extrapolate(p2, p3, self.layers, prefix)
        else:
            self.fallbacks.append((stage, bucket))
            got = simulate_stream(self.prog.stream(stage, bucket).instrs, self.pm)
        self._perf[key] = got
        return got

    def count(self, stage: str, bucket: int) -> int:
        from llmc.fpga.lower import lower_stream

        c = {k: len(lower_stream(self.small[k], stage, bucket, deps=False).instrs) for k in POINTS}
        slope = c[3] - c[2]
        if c[4] - c[3] == slope:
            return c[2] + (self.layers - 2) * slope
        return super().count(stage, bucket)


def costs_for(
    prog: Program, pm: PerfModel, *, fold: bool = True, small: dict[int, Program] | None = None
) -> FullCosts:
    """:class:`FoldedCosts` when folding applies to ``prog`` (see :func:`foldable`), else
    :class:`FullCosts`. ``small``: the 2-, 3- and 4-layer programs, when already built for a
    board of the same structure (:class:`llmc.fpga.sim.SimCache`)."""
    if fold and foldable(prog) is None:
        if small:
            return FoldedCosts(prog, pm, small)
        g, prefix = prog.graph, prog.graph.meta["layer_prefix"]
        from llmc.frontends.canon import truncate_layers

        small = {k: build_program(truncate_layers(g, prefix, k), prog.arch) for k in POINTS}
        return FoldedCosts(prog, pm, small)
    return FullCosts(prog, pm)


def foldable(prog: Program) -> str | None:
    """``None`` when layer folding applies to ``prog``, else the reason it does not."""
    g = prog.graph
    if prog.prune is not None:
        return "token pruning: layers run on different row counts (segmented prefill)"
    prefix = g.meta.get("layer_prefix")
    n = g.meta.get("num_layers")
    if not prefix or not isinstance(n, int):
        return "the graph does not record its decoder layers (meta layer_prefix, num_layers)"
    if n < MIN_LAYERS:
        return f"{n} layers: too few to fold"
    if prog.hw_bytes("weight", "ddr"):
        return "weights spill to DDR, so layers differ in where their weights stream from"
    sigs = _layer_signatures(g, prefix, n)
    if sigs is None:
        return "the decoder layers are not contiguous in the node list"
    first = sigs[0]
    for i, s in enumerate(sigs[1:], 1):
        if s != first:
            return f"layer {i} differs from layer 0 (ops, shapes or weight formats)"
    return None


def _layer_signatures(g: Graph, prefix: str, n: int) -> list[tuple[Any, ...]] | None:
    by_layer: list[list[Node]] = [[] for _ in range(n)]
    seen: list[int] = []
    for node in g.nodes:
        i = layer_of(node.scope, prefix)
        if i is None or i >= n:
            continue
        if not seen or seen[-1] != i:
            if i in seen:
                return None
            seen.append(i)
        by_layer[i].append(node)
    out = []
    for nodes in by_layer:
        sig = []
        for node in nodes:
            if node.op == "param":
                p = g.params[node.attrs.name]
                sig.append(("param", p.type, p.format))
            else:
                sig.append((node.op, node.attrs, node.out.type))
        out.append(tuple(sig))
    return out


# -- affine arithmetic on StreamPerf ---------------------------------------------------------------


def _lin(a: float, b: float, t: int) -> float:
    return a + (t - 2) * (b - a)


def _extrapolate(p2: StreamPerf, p3: StreamPerf, layers: int, prefix: str) -> StreamPerf:
    """The stream of a ``layers``-layer model from its 2- and 3-layer streams."""
    by_op = {}
    for k in p2.by_op.keys() | p3.by_op.keys():
        a = p2.by_op.get(k, [0.0, 0.0, 0.0])
        b = p3.by_op.get(k, [0.0, 0.0, 0.0])
        by_op[k] = [_lin(x, y, layers) for x, y in zip(a, b, strict=True)]
    by_layer: dict[str, list[float]] = {}
    for k, v in p3.by_layer.items():
        if not k.startswith("layer "):
            by_layer[k] = list(v)
    if layers >= 1:
        by_layer["layer 0"] = list(p3.by_layer.get("layer 0", [0.0] * 4))
    for i in range(1, layers - 1):
        by_layer[f"layer {i}"] = list(p3.by_layer.get("layer 1", [0.0] * 4))
    if layers >= 2:
        by_layer[f"layer {layers - 1}"] = list(p3.by_layer.get("layer 2", [0.0] * 4))
    end = _lin(p2.end, p3.end, layers)
    return StreamPerf(
        cycles=int(math.ceil(end)),
        instrs=int(_lin(p2.instrs, p3.instrs, layers)),
        busy=[int(_lin(a, b, layers)) for a, b in zip(p2.busy, p3.busy, strict=True)],
        useful_macs=_lin(p2.useful_macs, p3.useful_macs, layers),
        hbm_bytes=_lin(p2.hbm_bytes, p3.hbm_bytes, layers),
        ddr_bytes=_lin(p2.ddr_bytes, p3.ddr_bytes, layers),
        by_op=by_op,
        by_layer=by_layer,
        end=end,
    )


def _predicts(pred: StreamPerf, got: StreamPerf) -> bool:
    """Does the extrapolated 4-layer stream match the simulated one? Cycles within one cycle
    (the cycle model sums float durations), integer counters exactly, floats to 1e-9."""

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)

    if abs(pred.cycles - got.cycles) > 1 or pred.instrs != got.instrs:
        return False
    if any(abs(a - b) > 1 for a, b in zip(pred.busy, got.busy, strict=True)):
        return False
    if not all(
        close(a, b)
        for a, b in (
            (pred.useful_macs, got.useful_macs),
            (pred.hbm_bytes, got.hbm_bytes),
            (pred.ddr_bytes, got.ddr_bytes),
        )
    ):
        return False
    if pred.by_op.keys() != got.by_op.keys():
        return False
    return all(
        close(x, y) for k in got.by_op for x, y in zip(pred.by_op[k], got.by_op[k], strict=True)
    )
