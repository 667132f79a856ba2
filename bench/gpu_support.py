"""The GPU check's prepared folder (``.gpu/``) and result file (``bench/gpu.json``).

Used by ``tools/prepare_gpu_check.sh`` (``pack-tvm``, ``finish``), by ``bench/gpu_check.py``
(:func:`check_prepared`, :func:`validate_result`) and by ``tests/test_gpu_check.py``.

``.gpu/`` holds what a lent GPU machine (no internet; its own Python 3.12, torch with CUDA 13,
transformers, pytest) lacks for the check, and must travel with the repository within the device
tool's 64 MiB::

    .gpu/prepared.json                 this list: every file with its bytes and sha256, the sizes
    .gpu/wheels/apache_tvm_ffi-*.whl   TVM's FFI for cp312 (the device's Python)
    .gpu/tvm-runtime.tar.gz            the ``tvm`` package without its 260 MB compiler library
    .gpu/artifacts/llama2-7b-f16/      ``llmc compile llama2-7b --target h100`` (sm_90, no weights)
    .gpu/artifacts/llama2-7b-w4a16/    the same with ``--passes rtn:bits=4:group=128``
    .gpu/artifacts/llama2-7b-f16-tc/   fp16 with the tensor-core prefill GEMM (opt-in)

Weights are not in it: the check draws them on the GPU (``random_weights=True``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUDGET_BYTES = 64 * 1024 * 1024  # the device tool's limit on the tree that travels
ARTIFACTS = {"f16": "llama2-7b-f16", "w4a16": "llama2-7b-w4a16", "f16-tc": "llama2-7b-f16-tc"}
TVM_TARBALL = "tvm-runtime.tar.gz"
#: parts of the tvm package a runtime-only import never reads (the compiler is 260 MB alone)
TVM_DROP = ("lib/libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__")
TVM_NEEDS = ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_cuda.so", "tvm/runtime/vm.py")
CUDA_ARCH = "sm_90"


class PrepError(Exception):
    """The prepared folder is missing, damaged or over budget (the message names the file)."""


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_files(d: Path) -> dict[str, int]:
    """Every regular file under ``d`` (relative POSIX path -> bytes)."""
    return {
        f.relative_to(d).as_posix(): f.stat().st_size for f in sorted(d.rglob("*")) if f.is_file()
    }


def repo_travel_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends besides carried paths: tracked files and untracked
    files git does not ignore (``git ls-files``)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for rel in filter(None, out.split(b"\0")):
        p = root / rel.decode()
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def account(gpu_dir: Path, repo_bytes: int, budget: int = BUDGET_BYTES) -> dict[str, Any]:
    """The size accounting of a prepared folder; :class:`PrepError` when over the budget."""
    files = folder_files(gpu_dir)
    files.pop("prepared.json", None)
    gpu_bytes = sum(files.values())
    total = gpu_bytes + repo_bytes
    acc = {
        "gpu_dir_bytes": gpu_bytes,
        "repo_bytes": repo_bytes,
        "total_bytes": total,
        "budget_bytes": budget,
    }
    if total > budget:
        big = sorted(files.items(), key=lambda kv: -kv[1])[:3]
        raise PrepError(
            f"{gpu_dir}: {gpu_bytes / 2**20:.1f} MiB prepared + {repo_bytes / 2**20:.1f} MiB of "
            f"repository = {total / 2**20:.1f} MiB, over the {budget / 2**20:.0f} MiB the device "
            f"tool carries (largest: {', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in big)})"
        )
    return acc


# -------------------------------------------------------------------------------- building


def pack_tvm(out: Path) -> dict[str, int]:
    """Write the runtime part of this machine's ``tvm`` package as a ``.tar.gz``.

    apache-tvm's wheel is ``py3-none`` (its libraries do not depend on the Python version), so
    the files of the Python 3.11 install here serve the device's 3.12."""
    import tvm

    pkg = Path(tvm.__file__).parent
    kept = dropped = 0
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for f in sorted(pkg.rglob("*")):
            rel = f.relative_to(pkg).as_posix()
            if (
                f.is_dir()
                or f.suffix == ".pyc"
                or any(
                    rel == d or rel.startswith(d + "/") or f"/{d}/" in f"/{rel}" for d in TVM_DROP
                )
            ):
                dropped += f.stat().st_size if f.is_file() else 0
                continue
            tar.add(f, arcname=f"tvm/{rel}", recursive=False)
            kept += f.stat().st_size
    return {"kept_bytes": kept, "dropped_bytes": dropped, "tar_bytes": out.stat().st_size}


