"""Compile memory (issue 14 item 5): streaming safetensors writes, memory-mapped reads, and
``--random-weights`` compiles of architecture-only models (what bench/compile_time.py measures)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch

from llmc.errors import LlmcError
from llmc.safetensors_io import DATA_ALIGN, Entry, map_safetensors, write_safetensors


def test_streamed_file_reads_back_with_safetensors_and_the_map(tmp_path) -> None:
    from safetensors.torch import load_file

    want = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int8),
        "c": torch.randn(2, 2).to(torch.bfloat16),
        "d": torch.tensor([True, False, True]),
        "f": torch.randn(2),  # starts at an odd offset: mapped unaligned, still read right
        "e": torch.empty(0, 4),
    }
    produced: list[str] = []

    def make(k: str):
        def f() -> torch.Tensor:
            produced.append(k)  # one at a time, in file order
            return want[k]

        return f

    entries = [Entry(k, tuple(v.shape), v.dtype, make(k)) for k, v in want.items()]
    p = tmp_path / "x.safetensors"
    write_safetensors(p, entries, {"k": "v"})
    assert produced == list(want)
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert (8 + n) % DATA_ALIGN == 0
    ref = load_file(str(p))
    mapped = map_safetensors(p)
    for k, v in want.items():
        assert ref[k].dtype == v.dtype and torch.equal(ref[k], v)
        assert mapped[k].dtype == v.dtype and torch.equal(mapped[k], v)


def test_producer_that_lies_about_its_tensor_is_an_error(tmp_path) -> None:
    e = Entry("w", (2, 2), torch.float32, lambda: torch.zeros(2, 3))
    with pytest.raises(LlmcError, match="produced as"):
        write_safetensors(tmp_path / "x.safetensors", [e])


def test_random_weights_fill_an_architecture_only_model() -> None:
    from llmc.compile import compile_model

    res = compile_model("gpt2", target="ref", dry_run=True, random_weights=True)
    assert not any(p.is_meta for p in res.graph.params.values())
    w = res.graph.params["transformer.h.0.mlp.c_fc.weight"].value()
    assert 0.015 < float(w.float().std()) < 0.025  # N(0, 0.02)


def test_random_weights_refuse_a_model_that_has_weights() -> None:
    from llmc.compile import compile_model

    with pytest.raises(LlmcError, match="--random-weights applies to architecture-only"):
        compile_model("tiny", target="ref", dry_run=True, random_weights=True)


# -- lazy weights: file-backed maps instead of anonymous copies ----------------------------------


def _file_backed(t: torch.Tensor) -> bool:
    """Whether ``t``'s data lies in a mapping of a file (``/proc/self/maps``: a path column)."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            cols = line.split()
            lo, hi = (int(x, 16) for x in cols[0].split("-"))
            if lo <= ptr < hi:
                return len(cols) > 5 and cols[5].startswith("/")
    return False


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


linux = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc (Linux)")


_GROWTH = """
import sys
import torch
from llmc.frontends.checkpoint import Checkpoint

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

ck = Checkpoint(sys.argv[1])
for mapped in (True, False):  # mapped first: it leaves no freed heap for the eager read to reuse
    before = anon()
    sd = ck.load(mapped=mapped)
    total = sum(float(t.sum()) for t in sd.values())  # touch every page
    print(anon() - before, total)
"""


