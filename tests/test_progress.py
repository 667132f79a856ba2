"""Progress on stderr (``llmc.console``): shown on a terminal or under ``LLMC_PROGRESS=1``, never
under ``--json``, ``LLMC_PROGRESS=0`` or when stderr is not a terminal (pytest's capture is not
one); what each long step shows (loading, each pass, calibration per layer, simulation, eval
windows, bench rounds; the TVM phases are in tests/test_cli_flags.py with the cpu artifact)."""

from __future__ import annotations

import json

import pytest

from llmc import console
from llmc.cli import main


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("LLMC_PROGRESS", raising=False)
    monkeypatch.delenv("LLMC_NO_PROGRESS", raising=False)
    console.set_quiet(False)
    yield
    console.set_quiet(False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_enabled_by_env_tty_and_quiet(monkeypatch) -> None:
    assert not console.progress_enabled()  # pytest's stderr is not a terminal
    monkeypatch.setenv("LLMC_PROGRESS", "1")
    assert console.progress_enabled()
    console.set_quiet(True)  # --json wins over the environment
    assert not console.progress_enabled()
    console.set_quiet(False)
    monkeypatch.setenv("LLMC_PROGRESS", "0")
    assert not console.progress_enabled()
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.delenv("LLMC_PROGRESS")
    assert console.progress_enabled()
    monkeypatch.setenv("LLMC_NO_PROGRESS", "1")
    assert not console.progress_enabled()


def test_stage_and_bar_output(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LLMC_PROGRESS", "1")
    with console.stage("outer step"):
        with console.stage("inner step"):
            pass
        for _ in console.track(range(3), "counting"):
            pass
    with pytest.raises(RuntimeError), console.stage("doomed"):
        raise RuntimeError("x")
    out, err = capsys.readouterr()
    assert out == ""
    lines = [ln.split("\r")[-1].replace("\x1b[K", "") for ln in err.splitlines()]
    assert any(ln.startswith("  inner step  ") and ln.endswith(" s") for ln in lines), err
    assert any(ln.startswith("outer step  ") for ln in lines), err
    assert "outer step > counting:   0%" in err and "0/3" in err
    assert any(ln.startswith("doomed  failed after ") for ln in lines), err


def test_silent_without_terminal_or_when_quiet(monkeypatch, capsys) -> None:
    for setup in ("no-tty", "env-0", "quiet"):
        if setup == "env-0":
            monkeypatch.setenv("LLMC_PROGRESS", "0")
        if setup == "quiet":
            monkeypatch.setenv("LLMC_PROGRESS", "1")
            console.set_quiet(True)
        with console.stage("a step"):
            for _ in console.track(range(2), "bar"):
                console.status("a status line")
        assert capsys.readouterr().err == "", setup


CALIB = ("--calib-samples", "2", "--calib-seqlen", "32")


def test_compile_shows_loading_passes_and_calibration(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("LLMC_PROGRESS", "1")
    out = tmp_path / "w"
    argv = ["compile", "tiny", "--passes", "wanda:sparsity=0.5,rtn:bits=8", *CALIB, "-o", str(out)]
    rc, o, err = run(capsys, *argv)
    assert rc == 0, err
    for needle in (
        "loading tiny",
        "mapping weights",  # the safetensors bar (tensors are mapped, not read)
        "pass 1/2 wanda",
        "wanda calibrate",  # the per-layer bar
        "/5 [",  # embed + 4 layers (the last redraw may be 4/5: tqdm redraws every 0.1 s)
        "pass 2/2 rtn",
        "building for ref",
        f"writing {out}",
        "compile tiny for ref",
    ):
        assert needle in err, (needle, err)
    assert "model      tiny" in o and "\r" not in o  # results on stdout, progress on stderr
    # --json: the same compile prints nothing on stderr, even with LLMC_PROGRESS=1
    rc, o, err = run(capsys, *argv, "--json")
    assert rc == 0 and err == "" and json.loads(o)["out"] == str(out)
    # not a terminal, no LLMC_PROGRESS: nothing either
    monkeypatch.delenv("LLMC_PROGRESS")
    rc, o, err = run(capsys, *argv)
    assert rc == 0 and err == ""


def test_eval_bench_simulate_show_progress(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LLMC_PROGRESS", "1")
    rc, o, err = run(capsys, "eval", "tiny", "--max-tokens", "1024", "--window", "128")
    assert rc == 0 and "eval" in err and "/8 [" in err, err
    rc, o, err = run(capsys, "bench", "tiny", "--prompt-len", "4", "--new-tokens", "2")
    assert rc == 0 and "bench (batch 1, 2 new tokens)" in err and "/3 [" in err, err
    # (the bar's last refresh may show 2/3 before it closes: tqdm redraws at most every 0.1 s)
    rc, o, err = run(capsys, "simulate", "tiny", "--prefill", "8", "--decode", "4")
    assert rc == 0 and "simulating on u280 (prefill 8, decode 4)" in err, err
    rc, o, err = run(capsys, "simulate", "tiny", "--prefill", "8", "--decode", "4", "--json")
    assert rc == 0 and err == ""


def test_library_code_does_not_import_the_cli() -> None:
    """Progress lives in llmc.console, a leaf: it imports nothing from llmc."""
    import ast
    from pathlib import Path

    src = Path(console.__file__).read_text()
    mods = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(ast.parse(src))
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])
    ]
    assert not [m for m in mods if m and m.startswith("llmc")], mods
