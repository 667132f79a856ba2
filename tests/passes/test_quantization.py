"""Quantization passes (rtn, gptq, smoothquant, w8a8) and the qlinear_a8 op's integer semantics."""

from __future__ import annotations

import pytest
import torch

from llmc.errors import LlmcError
from llmc.ir import GraphBuilder, QuantSpec, StorageFormat, TensorType, sym, verify
from llmc.ir.params import Param
from llmc.passes import PassContext, PassOptionError, PipelineError, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.passes.quant_common import effective_group
from llmc.runtime.interp import run
from tests.passes.conftest import correlated_inputs, linear_graph


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ qlinear_a8


def qlinear_graph(codes: torch.Tensor, scale: torch.Tensor):
    p = Param(
        "fc.weight",
        TensorType(tuple(codes.shape), "f32"),
        StorageFormat(QuantSpec(8, 0, True, "w8a8")),
        {"qvalue": codes, "scale": scale},
    )
    b = GraphBuilder("q")
    x = b.input("x", TensorType((sym("batch"), int(codes.shape[1])), "f32"))
    with b.scope("fc", "ffn"):
        y = b.emit("qlinear_a8", x, b.param("fc.weight", p), weight="fc.weight")
    b.output(y)
    return b.finish()


def test_qlinear_a8_is_integer_arithmetic() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (5, 24), generator=g, dtype=torch.int8)
    scale = torch.rand(5, 1, generator=g) * 0.01 + 1e-3
    x = torch.randn(3, 24, generator=g) * 4
    graph = qlinear_graph(codes, scale)
    verify(graph)
    y = run(graph, [x])[0]
    # the same computation written out by hand, integers in int64
    sx = x.abs().amax(1, keepdim=True) / 127
    qx = torch.clamp(torch.round(x / sx), -127, 127).to(torch.int64)
    acc = qx @ codes.to(torch.int64).T
    want = acc.to(torch.float32) * sx * scale.reshape(1, -1)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    # and it approximates the float linear
    assert rel(y, x @ (codes.float() * scale).T) < 0.02
    # text round trip keeps the op and its weight reference
    assert 'qlinear_a8(%x, %fc.weight) {weight = "fc.weight"}' in str(graph)
    g2 = graph.copy()
    torch.testing.assert_close(run(g2, [x])[0], y)


def test_qlinear_a8_needs_an_int8_per_channel_weight() -> None:
    graph = linear_graph(torch.randn(4, 8))
    with pytest.raises(LlmcError, match="must be int8 symmetric per-channel"):
        graph.make_node("qlinear_a8", graph.nodes[-1].inputs, {"weight": "fc.weight"})


# ------------------------------------------------------------------------------ rtn / gptq


@pytest.mark.parametrize(
    "bits, group, sym_", [(8, 0, True), (4, 32, True), (4, 16, False), (3, 0, True)]
)
def test_rtn_codes_and_error_bound(bits, group, sym_) -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    g = linear_graph(w)
    report = build_pipeline(
        f"rtn:bits={bits}:group={group}:sym={str(sym_).lower()}:measure=false"
    ).run(g, PassContext())
    verify(g)
    p = g.params["fc.weight"]
    assert p.format.quant == QuantSpec(bits, group, sym_, "rtn")
    lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if sym_ else (0, 2**bits - 1)
    assert int(p.data["qvalue"].min()) >= lo and int(p.data["qvalue"].max()) <= hi
    gsz = 64 if group == 0 else group
    step = p.data["scale"].repeat_interleave(gsz, dim=1)
    assert torch.all((p.value() - w).abs() <= step / 2 + 1e-6)
    assert report[0]["bytes_saved"] > 0


def test_group_falls_back_to_a_divisor() -> None:
    assert effective_group(704, 128) == 64 and effective_group(256, 128) == 128
    assert (
        effective_group(48, 32) == 16
        and effective_group(45, 8) == 5
        and effective_group(64, 0) == 0
    )
    g = linear_graph(torch.randn(8, 48))
    report = build_pipeline("rtn:bits=4:group=32:measure=false").run(g, PassContext())
    assert report[0]["layers"][0]["group"] == 16
    assert g.params["fc.weight"].format.quant.group == 16


@pytest.mark.parametrize("act_order", ["false", "true"])
def test_gptq_beats_rtn_at_4_bits(act_order) -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    xs = correlated_inputs(256, 128)
    xt = torch.cat(xs)
    errs = {}
    for spec in ("rtn:bits=4:group=32", f"gptq:bits=4:group=32:act_order={act_order}"):
        g = linear_graph(w)
        build_pipeline(spec).run(g, PassContext(calib_inputs=[{"x": x} for x in xs]))
        verify(g)
        errs[spec.split(":")[0]] = rel(run(g, [xt])[0], xt @ w.T)
    assert errs["gptq"] < 0.8 * errs["rtn"], errs


