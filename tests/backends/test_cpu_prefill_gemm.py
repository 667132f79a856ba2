"""The prefill GEMM kernels (:mod:`llmc.backends.kernels.cpu_gemm`): kernel-level against NumPy
on shapes that are no multiple of any block (rows vs the 6-row register block and the 96-row
chunk, N vs the 64-wide panel, K vs the 256-element slice), the W8A8 kernel exactly (integer
products), and through the compile path against the reference interpreter with a prefill of more
rows than one register block."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from llmc.backends.cpu.pipeline import kernel_isa
from tests.backends.conftest import compile_graph, interp_run
from tests.cpu_kernels import int8_panels, lane_panel, panel
from tests.lm_fixtures import toy_lm

vnni = pytest.mark.skipif(kernel_isa() != "avx512_vnni", reason="host CPU has no AVX-512 VNNI")


def _build(f):
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.compile(f, tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()}))


@pytest.mark.parametrize(
    "rows,k,n,kc",
    [(1, 8, 5, 256), (13, 600, 100, 256), (200, 70, 130, 32), (6, 256, 64, 256)],
    ids=["one-row", "ragged", "chunks-and-slices", "exact"],
)
def test_gemm_prefill_matches_numpy(rows, k, n, kc):
    import tvm

    from llmc.backends.kernels import cpu_gemm as G

    rng = np.random.default_rng(rows + k + n)
    x = rng.standard_normal((rows, k)).astype("float32")
    w = rng.standard_normal((n, k)).astype("float32")
    ex = _build(G.gemm_prefill(k, n, kc=kc))
    cpu = tvm.cpu()
    sentinel = np.full((rows, n), 7.0, "float32")
    out = tvm.runtime.tensor(sentinel, cpu)
    ex(tvm.runtime.tensor(x, cpu), tvm.runtime.tensor(panel(w, w.shape[0]), cpu), out)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _w8a8_args(rows: int, k: int, n: int):
    rng = np.random.default_rng(rows * k + n)
    xq = rng.integers(-128, 128, (rows, k)).astype("int8")  # -128 too: the sign flip's edge
    xs = rng.random(rows).astype("float32")
    wq = rng.integers(-127, 128, (n, k)).astype("int8")
    ws = rng.random(n).astype("float32")
    codes, wsum = int8_panels(wq)
    dot = xq.astype(np.int64) @ wq.astype(np.int64).T
    want = dot.astype(np.float32) * xs[:, None] * ws[None, :]
    return [xq, xs, codes, wsum, lane_panel(ws, n)], want


@vnni
@pytest.mark.parametrize(
    "rows,k,n",
    [(1, 4, 3), (13, 772, 100), (200, 64, 130), (97, 3072, 64), (200, 68, 581)],
    ids=["one-row", "ragged", "chunks", "long-k", "panel-groups"],
)
def test_w8a8_prefill_exact(rows, k, n):
    """``panel-groups``: 3 evened chunks (72, 72, 56 rows) x 10 panels in tasks of 3 (the last
    task one panel, ragged); K = 68: one 64-byte XOR and a 4-byte tail per row of the shift."""
    import tvm

    from llmc.backends.kernels import cpu_gemm as G

    args, want = _w8a8_args(rows, k, n)
    ex = _build(G.w8a8_prefill(k, n))
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.full((rows, n), 7.0, "float32"), cpu)
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)


def test_w8a8_prefill_needs_whole_quads():
    from llmc.backends.kernels import cpu_gemm as G

    assert G.supports_w8a8(768) and not G.supports_w8a8(770)
    with pytest.raises(AssertionError):
        G.w8a8_prefill(770, 64)


@vnni
def test_w8a8_prefill_machine_code_uses_vpdpbusd():
    from llmc.backends.kernels import cpu_gemm as G
    from tests.backends.test_cpu_vnni import _asm

    asm = _asm(_build(G.w8a8_prefill(256, 64)))
    assert asm.count("vpdpbusd") >= 24  # the 6 x 4 register block, unrolled
    # each row's 4 bytes are broadcast from memory (the u8 scratch), never from a general
    # register (a port-5 uop on Intel, beside the vpdpbusd)
    assert not re.search(r"vpbroadcastd\s+%[re]", asm)


@vnni
def test_w8a8_model_prefill_uses_the_blocked_kernel(tmp_path):
    """Every linear W8A8 (K = 64 and 200: the FFN's down projection has K % 4 == 0 too), a
    13-row prefill (two register blocks plus one row) and a decode step against the
    interpreter; the prefill entry calls ``w8a8_prefill``, decode keeps ``w8a8_vnni``."""
    from llmc.passes import PassContext
    from llmc.passes.manager import PassManager
    from llmc.passes.w8a8 import W8A8
    from llmc.runtime.tvm_runner import load

    g = toy_lm(hidden=64, ffn=200)
    PassManager([W8A8(include=("model.layers",), measure=False)]).run(
        g, PassContext(calib_samples=2, calib_seqlen=32)
    )
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    lm = load(art)
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (1, 13))
    pos = torch.arange(13)[None]
    past = lm.empty_past(1)
    got, present = lm.forward(ids, pos, past)
    want = interp_run(g, [ids, pos, *[t for kv in past for t in kv]])
    torch.testing.assert_close(got, want[0], rtol=1e-4, atol=1e-4)
    one = torch.tensor([[7]])
    got1, _ = lm.forward(one, torch.tensor([[13]]), present)
    want1 = interp_run(g, [one, torch.tensor([[13]]), *want[1:]])
    torch.testing.assert_close(got1, want1[0], rtol=1e-4, atol=1e-4)
    # one kernel per distinct linear shape and entry: every decode W8A8 kernel has its prefill twin
    text = b"".join(p.read_bytes() for p in art.rglob("*.so"))
    pre = set(re.findall(rb"__tvm_ffi_w8a8_prefill\d*", text))
    dec = set(re.findall(rb"__tvm_ffi_w8a8_vnni\d*", text))
    assert len(pre) == len(dec) >= 3, (pre, dec)
