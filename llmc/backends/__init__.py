"""Backends: lowering the IR to TVM for CPUs and GPUs (the FPGA model lives in ``llmc.fpga``).

Public API (what ``llmc compile --target`` calls, through ``llmc.compile.BACKENDS``)::

    from llmc.backends import compile_model
    fields = compile_model(graph, "cpu", "out/tiny")     # writes model.so, weights, graph.ir
    # -> manifest fields: runtime, tvm version, backend {functions, kernels, weights, ...}

    from llmc.runtime.tvm_runner import load
    lm = load("out/tiny")                                 # needs only the TVM runtime
    logits = lm.prefill(ids); logits = lm.decode(token)

Targets come from :mod:`llmc.backends.targets`; the pipeline is chosen by the target's *kind*
through :data:`PIPELINES` (``cpu``, ``cuda``, ``rocm``), never by name. Importing this package does
not import TVM; compiling does.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from llmc.backends.targets import Target, get_target
from llmc.errors import TargetError

#: target kind -> "module:attribute" of its TVMPipeline instance.
PIPELINES: dict[str, str] = {
    "cpu": "llmc.backends.cpu.pipeline:PIPELINE",
    "cuda": "llmc.backends.cuda.pipeline:PIPELINE",
    "rocm": "llmc.backends.rocm.pipeline:PIPELINE",
}


def pipeline_for(target: Target) -> Any:
    spec = PIPELINES.get(target.kind)
    if spec is None:
        raise TargetError(
            f"target {target.name} has kind {target.kind!r}; the TVM backends handle "
            f"{', '.join(sorted(PIPELINES))}"
        )
    mod, attr = spec.split(":")
    return getattr(importlib.import_module(mod), attr)


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


__all__ = ["PIPELINES", "compile_for_target", "compile_model", "pipeline_for"]
