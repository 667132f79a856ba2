"""Untrusted model directories through the real CLI (issue 13): symlinks out of the directory,
FIFOs and other non-regular files, malformed safetensors headers, hostile config.json values,
broken shard indices, pickles. Every case must end with a non-zero exit status and exactly one
line ``llmc: error: ...`` on stderr that names the file (and the field), no traceback, and no OUT
or ``.OUT.tmp-*`` left behind.

Each case is ``(id, mutate, needles)``: ``mutate(d)`` damages a copy of a tiny random Llama (or
GPT-2) directory ``d``; ``needles`` must all appear in the error line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmc.cli import main
from tests.frontend.hf_models import make

ST = "model.safetensors"
IDX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for fam in ("llama", "gpt2", "opt", "gpt_neox", "mistral", "qwen2"):
        make(fam).save_pretrained(root / fam)
        out[fam] = root / fam
    return out


# ----------------------------------------------------------------------------------------------
# helpers that damage a directory


def cfg_edit(**kw: Any) -> Callable[[Path], None]:
    """Set (or, with the value ``DROP``, remove) config.json fields."""

    def f(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        for k, v in kw.items():
            if v is DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))

    return f


DROP = object()


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return f


def st_raw(header: Any, data: bytes = b"", *, raw: bytes | None = None, n: int | None = None):
    """A safetensors file with ``header`` (JSON-encoded unless ``raw``) and ``data``."""
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def one(dtype: str = "F32", shape: Any = (2,), offs: Any = (0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


def st_file(header: Any, data: bytes = bytes(64), **kw: Any) -> Callable[[Path], None]:
    return write(ST, st_raw(header, data, **kw))


def outside(name: str) -> Callable[[Path], None]:
    """Move ``name`` out of the directory and leave a symlink to it (absolute path)."""

    def f(d: Path) -> None:
        out = d.parent / "elsewhere"
        out.mkdir(exist_ok=True)
        shutil.move(str(d / name), str(out / name))
        (d / name).symlink_to(out / name)

    return f


def relative_outside(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        shutil.move(str(d / name), str(d.parent / f"moved-{name}"))
        (d / name).symlink_to(f"../moved-{name}")

    return f


def replace_with_dir(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return f


def replace_with_socket(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / name).unlink()
        cwd = os.getcwd()
        os.chdir(d)  # AF_UNIX paths are limited to ~108 bytes: bind a relative name
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind(name)
            s.close()
        finally:
            os.chdir(cwd)

    return f


def replace_with_fifo(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        if (d / name).exists():
            (d / name).unlink()
        os.mkfifo(d / name)

    return f


def dangling(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(d / "nowhere")

    return f


def loop(name: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(name)

    return f


def tensors(fn: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    """Rewrite model.safetensors after ``fn`` edits its tensors."""

    def f(d: Path) -> None:
        sd = load_file(d / ST)
        fn(sd)
        save_file(sd, d / ST)

    return f


def header_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    """Edit model.safetensors' header in place (data section kept)."""

    def f(d: Path) -> None:
        raw = (d / ST).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        fn(header)
        h = json.dumps(header).encode()
        (d / ST).write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])

    return f


def sharded(edit: Callable[[dict, Path], None] | None = None) -> Callable[[Path], None]:
    """Split model.safetensors into two shards and an index; ``edit(index, d)`` damages them."""

    def f(d: Path) -> None:
        sd = load_file(d / ST)
        (d / ST).unlink()
        names = sorted(sd)
        half = len(names) // 2
        wm = {}
        for i, part in enumerate((names[:half], names[half:])):
            shard = f"model-0000{i + 1}-of-00002.safetensors"
            save_file({k: sd[k] for k in part}, d / shard)
            wm.update({k: shard for k in part})
        index = {"metadata": {"total_size": 0}, "weight_map": wm}
        if edit is not None:
            edit(index, d)  # may write the index itself (raw text, a FIFO, a link)
        if not ((d / IDX).exists() or (d / IDX).is_symlink()):
            (d / IDX).write_text(json.dumps(index))

    return f


S1 = "model-00001-of-00002.safetensors"
S2 = "model-00002-of-00002.safetensors"


def _wm_set(key_fn: Callable[[dict], Any]) -> Callable[[dict, Path], None]:
    def edit(index: dict, d: Path) -> None:
        key_fn(index)

    return edit


def _first(index: dict) -> str:
    return sorted(index["weight_map"])[0]


def _index_raw(text: str) -> Callable[[dict, Path], None]:
    def edit(index: dict, d: Path) -> None:
        (d / IDX).write_text(text)

    return edit


def _dup_tensor_in_both(index: dict, d: Path) -> None:
    a = load_file(d / S1)
    b = load_file(d / S2)
    k = sorted(a)[0]
    b[k] = a[k]
    save_file(b, d / S2)


def _index_dup_key(index: dict, d: Path) -> None:
    k = _first(index)
    body = json.dumps(index["weight_map"])[1:-1]
    (d / IDX).write_text('{"weight_map": {' + body + f', "{k}": "{S2}"' + "}}")


