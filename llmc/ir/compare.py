"""Structural comparison of graphs: :func:`graph_equal` and :func:`graph_diff`.

Two graphs are structurally equal when they compute the same program the same way:

- the same graph name (top level only: a region's name is not part of the text form), the same
  ``meta`` (compared as the printer writes it, i.e. after a JSON round trip), the same params
  (names, logical types and storage formats; param *data* is ignored, so a graph parsed from text,
  whose params are meta tensors, equals the graph it was printed from);
- inputs, nodes and outputs pairwise equal in order: input types; node op, attributes (regions
  compared recursively), recorded type, scope and block tag; operand wiring (operand ``i`` of node
  ``j`` refers to the corresponding value on both sides);
- value names, unless ``names=False`` (alpha-equivalence: a graph rebuilt with other names is
  equal).

Example::

    g2 = parse_graph(print_graph(g))
    assert graph_equal(g, g2), graph_diff(g, g2)
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from llmc.ir.graph import Graph, Value

__all__ = ["graph_diff", "graph_equal"]


def graph_equal(a: Graph, b: Graph, *, names: bool = True) -> bool:
    """True when ``a`` and ``b`` are structurally equal (see the module docstring)."""
    return graph_diff(a, b, names=names) is None


def graph_diff(a: Graph, b: Graph, *, names: bool = True) -> str | None:
    """The first structural difference between ``a`` and ``b`` as one line, or None if equal."""
    if a.name != b.name:
        return f"graph name @{a.name} != @{b.name}"
    ma, mb = _json_norm(a.meta), _json_norm(b.meta)
    if ma != mb:
        return f"meta {ma} != {mb}"
    if set(a.params) != set(b.params):
        return f"param names differ: {sorted(set(a.params) ^ set(b.params))}"
    for k, pa in a.params.items():
        pb = b.params[k]
        if pa.type != pb.type:
            return f"param @{k}: type {pa.type} != {pb.type}"
        if pa.format != pb.format:
            return f"param @{k}: format {pa.format} != {pb.format}"
    return _body_diff(a, b, {}, names, "")


def _body_diff(a: Graph, b: Graph, vmap: dict[int, Value], names: bool, where: str) -> str | None:
    """Compare inputs, nodes and outputs; ``vmap`` maps id(value in a) -> value in b."""
    if len(a.inputs) != len(b.inputs):
        return f"{where}{len(a.inputs)} inputs != {len(b.inputs)}"
    for i, (va, vb) in enumerate(zip(a.inputs, b.inputs)):
        d = _value_diff(va, vb, names, f"{where}input {i}")
        if d:
            return d
        vmap[id(va)] = vb
    if len(a.nodes) != len(b.nodes):
        return f"{where}{len(a.nodes)} nodes != {len(b.nodes)}"
    for na, nb in zip(a.nodes, b.nodes):
        here = f"{where}node %{na.out.name}"
        if na.op != nb.op:
            return f"{here}: op {na.op} != {nb.op}"
        if len(na.inputs) != len(nb.inputs):
            return f"{here}: {len(na.inputs)} operands != {len(nb.inputs)}"
        for i, (ia, ib) in enumerate(zip(na.inputs, nb.inputs)):
            if vmap.get(id(ia)) is not ib:
                return f"{here}: operand {i} is %{ia.name} on one side, %{ib.name} on the other"
        d = _attrs_diff(na.attrs, nb.attrs, vmap, names, here)
        if d:
            return d
        d = _value_diff(na.out, nb.out, names, here)
        if d:
            return d
        if na.scope != nb.scope:
            return f"{here}: scope {na.scope!r} != {nb.scope!r}"
        if na.block != nb.block:
            return f"{here}: block {na.block!r} != {nb.block!r}"
        vmap[id(na.out)] = nb.out
    if len(a.outputs) != len(b.outputs):
        return f"{where}{len(a.outputs)} outputs != {len(b.outputs)}"
    for i, (oa, ob) in enumerate(zip(a.outputs, b.outputs)):
        if vmap.get(id(oa)) is not ob:
            return f"{where}output {i} is %{oa.name} on one side, %{ob.name} on the other"
    return None


def _value_diff(va: Value, vb: Value, names: bool, here: str) -> str | None:
    if names and va.name != vb.name:
        return f"{here}: name %{va.name} != %{vb.name}"
    if va.type != vb.type:
        return f"{here}: type {va.type} != {vb.type}"
    return None


def _attrs_diff(a: Any, b: Any, vmap: dict[int, Value], names: bool, here: str) -> str | None:
    if a is None or b is None:
        return None if a is b else f"{here}: attributes {a!r} != {b!r}"
    if type(a) is not type(b):
        return f"{here}: attribute types {type(a).__name__} != {type(b).__name__}"
    if not dataclasses.is_dataclass(a):
        return None if _value_eq(a, b) else f"{here}: attributes {a!r} != {b!r}"
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, Graph) or isinstance(y, Graph):
            if not (isinstance(x, Graph) and isinstance(y, Graph)):
                return f"{here}: attribute {f.name} is a region on one side only"
            d = _body_diff(x, y, vmap, names, f"{here}.{f.name}: ")
            if d:
                return d
        elif not _value_eq(x, y):
            return f"{here}: attribute {f.name} = {x!r} != {y!r}"
    return None


def _value_eq(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        return (
            type(x) is type(y) and len(x) == len(y) and all(_value_eq(p, q) for p, q in zip(x, y))
        )
    return bool(x == y)


def _json_norm(meta: dict[str, Any]) -> Any:
    return json.loads(json.dumps(meta, sort_keys=True, default=str))
