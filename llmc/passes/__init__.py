"""Passes: analysis and transforms over the IR, composed by a :class:`PassManager`.

Public API (what the CLI and users call)::

    from llmc.passes import build_pipeline, PassContext, list_passes, evaluate

    pm = build_pipeline("wanda:sparsity=0.5,rtn:bits=4:group=128")   # or recipe=Path("r.yaml")
    report = pm.run(graph, PassContext(calib_samples=32))              # edits graph in place
    for name, doc in list_passes(): ...
    numbers = evaluate(graph, "gptq:bits=4:group=128")                 # perplexity, agreement

Writing a pass: subclass :class:`Pass` as a frozen dataclass and decorate it with
:func:`register_pass` (``docs/custom-pass.md``). Passes in other packages register through the
``llmc.plugins`` entry-point group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.passes.base import (
    CalibrationError,
    Pass,
    PassContext,
    PassOptionError,
    PassRecord,
    PipelineReport,
    UnknownPassError,
)
from llmc.passes.manager import (
    DumpIR,
    PassInstrument,
    PassManager,
    PipelineError,
    PrintAfter,
    Timing,
)
from llmc.passes.registry import get_pass, list_passes, load_plugins, register_pass
from llmc.passes.spec import PassSpec, SpecError, load_recipe, parse_spec

__all__ = [
    "CalibrationError",
    "DumpIR",
    "Pass",
    "PassContext",
    "PassInstrument",
    "PassManager",
    "PassOptionError",
    "PassRecord",
    "PassSpec",
    "PipelineError",
    "PipelineReport",
    "PrintAfter",
    "SpecError",
    "Timing",
    "UnknownPassError",
    "build_pipeline",
    "evaluate",
    "get_pass",
    "list_passes",
    "load_plugins",
    "load_recipe",
    "parse_spec",
    "register_pass",
]


def instantiate(specs: list[PassSpec]) -> list[Pass]:
    """Look up and configure each pass (options validated here, before anything runs)."""
    return [get_pass(s.name).from_options(s.options) for s in specs]


def build_pipeline(
    spec: str | None = None, recipe: Path | str | None = None, *, verify: bool = True
) -> PassManager:
    """A :class:`PassManager` from a spec string or a YAML recipe (not both; neither gives an
    empty pipeline). Unknown passes and bad options raise here, before any pass runs."""
    if spec and recipe:
        raise SpecError("give either a pass spec or a recipe, not both")
    calibration: dict[str, Any] = {}
    if recipe:
        rs = load_recipe(recipe)
        specs, calibration = rs.passes, rs.calibration
    elif spec:
        specs = parse_spec(spec)
    else:
        specs = []
    return PassManager(instantiate(specs), verify=verify, calibration=calibration)


def evaluate(graph: Any, passes_spec: str | None = None, **kw: Any) -> dict[str, Any]:
    """Perplexity and next-token agreement of ``graph`` after ``passes_spec`` (on a copy);
    see :func:`llmc.passes.quality.evaluate`."""
    from llmc.passes.quality import evaluate as _evaluate

    return _evaluate(graph, passes_spec, **kw)
