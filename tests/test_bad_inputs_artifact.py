"""Tampered and malformed artifacts (issue 13, item 3): every file the loader reads is listed and
hashed, dtypes and shapes are checked, the target is checked against the code, and paths stay
inside the artifact. Each case: non-zero exit, one ``llmc: error:`` line naming the problem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from llmc.cli import main


@pytest.fixture
def tiny_cpu(tiny_cpu_artifact: Path) -> Path:
    """The run's shared artifact (tests/conftest.py): the tamper cases change a copy."""
    return tiny_cpu_artifact


@pytest.fixture
def tiny_ref(tiny_ref_artifact: Path) -> Path:
    return tiny_ref_artifact


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def save_manifest(art: Path, m: dict) -> None:
    (art / "manifest.json").write_text(json.dumps(m))


def rehash(art: Path, *rels: str) -> None:
    """Update the manifest's hashes of ``rels``, as a careful attacker would."""
    m = manifest(art)
    for rel in rels:
        m["files"][rel] = sha(art / rel)
    save_manifest(art, m)


def retype_header(path: Path, key: str, new_dtype: str) -> None:
    """Change one tensor's dtype in a safetensors header, keeping every byte offset."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[key]["dtype"] = new_dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n :])


def first_key(path: Path) -> str:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")


# Each case edits a copy of an artifact; the needle must appear in the one error line.
def _params_dtype(art: Path) -> None:
    p = art / "params.safetensors"
    retype_header(p, first_key(p), "I32")
    rehash(art, "params.safetensors")


def _weights_dtype(art: Path) -> None:
    p = art / "weights.safetensors"
    retype_header(p, first_key(p), "I32")
    rehash(art, "weights.safetensors")


def _files_empty(art: Path) -> None:
    m = manifest(art)
    m["files"] = {}
    save_manifest(art, m)


def _files_list(art: Path) -> None:
    m = manifest(art)
    m["files"] = list(m["files"])
    save_manifest(art, m)


def _files_entry(rel: str, digest: str | None = None) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        m = manifest(art)
        m["files"][rel] = digest or "0" * 64
        save_manifest(art, m)

    return edit


def _relabel(target: str, kind: str | None = None) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        m = manifest(art)
        m["target"] = target
        if kind is not None:
            m["target_kind"] = kind
        save_manifest(art, m)

    return edit


def _weights_file(rel: str) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        m = manifest(art)
        m["backend"]["weights"][0]["file"] = rel
        save_manifest(art, m)

    return edit


def _stub_so(art: Path) -> None:
    (art / "model.so").write_bytes(b"\x7fELF not really a library")
    rehash(art, "model.so")


def _symlinked(rel: str) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        outside = art.parent / f"outside-{rel.replace('/', '_')}"
        shutil.copy(art / rel, outside)
        (art / rel).unlink()
        os.symlink(outside, art / rel)

    return edit


def _missing(rel: str) -> Callable[[Path], None]:
    return lambda art: (art / rel).unlink()


def _manifest_text(text: str) -> Callable[[Path], None]:
    return lambda art: (art / "manifest.json").write_text(text)


def _manifest_field(key: str, value: object) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        m = manifest(art)
        m[key] = value
        save_manifest(art, m)

    return edit


def _backend_field(key: str, value: object) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        m = manifest(art)
        m["backend"][key] = value
        save_manifest(art, m)

    return edit


def _graph_text(text: bytes) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        (art / "graph.ir").write_bytes(text)
        rehash(art, "graph.ir")

    return edit


def _fifo(rel: str) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        (art / rel).unlink()
        os.mkfifo(art / rel)

    return edit


CPU_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "params-dtype-changed-hash-updated": (_params_dtype, "is I32, the graph expects F32"),
    "weights-dtype-changed-hash-updated": (_weights_dtype, "the compiled code expects"),
    "files-empty": (_files_empty, "does not list 'graph.ir'"),
    "files-a-list": (_files_list, "'files' must map"),
    "files-parent-path": (_files_entry("../x"), "not a relative path inside"),
    "files-absolute-path": (_files_entry("/etc/passwd"), "not a relative path inside"),
    "files-bad-digest": (_files_entry("graph.ir", "abc"), "no sha256 digest"),
    "files-listed-missing": (_files_entry("extra.bin"), "listed in the manifest but missing"),
    "params-hash-mismatch": (_files_entry("params.safetensors"), "does not match the manifest"),
    "cpu-relabelled-h100": (_relabel("h100"), "is a cuda target but the artifact says kind"),
    "cpu-relabelled-h100-kind-too": (_relabel("h100", "cuda"), "holds no cuda device code"),
    "cpu-relabelled-mi300x-kind-too": (_relabel("mi300x", "rocm"), "holds no rocm device code"),
    "unknown-target": (_relabel("tpu9"), "unknown target 'tpu9'"),
    "target-not-a-string": (_manifest_field("target", ["cpu"]), "'target' must be a string"),
    "weights-file-outside": (_weights_file("../../x"), "not listed (and hashed)"),
    "weights-file-unlisted": (_weights_file("params.safetensors.bak"), "not listed (and hashed)"),
    "weights-file-a-list": (_weights_file(["a"]), "malformed backend table"),
    "model-so-stub-right-hash": (_stub_so, "not a loadable compiled module"),
    "model-so-unlisted": (
        lambda art: (lambda m: (m["files"].pop("model.so"), save_manifest(art, m)))(manifest(art)),
        "'model.so' is not listed",
    ),
    "graph-symlink-outside": (_symlinked("graph.ir"), "not a regular file"),
    "params-symlink-outside": (_symlinked("params.safetensors"), "not a regular file"),
    "graph-fifo": (_fifo("graph.ir"), "not a regular file"),
    "graph-missing": (_missing("graph.ir"), "missing"),
    "manifest-not-json": (_manifest_text("{nope"), "not valid JSON"),
    "manifest-a-list": (_manifest_text("[1, 2]"), "unknown artifact format"),
    "manifest-deep-nesting": (_manifest_text("[" * 100000), "not valid JSON"),
    "manifest-other-version": (
        _manifest_field("versions", {"llmc": "0.0.1"}),
        "built by llmc 0.0.1",
    ),
    "manifest-versions-not-dict": (_manifest_field("versions", 3), "built by llmc None"),
    "backend-weights-not-list": (_backend_field("weights", 5), "malformed backend table"),
    "backend-entry-weights-missing": (
        _backend_field("entry_weights", None),
        "malformed backend table",
    ),
    "backend-abi-old": (_backend_field("abi", "llmc-tvm-v1"), "recompile"),
    "graph-not-utf8": (_graph_text(b"\xff\xfe graph"), "not UTF-8"),
    "graph-garbage": (_graph_text(b"graph @x {\n"), "graph.ir"),
    "tokenizer-entry-bad-kind": (
        _manifest_field("tokenizer", {"kind": "sentencepiece", "dir": "tokenizer"}),
        "malformed 'tokenizer' entry",
    ),
    "tokenizer-entry-outside": (
        _manifest_field("tokenizer", {"kind": "byte-level", "dir": ".."}),
        "not a relative path",
    ),
    "tokenizer-entry-missing-dir": (
        _manifest_field("tokenizer", {"kind": "byte-level", "dir": "nowhere"}),
        "not a folder",
    ),
    "tokenizer-kind-lies": (
        _manifest_field("tokenizer", {"kind": "hf", "dir": "tokenizer"}),
        "the files hold another kind",
    ),
}


def _expect_one_line(rc: int, out: str, err: str, needle: str) -> None:
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("llmc: error: ") and "Traceback" not in err
    assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("case", sorted(CPU_CASES))
def test_tampered_cpu_artifact(capsys, tiny_cpu: Path, tmp_path: Path, case: str) -> None:
    edit, needle = CPU_CASES[case]
    art = tmp_path / "art"
    shutil.copytree(tiny_cpu, art, symlinks=True)
    edit(art)
    rc = main(["run", str(art), "--prompt", "The", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    _expect_one_line(rc, out, err, needle)


REF_CASES = {
    k: CPU_CASES[k]
    for k in (
        "params-dtype-changed-hash-updated",
        "files-empty",
        "files-parent-path",
        "graph-symlink-outside",
        "tokenizer-entry-outside",
        "tokenizer-kind-lies",
    )
}
REF_CASES["ref-relabelled-cpu"] = (_relabel("cpu"), "is a cpu target but the artifact says kind")


@pytest.mark.parametrize("case", sorted(REF_CASES))
@pytest.mark.parametrize("command", ["run", "eval"])
def test_tampered_ref_artifact(
    capsys, tiny_ref: Path, tmp_path: Path, case: str, command: str
) -> None:
    edit, needle = REF_CASES[case]
    art = tmp_path / "art"
    shutil.copytree(tiny_ref, art, symlinks=True)
    edit(art)
    extra = ["--prompt", "The", "--max-new-tokens", "2"] if command == "run" else ["--json"]
    rc = main([command, str(art), *extra])
    out, err = capsys.readouterr()
    _expect_one_line(rc, out, err, needle)
    if command == "eval":
        assert json.loads(out)["error"] in err


def test_untouched_artifacts_still_run(capsys, tiny_cpu: Path, tiny_ref: Path) -> None:
    for art in (tiny_cpu, tiny_ref):
        rc = main(["run", str(art), "--prompt", "The", "--max-new-tokens", "2", "--json"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert json.loads(out)["new_tokens"] == 2


# ------------------------------------------------------------------------- FPGA artifacts
@pytest.fixture(scope="module")
def tiny_u280(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-u280") / "out"
    assert main(["compile", "tiny", "--target", "u280", "-o", str(out), "--json"]) == 0
    return out


def _flip_byte(rel: str, at: int = 100) -> Callable[[Path], None]:
    def edit(art: Path) -> None:
        p = art / rel
        raw = bytearray(p.read_bytes())
        raw[at % len(raw)] ^= 0x01
        p.write_bytes(bytes(raw))
        rehash(art, rel)

    return edit


FPGA_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # the stream the first decode step runs (16-token bucket) and the first prefill chunk
    "decode-stream-edited-hash-updated": (
        _flip_byte("fpga/instructions/decode_t0016.bin"),
        "decode stream for bucket 16 differs",
    ),
    "prefill-stream-edited-hash-updated": (
        _flip_byte("fpga/instructions/prefill_c00.bin"),
        "prefill stream for bucket 0 differs",
    ),
    "hbm-image-edited-hash-updated": (_flip_byte("fpga/hbm.bin", 4096), "hbm.bin: differs"),
    "arch-unlisted": (
        lambda art: (lambda m: (m["files"].pop("fpga/arch.yaml"), save_manifest(art, m)))(
            manifest(art)
        ),
        "'fpga/arch.yaml' is not listed",
    ),
    "stream-index-garbage": (
        lambda art: (
            (art / "fpga/instructions/index.json").write_text('{"entries": 3}'),
            rehash(art, "fpga/instructions/index.json"),
        ),
        "malformed stream index",
    ),
    "u280-relabelled-cpu": (_relabel("cpu"), "is a cpu target but the artifact says kind"),
}


@pytest.mark.parametrize("case", sorted(FPGA_CASES))
def test_tampered_fpga_artifact(capsys, tiny_u280: Path, tmp_path: Path, case: str) -> None:
    """The functional simulator runs streams lowered from the graph: each must be the one the
    artifact ships, and so must the HBM image (an edited instructions file used to be ignored)."""
    edit, needle = FPGA_CASES[case]
    art = tmp_path / "art"
    shutil.copytree(tiny_u280, art, symlinks=True)
    edit(art)
    rc = main(["run", str(art), "--prompt", "The", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    _expect_one_line(rc, out, err, needle)


def test_untouched_fpga_artifact_runs(capsys, tiny_u280: Path) -> None:
    rc = main(["run", str(tiny_u280), "--prompt", "The", "--max-new-tokens", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["new_tokens"] == 2
