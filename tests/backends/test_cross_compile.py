"""Cross-compilation with no GPU: CUDA artifacts embed real cubins (sm_80, sm_90), ROCm artifacts
real AMDGPU code objects (gfx90a, gfx942), and a GPU artifact is refused on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmc.backends import elfcheck
from llmc.backends.toolchain import ToolchainError
from tests.backends.conftest import compile_graph
from tests.backends.test_codegen_golden import small_graph

ARCH = {"a100": "sm_80", "h100": "sm_90", "mi250x": "gfx90a", "mi300x": "gfx942"}


def _build(graph, target: str, out: Path) -> Path:
    try:
        return compile_graph(graph, target, out)
    except ToolchainError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def toy_gpu(tmp_path_factory, toy_graph):
    root = tmp_path_factory.mktemp("gpu")
    return {t: _build(toy_graph, t, root / t) for t in ("h100", "mi300x")}


def _kernels(art: Path) -> set[str]:
    return set(json.loads((art / "manifest.json").read_text())["backend"]["kernels"])


def test_cuda_artifact_has_cubins(toy_gpu):
    art = toy_gpu["h100"]
    cubins = elfcheck.find_cubins((art / "model.so").read_bytes())
    assert cubins and {c.arch for c in cubins} == {"sm_90"}
    names = {k.removesuffix("_kernel") for c in cubins for k in c.kernels}
    assert _kernels(art) <= names  # every TIR kernel became device code
    m = json.loads((art / "manifest.json").read_text())["backend"]
    assert m["arch"] == "sm_90" and m["device_code"][0]["fatbin"] > 0
    assert set(m["functions"]) == {"prefill", "prefill_last", "decode"}
    assert m["layer_functions"] == {"prefill_layer": 4, "decode_layer": 2}


def test_rocm_artifact_has_code_object(toy_gpu):
    art = toy_gpu["mi300x"]
    objs = elfcheck.find_code_objects((art / "model.so").read_bytes())
    assert len(objs) == 1
    co = objs[0]
    assert co.arch == "gfx942" and co.code_object_version >= 5
    names = {k.removesuffix("_kernel") for k in co.kernels}
    assert _kernels(art) <= names
    try:
        dis = elfcheck.disassemble(co)
    except ToolchainError as e:
        pytest.skip(str(e))
    assert "attention_kernel" in dis
    assert len(elfcheck.instructions(dis)) > 100


@pytest.mark.parametrize("target", ["a100", "mi250x"])
def test_other_archs(tmp_path, target):
    art = _build(small_graph(), target, tmp_path / target)
    blob = (art / "model.so").read_bytes()
    if target == "a100":
        archs = {c.arch for c in elfcheck.find_cubins(blob)}
    else:
        archs = {c.arch for c in elfcheck.find_code_objects(blob)}
    assert archs == {ARCH[target]}


@pytest.mark.parametrize("target", ["a100", "h100"])
def test_float16_matmuls_compile_for_cuda(tmp_path, target):
    """A float16 linear large enough for dlight's matmul rule (> 64 on every axis). The 0.27
    wheel's tensor-core rule crashed the process here, after a 40 s import of its intrinsics
    (see ``_simt_matmul`` in llmc/backends/gpu.py); neither may happen."""
    import sys

    import torch

    from llmc.ir import GraphBuilder, TensorType, sym

    b = GraphBuilder("lin16")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), 128), "f16"))
    w = b.param("w", torch.randn(128, 128).to(torch.float16))
    b.output(b.emit("linear", x, w))
    g = b.finish()
    g.meta = {"num_layers": 0}
    art = _build(g, target, tmp_path / target)
    cubins = elfcheck.find_cubins((art / "model.so").read_bytes())
    assert {c.arch for c in cubins} == {ARCH[target]}
    assert "tvm.s_tir.tensor_intrin" not in sys.modules


def test_gpu_artifact_refused_without_gpu(toy_gpu):
    import tvm

    from llmc.errors import LlmcError
    from llmc.runtime.tvm_runner import load

    if tvm.cuda(0).exist:
        pytest.skip("a CUDA device is present")
    with pytest.raises(LlmcError, match="no cuda device|cuda runtime|cannot load"):
        load(toy_gpu["h100"])


def test_missing_nvcc_names_the_tool(tmp_path, monkeypatch):
    from llmc.backends import toolchain

    def no_nvcc() -> str:
        raise toolchain.ToolchainError("nvcc (CUDA toolkit) not found; install it: ...")

    monkeypatch.setattr(toolchain, "find_nvcc", no_nvcc)
    with pytest.raises(ToolchainError, match="nvcc"):
        compile_graph(small_graph(), "h100", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_lld_names_the_tool(tmp_path, monkeypatch):
    from llmc.backends import toolchain

    def no_lld():
        raise toolchain.ToolchainError(
            "ld.lld >= 19 not found (AMDGPU code objects); run `make toolchain`"
        )

    monkeypatch.setattr(toolchain, "find_ld_lld", no_lld)
    with pytest.raises(ToolchainError, match="ld.lld"):
        compile_graph(small_graph(), "mi300x", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_where_bits_is_bit_exact(dtype):
    """``te_ops.where_bits`` (CUDA's select on a bool mask) against ``np.where``, bit for bit:
    NaN payloads, signed zeros and infinities pass through; the mask broadcasts over rows and
    ``y`` over the leading axes."""
    import numpy as np
    import tvm
    from tvm import te

    from llmc.backends.kernels import te_ops

    c = te.placeholder((2, 3, 1), "bool", name="c")
    x = te.placeholder((2, 3, 8), dtype, name="x")
    y = te.placeholder((8,), dtype, name="y")
    f = tvm.compile(te.create_prim_func([c, x, y, te_ops.where_bits(c, x, y)]), target="llvm")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 3, 8)).astype(dtype)
    xs[0, 0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    ys = rng.standard_normal(8).astype(dtype)
    ys[:2] = [-0.0, np.nan]
    ui = np.uint32 if dtype == "float32" else np.uint16
    xs.view(ui)[1, 2, 0] = 0x7FC00123 if dtype == "float32" else 0x7E05  # a NaN payload
    cs = np.array([True, False, True, False, False, True]).reshape(2, 3, 1)
    out = tvm.runtime.empty((2, 3, 8), dtype)
    f(*(tvm.runtime.tensor(a) for a in (cs, xs, ys)), out)
    np.testing.assert_array_equal(out.numpy().view(ui), np.where(cs, xs, ys).view(ui))
