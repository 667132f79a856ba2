"""ffn-skip and ffn-drop: golden IR, exactness at the extremes (a threshold that never skips is the
dense model bit for bit; skipping every skippable block is ffn-drop of those blocks), per-row
decisions in a batch, the LM-ABI input ``decode_start``, and one-line errors for bad options."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from llmc.cli import main
from llmc.errors import PassError
from llmc.frontends import load_model
from llmc.ir import parse_graph, print_graph, verify
from llmc.ir.structure import LMAbiError, check_lm_abi
from llmc.ir.types import TensorType
from llmc.passes import PassContext, build_pipeline, list_passes
from llmc.runtime.lm import InterpLM, generate

LM3 = """
graph @lm3 {
  meta {"layer_prefix": "model.layers", "num_layers": 3}
  param @model.layers.0.mlp.weight : f32[4, 4] dense
  param @model.layers.1.mlp.weight : f32[4, 4] dense
  param @model.layers.2.mlp.weight : f32[4, 4] dense
  input %positions : i64[batch, seq]
  input %h : f32[batch, seq, 4]
  %w0 = param() {name = "model.layers.0.mlp.weight"} : f32[4, 4] @model.layers.0.mlp #ffn
  %f0 = linear(%h, %w0) : f32[batch, seq, 4] @model.layers.0.mlp #ffn
  %h0 = add(%h, %f0) : f32[batch, seq, 4] @model.layers.0
  %w1 = param() {name = "model.layers.1.mlp.weight"} : f32[4, 4] @model.layers.1.mlp #ffn
  %f1 = linear(%h0, %w1) : f32[batch, seq, 4] @model.layers.1.mlp #ffn
  %h1 = add(%h0, %f1) : f32[batch, seq, 4] @model.layers.1
  %w2 = param() {name = "model.layers.2.mlp.weight"} : f32[4, 4] @model.layers.2.mlp #ffn
  %f2 = linear(%h1, %w2) : f32[batch, seq, 4] @model.layers.2.mlp #ffn
  %h2 = add(%h1, %f2) : f32[batch, seq, 4] @model.layers.2
  return %h2
}
"""


def apply(spec: str, text: str = LM3) -> str:
    g = parse_graph(textwrap.dedent(text))
    build_pipeline(spec).run(g, PassContext())
    verify(g)
    return print_graph(g)


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_ffn_skip_golden() -> None:
    """Layer 0 (protected) is monitored; layer 1's FFN block moves into a cond; layer 2 runs."""
    assert apply("ffn-skip:threshold=0.9:warmup=2") == golden(
        """
        graph @lm3 {
          meta {"ffn_skip": {"monitor": [0], "skippable": [1], "threshold": 0.9, "warmup": 2}, "layer_prefix": "model.layers", "num_layers": 3}
          param @model.layers.0.mlp.weight : f32[4, 4] dense
          param @model.layers.1.mlp.weight : f32[4, 4] dense
          param @model.layers.2.mlp.weight : f32[4, 4] dense
          input %positions : i64[batch, seq]
          input %h : f32[batch, seq, 4]
          input %decode_start : i64[]
          %w0 = param() {name = "model.layers.0.mlp.weight"} : f32[4, 4] @model.layers.0.mlp #ffn
          %f0 = linear(%h, %w0) : f32[batch, seq, 4] @model.layers.0.mlp #ffn
          %h0 = add(%h, %f0) : f32[batch, seq, 4] @model.layers.0
          %0 = constant() {value = 2.0, dtype = "i64"} : i64[] @model.layers.0 #skip
          %1 = add(%decode_start, %0) : i64[] @model.layers.0 #skip
          %2 = ge(%positions, %1) : bool[batch, seq] @model.layers.0 #skip
          %3 = reshape(%2) {shape = ["batch", "seq", 1]} : bool[batch, seq, 1] @model.layers.0 #skip
          %4 = mul(%h, %h) : f32[batch, seq, 4] @model.layers.0 #skip
          %5 = reduce_sum(%4) {dims = [2], keepdim = true} : f32[batch, seq, 1] @model.layers.0 #skip
          %6 = mul(%h0, %h0) : f32[batch, seq, 4] @model.layers.0 #skip
          %7 = reduce_sum(%6) {dims = [2], keepdim = true} : f32[batch, seq, 1] @model.layers.0 #skip
          %8 = mul(%5, %7) : f32[batch, seq, 1] @model.layers.0 #skip
          %9 = sqrt(%8) : f32[batch, seq, 1] @model.layers.0 #skip
          %10 = constant() {value = 1e-12} : f32[] @model.layers.0 #skip
          %11 = maximum(%9, %10) : f32[batch, seq, 1] @model.layers.0 #skip
          %12 = mul(%h, %h0) : f32[batch, seq, 4] @model.layers.0 #skip
          %13 = reduce_sum(%12) {dims = [2], keepdim = true} : f32[batch, seq, 1] @model.layers.0 #skip
          %14 = div(%13, %11) : f32[batch, seq, 1] @model.layers.0 #skip
          %15 = constant() {value = 0.9} : f32[] @model.layers.0 #skip
          %16 = gt(%14, %15) : bool[batch, seq, 1] @model.layers.0 #skip
          %17 = where(%3, %16, %3) : bool[batch, seq, 1] @model.layers.0 #skip
          %18 = constant() {value = 1.0} : f32[] @model.layers.1 #skip
          %19 = cast(%17) {dtype = "f32"} : f32[batch, seq, 1] @model.layers.1 #skip
          %20 = sub(%18, %19) : f32[batch, seq, 1] @model.layers.1 #skip
          %21 = reduce_max(%20) {dims = [0, 1, 2]} : f32[] @model.layers.1 #skip
          %22 = constant() {value = 0.5} : f32[] @model.layers.1 #skip
          %23 = lt(%21, %22) : bool[] @model.layers.1 #skip
          %30 = cond(%23, %17, %h0) {then_branch = region(%skip : bool[batch, seq, 1], %skip_24 : f32[batch, seq, 4]) {
              return %skip_24
            }, else_branch = region(%ffn : bool[batch, seq, 1], %ffn_25 : f32[batch, seq, 4]) {
              %26 = param() {name = "model.layers.1.mlp.weight"} : f32[4, 4] @model.layers.1.mlp #ffn
              %27 = linear(%ffn_25, %26) : f32[batch, seq, 4] @model.layers.1.mlp #ffn
              %28 = add(%ffn_25, %27) : f32[batch, seq, 4] @model.layers.1
              %29 = where(%ffn, %ffn_25, %28) : f32[batch, seq, 4] @model.layers.1 #skip
              return %29
            }} : f32[batch, seq, 4] @model.layers.1 #skip
          %w2 = param() {name = "model.layers.2.mlp.weight"} : f32[4, 4] @model.layers.2.mlp #ffn
          %f2 = linear(%30, %w2) : f32[batch, seq, 4] @model.layers.2.mlp #ffn
          %h2 = add(%30, %f2) : f32[batch, seq, 4] @model.layers.2
          %31 = gt(%positions, %positions) : bool[batch, seq] #skip
          %32 = reshape(%31) {shape = ["batch", "seq", 1]} : bool[batch, seq, 1] #skip
          %ffn_skipped = concat(%32, %17, %32) {dim = 2} : bool[batch, seq, 3] #skip
          return %h2, %ffn_skipped
        }
        """
    )


