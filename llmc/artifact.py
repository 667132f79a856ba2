"""Compiled artifacts: the directory ``llmc compile`` writes, written atomically.

::

    OUT/
      manifest.json       format, model, target, pass pipeline, versions, file hashes, and
                          ``hf_config``: the model's Hugging Face config when it has one
                          (``llmc export OUT`` writes it as ``config.json``)
      graph.ir            the IR after all passes (text form)
      params.safetensors  weights in their storage format (``<param>::<field>`` keys), less
                          those a backend stores once in a compiled layout
                          (:data:`DERIVED_PARAMS_KEY`; rebuilt on load)
      tokenizer/          the model's tokenizer files, when it has a tokenizer (manifest
                          ``tokenizer``: kind ``byte-level`` or ``hf``); none is ever guessed
      report.json / report.md   what each pass did and cost, analysis, measured numbers
      ...                 backend files (model.so for TVM targets, fpga/ for FPGA targets)

Writing: :func:`artifact_writer` builds everything in a sibling temporary directory and swaps it
into place only when the whole compile succeeded (a failed or killed compile leaves OUT as it
was); :func:`output_lock` keeps a second compile off the same OUT.

Reading: :func:`read_manifest` checks the format, llmc version, that every listed file is a
regular file inside the artifact with its recorded sha256, and loaders read only listed files
(:func:`listed_file`, :func:`listed_dir`); :func:`load_params` checks every tensor's dtype and
shape against the graph; :func:`check_target_label` checks the target against its kind, and the
TVM runner checks the device code in ``model.so`` against the target. There is no signature: an
attacker who can rewrite the manifest can rewrite the hashes too, so the checks make an artifact
self-consistent (what runs is what the manifest says), not authentic.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import llmc
from llmc.errors import LlmcError, ModelLoadError, ParseError
from llmc.ir.graph import Graph
from llmc.ir.params import Param
from llmc.ir.parser import parse_graph
from llmc.ir.printer import print_graph

FORMAT = "llmc-artifact-v1"
MANIFEST = "manifest.json"


class ArtifactError(LlmcError):
    """An artifact directory is missing, corrupt, or built for something else."""


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


_LOCK_SUFFIX = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove ``.OUT.tmp-PID-*`` / ``.OUT.old-PID-*`` folders beside ``out`` whose process is gone
    (a compile that was killed); returns what was removed."""
    removed = []
    pat = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(2))) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def artifact_lock(out: str | Path) -> Iterator[None]:
    """Hold ``.OUT.lock`` beside ``out`` for one writer: a second compile to the same OUT fails
    at once with one line instead of racing the first. The lock file goes with the lock."""
    import fcntl

    out = Path(out)
    lock = out.with_name(f".{out.name}{_LOCK_SUFFIX}")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise ArtifactError(f"{out}: cannot write here ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ArtifactError(
                f"{out}: another llmc compile (pid {other or '?'}) is writing this artifact; "
                "wait for it or choose another -o"
            ) from None
        try:  # the holder before us may have removed the file after we opened it
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange; fall back
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def artifact_writer(out: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` atomically.

    An existing artifact is swapped with the new one in one step (``renameat2`` exchange, with a
    rename-aside fallback), so at every instant ``out`` is the old artifact or the new one. A
    failure or interrupt removes the temporary directory; directories left by killed compiles
    are removed the next time (:func:`clean_stale`). Callers that do work before writing should
    hold :func:`artifact_lock` around it; the writer takes it if they did not.
    """
    out = Path(out)
    check_out(out, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        if not _holds_lock(out):
            stack.enter_context(artifact_lock(out))
        clean_stale(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        except OSError as e:
            raise ArtifactError(f"{out}: cannot write beside it ({e.strerror})") from None
        try:
            yield tmp
            if out.exists():
                if not _exchange(tmp, out):
                    old = Path(
                        tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent)
                    )
                    old.rmdir()
                    out.rename(old)
                    tmp.rename(out)
                    tmp = old
                shutil.rmtree(tmp, ignore_errors=True)  # the old artifact, swapped out
            else:
                tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


_HELD: set[Path] = set()


def _holds_lock(out: Path) -> bool:
    return out.absolute() in _HELD


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """:func:`artifact_lock`, remembered so that :func:`artifact_writer` does not take it twice."""
    out = Path(out)
    check_out(out)
    with artifact_lock(out):
        _HELD.add(out.absolute())
        try:
            yield
        finally:
            _HELD.discard(out.absolute())


def check_out(out: Path, *, overwrite: bool = True) -> None:
    """Refuse an ``-o`` that cannot become an artifact, before any work is done."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ArtifactError(f"{out}: exists and is not a directory; choose another -o")
    if out.exists() and not is_artifact(out):
        try:
            nonempty = any(out.iterdir())
        except OSError as e:
            raise ArtifactError(f"{out}: cannot read it ({e.strerror})") from None
        if nonempty:
            raise ArtifactError(
                f"{out}: exists and is not an llmc artifact; refusing to overwrite it "
                "(choose another -o)"
            )
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: already exists")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(
            f"{out}: cannot create its folder {out.parent} ({e.strerror})"
        ) from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"{out}: its folder {out.parent} is not writable")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_params(
    graph: Graph, path: Path, derived: dict[str, dict[str, dict[str, str]]] | None = None
) -> None:
    """Write ``graph``'s params (``<param>::<field>`` keys) one tensor at a time. ``derived``
    names the params stored in another file of the artifact in a compiled layout (``param ->
    field -> {file, key, layout}``; see :data:`DERIVED_PARAMS_KEY`): they are left out here."""
    from llmc.safetensors_io import Entry, write_safetensors

    derived = derived or {}
    entries: list[Entry] = []
    meta: list[str] = []
    for p in graph.params.values():
        if p.is_meta:  # an architecture-only model: shapes only, recorded as such
            meta.append(p.name)
            continue
        if p.name in derived:
            continue
        for field, t in p.data.items():
            entries.append(
                Entry(f"{p.name}::{field}", tuple(t.shape), t.dtype, lambda t=t: t.cpu())
            )
    metadata = {META_PARAMS_KEY: json.dumps(sorted(meta))}
    if derived:
        metadata[DERIVED_PARAMS_KEY] = json.dumps(derived, sort_keys=True)
    write_safetensors(path, entries, metadata)


#: safetensors metadata key listing the params stored without data (architecture-only models)
META_PARAMS_KEY = "llmc.meta_params"
#: safetensors metadata key of the params stored once, in their compiled layout in another file
#: of the artifact (``param -> field -> {"file", "key", "layout"}``): the loader rebuilds the
#: field with :func:`llmc.backends.layouts.invert_layout`, which the compiler checked is exact
DERIVED_PARAMS_KEY = "llmc.derived_params"


def load_params(graph: Graph, path: Path, resolve: Callable[[str], Path] | None = None) -> None:
    """Fill ``graph``'s params from ``path`` (checking every tensor's shape and dtype); fields
    stored in another file of the artifact (:data:`DERIVED_PARAMS_KEY`) are read from
    ``resolve(file name)`` (the artifact's listed, hashed file) and rebuilt from their layout."""
    from llmc.frontends.checkpoint import SAFETENSORS_DTYPES, read_safetensors_header

    read_safetensors_header(path)  # validates offsets before anything is allocated
    st_name = {dt: name for name, (dt, _) in SAFETENSORS_DTYPES.items()}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as st:
        keys = set(st.keys())
        try:
            meta = set(json.loads((st.metadata() or {}).get(META_PARAMS_KEY, "[]")))
        except (ValueError, TypeError):
            raise ArtifactError(f"{path}: malformed {META_PARAMS_KEY!r} metadata") from None
        derived = _derived_fields(graph, path, st.metadata() or {}, resolve)
        for p in graph.params.values():
            if p.name in meta:  # no data was stored; the parsed graph's meta tensors stay
                continue
            data = {}
            for field in p.data:
                key = f"{p.name}::{field}"
                want = p.data[field]
                if key in derived:
                    data[field] = derived[key]
                    continue
                if key not in keys:
                    raise ArtifactError(f"{path}: missing tensor {key!r}")
                sl = st.get_slice(key)
                shape, dtype = list(sl.get_shape()), str(sl.get_dtype())
                if shape != list(want.shape):
                    raise ArtifactError(
                        f"{path}: tensor {key!r} has shape {shape}, the graph expects "
                        f"{list(want.shape)}"
                    )
                if st_name.get(want.dtype) != dtype:
                    raise ArtifactError(
                        f"{path}: tensor {key!r} is {dtype}, the graph expects "
                        f"{st_name.get(want.dtype, want.dtype)}"
                    )
                data[field] = st.get_tensor(key)
            graph.params[p.name] = Param(p.name, p.type, p.format, data)


def _derived_fields(
    graph: Graph, path: Path, metadata: dict[str, str], resolve: Callable[[str], Path] | None
) -> dict[str, torch.Tensor]:
    """``<param>::<field> -> tensor`` for the fields :data:`DERIVED_PARAMS_KEY` lists, read
    from their files and rebuilt from their layouts (the file's header is validated first)."""
    raw = metadata.get(DERIVED_PARAMS_KEY)
    if raw is None:
        return {}
    try:
        table = json.loads(raw)
        items = [
            (str(pn), str(fn), str(e["file"]), str(e["key"]), str(e["layout"]), e.get("index_key"))
            for pn, fields in table.items()
            for fn, e in fields.items()
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ArtifactError(f"{path}: malformed {DERIVED_PARAMS_KEY!r} metadata") from None
    if resolve is None:
        raise ArtifactError(
            f"{path}: its weights are stored in compiled layouts in other files of an artifact; "
            "load the artifact folder, not this file alone"
        )
    from llmc.backends.layouts import invert_layout, invert_nm
    from llmc.frontends.checkpoint import read_safetensors_header
    from llmc.safetensors_io import map_safetensors

    files: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for pname, field, fname, key, layout, index_key in items:
        p = graph.params.get(pname)
        if p is None or field not in p.data:
            raise ArtifactError(f"{path}: {DERIVED_PARAMS_KEY!r} names unknown {pname}::{field}")
        if fname not in files:
            fp = resolve(fname)
            try:
                read_safetensors_header(fp)
            except LlmcError as e:
                raise ArtifactError(str(e)) from None
            files[fname] = map_safetensors(fp)
        t = files[fname].get(key)
        if t is None:
            raise ArtifactError(f"{path}: {pname}::{field} is stored as {fname}:{key}, absent")
        try:
            if index_key is not None:  # N:M: values + positions
                idx = files[fname].get(str(index_key))
                if idx is None or field != "value":
                    raise ArtifactError(
                        f"{path}: {pname}::{field} names N:M index {fname}:{index_key}, absent"
                    )
                inv = ("value", invert_nm(layout, t, idx, p))
            else:
                inv = invert_layout(layout, t, p)
        except (RuntimeError, ValueError, IndexError, LlmcError) as e:
            raise ArtifactError(
                f"{path}: {pname}::{field} cannot be rebuilt from layout {layout!r} ({e})"
            ) from None
        want = p.data[field]
        if inv is None or inv[0] != field:
            raise ArtifactError(
                f"{path}: layout {layout!r} of {fname}:{key} does not hold {pname}::{field}"
            )
        if list(inv[1].shape) != list(want.shape) or inv[1].dtype != want.dtype:
            raise ArtifactError(
                f"{resolve(fname)}: tensor {key!r} ({t.dtype} {list(t.shape)}) does not rebuild "
                f"{pname}::{field}: the compiled code expects {want.dtype} {list(want.shape)} "
                f"from layout {layout!r}"
            )
        out[f"{pname}::{field}"] = inv[1].contiguous()
    return out


def versions() -> dict[str, str]:
    out = {
        "llmc": llmc.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        from importlib.metadata import version

        out["tvm"] = version("apache-tvm")
    except Exception:  # not installed: fine for ref/fpga artifacts
        pass
    return out


def write_manifest(tmp: Path, fields: dict[str, Any]) -> dict[str, Any]:
    files = {
        str(p.relative_to(tmp)): sha256_file(p)
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        **fields,
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_graph(
    graph: Graph, tmp: Path, derived: dict[str, dict[str, dict[str, str]]] | None = None
) -> None:
    """``graph.ir`` and ``params.safetensors`` (less the ``derived`` params, see
    :func:`save_params`)."""
    (tmp / "graph.ir").write_text(print_graph(graph))
    save_params(graph, tmp / "params.safetensors", derived)


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    graph: Graph

    @property
    def target(self) -> str:
        return str(self.manifest.get("target", "ref"))


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# manifest.json is a few KB; anything far larger is not one of ours
_MAX_MANIFEST_BYTES = 16 << 20
#: files every artifact holds, whatever its target (the loader reads both)
REQUIRED_FILES = ("graph.ir", "params.safetensors")


def _check_entry(mpath: Path, rel: Any, digest: Any) -> str:
    """``rel`` if it is a plain relative path with a sha256 digest, else one line why not."""
    if (
        not isinstance(rel, str)
        or not rel
        or rel.startswith("/")
        or "\\" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise ArtifactError(
            f"{mpath}: file entry {rel!r} is not a relative path inside the artifact"
        )
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ArtifactError(f"{mpath}: file entry {rel!r} has no sha256 digest")
    return rel


def _regular_file(path: Path, where: str) -> None:
    """Refuse anything but a regular file (a symlink, FIFO or directory) at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {where} but missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path}: {where} but not a regular file")


def read_manifest(path: str | Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, checked.

    Checks the format and llmc version, that ``files`` lists at least :data:`REQUIRED_FILES`, that
    every entry is a plain relative path to a regular file inside the artifact (no symlinks), and
    (``check_hashes``) that every listed file has its recorded sha256. Loaders then read only
    listed files (:func:`listed_file`, :func:`listed_dir`), so no byte they read is unhashed.
    """
    d = Path(path)
    mpath = d / MANIFEST
    if not d.exists():
        raise ModelLoadError(f"{d}: no such file or directory")
    if not mpath.is_file():
        raise ArtifactError(f"{d}: not an llmc artifact (no {MANIFEST})")
    _regular_file(mpath, "the artifact's manifest")
    if mpath.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mpath}: {mpath.stat().st_size} bytes; not an llmc manifest")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{mpath}: unknown artifact format {fmt!r} (want {FORMAT})")
    vers = manifest.get("versions")
    built = vers.get("llmc") if isinstance(vers, dict) else None
    if built != llmc.__version__:
        raise ArtifactError(
            f"{mpath}: built by llmc {built}, this is llmc {llmc.__version__}; recompile the model"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{mpath}: 'files' must map each file to its sha256 digest")
    for rel, digest in files.items():
        _check_entry(mpath, rel, digest)
    for rel in REQUIRED_FILES:
        if rel not in files:
            raise ArtifactError(
                f"{mpath}: 'files' does not list {rel!r}; the artifact is incomplete"
            )
    for key in ("target", "target_kind"):
        if not isinstance(manifest.get(key, ""), str):
            raise ArtifactError(f"{mpath}: {key!r} must be a string")
    root = d.resolve()
    for rel, digest in files.items():
        f = d / rel
        _regular_file(f, "listed in the manifest")
        if root not in f.resolve().parents:
            raise ArtifactError(f"{mpath}: file entry {rel!r} points outside the artifact")
        if check_hashes and sha256_file(f) != digest:
            raise ArtifactError(f"{f}: content does not match the manifest hash (corrupt?)")
    return manifest


def listed_file(d: str | Path, manifest: dict[str, Any], rel: Any, what: str = "file") -> Path:
    """``d/rel`` when the manifest lists (and so hashed) it; one line naming it otherwise."""
    d = Path(d)
    files = manifest.get("files", {})
    if not isinstance(rel, str) or rel not in files:
        raise ArtifactError(
            f"{d / MANIFEST}: the {what} {rel!r} is not listed (and hashed) in the manifest"
        )
    return d / rel


def listed_dir(d: str | Path, manifest: dict[str, Any], rel: Any, what: str = "folder") -> Path:
    """``d/rel`` when it is a folder inside the artifact all of whose files the manifest lists."""
    d = Path(d)
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{d / MANIFEST}: the {what} entry {rel!r} is not a folder name")
    _check_entry(d / MANIFEST, rel, "0" * 64)
    sub = d / rel
    if not sub.is_dir() or sub.is_symlink():
        raise ArtifactError(f"{sub}: the manifest names this {what} but it is not a folder")
    files = manifest.get("files", {})
    for f in sorted(sub.rglob("*")):
        r = f.relative_to(d).as_posix()
        if f.is_symlink() or (not f.is_dir() and r not in files):
            raise ArtifactError(f"{f}: in the artifact's {what} but not listed in the manifest")
    return sub


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_artifact(path: str | Path, *, expect_target: str | None = None) -> Artifact:
    d = Path(path)
    manifest = read_manifest(d)
    if expect_target is not None and manifest.get("target") != expect_target:
        raise ArtifactError(
            f"{d}: built for target {manifest.get('target')!r}, not {expect_target!r}"
        )
    check_target_label(d, manifest)
    gpath = listed_file(d, manifest, "graph.ir")
    try:
        text = gpath.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{gpath}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        graph = parse_graph(text)
    except ParseError as e:
        raise ArtifactError(f"{gpath}: {e}") from None
    load_params(
        graph,
        listed_file(d, manifest, "params.safetensors"),
        lambda f: listed_file(d, manifest, f, "weights file"),
    )
    return Artifact(d, manifest, graph)


def check_target_label(d: Path, manifest: dict[str, Any]) -> None:
    """The manifest's ``target`` must be a known target of the manifest's ``target_kind``: a CPU
    artifact relabelled ``h100`` is refused here (and its code is checked by its runner)."""
    from llmc.targets import get_target

    name = manifest.get("target", "ref")
    try:
        tgt = get_target(str(name))
    except LlmcError:
        raise ArtifactError(f"{d / MANIFEST}: unknown target {name!r}") from None
    kind = manifest.get("target_kind", "ref" if name == "ref" else None)
    if tgt.kind != kind:
        raise ArtifactError(
            f"{d / MANIFEST}: target {name!r} is a {tgt.kind} target but the artifact says "
            f"kind {kind!r}; the manifest was edited, recompile the model"
        )
