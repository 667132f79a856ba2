"""The IR's text form (parsed back by :mod:`llmc.ir.parser`; ``parse(print(g)) == g``).

::

    graph @tiny {
      meta {"family": "llama"}
      param @model.norm.weight : f32[256] dense
      param @model.layers.0.mlp.up_proj.weight : f32[704, 256] quant(bits=4, group=64, sym=true, method=rtn)
      input %input_ids : i64[batch, seq]
      %w = param() {name = "model.norm.weight"} : f32[256] @model.norm #norm
      %h = rms_norm(%x, %w) {eps = 1e-05} : f32[batch, seq, 256] @model.norm #norm
      return %h
    }

A node line is ``%out = op(%in, ...) {attr = value, ...} : type [@scope] [#block]``; attributes
equal to their defaults are omitted. ``cond`` prints its regions inline as
``region(%arg : type, ...) { ... return %v }``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llmc.ir.graph import Graph, Node
from llmc.ir.types import SymDim


def print_graph(g: Graph) -> str:
    lines = [f"graph @{g.name} {{"]
    if g.meta:
        lines.append("  meta " + json.dumps(g.meta, sort_keys=True, default=str))
    for p in g.params.values():
        lines.append(f"  param @{p.name} : {p.type} {p.format}")
    for v in g.inputs:
        lines.append(f"  input %{v.name} : {v.type}")
    _print_body(g, lines, "  ")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_body(g: Graph, lines: list[str], indent: str) -> None:
    for n in g.nodes:
        lines.append(indent + print_node(n, indent))
    lines.append(indent + "return " + ", ".join(f"%{v.name}" for v in g.outputs))


def print_node(n: Node, indent: str = "") -> str:
    args = ", ".join(f"%{v.name}" for v in n.inputs)
    text = f"%{n.out.name} = {n.op}({args})"
    attrs = format_attrs(n.attrs, indent)
    if attrs:
        text += " " + attrs
    text += f" : {n.out.type}"
    if n.scope:
        text += f" @{n.scope}"
    if n.block:
        text += f" #{n.block}"
    return text


def format_attrs(attrs: Any, indent: str = "") -> str:
    if attrs is None:
        return ""
    items = []
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        if f.default is not dataclasses.MISSING and _same(v, f.default):
            continue
        items.append(f"{f.name} = {format_value(v, indent)}")
    return "{" + ", ".join(items) + "}" if items else ""


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def format_value(v: Any, indent: str = "") -> str:
    if isinstance(v, Graph):
        return _format_region(v, indent)
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, SymDim):
        return json.dumps(str(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_value(x, indent) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def _format_region(g: Graph, indent: str) -> str:
    args = ", ".join(f"%{v.name} : {v.type}" for v in g.inputs)
    inner = indent + "    "
    lines: list[str] = []
    _print_body(g, lines, inner)
    return f"region({args}) {{\n" + "\n".join(lines) + f"\n{indent}  }}"
