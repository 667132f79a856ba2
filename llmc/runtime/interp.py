"""The reference interpreter: runs any IR graph with torch, on any torch device.

It is the oracle for every differential test: each op runs its registered reference semantics
(:mod:`llmc.ir.ops`), params are read through their storage format (quantized params are
dequantized exactly as ``Param.value`` defines), symbolic dimensions are bound from the shapes of
the actual inputs. Values are freed after their last use, so peak memory follows liveness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.graph import Graph, Node, regions_of
from llmc.ir.registry import get_op
from llmc.ir.types import Dim, SymDim, bind_symbols, eval_dim, from_torch_dtype


class RunContext:
    """What an op's reference implementation may ask of the interpreter."""

    def __init__(self, graph: Graph, device: torch.device, env: dict[str, int]) -> None:
        self.graph = graph.root()
        self.device = device
        self.env = env
        self.hooks: list[Any] = []

    def dim(self, d: Dim) -> int:
        return eval_dim(d, self.env) if isinstance(d, SymDim) else d

    def param(self, name: str) -> torch.Tensor:
        p = self.graph.params[name]
        if p.is_meta:
            raise IRError(
                f"param @{name} has no data (architecture-only model): it can be analysed "
                "and compiled, not executed"
            )
        return p.value(self.device)

    def run_region(self, region: Graph, args: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = _execute(region, list(args), self)
        return outs[0]


def _last_uses(g: Graph) -> dict[int, list[Any]]:
    """node index -> values whose last use is that node (for freeing)."""
    last: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last[id(v)] = i
    keep = {id(v) for v in g.outputs}
    out: dict[int, list[Any]] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            if last.get(id(v)) == i and id(v) not in keep:
                out.setdefault(i, []).append(v)
    return out


def _execute(g: Graph, args: list[torch.Tensor], rt: RunContext) -> list[torch.Tensor]:
    if len(args) != len(g.inputs):
        raise IRError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(args)}")
    vals: dict[int, torch.Tensor] = {id(v): a for v, a in zip(g.inputs, args, strict=True)}
    frees = _last_uses(g)
    for i, n in enumerate(g.nodes):
        res = _run_node(n, [vals[id(v)] for v in n.inputs], rt)
        for hook in rt.hooks:
            r = hook(n, res)
            if r is not None:
                res = r
        vals[id(n.out)] = res
        for v in frees.get(i, ()):
            vals.pop(id(v), None)
    return [vals[id(v)] for v in g.outputs]


def _run_node(n: Node, args: list[torch.Tensor], rt: RunContext) -> torch.Tensor:
    opdef = get_op(n.op)
    try:
        return opdef.ref(args, n.attrs, rt)
    except IRError:
        raise
    except Exception as e:  # an op failing at run time is an IR/backend bug: say where
        where = f" at {n.scope}" if n.scope else ""
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise RuntimeError(
            f"op {n.op} (%{n.out.name}{where}) failed on inputs {shapes}: {e}"
        ) from e


def run(
    graph: Graph,
    inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    device: torch.device | str = "cpu",
    hooks: Sequence[Any] = (),
) -> list[torch.Tensor]:
    """Execute ``graph`` on ``inputs`` (by input name or position); returns the outputs.

    ``hooks`` are called as ``hook(node, result)`` after every top-level and region node; a hook
    may return a replacement tensor (used by calibration and by error-injection tests).
    """
    device = torch.device(device)
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise IRError(f"missing graph inputs: {missing}")
        args = [inputs[v.name] for v in graph.inputs]
    else:
        args = list(inputs)
    args = [a.to(device) for a in args]
    for v, a in zip(graph.inputs, args, strict=True):
        if from_torch_dtype(a.dtype) != v.type.dtype:
            raise IRError(f"input %{v.name} expects {v.type}, got dtype {a.dtype}")
    env: dict[str, int] = {}
    bind_symbols(args, [v.type for v in graph.inputs], env)
    rt = RunContext(graph, device, env)
    rt.hooks = list(hooks)
    with torch.no_grad():
        return _execute(graph, args, rt)


__all__ = ["RunContext", "bind_symbols", "run", "regions_of"]
