"""Models shipped inside llmc.

``tiny`` (:data:`TINY_DIR`) is a ~3M-parameter byte-level Llama trained by ``tools/train_tiny.py``
on the train split of :mod:`llmc.data`; it is the default model for demos, tests and pass-quality
measurements. See ``docs/tiny-model.md``.
"""

from __future__ import annotations

from pathlib import Path

#: The shipped ``tiny`` model directory (HF layout: config.json, model.safetensors, tokenizer.json).
TINY_DIR: Path = Path(__file__).resolve().parent / "tiny"

__all__ = ["TINY_DIR"]
