"""Cost of N `vm.builtin.alloc_tensor` per call vs N extra tensor arguments per call.

Usage: TVM_NUM_THREADS=1 python bench/vm_args_micro.py  (docs/backends.md, "VM overhead per decode
step"). Three Relax functions: `alloc` allocates a storage and N = 354 tensor views on it (what a
decode step of the 134 M model did per call), `args` takes N more tensor arguments (what it does now), `empty` takes one; thread CPU time per call, median of 7 x 2000 calls.
"""

import argparse
import statistics
import time

import numpy as np


def build(n: int):
    """The three functions (``alloc``, ``args``, ``empty``) compiled and loaded in a VM."""
    import tvm
    from tvm import relax
    from tvm.relax.op.vm import vm as rvm

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4], "float32"))
    with bb.function("alloc", [x], attrs={"num_input": 1}):
        st = bb.emit(rvm.alloc_storage(relax.ShapeExpr([4096]), 0, "uint8"))
        for i in range(n):
            bb.emit(rvm.alloc_tensor(st, 16 * (i % 64), relax.ShapeExpr([4]), "float32"))
        bb.emit_func_output(x)
    ws = [relax.Var(f"w{i}", relax.TensorType([4], "float32")) for i in range(n)]
    with bb.function("args", [x, *ws], attrs={"num_input": 1}):
        bb.emit_func_output(x)
    with bb.function("empty", [x], attrs={"num_input": 1}):
        bb.emit_func_output(x)
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
    ex = tvm.compile(bb.get(), target="llvm", relax_pipeline=seq)
    return relax.VirtualMachine(ex, tvm.cpu())


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=354, help="tensors allocated / passed per call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2000, help="calls per round")
    args = ap.parse_args(argv)
    import tvm

    vm = build(args.n)
    a = tvm.runtime.tensor(np.zeros(4, "float32"))
    wl = [tvm.runtime.tensor(np.zeros(4, "float32")) for _ in range(args.n)]
    fa, fb, fe = vm["alloc"], vm["args"], vm["empty"]

    def t(f, *fargs):
        c = time.thread_time()
        for _ in range(args.calls):
            f(*fargs)
        return (time.thread_time() - c) / args.calls * 1e6

    r: dict[str, list[float]] = {"alloc": [], "args": [], "empty": []}
    for _ in range(args.rounds):
        r["alloc"].append(t(fa, a))
        r["args"].append(t(fb, a, *wl))
        r["empty"].append(t(fe, a))
    med = {k: round(statistics.median(v), 2) for k, v in r.items()}
    print(med, "us per call, N =", args.n)
    return med


if __name__ == "__main__":
    main()
