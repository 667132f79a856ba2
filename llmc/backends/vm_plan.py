"""Memory planning across a decode step's layer calls (``build`` phase, before memory planning).

Relax plans memory per function (``StaticPlanBlockMemory``): a decode step that calls one layer
function per decoder layer allocates each layer's activations afresh on every call (one
``vm.builtin.alloc_storage`` per planned buffer and one ``alloc_tensor`` per activation, per
layer), and every call pays for its frame, its argument checks, its result tuple and the
releases of what it returns. :func:`inline_layers` copies the layer functions' bodies into the
entries that fix every size but the cache's (``decode``) *after* fusion and scheduling, so the
kernels are the same ones (each compiled once, as before) and only the Relax bindings are
repeated per layer: the planner then sees the whole step and reuses a handful of buffers across
all layers.

Run-time control flow stays: an inlined layer's ``If`` (FFN skipping) is copied as is and its
branches stay calls of the branch functions, which keep their own allocations (they run only
when taken). Entries with symbolic activation sizes (``prefill``) keep their layer calls: their
planner cannot reuse memory of unknown size anyway, and their Relax code stays one copy.

:func:`hoist_workspace` then takes the planned memory out of the call: the storages, their
tensors and the static views of those go into ``ENTRY_workspace()``, which the runner calls once
(manifest ``backend.workspaces``, ABI ``llmc-tvm-v3``); the entry takes the tensors as arguments
after its weights, so a step allocates only what it returns. The same tensors serve every call:
one call at a time per loaded artifact, as for the in-place KV cache. Measured in
docs/backends.md, "VM overhead per decode step".

Example (what the CPU and GPU pipelines run in ``build``)::

    passes = [ToNonDataflow(), inline_layers, ..., StaticPlanBlockMemory(),
              hoist_workspace(record), LowerAllocTensor(), ...]
    # record == {"decode": "decode_workspace"}
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.utils import copy_with_new_vars

#: function attribute the lowering puts on entries (:mod:`llmc.backends.lower`)
ENTRY_ATTR = "llmc.entry"
NUM_INPUT = "num_input"  # llmc.backends.lower.NUM_INPUT (not imported: lower imports the rules)


@mutator
class _Inline(PyExprMutator):
    """Replaces each call of a function in ``callees`` by a fresh copy of its body."""

    def __init__(self, mod: tvm.IRModule, callees: dict[Any, relax.Function]) -> None:
        super().__init__(mod)
        self.callees = callees
        self.inlined = 0

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        v = binding.value
        if not (isinstance(v, relax.Call) and v.op in self.callees):
            super().visit_var_binding_(binding)
            return
        func = copy_with_new_vars(self.callees[v.op])
        args = [self.visit_expr(a) for a in v.args]
        func = func.bind_params(dict(zip(func.params, args, strict=True)))
        body = func.body
        for block in body.blocks:
            for b in block.bindings:
                self.visit_binding(b)
        res = self.visit_expr(body.body)
        if not isinstance(res, relax.Var):
            res = self.builder_.emit(res)
        self.set_var_remap(binding.var, res)
        self.inlined += 1


def inline_layers_in(
    mod: tvm.IRModule, entries: Collection[str] | None = None
) -> tuple[tvm.IRModule, int]:
    """``mod`` with the private functions called by the entry functions named in ``entries``
    (default: every entry all of whose activation sizes are static, see
    :func:`static_entries`) inlined into them, functions no longer called removed; and how many
    calls were inlined. Callees are the private Relax functions the lowering outlined (layer
    functions); functions called from inside ``If`` branches (cond branch functions) are not
    inlined: their calls sit in the branches, not in the entry's top-level bindings."""
    names = set(static_entries(mod) if entries is None else entries)
    targets = [
        (gv, f)
        for gv, f in mod.functions.items()
        if isinstance(f, relax.Function) and gv.name_hint in names
    ]
    if not targets:
        return mod, 0
    branch_callees = _called_in_branches(mod)
    callees = {
        gv: f
        for gv, f in mod.functions.items()
        if isinstance(f, relax.Function)
        and (f.attrs is None or ENTRY_ATTR not in f.attrs)
        and gv not in branch_callees
        and not _is_public(f)
    }
    m = _Inline(mod, callees)
    for gv, func in targets:
        new = m.visit_expr(func)
        if not new.same_as(func):
            m.builder_.update_func(gv, new)
    out = m.builder_.get()
    if m.inlined:
        out = relax.transform.CanonicalizeBindings()(out)
        out = _drop_uncalled(out, set(callees))
    return out, m.inlined


