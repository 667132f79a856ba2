"""Per-layer, per-op-group roofline of a model on a target, for prefill and decode.

``llmc roofline MODEL --target T`` answers LLM-Viewer's question for every target llmc knows and
for the model *after* llmc's passes: where does the time of one request go, and is each part bound
by compute or by memory? Every figure comes from the op registry's cost functions
(:mod:`llmc.analysis`), evaluated on the compiled graph, so a pass's effect shows without this
module knowing about it:

- weights at their stored bytes (:meth:`llmc.ir.params.Param.storage_bytes`: int4 halves int8,
  N:M sparsity counts the kept values plus their positions);
- ``ffn-skip``: a decode step's FFN blocks at the expected skip rate (``skip_rate``; the prompt
  never skips);
- ``token-prune``: each layer's rows at the kept count its ``keep_rows`` node computes for the
  prompt, and each layer's KV cache at its own length during decode;
- ``kv_bits`` / ``act_bits``: the KV cache's and the activations' bytes at another width (what a
  KV-cache quantizer or an int8-activation kernel would move), and int8 math (the ``i8`` peak) for
  the matrix products when activations are 8-bit or less.

Each row is one op group (``attn.q_proj``, ``attention``, ``ffn.down_proj``, ``norm``, ...) of one
layer in one stage; its time is ``max(FLOPs / peak, bytes / bandwidth)`` on the target's spec (each
group is a kernel of its own: the sum of the rows' times is the stage's time, which is tighter than
one whole-graph bound). ``prefill`` processes the prompt (``batch x prompt`` rows, empty cache)
and, as generation does, computes the head (final norm, ``lm_head``) for the last row only
(:mod:`llmc.ir.lastrow`; LLM-Viewer counts ``lm_head`` once per sequence too);
``decode`` is one generation step at the middle of generation (cache ``prompt + decode // 2``), so
``decode x`` its time is the generation time (every cost is affine in the cache length).

The bandwidth is the target's memory's, or its last-level cache's where the spec has one (the
``cpu`` target's host spec: ``llc_bytes``, ``llc_bandwidth``) and the working set fits in it: everything one decode step
reads (the weights it reads at their stored bytes, one row of an embedding table, the KV cache,
the activations), which stays resident from step to step (:func:`memory_level`;
``memory_level="dram"`` or ``"llc"`` forces one; both stages use the level). A model whose
weights stay cached between decode steps is bound by the cache's bandwidth, not DRAM's; one
larger than the cache reads the cache's worth from it and the rest from DRAM (``LLC+DRAM``,
:func:`split_bandwidth`). Each
stage's totals say which level was used (``memory_level``, ``bandwidth``,
``working_set_bytes``).

Bytes are the op-by-op traffic of the IR (reads and writes of every node), so the intermediates a
fused kernel keeps on chip are counted, as LLM-Viewer does without FlashAttention; the IR's
attention appends to the cache with a ``concat`` (``kv_cache`` rows), which in-place backends do not
copy: docs/codesign.md compares the figures with LLM-Viewer's for LLaMA2-7B on A100.

Example::

    g = load("llama2-7b").graph
    rep = analyze(g, get_target("h100"), Scenario(batch=1, prompt=1024, decode=256))
    rep.totals["decode"]["ms_per_token"]
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.ir.graph import Graph, Node
from llmc.ir.lastrow import last_row_graph
from llmc.ir.ops_adaptive import KeepRowsAttrs, keep_count
from llmc.ir.registry import Cost, get_op
from llmc.ir.structure import complete_env, layer_of, layer_prefix
from llmc.ir.types import DTYPE_BYTES, TensorType

STAGES = ("prefill", "decode")
#: ops whose FLOPs are matrix products (the ``i8`` peak applies when activations are <= 8 bits)
MATMUL_OPS = frozenset({"linear", "matmul", "attention", "attention_async", "moe"})
_INT8_ACT_OPS = frozenset({"qlinear_a8"})
#: The peak key of int8 prefill where it differs from decode's ``i8`` (a CPU whose W8A8 prefill
#: uses AMX tiles: :func:`llmc.targets.host.prefill_amx_peak`).
PREFILL_I8 = "i8_prefill"
_KV_INPUT = ("past_k", "past_v")
_ZERO_COST = frozenset({"param", "constant", "reshape"})


class RooflineError(LlmcError):
    """A roofline request that cannot be evaluated (bad scenario, no spec for the target)."""


@dataclass(frozen=True)
class Scenario:
    """One request: ``batch`` prompts of ``prompt`` tokens, then ``decode`` generated tokens each.

    ``kv_bits``/``act_bits``: store the KV cache / activations at this width (``None``: the graph's
    dtype). ``skip_rate``: the fraction of decode FFN blocks an ``ffn-skip`` graph skips (``None``:
    none, the upper bound)."""

    batch: int = 1
    prompt: int = 512
    decode: int = 128
    kv_bits: int | None = None
    act_bits: int | None = None
    skip_rate: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch", "prompt"):
            if getattr(self, name) < 1:
                raise RooflineError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.decode < 0:
            raise RooflineError(f"--decode must be >= 0, got {self.decode}")
        for name in ("kv_bits", "act_bits"):
            v = getattr(self, name)
            if v is not None and v not in (4, 8, 16, 32):
                raise RooflineError(f"--{name.replace('_', '-')} must be 4, 8, 16 or 32, got {v}")
        r = self.skip_rate
        if r is not None and not 0.0 <= r <= 1.0:
            raise RooflineError(f"--skip-rate must be in [0, 1], got {r}")

    def env(self, stage: str) -> dict[str, int]:
        if stage == "prefill":
            return {"batch": self.batch, "seq": self.prompt, "past": 0}
        return {"batch": self.batch, "seq": 1, "past": self.prompt + self.decode // 2}


@dataclass
class Row:
    """One op group of one layer (``layer`` is ``None`` outside the decoder layers)."""

    stage: str
    layer: int | None
    group: str
    ops: int = 0
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    peak_dtype: str = ""
    peak_flops: float = 0.0
    bandwidth: float = 0.0

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else math.inf

    @property
    def compute_ms(self) -> float:
        return 1e3 * self.flops / self.peak_flops if self.peak_flops else 0.0

    @property
    def memory_ms(self) -> float:
        return 1e3 * self.bytes / self.bandwidth if self.bandwidth else 0.0

    @property
    def time_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms > self.memory_ms else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "layer": self.layer,
            "group": self.group,
            "ops": self.ops,
            "flops": self.flops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "weight_bytes": self.weight_bytes,
            "kv_bytes": self.kv_bytes,
            "arithmetic_intensity": None if math.isinf(self.intensity) else self.intensity,
            "peak_dtype": self.peak_dtype,
            "bound": self.bound,
            "compute_ms": self.compute_ms,
            "memory_ms": self.memory_ms,
            "time_ms": self.time_ms,
        }


CSV_FIELDS = (
    "stage",
    "layer",
    "group",
    "ops",
    "flops",
    "bytes_read",
    "bytes_written",
    "weight_bytes",
    "kv_bytes",
    "arithmetic_intensity",
    "peak_dtype",
    "bound",
    "compute_ms",
    "memory_ms",
    "time_ms",
)


@dataclass
class RooflineReport:
    model: str
    target: str
    scenario: Scenario
    spec: dict[str, Any]
    rows: list[Row]
    totals: dict[str, dict[str, Any]]
    kv_cache: dict[str, Any]
    simulator: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None

    def groups(self, stage: str) -> list[Row]:
        """The stage's rows summed over layers, one per op group, in first-seen order."""
        out: dict[str, Row] = {}
        for r in self.rows:
            if r.stage != stage:
                continue
            g = out.setdefault(
                r.group,
                Row(
                    stage,
                    None,
                    r.group,
                    peak_dtype=r.peak_dtype,
                    peak_flops=r.peak_flops,
                    bandwidth=r.bandwidth,
                ),
            )
            _accumulate(g, r)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "scenario": asdict(self.scenario),
            "decode_context": self.scenario.env("decode")["past"],
            "spec": self.spec,
            "totals": self.totals,
            "kv_cache": self.kv_cache,
            "groups": {s: [r.to_dict() for r in self.groups(s)] for s in STAGES},
            "rows": [r.to_dict() for r in self.rows],
            "simulator": self.simulator,
            "calibration": self.calibration,
            "notes": self.notes,
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            d = r.to_dict()
            w.writerow({k: ("" if d[k] is None else d[k]) for k in CSV_FIELDS})
        return buf.getvalue()

    def table(self) -> str:
        """Per stage: the op groups (summed over layers) and the totals, as text."""
        lines = []
        sc = self.scenario
        lines.append(
            f"{self.model} on {self.target}: batch {sc.batch}, prompt {sc.prompt}, decode "
            f"{sc.decode} (decode step at cache length {sc.env('decode')['past']})"
        )
        for stage in STAGES:
            tot = self.totals[stage]
            lines.append("")
            lines.append(
                f"{stage:8s} {'group':22s} {'GFLOP':>10s} {'MB':>10s} {'FLOP/B':>8s} "
                f"{'bound':>8s} {'ms':>10s} {'share':>6s}"
            )
            for r in self.groups(stage):
                share = r.time_ms / tot["time_ms"] if tot["time_ms"] else 0.0
                ai = "inf" if math.isinf(r.intensity) else f"{r.intensity:.1f}"
                lines.append(
                    f"{'':8s} {r.group:22s} {r.flops / 1e9:10.3f} {r.bytes / 1e6:10.2f} "
                    f"{ai:>8s} {r.bound:>8s} {r.time_ms:10.4f} {100 * share:5.1f}%"
                )
            lines.append(
                f"{'':8s} {'total':22s} {tot['flops'] / 1e9:10.3f} {tot['bytes'] / 1e6:10.2f} "
                f"{'':8s} {'':8s} {tot['time_ms']:10.4f} {'':6s}"
            )
        t = self.totals
        lines.append("")
        lines.append(
            f"prefill  {t['prefill']['time_ms']:.3f} ms ({t['prefill']['tokens_per_s']:.0f} "
            f"prompt tokens/s); decode {t['decode']['ms_per_token']:.4f} ms/step "
            f"({t['decode']['tokens_per_s']:.1f} tokens/s); request {t['request_ms']:.1f} ms"
        )
        if "memory_level" in t["decode"]:
            lines.append(
                f"memory   {t['decode']['memory_level']} at {t['decode']['bandwidth'] / 1e9:.1f} "
                f"GB/s (working set: one decode step's reads, "
                f"{t['decode']['working_set_bytes'] / 2**20:.1f} MiB)"
            )
        kv = self.kv_cache
        lines.append(
            f"KV cache {kv['bytes'] / 2**20:.1f} MiB at {kv['tokens']} tokens "
            f"({kv['bits']}-bit); weights {t['weight_bytes'] / 2**20:.1f} MiB"
        )
        if self.calibration:
            c = self.calibration
            lines.append(
                f"measured-efficiency estimate ({c['kernel_class']} kernels: "
                f"prefill x{c['factors']['prefill']:.2f}, decode x{c['factors']['decode']:.2f} "
                f"of the roofline): prefill {c['prefill_ms']:.3f} ms, decode "
                f"{c['decode_ms_per_token']:.4f} ms/step ({c['decode_tokens_per_s']:.1f} tokens/s)"
            )
        if self.simulator:
            s = self.simulator
            lines.append(
                f"simulator prefill {s['prefill_ms']:.3f} ms, decode {s['decode_ms_per_token']:.4f} "
                f"ms/token ({s['decode_tokens_per_s']:.1f} tokens/s) on {s['target']}"
            )
        lines.extend(f"note     {n}" for n in self.notes)
        return "\n".join(lines)