def test_gptq_on_lm_is_sequential_and_reports(lm, ctx) -> None:
    report = build_pipeline("gptq:bits=4:group=32").run(lm, ctx)
    verify(lm)
    r = report[0]
    assert r["calib_segments"] == 3  # embedding, layer 0, layer 1 (+ final norm and head)
    # 14 layer linears by GPTQ at 4 bits, the LM head by RTN at 8 (head=true, the default)
    assert r["layers_targeted"] == 15 and r["bytes_after"] < r["bytes_before"] / 3
    assert r["head"] == {"bits": 8, "params": ["lm_head.weight"]}
    assert all(row["rel_error"] < 0.5 for row in r["layers"])
    assert lm.params["lm_head.weight"].format.quant == QuantSpec(8, 32, True, "rtn")


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("rtn:bits=0", "bits must be in 2..8, got 0"),
        ("gptq:bits=9", "bits must be in 2..8, got 9"),
        ("rtn:group=-1", "group must be >= 0"),
        ("rtn:bits=8:sym=false", "asymmetric 8-bit"),
        ("gptq:damp=0", r"damp must be in \(0, 1\)"),
        ("smoothquant:alpha=1.5", r"alpha must be in \[0, 1\]"),
        ("w8a8:act=channel", "must be one of token, tensor"),
        ("rtn:bitz=4", "has no option 'bitz'; did you mean 'bits'"),
    ],
)
def test_impossible_quant_options(spec, msg) -> None:
    with pytest.raises(PassOptionError, match=msg):
        build_pipeline(spec)


def test_quantizing_twice_is_refused(lm, ctx) -> None:
    fresh = lm.copy()
    with pytest.raises(
        PipelineError, match="pass 'rtn' \\(#2 of 2, after rtn\\) failed: .*already quantized"
    ):
        build_pipeline("rtn:measure=false,rtn:measure=false").run(lm, ctx)
    with pytest.raises(PipelineError, match="w8a8.*already quantized"):
        build_pipeline("rtn:bits=8:group=0:measure=false,w8a8").run(fresh, ctx)


# ------------------------------------------------------------------------------ smoothquant / w8a8


def outlier_lm(lm):
    """Give every norm a few huge channels: the activation outliers SmoothQuant is for."""
    for name, p in lm.params.items():
        if name.endswith("layernorm.weight"):
            v = p.data["value"].clone()
            v[[3, 17]] *= 40.0
            p.data = {"value": v}
            p.invalidate()
    return lm


def test_smoothquant_is_exact_and_helps_w8a8(lm, ctx) -> None:
    lm = outlier_lm(lm)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(3))
    inp = lm_inputs(lm, ids)
    ref = run(lm, inp)[0]
    smooth = lm.copy()
    report = build_pipeline("smoothquant:alpha=0.5").run(smooth, ctx)
    assert rel(run(smooth, inp)[0], ref) < 2e-4  # exact up to float32 rounding
    r = report[0]
    assert r["groups"] == 6  # per layer: input_layernorm, post_attention_layernorm, up->down
    assert {row["source"] for row in r["layers"]} == {"norm", "up"}
    assert all(
        row["act_outlier_ratio_after"] < row["act_outlier_ratio_before"] for row in r["layers"]
    )

    naive = lm.copy()
    build_pipeline("w8a8:head=false").run(naive, ctx)
    build_pipeline("w8a8:head=false").run(smooth, ctx)
    for g in (naive, smooth):
        verify(g)
        ops = [n.op for n in g.nodes]
        assert ops.count("qlinear_a8") == 14 and ops.count("linear") == 1  # lm_head stays float
    assert smooth.params["model.layers.0.mlp.up_proj.weight"].format.quant.method == "smoothquant"
    e_naive, e_smooth = rel(run(naive, inp)[0], ref), rel(run(smooth, inp)[0], ref)
    assert e_smooth < e_naive, (e_smooth, e_naive)


def test_w8a8_static_per_tensor_scales(lm, ctx) -> None:
    build_pipeline("w8a8:act=tensor").run(lm, ctx)
    scales = [n.attrs.act_scale for n in lm.nodes if n.op == "qlinear_a8"]
    assert len(scales) == 15 and all(s > 0 for s in scales)  # 14 layer linears + the head


def test_smoothquant_after_quantization_is_refused(lm, ctx) -> None:
    with pytest.raises(PipelineError, match="smoothquant must run before quantization"):
        build_pipeline("rtn:measure=false,smoothquant").run(lm, ctx)
