"""Reading model directories safely. Model directories are untrusted input (design.md, "Inputs are
untrusted"): with :mod:`llmc.frontends.untrusted`, this module opens their files.

- Every file is opened through :func:`open_model_file`: its *resolved* path must lie inside the
  resolved model directory (a symlink to ``/etc/passwd`` named ``config.json`` is refused; the
  Hugging Face cache layout, ``snapshots/REV/x -> ../../blobs/SHA``, is allowed), and it must be
  a regular file (a FIFO, device, socket or directory is refused before it is opened, and again
  with ``fstat`` after an ``O_NONBLOCK`` open, so a swapped-in FIFO cannot hang the load).
- JSON files (``config.json``, the shard index) are size-limited, must be UTF-8, may not repeat a
  key, and may not contain ``NaN``/``Infinity``; ``config.json`` must be an object and
  ``auto_map`` (remote code) is refused.
- Weights come from ``*.safetensors`` (one file, or shards listed by
  ``model.safetensors.index.json``). Each header is parsed and checked *before* any tensor is
  allocated: header length within the file, known dtypes, bounded shapes, offsets inside the
  data section, sizes that match ``numel * itemsize``, tensors that tile the data section (no
  overlaps, gaps or trailing bytes), no repeated names,
  shard names that stay inside the directory, an index that agrees with the shards. With
  ``expected`` (name -> shape), missing and mis-shaped tensors are reported before loading.
- Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused unless ``allow_pickle=True``,
  and then loaded with ``torch.load(weights_only=True)``.

Every failure is a :class:`~llmc.errors.ModelLoadError` whose message names the file.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from llmc.errors import ModelLoadError
from llmc.frontends.untrusted import (
    one_line,
    open_model_file,
    parse_json,
    quote,
    read_json,
    shorten,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # real config.json files are a few KB
MAX_INDEX_BYTES = 64 * 1024 * 1024  # a 100k-tensor index is ~10 MB
MAX_RANK = 8
MAX_DIM = 1 << 40

SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "pytorch_model.pt")
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int
    file: Path


class StateDict(dict):
    """``name -> tensor``, plus ``files``: ``name -> file it came from`` (for error messages)."""

    files: dict[str, str]


# ----------------------------------------------------------------------------------------------
# config.json


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict (validated, remote code refused)."""
    d = Path(model_dir)
    if not d.exists():
        raise ModelLoadError(f"{d}: no such file or directory")
    if not d.is_dir():
        raise ModelLoadError(f"{d}: not a model directory (expected a folder with config.json)")
    cfg_path = d / "config.json"
    if not (cfg_path.exists() or cfg_path.is_symlink()):
        raise ModelLoadError(f"{cfg_path}: missing (a model directory needs config.json)")
    cfg = read_json(cfg_path, d, MAX_CONFIG_BYTES)
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    if "auto_map" in cfg:
        raise ModelLoadError(
            f"{cfg_path}: 'auto_map' asks to run code from the model directory; llmc never "
            "executes remote code (remove auto_map if the architecture is a supported one)"
        )
    return cfg


# ----------------------------------------------------------------------------------------------
# safetensors


