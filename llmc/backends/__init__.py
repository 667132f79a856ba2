"""Backends: lowering the IR to TVM for CPUs and GPUs (the FPGA model lives in ``llmc.fpga``).

Public API (what ``llmc compile --target`` calls, through the kinds' ``lower`` hooks)::

    from llmc.backends import compile_model
    fields = compile_model(graph, "cpu", "out/tiny")     # writes model.so, weights, graph.ir
    # -> manifest fields: runtime, tvm version, backend {functions, kernels, weights, ...}

    from llmc.runtime.tvm_runner import load
    lm = load("out/tiny")                                 # needs only the TVM runtime
    logits = lm.prefill(ids); logits = lm.decode(token)

Targets come from :mod:`llmc.targets`; the pipeline is chosen by the target's *kind* (its
``pipeline`` hook in :data:`llmc.targets.kinds.KINDS`: ``cpu``, ``cuda``, ``rocm``), never by name. Importing this package does
not import TVM; compiling does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.errors import TargetError
from llmc.targets import Target, get_kind, get_target
from llmc.targets.kinds import kinds_with


def pipeline_for(target: Target) -> Any:
    """The TVM pipeline of ``target``'s kind."""
    kind = get_kind(target.kind)
    if kind.pipeline is None:
        raise TargetError(
            f"target {target.name} has kind {target.kind!r}; the TVM backends handle "
            f"{', '.join(kinds_with('pipeline'))}"
        )
    return kind.hook("pipeline")


def compile_for_target(
    graph: Any, target: Target, out_dir: Path, report: dict[str, Any]
) -> dict[str, Any]:
    """Compile ``graph`` for ``target`` into ``out_dir`` (which the caller makes atomic).

    Writes ``model.so``, ``graph.ir``, ``params.safetensors`` and ``weights.safetensors``; adds
    ``report["backend"]``; returns the manifest fields (runtime, tvm version, backend table).
    """
    return pipeline_for(target).run(graph, target, Path(out_dir), report)


def compile_model(
    graph: Any, target_name: str, out_dir: str | Path, *, report: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`compile_for_target` by target name, creating ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return compile_for_target(graph, get_target(target_name), out, {} if report is None else report)


__all__ = ["compile_for_target", "compile_model", "pipeline_for"]