def _index_lies(index: dict, d: Path) -> None:
    k = next(k for k, v in index["weight_map"].items() if v == S1)
    index["weight_map"][k] = S2


def _index_outside(index: dict, d: Path) -> None:
    (d.parent / "x.safetensors").write_bytes((d / S2).read_bytes())
    index["weight_map"] = {
        k: "../x.safetensors" if v == S2 else v for k, v in index["weight_map"].items()
    }


def _shard_symlink_outside(index: dict, d: Path) -> None:
    outside(S2)(d)


def _index_symlink_outside(index: dict, d: Path) -> None:
    (d.parent / "idx.json").write_text(json.dumps(index))
    (d / IDX).symlink_to(d.parent / "idx.json")


def _missing_shard(index: dict, d: Path) -> None:
    (d / S2).unlink()


def pickled(obj_fn: Callable[[Path], Any], raw: bytes | None = None) -> Callable[[Path], None]:
    """Replace the safetensors weights by pytorch_model.bin holding ``obj_fn(d)`` (or ``raw``)."""

    def f(d: Path) -> None:
        sd = load_file(d / ST)
        (d / ST).unlink()
        if raw is not None:
            (d / "pytorch_model.bin").write_bytes(raw)
        else:
            torch.save(obj_fn(sd), d / "pytorch_model.bin")

    return f


class Evil:
    def __reduce__(self) -> Any:
        return (print, ("pwned",))


def _pickle_outside(d: Path) -> None:
    pickled(lambda sd: sd)(d)
    outside("pytorch_model.bin")(d)


def _header_len_off_by(k: int) -> Callable[[Path], None]:
    """Pad the header with spaces (valid), then make its length field ``k`` bytes off: every
    tensor would be read shifted by ``k`` bytes."""

    def f(d: Path) -> None:
        raw = (d / ST).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        h = raw[8 : 8 + n] + b" " * 8
        (d / ST).write_bytes(struct.pack("<Q", len(h) + k) + h + raw[8 + n :])

    return f


def _deep(n: int) -> str:
    return "[" * n + "]" * n


E = "model.layers.0.self_attn.q_proj.weight"
EMB = "model.embed_tokens.weight"

# ----------------------------------------------------------------------------------------------
# the cases: (id, base, mutate, needles, extra CLI args)

