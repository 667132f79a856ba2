"""Shared machinery of the weight-quantization passes (rtn, gptq, w8a8).

Codes are stored one per element in int8 tensors, scales in float32 (or float16, ``scale_dtype``)
``[out, in // group]`` (or
``[out, 1]`` per channel), zero points (asymmetric only) in int8, exactly as
:mod:`llmc.ir.params` defines; the interpreter dequantizes ``(q - zero) * scale``.

Symmetric (default): ``scale = max|w| / qmax`` per group, codes in ``[-qmax, qmax]``
(``qmax = 2**(bits-1) - 1``). Asymmetric: ``scale = (max - min) / (2**bits - 1)`` over the group
range widened to include 0, ``zero = round(-min / scale)``, codes in ``[0, 2**bits - 1]`` (at most
7 bits: codes live in int8).

Group sizes: ``group=0`` is one scale per output channel. A layer whose input width is not a
multiple of ``group`` uses the largest power of two below ``group`` that divides its width (recorded
per layer as ``group``; e.g. ``tiny``'s ``down_proj`` has 704 inputs, so ``group=128`` gives 64 there).
Pruned weights stay zero through quantization (their codes are the zero point).

The LM head (the ``linear`` in block ``head``, which ``exclude`` leaves out by default): with
``head=true`` (the default) the quantization passes quantize it too, at ``head_bits`` (8) by
round-to-nearest, symmetric, whatever the body's method: llama.cpp's q4_0/q4_K files keep
``output.weight`` at q6_K or q8_0 for the same reason (the head's error reaches every logit).
A head *tied* to the embedding table gets its own param (:func:`untie_head`), so the embedding
lookup keeps reading the float table and only the head's matmul reads the quantized copy.

Activation precision (``act_bits``, ``act_group``): recorded in every quantized weight's
:class:`~llmc.ir.params.QuantSpec` (the head's too, as llama.cpp multiplies every quantized
weight with q8 activations); the linear reading the weight then quantizes its input row to int8
per block of ``act_group`` elements (the effective block per layer, chosen like ``group``).
``rtn:bits=4:group=32:act_bits=8`` is llama.cpp's q4_0 x q8_0 arithmetic.

Scale precision (``scale_dtype``): ``f32`` (default) or ``f16``, recorded in every quantized
weight's :class:`~llmc.ir.params.QuantSpec` (the head's too). With ``f16`` each scale is rounded
to half precision before the codes are chosen (:func:`~llmc.ir.params.round_scale`) and stored as
float16: ``rtn:bits=4:group=32:scale_dtype=f16`` stores 0.5625 bytes per weight like llama.cpp's
q4_0 (``bits=8``: 1.0625, q8_0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from llmc.errors import PassError
from llmc.ir.graph import Graph
from llmc.ir.params import (
    ACT_BITS,
    SCALE_DTYPES,
    Param,
    QuantSpec,
    StorageFormat,
    group_count,
    round_scale,
)
from llmc.passes.base import CalibrationError, Pass, PassContext, PassOptionError
from llmc.passes.calibration import InputStats, each_target, output_error, run_layerwise
from llmc.passes.select import DEFAULT_EXCLUDE, Target, matches, module_path, select_linears
from llmc.safetensors_io import keep

#: bits of the LM head when the passes quantize it (``head=true``): llama.cpp's choice class
HEAD_BITS = 8
#: activation block with ``act_bits=8`` and no ``act_group``: llama.cpp's q8_0 block
DEFAULT_ACT_GROUP = 32


def effective_group(in_features: int, group: int) -> int:
    """``group`` if it divides ``in_features``; else the largest power of two below ``group``
    that divides it (what kernels tile well), else the largest divisor. 0: per channel."""
    if group == 0 or group >= in_features:
        return 0 if group == 0 else in_features
    if in_features % group == 0:
        return group
    p = 1 << (group.bit_length() - 1)
    while p > 1:
        if in_features % p == 0 and p <= group:
            return p
        p >>= 1
    for g in range(group, 0, -1):
        if in_features % g == 0:
            return g
    return 1


def qrange(bits: int, sym: bool) -> tuple[int, int]:
    if sym:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def find_params(
    w: torch.Tensor, bits: int, sym: bool, scale_dtype: str = "f32"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale ``[rows, 1]`` (and zero point) for each row of ``w`` (a group of columns). With
    ``scale_dtype="f16"`` the scale is rounded to half precision first (``round_scale``), so the
    zero point and the codes are chosen for the scale actually stored."""
    if sym:
        _, qmax = qrange(bits, True)
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-10) / qmax
        return round_scale(scale, scale_dtype), None
    lo = w.amin(dim=1, keepdim=True).clamp_max(0)
    hi = w.amax(dim=1, keepdim=True).clamp_min(0)
    scale = round_scale(((hi - lo) / (2**bits - 1)).clamp_min(1e-10), scale_dtype)
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_cols(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, sym: bool
) -> torch.Tensor:
    """Integer codes of ``w`` (float tensor of codes) with per-row ``scale``/``zero``."""
    lo, hi = qrange(bits, sym)
    q = torch.round(w / scale)
    if zero is not None:
        q = q + zero
    return q.clamp(lo, hi)


