"""The reference interpreter: runs any IR graph with torch, on any torch device.

It is the oracle for every differential test: each op runs its registered reference semantics
(:mod:`llmc.ir.ops`), params are read through their storage format (quantized params are
dequantized exactly as ``Param.value`` defines), symbolic dimensions are bound from the shapes of
the actual inputs. Values are freed after their last use, so peak memory follows liveness.

:class:`Interpreter` is the one graph walk: :func:`run` (whole graphs), calibration (one layer
segment at a time, observing the inputs of the linears it compresses) and constant folding
(partial evaluation over params and constants) all drive it, and a per-node ``hook(node, inputs,
output)`` sees, and may replace, every value it computes, regions included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.graph import Graph, Node, Value, regions_of
from llmc.ir.registry import get_op
from llmc.ir.types import Dim, SymDim, bind_symbols, eval_dim, from_torch_dtype

#: ``hook(node, inputs, output)`` after each node: return ``None`` to keep ``output`` or a tensor to
#: use instead (the later nodes and the graph's outputs see the replacement).
Hook = Callable[[Node, list[torch.Tensor], torch.Tensor], "torch.Tensor | None"]


class RunContext:
    """What an op's reference implementation may ask of the interpreter: concrete symbol values
    (``env``; ``gather_rows`` binds its fresh length symbol here), params, region execution."""

    def __init__(
        self,
        graph: Graph,
        device: torch.device,
        env: dict[str, int],
        interp: Interpreter | None = None,
    ) -> None:
        self.graph = graph.root()
        self.device = device
        self.env = env
        self.interp = interp
        #: the node whose reference semantics run now (``linear`` reads its weight's recorded
        #: activation quantization through it); None outside a node
        self.node: Node | None = None

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

    def bind(self, symbol: str, value: int, where: str = "") -> None:
        """Bind a symbol computed at run time (a ``gather_rows`` length); a second binding must
        agree with the first."""
        old = self.env.setdefault(symbol, value)
        if old != value:
            raise IRError(f"{where}symbol {symbol} is {value} here but {old} before")

    def run_region(self, region: Graph, args: Sequence[torch.Tensor]) -> torch.Tensor:
        interp = self.interp if self.interp is not None else Interpreter(self.graph, rt=self)
        return interp.run_graph(region, list(args))[0]


class Interpreter:
    """Executes IR graphs with each op's reference semantics, calling ``hook`` after every node.

    ``run(inputs)`` runs the whole graph; ``run_nodes`` runs a slice of its nodes on values held
    by the caller (calibration's layer segments); ``partial`` evaluates what is computable from
    what is known (constant folding); ``eval_node`` runs one node. ``hook`` may be swapped
    between calls (``interp.hook = fn``). Symbols are bound by ``bind`` (from the inputs' shapes)
    and by ops that make fresh ones at run time (``gather_rows``) into ``env``.

    Example::

        seen = []
        interp = Interpreter(g, hook=lambda n, ins, out: seen.append(n.op))
        outs = interp.run({"x": x})
    """

    def __init__(
        self,
        graph: Graph,
        *,
        device: torch.device | str = "cpu",
        hook: Hook | None = None,
        env: dict[str, int] | None = None,
        rt: RunContext | None = None,
    ) -> None:
        self.graph = graph
        self.device = torch.device(device) if rt is None else rt.device
        self.hook = hook
        self.rt = rt if rt is not None else RunContext(graph, self.device, dict(env or {}))
        self.rt.interp = self

    @property
    def env(self) -> dict[str, int]:
        return self.rt.env

    def bind(
        self, inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The graph's arguments in order, on the device, dtypes checked, symbols bound."""
        g = self.graph
        if isinstance(inputs, Mapping):
            missing = [v.name for v in g.inputs if v.name not in inputs]
            if missing:
                raise IRError(f"missing graph inputs: {missing}")
            args = [inputs[v.name] for v in g.inputs]
        else:
            args = list(inputs)
        if len(args) != len(g.inputs):
            raise IRError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(args)}")
        args = [a.to(self.device) for a in args]
        for v, a in zip(g.inputs, args, strict=True):
            if from_torch_dtype(a.dtype) != v.type.dtype:
                raise IRError(f"input %{v.name} expects {v.type}, got dtype {a.dtype}")
        bind_symbols(args, [v.type for v in g.inputs], self.rt.env)
        return args

    def run(
        self, inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Run the whole graph; returns its outputs."""
        args = self.bind(inputs)
        with torch.no_grad():
            return self.run_graph(self.graph, args)

    def run_graph(self, g: Graph, args: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``g`` (the graph or one of its regions) on bound arguments."""
        if len(args) != len(g.inputs):
            raise IRError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(args)}")
        vals: dict[int, torch.Tensor] = {id(v): a for v, a in zip(g.inputs, args, strict=True)}
        frees = _last_uses(g)
        for i, n in enumerate(g.nodes):
            vals[id(n.out)] = self.eval_node(n, [vals[id(v)] for v in n.inputs])
            for v in frees.get(i, ()):
                vals.pop(id(v), None)
        return [vals[id(v)] for v in g.outputs]

    def run_nodes(
        self,
        nodes: Sequence[Node],
        values: Mapping[int, torch.Tensor],
        keep: Callable[[Value], bool],
    ) -> dict[int, torch.Tensor]:
        """Run ``nodes`` (a slice of the graph in order) reading operands from what they produce
        or from ``values`` (``id(value) -> tensor``, not changed). A value is freed after its last
        use in ``nodes`` unless ``keep(value)``; returns the produced values that are kept."""
        local: dict[int, torch.Tensor] = {}
        last: dict[int, int] = {}
        for i, n in enumerate(nodes):
            for v in n.inputs:
                last[id(v)] = i
        for i, n in enumerate(nodes):
            args = []
            for v in n.inputs:
                t = local.get(id(v))
                if t is None:
                    t = values.get(id(v))
                if t is None:
                    raise IRError(
                        f"%{v.name} (read by %{n.out.name}) has no value here; is the graph in "
                        "execution order?"
                    )
                args.append(t)
            local[id(n.out)] = self.eval_node(n, args)
            for v in n.inputs:
                if last.get(id(v)) == i and id(v) in local and not keep(v):
                    del local[id(v)]
        made = {id(n.out): n.out for n in nodes}
        return {k: t for k, t in local.items() if keep(made[k])}

    def partial(
        self, known: dict[int, torch.Tensor], can_run: Callable[[Node], bool]
    ) -> dict[int, torch.Tensor]:
        """Partial evaluation: run each top-level node for which ``can_run(node)`` holds and whose
        operands all have values (in ``known`` or computed before it); ``known`` grows with the
        results and is returned. Nothing is freed."""
        for n in self.graph.nodes:
            if id(n.out) in known or not can_run(n):
                continue
            if all(id(v) in known for v in n.inputs):
                known[id(n.out)] = self.eval_node(n, [known[id(v)] for v in n.inputs])
        return known

    def eval_node(self, n: Node, args: list[torch.Tensor]) -> torch.Tensor:
        """Run one node's reference semantics on ``args``, then the hook."""
        res = _run_node(n, args, self.rt)
        if self.hook is not None:
            r = self.hook(n, args, res)
            if r is not None:
                res = r
        return res


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


def _run_node(n: Node, args: list[torch.Tensor], rt: RunContext) -> torch.Tensor:
    opdef = get_op(n.op)
    rt.node = n
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
    *,
    hook: Hook | None = None,
) -> list[torch.Tensor]:
    """Execute ``graph`` on ``inputs`` (by input name or position); returns the outputs.

    ``hook(node, inputs, output)`` (see :class:`Interpreter`) runs after every top-level and region
    node and may return a replacement tensor. ``hooks`` are the older two-argument form
    ``hook(node, output)``, run in order after ``hook``.
    """
    fns = list(hooks)

    def combined(n: Node, ins: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor | None:
        changed = False
        if hook is not None:
            r = hook(n, ins, out)
            if r is not None:
                out, changed = r, True
        for fn in fns:
            r = fn(n, out)
            if r is not None:
                out, changed = r, True
        return out if changed else None

    return Interpreter(graph, device=device, hook=combined if fns else hook).run(inputs)


__all__ = ["Hook", "Interpreter", "RunContext", "run", "regions_of"]
