"""Console helpers shared by every command-line module (``llmc.cli``, ``llmc.fpga.cli``,
``llmc.codesign.cli``) and by the library code that reports progress (loading, passes,
calibration, TVM builds): status lines, stage spinners and progress bars on stderr, exactly one
JSON object on stdout, the pass options of the common flags. A leaf module: it imports nothing
from llmc, so passes and backends may use it without any import running back up to ``llmc.cli``.

**When progress shows.** On stderr, and only when :func:`progress_enabled`: stderr is a terminal
(or ``LLMC_PROGRESS=1`` forces it on; ``LLMC_PROGRESS=0`` or ``LLMC_NO_PROGRESS`` forces it off)
and the command does not print ``--json`` (the CLI calls :func:`set_quiet`). Disabled, every
helper here is a no-op that costs a function call.

Example::

    with stage("loading tiny"):            # "⠋ loading tiny  1.2 s", then "loading tiny 1.43 s"
        for seg in track(segments, "wanda calibrate"):   # a tqdm bar (inside the stage)
            ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence progress for this process (the CLI under ``--json``); ``LLMC_PROGRESS=1`` does not
    override it: a JSON consumer reads stdout, and stderr stays clean for its errors."""
    global _quiet
    _quiet = quiet


def progress_enabled() -> bool:
    """Whether progress (bars, spinners, status lines) is shown: see the module docstring."""
    if _quiet:
        return False
    forced = os.environ.get("LLMC_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if os.environ.get("LLMC_NO_PROGRESS"):
        return False
    return _isatty()


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


# ------------------------------------------------------------------------------------------------
# stages: one spinner line for the innermost open stage, a done line when each closes

_SPIN = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_lock = threading.RLock()
_stack: list[tuple[str, float]] = []
_bars = 0  # open progress bars: the spinner keeps off their line
_ticker: threading.Thread | None = None
_drawn = False  # the spinner line is on screen


def _clear() -> None:
    global _drawn
    if _drawn:
        sys.stderr.write("\r\x1b[K")
        _drawn = False


def _draw(tick: int = 0) -> None:
    global _drawn
    if _bars or not _stack:
        return
    label = " > ".join(d for d, _ in _stack)
    elapsed = f"  {time.perf_counter() - _stack[-1][1]:.1f} s"
    room = shutil.get_terminal_size((100, 24)).columns - len(elapsed) - 3
    if len(label) > room:  # one screen line, or \r cannot redraw it: keep the innermost end
        label = "..." + label[-max(room - 3, 10) :]
    sys.stderr.write(f"\r\x1b[K{_SPIN[tick % len(_SPIN)]} {label}{elapsed}")
    sys.stderr.flush()
    _drawn = True


def _tick() -> None:
    n = 0
    while True:
        time.sleep(0.1)
        with _lock:
            if not _stack:
                return
            n += 1
            try:
                _draw(n)
            except (OSError, ValueError):  # stderr went away (closed pipe): stop drawing
                return


@contextlib.contextmanager
def stage(desc: str) -> Iterator[None]:
    """A step that may take seconds: a spinner with the elapsed time while it runs, then one
    line ``desc  N.NN s`` (``desc  failed after N.NN s`` if it raised), indented by its depth.
    Stages nest; the spinner shows the whole path (``compile tiny > tvm build  3.1 s``)."""
    global _ticker
    if not progress_enabled() or _bars:  # under a bar (a sweep's points): the bar says it all
        yield
        return
    t0 = time.perf_counter()
    with _lock:
        _stack.append((desc, t0))
        _draw()
        if _ticker is None or not _ticker.is_alive():
            _ticker = threading.Thread(target=_tick, name="llmc-progress", daemon=True)
            _ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        with _lock:
            if _stack and _stack[-1][0] == desc:
                _stack.pop()
            _clear()
            took = time.perf_counter() - t0
            indent = "  " * len(_stack)
            sys.stderr.write(f"{indent}{desc}  {'' if ok else 'failed after '}{took:.2f} s\n")
            _draw()
            sys.stderr.flush()


def status(msg: str) -> None:
    """A one-line status message on stderr (never stdout: stdout is for results and JSON)."""
    if progress_enabled():
        with _lock:
            _clear()
            print(msg, file=sys.stderr)
            _draw()


# ------------------------------------------------------------------------------------------------
# progress bars


class _NullBar:
    """What :func:`progress` returns when progress is off: accepts the calls, shows nothing."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "") -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Bar(_NullBar):
    """A tqdm bar on stderr; while it is open the stage spinner stays off its line."""

    def __init__(self, total: float | None, desc: str, unit: str, scale: bool) -> None:
        global _bars
        from tqdm import tqdm

        with _lock:
            _clear()
            _bars += 1
        label = " > ".join([*(d for d, _ in _stack), desc]) if _stack else desc
        tty = _isatty()
        self._bar = tqdm(
            total=total,
            desc=label,
            file=sys.stderr,
            leave=False,
            unit=unit,
            unit_scale=scale,
            dynamic_ncols=tty,
            ncols=None if tty else 100,  # forced on (LLMC_PROGRESS=1) into a pipe or a file
        )
        self._open = True

    def update(self, n: float = 1) -> None:
        self._bar.update(n)

    def set_postfix_str(self, s: str = "") -> None:
        self._bar.set_postfix_str(s)

    def close(self) -> None:
        global _bars
        if not self._open:
            return
        self._open = False
        self._bar.close()
        with _lock:
            _bars -= 1
            _draw()


def progress(
    total: float | None, desc: str, *, unit: str = "it", unit_scale: bool = False
) -> _NullBar:
    """A progress bar of ``total`` steps (``update(n)``, ``close()``; a context manager), or a
    no-op when progress is off."""
    if not progress_enabled():
        return _NullBar()
    return _Bar(total, desc, unit, unit_scale)


def track(items: Iterable[Any], desc: str, total: int | None = None) -> Iterator[Any]:
    """``items``, with a progress bar advancing as each is consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc) as bar:
        for x in items:
            yield x
            bar.update(1)


# ------------------------------------------------------------------------------------------------
# JSON and common options


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


__all__ = [
    "emit_json",
    "finite_json",
    "pass_options",
    "progress",
    "progress_enabled",
    "set_quiet",
    "stage",
    "status",
    "track",
]
