"""Shared fixtures: the embedded ``tiny`` model compressed by the passes (cached per spec)."""

from __future__ import annotations

import functools

import pytest

from llmc.fpga.arch import load_arch

# A weight buffer small enough that every layer streams several tiles (double buffering and
# the load/compute dependency bits get exercised), large enough for one tile of tiny's layers.
SMALL_WGT = ["buffers.weight_kb=128"]


# Compression recipes (llmc.fpga.compress: the IR formats the passes write, without their
# error measurement, which takes close to a minute per pipeline on tiny).
RECIPES = {
    "dense": [],
    "int4-8of16": [dict(n=8, bits=4, group=64)],
    "int8-4of16": [dict(n=4, bits=8, group=0)],
    "int4-2of16-g88": [dict(n=2, bits=4, group=88)],  # groups straddle 16-blocks (704 = 8 x 88)
    "mixed": [
        dict(n=4, bits=8, group=0, include=("*mlp*",)),
        dict(n=4, bits=4, group=64, include=("*self_attn*",)),
    ],
}


@functools.lru_cache(maxsize=8)
def _tiny(recipe: str):
    from llmc.fpga.compress import compress
    from llmc.frontends import load_model

    g = load_model("tiny").graph
    for kw in RECIPES[recipe]:
        compress(g, **kw)
    return g


@pytest.fixture(scope="session")
def tiny_graph():
    """``tiny(recipe)``: the tiny model compressed by a recipe above (shared, do not mutate)."""
    try:
        _tiny("dense")
    except Exception as e:  # the embedded model is part of the source tree; say why if not
        pytest.skip(f"tiny model unavailable: {e}")
    return _tiny


@pytest.fixture(scope="session")
def u280_small():
    return load_arch("u280", SMALL_WGT)
