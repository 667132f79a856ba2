"""Elementwise fusion: chains of elementwise ops become one ``fused_elementwise`` node."""

from __future__ import annotations

from dataclasses import dataclass

from llmc.ir.graph import Graph, Node, Value
from llmc.ir.ops_quant import is_fusible
from llmc.passes.base import Pass, PassContext, PassOptionError


def _groups(graph: Graph, max_ops: int) -> list[list[Node]]:
    """Maximal producer->consumer groups: a producer joins when every user of its result is
    already in the group and the result is not a graph output (so the group has one result)."""
    users = graph.users()
    outputs = {id(v) for v in graph.outputs}
    taken: set[int] = set()
    groups = []
    for root in reversed(graph.nodes):
        if id(root) in taken or not is_fusible(root.op):
            continue
        members = {id(root): root}
        changed = True
        while changed and len(members) < max_ops:
            changed = False
            for m in list(members.values()):
                for v in m.inputs:
                    p = v.node
                    if p is None or id(p) in members or id(p) in taken:
                        continue
                    if p.op != "constant" and not is_fusible(p.op):
                        continue
                    if id(v) in outputs:
                        continue
                    if all(id(u) in members for u in users.get(v, [])):
                        members[id(p)] = p
                        changed = True
        ops = [n for n in members.values() if n.op != "constant"]
        if len(ops) >= 2:
            taken.update(members)
            order = {id(n): i for i, n in enumerate(graph.nodes)}
            groups.append(sorted(members.values(), key=lambda n: order[id(n)]))
    return groups


def _fuse(graph: Graph, group: list[Node]) -> None:
    root = group[-1]
    inside = {id(n.out) for n in group}
    region = Graph("region")
    region.parent = graph
    ext: list[Value] = []
    mapping: dict[int, Value] = {}
    for n in group:
        for v in n.inputs:
            if id(v) not in inside and id(v) not in mapping:
                ext.append(v)
                arg = Value(graph.fresh_name(v.name + "_in"), v.type)
                region.inputs.append(arg)
                mapping[id(v)] = arg
    for n in group:
        n.inputs = tuple(mapping.get(id(v), v) for v in n.inputs)
    # The fused node takes over the root's result value (so every use follows); the root keeps
    # computing inside the region under a fresh name.
    result = root.out
    inner = Value(graph.fresh_name(result.name + "_r"), result.type)
    root.out = inner
    inner.node = root
    region.nodes = list(group)
    region.outputs = [inner]
    fused = Node("fused_elementwise", tuple(ext), None, result, root.scope, root.block)
    fused.attrs = graph.make_node(
        "fused_elementwise", ext, {"body": region}, type=result.type
    ).attrs
    idx = graph.nodes.index(root)
    graph.nodes[idx] = fused
    members = {id(n) for n in group}
    graph.nodes = [n for n in graph.nodes if id(n) not in members]


@dataclass(frozen=True)
class FuseElementwise(Pass):
    """Fuse producer->consumer chains of elementwise ops (unary, binary, cast; scalar constants
    are pulled in) into ``fused_elementwise`` nodes with a region; intermediates never reach
    memory. Assumes ops inside a chain have one consumer outside it (the chain's result)."""

    name = "fuse-elementwise"
    exact = True
    max_ops: int = 64  # largest group (ops and constants)

    def check(self) -> None:
        if self.max_ops < 2:
            raise PassOptionError(f"max_ops must be >= 2, got {self.max_ops}")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        groups = _groups(graph, self.max_ops)
        for g in groups:
            _fuse(graph, g)
        ctx.report.set(groups=len(groups), ops_fused=sum(len(g) for g in groups))
