"""A pass written in a separate package registers through the ``llmc.plugins`` entry point.

The fixture builds and installs ``tests/plugin_pkg`` with pip into a temporary target directory
(no network, no change to the shared virtual environment) and puts it on ``sys.path``, which is
exactly what installing the package into the environment does for entry-point discovery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmc.ir import GraphBuilder, TensorType, sym
from llmc.passes import PassContext, PipelineError, build_pipeline, get_pass, list_passes, registry

PKG = Path(__file__).resolve().parents[1] / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugin_site")
    src = tmp_path_factory.mktemp("plugin_src") / "pkg"  # pip writes build/ beside the source
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(target),
        str(src),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path_factory.mktemp("b"))
    if res.returncode != 0:
        pytest.fail(f"pip install of the test plugin failed:\n{res.stdout}\n{res.stderr}")
    sys.path.insert(0, str(target))
    registry.load_plugins(force=True)
    yield target
    sys.path.remove(str(target))
    for name in ("round-weights", "clip-weights", "break-ir"):
        registry.unregister_pass(name)
    for mod in [m for m in sys.modules if m.startswith("llmc_example_plugin")]:
        del sys.modules[mod]
    registry.load_plugins(force=True)


def mlp():
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((sym("batch"), 8), "f32"))
    with b.scope("fc1", "ffn"):
        h = b.emit("linear", x, b.param("fc1.weight", torch.randn(16, 8)))
    with b.scope("fc2", "ffn"):
        y = b.emit("linear", b.emit("relu", h), b.param("fc2.weight", torch.randn(4, 16)))
    b.output(y)
    return b.finish()


def test_plugin_passes_register_and_run(plugin_site) -> None:
    assert get_pass("round-weights").__module__ == "llmc_example_plugin.round_weights"
    names = dict(list_passes())
    assert names["round-weights"].startswith("Round every dense linear weight")
    assert names["clip-weights"].startswith("Clip every dense linear weight")
    g = mlp()
    report = build_pipeline("round-weights:frac_bits=2,clip-weights:k=3,dce").run(g, PassContext())
    w = g.params["fc1.weight"].data["value"]
    assert report[0]["weights_rounded"] == 2 and len(report[0]["layers"]) == 2
    assert "clipped" in report[1]
    assert float(w.abs().max()) <= 3 * 2.0  # clipped at 3 std of a ~N(0, 1) matrix


def test_plugin_option_errors_name_the_pass(plugin_site) -> None:
    with pytest.raises(Exception, match="pass 'round-weights': frac_bits must be in 0..24"):
        build_pipeline("round-weights:frac_bits=99")


def test_plugin_pass_breaking_the_ir_is_named(plugin_site) -> None:
    with pytest.raises(
        PipelineError, match=r"pass 'break-ir' \(#2 of 2, after dce\) left the IR invalid"
    ):
        build_pipeline("dce,break-ir").run(mlp(), PassContext())


def test_cli_lists_and_rejects_via_plugin(plugin_site) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_site), str(Path.cwd())]))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from llmc.cli import main; sys.exit(main(sys.argv[1:]))",
            "passes",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "round-weights" in res.stdout and "clip-weights" in res.stdout


def _cli(plugin_site, *args):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(plugin_site), str(Path.cwd())]),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "llmc.cli", *args], capture_output=True, text=True, env=env
    )


def test_plugin_pass_runs_from_llmc_compile(plugin_site) -> None:
    import json

    res = _cli(
        plugin_site,
        "compile",
        "tiny",
        "--passes",
        "round-weights:frac_bits=6,dce",
        "--dry-run",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert [p["pass"] for p in report["passes"]] == ["round-weights", "dce"]
    assert report["passes"][0]["weights_rounded"] == 29  # 28 layer linears + lm_head


def test_plugin_pass_breaking_the_ir_fails_the_cli_in_one_line(plugin_site) -> None:
    res = _cli(plugin_site, "compile", "tiny", "--passes", "dce,break-ir", "--dry-run")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        "llmc: error: pass 'break-ir' (#2 of 2, after dce) left the IR invalid"
    )