def read_safetensors_header(
    path: str | Path, root: str | Path | None = None
) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors file's header without reading tensor data. With
    ``root``, the file must resolve to a path inside that directory."""
    p = Path(path)
    try:
        with open_model_file(p, root) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{p}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelLoadError(
                    f"{p}: header length {n} exceeds the file ({size} bytes): truncated or corrupt"
                )
            raw = f.read(n)
            if len(raw) != n:
                raise ModelLoadError(f"{p}: file shrank while its header was read")
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror or e})") from None
    header = parse_json(raw, f"{p}: safetensors header")
    if not isinstance(header, dict):
        raise ModelLoadError(f"{p}: safetensors header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise ModelLoadError(f"{p}: safetensors __metadata__ must map names to strings")
    data_start = 8 + n
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ModelLoadError(f"{p}: tensor {quote(name)}: bad header entry")
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dt, str) or dt not in SAFETENSORS_DTYPES:
            raise ModelLoadError(f"{p}: tensor {quote(name)}: unsupported dtype {shorten(dt)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM for s in shape
            )
        ):
            raise ModelLoadError(f"{p}: tensor {quote(name)}: bad shape {shorten(shape)}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise ModelLoadError(f"{p}: tensor {quote(name)}: bad data_offsets {shorten(offs)}")
        b, e = offs
        numel = 1
        for s in shape:
            numel *= s
        want = numel * SAFETENSORS_DTYPES[dt][1]
        if not (0 <= b <= e <= data_len):
            raise ModelLoadError(
                f"{p}: tensor {quote(name)}: data_offsets [{b}, {e}] lie outside the data section "
                f"({data_len} bytes): truncated or corrupt file"
            )
        if e - b != want:
            raise ModelLoadError(
                f"{p}: tensor {quote(name)}: offsets give {e - b} bytes but {dt}{shape} needs {want}"
            )
        spans.append((b, e, name))
        out[name] = TensorInfo(name, dt, tuple(shape), data_start + b, data_start + e, p)
    # The format (and the safetensors library) requires the tensors to tile the data section:
    # sorted by offset, each starts where the previous ended, the last ends at the file's end.
    # A header length off by a few bytes would otherwise shift every tensor silently.
    spans.sort()
    at, prev = 0, None
    for b, e, name in spans:
        if b < at:
            raise ModelLoadError(
                f"{p}: tensors {quote(prev)} and {quote(name)} overlap in the data section"
            )
        if b > at:
            raise ModelLoadError(
                f"{p}: {b - at} unclaimed bytes before tensor {quote(name)} in the data section: "
                "corrupt file or wrong header length"
            )
        at, prev = e, name
    if at != data_len:
        raise ModelLoadError(
            f"{p}: {data_len - at} bytes after the last tensor: truncated, padded or corrupt file"
        )
    return out


def _read_index(d: Path, index: Path) -> tuple[list[Path], dict[str, str]]:
    obj = read_json(index, d, MAX_INDEX_BYTES)
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict):
        raise ModelLoadError(f"{index}: not a valid shard index (needs a 'weight_map' object)")
    if not wm:
        raise ModelLoadError(f"{index}: 'weight_map' lists no tensors")
    for t, n in wm.items():
        if not isinstance(n, str):
            raise ModelLoadError(
                f"{index}: weight_map[{quote(t)}] must be a shard file name, got {shorten(n)}"
            )
        if (
            Path(n).name != n
            or len(n.encode()) > 255
            or "\0" in n
            or not n.endswith(".safetensors")
        ):
            raise ModelLoadError(
                f"{index}: shard name {shorten(n)} must be a file in the directory, named *.safetensors"
            )
    files = []
    for n in sorted(set(wm.values())):
        f = d / n
        if not (f.exists() or f.is_symlink()):
            raise ModelLoadError(f"{f}: listed in {index.name} but missing")
        files.append(f)
    return files, wm


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory (shards resolved through the index)."""
    d = Path(model_dir)
    index = d / INDEX_NAME
    if index.exists() or index.is_symlink():
        return _read_index(d, index)[0]
    return sorted(f for f in d.glob("*.safetensors"))


def pickle_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    return [d / n for n in PICKLE_NAMES if (d / n).exists() or (d / n).is_symlink()]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pickle_reason(e: BaseException) -> str:
    """The useful part of torch.load's error, without its advice to load with weights_only=False
    (which would run the pickle's code: never pass that on to users)."""
    s = _ANSI.sub("", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\n\n|$)", s, re.S)
    reason = one_line(m.group(1) if m else (s.splitlines()[0] if s.strip() else ""))
    if not reason or "weights_only" in reason or "trust" in reason:
        reason = type(e).__name__
    return reason.rstrip(".")