def test_ffn_drop_golden() -> None:
    assert apply("ffn-drop:layers=1") == golden(
        """
        graph @lm3 {
          meta {"layer_prefix": "model.layers", "num_layers": 3}
          param @model.layers.0.mlp.weight : f32[4, 4] dense
          param @model.layers.2.mlp.weight : f32[4, 4] dense
          input %positions : i64[batch, seq]
          input %h : f32[batch, seq, 4]
          %w0 = param() {name = "model.layers.0.mlp.weight"} : f32[4, 4] @model.layers.0.mlp #ffn
          %f0 = linear(%h, %w0) : f32[batch, seq, 4] @model.layers.0.mlp #ffn
          %h0 = add(%h, %f0) : f32[batch, seq, 4] @model.layers.0
          %w2 = param() {name = "model.layers.2.mlp.weight"} : f32[4, 4] @model.layers.2.mlp #ffn
          %f2 = linear(%h0, %w2) : f32[batch, seq, 4] @model.layers.2.mlp #ffn
          %h2 = add(%h0, %f2) : f32[batch, seq, 4] @model.layers.2
          return %h2
        }
        """
    )


def test_both_passes_are_listed(capsys) -> None:
    listed = dict(list_passes())
    assert "unavailable" not in listed["ffn-skip"] + listed["ffn-drop"]
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "ffn-skip" in out and "ffn-drop" in out


