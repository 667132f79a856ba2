"""Token pruning on the FlightLLM model: layer-segmented prefill, top-k on the SFU, per-layer
KV lengths (docs/fpga.md, "Token pruning").

A pruned graph (``token-prune``, score ``attention``, a fixed schedule) splits at its ``K``
pruning points into ``K + 1`` *segments* of layers. Segment ``s`` runs on ``r_s`` rows (``r_0``
the prompt length ``L``, ``r_s`` the count the ``s``-th ``keep_rows`` keeps), so its prefill is
chunked like an unpruned prefill (``prefill_bucket`` rows per stream, chunk ``c`` attending to
``(c + 1) C`` keys), one segment after the other:

- ``pseg{s}``, bucket ``c``: the segment's layers on its rows ``[cC, (c+1)C)``. Segment 0 reads
  the token ids and positions; a later segment gathers its rows of the residual stream from the
  previous segment's output (``LD`` in gather mode by the kept row indices) and loads its kept
  positions. A segment before a pruning point stores its residual output to a scratch region
  (``ps:h0``/``ps:h1``, alternating) and, in the attention of its last layer, accumulates the
  attention each key receives from the query rows of the scoring window (SFU ``tscore`` after each
  softmax; the partial sums of earlier chunks are added from ``ps:score``).
- ``psel{k}``, bucket ``n`` (the previous segment's chunks): SFU ``topk`` over the accumulated
  scores: the kept row indices and positions (``ps:kidx``, ``ps:kpos``) and the kept count.

Counts live in a small host-written block ``in:__prune`` of ``2K + 1`` words, loaded into ``IDX``
by every prefill stream: ``[L, kc_1, c_1, kc_2, c_2, ...]``, ``kc_k = keep_count(f_k, L)``
(written by the host, which knows ``L``), ``c_k`` the kept count (written by ``topk``, read back
by the host to pick the next segment's chunk streams). The chunk streams are shared by every
prompt length, as unpruned prefill chunks are.

Decode runs one row, which ``keep_rows`` always keeps (``recent >= 1``): the pruning nodes are
identities there, and every layer of segment ``s`` reads its own KV length from register ``s``
(``preg``: its new K/V row is stored there and its softmax mask stops there); positions stay the
original token positions (the ``positions`` input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmc.errors import LlmcError, UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.lower import ACT, IDX, ConstLoc, IndexLoc, Lowerer, Stream, View
from llmc.ir.graph import Graph, Node, Value
from llmc.ir.ops_adaptive import keep_count


@dataclass
class PrunePoint:
    k: int  # 1-based
    layer: int  # the first layer on the kept rows
    scores: Node
    keep: Node
    gh: Node  # gather of the residual stream
    gp: Node  # gather of the positions
    attn: Node  # the attention whose probabilities score the rows
    lo: int  # first node index of the pruning step
    hi: int  # one past its last node index

    @property
    def sym(self) -> str:
        return str(self.gh.attrs.length)

    @property
    def scored(self) -> bool:
        """Attention scores (else the position hash of score=random, or score=uniform)."""
        return self.scores.attrs.method == "attention" and self.keep.attrs.method == "topk"


@dataclass
class PrunePlan:
    points: list[PrunePoint]
    segs: list[tuple[int, int]]  # node index ranges per segment
    kv_reg: dict[str, int]  # "kv:past_k_3" -> the segment (= register) of layer 3
    hidden: int
    pos_input: str
    past_syms: list[str] = field(default_factory=list)

    @property
    def K(self) -> int:
        return len(self.points)

    def env(self, seq: int, past: int) -> dict[str, int]:
        e = {p.sym: seq for p in self.points}
        e.update({s: past for s in self.past_syms})
        return e

    def add_regions(self, al: Any, arch: Any) -> None:
        mt, act = arch.max_tokens, arch.act_bytes
        n = 2 * self.K + 1
        al.add("in:__prune", "in", 4 * n, 4 * n)
        for i in range(2):
            al.add(f"ps:h{i}", "scratch", 4 * mt * self.hidden, act * mt * self.hidden)
        for name in ("kidx", "kpos"):
            al.add(f"ps:{name}", "scratch", 4 * mt, 4 * mt)
        al.add("ps:score", "scratch", 4 * mt, 4 * mt)

    def buckets(self, arch: Any) -> list[tuple[str, int]]:
        chunks = arch.max_tokens // arch.prefill_bucket
        out = [(f"pseg{s}", c) for s in range(self.K + 1) for c in range(chunks)]
        out += [(f"psel{k}", n) for k in range(1, self.K + 1) for n in range(1, chunks + 1)]
        return out + [
            ("decode", t)
            for t in range(arch.decode_bucket, arch.max_tokens + 1, arch.decode_bucket)
        ]

    def counts(self, L: int) -> list[int]:
        """``[r_0 = L, r_1, ..., r_K]`` for the positions ``0 .. L-1`` (the cycle model's
        prompts): what ``keep_rows`` keeps, computed on the host."""
        out = [L]
        for p in self.points:
            a, r = p.keep.attrs, out[-1]
            forced = min(r, a.recent) + (1 if a.sink and r > a.recent else 0)
            out.append(min(r, max(forced, keep_count(a.keep, L))))
        return out

    def prefill_streams(self, L: int, C: int) -> list[tuple[str, int]]:
        r = self.counts(L)
        out: list[tuple[str, int]] = [("pseg0", c) for c in range(-(-L // C))]
        for k in range(1, self.K + 1):
            out.append((f"psel{k}", -(-r[k - 1] // C)))
            out += [(f"pseg{k}", c) for c in range(-(-r[k] // C))]
        return out


def _layer_of(name: str) -> int | None:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def plan_pruning(graph: Graph, cache_inputs: dict[str, Value]) -> PrunePlan | None:
    """The segments of a pruned graph (None when it prunes nothing); what the accelerator does
    not run is refused in one line naming the node."""
    nodes = graph.nodes
    if not any(n.op == "gather_rows" for n in nodes):
        return None
    index = {id(n): i for i, n in enumerate(nodes)}
    users = graph.users()
    points: list[PrunePoint] = []
    for n in nodes:
        if n.op != "token_scores":
            continue
        where = f"token_scores %{n.out.name} at {n.scope or '?'}"
        if n.attrs.method not in ("attention", "random"):
            raise UnsupportedOpError(
                f"{where}: method {n.attrs.method!r} has no FlightLLM lowering (the accelerator "
                "scores by the attention received, or a position hash: token-prune "
                "score=attention|random|uniform)"
            )
        keeps = [u for u in users.get(n.out, []) if u.op == "keep_rows"]
        if len(keeps) != 1 or keeps[0].attrs.method not in ("topk", "uniform"):
            raise UnsupportedOpError(
                f"{where}: the accelerator runs one top-k or uniform keep_rows per score (not "
                f"{', '.join(u.attrs.method for u in keeps) or 'none'}; adaptive=true is refused)"
            )
        keep = keeps[0]
        if keep.attrs.total != "seq":
            raise UnsupportedOpError(f"keep_rows %{keep.out.name}: total must be 'seq'")
        gathers = [u for u in users.get(keep.out, []) if u.op == "gather_rows"]
        gp = [g for g in gathers if g.inputs[0].type.dtype in ("i64", "i32")]
        gh = [g for g in gathers if g.inputs[0].type.is_float]
        if len(gp) != 1 or len(gh) != 1:
            raise UnsupportedOpError(
                f"keep_rows %{keep.out.name}: the accelerator gathers exactly the residual stream "
                f"and the positions, got {len(gathers)} gathers"
            )
        attn = [
            a
            for a in nodes
            if a.op == "attention" and a.inputs[0] is n.inputs[0] and a.inputs[1] is n.inputs[1]
        ]
        if len(attn) != 1 and n.attrs.method == "attention":
            raise UnsupportedOpError(f"{where}: scores no single attention node's probabilities")
        layer = _layer_of(gh[0].attrs.length)
        if layer is None:
            raise UnsupportedOpError(f"{where}: cannot tell the layer from {gh[0].attrs.length}")
        ids = [index[id(x)] for x in (n, keep, gh[0], gp[0])]
        attn = attn or [n]  # (unscored: not read)
        points.append(
            PrunePoint(
                len(points) + 1, layer, n, keep, gh[0], gp[0], attn[0], min(ids), max(ids) + 1
            )
        )
    if len(points) >= isa.N_REGS:
        raise UnsupportedOpError(
            f"token-prune: {len(points)} pruning points, but the accelerator has "
            f"{isa.N_REGS - 1} KV length registers (one per pruned segment); bring l1 and l2 "
            "closer together"
        )
    ours = {id(x) for p in points for x in (p.gh, p.gp)}
    for n in nodes:
        if n.op == "gather_rows" and id(n) not in ours:
            raise UnsupportedOpError(
                f"op 'gather_rows' (%{n.out.name} at {n.scope or '?'}) has no FlightLLM lowering "
                "outside token-prune's scoring steps (token_scores, keep_rows, gather_rows)"
            )
    segs, lo = [], 0
    for p in points:
        segs.append((lo, p.lo))
        lo = p.hi
    segs.append((lo, len(nodes)))
    kv_reg: dict[str, int] = {}
    past_syms: set[str] = set()
    for name, v in cache_inputs.items():
        layer = _layer_of(name)
        seg = sum(1 for p in points if layer is not None and layer >= p.layer)
        if seg:
            kv_reg[f"kv:{name}"] = seg
        past_syms |= {s for d in v.type.shape if not isinstance(d, int) for s in d.symbols}
    hid = points[0].gh.inputs[0].type.shape[-1]
    if not isinstance(hid, int):
        raise UnsupportedOpError(f"the residual stream's width {hid} must be static")
    ints = [v.name for v in graph.inputs if v.type.dtype in ("i64", "i32")]
    pos = next((x for x in ints if "pos" in x), ints[-1])
    return PrunePlan(points, segs, kv_reg, hid, pos, sorted(past_syms - {"batch"}))


# ----------------------------------------------------------------------------------------------
# prefill streams


class Segment:
    """What a ``pseg{s}`` chunk stream runs and how it enters and leaves (see the module
    docstring); installed as ``Lowerer.seg``."""

    def __init__(self, plan: PrunePlan, s: int, chunk: int) -> None:
        self.plan, self.s, self.c = plan, s, chunk
        self.lo, self.hi = plan.segs[s]
        self.cnt = 0  # IDX address of the count block

    def reads_input(self, v: Value) -> bool:
        return self.s == 0 or v.type.dtype not in ("i64", "i32")

    def runs(self, i: int, n: Node) -> bool:
        return self.lo <= i < self.hi or n.op in ("param", "constant")

    def enter(self, L: Lowerer) -> None:
        self.cnt = load_counts(L)
        plan, s, C = self.plan, self.s, L.seq
        if s > 0:
            p = plan.points[s - 1]
            row0 = self.c * C
            kidx = L.idx.alloc(C)
            _ld(L, IDX, "ps:kidx", 4 * row0, kidx.addr, 4 * C, "kept rows")
            shape = L.shape(p.gh.out)
            h = L.alloc_view(shape, p.gh)
            src = L.prog.regions[f"ps:h{(s - 1) % 2}"]
            L.emit(
                isa.LD,
                {
                    "buf": ACT,
                    "mode": 1,
                    "hbm": src.addr,
                    "chip": h.addr,
                    "n_outer": 1,
                    "n_inner": C,
                    "row_bytes": 4 * plan.hidden,
                    "hbm_si": 4 * plan.hidden,
                    "chip_si": plan.hidden,
                    "idx": kidx.addr,
                    "dclass": isa.D_ACT,
                    **L.ch(src),
                },
                reads=[(IDX, kidx.addr, kidx.addr + C), (isa.HBM, src.addr, src.addr + src.size)],
                writes=[(ACT, *h.extent())],
                tag="prune: gather kept rows",
            )
            L.idx.release(kidx)
            L.bind(p.gh.out, h)
            pb = L.idx.alloc(C)
            _ld(L, IDX, "ps:kpos", 4 * row0, pb.addr, 4 * C, "kept positions")
            pv = View(IDX, pb.addr, (1, C), (C, 1), pb)
            L.bind(p.gp.out, IndexLoc(pv, "positions"))
        if s < plan.K:
            p = plan.points[s]
            hv = p.gh.inputs[0]
            L.out_names.add(id(hv))
            L.out_regions[id(hv)] = L.prog.regions[f"ps:h{s % 2}"]
            if p.scored:
                L.score_hooks[id(p.attn)] = ScoreHook(self, p)


class ScoreHook:
    """Accumulates the attention each key receives from the scoring window (SFU ``tscore``)."""

    def __init__(self, seg: Segment, p: PrunePoint) -> None:
        self.seg, self.p = seg, p
        self.acc: View | None = None

    def _r_word(self) -> int:
        s = self.seg.s
        return self.seg.cnt + (0 if s == 0 else 2 * s)

    def prepare(self, L: Lowerer, T: int) -> None:
        self.acc = L.alloc_view((T,))

    def group(self, L: Lowerer, scores: View, hn: int, s: int, T: int, h0: int) -> None:
        acc = self.acc
        assert acc is not None
        first = h0 == 0
        L.emit(
            isa.SFU,
            {
                "func": isa.S_TSCORE,
                "n_outer": hn,
                "n_inner": s,
                "len": T,
                "a_addr": scores.addr,
                "a_so": s * T,
                "a_si": T,
                "o_addr": acc.addr,
                "c_addr": L.q_off,
                "ival0": self._r_word(),
                "ival1": int(self.p.scores.attrs.window),
                "flags": 0 if first else isa.SF_ACC,
            },
            reads=[
                (ACT, *scores.extent()),
                (IDX, self.seg.cnt, self.seg.cnt + 1 + 2 * L.prog.prune.K),
            ]
            + ([] if first else [(ACT, *acc.extent())]),
            writes=[(ACT, *acc.extent())],
            tag="prune: score",
        )

    def done(self, L: Lowerer, T: int) -> None:
        acc = self.acc
        assert acc is not None
        prev = L.q_off  # keys of earlier chunks: add their partial sums
        if prev:
            tmp = L.alloc_view((prev,))
            _ld(L, ACT, "ps:score", 0, tmp.addr, 4 * prev, "scores so far")
            head = View(ACT, acc.addr, (prev,), (1,), acc.block)
            L.sfu(isa.S_ADD, (prev,), head, head, tmp)
            L.free_temp(tmp)
        reg = L.prog.regions["ps:score"]
        L.emit(
            isa.ST,
            {
                "buf": ACT,
                "chip": acc.addr,
                "hbm": reg.addr,
                "n_outer": 1,
                "n_inner": 1,
                "row_bytes": 4 * T,
                "dclass": isa.D_ACT,
                **L.ch(reg),
            },
            reads=[(ACT, *acc.extent())],
            writes=[(isa.HBM, reg.addr, reg.addr + reg.size)],
            tag="prune: score",
        )
        L.free_temp(acc)
        self.acc = None


def _ld(L: Lowerer, buf: int, region: str, off: int, chip: int, nbytes: int, tag: str) -> None:
    reg = L.prog.regions[region]
    n = nbytes // 4
    L.emit(
        isa.LD,
        {
            "buf": buf,
            "hbm": reg.addr + off,
            "chip": chip,
            "n_outer": 1,
            "n_inner": 1,
            "row_bytes": nbytes,
            "dclass": isa.D_INDEX if buf == IDX else isa.D_ACT,
            **L.ch(reg),
        },
        reads=[(isa.HBM, reg.addr, reg.addr + reg.size)],
        writes=[(buf, chip, chip + n)],
        tag=f"prune: {tag}",
    )


def _st(L: Lowerer, buf: int, region: str, chip: int, nbytes: int, tag: str) -> None:
    reg = L.prog.regions[region]
    L.emit(
        isa.ST,
        {
            "buf": buf,
            "chip": chip,
            "hbm": reg.addr,
            "n_outer": 1,
            "n_inner": 1,
            "row_bytes": nbytes,
            "dclass": isa.D_INDEX if buf == IDX else isa.D_ACT,
            **L.ch(reg),
        },
        reads=[(buf, chip, chip + nbytes // 4)],
        writes=[(isa.HBM, reg.addr, reg.addr + reg.size)],
        tag=f"prune: {tag}",
    )


def load_counts(L: Lowerer) -> int:
    n = 2 * L.prog.prune.K + 1
    blk = L.idx.alloc(n)
    blk.refs += 1  # held for the whole stream
    _ld(L, IDX, "in:__prune", 0, blk.addr, 4 * n, "counts")
    return blk.addr


def lower_pruned(prog: Any, stage: str, bucket: int, deps: bool = True) -> Stream:
    plan: PrunePlan | None = prog.prune
    if plan is None or not (stage.startswith("pseg") or stage.startswith("psel")):
        raise LlmcError(f"no {stage!r} streams for this program")
    L = Lowerer(prog)
    L.stage, L.bucket, L.tag = stage, bucket, ""
    C = prog.arch.prefill_bucket
    idx = int(stage[4:])
    if stage.startswith("pseg"):
        if not 0 <= idx <= plan.K:
            raise LlmcError(f"no segment {idx}")
        L.seg = Segment(plan, idx, bucket)
        L.instance(seq=C, past=bucket * C, q_off=bucket * C, in_row=bucket * C)
    else:
        _select(L, plan, idx, bucket * C)
    L.emit(isa.SYNC, {"end": 1}, tag="end")
    if deps:
        isa.insert_dependencies(L.instrs)
    return Stream(stage, bucket, L.instrs, L.act_peak, L.idx_peak, 1, L.fused)


def _select(L: Lowerer, plan: PrunePlan, k: int, N: int) -> None:
    """``psel{k}``: top-k over the scores of the previous segment's ``N`` (capacity) rows."""
    if not 1 <= k <= plan.K:
        raise LlmcError(f"no pruning point {k}")
    p = plan.points[k - 1]
    L.tag = p.keep.scope or "prune"
    L.act, L.idx = type(L.act)(), type(L.idx)()
    cnt = load_counts(L)
    n = 2 * plan.K + 1
    sc = L.act.alloc(N)
    if p.scored:
        _ld(L, ACT, "ps:score", 0, sc.addr, 4 * N, "scores")
    ts, a = p.scores.attrs, p.keep.attrs
    flags = isa.SF_SINK if a.sink else 0
    mode = isa.TOPK_UNIFORM if a.method == "uniform" else isa.TOPK_SCORES
    if ts.method == "random" and a.method == "topk":
        mode = isa.TOPK_HASH
    pos = L.idx.alloc(N)
    src = f"in:{plan.pos_input}" if k == 1 else "ps:kpos"
    _ld(L, IDX, src, 0, pos.addr, 4 * N, "positions")
    kidx, kpos = L.idx.alloc(N), L.idx.alloc(N)
    r_word = cnt + (0 if k == 1 else 2 * (k - 1))
    L.emit(
        isa.SFU,
        {
            "func": isa.S_TOPK,
            "n_outer": int(a.recent),
            "n_inner": mode,
            "len": N,
            "fparam": int(ts.seed) if mode == isa.TOPK_HASH else 0,
            "a_addr": sc.addr,
            "b_addr": pos.addr,
            "o_addr": kidx.addr,
            "c_addr": kpos.addr,
            "ival0": r_word,
            "ival1": cnt + 2 * k - 1,
            "flags": flags,
        },
        reads=[(ACT, sc.addr, sc.addr + N), (IDX, pos.addr, pos.addr + N), (IDX, cnt, cnt + n)],
        writes=[
            (IDX, kidx.addr, kidx.addr + N),
            (IDX, kpos.addr, kpos.addr + N),
            (IDX, cnt, cnt + n),
        ],
        tag="prune: top-k",
    )
    _st(L, IDX, "ps:kidx", kidx.addr, 4 * N, "kept rows")
    _st(L, IDX, "ps:kpos", kpos.addr, 4 * N, "kept positions")
    _st(L, IDX, "in:__prune", cnt, 4 * n, "counts")
    L.act_peak, L.idx_peak = L.act.peak, L.idx.peak


