"""The CPU pipeline's AVX2 decode path (:mod:`llmc.backends.kernels.cpu_avx2`): weight layouts
and the lowerings of ``linear`` (int4, 5..8-bit weight-only) and ``qlinear_a8`` (W8A8).

The codes use the VNNI quad arrangement with a 32-output panel (``vnni32.*``: the layout name
says the byte order, not the instruction), so ``llmc.backends.layouts.invert_layout`` rebuilds
them and an artifact stores each weight once; scales and offsets are ``panel32.*`` (registered
by :mod:`llmc.backends.cpu.pipeline`, which owns the panel helper). The rules run when
:func:`llmc.backends.cpu.pipeline.kernel_isa` is ``"avx2"``.
"""

from __future__ import annotations

from typing import Any

from tvm import relax

from llmc.backends.kernels import cpu_avx2, te_ops
from llmc.backends.kernels.cpu_vnni import group_sums
from llmc.backends.layouts import (
    Layout,
    panel_count,
    register_layout,
    scale_dtype,
    tvm_dtype,
)
from llmc.backends.lower import LowerCtx
from llmc.backends.rules import add_bias_cast, flatten_rows, unflatten_rows, weight_param
from llmc.ir.graph import Node
from llmc.ir.params import Param

NB = cpu_avx2.NB


def _dims(p: Param) -> tuple[int, int, int]:
    q = p.format.quant
    assert q is not None
    n, k = (int(d) for d in p.type.shape)
    return n, k, cpu_avx2.padded_k(k, q.group or k)


