"""The routed ``moe`` CPU lowering (``cpu.moe.routed``) against transformers: tiny random Mixtral
and Qwen2-MoE (with its gated shared expert), top-k 1 and 2, compiled as ``llmc compile DIR
--target cpu`` compiles them; the artifact's prefill and decode steps (teacher-forced) give
transformers' logits, and the artifact stores each expert stack once (its routed layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llmc.artifact import DERIVED_PARAMS_KEY, load_artifact
from llmc.compile import compile_model, load, runner_for
from tests.frontend.hf_models import FAMILIES, VOCAB

PROMPT, STEPS = 9, 3


def _model(family: str, top_k: int):
    cfg_cls, model_cls, kw = FAMILIES[family]
    torch.manual_seed(11)
    model = model_cls(cfg_cls(**dict(kw, num_experts_per_tok=top_k))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_routed_moe_matches_transformers(family, top_k, tmp_path):
    model = _model(family, top_k)
    d = tmp_path / "hf"
    model.save_pretrained(d, safe_serialization=True)
    out = tmp_path / "cpu"
    compile_model(load(str(d)), target="cpu", out=out)
    manifest = json.loads((out / "manifest.json").read_text())
    rules = manifest["backend"]["lowering_rules"]
    assert rules.get("cpu.moe.routed") and not rules.get("moe.dense"), rules
    # the expert stacks are stored once: in their moe.panel64 layout, rebuilt from it on load
    with safe_open(str(out / "params.safetensors"), framework="pt") as st:
        stored = {k.split("::")[0] for k in st.keys()}
        derived = json.loads(st.metadata()[DERIVED_PARAMS_KEY])
    experts = {w["param"] for w in manifest["backend"]["weights"] if w["layout"] == "moe.panel64"}
    assert experts and experts <= set(derived) and not experts & stored
    back = load_artifact(out).graph
    orig = load(str(d)).graph
    for name in experts:
        assert torch.equal(back.params[name].value(), orig.params[name].value()), name

    ids = torch.tensor(np.random.default_rng(top_k).integers(0, VOCAB, PROMPT + STEPS))[None]
    with torch.no_grad():
        want = model(ids).logits[0].numpy()
    lm = runner_for(load(str(out)))
    past = lm.empty_past(1)
    got = []
    logits, past = lm.forward(ids[:, :PROMPT], torch.arange(PROMPT)[None], past)  # prefill
    got.append(logits[0].numpy())
    for t in range(PROMPT, PROMPT + STEPS):  # decode, one token each
        logits, past = lm.forward(ids[:, t : t + 1], torch.tensor([[t]]), past)
        got.append(logits[0].numpy())
    got = np.concatenate(got)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(-1) == want.argmax(-1)).all()
