"""The AVX2 CPU kernels (:mod:`llmc.backends.kernels.cpu_avx2`): kernel-level against an fp64
NumPy product (W8A8: the exact integer product), model-level against the reference interpreter
with ``LLMC_CPU_ISA=avx2`` (built for ``haswell``: the machine code holds no ``zmm`` register
and the manifest records only AVX2-level flags), the family selection and its errors.

Tolerances as in tests/backends/test_cpu_vnni.py: 3 activation digits at float32 tolerance
(1e-4), 1 digit within 6e-2 of the largest output (with an outlier 40x the typical activation).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from llmc.targets.cpu_isa import ISA_ENV, host_isa_flags
from tests.backends.conftest import compile_graph
from tests.cpu_kernels import asm as _asm
from tests.cpu_kernels import check_against_interp as _check_against_interp
from tests.cpu_kernels import compress_q4 as _compress
from tests.cpu_kernels import haswell_target as _target
from tests.cpu_kernels import int8_panels, lane_panel
from tests.cpu_kernels import run_avx2 as _run
from tests.lm_fixtures import toy_lm

avx2 = pytest.mark.skipif(
    not {"avx2", "fma"} <= set(host_isa_flags()), reason="host CPU has no AVX2"
)


@avx2
@pytest.mark.parametrize("kernel", ["q4", "q8w"])
@pytest.mark.parametrize(
    "k,n,group",
    [(256, 96, 32), (384, 130, 128), (200, 70, 200), (96, 17, 16)],
    ids=["g32", "g128", "perchannel-k200", "g16-n17"],
)
@pytest.mark.parametrize("rows,static", [(1, True), (3, False)], ids=["decode", "prefill"])
def test_avx2_matches_fp64(kernel, k, n, group, rows, static):
    got, want, ex = _run(kernel, k, n, group, 3, rows, static)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    asm = _asm(ex)
    assert "vpmaddubsw" in asm and "zmm" not in asm
    assert "TVMBackendAllocWorkspace" not in asm  # per-panel buffers on the stack (cpu.SCRATCH)


@avx2
@pytest.mark.parametrize("kernel", ["q4", "q8w"])
def test_avx2_int8_activations_error(kernel):
    """One digit (int8 activations): within 6e-2 of the largest output, and far worse than
    three digits (so the digit count is in effect)."""
    got1, want, _ = _run(kernel, 384, 130, 128, 1, 1, True)
    got3, _, _ = _run(kernel, 384, 130, 128, 3, 1, True)
    scale = np.abs(want).max()
    err1, err3 = np.abs(got1 - want).max() / scale, np.abs(got3 - want).max() / scale
    assert err1 < 6e-2
    assert err3 < err1 / 100


@avx2
@pytest.mark.parametrize("k,n", [(770, 100), (64, 64), (3, 5)])
def test_w8a8_avx2_exact(k, n):
    """Any int8 weight (-128 included) and activation codes in -127..127: the exact product."""
    import tvm

    from llmc.backends.kernels import cpu_avx2 as A

    rng = np.random.default_rng(k)
    rows = 2
    xq = rng.integers(-127, 128, (rows, k)).astype("int8")
    xq[:, 0] = -127
    xs = rng.random(rows).astype("float32")
    wq = rng.integers(-128, 128, (n, k)).astype("int8")
    wq[:, 0] = -128
    ws = rng.random(n).astype("float32")
    codes, _ = int8_panels(wq, 32)
    ex = tvm.compile(A.w8a8_avx2(k, n, None), _target())
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, n), "float32"), cpu)
    args = [xq, xs, codes, lane_panel(ws, n, 32)]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], out)
    dot = xq.astype(np.int64) @ wq.astype(np.int64).T
    want = dot.astype(np.float32) * xs[:, None] * ws[None, :]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    asm = _asm(ex)
    assert "vpsignb" in asm and "zmm" not in asm
    assert "TVMBackendAllocWorkspace" not in asm


# -- selection ------------------------------------------------------------------------------------


def test_family_selection(monkeypatch):
    from llmc.errors import TargetError
    from llmc.targets.cpu_isa import build_isa, kernel_isa

    zen4 = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512_vnni"]
    zen3 = ["sse4_2", "avx", "avx2", "fma", "f16c"]
    monkeypatch.delenv(ISA_ENV, raising=False)
    assert kernel_isa(zen4).name == "avx512_vnni"
    assert kernel_isa(zen3).name == "avx2"
    assert kernel_isa(["sse4_2", "avx"]).name == "portable"
    # a host-chosen family builds for the host CPU and records its flags
    assert build_isa("znver3", zen3) == (kernel_isa(zen3), "znver3", zen3)
    assert build_isa("skylake-avx512", zen4[:6])[1:] == ("skylake-avx512", zen4[:6])
    monkeypatch.setenv(ISA_ENV, "avx2")
    isa, mcpu, flags = build_isa("znver4", zen4)
    assert (isa.name, mcpu, flags) == ("avx2", "haswell", zen3)
    assert build_isa("znver3", zen3)[1] == "znver3"
    with pytest.raises(TargetError, match=f"{ISA_ENV}=avx2: this CPU lacks avx2"):
        kernel_isa(["sse4_2", "avx"])
    monkeypatch.setenv(ISA_ENV, "avx9")
    with pytest.raises(TargetError, match=f"{ISA_ENV}='avx9': unknown"):
        kernel_isa(zen4)
    monkeypatch.setenv(ISA_ENV, "portable")
    assert kernel_isa(zen4).name == "portable"


def test_bad_isa_env_is_one_line_cli_error(tmp_path, monkeypatch, capsys):
    from llmc.cli import main

    monkeypatch.setenv(ISA_ENV, "avx9")
    monkeypatch.setenv("LLMC_NO_PROGRESS", "1")
    out = tmp_path / "art"
    rc = main(["compile", "tiny", "--target", "cpu", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ISA_ENV in lines[0] and "Traceback" not in err, err
    assert not out.exists()


# -- model level ----------------------------------------------------------------------------------


def _objdump_zmm(art: Path) -> list[str]:
    """Lines of the artifact's shared objects that name a zmm register."""
    hits = []
    for so in art.rglob("*.so"):
        r = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True)
        hits += [ln for ln in r.stdout.splitlines() if "%zmm" in ln]
    return hits


