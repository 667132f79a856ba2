"""Cross-compilation toolchain: finding nvcc / ROCm device libraries / ld.lld, and real GPU builds.

The build tests compile small kernels with TVM for cuda sm_80/sm_90 (nvcc, no GPU) and rocm
gfx90a/gfx942 (no ROCm), then inspect what came out: cubins and AMDGPU code objects (ELF machine,
architecture, code-object version, kernel symbols, disassembly). A missing tool skips them with the
reason, except under ``make test`` (``LLMC_REQUIRE_TOOLCHAIN=1``), where it fails them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from llmc.backends import elfcheck, toolchain
from llmc.backends.toolchain import ToolchainError

T = TypeVar("T")
REQUIRED = os.environ.get("LLMC_REQUIRE_TOOLCHAIN", "") not in ("", "0")


def _need(find: Callable[[], T]) -> T:
    """The tool, or a skip naming what is missing (a failure where the toolchain is required)."""
    try:
        return find()
    except ToolchainError as e:
        if REQUIRED:
            pytest.fail(f"toolchain required (LLMC_REQUIRE_TOOLCHAIN=1) but: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tvm() -> Any:
    return pytest.importorskip("tvm")


def _exp_module(tvm: Any) -> Any:
    """``B = exp(A)`` over 1024 float32, threads bound by hand (no schedule needed)."""
    from tvm.script import tirx as T

    @T.prim_func
    def exp_kernel(A: T.Buffer((1024,), "float32"), B: T.Buffer((1024,), "float32")):
        T.func_attr({"global_symbol": "exp_kernel", "tirx.noalias": True})
        for bx in T.thread_binding(8, thread="blockIdx.x"):
            for tx in T.thread_binding(128, thread="threadIdx.x"):
                B[bx * 128 + tx] = T.exp(A[bx * 128 + tx])

    return tvm.IRModule({"exp_kernel": exp_kernel})


def _relax_dlight_module(tvm: Any, target: Any) -> Any:
    """``sum(exp(x), axis=1)`` through Relax, the zero pipeline and dlight (the backends' path)."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 256), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.sum(relax.op.exp(x), axis=[1])))
        bb.emit_func_output(out)
    with target:
        mod = relax.get_pipeline("zero")(bb.get())
        return dl.ApplyDefaultSchedule(
            dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )(mod)


def _imports_of_kind(mod: Any, kind: str) -> list[Any]:
    """Every module of ``kind`` in a TVM module's import tree (host -> device modules)."""
    found, todo = [], [mod]
    while todo:
        m = todo.pop()
        found += [m] if m.kind == kind else []
        todo += list(m.imports)
    return found


# ------------------------------------------------------------------------------- ROCm builds


@pytest.mark.parametrize("mcpu", ["gfx90a", "gfx942"])
def test_rocm_build_holds_a_real_amdgpu_code_object(tvm: Any, tmp_path: Path, mcpu: str) -> None:
    _need(toolchain.find_rocm_toolchain)
    target = tvm.target.Target({"kind": "rocm", "mcpu": mcpu})
    with toolchain.rocm_toolchain():
        ex = tvm.compile(_exp_module(tvm), target=target)
        ex.export_library(str(tmp_path / "model.so"))
    objs = elfcheck.find_code_objects((tmp_path / "model.so").read_bytes())
    assert len(objs) == 1, objs
    co = objs[0]
    assert co.elf.e_machine == elfcheck.EM_AMDGPU
    assert co.elf.e_type == "DYN"  # linked by ld.lld, not a bare relocatable object
    assert co.arch == mcpu
    assert co.target_id is not None and co.target_id.endswith(mcpu)
    assert co.code_object_version == 6
    assert co.kernels == ("exp_kernel_kernel",)
    assert [k[".name"] for k in co.metadata["amdhsa.kernels"]] == ["exp_kernel_kernel"]

    _need(lambda: toolchain.find_llvm_objdump(elfcheck.MIN_LLVM_FOR_ARCH[mcpu]))
    listing = elfcheck.disassemble(co)
    assert "<exp_kernel_kernel>:" in listing
    ops = [i.split()[0] for i in elfcheck.instructions(listing)]
    assert "s_endpgm" in ops
    assert any(op.startswith("v_exp_f32") for op in ops), ops[:40]
    assert any(op.startswith("global_store") for op in ops), ops[:40]


def test_rocm_build_through_relax_and_dlight(tvm: Any, tmp_path: Path) -> None:
    _need(toolchain.find_rocm_toolchain)
    target = tvm.target.Target({"kind": "rocm", "mcpu": "gfx942"})
    with toolchain.toolchain_for("rocm"):
        ex = tvm.compile(_relax_dlight_module(tvm, target), target=target)
        ex.export_library(str(tmp_path / "model.so"))
    (co,) = elfcheck.find_code_objects((tmp_path / "model.so").read_bytes())
    assert co.arch == "gfx942" and co.code_object_version == 6
    assert len(co.kernels) == 1 and "exp" in co.kernels[0]


def test_rocm_toolchain_context_sets_and_restores_the_environment() -> None:
    tc = _need(toolchain.find_rocm_toolchain)
    before = dict(os.environ)
    with toolchain.rocm_toolchain(tvm=False) as got:
        assert got == tc
        assert Path(os.environ["ROCM_PATH"]) == tc.rocm_path
        assert (Path(os.environ["ROCM_PATH"]) / "amdgcn/bitcode/ocml.bc").is_file()
        first = os.environ["PATH"].split(os.pathsep)[0]
        version = toolchain.tool_version(Path(first) / "ld.lld")
        assert version is not None and version[0] >= toolchain.MIN_LLD_MAJOR
    assert dict(os.environ) == before


# ------------------------------------------------------------------------------- CUDA builds


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_build_compiles_with_nvcc(tvm: Any, arch: str) -> None:
    _need(toolchain.find_nvcc)
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    with toolchain.cuda_toolchain():
        ex = tvm.compile(_exp_module(tvm), target=target)
    (dev,) = _imports_of_kind(ex.mod, "cuda")
    source = dev.inspect_source()
    assert "exp_kernel_kernel" in source
    cubin = elfcheck.read_cubin(toolchain.nvcc_compile(source, arch, "cubin"))
    assert cubin.elf.e_machine == elfcheck.EM_CUDA
    assert cubin.arch == arch
    assert cubin.kernels == ("exp_kernel_kernel",)


def test_cuda_fatbin_through_relax_and_dlight(tvm: Any) -> None:
    _need(toolchain.find_nvcc)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    with toolchain.toolchain_for("cuda"):
        ex = tvm.compile(_relax_dlight_module(tvm, target), target=target)
    (dev,) = _imports_of_kind(ex.mod, "cuda")
    fatbin = toolchain.nvcc_compile(dev.inspect_source(), "sm_90", "fatbin")
    cubins = elfcheck.find_cubins(fatbin)
    assert [c.arch for c in cubins] == ["sm_90"]
    assert len(cubins[0].kernels) == 1 and "exp" in cubins[0].kernels[0]


def test_nvcc_compile_rejects_bad_arguments() -> None:
    with pytest.raises(ToolchainError, match="bad CUDA arch"):
        toolchain.nvcc_compile("", "gfx942")
    with pytest.raises(ToolchainError, match="bad nvcc output format"):
        toolchain.nvcc_compile("", "sm_90", "sass")


def test_nvcc_failure_is_reported_with_its_output() -> None:
    _need(toolchain.find_nvcc)
    with pytest.raises(toolchain.ToolFailedError, match="nvcc failed"):
        toolchain.nvcc_compile("this is not CUDA", "sm_80")


# ------------------------------------------------------------------------------- finding tools


def _fake_tool(directory: Path, name: str, version_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    p.chmod(0o755)
    return p


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no toolchain: empty PATH, toolchain dir and cache; no system ROCm."""
    for var in ("ROCM_PATH", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("LLMC_TOOLCHAIN_DIR", str(tmp_path / "tc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(toolchain, "_multiarch", lambda: "no-such-multiarch")
    monkeypatch.setattr(toolchain, "_ziglang_lld_wrapper", lambda: None)
    real_is_rocm = toolchain._is_rocm_path
    monkeypatch.setattr(
        toolchain, "_is_rocm_path", lambda p: str(p).startswith(str(tmp_path)) and real_is_rocm(p)
    )
    return tmp_path


def test_missing_device_libraries_say_how_to_install(bare: Path) -> None:
    with pytest.raises(ToolchainError, match=r"rocm-device-libs.*ROCM_PATH") as e:
        toolchain.find_rocm_path()
    assert "make toolchain" in str(e.value)


def test_rocm_path_env_is_honoured_only_when_valid(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = bare / "rocm"
    (good / "amdgcn/bitcode").mkdir(parents=True)
    (good / "amdgcn/bitcode/ocml.bc").write_bytes(b"BC")
    monkeypatch.setenv("ROCM_PATH", str(good))
    assert toolchain.find_rocm_path() == good
    monkeypatch.setenv("ROCM_PATH", str(bare / "nowhere"))
    with pytest.raises(ToolchainError):
        toolchain.find_rocm_path()
    (bare / "tc").mkdir()
    (bare / "tc/rocm").symlink_to(good)
    assert toolchain.find_rocm_path() == bare / "tc/rocm"


def test_missing_lld_says_how_to_install(bare: Path) -> None:
    with pytest.raises(ToolchainError, match="code-object v6") as e:
        toolchain.find_ld_lld()
    assert "make toolchain" in str(e.value) and "pip install ziglang" in str(e.value)


def test_old_lld_is_skipped_and_a_new_one_taken(bare: Path) -> None:
    _fake_tool(bare / "bin", "ld.lld", "Debian LLD 16.0.6 (compatible with GNU linkers)")
    with pytest.raises(ToolchainError, match=r"LLD 16\.0\.6"):
        toolchain.find_ld_lld()
    new = _fake_tool(bare / "bin", "ld.lld-22", "LLD 22.1.8 (compatible with GNU linkers)")
    assert toolchain.find_ld_lld() == new
    # a versioned name is shimmed so that plain `ld.lld` on PATH is the new one
    (bare / "tc/rocm/amdgcn/bitcode").mkdir(parents=True)
    (bare / "tc/rocm/amdgcn/bitcode/ocml.bc").write_bytes(b"BC")
    first = toolchain.rocm_env()["PATH"].split(os.pathsep)[0]
    assert (Path(first) / "ld.lld").resolve() == new.resolve()


def test_toolchain_dir_lld_comes_first(bare: Path) -> None:
    _fake_tool(bare / "bin", "ld.lld", "LLD 22.1.8")
    ours = _fake_tool(bare / "tc/bin", "ld.lld", "LLD 22.1.8")
    assert toolchain.find_ld_lld() == ours


def test_nvcc_from_cuda_home_and_missing_nvcc(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "Path", _NoSystemPath)
    with pytest.raises(ToolchainError, match="nvcc.*CUDA_HOME"):
        toolchain.find_nvcc()
    nvcc = _fake_tool(bare / "cuda/bin", "nvcc", "Cuda compilation tools, release 13.0")
    monkeypatch.setenv("CUDA_HOME", str(bare / "cuda"))
    assert toolchain.find_nvcc() == str(nvcc)


class _NoSystemPath(type(Path())):  # type: ignore[misc]
    """``Path`` that sees nothing under /usr/local (so the test ignores the machine's CUDA)."""

    def is_file(self) -> bool:
        return not str(self).startswith("/usr/local") and super().is_file()

    def glob(self, pattern: str) -> Iterator[Path]:  # type: ignore[override]
        return iter(()) if str(self).startswith("/usr/local") else super().glob(pattern)


def test_toolchain_for_other_kinds_needs_nothing() -> None:
    with toolchain.toolchain_for("llvm") as got:
        assert got is None


def test_describe_names_every_tool() -> None:
    assert set(toolchain.describe()) == {"nvcc", "rocm_path", "ld.lld", "llvm-objdump"}


# ------------------------------------------------------------------------------- ELF parsing


def _amdgpu_elf(e_flags: int, abi_version: int = 4, machine: int = elfcheck.EM_AMDGPU) -> bytes:
    """A minimal ELF64 AMDGPU object: a symbol table with ``k`` and ``k.kd``, nothing else."""
    strtab = b"\0k\0k.kd\0"
    shstr = b"\0.symtab\0.strtab\0.shstrtab\0"
    sym = struct.pack("<IBBHQQ", 0, 0, 0, 0, 0, 0)
    sym += struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0x100, 8)  # k: GLOBAL FUNC
    sym += struct.pack("<IBBHQQ", 3, 0x11, 0, 1, 0x40, 64)  # k.kd: GLOBAL OBJECT
    body = sym + strtab + shstr
    shoff = 64 + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1, elfcheck.ELFOSABI_AMDGPU_HSA, abi_version]) + b"\0" * 7
    hdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, shoff, e_flags, 64, 56, 0, 64, 4, 3
    )
    sh = b"\0" * 64
    sh += struct.pack("<IIQQQQIIQQ", 1, 2, 0, 0, 64, len(sym), 2, 1, 8, 24)
    sh += struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, 64 + len(sym), len(strtab), 0, 0, 1, 0)
    sh += struct.pack(
        "<IIQQQQIIQQ", 17, 3, 0, 0, 64 + len(sym) + len(strtab), len(shstr), 0, 0, 1, 0
    )
    return hdr + body + sh


