"""A compiled model keeps its tokenizer (issue 13, item 1).

A Hugging Face checkpoint with a real BPE tokenizer, compiled for ``cpu``, must give through
``llmc run OUT --prompt`` exactly the tokens transformers' greedy generation gives; a model with no
tokenizer must refuse text prompts in one line (never encode them as bytes) and accept
``--prompt-ids``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmc.cli import main

PROMPT = "The capital of France is"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def make_bpe_model(d: Path, *, with_tokenizer: bool = True, seed: int = 0) -> tuple[list, list]:
    """A random Llama with a byte-level BPE tokenizer trained on pydoc text; returns the prompt's
    ids and transformers' greedy continuation (8 tokens)."""
    import pydoc_data.topics as topics

    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = "\n".join(list(topics.topics.values())[:40])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
    )
    tok.train_from_iterator([text], trainer)
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    d.mkdir(parents=True)
    if with_tokenizer:
        fast.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    ids = fast.encode(PROMPT, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return ids, out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    d = tmp_path_factory.mktemp("bpe") / "hf"
    ids, want = make_bpe_model(d)
    return d, ids, want


@pytest.fixture(scope="module")
def bpe_cpu(bpe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe-cpu") / "out"
    assert main(["compile", str(bpe[0]), "--target", "cpu", "-o", str(out), "--json"]) == 0
    return out


def test_cpu_artifact_generates_what_transformers_does(capsys, bpe, bpe_cpu: Path) -> None:
    _, ids, want = bpe
    rc, out, err = run_cli(
        capsys, "run", str(bpe_cpu), "--prompt", PROMPT, "--max-new-tokens", "8", "--json"
    )
    assert rc == 0, err
    r = json.loads(out)
    assert r["prompt_tokens"] == len(ids) < len(PROMPT.encode())  # BPE pieces, not bytes
    assert r["tokens"] == want
    manifest = json.loads((bpe_cpu / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf"
    assert "tokenizer/tokenizer.json" in manifest["files"]


@pytest.mark.parametrize("target", ["ref"])
def test_ref_artifact_and_directory_agree(capsys, bpe, tmp_path: Path, target: str) -> None:
    d, ids, want = bpe
    out = tmp_path / "out"
    assert run_cli(capsys, "compile", str(d), "--target", target, "-o", str(out))[0] == 0
    for model in (str(d), str(out)):
        rc, o, err = run_cli(
            capsys, "run", model, "--prompt", PROMPT, "--max-new-tokens", "8", "--json"
        )
        assert rc == 0, err
        assert json.loads(o)["tokens"] == want


def test_no_tokenizer_refuses_text_and_takes_ids(capsys, tmp_path: Path) -> None:
    d = tmp_path / "hf"
    ids, want = make_bpe_model(d, with_tokenizer=False)
    out = tmp_path / "out"
    assert run_cli(capsys, "compile", str(d), "-o", str(out))[0] == 0
    assert json.loads((out / "manifest.json").read_text())["tokenizer"] is None
    for model in (str(d), str(out)):
        rc, o, err = run_cli(capsys, "run", model, "--prompt", PROMPT)
        assert rc != 0 and o == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmc: error:"), err
        assert "no tokenizer" in lines[0] and "--prompt-ids" in lines[0]
        rc, o, err = run_cli(
            capsys, "eval", model, "--json", "--max-tokens", "64", "--window", "32"
        )
        assert rc != 0 and "no tokenizer" in err and json.loads(o)["kind"] == "TokenizerError"
        ids_arg = ",".join(map(str, ids))
        rc, o, err = run_cli(
            capsys, "run", model, "--prompt-ids", ids_arg, "--max-new-tokens", "8", "--json"
        )
        assert rc == 0, err
        assert json.loads(o)["tokens"] == want


def test_calibration_needs_the_models_tokenizer(capsys, tmp_path: Path) -> None:
    d = tmp_path / "hf"
    make_bpe_model(d, with_tokenizer=False)
    rc, _, err = run_cli(
        capsys,
        "compile",
        str(d),
        "--passes",
        "wanda:sparsity=0.5",
        "--calib-seqlen",
        "64",
        "-o",
        str(tmp_path / "o"),
    )
    assert rc != 0 and "no tokenizer to encode calibration text" in err
    assert not (tmp_path / "o").exists()


def test_export_keeps_the_tokenizer(capsys, bpe, tmp_path: Path) -> None:
    import transformers as T

    d, ids, _ = bpe
    out = tmp_path / "exported"
    rc, _, err = run_cli(capsys, "export", str(d), "-o", str(out))
    assert rc == 0, err
    tok = T.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tok.encode(PROMPT, add_special_tokens=False) == ids


def test_tokenizer_files_are_hashed(capsys, bpe_cpu: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(bpe_cpu, art)
    tj = art / "tokenizer" / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"<eos>"', '"<eot>"'))
    rc, _, err = run_cli(capsys, "run", str(art), "--prompt", PROMPT)
    assert rc != 0 and "tokenizer.json" in err and "hash" in err
    shutil.rmtree(art)
    shutil.copytree(bpe_cpu, art)
    (art / "tokenizer" / "special_tokens_map.json").write_text("{}")  # unlisted extra file
    rc, _, err = run_cli(capsys, "run", str(art), "--prompt", PROMPT)
    assert rc != 0 and "special_tokens_map.json" in err and "not listed" in err
