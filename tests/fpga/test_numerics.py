"""Per-operation rounding bounds of the accelerator arithmetic (derived in docs/fpga.md).

Each float32 operation is exact up to a factor (1 + d), |d| <= u = 2^-24. A sequence of n such
operations on a term gives a relative error of at most gamma_n = n u / (1 - n u) (Higham,
Thm 3.1); these tests check every SFU function and the sparse DSP chain against float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc.fpga import numerics as nm
from llmc.fpga.funcsim import chain
from tests.hypothesis_profiles import examples

U = 2.0**-24
f32 = np.float32


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def test_exp32_within_two_ulp():
    x = np.linspace(-87.3, 88.7, 400001, dtype=f32)
    rel = np.abs(nm.exp32(x) - np.exp(x.astype(np.float64))) / np.exp(x.astype(np.float64))
    assert rel.max() <= 4 * U
    special = nm.exp32(np.array([np.nan, -np.inf, np.inf, -100, 100, 0], dtype=f32))
    assert np.isnan(special[0]) and list(special[1:]) == [0, np.inf, 0, np.inf, 1]


def test_activations_within_bounds():
    x = np.linspace(-20, 20, 200001, dtype=f32)
    xd = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-xd))
    # silu: exp (4u) + add + divide; relative to |x| * sigmoid
    assert np.max(np.abs(nm.silu32(x) - xd * sig) / np.maximum(np.abs(xd * sig), 1e-30)) <= 8 * U
    assert np.max(np.abs(nm.tanh32(x) - np.tanh(xd))) <= 8 * U
    erf = np.vectorize(math.erf)(xd / math.sqrt(2))
    gelu = 0.5 * xd * (1 + erf)
    # Abramowitz-Stegun 7.1.26 is within 1.5e-7 of erf: |gelu err| <= 0.5 |x| (1.5e-7 + few u)
    assert np.all(np.abs(nm.gelu32(x) - gelu) <= 0.5 * np.abs(xd) * (1.5e-7 + 16 * U) + 4 * U)


@settings(max_examples=examples(), deadline=None)
@given(
    st.integers(1, 3),  # tokens
    st.integers(1, 6),  # rows
    st.sampled_from([16, 48, 64, 176]),  # K
    st.sampled_from([2, 4, 8, 16]),  # nnz
    st.sampled_from([16, 32, 88, 0]),  # group (0: whole row); 88 straddles blocks
    st.integers(0, 2**31 - 1),
)
def test_sparse_chain_within_gamma_bound(m, n, k, nnz, group, seed):
    if group and k % group:
        group = 16
    g = group or k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(f32)
    codes = rng.integers(-8, 8, (n, k // 16, nnz)).astype(f32)
    pos = np.sort(np.stack([rng.permutation(16)[:nnz] for _ in range(n * k // 16)]), -1)
    pos = pos.reshape(n, k // 16, nnz)
    scales = rng.uniform(0.001, 0.1, (n, k // g)).astype(f32)
    got = chain(x, codes, pos, scales, g, np.zeros((m, n), dtype=f32)).astype(np.float64)
    # exact: sum over entries of x[col] * code * scale[col // g]
    col = np.arange(k // 16)[None, :, None] * 16 + pos  # [n, blocks, nnz]
    w = codes.astype(np.float64) * np.take_along_axis(
        scales.astype(np.float64), col.reshape(n, -1) // g, 1
    ).reshape(col.shape)
    terms = x.astype(np.float64)[:, col.reshape(-1)].reshape(m, n, -1) * w.reshape(n, -1)[None]
    exact = terms.sum(-1)
    # every term passes through at most (nnz-1) chain adds + blocks-per-group adds + 1 scale
    # multiply + groups adds <= K + 2 roundings
    bound = gamma(k + 2) * np.abs(terms).sum(-1)
    assert np.all(np.abs(got - exact) <= bound + 1e-30)


@pytest.mark.parametrize("d", [64, 256, 4096])
def test_rmsnorm_within_bound(d):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((8, d)) * 3).astype(f32)
    g = rng.uniform(0.5, 2, d).astype(f32)
    got = nm.rmsnorm32(x, g, 1e-5).astype(np.float64)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + 1e-5) * g
    # sum of squares: gamma_{d+1} (positive terms); /d, +eps, sqrt, 1/.: 4u (halved by the
    # square root for the first group); x*r, *g: 2u
    bound = (gamma(d + 1) / 2 + 6 * U) * np.abs(ref)
    assert np.all(np.abs(got - ref) <= bound + 1e-30)


@pytest.mark.parametrize("t", [16, 144, 2048])
def test_masked_softmax_within_bound(t):
    rng = np.random.default_rng(t)
    s = (rng.standard_normal((4, 3, t)) * 4).astype(f32)
    vis = np.arange(t)[None, None, :] <= (np.arange(3) + t - 3)[None, :, None]
    scale = 1 / math.sqrt(128)
    got = nm.softmax32(s, np.broadcast_to(vis, s.shape), scale).astype(np.float64)
    v = np.where(vis, s.astype(np.float64) * f32(scale), -np.inf)
    m = v.max(-1, keepdims=True)
    e = np.exp(v - m)
    ref = e / e.sum(-1, keepdims=True)
    # e_j: s*scale rounding (u |v|, twice: in v_j and in the max), (v-m) rounding (u |v-m|),
    # exp32 (4u); the sum: gamma_t; the divide: u
    vv = np.where(vis, v, 0)
    rel = (np.abs(np.where(vis, v - m, 0)) + np.abs(vv) + np.abs(m) + 6) * U + gamma(t)
    assert np.all(np.abs(got - ref) <= rel * ref + 1e-30)
    assert np.all(got[~np.broadcast_to(vis, s.shape)] == 0)
