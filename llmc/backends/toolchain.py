"""Find the external tools that TVM's GPU code generators call, so users never export anything.

Cross-compilation is the normal case (design.md, "Backends"): CUDA code builds on a machine with no
GPU, and ROCm code objects build on a machine with no ROCm. What each target needs at build time:

- **cuda**: ``nvcc`` (CUDA toolkit). TVM 0.27 keeps CUDA *source* in the built module;
  :func:`nvcc_compile` turns it into a cubin/fatbin so an artifact needs no compiler where it runs.
- **rocm**: the ROCm device libraries (LLVM bitcode ``ocml.bc``, ``oclc_*.bc``) under
  ``$ROCM_PATH/amdgcn/bitcode``, and an ``ld.lld`` that links AMDGPU code-object v6 (TVM's LLVM 22
  emits v6; LLD >= 19 links it, Debian 12's lld-16 refuses it).

``make toolchain`` (``tools/setup_toolchain.sh``) installs both into ``<repo>/.toolchain``::

    .toolchain/rocm/amdgcn/bitcode -> /usr/lib/x86_64-linux-gnu/amdgcn/bitcode  (rocm-device-libs)
    .toolchain/bin/ld.lld                                 (runs ``python -m ziglang ld.lld``: LLD 22)

Search order (the first valid one wins; an invalid ``ROCM_PATH`` or old ``ld.lld`` is skipped):

- ROCm device libraries: ``$ROCM_PATH``, ``<toolchain>/rocm``, ``/opt/rocm``,
  ``/usr/lib/<multiarch>`` (Debian's rocm-device-libs).
- ``ld.lld``: ``<toolchain>/bin/ld.lld``, ``ld.lld-NN`` / ``ld.lld`` on ``PATH`` (newest first),
  ``/opt/rocm/llvm/bin/ld.lld``, then the ``ziglang`` package if importable (a wrapper script is
  written to ``~/.cache/llmc/bin``).
- ``nvcc``: ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``PATH``, ``/usr/local/cuda/bin``,
  ``/usr/local/cuda-*/bin`` (newest first).

``<toolchain>`` is ``$LLMC_TOOLCHAIN_DIR``, else ``.toolchain`` in the checkout that holds this
package (an editable install), else ``.toolchain`` beside the running virtualenv.

Example::

    with toolchain_for("rocm"):        # sets ROCM_PATH, PATH and TVM's link callback, then restores
        ex = tvm.compile(mod, target=tvm.target.Target({"kind": "rocm", "mcpu": "gfx942"}))

    subprocess.run(cmd, env=rocm_env())    # the same, for a child process
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc.errors import TargetError

#: Oldest LLD that links AMDGPU code-object v6 (checked: LLD 19 and 22 link it, LLD 16 refuses it).
MIN_LLD_MAJOR = 19

_INSTALL_HINT = "run `make toolchain` (tools/setup_toolchain.sh)"


class ToolchainError(TargetError):
    """A tool a target needs is missing or unusable; the message names it and how to install it."""


class ToolFailedError(ToolchainError):
    """A tool ran and failed; the message carries the command and the end of its output."""


# ------------------------------------------------------------------------------- locating things


def repo_root() -> Path:
    """The checkout that holds this package (meaningful for an editable install)."""
    return Path(__file__).resolve().parents[2]


def toolchain_dir() -> Path | None:
    """``$LLMC_TOOLCHAIN_DIR`` or the ``.toolchain`` folder written by ``make toolchain``."""
    env = os.environ.get("LLMC_TOOLCHAIN_DIR")
    if env:
        return Path(env)
    for base in (repo_root(), Path(sys.prefix).parent):
        if (base / ".toolchain").is_dir():
            return base / ".toolchain"
    return None


def _multiarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, machine)


def _is_rocm_path(p: Path) -> bool:
    return (p / "amdgcn" / "bitcode" / "ocml.bc").is_file()


def find_rocm_path() -> Path:
    """A folder whose ``amdgcn/bitcode`` holds the ROCm device libraries (TVM's ``ROCM_PATH``)."""
    candidates: list[Path] = []
    if os.environ.get("ROCM_PATH"):
        candidates.append(Path(os.environ["ROCM_PATH"]))
    tc = toolchain_dir()
    if tc is not None:
        candidates.append(tc / "rocm")
    candidates += [Path("/opt/rocm"), Path("/usr/lib") / _multiarch()]
    for c in candidates:
        if _is_rocm_path(c):
            return c
    raise ToolchainError(
        "ROCm device libraries (amdgcn/bitcode/ocml.bc) not found in "
        f"{', '.join(str(c) for c in candidates)}; {_INSTALL_HINT} or "
        "`apt-get install rocm-device-libs`, or set ROCM_PATH to a ROCm installation"
    )


_VERSION_RE = re.compile(r"(?:LLD|LLVM version) (\d+)\.(\d+)(?:\.(\d+))?")


@functools.lru_cache(maxsize=64)
def _tool_version(path: str, mtime_ns: int) -> tuple[int, ...] | None:
    """``(major, minor, patch)`` from ``path --version`` (LLD or LLVM), None if it does not run."""
    del mtime_ns  # part of the cache key: a rewritten wrapper is asked again
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(out.stdout + out.stderr)
    if out.returncode != 0 or m is None:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def tool_version(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """Version of an LLVM tool (``ld.lld``, ``llvm-objdump``), or None if it does not run."""
    p = Path(path)
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        return None
    return _tool_version(str(p), mtime)


def _on_path(pattern: str) -> list[Path]:
    """Executables on PATH whose names match ``pattern`` (a regex), newest ``-NN`` suffix first."""
    rx = re.compile(pattern)
    found: dict[str, Path] = {}
    for d in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = os.listdir(d or ".")
        except OSError:
            continue
        for n in names:
            p = Path(d or ".") / n
            if rx.fullmatch(n) and n not in found and os.access(p, os.X_OK) and p.is_file():
                found[n] = p

    def suffix(name: str) -> int:
        m = re.search(r"-(\d+)$", name)
        return int(m.group(1)) if m else -1

    return [found[n] for n in sorted(found, key=suffix, reverse=True)]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmc"


def _ziglang_lld_wrapper() -> Path | None:
    """Write (once) a ``ld.lld`` script that runs this interpreter's ``ziglang`` package's LLD."""
    if importlib.util.find_spec("ziglang") is None:
        return None
    cache = _cache_dir() / "bin"
    script = f'#!/bin/sh\nexec "{sys.executable}" -m ziglang ld.lld "$@"\n'
    path = cache / "ld.lld"
    try:
        if not path.is_file() or path.read_text() != script:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache)
            with os.fdopen(fd, "w") as f:
                f.write(script)
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)
    except OSError:
        return None
    return path


