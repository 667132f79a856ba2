"""The CPU attention kernels across head sizes: the split q.k accumulator (8, 4, 2 or 1 partial
sums, :func:`llmc.backends.kernels.attention_cpu.dot_lanes`) must give the same attention for
every ``head_dim``, causal or not, windowed or not, synchronized and asynchronous."""

from __future__ import annotations

import pytest
import torch

from llmc.backends.kernels.attention_cpu import dot_lanes
from llmc.ir import GraphBuilder, TensorType, sym
from llmc.ir.ops import AttentionAttrs, _attention_ref

H, KVH = 4, 2


def _graph(d: int, causal: bool, window: int):
    b = GraphBuilder("att")
    B, S, T = sym("batch"), sym("seq"), sym("past")
    q = b.input("q", TensorType((B, H, S, d), "f32"))
    k = b.input("k", TensorType((B, KVH, T, d), "f32"))
    v = b.input("v", TensorType((B, KVH, T, d), "f32"))
    with b.scope("model.attn", "attn"):
        o1 = b.emit("attention", q, k, v, causal=causal, window=window)
        o2 = b.emit(
            "attention_async",
            q,
            k,
            v,
            causal=causal,
            window=window,
            phi=0.0,
            lo=-8.0,
            hi=8.0,
            chunk=16,
        )
    b.output(o1, o2)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def test_dot_lanes():
    assert [dot_lanes(d) for d in (64, 128, 12, 6, 5, 1)] == [8, 8, 4, 2, 1, 1]


@pytest.mark.parametrize("d", [64, 12, 6, 5])
@pytest.mark.parametrize("causal,window", [(True, 0), (False, 0), (True, 3)])
def test_kernels_match_reference_for_any_head_dim(d, causal, window):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(_graph(d, causal, window), t)
    assert lowered.rules_used.get("attention.kernel") == 2  # the kernel, not the TE fallback
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    gen = torch.Generator().manual_seed(d)
    for s, keys in [(1, 37), (5, 21)]:  # a decode row and a prefill chunk on a cache
        q = torch.randn(2, H, s, d, generator=gen)
        k = torch.randn(2, KVH, keys, d, generator=gen)
        v = torch.randn(2, KVH, keys, d, generator=gen)
        want = _attention_ref([q, k, v], AttentionAttrs(causal=causal, window=window), None)
        outs = fn(*[tvm.runtime.tensor(x.numpy()) for x in (q, k, v)])
        for o in outs:
            torch.testing.assert_close(torch.from_numpy(o.numpy()), want, rtol=1e-5, atol=1e-5)
