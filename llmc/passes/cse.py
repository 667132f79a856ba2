"""Common-subexpression elimination: one node per (op, operands, attributes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmc.ir.graph import Graph, Node, regions_of
from llmc.ir.registry import get_op
from llmc.passes.base import Pass, PassContext


def _key(n: Node) -> tuple[Any, ...] | None:
    """A hashable identity for ``n``'s computation, or None when it must stay unique."""
    od = get_op(n.op)
    if od.has_side_effects or od.region_fields:
        return None
    try:
        hash(n.attrs)
    except TypeError:
        return None
    return (n.op, tuple(id(v) for v in n.inputs), n.attrs, n.out.type)


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes computing the same op on the same operands with equal attributes; the first
    occurrence (its name, scope and block) survives. Regions are processed on their own."""

    name = "cse"
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> None:
        ctx.report.set(nodes_merged=self._run(graph))

    def _run(self, graph: Graph) -> int:
        seen: dict[tuple[Any, ...], Node] = {}
        merged = 0
        replace: dict[int, Node] = {}
        keep: list[Node] = []
        for n in graph.nodes:
            if any(id(v) in replace for v in n.inputs):
                n.inputs = tuple(replace[id(v)].out if id(v) in replace else v for v in n.inputs)
            for r in regions_of(n):
                merged += self._run(r)
            k = _key(n)
            if k is not None and k in seen:
                replace[id(n.out)] = seen[k]
                merged += 1
                continue
            if k is not None:
                seen[k] = n
            keep.append(n)
        graph.nodes = keep
        graph.outputs = [replace[id(v)].out if id(v) in replace else v for v in graph.outputs]
        # Free uses inside regions are not allowed by the verifier (no implicit capture), so
        # only the top level and region bodies need rewiring, done above.
        return merged
