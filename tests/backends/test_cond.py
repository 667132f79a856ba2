"""``cond`` on the TVM targets: a Relax ``If`` outside the dataflow blocks, so that the branch not
taken costs nothing at run time (docs/backends.md, "Control flow").

Differential tests of the CPU artifact against the interpreter (the oracle) for the toy LM with
each FFN block behind a ``cond`` (:mod:`tests.backends.cond_lm`), with both branch outcomes,
mixed over decode steps and layers; the IR's example graph with a predicate given as an input, a
param read inside a region and a nested ``cond``; cross-compilation for h100 and mi300x.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmc.backends.vm_plan import workspace_args
from llmc.errors import IRError
from tests.backends.cond_lm import cond_lm, ffn_decisions
from tests.backends.conftest import compile_graph, interp_run

#: cos threshold at which both layers of the toy LM mix taken and skipped FFNs over the decode
#: steps of the token stream below (found with the interpreter; the tests assert the mix)
COS_THRESHOLD = 0.4


def _flat(past):
    return [t for kv in past for t in kv]


@pytest.fixture(scope="module")
def cond_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    graphs = {how: cond_lm(how, COS_THRESHOLD) for how in ("parity", "cos")}
    return graphs, {how: compile_graph(g, "cpu", root / how) for how, g in graphs.items()}


@pytest.fixture(scope="module")
def cond_runners(cond_artifacts):
    from llmc.runtime.tvm_runner import load

    return {how: load(path) for how, path in cond_artifacts[1].items()}


def _decode_against_interp(graph, runner, steps: int, batch: int = 1, prompt: int = 5):
    """Prefill then ``steps`` decode steps through the artifact, each compared with the
    interpreter on the interpreter's own cache; returns the FFN decisions per step."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (batch, prompt), generator=gen)
    pos = torch.arange(prompt).expand(batch, prompt).contiguous()
    past = runner.empty_past(batch)
    logits, present = runner.forward(ids, pos, past)
    ref = interp_run(graph, [ids, pos, *_flat(past)])
    torch.testing.assert_close(logits, ref[0], rtol=1e-4, atol=1e-4)
    ref_past = ref[1:]
    seen = []
    for step in range(steps):
        ids1 = torch.randint(0, 300, (batch, 1), generator=gen)
        pos1 = torch.full((batch, 1), prompt + step)
        args = [ids1, pos1, *ref_past]
        seen.append(ffn_decisions(graph, args))
        logits, present = runner.forward(ids1, pos1, present)
        ref = interp_run(graph, args)
        ref_past = ref[1:]
        torch.testing.assert_close(logits, ref[0], rtol=1e-4, atol=1e-4)
        for got, want in zip(_flat(present), ref_past):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    return seen


def test_cond_lowers_to_if_and_layers_stay_outlined(cond_artifacts):
    for path in cond_artifacts[1].values():
        backend = json.loads((Path(path) / "manifest.json").read_text())["backend"]
        assert backend["lowering_rules"]["cond"] == 2  # one per entry: the layer is outlined once
        # prefill_last shares the prefill's layer function (and so its branch function)
        assert backend["layer_functions"] == {"prefill_layer": 4, "decode_layer": 2}
        # the FFN branch is one function per entry, called from the layer function; the skip
        # branch returns its operand and is no function at all
        fns = backend["branch_functions"]
        assert sorted(fns.values()) == [1, 1] and all(f.endswith("_then") for f in fns)


def test_parity_alternates_and_matches_interpreter(cond_artifacts, cond_runners):
    """Predicate from the positions: decode steps alternate FFN taken / skipped."""
    seen = _decode_against_interp(cond_artifacts[0]["parity"], cond_runners["parity"], 4)
    assert seen == [[False, False], [True, True], [False, False], [True, True]]


