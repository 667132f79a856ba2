"""IR -> TVM Relax: the lowering driver and the context lowering rules see.

The driver walks the graph in order and, for each node, asks the target's rule list for the first
rule that matches (:mod:`llmc.backends.rules`); the rule emits Relax bindings (``emit_te`` for TE
computations, ``call_tir`` for hand-written TIR kernels, plain Relax ops otherwise) through a
:class:`LowerCtx`. Weights become function arguments in the layout the rule asked for
(:mod:`llmc.backends.layouts`); identical decoder layers become one Relax function
(:mod:`llmc.backends.layers`).

Each *entry* is one compiled function with the graph's signature, possibly specialised: ``prefill``
keeps every symbolic size, ``decode`` fixes ``batch = seq = 1`` so that GPU schedules see a
matrix-vector product, ``prefill_last`` (``Entry.logits == "last"``) lowers the graph's last-row
variant (:mod:`llmc.ir.lastrow`: logits for the last row only, generation's prefill). Arguments:
the graph inputs in order, then the weights; result: a tuple of the graph outputs. Entries that
fix the same sizes share their layer and branch functions (the last-row variant shares every node
but the head with the graph, so the layer plan holds for it).

**The KV cache stays in place.** The IR's LM ABI is functional (``present_k_i = concat(past_k_i,
k, dim=2)``, see docs/frontend.md), which compiled as written copies the whole cache on every
decode step and allocates a new one. When every ``past_*`` input feeds exactly one such concat
(:func:`find_kv_appends`), the entries take instead a cache *buffer* ``[batch, kv_heads,
kv_capacity, head_dim]`` per ``past_*`` input plus one ``kv_len: Shape([past])`` argument after the
graph inputs; the concat becomes ``kv_append`` (``call_tir_inplace``: the new keys are written at
``past ..``), the attention kernels read the first ``past + seq`` keys of the buffer, and the
``present_*`` outputs are the buffers themselves. With token pruning (``llmc-lm-v2``) each layer's
cache has its own length symbol ``past_i``: ``kv_len`` is ``Shape([past_0, .., past_{L-1}])``
(:func:`kv_length_symbol`; the order is recorded in the manifest), layer ``i`` appends at
``past_i``, and the entries return one more output, ``Shape`` of the new lengths
(``past_i + keep_l``, where ``keep_l`` is bound at run time: :mod:`llmc.backends.rules_prune`). An operand that needs the value as a tensor (the
TE attention fallback, any other op) gets a slice of it (a copy). The runner owns the buffers
(:mod:`llmc.runtime.tvm_runner`).

**Control flow.** A ``cond`` lowers to a Relax ``If``. Each branch region with nodes becomes a
private function (``prefill_cond0_then``: its inputs, the sizes its types need and its weights,
lowered like a layer and deduplicated the same way) and the branch is one call of it; a region that
returns an input unchanged (a skipped block) is no call at all. Relax fuses only inside dataflow
blocks and its ``FuseOps`` does not look into ``If`` branches, so a branch inlined into the ``If``
would run unfused; as a function it is one dataflow block, fused like any other
(``cond_branches="inline"`` keeps the inline form, for comparison). Relax allows an ``If`` only
outside dataflow blocks, so a function that holds a ``cond`` is emitted as plain binding blocks,
and the ``legalize`` phase runs ``ConvertToDataflow`` first, which regroups the pure bindings
around the ``If`` into dataflow blocks. At run time the VM reads the predicate and jumps: the
branch not taken launches no kernel and allocates nothing (docs/backends.md, "Control flow").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import tvm
from tvm import relax, tirx

from llmc.backends.kernels.te_actq import act_fake_quant
from llmc.backends.layers import Layer, LayerPlan, plan_layers, region_params, region_signature
from llmc.backends.layouts import WeightArg, get_layout, tvm_dtype
from llmc.errors import IRError, UnsupportedOpError
from llmc.ir.graph import Graph, Node, Value, regions_of
from llmc.ir.lastrow import last_row_graph
from llmc.ir.ops import linear_act_quant
from llmc.ir.params import Param
from llmc.ir.types import Dim, SymDim, TensorType


@dataclass(frozen=True)
class Entry:
    """A compiled function: its name, the symbolic sizes it fixes, and which logits rows it
    returns: ``"all"``, or ``"last"`` (generation's prefill: the graph's last-row variant,
    :func:`llmc.ir.lastrow.last_row_graph`; an entry of a graph that has none is not built)."""

    name: str
    fixed: tuple[tuple[str, int], ...] = ()
    logits: str = "all"

    @property
    def fixed_dict(self) -> dict[str, int]:
        return dict(self.fixed)


#: Generation's prefill: every size symbolic, the logits of the last row only.
PREFILL_LAST = Entry("prefill_last", logits="last")


@dataclass(frozen=True)
class ParamRef:
    """What a ``param`` node lowers to: the rule that consumes it picks the layout."""

    param: Param


@dataclass(frozen=True)
class KVCacheRef:
    """A ``present_*`` value kept in place: the first ``length`` keys of the cache ``buf``
    (``[batch, kv_heads, kv_capacity, head_dim]``)."""

    buf: relax.Expr
    length: Any  # a PrimExpr: past + seq


#: The symbolic capacity of the in-place cache buffers (the runner picks it per sequence).
KV_CAPACITY = "kv_capacity"

#: Relax's function attribute ``num_input``: ``VMShapeLower`` checks the type of every argument
#: from this position on only where its shape is symbolic. Each call of a function otherwise
#: costs two VM builtins (``check_tensor_info``, ``match_shape``) per argument: for a decode step
#: of a 12-layer model, ~820 calls for weights whose types cannot be wrong. Entries set it to
#: their number of non-weight arguments (the runner checks every weight's shape and dtype
#: against the manifest when it loads them, :mod:`llmc.runtime.tvm_runner`); private layer and
#: branch functions set it to 0 (their callers' types are their arguments' types), which keeps
#: the checks that bind symbolic sizes (a cache buffer's capacity, a ``Shape`` argument).
NUM_INPUT = "num_input"


def find_kv_appends(graph: Graph) -> dict[int, Node]:
    """``id(past input) -> its concat`` when *every* ``past_*`` input of the LM ABI is read by
    exactly one ``concat(past, new, dim=2)`` of a rank-4 cache (then the cache can stay in
    place); empty otherwise."""
    users = graph.users()
    past = [v for v in graph.inputs if v.name.startswith(("past_k_", "past_v_"))]
    found: dict[int, Node] = {}
    for v in past:
        us = users.get(v, [])
        if len(us) != 1:
            return {}
        n = us[0]
        ok = (
            n.op == "concat"
            and n.attrs.dim == 2
            and len(n.inputs) == 2
            and n.inputs[0] is v
            and v.type.rank == 4
            and isinstance(v.type.shape[1], int)
            and isinstance(v.type.shape[3], int)
            and n.inputs[1].type.dtype == v.type.dtype
            and kv_length_symbol(v) is not None
        )
        if not ok:
            return {}
        found[id(v)] = n
    return found


def kv_length_symbol(v: Value) -> str | None:
    """The cache length symbol of a ``past_*`` input: ``past`` (one length for every layer,
    ``llmc-lm-v1``) or ``past_<i>`` (layer ``i``'s own, ``llmc-lm-v2``: token pruning)."""
    d = v.type.shape[2] if v.type.rank == 4 else None
    if not isinstance(d, SymDim) or len(d.terms) != 1:
        return None
    ((mono, coef),) = d.terms
    if coef != 1 or len(mono) != 1:
        return None
    name = mono[0]
    ok = name == "past" or (name.startswith("past_") and name[5:].isdigit())
    return name if ok else None


@dataclass
class Lowered:
    mod: tvm.IRModule
    entries: list[Entry]
    weights: list[WeightArg]
    layer_functions: dict[str, int]  # function name -> call sites (all entries together)
    rules_used: dict[str, int]
    entry_weights: dict[str, list[str]]  # entry -> its weight arguments (WeightArg names), in order
    kv_inputs: list[Value] = field(default_factory=list)  # in-place caches, argument order
    control_flow: int = 0  # ``cond`` nodes lowered to a Relax ``If`` (all entries together)
    branch_functions: dict[str, int] = field(default_factory=dict)  # function -> call sites
    kv_lengths: list[str] = field(default_factory=list)  # the symbols of kv_len, in order
    #: entry -> its workspace function (filled by the build phase: llmc.backends.vm_plan)
    workspaces: dict[str, str] = field(default_factory=dict)

    @property
    def kv_in_place(self) -> bool:
        """The entries take cache buffers and ``kv_len`` (see the module docstring)."""
        return bool(self.kv_inputs)

    @property
    def kv_per_layer(self) -> bool:
        """Each layer's cache has its own length (token pruning): ``kv_len`` holds one per
        layer and the entries return the new lengths as a last ``Shape`` output."""
        return self.kv_lengths not in ([], ["past"])


RuleFn = Callable[["LowerCtx", Node], Any]


class LowerCtx:
    """What a lowering rule may use while the driver builds one Relax function."""

    def __init__(
        self,
        lowering: Lowering,
        env: dict[str, Any],
        weight_hook: Callable[[Param, str, str], relax.Expr],
    ) -> None:
        self.lowering = lowering
        self.bb = lowering.bb
        self.env = env
        self.values: dict[int, Any] = {}
        self.node: Node | None = None
        self._weight_hook = weight_hook
        self.kv_len: relax.Var | None = None  # the Shape([past]) argument, with in-place caches
        self._sliced: dict[int, relax.Expr] = {}
        #: id(keep mask) -> (kept-row sources, the fresh length variable): the gathers that
        #: share a mask share one index computation and one length (rules_prune.py)
        self.prune_sources: dict[int, tuple[relax.Expr, tirx.Var]] = {}
        #: values that rules share within this function, by a key of the rule's making (the
        #: rotary cos/sin of the positions: one kernel per lowered function, not per rope; the
        #: decode layers are lowered as functions of their own, so one per layer there; rules.py)
        self.shared: dict[Any, relax.Expr] = {}

    # -- target ---------------------------------------------------------------------------------
    @property
    def target(self):  # llmc Target
        return self.lowering.target

    @property
    def kind(self) -> str:
        return self.lowering.target.kind

    @property
    def tvm_target(self) -> tvm.target.Target:
        return self.lowering.tvm_target

    @property
    def graph(self) -> Graph:
        return self.lowering.graph

    # -- shapes and types -----------------------------------------------------------------------
    def dim(self, d: Dim) -> Any:
        if isinstance(d, int):
            return d
        total: Any = 0
        for mono, coef in d.terms:
            term: Any = coef
            for s in mono:
                if s not in self.env:
                    raise IRError(f"symbolic size '{s}' is not an input dimension of the graph")
                term = term * self.env[s]
            total = total + term
        return total

    def shape(self, dims: Sequence[Dim]) -> list[Any]:
        return [self.dim(d) for d in dims]

    def rtype(self, t: TensorType) -> relax.TensorType:
        return relax.TensorType(self.shape(t.shape), tvm_dtype(t.dtype))

    def is_static(self, d: Dim) -> bool:
        v = self.dim(d)
        return isinstance(v, int) or isinstance(v, tirx.IntImm)

    def static(self, d: Dim) -> int | None:
        v = self.dim(d)
        if isinstance(v, int):
            return v
        if isinstance(v, tirx.IntImm):
            return int(v.value)
        return None

    # -- operands -------------------------------------------------------------------------------
    def param(self, v: Value) -> Param | None:
        ref = self.values.get(id(v))
        return ref.param if isinstance(ref, ParamRef) else None

    def weight(self, p: Param, layout: str, dtype: str | None = None) -> relax.Expr:
        """The weight ``p`` in ``layout`` (stored as ``dtype``, default its own dtype)."""
        return self._weight_hook(p, layout, dtype or p.type.dtype)

    def arg(self, v: Value) -> relax.Expr:
        """The Relax value of an operand (a param operand in the ``dense`` layout; an in-place
        cache as a tensor of its valid keys, which copies them: rules that can read the buffer
        ask :meth:`kv` first)."""
        x = self.values[id(v)]
        if isinstance(x, ParamRef):
            return self.weight(x.param, "dense")
        if isinstance(x, KVCacheRef):
            if id(v) not in self._sliced:
                self._sliced[id(v)] = self.emit(
                    relax.op.strided_slice(x.buf, axes=[2], begin=[0], end=[x.length])
                )
            return self._sliced[id(v)]
        return x

    def kv(self, v: Value) -> KVCacheRef | None:
        """The in-place cache behind ``v``, if ``v`` is one (a ``present_*`` value)."""
        x = self.values.get(id(v))
        return x if isinstance(x, KVCacheRef) else None

    def result(self, v: Value) -> relax.Expr:
        """``v`` as a function result: an in-place cache is returned as its buffer."""
        x = self.values[id(v)]
        return x.buf if isinstance(x, KVCacheRef) else self.arg(v)

    def args(self, n: Node) -> list[relax.Expr]:
        return [self.arg(v) for v in n.inputs]

    # -- emission -------------------------------------------------------------------------------
    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def emit_te(self, fn: Callable[..., Any], *args: Any, name: str, **kw: Any) -> relax.Expr:
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name, **kw)

    def call_kernel(
        self,
        key: tuple,
        make: Callable[[], tirx.PrimFunc],
        name: str,
        args: Sequence[relax.Expr],
        out: relax.TensorType | Sequence[relax.TensorType],
    ) -> relax.Expr:
        """Call a hand-written TIR kernel; ``make`` runs once per distinct ``key``. Scalar
        arguments go in ``args`` as ``relax.PrimValue``."""
        gv = self.lowering.kernel(key, make, name)
        outs = out if not isinstance(out, list | tuple) else list(out)
        return self.emit(relax.call_tir(gv, list(args), outs))

    def cast(self, x: relax.Expr, dtype: str) -> relax.Expr:
        if x.ty.dtype == tvm_dtype(dtype):
            return x
        return self.emit(relax.op.astype(x, tvm_dtype(dtype)))

    def unsupported(self, why: str = "") -> UnsupportedOpError:
        n = self.node
        assert n is not None
        where = f" at {n.scope}" if n.scope else ""
        extra = f": {why}" if why else ""
        return UnsupportedOpError(
            f"op '{n.op}' (%{n.out.name}{where}) is not supported on target "
            f"{self.target.name} ({self.kind}){extra}; register a lowering rule with "
            f"llmc.backends.rules.register_rule"
        )


