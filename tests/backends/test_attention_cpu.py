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


# (causal, window) variants; one graph per head size holds all of them (one TVM build per head
# size instead of one per variant: the build, not the run, is what costs)
VARIANTS = [(True, 0), (False, 0), (True, 3)]


def _graph(d: int):
    b = GraphBuilder("att")
    B, S, T = sym("batch"), sym("seq"), sym("past")
    q = b.input("q", TensorType((B, H, S, d), "f32"))
    k = b.input("k", TensorType((B, KVH, T, d), "f32"))
    v = b.input("v", TensorType((B, KVH, T, d), "f32"))
    outs = []
    for i, (causal, window) in enumerate(VARIANTS):
        with b.scope(f"model.attn{i}", "attn"):
            outs.append(b.emit("attention", q, k, v, causal=causal, window=window))
            outs.append(
                b.emit(
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
            )
    b.output(*outs)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def test_dot_lanes():
    assert [dot_lanes(d) for d in (64, 128, 12, 6, 5, 1)] == [8, 8, 4, 2, 1, 1]


@pytest.mark.parametrize("d", [64, 12, 6, 5])
def test_kernels_match_reference_for_any_head_dim(d):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(_graph(d), t)
    # every op through the kernel, not the TE fallback
    assert lowered.rules_used.get("attention.kernel") == 2 * len(VARIANTS)
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    gen = torch.Generator().manual_seed(d)
    for s, keys in [(1, 37), (5, 21)]:  # a decode row and a prefill chunk on a cache
        q = torch.randn(2, H, s, d, generator=gen)
        k = torch.randn(2, KVH, keys, d, generator=gen)
        v = torch.randn(2, KVH, keys, d, generator=gen)
        outs = list(fn(*[tvm.runtime.tensor(x.numpy()) for x in (q, k, v)]))
        assert len(outs) == 2 * len(VARIANTS)
        for i, (causal, window) in enumerate(VARIANTS):
            want = _attention_ref([q, k, v], AttentionAttrs(causal=causal, window=window), None)
            for o in outs[2 * i : 2 * i + 2]:  # synchronized, asynchronous
                got = torch.from_numpy(o.numpy())
                torch.testing.assert_close(
                    got,
                    want,
                    rtol=1e-5,
                    atol=1e-5,
                    msg=lambda m, c=causal, w=window: f"causal={c} window={w}: {m}",
                )


def test_no_small_workspace_allocations():
    """The attention kernels' per-task scratch (q row, accumulator, logits tile, running max and
    sum) sits on the stack: no workspace-pool call pair per task for a buffer under 1 KiB."""
    from llmc.backends.kernels.attention_cpu import attention_sync
    from tests.cpu_kernels import small_workspace_allocs

    assert small_workspace_allocs(attention_sync(4, 2, 64, "float32", 0.125, True, 0)) == []
