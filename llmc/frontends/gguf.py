"""Importing llama.cpp's GGUF files (Llama family) into the IR.

A GGUF file is untrusted input (design.md, "Inputs are untrusted"). Its header is parsed here
from a memory map (:class:`_Header`: every count and length checked against the bytes left; 0.1 s
for SmolLM2-135M's 49k-token vocabulary, where the ``gguf`` package's reader takes 3.4 s), and
checked before any weight is dequantized:

- ``general.architecture`` must be ``llama`` (no experts, no rope scaling, full rotary);
- the ``llama.*`` hyper-parameters must be positive integers that agree with each other
  (``embedding_length`` divisible by ``attention.head_count``, ...);
- every tensor must have a known, supported type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
  and the k-quants Q2_K..Q6_K),
  rows that are whole quantization blocks, and data that lies inside the file;
- the tensors must be exactly those of ``llama.block_count`` Llama blocks, each with the shape the
  metadata implies (``output.weight`` may be absent: the head is then tied to ``token_embd``;
  ``attn_q/attn_k/attn_v/attn_output.bias`` all four or none, as ``llmc export --format gguf``
  writes Qwen2).

Each failure is one :class:`~llmc.errors.ModelLoadError` line naming the file and the field or
tensor. The weights are then dequantized to float, llama.cpp's row permutation of ``attn_q`` and
``attn_k`` (its rotary convention, ``convert_hf_to_gguf.py``'s ``permute``) is undone, and the
result is an HF Llama config dict plus state dict, built into a ``transformers`` module with the
same helpers as a Hugging Face directory (:mod:`llmc.frontends.hf_dir`) and traced to the IR.
The tokenizer comes from the ``tokenizer.ggml.*`` metadata (:mod:`llmc.frontends.gguf_tokenizer`).

Example::

    graph, cfg, tok = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmc.errors import ModelLoadError

__all__ = ["GGUF_SUFFIX", "SUPPORTED_TYPES", "gguf_in_dir", "is_gguf", "load_gguf", "read_gguf"]

GGUF_SUFFIX = ".gguf"
#: ggml tensor types that llmc dequantizes (through ``gguf.quants``).
SUPPORTED_TYPES = (
    *("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"),
    *("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"),
)
ARCH = "llama"

# GGUF tensor name (block-relative for blk.N) -> HF Llama state-dict name
_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    # optional attention biases (llama.cpp's llama architecture loads bq/bk/bv/bo when present;
    # Qwen2 exported as llama): all four or none, q/k permuted like their weights
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# which metadata fields decide each tensor's shape (named in shape errors)
_SHAPE_FIELDS = {
    "token_embd": ("vocab_size", "embedding_length"),
    "output": ("vocab_size", "embedding_length"),
    "attn_q": ("embedding_length", "attention.head_count"),
    "attn_output": ("embedding_length", "attention.head_count"),
    "attn_k": ("embedding_length", "attention.head_count_kv"),
    "attn_v": ("embedding_length", "attention.head_count_kv"),
    "ffn_gate": ("embedding_length", "feed_forward_length"),
    "ffn_up": ("embedding_length", "feed_forward_length"),
    "ffn_down": ("embedding_length", "feed_forward_length"),
}
_BLK = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's header: ``shape`` in torch order (ggml's ``ne`` reversed), its ggml type name,
    and the absolute byte span of its data in the file."""

    name: str
    type: str
    shape: tuple[int, ...]
    begin: int
    nbytes: int


