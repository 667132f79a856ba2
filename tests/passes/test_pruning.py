"""Pruning passes: magnitude, wanda, sparsegpt (unstructured and N:M) and flap (structured)."""

from __future__ import annotations

import pytest
import torch

from llmc.ir import verify
from llmc.passes import PassContext, PassOptionError, PipelineError, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run
from tests.passes.conftest import correlated_inputs, linear_graph

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("target", ["sparsity=0.5", "pattern=2:4", "pattern=4:8", "pattern=2:16"])
def test_prune_hits_the_target_and_verifies(lm, ctx, method, target) -> None:
    report = build_pipeline(f"{method}:{target}").run(lm, ctx)
    verify(lm)  # N:M patterns are checked by the verifier's params rule
    r = report[0]
    assert r["layers_targeted"] == 2 * len(LINEARS)
    for row in r["layers"]:
        assert row["sparsity"] == pytest.approx(
            0.5 if "2:4" in target or "4:8" in target or "0.5" in target else 14 / 16, abs=1e-3
        )
        if method == "magnitude":  # data-free: no calibration, so no error measured by default
            assert row["rel_error"] is None
        else:
            assert row["rel_error"] is not None and row["rel_error"] > 0
    assert lm.params["lm_head.weight"].format.is_dense  # excluded by default
    p = lm.params["model.layers.0.mlp.down_proj.weight"]
    assert p.format.sparsity is not None
    if "pattern" in target:
        n, m = (int(x) for x in target.split("=")[1].split(":"))
        assert (p.format.sparsity.kind, p.format.sparsity.n, p.format.sparsity.m) == ("nm", n, m)
        nz = (p.value() != 0).reshape(p.value().shape[0], -1, m).sum(-1)
        assert int(nz.max()) <= n
    if method == "magnitude":
        assert "calib_peak_activation_mb" not in r
    else:
        assert r["calib_peak_activation_mb"] > 0


class _NoCalibration(PassContext):
    """A context whose calibration source fails the test if anything reads it."""

    def calibration(self):  # type: ignore[override]
        raise AssertionError("a data-free pass touched the calibration data")


@pytest.mark.parametrize("spec", ["magnitude:sparsity=0.5", "rtn:bits=4:group=32"])
def test_data_free_passes_measure_only_when_asked(lm, ctx, spec) -> None:
    dense = lm.copy()
    quiet = build_pipeline(spec).run(dense, _NoCalibration(calib_samples=8, calib_seqlen=64))[0]
    assert quiet["calibration"] == "data-free"
    assert "calib_peak_activation_mb" not in quiet
    assert all(row["rel_error"] is None for row in quiet["layers"])
    with pytest.raises(PipelineError, match="touched the calibration"):
        build_pipeline(f"{spec}:measure=true").run(lm.copy(), _NoCalibration())
    loud = build_pipeline(f"{spec}:measure=true").run(lm, ctx)[0]
    assert loud["calibration"] == "measured"
    assert loud["calib_peak_activation_mb"] > 0
    assert all(row["rel_error"] > 0 for row in loud["layers"])
    # measuring reads data but does not change the weights: same result as the data-free run
    for name, p in lm.params.items():
        for field, t in p.data.items():
            assert torch.equal(t, dense.params[name].data[field]), (name, field)


def test_wanda_prunes_half_of_every_row(lm, ctx) -> None:
    build_pipeline("wanda:sparsity=0.5").run(lm, ctx)
    w = lm.params["model.layers.1.self_attn.o_proj.weight"].value()
    assert torch.all((w == 0).sum(1) == w.shape[1] // 2)


def test_include_exclude_patterns(lm, ctx) -> None:
    report = build_pipeline(
        "magnitude:sparsity=0.3:include=mlp:exclude=down_proj:measure=false"
    ).run(lm, ctx)
    names = [row["name"] for row in report[0]["layers"]]
    assert names == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")
    ]
    assert lm.params["model.layers.0.self_attn.q_proj.weight"].format.is_dense
    assert report[0]["layers"][0]["rel_error"] is None  # measure=false: data-free, nothing run


