"""End-to-end performance simulation of prefill + decode, and instruction storage accounting.

:func:`simulate` compiles the streams a run needs (prefill chunks, one decode stream per length
bucket touched), runs each once on the cycle model (a stream's timing does not depend on which
position of its bucket runs it) and weights decode buckets by how many generated tokens fall in
them.

FFN-skip (a graph compiled with ``ffn-skip``: one ``BR`` per skippable FFN block) is charged
for the blocks that run only. ``skip_rate`` R, when there is no data, has each decode token skip
``R x num_layers`` FFN blocks (the definition of ``ffn_skip_fraction``): the *last* skippable
blocks, as the greedy rule skips every block after the first saturated one; a fractional count
is a mix of the two neighbouring counts over the tokens. :func:`replay` charges a recorded run
instead: the streams the functional simulator ran, each with the branches it took.

Instruction storage (:func:`instruction_storage`): with length-adaptive compilation the device
keeps one stream per prefill chunk and one per decode bucket; without it, one stream per exact
prompt length and per exact decode length. Decode stream sizes are affine in the number of
``mask_block`` key blocks (checked on three lengths; every bucket is counted when not); prompt
streams of exact length ``L`` are counted as the chunks they run.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmc.errors import LlmcError
from llmc.fpga import isa
from llmc.fpga.arch import FpgaArch
from llmc.fpga.fold import FullCosts, costs_for, foldable
from llmc.fpga.perf import PerfModel, StreamPerf
from llmc.fpga.program import Program, build_program
from llmc.ir.graph import Graph


@dataclass
class SimReport:
    """Simulated performance of one model on one board (times in ms, rates per second)."""

    model: str
    target: str
    prefill_tokens: int
    decode_tokens: int
    prefill_ms: float
    decode_ms_per_token: float
    decode_tokens_per_s: float
    total_ms: float
    dsp_utilization: float
    mpe_utilization: dict[str, float]
    hbm_bandwidth_utilization: float
    instruction_bytes: int
    instruction_storage: dict[str, Any]
    memory: dict[str, Any]
    breakdown: dict[str, Any]
    streams: dict[str, Any]
    arch: dict[str, Any]
    sim_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "prefill_ms": self.prefill_ms,
            "decode_ms_per_token": self.decode_ms_per_token,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "total_ms": self.total_ms,
            "dsp_utilization": self.dsp_utilization,
            "mpe_utilization": self.mpe_utilization,
            "hbm_bandwidth_utilization": self.hbm_bandwidth_utilization,
            "instruction_bytes": self.instruction_bytes,
            "instruction_storage": self.instruction_storage,
            "memory": self.memory,
            "breakdown": self.breakdown,
            "streams": self.streams,
            "arch": self.arch,
            "sim_seconds": self.sim_seconds,
            "notes": self.notes,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=float)

    def summary(self) -> str:
        lines = [
            f"{self.model} on {self.target}: prompt {self.prefill_tokens}, generate {self.decode_tokens}",
            f"  prefill        {self.prefill_ms:10.2f} ms",
            f"  decode         {self.decode_ms_per_token:10.3f} ms/token  "
            f"({self.decode_tokens_per_s:.1f} tokens/s)",
            f"  total          {self.total_ms:10.1f} ms",
            f"  DSP util       {100 * self.dsp_utilization:9.1f} %  (MPE: prefill "
            f"{100 * self.mpe_utilization['prefill']:.1f} %, decode "
            f"{100 * self.mpe_utilization['decode']:.1f} %)",
            f"  HBM bandwidth  {100 * self.hbm_bandwidth_utilization:9.1f} % of peak (decode)",
            f"  instructions   {self.instruction_bytes / 1e6:10.2f} MB bucketed"
            + (
                f", {self.instruction_storage['unbucketed_bytes'] / 1e6:.1f} MB without "
                f"({self.instruction_storage['ratio']:.0f}x)"
                if self.instruction_storage.get("unbucketed_bytes")
                else ""
            ),
        ]
        return "\n".join(lines)


#: Arch fields that only time the instruction streams (the perf model reads them), never shape
#: them: two boards that differ only here run the same streams (tests/fpga/test_sim_cache.py
#: lowers every stream under each override and compares the encodings).
TIMING_KEYS = frozenset(
    {
        "description",
        "board",
        "clock_mhz",
        "dsp.total",
        "dsp.chain_fill_cycles",
        "dsp.reduction_latency",
        "sfu_latency",
        "hbm.bandwidth_gbs",
        "hbm.eff_same",
        "hbm.eff_cross",
        "hbm.latency_ns",
        "ddr.bandwidth_gbs",
        "ddr.efficiency",
        "issue_cycles",
        "power_w",
        "price_usd",
    }
)


def structure_key(arch: FpgaArch) -> tuple[Any, ...]:
    """What the lowered streams of a board depend on: every field but :data:`TIMING_KEYS`."""
    return tuple((k, repr(v)) for k, v in sorted(arch.to_dict().items()) if k not in TIMING_KEYS)


class SimCache:
    """Lowered programs shared between simulations of one graph on boards of the same structure
    (design-space sweeps over clock, bandwidth, DSP budget, ...): a hit re-times the streams
    with the new board's perf model instead of lowering them again."""

    def __init__(self) -> None:
        self._progs: dict[tuple[int, tuple[Any, ...]], tuple[Program, dict[int, Program]]] = {}

    def program(self, graph: Graph, arch: FpgaArch) -> tuple[Program, dict[int, Program]]:
        import dataclasses

        key = (id(graph), structure_key(arch))
        got = self._progs.get(key)
        if got is None:
            got = (build_program(graph, arch), {})
            self._progs[key] = got
        prog, small = got
        if prog.arch is arch:
            return prog, small
        # the same streams (shared ``_streams`` dicts), timed on ``arch``
        return dataclasses.replace(prog, arch=arch), {
            k: dataclasses.replace(p, arch=arch) for k, p in small.items()
        }


