"""The N:M sparse CPU kernel (:mod:`llmc.backends.kernels.cpu_sparse`): kernel-level against an
fp64 product, the packed position layout and its inverse, and model-level against the reference
interpreter (2:4, 4:8, 8:16, and 2:4 followed by 4-bit RTN), prefill and decode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmc.backends.cpu.pipeline import vector_bits
from tests.backends.conftest import compile_graph
from tests.cpu_kernels import asm, check_against_interp
from tests.cpu_kernels import host_target as _target
from tests.cpu_kernels import panel_torch as _panel
from tests.lm_fixtures import toy_lm

avx512 = pytest.mark.skipif(vector_bits() < 512, reason="host CPU has no AVX-512")


def _nm_weight(n_out: int, k: int, keep: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, k // m, m, generator=g)
    top = w.abs().topk(keep, -1).indices
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, top, True)
    w = w * mask
    w[0, 0] = 0.0  # a group with fewer than N non-zeros (zero-filled slots)
    return w.reshape(n_out, k)


@pytest.mark.parametrize("keep,m", [(2, 4), (4, 8), (8, 16), (1, 2), (1, 4)])
def test_packed_index_round_trip(keep, m):
    from llmc.backends.layouts import compress_nm, pack_nm_index, unpack_nm_index

    w = _nm_weight(5, 12 * m, keep, m, 0)
    vals, idx = compress_nm(w, keep, m)
    packed = pack_nm_index(idx, m)
    per = 8 // (2 if m <= 4 else 4)
    assert packed.shape == (5, -(-idx.shape[1] // per))
    assert torch.equal(unpack_nm_index(packed, m, idx.shape[1]), idx)


@avx512
@pytest.mark.parametrize(
    "keep,m,k,n",
    [(2, 4, 96, 70), (4, 8, 64, 64), (8, 16, 48, 130), (2, 4, 12, 5), (1, 4, 40, 17)],
    ids=["2:4-n70", "4:8", "8:16-n130", "2:4-tail-byte", "1:4"],
)
@pytest.mark.parametrize("rows", [1, 5], ids=["decode", "prefill"])
def test_nm_permute_matches_fp64(keep, m, k, n, rows):
    """Odd N (a partial last panel) and K whose positions end mid-byte (``2:4-tail-byte``: 6
    positions, 4 per byte); the prefill row count is symbolic and not a multiple of 4."""
    import tvm

    from llmc.backends.kernels import cpu_sparse
    from llmc.backends.layouts import compress_nm, pack_nm_index

    w = _nm_weight(n, k, keep, m, k + n)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1))
    vals, idx = compress_nm(w, keep, m)
    f = cpu_sparse.nm_permute(k, n, keep, m, "float32", "float32", 1 if rows == 1 else None)
    ex = tvm.compile(f, _target())
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, n), "float32"), cpu)
    args = [x.numpy(), _panel(vals), _panel(pack_nm_index(idx, m))]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], out)
    want = (x.double() @ w.double().T).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@avx512
def test_nm_permute_half_precision():
    """float16 activations and values (an f16 model): converted to float32 in registers."""
    import tvm

    from llmc.backends.kernels import cpu_sparse
    from llmc.backends.layouts import compress_nm, pack_nm_index

    k, n = 64, 70
    w = _nm_weight(n, k, 2, 4, 3).half()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(2)).half()
    vals, idx = compress_nm(w, 2, 4)
    ex = tvm.compile(cpu_sparse.nm_permute(k, n, 2, 4, "float16", "float16", 1), _target())
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((1, n), "float32"), cpu)
    args = [x.numpy(), _panel(vals), _panel(pack_nm_index(idx, 4))]
    ex(*[tvm.runtime.tensor(a, cpu) for a in args], out)
    want = (x.double() @ w.double().T).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@avx512
def test_machine_code_permutes():
    """The gather is a register permute (no vgatherdps, no scalar loads per lane)."""
    import tvm

    from llmc.backends.kernels import cpu_sparse

    for m, insns in ((4, ("vpermilps",)), (16, ("vpermps", "vpermd"))):  # LLVM picks either
        ex = tvm.compile(
            cpu_sparse.nm_permute(256, 64, m // 2, m, "float32", "float32", 1), _target()
        )
        text = asm(ex)
        assert any(i in text for i in insns) and "vgatherdps" not in text


# -- model level -----------------------------------------------------------------------------


def _compress(graph, pattern: str, bits: int | None):
    from llmc.passes import PassContext
    from llmc.passes.magnitude import MagnitudePrune
    from llmc.passes.manager import PassManager
    from llmc.passes.rtn import RTNQuant

    passes = [MagnitudePrune(pattern=pattern, include=("model.layers",), measure=False)]
    if bits:
        passes.append(RTNQuant(bits=bits, group=16, include=("model.layers",), measure=False))
    PassManager(passes).run(graph, PassContext(calib_samples=2, calib_seqlen=32))
    return graph


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "8:16"])
def test_model_matches_interpreter(tmp_path, pattern):
    """FFN 208 (not a multiple of the 64-wide panel) and hidden 48: the N:M layers through the
    compile path, prefill and decode; the weights stored compressed, once."""
    from safetensors import safe_open

    from llmc.artifact import DERIVED_PARAMS_KEY, load_artifact

    g = _compress(toy_lm(hidden=48, ffn=208), pattern, None)
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    check_against_interp(g, art)
    backend = json.loads((art / "manifest.json").read_text())["backend"]
    permute = vector_bits() >= 512
    rule = "cpu.linear.panel_nm"
    assert backend["lowering_rules"].get(rule), backend["lowering_rules"]
    index = "panel64.nm.packed.index" if permute else "panel64.nm.index"
    sparse = {n for n, p in g.params.items() if p.format.sparsity is not None}
    layouts = {w["layout"] for w in backend["weights"] if w["param"] in sparse}
    assert layouts == {"panel64.nm.values", index}, layouts
    assert any(k.startswith("nm_permute") for k in backend["kernels"]) == permute
    with safe_open(str(art / "params.safetensors"), framework="pt") as st:
        stored = {k.split("::")[0] for k in st.keys()}
        derived = set(json.loads(st.metadata()[DERIVED_PARAMS_KEY]))
    assert sparse <= derived and not stored & sparse
    re = load_artifact(art).graph
    for name in sparse:
        assert torch.equal(re.params[name].value(), g.params[name].value())
    report = json.loads((art / "report.json").read_text())
    assert report["backend"]["sparse"]["kernel"] == ("nm_permute" if permute else "panel_gemm_nm")


def test_portable_fallback_matches_and_warns(tmp_path, monkeypatch):
    """Where the permute kernel cannot run (no AVX-512), the gather kernel with 1-byte positions
    does, matches the interpreter, and the report and warnings say it is slower than dense."""
    from llmc.backends.cpu import pipeline as cpu_pipeline

    monkeypatch.setattr(cpu_pipeline, "_nm_permute_ok", lambda p: False)
    g = _compress(toy_lm(hidden=48, ffn=208), "2:4", None)
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    check_against_interp(g, art)
    backend = json.loads((art / "manifest.json").read_text())["backend"]
    assert not any(k.startswith("nm_permute") for k in backend["kernels"])
    report = json.loads((art / "report.json").read_text())
    sp = report["backend"]["sparse"]
    assert sp["kernel"] == "panel_gemm_nm" and sp["prefill_vs_dense"] == "slower"
    assert [w for w in report["warnings"] if "slower than dense" in w]


def test_sparse_int4_matches_interpreter_and_reports(tmp_path):
    """2:4 then 4-bit RTN: runs the dense 4-bit kernel (the zeros are stored as codes), which the
    compile report and its warnings say."""
    g = _compress(toy_lm(hidden=48, ffn=192), "2:4", 4)
    art = compile_graph(g, "cpu", tmp_path / "cpu")
    check_against_interp(g, art)
    report = json.loads((art / "report.json").read_text())
    sp = report["backend"]["sparse"]
    assert sp["kernel"] == "dense_quantized" and sp["decode_vs_dense"] == "same"
    assert any("2:4" in w and "dense" in w for w in report["warnings"]), report.get("warnings")


def test_cli_warns_in_one_line(capsys, tmp_path):
    """``llmc compile`` tells the user, one line on stderr, that 2:4 + int4 saves no time."""
    from llmc.cli import main
    from llmc.models import TINY_DIR

    passes = "magnitude:pattern=2:4,rtn:bits=4:measure=false"
    argv = ["compile", str(TINY_DIR), "--passes", passes, "--target", "cpu"]
    rc = main([*argv, "-o", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "2:4" in lines[0] and "dense" in lines[0], err


def test_no_small_workspace_allocations():
    """The per-panel accumulators and permute controls sit on the stack (registers after LLVM):
    no workspace-pool call pair per panel (see ``cpu.SCRATCH``), decode and prefill."""
    from llmc.backends.kernels.cpu_sparse import nm_permute
    from tests.cpu_kernels import small_workspace_allocs

    for rows in (1, None):
        f = nm_permute(256, 128, 2, 4, "float32", "float32", rows)
        assert small_workspace_allocs(f) == []
