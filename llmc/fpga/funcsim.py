"""Bit-accurate functional simulator: executes instruction streams on a model of the memories.

State: the HBM image (bytes, laid out by :mod:`llmc.fpga.program`), the on-chip buffers (``IDX``
int32, ``ACT``/``KV`` float32, ``WGT`` bytes) and the runtime register ``R_POS``. Instructions run
in program order (the dependency bits only matter for timing). Every arithmetic step follows
:mod:`llmc.fpga.numerics`; the MPE's sparse DSP chain is defined here and mirrored by the HLS
kernel (``templates/mpe.h.tmpl``):

For each output ``(token, row)``: ``total`` starts at 0 (or the previous output with ``acc``).
The row's weight is read block by block (16 inputs); a block row holds ``nnz`` entries (code,
position), in ascending position. Each entry contributes ``x[position] * code`` to the chain
partial of the quantization group its column belongs to (a block meets at most two groups:
partials ``c0``/``c1``, sums in entry order). After the block, ``gacc += c0``; when a group ends
(inside the block or at its end) ``total += gacc * scale[group]`` (float formats: ``total +=
gacc``, one group) and ``gacc`` restarts from ``c1`` (or 0). Then ``+ bias`` and the fused
epilogue (SiLU/GELU/ReLU, ``+ aux``, ``* aux``).

:class:`FuncRunner` is the host side for LM-ABI graphs: it writes token ids and positions, sets
``R_POS`` and runs the prefill chunks or the decode stream of the right bucket.
"""

from __future__ import annotations

import numpy as np

from llmc.errors import LlmcError
from llmc.fpga import isa
from llmc.fpga import numerics as nm
from llmc.fpga.layout import WeightFormat, tile_sections, unpack4
from llmc.fpga.program import Program

f32 = np.float32


class FuncSimError(LlmcError):
    """The functional simulator met an instruction it cannot execute (out-of-range access...)."""


