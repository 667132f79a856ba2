"""The :class:`PassManager`: runs a pipeline, verifies after every pass, reports, instruments.

Instrumentation wraps passes from the outside (the passes never know): an instrument sees the
pipeline start and end and every pass before and after it runs. Built in: :class:`PrintAfter`
(print the IR after some or all passes), :class:`Timing` (a table of wall times) and
:class:`DumpIR` (``DIR/00-input.ir``, ``DIR/01-<pass>.ir``, ... — what ``--dump-ir`` writes).

When a pass raises or leaves the IR invalid, the manager raises :class:`PipelineError`: one line
naming the pass, its position, and the passes that ran before it (the graph is left as the failing
pass left it; callers that need atomicity work on a copy, as ``llmc.passes.quality`` does).

Example::

    pm = build_pipeline("wanda:sparsity=0.5,rtn:bits=4:group=128")
    pm.add_instrument(PrintAfter({"wanda"}))
    report = pm.run(graph, PassContext())
    print(report[0]["sparsity"], report.total_seconds())
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from llmc.console import stage
from llmc.errors import LlmcError, PassError, VerifyError
from llmc.ir.graph import Graph
from llmc.ir.params import Param
from llmc.ir.printer import print_graph
from llmc.ir.verify import check
from llmc.passes.base import Pass, PassContext, PassRecord, PipelineReport


class PipelineError(PassError):
    """A pass failed or broke the IR; ``pass_name``, ``index`` and ``before`` say where."""

    def __init__(self, msg: str, *, pass_name: str, index: int, before: list[str]) -> None:
        super().__init__(msg)
        self.pass_name = pass_name
        self.index = index
        self.before = before


class PassInstrument:
    """Hooks around a pipeline; override what you need (all default to doing nothing)."""

    def enter_pipeline(self, passes: Sequence[Pass], graph: Graph, ctx: PassContext) -> None:
        pass

    def before_pass(self, index: int, p: Pass, graph: Graph, ctx: PassContext) -> None:
        pass

    def after_pass(
        self, index: int, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord
    ) -> None:
        pass

    def exit_pipeline(self, graph: Graph, ctx: PassContext, report: PipelineReport) -> None:
        pass


class PrintAfter(PassInstrument):
    """Print the IR after the named passes (all passes when ``names`` is None)."""

    def __init__(self, names: Iterable[str] | None = None, stream: TextIO | None = None) -> None:
        self.names = None if names is None else {n.replace("_", "-") for n in names}
        self.stream = stream

    def after_pass(
        self, index: int, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord
    ) -> None:
        if self.names is None or p.name in self.names:
            out = self.stream or sys.stderr
            out.write(f"// ----- IR after {p.name} (#{index + 1}) -----\n")
            out.write(print_graph(graph))


class Timing(PassInstrument):
    """Collect wall time per pass; ``rows`` after the run, a table on ``stream`` if given."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.rows: list[tuple[str, float]] = []
        self._t0 = 0.0

    def enter_pipeline(self, passes: Sequence[Pass], graph: Graph, ctx: PassContext) -> None:
        self.rows = []

    def before_pass(self, index: int, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self._t0 = time.perf_counter()

    def after_pass(
        self, index: int, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord
    ) -> None:
        self.rows.append((p.name, time.perf_counter() - self._t0))

    def exit_pipeline(self, graph: Graph, ctx: PassContext, report: PipelineReport) -> None:
        if self.stream is not None:
            total = sum(t for _, t in self.rows) or 1e-12
            for name, t in self.rows:
                self.stream.write(f"{name:20s} {t:9.3f} s  {100 * t / total:5.1f}%\n")


class DumpIR(PassInstrument):
    """Write the IR before the first pass and after each pass into ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def enter_pipeline(self, passes: Sequence[Pass], graph: Graph, ctx: PassContext) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PassError(f"--dump-ir {self.directory}: cannot create directory: {e}") from None
        self._write("00-input.ir", graph)

    def after_pass(
        self, index: int, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord
    ) -> None:
        self._write(f"{index + 1:02d}-{p.name}.ir", graph)

    def _write(self, fname: str, graph: Graph) -> None:
        try:
            (self.directory / fname).write_text(print_graph(graph), encoding="utf-8")
        except OSError as e:
            raise PassError(f"--dump-ir {self.directory / fname}: cannot write: {e}") from None


class PassManager:
    """An ordered pipeline of configured passes (see the module docstring)."""

    def __init__(
        self,
        passes: Sequence[Pass] = (),
        *,
        verify: bool = True,
        instruments: Sequence[PassInstrument] = (),
        calibration: dict[str, Any] | None = None,
    ) -> None:
        self.passes: list[Pass] = list(passes)
        self.verify = verify
        self.instruments: list[PassInstrument] = list(instruments)
        #: calibration defaults from a recipe (file, samples, seqlen, batch, seed); options the
        #: caller set explicitly on the context win.
        self.calibration = dict(calibration or {})

    def add(self, p: Pass) -> PassManager:
        self.passes.append(p)
        return self

    def add_instrument(self, inst: PassInstrument) -> PassManager:
        self.instruments.append(inst)
        return self

    def print_after(self, names: Iterable[str] | None = None, stream: TextIO | None = None):
        return self.add_instrument(PrintAfter(names, stream))

    def dump_ir(self, directory: Path | str) -> PassManager:
        return self.add_instrument(DumpIR(directory))

    def spec(self) -> str:
        return ",".join(p.spec() for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __repr__(self) -> str:
        return f"PassManager({self.spec()!r})"

    def _apply_calibration_defaults(self, ctx: PassContext) -> None:
        defaults = PassContext()
        mapping = {
            "file": "calib_file",
            "samples": "calib_samples",
            "seqlen": "calib_seqlen",
            "batch": "calib_batch",
            "seed": "calib_seed",
        }
        for key, attr in mapping.items():
            if key in self.calibration and getattr(ctx, attr) == getattr(defaults, attr):
                setattr(ctx, attr, self.calibration[key])
        if self.calibration:
            ctx.__post_init__()

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PipelineReport:
        """Run every pass in order on ``graph`` (in place); returns one record per pass."""
        ctx = ctx if ctx is not None else PassContext()
        self._apply_calibration_defaults(ctx)
        report = PipelineReport()
        if self.verify:
            errs = check(graph, after_param=_let_go)
            if errs:
                raise VerifyError(errs, f"graph @{graph.name} is invalid before any pass ran")
        for inst in self.instruments:
            inst.enter_pipeline(self.passes, graph, ctx)
        names = [p.name for p in self.passes]
        for i, p in enumerate(self.passes):
            record = PassRecord({"pass": p.name, "options": p.options()})
            ctx.report = record
            for inst in self.instruments:
                inst.before_pass(i, p, graph, ctx)
            t0 = time.perf_counter()
            try:
                with stage(f"pass {i + 1}/{len(names)} {p.name}"):
                    p.run(graph, ctx)
            except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
                raise self._error(i, names, _describe(e)) from e
            record["seconds"] = time.perf_counter() - t0
            if self.verify:
                errs = check(graph, after_param=_let_go)
                if errs:
                    shown = "; ".join(errs[:3]) + (
                        f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
                    )
                    raise self._error(i, names, f"left the IR invalid: {shown}")
            report.append(record)
            # the passes that produced the graph, in order (export records it)
            graph.pipeline = f"{graph.pipeline},{p.spec()}" if graph.pipeline else p.spec()
            for inst in self.instruments:
                inst.after_pass(i, p, graph, ctx, record)
        for inst in self.instruments:
            inst.exit_pipeline(graph, ctx, report)
        return report

    @staticmethod
    def _error(i: int, names: list[str], what: str) -> PipelineError:
        before = names[:i]
        prev = f"after {', '.join(before)}" if before else "as the first pass"
        return PipelineError(
            f"pass '{names[i]}' (#{i + 1} of {len(names)}, {prev}) {what}",
            pass_name=names[i],
            index=i,
            before=before,
        )


def _let_go(p: Param) -> None:
    """Drop the mapped pages the verifier read from ``p`` (its codes' range check): verifying a
    compile's model must not make every weight resident (:func:`llmc.safetensors_io.release`)."""
    from llmc.safetensors_io import release

    for t in p.data.values():
        release(t)


def _describe(e: BaseException) -> str:
    if isinstance(e, LlmcError):
        return f"failed: {e}"
    return f"failed with {type(e).__name__}: {e} (a bug in the pass; run it in Python for the traceback)"
