"""The FlightLLM-style instruction set: six instruction types plus a branch, 512-bit encoding.

Units and instruction types::

    LOAD   LD    HBM/DDR -> on-chip buffer (strided, two-level rows; gather by token id)
    STORE  ST    on-chip buffer -> HBM (strided; address may move with the runtime length)
    MPE    MM    matrix-matrix (prefill): sparse DSP chain, fused activation / element-wise op
           MV    matrix-vector (decode): the same datapath, one token
    SFU    SFU   special functions: rms/layer norm, softmax (masked), SiLU/GELU, add/mul, RoPE
    CTRL   SYNC  barrier: every unit drains; ``end`` finishes the stream
           BR    predicated forward branch: when the ACT word at ``addr`` is not 0.0 (``neg``:
                 is 0.0), skip the next ``skip`` instructions (``cond``, :mod:`llmc.fpga.lower_cond`)

Every instruction carries ``wait`` and ``release`` bits, one per unit (LOAD, MPE, SFU, STORE):
units run their own instructions in program order, and instruction ``j`` on unit B that needs a
result of instruction ``i`` on unit A waits for a token that ``i`` releases to B (tokens between a
pair of units are consumed in FIFO order). :func:`insert_dependencies` computes the bits from the
buffer regions each instruction reads and writes; both simulators and the HLS top level read the
same bits (the functional simulator and the C++ top level run in program order, which the bits
make equivalent).

Buffers: ``IDX`` (int32 words), ``ACT`` and ``KV`` (float32 words in the functional model),
``WGT`` (bytes). HBM addresses are logical byte addresses (the physical interleaving across
channels is in ``channel``/``nch``, read only by the cycle model). The runtime register
``R_POS`` (tokens already in the KV cache) is set by the host before a stream runs; ``rel`` fields
add ``R_POS * rel`` to an HBM address, so one stream serves every position of its length bucket.

Encoding: 64 bytes, little-endian bit fields in the order of :data:`FIELDS` (the C++ decoder is
generated from the same table, see :mod:`llmc.fpga.hls`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from llmc.errors import LlmcError

INSTR_BYTES = 64

# opcodes
LD, ST, MM, MV, SFU, SYNC, BR = 1, 2, 3, 4, 5, 6, 7
OP_NAMES = {LD: "LD", ST: "ST", MM: "MM", MV: "MV", SFU: "SFU", SYNC: "SYNC", BR: "BR"}
CONTROL = (SYNC, BR)  # no unit: both drain every unit first (see insert_dependencies)

# units (bit positions in wait/release)
U_LOAD, U_MPE, U_SFU, U_STORE = 0, 1, 2, 3
UNIT_NAMES = ("load", "mpe", "sfu", "store")
UNIT_OF = {LD: U_LOAD, ST: U_STORE, MM: U_MPE, MV: U_MPE, SFU: U_SFU}

# buffers
B_IDX, B_ACT, B_WGT, B_KV = 0, 1, 2, 3
BUF_NAMES = ("IDX", "ACT", "WGT", "KV")
HBM = "HBM"

# load/store data classes (what the cycle model scales by the hardware element width)
D_WEIGHT, D_ACT, D_INDEX = 0, 1, 2
# load modes: rows in order, gather (row r from IDX[idx + r]), int32 words -> float32 (ACT)
M_ROWS, M_GATHER, M_I2F = 0, 1, 2
CH_DDR = 63  # channel id of the DDR spill memory

# weight formats
W_INT4, W_INT8, W_F16, W_BF16, W_F32 = 0, 1, 2, 3, 4
WFMT_NAMES = ("int4", "int8", "f16", "bf16", "f32")
WFMT_BITS = (4, 8, 16, 16, 32)

# fused MPE epilogues
F_NONE, F_SILU, F_GELU, F_GELU_TANH, F_ADD, F_MUL, F_RELU = 0, 1, 2, 3, 4, 5, 6
FUSE_NAMES = ("none", "silu", "gelu", "gelu_tanh", "add", "mul", "relu")

# SFU functions
(
    S_COPY,
    S_RMSNORM,
    S_LAYERNORM,
    S_SOFTMAX,
    S_SILU,
    S_GELU,
    S_GELU_TANH,
    S_RELU,
    S_SIGMOID,
    S_TANH,
    S_EXP,
    S_ADD,
    S_MUL,
    S_SUB,
    S_ROPE,
    S_ADDC,
    S_MULC,
    S_SQRT,
    S_DIV,
    S_MAXC,
    S_RSUBC,
    S_GT,
    S_GE,
    S_LT,
    S_LE,
    S_GTC,
    S_GEC,
    S_LTC,
    S_LEC,
    S_SELECT,
    S_SUM,
    S_MAX,
) = range(32)
SFU_NAMES = (
    "copy",
    "rmsnorm",
    "layernorm",
    "softmax",
    "silu",
    "gelu",
    "gelu_tanh",
    "relu",
    "sigmoid",
    "tanh",
    "exp",
    "add",
    "mul",
    "sub",
    "rope",
    "addc",
    "mulc",
    "sqrt",
    "div",
    "maxc",
    "rsubc",
    "gt",
    "ge",
    "lt",
    "le",
    "gtc",
    "gec",
    "ltc",
    "lec",
    "select",
    "sum",
    "max",
)
# comparisons give 1.0 / 0.0 (bools live in ACT as floats); ...C compares with fparam; SELECT is
# ``a != 0 ? b : c``; SUM and MAX reduce each row of ``len`` to one word at the row's output
# address (SUM left to right from +0.0, MAX from -inf with NaN sticking).
SFU_COMPARE = (S_GT, S_GE, S_LT, S_LE, S_GTC, S_GEC, S_LTC, S_LEC)
SFU_REDUCE = (S_SUM, S_MAX)
# SFU flags. Softmax rows are (outer, inner = query i); key t is visible when t < len and:
# CAUSAL t <= R_POS + ival0 + i; KEYLEN t < R_POS + ival0 + n_inner (the filled cache);
# window ival1 > 0: R_POS + ival0 + i - t < ival1. INTERLEAVED: RoPE rotates pairs. NO_B / NO_C:
# norms without weight / bias.
SF_CAUSAL, SF_INTERLEAVED, SF_NO_B, SF_NO_C, SF_KEYLEN = 1, 2, 4, 8, 16
# ROW_A: operand a is one word per row, used for every element of the row (a per-row mask)
SF_ROW_A = 32

_HEAD = (("op", 4), ("wait", 4), ("rel", 4))
FIELDS: dict[int, tuple[tuple[str, int], ...]] = {
    LD: _HEAD
    + (
        ("buf", 3),
        ("mode", 2),
        ("hbm", 40),
        ("chip", 28),
        ("n_outer", 16),
        ("n_inner", 20),
        ("row_bytes", 28),
        ("hbm_so", 40),
        ("hbm_si", 32),
        ("chip_so", 28),
        ("chip_si", 28),
        ("relb", 32),
        ("idx", 20),
        ("channel", 6),
        ("nch", 7),
        ("dclass", 2),
    ),
    MM: _HEAD
    + (
        ("m", 20),
        ("k", 20),
        ("n", 20),
        ("heads", 10),
        ("h0", 10),
        ("hgroup", 10),
        ("x_addr", 28),
        ("x_rs", 28),
        ("x_hs", 28),
        ("wbuf", 3),
        ("w_addr", 28),
        ("w_rs", 28),
        ("w_hs", 28),
        ("w_trans", 1),
        ("wfmt", 3),
        ("nnz", 5),
        ("group", 20),
        ("bias", 1),
        ("o_addr", 28),
        ("o_rs", 28),
        ("o_hs", 28),
        ("acc", 1),
        ("fuse", 3),
        ("aux_addr", 28),
        ("aux_rs", 28),
        ("aux_hs", 28),
    ),
    SFU: _HEAD
    + (
        ("func", 6),
        ("n_outer", 16),
        ("n_inner", 20),
        ("len", 20),
        ("a_addr", 28),
        ("a_so", 28),
        ("a_si", 28),
        ("b_addr", 28),
        ("b_so", 28),
        ("b_si", 28),
        ("c_addr", 28),
        ("c_so", 28),
        ("c_si", 28),
        ("o_addr", 28),
        ("o_so", 28),
        ("o_si", 28),
        ("fparam", 32),
        ("ival0", 20),
        ("ival1", 20),
        ("flags", 8),
    ),
    SYNC: _HEAD + (("end", 1),),
    BR: _HEAD + (("addr", 28), ("skip", 24), ("neg", 1)),
}
FIELDS[ST] = FIELDS[LD]
FIELDS[MV] = FIELDS[MM]
for _op, _fs in FIELDS.items():
    assert sum(b for _, b in _fs) <= INSTR_BYTES * 8, (_op, sum(b for _, b in _fs))


class IsaError(LlmcError):
    """An instruction field does not fit its encoding, or a stream is malformed."""


class Instr:
    """One instruction: opcode, dependency bits, fields; ``reads``/``writes`` are the regions
    ``(space, start, end)`` it touches (compiler bookkeeping, not encoded); ``tag`` names the IR
    node it came from (for per-layer breakdowns)."""

    __slots__ = ("op", "wait", "rel", "f", "reads", "writes", "tag")

    def __init__(
        self,
        op: int,
        f: dict[str, int],
        reads: Sequence[tuple[Any, int, int]] = (),
        writes: Sequence[tuple[Any, int, int]] = (),
        tag: str = "",
    ) -> None:
        self.op = op
        self.wait = 0
        self.rel = 0
        self.f = f
        self.reads = reads
        self.writes = writes
        self.tag = tag

    @property
    def unit(self) -> int:
        return UNIT_OF.get(self.op, -1)

    def get(self, name: str) -> int:
        return self.f.get(name, 0)

    def __repr__(self) -> str:
        deps = f" wait={self.wait:04b} rel={self.rel:04b}" if self.wait or self.rel else ""
        body = " ".join(f"{k}={v}" for k, v in self.f.items() if v)
        return f"{OP_NAMES[self.op]}{deps} {body}" + (f"  ; {self.tag}" if self.tag else "")


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def encode(ins: Instr) -> bytes:
    word = 0
    pos = 0
    vals = dict(ins.f)
    vals["op"], vals["wait"], vals["rel"] = ins.op, ins.wait, ins.rel
    for name, bits in FIELDS[ins.op]:
        v = int(vals.pop(name, 0))
        if v < 0 or v >= 1 << bits:
            raise IsaError(
                f"{OP_NAMES[ins.op]}.{name} = {v} does not fit in {bits} bits"
                + (f" ({ins.tag})" if ins.tag else "")
            )
        word |= v << pos
        pos += bits
    if vals:
        raise IsaError(f"{OP_NAMES[ins.op]} has no field(s) {sorted(vals)}")
    return word.to_bytes(INSTR_BYTES, "little")


def decode(raw: bytes) -> Instr:
    word = int.from_bytes(raw[:INSTR_BYTES], "little")
    op = word & 0xF
    if op not in FIELDS:
        raise IsaError(f"unknown opcode {op}")
    vals: dict[str, int] = {}
    pos = 0
    for name, bits in FIELDS[op]:
        vals[name] = (word >> pos) & ((1 << bits) - 1)
        pos += bits
    ins = Instr(op, {k: v for k, v in vals.items() if k not in ("op", "wait", "rel")})
    ins.wait, ins.rel = vals["wait"], vals["rel"]
    return ins


def encode_stream(instrs: Iterable[Instr]) -> bytes:
    return b"".join(encode(i) for i in instrs)


def decode_stream(raw: bytes) -> list[Instr]:
    if len(raw) % INSTR_BYTES:
        raise IsaError(f"stream of {len(raw)} bytes is not a multiple of {INSTR_BYTES}")
    return [decode(raw[i : i + INSTR_BYTES]) for i in range(0, len(raw), INSTR_BYTES)]


# ----------------------------------------------------------------------------------------------
# dependencies


def insert_dependencies(instrs: list[Instr]) -> None:
    """Set ``wait``/``release`` bits from the regions instructions read and write.

    For instruction ``j`` on unit B and, per other unit A, the latest earlier instruction ``i`` on
    A that it conflicts with (RAW, WAR or WAW on an overlapping region): unless B already consumed
    a token from an A-instruction at or after ``i``, ``i`` releases a token to B and ``j`` waits
    for it. Tokens between a pair of units are then released and consumed in the same order, so
    the FIFO semantics of the hardware queues hold. Same-unit order is implicit. ``SYNC`` orders
    everything before it against everything after it, and so does ``BR``: a skipped
    instruction must neither wait for nor release a token that crosses the branch, so the
    lowering also ends every branch body with a ``SYNC`` (the branch target).
    """
    covered = [[-1] * 4 for _ in range(4)]  # covered[A][B]: latest A-instr whose token B consumed
    # space -> {(start, end): [writer unit, writer index, [latest reader index per unit]]}
    records: dict[Any, dict[tuple[int, int], list[Any]]] = {}
    barrier = -1
    for j, ins in enumerate(instrs):
        if ins.op in CONTROL:  # a branch may skip what follows: no token crosses it either
            barrier = j
            records.clear()
            continue
        b = ins.unit
        need = [-1, -1, -1, -1]
        for accesses, is_write in ((ins.reads, False), (ins.writes, True)):
            for space, s, e in accesses:
                recs = records.get(space)
                if not recs:
                    continue
                for (rs, re), ent in recs.items():
                    if rs < e and s < re:
                        wu = ent[0]
                        if wu >= 0 and wu != b and ent[1] > need[wu]:
                            need[wu] = ent[1]
                        if is_write:
                            rd = ent[2]
                            for u in range(4):
                                if u != b and rd[u] > need[u]:
                                    need[u] = rd[u]
        for a in range(4):
            i = need[a]
            if i > barrier and covered[a][b] < i:
                instrs[i].rel |= 1 << b
                ins.wait |= 1 << a
                covered[a][b] = i
        for space, s, e in ins.reads:
            recs = records.setdefault(space, {})
            ent = recs.get((s, e))
            if ent is None:
                recs[(s, e)] = [-1, -1, [j if u == b else -1 for u in range(4)]]
            else:
                ent[2][b] = j
        for space, s, e in ins.writes:
            recs = records.setdefault(space, {})
            # A write dominates older records it covers: later conflicts go through it.
            dead = [k for k in recs if s <= k[0] and k[1] <= e]
            for k in dead:
                del recs[k]
            recs[(s, e)] = [b, j, [-1, -1, -1, -1]]


def check_tokens(instrs: Sequence[Instr]) -> None:
    """Every wait has a matching earlier release and no token is left over (raises IsaError)."""
    pending = [[0] * 4 for _ in range(4)]
    for j, ins in enumerate(instrs):
        b = ins.unit
        for a in range(4):
            if ins.wait >> a & 1:
                if pending[a][b] == 0:
                    raise IsaError(
                        f"instruction {j} ({OP_NAMES[ins.op]}) waits on {UNIT_NAMES[a]} with no "
                        "token released: the stream would deadlock"
                    )
                pending[a][b] -= 1
        for c in range(4):
            if ins.rel >> c & 1:
                pending[b][c] += 1
    left = [(UNIT_NAMES[a], UNIT_NAMES[c]) for a in range(4) for c in range(4) if pending[a][c]]
    if left:
        raise IsaError(f"tokens released but never consumed: {left}")


# ----------------------------------------------------------------------------------------------
# token pruning (branch fpga-prune; see docs/fpga.md, "Token pruning"). Kept apart from the
# tables above so other additions merge cleanly.
#
# Registers: ``R_POS`` is register 0 of a small register file; the layers after a model's k-th
# pruning point keep their own KV length in register k. ``preg`` (LD/ST: the register that
# ``relb`` multiplies; SFU softmax: the register of the KEYLEN/CAUSAL masks) selects it; 0 is
# R_POS, so streams of unpruned models encode exactly as before.
#
# Two SFU functions (fields reinterpreted as below; every address named IDX is a word address in
# the IDX buffer, the rest ACT):
#
# ``tscore``  attention received, accumulated: rows (outer = head, inner = query row) of
#             softmax probabilities ``a`` [n_outer, n_inner, len]; inner row ``i`` is global row
#             ``c_addr + i``; the window is the global rows ``[r - w, r)`` (``w = ival1``, 0: all
#             rows; ``r = IDX[ival0]``, the real row count). ``o[0:len]`` = (flag ACC ? o : 0) +
#             the window rows, summed in (outer, inner) order in float32.
# ``topk``    the keep mask of ``keep_rows`` (method topk) as an index list: scores ``a[0:r]``
#             (``r = IDX[ival0]``), positions ``IDX[b_addr + j]``; forced rows: the last
#             ``n_outer`` (recent) and, with flag SINK, those at position 0; ``c = min(r,
#             max(forced, IDX[ival1]))`` rows survive: forced first, then by descending score,
#             ties to the lower row. Writes the kept rows in ascending order to ``IDX[o_addr +
#             j]`` and their positions to ``IDX[c_addr + j]`` for ``j < c``, then repeats the
#             last kept row / position up to ``len`` (padding rows), and ``c`` to
#             ``IDX[ival1 + 1]``. ``n_inner`` selects the order: 0 the scores ``a``, 2 the
#             position hash (score=random: ``position_hash(position, seed = fparam)``, ``a`` not
#             read), 1 keep_rows' ``uniform`` rule (forced rows, then ``c - forced`` of the others
#             evenly spaced: the ``floor((i + 0.5) * free / need)``-th, in float64).
#
# Flags (the SFU's 8 flag bits are per function): tscore ACC, topk SINK.
S_TSCORE, S_TOPK = len(SFU_NAMES), len(SFU_NAMES) + 1
SFU_NAMES = SFU_NAMES + ("tscore", "topk")
SF_ACC, SF_SINK = 64, 128
TOPK_SCORES, TOPK_UNIFORM, TOPK_HASH = 0, 1, 2
N_REGS = 16
FIELDS[LD] = FIELDS[LD] + (("preg", 4),)
FIELDS[ST] = FIELDS[LD]
FIELDS[SFU] = FIELDS[SFU] + (("preg", 4),)
for _op, _fs in FIELDS.items():
    assert sum(b for _, b in _fs) <= INSTR_BYTES * 8, (_op, sum(b for _, b in _fs))