@avx2
@pytest.mark.parametrize(
    "group,w8a8,head8", [(32, True, False), (0, False, True)], ids=["g32+w8a8", "perchannel+head8"]
)
def test_model_matches_interpreter(tmp_path, monkeypatch, group, w8a8, head8):
    """GPT-style toy through the AVX2 kernels with ``LLMC_CPU_ISA=avx2`` on any AVX2 host:
    prefill and decode match the interpreter, the rules ran, the code has no zmm register, the
    manifest records AVX2-level flags only, and the codes are stored once (inverse layouts)."""
    import shutil

    from safetensors import safe_open

    monkeypatch.setenv(ISA_ENV, "avx2")
    g = _compress(toy_lm(hidden=64, ffn=200 if group == 0 else 192), group, w8a8, head8)
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    man = _check_against_interp(g, art)
    rules = man["backend"]["lowering_rules"]
    assert rules.get("cpu.linear.avx2_q4")
    assert not rules.get("cpu.linear.panel_q4") and not rules.get("cpu.linear.vnni_q4")
    assert bool(rules.get("cpu.qlinear_a8.avx2")) == w8a8
    assert bool(rules.get("cpu.linear.avx2_q8w")) == head8
    cpu = man["backend"]["cpu"]
    assert not [f for f in cpu["isa"] if f.startswith("avx512")]
    assert "avx2" in cpu["isa"]
    if shutil.which("objdump"):
        assert _objdump_zmm(art) == []
    with safe_open(art / "params.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.endswith("qvalue")], list(f.keys())


def test_avx2_artifact_refused_without_avx2(tmp_path, monkeypatch):
    """The runtime's host check reads the recorded flags: an AVX2 artifact on a CPU without
    AVX2 is refused with one line naming the artifact."""
    from llmc.errors import LlmcError
    from llmc.runtime import tvm_runner

    man = {
        "target_kind": "cpu",
        "target": "cpu",
        "backend": {"cpu": {"mcpu": "haswell", "isa": ["sse4_2", "avx", "avx2", "fma"]}},
    }
    monkeypatch.setattr("llmc.targets.cpu_isa.host_isa_flags", lambda cpuinfo="": ["sse4_2", "avx"])
    with pytest.raises(LlmcError, match="avx2, fma") as e:
        tvm_runner.check_host(man, tmp_path)
    assert "\n" not in str(e.value)
