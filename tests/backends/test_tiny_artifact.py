"""The built-in ``tiny`` model compiled for the CPU: perplexity equals the interpreter's (within
0.5%), generation works through the public API; the CLI flow end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def tiny_cpu(tiny_cpu_artifact):
    """``llmc compile tiny --target cpu``, built once per run (tests/conftest.py)."""
    return tiny_cpu_artifact


def test_perplexity_matches_interpreter(tiny_cpu):
    from llmc.compile import load, runner_for
    from llmc.data import eval_windows
    from llmc.runtime.lm import InterpLM, evaluate

    loaded = load(str(tiny_cpu))
    lm = runner_for(loaded)
    assert type(lm).__name__ == "TVMRunner"
    windows = eval_windows(128, max_tokens=1024, tokenizer=loaded.tokenizer)
    got = evaluate(lm, windows, batch_size=4)
    want = evaluate(InterpLM(loaded.graph), windows, batch_size=4)
    assert abs(got.perplexity / want.perplexity - 1) < 0.005, (got.perplexity, want.perplexity)


def test_generate_and_bench(tiny_cpu):
    from llmc.runtime.tvm_runner import load

    lm = load(tiny_cpu)
    res = lm.generate([70, 111, 114], 12)
    assert len(res.tokens) == 12
    b = lm.bench(prompt_len=16, new_tokens=8, repeat=1)
    assert b["decode_tokens_per_s"] > 0 and b["device"].startswith("cpu")
    assert set(b) >= {"prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_token"}


@pytest.mark.slow
def test_cli_compile_run_bench_eval(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), LLMC_NO_PROGRESS="1")
    out = tmp_path / "tiny"

    def llmc(*args: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "llmc.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    llmc("compile", "tiny", "--target", "cpu", "-o", str(out))
    run = json.loads(llmc("run", str(out), "--prompt", "def ", "--max-new-tokens", "16", "--json"))
    assert run["new_tokens"] == 16
    bench = json.loads(
        llmc("bench", str(out), "--json", "--prompt-len", "32", "--new-tokens", "16")
    )
    assert bench["decode_tokens_per_s"] > 0
    ev_art = json.loads(llmc("eval", str(out), "--json", "--max-tokens", "2048"))
    ev_ref = json.loads(llmc("eval", "tiny", "--json", "--max-tokens", "2048"))
    assert abs(ev_art["perplexity"] / ev_ref["perplexity"] - 1) < 0.005
