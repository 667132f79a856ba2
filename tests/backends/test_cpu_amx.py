"""The AMX W8A8 prefill kernel (:mod:`llmc.backends.kernels.cpu_amx`): bit-identical to the
AVX-512 VNNI kernel (:func:`llmc.backends.kernels.cpu_gemm.w8a8_prefill`) on rows, K and N that
are no multiple of the 32-row block, the 64-byte tile or the 64-wide panel; its machine code;
the compile-time choice (``LLMC_CPU_AMX``); and the runtime's refusal, one line naming the
artifact, when Linux withholds the tile state. The kernel tests skip where the host has no AMX
or the OS refuses it; the choice and refusal tests run anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.targets.cpu_isa import host_isa_flags, request_amx, use_amx
from tests.cpu_kernels import asm, host_target, int8_panels, lane_panel

_HOST = host_isa_flags()
amx = pytest.mark.skipif(
    not ({"amx_tile", "amx_int8", "avx512_vnni"} <= set(_HOST)) or request_amx() is not None,
    reason="host CPU has no AMX int8 (or Linux refuses the tile state)",
)


def _build(f):
    import tvm

    return tvm.compile(f, host_target())


def _args(rows: int, k: int, n: int):
    rng = np.random.default_rng(rows * k + n)
    xq = rng.integers(-128, 128, (rows, k)).astype("int8")  # -128 too: the int8 edge
    xs = rng.random(rows).astype("float32")
    wq = rng.integers(-127, 128, (n, k)).astype("int8")
    ws = rng.random(n).astype("float32")
    codes, wsum = int8_panels(wq)
    return [xq, xs, codes, wsum, lane_panel(ws, n)]


@amx
@pytest.mark.parametrize(
    "rows,k,n",
    [(1, 4, 3), (13, 772, 100), (33, 68, 130), (161, 128, 64)],
    ids=["one-row", "ragged", "two-blocks-k-tail", "chunks"],
)
def test_amx_prefill_bit_identical_to_vnni(rows, k, n):
    """``ragged``: K = 772 = 12 tiles + a 4-byte tail (the zero-padded weight scratch), 13 rows
    of one 32-row block; ``two-blocks-k-tail``: 33 rows (a block + 1 row), 3 panels; ``chunks``:
    161 rows in 2 evened chunks of at most 128 rows."""
    import tvm

    from llmc.backends.kernels import cpu_amx as A
    from llmc.backends.kernels import cpu_gemm as G

    args = [tvm.runtime.tensor(a) for a in _args(rows, k, n)]
    outs = []
    for f in (G.w8a8_prefill(k, n), A.w8a8_prefill_amx(k, n)):
        out = tvm.runtime.tensor(np.full((rows, n), 7.0, "float32"))
        _build(f)(*args, out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[1], outs[0])


@amx
def test_amx_prefill_machine_code_uses_tiles():
    from llmc.backends.kernels import cpu_amx as A

    text = asm(_build(A.w8a8_prefill_amx(128, 64)))
    assert "ldtilecfg" in text and "tilerelease" in text
    assert text.count("tdpbssd") >= 8  # two 64-byte tiles of K, 2 x 2 tiles each
    assert "vpdpbusd" not in text


def test_amx_choice_follows_flags_and_env(monkeypatch):
    monkeypatch.delenv("LLMC_CPU_AMX", raising=False)
    assert use_amx(["avx512_vnni", "amx_tile", "amx_int8"])
    assert not use_amx(["avx512_vnni", "amx_tile"])  # amx_bf16-only parts have no int8 tiles
    assert not use_amx(["avx2", "fma"])  # LLMC_CPU_ISA=avx2 records no AMX flag
    monkeypatch.setenv("LLMC_CPU_AMX", "0")
    assert not use_amx(["avx512_vnni", "amx_tile", "amx_int8"])


def test_amx_artifact_refused_in_one_line_when_linux_refuses(monkeypatch, tmp_path):
    from llmc.runtime import tvm_runner
    from llmc.targets import cpu_isa

    manifest = {"target_kind": "cpu", "backend": {"cpu": {"isa": [], "amx": True}}}
    monkeypatch.setattr(cpu_isa, "request_amx", lambda: "Linux refused the AMX tile state (test)")
    with pytest.raises(tvm_runner.ArtifactTargetError) as e:
        tvm_runner.check_host(manifest, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "LLMC_CPU_AMX=0" in msg
    # an artifact whose prefill is the VNNI kernel loads without asking
    manifest["backend"]["cpu"]["amx"] = False
    tvm_runner.check_host(manifest, tmp_path)


def test_prefill_amx_peak_only_where_the_build_uses_amx(monkeypatch):
    from llmc.targets.host import prefill_amx_peak

    monkeypatch.delenv("LLMC_CPU_AMX", raising=False)
    monkeypatch.delenv("LLMC_CPU_ISA", raising=False)
    pk = {"f32_per_core": 1e11, "i8_per_core": 7e11, "amx": {"i8_per_core": 4e12}}
    flags = {"avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}
    assert prefill_amx_peak(pk, flags, 2) == 8e12
    assert prefill_amx_peak(pk, flags - {"amx_int8"}, 2) is None
    assert prefill_amx_peak({**pk, "amx": "not present"}, flags, 2) is None
    monkeypatch.setenv("LLMC_CPU_ISA", "avx2")  # an AVX2 build records no AMX flag
    assert prefill_amx_peak(pk, flags, 2) is None
    monkeypatch.delenv("LLMC_CPU_ISA")
    monkeypatch.setenv("LLMC_CPU_AMX", "0")
    assert prefill_amx_peak(pk, flags, 2) is None


def test_roofline_prefill_w8a8_reads_the_amx_peak():
    """Prefill's W8A8 linears are bound by the AMX rate where the spec has one (``i8_prefill``);
    decode's keep ``i8`` (vpdpbusd), and a spec without it leaves prefill on ``i8`` too."""
    from llmc.codesign.roofline import PREFILL_I8, Scenario, analyze
    from llmc.passes import PassContext
    from llmc.passes.manager import PassManager
    from llmc.passes.w8a8 import W8A8
    from llmc.targets.spec import HardwareSpec
    from tests.lm_fixtures import toy_lm

    g = toy_lm(hidden=64, ffn=200)
    PassManager([W8A8(include=("model.layers",), measure=False)]).run(
        g, PassContext(calib_samples=2, calib_seqlen=32)
    )
    peaks = {"f32": 2e11, "f16": 2e11, "bf16": 2e11, "i8": 8e11}
    sc = Scenario(prompt=512, decode=16)
    amx = analyze(g, HardwareSpec({**peaks, PREFILL_I8: 8e12}, 40e9, 16e9), sc)
    vnni = analyze(g, HardwareSpec(peaks, 40e9, 16e9), sc)
    pre = {r.peak_dtype for r in amx.groups("prefill")}
    assert PREFILL_I8 in pre and "i8" not in pre
    assert "i8" in {r.peak_dtype for r in amx.groups("decode")}
    assert PREFILL_I8 not in {r.peak_dtype for r in amx.groups("decode")}
    assert PREFILL_I8 not in {r.peak_dtype for r in vnni.groups("prefill")}
    assert amx.totals["prefill"]["time_ms"] < vnni.totals["prefill"]["time_ms"]
    assert amx.totals["decode"]["time_ms"] == vnni.totals["decode"]["time_ms"]
