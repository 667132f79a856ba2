"""The routed ``moe`` lowering for the CPU: only the experts each row chose are computed.

``cpu.moe.routed`` (tried before the dense ``moe.dense`` rule, which GPUs keep) applies when the
expert weights are float params (so they can be laid out at compile time in ``moe.panel{NB}``,
:mod:`llmc.backends.layouts`). It emits, in this order (kernels in
:mod:`llmc.backends.kernels.moe_cpu`):

1. ``moe_route``: router softmax and top-k per row, then the (row, slot) pairs grouped by expert;
2. ``moe_gemm`` over ``gate_up``: each pair's gate and up rows from its own expert's weights;
3. the gated activation (elementwise Relax);
4. ``moe_gemm`` over ``down``;
5. the weighted sum of each row's ``top_k`` results (Relax).

At decode (one row) steps 2 and 4 read ``top_k`` of the ``E`` experts' weights; at prefill each
expert's weights are read once per thread's panel for all its rows, in register blocks of rows.
"""

from __future__ import annotations

from tvm import relax, tirx

from llmc.backends.kernels import moe_cpu
from llmc.backends.layouts import panel_count, tvm_dtype
from llmc.backends.lower import LowerCtx
from llmc.ir.graph import Node

#: Output lanes per panel (as the CPU's panel GEMMs: four AVX-512 registers of float32).
NB = 64


def _float_param(ctx: LowerCtx, n: Node, i: int) -> bool:
    p = ctx.param(n.inputs[i])
    return p is not None and p.format.quant is None and p.format.sparsity is None


def routed_ok(ctx: LowerCtx, n: Node) -> bool:
    """Both expert stacks are dense float params (a graph input has no compile-time layout)."""
    return _float_param(ctx, n, 2) and _float_param(ctx, n, 3)


def moe_routed(ctx: LowerCtx, n: Node) -> relax.Expr:
    from llmc.backends.cpu.pipeline import vector_bits  # the host's vector width (lazy: cycle)
    from llmc.backends.kernels.cpu import row_block

    a = n.attrs
    dt = n.out.type.dtype
    e, h = (int(d) for d in n.inputs[1].type.shape)
    inter = int(n.inputs[3].type.shape[2])
    k = a.top_k
    x = ctx.arg(n.inputs[0])
    router = ctx.arg(n.inputs[1])
    gu_p, dn_p = ctx.param(n.inputs[2]), ctx.param(n.inputs[3])
    assert gu_p is not None and dn_p is not None
    gu = ctx.weight(gu_p, f"moe.panel{NB}", dt)
    dn = ctx.weight(dn_p, f"moe.panel{NB}", dt)
    x2 = ctx.emit(relax.op.reshape(x, [-1, h]))
    rows = x2.ty.shape.values[0]
    static_one = isinstance(rows, tirx.IntImm) and int(rows) == 1  # decode
    mb = row_block(1 if static_one else None, NB, vector_bits())
    xdt, rdt, wdt = x2.ty.dtype, router.ty.dtype, tvm_dtype(dt)
    pairs = rows * k
    routed = ctx.call_kernel(
        ("moe_route", e, h, k, a.normalize, xdt, rdt),
        lambda: moe_cpu.moe_route(e, h, k, a.normalize, xdt, rdt),
        "moe_route",
        [x2, router],
        [
            relax.TensorType([rows, k], "int32"),
            relax.TensorType([rows, k], "float32"),
            relax.TensorType([pairs], "int32"),
            relax.TensorType([e + 1], "int32"),
        ],
    )
    w = ctx.emit(relax.TupleGetItem(routed, 1))
    perm = ctx.emit(relax.TupleGetItem(routed, 2))
    off = ctx.emit(relax.TupleGetItem(routed, 3))
    o_a, o_b = panel_count(2 * inter, NB) * NB, panel_count(h, NB) * NB
    hid = ctx.call_kernel(
        ("moe_gemm", e, h, 2 * inter, NB, k, mb, xdt, wdt),
        lambda: moe_cpu.moe_gemm(e, h, 2 * inter, NB, k, mb, xdt, wdt),
        "moe_gemm",
        [x2, perm, off, gu],
        relax.TensorType([pairs, o_a], "float32"),
    )
    g = relax.op.strided_slice(hid, axes=[1], begin=[0], end=[inter])
    u = relax.op.strided_slice(hid, axes=[1], begin=[inter], end=[2 * inter])
    act = {"silu": relax.op.nn.silu, "gelu": relax.op.nn.gelu, "relu": relax.op.nn.relu}
    gated = ctx.emit(relax.op.multiply(act[a.activation](g), u))  # [P, I]
    y = ctx.call_kernel(
        ("moe_gemm", e, inter, h, NB, 1, mb, "float32", wdt),
        lambda: moe_cpu.moe_gemm(e, inter, h, NB, 1, mb, "float32", wdt),
        "moe_gemm",
        [gated, perm, off, dn],
        relax.TensorType([pairs, o_b], "float32"),
    )
    y3 = relax.op.reshape(y, [rows, k, o_b])
    out = ctx.emit(relax.op.sum(relax.op.multiply(y3, relax.op.expand_dims(w, -1)), axis=[1]))
    if o_b != h:
        out = ctx.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[h]))
    out = ctx.emit(relax.op.reshape(out, x.ty.shape))
    return ctx.cast(out, dt)
