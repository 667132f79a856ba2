"""The opt-in tensor-core prefill GEMM (llmc/backends/kernels/matmul_tc.py,
``LLMC_CUDA_TENSOR_CORES=1``): cross-compiled for sm_80/sm_90, prefill's float16 linears become
``mma.sync.aligned.m16n8k16`` in the artifact's PTX, decode keeps its GEMV; off by default.
Not run on a GPU yet (see docs/backends.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmc.backends.fatbin import find_fatbins, ptx_text
from llmc.backends.toolchain import ToolchainError
from llmc.ir import GraphBuilder, TensorType, sym
from tests.backends.conftest import compile_graph

MMA = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"


def _graph():
    b = GraphBuilder("lin16")
    x = b.input("x", TensorType((sym("batch"), sym("seq"), 128), "f16"))
    w = b.param("w", torch.randn(192, 128).to(torch.float16))
    b.output(b.emit("linear", x, w))
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def _ptx_and_rules(tmp_path: Path, target: str) -> tuple[str, dict]:
    try:
        art = compile_graph(_graph(), target, tmp_path / target)
    except ToolchainError as e:
        pytest.skip(str(e))
    (fb,) = find_fatbins((art / "model.so").read_bytes())
    ptx = next(e for e in fb.entries if e.kind == "ptx")
    try:
        text = ptx_text(ptx)
    except ToolchainError as e:
        pytest.skip(str(e))
    return text, json.loads((art / "manifest.json").read_text())["backend"]


@pytest.mark.parametrize("target", ["a100", "h100"])
def test_prefill_linear_uses_mma(tmp_path, monkeypatch, target):
    monkeypatch.setenv("LLMC_CUDA_TENSOR_CORES", "1")
    text, backend = _ptx_and_rules(tmp_path, target)
    # one kernel, 2 x 4 mma tiles per warp, unrolled: eight mma instructions
    assert text.count(MMA) == 8
    assert ".entry linear_tc_kernel" in text
    assert "cuda.linear.tensor_core" in json.dumps(backend["lowering_rules"])


def test_off_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMC_CUDA_TENSOR_CORES", raising=False)
    text, backend = _ptx_and_rules(tmp_path, "h100")
    assert "mma.sync" not in text
    assert "cuda.linear.tensor_core" not in json.dumps(backend["lowering_rules"])


def test_kernel_refuses_unsupported_shapes():
    from llmc.backends.kernels.matmul_tc import linear_tc, supported

    assert supported(4096, 4096) and supported(11008, 4096) and not supported(100, 64)
    with pytest.raises(ValueError, match="N % 64 == 0 and K % 16 == 0, got N=100"):
        linear_tc(100, 64)
