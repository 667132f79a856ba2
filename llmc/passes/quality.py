"""Measuring lossy passes: held-out perplexity and next-token agreement with the dense model.

Definitions (the same as ``llmc eval``, :func:`llmc.runtime.lm.evaluate`): the held-out split of
the embedded corpus is cut into non-overlapping windows of ``window`` tokens; each window runs as
one full forward from an empty KV cache; perplexity is ``exp`` of the mean negative
log-likelihood of tokens ``1..window-1`` given their prefix; agreement is the fraction of those
positions where the compressed model's argmax equals the unmodified model's argmax.

Example::

    from llmc.frontends import load_model
    from llmc.passes.quality import evaluate
    g = load_model("tiny").graph
    print(evaluate(g, "gptq:bits=4:group=128"))   # {'perplexity': ..., 'agreement': ..., ...}
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmc.ir.graph import Graph
from llmc.passes.base import PassContext


@dataclass
class Reference:
    """The unmodified model's argmax predictions on the evaluation windows (computed once)."""

    windows: torch.Tensor
    argmax: torch.Tensor  # [n, window - 1]
    perplexity: float
    nll: float


def eval_windows(
    graph: Graph, window: int = 256, max_tokens: int | None = None, tokenizer: Any = None
) -> torch.Tensor:
    from llmc.data import eval_windows as _ew

    max_pos = int(graph.meta.get("max_position_embeddings", window) or window)
    return _ew(min(window, max_pos), max_tokens=max_tokens, tokenizer=tokenizer)


def _forward_logits(graph: Graph, ids: torch.Tensor) -> torch.Tensor:
    from llmc.runtime.lm import InterpLM

    return InterpLM(graph).logits(ids).to(torch.float32)


def score(
    graph: Graph, windows: torch.Tensor, ref: Reference | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Perplexity (and agreement with ``ref``) of ``graph`` on ``windows``."""
    nll = 0.0
    count = 0
    agree = 0
    preds = []
    for i in range(0, windows.shape[0], batch_size):
        chunk = windows[i : i + batch_size]
        logits = _forward_logits(graph, chunk)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = chunk[:, 1:]
        nll -= float(lp.gather(-1, tgt[..., None]).sum())
        count += tgt.numel()
        am = logits[:, :-1].argmax(-1)
        preds.append(am)
        if ref is not None:
            agree += int((ref.argmax[i : i + batch_size] == am).sum())
    mean = nll / max(count, 1)
    out: dict[str, Any] = {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens": count,
        "windows": int(windows.shape[0]),
        "window": int(windows.shape[1]),
    }
    if ref is not None:
        out["agreement"] = agree / max(count, 1)
    out["_argmax"] = torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
    return out


def reference(graph: Graph, windows: torch.Tensor, batch_size: int = 8) -> Reference:
    s = score(graph, windows, None, batch_size)
    return Reference(windows, s["_argmax"], s["perplexity"], s["nll"])


def evaluate(
    graph: Graph,
    passes_spec: str | None = None,
    *,
    recipe: Path | str | None = None,
    window: int = 256,
    max_tokens: int | None = None,
    batch_size: int = 8,
    ctx: PassContext | None = None,
    ref: Reference | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Run ``passes_spec`` (or ``recipe``) on a copy of ``graph`` and measure it.

    Returns ``perplexity``, ``agreement`` (1.0 without passes), ``nll``, ``tokens``,
    ``pass_seconds``, ``weight_bytes`` (stored bytes of all params: quantized weights count their
    codes and scales; N:M-sparse weights count their kept values and positions, unstructured ones dense),
    ``passes`` and ``report`` (the pipeline's records). ``graph`` itself is
    not modified. Pass ``ref`` (from :func:`reference`) to reuse the dense predictions across
    many evaluations.
    """
    from llmc.passes import build_pipeline

    windows = ref.windows if ref is not None else eval_windows(graph, window, max_tokens, tokenizer)
    if ref is None and (passes_spec or recipe):
        ref = reference(graph, windows, batch_size)
    g = graph.copy() if (passes_spec or recipe) else graph
    report: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if passes_spec or recipe:
        pm = build_pipeline(passes_spec, recipe)
        ctx = ctx if ctx is not None else PassContext(tokenizer=tokenizer)
        report = list(pm.run(g, ctx))
    pass_seconds = time.perf_counter() - t0
    out = score(g, windows, ref, batch_size)
    out.pop("_argmax")
    out.setdefault("agreement", 1.0)
    out.update(
        {
            "passes": passes_spec or (f"recipe:{recipe}" if recipe else ""),
            "pass_seconds": pass_seconds,
            "weight_bytes": sum(p.storage_bytes() for p in g.params.values()),
            "report": report,
        }
    )
    return out
