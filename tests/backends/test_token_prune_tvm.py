"""token-prune compiled on the TVM targets: the CPU artifact of ``tiny`` equals the interpreter on
the same pruned graph (logits of the kept rows, each layer's cache length and contents, greedy
tokens decoded after the pruned prefill) for every score and ``adaptive=true``; ``keep=1`` is the
dense model; the decode entry is the dense step (no scores, no gathers); CUDA (h100) and ROCm
(mi300x) cross-compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmc.artifact import load_artifact
from llmc.backends.toolchain import ToolchainError
from llmc.compile import compile_model
from llmc.runtime.lm import InterpLM, generate, kv_lengths

PROMPT = [(i * 7 + 3) % 256 for i in range(40)]


@pytest.fixture(scope="module")
def build(tmp_path_factory, request):
    """``build(passes, target)`` -> the artifact directory (each built once per module; the dense
    CPU build is the run's shared one, tests/conftest.py)."""
    root = tmp_path_factory.mktemp("prune")
    done: dict[tuple[str, str], Path] = {}

    def get(passes: str, target: str = "cpu") -> Path:
        key = (passes, target)
        if key == ("", "cpu"):
            return request.getfixturevalue("tiny_cpu_artifact")
        if key not in done:
            out = root / f"{target}-{len(done)}"
            try:
                compile_model(
                    "tiny",
                    target=target,
                    passes=passes or None,
                    out=out,
                    pass_options={"calib_samples": 4, "calib_seqlen": 64},  # adaptive's thetas
                )
            except ToolchainError as e:
                pytest.skip(str(e))
            done[key] = out
        return done[key]

    return get


def _forward(lm, prompt=PROMPT):
    ids = torch.tensor([prompt])
    pos = torch.arange(len(prompt))[None]
    return lm.forward(ids, pos, lm.empty_past(1))


@pytest.mark.parametrize(
    "spec",
    [
        "token-prune:average=0.5",
        # iters=2: the same PageRank kernels as the default 20 power iterations, a tenth of
        # their stages (as test_gpu_targets_cross_compile; the CPU build was ~26 s)
        "token-prune:average=0.5:score=pagerank:iters=2",
        "token-prune:average=0.5:score=uniform",
        "token-prune:average=0.5:score=random:seed=3",
        "token-prune:average=0.5:adaptive=true",
        "token-prune:keep=0.3:window=0:recent=2:sink=false",
    ],
)
def test_cpu_artifact_equals_interpreter(build, spec):
    from llmc.runtime.tvm_runner import load

    art = build(spec)
    ref, cpu = InterpLM(load_artifact(art).graph), load(art)
    assert cpu.backend["kv_cache"]["per_layer"]
    assert cpu.backend["kv_cache"]["lengths"] == [f"past_{i}" for i in range(4)]
    got, got_kv = _forward(cpu)
    want, want_kv = _forward(ref)
    lengths = kv_lengths(want_kv)
    assert kv_lengths(got_kv) == lengths and lengths[0] == len(PROMPT) > lengths[-1]
    assert got.shape == want.shape  # logits of the rows the last layer kept
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    for (gk, gv), (wk, wv) in zip(got_kv, want_kv):  # the same rows, cached in place
        torch.testing.assert_close(torch.as_tensor(gk), wk, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.as_tensor(gv), wv, atol=1e-4, rtol=1e-4)
    # generation's prefill (prefill_last): the last kept row is the last prompt token's
    assert cpu.backend["entry_logits"]["prefill_last"] == "last"
    last, last_kv = cpu.forward_last(
        torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], cpu.empty_past(1)
    )
    assert last.shape == (1, 1, want.shape[2]) and kv_lengths(last_kv) == lengths
    torch.testing.assert_close(last, want[:, -1:], atol=2e-4, rtol=1e-4)
    # decode after the pruned prefill: each layer appends at its own length, positions stay the
    # tokens' original ones
    a, b = generate(cpu, PROMPT, 8), generate(ref, PROMPT, 8)
    assert a.tokens == b.tokens and a.kv_after_prefill == b.kv_after_prefill == lengths


def test_keep_one_is_the_dense_model(build):
    """``keep=1`` prunes nothing: per-layer cache lengths (llmc-lm-v2) but the dense model."""
    from llmc.runtime.tvm_runner import load

    pruned, dense = load(build("token-prune:keep=1")), load(build(""))
    assert pruned.backend["kv_cache"]["per_layer"] and not dense.backend["kv_cache"]["per_layer"]
    got, got_kv = _forward(pruned)
    want, want_kv = _forward(dense)
    assert kv_lengths(got_kv) == kv_lengths(want_kv) == [len(PROMPT)] * 4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert generate(pruned, PROMPT, 8).tokens == generate(dense, PROMPT, 8).tokens


