"""The CLI over the pass API: bad input ends in one clear line and a non-zero exit; `llmc eval
--passes --json` reports perplexity and agreement. The model loader is replaced by the hand-built
toy LM so these run in a second (the real `tiny` goes through the CLI in test_plugin.py)."""

from __future__ import annotations

import json

import pytest

import llmc.compile
from llmc.cli import main
from llmc.tokenizer import ByteTokenizer
from tests.lm_fixtures import toy_lm


@pytest.fixture
def toy(monkeypatch):
    def fake_load(spec, *, allow_pickle=False, dtype=None):
        # a byte-vocabulary toy: its tokenizer is the byte one, given explicitly
        return llmc.compile.Loaded(toy_lm(vocab=256), ByteTokenizer(), "toy", "toy")

    monkeypatch.setattr(llmc.compile, "load", fake_load)


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("wanda:sparsity=1.5", "sparsity must be in [0, 1), got 1.5"),
        ("sparsegpt:pattern=3:2", "pattern 3:2 is impossible"),
        ("rtn:bits=0", "bits must be in 2..8, got 0"),
        ("wnada:sparsity=0.5", "unknown pass 'wnada'; did you mean 'wanda'?"),
        ("gptq:bits=4:group=128,", "empty pass"),
    ],
)
def test_bad_pass_specs_fail_in_one_line(toy, capsys, spec, msg) -> None:
    rc = main(["compile", "toy", "--passes", spec, "--dry-run"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("llmc: error: ") and msg in err, err


def test_short_calibration_file_fails_in_one_line(toy, capsys, tmp_path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("too short")
    rc = main(
        [
            "compile",
            "toy",
            "--passes",
            "gptq",
            "--calib",
            str(f),
            "--calib-seqlen",
            "64",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1
    assert "calibration text has 9 tokens, fewer than one window of --calib-seqlen 64" in err


def test_eval_with_passes_reports_perplexity_and_agreement(toy, capsys) -> None:
    rc = main(
        [
            "eval",
            "toy",
            "--passes",
            "wanda:pattern=2:4,rtn:bits=8:group=0",
            "--json",
            "--max-tokens",
            "2048",
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "64",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["perplexity"] > 1 and 0 <= out["agreement"] <= 1
    assert [r["pass"] for r in out["pass_report"]] == ["wanda", "rtn"]


def test_recipe_from_the_cli(toy, capsys, tmp_path) -> None:
    r = tmp_path / "r.yaml"
    r.write_text(
        "calibration: {samples: 4, seqlen: 32}\npasses:\n  - smoothquant: {alpha: 0.6}\n  - w8a8\n"
    )
    rc = main(["compile", "toy", "--recipe", str(r), "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [p["pass"] for p in out["passes"]] == ["smoothquant", "w8a8"]
    assert out["passes"][1]["calib_tokens"] == 4 * 32
