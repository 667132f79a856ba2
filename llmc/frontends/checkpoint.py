"""Reading model directories safely. Model directories are untrusted input (design.md, last
section): this module is the only code that opens their files.

- ``config.json`` must be a JSON object; ``auto_map`` (remote code) is refused.
- Weights come from ``*.safetensors`` (one file, or shards listed by
  ``model.safetensors.index.json``). Each header is parsed and checked *before* any tensor is
  allocated: header length within the file, known dtypes, non-negative shapes, offsets inside the
  data section, sizes that match ``numel * itemsize``, no overlapping tensors, shard names that stay
  inside the directory. With ``expected`` (name -> shape), missing and mis-shaped tensors
  are reported before loading (unexpected extra tensors are ignored).
- Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused unless ``allow_pickle=True``,
  and then loaded with ``torch.load(weights_only=True)``.

Every failure is a :class:`~llmc.errors.ModelLoadError` whose message names the file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmc.errors import ModelLoadError

MAX_HEADER_BYTES = 100 * 1024 * 1024

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


def _rel(path: Path) -> str:
    return str(path)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict (validated, remote code refused)."""
    d = Path(model_dir)
    if not d.exists():
        raise ModelLoadError(f"{d}: no such file or directory")
    if not d.is_dir():
        raise ModelLoadError(f"{d}: not a model directory (expected a folder with config.json)")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{cfg_path}: missing (a model directory needs config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    if "auto_map" in cfg:
        raise ModelLoadError(
            f"{cfg_path}: 'auto_map' asks to run code from the model directory; llmc never "
            "executes remote code (remove auto_map if the architecture is a supported one)"
        )
    return cfg


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors file's header without reading tensor data."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{p}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelLoadError(
                    f"{p}: header length {n} exceeds the file ({size} bytes): truncated or corrupt"
                )
            raw = f.read(n)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{p}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{p}: safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ModelLoadError(f"{p}: tensor {name!r}: bad header entry")
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in SAFETENSORS_DTYPES:
            raise ModelLoadError(f"{p}: tensor {name!r}: unsupported dtype {dt!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise ModelLoadError(f"{p}: tensor {name!r}: bad shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise ModelLoadError(f"{p}: tensor {name!r}: bad data_offsets {offs!r}")
        b, e = offs
        numel = 1
        for s in shape:
            numel *= s
        want = numel * SAFETENSORS_DTYPES[dt][1]
        if not (0 <= b <= e <= data_len):
            raise ModelLoadError(
                f"{p}: tensor {name!r}: data_offsets [{b}, {e}] lie outside the data section "
                f"({data_len} bytes): truncated or corrupt file"
            )
        if e - b != want:
            raise ModelLoadError(
                f"{p}: tensor {name!r}: offsets give {e - b} bytes but {dt}{shape} needs {want}"
            )
        spans.append((b, e, name))
        out[name] = TensorInfo(name, dt, tuple(shape), data_start + b, data_start + e, p)
    spans.sort()
    for (_b1, e1, n1), (b2, _e2, n2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise ModelLoadError(f"{p}: tensors {n1!r} and {n2!r} overlap in the data section")
    return out


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory (shards resolved through the index)."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{index}: not a valid shard index ({e})") from None
        names = sorted(set(wm.values()))
        files = []
        for n in names:
            if not isinstance(n, str) or Path(n).name != n or not n.endswith(".safetensors"):
                raise ModelLoadError(f"{index}: shard name {n!r} must be a file in the directory")
            f = d / n
            if not f.is_file():
                raise ModelLoadError(f"{f}: listed in {index.name} but missing")
            files.append(f)
        return files
    return sorted(d.glob("*.safetensors"))


def pickle_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    return [d / n for n in PICKLE_NAMES if (d / n).is_file()]


def load_state_dict(
    model_dir: str | Path,
    *,
    allow_pickle: bool = False,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> StateDict:
    """All weights of a model directory, validated (see the module docstring)."""
    d = Path(model_dir)
    files = weight_files(d)
    sd = StateDict()
    sd.files = {}
    if not files:
        pick = pickle_files(d)
        if not pick:
            raise ModelLoadError(f"{d}: no *.safetensors weights found")
        if not allow_pickle:
            raise ModelLoadError(
                f"{pick[0]}: pickle checkpoints can run arbitrary code when loaded; convert it to "
                "safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
            )
        for f in pick:
            try:
                obj = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for bad pickles
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ModelLoadError(f"{f}: cannot load pickle checkpoint safely ({msg})") from None
            if not isinstance(obj, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
            ):
                raise ModelLoadError(f"{f}: expected a flat dict of tensors")
            for k, v in obj.items():
                sd[k] = v
                sd.files[k] = f.name
        _check_expected(sd, {k: tuple(v.shape) for k, v in sd.items()}, expected, d)
        return sd
    infos: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in infos:
                raise ModelLoadError(
                    f"{f}: tensor {name!r} also appears in {infos[name].file.name}"
                )
            infos[name] = info
    sd.files = {k: v.file.name for k, v in infos.items()}
    _check_expected(sd, {k: v.shape for k, v in infos.items()}, expected, d)
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():  # noqa: SIM118  (safe_open has no __iter__)
                    sd[name] = st.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise ModelLoadError(f"{f}: cannot read safetensors data ({e})") from None
    return sd


def _check_expected(
    sd: StateDict,
    shapes: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]] | None,
    d: Path,
) -> None:
    if expected is None:
        return
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ModelLoadError(
            f"{d}: checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {missing[0]!r}"
        )
    for name, want in expected.items():
        got = tuple(shapes[name])
        if got != tuple(want):
            raise ModelLoadError(
                f"{d / sd.files.get(name, '?')}: tensor {name!r} has shape {list(got)} but the "
                f"config implies {list(want)}"
            )
