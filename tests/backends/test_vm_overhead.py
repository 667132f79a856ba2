"""VM work per decode step outside the kernels (docs/backends.md, "VM overhead per decode
step"): the builtins a step executes are counted through the VM's instrument hook, so these
tests fail if per-argument type checks, unread tuples or per-activation releases come back
(counts, not times)."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch
import tvm
from tvm import relax

from llmc.backends.pipeline import TVMPipeline
from llmc.backends.vm_cleanup import drop_small_kills_in, drop_unused_tuples_in
from llmc.backends.vm_plan import inline_layers_in, workspace_args


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
    cache buffers. Before ``num_input`` every weight was checked twice per call (in the entry
    and again in its layer function); before the layer functions were inlined into the decode
    step (``llmc.backends.vm_plan``) each layer call checked its two cache buffers again."""
    lm = toy_runner
    calls = _builtins_per_step(lm)
    kv = len(lm.backend["kv_cache"]["buffers"])
    weights = len(lm._entry_args["decode"])
    want = 2 + kv  # input_ids, positions, the cache buffers
    assert calls["vm.builtin.check_tensor_info"] == want, calls
    # match_shape also reads kv_len
    assert calls["vm.builtin.match_shape"] == want + 1, calls
    assert calls["vm.builtin.check_tensor_info"] < weights  # no weight is checked


def test_decode_builtins_bounded(toy_runner):
    """The whole count, with room for small changes but not for a check per weight, a release
    per activation or an allocation per activation again (this 2-layer model: 280 builtins
    per step before, 194 with ``num_input``, 139 with the decode step's releases dropped too,
    26 with the layers inlined and the step's activation memory allocated once)."""
    lm = toy_runner
    calls = _builtins_per_step(lm)
    total = sum(v for k, v in calls.items() if k.startswith("vm.builtin."))
    assert total <= 40, calls
    # no layer call: no argument tuple, no result tuple to take apart, no frame's releases
    assert calls["vm.builtin.make_tuple"] == 1, calls  # the entry's result
    assert calls["vm.builtin.tuple_getitem"] == 0, calls
    assert calls["vm.builtin.null_value"] <= 1, calls


def test_decode_allocates_only_its_result(toy_runner):
    """The decode step's activations live in tensors the runner got once from
    ``decode_workspace`` (``backend.workspaces``): a step allocates one storage and one tensor,
    for the logits it returns, and makes at most one reshaped view (theirs), whatever the
    number of layers (was: one storage per planned buffer and one tensor per activation, per
    layer call: 102 and 462 per step on the 12-layer model of bench/decode_overhead.json)."""
    lm = toy_runner
    assert lm.backend["workspaces"] == {"decode": "decode_workspace"}
    calls = _builtins_per_step(lm)
    assert calls["vm.builtin.alloc_storage"] == 1, calls
    assert calls["vm.builtin.alloc_tensor"] == 1, calls
    assert calls["vm.builtin.reshape"] <= 1, calls
    assert "decode_layer" not in calls  # inlined: the step calls no layer function


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


KILL = "relax.vm.kill_object"


def _module_with_kills() -> tvm.IRModule:
    n = tvm.tirx.Var("n", "int64")
    kill = tvm.ir.Op.get(KILL)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4], "float32"))
    y = relax.Var("y", relax.TensorType([n], "float32"))
    with bb.function("f", [x, y]):
        small = bb.emit(relax.op.add(x, x))  # 16 bytes
        big = bb.emit(relax.op.add(y, y))  # symbolic size
        c = bb.emit(relax.op.multiply(small, small))
        bb.emit(relax.Call(kill, [small]))
        d = bb.emit(relax.op.multiply(big, big))
        bb.emit(relax.Call(kill, [big]))
        bb.emit_func_output(relax.Tuple([c, d]))
    return bb.get()