def test_method_ordering_on_correlated_activations() -> None:
    """On one layer with outlier input channels the papers' ordering holds:
    SparseGPT < Wanda < magnitude in output error."""
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    xs = correlated_inputs(256, 128)
    errs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        g = linear_graph(w)
        ctx = PassContext(calib_inputs=[{"x": x} for x in xs])
        build_pipeline(f"{method}:sparsity=0.5").run(g, ctx)
        xt = torch.cat(xs)
        errs[method] = float((run(g, [xt])[0] - xt @ w.T).norm() / (xt @ w.T).norm())
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("wanda:sparsity=1.5", r"sparsity must be in \[0, 1\), got 1.5"),
        ("wanda:pattern=3:2", "pattern 3:2 is impossible"),
        ("sparsegpt:pattern=2:2", "pattern 2:2 is impossible"),
        ("magnitude:pattern=two:four", "pattern must be N:M"),
        ("magnitude:sparsity=0.5:pattern=2:4", "not both"),
        ("sparsegpt:pattern=2:4:blocksize=6", "multiple of M=4"),
        ("flap:ratio=1.0", r"ratio must be in \[0, 1\)"),
    ],
)
def test_impossible_options(spec, msg) -> None:
    with pytest.raises(PassOptionError, match=msg):
        build_pipeline(spec)


def test_nm_needs_divisible_widths(lm, ctx) -> None:
    with pytest.raises(PipelineError, match="64 input features, not a multiple of M=48"):
        build_pipeline("magnitude:pattern=2:48").run(lm, ctx)


def test_include_matching_nothing_is_an_error(lm, ctx) -> None:
    with pytest.raises(PipelineError, match="include pattern 'mlpp' matches no linear layer"):
        build_pipeline("magnitude:include=mlpp").run(lm, ctx)


def test_wanda_needs_calibration_inputs_on_plain_graphs() -> None:
    with pytest.raises(PipelineError, match="not a language model.*calib_inputs"):
        build_pipeline("wanda").run(linear_graph(torch.randn(8, 8)), PassContext())


def test_prune_then_quantize_keeps_the_pattern(lm, ctx) -> None:
    build_pipeline("sparsegpt:pattern=2:4,gptq:bits=4:group=32").run(lm, ctx)
    verify(lm)
    p = lm.params["model.layers.0.mlp.up_proj.weight"]
    assert p.format.quant is not None and p.format.sparsity is not None
    assert float((p.value() == 0).float().mean()) >= 0.5


def test_architecture_only_models_get_formats(lm) -> None:
    for p in lm.params.values():
        p.data = {"value": torch.empty(p.data["value"].shape, device="meta")}
    build_pipeline("magnitude:pattern=2:16,rtn:bits=4:group=64").run(lm, PassContext())
    verify(lm)
    p = lm.params["model.layers.0.mlp.down_proj.weight"]
    assert (
        str(p.format)
        == "quant(bits=4, group=64, sym=true, method=rtn) sparse(nm=2:16, density=0.125)"
    )


def test_flap_shrinks_ffn_and_compensates(lm, ctx) -> None:
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    inp = lm_inputs(lm, ids)
    ref = run(lm, inp)[0]
    g0 = lm.copy()
    build_pipeline("flap:ratio=0.0").run(g0, ctx)
    torch.testing.assert_close(run(g0, inp)[0], ref)  # ratio 0 is exact
    errs = {}
    for comp in ("true", "false"):
        g = lm.copy()
        report = build_pipeline(f"flap:ratio=0.25:compensate={comp}").run(g, ctx)
        verify(g)
        assert g.params["model.layers.0.mlp.gate_proj.weight"].type.shape == (96, 64)
        assert g.params["model.layers.1.mlp.down_proj.weight"].type.shape == (64, 96)
        assert g.meta["intermediate_size"] == 96
        assert report[0]["channels_removed"] == 64 and report[0]["bytes_saved"] > 0
        assert ("model.layers.0.mlp.down_proj.bias" in g.params) == (comp == "true")
        errs[comp] = float((run(g, inp)[0] - ref).norm() / ref.norm())
    assert 0 < errs["true"] < 1 and 0 < errs["false"] < 1
