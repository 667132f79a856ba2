"""Weights and their storage formats: the one truth passes write and backends read.

A :class:`Param` has a *logical* type (the dense floating-point tensor the model computes with) and
a :class:`StorageFormat` saying how it is stored:

- dense: ``data["value"]`` holds the tensor;
- sparse (``StorageFormat.sparsity``): the pruned positions are zero in the stored values;
  ``SparsitySpec`` says whether the pattern is unstructured or N:M (N non-zeros in every group of M
  consecutive elements along the input dimension, the last axis);
- quantized (``StorageFormat.quant``): ``data["qvalue"]`` holds integer codes (int8 storage, one
  code per element, unpacked), ``data["scale"]`` the scales (float32, or float16 with
  ``QuantSpec.scale_dtype = "f16"``; shape ``[out, in // group]`` or
  ``[out, 1]`` per channel) and, when asymmetric, ``data["zero"]`` the zero points (same shape as
  the scale). The dequantized value is ``(qvalue - zero) * scale`` per group.

Sparse and quantized combine (an N:16-pruned int4 weight for the FPGA). Data tensors may live on the
``meta`` device: architecture-only models have shapes and formats but no values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llmc.errors import IRError
from llmc.ir.types import DTYPE_BYTES, TensorType, from_torch_dtype

#: activation precisions a quantized weight may record: 0 float, 8 dynamic symmetric int8
ACT_BITS = (0, 8)
#: the int8 activation code range is [-ACT_QMAX, ACT_QMAX] (symmetric, like llama.cpp's q8_0)
ACT_QMAX = 127
#: dtypes a quantized weight's scales may be stored in (``QuantSpec.scale_dtype``)
SCALE_DTYPES = ("f32", "f16")
#: the f16 scale range: a scale rounds into [F16_SCALE_MIN, F16_SCALE_MAX] (smallest subnormal,
#: largest finite half), so a tiny group never gets a zero scale (see "Scale precision")
F16_SCALE_MIN = 2.0**-24
F16_SCALE_MAX = 65504.0


@dataclass(frozen=True)
class QuantSpec:
    """Integer weight quantization.

    ``group`` is the number of consecutive input elements sharing one scale; 0 means one scale per
    output channel. ``method`` records the algorithm that produced the codes (``rtn``, ``gptq``,
    ``smoothquant``, ...): backends ignore it, reports print it.

    ``act_bits`` is the precision of the *activations* a ``linear`` reading this weight
    multiplies it with (see "Activation quantization" below): 0 (the default) keeps them float;
    8 quantizes them dynamically to symmetric int8 in blocks of ``act_group`` consecutive input
    elements (0: one scale per row), before the dequantized matmul.

    Activation quantization (``act_bits = 8``; the contract every backend implements or
    refuses, cited by their errors): each row ``x`` of the linear's input (its last axis, of
    ``K`` elements) is split into blocks of ``act_group`` consecutive elements (``K`` is a
    multiple of it; 0: one block per row); per block ``s = max(max|x|, 1e-30) / 127`` and
    ``x_hat = clamp(round_half_even(x / s), -127, 127) * s``, all in float32; the linear then
    computes ``x_hat @ dequantize(w).T`` (+ bias). This is llama.cpp's q8_0 activation with
    ``act_group = 32``, so q4_0/q8_0 weights with ``act_bits=8, act_group=32`` compute what
    llama.cpp computes. The semantics do not depend on the target; the reference is
    :func:`fake_quant_act`.

    Scale precision (``scale_dtype``; the contract every backend implements or refuses):
    ``f32`` (the default) stores ``data["scale"]`` in float32. ``f16`` stores it in float16,
    llama.cpp's q4_0/q8_0 block scale: the quantizer rounds each scale to half precision
    (round-to-nearest-even, clamped to ``[F16_SCALE_MIN, F16_SCALE_MAX]``) *before* it chooses
    the codes, so the codes are the nearest ones for the scale actually stored, and dequantization
    is ``(q - zero) * float32(scale)`` (the half widened exactly). Reads cost 2 bytes per scale
    instead of 4 (``Param.storage_bytes``). The reference is :func:`dequantize`;
    :func:`round_scale` is the rounding.
    """

    bits: int
    group: int = 0
    symmetric: bool = True
    method: str = "rtn"
    act_bits: int = 0
    act_group: int = 0
    scale_dtype: str = "f32"

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise IRError(f"quantization bits must be in 2..8, got {self.bits}")
        if self.group < 0:
            raise IRError(f"quantization group must be >= 0, got {self.group}")
        if self.act_bits not in ACT_BITS:
            raise IRError(
                f"act_bits must be 0 (float activations) or 8 (dynamic int8), got {self.act_bits}"
            )
        if self.act_group < 0 or (self.act_bits == 0 and self.act_group != 0):
            raise IRError(
                f"act_group must be >= 0 and only set with act_bits=8, got act_group="
                f"{self.act_group} with act_bits={self.act_bits}"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise IRError(f"scale_dtype must be f32 or f16, got {self.scale_dtype!r}")

    @property
    def scale_torch_dtype(self) -> torch.dtype:
        """The torch dtype ``data["scale"]`` is stored in."""
        return torch.float16 if self.scale_dtype == "f16" else torch.float32

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1


@dataclass(frozen=True)
class SparsitySpec:
    """Which weights are zero: ``kind`` is ``unstructured`` (with the achieved ``density``) or
    ``nm`` (``n`` non-zeros in every ``m`` consecutive elements of the last axis)."""

    kind: str = "unstructured"
    n: int = 0
    m: int = 0
    density: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("unstructured", "nm"):
            raise IRError(f"unknown sparsity kind {self.kind!r} (unstructured, nm)")
        if self.kind == "nm" and not (0 < self.n <= self.m):
            raise IRError(f"N:M sparsity needs 0 < N <= M, got {self.n}:{self.m}")
        if not 0.0 <= self.density <= 1.0:
            raise IRError(f"density must be in [0, 1], got {self.density}")


@dataclass(frozen=True)
class StorageFormat:
    quant: QuantSpec | None = None
    sparsity: SparsitySpec | None = None

    @property
    def is_dense(self) -> bool:
        return self.quant is None and self.sparsity is None

    def __str__(self) -> str:
        parts = []
        if self.quant is not None:
            q = self.quant
            act = f", act_bits={q.act_bits}, act_group={q.act_group}" if q.act_bits else ""
            if q.scale_dtype != "f32":
                act += f", scale_dtype={q.scale_dtype}"
            parts.append(
                f"quant(bits={q.bits}, group={q.group}, "
                f"sym={'true' if q.symmetric else 'false'}, method={q.method}{act})"
            )
        if self.sparsity is not None:
            s = self.sparsity
            if s.kind == "nm":
                parts.append(f"sparse(nm={s.n}:{s.m}, density={s.density!r})")
            else:
                parts.append(f"sparse(unstructured, density={s.density!r})")
        return " ".join(parts) if parts else "dense"


DENSE = StorageFormat()


@dataclass(eq=False)
class Param:
    """A named weight: logical type, storage format and data tensors (see the module docstring)."""

    name: str
    type: TensorType
    format: StorageFormat = DENSE
    data: dict[str, torch.Tensor] = field(default_factory=dict)
    _dense_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @staticmethod
    def dense(name: str, value: torch.Tensor) -> Param:
        t = TensorType(tuple(int(s) for s in value.shape), from_torch_dtype(value.dtype))
        return Param(name, t, DENSE, {"value": value})

    @property
    def is_meta(self) -> bool:
        return any(t.device.type == "meta" for t in self.data.values())

    def value(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The logical (dequantized, float) tensor, cached per device."""
        key = str(device) if device is not None else "default"
        if key in self._dense_cache:
            return self._dense_cache[key]
        if self.format.quant is None:
            v = self.data["value"]
        else:
            v = dequantize(self)
        if device is not None:
            v = v.to(device)
        self._dense_cache[key] = v
        return v

    def invalidate(self) -> None:
        self._dense_cache.clear()

    def storage_bytes(self) -> float:
        """Bytes the weight occupies in its storage format: codes + scales + zeros, and for N:M
        sparsity only the ``N/M`` kept values plus a ``ceil(log2 M)``-bit position per kept value
        (2:4: 2 bits, as cuSPARSELt and FlightLLM's sparse DSP chain store it; a backend may
        spend more, e.g. the CPU layout's byte per index). Unstructured sparsity has no encoding
        any backend exploits, so it is charged dense."""
        numel = 1
        for d in self.type.shape:
            numel *= int(d)
        q = self.format.quant
        s = self.format.sparsity
        kept = float(numel)
        index_bytes = 0.0
        if s is not None and s.kind == "nm" and s.m > 0:
            kept = numel * s.n / s.m
            index_bytes = kept * math.ceil(math.log2(s.m)) / 8 if s.m > 1 else 0.0
        if q is None:
            return float(kept * DTYPE_BYTES[self.type.dtype] + index_bytes)
        nbytes = kept * q.bits / 8 + index_bytes
        scale = self.data.get("scale")
        if scale is not None:  # its real dtype: 4 bytes (f32) or 2 (scale_dtype=f16)
            nbytes += scale.numel() * scale.element_size()
        zero = self.data.get("zero")
        if zero is not None:
            nbytes += zero.numel() * q.bits / 8
        return float(nbytes)

    def with_data(self, fmt: StorageFormat, data: dict[str, torch.Tensor]) -> Param:
        return Param(self.name, self.type, fmt, dict(data))


