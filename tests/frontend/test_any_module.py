"""Stock Hugging Face encoders through ``file.py:factory``: compiled for ref and cpu, called with
``llmc run OUT --inputs`` / ``llmc.load(OUT)``, equal to transformers' outputs at fp32 tolerance."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llmc
from llmc.cli import main
from llmc.errors import InputError

FACTORIES = textwrap.dedent(
    """
    import torch
    import transformers as T

    def _ids():
        return torch.randint(0, 99, (1, 8), generator=torch.Generator().manual_seed(1))

    def bert():
        torch.manual_seed(0)
        cfg = T.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
        return T.BertModel(cfg).eval(), (_ids(),)

    def bert_masked():  # attention_mask as an input: padding hidden from attention
        m, (ids,) = bert()
        return m, (ids, torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]]))

    def distilbert():
        torch.manual_seed(0)
        cfg = T.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                 max_position_embeddings=64)
        return T.DistilBertModel(cfg).eval(), (_ids(),)

    def albert():
        torch.manual_seed(0)
        cfg = T.AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
        return T.AlbertModel(cfg).eval(), (_ids(),)

    def roberta():  # position ids from input_ids != pad: ne, cumsum; padding inside the input
        torch.manual_seed(0)
        cfg = T.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=37,
                              max_position_embeddings=64)
        return T.RobertaModel(cfg).eval(), (torch.tensor([[0, 5, 7, 1, 1, 9, 3, 2]]),)

    def t5():  # encoder: relative position bias as an additive attention mask
        torch.manual_seed(0)
        cfg = T.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
        return T.T5EncoderModel(cfg).eval(), (_ids(),)

    def gpt2():  # causal: the folded lower-triangular mask becomes attention(causal=True)
        torch.manual_seed(0)
        cfg = T.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=0, eos_token_id=0, use_cache=False)
        return T.GPT2Model(cfg).eval(), (_ids(),)

    def llama():  # bare LlamaModel: rotary tables folded, GQA's expand as copies
        torch.manual_seed(0)
        cfg = T.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                            max_position_embeddings=64, use_cache=False)
        return T.LlamaModel(cfg).eval(), (_ids(),)

    def vit():  # conv2d patch embedding
        torch.manual_seed(0)
        cfg = T.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
        return T.ViTModel(cfg).eval(), (x,)
    """
)
FAMILIES = ["bert", "bert_masked", "distilbert", "albert", "roberta", "t5", "gpt2", "llama", "vit"]
TARGETS = ["ref", "cpu"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("any_module") / "encoders.py"
    p.write_text(FACTORIES)
    return p


def _reference(factory_file: Path, family: str) -> tuple[tuple, list[torch.Tensor]]:
    from llmc.frontends.generic import load_factory

    model, example = load_factory(f"{factory_file}:{family}")
    with torch.no_grad():
        out = model(*example)
    assert getattr(out, "past_key_values", None) is None
    want = [out.last_hidden_state]
    if getattr(out, "pooler_output", None) is not None:
        want.append(out.pooler_output)
    return tuple(example), want


@pytest.fixture(scope="module")
def artifacts(factory_file, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every family compiled for every target, once for the module."""
    root = tmp_path_factory.mktemp("any_module_out")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in FAMILIES:
            for tgt in TARGETS:
                dest = root / f"{fam}-{tgt}"
                rc = main(["compile", f"{factory_file}:{fam}", "-o", str(dest), "--target", tgt])
                assert rc == 0, (fam, tgt)
                out[fam, tgt] = dest
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_load_matches_transformers(factory_file, artifacts, family, target):
    example, want = _reference(factory_file, family)
    got = llmc.load(str(artifacts[family, target]))(*example)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_cli_run_inputs_bert(factory_file, artifacts, tmp_path, capsys):
    """The done-when item: `llmc run OUT --inputs x.safetensors` equals transformers."""
    (ids,), want = _reference(factory_file, "bert")
    x, y = tmp_path / "x.safetensors", tmp_path / "y.safetensors"
    save_file({"input_ids": ids}, str(x))
    for target in TARGETS:
        art = artifacts["bert", target]
        rc, out, err = _cli(
            capsys, "run", str(art), "--inputs", str(x), "--outputs", str(y), "--json"
        )
        assert rc == 0, err
        report = json.loads(out)
        assert report["outputs"]["output_0"] == {"shape": [1, 8, 32], "dtype": "float32"}
        got = load_file(str(y))
        torch.testing.assert_close(got["output_0"], want[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["output_1"], want[1], rtol=1e-4, atol=1e-5)
    # default output file: next to the inputs
    rc, out, err = _cli(capsys, "run", str(artifacts["bert", "ref"]), "--inputs", str(x))
    assert rc == 0, err
    assert "output_1" in out
    assert (tmp_path / "x.out.safetensors").is_file()


def _one_line(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_input_errors(artifacts, tmp_path, capsys):
    art = str(artifacts["bert", "ref"])
    bad_name, bad_shape = tmp_path / "name.safetensors", tmp_path / "shape.safetensors"
    save_file({"ids": torch.zeros(1, 8, dtype=torch.int64)}, str(bad_name))
    save_file({"input_ids": torch.zeros(1, 4, dtype=torch.int64)}, str(bad_shape))
    rc, _, err = _cli(capsys, "run", art, "--inputs", str(bad_name))
    _one_line(rc, err, "unknown input 'ids'", "input_ids")
    rc, _, err = _cli(capsys, "run", art, "--inputs", str(bad_shape))
    _one_line(rc, err, "'input_ids'", "[1, 8]", "fixed")
    rc, _, err = _cli(capsys, "run", art, "--inputs", str(tmp_path / "missing.safetensors"))
    _one_line(rc, err, "missing.safetensors", "no such file")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    rc, _, err = _cli(capsys, "run", art, "--inputs", str(garbage))
    _one_line(rc, err, "garbage.safetensors", "not a safetensors file")
    assert not (tmp_path / "garbage.out.safetensors").exists()
    m = llmc.load(art)
    with pytest.raises(InputError, match="must be i64"):
        m(torch.zeros(1, 8, dtype=torch.int32))
    with pytest.raises(InputError, match="takes 1 input"):
        m()


def test_lm_commands_refuse_non_lm(artifacts, capsys):
    for target in TARGETS:
        art = str(artifacts["bert", target])
        for argv in (["run", art, "--prompt-ids", "1,2"], ["eval", art], ["bench", art]):
            rc, _, err = _cli(capsys, *argv)
            _one_line(rc, err, "not a language model", "--inputs")


def test_fpga_refuses_non_lm(factory_file, tmp_path, capsys):
    dest = tmp_path / "fpga"
    rc, _, err = _cli(
        capsys, "compile", f"{factory_file}:bert", "-o", str(dest), "--target", "u280"
    )
    _one_line(rc, err, "language models only", "ref or cpu")
    assert not dest.exists()


def test_general_gather_is_refused(tmp_path, capsys):
    """Ops outside the mapped cases are refused in one line naming the op and the source line."""
    p = tmp_path / "gather.py"
    p.write_text(
        "import torch\n"
        "class G(torch.nn.Module):\n"
        "    def forward(self, x, i):\n"
        "        return torch.gather(x, 1, i)\n"
        "def make():\n"
        "    return G(), (torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.int64))\n"
    )
    rc, _, err = _cli(capsys, "compile", f"{p}:make", "-o", str(tmp_path / "o"), "--target", "ref")
    _one_line(rc, err, "aten.gather", "gather.py")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "family",
    [
        # slow: bert_masked builds the same encoder for h100, plus the padding mask
        pytest.param("bert", marks=pytest.mark.slow),
        "bert_masked",
        "t5",
    ],
)
def test_cuda_build(factory_file, tmp_path, family):
    """The CUDA build of a stock encoder (no GPU needed to build): real sm_90 cubins for every
    kernel; calling it on a machine without the GPU is refused in one line. (A bool mask
    ``where`` fused into a matmul epilogue once reached nvcc as ``~`` on a ``uint2``: T5's
    constant one folds away, BERT's padding mask becomes a bias by arithmetic.)"""
    from llmc.backends import elfcheck
    from llmc.backends.toolchain import ToolchainError
    from llmc.compile import compile_model

    out = tmp_path / f"{family}-h100"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile_model(f"{factory_file}:{family}", target="h100", out=out)
    except ToolchainError as e:
        pytest.skip(str(e))
    cubins = elfcheck.find_cubins((out / "model.so").read_bytes())
    assert cubins and {c.arch for c in cubins} == {"sm_90"}
    kernels = set(json.loads((out / "manifest.json").read_text())["backend"]["kernels"])
    assert kernels <= {k.removesuffix("_kernel") for c in cubins for k in c.kernels}
    if not torch.cuda.is_available():
        with pytest.raises(llmc.errors.LlmcError, match="cuda") as e:
            llmc.load(str(out))
        assert "\n" not in str(e.value)


def test_llama_folded_rotary_tables_are_stored_once(factory_file, artifacts):
    """A stock LlamaModel recomputes its rotary cos/sin in every layer; constant folding finds
    the copies identical (by a hash of their bytes) and keeps one param each: 2 folded tensors
    for the 2-layer model, not 4, and the artifact (the module's ``llmc compile
    encoders.py:llama --target ref``) still equals transformers."""
    from safetensors import safe_open

    from llmc.frontends import load_model

    g = load_model(f"{factory_file}:llama").graph
    folded = {k: p for k, p in g.params.items() if k.startswith("folded.")}
    assert len(folded) == 2, sorted(folded)  # cos and sin, shared by both layers
    uses = [n for n in g.nodes if n.op == "param" and n.attrs.name in folded]
    assert len(uses) >= 4  # each layer still reads them (one param node per scope)
    out = artifacts["llama", "ref"]
    with safe_open(str(out / "params.safetensors"), framework="pt") as st:
        stored = sorted({k.split("::")[0] for k in st.keys() if k.startswith("folded.")})
    assert stored == sorted(folded)
    example, want = _reference(factory_file, "llama")
    torch.testing.assert_close(llmc.load(str(out))(*example), want[0], rtol=1e-4, atol=1e-5)
