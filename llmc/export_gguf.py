"""Export a (compressed) Llama-family graph as a llama.cpp GGUF file, written with the ``gguf``
package (``GGUFWriter``; ``gguf.quants`` for block packing).

What is written (atomically: a temporary sibling file renamed into place):

- ``general.architecture = llama`` and llama.cpp's hyper-parameter keys: ``llama.block_count``,
  ``context_length``, ``embedding_length``, ``feed_forward_length``, ``attention.head_count``,
  ``attention.head_count_kv``, ``rope.dimension_count``, ``rope.freq_base``,
  ``attention.layer_norm_rms_epsilon``, ``vocab_size`` (``attention.key_length`` /
  ``value_length`` when the head size is not ``embedding_length / head_count``),
  ``general.file_type`` and ``general.quantization_version``;
- llama.cpp's tensor names (``token_embd``, ``blk.N.attn_q`` ..., ``output_norm``, ``output``;
  ``output`` omitted when the head is tied to the embedding), with ``attn_q``/``attn_k`` rows
  permuted as ``convert_hf_to_gguf.py``'s ``permute`` does (llmc's import undoes it);
- the tokenizer as ``tokenizer.ggml.*`` when llama.cpp can represent it: llmc's byte tokenizer
  (``tiny``) becomes a ``gpt2`` byte-level BPE with no merges whose token ``i`` is byte ``i``; a
  Hugging Face byte-level BPE a ``gpt2`` vocabulary with its merges and the ``tokenizer.ggml.pre``
  whose regexes it uses; a Llama-style SentencePiece BPE (byte fallback, spaces as U+2581 through
  a ``Metaspace`` pre-tokenizer or Llama's ``Prepend``/``Replace`` normalizer) a ``llama``
  vocabulary as llama.cpp's ``convert_hf_to_gguf.py`` writes one: tokens, scores (merged tokens
  ranked by their first merge, which is what llama.cpp's SentencePiece tokenizer merges by),
  token types (normal, byte, control, user-defined, unknown), ``add_space_prefix``,
  ``add_bos_token``/``add_eos_token`` and the unknown/padding ids. Other tokenizers (SentencePiece
  Unigram among them) are not written (the summary's ``tokenizer`` says why
  in one line) and the file says ``tokenizer.ggml.model = no_vocab`` (llama.cpp loads no file
  without that key; it then takes token ids only).

``gguf_type`` (:data:`GGUF_TYPES`) is the type of every 2-D weight; 1-D norms stay F32 as in
llama.cpp. For ``q8_0``/``q4_0`` a weight that llmc's RTN (or GPTQ, W8A8) quantized maps onto the
GGUF blocks with its *own* integer codes when it is symmetric, its group size is a multiple of 32
(each block of 32 takes its group's scale; per-channel when the row length is) and its codes fit
the block (Q8_0: int8; Q4_0: -8..7, so 4-bit or fewer). GGUF stores the scale as float16: a
weight quantized with ``scale_dtype=f16`` (``QuantSpec``, "Scale precision": its codes chosen for
the half scale) is written bit for bit, the exported values *are* llmc's dequantized weights; one
with float32 scales keeps its codes but its scales are rounded, so the exported values are
``code * float16(scale)``, not llmc's (listed in the summary's ``scale_rounded``). Any other
weight is
dequantized and requantized by ``gguf.quants`` (listed in the summary's ``requantized``, with
the reason; float weights such as the embedding and head are quantized as llama.cpp does and
listed in ``quantized``); with ``exact=True`` (CLI ``--gguf-exact``) a quantized weight that does
not map is refused in one line instead. ``f32``/``f16`` write the dequantized values (``f16`` rounds them).

Attention biases (Qwen2's q/k/v) are written as llama.cpp's optional ``blk.N.attn_q.bias`` ...
(F32; q/k permuted like their rows), a missing one (Qwen2's ``o_proj``) as zeros, so that all four
are there (llmc's import builds an HF Llama with ``attention_bias``, which has all four).

Refused in one line, before anything is written: an unknown ``gguf_type``, families other than
Llama/Mistral/Qwen2, rope scaling, a sliding window shorter than the context, other biases (FFN
biases from FLAP's compensation), FFN widths that differ between layers, q-type rows that are not
whole blocks of 32, and an existing output file (unless ``overwrite``).

Example::

    export_gguf(graph, Path("out/tiny.q8_0.gguf"), gguf_type="q8_0", tokenizer=tok)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmc.export_hf import ExportError
from llmc.ir.graph import Graph
from llmc.ir.ops import AttentionAttrs
from llmc.tokenizer import ByteTokenizer

__all__ = ["GGUF_TYPES", "export_gguf"]

#: ``--gguf-type`` values: the ggml type of every 2-D weight.
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
_FAMILIES = ("llama", "mistral", "qwen2")
_BLOCK = 32
# code range a block holds (Q4_0 stores code + 8 in a nibble)
_CODES = {"q8_0": (-128, 127), "q4_0": (-8, 7)}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_IN_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(graph: Graph, name: str, prefix: str) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    head, _, rest = name.partition(f"{prefix}.")
    if not head and rest:
        idx, _, sub = rest.partition(".")
        if idx.isdigit() and sub in _IN_BLOCK:
            return f"blk.{int(idx)}.{_IN_BLOCK[sub]}"
    hint = (
        " (llama.cpp's llama architecture has attention biases only)"
        if name.endswith(".bias")
        else ""
    )
    raise ExportError(
        f"export to GGUF: weight {name!r} of @{graph.name} has no llama.cpp name{hint}"
    )


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``permute`` of q/k rows (HF's rotary halves -> interleaved pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _check_model(graph: Graph, cfg: dict[str, Any]) -> None:
    m = graph.meta
    family = str(m.get("family", ""))
    if family not in _FAMILIES:
        raise ExportError(
            f"export to GGUF supports Llama-family graphs ({', '.join(_FAMILIES)}); graph "
            f"@{graph.name} is family {family!r}"
        )
    scaling = str((m.get("rope") or {}).get("scaling", "none") or "none")
    if scaling != "none":
        raise ExportError(
            f"export to GGUF: rope scaling {scaling!r} of @{graph.name} is not supported "
            "(llmc's GGUF import reads unscaled rope only)"
        )
    ctx = int(m.get("max_position_embeddings", cfg.get("max_position_embeddings", 2048)))
    # the window the graph's attention applies (the frontend turns the config's into attributes)
    windows = [n.attrs.window for n in graph.nodes if isinstance(n.attrs, AttentionAttrs)]
    window = max(windows, default=0)
    if window and int(window) < ctx:
        raise ExportError(
            f"export to GGUF: @{graph.name} attends through a sliding window of {window} < its "
            f"context {ctx}; a llama GGUF has no sliding window"
        )
    if any(p.is_meta for p in graph.params.values()):
        raise ExportError(
            f"graph @{graph.name} has no weight data (architecture-only model): nothing to export"
        )


def _byte_tokens() -> list[str]:
    """GPT-2's byte -> printable character map: token ``i`` is byte ``i``."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: b for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + n
            n += 1
    return [chr(chars[b]) for b in range(256)]


