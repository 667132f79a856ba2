"""Per-op lowering rules (one handler per IR op, table at the bottom); see :mod:`llmc.fpga.lower`."""

from __future__ import annotations

import math

from llmc.errors import UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.lower import (
    ACT,
    IDX,
    STORED,
    WGT,
    ConstLoc,
    IndexLoc,
    KvLoc,
    Lowerer,
    ParamLoc,
    View,
    broadcast,
    contiguous,
    split_rows,
)
from llmc.fpga.lower_attention import h_attention
from llmc.fpga.lower_cond import HANDLERS as COND_HANDLERS
from llmc.fpga.prune import DECODE_HANDLERS
from llmc.ir.graph import Node
from llmc.ir.types import eval_dim

FUSABLE_UNARY = {"silu": isa.F_SILU, "relu": isa.F_RELU}
SFU_UNARY = {
    "silu": isa.S_SILU,
    "relu": isa.S_RELU,
    "sigmoid": isa.S_SIGMOID,
    "tanh": isa.S_TANH,
    "exp": isa.S_EXP,
    "sqrt": isa.S_SQRT,
}
SFU_BINARY = {"add": isa.S_ADD, "mul": isa.S_MUL, "sub": isa.S_SUB, "div": isa.S_DIV}
FUSABLE_BINARY = {"add": isa.F_ADD, "mul": isa.F_MUL}

# ----------------------------------------------------------------------------------------------
# op handlers (one per IR op; table below)


def h_param(L: Lowerer, n: Node) -> None:
    L.vals[id(n.out)] = ParamLoc(L.g.params[n.attrs.name])


def h_constant(L: Lowerer, n: Node) -> None:
    L.vals[id(n.out)] = ConstLoc(float(n.attrs.value))


def h_embedding(L: Lowerer, n: Node) -> None:
    where = f"embedding %{n.out.name} at {n.scope or '?'}"
    ix = L.index(n.inputs[0], where)
    ids = ix.view
    p = L.loc(n.inputs[1]).param
    reg = L.prog.regions[f"t:{p.name}"]
    rows, d = (int(x) for x in p.type.shape)
    # the index's constant offset moves the table base: row (i + offset) is at base + i rows
    if ix.offset < 0:
        raise UnsupportedOpError(
            f"{where}: %{ix.source} - {-ix.offset} can index below row 0 of @{p.name}"
        )
    if L.index_bound(ix) > rows:
        raise UnsupportedOpError(
            f"{where}: %{ix.source} + {ix.offset} can reach row {L.index_bound(ix) - 1} of "
            f"@{p.name}, which has {rows} rows"
        )
    shape = L.shape(n.out)
    out = L.alloc_view(shape, n)
    s = math.prod(shape[:-1])
    L.emit(
        isa.LD,
        {
            "buf": ACT,
            "mode": 1,
            "hbm": reg.addr + 4 * d * ix.offset,
            "chip": out.addr,
            "n_outer": 1,
            "n_inner": s,
            "row_bytes": 4 * d,
            "hbm_si": 4 * d,
            "chip_si": d,
            "idx": ids.addr,
            "dclass": isa.D_ACT,
            **L.ch(reg),
        },
        reads=[(IDX, *ids.extent())],
        writes=[(ACT, *out.extent())],
    )
    L.bind(n.out, out)


