"""Target data files: ``llmc/targets/data/<name>.yaml`` and user files given with ``--arch FILE``.

These files are input like any model file: read with ``yaml.safe_load`` only (no tags, no code),
size-capped, every field checked, every error one line naming the file and the key.

A GPU/CPU file::

    kind: cuda
    description: "NVIDIA H100 SXM5 80GB (sm_90)"
    tvm_target: {kind: cuda, arch: sm_90}
    source: "NVIDIA H100 data sheet, dense"
    spec:
      bandwidth_gbs: {value: 3350, source: "data sheet"}   # or a bare number
      mem_gb: 80
      peak_tflops: {f16: {value: 989.4, source: "data sheet"}}
      power_w: 700
      price_usd: 30000

A user file (``--arch mine.yaml``) may start with ``base: h100`` and give only some ``spec`` keys.
FPGA files (``kind: fpga``) are read by the FPGA model (:mod:`llmc.fpga.arch`), which owns their
fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from llmc.errors import TargetError
from llmc.targets.spec import (
    PEAK_PREFIX,
    SPEC_KEYS,
    HardwareSpec,
    Target,
    check_key,
    check_value,
)

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_BYTES = 1 << 20  # a target file is a few hundred bytes; refuse anything past 1 MiB
_TOP_KEYS = ("kind", "description", "tvm_target", "source", "spec", "host", "base", "name")


def data_files() -> dict[str, Path]:
    """Built-in target name -> its data file."""
    return {p.stem: p for p in sorted(DATA_DIR.glob("*.yaml"))}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (safe loader, size-capped); one line naming it otherwise."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise TargetError(f"{path}: larger than {MAX_BYTES} bytes; not a target file")
        text = path.read_text()
    except FileNotFoundError:
        raise TargetError(f"{path}: target file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"{path}: cannot read ({type(e).__name__})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "syntax error"
        raise TargetError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise TargetError(f"{path}: expected a mapping at the top level")
    return doc


def file_kind(path: Path) -> str:
    kind = read_yaml(path).get("kind")
    if not isinstance(kind, str):
        raise TargetError(f"{path}: 'kind' must name a target kind (cuda, rocm, cpu, fpga, ...)")
    return kind


def _figure(path: Path, key: str, raw: Any, default_source: str) -> tuple[float, str]:
    if isinstance(raw, dict):
        if "value" not in raw:
            raise TargetError(f"{path}: spec key '{key}' is a mapping without 'value'")
        extra = set(raw) - {"value", "source"}
        if extra:
            raise TargetError(f"{path}: spec key '{key}': unknown field(s) {sorted(extra)}")
        src = raw.get("source", default_source)
        return check_value(key, raw["value"], str(path)), str(src)
    return check_value(key, raw, str(path)), default_source


def spec_values(path: Path, section: Any) -> tuple[dict[str, float], dict[str, str]]:
    """The ``spec:`` section of a file as {spec key: value} and {spec key: source}."""
    if not isinstance(section, dict):
        raise TargetError(f"{path}: 'spec' must be a mapping of spec keys")
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for k, raw in section.items():
        if k == "peak_tflops":
            if not isinstance(raw, dict) or not raw:
                raise TargetError(f"{path}: 'peak_tflops' must map dtypes to TFLOP/s")
            items = [(f"{PEAK_PREFIX}{d}", v) for d, v in raw.items()]
        else:
            items = [(str(k), raw)]
        for key, v in items:
            try:
                check_key(key, flag=str(path) + ":")
            except TargetError as e:
                raise TargetError(str(e).replace(": ", " ", 1)) from None
            values[key], sources[key] = _figure(path, key, v, path.name)
    return values, sources


def spec_from_values(
    path: Path, values: dict[str, float], sources: dict[str, str], source: str
) -> HardwareSpec:
    missing = [k for k in SPEC_KEYS if k not in values]
    if not any(k.startswith(PEAK_PREFIX) for k in values):
        missing.append("peak_tflops")
    if missing:
        raise TargetError(f"{path}: spec is missing {', '.join(missing)}")
    spec = HardwareSpec({}, 1.0, 1.0, source=source).with_values(values, "")
    return dataclasses.replace(spec, sources=dict(sources))


def load_target_file(name: str, path: Path) -> Target:
    """A built-in GPU/CPU target from its data file."""
    doc = read_yaml(path)
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        raise TargetError(f"{path}: unknown field(s) {', '.join(map(str, unknown))}")
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise TargetError(f"{path}: 'kind' must name a target kind")
    tvm_target = doc.get("tvm_target")
    if tvm_target is not None and not isinstance(tvm_target, dict):
        raise TargetError(f"{path}: 'tvm_target' must be a mapping")
    spec = None
    if "spec" in doc:
        values, sources = spec_values(path, doc["spec"])
        spec = spec_from_values(path, values, sources, str(doc.get("source", path.name)))
    extra = {"spec": "host"} if doc.get("host") is True else {}
    return Target(
        str(doc.get("name", name)),
        kind,
        str(doc.get("description", name)),
        dict(tvm_target) if tvm_target is not None else None,
        spec,
        extra,
    )


def overrides_file(path: Path) -> tuple[str | None, dict[str, float], dict[str, str]]:
    """A user ``--arch FILE`` for a GPU/CPU target: (its ``base`` or None, spec values, sources).

    Only ``base``, ``name``, ``description``, ``source`` and ``spec`` are allowed: a user file
    cannot change a target's kind or its TVM target."""
    doc = read_yaml(path)
    allowed = {"base", "name", "description", "source", "spec"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise TargetError(
            f"{path}: unknown field(s) {', '.join(map(str, unknown))} (a target file for "
            f"--arch gives {', '.join(sorted(allowed))})"
        )
    base = doc.get("base")
    if base is not None and not isinstance(base, str):
        raise TargetError(f"{path}: 'base' must name a target")
    values, sources = spec_values(path, doc.get("spec", {}))
    return base, values, {k: f"{path.name}: {s}" for k, s in sources.items()}


__all__ = [
    "DATA_DIR",
    "data_files",
    "file_kind",
    "load_target_file",
    "overrides_file",
    "read_yaml",
    "spec_values",
]
