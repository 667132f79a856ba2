"""Differential tests of compressed graphs (the passes' storage formats) on the CPU backend, and
their GPU cross-compilation.

One toy LM carries every format at once, so one compile covers every kernel: layer 0's MLP is
4-bit group-wise (asymmetric), its attention projections W8A8 (``qlinear_a8``), layer 1 is 2:4
sparse, and the LM head is 8-bit per-channel weight-only. The compiled artifact must match the
interpreter running the same compressed graph, and the 2:4 weights must be stored compressed
(never densified).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.backends.conftest import compile_graph
from tests.cpu_kernels import check_against_interp


def compress(graph):
    from llmc.passes import PassContext
    from llmc.passes.magnitude import MagnitudePrune
    from llmc.passes.manager import PassManager
    from llmc.passes.rtn import RTNQuant
    from llmc.passes.w8a8 import W8A8

    passes = [
        MagnitudePrune(pattern="2:4", include=("model.layers.1",), measure=False),
        RTNQuant(bits=4, group=16, sym=False, include=("model.layers.0.mlp",), measure=False),
        RTNQuant(bits=8, group=0, include=("lm_head",), exclude=(), measure=False),
        W8A8(include=("model.layers.0.self_attn",), measure=False),
    ]
    PassManager(passes).run(graph, PassContext(calib_samples=2, calib_seqlen=32))
    return graph


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, toy_graph):
    g = compress(toy_graph.copy())
    return g, compile_graph(g, "cpu", tmp_path_factory.mktemp("mixed") / "cpu")


def test_formats_present(mixed):
    g, _ = mixed
    fmts = {str(p.format) for p in g.params.values()}
    assert any("bits=4" in f for f in fmts) and any("nm=2:4" in f for f in fmts)
    assert any("bits=8, group=0" in f for f in fmts)
    assert g.find("qlinear_a8")


def test_mixed_formats_match_interpreter(mixed):
    g, art = mixed
    check_against_interp(g, Path(art), seq=6, token=3)


def test_kernels_and_layouts(mixed):
    g, art = mixed
    backend = json.loads((Path(art) / "manifest.json").read_text())["backend"]
    rules = backend["lowering_rules"]
    from llmc.backends.cpu.pipeline import kernel_isa

    q4, a8, q8 = {
        "avx512_vnni": ("cpu.linear.vnni_q4", "cpu.qlinear_a8.vnni", "cpu.linear.vnni_q8w"),
        "avx2": ("cpu.linear.avx2_q4", "cpu.qlinear_a8.avx2", "cpu.linear.avx2_q8w"),
        "portable": ("cpu.linear.panel_q4", "qlinear_a8", "cpu.linear.panel_q8"),
    }[kernel_isa()]
    for r in (q4, "cpu.linear.panel_nm", q8, a8):
        assert rules.get(r), (r, rules)
    layouts = {w["param"]: set() for w in backend["weights"]}
    for w in backend["weights"]:
        layouts[w["param"]].add(w["layout"])
    sparse = [n for n, p in g.params.items() if p.format.sparsity is not None]
    assert sparse
    from llmc.backends.cpu.pipeline import vector_bits

    # AVX-512 hosts: 2-bit packed positions (the permute kernel); else 1-byte positions
    index = "panel64.nm.packed.index" if vector_bits() >= 512 else "panel64.nm.index"
    for name in sparse:  # stored compressed: half the values plus the positions
        assert layouts[name] == {"panel64.nm.values", index}, layouts[name]
        w = next(w for w in backend["weights"] if w["param"] == name and "values" in w["layout"])
        out_f, in_f = g.params[name].type.shape
        assert w["shape"][1] == in_f // 2


def test_compressed_graph_cross_compiles(tmp_path, mixed):
    from llmc.backends.toolchain import ToolchainError

    g, _ = mixed
    try:
        art = compile_graph(g, "h100", tmp_path / "h100")
    except ToolchainError as e:
        pytest.skip(str(e))
    backend = json.loads((art / "manifest.json").read_text())["backend"]
    used = backend["lowering_rules"]
    assert used.get("linear.q4") and used.get("linear.nm") and used.get("linear.q8g")
    layouts = {w["layout"] for w in backend["weights"]}
    assert {"q4.codes", "nm.values", "nm.index", "q8.codes"} <= layouts


def test_artifact_stores_each_weight_once(mixed):
    """A param whose compiled layouts rebuild its storage exactly is not also in
    params.safetensors; loading the artifact rebuilds it bit for bit."""
    from safetensors import safe_open

    from llmc.artifact import DERIVED_PARAMS_KEY, load_artifact

    g, art = mixed
    with safe_open(str(Path(art) / "params.safetensors"), framework="pt") as st:
        stored = {k.split("::")[0] for k in st.keys()}
        derived = json.loads(st.metadata()[DERIVED_PARAMS_KEY])
    assert derived and not stored & set(derived)
    backend = json.loads((Path(art) / "manifest.json").read_text())["backend"]
    in_weights = {w["param"]: w["layout"] for w in backend["weights"] if w["file"]}
    for name, p in g.params.items():
        layouts = {w["layout"] for w in backend["weights"] if w["param"] == name}
        if p.format.quant is not None or p.format.sparsity is not None or layouts == {"panel64"}:
            assert name in derived, (name, layouts)  # codes, scales, N:M pairs, dense panels
        if name not in in_weights or in_weights[name] == "dense":
            assert name in stored  # norms, biases: read from params.safetensors as they are
    assert any("index_key" in f.get("value", {}) for f in derived.values())  # N:M: values+index
    back = load_artifact(art).graph
    for name, p in g.params.items():
        assert set(back.params[name].data) == set(p.data)
        for field, t in p.data.items():
            got = back.params[name].data[field]
            assert got.dtype == t.dtype and torch.equal(got, t), (name, field)


def test_artifact_params_load_without_the_backend(mixed):
    """A fresh process that never imports the CPU backend (the interpreter's load path, as
    `llmc.compile.load` of an artifact) rebuilds every derived param: the inverses of every
    layout, the VNNI panels included, live in llmc.backends.layouts."""
    import subprocess
    import sys

    _, art = mixed
    code = (
        "import sys\n"
        "from llmc.artifact import load_artifact\n"
        f"a = load_artifact({str(art)!r})\n"
        "assert 'llmc.backends.cpu.pipeline' not in sys.modules\n"
        "print(len(a.graph.params))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) > 0
