"""The ``cpu`` target's hardware spec, from this machine rather than a data sheet.

The ``cpu`` target is "the host", so its roofline should use the host's figures. Peak FLOP/s is
*measured* where ``bench/cpu_peak.py --record`` has run on this machine (independent vector FMAs
and ``vpdpbusd`` on every thread, best of several runs, CPU time; the record holds the per-core
rates and the command), else taken from the peaks committed for this CPU kind (below), else
computed from the CPU: threads x clock x FLOP per cycle
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

Where the peak comes from, first found wins: the cache record's ``peak`` (``bench/cpu_peak.py
--record`` on this machine), else the row of ``llmc/targets/data/cpu_peaks.json`` (peaks measured
by ``bench/cpu_peak.py --table`` and committed, keyed by CPU model name, the ISA flags that change
the probe (:data:`PEAK_ISA`) and the core count; a row of the same model and flags measured on
another core count is used per core and says so), else the formula above.

The last-level cache (:func:`probe_llc`): its reported size (sysfs
``/sys/devices/system/cpu/cpu0/cache``, :func:`cache_levels`) and its read bandwidth measured like
the memory's over working sets from twice the threads' L2 up to that size
(:func:`llc_sweep_mib`), from which :func:`effective_llc` takes the bandwidth at the smallest and
the largest set that keeps most of it: the part of the cache this machine gets. In a VM the
reported size is the socket's, shared with the other tenants: on the 2-vCPU Xeon (model 207)
these figures were taken on, sysfs says 300 MiB while one thread reads 25 GB/s up to 48 MiB and
13 GB/s (DRAM's rate) from 64 MiB on. Cached in the same record; the roofline reads a stage's
bytes at the LLC's bandwidth when one decode step's reads fit in its effective size.

``LLMC_HOST_SPEC=nominal`` (or a failed measurement) keeps the nominal figures of
``llmc/targets/data/cpu.yaml``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc.cache import cache_dir
from llmc.targets.cpu_isa import AMX_ENV, build_isa, host_isa_flags, use_amx
from llmc.targets.spec import HardwareSpec

_G = 1e9
PROBE_MIB = 256
#: the ISA flags that change what ``bench/cpu_peak.py`` measures: part of a committed peak's key
PEAK_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
PEAKS_FILE = Path(__file__).with_name("data") / "cpu_peaks.json"
SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


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


def measure_read_bandwidth(
    threads: int,
    mib: int = PROBE_MIB,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Bytes/s of the best of ``repeats`` sums over ``mib`` MiB of float32 on ``threads``.
    ``clock=time.process_time`` (one thread) leaves out the time the thread was descheduled: on a
    loaded machine that measures what the memory system gives a running thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(mib * 1024 * 1024 // 4)  # written: no zero pages
        a.sum()
        best = float("inf")
        for _ in range(repeats):
            t = clock()
            a.sum()
            best = min(best, clock() - t)
        return a.numel() * 4 / max(best, 1e-9)
    finally:
        torch.set_num_threads(before)


def _size_bytes(text: str) -> int:
    """``48K`` / ``2048K`` / ``300M`` (sysfs cache sizes) -> bytes; 0 when unreadable."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t.rstrip("KMGB") or "0") * mult
    except ValueError:
        return 0