def test_parse_minimal_amdgpu_object() -> None:
    co = elfcheck.read_code_object(_amdgpu_elf(0x54C))
    assert (co.arch, co.code_object_version, co.xnack, co.sramecc) == ("gfx942", 6, "any", "any")
    assert co.kernels == ("k",)
    assert co.target_id is None and co.metadata == {}
    assert [s.name for s in co.elf.symbols] == ["k", "k.kd"]
    assert [s.name for s in co.elf.sections] == ["", ".symtab", ".strtab", ".shstrtab"]
    assert elfcheck.read_code_object(_amdgpu_elf(0x33F, abi_version=3)).arch == "gfx90a"


def test_find_code_objects_in_a_blob() -> None:
    a, b = _amdgpu_elf(0x03F), _amdgpu_elf(0x04C)
    blob = b"junk\x7fELFnot really" + a + b"\0" * 13 + b + _amdgpu_elf(0x04C, machine=62)
    assert [c.arch for c in elfcheck.find_code_objects(blob)] == ["gfx90a", "gfx942"]


def test_bad_elf_inputs_raise_clear_errors() -> None:
    with pytest.raises(elfcheck.ElfError, match="magic"):
        elfcheck.parse_elf(b"\0" * 100)
    with pytest.raises(elfcheck.ElfError, match="truncated|past the end"):
        elfcheck.parse_elf(_amdgpu_elf(0x4C)[:-10])
    with pytest.raises(elfcheck.ElfError, match="e_machine 62"):
        elfcheck.read_code_object(_amdgpu_elf(0x4C, machine=62))
    with pytest.raises(elfcheck.ElfError, match="EF_AMDGPU_MACH value 0x7e"):
        elfcheck.read_code_object(_amdgpu_elf(0x7E))


def test_msgpack_metadata_decoding() -> None:
    blob = b"\x82\xadamdhsa.target\xbcamdgcn-amd-amdhsa-hcc-gfx942\xaeamdhsa.version\x92\x01\x02"
    assert elfcheck.unpack_msgpack(blob) == {
        "amdhsa.target": "amdgcn-amd-amdhsa-hcc-gfx942",
        "amdhsa.version": [1, 2],
    }
    assert elfcheck.unpack_msgpack(b"\xcd\x01\x00") == 256
    assert elfcheck.unpack_msgpack(b"\xff") == -1
    with pytest.raises(elfcheck.ElfError, match="truncated"):
        elfcheck.unpack_msgpack(b"\x92\x01")
