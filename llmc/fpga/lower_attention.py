"""Attention lowering: blocked over ``mask_block`` keys, per head group, K/V streamed from HBM.

For each head group (as many query heads as their scores ``[heads, s, T]`` fit in the activation
buffer, and their K/V blocks in one KV-buffer slot): load each K block (all of the group's kv
heads) into the double-buffered KV buffer, multiply the query rows with it on the MPE (one
instruction covers every head; GQA maps head ``h`` to kv head ``h // hgroup``), skipping
``mask_block x mask_block`` tiles the causal mask hides entirely; one SFU softmax over the rows
``(head, query)`` with the causal / filled-length / window mask and the scale; then the same
blocks of V, accumulating ``P V`` into the output (which is allocated in the layout of the
``permute`` that follows, so the output projection reads it in place).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from llmc.errors import UnsupportedOpError
from llmc.fpga import isa
from llmc.fpga.arch import ArchError
from llmc.fpga.lower import ACT, KVB, KvLoc, split_rows
from llmc.ir.graph import Node

if TYPE_CHECKING:
    from llmc.fpga.lower import Lowerer


def h_attention(L: Lowerer, n: Node) -> None:
    a = L.arch
    if n.attrs.softcap > 0:
        raise UnsupportedOpError(
            f"attention %{n.out.name} at {n.scope or '?'}: logit soft-capping (softcap "
            f"{n.attrs.softcap:g}) is not supported by the FlightLLM special function unit"
        )
    q = L.loc(n.inputs[0])
    k, v = L.loc(n.inputs[1]), L.loc(n.inputs[2])
    if not isinstance(k, KvLoc) or not isinstance(v, KvLoc):
        raise UnsupportedOpError(
            f"attention %{n.out.name} at {n.scope or '?'}: keys and values must come from a KV "
            "cache (concat of a past_k/past_v input); graphs without a cache are not supported"
        )
    _, nh, s, hd = L.shape(n.inputs[0])
    kvh = k.heads
    grp = nh // kvh
    T = k.length  # padded to the bucket: keys beyond R_POS + row are masked
    qsp = split_rows((nh, s, hd), [q.strides[1:]])
    if q.strides[-1] != 1 or qsp is None:
        q = L.contiguous_copy(q)
    x_hs, x_rs = q.strides[1], q.strides[2]
    out = L.alloc_view(L.shape(n.out), n)
    o_hs, o_rs = out.strides[1], out.strides[2]
    blk_max = a.mask_block
    # Head groups: scores [hg, s, T] must fit next to what is live; K/V blocks of the group's
    # kv heads must fit one KV buffer slot.
    hook = L.score_hooks.get(id(n))  # token pruning: this attention also scores the tokens
    if hook is not None:  # (its accumulator first, so the head groups are sized around it)
        hook.prepare(L, T)
    free_elems = L.act_cap - L.act.top
    hg = min(nh, max(0, free_elems // max(1, s * T)))
    kv_fit = L.kv_half // (blk_max * hd)
    hg = min(hg, kv_fit * grp) if kv_fit >= 1 else 0
    if hg < 1:
        field = "buffers.kv_kb" if kv_fit < 1 else "buffers.act_kb"
        val = a.buffers.kv_kb if kv_fit < 1 else a.buffers.act_kb
        raise ArchError(
            f"{a.name}: field '{field}' = {val:g} is too small for attention at {n.scope or '?'} "
            f"({s} queries x {T} keys x head_dim {hd})"
        )
    if hg < nh and hg >= grp:
        hg -= hg % grp
    while hg < grp and grp % hg:
        hg -= 1
    q_ext, out_ext = (ACT, *q.extent()), (ACT, *out.extent())
    scale = n.attrs.scale or 1.0 / math.sqrt(hd)
    flags = isa.SF_KEYLEN | (isa.SF_CAUSAL if n.attrs.causal else 0)
    preg = L.prog.kv_reg.get(k.region.name, 0)  # token pruning: this layer's own KV length
    qb_size = min(s, a.mask_block)
    for h0 in range(0, nh, hg):
        hn = min(hg, nh - h0)
        kv0, kv1 = h0 // grp, (h0 + hn - 1) // grp + 1
        scores = L.alloc_view((hn, s, T))
        sc_hs, sc_rs = s * T, T
        sc_ext = (ACT, *scores.extent())
        kv_reads = {
            id(src): (isa.HBM, src.region.addr, src.region.addr + src.region.size) for src in (k, v)
        }
        blocks = [(t0, min(blk_max, T - t0)) for t0 in range(0, T, blk_max)]

        def visible(qb0: int, qbn: int, t0: int) -> bool:
            # Causal: the block's first key is after every query of the block -> skip.
            return not n.attrs.causal or t0 <= (L.keys - s) + qb0 + qbn - 1

        for which, src in (("k", k), ("v", v)):
            for t0, bn in blocks:
                slot = L.kvslot * L.kv_half
                L.kvslot ^= 1
                nrow = kv1 - kv0
                L.emit(
                    isa.LD,
                    {
                        "buf": KVB,
                        "hbm": src.region.addr + kv0 * src.head_stride + 4 * hd * t0,
                        "chip": slot,
                        "n_outer": 1,
                        "n_inner": nrow,
                        "row_bytes": 4 * hd * bn,
                        "hbm_si": src.head_stride,
                        "chip_si": bn * hd,
                        "dclass": isa.D_ACT,
                        **L.ch(src.region),
                    },
                    reads=[kv_reads[id(src)]],
                    writes=[(KVB, slot, slot + nrow * bn * hd)],
                )
                for qb0 in range(0, s, qb_size):
                    qbn = min(qb_size, s - qb0)
                    if not visible(qb0, qbn, t0):
                        continue
                    op = isa.MV if qbn == 1 else isa.MM
                    if which == "k":
                        f = {
                            "m": qbn,
                            "k": hd,
                            "n": bn,
                            "heads": hn,
                            "h0": h0,
                            "hgroup": grp,
                            "x_addr": q.addr + h0 * x_hs + qb0 * x_rs,
                            "x_rs": x_rs,
                            "x_hs": x_hs,
                            "wbuf": KVB,
                            "w_addr": slot,
                            "w_rs": hd,
                            "w_hs": bn * hd,
                            "wfmt": isa.W_F32,
                            "nnz": 16,
                            "group": hd,
                            "o_addr": scores.addr + qb0 * sc_rs + t0,
                            "o_rs": sc_rs,
                            "o_hs": sc_hs,
                        }
                        reads = [q_ext, (KVB, slot, slot + nrow * bn * hd)]
                        L.emit(op, f, reads=reads, writes=[sc_ext])
                    else:
                        f = {
                            "m": qbn,
                            "k": bn,
                            "n": hd,
                            "heads": hn,
                            "h0": h0,
                            "hgroup": grp,
                            "x_addr": scores.addr + qb0 * sc_rs + t0,
                            "x_rs": sc_rs,
                            "x_hs": sc_hs,
                            "wbuf": KVB,
                            "w_addr": slot,
                            "w_rs": hd,
                            "w_hs": bn * hd,
                            "w_trans": 1,
                            "wfmt": isa.W_F32,
                            "nnz": 16,
                            "group": bn,
                            "o_addr": out.addr + h0 * o_hs + qb0 * o_rs,
                            "o_rs": o_rs,
                            "o_hs": o_hs,
                            "acc": int(t0 > 0),
                        }
                        reads = [sc_ext, (KVB, slot, slot + nrow * bn * hd)]
                        if t0 > 0:
                            reads.append(out_ext)
                        L.emit(op, f, reads=reads, writes=[out_ext])
            if which == "k":
                # Rows stay (head, query): the mask needs the query index.
                L.emit(
                    isa.SFU,
                    {
                        "func": isa.S_SOFTMAX,
                        "n_outer": hn,
                        "n_inner": s,
                        "len": T,
                        "a_addr": scores.addr,
                        "a_so": sc_hs,
                        "a_si": sc_rs,
                        "o_addr": scores.addr,
                        "o_so": sc_hs,
                        "o_si": sc_rs,
                        "fparam": isa.f32_bits(scale),
                        "ival0": L.q_off,
                        "ival1": n.attrs.window,
                        "flags": flags,
                        **({"preg": preg} if preg else {}),
                    },
                    reads=[sc_ext],
                    writes=[sc_ext],
                )
                if hook is not None:
                    hook.group(L, scores, hn, s, T, h0)
        L.act.release(scores.block)
    if hook is not None:
        hook.done(L, T)
    L.bind(n.out, out)
