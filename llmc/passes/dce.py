"""Dead-code elimination: drop nodes whose results reach no output, then unused params."""

from __future__ import annotations

from dataclasses import dataclass

from llmc.ir.graph import Graph
from llmc.passes.base import Pass, PassContext


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes no output depends on (regions included) and params no node reads."""

    name = "dce"
    exact = True
    params: bool = True  # also drop params that no `param` node reads any more

    def run(self, graph: Graph, ctx: PassContext) -> None:
        before = sum(1 for _ in graph.walk())
        graph.dce()
        removed = before - sum(1 for _ in graph.walk())
        dropped = graph.prune_params() if self.params else 0
        ctx.report.set(nodes_removed=removed, params_removed=dropped)
