"""`llmc compile --target u280`: the artifact's files, and running it on the functional simulator."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from llmc.compile import Loaded, compile_model, load, runner_for
from llmc.fpga import isa
from llmc.fpga.arch import load_arch
from llmc.fpga.program import build_program
from llmc.frontends.canon import truncate_layers
from llmc.runtime.lm import InterpLM, generate
from tests.test_cli import assert_one_line_error, run_cli

RECIPE = "int4-8of16"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_graph):
    g = tiny_graph(RECIPE)
    g = truncate_layers(g, "model.layers", g.meta["num_layers"])  # a private copy
    out = tmp_path_factory.mktemp("fpga") / "tiny-u280"
    res = compile_model(Loaded(g, None, "tiny", "tiny"), target="u280", out=out)
    return out, res, tiny_graph(RECIPE)


def test_artifact_files(artifact):
    out, res, g = artifact
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"] == "u280" and man["runtime"] == "flightllm"
    files = man["fpga"]["files"]
    for f in ("arch.yaml", "memory.json", "hbm.bin", "sim.json", "instructions/index.json"):
        assert f in files and (out / "fpga" / f).is_file(), f
    assert any(f.startswith("hls/vectors/") for f in files)
    assert (out / "fpga" / "hls" / "run_csim.sh").is_file()
    # the board description round-trips, overrides and sources included
    arch = load_arch(str(out / "fpga" / "arch.yaml"))
    assert arch.to_dict() == load_arch("u280").to_dict()
    # one stream per bucket, as compiled, with its hash
    prog = build_program(g, arch)
    index = json.loads((out / "fpga" / "instructions" / "index.json").read_text())
    assert index["streams"] == len(prog.all_buckets()) == 2048 // 128 + 2048 // 16
    for e in index["entries"][:3] + index["entries"][-3:]:
        raw = (out / "fpga" / "instructions" / e["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == e["sha256"]
        assert raw == prog.stream(e["stage"], e["bucket"]).encode()
        assert len(isa.decode_stream(raw)) == e["instructions"]
    img = np.fromfile(out / "fpga" / "hbm.bin", dtype=np.uint8)
    assert np.array_equal(img, prog.hbm_image())
    # the report carries the simulation
    rep = res.report["fpga"]
    assert rep["decode_tokens_per_s"] > 0 and rep["instruction_bytes"] == index["bucketed_bytes"]
    assert "## fpga" in (out / "report.md").read_text()


def test_artifact_runs_on_the_functional_simulator(artifact):
    out, _, g = artifact
    lm = runner_for(load(str(out)))
    assert lm.device == "flightllm-funcsim"
    prompt = list(b"def f(x):\n    return")
    got = generate(lm, prompt, 6)
    want = generate(InterpLM(g), prompt, 6)
    assert got.tokens == want.tokens
    # batch rows run one after the other
    ids = np.array([prompt[:9], prompt[3:12]])
    import torch

    logits = lm.logits(torch.tensor(ids))
    ref = InterpLM(g).logits(torch.tensor(ids))
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-3)


def test_compile_bad_arch_override_leaves_nothing(capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_cli(
        capsys, "compile", "tiny", "--target", "u280", "--set", "hbm.eff_same=1.5", "-o", str(out)
    )
    assert_one_line_error(rc, err, "'hbm.eff_same'")
    assert not out.exists()
    # a board field on a CPU target: CPU targets take spec keys (llmc.targets.spec)
    rc, _, err = run_cli(capsys, "compile", "tiny", "--target", "cpu", "--set", "cores=2")
    assert_one_line_error(rc, err, "--set cores", "unknown spec key")


def test_bad_token_ids_are_refused(artifact):
    """The simulator indexes numpy arrays, where id -1 would read the last embedding row: the
    runner refuses it, and an id past the vocabulary, with the LanguageModel check."""
    import torch

    out, _, g = artifact
    lm = runner_for(load(str(out)))
    vocab = lm.vocab_size
    for bad in (-1, vocab):
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
            lm.forward(torch.tensor([[1, bad]]), torch.arange(2)[None], lm.empty_past(1))
