"""Model directories are untrusted: every malformed input is one clear ModelLoadError naming the
file, raised before tensors are allocated."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmc.errors import ModelLoadError
from llmc.frontends.checkpoint import load_state_dict, read_config, read_safetensors_header


def _write_st(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    save_file(
        {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(2)}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return tmp_path


def test_good_directory_loads(good: Path) -> None:
    sd = load_state_dict(good, expected={"a": (3, 4), "b": (2,)})
    assert torch.equal(sd["a"], torch.arange(12.0).reshape(3, 4))
    assert sd.files["a"] == "model.safetensors"
    assert read_config(good)["architectures"] == ["LlamaForCausalLM"]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        read_config(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json: missing"):
        read_config(tmp_path)


def test_config_not_json(good: Path) -> None:
    (good / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: not valid JSON"):
        read_config(good)


def test_auto_map_refused(good: Path) -> None:
    (good / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelLoadError, match="never executes remote code"):
        read_config(good)


def test_truncated_file(good: Path) -> None:
    f = good / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(
        ModelLoadError, match="model.safetensors: tensor .* outside the data section"
    ):
        load_state_dict(good)


def test_truncated_header(good: Path) -> None:
    f = good / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match="exceeds the file"):
        load_state_dict(good)


def test_lying_offsets(tmp_path: Path) -> None:
    _write_st(
        tmp_path / "m.safetensors",
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
        bytes(16),
    )
    with pytest.raises(ModelLoadError, match="offsets give 8 bytes but F32\\[4\\] needs 16"):
        read_safetensors_header(tmp_path / "m.safetensors")


def test_overlapping_tensors(tmp_path: Path) -> None:
    hdr = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    _write_st(tmp_path / "m.safetensors", hdr, bytes(12))
    with pytest.raises(ModelLoadError, match="overlap"):
        read_safetensors_header(tmp_path / "m.safetensors")


def test_bad_dtype_and_shape(tmp_path: Path) -> None:
    _write_st(
        tmp_path / "m.safetensors",
        {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}},
        bytes(1),
    )
    with pytest.raises(ModelLoadError, match="unsupported dtype"):
        read_safetensors_header(tmp_path / "m.safetensors")
    _write_st(
        tmp_path / "m.safetensors",
        {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
        bytes(4),
    )
    with pytest.raises(ModelLoadError, match="bad shape"):
        read_safetensors_header(tmp_path / "m.safetensors")


def test_shape_disagrees_with_config(good: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"model.safetensors: tensor 'a' has shape \[3, 4\] but the config implies \[4, 4\]",
    ):
        load_state_dict(good, expected={"a": (4, 4)})


def test_missing_tensor(good: Path) -> None:
    with pytest.raises(ModelLoadError, match="lacks 1 tensor"):
        load_state_dict(good, expected={"a": (3, 4), "c": (1,)})


def test_pickle_refused_then_allowed(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        ModelLoadError, match="pytorch_model.bin: pickle checkpoints .* --allow-pickle"
    ):
        load_state_dict(tmp_path)
    sd = load_state_dict(tmp_path, allow_pickle=True)
    assert torch.equal(sd["w"], torch.ones(2, 2))


def test_pickle_with_code_rejected_even_when_allowed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot load pickle checkpoint safely"):
        load_state_dict(tmp_path, allow_pickle=True)


def test_shard_index_path_traversal(good: Path) -> None:
    (good / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd.safetensors"}})
    )
    with pytest.raises(ModelLoadError, match="must be a file in the directory"):
        load_state_dict(good)


def test_no_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        load_state_dict(tmp_path)


def test_device_and_fifo_refused_without_opening(tmp_path: Path) -> None:
    """read_safetensors_header (also used on artifacts, without a root) takes regular files only;
    a FIFO is refused from its stat, never opened (an open would block)."""
    import os

    with pytest.raises(ModelLoadError, match="character device"):
        read_safetensors_header("/dev/zero")
    os.mkfifo(tmp_path / "m.safetensors")
    with pytest.raises(ModelLoadError, match="is a FIFO"):
        read_safetensors_header(tmp_path / "m.safetensors")


def test_root_confines_resolved_path(good: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "x.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    (good / "x.safetensors").symlink_to(other / "x.safetensors")
    read_safetensors_header(good / "x.safetensors")  # no root: links are the caller's business
    with pytest.raises(ModelLoadError, match="outside the model directory"):
        read_safetensors_header(good / "x.safetensors", good)


def test_checkpoint_reads_only_what_is_asked(good: Path) -> None:
    from llmc.frontends.checkpoint import Checkpoint

    ck = Checkpoint(good)
    assert ck.shapes == {"a": ((3, 4), "model.safetensors"), "b": ((2,), "model.safetensors")}
    sd = ck.load(["b"])
    assert list(sd) == ["b"] and torch.equal(sd["b"], torch.ones(2))


def test_trailing_bytes_refused(good: Path) -> None:
    f = good / "model.safetensors"
    f.write_bytes(f.read_bytes() + b"\0" * 4)
    with pytest.raises(ModelLoadError, match="4 bytes after the last tensor"):
        load_state_dict(good)