def static_entries(mod: tvm.IRModule) -> list[str]:
    """The entry functions whose arguments' sizes are all static except the KV cache's
    (``kv_capacity``, ``past``: they appear only in the cache buffers and ``kv_len``)."""
    out = []
    for gv, f in mod.functions.items():
        if not isinstance(f, relax.Function) or f.attrs is None or ENTRY_ATTR not in f.attrs:
            continue
        n = int(f.attrs["num_input"]) if "num_input" in f.attrs else len(f.params)
        ok = True
        for p in f.params[:n]:
            t = p.ty
            if isinstance(t, relax.TensorType) and t.ndim == 4:
                continue  # a cache buffer [b, heads, kv_capacity, head_dim]
            if isinstance(t, relax.TensorType) and not _static(t):
                ok = False
        if ok:
            out.append(gv.name_hint)
    return out


def _static(t: relax.TensorType) -> bool:
    if t.shape is None or not isinstance(t.shape, relax.ShapeExpr):
        return False
    return all(isinstance(d, tvm.tirx.IntImm) for d in t.shape.values)


def _is_public(f: relax.Function) -> bool:
    return f.attrs is not None and "global_symbol" in f.attrs


def _called_in_branches(mod: tvm.IRModule) -> set[Any]:
    """Global functions called inside an ``If`` branch anywhere in ``mod``."""
    found: set[Any] = set()

    def visit(e: Any, in_branch: bool) -> None:
        if isinstance(e, relax.If):
            visit(e.true_branch, True)
            visit(e.false_branch, True)
        elif isinstance(e, relax.SeqExpr):
            for block in e.blocks:
                for b in block.bindings:
                    visit(b.value, in_branch)
            visit(e.body, in_branch)
        elif isinstance(e, relax.Call) and in_branch and isinstance(e.op, tvm.ir.GlobalVar):
            found.add(e.op)

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            visit(f.body, False)
    return found


def _drop_uncalled(mod: tvm.IRModule, candidates: set[Any]) -> tvm.IRModule:
    """``mod`` without the functions in ``candidates`` that nothing calls any more."""
    used: set[str] = set()

    def visit(e: Any) -> None:
        if isinstance(e, tvm.ir.GlobalVar):
            used.add(e.name_hint)

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    out = tvm.IRModule(
        {
            gv: f
            for gv, f in mod.functions.items()
            if not (gv in candidates and gv.name_hint not in used)
        },
        attrs=mod.attrs,
    )
    return out


#: name of an entry's workspace function: ``decode`` -> ``decode_workspace``
WORKSPACE_SUFFIX = "_workspace"


def _is_op(e: Any, name: str) -> bool:
    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name


def _static_expr(e: Any) -> bool:
    """An argument of a memory op that is the same on every call (no variable, no symbolic
    size)."""
    if isinstance(e, relax.Var):
        return False
    if isinstance(e, relax.ShapeExpr):
        return all(isinstance(d, tvm.tirx.IntImm) for d in e.values)
    if isinstance(e, tvm.tirx.IntImm):
        return True
    return type(e).__name__ in ("StringImm", "GenericConst")  # a storage scope, a dtype


@mutator
class _Drop(PyExprMutator):
    """Drops the bindings of ``drop`` (variables) and reads ``remap[var]`` for each of them."""

    def __init__(self, mod: tvm.IRModule, drop: set[Any], remap: dict[Any, relax.Var]) -> None:
        super().__init__(mod)
        self.drop = drop
        self.remap = remap

    def visit_var_(self, op: relax.Var) -> relax.Expr:
        return self.remap.get(op, op)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.drop:
            return
        super().visit_var_binding_(binding)


def hoist_workspace_in(
    mod: tvm.IRModule, entries: Collection[str] | None = None
) -> tuple[tvm.IRModule, dict[str, str]]:
    """Move an entry's planned activation memory out of the call (after
    ``StaticPlanBlockMemory``, before ``LowerAllocTensor``).

    Every ``memory.alloc_storage`` of static size at the entry's top level, with the
    ``memory.alloc_tensor`` views on it and their static ``R.reshape`` views, goes into a new
    public function ``ENTRY_workspace()`` that returns the tensors the entry reads; the entry
    takes them as extra arguments after its weights. The runner calls the workspace function
    once per loaded artifact and passes the same tensors on every call: a decode step then
    allocates only what it returns. Storage read anywhere else (an ``If`` branch) stays in the
    entry. Returns the module and ``{entry: workspace function}``."""
    names = set(static_entries(mod) if entries is None else entries)
    done: dict[str, str] = {}
    out = mod
    for gv, f in mod.functions.items():
        if not isinstance(f, relax.Function) or gv.name_hint not in names:
            continue
        split = _split_workspace(mod, f, gv.name_hint + WORKSPACE_SUFFIX)
        if split is None:
            continue
        if out is mod:
            out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        entry, ws = split
        out[gv] = entry
        out[tvm.ir.GlobalVar(gv.name_hint + WORKSPACE_SUFFIX)] = ws
        done[gv.name_hint] = gv.name_hint + WORKSPACE_SUFFIX
    return out, done


