"""The embedded corpus: Python's own documentation topics, split into train and held-out text.

Every Python install ships ``pydoc_data.topics.topics``, a dict from a topic key (``"assert"``,
``"typesseq"``, ...) to the plain-text reference page ``help()`` shows. llmc trains its ``tiny``
model on it and measures pass quality (perplexity before and after pruning, quantization, ...) on
the held-out part, so no download is ever needed.

The split is by topic, never inside one: a topic is held out when the first byte of
``sha256("llmc-heldout:" + key)`` is below 26 (about 10% of topics). Hashing the key rather than
taking every n-th sorted key keeps the split of every topic fixed when a Python release adds or
drops topics. Each split's text is its topics in sorted-key order, joined by one blank line.

The text itself can change between Python releases (the docs are edited). :data:`HELDOUT_SHA256`
records the held-out text this llmc was built against (see :data:`CORPUS_PYTHON`);
:func:`check_heldout` raises :class:`CorpusChangedError` when the running Python's text differs, so
perplexities are only ever compared on the same text.

Example::

    >>> windows = eval_windows(256)              # [n, 256] int64, non-overlapping held-out tokens
    >>> calib = calibration_samples(16, 128)     # [16, 128] int64 from the train split, seed 0
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from llmc.errors import LlmcError
from llmc.tokenizer import ByteTokenizer, Tokenizer

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")

_HELDOUT_SALT = "llmc-heldout:"
_HELDOUT_BELOW = 26  # first sha256 byte < 26 -> held out (26/256 ~ 10% of topics)
_SEPARATOR = "\n\n"

#: sha256 of ``corpus_text("heldout").encode("utf-8")`` on :data:`CORPUS_PYTHON`.
HELDOUT_SHA256 = "3d1c78483b76c1f7a780a91613e28a07a50793bea9d5ee478303581d42ad0707"
#: The Python version whose ``pydoc_data`` produced :data:`HELDOUT_SHA256`.
CORPUS_PYTHON = "3.11.7"


class CorpusChangedError(LlmcError):
    """The running Python's held-out documentation text is not the one llmc was built against."""


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def is_heldout(key: str) -> bool:
    """Whether topic ``key`` belongs to the held-out split (a pure function of the key)."""
    return hashlib.sha256((_HELDOUT_SALT + key).encode("utf-8")).digest()[0] < _HELDOUT_BELOW


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {', '.join(SPLITS)}")


@functools.cache
def topic_keys(split: Split) -> tuple[str, ...]:
    """The sorted topic keys of ``split`` ("train" or "heldout")."""
    _check_split(split)
    want = split == "heldout"
    return tuple(k for k in sorted(_topics()) if is_heldout(k) == want)


@functools.cache
def corpus_text(split: Split) -> str:
    """The text of ``split``: its topics in sorted-key order, separated by a blank line."""
    topics = _topics()
    return _SEPARATOR.join(topics[k].strip("\n") for k in topic_keys(split)) + "\n"


def heldout_sha256() -> str:
    """sha256 (hex) of the UTF-8 held-out text of the running Python."""
    return hashlib.sha256(corpus_text("heldout").encode("utf-8")).hexdigest()


def check_heldout() -> None:
    """Raise :class:`CorpusChangedError` unless the held-out text is the recorded one."""
    got = heldout_sha256()
    if got != HELDOUT_SHA256:
        import sys

        raise CorpusChangedError(
            f"held-out corpus text differs from the one llmc was built against "
            f"(sha256 {got[:12]}... on Python {sys.version.split()[0]}, expected "
            f"{HELDOUT_SHA256[:12]}... from Python {CORPUS_PYTHON}); perplexities are not "
            f"comparable with the shipped numbers: use Python {CORPUS_PYTHON} or re-record "
            f"llmc.data.HELDOUT_SHA256"
        )


