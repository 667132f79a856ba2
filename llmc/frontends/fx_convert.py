"""Map an exported (ATen-level) FX graph onto llmc IR.

:func:`convert_exported` walks ``ExportedProgram.graph`` after dead-code elimination and maps each
``call_function`` node through the handler table of :mod:`llmc.frontends.aten_handlers`
(``OpOverload -> handler``). Every node that has no
handler raises :class:`~llmc.errors.UnsupportedOpError` naming the ATen op, the module scope (from
``nn_module_stack``) and the source line; nothing is silently dropped.

Conventions the handlers follow:

- Shapes come from the FX metadata (``node.meta["val"]``): symbolic sizes (``s0``, ``s0*s1``) are
  turned into IR polynomials over the names given for the inputs' dynamic axes (``batch``,
  ``seq``). Every produced value is checked against the FX metadata (shape and dtype), so a wrong
  mapping fails at import instead of producing a graph that computes something else.
- Weights are lifted placeholders; they become ``param`` nodes, emitted lazily at their first use
  in each module scope. A weight used only as the ``[in, out]`` right operand of ``addmm``/``mm``
  (GPT-2's ``Conv1D``) is stored transposed, once, as ``[out, in]`` and used by ``linear``.
- No-op views (``contiguous``, full-range ``slice``, ``alias``, eval-mode ``dropout``) vanish;
  shape-only views become ``reshape`` to the recorded output shape.
- Each node gets ``scope`` = the innermost module path and ``block`` from :func:`block_tag`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from llmc.errors import IRError, UnsupportedOpError
from llmc.ir.graph import Graph, GraphBuilder, Value
from llmc.ir.params import Param
from llmc.ir.structure import COMPONENT_TAGS, OP_TAGS, block_tag  # noqa: F401  (block tags)
from llmc.ir.types import DTYPES, Dim, SymDim, TensorType, dim_add, dim_mul, from_torch_dtype

aten = torch.ops.aten
INT64_MAX = 2**63 - 1


@dataclass
class _ParamSource:
    """A lifted weight placeholder: its IR name, tensor, and whether it is stored transposed."""

    name: str
    tensor: torch.Tensor
    transposed: bool = False


@dataclass(frozen=True)
class _Scalar:
    """A rank-0 lifted constant: emitted as a ``constant`` node where it is used."""

    value: float
    dtype: str


@dataclass(frozen=True)
class _Folded:
    """A tensor computed at import from buffers and literals only (``fold_constants``)."""

    tensor: torch.Tensor


@dataclass
class ConvertOptions:
    """How to name things. ``dims``: input name -> {axis: symbol name} for dynamic axes;
    ``strip_prefix``: removed from module paths and weight names (a wrapper module's attribute);
    ``param_name``: maps an exported weight FQN (prefix stripped) to its IR param name (tied
    weights map to one name); ``output_names``: names for the graph outputs;
    ``fold_constants``: evaluate, at import, every op whose operands are buffers, lifted
    constants and literals only (position ids from ``arange``, ``gather`` of a buffer, an
    all-ones mask) instead of mapping it; fixed shapes only."""

    dims: dict[str, dict[int, str]] = field(default_factory=dict)
    strip_prefix: str = ""
    param_name: Callable[[str], str] | None = None
    output_names: list[str] = field(default_factory=list)
    tags: Mapping[str, str] = field(default_factory=lambda: COMPONENT_TAGS)
    fold_constants: bool = False
    #: where a weight copy the conversion makes is kept (a ``Conv1D`` weight stored transposed):
    #: e.g. :func:`llmc.safetensors_io.spill` to keep it out of anonymous memory; None: as is
    keep_copy: Callable[[torch.Tensor], torch.Tensor] | None = None


_SCOPE_CLEAN = re.compile(r"[^A-Za-z0-9_.]")


class Converter:
    def __init__(self, ep: torch.export.ExportedProgram, name: str, opts: ConvertOptions) -> None:
        self.ep = ep
        self.opts = opts
        self.b = GraphBuilder(name)
        self.g: Graph = self.b.graph
        self.env: dict[torch.fx.Node, Any] = {}
        self.syms: dict[Any, str] = {}  # sympy.Symbol -> IR symbol name
        self.params: dict[torch.fx.Node, _ParamSource] = {}
        self.param_values: dict[tuple[str, str], Value] = {}
        self.node: torch.fx.Node | None = None
        self.scope = ""
        self.tied: dict[str, str] = {}
        self.folded_values: dict[torch.fx.Node, Value] = {}
        self.folded_by_bytes: dict[tuple[str, tuple[int, ...], str], _ParamSource] = {}

    # -- naming -----------------------------------------------------------------------------
    def strip(self, path: str) -> str:
        p = self.opts.strip_prefix
        if p and path == p.rstrip("."):
            return ""
        if p and path.startswith(p):
            path = path[len(p) :]
        return path

    def scope_of(self, n: torch.fx.Node) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = list(stack.values())[-1][0]
        path = _SCOPE_CLEAN.sub("_", self.strip(str(path))).strip(".")
        return re.sub(r"\.{2,}", ".", path)

    # -- symbolic sizes ---------------------------------------------------------------------
    def dim(self, d: Any) -> Dim:
        """An FX size (int, SymInt, or a node producing one) as an IR dimension."""
        if isinstance(d, torch.fx.Node):
            v = self.env.get(d)
            if isinstance(v, (int, SymDim)):
                return v
            d = d.meta.get("val")
        if isinstance(d, bool):
            raise self.unsupported("boolean used as a size")
        if isinstance(d, int):
            return d
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            return self.expr_dim(expr)
        raise self.unsupported(f"size {d!r} is not an integer")

    def expr_dim(self, expr: Any) -> Dim:
        import sympy

        expr = sympy.expand(expr)
        if expr.is_Integer:
            return int(expr)
        unknown = [s for s in expr.free_symbols if s not in self.syms]
        if unknown:
            raise self.unsupported(
                f"size {expr} depends on {unknown}, which is no named input dimension "
                "(data-dependent shapes are not supported)"
            )
        try:
            poly = sympy.Poly(expr, *sorted(expr.free_symbols, key=str))
        except sympy.PolynomialError:
            raise self.unsupported(f"size {expr} is not a polynomial of the input sizes") from None
        out: Dim = 0
        gens = poly.gens
        for monom, coef in poly.terms():
            if not coef.is_Integer:
                raise self.unsupported(f"size {expr} has a non-integer coefficient")
            term: Dim = int(coef)
            for g, power in zip(gens, monom, strict=True):
                for _ in range(power):
                    term = dim_mul(term, SymDim((((self.syms[g],), 1),)))
            out = dim_add(out, term)
        return out

    def ttype(self, val: Any) -> TensorType:
        if not isinstance(val, torch.Tensor):
            raise self.unsupported(f"expected a tensor, got {type(val).__name__}")
        return TensorType(tuple(self.dim(s) for s in val.shape), from_torch_dtype(val.dtype))

    # -- errors -----------------------------------------------------------------------------
    def unsupported(
        self, reason: str = "", node: torch.fx.Node | None = None
    ) -> UnsupportedOpError:
        n = node or self.node
        target = _target_name(n.target) if n is not None else "?"
        scope = self.scope_of(n) if n is not None else ""
        where = f" at {scope}" if scope else " at the top level"
        src = _source_line(n) if n is not None else ""
        src = f" ({src})" if src else ""
        why = f": {reason}" if reason else ""
        return UnsupportedOpError(
            f"{target}{where}{src}{why}. llmc's frontend has no mapping for it; replace the module "
            "with supported ops before tracing, or add a handler to "
            "llmc.frontends.aten_handlers (see docs/frontend.md)"
        )

    # -- emission ---------------------------------------------------------------------------
    def emit(self, op: str, *inputs: Value, attrs_obj: Any = None, **attrs: Any) -> Value:
        tag = block_tag(op, self.scope, self.opts.tags)
        with self.b.scope(self.scope, tag):
            try:
                return self.b.emit(
                    op, *inputs, attrs=attrs_obj if attrs_obj is not None else (attrs or None)
                )
            except IRError as e:
                raise self.unsupported(f"cannot express as llmc '{op}' ({e})") from None

    def const(self, value: float | int | bool, dtype: str) -> Value:
        return self.emit("constant", value=float(value), dtype=dtype)

    def value(self, a: Any) -> Value:
        """The IR value of an FX argument (weights become param nodes here)."""
        if isinstance(a, torch.fx.Node):
            if a in self.params:
                return self.param_value(self.params[a])
            v = self.env.get(a)
            if isinstance(v, Value):
                return v
            if isinstance(v, _Scalar):
                return self.const(v.value, v.dtype)
            if isinstance(v, _Folded):
                return self.folded_value(a, v.tensor)
            if v is None:
                raise self.unsupported(f"operand {a.name} has no value (internal frontend error)")
            raise self.unsupported(f"operand {a.name} is a {type(v).__name__}, not a tensor")
        raise self.unsupported(f"expected a tensor operand, got {a!r}")

    def operand(self, a: Any, dtype: str) -> Value:
        """A tensor operand, or a Python scalar as a constant of ``dtype``."""
        if isinstance(a, (bool, int, float)):
            return self.const(a, dtype)
        if isinstance(a, torch.fx.Node) and isinstance(self.env.get(a), (int, SymDim)):
            v = self.env[a]
            if isinstance(v, int):
                return self.const(v, dtype)
            raise self.unsupported("a symbolic size used as a tensor value")
        return self.value(a)

    def param_value(self, src: _ParamSource) -> Value:
        key = (src.name, self.scope)
        if key not in self.param_values:
            if src.name not in self.g.params:
                t = src.tensor.detach()
                if src.transposed:
                    t = t.t().contiguous()
                    if self.opts.keep_copy is not None:
                        t = self.opts.keep_copy(t)
                self.g.add_param(Param.dense(src.name, t))
            owner = src.name.rsplit(".", 1)[0] if "." in src.name else self.scope
            tag = block_tag("param", self.scope, self.opts.tags)
            with self.b.scope(self.scope or owner, tag):
                self.param_values[key] = self.b.emit(
                    "param", name=_param_value_name(src.name), attrs={"name": src.name}
                )
        return self.param_values[key]

    def folded_value(self, n: torch.fx.Node, t: torch.Tensor) -> Value:
        """A folded tensor as a graph constant: a rank-0 one as ``constant``, others as a param."""
        if t.dim() == 0:
            return self.const(t.item(), from_torch_dtype(t.dtype))
        if n not in self.folded_values:
            # identical folded tensors (a stock LlamaModel's rotary cos/sin, recomputed in every
            # layer) become one param, found by a hash of their bytes and confirmed equal
            t = t.contiguous()
            raw = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
            key = (str(t.dtype), tuple(t.shape), hashlib.sha256(raw.numpy().tobytes()).hexdigest())
            src = self.folded_by_bytes.get(key)
            if src is None or not torch.equal(src.tensor, t):
                src = _ParamSource(f"folded.{n.name}", t.clone())
                self.folded_by_bytes[key] = src
            self.folded_values[n] = self.param_value(src)
        return self.folded_values[n]

    def folded(self, a: Any) -> torch.Tensor | None:
        """The import-time tensor of an FX argument, or None when it is not a constant."""
        if isinstance(a, torch.fx.Node):
            v = self.env.get(a)
            if isinstance(v, _Folded):
                return v.tensor
            if isinstance(v, _Scalar):
                return torch.tensor(v.value, dtype=DTYPES[v.dtype])
        return None

    def try_fold(self, n: torch.fx.Node) -> bool:
        """Evaluate ``n`` now when every tensor operand is a folded constant (see ConvertOptions)."""
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor) or any(not isinstance(s, int) for s in val.shape):
            return False
        if not isinstance(n.target, torch._ops.OpOverload) or _mutates(n):
            return False
        ok = True

        def conv(a: Any) -> Any:
            nonlocal ok
            if isinstance(a, torch.fx.Node):
                t = self.folded(a)
                if t is None:
                    ok = False
                return t
            return a

        args = torch.fx.node.map_aggregate(n.args, conv)
        kwargs = torch.fx.node.map_aggregate(n.kwargs, conv)
        if not ok:
            return False
        with torch.no_grad():
            out = n.target(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.device.type == "meta":
            return False
        self.env[n] = _Folded(out)
        return True

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.type.dtype == dtype else self.emit("cast", v, dtype=dtype)

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> Graph:
        gm = self.ep.graph_module
        gm.graph.eliminate_dead_code()
        sig = self.ep.graph_signature
        weights = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        consts = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        user_inputs = list(sig.user_inputs)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        # Name the symbols of the dynamic input axes first.
        for n in placeholders:
            if n.name in user_inputs:
                val = n.meta.get("val")
                for axis, sname in self.opts.dims.get(n.name, {}).items():
                    s = val.shape[axis]
                    if isinstance(s, torch.SymInt):
                        self.syms[s.node.expr] = sname
        for n in placeholders:
            self.node = n
            if n.name in weights or n.name in consts:
                fqn = weights.get(n.name) or consts[n.name]
                tensor = self._weight_tensor(fqn)
                if not n.users:
                    continue
                name = self.strip(fqn)
                if self.opts.param_name is not None:
                    name = self.opts.param_name(name)
                if tensor.dim() == 0 and tensor.device.type != "meta":
                    self.env[n] = _Scalar(tensor.item(), from_torch_dtype(tensor.dtype))
                    continue
                foldable = n.name in consts or n.name in sig.inputs_to_buffers
                if self.opts.fold_constants and foldable and tensor.device.type != "meta":
                    self.env[n] = _Folded(tensor)
                    self.params[n] = _ParamSource(name, tensor, _used_transposed(n))
                    continue
                self.params[n] = _ParamSource(name, tensor, _used_transposed(n))
            elif n.name in user_inputs:
                val = n.meta.get("val")
                if isinstance(val, torch.Tensor):
                    self.env[n] = self.b.input(n.name, self.ttype(val))
                else:
                    raise self.unsupported(f"non-tensor input {n.name} ({type(val).__name__})")
            elif n.users:
                raise self.unsupported(f"placeholder {n.name} of unknown kind")
        for n in gm.graph.nodes:
            self.node = n
            self.scope = self.scope_of(n)
            if n.op == "call_function":
                self._call(n)
            elif n.op == "output":
                self._output(n)
            elif n.op != "placeholder":
                raise self.unsupported(f"FX node kind {n.op!r}")
        self.g.dce()
        self.g.prune_params()
        # A param node belongs to the block of the op that reads it (a norm's weight is "norm").
        users = self.g.users()
        for node in self.g.nodes:
            if node.op == "param" and users.get(node.out):
                node.block = users[node.out][0].block
        return self.g

    def _weight_tensor(self, fqn: str) -> torch.Tensor:
        if fqn in self.ep.state_dict:
            return self.ep.state_dict[fqn]
        if fqn in self.ep.constants:
            c = self.ep.constants[fqn]
            if isinstance(c, torch.Tensor):
                return c
        raise self.unsupported(f"weight {fqn} not found in the exported program")

    def _call(self, n: torch.fx.Node) -> None:
        val = n.meta.get("val")
        if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
            # Size arithmetic (sym_size, operator.mul on sizes): keep the size itself.
            self.env[n] = self.dim(val)
            return
        from llmc.frontends.aten_handlers import HANDLERS, IGNORED

        if self.opts.fold_constants and self.try_fold(n):
            return
        handler = HANDLERS.get(n.target)
        if handler is None:
            if n.target in IGNORED:
                return
            raise self.unsupported()
        out = handler(self, n, *n.args, **n.kwargs)
        self.env[n] = out
        self._check(n, out, val)

    def _check(self, n: torch.fx.Node, out: Any, val: Any) -> None:
        if isinstance(out, Value):
            want = self.ttype(val)
            if out.type != want:
                raise IRError(
                    f"frontend bug: {_target_name(n.target)} at {self.scope or 'top level'} "
                    f"mapped to {out.type}, torch says {want}"
                )
        elif isinstance(out, list) and isinstance(val, (list, tuple)):
            for o, v in zip(out, val, strict=True):
                self._check(n, o, v)

    def _output(self, n: torch.fx.Node) -> None:
        outs = n.args[0]
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        names = self.opts.output_names
        for i, a in enumerate(outs):
            v = self.value(a)
            if v.node is not None and v.node.op == "param" or v in self.g.inputs:
                v = self.emit("reshape", v, shape=v.type.shape)  # an output needs its own node
            if i < len(names):
                self.rename(v, names[i])
            self.b.output(v)

    def rename(self, v: Value, name: str) -> None:
        root = self.g.root()
        if v.name == name:
            return
        if name in root._names:
            raise IRError(f"cannot name a graph output {name!r}: the name is taken")
        root._names.discard(v.name)
        root._names.add(name)
        v.name = name


def _param_value_name(pname: str) -> str:
    return pname.replace(".", "_")


def _target_name(t: Any) -> str:
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    if isinstance(t, str):
        return t
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)


def _source_line(n: torch.fx.Node) -> str:
    st = n.meta.get("stack_trace") or ""
    found = re.findall(r'File "([^"]+)", line (\d+)', st)
    if not found:
        return ""
    path, line = found[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}"


def _used_transposed(n: torch.fx.Node) -> bool:
    """True when every use of a 2-D weight is as the [in, out] operand of addmm/mm."""
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2 or not n.users:
        return False
    for u in n.users:
        if u.target is aten.addmm.default and len(u.args) > 2 and u.args[2] is n:
            if u.args[1] is n or u.args[0] is n:
                return False
            continue
        if u.target is aten.mm.default and u.args[1] is n and u.args[0] is not n:
            continue
        return False
    return True


def convert_exported(
    ep: torch.export.ExportedProgram, name: str, opts: ConvertOptions | None = None
) -> Graph:
    """The IR graph of an exported program (see the module docstring)."""
    return Converter(functional(ep), name, opts or ConvertOptions()).run()


def _mutates(n: torch.fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return n.op == "call_function" and schema is not None and schema.is_mutable


def functional(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``ep`` without in-place ATen ops (``x += y`` in a module's forward exports as
    ``aten.add_``, which a value graph cannot express): functionalised by
    ``run_decompositions`` with an empty table, which decomposes nothing else. Programs with
    no in-place op are returned as they are."""
    if not any(_mutates(n) for n in ep.graph.nodes):
        return ep
    with warnings.catch_warnings():  # torch's own pytree deprecation notice, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        return ep.run_decompositions({})


__all__ = ["COMPONENT_TAGS", "ConvertOptions", "Converter", "block_tag", "convert_exported"]