# ----------------------------------------------------------------------------------------------
# on tiny


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny").graph


def _pass(graph, spec: str):
    g = graph.copy()
    report = build_pipeline(spec).run(g, PassContext(calib_samples=8, calib_seqlen=128))
    verify(g)
    return g, report[0]


PROMPT = list(b"def parse(self, text):\n    ")


def test_threshold_that_never_skips_is_dense_bit_for_bit(tiny) -> None:
    g, rep = _pass(tiny, "ffn-skip:threshold=1.0:warmup=0")
    dense, skip = InterpLM(tiny), InterpLM(g)
    a, b = generate(dense, PROMPT, 24), generate(skip, PROMPT, 24)
    assert a.tokens == b.tokens
    assert skip.skip_stats()["ffn_skip_fraction"] == 0.0
    ids = torch.tensor([PROMPT * 2])
    skip.decode_start = 0  # every row may skip; none does
    assert torch.equal(dense.logits(ids), skip.logits(ids))
    assert not skip.last_skips.any()
    assert rep["layers_skippable"] == [1, 2] and rep["threshold"] == 1.0


def test_skipping_every_block_equals_ffn_drop_of_those_blocks(tiny) -> None:
    g, rep = _pass(tiny, "ffn-skip:threshold=-1:warmup=0:monitor=0")
    d, _ = _pass(tiny, "ffn-drop:layers=1|2")
    skip, drop = InterpLM(g), InterpLM(d)
    skip.decode_start = 0
    ids = torch.tensor([PROMPT, PROMPT[::-1]])
    assert torch.equal(skip.logits(ids), drop.logits(ids))
    assert skip.last_skips[..., 1:3].all() and not skip.last_skips[..., [0, 3]].any()
    st = skip.skip_stats()
    assert st["ffn_skip_fraction"] == 0.5 and st["ffn_skip_histogram"] == [
        0,
        2 * len(PROMPT),
        2 * len(PROMPT),
        0,
    ]


def test_prompt_rows_never_skip(tiny) -> None:
    g, _ = _pass(tiny, "ffn-skip:threshold=-1:warmup=3")
    lm = InterpLM(g)
    generate(lm, PROMPT, 10)  # prefill the prompt, 9 decode calls, the first 3 full
    assert lm.skip_stats() == {
        "ffn_skip_fraction": 6 * 2 / (9 * 4),
        "ffn_skip_histogram": [0, 6, 6, 0],
        "ffn_decode_rows": 9,
    }
    lm.reset_skip_stats()
    lm.logits(torch.tensor([PROMPT]))  # no decode_start given: the dense model
    assert not lm.last_skips.any() and lm.skip_stats()["ffn_decode_rows"] == 0


def test_batch_rows_decide_alone(tiny) -> None:
    """In a batch each row takes the decisions it takes alone (the cond runs the block if any row
    needs it; saturated rows keep their input)."""
    g, rep = _pass(tiny, "ffn-skip:ratio=0.3")
    lm = InterpLM(g)
    lm.decode_start = 1
    a = list(b"    return self._cache[key]\n\n    def close(self):\n        self.fp.close()\n")
    b = list(b"import os\nimport sys\n\nfrom typing import Any, Optional\n\nclass Reader:\n   ")
    n = min(len(a), len(b))
    both = lm.logits(torch.tensor([a[:n], b[:n]]))
    skips = lm.last_skips.clone()
    assert skips.any() and not skips.all()
    for i, row in enumerate((a[:n], b[:n])):
        alone = lm.logits(torch.tensor([row]))
        torch.testing.assert_close(both[i], alone[0], atol=1e-4, rtol=1e-4)
        assert torch.equal(skips[i], lm.last_skips[0])


