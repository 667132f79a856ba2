"""`--dtype` on compile/eval/bench, `bench --random-weights` for architecture-only artifacts, and
the one-line refusals around them (issue 15, "The CLI users expect")."""

from __future__ import annotations

import json
from pathlib import Path

from llmc.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_dtype_bf16_is_close_to_f32(capsys) -> None:
    rc, out, err = run(capsys, "eval", "tiny", "--max-tokens", "2048", "--json")
    assert rc == 0, err
    f32 = json.loads(out)["perplexity"]
    rc, out, err = run(capsys, "eval", "tiny", "--dtype", "bf16", "--max-tokens", "2048", "--json")
    assert rc == 0, err
    bf16 = json.loads(out)["perplexity"]
    assert bf16 != f32 and abs(bf16 - f32) / f32 < 0.02


def test_compile_dtype_f16_records_it(capsys, tmp_path: Path) -> None:
    out = tmp_path / "f16"
    rc, o, err = run(capsys, "compile", "tiny", "--dtype", "f16", "-o", str(out), "--json")
    assert rc == 0, err
    assert "f16[" in (out / "graph.ir").read_text()
    rc, o, err = run(capsys, "eval", str(out), "--dtype", "f32")
    assert rc != 0 and "--dtype applies to models" in err and len(err.strip().splitlines()) == 1


def test_bad_dtype_is_one_line(capsys) -> None:
    rc, o, err = run(capsys, "eval", "tiny", "--dtype", "f8")
    assert rc == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_architecture_only_artifact_benches_with_random_weights(capsys, tmp_path: Path) -> None:
    out = tmp_path / "gpt2"
    rc, o, err = run(capsys, "compile", "gpt2", "--target", "cpu", "-o", str(out))
    assert rc == 0, err
    rc, o, err = run(capsys, "bench", str(out), "--prompt-len", "4", "--new-tokens", "2")
    assert rc != 0 and "--random-weights" in err and len(err.strip().splitlines()) == 1
    rc, o, err = run(
        capsys,
        "bench",
        str(out),
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        "--repeat",
        "1",
        "--random-weights",
        "--json",
    )
    assert rc == 0, err
    r = json.loads(o)
    assert r["random_weights"] is True and r["new_tokens"] == 2 and r["target"] == "cpu"


def test_architecture_only_model_refuses_to_run(capsys) -> None:
    rc, o, err = run(capsys, "run", "gpt2", "--prompt-ids", "1,2")
    assert rc != 0 and "architecture-only" in err and "--random-weights" in err
    rc, o, err = run(capsys, "bench", "tiny", "--random-weights", "--new-tokens", "1")
    assert rc != 0 and "--random-weights applies to compiled TVM artifacts" in err