def _accumulate(into: Row, r: Row) -> None:
    into.ops += r.ops
    into.flops += r.flops
    into.bytes_read += r.bytes_read
    into.bytes_written += r.bytes_written
    into.weight_bytes += r.weight_bytes
    into.kv_bytes += r.kv_bytes
    into.peak_flops = into.peak_flops or r.peak_flops


# ----------------------------------------------------------------------------------------------
# the analysis


def group_of(node: Node) -> str:
    """The op group of ``node``: a linear is named by its module (``attn.q_proj``,
    ``ffn.down_proj``, ``lm_head``), the rest by their role (``attention``, ``kv_cache``, ``norm``,
    ``rope``, ``embed``, ``ffn.act``, ``residual``, ``prune``, ``moe``, ``attn.other``)."""
    op, block = node.op, node.block or ""
    leaf = node.scope.rsplit(".", 1)[-1] if node.scope else ""
    if op in ("linear", "qlinear_a8", "matmul") and block in ("attn", "ffn"):
        return f"{block}.{leaf}" if leaf else block
    if op in ("linear", "qlinear_a8") and block == "head":
        return "lm_head"
    if op in ("attention", "attention_async"):
        return "attention"
    if op == "concat" and block == "attn":
        return "kv_cache"
    if op == "moe":
        return "moe"
    if block in ("norm", "rope", "embed", "prune"):
        return block
    if block == "head":
        return "lm_head"
    if block == "ffn":
        return "ffn.act"
    if block == "attn":
        return "attn.other"
    if op == "add" and not block:
        return "residual"
    return block or op


