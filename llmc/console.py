"""Console helpers shared by every command-line module (``llmc.cli``, ``llmc.fpga.cli``,
``llmc.codesign.cli``): status lines and progress bars on stderr, exactly one JSON object on stdout,
the pass options of the common flags. Nothing here imports the commands, so no import runs back
up to ``llmc.cli``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("LLMC_NO_PROGRESS")


def progress(total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, disable=not _progress_enabled(), file=sys.stderr, leave=False
    )


def status(msg: str) -> None:
    """A one-line status message on stderr (never stdout: stdout is for results and JSON)."""
    if _progress_enabled():
        print(msg, file=sys.stderr)


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON object on stdout. Non-finite floats become ``null``: JSON has no ``Infinity``
    (a rate over zero seconds, say), and strict parsers reject it."""
    sys.stdout.write(
        json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False) + "\n"
    )


def finite_json(o: Any) -> Any:
    """``o`` with every non-finite float (inf, nan) replaced by None, recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    return str(o)


def pass_options(a: argparse.Namespace) -> dict[str, Any]:
    """The pass options given on the command line (calibration file, samples, length)."""
    opts: dict[str, Any] = {}
    if getattr(a, "calib", None):
        opts["calib_file"] = a.calib
    if getattr(a, "calib_samples", None):
        opts["calib_samples"] = a.calib_samples
    if getattr(a, "calib_seqlen", None):
        opts["calib_seqlen"] = a.calib_seqlen
    return opts


__all__ = ["emit_json", "finite_json", "pass_options", "progress", "status"]
