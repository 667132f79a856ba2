"""CPU decode kernels on AVX2 (``vpmaddubsw`` u8 x s8 -> s16 pairs, ``vpmaddwd`` -> s32).

The AVX2 counterparts of :mod:`llmc.backends.kernels.cpu_vnni`, for hosts without AVX-512
(Haswell..Comet Lake, Zen 2/3; Alder Lake client cores). The weight layout is the VNNI quad
arrangement with a 32-output panel: ``[ceil(N/32), K'/4, 32, 4]`` bytes (q4: ``[.., K'/8, 32,
4]``, two quads per byte), so one 32-byte ``ymm`` load holds 4 consecutive input elements of 8
outputs and a panel is 4 loads, reusing one broadcast of 4 activation bytes.

``vpmaddubsw`` multiplies an unsigned by a signed byte and adds adjacent products into a
*saturating* int16, so each kernel keeps every pair sum below 2^15 exactly:

- :func:`q4_avx2`: nibbles (u8, 0..15) times activation digits (s8, -127..127): a pair is at most
  ``2 * 15 * 127``; the low- and high-nibble products of one byte are added as int16 (at most
  ``4 * 15 * 127``) before ``vpmaddwd`` widens them.
- :func:`q8w_avx2`: 8-bit weight-only codes ``u = code - qmin`` (0..255) are made signed
  (``s = u - 128``) and the sign moves to the activation (llama.cpp's trick):
  ``|s| * (d * sign(s))`` with ``vpsignb``; a pair is at most ``2 * 128 * 127``. The digits
  never reach -128 (:func:`act_digits` uses balanced base-255 digits), so negating one is exact.
- :func:`w8a8_avx2`: the int8 activation codes (-127..127, ``act_quant``) take the weight's sign,
  the weight its magnitude: the exact int32 dot product of the portable kernel for any int8
  weight (``|-128| = 128`` is a valid u8), no ``wsum`` correction.

The activation row is quantized per block as in the VNNI kernels (``parts`` digits per element,
3 = float32-level error), with balanced base-255 digits in -127..127 (:func:`act_digits`).
Rows are processed one after another inside a panel (decode has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.cpu_group import Buf, grouped_func, int8_args, weight_only_args, widths
from llmc.backends.kernels.cpu_vnni import act_block, block_codes, k_blocks, padded_k, supports_q4
from llmc.backends.kernels.memo import kernel_memo

__all__ = [
    "NB",
    "act_block",
    "act_digits",
    "padded_k",
    "q4_avx2",
    "q8w_avx2",
    "supports_q4",
    "w8a8_avx2",
    "weight_only_avx2",
]

F32 = "float32"
NB = 32  # outputs per panel: 4 ymm accumulators of 8 int32
PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
PMADDWD = "llvm.x86.avx2.pmadd.wd"
PSIGNB = "llvm.x86.avx2.psign.b"
BASE = 255  # digit base: balanced digits in -127..127


def act_digits(x: te.Tensor, k_pad: int, ab: int, parts: int) -> tuple[te.Tensor, te.Tensor]:
    """Per block of ``ab`` elements: ``x ~= sum_j digit_j * s_j``, digits in -127..127.

    Returns ``digits [M, parts, k_pad]`` (int8; zero past K) and ``s [M, k_pad/ab, parts]``.
    ``q = round(x / s0 * 255^(parts-1))`` (``s0 = amax/127``) split into balanced base-255
    digits, most significant first, with scales ``s0 * 255^-j``. Unlike the VNNI kernels' base
    256, no digit is -128, so ``vpsignb`` can negate any of them exactly.
    """
    m = x.shape[0]
    nblk = k_pad // ab
    mult = float(BASE ** (parts - 1))
    s0, qi = block_codes(x, k_pad, ab, mult, "avx2")

    def digit(i: Any, j: Any, k: Any) -> Any:
        v = qi[i, k]
        ds = []
        for _ in range(parts - 1):  # least significant first
            d = tirx.floormod(v + 127, BASE) - 127
            ds.append(d)
            v = tirx.floordiv(v - d, BASE)
        ds.append(v)
        ds.reverse()  # most significant first
        out = ds[-1]
        for jj in range(parts - 2, -1, -1):
            out = tirx.Select(j == jj, ds[jj], out)
        return out.astype("int8")

    digits = te.compute((m, parts, k_pad), digit, name="avx2_digits")

    def scale(i: Any, b: Any, j: Any) -> Any:
        out = tirx.const(1.0, F32)
        for jj in range(parts):
            out = tirx.Select(j == jj, tirx.const(float(BASE ** (parts - 1 - jj)), F32), out)
        return s0[i, b] / tirx.const(mult, F32) * out

    return digits, te.compute((m, nblk, parts), scale, name="avx2_scale")


def _bcast4(buf: Any, idx: list[Any]) -> Any:
    """Four int8 at ``idx`` as one int32 broadcast to 8 lanes (32 bytes)."""
    w = T.broadcast(T.reinterpret(buf.vload(idx, "int8x4"), dtype="int32"), 8)
    return T.reinterpret(w, dtype="int8x32")


def _maddubs(u: Any, s: Any) -> Any:
    """``vpmaddubsw``: u8 x s8, adjacent products summed into 16 saturating int16."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(PMADDUBSW), u, s, dtype="int16x16")


