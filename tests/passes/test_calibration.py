"""Calibration: data sources, bad input, and the layer-by-layer memory bound."""

from __future__ import annotations

import pytest
import torch

from llmc.passes import CalibrationError, PassContext, PipelineError, build_pipeline
from llmc.passes.calibration import InputStats, segments
from tests.lm_fixtures import toy_lm


def test_segments_follow_layer_scopes(lm) -> None:
    segs = segments(lm)
    assert [s.label for s in segs] == ["pre", "layers.0", "layers.1"]
    assert sum(len(s.nodes) for s in segs) == len(lm.nodes)


def test_input_stats_match_direct_computation() -> None:
    x = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(0))
    st = InputStats(8, hessian=True)
    st.add(x[:1])
    st.add(x[1:])
    flat = x.reshape(-1, 8).double()
    torch.testing.assert_close(st.norm, flat.norm(dim=0))
    torch.testing.assert_close(st.absmax, flat.abs().amax(0))
    torch.testing.assert_close(st.var, flat.var(0, unbiased=False))
    torch.testing.assert_close(st.H().double(), 2 * flat.T @ flat / 150, rtol=1e-5, atol=1e-5)


def test_calibration_from_a_user_file(lm, tmp_path) -> None:
    f = tmp_path / "calib.txt"
    f.write_text("def f(x):\n    return x * 2\n" * 40, encoding="utf-8")
    ctx = PassContext(calib_file=f, calib_samples=4, calib_seqlen=32)
    report = build_pipeline("wanda:sparsity=0.5").run(lm, ctx)
    assert report[0]["calib_source"].startswith(str(f))
    assert report[0]["calib_tokens"] == 4 * 32


@pytest.mark.parametrize(
    "content, msg",
    [
        (
            "short text",
            "calibration text has 10 tokens, fewer than one window of --calib-seqlen 64",
        ),
        (b"\xff\xfe\x00bad", "is not UTF-8 text"),
        (None, "calibration file not found"),
    ],
)
def test_bad_calibration_files(lm, tmp_path, content, msg) -> None:
    f = tmp_path / "c.txt"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    ctx = PassContext(calib_file=f, calib_samples=2, calib_seqlen=64)
    with pytest.raises(PipelineError, match=msg) as ei:
        build_pipeline("wanda").run(lm, ctx)
    assert "\n" not in str(ei.value) and str(f) in str(ei.value)


def test_seqlen_beyond_the_model_is_refused(lm) -> None:
    with pytest.raises(PipelineError, match="--calib-seqlen 300 exceeds the model's 256 positions"):
        build_pipeline("gptq").run(lm, PassContext(calib_samples=1, calib_seqlen=300))


@pytest.mark.parametrize("kw", [{"calib_samples": 0}, {"calib_seqlen": 1}, {"calib_batch": -2}])
def test_bad_calibration_sizes(kw) -> None:
    with pytest.raises(CalibrationError, match="--calib-"):
        PassContext(**kw)


def test_peak_memory_is_one_layer_not_the_model() -> None:
    """Peak calibration memory does not grow with depth, and is far below caching every
    linear's input for all samples (what a naive hook-everything calibration holds)."""
    peaks = {}
    for layers in (2, 6):
        g = toy_lm(layers=layers, hidden=64, heads=4, kv_heads=2, ffn=256, vocab=256)
        ctx = PassContext(calib_samples=8, calib_seqlen=64, calib_batch=4)
        r = build_pipeline("sparsegpt:sparsity=0.5").run(g, ctx)[0]
        peaks[layers] = r["calib_peak_activation_mb"]
        tokens = r["calib_tokens"]
        naive_mb = tokens * layers * (64 + 64 + 64 + 256) * 4 / 2**20
        assert peaks[layers] < naive_mb / 2
    assert peaks[6] < 1.2 * peaks[2], peaks


def test_default_window_fits_a_model_with_few_positions() -> None:
    """``--calib-seqlen`` not given: 256 tokens, or every position of a model that has fewer;
    given and too long: one line naming the flag."""
    from llmc.errors import LlmcError
    from llmc.ir import parse_graph

    g = parse_graph(
        'graph @g {\n  meta {"max_position_embeddings": 64, "vocab_size": 256}\n'
        "  input %input_ids : i64[batch, seq]\n  return %input_ids\n}\n"
    )
    ctx = PassContext(calib_samples=2)
    assert ctx.calibration().tokens(g).shape == (2, 64)
    with pytest.raises(LlmcError, match="--calib-seqlen 100 exceeds the model's 64 positions"):
        PassContext(calib_samples=2, calib_seqlen=100).calibration().tokens(g)
