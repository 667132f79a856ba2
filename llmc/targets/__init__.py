"""Targets as data: what each piece of hardware is (:class:`HardwareSpec`, :class:`Target`), the
name registry, the kind registry (how to lower, load, build and configure), the YAML files they
come from (``llmc/targets/data/``), the host CPU's measured spec.

A leaf package: it imports nothing from llmc above ``llmc.ir``, ``llmc.errors`` and ``llmc.cache``
(tests/test_layering.py); backends, fpga, compile and the CLI import it, never the reverse. The
hooks of a kind are ``"module:attr"`` strings resolved on use. See docs/backends.md, "Targets".

Example::

    from llmc.targets import get_target, configure_target, resolve_spec
    t = configure_target(get_target("h100"), {"set": ["bandwidth_gbs=4800"]})
    resolve_spec(t).mem_bandwidth   # 4.8e12
"""

from __future__ import annotations

from llmc.targets.kinds import BACKEND_ABI, KINDS, TargetKind, get_kind
from llmc.targets.registry import (
    all_targets,
    check_override,
    configure_target,
    get_target,
    register_target,
    resolve_spec,
    target_names,
)
from llmc.targets.spec import SPEC_KEYS, HardwareSpec, Target

__all__ = [
    "BACKEND_ABI",
    "KINDS",
    "SPEC_KEYS",
    "HardwareSpec",
    "Target",
    "TargetKind",
    "all_targets",
    "check_override",
    "configure_target",
    "get_kind",
    "get_target",
    "register_target",
    "resolve_spec",
    "target_names",
]
