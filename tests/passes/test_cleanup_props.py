"""Property tests: every exact clean-up pass preserves what the graph computes."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc.ir import verify
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.interp import run
from tests.hypothesis_profiles import examples
from tests.passes.strategies import graphs, random_inputs

PIPELINES = [
    "dce",
    "cse",
    "const-fold",
    "fuse-elementwise",
    "cse,const-fold,dce",
    "const-fold,cse,fuse-elementwise,dce",
]


@settings(max_examples=examples(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(), spec=st.sampled_from(PIPELINES), batch=st.integers(1, 3))
def test_exact_passes_preserve_semantics(g, spec, batch) -> None:
    xs = random_inputs(g, batch)
    before = run(g, xs)
    g2 = g.copy()
    build_pipeline(spec).run(g2, PassContext())
    verify(g2)
    after = run(g2, xs)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the text form still round-trips after the rewrite
    g3 = g2.copy()
    for a, b in zip(run(g3, xs), before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=examples(0.625), deadline=None)
@given(g=graphs())
def test_cleanups_never_grow_the_graph(g) -> None:
    n0 = len(g.nodes)
    build_pipeline("cse,const-fold,dce").run(g, PassContext())
    assert len(g.nodes) <= n0