def simulate(
    graph: Graph | Program,
    arch: FpgaArch,
    prefill: int = 128,
    decode: int = 512,
    *,
    storage: bool = True,
    fold: bool = True,
    skip_rate: float | None = None,
    cache: SimCache | None = None,
) -> SimReport:
    """Simulate a prompt of ``prefill`` tokens followed by ``decode`` generated tokens.

    ``graph`` is an LM-ABI graph (architecture-only models are fine: only shapes and storage
    formats are read) or a :class:`Program` already built for ``arch``. ``storage`` adds the
    instruction storage with and without length buckets. ``fold`` derives the streams of a model
    with identical layers from its 2-, 3- and 4-layer copies (:mod:`llmc.fpga.fold`), checked per
    stream; ``fold=False`` lowers and simulates every stream of the whole model. ``skip_rate``:
    the fraction of decode FFN blocks an ffn-skip graph skips (module docstring).
    """
    t0 = time.perf_counter()
    small: dict[int, Program] | None = None
    if isinstance(graph, Program):
        prog = graph
    elif cache is not None:
        prog, small = cache.program(graph, arch)
    else:
        prog = build_program(graph, arch)
    a = prog.arch
    if prefill < 1 or decode < 0:
        raise LlmcError(f"prefill must be >= 1 and decode >= 0 tokens, got {prefill} and {decode}")
    if prefill + decode > a.max_tokens:
        raise LlmcError(
            f"prompt {prefill} + generated {decode} tokens exceed the accelerator's max_tokens "
            f"({a.max_tokens}); raise it with --set max_tokens=N"
        )
    pm = PerfModel(a)
    clk = a.clock_hz
    costs = costs_for(prog, pm, fold=fold, small=small)
    if cache is not None and small is not None and not small and hasattr(costs, "small"):
        cache.program(prog.graph, a)[1].update(costs.small)  # keep the folded copies too
    run_streams: dict[tuple[str, int], StreamPerf] = {}

    def perf(stage: str, b: int) -> StreamPerf:
        key = (stage, b)
        if key not in run_streams:
            run_streams[key] = costs.perf(stage, b)
        return run_streams[key]

    if prog.prune is not None:  # token pruning: segment chunks and top-k streams
        keys = prog.prune.prefill_streams(prefill, a.prefill_bucket)
        prog.prefill_chunks(prefill)  # (checks the length)
        chunks = sum(1 for st, _ in keys if st.startswith("pseg"))
        pre = [perf(st, b) for st, b in keys]
    else:
        chunks = prog.prefill_chunks(prefill)
        pre = [perf("prefill", c) for c in range(chunks)]
    pre_cycles = sum(p.cycles for p in pre)
    dec_count = Counter(prog.decode_bucket(prefill + j + 1) for j in range(decode))
    dec = {b: perf("decode", b) for b in sorted(dec_count)}
    notes = []
    if skip_rate is not None:
        mixes = {b: skip_mix(prog, b, skip_rate) for b in dec}
        dec = {
            b: mix_perf([(w, costs.perf("decode", b, t)) for w, t in m]) for b, m in mixes.items()
        }
        notes.append(
            f"ffn-skip: {skip_rate:g} of the decode FFN blocks skipped (the last skippable ones "
            "per token); prefill runs every block"
        )
    dec_cycles = sum(dec[b].cycles * n for b, n in dec_count.items())
    prefill_ms = pre_cycles / clk * 1e3
    decode_ms = dec_cycles / clk * 1e3
    per_tok = decode_ms / decode if decode else 0.0

    capacity = a.dsps_needed() * a.dsp.macs_per_dsp  # MACs per cycle of the instantiated DSPs
    pre_mac = sum(p.useful_macs for p in pre)
    dec_mac = sum(dec[b].useful_macs * n for b, n in dec_count.items())
    total_cycles = pre_cycles + dec_cycles
    dsp_util = (pre_mac + dec_mac) / (total_cycles * capacity) if total_cycles else 0.0
    mpe_util = {
        "prefill": pre_mac / (pre_cycles * a.cores * a.mm_macs) if pre_cycles else 0.0,
        "decode": dec_mac / (dec_cycles * a.cores * a.mv_macs) if dec_cycles else 0.0,
    }
    peak_bw = a.hbm.bandwidth_gbs * 1e9
    dec_hbm = sum(dec[b].hbm_bytes * n for b, n in dec_count.items())
    pre_hbm = sum(p.hbm_bytes for p in pre)
    bw_dec = dec_hbm / (decode_ms / 1e3) / peak_bw if decode_ms else 0.0
    bw_pre = pre_hbm / (prefill_ms / 1e3) / peak_bw if prefill_ms else 0.0

    acc: dict[str, Any] = {}
    for p in pre:
        p.scaled_into(acc, 1.0)
    for b, n in dec_count.items():
        dec[b].scaled_into(acc, float(n))
    ms = 1e3 / clk
    by_op = {
        k: {"count": int(v[0]), "busy_ms": v[1] * ms, "mbytes": v[2] / 1e6}
        for k, v in sorted(acc.get("by_op", {}).items())
    }
    by_layer = {
        k: {u: v[i] * ms for i, u in enumerate(isa.UNIT_NAMES)}
        for k, v in sorted(acc.get("by_layer", {}).items(), key=lambda kv: _layer_key(kv[0]))
    }
    used_bytes = int(sum(p.instrs for p in run_streams.values())) * isa.INSTR_BYTES
    store = instruction_storage(prog, costs) if storage else {}
    why_not = foldable(prog)
    if fold and why_not is None:
        n_fb = sum(1 for k in run_streams if k in getattr(costs, "fallbacks", ()))
        notes.append(
            f"layer folding: {len(run_streams) - n_fb} of {len(run_streams)} streams derived from "
            f"the 2-, 3- and 4-layer copies, {n_fb} simulated in full"
        )
    elif fold:
        notes.append(f"layer folding off: {why_not}")
    if prog.prune is not None:
        notes.append(
            f"token pruning: {prog.prune.K} pruning points, rows per segment "
            f"{prog.prune.counts(prefill)} (llmc.fpga.prune); decode steps are charged at the "
            "longest layer's bucket"
        )
    if prog.hw_bytes("weight", "ddr"):
        notes.append(
            f"{prog.hw_bytes('weight', 'ddr') / 2**30:.2f} GiB of weights spill to DDR "
            f"({a.ddr.bandwidth_gbs:g} GB/s): HBM holds {a.hbm.capacity_bytes / 2**30:.1f} GiB"
        )
    return SimReport(
        model=prog.graph.name,
        target=a.name,
        prefill_tokens=prefill,
        decode_tokens=decode,
        prefill_ms=prefill_ms,
        decode_ms_per_token=per_tok,
        decode_tokens_per_s=1e3 / per_tok if per_tok else 0.0,
        total_ms=prefill_ms + decode_ms,
        dsp_utilization=dsp_util,
        mpe_utilization=mpe_util,
        hbm_bandwidth_utilization=bw_dec if decode else bw_pre,
        instruction_bytes=int(store.get("bucketed_bytes", used_bytes)),
        instruction_storage={"run_bytes": used_bytes, **store},
        memory=memory_summary(prog),
        breakdown={
            "by_instruction": by_op,
            "by_layer_ms": by_layer,
            "prefill_bandwidth_utilization": bw_pre,
            "decode_bandwidth_utilization": bw_dec,
            "decode_ms_by_bucket": {str(b): dec[b].cycles * ms for b in sorted(dec_count)},
            "decode_tokens_by_bucket": {str(b): n for b, n in sorted(dec_count.items())},
        },
        streams={
            "prefill_chunks": chunks,
            "decode_buckets": len(dec_count),
            "instructions_per_decode_token": sum(dec[b].instrs * n for b, n in dec_count.items())
            / max(decode, 1),
        },
        arch=a.to_dict(),
        sim_seconds=time.perf_counter() - t0,
        notes=notes,
    )