def _writer_class() -> type:
    import gguf

    class Writer(gguf.GGUFWriter):
        """gguf's writer, which also writes an empty typed array (a byte-level vocabulary with
        no merges: llama.cpp requires the ``tokenizer.ggml.merges`` key, the package refuses
        empty arrays)."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _write_tokenizer(w: Any, tokenizer: Any, vocab: int) -> str:
    import gguf

    if tokenizer is None:
        return "none: the model has no tokenizer"
    if isinstance(tokenizer, ByteTokenizer):
        if vocab != 256:
            return f"not written: byte tokenizer (256 ids) but the vocabulary has {vocab}"
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(_byte_tokens())
        w.add_token_types([int(gguf.TokenType.NORMAL)] * 256)
        w.add_key_value(
            gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
        )
        return "gpt2 byte-level BPE, no merges (token i = byte i)"
    spm = _sentencepiece_bpe(tokenizer, vocab)
    if spm is not None:
        if isinstance(spm, str):
            return spm
        return _write_llama_vocab(w, spm)
    meta = _byte_level_bpe(tokenizer, vocab)
    if isinstance(meta, str):
        return meta
    tokens, types, merges, pre = meta
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_key_value(
        gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
    )
    return f"gpt2 byte-level BPE, {len(merges)} merges, pre {pre!r}"


def _write_llama_vocab(w: Any, spm: dict[str, Any]) -> str:
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(spm["tokens"])
    w.add_token_scores(spm["scores"])
    w.add_token_types(spm["types"])
    w.add_add_space_prefix(spm["add_space_prefix"])
    for key, add in (("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        if spm[key] is not None:
            add(spm[key])
    w.add_add_bos_token(spm["add_bos"])
    w.add_add_eos_token(spm["add_eos"])
    note = f"llama SentencePiece BPE, {len(spm['tokens'])} tokens with scores"
    if spm["inconsistent"]:
        note += (
            f" ({spm['inconsistent']} merges are not SentencePiece-ordered: llama.cpp may "
            f"split some words differently)"
        )
    return note


def _spm_prefix(data: dict[str, Any]) -> bool | str:
    """Whether a SentencePiece-style tokenizer prepends U+2581 to the text (llama.cpp's
    ``add_space_prefix``), from its normalizer (Llama's legacy ``Prepend`` + ``Replace``) or its
    ``Metaspace`` pre-tokenizer; a one-line reason when llama.cpp cannot reproduce it."""
    from llmc.frontends.gguf_tokenizer import SPACE

    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] * bool(norm)
    prefix = False
    for st in steps:
        if st.get("type") == "Prepend" and st.get("prepend") == SPACE:
            prefix = True
        elif not (
            st.get("type") == "Replace"
            and (st.get("pattern") or {}).get("String") == " "
            and st.get("content") == SPACE
        ):
            return f"not written: normalizer step {st.get('type')} has no llama.cpp equivalent"
    pre = data.get("pre_tokenizer") or {}
    if pre:
        if pre.get("type") != "Metaspace" or pre.get("replacement") != SPACE:
            return f"not written: pre-tokenizer {pre.get('type')} before a SentencePiece BPE"
        scheme = pre.get(
            "prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never"
        )
        prefix = prefix or scheme != "never"
    return prefix


def _sentencepiece_bpe(tokenizer: Any, vocab: int) -> dict[str, Any] | str | None:
    """A Llama-style (SentencePiece) BPE -- byte fallback, spaces as U+2581 -- as GGUF ``llama``
    metadata, the way llama.cpp's converter writes one: tokens, scores, token types, special ids,
    ``add_space_prefix`` and ``add_bos``/``add_eos``. Scores rank merged tokens by their first
    merge (llama.cpp's SentencePiece tokenizer merges the pair whose result scores highest, as
    :func:`llmc.frontends.gguf_tokenizer.spm_merges` rebuilds the merges on import). None when the
    tokenizer is not of this kind; a one-line reason when llama.cpp cannot hold it."""
    import json

    from llmc.frontends.gguf_tokenizer import (
        BYTE,
        CONTROL,
        NORMAL,
        UNKNOWN,
        USER_DEFINED,
        spm_merges,
    )

    backend = getattr(getattr(tokenizer, "hf", None), "backend_tokenizer", None)
    if backend is None:
        return None
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") == "Unigram":
        return (
            "not written: a SentencePiece Unigram tokenizer (llama.cpp's 't5' vocabulary, which "
            "llmc does not write)"
        )
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    prefix = _spm_prefix(data)
    if isinstance(prefix, str):
        return prefix
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}
    for i, t in added.items():
        by_id[i] = t["content"]
    if sorted(by_id) != list(range(vocab)):
        return f"not written: the tokenizer's ids are not 0..{vocab - 1} (the model's vocabulary)"
    tokens = [by_id[i] for i in range(vocab)]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    ids = model["vocab"]
    first = {}
    for r, (a, b) in enumerate(merges):
        first.setdefault(a + b, r)
    unk_tok = model.get("unk_token")
    unk = ids.get(unk_tok) if unk_tok is not None else None
    scores, types = [], []
    for i, t in enumerate(tokens):
        # merged tokens by merge rank; the rest (characters, bytes, specials) below all of them
        scores.append(-float(first[t]) if t in first else -float(len(merges) + i))
        if i == unk:
            types.append(UNKNOWN)
        elif i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    rebuilt = set(spm_merges(tokens, scores, types))
    inconsistent = len(rebuilt.symmetric_difference(merges))
    post = json.dumps(data.get("post_processor") or {})
    hf = tokenizer.hf
    bos, eos = hf.bos_token_id, hf.eos_token_id
    single = (data.get("post_processor") or {}).get("single") or []
    firsts = [x.get("SpecialToken", {}).get("id") for x in single[:1]]
    lasts = [x.get("SpecialToken", {}).get("id") for x in single[-1:]]
    add_bos = hf.bos_token is not None and hf.bos_token in firsts and "TemplateProcessing" in post
    add_eos = hf.eos_token is not None and hf.eos_token in lasts and "TemplateProcessing" in post
    return {
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "add_space_prefix": prefix,
        "unk": unk,
        "pad": hf.pad_token_id,
        "bos": bos,
        "eos": eos,
        "add_bos": bool(add_bos),
        "add_eos": bool(add_eos),
        "inconsistent": inconsistent,
    }


def _byte_level_bpe(tokenizer: Any, vocab: int) -> tuple[list, list, list, str] | str:
    """A Hugging Face byte-level BPE (an HF directory's, or a GGUF ``gpt2`` vocabulary as llmc
    rebuilt it) as GGUF ``gpt2`` metadata: tokens, token types, merges and the
    ``tokenizer.ggml.pre`` whose regexes (:data:`PRE_TOKENIZERS`) are the tokenizer's; a
    one-line reason when llama.cpp cannot represent it this way."""
    import json

    from llmc.frontends.gguf_tokenizer import _GPT2_SPLIT, PRE_TOKENIZERS

    name = type(tokenizer).__name__
    backend = getattr(getattr(tokenizer, "hf", None), "backend_tokenizer", None)
    if backend is None:
        return f"not written: a {name} has no Hugging Face fast tokenizer to convert"
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or data.get("normalizer"):
        return (
            f"not written: only byte-level BPE tokenizers (no normalizer) are exported to GGUF; "
            f"this one is {model.get('type')} with normalizer "
            f"{(data.get('normalizer') or {}).get('type')}"
        )
    pre = data.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not items or items[-1].get("type") != "ByteLevel":
        return "not written: the BPE's pre-tokenizer does not end in ByteLevel (not byte-level)"
    splits: list[str] = []
    for item in items[:-1]:
        if item.get("type") == "Split" and "Regex" in (item.get("pattern") or {}):
            splits.append(item["pattern"]["Regex"])
        elif item.get("type") == "Digits" and item.get("individual_digits"):
            splits.append(r"\p{N}")
        else:
            return f"not written: pre-tokenizer step {item.get('type')} has no llama.cpp 'pre'"
    if items[-1].get("use_regex", True):
        splits.append(_GPT2_SPLIT)
    ignore = bool(model.get("ignore_merges"))
    pre_name = next(
        (k for k, (r, ig) in PRE_TOKENIZERS.items() if k and r == tuple(splits) and ig == ignore),
        None,
    )
    if pre_name is None:
        return "not written: the pre-tokenizer's regexes match no tokenizer.ggml.pre llmc knows"
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types = {}
    for t in data.get("added_tokens") or []:
        by_id[int(t["id"])] = t["content"]
        types[int(t["id"])] = 3 if t.get("special") else 4
    if sorted(by_id) != list(range(vocab)):
        return f"not written: the tokenizer's ids are not 0..{vocab - 1} (the model's vocabulary)"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return (
        [by_id[i] for i in range(vocab)],
        [types.get(i, 1) for i in range(vocab)],
        merges,
        pre_name,
    )


def _blocks(codes: torch.Tensor, scale: torch.Tensor, group: int, qtype: str) -> np.ndarray:
    """GGUF block bytes ``[rows, in / 32 * block_bytes]`` from codes ``[rows, in]`` and scales
    ``[rows, groups]`` (each block takes its group's scale, stored as float16)."""
    rows, cols = codes.shape
    nb = cols // _BLOCK
    d = scale.float().repeat_interleave(group // _BLOCK, dim=1).numpy().astype(np.float16)
    d = d.reshape(rows, nb, 1).view(np.uint8)  # [rows, nb, 2]
    q = codes.to(torch.int16).numpy().reshape(rows, nb, _BLOCK)
    if qtype == "q8_0":
        qs = q.astype(np.int8).view(np.uint8)
    else:
        u = (q + 8).astype(np.uint8).reshape(rows, nb, 2, _BLOCK // 2)
        qs = u[:, :, 0, :] | (u[:, :, 1, :] << np.uint8(4))
    return np.concatenate([d, qs], axis=-1).reshape(rows, -1)


def _exact_map(p: Any, cols: int, qtype: str) -> tuple[bool, str]:
    """Whether ``p``'s quantization maps onto ``qtype`` blocks as it is, and why not."""
    q = p.format.quant
    group = cols if q.group == 0 else q.group
    lo, hi = _CODES[qtype]
    if not q.symmetric or "zero" in p.data:
        return False, "asymmetric (zero points)"
    if group % _BLOCK:
        return False, f"group size {group} is not a multiple of {_BLOCK}"
    c = p.data["qvalue"]
    if int(c.min()) < lo or int(c.max()) > hi:
        return False, f"{q.bits}-bit codes do not fit {qtype.upper()}'s {lo}..{hi}"
    return True, ""


def export_gguf(
    graph: Graph,
    out: Path | str,
    *,
    gguf_type: str = "f16",
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
    exact: bool = False,
    overwrite: bool = False,
    pipeline: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``graph`` to the GGUF file ``out`` (see the module docstring); a summary dict.
    The pipeline (``pipeline``, else ``graph.pipeline``; ``recipe:FILE`` for a recipe, whose
    ``{"file", "sha256", "text"}`` is ``recipe``) is recorded as ``llmc.pipeline``,
    ``llmc.passes``, ``llmc.recipe.file``/``sha256``/``text`` string keys."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ExportError(
            f"--gguf-type {gguf_type!r} is not supported (supported: {', '.join(GGUF_TYPES)})"
        )
    path = Path(out)
    if path.is_dir() or (path.exists() and not overwrite):
        raise ExportError(f"{path}: exists; remove it or choose another output file")
    cfg = dict(config or {})
    _check_model(graph, cfg)
    m = graph.meta
    prefix = str(m.get("layer_prefix", "model.layers"))
    hidden, heads = int(m["hidden_size"]), int(m["num_heads"])
    kv, head_dim = int(m["num_kv_heads"]), int(m["head_dim"])
    n_layers, vocab = int(m["num_layers"]), int(m["vocab_size"])
    names = {n: _gguf_name(graph, n, prefix) for n in graph.params}
    widths = {
        int(p.type.shape[0]) for n, p in graph.params.items() if n.endswith("mlp.up_proj.weight")
    }
    if len(widths) > 1:
        raise ExportError(
            f"export to GGUF: FFN widths differ between layers ({sorted(widths)}); "
            "llama.feed_forward_length is one number: prune with the same ratio in every layer"
        )
    ffn = widths.pop() if widths else int(m["intermediate_size"])
    eps = next((float(n.attrs.eps) for n in graph.nodes if n.op == "rms_norm"), None)
    if eps is None:
        eps = float(cfg.get("rms_norm_eps", 1e-6))
    theta = float((m.get("rope") or {}).get("theta", 10000.0))
    ctx = int(m.get("max_position_embeddings", cfg.get("max_position_embeddings", 2048)))

    head = graph.params.get("lm_head.weight")
    emb = graph.params.get("model.embed_tokens.weight")
    skip = set()
    if head is not None and emb is not None and torch.equal(head.value(), emb.value()):
        skip.add("lm_head.weight")  # tied: llama.cpp (and llmc's import) reuse token_embd

    exact_names: list[str] = []
    scale_rounded: list[str] = []  # exact codes, float32 scales rounded to the block's float16
    requantized: dict[str, str] = {}
    dequantized: list[str] = []
    quantized: list[str] = []
    kept_q8: list[str] = []
    tensors: list[tuple[str, np.ndarray, Any]] = []
    for name, p in graph.params.items():
        if name in skip:
            continue
        gname = names[name]
        shape = tuple(int(s) for s in p.type.shape)
        perm = heads if ".attn_q." in gname else kv if ".attn_k." in gname else 0
        q = p.format.quant
        if len(shape) != 2 or gguf_type in ("f32", "f16"):
            value = p.value().float()
            if perm:
                value = _permute(value, perm)
            dt = np.float16 if len(shape) == 2 and gguf_type == "f16" else np.float32
            tensors.append((gname, value.contiguous().numpy().astype(dt), None))
            if q is not None:
                dequantized.append(name)
            continue
        cols = shape[1]
        if cols % _BLOCK:
            raise ExportError(
                f"export to GGUF: weight {name!r} has rows of {cols} values, not whole "
                f"{gguf_type.upper()} blocks of {_BLOCK}; export with --gguf-type f16 or f32"
            )
        ttype = gguf_type
        head_q8 = gname == "output.weight" and q is not None and q.bits > 4
        if head_q8 and gguf_type == "q4_0" and _exact_map(p, cols, "q8_0")[0]:
            # the LM head the passes kept at 8 bits (head_bits): Q8_0 in a Q4_0 file, as
            # llama.cpp's own q4_0 files keep output.weight above the file's type
            ttype = "q8_0"
            kept_q8.append(name)
        qtype = gguf.GGMLQuantizationType[ttype.upper()]
        ok, why = _exact_map(p, cols, ttype) if q is not None else (False, "")
        if ok:
            codes, scale = p.data["qvalue"], p.data["scale"]
            if perm:
                codes, scale = _permute(codes, perm), _permute(scale, perm)
            group = cols if q.group == 0 else q.group
            tensors.append((gname, _blocks(codes, scale, group, ttype), qtype))
            exact_names.append(name)
            if q.scale_dtype != "f16":
                scale_rounded.append(name)
            continue
        if q is not None:
            if exact:
                raise ExportError(
                    f"export to GGUF: --gguf-exact: weight {name!r} ({q.method or 'rtn'} "
                    f"bits={q.bits} group={q.group}) cannot be written as {gguf_type.upper()} "
                    f"with its own codes: {why}"
                )
            requantized[name] = why
        else:
            quantized.append(name)
        value = p.value().float()
        if perm:
            value = _permute(value, perm)
        tensors.append((gname, gguf.quants.quantize(value.contiguous().numpy(), qtype), qtype))

    # llama.cpp's llama loads attention biases one by one; llmc's import (an HF Llama with
    # attention_bias) wants all four: Qwen2's missing o_proj bias is written as zeros
    zero_biases = []
    if any(g.endswith(".attn_q.bias") for g in names.values()):
        have = set(names.values())
        rows = {"attn_q": heads * head_dim, "attn_k": kv * head_dim, "attn_v": kv * head_dim}
        rows["attn_output"] = hidden
        for i in range(n_layers):
            for part, n in rows.items():
                g = f"blk.{i}.{part}.bias"
                if g not in have:
                    tensors.append((g, np.zeros(n, dtype=np.float32), None))
                    zero_biases.append(g)

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[gguf_type]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = _writer_class()(str(tmp), "llama")
        w.add_name(graph.name)
        record = _pipeline_keys(graph, pipeline, recipe)
        for key, value in record.items():
            w.add_string(key, value)
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(ctx)
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(ffn)
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
        if head_dim * heads != hidden:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(eps)
        w.add_vocab_size(vocab)
        for key, add in (
            ("bos_token_id", w.add_bos_token_id),
            ("eos_token_id", w.add_eos_token_id),
        ):
            v = getattr(tokenizer, key.replace("_token", ""), None)  # the tokenizer's first
            if v is None:
                v = cfg.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < vocab:
                add(v)
        tok_note = _write_tokenizer(w, tokenizer, vocab)
        if not tok_note.startswith(("gpt2", "llama")):  # llama.cpp needs the key
            w.add_tokenizer_model("no_vocab")
        for gname, arr, qtype in tensors:
            w.add_tensor(gname, arr, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    notes = []
    if kept_q8:
        notes.append(
            f"{len(kept_q8)} weight(s) quantized at 8 bits by the passes written as Q8_0 "
            f"({', '.join(kept_q8)})"
        )
    if any(n.op == "qlinear_a8" for n in graph.nodes):
        notes.append("W8A8: activation quantization is not representable in GGUF (not applied)")
    return {
        "out": str(path),
        "format": "gguf",
        "gguf_type": gguf_type,
        "tensors": len(tensors),
        "tied_output": head is None or bool(skip),
        "exact": exact_names,
        "scale_rounded": scale_rounded,
        "requantized": requantized,
        "quantized": quantized,
        "dequantized": dequantized,
        "zero_biases": zero_biases,
        "tokenizer": tok_note,
        "notes": notes,
        "pipeline": record.get("llmc.pipeline", ""),
        **({"recipe": dict(recipe)} if recipe else {}),
    }


def _pipeline_keys(
    graph: Graph, pipeline: str | None, recipe: dict[str, Any] | None
) -> dict[str, str]:
    """The ``llmc.*`` string keys that record how the weights were produced."""
    from llmc.export_hf import pipeline_fields

    recorded = graph.pipeline if pipeline is None else pipeline
    out = {"llmc.pipeline": recorded} if recorded else {}
    extra = pipeline_fields(graph, recorded, recipe)
    if "passes" in extra:
        out["llmc.passes"] = extra["passes"]
    for k in ("file", "sha256", "text"):
        if recipe and recipe.get(k):
            out[f"llmc.recipe.{k}"] = str(recipe[k])
    return out