def _q4_shape(p: Param, dt: str) -> tuple[int, ...]:
    n, _, kp = _dims(p)
    return (panel_count(n, NB), kp // 8, NB, 4)


def _q4_codes(p: Param, dt: str):
    """``[P, K'/8, 32, 4]`` uint8: byte (b, n, i) holds nibble ``k = 8b+i`` (low) and
    ``k = 8b+4+i`` (high) of output ``n``; K and N zero-padded."""
    import torch

    shape = _q4_shape(p, dt)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.uint8, device="meta")
    n, k, kp = _dims(p)
    q = p.format.quant
    u = (p.data["qvalue"].to(torch.int16) - q.qmin).to(torch.uint8).reshape(n, k)
    full = torch.zeros(shape[0] * NB, kp, dtype=torch.uint8)
    full[:n, :k] = u
    t = full.reshape(shape[0], NB, kp // 8, 2, 4)
    return (t[:, :, :, 0, :] | (t[:, :, :, 1, :] << 4)).permute(0, 2, 1, 3).contiguous()


def _quads(n: int, k4: int, codes: Any, dtype: Any):
    """``[N, K]`` codes -> ``[P, k4, 32, 4]``: byte (b, n, i) = ``codes[n, 4b+i]``, zero-padded."""
    import torch

    full = torch.zeros(panel_count(n, NB) * NB, k4 * 4, dtype=dtype)
    full[:n, : codes.shape[1]] = codes
    return full.reshape(-1, NB, k4, 4).permute(0, 2, 1, 3).contiguous()


def _q8w_shape(p: Param, dt: str) -> tuple[int, ...]:
    n, _, kp = _dims(p)
    return (panel_count(n, NB), kp // 4, NB, 4)


def _q8w_codes(p: Param, dt: str):
    """5..8-bit weight-only codes ``[P, K'/4, 32, 4]`` uint8: ``code - qmin``."""
    import torch

    shape = _q8w_shape(p, dt)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.uint8, device="meta")
    n, k, _ = _dims(p)
    u = (p.data["qvalue"].to(torch.int16) - p.format.quant.qmin).to(torch.uint8).reshape(n, k)
    return _quads(n, shape[1], u, torch.uint8)


def _q8_shape(p: Param, dt: str) -> tuple[int, ...]:
    n, k = (int(d) for d in p.type.shape)
    return (panel_count(n, NB), (k + 3) // 4, NB, 4)


def _q8_codes(p: Param, dt: str):
    """W8A8 codes ``[P, K'/4, 32, 4]`` int8: byte (b, n, i) is ``w[n, 4b+i]``."""
    import torch

    shape = _q8_shape(p, dt)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.int8, device="meta")
    n = int(p.type.shape[0])
    return _quads(n, shape[1], p.data["qvalue"].to(torch.int8), torch.int8)


register_layout(Layout(f"vnni{NB}.q4.codes", _q4_shape, lambda p, dt: "u8", _q4_codes))
register_layout(Layout(f"vnni{NB}.q8w.codes", _q8w_shape, lambda p, dt: "u8", _q8w_codes))
register_layout(Layout(f"vnni{NB}.q8.codes", _q8_shape, lambda p, dt: "i8", _q8_codes))

#: Scales and offsets in 32-output panels (``panel32.{base}``), registered by the pipeline.
PANELLED = ("q4.scale", "q4.zero", "q8.scale")


# -- lowerings ------------------------------------------------------------------------------------


def linear_q(ctx: LowerCtx, n: Node, kernel: str, parts: int) -> relax.Expr:
    """``linear`` with an int4 (``kernel="q4"``) or 5..8-bit (``"q8w"``) weight-only weight."""
    from llmc.backends.cpu.pipeline import _rows, _static_rows

    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.quant is not None
    out_f, in_f = (int(d) for d in p.type.shape)
    g = p.format.quant.group or in_f
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    kp, ab = cpu_avx2.padded_k(in_f, g), cpu_avx2.act_block(in_f, g)
    dig = ctx.emit_te(cpu_avx2.act_digits, x, kp, ab, parts, name="avx2_digits")
    gsum = ctx.emit_te(group_sums, x, g, name="avx2_gsum")
    codes = ctx.weight(p, f"vnni{NB}.{kernel}.codes")
    scale = ctx.weight(p, f"panel{NB}.q4.scale", scale_dtype(p, dt))
    offset = ctx.weight(p, f"panel{NB}.q4.zero", scale_dtype(p, dt))
    sdt, m = tvm_dtype(scale_dtype(p, dt)), _static_rows(x)
    fn = cpu_avx2.q4_avx2 if kernel == "q4" else cpu_avx2.q8w_avx2
    y = ctx.call_kernel(
        (f"{kernel}_avx2", in_f, out_f, g, parts, sdt, m),
        lambda: fn(in_f, out_f, g, parts, sdt, m),
        f"{kernel}_avx2",
        [
            ctx.emit(relax.TupleGetItem(dig, 0)),
            ctx.emit(relax.TupleGetItem(dig, 1)),
            gsum,
            codes,
            scale,
            offset,
        ],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)


def qlinear_a8(ctx: LowerCtx, n: Node) -> relax.Expr:
    """``qlinear_a8`` (W8A8): ``act_quant`` then :func:`~.kernels.cpu_avx2.w8a8_avx2` (decode
    and prefill; a prefill chunk re-reads each panel from cache per row)."""
    from llmc.backends.cpu.pipeline import _rows, _static_rows

    dt = n.out.type.dtype
    p = ctx.graph.root().params[n.attrs.weight]
    out_f, in_f = (int(d) for d in p.type.shape)
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    q = ctx.emit_te(te_ops.act_quant, x, n.attrs.act_scale, name="act_quant")
    m = _static_rows(x)
    y = ctx.call_kernel(
        ("w8a8_avx2", in_f, out_f, m),
        lambda: cpu_avx2.w8a8_avx2(in_f, out_f, m),
        "w8a8_avx2",
        [
            ctx.emit(relax.TupleGetItem(q, 0)),
            ctx.emit(relax.TupleGetItem(q, 1)),
            ctx.weight(p, f"vnni{NB}.q8.codes"),
            ctx.weight(p, f"panel{NB}.q8.scale"),
        ],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    if len(n.inputs) == 3:
        y = ctx.emit(relax.op.add(y, ctx.cast(ctx.arg(n.inputs[2]), "f32")))
    return ctx.cast(unflatten_rows(ctx, y, lead), dt)
