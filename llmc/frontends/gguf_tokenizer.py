"""The tokenizer a GGUF file describes, rebuilt with the ``tokenizers`` library.

A GGUF file has no ``tokenizer.json``; llama.cpp keeps the vocabulary as metadata
(``tokenizer.ggml.model``, ``.tokens``, ``.scores``, ``.token_type``, ``.merges``, ``.pre``,
special ids). Two models are supported:

- ``llama`` (SentencePiece BPE): a BPE model whose merges are every split of a normal token into
  two vocabulary tokens, ranked by the merged token's score (llama.cpp's ``llm_tokenizer_spm``
  merges the adjacent pair with the highest score), with byte fallback (``<0xNN>`` tokens), spaces
  written as ``\u2581`` and a leading ``\u2581`` when ``tokenizer.ggml.add_space_prefix`` (default
  true);
- ``gpt2`` (byte-level BPE): the file's merges, and the pre-tokenizer regexes that
  ``tokenizer.ggml.pre`` names in llama.cpp (:data:`PRE_TOKENIZERS`); an unknown ``pre`` is refused
  rather than guessed.

Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
tokens, so both are matched whole in text as llama.cpp does. The result is an
:class:`llmc.tokenizer.HFTokenizer` (a ``transformers`` fast tokenizer inside) whose ``save``
writes ``tokenizer.json`` + ``tokenizer_config.json``, which :func:`llmc.tokenizer.load_tokenizer`
reads back from a compiled artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.errors import ModelLoadError
from llmc.tokenizer import HFTokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: ``tokenizer.ggml.pre`` -> (regexes applied in turn before byte-level BPE, ignore_merges), as
#: llama.cpp's ``llama-vocab.cpp`` defines them. None: the GPT-2 byte-level regex.
PRE_TOKENIZERS: dict[str | None, tuple[tuple[str, ...], bool]] = {
    None: ((_GPT2_SPLIT,), False),
    "gpt-2": ((_GPT2_SPLIT,), False),
    **{
        k: ((r"\p{N}", _GPT2_SPLIT), False)
        for k in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
    },
    **{
        k: ((_LLAMA3_SPLIT,), True)
        for k in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")
    },
}


class GGUFTokenizer(HFTokenizer):
    """An :class:`HFTokenizer` built from GGUF metadata; ``save`` writes HF tokenizer files."""

    def save(self, model_dir: Any) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``model_dir``."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(model_dir))
        return model_dir


def _list(f: Any, key: str, n: int | None, kind: type | tuple[type, ...]) -> list | None:
    v = f.field(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, kind) for x in v):
        raise ModelLoadError(f"{f.path}: metadata {key!r} must be a list of {kind}")
    if n is not None and len(v) != n:
        raise ModelLoadError(
            f"{f.path}: metadata {key!r} has {len(v)} entries but tokenizer.ggml.tokens has {n}"
        )
    return v


def _id(f: Any, key: str, n: int) -> int | None:
    v = f.field(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise ModelLoadError(f"{f.path}: metadata {key!r} = {v!r} is not a token id below {n}")
    return v


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal token into two vocabulary tokens, best merged score first."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    found = []
    for i, t in enumerate(tokens):
        if types[i] != NORMAL or len(t) < 2 or vocab[t] != i:
            continue
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in vocab and right in vocab:
                found.append((-scores[i], vocab[left], vocab[right], left, right))
    found.sort()
    return [(a, b) for *_, a, b in found]


def _spm(tokens, scores, types, unk, add_space_prefix: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    bpe = models.BPE(
        vocab=vocab,
        merges=spm_merges(tokens, scores, types),
        unk_token=tokens[unk] if unk is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    tk = Tokenizer(bpe)
    norm = [normalizers.Replace(" ", SPACE)]
    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        norm.insert(0, normalizers.Prepend(SPACE))
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tk.normalizer = normalizers.Sequence(norm)
    tk.decoder = decoders.Sequence(dec)
    return tk


def _bpe(f, tokens, merges, pre):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted(k for k in PRE_TOKENIZERS if k))
        raise ModelLoadError(
            f"{f.path}: tokenizer.ggml.pre {pre!r} is not supported (known: {known})"
        )
    splits, ignore_merges = PRE_TOKENIZERS[pre]
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ModelLoadError(f"{f.path}: tokenizer.ggml.merges entry {m!r} is not 'a b'")
        pairs.append((parts[0], parts[1]))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    try:
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    except Exception as e:  # tokenizers raises its own exception type
        raise ModelLoadError(f"{f.path}: tokenizer.ggml.merges is inconsistent ({e})") from None
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    return tk


def tokenizer_from_gguf(f: Any) -> GGUFTokenizer:
    """The tokenizer of a parsed GGUF file (:class:`llmc.frontends.gguf.GGUFFile`)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    kind = f.field("tokenizer.ggml.model")
    tokens = _list(f, "tokenizer.ggml.tokens", None, str)
    if not tokens:
        raise ModelLoadError(f"{f.path}: metadata 'tokenizer.ggml.tokens' is missing or empty")
    n = len(tokens)
    types = _list(f, "tokenizer.ggml.token_type", n, int) or [NORMAL] * n
    if kind == "llama":
        scores = _list(f, "tokenizer.ggml.scores", n, (int, float))
        if scores is None:
            raise ModelLoadError(f"{f.path}: a 'llama' tokenizer needs 'tokenizer.ggml.scores'")
        prefix = f.field("tokenizer.ggml.add_space_prefix")
        unk = _id(f, "tokenizer.ggml.unknown_token_id", n)
        tk = _spm(tokens, [float(s) for s in scores], types, unk, prefix is not False)
    elif kind == "gpt2":
        merges = _list(f, "tokenizer.ggml.merges", None, str)
        if merges is None:
            raise ModelLoadError(f"{f.path}: a 'gpt2' tokenizer needs 'tokenizer.ggml.merges'")
        tk = _bpe(f, tokens, merges, f.field("tokenizer.ggml.pre"))
    else:
        raise ModelLoadError(
            f"{f.path}: tokenizer.ggml.model {kind!r} is not supported (llama or gpt2)"
        )
    tk.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i in range(n)
            if types[i] == CONTROL
        ]
    )
    tk.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False)
            for i in range(n)
            if types[i] == USER_DEFINED
        ]
    )
    special = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token")):
        i = _id(f, f"tokenizer.ggml.{key}_token_id", n)
        if i is not None:
            special[name] = tokens[i]
    pad = _id(f, "tokenizer.ggml.padding_token_id", n)
    if pad is not None:
        special["pad_token"] = tokens[pad]
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **special)
    if len(hf) != n:
        raise ModelLoadError(
            f"{f.path}: tokenizer.ggml.tokens repeats entries ({n} listed, {len(hf)} distinct)"
        )
    return GGUFTokenizer(hf)