def test_cos_threshold_mixes_and_matches_interpreter(cond_artifacts, cond_runners):
    """FFN-SkipLLM-style cosine-similarity predicate: taken and skipped in each layer across
    steps, and in different layers within one step."""
    seen = _decode_against_interp(cond_artifacts[0]["cos"], cond_runners["cos"], 8)
    for layer in range(2):
        assert {step[layer] for step in seen} == {True, False}, seen
    assert any(step[0] != step[1] for step in seen), seen


def test_batch_rows_that_disagree_take_one_decision(cond_artifacts, cond_runners):
    """The predicate is a bool scalar: the graph reduces the rows' tests to one decision (here
    "run the FFN if any row wants it"); the artifact follows the same decision."""
    graph = cond_artifacts[0]["cos"]
    _decode_against_interp(graph, cond_runners["cos"], 3, batch=3)
    # a [batch]-shaped predicate is not a cond: the shape rule refuses it
    from llmc.ir import GraphBuilder, TensorType, sym

    b = GraphBuilder("rows")
    x = b.input("x", TensorType((sym("batch"), 4), "f32"))
    rows = b.emit("gt", b.emit("reduce_sum", x, dims=(1,)), b.emit("constant", value=0.0))
    then_b, (a,) = b.region(x.type)
    then_b.output(a)
    else_b, (c,) = b.region(x.type)
    else_b.output(else_b.emit("neg", c))
    with pytest.raises(IRError, match="predicate must be a bool scalar"):
        b.emit("cond", rows, x, then_branch=then_b.finish(), else_branch=else_b.finish())


