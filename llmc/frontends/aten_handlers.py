"""ATen op -> llmc IR mappings: the converter's handler table (see :mod:`llmc.frontends.fx_convert`).

A handler is ``(converter, fx_node, *args, **kwargs) -> Value | list[Value]``; it builds IR with
``c.emit(op, *inputs, **attrs)``, reads operands with ``c.value(arg)`` (weights become ``param``
nodes), sizes with ``c.dim(x)`` and torch's recorded result type with :func:`_out_type`. The
converter checks every result against torch's shape and dtype. Register with ``@handles(op)``.
Ops in :data:`IGNORED` are run-time assertions export inserts; they produce no data.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from llmc.frontends.customops import rope_attrs_from_json
from llmc.frontends.fx_convert import INT64_MAX, Converter
from llmc.ir.graph import Value
from llmc.ir.types import DTYPES as DTYPES_TORCH
from llmc.ir.types import Dim, TensorType, dim_add, from_torch_dtype

aten = torch.ops.aten

Handler = Callable[..., Any]
HANDLERS: dict[Any, Handler] = {}
# Ops with no data result that export inserts (runtime assertions): skipped on purpose.
IGNORED: set[Any] = {
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten._assert_async.msg,
}


def handles(*targets: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn

    return deco


def _out_dtype(c: Converter) -> str:
    val = c.node.meta.get("val") if c.node is not None else None
    return from_torch_dtype(val.dtype) if isinstance(val, torch.Tensor) else "f32"


def _out_type(c: Converter) -> TensorType:
    return c.ttype(c.node.meta["val"])


@handles(aten.linear.default)
def _linear(c: Converter, n, x, w, b=None):
    ins = [c.value(x), c.value(w)] + ([c.value(b)] if b is not None else [])
    return c.emit("linear", *ins)


@handles(aten.addmm.default)
def _addmm(c: Converter, n, bias, x, w, beta=1, alpha=1):
    if w in c.params and c.params[w].transposed and beta == 1 and alpha == 1:
        bv = c.value(bias)
        wv = c.value(w)
        if bv.type.rank == 1:
            return c.emit("linear", c.value(x), wv, bv)
        return c.emit("add", c.emit("linear", c.value(x), wv), bv)
    y = c.emit("matmul", c.value(x), c.value(w))
    if alpha != 1:
        y = c.emit("mul", y, c.const(alpha, y.type.dtype))
    if beta == 0:
        return y
    bv = c.value(bias)
    if beta != 1:
        bv = c.emit("mul", bv, c.const(beta, bv.type.dtype))
    return c.emit("add", y, bv)


@handles(aten.mm.default, aten.matmul.default, aten.bmm.default)
def _matmul(c: Converter, n, a, b):
    if n.target is aten.mm.default and b in c.params and c.params[b].transposed:
        return c.emit("linear", c.value(a), c.value(b))
    return c.emit("matmul", c.value(a), c.value(b))


@handles(aten.embedding.default)
def _embedding(c: Converter, n, weight, ids, padding_idx=-1, scale_grad=False, sparse=False):
    return c.emit("embedding", c.value(ids), c.value(weight))


# -- views and layout ----------------------------------------------------------------------------


def _identity(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    if v.type != _out_type(c):
        raise c.unsupported(f"expected a no-op, but {v.type} becomes {_out_type(c)}")
    return v


for _t in (
    aten.contiguous.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.lift_fresh_copy.default,
):
    HANDLERS[_t] = _identity


@handles(aten.dropout.default, aten.feature_dropout.default)
def _dropout(c: Converter, n, x, p=0.0, train=False):
    if train and p:
        raise c.unsupported("dropout in training mode (call model.eval() first)")
    return _identity(c, n, x)


@handles(
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
    aten.view_as.default,
    aten.reshape_as.default,
)
def _reshape(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    out = _out_type(c)
    if v.type.shape == out.shape:
        return v
    return c.emit("reshape", v, shape=out.shape)


@handles(aten.expand.default, aten.expand_as.default)
def _expand(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    out = _out_type(c)
    if v.type.shape == out.shape:
        return v
    if v.type.numel() == out.numel():  # only inserts size-1 axes
        return c.emit("reshape", v, shape=out.shape)
    if c.opts.fold_constants:  # stock modules: materialize (GQA's repeat_kv) as copies
        return _broadcast_copies(c, v, out)
    raise c.unsupported("broadcasting expand has no llmc equivalent (it is left to consumers)")


def _broadcast_copies(c: Converter, v: Value, out: TensorType) -> Value:
    """``expand`` of size-1 axes to fixed sizes as ``concat`` of copies (fixed shapes only)."""
    lead = out.rank - v.type.rank
    if lead:
        v = c.emit("reshape", v, shape=(1,) * lead + tuple(v.type.shape))
    for axis, (have, want) in enumerate(zip(v.type.shape, out.shape, strict=True)):
        if have == want:
            continue
        if have != 1 or not isinstance(want, int):
            raise c.unsupported(f"expand of axis {axis} from {have} to {want}")
        v = c.emit("concat", *([v] * want), dim=axis)
    return v


@handles(aten.transpose.int, aten.t.default, aten.permute.default, aten.numpy_T.default)
def _permute(c: Converter, n, x, *args):
    v = c.value(x)
    r = v.type.rank
    if n.target is aten.permute.default:
        perm = [d % r for d in args[0]]
    elif n.target in (aten.t.default, aten.numpy_T.default):
        perm = list(reversed(range(r)))
    else:
        d0, d1 = args[0] % r, args[1] % r
        perm = list(range(r))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    if perm == list(range(r)):
        return v
    return c.emit("permute", v, perm=tuple(perm))


@handles(aten.cat.default, aten.concat.default)
def _cat(c: Converter, n, xs, dim=0):
    vals = [c.value(x) for x in xs]
    vals = [v for v in vals if not (isinstance(v.type.shape[dim], int) and v.type.shape[dim] == 0)]
    if len(vals) == 1:
        return vals[0]
    return c.emit("concat", *vals, dim=dim % vals[0].type.rank)


def _slice_dim(c: Converter, v: Value, dim: int, start: Any, end: Any, step: int) -> Value:
    dim = dim % v.type.rank
    size = v.type.shape[dim]
    start_d = 0 if start is None else c.dim(start)
    end_d = None if end is None else c.dim(end)
    if isinstance(end_d, int) and end_d >= INT64_MAX // 2:
        end_d = None
    if isinstance(size, int):
        # Static axis: resolve negative and clamped bounds like Python slicing.
        s, e, _ = slice(
            start_d if isinstance(start_d, int) else None, end_d if isinstance(end_d, int) else None
        ).indices(size)
        if isinstance(start_d, int):
            start_d = s
        if isinstance(end_d, int) or end_d is None:
            end_d = None if e == size else e
    elif isinstance(start_d, int) and start_d < 0:
        if end_d is not None:
            raise c.unsupported("negative slice start on a symbolic axis needs an open end")
    if end_d == size:
        end_d = None
    if start_d == 0 and end_d is None and step == 1:
        return v
    return c.emit("slice", v, dim=dim, start=start_d, end=end_d, step=step)


@handles(aten.slice.Tensor)
def _slice(c: Converter, n, x, dim=0, start=None, end=None, step=1):
    return _slice_dim(c, c.value(x), dim, start, end, step)


@handles(aten.select.int)
def _select(c: Converter, n, x, dim, index):
    v = c.value(x)
    dim = dim % v.type.rank
    idx = c.dim(index)
    if isinstance(idx, int) and idx < 0:
        size = v.type.shape[dim]
        if isinstance(size, int):
            idx = idx + size
        elif idx != -1:
            raise c.unsupported("negative index on a symbolic axis (only -1 is supported)")
    end = None if idx == -1 else dim_add(idx, 1)
    s = c.emit("slice", v, dim=dim, start=idx, end=end)
    return c.emit("reshape", s, shape=_out_type(c).shape)


@handles(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(c: Converter, n, x, sizes, dim=0):
    v = c.value(x)
    dim = dim % v.type.rank
    outs: list[Value] = []
    start: Dim = 0
    for val in n.meta["val"]:
        length = c.dim(val.shape[dim])
        end = dim_add(start, length)
        outs.append(_slice_dim(c, v, dim, start, end, 1))
        start = end
    return outs


@handles(aten.unbind.int)
def _unbind(c: Converter, n, x, dim=0):
    v = c.value(x)
    dim = dim % v.type.rank
    outs = []
    for i, val in enumerate(n.meta["val"]):
        s = _slice_dim(c, v, dim, i, i + 1, 1)
        outs.append(c.emit("reshape", s, shape=c.ttype(val).shape))
    return outs


@handles(operator.getitem)
def _getitem(c: Converter, n, seq, idx):
    v = c.env.get(seq)
    if isinstance(v, list):
        return v[idx]
    raise c.unsupported("getitem on a value that is not a list of tensors")


# -- elementwise ---------------------------------------------------------------------------------


def _binary(op: str, swap: bool = False) -> Handler:
    def h(c: Converter, n, a, b, alpha=1):
        dt = _out_dtype(c)
        compare = op in ("lt", "gt", "le", "ge", "eq", "ne")
        x = c.operand(a, dt)
        # Scalars take the tensor's dtype (torch's "wrapped number" rule).
        y = c.operand(b, x.type.dtype if compare else dt)
        if not compare:
            x, y = c.cast(x, dt) if x.type.rank else x, c.cast(y, dt) if y.type.rank else y
        if alpha != 1:
            y = c.emit("mul", y, c.const(alpha, dt))
        if swap:
            x, y = y, x
        return c.emit(op, x, y)

    return h


for _op, _targets in {
    "add": (aten.add.Tensor, aten.add.Scalar),
    "sub": (aten.sub.Tensor, aten.sub.Scalar),
    "mul": (aten.mul.Tensor, aten.mul.Scalar),
    "div": (aten.div.Tensor, aten.div.Scalar),
    "pow": (aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor),
    "maximum": (aten.maximum.default,),
    "minimum": (aten.minimum.default,),
    "lt": (aten.lt.Tensor, aten.lt.Scalar),
    "gt": (aten.gt.Tensor, aten.gt.Scalar),
    "le": (aten.le.Tensor, aten.le.Scalar),
    "ge": (aten.ge.Tensor, aten.ge.Scalar),
    "eq": (aten.eq.Tensor, aten.eq.Scalar),
    "ne": (aten.ne.Tensor, aten.ne.Scalar),
}.items():
    for _t in _targets:
        HANDLERS[_t] = _binary(_op)
HANDLERS[aten.rsub.Scalar] = _binary("sub", swap=True)
HANDLERS[aten.rsub.Tensor] = _binary("sub", swap=True)


@handles(aten.pow.Scalar)
def _pow_scalar(c: Converter, n, base, exp):
    dt = _out_dtype(c)
    return c.emit("pow", c.const(base, dt), c.cast(c.value(exp), dt))


def _unary(op: str) -> Handler:
    def h(c: Converter, n, x, *args, **kwargs):
        return c.emit(op, c.cast(c.value(x), _out_dtype(c)))

    return h


for _op, _targets in {
    "neg": (aten.neg.default,),
    "abs": (aten.abs.default,),
    "exp": (aten.exp.default,),
    "log": (aten.log.default,),
    "sqrt": (aten.sqrt.default,),
    "rsqrt": (aten.rsqrt.default,),
    "relu": (aten.relu.default,),
    "sigmoid": (aten.sigmoid.default,),
    "tanh": (aten.tanh.default,),
    "silu": (aten.silu.default,),
    "sin": (aten.sin.default,),
    "cos": (aten.cos.default,),
}.items():
    for _t in _targets:
        HANDLERS[_t] = _unary(_op)


@handles(aten.gelu.default)
def _gelu(c: Converter, n, x, approximate="none"):
    return c.emit("gelu", c.value(x), approximate=approximate)


@handles(aten.square.default)
def _square(c: Converter, n, x):
    v = c.value(x)
    return c.emit("mul", v, v)


@handles(aten.reciprocal.default)
def _reciprocal(c: Converter, n, x):
    dt = _out_dtype(c)
    return c.emit("div", c.const(1.0, dt), c.cast(c.value(x), dt))


@handles(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where(c: Converter, n, cond, a, b):
    dt = _out_dtype(c)
    t = c.folded(cond)
    if t is not None and (bool(t.all()) or not bool(t.any())):  # where(True, a, b) -> a
        picked = c.operand(a if bool(t.all()) else b, dt)
        if picked.type == _out_type(c):
            return picked
    return c.emit("where", c.value(cond), c.operand(a, dt), c.operand(b, dt))


@handles(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(c: Converter, n, x, mask, value):
    v = c.value(x)
    return c.emit("where", c.value(mask), c.operand(value, v.type.dtype), v)


@handles(
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.to.device,
    aten.type_as.default,
    aten.to.other,
)
def _to(c: Converter, n, x, *args, **kwargs):
    return c.cast(c.value(x), _out_dtype(c))


@handles(aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
def _softmax(c: Converter, n, x, dim, *rest, **kwargs):
    v = c.value(x)
    dt = _out_dtype(c)
    if dt != v.type.dtype:
        # softmax(x, dtype=float32): llmc's softmax computes in float32 internally.
        v = c.cast(v, dt)
    return c.emit("softmax", v, dim=dim % v.type.rank)


def _reduce(op: str) -> Handler:
    def h(c: Converter, n, x, dims=None, keepdim=False, *, dtype=None):
        v = c.value(x)
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(v.type.rank))
        if isinstance(dims, int):
            dims = [dims]
        out = c.emit(op, v, dims=tuple(d % v.type.rank for d in dims), keepdim=bool(keepdim))
        return c.cast(out, _out_dtype(c))

    return h


HANDLERS[aten.mean.dim] = _reduce("reduce_mean")
HANDLERS[aten.sum.dim_IntList] = _reduce("reduce_sum")
HANDLERS[aten.amax.default] = _reduce("reduce_max")


@handles(aten.mean.default, aten.sum.default)
def _reduce_all(c: Converter, n, x, *, dtype=None):
    op = "reduce_mean" if n.target is aten.mean.default else "reduce_sum"
    return _reduce(op)(c, n, x, None, False)


@handles(aten.layer_norm.default)
def _layer_norm(c: Converter, n, x, shape, weight=None, bias=None, eps=1e-5, cudnn=True):
    v = c.value(x)
    if len(shape) != 1:
        raise c.unsupported(f"layer_norm over {len(shape)} axes (llmc normalizes the last one)")
    if weight is None and bias is not None:
        out = c.emit("layer_norm", v, eps=float(eps))
        return c.emit("add", out, c.value(bias))
    ins = [v] + [c.value(t) for t in (weight, bias) if t is not None]
    return c.emit("layer_norm", *ins, eps=float(eps))


@handles(aten.rms_norm.default)
def _aten_rms_norm(c: Converter, n, x, shape, weight=None, eps=None):
    v = c.value(x)
    if len(shape) != 1:
        raise c.unsupported(f"rms_norm over {len(shape)} axes (llmc normalizes the last one)")
    if eps is None:
        eps = torch.finfo(c.node.meta["val"].dtype).eps
    ins = [v] + ([c.value(weight)] if weight is not None else [])
    return c.emit("rms_norm", *ins, eps=float(eps))


@handles(aten.scaled_dot_product_attention.default)
def _sdpa(c: Converter, n, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
          enable_gqa=False):  # fmt: skip
    qv, kv, vv = c.value(q), c.value(k), c.value(v)
    if attn_mask is not None:
        kind = _const_mask_kind(c, attn_mask)
        if kind is None and c.opts.fold_constants and not is_causal:
            return _sdpa_with_bias(c, qv, kv, vv, attn_mask, scale)
        if kind is None:
            raise c.unsupported(
                "scaled_dot_product_attention with an explicit mask (llmc folds only a constant "
                "all-visible or causal mask: export without attention_mask, fixed shapes)"
            )
        is_causal = is_causal or kind == "causal"
    return c.emit("attention", qv, kv, vv, scale=_canon_scale(scale, qv), causal=bool(is_causal))


def _sdpa_with_bias(c: Converter, q: Value, k: Value, v: Value, mask: Any, scale) -> Value:
    """Attention with an additive bias or a boolean mask computed in the graph (T5's relative
    position bias), in stock modules only: ``softmax(q @ k^T * scale + bias) @ v`` from
    ``matmul``/``softmax`` (the fused ``attention`` op takes no bias)."""
    if q.type.shape[:-2] != k.type.shape[:-2]:
        raise c.unsupported("scaled_dot_product_attention with a mask and grouped heads")
    dt = q.type.dtype
    r = k.type.rank
    kt = c.emit("permute", k, perm=tuple(range(r - 2)) + (r - 1, r - 2))
    scores = c.emit("matmul", q, kt)
    d = q.type.shape[-1]
    factor = float(scale) if scale is not None else 1.0 / math.sqrt(int(d))
    if factor != 1.0:
        scores = c.emit("mul", scores, c.const(factor, dt))
    m = c.value(mask) if c.folded(mask) is None or c.folded(mask).dim() else c.operand(mask, dt)
    if m.type.dtype == "bool":
        # hidden -> the most negative finite value (as transformers' own masks), by arithmetic:
        # a `where` fused into the matmul epilogue does not compile for CUDA (TVM 0.27 emits `~`
        # on a uint2 vector)
        lowest = float(torch.finfo(DTYPES_TORCH[dt]).min)
        m = c.emit("mul", c.emit("sub", c.const(1.0, dt), c.cast(m, dt)), c.const(lowest, dt))
    scores = c.emit("add", scores, c.cast(m, dt))
    return c.emit("matmul", c.emit("softmax", scores, dim=-1), v)


def _const_mask_kind(c: Converter, mask: Any) -> str | None:
    """``"none"`` for a mask folded at import that hides nothing (all True, or all 0.0 when
    additive), ``"causal"`` for the lower-triangular one over a square score matrix, else None."""
    t = c.folded(mask)
    if t is None:
        return None
    visible = t if t.dtype == torch.bool else t == 0
    if t.dtype != torch.bool and not bool(((t == 0) | (t == float("-inf")) | (t <= -1e30)).all()):
        return None  # an additive bias, not a mask
    if bool(visible.all()):
        return "none"
    s_q, s_k = visible.shape[-2], visible.shape[-1]
    if s_q == s_k:
        tril = torch.ones(s_q, s_k, dtype=torch.bool).tril()
        if bool((visible == tril).all()):
            return "causal"
    return None


def _canon_scale(scale: float | None, q: Value) -> float:
    """0.0 (the default, 1/sqrt(head_dim)) when ``scale`` equals it, else the given scale."""
    if scale is None:
        return 0.0
    d = q.type.shape[-1]
    if isinstance(d, int) and math.isclose(scale, 1.0 / math.sqrt(d), rel_tol=1e-12):
        return 0.0
    return float(scale)


# -- llmc custom ops (canonical pieces substituted before tracing) --------------------------------


@handles(torch.ops.llmc.attention.default)
def _llmc_attention(c: Converter, n, q, k, v, scale, causal, window, softcap=0.0):
    qv = c.value(q)
    return c.emit(
        "attention",
        qv,
        c.value(k),
        c.value(v),
        scale=_canon_scale(scale or None, qv),
        causal=bool(causal),
        window=int(window),
        softcap=float(softcap or 0.0),
    )


@handles(torch.ops.llmc.moe.default)
def _llmc_moe(c: Converter, n, x, router, gate_up, down, top_k, normalize, activation):
    ins = [c.value(t) for t in (x, router, gate_up, down)]
    return c.emit(
        "moe", *ins, top_k=int(top_k), normalize=bool(normalize), activation=str(activation)
    )


@handles(torch.ops.llmc.rms_norm.default)
def _llmc_rms_norm(c: Converter, n, x, w, eps):
    return c.emit("rms_norm", c.value(x), c.value(w), eps=float(eps))


@handles(torch.ops.llmc.rope.default)
def _llmc_rope(c: Converter, n, x, pos, attrs):
    return c.emit("rope", c.value(x), c.value(pos), attrs_obj=rope_attrs_from_json(attrs))


__all__ = ["HANDLERS", "IGNORED", "handles"]

from llmc.frontends import aten_stock  # noqa: E402, F401  (registers the stock-module handlers)
