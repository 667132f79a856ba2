"""Parser for the IR text form printed by :mod:`llmc.ir.printer`.

Params parsed from text have the right type and storage format but no data (meta tensors of the
right shape): the text is the program, ``params.safetensors`` holds the weights.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import torch

from llmc.errors import IRError, ParseError
from llmc.ir.graph import Graph, Node, Value
from llmc.ir.params import DENSE, Param, QuantSpec, SparsitySpec, StorageFormat, group_count
from llmc.ir.registry import get_op
from llmc.ir.types import TensorType, sym, to_torch_dtype

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>//[^\n]*)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<sym>@[A-Za-z0-9_.:/\-]+)
  | (?P<tag>\#[A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf\b|nan\b))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}()\[\],:=*+\-])
    """,
    re.VERBOSE,
)


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._peeked: tuple[str, str, int] | None = None

    def _scan(self) -> tuple[str, str, int]:
        while self.pos < len(self.text):
            m = _TOKEN.match(self.text, self.pos)
            if not m:
                raise self.error(f"unexpected character {self.text[self.pos]!r}", self.pos)
            self.pos = m.end()
            kind = m.lastgroup or ""
            if kind in ("ws", "comment"):
                continue
            return kind, m.group(), m.start()
        return "eof", "", self.pos

    def peek(self) -> tuple[str, str, int]:
        if self._peeked is None:
            self._peeked = self._scan()
        return self._peeked

    def next(self) -> tuple[str, str, int]:
        tok = self.peek()
        self._peeked = None
        return tok

    def expect(self, text: str) -> None:
        kind, t, pos = self.next()
        if t != text:
            raise self.error(f"expected {text!r}, found {t or 'end of input'!r}", pos)

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.next()
            return True
        return False

    def rest_of_line(self) -> str:
        assert self._peeked is None
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        out = self.text[self.pos : end]
        self.pos = end
        return out

    def error(self, msg: str, pos: int) -> ParseError:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return ParseError(f"IR parse error at line {line}, column {col}: {msg}")


def parse_graph(text: str) -> Graph:
    """Parse one ``graph @name { ... }``; raises :class:`ParseError` naming line and column."""
    lx = _Lexer(text)
    lx.expect("graph")
    kind, name, pos = lx.next()
    if kind != "sym":
        raise lx.error("expected @name after 'graph'", pos)
    g = Graph(name[1:])
    lx.expect("{")
    env: dict[str, Value] = {}
    while True:
        kind, t, pos = lx.peek()
        if t == "meta":
            lx.next()
            try:
                g.meta = json.loads(lx.rest_of_line())
            except json.JSONDecodeError as e:
                raise lx.error(f"bad meta JSON: {e}", pos) from None
        elif t == "param":
            lx.next()
            _parse_param(lx, g)
        elif t == "input":
            lx.next()
            vname, vtype = _parse_typed_value(lx)
            env[vname] = g.add_input(vname, vtype)
        else:
            break
    _parse_body(lx, g, env)
    lx.expect("}")
    if lx.peek()[0] != "eof":
        raise lx.error("trailing text after graph", lx.peek()[2])
    return g


def _parse_body(lx: _Lexer, g: Graph, env: dict[str, Value]) -> None:
    while True:
        kind, t, pos = lx.next()
        if t == "return":
            outs = []
            if lx.peek()[0] == "value":
                outs.append(_lookup(lx, env))
                while lx.accept(","):
                    outs.append(_lookup(lx, env))
            g.outputs = outs
            return
        if kind != "value":
            raise lx.error(f"expected a node or 'return', found {t!r}", pos)
        _parse_node(lx, g, env, t[1:], pos)


def _lookup(lx: _Lexer, env: dict[str, Value]) -> Value:
    kind, t, pos = lx.next()
    if kind != "value":
        raise lx.error(f"expected a %value, found {t!r}", pos)
    if t[1:] not in env:
        raise lx.error(f"use of undefined value {t}", pos)
    return env[t[1:]]