def _reads(e: Any, among: Collection[Any]) -> set[Any]:
    """The variables of ``among`` that ``e`` reads."""
    found: set[Any] = set()

    def visit(x: Any) -> None:
        if isinstance(x, relax.Var) and x in among:
            found.add(x)

    relax.analysis.post_order_visit(e, visit)
    return found


def _split_workspace(
    mod: tvm.IRModule, f: relax.Function, name: str
) -> tuple[relax.Function, relax.Function] | None:
    """``f`` taking its static activation memory as arguments, and the function ``name`` that
    makes it (see :func:`hoist_workspace_in`); ``None`` when there is none to move."""
    if not isinstance(f.body, relax.SeqExpr):
        return None
    top = [b for block in f.body.blocks for b in block.bindings]
    storages = {
        b.var: b
        for b in top
        if _is_op(b.value, "relax.memory.alloc_storage")
        and all(_static_expr(a) for a in b.value.args)
    }
    views = [
        b
        for b in top
        if _is_op(b.value, "relax.memory.alloc_tensor")
        and b.value.args[0] in storages
        and all(_static_expr(a) for a in b.value.args[1:])
    ]
    # a storage read by anything but these views (an If branch, a kill) stays
    view_vars = {b.var for b in views}
    other: set[Any] = set()
    for b in top:
        if b.var not in view_vars and b.var not in storages:
            other |= _reads(b.value, storages)
    views = [b for b in views if b.value.args[0] not in other]
    if not views:
        return None
    used = {b.value.args[0] for b in views}
    # names of them (``lv = alloc``) and views of them with another static shape
    # (``R.reshape``) go too: each variable -> the hoisted tensor it is
    root: dict[Any, Any] = {b.var: b.var for b in views}
    moved = list(views)
    tuples: dict[Any, relax.Tuple] = {}  # a multi-output kernel's results (CallTIRRewrite)
    for b in top:
        v = b.value
        if isinstance(v, relax.Tuple):
            tuples[b.var] = v
        if isinstance(v, relax.Var) and v in root:
            root[b.var] = root[v]
        elif isinstance(v, relax.TupleGetItem) and v.tuple_value in tuples:
            field = tuples[v.tuple_value].fields[v.index]
            if field in root:
                root[b.var] = root[field]
        elif _is_op(v, "relax.reshape") and v.args[0] in root and _static_expr(v.args[1]):
            call = relax.Call(v.op, [root[v.args[0]], v.args[1]], v.attrs, v.ty_args)
            moved.append(relax.VarBinding(b.var, call))
            root[b.var] = b.var
    read: set[Any] = set()
    for b in top:
        if b.var not in root:
            read |= {root[x] for x in _reads(b.value, root)}
    read |= {root[x] for x in _reads(f.body.body, root)}
    outs = [b.var for b in moved if b.var in read]
    kept = [storages[v] for v in storages if v in used]
    body = relax.SeqExpr([relax.BindingBlock(kept + moved)], relax.Tuple(outs))
    body = relax.BlockBuilder().normalize(body)
    ws = relax.Function([], body, is_pure=False).with_attrs({"global_symbol": name, NUM_INPUT: 0})
    params = [relax.Var(f"ws{i}", v.ty) for i, v in enumerate(outs)]
    entry = relax.Function(list(f.params) + params, f.body, f.ret_ty, f.is_pure, f.attrs)
    param_of = dict(zip(outs, params, strict=True))
    remap = {v: param_of[r] for v, r in root.items() if r in param_of}
    entry = _Drop(mod, set(root) | used, remap).visit_expr(entry)
    return entry, ws


def workspace_args(vm: Any, workspaces: dict[str, str], entry: str) -> list[Any]:
    """What a caller of ``entry`` passes after its weights: the results of its workspace
    function (``Lowered.workspaces``, the manifest's ``backend.workspaces``), or nothing. Call
    once and reuse: every call may reuse the same tensors, one call at a time."""
    fn = workspaces.get(entry)
    return [] if fn is None else list(vm[fn]())


def hoist_workspace(record: dict[str, str]) -> tvm.transform.Pass:
    """The module pass form of :func:`hoist_workspace_in`; ``record`` gets its result."""

    @tvm.transform.module_pass(opt_level=0, name="llmc.HoistWorkspace")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out, done = hoist_workspace_in(mod)
        record.update(done)
        return out

    return _pass


@tvm.transform.module_pass(opt_level=0, name="llmc.InlineLayers")
def inline_layers(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The module pass form of :func:`inline_layers_in` (after ``ToNonDataflow``)."""
    return inline_layers_in(mod)[0]


__all__ = [
    "WORKSPACE_SUFFIX",
    "hoist_workspace",
    "hoist_workspace_in",
    "inline_layers",
    "inline_layers_in",
    "static_entries",
    "workspace_args",
]