def test_drop_small_kills_keeps_releases_of_symbolic_size():
    mod = _module_with_kills()
    out, dropped = drop_small_kills_in(mod)
    assert dropped == 1
    kept = [
        b.value.args[0]
        for block in out["f"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == KILL
    ]
    assert len(kept) == 1 and str(kept[0].ty.shape) == "R.shape([n])"  # the symbolic one
    # over the byte budget, every release stays
    assert drop_small_kills_in(mod, limit=8)[1] == 0


def _layered_module() -> tvm.IRModule:
    """``decode(x) = 2 * layer(layer(x))`` with ``layer(x) = x * x + x``: a private function
    called twice, as the lowering outlines identical decoder layers."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 8], "float32"))
    with bb.function("layer", [x], attrs={"num_input": 0}, private=True):
        with bb.dataflow():
            y = bb.emit(relax.op.multiply(x, x))
            z = bb.emit_output(relax.op.add(y, x))
        bb.emit_func_output(z)
    layer = bb.get().get_global_var("layer")
    x = relax.Var("x", relax.TensorType([1, 8], "float32"))
    with bb.function("decode", [x], attrs={"llmc.entry": "decode", "num_input": 1}):
        with bb.dataflow():
            a = bb.emit(relax.Call(layer, [x]))
            b = bb.emit(relax.Call(layer, [a]))
            c = bb.emit_output(relax.op.add(b, b))
        bb.emit_func_output(c)
    return relax.transform.LegalizeOps()(bb.get())


def test_inline_layers_copies_each_call_and_drops_the_function():
    mod = relax.transform.ToNonDataflow()(_layered_module())
    out, n = inline_layers_in(mod)
    assert n == 2
    names = {gv.name_hint for gv, f in out.functions.items() if isinstance(f, relax.Function)}
    assert names == {"decode"}  # the layer function is called no more
    assert "layer(" not in out["decode"].script()


def test_workspace_is_allocated_once_and_reused():
    """The whole build: the step's intermediates come from ``decode_workspace``, the step
    allocates only its result, and calling it again with other inputs gives their answer
    (nothing of the previous call leaks through the reused memory)."""
    workspaces: dict[str, str] = {}
    ex = TVMPipeline().build(_layered_module(), tvm.target.Target("llvm"), workspaces)
    assert workspaces == {"decode": "decode_workspace"}
    vm = relax.VirtualMachine(ex, tvm.cpu())
    ws = workspace_args(vm, workspaces, "decode")
    assert len(ws) >= 1
    calls: collections.Counter[str] = collections.Counter()

    def hook(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
        if not before:
            calls[sym] += 1
        return 0

    vm.set_instrument(hook)
    results = []
    for seed in range(3):
        x = torch.randn(1, 8, generator=torch.Generator().manual_seed(seed))
        got = torch.from_dlpack(vm["decode"](tvm.runtime.tensor(x.numpy()), *ws))
        y = x * x + x
        torch.testing.assert_close(got, 2 * (y * y + y))
        results.append((got, got.clone()))
    for got, copy in results:  # a returned tensor is never workspace memory a later call reuses
        assert torch.equal(got, copy)
    assert calls["vm.builtin.alloc_storage"] == 3 and calls["vm.builtin.alloc_tensor"] == 3


def test_cpu_kernel_scratch_is_on_the_stack():
    """The CPU kernels' small scratch arrays are in the ``"global"`` scope
    (``llmc.backends.kernels.cpu.SCRATCH``): LowerTVMBuiltin keeps those under 1 KiB on the
    stack. In ``"local"`` each was a TVMBackendAllocWorkspace/Free pair per parallel task of
    every call (here the decode attention's running max ``m``, new max ``mn``, rescale ``al``,
    sum ``ls`` and merge state ``st``; arrays of 1 KiB and more still come from the pool)."""
    from llmc.backends.kernels import attention_cpu as A

    f = A.attention_sync(4, 2, 16, "float32", 0.25, True, 0)
    ex = tvm.compile(tvm.IRModule({"attn": f.with_attr("global_symbol", "attn")}), "llvm")
    ll = (ex.mod if hasattr(ex, "mod") else ex).inspect_source("ll").splitlines()
    allocated = set()
    for line in ll:
        name, eq, rhs = line.strip().partition(" = ")
        if eq and "tail call ptr %" in rhs and "(i32 1, i32 %dev_id" in rhs:
            allocated.add(name.lstrip("%"))
    assert "PART" in allocated  # the split-K partials (1 KiB and more) still come from the pool
    assert not allocated & {"m", "mn", "al", "ls", "st"}, allocated


def test_decode_runs_no_copy_kernel_for_a_view(toy_runner):
    """A decode step's ``[1, 1, h*d] <-> [1, h, 1, d]`` transposes move only unit axes: they
    lower to reshapes, which become views before fusion (``CPUPipeline.views_before_fusion``),
    so no kernel of reshapes and transposes alone runs (was: two per layer)."""
    import re

    calls = _builtins_per_step(toy_runner)
    copies = [k for k in calls if re.fullmatch(r"(fused_)?((reshape|transpose)\d*_?)+", k)]
    assert not copies, calls
    assert not any("transpose" in k for k in calls), calls