def test_always_taken_equals_the_toy_lm(toy_runner, tmp_path):
    """A predicate that is always true gives the plain toy LM (same weights, same kernels)."""
    art = compile_graph(cond_lm("always"), "cpu", tmp_path / "always")
    from llmc.runtime.tvm_runner import load

    runner = load(art)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    pos = torch.arange(6)[None]
    got, present = runner.forward(ids, pos, runner.empty_past(1))
    want, present_toy = toy_runner.forward(ids, pos, toy_runner.empty_past(1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    one, p1 = torch.tensor([[2]]), torch.tensor([[6]])
    torch.testing.assert_close(
        runner.forward(one, p1, present)[0],
        toy_runner.forward(one, p1, present_toy)[0],
        rtol=0,
        atol=1e-5,
    )


def test_predicate_input_nested_cond_and_region_param():
    """The IR's example: a predicate given as an input, one computed in the graph, a param read
    inside a region and a nested cond; both entries, the input and the computed predicate
    each way, against the interpreter."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.backends.layouts import get_layout
    from llmc.targets import get_target
    from tests.ir.examples import with_cond

    g = with_cond()
    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(g, t)
    assert lowered.control_flow == 2 * 3  # three conds (one nested), two entries
    vm = VirtualMachine(ex, tvm.cpu())
    by_name = {w.name: w for w in lowered.weights}
    for entry in ("prefill", "decode"):
        ws = [
            get_layout(by_name[n].layout).transform(g.params[by_name[n].param], by_name[n].dtype)
            for n in lowered.entry_weights[entry]
        ]
        ws = [tvm.runtime.tensor(w.contiguous().numpy()) for w in ws]
        ws += workspace_args(vm, lowered.workspaces, entry)
        gen = torch.Generator().manual_seed(1)
        rows = 1 if entry == "decode" else 3
        for flag in (True, False):
            for sign in (1.0, -1.0):  # the computed (outer) predicate true / false
                x = torch.randn(rows, 4, generator=gen).abs() * sign
                y = torch.randn(rows, 4, generator=gen)
                f = torch.tensor(flag)
                args = [tvm.runtime.tensor(a.numpy()) for a in (x, y, f)]
                got = torch.from_numpy(vm[entry](*args, *ws)[0].numpy())
                torch.testing.assert_close(got, interp_run(g, [x, y, f])[0])


@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_cond_lm_cross_compiles(target, tmp_path):
    from llmc.backends import elfcheck
    from llmc.backends.toolchain import ToolchainError

    try:
        art = compile_graph(cond_lm("cos", COS_THRESHOLD), target, tmp_path / target)
    except ToolchainError as e:
        pytest.skip(str(e))
    backend = json.loads((art / "manifest.json").read_text())["backend"]
    assert backend["lowering_rules"]["cond"] == 2
    blob = (art / "model.so").read_bytes()
    if target == "h100":
        cubins = elfcheck.find_cubins(blob)
        names = {k.removesuffix("_kernel") for c in cubins for k in c.kernels}
    else:
        (co,) = elfcheck.find_code_objects(blob)
        names = {k.removesuffix("_kernel") for k in co.kernels}
    assert set(backend["kernels"]) <= names  # the FFN kernels inside the branch are device code


def _run_vm(graph, args, **pipeline_overrides):
    """Compile ``graph`` for the CPU (the pipeline's attributes overridden) and run ``prefill``."""
    import copy

    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends import pipeline_for
    from llmc.backends.layouts import get_layout
    from llmc.targets import get_target

    t = get_target("cpu")
    pipeline = copy.copy(pipeline_for(t))
    for k, v in pipeline_overrides.items():
        setattr(pipeline, k, v)
    ex, lowered, _ = pipeline.compile(graph, t)
    by_name = {w.name: w for w in lowered.weights}
    ws = [
        get_layout(by_name[n].layout).transform(graph.params[by_name[n].param], by_name[n].dtype)
        for n in lowered.entry_weights["prefill"]
    ]
    fn = VirtualMachine(ex, tvm.cpu())["prefill"]
    outs = fn(
        *[tvm.runtime.tensor(a.numpy()) for a in args],
        *[tvm.runtime.tensor(w.contiguous().numpy()) for w in ws],
    )
    return [torch.from_numpy(outs[i].numpy()) for i in range(len(graph.outputs))], lowered


def test_branch_needing_sizes_its_inputs_do_not_bind():
    """A branch whose types use ``past`` and ``seq`` while its input is ``[batch, past + seq,
    8]``: the branch function takes them as a ``Shape`` argument."""
    from llmc.ir import GraphBuilder, TensorType, sym

    B, S, P = sym("batch"), sym("seq"), sym("past")
    b = GraphBuilder("sizes")
    x = b.input("x", TensorType((B, S, 8), "f32"))
    cache = b.input("cache", TensorType((B, P, 8), "f32"))
    flag = b.input("flag", TensorType((), "bool"))
    allx = b.emit("concat", cache, x, dim=1)
    then_b, (a,) = b.region(allx.type)
    new = then_b.emit("slice", a, dim=1, start=P)
    then_b.output(then_b.emit("mul", new, new))
    else_b, (c,) = b.region(allx.type)
    else_b.output(else_b.emit("slice", c, dim=1, start=P))
    b.output(b.emit("cond", flag, allx, then_branch=then_b.finish(), else_branch=else_b.finish()))
    g = b.finish()
    g.meta = {"num_layers": 0}
    for flag_v in (True, False):
        args = [torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.tensor(flag_v)]
        (got,), lowered = _run_vm(g, args)
        torch.testing.assert_close(got, interp_run(g, args)[0])
    assert len(lowered.branch_functions) == 4  # both arms are functions, in both entries


def test_inline_branches_match_and_outlined_branches_dedupe():
    """``cond_branches="inline"`` (the branch lowered into the If, unfused) computes the same;
    without layer outlining, the layers' identical FFN branches share one function."""
    g = cond_lm("parity")
    gen = torch.Generator().manual_seed(3)
    args = [torch.randint(0, 300, (1, 4), generator=gen), torch.arange(4)[None]]
    args += [torch.zeros(1, 2, 0, 8) for _ in range(4)]
    want = interp_run(g, args)
    got, lowered = _run_vm(g, args, cond_branches="inline", kv_in_place=False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    assert lowered.branch_functions == {}
    got, lowered = _run_vm(g, args, outline_layers=False, kv_in_place=False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    # decode's: 2 calls; prefill's: 4 (prefill_last fixes the same sizes and calls it too)
    assert sorted(lowered.branch_functions.values()) == [2, 4]