@pytest.mark.parametrize("target", ["cpu", "h100"])
def test_decode_entry_is_dense(build, target):
    """The decode entry fixes seq = 1, so keep_l = 1: no scores, no mask, no gather, no
    run-time shape; the prefill entry binds keep_l with tensor_to_shape + match_cast."""
    from llmc.backends import pipeline_for
    from llmc.targets import get_target

    graph = load_artifact(build("token-prune:average=0.5")).graph
    tgt = get_target(target)
    pipe = pipeline_for(tgt)
    tvm_target = pipe.tvm_target(tgt)
    mod = pipe.legalize(pipe.lower(graph, tgt, tvm_target).mod, tvm_target)
    prefill, decode = mod["prefill"].script(), mod["decode"].script()
    assert "tensor_to_shape" in prefill and "gather_rows" in prefill
    for word in ("tensor_to_shape", "gather_rows", "prune_"):
        assert word not in decode


@pytest.mark.parametrize(
    "target, code",
    [
        ("h100", "sm_90"),
        # slow: h100 covers token-prune's GPU lowering; test_cond, test_cross_compile: gfx942
        pytest.param("mi300x", "gfx942", marks=pytest.mark.slow),
    ],
)
def test_gpu_targets_cross_compile(build, target, code):
    from llmc.backends import elfcheck

    # iters=2: the same PageRank kernel as the default 20 power iterations, a tenth of its
    # stages (dlight's fallback schedule of the 20-stage kernel was ~70 s of CPU per build)
    art = build("token-prune:average=0.5:score=pagerank:iters=2", target)
    m = json.loads((art / "manifest.json").read_text())["backend"]
    assert m["kv_cache"]["per_layer"] and m["arch"] == code
    assert {"token_scores", "keep_rows", "gather_rows"} <= set(m["lowering_rules"])
    blob = (art / "model.so").read_bytes()
    found = elfcheck.find_cubins(blob) if target == "h100" else elfcheck.find_code_objects(blob)
    assert {c.arch for c in found} == {code}


def test_cli_bench_and_run_report_the_pruning(build, capsys):
    """`llmc bench/run --json` on the CPU artifact report prefill_token_fraction, the kept count
    per layer and the FLOPs as the interpreter does (same kept counts on the bench prompt)."""
    from llmc.cli import main

    art = build("token-prune:average=0.5")
    rc = main(["bench", str(art), "--json", "--prompt-len", "32", "--new-tokens", "4"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    _, want_kv = _forward(
        InterpLM(load_artifact(art).graph), [(i * 7 + 3) % 256 for i in range(32)]
    )
    assert rep["prefill_kept_per_layer"] == kv_lengths(want_kv)
    assert rep["prefill_token_fraction"] == sum(kv_lengths(want_kv)) / (4 * 32)
    assert 0 < rep["prefill_flops_ratio"] < 1
    assert main(["run", str(art), "--prompt", "hello pruned world", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert 0 < rep["prefill_token_fraction"] < 1 and len(rep["prefill_kept_per_layer"]) == 4


def test_decode_on_a_cache_the_runner_did_not_make(build):
    """Handed per-layer caches it did not make (the interpreter's tensors), the runner copies
    each layer's own length into its buffers and decodes as the interpreter does; a layer whose
    keys and values hold different lengths is refused in one line."""
    from llmc.ir.structure import LMAbiError
    from llmc.runtime.tvm_runner import load

    art = build("token-prune:average=0.5")
    ref, cpu = InterpLM(load_artifact(art).graph), load(art)
    _, kv = _forward(ref)
    step = (torch.tensor([[7]]), torch.tensor([[len(PROMPT)]]))
    got, got_kv = cpu.forward(*step, kv)
    want, want_kv = ref.forward(*step, kv)
    assert kv_lengths(got_kv) == kv_lengths(want_kv) == [n + 1 for n in kv_lengths(kv)]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    bad = list(kv)
    bad[2] = (kv[2][0], kv[2][1][:, :, :-1])
    with pytest.raises(LMAbiError, match="keys and values must hold as many") as e:
        cpu.forward(*step, bad)
    assert "\n" not in str(e.value)


def test_ffn_skip_then_token_prune_on_cpu(build):
    """Both adaptive passes in one model: token-prune gathers ffn-skip's per-row masks with the
    residual stream, the cond branches get their own symbols for the run-time kept counts; the
    CPU artifact prunes, skips and counts as the interpreter does. The other order is refused in
    one line (ffn-skip must see the unpruned rows)."""
    from llmc.passes import PassContext, PipelineError, build_pipeline
    from llmc.runtime.tvm_runner import load

    art = build("ffn-skip:threshold=0.5:warmup=0,token-prune:keep=0.5")
    ref, cpu = InterpLM(load_artifact(art).graph), load(art)
    a, b = generate(cpu, PROMPT, 12), generate(ref, PROMPT, 12)
    assert a.tokens == b.tokens and a.kv_after_prefill == b.kv_after_prefill
    assert b.kv_after_prefill[0] > b.kv_after_prefill[-1]  # pruned
    st = ref.skip_stats()
    assert st["ffn_skip_fraction"] > 0 and cpu.skip_stats() == st
    with pytest.raises(PipelineError, match="run ffn-skip before token-prune"):
        g = load_artifact(build("")).graph
        build_pipeline("token-prune:keep=0.5,ffn-skip:threshold=0.5").run(g, PassContext())