def _widen(s16: Any) -> Any:
    """``vpmaddwd`` with ones: 16 int16 -> 8 int32 (adjacent pairs summed)."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(PMADDWD), s16, T.broadcast(T.int16(1), 16), dtype="int32x8"
    )


def _sign(a: Any, b: Any) -> Any:
    """``vpsignb``: ``a`` negated where ``b < 0``, zeroed where ``b == 0``."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(PSIGNB), a, b, dtype="int8x32")


def _r(q: Any) -> Any:
    return T.ramp(q * 8, 1, 8)


def _signed_dot(w: Any, xb: Any) -> Any:
    """The 8 int32 sums of signed bytes ``w`` times ``xb`` (int8x32 each), exact for
    ``xb != -128``: ``|w| * (xb * sign(w))`` (``vpsignb`` twice, ``vpmaddubsw``, ``vpmaddwd``)."""
    return _widen(_maddubs(_sign(w, w), _sign(xb, w)))


@T.macro
def _quad_rows(acc, codes, p, kb, xb):
    """``acc[0:32] +=`` the products of the int8 byte row ``codes[p, kb]`` (4 k of 32 outputs)
    and ``xb`` (4 activation bytes broadcast, :func:`_bcast4`)."""
    for q in T.unroll(4):
        w = T.meta_var(codes.vload([p, kb, q * 8, 0], "int8x32"))
        acc[_r(q)] = acc[_r(q)] + _signed_dot(w, xb)


@dataclass(frozen=True)
class Unpack:
    """How a weight-only AVX2 kernel turns 32-byte code loads into int32 products. A byte row
    holds ``k_per_row`` input elements of 8 outputs (8: two nibbles per byte, 4: one code per
    byte); :meth:`load` reads one (bound once per row), :meth:`dot` multiplies it by the
    activation digits of row ``row`` (``xd[i, j, row * k_per_row + e]``)."""

    name: str
    k_per_row: int

    def load(self, codes: Any, idx: list[Any]) -> Any:
        """The byte row at ``idx``: the nibbles as they are (uint8x32), or the signed codes
        ``s = u - 128`` (int8x32) of one code per byte."""
        raw = codes.vload(idx, "uint8x32")
        if self.name == "q4":
            return raw
        return T.reinterpret(T.bitwise_xor(raw, T.broadcast(T.uint8(128), 32)), dtype="int8x32")

    def dot(self, w: Any, xd: Any, i: Any, j: Any, row: Any) -> Any:
        """The 8 int32 sums of one byte row (``vpmaddubsw`` pairs widened by ``vpmaddwd``)."""
        k = row * self.k_per_row
        if self.name == "q4":
            # nibbles (u8 0..15) x digits: the low and high products added as int16
            lo = T.reinterpret(T.bitwise_and(w, T.broadcast(T.uint8(15), 32)), dtype="int8x32")
            hi = T.reinterpret(T.shift_right(w, T.broadcast(T.uint8(4), 32)), dtype="int8x32")
            return _widen(
                _maddubs(lo, _bcast4(xd, [i, j, k])) + _maddubs(hi, _bcast4(xd, [i, j, k + 4]))
            )
        # the sign moves to the activation: |s| * (d * sign(s))
        return _signed_dot(w, _bcast4(xd, [i, j, k]))

    def group_term(self, t: Any, of: Any, gs: Any) -> Any:
        """A group's float sum from the digit products ``t``, the offset and the group sum
        (one code per byte: ``sum x*u = sum x*s + 128 * sum x``)."""
        if self.name == "q4":
            return t - of * gs
        return t + (T.broadcast(T.float32(128), 8) - of) * gs


