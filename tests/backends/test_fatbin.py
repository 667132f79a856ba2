"""Reading CUDA fatbins without a GPU (llmc/backends/fatbin.py): nvcc's output for sm_80/sm_90
lists a cubin and PTX for the arch; damaged fatbins are refused."""

from __future__ import annotations

import struct

import pytest

from llmc.backends.elfcheck import ElfError
from llmc.backends.fatbin import find_fatbins, ptx_text, read_fatbin
from llmc.backends.toolchain import ToolchainError, nvcc_compile

SRC = r"""
extern "C" __global__ void scale_kernel(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
"""


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def built(request):
    try:
        return request.param, nvcc_compile(SRC, request.param, "fatbin")
    except ToolchainError as e:
        pytest.skip(str(e))


def test_fatbin_lists_cubin_and_ptx(built):
    arch, blob = built
    fb = read_fatbin(blob)
    assert fb.size <= len(blob)
    assert [e.kind for e in fb.entries] == ["elf", "ptx"]
    assert fb.archs("elf") == {arch} and fb.archs("ptx") == {arch}
    (cubin,) = fb.cubins()
    assert cubin.arch == arch and "scale_kernel" in cubin.kernels
    ptx = next(e for e in fb.entries if e.kind == "ptx")
    try:
        text = ptx_text(ptx)
    except ToolchainError as e:
        pytest.skip(str(e))
    assert f".target {arch}" in text and ".entry scale_kernel" in text
    assert ptx.uncompressed_size - len(text.encode()) in (0, 1)  # the size counts a NUL


def test_fatbin_found_inside_other_bytes(built):
    arch, blob = built
    found = find_fatbins(b"\0" * 123 + blob + b"tail")
    assert len(found) == 1 and found[0].archs("elf") == {arch}


def test_damaged_fatbins_are_refused(built):
    _, blob = built
    with pytest.raises(ElfError, match="magic"):
        read_fatbin(b"\0" * 16 + blob)
    with pytest.raises(ElfError, match="truncated"):
        read_fatbin(blob[: len(blob) // 2])
    bad = bytearray(blob)
    struct.pack_into("<H", bad, 16, 7)  # first entry's kind: neither PTX nor ELF
    with pytest.raises(ElfError, match="bad fatbin entry"):
        read_fatbin(bytes(bad))
    assert find_fatbins(bytes(bad)) == []
