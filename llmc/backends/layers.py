"""Finding identical decoder layers, so that each is lowered (and compiled) once.

A layer is the set of nodes whose scope names one repeated block (``model.layers.3.*``,
``transformer.h.3.*``). Two layers are identical when their node sequences agree op by op:
attributes, result types, how operands connect (inside the layer, to a value from outside, or to
a param of a given type and storage format). Identical layers become one Relax function called
once per layer with that layer's inputs and weights.

A layer spans the nodes from its first to its last scoped node (params excepted, which may sit
anywhere); layers whose spans interleave are lowered inline, which is always correct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmc.ir.graph import Graph, Node, Value, regions_of
from llmc.ir.ops_adaptive import fresh_symbols
from llmc.ir.printer import format_attrs
from llmc.ir.structure import Structure


@dataclass
class Layer:
    index: int
    nodes: list[Node]  # non-param nodes, in graph order
    inputs: list[Value] = field(default_factory=list)  # values from outside (not params)
    params: list[Node] = field(default_factory=list)  # param nodes read, by first use
    outputs: list[Value] = field(default_factory=list)  # values used after the layer
    signature: tuple = ()


@dataclass
class LayerPlan:
    """Which nodes are emitted inline and which layers are outlined (grouped by signature)."""

    layers: list[Layer]
    groups: dict[tuple, list[Layer]]
    start: dict[int, Layer]  # id(first node) -> layer
    covered: set[int]  # ids of nodes inside outlined layers


def plan_layers(graph: Graph, *, min_layers: int = 2) -> LayerPlan:
    """Each layer spans from the first to the last node whose scope names it; untagged nodes in
    between (a residual ``add`` the frontend left unscoped) belong to it. A span that contains a
    node of another layer is not outlined."""
    layer_index = Structure(graph).scope_layer  # which layer a scope names (ir/structure.py)
    non_param = [n for n in graph.nodes if n.op != "param"]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for pos, n in enumerate(non_param):
        i = layer_index(n.scope)
        if i is not None:
            first.setdefault(i, pos)
            last[i] = pos
    users = graph.users()
    graph_outputs = {id(v) for v in graph.outputs}
    layers: list[Layer] = []
    for idx in sorted(first):
        span = non_param[first[idx] : last[idx] + 1]
        if any(layer_index(n.scope) not in (None, idx) for n in span):
            continue  # interleaved layers: lower inline
        if any(fresh_symbols(n.op, n.attrs) for n in span):
            continue  # binds a run-time size (token pruning's gather_rows) the caller needs
        inside = {id(n) for n in span}
        layer = Layer(idx, span)
        seen: set[int] = set()
        for n in layer.nodes:
            for v in n.inputs:
                if v.node is not None and v.node.op == "param":
                    if id(v.node) not in seen:
                        seen.add(id(v.node))
                        layer.params.append(v.node)
                elif (v.node is None or id(v.node) not in inside) and id(v) not in seen:
                    seen.add(id(v))
                    layer.inputs.append(v)
            for region in regions_of(n):  # a cond's branches read weights through param nodes
                for pn in region_params(region):
                    if id(pn) not in seen:
                        seen.add(id(pn))
                        layer.params.append(pn)
        for n in layer.nodes:
            outside_use = any(id(u) not in inside for u in users.get(n.out, []))
            if outside_use or id(n.out) in graph_outputs:
                layer.outputs.append(n.out)
        layer.signature = _signature(graph, layer)
        layers.append(layer)
    groups: dict[tuple, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.signature, []).append(layer)
    # Outline only signatures shared by several layers (a one-off block gains nothing).
    groups = {s: ls for s, ls in groups.items() if len(ls) >= min_layers}
    kept = [la for ls in groups.values() for la in ls]
    return LayerPlan(
        kept,
        groups,
        {id(la.nodes[0]): la for la in kept},
        {id(n) for la in kept for n in la.nodes},
    )


def region_params(region: Graph) -> list[Node]:
    """The param nodes of ``region`` and of the regions nested in it, in order."""
    out: list[Node] = []
    for n in region.nodes:
        if n.op == "param":
            out.append(n)
        for r in regions_of(n):
            out += region_params(r)
    return out


def region_signature(graph: Graph, region: Graph, params: list[Node]) -> tuple:
    """Two regions with equal signatures lower to the same function: the same structure
    (:func:`region_key`, params by position in ``params``) and params of the same types and
    storage formats."""
    prm = {id(n): i for i, n in enumerate(params)}
    kinds = tuple(
        (str(p.type), str(p.format)) for p in (graph.root().params[pn.attrs.name] for pn in params)
    )
    return (region_key(region, prm), kinds)


def _signature(graph: Graph, layer: Layer) -> tuple:
    local = {id(n.out): i for i, n in enumerate(layer.nodes)}
    ext = {id(v): i for i, v in enumerate(layer.inputs)}
    prm = {id(n.out): i for i, n in enumerate(layer.params)}
    region_prm = {id(n): i for i, n in enumerate(layer.params)}
    sig: list[tuple] = [tuple(str(v.type) for v in layer.inputs)]
    for pn in layer.params:
        p = graph.root().params[pn.attrs.name]
        sig.append(("param", str(p.type), str(p.format)))
    for n in layer.nodes:
        refs = []
        for v in n.inputs:
            if id(v) in local:
                refs.append(("n", local[id(v)]))
            elif id(v) in prm:
                refs.append(("p", prm[id(v)]))
            else:
                refs.append(("x", ext[id(v)]))
        sig.append((n.op, _attrs_key(n, region_prm), tuple(refs), str(n.out.type)))
    sig.append(tuple(local[id(v)] for v in layer.outputs))
    return tuple(sig)


def _attrs_key(n: Node, params: dict[int, int] | None = None) -> str:
    # Regions print with their contents; attributes naming params (qlinear_a8's `weight`, a
    # region's `param` nodes) differ per layer by design and are compared by position in the
    # layer's params (whose types and formats are part of the signature) instead.
    if n.op == "qlinear_a8":
        return f"act_scale={n.attrs.act_scale}"
    if n.op == "param" and params is not None and id(n) in params:
        return f"param#{params[id(n)]}"
    regions = regions_of(n)
    if regions:
        return repr([region_key(r, params) for r in regions])
    return format_attrs(n.attrs)


def region_key(region: Graph, params: dict[int, int] | None = None) -> tuple:
    """A region's structure with value names replaced by positions (and, given ``params``,
    ``id(param node) -> position``, the params it reads by position)."""
    ids: dict[int, str] = {id(v): f"a{i}" for i, v in enumerate(region.inputs)}
    out: list[tuple] = [tuple(str(v.type) for v in region.inputs)]
    for i, n in enumerate(region.nodes):
        ids[id(n.out)] = f"n{i}"
        refs = tuple(ids.get(id(v), "free") for v in n.inputs)
        out.append((n.op, _attrs_key(n, params), refs, str(n.out.type)))
    out.append(tuple(ids.get(id(v), "free") for v in region.outputs))
    return tuple(out)
