"""The AVX-512 VNNI CPU kernels (:mod:`llmc.backends.kernels.cpu_vnni`): kernel-level against an
fp64 NumPy product, model-level against the reference interpreter, the portable fallback, and
a golden check that the machine code uses ``vpdpbusd``.

Tolerances: the int4 kernel with 3 activation digits (the default) and the W8A8 kernel are held
to float32 tolerances (1e-4, as every CPU differential test); 1 digit (int8 activations, as
llama.cpp's q8) is held to 6e-2 of the output's largest magnitude (with an outlier).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmc.backends.cpu.pipeline import kernel_isa
from tests.backends.conftest import compile_graph
from tests.cpu_kernels import asm as _asm
from tests.cpu_kernels import check_rules as _check_against_interp
from tests.cpu_kernels import compress_q4 as _compress
from tests.cpu_kernels import host_target as _target
from tests.cpu_kernels import int8_panels, lane_panel
from tests.cpu_kernels import panel as _panel
from tests.cpu_kernels import run_vnni_q4 as _run_q4
from tests.cpu_kernels import run_vnni_q8w as _run_q8w
from tests.lm_fixtures import toy_lm

vnni = pytest.mark.skipif(kernel_isa() != "avx512_vnni", reason="host CPU has no AVX-512 VNNI")


@vnni
@pytest.mark.parametrize(
    "k,n,group",
    [(256, 96, 32), (256, 64, 64), (384, 130, 128), (200, 70, 200), (40, 64, 40), (96, 17, 16)],
    ids=["g32", "g64", "g128", "perchannel-k200", "perchannel-k40", "g16-n17"],
)
@pytest.mark.parametrize("rows,static", [(1, True), (3, False)], ids=["decode", "prefill"])
def test_q4_vnni_matches_fp64(k, n, group, rows, static):
    got, want, _ = _run_q4(k, n, group, 3, rows, static)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@vnni
@pytest.mark.parametrize("k,n,group", [(256, 96, 32), (384, 130, 128), (200, 70, 200)])
def test_q4_vnni_int8_activations_error(k, n, group):
    """One digit per activation (llama.cpp's q8): with an outlier 40x the typical activation in
    the first block, error within 6e-2 of the largest output (4.4e-2 seen per-channel), and
    far larger than three digits' (so the digit count is really in effect)."""
    got1, want, _ = _run_q4(k, n, group, 1, 1, True)
    got3, _, _ = _run_q4(k, n, group, 3, 1, True)
    scale = np.abs(want).max()
    err1, err3 = np.abs(got1 - want).max() / scale, np.abs(got3 - want).max() / scale
    assert err1 < 6e-2
    assert err3 < err1 / 100


@vnni
@pytest.mark.parametrize(
    "k,n,group",
    [(256, 96, 32), (384, 130, 128), (200, 70, 200), (96, 17, 16)],
    ids=["g32", "g128", "perchannel-k200", "g16-n17"],
)
@pytest.mark.parametrize("rows,static", [(1, True), (3, False)], ids=["decode", "prefill"])
@pytest.mark.parametrize("parts", [3, 1])
def test_q8w_vnni_matches_fp64(k, n, group, rows, static, parts):
    got, want, ex = _run_q8w(k, n, group, parts, rows, static)
    tol = 1e-4 if parts == 3 else 6e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert "vpdpbusd" in _asm(ex)


@vnni
@pytest.mark.parametrize(
    "k,n,rows,act_scale",
    [(770, 100, 2, 0.0), (64, 64, 1, 0.0), (3, 5, 2, 0.0), (200, 70, 1, 0.02), (48, 17, 1, 0.0)],
    ids=["k770-rows2", "decode", "k3", "static-scale", "k48-n17"],
)
def test_w8a8_vnni_exact(k, n, rows, act_scale):
    """The fused kernel (per-token quantization inside, then the int8 dot product) against
    ``qlinear_a8``'s reference steps: bit for bit, the rounding of ties and the clamp of a
    static scale's outliers included."""
    import tvm

    from llmc.backends.kernels import cpu_vnni as V
    from llmc.ir.ops_quant import int8_matmul, quantize_per_token

    rng = np.random.default_rng(k)
    x = rng.standard_normal((rows, k)).astype("float32")
    x[:, 2] = 127.0  # the row's max: s = 1 exactly (dynamic)
    x[:, 0] = 2.5  # a tie, rounded to even (2)
    if act_scale:
        x[:, 1] = 5.0  # 250 steps of the static scale: clamped to 127
    wq = rng.integers(-127, 128, (n, k)).astype("int8")
    ws = rng.random(n).astype("float32")
    codes, wsum = int8_panels(wq)
    ex = tvm.compile(V.w8a8_vnni(k, n, 1 if rows == 1 else None, act_scale), _target())
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, n), "float32"), cpu)
    args = [x, codes, wsum, lane_panel(ws, n)]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], out)
    q, s = quantize_per_token(torch.from_numpy(x), act_scale)
    want = int8_matmul(q, torch.from_numpy(wq)).to(torch.float32) * s * torch.from_numpy(ws)
    np.testing.assert_array_equal(out.numpy(), want.numpy())


