"""The ``cpu`` target's hardware spec, from this machine rather than a data sheet.

The ``cpu`` target is "the host", so its roofline should use the host's figures. Peak FLOP/s is
*measured* where ``bench/cpu_peak.py --record`` has run on this machine (independent vector FMAs
and ``vpdpbusd`` on every thread, best of several runs, CPU time; the record holds the per-core
rates and the command), else computed from the CPU: threads x clock x FLOP per cycle
(:func:`flop_per_cycle`: two FMA pipes of the widest vector unit, 32 f32 FLOP/cycle with AVX2 and
with Zen 4's double-pumped AVX-512, 64 with full-width AVX-512; int8 4x that with VNNI, whose
``vpdpbusd`` does 4 multiply-adds per 32-bit lane at the FMA rate). The clock in ``/proc/cpuinfo``
is the base (under KVM, the TSC) clock: on the 2-core EPYC (Zen 4) these figures were first taken
on it reads 2.60 GHz while the FMA loop sustains 3.66 GHz, so the computed figure is 0.7x the
measured one. Memory bandwidth is *measured*: the best of five
``torch.sum`` passes over a 256 MiB float32 tensor (already touched), with the threads a compiled
artifact would use (``TVM_NUM_THREADS``, else the cores). A cloud slice's bandwidth moves with its
neighbours (25-35 GB/s over a day on the 2-core EPYC these figures were first taken on), so a
measurement is a snapshot; it is cached per machine in ``$LLMC_CACHE_DIR`` (default
``~/.cache/llmc``, file ``host-spec-<key>.json``): delete it to measure again.

``LLMC_HOST_SPEC=nominal`` (or a failed measurement) keeps the nominal figures of
``llmc/targets/data/cpu.yaml``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from llmc.cache import cache_dir
from llmc.targets.cpu_isa import host_isa_flags
from llmc.targets.spec import HardwareSpec

_G = 1e9
PROBE_MIB = 256


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (x.strip() for x in line.split(":", 1))
                    out.setdefault(k, v)
    except OSError:
        pass
    return out


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("TVM_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _cache_file(key: str) -> Path | None:
    base = cache_dir()
    return None if base is None else base / f"host-spec-{key}.json"


def measure_read_bandwidth(threads: int, mib: int = PROBE_MIB, repeats: int = 5) -> float:
    """Bytes/s of the best of ``repeats`` sums over ``mib`` MiB of float32 on ``threads``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(mib * 1024 * 1024 // 4)  # written: no zero pages
        a.sum()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a.sum()
            best = min(best, time.perf_counter() - t)
        return a.numel() * 4 / best
    finally:
        torch.set_num_threads(before)


def flop_per_cycle(flags: set[str], info: dict[str, str]) -> tuple[int, int, str]:
    """``(f32 FLOP, int8 OP, why)`` per cycle per core from the ISA flags and the CPU family."""
    zen34 = info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25"
    if "avx512f" in flags and not zen34:
        f32, why = 64, "2 x 512-bit FMA"
    elif "avx512f" in flags:
        f32, why = 32, "512-bit FMA double-pumped on 2 x 256-bit pipes (Zen 3/4)"
    elif "avx" in flags:
        f32, why = 32, "2 x 256-bit FMA"
    else:
        f32, why = 16, "2 x 128-bit"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return f32, 4 * f32, why + "; int8 vpdpbusd 4 MAC per 32-bit lane"
    return f32, (2 * f32 if "avx2" in flags else f32), why


def record_path() -> Path | None:
    """This machine's (CPU model, cores, threads) cache record: measured bandwidth and peak."""
    info = _cpuinfo()
    cores = os.cpu_count() or 1
    threads = min(_threads(), cores)
    model = info.get("model name", "unknown CPU")
    key = hashlib.sha256(f"{model}|{cores}|{threads}".encode()).hexdigest()[:16]
    return _cache_file(key)


def host_spec(nominal: HardwareSpec) -> HardwareSpec:
    """This machine's spec (see the module docstring); ``nominal`` where it cannot be had."""
    if os.environ.get("LLMC_HOST_SPEC", "").lower() == "nominal":
        return nominal
    info = _cpuinfo()
    cores = os.cpu_count() or 1
    threads = min(_threads(), cores)
    model = info.get("model name", "unknown CPU")
    path = record_path()
    rec: dict[str, Any] | None = None
    if path is not None and path.exists():
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            rec = None
    if rec is None:
        try:
            bw = measure_read_bandwidth(threads)
        except Exception:  # noqa: BLE001 - no torch, no memory: the nominal figures stand
            return nominal
        rec = {
            "cpu": model,
            "cores": cores,
            "threads": threads,
            "read_bytes_per_s": bw,
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec, indent=2) + "\n")
            except OSError:
                pass
    flags = set(host_isa_flags())
    per_f32, per_i8, why = flop_per_cycle(flags, info)
    try:
        ghz = float(info.get("cpu MHz", "")) / 1000.0
    except ValueError:
        ghz = 0.0
    ghz = ghz if ghz > 0.5 else 3.0
    pk = rec.get("peak")
    if isinstance(pk, dict) and pk.get("f32_per_core", 0) > 0 and pk.get("i8_per_core", 0) > 0:
        f32 = threads * float(pk["f32_per_core"])
        i8 = threads * float(pk["i8_per_core"])
        peak = (
            f"measured {pk.get('measured', '?')} by {pk.get('command', '?')}: {threads} x "
            f"{pk['f32_per_core'] / _G:.1f} f32 GFLOP/s, {threads} x "
            f"{pk['i8_per_core'] / _G:.1f} int8 GOP/s"
        )
    else:
        f32 = threads * ghz * _G * per_f32
        i8 = threads * ghz * _G * per_i8
        peak = (
            f"{threads} x {ghz:.2f} GHz (cpuinfo) x {per_f32} f32 FLOP/cycle, {per_i8} int8 "
            f"OP/cycle ({why})"
        )
    mem = float(nominal.mem_bytes)
    try:
        mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    bw = float(rec["read_bytes_per_s"])
    measured = f"measured {rec['measured']} (torch.sum over {PROBE_MIB} MiB, best of 5)"
    return HardwareSpec(
        {"f32": f32, "f16": f32, "bf16": f32, "i8": i8},
        bw,
        mem,
        power_w=nominal.power_w,
        price_usd=nominal.price_usd,
        source=(
            f"this host: {rec['cpu']}, {threads} threads; read bandwidth {bw / _G:.1f} GB/s "
            f"{measured}; cached in {path if path is not None else 'nowhere'}); peak {peak}"
        ),
        sources={
            **nominal.sources,
            "bandwidth_gbs": f"this host, {measured}",
            "mem_gb": "this host (physical pages)",
            **{f"peak_tflops.{d}": f"this host: {peak}" for d in ("f32", "f16", "bf16", "i8")},
        },
    )


__all__ = ["flop_per_cycle", "host_spec", "measure_read_bandwidth", "record_path"]
