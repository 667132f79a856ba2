"""``--format gguf``: tiny and a small random HF Llama -> export_gguf -> llmc's GGUF import ->
the interpreter's logits on the exported graph (f32 exact; f16 close; q8_0/q4_0 weights equal, bit
for bit, to llmc's codes times their float16 scales where RTN maps, else to gguf.quants' round
trip); the gguf reader sees llama.cpp's metadata and tensor types; bad input is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as T

from llmc.export_gguf import export_gguf
from llmc.export_hf import ExportError
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.passes.calibration import lm_inputs
from llmc.runtime.interp import run
from tests.frontend.hf_models import RMS, VOCAB, make

ROOT = Path(__file__).resolve().parents[2]
IDS = torch.tensor([list(b"hello world, the quick fox")])
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _logits(graph, ids=IDS) -> torch.Tensor:
    return run(graph, lm_inputs(graph, ids))[0]


def _expected(p, qtype: Q | None) -> torch.Tensor:
    """What a GGUF of ``qtype`` holds for ``p``: llmc's codes times float16 scales when they map,
    else gguf.quants' quantize/dequantize round trip of the value (1-D weights: the value)."""
    if qtype is None or len(p.type.shape) != 2:
        return p.value()
    if p.format.quant is not None:
        codes = p.data["qvalue"].float()
        scale = p.data["scale"].half().float()
        g = p.format.quant.group or codes.shape[1]
        rows = codes.shape[0]
        return (codes.reshape(rows, -1, g) * scale.unsqueeze(-1)).reshape(codes.shape)
    arr = gguf.quants.quantize(p.value().float().numpy(), qtype)
    return torch.from_numpy(gguf.quants.dequantize(arr, qtype))


@pytest.mark.parametrize(
    "gguf_type,spec",
    [
        ("f32", ""),
        ("f16", ""),
        ("q8_0", "rtn:bits=8:group=32:sym=true"),
        ("q4_0", "rtn:bits=4:group=32"),
        ("q8_0", "rtn:bits=4:group=64"),  # 4-bit codes fit int8; a group of 64 is two blocks
        ("q4_0", ""),
    ],
)
def test_tiny_round_trips_through_llmc_gguf_import(tiny, tmp_path, gguf_type, spec) -> None:
    g = tiny.graph.copy()
    if spec:
        build_pipeline(spec).run(g, PassContext())
    out = tmp_path / "tiny.gguf"
    info = export_gguf(g, out, gguf_type=gguf_type, tokenizer=tiny.tokenizer, config=tiny.config)
    n_quant = sum(p.format.quant is not None for p in g.params.values())
    if gguf_type.startswith("q") and spec:
        # 28 layer linears and the LM head (8 bits by default: Q8_0 even in a Q4_0 file)
        assert len(info["exact"]) == n_quant == 29 and not info["requantized"]
        assert sorted(info["quantized"]) == ["model.embed_tokens.weight"]
    back = load_model(str(out))
    qtype = Q[gguf_type.upper()] if gguf_type.startswith("q") else None
    for name, p in g.params.items():
        got = back.graph.params[name].value()
        want = _expected(p, qtype)
        if gguf_type == "f16" and len(p.type.shape) == 2:
            want = want.half().float()
        assert torch.equal(got, want), name
    # logits: the interpreter on the re-imported graph vs on the exported one
    a, b = _logits(g), _logits(back.graph)
    if gguf_type == "f32":
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    elif gguf_type == "f16":
        torch.testing.assert_close(b, a, rtol=0, atol=5e-2)
    # the tokenizer comes back encoding as llmc's byte tokenizer
    text = "naïve café 🙂 x"
    assert back.tokenizer.encode(text) == tiny.tokenizer.encode(text)


