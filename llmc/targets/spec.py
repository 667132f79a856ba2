"""What a target *is*: :class:`HardwareSpec` (the figures a roofline needs, each with its source)
and :class:`Target` (name, kind, TVM target, spec, kind-specific extras).

Spec keys (``--set KEY=VALUE``, the ``spec:`` section of ``llmc/targets/data/<name>.yaml``):

==================== ==================================================== =================
key                  meaning                                              stored as
==================== ==================================================== =================
``bandwidth_gbs``    peak memory bandwidth, GB/s (1e9 bytes/s)            ``mem_bandwidth``
``mem_gb``           memory capacity, GB (1e9 bytes)                      ``mem_bytes``
``peak_tflops.<dt>`` peak dense throughput for dtype ``<dt>``, TFLOP/s    ``peak_flops[dt]``
``power_w``          board power, W                                       ``power_w``
``price_usd``        price, USD                                           ``price_usd``
==================== ==================================================== =================

Example::

    h = get_target("h100").with_overrides(["bandwidth_gbs=4800"])
    h.spec.mem_bandwidth, h.spec.sources["bandwidth_gbs"]   # 4.8e12, 'override (--set ...)'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmc.errors import TargetError

_G = 1e9
_T = 1e12

#: spec key -> (unit factor to the stored figure, meaning). ``peak_tflops.<dtype>`` is a family.
SPEC_KEYS: dict[str, tuple[float, str]] = {
    "bandwidth_gbs": (_G, "peak memory bandwidth (GB/s)"),
    "mem_gb": (_G, "memory capacity (GB)"),
    "power_w": (1.0, "board power (W)"),
    "price_usd": (1.0, "price (USD)"),
}
PEAK_PREFIX = "peak_tflops."
#: dtypes a ``peak_tflops.<dtype>`` key may name.
DTYPES = ("f32", "tf32", "f16", "bf16", "f8", "i8", "i4")


@dataclass(frozen=True)
class HardwareSpec:
    """Peak dense throughput per dtype (FLOP/s, or OP/s for integers), memory, power, price.

    ``source`` says where the figures come from as a whole; ``sources`` maps a spec key
    (``bandwidth_gbs``, ``peak_tflops.f16``, ...) to where that one figure comes from.

    ``llc_bytes`` / ``llc_bandwidth``: the last-level cache's size and read bandwidth where they
    are known (the ``cpu`` target's host spec, :mod:`llmc.targets.host`; 0 elsewhere). The
    roofline reads a stage's bytes at ``llc_bandwidth`` when its working set fits in
    ``llc_bytes`` (:func:`llmc.codesign.roofline.memory_level`).
    """

    peak_flops: dict[str, float]
    mem_bandwidth: float  # bytes/s
    mem_bytes: float
    power_w: float = 0.0
    price_usd: float = 0.0
    source: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    llc_bytes: float = 0.0
    llc_bandwidth: float = 0.0  # bytes/s

    def peak(self, dtype: str) -> float:
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        raise TargetError(
            f"no peak throughput recorded for dtype {dtype} (have {sorted(self.peak_flops)})"
        )

    def ridge_point(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak(dtype) / self.mem_bandwidth

    def get(self, key: str) -> float:
        """The figure of a spec key, in the key's unit (``bandwidth_gbs`` -> GB/s)."""
        if key.startswith(PEAK_PREFIX):
            return self.peak(key[len(PEAK_PREFIX) :]) / _T
        check_key(key)
        stored = {
            "bandwidth_gbs": self.mem_bandwidth,
            "mem_gb": self.mem_bytes,
            "power_w": self.power_w,
            "price_usd": self.price_usd,
        }[key]
        return stored / SPEC_KEYS[key][0]

    def to_dict(self) -> dict[str, Any]:
        """The spec in its key form (what a data file's ``spec:`` section holds)."""
        out: dict[str, Any] = {k: self.get(k) for k in SPEC_KEYS}
        out["peak_tflops"] = {d: v / _T for d, v in self.peak_flops.items()}
        return out

    def with_values(self, values: Mapping[str, float], source: str) -> HardwareSpec:
        """This spec with spec keys set (values already checked by :func:`parse_override`)."""
        peaks = dict(self.peak_flops)
        fields: dict[str, Any] = {}
        sources = dict(self.sources)
        for key, v in values.items():
            sources[key] = source
            if key.startswith(PEAK_PREFIX):
                peaks[key[len(PEAK_PREFIX) :]] = v * _T
                continue
            stored = v * SPEC_KEYS[key][0]
            name = {"bandwidth_gbs": "mem_bandwidth", "mem_gb": "mem_bytes"}.get(key, key)
            fields[name] = stored
        return dataclasses.replace(self, peak_flops=peaks, sources=sources, **fields)


def check_key(key: str, flag: str = "--set") -> None:
    """Raise :class:`TargetError` unless ``key`` is a spec key (with a did-you-mean)."""
    if key in SPEC_KEYS:
        return
    if key.startswith(PEAK_PREFIX) and key[len(PEAK_PREFIX) :] in DTYPES:
        return
    known = [*SPEC_KEYS, *(PEAK_PREFIX + d for d in DTYPES)]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TargetError(
        f"{flag} {key}: unknown spec key{hint} (known: {', '.join(SPEC_KEYS)}, {PEAK_PREFIX}<dtype>"
        f" for {', '.join(DTYPES)})"
    )


def check_value(key: str, value: Any, where: str) -> float:
    """``value`` as a positive finite number (``power_w``/``price_usd`` may be 0), else one line
    naming ``where`` and the key. A string is read with ``float()`` (YAML 1.1 leaves ``2e3`` a
    string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetError(f"{where}: {key} = {value!r} is not a number")
    v = float(value)
    floor_ok = key in ("power_w", "price_usd")
    if not math.isfinite(v) or v < 0 or (v == 0 and not floor_ok):
        rule = ">= 0" if floor_ok else "> 0"
        raise TargetError(f"{where}: {key} = {value!r} is impossible (must be finite and {rule})")
    return v


def parse_override(text: str, flag: str = "--set") -> tuple[str, float]:
    """``KEY=VALUE`` -> (key, value), checked; one line naming the key otherwise."""
    if "=" not in text:
        raise TargetError(f"{flag} {text!r}: expected KEY=VALUE (e.g. bandwidth_gbs=4800)")
    key, _, raw = text.partition("=")
    key = key.strip()
    check_key(key, flag)
    return key, check_value(key, raw.strip(), f"{flag} {text.strip()}")


@dataclass(frozen=True)
class Target:
    """One entry of the registry. ``kind`` picks lowering, runtime and configuration
    (:mod:`llmc.targets.kinds`); ``extra`` holds what a kind needs beyond the spec (an FPGA
    target's ``arch``, the ``cpu`` target's ``{"spec": "host"}``)."""

    name: str
    kind: str  # a key of llmc.targets.kinds.KINDS
    description: str
    tvm_target: dict[str, Any] | None = None
    spec: HardwareSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, sets: Iterable[str] = (), arch: str | None = None) -> Target:
        """This target with ``--arch FILE`` and ``--set KEY=VALUE`` applied, for every kind
        (the kind's ``configure`` hook; see :func:`llmc.targets.registry.configure_target`)."""
        from llmc.targets.registry import configure_target

        return configure_target(self, {"arch": arch, "set": list(sets)})


__all__ = [
    "DTYPES",
    "PEAK_PREFIX",
    "SPEC_KEYS",
    "HardwareSpec",
    "Target",
    "check_key",
    "check_value",
    "parse_override",
]
