"""The Interpreter class: its per-node hook (observe and replace, regions included), slices of a
graph on caller-held values (calibration), partial evaluation (constant folding)."""

from __future__ import annotations

import pytest
import torch

from llmc.errors import IRError
from llmc.ir import GraphBuilder, TensorType
from llmc.runtime.interp import Interpreter, run
from tests.ir.examples import with_cond
from tests.lm_fixtures import toy_lm


def _chain():
    b = GraphBuilder("chain")
    x = b.input("x", TensorType((2, 3), "f32"))
    w = b.param("w", torch.arange(9.0).reshape(3, 3))
    y = b.emit("linear", x, w, name="y")
    z = b.emit("relu", b.emit("neg", y, name="n"), name="z")
    b.output(b.emit("add", z, y, name="out"))
    return b.finish()


def test_hook_sees_inputs_and_output_of_every_node():
    g = _chain()
    x = torch.randn(2, 3)
    seen = []

    def hook(n, ins, out):
        seen.append((n.out.name, [tuple(t.shape) for t in ins], out.clone()))

    (out,) = Interpreter(g, hook=hook).run({"x": x})
    assert [s[0] for s in seen] == ["w", "y", "n", "z", "out"]
    assert seen[1][1] == [(2, 3), (3, 3)]  # linear(x, w)
    y = x @ torch.arange(9.0).reshape(3, 3).T
    torch.testing.assert_close(seen[1][2], y)
    torch.testing.assert_close(out, torch.relu(-y) + y)


def test_hook_replacement_reaches_later_nodes_and_outputs():
    g = _chain()
    x = torch.randn(2, 3)

    def zero_y(n, ins, out):
        return torch.zeros_like(out) if n.out.name == "y" else None

    (out,) = Interpreter(g, hook=zero_y).run([x])
    assert not out.any()
    # the same through run(hook=...), and the older two-argument hooks run after it
    calls = []
    (out2,) = run(g, [x], hook=zero_y, hooks=[lambda n, r: calls.append((n.out.name, r.sum()))])
    assert not out2.any() and dict(calls)["y"] == 0


@pytest.mark.parametrize("flag", [True, False])
def test_hook_runs_inside_regions(flag):
    g = with_cond()
    region_nodes = {
        n.out.name for _, n in g.walk() if n not in g.nodes
    }  # nodes that only regions hold
    names = []
    x = torch.rand(3, 4) + 0.1
    Interpreter(g, hook=lambda n, ins, out: names.append(n.out.name)).run(
        {"x": x, "y": x, "flag": torch.tensor(flag)}
    )
    assert set(names) & region_nodes


def test_run_nodes_reads_caller_values_and_keeps_what_is_asked():
    g = _chain()
    interp = Interpreter(g)
    x = torch.randn(2, 3)
    args = interp.bind({"x": x})
    first, rest = g.nodes[:2], g.nodes[2:]
    y = g.nodes[1].out
    held = interp.run_nodes(first, {id(g.inputs[0]): args[0]}, keep=lambda v: v is y)
    assert list(held) == [id(y)]  # w was freed after its last use
    out = interp.run_nodes(rest, held, keep=lambda v: v is g.outputs[0])
    torch.testing.assert_close(out[id(g.outputs[0])], run(g, [x])[0])
    with pytest.raises(IRError, match="%y \\(read by %n\\) has no value here"):
        interp.run_nodes(rest, {}, keep=lambda v: False)


def test_partial_evaluates_what_is_known():
    g = _chain()
    got = Interpreter(g).partial({}, can_run=lambda n: True)
    assert set(got) == {id(g.nodes[0].out)}  # only the param: everything else needs %x


def test_interpreter_on_lm_matches_run():
    g = toy_lm(layers=2)
    ids = torch.tensor([[1, 2, 3]])
    inputs = [ids, torch.arange(3)[None]] + [torch.zeros(1, 2, 0, 8)] * 4
    count = []
    outs = Interpreter(g, hook=lambda n, ins, out: count.append(1)).run(inputs)
    ref = run(g, inputs)
    assert len(count) == len(g.nodes)
    for a, b in zip(outs, ref, strict=True):
        assert a.equal(b)
