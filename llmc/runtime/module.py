"""Any compiled graph as a callable: ``llmc.load(OUT)(*tensors)`` and ``llmc run OUT --inputs``.

Language models run through :mod:`llmc.runtime.lm` (prompts, KV cache); every other graph (a stock
``BertModel`` compiled from ``file.py:factory``) runs here, once per call, on the inputs named and
shaped exactly as at compile time (shapes are fixed: the module was exported on example inputs).

Example::

    m = llmc.load("out/bert")          # a ref or cpu artifact
    hidden, pooled = m(input_ids)      # torch tensors in, torch tensors out
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llmc.errors import InputError, LlmcError, TargetError
from llmc.ir.types import TensorType, from_torch_dtype


class CompiledModule:
    """A loaded artifact, called with its inputs (positional, or by name) -> its outputs.

    ``signature`` lists ``(name, type)`` of the inputs; ``output_names`` the outputs in order.
    One output is returned as a tensor, several as a tuple.
    """

    def __init__(self, path: Path, target: str, kind: str, graph: Any, runner: Any) -> None:
        self.path = path
        self.target = target
        self.kind = kind
        self.graph = graph
        self._runner = runner
        self.signature: list[tuple[str, TensorType]] = [(v.name, v.type) for v in graph.inputs]
        self.output_names: list[str] = [v.name for v in graph.outputs]

    def bind(self, args: tuple[torch.Tensor, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The inputs in signature order, each checked (name, dtype, fixed shape) in one line."""
        names = [n for n, _ in self.signature]
        if args and kwargs:
            raise InputError(f"{self.path}: give the inputs by position or by name, not both")
        if kwargs:
            unknown = [k for k in kwargs if k not in names]
            if unknown:
                raise InputError(
                    f"{self.path}: unknown input {unknown[0]!r}; the module takes {', '.join(names)}"
                )
            missing = [n for n in names if n not in kwargs]
            if missing:
                raise InputError(
                    f"{self.path}: missing input {missing[0]!r} (takes {', '.join(names)})"
                )
            args = tuple(kwargs[n] for n in names)
        if len(args) != len(names):
            raise InputError(
                f"{self.path}: takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}"
            )
        out = []
        for (name, ty), a in zip(self.signature, args, strict=True):
            if not isinstance(a, torch.Tensor):
                raise InputError(
                    f"{self.path}: input {name!r} must be a tensor, got {type(a).__name__}"
                )
            if from_torch_dtype(a.dtype) != ty.dtype:
                raise InputError(
                    f"{self.path}: input {name!r} must be {ty.dtype}, got {from_torch_dtype(a.dtype)}"
                )
            if list(a.shape) != [int(d) if isinstance(d, int) else -1 for d in ty.shape]:
                raise InputError(
                    f"{self.path}: input {name!r} must have shape {list(ty.shape)}, got "
                    f"{list(a.shape)} (shapes are fixed at compile time: recompile with example "
                    "inputs of this shape)"
                )
            out.append(a.contiguous())
        return out

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        outs = self.run_list(self.bind(args, kwargs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run_list(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "ref":
            from llmc.runtime.interp import Interpreter

            return Interpreter(self.graph).run(inputs)
        return self._runner.call_entry("prefill", inputs)

    def named(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on inputs by name; the outputs by name."""
        outs = self.run_list(self.bind((), inputs))
        return dict(zip(self.output_names, outs, strict=True))


def load(path: str | Path, *, device_id: int = 0) -> CompiledModule:
    """A compiled artifact (ref, cpu, cuda, rocm) as a :class:`CompiledModule`."""
    from llmc.artifact import is_artifact, load_artifact
    from llmc.targets import get_target

    p = Path(path)
    if not is_artifact(str(p)):
        raise LlmcError(f"{p}: not a compiled artifact (run `llmc compile MODEL -o {p}` first)")
    art = load_artifact(p)
    kind = get_target(art.target).kind
    runner = None
    if kind in ("cpu", "cuda", "rocm"):
        from llmc.runtime.tvm_runner import load as tvm_load

        runner = tvm_load(p, device_id=device_id)
    elif kind != "ref":
        raise TargetError(
            f"{p}: artifacts for {art.target} ({kind}) cannot be called as a module; compile for "
            "ref, cpu, cuda or rocm"
        )
    return CompiledModule(p, art.target, kind, art.graph, runner)


def load_module(path: str | Path) -> CompiledModule:
    """:func:`load` for the CLI: a model spec (not an artifact) is refused in one line."""
    from llmc.artifact import is_artifact

    if not is_artifact(str(path)):
        raise InputError(
            f"{path}: --inputs runs a compiled artifact; compile it first "
            f"(`llmc compile {path} -o OUT --target ref|cpu`)"
        )
    return load(path)


def load_inputs(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, by name (one line naming the file when unreadable)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: no such file (--inputs)")
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types for a bad file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a safetensors file ({first})") from None


def save_outputs(outs: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``outs`` to ``path`` atomically (a temporary file renamed into place)."""
    import os

    from safetensors.torch import save_file

    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist (--outputs)")
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: v.contiguous() for k, v in outs.items()}, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write the outputs ({e.strerror})") from None


__all__ = ["CompiledModule", "load", "load_inputs", "load_module", "save_outputs"]
