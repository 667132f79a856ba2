"""Cycle-level performance model: runs an instruction stream on a model of the accelerator.

Execution (what the dependency bits mean, see :mod:`llmc.fpga.isa`): an in-order dispatcher
issues one instruction every ``issue_cycles`` into per-unit queues; each unit (LOAD, MPE, SFU,
STORE) runs its instructions in order, one at a time; an instruction starts when its unit is
free, it has been dispatched, and every token it waits for has been released (a token is
released when its producer finishes). Loads therefore run ahead of compute as far as the
double-buffered weight and KV buffers allow, and stores drain behind it.

Durations (cycles at ``clock_mhz``):

- LD/ST: ``latency + bytes / (channels x channel_bw x efficiency)``. Bytes are what the
  hardware moves: weights as packed (codes, 4-bit indices, scales, bias), activation-class data
  (activations, KV cache, tables) at ``act_bytes`` per element. Each row is padded to whole
  bursts of ``burst_bytes``; a row that covers a full stripe (``channels x burst_bytes``) streams
  from every channel at ``eff_same``, a shorter row goes through the HBM switch at
  ``eff_cross``. DDR-resident weights use the DDR bandwidth and efficiency.
- Cores: ``cores`` copies of the MPE and SFU (one per SLR, as in FlightLLM) split each MM/MV
  instruction's heads (attention) or output rows (projections), and each SFU instruction's rows;
  an instruction runs on all cores at once, so the cost below uses the per-core share.
- MM/MV (sparse DSP chain): a chain of ``lanes`` DSPs consumes ``lanes`` non-zero products per
  cycle. With ``dsp.sparse_chain`` the sparse multiplexer feeds only the ``n`` non-zeros of each
  16-block row and reduction nodes split the chain into ``16/n`` shorter dot products, so an
  N:16 row costs ``n/16`` of a dense one; without it the chain walks all 16 positions. MV:
  ``ceil(N / rows) x ceil(K/16 x n / lanes)`` cycles per token and head; MM the same over
  ``ceil(M / tokens)`` token groups and ``rows`` of the MM unit. Operands wider than 8 bits take
  ``ceil(bits / 8)`` passes (f16 weights, 16-bit attention operands). Each instruction pays the
  chain's pipeline fill (``chain_fill_cycles``, plus ``reduction_latency`` when the chain is
  split).
- SFU: ``passes x rows x ceil(len / sfu_width) + sfu_latency`` (norms 2-3 passes, softmax 3,
  element-wise and RoPE 1).
- SYNC and BR drain every unit (and take no unit time). A ``BR`` (FFN-skip) is taken or not as a
  run decided: :func:`simulate_stream` gets the indices of the taken branches (a trace the
  functional simulator recorded, or a skip pattern), skips their bodies and charges only what
  runs; without them no branch is taken (every block runs).
- Token pruning (llmc.fpga.prune): ``tscore`` as an element-wise pass over the rows of the
  scoring window only (at most ``min(n_inner, window)`` query rows per head; the others are
  skipped by a row compare); ``topk`` as a bitonic sorting network of the ``N`` scores on one SFU,
  ``ceil(N / sfu_width) x log2 N (log2 N + 1) / 2`` compare-exchange cycles, plus a pass writing
  the ``N`` kept indices and positions.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from llmc.fpga import isa
from llmc.fpga.arch import FpgaArch
from llmc.ir.structure import layer_label

SFU_PASSES = {
    isa.S_RMSNORM: 2,
    isa.S_LAYERNORM: 3,
    isa.S_SOFTMAX: 3,
}


@functools.lru_cache(maxsize=65536)
def layer_of(tag: str) -> str:
    """The breakdown row of an instruction's tag (``layer 3``, ``io``, ...); memoized: a stream
    repeats a few hundred tags over thousands of instructions."""
    label = layer_label(tag)
    if label is not None:
        return label
    if tag.startswith(("input ", "output ")) or tag == "end":
        return "io"
    return tag.split(".")[-1] if tag else "other"


@dataclass
class StreamPerf:
    """What one run of one stream costs."""

    cycles: int
    instrs: int
    busy: list[int]  # per unit
    useful_macs: float
    hbm_bytes: float
    ddr_bytes: float
    by_op: dict[str, list[float]] = field(default_factory=dict)  # op -> [count, cycles, bytes]
    by_layer: dict[str, list[float]] = field(default_factory=dict)  # layer -> busy per unit
    end: float = 0.0  # the exact (fractional) finishing time; ``cycles`` is its ceiling

    def scaled_into(self, acc: dict[str, Any], k: float) -> None:
        for name, src in (("by_op", self.by_op), ("by_layer", self.by_layer)):
            dst = acc.setdefault(name, {})
            for key, vals in src.items():
                cur = dst.setdefault(key, [0.0] * len(vals))
                for i, v in enumerate(vals):
                    cur[i] += v * k


class PerfModel:
    """Durations of instructions on one architecture (see the module docstring)."""

    def __init__(self, arch: FpgaArch) -> None:
        a = self.arch = arch
        self.clock = a.clock_hz
        self.ch_bw = a.hbm.channel_bandwidth
        self.burst = a.hbm.burst_bytes
        self.lat = a.hbm.latency_ns * 1e-9 * self.clock
        self.act_scale = a.act_bytes / 4.0
        self.ddr_bw = a.ddr.bandwidth_gbs * 1e9 * a.ddr.efficiency
        self.fill = a.dsp.chain_fill_cycles
        self.red = a.dsp.reduction_latency

    def mem(self, ins: isa.Instr) -> tuple[float, float, bool]:
        """(cycles, hardware bytes, is_ddr) of a load or store."""
        f = ins.f
        rows = f.get("n_outer", 1) * f.get("n_inner", 1)
        rb = f.get("row_bytes", 0)
        dclass = f.get("dclass", 0)
        if dclass == isa.D_ACT:
            rb = rb * self.act_scale
        nbytes = rows * rb
        bursts = math.ceil(rb / self.burst) * self.burst if rb else 0
        padded = rows * bursts
        if f.get("channel", 0) == isa.CH_DDR:
            return self.lat + padded / self.ddr_bw * self.clock, nbytes, True
        nch = max(1, f.get("nch", 1))
        h = self.arch.hbm
        eff = h.eff_same if rb >= nch * self.burst else h.eff_cross
        return self.lat + padded / (nch * self.ch_bw * eff) * self.clock, nbytes, False

    def mpe(self, ins: isa.Instr) -> tuple[float, float]:
        """(cycles, useful MACs) of MM/MV."""
        a = self.arch
        f = ins.f
        m, k, n = f["m"], f["k"], f["n"]
        heads = max(1, f.get("heads", 1))
        nnz = f.get("nnz", 16)
        if f.get("wbuf", isa.B_WGT) == isa.B_WGT:
            bits = isa.WFMT_BITS[f.get("wfmt", 0)]
        else:  # activation x activation (attention): hardware element width
            bits = 8 * a.act_bytes
        passes = max(1, math.ceil(bits / 8))
        eff_nnz = nnz if a.dsp.sparse_chain else 16
        per_row = math.ceil(
            (k // 16) * eff_nnz / (a.mv_unit[1] if ins.op == isa.MV else a.mm_unit[1])
        )
        # the cores split the heads (attention) or the output rows (projections)
        if heads > 1:
            core_heads, core_n = math.ceil(heads / a.cores), n
        else:
            core_heads, core_n = 1, math.ceil(n / a.cores)
        if ins.op == isa.MV:
            groups = m * math.ceil(core_n / a.mv_unit[0])
        else:
            groups = math.ceil(m / a.mm_unit[0]) * math.ceil(core_n / a.mm_unit[2])
        cycles = (
            core_heads * groups * per_row * passes + self.fill + (self.red if eff_nnz < 16 else 0)
        )
        useful = heads * m * n * k * nnz / 16.0
        return cycles, useful

    def sfu(self, ins: isa.Instr) -> float:
        f = ins.f
        if f.get("func", 0) in (isa.S_TSCORE, isa.S_TOPK):
            return self.prune_sfu(f)
        rows = f.get("n_outer", 1) * f.get("n_inner", 1)
        passes = SFU_PASSES.get(f.get("func", 0), 1)
        core_rows = math.ceil(rows / self.arch.cores)  # rows are split over the cores
        return (
            passes * core_rows * math.ceil(f.get("len", 1) / self.arch.sfu_width)
            + self.arch.sfu_latency
        )

    def prune_sfu(self, f: dict[str, int]) -> float:
        """Token pruning's SFU functions (module docstring)."""
        a = self.arch
        n = max(1, f.get("len", 1))
        lanes = math.ceil(n / a.sfu_width)
        if f.get("func") == isa.S_TOPK:
            stages = math.ceil(math.log2(max(n, 2)))
            return lanes * stages * (stages + 1) / 2 + lanes + a.sfu_latency
        ni = max(1, f.get("n_inner", 1))
        w = f.get("ival1", 0)
        rows = max(1, f.get("n_outer", 1)) * (min(ni, w) if w else ni)
        return math.ceil(rows / a.cores) * lanes + a.sfu_latency


