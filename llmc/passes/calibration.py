"""Calibration: data for lossy passes, and layer-by-layer statistics with bounded memory.

**Data.** :class:`Calibration` turns the context's options into input batches: ``calib_samples``
windows of ``calib_seqlen`` tokens from ``calib_file`` (UTF-8 text, encoded with the model's
tokenizer, windows at seeded random offsets) or, by default, from the *train* split of the
embedded corpus (:func:`llmc.data.calibration_samples`) — never from the held-out text that
perplexity is measured on, so quality numbers stay honest. Language-model graphs (``llmc-lm-v1``)
get ``input_ids``, ``positions`` and empty KV caches; other graphs take ``ctx.calib_inputs``.
A model with ``--random-weights`` has no tokenizer: it calibrates on byte ids (text means
nothing to random weights; this exists so that memory and time can be measured).

**Layer by layer.** :func:`run_layerwise` executes the graph one *segment* at a time (a segment
starts where a new decoder layer's scope starts, in
every family's naming: :mod:`llmc.ir.structure`), over every calibration batch, keeping only the
values that cross the segment boundary (the residual stream, positions, ...). While a segment
runs, hooks accumulate statistics of the inputs of the target linears (:class:`InputStats`:
token count, per-channel sum, sum of squares and absolute maximum, and the Hessian ``XᵀX`` when
asked). Then the pass's ``apply`` callback compresses that segment's weights, and the segment is
re-run so the next one is calibrated on the *compressed* model's activations (sequential mode of
GPTQ/SparseGPT). Peak memory is therefore about the boundary activations of all samples, one
segment's intermediates for one batch, and one segment's statistics — never the whole model's
activations or all Hessians at once (the memory blow-up llm-compressor users report).

**Weights, one segment at a time.** When a segment is done, its params are let go of
(:func:`release_params`): their cached dense values (``Param.value``: for a quantized weight, a
dequantized float copy in anonymous memory) are dropped, and their mapped pages (checkpoint
maps, spilled weights: :mod:`llmc.safetensors_io`) leave the process. So a compile holds one
layer's weights at a time, as llm-compressor's sequential onloading does, whatever the model's
size; the values are unchanged (recomputed or faulted back in when read again). The C heap's
freed pages are handed back after each segment too (:func:`trim_heap`), so what one segment
freed does not stay in the process, fragmented, under the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.graph import Graph, Node, regions_of
from llmc.ir.params import Param
from llmc.ir.structure import Structure, complete_env, is_lm
from llmc.passes.base import CalibrationError, PassContext

#: calibration window length when ``--calib-seqlen`` is not given (capped at the model's positions)
DEFAULT_SEQLEN = 256


class Calibration:
    """Calibration batches for one pipeline run (created by ``ctx.calibration()``)."""

    def __init__(self, ctx: PassContext) -> None:
        self.ctx = ctx
        self._tokens: torch.Tensor | None = None
        self.source = ""

    def tokens(self, graph: Graph) -> torch.Tensor:
        """``[calib_samples, calib_seqlen]`` int64 token windows (cached)."""
        if self._tokens is not None:
            return self._tokens
        ctx = self.ctx
        n, length = ctx.calib_samples, ctx.calib_seqlen
        max_pos = int(graph.meta.get("max_position_embeddings", 0) or 0)
        if length is None:  # not given: 256 tokens, or every position of a shorter model
            length = min(DEFAULT_SEQLEN, max_pos) if max_pos else DEFAULT_SEQLEN
        elif max_pos and length > max_pos:
            raise CalibrationError(
                f"--calib-seqlen {length} exceeds the model's {max_pos} positions; "
                f"use --calib-seqlen {max_pos} or less"
            )
        tok = ctx.tokenizer
        vocab = int(graph.meta.get("vocab_size", 0) or 0)
        # bytes are llmc's own encoding (256 ids); any other vocabulary needs its tokenizer,
        # except random weights (--random-weights: no tokenizer, and nothing for text to mean),
        # which calibrate on byte ids, all inside the vocabulary (memory and time measurements)
        random = "random_weights_seed" in graph.meta
        if tok is None and vocab not in (0, 256) and not random:
            raise CalibrationError(
                f"the model has no tokenizer to encode calibration text for its {vocab}-token "
                "vocabulary; load it from a directory that holds its tokenizer files"
            )
        if ctx.calib_file is not None:
            toks = self._file_tokens(Path(ctx.calib_file), tok)
            if toks.numel() < length:
                raise CalibrationError(
                    f"{ctx.calib_file}: calibration text has {toks.numel()} tokens, fewer than "
                    f"one window of --calib-seqlen {length}; give a longer file or a smaller "
                    "--calib-seqlen"
                )
            gen = torch.Generator().manual_seed(ctx.calib_seed)
            starts = torch.randint(0, toks.numel() - length + 1, (n,), generator=gen)
            windows = toks[starts[:, None] + torch.arange(length)[None, :]]
            self.source = f"{ctx.calib_file} ({toks.numel()} tokens)"
        else:
            from llmc import data

            try:
                windows = data.calibration_samples(n, length, seed=ctx.calib_seed, tokenizer=tok)
            except ValueError as e:
                raise CalibrationError(f"calibration data: {e}") from None
            self.source = "llmc.data train split"
        if tok is None and vocab not in (0, 256):
            self.source += " (byte ids: random weights, no tokenizer)"
        if vocab and int(windows.max()) >= vocab:
            raise CalibrationError(
                f"calibration tokens reach id {int(windows.max())} but the model's vocabulary "
                f"has {vocab} ids; pass the model's tokenizer"
            )
        self._tokens = windows.to(torch.int64)
        return self._tokens

    @staticmethod
    def _file_tokens(path: Path, tok: Any) -> torch.Tensor:
        from llmc.data import DataFileError, read_documents

        try:
            docs = read_documents(path, "calibration file")
        except DataFileError as e:
            raise CalibrationError(str(e)) from None
        if tok is None:
            from llmc.tokenizer import ByteTokenizer

            tok = ByteTokenizer()
        return torch.tensor(tok.encode("\n\n".join(docs)), dtype=torch.int64)

    def batches(self, graph: Graph) -> list[dict[str, torch.Tensor]]:
        """Input dicts for ``graph``, ``calib_batch`` samples each."""
        if self.ctx.calib_inputs is not None:
            if not self.ctx.calib_inputs:
                raise CalibrationError("calib_inputs is empty: give at least one input batch")
            if any(v.name == "decode_start" for v in graph.inputs):
                # an ffn-skip graph (LM-ABI optional input): calibrate on what decoding runs
                start = torch.tensor(0, dtype=torch.int64)
                return [{"decode_start": start, **b} for b in self.ctx.calib_inputs]
            return list(self.ctx.calib_inputs)
        if not is_lm(graph):
            raise CalibrationError(
                f"graph @{graph.name} is not a language model (inputs input_ids, positions, ...): "
                "give calibration inputs with PassContext(calib_inputs=[{name: tensor}, ...])"
            )
        windows = self.tokens(graph)
        out = []
        for i in range(0, windows.shape[0], self.ctx.calib_batch):
            ids = windows[i : i + self.ctx.calib_batch]
            out.append(lm_inputs(graph, ids))
        return out


def lm_inputs(graph: Graph, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs of an LM-ABI graph for a full forward of ``ids`` from an empty cache."""
    from llmc.ir.types import to_torch_dtype

    b, s = ids.shape
    env = complete_env(graph, {"batch": b, "seq": s, "past": 0})  # per-layer past_i = 0 too
    out: dict[str, torch.Tensor] = {}
    for v in graph.inputs:
        if v.name == "input_ids":
            out[v.name] = ids
        elif v.name == "positions":
            out[v.name] = torch.arange(s, dtype=torch.int64).expand(b, s).contiguous()
        else:
            try:
                shape = v.type.concrete(env)
            except IRError as e:
                raise CalibrationError(f"cannot build calibration input %{v.name}: {e}") from None
            out[v.name] = torch.zeros(shape, dtype=to_torch_dtype(v.type.dtype))
    return out


