"""CPU decode kernels on AVX-512 VNNI (``vpdpbusd``: 64 u8 x s8 products summed in 16 int32 lanes).

Both kernels read the weight in a *VNNI panel* layout: ``[ceil(N/64), K'/4, 64, 4]`` bytes, so one
64-byte load holds 4 consecutive input elements of 16 outputs, which is the operand ``vpdpbusd``
wants; 4 such loads cover a panel of 64 outputs and reuse one broadcast of 4 activation bytes.

- :func:`q4_vnni` (int4 weight-only): two k-quads per byte (``[P, K'/8, 64, 4]``: low nibble
  ``k = 8b + i``, high nibble ``k = 8b + 4 + i``), unpacked with an AND and a shift into u8
  operands. The activation row is quantized per block of ``AB`` elements to ``parts`` signed
  8-bit digits (:func:`act_digits`): ``parts = 1`` is llama.cpp's q8 activation (int8 per block,
  relative error ~1e-3), ``parts = 3`` a 24-bit fixed-point split whose error is at float32's
  level (three ``vpdpbusd`` per weight quad instead of one). The zero point is applied once
  per group with the float sum of the activations:
  ``y = sum_g scale * (sum_k x*nibble - offset * sum_k x)``. A weight recording int8
  activations (``QuantSpec.act_bits = 8``) gets one digit from :func:`act_int8`, with the
  recorded ``act_group`` blocks and the group sums of the quantized activations, which is
  exactly the reference's ``x_hat @ dequantize(w).T``; float activations get three digits.
- :func:`q8w_vnni` (5..8-bit weight-only, e.g. an 8-bit LM head): the same with one code per
  byte (``code - qmin`` as u8), one ``vpdpbusd`` per digit and 4 k.
- :func:`w8a8_vnni` (``qlinear_a8``): the int8 activation codes shifted by 128 into u8, so
  ``sum (x+128)*w - 128*sum(w)`` is the exact int32 dot product of the portable kernel.

Rows are processed one after another inside a panel (decode has one; a prefill chunk re-reads
the panel from cache). The K padding (``K'``) holds zero codes and zero activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import te, tirx
from tvm.script import tirx as T

from llmc.backends.kernels.cpu import SCRATCH
from llmc.backends.kernels.cpu_group import Buf, grouped_func, int8_args, weight_only_args, widths
from llmc.backends.kernels.memo import kernel_memo

F32 = "float32"
NB = 64  # outputs per panel: 4 zmm accumulators of 16 int32
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def act_block(k_dim: int, group: int) -> int:
    """Activation quantization block: the largest of 128/64/32/16/8 dividing the weight group
    (per-channel: 128, or 32 for short rows; ``K`` is then padded to whole blocks)."""
    if group >= k_dim:
        return 128 if k_dim >= 128 else 32
    for ab in (128, 64, 32, 16, 8):
        if group % ab == 0:
            return ab
    raise ValueError(f"group {group} is not a multiple of 8")


def padded_k(k_dim: int, group: int) -> int:
    ab = act_block(k_dim, group)
    return (k_dim + ab - 1) // ab * ab


def k_blocks(k_dim: int, group: int, ab: int | None = None) -> tuple[int, int, int, int, int, int]:
    """How a weight-only kernel splits K: ``(g, ab, K', groups, blocks, blocks per group)`` —
    the weight group ``g = min(group, K)``, the activation block (default :func:`act_block`),
    the padded ``K'`` (:func:`padded_k`), ``K/g`` groups, ``K'/ab`` blocks, and the blocks of
    one group (per-channel: all blocks, the padded tail included)."""
    g = min(group, k_dim)
    ab = act_block(k_dim, group) if ab is None else ab
    kp = padded_k(k_dim, group)
    if kp % ab or (g < k_dim and g % ab) or ab % 8:
        raise ValueError(f"activation block {ab} does not tile group {group} of K={k_dim}")
    nblk = kp // ab
    return g, ab, kp, k_dim // g, nblk, nblk if g == k_dim else g // ab


def supports_q4(k_dim: int, group: int) -> bool:
    """Whether :func:`q4_vnni` handles this shape (groups must be whole 8-element quads)."""
    return group >= k_dim or group % 8 == 0


def block_codes(
    x: te.Tensor, k_pad: int, ab: int, mult: float, prefix: str
) -> tuple[te.Tensor, te.Tensor]:
    """The fixed-point codes the digit splits start from, per block of ``ab`` elements of ``x
    [M, K]`` (zero past K): ``s = max(amax, 1e-30) / 127`` (``[M, k_pad/ab]``) and ``q =
    clamp(round(x / s * mult), -127 * mult, 127 * mult)`` (int32 ``[M, k_pad]``); tensors named
    ``{prefix}_amax``, ``{prefix}_base``, ``{prefix}_q``."""
    m, k_dim = x.shape
    nblk = k_pad // ab
    r = te.reduce_axis((0, ab), "r")

    def xv(i: Any, k: Any) -> Any:
        return tirx.if_then_else(k < k_dim, x[i, tirx.min(k, k_dim - 1)].astype(F32), 0.0)

    amax = te.compute(
        (m, nblk), lambda i, b: te.max(tirx.abs(xv(i, b * ab + r)), axis=r), name=f"{prefix}_amax"
    )
    base = te.compute(
        (m, nblk),
        lambda i, b: tirx.max(amax[i, b], tirx.const(1e-30, F32)) / tirx.const(127.0, F32),
        name=f"{prefix}_base",
    )

    def q(i: Any, k: Any) -> Any:
        v = tirx.round(xv(i, k) / base[i, k // ab] * tirx.const(mult, F32))
        lim = tirx.const(127.0 * mult, F32)
        return tirx.max(tirx.min(v, lim), -lim).astype("int32")

    return base, te.compute((m, k_pad), q, name=f"{prefix}_q")


def act_digits(x: te.Tensor, k_pad: int, ab: int, parts: int) -> tuple[te.Tensor, te.Tensor]:
    """Per block of ``ab`` elements: ``x ~= sum_j digit_j * s_j`` with signed 8-bit digits.

    Returns ``digits [M, parts, k_pad]`` (int8; zero past K) and ``s [M, k_pad/ab, parts]``.
    ``parts = 1``: ``round(x / s)``, ``s = amax/127``; ``parts = 3``: ``q = round(x * 2^16 / s)``
    split into balanced base-256 digits (h, m, l) with scales ``s, s/256, s/65536``.
    """
    m = x.shape[0]
    nblk = k_pad // ab
    mult = float(256 ** (parts - 1))
    base, qi = block_codes(x, k_pad, ab, mult, "vnni")

    def digit(i: Any, j: Any, k: Any) -> Any:
        v = qi[i, k]
        if parts == 1:
            return v.astype("int8")
        # balanced base-256 digits, most significant first (h, m, l), each in [-128, 127]
        lo = ((v + 128) & 255) - 128
        v1 = (v - lo) >> 8
        mid = ((v1 + 128) & 255) - 128
        hi = (v1 - mid) >> 8
        return tirx.Select(j == 0, hi, tirx.Select(j == 1, mid, lo)).astype("int8")

    digits = te.compute((m, parts, k_pad), digit, name="vnni_digits")
    s = te.compute(
        (m, nblk, parts),
        lambda i, b, j: base[i, b] / tirx.const(mult, F32) * _pow256(parts - 1 - j),
        name="vnni_scale",
    )
    return digits, s


def int8_block(k_dim: int, group: int, act_group: int) -> int | None:
    """The kernel block of :func:`act_int8`: the largest of 128/64/32/16/8 dividing
    :func:`act_block` (so the weight layout's padding stays whole blocks) and ``act_group``
    (when it splits the row); None when none does (the caller falls back)."""
    base = act_block(k_dim, group)
    for ab in (128, 64, 32, 16, 8):
        if base % ab == 0 and (act_group == 0 or act_group >= k_dim or act_group % ab == 0):
            return ab
    return None


def act_int8(
    x: te.Tensor, k_pad: int, ab: int, act_group: int, group: int
) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    """Int8 activations (``QuantSpec.act_bits = 8``) for the one-digit kernels, exactly the
    reference's ``fake_quant_act``: per block of ``act_group`` elements (0: the row)
    ``s = max(amax, 1e-30) / 127``, ``q = clamp(round(x / s), -127, 127)``.

    Returns ``digits [M, 1, k_pad]`` int8 (zero past K), ``s [M, k_pad/ab, 1]`` (each kernel
    block of ``ab`` elements carries the scale of the activation block holding it) and
    ``gsum [M, K/group]``, the sums of the *quantized* activations ``q * s`` per weight group
    (so the zero point's term is the one the reference computes, ``x_hat @ w.T``).
    """
    m, k_dim = x.shape
    k_dim = int(k_dim)
    ag = k_dim if act_group == 0 or act_group >= k_dim else act_group
    nag = (k_dim + ag - 1) // ag
    r = te.reduce_axis((0, ag), "r")
    amax = te.compute(
        (m, nag),
        lambda i, b: te.max(tirx.abs(x[i, b * ag + r].astype(F32)), axis=r),
        name="a8_amax",
    )
    base = te.compute(
        (m, nag),
        lambda i, b: tirx.max(amax[i, b], tirx.const(1e-30, F32)) / tirx.const(127.0, F32),
        name="a8_scale",
    )

    def q(i: Any, k: Any) -> Any:
        kk = tirx.min(k, k_dim - 1)
        v = tirx.round(x[i, kk].astype(F32) / base[i, kk // ag])
        v = tirx.max(tirx.min(v, tirx.const(127.0, F32)), tirx.const(-127.0, F32))
        return tirx.if_then_else(k < k_dim, v, tirx.const(0.0, F32)).astype("int8")

    qi = te.compute((m, k_pad), q, name="a8_q")
    digits = te.compute((m, 1, k_pad), lambda i, j, k: qi[i, k], name="a8_digits")
    s = te.compute(
        (m, k_pad // ab, 1),
        lambda i, b, j: base[i, tirx.min(b * ab // ag, nag - 1)],
        name="a8_block_scale",
    )
    g = min(group, k_dim)
    rg = te.reduce_axis((0, g), "rg")
    gsum = te.compute(
        (m, k_dim // g),
        lambda i, b: te.sum(qi[i, b * g + rg].astype(F32) * base[i, (b * g + rg) // ag], axis=rg),
        name="a8_gsum",
    )
    return digits, s, gsum


def _pow256(e: Any) -> Any:
    return tirx.Select(
        e == 2,
        tirx.const(65536.0, F32),
        tirx.Select(e == 1, tirx.const(256.0, F32), tirx.const(1.0, F32)),
    )


def group_sums(x: te.Tensor, group: int) -> te.Tensor:
    """``[M, K/group]`` float32 sums of the activations (the zero point's term)."""
    m, k_dim = x.shape
    g = min(group, int(k_dim))
    r = te.reduce_axis((0, g), "r")
    return te.compute(
        (m, int(k_dim) // g),
        lambda i, b: te.sum(x[i, b * g + r].astype(F32), axis=r),
        name="vnni_gsum",
    )


def _bcast4(buf: Any, idx: list[Any]) -> Any:
    """Four int8 at ``idx`` as one int32 broadcast to 16 lanes."""
    w = T.broadcast(T.reinterpret(buf.vload(idx, "int8x4"), dtype="int32"), 16)
    return T.reinterpret(w, dtype="int8x64")


@dataclass(frozen=True)
class Unpack:
    """How a weight-only kernel turns one 64-byte code load into ``vpdpbusd`` operands.

    Each *step* of the inner loop reads ``loads`` consecutive byte rows (one per operand when
    ``nibbles`` is false) and feeds ``ops`` operands into ``ops`` independent accumulator chains
    where registers allow (see ``chains``). ``k_per_row``: input elements per byte row (8 for
    two nibbles per byte, 4 for one code per byte).
    """

    name: str
    k_per_row: int
    nibbles: bool

    def operand(self, raw: Any, o: Any) -> Any:
        """Operand ``o`` of a step from the byte row ``raw`` (uint8x64), as int8x64 for
        ``vpdpbusd``'s unsigned operand: the low then the high nibble, or the byte itself."""
        if not self.nibbles:
            return T.reinterpret(raw, dtype="int8x64")
        v = T.shift_right(raw, T.broadcast(T.Cast("uint8", o * 4), 64))
        return T.reinterpret(T.bitwise_and(v, T.broadcast(T.uint8(15), 64)), dtype="int8x64")


#: int4: two k-quads per byte (low nibble ``k = 8b + i``, high ``k = 8b + 4 + i``)
Q4 = Unpack("q4", 8, True)
#: 5..8-bit: one code per byte (``code - qmin`` as u8)
Q8W = Unpack("q8w", 4, False)


@kernel_memo
def weight_only_vnni(
    unpack: Unpack,
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
    ab: int | None = None,
    shared_offset: bool = False,
    quantize: int | None = None,
) -> tirx.PrimFunc:
    """``C[M, N] = X @ W.T`` for a weight-only W in VNNI panels, codes unpacked by ``unpack``.

    Arguments: ``digits [M, parts, K']`` int8 and ``xs [M, K'/ab, parts]`` (:func:`act_digits`
    or :func:`act_int8`), ``gsum [M, K/group]`` (:func:`group_sums` or :func:`act_int8`),
    ``codes [P, K'/k_per_row, 64, 4]`` uint8, ``scale``/``offset [P, K/group, 64]``; float32
    result. ``ab`` is the activation block of ``xs`` (default :func:`act_block`); it divides
    the weight group (or the padded ``K'`` per channel) and ``act_block``. ``shared_offset``:
    ``offset`` is one ``[1, 1, 64]`` row shared by every panel and group (symmetric weights:
    ``-qmin``), so decode streams codes and scales only.

    A tuple ``n_dim`` (decode's q/k/v, gate/up: up to
    :data:`~llmc.backends.kernels.cpu_group.MAX_GROUP` weights of one format reading the same
    activations) gives one grouped call (:func:`~llmc.backends.kernels.cpu_group.grouped_func`):
    the activation arguments, then ``codes``, ``scale``, ``offset`` of each weight, then one
    ``[M, n_dim[j]]`` result per weight.

    ``quantize`` (where :func:`fused_a8` allows it): the activation argument is the float row
    ``x [M, K]`` itself, prepared inside the call by a vectorized prologue before the parallel
    loop: with 1 digit, ``quantize`` is the ``act_group`` and :func:`_quant_a8` computes what
    :func:`act_int8` returns; with 3 digits, ``quantize = 0`` and :func:`_quant_digits`
    computes :func:`act_digits` and :func:`group_sums`. The same digits and scales; the group
    sums in another summation order. One call instead of two or three per group of linears,
    and none of the preparation's result tensors.
    """
    n_dims = (n_dim,) if isinstance(n_dim, int) else tuple(n_dim)
    g, ab, kp, ngroups, nblk, bpg = k_blocks(k_dim, group, ab)
    kr = unpack.k_per_row
    rows_blk = ab // kr  # byte rows per block
    # two independent accumulator chains per (digit, quarter) for 1 digit over blocks of 64+
    # (8 zmm); 3 digits already have 12 chains. int4: the chains are the low and high nibble of
    # one byte row; one code per byte: two consecutive byte rows. Blocks of 32 (act_bits=8,
    # act_group=32) keep one chain: each block ends in a convert and an FMA per chain, which
    # there cost more than the latency a second chain hides (measured at decode, GPT-2 shapes)
    split = 2 if parts == 1 and ab >= 64 else 1
    ops = 2 if unpack.nibbles else split  # operands per step
    loads = 1 if unpack.nibbles else split  # byte rows per step
    k_step = 4 if unpack.nibbles else 0  # k offset of operand o within its byte row
    row_step = 0 if unpack.nibbles else 1  # byte row of operand o within the step
    steps = rows_blk // loads
    o_ps = 0 if shared_offset else 1  # offset index stride of a panel / a group
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = (
        f"{unpack.name}_vnni_k{k_dim}_{widths(n_dims)}_g{group}_p{parts}"
        + (f"_ab{ab}" if ab != act_block(k_dim, group) else "")
        + ("_so" if shared_offset else "")
    )

    @T.macro
    def panel(xd, xs, gs, codes, scale, offset, c, p, n_dim):
        for i in range(rows):
            with T.sblock("panel"):
                T.reads(xd[i, 0:parts, 0:kp], codes[p, 0 : kp // kr, 0:NB, 0:4])
                T.writes(c[i, p * NB : p * NB + NB])
                y = T.alloc_buffer((NB,), F32, scope=SCRATCH)
                t = T.alloc_buffer((NB,), F32, scope=SCRATCH)
                acc = T.alloc_buffer((parts * split * NB,), "int32", scope=SCRATCH)
                for q in T.unroll(4):
                    y[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                for gi in range(ngroups):
                    for q in T.unroll(4):
                        t[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for bi in range(bpg):
                        for a in T.unroll(parts * split * 4):
                            acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                        for kb in range(steps):
                            for o in T.unroll(ops):
                                row = T.meta_var(
                                    (gi * bpg + bi) * rows_blk + kb * loads + o * row_step
                                )
                                for q in T.unroll(4):
                                    w = T.meta_var(
                                        unpack.operand(
                                            codes.vload([p, row, q * 16, 0], "uint8x64"), o
                                        )
                                    )
                                    for j in T.unroll(parts):
                                        a_i = T.meta_var(((j * 4 + q) * split + o % split) * 16)
                                        acc[T.ramp(a_i, 1, 16)] = T.call_llvm_pure_intrin(
                                            T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                            acc[T.ramp(a_i, 1, 16)],
                                            w,
                                            _bcast4(xd, [i, j, row * kr + o * k_step]),
                                            dtype="int32x16",
                                        )
                        for j in T.unroll(parts):
                            for q in T.unroll(4):
                                for h in T.unroll(split):
                                    t[T.ramp(q * 16, 1, 16)] = t[T.ramp(q * 16, 1, 16)] + T.Cast(
                                        "float32x16",
                                        acc[T.ramp(((j * 4 + q) * split + h) * 16, 1, 16)],
                                    ) * T.broadcast(xs[i, gi * bpg + bi, j], 16)
                    for q in T.unroll(4):
                        sc = T.meta_var(
                            T.Cast("float32x16", scale.vload([p, gi, q * 16], s_dtype + "x16"))
                        )
                        of = T.meta_var(
                            T.Cast(
                                "float32x16",
                                offset.vload([p * o_ps, gi * o_ps, q * 16], s_dtype + "x16"),
                            )
                        )
                        y[T.ramp(q * 16, 1, 16)] = y[T.ramp(q * 16, 1, 16)] + sc * (
                            t[T.ramp(q * 16, 1, 16)] - of * T.broadcast(gs[i, gi], 16)
                        )
                for lane in T.vectorized(NB):
                    if p * NB + lane < n_dim:
                        c[i, p * NB + lane] = y[lane]

    panels, shared, weights, outs = weight_only_args(
        rows, n_dims, NB, kp // kr, parts, kp, nblk, ngroups, s_dtype, shared_offset
    )
    if quantize is None:
        return grouped_func(name, shared, weights, outs, panels, panel)
    if parts == 1 and fused_a8(k_dim, group, quantize, ab):
        quant, tag = _quant_a8(rows, k_dim, g, ab, quantize), f"_q{quantize}"
    elif parts == 3 and quantize == 0 and fused_a8(k_dim, group, ab, ab):
        quant, tag = _quant_digits(rows, k_dim, g, ab), "_qd"
    else:
        raise ValueError(f"no fused quantization for K={k_dim}, group {group}, ab {ab}")

    @T.macro
    def panel_x(x, xd, xs, gs, codes, scale, offset, c, p, n_dim):
        panel(xd, xs, gs, codes, scale, offset, c, p, n_dim)

    x = Buf("x", (rows, k_dim), F32)
    return grouped_func(name + tag, [x], weights, outs, panels, panel_x, shared, quant)


def fused_a8(k_dim: int, group: int, act_group: int, ab: int) -> bool:
    """Whether :func:`weight_only_vnni` can prepare its activations itself (``quantize``):
    whole vectors of 16 everywhere (``K``, the activation block, the weight group, no padding).
    Int8 activations: ``act_group`` as recorded; 3 digits: ``act_group = ab`` (their block)."""
    ag = k_dim if act_group == 0 or act_group >= k_dim else act_group
    g = min(group, k_dim)
    return (
        padded_k(k_dim, group) == k_dim
        and k_dim % ag == 0
        and ag % 16 == 0
        and g % 16 == 0
        and k_dim % ab == 0
    )


@T.macro
def _block_scale(x, i, b, width, v16, sv):
    """The shared prologue of the ``quantize`` kernels, per activation block ``b`` of ``width``
    floats of row ``i``: ``sv[b] = max(max|x|, 1e-30) / 127``, the maximum taken 16 lanes at a
    time in ``v16``, then across them."""
    v16[T.ramp(0, 1, 16)] = T.broadcast(T.float32(0), 16)
    for v in range(width // 16):
        v16[T.ramp(0, 1, 16)] = T.max(
            v16[T.ramp(0, 1, 16)],
            T.fabs(x.vload([i, b * width + v * 16], "float32x16")),
        )
    for ln in range(1, 16):
        v16[0] = T.max(v16[0], v16[ln])
    sv[b] = T.max(v16[0], T.float32(1e-30)) / T.float32(127.0)


@T.macro
def _lane_sum(v16, gs, i, gi):
    """``gs[i, gi]`` = the sum of the 16 lanes of ``v16`` (a group sum's last step)."""
    for ln in range(1, 16):
        v16[0] = v16[0] + v16[ln]
    gs[i, gi] = v16[0]


def _quant_digits(rows: Any, k_dim: int, g: int, ab: int) -> Any:
    """The prologue of a 3-digit ``quantize`` kernel: :func:`act_digits` (``parts = 3``) and
    :func:`group_sums` of ``x`` into ``xd [M, 3, K]``, ``xs [M, K/ab, 3]``, ``gs [M, K/g]``, 16
    lanes at a time with the same float operations (per block ``s = max(max|x|, 1e-30) / 127``,
    ``q = clamp(round(x / s * 2^16))`` split into balanced base-256 digits); ``gs`` sums in 16
    lanes, then across them."""
    nblk, ngroups = k_dim // ab, k_dim // g
    mult, lim = T.float32(65536.0), T.float32(127.0 * 65536.0)

    def bal(v: Any) -> Any:
        """The balanced low byte of int32x16 ``v``, in [-128, 127]."""
        c128 = T.broadcast(T.int32(128), 16)
        return T.bitwise_and(v + c128, T.broadcast(T.int32(255), 16)) - c128

    @T.macro
    def quant(x, xd, xs, gs):
        for i in range(rows):
            with T.sblock("quant"):
                T.reads(x[i, 0:k_dim])
                T.writes(xd[i, 0:3, 0:k_dim], xs[i, 0:nblk, 0:3], gs[i, 0:ngroups])
                v16 = T.alloc_buffer((16,), F32, scope=SCRATCH)
                sv = T.alloc_buffer((nblk,), F32, scope=SCRATCH)
                for b in range(nblk):
                    _block_scale(x, i, b, ab, v16, sv)
                    xs[i, b, 0] = sv[b] / mult * T.float32(65536.0)
                    xs[i, b, 1] = sv[b] / mult * T.float32(256.0)
                    xs[i, b, 2] = sv[b] / mult * T.float32(1.0)
                for v in range(k_dim // 16):
                    q = T.meta_var(
                        T.Cast(
                            "int32x16",
                            T.max(
                                T.min(
                                    T.round(
                                        x.vload([i, v * 16], "float32x16")
                                        / T.broadcast(sv[v * 16 // ab], 16)
                                        * T.broadcast(mult, 16)
                                    ),
                                    T.broadcast(lim, 16),
                                ),
                                T.broadcast(-lim, 16),
                            ),
                        )
                    )
                    v1 = T.meta_var(T.shift_right(q - bal(q), T.broadcast(T.int32(8), 16)))
                    xd[i, 2, T.ramp(v * 16, 1, 16)] = T.Cast("int8x16", bal(q))
                    xd[i, 1, T.ramp(v * 16, 1, 16)] = T.Cast("int8x16", bal(v1))
                    xd[i, 0, T.ramp(v * 16, 1, 16)] = T.Cast(
                        "int8x16", T.shift_right(v1 - bal(v1), T.broadcast(T.int32(8), 16))
                    )
                for gi in range(ngroups):
                    v16[T.ramp(0, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for v in range(g // 16):
                        v16[T.ramp(0, 1, 16)] = v16[T.ramp(0, 1, 16)] + x.vload(
                            [i, gi * g + v * 16], "float32x16"
                        )
                    _lane_sum(v16, gs, i, gi)

    return quant


def _quant_a8(rows: Any, k_dim: int, g: int, ab: int, act_group: int) -> Any:
    """The prologue of a ``quantize`` kernel: :func:`act_int8` of ``x`` into the scratch
    ``xd [M, 1, K]``, ``xs [M, K/ab, 1]``, ``gs [M, K/g]``, 16 lanes at a time: per activation
    block ``s = max(max|x|, 1e-30) / 127`` and ``q = clamp(round(x / s), -127, 127)`` (the same
    float operations, so the same codes and scales); ``gs`` sums ``q * s`` per weight group in
    16 lanes, then across them."""
    ag = k_dim if act_group == 0 or act_group >= k_dim else act_group
    nag, nblk, ngroups = k_dim // ag, k_dim // ab, k_dim // g

    @T.macro
    def quant(x, xd, xs, gs):
        for i in range(rows):
            with T.sblock("quant"):
                T.reads(x[i, 0:k_dim])
                T.writes(xd[i, 0, 0:k_dim], xs[i, 0:nblk, 0], gs[i, 0:ngroups])
                v16 = T.alloc_buffer((16,), F32, scope=SCRATCH)
                sv = T.alloc_buffer((nag,), F32, scope=SCRATCH)
                for b in range(nag):
                    _block_scale(x, i, b, ag, v16, sv)
                for v in range(k_dim // 16):
                    xd[i, 0, T.ramp(v * 16, 1, 16)] = T.Cast(
                        "int8x16",
                        T.max(
                            T.min(
                                T.round(
                                    x.vload([i, v * 16], "float32x16")
                                    / T.broadcast(sv[v * 16 // ag], 16)
                                ),
                                T.broadcast(T.float32(127.0), 16),
                            ),
                            T.broadcast(T.float32(-127.0), 16),
                        ),
                    )
                for b in range(nblk):
                    xs[i, b, 0] = sv[T.min(b * ab // ag, nag - 1)]
                for gi in range(ngroups):
                    v16[T.ramp(0, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for v in range(g // 16):
                        v16[T.ramp(0, 1, 16)] = v16[T.ramp(0, 1, 16)] + T.Cast(
                            "float32x16", xd.vload([i, 0, gi * g + v * 16], "int8x16")
                        ) * T.broadcast(sv[(gi * g + v * 16) // ag], 16)
                    _lane_sum(v16, gs, i, gi)

    return quant


def q4_vnni(
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
    ab: int | None = None,
    shared_offset: bool = False,
    quantize: int | None = None,
) -> tirx.PrimFunc:
    """int4 weight-only (:data:`Q4` unpacking): ``codes [P, K'/8, 64, 4]`` uint8, two k-quads
    per byte; see :func:`weight_only_vnni`."""
    return weight_only_vnni(Q4, k_dim, n_dim, group, parts, s_dtype, m, ab, shared_offset, quantize)


def q8w_vnni(
    k_dim: int,
    n_dim: int | tuple[int, ...],
    group: int,
    parts: int,
    s_dtype: str,
    m: int | None = None,
    ab: int | None = None,
    shared_offset: bool = False,
    quantize: int | None = None,
) -> tirx.PrimFunc:
    """5..8-bit weight-only (:data:`Q8W` unpacking): ``codes [P, K'/4, 64, 4]`` uint8 (byte
    (b, n, i) = ``code[n, 4b+i] - qmin``, so a symmetric 8-bit code in -127..127 is 0..254),
    ``offset`` = ``zero - qmin``; one ``vpdpbusd`` per digit and 4 k, the per-block int32 sums
    below ``254 * 127 * 128``. See :func:`weight_only_vnni`."""
    return weight_only_vnni(
        Q8W, k_dim, n_dim, group, parts, s_dtype, m, ab, shared_offset, quantize
    )


def w8a8_vnni(
    k_dim: int, n_dim: int, m: int | None = None, act_scale: float = 0.0
) -> tirx.PrimFunc:
    """``qlinear_a8`` in one kernel: ``C[M, N] = float(sum xq*wq) * xs[m] * ws[n]``.

    Arguments: ``x [M, K]`` float32 activations, ``codes [P, K'/4, 64, 4]`` int8, ``wsum [P, 64]``
    int32 (row sums of the codes), ``ws [P, 64]`` float32; float32 result. A serial prologue
    quantizes each row as the reference does (``xs = max(max|x|, 1e-8) / 127`` or the static
    ``act_scale`` > 0; ``xq = clamp(round_half_even(x / xs), -127, 127)``), vectorized, and stores
    ``xq + 128`` as u8 (zero past K), so the panel loop broadcasts 4 of those bytes per
    ``vpdpbusd`` and subtracts ``128 * wsum`` once: the same int32 dot product, bit for bit.
    No separate quantization kernel, no int8 intermediate and no scale tensor between the two.
    """
    return w8a8_vnni_multi(k_dim, (n_dim,), m, act_scale)


@kernel_memo
def w8a8_vnni_multi(
    k_dim: int, n_dims: tuple[int, ...], m: int | None = None, act_scale: float = 0.0
) -> tirx.PrimFunc:
    """:func:`w8a8_vnni` for 1 to 3 weights that read the same activations (q/k/v, gate/up):
    one quantization prologue, then one parallel loop over the panels of all of them
    (:func:`~llmc.backends.kernels.cpu_group.grouped_func`).

    Arguments: ``x``, then ``codes``, ``wsum``, ``ws`` of each weight, then one result per weight
    (``[M, n_dims[j]]`` float32).
    """
    kq = (k_dim + 3) // 4
    kv = k_dim // 16 * 16  # the part of K read 16 floats at a time
    nk = kq // A8_SPLIT
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"w8a8_vnni_k{k_dim}_{widths(n_dims)}"
    dynamic = act_scale <= 0
    qmax = T.float32(A8_QMAX)

    @T.macro
    def quant(x, xu, xs):
        for i in range(rows):
            with T.sblock("quant"):
                T.reads(x[i, 0:k_dim])
                T.writes(xu[i, 0 : kq * 4], xs[i])
                mx = T.alloc_buffer((16,), F32, scope=SCRATCH)
                if dynamic:
                    mx[T.ramp(0, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for kb in range(kv // 16):
                        mx[T.ramp(0, 1, 16)] = T.max(
                            mx[T.ramp(0, 1, 16)], T.fabs(x.vload([i, kb * 16], "float32x16"))
                        )
                    for k in range(kv, k_dim):
                        mx[0] = T.max(mx[0], T.fabs(x[i, k]))
                    for ln in range(1, 16):
                        mx[0] = T.max(mx[0], mx[ln])
                    xs[i] = T.max(mx[0], T.float32(1e-8)) / qmax
                else:
                    xs[i] = T.float32(act_scale)
                for kb in range(kv // 16):
                    v = T.meta_var(
                        T.max(
                            T.min(
                                T.round(
                                    x.vload([i, kb * 16], "float32x16") / T.broadcast(xs[i], 16)
                                ),
                                T.broadcast(qmax, 16),
                            ),
                            T.broadcast(-qmax, 16),
                        )
                    )
                    xu[i, T.ramp(kb * 16, 1, 16)] = T.Cast(
                        "uint8x16", T.Cast("int32x16", v) + T.broadcast(T.int32(128), 16)
                    )
                for k in range(kv, kq * 4):
                    xu[i, k] = T.if_then_else(
                        k < k_dim,
                        T.Cast(
                            "uint8",
                            T.Cast(
                                "int32",
                                T.max(
                                    T.min(T.round(x[i, T.min(k, k_dim - 1)] / xs[i]), qmax), -qmax
                                ),
                            )
                            + 128,
                        ),
                        T.uint8(128),
                    )

    @T.macro
    def panel(x, xu, xs, codes, wsum, ws, c, p, n_dim):
        for i in range(rows):
            with T.sblock("panel"):
                T.reads(xu[i, 0 : kq * 4], xs[i], codes[p, 0:kq, 0:NB, 0:4])
                T.writes(c[i, p * NB : p * NB + NB])
                acc = T.alloc_buffer((A8_SPLIT * NB,), "int32", scope=SCRATCH)
                for a in T.unroll(A8_SPLIT * 4):
                    acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for kb in range(nk):
                    for h in T.unroll(A8_SPLIT):
                        xb = T.meta_var(_bcast4u(xu, [i, (kb * A8_SPLIT + h) * 4]))
                        for q in T.unroll(4):
                            acc[T.ramp((h * 4 + q) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                acc[T.ramp((h * 4 + q) * 16, 1, 16)],
                                xb,
                                codes.vload([p, kb * A8_SPLIT + h, q * 16, 0], "int8x64"),
                                dtype="int32x16",
                            )
                for kb in range(nk * A8_SPLIT, kq):  # an odd quad count's last quad
                    xb = T.meta_var(_bcast4u(xu, [i, kb * 4]))
                    for q in T.unroll(4):
                        acc[T.ramp(q * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(VPDPBUSD),
                            acc[T.ramp(q * 16, 1, 16)],
                            xb,
                            codes.vload([p, kb, q * 16, 0], "int8x64"),
                            dtype="int32x16",
                        )
                for h in T.unroll(1, A8_SPLIT):
                    for q in T.unroll(4):
                        acc[T.ramp(q * 16, 1, 16)] = (
                            acc[T.ramp(q * 16, 1, 16)] + acc[T.ramp((h * 4 + q) * 16, 1, 16)]
                        )
                for lane in T.vectorized(NB):
                    if p * NB + lane < n_dim:
                        c[i, p * NB + lane] = (
                            T.Cast("float32", acc[lane] - wsum[p, lane] * 128) * xs[i] * ws[p, lane]
                        )

    panels, weights, outs = int8_args(rows, n_dims, NB, kq, wsum=True)
    scratch = [Buf("xu", (rows, kq * 4), "uint8"), Buf("xs", (rows,), F32)]
    x = Buf("x", (rows, k_dim), F32)
    return grouped_func(name, [x], weights, outs, panels, panel, scratch, quant)


#: W8A8 activation codes are in [-A8_QMAX, A8_QMAX] (``qlinear_a8``, :mod:`llmc.ir.ops_quant`)
A8_QMAX = 127.0
#: accumulator chains per 16 outputs in :func:`w8a8_vnni` (even and odd k-quads): 8 independent
#: ``vpdpbusd`` chains, enough to cover the instruction's latency
A8_SPLIT = 2


def _bcast4u(buf: Any, idx: list[Any]) -> Any:
    """Four u8 at ``idx`` as one int32 broadcast to 16 lanes (``vpdpbusd``'s unsigned operand)."""
    w = T.broadcast(T.reinterpret(buf.vload(idx, "uint8x4"), dtype="int32"), 16)
    return T.reinterpret(w, dtype="int8x64")
