"""The CPU attention kernel at long-ish context against the reference (the interpreter's
``attention`` semantics, :func:`llmc.ir.ops._attention_ref`): 2K keys, chunked prefill at several
chunk sizes (the chunks' outputs together equal one full prefill), split-K decode (more splits
than keys, one kv head, windows), and the kernel's workspace, which must not grow with the
number of keys (the K transpose it once had was ``batch x kv_heads x head_dim x keys``)."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

from llmc.backends.kernels import attention_cpu as A
from llmc.ir.ops import AttentionAttrs, _attention_ref


@functools.cache
def _kernel(
    h, kvh, d, causal, window, softcap=0.0, splits=A.SPLITS, dtype="float32", min_keys=None
):
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    mk = A.MIN_SPLIT_KEYS if min_keys is None else min_keys
    f = A.attention_sync(
        h, kvh, d, dtype, d**-0.5, causal, window, softcap, splits=splits, min_split_keys=mk
    )
    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    return tvm.compile(tvm.IRModule({"main": f}), target=target)["main"]


def _run(fn, q, k, v, t):
    import tvm

    out = tvm.runtime.tensor(np.zeros(tuple(q.shape), str(q.dtype).removeprefix("torch.")))
    fn(*[tvm.runtime.tensor(x.numpy()) for x in (q, k, v)], t, out)
    return torch.from_numpy(out.numpy()).float()


def _qkv(b, h, kvh, d, s, t, cap, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=gen) * 2
    k = torch.randn(b, kvh, cap, d, generator=gen) * 2
    v = torch.randn(b, kvh, cap, d, generator=gen)
    k[:, :, t:] = float("nan")  # cache slots past the valid keys: never read
    v[:, :, t:] = float("nan")
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _want(q, k, v, t, causal, window, softcap=0.0):
    d = q.shape[-1]
    attrs = AttentionAttrs(causal=causal, window=window, softcap=softcap, scale=d**-0.5)
    return _attention_ref([x.float() for x in (q, k[:, :, :t], v[:, :, :t])], attrs, None)


@pytest.mark.parametrize(
    "causal,window,softcap", [(True, 0, 0.0), (True, 300, 0.0), (False, 0, 2.0)]
)
def test_2k_keys_prefill_and_decode(causal, window, softcap):
    """2,048 keys (GQA 4 query heads on 1 kv head): a 64-row chunk on a 1,984-key past and a
    decode step on 2,047 keys (split 8 ways: one block per 256 keys), in a cache with spare capacity."""
    fn = _kernel(4, 1, 16, causal, window, softcap)
    for s, t in ((64, 2048), (1, 2047)):
        q, k, v = _qkv(1, 4, 1, 16, s, t, t + 9, seed=s + window)
        want = _want(q, k, v, t, causal, window, softcap)
        torch.testing.assert_close(_run(fn, q, k, v, t), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
def test_chunked_prefill_equals_full_prefill(chunk):
    """A 700-token prompt prefilled ``chunk`` rows at a time into one cache (each call sees the
    keys of the chunks before it and its own): the concatenated outputs are the full causal
    attention of the prompt (GQA 8 on 2, a 200-key window for a second head set)."""
    n, h, kvh, d = 700, 8, 2, 32
    q, k, v = _qkv(1, h, kvh, d, n, n, n + 4, seed=chunk)
    for window in (0, 200):
        fn = _kernel(h, kvh, d, True, window)
        got = torch.cat(
            [
                _run(fn, q[:, :, i : i + chunk].contiguous(), k, v, min(i + chunk, n))
                for i in range(0, n, chunk)
            ],
            dim=2,
        )
        torch.testing.assert_close(got, _want(q, k, v, n, True, window), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "splits,h,kvh,d,window,dtype,min_keys",
    [
        (1, 4, 1, 64, 0, "float32", 1),
        (3, 6, 6, 24, 0, "float32", 1),
        (16, 4, 2, 32, 37, "float32", 1),
        (16, 8, 2, 64, 0, "float16", 1),
        (16, 4, 2, 32, 0, "float32", None),  # run-time choice: unsplit up to 256 keys, then 2..4
    ],
)
def test_split_k_decode(splits, h, kvh, d, window, dtype, min_keys):
    """Decode (one query row) with the keys split ``splits`` ways and merged: key counts below,
    at and above the split count (empty splits), one kv head for 4 query heads, 6 on 6, a window
    that starts the visible keys past 0, batch 2, float16 operands; with the default
    ``min_split_keys`` short contexts take the unsplit path (no partials, no merge)."""
    fn = _kernel(h, kvh, d, True, window, splits=splits, dtype=dtype, min_keys=min_keys)
    tdt, tol = (torch.float16, 2e-3) if dtype == "float16" else (torch.float32, 1e-5)
    for t in (1, 2, 16, 17, 129, 1000):
        q, k, v = _qkv(2, h, kvh, d, 1, t, t + 3, seed=t * splits + d, dtype=tdt)
        want = _want(q, k, v, t, True, window)
        torch.testing.assert_close(_run(fn, q, k, v, t), want, rtol=tol, atol=tol)


def _workspace_shapes(func) -> list[str]:
    """The shapes of the kernel's function-level buffers (its per-call workspace; the per-task
    ``sblock_alloc_buffer`` locals are fixed-size registers/stack), as printed TIR."""
    shapes = []
    for line in func.script().splitlines():
        m = re.search(r"(?<!sblock_)alloc_buffer\(\(", line)
        if m:
            depth, end = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            shapes.append(line[m.end() : end - 1])
    return shapes


def test_workspace_does_not_grow_with_keys():
    """No buffer of the kernel has a shape in the key count ``TT``, the cache capacity ``CAP``
    or the row count ``S``: the decode partials are ``batch x heads x splits x (d + 2)``, and the
    per-task locals are sized by the block alone."""
    f = A.attention_sync(32, 8, 128, "float32", 128**-0.5, True, 0)
    shapes = _workspace_shapes(f)
    assert shapes, "the decode partials buffer should be there (the parser found nothing)"
    for shape in shapes:
        assert not re.search(r"\b(TT|CAP|S)\b", shape), shape
    n = 1
    for dim in eval(f"({shapes[0]})", {"B": 1, "T": type("T", (), {"int64": int})}):  # noqa: S307
        n *= int(dim)
    assert n == 32 * A.SPLITS * 130  # heads x splits x (head_dim + max + sum), at batch 1
    for line in f.script().splitlines():
        if "sblock_alloc_buffer" in line:
            assert not re.search(r"\b(TT|CAP|S|B)\b", line.split("=", 1)[1]), line