#: the choices of :func:`memory_level` (``auto``: the LLC for what of the working set it holds)
MEMORY_LEVELS = ("auto", "dram", "llc")


def split_bandwidth(working_set: float, llc_bytes: float, llc_bw: float, dram_bw: float) -> float:
    """The read bandwidth of a working set re-read in the same order every step, of which the
    last-level cache keeps ``llc_bytes`` from one step to the next: those bytes at ``llc_bw``,
    the rest at ``dram_bw`` (the time of the two parts, so the rate is a harmonic blend).

    An LRU cache would keep nothing of a cyclic sweep larger than itself; measured decode on the
    2-vCPU Xeon host (``bench/roofline_validate_20261207_xeon_2t.json``: working sets of 99 to 508
    MB against a 64 MiB effective LLC) runs 4 to 41% faster than DRAM alone allows, and within
    -11 to +8% of this blend."""
    if working_set <= 0:
        return llc_bw
    cached = min(working_set, llc_bytes)
    return working_set / (cached / llc_bw + (working_set - cached) / dram_bw)


def memory_level(spec: Any, working_set: float, choice: str = "auto") -> tuple[str, float]:
    """``(level, bytes/s)`` a stage whose working set is ``working_set`` bytes reads at on
    ``spec``. Where the spec knows its last-level cache (size and bandwidth both > 0):
    ``("LLC", spec.llc_bandwidth)`` when the working set fits in it (or ``choice="llc"``), else
    ``("LLC+DRAM", split_bandwidth(...))``: the cache holds ``llc_bytes`` of it between steps and
    the rest streams from DRAM. Without an LLC figure, or with ``choice="dram"``:
    ``("DRAM", spec.mem_bandwidth)``."""
    if choice not in MEMORY_LEVELS:
        raise RooflineError(
            f"--memory-level must be one of {', '.join(MEMORY_LEVELS)}, got {choice}"
        )
    llc_bytes = float(getattr(spec, "llc_bytes", 0.0) or 0.0)
    llc_bw = float(getattr(spec, "llc_bandwidth", 0.0) or 0.0)
    dram_bw = float(spec.mem_bandwidth)
    known = llc_bytes > 0 and llc_bw > 0
    if choice == "llc" and not known:
        raise RooflineError("--memory-level llc: the target's spec has no last-level cache figure")
    if not known or choice == "dram":
        return "DRAM", dram_bw
    if choice == "llc" or working_set <= llc_bytes:
        return "LLC", llc_bw
    return "LLC+DRAM", split_bandwidth(working_set, llc_bytes, llc_bw, dram_bw)


