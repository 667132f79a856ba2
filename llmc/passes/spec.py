"""Pipeline specs: the string form and the YAML recipe form.

String form: passes separated by commas, a pass's options by colons, each option ``key=value``.
A colon starts a new option only where ``key=`` follows, so values may hold colons::

    wanda:sparsity=0.5,smoothquant:alpha=0.5,w8a8
    rtn:bits=4:group=128
    sparsegpt:pattern=2:4
    magnitude:sparsity=0.5:exclude=lm_head|down_proj      (a list option: items joined by |)

Recipe form (YAML): a list of passes, each a name, a one-entry mapping ``{name: {options}}``, a
mapping with a ``pass`` key, or a spec string; optionally under ``passes:`` beside a
``calibration:`` mapping (``file``, ``samples``, ``seqlen``, ``batch``, ``seed``)::

    calibration: {samples: 64, seqlen: 256}
    passes:
      - smoothquant: {alpha: 0.5}
      - w8a8
      - rtn: {bits: 4, group: 128}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc.passes.base import PassError

_OPT_SPLIT = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_-]*\s*=)")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class SpecError(PassError):
    """A pipeline spec or recipe is malformed (the message quotes the offending part)."""


@dataclass
class PassSpec:
    """One pipeline entry before its pass class is looked up."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineSpec:
    passes: list[PassSpec]
    calibration: dict[str, Any] = field(default_factory=dict)


def parse_spec(spec: str) -> list[PassSpec]:
    """Parse ``name:key=value:key=value,name2,...`` (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty pass spec: give passes like 'wanda:sparsity=0.5,rtn:bits=4'")
    out = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            raise SpecError(f"empty pass in spec {spec!r} (two commas in a row, or a trailing one)")
        out.append(_parse_one(piece, spec))
    return out


def _parse_one(piece: str, whole: str) -> PassSpec:
    name, sep, rest = piece.partition(":")
    name = name.strip()
    if not _NAME_RE.match(name):
        raise SpecError(f"bad pass name {name!r} in spec {whole!r}")
    opts: dict[str, Any] = {}
    if sep:
        if not rest.strip():
            raise SpecError(f"pass '{name}' in spec {whole!r} has ':' but no options")
        for item in _OPT_SPLIT.split(rest):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not _NAME_RE.match(key):
                raise SpecError(
                    f"option {item!r} of pass '{name}' must be key=value (e.g. {name}:sparsity=0.5)"
                )
            if key.replace("-", "_") in {k.replace("-", "_") for k in opts}:
                raise SpecError(f"option '{key}' given twice for pass '{name}'")
            opts[key] = value.strip()
    return PassSpec(name, opts)


def format_spec(passes: list[PassSpec]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "|".join(str(x) for x in v)
        return str(v)

    return ",".join(
        ":".join([p.name, *(f"{k}={fmt(v)}" for k, v in p.options.items())]) for p in passes
    )


_CALIB_KEYS = {"file", "samples", "seqlen", "batch", "seed"}


def load_recipe(path: Path | str) -> PipelineSpec:
    """Read a YAML recipe (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read recipe: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    calib: dict[str, Any] = {}
    if isinstance(doc, dict):
        unknown = set(doc) - {"passes", "calibration"}
        if unknown:
            raise SpecError(
                f"{path}: unknown recipe key(s) {sorted(unknown)} (expected passes, calibration)"
            )
        calib = doc.get("calibration") or {}
        if not isinstance(calib, dict) or set(calib) - _CALIB_KEYS:
            raise SpecError(
                f"{path}: 'calibration' must be a mapping with keys {sorted(_CALIB_KEYS)}"
            )
        doc = doc.get("passes")
    if not isinstance(doc, list) or not doc:
        raise SpecError(f"{path}: a recipe is a non-empty list of passes (or has a 'passes' list)")
    passes: list[PassSpec] = []
    for i, item in enumerate(doc):
        where = f"{path}: pass #{i + 1}"
        if isinstance(item, str):
            passes.extend(parse_spec(item))
        elif isinstance(item, dict) and ("pass" in item or "name" in item):
            key = "pass" if "pass" in item else "name"
            opts = {k: v for k, v in item.items() if k != key}
            passes.append(PassSpec(str(item[key]), opts))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, opts),) = item.items()
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise SpecError(f"{where}: options of '{name}' must be a mapping, got {opts!r}")
            passes.append(PassSpec(str(name), dict(opts)))
        else:
            raise SpecError(
                f"{where}: expected a name, 'name:key=value' or {{name: {{options}}}}, got {item!r}"
            )
    return PipelineSpec(passes, dict(calib))