def group_count(in_features: int, group: int) -> int:
    return 1 if group == 0 else in_features // group


def round_scale(scale: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """``scale`` as the quantizer must use it (see :class:`QuantSpec`, "Scale precision"):
    unchanged for ``f32``; for ``f16`` clamped to ``[F16_SCALE_MIN, F16_SCALE_MAX]`` and rounded
    to half precision (round-to-nearest-even), returned widened back to ``scale``'s dtype
    (exact: float32 and float64 hold every half)."""
    if scale_dtype == "f32":
        return scale
    return scale.clamp(F16_SCALE_MIN, F16_SCALE_MAX).to(torch.float16).to(scale.dtype)


def fake_quant_act(x: torch.Tensor, act_bits: int, act_group: int) -> torch.Tensor:
    """The activations a linear multiplies with (see :class:`QuantSpec`, "Activation
    quantization"): ``x`` unchanged for ``act_bits = 0``, else each block of ``act_group``
    elements of the last axis (0: the whole row) quantized to int8 and dequantized, in float32,
    returned in ``x``'s dtype."""
    if act_bits == 0:
        return x
    k = int(x.shape[-1])
    g = k if act_group == 0 or act_group >= k else act_group
    if k % g:
        raise IRError(f"activation width {k} is not a multiple of act_group {act_group}")
    xf = x.to(torch.float32).reshape(*x.shape[:-1], k // g, g)
    s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / ACT_QMAX
    q = torch.clamp(torch.round(xf / s), -ACT_QMAX, ACT_QMAX)
    return (q * s).reshape(x.shape).to(x.dtype)


def dequantize(p: Param) -> torch.Tensor:
    """``(qvalue - zero) * scale`` broadcast per group along the last axis, in the logical dtype."""
    q = p.format.quant
    assert q is not None
    codes = p.data["qvalue"]
    scale = p.data["scale"]
    out_f, in_f = codes.shape[0], codes.shape[-1]
    g = in_f if q.group == 0 else q.group
    c = codes.reshape(out_f, in_f // g, g).to(torch.float32)
    if "zero" in p.data:
        c = c - p.data["zero"].reshape(out_f, in_f // g, 1).to(torch.float32)
    w = c * scale.reshape(out_f, in_f // g, 1).to(torch.float32)
    from llmc.ir.types import to_torch_dtype

    return w.reshape(codes.shape).to(to_torch_dtype(p.type.dtype))


def check_param(p: Param) -> list[str]:
    """Storage-format invariants of one param (used by the verifier)."""
    errs: list[str] = []
    shape = (
        tuple(int(d) for d in p.type.shape)
        if all(isinstance(d, int) for d in p.type.shape)
        else None
    )
    if shape is None:
        return [f"param @{p.name}: shape must be static, got {p.type}"]
    q, s = p.format.quant, p.format.sparsity
    if q is None:
        v = p.data.get("value")
        if v is None:
            return [f"param @{p.name}: dense storage needs data['value']"]
        if tuple(v.shape) != shape:
            errs.append(f"param @{p.name}: value shape {tuple(v.shape)} != type {p.type}")
        if from_torch_dtype(v.dtype) != p.type.dtype:
            errs.append(f"param @{p.name}: value dtype {v.dtype} != type {p.type}")
    else:
        codes = p.data.get("qvalue")
        scale = p.data.get("scale")
        if codes is None or scale is None:
            return [f"param @{p.name}: quantized storage needs data['qvalue'] and data['scale']"]
        if tuple(codes.shape) != shape or len(shape) != 2:
            errs.append(f"param @{p.name}: qvalue shape {tuple(codes.shape)} != type {p.type}")
            return errs
        if q.group and shape[1] % q.group:
            errs.append(f"param @{p.name}: in-features {shape[1]} not divisible by group {q.group}")
            return errs
        if q.act_group and shape[1] % q.act_group:
            errs.append(
                f"param @{p.name}: in-features {shape[1]} not divisible by act_group {q.act_group}"
            )
        want = (shape[0], group_count(shape[1], q.group))
        if tuple(scale.shape) != want:
            errs.append(f"param @{p.name}: scale shape {tuple(scale.shape)} != {want}")
        if scale.dtype != q.scale_torch_dtype:
            errs.append(
                f"param @{p.name}: scale dtype {scale.dtype} != scale_dtype={q.scale_dtype}"
            )
        if not q.symmetric and "zero" not in p.data:
            errs.append(f"param @{p.name}: asymmetric quantization needs data['zero']")
        if codes.device.type != "meta" and codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < q.qmin or hi > q.qmax:
                errs.append(
                    f"param @{p.name}: codes in [{lo}, {hi}] outside int{q.bits} range "
                    f"[{q.qmin}, {q.qmax}]"
                )
    if s is not None and s.kind == "nm" and not p.is_meta:
        w = p.data["qvalue"] if q is not None else p.data["value"]
        zero = p.data.get("zero") if q is not None else None
        errs.extend(_check_nm(p.name, w, s, zero, q.group if q else 0))
    return errs


def nonzero_mask(p: Param) -> torch.Tensor:
    """Boolean mask of stored non-zeros (after dequantization for quantized params)."""
    if p.format.quant is None:
        return p.data["value"] != 0
    return p.value() != 0


def _check_nm(name: str, w: torch.Tensor, s: SparsitySpec, zero, group: int) -> list[str]:
    if w.shape[-1] % s.m:
        return [f"param @{name}: last dim {w.shape[-1]} not divisible by M={s.m} for {s.n}:{s.m}"]
    if zero is not None:
        g = w.shape[-1] if group == 0 else group
        z = zero.repeat_interleave(g, dim=-1).to(w.dtype)
        nz = w != z
    else:
        nz = w != 0
    per_group = nz.reshape(*w.shape[:-1], w.shape[-1] // s.m, s.m).sum(-1)
    worst = int(per_group.max()) if per_group.numel() else 0
    if worst > s.n:
        return [f"param @{name}: a group of {s.m} holds {worst} non-zeros, more than N={s.n}"]
    return []
