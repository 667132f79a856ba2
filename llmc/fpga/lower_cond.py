"""Lowering FFN-skip (``llmc/passes/ffn_skip.py``): the saturation test on chip and ``cond`` as a
predicated forward branch.

The test is ordinary IR computed on the SFU: the eligibility ``positions >= decode_start +
warmup`` (the integer inputs are read again from HBM by an int -> float load, ``LD`` mode
``M_I2F``, and compared as floats, exact below 2^24), the cosine of the residual stream before and
after the FFN block (``SUM`` row reductions, ``SQRT``, ``MAXC``, ``DIV``), the threshold
(``GTC``), and the mask algebra (``SELECT``: ``where`` on bools, which live in ``ACT`` as 1.0 /
0.0). The skip predicate "every row is saturated" is ``lt(reduce_max(1 - sat), 0.5)``
(``RSUBC``, a ``MAX`` reduction, ``LTC``): one word in ``ACT``.

``cond(pred, *args)`` one of whose branches returns one of ``args`` unchanged (ffn-skip's
then-branch; the other branch is the *body*) becomes::

    SFU copy   arg -> out          the identity branch's result, in the cond's output view
    BR         pred, skip = n      pred != 0 (``neg``: pred == 0): skip the next n instructions
      ...                          the body, lowered inline; its result is placed in out
    SYNC                           the branch target (end = 0)

``BR`` and ``SYNC`` both drain every unit and no dependency token crosses them
(:func:`llmc.fpga.isa.insert_dependencies`), so a skipped body leaves no token behind; the cycle
model charges a body only when a run executes it (:func:`llmc.fpga.perf.simulate_stream`,
``taken``). State the body sets up for later instructions (RoPE rows) is forgotten after it.
"""

from __future__ import annotations

from llmc.errors import UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.lower import ACT, ConstLoc, IndexLoc, Lowerer, View, broadcast, contiguous
from llmc.ir.graph import Node

COMPARE = {"gt": isa.S_GT, "ge": isa.S_GE, "lt": isa.S_LT, "le": isa.S_LE}
COMPARE_C = {"gt": isa.S_GTC, "ge": isa.S_GEC, "lt": isa.S_LTC, "le": isa.S_LEC}
FLIP = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}  # c <op> x  ==  x <flip> c


def index_as_float(L: Lowerer, ix: IndexLoc) -> View:
    """An integer input (plus its constant offset) as float32 in ACT: ``LD`` mode ``M_I2F`` from
    the input's HBM words (this instance's rows), then ``ADDC`` of the offset."""
    shape = ix.view.shape
    n = 1
    for d in shape:
        n *= d
    reg = L.prog.regions[f"in:{ix.source}"]
    out = L.alloc_view(shape)
    L.emit(
        isa.LD,
        {
            "buf": ACT,
            "mode": isa.M_I2F,
            "hbm": reg.addr + (4 * L.in_row if shape else 0),
            "chip": out.addr,
            "n_outer": 1,
            "n_inner": 1,
            "row_bytes": 4 * n,
            "dclass": isa.D_INDEX,
            **L.ch(reg),
        },
        reads=[(isa.HBM, reg.addr, reg.addr + reg.size)],
        writes=[(ACT, *out.extent())],
    )
    if ix.offset:
        L.sfu(isa.S_ADDC, shape or (1,), _vec(out), _vec(out), fparam=float(ix.offset))
    return out


def _vec(v: View) -> View:
    """A scalar view as one element (the SFU works on rows of ``len`` elements)."""
    return v if v.shape else View(v.buf, v.addr, (1,), (1,), v.block)


def _operand(
    L: Lowerer, n: Node, i: int, shape: tuple[int, ...], temps: list[View]
) -> tuple[View | None, float]:
    """Input ``i`` of ``n`` broadcast to ``shape``, or a constant; an integer input is converted
    into a temporary (appended to ``temps``, freed by the caller after the op)."""
    loc = L.loc(n.inputs[i])
    if isinstance(loc, ConstLoc):
        return None, loc.value
    if isinstance(loc, IndexLoc):
        loc = index_as_float(L, loc)
        temps.append(loc)
    if not isinstance(loc, View):
        raise UnsupportedOpError(f"{n.op} %{n.out.name}: operand %{n.inputs[i].name} not on chip")
    return broadcast(loc, shape) if loc.shape != shape else loc, 0.0