def find_ld_lld() -> Path:
    """An ``ld.lld`` that links AMDGPU code-object v6 (LLD >= :data:`MIN_LLD_MAJOR`)."""
    candidates: list[Path] = []
    tc = toolchain_dir()
    if tc is not None:
        candidates.append(tc / "bin" / "ld.lld")
    candidates += _on_path(r"ld\.lld(-\d+)?")
    candidates.append(Path("/opt/rocm/llvm/bin/ld.lld"))
    seen: list[str] = []
    for c in candidates:
        if not c.is_file():
            continue
        v = tool_version(c)
        seen.append(f"{c} (LLD {'.'.join(map(str, v)) if v else 'does not run'})")
        if v is not None and v[0] >= MIN_LLD_MAJOR:
            return c
    zig = _ziglang_lld_wrapper()
    if zig is not None:
        v = tool_version(zig)
        if v is not None and v[0] >= MIN_LLD_MAJOR:
            return zig
        seen.append(f"{zig} (ziglang: LLD {'.'.join(map(str, v)) if v else 'does not run'})")
    tried = f" (tried: {'; '.join(seen)})" if seen else ""
    raise ToolchainError(
        f"ld.lld with AMDGPU code-object v6 support (LLD >= {MIN_LLD_MAJOR}) not found{tried}; "
        f"{_INSTALL_HINT} or `pip install ziglang`"
    )