# ----------------------------------------------------------------------------------------------
# statistics


@dataclass
class InputStats:
    """Running statistics of one activation matrix ``X [tokens, channels]`` (float64 sums)."""

    channels: int
    hessian: bool = False
    tokens: int = 0
    sum: torch.Tensor | None = None
    sqsum: torch.Tensor | None = None
    absmax: torch.Tensor | None = None
    xtx: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.sum is None:
            c = self.channels
            self.sum = torch.zeros(c, dtype=torch.float64)
            self.sqsum = torch.zeros(c, dtype=torch.float64)
            self.absmax = torch.zeros(c, dtype=torch.float64)
            if self.hessian:
                self.xtx = torch.zeros(c, c, dtype=torch.float64)
        assert self.sum is not None and self.sqsum is not None and self.absmax is not None
        # per-batch reductions in float32, running sums in float64
        self.tokens += xf.shape[0]
        self.sum += xf.sum(0).to(torch.float64)
        self.sqsum += (xf * xf).sum(0).to(torch.float64)
        self.absmax = torch.maximum(self.absmax, xf.abs().amax(0).to(torch.float64))
        if self.xtx is not None:
            self.xtx += (xf.t() @ xf).to(torch.float64)

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ over all calibration tokens (Wanda's activation norm)."""
        assert self.sqsum is not None
        return self.sqsum.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        assert self.sum is not None
        return self.sum / max(self.tokens, 1)

    @property
    def var(self) -> torch.Tensor:
        assert self.sqsum is not None
        m = self.mean
        return (self.sqsum / max(self.tokens, 1) - m * m).clamp_min(0)

    def H(self) -> torch.Tensor:
        """``2 XᵀX / n`` (float32), the layer-wise Hessian of GPTQ/SparseGPT.

        Computed a block of rows at a time: the whole-matrix expression held two float64
        temporaries as large as ``XᵀX`` (1.9 GB for an 11008-wide input)."""
        assert self.xtx is not None, "statistics collected without hessian=True"
        n = max(self.tokens, 1)
        c = self.xtx.shape[0]
        out = torch.empty(c, c, dtype=torch.float32)
        rows = max(1, (1 << 16) // max(c, 1))  # 512 KiB of float64 a block
        for r in range(0, c, rows):
            out[r : r + rows] = (2.0 * self.xtx[r : r + rows] / n).to(torch.float32)
        return out

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.sum, self.sqsum, self.absmax, self.xtx)
            if t is not None
        )


