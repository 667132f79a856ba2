"""Thread the unscheduled CPU kernels of a prefill over their rows.

The hand-written kernels (GEMMs, attention) come scheduled (``tirx.is_scheduled``) and parallel;
everything else (norms, GELU, bias adds, the int8 activation quantizer, transposes and slices)
is TE legalized as is: one serial loop nest, which LLVM vectorizes. In a 2-thread prefill those
ran on one core while the other waited (GPT-2 small w8a8, 512 tokens: 35-40% of the one-thread
kernel time, docs/backends.md "Prefill GEMMs inside the model").

:func:`parallelize_rows` marks, in every unscheduled function, each block's leading spatial
loops as one parallel loop when their extent is symbolic (a prefill's row count; decode's
static one-row kernels are left alone: a fork/join costs more than their work). The innermost
spatial axis of an injective block stays serial so that LLVM still vectorizes it. Only loops
over *independent outputs* are split between threads: every element is computed by the same
operations in the same order, so results are bit-identical.

:func:`inline_chains` runs first: a function that is a chain of element-wise stages (TOPI's
tanh GELU, 11 of them) becomes one block, one pass over the rows, which the above then threads
like any other. That one is **not** bit-identical (LLVM contracts the merged multiply-adds);
``LLMC_CPU_TE_STAGES=1`` at compile time keeps the stages.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func


def _symbolic(ext: tirx.PrimExpr) -> bool:
    return not isinstance(ext, tirx.IntImm)


def parallelize_func(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with its row loops parallel, or None when nothing applies."""
    attrs = func.attrs or {}
    if attrs.get("tirx.is_scheduled"):
        return None
    sch = s_tir.Schedule(func)
    try:
        infos = normalize_prim_func(sch)
    except Exception:  # a shape the normalizer does not take: leave the kernel serial
        return None
    if not infos or (len(infos) > 1 and all(bi.is_injective() for bi in infos)):
        # a chain of element-wise stages (TOPI's GELU: 11, each writing a [rows, n]
        # intermediate) stays serial: one fork/join per stage cost more CPU than it saved on
        # this loaded 2-core host (GPT-2's GELU 84 -> 149 CPU ms per prefill, 2 threads).
        # Inlining the chain into one pass was 4.5x faster but not bit-identical (LLVM
        # contracts the merged multiply-adds): inline_chains does that first, by choice.
        return None
    changed = False
    for bi in infos:
        dk = bi.dom_kind()
        lead = len(dk) - len(dk.lstrip("S"))
        # keep an injective block's innermost axis for the vectorizer
        npar = lead if "R" in dk else lead - 1
        if npar < 1:
            continue
        loops = sch.get_loops(bi.block_rv)[:npar]
        if not any(_symbolic(sch.get(lp).extent) for lp in loops):
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(fused)
        changed = True
    return sch.mod["main"] if changed else None


def inline_chain(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with a chain of element-wise stages (every block injective, more than one)
    inlined into its last block: one pass over the data instead of one per stage, each
    writing a full intermediate (TOPI's tanh GELU: 11 stages, 3.9x faster at 512 x 3072, one
    thread). None when ``func`` is no such chain or a stage does not inline.

    **Not bit-identical**: LLVM contracts a multiply feeding an add across the former stage
    boundaries into one FMA (one rounding instead of two). The GELU moved by up to 9.5e-7
    (2.4% of the elements of a 512 x 3072 normal input, x 2) and stayed as close to the
    float64 exact-tanh GELU (8.1e-7 against 8.1e-7). Applied at every row count, so decode and
    prefill compute the same numbers."""
    attrs = func.attrs or {}
    if attrs.get("tirx.is_scheduled"):
        return None
    sch = s_tir.Schedule(func)
    try:
        infos = normalize_prim_func(sch)
    except Exception:  # a shape the normalizer does not take: leave the kernel as it is
        return None
    if not infos or len(infos) < 2 or not all(bi.is_injective() for bi in infos):
        return None
    try:
        for bi in infos[:-1]:
            sch.compute_inline(bi.block_rv)
    except Exception:  # e.g. an intermediate read at another index than it is written
        return None
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="llmc.InlineChains")
def inline_chains(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """:func:`inline_chain` over every PrimFunc of ``mod`` (before :func:`parallelize_rows`,
    which then threads the single block like any other)."""
    updates = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            g = inline_chain(f)
            if g is not None:
                updates[gv] = g
    for gv, g in updates.items():
        mod[gv] = g
    return mod


@tvm.transform.module_pass(opt_level=0, name="llmc.ParallelizeRows")
def parallelize_rows(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """:func:`parallelize_func` over every PrimFunc of ``mod``."""
    updates = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            g = parallelize_func(f)
            if g is not None:
                updates[gv] = g
    for gv, g in updates.items():
        mod[gv] = g
    return mod


__all__ = ["inline_chain", "inline_chains", "parallelize_func", "parallelize_rows"]
