"""IR -> instruction stream for one length bucket.

One *instance* is the graph evaluated for ``seq`` new tokens after ``past`` cached ones. A decode
stream (bucket ``T``: the step's attention sees at most ``T`` tokens) is one instance with
``seq = 1`` whose cache offset comes from the runtime register ``R_POS``, so every position of
the bucket runs the same instructions (attention covers ``T`` keys, the mask hides those past
``R_POS``). A prefill *chunk* stream ``c`` is one instance of
``C = prefill_bucket`` tokens (prompt positions ``[cC, (c+1)C)``) attending to ``(c + 1) C`` keys;
a prompt of ``L`` tokens runs chunks ``0 .. ceil(L/C) - 1`` in order, so the chunk streams are
shared by every prompt length (prompts start from an empty cache, ``R_POS = 0``; the padding
rows of the last chunk compute garbage that the causal mask keeps away from real tokens).

How IR values live on chip: every activation is a strided *view* of the ``ACT`` buffer
(``reshape``/``permute``/``slice`` move no data; a value whose only user is a ``permute`` is
allocated in the permuted order, so attention writes its output straight into the layout the
output projection reads). Token ids and positions sit in ``IDX``. A ``concat`` of a cache input
with new keys/values stores the new rows into the cache region in HBM (at ``R_POS``); attention
loads K/V in ``mask_block`` blocks into the double-buffered ``KV`` buffer. A ``linear`` streams
its weight tiles through the double-buffered ``WGT`` buffer and absorbs the op that follows it
when that op is its only user (SiLU/GELU/ReLU, or add/mul with an operand already on chip):
SwiGLU's SiLU goes into the gate projection, the product into the up projection, residual adds
into the output and down projections. Every value is freed after its last use (first-fit
allocation); the peak is checked against ``buffers.act_kb``.

Integer values (token ids, positions) live in ``IDX`` as an :class:`IndexLoc`, and only gathers
read them: ``embedding`` (a table row per index) and ``rope`` (a cos/sin row per position).
Adding an integer constant to one (OPT's ``positions + 2``) emits nothing: the constant rides
along in the ``IndexLoc`` and the gather folds it into its table base address. Any other use of
an integer value (arithmetic on the SFU, a linear, a reshape) has no lowering and is refused
before a stream is built; see ``INDEX_USES``.

A ``cond`` (ffn-skip) is lowered inline as a predicated forward branch over its non-identity
region (:mod:`llmc.fpga.lower_cond`, through :meth:`Lowerer.lower_nodes`); the integer inputs it
compares are loaded again from HBM as floats.

Structure is read from the IR only: ops and their attributes, shapes, param storage formats,
scopes (instruction tags, for per-layer reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmc.errors import UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.arch import ArchError
from llmc.fpga.isa import Instr
from llmc.ir.graph import Node, Value
from llmc.ir.types import eval_dim

ACT, IDX, WGT, KVB = isa.B_ACT, isa.B_IDX, isa.B_WGT, isa.B_KV


@dataclass
class Stream:
    """The instructions of one bucket and what running them needs on chip."""

    stage: str  # prefill | decode
    bucket: int
    instrs: list[Instr]
    act_peak: int  # ACT elements
    idx_peak: int
    chunks: int
    fused: int = 0  # nodes absorbed into a linear
    #: BR index -> (ACT address, row stride, rows) of its cond's per-row decision mask (ffn-skip's
    #: saturated rows): bookkeeping for the simulator's skip counts, not encoded
    probes: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.instrs) * isa.INSTR_BYTES

    def encode(self) -> bytes:
        return isa.encode_stream(self.instrs)


# ----------------------------------------------------------------------------------------------
# locations


class Block:
    """An ACT allocation, shared by the views that alias it."""

    __slots__ = ("addr", "size", "refs")

    def __init__(self, addr: int, size: int) -> None:
        self.addr, self.size, self.refs = addr, size, 0


@dataclass
class View:
    buf: int
    addr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    block: Block | None = None

    def extent(self) -> tuple[int, int]:
        ext = self.__dict__.get("_ext")
        if ext is None:
            end = self.addr + 1
            for n, s in zip(self.shape, self.strides):
                end += (n - 1) * s
            ext = self.__dict__["_ext"] = (self.addr, end)
        return ext


@dataclass
class KvLoc:
    """A KV cache region in HBM viewed as ``[1, heads, length, head_dim]``."""

    region: Any
    heads: int
    length: int
    head_dim: int
    max_tokens: int

    @property
    def head_stride(self) -> int:  # bytes
        return self.max_tokens * self.head_dim * 4


STORED = object()  # a graph output the producing instruction already wrote to HBM


@dataclass(frozen=True)
class IndexLoc:
    """An integer tensor in ``IDX`` (its ``view``) plus ``offset``, a constant added to every
    element that no instruction has applied yet; ``source`` is the graph input it comes from."""

    view: View
    source: str
    offset: int = 0


# The ops that may read an integer (IndexLoc) value, and at which input: gathers, and the
# integer add/sub of a constant that they absorb (see the module docstring).
INDEX_USES = {
    "embedding": (0,),
    "rope": (1,),
    "add": (0, 1),
    "sub": (0,),
    "cast": (0,),
    # compared on the SFU after an int -> float load (FFN-skip's eligibility, lower_cond.py)
    **{c: (0, 1) for c in ("gt", "ge", "lt", "le")},
}
# token pruning (llmc.fpga.prune): positions are scored, masked and gathered with the rows
INDEX_USES.update({"token_scores": (2,), "keep_rows": (1,), "gather_rows": (0,)})


@dataclass
class ParamLoc:
    param: Any


@dataclass
class ConstLoc:
    value: float


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= n
    return tuple(reversed(st))


def split_rows(
    shape: tuple[int, ...], strides: list[tuple[int, ...]]
) -> tuple[int, int, list[tuple[int, int]]] | None:
    """Describe the leading dims of ``shape`` (all but the last) as ``outer x inner`` rows for
    every operand at once: size-1 dims drop, neighbours merge where they merge in all operands.
    Returns ``(n_outer, n_inner, [(outer_stride, inner_stride), ...])`` or None (> 2 levels)."""
    dims = [i for i, n in enumerate(shape[:-1]) if n != 1]
    groups: list[list[Any]] = []  # [size, [stride per operand]]
    for i in dims:
        n = shape[i]
        st = [s[i] for s in strides]
        if groups and all(g == n * x for g, x in zip(groups[-1][1], st)):
            groups[-1][0] *= n
            groups[-1][1] = st
        else:
            groups.append([n, st])
    if len(groups) > 2:
        return None
    while len(groups) < 2:
        groups.insert(0, [1, [0] * len(strides)])
    (no, so), (ni, si) = groups
    return no, ni, list(zip(so, si))


# ----------------------------------------------------------------------------------------------
# the lowering


class _Allocator:
    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (addr, size), sorted
        self.top = 0
        self.peak = 0
        self.used = 0

    def alloc(self, size: int) -> Block:
        size = max(16, -(-size // 16) * 16)
        for i, (a, s) in enumerate(self.free):
            if s >= size:
                if s == size:
                    self.free.pop(i)
                else:
                    self.free[i] = (a + size, s - size)
                self.used += size
                return Block(a, size)
        a = self.top
        self.top += size
        self.peak = max(self.peak, self.top)
        self.used += size
        return Block(a, size)

    def release(self, b: Block) -> None:
        self.used -= b.size
        self.free.append((b.addr, b.size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for a, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((a, s))
        if merged and merged[-1][0] + merged[-1][1] == self.top:
            self.top = merged[-1][0]
            merged.pop()
        self.free = merged


class Lowerer:
    def __init__(self, prog: Any) -> None:
        self.prog = prog
        self.arch = prog.arch
        self.g = prog.graph
        self.instrs: list[Instr] = []
        self.act = _Allocator()
        self.idx = _Allocator()
        self.wslot = 0
        self.kvslot = 0
        a = self.arch
        self.w_half = int(a.buffers.weight_kb * 1024) // 2
        self.kv_half = int(a.buffers.kv_kb * 1024 / a.act_bytes) // 2
        self.act_cap = int(a.buffers.act_kb * 1024 / a.act_bytes)
        self.users = prog.users()
        self.fused = 0
        self.act_peak = self.idx_peak = 0
        self.out_names = {id(v) for v in self.g.outputs}
        self.place: dict[int, View] = {}
        self.skip: set[int] = set()
        self.probes: dict[int, tuple[int, int, int]] = {}
        # token pruning (llmc.fpga.prune): the segment a prefill stream runs, values stored to
        # scratch regions instead of output regions, attention nodes that also score tokens
        self.seg: Any = None
        self.out_regions: dict[int, Any] = {}
        self.score_hooks: dict[int, Any] = {}

    # -- emission helpers -----------------------------------------------------------------------
    def emit(self, op: int, f: dict[str, int], reads=(), writes=(), tag: str = "") -> Instr:
        ins = Instr(op, f, reads, writes, tag or self.tag)
        self.instrs.append(ins)
        return ins

    def ch(self, region: Any) -> dict[str, int]:
        if region.mem == "ddr":
            return {"channel": isa.CH_DDR, "nch": 1}
        return {"channel": 0, "nch": self.arch.hbm.channels}

    def alloc_view(self, shape: tuple[int, ...], node: Node | None = None) -> View:
        """A fresh contiguous ACT tensor; in the permuted order when ``node``'s only user is a
        ``permute`` (so the permute is free)."""
        if node is not None and id(node) in self.place:
            placed = self.place.pop(id(node))
            if placed.shape == shape:
                return placed
        n = math.prod(shape)
        blk = self.act.alloc(n)
        if self.act.peak > self.act_cap:
            self._act_overflow()
        us = self.users.get(node.out, []) if node is not None else []
        if node is not None and len(us) == 1 and us[0].op == "permute":
            perm = us[0].attrs.perm
            pshape = tuple(shape[p] for p in perm)
            pst = contiguous(pshape)
            st = [0] * len(shape)
            for i, p in enumerate(perm):
                st[p] = pst[i]
            return View(ACT, blk.addr, shape, tuple(st), blk)
        return View(ACT, blk.addr, shape, contiguous(shape), blk)

    def _act_overflow(self) -> None:
        a = self.arch
        need = self.act.peak * a.act_bytes / 1024
        raise ArchError(
            f"{a.name}: field 'buffers.act_kb' = {a.buffers.act_kb:g} is too small: "
            f"{self.stage} bucket {self.bucket} needs {need:.0f} KiB of activations on chip "
            f"(at {self.tag or 'the start'}, {a.act_bytes}-byte elements)"
        )

    # -- streams --------------------------------------------------------------------------------
    def run(self, stage: str, bucket: int, deps: bool = True) -> Stream:
        """``prefill``: ``bucket`` is the chunk index c (tokens [cC, (c+1)C)); ``decode``: the
        step's attention length bucket T."""
        self.stage, self.bucket, self.tag = stage, bucket, ""
        a = self.arch
        if stage == "prefill":
            c = a.prefill_bucket
            self.instance(seq=c, past=bucket * c, q_off=bucket * c, in_row=bucket * c)
        elif stage == "decode":
            self.instance(seq=1, past=bucket - 1, q_off=0, in_row=0)
        else:
            raise ValueError(stage)
        self.emit(isa.SYNC, {"end": 1}, tag="end")
        if deps:
            isa.insert_dependencies(self.instrs)
        return Stream(
            stage, bucket, self.instrs, self.act_peak, self.idx_peak, 1, self.fused, self.probes
        )

    def instance(self, seq: int, past: int, q_off: int, in_row: int) -> None:
        self.env = {"batch": 1, "seq": seq, "past": past}
        plan = getattr(self.prog, "prune", None)
        if plan is not None:  # per-layer cache lengths and kept-row symbols
            self.env.update(plan.env(seq, past))
        for v in self.prog.cache_inputs.values():  # LM ABI v2 (past_i) with nothing pruned
            for s in getattr(v.type.shape[2], "symbols", ()):
                self.env.setdefault(s, past)
        seg = self.seg
        self.seq, self.q_off, self.in_row = seq, q_off, in_row
        self.keys = past + seq
        self._shapes: dict[int, tuple[int, ...]] = {}
        self.act = _Allocator()
        self.idx = _Allocator()
        self.vals: dict[int, Any] = {}
        self.rope_rows: dict[tuple[Any, int], tuple[View, View]] = {}
        self.skip: set[int] = set()
        self.place: dict[int, View] = {}  # node id -> the view its result must take (cond)
        for v in self.g.inputs:
            if seg is not None and not seg.reads_input(v):
                continue
            self.vals[id(v)] = self.input_loc(v)
        if seg is not None:
            seg.enter(self)
        self.lower_nodes(self.g.nodes, top=True)
        for v in list(self.g.inputs):
            self.drop(v)
        for v in self.g.outputs:
            self.drop(v)
        self.act_peak = max(self.act_peak, self.act.peak)
        self.idx_peak = max(self.idx_peak, self.idx.peak)

    def lower_nodes(
        self, nodes: list[Node], keep: tuple[Value, ...] = (), top: bool = False
    ) -> None:
        """Lower ``nodes`` in order, dropping each value after its last use among them (values
        in ``keep``, a region's result, stay bound for the caller); ``top``: the graph's own
        nodes (a token-pruning segment runs only its part of them)."""
        seg = self.seg if top else None
        last: dict[int, int] = {}
        for i, n in enumerate(nodes):
            for v in n.inputs:
                last[id(v)] = i
        kept = {id(v) for v in keep}
        for i, n in enumerate(nodes):
            if seg is not None and not seg.runs(i, n):
                continue
            if id(n) not in self.skip:  # (skipped: absorbed into a linear already emitted)
                self.tag = n.scope or n.op
                handler = _handlers().get(n.op)
                if handler is None:
                    raise UnsupportedOpError(
                        f"op '{n.op}' (%{n.out.name} at {n.scope or '?'}) has no FlightLLM "
                        f"lowering; supported: {', '.join(sorted(_handlers()))}"
                    )
                self._check_index_uses(n)
                handler(self, n)
                if id(n.out) in self.out_names:
                    self.store_output(n.out)
            for v in n.inputs:
                if last.get(id(v)) == i and id(v) not in kept:
                    self.drop(v)
            if id(n.out) not in last and id(n.out) not in kept:
                self.drop(n.out)

    def _check_index_uses(self, n: Node) -> None:
        ok = INDEX_USES.get(n.op, ())
        for i, v in enumerate(n.inputs):
            if i not in ok and isinstance(self.vals.get(id(v)), IndexLoc):
                raise UnsupportedOpError(
                    f"{n.op} %{n.out.name} at {n.scope or '?'} reads the integer value %{v.name} "
                    f"(from input %{self.vals[id(v)].source}); on the accelerator integers only "
                    "index embedding and rope tables, plus an integer constant offset"
                )

    def drop(self, v: Value) -> None:
        loc = self.vals.pop(id(v), None)
        if isinstance(loc, IndexLoc):
            loc = loc.view
        if isinstance(loc, View) and loc.block is not None:
            loc.block.refs -= 1
            if loc.block.refs <= 0:
                (self.act if loc.buf == ACT else self.idx).release(loc.block)

    def bind(self, v: Value, loc: Any) -> None:
        view = loc.view if isinstance(loc, IndexLoc) else loc
        if isinstance(view, View) and view.block is not None:
            view.block.refs += 1
        self.vals[id(v)] = loc

    def index(self, v: Value, what: str) -> IndexLoc:
        """The integer value ``v`` (``what`` names its use, for the error)."""
        loc = self.loc(v)
        if not isinstance(loc, IndexLoc):
            raise UnsupportedOpError(
                f"{what}: the index %{v.name} is not an integer graph input (ids or positions) "
                "on the accelerator"
            )
        return loc

    def index_bound(self, ix: IndexLoc) -> int:
        """One past the largest value ``ix`` can hold for a request the runner accepts
        (:meth:`llmc.runtime.lm.LanguageModel.check_indices` refuses the rest)."""
        meta = self.g.meta
        if ix.source == "input_ids" and meta.get("vocab_size"):
            limit = int(meta["vocab_size"])
        else:  # positions: the device holds max_tokens; a learned table may allow fewer
            limit = self.arch.max_tokens
            if meta.get("position_embedding") == "learned" and meta.get("max_position_embeddings"):
                limit = min(limit, int(meta["max_position_embeddings"]))
        return limit + ix.offset

    def loc(self, v: Value) -> Any:
        try:
            return self.vals[id(v)]
        except KeyError:
            raise UnsupportedOpError(
                f"value %{v.name} is not available on the accelerator"
            ) from None

    def shape(self, v: Value) -> tuple[int, ...]:
        key = id(v.type)
        got = self._shapes.get(key)
        if got is None:
            got = self._shapes[key] = tuple(
                d if isinstance(d, int) else eval_dim(d, self.env) for d in v.type.shape
            )
        return got

    def input_loc(self, v: Value) -> Any:
        p = self.prog
        if v.name in p.int_inputs:
            s = self.shape(v)
            if s and s[0] != 1:
                raise UnsupportedOpError(f"input %{v.name}: batch must be 1, got {s}")
            n = s[1] if s else 1  # a scalar (decode_start) is one word at the region's start
            blk = self.idx.alloc(n)
            reg = p.regions[f"in:{v.name}"]
            view = View(IDX, blk.addr, s, contiguous(s), blk)
            self.emit(
                isa.LD,
                {
                    "buf": IDX,
                    "hbm": reg.addr + (4 * self.in_row if s else 0),
                    "chip": blk.addr,
                    "n_outer": 1,
                    "n_inner": 1,
                    "row_bytes": 4 * n,
                    "dclass": isa.D_INDEX,
                    **self.ch(reg),
                },
                reads=[(isa.HBM, reg.addr, reg.addr + reg.size)],
                writes=[(IDX, blk.addr, blk.addr + n)],
                tag=f"input {v.name}",
            )
            return IndexLoc(self._bound(view), v.name)
        if v.name in p.cache_inputs:
            reg = p.regions[f"kv:{v.name}"]
            _, h, past, d = self.shape(v)
            return KvLoc(reg, h, past, d, self.arch.max_tokens)
        raise UnsupportedOpError(f"graph input %{v.name} is not supported")

    def _bound(self, view: View) -> View:
        if view.block is not None:
            view.block.refs += 1
        return view

    # -- common building blocks -----------------------------------------------------------------
    def load_vec(self, p: Any) -> View:
        reg = self.prog.regions[f"v:{p.name}"]
        d = int(p.type.shape[0])
        v = self.alloc_view((d,))
        self.emit(
            isa.LD,
            {
                "buf": ACT,
                "hbm": reg.addr,
                "chip": v.addr,
                "n_outer": 1,
                "n_inner": 1,
                "row_bytes": 4 * d,
                "dclass": isa.D_ACT,
                **self.ch(reg),
            },
            writes=[(ACT, v.addr, v.addr + d)],
        )
        return v

    def operand(self, v: Value, shape: tuple[int, ...]) -> tuple[View | None, float | None, list]:
        """An elementwise operand broadcast to ``shape``: (view, None, temps) or (None, const)."""
        loc = self.loc(v)
        if isinstance(loc, ConstLoc):
            return None, loc.value, []
        temps = []
        if isinstance(loc, ParamLoc):
            loc = self.load_vec(loc.param)
            temps.append(loc)
        if not isinstance(loc, View):
            raise UnsupportedOpError(f"%{v.name} cannot be an elementwise operand on chip")
        return broadcast(loc, shape), None, temps

    def free_temp(self, v: View) -> None:
        if v.block is not None and v.block.refs <= 0:
            self.act.release(v.block)

    def sfu(
        self,
        func: int,
        shape: tuple[int, ...],
        a: View,
        out: View,
        b: View | None = None,
        c: View | None = None,
        fparam: float = 0.0,
        ival0: int = 0,
        ival1: int = 0,
        flags: int = 0,
    ) -> None:
        ops = [a, out] + [x for x in (b, c) if x is not None]
        sp = split_rows(shape, [x.strides for x in ops])
        if sp is None or any(x.strides[-1] != 1 and shape[-1] > 1 for x in ops):
            # Not expressible as two levels of rows: run it per slice of the leading dim.
            for i in range(shape[0]):
                sub = [_index0(x, i) for x in (a, out, b, c)]
                self.sfu(
                    func, shape[1:], sub[0], sub[1], sub[2], sub[3], fparam, ival0, ival1, flags
                )
            return
        no, ni, st = sp
        f = {
            "func": func,
            "n_outer": no,
            "n_inner": ni,
            "len": shape[-1],
            "a_addr": a.addr,
            "a_so": st[0][0],
            "a_si": st[0][1],
            "o_addr": out.addr,
            "o_so": st[1][0],
            "o_si": st[1][1],
            "fparam": isa.f32_bits(fparam),
            "ival0": ival0,
            "ival1": ival1,
            "flags": flags,
        }
        k = 2
        for name, x in (("b", b), ("c", c)):
            if x is not None:
                f.update({f"{name}_addr": x.addr, f"{name}_so": st[k][0], f"{name}_si": st[k][1]})
                k += 1
        reads = [(ACT, *x.extent()) for x in (a, b, c) if x is not None]
        self.emit(isa.SFU, f, reads=reads, writes=[(ACT, *out.extent())])

    def contiguous_copy(self, v: View) -> View:
        out = self.alloc_view(v.shape)
        self.sfu(isa.S_COPY, v.shape, v, out)
        return out

    def store_output(self, v: Value) -> None:
        loc = self.vals.get(id(v))
        if isinstance(loc, KvLoc) or loc is None or loc is STORED:
            return
        if not isinstance(loc, View):
            raise UnsupportedOpError(f"output %{v.name} is not computed on the accelerator")
        reg = self.out_regions.get(id(v)) or self.prog.regions[f"out:{v.name}"]
        shape = loc.shape
        row = math.prod(shape[2:]) if len(shape) > 2 else shape[-1]
        s = shape[1] if len(shape) > 2 else 1
        if len(shape) > 3 or loc.strides[-1] != 1:
            loc = self.contiguous_copy(loc)
        st = loc.strides
        self.emit(
            isa.ST,
            {
                "buf": ACT,
                "chip": loc.addr,
                "hbm": reg.addr + 4 * self.in_row * row,
                "n_outer": 1,
                "n_inner": s,
                "row_bytes": 4 * row,
                "hbm_si": 4 * row,
                "chip_si": st[1] if len(shape) > 2 else 0,
                "dclass": isa.D_ACT,
                **self.ch(reg),
            },
            reads=[(ACT, *loc.extent())],
            writes=[(isa.HBM, reg.addr, reg.addr + reg.size)],
            tag=f"output {v.name}",
        )


def broadcast(v: View, shape: tuple[int, ...]) -> View:
    if v.shape == shape:
        return v
    k = len(shape) - len(v.shape)
    st = [0] * k + list(v.strides)
    sh = [1] * k + list(v.shape)
    for i, (a, b) in enumerate(zip(sh, shape)):
        if a != b:
            if a != 1:
                raise UnsupportedOpError(f"cannot broadcast {v.shape} to {shape}")
            st[i] = 0
    return View(v.buf, v.addr, shape, tuple(st), v.block)


def _index0(v: View | None, i: int) -> View | None:
    if v is None:
        return None
    return View(v.buf, v.addr + i * v.strides[0], v.shape[1:], v.strides[1:], v.block)


def _handlers() -> dict:
    from llmc.fpga.lower_ops import HANDLERS

    return HANDLERS


def lower_stream(prog: Any, stage: str, bucket: int, deps: bool = True) -> Stream:
    if stage not in ("prefill", "decode"):  # a pruned model's prefill streams
        from llmc.fpga.prune import lower_pruned

        return lower_pruned(prog, stage, bucket, deps)
    return Lowerer(prog).run(stage, bucket, deps)
