"""The core op set: every op's shape rule, torch reference semantics and cost, in one table.

Groups, with the law each obeys (rewrites may rely on it):

- ``LEAF``: ``param`` and ``constant`` have no inputs; a param's value is its Param's logical value.
- ``UNARY`` elementwise, ``f(x)[i] = f(x[i])``: commute with reshape/permute/slice/concat.
- ``BINARY`` elementwise with numpy broadcasting; ``add``/``mul``/``maximum``/``minimum`` are
  commutative and associative (up to floating-point rounding).
- ``MATMUL``: ``linear(x, w, b) = x @ w.T + b`` with ``w`` stored ``[out, in]``;
  ``matmul`` is batched ``a @ b``. Linear in each operand.
- ``NORM``: ``rms_norm``, ``layer_norm``, ``softmax`` reduce over the last axis (softmax over
  ``dim``) and compute in float32 whatever the input dtype.
- ``LLM``: ``embedding``, ``rope``, ``attention``: the canonical transformer pieces the frontend
  folds traced arithmetic into.
- ``LAYOUT``: ``reshape``/``permute``/``concat``/``slice``/``index_select``/``cast``/
  ``gather_rows``: move or reinterpret data, no arithmetic (``cast`` rounds); ``gather_rows``'s
  output length is a fresh symbol bound at run time (:mod:`llmc.ir.ops_adaptive`).
- ``REDUCE``: ``reduce_sum``/``reduce_mean``/``reduce_max`` over ``dims``.
- ``CONTROL``: ``cond`` runs one of two regions; the only op with nested graphs.

Adding an op: call :func:`defop` here or in an ``ops_<feature>.py`` module imported at the bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmc.errors import IRError
from llmc.ir.params import QuantSpec, fake_quant_act
from llmc.ir.registry import Cost, OpDef, all_ops, get_op, register
from llmc.ir.types import (
    DTYPE_BYTES,
    Dim,
    TensorType,
    broadcast_shapes,
    dim_add,
    dim_div_exact,
    dim_mul,
    dim_sub,
    normalize_axis,
    promote_dtypes,
    to_torch_dtype,
)

__all__ = ["Cost", "OpDef", "all_ops", "get_op", "defop"]


def defop(
    name: str,
    group: str,
    infer: Any,
    ref: Any,
    cost: Any = None,
    attrs: type | None = None,
    inputs: tuple[int, int | None] = (1, 1),
    doc: str = "",
    regions: tuple[str, ...] = (),
    side_effects: bool = False,
) -> OpDef:
    return register(
        OpDef(
            name=name,
            group=group,
            infer=infer,
            ref=ref,
            cost=cost or elementwise_cost(1),
            attrs=attrs,
            min_inputs=inputs[0],
            max_inputs=inputs[1],
            doc=doc,
            region_fields=regions,
            has_side_effects=side_effects,
        )
    )


# ----------------------------------------------------------------------------------------------
# cost helpers (all over concrete shapes)


def numel(t: TensorType) -> int:
    n = 1
    for d in t.shape:
        n *= int(d)
    return n


def nbytes(t: TensorType) -> float:
    return float(numel(t) * DTYPE_BYTES[t.dtype])


def elementwise_cost(flops_per_elem: float):
    def cost(ins: list[TensorType], out: TensorType, attrs: Any, in_bytes: list[float]) -> Cost:
        return Cost(flops_per_elem * numel(out), sum(in_bytes), nbytes(out))

    return cost


def move_cost(ins: list[TensorType], out: TensorType, attrs: Any, in_bytes: list[float]) -> Cost:
    return Cost(0.0, sum(in_bytes), nbytes(out))


def free_cost(ins: list[TensorType], out: TensorType, attrs: Any, in_bytes: list[float]) -> Cost:
    """Views and leaves: no arithmetic and no traffic of their own."""
    return Cost()


# ----------------------------------------------------------------------------------------------
# LEAF


@dataclass(frozen=True)
class ParamAttrs:
    name: str


def _param_infer(ins: list[TensorType], a: ParamAttrs, graph: Any) -> TensorType:
    params = graph.root().params
    if a.name not in params:
        raise IRError(f"param @{a.name} is not in the graph's param table")
    return params[a.name].type


defop(
    "param",
    "LEAF",
    _param_infer,
    lambda args, a, rt: rt.param(a.name),
    free_cost,
    attrs=ParamAttrs,
    inputs=(0, 0),
    doc="Read a weight from the param table.",
)


@dataclass(frozen=True)
class ConstantAttrs:
    value: float
    dtype: str = "f32"


defop(
    "constant",
    "LEAF",
    lambda ins, a, g: TensorType((), a.dtype),
    lambda args, a, rt: torch.tensor(a.value, dtype=to_torch_dtype(a.dtype), device=rt.device),
    free_cost,
    attrs=ConstantAttrs,
    inputs=(0, 0),
    doc="A scalar constant (broadcasts in elementwise ops).",
)

# ----------------------------------------------------------------------------------------------
# UNARY


def _same(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    return ins[0]


def _float_only(name: str):
    def infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
        if not ins[0].is_float:
            raise IRError(f"{name} needs a float input, got {ins[0]}")
        return ins[0]

    return infer


_UNARY: dict[str, tuple[Any, float]] = {
    "neg": (torch.neg, 1),
    "abs": (torch.abs, 1),
    "exp": (torch.exp, 1),
    "log": (torch.log, 1),
    "sqrt": (torch.sqrt, 1),
    "rsqrt": (torch.rsqrt, 1),
    "relu": (torch.relu, 1),
    "sigmoid": (torch.sigmoid, 4),
    "tanh": (torch.tanh, 4),
    "silu": (F.silu, 5),
    "sin": (torch.sin, 4),
    "cos": (torch.cos, 4),
}
for _name, (_fn, _fl) in _UNARY.items():
    defop(
        _name,
        "UNARY",
        _same if _name in ("neg", "abs", "relu") else _float_only(_name),
        (lambda fn: lambda args, a, rt: fn(args[0]))(_fn),
        elementwise_cost(_fl),
        doc=f"Elementwise {_name}.",
    )


@dataclass(frozen=True)
class GeluAttrs:
    approximate: str = "none"  # "none" (erf) or "tanh"

    def __post_init__(self) -> None:
        if self.approximate not in ("none", "tanh"):
            raise IRError(f"gelu approximate must be 'none' or 'tanh', got {self.approximate!r}")


defop(
    "gelu",
    "UNARY",
    _float_only("gelu"),
    lambda args, a, rt: F.gelu(args[0], approximate=a.approximate),
    elementwise_cost(8),
    attrs=GeluAttrs,
    doc="GELU, exact (erf) or tanh-approximated.",
)


@dataclass(frozen=True)
class CastAttrs:
    dtype: str

    def __post_init__(self) -> None:
        to_torch_dtype(self.dtype)


defop(
    "cast",
    "LAYOUT",
    lambda ins, a, g: ins[0].with_dtype(a.dtype),
    lambda args, a, rt: args[0].to(to_torch_dtype(a.dtype)),
    move_cost,
    attrs=CastAttrs,
    doc="Convert dtype (round to nearest even for floats, truncate toward zero for ints).",
)

# ----------------------------------------------------------------------------------------------
# BINARY


def _binary_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    shape = broadcast_shapes(ins[0].shape, ins[1].shape)
    # A rank-0 constant adopts the tensor's dtype (as a Python scalar would in torch).
    if ins[1].rank == 0 and ins[0].rank > 0:
        return TensorType(shape, ins[0].dtype)
    if ins[0].rank == 0 and ins[1].rank > 0:
        return TensorType(shape, ins[1].dtype)
    return TensorType(shape, promote_dtypes(ins[0].dtype, ins[1].dtype))


def _binary_ref(fn: Any):
    def ref(args: list[torch.Tensor], a: Any, rt: Any) -> torch.Tensor:
        x, y = args
        if y.dim() == 0 and x.dim() > 0:
            y = y.to(x.dtype)
        elif x.dim() == 0 and y.dim() > 0:
            x = x.to(y.dtype)
        return fn(x, y)

    return ref


def _div_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    t = _binary_infer(ins, a, g)
    return t if t.is_float else t.with_dtype("f32")  # true division, as torch.div


_BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
}
for _name, _fn in _BINARY.items():
    defop(
        _name,
        "BINARY",
        _div_infer if _name == "div" else _binary_infer,
        _binary_ref(_fn),
        elementwise_cost(1),
        inputs=(2, 2),
        doc=f"Elementwise {_name} with broadcasting.",
    )


def _compare_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    return TensorType(broadcast_shapes(ins[0].shape, ins[1].shape), "bool")


for _name, _fn in {
    "lt": torch.lt,
    "gt": torch.gt,
    "le": torch.le,
    "ge": torch.ge,
    "eq": torch.eq,
    "ne": torch.ne,
}.items():
    defop(
        _name,
        "BINARY",
        _compare_infer,
        _binary_ref(_fn),
        elementwise_cost(1),
        inputs=(2, 2),
        doc=f"Elementwise comparison {_name}; bool result.",
    )


def _where_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    if ins[0].dtype != "bool":
        raise IRError(f"where: condition must be bool, got {ins[0]}")
    shape = broadcast_shapes(ins[0].shape, broadcast_shapes(ins[1].shape, ins[2].shape))
    return TensorType(shape, _binary_infer(ins[1:], a, g).dtype)


defop(
    "where",
    "BINARY",
    _where_infer,
    lambda args, a, rt: torch.where(args[0], *_binary_ref(lambda x, y: (x, y))(args[1:], a, rt)),
    elementwise_cost(1),
    inputs=(3, 3),
    doc="Select elementwise: where(c, x, y).",
)

# ----------------------------------------------------------------------------------------------
# MATMUL


def _linear_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    x, w = ins[0], ins[1]
    if w.rank != 2:
        raise IRError(f"linear: weight must be 2-D [out, in], got {w}")
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise IRError(f"linear: input {x} does not match weight {w} (in-features {w.shape[1]})")
    if len(ins) == 3 and ins[2].shape != (w.shape[0],):
        raise IRError(f"linear: bias {ins[2]} does not match out-features {w.shape[0]}")
    return TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)


def linear_act_quant(graph: Any, n: Any) -> QuantSpec | None:
    """The weight's :class:`QuantSpec` when ``linear`` node ``n`` quantizes its activations
    (``act_bits > 0``: the weight is a param recording it), else None."""
    p = graph.param_of(n.inputs[1]) if len(n.inputs) > 1 else None
    q = p.format.quant if p is not None else None
    return q if q is not None and q.act_bits else None


def _linear_ref(args: list[torch.Tensor], a: Any, rt: Any) -> torch.Tensor:
    x, w = args[0], args[1]
    b = args[2] if len(args) == 3 else None
    node = getattr(rt, "node", None)
    q = linear_act_quant(rt.graph, node) if node is not None else None
    if q is not None:  # the recorded activation quantization (QuantSpec, llmc/ir/params.py)
        x = fake_quant_act(x, q.act_bits, q.act_group)
    return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))


def _linear_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    m = numel(out) // int(out.shape[-1])
    n, k = int(ins[1].shape[0]), int(ins[1].shape[1])
    return Cost(2.0 * m * n * k + (m * n if len(ins) == 3 else 0), sum(in_bytes), nbytes(out))


defop(
    "linear",
    "MATMUL",
    _linear_infer,
    _linear_ref,
    _linear_cost,
    inputs=(2, 3),
    doc="y = x @ w.T + b; w is [out, in]; x quantized first when w records act_bits (QuantSpec).",
)


def _matmul_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    x, y = ins
    if x.rank < 2 or y.rank < 2:
        raise IRError(f"matmul needs rank >= 2 operands, got {x} and {y}")
    if x.shape[-1] != y.shape[-2]:
        raise IRError(f"matmul: inner dimensions differ: {x} @ {y}")
    batch = broadcast_shapes(x.shape[:-2], y.shape[:-2])
    return TensorType(batch + (x.shape[-2], y.shape[-1]), promote_dtypes(x.dtype, y.dtype))


def _matmul_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    return Cost(2.0 * numel(out) * int(ins[0].shape[-1]), sum(in_bytes), nbytes(out))


defop(
    "matmul",
    "MATMUL",
    _matmul_infer,
    lambda args, a, rt: torch.matmul(args[0], args[1]),
    _matmul_cost,
    inputs=(2, 2),
    doc="Batched matrix product with broadcast batch dims.",
)

# ----------------------------------------------------------------------------------------------
# NORM


@dataclass(frozen=True)
class NormAttrs:
    eps: float = 1e-6


def _norm_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    x = ins[0]
    if not x.is_float:
        raise IRError(f"norm needs a float input, got {x}")
    for w in ins[1:]:
        if w.shape != (x.shape[-1],):
            raise IRError(f"norm: weight/bias {w} does not match last dim of {x}")
    return x


def _rms_norm_ref(args: list[torch.Tensor], a: NormAttrs, rt: Any) -> torch.Tensor:
    x = args[0]
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + a.eps)
    h = h.to(x.dtype)
    return h * args[1].to(x.dtype) if len(args) > 1 else h


def _layer_norm_ref(args: list[torch.Tensor], a: NormAttrs, rt: Any) -> torch.Tensor:
    x = args[0]
    w = args[1].to(torch.float32) if len(args) > 1 else None
    b = args[2].to(torch.float32) if len(args) > 2 else None
    return F.layer_norm(x.to(torch.float32), (x.shape[-1],), w, b, a.eps).to(x.dtype)


defop(
    "rms_norm",
    "NORM",
    _norm_infer,
    _rms_norm_ref,
    elementwise_cost(4),
    attrs=NormAttrs,
    inputs=(1, 2),
    doc="x * rsqrt(mean(x^2) + eps) * w over the last axis (float32 inside).",
)
defop(
    "layer_norm",
    "NORM",
    _norm_infer,
    _layer_norm_ref,
    elementwise_cost(7),
    attrs=NormAttrs,
    inputs=(1, 3),
    doc="(x - mean) / sqrt(var + eps) * w + b over the last axis.",
)


@dataclass(frozen=True)
class SoftmaxAttrs:
    dim: int = -1


def _softmax_infer(ins: list[TensorType], a: SoftmaxAttrs, g: Any) -> TensorType:
    if ins[0].rank:
        normalize_axis(a.dim, ins[0].rank)
    return _float_only("softmax")(ins, a, g)


defop(
    "softmax",
    "NORM",
    _softmax_infer,
    lambda args, a, rt: torch.softmax(args[0], dim=a.dim, dtype=torch.float32).to(args[0].dtype),
    elementwise_cost(5),
    attrs=SoftmaxAttrs,
    doc="Softmax over `dim` (float32 inside).",
)

# ----------------------------------------------------------------------------------------------
# LLM


def _embedding_infer(ins: list[TensorType], a: Any, g: Any) -> TensorType:
    ids, table = ins
    if ids.dtype not in ("i64", "i32"):
        raise IRError(f"embedding: ids must be integers, got {ids}")
    if table.rank != 2:
        raise IRError(f"embedding: table must be 2-D, got {table}")
    return TensorType(ids.shape + (table.shape[1],), table.dtype)


def _embedding_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    # Only the gathered rows are read.
    return Cost(0.0, in_bytes[0] + nbytes(out), nbytes(out))


defop(
    "embedding",
    "LLM",
    _embedding_infer,
    lambda args, a, rt: F.embedding(args[0], args[1]),
    _embedding_cost,
    inputs=(2, 2),
    doc="Gather rows of a [vocab, dim] table by token id.",
)


@dataclass(frozen=True)
class RopeAttrs:
    """Rotary position embedding applied to the first ``rotary_dim`` features of each head.

    ``interleaved`` False rotates halves (GPT-NeoX/Llama ``rotate_half``), True rotates adjacent
    pairs (GPT-J). ``scaling``: "" (none), "linear" (positions / factor) or "llama3" (frequency-
    dependent, Llama 3.1); ``mscale`` multiplies cos and sin (YaRN-style attention scaling).
    """

    theta: float = 10000.0
    rotary_dim: int = 0  # 0: the whole head
    interleaved: bool = False
    scaling: str = ""
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    mscale: float = 1.0

    def __post_init__(self) -> None:
        if self.scaling not in ("", "linear", "llama3"):
            raise IRError(f"rope scaling {self.scaling!r} not supported (none, linear, llama3)")


def rope_inv_freq(a: RopeAttrs, dim: int) -> torch.Tensor:
    """Inverse frequencies (float32, length dim/2), exactly as Hugging Face computes them."""
    inv = 1.0 / (a.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if a.scaling == "linear":
        inv = inv / a.factor
    elif a.scaling == "llama3":
        low_wl = a.original_max_position / a.low_freq_factor
        high_wl = a.original_max_position / a.high_freq_factor
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / a.factor, inv)
        smooth = (a.original_max_position / wavelen - a.low_freq_factor) / (
            a.high_freq_factor - a.low_freq_factor
        )
        smoothed = (1 - smooth) * inv_l / a.factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, inv_l)
    return inv


def _rope_infer(ins: list[TensorType], a: RopeAttrs, g: Any) -> TensorType:
    x, pos = ins
    if x.rank != 4:
        raise IRError(f"rope: x must be [batch, heads, seq, head_dim], got {x}")
    if pos.dtype not in ("i64", "i32") or pos.rank != 2:
        raise IRError(f"rope: positions must be integer [batch, seq], got {pos}")
    if pos.shape[1] != x.shape[2]:
        raise IRError(f"rope: positions {pos} do not match the sequence axis of {x}")
    rd = a.rotary_dim or x.shape[3]
    if isinstance(x.shape[3], int) and (rd > x.shape[3] or rd % 2):
        raise IRError(f"rope: rotary_dim {rd} must be even and <= head_dim {x.shape[3]}")
    return x


def _rope_ref(args: list[torch.Tensor], a: RopeAttrs, rt: Any) -> torch.Tensor:
    x, pos = args
    rd = a.rotary_dim or x.shape[-1]
    inv = rope_inv_freq(a, rd).to(x.device)
    freqs = pos.to(torch.float32)[:, :, None] * inv[None, None, :]  # [b, s, rd/2]
    if a.interleaved:
        emb = torch.repeat_interleave(freqs, 2, dim=-1)
    else:
        emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * a.mscale).to(x.dtype)[:, None]
    sin = (emb.sin() * a.mscale).to(x.dtype)[:, None]
    xr, xp = x[..., :rd], x[..., rd:]
    if a.interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2 :]
        rot = torch.cat((-x2, x1), dim=-1)
    out = xr * cos + rot * sin
    return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out


defop(
    "rope",
    "LLM",
    _rope_infer,
    _rope_ref,
    elementwise_cost(6),
    attrs=RopeAttrs,
    inputs=(2, 2),
    doc="Rotary embedding of x [b, h, s, d] at integer positions [b, s].",
)


@dataclass(frozen=True)
class AttentionAttrs:
    """Scaled dot-product attention of q [b, h, s, d] over k, v [b, kv_h, t, d].

    ``causal``: query ``i`` sees key ``j`` iff ``j <= i + (t - s)`` (bottom-right aligned, so the
    same op serves a full forward, prefill after a cache, and one-token decode). ``window`` > 0
    additionally hides keys with ``(i + t - s) - j >= window`` (sliding window). ``h`` must be a
    multiple of ``kv_h`` (grouped-query attention). ``softcap`` > 0 soft-caps the scaled logits
    before masking: ``x -> softcap * tanh(x / softcap)`` (Gemma 2's attention logit capping).
    """

    scale: float = 0.0  # 0: 1/sqrt(head_dim)
    causal: bool = True
    window: int = 0
    softcap: float = 0.0  # 0: no soft-capping

    def __post_init__(self) -> None:
        if not (math.isfinite(self.softcap) and self.softcap >= 0):
            raise IRError(f"attention: softcap must be a finite number >= 0, got {self.softcap}")


def _attention_infer(ins: list[TensorType], a: AttentionAttrs, g: Any) -> TensorType:
    q, k, v = ins
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise IRError(f"attention: q, k, v must be rank 4, got {q}, {k}, {v}")
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[2] != v.shape[2]:
        raise IRError(f"attention: k {k} and v {v} disagree")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise IRError(f"attention: q {q} and k {k} disagree on batch or head_dim")
    if isinstance(q.shape[1], int) and isinstance(k.shape[1], int) and q.shape[1] % k.shape[1]:
        raise IRError(
            f"attention: {q.shape[1]} query heads not a multiple of {k.shape[1]} kv heads"
        )
    return TensorType(q.shape[:3] + (v.shape[3],), q.dtype)


def attention_mask(s: int, t: int, causal: bool, window: int, device: Any) -> torch.Tensor | None:
    """Boolean [s, t] mask of visible keys (None when everything is visible)."""
    if not causal and window <= 0:
        return None
    i = torch.arange(s, device=device)[:, None] + (t - s)
    j = torch.arange(t, device=device)[None, :]
    mask = torch.ones(s, t, dtype=torch.bool, device=device)
    if causal:
        mask &= j <= i
    if window > 0:
        mask &= (i - j) < window
    return mask


def _attention_ref(args: list[torch.Tensor], a: AttentionAttrs, rt: Any) -> torch.Tensor:
    q, k, v = args
    h, kvh = q.shape[1], k.shape[1]
    if h != kvh:
        k = k.repeat_interleave(h // kvh, dim=1)
        v = v.repeat_interleave(h // kvh, dim=1)
    scale = a.scale or 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if a.softcap > 0:
        scores = torch.tanh(scores / a.softcap) * a.softcap
    mask = attention_mask(q.shape[2], k.shape[2], a.causal, a.window, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(p, v)


def _attention_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    b, h, s, d = (int(x) for x in ins[0].shape)
    t, dv = int(ins[1].shape[2]), int(ins[2].shape[3])
    # Causal masking halves the useful work only when s == t; count the full products q @ k.T
    # and p @ v (what dense kernels execute) plus softmax (and the soft-cap's divide, tanh,
    # multiply per logit).
    per_logit = 5.0 + (3.0 if getattr(a, "softcap", 0.0) > 0 else 0.0)
    flops = 2.0 * b * h * s * t * (d + dv) + per_logit * b * h * s * t
    return Cost(flops, sum(in_bytes), nbytes(out))


defop(
    "attention",
    "LLM",
    _attention_infer,
    _attention_ref,
    _attention_cost,
    attrs=AttentionAttrs,
    inputs=(3, 3),
    doc=AttentionAttrs.__doc__ or "",
)

# ----------------------------------------------------------------------------------------------
# LAYOUT


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[Dim, ...]


def _reshape_infer(ins: list[TensorType], a: ReshapeAttrs, g: Any) -> TensorType:
    x = ins[0]
    total = x.numel()
    known: Dim = 1
    holes = [i for i, d in enumerate(a.shape) if d == -1]
    if len(holes) > 1:
        raise IRError(f"reshape: at most one -1 allowed, got {list(a.shape)}")
    for d in a.shape:
        if d != -1:
            known = dim_mul(known, d)
    shape = list(a.shape)
    if holes:
        q = dim_div_exact(total, known)
        if q is None:
            raise IRError(f"reshape: cannot infer -1 reshaping {x} to {_shape_str(a.shape)}")
        shape[holes[0]] = q
    elif known != total:
        raise IRError(
            f"reshape: {x} has {total} elements, target {_shape_str(a.shape)} has {known}"
        )
    return TensorType(tuple(shape), x.dtype)


def _shape_str(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


defop(
    "reshape",
    "LAYOUT",
    _reshape_infer,
    lambda args, a, rt: args[0].reshape(tuple(rt.dim(d) for d in a.shape)),
    free_cost,
    attrs=ReshapeAttrs,
    doc="Reinterpret the shape (row-major); one entry may be -1.",
)


@dataclass(frozen=True)
class PermuteAttrs:
    perm: tuple[int, ...]


def _permute_infer(ins: list[TensorType], a: PermuteAttrs, g: Any) -> TensorType:
    x = ins[0]
    if sorted(a.perm) != list(range(x.rank)):
        raise IRError(f"permute: {list(a.perm)} is not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[p] for p in a.perm), x.dtype)


defop(
    "permute",
    "LAYOUT",
    _permute_infer,
    lambda args, a, rt: args[0].permute(a.perm).contiguous(),
    move_cost,
    attrs=PermuteAttrs,
    doc="Reorder axes.",
)


@dataclass(frozen=True)
class AxisAttrs:
    dim: int


def _concat_infer(ins: list[TensorType], a: AxisAttrs, g: Any) -> TensorType:
    first = ins[0]
    ax = normalize_axis(a.dim, first.rank)
    total: Dim = 0
    for t in ins:
        if t.rank != first.rank or t.dtype != first.dtype:
            raise IRError(f"concat: operands {first} and {t} differ in rank or dtype")
        for i in range(first.rank):
            if i != ax and t.shape[i] != first.shape[i]:
                raise IRError(f"concat along {ax}: operands {first} and {t} differ on axis {i}")
        total = dim_add(total, t.shape[ax])
    shape = list(first.shape)
    shape[ax] = total
    return TensorType(tuple(shape), first.dtype)


defop(
    "concat",
    "LAYOUT",
    _concat_infer,
    lambda args, a, rt: torch.cat(args, dim=a.dim),
    move_cost,
    attrs=AxisAttrs,
    inputs=(1, None),
    doc="Concatenate along `dim`.",
)


@dataclass(frozen=True)
class SliceAttrs:
    """``x[start:end:step]`` along ``dim``. ``end`` None means to the end; a negative int
    ``start`` counts from the end (``start=-1, end=None`` takes the last position)."""

    dim: int
    start: Dim = 0
    end: Dim | None = None
    step: int = 1


def _slice_infer(ins: list[TensorType], a: SliceAttrs, g: Any) -> TensorType:
    x = ins[0]
    ax = normalize_axis(a.dim, x.rank)
    size = x.shape[ax]
    if a.step < 1:
        raise IRError(f"slice: step must be >= 1, got {a.step}")
    if isinstance(a.start, int) and a.start < 0:
        if a.end is not None:
            raise IRError("slice: a negative start needs end=None")
        length: Dim = -a.start if not isinstance(size, int) else min(-a.start, size)
    else:
        end = size if a.end is None else a.end
        if isinstance(end, int) and isinstance(size, int):
            end = min(end, size)  # x[s:e] clamps e to the length, as torch does
        length = dim_sub(end, a.start)
    if a.step != 1:
        if not isinstance(length, int):
            raise IRError("slice: step != 1 needs a static length")
        length = (length + a.step - 1) // a.step
    if isinstance(length, int) and length < 0:
        raise IRError(f"slice: empty or negative range on {x}")
    shape = list(x.shape)
    shape[ax] = length
    return TensorType(tuple(shape), x.dtype)


def _slice_ref(args: list[torch.Tensor], a: SliceAttrs, rt: Any) -> torch.Tensor:
    x = args[0]
    start = rt.dim(a.start)
    end = None if a.end is None else rt.dim(a.end)
    idx = [slice(None)] * x.dim()
    idx[a.dim] = slice(start, end, a.step)
    return x[tuple(idx)]


defop(
    "slice",
    "LAYOUT",
    _slice_infer,
    _slice_ref,
    move_cost,
    attrs=SliceAttrs,
    doc=SliceAttrs.__doc__ or "",
)


def _index_select_infer(ins: list[TensorType], a: AxisAttrs, g: Any) -> TensorType:
    x, idx = ins
    if idx.rank != 1 or idx.dtype not in ("i64", "i32"):
        raise IRError(f"index_select: indices must be 1-D integers, got {idx}")
    ax = normalize_axis(a.dim, x.rank)
    shape = list(x.shape)
    shape[ax] = idx.shape[0]
    return TensorType(tuple(shape), x.dtype)


defop(
    "index_select",
    "LAYOUT",
    _index_select_infer,
    lambda args, a, rt: torch.index_select(args[0], a.dim, args[1]),
    move_cost,
    attrs=AxisAttrs,
    inputs=(2, 2),
    doc="Select positions along `dim` (changes that axis's length).",
)

# ----------------------------------------------------------------------------------------------
# REDUCE


@dataclass(frozen=True)
class ReduceAttrs:
    dims: tuple[int, ...]
    keepdim: bool = False


def _reduce_infer(ins: list[TensorType], a: ReduceAttrs, g: Any) -> TensorType:
    x = ins[0]
    axes = {normalize_axis(d, x.rank) for d in a.dims}
    if not a.dims or len(axes) != len(a.dims):
        raise IRError(f"reduce: dims must be non-empty and distinct, got {list(a.dims)}")
    shape = [1 if i in axes else d for i, d in enumerate(x.shape) if a.keepdim or i not in axes]
    return TensorType(tuple(shape), x.dtype)


for _name, _fn in {
    "reduce_sum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "reduce_mean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "reduce_max": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
}.items():
    defop(
        _name,
        "REDUCE",
        _reduce_infer,
        (lambda fn: lambda args, a, rt: fn(args[0], list(a.dims), a.keepdim))(_fn),
        move_cost,
        attrs=ReduceAttrs,
        doc=f"{_name[7:]} over `dims`.",
    )


@dataclass(frozen=True)
class CumsumAttrs:
    dim: int


def _cumsum_infer(ins: list[TensorType], a: CumsumAttrs, g: Any) -> TensorType:
    normalize_axis(a.dim, ins[0].rank)
    return ins[0]


defop(
    "cumsum",
    "REDUCE",
    _cumsum_infer,
    lambda args, a, rt: torch.cumsum(args[0], dim=a.dim).to(args[0].dtype),
    elementwise_cost(1),
    attrs=CumsumAttrs,
    doc="Inclusive prefix sum along `dim`, in the input's dtype (RoBERTa's position ids).",
)

# ----------------------------------------------------------------------------------------------
# CONTROL


@dataclass(frozen=True)
class CondAttrs:
    """Regions of ``cond(pred, *args)``: each takes ``args`` as its inputs and returns one value
    of the node's type. ``then_branch`` runs when the bool scalar ``pred`` is true."""

    then_branch: Any  # Graph
    else_branch: Any  # Graph


def _cond_infer(ins: list[TensorType], a: CondAttrs, g: Any) -> TensorType:
    pred = ins[0]
    if pred.dtype != "bool" or pred.rank != 0:
        raise IRError(f"cond: predicate must be a bool scalar, got {pred}")
    outs = []
    for r in (a.then_branch, a.else_branch):
        if [v.type for v in r.inputs] != ins[1:]:
            raise IRError("cond: region inputs do not match the operands")
        if len(r.outputs) != 1:
            raise IRError(f"cond: a region must return one value, got {len(r.outputs)}")
        outs.append(r.outputs[0].type)
    if outs[0] != outs[1]:
        raise IRError(f"cond: branches return different types {outs[0]} and {outs[1]}")
    return outs[0]


def _cond_ref(args: list[torch.Tensor], a: CondAttrs, rt: Any) -> torch.Tensor:
    region = a.then_branch if bool(args[0]) else a.else_branch
    return rt.run_region(region, args[1:])


def _cond_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    # The cost of a region depends on which branch runs; analyses handle cond explicitly.
    return Cost()


defop(
    "cond",
    "CONTROL",
    _cond_infer,
    _cond_ref,
    _cond_cost,
    attrs=CondAttrs,
    inputs=(1, None),
    regions=("then_branch", "else_branch"),
    doc=CondAttrs.__doc__ or "",
)

import llmc.ir.ops_adaptive  # noqa: E402,F401  (gather_rows)
import llmc.ir.ops_attention  # noqa: E402,F401  (attention_async)
import llmc.ir.ops_moe  # noqa: E402,F401  (moe)
import llmc.ir.ops_quant  # noqa: E402,F401  (qlinear_a8, fused_elementwise)
