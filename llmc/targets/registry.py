"""The target registry: name -> :class:`~llmc.targets.spec.Target`, built from
``llmc/targets/data/<name>.yaml`` on first use; :func:`configure_target` applies ``--arch`` and
``--set`` for every kind.

Backends look targets up here, never by if-chains on names; the roofline and co-design studies
read :func:`resolve_spec`. Example::

    from llmc.targets import get_target, resolve_spec
    t = configure_target(get_target("h100"), {"set": ["bandwidth_gbs=4800"]})
    resolve_spec(t).mem_bandwidth          # 4.8e12
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from llmc.errors import TargetError
from llmc.targets import files
from llmc.targets.kinds import get_kind
from llmc.targets.spec import HardwareSpec, Target, parse_override

_TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    """Add a target built in code (tests, plugins); data files are the usual way."""
    if t.name in target_names():
        raise TargetError(f"target {t.name!r} registered twice")
    get_kind(t.kind)
    _TARGETS[t.name] = t
    return t


def _build(name: str) -> Target:
    if name == "ref":
        return Target("ref", "ref", "llmc's reference interpreter (torch eager, any device)")
    path = files.data_files()[name]
    kind = get_kind(files.file_kind(path))
    if kind.build is not None:
        return kind.hook("build")(name, path)
    return files.load_target_file(name, path)


def get_target(name: str) -> Target:
    if name not in _TARGETS and (name == "ref" or name in files.data_files()):
        _TARGETS[name] = _build(name)
    if name in _TARGETS:
        return _TARGETS[name]
    names = target_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TargetError(f"unknown target '{name}'{hint} (known: {', '.join(names)})")


def target_names() -> list[str]:
    return sorted({"ref", *files.data_files(), *_TARGETS})


def all_targets() -> list[Target]:
    return [get_target(n) for n in target_names()]


def resolve_spec(t: Target) -> HardwareSpec | None:
    """The spec a report should use: the target's, or for a target marked
    ``extra["spec"] == "host"`` (``cpu``) this machine's (:mod:`llmc.targets.host`)."""
    if t.spec is not None and t.extra.get("spec") == "host":
        from llmc.targets.host import host_spec

        return host_spec(t.spec)
    return t.spec


def configure_target(tgt: Target, options: dict[str, Any]) -> Target:
    """``tgt`` with ``{"arch": FILE or None, "set": ["KEY=VALUE", ...]}`` applied.

    FPGA targets go through their kind's ``configure`` hook (board fields such as ``dsp.total``);
    the others take spec keys (:data:`llmc.targets.spec.SPEC_KEYS`): ``--arch FILE`` is a YAML
    file with ``base:`` and a ``spec:`` section, ``--set`` overrides last. An unknown key or an
    impossible value is a :class:`TargetError` naming it; the result's spec is frozen (the host's
    measured spec for ``cpu``, with the overrides on top)."""
    arch = options.get("arch")
    sets = list(options.get("set") or ())
    kind = get_kind(tgt.kind)
    if kind.configure is not None:
        return kind.hook("configure")(tgt, arch, sets)
    if not arch and not sets:
        return tgt
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    if arch:
        base, file_values, file_sources = files.overrides_file(Path(arch))
        if base is not None and base != tgt.name:
            raise TargetError(
                f"{arch}: base '{base}' differs from --target {tgt.name} (drop one of them)"
            )
        values.update(file_values)
        sources.update(file_sources)
    for text in sets:
        key, value = parse_override(text)
        values[key] = value
        sources[key] = f"override (--set {text.strip()})"
    spec = resolve_spec(tgt)
    if spec is None:
        raise TargetError(
            f"--set/--arch: target {tgt.name} ({tgt.kind}) has no hardware spec to override"
        )
    new = spec.with_values(values, "")
    new = dataclasses.replace(
        new,
        sources={**spec.sources, **sources},
        source=f"{spec.source}; overrides: " + ", ".join(f"{k}={v:g}" for k, v in values.items()),
    )
    extra = {k: v for k, v in tgt.extra.items() if k != "spec"}  # measured once, now frozen
    extra["overrides"] = dict(values)
    return dataclasses.replace(tgt, spec=new, extra=extra)


def check_override(tgt: Target, text: str, flag: str = "--set") -> None:
    """Raise :class:`TargetError` when ``KEY=VALUE`` is wrong for ``tgt``'s kind on its own (an
    unknown key, a value of the wrong type or out of range). For FPGA targets the board-wide
    rules are :func:`llmc.fpga.arch.validate`'s (a sweep reports them as infeasible points)."""
    kind = get_kind(tgt.kind)
    if kind.check is not None:
        kind.hook("check")(text, flag)
        return
    parse_override(text, flag)


__all__ = [
    "all_targets",
    "check_override",
    "configure_target",
    "get_target",
    "register_target",
    "resolve_spec",
    "target_names",
]
