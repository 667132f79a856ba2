"""How weights are stored for the accelerator: format per linear layer and the tile byte layout.

The format of a linear layer is read from its :class:`~llmc.ir.params.Param` storage format (the
decision a pass recorded in the IR), never re-derived:

- quantized (``QuantSpec``): ``bits <= 4`` -> int4 codes, ``5..8`` -> int8 codes; scales per
  ``group`` input elements (``group`` 0: one scale per output row);
- dense float: f32, f16 or bf16 values as stored;
- sparsity: ``N:16`` uses N non-zeros per 16-element block row; other ``N:M`` patterns use the
  smallest allowed count that holds them (2:4 -> 8 of 16); unstructured sparsity uses the worst
  block row of the layer (or, for architecture-only models, the density) rounded up to an
  allowed count. Dense layers use 16 of 16 (no index metadata).

A weight tile of ``R`` rows x ``K`` inputs is one contiguous byte range (HBM and weight buffer)::

    codes   R x (K/16 x n) codes     int4: two per byte, low nibble first; int8: one byte;
                                     f16/bf16: 2 bytes; f32: 4 bytes (little-endian)
    index   R x (K/16 x n) 4-bit     position of each code in its 16-block (absent when n = 16)
    scales  R x (K/group) float32    quantized formats only
    bias    R float32                when the layer has a bias
Each section starts on a 4-byte boundary. Within a block row the ``n`` entries are in ascending
position order; a row with fewer non-zeros than ``n`` is padded with zero codes at the lowest
unused positions. This is what both the functional simulator and the HLS kernels decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmc.errors import LlmcError
from llmc.fpga import isa
from llmc.ir.params import Param


class LayoutError(LlmcError):
    """A weight's storage format cannot be mapped onto the accelerator's datapath."""


@dataclass(frozen=True)
class WeightFormat:
    wfmt: int  # isa.W_*
    nnz: int  # non-zeros per 16-block row
    group: int  # inputs per scale (quantized); 0 for float formats
    symmetric: bool = True

    @property
    def bits(self) -> int:
        return isa.WFMT_BITS[self.wfmt]

    @property
    def quantized(self) -> bool:
        return self.wfmt in (isa.W_INT4, isa.W_INT8)

    def describe(self) -> str:
        sp = "" if self.nnz == 16 else f" {self.nnz}:16"
        g = f" g{self.group}" if self.quantized else ""
        return f"{isa.WFMT_NAMES[self.wfmt]}{sp}{g}"


def align4(n: int) -> int:
    return (n + 3) & ~3


def code_row_bytes(k: int, fmt: WeightFormat) -> int:
    n = (k // 16) * fmt.nnz
    return n // 2 if fmt.wfmt == isa.W_INT4 else n * fmt.bits // 8


def index_row_bytes(k: int, fmt: WeightFormat) -> int:
    return 0 if fmt.nnz == 16 else (k // 16) * fmt.nnz // 2


def scale_count(k: int, fmt: WeightFormat) -> int:
    if not fmt.quantized:
        return 0
    return 1 if fmt.group in (0, k) else k // fmt.group


def tile_sections(r: int, k: int, fmt: WeightFormat, bias: bool) -> tuple[int, int, int, int]:
    """Byte offsets (index, scales, bias, end) of a tile of ``r`` rows."""
    idx = align4(r * code_row_bytes(k, fmt))
    sc = idx + align4(r * index_row_bytes(k, fmt))
    bi = sc + 4 * r * scale_count(k, fmt)
    end = bi + (4 * r if bias else 0)
    return idx, sc, bi, end


def tile_bytes(r: int, k: int, fmt: WeightFormat, bias: bool) -> int:
    return tile_sections(r, k, fmt, bias)[3]


def row_bytes(k: int, fmt: WeightFormat, bias: bool) -> float:
    """Average bytes per output row (for tile sizing)."""
    return (
        code_row_bytes(k, fmt)
        + index_row_bytes(k, fmt)
        + 4 * scale_count(k, fmt)
        + (4 if bias else 0)
    )


def round_nnz(n: float, allowed: tuple[int, ...]) -> int:
    for a in sorted(allowed):
        if a >= n - 1e-9:
            return a
    return 16


def weight_format(p: Param, allowed: tuple[int, ...], *, where: str = "") -> WeightFormat:
    """The accelerator format of a ``[out, in]`` linear weight (see the module docstring)."""
    where = where or f"param @{p.name}"
    if len(p.type.shape) != 2:
        raise LayoutError(f"{where}: linear weight must be 2-D, got {p.type}")
    k = int(p.type.shape[1])
    if k % 16:
        raise LayoutError(
            f"{where}: {k} input features is not a multiple of the 16-wide sparse block; pad the "
            "layer or choose another target"
        )
    q = p.format.quant
    if q is not None and q.act_bits:
        raise LayoutError(
            f"{where}: act_bits={q.act_bits} (int8 activations, act_group={q.act_group}) is not "
            "modelled by the FPGA target (its MACs take float activations); quantize without "
            "act_bits"
        )
    if q is not None:
        wfmt = isa.W_INT4 if q.bits <= 4 else isa.W_INT8
        group = q.group
        if group and (group < 16 or k % group):
            raise LayoutError(
                f"{where}: quantization group {group} must be >= 16 (one sparse block) and "
                f"divide {k}; quantize with a larger group or per channel (group=0)"
            )
    else:
        wfmt = {"f32": isa.W_F32, "f16": isa.W_F16, "bf16": isa.W_BF16}.get(p.type.dtype, -1)
        if wfmt < 0:
            raise LayoutError(f"{where}: weights of dtype {p.type.dtype} are not supported")
        group = 0
    nnz = 16
    s = p.format.sparsity
    if s is not None:
        if s.kind == "nm":
            if 16 % s.m == 0:
                nnz = round_nnz(s.n * 16 / s.m, allowed)
            elif s.m % 16 == 0:  # a 16-block of an M-group holds at most min(N, 16)
                nnz = round_nnz(min(s.n, 16), allowed)
        elif p.is_meta:
            nnz = round_nnz(s.density * 16, allowed)
        else:
            nnz = round_nnz(max_block_nnz(p), allowed)
    return WeightFormat(wfmt, nnz, group, q.symmetric if q is not None else True)


def _nonzero(p: Param) -> torch.Tensor:
    if p.format.quant is not None:
        codes = p.data["qvalue"]
        if "zero" in p.data:
            g = codes.shape[1] if p.format.quant.group == 0 else p.format.quant.group
            z = p.data["zero"].repeat_interleave(g, dim=1).to(codes.dtype)
            return codes != z
        return codes != 0
    return p.data["value"] != 0


def max_block_nnz(p: Param) -> int:
    nz = _nonzero(p)
    out_f, in_f = nz.shape
    return int(nz.reshape(out_f, in_f // 16, 16).sum(-1).max()) if nz.numel() else 0


# ----------------------------------------------------------------------------------------------
# packing (functional model only: needs real data)


def _pack4(vals: np.ndarray) -> np.ndarray:
    """Pack int values (last axis even) two per byte, low nibble first."""
    v = (vals.astype(np.int64) & 0xF).astype(np.uint8)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def unpack4(b: np.ndarray, signed: bool) -> np.ndarray:
    lo = (b & 0xF).astype(np.int16)
    hi = (b >> 4).astype(np.int16)
    out = np.stack([lo, hi], axis=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)
    if signed:
        out = np.where(out >= 8, out - 16, out)
    return out


def _select(nz: np.ndarray, n: int) -> np.ndarray:
    """Positions [rows, blocks, n] of the kept entries: non-zeros first choice, padded with the
    lowest unused positions, then sorted ascending."""
    rows, blocks, _ = nz.shape
    if int(nz.sum(-1).max(initial=0)) > n:
        raise LayoutError(f"a 16-block row holds more than {n} non-zeros")
    # Sort key: non-zeros first (0), then zeros (1); stable, so positions ascend within each.
    key = np.where(nz, 0, 1) * 16 + np.arange(16)[None, None, :]
    pos = np.argsort(key, axis=-1, kind="stable")[..., :n]
    return np.sort(pos, axis=-1)


def pack_linear(
    p: Param, fmt: WeightFormat, bias: torch.Tensor | None, tile_rows: int
) -> list[bytes]:
    """The tiles of a linear weight, each ``tile_bytes`` long (see the module docstring)."""
    if p.is_meta:
        raise LayoutError(f"param @{p.name} has no data (architecture-only model)")
    if fmt.quantized and not fmt.symmetric:
        raise LayoutError(
            f"param @{p.name}: asymmetric quantization (zero points) is not supported by the "
            "FlightLLM datapath model; quantize symmetrically"
        )
    out_f, k = (int(d) for d in p.type.shape)
    if fmt.quantized:
        vals = p.data["qvalue"].to(torch.int64).numpy()
        scales = p.data["scale"].to(torch.float32).numpy().reshape(out_f, -1)
    else:
        v = p.data["value"]
        vals = v.numpy() if v.dtype != torch.bfloat16 else v.view(torch.int16).numpy()
        scales = None
    nz = (_nonzero(p).numpy()).reshape(out_f, k // 16, 16)
    pos = _select(nz, fmt.nnz)  # [out, blocks, n]
    codes = np.take_along_axis(vals.reshape(out_f, k // 16, 16), pos, axis=-1)
    codes = np.where(np.take_along_axis(nz, pos, axis=-1), codes, 0)  # padding entries are 0
    tiles = []
    for r0 in range(0, out_f, tile_rows):
        r1 = min(out_f, r0 + tile_rows)
        r = r1 - r0
        idx_off, sc_off, bi_off, end = tile_sections(r, k, fmt, bias is not None)
        buf = np.zeros(end, dtype=np.uint8)
        c = codes[r0:r1].reshape(r, -1)
        if fmt.wfmt == isa.W_INT4:
            cb = _pack4(c)
        elif fmt.wfmt == isa.W_INT8:
            cb = c.astype(np.int8).view(np.uint8)
        elif fmt.wfmt == isa.W_F16:
            cb = np.ascontiguousarray(c.astype(np.float16)).view(np.uint8)
        elif fmt.wfmt == isa.W_BF16:
            cb = np.ascontiguousarray(c.astype(np.int16)).view(np.uint8)
        else:
            cb = np.ascontiguousarray(c.astype(np.float32)).view(np.uint8)
        cb = cb.reshape(-1)
        buf[: cb.size] = cb
        if fmt.nnz != 16:
            ib = _pack4(pos[r0:r1].reshape(r, -1)).reshape(-1)
            buf[idx_off : idx_off + ib.size] = ib
        if scales is not None:
            s = np.ascontiguousarray(scales[r0:r1].astype(np.float32)).view(np.uint8).reshape(-1)
            buf[sc_off : sc_off + s.size] = s
        if bias is not None:
            b = bias.to(torch.float32).numpy()[r0:r1]
            buf[bi_off:end] = np.ascontiguousarray(b).view(np.uint8)
        tiles.append(buf.tobytes())
    return tiles


def choose_tile_rows(
    n: int, k: int, fmt: WeightFormat, bias: bool, half_bytes: int, unit: int
) -> int:
    """Largest multiple of ``unit`` rows (or all ``n``) whose tile fits ``half_bytes``; 0 if not
    even ``min(unit, n)`` rows fit."""
    if tile_bytes(n, k, fmt, bias) <= half_bytes:
        return n
    per_row = row_bytes(k, fmt, bias)
    r = int(half_bytes // max(per_row, 1)) // unit * unit
    while r > 0 and tile_bytes(r, k, fmt, bias) > half_bytes:
        r -= unit
    if r <= 0:
        r0 = min(unit, n)
        return r0 if tile_bytes(r0, k, fmt, bias) <= half_bytes else 0
    return min(r, n)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
