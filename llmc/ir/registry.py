"""The op registry machinery: :class:`OpDef`, :class:`Cost`, attribute coercion.

Op *definitions* live in :mod:`llmc.ir.ops` (and ``ops_*.py`` files beside it, one per family of
ops added by a feature); this module only holds the mechanism. An op declares, in one place:

- ``attrs``: a frozen dataclass type (or None) with typed fields;
- ``infer(in_types, attrs, graph) -> TensorType``: the shape/dtype rule;
- ``ref(args, attrs, rt) -> Tensor``: reference semantics in torch (``rt`` is the interpreter's
  run context: concrete symbol values, params, region execution);
- ``cost(in_types, out_type, attrs, in_bytes) -> Cost`` over *concrete* types: FLOPs and bytes
  moved. ``in_bytes[i]`` is what reading input ``i`` costs (a param counts its storage format).

The interpreter, the roofline model and the FPGA simulator all read this registry.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmc.errors import IRError
from llmc.ir.types import TensorType


@dataclass(frozen=True)
class Cost:
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops,
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
        )


InferFn = Callable[[list[TensorType], Any, Any], TensorType]
RefFn = Callable[[list[Any], Any, Any], Any]
CostFn = Callable[[list[TensorType], TensorType, Any, list[float]], Cost]


@dataclass
class OpDef:
    name: str
    group: str
    infer: InferFn
    ref: RefFn
    cost: CostFn
    attrs: type | None = None
    min_inputs: int = 0
    max_inputs: int | None = None  # None: variadic
    doc: str = ""
    has_side_effects: bool = False
    region_fields: tuple[str, ...] = ()

    def coerce_attrs(self, attrs: Any) -> Any:
        if self.attrs is None:
            if attrs not in (None, {}):
                raise IRError(f"op '{self.name}' takes no attributes, got {attrs!r}")
            return None
        if isinstance(attrs, self.attrs):
            return attrs
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, dict):
            raise IRError(f"op '{self.name}': attributes must be a dict or {self.attrs.__name__}")
        names = {f.name for f in dataclasses.fields(self.attrs)}
        unknown = set(attrs) - names
        if unknown:
            raise IRError(
                f"op '{self.name}': unknown attribute(s) {sorted(unknown)} (known: {sorted(names)})"
            )
        # Builders pass what Python makes easy; store what the parser produces, so that
        # print(g) == print(parse(print(g))) and attrs compare (and hash) equal.
        anns = {f.name: str(f.type).replace(" ", "") for f in dataclasses.fields(self.attrs)}
        attrs = {k: _normalize(anns[k], v) for k, v in attrs.items()}
        try:
            return self.attrs(**attrs)
        except TypeError as e:
            raise IRError(f"op '{self.name}': {e}") from None

    def infer_type(self, inputs: tuple[Any, ...], attrs: Any, graph: Any) -> TensorType:
        self.check_arity(len(inputs))
        return self.infer([v.type for v in inputs], attrs, graph)

    def check_arity(self, n: int) -> None:
        hi = self.max_inputs
        if n < self.min_inputs or (hi is not None and n > hi):
            want = (
                f"{self.min_inputs}"
                if hi == self.min_inputs
                else (f"{self.min_inputs}..{hi}" if hi is not None else f">= {self.min_inputs}")
            )
            raise IRError(f"op '{self.name}' takes {want} inputs, got {n}")

    def regions(self, attrs: Any) -> list[Any]:
        return [getattr(attrs, f) for f in self.region_fields]


def _normalize(ann: str, v: Any) -> Any:
    """Lists become tuples for ``tuple[...]`` fields, ints become floats for ``float`` fields."""
    if ann.startswith("tuple[") and isinstance(v, list):
        return tuple(v)
    if ann == "float" and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise IRError(f"op '{opdef.name}' registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise IRError(f"unknown op '{name}'{hint}") from None


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


def _ensure_loaded() -> None:
    if "param" not in _REGISTRY:
        import llmc.ir.ops  # noqa: F401  (registers the core ops)
