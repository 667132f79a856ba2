"""Unsupported architectures are refused from config.json alone, in well under a second, before
torch or transformers are imported (llmc.frontends.archs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmc.errors import ModelLoadError
from llmc.frontends.archs import SUPPORTED, precheck_dir, refusal

ROOT = Path(__file__).resolve().parents[2]


def test_supported_mirrors_the_families():
    from llmc.frontends.families import FAMILIES

    assert SUPPORTED == {a: f.model_type for f in FAMILIES.values() for a in f.architectures}


def _dir(tmp_path: Path, cfg: dict) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


PROBE = """
import sys, time
t = time.perf_counter()
from llmc.cli import main
rc = main(["compile", sys.argv[1], "--target", "cpu"])
print(rc, round(time.perf_counter() - t, 3), "torch" in sys.modules, "transformers" in sys.modules)
"""


def test_cli_refuses_unsupported_fast_without_torch(tmp_path):
    d = _dir(tmp_path, {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"})
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(d)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    wall = time.perf_counter() - t0
    rc, inner, torch_loaded, tf_loaded = r.stdout.split()
    assert rc == "2" and torch_loaded == "False" and tf_loaded == "False", r.stdout
    assert float(inner) < 1.0 and wall < 5.0  # the process (interpreter start included)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "config.json: architecture DeepseekV3ForCausalLM is not supported" in lines[0]
    assert "latent attention" in lines[0]


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"architectures": ["BloomForCausalLM"]}, "ALiBi"),
        ({"architectures": ["SomethingNewForCausalLM"]}, "SomethingNewForCausalLM is not supp"),
        ({"architectures": ["Gemma3ForConditionalGeneration"]}, "text-only"),
        ({"architectures": ["FalconForCausalLM"], "alibi": True}, "alibi: true"),
        (
            {"architectures": ["Gemma3ForCausalLM"], "use_bidirectional_attention": True},
            "use_bidirectional_attention",
        ),
        (
            {"architectures": ["Phi3ForCausalLM"], "rope_scaling": {"type": "longrope"}},
            "rope_scaling.type is 'longrope'",
        ),
        (
            {
                "architectures": ["Gemma3ForCausalLM"],
                "rope_parameters": {"full_attention": {"rope_type": "yarn"}},
            },
            "rope_parameters.full_attention.rope_type is 'yarn'",
        ),
    ],
)
def test_refusals_name_the_file_and_the_reason(tmp_path, cfg, match):
    d = _dir(tmp_path, cfg)
    with pytest.raises(ModelLoadError, match=match) as e:
        precheck_dir(d)
    assert str(e.value).startswith(str(d / "config.json"))
    assert "\n" not in str(e.value)
    # the full loader says the same
    from llmc.frontends import load_model

    with pytest.raises(ModelLoadError, match=match):
        load_model(str(d))


def test_supported_and_malformed_configs_pass_the_precheck(tmp_path):
    assert refusal({"architectures": ["Gemma2ForCausalLM"]}, "c") is None
    assert refusal({"architectures": "nope"}, "c") is None  # hf_config says it precisely
    d = _dir(tmp_path, {"architectures": ["Phi3ForCausalLM"]})
    precheck_dir(d)
    (d / "config.json").write_text("{not json")
    precheck_dir(d)