def finish(gpu_dir: Path, repo_bytes: int, budget: int = BUDGET_BYTES) -> dict[str, Any]:
    """Check the folder's contents, account its size, write ``prepared.json``."""
    acc = account(gpu_dir, repo_bytes, budget)
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "files": {
            rel: {"bytes": n, "sha256": sha256(gpu_dir / rel)}
            for rel, n in folder_files(gpu_dir).items()
            if rel != "prepared.json"
        },
        **acc,
    }
    (gpu_dir / "prepared.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    check_prepared(gpu_dir)
    return info


# -------------------------------------------------------------------------------- checking


def check_artifact(art: Path, tensor_cores: bool = False) -> dict[str, Any]:
    """A cross-compiled CUDA artifact holds an ``sm_90`` cubin with every kernel and ``sm_90``
    PTX (read from the fatbin inside ``model.so``), with ``mma.sync`` instructions in the PTX
    when ``tensor_cores``; returns what was found."""
    from llmc.backends.fatbin import find_fatbins, ptx_text
    from llmc.backends.toolchain import ToolchainError

    try:
        manifest = json.loads((art / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise PrepError(f"{art / 'manifest.json'}: unreadable ({e})") from None
    backend = manifest.get("backend", {})
    if manifest.get("target_kind") != "cuda" or backend.get("arch") != CUDA_ARCH:
        raise PrepError(
            f"{art}: built for {manifest.get('target')} ({backend.get('arch')}), not CUDA {CUDA_ARCH}"
        )
    fatbins = find_fatbins((art / "model.so").read_bytes())
    if len(fatbins) != 1:
        raise PrepError(f"{art / 'model.so'}: {len(fatbins)} CUDA fatbins, expected one")
    fb = fatbins[0]
    if fb.archs("elf") != {CUDA_ARCH} or fb.archs("ptx") != {CUDA_ARCH}:
        raise PrepError(
            f"{art / 'model.so'}: fatbin has cubins {sorted(fb.archs('elf'))} and PTX "
            f"{sorted(fb.archs('ptx'))}, expected {CUDA_ARCH} of each"
        )
    symbols = {k.removesuffix("_kernel") for c in fb.cubins() for k in c.kernels}
    missing = sorted(set(backend.get("kernels", [])) - symbols)
    if missing:
        raise PrepError(f"{art / 'model.so'}: kernels without device code: {missing[:5]}")
    try:
        ptx = ptx_text(next(e for e in fb.entries if e.kind == "ptx"))
        mma: int | None = ptx.count("mma.sync.aligned.m16n8k16")
    except ToolchainError:  # no zstd here: the count is unknown, not zero
        mma = None
    if tensor_cores and mma == 0:
        raise PrepError(f"{art / 'model.so'}: no mma.sync in its PTX (tensor-core build expected)")
    return {
        "target": manifest.get("target"),
        "arch": backend["arch"],
        "mma_instructions": mma,
        "kernels": len(backend.get("kernels", [])),
        "cubin_archs": sorted(fb.archs("elf")),
        "ptx_archs": sorted(fb.archs("ptx")),
        "weights": len(backend.get("weights", [])),
    }


def check_prepared(gpu_dir: Path) -> dict[str, Any]:
    """Everything the GPU machine will read from ``gpu_dir``, checked here (no GPU needed)."""
    listing = gpu_dir / "prepared.json"
    if not listing.is_file():
        raise PrepError(
            f"{gpu_dir}: not prepared (no prepared.json); run tools/prepare_gpu_check.sh"
        )
    info = json.loads(listing.read_text())
    for rel, want in info["files"].items():
        p = gpu_dir / rel
        if not p.is_file() or p.stat().st_size != want["bytes"] or sha256(p) != want["sha256"]:
            raise PrepError(f"{p}: missing or changed since prepared.json was written")
    wheels = sorted((gpu_dir / "wheels").glob("apache_tvm_ffi-*-cp312-*.whl"))
    if len(wheels) != 1:
        raise PrepError(f"{gpu_dir / 'wheels'}: expected one apache_tvm_ffi cp312 wheel")
    with tarfile.open(gpu_dir / TVM_TARBALL) as tar:
        names = set(tar.getnames())
    absent = [n for n in TVM_NEEDS if n not in names]
    if absent or "tvm/lib/libtvm_compiler.so" in names:
        raise PrepError(f"{gpu_dir / TVM_TARBALL}: not a runtime-only tvm package ({absent})")
    arts = {
        k: check_artifact(gpu_dir / "artifacts" / v, k.endswith("-tc"))
        for k, v in ARTIFACTS.items()
    }
    return {"wheels": [w.name for w in wheels], "artifacts": arts, **account(gpu_dir, 0)}


# -------------------------------------------------------------------------------- the result


class Nullable:
    """A schema entry that may also be null (``pytest`` is null when it was not run)."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


#: bench/gpu.json: key -> type (nested dicts checked key by key; "?" means may be null)
RESULT_SCHEMA: dict[str, Any] = {
    "command": str,
    "compare": dict,
    "date": str,
    "dry_run": bool,
    "machine": {"gpu": str, "driver": str, "torch": str, "cuda": str, "python": str},
    "commit": str,
    "prepared": dict,
    "pytest": Nullable({"rc": int, "passed": int, "failed": int, "skipped": int, "errors": int}),
    "shape": {"model": str, "prompt_tokens": int, "new_tokens": int, "batch": int},
    "bandwidth": {"bytes": int, "GBps": float},
    "runs": list,
}
RUN_SCHEMA: dict[str, Any] = {
    "name": str,
    "status": str,  # ok | failed | skipped
    "decode_tok_s": "?float",
    "decode_ms_per_token": "?float",
    "bytes_per_token": "?int",
    "roofline_tok_s": "?float",
    "pct_roofline": "?float",
    "detail": dict,
}


def _check(obj: Any, schema: Any, where: str) -> list[str]:
    if isinstance(schema, Nullable):
        return [] if obj is None else _check(obj, schema.schema, where)
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return [f"{where}: expected an object"]
        errs = []
        for k, sub in schema.items():
            if k not in obj:
                errs.append(f"{where}.{k}: missing")
            else:
                errs += _check(obj[k], sub, f"{where}.{k}")
        return errs
    if isinstance(schema, str):  # "?float": a number or null
        if obj is None:
            return []
        schema = {"float": float, "int": int}[schema[1:]]
    ok = (
        isinstance(obj, (int, float)) and not isinstance(obj, bool)
        if schema is float
        else (isinstance(obj, schema) and not (schema is int and isinstance(obj, bool)))
    )
    return [] if ok else [f"{where}: expected {schema.__name__}, got {type(obj).__name__}"]


def validate_result(res: dict[str, Any]) -> list[str]:
    """Schema errors of a bench/gpu.json object (empty when it conforms)."""
    errs = _check(res, RESULT_SCHEMA, "gpu.json")
    for i, run in enumerate(res.get("runs", []) if isinstance(res.get("runs"), list) else []):
        errs += _check(run, RUN_SCHEMA, f"gpu.json.runs[{i}]")
        if isinstance(run, dict) and run.get("status") == "ok" and run.get("decode_tok_s") is None:
            errs.append(f"gpu.json.runs[{i}]: status ok without decode_tok_s")
    return errs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack-tvm", help="write the runtime-only tvm package as a .tar.gz")
    p.add_argument("out", type=Path)
    p = sub.add_parser("finish", help="check the folder, write prepared.json, print its size")
    p.add_argument("gpu_dir", type=Path)
    p.add_argument("--budget-mib", type=float, default=BUDGET_BYTES / 2**20)
    p = sub.add_parser("check", help="check a prepared folder")
    p.add_argument("gpu_dir", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack-tvm":
            print(json.dumps(pack_tvm(a.out)))
        elif a.cmd == "finish":
            info = finish(a.gpu_dir, repo_travel_bytes(), int(a.budget_mib * 2**20))
            print(
                f"{a.gpu_dir}: {info['gpu_dir_bytes'] / 2**20:.1f} MiB prepared + "
                f"{info['repo_bytes'] / 2**20:.1f} MiB repository = "
                f"{info['total_bytes'] / 2**20:.1f} MiB of {info['budget_bytes'] / 2**20:.0f} MiB"
            )
        else:
            print(json.dumps(check_prepared(a.gpu_dir), indent=1))
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
