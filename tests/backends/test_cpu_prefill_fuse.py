"""The prefill's int8 activation quantizer (W8A8, :func:`llmc.backends.kernels.te_actq.act_quant_rows`
and :func:`llmc.backends.cpu.pipeline.act_quant_once`): the kernel with a vectorized row maximum
gives the TE quantizer's bytes (codes and scales), and a prefill quantizes each distinct input
once (q/k/v and gate/up share one call)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from llmc.backends.kernels import te_actq, te_ops
from tests.lm_fixtures import toy_lm


def _target():
    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_act_quant_rows_bit_identical_to_te(dtype):
    """37 rows (odd, threaded) of 208 (13 lane blocks): random rows, an all-zero row (the
    scale's floor), a huge and a tiny row, infinities; the same bytes as the TE kernel."""
    m, k = 37, 208
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((m, k)) * 3).astype(dtype)
    x[3] = 0
    x[7, 5] = 6e4 if dtype == "float16" else 1e30
    x[8] *= np.asarray(1e-6 if dtype == "float16" else 1e-38, dtype)
    x[9, ::7] = -np.inf
    xv = te.placeholder((tirx.Var("m", "int64"), k), dtype, name="x")
    q, s = te_ops.act_quant(xv, 0.0)
    fns = [te.create_prim_func([xv, q, s]), te_actq.act_quant_rows(k, dtype)]
    outs = []
    for f in fns:
        ex = tvm.compile(tvm.IRModule({"main": f}), _target())
        args = [np.ascontiguousarray(x), np.zeros((m, k), "int8"), np.zeros(m, "float32")]
        ts = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
        ex["main"](*ts)
        outs.append([t.numpy() for t in ts[1:]])
    for a, b in zip(*outs, strict=True):
        assert a.tobytes() == b.tobytes()
    assert te_actq.supports_rows(208) and not te_actq.supports_rows(200)


def _layers(spec: str) -> dict[str, str]:
    from llmc.backends.cpu.pipeline import CPUPipeline
    from llmc.backends.lower import Entry
    from llmc.passes import PassContext, build_pipeline
    from llmc.targets import get_target

    g = toy_lm(layers=1, hidden=64, ffn=192)  # q 64, k/v 32 (GQA), gate/up 192
    build_pipeline(spec).run(g, PassContext(calib_samples=2, calib_seqlen=16))
    t = get_target("cpu")
    pipe = CPUPipeline()
    pipe.entries = (Entry("prefill"),)  # the prefill alone: a third of the lowering
    low = pipe.lower(g, t, pipe.tvm_target(t))
    return {gv.name_hint: str(f) for gv, f in low.mod.functions.items()}


def test_prefill_quantizes_each_input_once():
    """W8A8 on one Llama-style layer (7 linears) and the head: 5 quantizer calls in the
    prefill for 8 GEMMs (q/k/v share the norm's rows, gate/up too; o, down and the head read
    their own), each a call of the vectorized kernel."""
    fns = _layers("w8a8")
    body = "".join(f for k, f in fns.items() if k in ("prefill", "prefill_layer"))
    assert len(re.findall(r"call_tir\(w8a8_prefill", body)) == 8
    assert len(re.findall(r"call_tir\(act_quant", body)) == 5, body
    # the kernels called are the hand-written one (threaded), not the TE quantizer
    aq = {k: f for k, f in fns.items() if k.startswith("act_quant")}
    assert aq and all("T.parallel" in f and "T.vectorized" in f for f in aq.values())


def _gelu_func(rows):
    import math

    from tvm import topi

    x = te.placeholder((rows, 96), "float32", name="x")
    c = math.sqrt(2.0 / math.pi)  # llmc.backends.rules._gelu_tanh_fast
    inner = topi.multiply(topi.add(x, topi.multiply(topi.multiply(x, x), x) * 0.044715), c)
    y = topi.multiply(topi.multiply(x, 0.5), topi.add(topi.fast_tanh(inner), 1.0))
    return te.create_prim_func([x, y])


