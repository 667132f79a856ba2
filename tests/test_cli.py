"""The CLI contract: user errors are one line on stderr naming the file and the problem, exit
status non-zero, no traceback, nothing left in OUT; ``--json`` prints exactly one JSON object."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmc.cli import main
from llmc.models import TINY_DIR

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("llmc: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(TINY_DIR, d)
    return d


def compile_into(capsys, model: str, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "compile", model, "-o", str(out), *extra)


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("llmc ")


def test_missing_path(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, _, err = compile_into(capsys, str(tmp_path / "does-not-exist"), out)
    assert_one_line_error(rc, err, "does-not-exist")
    assert not out.exists()


def test_unknown_target_suggests(capsys, tmp_path: Path) -> None:
    rc, _, err = compile_into(capsys, "tiny", tmp_path / "out", "--target", "h10")
    assert_one_line_error(rc, err, "unknown target 'h10'", "did you mean 'h100'")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_supported(capsys, model_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    cfg["model_type"] = "mamba"
    (model_dir / "config.json").write_text(json.dumps(cfg))
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "config.json", "MambaForCausalLM", "LlamaForCausalLM")
    assert not (tmp_path / "out").exists()


def test_remote_code_refused(capsys, model_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "config.json", "auto_map")
    assert not (tmp_path / "out").exists()


def test_pickle_only_refused_then_allowed(capsys, model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(sd, model_dir / "pytorch_model.bin")
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "pytorch_model.bin", "--allow-pickle")
    assert not (tmp_path / "out").exists()
    rc, out, err = compile_into(capsys, str(model_dir), tmp_path / "out", "--allow-pickle")
    assert rc == 0, err
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_truncated_safetensors(capsys, model_dir: Path, tmp_path: Path) -> None:
    f = model_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_header_offsets_lie(capsys, model_dir: Path, tmp_path: Path) -> None:
    f = model_dir / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b, e + 4096]  # claims more bytes than its shape needs
    new = json.dumps(header).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors", name)
    assert not (tmp_path / "out").exists()


def test_shapes_disagree_with_config(capsys, model_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] + 64
    (model_dir / "config.json").write_text(json.dumps(cfg))
    rc, _, err = compile_into(capsys, str(model_dir), tmp_path / "out")
    assert_one_line_error(rc, err, "model.safetensors", "mlp")
    assert not (tmp_path / "out").exists()


def test_out_is_replaced_atomically_and_foreign_dirs_kept(capsys, tmp_path: Path) -> None:
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    rc, _, err = compile_into(capsys, "tiny", foreign)
    assert_one_line_error(rc, err, "precious", "not an llmc artifact")
    assert (foreign / "thesis.tex").read_text() == "do not delete"


def test_targets_json_is_one_object(capsys) -> None:
    rc, out, _ = run_cli(capsys, "targets", "--json")
    assert rc == 0
    names = {t["name"] for t in json.loads(out)["targets"]}
    assert {"ref", "cpu", "a100", "h100", "mi250x", "mi300x", "u280", "vhk158"} <= names


def test_compile_run_eval_tiny(capsys, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    rc, _, err = compile_into(capsys, "tiny", out, "--json")
    assert rc == 0, err
    rc, o, err = run_cli(
        capsys, "run", str(out), "--prompt", "The for statement", "--max-new-tokens", "12", "--json"
    )
    assert rc == 0, err
    r = json.loads(o)
    assert r["new_tokens"] == 12 and isinstance(r["completion"], str)
    rc, o, err = run_cli(capsys, "eval", str(out), "--json", "--max-tokens", "1024")
    assert rc == 0, err
    e = json.loads(o)
    assert {"perplexity", "tokens", "uniform_perplexity", "model"} <= set(e)
    assert e["perplexity"] < e["uniform_perplexity"] / 10


def test_eval_tiny_full_heldout_matches_training_record(capsys) -> None:
    """`llmc eval tiny --json` measures the perplexity docs/tiny-model.md reports."""
    rc, o, err = run_cli(capsys, "eval", "tiny", "--json")
    assert rc == 0, err
    e = json.loads(o)
    log = json.loads((TINY_DIR / "training_log.json").read_text())
    assert e["perplexity"] == pytest.approx(log["final"]["heldout_perplexity"], rel=1e-4)
    assert e["perplexity"] < e["uniform_perplexity"] / 10


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, LLMC_NO_PROGRESS="1")
    p = subprocess.run(
        [sys.executable, "-m", "llmc.cli", "run", str(tmp_path / "nope"), "--prompt", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode != 0
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("llmc: error:") and "nope" in p.stderr