_memory_level = memory_level  # analyze() has a parameter of that name


class _Walker:
    def __init__(
        self, graph: Graph, spec: Any, scenario: Scenario, stage: str, bandwidth: float
    ) -> None:
        self.graph = graph
        self.bandwidth = bandwidth
        self.root = graph.root()
        self.spec = spec
        self.sc = scenario
        self.stage = stage
        self.prefix = layer_prefix(graph)
        dtype = str(graph.meta.get("dtype", "f32"))
        self.dtype = dtype if dtype in spec.peak_flops else "f32"
        self.dtype_bits = 8 * DTYPE_BYTES.get(dtype, 4)
        self.kv_values: set[int] = set()
        for v in graph.inputs:
            if v.name.startswith(_KV_INPUT):
                self.kv_values.add(id(v))
        self.rows: dict[tuple[int | None, str], Row] = {}
        self.cond_rate = cond_rate(graph, scenario.skip_rate)
        self.kv_dtype_bits = self.dtype_bits
        for v in graph.inputs:
            if v.name.startswith(_KV_INPUT):
                self.kv_dtype_bits = 8 * DTYPE_BYTES[v.type.dtype]
                break

    def scale(self, bits: int | None, native: int) -> float:
        return 1.0 if bits is None else bits / native

    def peak_dtype(self, op: str) -> str:
        act = self.sc.act_bits
        if op in _INT8_ACT_OPS and self.stage == "prefill" and PREFILL_I8 in self.spec.peak_flops:
            # a W8A8 linear over the prompt's rows runs on AMX tiles where the host spec says
            # the CPU backend builds for them (llmc.targets.host.prefill_amx_peak); decode's
            # one row keeps vpdpbusd (the i8 peak)
            return PREFILL_I8
        if op in _INT8_ACT_OPS or (op in MATMUL_OPS and act is not None and act <= 8):
            if "i8" in self.spec.peak_flops:
                return "i8"
        return self.dtype

    def walk(self, g: Graph, env: Mapping[str, int], weight: float) -> None:
        for n in g.nodes:
            if n.op in _ZERO_COST:
                continue
            od = get_op(n.op)
            if od.region_fields:
                self.walk_cond(n, od, env, weight)
                continue
            self.node(n, env, weight)

    def walk_cond(self, n: Node, od: Any, env: Mapping[str, int], weight: float) -> None:
        regions = od.regions(n.attrs)
        totals = [_region_bytes(r, env, self.root) for r in regions]
        rate = self.cond_rate if self.stage == "decode" else None
        if rate is None or len(regions) != 2:
            # the more expensive branch: an upper bound (the prompt never skips)
            self.walk(regions[totals.index(max(totals))], env, weight)
            return
        cheap = totals.index(min(totals))
        self.walk(regions[cheap], env, weight * rate)
        self.walk(regions[1 - cheap], env, weight * (1.0 - rate))

    def node(self, n: Node, env: Mapping[str, int], weight: float) -> None:
        od = get_op(n.op)
        ins = [TensorType(v.type.concrete(env), v.type.dtype) for v in n.inputs]
        out = TensorType(n.out.type.concrete(env), n.out.type.dtype)
        in_bytes: list[float] = []
        w_bytes = kv_bytes = 0.0
        act = self.scale(self.sc.act_bits, self.dtype_bits)
        kv = self.scale(self.sc.kv_bits, self.kv_dtype_bits)
        for v, t in zip(n.inputs, ins, strict=True):
            p = self.root.param_of(v)
            if p is not None:
                b = p.storage_bytes()
                w_bytes += b
            else:
                b = float(t.numel() * DTYPE_BYTES[t.dtype])
                if id(v) in self.kv_values:
                    b *= kv
                    kv_bytes += b
                elif t.dtype in ("f32", "f16", "bf16"):
                    b *= act
            in_bytes.append(b)
        c = od.cost(ins, out, n.attrs, in_bytes)
        if n.op == "moe":
            # routed experts: the cost reads only the experts a call touches (top_k of E at
            # decode; llmc/ir/ops_moe.py), so the weights read are its bytes less the activations
            acts = sum(
                b for v, b in zip(n.inputs, in_bytes, strict=True) if self.root.param_of(v) is None
            )
            w_bytes = min(w_bytes, max(c.bytes_read - acts, 0.0))
        written = c.bytes_written
        if n.op == "concat" and any(id(v) in self.kv_values for v in n.inputs):
            # appending to the cache: every backend writes the new rows in place (the IR's concat
            # would copy the whole cache); the attention that follows reads it
            self.kv_values.add(id(n.out))
            new = [
                b for v, b in zip(n.inputs, in_bytes, strict=True) if id(v) not in self.kv_values
            ]
            c = Cost(c.flops, sum(new), 0.0)
            written = sum(new) * kv / act if act else sum(new)
            kv_bytes = written
        elif out.dtype in ("f32", "f16", "bf16"):
            written *= act
        layer = layer_of(n.scope, self.prefix) if n.scope else None
        group = group_of(n)
        row = self.rows.get((layer, group))
        if row is None:
            pd = self.peak_dtype(n.op)
            row = self.rows[(layer, group)] = Row(
                self.stage,
                layer,
                group,
                peak_dtype=pd,
                peak_flops=self.spec.peak(pd),
                bandwidth=self.bandwidth,
            )
        row.ops += 1
        row.flops += weight * c.flops
        row.bytes_read += weight * c.bytes_read
        row.bytes_written += weight * written
        row.weight_bytes += weight * w_bytes
        row.kv_bytes += weight * kv_bytes