def branches(instrs: list[isa.Instr]) -> list[int]:
    """Indices of the stream's ``BR`` instructions (one per skippable FFN block), in order."""
    return [j for j, ins in enumerate(instrs) if ins.op == isa.BR]


def skip_mix(prog: Program, bucket: int, rate: float) -> list[tuple[float, tuple[int, ...]]]:
    """``(weight, taken branches)`` of a decode stream at skip rate ``rate``: each token skips
    ``rate x num_layers`` blocks, the last skippable ones (a fraction: two neighbouring counts)."""
    brs = branches(prog.stream("decode", bucket).instrs)
    layers = int(prog.graph.meta.get("num_layers") or 0)
    if not brs or not layers:
        raise LlmcError(
            "--skip-rate: the model skips no FFN block (no predicated branch in its streams); "
            "compile it with --passes ffn-skip:..."
        )
    if not 0 <= rate <= len(brs) / layers:
        raise LlmcError(
            f"--skip-rate {rate:g}: this model can skip at most {len(brs)} of its {layers} FFN "
            f"blocks per token ({len(brs) / layers:.4g}); give a rate in [0, "
            f"{len(brs) / layers:.4g}]"
        )
    want = rate * layers
    lo = min(int(math.floor(want + 1e-9)), len(brs))
    frac = want - lo if lo < len(brs) else 0.0

    def last(k: int) -> tuple[int, ...]:
        return tuple(brs[len(brs) - k :]) if k else ()

    out = [(1.0 - frac, last(lo))]
    if frac > 1e-9:
        out.append((frac, last(lo + 1)))
    return out


