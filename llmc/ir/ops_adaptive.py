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

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.ops import attention_mask, defop, nbytes, normalize_axis
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


# ----------------------------------------------------------------------------------------------
# token pruning: scores, then a keep mask (then gather_rows)

SCORE_METHODS = ("attention", "pagerank", "random")
KEEP_METHODS = ("topk", "uniform", "threshold")
_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B
_HASH_SEED = 1 << 20


@dataclass(frozen=True)
class TokenScoresAttrs:
    """How ``token_scores`` rates each new row (see :func:`token_scores`).

    ``method``: ``attention`` (mean attention the row receives from the last ``window`` query
    rows, over heads), ``pagerank`` (AIM: PageRank over the head-averaged attention among the new
    rows, ``iters`` power iterations with ``damping``), ``random`` (a hash of the row's position
    and ``seed``: a reproducible random order, the baseline). ``scale``/``causal``/``window``
    of attention are the layer's own (``attn_window``: its sliding window, 0 none)."""

    method: str = "attention"
    window: int = 8
    scale: float = 0.0
    causal: bool = True
    attn_window: int = 0
    iters: int = 20
    damping: float = 0.85
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in SCORE_METHODS:
            raise IRError(
                f"token_scores: method must be one of {', '.join(SCORE_METHODS)}, "
                f"got {self.method!r}"
            )
        if self.window < 0 or self.iters < 1 or not 0 < self.damping < 1:
            raise IRError("token_scores: need window >= 0, iters >= 1, 0 < damping < 1")


def _token_scores_infer(ins: list[TensorType], a: TokenScoresAttrs, g: Any) -> TensorType:
    q, k, pos = ins
    if q.rank != 4 or k.rank != 4 or pos.rank != 2 or pos.dtype != "i64":
        raise IRError(
            f"token_scores: want q [b, h, rows, d], k [b, kv_h, past + rows, d] and positions "
            f"i64[b, rows]; got {q}, {k}, {pos}"
        )
    if tuple(pos.shape) != (q.shape[0], q.shape[2]):
        raise IRError(f"token_scores: positions {pos} must be [batch, rows] of q {q}")
    return TensorType((q.shape[0], q.shape[2]), "f32")


def attention_probs(q: torch.Tensor, k: torch.Tensor, a: TokenScoresAttrs) -> torch.Tensor:
    """float32 ``softmax(scale q k^T)`` under the layer's mask, restricted to the new-row keys:
    ``[b, h, rows, rows]`` (mass on cached keys is left out)."""
    h, kvh = q.shape[1], k.shape[1]
    if h != kvh:
        k = k.repeat_interleave(h // kvh, dim=1)
    scale = a.scale or 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2)) * scale
    mask = attention_mask(q.shape[2], k.shape[2], a.causal, a.attn_window, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p[..., k.shape[2] - q.shape[2] :]


def position_hash(pos: torch.Tensor, seed: int) -> torch.Tensor:
    """A reproducible pseudo-random value in [0, 1) per position: a 32-bit integer mix (two
    rounds of ``x ^= x >> 16; x = x * 0x45d9f3b mod 2^32``, then ``x ^= x >> 16``) of
    ``pos + seed * 2^20``, in int64 arithmetic (exact on every backend), divided by 2^32."""
    x = (pos.to(torch.int64) + seed * _HASH_SEED) & _MASK32
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * _HASH_MUL) & _MASK32
    x = x ^ (x >> 16)
    return (x.to(torch.float64) / 2.0**32).to(torch.float32)


def _token_scores_ref(args: list[torch.Tensor], a: TokenScoresAttrs, rt: Any) -> torch.Tensor:
    q, k, pos = args
    if a.method == "random":
        return position_hash(pos, a.seed)
    rows = q.shape[2]
    p = attention_probs(q, k, a)  # [b, h, rows, rows]
    if a.method == "attention":
        w = min(a.window, rows) if a.window else rows
        return p[:, :, rows - w :, :].mean(dim=(1, 2))
    m = p.mean(dim=1)  # [b, rows, rows]: row i's attention to row j
    s = torch.full((q.shape[0], rows), 1.0 / max(rows, 1), dtype=torch.float32, device=q.device)
    for _ in range(a.iters):
        s = (1 - a.damping) / rows + a.damping * torch.einsum("bi,bij->bj", s, m)
        s = s / s.sum(-1, keepdim=True).clamp_min(1e-30)
    return s


def _token_scores_cost(
    ins: list[TensorType], out: TensorType, a: TokenScoresAttrs, in_bytes: list[float]
) -> Cost:
    if a.method == "random":
        return Cost(10.0 * nbytes(out) / 4, in_bytes[2], nbytes(out))
    b, h, s, d = (int(x) for x in ins[0].shape)
    t = int(ins[1].shape[2])
    rows = s if a.method == "pagerank" or not a.window else min(a.window, s)
    flops = 2.0 * b * h * rows * t * d + 5.0 * b * h * rows * t
    if a.method == "pagerank":
        flops += 2.0 * a.iters * b * s * s + b * h * s * s
    return Cost(flops, sum(in_bytes), nbytes(out))


defop(
    "token_scores",
    "LLM",
    _token_scores_infer,
    _token_scores_ref,
    _token_scores_cost,
    attrs=TokenScoresAttrs,
    inputs=(3, 3),
    doc="Importance of each new row (token pruning): attention received from the last `window` "
    "query rows, PageRank over attention (AIM), or a seeded hash of the position: f32[batch, rows].",
)


