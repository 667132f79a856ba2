"""VM work per decode step outside the kernels (docs/backends.md, "VM overhead per decode
step"): the builtins a step executes are counted through the VM's instrument hook, so these
tests fail if per-argument type checks or unread tuples come back (counts, not times)."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch
import tvm
from tvm import relax

from llmc.backends.vm_cleanup import drop_unused_tuples_in


def _builtins_per_step(lm: Any, steps: int = 3) -> collections.Counter[str]:
    lm.prefill([1, 2, 3, 4, 5])
    lm.decode(6)  # warm-up
    calls: collections.Counter[str] = collections.Counter()

    def hook(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
        if not before:
            calls[sym] += 1
        return 0

    lm.vm.set_instrument(hook)
    try:
        for t in range(steps):
            lm.decode(7 + t)
    finally:
        lm.vm.set_instrument(None)
    return collections.Counter({k: v // steps for k, v in calls.items()})


def test_decode_checks_no_weight_and_no_static_argument(toy_runner):
    """Only the arguments whose shapes hold a symbolic size are checked: the entry's inputs and
    cache buffers, and each layer call's two cache buffers. Before ``num_input`` every weight
    was checked twice per call (in the entry and again in its layer function)."""
    lm = toy_runner
    calls = _builtins_per_step(lm)
    layers = lm.backend["layer_functions"]["decode_layer"]
    kv = len(lm.backend["kv_cache"]["buffers"])
    weights = len(lm._entry_args["decode"])
    # entry: input_ids, positions, the cache buffers; each layer call: its two cache buffers
    want = 2 + kv + 2 * layers
    assert calls["vm.builtin.check_tensor_info"] == want, calls
    # match_shape also reads the entry's kv_len and each layer's kv_len argument
    assert calls["vm.builtin.match_shape"] == want + 1 + layers, calls
    assert calls["vm.builtin.check_tensor_info"] < weights  # no weight is checked


def test_decode_builtins_bounded(toy_runner):
    """The whole count, with room for small changes but not for a check per weight again
    (280 builtins per step for this 2-layer model before ``num_input``, 194 with it)."""
    lm = toy_runner
    calls = _builtins_per_step(lm)
    total = sum(v for k, v in calls.items() if k.startswith("vm.builtin."))
    assert total <= 210, calls
    # the entry's result and one per layer call: no unread kernel-result tuples
    assert calls["vm.builtin.make_tuple"] <= 1 + lm.backend["layer_functions"]["decode_layer"]


def test_decode_still_refuses_a_wrong_cache_buffer(toy_runner):
    """The entry keeps its checks on what the caller passes: a cache buffer of the wrong dtype
    fails in the VM (not a wrong answer)."""
    lm = toy_runner
    lm.prefill([1, 2, 3])
    rt = lm._rt
    args = [
        rt.from_dlpack(torch.tensor([[4]])),
        rt.from_dlpack(torch.tensor([[3]])),
        *[rt.from_dlpack(torch.zeros(tuple(h.shape), dtype=torch.float64)) for h in lm._kv.handles],
        rt.ShapeTuple([3]),
        *lm._entry_args["decode"],
    ]
    with pytest.raises(Exception, match="dtype|float"):
        lm._fns["decode"](*args)


def _module_with_tuples() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4], "float32"))
    with bb.function("f", [x]):
        unread = bb.emit(relax.Tuple([x, x]))  # noqa: F841
        read = bb.emit(relax.Tuple([x]))
        y = bb.emit(relax.op.add(x, relax.TupleGetItem(read, 0)))
        bb.emit_func_output(relax.Tuple([y, x]))
    return bb.get()


def test_drop_unused_tuples_keeps_what_is_read():
    mod = _module_with_tuples()
    before = mod["f"].script()
    out, dropped = drop_unused_tuples_in(mod)
    assert dropped == 1
    text = out["f"].script()
    assert text.count("= x, x") == 0 and "(x,)" in text and "R.add" in text
    assert mod["f"].script() == before  # the input module is left alone
    inp = tvm.runtime.tensor(torch.arange(4, dtype=torch.float32).numpy())
    ex = tvm.compile(out, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    y, x = vm["f"](inp)
    torch.testing.assert_close(torch.from_dlpack(y), 2 * torch.arange(4, dtype=torch.float32))
