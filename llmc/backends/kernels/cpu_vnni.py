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
  per group with the exact float sum of the activations:
  ``y = sum_g scale * (sum_k x*nibble - offset * sum_k x)``.
- :func:`q8w_vnni` (5..8-bit weight-only, e.g. an 8-bit LM head): the same with one code per
  byte (``code - qmin`` as u8), one ``vpdpbusd`` per digit and 4 k.
- :func:`w8a8_vnni` (``qlinear_a8``): the int8 activation codes shifted by 128 into u8, so
  ``sum (x+128)*w - 128*sum(w)`` is the exact int32 dot product of the portable kernel.

Rows are processed one after another inside a panel (decode has one; a prefill chunk re-reads
the panel from cache). The K padding (``K'``) holds zero codes and zero activations.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.script import tirx as T

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


def supports_q4(k_dim: int, group: int) -> bool:
    """Whether :func:`q4_vnni` handles this shape (groups must be whole 8-element quads)."""
    return group >= k_dim or group % 8 == 0


def act_digits(x: te.Tensor, k_pad: int, ab: int, parts: int) -> tuple[te.Tensor, te.Tensor]:
    """Per block of ``ab`` elements: ``x ~= sum_j digit_j * s_j`` with signed 8-bit digits.

    Returns ``digits [M, parts, k_pad]`` (int8; zero past K) and ``s [M, k_pad/ab, parts]``.
    ``parts = 1``: ``round(x / s)``, ``s = amax/127``; ``parts = 3``: ``q = round(x * 2^16 / s)``
    split into balanced base-256 digits (h, m, l) with scales ``s, s/256, s/65536``.
    """
    m, k_dim = x.shape
    nblk = k_pad // ab
    r = te.reduce_axis((0, ab), "r")

    def xv(i: Any, k: Any) -> Any:
        return tirx.if_then_else(k < k_dim, x[i, tirx.min(k, k_dim - 1)].astype(F32), 0.0)

    amax = te.compute(
        (m, nblk), lambda i, b: te.max(tirx.abs(xv(i, b * ab + r)), axis=r), name="vnni_amax"
    )
    base = te.compute(
        (m, nblk),
        lambda i, b: tirx.max(amax[i, b], tirx.const(1e-30, F32)) / tirx.const(127.0, F32),
        name="vnni_base",
    )
    mult = float(256 ** (parts - 1))

    def q(i: Any, k: Any) -> Any:
        v = tirx.round(xv(i, k) / base[i, k // ab] * tirx.const(mult, F32))
        lim = tirx.const(127.0 * mult, F32)
        return tirx.max(tirx.min(v, lim), -lim).astype("int32")

    qi = te.compute((m, k_pad), q, name="vnni_q")

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


def q4_vnni(
    k_dim: int, n_dim: int, group: int, parts: int, s_dtype: str, m: int | None = None
) -> tirx.PrimFunc:
    """``C[M, N] = X @ W.T`` for int4 W (VNNI panel codes, ``panel64`` scales/offsets).

    Arguments: ``digits [M, parts, K']`` int8 and ``xs [M, K'/AB, parts]`` (:func:`act_digits`),
    ``gsum [M, K/group]`` (:func:`group_sums`), ``codes [P, K'/8, 64, 4]`` uint8,
    ``scale``/``offset [P, K/group, 64]``; float32 result.
    """
    g = min(group, k_dim)
    ab = act_block(k_dim, group)
    kp = padded_k(k_dim, group)
    panels = (n_dim + NB - 1) // NB
    ngroups = k_dim // g
    nblk = kp // ab
    # blocks of one group (per-channel: all blocks, the padded tail included)
    bpg = nblk if g == k_dim else g // ab
    quads = ab // 8  # byte rows (8 k each) per block
    # low and high nibbles into separate accumulators (two independent vpdpbusd chains) where
    # the registers allow it: 8 accumulators for 1 digit; 3 digits already have 12 chains
    split = 2 if parts == 1 else 1
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"q4_vnni_k{k_dim}_n{n_dim}_g{group}_p{parts}"

    @T.prim_func(private=True, s_tir=True)
    def f(
        xd_h: T.handle,
        xs_h: T.handle,
        gs_h: T.handle,
        codes: T.Buffer((panels, kp // 8, NB, 4), "uint8"),
        scale: T.Buffer((panels, ngroups, NB), s_dtype),
        offset: T.Buffer((panels, ngroups, NB), s_dtype),
        c_h: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        xd = T.match_buffer(xd_h, (rows, parts, kp), "int8")
        xs = T.match_buffer(xs_h, (rows, nblk, parts), F32)
        gs = T.match_buffer(gs_h, (rows, ngroups), F32)
        c = T.match_buffer(c_h, (rows, n_dim), F32)
        for p in T.parallel(panels):
            for i in range(rows):
                with T.sblock("panel"):
                    T.reads(xd[i, 0:parts, 0:kp], codes[p, 0 : kp // 8, 0:NB, 0:4])
                    T.writes(c[i, p * NB : p * NB + NB])
                    y = T.alloc_buffer((NB,), F32, scope="local")
                    t = T.alloc_buffer((NB,), F32, scope="local")
                    acc = T.alloc_buffer((parts * split * NB,), "int32", scope="local")
                    for q in T.unroll(4):
                        y[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for gi in range(ngroups):
                        for q in T.unroll(4):
                            t[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                        for bi in range(bpg):
                            for a in T.unroll(parts * split * 4):
                                acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                            for kb in range(quads):
                                row = (gi * bpg + bi) * quads + kb
                                for q in T.unroll(4):
                                    raw = codes.vload([p, row, q * 16, 0], "uint8x64")
                                    lo = T.reinterpret(
                                        T.bitwise_and(raw, T.broadcast(T.uint8(15), 64)),
                                        dtype="int8x64",
                                    )
                                    hi = T.reinterpret(
                                        T.shift_right(raw, T.broadcast(T.uint8(4), 64)),
                                        dtype="int8x64",
                                    )
                                    for j in T.unroll(parts):
                                        k0 = row * 8
                                        a_lo = ((j * 4 + q) * split) * 16
                                        a_hi = ((j * 4 + q) * split + split - 1) * 16
                                        acc[T.ramp(a_lo, 1, 16)] = T.call_llvm_pure_intrin(
                                            T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                            acc[T.ramp(a_lo, 1, 16)],
                                            lo,
                                            _bcast4(xd, [i, j, k0]),
                                            dtype="int32x16",
                                        )
                                        acc[T.ramp(a_hi, 1, 16)] = T.call_llvm_pure_intrin(
                                            T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                            acc[T.ramp(a_hi, 1, 16)],
                                            hi,
                                            _bcast4(xd, [i, j, k0 + 4]),
                                            dtype="int32x16",
                                        )
                            for j in T.unroll(parts):
                                for q in T.unroll(4):
                                    for h in T.unroll(split):
                                        t[T.ramp(q * 16, 1, 16)] = t[
                                            T.ramp(q * 16, 1, 16)
                                        ] + T.Cast(
                                            "float32x16",
                                            acc[T.ramp(((j * 4 + q) * split + h) * 16, 1, 16)],
                                        ) * T.broadcast(xs[i, gi * bpg + bi, j], 16)
                        for q in T.unroll(4):
                            sc = T.Cast("float32x16", scale.vload([p, gi, q * 16], s_dtype + "x16"))
                            of = T.Cast(
                                "float32x16", offset.vload([p, gi, q * 16], s_dtype + "x16")
                            )
                            y[T.ramp(q * 16, 1, 16)] = y[T.ramp(q * 16, 1, 16)] + sc * (
                                t[T.ramp(q * 16, 1, 16)] - of * T.broadcast(gs[i, gi], 16)
                            )
                    for lane in T.vectorized(NB):
                        if p * NB + lane < n_dim:
                            c[i, p * NB + lane] = y[lane]

    return _finish(f, name)


def q8w_vnni(
    k_dim: int, n_dim: int, group: int, parts: int, s_dtype: str, m: int | None = None
) -> tirx.PrimFunc:
    """``C[M, N] = X @ W.T`` for 5..8-bit weight-only W: :func:`q4_vnni` with one byte per code.

    ``codes [P, K'/4, 64, 4]`` uint8 (byte (b, n, i) = ``code[n, 4b+i] - qmin``, so a symmetric
    8-bit code in -127..127 is 0..254), ``scale``/``offset [P, K/group, 64]`` (``offset`` =
    ``zero - qmin``), the activation digits, scales and group sums as in :func:`q4_vnni`. One
    ``vpdpbusd`` per digit and 4 k; the per-block int32 sums stay below ``254 * 127 * 128``.
    """
    g = min(group, k_dim)
    ab = act_block(k_dim, group)
    kp = padded_k(k_dim, group)
    panels = (n_dim + NB - 1) // NB
    ngroups = k_dim // g
    nblk = kp // ab
    bpg = nblk if g == k_dim else g // ab
    quads = ab // 4  # byte rows (4 k each) per block
    # two accumulator chains per (digit, quarter) for 1 digit: even and odd byte rows
    split = 2 if parts == 1 else 1
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"q8w_vnni_k{k_dim}_n{n_dim}_g{group}_p{parts}"

    @T.prim_func(private=True, s_tir=True)
    def f(
        xd_h: T.handle,
        xs_h: T.handle,
        gs_h: T.handle,
        codes: T.Buffer((panels, kp // 4, NB, 4), "uint8"),
        scale: T.Buffer((panels, ngroups, NB), s_dtype),
        offset: T.Buffer((panels, ngroups, NB), s_dtype),
        c_h: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        xd = T.match_buffer(xd_h, (rows, parts, kp), "int8")
        xs = T.match_buffer(xs_h, (rows, nblk, parts), F32)
        gs = T.match_buffer(gs_h, (rows, ngroups), F32)
        c = T.match_buffer(c_h, (rows, n_dim), F32)
        for p in T.parallel(panels):
            for i in range(rows):
                with T.sblock("panel"):
                    T.reads(xd[i, 0:parts, 0:kp], codes[p, 0 : kp // 4, 0:NB, 0:4])
                    T.writes(c[i, p * NB : p * NB + NB])
                    y = T.alloc_buffer((NB,), F32, scope="local")
                    t = T.alloc_buffer((NB,), F32, scope="local")
                    acc = T.alloc_buffer((parts * split * NB,), "int32", scope="local")
                    for q in T.unroll(4):
                        y[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                    for gi in range(ngroups):
                        for q in T.unroll(4):
                            t[T.ramp(q * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                        for bi in range(bpg):
                            for a in T.unroll(parts * split * 4):
                                acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                            for kb in range(quads // split):
                                for h in T.unroll(split):
                                    row = (gi * bpg + bi) * quads + kb * split + h
                                    for q in T.unroll(4):
                                        w = T.reinterpret(
                                            codes.vload([p, row, q * 16, 0], "uint8x64"),
                                            dtype="int8x64",
                                        )
                                        for j in T.unroll(parts):
                                            a_i = ((j * 4 + q) * split + h) * 16
                                            acc[T.ramp(a_i, 1, 16)] = T.call_llvm_pure_intrin(
                                                T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                                acc[T.ramp(a_i, 1, 16)],
                                                w,
                                                _bcast4(xd, [i, j, row * 4]),
                                                dtype="int32x16",
                                            )
                            for j in T.unroll(parts):
                                for q in T.unroll(4):
                                    for h in T.unroll(split):
                                        t[T.ramp(q * 16, 1, 16)] = t[
                                            T.ramp(q * 16, 1, 16)
                                        ] + T.Cast(
                                            "float32x16",
                                            acc[T.ramp(((j * 4 + q) * split + h) * 16, 1, 16)],
                                        ) * T.broadcast(xs[i, gi * bpg + bi, j], 16)
                        for q in T.unroll(4):
                            sc = T.Cast("float32x16", scale.vload([p, gi, q * 16], s_dtype + "x16"))
                            of = T.Cast(
                                "float32x16", offset.vload([p, gi, q * 16], s_dtype + "x16")
                            )
                            y[T.ramp(q * 16, 1, 16)] = y[T.ramp(q * 16, 1, 16)] + sc * (
                                t[T.ramp(q * 16, 1, 16)] - of * T.broadcast(gs[i, gi], 16)
                            )
                    for lane in T.vectorized(NB):
                        if p * NB + lane < n_dim:
                            c[i, p * NB + lane] = y[lane]

    return _finish(f, name)


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


#: the most ``qlinear_a8`` one :func:`w8a8_vnni_multi` call computes (q/k/v)
A8_MAX_GROUP = 3


def w8a8_vnni_multi(
    k_dim: int, n_dims: tuple[int, ...], m: int | None = None, act_scale: float = 0.0
) -> tirx.PrimFunc:
    """:func:`w8a8_vnni` for 1 to 3 weights that read the same activations (q/k/v, gate/up):
    one quantization prologue, then one parallel loop over the panels of all of them.

    Arguments: ``x``, then ``codes``, ``wsum``, ``ws`` of each weight, then one result per weight
    (``[M, n_dims[j]]`` float32). One call instead of one per weight: the activation row is
    quantized once, and the two threads split the panels of the whole group, so a thread that
    finishes its share of a small projection early is not left waiting at the call's end.
    """
    g = len(n_dims)
    assert 1 <= g <= A8_MAX_GROUP, n_dims
    kq = (k_dim + 3) // 4
    kv = k_dim // 16 * 16  # the part of K read 16 floats at a time
    nk = kq // A8_SPLIT
    p0, p1, p2 = ([(n + NB - 1) // NB for n in n_dims] + [1, 1])[:3]
    n0, n1, n2 = (list(n_dims) + [1, 1])[:3]
    rows: Any = tirx.Var("m", "int64") if m is None else m
    name = f"w8a8_vnni_k{k_dim}_n" + "_".join(str(n) for n in n_dims)
    dynamic = act_scale <= 0
    qmax = T.float32(A8_QMAX)

    @T.macro
    def quant(x, xu, xs):
        for i in range(rows):
            with T.sblock("quant"):
                T.reads(x[i, 0:k_dim])
                T.writes(xu[i, 0 : kq * 4], xs[i])
                mx = T.alloc_buffer((16,), F32, scope="local")
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
                    v = T.round(x.vload([i, kb * 16], "float32x16") / T.broadcast(xs[i], 16))
                    v = T.max(T.min(v, T.broadcast(qmax, 16)), T.broadcast(-qmax, 16))
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
    def panel(xu, xs, codes, wsum, ws, c, p, n_dim):
        for i in range(rows):
            with T.sblock("panel"):
                T.reads(xu[i, 0 : kq * 4], xs[i], codes[p, 0:kq, 0:NB, 0:4])
                T.writes(c[i, p * NB : p * NB + NB])
                acc = T.alloc_buffer((A8_SPLIT * NB,), "int32", scope="local")
                for a in T.unroll(A8_SPLIT * 4):
                    acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for kb in range(nk):
                    for h in T.unroll(A8_SPLIT):
                        xb = _bcast4u(xu, [i, (kb * A8_SPLIT + h) * 4])
                        for q in T.unroll(4):
                            acc[T.ramp((h * 4 + q) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id(VPDPBUSD),
                                acc[T.ramp((h * 4 + q) * 16, 1, 16)],
                                xb,
                                codes.vload([p, kb * A8_SPLIT + h, q * 16, 0], "int8x64"),
                                dtype="int32x16",
                            )
                for kb in range(nk * A8_SPLIT, kq):  # an odd quad count's last quad
                    xb = _bcast4u(xu, [i, kb * 4])
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

    if g == 1:

        @T.prim_func(private=True, s_tir=True)
        def f(
            x_h: T.handle,
            codes0: T.Buffer((p0, kq, NB, 4), "int8"),
            wsum0: T.Buffer((p0, NB), "int32"),
            ws0: T.Buffer((p0, NB), F32),
            c0_h: T.handle,
        ):
            T.func_attr({"tirx.noalias": True})
            x = T.match_buffer(x_h, (rows, k_dim), F32)
            c0 = T.match_buffer(c0_h, (rows, n0), F32)
            xu = T.alloc_buffer((rows, kq * 4), "uint8")
            xs = T.alloc_buffer((rows,), F32)
            quant(x, xu, xs)
            for t in T.parallel(p0):
                panel(xu, xs, codes0, wsum0, ws0, c0, t, n0)

    elif g == 2:

        @T.prim_func(private=True, s_tir=True)
        def f(
            x_h: T.handle,
            codes0: T.Buffer((p0, kq, NB, 4), "int8"),
            wsum0: T.Buffer((p0, NB), "int32"),
            ws0: T.Buffer((p0, NB), F32),
            codes1: T.Buffer((p1, kq, NB, 4), "int8"),
            wsum1: T.Buffer((p1, NB), "int32"),
            ws1: T.Buffer((p1, NB), F32),
            c0_h: T.handle,
            c1_h: T.handle,
        ):
            T.func_attr({"tirx.noalias": True})
            x = T.match_buffer(x_h, (rows, k_dim), F32)
            c0 = T.match_buffer(c0_h, (rows, n0), F32)
            c1 = T.match_buffer(c1_h, (rows, n1), F32)
            xu = T.alloc_buffer((rows, kq * 4), "uint8")
            xs = T.alloc_buffer((rows,), F32)
            quant(x, xu, xs)
            for t in T.parallel(p0 + p1):
                if t < p0:
                    panel(xu, xs, codes0, wsum0, ws0, c0, t, n0)
                else:
                    panel(xu, xs, codes1, wsum1, ws1, c1, t - p0, n1)

    else:

        @T.prim_func(private=True, s_tir=True)
        def f(
            x_h: T.handle,
            codes0: T.Buffer((p0, kq, NB, 4), "int8"),
            wsum0: T.Buffer((p0, NB), "int32"),
            ws0: T.Buffer((p0, NB), F32),
            codes1: T.Buffer((p1, kq, NB, 4), "int8"),
            wsum1: T.Buffer((p1, NB), "int32"),
            ws1: T.Buffer((p1, NB), F32),
            codes2: T.Buffer((p2, kq, NB, 4), "int8"),
            wsum2: T.Buffer((p2, NB), "int32"),
            ws2: T.Buffer((p2, NB), F32),
            c0_h: T.handle,
            c1_h: T.handle,
            c2_h: T.handle,
        ):
            T.func_attr({"tirx.noalias": True})
            x = T.match_buffer(x_h, (rows, k_dim), F32)
            c0 = T.match_buffer(c0_h, (rows, n0), F32)
            c1 = T.match_buffer(c1_h, (rows, n1), F32)
            c2 = T.match_buffer(c2_h, (rows, n2), F32)
            xu = T.alloc_buffer((rows, kq * 4), "uint8")
            xs = T.alloc_buffer((rows,), F32)
            quant(x, xu, xs)
            for t in T.parallel(p0 + p1 + p2):
                if t < p0:
                    panel(xu, xs, codes0, wsum0, ws0, c0, t, n0)
                elif t < p0 + p1:
                    panel(xu, xs, codes1, wsum1, ws1, c1, t - p0, n1)
                else:
                    panel(xu, xs, codes2, wsum2, ws2, c2, t - p0 - p1, n2)

    return _finish(f, name)


#: W8A8 activation codes are in [-A8_QMAX, A8_QMAX] (``qlinear_a8``, :mod:`llmc.ir.ops_quant`)
A8_QMAX = 127.0
#: accumulator chains per 16 outputs in :func:`w8a8_vnni` (even and odd k-quads): 8 independent
#: ``vpdpbusd`` chains, enough to cover the instruction's latency
A8_SPLIT = 2


def _bcast4u(buf: Any, idx: list[Any]) -> Any:
    """Four u8 at ``idx`` as one int32 broadcast to 16 lanes (``vpdpbusd``'s unsigned operand)."""
    w = T.broadcast(T.reinterpret(buf.vload(idx, "uint8x4"), dtype="int32"), 16)
    return T.reinterpret(w, dtype="int8x64")


def _finish(f: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    f = f.with_attr("global_symbol", name)
    return f.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
