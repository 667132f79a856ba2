"""The blocked prefill path of the CPU attention kernel (:func:`attention_sync`: ``BLOCKS``
blocks of ``ROWS`` query rows x ``KEY_TILE`` keys per step, row-vectorized logits, vector exp)
against the reference: sequence lengths and key counts that are not multiples of the block or
the tile, GQA, sliding windows, soft-capping, a past (chunked prefill: more keys than rows, cache
capacity past the valid keys), float16 operands, the one-row (decode, split-K) path, block, tile
and split sizes; and through the compile path against the reference interpreter."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from llmc.backends.kernels import attention_cpu as A
from llmc.ir import GraphBuilder, TensorType, sym
from llmc.ir.ops import AttentionAttrs, _attention_ref


def _target():
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


@functools.cache
def _kernel(h, kvh, d, dtype, scale, causal, window, softcap, rows, tile, splits, blocks):
    """The compiled kernel, built once per configuration (the sequence lengths and pasts are
    run-time arguments: the cases of one configuration share a build)."""
    import tvm

    f = A.attention_sync(
        h,
        kvh,
        d,
        dtype,
        scale,
        causal,
        window,
        softcap,
        rows=rows,
        key_tile=tile,
        splits=splits,
        blocks=blocks,
    )
    return tvm.compile(tvm.IRModule({"main": f}), target=_target())["main"]


def _check(
    h,
    kvh,
    d,
    s,
    past,
    causal,
    window,
    softcap=0.0,
    dtype="float32",
    b=2,
    rows=A.ROWS,
    tile=A.KEY_TILE,
    splits=A.SPLITS,
    blocks=A.BLOCKS,
):
    import tvm

    scale = d**-0.5
    fn = _kernel(h, kvh, d, dtype, scale, causal, window, softcap, rows, tile, splits, blocks)
    t = past + s
    gen = torch.Generator().manual_seed(h * 1000 + s * 10 + past)
    q = torch.randn(b, h, s, d, generator=gen) * 2
    # a cache of capacity t + 5: the keys past the valid ones are garbage the kernel must not read
    k = torch.randn(b, kvh, t + 5, d, generator=gen) * 2
    v = torch.randn(b, kvh, t + 5, d, generator=gen)
    k[:, :, t:] = float("nan")
    v[:, :, t:] = float("nan")
    tdt = torch.float16 if dtype == "float16" else torch.float32
    q, k, v = (x.to(tdt) for x in (q, k, v))
    out = tvm.runtime.tensor(np.zeros((b, h, s, d), dtype))
    fn(*[tvm.runtime.tensor(x.numpy()) for x in (q, k, v)], t, out)
    attrs = AttentionAttrs(causal=causal, window=window, softcap=softcap, scale=scale)
    want = _attention_ref([x.float() for x in (q, k[:, :, :t], v[:, :, :t])], attrs, None)
    got = torch.from_numpy(out.numpy()).float()
    tol = 2e-3 if dtype == "float16" else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("s,past", [(37, 0), (1, 0), (5, 0), (33, 40), (70, 3), (4, 64)])
def test_blocked_matches_reference_causal_gqa(s, past):
    _check(8, 2, 64, s, past, causal=True, window=0)


@pytest.mark.parametrize("window", [1, 5, 40])
def test_blocked_sliding_window(window):
    _check(4, 4, 32, 45, 20, causal=True, window=window)


def test_blocked_non_causal_odd_head_dim():
    _check(4, 2, 12, 23, 9, causal=False, window=0)
    _check(2, 1, 5, 9, 0, causal=False, window=3)


def test_blocked_softcap_and_float16():
    _check(4, 2, 16, 29, 7, causal=True, window=6, softcap=1.5)
    _check(4, 2, 64, 35, 0, causal=True, window=0, dtype="float16")


def test_block_sizes():
    for rows, tile, blocks in ((1, 32, 1), (3, 24, 3), (8, 6, 4), (2, 8, 2)):
        _check(4, 2, 16, 19, 2, causal=True, window=0, rows=rows, tile=tile, blocks=blocks)
    with pytest.raises(ValueError, match="key_tile 0"):
        A.attention_sync(4, 2, 16, "float32", 0.25, True, 0, key_tile=0)


def test_compile_path_matches_interpreter():
    """A prefill chunk of 37 rows on a 40-key past (GQA, a window), compiled by the CPU
    pipeline, against the reference interpreter."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.runtime.interp import run
    from llmc.targets import get_target

    h, kvh, d = 8, 2, 64
    gb = GraphBuilder("att")
    B, S, T = sym("batch"), sym("seq"), sym("past")
    q = gb.input("q", TensorType((B, h, S, d), "f32"))
    k = gb.input("k", TensorType((B, kvh, T, d), "f32"))
    v = gb.input("v", TensorType((B, kvh, T, d), "f32"))
    with gb.scope("model.attn", "attn"):
        o1 = gb.emit("attention", q, k, v, causal=True, window=0)
        o2 = gb.emit("attention", q, k, v, causal=True, window=19, softcap=2.0)
    gb.output(o1, o2)
    g = gb.finish()
    g.meta = {"num_layers": 0}
    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(g, t)
    assert lowered.rules_used.get("attention.kernel") == 4  # 2 attentions x prefill, decode
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    gen = torch.Generator().manual_seed(3)
    args = [
        torch.randn(2, h, 37, d, generator=gen),
        torch.randn(2, kvh, 77, d, generator=gen),
        torch.randn(2, kvh, 77, d, generator=gen),
    ]
    outs = fn(*[tvm.runtime.tensor(x.numpy()) for x in args])
    for o, want in zip(outs, run(g, args), strict=True):
        torch.testing.assert_close(torch.from_numpy(o.numpy()), want, rtol=1e-5, atol=1e-5)