def cond_rate(graph: Graph, skip_rate: float | None) -> float | None:
    """The probability that each skippable FFN block (``cond``) is skipped, for a skip rate
    defined as ``ffn_skip_fraction`` is: skipped blocks over *all* the layers' FFN blocks (as
    ``llmc simulate --skip-rate``)."""
    if skip_rate is None:
        return None
    conds = sum(1 for n in graph.nodes if n.op == "cond")
    layers = int(graph.meta.get("num_layers") or 0)
    if not conds or not layers:
        raise RooflineError(
            "--skip-rate: the model skips no FFN block (no cond in its graph); "
            "give it --passes ffn-skip:..."
        )
    if skip_rate * layers > conds + 1e-9:
        raise RooflineError(
            f"--skip-rate {skip_rate:g}: this model can skip at most {conds} of its {layers} FFN "
            f"blocks per token; give a rate in [0, {conds / layers:.4g}]"
        )
    return skip_rate * layers / conds


def _region_bytes(g: Graph, env: Mapping[str, int], root: Graph) -> float:
    total = Cost()
    for n in g.nodes:
        if n.op in _ZERO_COST:
            continue
        od = get_op(n.op)
        if od.region_fields:
            total = total + Cost(0, max(_region_bytes(r, env, root) for r in od.regions(n.attrs)))
            continue
        ins = [TensorType(v.type.concrete(env), v.type.dtype) for v in n.inputs]
        out = TensorType(n.out.type.concrete(env), n.out.type.dtype)
        in_bytes = []
        for v, t in zip(n.inputs, ins, strict=True):
            p = root.param_of(v)
            in_bytes.append(p.storage_bytes() if p else float(t.numel() * DTYPE_BYTES[t.dtype]))
        c = od.cost(ins, out, n.attrs, in_bytes)
        total = total + c
    return total.flops * 1e-3 + total.bytes


def pruned_lengths(graph: Graph, prompt: int) -> dict[str, int]:
    """The row count each ``gather_rows`` symbol takes for a ``prompt``-token prompt (batch of
    equal prompts), and per layer ``i`` the prompt rows its cache holds (``kept_i``)."""
    out: dict[str, int] = {}
    rows = prompt
    keep_of: dict[int, float] = {}
    for _, n in graph.walk():
        if n.op == "keep_rows" and isinstance(n.attrs, KeepRowsAttrs):
            a = n.attrs
            total = prompt if a.total else rows
            k = keep_count(a.keep, total)
            forced = a.recent + (1 if a.sink else 0)
            rows = max(min(rows, max(k, forced)), 1)
            layer = layer_of(n.scope) if n.scope else None
            if layer is not None:
                keep_of[layer] = rows
        elif n.op == "gather_rows":
            out[n.attrs.length] = rows
    return {**out, **{f"kept_{i}": r for i, r in keep_of.items()}}


def _stage_env(graph: Graph, sc: Scenario, stage: str) -> dict[str, int]:
    env = sc.env(stage)
    lengths = pruned_lengths(graph, sc.prompt)
    if stage == "prefill":
        env.update({k: v for k, v in lengths.items() if not k.startswith("kept_")})
        return complete_env(graph, env)
    # decode: dense rows; layer i's cache holds the prompt rows it kept plus the generated ones
    kept = {int(k[5:]): v for k, v in lengths.items() if k.startswith("kept_")}
    if kept:
        for v in graph.inputs:
            if v.name.startswith("past_k_"):
                rows = _kept_before(kept, int(v.name[len("past_k_") :]), sc.prompt)
                for s in v.type.symbols():
                    if s.startswith("past_"):
                        env[s] = rows + sc.decode // 2
    for k in lengths:
        if not k.startswith("kept_"):
            env.setdefault(k, 1)
    return complete_env(graph, env)