@linux
def test_mapped_checkpoint_costs_no_anonymous_memory(tmp_path) -> None:
    """Loading (and reading every byte of) 48 MB of weights maps them: anonymous memory grows by
    far less than the weights, while an eager read grows by all of them (so the check can
    fail). A fresh process, so that no freed heap of earlier tests hides the growth."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    from llmc.frontends.checkpoint import Checkpoint

    n = 12
    tensors = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(n)}
    save_file(tensors, tmp_path / "m.safetensors")
    weights = n * 1024 * 1024 * 4
    sd = Checkpoint(tmp_path).load()
    assert all(_file_backed(t) and torch.equal(t, tensors[k]) for k, t in sd.items())
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _GROWTH, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    ).stdout.split()
    want = float(sum(i * 1024 * 1024 for i in range(n)))
    assert float(out[1]) == want and float(out[3]) == want
    mapped, eager = int(out[0]), int(out[2])
    assert mapped < weights / 6, f"a mapped load grew anonymous memory by {mapped} bytes"
    assert eager > weights * 0.9, f"an eager load grew anonymous memory by {eager} bytes only"


@linux
def test_spilled_random_weights_are_the_same_bits_in_files() -> None:
    from llmc.frontends import zoo
    from llmc.safetensors_io import spilling

    eager = zoo.materialize(zoo.build("gpt2"), seed=0)
    with spilling():
        lazy = zoo.materialize(zoo.build("gpt2"), seed=0)
    assert eager.params.keys() == lazy.params.keys()
    big = 0
    for name, p in eager.params.items():
        a, b = p.data["value"], lazy.params[name].data["value"]
        assert a.dtype == b.dtype and torch.equal(a, b), name
        assert not _file_backed(a)
        if a.numel() * a.element_size() >= (1 << 20):
            assert _file_backed(b), name
            big += 1
    assert big > 10


@linux
@pytest.mark.parametrize(
    "passes",
    [
        "rtn:bits=4:group=32",
        "magnitude:pattern=2:4",
        # calibrated: layer by layer, each segment's weights let go of when it is done
        pytest.param("gptq:bits=4:group=32", marks=pytest.mark.slow),
        pytest.param("wanda:sparsity=0.5", marks=pytest.mark.slow),
        pytest.param("sparsegpt:sparsity=0.5", marks=pytest.mark.slow),
        "smoothquant,w8a8",
    ],
)
def test_lazy_compile_writes_the_same_weights_as_an_eager_one(
    tmp_path, monkeypatch, passes
) -> None:
    """``tiny`` compiled from its mapped checkpoint with every made weight spilled (the default
    path; the spill threshold lowered so that tiny's small tensors spill too) writes the same
    artifact weights, byte for byte, as a compile of the same model held in anonymous memory."""
    from llmc import safetensors_io
    from llmc.compile import compile_model, load

    monkeypatch.setattr(safetensors_io, "SPILL_MIN_BYTES", 0)
    cal = {"pass_options": {"calib_samples": 4, "calib_seqlen": 32}}  # a small calibration set
    eager = load("tiny")
    for p in eager.graph.params.values():
        p.data = {k: v.clone() for k, v in p.data.items()}
        p.invalidate()
        assert not any(_file_backed(v) for v in p.data.values())
    with monkeypatch.context() as m:  # the eager compile keeps what it makes in memory too
        m.setattr(safetensors_io, "spill", lambda t, directory=None: t)
        a = compile_model(eager, target="ref", passes=passes, out=tmp_path / "eager", **cal)
    b = compile_model("tiny", target="ref", passes=passes, out=tmp_path / "lazy", **cal)
    # values and codes: mapped from the checkpoint or spilled (scales, a 1/group share, are not)
    made = [v for p in b.graph.params.values() for k, v in p.data.items() if k != "scale"]
    assert made and all(_file_backed(v) for v in made)
    assert not any(_file_backed(v) for p in a.graph.params.values() for v in p.data.values())
    files = sorted(f.name for f in (tmp_path / "eager").glob("*.safetensors"))
    assert files
    for f in files:
        assert (tmp_path / "eager" / f).read_bytes() == (tmp_path / "lazy" / f).read_bytes(), f


# -- letting go of weights: released pages, no dequantized copies ------------------------------


def _resident_pages(t: torch.Tensor) -> int:
    """Pages of ``t``'s storage present in this process (``/proc/self/pagemap`` bit 63)."""
    import mmap

    import numpy as np

    st = t.untyped_storage()
    lo, hi = st.data_ptr(), st.data_ptr() + st.nbytes()
    first, last = lo // mmap.PAGESIZE, (hi - 1) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(8 * first)
        e = np.frombuffer(f.read(8 * (last - first + 1)), dtype=np.uint64)
    return int(((e >> np.uint64(63)) & np.uint64(1)).sum())


@linux
def test_release_drops_a_mapped_tensors_pages_and_keeps_its_values() -> None:
    from llmc.safetensors_io import release, spill

    want = torch.randn(1 << 20)  # 4 MiB
    t = spill(want)
    assert torch.equal(t, want)  # every page touched
    assert _resident_pages(t) >= 1000
    assert release(t)
    assert _resident_pages(t) <= 2  # the partial pages at either end may stay
    assert torch.equal(t, want)  # faulted back in from the file
    t[7] = 1.0  # a written page of a private map: dropping it would lose the write
    assert not release(t) and float(t[7]) == 1.0
    assert not release(want.clone())  # anonymous memory is never dropped


def test_release_while_the_collector_unmaps_other_maps() -> None:
    """A map can be unmapped by the cycle collector in the middle of :func:`release`'s walk over
    the live maps (its weak reference's callback drops it from the registry): the walk must not
    see the registry change size (a flaky ``RuntimeError`` in ``make test`` before)."""
    import gc

    from llmc.safetensors_io import release, spill

    t = spill(torch.randn(1 << 14))  # 64 KiB: whole pages to drop
    live = [spill(torch.randn(16)) for _ in range(400)]  # a long walk
    old = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):  # maps held only by reference cycles: freed by the collector
            cycle: list = [spill(torch.randn(16))]
            cycle.append(cycle)
        del cycle
        # the next collection comes 30 allocations from now: inside the walk, not before it
        gc.set_threshold(gc.get_count()[0] + 30)
        gc.enable()
        assert release(t)
    finally:
        gc.enable()
        gc.set_threshold(*old)
        gc.collect()
    del live