def find_nvcc() -> str:
    """Path of ``nvcc`` (the CUDA toolkit's compiler driver)."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name))

    candidates += sorted(Path("/usr/local").glob("cuda-*/bin/nvcc"), key=version_key, reverse=True)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise ToolchainError(
        "nvcc (CUDA toolkit) not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin; "
        "install the CUDA toolkit (e.g. `apt-get install cuda-nvcc-13-0` from NVIDIA's repository) "
        "and put nvcc on PATH or set CUDA_HOME"
    )


def find_llvm_objdump(min_major: int = 0) -> str:
    """The newest ``llvm-objdump`` with LLVM major >= ``min_major`` (for AMDGPU disassembly)."""
    candidates = _on_path(r"llvm-objdump(-\d+)?")
    candidates += sorted(Path("/usr/lib").glob("llvm-*/bin/llvm-objdump"), reverse=True)
    candidates.append(Path("/opt/rocm/llvm/bin/llvm-objdump"))
    best: tuple[tuple[int, ...], Path] | None = None
    for c in candidates:
        v = tool_version(c) if c.is_file() else None
        if v is not None and v[0] >= min_major and (best is None or v > best[0]):
            best = (v, c)
    if best is None:
        raise ToolchainError(
            f"llvm-objdump (LLVM >= {max(min_major, 1)}) not found; {_INSTALL_HINT} "
            "or `apt-get install llvm-19`"
        )
    return str(best[1])


# ------------------------------------------------------------------------------- environments


@dataclass(frozen=True)
class RocmToolchain:
    """What TVM's rocm target needs: device libraries and a code-object-v6 ``ld.lld``."""

    rocm_path: Path
    ld_lld: Path

    @property
    def bitcode_dir(self) -> Path:
        return self.rocm_path / "amdgcn" / "bitcode"


def find_rocm_toolchain() -> RocmToolchain:
    """Both ROCm pieces, or :class:`ToolchainError` naming the missing one."""
    return RocmToolchain(rocm_path=find_rocm_path(), ld_lld=find_ld_lld())


def _prepend_path(env: dict[str, str], directory: str) -> None:
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != directory:
        env["PATH"] = os.pathsep.join([directory, *[p for p in parts if p != directory]])


def rocm_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with ``ROCM_PATH`` set and ``ld.lld`` first on PATH."""
    tc = find_rocm_toolchain()
    env = dict(os.environ if base is None else base)
    env["ROCM_PATH"] = str(tc.rocm_path)
    _prepend_path(env, str(_lld_bin_dir(tc.ld_lld)))
    return env


def _lld_bin_dir(ld_lld: Path) -> Path:
    """A folder whose ``ld.lld`` is ``ld_lld`` (a symlink in the cache when it is ``ld.lld-NN``)."""
    if ld_lld.name == "ld.lld":
        return ld_lld.parent
    shim = _cache_dir() / f"{ld_lld.name}-{hashlib.sha1(str(ld_lld).encode()).hexdigest()[:10]}"
    link = shim / "ld.lld"
    try:
        if not (link.is_symlink() and os.readlink(link) == str(ld_lld)):
            shim.mkdir(parents=True, exist_ok=True)
            tmp = shim / f".ld.lld.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(ld_lld)
            os.replace(tmp, link)
    except OSError:
        return ld_lld.parent  # read-only home: TVM is still given the linker by path in-process
    return shim


def cuda_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` with ``nvcc`` on PATH, ``CUDA_PATH`` set, TVM told to compile with nvcc."""
    nvcc = Path(find_nvcc())
    env = dict(os.environ if base is None else base)
    _prepend_path(env, str(nvcc.parent))
    home = _cuda_home(nvcc)
    if home is not None:
        env.setdefault("CUDA_PATH", str(home))
    # TVM's default is NVRTC through the `cuda-bindings` package, which llmc does not install.
    env.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    return env


