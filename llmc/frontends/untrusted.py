"""Opening files of untrusted directories (model directories; design.md, "Inputs are untrusted").

- :func:`open_model_file`: the *resolved* path must lie inside the resolved directory (the Hugging
  Face cache layout ``snapshots/REV/x -> ../../blobs/SHA`` is allowed), and the file must be a
  regular file: checked with ``stat`` before opening (a FIFO or device is never opened) and with
  ``fstat`` after an ``O_NONBLOCK`` open (a FIFO swapped in between cannot hang the reader).
- :func:`parse_json` / :func:`read_json`: strict JSON (size-limited, UTF-8, no repeated keys, no
  ``NaN``/``Infinity``, bounded nesting).
- :func:`quote`: names read from such files, shortened for one-line messages.

Every failure is a :class:`~llmc.errors.ModelLoadError` naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from llmc.errors import ModelLoadError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _roots(root: Path) -> list[Path]:
    """Where files of the (resolved) directory ``root`` may resolve to: the directory itself, and
    for a Hugging Face cache snapshot (``models--org--name/snapshots/REV``) the repo's blobs."""
    roots = [root]
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith(
        ("models--", "datasets--")
    ):
        roots.append(root.parent.parent / "blobs")
    return roots


def confined(path: Path, root: Path) -> Path:
    """The resolved ``path``, refused unless it lies inside the resolved directory ``root``."""
    try:
        real = Path(os.path.realpath(path, strict=True))
        base = Path(os.path.realpath(root, strict=True))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing (a dangling symbolic link?)") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot resolve ({e.strerror or e})") from None
    if not any(real.is_relative_to(r) for r in _roots(base)):
        raise ModelLoadError(
            f"{path}: resolves to {real}, outside the model directory {base}; llmc reads only "
            "files inside the model directory (copy the file in instead of linking it)"
        )
    return real


def open_model_file(path: str | Path, root: str | Path | None = None) -> IO[bytes]:
    """``path`` opened for binary reading, after checking that it is a regular file and (with
    ``root``) that its resolved path lies inside ``root``. Never blocks on a FIFO."""
    p = Path(path)
    real = confined(p, Path(root)) if root is not None else p
    try:
        st = os.stat(real)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{p}: is {_kind(st.st_mode)}; expected a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
        os.close(fd)
        raise ModelLoadError(f"{p}: is {_kind(st.st_mode)}; expected a regular file")
    return os.fdopen(fd, "rb")


def check_model_files(model_dir: str | Path, names: Iterable[str]) -> None:
    """Refuse any of ``names`` that exists in ``model_dir`` (or is a dangling link) but is not a
    regular file inside it: for files other code opens by name (tokenizer files)."""
    d = Path(model_dir)
    for n in names:
        p = d / n
        if p.is_symlink() or p.exists():
            open_model_file(p, d).close()


def _no_duplicates(where: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ModelLoadError(f"{where}: key {quote(k)} appears twice")
            out[k] = v
        return out

    return hook


def _bad_constant(where: str) -> Any:
    def hook(name: str) -> Any:
        raise ModelLoadError(f"{where}: {name} is not valid JSON")

    return hook


def parse_json(raw: bytes, where: str) -> Any:
    """Strict JSON: UTF-8, no repeated keys, no NaN/Infinity, bounded nesting."""
    try:
        text = raw.decode("utf-8")
        return json.loads(
            text, object_pairs_hook=_no_duplicates(where), parse_constant=_bad_constant(where)
        )
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ModelLoadError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() of a number with > 4300 digits
        raise ModelLoadError(f"{where}: not valid JSON ({one_line(str(e))})") from None


def read_json(path: Path, root: Path, limit: int) -> Any:
    with open_model_file(path, root) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ModelLoadError(f"{path}: {size} bytes is too large (at most {limit})")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ModelLoadError(f"{path}: too large (at most {limit} bytes)")
    return parse_json(raw, str(path))


def one_line(s: str) -> str:
    return " ".join(s.split())


def shorten(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def quote(name: Any) -> str:
    """``repr`` of a name read from a file, shortened: an error is one readable line even when
    the file holds a megabyte-long tensor name."""
    s = repr(name)
    return s if len(s) <= 100 else s[:97] + "..."