CASES: list[tuple[str, str, Callable[[Path], None], tuple[str, ...], tuple[str, ...]]] = [
    # symlinks out of the directory, dangling, looping
    ("config-symlink-out", "llama", outside("config.json"), ("config.json", "outside the model directory"), ()),
    ("config-symlink-relative", "llama", relative_outside("config.json"), ("config.json", "outside"), ()),
    ("weights-symlink-out", "llama", outside(ST), (ST, "outside the model directory"), ()),
    ("weights-symlink-relative", "llama", relative_outside(ST), (ST, "outside"), ()),
    ("shard-symlink-out", "llama", sharded(_shard_symlink_outside), (S2, "outside"), ()),
    ("index-symlink-out", "llama", sharded(_index_symlink_outside), (IDX, "outside"), ()),
    ("tokenizer-symlink-out", "llama", lambda d: (d / "tokenizer.json").symlink_to(Path(__file__)), ("tokenizer.json", "outside"), ()),
    ("generation-config-symlink-out", "llama", outside("generation_config.json"), ("generation_config.json", "outside"), ()),
    ("pickle-symlink-out", "llama", _pickle_outside, ("pytorch_model.bin", "outside"), ("--allow-pickle",)),
    ("config-dangling", "llama", dangling("config.json"), ("config.json", "dangling"), ()),
    ("weights-dangling", "llama", dangling(ST), (ST, "dangling"), ()),
    ("config-symlink-loop", "llama", loop("config.json"), ("config.json",), ()),
    # not regular files
    ("config-is-dir", "llama", replace_with_dir("config.json"), ("config.json", "directory"), ()),
    ("weights-is-dir", "llama", replace_with_dir(ST), (ST, "directory"), ()),
    ("weights-is-socket", "llama", replace_with_socket(ST), (ST, "socket"), ()),
    ("config-is-fifo", "llama", replace_with_fifo("config.json"), ("config.json", "FIFO"), ()),
    ("weights-is-fifo", "llama", replace_with_fifo(ST), (ST, "FIFO"), ()),
    ("index-is-fifo", "llama", sharded(lambda i, d: os.mkfifo(d / IDX)), (IDX, "FIFO"), ()),
    ("tokenizer-is-fifo", "llama", replace_with_fifo("tokenizer.json"), ("tokenizer.json", "FIFO"), ()),
    ("pickle-is-fifo", "llama", lambda d: ((d / ST).unlink(), os.mkfifo(d / "pytorch_model.bin")), ("pytorch_model.bin", "FIFO"), ("--allow-pickle",)),
    # safetensors headers
    ("st-empty", "llama", write(ST, b""), (ST, "truncated"), ()),
    ("st-short", "llama", write(ST, b"\x01\x02\x03"), (ST, "truncated"), ()),
    ("st-header-len-huge", "llama", st_file({}, n=2**63), (ST, "header length"), ()),
    ("st-header-len-past-end", "llama", st_file({}, n=10_000), (ST, "exceeds the file"), ()),
    ("st-header-not-utf8", "llama", st_file(None, raw=b'{"\xff\xfe": 1}'), (ST, "UTF-8"), ()),
    ("st-header-not-json", "llama", st_file(None, raw=b"{not json"), (ST, "not valid JSON"), ()),
    ("st-header-array", "llama", st_file([1, 2]), (ST, "not a JSON object"), ()),
    ("st-header-dup-key", "llama", st_file(None, raw=b'{"w": %s, "w": %s}' % (json.dumps(one()).encode(), json.dumps(one(offs=(8, 16))).encode())), (ST, "'w' appears twice"), ()),
    ("st-header-nan", "llama", st_file(None, raw=b'{"__metadata__": {"x": NaN}}'), (ST, "NaN"), ()),
    ("st-header-deep", "llama", st_file(None, raw=('{"w": ' + _deep(100_000) + "}").encode()), (ST, "nested too deeply"), ()),
    ("st-header-huge-int", "llama", st_file(None, raw=b'{"w": {"shape": [' + b"9" * 5000 + b"]}}"), (ST, "not valid JSON"), ()),
    ("st-long-name", "llama", st_file({"w" * 1_000_000: one(dtype="Q9")}), (ST, "'wwww", "...", "unsupported dtype"), ()),
    ("st-overlap", "llama", st_file({"a": one(offs=(0, 8)), "b": one(offs=(4, 12))}), (ST, "overlap"), ()),
    ("st-offsets-past-end", "llama", st_file({"a": one(shape=(32,), offs=(0, 128))}), (ST, "'a'", "outside the data section"), ()),
    ("st-offsets-reversed", "llama", st_file({"a": one(offs=(8, 0))}), (ST, "'a'", "outside"), ()),
    ("st-offsets-negative", "llama", st_file({"a": one(offs=(-8, 0))}), (ST, "'a'", "outside"), ()),
    ("st-gap", "llama", st_file({"a": one(offs=(0, 8)), "b": one(offs=(16, 24))}, bytes(24)), (ST, "8 unclaimed bytes before tensor 'b'"), ()),
    ("st-trailing-bytes", "llama", st_file({"a": one(offs=(0, 8))}, bytes(12)), (ST, "4 bytes after the last tensor"), ()),
    ("st-header-len-short", "llama", _header_len_off_by(-2), (ST, "2 bytes after the last tensor"), ()),
    ("st-size-mismatch", "llama", st_file({"a": one(shape=(4,), offs=(0, 8))}), (ST, "'a'", "needs 16"), ()),
    ("st-dtype-unknown", "llama", st_file({"a": one(dtype="F8_E4M3")}), (ST, "unsupported dtype"), ()),
    ("st-dtype-not-string", "llama", st_file({"a": one(dtype=[1])}), (ST, "unsupported dtype"), ()),
    ("st-shape-negative", "llama", st_file({"a": one(shape=(-2,))}), (ST, "bad shape"), ()),
    ("st-shape-bool", "llama", st_file({"a": one(shape=(True, 2))}), (ST, "bad shape"), ()),
    ("st-shape-float", "llama", st_file({"a": one(shape=(2.0,))}), (ST, "bad shape"), ()),
    ("st-shape-giant-zero", "llama", st_file({"a": one(shape=(0, 2**62), offs=(0, 0))}), (ST, "bad shape"), ()),
    ("st-shape-rank-100", "llama", st_file({"a": one(shape=(1,) * 100, offs=(0, 4))}), (ST, "bad shape"), ()),
    ("st-shape-not-list", "llama", st_file({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}), (ST, "bad shape"), ()),
    ("st-offsets-strings", "llama", st_file({"a": one(offs=("0", "8"))}), (ST, "bad data_offsets"), ()),
    ("st-offsets-three", "llama", st_file({"a": one(offs=(0, 4, 8))}), (ST, "bad data_offsets"), ()),
    ("st-entry-not-object", "llama", st_file({"a": [1, 2]}), (ST, "bad header entry"), ()),
    ("st-metadata-not-object", "llama", st_file({"__metadata__": [1]}), (ST, "__metadata__"), ()),
    ("st-int-weights", "llama", tensors(lambda sd: sd.__setitem__(E, sd[E].to(torch.int32))), (ST, E, "floating point"), ()),
    ("st-tensor-missing", "llama", tensors(lambda sd: sd.pop(E)), ("lacks tensor", E), ()),
    ("st-tensor-misshaped", "llama", tensors(lambda sd: sd.__setitem__(E, sd[E][:-1])), (ST, E, "config.json implies"), ()),
    ("st-embedding-misshaped", "llama", tensors(lambda sd: sd.__setitem__(EMB, sd[EMB][:-1])), ("config.json", "vocab_size", EMB), ()),
    ("st-layer-gap", "llama", tensors(lambda sd: [sd.__setitem__(k.replace("layers.1.", "layers.5."), sd.pop(k)) for k in list(sd) if ".layers.1." in k]), (ST, "has layer 5", "no layer 1"), ()),
    ("st-extra-layer", "llama", tensors(lambda sd: sd.__setitem__("model.layers.2.mlp.up_proj.weight", torch.zeros(1))), ("config.json", "num_hidden_layers is 2", "3 layers"), ()),
    ("tied-but-different", "llama", cfg_edit(tie_word_embeddings=True), (ST, "'lm_head.weight' differs from 'model.embed_tokens.weight'", "tie_word_embeddings"), ()),
    ("st-same-weight-twice", "gpt2", tensors(lambda sd: sd.__setitem__("h.0.ln_1.weight", sd["transformer.h.0.ln_1.weight"].clone())), (ST, "both", "h.0.ln_1.weight"), ()),
    # config.json: the file
    ("config-missing", "llama", lambda d: (d / "config.json").unlink(), ("config.json", "missing"), ()),
    ("config-empty", "llama", write("config.json", ""), ("config.json", "not valid JSON"), ()),
    ("config-not-json", "llama", write("config.json", "{oops"), ("config.json", "not valid JSON"), ()),
    ("config-array", "llama", write("config.json", "[1, 2]"), ("config.json", "expected a JSON object"), ()),
    ("config-string", "llama", write("config.json", '"LlamaForCausalLM"'), ("config.json", "expected a JSON object"), ()),
    ("config-not-utf8", "llama", write("config.json", b'{"a": "\xff"}'), ("config.json", "UTF-8"), ()),
    ("config-dup-key", "llama", lambda d: write("config.json", (d / "config.json").read_text().rstrip()[:-1] + ', "hidden_size": 128}')(d), ("config.json", "'hidden_size' appears twice"), ()),
    ("config-nan", "llama", lambda d: write("config.json", (d / "config.json").read_text().rstrip()[:-1] + ', "rms_norm_eps": NaN}')(d), ("config.json", "NaN"), ()),
    ("config-infinity", "llama", lambda d: write("config.json", (d / "config.json").read_text().rstrip()[:-1] + ', "rope_theta": -Infinity}')(d), ("config.json", "Infinity"), ()),
    ("config-huge", "llama", cfg_edit(padding="x" * (5 * 1024 * 1024)), ("config.json", "too large"), ()),
    ("config-deep", "llama", write("config.json", '{"a": ' + _deep(100_000) + "}"), ("config.json", "nested too deeply"), ()),
    ("config-huge-int", "llama", write("config.json", '{"num_hidden_layers": ' + "9" * 5000 + "}"), ("config.json", "not valid JSON"), ()),
    ("config-quantized", "llama", cfg_edit(quantization_config={"quant_method": "gptq", "bits": 4}), ("config.json", "quantization_config", "gptq"), ()),
    ("config-auto-map", "llama", cfg_edit(auto_map={"AutoModelForCausalLM": "modeling_x.X"}), ("config.json", "auto_map"), ()),
    ("config-no-architectures", "llama", cfg_edit(architectures=DROP), ("config.json", "architectures"), ()),
    ("config-architectures-string", "llama", cfg_edit(architectures="LlamaForCausalLM"), ("config.json", "architectures"), ()),
    ("config-architecture-unknown", "llama", cfg_edit(architectures=["EvilForCausalLM"]), ("config.json", "EvilForCausalLM", "not supported"), ()),
    ("config-model-type-mismatch", "llama", cfg_edit(model_type="gpt2"), ("config.json", "model_type"), ()),
    # config.json: sizes
    ("layers-million", "llama", cfg_edit(num_hidden_layers=10**6), ("config.json", "num_hidden_layers", "1000000"), ()),
    ("layers-1000", "llama", cfg_edit(num_hidden_layers=1000), ("config.json", "num_hidden_layers is 1000", "2 layers"), ()),
    ("layers-3", "llama", cfg_edit(num_hidden_layers=3), ("config.json", "num_hidden_layers is 3", "2 layers"), ()),
    ("layers-missing-default", "llama", cfg_edit(num_hidden_layers=DROP), ("config.json", "num_hidden_layers is 32", "2 layers"), ()),
    ("layers-zero", "llama", cfg_edit(num_hidden_layers=0), ("config.json", "num_hidden_layers", "positive integer"), ()),
    ("layers-negative", "llama", cfg_edit(num_hidden_layers=-1), ("config.json", "num_hidden_layers", "positive integer"), ()),
    ("layers-bool", "llama", cfg_edit(num_hidden_layers=True), ("config.json", "num_hidden_layers", "positive integer"), ()),
    ("layers-float", "llama", cfg_edit(num_hidden_layers=2.0), ("config.json", "num_hidden_layers", "positive integer"), ()),
    ("layers-string", "llama", cfg_edit(num_hidden_layers="2"), ("config.json", "num_hidden_layers", "positive integer"), ()),
    ("layers-null", "llama", cfg_edit(num_hidden_layers=None), ("config.json", "num_hidden_layers is null", "positive integer"), ()),
    ("hidden-billion", "llama", cfg_edit(hidden_size=10**9), ("config.json", "hidden_size", "at most"), ()),
    ("hidden-not-divisible", "llama", cfg_edit(hidden_size=66), ("config.json", "hidden_size 66", "num_attention_heads 4"), ()),
    ("hidden-vs-embedding", "llama", cfg_edit(hidden_size=128), ("config.json", "hidden_size is 128", EMB), ()),
    ("vocab-trillion", "llama", cfg_edit(vocab_size=10**12), ("config.json", "vocab_size", "at most"), ()),
    ("vocab-vs-embedding", "llama", cfg_edit(vocab_size=97), ("config.json", "vocab_size is 97", EMB), ()),
    ("intermediate-million", "llama", cfg_edit(intermediate_size=10**6), ("config.json", "intermediate_size = 1000000"), ()),
    ("intermediate-huge", "llama", cfg_edit(intermediate_size=2**40), ("config.json", "intermediate_size", "at most"), ()),
    ("intermediate-zero", "llama", cfg_edit(intermediate_size=0), ("config.json", "intermediate_size", "positive integer"), ()),
    ("heads-zero", "llama", cfg_edit(num_attention_heads=0), ("config.json", "num_attention_heads", "positive integer"), ()),
    ("heads-million", "llama", cfg_edit(num_attention_heads=10**6), ("config.json", "num_attention_heads", "at most"), ()),
    ("heads-not-dividing", "llama", cfg_edit(num_attention_heads=3, num_key_value_heads=None), ("config.json", "not divisible by num_attention_heads 3"), ()),
    ("kv-heads-not-dividing", "llama", cfg_edit(num_key_value_heads=3), ("config.json", "num_key_value_heads 3"), ()),
    ("kv-heads-more-than-heads", "llama", cfg_edit(num_key_value_heads=8), ("config.json", "num_key_value_heads 8"), ()),
    ("head-dim-huge", "llama", cfg_edit(head_dim=10**9), ("config.json", "head_dim", "at most"), ()),
    ("head-dim-vs-tensors", "llama", cfg_edit(head_dim=32), ("config.json implies", "self_attn"), ()),
    ("max-positions-trillion", "llama", cfg_edit(max_position_embeddings=10**12), ("config.json", "max_position_embeddings", "at most"), ()),
    ("max-positions-negative", "llama", cfg_edit(max_position_embeddings=-5), ("config.json", "max_position_embeddings", "positive integer"), ()),
    ("sliding-window-negative", "llama", cfg_edit(sliding_window=-1), ("config.json", "sliding_window"), ()),
    # config.json: other values
    ("layer-types-not-list", "llama", cfg_edit(layer_types="full_attention"), ("config.json", "layer_types must be a list"), ()),
    ("layer-types-unknown", "llama", cfg_edit(layer_types=["full_attention", "chunked_attention"]), ("config.json", "layer_types must be a list"), ()),
    ("layer-types-length", "llama", cfg_edit(layer_types=["full_attention"] * 3), ("config.json", "layer_types lists 3 layers", "num_hidden_layers is 2"), ()),
    ("mistral-layer-types-mixed", "mistral", cfg_edit(layer_types=["full_attention", "sliding_attention"]), ("config.json", "layer_types mixes"), ()),
    ("qwen2-sliding-layers-window-off", "qwen2", cfg_edit(layer_types=["sliding_attention", "full_attention"], use_sliding_window=False, sliding_window=2), ("config.json", "use_sliding_window is false"), ()),
    ("eps-string", "llama", cfg_edit(rms_norm_eps="1e-5"), ("config.json", "rms_norm_eps"), ()),
    ("eps-negative", "llama", cfg_edit(rms_norm_eps=-1e-5), ("config.json", "rms_norm_eps"), ()),
    ("eps-zero", "llama", cfg_edit(rms_norm_eps=0), ("config.json", "rms_norm_eps"), ()),
    ("rope-not-object", "llama", cfg_edit(rope_parameters=[1, 2]), ("config.json", "rope_parameters"), ()),
    ("rope-theta-string", "llama", cfg_edit(rope_parameters={"rope_type": "default", "rope_theta": "abc"}), ("config.json", "rope_parameters.rope_theta"), ()),
    ("rope-factor-negative", "llama", cfg_edit(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": -2}), ("config.json", "rope_parameters.factor"), ()),
    ("rope-factor-below-one", "llama", cfg_edit(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 0.5}), ("config.json", "rope_parameters.factor", "at least 1"), ()),
    ("rope-llama3-freqs-inverted", "llama", cfg_edit(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 16}), ("config.json", "rope_parameters.high_freq_factor", "low_freq_factor 4.0"), ()),
    ("rope-type-unknown", "llama", cfg_edit(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), ("config.json", "rope_parameters.rope_type", "yarn"), ()),
    ("tie-string", "llama", cfg_edit(tie_word_embeddings="yes"), ("config.json", "tie_word_embeddings"), ()),
    ("act-number", "llama", cfg_edit(hidden_act=5), ("config.json", "hidden_act"), ()),
    ("act-unknown", "llama", cfg_edit(hidden_act="evil_gelu"), ("config.json", "hidden_act", "evil_gelu"), ()),
    ("dtype-unknown", "llama", cfg_edit(torch_dtype="float8"), ("config.json", "torch_dtype", "float8"), ()),
    ("dtype-object", "llama", cfg_edit(torch_dtype={"x": "y" * 1000}), ("config.json", "torch_dtype"), ()),
    ("eos-string", "llama", cfg_edit(eos_token_id="</s>"), ("config.json", "eos_token_id"), ()),
    ("gpt2-n-layer-million", "gpt2", cfg_edit(n_layer=10**6), ("config.json", "n_layer", "1000000"), ()),
    ("gpt2-n-layer-vs-tensors", "gpt2", cfg_edit(n_layer=5), ("config.json", "n_layer is 5", "2 layers"), ()),
    ("gpt2-n-embd-vs-embedding", "gpt2", cfg_edit(n_embd=128), ("config.json", "n_embd is 128", "wte"), ()),
    ("gpt2-n-positions-vs-tensors", "gpt2", cfg_edit(n_positions=4096), ("config.json implies", "wpe", "n_positions = 4096"), ()),
    ("gpt2-dropout-negative", "gpt2", cfg_edit(attn_pdrop=-1), ("config.json", "attn_pdrop", "probability"), ()),
    ("llama-dropout-three", "llama", cfg_edit(attention_dropout=3), ("config.json", "attention_dropout", "probability"), ()),
    ("eos-outside-vocab", "llama", cfg_edit(eos_token_id=[2, 96]), ("config.json", "eos_token_id", "below vocab_size 96"), ()),
    ("opt-proj-dim-vs-embedding", "opt", cfg_edit(word_embed_proj_dim=32), ("config.json", "word_embed_proj_dim is 32", "embed_tokens"), ()),
    ("opt-ffn-dim-huge", "opt", cfg_edit(ffn_dim=10**7), ("config.json", "ffn_dim", "at most"), ()),
    ("opt-ffn-dim-vs-tensors", "opt", cfg_edit(ffn_dim=200), ("config.json implies", "fc1", "ffn_dim = 200"), ()),
    ("opt-remove-final-norm-string", "opt", cfg_edit(_remove_final_layer_norm="yes"), ("config.json", "_remove_final_layer_norm"), ()),
    ("opt-dropout-three", "opt", cfg_edit(dropout=3), ("config.json", "dropout is 3", "probability"), ()),
    ("opt-layer-norm-flag", "opt", cfg_edit(do_layer_norm_before="no"), ("config.json", "do_layer_norm_before"), ()),
    ("opt-legacy-names-layer-gap", "opt", tensors(lambda sd: [sd.__setitem__(k.replace("model.decoder.layers.1.", "decoder.layers.7."), sd.pop(k)) for k in list(sd) if ".layers.1." in k]), (ST, "has layer 7", "no layer 1"), ()),
    ("neox-rotary-pct-zero", "gpt_neox", cfg_edit(rotary_pct=0), ("config.json", "rotary_pct"), ()),
    ("neox-rotary-rotates-nothing", "gpt_neox", cfg_edit(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.01}), ("config.json", "partial_rotary_factor 0.01", "rotates 0"), ()),
    ("neox-rotary-odd", "gpt_neox", cfg_edit(rotary_pct=0.3125, rope_parameters=DROP), ("config.json", "rotary_pct 0.3125", "rotates 5"), ()),
    ("neox-layers-vs-tensors", "gpt_neox", cfg_edit(num_hidden_layers=64), ("config.json", "num_hidden_layers is 64", "gpt_neox.layers.1"), ()),
    ("neox-vocab-vs-embedding", "gpt_neox", cfg_edit(vocab_size=1000), ("config.json", "vocab_size is 1000", "embed_in"), ()),
    ("gpt2-eps-bool", "gpt2", cfg_edit(layer_norm_epsilon=True), ("config.json", "layer_norm_epsilon"), ()),
    # the shard index
    ("index-not-json", "llama", sharded(_index_raw("{nope")), (IDX, "not valid JSON"), ()),
    ("index-array", "llama", sharded(_index_raw("[]")), (IDX, "weight_map"), ()),
    ("index-no-weight-map", "llama", sharded(_index_raw('{"metadata": {}}')), (IDX, "weight_map"), ()),
    ("index-weight-map-list", "llama", sharded(_wm_set(lambda i: i.__setitem__("weight_map", [[k, v] for k, v in i["weight_map"].items()]))), (IDX, "weight_map"), ()),
    ("index-value-list", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), [S1, S2]))), (IDX, "weight_map[", "shard file name"), ()),
    ("index-value-int", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), 7))), (IDX, "shard file name"), ()),
    ("index-empty", "llama", sharded(_wm_set(lambda i: i.__setitem__("weight_map", {}))), (IDX, "no tensors"), ()),
    ("index-shard-outside", "llama", sharded(_index_outside), (IDX, "'../x.safetensors'"), ()),
    ("index-shard-absolute", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), "/etc/x.safetensors"))), (IDX, "/etc/x.safetensors"), ()),
    ("index-shard-not-safetensors", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), "config.json"))), (IDX, "'config.json'"), ()),
    ("index-shard-name-too-long", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), "a" * 300 + ".safetensors"))), (IDX, "shard name", "..."), ()),
    ("index-shard-name-nul", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__(_first(i), "a\0.safetensors"))), (IDX, "shard name"), ()),
    ("index-shard-missing", "llama", sharded(_missing_shard), (S2, "missing"), ()),
    ("index-tensor-in-two-shards", "llama", sharded(_dup_tensor_in_both), (S2, "also appears in", S1), ()),
    ("index-key-twice", "llama", sharded(_index_dup_key), (IDX, "appears twice"), ()),
    ("index-wrong-shard", "llama", sharded(_index_lies), (IDX, "weight_map puts tensor"), ()),
    ("index-names-absent-tensor", "llama", sharded(_wm_set(lambda i: i["weight_map"].__setitem__("ghost.weight", S1))), (IDX, "'ghost.weight'", "in no shard"), ()),
    # pickles
    ("no-weights", "llama", lambda d: (d / ST).unlink(), ("model", "no *.safetensors weights"), ()),
    ("pickle-sharded", "llama", lambda d: ((d / ST).unlink(), write("pytorch_model.bin.index.json", "{}")(d)), ("pytorch_model.bin.index.json", "sharded pickle"), ("--allow-pickle",)),
    ("pickle-refused", "llama", pickled(lambda sd: sd), ("pytorch_model.bin", "--allow-pickle"), ()),
    ("pickle-code", "llama", pickled(lambda sd: {"w": Evil()}), ("pytorch_model.bin", "GLOBAL print"), ("--allow-pickle",)),
    ("pickle-garbage", "llama", pickled(None, raw=b"\x80\x02garbage" * 10), ("pytorch_model.bin", "cannot load pickle"), ("--allow-pickle",)),
    ("pickle-not-dict", "llama", pickled(lambda sd: list(sd.values())), ("pytorch_model.bin", "flat dict"), ("--allow-pickle",)),
    ("pickle-misshaped", "llama", pickled(lambda sd: {**sd, E: sd[E][:-1]}), ("pytorch_model.bin", E, "config.json implies"), ("--allow-pickle",)),
]  # fmt: skip


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def check_one_line(rc: int, err: str, out: Path, *needles: str) -> str:
    assert rc != 0
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("llmc: error: "), line
    assert len(line) < 1000, f"{len(line)} characters: not a readable line"
    for n in needles:
        assert n in line, (n, line)
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return line