def mix_perf(parts: list[tuple[float, StreamPerf]]) -> StreamPerf:
    """The weighted mean of stream runs (weights summing to 1): what one run costs on average."""
    if len(parts) == 1:
        return parts[0][1]
    acc: dict[str, Any] = {}
    for w, p in parts:
        p.scaled_into(acc, w)
    return StreamPerf(
        cycles=sum(w * p.cycles for w, p in parts),  # type: ignore[arg-type]
        instrs=sum(w * p.instrs for w, p in parts),  # type: ignore[arg-type]
        busy=[sum(w * p.busy[u] for w, p in parts) for u in range(4)],  # type: ignore[misc]
        useful_macs=sum(w * p.useful_macs for w, p in parts),
        hbm_bytes=sum(w * p.hbm_bytes for w, p in parts),
        ddr_bytes=sum(w * p.ddr_bytes for w, p in parts),
        by_op=acc.get("by_op", {}),
        by_layer=acc.get("by_layer", {}),
        end=sum(w * p.end for w, p in parts),
    )


def replay(prog: Program, trace: list[tuple[str, int, list[int]]]) -> dict[str, Any]:
    """The cycle model's time for a recorded run (:attr:`llmc.fpga.funcsim.FuncRunner.trace`):
    every stream the run executed, charged with the branches it took. Returns
    ``fpga_prefill_ms``, ``fpga_decode_ms_per_token`` (over the decode steps) and
    ``fpga_decode_tokens_per_s``."""
    pm = PerfModel(prog.arch)
    costs = FullCosts(prog, pm)
    ms = {"prefill": 0.0, "decode": 0.0}
    steps = 0
    for stage, bucket, taken in trace:
        key = "decode" if stage == "decode" else "prefill"  # (token pruning: pseg*, psel*)
        ms[key] += costs.perf(stage, bucket, tuple(taken)).cycles / prog.arch.clock_hz * 1e3
        steps += stage == "decode"
    per_tok = ms["decode"] / steps if steps else 0.0
    return {
        "fpga_prefill_ms": ms["prefill"],
        "fpga_decode_ms_per_token": per_tok,
        "fpga_decode_tokens_per_s": 1e3 / per_tok if per_tok else 0.0,
        "fpga_decode_steps": steps,
    }