def _sfu(L: Lowerer, func: int, shape: tuple[int, ...], a: View, out: View, **kw) -> None:
    if not shape:  # scalars: one element
        a, out = _vec(a), _vec(out)
        kw = {k: (_vec(v) if isinstance(v, View) else v) for k, v in kw.items()}
        shape = (1,)
    if shape[-1] > 1 and a.strides[-1] == 0:  # a per-row mask broadcast along the row
        kw["flags"] = kw.get("flags", 0) | isa.SF_ROW_A
        a = View(a.buf, a.addr, a.shape, (*a.strides[:-1], 1), a.block)
    L.sfu(func, shape, a, out, **kw)


def h_compare(L: Lowerer, n: Node) -> None:
    shape = L.shape(n.out)
    temps: list[View] = []
    a, ca = _operand(L, n, 0, shape, temps)
    b, cb = _operand(L, n, 1, shape, temps)
    out = L.alloc_view(shape, n)
    if a is not None and b is not None:
        if shape and b.strides[-1] == 0 and a.strides[-1] != 0:  # the broadcast one goes in a
            _sfu(L, COMPARE[FLIP[n.op]], shape, b, out, b=a)
        else:
            _sfu(L, COMPARE[n.op], shape, a, out, b=b)
    elif a is not None:
        _sfu(L, COMPARE_C[n.op], shape, a, out, fparam=cb)
    elif b is not None:
        _sfu(L, COMPARE_C[FLIP[n.op]], shape, b, out, fparam=ca)
    else:
        raise UnsupportedOpError(f"{n.op} %{n.out.name} at {n.scope or '?'}: two constants")
    for t in temps:
        L.free_temp(t)
    L.bind(n.out, out)


def h_where(L: Lowerer, n: Node) -> None:
    shape = L.shape(n.out)
    temps: list[View] = []
    ops = [_operand(L, n, i, shape, temps) for i in range(3)]
    if any(v is None for v, _ in ops):
        raise UnsupportedOpError(
            f"where %{n.out.name} at {n.scope or '?'}: constant operands have no lowering"
        )
    out = L.alloc_view(shape, n)
    _sfu(L, isa.S_SELECT, shape, ops[0][0], out, b=ops[1][0], c=ops[2][0])
    for t in temps:
        L.free_temp(t)
    L.bind(n.out, out)


def h_maximum(L: Lowerer, n: Node) -> None:
    shape = L.shape(n.out)
    temps: list[View] = []
    (a, ca), (b, cb) = _operand(L, n, 0, shape, temps), _operand(L, n, 1, shape, temps)
    if (a is None) == (b is None) or temps:
        raise UnsupportedOpError(
            f"maximum %{n.out.name} at {n.scope or '?'}: only max(tensor, constant) is lowered"
        )
    out = L.alloc_view(shape, n)
    _sfu(L, isa.S_MAXC, shape, a if a is not None else b, out, fparam=cb if a is not None else ca)
    L.bind(n.out, out)