@dataclass(frozen=True)
class KeepRowsAttrs:
    """Which rows survive (see :func:`keep_count` and :func:`keep_rows`).

    ``keep``: fraction of the ``total`` prompt rows to keep (``total`` names the symbol of the
    call's original row count, ``seq``; empty: this call's row count), rounded half up; ``recent``: the last rows, always kept
    (>= 1, so the next-token row survives); ``sink``: keep the row at position 0 (the attention
    sink); ``method``: ``topk`` (the highest scores), ``uniform`` (evenly spaced among the rows
    not forced), ``threshold`` (ATP-style: rows whose score is at least ``theta`` times the mean
    score, at least ``keep`` of ``total``)."""

    keep: float
    total: str = ""
    recent: int = 4
    sink: bool = True
    method: str = "topk"
    theta: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise IRError(f"keep_rows: keep must be in (0, 1], got {self.keep}")
        if self.recent < 1:
            raise IRError(f"keep_rows: recent must be >= 1 (the last row), got {self.recent}")
        if self.method not in KEEP_METHODS:
            raise IRError(
                f"keep_rows: method must be one of {', '.join(KEEP_METHODS)}, got {self.method!r}"
            )
        if not isinstance(self.total, str) or not (self.total == "" or _NAME.fullmatch(self.total)):
            raise IRError(f"keep_rows: total must name a symbol (or be empty), got {self.total!r}")


def _keep_rows_infer(ins: list[TensorType], a: KeepRowsAttrs, g: Any) -> TensorType:
    scores, pos = ins
    if scores.rank != 2 or scores.dtype != "f32" or tuple(pos.shape) != tuple(scores.shape):
        raise IRError(f"keep_rows: want scores f32[b, rows] and positions i64[b, rows]: {ins}")
    if pos.dtype != "i64":
        raise IRError(f"keep_rows: positions must be i64, got {pos}")
    return TensorType(tuple(scores.shape), "bool")


def keep_count(keep: float, total: int) -> int:
    """``round_half_up(keep * total)`` in float64 (every backend computes it the same way)."""
    return int(math.floor(keep * float(total) + 0.5))


def keep_rows(
    scores: torch.Tensor, pos: torch.Tensor, a: KeepRowsAttrs, total: int
) -> torch.Tensor:
    """The keep mask ``bool[b, rows]``: forced rows (position 0 when ``sink``, the last
    ``recent``), then by ``method`` up to ``c`` rows per batch row, where ``c`` is the same for
    every batch row: ``min(rows, max(forced, keep_count(keep, total)))`` (``threshold``: the
    largest count any batch row passes, at least that)."""
    b, rows = scores.shape
    idx = torch.arange(rows, device=scores.device)
    forced = (idx >= rows - a.recent)[None, :].expand(b, rows)
    if a.sink:
        forced = forced | (pos == 0)
    nf = forced.sum(-1)
    c = max(int(nf.max()) if b else 0, keep_count(a.keep, total))
    s = scores.to(torch.float32)
    if a.method == "threshold":
        mean = s.mean(-1, keepdim=True)
        passes = (s >= a.theta * mean) | forced
        c = max(c, int(passes.sum(-1).max()) if b else 0)
    c = min(rows, c)
    if a.method == "uniform":
        out = forced.clone()
        for r in range(b):
            free = (~forced[r]).nonzero().flatten()
            need = c - int(nf[r])
            if need > 0:
                pick = (
                    (torch.arange(need, dtype=torch.float64) + 0.5) * free.numel() / need
                ).long()
                out[r, free[pick]] = True
        return out
    key = torch.where(forced, torch.tensor(float("inf"), device=s.device), s)
    # descending by score, ties to the lower row: a stable sort on the negated key
    order = torch.sort(-key, dim=-1, stable=True).indices[:, :c]
    out = torch.zeros(b, rows, dtype=torch.bool, device=scores.device)
    out.scatter_(1, order, True)
    return out


def _keep_rows_ref(args: list[torch.Tensor], a: KeepRowsAttrs, rt: Any) -> torch.Tensor:
    scores, pos = args
    if not a.total:
        return keep_rows(scores, pos, a, scores.shape[1])
    if a.total not in rt.env:
        raise IRError(f"keep_rows: symbol {a.total!r} has no value at run time")
    return keep_rows(scores, pos, a, int(rt.env[a.total]))


def _keep_rows_cost(
    ins: list[TensorType], out: TensorType, a: KeepRowsAttrs, in_bytes: list[float]
) -> Cost:
    b, s = (int(x) for x in ins[0].shape)
    return Cost(b * s * max(math.log2(max(s, 2)), 1.0), sum(in_bytes), nbytes(out))


defop(
    "keep_rows",
    "LLM",
    _keep_rows_infer,
    _keep_rows_ref,
    _keep_rows_cost,
    attrs=KeepRowsAttrs,
    inputs=(2, 2),
    doc="Token-pruning keep mask bool[batch, rows]: the sink and last `recent` rows, then the "
    "best-scored (topk), evenly spaced (uniform) or above theta x mean (threshold) rows, "
    "`keep` of the `total` prompt rows.",
)