@linux
@pytest.mark.parametrize(
    "passes",
    [
        "w8a8",
        pytest.param("gptq:bits=4:group=32", marks=pytest.mark.slow),
        pytest.param("sparsegpt:sparsity=0.5", marks=pytest.mark.slow),
    ],
)
def test_calibrated_pass_lets_go_of_each_layers_weights(monkeypatch, passes) -> None:
    """A calibrated pass in a compile holds no weight once its layer is done: no param keeps a
    dense copy it does not store (a dequantized weight in anonymous memory), and no page of a
    mapped weight (checkpoint or spilled) stays in the process. Before, a quantized model ended
    the pass with its whole dequantized float copy in anonymous memory, and a pruned one with
    every pruned weight's pages resident."""
    from llmc import safetensors_io
    from llmc.compile import compile_model

    monkeypatch.setattr(safetensors_io, "SPILL_MIN_BYTES", 0)
    opts = {"calib_samples": 4, "calib_seqlen": 32}
    res = compile_model("tiny", target="ref", passes=passes, dry_run=True, pass_options=opts)
    params = list(res.graph.params.values())
    assert any(p.format.quant is not None or p.format.sparsity is not None for p in params)
    cached = [
        p.name
        for p in params
        if any(not any(v is d for d in p.data.values()) for v in p._dense_cache.values())
    ]
    assert cached == [], f"params holding a dense copy after the pass: {cached[:5]}"
    mapped = [v for p in params for v in p.data.values() if _file_backed(v)]
    assert len(mapped) > 10
    resident = {
        p.name: _resident_pages(v)
        for p in params
        for v in p.data.values()
        if _file_backed(v) and _resident_pages(v) > 2
    }
    assert resident == {}, f"mapped weights with resident pages: {list(resident.items())[:5]}"