def h_reduce(L: Lowerer, n: Node) -> None:
    """``reduce_sum``/``reduce_max`` over the last axis, or over every axis of a tensor."""
    x = L.loc(n.inputs[0])
    ishape = L.shape(n.inputs[0])
    rank = len(ishape)
    dims = sorted(d % rank for d in n.attrs.dims)
    func = isa.S_SUM if n.op == "reduce_sum" else isa.S_MAX
    shape = L.shape(n.out)
    out = L.alloc_view(shape, n)
    if dims == list(range(rank)):  # everything: one row of numel elements
        tmp = L.contiguous_copy(x) if x.strides != contiguous(ishape) else None
        src = tmp or x
        total = 1
        for d in ishape:
            total *= d
        L.sfu(func, (1, total), View(ACT, src.addr, (1, total), (total, 1)), _flat1(out))
        if tmp is not None:
            L.free_temp(tmp)
    elif dims == [rank - 1]:
        rows = ishape[:-1]  # one word per row (the last stride only satisfies the row split)
        o = View(ACT, out.addr, ishape, (*contiguous(rows), 1), out.block)
        L.sfu(func, ishape, x, o)
    else:
        raise UnsupportedOpError(
            f"{n.op} %{n.out.name} at {n.scope or '?'}: only the last axis or every axis is "
            "reduced on the accelerator"
        )
    L.bind(n.out, out)


def _flat1(v: View) -> View:
    return View(ACT, v.addr, (1, 1), (1, 1), v.block)


def h_cond(L: Lowerer, n: Node) -> None:
    """FFN-skip's ``cond`` as a predicated forward branch (see the module docstring)."""
    where = f"cond %{n.out.name} at {n.scope or '?'}"
    sides = (n.attrs.then_branch, n.attrs.else_branch)
    ident = [_identity(r) for r in sides]
    if ident[0] is None and ident[1] is None:
        raise UnsupportedOpError(
            f"{where}: neither branch returns one of its operands unchanged; the accelerator "
            "lowers a cond whose skipped side is the identity (ffn-skip's form)"
        )
    neg = int(ident[0] is None)  # the then-branch runs: branch over it when pred is false
    keep_arg = ident[neg]
    body = sides[1 - neg]
    pred = L.loc(n.inputs[0])
    src = L.loc(n.inputs[1 + keep_arg])
    if not isinstance(pred, View) or not isinstance(src, View):
        raise UnsupportedOpError(f"{where}: the predicate and operands must be on chip")
    shape = L.shape(n.out)
    out = L.alloc_view(shape)
    out.block.refs += 1  # held across the body (a value inside may alias it via place)
    L.sfu(isa.S_COPY, shape, src, out)
    br = L.emit(
        isa.BR,
        {"addr": pred.addr, "skip": 0, "neg": neg},
        reads=[(ACT, pred.addr, pred.addr + 1)],
    )
    start = len(L.instrs)
    mask = L.vals.get(id(n.inputs[1]))
    if n.inputs[1].type.dtype == "bool" and isinstance(mask, View) and len(mask.shape) >= 2:
        # ffn-skip's per-row decisions ([batch, seq, 1]): where the simulator counts skips
        L.probes[start - 1] = (mask.addr, mask.strides[1], mask.shape[1])
    rope_rows = dict(L.rope_rows)
    for v, arg in zip(body.inputs, n.inputs[1:], strict=True):
        L.bind(v, L.loc(arg))
    result = body.outputs[0]
    if result.node is not None:
        L.place[id(result.node)] = out
    L.lower_nodes(body.nodes, keep=(result, *body.inputs))
    got = L.loc(result)
    if not (isinstance(got, View) and got.addr == out.addr and got.strides == out.strides):
        L.sfu(isa.S_COPY, shape, got, out)
    L.place.clear()
    for v in {id(v): v for v in (result, *body.inputs)}.values():
        L.drop(v)
    L.emit(isa.SYNC, {"end": 0}, tag=n.scope or "cond")
    br.f["skip"] = len(L.instrs) - start - 1  # lands on the SYNC
    L.rope_rows = rope_rows
    L.bind(n.out, out)
    out.block.refs -= 1


def _identity(region) -> int | None:
    """The operand a region returns unchanged (its only nodes are params), else None."""
    res = region.outputs[0]
    if any(m.op != "param" for m in region.nodes):
        return None
    got = [i for i, v in enumerate(region.inputs) if v is res]
    return got[0] if got else None


HANDLERS = {
    "cond": h_cond,
    "where": h_where,
    "maximum": h_maximum,
    "reduce_sum": h_reduce,
    "reduce_max": h_reduce,
    **{k: h_compare for k in COMPARE},
}