@dataclass
class GGUFFile:
    """A validated GGUF header: metadata (``key -> value``) and tensor headers, data unread."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    reader: Any

    def field(self, key: str) -> Any:
        return self.metadata.get(key)

    def data(self, t: GGUFTensor) -> np.ndarray:
        """The raw bytes of ``t`` (a read-only view of the memory map)."""
        return self.reader.data[t.begin : t.begin + t.nbytes]


def is_gguf(path: str | Path) -> bool:
    p = Path(path)  # any existing non-directory: load_gguf refuses what is not a regular file
    return p.suffix.lower() == GGUF_SUFFIX and p.exists() and not p.is_dir()


def gguf_in_dir(d: str | Path) -> Path | None:
    """The one ``*.gguf`` of a directory that has no ``*.safetensors``; None when it has none.

    Raises ModelLoadError for a directory holding several GGUF files (which one is meant?)."""
    d = Path(d)
    if any(d.glob("*.safetensors")):
        return None
    found = sorted(p for p in d.iterdir() if p.suffix.lower() == GGUF_SUFFIX)
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:3])
        raise ModelLoadError(
            f"{d}: holds {len(found)} GGUF files ({names}); pass the one to load as MODEL"
        )
    if found:  # a directory's file must stay inside it (a link out of it is refused)
        from llmc.frontends.untrusted import confined

        confined(found[0], d)
    return found[0] if found else None


# GGUF metadata value types (gguf's GGUFValueType): struct format per scalar type
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8  # llama.cpp's GGML_MAX_DIMS is 4


class _Header:
    """A GGUF header parsed straight from the memory map (magic, version 2 or 3, little-endian
    metadata and tensor headers). gguf's own reader builds numpy views per array element, seconds
    for a tokenizer of 49k tokens and merges; this reads it in a Python loop over ``struct``
    (tens of milliseconds). Every count and length is checked against the bytes left before it is
    used, so a lying header ends in ``ValueError`` (one line), never a large allocation."""

    def __init__(self, path: Path) -> None:
        self.data = np.memmap(path, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        self.buf = memoryview(self.data)
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self.pos = 4
        (version,) = self._unpack("I")
        if version not in (2, 3):
            if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
                raise ValueError("a big-endian GGUF file; llmc reads little-endian files")
            raise ValueError(f"GGUF version {version}; llmc reads versions 2 and 3")
        n_tensors, n_kv = self._unpack("QQ")
        self.fields: dict[str, Any] = {}
        for _ in range(self._count(n_kv, 13)):
            key = self._string("a metadata key")
            (vtype,) = self._unpack("I")
            self.fields[key] = self._value(vtype, key)
        infos = []
        for _ in range(self._count(n_tensors, 24)):
            name = self._string("a tensor name")
            (n_dims,) = self._unpack("I")
            if not 0 < n_dims <= _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = self._unpack(f"{n_dims}Q")
            raw, offset = self._unpack("IQ")
            infos.append((name, dims, raw, offset))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or not 0 < align <= 1 << 20:
            raise ValueError(f"general.alignment {align!r} is not a positive integer")
        start = -(-self.pos // align) * align
        self.tensor_headers = [
            _tensor_header(path, n, d, r, start, o, len(self.data)) for n, d, r, o in infos
        ]

    def _unpack(self, fmt: str) -> tuple:
        fmt = "<" + fmt
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.buf):
            raise ValueError(f"the header ends early (at byte {len(self.buf)})")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def _count(self, n: int, least: int) -> int:
        """``n`` items of at least ``least`` bytes each, if the bytes left can hold them."""
        if n * least > len(self.buf) - self.pos:
            raise ValueError(f"a count of {n} items overruns the file")
        return n

    def _string(self, what: str) -> str:
        (n,) = self._unpack("Q")
        if n > len(self.buf) - self.pos:
            raise ValueError(f"{what}: a string of {n} bytes overruns the file")
        try:
            s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what}: a string that is not UTF-8") from None
        self.pos += n
        return s

    def _value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])[0]
        if vtype == _STRING:
            return self._string(f"metadata field {key!r}")
        if vtype == _ARRAY and depth < 4:
            etype, n = self._unpack("IQ")
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt) * self._count(n, struct.calcsize(fmt))
                out = list(struct.unpack_from(f"<{n}{fmt}", self.buf, self.pos))
                self.pos += size
                return out
            return [self._value(etype, key, depth + 1) for _ in range(self._count(n, 8))]
        raise ValueError(f"metadata field {key!r} has unknown value type {vtype}")


def _tensor_header(
    path: Path, name: str, dims: tuple[int, ...], raw: int, start: int, offset: int, size: int
) -> GGUFTensor:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType(raw)
    except ValueError:
        raise ModelLoadError(
            f"{path}: tensor {name!r} has unknown ggml type {raw} "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        ) from None
    if qtype.name not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"{path}: tensor {name!r} is {qtype.name}, a type llmc does not dequantize "
            f"(supported: {', '.join(SUPPORTED_TYPES)}); re-quantize the model with one of them"
        )
    ne = [int(x) for x in dims]
    if not ne or any(x <= 0 for x in ne):
        raise ModelLoadError(f"{path}: tensor {name!r} has bad dimensions {ne}")
    block, bsize = gguf.GGML_QUANT_SIZES[qtype]
    if ne[0] % block:
        raise ModelLoadError(
            f"{path}: tensor {name!r}: rows of {ne[0]} values are not whole {qtype.name} blocks "
            f"of {block}"
        )
    n = 1
    for x in ne:
        n *= x
    nbytes = n // block * bsize
    begin = start + int(offset)
    if begin + nbytes > size:
        raise ModelLoadError(
            f"{path}: tensor {name!r} ({qtype.name}{list(reversed(ne))}) needs bytes "
            f"{begin}..{begin + nbytes} but the file has {size}: truncated file"
        )
    return GGUFTensor(name, qtype.name, tuple(reversed(ne)), begin, nbytes)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and check a GGUF file's header (metadata and tensor headers); no data is read."""
    p = Path(path)
    try:
        reader = _Header(p)
    except ModelLoadError:
        raise
    except (ValueError, OverflowError, OSError, struct.error) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{p}: not a readable GGUF file ({msg})") from None
    meta: dict[str, Any] = reader.fields
    tensors: dict[str, GGUFTensor] = {}
    for t in reader.tensor_headers:
        if t.name in tensors:
            raise ModelLoadError(f"{p}: tensor {t.name!r} appears twice")
        tensors[t.name] = t
    spans = sorted((t.begin, t.begin + t.nbytes, t.name) for t in tensors.values())
    for (_b1, e1, n1), (b2, _e2, n2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise ModelLoadError(f"{p}: tensors {n1!r} and {n2!r} overlap in the data section")
    return GGUFFile(p, meta, tensors, reader)


# --- config -------------------------------------------------------------------------------------


def _int(f: GGUFFile, key: str, default: int | None = None) -> int:
    v = f.field(key)
    if v is None:
        if default is None:
            raise ModelLoadError(f"{f.path}: metadata lacks {key!r}, which a Llama GGUF needs")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
        raise ModelLoadError(f"{f.path}: metadata {key!r} = {v!r} must be a positive integer")
    return int(v)


def _float(f: GGUFFile, key: str, default: float | None = None) -> float:
    v = f.field(key)
    if v is None:
        if default is None:
            raise ModelLoadError(f"{f.path}: metadata lacks {key!r}, which a Llama GGUF needs")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not float(v) > 0:
        raise ModelLoadError(f"{f.path}: metadata {key!r} = {v!r} must be a positive number")
    return float(v)


def gguf_config(f: GGUFFile) -> dict[str, Any]:
    """The Hugging Face ``LlamaConfig`` dict that a Llama GGUF's metadata describes."""
    arch = f.field("general.architecture")
    if arch != ARCH:
        raise ModelLoadError(
            f"{f.path}: general.architecture {arch!r} is not supported (llmc imports 'llama' "
            "GGUF files: Llama, Mistral, SmolLM, TinyLlama, ...)"
        )
    a = f"{ARCH}."
    if f.field(a + "expert_count"):
        raise ModelLoadError(
            f"{f.path}: {a}expert_count = {f.field(a + 'expert_count')}: mixture-of-experts "
            "GGUF files are not supported"
        )
    scaling = f.field(a + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelLoadError(f"{f.path}: {a}rope.scaling.type {scaling!r} is not supported")
    hidden = _int(f, a + "embedding_length")
    heads = _int(f, a + "attention.head_count")
    kv = _int(f, a + "attention.head_count_kv", heads)
    if hidden % heads and f.field(a + "attention.key_length") is None:
        raise ModelLoadError(
            f"{f.path}: {a}embedding_length {hidden} is not a multiple of "
            f"{a}attention.head_count {heads}"
        )
    head_dim = _int(f, a + "attention.key_length", hidden // heads)
    if _int(f, a + "attention.value_length", head_dim) != head_dim:
        raise ModelLoadError(
            f"{f.path}: {a}attention.value_length differs from the key length {head_dim}"
        )
    if heads % kv:
        raise ModelLoadError(
            f"{f.path}: {a}attention.head_count {heads} is not a multiple of "
            f"{a}attention.head_count_kv {kv}"
        )
    rot = _int(f, a + "rope.dimension_count", head_dim)
    if rot != head_dim or head_dim % 2:
        raise ModelLoadError(
            f"{f.path}: {a}rope.dimension_count {rot} must equal the head size {head_dim} "
            "(partial rotary embeddings are not supported)"
        )
    tokens = f.field("tokenizer.ggml.tokens")
    n_tok = len(tokens) if isinstance(tokens, list) else None
    emb = f.tensors.get("token_embd.weight")
    if f.field(a + "vocab_size") is not None:
        vocab = _int(f, a + "vocab_size")
    elif n_tok:
        vocab = n_tok
    elif emb is not None and len(emb.shape) == 2:
        vocab = emb.shape[0]
    else:
        raise ModelLoadError(f"{f.path}: no {a}vocab_size, tokenizer or token_embd.weight")
    if n_tok is not None and n_tok != vocab:
        raise ModelLoadError(
            f"{f.path}: tokenizer.ggml.tokens has {n_tok} entries but the vocabulary size is {vocab}"
        )
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": _int(f, a + "feed_forward_length"),
        "num_hidden_layers": _int(f, a + "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": _int(f, a + "context_length", 2048),
        "rms_norm_eps": _float(f, a + "attention.layer_norm_rms_epsilon"),
        "rope_parameters": {
            "rope_theta": _float(f, a + "rope.freq_base", 10000.0),
            "rope_type": "default",
        },
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in f.tensors,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "dtype": "float32",
    }
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        v = f.field(f"tokenizer.ggml.{key}")
        if isinstance(v, (int, np.integer)) and 0 <= int(v) < vocab:
            cfg[hf] = int(v)
    return cfg


# --- tensors ------------------------------------------------------------------------------------


def _hf_name(f: GGUFFile, name: str, layers: int) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _BLK.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        i = int(m.group(1))
        if i >= layers:
            raise ModelLoadError(
                f"{f.path}: tensor {name!r} belongs to block {i} but {ARCH}.block_count is "
                f"{layers}: the metadata does not match the tensors"
            )
        return f"model.layers.{i}.{_BLOCK[m.group(2)]}"
    hint = " (llama3 rope scaling is not supported)" if name == "rope_freqs.weight" else ""
    raise ModelLoadError(f"{f.path}: unexpected tensor {name!r} in a Llama GGUF{hint}")


def _shape_error(f: GGUFFile, t: GGUFTensor, want: tuple[int, ...], cfg: dict[str, Any]) -> str:
    kind = t.name.rsplit(".", 1)[0].split(".")[-1]
    fields = _SHAPE_FIELDS.get(kind, ("embedding_length",))
    vals = {
        "vocab_size": cfg["vocab_size"],
        "embedding_length": cfg["hidden_size"],
        "feed_forward_length": cfg["intermediate_size"],
        "attention.head_count": cfg["num_attention_heads"],
        "attention.head_count_kv": cfg["num_key_value_heads"],
    }
    implied = ", ".join(f"{k}={vals[k]}" for k in fields)
    return (
        f"{f.path}: tensor {t.name!r} has shape {list(t.shape)} but the metadata ({implied}) "
        f"implies {list(want)}"
    )


def check_tensors(
    f: GGUFFile, cfg: dict[str, Any], expected: dict[str, tuple[int, ...]]
) -> dict[str, str]:
    """GGUF name -> HF name for every tensor, after checking names, count and shapes against
    ``expected`` (HF name -> shape of the module the config builds)."""
    layers = cfg["num_hidden_layers"]
    rename = {n: _hf_name(f, n, layers) for n in f.tensors}
    have = {v: k for k, v in rename.items()}
    gguf_of = {v: k for k, v in _GLOBAL.items()}
    for i in range(layers):
        for k, v in _BLOCK.items():
            gguf_of[f"model.layers.{i}.{v}"] = f"blk.{i}.{k}"
    for hf, shape in expected.items():
        if hf not in have:
            g = gguf_of.get(hf, hf)
            why = f"{ARCH}.block_count={layers} implies" if g.startswith("blk.") else "is required"
            raise ModelLoadError(f"{f.path}: lacks tensor {g!r}, which {why}")
        t = f.tensors[have[hf]]
        if t.shape != tuple(shape):
            raise ModelLoadError(_shape_error(f, t, tuple(shape), cfg))
    return rename


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's ``permute`` of q/k rows (interleaved rotary pairs -> HF's halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize(f: GGUFFile, t: GGUFTensor) -> torch.Tensor:
    """A tensor's values as float32 in torch layout."""
    import gguf

    qtype = gguf.GGMLQuantizationType[t.type]
    raw = f.data(t)
    if t.type == "F32":
        arr = np.array(raw.view(np.float32), copy=True)
    elif t.type == "F16":
        arr = raw.view(np.float16).astype(np.float32)
    else:
        byte_shape = gguf.quant_shape_to_byte_shape(t.shape, qtype)
        arr = gguf.quants.dequantize(raw.reshape(byte_shape), qtype).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr).reshape(t.shape))


def gguf_state_dict(
    f: GGUFFile, cfg: dict[str, Any], rename: dict[str, str], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """HF Llama state dict (dequantized, q/k rows un-permuted) of a checked GGUF."""
    out = {}
    for name, t in f.tensors.items():
        w = dequantize(f, t)
        if ".attn_q." in name:
            w = _unpermute(w, cfg["num_attention_heads"])
        elif ".attn_k." in name:
            w = _unpermute(w, cfg["num_key_value_heads"])
        out[rename[name]] = w.to(dtype)
    return out


# --- loading ------------------------------------------------------------------------------------


def load_gguf(
    path: str | Path, *, dtype: str | None = None, name: str = ""
) -> tuple[Any, dict[str, Any], Any]:
    """``(graph, config, tokenizer)`` of a Llama GGUF file; tokenizer is None when the file has
    no ``tokenizer.ggml.model``."""
    from llmc.frontends.families import ARCHITECTURES
    from llmc.frontends.gguf_tokenizer import tokenizer_from_gguf
    from llmc.frontends.hf_dir import _expected, build_module, parse_dtype, trace_with_weights
    from llmc.frontends.untrusted import open_model_file
    from llmc.ir.types import to_torch_dtype

    with open_model_file(path):  # a regular file (a FIFO or device is refused, never read)
        pass
    f = read_gguf(path)
    cfg = gguf_config(f)
    where = str(f.path)
    model = build_module(cfg, ARCHITECTURES["LlamaForCausalLM"], where)  # meta: no memory
    expected, aliases = _expected(model)
    rename = check_tensors(f, cfg, expected)
    kind = f.field("tokenizer.ggml.model")  # llama.cpp's "no_vocab": a file without a tokenizer
    tok = tokenizer_from_gguf(f) if kind not in (None, "no_vocab", "none") else None
    target = parse_dtype(dtype, "--dtype") or "f32"
    weights = gguf_state_dict(f, cfg, rename, to_torch_dtype(target))
    cfg["dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(target, target)
    graph = trace_with_weights(model, weights, aliases, where, name or f.path.stem)
    return graph, cfg, tok
