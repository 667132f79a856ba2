"""``llmc study sweep``: grids, feasibility, cached quality, Pareto fronts, report files."""

from __future__ import annotations

import csv
import json
import math

import pytest

from llmc.cli import main
from llmc.codesign.study import (
    Study,
    StudyError,
    pareto,
    parse_grid,
    parse_vary,
    run_study,
)

# tiny is read and traced once for the file (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("tiny_loads_cached")


def test_parse_vary_and_grid() -> None:
    a = parse_vary("hbm.bandwidth_gbs=460, 819.2")
    assert a.key == "hbm.bandwidth_gbs" and a.values == ("460", "819.2")
    for bad in ("hbm.bandwidth_gbs", "=1,2", "k=", "k=1,1"):
        with pytest.raises(StudyError):
            parse_vary(bad)
    assert parse_grid("dense;rtn:bits=8:group=0") == ("", "rtn:bits=8:group=0")
    assert parse_grid(None) == ("",)
    for bad in ("", ";", "dense;none"):
        with pytest.raises(StudyError):
            parse_grid(bad)
    with pytest.raises(StudyError, match="metric"):
        Study("tiny", "u280", metric="speed")
    with pytest.raises(StudyError, match="twice"):
        Study("tiny", "u280", axes=(parse_vary("a=1"), parse_vary("a=2")))


def test_pareto_front() -> None:
    rows = [
        {"id": 0, "feasible": True, "m": 10.0, "perplexity": 3.0, "price_usd": 1.0},
        {"id": 1, "feasible": True, "m": 20.0, "perplexity": 3.5, "price_usd": 1.0},
        {"id": 2, "feasible": True, "m": 9.0, "perplexity": 3.2, "price_usd": 1.0},  # dominated
        {"id": 3, "feasible": False, "m": math.nan},
        {"id": 4, "feasible": True, "m": 20.0, "perplexity": 3.5, "price_usd": 2.0},  # dominated
    ]
    assert [r["id"] for r in pareto(rows, "m")] == [1, 0]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LLMC_CACHE_DIR", str(d))
    return d


def test_sweep_fpga_with_quality(tmp_path, cache) -> None:
    study = Study(
        "tiny",
        "u280",
        axes=(parse_vary("hbm.bandwidth_gbs=100,460"), parse_vary("dsp.total=10,9000")),
        grid=parse_grid("dense;rtn:bits=8:group=0"),
        prompt=32,
        decode=16,
        window=64,
        max_tokens=1024,
        jobs=1,
    )
    out = tmp_path / "study"
    res = run_study(study, out)
    names = {p.name for p in out.iterdir()}
    assert {"points.csv", "points.json", "pareto.csv", "pareto.png", "heatmap.png"} <= names
    assert {"report.md", "report.html"} <= names
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert len(rows) == 8
    bad = [r for r in rows if r["feasible"] == "False"]
    assert len(bad) == 4 and all("dsp.total" in r["reason"] for r in bad)
    assert all(r["hw.dsp.total"] == "10" for r in bad)
    ok = {
        (r["passes"], r["hw.hbm.bandwidth_gbs"]): float(r["decode_tokens_per_s"])
        for r in rows
        if r["feasible"] == "True"
    }
    assert ok[("dense", "460")] > ok[("dense", "100")]
    assert ok[("rtn:bits=8:group=0", "460")] > ok[("dense", "460")]  # int8 moves fewer bytes
    q = res.quality
    assert q[""]["perplexity"] > 1 and q[""]["agreement"] == 1.0
    assert q["rtn:bits=8:group=0"]["agreement"] < 1.0
    assert {r["id"] for r in res.pareto} <= {r["id"] for r in res.rows if r["feasible"]}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    # a second study over other hardware reuses the measured quality
    again = run_study(
        Study(
            "tiny",
            "u280",
            axes=(parse_vary("clock_mhz=200,250"),),
            grid=parse_grid("rtn:bits=8:group=0"),
            prompt=32,
            decode=16,
            window=64,
            max_tokens=1024,
            jobs=1,
        ),
        tmp_path / "study2",
    )
    assert again.quality["rtn:bits=8:group=0"]["cached"] is True
    assert (
        again.quality["rtn:bits=8:group=0"]["perplexity"] == q["rtn:bits=8:group=0"]["perplexity"]
    )
    assert not (tmp_path / "study2" / "heatmap.png").exists()  # one varied key: no heat map


def test_sweep_in_worker_processes_equals_serial(tmp_path, cache) -> None:
    kw = dict(
        axes=(parse_vary("hbm.bandwidth_gbs=100,200,460"),),
        grid=parse_grid("dense;rtn:bits=4:group=64"),
        prompt=32,
        decode=16,
        quality=False,
    )
    serial = run_study(Study("tiny", "u280", jobs=1, **kw), tmp_path / "a")
    par = run_study(Study("tiny", "u280", jobs=2, **kw), tmp_path / "b")
    key = lambda r: (r["id"], r["decode_tokens_per_s"], r["prefill_ms"])  # noqa: E731
    assert [key(r) for r in serial.rows] == [key(r) for r in par.rows]


def test_sweep_gpu_roofline_and_memory(tmp_path, cache) -> None:
    res = run_study(
        Study(
            "llama2-7b",
            "h100",
            grid=parse_grid("dense;rtn:bits=4:group=128"),
            batch=512,
            prompt=2048,
            decode=2048,
            quality=False,
            jobs=1,
        ),
        tmp_path / "g",
    )
    by = {r["passes"]: r for r in res.rows}
    # 512 x 4096 tokens of LLaMA2-7B KV cache (1 TiB) cannot fit 80 GB: infeasible, not a crash
    assert not by["dense"]["feasible"] and "memory" in by["dense"]["reason"]


def test_cli_errors_are_one_line(tmp_path, capsys, cache) -> None:
    base = ["study", "sweep", "tiny", "--target", "u280", "--no-quality", "-j", "1"]
    for extra, word in (
        (["--vary", "dsp.totl=1,2"], "dsp.totl"),
        (["--vary", "dsp.total=abc"], "dsp.total"),
        (["--vary", "hbm.bandwidth_gbs=-5"], "hbm.bandwidth_gbs"),
        (["--passes-grid", ";"], "passes-grid"),
        (["--metric", "fast"], "metric"),
    ):
        rc = main([*base, *extra, "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert rc != 0 and err.count("\n") == 1 and word in err, (extra, err)
    assert not (tmp_path / "x").exists()


def test_cli_json(tmp_path, capsys, cache) -> None:
    rc = main(
        [
            "study",
            "sweep",
            "tiny",
            "--target",
            "u280",
            "--vary",
            "clock_mhz=200,300",
            "--no-quality",
            "-j",
            "1",
            "--prompt",
            "16",
            "--decode",
            "8",
            "-o",
            str(tmp_path / "s"),
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 2 and out["feasible"] == 2 and len(out["pareto"]) == 1