def _parse_node(lx: _Lexer, g: Graph, env: dict[str, Value], out: str, pos: int) -> None:
    lx.expect("=")
    kind, op, opos = lx.next()
    if kind != "ident":
        raise lx.error(f"expected an op name, found {op!r}", opos)
    try:
        opdef = get_op(op)
    except Exception as e:
        raise lx.error(str(e), opos) from None
    lx.expect("(")
    inputs: list[Value] = []
    if not lx.accept(")"):
        inputs.append(_lookup(lx, env))
        while lx.accept(","):
            inputs.append(_lookup(lx, env))
        lx.expect(")")
    raw: dict[str, Any] = {}
    if lx.peek()[1] == "{":
        lx.next()
        if not lx.accept("}"):
            while True:
                k, key, kpos = lx.next()
                if k != "ident":
                    raise lx.error(f"expected an attribute name, found {key!r}", kpos)
                lx.expect("=")
                raw[key] = _parse_value(lx, g, env)
                if lx.accept("}"):
                    break
                lx.expect(",")
    lx.expect(":")
    vtype = _parse_type(lx)
    scope = block = ""
    if lx.peek()[0] == "sym":
        scope = lx.next()[1][1:]
    if lx.peek()[0] == "tag":
        block = lx.next()[1][1:]
    try:
        attrs = (
            opdef.coerce_attrs(_coerce_attrs(opdef.attrs, raw))
            if opdef.attrs
            else (opdef.coerce_attrs(raw or None))
        )
    except Exception as e:
        raise lx.error(f"{op}: {e}", opos) from None
    if out in g.root()._names:
        raise lx.error(f"value %{out} defined twice", pos)
    g.claim_name(out)
    v = Value(out, vtype)
    g.append(Node(op, tuple(inputs), attrs, v, scope, block))
    env[out] = v