#: int4: byte (b, n, i) holds nibble ``k = 8b+i`` (low) and ``k = 8b+4+i`` (high)
Q4 = Unpack("q4", 8)
#: 5..8-bit: one code per byte, ``u = code - qmin`` (0..255); ``sum x*u = sum x*s + 128 sum x``
Q8W = Unpack("q8w", 4)


@kernel_memo
def weight_only_avx2(
    unpack: Unpack,
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """``C[M, N] = X @ W.T`` for a weight-only W in 32-output quad panels, codes unpacked by
    ``unpack``: ``codes [P, K'/k_per_row, 32, 4]``, ``panel32`` scales/offsets.

    Arguments as :func:`llmc.backends.kernels.cpu_vnni.weight_only_vnni` with this module's
    :func:`act_digits`: ``digits [M, parts, K']``, ``xs [M, K'/AB, parts]``, ``gsum [M,
    K/group]``, ``codes``, ``scale``/``offset [P, K/group, 32]``; float32 result. A tuple
    ``n_dim`` gives one grouped call (the activation arguments, then ``codes``, ``scale``,
    ``offset`` of each weight, then one result per weight).
    """
    n_dims = (n_dim,) if isinstance(n_dim, int) else tuple(n_dim)
    _, ab, kp, ngroups, nblk, bpg = k_blocks(k_dim, group)
    kr = unpack.k_per_row
    steps = ab // kr  # byte rows per block
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"{unpack.name}_avx2_k{k_dim}_{widths(n_dims)}_g{group}_p{parts}"

    @T.macro
    def panel(xd, xs, gs, codes, scale, offset, c, p, n_dim):
        for i in range(rows):
            with T.sblock("panel"):
                T.reads(xd[i, 0:parts, 0:kp], codes[p, 0 : kp // kr, 0:NB, 0:4])
                T.writes(c[i, p * NB : p * NB + NB])
                y = T.alloc_buffer((NB,), F32, scope=SCRATCH)
                t = T.alloc_buffer((NB,), F32, scope=SCRATCH)
                acc = T.alloc_buffer((parts * NB,), "int32", scope=SCRATCH)
                for q in T.unroll(4):
                    y[_r(q)] = T.broadcast(T.float32(0), 8)
                for gi in range(ngroups):
                    for q in T.unroll(4):
                        t[_r(q)] = T.broadcast(T.float32(0), 8)
                    for bi in range(bpg):
                        for a in T.unroll(parts * 4):
                            acc[_r(a)] = T.broadcast(T.int32(0), 8)
                        for kb in range(steps):
                            row = T.meta_var((gi * bpg + bi) * steps + kb)
                            for q in T.unroll(4):
                                w = T.meta_var(unpack.load(codes, [p, row, q * 8, 0]))
                                for j in T.unroll(parts):
                                    acc[_r(j * 4 + q)] = acc[_r(j * 4 + q)] + unpack.dot(
                                        w, xd, i, j, row
                                    )
                        for j in T.unroll(parts):
                            for q in T.unroll(4):
                                t[_r(q)] = t[_r(q)] + T.Cast(
                                    "float32x8", acc[_r(j * 4 + q)]
                                ) * T.broadcast(xs[i, gi * bpg + bi, j], 8)
                    for q in T.unroll(4):
                        sc = T.meta_var(
                            T.Cast("float32x8", scale.vload([p, gi, q * 8], s_dtype + "x8"))
                        )
                        of = T.meta_var(
                            T.Cast("float32x8", offset.vload([p, gi, q * 8], s_dtype + "x8"))
                        )
                        y[_r(q)] = y[_r(q)] + sc * unpack.group_term(
                            t[_r(q)], of, T.broadcast(gs[i, gi], 8)
                        )
                for lane in T.vectorized(NB):
                    if p * NB + lane < n_dim:
                        c[i, p * NB + lane] = y[lane]

    panels, shared, weights, outs = weight_only_args(
        rows, n_dims, NB, kp // kr, parts, kp, nblk, ngroups, s_dtype
    )
    return grouped_func(name, shared, weights, outs, panels, panel)


def q4_avx2(
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """int4 weight-only (:data:`Q4`): ``codes [P, K'/8, 32, 4]``; see :func:`weight_only_avx2`."""
    return weight_only_avx2(Q4, k_dim, n_dim, group, parts, s_dtype, m)


def q8w_avx2(
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
) -> tirx.PrimFunc:
    """5..8-bit weight-only (:data:`Q8W`): ``codes [P, K'/4, 32, 4]`` uint8 (byte (b, n, i) =
    ``code[n, 4b+i] - qmin``), ``offset = zero - qmin``; see :func:`weight_only_avx2`."""
    return weight_only_avx2(Q8W, k_dim, n_dim, group, parts, s_dtype, m)


@kernel_memo
def w8a8_avx2(k_dim: int, n_dim: int | tuple[int, ...], m: int | None = None) -> tirx.PrimFunc:
    """``C[M, N] = float(sum xq*wq) * xs[m] * ws[n]``: ``xq [M, K]`` int8 codes in -127..127 and
    ``xs [M]`` (``act_quant``), ``codes [P, K'/4, 32, 4]`` int8, ``ws [P, 32]`` float32; the
    int32 dot product is exact (``|w| * (x * sign(w))``). A tuple ``n_dim``: one grouped call
    (``xq``, ``xs``, then ``codes``, ``ws`` of each weight, then one result per weight)."""
    n_dims = (n_dim,) if isinstance(n_dim, int) else tuple(n_dim)
    kq, full = (k_dim + 3) // 4, k_dim // 4
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"w8a8_avx2_k{k_dim}_{widths(n_dims)}"

    @T.macro
    def panel(xq, xs, codes, ws, c, p, n_dim):
        for i in range(rows):
            with T.sblock("panel"):
                T.reads(xq[i, 0:k_dim], codes[p, 0:kq, 0:NB, 0:4])
                T.writes(c[i, p * NB : p * NB + NB])
                acc = T.alloc_buffer((NB,), "int32", scope=SCRATCH)
                xp = T.alloc_buffer((4,), "int8", scope=SCRATCH)
                for q in T.unroll(4):
                    acc[_r(q)] = T.broadcast(T.int32(0), 8)
                for kb in range(full):  # whole quads straight from the codes
                    _quad_rows(acc, codes, p, kb, _bcast4(xq, [i, kb * 4]))
                for kb in range(kq - full):  # the last, partial quad: zero-padded copy
                    for e in range(4):
                        k = T.meta_var(full * 4 + e)
                        xp[e] = T.if_then_else(k < k_dim, xq[i, T.min(k, k_dim - 1)], T.int8(0))
                    _quad_rows(acc, codes, p, full + kb, _bcast4(xp, [0]))
                for lane in T.vectorized(NB):
                    if p * NB + lane < n_dim:
                        c[i, p * NB + lane] = T.Cast("float32", acc[lane]) * xs[i] * ws[p, lane]

    panels, weights, outs = int8_args(rows, n_dims, NB, kq)
    shared = [Buf("xq", (rows, k_dim), "int8"), Buf("xs", (rows,), F32)]
    return grouped_func(name, shared, weights, outs, panels, panel)
