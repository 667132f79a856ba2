"""The in-place KV cache of TVM artifacts (llmc.backends.lower, llmc.runtime.tvm_runner): decode
appends into runner-owned buffers, and ``forward`` keeps its functional contract."""

from __future__ import annotations

import torch

from llmc.backends.lower import find_kv_appends
from llmc.ir.graph import Graph, GraphBuilder
from llmc.ir.types import TensorType, sym
from llmc.runtime.tvm_runner import KV_BLOCK, kv_capacity, read_backend
from tests.backends.conftest import interp_run

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _flat(past):
    return [t for kv in past for t in kv]


def _step(lm, graph, tok, pos, past, ref_past):
    ids = torch.tensor([[tok]])
    p = torch.tensor([[pos]])
    logits, present = lm.forward(ids, p, past)
    ref = interp_run(graph, [ids, p, *ref_past])
    torch.testing.assert_close(logits, ref[0], **TOL)
    for got, want in zip(_flat(present), ref[1:]):
        torch.testing.assert_close(got, want, **TOL)
    return present, ref[1:]


def test_manifest_and_kernels(toy_cpu):
    backend = read_backend(toy_cpu)
    kv = backend["kv_cache"]
    assert kv["in_place"] is True
    assert [b["name"] for b in kv["buffers"]] == [v["name"] for v in backend["inputs"][2:]]
    assert all(b["kv_heads"] == 2 and b["head_dim"] == 8 for b in kv["buffers"])
    assert any(k.startswith("kv_append") for k in backend["kernels"])
    assert not any("concat" in k for k in backend["kernels"])  # no cache copy left
    assert backend["lowering_rules"].get("concat.kv_append", 0) > 0


def test_decode_appends_without_copying(toy_graph, toy_runner):
    """Each decode step's present is a view of the same buffers, one key longer; the keys
    already there are not rewritten; every step matches the interpreter."""
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (1, 5))
    pos = torch.arange(5)[None]
    past0 = toy_runner.empty_past(1)
    _, present = toy_runner.forward(ids, pos, past0)
    ref_past = interp_run(toy_graph, [ids, pos, *_flat(past0)])[1:]
    ptrs = [t.data_ptr() for t in _flat(present)]
    first = present[0][0].clone()
    for step in range(4):
        present, ref_past = _step(toy_runner, toy_graph, 7 + step, 5 + step, present, ref_past)
        assert [t.data_ptr() for t in _flat(present)] == ptrs
        assert present[0][0].shape[2] == 6 + step
    torch.testing.assert_close(present[0][0][:, :, :5], first, rtol=0, atol=0)


def test_branching_from_an_older_present_copies(toy_graph, toy_runner):
    """Going on from a present the sequence already left must not clobber the newer one."""
    ids = torch.tensor([[3, 1, 4, 1]])
    pos = torch.arange(4)[None]
    empty = toy_runner.empty_past(1)
    _, p4 = toy_runner.forward(ids, pos, empty)
    ref4 = interp_run(toy_graph, [ids, pos, *_flat(empty)])[1:]
    a5, ref_a = _step(toy_runner, toy_graph, 5, 4, p4, ref4)  # in place
    a5_copy = [t.clone() for t in _flat(a5)]
    b5, _ = _step(toy_runner, toy_graph, 9, 4, p4, ref4)  # from p4 again: a new cache
    assert b5[0][0].data_ptr() != a5[0][0].data_ptr()
    for got, kept in zip(_flat(a5), a5_copy):
        torch.testing.assert_close(got, kept, rtol=0, atol=0)
    _step(toy_runner, toy_graph, 2, 5, a5, ref_a)  # the older branch still decodes right


