"""``--format gguf`` with a Llama-style SentencePiece BPE tokenizer (byte fallback, spaces as
U+2581): written as ``tokenizer.ggml.model = llama`` with tokens, scores, token types and special
ids, as llama.cpp's converter does; llmc's GGUF import (``llmc compile model.gguf``) rebuilds a
tokenizer that encodes as transformers' tokenizer of the original directory. The tokenizer is
built with the ``tokenizers`` library the way transformers' ``LlamaConverter`` builds one from a
SentencePiece model: ``<unk> <s> </s>``, the 256 byte tokens, pieces in score order, and as
merges every split of a piece into two pieces, ranked by the merged piece."""

from __future__ import annotations

import gguf
import pytest
import torch
import transformers as T

from llmc.export_gguf import export_gguf
from llmc.frontends import load_model
from tests.frontend.hf_models import RMS

SP = "\u2581"
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello there! numbers 123 4567",
    "a tokenizer splits words into pieces and pieces into bytes",
] * 40
TEXTS = [
    "hello world",
    " the  quick brown fox",
    "Hello World, HELLO there!",
    "numbers 1234567 and pieces",
    "café naïve 🙂 日本",
    "line one\nline two\ttab",
    "",
]


def _spm_tokenizer(style: str):
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="first")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=220, show_progress=False))
    pieces = [t for t, _ in sorted(trained.get_vocab().items(), key=lambda kv: kv[1])]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + pieces)}
    merges = []
    for piece in pieces:  # transformers' SentencePieceExtractor: all splits, by merged piece
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((vocab[piece], vocab[left], vocab[right], left, right))
    merges = [(a, b) for *_, a, b in sorted(merges)]
    tk = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    if style == "metaspace":  # recent Llama / Mistral tokenizer.json
        tk.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SP, prepend_scheme="first", split=False
        )
    else:  # Llama 2's legacy tokenizer.json: the prefix and spaces in the normalizer
        tk.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SP), normalizers.Replace(" ", SP)]
        )
    tk.decoder = decoders.Sequence(
        [decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(content=" ", left=1, right=0)]
    )  # fmt: skip
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.mark.parametrize("style", ["metaspace", "legacy"])
def test_sentencepiece_bpe_exports_as_llama_vocab(tmp_path, style) -> None:
    hf_tok = _spm_tokenizer(style)
    vocab = len(hf_tok)
    d = tmp_path / "hf"
    torch.manual_seed(0)
    T.LlamaForCausalLM(
        T.LlamaConfig(**{**RMS, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2})
    ).save_pretrained(d)
    hf_tok.save_pretrained(d)
    ref = T.AutoTokenizer.from_pretrained(d)  # what a user of the original directory gets
    lm = load_model(str(d))
    out = tmp_path / "m.gguf"
    info = export_gguf(lm.graph, out, tokenizer=lm.tokenizer, config=lm.config)
    assert info["tokenizer"].startswith("llama SentencePiece BPE"), info["tokenizer"]
    assert "not SentencePiece-ordered" not in info["tokenizer"]
    meta = {k: f.contents() for k, f in gguf.GGUFReader(str(out)).fields.items()}
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens = meta["tokenizer.ggml.tokens"]
    assert tokens == [ref.convert_ids_to_tokens(i) for i in range(vocab)]
    types, scores = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.scores"]
    assert types[:3] == [2, 3, 3] and set(types[3:259]) == {6} and set(types[259:]) == {1}
    assert len(scores) == vocab and scores[tokens.index(SP + "the")] > scores[-1]
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.ggml.add_space_prefix"] is True

    back = load_model(str(out))  # llmc's GGUF import, as `llmc compile m.gguf` reads it
    assert back.tokenizer.vocab_size == vocab
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False)
        if style == "metaspace" and text.startswith(" "):
            # HF's Metaspace adds no U+2581 to a text that starts with a space; SentencePiece
            # and llama.cpp always add it (add_space_prefix): one more leading "▁" token
            want = [ref.convert_tokens_to_ids(SP), *want]
        assert back.tokenizer.encode(text) == want, text
        assert back.tokenizer.decode(want) == ref.decode(want), text