def test_decode_start_is_an_optional_abi_input(tiny) -> None:
    g, _ = _pass(tiny, "ffn-skip:threshold=0.99")
    abi = check_lm_abi(g)
    assert abi.extra == ("decode_start",) and abi.takes_decode_start
    assert not check_lm_abi(tiny).takes_decode_start
    g.inputs[-1].type = TensorType((), "f32")
    with pytest.raises(LMAbiError, match="i64\\[\\] scalars among decode_start"):
        check_lm_abi(g)


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("ffn-skip:ratio=1.0", "ratio must be in [0, 1), got 1.0"),
        ("ffn-skip:ratio=-0.1", "ratio must be in [0, 1), got -0.1"),
        ("ffn-skip:ratio=0.2:threshold=0.9", "give ratio or threshold, not both"),
        ("ffn-skip:protect=3", "protect=3 must be in 0..2"),
        ("ffn-skip:ratio=0.6", "ratio=0.6 is more than the 0.5 this model can skip"),
        ("ffn-skip:monitor=3", "monitor layer 3"),
        ("ffn-skip:warmup=-1", "warmup must be >= 0"),
        ("ffn-drop:ratio=1.5", "ratio must be in [0, 1), got 1.5"),
        ("ffn-drop:protect=3", "protect=3 must be in 0..2"),
        ("ffn-drop:ratio=0.2:layers=1", "give ratio or layers, not both"),
        ("ffn-drop:layers=x", "layers must list layer indices"),
    ],
)
def test_bad_options_fail_in_one_line(tiny, spec, msg) -> None:
    with pytest.raises(PassError) as e:
        _pass(tiny, spec)
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_model_without_ffn_blocks_is_refused() -> None:
    text = LM3.replace("#ffn", "#attn")
    for name in ("ffn-skip:threshold=0.5", "ffn-drop:layers=1"):
        with pytest.raises(PassError, match="no FFN blocks to skip"):
            apply(name, text)


def test_ffn_skip_twice_is_refused(tiny) -> None:
    g, _ = _pass(tiny, "ffn-skip:threshold=0.9")
    with pytest.raises(PassError, match="already skips FFN blocks"):
        build_pipeline("ffn-skip:threshold=0.9").run(g, PassContext())


