"""token-prune on the FlightLLM model (llmc/fpga/prune.py): the segmented prefill and the decode
steps after it on the functional simulator against the interpreter, per-layer KV lengths, the
CLI compile, and one-line refusals of what the accelerator does not run."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from llmc.cli import main
from llmc.errors import PassError
from llmc.fpga.arch import load_arch
from llmc.fpga.funcsim import FuncRunner, topk_rows
from llmc.fpga.program import build_program
from llmc.fpga.verify import compare_lm
from llmc.ir import verify
from llmc.passes import PassContext, build_pipeline

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")

# 157 prompt tokens: two chunks in the first segment (the second padded), one in the pruned ones
PROMPT = np.frombuffer(
    b"def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 3, dtype=np.uint8
)[:157]


@functools.lru_cache(maxsize=4)
def _pruned(spec: str, recipe: str = "dense"):
    from llmc.fpga.compress import compress
    from llmc.frontends import load_model
    from tests.fpga.conftest import RECIPES

    g = load_model("tiny").graph
    for kw in RECIPES[recipe]:
        compress(g, **kw)
    build_pipeline(spec).run(g, PassContext(target="u280"))
    verify(g)
    return g


@pytest.mark.parametrize(
    "spec, recipe, wkb",
    [
        ("token-prune:keep=0.5", "dense", None),
        ("token-prune:keep=0.3:l1=1:l2=3", "int4-8of16", 128),
        ("token-prune:keep=0.5:score=random:seed=3", "int4-8of16", 128),
        ("token-prune:keep=0.4:score=uniform:recent=2:sink=false", "int4-8of16", 128),
    ],
)
def test_pruned_prefill_and_decode_match_interpreter(spec, recipe, wkb):
    g = _pruned(spec, recipe)
    arch = load_arch("u280", [f"buffers.weight_kb={wkb}"] if wkb else [])
    prog = build_program(g, arch)
    runner = FuncRunner(prog)
    ag, caches = compare_lm(g, runner, PROMPT, decode_steps=5)
    # the kept rows are the interpreter's (else the logits rows would not line up), the logits
    # within torch's accuracy rule, greedy tokens identical, each layer's cache what it kept
    assert ag.within(k=4.0), ag
    assert ag.sim_vs_interp < 1e-4 and ag.argmax_agree == 1.0, ag
    assert caches["kv_err"] < 1e-4
    want = prog.prune.counts(PROMPT.size)
    assert runner.lens == [n + 5 for n in want]
    assert want[-1] < want[0]  # something was pruned


def test_position_hash_matches_the_interpreter():
    import torch

    from llmc.fpga.funcsim import position_hash32
    from llmc.ir.ops_adaptive import position_hash

    pos = np.arange(2048, dtype=np.int32)
    for seed in (0, 1, 4095):
        want = position_hash(torch.from_numpy(pos).long(), seed).numpy()
        assert np.array_equal(position_hash32(pos, seed).view(np.uint32), want.view(np.uint32))


def test_uniform_rows_follow_keep_rows():
    import torch

    from llmc.ir.ops_adaptive import KeepRowsAttrs, keep_count, keep_rows

    for r in (5, 17, 64, 157):
        pos = np.arange(r, dtype=np.int32)
        for keep, recent, sink in ((0.2, 3, True), (0.5, 1, False), (0.9, 4, True)):
            a = KeepRowsAttrs(keep=keep, recent=recent, sink=sink, method="uniform")
            s = torch.zeros(1, r)
            want = keep_rows(s, torch.from_numpy(pos)[None].long(), a, r)
            got = topk_rows(s[0].numpy(), pos, recent, sink, keep_count(keep, r), uniform=True)
            assert got == want[0].nonzero().flatten().tolist()


def test_topk_rows_follows_keep_rows():
    import torch

    from llmc.ir.ops_adaptive import KeepRowsAttrs, keep_count, keep_rows

    rng = np.random.default_rng(3)
    for r in (5, 17, 64):
        s = rng.random(r).astype(np.float32)
        s[3] = s[1]  # a tie: the lower row first
        pos = np.arange(r, dtype=np.int32)
        for keep in (0.2, 0.5, 0.9):
            a = KeepRowsAttrs(keep=keep, recent=3)
            want = keep_rows(torch.from_numpy(s)[None], torch.from_numpy(pos)[None].long(), a, r)
            got = topk_rows(s, pos, 3, True, keep_count(keep, r))
            assert got == want[0].nonzero().flatten().tolist()


def test_compile_run_and_eval_cli(tmp_path, capsys):
    import json

    out = tmp_path / "tiny-u280-prune"
    spec = "token-prune:keep=0.5"
    assert main(["compile", "tiny", "--target", "u280", "--passes", spec, "-o", str(out)]) == 0
    files = sorted(p.name for p in (out / "fpga" / "instructions").iterdir())
    assert "pseg0_c00.bin" in files and "psel1_n01.bin" in files
    ids = ",".join(map(str, PROMPT[:40]))
    assert main(["run", str(out), "--prompt-ids", ids, "--max-new-tokens", "3", "--json"]) == 0
    capsys.readouterr()
    # continuation perplexity (windows of 64, the first 48 prefilled and pruned), the artifact on
    # the functional simulator against the interpreter with the same pass
    ev = ["--window", "64", "--max-tokens", "256", "--json"]
    assert main(["eval", str(out), *ev]) == 0
    fpga = json.loads(capsys.readouterr().out)
    assert main(["eval", "tiny", "--passes", spec, *ev]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert fpga["prompt_len"] == ref["prompt_len"] == 48
    assert fpga["prefill_token_fraction"] == ref["prefill_token_fraction"] < 1
    assert abs(fpga["nll"] - ref["nll"]) < 1e-5


@pytest.mark.parametrize(
    "opts, msg",
    [
        ("adaptive=true", "adaptive=true is not supported on u280"),
        ("score=pagerank", "score=pagerank is not supported on u280"),
    ],
)
def test_refused_in_one_line(opts, msg, capsys):
    rc = main(
        [
            "compile",
            "tiny",
            "--target",
            "u280",
            "--passes",
            f"token-prune:keep=0.5:{opts}",
            "-o",
            "/nonexistent/x",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc != 0 and msg in err and len(err.splitlines()) == 1, err


def test_pass_error_is_typed():
    from llmc.frontends import load_model

    g = load_model("tiny").graph
    with pytest.raises(PassError, match="adaptive=true"):
        build_pipeline("token-prune:keep=0.5:adaptive=true").run(g, PassContext(target="vhk158"))


# ----------------------------------------------------------------------------------------------
# the HLS C simulation of a pruned run, bit for bit against the functional simulator


@pytest.fixture(scope="session")
def hls_build(tmp_path_factory):
    return tmp_path_factory.mktemp("prune-hls-build")


@pytest.mark.parametrize(
    "spec",
    [
        "token-prune:keep=0.3:l1=1:l2=3",
        "token-prune:keep=0.3:l1=1:l2=3:score=random:seed=5",
        "token-prune:keep=0.3:l1=1:l2=3:score=uniform:sink=false",
    ],
)
def test_csim_of_a_pruned_run_matches_funcsim_bit_for_bit(tmp_path, hls_build, spec):
    import os

    from llmc.fpga.hls import HlsToolchainError, csim, emit_project, find_ap_types, find_cxx
    from llmc.fpga.hls_vectors import make_vectors

    try:
        find_cxx()
        find_ap_types()
    except HlsToolchainError as e:
        if os.environ.get("LLMC_REQUIRE_TOOLCHAIN", "") not in ("", "0"):
            pytest.fail(f"toolchain required (LLMC_REQUIRE_TOOLCHAIN=1) but: {e}")
        pytest.skip(str(e))
    # three pruning points (one layer per segment), two chunks in the first segment, decode
    # steps against three per-segment KV lengths (registers 1..3)
    g = _pruned(spec, "int4-8of16")
    prog = build_program(g, load_arch("u280", ["buffers.weight_kb=128"]))
    vec = make_vectors(prog, PROMPT, 3)
    names = [vec.streams[s.stream][0] for s in vec.steps]
    assert names == [
        "pseg0_0", "pseg0_1", "psel1_2", "pseg1_0", "psel2_1", "pseg2_0", "psel3_1", "pseg3_0",
    ] + ["decode_160"] * 3  # fmt: skip
    assert vec.steps[-1].regs[:4] == [
        n + 2 for n in prog.prune.counts(PROMPT.size)
    ]  # 157 120 84 47
    emit_project(prog, tmp_path, vectors=vec)
    res = csim(tmp_path, timeout=600, cache_dir=hls_build)
    assert res.passed and res.returncode == 0 and not res.mismatches, res.output[-3000:]
    assert res.hbm is not None and np.array_equal(res.hbm, vec.hbm_final)
    for name, want in vec.expected.items():
        assert np.array_equal(res.logits[name].view(np.uint32), want.view(np.uint32)), name


def test_keep_one_is_the_dense_model():
    from llmc.frontends import load_model

    dense = load_model("tiny").graph
    g = _pruned("token-prune:keep=1.0")
    arch = load_arch("u280")
    a, b = build_program(dense, arch), build_program(g, arch)
    assert b.prune is None  # per-layer cache symbols, nothing pruned
    for key in (("prefill", 0), ("decode", 32)):
        assert a.stream(*key).encode() == b.stream(*key).encode()


def test_simulate_charges_the_kept_rows():
    from llmc.fpga.sim import simulate

    arch = load_arch("u280")
    dense = simulate(_pruned("token-prune:keep=1.0"), arch, 512, 4, storage=False)
    half = simulate(_pruned("token-prune:keep=0.5"), arch, 512, 4, storage=False)
    prog = build_program(_pruned("token-prune:keep=0.5"), arch)
    assert prog.prune.counts(512) == [512, 384, 256]
    # segment 0: 4 chunks; top-k; segment 1: 3 chunks; top-k; segment 2: 2 chunks
    assert half.streams["prefill_chunks"] == 9
    assert half.prefill_ms < dense.prefill_ms
    assert any("rows per segment [512, 384, 256]" in n for n in half.notes)


@pytest.mark.parametrize("n", [3, 9, 128, 129, 300])
def test_prompt_lengths_around_chunks_and_window(n):
    # shorter than the window / the forced rows, a whole chunk, one row past it, three chunks
    g = _pruned("token-prune:keep=0.5", "int4-8of16")
    prog = build_program(g, load_arch("u280", ["buffers.weight_kb=128"]))
    ids = np.resize(PROMPT, n)
    runner = FuncRunner(prog)
    ag, caches = compare_lm(g, runner, ids, decode_steps=2)
    assert ag.within(k=4.0) and ag.argmax_agree == 1.0, ag
    assert caches["kv_err"] < 1e-4
    assert runner.lens == [c + 2 for c in prog.prune.counts(n)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_hf_families(family, tmp_path):
    # Llama 3.1 rope scaling and GQA, Qwen2's qkv bias, GPT-NeoX's partial rotary and parallel
    # residual (the other families: the pass refuses them, or the sliding window)
    from llmc.compile import load
    from tests.frontend.hf_models import VOCAB, make

    make(family).save_pretrained(tmp_path, safe_serialization=True)
    g = load(str(tmp_path)).graph
    build_pipeline("token-prune:keep=0.5").run(g, PassContext(target="u280"))
    prog = build_program(g, load_arch("u280"))
    runner = FuncRunner(prog)
    ids = np.random.default_rng(7).integers(0, VOCAB, 40)
    ag, caches = compare_lm(g, runner, ids, decode_steps=3)
    assert ag.within(k=4.0, atol=2e-6) and ag.argmax_agree == 1.0, ag
    assert caches["kv_err"] < 1e-5
    assert runner.lens[-1] < runner.lens[0]


def test_too_many_pruning_points_refused(capsys):
    rc = main(["simulate", "llama2-7b", "--target", "u280", "--passes",
               "token-prune:keep=0.5:l1=1:l2=30"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "30 pruning points" in err and len(err.splitlines()) == 1, err
