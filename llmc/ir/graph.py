"""The graph: SSA values, nodes, regions, and a builder.

A :class:`Graph` holds its inputs (block arguments), a list of :class:`Node` in a valid execution
order, its outputs, and (at the top level) the table of :class:`~llmc.ir.params.Param`. Each node
produces exactly one :class:`Value`. A node's attributes are a frozen dataclass declared by its op
(see :mod:`llmc.ir.ops`); ``cond`` carries two nested graphs (regions) as attributes, which see the
parent's param table.

Nodes keep provenance: ``scope`` is the module path the node came from
(``model.layers.3.mlp.down_proj``) and ``block`` a coarse tag (one of :data:`BLOCK_TAGS`), so passes
such as FFN skipping or per-layer pruning can find their targets without guessing.

Example::

    b = GraphBuilder("toy")
    x = b.input("x", TensorType((sym("batch"), 16), "f32"))
    w = b.param("fc.weight", torch.randn(8, 16))
    with b.scope("fc", block="ffn"):
        y = b.emit("linear", x, w)
    b.output(b.emit("relu", y))
    g = b.finish()
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch

from llmc.errors import IRError
from llmc.ir.params import Param
from llmc.ir.types import TensorType

BLOCK_TAGS = frozenset({"", "embed", "attn", "ffn", "norm", "head", "rope", "moe", "skip", "prune"})


class Value:
    """An SSA value: a graph input or the result of exactly one node."""

    __slots__ = ("name", "type", "node")

    def __init__(self, name: str, type: TensorType, node: Node | None = None) -> None:
        self.name = name
        self.type = type
        self.node = node

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation. Treat as immutable outside :class:`Graph`'s editing methods."""

    __slots__ = ("op", "inputs", "attrs", "out", "scope", "block")

    def __init__(
        self,
        op: str,
        inputs: tuple[Value, ...],
        attrs: Any,
        out: Value,
        scope: str = "",
        block: str = "",
    ) -> None:
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = attrs
        self.out = out
        self.scope = scope
        self.block = block
        out.node = self

    @property
    def type(self) -> TensorType:
        return self.out.type

    def __repr__(self) -> str:
        args = ", ".join(f"%{v.name}" for v in self.inputs)
        return f"%{self.out.name} = {self.op}({args})"