class Machine:
    """Memories and registers of one accelerator instance."""

    def __init__(self, hbm: np.ndarray, act_words: int, arch) -> None:
        self.hbm = hbm
        self.act = np.zeros(max(act_words, 16), dtype=f32)
        self.idx = np.zeros(max(int(arch.buffers.index_kb * 1024 // 4), 16), dtype=np.int32)
        self.wgt = np.zeros(int(arch.buffers.weight_kb * 1024), dtype=np.uint8)
        self.kv = np.zeros(int(arch.buffers.kv_kb * 1024 / arch.act_bytes), dtype=f32)
        self.regs = [0] * isa.N_REGS  # register 0 is R_POS
        #: indices of the ``BR`` instructions taken by the last :meth:`run`
        self.taken: list[int] = []
        #: BR index -> the per-row decisions it saw (``run(..., probes)``), for skip counts
        self.masks: dict[int, np.ndarray] = {}

    @property
    def r_pos(self) -> int:
        return self.regs[0]

    @r_pos.setter
    def r_pos(self, v: int) -> None:
        self.regs[0] = v

    def ensure_act(self, words: int) -> None:
        if words > self.act.size:
            self.act = np.concatenate([self.act, np.zeros(words - self.act.size, dtype=f32)])

    def buf(self, b: int) -> np.ndarray:
        return (self.idx, self.act, self.wgt, self.kv)[b]

    # -- execution ------------------------------------------------------------------------------
    def run(
        self, instrs: list[isa.Instr], probes: dict[int, tuple[int, int, int]] | None = None
    ) -> None:
        """Execute in program order; a taken ``BR`` skips its body (recorded in ``taken``).
        ``probes`` (:attr:`llmc.fpga.lower.Stream.probes`): per-row masks read at their BR."""
        self.taken = []
        self.masks = {}
        j, n = 0, len(instrs)
        while j < n:
            ins = instrs[j]
            if ins.op == isa.BR:
                a = ins.f.get("addr", 0)
                if a >= self.act.size:
                    raise FuncSimError(f"instruction {j} ({ins!r}): ACT word {a} out of range")
                if probes and j in probes:
                    pa, ps, pn = probes[j]
                    self.masks[j] = self.act[pa + ps * np.arange(pn)] != 0
                if (self.act[a] != 0) != bool(ins.f.get("neg", 0)):
                    self.taken.append(j)
                    j += 1 + ins.f.get("skip", 0)
                    continue
                j += 1
                continue
            try:
                EXEC[ins.op](self, ins.f)
            except (IndexError, ValueError) as e:
                raise FuncSimError(f"instruction {j} ({ins!r}) failed: {e}") from e
            j += 1


def _rows(f: dict[str, int], pre: str = "") -> np.ndarray:
    no, ni = max(1, f.get("n_outer", 1)), max(1, f.get("n_inner", 1))
    o = np.arange(no, dtype=np.int64)[:, None]
    i = np.arange(ni, dtype=np.int64)[None, :]
    return o, i


def _ld_st(m: Machine, f: dict[str, int], store: bool) -> None:
    b = f.get("buf", 0)
    buf = m.buf(b)
    unit = 1 if b == isa.B_WGT else 4
    rb = f.get("row_bytes", 0)
    n = rb // unit
    no, ni = max(1, f.get("n_outer", 1)), max(1, f.get("n_inner", 1))
    base = f.get("hbm", 0) + m.regs[f.get("preg", 0)] * f.get("relb", 0)
    hso, hsi = f.get("hbm_so", 0), f.get("hbm_si", 0)
    cso, csi = f.get("chip_so", 0), f.get("chip_si", 0)
    chip = f.get("chip", 0)
    mode = f.get("mode", 0)
    gather = mode == isa.M_GATHER
    i2f = mode == isa.M_I2F and b == isa.B_ACT and not store
    hbm = m.hbm
    for o in range(no):
        for i in range(ni):
            r = o * ni + i
            src = base + o * hso + (int(m.idx[f.get("idx", 0) + r]) if gather else i) * hsi
            dst = chip + o * cso + i * csi
            if src < 0 or src + rb > hbm.size or dst + n > buf.size:
                raise FuncSimError(
                    f"{'ST' if store else 'LD'} row {r}: HBM [{src}, {src + rb}) of {hbm.size} or "
                    f"{isa.BUF_NAMES[b]} [{dst}, {dst + n}) of {buf.size} out of range"
                )
            if store:
                hbm[src : src + rb] = buf[dst : dst + n].view(np.uint8)
            elif b == isa.B_WGT:
                buf[dst : dst + n] = hbm[src : src + rb]
            elif i2f:  # int32 words -> float32 (exact below 2^24, else correctly rounded)
                buf[dst : dst + n] = hbm[src : src + rb].view(np.int32).astype(f32)
            else:
                buf[dst : dst + n] = hbm[src : src + rb].view(buf.dtype)


def x_ld(m: Machine, f: dict[str, int]) -> None:
    _ld_st(m, f, False)


def x_st(m: Machine, f: dict[str, int]) -> None:
    _ld_st(m, f, True)


def decode_tile(
    raw: np.ndarray, rows: int, k: int, fmt: WeightFormat, bias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """codes (float32) [rows, k/16, nnz], positions [rows, k/16, nnz], scales, bias."""
    idx_off, sc_off, bi_off, end = tile_sections(rows, k, fmt, bias)
    nb, nnz = k // 16, fmt.nnz
    cnt = rows * nb * nnz
    w = fmt.wfmt
    if w == isa.W_INT4:
        codes = unpack4(raw[: cnt // 2], signed=True).astype(f32)
    elif w == isa.W_INT8:
        codes = raw[:cnt].view(np.int8).astype(f32)
    elif w == isa.W_F16:
        codes = raw[: 2 * cnt].view(np.float16).astype(f32)
    elif w == isa.W_BF16:
        codes = (raw[: 2 * cnt].view(np.uint16).astype(np.uint32) << 16).view(f32)
    else:
        codes = raw[: 4 * cnt].view(f32).copy()
    codes = codes.reshape(rows, nb, nnz)
    if nnz == 16:
        pos = np.broadcast_to(np.arange(16), (rows, nb, 16))
    else:
        pos = unpack4(raw[idx_off : idx_off + cnt // 2], signed=False).reshape(rows, nb, nnz)
    scales = None
    if fmt.quantized:
        g = 1 if fmt.group in (0, k) else k // fmt.group
        scales = raw[sc_off : sc_off + 4 * rows * g].view(f32).reshape(rows, g)
    b = raw[bi_off:end].view(f32) if bias else None
    return codes, pos.astype(np.int64), scales, b


def chain(
    x: np.ndarray,
    codes: np.ndarray,
    pos: np.ndarray,
    scales: np.ndarray | None,
    group: int,
    total: np.ndarray,
) -> np.ndarray:
    """The sparse DSP chain (module docstring): ``x`` [m, k], codes/pos [n, k/16, nnz]."""
    n, nb, nnz = codes.shape
    m = x.shape[0]
    assert x.dtype == f32 and codes.dtype == f32 and total.dtype == f32
    gacc = np.zeros((m, n), dtype=f32)
    rows = np.arange(n)
    for b in range(nb):
        ga, gb = (b * 16) // group, (b * 16 + 15) // group
        c0 = np.zeros((m, n), dtype=f32)
        c1 = np.zeros((m, n), dtype=f32) if gb != ga else None
        for j in range(nnz):
            col = b * 16 + pos[:, b, j]
            p = x[:, col] * codes[:, b, j][None, :]  # float32 throughout
            if c1 is None:
                c0 = c0 + p
            else:
                in0 = (col // group == ga)[None, :]
                c0 = np.where(in0, c0 + p, c0)
                c1 = np.where(in0, c1, c1 + p)
        gacc = gacc + c0
        closes = gb != ga or (b * 16 + 16) % group == 0
        if closes:
            if scales is not None:
                total = total + gacc * scales[rows, ga][None, :]
            else:
                total = total + gacc
            gacc = c1 if c1 is not None else np.zeros((m, n), dtype=f32)
    return total


FUSE = {
    isa.F_SILU: nm.silu32,
    isa.F_GELU: nm.gelu32,
    isa.F_GELU_TANH: nm.gelu_tanh32,
    isa.F_RELU: nm.relu32,
}


def _gather2(buf: np.ndarray, addr: int, rs: int, m: int, n: int) -> np.ndarray:
    idx = addr + np.arange(m)[:, None] * rs + np.arange(n)[None, :]
    return buf[idx]


def x_mpe(m: Machine, f: dict[str, int]) -> None:
    mm, k, n = f["m"], f["k"], f["n"]
    heads, h0, hgroup = max(1, f.get("heads", 1)), f.get("h0", 0), max(1, f.get("hgroup", 1))
    wbuf = f.get("wbuf", isa.B_WGT)
    group = f.get("group", 0) or k
    fmt = WeightFormat(f.get("wfmt", 0), f.get("nnz", 16), group)
    act = m.act
    for hh in range(heads):
        kvi = (h0 + hh) // hgroup - h0 // hgroup
        x = _gather2(act, f.get("x_addr", 0) + hh * f.get("x_hs", 0), f.get("x_rs", 0), mm, k)
        if wbuf == isa.B_WGT:
            raw = m.wgt[f.get("w_addr", 0) :]
            codes, pos, scales, bias = decode_tile(raw, n, k, fmt, bool(f.get("bias", 0)))
        else:
            src = m.buf(wbuf)
            base = f.get("w_addr", 0) + kvi * f.get("w_hs", 0)
            rs = f.get("w_rs", 0)
            if f.get("w_trans", 0):  # W[o, c] = src[base + c*rs + o]
                w = src[base + np.arange(k)[None, :] * rs + np.arange(n)[:, None]]
            else:
                w = _gather2(src, base, rs, n, k)
            codes = w.reshape(n, k // 16, 16).astype(f32)
            pos = np.broadcast_to(np.arange(16), (n, k // 16, 16))
            scales = bias = None
        o_addr = f.get("o_addr", 0) + hh * f.get("o_hs", 0)
        o_rs = f.get("o_rs", 0)
        oidx = o_addr + np.arange(mm)[:, None] * o_rs + np.arange(n)[None, :]
        total = act[oidx].astype(f32) if f.get("acc", 0) else np.zeros((mm, n), dtype=f32)
        total = chain(x, codes, pos, scales if fmt.quantized else None, group, total)
        if bias is not None:
            total = (total + bias[None, :]).astype(f32)
        fuse = f.get("fuse", 0)
        if fuse in FUSE:
            total = FUSE[fuse](total)
        elif fuse in (isa.F_ADD, isa.F_MUL):
            aux = _gather2(
                act, f.get("aux_addr", 0) + hh * f.get("aux_hs", 0), f.get("aux_rs", 0), mm, n
            )
            total = (total + aux if fuse == isa.F_ADD else total * aux).astype(f32)
        act[oidx] = total


def _operand(m: Machine, f: dict[str, int], p: str, length: int) -> np.ndarray:
    no, ni = max(1, f.get("n_outer", 1)), max(1, f.get("n_inner", 1))
    idx = (
        f.get(f"{p}_addr", 0)
        + np.arange(no)[:, None, None] * f.get(f"{p}_so", 0)
        + np.arange(ni)[None, :, None] * f.get(f"{p}_si", 0)
        + np.arange(length)[None, None, :]
    )
    return m.act[idx]


def x_sfu(m: Machine, f: dict[str, int]) -> None:
    fn = f.get("func", 0)
    if fn in PRUNE_SFU:
        PRUNE_SFU[fn](m, f)
        return
    length = f.get("len", 1)
    no, ni = max(1, f.get("n_outer", 1)), max(1, f.get("n_inner", 1))
    flags = f.get("flags", 0)
    fp = f32(isa.bits_f32(f.get("fparam", 0)))
    a = _operand(m, f, "a", 1 if flags & isa.SF_ROW_A else length)
    if flags & isa.SF_ROW_A:
        a = np.broadcast_to(a, (a.shape[0], a.shape[1], length))
    if fn == isa.S_COPY:
        y = a
    elif fn == isa.S_RMSNORM:
        y = nm.rmsnorm32(a, None if flags & isa.SF_NO_B else _operand(m, f, "b", length), fp)
    elif fn == isa.S_LAYERNORM:
        g = None if flags & isa.SF_NO_B else _operand(m, f, "b", length)
        b = None if flags & isa.SF_NO_C else _operand(m, f, "c", length)
        y = nm.layernorm32(a, g, b, fp)
    elif fn == isa.S_SOFTMAX:
        r_pos = m.regs[f.get("preg", 0)]
        t = np.arange(length)[None, None, :]
        q = (r_pos + f.get("ival0", 0) + np.arange(ni))[None, :, None]
        vis = np.ones((1, ni, length), dtype=bool)
        if flags & isa.SF_CAUSAL:
            vis &= t <= q
        if flags & isa.SF_KEYLEN:
            vis &= t < r_pos + f.get("ival0", 0) + ni
        if f.get("ival1", 0) > 0:
            vis &= (q - t) < f["ival1"]
        y = nm.softmax32(a, np.broadcast_to(vis, a.shape), float(fp))
    elif fn == isa.S_ROPE:
        rd = f.get("ival0", length)
        y = nm.rope32(
            a,
            _operand(m, f, "b", rd),
            _operand(m, f, "c", rd),
            rd,
            bool(flags & isa.SF_INTERLEAVED),
        )
    elif fn in (isa.S_ADD, isa.S_MUL, isa.S_SUB):
        b = _operand(m, f, "b", length)
        y = {isa.S_ADD: a + b, isa.S_MUL: a * b, isa.S_SUB: a - b}[fn].astype(f32)
    elif fn == isa.S_ADDC:
        y = (a + fp).astype(f32)
    elif fn == isa.S_MULC:
        y = (a * fp).astype(f32)
    elif fn == isa.S_RSUBC:
        y = (fp - a).astype(f32)
    elif fn == isa.S_SQRT:
        y = nm.sqrt32(a)
    elif fn == isa.S_DIV:
        y = (a / _operand(m, f, "b", length)).astype(f32)
    elif fn == isa.S_MAXC:
        y = nm.maxc32(a, fp)
    elif fn in isa.SFU_COMPARE:
        name = isa.SFU_NAMES[fn]
        other = fp if name.endswith("c") else _operand(m, f, "b", length)
        y = nm.compare32(name.rstrip("c"), a, other)
    elif fn == isa.S_SELECT:
        y = nm.select32(a, _operand(m, f, "b", length), _operand(m, f, "c", length))
    elif fn in isa.SFU_REDUCE:
        y = (nm.seq_sum(a) if fn == isa.S_SUM else nm.seq_max(a))[..., None]
        length = 1
    else:
        y = nm.UNARY[isa.SFU_NAMES[fn]](a)
    o = (
        f.get("o_addr", 0)
        + np.arange(no)[:, None, None] * f.get("o_so", 0)
        + np.arange(ni)[None, :, None] * f.get("o_si", 0)
        + np.arange(length)[None, None, :]
    )
    m.act[o] = y


def x_sync(m: Machine, f: dict[str, int]) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# token pruning (isa.S_TSCORE, isa.S_TOPK; the semantics are in llmc.fpga.isa)


def x_tscore(m: Machine, f: dict[str, int]) -> None:
    length = f.get("len", 1)
    no, ni = max(1, f.get("n_outer", 1)), max(1, f.get("n_inner", 1))
    r, w, row0 = int(m.idx[f.get("ival0", 0)]), f.get("ival1", 0), f.get("c_addr", 0)
    lo = max(0, r - w) if w > 0 else 0
    a = _operand(m, f, "a", length)
    o = f.get("o_addr", 0)
    acc = m.act[o : o + length].copy() if f.get("flags", 0) & isa.SF_ACC else None
    if acc is None:
        acc = np.zeros(length, dtype=f32)
    for oo in range(no):
        for i in range(ni):
            if lo <= row0 + i < r:
                acc = (acc + a[oo, i]).astype(f32)
    m.act[o : o + length] = acc


def position_hash32(pos: np.ndarray, seed: int) -> np.ndarray:
    """llmc.ir.ops_adaptive.position_hash in numpy int64 arithmetic (score=random)."""
    x = (pos.astype(np.int64) + seed * (1 << 20)) & 0xFFFFFFFF
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return (x.astype(np.float64) / 2.0**32).astype(f32)


def topk_rows(
    scores: np.ndarray, pos: np.ndarray, recent: int, sink: bool, kc: int, uniform: bool = False
) -> list[int]:
    """The kept rows of ``topk`` (ascending): forced rows first, then by descending score,
    ties to the lower row (a row's rank counts the rows before it in that order); ``uniform``:
    the others evenly spaced instead."""
    r = scores.size
    forced = np.arange(r) >= r - recent
    if sink:
        forced |= pos == 0
    nf = int(forced.sum())
    c = min(r, max(nf, kc))
    if uniform:
        keep = forced.copy()
        free = np.flatnonzero(~forced)
        need = c - nf
        if need > 0:
            pick = ((np.arange(need, dtype=np.float64) + 0.5) * free.size / need).astype(np.int64)
            keep[free[pick]] = True
        return [int(i) for i in np.flatnonzero(keep)]
    key = np.where(forced, f32(np.inf), scores.astype(f32))
    order = np.argsort(-key, kind="stable")[:c]
    return sorted(int(i) for i in order)


def x_topk(m: Machine, f: dict[str, int]) -> None:
    n = f.get("len", 1)
    r, kc = int(m.idx[f.get("ival0", 0)]), int(m.idx[f.get("ival1", 0)])
    if not 1 <= r <= n:
        raise FuncSimError(f"topk: {r} rows for a capacity of {n}")
    a, b = f.get("a_addr", 0), f.get("b_addr", 0)
    pos = m.idx[b : b + r].copy()
    flags = f.get("flags", 0)
    mode = f.get("n_inner", 0)
    if mode == isa.TOPK_HASH:
        scores = position_hash32(pos, f.get("fparam", 0))
    else:
        scores = m.act[a : a + r]
    keep = topk_rows(
        scores,
        pos,
        f.get("n_outer", 1),
        bool(flags & isa.SF_SINK),
        kc,
        uniform=mode == isa.TOPK_UNIFORM,
    )
    rows = np.array(keep + [keep[-1]] * (n - len(keep)), dtype=np.int32)
    o, c = f.get("o_addr", 0), f.get("c_addr", 0)
    m.idx[o : o + n] = rows
    m.idx[c : c + n] = pos[rows]
    m.idx[f.get("ival1", 0) + 1] = len(keep)


PRUNE_SFU = {isa.S_TSCORE: x_tscore, isa.S_TOPK: x_topk}


EXEC = {
    isa.LD: x_ld,
    isa.ST: x_st,
    isa.MM: x_mpe,
    isa.MV: x_mpe,
    isa.SFU: x_sfu,
    isa.SYNC: x_sync,
}


class FuncRunner:
    """Host side of an LM-ABI program on the functional simulator (or on a replacement
    ``execute(stream, r_pos)`` such as the compiled HLS C-simulation)."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.hbm = prog.hbm_image()
        peak = max((prog.stream(s, b).act_peak for s, b in prog._streams), default=16)
        self.m = Machine(self.hbm, peak, prog.arch)
        self.pos = 0  # tokens in the cache
        self.executor = None  # optional callable(stream, regs) replacing Machine.run
        self.lens: list[int] = []  # token pruning: each segment's KV length (llmc.fpga.prune)
        #: position of the first generated token (graphs with ``decode_start``: ffn-skip); None
        #: writes ``max_tokens``, which no position reaches (the dense model)
        self.decode_start: int | None = None
        #: FFN-skip counters: blocks skipped per layer among decode rows (taken ``BR``s)
        self.skipped = [0] * int(prog.graph.meta.get("num_layers", 0) or 0)
        self.decode_rows = 0
        #: (stage, bucket, indices of the BRs taken) of every stream run, in order
        self.trace: list[tuple[str, int, list[int]]] = []

    def _ids_pos(self) -> tuple[str, str]:
        names = [n for n in self.prog.int_inputs if n != "decode_start"]
        ids = next((n for n in names if "pos" not in n), names[0])
        pos = next((n for n in names if n != ids), ids)
        return ids, pos

    def _write_inputs(self, ids: np.ndarray, positions: np.ndarray) -> None:
        ids_name, pos_name = self._ids_pos()
        todo = [(ids_name, ids), (pos_name, positions)]
        if "decode_start" in self.prog.int_inputs:
            ds = self.prog.arch.max_tokens if self.decode_start is None else self.decode_start
            todo.append(("decode_start", np.array([min(ds, 2**31 - 1)])))
        for name, vals in todo:
            reg = self.prog.regions[f"in:{name}"]
            v = np.asarray(vals, dtype=np.int32)
            self.hbm[reg.addr : reg.addr + v.nbytes] = v.view(np.uint8)

    def _run(
        self,
        stage: str,
        bucket: int,
        r_pos: int | list[int],
        rows: int = 0,
        decode_rows: int = 0,
    ) -> None:
        """Run one stream with ``R_POS = r_pos`` (or the whole register file ``r_pos``: token
        pruning's KV lengths); ``rows`` real rows (the rest is padding), ``decode_rows`` of them at
        positions ``>= decode_start``. Skips are counted per row, as the interpreter counts them:
        a row whose decision mask is set at a ``BR`` (skipped, or kept by the per-row select when
        other rows of the call run the block); without a mask, a taken branch skips every row."""
        s = self.prog.stream(stage, bucket)
        regs = [r_pos] + [0] * (isa.N_REGS - 1) if isinstance(r_pos, int) else list(r_pos)
        if self.executor is not None:
            self.executor(s, regs)
            return
        self.m.ensure_act(s.act_peak)
        self.m.regs = regs
        self.m.run(s.instrs, s.probes)
        self.trace.append((stage, bucket, list(self.m.taken)))
        self.decode_rows += decode_rows
        if not decode_rows:
            return
        from llmc.ir.structure import layer_of

        prefix = self.prog.graph.meta.get("layer_prefix")
        counts = {j: int(m[:rows].sum()) for j, m in self.m.masks.items()}
        counts.update({j: decode_rows for j in self.m.taken if j not in counts})
        for j, c in counts.items():
            layer = layer_of(s.instrs[j].tag, prefix)
            if layer is not None and layer < len(self.skipped):
                self.skipped[layer] += c

    def skip_stats(self) -> dict[str, object]:
        """``ffn_skip_fraction`` (skipped blocks / (decode rows x layers)) and the per-layer
        histogram, from the decisions the device took (as ``InterpLM.skip_stats``; see
        :meth:`_run`)."""
        total = self.decode_rows * len(self.skipped)
        return {
            "ffn_skip_fraction": sum(self.skipped) / total if total else 0.0,
            "ffn_skip_histogram": list(self.skipped),
            "ffn_decode_rows": self.decode_rows,
        }

    def _decode_rows(self, positions: np.ndarray) -> int:
        ds = self.prog.arch.max_tokens if self.decode_start is None else self.decode_start
        return int((np.asarray(positions) >= ds).sum())

    def output(self, name: str, rows: int) -> np.ndarray:
        reg = self.prog.regions[f"out:{name}"]
        row = reg.size // (4 * self.prog.arch.max_tokens)
        return self.hbm[reg.addr : reg.addr + 4 * rows * row].view(f32).reshape(rows, row).copy()

    def prefill(self, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Run a prompt from an empty cache; returns ``logits [L, vocab]``."""
        ids = np.asarray(ids).reshape(-1)
        n = ids.size
        chunks = self.prog.prefill_chunks(n)
        padded = chunks * self.prog.chunk
        pos = np.arange(n) if positions is None else np.asarray(positions).reshape(-1)
        # The padding rows of the last chunk repeat the last position: their results are never
        # read, but their gathers run, and must stay inside the tables (a learned position
        # table may end right after the last real position).
        pos = np.concatenate([pos, np.full(padded - n, pos[-1] if n else 0)])
        self._write_inputs(np.pad(ids, (0, padded - n)), pos)
        if self.prog.prune is not None:
            from llmc.fpga import prune

            lens = prune.prefill(self, ids, pos)
            self.pos = n
            return self.output(self._logits_name(), lens[-1])
        C = self.prog.chunk
        for c in range(chunks):
            real = pos[c * C : min(n, (c + 1) * C)]
            self._run("prefill", c, 0, len(real), self._decode_rows(real))
        self.pos = n
        return self.output(self._logits_name(), n)

    def decode(self, token: int, position: int | None = None) -> np.ndarray:
        """One generated token at position ``self.pos``; returns ``logits [vocab]``."""
        p = self.pos if position is None else position
        self._write_inputs(np.array([token]), np.array([p]))
        if self.prog.prune is not None:  # every segment's layers at their own KV length
            regs = self.lens + [0] * (isa.N_REGS - len(self.lens))
            bucket = self.prog.decode_bucket(max(self.lens) + 1)
            self._run("decode", bucket, regs, 1, self._decode_rows([p]))
            self.lens = [x + 1 for x in self.lens]
        else:
            bucket = self.prog.decode_bucket(self.pos + 1)
            self._run("decode", bucket, self.pos, 1, self._decode_rows([p]))
        self.pos += 1
        return self.output(self._logits_name(), 1)[0]

    def _logits_name(self) -> str:
        outs = [k[4:] for k in self.prog.regions if k.startswith("out:")]
        if not outs:
            raise LlmcError("the program has no output besides the KV cache")
        return outs[0]

    def cache(self, name: str, length: int | None = None) -> np.ndarray:
        """A cache region as ``[heads, length, head_dim]`` (``name`` is the past_* input)."""
        reg = self.prog.regions[f"kv:{name}"]
        v = self.prog.cache_inputs[name]
        heads, hd = int(v.type.shape[1]), int(v.type.shape[3])
        full = self.hbm[reg.addr : reg.addr + reg.size].view(f32)
        full = full.reshape(heads, self.prog.arch.max_tokens, hd)
        if length is None:
            seg = self.prog.kv_reg.get(f"kv:{name}", 0)
            length = self.lens[seg] if self.lens else self.pos
        return full[:, :length].copy()
