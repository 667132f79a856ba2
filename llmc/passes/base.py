"""The pass contract: :class:`Pass`, its typed options, the :class:`PassContext` and reports.

A pass is a **frozen dataclass** whose fields are its options, with a class attribute ``name``
(kebab-case; snake_case spellings are accepted everywhere). ``check()`` validates the options and
raises :class:`PassOptionError` with a message that says what is allowed; ``run(graph, ctx)``
edits ``graph`` **in place** and records what it did in ``ctx.report``. After ``run`` the graph
must verify (:func:`llmc.ir.verify`): the :class:`~llmc.passes.manager.PassManager` checks, and
names the pass that broke it.

Example (a complete pass; see ``docs/custom-pass.md``)::

    from dataclasses import dataclass
    from llmc.passes import Pass, PassOptionError, register_pass

    @register_pass
    @dataclass(frozen=True)
    class ScaleLinears(Pass):
        \"\"\"Multiply every dense linear weight by ``factor``.\"\"\"

        name = "scale-linears"
        factor: float = 1.0

        def check(self) -> None:
            if self.factor <= 0:
                raise PassOptionError(f"factor must be > 0, got {self.factor}")

        def run(self, graph, ctx) -> None:
            for n in graph.find("linear"):
                p = graph.param_of(n.inputs[1])
                if p is not None and p.format.is_dense:
                    p.data["value"] = p.data["value"] * self.factor
                    p.invalidate()
                    ctx.report.count("scaled")

Options given as text (``scale-linears:factor=2``) are converted from the field annotations:
``int``, ``float``, ``bool`` (``true/false/1/0/yes/no``), ``str``, ``Literal[...]`` (a choice),
``tuple[str, ...]`` (``a|b|c``) and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from llmc.errors import LlmcError, PassError

if typing.TYPE_CHECKING:
    from llmc.ir.graph import Graph
    from llmc.passes.calibration import Calibration


class PassOptionError(PassError):
    """A pass was given an impossible or unknown option (the message names pass and option)."""


class UnknownPassError(PassError):
    """No pass of that name is registered (the message suggests the closest name)."""


class CalibrationError(PassError):
    """Calibration data is missing, unreadable or too short for what a pass needs."""


# ----------------------------------------------------------------------------------------------
# reports


class PassRecord(dict):  # type: ignore[type-arg]
    """What one pass did: a JSON-able dict (``pass``, ``options``, ``seconds`` and the pass's own
    fields). Passes write through :meth:`set`, :meth:`count` and :meth:`layer`."""

    def set(self, **fields: Any) -> None:
        self.update(fields)

    def count(self, key: str, n: float = 1) -> None:
        self[key] = self.get(key, 0) + n

    def layer(self, name: str, **fields: Any) -> None:
        """One row per weight/layer touched (``name`` is the param or module path)."""
        self.setdefault("layers", []).append({"name": name, **fields})


class PipelineReport(list):  # type: ignore[type-arg]
    """The records of a pipeline run, in order (a list of :class:`PassRecord`)."""

    def by_pass(self, name: str) -> list[PassRecord]:
        return [r for r in self if r.get("pass") == name]

    def total_seconds(self) -> float:
        return float(sum(r.get("seconds", 0.0) for r in self))


# ----------------------------------------------------------------------------------------------
# context


@dataclass
class PassContext:
    """What a pass may use besides the graph.

    - ``target``: the target name the pipeline compiles for (``ref``, ``h100``, ``u280``, ...);
    - calibration: ``calib_file`` (a UTF-8 text file; default: the embedded *train* split of
      :mod:`llmc.data`, never the held-out text that quality is measured on), ``calib_samples``
      windows of ``calib_seqlen`` tokens (unset: 256, or the model's positions when it has fewer),
      run ``calib_batch`` at a time; ``calib_inputs`` gives
      explicit input batches (dicts by graph-input name) for graphs that are not language models;
    - ``tokenizer``: the model's own, to encode calibration text; without one only a 256-id
      (byte) vocabulary is calibrated, on bytes, and any other vocabulary is refused;
    - ``report``: the record of the pass now running (set by the PassManager);
    - ``device``: where calibration runs (``cpu`` unless told).
    """

    target: str = "ref"
    calib_file: str | Path | None = None
    calib_samples: int = 64
    calib_seqlen: int | None = None
    calib_batch: int = 8
    calib_seed: int = 0
    calib_inputs: list[dict[str, torch.Tensor]] | None = None
    tokenizer: Any = None
    device: str = "cpu"
    report: PassRecord = field(default_factory=PassRecord)
    log: Callable[[str], None] | None = None
    _calibration: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for key in ("calib_samples", "calib_seqlen", "calib_batch"):
            v = getattr(self, key)
            if key == "calib_seqlen" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                flag = "--" + key.replace("_", "-")
                raise CalibrationError(f"{flag} must be a positive integer, got {v!r}")
        if self.calib_seqlen is not None and self.calib_seqlen < 2:
            raise CalibrationError(f"--calib-seqlen must be at least 2, got {self.calib_seqlen}")

    def calibration(self) -> Calibration:
        """The calibration data provider (created on first use, shared by all passes)."""
        if self._calibration is None:
            from llmc.passes.calibration import Calibration

            self._calibration = Calibration(self)
        return self._calibration

    def info(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


# ----------------------------------------------------------------------------------------------
# the pass base class


class Pass:
    """Base of every pass; subclasses are frozen dataclasses (see the module docstring).

    Contract: ``run`` edits the graph in place, leaves it valid for the verifier, never imports a
    backend, and records in ``ctx.report`` what it changed (counts, bits, bytes saved, measured
    error). A pass that needs calibration data gets it from ``ctx.calibration()``.
    """

    name: ClassVar[str] = ""
    #: True for passes whose output must compute exactly what the input did (clean-ups); the
    #: test-suite's property tests run on these.
    exact: ClassVar[bool] = False

    def check(self) -> None:
        """Validate options; raise :class:`PassOptionError` saying what is allowed."""

    def run(self, graph: Graph, ctx: PassContext) -> None:
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    # -- options -----------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> dict[str, Any]:
        """Option name -> resolved type annotation."""
        if not dataclasses.is_dataclass(cls):
            return {}
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> Pass:
        """Build from ``{option: value}``; string values are converted by annotation."""
        fields = cls.option_fields()
        kwargs: dict[str, Any] = {}
        for raw_key, value in (options or {}).items():
            key = str(raw_key).replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                known = ", ".join(fields) or "none"
                raise PassOptionError(
                    f"pass '{cls.name}' has no option '{raw_key}'{hint} (options: {known})"
                )
            kwargs[key] = _convert(cls.name, key, fields[key], value)
        try:
            p = cls(**kwargs)
        except LlmcError:
            raise
        except (TypeError, ValueError) as e:
            raise PassOptionError(f"pass '{cls.name}': {e}") from None
        try:
            p.check()
        except PassOptionError as e:
            msg = str(e)
            raise PassOptionError(
                msg if msg.startswith(f"pass '{cls.name}'") else f"pass '{cls.name}': {msg}"
            ) from None
        return p

    def options(self) -> dict[str, Any]:
        """The options as a JSON-able dict (for reports and manifests)."""
        if not dataclasses.is_dataclass(self):
            return {}
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def spec(self) -> str:
        """This pass as a spec string: only options that differ from their default."""
        parts = [self.name]
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                v = getattr(self, f.name)
                default = (
                    f.default
                    if f.default is not dataclasses.MISSING
                    else (
                        f.default_factory()  # type: ignore[misc]
                        if f.default_factory is not dataclasses.MISSING
                        else dataclasses.MISSING
                    )
                )
                if v != default:
                    parts.append(f"{f.name}={_format(v)}")
        return ":".join(parts)

    @classmethod
    def summary(cls) -> str:
        """First paragraph of the docstring on one line (what ``llmc passes`` prints)."""
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(line.strip() for line in doc.splitlines())


def _format(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "|".join(str(x) for x in v)
    return str(v)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(pname: str, key: str, ann: Any, value: Any) -> Any:
    """Convert ``value`` (usually a string from a spec) to the annotated type."""
    where = f"pass '{pname}': option {key}"
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            if type(None) in args:
                return None
        if len(non_none) == 1:
            return _convert(pname, key, non_none[0], value)
        return value
    if origin is typing.Literal:
        s = _fmt_scalar(value)
        if s not in [str(a) for a in args]:
            choices = ", ".join(str(a) for a in args)
            raise PassOptionError(f"{where} must be one of {choices}, got {value!r}")
        return args[[str(a) for a in args].index(s)]
    if origin is tuple:
        if isinstance(value, str):
            items = [x.strip() for x in value.split("|") if x.strip()]
        elif isinstance(value, (list, tuple)):
            items = [str(x) for x in value]
        else:
            raise PassOptionError(f"{where} expects a list (a|b|c), got {value!r}")
        return tuple(items)
    if ann is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise PassOptionError(f"{where} must be true or false, got {value!r}")
    if ann is int:
        if isinstance(value, bool):
            raise PassOptionError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 10)
        except ValueError:
            raise PassOptionError(f"{where} must be an integer, got {value!r}") from None
    if ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise PassOptionError(f"{where} must be a number, got {value!r}") from None
    if ann is str:
        return _fmt_scalar(value)
    return value


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