def _kept_before(kept: Mapping[int, int], layer: int, prompt: int) -> int:
    earlier = [i for i in kept if i <= layer]
    return kept[max(earlier)] if earlier else prompt


def _kv_cache(graph: Graph, sc: Scenario, lengths: Mapping[str, int]) -> dict[str, Any]:
    kept = {int(k[5:]): v for k, v in lengths.items() if k.startswith("kept_")}
    nbytes = 0.0
    bits = None
    layers = 0
    for v in graph.inputs:
        if not v.name.startswith(_KV_INPUT):
            continue
        i = int(v.name.rsplit("_", 1)[1])
        rows = _kept_before(kept, i, sc.prompt) + sc.decode
        env = {"batch": sc.batch, "past": rows, **{s: rows for s in v.type.symbols()}}
        env["batch"] = sc.batch
        native = 8 * DTYPE_BYTES[v.type.dtype]
        bits = sc.kv_bits or native
        numel = TensorType(v.type.concrete(env), v.type.dtype).numel()
        nbytes += numel * bits / 8
        layers += v.name.startswith("past_k")
    return {
        "bytes": nbytes,
        "bits": bits,
        "tokens": sc.prompt + sc.decode,
        "batch": sc.batch,
        "layers": layers,
    }


def analyze(
    graph: Graph,
    spec: Any,
    scenario: Scenario,
    *,
    model: str = "",
    target: str = "",
    memory_level: str = "auto",
) -> RooflineReport:
    """The roofline of ``graph`` (an LM-ABI graph; architecture-only is fine) on ``spec``;
    ``memory_level`` (``auto``, ``dram``, ``llc``) picks the bandwidth (:func:`memory_level`)."""
    rows: list[Row] = []
    totals: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    weights = 0.0
    seen: set[str] = set()
    for p in graph.params.values():
        if p.name not in seen:
            seen.add(p.name)
            weights += p.storage_bytes()
    lengths = pruned_lengths(graph, scenario.prompt)
    kv = _kv_cache(graph, scenario, lengths)
    by_stage: dict[str, list[Row]] = {}
    for stage in STAGES:
        # a request's prefill is generation's: the head runs on the last prompt row only
        g = (last_row_graph(graph) or graph) if stage == "prefill" else graph
        w = _Walker(g, spec, scenario, stage, float(spec.mem_bandwidth))
        env = _stage_env(graph, scenario, stage)
        w.walk(g, env, 1.0)
        stage_rows = sorted(w.rows.values(), key=lambda r: (r.layer is not None, r.layer or 0))
        # rows outside the layers: before the first layer (embed) first, after it (head) last
        head = [r for r in stage_rows if r.layer is None and r.group in ("embed",)]
        tail = [r for r in stage_rows if r.layer is None and r.group not in ("embed",)]
        mid = [r for r in stage_rows if r.layer is not None]
        by_stage[stage] = head + mid + tail
    # what stays resident between steps: everything one decode step reads (the weights it reads,
    # one row of an embedding table, the KV cache, its activations)
    working_set = sum(r.bytes_read for r in by_stage["decode"])
    level, bandwidth = _memory_level(spec, working_set, memory_level)
    for stage in STAGES:
        stage_rows = by_stage[stage]
        for r in stage_rows:
            r.bandwidth = bandwidth
        rows.extend(stage_rows)
        t = sum(r.time_ms for r in stage_rows)
        fl = sum(r.flops for r in stage_rows)
        nb = sum(r.bytes for r in stage_rows)
        tokens = scenario.batch * (scenario.prompt if stage == "prefill" else 1)
        totals[stage] = {
            "flops": fl,
            "bytes": nb,
            "weight_bytes": sum(r.weight_bytes for r in stage_rows),
            "kv_bytes": sum(r.kv_bytes for r in stage_rows),
            "time_ms": t,
            "compute_bound_ms": sum(r.time_ms for r in stage_rows if r.bound == "compute"),
            "tokens_per_s": 1e3 * tokens / t if t else math.inf,
            "memory_level": level,
            "bandwidth": bandwidth,
            "working_set_bytes": working_set,
        }
    totals["decode"]["ms_per_token"] = totals["decode"]["time_ms"]
    totals["request_ms"] = (
        totals["prefill"]["time_ms"] + scenario.decode * totals["decode"]["time_ms"]
    )
    totals["weight_bytes"] = weights
    if level == "LLC":
        notes.append(
            f"memory level LLC: a decode step's reads ({working_set / 2**20:.1f} MiB) fit in the "
            f"last-level cache ({spec.llc_bytes / 2**20:.0f} MiB), read at "
            f"{bandwidth / 1e9:.1f} GB/s (DRAM {spec.mem_bandwidth / 1e9:.1f} GB/s); a VM's cache "
            "is shared with other tenants"
        )
    elif level == "LLC+DRAM":
        notes.append(
            f"memory level LLC+DRAM: a decode step's reads ({working_set / 2**20:.1f} MiB) exceed "
            f"the last-level cache ({spec.llc_bytes / 2**20:.0f} MiB); the cache's share is read at "
            f"{spec.llc_bandwidth / 1e9:.1f} GB/s, the rest at DRAM's "
            f"{spec.mem_bandwidth / 1e9:.1f} GB/s: {bandwidth / 1e9:.1f} GB/s in all "
            "(--memory-level dram for DRAM alone)"
        )
    if spec.mem_bytes and weights + kv["bytes"] > spec.mem_bytes:
        notes.append(
            f"weights ({weights / 2**30:.1f} GiB) + KV cache ({kv['bytes'] / 2**30:.1f} GiB) "
            f"exceed the target's memory ({spec.mem_bytes / 2**30:.1f} GiB)"
        )
    if any(op == "cond" for op in (n.op for _, n in graph.walk())) and scenario.skip_rate is None:
        notes.append("ffn-skip graph: decode charged with no skipping (give --skip-rate)")
    spec_d = {
        "peak_flops": dict(spec.peak_flops),
        "mem_bandwidth": spec.mem_bandwidth,
        "mem_bytes": spec.mem_bytes,
        "llc_bytes": float(getattr(spec, "llc_bytes", 0.0) or 0.0),
        "llc_bandwidth": float(getattr(spec, "llc_bandwidth", 0.0) or 0.0),
        "source": spec.source,
    }
    return RooflineReport(model, target, scenario, spec_d, rows, totals, kv, None, notes)


