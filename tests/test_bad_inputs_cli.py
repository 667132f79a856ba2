"""Bad command lines and faults (issue 13): every argument is range-checked where it is parsed,
every failure is one ``llmc: error:`` line and a non-zero exit (with ``--json`` also one JSON
object on stdout), no JSON holds ``Infinity``/``NaN``, and nothing is left behind: no OUT, no
``.OUT.tmp-*``, no lock file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmc.cli import main

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")

TINY_ARGS = ["--max-new-tokens", "2"]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def expect_error(capsys, argv: list[str], needle: str, *, code: int | None = None) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, (argv, out, err)
    if code is not None:
        assert rc == code
    assert len(lines) == 1, err
    assert lines[0].startswith("llmc: error: ") and "Traceback" not in err
    assert needle in lines[0], (needle, lines[0])
    if "--json" in argv:
        obj = json.loads(out)
        assert set(obj) == {"error", "kind"} and obj["error"] in lines[0]
    else:
        assert out == ""
    return lines[0]


# ------------------------------------------------------------------------- argument ranges
BAD_ARGS = {
    "run-top-p-zero": (["run", "tiny", "--prompt", "x", "--top-p", "0"], "--top-p"),
    "run-top-p-above-one": (["run", "tiny", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    "run-top-p-nan": (["run", "tiny", "--prompt", "x", "--top-p", "nan"], "--top-p"),
    "run-temperature-negative": (["run", "tiny", "--prompt", "x", "--temperature", "-1"], "--temp"),
    "run-temperature-inf": (["run", "tiny", "--prompt", "x", "--temperature", "inf"], "--temp"),
    "run-temperature-text": (["run", "tiny", "--prompt", "x", "--temperature", "hot"], "--temp"),
    "run-max-new-negative": (["run", "tiny", "--prompt", "x", "--max-new-tokens", "-1"], "--max"),
    "run-top-k-negative": (["run", "tiny", "--prompt", "x", "--top-k", "-3"], "--top-k"),
    "run-seed-negative": (["run", "tiny", "--prompt", "x", "--seed", "-3"], "--seed"),
    "run-no-prompt": (["run", "tiny"], "--prompt"),
    "run-both-prompts": (["run", "tiny", "--prompt", "x", "--prompt-ids", "1"], "not allowed"),
    "run-prompt-ids-text": (["run", "tiny", "--prompt-ids", "a,b"], "--prompt-ids"),
    "run-prompt-ids-negative": (["run", "tiny", "--prompt-ids", "-1"], "--prompt-ids"),
    "run-prompt-ids-empty": (["run", "tiny", "--prompt-ids", ","], "--prompt-ids"),
    "eval-window-zero": (["eval", "tiny", "--window", "0"], "--window"),
    "eval-window-one": (["eval", "tiny", "--window", "1"], "--window"),
    "eval-batch-size-zero": (["eval", "tiny", "--batch-size", "0"], "--batch-size"),
    "eval-max-tokens-zero": (["eval", "tiny", "--max-tokens", "0"], "--max-tokens"),
    "eval-calib-samples-zero": (
        ["eval", "tiny", "--passes", "wanda", "--calib-samples", "0"],
        "--calib-samples",
    ),
    "compile-seq-zero": (["compile", "tiny", "--dry-run", "--seq", "0"], "--seq"),
    "compile-past-negative": (["compile", "tiny", "--dry-run", "--past", "-1"], "--past"),
    "compile-calib-seqlen-one": (["compile", "tiny", "--calib-seqlen", "1"], "--calib-seqlen"),
    "bench-repeat-zero": (["bench", "tiny", "--repeat", "0"], "--repeat"),
    "bench-new-tokens-zero": (["bench", "tiny", "--new-tokens", "0"], "--new-tokens"),
    "bench-prompt-len-zero": (["bench", "tiny", "--prompt-len", "0"], "--prompt-len"),
    "simulate-prefill-zero": (["simulate", "tiny", "--prefill", "0"], "--prefill"),
    "simulate-decode-negative": (["simulate", "tiny", "--decode", "-5"], "--decode"),
    "unknown-command": (["frobnicate"], "invalid choice"),
    "unknown-option": (["compile", "tiny", "--frobnicate"], "unrecognized arguments"),
    "unknown-option-json": (["compile", "tiny", "--json", "--frobnicate"], "unrecognized"),
    "run-top-p-zero-json": (["run", "tiny", "--json", "--prompt", "x", "--top-p", "0"], "--top-p"),
    "eval-window-zero-json": (["eval", "tiny", "--json", "--window", "0"], "--window"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments(capsys, case: str) -> None:
    argv, needle = BAD_ARGS[case]
    expect_error(capsys, argv, needle, code=2)


# ------------------------------------------------------------------------- -o and OUT
def test_out_is_a_file(capsys, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("keep me")
    expect_error(capsys, ["compile", "tiny", "-o", str(f)], "not a directory")
    assert f.read_text() == "keep me" and leftovers(tmp_path, "f") == []


def test_out_under_a_file(capsys, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    expect_error(capsys, ["compile", "tiny", "-o", str(f / "out")], "cannot create its folder")


def test_out_in_proc(capsys) -> None:
    expect_error(capsys, ["compile", "tiny", "-o", "/proc/llmc-x/out"], "/proc/llmc-x")


def test_out_is_a_symlink(capsys, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    expect_error(capsys, ["compile", "tiny", "-o", str(tmp_path / "link")], "not a directory")


def test_out_is_a_foreign_nonempty_dir(capsys, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    expect_error(capsys, ["compile", "tiny", "-o", str(d)], "not an llmc artifact")
    assert (d / "precious.txt").read_text() == "x"


def test_out_dir_not_writable(capsys, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    expect_error(capsys, ["compile", "tiny", "-o", str(ro / "out")], "not writable")


def test_overwrite_swaps_atomically_and_leaves_nothing(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["compile", "tiny", "-o", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    inode = out.stat().st_ino
    assert main(["compile", "tiny", "-o", str(out)]) == 0
    capsys.readouterr()
    assert out.stat().st_ino != inode  # a new directory took its place
    assert json.loads((out / "manifest.json").read_text())["created"] >= first
    assert leftovers(tmp_path, "out") == []


def test_stale_temp_dirs_of_dead_compiles_are_removed(capsys, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_cap())
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-abc123"
    stale.mkdir()
    (stale / "params.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{os.getpid()}-zzz"  # ours: alive, kept
    live.mkdir()
    assert main(["compile", "tiny", "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert not stale.exists() and live.exists()


def test_failed_compile_leaves_nothing(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect_error(capsys, ["compile", "tiny", "--passes", "nope", "-o", str(out)], "nope")
    assert not out.exists() and leftovers(tmp_path, "out") == []


def _cap() -> dict:
    env = dict(os.environ, LLMC_NO_PROGRESS="1")
    return dict(capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)


def test_concurrent_compiles_one_wins(tmp_path: Path) -> None:
    """While one compile holds OUT, a second one fails at once with one line."""
    from llmc.artifact import output_lock

    out = tmp_path / "out"
    with output_lock(out):
        p = subprocess.run(
            [sys.executable, "-m", "llmc.cli", "compile", "tiny", "-o", str(out)], **_cap()
        )
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "another llmc compile" in lines[0] and str(os.getpid()) in lines[0]
    assert not out.exists() and leftovers(tmp_path, "out") == []


def test_concurrent_compiles_race(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llmc.cli", "compile", "tiny", "-o", str(out)]
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cap()["env"]
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0
    for rc, err in results:
        if rc != 0:
            assert "another llmc compile" in err and len(err.strip().splitlines()) == 1
    assert (out / "manifest.json").is_file() and leftovers(tmp_path, "out") == []
    assert main(["run", str(out), "--prompt", "x", *TINY_ARGS]) == 0


def test_kill_during_overwrite_keeps_an_artifact(tmp_path: Path) -> None:
    """SIGKILL at any moment of a re-compile leaves OUT as the old or the new artifact."""
    out = tmp_path / "out"
    assert main(["compile", "tiny", "-o", str(out)]) == 0
    cmd = [sys.executable, "-m", "llmc.cli", "compile", "tiny", "-o", str(out)]
    for delay in (0.5, 1.5, 3.0):
        p = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_cap()["env"]
        )
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert (out / "manifest.json").is_file()
    assert main(["run", str(out), "--prompt", "x", *TINY_ARGS]) == 0  # also cleans the debris
    assert main(["compile", "tiny", "-o", str(out)]) == 0
    assert leftovers(tmp_path, "out") == []


def test_file_size_limit_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    p = subprocess.run(
        [sys.executable, "-m", "llmc.cli", "compile", "tiny", "-o", str(out)],
        preexec_fn=limit,
        **_cap(),
    )
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:") and "limit" in lines[0]
    assert not out.exists() and leftovers(tmp_path, "out") == []


# ------------------------------------------------------------------------- JSON and internals
def test_json_has_no_infinity(capsys) -> None:
    rc = main(["run", "tiny", "--prompt", "x", "--max-new-tokens", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Infinity" not in out and "NaN" not in out
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_max_new_tokens_zero(capsys) -> None:
    rc = main(["run", "tiny", "--prompt", "x", "--max-new-tokens", "0", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["new_tokens"] == 0


def test_internal_error_is_one_line_and_debug_shows_it(capsys, monkeypatch) -> None:
    import llmc.cli as cli

    def boom(a):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_targets", boom)  # build_parser reads it at each main()
    line = expect_error(capsys, ["targets", "--json"], "internal error", code=70)
    assert "ZeroDivisionError" in line and "--debug" in line
    with pytest.raises(ZeroDivisionError):
        main(["targets", "--debug"])
    monkeypatch.setenv("LLMC_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["targets"])


def test_os_errors_name_the_file(capsys, monkeypatch, tmp_path: Path) -> None:
    import llmc.cli as cli

    def denied(a):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "cmd_passes", denied)
    expect_error(capsys, ["passes"], f"{tmp_path / 'x'}: Permission denied", code=1)


def test_subprocess_error_is_one_json_object(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "llmc.cli", "eval", str(tmp_path / "nope"), "--json"], **_cap()
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    obj = json.loads(p.stdout)
    assert obj["kind"] == "ModelLoadError" and "nope" in obj["error"]


def test_too_little_space_is_refused_and_counts_only_stored_weights(tmp_path: Path, monkeypatch):
    """The free-space check refuses a model whose weights cannot fit, in one line and before
    writing; an architecture-only model (shapes, no weights in the artifact) needs code space
    only, so a 7B one compiles where its 13 GB of weights would not fit."""
    import shutil

    import llmc.compile as comp

    real = shutil.disk_usage

    def small(path):  # 200 MB free wherever the artifact goes
        u = real(path)
        return type(u)(u.total, u.used, 200 * 10**6)

    monkeypatch.setattr(comp.shutil, "disk_usage", small)
    with pytest.raises(comp.LlmcError, match=r"has 200 MB free, the artifact needs about"):
        comp.check_space(tmp_path / "a", 150 * 10**6)
    comp.check_space(tmp_path / "a", 50 * 10**6)  # 2 x 50 MB + code fits
    out = tmp_path / "arch"
    rc = main(["compile", "llama2-7b", "--target", "ref", "-o", str(out)])
    assert rc == 0 and (out / "manifest.json").exists()
