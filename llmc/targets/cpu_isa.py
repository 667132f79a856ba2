"""Which ISA extensions a CPU artifact may use (read without TVM, by the runtime's host check)."""

from __future__ import annotations

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
