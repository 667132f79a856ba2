"""Tokenizers: llmc's byte-level tokenizer, and an adapter for Hugging Face tokenizers.

The byte-level tokenizer maps text to its UTF-8 bytes: token id ``i`` *is* byte ``i``, so the
vocabulary has exactly 256 entries (a multiple of 64, which keeps the embedding and the LM head
friendly to N:M sparsity and 16x16 FPGA blocks). There are no special ids: no BOS, EOS or padding.
Every string encodes, every id sequence decodes (invalid UTF-8 becomes U+FFFD), and
``decode(encode(s)) == s`` for every ``str`` that contains no lone surrogates.

A model directory says which tokenizer it uses through its ``tokenizer.json``. llmc's byte-level
tokenizer writes a small file of its own::

    {"llmc_tokenizer": "byte-level", "version": 1, "vocab_size": 256, "encoding": "utf-8"}

Any other ``tokenizer.json`` (or none at all) is handed to ``transformers.AutoTokenizer`` with
``local_files_only=True`` and ``trust_remote_code=False``: model directories are untrusted input.

Both kinds :meth:`save` themselves into a directory (the HF adapter through ``save_pretrained``), so a
compiled artifact carries the tokenizer its model was loaded with (``OUT/tokenizer/``, named in the
manifest). A model with no tokenizer gets none: text is never encoded with a guessed tokenizer
(:func:`require_tokenizer`).

Example::

    >>> tok = ByteTokenizer()
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode([104, 195, 169])
    'hé'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from llmc.errors import ModelLoadError

TOKENIZER_FILE = "tokenizer.json"
BYTE_LEVEL_KIND = "byte-level"
_FORMAT_VERSION = 1
# A tokenizer.json larger than this cannot be llmc's byte-level file; it is left to transformers.
_MAX_OWN_FILE_BYTES = 1 << 16


class TokenizerError(ModelLoadError):
    """A model directory's tokenizer is missing, malformed or unsupported, or ids are invalid."""


@runtime_checkable
class Tokenizer(Protocol):
    """What llmc needs from a tokenizer: ids in, ids out, and the vocabulary size."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; undecodable input is replaced, never an error."""
        ...


class ByteTokenizer:
    """llmc's byte-level tokenizer: id ``i`` is the byte ``i`` of the UTF-8 encoding.

    >>> ByteTokenizer().decode(ByteTokenizer().encode("naïve ∑ 🙂"))
    'naïve ∑ 🙂'
    """

    vocab_size: int = 256
    bos_id: int | None = None
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as ids in ``range(256)``.

        Lone surrogates (which UTF-8 cannot represent) are encoded as ``?`` via
        ``errors="replace"``, so encoding never fails.
        """
        return list(text.encode("utf-8", errors="replace"))

    def decode(self, ids: list[int]) -> str:
        """The text whose UTF-8 bytes are ``ids``; invalid sequences decode to U+FFFD.

        Raises:
            TokenizerError: an id is outside ``range(256)``.
        """
        try:
            data = bytes(ids)
        except (ValueError, TypeError) as e:
            raise TokenizerError(
                f"byte-level tokenizer: ids must be integers in 0..255 ({e})"
            ) from None
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """The contents of this tokenizer's ``tokenizer.json``."""
        return {
            "llmc_tokenizer": BYTE_LEVEL_KIND,
            "version": _FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "encoding": "utf-8",
            "special_tokens": {},
            "description": "llmc byte-level tokenizer: token id i is byte i of the UTF-8 text",
        }

    def save(self, model_dir: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``model_dir`` (created if missing); return its path."""
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        path = Path(model_dir) / TOKENIZER_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    def to_hf(self) -> Any:
        """The same tokenizer as a ``transformers`` fast tokenizer: byte-level BPE with no merges
        whose vocabulary maps GPT-2's printable stand-in for byte ``i`` to id ``i``, so its ids
        equal :meth:`encode`'s for every string (no special tokens, no prefix space)."""
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        chars = _byte_chars()
        tok = HFTok(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)

    def save_hf(self, model_dir: str | Path) -> Path:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` in the Hugging Face format
        (:meth:`to_hf`), which ``AutoTokenizer.from_pretrained`` loads; return ``model_dir``."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.to_hf().save_pretrained(str(model_dir))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        # the class every transformers version (4.x and 5.x) knows for a bare tokenizer.json
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        return model_dir

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (``tokenizers``' ByteLevel alphabet): printable
    Latin-1 bytes stand for themselves, the other 68 map to U+0100 onwards in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class HFTokenizer:
    """Adapter giving a ``transformers`` tokenizer llmc's :class:`Tokenizer` interface.

    ``encode`` adds no special tokens, so token streams are comparable with the byte tokenizer's.
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self.vocab_size: int = len(hf_tokenizer)
        self.bos_id: int | None = hf_tokenizer.bos_token_id
        self.eos_id: int | None = hf_tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(list(ids)))

    def save(self, model_dir: str | Path) -> Path:
        """Write the tokenizer's files (``save_pretrained``) into ``model_dir``; return it."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(model_dir))
        return model_dir

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"


def _read_own_tokenizer(path: Path) -> ByteTokenizer | None:
    """The byte tokenizer if ``path`` is llmc's tokenizer.json, None if it is someone else's."""
    if path.stat().st_size > _MAX_OWN_FILE_BYTES:
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or "llmc_tokenizer" not in spec:
        return None
    kind = spec["llmc_tokenizer"]
    if kind != BYTE_LEVEL_KIND:
        raise TokenizerError(f"{path}: unknown llmc tokenizer kind {kind!r}; expected 'byte-level'")
    if spec.get("version") != _FORMAT_VERSION:
        raise TokenizerError(
            f"{path}: llmc tokenizer version {spec.get('version')!r} is not supported "
            f"(this llmc reads version {_FORMAT_VERSION})"
        )
    if spec.get("vocab_size", 256) != 256 or spec.get("encoding", "utf-8") != "utf-8":
        raise TokenizerError(f"{path}: byte-level tokenizer must have vocab_size 256 and utf-8")
    return ByteTokenizer()


def load_tokenizer(model_dir: str | Path) -> ByteTokenizer | HFTokenizer:
    """The tokenizer of a model directory.

    Returns a :class:`ByteTokenizer` when ``model_dir/tokenizer.json`` is llmc's byte-level file;
    otherwise loads the directory with ``transformers.AutoTokenizer`` (local files only, no remote
    code) and wraps it in :class:`HFTokenizer`.

    Raises:
        TokenizerError: the directory has no usable tokenizer; the message names the directory.
    """
    model_dir = Path(model_dir)
    path = model_dir / TOKENIZER_FILE
    if path.is_file():
        own = _read_own_tokenizer(path)
        if own is not None:
            return own
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError...)
        raise TokenizerError(
            f"{model_dir}: no llmc tokenizer.json and transformers could not load a tokenizer "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return HFTokenizer(hf)


def require_tokenizer(tokenizer: Any, source: str, *, what: str = "text prompts") -> Any:
    """``tokenizer``, or a :class:`TokenizerError` saying that ``source`` has none.

    llmc never falls back to another tokenizer: bytes fed to a model trained on BPE pieces give
    fluent-looking garbage with exit status 0 (issue 13).
    """
    if tokenizer is not None:
        return tokenizer
    raise TokenizerError(
        f"{source}: the model has no tokenizer, so it cannot encode {what}; give token ids "
        "instead (llmc run --prompt-ids 1,2,3) or load the model from a directory that holds its "
        "tokenizer files"
    )