def test_llmc_compile_of_the_gguf_keeps_the_tokenizer(tmp_path) -> None:
    """``llmc compile m.gguf`` (the CLI): the artifact's tokenizer encodes as transformers'."""
    from llmc.cli import main
    from llmc.compile import load

    hf_tok = _spm_tokenizer("metaspace")
    d = tmp_path / "hf"
    T.LlamaForCausalLM(T.LlamaConfig(**{**RMS, "vocab_size": len(hf_tok)})).save_pretrained(d)
    hf_tok.save_pretrained(d)
    lm = load_model(str(d))
    export_gguf(lm.graph, tmp_path / "m.gguf", tokenizer=lm.tokenizer, config=lm.config)
    art = tmp_path / "art"
    assert main(["compile", str(tmp_path / "m.gguf"), "--target", "ref", "-o", str(art)]) == 0
    tok = load(str(art)).tokenizer  # as `llmc run OUT --prompt ...` reads it
    for text in TEXTS:
        if not text.startswith(" "):  # see above: HF's Metaspace vs SentencePiece's prefix
            assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False), text


def test_llama_cpp_tokenizes_the_exported_vocab(tmp_path) -> None:
    """llama.cpp (llama-cpp-python, when installed) tokenizes as transformers."""
    llama_cpp = pytest.importorskip("llama_cpp")
    hf_tok = _spm_tokenizer("metaspace")
    d = tmp_path / "hf"
    T.LlamaForCausalLM(T.LlamaConfig(**{**RMS, "vocab_size": len(hf_tok)})).save_pretrained(d)
    hf_tok.save_pretrained(d)
    lm = load_model(str(d))
    export_gguf(lm.graph, tmp_path / "m.gguf", tokenizer=lm.tokenizer, config=lm.config)
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    for text in TEXTS[:-1]:
        if text.startswith(" "):
            continue  # HF's Metaspace vs SentencePiece's prefix (see above)
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert got == hf_tok.encode(text, add_special_tokens=False), text


def test_unigram_is_reported_not_written(tmp_path) -> None:
    from tokenizers import Tokenizer, models

    from llmc.tokenizer import HFTokenizer

    vocab = [("<unk>", 0.0)] + [(chr(97 + i), -1.0 - i) for i in range(26)]
    tk = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok = HFTokenizer(T.PreTrainedTokenizerFast(tokenizer_object=tk))
    d = tmp_path / "hf"
    T.LlamaForCausalLM(T.LlamaConfig(**{**RMS, "vocab_size": len(vocab)})).save_pretrained(d)
    lm = load_model(str(d))
    info = export_gguf(lm.graph, tmp_path / "u.gguf", tokenizer=tok, config=lm.config)
    assert info["tokenizer"].startswith("not written: a SentencePiece Unigram")
    fields = gguf.GGUFReader(str(tmp_path / "u.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "no_vocab"


def test_bpe_merges_sentencepiece_cannot_order_are_noted(tmp_path) -> None:
    """A byte-fallback BPE whose merges are not SentencePiece's all-splits form: ``bc`` merges
    before ``ab``, and ``abc`` only from ``ab + c``. HF gives ``abc`` -> ``a bc``; SentencePiece
    (llama.cpp, and llmc's import of the GGUF) merges ``a + bc`` too -> ``abc``. The file is
    written, and the summary says how many merges differ."""
    from tokenizers import Tokenizer, models, normalizers

    from llmc.tokenizer import HFTokenizer

    base = ["<unk>", *[f"<0x{b:02X}>" for b in range(256)], SP, "a", "b", "c"]
    vocab = {t: i for i, t in enumerate([*base, "bc", "ab", "abc"])}
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", SP)
    hf = T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    d = tmp_path / "hf"
    T.LlamaForCausalLM(T.LlamaConfig(**{**RMS, "vocab_size": len(vocab)})).save_pretrained(d)
    lm = load_model(str(d))
    info = export_gguf(lm.graph, tmp_path / "t.gguf", tokenizer=HFTokenizer(hf), config=lm.config)
    assert info["tokenizer"].startswith("llama SentencePiece BPE"), info["tokenizer"]
    assert "(1 merges are not SentencePiece-ordered" in info["tokenizer"]
    back = load_model(str(tmp_path / "t.gguf")).tokenizer
    assert hf.encode("abc", add_special_tokens=False) == [vocab["a"], vocab["bc"]]
    assert back.encode("abc") == [vocab["abc"]]  # what llama.cpp's SentencePiece merging gives
