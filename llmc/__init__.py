"""llmc: an ahead-of-time compiler for transformer language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmc.runtime.module import CompiledModule

__version__ = "0.1.0"


def load(path: str, *, device_id: int = 0) -> CompiledModule:
    """A compiled artifact as a callable module: ``llmc.load(OUT)(*tensors)`` (see
    :mod:`llmc.runtime.module`)."""
    from llmc.runtime.module import load as _load

    return _load(path, device_id=device_id)
