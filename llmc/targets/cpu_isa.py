"""Which ISA extensions a CPU artifact may use (read without TVM, by the runtime's host check)."""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from functools import cache

#: ISA extensions that, when the build host has them, generated code may use (LLVM ``mcpu``).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
)


def host_isa_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The :data:`ISA_FLAGS` this machine's CPU has (empty when /proc/cpuinfo is unreadable)."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in ISA_FLAGS if f in flags]


# -- decode-kernel families --------------------------------------------------------------------

#: The environment variable that forces a kernel family (for testing one on a bigger CPU).
ISA_ENV = "LLMC_CPU_ISA"


@dataclass(frozen=True)
class KernelIsa:
    """A family of CPU decode kernels: the ISA flags the host needs for it, and the ISA flags an
    artifact built for it may use (``None``: all of the host's). ``cap_mcpu`` is the LLVM CPU to
    build for when the host has more than ``allowed`` (so LLVM cannot emit wider instructions
    than the family's); a host within ``allowed`` builds for its own CPU."""

    name: str
    requires: tuple[str, ...]
    allowed: tuple[str, ...] | None = None
    cap_mcpu: str | None = None
    vector_bits: int | None = None  # None: the host's widest


#: Best first; :func:`kernel_isa` picks the first whose ``requires`` the host has.
KERNEL_ISAS = (
    KernelIsa("avx512_vnni", ("avx512_vnni",)),
    KernelIsa(
        "avx2",
        ("avx2", "fma"),
        allowed=("sse4_2", "avx", "avx2", "fma", "f16c"),
        cap_mcpu="haswell",
        vector_bits=256,
    ),
    KernelIsa("portable", ()),
)


def kernel_isa(flags: list[str] | None = None) -> KernelIsa:
    """The decode-kernel family for a CPU with ``flags`` (default: this host's), or the one
    ``$LLMC_CPU_ISA`` names; :class:`~llmc.errors.TargetError` when that name is unknown or
    this CPU lacks what the family needs."""
    from llmc.errors import TargetError

    have = set(host_isa_flags() if flags is None else flags)
    forced = os.environ.get(ISA_ENV, "").strip()
    if forced:
        by_name = {k.name: k for k in KERNEL_ISAS}
        if forced not in by_name:
            raise TargetError(
                f"{ISA_ENV}={forced!r}: unknown CPU kernel family; expected one of "
                f"{', '.join(by_name)} (or unset it)"
            )
        missing = [f for f in by_name[forced].requires if f not in have]
        if missing:
            raise TargetError(
                f"{ISA_ENV}={forced}: this CPU lacks {', '.join(missing)}; unset {ISA_ENV} or "
                f"choose a family it has"
            )
        return by_name[forced]
    return next(k for k in KERNEL_ISAS if set(k.requires) <= have)


def build_isa(host_mcpu: str, flags: list[str] | None = None) -> tuple[KernelIsa, str, list[str]]:
    """``(family, LLVM mcpu, recorded ISA flags)`` for a build on a CPU with ``flags`` (default:
    this host's) whose LLVM name is ``host_mcpu``. A family chosen by the host builds for the
    host's CPU and records its flags; one forced by ``$LLMC_CPU_ISA`` on a CPU with more than
    the family allows builds for ``cap_mcpu`` and records only the allowed flags, so the
    artifact holds no wider instruction and loads on any CPU of that family."""
    have = host_isa_flags() if flags is None else flags
    isa = kernel_isa(have)
    if not os.environ.get(ISA_ENV, "").strip() or isa.allowed is None:
        return isa, host_mcpu, list(have)
    allowed = [f for f in have if f in isa.allowed]
    if len(allowed) == len(have):
        return isa, host_mcpu, allowed
    return isa, isa.cap_mcpu or host_mcpu, allowed


# -- AMX (prefill) -----------------------------------------------------------------------------

#: ``LLMC_CPU_AMX=0`` builds the AVX-512 VNNI prefill kernel on an AMX host (for A/B runs).
AMX_ENV = "LLMC_CPU_AMX"


def use_amx(flags: list[str]) -> bool:
    """Whether a build whose recorded ISA flags are ``flags`` (:func:`build_isa`'s third item)
    gets the AMX W8A8 prefill kernel (:mod:`llmc.backends.kernels.cpu_amx`): the CPU has
    ``amx_tile`` and ``amx_int8`` and ``$LLMC_CPU_AMX`` is not ``0``. Decode (one row) keeps
    the VNNI kernels either way."""
    if os.environ.get(AMX_ENV, "").strip() == "0":
        return False
    return "amx_tile" in flags and "amx_int8" in flags


#: Linux x86-64: ``arch_prctl`` syscall number, ``ARCH_REQ_XCOMP_PERM``, ``XFEATURE_XTILEDATA``.
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


@cache
def request_amx() -> str | None:
    """Ask Linux for the AMX tile-data state for this process (every thread, once per process;
    without it the first tile instruction kills the process with SIGILL). ``None`` when granted,
    else a few words saying why not."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"AMX tile state is requested through Linux x86-64 only (this is {platform.system()} {platform.machine()})"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        err = ctypes.get_errno()
        return (
            f"Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {os.strerror(err)})"
        )
    return None