def cache_levels(root: Path = SYS_CACHE) -> dict[int, dict[str, Any]]:
    """cpu0's data/unified caches by level: ``{level: {"bytes", "shared_cpus"}}`` from sysfs
    (empty when unreadable). ``bytes`` is one instance (per core for L1/L2, the socket's for L3);
    ``shared_cpus`` how many logical CPUs share it."""
    out: dict[int, dict[str, Any]] = {}
    for d in sorted(root.glob("index*")):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            level = int((d / "level").read_text())
            size = _size_bytes((d / "size").read_text())
            shared = (d / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        n = 0
        for part in shared.split(","):
            a, _, b = part.partition("-")
            try:
                n += int(b or a) - int(a) + 1
            except ValueError:
                pass
        if size > 0:
            out[level] = {"bytes": size, "shared_cpus": max(n, 1)}
    return out


def llc_probe_mib(levels: dict[int, dict[str, Any]], threads: int) -> int | None:
    """The working set (MiB) that measures the last-level cache on ``threads`` threads: the
    smallest power of two at least twice the threads' private caches below it (so the probe reads
    the LLC, not L2) and at most a quarter of the LLC; ``None`` when there is no level above L2
    or no such size."""
    if not levels or max(levels) < 3:
        return None
    llc = levels[max(levels)]["bytes"]
    below = levels.get(max(levels) - 1, {"bytes": 0})["bytes"] * threads
    mib = 1
    while mib * (1 << 20) < 2 * below:
        mib *= 2
    return mib if mib * (1 << 20) * 4 <= llc else None


def llc_sweep_mib(levels: dict[int, dict[str, Any]], threads: int) -> list[int]:
    """Working sets (MiB) from :func:`llc_probe_mib` doubling up to the LLC's reported size."""
    mib = llc_probe_mib(levels, threads)
    if mib is None:
        return []
    llc = levels[max(levels)]["bytes"]
    out = []
    while mib * (1 << 20) <= llc:
        out.append(mib)
        mib *= 2
    return out


#: a working set still reads "from the LLC" while its bandwidth is at least this share of the
#: bandwidth at the smallest LLC-sized set; the LLC must beat DRAM by ``LLC_GAIN`` to count
LLC_KEEP = 0.8
LLC_GAIN = 1.2


def effective_llc(by_mib: dict[int, float], dram: float) -> tuple[int, float] | None:
    """``(bytes, bytes/s)`` of the last-level cache as a thread sees it, from read bandwidths by
    working set (MiB, :func:`llc_sweep_mib`): the bandwidth at the smallest set, and the largest
    set up to which every set keeps :data:`LLC_KEEP` of it. ``None`` when the cache does not beat
    ``dram`` by :data:`LLC_GAIN` (a VM whose neighbours hold the cache, or no cache level).
    In a VM the reported LLC is the socket's, shared with other tenants: this is what is left."""
    if not by_mib:
        return None
    sizes = sorted(by_mib)
    plateau = by_mib[sizes[0]]
    if plateau < LLC_GAIN * dram:
        return None
    fits = sizes[0]
    for m in sizes[1:]:
        if by_mib[m] < LLC_KEEP * plateau:
            break
        fits = m
    return fits << 20, plateau


def probe_llc(
    threads: int,
    dram: float,
    levels: dict[int, dict[str, Any]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The last-level cache's record: reported size (sysfs), the read bandwidth by working set
    (:func:`llc_sweep_mib`, best of 9 each) and what :func:`effective_llc` makes of them against
    ``dram`` (bytes/s): ``effective_bytes`` and ``read_bytes_per_s`` (0 when none)."""
    levels = cache_levels() if levels is None else levels
    out: dict[str, Any] = {"bytes": levels[max(levels)]["bytes"] if levels else 0}
    sweep = llc_sweep_mib(levels, threads)
    by_mib = {m: measure_read_bandwidth(threads, mib=m, repeats=9, clock=clock) for m in sweep}
    eff = effective_llc(by_mib, dram)
    out["read_gbs_by_mib"] = {str(m): round(v / _G, 2) for m, v in by_mib.items()}
    out["effective_bytes"] = eff[0] if eff else 0
    out["read_bytes_per_s"] = eff[1] if eff else 0.0
    out["measured"] = _now()
    return out


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


def peak_key(model: str, flags: set[str] | list[str], cores: int) -> dict[str, Any]:
    """The key of a committed peak: model name, the :data:`PEAK_ISA` flags present, cores."""
    return {"cpu": model, "isa": [f for f in PEAK_ISA if f in set(flags)], "cores": cores}


def committed_peak(
    model: str, flags: set[str] | list[str], cores: int, path: Path | None = None
) -> dict[str, Any] | None:
    """The row of ``path`` (``llmc/targets/data/cpu_peaks.json``) for this CPU: same model name,
    same :data:`PEAK_ISA` flags and core count; else same model and flags on another core count
    (per-core rates; the row's ``cores`` says which). ``None`` when no row matches."""
    try:
        rows = json.loads((path or PEAKS_FILE).read_text())["peaks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    key = peak_key(model, flags, cores)
    same = [
        r
        for r in rows
        if isinstance(r, dict)
        and r.get("cpu") == key["cpu"]
        and sorted(r.get("isa", [])) == sorted(key["isa"])
        and r.get("f32_per_core", 0) > 0
        and r.get("i8_per_core", 0) > 0
    ]
    exact = [r for r in same if r.get("cores") == cores]
    return (exact or same or [None])[0]


def record_path() -> Path | None:
    """This machine's (CPU model, cores, threads) cache record: measured bandwidth and peak."""
    info = _cpuinfo()
    cores = os.cpu_count() or 1
    threads = min(_threads(), cores)
    model = info.get("model name", "unknown CPU")
    key = hashlib.sha256(f"{model}|{cores}|{threads}".encode()).hexdigest()[:16]
    return _cache_file(key)


def _peak(
    rec: dict[str, Any], info: dict[str, str], threads: int, cores: int
) -> tuple[float, float, float | None, str, str]:
    """``(f32, i8, i8_prefill, why, origin)``: the peak FLOP/s on ``threads`` threads, first of
    the record's measured peak, the committed table's row, the formula (module docstring);
    ``i8_prefill`` is the AMX tile rate where W8A8 prefill uses it (:func:`prefill_amx_peak`),
    else ``None``; ``why`` names the source (with the AMX tile rates where a row has them),
    ``origin`` is ``cache``, ``committed`` or ``formula``."""
    flags = set(info.get("flags", "").split()) or set(host_isa_flags())
    pk = rec.get("peak")
    origin = "cache"
    if not (
        isinstance(pk, dict) and pk.get("f32_per_core", 0) > 0 and pk.get("i8_per_core", 0) > 0
    ):
        pk = committed_peak(info.get("model name", "unknown CPU"), flags, cores)
        origin = "committed"
    if pk is not None:
        f32 = threads * float(pk["f32_per_core"])
        i8 = threads * float(pk["i8_per_core"])
        i8_prefill = prefill_amx_peak(pk, flags, threads)
        where = (
            f"measured {pk.get('measured', '?')} by {pk.get('command', '?')}"
            if origin == "cache"
            else f"committed in llmc/targets/data/cpu_peaks.json (measured "
            f"{pk.get('measured', '?')} on {pk.get('cores', '?')} cores by "
            f"{pk.get('command', '?')})"
        )
        why = (
            f"{where}: {threads} x {pk['f32_per_core'] / _G:.1f} f32 GFLOP/s, {threads} x "
            f"{pk['i8_per_core'] / _G:.1f} int8 GOP/s (vpdpbusd)"
        )
        amx = pk.get("amx")
        if isinstance(amx, dict) and amx.get("i8_per_core"):
            if i8_prefill is not None:
                used = "the int8 peak of W8A8 prefill (llmc.backends.kernels.cpu_amx)"
            else:
                used = f"not used by this build's kernels ({AMX_ENV}=0, or no amx_int8)"
            why += (
                f"; AMX tiles {amx['i8_per_core'] / _G:.0f} int8 GOP/s, "
                f"{amx.get('bf16_per_core', 0) / _G:.0f} bf16 GFLOP/s per core, {used}"
            )
        elif isinstance(amx, str):
            why += f"; AMX {amx}"
        return f32, i8, i8_prefill, why, origin
    per_f32, per_i8, how = flop_per_cycle(flags, info)
    try:
        ghz = float(info.get("cpu MHz", "")) / 1000.0
    except ValueError:
        ghz = 0.0
    ghz = ghz if ghz > 0.5 else 3.0
    why = (
        f"{threads} x {ghz:.2f} GHz (cpuinfo) x {per_f32} f32 FLOP/cycle, {per_i8} int8 "
        f"OP/cycle ({how})"
    )
    return threads * ghz * _G * per_f32, threads * ghz * _G * per_i8, None, why, "formula"


def prefill_amx_peak(pk: dict[str, Any] | None, flags: set[str], threads: int) -> float | None:
    """The int8 OP/s of W8A8 *prefill* on ``threads`` threads where llmc builds its prefill for
    AMX tiles (:func:`llmc.targets.cpu_isa.use_amx`: ``amx_tile`` + ``amx_int8``, and
    ``$LLMC_CPU_AMX`` not ``0``) and the peak ``pk`` has a measured AMX rate (``amx.i8_per_core``,
    ``bench/cpu_peak.py``); else ``None`` (prefill's int8 peak is ``vpdpbusd``'s, as decode's)."""
    amx = pk.get("amx") if isinstance(pk, dict) else None
    if not (isinstance(amx, dict) and amx.get("i8_per_core", 0) > 0):
        return None
    from llmc.errors import TargetError

    try:  # the flags a build records ($LLMC_CPU_ISA=avx2 drops AMX's)
        built = build_isa("", sorted(flags))[2]
    except TargetError:
        built = sorted(flags)
    if not use_amx(built):
        return None
    return threads * float(amx["i8_per_core"])


def _save(path: Path | None, rec: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2) + "\n")
    except OSError:
        pass


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
            "measured": _now(),
        }
        _save(path, rec)
    if "llc" not in rec:  # a record from before the LLC probe: add it, keep the rest
        try:
            rec["llc"] = probe_llc(threads, float(rec["read_bytes_per_s"]))
        except Exception:  # noqa: BLE001 - no LLC figure: the roofline reads DRAM only
            rec["llc"] = {"bytes": 0}
        _save(path, rec)
    f32, i8, i8_prefill, peak, _origin = _peak(rec, info, threads, cores)
    # W8A8 prefill on AMX tiles has its own int8 peak (llmc.codesign.roofline reads it for
    # prefill's qlinear_a8); decode keeps vpdpbusd's
    extra = {"i8_prefill": i8_prefill} if i8_prefill is not None else {}
    mem = float(nominal.mem_bytes)
    try:
        mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    bw = float(rec["read_bytes_per_s"])
    measured = f"measured {rec['measured']} (torch.sum over {PROBE_MIB} MiB, best of 5)"
    llc = rec.get("llc") if isinstance(rec.get("llc"), dict) else {}
    llc_bw = float(llc.get("read_bytes_per_s", 0.0) or 0.0)
    llc_bytes = float(llc.get("effective_bytes", 0) or 0) if llc_bw > 0 else 0.0
    if llc_bw > 0 and llc_bytes > 0:
        llc_text = (
            f"; LLC {llc['bytes'] / 2**20:.0f} MiB reported (sysfs; a VM's is shared with other "
            f"tenants), {llc_bytes / 2**20:.0f} MiB of it read at {llc_bw / _G:.1f} GB/s "
            f"measured {llc.get('measured', '?')} (torch.sum by working set, best of 9)"
        )
    else:
        llc_bw = llc_bytes = 0.0
        llc_text = "; no LLC level (none reported, or not faster than DRAM when probed)"
    return HardwareSpec(
        {"f32": f32, "f16": f32, "bf16": f32, "i8": i8, **extra},
        bw,
        mem,
        power_w=nominal.power_w,
        price_usd=nominal.price_usd,
        source=(
            f"this host: {rec['cpu']}, {threads} threads; read bandwidth {bw / _G:.1f} GB/s "
            f"{measured}; cached in {path if path is not None else 'nowhere'}){llc_text}; "
            f"peak {peak}"
        ),
        sources={
            **nominal.sources,
            "bandwidth_gbs": f"this host, {measured}",
            "mem_gb": "this host (physical pages)",
            **{
                f"peak_tflops.{d}": f"this host: {peak}"
                for d in ("f32", "f16", "bf16", "i8", *extra)
            },
        },
        llc_bytes=llc_bytes,
        llc_bandwidth=llc_bw,
    )


__all__ = [
    "PEAK_ISA",
    "cache_levels",
    "committed_peak",
    "flop_per_cycle",
    "host_spec",
    "effective_llc",
    "llc_probe_mib",
    "llc_sweep_mib",
    "probe_llc",
    "prefill_amx_peak",
    "measure_read_bandwidth",
    "peak_key",
    "record_path",
]
