"""The target registry: name -> kind, TVM target, hardware spec.

A new GPU is a registry entry, not code. Backends look targets up here (never by if-chains on
names); the roofline and co-design studies read :class:`HardwareSpec`.

Spec figures are vendor data-sheet numbers for *dense* math (no 2:4 structured-sparsity doubling),
each with its source in ``HardwareSpec.source``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmc.errors import TargetError


@dataclass(frozen=True)
class HardwareSpec:
    """Peak dense throughput per dtype (FLOP/s, or OP/s for integers), memory, power, price."""

    peak_flops: dict[str, float]
    mem_bandwidth: float  # bytes/s
    mem_bytes: float
    power_w: float = 0.0
    price_usd: float = 0.0
    source: str = ""

    def peak(self, dtype: str) -> float:
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        raise TargetError(
            f"no peak throughput recorded for dtype {dtype} (have {sorted(self.peak_flops)})"
        )

    def ridge_point(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak(dtype) / self.mem_bandwidth


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "cuda" | "rocm" | "cpu" | "fpga" | "ref"
    description: str
    tvm_target: dict[str, Any] | None = None
    spec: HardwareSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_T = 1e12
_G = 1e9
_TARGETS: dict[str, Target] = {}
_LAZY: dict[str, Callable[[], Target]] = {}


def resolve_spec(t: Target) -> HardwareSpec | None:
    """The spec a report should use: the registry's, or for a target marked
    ``extra["spec"] == "host"`` (``cpu``) this machine's (:mod:`llmc.backends.hostspec`)."""
    if t.spec is not None and t.extra.get("spec") == "host":
        from llmc.backends.hostspec import host_spec

        return host_spec(t.spec)
    return t.spec


def register_target(t: Target) -> Target:
    if t.name in _TARGETS:
        raise TargetError(f"target {t.name!r} registered twice")
    _TARGETS[t.name] = t
    return t


def register_lazy(name: str, factory: Callable[[], Target]) -> None:
    """Register a target whose description is built on first use (FPGA arch files)."""
    _LAZY[name] = factory


def get_target(name: str) -> Target:
    if name not in _TARGETS and name in _LAZY:
        _TARGETS[name] = _LAZY.pop(name)()
    if name in _TARGETS:
        return _TARGETS[name]
    names = target_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TargetError(f"unknown target '{name}'{hint} (known: {', '.join(names)})")


def target_names() -> list[str]:
    return sorted(set(_TARGETS) | set(_LAZY))


def all_targets() -> list[Target]:
    return [get_target(n) for n in target_names()]


register_target(Target("ref", "ref", "llmc's reference interpreter (torch eager, any device)"))
register_target(
    Target(
        "cpu",
        "cpu",
        "host CPU through TVM's LLVM backend",
        {"kind": "llvm"},
        # Nominal figures for a 2-core AVX2 server slice (the fallback of the measured host spec).
        HardwareSpec(
            {
                "f32": 2 * 32 * 3.0 * _G,
                "f16": 2 * 32 * 3.0 * _G,
                "bf16": 2 * 32 * 3.0 * _G,
                "i8": 2 * 64 * 3.0 * _G,
            },
            20 * _G,
            24 * _G,
            source="nominal: 2 cores x 3 GHz x 32 f32 FLOP/cycle (AVX2 FMA x2); 20 GB/s DRAM",
        ),
        # reports measure the host instead (llmc.backends.hostspec); the above is the fallback
        extra={"spec": "host"},
    )
)
register_target(
    Target(
        "a100",
        "cuda",
        "NVIDIA A100 SXM4 80GB (sm_80)",
        {"kind": "cuda", "arch": "sm_80", "max_shared_memory_per_block": 49152},
        HardwareSpec(
            {"f32": 19.5 * _T, "tf32": 156 * _T, "f16": 312 * _T, "bf16": 312 * _T, "i8": 624 * _T},
            2039 * _G,
            80e9,
            power_w=400,
            price_usd=15000,
            source="NVIDIA A100 Tensor Core GPU data sheet (SXM4 80GB), dense",
        ),
    )
)
register_target(
    Target(
        "h100",
        "cuda",
        "NVIDIA H100 SXM5 80GB (sm_90)",
        {"kind": "cuda", "arch": "sm_90", "max_shared_memory_per_block": 49152},
        HardwareSpec(
            {
                "f32": 67 * _T,
                "tf32": 494.7 * _T,
                "f16": 989.4 * _T,
                "bf16": 989.4 * _T,
                "f8": 1978.9 * _T,
                "i8": 1978.9 * _T,
            },
            3.35e12,
            80e9,
            power_w=700,
            price_usd=30000,
            source="NVIDIA H100 Tensor Core GPU data sheet (SXM5), dense (sparse figures halved)",
        ),
    )
)
register_target(
    Target(
        "mi250x",
        "rocm",
        "AMD Instinct MI250X (gfx90a)",
        {"kind": "rocm", "mcpu": "gfx90a"},
        HardwareSpec(
            {"f32": 95.7 * _T, "f16": 383 * _T, "bf16": 383 * _T, "i8": 383 * _T},
            3.2768e12,
            128e9,
            power_w=560,
            price_usd=12000,
            source="AMD Instinct MI250X data sheet (matrix FP32/FP16/BF16/INT8 peaks)",
        ),
    )
)
register_target(
    Target(
        "mi300x",
        "rocm",
        "AMD Instinct MI300X (gfx942)",
        {"kind": "rocm", "mcpu": "gfx942"},
        HardwareSpec(
            {
                "f32": 163.4 * _T,
                "f16": 1307.4 * _T,
                "bf16": 1307.4 * _T,
                "f8": 2614.9 * _T,
                "i8": 2614.9 * _T,
            },
            5.3e12,
            192e9,
            power_w=750,
            price_usd=20000,
            source="AMD Instinct MI300X data sheet, dense (sparsity figures halved)",
        ),
    )
)


def _fpga(name: str) -> Callable[[], Target]:
    def make() -> Target:
        from llmc.fpga import arch as fpga_arch  # lazy: the FPGA model is optional for GPU users

        a = fpga_arch.load_arch(name)
        spec = getattr(a, "hardware_spec", None)
        return Target(
            name,
            "fpga",
            getattr(a, "description", f"FlightLLM model of {name}"),
            None,
            spec() if callable(spec) else spec,
            {"arch": a},
        )

    return make


register_lazy("u280", _fpga("u280"))
register_lazy("vhk158", _fpga("vhk158"))
