"""The C simulation of an emitted HLS project: g++, the ap_types headers, the test bench.

:func:`llmc.fpga.hls.csim` is the entry point; this module finds the tools (g++ or ``$CXX``; the
``ap_int.h`` / ``ap_fixed.h`` headers inside the installed hls4ml wheel, located without importing
hls4ml), compiles ``src/llmc_top.cpp`` with ``csim/tb_llmc.cpp`` (``CXXFLAGS``: no FMA
contraction, no fast math), optionally caching the binary by a hash of the sources, runs the
bench on ``vectors/`` and reads back its verdict, mismatches, dumps and final HBM image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmc.fpga.hls import CXXFLAGS, HLS4ML_VERSION, TOP, HlsError, HlsToolchainError


def find_ap_types(*, required: bool = True) -> Path | None:
    """The ``ap_int.h`` / ``ap_fixed.h`` folder inside the installed hls4ml (not imported)."""
    spec = importlib.util.find_spec("hls4ml")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        d = Path(loc) / "templates" / "vivado" / "ap_types"
        if (d / "ap_int.h").is_file() and (d / "ap_fixed.h").is_file():
            return d
    if required:
        raise HlsToolchainError(
            "the ap_int.h / ap_fixed.h headers were not found: they ship inside the hls4ml "
            f"wheel; pip install hls4ml=={HLS4ML_VERSION} (or pip install -e '.[dev]')"
        )
    return None


def find_cxx() -> str:
    """The C++ compiler of the C simulation: ``$CXX`` or g++."""
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise HlsToolchainError(
            f"C++ compiler '{cxx}' not found: install g++ (apt-get install g++) or set CXX"
        )
    return path


@dataclass
class Mismatch:
    """One HBM word the C simulation got wrong (hex float32 / int32 bits)."""

    step: int
    stream: str
    word: int
    expected: str
    got: str


@dataclass
class CsimResult:
    """The outcome of :func:`csim`."""

    passed: bool
    returncode: int
    summary: str  # the bench's PASS / FAIL line
    mismatches: list[Mismatch]  # the first ones the bench reported
    faults: list[str]
    seconds: float  # running the bench
    compile_seconds: float  # 0 when the binary came from the cache
    logits: dict[str, np.ndarray]  # the dumps the C++ produced, by name
    hbm: np.ndarray | None  # the C++'s final HBM image
    output: str = field(repr=False, default="")


_MISMATCH = re.compile(
    r"^MISMATCH step=(\d+) stream=(\S+) word=(\d+) expected=(0x[0-9a-f]+) got=(0x[0-9a-f]+)$"
)


def build_csim(out_dir: Path, *, cache_dir: Path | None = None) -> tuple[Path, float]:
    """Compile the project's C simulation (g++ -O2 -std=c++17 -ffp-contract=off); returns the
    binary and the compile time. With ``cache_dir`` the binary is kept there under a hash of
    the sources, flags and compiler, so projects with the same sources share one build."""
    out_dir = Path(out_dir)
    cxx, ap = find_cxx(), find_ap_types()
    srcs = [out_dir / f"src/{TOP}.cpp", out_dir / "csim/tb_llmc.cpp"]
    deps = sorted((out_dir / "src").glob("*")) + sorted((out_dir / "csim").glob("*"))
    for p in srcs:
        if not p.is_file():
            raise HlsError(f"{p} is missing: emit the project first (emit_project)")
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256("\0".join((ver, *CXXFLAGS, str(ap))).encode())
    for p in deps:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    where = (Path(cache_dir) / h.hexdigest()[:20]) if cache_dir else out_dir / "build"
    exe = where / "csim"
    if cache_dir and exe.is_file():
        return exe, 0.0
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f"csim.tmp{os.getpid()}"
    cmd = [cxx, *CXXFLAGS, f"-I{out_dir / 'src'}", f"-I{out_dir / 'csim'}", "-isystem", str(ap)]
    cmd += [*map(str, srcs), "-o", str(tmp)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise HlsError(
            f"the emitted HLS C++ does not compile ({' '.join(cmd)}):\n{r.stderr[-4000:]}"
        )
    os.replace(tmp, exe)  # atomic: parallel builds of one hash agree
    return exe, time.perf_counter() - t0


def run_csim(out_dir: Path, *, timeout: float = 600, cache_dir: Path | None = None) -> CsimResult:
    """Compile the emitted project with g++ (-O2 -std=c++17 -ffp-contract=off) and run its test
    bench; result says passed, mismatches (first few with index/expected/got as hex), seconds,
    and the logits the C++ produced."""
    out_dir = Path(out_dir)
    vdir = out_dir / "vectors"
    if not (vdir / "manifest.txt").is_file():
        raise HlsError(f"{vdir} has no test vectors: emit_project(prog, dir, vectors=...)")
    exe, compile_s = build_csim(out_dir, cache_dir=cache_dir)
    odir = out_dir / "csim_out"
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [str(exe), str(vdir), str(odir)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise HlsError(
            f"the C simulation of {out_dir} did not finish within {timeout:g} s; raise timeout"
        ) from e
    secs = time.perf_counter() - t0
    out = r.stdout + r.stderr
    lines = r.stdout.splitlines()
    summary = next((ln for ln in reversed(lines) if ln.startswith(("PASS", "FAIL"))), "")
    if not summary:
        summary = f"FAIL: the test bench ended without a verdict (exit {r.returncode})"
    mism = [Mismatch(int(a), b, int(c), d, e) for a, b, c, d, e in _matches(lines)]
    faults = [ln for ln in lines if ln.startswith("FAULT")]
    logits: dict[str, np.ndarray] = {}
    meta = vdir / "dumps.json"
    if meta.is_file():
        for name, shape in json.loads(meta.read_text()).items():
            p = odir / f"{name}.bin"
            if p.is_file():
                logits[name] = np.fromfile(p, dtype=np.float32).reshape(shape)
    final = odir / "hbm_final.bin"
    hbm = np.fromfile(final, dtype=np.uint8) if final.is_file() else None
    passed = r.returncode == 0 and summary.startswith("PASS")
    return CsimResult(
        passed, r.returncode, summary, mism, faults, secs, compile_s, logits, hbm, out
    )


def _matches(lines: list[str]) -> list[tuple[str, ...]]:
    return [m.groups() for ln in lines if (m := _MISMATCH.match(ln))]
