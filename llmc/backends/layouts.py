"""Compile-time weight layouts: how a :class:`~llmc.ir.params.Param` is stored for a kernel.

A lowering rule asks for a weight in a named layout (``ctx.weight(param, "packed16")``); the
backend records one :class:`WeightArg` per (param, layout) pair, which becomes one argument of the
compiled functions, and at export time transforms the param's data into that layout (in torch,
once, on the build machine). Nothing is transposed or repacked at run time.

A layout reads the param's storage format (``Param.format``) and never re-derives it: a quantized
param is packed from its integer codes, an N:M sparse param is compressed from its stored zeros.
Every layout also works on architecture-only (``meta``) params: shapes are computed, data is not.

Layouts (``key`` is the suffix of the weight's argument name):

- ``dense``: the stored value as is (``[out, in]`` for linear weights), cast to ``dtype``.
- ``panel{NB}``: ``[ceil(out/NB), in, NB]``, output rows interleaved in panels of NB so that a CPU
  kernel's inner loop loads NB consecutive outputs' weights for one input element (vector FMA,
  no horizontal reduction). The tail panel is zero-padded.
- ``moe.panel{NB}``: a stack of expert weights ``[E, out, in]`` as ``[E, ceil(out/NB), in, NB]``
  (each expert in ``panel{NB}`` form; the CPU's routed ``moe`` kernels).
- ``q4.codes``/``q4.scale``/``q4.zero``: 4-bit codes packed two per byte along ``in``
  (``[out, in/2]`` uint8, low nibble first) stored as ``code - qmin``, per-group scales
  ``[out, in/group]`` and, for asymmetric quantization, per-group offsets ``zero - qmin`` (float),
  so ``w = (nibble - offset) * scale`` with ``offset = -qmin`` when symmetric. Scales and
  offsets are laid out in :func:`scale_dtype` (float16 for ``scale_dtype=f16`` weights).
- ``q8g.codes``/``q8g.offset`` (with ``q4.scale``): 5..8-bit weight-only quantization: int8
  codes ``[out, in]`` and per-group offsets (the zero point, 0 when symmetric),
  ``w = (code - offset) * scale``.
- ``q8.codes``/``q8.scale``: W8A8 (``qlinear_a8``): int8 codes ``[out, in]`` and per-channel
  float32 scales ``[out]``.
- ``nm.values``/``nm.index``: N:M compressed: ``[out, in*N/M]`` values (the non-zeros of each
  group of M, zero-filled when a group has fewer) and uint8 positions within the group.
- ``nm.packed.index``: the same positions packed 2 bits each (``M <= 4``) or 4 bits each
  (``M <= 16``) into bytes, ``[out, ceil(KK/PER)]`` (:func:`pack_nm_index`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmc.errors import IRError
from llmc.ir.params import Param
from llmc.ir.types import to_torch_dtype

#: TVM dtype names of llmc dtypes.
TVM_DTYPE = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u8": "uint8",
    "bool": "bool",
}
LLMC_DTYPE = {v: k for k, v in TVM_DTYPE.items()}


def tvm_dtype(dtype: str) -> str:
    try:
        return TVM_DTYPE[dtype]
    except KeyError:
        raise IRError(f"dtype {dtype!r} has no TVM equivalent") from None


@dataclass(frozen=True)
class WeightArg:
    """One compiled weight: an argument of every compiled function, in a given layout."""

    name: str  # argument name, "<param>@<layout>"
    param: str
    layout: str
    shape: tuple[int, ...]
    dtype: str  # llmc dtype of the stored tensor

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "param": self.param,
            "layout": self.layout,
            "shape": list(self.shape),
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class Layout:
    """A named weight layout: its shape and dtype for a param, and the data transform."""

    name: str
    shape: Callable[[Param, str], tuple[int, ...]]
    dtype: Callable[[Param, str], str]
    transform: Callable[[Param, str], torch.Tensor]

    def arg(self, p: Param, compute_dtype: str) -> WeightArg:
        return WeightArg(
            f"{p.name}@{self.name}",
            p.name,
            self.name,
            self.shape(p, compute_dtype),
            self.dtype(p, compute_dtype),
        )


_LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    _LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    if name.startswith("panel") and name not in _LAYOUTS:
        register_layout(_panel_layout(int(name[5:])))
    if name.startswith("moe.panel") and name[9:].isdigit() and name not in _LAYOUTS:
        register_layout(_expert_panel_layout(int(name[9:])))
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise IRError(f"unknown weight layout {name!r} (known: {sorted(_LAYOUTS)})") from None


def _shape(p: Param) -> tuple[int, ...]:
    return tuple(int(d) for d in p.type.shape)


def _meta_or(p: Param, shape: tuple[int, ...], dtype: str, fn: Callable[[], torch.Tensor]):
    if p.is_meta:
        return torch.empty(shape, dtype=to_torch_dtype(dtype), device="meta")
    return fn().contiguous()


# -- dense --------------------------------------------------------------------------------------


def _dense_transform(p: Param, dt: str) -> torch.Tensor:
    return _meta_or(p, _shape(p), dt, lambda: p.value().to(to_torch_dtype(dt)))


register_layout(Layout("dense", lambda p, dt: _shape(p), lambda p, dt: dt, _dense_transform))


# -- panels (CPU) -------------------------------------------------------------------------------


def panel_count(out: int, nb: int) -> int:
    return (out + nb - 1) // nb


def _panel_layout(nb: int) -> Layout:
    def shape(p: Param, dt: str) -> tuple[int, ...]:
        n, k = _shape(p)
        return (panel_count(n, nb), k, nb)

    def transform(p: Param, dt: str) -> torch.Tensor:
        def f() -> torch.Tensor:
            w = p.value().to(to_torch_dtype(dt))
            n, k = w.shape
            pad = panel_count(n, nb) * nb - n
            if pad:
                w = torch.cat([w, w.new_zeros(pad, k)])
            return w.reshape(-1, nb, k).permute(0, 2, 1)

        return _meta_or(p, shape(p, dt), dt, f)

    return Layout(f"panel{nb}", shape, lambda p, dt: dt, transform)


def _expert_panel_layout(nb: int) -> Layout:
    """``moe.panel{nb}``: a stack of expert weights ``[E, out, in]`` as ``[E, ceil(out/nb), in,
    nb]``, each expert in ``panel{nb}`` form (the CPU's routed ``moe`` kernels,
    :mod:`llmc.backends.kernels.moe_cpu`)."""

    def shape(p: Param, dt: str) -> tuple[int, ...]:
        e, n, k = _shape(p)
        return (e, panel_count(n, nb), k, nb)

    def transform(p: Param, dt: str) -> torch.Tensor:
        def f() -> torch.Tensor:
            w = p.value().to(to_torch_dtype(dt))
            e, n, k = w.shape
            pad = panel_count(n, nb) * nb - n
            if pad:
                w = torch.cat([w, w.new_zeros(e, pad, k)], dim=1)
            return w.reshape(e, -1, nb, k).permute(0, 1, 3, 2)

        return _meta_or(p, shape(p, dt), dt, f)

    return Layout(f"moe.panel{nb}", shape, lambda p, dt: dt, transform)


# -- 4-bit group quantization ---------------------------------------------------------------------


def _q(p: Param):
    q = p.format.quant
    if q is None:
        raise IRError(f"param @{p.name} is not quantized (format {p.format})")
    return q


def _q4_codes(p: Param, dt: str) -> torch.Tensor:
    q = _q(p)
    n, k = _shape(p)

    def f() -> torch.Tensor:
        u = (p.data["qvalue"].to(torch.int16) - q.qmin).to(torch.uint8)  # 0..2^bits-1
        u = u.reshape(n, k // 2, 2)
        return (u[..., 0] | (u[..., 1] << 4)).to(torch.uint8)

    return _meta_or(p, (n, k // 2), "u8", f)


def _group(p: Param) -> int:
    q = _q(p)
    return q.group if q.group else _shape(p)[1]


def _q4_scale(p: Param, dt: str) -> torch.Tensor:
    n, k = _shape(p)
    return _meta_or(
        p,
        (n, k // _group(p)),
        dt,
        lambda: p.data["scale"].reshape(n, k // _group(p)).to(to_torch_dtype(dt)),
    )


def _q4_zero(p: Param, dt: str) -> torch.Tensor:
    q = _q(p)
    n, k = _shape(p)

    def f() -> torch.Tensor:
        z = p.data.get("zero")
        z = torch.zeros(n, k // _group(p)) if z is None else z.reshape(n, -1).to(torch.float32)
        return (z - q.qmin).to(to_torch_dtype(dt))

    return _meta_or(p, (n, k // _group(p)), dt, f)


def scale_dtype(p: Param, dt: str) -> str:
    """The llmc dtype a quantized weight's ``q4.scale`` and its offsets (``q4.zero``,
    ``q8g.offset``) are laid out in for compute dtype ``dt``: ``f16`` when the weight records
    ``scale_dtype=f16`` (``QuantSpec``, "Scale precision": the stored halves, read 2 bytes each
    and widened to float32 in the dequantize; offsets are small integers, exact in f16), else
    ``dt``."""
    return "f16" if _q(p).scale_dtype == "f16" else dt


register_layout(
    Layout(
        "q4.codes", lambda p, dt: (_shape(p)[0], _shape(p)[1] // 2), lambda p, dt: "u8", _q4_codes
    )
)
register_layout(
    Layout(
        "q4.scale",
        lambda p, dt: (_shape(p)[0], _shape(p)[1] // _group(p)),
        lambda p, dt: dt,
        _q4_scale,
    )
)
register_layout(
    Layout(
        "q4.zero",
        lambda p, dt: (_shape(p)[0], _shape(p)[1] // _group(p)),
        lambda p, dt: dt,
        _q4_zero,
    )
)

# -- 5..8-bit group quantization (weight-only): int8 codes, float offsets ---------------------------


def _q8_offset(p: Param, dt: str) -> torch.Tensor:
    n, k = _shape(p)

    def f() -> torch.Tensor:
        z = p.data.get("zero")
        if z is None:
            return torch.zeros(n, k // _group(p), dtype=to_torch_dtype(dt))
        return z.reshape(n, -1).to(to_torch_dtype(dt))

    return _meta_or(p, (n, k // _group(p)), dt, f)


register_layout(
    Layout(
        "q8g.codes",
        lambda p, dt: _shape(p),
        lambda p, dt: "i8",
        lambda p, dt: _meta_or(p, _shape(p), "i8", lambda: p.data["qvalue"].to(torch.int8)),
    )
)
register_layout(
    Layout(
        "q8g.offset",
        lambda p, dt: (_shape(p)[0], _shape(p)[1] // _group(p)),
        lambda p, dt: dt,
        _q8_offset,
    )
)

# -- int8 per channel (W8A8) ----------------------------------------------------------------------

register_layout(
    Layout(
        "q8.codes",
        lambda p, dt: _shape(p),
        lambda p, dt: "i8",
        lambda p, dt: _meta_or(p, _shape(p), "i8", lambda: p.data["qvalue"].to(torch.int8)),
    )
)
register_layout(
    Layout(
        "q8.scale",
        lambda p, dt: (_shape(p)[0],),
        lambda p, dt: "f32",
        lambda p, dt: _meta_or(
            p, (_shape(p)[0],), "f32", lambda: p.data["scale"].reshape(-1).to(torch.float32)
        ),
    )
)

# -- N:M compressed -------------------------------------------------------------------------------


def nm_of(p: Param) -> tuple[int, int]:
    s = p.format.sparsity
    if s is None or s.kind != "nm":
        raise IRError(f"param @{p.name} is not N:M sparse (format {p.format})")
    return s.n, s.m


def _nm_shape(p: Param, dt: str) -> tuple[int, ...]:
    n_, m_ = nm_of(p)
    out, k = _shape(p)
    return (out, k // m_ * n_)


def compress_nm(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``[out, in*n/m]`` and uint8 positions of the non-zeros of each group of ``m``.

    A group with fewer than ``n`` non-zeros is padded with zero values at unused positions.
    Raises :class:`IRError` if a group holds more than ``n`` non-zeros (the param's format lies).
    """
    out, k = w.shape
    g = w.reshape(out, k // m, m)
    nz = g != 0
    if int(nz.sum(-1).max()) > n:
        raise IRError(f"weight is not {n}:{m} sparse: a group holds more than {n} non-zeros")
    # Stable order: non-zeros first (by position), then zero positions, keep the first n.
    key = (~nz).to(torch.int64) * m + torch.arange(m).expand_as(nz)
    idx = torch.argsort(key, dim=-1)[..., :n]
    idx, _ = torch.sort(idx, dim=-1)
    vals = torch.gather(g, -1, idx)
    return vals.reshape(out, -1), idx.to(torch.uint8).reshape(out, -1)


def _nm_values(p: Param, dt: str) -> torch.Tensor:
    n_, m_ = nm_of(p)
    return _meta_or(
        p,
        _nm_shape(p, dt),
        dt,
        lambda: compress_nm(p.value().to(to_torch_dtype(dt)), n_, m_)[0],
    )


def _nm_index(p: Param, dt: str) -> torch.Tensor:
    n_, m_ = nm_of(p)
    return _meta_or(p, _nm_shape(p, dt), "u8", lambda: compress_nm(p.value(), n_, m_)[1])


def nm_index_bits(m: int) -> int:
    """Bits per position in ``nm.packed.index``: 2 for ``M <= 4``, 4 for ``M <= 16``."""
    return 2 if m <= 4 else 4


def pack_nm_index(idx: torch.Tensor, m: int) -> torch.Tensor:
    """``[out, KK]`` positions -> ``[out, ceil(KK/PER)]`` bytes, ``PER = 8 / nm_index_bits(m)``
    positions per byte, position ``kk`` at bits ``BITS * (kk % PER)`` of byte ``kk // PER``
    (unused tail bits zero)."""
    bits = nm_index_bits(m)
    per = 8 // bits
    out, kk = idx.shape
    pad = -kk % per
    u = torch.cat([idx, idx.new_zeros(out, pad)], 1) if pad else idx
    u = u.to(torch.int32).reshape(out, -1, per) << (torch.arange(per, dtype=torch.int32) * bits)
    return u.sum(-1).to(torch.uint8)


def unpack_nm_index(packed: torch.Tensor, m: int, kk: int) -> torch.Tensor:
    """Inverse of :func:`pack_nm_index`: ``[..., KK]`` uint8 positions."""
    bits = nm_index_bits(m)
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    u = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return u.reshape(*packed.shape[:-1], -1)[..., :kk].to(torch.uint8)


def _nm_packed_shape(p: Param, dt: str) -> tuple[int, ...]:
    n_, m_ = nm_of(p)
    out, k = _shape(p)
    per = 8 // nm_index_bits(m_)
    return (out, (k // m_ * n_ + per - 1) // per)


def _nm_packed_index(p: Param, dt: str) -> torch.Tensor:
    n_, m_ = nm_of(p)
    return _meta_or(
        p,
        _nm_packed_shape(p, dt),
        "u8",
        lambda: pack_nm_index(compress_nm(p.value(), n_, m_)[1], m_),
    )


register_layout(Layout("nm.values", _nm_shape, lambda p, dt: dt, _nm_values))
register_layout(Layout("nm.index", _nm_shape, lambda p, dt: "u8", _nm_index))
register_layout(Layout("nm.packed.index", _nm_packed_shape, lambda p, dt: "u8", _nm_packed_index))


# -- inverses: a param's storage from its compiled layout -----------------------------------------
# An artifact stores each weight once (issue 14 item 5): when the compiled layout of a param's
# field can be turned back into the field exactly, params.safetensors omits the field and the
# artifact loader rebuilds it from weights.safetensors. Exactness is checked at compile time
# (llmc.backends.pipeline.write_weights compares the inverse with the stored field bit for bit),
# so a layout without an inverse here, or one whose inverse is lossy (a cast to f16), is simply
# stored twice.


def _untile(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``[P, *rest, NB]`` panels -> ``[rows, *rest]`` (drops the zero-padded tail)."""
    return t.movedim(-1, 1).reshape(-1, *t.shape[1:-1])[:rows]


def _inv_q4_codes(t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor]:
    n = t.shape[0]
    u = torch.stack([t & 0xF, t >> 4], dim=-1).reshape(n, -1)
    return "qvalue", (u.to(torch.int16) + _q(p).qmin).to(torch.int8)


def _inv_scale(t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor]:
    return "scale", t.reshape(p.data["scale"].shape)


def _inv_q4_zero(t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor] | None:
    if "zero" not in p.data:
        return None  # symmetric: the offsets are the constant -qmin, nothing to rebuild
    z = (t.to(torch.float32) + _q(p).qmin).to(torch.int8)
    return "zero", z.reshape(p.data["zero"].shape)


def _inv_q8g_offset(t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor] | None:
    if "zero" not in p.data:
        return None
    return "zero", t.to(torch.int8).reshape(p.data["zero"].shape)


_INVERSES: dict[str, Callable[[torch.Tensor, Param], tuple[str, torch.Tensor] | None]] = {
    "dense": lambda t, p: ("value", t),
    "q4.codes": _inv_q4_codes,
    "q4.scale": _inv_scale,
    "q4.zero": _inv_q4_zero,
    "q8g.codes": lambda t, p: ("qvalue", t),
    "q8g.offset": _inv_q8g_offset,
    "q8.codes": lambda t, p: ("qvalue", t),
    "q8.scale": _inv_scale,
}


def _inv_vnni(kind: str, nb: int, t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor] | None:
    """``qvalue`` from the CPU's VNNI panels (``llmc/backends/cpu/pipeline.py``):
    ``vnni{NB}.q4.codes`` ``[P, K'/8, NB, 4]`` u8, byte (b, n, i) holding nibbles ``8b+i`` (low)
    and ``8b+4+i`` (high) of output n; ``vnni{NB}.q8.codes`` ``[P, K'/4, NB, 4]`` i8, byte
    (b, n, i) = ``w[n, 4b+i]``; ``vnni{NB}.q8w.codes`` the same as u8 ``code - qmin``. K and N
    zero-padded."""
    n, k = (int(d) for d in p.type.shape)
    if t.dim() != 4:
        return None
    panels, kb = int(t.shape[0]), int(t.shape[1])
    want = p.data["qvalue"].shape
    if kind == "q8.codes":
        w = t.permute(0, 2, 1, 3).reshape(panels * nb, kb * 4)[:n, :k]
        return "qvalue", w.reshape(want)
    if kind == "q8w.codes":
        u = t.permute(0, 2, 1, 3).reshape(panels * nb, kb * 4)[:n, :k]
        return "qvalue", (u.to(torch.int16) + _q(p).qmin).to(torch.int8).reshape(want)
    if kind == "q4.codes":
        u = torch.stack([t & 0xF, t >> 4], dim=3).permute(0, 2, 1, 3, 4)  # [P, NB, K'/8, 2, 4]
        u = u.reshape(panels * nb, kb * 8)[:n, :k]
        return "qvalue", (u.to(torch.int16) + _q(p).qmin).to(torch.int8).reshape(want)
    return None


def invert_layout(name: str, t: torch.Tensor, p: Param) -> tuple[str, torch.Tensor] | None:
    """``(field, tensor)``: the storage field of ``p`` that the layout ``name`` holds, rebuilt
    from ``t``; None when the layout has no inverse. Panel layouts (``panel{NB}`` and
    ``panel{NB}.{base}``) are untiled first. The result is not checked against ``p``; the
    compiler keeps a param out of params.safetensors only when it is bit-identical."""
    base = name
    if name.startswith("moe.panel") and t.dim() == 4:  # [E, P, K, NB] -> [E, out, K]
        n = int(p.type.shape[1])
        return "value", t.permute(0, 1, 3, 2).reshape(t.shape[0], -1, t.shape[2])[:, :n]
    if name.startswith("vnni"):
        head, _, rest = name.partition(".")
        return _inv_vnni(rest, int(head[4:]), t, p) if head[4:].isdigit() else None
    if name.startswith("panel"):
        head, _, rest = name.partition(".")
        if not head[5:].isdigit() or t.dim() < 2:
            return None
        t = _untile(t, int(p.type.shape[0]))
        base = rest or "dense"
    fn = _INVERSES.get(base)
    return None if fn is None else fn(t, p)


def invert_nm(
    values_layout: str, values: torch.Tensor, index: torch.Tensor, p: Param
) -> torch.Tensor:
    """The dense ``[out, in]`` value of an N:M param from its ``nm.values``/``nm.index`` tensors
    (``panel{NB}.`` variants untiled first): each group's kept values scattered back to their
    positions, zeros elsewhere (:func:`compress_nm` inverted)."""
    n_, m_ = nm_of(p)
    out, k = _shape(p)
    if values_layout.startswith("panel"):
        values, index = _untile(values, out), _untile(index, out)
    if index.shape[-1] != values.shape[-1]:  # nm.packed.index
        index = unpack_nm_index(index, m_, int(values.shape[-1]))
    g = torch.zeros(out, k // m_, m_, dtype=values.dtype)
    g.scatter_(-1, index.reshape(out, -1, n_).to(torch.int64), values.reshape(out, -1, n_))
    return g.reshape(out, k)
