"""KV-cache generation, perplexity and artifacts on a hand-built LM-ABI graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmc.artifact import ArtifactError, load_artifact
from llmc.compile import Loaded, compile_model, runner_for
from llmc.ir import verify
from llmc.runtime.lm import InterpLM, evaluate, generate
from tests.lm_fixtures import toy_lm


@pytest.fixture(scope="module")
def graph():
    g = toy_lm()
    verify(g)
    return g


def test_decode_with_cache_matches_full_forward(graph) -> None:
    lm = InterpLM(graph)
    prompt = [5, 17, 42, 7, 250, 3]
    res = generate(lm, prompt, 8)
    seq = list(prompt)
    for tok in res.tokens:  # recompute greedily without a cache
        logits = lm.logits(torch.tensor([seq]))
        assert int(logits[0, -1].argmax()) == tok
        seq.append(tok)


def test_prefill_plus_decode_logits_equal_full(graph) -> None:
    lm = InterpLM(graph)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3]])
    full = lm.logits(ids)
    logits, past = lm.forward(ids[:, :4], torch.arange(4).expand(2, 4), lm.empty_past(2))
    torch.testing.assert_close(logits, full[:, :4], rtol=1e-5, atol=1e-5)
    for t in range(4, 7):
        step, past = lm.forward(ids[:, t : t + 1], torch.full((2, 1), t), past)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
    assert past[0][0].shape == (2, 2, 7, 8)


def test_sampling_is_seeded(graph) -> None:
    lm = InterpLM(graph)
    a = generate(lm, [1, 2, 3], 10, temperature=1.0, seed=7).tokens
    b = generate(lm, [1, 2, 3], 10, temperature=1.0, seed=7).tokens
    c = generate(lm, [1, 2, 3], 10, temperature=1.0, seed=8).tokens
    assert a == b and a != c


def test_evaluate_perplexity_and_self_agreement(graph) -> None:
    lm = InterpLM(graph)
    windows = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    q = evaluate(lm, windows, reference=lm)
    assert q.tokens == 3 * 15 and q.agreement == 1.0
    assert 1.0 < q.perplexity < 1e6


def _loaded(graph) -> Loaded:
    return Loaded(graph.copy(), None, "toy", "tests/lm_fixtures.py")


def test_ref_artifact_roundtrip(graph, tmp_path: Path) -> None:
    out = tmp_path / "art"
    res = compile_model(_loaded(graph), target="ref", out=out)
    assert res.out == out
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "graph.ir", "params.safetensors", "report.json", "report.md"} <= names
    art = load_artifact(out)
    lm = runner_for(Loaded(art.graph, None, "toy", str(out), art))
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    torch.testing.assert_close(lm.logits(ids), InterpLM(graph).logits(ids))
    assert not any(p.name.startswith(".art.tmp") for p in tmp_path.iterdir())


def test_artifact_tamper_and_version_refused(graph, tmp_path: Path) -> None:
    out = tmp_path / "art"
    compile_model(_loaded(graph), target="ref", out=out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "graph.ir").write_text((out / "graph.ir").read_text() + "\n")
    with pytest.raises(ArtifactError, match="does not match the manifest hash"):
        load_artifact(out)
    m["versions"]["llmc"] = "0.0.1"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="built by llmc 0.0.1"):
        load_artifact(out)


def test_failed_compile_leaves_nothing(graph, tmp_path: Path, monkeypatch) -> None:
    import llmc.compile as c

    def boom(*a, **k):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(c, "_compile_ref", boom)
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        compile_model(_loaded(graph), target="ref", out=out)
    assert list(tmp_path.iterdir()) == []


def test_dry_run_reports_cost(graph) -> None:
    res = compile_model(_loaded(graph), target="ref", dry_run=True)
    assert res.out is None
    assert res.report["params"]["parameters"] == sum(
        p.value().numel() for p in graph.params.values()
    )
    assert res.report["analysis"]["total"]["flops"] > 0
    assert "roofline" not in res.report  # the interpreter has no hardware spec


def test_dry_run_roofline_for_7b() -> None:
    """Decode of LLaMA2-7B in fp16 is bound by reading its 13.5 GB of weights: on an H100
    (3.35 TB/s) no call can beat ~4 ms; a 128-token prefill moves past the ridge point less."""
    from llmc.targets import get_target

    spec = get_target("h100").spec
    dec = compile_model("llama2-7b", target="h100", dry_run=True).report
    rf = dec["roofline"]
    total = dec["analysis"]["total"]
    assert rf["bound"] == "memory" and rf["dtype"] == "f16"
    want = (total["bytes_read"] + total["bytes_written"]) / spec.mem_bandwidth * 1e3
    assert rf["min_ms_per_call"] == pytest.approx(want)
    assert 3.9 < rf["min_ms_per_call"] < 4.2 and rf["max_tokens_per_s"] == pytest.approx(
        1e3 / rf["min_ms_per_call"]
    )
    pre = compile_model(
        "llama2-7b", target="h100", dry_run=True, analysis_env={"batch": 1, "seq": 128, "past": 0}
    ).report["roofline"]
    assert pre["arithmetic_intensity"] > 100 * rf["arithmetic_intensity"]
    assert pre["max_tokens_per_s"] > 100 * rf["max_tokens_per_s"]


def test_interpreter_refuses_bad_token_ids(graph) -> None:
    """torch's embedding would say only "index out of range in self"; -1 would be a silent
    wrap in any numpy-backed runner."""
    lm = InterpLM(graph)
    for bad in (-1, lm.vocab_size):
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
            lm.forward(torch.tensor([[1, bad]]), torch.arange(2)[None], lm.empty_past(1))