class Graph:
    """A function in SSA form; see the module docstring."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.params: dict[str, Param] = {}
        self.meta: dict[str, Any] = {}
        # the pass specs that produced this graph, comma-joined in order (PassManager appends;
        # not part of the printed IR, so passes stay comparable by their printed output)
        self.pipeline: str = ""
        self.parent: Graph | None = None  # set for regions (cond branches)
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- naming ----------------------------------------------------------------------------
    def root(self) -> Graph:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def fresh_name(self, hint: str = "") -> str:
        root = self.root()
        base = _sanitize(hint) if hint else ""
        if base and base not in root._names:
            root._names.add(base)
            return base
        while True:
            n = next(root._counter)
            name = f"{base}_{n}" if base else str(n)
            if name not in root._names:
                root._names.add(name)
                return name

    def claim_name(self, name: str) -> None:
        root = self.root()
        if name in root._names:
            raise IRError(f"duplicate value name %{name}")
        root._names.add(name)

    # -- construction ----------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        self.claim_name(name)
        v = Value(name, type)
        self.inputs.append(v)
        return v

    def add_param(self, param: Param) -> None:
        root = self.root()
        if param.name in root.params:
            raise IRError(f"duplicate param @{param.name}")
        root.params[param.name] = param

    def append(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def make_node(
        self,
        op: str,
        inputs: tuple[Value, ...] | list[Value],
        attrs: Any = None,
        *,
        name: str = "",
        scope: str = "",
        block: str = "",
        type: TensorType | None = None,
    ) -> Node:
        """Create (but do not insert) a node; its type is inferred unless given."""
        from llmc.ir.ops import get_op

        opdef = get_op(op)
        attrs = opdef.coerce_attrs(attrs)
        inputs = tuple(inputs)
        if type is None:
            type = opdef.infer_type(inputs, attrs, self)
        out = Value(self.fresh_name(name), type)
        return Node(op, inputs, attrs, out, scope, block)

    # -- queries ---------------------------------------------------------------------------
    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def walk(self) -> Iterator[tuple[Graph, Node]]:
        """Every node, regions included, with the graph that holds it (pre-order)."""
        for n in self.nodes:
            yield self, n
            for r in regions_of(n):
                yield from r.walk()

    def param_of(self, v: Value) -> Param | None:
        """The param a value reads, if it is the result of a ``param`` node."""
        if v.node is not None and v.node.op == "param":
            return self.root().params.get(v.node.attrs.name)
        return None

    def find(self, op: str | None = None, scope: str | None = None) -> list[Node]:
        return [
            n
            for _, n in self.walk()
            if (op is None or n.op == op) and (scope is None or n.scope.startswith(scope))
        ]

    # -- editing ---------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value, *, after: Node | None = None) -> int:
        """Make every use of ``old`` (in nodes, regions' free uses and outputs) use ``new``."""
        count = 0
        start = 0 if after is None else self.nodes.index(after) + 1
        for n in self.nodes[start:]:
            if any(v is old for v in n.inputs):
                n.inputs = tuple(new if v is old else v for v in n.inputs)
                count += 1
        self.outputs = [new if v is old else v for v in self.outputs]
        return count

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self.nodes.insert(self.nodes.index(anchor), node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self.nodes.insert(self.nodes.index(anchor) + 1, node)
        return node

    def remove(self, node: Node) -> None:
        self.nodes.remove(node)

    def dce(self) -> int:
        """Remove nodes whose results are never used; returns how many were removed."""
        from llmc.ir.ops import get_op

        live: set[int] = {id(v) for v in self.outputs}
        keep: list[Node] = []
        for n in reversed(self.nodes):
            if id(n.out) in live or get_op(n.op).has_side_effects:
                keep.append(n)
                live.update(id(v) for v in n.inputs)
                for r in regions_of(n):
                    r.dce()
        removed = len(self.nodes) - len(keep)
        self.nodes = list(reversed(keep))
        return removed

    def prune_params(self) -> int:
        """Drop params that no ``param`` node reads any more."""
        used = {n.attrs.name for _, n in self.walk() if n.op == "param"}
        dead = [k for k in self.params if k not in used]
        for k in dead:
            del self.params[k]
        return len(dead)

    def copy(self) -> Graph:
        """A structural copy sharing param *data* (params are re-wrapped, tensors shared)."""
        from llmc.ir.parser import parse_graph
        from llmc.ir.printer import print_graph

        g = parse_graph(print_graph(self))
        for name, p in self.params.items():
            g.params[name] = Param(p.name, p.type, p.format, dict(p.data))
        g.meta = _deepcopy_meta(self.meta)
        g.pipeline = self.pipeline
        return g

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"

    def __str__(self) -> str:
        from llmc.ir.printer import print_graph

        return print_graph(self)


def regions_of(n: Node) -> list[Graph]:
    """The regions a node carries ([] for unknown ops or malformed attributes, which the
    verifier reports instead of crashing on)."""
    from llmc.ir.ops import get_op

    try:
        fields = get_op(n.op).region_fields
    except IRError:
        return []
    return [r for r in (getattr(n.attrs, f, None) for f in fields) if isinstance(r, Graph)]


def _sanitize(hint: str) -> str:
    out = "".join(c if (c.isalnum() or c in "_.") else "_" for c in hint)
    return out.strip(".") or "v"


def _deepcopy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(meta)


class GraphBuilder:
    """Convenience front end for building graphs (used by the frontend, passes and tests)."""

    def __init__(self, name: str = "main", graph: Graph | None = None) -> None:
        self.graph = graph if graph is not None else Graph(name)
        self._scope: list[tuple[str, str]] = [("", "")]

    @contextlib.contextmanager
    def scope(self, scope: str, block: str | None = None) -> Iterator[None]:
        cur_scope, cur_block = self._scope[-1]
        self._scope.append((scope, cur_block if block is None else block))
        try:
            yield
        finally:
            self._scope.pop()

    def input(self, name: str, type: TensorType) -> Value:
        return self.graph.add_input(name, type)

    def param(self, name: str, value: torch.Tensor | Param) -> Value:
        p = value if isinstance(value, Param) else Param.dense(name, value)
        if p.name not in self.graph.root().params:
            self.graph.add_param(p)
        return self.emit("param", name=_sanitize(p.name), attrs={"name": p.name})

    def emit(self, op: str, *inputs: Value, attrs: Any = None, name: str = "", **kw: Any) -> Value:
        if kw:
            attrs = dict(attrs or {}, **kw)
        scope, block = self._scope[-1]
        node = self.graph.make_node(op, inputs, attrs, name=name, scope=scope, block=block)
        self.graph.append(node)
        return node.out

    def output(self, *values: Value) -> None:
        self.graph.outputs.extend(values)

    def region(self, *types: TensorType, hint: str = "arg") -> tuple[GraphBuilder, list[Value]]:
        """A builder for a nested region (a ``cond`` branch) taking inputs of ``types``.

        Example::

            then_b, (x,) = b.region(h.type)
            then_b.output(x)                                  # identity branch
            else_b, (y,) = b.region(h.type)
            else_b.output(else_b.emit("add", y, y))
            out = b.emit("cond", pred, h, then_branch=then_b.finish(), else_branch=else_b.finish())
        """
        r = Graph("region")
        r.parent = self.graph
        args = []
        for t in types:
            v = Value(self.graph.fresh_name(hint), t)  # fresh_name reserves the name
            r.inputs.append(v)
            args.append(v)
        rb = GraphBuilder(graph=r)
        rb._scope = [self._scope[-1]]
        return rb, args

    def finish(self) -> Graph:
        return self.graph