class Lowering:
    """Builds the IRModule for one graph and target (see the module docstring)."""

    def __init__(
        self,
        graph: Graph,
        target: Any,
        tvm_target: tvm.target.Target,
        rules: Sequence[Any],
        *,
        outline_layers: bool = True,
        kv_in_place: bool = True,
        cond_branches: str = "function",
    ) -> None:
        if cond_branches not in ("function", "inline"):
            raise ValueError(f"cond_branches must be 'function' or 'inline', not {cond_branches!r}")
        self.cond_branches = cond_branches
        self.graph = graph
        self.target = target
        self.tvm_target = tvm_target
        self.rules = list(rules)
        self.bb = relax.BlockBuilder()
        self.weights: dict[str, WeightArg] = {}
        self._weight_params: dict[str, Param] = {}
        self._kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self._layer_fns: dict[tuple, tvm.ir.GlobalVar] = {}
        self.layer_calls: dict[str, int] = {}
        self.branch_calls: dict[str, int] = {}  # branch function -> call sites
        self.rules_used: dict[str, int] = {}
        self.plan: LayerPlan = (
            plan_layers(graph) if outline_layers else LayerPlan([], {}, {}, set())
        )
        self._symbols: dict[str, tirx.Var] = {}
        self.entry_weights: dict[str, list[str]] = {}
        self.kv_appends: dict[int, Node] = find_kv_appends(graph) if kv_in_place else {}
        self._kv_concats = {id(n) for n in self.kv_appends.values()}
        self._kv_values = {id(n.out) for n in self.kv_appends.values()}
        #: the cache length symbols (``past``, or ``past_0 ..``), in input order: kv_len's shape
        self.kv_syms: list[str] = []
        for v in graph.inputs:
            name = kv_length_symbol(v) if id(v) in self.kv_appends else None
            if name is not None and name not in self.kv_syms:
                self.kv_syms.append(name)
        self._dataflow = True  # the function being emitted is one dataflow block
        self._scope_params: list[relax.Var] = []  # its non-weight arguments (see _body)
        self._entry = Entry("")
        # entries that fix the same sizes (prefill, prefill_last) share their private functions
        self._branch_fns: dict[tuple, BranchFn] = {}  # (fixed, id(region)) -> its function
        self._branch_sigs: dict[tuple, BranchFn] = {}  # (fixed, region signature) -> function
        self._layer_fns_by: dict[tuple, tuple[tvm.ir.GlobalVar, list[tuple[int, str, str]]]] = {}
        self._variants: dict[str, Graph | None] = {"all": graph}

    # -- shared pieces ----------------------------------------------------------------------------
    def symbol(self, name: str) -> tirx.Var:
        if name not in self._symbols:
            self._symbols[name] = tirx.Var(name, "int64")
        return self._symbols[name]

    def kernel(self, key: tuple, make: Callable[[], tirx.PrimFunc], name: str) -> tvm.ir.GlobalVar:
        if key not in self._kernels:
            func = make()
            self._kernels[key] = self.bb.add_func(func, name)
        return self._kernels[key]

    def weight_arg(self, p: Param, layout: str, dtype: str) -> WeightArg:
        wa = get_layout(layout).arg(p, dtype)
        if dtype != p.type.dtype and layout == "dense":
            wa = WeightArg(f"{wa.name}.{dtype}", wa.param, wa.layout, wa.shape, wa.dtype)
        prev = self.weights.get(wa.name)
        if prev is None:
            self.weights[wa.name] = wa
            self._weight_params[wa.name] = p
        return wa

    def param_for(self, name: str) -> Param:
        return self._weight_params[name]

    def is_kv_append(self, n: Node) -> bool:
        """``n`` is a ``present = concat(past, new)`` that writes into the in-place cache."""
        return id(n) in self._kv_concats

    def _input_type(self, ctx: LowerCtx, v: Value) -> relax.TensorType:
        if id(v) in self.kv_appends:
            b, h, _, d = ctx.shape(v.type.shape)
            return relax.TensorType([b, h, self.symbol(KV_CAPACITY), d], tvm_dtype(v.type.dtype))
        return ctx.rtype(v.type)

    def _kv_len_var(self, env: dict[str, Any]) -> relax.Var:
        return relax.Var("kv_len", relax.ShapeType([env[s] for s in self.kv_syms]))

    def _kv_new_lengths(self, ctx: LowerCtx) -> relax.ShapeExpr:
        """Per cache length symbol, the length after this call (``past_i + rows_i``)."""
        out = {}
        for v in self.graph.inputs:
            n = self.kv_appends.get(id(v))
            name = kv_length_symbol(v) if n is not None else None
            if n is not None and name not in out:
                out[name] = ctx.dim(n.out.type.shape[2])
        return relax.ShapeExpr([out[s] for s in self.kv_syms])

    def graph_for(self, entry: Entry) -> Graph | None:
        """The graph ``entry`` computes: the graph, or its last-row variant (which shares every
        node but the head with it, so the layer plan and the in-place cache apply unchanged);
        ``None`` when it has none (not an LM graph, no row-wise head)."""
        if entry.logits not in self._variants:
            if entry.logits != "last":
                raise ValueError(f"entry {entry.name}: logits must be 'all' or 'last'")
            self._variants["last"] = last_row_graph(self.graph)
        return self._variants[entry.logits]

    # -- driver -----------------------------------------------------------------------------------
    def lower(self, entries: Sequence[Entry]) -> Lowered:
        entries = [e for e in entries if self.graph_for(e) is not None]
        for e in entries:
            self._lower_entry(e)
        mod = self.bb.get()
        return Lowered(
            mod,
            list(entries),
            list(self.weights.values()),
            dict(self.layer_calls),
            dict(self.rules_used),
            dict(self.entry_weights),
            [v for v in self.graph.inputs if id(v) in self.kv_appends],
            self.rules_used.get("cond", 0),
            dict(self.branch_calls),
            list(self.kv_syms),
        )

    def _env(self, entry: Entry) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for v in self.graph.inputs:
            for s in v.type.symbols():
                env[s] = entry.fixed_dict.get(s, self.symbol(s))
        return env

    def _lower_entry(self, entry: Entry) -> None:
        env = self._env(entry)
        self._entry = entry
        graph = self.graph_for(entry)
        assert graph is not None
        # Branch functions, then layer functions, then the entry (BlockBuilder builds one
        # function at a time, so a callee is complete before its caller is opened). An entry
        # fixing the sizes an earlier one fixed calls that one's functions.
        self._prepare_branches(entry, env, graph.nodes)
        layer_gvs: dict[tuple, tuple[tvm.ir.GlobalVar, list[tuple[int, str, str]]]] = {}
        for gi, (sig, members) in enumerate(self.plan.groups.items()):
            key = (entry.fixed, sig)
            if key not in self._layer_fns_by:
                self._layer_fns_by[key] = self._lower_layer_fn(entry, env, members[0], gi)
            layer_gvs[sig] = self._layer_fns_by[key]

        weight_vars: dict[str, relax.Var] = {}

        def hook(p: Param, layout: str, dtype: str) -> relax.Expr:
            wa = self.weight_arg(p, layout, dtype)
            if wa.name not in weight_vars:
                weight_vars[wa.name] = relax.Var(
                    _var_name(wa.name), relax.TensorType(list(wa.shape), tvm_dtype(wa.dtype))
                )
            return weight_vars[wa.name]

        ctx = LowerCtx(self, env, hook)
        inputs = [relax.Var(v.name, self._input_type(ctx, v)) for v in self.graph.inputs]
        if self.kv_appends:
            ctx.kv_len = self._kv_len_var(env)
            inputs.append(ctx.kv_len)
        inline = [n for n in graph.nodes if id(n) not in self.plan.covered]
        attrs = {"llmc.entry": entry.name, NUM_INPUT: len(inputs)}
        with self.bb.function(entry.name, attrs=attrs):
            with self._body(inline, inputs):
                for v, rv in zip(self.graph.inputs, inputs):
                    ctx.values[id(v)] = rv
                for n in graph.nodes:
                    if id(n) in self.plan.covered:
                        layer = self.plan.start.get(id(n))
                        if layer is not None:
                            gv, wspec = layer_gvs[layer.signature]
                            self._call_layer(ctx, layer, gv, wspec)
                        continue
                    self._lower_node(ctx, n)
                outs = [ctx.result(v) for v in graph.outputs]
                if self.kv_syms not in ([], ["past"]):  # per-layer lengths: return the new ones
                    outs.append(self._kv_new_lengths(ctx))
                out = self._output(relax.Tuple(outs))
            self.bb.emit_func_output(out, params=inputs + list(weight_vars.values()))
        self.entry_weights[entry.name] = list(weight_vars)

    def _weight_args(
        self, pos: dict[str, int]
    ) -> tuple[
        Callable[[Param, str, str], relax.Expr],
        list[tuple[int, str, str]],
        dict[tuple[int, str, str], relax.Var],
    ]:
        """A weight hook for a private function (a layer, a cond branch): each distinct
        (param position in ``pos``, layout, dtype) becomes one argument variable; the list fills
        in the order the arguments appear, the dict maps each to its variable."""
        wspec: list[tuple[int, str, str]] = []
        wvars: dict[tuple[int, str, str], relax.Var] = {}

        def hook(p: Param, layout: str, dtype: str) -> relax.Expr:
            key = (pos[p.name], layout, dtype)
            if key not in wvars:
                wa = self.weight_arg(p, layout, dtype)
                wvars[key] = relax.Var(
                    f"w{len(wvars)}", relax.TensorType(list(wa.shape), tvm_dtype(wa.dtype))
                )
                wspec.append(key)
            return wvars[key]

        return hook, wspec, wvars

    def _lower_layer_fn(
        self, entry: Entry, env: dict[str, Any], layer: Layer, gi: int
    ) -> tuple[tvm.ir.GlobalVar, list[tuple[int, str, str]]]:
        """Lower one representative layer as a private function; returns it and, per weight
        argument, (position in ``layer.params``, layout, dtype)."""
        pos = {pn.attrs.name: i for i, pn in enumerate(layer.params)}
        hook, wspec, wvars = self._weight_args(pos)
        ctx = LowerCtx(self, env, hook)
        ins = [relax.Var(f"x{i}", self._input_type(ctx, v)) for i, v in enumerate(layer.inputs)]
        if any(id(v) in self.kv_appends for v in layer.inputs):
            ctx.kv_len = self._kv_len_var(env)
            ins.append(ctx.kv_len)
        name = f"{entry.name}_layer" + (f"{gi}" if gi else "")
        with self.bb.function(name, attrs={NUM_INPUT: 0}, private=True):
            with self._body(layer.nodes, ins):
                for v, rv in zip(layer.inputs, ins):
                    ctx.values[id(v)] = rv
                for pn in layer.params:
                    ctx.values[id(pn.out)] = ParamRef(self.graph.root().params[pn.attrs.name])
                for n in layer.nodes:
                    self._lower_node(ctx, n)
                outs = [ctx.result(v) for v in layer.outputs]
                out = self._output(relax.Tuple(outs))
            gv = self.bb.emit_func_output(out, params=ins + [wvars[k] for k in wspec])
        return gv, wspec

    @contextmanager
    def _body(self, nodes: Sequence[Node], params: list[relax.Var]) -> Iterator[None]:
        """A function body: one dataflow block, or plain binding blocks when it holds a ``cond``
        (Relax's ``If`` cannot sit in a dataflow block; ``ConvertToDataflow`` regroups later).

        The function's parameters are only given at its end (weights are discovered while
        lowering), so its scope does not yet define the symbolic sizes: an ``If`` would then
        join its branches' types to ``Tensor(ndim=2)`` and lose the shape. ``params`` (the
        non-weight arguments, which bind every symbolic size) open a scope that does."""
        self._dataflow = not any(n.op == "cond" for n in nodes)
        if self._dataflow:
            with self.bb.dataflow():
                yield
        else:
            self._scope_params = params
            self.bb.begin_scope(params)
            yield
            self.bb.end_scope()

    def _output(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit_output(expr) if self._dataflow else self.bb.emit(expr)

    def lower_region(
        self, ctx: LowerCtx, region: Graph, operands: Sequence[Value]
    ) -> relax.SeqExpr:
        """One branch of a ``cond`` as a Relax ``SeqExpr`` in its own scope: the call of the
        region's function (:meth:`_prepare_branches`), the operand a pass-through region
        returns, or (``cond_branches="inline"``) the region's nodes lowered in place."""
        if self.bb.current_block_is_dataflow():
            raise IRError(
                f"cond %{ctx.node.out.name if ctx.node else '?'} reached inside a dataflow "
                "block: the function holding it must be emitted as binding blocks (Lowering._body)"
            )
        saved_node, saved_sliced, saved_shared = ctx.node, ctx._sliced, ctx.shared
        ctx._sliced = dict(saved_sliced)  # cache slices made inside the branch stay inside it
        ctx.shared = dict(saved_shared)
        self.bb.begin_scope(self._scope_params)  # a nested If needs the sizes too
        self.bb._begin_binding_block()
        fn = self._branch_fns.get((self._entry.fixed, id(region)))
        if fn is not None:
            args = [ctx.arg(x) for x in operands]
            if fn.sizes:
                args.append(relax.ShapeExpr([ctx.env[n] for n in fn.sizes]))
            params = region_params(region)
            for pi, layout, dtype in fn.wspec:
                p = self.graph.root().params[params[pi].attrs.name]
                args.append(ctx.weight(p, layout, dtype))
            res = ctx.emit(relax.Call(fn.gv, args))
            self.branch_calls[fn.gv.name_hint] = self.branch_calls.get(fn.gv.name_hint, 0) + 1
        else:
            for v, x in zip(region.inputs, operands, strict=True):
                ctx.values[id(v)] = ctx.values[id(x)]
            for n in region.nodes:
                self._lower_node(ctx, n)
            res = ctx.arg(region.outputs[0])
        block = self.bb._end_block()
        self.bb.end_scope()
        ctx.node, ctx._sliced, ctx.shared = saved_node, saved_sliced, saved_shared
        return relax.SeqExpr([block], res)

    def _prepare_branches(self, entry: Entry, env: dict[str, Any], nodes: Sequence[Node]) -> None:
        """Lower every ``cond`` branch under ``nodes`` (inner ones first) as a private function,
        before the function that calls it is opened. Pass-through regions get none."""
        if self.cond_branches != "function":
            return
        for n in nodes:
            for region in regions_of(n) if n.op == "cond" else ():
                self._prepare_branches(entry, env, region.nodes)
                if region.nodes and (entry.fixed, id(region)) not in self._branch_fns:
                    self._branch_fns[(entry.fixed, id(region))] = self._branch_fn(
                        entry, env, region, "then" if region is n.attrs.then_branch else "else"
                    )

    def _branch_fn(self, entry: Entry, env: dict[str, Any], region: Graph, arm: str) -> BranchFn:
        params = region_params(region)
        sig = (entry.fixed, region_signature(self.graph, region, params))
        if sig in self._branch_sigs:  # the same branch in another layer: one function
            return self._branch_sigs[sig]
        pos: dict[str, int] = {}
        for i, pn in enumerate(params):
            pos.setdefault(pn.attrs.name, i)
        hook, wspec, wvars = self._weight_args(pos)
        # sizes bound at run time in the caller (token pruning's kept counts ``keep_l``) are not
        # in ``env`` yet: the branch function gets its own symbolic variables for them, which
        # its arguments' shapes (or ``sizes``) define
        used: set[str] = set()
        for v in region.inputs:
            used |= v.type.symbols()
        for _, n in region.walk():
            used |= n.out.type.symbols()
        env = {**env, **{s: tirx.Var(s, "int64") for s in sorted(used) if s not in env}}
        ctx = LowerCtx(self, env, hook)
        ins = [relax.Var(f"x{i}", ctx.rtype(v.type)) for i, v in enumerate(region.inputs)]
        sizes = _free_sizes(region, env)
        if sizes:
            ins.append(relax.Var("sizes", relax.ShapeType([env[n] for n in sizes])))
        name = f"{entry.name}_cond{len(self._branch_sigs)}_{arm}"
        with self.bb.function(name, attrs={NUM_INPUT: 0}, private=True):
            with self._body(region.nodes, ins):
                for v, rv in zip(region.inputs, ins):
                    ctx.values[id(v)] = rv
                for n in region.nodes:
                    self._lower_node(ctx, n)
                out = self._output(ctx.arg(region.outputs[0]))
            gv = self.bb.emit_func_output(out, params=ins + [wvars[k] for k in wspec])
        fn = BranchFn(gv, wspec, sizes)
        self._branch_sigs[sig] = fn
        return fn

    def _call_layer(
        self,
        ctx: LowerCtx,
        layer: Layer,
        gv: tvm.ir.GlobalVar,
        wspec: list[tuple[int, str, str]],
    ) -> None:
        args = [ctx.arg(v) for v in layer.inputs]
        if any(id(v) in self.kv_appends for v in layer.inputs):
            assert ctx.kv_len is not None
            args.append(ctx.kv_len)
        for pi, layout, dtype in wspec:
            p = self.graph.root().params[layer.params[pi].attrs.name]
            args.append(ctx.weight(p, layout, dtype))
        res = ctx.emit(relax.Call(gv, args))
        for i, v in enumerate(layer.outputs):
            x = ctx.emit(relax.TupleGetItem(res, i))
            if id(v) in self._kv_values:
                x = KVCacheRef(x, ctx.dim(v.type.shape[2]))
            ctx.values[id(v)] = x
        self.layer_calls[gv.name_hint] = self.layer_calls.get(gv.name_hint, 0) + 1

    def _lower_node(self, ctx: LowerCtx, n: Node) -> None:
        ctx.node = n
        if n.op == "param":
            ctx.values[id(n.out)] = ParamRef(self.graph.root().params[n.attrs.name])
            return
        rules = self.rules
        if self.is_kv_append(n):  # the in-place cache decides the lowering, not a user rule
            rules = [r for r in self.rules if r.name == "concat.kv_append"]
        for rule in rules:
            if rule.matches(ctx, n):
                q = linear_act_quant(self.graph.root(), n) if n.op == "linear" else None
                if q is not None and not rule.act_quant:
                    out = self._emit_act_quant(ctx, n, rule, q.act_group)
                else:
                    out = rule.emit(ctx, n)
                self.rules_used[rule.name] = self.rules_used.get(rule.name, 0) + 1
                break
        else:  # the rule lists end in a fallback that raises; this is a safety net
            raise ctx.unsupported()
        if self.is_kv_append(n) and not isinstance(out, KVCacheRef):
            raise IRError(f"rule {rule.name} lowered the in-place cache append {n.out.name}")
        want = ctx.rtype(n.out.type)
        got = out.buf.ty if isinstance(out, KVCacheRef) else out.ty
        if isinstance(got, relax.TensorType) and got.dtype != want.dtype:
            raise IRError(
                f"lowering rule for {n.op} produced {got.dtype}, the IR says {n.out.type}"
            )
        ctx.values[id(n.out)] = out

    def _emit_act_quant(self, ctx: LowerCtx, n: Node, rule: Any, act_group: int) -> Any:
        """``rule`` on the linear ``n`` whose weight records int8 activations
        (``QuantSpec.act_bits``): its input fake-quantized first by a TE kernel computing the
        reference's ``fake_quant_act`` (so any dequantizing rule, on any target, is exact)."""
        v = n.inputs[0]
        saved = ctx.values[id(v)]
        x = ctx.arg(v)
        ctx.values[id(v)] = ctx.emit_te(act_fake_quant, x, act_group, name="act_fake_quant")
        try:
            out = rule.emit(ctx, n)
        finally:
            ctx.values[id(v)] = saved
        self.rules_used["act_quant.te"] = self.rules_used.get("act_quant.te", 0) + 1
        return out


@dataclass(frozen=True)
class BranchFn:
    """A ``cond`` branch lowered as a private function: called with the region's operands, then
    ``Shape(sizes)`` when its types need sizes its inputs do not bind, then its weights
    (``wspec``: position in :func:`~llmc.backends.layers.region_params`, layout, dtype)."""

    gv: tvm.ir.GlobalVar
    wspec: list[tuple[int, str, str]]
    sizes: list[str]


def _free_sizes(region: Graph, env: dict[str, Any]) -> list[str]:
    """Symbolic sizes the region's types use that no input dimension binds by itself."""
    bound = set()
    for v in region.inputs:
        for d in v.type.shape:
            if not isinstance(d, int) and len(d.terms) == 1:
                ((mono, coef),) = d.terms
                if len(mono) == 1 and coef == 1:
                    bound.add(mono[0])
    used: set[str] = set()
    for _, n in region.walk():
        used |= n.out.type.symbols()
        if is_dataclass(n.attrs):  # a slice's start, a reshape's shape, ...
            used |= _symbols_in([getattr(n.attrs, f.name) for f in fields(n.attrs)])
    return sorted(s for s in used - bound if not isinstance(env.get(s), int))


def _symbols_in(x: Any) -> set[str]:
    if isinstance(x, SymDim):
        return set(x.symbols)
    if isinstance(x, list | tuple):
        return set().union(*(_symbols_in(y) for y in x)) if x else set()
    return set()


def _var_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


__all__ = [
    "KV_CAPACITY",
    "Entry",
    "KVCacheRef",
    "LowerCtx",
    "PREFILL_LAST",
    "Lowered",
    "Lowering",
    "ParamRef",
    "find_kv_appends",
    "kv_length_symbol",
]
