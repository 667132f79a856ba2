"""Compiled artifacts: the directory ``llmc compile`` writes, written atomically.

::

    OUT/
      manifest.json       format, model, target, pass pipeline, versions, file hashes
      graph.ir            the IR after all passes (text form)
      params.safetensors  weights in their storage format (``<param>::<field>`` keys)
      tokenizer.json      when the model has llmc's tokenizer
      report.json / report.md   what each pass did and cost, analysis, measured numbers
      ...                 backend files (model.so for TVM targets, fpga/ for FPGA targets)

:func:`artifact_writer` builds everything in a sibling temporary directory and renames it into
place only when the whole compile succeeded: a failed compile leaves no half-written OUT.
:func:`load_artifact` checks the format, llmc version and file hashes before trusting anything.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import llmc
from llmc.errors import LlmcError, ModelLoadError
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


@contextlib.contextmanager
def artifact_writer(out: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` atomically."""
    out = Path(out)
    if out.exists() and not is_artifact(out) and any(out.iterdir()):
        raise ArtifactError(
            f"{out}: exists and is not an llmc artifact; refusing to overwrite it (choose another -o)"
        )
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_params(graph: Graph, path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for p in graph.params.values():
        if p.is_meta:
            continue
        for field, t in p.data.items():
            tensors[f"{p.name}::{field}"] = t.detach().contiguous().cpu()
    save_file(tensors, str(path))


def load_params(graph: Graph, path: Path) -> None:
    from llmc.frontends.checkpoint import read_safetensors_header

    read_safetensors_header(path)  # validates offsets before anything is allocated
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as st:
        keys = set(st.keys())
        for p in graph.params.values():
            data = {}
            for field in p.data:
                key = f"{p.name}::{field}"
                if key not in keys:
                    raise ArtifactError(f"{path}: missing tensor {key!r}")
                t = st.get_tensor(key)
                if tuple(t.shape) != tuple(p.data[field].shape):
                    raise ArtifactError(
                        f"{path}: tensor {key!r} has shape {list(t.shape)}, the graph expects "
                        f"{list(p.data[field].shape)}"
                    )
                data[field] = t
            graph.params[p.name] = Param(p.name, p.type, p.format, data)


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


def write_graph(graph: Graph, tmp: Path) -> None:
    (tmp / "graph.ir").write_text(print_graph(graph))
    save_params(graph, tmp / "params.safetensors")


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    graph: Graph

    @property
    def target(self) -> str:
        return str(self.manifest.get("target", "ref"))


def read_manifest(path: str | Path, *, check_hashes: bool = True) -> dict[str, Any]:
    d = Path(path)
    mpath = d / MANIFEST
    if not d.exists():
        raise ModelLoadError(f"{d}: no such file or directory")
    if not mpath.is_file():
        raise ArtifactError(f"{d}: not an llmc artifact (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{mpath}: unknown artifact format {manifest.get('format')!r} (want {FORMAT})"
        )
    built = manifest.get("versions", {}).get("llmc")
    if built != llmc.__version__:
        raise ArtifactError(
            f"{mpath}: built by llmc {built}, this is llmc {llmc.__version__}; recompile the model"
        )
    if check_hashes:
        for rel, digest in manifest.get("files", {}).items():
            f = (d / rel).resolve()
            if d.resolve() not in f.parents:
                raise ArtifactError(f"{mpath}: file entry {rel!r} points outside the artifact")
            if not f.is_file():
                raise ArtifactError(f"{d / rel}: listed in the manifest but missing")
            if sha256_file(f) != digest:
                raise ArtifactError(
                    f"{d / rel}: content does not match the manifest hash (corrupt?)"
                )
    return manifest


def load_artifact(path: str | Path, *, expect_target: str | None = None) -> Artifact:
    d = Path(path)
    manifest = read_manifest(d)
    if expect_target is not None and manifest.get("target") != expect_target:
        raise ArtifactError(
            f"{d}: built for target {manifest.get('target')!r}, not {expect_target!r}"
        )
    gpath = d / "graph.ir"
    if not gpath.is_file():
        raise ArtifactError(f"{d}: artifact has no graph.ir")
    graph = parse_graph(gpath.read_text())
    load_params(graph, d / "params.safetensors")
    return Artifact(d, manifest, graph)