def corpus_tokens(split: Split, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """All token ids of ``split`` as a 1-D int64 tensor (byte tokenizer by default)."""
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    if isinstance(tok, ByteTokenizer):
        return _byte_tokens(split).clone()
    return torch.tensor(tok.encode(corpus_text(split)), dtype=torch.int64)


@functools.cache
def _byte_tokens(split: Split) -> torch.Tensor:
    data = corpus_text(split).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def eval_windows(
    length: int,
    *,
    split: Split = "heldout",
    max_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """Non-overlapping windows of ``length`` tokens over ``split``, as ``[n, length]`` int64.

    Windows start at token 0 and step by ``length``; the incomplete tail is dropped. With
    ``max_tokens``, only the first ``max_tokens`` tokens are used (``n = max_tokens // length``).
    Perplexity over these windows predicts tokens 1..length-1 of each window from its prefix.
    """
    if length < 2:
        raise ValueError(f"window length must be at least 2, got {length}")
    tokens = corpus_tokens(split, tokenizer)
    out = _cut(tokens, length, max_tokens)
    if out is None:
        raise ValueError(
            f"{split} split has {tokens.numel()} tokens: fewer than one window of {length}"
        )
    return out


def _cut(tokens: torch.Tensor, length: int, max_tokens: int | None) -> torch.Tensor | None:
    """Non-overlapping ``[n, length]`` windows from the first ``max_tokens`` of ``tokens`` (the
    tail dropped); None when there is not one."""
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    n = tokens.numel() // length
    return tokens[: n * length].view(n, length).clone() if n else None


class DataFileError(LlmcError):
    """A user's text file (``llmc eval --data``, ``--calib``) cannot be read as text."""


def read_documents(path: str | Path, what: str = "data file") -> list[str]:
    """The documents of a text file: a ``.jsonl`` file holds one JSON object per line with a
    string field ``text`` (blank lines skipped); any other file is one UTF-8 document. Errors
    are one line naming the file (and the line). ``hf:NAME[:SPLIT]`` (or a directory written by
    ``Dataset.save_to_disk``) reads a Hugging Face ``datasets`` dataset's ``text`` column instead,
    when that library is installed (:func:`read_hf_dataset`)."""
    if str(path).startswith("hf:"):
        return read_hf_dataset(str(path)[3:], what)
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()):
        return read_hf_dataset(str(p), what)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise DataFileError(f"{p}: {what} is a directory, not a text file") from None
    except OSError as e:
        raise DataFileError(f"{p}: cannot read {what}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{p}: {what} is not UTF-8 text (byte {e.start})") from None
    if p.suffix.lower() != ".jsonl":
        return [text] if text.strip() else []
    import json

    docs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{p}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataFileError(f'{p}:{i}: each line needs a string field "text"')
        docs.append(obj["text"])
    return docs


def read_hf_dataset(spec: str, what: str = "data file") -> list[str]:
    """The ``text`` column of a Hugging Face ``datasets`` dataset: ``spec`` is a directory
    written by ``save_to_disk`` (its split, or ``DIR:SPLIT`` for a ``DatasetDict``), or
    ``NAME[:SPLIT]`` for ``load_dataset`` (default split ``test``; a name not in the local cache
    needs the network). Errors are one line naming the dataset."""
    name, _, split = spec.partition(":")
    label = f"hf:{spec}"
    if not name:
        raise DataFileError(f"{label}: give a dataset name or directory after hf:")
    try:
        import datasets  # optional: only for hf: data
    except ImportError:
        raise DataFileError(
            f"{label}: reading a Hugging Face dataset needs the `datasets` library "
            "(pip install datasets), or give a .txt/.jsonl file"
        ) from None
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if split or not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
                ds = ds[split or "test"]
        else:
            ds = datasets.load_dataset(name, split=split or "test")
    except KeyError as e:
        raise DataFileError(f"{label}: no split {e} in the dataset") from None
    except Exception as e:  # the library's own errors (missing dataset, offline hub, bad files)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFileError(f"{label}: cannot load the dataset: {msg}") from None
    if "text" not in ds.column_names:
        raise DataFileError(
            f'{label}: the {what} needs a string column "text" (columns: {list(ds.column_names)})'
        )
    docs = [t for t in ds["text"] if isinstance(t, str) and t.strip()]
    return docs


def text_windows(
    path: str | Path,
    length: int,
    *,
    max_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """:func:`eval_windows` over a user's file (:func:`read_documents`; documents joined by a
    blank line, as the embedded corpus joins its topics)."""
    docs = read_documents(path)
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    tokens = torch.tensor(tok.encode(_SEPARATOR.join(docs)), dtype=torch.int64)
    out = _cut(tokens, length, max_tokens)
    if out is None:
        raise DataFileError(
            f"{path}: {min(tokens.numel(), max_tokens or tokens.numel())} tokens, fewer than one "
            f"window of {length}; give more text or a smaller --window"
        )
    return out


def random_windows(
    n: int,
    length: int,
    *,
    seed: int,
    split: Split = "train",
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random offsets of ``split``, as ``[n, length]`` int64.

    Offsets come from ``numpy.random.default_rng(seed)`` (PCG64, stable across numpy versions),
    so the same seed gives the same windows everywhere the corpus text is the same.
    """
    tokens = corpus_tokens(split, tokenizer)
    return _windows_at(tokens, np.random.default_rng(seed), n, length)


def _windows_at(
    tokens: torch.Tensor, rng: np.random.Generator, n: int, length: int
) -> torch.Tensor:
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 and length >= 1, got n={n}, length={length}")
    if tokens.numel() < length:
        raise ValueError(f"corpus has {tokens.numel()} tokens, fewer than a window of {length}")
    starts = torch.from_numpy(rng.integers(0, tokens.numel() - length + 1, size=n))
    return tokens[starts[:, None] + torch.arange(length)[None, :]]


def calibration_samples(
    n: int, length: int, *, seed: int = 0, tokenizer: Tokenizer | None = None
) -> torch.Tensor:
    """Calibration data for lossy passes: ``n`` train-split windows of ``length`` tokens.

    Calibration never sees held-out text, so held-out perplexity stays an honest measurement.
    """
    return random_windows(n, length, seed=seed, split="train", tokenizer=tokenizer)


def token_batches(
    batch_size: int,
    length: int,
    *,
    seed: int,
    split: Split = "train",
    tokenizer: Tokenizer | None = None,
) -> Iterator[torch.Tensor]:
    """An endless, seed-deterministic stream of ``[batch_size, length]`` random-offset batches."""
    tokens = corpus_tokens(split, tokenizer)
    rng = np.random.default_rng(seed)
    while True:
        yield _windows_at(tokens, rng, batch_size, length)
