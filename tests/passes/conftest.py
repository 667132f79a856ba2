"""Shared fixtures for pass tests: small language models built by hand (no frontend needed)."""

from __future__ import annotations

import pytest
import torch

from llmc.ir import Graph, GraphBuilder, TensorType, sym
from llmc.passes import PassContext
from tests.lm_fixtures import toy_lm


@pytest.fixture
def lm() -> Graph:
    """A 2-layer Llama-shaped LM over the byte vocabulary, every width a multiple of 16."""
    return toy_lm(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)


@pytest.fixture
def ctx() -> PassContext:
    """Small calibration: 8 windows of 64 tokens from the embedded train split."""
    return PassContext(calib_samples=8, calib_seqlen=64, calib_batch=4)


def linear_graph(w: torch.Tensor, name: str = "fc") -> Graph:
    """``y = x @ w.T`` with ``x: f32[batch, in]``; the weight is ``{name}.weight``."""
    b = GraphBuilder("lin")
    x = b.input("x", TensorType((sym("batch"), int(w.shape[1])), "f32"))
    with b.scope(name, "ffn"):
        y = b.emit("linear", x, b.param(f"{name}.weight", w))
    b.output(y)
    return b.finish()


def correlated_inputs(n: int, dim: int, batches: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Activations with strongly unequal, correlated channels (what makes Wanda/GPTQ matter)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    scale = torch.exp(torch.randn(dim, generator=g))
    return [
        (torch.randn(n, dim, generator=g) @ mix + 0.3 * torch.randn(n, dim, generator=g)) * scale
        for _ in range(batches)
    ]