# ----------------------------------------------------------------------------------------------
# measured efficiency: the roofline corrected by factors fitted on a real machine

#: the kernel classes ``bench/roofline_validate.py`` fits one efficiency factor per stage for
KERNEL_CLASSES = ("f32", "int8 weight-only", "int4 weight-only", "int8 x int8", "N:M sparse")


def kernel_class(graph: Graph) -> str:
    """The class of the kernels the passes introduced: ``int8 x int8`` when any linear takes int8
    activations, else the first of N:M sparse, int4, int8 weight-only that any matrix weight is
    stored as, else ``f32`` (dense). A part left dense (a tied ``lm_head``, the embedding) does
    not change the class: the factors are fitted on such whole models."""
    if any(n.op in _INT8_ACT_OPS for _, n in graph.walk()):
        return "int8 x int8"
    found: set[str] = set()
    for p in graph.params.values():
        fmt = p.format
        if len(p.type.shape) != 2 or fmt.is_dense:
            continue
        if fmt.sparsity is not None and fmt.sparsity.kind == "nm":
            found.add("N:M sparse")
        elif fmt.quant is not None:
            found.add("int4 weight-only" if fmt.quant.bits <= 4 else "int8 weight-only")
    for cls in ("N:M sparse", "int4 weight-only", "int8 weight-only"):
        if cls in found:
            return cls
    return "f32"


