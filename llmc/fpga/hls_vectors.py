"""Test vectors for the HLS C simulation, recorded from the functional simulator.

A vector set is a run of the accelerator written down: the initial HBM image, the instruction
streams (as encoded), and the *steps*, each the host's writes into HBM (token ids, positions),
one stream with its ``R_POS``, and the HBM changes the functional simulator made. The test bench
rebuilds the expected image step by step and compares the whole of it, word for word, after every
stream; named dumps (the logits) are written out for the caller.

Program order and the streaming units (the note the C++ relies on). :class:`~llmc.fpga.funcsim.
Machine` gathers all operands of an instruction before it writes anything (per head for the MPE);
the HLS units stream: the SFU row by row (several passes per row), the MPE token row by token
row. The two agree exactly when no instruction reads, for a later row, an element it wrote for an
earlier row, and writes no element twice; an operand that *is* the output element for element
(in place: softmax over the scores, ``acc``) is safe, except for RoPE, which reads partners.
:func:`check_stream` verifies this, the 4-byte alignment of the HBM port, and the MPE limits,
for every stream that goes into a vector set, and names the instruction that breaks them.

Files (``vectors/``): ``manifest.txt`` (read by the bench), ``hbm_init.bin``, ``patches.bin``
(host writes and expected changes, referenced by offset), ``stream_<name>.bin``, ``dumps.json``
(dump shapes, for :func:`llmc.fpga.hls.csim`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmc.fpga import isa
from llmc.fpga.arch import FpgaArch
from llmc.fpga.funcsim import FuncRunner, Machine
from llmc.fpga.hls import VECTORS_VERSION, HlsConfig, HlsError
from llmc.fpga.isa import Instr
from llmc.fpga.program import Program

f32 = np.float32


@dataclass
class Step:
    """One stream run: host writes before it, the changes it made, ranges to dump after it."""

    stream: int  # index into TestVectors.streams
    r_pos: int
    host: list[tuple[int, bytes]] = field(default_factory=list)
    expect: list[tuple[int, bytes]] = field(default_factory=list)
    dumps: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)  # float32
    #: the whole register file (token pruning: per-segment KV lengths); None: R_POS alone
    regs: list[int] | None = None


@dataclass
class TestVectors:
    """Everything the test bench needs, and what the functional simulator produced."""

    __test__ = False  # not a pytest class

    buffers: tuple[int, int, int, int, int]  # HlsConfig.buffers of the build they are for
    hbm_init: np.ndarray  # uint8
    streams: list[tuple[str, bytes]]  # (name, encoded instructions)
    steps: list[Step]
    hbm_final: np.ndarray  # uint8: the functional simulator's image after the last step
    expected: dict[str, np.ndarray]  # the dumps as the functional simulator computed them
    tokens: list[int] = field(default_factory=list)  # prompt + generated (LM runs)
    taken: list[list[int]] = field(default_factory=list)  # BRs taken per step (LM runs)


# ----------------------------------------------------------------------------------------------
# recording


def _diff(old: np.ndarray, new: np.ndarray, gap: int = 32) -> list[tuple[int, bytes]]:
    """The byte ranges where ``new`` differs from ``old`` (ranges closer than ``gap`` merged)."""
    d = np.flatnonzero(old != new)
    if d.size == 0:
        return []
    cut = np.flatnonzero(np.diff(d) > gap)
    starts = np.concatenate([d[:1], d[cut + 1]])
    ends = np.concatenate([d[cut], d[-1:]]) + 1
    return [(int(s), new[s:e].tobytes()) for s, e in zip(starts, ends)]


class Recorder:
    """Records steps against a live HBM image (the one the functional simulator runs on)."""

    def __init__(self, hbm: np.ndarray, cfg: HlsConfig) -> None:
        self.hbm = hbm
        self.cfg = cfg
        self.init = hbm.copy()
        self.seen = hbm.copy()  # the image as of the end of the last step
        self.streams: list[tuple[str, bytes]] = []
        self.index: dict[str, int] = {}
        self.steps: list[Step] = []
        self.expected: dict[str, np.ndarray] = {}

    def step(
        self, name: str, instrs: Sequence[Instr], r_pos: int | list[int], run: Callable[[], None]
    ) -> None:
        if name not in self.index:
            check_stream(instrs, self.cfg, where=name)
            self.index[name] = len(self.streams)
            self.streams.append((name, isa.encode_stream(instrs)))
        regs = list(r_pos) if isinstance(r_pos, list) else None
        r0 = regs[0] if regs is not None else int(r_pos)
        st = Step(self.index[name], r0, host=_diff(self.seen, self.hbm), regs=regs)
        before = self.hbm.copy()
        run()
        st.expect = _diff(before, self.hbm)
        self.seen = self.hbm.copy()
        self.steps.append(st)

    def dump(self, name: str, addr: int, shape: tuple[int, ...]) -> None:
        n = int(np.prod(shape)) * 4
        self.steps[-1].dumps.append((name, addr, shape))
        self.expected[name] = self.hbm[addr : addr + n].view(f32).reshape(shape).copy()

    def finish(self, tokens: Sequence[int] = ()) -> TestVectors:
        return TestVectors(
            self.cfg.buffers,
            self.init,
            self.streams,
            self.steps,
            self.hbm.copy(),
            self.expected,
            list(tokens),
        )


def make_vectors(
    prog: Program, prompt: np.ndarray, decode_steps: int, decode_start: int | None = None
) -> TestVectors:
    """Run the functional simulator on a prompt (+ decode steps) and record everything the test
    bench needs: initial HBM image, the streams run in order with their R_POS, the expected HBM
    image / logits after each. ``decode_start`` (graphs with the input: ffn-skip) lets decode
    rows skip; the branches the functional simulator took are in ``TestVectors.taken``."""
    cfg = HlsConfig.for_program(prog)
    runner = FuncRunner(prog)
    runner.decode_start = decode_start
    taken: list[list[int]] = []
    rec = Recorder(runner.hbm, cfg)

    def execute(s, regs: list[int]) -> None:
        def run() -> None:  # what FuncRunner runs without an executor
            runner.m.ensure_act(s.act_peak)
            runner.m.regs = list(regs)
            runner.m.run(s.instrs)
            taken.append(list(runner.m.taken))

        pruned = prog.prune is not None
        rec.step(f"{s.stage}_{s.bucket}", s.instrs, list(regs) if pruned else regs[0], run)

    runner.executor = execute
    outs = [k for k in prog.regions if k.startswith("out:")]
    if not outs:
        raise HlsError("the program has no output besides the KV cache: nothing to compare")
    reg = prog.regions[outs[0]]
    row = reg.size // (4 * prog.arch.max_tokens)
    ids = np.asarray(prompt).reshape(-1)
    logits = runner.prefill(ids)
    rec.dump("prefill", reg.addr, (ids.size, row))
    tokens = [int(t) for t in ids]
    for i in range(decode_steps):
        tokens.append(int(np.argmax(logits[-1] if logits.ndim == 2 else logits)))
        logits = runner.decode(tokens[-1])
        rec.dump(f"decode_{i}", reg.addr, (row,))
    vec = rec.finish(tokens)
    vec.taken = taken
    return vec


def record_vectors(
    arch: FpgaArch, hbm: np.ndarray, runs: Sequence[tuple[str, Sequence[Instr], int]], k_max: int
) -> TestVectors:
    """Vectors of hand-made streams: ``runs`` of ``(name, instructions, R_POS)`` on a fresh
    machine with full-size buffers, starting from ``hbm`` (not modified)."""
    cfg = HlsConfig.for_arch(arch, k_max)
    m = Machine(hbm.copy(), cfg.act_words, arch)
    rec = Recorder(m.hbm, cfg)
    for name, instrs, r_pos in runs:

        def run(instrs=instrs, r_pos=r_pos) -> None:
            m.r_pos = r_pos
            m.run(list(instrs))

        rec.step(name, instrs, r_pos, run)
    return rec.finish()


# ----------------------------------------------------------------------------------------------
# what the streaming units need (module docstring)


def _rows2(addr: int, so: int, si: int, no: int, ni: int, length: int) -> np.ndarray:
    """Addresses ``[no*ni, length]`` of strided rows, rows in (outer, inner) order."""
    o = np.arange(no, dtype=np.int64)[:, None, None] * so
    i = np.arange(ni, dtype=np.int64)[None, :, None] * si
    lane = np.arange(length, dtype=np.int64)[None, None, :]
    return (addr + o + i + lane).reshape(no * ni, length)


def _hazard(writes: np.ndarray, reads: list[tuple[str, np.ndarray, bool, bool]]) -> str:
    """'' or what breaks row-by-row execution. ``writes[q]``: elements row q writes; each read
    is ``(name, addrs[q], same_row_ok, in_place_ok)``."""
    w = writes.reshape(-1)
    if w.size == 0:
        return ""
    order = np.argsort(w, kind="stable")
    ws = w[order]
    if ws.size > 1 and np.any(ws[1:] == ws[:-1]):
        return "writes an element twice"
    wrow = np.repeat(np.arange(writes.shape[0]), writes.shape[1])[order]
    lo, hi = int(ws[0]), int(ws[-1])
    for name, rd, same_ok, inplace_ok in reads:
        if rd.size == 0 or int(rd.max()) < lo or int(rd.min()) > hi:
            continue
        if inplace_ok and rd.shape == writes.shape and np.array_equal(rd, writes):
            continue
        flat = rd.reshape(-1)
        pos = np.clip(np.searchsorted(ws, flat), 0, ws.size - 1)
        hit = ws[pos] == flat
        if not hit.any():
            continue
        rrow = np.repeat(np.arange(rd.shape[0]), rd.shape[1])[hit]
        wq = wrow[pos[hit]]
        bad = rrow > wq if same_ok else rrow >= wq
        if bad.any():
            where = "an earlier row" if same_ok else "an earlier row or, not in place, the same"
            return f"operand {name} reads elements the instruction writes for {where}"
    return ""


def _check_sfu(f: dict[str, int]) -> str:
    fn = f.get("func", 0)
    if fn >= len(isa.SFU_NAMES):
        return f"unknown SFU function {fn}"
    if fn in (isa.S_TSCORE, isa.S_TOPK):
        return _check_prune_sfu(f)
    no, ni = max(1, f.get("n_outer", 0)), max(1, f.get("n_inner", 0))
    length = f.get("len", 0)
    flags = f.get("flags", 0)
    operands = ["a"]
    blen = length
    if fn == isa.S_RMSNORM and not flags & isa.SF_NO_B:
        operands.append("b")
    elif fn == isa.S_LAYERNORM:
        operands += [p for p, fl in (("b", isa.SF_NO_B), ("c", isa.SF_NO_C)) if not flags & fl]
    elif fn == isa.S_ROPE:
        operands += ["b", "c"]
        blen = f.get("ival0", 0)
    elif fn in (isa.S_ADD, isa.S_MUL, isa.S_SUB, isa.S_DIV, isa.S_GT, isa.S_GE, isa.S_LT, isa.S_LE):
        operands.append("b")
    elif fn == isa.S_SELECT:
        operands += ["b", "c"]
    alen = 1 if flags & isa.SF_ROW_A else length
    olen = 1 if fn in isa.SFU_REDUCE else length

    def rows(p: str, n: int) -> np.ndarray:
        return _rows2(f.get(f"{p}_addr", 0), f.get(f"{p}_so", 0), f.get(f"{p}_si", 0), no, ni, n)

    # a reduction reads its whole row before writing the row's one word: same row in place is fine
    reads = [
        (p, rows(p, alen if p == "a" else blen), fn in isa.SFU_REDUCE, fn != isa.S_ROPE)
        for p in operands
    ]
    return _hazard(rows("o", olen), reads)


def _check_prune_sfu(f: dict[str, int]) -> str:
    """Token pruning (isa.S_TSCORE, isa.S_TOPK): the output must not overlap an input (the units
    read every input before they write, funcsim too, but the check keeps streams simple)."""
    n = f.get("len", 0)
    if f.get("func") == isa.S_TSCORE:
        no, ni = max(1, f.get("n_outer", 0)), max(1, f.get("n_inner", 0))
        a = _rows2(f.get("a_addr", 0), f.get("a_so", 0), f.get("a_si", 0), no, ni, n)
        o = f.get("o_addr", 0)
        if int(a.min()) < o + n and o < int(a.max()) + 1:
            return "tscore: the accumulator overlaps the probabilities"
        return ""
    spans = [(f.get(k, 0), f.get(k, 0) + n) for k in ("b_addr", "o_addr", "c_addr")]
    spans.append((f.get("ival0", 0), f.get("ival0", 0) + 1))
    spans.append((f.get("ival1", 0), f.get("ival1", 0) + 2))
    for i, (s0, e0) in enumerate(spans):
        for s1, e1 in spans[i + 1 :]:
            if s0 < e1 and s1 < e0 and (s0, e0) != (s1, e1) and e0 - s0 > 2 and e1 - s1 > 2:
                return "topk: IDX operands overlap"
    return ""


def _check_mpe(f: dict[str, int], k_max: int) -> str:
    mm, k, n = f.get("m", 0), f.get("k", 0), f.get("n", 0)
    wbuf = f.get("wbuf", 0)
    if wbuf not in (isa.B_WGT, isa.B_KV):
        return f"MPE weights in {isa.BUF_NAMES[wbuf] if wbuf < 4 else wbuf}: only WGT and KV"
    if k % 16 or k > k_max:
        return f"k = {k} is not a multiple of 16 or above MPE_K_MAX = {k_max}"
    if wbuf == isa.B_WGT and (f.get("wfmt", 0) > isa.W_F32 or f.get("nnz", 0) > 16):
        return f"weight format {f.get('wfmt', 0)} / nnz {f.get('nnz', 0)} not supported"
    fuse = f.get("fuse", 0)
    for hh in range(max(1, f.get("heads", 0))):

        def rows(p: str, length: int, hh: int = hh) -> np.ndarray:
            base = f.get(f"{p}_addr", 0) + hh * f.get(f"{p}_hs", 0)
            return _rows2(base, f.get(f"{p}_rs", 0), 0, mm, 1, length)

        reads = [("x", rows("x", k), True, False)]
        if fuse in (isa.F_ADD, isa.F_MUL):
            reads.append(("aux", rows("aux", n), False, True))
        if f.get("acc", 0):
            reads.append(("acc", rows("o", n), False, True))
        why = _hazard(rows("o", n), reads)
        if why:
            return f"head {hh}: {why}"
    return ""


def _check_ldst(f: dict[str, int]) -> str:
    if f.get("buf", 0) > isa.B_KV:
        return f"buffer {f.get('buf', 0)} does not exist"
    odd = [k for k in ("hbm", "hbm_so", "hbm_si", "relb", "row_bytes") if f.get(k, 0) % 4]
    if f.get("buf", 0) == isa.B_WGT:
        odd += [k for k in ("chip", "chip_so", "chip_si") if f.get(k, 0) % 4]
    return f"{', '.join(odd)} not a multiple of 4 bytes (32-bit HBM port)" if odd else ""


def check_stream(instrs: Sequence[Instr], cfg: HlsConfig, where: str = "") -> None:
    """Raise :class:`HlsError` unless the HLS units compute exactly what the functional
    simulator computes for ``instrs`` (module docstring)."""
    for j, ins in enumerate(instrs):
        if ins.op in (isa.LD, isa.ST):
            why = _check_ldst(ins.f)
        elif ins.op in (isa.MM, isa.MV):
            why = _check_mpe(ins.f, cfg.k_max)
        elif ins.op == isa.SFU:
            why = _check_sfu(ins.f)
        elif ins.op == isa.SYNC:
            last = j == len(instrs) - 1
            why = "" if last or not ins.get("end") else "SYNC end before the last instruction"
        elif ins.op == isa.BR:
            k = ins.get("skip")
            why = (
                f"BR reads ACT word {ins.get('addr')} of {cfg.act_words}"
                if ins.get("addr") >= cfg.act_words
                else ""
                if j + 1 + k < len(instrs)
                else f"BR skips {k} instructions past the end of the stream"
            )
        else:
            why = f"unknown opcode {ins.op}"
        if why:
            raise HlsError(
                f"{where or 'stream'} instruction {j} ({ins!r}): {why}; the HLS units would "
                "not compute what the functional simulator does (see llmc.fpga.hls_vectors)"
            )


# ----------------------------------------------------------------------------------------------
# files


def write_vectors(vec: TestVectors, vdir: Path, cfg: HlsConfig) -> list[str]:
    """Write ``vec`` for the bench of a build with ``cfg``; returns the files (relative)."""
    if tuple(vec.buffers) != cfg.buffers:
        raise HlsError(
            f"the test vectors were recorded for buffers {vec.buffers} but the project has "
            f"{cfg.buffers} (act, idx, wgt, kv words / bytes, MPE_K_MAX): record them with the "
            "same program / arch"
        )
    vdir = Path(vdir)
    vdir.mkdir(parents=True, exist_ok=True)
    files = ["manifest.txt", "hbm_init.bin", "patches.bin", "dumps.json"]
    vec.hbm_init.tofile(vdir / "hbm_init.bin")
    blob = bytearray()
    lines = [
        f"llmc-vectors {VECTORS_VERSION}",
        "config " + " ".join(map(str, cfg.buffers)),
        f"hbm {vec.hbm_init.size} hbm_init.bin",
        "blob patches.bin",
    ]
    for name, raw in vec.streams:
        fname = f"stream_{name}.bin"
        (vdir / fname).write_bytes(raw)
        files.append(fname)
        lines.append(f"stream {name} {len(raw) // isa.INSTR_BYTES} {fname}")
    shapes: dict[str, list[int]] = {}
    for st in vec.steps:
        lines.append(f"step {st.stream} {st.r_pos}")
        if st.regs is not None:  # token pruning: registers 1 .. N_REGS - 1
            lines.append("regs " + " ".join(str(int(x)) for x in st.regs[1 : isa.N_REGS]))
        for kind, patches in (("host", st.host), ("expect", st.expect)):
            for addr, data in patches:
                lines.append(f"{kind} {addr} {len(data)} {len(blob)}")
                blob += data
        for name, addr, shape in st.dumps:
            lines.append(f"dump {name} {addr} {int(np.prod(shape)) * 4}")
            shapes[name] = list(shape)
    (vdir / "patches.bin").write_bytes(bytes(blob))
    (vdir / "manifest.txt").write_text("\n".join(lines) + "\n")
    (vdir / "dumps.json").write_text(json.dumps(shapes, indent=1) + "\n")
    return files