def test_foreign_past_is_copied_in(toy_graph, toy_runner):
    """A cache from elsewhere (the interpreter's tensors) is accepted and left untouched."""
    ids = torch.tensor([[8, 6, 7]])
    pos = torch.arange(3)[None]
    empty = toy_runner.empty_past(1)
    ref_past = interp_run(toy_graph, [ids, pos, *_flat(empty)])[1:]
    theirs = [(ref_past[2 * i], ref_past[2 * i + 1]) for i in range(len(ref_past) // 2)]
    before = [t.clone() for t in ref_past]
    _step(toy_runner, toy_graph, 5, 3, theirs, ref_past)
    for t, b in zip(ref_past, before):
        torch.testing.assert_close(t, b, rtol=0, atol=0)


def test_cache_grows_past_its_capacity(toy_graph, toy_runner):
    """A sequence longer than the first buffer: the buffers double (one copy) and decoding
    across the boundary matches the interpreter."""
    n = KV_BLOCK - 1
    ids = (torch.arange(n) * 7 % 300)[None]
    pos = torch.arange(n)[None]
    empty = toy_runner.empty_past(1)
    _, present = toy_runner.forward(ids, pos, empty)
    ref_past = interp_run(toy_graph, [ids, pos, *_flat(empty)])[1:]
    assert toy_runner._kv.capacity == KV_BLOCK
    for step in range(3):  # keys 255, 256, 257: the second needs a bigger buffer
        present, ref_past = _step(toy_runner, toy_graph, 11 + step, n + step, present, ref_past)
    assert toy_runner._kv.capacity == 2 * KV_BLOCK
    assert present[0][0].shape[2] == n + 3


def test_capacity_policy():
    assert kv_capacity(1) == KV_BLOCK
    assert kv_capacity(KV_BLOCK) == KV_BLOCK
    assert kv_capacity(KV_BLOCK + 1) == 2 * KV_BLOCK
    assert kv_capacity(KV_BLOCK + 1, KV_BLOCK) == 2 * KV_BLOCK
    assert kv_capacity(5 * KV_BLOCK + 3, 2 * KV_BLOCK) == 6 * KV_BLOCK


def _tiny_lm_graph(extra_use: bool) -> Graph:
    gb = GraphBuilder("kv")
    b, s, past = sym("batch"), sym("seq"), sym("past")
    gb.input("input_ids", TensorType((b, s), "i64"))
    gb.input("positions", TensorType((b, s), "i64"))
    pk = gb.input("past_k_0", TensorType((b, 2, past, 8), "f32"))
    new = gb.input("new_k", TensorType((b, 2, s, 8), "f32"))
    gb.graph.outputs.append(gb.emit("concat", pk, new, dim=2))
    if extra_use:
        gb.graph.outputs.append(gb.emit("neg", pk))
    return gb.graph


def test_find_kv_appends_all_or_nothing():
    g = _tiny_lm_graph(extra_use=False)
    assert len(find_kv_appends(g)) == 1
    assert find_kv_appends(_tiny_lm_graph(extra_use=True)) == {}  # past read elsewhere too


def test_opaque_device_buffers(toy_graph, toy_cpu):
    """On a device torch cannot see (ROCm without a ROCm torch) the presents are opaque views of
    the runner's TVM buffers; generation across the growth boundary, branching and a foreign
    past behave as with torch views. Emulated on the CPU by hiding torch's view of it."""
    from llmc.runtime.lm import InterpLM, generate
    from llmc.runtime.tvm_runner import load

    lm = load(toy_cpu)
    lm._torch_dev = None
    prompt = [5, 17, 42]
    assert generate(lm, prompt, 8).tokens == generate(InterpLM(toy_graph), prompt, 8).tokens
    # across the growth boundary, step by step against the torch-view runner
    ref_lm = load(toy_cpu)
    n = KV_BLOCK - 1
    ids, pos = (torch.arange(n) * 7 % 300)[None], torch.arange(n)[None]
    _, p = lm.forward(ids, pos, lm.empty_past(1))
    _, q = ref_lm.forward(ids, pos, ref_lm.empty_past(1))
    for step in range(3):
        t, tp = torch.tensor([[11 + step]]), torch.tensor([[n + step]])
        a, p = lm.forward(t, tp, p)
        b, q = ref_lm.forward(t, tp, q)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert lm._kv.capacity == 2 * KV_BLOCK
    ids, pos = torch.tensor([[3, 1, 4]]), torch.arange(3)[None]
    _, p = lm.forward(ids, pos, lm.empty_past(1))
    assert type(p[0][0]).__name__ == "_KVView" and p[0][0].shape == (1, 2, 3, 8)
    one, p3 = torch.tensor([[5]]), torch.tensor([[3]])
    a, pa = lm.forward(one, p3, p)
    b, pb = lm.forward(one, p3, p)  # from p again: copied, not clobbered
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert pa[0][0].cache is not pb[0][0].cache
    ref = interp_run(toy_graph, [ids, pos, *_flat(lm.empty_past(1))])[1:]
    foreign = [(ref[2 * i], ref[2 * i + 1]) for i in range(len(ref) // 2)]
    c, _ = lm.forward(one, p3, foreign)
    torch.testing.assert_close(c, a, **TOL)


def test_ragged_cache_is_refused_in_one_line(toy_runner):
    """A compiled model keeps one cache length for every layer (llmc-lm-v1); a cache whose layers
    differ (an llmc-lm-v2 interpreter's) is refused, not copied wrongly."""
    import pytest

    from llmc.ir.structure import LMAbiError

    past = toy_runner.empty_past(1)
    k, v = past[0]
    grown = torch.zeros(k.shape[0], k.shape[1], 3, k.shape[3], dtype=k.dtype)
    past[0] = (grown, grown.clone())
    with pytest.raises(LMAbiError, match="KV cache layers hold \\[0, 3\\] positions"):
        toy_runner.forward(torch.tensor([[1]]), torch.tensor([[3]]), past)