def test_gelu_chain_inlined_into_one_threaded_pass():
    """TOPI's 11-stage tanh GELU becomes one block (then threaded at a symbolic row count,
    left serial at decode's one row); its numbers move by at most a few float32 ulps (FMA
    contraction), as close to the float64 GELU as before. A single stage or a reduction is
    left alone."""
    from llmc.backends.cpu.parallel import inline_chain, parallelize_func

    f = _gelu_func(tirx.Var("m", "int64"))
    g = inline_chain(f)
    assert g is not None and f.script().count("T.sblock(") == 12  # the root block too
    assert g.script().count("T.sblock(") == 2
    par = parallelize_func(g)
    assert par is not None and "T.parallel(" in par.script()
    one = inline_chain(_gelu_func(1))
    assert one is not None and parallelize_func(one) is None  # decode: one pass, serial
    m = 40
    x = (np.random.default_rng(2).standard_normal((m, 96)) * 3).astype("float32")
    outs = []
    for fn in (f, par):
        ex = tvm.compile(tvm.IRModule({"main": fn}), _target())
        ts = [tvm.runtime.tensor(a, tvm.cpu()) for a in (x, np.zeros((m, 96), "float32"))]
        ex["main"](*ts)
        outs.append(ts[1].numpy().astype(np.float64))
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    assert np.abs(outs[0] - outs[1]).max() <= 2e-6
    assert np.abs(outs[1] - ref).max() <= 1.5 * max(np.abs(outs[0] - ref).max(), 1e-7)
    xv = te.placeholder((tirx.Var("m", "int64"), 16), "float32", name="x")
    single = te.compute(xv.shape, lambda i, j: xv[i, j] * 2.0, name="single")
    assert inline_chain(te.create_prim_func([xv, single])) is None
    q, s = te_ops.act_quant(xv, 0.0)
    assert inline_chain(te.create_prim_func([xv, q, s])) is None


def test_new_sequence_reuses_an_unheld_cache(tiny_cpu_artifact):
    """A prefill from an empty past takes the last sequence's cache buffers when nothing
    outside the runner holds a view of them (no fresh pages to fault in); a held ``present``,
    or a slice of one, keeps its buffers (a new cache is made) and its values. Logits and the
    next decode step are the same as on a fresh runner."""
    import torch

    from llmc.runtime.tvm_runner import load

    lm = load(tiny_cpu_artifact)
    ids = torch.randint(0, 200, (1, 24), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(24)[None]
    first = lm.forward(ids, pos, lm.empty_past(1))[0]
    c = lm._kv
    lm.forward(ids, pos, lm.empty_past(1))  # the result dropped: the buffers are free
    assert lm._kv is c
    logits, present = lm.forward(ids, pos, lm.empty_past(1))
    assert lm._kv is c and torch.equal(logits, first)
    keep = present[0][0].clone()
    lm.forward(ids.flip(1), pos, lm.empty_past(1))  # present held: new buffers
    assert lm._kv is not c and torch.equal(present[0][0], keep)
    c2 = lm._kv
    part = lm.forward(ids, pos, lm.empty_past(1))[1][0][0][:, :, :3]  # a slice of a view
    assert lm._kv is c2
    lm.forward(ids, pos, lm.empty_past(1))
    assert lm._kv is not c2 and part.shape[2] == 3
    del part, present
    c3 = lm._kv
    lg, pr = lm.forward(ids, pos, lm.empty_past(1))
    assert lm._kv is c3
    d, _ = lm.forward(ids[:, :1], torch.tensor([[24]]), pr)
    fresh = load(tiny_cpu_artifact)
    lg2, pr2 = fresh.forward(ids, pos, fresh.empty_past(1))
    d2, _ = fresh.forward(ids[:, :1], torch.tensor([[24]]), pr2)
    assert torch.equal(lg, lg2) and torch.equal(d, d2)