def _layer_key(k: str) -> tuple[int, Any]:
    if k.startswith("layer "):
        return (1, int(k.split()[1]))
    return (0 if k in ("io", "embed_tokens") else 2, k)


def memory_summary(prog: Program) -> dict[str, Any]:
    g = 2**30
    a = prog.arch
    return {
        "weights_gib": prog.hw_bytes("weight") / g,
        "weights_in_ddr_gib": prog.hw_bytes("weight", "ddr") / g,
        "kv_cache_gib": prog.hw_bytes("kv") / g,
        "tables_and_io_gib": sum(prog.hw_bytes(k) for k in ("table", "vec", "rope", "in", "out"))
        / g,
        "hbm_capacity_gib": a.hbm.capacity_bytes / g,
        "ddr_capacity_gib": a.ddr.capacity_bytes / g,
        "formats": _format_counts(prog),
    }


def _format_counts(prog: Program) -> dict[str, int]:
    c: Counter[str] = Counter(lin.fmt.describe() for lin in prog.linears.values())
    return dict(sorted(c.items()))


def instruction_storage(prog: Program, costs: FullCosts | None = None) -> dict[str, Any]:
    """Bytes of instruction streams with and without length-adaptive compilation.

    Prefill chunk ``c`` attends to ``(c + 1)`` chunks of keys, so, like the decode streams, its
    size is affine in ``c`` where that holds on three chunks (checked); otherwise every chunk is
    compiled."""
    a = prog.arch
    cache = prog.__dict__.setdefault("_storage", {})
    if cache:
        return dict(cache)
    if prog.prune is not None:
        cache.update(_pruned_storage(prog, costs))
        return dict(cache)
    C, dq, mb, mx = a.prefill_bucket, a.decode_bucket, a.mask_block, a.max_tokens
    count = (costs or FullCosts(prog, PerfModel(a))).count
    chunk = _affine_counts(lambda c: count("prefill", c), mx // C)
    nblk = lambda t: math.ceil(t / mb)  # noqa: E731
    pts = sorted({dq, min(mx, max(dq, mb + dq)), mx})
    cnt = {t: count("decode", t) for t in pts}
    affine = len(pts) < 3
    if len(pts) == 3 and nblk(pts[1]) != nblk(pts[0]):
        slope = (cnt[pts[1]] - cnt[pts[0]]) / (nblk(pts[1]) - nblk(pts[0]))
        affine = cnt[pts[2]] == cnt[pts[0]] + slope * (nblk(pts[2]) - nblk(pts[0]))
    if affine and len(pts) >= 2 and nblk(pts[-1]) != nblk(pts[0]):
        slope = (cnt[pts[-1]] - cnt[pts[0]]) / (nblk(pts[-1]) - nblk(pts[0]))
        dec = lambda t: int(round(cnt[pts[0]] + slope * (nblk(t) - nblk(pts[0]))))  # noqa: E731
        method = "affine in key blocks (checked on 3 lengths)"
    else:
        full = {t: count("decode", t) for t in range(dq, mx + 1, dq)}
        dec = lambda t: full[-(-t // dq) * dq]  # noqa: E731
        method = "every bucket compiled"
    B = isa.INSTR_BYTES
    bucketed = (sum(chunk) + sum(dec(t) for t in range(dq, mx + 1, dq))) * B
    prefix = [0]
    for c in chunk:
        prefix.append(prefix[-1] + c)
    unb_prefill = sum(prefix[math.ceil(L / C)] for L in range(1, mx + 1))
    unb_decode = sum(dec(t) for t in range(1, mx + 1))
    unbucketed = (unb_prefill + unb_decode) * B
    out = {
        "bucketed_bytes": bucketed,
        "unbucketed_bytes": unbucketed,
        "ratio": unbucketed / bucketed if bucketed else 0.0,
        "streams_bucketed": len(chunk) + mx // dq,
        "streams_unbucketed": 2 * mx,
        "prefill_chunk_instructions": chunk,
        "decode_count_method": method,
        "bytes_per_instruction": B,
    }
    cache.update(out)
    return dict(out)


def _pruned_storage(prog: Program, costs: FullCosts | None) -> dict[str, Any]:
    """Instruction bytes of a token-pruning program (llmc.fpga.prune): every segment's chunk
    streams, every top-k stream and the decode buckets (counts affine where checked)."""
    a = prog.arch
    count = (costs or FullCosts(prog, PerfModel(a))).count
    n = a.max_tokens // a.prefill_bucket
    plan = prog.prune
    seg = {s: _affine_counts(lambda c, s=s: count(f"pseg{s}", c), n) for s in range(plan.K + 1)}
    sel = {
        k: _affine_counts(lambda b, k=k: count(f"psel{k}", b + 1), n) for k in range(1, plan.K + 1)
    }
    dq = a.decode_bucket
    dec = _affine_counts(lambda i: count("decode", dq * (i + 1)), a.max_tokens // dq)
    B = isa.INSTR_BYTES
    total = sum(map(sum, seg.values())) + sum(map(sum, sel.values())) + sum(dec)
    return {
        "bucketed_bytes": total * B,
        "streams_bucketed": sum(map(len, seg.values())) + sum(map(len, sel.values())) + len(dec),
        "segment_chunk_instructions": {str(s): v for s, v in seg.items()},
        "topk_stream_instructions": {str(k): v for k, v in sel.items()},
        "bytes_per_instruction": B,
    }


def _affine_counts(count: Any, n: int) -> list[int]:
    """``[count(0), ..., count(n - 1)]``, from three points when the counts are affine (checked
    on ``0, 1, 2`` and ``n - 1``), else by counting each."""
    if n <= 4:
        return [count(i) for i in range(n)]
    c0, c1, c2, last = count(0), count(1), count(2), count(n - 1)
    slope = c1 - c0
    if c2 - c1 == slope and last == c0 + slope * (n - 1):
        return [c0 + slope * i for i in range(n)]
    return [c0, c1, c2, *(count(i) for i in range(3, n - 1)), last]