def _coerce_attrs(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = {}
    for k, v in raw.items():
        out[k] = _coerce(types.get(k, "Any"), v)
    return out


def _coerce(ann: str, v: Any) -> Any:
    ann = ann.replace(" ", "")
    if v is None or ann == "Any":
        return v
    if ann == "float":
        return float(v)
    if ann in ("Dim", "Dim|None"):
        return sym(v) if isinstance(v, str) else v
    if ann == "tuple[Dim,...]":
        return tuple(sym(x) if isinstance(x, str) else x for x in v)
    if ann.startswith("tuple["):
        return tuple(v)
    return v


def _parse_value(lx: _Lexer, g: Graph, env: dict[str, Value]) -> Any:
    kind, t, pos = lx.next()
    if kind == "number":
        if t in ("inf", "-inf", "nan", "-nan"):
            return float(t)
        return float(t) if any(c in t for c in ".eE") else int(t)
    if kind == "string":
        return json.loads(t)
    if t == "true":
        return True
    if t == "false":
        return False
    if t == "none":
        return None
    if t == "[":
        items = []
        if not lx.accept("]"):
            items.append(_parse_value(lx, g, env))
            while lx.accept(","):
                items.append(_parse_value(lx, g, env))
            lx.expect("]")
        return items
    if t == "region":
        return _parse_region(lx, g)
    raise lx.error(f"expected an attribute value, found {t!r}", pos)


def _parse_region(lx: _Lexer, parent: Graph) -> Graph:
    r = Graph("region")
    r.parent = parent
    env: dict[str, Value] = {}
    lx.expect("(")
    if not lx.accept(")"):
        while True:
            vname, vtype = _parse_typed_value(lx)
            env[vname] = r.add_input(vname, vtype)
            if lx.accept(")"):
                break
            lx.expect(",")
    lx.expect("{")
    _parse_body(lx, r, env)
    lx.expect("}")
    return r


def _parse_typed_value(lx: _Lexer) -> tuple[str, TensorType]:
    kind, t, pos = lx.next()
    if kind != "value":
        raise lx.error(f"expected %name, found {t!r}", pos)
    lx.expect(":")
    return t[1:], _parse_type(lx)


def _parse_type(lx: _Lexer) -> TensorType:
    kind, dtype, pos = lx.next()
    if kind != "ident":
        raise lx.error(f"expected a dtype, found {dtype!r}", pos)
    lx.expect("[")
    dims = []
    if not lx.accept("]"):
        while True:
            parts = []
            while lx.peek()[1] not in (",", "]"):
                k, t, p = lx.next()
                if k == "eof":
                    raise lx.error("unterminated shape", p)
                parts.append(t)
            try:
                dims.append(sym(" ".join(parts)))
            except Exception as e:
                raise lx.error(str(e), pos) from None
            if lx.accept("]"):
                break
            lx.expect(",")
    try:
        return TensorType(tuple(dims), dtype)
    except Exception as e:
        raise lx.error(str(e), pos) from None


def _parse_param(lx: _Lexer, g: Graph) -> None:
    kind, name, pos = lx.next()
    if kind != "sym":
        raise lx.error("expected @name after 'param'", pos)
    lx.expect(":")
    ptype = _parse_type(lx)
    quant = sparsity = None
    while True:
        t = lx.peek()[1]
        if t == "dense":
            lx.next()
        elif t == "quant":
            qpos = lx.next()[2]
            kw = _parse_kwargs(lx)
            try:
                quant = QuantSpec(
                    bits=int(kw["bits"]),
                    group=int(kw.get("group", 0)),
                    symmetric=kw.get("sym", "true") == "true",
                    method=str(kw.get("method", "rtn")),
                    act_bits=int(kw.get("act_bits", 0)),
                    act_group=int(kw.get("act_group", 0)),
                    scale_dtype=str(kw.get("scale_dtype", "f32")),
                )
            except IRError as e:
                raise lx.error(f"param {name}: {e}", qpos) from None
        elif t == "sparse":
            lx.next()
            kw = _parse_kwargs(lx)
            if "nm" in kw:
                n, m = kw["nm"].split(":")
                sparsity = SparsitySpec("nm", int(n), int(m), float(kw.get("density", 1.0)))
            else:
                sparsity = SparsitySpec("unstructured", density=float(kw.get("density", 1.0)))
        else:
            break
    fmt = StorageFormat(quant, sparsity) if (quant or sparsity) else DENSE
    g.add_param(Param(name[1:], ptype, fmt, _meta_data(ptype, fmt)))


def _parse_kwargs(lx: _Lexer) -> dict[str, str]:
    """``(bits=4, group=128, sym=true)`` or ``(nm=2:4, density=0.5)`` or ``(unstructured, ...)``."""
    lx.expect("(")
    out: dict[str, str] = {}
    while not lx.accept(")"):
        _, key, _ = lx.next()
        if lx.accept("="):
            parts = [lx.next()[1]]
            while lx.peek()[1] == ":":
                lx.next()
                parts.append(lx.next()[1])
            out[key] = ":".join(parts)
        else:
            out[key] = "true"
        lx.accept(",")
    return out


def _meta_data(t: TensorType, fmt: StorageFormat) -> dict[str, torch.Tensor]:
    shape = tuple(int(d) for d in t.shape)
    if fmt.quant is None:
        return {"value": torch.empty(shape, dtype=to_torch_dtype(t.dtype), device="meta")}
    groups = group_count(shape[-1], fmt.quant.group)
    data = {
        "qvalue": torch.empty(shape, dtype=torch.int8, device="meta"),
        "scale": torch.empty((shape[0], groups), dtype=fmt.quant.scale_torch_dtype, device="meta"),
    }
    if not fmt.quant.symmetric:
        data["zero"] = torch.empty((shape[0], groups), dtype=torch.int8, device="meta")
    return data
