"""The prefill's TE kernels threaded over their rows (:mod:`llmc.backends.cpu.parallel`): the row
loop becomes parallel only at a symbolic row count (and not in a chain of element-wise stages),
the innermost axis stays serial, and the
results are bit-identical to the serial kernel (the int8 activation quantizer and a layer norm,
two threads)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from llmc.backends.cpu.parallel import parallelize_func
from llmc.backends.kernels import te_ops


def _funcs(rows, k: int) -> dict[str, tirx.PrimFunc]:
    x = te.placeholder((rows, k), "float32", name="x")
    g = te.placeholder((k,), "float32", name="g")
    b = te.placeholder((k,), "float32", name="b")
    q, s = te_ops.act_quant(x, 0.0)
    r = te.reduce_axis((0, k), "r")
    mean = te.compute((rows,), lambda i: te.sum(x[i, r], axis=r), name="sum")
    ln = te.compute((rows, k), lambda i, j: (x[i, j] - mean[i] / k) * g[j] + b[j], name="ln")
    return {
        "act_quant": te.create_prim_func([x, q, s]),
        "norm": te.create_prim_func([x, g, b, ln]),
    }


def _parallel_loops(f: tirx.PrimFunc) -> int:
    return f.script().count("T.parallel(")


def test_static_rows_stay_serial():
    assert all(parallelize_func(f) is None for f in _funcs(4, 32).values())


def test_elementwise_chain_stays_serial():
    x = te.placeholder((tirx.Var("m", "int64"), 16), "float32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 2.0, name="y")
    z = te.compute(x.shape, lambda i, j: y[i, j] + 1.0, name="z")
    assert parallelize_func(te.create_prim_func([x, z])) is None
    one = te.compute(x.shape, lambda i, j: x[i, j] + 1.0, name="one")
    assert parallelize_func(te.create_prim_func([x, one])) is not None


def test_parallel_rows_bit_identical():
    import os

    from llmc.backends.cpu.pipeline import host_cpu

    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    rng = np.random.default_rng(0)
    m, k = 37, 200
    x = (rng.standard_normal((m, k)) * 3).astype("float32")
    x[5] = 0.0  # an all-zero row: the scale's floor
    g, b = rng.standard_normal(k).astype("float32"), rng.standard_normal(k).astype("float32")
    old = os.environ.get("TVM_NUM_THREADS")
    for name, f in _funcs(tirx.Var("m", "int64"), k).items():
        par = parallelize_func(f)
        assert par is not None and _parallel_loops(par) >= 1 and _parallel_loops(f) == 0
        outs = []
        for fn in (f, par):
            ex = tvm.compile(tvm.IRModule({"main": fn}), target)
            dev = tvm.cpu()
            ins = [x] if name == "act_quant" else [x, g, b]
            res = (
                [np.zeros((m, k), "int8"), np.zeros(m, "float32")]
                if name == "act_quant"
                else [np.zeros((m, k), "float32")]
            )
            args = [tvm.runtime.tensor(a, dev) for a in ins + res]
            ex["main"](*args)
            outs.append([a.numpy() for a in args[len(ins) :]])
        for a, c in zip(*outs, strict=True):
            assert a.tobytes() == c.tobytes(), name
    assert os.environ.get("TVM_NUM_THREADS") == old
