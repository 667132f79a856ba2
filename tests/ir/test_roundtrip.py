"""The text form round-trips: ``parse(print(g))`` prints identically and is structurally equal.

Golden files (``tests/ir/golden/*.ir``) pin the printed form of hand-built graphs; regenerate them
with ``python -m pytest tests/ir --update-goldens`` or ``LLMC_UPDATE_GOLDENS=1`` after an
intended change of the printer, and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from llmc.errors import ParseError
from llmc.ir import GraphBuilder, Param, TensorType, parse_graph, print_graph, sym, verify
from llmc.ir.compare import graph_diff, graph_equal
from llmc.ir.params import QuantSpec, StorageFormat
from tests.hypothesis_profiles import examples
from tests.ir.examples import GOLDEN_GRAPHS, mlp, with_cond
from tests.ir.strategies import graphs

GOLDEN_DIR = Path(__file__).parent / "golden"
_SETTINGS = settings(
    max_examples=examples(1.5), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------------------- property


@_SETTINGS
@given(graphs())
def test_parse_print_roundtrip(g) -> None:
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert graph_equal(g, g2), graph_diff(g, g2)
    verify(g2)  # parsed params are meta tensors: still a valid graph


@settings(max_examples=examples(0.5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_copy_is_structurally_equal_and_shares_data(g) -> None:
    c = g.copy()
    assert graph_equal(g, c), graph_diff(g, c)
    for name, p in g.params.items():
        assert all(c.params[name].data[k] is t for k, t in p.data.items())


# ---------------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", sorted(GOLDEN_GRAPHS))
def test_golden(name: str, update_goldens: bool) -> None:
    g = GOLDEN_GRAPHS[name]()
    verify(g)
    text = print_graph(g)
    path = GOLDEN_DIR / f"{name}.ir"
    if update_goldens:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with LLMC_UPDATE_GOLDENS=1 to create it"
    want = path.read_text()
    assert text == want, (
        f"printed IR of '{name}' differs from {path}; if the change is intended, regenerate with "
        "LLMC_UPDATE_GOLDENS=1 and review the diff"
    )
    parsed = parse_graph(want)
    assert print_graph(parsed) == want
    assert graph_equal(g, parsed), graph_diff(g, parsed)


def test_goldens_have_no_strays() -> None:
    stray = {p.stem for p in GOLDEN_DIR.glob("*.ir")} - set(GOLDEN_GRAPHS)
    assert not stray, f"golden files without a builder: {sorted(stray)}"


# ---------------------------------------------------------------------------------- graph_equal


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ('gelu(%h) {approximate = "tanh"}', "relu(%h)", "op"),
        ('{approximate = "tanh"}', "", "attribute"),
        ("{eps = 1e-05}", "{eps = 0.001}", "attribute"),
        ("%y = linear(%0,", "%y = linear(%h,", "operand"),
        ("@fc2 #ffn", "@fc3 #ffn", "scope"),
        ("@fc2 #ffn", "@fc2 #attn", "block"),
        ("return %out", "return %y", "output"),
        ("param @fc1.bias : f32[16] dense", "param @fc1.bias : f32[16] quant(bits=8)", "format"),
        ("graph @mlp", "graph @other", "graph name"),
        ("input %x : f32[2, 8]\n", 'meta {"a": 1}\n  input %x : f32[2, 8]\n', "meta"),
    ],
)
def test_graph_diff_finds_each_kind_of_change(old: str, new: str, what: str) -> None:
    text = print_graph(mlp())
    a = parse_graph(text)
    b = parse_graph(_edit(text, old, new))
    diff = graph_diff(a, b)
    assert diff is not None, what
    assert not graph_equal(a, b)


def test_graph_equal_ignores_param_data_and_checks_names() -> None:
    g = mlp()
    h = mlp()
    h.params["fc1.weight"].data["value"] = torch.zeros(16, 8)
    assert graph_equal(g, h)
    renamed = parse_graph(print_graph(g).replace("%h", "%hidden"))
    assert not graph_equal(g, renamed)
    assert "name" in (graph_diff(g, renamed) or "")
    assert graph_equal(g, renamed, names=False)


def test_graph_equal_compares_regions() -> None:
    text = print_graph(with_cond())
    a = parse_graph(text)
    b = parse_graph(_edit(text, "%10 = neg(%inner_then_arg)", "%10 = abs(%inner_then_arg)"))
    assert "then_branch" in (graph_diff(a, b) or "")
    c = parse_graph(_edit(text, "return %inner_else_arg", "return %inner_else_arg\n"))
    assert graph_equal(a, c)


def test_param_type_difference() -> None:
    a = GraphBuilder("p")
    a.param("w", Param("w", TensorType((4, 4), "f32"), StorageFormat(QuantSpec(4))))
    b = GraphBuilder("p")
    b.param("w", Param("w", TensorType((4, 8), "f32"), StorageFormat(QuantSpec(4))))
    assert "type" in (graph_diff(a.finish(), b.finish()) or "")


# ---------------------------------------------------------------------------------- text details


def test_print_omits_default_attributes_and_keeps_symbolic_dims() -> None:
    b = GraphBuilder("t")
    x = b.input("x", TensorType((sym("batch"), sym("past + seq"), 4), "f32"))
    b.output(b.emit("softmax", x, dim=-1), b.emit("slice", x, dim=1, start=sym("past")))
    text = print_graph(b.finish())
    assert "softmax(%x) : f32[batch, past + seq, 4]" in text
    assert 'slice(%x) {dim = 1, start = "past"} : f32[batch, seq, 4]' in text


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), -0.0, 1e-30, 3.0e20, 0.1])
def test_float_attributes_roundtrip_exactly(value: float) -> None:
    b = GraphBuilder("t")
    b.output(b.emit("constant", value=value))
    g = b.finish()
    g2 = parse_graph(print_graph(g))
    got = g2.nodes[0].attrs.value
    assert got == value and str(got) == str(value)


def test_nan_constant_roundtrips() -> None:
    b = GraphBuilder("t")
    b.output(b.emit("constant", value=float("nan")))
    g = b.finish()
    g2 = parse_graph(print_graph(g))
    assert graph_equal(g, g2)


def test_negative_coefficients_roundtrip() -> None:
    b = GraphBuilder("t")
    x = b.input("x", TensorType((sym("seq - past"), sym("2*batch*seq - 1")), "f32"))
    b.output(b.emit("neg", x))
    text = print_graph(b.finish())
    assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("graph @g {\n  return %x\n}\n", "line 2"),
        ("graph @g {\n  input %x : f32[4]\n  %y = nope(%x) : f32[4]\n  return %y\n}\n", "line 3"),
        ("graph @g {\n  input %x : f32[4]\n  %x = neg(%x) : f32[4]\n  return %x\n}\n", "twice"),
        ("graph @g {\n  input %x : q7[4]\n  return %x\n}\n", "line 2"),
        ("graph @g {\n  input %x : f32[4]\n  return %x\n}\ntrailing", "trailing"),
        ("graph @g {\n  %y = neg(%x) : f32[4]\n  return %y\n}\n", "undefined value %x"),
        (
            "graph @g {\n  input %x : f32[4]\n  %y = neg(%x) {bad = 1} : f32[4]\n  return %y\n}\n",
            "attribute",
        ),
    ],
)
def test_parse_errors_name_the_place(text: str, where: str) -> None:
    with pytest.raises(ParseError, match=where):
        parse_graph(text)