# -- the Hessian machinery of GPTQ / SparseGPT: d x d matrices held at once ----------------------

_HESSIAN_PEAKS = """
import json, sys
import torch
from llmc.passes.calibration import InputStats
from llmc.passes.gptq import GPTQQuant
from llmc.passes.sparsegpt import inverse_hessian_chol

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

def peak_growth(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS")
    out = fn()
    return status("VmHWM") - before, out

torch.manual_seed(0)
d = int(sys.argv[1])
warm = InputStats(1024, hessian=True)  # the first LAPACK / quantizer calls allocate buffers
warm.add(torch.randn(2048, 1024))
GPTQQuant(bits=4, group=128).quantize(torch.randn(4, 1024), 128, warm, None)
stats = InputStats(d, hessian=True)
stats.add(torch.randn(2 * d, d))
grow = {}
if sys.argv[2] == "tall":  # alone in its process: freed heap of the steps above would be reused
    w = torch.randn(4 * d, d)  # a tall weight (an MLP's up projection): GPTQ's own copies show
    grow["gptq_tall"], _ = peak_growth(lambda: GPTQQuant(bits=4, group=128).quantize(w, 128, stats, None))
else:
    w = torch.randn(8, d)
    grow["H"], h = peak_growth(stats.H)
    grow["inverse_hessian_chol"], _ = peak_growth(lambda: inverse_hessian_chol(h, 0.01))
    del h, _
    grow["gptq"], _ = peak_growth(lambda: GPTQQuant(bits=4, group=128).quantize(w, 128, stats, None))
print(json.dumps(grow))
"""


@linux
def test_hessian_inverse_and_gptq_hold_one_float64_matrix() -> None:
    """The layer Hessian's inverse is factored in place: ``inverse_hessian_chol`` holds one
    ``d x d`` float64 matrix besides its input (a copy per step held five: 4.8 GB for Llama-2-7B's
    11008-wide down projection), ``InputStats.H()`` no float64 temporary of ``XᵀX``'s size (two
    before), and GPTQ on a ``d``-wide linear two float64 matrices' worth (the factor and the float32
    Hessian it came from; six before), and on a tall weight one float64 copy of it (int8 codes,
    the block update in place). Peak RSS growth of a fresh process, in units of one
    ``d x d`` float64 matrix (32 MiB at d = 2048)."""
    import json
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    d = 2048
    root = Path(__file__).resolve().parents[1]
    f64 = {}
    for mode in ("square", "tall"):
        out = subprocess.run(
            [sys.executable, "-c", _HESSIAN_PEAKS, str(d), mode],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        ).stdout
        f64.update({k: v / (d * d * 8) for k, v in json.loads(out).items()})
    assert f64["H"] < 0.6, f64  # the float32 result (0.5) and one block of rows
    assert f64["inverse_hessian_chol"] < 1.25, f64
    assert f64["gptq"] < 2.0, f64
    # a 4d x d weight: its float64 working copy (4 units), int8 codes (0.5), the blocks and the
    # Hessian's factor: 8.4 measured; a float64 Q and the whole-width temporary of the block
    # update made it 14.6
    assert f64["gptq_tall"] < 10.5, f64