def h_norm(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    shape = L.shape(n.out)
    temps = []
    vecs: list[View | None] = []
    for w in n.inputs[1:]:
        wl = L.loc(w)
        vv = L.load_vec(wl.param) if isinstance(wl, ParamLoc) else wl
        if isinstance(wl, ParamLoc):
            temps.append(vv)
        vecs.append(broadcast(vv, shape))
    while len(vecs) < 2:
        vecs.append(None)
    out = L.alloc_view(shape, n)
    flags = (isa.SF_NO_B if vecs[0] is None else 0) | (isa.SF_NO_C if vecs[1] is None else 0)
    func = isa.S_RMSNORM if n.op == "rms_norm" else isa.S_LAYERNORM
    L.sfu(func, shape, x, out, vecs[0], vecs[1], fparam=n.attrs.eps, flags=flags)
    for t in temps:
        L.free_temp(t)
    L.bind(n.out, out)


def _fusion(L: Lowerer, n: Node) -> tuple[int, Node | None, View | None]:
    """The epilogue a linear can absorb: its only user, if that is a fusable op."""
    us = L.users.get(n.out, [])
    if len(us) != 1 or id(n.out) in L.out_names:
        return isa.F_NONE, None, None
    u = us[0]
    if u.op in FUSABLE_UNARY:
        return FUSABLE_UNARY[u.op], u, None
    if u.op == "gelu":
        return (isa.F_GELU_TANH if u.attrs.approximate == "tanh" else isa.F_GELU), u, None
    if u.op in FUSABLE_BINARY:
        other = u.inputs[1] if u.inputs[0] is n.out else u.inputs[0]
        loc = L.vals.get(id(other))
        if isinstance(loc, View) and L.shape(other) == L.shape(u.out):
            return FUSABLE_BINARY[u.op], u, loc
    return isa.F_NONE, None, None


def h_linear(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    lin = L.prog.linears[L.g.param_of(n.inputs[1]).name]
    shape = L.shape(n.out)
    m = math.prod(shape[:-1])
    sp = split_rows(L.shape(n.inputs[0]), [x.strides])
    tmp = None
    if sp is None or sp[0] != 1 or x.strides[-1] != 1:
        x = tmp = L.contiguous_copy(x)
        sp = split_rows(x.shape, [x.strides])
    x_rs = sp[2][0][1]
    fuse, fnode, aux = _fusion(L, n)
    target = fnode if fnode is not None else n
    # A graph output nothing else reads (the logits) streams to HBM tile by tile through two
    # staging slots instead of being held on chip (a prefill chunk's logits can be 30 MB).
    stream_out = fnode is None and id(n.out) in L.out_names and not L.users.get(n.out)
    if stream_out:
        rmax = max(t.rows for t in lin.tiles)
        out = L.alloc_view((2, m, rmax))
        reg = L.prog.regions[f"out:{n.out.name}"]
    else:
        out = L.alloc_view(shape, target)
        if out.strides[-1] != 1 or split_rows(shape, [out.strides])[0] != 1:
            out = View(ACT, out.addr, shape, contiguous(shape), out.block)
    aux_rs = 0
    if aux is not None:
        asp = split_rows(shape, [aux.strides])
        if asp is None or asp[0] != 1 or aux.strides[-1] != 1:
            fuse, fnode, aux = isa.F_NONE, None, None
        else:
            aux_rs = asp[2][0][1]
    op = isa.MV if m == 1 else isa.MM
    x_ext, out_ext = (ACT, *x.extent()), (ACT, *out.extent())
    aux_ext = (ACT, *aux.extent()) if aux is not None else None
    for ti, t in enumerate(lin.tiles):
        slot = L.wslot * L.w_half
        L.wslot ^= 1
        if stream_out:
            o_addr, o_rs = out.addr + (ti % 2) * m * rmax, rmax
            out_ext = (ACT, o_addr, o_addr + m * rmax)
        else:
            o_addr, o_rs = out.addr + t.row0, lin.n
        L.emit(
            isa.LD,
            {
                "buf": WGT,
                "hbm": t.addr,
                "chip": slot,
                "n_outer": 1,
                "n_inner": 1,
                "row_bytes": t.nbytes,
                "dclass": isa.D_WEIGHT,
                **L.ch(lin.region),
            },
            writes=[(WGT, slot, slot + t.nbytes)],
        )
        f = {
            "m": m,
            "k": lin.k,
            "n": t.rows,
            "heads": 1,
            "hgroup": 1,
            "x_addr": x.addr,
            "x_rs": x_rs,
            "wbuf": WGT,
            "w_addr": slot,
            "wfmt": lin.fmt.wfmt,
            "nnz": lin.fmt.nnz,
            "group": lin.fmt.group or lin.k,
            "bias": int(lin.bias is not None),
            "o_addr": o_addr,
            "o_rs": o_rs,
            "fuse": fuse,
        }
        reads = [x_ext, (WGT, slot, slot + t.nbytes)]
        if aux is not None:
            f.update({"aux_addr": aux.addr + t.row0, "aux_rs": aux_rs})
            reads.append(aux_ext)
        L.emit(op, f, reads=reads, writes=[out_ext])
        if stream_out:
            L.emit(
                isa.ST,
                {
                    "buf": ACT,
                    "chip": o_addr,
                    "hbm": reg.addr + 4 * (L.in_row * lin.n + t.row0),
                    "n_outer": 1,
                    "n_inner": m,
                    "row_bytes": 4 * t.rows,
                    "hbm_si": 4 * lin.n,
                    "chip_si": rmax,
                    "dclass": isa.D_ACT,
                    **L.ch(reg),
                },
                reads=[out_ext],
                writes=[(isa.HBM, reg.addr, reg.addr + reg.size)],
                tag=f"output {n.out.name}",
            )
    if tmp is not None:
        L.free_temp(tmp)
    if stream_out:
        L.act.release(out.block)
        L.vals[id(n.out)] = STORED
    elif fnode is not None:
        L.skip.add(id(fnode))
        L.fused += 1
        L.bind(fnode.out, out)
        if id(fnode.out) in L.out_names:
            L.store_output(fnode.out)
        # The fused node's inputs die with it (its index in the graph is later than ours).
    else:
        L.bind(n.out, out)


def h_rope(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    where = f"rope %{n.out.name} at {n.scope or '?'}"
    ix = L.index(n.inputs[1], where)
    if ix.offset != 0:  # the cos/sin tables hold rows 0 .. max_tokens - 1 only
        raise UnsupportedOpError(f"{where}: positions offset by {ix.offset} are not supported")
    pos = ix.view
    shape = L.shape(n.out)
    hd = shape[-1]
    rd = n.attrs.rotary_dim or hd
    rt = L.prog.ropes[(n.attrs, rd)]
    key = (rt.key, id(n.inputs[1]))
    if key not in L.rope_rows:
        s = shape[2]
        rows = []
        for reg in (rt.cos, rt.sin):
            v = L.alloc_view((s, rd))
            L.emit(
                isa.LD,
                {
                    "buf": ACT,
                    "mode": 1,
                    "hbm": reg.addr,
                    "chip": v.addr,
                    "n_outer": 1,
                    "n_inner": s,
                    "row_bytes": 4 * rd,
                    "hbm_si": 4 * rd,
                    "chip_si": rd,
                    "idx": pos.addr,
                    "dclass": isa.D_ACT,
                    **L.ch(reg),
                },
                reads=[(IDX, *pos.extent())],
                writes=[(ACT, *v.extent())],
            )
            v.block.refs += 1  # held until the end of the instance
            rows.append(v)
        L.rope_rows[key] = (rows[0], rows[1])
    cos, sin = L.rope_rows[key]
    b = View(ACT, cos.addr, shape[:-1] + (rd,), (0, 0, rd, 1))
    c = View(ACT, sin.addr, shape[:-1] + (rd,), (0, 0, rd, 1))
    out = L.alloc_view(shape, n)
    flags = isa.SF_INTERLEAVED if n.attrs.interleaved else 0
    L.sfu(isa.S_ROPE, shape, x, out, b, c, ival0=rd, flags=flags)
    L.bind(n.out, out)


def h_concat(L: Lowerer, n: Node) -> None:
    first = L.loc(n.inputs[0])
    if isinstance(first, KvLoc) and len(n.inputs) == 2 and n.attrs.dim in (2, -2):
        new = L.loc(n.inputs[1])
        shape = L.shape(n.inputs[1])  # [1, heads, seq, hd]
        if shape[0] != 1 or shape[1] != first.heads or shape[3] != first.head_dim:
            raise UnsupportedOpError(
                f"concat %{n.out.name}: new rows {shape} do not match the cache"
            )
        hd = shape[3]
        sp = split_rows(shape, [new.strides, (0, first.head_stride, 4 * hd, 1)])
        if sp is None or new.strides[-1] != 1:
            new = L.contiguous_copy(new)
            sp = split_rows(shape, [new.strides, (0, first.head_stride, 4 * hd, 1)])
        no, ni, st = sp
        reg = first.region
        L.emit(
            isa.ST,
            {
                "buf": ACT,
                "chip": new.addr,
                "hbm": reg.addr + 4 * hd * L.q_off,
                "n_outer": no,
                "n_inner": ni,
                "row_bytes": 4 * hd,
                "chip_so": st[0][0],
                "chip_si": st[0][1],
                "hbm_so": st[1][0],
                "hbm_si": st[1][1],
                "relb": 4 * hd,
                "dclass": isa.D_ACT,
                **L.ch(reg),
                **({"preg": L.prog.kv_reg[reg.name]} if L.prog.kv_reg.get(reg.name) else {}),
            },
            reads=[(ACT, *new.extent())],
            writes=[(isa.HBM, reg.addr, reg.addr + reg.size)],
        )
        L.vals[id(n.out)] = KvLoc(reg, first.heads, first.length + shape[2], hd, first.max_tokens)
        return
    # On-chip concatenation: copy each part into its slot.
    shape = L.shape(n.out)
    ax = n.attrs.dim % len(shape)
    out = L.alloc_view(shape, n)
    off = 0
    for v in n.inputs:
        src = L.loc(v)
        if not isinstance(src, View):
            raise UnsupportedOpError(f"concat %{n.out.name}: operand %{v.name} is not on chip")
        part = L.shape(v)
        dst = View(ACT, out.addr + off * out.strides[ax], part, out.strides, out.block)
        L.sfu(isa.S_COPY, part, src, dst)
        off += part[ax]
    L.bind(n.out, out)


def h_index_offset(L: Lowerer, n: Node) -> bool:
    """``index +/- integer constant``: no instruction, the constant joins the IndexLoc (the
    gathers that read it fold it into their base address). False if ``n`` is not one."""
    locs = [L.vals.get(id(v)) for v in n.inputs]
    if not any(isinstance(x, IndexLoc) for x in locs):
        return False
    ix, c = locs if isinstance(locs[0], IndexLoc) else locs[::-1]
    if not (isinstance(c, ConstLoc) and float(c.value).is_integer() and not n.out.type.is_float):
        raise UnsupportedOpError(
            f"{n.op} %{n.out.name} at {n.scope or '?'}: integer values take only the add or "
            "subtraction of an integer constant on the accelerator"
        )
    k = int(c.value) if n.op == "add" else -int(c.value)
    L.bind(n.out, IndexLoc(ix.view, ix.source, ix.offset + k))
    return True


def h_elementwise(L: Lowerer, n: Node) -> None:
    shape = L.shape(n.out)
    if n.op in ("add", "sub") and h_index_offset(L, n):
        return
    if n.op in SFU_UNARY or n.op == "gelu" or n.op == "softmax":
        x = L.loc(n.inputs[0])
        out = L.alloc_view(shape, n)
        if n.op == "gelu":
            func = isa.S_GELU_TANH if n.attrs.approximate == "tanh" else isa.S_GELU
            L.sfu(func, shape, x, out)
        elif n.op == "softmax":
            if n.attrs.dim % len(shape) != len(shape) - 1:
                raise UnsupportedOpError(f"softmax %{n.out.name}: only over the last axis")
            L.sfu(isa.S_SOFTMAX, shape, x, out, fparam=1.0)
        else:
            L.sfu(SFU_UNARY[n.op], shape, x, out)
        L.bind(n.out, out)
        return
    a, ca, ta = L.operand(n.inputs[0], shape)
    b, cb, tb = L.operand(n.inputs[1], shape)
    out = L.alloc_view(shape, n)
    if a is not None and b is not None:
        L.sfu(SFU_BINARY[n.op], shape, a, out, b)
    elif a is not None and cb is not None and n.op in ("add", "sub", "mul"):
        c = -cb if n.op == "sub" else cb
        L.sfu(isa.S_MULC if n.op == "mul" else isa.S_ADDC, shape, a, out, fparam=c)
    elif b is not None and ca is not None and n.op in ("add", "mul"):
        L.sfu(isa.S_MULC if n.op == "mul" else isa.S_ADDC, shape, b, out, fparam=ca)
    elif b is not None and ca is not None and n.op == "sub":  # c - x (ffn-skip's 1 - sat)
        L.sfu(isa.S_RSUBC, shape, b, out, fparam=ca)
    else:
        raise UnsupportedOpError(
            f"{n.op} %{n.out.name} at {n.scope or '?'}: operands not supported"
        )
    for t in ta + tb:
        L.free_temp(t)
    L.bind(n.out, out)


def h_reshape(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    shape = L.shape(n.out)
    st = view_strides(x.shape, x.strides, shape)
    if st is None:
        x = L.contiguous_copy(x)
        st = contiguous(shape)
    L.bind(n.out, View(x.buf, x.addr, shape, st, x.block))


def h_permute(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    p = n.attrs.perm
    L.bind(
        n.out,
        View(x.buf, x.addr, tuple(x.shape[i] for i in p), tuple(x.strides[i] for i in p), x.block),
    )


def h_slice(L: Lowerer, n: Node) -> None:
    x = L.loc(n.inputs[0])
    a = n.attrs
    ax = a.dim % len(x.shape)
    size = x.shape[ax]
    start = eval_dim(a.start, L.env) if not isinstance(a.start, int) else a.start
    if start < 0:
        start += size
    shape = L.shape(n.out)
    st = list(x.strides)
    addr = x.addr + start * x.strides[ax]
    st[ax] = x.strides[ax] * a.step
    L.bind(n.out, View(x.buf, addr, shape, tuple(st), x.block))


def h_cast(L: Lowerer, n: Node) -> None:
    src = L.vals.get(id(n.inputs[0]))
    if isinstance(src, IndexLoc) and n.attrs.dtype in ("i32", "i64"):  # IDX words are int32
        L.bind(n.out, src)
        return
    floats = ("f32", "f16", "bf16")
    if n.inputs[0].type.dtype in (*floats, "bool") and n.attrs.dtype in floats:
        # bools live in ACT as 1.0 / 0.0; every float activation is float32 in the functional
        # model (act_bytes wide in the cycle model), so a float cast moves nothing
        L.bind(n.out, L.loc(n.inputs[0]))
        return
    if n.attrs.dtype != n.inputs[0].type.dtype:
        raise UnsupportedOpError(
            f"cast %{n.out.name} at {n.scope or '?'}: {n.inputs[0].type.dtype} -> "
            f"{n.attrs.dtype} has no FlightLLM lowering (activations are float32 in the model)"
        )
    L.bind(n.out, L.loc(n.inputs[0]))


def view_strides(
    old: tuple[int, ...], ost: tuple[int, ...], new: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Strides of ``new`` viewing the same elements as (``old``, ``ost``), or None (torch's
    ``view`` rule: split and merge only dims that are contiguous with each other)."""
    if math.prod(old) == 0:
        return contiguous(new)
    o = [(n, s) for n, s in zip(old, ost) if n != 1]
    res: list[int] = []
    i = 0
    ni = [n for n in new]
    j = 0
    while j < len(ni):
        if ni[j] == 1:
            res.append(0)
            j += 1
            continue
        if i >= len(o):
            return None
        # gather a chunk of old dims that is contiguous and whose product matches new dims
        size, stride = o[i]
        chunk = [o[i]]
        acc_new = [j]
        prod_new = ni[j]
        prod_old = size
        while prod_old != prod_new:
            if prod_old < prod_new:
                i += 1
                if i >= len(o) or chunk[-1][1] != o[i][0] * o[i][1]:
                    return None
                chunk.append(o[i])
                prod_old *= o[i][0]
            else:
                j += 1
                if j >= len(ni):
                    return None
                acc_new.append(j)
                prod_new *= ni[j]
        # strides for new dims acc_new within the chunk (innermost stride = last old stride)
        inner = chunk[-1][1]
        sts = []
        for jj in reversed(acc_new):
            sts.append(inner)
            inner *= ni[jj]
        res.extend(reversed(sts))
        i += 1
        j += 1
    if i != len(o):
        return None
    return tuple(res)


def h_moe(L: Lowerer, n: Node) -> None:
    raise UnsupportedOpError(
        f"moe %{n.out.name} at {n.scope or '?'}: mixture-of-experts routing (a data-dependent "
        "choice of expert weights per token) is not supported by the FlightLLM instruction set"
    )


HANDLERS = {
    "param": h_param,
    "moe": h_moe,
    "constant": h_constant,
    "embedding": h_embedding,
    "rms_norm": h_norm,
    "layer_norm": h_norm,
    "linear": h_linear,
    "rope": h_rope,
    "concat": h_concat,
    "attention": h_attention,
    "reshape": h_reshape,
    "permute": h_permute,
    "slice": h_slice,
    "cast": h_cast,
    **{k: h_elementwise for k in (*SFU_UNARY, "gelu", "softmax", *SFU_BINARY)},
    **COND_HANDLERS,
}
HANDLERS.update(DECODE_HANDLERS)  # token pruning in decode steps (llmc.fpga.prune)
