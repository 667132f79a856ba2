"""Activation precision as a recorded quantization choice (``QuantSpec.act_bits``/``act_group``):
the ``rtn``/``gptq`` options, the IR text, the reference semantics against a hand computation,
and the CPU lowering (VNNI one-digit kernels and the TE fake-quant every other rule gets)
against the interpreter.

Tolerances: kernel and interpreter compute the same int8 activation codes (the same float32
operations), so they differ only by summation order: float32 level (1e-5 of the largest
output at kernel level, 1e-4 at model level as every CPU differential test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmc.errors import IRError
from llmc.ir import QuantSpec, StorageFormat, verify
from llmc.ir.params import fake_quant_act
from llmc.ir.parser import parse_graph
from llmc.ir.printer import print_graph
from llmc.passes import PassContext, PassOptionError, build_pipeline
from llmc.runtime.interp import run
from tests.cpu_kernels import check_rules, one_linear_graph, pack_codes
from tests.cpu_kernels import host_target as _target
from tests.cpu_kernels import panel as _panel

# ------------------------------------------------------------------------------ options and IR


def _quant(spec: str):
    return build_pipeline(spec).passes[0]


def test_options_record_act_bits() -> None:
    p = _quant("rtn:bits=4:group=32:act_bits=8")
    assert (p.act_bits, p.act_group, p._act_group()) == (8, None, 32)
    assert _quant("gptq:act_bits=8:act_group=0")._act_group() == 0
    assert _quant("rtn:bits=4").act_bits == 0


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("rtn:act_bits=4", "act_bits must be 0 .* or 8"),
        ("rtn:act_group=32", "act_group=32 needs act_bits=8"),
        ("gptq:act_bits=8:act_group=-1", "act_group must be >= 0"),
        ("rtn:act_bits=yes", "option act_bits must be an integer"),
    ],
)
def test_option_errors(spec: str, msg: str) -> None:
    with pytest.raises(PassOptionError, match=msg):
        _quant(spec)


def test_quant_spec_checks() -> None:
    with pytest.raises(IRError, match="act_bits must be 0"):
        QuantSpec(4, 32, act_bits=4)
    with pytest.raises(IRError, match="only set with act_bits=8"):
        QuantSpec(4, 32, act_group=32)
    assert str(StorageFormat(QuantSpec(4, 32))) == "quant(bits=4, group=32, sym=true, method=rtn)"


def _graph(codes: torch.Tensor, scale: torch.Tensor, spec: QuantSpec):
    return one_linear_graph(codes, scale, spec, "a8")


def test_printer_parser_round_trip() -> None:
    spec = QuantSpec(4, 8, True, "rtn", 8, 4)
    g = _graph(torch.zeros(3, 16, dtype=torch.int8), torch.ones(3, 2), spec)
    text = print_graph(g)
    assert "quant(bits=4, group=8, sym=true, method=rtn, act_bits=8, act_group=4)" in text
    assert parse_graph(text).params["fc.weight"].format.quant == spec
    bad = text.replace("act_group=4", "act_group=5")
    g2 = parse_graph(bad)  # parses; the verifier names the width that does not divide
    g2.params["fc.weight"].data = dict(g.params["fc.weight"].data)
    with pytest.raises(IRError, match="not divisible by act_group 5"):
        verify(g2)


def test_reference_semantics_by_hand() -> None:
    """One row of 8 inputs, act_group 4: two blocks, each quantized with its own scale."""
    codes = torch.tensor([[1, -2, 3, 0, 5, -7, 1, 2], [7, 7, -7, 1, 0, 0, 3, -1]], dtype=torch.int8)
    scale = torch.tensor([[0.5, 0.25], [0.125, 1.0]])
    x = torch.tensor([[1.0, -2.0, 0.3, 0.049, 10.0, 0.04, -0.2, 3.3]])
    g = _graph(codes, scale, QuantSpec(4, 4, True, "rtn", 8, 4))
    verify(g)
    y = run(g, [x])[0]
    # by hand: block 0 amax 2 -> s = 2/127; block 1 amax 10 -> s = 10/127
    xh = np.zeros(8)
    for b, amax in ((0, 2.0), (1, 10.0)):
        s = np.float32(amax) / np.float32(127)
        blk = x[0, 4 * b : 4 * b + 4].numpy()
        xh[4 * b : 4 * b + 4] = np.clip(np.round(blk / s), -127, 127) * s
    w = codes.double().numpy() * np.repeat(scale.double().numpy(), 4, axis=1)
    want = xh @ w.T
    np.testing.assert_allclose(y[0].double().numpy(), want, rtol=1e-6)
    # and it is not the float product (0.049 and 0.04 round to 3 and 1 codes of 10/127 ...)
    y0 = run(_graph(codes, scale, QuantSpec(4, 4)), [x])[0]
    assert not torch.allclose(y, y0, rtol=1e-4)


def test_fake_quant_act_per_row_and_errors() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    out = fake_quant_act(x, 8, 0)
    assert torch.equal(out[0], x[0])  # an all-zero row stays zero (scale floor 1e-30)
    torch.testing.assert_close(out[1], torch.tensor([1.0, -64 / 127]))
    assert fake_quant_act(x, 0, 0) is x
    with pytest.raises(IRError, match="not a multiple of act_group 3"):
        fake_quant_act(torch.zeros(1, 4), 8, 3)


def test_pass_records_per_layer_act_group_and_head(lm, ctx) -> None:
    g = lm.copy()
    build_pipeline("rtn:bits=4:group=128:act_bits=8:act_group=128").run(g, ctx)
    verify(g)
    specs = {n: p.format.quant for n, p in g.params.items() if p.format.quant is not None}
    assert specs and all(q.act_bits == 8 for q in specs.values())
    for name, q in specs.items():  # hidden 64 (one block per row), FFN 128
        k = int(g.params[name].type.shape[1])
        assert q.act_group == min(k, 128), (name, k, q)
    assert "lm_head.weight" in specs  # the 8-bit head records them too
    from llmc.inspect import format_key

    assert format_key(g.params["lm_head.weight"]) == "f32 int8 g64 sym rtn a8 ag64"
    assert ctx.report["act_bits"] == 8 and ctx.report["act_group"] == 128


def test_quality_close_to_float_activations(lm, ctx) -> None:
    """int8 activations in blocks of 32 cost little on top of int4 weights (and are in effect)."""
    from llmc.passes.calibration import lm_inputs

    a, b = lm.copy(), lm.copy()
    build_pipeline("rtn:bits=4:group=32").run(a, PassContext())
    build_pipeline("rtn:bits=4:group=32:act_bits=8").run(b, PassContext())
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    ins = lm_inputs(lm, ids)
    ref, ya, yb = (run(m, ins)[0] for m in (lm, a, b))
    ea, eb = (float((y - ref).norm() / ref.norm()) for y in (ya, yb))
    assert 0 < float((yb - ya).norm() / ref.norm()) < 0.05
    assert eb < ea * 1.5 + 0.01


# ------------------------------------------------------------------------------ CPU lowering


def _vnni() -> bool:
    from llmc.backends.cpu.pipeline import kernel_isa

    return kernel_isa() == "avx512_vnni"


vnni = pytest.mark.skipif(not _vnni(), reason="host CPU has no AVX-512 VNNI")


@vnni
@pytest.mark.parametrize(
    "kind,k,n,group,act_group",
    [
        ("q4", 256, 96, 32, 32),
        ("q4", 256, 70, 128, 32),
        ("q4", 256, 64, 32, 128),
        ("q4", 200, 64, 200, 0),
        ("q8w", 256, 96, 32, 32),
        ("q8w", 192, 65, 192, 64),
    ],
    ids=[
        "q4-g32-a32",
        "q4-g128-a32",
        "q4-g32-a128",
        "q4-perchannel-row",
        "q8-g32-a32",
        "q8-pc-a64",
    ],
)
def test_kernel_matches_reference(kind, k, n, group, act_group) -> None:
    """``act_int8`` + the one-digit kernel, and the kernel that quantizes the row itself,
    against ``fake_quant_act(x) @ w.T`` in fp64."""
    import tvm
    from tvm import te

    from llmc.backends.kernels import cpu_vnni as V

    rng = np.random.default_rng(k + n + group + act_group)
    rows = 2
    x = rng.standard_normal((rows, k)).astype("float32")
    x[:, 3] = 40.0  # an outlier: its block's scale is 40/127
    g = min(group, k)
    hi = 16 if kind == "q4" else 255
    u = rng.integers(0, hi, (n, k)).astype(np.uint8)
    sc = (rng.random((n, k // g)) * 0.02 + 1e-3).astype("float32")
    of = np.full((n, k // g), 8.0 if kind == "q4" else 127.0, "float32")
    w = (u - np.repeat(of, g, 1).astype(np.float64)) * np.repeat(sc, g, 1)
    xh = fake_quant_act(torch.from_numpy(x), 8, act_group).double().numpy()
    want = xh @ w.T
    kp = V.padded_k(k, group)
    ab = V.int8_block(k, group, act_group)
    assert ab is not None
    xt = te.placeholder((rows, k), "float32", name="x")
    d, s, gs = V.act_int8(xt, kp, ab, act_group, group)
    prep = tvm.compile(te.create_prim_func([xt, d, s, gs]), target=_target())
    fn = V.q4_vnni if kind == "q4" else V.q8w_vnni
    ex = tvm.compile(fn(k, n, group, 1, "float32", None, ab), _target())
    codes = pack_codes(u, kp, 64, nibbles=kind == "q4")
    cpu = tvm.cpu()

    def arr(a):
        return tvm.runtime.tensor(a, cpu)

    xd, xs = arr(np.zeros((rows, 1, kp), "int8")), arr(np.zeros((rows, kp // ab, 1), "float32"))
    gsum = arr(np.zeros((rows, k // g), "float32"))
    prep(arr(x), xd, xs, gsum)
    # the kernel's codes are the reference's: round(x / s) per act_group block
    ag = k if act_group == 0 else act_group
    xb = torch.from_numpy(x).reshape(rows, k // ag, ag)
    sref = xb.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    qref = torch.clamp(torch.round(xb / sref), -127, 127).reshape(rows, k)
    np.testing.assert_array_equal(xd.numpy()[:, 0, :k], qref.numpy().astype("int8"))
    out = arr(np.zeros((rows, n), "float32"))
    ex(xd, xs, gsum, arr(codes), arr(_panel(sc, n)), arr(_panel(of, n)), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the kernel quantizing the float row itself (``quantize``): the same codes and scales,
    # the group sums in another order; a padded K (per channel: 192 -> 256) or one not in whole
    # vectors of 16 (200) keeps act_int8
    assert V.fused_a8(k, group, act_group, ab) == (kp == k and k % 16 == 0)
    if V.fused_a8(k, group, act_group, ab):
        fused = tvm.compile(fn(k, n, group, 1, "float32", None, ab, False, act_group), _target())
        out1 = arr(np.zeros((rows, n), "float32"))
        fused(arr(x), arr(codes), arr(_panel(sc, n)), arr(_panel(of, n)), out1)
        tol = np.abs(want).max()
        np.testing.assert_allclose(out1.numpy(), want, rtol=1e-5, atol=1e-5 * tol)
        np.testing.assert_allclose(out1.numpy(), out.numpy(), rtol=1e-6, atol=1e-6 * tol)


def _compile_and_compare(g, art: Path) -> dict:
    from llmc.backends.cpu.pipeline import PIPELINE  # noqa: F401  (registers the target)
    from tests.backends.conftest import compile_graph

    compile_graph(g, "cpu", art)
    return check_rules(g, art)


def _toy(spec: str):
    from tests.lm_fixtures import toy_lm

    g = toy_lm(hidden=64, ffn=192)
    build_pipeline(spec).run(g, PassContext())
    return g


@vnni
@pytest.mark.parametrize(
    "bits",
    [
        4,
        # slow: test_scale_dtype's test_cpu_matches_interpreter[vnni-q8-a8] compiles and compares
        # the same spec (f16 scales) on the same toy; [4] runs q8w_vnni with int8 activations too
        pytest.param(8, marks=pytest.mark.slow),
    ],
)
def test_model_vnni_matches_interpreter(tmp_path, bits) -> None:
    rules = _compile_and_compare(_toy(f"rtn:bits={bits}:group=32:act_bits=8"), tmp_path / "a")
    assert rules.get("cpu.linear.vnni_q8w")  # the 8-bit head (and every body linear for bits=8)
    assert bool(rules.get("cpu.linear.vnni_q4")) == (bits == 4)
    assert not rules.get("act_quant.te")  # the VNNI kernels quantize the activations themselves


def test_portable_rules_fake_quantize(tmp_path, monkeypatch) -> None:
    """A host without VNNI: the float panel kernels on the TE fake-quantized input, exact."""
    import llmc.backends.cpu.pipeline as cpu_pipeline

    monkeypatch.setattr(cpu_pipeline, "kernel_isa", lambda: "portable")
    rules = _compile_and_compare(_toy("rtn:bits=4:group=32:act_bits=8"), tmp_path / "p")
    assert rules.get("cpu.linear.panel_q4") and rules.get("cpu.linear.panel_q8")
    assert rules["act_quant.te"] == rules["cpu.linear.panel_q4"] + rules["cpu.linear.panel_q8"]


# ------------------------------------------------------------------------------ other targets


def test_fpga_refuses_in_one_line() -> None:
    from llmc.fpga.arch import load_arch
    from llmc.fpga.layout import LayoutError
    from llmc.fpga.program import build_program

    g = _toy("rtn:bits=4:group=32:act_bits=8")
    with pytest.raises(LayoutError, match=r"act_bits=8 \(int8 activations, act_group=32\)") as e:
        build_program(g, load_arch("u280"))
    assert "\n" not in str(e.value)


def test_exports_keep_or_state_the_activation_precision(tmp_path) -> None:
    """GGUF Q4_0 keeps every code (llama.cpp's q8_0 activations are act_group=32 anyway);
    compressed-tensors and the HF export state the int8 activations instead of dropping them."""
    from llmc.export_ct import export_compressed_tensors
    from llmc.export_gguf import export_gguf
    from llmc.export_hf import export_hf
    from llmc.frontends import load_model

    tiny = load_model("tiny")
    g = tiny.graph.copy()
    build_pipeline("rtn:bits=4:group=32:act_bits=8").run(g, PassContext())
    kw = {"tokenizer": tiny.tokenizer, "config": tiny.config}
    s = export_gguf(g, tmp_path / "t.gguf", gguf_type="q4_0", exact=True, **kw)
    assert len(s["exact"]) == 29 and not s["requantized"]
    export_compressed_tensors(g, tmp_path / "ct", **kw)
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    acts = [grp["input_activations"] for grp in cfg["config_groups"].values()]
    assert acts and all(
        (a["num_bits"], a["strategy"], a["group_size"], a["dynamic"]) == (8, "group", 32, True)
        for a in acts
    )
    export_hf(g, tmp_path / "hf", **kw)
    comp = json.loads((tmp_path / "hf" / "llmc_compression.json").read_text())
    a = comp["input_activations"]["model.layers.0.mlp.down_proj.weight"]
    assert a["bits"] == 8 and a["granularity"] == "per-group of 32"


@pytest.mark.slow
def test_cuda_cross_compile_fake_quantizes(tmp_path) -> None:
    """H100 (code generation only, no device): every quantized linear gets the TE fake-quant."""
    from tests.backends.conftest import compile_graph

    g = _toy("rtn:bits=4:group=32:act_bits=8")
    compile_graph(g, "h100", tmp_path / "cuda")
    rules = json.loads((tmp_path / "cuda" / "manifest.json").read_text())["backend"][
        "lowering_rules"
    ]
    assert rules["act_quant.te"] == rules["linear.q4"] + rules["linear.q8g"] > 0
