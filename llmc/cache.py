"""llmc's on-disk cache folder (traced zoo graphs, the measured host spec)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """``$LLMC_CACHE_DIR``, else ``$XDG_CACHE_HOME/llmc`` (``~/.cache/llmc``); ``None`` when
    ``LLMC_CACHE_DIR`` is ``off`` (or ``0``, ``none``, empty): nothing is cached then."""
    root = os.environ.get("LLMC_CACHE_DIR")
    if root is not None and root.strip().lower() in ("", "0", "off", "none"):
        return None
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc"
