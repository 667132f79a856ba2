"""Attention logit soft-capping (Gemma 2): the ``softcap`` attribute of ``attention``.

Semantics (``x -> softcap * tanh(x / softcap)`` on the scaled logits, before the mask), text
form, cost, validation; the CPU kernel against the reference; the GPU kernels cross-compile; the
asynchronous softmax declines soft-capped attention (graph untouched); FlightLLM refuses it in
one line (tests/test_families_targets.py, Gemma 2 on u280).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llmc.errors import IRError
from llmc.ir import GraphBuilder, TensorType, parse_graph, print_graph, sym
from llmc.ir.ops import AttentionAttrs, _attention_ref
from llmc.ir.registry import get_op

H, KVH, D = 4, 2, 16
CAP = 1.5


def _graph(softcap: float = CAP, window: int = 0):
    b = GraphBuilder("att")
    B, S, T = sym("batch"), sym("seq"), sym("past")
    q = b.input("q", TensorType((B, H, S, D), "f32"))
    k = b.input("k", TensorType((B, KVH, T, D), "f32"))
    v = b.input("v", TensorType((B, KVH, T, D), "f32"))
    with b.scope("model.attn", "attn"):
        o = b.emit("attention", q, k, v, causal=True, window=window, softcap=softcap, scale=0.3)
    b.output(o)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def _qkv(s: int, t: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, H, s, D, generator=gen) * 2
    k = torch.randn(2, KVH, t, D, generator=gen) * 2
    v = torch.randn(2, KVH, t, D, generator=gen)
    return q, k, v


def test_reference_semantics():
    q, k, v = _qkv(5, 9)
    got = _attention_ref([q, k, v], AttentionAttrs(scale=0.3, softcap=CAP), None)
    kk, vv = (x.repeat_interleave(H // KVH, dim=1) for x in (k, v))
    x = q @ kk.transpose(-1, -2) * 0.3
    x = CAP * torch.tanh(x / CAP)
    i = torch.arange(5)[:, None] + 4
    x = x.masked_fill(torch.arange(9)[None, :] > i, -math.inf)
    torch.testing.assert_close(got, torch.softmax(x, -1) @ vv)
    # the cap bites: without it the result differs
    plain = _attention_ref([q, k, v], AttentionAttrs(scale=0.3), None)
    assert (plain - got).abs().max() > 1e-2


def test_attribute_validated_printed_and_costed():
    with pytest.raises(IRError, match="softcap"):
        AttentionAttrs(softcap=-1.0)
    with pytest.raises(IRError, match="softcap"):
        AttentionAttrs(softcap=math.inf)
    g = _graph()
    text = print_graph(g)
    assert "softcap = 1.5" in text
    assert print_graph(parse_graph(text)) == text
    assert "softcap" not in print_graph(_graph(softcap=0.0))  # the default is not printed
    op = get_op("attention")
    n = g.find("attention")[0]
    ins = [TensorType((1, H, 4, D), "f32"), TensorType((1, KVH, 8, D), "f32")] * 1
    ins = [ins[0], ins[1], ins[1]]
    out = TensorType((1, H, 4, D), "f32")
    capped = op.cost(ins, out, n.attrs, [0.0] * 3)
    plain = op.cost(ins, out, dataclasses.replace(n.attrs, softcap=0.0), [0.0] * 3)
    assert capped.flops - plain.flops == 3.0 * H * 4 * 8  # divide, tanh, multiply per logit


@pytest.mark.parametrize("window", [0, 3])
def test_cpu_kernel_matches_reference(window):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(_graph(window=window), t)
    assert lowered.rules_used.get("attention.kernel") == 2  # prefill and decode
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    for s, keys in [(1, 23), (5, 11)]:
        q, k, v = _qkv(s, keys, seed=s)
        a = AttentionAttrs(scale=0.3, window=window, softcap=CAP)
        want = _attention_ref([q, k, v], a, None)
        out = fn(*[tvm.runtime.tensor(x.numpy()) for x in (q, k, v)])
        out = out[0] if isinstance(out, (list, tuple)) or hasattr(out, "__len__") else out
        torch.testing.assert_close(torch.from_numpy(out.numpy()), want, rtol=1e-5, atol=1e-5)


def test_gpu_kernels_cross_compile():
    from llmc.backends import pipeline_for
    from llmc.backends.toolchain import ToolchainError
    from llmc.targets import get_target

    for name in ("h100", "mi300x"):
        t = get_target(name)
        try:
            _, lowered, mod = pipeline_for(t).compile(_graph(), t)
        except ToolchainError as e:
            pytest.skip(str(e))
        assert lowered.rules_used.get("attention.kernel") == 2  # prefill and decode
        text = mod["attention"].script()
        assert "tanh" in text


def test_async_softmax_declines_soft_capped_attention(toy_graph):
    from tests.backends.test_async_softmax import _run_pass

    g = toy_graph.copy()
    for n in g.find("attention"):
        n.attrs = dataclasses.replace(n.attrs, softcap=30.0)
    before = print_graph(g)
    rec = _run_pass(g)
    assert rec["applied"] is False and "soft-cap" in rec["reason"]
    assert print_graph(g) == before
