"""Grouped CPU decode linears (:mod:`llmc.backends.kernels.cpu_group`): q/k/v and gate/up in one
kernel call, for the weight-only VNNI and AVX2 kernels and the AVX2 W8A8 kernel.

Kernel level: a grouped call of 2 or 3 weights of different widths (GQA: k/v narrower than q)
gives, weight by weight, bit for bit what the single kernels give on the same prepared
activations (the single kernels are held to fp64 in test_cpu_vnni.py / test_cpu_avx2.py; W8A8
to the exact integer product here). Lowering level: the decode layer of a Llama-shaped toy calls
4 kernels for its 7 linears. Model level (slow: two compiles each): the logits of an artifact
compiled with grouping equal, bit for bit, those of one compiled without (``MAX_GROUP = 1``),
and match the interpreter; the AVX2 variants run with ``LLMC_CPU_ISA=avx2``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmc.backends.cpu.pipeline import kernel_isa
from llmc.targets.cpu_isa import ISA_ENV, host_isa_flags
from tests.backends.conftest import compile_graph, interp_run
from tests.cpu_kernels import int8_panels, lane_panel, pack_codes, panel
from tests.lm_fixtures import toy_lm

vnni = pytest.mark.skipif(kernel_isa() != "avx512_vnni", reason="host CPU has no AVX-512 VNNI")
avx2 = pytest.mark.skipif(
    not {"avx2", "fma"} <= set(host_isa_flags()), reason="host CPU has no AVX2"
)

#: GQA-shaped groups: q/k/v (k, v narrower than q) and gate/up
WIDTHS = [(96, 32, 32), (130, 70)]


def _target(isa: str):
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu() if isa == "vnni" else "haswell"})


def _weight(rng, kernel: str, n: int, k: int, kp: int, g: int, nb: int) -> list[np.ndarray]:
    """Random codes in the quad-panel layout (q4: two nibbles per byte), scales, offsets."""
    u = rng.integers(0, 16 if kernel == "q4" else 256, (n, k)).astype(np.uint8)
    sc = (rng.random((n, k // g)) * 0.02 + 1e-3).astype("float32")
    of = (rng.random((n, k // g)) * 4 + (6 if kernel == "q4" else 126)).astype("float32")
    return [pack_codes(u, kp, nb, kernel == "q4"), panel(sc, n, nb), panel(of, n, nb)]


@pytest.mark.parametrize("widths", WIDTHS, ids=["qkv", "gate-up"])
@pytest.mark.parametrize(
    "isa,kernel,k,group,parts",
    [
        pytest.param("vnni", "q4", 256, 32, 3, marks=vnni, id="vnni-q4-g32"),
        pytest.param("vnni", "q4", 256, 32, 1, marks=vnni, id="vnni-q4-g32-1digit"),
        pytest.param("vnni", "q8w", 200, 200, 3, marks=vnni, id="vnni-q8w-perchannel"),
        pytest.param("avx2", "q4", 256, 64, 3, marks=avx2, id="avx2-q4-g64"),
        pytest.param("avx2", "q8w", 192, 32, 1, marks=avx2, id="avx2-q8w-g32-1digit"),
    ],
)
def test_grouped_weight_only_equals_single(isa, kernel, k, group, parts, widths):
    import tvm
    from tvm import te

    from llmc.backends.kernels import cpu_avx2 as A
    from llmc.backends.kernels import cpu_vnni as V

    mod, nb = (V, V.NB) if isa == "vnni" else (A, A.NB)
    fn = getattr(mod, f"{kernel}_{isa}")
    rng = np.random.default_rng(k + group + len(widths))
    x = rng.standard_normal((1, k)).astype("float32")
    x[:, 3] = 40.0
    g = min(group, k)
    kp, ab = mod.padded_k(k, group), mod.act_block(k, group)
    xt = te.placeholder((1, k), "float32", name="x")
    d, s = mod.act_digits(xt, kp, ab, parts)
    prep = tvm.compile(te.create_prim_func([xt, d, s, V.group_sums(xt, group)]), _target(isa))
    cpu = tvm.cpu()

    def arr(a):
        return tvm.runtime.tensor(a, cpu)

    acts = [arr(np.zeros(sh, dt)) for sh, dt in [((1, parts, kp), "int8"),
            ((1, kp // ab, parts), "float32"), ((1, k // g), "float32")]]  # fmt: skip
    prep(arr(x), *acts)
    ws = [[arr(a) for a in _weight(rng, kernel, n, k, kp, g, nb)] for n in widths]
    want = []
    for n, w in zip(widths, ws, strict=True):
        out = arr(np.zeros((1, n), "float32"))
        tvm.compile(fn(k, n, group, parts, "float32", 1), _target(isa))(*acts, *w, out)
        want.append(out.numpy())
    outs = [arr(np.zeros((1, n), "float32")) for n in widths]
    grouped = tvm.compile(fn(k, widths, group, parts, "float32", 1), _target(isa))
    grouped(*acts, *[a for w in ws for a in w], *outs)
    for got, w in zip(outs, want, strict=True):
        np.testing.assert_array_equal(got.numpy(), w)


@avx2
@pytest.mark.parametrize("widths", WIDTHS, ids=["qkv", "gate-up"])
def test_grouped_w8a8_avx2_exact(widths):
    """W8A8 on AVX2, a group in one call: each result the exact int32 product times the scales."""
    import tvm

    from llmc.backends.kernels import cpu_avx2 as A

    k = 70  # a partial last quad
    rng = np.random.default_rng(3)
    xq = rng.integers(-127, 128, (1, k)).astype("int8")
    xs = np.array([0.02], "float32")
    args, want = [xq, xs], []
    for n in widths:
        wq = rng.integers(-128, 128, (n, k)).astype("int8")
        ws = rng.random(n).astype("float32")
        args += [int8_panels(wq, A.NB)[0], lane_panel(ws, n, A.NB)]
        dot = xq.astype(np.int64) @ wq.T.astype(np.int64)
        want.append((dot.astype(np.float32) * xs[0] * ws).astype("float32"))
    ex = tvm.compile(A.w8a8_avx2(k, widths, 1), _target("avx2"))
    cpu = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros((1, n), "float32"), cpu) for n in widths]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], *outs)
    for got, w in zip(outs, want, strict=True):
        np.testing.assert_array_equal(got.numpy(), w)


# -- lowering and model level ---------------------------------------------------------------------


def _toy(spec: str):
    from llmc.passes import PassContext, build_pipeline

    g = toy_lm(hidden=64, ffn=192)  # q 64, k/v 32 (GQA), gate/up 192
    build_pipeline(spec).run(g, PassContext())
    return g


def _decode_layer(g) -> str:
    """The CPU pipeline's ``decode_layer`` function, lowered with the decode entry alone (the
    prefill entries' layer function and kernels were half the lowering's CPU time)."""
    import copy

    from llmc.backends.cpu.pipeline import PIPELINE
    from llmc.targets import get_target

    pipe = copy.copy(PIPELINE)
    pipe.entries = tuple(e for e in PIPELINE.entries if e.name == "decode")
    assert len(pipe.entries) == 1
    t = get_target("cpu")
    low = pipe.lower(g, t, pipe.tvm_target(t))
    return {gv.name_hint: str(f) for gv, f in low.mod.functions.items()}["decode_layer"]


@pytest.mark.parametrize(
    "isa,spec,kernel",
    [
        pytest.param("vnni", "rtn:bits=4:group=32", "q4_vnni", marks=vnni, id="vnni-rtn4"),
        pytest.param(
            "vnni", "rtn:bits=8:group=32:act_bits=8", "q8w_vnni", marks=vnni, id="vnni-rtn8-a8"
        ),
        pytest.param("avx2", "rtn:bits=4:group=32:act_bits=8", "q4_avx2", marks=avx2, id="avx2-a8"),
        pytest.param("avx2", "w8a8", "w8a8_avx2", marks=avx2, id="avx2-w8a8"),
    ],
)
def test_decode_layer_calls_one_kernel_per_group(monkeypatch, isa, spec, kernel):
    """7 linears per layer, 4 kernel calls at decode: q/k/v (3 results), o, gate/up (2), down;
    the activations prepared once per call. Without grouping (``MAX_GROUP = 1``): 7 calls."""
    from llmc.backends.kernels import cpu_group

    if isa == "avx2":
        monkeypatch.setenv(ISA_ENV, "avx2")
    fn = _decode_layer(_toy(spec))
    calls = [ln for ln in fn.splitlines() if f"call_tir({kernel}" in ln]
    assert sorted(ln.count("R.Tensor((1, ") for ln in calls) == [1, 1, 2, 3], calls
    prep = {"q4_avx2": "avx2_digits", "w8a8_avx2": "act_quant"}
    if kernel in prep:
        assert fn.count(f"call_tir({prep[kernel]}") == 4, fn
    else:  # VNNI: the activations prepared inside each call (cpu_vnni.fused_a8)
        assert "vnni_act_int8" not in fn and "vnni_digits" not in fn and "vnni_gsum" not in fn
    monkeypatch.setattr(cpu_group, "MAX_GROUP", 1)
    fn1 = _decode_layer(_toy(spec))
    assert fn1.count(f"call_tir({kernel}") == 7


def _decode_logits(art):
    from llmc.runtime.tvm_runner import load

    lm = load(art)
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (1, 5))
    _, present = lm.forward(ids, torch.arange(5)[None], lm.empty_past(1))
    got, _ = lm.forward(torch.tensor([[7]]), torch.tensor([[5]]), present)
    return got, [ids, present]


@pytest.mark.slow
@pytest.mark.parametrize(
    "isa,spec",
    [
        pytest.param("vnni", "rtn:bits=4:group=32:act_bits=8", marks=vnni, id="vnni-rtn4-a8"),
        pytest.param("vnni", "rtn:bits=4:group=128", marks=vnni, id="vnni-rtn4-g128"),
        pytest.param("vnni", "rtn:bits=8:group=32", marks=vnni, id="vnni-rtn8"),
        pytest.param("vnni", "rtn:bits=8:group=32:act_bits=8", marks=vnni, id="vnni-rtn8-a8"),
        pytest.param("avx2", "rtn:bits=4:group=32", marks=avx2, id="avx2-rtn4"),
        pytest.param("avx2", "rtn:bits=8:group=32:act_bits=8", marks=avx2, id="avx2-rtn8-a8"),
    ],
)
def test_grouped_model_equals_ungrouped(tmp_path, monkeypatch, isa, spec):
    """Decode logits with grouping equal those without, bit for bit, and match the interpreter."""
    from llmc.backends.kernels import cpu_group

    if isa == "avx2":
        monkeypatch.setenv(ISA_ENV, "avx2")
    g = _toy(spec)
    got, (ids, present) = _decode_logits(compile_graph(g, "cpu", tmp_path / "grouped"))
    with monkeypatch.context() as m:
        m.setattr(cpu_group, "MAX_GROUP", 1)
        ref, _ = _decode_logits(compile_graph(_toy(spec), "cpu", tmp_path / "single"))
    assert torch.equal(got, ref)
    want = interp_run(
        g, [torch.tensor([[7]]), torch.tensor([[5]]), *[t for kv in present for t in kv]]
    )
    torch.testing.assert_close(got, want[0], rtol=1e-4, atol=1e-4)


@vnni
def test_inline_decode_groups_before_the_members_params_are_lowered():
    """A one-layer model is lowered inline (no outlined layer function): when q_proj is lowered,
    k_proj's and v_proj's ``param`` nodes come later in the graph and have no value yet; the
    group still finds their weights (``member_param``)."""
    from llmc.backends.cpu.pipeline import PIPELINE
    from llmc.passes import PassContext, build_pipeline
    from llmc.targets import get_target

    g = toy_lm(layers=1, hidden=64, ffn=192)
    build_pipeline("rtn:bits=4:group=32").run(g, PassContext())
    t = get_target("cpu")
    low = PIPELINE.lower(g, t, PIPELINE.tvm_target(t))
    fn = {gv.name_hint: str(f) for gv, f in low.mod.functions.items()}["decode"]
    calls = [ln for ln in fn.splitlines() if "call_tir(q4_vnni" in ln]
    assert sorted(ln.count("R.Tensor((1, ") for ln in calls) == [1, 1, 2, 3], calls
