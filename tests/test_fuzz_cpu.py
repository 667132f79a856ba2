"""Differential fuzzing of the CPU lowering (``llmc.backends``, target ``cpu``) on random
LLM-shaped graphs, optionally compressed by a random pass pipeline first.

Each example compiles one graph (every phase but export) and runs every entry that applies to
the batch (``prefill``; ``decode`` too when ``batch = seq = 1``), with the in-place KV cache when
the lowering keeps it (a buffer with spare capacity and ``kv_len``). The results must match the
interpreter torch-style (:func:`tests.fuzz_common.check_accuracy`): against the same graph in
float64, the compiled error is at most ``K`` times the interpreter's own error in the model's
dtype, plus a per-dtype floor.

TVM builds take seconds, so this test uses a small fraction of the profile's budget
(``tests/hypothesis_profiles.py``): a few examples under ``ci``, tens under ``nightly``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from llmc.backends.vm_plan import workspace_args
from llmc.ir.graph import Graph
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.interp import run
from tests.fuzz_common import check_accuracy, ordered_pipelines
from tests.hypothesis_profiles import examples
from tests.ir.strategies_lm import FORMATS, LMCase, lm_cases, widen, widen_inputs

os.environ.setdefault("TVM_NUM_THREADS", "2")
pytest.importorskip("tvm")


def compile_cpu(graph: Graph) -> tuple[Any, Any]:
    """The VM executable and the lowering's decisions for ``graph`` on the host CPU."""
    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    t = get_target("cpu")
    ex, lowered, _ = pipeline_for(t).compile(graph, t)
    return ex, lowered


def run_compiled(
    ex: Any, lowered: Any, graph: Graph, case: LMCase, entry: str, slack: int
) -> list[torch.Tensor]:
    """Run one compiled entry on ``case.inputs`` the way the artifact runner calls it."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends.layouts import get_layout
    from llmc.backends.lower import find_kv_appends
    from llmc.runtime.tvm_runner import _TVM_DTYPE, _aligned

    dev = tvm.cpu()

    def arg(t: torch.Tensor) -> Any:
        if t.numel() == 0:
            return tvm.runtime.empty(tuple(t.shape), _TVM_DTYPE[t.dtype], dev)
        return tvm.runtime.from_dlpack(_aligned(t))

    env = case.env
    n_past, need = env["past"], env["past"] + env["seq"]
    kv_ids = {id(v) for v in lowered.kv_inputs}
    args = []
    for v in graph.inputs:
        x = case.inputs[v.name]
        if id(v) in kv_ids:  # the runner's buffer: capacity >= past + seq, valid prefix = past
            b, h, _, d = x.shape
            buf = torch.full((b, h, need + slack, d), float("nan"), dtype=x.dtype)
            buf[:, :, :n_past] = x
            x = buf
        args.append(arg(x))
    if lowered.kv_in_place:
        args.append(tvm.runtime.ShapeTuple([n_past]))
    by_name = {wa.name: wa for wa in lowered.weights}
    root = graph.root()
    for name in lowered.entry_weights[entry]:
        wa = by_name[name]
        args.append(arg(get_layout(wa.layout).transform(root.params[wa.param], wa.dtype)))
    vm = VirtualMachine(ex, dev)
    outs = vm[entry](*args, *workspace_args(vm, lowered.workspaces, entry))
    kv_outs = {id(n.out) for n in find_kv_appends(graph).values()} if lowered.kv_in_place else set()
    res = []
    for i, v in enumerate(graph.outputs):
        t = torch.from_dlpack(outs[i]).clone()
        if id(v) in kv_outs:
            t = t[:, :, :need]
        res.append(t)
    return res


@st.composite
def compressed_cases(draw: st.DrawFn) -> tuple[LMCase, str]:
    """A model, and a pass pipeline to compress it with first ("" for none, half the time)."""
    spec = draw(st.one_of(st.just(""), ordered_pipelines()), label="pipeline")
    formats = {"dense", "unstructured"} if spec else FORMATS
    return draw(lm_cases(formats=formats), label="case"), spec


@settings(max_examples=examples(0.1))
@given(cc=compressed_cases(), slack=st.integers(0, 3))
def test_cpu_lowering_matches_the_interpreter(cc: tuple[LMCase, str], slack: int) -> None:
    case, spec = cc
    g = case.graph
    if spec:
        g = g.copy()
        build_pipeline(spec).run(g, PassContext(calib_inputs=[case.inputs]))
    base = run(g, case.inputs)
    ref = run(widen(g), widen_inputs(case.inputs))
    ex, lowered = compile_cpu(g)
    entries = ["prefill"]
    if case.env["batch"] == 1 and case.env["seq"] == 1 and "decode" in lowered.entry_weights:
        entries.append("decode")
    event(f"dtype {case.dtype}")
    event("compressed by a pipeline" if spec else "weights as generated")
    event("KV cache in place" if lowered.kv_in_place else "no in-place KV cache")
    for rule in lowered.rules_used:
        if rule.startswith(("cpu.linear", "linear", "qlinear", "attention", "embedding")):
            event(f"rule {rule}")
    for entry in entries:
        event(f"entry {entry}")
        got = run_compiled(ex, lowered, g, case, entry, slack)
        for i, (a, b, r) in enumerate(zip(got, base, ref, strict=True)):
            what = f"cpu {entry} after '{spec}': output {i} (%{g.outputs[i].name})"
            check_accuracy(a, b, r, case.dtype, what)


@settings(max_examples=examples(0.05))
@given(case=lm_cases())
def test_cpu_artifact_runner_matches_the_interpreter(case: LMCase) -> None:
    """The whole path users take: an atomic artifact (``llmc.compile.compile_model``), loaded by
    the TVM runner, a forward on the case's cache, then one decode step on the runner's own
    cache, each against the interpreter."""
    import tempfile
    from pathlib import Path

    from llmc.compile import Loaded, compile_model
    from llmc.runtime.tvm_runner import load

    g, x, env = case.graph, case.inputs, case.env
    layers = case.arch["layers"] if case.arch["cache"] else 0
    past = [(x[f"past_k_{i}"], x[f"past_v_{i}"]) for i in range(layers)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "art"
        compile_model(Loaded(g, None, "fuzz", "tests"), target="cpu", out=out)
        lm = load(out)
        logits, present = lm.forward(x["input_ids"], x["positions"], past)
        want, ref = run(g, x), run(widen(g), widen_inputs(x))
        got = [logits, *[t for kv in present for t in kv]]
        for i, (a, b, r) in enumerate(zip(got, want, ref, strict=True)):
            check_accuracy(a, b, r, case.dtype, f"runner output {i} (%{g.outputs[i].name})")
        if not layers:
            return
        # one more token per row, on the cache the runner handed back
        n = env["past"] + env["seq"]
        x1 = dict(x)
        x1["input_ids"] = x["input_ids"][:, -1:].flip(0).contiguous()
        x1["positions"] = torch.full((env["batch"], 1), n)
        for i in range(layers):
            x1[f"past_k_{i}"], x1[f"past_v_{i}"] = want[1 + 2 * i], want[2 + 2 * i]
        logits1, _ = lm.forward(x1["input_ids"], x1["positions"], present)
        ref1 = run(widen(g), widen_inputs(x1))[0]
        check_accuracy(logits1, run(g, x1)[0], ref1, case.dtype, "decode logits")