def test_hessian_inverse_in_place_is_the_same_bits() -> None:
    """The in-place factorization gives the bits of the chain of separate outputs it replaced
    (damping escalated on a singular Hessian alike), and ``H()`` by row blocks those of the
    whole-matrix expression."""
    from llmc.passes.calibration import InputStats
    from llmc.passes.sparsegpt import inverse_hessian_chol

    def reference(h: torch.Tensor, damp: float) -> torch.Tensor:
        h = h.clone().to(torch.float64)
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0
        lam = damp * torch.mean(torch.diag(h))
        idx = torch.arange(h.shape[0])
        for scale in (1.0, 10.0, 100.0, 1000.0):
            try:
                hh = h.clone()
                hh[idx, idx] += lam * scale
                hinv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
                return torch.linalg.cholesky(hinv, upper=True)
            except torch.linalg.LinAlgError:
                continue
        raise AssertionError("not positive definite")

    torch.manual_seed(0)
    st = InputStats(96, hessian=True)
    x = torch.randn(3, 40, 96)
    x[..., 5] = 0  # a dead channel
    st.add(x)
    assert st.xtx is not None
    assert torch.equal(st.H(), (2.0 * st.xtx / st.tokens).to(torch.float32))
    h = st.H()
    before = h.clone()
    got, dead = inverse_hessian_chol(h, 0.01)
    assert torch.equal(h, before) and got.dtype == torch.float64
    assert dead.nonzero().flatten().tolist() == [5]
    assert torch.equal(got, reference(h, 0.01))
    # an eigenvalue of -0.3% of the mean: the first damping (0.1%) fails, the second (1%) holds
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
    eig = torch.linspace(0.5, 1.5, 32, dtype=torch.float64)
    eig[0] = -0.003
    indefinite = (q @ torch.diag(eig) @ q.t()).to(torch.float32)
    assert int(torch.linalg.cholesky_ex(indefinite.double() + 1e-3 * torch.eye(32))[1]) != 0
    got = inverse_hessian_chol(indefinite, 1e-3)[0]
    assert torch.equal(got, reference(indefinite, 1e-3))


_HEAP_HOLES = """
import torch
from llmc.passes.calibration import trim_heap

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

base = anon()
ts = [torch.ones(24 * 1024) for _ in range(4000)]  # 96 KiB each: heap blocks, not maps
del ts[:-1]  # freed, but the heap's top is held by the last one: glibc keeps the rest
held = anon()
print(held - base, int(trim_heap()), anon() - base)
"""


@linux
def test_calibration_trims_the_heap_after_each_segment(monkeypatch) -> None:
    """``run_layerwise`` hands freed C heap back after every segment (``trim_heap``): glibc keeps
    freed blocks below its mmap threshold in the process, and a calibrated compile's anonymous
    memory between segments grew by ~0.1 GB a segment that way (TinyLlama w8a8, measured in
    docs/backends.md). In a fresh process, 375 MB of freed 96 KiB tensors stay resident until
    the trim."""
    import subprocess
    import sys

    from llmc.passes import PassContext, calibration
    from tests.lm_fixtures import toy_lm

    calls: list[int] = []
    real = calibration.trim_heap
    monkeypatch.setattr(calibration, "trim_heap", lambda: calls.append(1) or real())
    g = toy_lm(layers=3, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)
    ctx = PassContext(calib_samples=2, calib_seqlen=16)
    targets = [n for n in g.nodes if n.op == "linear"]
    calibration.run_layerwise(g, ctx, targets, lambda seg, stats: None)
    assert len(calls) == len(calibration.segments(g)) > 3
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _HEAP_HOLES],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    ).stdout.split()
    held, trimmed, after = int(out[0]), out[1], int(out[2])
    if trimmed != "1" and held < 100e6:
        pytest.skip("not glibc: no malloc_trim, or freed heap is returned already")
    assert held > 300e6, f"the freed heap was not held ({held} bytes): the check cannot fail"
    assert after < 50e6, f"{after} bytes of freed heap still resident after trim_heap()"


def _held_after_segment(graph) -> tuple[int, int]:
    """(bytes of live CPU tensors no param of ``graph`` stores, pages of mapped param tensors
    present in this process, besides each one's first and last): what a calibrated pass holds
    besides the model's own weights."""
    import gc

    owned = {
        t.untyped_storage().data_ptr()
        for p in graph.root().params.values()
        for t in (*p.data.values(), *p._dense_cache.values())
        if t.device.type == "cpu"
    }
    orphan: dict[int, int] = {}
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor) and o.device.type == "cpu":
            try:
                st = o.untyped_storage()
                ptr = st.data_ptr()
            except (RuntimeError, NotImplementedError):  # fake tensors other tests left
                continue
            if ptr not in owned:
                orphan[ptr] = st.nbytes()
    resident = sum(  # the first and last page of a tensor may be shared (release keeps them)
        max(0, _resident_pages(t) - 2)
        for p in graph.root().params.values()
        for t in p.data.values()
        if t.device.type == "cpu" and t.numel() and _file_backed(t)
    )
    return sum(orphan.values()), resident


