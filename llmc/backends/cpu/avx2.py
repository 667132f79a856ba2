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

from llmc.backends.kernels import cpu_avx2
from llmc.backends.kernels.cpu_vnni import group_sums
from llmc.backends.kernels.te_actq import act_fake_quant
from llmc.backends.layouts import (
    Layout,
    panel_count,
    register_layout,
    scale_dtype,
    tvm_dtype,
)
from llmc.backends.lower import LowerCtx
from llmc.backends.rules import add_bias_cast, flatten_rows, unflatten_rows
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
    """``linear`` with an int4 (``kernel="q4"``) or 5..8-bit (``"q8w"``) weight-only weight,
    its input fake-quantized first when the weight records ``act_bits`` (the rule quantizes the
    activations itself: ``Rule.act_quant``); decode computes the linears of one group (q/k/v, gate/up) in one call
    (:func:`llmc.backends.cpu.pipeline.decode_group`)."""
    from llmc.backends.cpu.pipeline import group_result

    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    y = group_result(
        ctx,
        n,
        x,
        lambda c, u: _q_key(c, u, kernel, parts),
        lambda group: _q_call(ctx, group, x, kernel, parts),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), n.out.type.dtype)


def _q_key(ctx: LowerCtx, n: Node, kernel: str, parts: int) -> tuple | None:
    from llmc.backends.cpu.pipeline import _avx2_ok, member_param
    from llmc.backends.rules import is_q4, is_q8g

    if n.op != "linear" or not _avx2_ok(ctx, n, is_q4 if kernel == "q4" else is_q8g):
        return None
    p = member_param(ctx, n)
    q = p.format.quant
    k = int(p.type.shape[1])
    # act_bits / act_group: the rule runs on the fake-quantized input (the same for the group)
    return (
        kernel,
        parts,
        k,
        q.group or k,
        q.act_bits,
        q.act_group,
        q.scale_dtype,
        n.out.type.dtype,
    )


def _q_call(
    ctx: LowerCtx, group: list[Node], x: relax.Expr, kernel: str, parts: int
) -> list[relax.Expr]:
    from llmc.backends.cpu.pipeline import _call_group, _static_rows, _widths, member_param

    dt = group[0].out.type.dtype
    ps = [member_param(ctx, u) for u in group]
    in_f = int(ps[0].type.shape[1])
    g = ps[0].format.quant.group or in_f
    kp, ab = cpu_avx2.padded_k(in_f, g), cpu_avx2.act_block(in_f, g)
    q = ps[0].format.quant
    if q.act_bits:  # the recorded int8 activations (the reference's fake_quant_act), once
        x = ctx.emit_te(act_fake_quant, x, q.act_group, name="act_fake_quant")
    dig = ctx.emit_te(cpu_avx2.act_digits, x, kp, ab, parts, name="avx2_digits")
    gsum = ctx.emit_te(group_sums, x, g, name="avx2_gsum")
    sd = scale_dtype(ps[0], dt)  # QuantSpec.scale_dtype, the same for the group (_q_key)
    weights = [
        w
        for p in ps
        for w in (
            ctx.weight(p, f"vnni{NB}.{kernel}.codes"),
            ctx.weight(p, f"panel{NB}.q4.scale", sd),
            ctx.weight(p, f"panel{NB}.q4.zero", sd),
        )
    ]
    sdt, m, ns = tvm_dtype(sd), _static_rows(x), _widths(ps)
    fn = cpu_avx2.q4_avx2 if kernel == "q4" else cpu_avx2.q8w_avx2
    return _call_group(
        ctx,
        (f"{kernel}_avx2", in_f, ns, g, parts, sdt, m),
        lambda: fn(in_f, ns, g, parts, sdt, m),
        f"{kernel}_avx2",
        [ctx.emit(relax.TupleGetItem(dig, 0)), ctx.emit(relax.TupleGetItem(dig, 1)), gsum]
        + weights,
        x,
        ns,
    )


def qlinear_a8(ctx: LowerCtx, n: Node) -> relax.Expr:
    """``qlinear_a8`` (W8A8): ``act_quant`` then :func:`~.kernels.cpu_avx2.w8a8_avx2` (decode
    and prefill; a prefill chunk re-reads each panel from cache per row). Decode quantizes the
    activations once for a group of linears reading them (q/k/v, gate/up) and computes the
    group in one call."""
    from llmc.backends.cpu.pipeline import (
        _a8_key,
        _call_group,
        _static_rows,
        act_quant_once,
        group_result,
    )

    dt = n.out.type.dtype
    in_f = int(ctx.graph.root().params[n.attrs.weight].type.shape[1])
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    m = _static_rows(x)

    def call(group: list[Node]) -> list[relax.Expr]:
        ps = [ctx.graph.root().params[u.attrs.weight] for u in group]
        q = act_quant_once(ctx, n, x, float(n.attrs.act_scale))
        ns = tuple(int(p.type.shape[0]) for p in ps)
        nk = ns[0] if len(ns) == 1 else ns
        return _call_group(
            ctx,
            ("w8a8_avx2", in_f, nk, m),
            lambda: cpu_avx2.w8a8_avx2(in_f, nk, m),
            "w8a8_avx2",
            [ctx.emit(relax.TupleGetItem(q, 0)), ctx.emit(relax.TupleGetItem(q, 1))]
            + [
                w
                for p in ps
                for w in (ctx.weight(p, f"vnni{NB}.q8.codes"), ctx.weight(p, f"panel{NB}.q8.scale"))
            ],
            x,
            nk,
        )

    y = group_result(ctx, n, x, _a8_key, call)
    if len(n.inputs) == 3:
        y = ctx.emit(relax.op.add(y, ctx.cast(ctx.arg(n.inputs[2]), "f32")))
    return ctx.cast(unflatten_rows(ctx, y, lead), dt)
