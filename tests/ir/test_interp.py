"""The reference interpreter: ``cond`` in both branches, freeing after last use, quantized and
sparse params read through their storage format, input handling and hooks."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

import llmc.runtime.interp as interp
from llmc.errors import IRError
from llmc.ir import Graph, GraphBuilder, Param, QuantSpec, SparsitySpec, StorageFormat, TensorType
from llmc.ir.params import dequantize
from llmc.ir.types import sym
from llmc.runtime.interp import run
from tests.hypothesis_profiles import examples
from tests.ir.examples import llama_block, quantized, with_cond
from tests.ir.strategies import concrete_inputs, graphs_with_inputs

# ---------------------------------------------------------------------------------- cond


def _with_cond_expected(x: torch.Tensor, y: torch.Tensor, flag: bool) -> torch.Tensor:
    if x.max() > 0:
        gated = x + y
    else:
        prod = x * 0.5
        gated = -prod if x.sum() < 1.0 else prod
    return -gated if flag else gated


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_runs_the_right_branch(flag: bool, sign: float) -> None:
    g = with_cond()
    x = sign * (torch.rand(3, 4) + 0.1)  # max > 0 iff sign > 0; sum < 1 when negative
    y = torch.randn(3, 4)
    ran: list[str] = []
    (out,) = run(
        g, {"x": x, "y": y, "flag": torch.tensor(flag)}, hooks=[lambda n, r: ran.append(n.out.name)]
    )
    torch.testing.assert_close(out, _with_cond_expected(x, y, flag))
    then_nodes = {n.out.name for n in g.nodes[4].attrs.then_branch.nodes}
    else_nodes = {n.out.name for n in g.nodes[4].attrs.else_branch.nodes}
    taken, skipped = (then_nodes, else_nodes) if sign > 0 else (else_nodes, then_nodes)
    assert taken <= set(ran) and not (skipped & set(ran))


def test_cond_nested_inner_branch() -> None:
    g = with_cond()
    x = torch.full((2, 4), -0.1)  # outer else; sum = -0.8 < 1: inner then (negate)
    (out,) = run(g, {"x": x, "y": x, "flag": torch.tensor(False)})
    torch.testing.assert_close(out, -(x * 0.5))
    x = torch.full((2, 4), -1.0) * torch.tensor([1.0, 1.0, 1.0, -20.0])  # max 20 > 0: then
    (out,) = run(g, {"x": x, "y": x, "flag": torch.tensor(False)})
    torch.testing.assert_close(out, x + x)


# ---------------------------------------------------------------------------------- liveness


def _expected_frees(g: Graph) -> dict[int, set[str]]:
    last: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last[v.name] = i
    outs = {v.name for v in g.outputs}
    frees: dict[int, set[str]] = {}
    for name, i in last.items():
        if name not in outs:
            frees.setdefault(i, set()).add(name)
    return frees


@settings(max_examples=examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs_with_inputs())
def test_freeing_does_not_change_results(case) -> None:
    g, inputs = case
    for graph in [g] + [r for _, n in g.walk() for r in interp.regions_of(n)]:
        got = {i: {v.name for v in vs} for i, vs in interp._last_uses(graph).items()}
        assert got == _expected_frees(graph)
    freed = run(g, inputs)
    real = interp._last_uses
    interp._last_uses = lambda graph: {}
    try:
        kept = run(g, inputs)
    finally:
        interp._last_uses = real
    for a, b in zip(freed, kept, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_values_die_after_their_last_use() -> None:
    b = GraphBuilder("chain")
    x = b.input("x", TensorType((sym("n"),), "f32"))
    a = b.emit("exp", x, name="a")
    c = b.emit("neg", a, name="c")
    d = b.emit("sin", c, name="d")
    e = b.emit("add", d, a, name="e")  # a lives until here
    f = b.emit("cos", e, name="f")
    b.output(f, c)  # c is an output: never freed
    refs: dict[str, weakref.ref] = {}
    dead_at: dict[str, set[str]] = {}

    def hook(node, res):
        gc.collect()
        dead_at[node.out.name] = {k for k, r in refs.items() if r() is None}
        refs[node.out.name] = weakref.ref(res)

    run(b.finish(), [torch.randn(5)], hooks=[hook])
    assert dead_at["d"] == set()
    assert dead_at["e"] == set()  # a is still needed by e, c is an output, d by e
    assert dead_at["f"] == {"a", "d"}


# ---------------------------------------------------------------------------------- params


def test_dequantize_grouped_asymmetric_as_documented() -> None:
    # (qvalue - zero) * scale per group of 2 along the last axis
    p = Param(
        "w",
        TensorType((2, 4), "f32"),
        StorageFormat(QuantSpec(4, group=2, symmetric=False)),
        {
            "qvalue": torch.tensor([[1, 2, 3, 4], [0, 15, 8, 8]], dtype=torch.int8),
            "scale": torch.tensor([[0.5, 2.0], [1.0, 0.25]]),
            "zero": torch.tensor([[1, 0], [8, 8]], dtype=torch.int8),
        },
    )
    want = torch.tensor([[0.0, 0.5, 6.0, 8.0], [-8.0, 7.0, 0.0, 0.0]])
    torch.testing.assert_close(dequantize(p), want)
    torch.testing.assert_close(p.value(), want)


def test_dequantize_per_channel_symmetric_in_logical_dtype() -> None:
    p = Param(
        "w",
        TensorType((2, 3), "f16"),
        StorageFormat(QuantSpec(8)),
        {
            "qvalue": torch.tensor([[-128, 0, 127], [1, 2, 3]], dtype=torch.int8),
            "scale": torch.tensor([[0.5], [2.0]]),
        },
    )
    v = p.value()
    assert v.dtype == torch.float16
    torch.testing.assert_close(
        v, torch.tensor([[-64.0, 0.0, 63.5], [2.0, 4.0, 6.0]], dtype=torch.float16)
    )


def test_value_cache_and_invalidate() -> None:
    p = quantized("w", 4, 8, 4, 4, True, seed=0)
    v1 = p.value()
    assert p.value() is v1
    p.data["qvalue"] = torch.zeros(4, 8, dtype=torch.int8)
    assert p.value() is v1  # cached until invalidated
    p.invalidate()
    assert not p.value().any()


def test_linear_reads_quantized_and_sparse_weights_through_their_format() -> None:
    g = llama_block()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        p = g.params[f"model.layers.0.self_attn.{name}.weight"]
        w = p.value()
        if p.format.quant is not None:
            torch.testing.assert_close(w, dequantize(p))
        if p.format.sparsity is not None:
            s = p.format.sparsity
            nz = (w != 0).reshape(w.shape[0], -1, s.m).sum(-1)
            assert int(nz.max()) <= s.n
    # run: the q projection equals F.linear with the dequantized weight
    inputs = concrete_inputs(g, {"batch": 1, "seq": 3, "past": 2}, seed=1)
    q_node = next(n for n in g.nodes if n.out.name == "q")
    got = {}

    def hook(node, res):
        if node.out.name in ("h", "q"):
            got[node.out.name] = res

    run(g, inputs, hooks=[hook])
    wq = dequantize(g.params["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(got["q"], F.linear(got["h"], wq))
    assert q_node.op == "linear"


def test_storage_bytes() -> None:
    dense = Param.dense("d", torch.zeros(8, 16))
    assert dense.storage_bytes() == 8 * 16 * 4
    q = quantized("q", 8, 16, 4, 8, False, seed=0)
    # 4-bit codes + one f32 scale (its real dtype) and one 4-bit zero per group of 8
    assert q.storage_bytes() == 8 * 16 * 0.5 + 8 * 2 * 4 + 8 * 2 * 0.5


def test_meta_params_cannot_run() -> None:
    g = llama_block()
    p = g.params["model.layers.0.mlp.up_proj.weight"]
    g.params[p.name] = Param(
        p.name, p.type, p.format, {"value": torch.empty(32, 16, device="meta")}
    )
    with pytest.raises(IRError, match="has no data"):
        run(g, concrete_inputs(g, {"batch": 1, "seq": 2, "past": 0}))


def test_sparse_format_keeps_zeros() -> None:
    w = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    p = Param(
        "s",
        TensorType((1, 4), "f32"),
        StorageFormat(None, SparsitySpec("nm", 2, 4, 0.5)),
        {"value": w},
    )
    assert p.value() is w


# ---------------------------------------------------------------------------------- run()


def _tiny() -> Graph:
    b = GraphBuilder("t")
    x = b.input("x", TensorType((sym("n"), 2), "f32"))
    y = b.input("y", TensorType((2,), "f32"))
    b.output(b.emit("add", x, y))
    return b.finish()


def test_inputs_by_name_or_position() -> None:
    g = _tiny()
    x, y = torch.ones(3, 2), torch.tensor([1.0, 2.0])
    (a,) = run(g, {"y": y, "x": x})
    (b,) = run(g, [x, y])
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"x": torch.ones(3, 2)}, "missing graph inputs: \\['y'\\]"),
        ({"x": torch.ones(3, 2), "y": torch.ones(2, dtype=torch.float64)}, "expects f32\\[2\\]"),
        ({"x": torch.ones(3, 3), "y": torch.ones(2)}, "has shape"),
        ({"x": torch.ones(3), "y": torch.ones(2)}, "rank 1"),
    ],
)
def test_bad_inputs(inputs, match) -> None:
    with pytest.raises(IRError, match=match):
        run(_tiny(), inputs)


def test_hooks_can_replace_results() -> None:
    g = _tiny()
    (out,) = run(g, [torch.ones(1, 2), torch.ones(2)], hooks=[lambda n, r: torch.zeros_like(r)])
    assert not out.any()