@linux
@pytest.mark.parametrize(
    "passes", ["wanda:sparsity=0.5", pytest.param("gptq:bits=4:group=32", marks=pytest.mark.slow)]
)
def test_calibrated_pass_holds_nothing_that_grows_with_depth(monkeypatch, tmp_path, passes):
    """After each segment of a calibrated pass, what the compile holds besides the weights it
    stores (old weights a pass replaced, dequantized or pruned copies, per-layer statistics or
    error tensors, resident pages of spilled weights) is the same after the last layer as after
    the first: nothing accumulates layer after layer (docs/backends.md, compile memory). The
    calibration's own boundary activations are constant across segments."""
    from llmc import safetensors_io
    from llmc.compile import run_passes
    from llmc.passes import calibration
    from tests.lm_fixtures import toy_lm

    monkeypatch.setattr(safetensors_io, "SPILL_MIN_BYTES", 0)
    layers, hidden, ffn = 6, 128, 256
    g = toy_lm(layers=layers, hidden=hidden, heads=4, kv_heads=2, ffn=ffn, vocab=256)
    with safetensors_io.spilling(tmp_path):  # as in a compile: new weights go to files
        for p in g.params.values():
            p.data = {k: safetensors_io.keep(v.contiguous()) for k, v in p.data.items()}
        held: list[tuple[int, int]] = []
        real = calibration.trim_heap
        monkeypatch.setattr(
            calibration, "trim_heap", lambda: (real(), held.append(_held_after_segment(g)))[0]
        )
        opts = {"calib_samples": 4, "calib_seqlen": 32}
        run_passes(g, passes, None, target="ref", options=opts)
    layer_bytes = 4 * (4 * hidden * hidden + 3 * hidden * ffn)  # f32 linears of one layer
    assert len(held) >= layers
    orphans = [o for o, _ in held[1:]]  # from the first layer's segment on
    pages = [r for _, r in held]
    assert max(orphans) - min(orphans) < layer_bytes // 4, f"held grows with depth: {orphans}"
    assert max(pages) == 0, f"resident pages of mapped weights after a segment: {pages}"


def test_each_segments_hessians_are_dropped_as_their_linears_are_done() -> None:
    """A segment's ``XᵀX`` of q/k/v, o and gate/up are freed once those linears are compressed,
    not held through ``down_proj``'s (at Llama-2-7B widths, 0.4 GB of float64 besides
    ``down_proj``'s own 0.97 GB)."""
    from llmc.passes import PassContext, calibration
    from tests.lm_fixtures import toy_lm

    g = toy_lm(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=256)
    targets = [n for n in g.nodes if n.op == "linear" and n.block != "head"]
    held: list[list[int]] = []

    def apply(seg, stats) -> None:
        distinct = list({id(s): s for s in stats.values()}.values())
        seen: list[int] = []
        calibration.each_target(
            stats, lambda n, s: seen.append(sum(x.xtx is not None for x in distinct))
        )
        held.append(seen)
        assert all(x.xtx is None for x in distinct)

    ctx = PassContext(calib_samples=2, calib_seqlen=8)
    calibration.run_layerwise(g, ctx, targets, apply, hessian=True)
    # q, k, v share one input, gate and up another: 4 inputs, freed after v, o, up, down
    assert held == [[4, 4, 4, 3, 2, 2, 1]] * 2, held
