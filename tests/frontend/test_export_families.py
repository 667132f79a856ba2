"""``--format hf`` for every family the frontend reads: a random HF model -> llmc load -> passes
-> export -> ``transformers.AutoModelForCausalLM`` computes the logits llmc's interpreter computes
on the same (compressed) graph; tokenizers of HF directories and GGUF files load with
``AutoTokenizer`` and encode as llmc's."""

from __future__ import annotations

import json

import pytest
import torch

from llmc.export_hf import ExportError, export_hf
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run
from tests.frontend.hf_models import FAMILIES, VOCAB, make

COMPRESSED = "magnitude:sparsity=0.5,rtn:bits=4:group=32"
TEXTS = ["hello world", "the quick brown fox", "naïve café 🙂", ""]


def _hf_dir(family: str, path):
    make(family).save_pretrained(path)
    return path


def _hf_logits(out_dir, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_loads_in_transformers_with_llmc_logits(family, tmp_path) -> None:
    lm = load_model(str(_hf_dir(family, tmp_path / "src")))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = []
    for spec in ("", COMPRESSED):
        g = lm.graph.copy()
        if spec:
            build_pipeline(spec).run(g, PassContext(calib_samples=2, calib_seqlen=16))
        out = tmp_path / (spec.split(":")[0] or "dense")
        info = export_hf(g, out, config=lm.config)
        comp = json.loads((out / "llmc_compression.json").read_text())
        assert comp["pipeline"] == info["pipeline"] == build_pipeline(spec or None).spec()
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == lm.config["architectures"]
        if spec:
            assert any("quant" in w and "sparsity" in w for w in comp["weights"].values())
        want = run(g, lm_inputs(g, ids))[0]
        got = _hf_logits(out, ids)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"{family} {spec!r}")
        logits.append(got)
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)  # compression reached transformers


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB + 300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t)


def test_hf_directory_tokenizer_round_trips(tmp_path) -> None:
    from transformers import AutoTokenizer

    from llmc.tokenizer import HFTokenizer

    src = _hf_dir("gpt2", tmp_path / "src")
    tok = _bpe_tokenizer()
    tok.save_pretrained(src)
    lm = load_model(str(src))
    assert isinstance(lm.tokenizer, HFTokenizer)
    export_hf(lm.graph, tmp_path / "out", tokenizer=lm.tokenizer, config=lm.config)
    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    for s in TEXTS:
        assert again.encode(s, add_special_tokens=False) == lm.tokenizer.encode(s), s
        assert again.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)


def test_gguf_model_and_tokenizer_export(tmp_path) -> None:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import AutoTokenizer

    from tests.frontend import test_gguf as tg

    chars = sorted(ByteLevel.alphabet())[: tg.VOCAB - 1]
    tokens = [*chars, chars[0] + chars[1]]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * len(tokens),
        "tokenizer.ggml.merges": [f"{chars[0]} {chars[1]}"],
    }
    model = tg.tiny_llama(False)
    path = tg.write_gguf(tmp_path / "m.gguf", tg.gguf_tensors(model, False), tok=meta)
    lm = load_model(str(path))
    export_hf(lm.graph, tmp_path / "out", tokenizer=lm.tokenizer, config=lm.config)
    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "".join(chars[:40]) + chars[0] + chars[1]
    assert lm.tokenizer.encode(text)[-1] == len(tokens) - 1  # the merge applies
    assert again.encode(text, add_special_tokens=False) == lm.tokenizer.encode(text)
    ids = torch.randint(0, tg.VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        _hf_logits(tmp_path / "out", ids), run(lm.graph, lm_inputs(lm.graph, ids))[0]
    )


def test_shape_a_config_cannot_say_is_refused(tmp_path) -> None:
    lm = load_model(str(_hf_dir("opt", tmp_path / "src")))
    with pytest.raises(ExportError, match=r"fc1\.weight' is \[96, 64\] but a OPTForCausalLM "):
        export_hf(lm.graph, tmp_path / "out", config={**lm.config, "ffn_dim": 80})
    assert not (tmp_path / "out").exists()


def test_cli_export_of_a_directory_and_of_an_artifact(capsys, tmp_path) -> None:
    from llmc.cli import main

    src = _hf_dir("gpt2", tmp_path / "src")
    spec = "magnitude:sparsity=0.5"
    assert main(["export", str(src), "--passes", spec, "-o", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "GPT2LMHeadModel" and info["pipeline"] == spec
    comp = json.loads((tmp_path / "hf" / "llmc_compression.json").read_text())
    assert comp["pipeline"] == spec
    # a compiled artifact: the pipeline comes from its manifest, further passes are appended
    art = tmp_path / "art"
    assert main(["compile", str(src), "--passes", spec, "-o", str(art)]) == 0
    capsys.readouterr()
    rc = main(["export", str(art), "--passes", "rtn:bits=8", "-o", str(tmp_path / "hf2")])
    assert rc == 0, capsys.readouterr().err
    # the artifact's manifest keeps the HF config: a GPT-2 config.json, the pipeline appended to
    cfg = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["n_embd"] == 64
    comp = json.loads((tmp_path / "hf2" / "llmc_compression.json").read_text())
    assert comp["pipeline"] == f"{spec},rtn:bits=8"
    g = load_model(str(src)).graph
    build_pipeline(f"{spec},rtn:bits=8").run(g, PassContext())
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        _hf_logits(tmp_path / "hf2", ids), run(g, lm_inputs(g, ids))[0], rtol=1e-4, atol=1e-4
    )
    tiny_art = tmp_path / "tiny-art"
    assert main(["compile", "tiny", "--passes", spec, "-o", str(tiny_art)]) == 0
    rc = main(["export", str(tiny_art), "--passes", "rtn:bits=8", "-o", str(tmp_path / "t")])
    assert rc == 0
    comp = json.loads((tmp_path / "t" / "llmc_compression.json").read_text())
    assert comp["pipeline"] == f"{spec},rtn:bits=8"


def test_export_keeps_the_loaded_dtype(tmp_path) -> None:
    from safetensors import safe_open

    lm = load_model(str(_hf_dir("qwen2", tmp_path / "src")), dtype="bf16")
    export_hf(lm.graph, tmp_path / "out", config=lm.config)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16
