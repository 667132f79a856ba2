"""Mixture of experts: ``moe(x, router, gate_up, down) {top_k, normalize, activation}``.

The routed-expert FFN of Mixtral and Qwen2-MoE, as one op (the ``moe`` block tag's op):

1. router logits ``r = x @ router.T`` (``router [E, H]``), probabilities ``p = softmax(r)`` in
   float32;
2. each row picks its ``top_k`` experts (largest ``p``; ties by the lower index, as
   ``torch.topk``), with weights ``w = p[chosen]``, divided by their sum when ``normalize``
   (Mixtral; Qwen2-MoE's ``norm_topk_prob``);
3. expert ``e`` is a gated FFN: ``down[e] @ (act(g) * u)`` with ``[g; u] = gate_up[e] @ x``
   (``gate_up [E, 2I, H]``: gate rows first, then up rows; ``down [E, H, I]``);
4. the output is ``sum over chosen e of w_e * expert_e(x)``, shape and dtype of ``x``.

A shared expert (Qwen2-MoE) is ordinary ops beside this one. The cost counts the router, the
softmax and ``top_k`` experts per row (the work routed execution does), and reads the expert
weights that ``min(E, rows * top_k)`` experts need (decode touches ``top_k`` of ``E``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmc.errors import IRError

# Imported from ops.py's bottom line: ops.py is fully initialised by then.
from llmc.ir.ops import defop, nbytes
from llmc.ir.registry import Cost
from llmc.ir.types import TensorType

MOE_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class MoeAttrs:
    """``top_k`` experts per row; ``normalize`` their weights to sum 1; the experts' gate
    ``activation`` (silu, gelu, relu)."""

    top_k: int = 2
    normalize: bool = True
    activation: str = "silu"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise IRError(f"moe: top_k must be >= 1, got {self.top_k}")
        if self.activation not in MOE_ACTIVATIONS:
            raise IRError(
                f"moe: activation {self.activation!r} is not one of {', '.join(MOE_ACTIVATIONS)}"
            )


def _moe_infer(ins: list[TensorType], a: MoeAttrs, g: Any) -> TensorType:
    x, router, gate_up, down = ins
    if not x.is_float or x.rank < 1:
        raise IRError(f"moe: x must be a float tensor, got {x}")
    if router.rank != 2 or gate_up.rank != 3 or down.rank != 3:
        raise IRError(f"moe: expected router [E, H], gate_up [E, 2I, H], down [E, H, I]; got "
                      f"{router}, {gate_up}, {down}")  # fmt: skip
    e, h = router.shape
    if gate_up.shape[0] != e or down.shape[0] != e:
        raise IRError(f"moe: router has {e} experts but gate_up {gate_up} / down {down} disagree")
    if h != x.shape[-1] or gate_up.shape[2] != h or down.shape[1] != h:
        raise IRError(f"moe: hidden size {x.shape[-1]} of x disagrees with {router}, {gate_up}, "
                      f"{down}")  # fmt: skip
    two_i, i = gate_up.shape[1], down.shape[2]
    if isinstance(two_i, int) and isinstance(i, int) and two_i != 2 * i:
        raise IRError(f"moe: gate_up has {two_i} rows, expected 2 x {i} (down's inner size)")
    if isinstance(e, int) and a.top_k > e:
        raise IRError(f"moe: top_k {a.top_k} exceeds the {e} experts")
    return x


def routing(
    x2: torch.Tensor, router: torch.Tensor, a: MoeAttrs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``x2 [N, H]``: the chosen experts ``[N, k]`` and their weights (float32)."""
    probs = torch.softmax(F.linear(x2, router).float(), dim=-1)
    w, idx = torch.topk(probs, a.top_k, dim=-1)
    if a.normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return idx, w


def _moe_ref(args: list[torch.Tensor], a: MoeAttrs, rt: Any) -> torch.Tensor:
    x, router, gate_up, down = args
    x2 = x.reshape(-1, x.shape[-1])
    idx, w = routing(x2, router, a)
    act = MOE_ACTIVATIONS[a.activation]
    out = torch.zeros_like(x2)
    for e in range(router.shape[0]):
        rows, slot = torch.where(idx == e)
        if rows.numel() == 0:
            continue
        gate, up = F.linear(x2[rows], gate_up[e]).chunk(2, dim=-1)
        y = F.linear(act(gate) * up, down[e]) * w[rows, slot, None]
        out.index_add_(0, rows, y.to(out.dtype))
    return out.reshape(x.shape)


def _moe_cost(ins: list[TensorType], out: TensorType, a: Any, in_bytes: list[float]) -> Cost:
    x, router, gate_up, _ = ins
    rows = 1
    for d in x.shape[:-1]:
        rows *= int(d)
    e, h, inter = int(router.shape[0]), int(router.shape[1]), int(gate_up.shape[1]) // 2
    k = min(a.top_k, e)
    # router GEMM + softmax/top-k per logit; per chosen expert: gate_up and down GEMMs and the
    # gated activation; the weighted sum
    flops = 2.0 * rows * h * e + 5.0 * rows * e
    flops += rows * k * (2.0 * h * 2 * inter + 2.0 * inter * h + 4.0 * inter + 2.0 * h)
    touched = min(e, rows * k) / e
    read = in_bytes[0] + in_bytes[1] + touched * (in_bytes[2] + in_bytes[3])
    return Cost(flops, read, nbytes(out))


defop(
    "moe",
    "LLM",
    _moe_infer,
    _moe_ref,
    _moe_cost,
    attrs=MoeAttrs,
    inputs=(4, 4),
    doc="Routed mixture of experts: softmax router, top-k gated-FFN experts, weighted sum.",
)
