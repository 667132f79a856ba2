"""The CPU pipeline: LLVM for the host CPU, weights in panel layouts, scheduled GEMM kernels.

Differences from the shared pipeline (tables only):

- the TVM target is the registry's ``llvm`` dict plus the host's ``mcpu`` (AVX-512 where present);
  the manifest records the ISA extensions the code may use, and the runner refuses the artifact
  on a CPU that lacks one;
- ``linear`` (dense, 4-bit, N:M) runs a panel-layout GEMM (:mod:`llmc.backends.kernels.cpu`;
  N:M on AVX-512: :mod:`llmc.backends.kernels.cpu_sparse`), threaded over output panels; an embedding table that is also a linear weight (tied LM head) is
  gathered from the panel layout, so it is stored once;
- everything else runs as the plain loops TVM generates from the TE/Relax definitions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from functools import cache
from typing import Any

import tvm
from tvm import relax, te, tirx

from llmc.backends.cpu import avx2
from llmc.backends.cpu.parallel import inline_chains, parallelize_rows
from llmc.backends.kernels import cpu as cpu_kernels
from llmc.backends.kernels import (
    cpu_amx,
    cpu_gemm,
    cpu_group,
    cpu_sparse,
    cpu_vnni,
    te_actq,
    te_ops,
)
from llmc.backends.layouts import (
    Layout,
    get_layout,
    nm_of,
    panel_count,
    register_layout,
    scale_dtype,
    tvm_dtype,
)
from llmc.backends.lower import PREFILL_LAST, Entry, LowerCtx
from llmc.backends.pipeline import TVMPipeline
from llmc.backends.rules import (
    Rule,
    add_bias_cast,
    flatten_rows,
    fmt_is,
    is_dense,
    is_nm,
    is_q4,
    is_q8g,
    unflatten_rows,
    weight_param,
)
from llmc.ir.graph import Node
from llmc.ir.params import Param
from llmc.targets.cpu_isa import KernelIsa, host_isa_flags, use_amx
from llmc.targets.cpu_isa import build_isa as _build_isa

#: Output rows per panel: 64 float32 = four AVX-512 registers (the layout is part of the
#: artifact's ABI; the ISA check on load keeps it on the kind of CPU it was tuned for).
NB = 64


@cache
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``emeraldrapids``, ``znver4``, ...)."""
    import tvm_ffi

    return str(tvm_ffi.get_global_func("target.llvm_get_system_cpu")())


@cache
def _host_flags() -> tuple[str, ...]:
    return tuple(host_isa_flags())


def build_isa() -> tuple[KernelIsa, str, list[str]]:
    """``(kernel family, LLVM mcpu, ISA flags the artifact records)`` of a build on this host
    (:func:`llmc.targets.cpu_isa.build_isa`; ``$LLMC_CPU_ISA`` forces a family)."""
    return _build_isa(host_cpu(), list(_host_flags()))


def vector_bits() -> int:
    """The widest vector register the build may use (sizes the GEMM register blocks): the
    host's, or 256 when ``$LLMC_CPU_ISA=avx2`` caps an AVX-512 host."""
    flags = set(build_isa()[2])
    if "avx512f" in flags:
        return 512
    return 256 if "avx" in flags else 128


def prefill_amx() -> bool:
    """Whether this build's W8A8 prefill uses AMX tiles (:mod:`.kernels.cpu_amx`): the build's
    ISA flags have ``amx_tile`` and ``amx_int8`` and ``$LLMC_CPU_AMX`` is not ``0``
    (:func:`llmc.targets.cpu_isa.use_amx`)."""
    return use_amx(build_isa()[2])


def kernel_isa() -> str:
    """Which decode kernels this build gets: ``"avx512_vnni"`` (:mod:`.kernels.cpu_vnni`),
    ``"avx2"`` (:mod:`.kernels.cpu_avx2`) or ``"portable"`` (the float panel kernels, any CPU).
    The artifact records the ISA flags its code may use, so a VNNI artifact is refused on a
    CPU without VNNI and an AVX2 one on a CPU without AVX2."""
    return build_isa()[0].name


#: Signed 8-bit digits per activation element in the VNNI weight-only kernels when the weight
#: keeps float activations (``QuantSpec.act_bits = 0``): 3 (24-bit fixed point, float32-level
#: error). A weight recording ``act_bits = 8`` gets 1 digit, the recorded int8 activations
#: (``Q4_A8_PARTS``); see bench/cpu_quant_decode.json for what each costs.
Q4_ACT_PARTS = 3
Q4_A8_PARTS = 1


# -- panel layouts of quantized and sparse weights ------------------------------------------------


def _to_panels(t, nb: int):
    """[N, X] -> [ceil(N/nb), X, nb] (zero-padded)."""
    import torch

    n = t.shape[0]
    pad = panel_count(n, nb) * nb - n
    if pad:
        t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])])
    return t.reshape(-1, nb, *t.shape[1:]).movedim(1, -1)


