"""The CPU's element-wise kernels without a libm call per element (issue 14): RoPE reads the
cos/sin of its positions from ``rope_cos_sin`` (one kernel per position, shared by the heads
and the two projections of a layer) and SiLU uses TOPI's polynomial ``fast_exp``.

Kernel level: the table path is bit for bit the per-element path (both call the same float32
``cosf``/``sinf`` of the same angle), at long positions too; the fast SiLU is within 2e-6
relative of float64. Model level: the toy LM's compiled decode/prefill RoPE and SiLU kernels
call no ``sincosf``/``sinf``/``cosf``/``expf`` (the disassembly of its ``model.so``), and the
artifact matches the interpreter (tests/backends/test_cpu_differential.py covers the rest).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from llmc.backends.cpu.pipeline import build_isa
from llmc.backends.kernels import te_ops

LIBM = re.compile(r"call.*<(sincosf|sinf|cosf|expf|exp)@plt>")


def _build(ins, outs):
    target = tvm.target.Target({"kind": "llvm", "mcpu": build_isa()[1]})
    return tvm.compile(te.create_prim_func([*ins, *outs]), target=target)


@pytest.mark.parametrize(
    "rd,interleaved,mscale", [(64, False, 1.0), (32, False, 1.0), (64, True, 1.25), (48, True, 1.0)]
)
def test_rope_table_is_bit_identical(rd, interleaved, mscale):
    h, s, d = 3, 5, 64
    x = te.placeholder((1, h, s, d), "float32", name="x")
    pos = te.placeholder((1, s), "int64", name="pos")
    inv = te.placeholder((rd // 2,), "float32", name="inv")
    old = _build([x, pos, inv], [te_ops.rope(x, pos, inv, rd, interleaved, mscale)])
    cs = te_ops.rope_cos_sin(pos, inv, mscale)
    new = _build([x, pos, inv], [te_ops.rope(x, pos, inv, rd, interleaved, mscale, cs)])
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = [
        rng.standard_normal((1, h, s, d)).astype("float32"),
        np.array([[0, 1, 777, 65535, 1_000_003]], "int64"),
        (1.0 / 500000.0 ** (np.arange(0, rd, 2) / rd)).astype("float32"),
    ]
    outs = []
    for f in (old, new):
        o = tvm.runtime.tensor(np.zeros((1, h, s, d), "float32"), dev)
        f(*[tvm.runtime.tensor(a, dev) for a in args], o)
        outs.append(o.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_silu_fast_error():
    n = 1 << 16
    x = te.placeholder((n,), "float32", name="x")
    f = _build([x], [te_ops.silu_fast(x)])
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.linspace(-100, 100, n // 2), rng.standard_normal(n // 2) * 4])
    xs = xs.astype("float32")
    dev = tvm.cpu()
    o = tvm.runtime.tensor(np.zeros(n, "float32"), dev)
    f(tvm.runtime.tensor(xs, dev), o)
    want = xs.astype(np.float64) / (1 + np.exp(-xs.astype(np.float64)))
    err = np.abs(o.numpy() - want)
    near = np.abs(xs) < 20
    assert (err[near] / np.maximum(np.abs(want[near]), 1e-30)).max() < 2e-6
    assert err.max() < 2e-6 * np.abs(want).max()


def _libm_calls(so: Path) -> dict[str, set[str]]:
    """Function -> the libm routines it calls, from the disassembly of ``so``."""
    text = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(so)], check=True, capture_output=True, text=True
    ).stdout
    calls: dict[str, set[str]] = {}
    fn = ""
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            fn = m.group(1)
        elif (c := LIBM.search(line)) is not None:
            calls.setdefault(fn, set()).add(c.group(1))
    return calls


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
def test_rope_and_silu_kernels_call_no_libm(toy_cpu: Path):
    calls = _libm_calls(toy_cpu / "model.so")
    assert any("rope_cos_sin" in f for f in calls), calls  # the per-position table kernel
    bad = {f: c for f, c in calls.items() if ("rope" in f or "silu" in f) and "cos_sin" not in f}
    assert not bad, bad
    rules = __import__("json").loads((toy_cpu / "manifest.json").read_text())["backend"]
    assert "silu.fast_exp" in rules["lowering_rules"]