def test_tiny_q8_0_logits_equal_llmc_with_float16_scales(tiny, tmp_path) -> None:
    """RTN group 32 on every 2-D weight but the head/embedding, which q8_0 quantizes: with llmc's
    scales rounded to float16 and the two float tensors replaced by their Q8_0 round trip, the
    interpreter's logits on both graphs agree to float rounding."""
    g = tiny.graph.copy()
    build_pipeline("rtn:bits=8:group=32:sym=true").run(g, PassContext())
    out = tmp_path / "q8.gguf"
    export_gguf(g, out, gguf_type="q8_0", tokenizer=tiny.tokenizer, config=tiny.config)
    back = load_model(str(out))
    ref = g.copy()
    for p in ref.params.values():
        want = _expected(p, Q.Q8_0)
        if p.format.quant is not None:
            p.data = {**p.data, "scale": p.data["scale"].half().float()}
        else:
            p.data = {"value": want}
        p.invalidate()
    torch.testing.assert_close(_logits(back.graph), _logits(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "gguf_type,spec",
    [
        ("q4_0", "rtn:bits=4:group=32:scale_dtype=f16"),
        ("q8_0", "rtn:bits=8:group=32:scale_dtype=f16"),
    ],
)
def test_f16_scales_round_trip_bit_exactly(tiny, tmp_path, gguf_type, spec) -> None:
    """``scale_dtype=f16``: the GGUF blocks hold llmc's codes and its own half scales, so the
    re-imported weights are llmc's dequantized weights bit for bit (no float16 rounding on
    export), and the logits agree once the embedding (q-typed by gguf.quants) is the same."""
    g = tiny.graph.copy()
    build_pipeline(spec).run(g, PassContext())
    out = tmp_path / "s16.gguf"
    info = export_gguf(
        g, out, gguf_type=gguf_type, exact=True, tokenizer=tiny.tokenizer, config=tiny.config
    )
    assert len(info["exact"]) == 29 and not info["scale_rounded"] and not info["requantized"]
    back = load_model(str(out))
    ref = g.copy()
    for name, p in g.params.items():
        got = back.graph.params[name].value()
        if p.format.quant is not None:
            assert p.data["scale"].dtype == torch.float16
            assert torch.equal(got, p.value()), name  # llmc's own dequantized weight
        else:
            ref.params[name].data = {"value": got}  # the embedding as gguf.quants wrote it
            ref.params[name].invalidate()
    torch.testing.assert_close(_logits(back.graph), _logits(ref), rtol=1e-6, atol=1e-6)
    # float32 scales: the same codes, but the scales are rounded (and the summary says so)
    g32 = tiny.graph.copy()
    build_pipeline(spec.replace(":scale_dtype=f16", "")).run(g32, PassContext())
    info32 = export_gguf(
        g32, tmp_path / "s32.gguf", gguf_type=gguf_type, exact=True, tokenizer=tiny.tokenizer
    )
    assert sorted(info32["scale_rounded"]) == sorted(info32["exact"]) and info32["exact"]


def test_metadata_and_tensor_types(tiny, tmp_path) -> None:
    g = tiny.graph.copy()
    build_pipeline("rtn:bits=4:group=32").run(g, PassContext())
    out = tmp_path / "t.gguf"
    export_gguf(g, out, gguf_type="q4_0", tokenizer=tiny.tokenizer, config=tiny.config)
    r = gguf.GGUFReader(str(out))
    meta = {k: f.contents() for k, f in r.fields.items()}
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert meta["llama.block_count"] == 4
    assert meta["llama.context_length"] == 1024
    assert meta["llama.embedding_length"] == 256
    assert meta["llama.feed_forward_length"] == 704
    assert meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 64
    assert meta["llama.rope.freq_base"] == 10000.0
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["llama.vocab_size"] == 256
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == 256 and meta["tokenizer.ggml.merges"] == []
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert len(types) == 39
    # the head: rtn's head_bits=8, kept as Q8_0 (llama.cpp's q4_0 files keep output.weight above Q4_0)
    assert types["token_embd.weight"] == "Q4_0" and types["output.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == types["blk.3.ffn_down.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"


def _hf_llama(tmp_path: Path, tie: bool) -> Path:
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**RMS, tie_word_embeddings=tie)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path / f"hf-{tie}"
    model.save_pretrained(d)
    return d


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_random_hf_llama_round_trips(tmp_path, tie, gguf_type) -> None:
    lm = load_model(str(_hf_llama(tmp_path, tie)))
    g = lm.graph.copy()
    if gguf_type != "f32":
        # head=false: a quantized head would get its own copy (untied; test_quant_head.py)
        build_pipeline("rtn:bits=8:group=32:sym=true:head=false").run(g, PassContext())
    out = tmp_path / "m.gguf"
    info = export_gguf(g, out, gguf_type=gguf_type, tokenizer=lm.tokenizer, config=lm.config)
    assert info["tied_output"] == tie
    assert ("output.weight" in {t.name for t in gguf.GGUFReader(str(out)).tensors}) != tie
    back = load_model(str(out))
    assert back.config["tie_word_embeddings"] == tie
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    if gguf_type == "f32":  # q/k permutation and every name: the same logits
        torch.testing.assert_close(_logits(back.graph, ids), _logits(g, ids), rtol=1e-5, atol=1e-5)
    qtype = Q[gguf_type.upper()] if gguf_type != "f32" else None
    for name, p in back.graph.params.items():
        assert torch.equal(p.value(), _expected(g.params[name], qtype)), name


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_qwen2_attention_biases_round_trip(tmp_path, gguf_type) -> None:
    """Qwen2 (q/k/v biases, tied head) as a llama GGUF: biases permuted like their rows, a zero
    attn_output.bias, and the same logits after llmc's import."""
    d = tmp_path / "qwen2"
    make("qwen2").save_pretrained(d)
    lm = load_model(str(d))
    g = lm.graph.copy()
    if gguf_type != "f32":
        build_pipeline("rtn:bits=8:group=32:sym=true").run(g, PassContext())
    out = tmp_path / "q.gguf"
    info = export_gguf(g, out, gguf_type=gguf_type, config=lm.config)
    assert info["zero_biases"] == ["blk.0.attn_output.bias", "blk.1.attn_output.bias"]
    back = load_model(str(out))
    assert back.config["attention_bias"] is True
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    qtype = Q[gguf_type.upper()] if gguf_type != "f32" else None
    for name, p in g.params.items():
        assert torch.equal(back.graph.params[name].value(), _expected(p, qtype)), name
    if gguf_type == "f32":
        torch.testing.assert_close(_logits(back.graph, ids), _logits(g, ids), rtol=1e-5, atol=1e-5)


def test_ffn_biases_are_refused(tiny, tmp_path) -> None:
    g = tiny.graph.copy()
    build_pipeline("flap:ratio=0.25").run(g, PassContext(calib_samples=2, calib_seqlen=16))
    with pytest.raises(ExportError, match=r"mlp.down_proj.bias' .* attention biases only"):
        export_gguf(g, tmp_path / "f.gguf")


@pytest.mark.parametrize(
    "kind,match",
    [
        ("opt", "supports Llama-family graphs .* family 'opt'"),
        ("mistral", "sliding window of 4 < its context 64"),
        ("llama", "rope scaling 'llama3'"),
    ],
)
def test_unsupported_models_are_refused_in_one_line(tmp_path, kind, match) -> None:
    d = tmp_path / kind
    make(kind).save_pretrained(d)
    lm = load_model(str(d))
    with pytest.raises(ExportError, match=match) as e:
        export_gguf(lm.graph, tmp_path / "x.gguf", config=lm.config)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.gguf").exists()


def test_bad_options_are_refused_in_one_line(tiny, tmp_path) -> None:
    out = tmp_path / "x.gguf"
    with pytest.raises(ExportError, match="--gguf-type 'q5_k' is not supported"):
        export_gguf(tiny.graph, out, gguf_type="q5_k")
    g = tiny.graph.copy()
    build_pipeline("rtn:bits=4:group=16").run(g, PassContext())
    with pytest.raises(ExportError, match="group size 16 is not a multiple of 32"):
        export_gguf(g, out, gguf_type="q4_0", exact=True)
    # without --gguf-exact the weights are requantized and the summary says why
    info = export_gguf(g, out, gguf_type="q4_0")
    assert len(info["requantized"]) == 29 and not info["exact"]  # the head's group is 16 too
    assert set(info["requantized"].values()) == {"group size 16 is not a multiple of 32"}
    g8 = tiny.graph.copy()
    build_pipeline("rtn:bits=8:group=32:sym=true").run(g8, PassContext())
    with pytest.raises(ExportError, match="8-bit codes do not fit Q4_0's -8..7"):
        export_gguf(g8, tmp_path / "y.gguf", gguf_type="q4_0", exact=True)
    with pytest.raises(ExportError, match="exists; remove it"):
        export_gguf(tiny.graph, out, gguf_type="f32")


def test_cli_export_gguf(tmp_path, capsys) -> None:
    """`llmc export --format gguf` from a model name (in a process whose PATH has no toolchain)
    and from a compiled artifact (its codes, as compiled); a bad type is one line."""
    from llmc.cli import main

    out = tmp_path / "t.gguf"
    cmd = [sys.executable, "-m", "llmc.cli", "export", "tiny", "--format", "gguf"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [*cmd, "--gguf-type", "q8_0", "--passes", "rtn:bits=8:group=32:sym=true", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Q8_0: 29 weight(s) keep llmc's codes" in r.stdout
    assert gguf.GGUFReader(str(out)).fields["general.architecture"].contents() == "llama"
    # from a compiled artifact: its codes, as compiled (in this process: the same CLI)
    art = tmp_path / "art"
    spec = ["--passes", "rtn:bits=4:group=32"]
    assert main(["compile", "tiny", "--target", "ref", *spec, "-o", str(art)]) == 0
    capsys.readouterr()
    rc = main(["export", str(art), "--format", "gguf", "--gguf-type", "q4_0", "--gguf-exact",
               "-o", str(tmp_path / "a.gguf")])  # fmt: skip
    o, e = capsys.readouterr()
    assert rc == 0 and "Q4_0: 29 weight(s) keep llmc's codes" in o, e
    assert "1 weight(s) quantized at 8 bits by the passes written as Q8_0" in o
    rc = main(
        ["export", "tiny", "--format", "gguf", "--gguf-type", "q3", "-o", str(tmp_path / "b")]
    )
    e = capsys.readouterr().err
    assert rc != 0
    assert e.strip().count("\n") == 0 and "--gguf-type 'q3' is not supported" in e
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("gguf_type,spec", [("f32", ""), ("q8_0", "rtn:bits=8:group=32:sym=true")])
def test_llama_cpp_logits_match(tiny, tmp_path, gguf_type, spec) -> None:
    """llama.cpp itself (llama-cpp-python, optional) loads the file, tokenizes as llmc's byte
    tokenizer and computes llmc's logits: within llama.cpp's own rounding for f32 (measured max
    0.012 of |logits| up to 21.6), the same greedy tokens for q8_0 (llama.cpp also rounds the
    activations to 8 bits there; measured max 0.21)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    g = tiny.graph.copy()
    if spec:
        build_pipeline(spec).run(g, PassContext())
    out = tmp_path / "tiny.gguf"
    export_gguf(g, out, gguf_type=gguf_type, tokenizer=tiny.tokenizer, config=tiny.config)
    llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False)
    ids = IDS[0].tolist()
    llm.eval(ids)
    got = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    want = _logits(load_model(str(out)).graph)[0]
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    if gguf_type == "f32":
        torch.testing.assert_close(got, want, rtol=0, atol=5e-2)
    text = "naïve café 🙂"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == list(text.encode())


def test_cli_rejects_gguf_options_for_hf(tmp_path, capsys) -> None:
    from llmc.cli import main

    assert main(["export", "tiny", "--gguf-type", "q8_0", "-o", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--gguf-type and --gguf-exact apply to --format gguf only" in err
    assert "\n" not in err and not (tmp_path / "o").exists()


TEXTS = ["Hello world, hello there! Numbers 123 4567", "don't they're", "café naïve 🙂", ""]


@pytest.mark.parametrize("digits", [False, True])  # GPT-2's regex; SmolLM's split digits first
def test_byte_level_bpe_tokenizer_round_trips(tmp_path, digits) -> None:
    """An HF directory's byte-level BPE -> tokenizer.ggml.* (gpt2, merges, pre) -> llmc's GGUF
    import encodes as the original; and again from that GGUF (llmc's rebuilt tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    vocab = 320
    orig = Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False)
    orig.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
        if digits
        else bl
    )
    orig.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    orig.train_from_iterator(TEXTS * 50 + ["the quick brown fox jumps over"] * 50, trainer)
    vocab = orig.get_vocab_size()  # what the small corpus gives (about 320)
    torch.manual_seed(0)
    d = tmp_path / "hf"
    T.LlamaForCausalLM(T.LlamaConfig(**{**RMS, "vocab_size": vocab})).save_pretrained(d)
    T.PreTrainedTokenizerFast(tokenizer_object=orig, eos_token="<|endoftext|>").save_pretrained(d)
    lm = load_model(str(d))
    first = tmp_path / "a.gguf"
    info = export_gguf(lm.graph, first, tokenizer=lm.tokenizer, config=lm.config)
    pre = "smollm" if digits else "gpt-2"
    assert info["tokenizer"].startswith("gpt2 byte-level BPE") and repr(pre) in info["tokenizer"]
    meta = {k: f.contents() for k, f in gguf.GGUFReader(str(first)).fields.items()}
    assert meta["tokenizer.ggml.pre"] == pre and meta["tokenizer.ggml.eos_token_id"] == 0
    assert meta["tokenizer.ggml.token_type"][0] == 3  # <|endoftext|>: control
    back = load_model(str(first))
    second = tmp_path / "b.gguf"
    export_gguf(back.graph, second, tokenizer=back.tokenizer, config=back.config)
    again = load_model(str(second))
    for text in TEXTS:
        want = orig.encode(text).ids
        assert back.tokenizer.encode(text) == want == again.tokenizer.encode(text), text


def test_tokenizer_llama_cpp_cannot_hold_is_reported(tiny, tmp_path) -> None:
    from tokenizers import Tokenizer, models, normalizers

    from llmc.tokenizer import HFTokenizer

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    tk.normalizer = normalizers.Lowercase()
    tok = HFTokenizer(T.PreTrainedTokenizerFast(tokenizer_object=tk))
    info = export_gguf(tiny.graph, tmp_path / "w.gguf", gguf_type="f32", tokenizer=tok)
    assert info["tokenizer"].startswith("not written: only byte-level BPE")
    fields = gguf.GGUFReader(str(tmp_path / "w.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "no_vocab"
    assert load_model(str(tmp_path / "w.gguf")).tokenizer is None


def test_real_checkpoint_round_trips_as_q8_0(tmp_path) -> None:
    """SmolLM2-135M (Q4_1, when tools/fetch_real_model.py has cached it) -> q8_0 GGUF -> llmc:
    the same tokenizer ids and the same greedy next tokens on a prompt (measured: 13 of 13)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch", ROOT / "tools" / "fetch_real_model.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    src = fetch.model_path()
    if src is None:
        pytest.skip("real checkpoint absent: run python tools/fetch_real_model.py")
    lm = load_model(str(src))
    out = tmp_path / "smol.q8_0.gguf"
    info = export_gguf(lm.graph, out, gguf_type="q8_0", tokenizer=lm.tokenizer, config=lm.config)
    assert "pre 'smollm'" in info["tokenizer"]
    back = load_model(str(out))
    text = "The capital of France is Paris, and the capital of Italy is"
    assert back.tokenizer.encode(text) == lm.tokenizer.encode(text)
    ids = torch.tensor([lm.tokenizer.encode(text)])
    assert torch.equal(_logits(back.graph, ids).argmax(-1), _logits(lm.graph, ids).argmax(-1))