def output_error(w: torch.Tensor, w_new: torch.Tensor, stats: InputStats) -> float:
    """Relative output error ``‖(W - Ŵ)X‖ / ‖WX‖`` on the calibration tokens (from ``XᵀX``)."""
    if stats.xtx is None:
        return float("nan")
    h = stats.xtx
    # a block of rows at a time: float64 temporaries of a whole LM head would be 5x its size
    rows = max(1, (1 << 22) // max(int(w.shape[-1]), 1))
    num = den = 0.0
    for r in range(0, int(w.shape[0]), rows):
        wb = w[r : r + rows].to(torch.float64)
        d = wb - w_new[r : r + rows].to(torch.float64)
        num += float(((d @ h) * d).sum())
        den += float(((wb @ h) * wb).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


def each_target(stats: dict[Node, InputStats], fn: Callable[[Node, InputStats], Any]) -> None:
    """``fn(node, stats)`` for each target of a segment, in order, dropping each
    :class:`InputStats`' ``XᵀX`` as soon as the last node that reads it is done: the Hessians of
    the linears already compressed are not held while the later ones are (at Llama-2-7B widths
    the q/k/v, o and gate/up ``XᵀX`` in float64 are 0.4 GB, held through ``down_proj``'s GPTQ
    before). The values each node sees are unchanged."""
    last = {id(s): n for n, s in stats.items()}
    for n, s in stats.items():
        fn(n, s)
        if last[id(s)] is n:
            s.xtx = None


# ----------------------------------------------------------------------------------------------
# layer-by-layer execution


@dataclass
class Segment:
    index: int
    label: str
    nodes: list[Node]


@dataclass
class LayerwiseInfo:
    segments: int = 0
    batches: int = 0
    tokens: int = 0
    peak_mb: float = 0.0
    seconds: float = 0.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calib_segments": self.segments,
            "calib_batches": self.batches,
            "calib_tokens": self.tokens,
            "calib_peak_activation_mb": round(self.peak_mb, 3),
            "calib_source": self.source,
        }


def segments(graph: Graph) -> list[Segment]:
    """Split the top-level nodes where a new layer begins (:meth:`Structure.segments`)."""
    return [
        Segment(i, label, nodes) for i, (label, nodes) in enumerate(Structure(graph).segments())
    ]


ApplyFn = Callable[[Segment, dict[Node, InputStats]], Any]


def segment_params(graph: Graph, seg: Segment) -> list[Param]:
    """The params ``seg``'s nodes (regions included) read, in first-read order."""
    root = graph.root()
    names: dict[str, None] = {}
    todo = list(seg.nodes)
    while todo:
        n = todo.pop()
        if n.op == "param":
            names[n.attrs.name] = None
        for v in n.inputs:
            if v.node is not None and v.node.op == "param":
                names[v.node.attrs.name] = None
        for r in regions_of(n):
            todo.extend(r.nodes)
    return [root.params[k] for k in names if k in root.params]


def release_params(params: Sequence[Param]) -> None:
    """Let go of ``params``' memory until they are read again: drop their cached dense values
    and their mapped pages (:func:`llmc.safetensors_io.release`). Values are unchanged."""
    from llmc.safetensors_io import release

    for p in params:
        p.invalidate()
        for t in p.data.values():
            release(t)


_libc: Any = None


def trim_heap() -> bool:
    """Free what only the cycle collector frees (``gc.collect()``), then return the C heap's
    free pages to the system (glibc ``malloc_trim(0)``; returns False elsewhere).

    Each segment frees its activations, statistics and Hessians, but glibc keeps freed heap
    memory (blocks under its mmap threshold, up to 32 MiB) in the process, fragmented, and the
    next segment's allocations reuse it only in part: between segments ``RssAnon`` grew by
    ~0.1 GB a segment (TinyLlama w8a8, 4 layers: 527, 645, 770, 770, 868 MB after each segment;
    286-329 MB with a trim after each). It does not lower a compile's peak, which is set inside
    a segment (docs/backends.md). Called once per segment (milliseconds)."""
    global _libc
    import gc

    gc.collect()  # tensors in reference cycles are freed only by the cycle collector
    if _libc is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else False
            _libc = lib if lib and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return bool(_libc and _libc.malloc_trim(0))


def run_layerwise(
    graph: Graph,
    ctx: PassContext,
    targets: Sequence[Node],
    apply: ApplyFn,
    *,
    hessian: bool = False,
    sequential: bool = True,
) -> LayerwiseInfo:
    """Calibrate ``targets`` (nodes whose input 0 is measured) segment by segment.

    ``apply(segment, stats)`` gets the statistics of the targets that ran in ``segment`` (keyed by
    node; nodes sharing an input share one :class:`InputStats`) and compresses their weights.
    With ``sequential`` the segment is then re-run so later segments see the compressed
    activations; otherwise later segments see the dense model's activations.
    """
    import time

    from llmc.runtime.interp import Interpreter

    t0 = time.perf_counter()
    cal = ctx.calibration()
    batches = cal.batches(graph)
    device = torch.device(ctx.device)
    target_ids = {id(n) for n in targets}
    segs = segments(graph)
    seg_of: dict[int, int] = {}
    for s in segs:
        for n in s.nodes:
            seg_of[id(n)] = s.index
    # last segment that reads each value (graph outputs are not needed for calibration)
    last_seg: dict[int, int] = {}
    for s in segs:
        for n in s.nodes:
            for v in n.inputs:
                last_seg[id(v)] = s.index
    # per batch: an interpreter (its symbols bound) and the live values
    rts = []
    states: list[dict[int, torch.Tensor]] = []
    tokens = 0
    for b in batches:
        interp = Interpreter(graph, device=device)
        args = interp.bind({v.name: b[v.name] for v in graph.inputs})
        rts.append(interp)
        states.append({id(v): a for v, a in zip(graph.inputs, args, strict=True)})
        first = args[0]
        tokens += int(first.numel()) if first.dtype == torch.int64 else int(first.shape[0])
    info = LayerwiseInfo(len(segs), len(batches), tokens, source=cal.source)
    peak = 0

    def live_bytes() -> int:
        return sum(t.numel() * t.element_size() for st in states for t in st.values())

    from llmc.console import track

    what = f"{ctx.report.get('pass', 'calibration')} calibrate" if ctx.report else "calibrate"
    with torch.no_grad():
        for seg in track(segs, f"{what} ({len(batches)} batches)"):
            seg_targets = [n for n in seg.nodes if id(n) in target_ids]
            if not seg_targets:
                for rt, st in zip(rts, states, strict=True):
                    _commit(st, _run_segment(seg, st, rt, last_seg, {}), seg, last_seg)
                    peak = max(peak, live_bytes())
                release_params(segment_params(graph, seg))
                trim_heap()
                continue
            stats: dict[int, InputStats] = {}
            by_node: dict[Node, InputStats] = {}
            for n in seg_targets:
                x = n.inputs[0]
                if id(x) not in stats:
                    stats[id(x)] = InputStats(int(x.type.shape[-1]), hessian=hessian)
                by_node[n] = stats[id(x)]
            produced = []
            for rt, st in zip(rts, states, strict=True):
                out = _run_segment(seg, st, rt, last_seg, by_node)
                produced.append(out)
                held = sum(t.numel() * t.element_size() for o in produced for t in o.values())
                peak = max(peak, live_bytes() + held + sum(s.nbytes() for s in stats.values()))
                if sequential:  # outputs are recomputed after apply(); do not hold them
                    produced[-1] = {}
            apply(seg, by_node)
            del stats, by_node
            for i, (rt, st) in enumerate(zip(rts, states, strict=True)):
                # sequential: the next segment sees this one's compressed outputs
                out = _run_segment(seg, st, rt, last_seg, {}) if sequential else produced[i]
                _commit(st, out, seg, last_seg)
                produced[i] = {}
                peak = max(peak, live_bytes())
            release_params(segment_params(graph, seg))
            trim_heap()
    info.peak_mb = peak / 2**20
    info.seconds = time.perf_counter() - t0
    return info


def _run_segment(
    seg: Segment,
    state: dict[int, torch.Tensor],
    interp: Any,
    last_seg: dict[int, int],
    observe: dict[Node, InputStats],
) -> dict[int, torch.Tensor]:
    """Run ``seg`` on one batch (``state`` is not changed); returns the values it produced that
    later segments read. Nodes in ``observe`` have their input 0 accumulated (by the hook)."""

    def hook(n: Node, args: list[torch.Tensor], out: torch.Tensor) -> None:
        st = observe.get(n)
        if st is not None:
            st.add(args[0])

    interp.hook = hook if observe else None
    try:
        return interp.run_nodes(
            seg.nodes, state, keep=lambda v: last_seg.get(id(v), -1) > seg.index
        )
    except IRError as e:
        raise IRError(f"calibration, segment {seg.label}: {e}") from None


def _commit(
    state: dict[int, torch.Tensor],
    produced: dict[int, torch.Tensor],
    seg: Segment,
    last_seg: dict[int, int],
) -> None:
    """Drop values no later segment reads; add what ``seg`` produced."""
    for k in [k for k in state if last_seg.get(k, -1) <= seg.index]:
        del state[k]
    state.update(produced)
