"""Ops for input-adaptive execution (design.md, "Adaptive execution"): decided per input, at run
time, and still plain IR.

``gather_rows(x, keep) {length, dim = 1}`` keeps the rows of ``x`` along ``dim`` where the bool
mask ``keep`` is true, in their original order (token pruning: the residual stream
``[batch, seq, hidden]`` and the ``positions [batch, seq]`` of the kept tokens, gathered with one
mask, so RoPE and learned positions read each kept token's original position).

- ``keep`` has the shape of ``x``'s leading dims up to ``dim``: ``[batch, seq]`` for ``dim = 1``.
- The result has ``x``'s shape with axis ``dim`` replaced by the symbol ``length``, a *fresh*
  symbol: no graph input mentions it, and every ``gather_rows`` that binds it reads the same
  ``keep`` value (the verifier's ``symbols`` rule), so the hidden states and the positions of one
  pruning step share one length. It is bound at run time to the number of kept rows, which must be the same
  for every leading index (every batch row keeps as many tokens); later shapes are polynomials
  in it (a pruned layer's cache grows by ``length``, not ``seq``).
- Order is kept, so causal attention's bottom-right alignment stays right on the kept rows:
  kept query ``i`` sees kept key ``j`` iff ``j <= i + past``. A sliding ``window`` counts cache
  rows, not positions: pruning under a windowed attention changes what the window covers.
- Cost: no FLOPs; reads the kept rows and the mask, writes the kept rows (evaluate the cost with
  ``length`` bound to the expected kept count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.ops import defop, nbytes, normalize_axis
from llmc.ir.registry import Cost
from llmc.ir.types import TensorType, sym

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class GatherRowsAttrs:
    """``length``: the fresh symbol bound at run time to the kept row count; ``dim``: the row
    axis (``keep`` covers the axes before it and it)."""

    length: str
    dim: int = 1


def _gather_rows_infer(ins: list[TensorType], a: GatherRowsAttrs, g: Any) -> TensorType:
    x, keep = ins
    ax = normalize_axis(a.dim, x.rank)
    if keep.dtype != "bool" or tuple(keep.shape) != tuple(x.shape[: ax + 1]):
        raise IRError(
            f"gather_rows: keep must be bool{list(x.shape[: ax + 1])} (x's dims up to {ax}), "
            f"got {keep}"
        )
    if not isinstance(a.length, str) or not _NAME.fullmatch(a.length):
        raise IRError(f"gather_rows: length must name one fresh symbol, got {a.length!r}")
    shape = list(x.shape)
    shape[ax] = sym(a.length)
    return TensorType(tuple(shape), x.dtype)


def _gather_rows_ref(args: list[torch.Tensor], a: GatherRowsAttrs, rt: Any) -> torch.Tensor:
    x, keep = args
    ax = normalize_axis(a.dim, x.dim())
    lead = tuple(x.shape[:ax])
    counts = keep.reshape(-1, x.shape[ax]).sum(-1)
    n = int(counts[0]) if counts.numel() else 0
    if counts.numel() and bool((counts != n).any()):
        i = int((counts != n).nonzero()[0, 0])
        raise IRError(
            f"gather_rows ({a.length}): rows keep different counts ({n} at index 0, "
            f"{int(counts[i])} at index {i}); every batch row must keep as many"
        )
    rt.bind(a.length, n, "gather_rows: ")
    return x[keep].reshape(lead + (n,) + tuple(x.shape[ax + 1 :]))


def _gather_rows_cost(
    ins: list[TensorType], out: TensorType, a: GatherRowsAttrs, in_bytes: list[float]
) -> Cost:
    return Cost(0.0, nbytes(out) + in_bytes[1], nbytes(out))


defop(
    "gather_rows",
    "LAYOUT",
    _gather_rows_infer,
    _gather_rows_ref,
    _gather_rows_cost,
    attrs=GatherRowsAttrs,
    inputs=(2, 2),
    doc="Keep the rows along `dim` where the bool mask is true, in order; the kept count binds "
    "the fresh symbol `length` at run time.",
)


def fresh_symbols(op: str, attrs: Any) -> tuple[str, ...]:
    """Symbols a node of ``op`` binds at run time (the verifier checks they are fresh)."""
    return (attrs.length,) if op == "gather_rows" and isinstance(attrs, GatherRowsAttrs) else ()
