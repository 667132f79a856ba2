"""FlightLLM FPGA model: architecture descriptions, instruction compiler, cycle-level and
functional simulators, HLS C++ emission. See docs/fpga.md.

Public API::

    from llmc.fpga import load_arch, simulate, compile_artifact
    arch = load_arch("u280", ["hbm.bandwidth_gbs=920"])      # or a YAML path
    report = simulate(graph, arch, prefill=128, decode=512)  # SimReport; .to_json()
    compile_artifact(graph, arch, "out/fpga")                # streams, HLS project, report
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmc.fpga.arch import FpgaArch
    from llmc.fpga.sim import SimReport

__all__ = ["SimReport", "compile_artifact", "compile_for_target", "load_arch", "simulate"]


def load_arch(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> FpgaArch:
    """A board description (``u280``, ``vhk158`` or a YAML file) with ``key=value`` overrides."""
    from llmc.fpga.arch import load_arch as _load

    return _load(name_or_path, overrides)


def simulate(
    graph: Any, arch: FpgaArch, prefill: int = 128, decode: int = 512, **kw: Any
) -> SimReport:
    """Cycle-level simulation of a prompt and generation; see :func:`llmc.fpga.sim.simulate`."""
    from llmc.fpga.sim import simulate as _sim

    return _sim(graph, arch, prefill, decode, **kw)


def compile_artifact(graph: Any, arch: FpgaArch, out_dir: Any, **kw: Any) -> dict[str, Any]:
    """Write instruction streams, the HLS project and the simulation report into ``out_dir``;
    see :func:`llmc.fpga.artifact.compile_artifact`."""
    from llmc.fpga.artifact import compile_artifact as _compile

    return _compile(graph, arch, out_dir, **kw)


def compile_for_target(graph: Any, target: Any, tmp: Any, report: dict[str, Any]) -> dict[str, Any]:
    """The ``fpga`` backend of ``llmc compile`` (the ``fpga`` kind's ``lower`` hook)."""
    from llmc.fpga.artifact import compile_for_target as _cft

    return _cft(graph, target, tmp, report)


def __getattr__(name: str) -> Any:
    if name == "SimReport":
        from llmc.fpga.sim import SimReport

        return SimReport
    raise AttributeError(name)
