"""Relax clean-ups in the ``build`` phase that cut VM instructions per call (not kernel time).

Each VM builtin a decode step executes costs about 50-100 ns of interpreter and packed-call work
(docs/backends.md, "VM overhead per decode step"); the build keeps the ones that do something:

* :func:`drop_unused_tuples` — ``CallTIRRewrite`` turns a multi-output ``call_tir`` (the int8
  activation quantizer: values, scales, sums) into the kernel call plus ``lv = (a, b, c)``;
  the users then read ``a``, ``b``, ``c`` directly, and the tuple, never read, still costs a
  ``vm.builtin.make_tuple`` per call (7 per decoder layer of a w4a8 model). Tuples are pure, so
  dropping an unread one changes nothing else.

* :func:`drop_small_kills` — ``KillAfterLastUse`` releases every tensor and storage object right
  after its last use (``vm.builtin.null_value``, 40-60 per decoder layer). That matters for a
  prefill's large activations; a decode step's are a few KiB each and all are released when the
  function returns anyway. In a function whose killed objects of static size add up to at most
  :data:`SMALL_KILL_BYTES`, the kills of the static ones go; objects of symbolic size (a
  prefill's activations, the cache buffers), tuples and the rest keep theirs.

The per-argument type checks are the other big item; they are cut at lowering, by the
``num_input`` function attribute (:data:`llmc.backends.lower.NUM_INPUT`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor


@visitor
class _VarUses(PyExprVisitor):
    """Every variable read anywhere in a function (definitions are not reads)."""

    def __init__(self) -> None:
        self.used: set[Any] = set()

    def visit_var_(self, op: relax.Var) -> None:
        self.used.add(op)

    def visit_dataflow_var_(self, op: relax.DataflowVar) -> None:
        self.used.add(op)


@mutator
class _DropBindings(PyExprMutator):
    """Drops (and counts) every variable binding for which ``drop`` holds."""

    def __init__(self, mod: tvm.IRModule, drop: Callable[[relax.VarBinding], bool]) -> None:
        super().__init__(mod)
        self.drop = drop
        self.dropped = 0

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if self.drop(binding):
            self.dropped += 1
            return
        super().visit_var_binding_(binding)


def _relax_functions(mod: tvm.IRModule) -> list[tuple[Any, relax.Function]]:
    return [(gv, f) for gv, f in mod.functions.items() if isinstance(f, relax.Function)]


def _drop_bindings(
    mod: tvm.IRModule, drop: Callable[[relax.VarBinding], bool]
) -> tuple[tvm.IRModule, int]:
    """``mod`` without the bindings of its Relax functions for which ``drop`` holds, and how
    many were dropped."""
    m = _DropBindings(mod, drop)
    for gv, func in _relax_functions(mod):
        new = m.visit_expr(func)
        if not new.same_as(func):
            m.builder_.update_func(gv, new)
    return m.builder_.get(), m.dropped


def drop_unused_tuples_in(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` without tuple bindings that nothing reads, and how many were dropped."""
    uses = _VarUses()
    for _, func in _relax_functions(mod):
        uses.visit_expr(func)
    return _drop_bindings(
        mod, lambda b: isinstance(b.value, relax.Tuple) and b.var not in uses.used
    )


#: A function whose killed objects of static size add up to at most this many bytes drops their
#: kills: they stay alive until it returns instead (see :func:`drop_small_kills`).
SMALL_KILL_BYTES = 4 << 20

_KILLS = ("relax.vm.kill_object", "relax.memory.kill_tensor", "relax.memory.kill_storage")


def _is_op(v: Any, *names: str) -> bool:
    return isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in names


def _is_kill(v: Any) -> bool:
    return _is_op(v, *_KILLS)


def _static_bytes(t: Any) -> int | None:
    if not isinstance(t, relax.TensorType) or not isinstance(t.shape, relax.ShapeExpr):
        return None
    n = 1
    for d in t.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        n *= int(d.value)
    dt = tvm.runtime.DataType(t.dtype)
    return n * ((dt.bits * dt.lanes + 7) // 8)


@visitor
class _KillSizes(PyExprVisitor):
    """Per killed variable, its size in bytes (``None``: symbolic or unknown)."""

    def __init__(self) -> None:
        self.size: dict[Any, int | None] = {}
        self.killed: list[Any] = []

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        v = binding.value
        if _is_op(v, "relax.vm.alloc_storage") and isinstance(v.args[0], relax.ShapeExpr):
            dims = v.args[0].values
            if all(isinstance(d, tvm.tirx.IntImm) for d in dims):
                n = 1
                for d in dims:
                    n *= int(d.value)
                self.size[binding.var] = n  # bytes (uint8 storage)
        elif _is_kill(v):
            self.killed.append(v.args[0])
        if binding.var not in self.size:
            self.size[binding.var] = _static_bytes(binding.var.ty)
        super().visit_var_binding_(binding)


def drop_small_kills_in(
    mod: tvm.IRModule, limit: int = SMALL_KILL_BYTES
) -> tuple[tvm.IRModule, int]:
    """``mod`` without the kills of functions whose killed objects are all small (see the module
    docstring), and how many kills were dropped."""
    drop: set[Any] = set()
    for _, func in _relax_functions(mod):
        sizes = _KillSizes()
        sizes.visit_expr(func)
        small = [x for x in sizes.killed if sizes.size.get(x) is not None]
        if sum(sizes.size[x] or 0 for x in small) <= limit:
            drop.update(small)
    return _drop_bindings(mod, lambda b: _is_kill(b.value) and b.value.args[0] in drop)


@tvm.transform.module_pass(opt_level=0, name="llmc.DropSmallKills")
def drop_small_kills(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The module pass form of :func:`drop_small_kills_in` (after ``KillAfterLastUse``)."""
    return drop_small_kills_in(mod)[0]


@tvm.transform.module_pass(opt_level=0, name="llmc.DropUnusedTuples")
def drop_unused_tuples(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The module pass form of :func:`drop_unused_tuples_in` (after ``KillAfterLastUse``)."""
    return drop_unused_tuples_in(mod)[0]


__all__ = [
    "SMALL_KILL_BYTES",
    "drop_small_kills",
    "drop_small_kills_in",
    "drop_unused_tuples",
    "drop_unused_tuples_in",
]
