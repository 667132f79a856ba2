"""load_model on local Hugging Face directories: strict checkpoint checks, tied weights, legacy
names, dtype override, unknown specs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmc.errors import ModelLoadError
from llmc.frontends import LoadedModel, load_model
from llmc.ir.types import to_torch_dtype
from llmc.runtime.interp import run
from tests.frontend.hf_models import VOCAB, make


def _logits(g, ids: torch.Tensor) -> torch.Tensor:
    m = g.meta
    dt = to_torch_dtype(g.inputs[2].type.dtype)
    empty = torch.zeros(ids.shape[0], m["num_kv_heads"], 0, m["head_dim"], dtype=dt)
    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    return run(g, [ids, pos, *([empty] * (2 * m["num_layers"]))])[0]


def _save(family: str, tmp_path):
    model = make(family)
    model.save_pretrained(tmp_path)
    return model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    model = _save("gpt2", d)
    return d, model, load_model(str(d))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_directory_matches_hf(family, tmp_path, gpt2_dir):
    if family == "gpt2":
        tmp_path, model, lm = gpt2_dir
    else:
        model = _save(family, tmp_path)
        lm = load_model(str(tmp_path))
    assert isinstance(lm, LoadedModel)
    assert lm.config["architectures"] == [type(model).__name__]
    assert lm.source == str(tmp_path) and lm.tokenizer is None
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
    got = _logits(lm.graph, ids)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_tied_embeddings_are_one_param(gpt2_dir):
    g = gpt2_dir[2].graph
    assert g.meta["tie_word_embeddings"] is True
    assert "lm_head.weight" not in g.params
    reads = [n for n in g.nodes if n.op == "param" and n.attrs.name == "transformer.wte.weight"]
    assert {n.block for n in reads} == {"embed", "head"}
    users = g.users()
    ops = sorted(u.op for n in reads for u in users[n.out])
    assert ops == ["embedding", "linear"]


def test_conv1d_weights_transposed_once(gpt2_dir):
    _, model, lm = gpt2_dir
    g = lm.graph
    w = g.params["transformer.h.0.attn.c_attn.weight"]
    assert tuple(w.type.shape) == (192, 64)  # [out, in]
    assert torch.equal(w.value(), model.transformer.h[0].attn.c_attn.weight.detach().t())
    assert "transformer.h.0.attn.c_attn.weight" in g.meta["transposed_params"]
    assert not g.find("permute", scope="transformer.h.0.attn.c_attn")


def test_prefixless_checkpoint(tmp_path):
    model = _save("gpt2", tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    save_file(
        {k.removeprefix("transformer."): v for k, v in sd.items()}, tmp_path / "model.safetensors"
    )
    g = load_model(str(tmp_path)).graph
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(_logits(g, ids), want, atol=1e-5)


def test_missing_tensor_is_named(tmp_path):
    _save("llama", tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(tmp_path))


def test_wrong_shape_names_file_and_tensor(tmp_path):
    _save("llama", tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(63)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(
        ModelLoadError, match=r"model\.safetensors: tensor 'model\.norm\.weight'.*\[63\]"
    ):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    _save("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["Qwen3MoeForCausalLM"]
    cfg["model_type"] = "qwen3_moe"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="Qwen3MoeForCausalLM is not supported: q/k-normed"):
        load_model(str(tmp_path))


def test_dtype_override(tmp_path):
    """bf16 import: the IR's error against fp32 HF is within 2x HF's own bf16 error."""
    model = _save("llama", tmp_path)
    g = load_model(str(tmp_path), dtype="bf16").graph
    assert g.meta["dtype"] == "bf16"
    assert all(p.type.dtype == "bf16" for p in g.params.values())
    assert g.inputs[2].type.dtype == "bf16"
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        lowp = model.to(torch.bfloat16)(input_ids=ids, use_cache=False).logits.float()
    got = _logits(g, ids).float()
    assert (got - want).abs().max() <= 2 * (lowp - want).abs().max() + 1e-3 * want.abs().max()


def test_unknown_spec_suggests():
    with pytest.raises(ModelLoadError, match="did you mean 'llama2-7b'"):
        load_model("llama2-7")


def test_builtin_tiny():
    from llmc.models import TINY_DIR

    if not (TINY_DIR / "config.json").is_file():
        with pytest.raises(ModelLoadError, match="tiny"):
            load_model("tiny")
        return
    import transformers

    m = load_model("tiny")
    assert m.name == "tiny" and m.tokenizer is not None
    assert m.graph.meta["vocab_size"] == m.tokenizer.vocab_size
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        TINY_DIR, local_files_only=True, trust_remote_code=False
    ).eval()
    ids = torch.tensor([m.tokenizer.encode("The cat sat on the mat.")])
    with torch.no_grad():
        want = ref(input_ids=ids, use_cache=False).logits
    got = _logits(m.graph, ids)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