def simulate_stream(
    instrs: list[isa.Instr], pm: PerfModel, taken: Collection[int] = ()
) -> StreamPerf:
    """Run one stream on the model; returns its cycle count and breakdowns. ``taken``: indices
    of the ``BR`` instructions this run takes (their bodies are not executed, not charged)."""
    a = pm.arch
    issue = a.issue_cycles
    unit_free = [0.0, 0.0, 0.0, 0.0]
    busy = [0.0, 0.0, 0.0, 0.0]
    queues: list[list[list[float]]] = [[[] for _ in range(4)] for _ in range(4)]
    heads = [[0] * 4 for _ in range(4)]
    dispatch = 0.0
    useful = hbm = ddr = 0.0
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    by_layer: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    end_all = 0.0
    names = isa.OP_NAMES
    taken = set(taken)
    executed = 0
    pc, n_instrs = 0, len(instrs)
    while pc < n_instrs:
        ins = instrs[pc]
        pc += 1
        executed += 1
        op = ins.op
        dispatch += issue
        if op == isa.SYNC or op == isa.BR:
            t = max(max(unit_free), dispatch)
            unit_free = [t, t, t, t]
            end_all = max(end_all, t)
            by_op[names[op]][0] += 1
            if op == isa.BR and pc - 1 in taken:
                pc += ins.f.get("skip", 0)
            continue
        u = ins.unit
        nbytes = 0.0
        if op == isa.LD or op == isa.ST:
            dur, nbytes, is_ddr = pm.mem(ins)
            if is_ddr:
                ddr += nbytes
            else:
                hbm += nbytes
        elif op == isa.SFU:
            dur = pm.sfu(ins)
        else:
            dur, mac = pm.mpe(ins)
            useful += mac
        start = unit_free[u]
        if dispatch > start:
            start = dispatch
        w = ins.wait
        if w:
            for src in range(4):
                if w >> src & 1:
                    q = queues[src][u]
                    t = q[heads[src][u]]
                    heads[src][u] += 1
                    if t > start:
                        start = t
        end = start + dur
        unit_free[u] = end
        busy[u] += dur
        r = ins.rel
        if r:
            for dst in range(4):
                if r >> dst & 1:
                    queues[u][dst].append(end)
        if end > end_all:
            end_all = end
        rec = by_op[names[op]]
        rec[0] += 1
        rec[1] += dur
        rec[2] += nbytes
        by_layer[layer_of(ins.tag)][u] += dur
    return StreamPerf(
        cycles=int(math.ceil(end_all)),
        instrs=executed,
        busy=[int(b) for b in busy],
        useful_macs=useful,
        hbm_bytes=hbm,
        ddr_bytes=ddr,
        by_op=dict(by_op),
        by_layer=dict(by_layer),
        end=end_all,
    )