class Checkpoint:
    """The weights of a model directory: names, shapes and files known (from the safetensors
    headers, validated) before any tensor is read; :meth:`load` reads the tensors asked for."""

    def __init__(self, model_dir: str | Path, *, allow_pickle: bool = False) -> None:
        d = Path(model_dir)
        self.dir = d
        self.infos: dict[str, TensorInfo] = {}
        self._pickled: StateDict | None = None
        index = d / INDEX_NAME
        wm: dict[str, str] | None = None
        if index.exists() or index.is_symlink():
            files, wm = _read_index(d, index)
        else:
            files = sorted(d.glob("*.safetensors"))
        if not files:
            self._pickled = _load_pickles(d, allow_pickle)
            return
        for f in files:
            for name, info in read_safetensors_header(f, d).items():
                if name in self.infos:
                    raise ModelLoadError(
                        f"{f}: tensor {quote(name)} also appears in {self.infos[name].file.name}"
                    )
                self.infos[name] = info
        if wm is not None:
            for t, n in wm.items():
                got = self.infos.get(t)
                if got is None or got.file.name != n:
                    where = f"is in {got.file.name}" if got else "is in no shard"
                    raise ModelLoadError(
                        f"{index}: weight_map puts tensor {quote(t)} in {n}, but it {where}"
                    )

    @property
    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``name -> (shape, file name)`` of every tensor in the checkpoint."""
        if self._pickled is not None:
            return {k: (tuple(v.shape), self._pickled.files[k]) for k, v in self._pickled.items()}
        return {k: (v.shape, v.file.name) for k, v in self.infos.items()}

    def dtype(self, name: str) -> torch.dtype:
        if self._pickled is not None:
            return self._pickled[name].dtype
        return SAFETENSORS_DTYPES[self.infos[name].dtype][0]

    def load(self, names: Iterable[str] | None = None, *, mapped: bool = True) -> StateDict:
        """The tensors ``names`` (all by default), from the files checked at construction.

        ``mapped`` (the default): each tensor is a view of a private map of its own bytes
        (:func:`llmc.safetensors_io.map_region`), opened through the same checks; nothing is
        read until used, the pages are the page cache's (reclaimable, never anonymous memory
        unless written), and they leave the process when the tensor is dropped. Otherwise each
        tensor is read into anonymous memory. (A file truncated after its header was checked
        fails a read with a :class:`ModelLoadError`, but faults a mapped process on access:
        model files are not expected to change while a compile reads them.)"""
        want = list(self.shapes) if names is None else list(names)
        sd = StateDict()
        sd.files = {}
        if self._pickled is not None:
            for n in want:
                sd[n] = self._pickled[n]
                sd.files[n] = self._pickled.files[n]
            return sd
        from llmc.console import progress

        by_file: dict[Path, list[TensorInfo]] = {}
        for n in want:
            by_file.setdefault(self.infos[n].file, []).append(self.infos[n])
        total = sum(i.end - i.begin for infos in by_file.values() for i in infos)
        label = "mapping weights" if mapped else "reading weights"
        with progress(total, label, unit="B", unit_scale=True) as bar:
            for f, infos in by_file.items():
                with open_model_file(f, self.dir) as fh:
                    if mapped and os.fstat(fh.fileno()).st_size < max(i.end for i in infos):
                        raise ModelLoadError(f"{f}: file shrank after its header was checked")
                    for info in sorted(infos, key=lambda i: i.begin):
                        sd[info.name] = _map_tensor(fh, info) if mapped else _read_tensor(fh, info)
                        sd.files[info.name] = f.name
                        bar.update(info.end - info.begin)
        return sd


def _map_tensor(fh: IO[bytes], info: TensorInfo) -> torch.Tensor:
    from llmc.safetensors_io import map_region

    dtype = SAFETENSORS_DTYPES[info.dtype][0]
    return map_region(fh.fileno(), info.begin, info.shape, dtype, info.end - info.begin)


def _read_tensor(fh: IO[bytes], info: TensorInfo) -> torch.Tensor:
    dtype = SAFETENSORS_DTYPES[info.dtype][0]
    nbytes = info.end - info.begin
    if nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    buf = bytearray(nbytes)
    fh.seek(info.begin)
    if fh.readinto(buf) != nbytes:
        raise ModelLoadError(
            f"{info.file}: tensor {quote(info.name)}: file shrank while being read"
        )
    return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)


def _load_pickles(d: Path, allow_pickle: bool) -> StateDict:
    pick = pickle_files(d)
    if not pick:
        if (d / "pytorch_model.bin.index.json").exists():
            raise ModelLoadError(
                f"{d / 'pytorch_model.bin.index.json'}: sharded pickle checkpoints are not "
                "supported; convert the model to safetensors"
            )
        raise ModelLoadError(f"{d}: no *.safetensors weights found")
    if not allow_pickle:
        raise ModelLoadError(
            f"{pick[0]}: pickle checkpoints can run arbitrary code when loaded; convert it to "
            "safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    sd = StateDict()
    sd.files = {}
    for f in pick:
        with open_model_file(f, d) as fh:
            try:
                obj = torch.load(fh, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for bad pickles
                raise ModelLoadError(
                    f"{f}: cannot load pickle checkpoint safely ({_pickle_reason(e)}); "
                    "convert it to safetensors"
                ) from None
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise ModelLoadError(f"{f}: expected a flat dict of tensors")
        for k, v in obj.items():
            if k in sd:
                raise ModelLoadError(f"{f}: tensor {quote(k)} also appears in {sd.files[k]}")
            sd[k] = v
            sd.files[k] = f.name
    return sd


def load_state_dict(
    model_dir: str | Path,
    *,
    allow_pickle: bool = False,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> StateDict:
    """All weights of a model directory, validated (see the module docstring)."""
    d = Path(model_dir)
    ck = Checkpoint(d, allow_pickle=allow_pickle)
    shapes = ck.shapes
    _check_expected({k: v[0] for k, v in shapes.items()}, {k: v[1] for k, v in shapes.items()},
                    expected, d)  # fmt: skip
    return ck.load()


def _check_expected(
    shapes: Mapping[str, tuple[int, ...]],
    files: Mapping[str, str],
    expected: Mapping[str, tuple[int, ...]] | None,
    d: Path,
) -> None:
    if expected is None:
        return
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ModelLoadError(
            f"{d}: checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {quote(missing[0])}"
        )
    for name, want in expected.items():
        got = tuple(shapes[name])
        if got != tuple(want):
            raise ModelLoadError(
                f"{d / files.get(name, '?')}: tensor {quote(name)} has shape {list(got)} but the "
                f"config implies {list(want)}"
            )