@vnni
@pytest.mark.parametrize(
    "k,n,group", [(256, 96, 32), (384, 130, 128), (256, 64, 256)], ids=["g32", "g128", "pc"]
)
@pytest.mark.parametrize("kind", ["q4", "q8w"])
def test_kernel_splitting_the_row_itself(kind, k, n, group):
    """3 digits prepared inside the call (``quantize=0``, a vectorized prologue) against
    ``act_digits`` + ``group_sums`` + the kernel: within 1e-6 of the output (the group sums add
    in another order; the digits are the same), and the fp64 product within 1e-4; 2 rows, a
    symbolic row count."""
    import tvm

    from llmc.backends.kernels import cpu_vnni as V
    from tests.cpu_kernels import _weights, pack_codes, run_digits_kernel

    rng = np.random.default_rng(k + n + group + 7)
    top, mid = (16, 8.0) if kind == "q4" else (255, 127.0)
    x, u, sc, of, want = _weights(rng, 2, k, n, group, top, lambda r, s: np.full(s, mid, "f4"))
    fn = V.q4_vnni if kind == "q4" else V.q8w_vnni
    ref, _, _ = run_digits_kernel(V, fn, _target(), 64, x, u, sc, of, group, 3, False, kind == "q4")
    kp, ab = V.padded_k(k, group), V.act_block(k, group)
    assert V.fused_a8(k, group, ab, ab)
    ex = tvm.compile(fn(k, n, group, 3, "float32", None, None, False, 0), _target())
    cpu = tvm.cpu()
    codes = pack_codes(u, kp, 64, kind == "q4")
    args = [x, codes, _panel(sc, n), _panel(of, n), np.zeros((2, n), "float32")]
    args = [tvm.runtime.tensor(a, cpu) for a in args]
    ex(*args)
    got, tol = args[-1].numpy(), np.abs(want).max()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * tol)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * tol)


@vnni
def test_machine_code_uses_vpdpbusd():
    """Every kernel family issues ``vpdpbusd`` and allocates nothing per panel: its accumulators
    live on the stack (registers after LLVM), not in TVMBackendAllocWorkspace calls (what a
    ``local``-scope buffer or a name bound in a ``T.macro`` costs, see ``cpu.SCRATCH``)."""
    import tvm

    from llmc.backends.kernels import cpu_vnni as V

    for f in (
        V.q4_vnni(256, 64, 32, 3, "float32", 1),
        V.q4_vnni(256, (64, 96), 32, 1, "float16", 1, 32, True),  # act_bits=8, grouped
        V.q8w_vnni(256, 64, 256, 1, "float32", 1),
        V.w8a8_vnni(256, 64, 1),
    ):
        asm = _asm(tvm.compile(f, _target()))
        assert "vpdpbusd" in asm
        assert "TVMBackendAllocWorkspace" not in asm, f.attrs["global_symbol"]


# -- model level -----------------------------------------------------------------------------


@vnni
@pytest.mark.parametrize(
    "group,w8a8",
    [
        (32, False),
        # slow: [32-False] runs the same model path; test_q4_vnni_matches_fp64[*-g64] the group
        pytest.param(64, False, marks=pytest.mark.slow),
        (0, True),
    ],
)
def test_model_matches_interpreter(tmp_path, group, w8a8):
    """GPT-style toy (hidden 64, FFN 200: K = 200 is no multiple of the 128-element activation
    block, so per-channel pads it) through the VNNI kernels, prefill and decode."""
    g = _compress(toy_lm(hidden=64, ffn=200 if group == 0 else 192), group, w8a8)
    rules = _check_against_interp(g, compile_graph(g, "cpu", tmp_path / "cpu"))
    assert rules.get("cpu.linear.vnni_q4")
    assert not rules.get("cpu.linear.panel_q4")
    assert bool(rules.get("cpu.qlinear_a8.vnni")) == w8a8


