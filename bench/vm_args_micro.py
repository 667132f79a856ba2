"""Cost of N `vm.builtin.alloc_tensor` per call vs N extra tensor arguments per call.

Usage: TVM_NUM_THREADS=1 python bench/vm_args_micro.py  (docs/backends.md, "VM overhead per decode
step"). Three Relax functions: `alloc` allocates a storage and N = 354 tensor views on it (what a
decode step of the 134 M model did per call), `args` takes N more tensor arguments (what it does now), `empty` takes one; thread CPU time per call, median of 7 x 2000 calls.
"""

import statistics
import time

import numpy as np
import tvm
from tvm import relax
from tvm.relax.op.vm import vm as rvm

N = 354
bb = relax.BlockBuilder()
x = relax.Var("x", relax.TensorType([4], "float32"))
with bb.function("alloc", [x], attrs={"num_input": 1}):
    st = bb.emit(rvm.alloc_storage(relax.ShapeExpr([4096]), 0, "uint8"))
    ts = [
        bb.emit(rvm.alloc_tensor(st, 16 * (i % 64), relax.ShapeExpr([4]), "float32"))
        for i in range(N)
    ]
    bb.emit_func_output(x)
ws = [relax.Var(f"w{i}", relax.TensorType([4], "float32")) for i in range(N)]
with bb.function("args", [x, *ws], attrs={"num_input": 1}):
    bb.emit_func_output(x)
with bb.function("empty", [x], attrs={"num_input": 1}):
    bb.emit_func_output(x)
mod = bb.get()
seq = tvm.transform.Sequential(
    [
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
)
ex = tvm.compile(mod, target="llvm", relax_pipeline=seq)
vm = relax.VirtualMachine(ex, tvm.cpu())
a = tvm.runtime.tensor(np.zeros(4, "float32"))
wl = [tvm.runtime.tensor(np.zeros(4, "float32")) for _ in range(N)]
fa, fb, fe = vm["alloc"], vm["args"], vm["empty"]


def t(f, *args):
    c = time.thread_time()
    for _ in range(2000):
        f(*args)
    return (time.thread_time() - c) / 2000 * 1e6


r = {"alloc": [], "args": [], "empty": []}
for _ in range(7):
    r["alloc"].append(t(fa, a))
    r["args"].append(t(fb, a, *wl))
    r["empty"].append(t(fe, a))
print({k: round(statistics.median(v), 2) for k, v in r.items()}, "us per call, N =", N)
