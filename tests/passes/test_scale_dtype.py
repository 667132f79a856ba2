"""Scale precision as a recorded quantization choice (``QuantSpec.scale_dtype``, "Scale
precision"): the ``rtn``/``gptq`` option and its errors, the IR text, the quantizer's rounding
(codes chosen for the half-precision scale), honest ``storage_bytes``, and every CPU lowering
(VNNI, AVX2, portable) and a CUDA cross-compile against the interpreter.

Tolerances: the compiled kernels read the same half scales the interpreter widens, so they differ
only by summation order and the activation digits: 1e-4 at model level, as every CPU
differential test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmc.errors import IRError
from llmc.ir import QuantSpec, StorageFormat, TensorType, verify
from llmc.ir.params import Param, dequantize, round_scale
from llmc.ir.parser import parse_graph
from llmc.ir.printer import print_graph
from llmc.passes import PassContext, PassOptionError, build_pipeline
from tests.cpu_kernels import one_linear_graph


def _quant(spec: str):
    return build_pipeline(spec).passes[0]


# ------------------------------------------------------------------------------ options and IR


def test_option_default_and_f16() -> None:
    assert _quant("rtn:bits=4").scale_dtype == "f32"
    assert _quant("gptq:scale_dtype=f16").scale_dtype == "f16"


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("rtn:scale_dtype=bf16", r"scale_dtype must be f32 or f16, got 'bf16'"),
        ("gptq:scale_dtype=f8", r"scale_dtype must be f32 or f16, got 'f8'"),
    ],
)
def test_option_errors_one_line(spec: str, msg: str) -> None:
    with pytest.raises(PassOptionError, match=msg) as e:
        _quant(spec)
    assert "\n" not in str(e.value)


def test_cli_option_error_one_line(capsys) -> None:
    from tests.test_bad_inputs_cli import expect_error

    expect_error(capsys, ["eval", "tiny", "--passes", "rtn:scale_dtype=f64"], "scale_dtype")


def _graph(codes: torch.Tensor, scale: torch.Tensor, spec: QuantSpec):
    return one_linear_graph(codes, scale, spec, "s16")


def test_printer_parser_round_trip_and_verifier() -> None:
    spec = QuantSpec(4, 8, True, "rtn", scale_dtype="f16")
    scale = torch.full((3, 2), 0.5, dtype=torch.float16)
    g = _graph(torch.zeros(3, 16, dtype=torch.int8), scale, spec)
    verify(g)
    text = print_graph(g)
    assert "quant(bits=4, group=8, sym=true, method=rtn, scale_dtype=f16)" in text
    g2 = parse_graph(text)
    assert g2.params["fc.weight"].format.quant == spec
    assert g2.params["fc.weight"].data["scale"].dtype == torch.float16  # meta, but typed
    assert print_graph(g2) == text
    # the default prints nothing new (existing golden IR unchanged)
    assert str(StorageFormat(QuantSpec(4, 8))) == "quant(bits=4, group=8, sym=true, method=rtn)"
    with pytest.raises(IRError, match=r"scale_dtype must be f32 or f16, got 'f64'"):
        parse_graph(text.replace("scale_dtype=f16", "scale_dtype=f64"))
    # a float32 scale under scale_dtype=f16 is a verifier error
    g.params["fc.weight"].data["scale"] = scale.float()
    with pytest.raises(IRError, match=r"scale dtype torch.float32 != scale_dtype=f16"):
        verify(g)


def test_round_scale() -> None:
    s = torch.tensor([1e-12, 3e-8, 0.1, 1.0 + 2**-12, 1e6])
    r = round_scale(s, "f16")
    assert r.dtype == torch.float32
    assert r[0] == r[1] == 2.0**-24  # clamped to the smallest subnormal half: never zero
    assert r[2] == torch.tensor(0.1).half().float()
    assert r[3] == 1.0  # ties to even: 1 + 2^-12 is halfway between 1 and 1 + 2^-11
    assert r[4] == 65504.0  # clamped to the largest finite half
    assert round_scale(s, "f32") is s


# ------------------------------------------------------------------------------ the quantizer


def test_codes_chosen_for_the_rounded_scale(lm, ctx) -> None:
    """Every code is round(w / s16) for the stored half scale s16 (not for the float32 scale),
    the dequantized weight is codes * float32(s16), and f32 stays what it was."""
    g16, g32 = lm.copy(), lm.copy()
    build_pipeline("rtn:bits=4:group=32:scale_dtype=f16").run(g16, ctx)
    build_pipeline("rtn:bits=4:group=32").run(g32, PassContext())
    verify(g16)
    verify(g32)
    name = "model.layers.0.mlp.down_proj.weight"
    w = lm.params[name].value().float()
    p16, p32 = g16.params[name], g32.params[name]
    assert p16.format.quant.scale_dtype == "f16" and p32.format.quant.scale_dtype == "f32"
    s16, s32 = p16.data["scale"], p32.data["scale"]
    assert s16.dtype == torch.float16 and s32.dtype == torch.float32
    torch.testing.assert_close(s16.float(), s32.half().float(), rtol=0, atol=0)
    out_f, in_f = w.shape
    want = torch.round(w.reshape(out_f, -1, 32) / s16.float().reshape(out_f, -1, 1)).clamp(-7, 7)
    assert torch.equal(p16.data["qvalue"].float(), want.reshape(out_f, in_f))
    torch.testing.assert_close(
        dequantize(p16),
        (want * s16.float().reshape(out_f, -1, 1)).reshape(out_f, in_f),
        rtol=0,
        atol=0,
    )
    # the default's codes are for the float32 scale (bit-identical to before)
    want32 = torch.round(w.reshape(out_f, -1, 32) / s32.reshape(out_f, -1, 1)).clamp(-7, 7)
    assert torch.equal(p32.data["qvalue"].float(), want32.reshape(out_f, in_f))
    # the head (8-bit, rtn) records f16 too; the report says so
    assert g16.params["lm_head.weight"].format.quant.scale_dtype == "f16"
    assert ctx.report["scale_dtype"] == "f16"
    from llmc.inspect import format_key

    assert format_key(p16) == "f32 int4 g32 sym rtn sf16"


def test_storage_bytes_charge_the_real_scale_dtype() -> None:
    """q4_0's 0.5625 B/weight with f16 scales at group 32 (symmetric: no zero stream);
    f32 scales 0.625; q8: 1.0625 / 1.125."""
    n, k = 64, 256
    for bits, sd, want in ((4, "f16", 0.5625), (4, "f32", 0.625), (8, "f16", 1.0625)):
        spec = QuantSpec(bits, 32, scale_dtype=sd)
        p = Param(
            "w",
            TensorType((n, k), "f32"),
            StorageFormat(spec),
            {
                "qvalue": torch.zeros(n, k, dtype=torch.int8),
                "scale": torch.ones(n, k // 32, dtype=spec.scale_torch_dtype),
            },
        )
        assert p.storage_bytes() / (n * k) == want, (bits, sd)


def test_gptq_f16_scales(lm, ctx) -> None:
    g = lm.copy()
    build_pipeline("gptq:bits=4:group=32:scale_dtype=f16:head=false").run(g, ctx)
    verify(g)
    p = g.params["model.layers.0.mlp.down_proj.weight"]
    assert p.data["scale"].dtype == torch.float16 and p.format.quant.method == "gptq"
    assert torch.isfinite(p.value()).all()


def test_asymmetric_zero_for_the_rounded_scale(lm) -> None:
    g = lm.copy()
    build_pipeline("rtn:bits=4:group=32:sym=false:scale_dtype=f16:head=false").run(g, PassContext())
    verify(g)
    name = "model.layers.0.mlp.down_proj.weight"
    p, w = g.params[name], lm.params[name].value().float()
    out_f, in_f = w.shape
    wg = w.reshape(-1, 32)
    lo = wg.amin(1, keepdim=True).clamp_max(0)
    s = p.data["scale"].float().reshape(-1, 1)
    assert torch.equal(p.data["zero"].float().reshape(-1, 1), torch.round(-lo / s))


# ------------------------------------------------------------------------------ lowerings


def _vnni() -> bool:
    from llmc.backends.cpu.pipeline import kernel_isa

    return kernel_isa() == "avx512_vnni"


def _toy(spec: str):
    from tests.lm_fixtures import toy_lm

    g = toy_lm(hidden=64, ffn=192)
    build_pipeline(spec).run(g, PassContext())
    return g


def _weights_f16(art: Path) -> set[str]:
    """Names of the compiled weight arguments stored as f16."""
    man = json.loads((art / "manifest.json").read_text())
    return {w["name"] for w in man["backend"]["weights"] if w["dtype"] == "f16"}


@pytest.mark.parametrize(
    "isa,spec",
    [
        ("avx512_vnni", "rtn:bits=4:group=32:scale_dtype=f16"),
        ("avx512_vnni", "rtn:bits=4:group=32:sym=false:scale_dtype=f16"),
        ("avx512_vnni", "rtn:bits=8:group=32:scale_dtype=f16:act_bits=8"),
        ("avx2", "rtn:bits=4:group=32:scale_dtype=f16"),
        ("portable", "rtn:bits=4:group=32:scale_dtype=f16"),
        ("portable", "rtn:bits=6:group=32:sym=false:scale_dtype=f16"),
    ],
    ids=["vnni-q4", "vnni-q4-asym", "vnni-q8-a8", "avx2-q4", "portable-q4", "portable-q6-asym"],
)
def test_cpu_matches_interpreter(tmp_path, monkeypatch, isa, spec) -> None:
    from llmc.backends.cpu import pipeline as cpu_pipeline
    from tests.passes.test_act_bits import _compile_and_compare

    if isa == "avx512_vnni" and not _vnni():
        pytest.skip("host CPU has no AVX-512 VNNI")
    if isa == "avx2":
        from llmc.backends.cpu.pipeline import host_cpu  # noqa: F401

        monkeypatch.setenv("LLMC_CPU_ISA", "avx2")
    if isa == "portable":
        monkeypatch.setenv("LLMC_CPU_ISA", "portable")
    assert cpu_pipeline.kernel_isa() == isa
    g = _toy(spec)
    rules = _compile_and_compare(g, tmp_path / "a")
    kern = {
        "avx512_vnni": ("cpu.linear.vnni_q4", "cpu.linear.vnni_q8w"),
        "avx2": ("cpu.linear.avx2_q4", "cpu.linear.avx2_q8w"),
        "portable": ("cpu.linear.panel_q4", "cpu.linear.panel_q8"),
    }[isa]
    assert sum(rules.get(r, 0) for r in kern) > 0, rules
    f16 = _weights_f16(tmp_path / "a")
    assert any(w.endswith(".q4.scale") for w in f16), f16  # the scales travel as halves


@pytest.mark.slow
@pytest.mark.parametrize("target", ["h100", "mi300x"])
def test_gpu_cross_compile_reads_f16_scales(tmp_path, target) -> None:
    """H100 / MI300X (code generation only, no device): the TE dequantize casts the half
    scales."""
    from tests.backends.conftest import compile_graph

    g = _toy("rtn:bits=4:group=32:scale_dtype=f16")
    compile_graph(g, target, tmp_path / target)
    rules = json.loads((tmp_path / target / "manifest.json").read_text())["backend"][
        "lowering_rules"
    ]
    assert rules["linear.q4"] > 0 and rules["linear.q8g"] > 0
    assert any(w.endswith("@q4.scale") for w in _weights_f16(tmp_path / target))


@pytest.mark.slow
def test_fpga_reads_half_scales_exactly() -> None:
    """The FlightLLM tiles hold the scales as float32: a half widens exactly, so the functional
    simulator still matches the interpreter (the cycle model charges 4 bytes per scale)."""
    import numpy as np

    from llmc.fpga.arch import load_arch
    from llmc.fpga.funcsim import FuncRunner
    from llmc.fpga.program import build_program
    from llmc.fpga.verify import compare_lm
    from llmc.frontends import load_model

    g = load_model("tiny").graph
    build_pipeline("rtn:bits=4:group=64:scale_dtype=f16:measure=false").run(g, PassContext())
    assert g.params["model.layers.0.mlp.up_proj.weight"].data["scale"].dtype == torch.float16
    runner = FuncRunner(build_program(g, load_arch("u280")))
    ids = np.frombuffer(b"def fib(n):\n    return n", dtype=np.uint8)
    ag, _ = compare_lm(g, runner, ids, decode_steps=2)
    assert ag.within(k=4.0), ag
    assert ag.sim_vs_interp < 1e-4 and ag.argmax_agree == 1.0, ag
