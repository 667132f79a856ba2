"""Differential fuzzing of every registered pass on random LLM-shaped graphs.

Properties (graphs from :func:`tests.ir.strategies_lm.lm_cases`, pipelines from
:mod:`tests.fuzz_common`):

- a pipeline in the documented order, on a model whose weights are neither quantized nor N:M
  sparse yet, succeeds;
  its output verifies, runs in the interpreter with the declared output types and finite values,
  and the input graph (which shares tensors with the copy the passes edited) is unchanged;
- any pipeline on any model either succeeds as above or refuses with a typed ``LlmcError``
  (never an internal exception);
- exact passes (the clean-ups, async-softmax, smoothquant, and pruning at sparsity 0 / FLAP at
  ratio 0) compute what the input graph computed, within the torch-style fp64 tolerance.

Sizes come from the hypothesis profile (``tests/hypothesis_profiles.py``).
"""

from __future__ import annotations

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from llmc.ir import verify
from llmc.ir.types import to_torch_dtype
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.interp import Interpreter, run
from tests.fuzz_common import (
    CLEANUPS,
    any_pipelines,
    check_accuracy,
    finite,
    is_clean_refusal,
    ordered_pipelines,
    pass_specs,
)
from tests.hypothesis_profiles import examples
from tests.ir.strategies_lm import FORMATS, LMCase, lm_cases, widen, widen_inputs

FLOAT_FORMATS = {"dense", "unstructured", "nm"}


def _ctx(case: LMCase) -> PassContext:
    return PassContext(calib_inputs=[case.inputs])


def _check_runs(case: LMCase, g) -> list[torch.Tensor]:
    verify(g, "after the pipeline")
    inputs = dict(case.inputs)
    if any(v.name == "decode_start" for v in g.inputs):  # ffn-skip: every row may skip
        inputs["decode_start"] = torch.tensor(0, dtype=torch.int64)
    interp = Interpreter(g)
    outs = interp.run(inputs)
    # the symbols the run bound (token-prune: each layer's kept count) besides the case's
    env = {**interp.env, **case.env}
    assert len(outs) == len(g.outputs)
    for o, v in zip(outs, g.outputs, strict=True):
        assert tuple(o.shape) == v.type.concrete(env), (v, tuple(o.shape))
        assert o.dtype == to_torch_dtype(v.type.dtype), (v, o.dtype)
        assert finite(o), f"%{v.name} has non-finite values"
    return outs


def _apply(case: LMCase, spec: str):
    before = run(case.graph, case.inputs)
    g = case.graph.copy()
    build_pipeline(spec).run(g, _ctx(case))
    for a, b in zip(run(case.graph, case.inputs), before, strict=True):
        assert torch.equal(a, b), "the pass changed tensors shared with the input graph"
    return g, before


@settings(max_examples=examples(0.5))
@given(case=lm_cases(formats={"dense", "unstructured"}), spec=ordered_pipelines())
def test_ordered_pipeline_gives_valid_running_ir(case: LMCase, spec: str) -> None:
    g, _ = _apply(case, spec)
    _check_runs(case, g)


#: weight formats of the input model: all of them (most pipelines then refuse: weights are
#: already quantized), only float ones, or dense only
SOME_FORMATS = st.sampled_from((FORMATS, FLOAT_FORMATS, frozenset({"dense"})))


@settings(max_examples=examples(0.5))
@given(case=SOME_FORMATS.flatmap(lambda f: lm_cases(formats=f)), spec=any_pipelines())
def test_any_pipeline_succeeds_or_refuses_cleanly(case: LMCase, spec: str) -> None:
    try:
        g, _ = _apply(case, spec)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions
        assert is_clean_refusal(e), f"{spec}: {type(e).__name__}: {e}"
        event("refused (typed error)")
        return
    event("succeeded")
    _check_runs(case, g)


EXACT = st.one_of(
    st.lists(st.sampled_from(CLEANUPS), min_size=1, max_size=4).map(",".join),
    pass_specs(("async-softmax", "smoothquant")),
    st.sampled_from(
        (
            "magnitude:sparsity=0.0",
            "wanda:sparsity=0.0",
            "sparsegpt:sparsity=0.0",
            "flap:ratio=0.0:align=1",
            "smoothquant,fuse-elementwise,cse,dce",
            "async-softmax,fuse-elementwise",
        )
    ),
)


@settings(max_examples=examples(0.5))
@given(data=st.data())
def test_exact_passes_match_the_interpreter(data: st.DataObject) -> None:
    spec = data.draw(EXACT, label="spec")
    # weight-compression passes refuse quantized weights; the clean-ups must handle them
    touches_weights = any(n in spec for n in ("magnitude", "wanda", "sparsegpt", "flap", "smooth"))
    case = data.draw(lm_cases(formats=FLOAT_FORMATS if touches_weights else FORMATS), label="case")
    g, before = _apply(case, spec)
    after = _check_runs(case, g)
    ref = run(widen(case.graph), widen_inputs(case.inputs))
    for i, (a, b, r) in enumerate(zip(after, before, ref, strict=True)):
        check_accuracy(a, b, r, case.dtype, f"{spec}: output {i} (%{g.outputs[i].name})")


def test_every_builtin_pass_is_fuzzed() -> None:
    """A new built-in pass must get its options into ``tests/fuzz_common.py`` (``_opts``)."""
    from llmc.passes.registry import BUILTIN
    from tests.fuzz_common import ALL_PASSES

    missing = set(BUILTIN) - set(ALL_PASSES)
    assert not missing, f"not fuzzed: {sorted(missing)}; add them to tests/fuzz_common.py"