@vnni
@pytest.mark.parametrize("bits,group", [(4, 32), (8, 0)], ids=["int4-g32+head8", "int8-channel"])
def test_8bit_weights_use_vnni(tmp_path, bits, group):
    """5..8-bit weight-only linears (the 8-bit LM head that ``head=true`` adds; ``rtn:bits=8``)
    run ``q8w_vnni``; the artifact stores the head's codes once (the layout has an inverse)."""
    from safetensors import safe_open

    from llmc.passes import PassContext
    from llmc.passes.manager import PassManager
    from llmc.passes.rtn import RTNQuant

    g = toy_lm(hidden=64, ffn=192)
    PassManager([RTNQuant(bits=bits, group=group, measure=False)]).run(g, PassContext())
    assert g.params["lm_head.weight"].format.quant.bits == 8
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    rules = _check_against_interp(g, art)
    assert rules.get("cpu.linear.vnni_q8w") and not rules.get("cpu.linear.panel_q8")
    assert bool(rules.get("cpu.linear.vnni_q4")) == (bits == 4)
    with safe_open(art / "params.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("lm_head.weight")], list(f.keys())


def test_portable_fallback(tmp_path, monkeypatch):
    """A host without VNNI gets the float panel kernels and the portable W8A8 loops."""
    import llmc.backends.cpu.pipeline as cpu_pipeline

    monkeypatch.setattr(cpu_pipeline, "kernel_isa", lambda: "portable")
    g = _compress(toy_lm(hidden=64, ffn=192), 32, True)
    rules = _check_against_interp(g, compile_graph(g, "cpu", tmp_path / "cpu"))
    assert rules.get("cpu.linear.panel_q4") and rules.get("qlinear_a8")
    assert not rules.get("cpu.linear.vnni_q4") and not rules.get("cpu.qlinear_a8.vnni")


@vnni
@pytest.mark.parametrize("rows,static", [(1, True), (2, False)], ids=["decode", "prefill-fallback"])
def test_w8a8_vnni_multi_exact(rows, static):
    """Three weights of different widths reading the same activations (q/k/v) in one call:
    each result bit for bit the reference's, as three separate ``qlinear_a8`` would give."""
    import tvm

    from llmc.backends.kernels import cpu_vnni as V
    from llmc.ir.ops_quant import int8_matmul, quantize_per_token

    k, ns = 70, (64, 17, 130)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, k)).astype("float32")
    q, s = quantize_per_token(torch.from_numpy(x))
    args, want = [x], []
    for n in ns:
        wq = rng.integers(-127, 128, (n, k)).astype("int8")
        ws = rng.random(n).astype("float32")
        args += [*int8_panels(wq), lane_panel(ws, n)]
        dot = int8_matmul(q, torch.from_numpy(wq)).to(torch.float32)
        want.append((dot * s * torch.from_numpy(ws)).numpy())
    ex = tvm.compile(V.w8a8_vnni_multi(k, ns, rows if static else None), _target())
    cpu = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros((rows, n), "float32"), cpu) for n in ns]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], *outs)
    for got, w in zip(outs, want):
        np.testing.assert_array_equal(got.numpy(), w)


@vnni
def test_w8a8_decode_groups_linears_sharing_an_input():
    """Decode lowers q/k/v into one ``w8a8_vnni`` call and gate/up into another (the same
    activations, quantized once), o and down alone: 4 calls for 7 linears per layer; prefill
    keeps one ``w8a8_prefill`` per linear but quantizes each distinct input once (``act_quant``
    for q/k/v together, gate/up together, o, down: 4)."""
    from llmc.backends.cpu.pipeline import PIPELINE
    from llmc.passes import PassContext
    from llmc.passes.manager import PassManager
    from llmc.passes.w8a8 import W8A8
    from llmc.targets import get_target

    g = toy_lm(hidden=64, ffn=96)
    PassManager([W8A8(include=("model.layers",), measure=False)]).run(g, PassContext())
    t = get_target("cpu")
    low = PIPELINE.lower(g, t, PIPELINE.tvm_target(t))
    fns = {gv.name_hint: str(f) for gv, f in low.mod.functions.items()}
    calls = [ln for ln in fns["decode_layer"].splitlines() if "call_tir(w8a8_vnni" in ln]
    assert sorted(ln.count("R.Tensor((1, ") for ln in calls) == [1, 1, 2, 3], calls
    assert "act_quant" not in fns["decode_layer"]
    assert fns["prefill_layer"].count("call_tir(w8a8_prefill") == 7
    assert fns["prefill_layer"].count("call_tir(act_quant") == 4
