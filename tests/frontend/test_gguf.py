"""GGUF import: tiny random Llama models written with gguf.GGUFWriter (quantized with gguf.quants)
match transformers on the same dequantized weights; tokenizers rebuilt from GGUF metadata encode
as the tokenizer they came from; bad files end in one ModelLoadError line naming the field."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import llmc.frontends.gguf as G
from llmc.errors import ModelLoadError
from llmc.frontends import load_model
from llmc.frontends.gguf_tokenizer import tokenizer_from_gguf
from llmc.runtime.interp import run

Q = gguf.GGMLQuantizationType
HIDDEN, INTER, LAYERS, HEADS, KV, VOCAB = 64, 128, 2, 4, 2, 64
BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def tiny_llama(tie: bool, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a wrong mapping shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``permute`` (what the importer must undo)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def quant(w: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def roundtrip(w: np.ndarray, qtype: Q) -> np.ndarray:
    """The values llmc must see: quantized, then dequantized (row-wise, so row order is free)."""
    if qtype in (Q.F32, Q.F16):
        return quant(w, qtype).astype(np.float32)
    return gguf.quants.dequantize(quant(w, qtype), qtype).astype(np.float32)


def gguf_tensors(model: LlamaForCausalLM, tie: bool) -> dict[str, np.ndarray]:
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    for i in range(LAYERS):
        for g, h in BLOCK.items():
            w = sd[f"model.layers.{i}.{h}.weight"]
            if g == "attn_q":
                w = permute(w, HEADS)
            elif g == "attn_k":
                w = permute(w, KV)
            out[f"blk.{i}.{g}.weight"] = w
    out["output_norm.weight"] = sd["model.norm.weight"]
    if not tie:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def llama_meta(**over) -> dict:
    meta = {
        "llama.block_count": LAYERS,
        "llama.context_length": 128,
        "llama.embedding_length": HIDDEN,
        "llama.feed_forward_length": INTER,
        "llama.attention.head_count": HEADS,
        "llama.attention.head_count_kv": KV,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
    }
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def write_gguf(path, tensors, *, qtype=Q.F32, meta=None, arch="llama", tok=None):
    """A GGUF file: ``meta`` key -> value (int: uint32, float: float32, str, list), 1-D tensors
    in F32 (as llama.cpp keeps norms), 2-D ones in ``qtype``."""
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in {**(meta if meta is not None else llama_meta()), **(tok or {})}.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v)
    for name, t in tensors.items():
        t = np.ascontiguousarray(t)
        if t.ndim == 1 or qtype in (Q.F32, Q.F16):
            w.add_tensor(name, quant(t, Q.F32 if t.ndim == 1 else qtype))
        else:
            w.add_tensor(name, quant(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(graph, ids: torch.Tensor) -> torch.Tensor:
    m = graph.meta
    empty = torch.zeros(ids.shape[0], m["num_kv_heads"], 0, m["head_dim"])
    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    return run(graph, [ids, pos, *([empty] * (2 * m["num_layers"]))])[0]


@pytest.mark.parametrize(
    "qtype,tie",
    [
        (Q.F32, False),
        (Q.F16, False),
        (Q.BF16, True),
        (Q.Q8_0, True),
        (Q.Q4_0, False),
        (Q.Q4_1, True),
        (Q.Q5_0, False),
        (Q.Q5_1, True),
    ],
    ids=lambda x: x.name if isinstance(x, Q) else ("tied" if x else "untied"),
)
def test_matches_transformers_on_dequantized_weights(tmp_path, qtype, tie):
    model = tiny_llama(tie)
    path = write_gguf(tmp_path / "m.gguf", gguf_tensors(model, tie), qtype=qtype)
    with torch.no_grad():  # the reference: the same weights, quantized and dequantized
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(roundtrip(p.numpy(), qtype)))
    lm = load_model(str(path))
    assert lm.config["tie_word_embeddings"] is tie and lm.tokenizer is None
    assert ("lm_head.weight" in lm.graph.params) is not tie
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
    got = logits(lm.graph, ids)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


# where each block type keeps its f16 scales (set to sane values; random bytes there may be NaN)
F16_FIELDS = {
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q8_0: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}


def test_dequantize_agrees_with_transformers(tmp_path):
    """gguf.quants cannot quantize k-quants, so random blocks are written instead, and llmc's
    reading of them is compared with transformers' independent torch dequantizer."""
    tf_dequant = pytest.importorskip("transformers.integrations.gguf.dequant").dequantize
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    blocks = {}
    for t, fields in F16_FIELDS.items():
        bs, ts = gguf.GGML_QUANT_SIZES[t]
        b = rng.integers(0, 256, (4, 512 // bs * ts), dtype=np.uint8)
        for row in b:
            per_block = row.reshape(-1, ts)
            for o in fields:
                scale = rng.uniform(1e-3, 5e-2, per_block.shape[0]).astype(np.float16)
                per_block[:, o : o + 2] = scale.view(np.uint8).reshape(-1, 2)
        blocks[t] = b
        w.add_tensor(f"{t.name}.weight", b, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = G.read_gguf(tmp_path / "q.gguf")
    for t, b in blocks.items():
        got = G.dequantize(f, f.tensors[f"{t.name}.weight"])
        want = tf_dequant(torch.from_numpy(b.reshape(-1).copy()), int(t)).reshape(4, 512)
        assert got.shape == (4, 512) and torch.equal(got, want), t.name


def test_directory_with_one_gguf(tmp_path):
    model = tiny_llama(True)
    write_gguf(tmp_path / "model.gguf", gguf_tensors(model, True), qtype=Q.Q8_0)
    lm = load_model(str(tmp_path))
    assert lm.graph.meta["num_layers"] == LAYERS and lm.source == str(tmp_path)
    write_gguf(tmp_path / "other.gguf", gguf_tensors(model, True))
    with pytest.raises(ModelLoadError, match="holds 2 GGUF files"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="missing.gguf: no such file"):
        load_model(str(tmp_path / "missing.gguf"))


# --- bad input: one line naming the file and the field; no tensor data read before the checks ---


@pytest.fixture
def no_dequant(monkeypatch):
    calls = []
    monkeypatch.setattr(G, "dequantize", lambda f, t: calls.append(t.name))
    return calls


def _tensors():
    return gguf_tensors(tiny_llama(False), False)


def _refused(path, pattern, no_dequant):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert re.search(pattern, msg), msg
    assert no_dequant == [], "tensor data was read before the checks"


@pytest.mark.parametrize(
    "over,pattern",
    [
        (
            {"llama.block_count": 3},
            r"lacks tensor 'blk\.2\..*', which llama\.block_count=3 implies",
        ),
        ({"llama.block_count": 1}, r"'blk\.1\..*block 1 but llama\.block_count is 1"),
        ({"llama.embedding_length": 48}, r"token_embd\.weight.*embedding_length=48.*\[64, 48\]"),
        ({"llama.feed_forward_length": 96}, r"ffn_.*feed_forward_length=96"),
        ({"llama.attention.head_count_kv": 4}, r"attn_k\.weight.*head_count_kv=4"),
        ({"llama.attention.head_count": 3}, r"llama\.embedding_length 64 is not a multiple"),
        ({"llama.block_count": None}, r"lacks 'llama\.block_count'"),
        ({"llama.block_count": "two"}, r"'llama\.block_count' = 'two' must be a positive integer"),
        ({"llama.rope.dimension_count": 8}, r"rope\.dimension_count 8 must equal the head size 16"),
        ({"llama.expert_count": 8}, r"expert_count = 8: mixture-of-experts"),
        ({"llama.vocab_size": 65}, r"'token_embd\.weight'.*vocab_size=65, .*\[65, 64\]"),
        (
            {"llama.vocab_size": 64, "tokenizer.ggml.tokens": ["a"] * 10},
            r"tokens has 10 entries but the vocabulary .* 64",
        ),
    ],
)
def test_lying_metadata(tmp_path, over, pattern, no_dequant):
    path = write_gguf(tmp_path / "bad.gguf", _tensors(), meta=llama_meta(**over))
    _refused(path, pattern, no_dequant)


def test_unknown_architecture(tmp_path, no_dequant):
    meta = {k.replace("llama.", "bert."): v for k, v in llama_meta().items()}
    path = write_gguf(tmp_path / "bert.gguf", _tensors(), meta=meta, arch="bert")
    _refused(path, r"general\.architecture 'bert' is not supported", no_dequant)


def test_unexpected_tensor(tmp_path, no_dequant):
    t = _tensors()
    t["rope_freqs.weight"] = np.ones(8, np.float32)
    _refused(
        write_gguf(tmp_path / "r.gguf", t), r"unexpected tensor 'rope_freqs\.weight'", no_dequant
    )


def _patch_type(path, name: str, raw: int) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(name.encode()) + len(name)
    (n_dims,) = struct.unpack_from("<I", data, i)
    struct.pack_into("<I", data, i + 4 + 8 * n_dims, raw)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "raw,pattern",
    [(99, r"'blk\.0\.ffn_up\.weight' has unknown ggml type 99"), (20, r"is IQ4_NL, a type llmc")],
)
def test_unknown_quantization_type(tmp_path, raw, pattern, no_dequant):
    path = write_gguf(tmp_path / "q.gguf", _tensors(), qtype=Q.Q8_0)
    _patch_type(path, "blk.0.ffn_up.weight", raw)
    _refused(path, pattern, no_dequant)


def test_truncated(tmp_path, no_dequant):
    path = write_gguf(tmp_path / "t.gguf", _tensors(), qtype=Q.Q4_0)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    _refused(path, r"tensor '.*' \(.*\) needs bytes .* truncated file", no_dequant)
    path.write_bytes(data[:200])
    _refused(path, r"not a readable GGUF file", no_dequant)
    path.write_bytes(b"")
    _refused(path, r"not a readable GGUF file", no_dequant)


def test_cli_one_line(tmp_path, capsys):
    from llmc.cli import main

    path = write_gguf(
        tmp_path / "bad.gguf", _tensors(), meta=llama_meta(**{"llama.block_count": 5})
    )
    rc = main(["compile", str(path), "--target", "ref", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err and "llama.block_count=5" in err, err
    assert not (tmp_path / "out").exists()


# --- tokenizers ----------------------------------------------------------------------------------

TEXTS = [
    "Hello world! The year 1999, 3.14159 and 42 apples.",
    "don't  stop   now\n\n\ttabs and  double  spaces ",
    "naïve café — 🙂 ünïcödé",
    "<|endoftext|>special<|endoftext|> in text",
    " leading space",
    "steps:\n   1. first\n   2. second  3",
    "",
]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Hello world, hello there! Numbers 123 456 7890 and 3.14.",
    "don't won't can't they're we've I'll she'd",
    "café naïve résumé ünïcödé",
] * 20


def _tokenizer_gguf(tmp_path, tok_meta):
    path = tmp_path / "tok.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in tok_meta.items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_array(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokenizer_from_gguf(G.read_gguf(path))


@pytest.mark.parametrize("pre", ["gpt-2", "smollm"])
def test_gpt2_tokenizer_encodes_as_original(tmp_path, pre):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    orig = Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False)
    orig.pre_tokenizer = (
        bl if pre == "gpt-2" else pre_tokenizers.Sequence([pre_tokenizers.Digits(True), bl])
    )
    orig.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    orig.train_from_iterator(CORPUS, trainer)
    model = json.loads(orig.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t == "<|endoftext|>" else 1 for t in tokens],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": 0,
    }
    tok = _tokenizer_gguf(tmp_path, meta)
    assert tok.vocab_size == len(tokens) and tok.eos_id == 0
    for s in TEXTS:
        assert tok.encode(s) == orig.encode(s).ids, s
        assert tok.decode(tok.encode(s)) == s


def spm_oracle(text: str, tokens: list[str], scores: list[float], types: list[int]) -> list[int]:
    """llama.cpp's llm_tokenizer_spm, transcribed: merge the adjacent pair whose concatenation is
    a token with the highest score (leftmost on ties), then byte fallback."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (1, 4)}
    syms = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            j = vocab.get(syms[i] + syms[i + 1])
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], i)
        if best is None:
            break
        i = best[1]
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    out = []
    for s in syms:
        if s in vocab:
            out.append(vocab[s])
        else:
            out.extend(tokens.index(f"<0x{b:02X}>") for b in s.encode())
    return out


def test_llama_spm_tokenizer_matches_llama_cpp_algorithm(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300))
    learned = sorted(t.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for rank, (piece, _) in enumerate(learned):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(rank))
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok = _tokenizer_gguf(tmp_path, meta)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, len(tokens))
    for s in TEXTS[:3] + TEXTS[4:5] + ["quick brown résumé 🙂 xyz"]:
        assert tok.encode(s) == spm_oracle(s, tokens, scores, types), s
        assert tok.decode(tok.encode(s)) == s


def test_tokenizer_saved_with_artifact_reloads(tmp_path):
    from llmc.tokenizer import load_tokenizer

    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "<|x|>"],
        "tokenizer.ggml.token_type": [1, 1, 1, 3],
        "tokenizer.ggml.merges": ["a b"],
    }
    tok = _tokenizer_gguf(tmp_path, meta)
    tok.save(tmp_path / "art")
    again = load_tokenizer(tmp_path / "art")
    for s in ["abab<|x|>ba", "aab"]:
        assert again.encode(s) == tok.encode(s) == tok.encode(s)


@pytest.mark.parametrize(
    "meta,pattern",
    [
        ({"tokenizer.ggml.model": "bert"}, r"tokenizer\.ggml\.model 'bert' is not supported"),
        ({"tokenizer.ggml.pre": "mystery"}, r"tokenizer\.ggml\.pre 'mystery' is not supported"),
        ({"tokenizer.ggml.merges": ["a c"]}, r"tokenizer\.ggml\.merges is inconsistent"),
        ({"tokenizer.ggml.token_type": [1]}, r"'tokenizer\.ggml\.token_type' has 1 entries"),
        ({"tokenizer.ggml.eos_token_id": 7}, r"'tokenizer\.ggml\.eos_token_id' = 7 is not a token"),
    ],
)
def test_bad_tokenizer_metadata(tmp_path, meta, pattern):
    base = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b"],
    }
    with pytest.raises(ModelLoadError, match=pattern):
        _tokenizer_gguf(tmp_path, {**base, **meta})


def test_gguf_special_files_and_links_out_of_a_directory(capsys, tmp_path: Path) -> None:
    """A FIFO named model.gguf is refused (not read, never hangs); a directory's GGUF that links
    outside the directory is refused, as model directories' files are."""
    import os

    from llmc.cli import main

    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    assert main(["compile", str(fifo), "--dry-run"]) != 0
    err = capsys.readouterr().err
    assert "expected a regular file" in err and len(err.strip().splitlines()) == 1
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF")
    d = tmp_path / "dir"
    d.mkdir()
    os.symlink(outside, d / "model.gguf")
    assert main(["compile", str(d), "--dry-run"]) != 0
    err = capsys.readouterr().err
    assert "outside the model directory" in err and len(err.strip().splitlines()) == 1


# --- the header reader (llmc's own, not gguf.GGUFReader: see G._Header) ---


def test_header_reads_every_value_type_as_gguf_does(tmp_path):
    """Every metadata value type, arrays of them, a non-default alignment: the same values and
    tensor offsets as gguf's reader; an array of arrays keeps its structure (gguf's
    ``contents()`` flattens it)."""
    path = tmp_path / "all.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    V = gguf.GGUFValueType
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁world")
    w.add_uint64("t.u64", 1 << 60)
    w.add_int64("t.i64", -(1 << 60))
    w.add_float64("t.f64", 1e300)
    w.add_array("t.strs", ["a", "", "ü" * 3])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_key_value("t.u8s", [1, 2, 255], V.ARRAY, V.UINT8)
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(7, dtype=np.float32))
    w.add_tensor("b", np.ones((3, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = gguf.GGUFReader(str(path))
    ours = G._Header(path)
    want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert want.pop("t.nested") == [1, 2, 3]
    assert {k: v for k, v in ours.fields.items() if k != "t.nested"} == want
    assert ours.fields["t.nested"] == [[1, 2], [3]] and ours.fields["t.f64"] == 1e300
    assert [(t.name, t.begin, t.shape) for t in ours.tensor_headers] == [
        (t.name, int(t.data_offset), tuple(int(x) for x in reversed(t.shape))) for t in ref.tensors
    ]
    assert all(t.begin % 64 == 0 for t in ours.tensor_headers)


def _header(n_kv: int, n_tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _key(k: str, vtype: int) -> bytes:
    return struct.pack("<Q", len(k)) + k.encode() + struct.pack("<I", vtype)


@pytest.mark.parametrize(
    "data,pattern",
    [
        (b"GGUX" + bytes(20), r"no GGUF magic"),
        (_header(0, version=1), r"GGUF version 1; llmc reads versions 2 and 3"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), r"big-endian GGUF file"),
        (_header(1 << 62), r"a count of \d+ items overruns the file"),
        (_header(0, n_tensors=1 << 40), r"a count of \d+ items overruns the file"),
        # an array claiming 2^60 uint32s: refused before any list is built
        (_header(1) + _key("k", 9) + struct.pack("<IQ", 4, 1 << 60), r"overruns the file"),
        (
            _header(1) + struct.pack("<Q", 1 << 50) + bytes(16),
            r"a metadata key: a string of \d+ bytes",
        ),
        (_header(1) + _key("k", 8) + struct.pack("<Q", 2) + b"\xff\xfe", r"'k': a string that"),
        (_header(1) + _key("k", 13) + bytes(8), r"'k' has unknown value type 13"),
        (_header(1) + _key("k", 4), r"the header ends early"),
        (
            _header(1) + _key("general.alignment", 4) + struct.pack("<I", 0) + bytes(64),
            r"general\.alignment 0 is not a positive integer",
        ),
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 9) + bytes(80),
            r"tensor 't' has 9 dimensions",
        ),
    ],
)
def test_lying_header_is_one_line(tmp_path, data, pattern, no_dequant):
    path = tmp_path / "h.gguf"
    path.write_bytes(data)
    _refused(path, r"not a readable GGUF file \(.*" + pattern, no_dequant)