# ----------------------------------------------------------------------------------------------
# decode: one row, always kept


def h_token_scores(L: Lowerer, n: Node) -> None:
    _decode_only(L, n)
    L.vals[id(n.out)] = ConstLoc(0.0)


def h_keep_rows(L: Lowerer, n: Node) -> None:
    _decode_only(L, n)
    L.vals[id(n.out)] = ConstLoc(1.0)


def h_gather_rows(L: Lowerer, n: Node) -> None:
    _decode_only(L, n)
    L.bind(n.out, L.loc(n.inputs[0]))


def _decode_only(L: Lowerer, n: Node) -> None:
    if L.seq != 1:
        raise UnsupportedOpError(
            f"{n.op} %{n.out.name} at {n.scope or '?'}: a pruning step on {L.seq} rows runs in "
            "the segmented prefill streams (llmc.fpga.prune), not inside one stream"
        )


DECODE_HANDLERS = {
    "token_scores": h_token_scores,
    "keep_rows": h_keep_rows,
    "gather_rows": h_gather_rows,
}


# ----------------------------------------------------------------------------------------------
# host side


def prefill(runner: Any, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Run a pruned prompt (``positions`` already padded to the chunks) on a
    :class:`~llmc.fpga.funcsim.FuncRunner`; returns the logits of the last segment's rows."""
    prog = runner.prog
    plan: PrunePlan = prog.prune
    C = prog.chunk
    n = ids.size
    words = [n]
    for p in plan.points:
        words += [keep_count(p.keep.attrs.keep, n), 0]
    reg = prog.regions["in:__prune"]
    w = np.asarray(words, dtype=np.int32)
    runner.hbm[reg.addr : reg.addr + w.nbytes] = w.view(np.uint8)
    zero = [0] * isa.N_REGS
    for c in range(-(-n // C)):
        runner._run("pseg0", c, zero)
    lens = [n]
    for k in range(1, plan.K + 1):
        runner._run(f"psel{k}", -(-lens[-1] // C), zero)
        got = int(runner.hbm[reg.addr + 8 * k : reg.addr + 8 * k + 4].view(np.int32)[0])
        if not 1 <= got <= lens[-1]:
            raise LlmcError(f"pruning point {k} kept {got} of {lens[-1]} rows")
        lens.append(got)
        for c in range(-(-got // C)):
            runner._run(f"pseg{k}", c, zero)
    runner.lens = lens
    return lens


def decode_regs(lens: list[int]) -> list[int]:
    return list(lens) + [0] * (isa.N_REGS - len(lens))