def _panelled(base: str, nb: int) -> Layout:
    inner = get_layout(base)

    def shape(p: Param, dt: str) -> tuple[int, ...]:
        s = inner.shape(p, dt)
        return (panel_count(s[0], nb), *s[1:], nb)

    def transform(p: Param, dt: str):
        t = inner.transform(p, dt)
        if t.device.type == "meta":
            import torch

            return torch.empty(shape(p, dt), dtype=t.dtype, device="meta")
        return _to_panels(t, nb).contiguous()

    return Layout(f"panel{nb}.{base}", shape, inner.dtype, transform)


# q4 codes become [P, K/2, NB]: the byte holding (k, k+1) of output lane j, low nibble = even k.
for _base in (
    "q4.codes",
    "q4.scale",
    "q4.zero",
    "q8g.codes",
    "q8g.offset",
    "nm.values",
    "nm.index",
    "nm.packed.index",
):
    register_layout(_panelled(_base, NB))


def _vnni_q4_codes(p: Param, dt: str):
    """``[P, K'/8, 64, 4]`` uint8: byte (b, n, i) holds nibble ``k = 8b+i`` (low) and
    ``k = 8b+4+i`` (high) of output ``n``; K and N zero-padded."""
    import torch

    q = p.format.quant
    assert q is not None
    n, k = (int(d) for d in p.type.shape)
    kp = cpu_vnni.padded_k(k, q.group or k)
    shape = (panel_count(n, NB), kp // 8, NB, 4)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.uint8, device="meta")
    u = (p.data["qvalue"].to(torch.int16) - q.qmin).to(torch.uint8).reshape(n, k)
    full = torch.zeros(shape[0] * NB, kp, dtype=torch.uint8)
    full[:n, :k] = u
    t = full.reshape(shape[0], NB, kp // 8, 2, 4)
    return (t[:, :, :, 0, :] | (t[:, :, :, 1, :] << 4)).permute(0, 2, 1, 3).contiguous()


def _vnni_q4_shape(p: Param, dt: str) -> tuple[int, ...]:
    q = p.format.quant
    assert q is not None
    n, k = (int(d) for d in p.type.shape)
    return (panel_count(n, NB), cpu_vnni.padded_k(k, q.group or k) // 8, NB, 4)


register_layout(Layout(f"vnni{NB}.q4.codes", _vnni_q4_shape, lambda p, dt: "u8", _vnni_q4_codes))


def _vnni_q8w_shape(p: Param, dt: str) -> tuple[int, ...]:
    q = p.format.quant
    assert q is not None
    n, k = (int(d) for d in p.type.shape)
    return (panel_count(n, NB), cpu_vnni.padded_k(k, q.group or k) // 4, NB, 4)


def _vnni_q8w_codes(p: Param, dt: str):
    """5..8-bit weight-only codes ``[P, K'/4, 64, 4]`` uint8: byte (b, n, i) is
    ``code[n, 4b+i] - qmin``; K and N zero-padded."""
    import torch

    q = p.format.quant
    assert q is not None
    shape = _vnni_q8w_shape(p, dt)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.uint8, device="meta")
    n, k = (int(d) for d in p.type.shape)
    full = torch.zeros(shape[0] * NB, shape[1] * 4, dtype=torch.uint8)
    full[:n, :k] = (p.data["qvalue"].to(torch.int16) - q.qmin).to(torch.uint8).reshape(n, k)
    return full.reshape(shape[0], NB, shape[1], 4).permute(0, 2, 1, 3).contiguous()


register_layout(Layout(f"vnni{NB}.q8w.codes", _vnni_q8w_shape, lambda p, dt: "u8", _vnni_q8w_codes))


def _vnni_q8_shape(p: Param, dt: str) -> tuple[int, ...]:
    n, k = (int(d) for d in p.type.shape)
    return (panel_count(n, NB), (k + 3) // 4, NB, 4)


def _vnni_q8_codes(p: Param, dt: str):
    """W8A8 codes ``[P, K'/4, 64, 4]`` int8: byte (b, n, i) is ``w[n, 4b+i]``; zero-padded."""
    import torch

    shape = _vnni_q8_shape(p, dt)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.int8, device="meta")
    n, k = (int(d) for d in p.type.shape)
    full = torch.zeros(shape[0] * NB, shape[1] * 4, dtype=torch.int8)
    full[:n, :k] = p.data["qvalue"].to(torch.int8)
    return full.reshape(shape[0], NB, shape[1], 4).permute(0, 2, 1, 3).contiguous()


def _vnni_q8_wsum(p: Param, dt: str):
    """Row sums of the W8A8 codes ``[P, 64]`` int32 (the u8 offset's correction)."""
    import torch

    n = int(p.type.shape[0])
    shape = (panel_count(n, NB), NB)
    if p.is_meta:
        return torch.empty(shape, dtype=torch.int32, device="meta")
    s = torch.zeros(shape[0] * NB, dtype=torch.int32)
    s[:n] = p.data["qvalue"].to(torch.int32).sum(1)
    return s.reshape(shape)


register_layout(Layout(f"vnni{NB}.q8.codes", _vnni_q8_shape, lambda p, dt: "i8", _vnni_q8_codes))
register_layout(
    Layout(
        f"vnni{NB}.q8.wsum",
        lambda p, dt: (panel_count(int(p.type.shape[0]), NB), NB),
        lambda p, dt: "i32",
        _vnni_q8_wsum,
    )
)
register_layout(_panelled("q8.scale", NB))
for _base in avx2.PANELLED:
    register_layout(_panelled(_base, avx2.NB))

# -- rules ----------------------------------------------------------------------------------------


def _rows(x: relax.Expr) -> Any:
    return x.ty.shape.values[0]


def _static_rows(x: relax.Expr) -> int | None:
    """1 when the row count is statically one (decode), else None (symbolic)."""
    r = _rows(x)
    return 1 if isinstance(r, tvm.tirx.IntImm) and int(r) == 1 else None


def act_quant_once(ctx: LowerCtx, n: Node, x: relax.Expr, act_scale: float) -> relax.Expr:
    """The ``(codes [M, K] int8, scales [M] float32)`` tuple of ``x``, the rows of ``n``'s
    input, quantized per token (``te_ops.act_quant``'s numbers). One call per distinct input
    and scale in the function being lowered (``ctx.shared``): the linears that read the same
    activations (q/k/v, gate/up) share it. A dynamic scale on rows of a multiple of 16 runs
    :func:`~.kernels.te_actq.act_quant_rows` (its row maximum vectorized; bit-identical)."""
    key = ("act_quant", ctx.arg(n.inputs[0]), float(act_scale))
    if key not in ctx.shared:
        k, dt = int(x.ty.shape.values[1]), str(x.ty.dtype)
        if act_scale <= 0 and te_actq.supports_rows(k):
            ctx.shared[key] = ctx.call_kernel(
                ("act_quant_rows", k, dt),
                lambda: te_actq.act_quant_rows(k, dt),
                "act_quant",
                [x],
                [relax.TensorType([_rows(x), k], "int8"), relax.TensorType([_rows(x)], "float32")],
            )
        else:
            ctx.shared[key] = ctx.emit_te(te_ops.act_quant, x, act_scale, name="act_quant")
    return ctx.shared[key]


def _linear_panel(ctx: LowerCtx, n: Node) -> relax.Expr:
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None
    out_f, in_f = (int(d) for d in p.type.shape)
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    w = ctx.weight(p, f"panel{NB}", dt)
    xdt, wdt, m = x.ty.dtype, tvm_dtype(dt), _static_rows(x)
    y = ctx.call_kernel(
        ("panel_gemm", in_f, out_f, NB, xdt, wdt, m, vector_bits()),
        lambda: cpu_kernels.panel_gemm(in_f, out_f, NB, xdt, wdt, m, vector_bits()),
        "panel_gemm",
        [x, w],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)


def _linear_panel_q4(ctx: LowerCtx, n: Node) -> relax.Expr:
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.quant is not None
    out_f, in_f = (int(d) for d in p.type.shape)
    g = p.format.quant.group or in_f
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    codes = ctx.weight(p, f"panel{NB}.q4.codes")
    scale = ctx.weight(p, f"panel{NB}.q4.scale", scale_dtype(p, dt))
    offset = ctx.weight(p, f"panel{NB}.q4.zero", scale_dtype(p, dt))
    xdt, sdt, m = x.ty.dtype, tvm_dtype(scale_dtype(p, dt)), _static_rows(x)
    y = ctx.call_kernel(
        ("panel_gemm_q4", in_f, out_f, NB, g, xdt, sdt, m, vector_bits()),
        lambda: cpu_kernels.panel_gemm_q4(in_f, out_f, NB, g, xdt, sdt, m, vector_bits()),
        "panel_gemm_q4",
        [x, codes, scale, offset],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)


def _vnni_ok(ctx: LowerCtx, n: Node, fmt) -> bool:
    p = member_param(ctx, n)
    # float32 models only (half *scales*, QuantSpec.scale_dtype=f16, are read and tested)
    if kernel_isa() != "avx512_vnni" or p is None or not fmt(p) or n.out.type.dtype != "f32":
        return False
    q = p.format.quant
    k = int(p.type.shape[1])
    if not cpu_vnni.supports_q4(k, q.group or k):
        return False
    return q.act_bits == 0 or cpu_vnni.int8_block(k, q.group or k, q.act_group) is not None


def _vnni_q4_ok(ctx: LowerCtx, n: Node) -> bool:
    return _vnni_ok(ctx, n, is_q4)


def _vnni_q8w_ok(ctx: LowerCtx, n: Node) -> bool:
    return _vnni_ok(ctx, n, is_q8g)


def _linear_vnni_q4(ctx: LowerCtx, n: Node, kernel: str = "q4") -> relax.Expr:
    """int4 (``q4``) or 5..8-bit (``q8w``) weight-only linear on VNNI: three activation digits
    for float activations, one (the recorded int8 activations, exact to the reference's
    ``fake_quant_act``) when the weight records ``act_bits = 8``. Decode computes the linears of
    one group (:func:`decode_group`: q/k/v, gate/up) in one call."""
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    y = group_result(
        ctx, n, x, lambda c, u: _vnni_key(c, u, kernel), lambda g: _vnni_call(ctx, g, x, kernel)
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), n.out.type.dtype)


def _vnni_key(ctx: LowerCtx, n: Node, kernel: str) -> tuple | None:
    """What a weight-only VNNI call's activation arguments and kernel depend on (None: ``n``
    is not lowered by that rule)."""
    ok = _vnni_q4_ok if kernel == "q4" else _vnni_q8w_ok
    if n.op != "linear" or not ok(ctx, n):
        return None
    p = member_param(ctx, n)
    q = p.format.quant
    in_f = int(p.type.shape[1])
    shared = "zero" not in p.data and q.symmetric
    return (
        kernel,
        in_f,
        q.group or in_f,
        q.act_bits,
        q.act_group,
        shared,
        n.out.type.dtype,
        q.scale_dtype,
    )


def _vnni_call(ctx: LowerCtx, group: list[Node], x: relax.Expr, kernel: str) -> list[relax.Expr]:
    """One ``{kernel}_vnni`` call for the linears of ``group`` (the same :func:`_vnni_key`):
    the activations prepared once (inside the call where :func:`cpu_vnni.fused_a8` allows),
    one result per linear."""
    n, dt = group[0], group[0].out.type.dtype
    ps = [member_param(ctx, u) for u in group]
    q = ps[0].format.quant
    in_f = int(ps[0].type.shape[1])
    g = q.group or in_f
    kp = cpu_vnni.padded_k(in_f, g)
    quantize = None  # the kernel prepares the float row itself: act_group (1 digit) or 0 (3)
    if q.act_bits:
        ab = cpu_vnni.int8_block(in_f, g, q.act_group)
        assert ab is not None  # _vnni_ok
        parts = Q4_A8_PARTS
        if cpu_vnni.fused_a8(in_f, g, q.act_group, ab) and x.ty.dtype == "float32":
            quantize = q.act_group
        else:
            a8 = ctx.emit_te(cpu_vnni.act_int8, x, kp, ab, q.act_group, g, name="vnni_act_int8")
            digits, xs, gsum = (ctx.emit(relax.TupleGetItem(a8, i)) for i in range(3))
    else:
        ab, parts = cpu_vnni.act_block(in_f, g), Q4_ACT_PARTS
        if parts == 3 and cpu_vnni.fused_a8(in_f, g, ab, ab) and x.ty.dtype == "float32":
            quantize = 0  # the kernel splits the row into digits itself
        else:
            dig = ctx.emit_te(cpu_vnni.act_digits, x, kp, ab, parts, name="vnni_digits")
            digits = ctx.emit(relax.TupleGetItem(dig, 0))
            xs = ctx.emit(relax.TupleGetItem(dig, 1))
            gsum = ctx.emit_te(cpu_vnni.group_sums, x, g, name="vnni_gsum")
    sd = scale_dtype(ps[0], dt)  # QuantSpec.scale_dtype, the same for the group (_vnni_key)
    sdt, m = tvm_dtype(sd), _static_rows(x)
    # symmetric codes: the offset is -qmin everywhere, one shared row instead of a stream
    shared = _vnni_key(ctx, n, kernel)[5]
    weights: list[relax.Expr] = []
    for p in ps:
        if shared:
            import numpy as np

            offset = relax.const(np.full((1, 1, NB), -p.format.quant.qmin, dtype=sdt))
        else:
            offset = ctx.weight(p, f"panel{NB}.q4.zero", sd)
        weights += [
            ctx.weight(p, f"vnni{NB}.{kernel}.codes"),
            ctx.weight(p, f"panel{NB}.q4.scale", sd),
            offset,
        ]
    ns = _widths(ps)
    fn = cpu_vnni.q4_vnni if kernel == "q4" else cpu_vnni.q8w_vnni
    return _call_group(
        ctx,
        (f"{kernel}_vnni", in_f, ns, g, parts, sdt, m, ab, shared, quantize),
        lambda: fn(in_f, ns, g, parts, sdt, m, ab, shared, quantize),
        f"{kernel}_vnni",
        [*([x] if quantize is not None else [digits, xs, gsum]), *weights],
        x,
        ns,
    )


def _vnni_host(ctx: LowerCtx, n: Node) -> bool:
    return kernel_isa() == "avx512_vnni"


def _a8_weights(ctx: LowerCtx, p: Param) -> list[relax.Expr]:
    return [
        ctx.weight(p, f"vnni{NB}.q8.codes"),
        ctx.weight(p, f"vnni{NB}.q8.wsum"),
        ctx.weight(p, f"panel{NB}.q8.scale"),
    ]


# -- decode groups ---------------------------------------------------------------------------------
#
# Decode (one row) computes the linears that read the same activations with the same kernel and
# format (q/k/v, gate/up) in one kernel call: the activations are prepared once and one parallel
# loop covers the panels of all the weights (llmc.backends.kernels.cpu_group), so a step pays
# one thread join per group instead of one per linear. The first member of a group (in graph
# order) emits the call; the results of the others wait in ``_cpu_group_pending`` until their
# own nodes are lowered (later in the same function), where their bias is added.


def decode_group(
    ctx: LowerCtx, n: Node, key: Callable[[LowerCtx, Node], Hashable | None]
) -> list[Node]:
    """``n`` and the nodes after it that read the same activations (``inputs[0]``), have the
    same ``key`` (kernel family and format, None: not groupable) and are lowered into the same
    function (the same outlined layer, or both inline): up to ``cpu_group.MAX_GROUP`` of them,
    in graph order. Nodes inside ``cond`` regions are not grouped."""
    low = ctx.lowering
    info = getattr(low, "_cpu_group_nodes", None)
    if info is None:
        g = ctx.graph
        pos = {id(x): i for i, x in enumerate(g.nodes)}
        fn = {id(x): layer.index for layer in low.plan.layers for x in layer.nodes}
        info = low._cpu_group_nodes = (g.users(), pos, fn)
    users, pos, fn = info
    k = key(ctx, n)
    if id(n) not in pos or k is None:
        return [n]

    def where(u: Node) -> int | None:
        return fn.get(id(u)) if id(u) in low.plan.covered else None

    group = [n]
    for u in users.get(n.inputs[0], []):
        if len(group) == cpu_group.MAX_GROUP:
            break
        if (
            id(u) in pos
            and pos[id(u)] > pos[id(n)]
            and u.op == n.op
            and where(u) == where(n)
            and key(ctx, u) == k
        ):
            group.append(u)
    return group


def member_param(ctx: LowerCtx, n: Node) -> Param | None:
    """The weight of the linear ``n``, also before its ``param`` node is lowered (a decode group
    looks at members after the node being lowered): the lowered value's, else the graph's."""
    return weight_param(ctx, n) or ctx.graph.param_of(n.inputs[1])


def group_result(
    ctx: LowerCtx,
    n: Node,
    x: relax.Expr,
    key: Callable[[LowerCtx, Node], Hashable | None],
    call: Callable[[list[Node]], list[relax.Expr]],
) -> relax.Expr:
    """The ``[rows, out]`` float32 result of ``n``: computed by ``call`` for ``n``'s decode group
    (``x`` has one row; :func:`decode_group`) or for ``n`` alone, or taken from the group call
    an earlier member emitted."""
    pending: dict[int, relax.Expr] | None = getattr(ctx.lowering, "_cpu_group_pending", None)
    if pending is None:
        pending = ctx.lowering._cpu_group_pending = {}
    if id(n) in pending:
        return pending.pop(id(n))
    group = decode_group(ctx, n, key) if _static_rows(x) == 1 else [n]
    ys = call(group)
    for u, y in zip(group[1:], ys[1:], strict=True):
        pending[id(u)] = y
    return ys[0]


def _widths(ps: list[Param]) -> int | tuple[int, ...]:
    """The output widths of a group's weights (one weight: its width, the single kernel)."""
    ns = tuple(int(p.type.shape[0]) for p in ps)
    return ns[0] if len(ns) == 1 else ns


def _call_group(
    ctx: LowerCtx,
    key: tuple,
    make: Callable[[], tirx.PrimFunc],
    name: str,
    args: list[relax.Expr],
    x: relax.Expr,
    ns: int | tuple[int, ...],
) -> list[relax.Expr]:
    """``ctx.call_kernel`` for a kernel with one ``[rows, n]`` float32 result per width."""
    widths = (ns,) if isinstance(ns, int) else ns
    outs = [relax.TensorType([_rows(x), nj], "float32") for nj in widths]
    res = ctx.call_kernel(key, make, name, args, outs if len(outs) > 1 else outs[0])
    if len(outs) == 1:
        return [res]
    return [ctx.emit(relax.TupleGetItem(res, j)) for j in range(len(outs))]


def _avx2_ok(ctx: LowerCtx, n: Node, fmt) -> bool:
    p = member_param(ctx, n)
    if kernel_isa() != "avx2" or p is None or not fmt(p) or n.out.type.dtype != "f32":
        return False
    k = int(p.type.shape[1])
    return cpu_vnni.supports_q4(k, p.format.quant.group or k)


def _avx2_host(ctx: LowerCtx, n: Node) -> bool:
    return kernel_isa() == "avx2"


def _qlinear_a8_vnni(ctx: LowerCtx, n: Node) -> relax.Expr:
    dt = n.out.type.dtype
    p = ctx.graph.root().params[n.attrs.weight]
    out_f, in_f = (int(d) for d in p.type.shape)
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    act_scale, m = float(n.attrs.act_scale), _static_rows(x)
    if m is None and cpu_gemm.supports_w8a8(in_f):  # prefill: register-blocked over rows
        q = act_quant_once(ctx, n, x, act_scale)
        amx = prefill_amx()  # AMX tiles where the host has them (LLMC_CPU_AMX=0: VNNI)
        y = ctx.call_kernel(
            ("w8a8_prefill", in_f, out_f, amx),
            lambda: (cpu_amx.w8a8_prefill_amx if amx else cpu_gemm.w8a8_prefill)(in_f, out_f),
            "w8a8_prefill",
            [ctx.emit(relax.TupleGetItem(q, 0)), ctx.emit(relax.TupleGetItem(q, 1))]
            + _a8_weights(ctx, p),
            relax.TensorType([_rows(x), out_f], "float32"),
        )
    else:
        # decode: the per-token quantization runs inside the kernel, once for the whole group
        # of linears reading these activations (one call, no int8 tensor)
        def call(group: list[Node]) -> list[relax.Expr]:
            ps = [ctx.graph.root().params[u.attrs.weight] for u in group]
            ns = tuple(int(q.type.shape[0]) for q in ps)
            return _call_group(
                ctx,
                ("w8a8_vnni", in_f, ns, m, act_scale),
                lambda: cpu_vnni.w8a8_vnni_multi(in_f, ns, m, act_scale),
                "w8a8_vnni",
                [ctx.cast(x, "f32")] + [w for q in ps for w in _a8_weights(ctx, q)],
                x,
                ns,
            )

        y = group_result(ctx, n, x, _a8_key, call)
    if len(n.inputs) == 3:
        y = ctx.emit(relax.op.add(y, ctx.cast(ctx.arg(n.inputs[2]), "f32")))
    return ctx.cast(unflatten_rows(ctx, y, lead), dt)


def _a8_key(ctx: LowerCtx, n: Node) -> tuple | None:
    """``qlinear_a8`` that share one quantized activation row: the same ``act_scale``."""
    p = ctx.graph.root().params[n.attrs.weight]
    return ("w8a8", int(p.type.shape[1]), float(n.attrs.act_scale))


def _linear_panel_q8(ctx: LowerCtx, n: Node) -> relax.Expr:
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.quant is not None
    out_f, in_f = (int(d) for d in p.type.shape)
    g = p.format.quant.group or in_f
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    codes = ctx.weight(p, f"panel{NB}.q8g.codes")
    scale = ctx.weight(p, f"panel{NB}.q4.scale", scale_dtype(p, dt))
    offset = ctx.weight(p, f"panel{NB}.q8g.offset", scale_dtype(p, dt))
    xdt, sdt, m = x.ty.dtype, tvm_dtype(scale_dtype(p, dt)), _static_rows(x)
    y = ctx.call_kernel(
        ("panel_gemm_q8", in_f, out_f, NB, g, xdt, sdt, m, vector_bits()),
        lambda: cpu_kernels.panel_gemm_q8(in_f, out_f, NB, g, xdt, sdt, m, vector_bits()),
        "panel_gemm_q8",
        [x, codes, scale, offset],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)


def _nm_permute_ok(p: Param) -> bool:
    """Whether the AVX-512 permute kernel (:mod:`.kernels.cpu_sparse`) runs this N:M weight."""
    keep, m = nm_of(p)
    return vector_bits() >= 512 and cpu_sparse.supports(keep, m, int(p.type.shape[1]))


def _linear_panel_nm(ctx: LowerCtx, n: Node) -> relax.Expr:
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None
    keep, m = nm_of(p)
    out_f, in_f = (int(d) for d in p.type.shape)
    x, lead = flatten_rows(ctx, ctx.arg(n.inputs[0]))
    vals = ctx.weight(p, f"panel{NB}.nm.values", dt)
    xdt, wdt, rows = x.ty.dtype, tvm_dtype(dt), _static_rows(x)
    if _nm_permute_ok(p):
        idx = ctx.weight(p, f"panel{NB}.nm.packed.index")
        y = ctx.call_kernel(
            ("nm_permute", in_f, out_f, keep, m, xdt, wdt, rows),
            lambda: cpu_sparse.nm_permute(in_f, out_f, keep, m, xdt, wdt, rows),
            "nm_permute",
            [x, vals, idx],
            relax.TensorType([_rows(x), out_f], "float32"),
        )
        return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)
    idx = ctx.weight(p, f"panel{NB}.nm.index")
    y = ctx.call_kernel(
        ("panel_gemm_nm", in_f, out_f, NB, keep, m, xdt, wdt, rows, vector_bits()),
        lambda: cpu_kernels.panel_gemm_nm(in_f, out_f, NB, keep, m, xdt, wdt, rows, vector_bits()),
        "panel_gemm_nm",
        [x, vals, idx],
        relax.TensorType([_rows(x), out_f], "float32"),
    )
    return add_bias_cast(ctx, n, unflatten_rows(ctx, y, lead), dt)


def _gather_panel(table: te.Tensor, ids: te.Tensor, nb: int, rows: int) -> te.Tensor:
    """Rows of a panel-layout table; ids are clamped to ``[0, rows)`` like TVM's ``take`` in
    "clip" mode (the runner refuses out-of-range ids; this keeps a bad one inside the table)."""
    d = table.shape[1]

    def row(*i: Any) -> Any:
        r = tvm.te.max(tvm.te.min(ids[i[:-1]], rows - 1), 0)
        return table[r // nb, i[-1], r % nb]

    return te.compute((*ids.shape, d), row, name="embedding_panel")


def _linear_weights(ctx: LowerCtx) -> set[str]:
    """Params that some dense ``linear`` reads as its weight (they are stored in panels)."""
    low = ctx.lowering
    cached = getattr(low, "_cpu_linear_weights", None)
    if cached is None:
        cached = set()
        for _, n in ctx.graph.walk():
            if n.op == "linear" and n.inputs[1].node is not None:
                w = n.inputs[1].node
                if w.op == "param":
                    p = ctx.graph.root().params[w.attrs.name]
                    if is_dense(p) and not is_nm(p):
                        cached.add(p.name)
        low._cpu_linear_weights = cached
    return cached


def _embedding_tied(ctx: LowerCtx, n: Node) -> bool:
    p = ctx.param(n.inputs[1])
    return p is not None and is_dense(p) and p.name in _linear_weights(ctx)


def _embedding_panel(ctx: LowerCtx, n: Node) -> relax.Expr:
    ids = ctx.arg(n.inputs[0])
    p = ctx.param(n.inputs[1])
    assert p is not None
    table = ctx.weight(p, f"panel{NB}", n.out.type.dtype)
    rows = int(p.type.shape[0])
    return ctx.emit_te(_gather_panel, table, ids, NB, rows, name="embedding_panel")


def _dense_param(ctx: LowerCtx, n: Node) -> bool:
    p = weight_param(ctx, n)
    return p is not None and is_dense(p) and not is_nm(p)


#: How each N:M kernel compares with the dense kernel of the same weights (decode, prefill), as
#: measured by bench/cpu_sparse_decode.py on the development host (a 2-vCPU AVX-512 EPYC): the
#: permute kernel 1.4-2.2x dense decode and 1.06-1.33x dense prefill at GPT-2-small shapes; the
#: gather kernel about 0.12x dense prefill and, whole-model, slower decode (issue 14: tiny 870 vs
#: 1070 tok/s). The compile report carries it (``backend.sparse``) and warns where a format is
#: not faster than dense.
_NM_VS_DENSE = {
    "nm_permute": ("faster", "no slower"),
    "panel_gemm_nm": ("not faster", "slower"),
    "dense_quantized": ("same", "same"),
}


def sparse_summary(graph: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """The compile report's ``backend.sparse`` entry for the N:M params of ``graph`` and the
    one-line warnings for those that do not run faster than dense on this host."""
    kernels: dict[str, list[str]] = {}
    patterns: set[str] = set()
    for p in graph.root().params.values():
        s = p.format.sparsity
        if s is None or s.kind != "nm" or len(p.type.shape) != 2:
            continue
        patterns.add(f"{s.n}:{s.m}")
        if p.format.quant is not None:
            k = "dense_quantized"
        else:
            k = "nm_permute" if _nm_permute_ok(p) else "panel_gemm_nm"
        kernels.setdefault(k, []).append(f"{s.n}:{s.m}")
    if not kernels:
        return None, []
    worst = max(kernels, key=lambda k: list(_NM_VS_DENSE).index(k))
    decode, prefill = _NM_VS_DENSE[worst]
    entry = {
        "patterns": sorted(patterns),
        "kernels": {k: len(v) for k, v in sorted(kernels.items())},
        "kernel": worst if len(kernels) == 1 else "mixed",
        "decode_vs_dense": decode,
        "prefill_vs_dense": prefill,
        "measured_in": "bench/cpu_sparse_decode.json",
    }
    warnings = []
    for k, pats in kernels.items():
        fmt = "/".join(sorted(set(pats)))
        if k == "panel_gemm_nm":
            warnings.append(
                f"{len(pats)} N:M sparse weights ({fmt}) run the portable gather kernel on this "
                "CPU (no AVX-512 permute kernel for it): prefill about 8x slower than dense, "
                "decode not faster"
            )
        elif k == "dense_quantized":
            warnings.append(
                f"{len(pats)} weights are {fmt} sparse and quantized: the CPU runs them with the "
                "dense quantized kernel, so the sparsity saves no time (same speed as dense)"
            )
    return entry, warnings


class CPUPipeline(TVMPipeline):
    kind = "cpu"
    # decode (one row) gets its own entry: register blocks of one row, no padding; generation's
    # prefill computes the head for the last row only (prefill_last; llmc.ir.lastrow)
    entries = (Entry("prefill"), PREFILL_LAST, Entry("decode", (("batch", 1), ("seq", 1))))
    views_before_fusion = True

    def tvm_target(self, target: Any) -> tvm.target.Target:
        d = dict(target.tvm_target or {"kind": "llvm"})
        d.setdefault("mcpu", build_isa()[1])
        return tvm.target.Target(d)

    def target_rules(self) -> list[Rule]:
        return [
            Rule("cpu.linear.vnni_q4", "linear", _linear_vnni_q4, when=_vnni_q4_ok, act_quant=True),
            Rule(
                "cpu.linear.avx2_q4",
                "linear",
                lambda ctx, n: avx2.linear_q(ctx, n, "q4", Q4_ACT_PARTS),
                when=lambda ctx, n: _avx2_ok(ctx, n, is_q4),
                act_quant=True,
            ),
            Rule("cpu.linear.panel_q4", "linear", _linear_panel_q4, when=fmt_is(is_q4)),
            Rule(
                "cpu.linear.vnni_q8w",
                "linear",
                lambda ctx, n: _linear_vnni_q4(ctx, n, "q8w"),
                when=_vnni_q8w_ok,
                act_quant=True,
            ),
            Rule(
                "cpu.linear.avx2_q8w",
                "linear",
                lambda ctx, n: avx2.linear_q(ctx, n, "q8w", Q4_ACT_PARTS),
                when=lambda ctx, n: _avx2_ok(ctx, n, is_q8g),
                act_quant=True,
            ),
            Rule("cpu.qlinear_a8.vnni", "qlinear_a8", _qlinear_a8_vnni, when=_vnni_host),
            Rule("cpu.qlinear_a8.avx2", "qlinear_a8", avx2.qlinear_a8, when=_avx2_host),
            Rule("cpu.linear.panel_q8", "linear", _linear_panel_q8, when=fmt_is(is_q8g)),
            Rule("cpu.linear.panel_nm", "linear", _linear_panel_nm, when=fmt_is(is_nm)),
            Rule("cpu.linear.panel", "linear", _linear_panel, when=_dense_param),
            Rule("cpu.embedding.panel", "embedding", _embedding_panel, when=_embedding_tied),
        ]

    def run(self, graph: Any, target: Any, out: Any, report: dict[str, Any]) -> dict[str, Any]:
        fields = super().run(graph, target, out, report)
        # which W8A8 prefill kernel the artifact holds (the same name either way); "amx": the
        # runtime asks Linux for the tile state before loading it (tvm_runner.check_host)
        if any(k.startswith("w8a8_prefill") for k in fields["backend"]["kernels"]):
            amx = prefill_amx()
            fields["backend"].setdefault("cpu", {})["amx"] = amx
            report["backend"]["w8a8_prefill"] = "amx (tdpbssd tiles)" if amx else "avx512_vnni"
        entry, warnings = sparse_summary(graph)
        if entry is not None:
            report["backend"]["sparse"] = entry
            report.setdefault("warnings", []).extend(warnings)
        return fields

    def schedule_passes(self, tvm_target: tvm.target.Target) -> list[tvm.transform.Pass]:
        # the TE kernels of a prefill (norms, GELU, bias adds, act_quant) threaded over rows;
        # LLMC_CPU_SERIAL_TE=1 leaves them serial (the A/B of docs/backends.md)
        if os.environ.get("LLMC_CPU_SERIAL_TE") == "1":
            return []
        # element-wise chains (the GELU) as one pass first; LLMC_CPU_TE_STAGES=1 keeps their
        # stages (bit-identical to the builds before; docs/backends.md)
        if os.environ.get("LLMC_CPU_TE_STAGES") == "1":
            return [parallelize_rows]
        return [inline_chains, parallelize_rows]

    def target_fields(self, tvm_target: tvm.target.Target) -> dict[str, Any]:
        _, mcpu, flags = build_isa()
        return {"cpu": {"mcpu": str(tvm_target.attrs.get("mcpu", mcpu)), "isa": flags}}


PIPELINE = CPUPipeline()
