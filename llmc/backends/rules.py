"""Lowering rules: an ordered first-match list per target, ending in a fallback.

A :class:`Rule` names the op it lowers, the target kinds it applies to, a predicate over the node
(typically over the weight's storage format, which a pass decided: the rule only reads it) and an
``emit`` function that writes Relax through the :class:`~llmc.backends.lower.LowerCtx`.

Target pipelines put their own rules first (``cpu/pipeline.py``: panel-layout GEMMs), then
:data:`COMMON_RULES`, then :data:`FALLBACK`, which raises :class:`UnsupportedOpError` naming the op
and the target. Users add rules with :func:`register_rule`; they take precedence over built-ins::

    @register_rule("my_op", kinds=("cuda",))
    def lower_my_op(ctx, node):
        x, = ctx.args(node)
        return ctx.emit(relax.op.exp(x))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tvm import relax, tirx

from llmc.backends.kernels import te_ops
from llmc.backends.layouts import scale_dtype, tvm_dtype
from llmc.backends.lower import KVCacheRef, LowerCtx
from llmc.backends.rules_moe import moe_routed, routed_ok
from llmc.backends.rules_prune import PRUNE_RULES
from llmc.errors import IRError
from llmc.ir.graph import Node
from llmc.ir.params import Param
from llmc.ir.types import promote_dtypes


@dataclass(frozen=True)
class Rule:
    name: str
    op: str | None  # None matches every op
    emit: Callable[[LowerCtx, Node], relax.Expr]
    when: Callable[[LowerCtx, Node], bool] | None = None
    kinds: frozenset[str] | None = None
    # the rule computes a weight's recorded activation quantization (QuantSpec.act_bits) itself;
    # for every other rule the lowering fake-quantizes the linear's input first (exact)
    act_quant: bool = False

    def matches(self, ctx: LowerCtx, n: Node) -> bool:
        if self.op is not None and n.op != self.op:
            return False
        if self.kinds is not None and ctx.kind not in self.kinds:
            return False
        return self.when is None or bool(self.when(ctx, n))


USER_RULES: list[Rule] = []


def register_rule(
    op: str,
    *,
    kinds: Iterable[str] | None = None,
    when: Callable[[LowerCtx, Node], bool] | None = None,
    name: str | None = None,
) -> Callable[[Callable[[LowerCtx, Node], relax.Expr]], Callable[[LowerCtx, Node], relax.Expr]]:
    """Decorator: add a user lowering rule (tried before the built-in ones)."""

    def deco(fn: Callable[[LowerCtx, Node], relax.Expr]) -> Callable[[LowerCtx, Node], relax.Expr]:
        USER_RULES.append(
            Rule(name or fn.__name__, op, fn, when, frozenset(kinds) if kinds else None)
        )
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# helpers


def weight_param(ctx: LowerCtx, n: Node, i: int = 1) -> Param | None:
    return ctx.param(n.inputs[i])


def fmt_is(pred: Callable[[Param], bool], i: int = 1) -> Callable[[LowerCtx, Node], bool]:
    def when(ctx: LowerCtx, n: Node) -> bool:
        p = weight_param(ctx, n, i)
        return p is not None and pred(p)

    return when


def is_dense(p: Param) -> bool:
    return p.format.quant is None  # sparse-but-unquantized weights are dense storage too


def is_q4(p: Param) -> bool:
    q = p.format.quant
    return q is not None and q.bits <= 4 and int(p.type.shape[1]) % 2 == 0


def is_q8g(p: Param) -> bool:
    """5..8-bit weight-only quantization (W8A8 goes through ``qlinear_a8`` instead)."""
    q = p.format.quant
    return q is not None and q.bits > 4


def is_nm(p: Param) -> bool:
    s = p.format.sparsity
    return p.format.quant is None and s is not None and s.kind == "nm"


def flatten_rows(ctx: LowerCtx, x: relax.Expr) -> tuple[relax.Expr, list[Any]]:
    """``x [..., K]`` as ``[M, K]`` (a view) and the leading shape to restore."""
    shape = list(x.ty.shape.values)
    lead = shape[:-1]
    if len(lead) == 1:
        return x, lead
    m: Any = 1
    for d in lead:
        m = m * d
    return ctx.emit(relax.op.reshape(x, [m, shape[-1]])), lead


def unflatten_rows(ctx: LowerCtx, y: relax.Expr, lead: list[Any]) -> relax.Expr:
    if len(lead) == 1:
        return y
    n = y.ty.shape.values[-1]
    return ctx.emit(relax.op.reshape(y, [*lead, n]))


def add_bias_cast(ctx: LowerCtx, n: Node, y: relax.Expr, dtype: str) -> relax.Expr:
    """Add the optional bias (in the activation dtype, like ``F.linear``) and cast."""
    y = ctx.cast(y, dtype)
    if len(n.inputs) == 3:
        b = ctx.cast(ctx.arg(n.inputs[2]), dtype)
        y = ctx.emit(relax.op.add(y, b))
    return y


# ----------------------------------------------------------------------------------------------
# elementwise and layout ops


_UNARY: dict[str, Callable[[relax.Expr], relax.Expr]] = {
    "neg": relax.op.negative,
    "abs": relax.op.abs,
    "exp": relax.op.exp,
    "log": relax.op.log,
    "sqrt": relax.op.sqrt,
    "rsqrt": relax.op.rsqrt,
    "relu": relax.op.nn.relu,
    "sigmoid": relax.op.sigmoid,
    "tanh": relax.op.tanh,
    "silu": relax.op.nn.silu,
    "sin": relax.op.sin,
    "cos": relax.op.cos,
}
_BINARY: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "add": relax.op.add,
    "sub": relax.op.subtract,
    "mul": relax.op.multiply,
    "div": relax.op.divide,
    "pow": relax.op.power,
    "maximum": relax.op.maximum,
    "minimum": relax.op.minimum,
}
_COMPARE: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "lt": relax.op.less,
    "gt": relax.op.greater,
    "le": relax.op.less_equal,
    "ge": relax.op.greater_equal,
    "eq": relax.op.equal,
    "ne": relax.op.not_equal,
}


def _unary(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    return ctx.emit(_UNARY[n.op](x))


def _gelu(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    fn = relax.op.nn.gelu_tanh if n.attrs.approximate == "tanh" else relax.op.nn.gelu
    return ctx.emit(fn(x))


def _gelu_tanh_fast(ctx: LowerCtx, n: Node) -> relax.Expr:
    """The tanh GELU with TOPI's rational ``fast_tanh`` (within 1e-6 of ``tanh`` at float32):
    on the CPU it is about 3x faster than Relax's ``gelu_tanh`` (GPT-2's 3072-wide MLP
    activation with its bias: 26 -> 9 us per call on the 2-core EPYC, a microbenchmark)."""
    from tvm import topi

    (x,) = ctx.args(n)
    c = math.sqrt(2.0 / math.pi)

    def gelu(t):
        inner = topi.multiply(topi.add(t, topi.multiply(topi.multiply(t, t), t) * 0.044715), c)
        return topi.multiply(topi.multiply(t, 0.5), topi.add(topi.fast_tanh(inner), 1.0))

    return ctx.emit_te(gelu, x, name="gelu_tanh_fast")


def _gelu_fast_ok(ctx: LowerCtx, n: Node) -> bool:
    return n.attrs.approximate == "tanh" and n.out.type.dtype == "f32"


def _binary(ctx: LowerCtx, n: Node) -> relax.Expr:
    x, y = ctx.args(n)
    dt = n.out.type.dtype
    return ctx.emit(_BINARY[n.op](ctx.cast(x, dt), ctx.cast(y, dt)))


def _operand_dtype(n: Node) -> str:
    a, b = n.inputs[0].type, n.inputs[1].type
    if b.rank == 0 and a.rank > 0:
        return a.dtype
    if a.rank == 0 and b.rank > 0:
        return b.dtype
    return promote_dtypes(a.dtype, b.dtype)


def _compare(ctx: LowerCtx, n: Node) -> relax.Expr:
    x, y = ctx.args(n)
    dt = _operand_dtype(n)
    return ctx.emit(_COMPARE[n.op](ctx.cast(x, dt), ctx.cast(y, dt)))


def _where(ctx: LowerCtx, n: Node) -> relax.Expr:
    c, x, y = ctx.args(n)
    dt = n.out.type.dtype
    return ctx.emit(relax.op.where(c, ctx.cast(x, dt), ctx.cast(y, dt)))


def _constant(ctx: LowerCtx, n: Node) -> relax.Expr:
    return relax.const(n.attrs.value, tvm_dtype(n.attrs.dtype))


def _cast(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    return ctx.cast(x, n.attrs.dtype)


def _reshape(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    return ctx.emit(relax.op.reshape(x, ctx.shape(n.out.type.shape)))


def _permute(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    perm = list(n.attrs.perm)
    if _moves_only_unit_axes(ctx, n.inputs[0].type.shape, perm):  # a view, not a copy
        return ctx.emit(relax.op.reshape(x, ctx.shape(n.out.type.shape)))
    return ctx.emit(relax.op.permute_dims(x, perm))


def _moves_only_unit_axes(ctx: LowerCtx, shape: Any, perm: list[int]) -> bool:
    """The permutation keeps the order of the axes longer than 1 (a decode step's
    ``[b, 1, heads, d] -> [b, heads, 1, d]``): the data does not move, a reshape does it."""
    sizes = [ctx.static(d) for d in shape]
    kept = [a for a in perm if sizes[a] != 1]
    return all(sizes[a] is not None for a in kept) and kept == sorted(kept)


def _concat(ctx: LowerCtx, n: Node) -> relax.Expr:
    xs = ctx.args(n)
    if len(xs) == 1:
        return xs[0]
    return ctx.emit(relax.op.concat(xs, axis=n.attrs.dim))


def _kv_append(ctx: LowerCtx, n: Node) -> KVCacheRef:
    """``present = concat(past, new, dim=2)`` on an in-place cache: write ``new`` at ``past``."""
    cache = ctx.arg(n.inputs[0])  # the cache buffer argument [b, kvh, kv_capacity, d]
    new = ctx.arg(n.inputs[1])
    _, kvh, _, d = new.ty.shape.values
    kvh, d = int(kvh), int(d)
    dt = tvm_dtype(n.out.type.dtype)
    assert ctx.kv_len is not None
    past = ctx.dim(n.inputs[0].type.shape[2])  # this layer's cache length (past, or past_i)
    mod = attention_kernels(ctx)
    gv = ctx.lowering.kernel(
        (mod.__name__, "kv_append", kvh, d, dt), lambda: mod.kv_append(kvh, d, dt), "kv_append"
    )
    buf = ctx.emit(relax.call_tir_inplace(gv, [cache, new, relax.prim_value(past)], 0, cache.ty))
    return KVCacheRef(buf, ctx.dim(n.out.type.shape[2]))


def _slice(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    a = n.attrs
    t = n.inputs[0].type
    ax = a.dim % t.rank
    size = ctx.dim(t.shape[ax])
    last = isinstance(a.start, int) and a.start < 0
    if last:
        begin, end = size + a.start, size
    else:
        begin = ctx.dim(a.start)
        end = size if a.end is None else ctx.dim(a.end)
    out = ctx.emit(relax.op.strided_slice(x, axes=[ax], begin=[begin], end=[end], strides=[a.step]))
    if last:  # Relax cannot prove `size - k >= 0` and gives the length as an if_then_else of
        # `size` (dlight's matmul rule then fails on it): the IR's type says it is `k`
        out = ctx.bb.match_cast(out, ctx.rtype(n.out.type))
    return out


def _index_select(ctx: LowerCtx, n: Node) -> relax.Expr:
    x, idx = ctx.args(n)
    return ctx.emit(relax.op.take(x, idx, axis=n.attrs.dim, mode="clip"))


_REDUCE = {"reduce_sum": relax.op.sum, "reduce_mean": relax.op.mean, "reduce_max": relax.op.max}


def _cumsum(ctx: LowerCtx, n: Node) -> relax.Expr:
    """TOPI's scan (Relax's ``cumsum`` is not legalized before VM codegen in TVM 0.27)."""
    from tvm import topi

    (x,) = ctx.args(n)
    dim, dt = n.attrs.dim, tvm_dtype(n.out.type.dtype)
    return ctx.emit_te(lambda t: topi.cumsum(t, axis=dim, dtype=dt), x, name="cumsum")


def _reduce(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    return ctx.emit(_REDUCE[n.op](x, axis=list(n.attrs.dims), keepdims=n.attrs.keepdim))


def _softmax(ctx: LowerCtx, n: Node) -> relax.Expr:
    (x,) = ctx.args(n)
    y = ctx.emit(relax.op.nn.softmax(ctx.cast(x, "f32"), axis=n.attrs.dim))
    return ctx.cast(y, n.out.type.dtype)


def _matmul(ctx: LowerCtx, n: Node) -> relax.Expr:
    a, b = ctx.args(n)
    dt = n.out.type.dtype
    return ctx.emit(relax.op.matmul(ctx.cast(a, dt), ctx.cast(b, dt)))


def _fused_elementwise(ctx: LowerCtx, n: Node) -> relax.Expr:
    region = n.attrs.body
    saved = ctx.node
    for v, x in zip(region.inputs, ctx.args(n)):
        ctx.values[id(v)] = x
    for inner in region.nodes:
        ctx.lowering._lower_node(ctx, inner)
    ctx.node = saved
    return ctx.values[id(region.outputs[0])]


def _cond(ctx: LowerCtx, n: Node) -> relax.Expr:
    """``cond(pred, *args)`` -> a Relax ``If`` on the bool scalar ``pred``, each branch its region
    lowered in place (:meth:`~llmc.backends.lower.Lowering.lower_region`). The VM reads ``pred``
    (a copy to the host on a GPU) and runs one branch: the other costs nothing."""
    pred = ctx.arg(n.inputs[0])
    a = n.attrs
    then = ctx.lowering.lower_region(ctx, a.then_branch, n.inputs[1:])
    other = ctx.lowering.lower_region(ctx, a.else_branch, n.inputs[1:])
    out = ctx.emit(relax.If(pred, then, other))
    if not isinstance(out.ty.shape, relax.ShapeExpr):  # the branches joined to a shapeless type
        out = ctx.bb.match_cast(out, ctx.rtype(n.out.type))
    return out


# ----------------------------------------------------------------------------------------------
# LLM ops


def _embedding(ctx: LowerCtx, n: Node) -> relax.Expr:
    ids, table = ctx.args(n)
    # "clip": an out-of-range id reads a valid row instead of memory past the table (TVM's "fast"
    # mode does not bounds-check); the runner refuses such ids before they get here
    return ctx.emit(relax.op.take(table, ids, axis=0, mode="clip"))


def _rms_norm(ctx: LowerCtx, n: Node) -> relax.Expr:
    args = ctx.args(n)
    w = args[1] if len(args) > 1 else None
    return ctx.emit_te(te_ops.rms_norm, args[0], w, n.attrs.eps, name="rms_norm")


def _layer_norm(ctx: LowerCtx, n: Node) -> relax.Expr:
    args = ctx.args(n) + [None, None]
    return ctx.emit_te(te_ops.layer_norm, args[0], args[1], args[2], n.attrs.eps, name="layer_norm")


def _rope(ctx: LowerCtx, n: Node) -> relax.Expr:
    from llmc.ir.ops import rope_inv_freq

    x, pos = ctx.args(n)
    a = n.attrs
    hd = ctx.static(n.inputs[0].type.shape[3])
    if hd is None:
        raise ctx.unsupported("head_dim must be static")
    rd = a.rotary_dim or hd
    freqs = rope_inv_freq(a, rd).numpy()
    inv = relax.const(freqs, "float32")
    # the angles depend on the position and the dimension only: their cos/sin are computed once
    # per position for every rope of the function (q and k; the whole step where layers are not
    # outlined), so that the per-element kernel (fused with its reshape/transpose) makes no
    # libm call and vectorizes; the values are the same float32 cosf/sinf, bit for bit
    key = ("rope_cos_sin", id(n.inputs[1]), freqs.tobytes(), float(a.mscale))
    if key not in ctx.shared:
        ctx.shared[key] = ctx.emit_te(te_ops.rope_cos_sin, pos, inv, a.mscale, name="rope_cos_sin")
    cs = ctx.shared[key]
    return ctx.emit_te(te_ops.rope, x, pos, inv, rd, a.interleaved, a.mscale, cs, name="rope")


def _silu_fast(ctx: LowerCtx, n: Node) -> relax.Expr:
    """SiLU with TOPI's polynomial ``fast_exp`` (within ~1e-7 relative of ``expf``): the
    ``silu * up`` kernel vectorizes instead of calling libm per element."""
    (x,) = ctx.args(n)
    return ctx.emit_te(te_ops.silu_fast, x, name="silu")


def attention_scale(n: Node) -> float:
    hd = int(n.inputs[0].type.shape[3])
    return n.attrs.scale or 1.0 / math.sqrt(hd)


def group_queries(ctx: LowerCtx, q: relax.Expr, kvh: Any) -> relax.Expr:
    """q [b, h, s, d] -> [b, kvh, g*s, d]: the g query heads sharing a kv head become rows
    (a view: heads are contiguous)."""
    b, h, s, d = q.ty.shape.values
    return ctx.emit(relax.op.reshape(q, [b, kvh, (h // kvh) * s, d]))


def ungroup_queries(ctx: LowerCtx, o: relax.Expr, h: Any, s: Any) -> relax.Expr:
    b, kvh, rows, d = o.ty.shape.values
    return ctx.emit(relax.op.reshape(o, [b, h, s, d]))


def _attention(ctx: LowerCtx, n: Node) -> relax.Expr:
    q, k, v = ctx.args(n)
    a = n.attrs
    dt = n.out.type.dtype
    b, h, s, d = q.ty.shape.values
    kvh = k.ty.shape.values[1]
    qg = group_queries(ctx, q, kvh)
    qk = ctx.emit_te(te_ops.attn_qk, qg, k, name="attn_qk")
    p = ctx.emit_te(
        te_ops.masked_softmax,
        qk,
        s,
        attention_scale(n),
        a.causal,
        a.window,
        tvm_dtype(dt),
        a.softcap,
        name="attn_softmax",
    )
    o = ctx.emit_te(te_ops.attn_pv, p, v, tvm_dtype(dt), name="attn_pv")
    return ungroup_queries(ctx, o, h, s)


#: target kind -> module with the hand-written attention kernels (attention_sync, async_partials,
#: async_combine): the same algorithm, parallelised per row (CPU) or per thread block (GPU).
ATTENTION_KERNELS = {
    "cpu": "llmc.backends.kernels.attention_cpu",
    "cuda": "llmc.backends.kernels.attention_gpu",
    "rocm": "llmc.backends.kernels.attention_gpu",
}


def attention_kernels(ctx: LowerCtx) -> Any:
    import importlib

    return importlib.import_module(ATTENTION_KERNELS[ctx.kind])


def head_dims(ctx: LowerCtx, n: Node) -> tuple[int, int, int] | None:
    q, k = n.inputs[0].type, n.inputs[1].type
    h, kvh, d = ctx.static(q.shape[1]), ctx.static(k.shape[1]), ctx.static(q.shape[3])
    if h is None or kvh is None or d is None:
        return None
    return h, kvh, d


def _attention_kernel_ok(ctx: LowerCtx, n: Node) -> bool:
    if ctx.kind not in ATTENTION_KERNELS:
        return False
    dims = head_dims(ctx, n)
    if dims is None or ctx.static(n.inputs[2].type.shape[3]) != dims[2]:
        return False  # the kernels need static heads and v's head_dim equal to q's
    if ctx.kind != "cpu":
        from llmc.backends.kernels.attention_gpu import warp_layout

        try:
            warp_layout(dims[2])
        except ValueError:
            return False
    return True


def kv_operands(ctx: LowerCtx, n: Node) -> tuple[relax.Expr, relax.Expr, Any]:
    """The k and v operands of an attention kernel and the number of valid keys: the in-place
    cache buffers and their length when both are caches, else the tensors and their length."""
    kr, vr = ctx.kv(n.inputs[1]), ctx.kv(n.inputs[2])
    if kr is not None and vr is not None:
        return kr.buf, vr.buf, kr.length
    k, v = ctx.arg(n.inputs[1]), ctx.arg(n.inputs[2])
    return k, v, k.ty.shape.values[2]


def _attention_kernel(ctx: LowerCtx, n: Node) -> relax.Expr:
    q = ctx.arg(n.inputs[0])
    k, v, t = kv_operands(ctx, n)
    a = n.attrs
    dims = head_dims(ctx, n)
    assert dims is not None
    h, kvh, d = dims
    dt = tvm_dtype(n.out.type.dtype)
    scale = attention_scale(n)
    mod = attention_kernels(ctx)
    key = (mod.__name__, "sync", h, kvh, d, dt, scale, a.causal, a.window, a.softcap)
    return ctx.call_kernel(
        key,
        lambda: mod.attention_sync(h, kvh, d, dt, scale, a.causal, a.window, a.softcap),
        "attention",
        [q, k, v, relax.prim_value(t)],
        q.ty,
    )


def _attention_async(ctx: LowerCtx, n: Node) -> relax.Expr:
    """FlashDecoding++'s asynchronous softmax: split-KV partials with the unified max, then a
    combine that checks the range per row and recomputes out-of-range rows synchronously."""
    q = ctx.arg(n.inputs[0])
    k, v, t = kv_operands(ctx, n)
    a = n.attrs
    dims = head_dims(ctx, n)
    assert dims is not None
    h, kvh, d = dims
    dt = tvm_dtype(n.out.type.dtype)
    scale = attention_scale(n)
    mod = attention_kernels(ctx)
    b, _, s, _ = q.ty.shape.values
    nc = (t + (a.chunk - 1)) // a.chunk
    f32 = "float32"
    parts = ctx.call_kernel(
        (mod.__name__, "partials", h, kvh, d, dt, scale, a.causal, a.window, a.chunk, a.phi),
        lambda: mod.async_partials(h, kvh, d, dt, scale, a.causal, a.window, a.chunk, a.phi),
        "attention_async_partials",
        [q, k, v, relax.prim_value(t)],
        [
            relax.TensorType([b, h, s, nc, d], f32),
            relax.TensorType([b, h, s, nc], f32),
            relax.TensorType([b, h, s, nc], f32),
        ],
    )
    po, ps, pm = (ctx.emit(relax.TupleGetItem(parts, i)) for i in range(3))
    key = (mod.__name__, "combine", h, kvh, d, dt, scale, a.causal, a.window, a.phi, a.lo, a.hi)
    return ctx.call_kernel(
        key,
        lambda: mod.async_combine(h, kvh, d, dt, scale, a.causal, a.window, a.phi, a.lo, a.hi),
        "attention_async_combine",
        [q, k, v, relax.prim_value(t), po, ps, pm],
        q.ty,
    )


def _linear_dense(ctx: LowerCtx, n: Node) -> relax.Expr:
    x = ctx.arg(n.inputs[0])
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    w = ctx.weight(p, "dense", dt) if p is not None else ctx.cast(ctx.arg(n.inputs[1]), dt)
    y = ctx.emit_te(te_ops.linear_dense, x, w, "float32", name="linear")
    return add_bias_cast(ctx, n, y, dt)


def _linear_q4(ctx: LowerCtx, n: Node) -> relax.Expr:
    x = ctx.arg(n.inputs[0])
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.quant is not None
    g = p.format.quant.group or int(p.type.shape[1])
    codes = ctx.weight(p, "q4.codes")
    sdt = scale_dtype(p, dt)  # QuantSpec.scale_dtype: f16 halves, widened in the dequantize
    scale = ctx.weight(p, "q4.scale", sdt)
    offset = ctx.weight(p, "q4.zero", sdt)
    y = ctx.emit_te(te_ops.linear_q4, x, codes, scale, offset, g, "float32", name="linear_q4")
    return add_bias_cast(ctx, n, y, dt)


def _linear_q8g(ctx: LowerCtx, n: Node) -> relax.Expr:
    x = ctx.arg(n.inputs[0])
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.quant is not None
    g = p.format.quant.group or int(p.type.shape[1])
    codes = ctx.weight(p, "q8g.codes")
    sdt = scale_dtype(p, dt)  # QuantSpec.scale_dtype: f16 halves, widened in the dequantize
    scale = ctx.weight(p, "q4.scale", sdt)
    offset = ctx.weight(p, "q8g.offset", sdt)
    y = ctx.emit_te(te_ops.linear_q8g, x, codes, scale, offset, g, "float32", name="linear_q8g")
    return add_bias_cast(ctx, n, y, dt)


def _linear_nm(ctx: LowerCtx, n: Node) -> relax.Expr:
    x = ctx.arg(n.inputs[0])
    dt = n.out.type.dtype
    p = weight_param(ctx, n)
    assert p is not None and p.format.sparsity is not None
    s = p.format.sparsity
    vals = ctx.weight(p, "nm.values", dt)
    idx = ctx.weight(p, "nm.index")
    y = ctx.emit_te(te_ops.linear_nm, x, vals, idx, s.n, s.m, "float32", name="linear_nm")
    return add_bias_cast(ctx, n, y, dt)


def _qlinear_a8(ctx: LowerCtx, n: Node) -> relax.Expr:
    x = ctx.arg(n.inputs[0])
    dt = n.out.type.dtype
    p = ctx.graph.root().params[n.attrs.weight]
    x2, lead = flatten_rows(ctx, x)
    q = ctx.emit_te(te_ops.act_quant, x2, n.attrs.act_scale, name="act_quant")
    xq = ctx.emit(relax.TupleGetItem(q, 0))
    xs = ctx.emit(relax.TupleGetItem(q, 1))
    wq = ctx.weight(p, "q8.codes")
    ws = ctx.weight(p, "q8.scale")
    y = ctx.emit_te(te_ops.int8_linear, xq, xs, wq, ws, "float32", name="int8_linear")
    if len(n.inputs) == 3:
        y = ctx.emit(relax.op.add(y, ctx.cast(ctx.arg(n.inputs[2]), "f32")))
    return ctx.cast(unflatten_rows(ctx, y, lead), dt)


def _fallback(ctx: LowerCtx, n: Node) -> relax.Expr:
    if n.op == "linear":
        p = weight_param(ctx, n)
        raise ctx.unsupported(f"no kernel for weight format {p.format if p else '(not a param)'}")
    raise ctx.unsupported()


def _moe(ctx: LowerCtx, n: Node) -> relax.Expr:
    """``moe`` dense over experts, in float32: the router's top-k weights scattered into an
    ``[N, E]`` matrix (zero for experts a row did not choose), every expert's gated FFN run as
    one batched matmul pair over all rows (``[E, N, 2I]``, ``[E, N, H]``), and the weighted sum
    over experts. Exact for the op's semantics; it spends ``E / top_k`` times the routed work.
    The CPU runs the routed kernels instead (``cpu.moe.routed``, rules_moe.py); GPUs and
    expert weights that are graph inputs rather than params keep this rule."""
    x, router, gate_up, down = ctx.args(n)
    a = n.attrs
    e, h = (int(d) for d in n.inputs[1].type.shape)
    inter = int(n.inputs[3].type.shape[2])
    f32 = "f32"
    x2 = ctx.cast(ctx.emit(relax.op.reshape(x, [-1, h])), f32)
    logits = ctx.emit(relax.op.matmul(x2, relax.op.permute_dims(ctx.cast(router, f32))))
    probs = ctx.emit(relax.op.nn.softmax(logits, axis=-1))
    # top-k as k rounds of argmax (k is small; Relax's topk has no legalization here): each
    # round takes the largest remaining probability and knocks it out (probabilities are <= 1)
    one = relax.prim_value(tirx.FloatImm("float32", 1.0))
    zero = relax.prim_value(tirx.FloatImm("float32", 0.0))
    rest, w = probs, None
    for _ in range(a.top_k):
        hot = ctx.emit(relax.op.one_hot(relax.op.argmax(rest, axis=-1), one, zero, e, axis=-1))
        top = relax.op.multiply(hot, relax.op.max(rest, axis=[-1], keepdims=True))
        w = ctx.emit(top if w is None else relax.op.add(w, top))
        rest = ctx.emit(relax.op.subtract(rest, relax.op.multiply(hot, relax.const(2.0))))
    assert w is not None
    if a.normalize:
        w = ctx.emit(relax.op.divide(w, relax.op.sum(w, axis=[-1], keepdims=True)))
    gu = relax.op.permute_dims(ctx.cast(gate_up, f32), [0, 2, 1])  # [E, H, 2I]
    hid = ctx.emit(relax.op.matmul(relax.op.expand_dims(x2, 0), gu))  # [E, N, 2I]
    g = relax.op.strided_slice(hid, axes=[2], begin=[0], end=[inter])
    u = relax.op.strided_slice(hid, axes=[2], begin=[inter], end=[2 * inter])
    act = {"silu": relax.op.nn.silu, "gelu": relax.op.nn.gelu, "relu": relax.op.nn.relu}
    gated = ctx.emit(relax.op.multiply(act[a.activation](g), u))
    dn = relax.op.permute_dims(ctx.cast(down, f32), [0, 2, 1])  # [E, I, H]
    y = ctx.emit(relax.op.matmul(gated, dn))  # [E, N, H]
    wt = relax.op.expand_dims(relax.op.permute_dims(w, [1, 0]), -1)  # [E, N, 1]
    out = ctx.emit(relax.op.sum(relax.op.multiply(y, wt), axis=[0]))  # [N, H]
    out = ctx.emit(relax.op.reshape(out, x.ty.shape))
    return ctx.cast(out, n.out.type.dtype)


def _r(name: str, op: str | None, fn: Callable[[LowerCtx, Node], relax.Expr], **kw: Any) -> Rule:
    kinds = kw.pop("kinds", None)
    return Rule(name, op, fn, kinds=frozenset(kinds) if kinds else None, **kw)


COMMON_RULES: list[Rule] = (
    [_r("silu.fast_exp", "silu", _silu_fast, kinds=("cpu",))]
    + [_r(f"unary.{op}", op, _unary) for op in _UNARY]
    + [_r(f"binary.{op}", op, _binary) for op in _BINARY]
    + [_r(f"compare.{op}", op, _compare) for op in _COMPARE]
    + [
        _r("gelu.fast_tanh", "gelu", _gelu_tanh_fast, kinds=("cpu",), when=_gelu_fast_ok),
        _r("gelu", "gelu", _gelu),
        _r("where", "where", _where),
        _r("constant", "constant", _constant),
        _r("cast", "cast", _cast),
        _r("reshape", "reshape", _reshape),
        _r("permute", "permute", _permute),
        _r("concat.kv_append", "concat", _kv_append, when=lambda c, n: c.lowering.is_kv_append(n)),
        _r("concat", "concat", _concat),
        _r("slice", "slice", _slice),
        _r("index_select", "index_select", _index_select),
        *[_r(op, op, _reduce) for op in _REDUCE],
        _r("cumsum", "cumsum", _cumsum),
        _r("softmax", "softmax", _softmax),
        _r("matmul", "matmul", _matmul),
        _r("fused_elementwise", "fused_elementwise", _fused_elementwise),
        _r("cond", "cond", _cond),
        _r("embedding", "embedding", _embedding),
        _r("rms_norm", "rms_norm", _rms_norm),
        _r("layer_norm", "layer_norm", _layer_norm),
        _r("rope", "rope", _rope),
        _r("attention.kernel", "attention", _attention_kernel, when=_attention_kernel_ok),
        _r("attention.te", "attention", _attention),
        _r(
            "attention_async.kernel",
            "attention_async",
            _attention_async,
            when=_attention_kernel_ok,
        ),
        _r("linear.q4", "linear", _linear_q4, when=fmt_is(is_q4)),
        _r("linear.q8g", "linear", _linear_q8g, when=fmt_is(is_q8g)),
        _r("linear.nm", "linear", _linear_nm, when=fmt_is(is_nm)),
        _r("linear.dense", "linear", _linear_dense, when=lambda c, n: _dense_or_value(c, n)),
        _r("qlinear_a8", "qlinear_a8", _qlinear_a8),
        # routed on the CPU (rules_moe.py); dense over experts elsewhere
        _r("cpu.moe.routed", "moe", moe_routed, kinds=("cpu",), when=routed_ok),
        _r("moe.dense", "moe", _moe),
        # token pruning (rules_prune.py): scores, the keep mask, the gathers with a fresh length
        *[_r(op, op, fn) for op, fn in PRUNE_RULES],
    ]
)


def _dense_or_value(ctx: LowerCtx, n: Node) -> bool:
    p = weight_param(ctx, n)
    return p is None or is_dense(p)


FALLBACK = Rule("fallback", None, _fallback)


def rule_list(target_rules: Iterable[Rule]) -> list[Rule]:
    """User rules, then the target's, then the common ones, then the fallback."""
    return [*USER_RULES, *target_rules, *COMMON_RULES, FALLBACK]


def check_rules(rules: list[Rule]) -> None:
    if not rules or rules[-1] is not FALLBACK:
        raise IRError("a rule list must end with the fallback rule")
