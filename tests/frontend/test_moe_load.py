"""MoE model directories: per-expert checkpoint tensors (as Mixtral and Qwen2-MoE checkpoints
and transformers' save_pretrained store them) stacked into the module's experts on load
(llmc.frontends.experts), matched against transformers; incomplete experts refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmc.errors import ModelLoadError
from llmc.frontends import load_model
from llmc.runtime.interp import run
from tests.frontend.hf_models import VOCAB, make


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_directory_matches_transformers(tmp_path, family):
    model = make(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    names = load_file(tmp_path / "model.safetensors")
    assert any(".experts.0." in n for n in names)  # the per-expert layout on disk
    g = load_model(str(tmp_path)).graph
    assert g.meta["num_experts"] == 4 and g.meta["experts_per_token"] == 2
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(9).expand(2, -1)
    past = [torch.zeros(2, g.meta["num_kv_heads"], 0, g.meta["head_dim"])] * 4
    got = run(g, [ids, pos, *past])[0]
    with torch.no_grad():
        want = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


def test_missing_expert_projection_is_named(tmp_path):
    make("mixtral").save_pretrained(tmp_path, safe_serialization=True)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"experts\.2\.w3\.weight") as e:
        load_model(str(tmp_path))
    assert "model.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_expert_shape_mismatch_is_named(tmp_path):
    make("qwen2_moe").save_pretrained(tmp_path, safe_serialization=True)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    name = "model.layers.0.mlp.experts.3.up_proj.weight"
    sd[name] = sd[name][:-1].contiguous()
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"experts\.3\.up_proj\.weight.*unlike expert 0"):
        load_model(str(tmp_path))