def dequant_cols(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    return (q - zero) * scale if zero is not None else q * scale


#: elements of ``w`` quantized at a time by :func:`rtn_quantize` (16 MB of f32 temporaries)
RTN_CHUNK = 1 << 22


def rtn_quantize(
    w: torch.Tensor,
    bits: int,
    group: int,
    sym: bool,
    keep: torch.Tensor | None = None,
    scale_dtype: str = "f32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest: int8 codes ``[out, in]``, scales ``[out, groups]`` (float32 holding
    half-precision values with ``scale_dtype="f16"``), zeros or None.

    Rows are independent, so they are quantized a block of rows at a time (``RTN_CHUNK``
    elements): the float temporaries stay small whatever the weight's size (a 131M-element
    LM head would otherwise need several f32 copies), and the results are the same bits."""
    out_f, in_f = w.shape
    g = in_f if group == 0 else group
    rows = max(1, RTN_CHUNK // max(in_f, 1))
    codes = torch.empty((out_f, in_f), dtype=torch.int8)
    scales, zeros = [], []
    for r0 in range(0, out_f, rows):
        wc = w[r0 : r0 + rows]
        n = wc.shape[0]
        wg = wc.reshape(n * (in_f // g), g)
        scale, zero = find_params(wg, bits, sym, scale_dtype)
        q = quantize_cols(wg, scale, zero, bits, sym).reshape(n, in_f)
        scale = scale.reshape(n, in_f // g)
        z = zero.reshape(n, in_f // g) if zero is not None else None
        if keep is not None:
            q = torch.where(keep[r0 : r0 + rows], q, _zero_codes(z, g, q))
        codes[r0 : r0 + n] = q.to(torch.int8)
        scales.append(scale)
        if z is not None:
            zeros.append(z)
    scale = torch.cat(scales) if scales else torch.empty((0, in_f // g))
    z = torch.cat(zeros) if zeros else None
    return codes, scale, z


def _zero_codes(zero: torch.Tensor | None, g: int, like: torch.Tensor) -> torch.Tensor:
    if zero is None:
        return torch.zeros_like(like)
    return zero.repeat_interleave(g, dim=1)


def head_targets(graph: Graph, include: tuple[str, ...], body: list[Target]) -> list[Target]:
    """The LM-head linears (block ``head``, weight a 2-D param) that ``body`` does not already
    hold and that ``include`` matches (by weight path or the linear's scope); an already quantized
    head is left alone (an earlier pass quantized it). Call :func:`untie_head` on each before
    changing its weight."""
    taken = {id(t.node) for t in body}
    out: list[Target] = []
    for n in graph.nodes:
        if n.op != "linear" or n.block != "head" or id(n) in taken or len(n.inputs) < 2:
            continue
        p = graph.param_of(n.inputs[1])
        if p is None or len(p.type.shape) != 2 or p.format.quant is not None:
            continue
        path = module_path(p.name)
        if any(matches(path, pat) or matches(n.scope, pat) for pat in include):
            out.append(Target(n, p, path))
    return out


def untie_head(graph: Graph, t: Target) -> Target:
    """Give the head ``t`` its own weight param when another node reads the same param (a head
    tied to the embedding table): a new ``{scope}.weight`` param sharing the float tensor, read by
    a new ``param`` node just before the head. The embedding keeps the original param, so
    quantizing the head's copy leaves the lookup exact. Untied heads are returned as they are."""
    n, p = t.node, t.param
    readers = [
        m for _, m in graph.walk() if m is not n and any(graph.param_of(v) is p for v in m.inputs)
    ]
    if not readers:
        return t
    base = f"{n.scope or 'lm_head'}.weight"
    name, i = base, 1
    while name in graph.root().params:
        name, i = f"{base}.{i}", i + 1
    graph.add_param(Param(name, p.type, p.format, dict(p.data)))
    pn = graph.make_node("param", (), {"name": name}, name=name, scope=n.scope, block=n.block)
    graph.insert_before(n, pn)
    n.inputs = (n.inputs[0], pn.out, *n.inputs[2:])
    if graph.meta.get("tie_word_embeddings"):
        graph.meta["tie_word_embeddings"] = False  # exporters now write the head's own weight
    return Target(n, graph.root().params[name], module_path(name))


def store_quantized(
    p: Param,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    spec: QuantSpec,
) -> None:
    """Write codes/scales into ``p`` (new tensors), keeping its sparsity spec."""
    codes = codes if codes.dtype == torch.int8 else codes.round().to(torch.int8)
    data = {
        "qvalue": keep(codes.contiguous()),  # spilled during a compile (llmc.safetensors_io)
        "scale": scale.to(spec.scale_torch_dtype).contiguous(),  # QuantSpec.scale_dtype
    }
    if zero is not None:
        data["zero"] = zero.round().to(torch.int8).contiguous()
    p.data = data
    p.format = StorageFormat(spec, p.format.sparsity)
    p.invalidate()


@dataclass(frozen=True)
class QuantBase(Pass):
    """Options common to the weight-quantization passes."""

    bits: int = 4
    group: int = 128
    sym: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    # measure each layer's output error on calibration data; default: only when the method
    # reads calibration data anyway (a data-free method stays data-free and fast)
    measure: bool | None = None
    # the LM head too, at head_bits by symmetric RTN (a tied head gets its own copy); false:
    # keep it float (see the module docstring)
    head: bool = True
    head_bits: int = HEAD_BITS
    # activation precision recorded with every weight the pass quantizes (QuantSpec.act_bits):
    # 0 float activations; 8 dynamic symmetric int8 per block of act_group input elements
    # (default 32, llama.cpp's q8_0 block; 0: one scale per row)
    act_bits: int = 0
    act_group: int | None = None
    # the scales' storage (QuantSpec.scale_dtype): f32, or f16 (llama.cpp's q4_0/q8_0 block
    # scale: rounded to half before the codes are chosen, 2 bytes per group instead of 4)
    scale_dtype: str = "f32"

    needs_calibration: ClassVar[bool] = False
    needs_hessian: ClassVar[bool] = False
    method: ClassVar[str] = "rtn"

    def check(self) -> None:
        if isinstance(self.bits, bool) or not 2 <= self.bits <= 8:
            raise PassOptionError(f"bits must be in 2..8, got {self.bits}")
        if self.group < 0:
            raise PassOptionError(
                f"group must be >= 0 (0 = one scale per output channel), got {self.group}"
            )
        if isinstance(self.head_bits, bool) or not 2 <= self.head_bits <= 8:
            raise PassOptionError(f"head_bits must be in 2..8, got {self.head_bits}")
        if isinstance(self.act_bits, bool) or self.act_bits not in ACT_BITS:
            raise PassOptionError(
                f"act_bits must be 0 (float activations) or 8 (dynamic int8), got {self.act_bits}"
            )
        if self.act_group is not None:
            if self.act_bits == 0:
                raise PassOptionError(
                    f"act_group={self.act_group} needs act_bits=8 (activations are float)"
                )
            if self.act_group < 0:
                raise PassOptionError(
                    f"act_group must be >= 0 (0 = one scale per row), got {self.act_group}"
                )
        if self.scale_dtype not in SCALE_DTYPES:
            raise PassOptionError(f"scale_dtype must be f32 or f16, got {self.scale_dtype!r}")
        if not self.sym and self.bits == 8:
            raise PassOptionError(
                "asymmetric 8-bit codes (0..255) do not fit llmc's int8 code storage; "
                "use sym=true for 8 bits"
            )

    def quantize(
        self, w: torch.Tensor, group: int, stats: InputStats | None, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def targets(self, graph: Graph) -> list[Target]:
        ts = select_linears(graph, self.include, self.exclude, pass_name=self.name)
        for t in ts:
            if t.param.format.quant is not None:
                raise PassError(
                    f"{t.path} is already quantized ({t.param.format}); quantize it once"
                )
        return ts

    def _spec(self, t: Target, heads: set[int]) -> QuantSpec:
        g = effective_group(t.in_features, self.group)
        ab = self.act_bits
        ag = effective_group(t.in_features, self._act_group()) if ab else 0
        sd = self.scale_dtype
        if id(t.node) in heads:
            return QuantSpec(self.head_bits, g, True, "rtn", ab, ag, sd)
        return QuantSpec(self.bits, g, self.sym, self.method, ab, ag, sd)

    def _act_group(self) -> int:
        return DEFAULT_ACT_GROUP if self.act_group is None else self.act_group

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = self.targets(graph)
        heads = head_targets(graph, self.include, targets) if self.head else []
        bytes_before = sum(t.param.storage_bytes() for t in targets + heads)
        heads = [untie_head(graph, t) for t in heads]
        head_ids = {id(t.node) for t in heads}
        targets = targets + heads
        rep = ctx.report
        rep.set(bits=self.bits, group=self.group, sym=self.sym, layers_targeted=len(targets))
        if self.act_bits:
            rep.set(act_bits=self.act_bits, act_group=self._act_group())
        if self.scale_dtype != "f32":
            rep.set(scale_dtype=self.scale_dtype)
        if heads:
            rep.set(head={"bits": self.head_bits, "params": [t.param.name for t in heads]})
        if not targets:
            return
        if any(t.param.is_meta for t in targets):
            for t in targets:
                spec = self._spec(t, head_ids)
                g = spec.group
                shape = (t.out_features, group_count(t.in_features, g))
                meta = {
                    "qvalue": torch.empty(t.param.type.shape, dtype=torch.int8, device="meta"),
                    "scale": torch.empty(shape, dtype=spec.scale_torch_dtype, device="meta"),
                }
                if not spec.symmetric:
                    meta["zero"] = torch.empty(shape, dtype=torch.int8, device="meta")
                t.param.data = meta
                t.param.format = StorageFormat(spec, t.param.format.sparsity)
            rep.set(
                meta=True,
                bytes_before=bytes_before,
                bytes_after=sum(t.param.storage_bytes() for t in targets),
            )
            return
        by_node = {id(t.node): t for t in targets}

        def do(t: Target, stats: InputStats | None) -> None:
            w = t.param.value().to(torch.float32)
            keep = (w != 0) if t.param.format.sparsity is not None else None
            spec = self._spec(t, head_ids)
            g = spec.group
            t0 = time.perf_counter()
            if id(t.node) in head_ids:
                codes, scale, zero = rtn_quantize(w, spec.bits, g, True, keep, spec.scale_dtype)
            else:
                codes, scale, zero = self.quantize(w, g, stats, keep)
            store_quantized(t.param, codes, scale, zero, spec)
            err = float("nan")
            if stats is not None:  # the dequantized weight only when the error is measured
                err = output_error(w, t.param.value().to(torch.float32), stats)
                t.param.invalidate()  # no dequantized copy kept (calibration.release_params)
            rep.layer(
                t.path,
                group=g,
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
        bytes_after = sum(t.param.storage_bytes() for t in targets)
        errs = [r["rel_error"] for r in rep.get("layers", []) if r["rel_error"] is not None]
        rep.set(
            bytes_before=int(bytes_before),
            bytes_after=int(bytes_after),
            bytes_saved=int(bytes_before - bytes_after),
            mean_rel_error=round(sum(errs) / len(errs), 6) if errs else None,
        )
