"""The graph strategies honour their options and reach every construct they promise."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from llmc.ir import Graph, SymDim, all_ops
from llmc.runtime.interp import run
from tests.hypothesis_profiles import examples
from tests.ir.strategies import FEATURES, dims, graphs, graphs_with_inputs


def facts(g: Graph) -> set[str]:
    """What a graph contains: its ops, weight formats and a few shapes of interest."""
    out = {n.op for _, n in g.walk()}
    groups = {n.op: all_ops()[n.op].group for _, n in g.walk()}
    out |= {"layout" for op, grp in groups.items() if grp == "LAYOUT"}
    out |= {"unary" for op, grp in groups.items() if grp == "UNARY"}
    out |= {"guarded unary" for op in groups if op in ("exp", "log", "sqrt", "rsqrt")}
    out |= {"binary" for op in groups if op in ("add", "sub", "mul", "div", "pow", "maximum")}
    out |= {"compare" for op in groups if op in ("lt", "gt", "le", "ge", "eq")}
    for p in g.params.values():
        q, s = p.format.quant, p.format.sparsity
        if q is not None:
            out.add(f"int{q.bits}")
            out.add("asym" if not q.symmetric else "sym")
            out.add("grouped" if q.group else "per-channel")
        if s is not None:
            out.add(s.kind)
        if q is not None:
            out.add("quant")
        if q is not None and s is not None:
            out.add("quant+sparse")
    for graph, n in g.walk():
        if graph is not g and n.op == "cond":
            out.add("nested cond")
        if n.op == "add" and n.inputs[0].type.shape != n.inputs[1].type.shape:
            out.add("broadcast")
        if n.op == "reshape" and -1 in n.attrs.shape:
            out.add("reshape -1")
        if n.op == "attention" and n.inputs[0].type.shape[1] != n.inputs[1].type.shape[1]:
            out.add("GQA")
        if n.op == "attention" and "past" in str(n.inputs[1].type):
            out.add("KV cache")
        if "past + seq" in str(n.type):
            out.add("past + seq")
        if "batch*seq" in str(n.type):
            out.add("batch*seq")
    return out


# Features of one sweep -> facts it must reach.
SWEEPS = {
    "unary": ({"unary"}, {"unary", "guarded unary"}),
    "binary": ({"binary"}, {"binary", "compare", "where", "broadcast", "constant"}),
    "weights": (
        {"linear", "quant", "sparse"},
        {"linear", "int2", "int3", "int4", "int8", "sym", "asym", "grouped", "per-channel"}
        | {"nm", "unstructured", "quant+sparse"},
    ),
    "layout": (
        {"layout"},
        {"reshape", "permute", "concat", "slice", "index_select", "cast", "reshape -1"},
    ),
    "compute": (
        {"norm", "reduce", "matmul"},
        {"rms_norm", "layer_norm", "softmax", "reduce_sum", "reduce_mean", "reduce_max", "matmul"},
    ),
    "llm": (
        {"attention", "rope", "embedding"},
        {"attention", "GQA", "KV cache", "rope", "embedding", "past + seq"},
    ),
    "cond": ({"cond", "unary", "binary"}, {"cond", "nested cond"}),
    "all": (FEATURES, {"cond", "attention", "linear", "quant", "layout"}),
}


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_every_construct_is_reached(sweep: str) -> None:
    """A fixed (derandomized) sweep of generated graphs reaches every promised construct."""
    features, expected = SWEEPS[sweep]
    seen: set[str] = set()

    class Done(Exception):
        pass

    @settings(
        max_examples=examples(5),
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(graphs(features=features))
    def collect(g: Graph) -> None:
        seen.update(facts(g))
        if expected <= seen:
            raise Done  # stop early

    with contextlib.suppress(Done):
        collect()
    assert not expected - seen, f"never generated: {sorted(expected - seen)}"


def test_unknown_feature_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown features"):
        graphs(features={"linaer"})
    with pytest.raises(ValueError, match="unknown features"):
        graphs_with_inputs(features={"linaer"})


@settings(max_examples=examples(0.375), deadline=None)
@given(graphs(symbolic=False))
def test_static_graphs_have_no_symbols(g: Graph) -> None:
    for _, n in g.walk():
        assert not any(isinstance(d, SymDim) for d in n.type.shape), n


@settings(max_examples=examples(0.375), deadline=None)
@given(graphs(symbolic=True, features=FEATURES - {"embedding"}))
def test_symbolic_graphs_have_symbolic_inputs(g: Graph) -> None:
    x = next(v for v in g.inputs if v.name == "x")
    assert x.type.shape[0] == SymDim((((("batch",), 1)),)) and isinstance(x.type.shape[1], SymDim)


@settings(max_examples=examples(0.375), deadline=None)
@given(graphs_with_inputs(features={"linear", "unary"}, max_steps=3))
def test_features_subset_is_respected(case) -> None:
    g, inputs = case
    assert {n.op for _, n in g.walk()} <= {"param", "linear", "constant", "add", "abs", "tanh"} | {
        "neg",
        "relu",
        "sigmoid",
        "silu",
        "sin",
        "cos",
        "gelu",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
    }
    assert all(torch.isfinite(o).all() for o in run(g, inputs))


@settings(max_examples=examples(0.75), deadline=None)
@given(dims())
def test_dims_are_canonical(d) -> None:
    assert isinstance(d, int) or (isinstance(d, SymDim) and all(c for _, c in d.terms))