def test_cli_eval_reports_skip_fraction(monkeypatch, capsys, tmp_path) -> None:
    import json

    import llmc.compile
    from llmc.tokenizer import ByteTokenizer
    from tests.lm_fixtures import toy_lm

    def fake_load(spec, *, allow_pickle=False, dtype=None):
        return llmc.compile.Loaded(toy_lm(layers=4, vocab=256), ByteTokenizer(), "toy", "toy")

    monkeypatch.setattr(llmc.compile, "load", fake_load)
    spec = "ffn-skip:ratio=0.25"
    args = ["--passes", spec, "--calib-samples", "4", "--calib-seqlen", "64", "--json"]
    assert main(["eval", "toy", "--max-tokens", "512", "--window", "64", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["ffn_skip_fraction"] <= 0.5 and len(out["ffn_skip_histogram"]) == 4
    rep = out["pass_report"][0]
    assert rep["layers_skippable"] == [1, 2] and -1 <= rep["threshold"] <= 1
    assert abs(rep["expected_skip_fraction"] - 0.25) < 0.05
    assert main(["eval", "toy", "--max-tokens", "256", "--window", "64", "--json"]) == 0
    assert "ffn_skip_fraction" not in json.loads(capsys.readouterr().out)  # dense: no field


def test_fpga_targets_take_the_skip() -> None:
    """u280 / vhk158 lower the cond to a predicated branch (tests/fpga/test_ffn_skip.py)."""
    g = parse_graph(textwrap.dedent(LM3))
    build_pipeline("ffn-skip:threshold=0.9").run(g, PassContext(target="u280"))
    assert any(n.op == "cond" for n in g.nodes)


def test_cuda_target_builds_the_skip_with_a_bitwise_select(tiny, tmp_path) -> None:
    """TVM 0.27's CUDA codegen turned the per-row keep mask (a select on a bool tensor fused into
    a matmul epilogue) into ``float2 v = make_ushort2(..)``, which nvcc rejected; the rule
    ``cuda.where.bits`` selects on the float's bits instead (bit-exact: tests/backends)."""
    from llmc.backends.toolchain import ToolchainError
    from llmc.compile import Loaded, compile_model

    g, _ = _pass(tiny, "ffn-skip:threshold=0.9")
    try:
        compile_model(Loaded(g, None, "tiny", "tests"), target="h100", out=tmp_path / "a")
    except ToolchainError as e:
        pytest.skip(str(e))
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())["backend"]
    assert man["lowering_rules"].get("cuda.where.bits", 0) >= 1
    assert man["lowering_rules"].get("cond", 0) >= 1 and man["device_code"]


def test_refine_measures_the_skip_graph_on_the_calibration_text(tiny) -> None:
    g, rep = _pass(tiny, "ffn-skip:ratio=0.3:refine=3")
    steps = rep["refine_steps"]
    assert 1 <= len(steps) <= 3 and steps[0][0] == 0.3
    best = min(steps, key=lambda x: abs(x[2] - 0.3))
    assert rep["threshold"] == best[1] and rep["expected_skip_fraction"] == best[2]
    assert abs(rep["expected_skip_fraction"] - 0.3) < 0.05


# ----------------------------------------------------------------------------------------------
# on random LLM-shaped graphs (every family shape the fuzz strategy draws)

from hypothesis import event, given, settings  # noqa: E402

from tests.fuzz_common import ADAPTIVE, is_clean_refusal, pass_specs  # noqa: E402
from tests.hypothesis_profiles import examples  # noqa: E402
from tests.ir.strategies_lm import LMCase, lm_cases  # noqa: E402


@settings(max_examples=examples(1.0), deadline=None)
@given(case=lm_cases(formats={"dense"}), spec=pass_specs(ADAPTIVE))
def test_random_lms_skip_or_refuse_cleanly(case: LMCase, spec: str) -> None:
    from llmc.runtime.interp import run

    g = case.graph.copy()
    try:
        build_pipeline(spec).run(g, PassContext(calib_inputs=[case.inputs]))
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions
        assert is_clean_refusal(e), f"{spec}: {type(e).__name__}: {e}"
        event(f"refused: {str(e).split(': ')[-1][:40]}")
        return
    event("rewritten")
    verify(g)
    inputs = dict(case.inputs)
    if any(v.name == "decode_start" for v in g.inputs):
        inputs["decode_start"] = torch.tensor(0, dtype=torch.int64)
    outs = run(g, inputs)
    want = run(case.graph, case.inputs)
    if spec.startswith("ffn-skip"):  # it reports its decisions in the output ffn_skipped
        assert g.outputs[-1].name == "ffn_skipped" and len(outs) == len(want) + 1
    if "threshold=1.0" in spec:  # never skips: the input graph's values exactly
        assert not outs[-1].any()
        for a, b in zip(outs, want, strict=False):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# every family the HF frontend reads (OPT runs its FFN on flattened [batch*seq] rows)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "qwen2", "gpt_neox", "mistral"])
def test_every_family_skips_as_ffn_drop(family, tmp_path) -> None:
    from tests.frontend.hf_models import FAMILIES, VOCAB

    if family not in FAMILIES:
        pytest.skip(f"no {family} in tests/frontend/hf_models.py")
    cfg_cls, model_cls, kw = FAMILIES[family]
    torch.manual_seed(0)
    model_cls(cfg_cls(**{**kw, "num_hidden_layers": 4})).eval().save_pretrained(tmp_path)
    g = load_model(str(tmp_path)).graph
    ids = torch.randint(0, VOCAB, (2, 5))
    never, _ = _pass(g, "ffn-skip:threshold=1.0:warmup=0")
    skip, _ = _pass(g, "ffn-skip:threshold=-1:warmup=0:monitor=0")
    drop, _ = _pass(g, "ffn-drop:layers=1|2")
    dense, nv, sk, dr = InterpLM(g), InterpLM(never), InterpLM(skip), InterpLM(drop)
    nv.decode_start = sk.decode_start = 0
    assert torch.equal(nv.logits(ids), dense.logits(ids))
    assert torch.equal(sk.logits(ids), dr.logits(ids))
    st = sk.skip_stats()
    assert st["ffn_skip_fraction"] == 0.5 and st["ffn_skip_histogram"] == [0, 10, 10, 0]
