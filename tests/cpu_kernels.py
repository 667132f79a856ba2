"""Builders shared by the CPU kernel tests (tests/backends/test_cpu_avx2.py, test_cpu_vnni.py,
test_cpu_sparse.py, test_attention_cpu.py, test_compressed.py, tests/passes/test_act_bits.py): TVM targets, the
assembly of a compiled kernel and its small workspace allocations, the weight panels the kernels
read, the quantized-kernel runners, the toy LM's compression recipes, and the prefill + decode
comparison of a CPU artifact with the reference interpreter.

Each builder is the one the test files held before (the same data, seeds and checks); the test
files import them under their old private names.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from llmc.ir import GraphBuilder, QuantSpec, StorageFormat, TensorType, sym
from llmc.ir.graph import Graph
from llmc.ir.params import Param

# ------------------------------------------------------------------------------ kernel level


def host_target():
    """The TVM target of this machine's CPU (what the CPU backend builds for)."""
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


def haswell_target():
    """An AVX2-only TVM target (no AVX-512), whatever the host."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})


def asm(ex) -> str:
    """The assembly of every LLVM module of a compiled executable (host module and imports)."""
    stack, out = [ex.mod], []
    while stack:
        m = stack.pop()
        if m.kind == "llvm":
            out.append(m.inspect_source("asm"))
        stack.extend(m.imports)
    return "\n".join(out)


def small_workspace_allocs(f) -> list[int]:
    """Byte sizes of the constant-size TVMBackendAllocWorkspace calls under 1 KiB that the host
    lowering of the PrimFunc ``f`` makes: buffers that could live on the stack (scope
    ``global``) but pay a workspace-pool call pair each time their block runs (scope
    ``local``, see :data:`llmc.backends.kernels.cpu.SCRATCH`)."""
    import re

    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline, finalize_host_passes

    t = host_target()
    mod = tvm.tirx.transform.BindTarget(t.with_host(t))(tvm.IRModule({"main": f}))
    lower, _, _ = default_s_tir_pipeline()
    text = finalize_host_passes()(lower(mod)).script()
    sizes = re.findall(r"TVMBackendAllocWorkspace\(1, \w+, T\.uint64\((\d+)\), ", text)
    return [int(n) for n in sizes if int(n) < 1024]


def panel(a: np.ndarray, n: int, width: int = 64) -> np.ndarray:
    """``[N, X] -> [P, X, width]``, rows zero-padded to a multiple of ``width``."""
    panels = (n + width - 1) // width
    b = np.zeros((panels * width, a.shape[1]), a.dtype)
    b[:n] = a
    return b.reshape(panels, width, -1).transpose(0, 2, 1).copy()


def panel32(a: np.ndarray, n: int) -> np.ndarray:
    """:func:`panel` 32 wide (the AVX2 kernels' panels)."""
    return panel(a, n, 32)


def panel_torch(a: torch.Tensor) -> np.ndarray:
    """:func:`panel` of a tensor (any dtype torch holds, float16 included), 64 wide."""
    n = a.shape[0]
    p = (n + 63) // 64
    b = torch.cat([a, a.new_zeros(p * 64 - n, a.shape[1])])
    return b.reshape(p, 64, -1).permute(0, 2, 1).contiguous().numpy()


def pack_codes(u: np.ndarray, kp: int, width: int, nibbles: bool) -> np.ndarray:
    """Unsigned codes ``[N, K]`` in the kernels' panel layout: K padded to ``kp``, N to a multiple
    of ``width``; 4 bytes per lane and K-step, two 4-bit codes a byte when ``nibbles``."""
    n, k = u.shape
    full = np.zeros((((n + width - 1) // width) * width, kp), np.uint8)
    full[:n, :k] = u
    if nibbles:
        t = full.reshape(-1, width, kp // 8, 2, 4)
        return (t[:, :, :, 0, :] | (t[:, :, :, 1, :] << 4)).transpose(0, 2, 1, 3).copy()
    return full.reshape(-1, width, kp // 4, 4).transpose(0, 2, 1, 3).copy()


def int8_panels(wq: np.ndarray, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Int8 codes ``[N, K]`` in the W8A8 kernels' layout ``[P, ceil(K/4), width, 4]`` (K padded
    to whole quads, N to whole panels, with zeros) and their row sums ``[P, width]`` int32 (zero
    on the padding)."""
    n, k = wq.shape
    kq = (k + 3) // 4
    full = np.zeros((-(-n // width) * width, kq * 4), np.int8)
    full[:n, :k] = wq
    codes = full.reshape(-1, width, kq, 4).transpose(0, 2, 1, 3).copy()
    return codes, full.astype(np.int32).sum(1).astype("int32").reshape(-1, width)


def lane_panel(v: np.ndarray, n: int, width: int = 64) -> np.ndarray:
    """A per-output vector ``[N]`` (the W8A8 weight scales) as ``[P, width]``, zero-padded."""
    return panel(v[:, None], n, width)[:, 0, :]


def run_digits_kernel(
    mod: ModuleType,
    fn,
    target,
    width: int,
    x: np.ndarray,
    u: np.ndarray,
    sc: np.ndarray,
    of: np.ndarray,
    group: int,
    parts: int,
    static: bool,
    nibbles: bool,
):
    """Quantize ``x`` into ``parts`` int8 digits with ``mod.act_digits`` and run the weight kernel
    ``fn(k, n, group, parts, "float32", rows | None)`` on the packed codes ``u`` (scales ``sc``,
    offsets ``of``). Returns (output, the digit tensor, the compiled kernel)."""
    import tvm
    from tvm import te

    from llmc.backends.kernels.cpu_vnni import group_sums

    rows, k = x.shape
    n = u.shape[0]
    g = min(group, k)
    kp, ab = mod.padded_k(k, group), mod.act_block(k, group)
    xt = te.placeholder((rows, k), "float32", name="x")
    d, s = mod.act_digits(xt, kp, ab, parts)
    prep = tvm.compile(te.create_prim_func([xt, d, s, group_sums(xt, group)]), target=target)
    ex = tvm.compile(fn(k, n, group, parts, "float32", rows if static else None), target)
    codes = pack_codes(u, kp, width, nibbles)
    cpu = tvm.cpu()

    def arr(a):
        return tvm.runtime.tensor(a, cpu)

    xd = arr(np.zeros((rows, parts, kp), "int8"))
    xs = arr(np.zeros((rows, kp // ab, parts), "float32"))
    gs = arr(np.zeros((rows, k // g), "float32"))
    prep(arr(x), xd, xs, gs)
    out = arr(np.zeros((rows, n), "float32"))
    ex(xd, xs, gs, arr(codes), arr(panel(sc, n, width)), arr(panel(of, n, width)), out)
    return out.numpy(), xd.numpy(), ex


def _weights(rng, rows: int, k: int, n: int, group: int, top: int, offsets):
    """An outlier activation (40 in column 3), random codes below ``top``, per-group scales and
    ``offsets(rng, shape)``; the fp64 product of the dequantized weight."""
    x = rng.standard_normal((rows, k)).astype("float32")
    x[:, 3] = 40.0  # an outlier in the first block
    g = min(group, k)
    u = rng.integers(0, top, (n, k)).astype(np.uint8)
    sc = (rng.random((n, k // g)) * 0.02 + 1e-3).astype("float32")
    of = offsets(rng, (n, k // g))
    w = (u - np.repeat(of, g, 1).astype(np.float64)) * np.repeat(sc, g, 1)
    return x, u, sc, of, x.astype(np.float64) @ w.T


def run_avx2(kernel: str, k: int, n: int, group: int, parts: int, rows: int, static: bool):
    """Random codes (q4: nibbles; q8w: the full 0..255 range, offsets near 128), an outlier
    activation; the kernel's result, the fp64 product and the compiled kernel."""
    from llmc.backends.kernels import cpu_avx2 as A

    rng = np.random.default_rng(k + n + group)
    top, mid = (16, 8) if kernel == "q4" else (256, 128)
    x, u, sc, of, want = _weights(
        rng, rows, k, n, group, top, lambda r, s: (r.random(s) * 4 + mid - 2).astype("float32")
    )
    fn = A.q4_avx2 if kernel == "q4" else A.q8w_avx2
    got, xd, ex = run_digits_kernel(
        A, fn, haswell_target(), 32, x, u, sc, of, group, parts, static, kernel == "q4"
    )
    assert np.abs(xd.astype(np.int32)).max() <= 127  # no -128 digit (vpsignb)
    return got, want, ex


def run_vnni_q4(k: int, n: int, group: int, parts: int, rows: int, static: bool):
    """4-bit codes, offsets near 8, an outlier activation: (result, fp64 product, kernel)."""
    from llmc.backends.kernels import cpu_vnni as V

    rng = np.random.default_rng(k + n + group)
    x, u, sc, of, want = _weights(
        rng, rows, k, n, group, 16, lambda r, s: (r.random(s) * 4 + 6).astype("float32")
    )
    got, _, ex = run_digits_kernel(
        V, V.q4_vnni, host_target(), 64, x, u, sc, of, group, parts, static, True
    )
    return got, want, ex


def run_vnni_q8w(k: int, n: int, group: int, parts: int, rows: int, static: bool):
    """8-bit weight-only codes (symmetric: u = code + 127 in 0..254, offset 127)."""
    from llmc.backends.kernels import cpu_vnni as V

    rng = np.random.default_rng(k + n + group + 1)
    x, u, sc, of, want = _weights(
        rng, rows, k, n, group, 255, lambda r, s: np.full(s, 127.0, "float32")
    )
    got, _, ex = run_digits_kernel(
        V, V.q8w_vnni, host_target(), 64, x, u, sc, of, group, parts, static, False
    )
    return got, want, ex


# ------------------------------------------------------------------------------ model level


def compress_q4(graph: Graph, group: int, w8a8: bool, head8: bool = False) -> Graph:
    """4-bit RTN of the toy LM's layers (``head8``: of every linear, the head at 8 bits); with
    ``w8a8``, 4-bit MLPs and W8A8 attention."""
    from llmc.passes import PassContext
    from llmc.passes.manager import PassManager
    from llmc.passes.rtn import RTNQuant
    from llmc.passes.w8a8 import W8A8

    if w8a8:
        passes = [
            RTNQuant(bits=4, group=group, sym=False, include=("mlp",), measure=False),
            W8A8(include=("self_attn",), measure=False),
        ]
    elif head8:
        passes = [RTNQuant(bits=4, group=group, measure=False)]
    else:
        passes = [
            RTNQuant(bits=4, group=group, sym=False, include=("model.layers",), measure=False)
        ]
    PassManager(passes).run(graph, PassContext(calib_samples=2, calib_seqlen=32))
    return graph


def check_against_interp(g: Graph, art: Path, seq: int = 5, token: int = 7) -> dict:
    """Prefill (2 x ``seq`` random tokens, seed 0) and one decode step (``token``) of the CPU
    artifact ``art`` against the interpreter on ``g``, at float32 tolerance (1e-4); returns the
    artifact's manifest."""
    from llmc.runtime.interp import run
    from llmc.runtime.tvm_runner import load

    lm = load(art)
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, seq))
    pos = torch.arange(seq).expand(2, seq).contiguous()
    past = lm.empty_past(2)
    got, present = lm.forward(ids, pos, past)
    want = run(g, [ids, pos, *[t for kv in past for t in kv]])
    torch.testing.assert_close(got, want[0], rtol=1e-4, atol=1e-4)
    one, at = torch.tensor([[token]]), torch.tensor([[seq]])
    got1, _ = lm.forward(one, at, [(k[:1], v[:1]) for k, v in present])
    want1 = run(g, [one, at, *[t[:1] for t in want[1:]]])
    torch.testing.assert_close(got1, want1[0], rtol=1e-4, atol=1e-4)
    return json.loads((art / "manifest.json").read_text())


def check_rules(g: Graph, art: Path) -> dict[str, int]:
    """:func:`check_against_interp`, returning the lowering rules the backend ran."""
    return check_against_interp(g, art)["backend"]["lowering_rules"]


def one_linear_graph(
    codes: torch.Tensor, scale: torch.Tensor, spec: QuantSpec, name: str = "q"
) -> Graph:
    """A graph of one quantized ``linear`` (``fc.weight``: ``codes`` and ``scale`` under
    ``spec``) over an ``[batch, K]`` float32 input: printer/parser/verifier tests of a
    quantization option."""
    p = Param(
        "fc.weight",
        TensorType(tuple(codes.shape), "f32"),
        StorageFormat(spec),
        {"qvalue": codes, "scale": scale},
    )
    b = GraphBuilder(name)
    x = b.input("x", TensorType((sym("batch"), int(codes.shape[1])), "f32"))
    with b.scope("fc", "ffn"):
        y = b.emit("linear", x, b.param("fc.weight", p))
    b.output(y)
    return b.finish()
