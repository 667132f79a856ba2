"""The embedded corpus, the byte-level tokenizer and the shipped ``tiny`` model."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc import data
from llmc.models import TINY_DIR
from llmc.tokenizer import ByteTokenizer, TokenizerError, load_tokenizer
from tests.hypothesis_profiles import examples

# ---------------------------------------------------------------------------------------- corpus


def test_split_is_disjoint_and_covers_all_topics() -> None:
    from pydoc_data.topics import topics

    train, heldout = set(data.topic_keys("train")), set(data.topic_keys("heldout"))
    assert train.isdisjoint(heldout)
    assert train | heldout == set(topics)
    assert 0.05 < len(heldout) / len(topics) < 0.25


def test_split_is_a_fixed_function_of_the_key() -> None:
    # Pinned so that a change of the split rule is caught on every Python version.
    assert data.is_heldout("types") and data.is_heldout("lists") and data.is_heldout("raise")
    assert not data.is_heldout("assert") and not data.is_heldout("typesseq")
    assert data.topic_keys("heldout") == tuple(sorted(data.topic_keys("heldout")))


def test_corpus_text_is_deterministic_and_disjoint() -> None:
    from pydoc_data.topics import topics

    heldout = data.corpus_text("heldout")
    data.corpus_text.cache_clear()
    data.topic_keys.cache_clear()
    assert data.corpus_text("heldout") == heldout
    train = data.corpus_text("train")
    for key in data.topic_keys("heldout"):
        body = topics[key].strip("\n")
        assert body in heldout
        assert body not in train


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown corpus split"):
        data.corpus_text("test")  # type: ignore[arg-type]


def test_heldout_hash_matches_recorded() -> None:
    got = data.heldout_sha256()
    running = sys.version.split()[0]
    if got != data.HELDOUT_SHA256 and running != data.CORPUS_PYTHON:
        pytest.skip(
            f"pydoc_data of Python {running} differs from Python {data.CORPUS_PYTHON}'s; "
            "held-out perplexities are not comparable with the shipped numbers"
        )
    assert got == data.HELDOUT_SHA256
    data.check_heldout()


def test_check_heldout_detects_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "HELDOUT_SHA256", "0" * 64)
    with pytest.raises(data.CorpusChangedError, match="held-out corpus text differs"):
        data.check_heldout()


def test_eval_windows_are_non_overlapping_prefix() -> None:
    tokens = data.corpus_tokens("heldout")
    w = data.eval_windows(256)
    assert w.dtype == torch.int64 and w.shape == (tokens.numel() // 256, 256)
    assert torch.equal(w.reshape(-1), tokens[: w.numel()])
    assert data.eval_windows(256, max_tokens=4096).shape == (16, 256)


def test_calibration_is_deterministic_by_seed_and_from_train() -> None:
    a = data.calibration_samples(8, 64, seed=3)
    assert a.shape == (8, 64)
    assert torch.equal(a, data.calibration_samples(8, 64, seed=3))
    assert not torch.equal(a, data.calibration_samples(8, 64, seed=4))
    train = data.corpus_text("train").encode("utf-8")
    for row in a:
        assert bytes(row.tolist()) in train


def test_token_batches_stream() -> None:
    s1, s2 = data.token_batches(4, 32, seed=0), data.token_batches(4, 32, seed=0)
    for _ in range(3):
        b = next(s1)
        assert b.shape == (4, 32)
        assert torch.equal(b, next(s2))


# ------------------------------------------------------------------------------------- tokenizer


@settings(max_examples=examples(5), deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_unicode(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_decodes_invalid_utf8_with_replacement() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xFF, ord("a"), 0xC3]) == "\ufffda\ufffd"
    assert tok.encode("\ud800") == [ord("?")]
    with pytest.raises(TokenizerError):
        tok.decode([256])


def test_load_tokenizer_reads_our_file_and_rejects_bad_ones(tmp_path) -> None:
    assert isinstance(load_tokenizer(TINY_DIR), ByteTokenizer)
    d = tmp_path / "m"
    d.mkdir()
    ByteTokenizer().save(d)
    assert isinstance(load_tokenizer(d), ByteTokenizer)
    (d / "tokenizer.json").write_text(json.dumps({"llmc_tokenizer": "bpe", "version": 1}))
    with pytest.raises(TokenizerError, match="unknown llmc tokenizer kind"):
        load_tokenizer(d)
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="transformers could not load"):
        load_tokenizer(empty)


# ----------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(TINY_DIR, local_files_only=True)
    return model.eval()


def test_shipped_files() -> None:
    names = {p.name for p in TINY_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_log.json"} <= names
    assert sum(p.stat().st_size for p in TINY_DIR.iterdir()) < 16 * 2**20
    log = json.loads((TINY_DIR / "training_log.json").read_text())
    assert log["heldout_sha256"] == data.HELDOUT_SHA256
    assert log["final"]["heldout_perplexity"] < 25.6


def test_tiny_config_shape(tiny) -> None:
    c = tiny.config
    assert c.model_type == "llama" and c.vocab_size == ByteTokenizer.vocab_size
    assert c.num_key_value_heads < c.num_attention_heads  # GQA
    assert not c.tie_word_embeddings
    for w in tiny.state_dict().values():
        assert w.dtype == torch.float32
        if w.dim() == 2:
            assert w.shape[0] % 64 == 0 and w.shape[1] % 64 == 0


def test_tiny_heldout_perplexity(tiny) -> None:
    # Independent of llmc.data's windowing: plain bytes of the held-out text, plain transformers.
    ids = list(data.corpus_text("heldout").encode("utf-8")[:4096])
    x = torch.tensor(ids, dtype=torch.int64).view(16, 256)
    with torch.no_grad():
        loss = tiny(input_ids=x, labels=x).loss.item()
    ppl = math.exp(loss)
    assert ppl < 25.6, f"held-out perplexity {ppl:.2f} is not below 25.6 (uniform/10)"