def _cuda_home(nvcc: Path) -> Path | None:
    """The toolkit folder (with ``include/cuda.h``) that ``nvcc`` belongs to, if one is found."""
    candidates = [nvcc.resolve().parent.parent, Path("/usr/local/cuda")]
    candidates += sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for c in candidates:
        if (c / "include" / "cuda.h").is_file() and (c / "bin" / "nvcc").is_file():
            return c
    return None


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set the variables where ``env`` differs from ``os.environ`` for the block, then restore them.

    Process-wide, like any change to ``os.environ``: not for use from several threads at once.
    """
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    saved = {k: os.environ.get(k) for k in changed}
    os.environ.update(changed)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


@contextlib.contextmanager
def _tvm_rocm_linker(ld_lld: Path) -> Iterator[None]:
    """Point TVM's ``tvm_callback_rocm_link`` at ``ld_lld`` for the block.

    TVM looks for ``ld.lld`` in ``/bin`` before ``PATH``, so Debian's lld (v14/v16, no code-object
    v6) would win over ours; naming the linker explicitly avoids that.
    """
    import tvm.support.rocm as tvm_rocm  # registers TVM's own callback first
    import tvm_ffi

    name = "tvm_callback_rocm_link"
    original = tvm_ffi.get_global_func(name)

    def link(obj_bin: Any) -> bytearray:
        with tempfile.TemporaryDirectory(prefix="llmc-rocm-") as tmp:
            obj, cobj = Path(tmp) / "kernel.o", Path(tmp) / "kernel.co"
            obj.write_bytes(bytes(obj_bin))
            try:
                tvm_rocm.rocm_link(str(obj), str(cobj), lld=str(ld_lld))
            except RuntimeError as e:
                raise ToolFailedError(f"{ld_lld} failed to link an AMDGPU code object: {e}") from e
            return bytearray(cobj.read_bytes())

    tvm_ffi.register_global_func(name, link, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func(name, original, override=True)


@contextlib.contextmanager
def rocm_toolchain(*, tvm: bool = True) -> Iterator[RocmToolchain]:
    """Set ``ROCM_PATH`` and PATH (and, with ``tvm``, TVM's linker) for a rocm build, then restore."""
    tc = find_rocm_toolchain()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environ(rocm_env()))
        if tvm:
            stack.enter_context(_tvm_rocm_linker(tc.ld_lld))
        yield tc


@contextlib.contextmanager
def cuda_toolchain() -> Iterator[str]:
    """Put ``nvcc`` on PATH for a cuda build (TVM and its callbacks find it there); yields its path."""
    nvcc = find_nvcc()
    with _environ(cuda_env()):
        yield nvcc


_TOOLCHAINS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "cuda": cuda_toolchain,
    "rocm": rocm_toolchain,
}


def toolchain_for(kind: str) -> contextlib.AbstractContextManager[Any]:
    """The environment a target kind (``cuda``, ``rocm``; others need none) builds in."""
    factory = _TOOLCHAINS.get(kind)
    return factory() if factory is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------- running tools

_SM_RE = re.compile(r"sm_\d+[af]?")
_TVM_NVCC_FLAGS = (
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "-diag-suppress=177",  # TVM's generated code declares unused CSE variables
)


def nvcc_compile(
    source: str, arch: str, fmt: str = "cubin", options: tuple[str, ...] = ()
) -> bytes:
    """Compile CUDA source (e.g. a TVM cuda module's ``inspect_source()``) for ``arch``.

    ``fmt`` is ``cubin`` (SASS for ``arch`` only), ``fatbin`` (SASS + PTX) or ``ptx``. Needs no GPU.

    >>> cubin = nvcc_compile(src, "sm_90")  # doctest: +SKIP
    """
    if not _SM_RE.fullmatch(arch):
        raise ToolchainError(f"bad CUDA arch {arch!r}; expected e.g. sm_80, sm_90, sm_90a")
    if fmt not in ("cubin", "fatbin", "ptx"):
        raise ToolchainError(f"bad nvcc output format {fmt!r}; expected cubin, fatbin or ptx")
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(prefix="llmc-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / f"kernels.{fmt}"
        src.write_text(source)
        cmd = [nvcc, f"--{fmt}", "-O3", f"-arch={arch}", *_TVM_NVCC_FLAGS, *options]
        cmd += ["-o", str(out), str(src)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr).strip()[-2000:]
            raise ToolFailedError(f"nvcc failed ({' '.join(cmd[:4])} ...):\n{tail}")
        return out.read_bytes()


def describe() -> dict[str, str]:
    """One line per tool: where it was found or why not (for ``llmc targets`` and bug reports)."""
    out: dict[str, str] = {}
    probes: dict[str, Callable[[], object]] = {
        "nvcc": find_nvcc,
        "rocm_path": find_rocm_path,
        "ld.lld": find_ld_lld,
        "llvm-objdump": find_llvm_objdump,
    }
    for name, probe in probes.items():
        try:
            out[name] = str(probe())
        except ToolchainError as e:
            out[name] = f"missing: {e}"
    return out