@pytest.mark.parametrize("case_id,base,mutate,needles,extra", CASES, ids=[c[0] for c in CASES])
def test_bad_model_dir(case_id, base, mutate, needles, extra, bases, tmp_path, capfd) -> None:
    d = tmp_path / "model"
    shutil.copytree(bases[base], d)
    mutate(d)
    out = tmp_path / "OUT"
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)  # a FIFO that blocks an open() or read() fails the test instead of hanging
    t0 = time.perf_counter()
    try:
        rc = main(["compile", str(d), "--target", "ref", "-o", str(out), *extra])
    except _Hang:
        pytest.fail(f"{case_id}: llmc hung")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.perf_counter() - t0 < 10, "a refusal must come before anything large is built"
    check_one_line(rc, capfd.readouterr().err, out, *needles)


def test_case_ids_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 50


def test_fifo_weights_subprocess(bases, tmp_path) -> None:
    """The real entry point, in its own process, against a FIFO that nobody writes to."""
    d = tmp_path / "model"
    shutil.copytree(bases["llama"], d)
    replace_with_fifo(ST)(d)
    out = tmp_path / "OUT"
    root = str(Path(__file__).resolve().parents[1])  # this checkout's llmc, not an installed one
    env = dict(os.environ, LLMC_NO_PROGRESS="1", PYTHONPATH=root)
    p = subprocess.run(
        [sys.executable, "-m", "llmc.cli", "compile", str(d), "--target", "ref", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    check_one_line(p.returncode, p.stderr, out, ST, "FIFO")
    assert p.stdout == ""


# ----------------------------------------------------------------------------------------------
# what must keep working


def _compiles(d: Path, tmp_path: Path, capfd) -> None:
    out = tmp_path / "OUT"
    rc = main(["compile", str(d), "--target", "ref", "-o", str(out)])
    assert rc == 0, capfd.readouterr().err
    assert (out / "manifest.json").is_file()


def test_symlinks_inside_the_directory_are_followed(bases, tmp_path, capfd) -> None:
    d = tmp_path / "model"
    shutil.copytree(bases["llama"], d)
    (d / "weights").mkdir()
    shutil.move(str(d / ST), str(d / "weights" / ST))
    (d / ST).symlink_to(Path("weights") / ST)
    link = tmp_path / "link-to-model"  # the directory itself may be a link
    link.symlink_to(d)
    _compiles(link, tmp_path, capfd)


def test_hugging_face_cache_layout(bases, tmp_path, capfd) -> None:
    """snapshots/REV/file -> ../../blobs/SHA is how the HF cache stores every file."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(os.listdir(bases["llama"]))):
        shutil.copy(bases["llama"] / f, repo / "blobs" / f"sha{i}")
        (snap / f).symlink_to(Path("..") / ".." / "blobs" / f"sha{i}")
    _compiles(snap, tmp_path, capfd)


def test_sharded_directory_loads(bases, tmp_path, capfd) -> None:
    d = tmp_path / "model"
    shutil.copytree(bases["llama"], d)
    sharded()(d)
    _compiles(d, tmp_path, capfd)


def test_hugging_face_cache_blob_linking_out_is_refused(bases, tmp_path, capfd) -> None:
    """The cache exception covers the repo's own blobs/, resolved fully: a blob that is itself a
    link out of the cache is refused."""
    repo = tmp_path / "models--org--evil"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in os.listdir(bases["llama"]):
        shutil.copy(bases["llama"] / f, snap / f)
    secret = tmp_path / "secret.json"
    secret.write_text((snap / "config.json").read_text())
    (repo / "blobs" / "sha0").symlink_to(secret)
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(Path("..") / ".." / "blobs" / "sha0")
    out = tmp_path / "OUT"
    rc = main(["compile", str(snap), "--target", "ref", "-o", str(out)])
    check_one_line(rc, capfd.readouterr().err, out, "config.json", "secret.json", "outside")


@pytest.mark.parametrize("fam", ["gpt2", "opt"])
def test_stray_keys_are_ignored_like_transformers_does(fam, bases, tmp_path) -> None:
    """GPT-2, OPT and GPT-NeoX modeling ignore ``head_dim`` and ``num_key_value_heads`` (and
    each reads its own intermediate-size field); llmc's LM ABI must too (it used to take them,
    giving a cache shape that disagrees with the graph)."""
    from llmc.frontends import load_model

    d = tmp_path / "model"
    shutil.copytree(bases[fam], d)
    stray = {"intermediate_size": 5} if fam == "opt" else {"intermediate_size": 5, "ffn_dim": 7}
    cfg_edit(head_dim=2, num_key_value_heads=1, **stray)(d)
    g = load_model(str(d)).graph
    assert g.meta["head_dim"] == 16
    assert g.meta["num_kv_heads"] == 4
    assert g.meta["intermediate_size"] == (256 if fam == "gpt2" else 96)
    assert [str(s) for s in g.inputs[2].type.shape[1:]] == ["4", "past", "16"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "{d}", "--prompt", "x"],
        ["eval", "{d}"],
        ["simulate", "{d}", "--target", "u280"],
        ["export", "{d}", "-o", "{out}"],
    ],
    ids=["run", "eval", "simulate", "export"],
)
@pytest.mark.parametrize("case_id", ["weights-is-fifo", "config-symlink-out", "layers-million"])
def test_other_commands_refuse_the_same_way(argv, case_id, bases, tmp_path, capfd) -> None:
    """Every command that takes MODEL goes through the same loader."""
    _, base, mutate, needles, _extra = next(c for c in CASES if c[0] == case_id)
    d = tmp_path / "model"
    shutil.copytree(bases[base], d)
    mutate(d)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        rc = main([a.format(d=d, out=tmp_path / "OUT") for a in argv])
    except _Hang:
        pytest.fail(f"{case_id}: llmc {argv[0]} hung")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    check_one_line(rc, capfd.readouterr().err, tmp_path / "OUT", *needles)


def test_tied_weight_stored_twice_identically_loads(bases, tmp_path, capfd) -> None:
    d = tmp_path / "model"
    shutil.copytree(bases["llama"], d)
    tensors(lambda sd: sd.__setitem__("lm_head.weight", sd[EMB].clone()))(d)
    cfg_edit(tie_word_embeddings=True)(d)
    _compiles(d, tmp_path, capfd)


def test_opt_remove_final_layer_norm_is_honoured(bases, tmp_path) -> None:
    """A private-looking key that is architecture (OPT-350m has it): the final norm is skipped as
    transformers skips it (6c21cd0 dropped every _key and compiled the norm in)."""
    from llmc.frontends import load_model

    d = tmp_path / "model"
    shutil.copytree(bases["opt"], d)
    cfg_edit(_remove_final_layer_norm=True)(d)
    g = load_model(str(d)).graph
    assert "model.decoder.final_layer_norm.weight" not in g.params
