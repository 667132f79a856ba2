"""Attention variants added by the backend work: the asynchronous softmax of FlashDecoding++.

``attention_async(q, k, v) {phi, lo, hi, scale, causal, window, chunk}`` computes exactly what
``attention`` computes (same shapes, masking, GQA), by FlashDecoding++'s split-KV *asynchronous*
softmax (Hong et al., MLSys 2024):

1. logits ``x = scale * q . k`` (float32) over the visible keys;
2. keys are cut into chunks of ``chunk``; each chunk accumulates, independently and with the
   *unified* max ``phi`` instead of its own running max, ``S_c = sum e^(x - phi)``,
   ``O_c = sum e^(x - phi) v`` and records ``M_c = max x`` (float32);
3. a row is *in range* when every chunk has ``M_c - phi <= hi`` (no overflow) and the row's
   largest logit has ``max_c M_c - phi >= lo`` (its mass does not underflow); an in-range row is
   ``sum_c O_c / sum_c S_c``, one division, no rescaling between chunks;
4. any row out of range is recomputed with the synchronized softmax (``attention``'s reference):
   the fallback. The result therefore equals ``attention`` up to rounding for every input.

``phi``, ``lo`` and ``hi`` come from the ``async-softmax`` pass (:mod:`llmc.passes.async_softmax`),
which calibrates the range of logits per model and declines when it is too wide.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from llmc.errors import IRError

# Imported from ops.py's bottom line: ops.py is fully initialised by then.
from llmc.ir.ops import (
    AttentionAttrs,
    _attention_cost,
    _attention_infer,
    _attention_ref,
    attention_mask,
    defop,
)

NEG = -3.0e38  # the kernels' finite "minus infinity" for a chunk with no visible key


@dataclass(frozen=True)
class AsyncAttentionAttrs:
    """``attention`` plus the unified max ``phi``, the safe range ``[lo, hi]`` of ``x - phi``
    and the split-KV ``chunk`` length (see the module docstring)."""

    phi: float
    lo: float
    hi: float
    scale: float = 0.0
    causal: bool = True
    window: int = 0
    chunk: int = 64

    def __post_init__(self) -> None:
        if not (self.lo < self.hi):
            raise IRError(f"attention_async: need lo < hi, got [{self.lo}, {self.hi}]")
        if self.chunk < 1:
            raise IRError(f"attention_async: chunk must be >= 1, got {self.chunk}")
        for name in ("phi", "lo", "hi"):
            if not math.isfinite(getattr(self, name)):
                raise IRError(f"attention_async: {name} must be finite")

    def sync(self) -> AttentionAttrs:
        return AttentionAttrs(scale=self.scale, causal=self.causal, window=self.window)


@dataclass
class FallbackCounter:
    rows: int = 0
    fallback_rows: int = 0

    @property
    def rate(self) -> float:
        return self.fallback_rows / self.rows if self.rows else 0.0


_COUNTERS: list[FallbackCounter] = []


@contextlib.contextmanager
def count_fallbacks() -> Iterator[FallbackCounter]:
    """Count rows computed by the fallback while the reference runs (passes and tests use it)."""
    c = FallbackCounter()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def async_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: AsyncAttentionAttrs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and the ``[b, h, s]`` mask of rows that took the asynchronous path."""
    b, h, s, d = q.shape
    kvh, t = k.shape[1], k.shape[2]
    if h != kvh:
        k = k.repeat_interleave(h // kvh, dim=1)
        v = v.repeat_interleave(h // kvh, dim=1)
    scale = a.scale or 1.0 / math.sqrt(d)
    x = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2)) * scale
    mask = attention_mask(s, t, a.causal, a.window, q.device)
    if mask is None:
        mask = torch.ones(s, t, dtype=torch.bool, device=q.device)
    nc = (t + a.chunk - 1) // a.chunk
    pad = nc * a.chunk - t
    vis = torch.nn.functional.pad(mask, (0, pad), value=False).expand(b, h, s, nc * a.chunk)
    xp = torch.nn.functional.pad(x, (0, pad), value=0.0)
    e = torch.where(vis, torch.exp(xp - a.phi), torch.zeros((), device=q.device))
    dv = v.shape[-1]
    vf = torch.nn.functional.pad(v.to(torch.float32), (0, 0, 0, pad))
    e_c = e.reshape(b, h, s, nc, a.chunk)
    s_c = e_c.sum(-1)  # [b, h, s, nc]
    o_c = torch.einsum("bhscj,bhcjd->bhscd", e_c, vf.reshape(b, h, nc, a.chunk, dv))
    m_c = torch.where(vis, xp, torch.full((), NEG, device=q.device)).reshape(b, h, s, nc, a.chunk)
    m_c = m_c.amax(-1)
    overflow = (m_c - a.phi > a.hi).any(-1)
    underflow = m_c.amax(-1) - a.phi < a.lo
    ok = ~(overflow | underflow)
    fast = o_c.sum(3) / s_c.sum(3)[..., None]
    out = fast.to(q.dtype)
    if not bool(ok.all()):
        sync = _attention_ref([q, k, v], a.sync(), None)
        out = torch.where(ok[..., None], out, sync)
    for c in _COUNTERS:
        c.rows += ok.numel()
        c.fallback_rows += int((~ok).sum())
    return out, ok


def _async_ref(args: list[torch.Tensor], a: AsyncAttentionAttrs, rt: Any) -> torch.Tensor:
    return async_attention(args[0], args[1], args[2], a)[0]


defop(
    "attention_async",
    "LLM",
    _attention_infer,
    _async_ref,
    _attention_cost,
    attrs=AsyncAttentionAttrs,
    inputs=(3, 3),
    doc="attention by the asynchronous (unified-max) split-KV softmax, with fallback.",
)
