"""The kind registry: for each kind of hardware, how to lower, load, build and configure a target.

Everything is a ``"module:attr"`` string resolved on first use, so this package imports nothing
above ``llmc.ir``/``llmc.errors`` and asking about the FPGA model never loads TVM (nor the
reverse). A new GPU is a data file (``llmc/targets/data/<name>.yaml``); a new *kind* of hardware
is one :class:`TargetKind` here.

Hooks (each optional):

- ``lower(graph, target, tmp_dir, report) -> manifest fields``: ``llmc compile``'s backend;
- ``load(artifact_dir, **kw) -> LanguageModel``: the runtime of its artifacts;
- ``pipeline``: the TVM pipeline object (``TVMPipeline``) for TVM kinds;
- ``build(name, path) -> Target``: a target from a data file whose format the kind owns (FPGA
  boards); without it the file is read by :mod:`llmc.targets.files`;
- ``configure(target, arch, sets) -> Target``: ``--arch FILE`` / ``--set KEY=VALUE``; without it
  the spec keys of :mod:`llmc.targets.spec` apply;
- ``check(text, flag)``: one ``KEY=VALUE`` checked on its own (with ``configure``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmc.errors import TargetError

#: The ABI between the TVM backends and their runtime (the functions, argument order and weight
#: layout a ``model.so`` exports), recorded in the manifest; the runtime refuses another one.
#: v2: the KV cache stays in place (``kv_len`` argument). v3: an entry with a workspace function
#: (``backend.workspaces``) takes its results after its weights (llmc.backends.vm_plan).
BACKEND_ABI = "llmc-tvm-v3"


@dataclass(frozen=True)
class TargetKind:
    name: str
    description: str
    lower: str | None = None
    load: str | None = None
    pipeline: str | None = None
    build: str | None = None
    configure: str | None = None
    check: str | None = None

    def hook(self, which: str) -> Any:
        """The resolved ``which`` hook; :class:`TargetError` naming the kind when it has none."""
        spec = getattr(self, which)
        if spec is None:
            raise TargetError(f"targets of kind {self.name!r} have no {which} step")
        return resolve(spec)


def resolve(spec: str) -> Any:
    """``"module:attr"`` -> the attribute."""
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


_TVM_LOAD = "llmc.runtime.tvm_runner:load"
_TVM_LOWER = "llmc.backends:compile_for_target"

KINDS: dict[str, TargetKind] = {
    k.name: k
    for k in (
        TargetKind(
            "ref",
            "llmc's reference interpreter",
            lower="llmc.compile:_compile_ref",
            load="llmc.compile:_load_ref",
        ),
        TargetKind(
            "cpu",
            "CPUs through TVM's LLVM backend",
            lower=_TVM_LOWER,
            load=_TVM_LOAD,
            pipeline="llmc.backends.cpu.pipeline:PIPELINE",
        ),
        TargetKind(
            "cuda",
            "NVIDIA GPUs through TVM's CUDA backend",
            lower=_TVM_LOWER,
            load=_TVM_LOAD,
            pipeline="llmc.backends.cuda.pipeline:PIPELINE",
        ),
        TargetKind(
            "rocm",
            "AMD GPUs through TVM's ROCm backend",
            lower=_TVM_LOWER,
            load=_TVM_LOAD,
            pipeline="llmc.backends.rocm.pipeline:PIPELINE",
        ),
        TargetKind(
            "fpga",
            "the FlightLLM FPGA model (instruction streams, cycle simulator, HLS)",
            lower="llmc.fpga:compile_for_target",
            load="llmc.fpga.runner:load",
            build="llmc.fpga.arch:target_from_file",
            configure="llmc.fpga.arch:configure_target",
            check="llmc.fpga.arch:check_override",
        ),
    )
}


def get_kind(name: str) -> TargetKind:
    if name not in KINDS:
        raise TargetError(f"unknown target kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def kinds_with(hook: str) -> list[str]:
    """The kinds that have ``hook`` (e.g. ``pipeline``: the TVM kinds)."""
    return sorted(k for k, v in KINDS.items() if getattr(v, hook) is not None)


def lower_fn(kind: str) -> Callable[..., Any]:
    return get_kind(kind).hook("lower")


__all__ = ["BACKEND_ABI", "KINDS", "TargetKind", "get_kind", "kinds_with", "lower_fn", "resolve"]
