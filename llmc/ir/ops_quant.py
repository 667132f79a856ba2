"""Ops added by the compression passes: W8A8 integer linear and fused elementwise regions.

``qlinear_a8(x, w[, b]) {weight = "NAME", act_scale = 0.0}`` — a W8A8 linear, what SmoothQuant
and naive W8A8 produce. ``w`` is the ``param`` node of the weight ``NAME`` (named again in
``weight`` so the reference and backends read its integer codes, not its dequantized value); the
param must be stored int8, symmetric, per output channel (``quant(bits=8, group=0, sym=true)``,
codes in [-127, 127], ``scale [out, 1]``). Semantics, in this order:

1. activation scale per token (every row of the last axis): ``s_x = max|x| / 127`` (dynamic,
   computed at run time) or the static per-tensor ``act_scale`` when it is > 0;
2. ``q_x = clamp(round_half_even(x / s_x), -127, 127)`` as int8;
3. ``acc = q_x @ q_w.T`` with int32 accumulation (int8 x int8 -> int32, exact);
4. ``y = float32(acc) * s_x * s_w`` (+ ``b``), returned in ``x``'s dtype.

A backend lowers it to a per-token quantize kernel, an int8 GEMM (DP4A / IMMA / MFMA / DSP) and
an epilogue that rescales; the reference here computes exactly that, in integers where the target
uses integers.

``fused_elementwise(*xs) {body = region(...)}`` — a chain of elementwise ops (the UNARY and
BINARY groups and ``cast``) fused into one kernel by the ``fuse-elementwise`` pass: the region
takes the operands (same types) and returns one value; semantics are those of the region's ops in
order. Its cost counts the region's FLOPs but only the operands' and the result's bytes (the
intermediates stay in registers), which is what fusion buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmc.errors import IRError

# Imported from ops.py's bottom line: ops.py is fully initialised by then.
from llmc.ir.ops import _linear_infer, defop, nbytes, numel
from llmc.ir.registry import Cost, get_op
from llmc.ir.types import TensorType, bind_symbols

# ----------------------------------------------------------------------------------------------
# qlinear_a8

A8_QMAX = 127


@dataclass(frozen=True)
class QLinearA8Attrs:
    weight: str
    act_scale: float = 0.0  # 0: dynamic per-token scales; > 0: static per-tensor scale


def _qlinear_infer(ins: list[TensorType], a: QLinearA8Attrs, graph: Any) -> TensorType:
    out = _linear_infer(ins, a, graph)
    if not ins[0].is_float:
        raise IRError(f"qlinear_a8: activations must be float, got {ins[0]}")
    if a.act_scale < 0:
        raise IRError(f"qlinear_a8: act_scale must be >= 0, got {a.act_scale}")
    params = graph.root().params
    p = params.get(a.weight)
    if p is None:
        raise IRError(f"qlinear_a8: weight param @{a.weight} does not exist")
    if p.type != ins[1]:
        raise IRError(f"qlinear_a8: weight @{a.weight} is {p.type} but operand 1 is {ins[1]}")
    q = p.format.quant
    if q is None or q.bits != 8 or q.group != 0 or not q.symmetric:
        raise IRError(
            f"qlinear_a8: weight @{a.weight} must be int8 symmetric per-channel "
            f"(quant(bits=8, group=0, sym=true)), got {p.format}"
        )
    return out


def quantize_per_token(
    x: torch.Tensor, act_scale: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and float32 scales ``[..., 1]`` of ``x`` (steps 1-2 of ``qlinear_a8``)."""
    xf = x.to(torch.float32)
    if act_scale > 0:
        s = torch.full((*xf.shape[:-1], 1), act_scale, dtype=torch.float32, device=x.device)
    else:
        s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / A8_QMAX
    q = torch.clamp(torch.round(xf / s), -A8_QMAX, A8_QMAX).to(torch.int8)
    return q, s


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a [m, k] @ b_t.T`` for int8 operands, int32 result, exact."""
    try:
        if a.shape[0] > 16 and a.device.type == "cpu":
            return torch._int_mm(a, b_t.t().contiguous())
    except (RuntimeError, AttributeError):
        pass
    # float64 represents every partial sum exactly while k * 127^2 < 2^53.
    return torch.matmul(a.to(torch.float64), b_t.to(torch.float64).t()).to(torch.int32)


def _qlinear_ref(args: list[torch.Tensor], a: QLinearA8Attrs, rt: Any) -> torch.Tensor:
    x = args[0]
    p = rt.graph.params[a.weight]
    codes = p.data["qvalue"].to(rt.device)
    w_scale = p.data["scale"].to(device=rt.device, dtype=torch.float32).reshape(1, -1)
    lead = x.shape[:-1]
    q, s = quantize_per_token(x.reshape(-1, x.shape[-1]), a.act_scale)
    acc = int8_matmul(q, codes)
    y = acc.to(torch.float32) * s * w_scale
    if len(args) == 3:
        y = y + args[2].to(torch.float32)
    return y.reshape(*lead, codes.shape[0]).to(x.dtype)


def _qlinear_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    m = numel(out) // int(out.shape[-1])
    n, k = int(ins[1].shape[0]), int(ins[1].shape[1])
    # int8 MACs (2 ops each) + quantize (3/elem of x) + rescale (2/elem of y)
    flops = 2.0 * m * n * k + 3.0 * m * k + 2.0 * m * n
    return Cost(flops, sum(in_bytes), nbytes(out))


defop(
    "qlinear_a8",
    "MATMUL",
    _qlinear_infer,
    _qlinear_ref,
    _qlinear_cost,
    attrs=QLinearA8Attrs,
    inputs=(2, 3),
    doc="W8A8 linear: per-token int8 activations x int8 per-channel weights, int32 accumulate.",
)

# ----------------------------------------------------------------------------------------------
# fused_elementwise

FUSIBLE_GROUPS = frozenset({"UNARY", "BINARY"})
FUSIBLE_EXTRA = frozenset({"cast"})


def is_fusible(op: str) -> bool:
    od = get_op(op)
    return od.group in FUSIBLE_GROUPS or op in FUSIBLE_EXTRA


@dataclass(frozen=True)
class FusedAttrs:
    body: Any  # Graph: inputs typed like the operands, one output


def _fused_infer(ins: list[TensorType], a: FusedAttrs, g: Any) -> TensorType:
    body = a.body
    if [v.type for v in body.inputs] != list(ins):
        raise IRError("fused_elementwise: region inputs do not match the operands")
    if len(body.outputs) != 1:
        raise IRError(
            f"fused_elementwise: the region must return one value, got {len(body.outputs)}"
        )
    for n in body.nodes:
        if n.op != "constant" and not is_fusible(n.op):
            raise IRError(f"fused_elementwise: op '{n.op}' is not elementwise")
    return body.outputs[0].type


def _fused_ref(args: list[torch.Tensor], a: FusedAttrs, rt: Any) -> torch.Tensor:
    return rt.run_region(a.body, args)


def _fused_cost(
    ins: list[TensorType], out: TensorType, a: FusedAttrs, in_bytes: list[float]
) -> Cost:
    env: dict[str, int] = {}
    metas = [torch.empty(tuple(int(d) for d in t.shape), device="meta") for t in ins]
    bind_symbols(metas, [v.type for v in a.body.inputs], env)
    flops = 0.0
    for n in a.body.nodes:
        t = TensorType(n.out.type.concrete(env), n.out.type.dtype)
        nins = [TensorType(v.type.concrete(env), v.type.dtype) for v in n.inputs]
        flops += get_op(n.op).cost(nins, t, n.attrs, [nbytes(x) for x in nins]).flops
    return Cost(flops, sum(in_bytes), nbytes(out))


defop(
    "fused_elementwise",
    "FUSED",
    _fused_infer,
    _fused_ref,
    _fused_cost,
    attrs=FusedAttrs,
    inputs=(1, None),
    regions=("body",),
    doc="A chain of elementwise ops run as one kernel (region `body`).",
)
