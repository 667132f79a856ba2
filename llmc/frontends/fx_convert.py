"""Map an exported (ATen-level) FX graph onto llmc IR.

:func:`convert_exported` walks ``ExportedProgram.graph`` after dead-code elimination and maps each
``call_function`` node through :data:`HANDLERS` (``OpOverload -> handler``). Every node that has no
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

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from llmc.errors import IRError, UnsupportedOpError
from llmc.frontends.customops import rope_attrs_from_json
from llmc.ir.graph import Graph, GraphBuilder, Value
from llmc.ir.params import Param
from llmc.ir.types import Dim, SymDim, TensorType, dim_add, dim_mul, from_torch_dtype

aten = torch.ops.aten
INT64_MAX = 2**63 - 1

# Module-path components that decide a node's block tag (innermost match wins); ops override
# (norm ops are "norm", rope is "rope", embedding lookups are "embed").
COMPONENT_TAGS: dict[str, str] = {
    "embed_tokens": "embed",
    "wte": "embed",
    "wpe": "embed",
    "embed_in": "embed",
    "embed_positions": "embed",
    "project_in": "embed",
    "self_attn": "attn",
    "attn": "attn",
    "attention": "attn",
    "mlp": "ffn",
    "fc1": "ffn",
    "fc2": "ffn",
    "activation_fn": "ffn",
    "lm_head": "head",
    "embed_out": "head",
    "project_out": "head",
}
OP_TAGS = {"rms_norm": "norm", "layer_norm": "norm", "rope": "rope", "embedding": "embed"}


def block_tag(op: str, scope: str, tags: Mapping[str, str] = COMPONENT_TAGS) -> str:
    if op in OP_TAGS:
        return OP_TAGS[op]
    for part in reversed(scope.split(".")):
        if part in tags:
            return tags[part]
    return ""


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


@dataclass
class ConvertOptions:
    """How to name things. ``dims``: input name -> {axis: symbol name} for dynamic axes;
    ``strip_prefix``: removed from module paths and weight names (a wrapper module's attribute);
    ``param_name``: maps an exported weight FQN (prefix stripped) to its IR param name (tied
    weights map to one name); ``output_names``: names for the graph outputs."""

    dims: dict[str, dict[int, str]] = field(default_factory=dict)
    strip_prefix: str = ""
    param_name: Callable[[str], str] | None = None
    output_names: list[str] = field(default_factory=list)
    tags: Mapping[str, str] = field(default_factory=lambda: COMPONENT_TAGS)


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
            "llmc.frontends.fx_convert.HANDLERS (see docs/frontend.md)"
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
                self.g.add_param(Param.dense(src.name, t))
            owner = src.name.rsplit(".", 1)[0] if "." in src.name else self.scope
            tag = block_tag("param", self.scope, self.opts.tags)
            with self.b.scope(self.scope or owner, tag):
                self.param_values[key] = self.b.emit(
                    "param", name=_param_value_name(src.name), attrs={"name": src.name}
                )
        return self.param_values[key]

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


# ----------------------------------------------------------------------------------------------
# handlers: (converter, node, *args, **kwargs) -> Value | list[Value] | None

Handler = Callable[..., Any]
HANDLERS: dict[Any, Handler] = {}
# Ops with no data result that export inserts (runtime assertions): skipped on purpose.
IGNORED: set[Any] = {
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten._assert_async.msg,
}


def handles(*targets: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn

    return deco


def _out_dtype(c: Converter) -> str:
    val = c.node.meta.get("val") if c.node is not None else None
    return from_torch_dtype(val.dtype) if isinstance(val, torch.Tensor) else "f32"


def _out_type(c: Converter) -> TensorType:
    return c.ttype(c.node.meta["val"])


@handles(aten.linear.default)
def _linear(c: Converter, n, x, w, b=None):
    ins = [c.value(x), c.value(w)] + ([c.value(b)] if b is not None else [])
    return c.emit("linear", *ins)


@handles(aten.addmm.default)
def _addmm(c: Converter, n, bias, x, w, beta=1, alpha=1):
    if w in c.params and c.params[w].transposed and beta == 1 and alpha == 1:
        bv = c.value(bias)
        wv = c.value(w)
        if bv.type.rank == 1:
            return c.emit("linear", c.value(x), wv, bv)
        return c.emit("add", c.emit("linear", c.value(x), wv), bv)
    y = c.emit("matmul", c.value(x), c.value(w))
    if alpha != 1:
        y = c.emit("mul", y, c.const(alpha, y.type.dtype))
    if beta == 0:
        return y
    bv = c.value(bias)
    if beta != 1:
        bv = c.emit("mul", bv, c.const(beta, bv.type.dtype))
    return c.emit("add", y, bv)


@handles(aten.mm.default, aten.matmul.default, aten.bmm.default)
def _matmul(c: Converter, n, a, b):
    if n.target is aten.mm.default and b in c.params and c.params[b].transposed:
        return c.emit("linear", c.value(a), c.value(b))
    return c.emit("matmul", c.value(a), c.value(b))


@handles(aten.embedding.default)
def _embedding(c: Converter, n, weight, ids, padding_idx=-1, scale_grad=False, sparse=False):
    return c.emit("embedding", c.value(ids), c.value(weight))


# -- views and layout ----------------------------------------------------------------------------


def _identity(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    if v.type != _out_type(c):
        raise c.unsupported(f"expected a no-op, but {v.type} becomes {_out_type(c)}")
    return v


for _t in (
    aten.contiguous.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.lift_fresh_copy.default,
    aten.dropout.default,
    aten.feature_dropout.default,
):
    HANDLERS[_t] = _identity


@handles(
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
    aten.view_as.default,
    aten.reshape_as.default,
)
def _reshape(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    out = _out_type(c)
    if v.type.shape == out.shape:
        return v
    return c.emit("reshape", v, shape=out.shape)


@handles(aten.expand.default, aten.expand_as.default)
def _expand(c: Converter, n, x, *args, **kwargs):
    v = c.value(x)
    out = _out_type(c)
    if v.type.shape == out.shape:
        return v
    if v.type.numel() == out.numel():  # only inserts size-1 axes
        return c.emit("reshape", v, shape=out.shape)
    raise c.unsupported("broadcasting expand has no llmc equivalent (it is left to consumers)")


@handles(aten.transpose.int, aten.t.default, aten.permute.default, aten.numpy_T.default)
def _permute(c: Converter, n, x, *args):
    v = c.value(x)
    r = v.type.rank
    if n.target is aten.permute.default:
        perm = [d % r for d in args[0]]
    elif n.target in (aten.t.default, aten.numpy_T.default):
        perm = list(reversed(range(r)))
    else:
        d0, d1 = args[0] % r, args[1] % r
        perm = list(range(r))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    if perm == list(range(r)):
        return v
    return c.emit("permute", v, perm=tuple(perm))


@handles(aten.cat.default, aten.concat.default)
def _cat(c: Converter, n, xs, dim=0):
    vals = [c.value(x) for x in xs]
    vals = [v for v in vals if not (isinstance(v.type.shape[dim], int) and v.type.shape[dim] == 0)]
    if len(vals) == 1:
        return vals[0]
    return c.emit("concat", *vals, dim=dim % vals[0].type.rank)


def _slice_dim(c: Converter, v: Value, dim: int, start: Any, end: Any, step: int) -> Value:
    dim = dim % v.type.rank
    size = v.type.shape[dim]
    start_d = 0 if start is None else c.dim(start)
    end_d = None if end is None else c.dim(end)
    if isinstance(end_d, int) and end_d >= INT64_MAX // 2:
        end_d = None
    if isinstance(size, int):
        # Static axis: resolve negative and clamped bounds like Python slicing.
        s, e, _ = slice(
            start_d if isinstance(start_d, int) else None, end_d if isinstance(end_d, int) else None
        ).indices(size)
        if isinstance(start_d, int):
            start_d = s
        if isinstance(end_d, int) or end_d is None:
            end_d = None if e == size else e
    elif isinstance(start_d, int) and start_d < 0:
        if end_d is not None:
            raise c.unsupported("negative slice start on a symbolic axis needs an open end")
    if end_d == size:
        end_d = None
    if start_d == 0 and end_d is None and step == 1:
        return v
    return c.emit("slice", v, dim=dim, start=start_d, end=end_d, step=step)


@handles(aten.slice.Tensor)
def _slice(c: Converter, n, x, dim=0, start=None, end=None, step=1):
    return _slice_dim(c, c.value(x), dim, start, end, step)


@handles(aten.select.int)
def _select(c: Converter, n, x, dim, index):
    v = c.value(x)
    dim = dim % v.type.rank
    idx = c.dim(index)
    if isinstance(idx, int) and idx < 0:
        size = v.type.shape[dim]
        if isinstance(size, int):
            idx = idx + size
        elif idx != -1:
            raise c.unsupported("negative index on a symbolic axis (only -1 is supported)")
    end = None if idx == -1 else dim_add(idx, 1)
    s = c.emit("slice", v, dim=dim, start=idx, end=end)
    return c.emit("reshape", s, shape=_out_type(c).shape)


@handles(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(c: Converter, n, x, sizes, dim=0):
    v = c.value(x)
    dim = dim % v.type.rank
    outs: list[Value] = []
    start: Dim = 0
    for val in n.meta["val"]:
        length = c.dim(val.shape[dim])
        end = dim_add(start, length)
        outs.append(_slice_dim(c, v, dim, start, end, 1))
        start = end
    return outs


@handles(aten.unbind.int)
def _unbind(c: Converter, n, x, dim=0):
    v = c.value(x)
    dim = dim % v.type.rank
    outs = []
    for i, val in enumerate(n.meta["val"]):
        s = _slice_dim(c, v, dim, i, i + 1, 1)
        outs.append(c.emit("reshape", s, shape=c.ttype(val).shape))
    return outs


@handles(operator.getitem)
def _getitem(c: Converter, n, seq, idx):
    v = c.env.get(seq)
    if isinstance(v, list):
        return v[idx]
    raise c.unsupported("getitem on a value that is not a list of tensors")


# -- elementwise ---------------------------------------------------------------------------------


def _binary(op: str, swap: bool = False) -> Handler:
    def h(c: Converter, n, a, b, alpha=1):
        dt = _out_dtype(c)
        compare = op in ("lt", "gt", "le", "ge", "eq")
        x = c.operand(a, dt)
        # Scalars take the tensor's dtype (torch's "wrapped number" rule).
        y = c.operand(b, x.type.dtype if compare else dt)
        if not compare:
            x, y = c.cast(x, dt) if x.type.rank else x, c.cast(y, dt) if y.type.rank else y
        if alpha != 1:
            y = c.emit("mul", y, c.const(alpha, dt))
        if swap:
            x, y = y, x
        return c.emit(op, x, y)

    return h


for _op, _targets in {
    "add": (aten.add.Tensor, aten.add.Scalar),
    "sub": (aten.sub.Tensor, aten.sub.Scalar),
    "mul": (aten.mul.Tensor, aten.mul.Scalar),
    "div": (aten.div.Tensor, aten.div.Scalar),
    "pow": (aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor),
    "maximum": (aten.maximum.default,),
    "minimum": (aten.minimum.default,),
    "lt": (aten.lt.Tensor, aten.lt.Scalar),
    "gt": (aten.gt.Tensor, aten.gt.Scalar),
    "le": (aten.le.Tensor, aten.le.Scalar),
    "ge": (aten.ge.Tensor, aten.ge.Scalar),
    "eq": (aten.eq.Tensor, aten.eq.Scalar),
}.items():
    for _t in _targets:
        HANDLERS[_t] = _binary(_op)
HANDLERS[aten.rsub.Scalar] = _binary("sub", swap=True)
HANDLERS[aten.rsub.Tensor] = _binary("sub", swap=True)


@handles(aten.pow.Scalar)
def _pow_scalar(c: Converter, n, base, exp):
    dt = _out_dtype(c)
    return c.emit("pow", c.const(base, dt), c.cast(c.value(exp), dt))


def _unary(op: str) -> Handler:
    def h(c: Converter, n, x, *args, **kwargs):
        return c.emit(op, c.cast(c.value(x), _out_dtype(c)))

    return h


for _op, _targets in {
    "neg": (aten.neg.default,),
    "abs": (aten.abs.default,),
    "exp": (aten.exp.default,),
    "log": (aten.log.default,),
    "sqrt": (aten.sqrt.default,),
    "rsqrt": (aten.rsqrt.default,),
    "relu": (aten.relu.default,),
    "sigmoid": (aten.sigmoid.default,),
    "tanh": (aten.tanh.default,),
    "silu": (aten.silu.default,),
    "sin": (aten.sin.default,),
    "cos": (aten.cos.default,),
}.items():
    for _t in _targets:
        HANDLERS[_t] = _unary(_op)


@handles(aten.gelu.default)
def _gelu(c: Converter, n, x, approximate="none"):
    return c.emit("gelu", c.value(x), approximate=approximate)


@handles(aten.square.default)
def _square(c: Converter, n, x):
    v = c.value(x)
    return c.emit("mul", v, v)


@handles(aten.reciprocal.default)
def _reciprocal(c: Converter, n, x):
    dt = _out_dtype(c)
    return c.emit("div", c.const(1.0, dt), c.cast(c.value(x), dt))


@handles(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where(c: Converter, n, cond, a, b):
    dt = _out_dtype(c)
    return c.emit("where", c.value(cond), c.operand(a, dt), c.operand(b, dt))


@handles(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(c: Converter, n, x, mask, value):
    v = c.value(x)
    return c.emit("where", c.value(mask), c.operand(value, v.type.dtype), v)


@handles(
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.to.device,
    aten.type_as.default,
    aten.to.other,
)
def _to(c: Converter, n, x, *args, **kwargs):
    return c.cast(c.value(x), _out_dtype(c))


@handles(aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
def _softmax(c: Converter, n, x, dim, *rest, **kwargs):
    v = c.value(x)
    dt = _out_dtype(c)
    if dt != v.type.dtype:
        # softmax(x, dtype=float32): llmc's softmax computes in float32 internally.
        v = c.cast(v, dt)
    return c.emit("softmax", v, dim=dim % v.type.rank)


def _reduce(op: str) -> Handler:
    def h(c: Converter, n, x, dims=None, keepdim=False, *, dtype=None):
        v = c.value(x)
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(v.type.rank))
        if isinstance(dims, int):
            dims = [dims]
        out = c.emit(op, v, dims=tuple(d % v.type.rank for d in dims), keepdim=bool(keepdim))
        return c.cast(out, _out_dtype(c))

    return h


HANDLERS[aten.mean.dim] = _reduce("reduce_mean")
HANDLERS[aten.sum.dim_IntList] = _reduce("reduce_sum")
HANDLERS[aten.amax.default] = _reduce("reduce_max")


@handles(aten.mean.default, aten.sum.default)
def _reduce_all(c: Converter, n, x, *, dtype=None):
    op = "reduce_mean" if n.target is aten.mean.default else "reduce_sum"
    return _reduce(op)(c, n, x, None, False)


@handles(aten.layer_norm.default)
def _layer_norm(c: Converter, n, x, shape, weight=None, bias=None, eps=1e-5, cudnn=True):
    v = c.value(x)
    if len(shape) != 1:
        raise c.unsupported(f"layer_norm over {len(shape)} axes (llmc normalizes the last one)")
    if weight is None and bias is not None:
        out = c.emit("layer_norm", v, eps=float(eps))
        return c.emit("add", out, c.value(bias))
    ins = [v] + [c.value(t) for t in (weight, bias) if t is not None]
    return c.emit("layer_norm", *ins, eps=float(eps))


@handles(aten.rms_norm.default)
def _aten_rms_norm(c: Converter, n, x, shape, weight=None, eps=None):
    v = c.value(x)
    if len(shape) != 1:
        raise c.unsupported(f"rms_norm over {len(shape)} axes (llmc normalizes the last one)")
    if eps is None:
        eps = torch.finfo(c.node.meta["val"].dtype).eps
    ins = [v] + ([c.value(weight)] if weight is not None else [])
    return c.emit("rms_norm", *ins, eps=float(eps))


@handles(aten.scaled_dot_product_attention.default)
def _sdpa(c: Converter, n, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
          enable_gqa=False):  # fmt: skip
    if attn_mask is not None:
        raise c.unsupported("scaled_dot_product_attention with an explicit mask")
    qv, kv, vv = c.value(q), c.value(k), c.value(v)
    return c.emit("attention", qv, kv, vv, scale=_canon_scale(scale, qv), causal=bool(is_causal))


def _canon_scale(scale: float | None, q: Value) -> float:
    """0.0 (the default, 1/sqrt(head_dim)) when ``scale`` equals it, else the given scale."""
    if scale is None:
        return 0.0
    d = q.type.shape[-1]
    if isinstance(d, int) and math.isclose(scale, 1.0 / math.sqrt(d), rel_tol=1e-12):
        return 0.0
    return float(scale)


# -- llmc custom ops (canonical pieces substituted before tracing) --------------------------------


@handles(torch.ops.llmc.attention.default)
def _llmc_attention(c: Converter, n, q, k, v, scale, causal, window):
    qv = c.value(q)
    return c.emit(
        "attention",
        qv,
        c.value(k),
        c.value(v),
        scale=_canon_scale(scale or None, qv),
        causal=bool(causal),
        window=int(window),
    )


@handles(torch.ops.llmc.rms_norm.default)
def _llmc_rms_norm(c: Converter, n, x, w, eps):
    return c.emit("rms_norm", c.value(x), c.value(w), eps=float(eps))


@handles(torch.ops.llmc.rope.default)
def _llmc_rope(c: Converter, n, x, pos, attrs):
    return c.emit("rope", c.value(x), c.value(pos), attrs_obj=rope_attrs_from_json(attrs))


def convert_exported(
    ep: torch.export.ExportedProgram, name: str, opts: ConvertOptions | None = None
) -> Graph:
    """The IR graph of an exported program (see the module docstring)."""
    return Converter(ep, name, opts or ConvertOptions()).run()


__all__ = ["COMPONENT_TAGS", "ConvertOptions", "HANDLERS", "block_tag", "convert_exported"]