def load_efficiency(path: str | Path) -> dict[str, Any]:
    """Per-kernel-class efficiency factors (measured / roofline time, per stage) from a JSON file:
    ``bench/roofline_validate.json`` (its ``efficiency_by_kernel_class``) or a plain
    ``{class: {"prefill": f, "decode": f}}`` mapping. Returns ``{"factors", "source"}``."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise RooflineError(f"--efficiency {path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise RooflineError(f"--efficiency {path}: not JSON ({e})") from None
    table = doc.get("efficiency_by_kernel_class", doc) if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise RooflineError(f"--efficiency {path}: expected {{kernel class: {{stage: factor}}}}")
    factors: dict[str, dict[str, float]] = {}
    for cls, by_stage in table.items():
        if cls not in KERNEL_CLASSES:
            raise RooflineError(
                f"--efficiency {path}: unknown kernel class {cls!r} ({', '.join(KERNEL_CLASSES)})"
            )
        if not isinstance(by_stage, dict) or set(by_stage) != set(STAGES):
            raise RooflineError(f"--efficiency {path}: {cls!r} needs prefill and decode factors")
        for stage, f in by_stage.items():
            if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 10:
                raise RooflineError(
                    f"--efficiency {path}: {cls!r} {stage} factor must be a number in (0, 10)"
                )
        factors[cls] = {st: float(by_stage[st]) for st in STAGES}
    where = ", ".join(str(doc[k]) for k in ("machine", "date") if isinstance(doc.get(k), str))
    return {"factors": factors, "source": f"{path}" + (f" ({where})" if where else "")}


def calibrate(report: RooflineReport, graph: Graph, efficiency: Mapping[str, Any]) -> None:
    """Add the measured-efficiency estimate to ``report``: each stage's roofline time divided by
    the factor fitted for ``graph``'s kernel class. The roofline rows stay as they are (the factor
    is fitted on whole stages, not per op group); a class the file lacks is a note, not a guess."""
    cls = kernel_class(graph)
    f = efficiency["factors"].get(cls)
    if f is None:
        report.notes.append(
            f"no efficiency factor for {cls} kernels in {efficiency['source']}: roofline only"
        )
        return
    pre = report.totals["prefill"]["time_ms"] / f["prefill"]
    dec = report.totals["decode"]["time_ms"] / f["decode"]
    report.calibration = {
        "kernel_class": cls,
        "factors": dict(f),
        "source": efficiency["source"],
        "prefill_ms": pre,
        "decode_ms_per_token": dec,
        "decode_tokens_per_s": 1e3 * report.scenario.batch / dec if dec else math.inf,
        "request_ms": pre + report.scenario.decode * dec,
    }


# ----------------------------------------------------------------------------------------------
# the chart


def plot(report: RooflineReport, path: str | Path) -> None:
    """A roofline chart per stage (log-log: FLOP/byte against FLOP/s) with each op group (summed
    over layers) placed on it, marker area proportional to its share of the stage's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = report.spec
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, stage in zip(axes, STAGES, strict=True):
        bw = report.totals[stage].get("bandwidth", spec["mem_bandwidth"])
        groups = [g for g in report.groups(stage) if g.flops > 0 and g.bytes > 0]
        ais = [g.intensity for g in groups] or [1.0]
        lo = min(min(ais) / 4, 0.05)
        peaks = sorted({g.peak_dtype for g in groups} or {"f32"})
        hi = max(max(ais) * 4, max(spec["peak_flops"][p] for p in peaks) / bw * 4)
        xs = [lo, hi]
        for p in peaks:
            peak = spec["peak_flops"][p]
            ridge = peak / bw
            ax.plot(
                [lo, ridge, hi],
                [lo * bw, peak, peak],
                lw=1.6,
                label=f"{p}: {peak / 1e12:.3g} TFLOP/s, {bw / 1e9:.0f} GB/s",
            )
        tot = report.totals[stage]["time_ms"] or 1.0
        # groups at the same point (q/k/v/o projections, gate/up/down) share one marker
        points: list[tuple[float, float, float, list[str]]] = []
        for g in groups:
            perf = g.flops / (g.time_ms / 1e3) if g.time_ms else 0.0
            share = g.time_ms / tot
            for i, (x, y, sh, names) in enumerate(points):
                if abs(math.log(x / g.intensity)) < 0.03 and abs(math.log(y / perf)) < 0.03:
                    points[i] = (x, y, sh + share, [*names, g.group])
                    break
            else:
                points.append((g.intensity, perf, share, [g.group]))
        cmap = plt.get_cmap("tab20")
        for i, (x, y, share, names) in enumerate(points):
            ax.scatter(
                [x],
                [y],
                s=25 + 500 * share,
                alpha=0.75,
                color=cmap(i % 20),
                edgecolors="black",
                linewidths=0.4,
                label=f"{', '.join(names)} ({100 * share:.0f}%)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*xs)
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("attainable FLOP/s")
        sc = report.scenario
        what = f"prompt {sc.prompt}" if stage == "prefill" else f"cache {sc.env('decode')['past']}"
        ax.set_title(
            f"{stage}: {report.model} on {report.target} (batch {sc.batch}, {what})", fontsize=9
        )
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6.5, loc="upper left", framealpha=0.85, markerscale=0.5)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def write_outputs(
    report: RooflineReport, *, csv_path: str | None = None, plot_path: str | None = None
) -> list[str]:
    """Write the CSV and the chart atomically (a failure leaves no half-written file)."""
    import os
    import tempfile

    written = []
    for path, fn in ((csv_path, "csv"), (plot_path, "plot")):
        if not path:
            continue
        p = Path(path)
        if not p.parent.exists():
            raise RooflineError(f"--{fn}: folder {p.parent} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=".llmc-", suffix=p.suffix or ".tmp", dir=p.parent)
        os.close(fd)
        try:
            if fn == "csv":
                Path(tmp).write_text(report.to_csv())
            else:
                plot(report, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets, not reports
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(str(p))
    return written


def simulator_summary(graph: Graph, arch: Any, sc: Scenario) -> dict[str, Any]:
    """The FPGA cycle simulator's prediction for the same request (batch 1)."""
    from llmc.fpga.sim import simulate

    rep = simulate(graph, arch, max(sc.prompt, 1), sc.decode, storage=False, skip_rate=sc.skip_rate)
    return {
        "target": rep.target,
        "prefill_ms": rep.prefill_ms,
        "decode_ms_per_token": rep.decode_ms_per_token,
        "decode_tokens_per_s": rep.decode_tokens_per_s,
        "total_ms": rep.total_ms,
        "hbm_bandwidth_utilization": rep.hbm_bandwidth_utilization,
    }


__all__ = [
    "CSV_FIELDS",
    "MEMORY_LEVELS",
    "Row",
    "RooflineError",
    "RooflineReport",
    "Scenario",
    "analyze",
    "group_of",
    "memory_level",
    "plot",
    "pruned_lengths",
    "simulator_summary",
    "write_outputs",
]
